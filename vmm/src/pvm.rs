//! What kind of KVM this host has, and whether a guest kernel can use it.
//!
//! PVM (`kvm_pvm`) is KVM without hardware virtualization: the guest kernel
//! runs deprivileged and must be built for it (`CONFIG_PVM_GUEST=y`). Tiny
//! guests that never leave a few instructions run fine, but a stock kernel
//! falls back to instruction emulation and crawls. So on a PVM host the VMM
//! refuses a kernel it cannot show to be PVM-enabled, unless forced.
//!
//! How a kernel is judged (in this order, first conclusive answer wins):
//! 1. **Embedded config** (`CONFIG_IKCONFIG`): the image holds a gzip'd
//!    `.config` between the markers `IKCFG_ST` and `IKCFG_ED`. Decompressed,
//!    it says `CONFIG_PVM_GUEST=y` or it does not. This is authoritative and
//!    works for vmlinux; our guest-kernel config enables IKCONFIG for this.
//!    (A plain string search for "CONFIG_PVM_GUEST=y" would miss it: the
//!    config is stored compressed.)
//! 2. **ELF symbol names** (vmlinux with a symbol table): the PVM guest
//!    support adds functions such as `pvm_early_setup`; finding one of the
//!    known names in a string table means PVM-enabled, a symbol table without
//!    any means not. The names are a heuristic and listed in
//!    [`PVM_GUEST_SYMBOLS`].
//! 3. Otherwise (a bzImage, whose payload is compressed, or a stripped
//!    vmlinux without embedded config) the answer is *unknown*, which is
//!    refused like *no*.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// The kind of KVM behind `/dev/kvm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-assisted KVM (Intel VMX or AMD SVM).
    Hardware,
    /// PVM: KVM without hardware virtualization (`kvm_pvm`).
    Pvm,
    /// `/dev/kvm` exists but neither vmx/svm nor kvm_pvm could be seen.
    Unrecognized,
    /// No `/dev/kvm`.
    None,
}

impl std::fmt::Display for KvmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvmKind::Hardware => "hardware KVM (vmx/svm)",
            KvmKind::Pvm => "PVM (kvm_pvm, no hardware virtualization)",
            KvmKind::Unrecognized => "KVM of unrecognized kind",
            KvmKind::None => "no KVM",
        })
    }
}

/// What the host shows, gathered from /dev, /proc and /sys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// The CPU flags in /proc/cpuinfo include vmx or svm.
    pub hw_virt_flag: bool,
    /// `kvm_pvm` is loaded or built in (/sys/module/kvm_pvm or /proc/modules).
    pub kvm_pvm: bool,
}

impl HostFacts {
    /// Reads the facts from this host.
    pub fn gather() -> Self {
        Self::gather_from(Path::new("/"))
    }

    /// Reads the facts from the /dev, /proc and /sys under `root`.
    fn gather_from(root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        // /proc/modules is absent on kernels without module support; a
        // built-in module still shows in /sys/module when it has parameters
        // (kvm_pvm does).
        let modules = std::fs::read_to_string(root.join("proc/modules")).unwrap_or_default();
        HostFacts {
            dev_kvm: root.join("dev/kvm").exists(),
            hw_virt_flag: cpu_has_hw_virt(&cpuinfo),
            kvm_pvm: root.join("sys/module/kvm_pvm").exists()
                || modules
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some("kvm_pvm")),
        }
    }

    /// Classifies the facts. `kvm_pvm` wins over a vmx/svm flag: when both
    /// show, PVM is the one that can make a stock kernel crawl, and saying
    /// so is the safe mistake.
    pub fn kind(&self) -> KvmKind {
        match (self.dev_kvm, self.kvm_pvm, self.hw_virt_flag) {
            (false, _, _) => KvmKind::None,
            (true, true, _) => KvmKind::Pvm,
            (true, false, true) => KvmKind::Hardware,
            (true, false, false) => KvmKind::Unrecognized,
        }
    }
}

