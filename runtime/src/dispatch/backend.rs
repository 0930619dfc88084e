//! Which monitor runs a microVM: amphi's own VMM (`amphi vmm`, its own
//! process) or `qemu-system-x86_64 -M microvm` (with KVM when usable, else
//! software emulation). The rule lives here, with the other decisions;
//! `vm::backend` builds and starts the chosen one.

use amphi_vmm::KvmKind;

/// `--vm-backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Builtin,
    Qemu,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "builtin" => Ok(BackendChoice::Builtin),
            "qemu" => Ok(BackendChoice::Qemu),
            _ => Err(format!(
                "unknown VM backend {s:?} (expected auto, builtin or qemu)"
            )),
        }
    }
}

/// The backend a run uses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Builtin,
    Qemu { kvm: bool },
}

impl Backend {
    pub fn describe(&self) -> &'static str {
        match self {
            Backend::Builtin => "amphi's VMM (KVM)",
            Backend::Qemu { kvm: true } => "QEMU microvm (KVM)",
            Backend::Qemu { kvm: false } => "QEMU microvm (TCG, software emulation)",
        }
    }
}

/// Picks the backend: amphi's VMM on hardware KVM, or on PVM with a
/// PVM-enabled kernel; QEMU otherwise (with KVM only on hardware KVM: a
/// stock kernel on PVM crawls through instruction emulation).
/// Returns the backend and, for software emulation, the notice to print.
pub fn choose(
    choice: BackendChoice,
    kvm: KvmKind,
    kernel_pvm: bool,
    kernel: &str,
) -> (Backend, Option<String>) {
    let qemu = || {
        let hw = kvm == KvmKind::Hardware;
        let notice = (!hw).then(|| {
            let why = match kvm {
                KvmKind::Pvm => format!(
                    "/dev/kvm is PVM (KVM without hardware virtualization) and guest kernel {kernel} is not PVM-enabled"
                ),
                KvmKind::None => "there is no /dev/kvm".to_string(),
                _ => "/dev/kvm is not usable hardware KVM".to_string(),
            };
            format!(
                "amphi: notice: {why}; the microVM runs under QEMU in software emulation (TCG), which is much slower than KVM"
            )
        });
        (Backend::Qemu { kvm: hw }, notice)
    };
    match choice {
        BackendChoice::Builtin => (Backend::Builtin, None),
        BackendChoice::Qemu => qemu(),
        BackendChoice::Auto => match kvm {
            KvmKind::Hardware => (Backend::Builtin, None),
            KvmKind::Pvm if kernel_pvm => (Backend::Builtin, None),
            _ => qemu(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_builtin_only_where_kvm_serves_the_kernel() {
        use BackendChoice::*;
        let c = |ch, k, pvm| choose(ch, k, pvm, "6.12.117");
        assert_eq!(c(Auto, KvmKind::Hardware, false).0, Backend::Builtin);
        assert_eq!(c(Auto, KvmKind::Pvm, true).0, Backend::Builtin);
        let (b, notice) = c(Auto, KvmKind::Pvm, false);
        assert_eq!(b, Backend::Qemu { kvm: false });
        assert!(notice.unwrap().contains("6.12.117 is not PVM-enabled"));
        assert_eq!(
            c(Auto, KvmKind::None, false).0,
            Backend::Qemu { kvm: false }
        );
        assert_eq!(
            c(Qemu, KvmKind::Hardware, false),
            (Backend::Qemu { kvm: true }, None)
        );
        assert_eq!(c(Builtin, KvmKind::None, false).0, Backend::Builtin);
        assert!("bogus"
            .parse::<BackendChoice>()
            .unwrap_err()
            .contains("auto, builtin or qemu"));
    }
}
