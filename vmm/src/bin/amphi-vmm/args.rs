//! `amphi-vmm`'s command line, parsed by hand: no CLI framework in the
//! running VMM (what it would add is text and relocations the process
//! carries for the VM's whole life). `--opt VALUE` and `--opt=VALUE`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use amphi_vmm::devices::virtio::net as vnet;
use amphi_vmm::BlockConfig;

use crate::{parse_disk, parse_fs, parse_net, parse_timeout, FsArg, NetArg};

/// The usage text (`--help`).
pub const USAGE: &str = "\
Usage: amphi-vmm --kernel PATH [OPTIONS]

Boot a kernel in amphi's VMM (`amphi vmm` runs this program; `amphi run
--vm-backend builtin` does too).

Options:
  --kernel PATH            Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage
  --boot auto|linux|pvh    How the kernel is entered [default: auto]: auto takes
                           Linux's 64-bit boot protocol for a Linux kernel (a
                           vmlinux with Linux's ELF notes, or a bzImage) and PVH
                           for another ELF with a PVH note; linux always the
                           64-bit protocol; pvh the ELF's PVH entry (Linux
                           through PVH first probes 256 CPUID leaves for Xen,
                           each a VM exit)
  --initrd PATH            Initial ramdisk
  --cmdline STR            Kernel command line [default: amphi's]
  --mem MIB                Guest RAM in MiB [default: 256]
  --vcpus N                Number of vCPUs [default: 1]
  --disk PATH[,ro]         virtio-blk device on a file, read-only with \",ro\";
                           repeatable (vda, vdb, ...)
  --net fd=N|PATH          virtio-net device on passt's socket protocol: an
                           inherited connected unix stream socket N (N >= 3), or
                           a listening unix socket to connect to
  --net-mac MAC            MAC address of the --net device [default: 02:61:6d:70:68:69]
  --console SOCKET         virtio-console connected to this listening unix socket
  --fs SOCKET,TAG|fd=N,tag=TAG
                           virtio-fs device served by a vhost-user backend
                           (virtiofsd); guest RAM becomes a shared memfd. Repeatable
  --serial stdout|none     Where the guest's serial console (COM1) goes [default: none]
  --force                  Boot the kernel even on a PVM host where it is not
                           known to be PVM-enabled
  --timeout SECS           Stop the guest after this many seconds
  --no-jail                Run the VMM unjailed, as root (debugging only)
                           [env: AMPHI_VMM_NO_JAIL]
  --jail-id ID             Name of the jail: cgroup amphi-vmm/ID, default root
                           /run/amphi/jail/ID [default: vmm-<pid>]
  --jail-dir DIR           Empty directory that becomes the jailed VMM's root
  --jail-uid UID           uid of the jailed VMM [default: 2000000000 + pid]
                           [env: AMPHI_VMM_UID]
  --jail-gid GID           gid of the jailed VMM [default: the uid] [env: AMPHI_VMM_GID]
  -h, --help               Print this text

`amphi-vmm vhost-user-relay --help`: the relay amphi puts between QEMU and
virtiofsd (a dead virtiofsd's requests then fail with EIO under QEMU too).

Jailed by default: the process started supervises the VMM, its child in a
new pid namespace and its own cgroup (amphi-vmm/ID: memory = guest RAM +
64 MiB + RAM/64, pids = vCPUs + 8), which opens everything, creates the VM,
then enters new mount, ipc, uts and net namespaces, pivots into an empty
read-only root, runs as an unprivileged uid/gid with no capabilities,
no_new_privs and not dumpable, and puts each thread under its own seccomp
filter before the guest runs. A forbidden system call kills the VMM
(SIGSYS), said on stderr, exit status 159.

Exit status: 0 when the guest reset or shut down, 1 when it died, 2 for a
bad command line, 3 when a device's backend failed (--fs), 124 after
--timeout, 128+N after signal N, 159 after a seccomp violation, 125 when the
VM could not be started.
";

/// The parsed command line.
#[derive(Debug)]
pub struct VmmArgs {
    pub kernel: PathBuf,
    pub boot: amphi_vmm::BootChoice,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem: u32,
    pub vcpus: u8,
    pub disk: Vec<BlockConfig>,
    pub net: Option<NetArg>,
    pub net_mac: Option<[u8; 6]>,
    pub console: Option<PathBuf>,
    pub fs: Vec<FsArg>,
    /// `--serial stdout`.
    pub serial_stdout: bool,
    pub force: bool,
    pub timeout: Option<Duration>,
    pub no_jail: bool,
    pub jail_id: Option<String>,
    pub jail_dir: Option<PathBuf>,
    pub jail_uid: Option<u32>,
    pub jail_gid: Option<u32>,
    /// For tests of the violation report: the control thread makes a
    /// forbidden call (socket) once under its filter.
    pub seccomp_selftest: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<VmmArgs>),
    Help,
}

/// Whether an environment flag's value means yes (as clap's flags read
/// them: empty, 0, false, no, off and n, f mean no).
pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off" | "n" | "f"
        )
    })
}

/// A uid or gid: a number from 1.
pub(crate) fn parse_id(opt: &str, s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("{opt} {s:?}: expected a number from 1 to {}", u32::MAX))
}

fn parse_number<T: std::str::FromStr>(opt: &str, s: &str, what: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{opt} {s:?}: expected {what}"))
}

/// Parses the arguments after the program name; the environment gives
/// `--no-jail`, `--jail-uid` and `--jail-gid` when they are not given.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    let mut it = args.into_iter();
    let mut kernel = None;
    let mut a = VmmArgs {
        kernel: PathBuf::new(),
        boot: amphi_vmm::BootChoice::Auto,
        initrd: None,
        cmdline: amphi_vmm::DEFAULT_CMDLINE.to_string(),
        mem: 256,
        vcpus: 1,
        disk: Vec::new(),
        net: None,
        net_mac: None,
        console: None,
        fs: Vec::new(),
        serial_stdout: false,
        force: false,
        timeout: None,
        no_jail: false,
        jail_id: None,
        jail_dir: None,
        jail_uid: None,
        jail_gid: None,
        seccomp_selftest: false,
    };
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("{a:?}: an option must be UTF-8"))?;
        let (opt, inline) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let flag = |v: &Option<String>| match v {
            Some(_) => Err(format!("{opt} takes no value")),
            None => Ok(true),
        };
        match opt.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--force" => a.force = flag(&inline)?,
            "--no-jail" => a.no_jail = flag(&inline)?,
            "--seccomp-selftest" => a.seccomp_selftest = flag(&inline)?,
            _ => {}
        }
        if matches!(
            opt.as_str(),
            "-h" | "--help" | "--force" | "--no-jail" | "--seccomp-selftest"
        ) {
            continue;
        }
        let mut value = || -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .ok_or_else(|| format!("{opt} needs a value"))?
                    .into_string()
                    .map_err(|v| format!("{opt} {v:?}: not UTF-8")),
            }
        };
        match opt.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--boot" => a.boot = value()?.parse().map_err(|e| format!("--boot: {e}"))?,
            "--initrd" => a.initrd = Some(value()?.into()),
            "--cmdline" => a.cmdline = value()?,
            "--mem" => a.mem = parse_number(&opt, &value()?, "a number of MiB")?,
            "--vcpus" => a.vcpus = parse_number(&opt, &value()?, "a number of vCPUs (0-255)")?,
            "--disk" => a
                .disk
                .push(parse_disk(&value()?).map_err(|e| format!("{opt}: {e}"))?),
            "--net" => a.net = Some(parse_net(&value()?).map_err(|e| format!("{opt}: {e}"))?),
            "--net-mac" => {
                a.net_mac = Some(vnet::parse_mac(&value()?).map_err(|e| format!("{opt}: {e}"))?)
            }
            "--console" => a.console = Some(value()?.into()),
            "--fs" => {
                a.fs.push(parse_fs(&value()?).map_err(|e| format!("{opt}: {e}"))?)
            }
            "--serial" => {
                a.serial_stdout = match value()?.as_str() {
                    "stdout" => true,
                    "none" => false,
                    v => return Err(format!("{opt} {v:?}: possible values: stdout, none")),
                }
            }
            "--timeout" => {
                a.timeout = Some(parse_timeout(&value()?).map_err(|e| format!("{opt}: {e}"))?)
            }
            "--jail-id" => a.jail_id = Some(value()?),
            "--jail-dir" => a.jail_dir = Some(value()?.into()),
            "--jail-uid" => a.jail_uid = Some(parse_id(&opt, &value()?)?),
            "--jail-gid" => a.jail_gid = Some(parse_id(&opt, &value()?)?),
            _ => return Err(format!("unknown argument {arg:?} (see --help)")),
        }
    }
    a.kernel = kernel.ok_or("--kernel PATH is required (see --help)")?;
    if a.net_mac.is_some() && a.net.is_none() {
        return Err("--net-mac needs --net".into());
    }
    a.no_jail = a.no_jail || env_flag("AMPHI_VMM_NO_JAIL");
    if a.jail_uid.is_none() {
        if let Ok(v) = std::env::var("AMPHI_VMM_UID") {
            a.jail_uid = Some(parse_id("$AMPHI_VMM_UID", &v)?);
        }
    }
    if a.jail_gid.is_none() {
        if let Ok(v) = std::env::var("AMPHI_VMM_GID") {
            a.jail_gid = Some(parse_id("$AMPHI_VMM_GID", &v)?);
        }
    }
    Ok(Parsed::Run(Box::new(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<VmmArgs, String> {
        match parse(args.iter().map(OsString::from))? {
            Parsed::Run(a) => Ok(*a),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn options_and_defaults() {
        let a = run(&["--kernel", "/k"]).unwrap();
        assert_eq!(a.kernel, PathBuf::from("/k"));
        assert_eq!((a.mem, a.vcpus), (256, 1));
        assert_eq!(a.cmdline, amphi_vmm::DEFAULT_CMDLINE);
        assert!(!a.serial_stdout && !a.force && a.disk.is_empty() && a.fs.is_empty());
        assert_eq!(a.boot, amphi_vmm::BootChoice::Auto);
        let a = run(&[
            "--kernel=/k",
            "--boot",
            "pvh",
            "--initrd",
            "/i",
            "--cmdline=console=ttyS0 a=b",
            "--mem",
            "64",
            "--vcpus=2",
            "--disk",
            "/d,ro",
            "--disk=/e",
            "--serial",
            "stdout",
            "--force",
            "--timeout",
            "1.5",
            "--jail-id",
            "x",
            "--jail-dir",
            "/j",
            "--jail-uid",
            "7",
            "--net",
            "fd=5",
            "--net-mac",
            "02:00:00:00:00:01",
            "--fs",
            "fd=6,tag=t",
        ])
        .unwrap();
        assert_eq!(a.initrd, Some("/i".into()));
        assert_eq!(a.boot, amphi_vmm::BootChoice::Pvh);
        assert_eq!(a.cmdline, "console=ttyS0 a=b");
        assert_eq!((a.mem, a.vcpus), (64, 2));
        assert_eq!(a.disk.len(), 2);
        assert!(a.disk[0].read_only && !a.disk[1].read_only);
        assert!(a.serial_stdout && a.force);
        assert_eq!(a.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(a.jail_id.as_deref(), Some("x"));
        assert_eq!(a.jail_dir, Some("/j".into()));
        assert_eq!(a.jail_uid, Some(7));
        assert_eq!(a.net, Some(NetArg::Fd(5)));
        assert_eq!(a.net_mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(a.fs[0].tag, "t");
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        let err = |args: &[&str]| run(args).unwrap_err();
        assert!(err(&[]).contains("--kernel PATH is required"));
        assert!(err(&["--kernel"]).contains("--kernel needs a value"));
        assert!(err(&["--kernel", "/k", "--bogus"]).contains("unknown argument \"--bogus\""));
        assert!(err(&["--kernel", "/k", "--mem", "lots"]).contains("--mem \"lots\""));
        assert!(err(&["--kernel", "/k", "--boot=efi"])
            .contains("--boot: unknown boot protocol \"efi\" (possible values: auto, linux, pvh)"));
        assert!(err(&["--kernel", "/k", "--vcpus", "300"]).contains("--vcpus"));
        assert!(
            err(&["--kernel", "/k", "--serial", "tty"]).contains("possible values: stdout, none")
        );
        assert!(err(&["--kernel", "/k", "--force=yes"]).contains("takes no value"));
        assert!(err(&["--kernel", "/k", "--jail-uid", "0"]).contains("from 1"));
        assert!(err(&["--kernel", "/k", "--net-mac", "02:00:00:00:00:01"]).contains("needs --net"));
        assert!(err(&["--kernel", "/k", "--disk", "/a,b"]).contains("--disk: unknown disk option"));
        assert!(err(&["--kernel", "/k", "--timeout", "0"]).contains("--timeout"));
        assert_eq!(err(&["--kernel", "/k", "--help"]), "help");
    }
}
