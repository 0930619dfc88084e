//! The two ways to run the microVM: amphi's own VMM (the `amphi-vmm`
//! executable, [`vmm_binary`]) and `qemu-system-x86_64 -M microvm` (with KVM when usable,
//! else software emulation). Both get the same kernel, initrd, disk,
//! command line and guest channel (a virtio-console connected to a unix
//! socket amphi listens on). Which one runs is the dispatcher's rule
//! ([`crate::dispatch::backend`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use crate::dispatch::backend::{choose, Backend, BackendChoice};

/// What both backends are given.
pub struct VmSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disk: Option<&'a Path>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    pub channel: &'a Path,
    /// virtio-fs devices: each share's tag and the backend's end of its
    /// vhost-user connection (a descriptor the backend inherits).
    pub shares: &'a [(&'static str, i32)],
    /// The backend's end of passt's socket pair (a virtio-net device), when
    /// the run has a private network.
    pub net: Option<i32>,
    /// The run's directory (`<state root>/vm/<id>`): the jailed monitor's
    /// root is its `jail/`, named after it.
    pub run_dir: &'a Path,
}

/// The host's TSC frequency in kHz (from /proc/cpuinfo): the guest kernel
/// is told it with `tsc_early_khz=`, since calibrating the TSC under
/// software emulation often hangs.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// The kernel command line both backends boot with.
pub fn cmdline(backend: &Backend, root: &str, extra: &str) -> String {
    let mut c = format!(
        "console=ttyS0 quiet panic=-1 rdinit={} {root}",
        crate::proto::GUEST_INIT
    );
    match backend {
        // No ACPI under microvm: a triple fault ends the VM (-no-reboot).
        Backend::Qemu { kvm } => {
            c.push_str(" reboot=t");
            if !kvm {
                if let Some(khz) = host_tsc_khz() {
                    c.push_str(&format!(" tsc_early_khz={khz}"));
                }
            }
        }
        // The VMM ends the VM on an i8042 reset.
        Backend::Builtin => {
            // No CMOS RTC here: its driver would wait out a timeout (the
            // guest init sets the clock from the host instead).
            c.push_str(
                " reboot=k pci=off i8042.noaux i8042.nomux i8042.dumbkbd initcall_blacklist=cmos_init",
            );
        }
    }
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

/// The backend's command, ready to spawn.
pub fn command(backend: &Backend, s: &VmSpec) -> Result<Command, String> {
    let mut cmd = match backend {
        Backend::Builtin => builtin_command(s)?,
        Backend::Qemu { kvm } => qemu_command(*kvm, s),
    };
    // The caller connects stdout (the serial console) and stderr to pipes.
    cmd.stdin(Stdio::null());
    let parent = std::process::id() as libc::pid_t;
    let inherit: Vec<i32> = s.shares.iter().map(|(_, fd)| *fd).chain(s.net).collect();
    // SAFETY: async-signal-safe calls between fork and exec: the backend
    // gets its own process group (a ^C on the terminal goes to amphi,
    // which forwards it to the workload, not to the VM) and dies with amphi
    // (the spawning thread is amphi's main thread). A client that died
    // before the prctl took effect is caught by the getppid check.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            crate::sys::signal::die_with_parent(parent)?;
            // The vhost-user connections, by their numbers.
            for fd in &inherit {
                crate::sys::io::keep_on_exec(*fd)?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// The environment variable naming the VMM executable.
pub const VMM_BIN_ENV: &str = "AMPHI_VMM_BIN";

/// amphi's VMM executable: `$AMPHI_VMM_BIN`, else `amphi-vmm` next to
/// amphi's own binary. Checked to be an executable file.
pub fn vmm_binary() -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let (path, from) = match std::env::var_os(VMM_BIN_ENV).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), format!("${VMM_BIN_ENV}")),
        None => {
            let amphi = crate::container::sealed::host_binary();
            let dir = amphi.parent().map(Path::to_path_buf).unwrap_or_default();
            (
                dir.join("amphi-vmm"),
                format!("next to {}", amphi.display()),
            )
        }
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(format!(
            "amphi's VMM {} ({from}) is not an executable file",
            path.display()
        )),
        Err(e) => Err(format!(
            "amphi's VMM {} ({from}): {e}; install amphi-vmm beside amphi (cargo builds both) or name it with ${VMM_BIN_ENV}",
            path.display()
        )),
    }
}