/// Whether a /proc/cpuinfo text lists `vmx` or `svm` among its flags.
pub fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

/// The kind of KVM on this host.
pub fn detect_kvm_kind() -> KvmKind {
    HostFacts::gather().kind()
}

/// Symbol names that only a PVM guest kernel has (heuristic, see module doc).
pub const PVM_GUEST_SYMBOLS: &[&str] = &["pvm_early_setup", "pvm_early_kernel_event_entry"];

/// Whether a kernel image can run as a PVM guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PvmKernelSupport {
    /// PVM-enabled; the evidence.
    Enabled(String),
    /// Not PVM-enabled; the evidence.
    NotEnabled(String),
    /// Cannot tell; why.
    Unknown(String),
}

const IKCFG_START: &[u8] = b"IKCFG_ST";
const SCAN_CHUNK: usize = 1 << 20;

/// Judges the kernel at `path` (see the module documentation).
pub fn kernel_pvm_support(path: &Path) -> io::Result<PvmKernelSupport> {
    let mut file = File::open(path)?;
    if let Some(config) = embedded_config(&mut file)? {
        return Ok(if config_enables_pvm(&config) {
            PvmKernelSupport::Enabled("its embedded config has CONFIG_PVM_GUEST=y".into())
        } else {
            PvmKernelSupport::NotEnabled("its embedded config lacks CONFIG_PVM_GUEST=y".into())
        });
    }
    match elf_string_tables(&file)? {
        None if is_bzimage(&mut file)? => Ok(PvmKernelSupport::Unknown(
            "a bzImage, whose compressed payload hides its config; boot the ELF vmlinux \
             (built with CONFIG_IKCONFIG) instead"
                .into(),
        )),
        None => Ok(PvmKernelSupport::Unknown(
            "neither an ELF vmlinux nor a bzImage, and no embedded config".into(),
        )),
        Some(tables) => {
            if let Some(sym) = PVM_GUEST_SYMBOLS
                .iter()
                .find(|s| tables.iter().any(|t| strtab_contains(t, s)))
            {
                Ok(PvmKernelSupport::Enabled(format!(
                    "it has the PVM guest symbol {sym}"
                )))
            } else if tables.len() > 1 {
                Ok(PvmKernelSupport::NotEnabled(
                    "its symbol table has no PVM guest symbols".into(),
                ))
            } else {
                Ok(PvmKernelSupport::Unknown(
                    "stripped vmlinux without embedded config".into(),
                ))
            }
        }
    }
}

/// Whether a kernel .config text sets CONFIG_PVM_GUEST=y.
pub fn config_enables_pvm(config: &str) -> bool {
    config.lines().any(|l| l.trim() == "CONFIG_PVM_GUEST=y")
}

/// Whether the file has the bzImage setup header magic "HdrS" at 0x202.
fn is_bzimage(file: &mut File) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0x202))?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"HdrS")
}

/// Finds `IKCFG_ST` and inflates the gzip stream after it.
fn embedded_config(file: &mut File) -> io::Result<Option<String>> {
    let Some(offset) = find_in_file(file, IKCFG_START)? else {
        return Ok(None);
    };
    file.seek(SeekFrom::Start(offset + IKCFG_START.len() as u64))?;
    let mut text = String::new();
    // A marker that is not followed by a gzip'd config is not one.
    match flate2::read::GzDecoder::new(file.take(16 << 20)).read_to_string(&mut text) {
        Ok(_) => Ok(Some(text)),
        Err(_) => Ok(None),
    }
}

/// Offset of the first occurrence of `needle` in the file.
fn find_in_file(file: &mut File, needle: &[u8]) -> io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; SCAN_CHUNK + needle.len()];
    let mut carried = 0usize; // bytes kept from the previous chunk
    let mut base = 0u64; // file offset of buf[0]
    loop {
        let n = file.read(&mut buf[carried..])?;
        if n == 0 {
            return Ok(None);
        }
        let filled = carried + n;
        if let Some(pos) = find(&buf[..filled], needle) {
            return Ok(Some(base + pos as u64));
        }
        let keep = (needle.len() - 1).min(filled);
        buf.copy_within(filled - keep..filled, 0);
        base += (filled - keep) as u64;
        carried = keep;
    }
}