/// `amphi-vmm` for `s`, jailed in the run directory.
fn builtin_command(s: &VmSpec) -> Result<Command, String> {
    let mut c = Command::new(vmm_binary()?);
    c.arg0("amphi-vmm")
        .arg("--kernel")
        .arg(s.kernel)
        .arg("--initrd")
        .arg(s.initrd)
        .arg("--cmdline")
        .arg(&s.cmdline)
        .arg("--mem")
        .arg(s.mem_mib.to_string())
        .arg("--vcpus")
        .arg(s.vcpus.to_string())
        .arg("--console")
        .arg(s.channel)
        .arg("--serial")
        .arg("stdout");
    // The jail: named after the run, its root in the run directory.
    if let Some(id) = super::jail::run_jail_id(s.run_dir) {
        c.arg("--jail-id")
            .arg(id)
            .arg("--jail-dir")
            .arg(s.run_dir.join(super::jail::RUN_JAIL_DIR));
    }
    if let Some(d) = s.disk {
        let mut arg = d.as_os_str().to_owned();
        arg.push(",ro");
        c.arg("--disk").arg(arg);
    }
    for (tag, fd) in s.shares {
        c.arg("--fs").arg(format!("fd={fd},tag={tag}"));
    }
    if let Some(fd) = s.net {
        c.arg("--net").arg(format!("fd={fd}"));
    }
    Ok(c)
}

/// QEMU's microvm for `s` (with KVM when `kvm`).
fn qemu_command(kvm: bool, s: &VmSpec) -> Command {
    let mut c = Command::new(qemu_binary());
    // vhost-user devices need guest RAM the backend can map: a shared memfd.
    let machine = if s.shares.is_empty() {
        "microvm,rtc=on,acpi=off"
    } else {
        "microvm,rtc=on,acpi=off,memory-backend=mem"
    };
    c.args([
        "-M",
        machine,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    if kvm {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        c.args(["-accel", "tcg"]);
    }
    c.arg("-m")
        .arg(s.mem_mib.to_string())
        .arg("-smp")
        .arg(s.vcpus.to_string())
        .arg("-kernel")
        .arg(s.kernel)
        .arg("-initrd")
        .arg(s.initrd)
        .arg("-append")
        .arg(&s.cmdline)
        // The serial console on QEMU's stdout, a pipe amphi reads
        // into a bounded ring (see `console`).
        .arg("-serial")
        .arg("file:/dev/stdout")
        .arg("-chardev")
        .arg(format!("socket,id=chan,path={}", s.channel.display()))
        .args([
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole,chardev=chan",
        ]);
    if let Some(d) = s.disk {
        c.arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,readonly=on,id=root",
                d.display()
            ))
            .args(["-device", "virtio-blk-device,drive=root"]);
    }
    if !s.shares.is_empty() {
        c.arg("-object").arg(format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            s.mem_mib
        ));
    }
    for (i, (tag, fd)) in s.shares.iter().enumerate() {
        c.arg("-chardev")
            .arg(format!("socket,id=vfs{i},fd={fd}"))
            .arg("-device")
            .arg(format!("vhost-user-fs-device,chardev=vfs{i},tag={tag}"));
    }
    if let Some(fd) = s.net {
        // passt's end is the other half of the pair (QEMU >= 7.2).
        c.arg("-netdev")
            .arg(format!("stream,id=net0,addr.type=fd,addr.str={fd}"))
            .args(["-device", "virtio-net-device,netdev=net0"]);
    }
    c
}

/// `$AMPHI_QEMU`, else `qemu-system-x86_64` from PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("AMPHI_QEMU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_end_the_vm_the_backends_way() {
        let q = cmdline(&Backend::Qemu { kvm: false }, "amphi.root=vda", "");
        assert!(q.contains("reboot=t") && q.contains("rdinit=/.amphi/init amphi.root=vda"));
        let b = cmdline(&Backend::Builtin, "amphi.root=initramfs", "loglevel=7");
        assert!(b.contains("reboot=k") && b.ends_with(" loglevel=7") && !b.contains("tsc_early"));
    }
}