/// Position of `needle` in `haystack`, jumping between occurrences of its
/// first byte.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The contents of every SHT_STRTAB section of an ELF64 file (the section
/// name table is always among them), or `None` if it is not ELF64.
fn elf_string_tables(file: &File) -> io::Result<Option<Vec<Vec<u8>>>> {
    const MAX_STRTAB: u64 = 256 << 20;
    crate::elf::contents(
        file,
        crate::elf::Table::Sections,
        crate::elf::SHT_STRTAB,
        MAX_STRTAB,
    )
}

/// Whether `name` appears as a whole NUL-terminated string in a string table.
fn strtab_contains(table: &[u8], name: &str) -> bool {
    table.split(|b| *b == 0).any(|s| s == name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn classifies_hosts() {
        let facts = |dev_kvm, hw_virt_flag, kvm_pvm| HostFacts {
            dev_kvm,
            hw_virt_flag,
            kvm_pvm,
        };
        assert_eq!(facts(false, true, true).kind(), KvmKind::None);
        assert_eq!(facts(true, true, false).kind(), KvmKind::Hardware);
        assert_eq!(facts(true, false, true).kind(), KvmKind::Pvm);
        assert_eq!(facts(true, true, true).kind(), KvmKind::Pvm);
        assert_eq!(facts(true, false, false).kind(), KvmKind::Unrecognized);
    }

    #[test]
    fn reads_cpu_flags() {
        assert!(cpu_has_hw_virt(
            "processor\t: 0\nflags\t\t: fpu vme svm lm\n"
        ));
        assert!(cpu_has_hw_virt("flags\t: vmx sse\n"));
        assert!(!cpu_has_hw_virt(
            "flags\t\t: fpu vmxx hypervisor\nmodel name: svm\n"
        ));
    }

    /// A host tree under a temp dir: /proc/cpuinfo with `flags`, and the
    /// other files when given.
    fn host_tree(
        flags: &str,
        dev_kvm: bool,
        modules: Option<&str>,
        sys_pvm: bool,
    ) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = |p: &str| {
            let d = root.path().join(p);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        std::fs::write(
            dir("proc").join("cpuinfo"),
            format!("processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"),
        )
        .unwrap();
        if let Some(modules) = modules {
            std::fs::write(dir("proc").join("modules"), modules).unwrap();
        }
        if dev_kvm {
            std::fs::write(dir("dev").join("kvm"), "").unwrap();
        }
        if sys_pvm {
            dir("sys/module/kvm_pvm");
        }
        root
    }

    #[test]
    fn gathers_the_facts_from_dev_proc_and_sys() {
        let gather = |t: &tempfile::TempDir| HostFacts::gather_from(t.path());
        // A PVM cloud guest: no vmx/svm, kvm_pvm loaded as a module.
        let pvm = host_tree(
            "fpu lm hypervisor",
            true,
            Some("kvm_pvm 167936 0 - Live 0x0\nkvm 1232896 1 kvm_pvm, Live 0x0\n"),
            false,
        );
        let facts = gather(&pvm);
        assert_eq!(
            facts,
            HostFacts {
                dev_kvm: true,
                hw_virt_flag: false,
                kvm_pvm: true
            }
        );
        assert_eq!(facts.kind(), KvmKind::Pvm);
        // Built in: no /proc/modules, only /sys/module/kvm_pvm.
        let builtin = host_tree("fpu lm", true, None, true);
        assert_eq!(gather(&builtin).kind(), KvmKind::Pvm);
        // Hardware KVM: vmx, kvm_intel but no kvm_pvm (a module whose
        // name only starts with it does not count).
        let hw = host_tree(
            "fpu vmx lm",
            true,
            Some("kvm_intel 409600 0 - Live 0x0\nkvm_pvmx 1 0 - Live 0x0\n"),
            false,
        );
        let facts = gather(&hw);
        assert!(facts.hw_virt_flag && !facts.kvm_pvm, "{facts:?}");
        assert_eq!(facts.kind(), KvmKind::Hardware);
        // svm without /dev/kvm: no KVM whatever the CPU has.
        let none = host_tree("fpu svm lm", false, Some(""), false);
        assert_eq!(gather(&none).kind(), KvmKind::None);
        // Nothing readable at all (an empty root): no KVM, no panic.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(gather(&empty), HostFacts::default());
    }

    fn gzip(text: &str) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap()
    }

    fn image_with_config(config: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // Put the marker across the scanner's chunk boundary.
        f.write_all(&vec![0x90u8; SCAN_CHUNK - 3]).unwrap();
        f.write_all(b"IKCFG_ST").unwrap();
        f.write_all(&gzip(config)).unwrap();
        f.write_all(b"IKCFG_ED").unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn embedded_config_decides() {
        let yes = image_with_config("CONFIG_X86_64=y\nCONFIG_PVM_GUEST=y\n");
        assert!(matches!(
            kernel_pvm_support(yes.path()).unwrap(),
            PvmKernelSupport::Enabled(_)
        ));
        let no = image_with_config("CONFIG_X86_64=y\n# CONFIG_PVM_GUEST is not set\n");
        assert!(matches!(
            kernel_pvm_support(no.path()).unwrap(),
            PvmKernelSupport::NotEnabled(_)
        ));
    }

    #[test]
    fn finds_needles() {
        assert_eq!(find(b"xxIKCFG_STyy", b"IKCFG_ST"), Some(2));
        assert_eq!(find(b"IKCFG_S", b"IKCFG_ST"), None);
        assert_eq!(find(b"IIKCFG_ST", b"IKCFG_ST"), Some(1));
        assert_eq!(find(b"abc", b""), None);
    }

    #[test]
    fn bzimage_is_unknown() {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&image).unwrap();
        let verdict = kernel_pvm_support(f.path()).unwrap();
        assert!(matches!(&verdict, PvmKernelSupport::Unknown(why) if why.contains("bzImage")));
    }

    #[test]
    fn unknown_without_config_or_elf() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"MZ not a kernel, IKCFG_ST but no gzip")
            .unwrap();
        assert!(matches!(
            kernel_pvm_support(f.path()).unwrap(),
            PvmKernelSupport::Unknown(_)
        ));
    }

    /// A minimal ELF64 with a section-name table and a symbol string table.
    fn elf_with_strings(symbols: &[&str]) -> tempfile::NamedTempFile {
        let shstrtab = b"\0.shstrtab\0.strtab\0".to_vec();
        let mut strtab = vec![0u8];
        for s in symbols {
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
        }
        let data_off = 64u64;
        let shoff = data_off + (shstrtab.len() + strtab.len()) as u64;
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        out.extend_from_slice(&shstrtab);
        out.extend_from_slice(&strtab);
        let section = |kind: u32, off: u64, size: u64| {
            let mut s = vec![0u8; 64];
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            s[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            s
        };
        out.extend(section(0, 0, 0));
        out.extend(section(3, data_off, shstrtab.len() as u64));
        out.extend(section(
            3,
            data_off + shstrtab.len() as u64,
            strtab.len() as u64,
        ));
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&out).unwrap();
        f
    }

    #[test]
    fn elf_symbols_decide_without_config() {
        let pvm = elf_with_strings(&["start_kernel", "pvm_early_setup"]);
        assert!(matches!(
            kernel_pvm_support(pvm.path()).unwrap(),
            PvmKernelSupport::Enabled(_)
        ));
        let stock = elf_with_strings(&["start_kernel", "pvm_early_setup_not"]);
        assert!(matches!(
            kernel_pvm_support(stock.path()).unwrap(),
            PvmKernelSupport::NotEnabled(_)
        ));
    }
}
