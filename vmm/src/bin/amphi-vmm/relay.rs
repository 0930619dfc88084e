//! `amphi-vmm vhost-user-relay`: the vhost-user relay between QEMU and a
//! virtiofsd (`amphi_vmm::devices::virtio::fs::relay`), run by amphi for
//! each virtio-fs share of a QEMU microVM, jailed.
//!
//! It is started with both connections open (QEMU's end and virtiofsd's),
//! enters the jail at once (new mount, ipc, uts and net namespaces, an
//! empty read-only root, an unprivileged uid and gid, no capabilities,
//! no_new_privs, not dumpable, SIGKILL when amphi dies), and puts itself
//! under its seccomp filter before it reads a message. Then it relays.
//!
//! What amphi reads: one line on stdout when virtiofsd has gone, `taken
//! over: ...` (the guest's requests get EIO from now on; it serves the
//! rings until it is killed) or `not taken over: REASON` (it exits 3).
//! Exit status 0 when QEMU closed its connection, 1 when a connection
//! broke the protocol or serving failed, 2 for a bad command line, 125 when
//! it could not start, 159 after a seccomp violation.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use amphi_vmm::devices::virtio::fs::relay::{Ending, Relay};
use amphi_vmm::jail::{self, FilterParams, SeccompFilters, ThreadKind};

use crate::{EXIT_AMPHI, EXIT_USAGE};

pub const USAGE: &str = "\
Usage: amphi-vmm vhost-user-relay --frontend-fd N --backend-fd M [OPTIONS]

Relay a vhost-user connection between a frontend (QEMU's vhost-user-fs
device, on the inherited socket N) and virtiofsd (socket M), and answer the
guest's file system requests with EIO once virtiofsd is gone (amphi runs it
for each virtio-fs share of a QEMU microVM).

Options:
  --frontend-fd N    The frontend's connected unix stream socket (N >= 3)
  --backend-fd M     virtiofsd's connected unix stream socket (M >= 3)
  --jail-dir DIR     Empty directory that becomes the relay's root
  --jail-uid UID     uid of the jailed relay [env: AMPHI_VMM_UID]
  --jail-gid GID     gid of the jailed relay [default: the uid]
  --no-jail          Run unjailed (debugging only) [env: AMPHI_VMM_NO_JAIL]
  -h, --help         Print this text

When virtiofsd has gone, one line on stdout: `taken over: ...` or
`not taken over: REASON`. Exit status: 0 when the frontend closed its
connection, 1 when a peer broke the protocol, 2 for a bad command line, 3
when the rings could not be taken over, 125 when the relay could not start,
159 after a seccomp violation.
";

/// The `not taken over` exit status.
const EXIT_NOT_TAKEN: i32 = 3;

#[derive(Debug, Default, PartialEq)]
pub struct RelayArgs {
    pub frontend: RawFd,
    pub backend: RawFd,
    pub jail_dir: Option<PathBuf>,
    pub jail_uid: Option<u32>,
    pub jail_gid: Option<u32>,
    pub no_jail: bool,
}

/// Parses the arguments after `vhost-user-relay`; `None`: `--help`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<RelayArgs>, String> {
    let mut a = RelayArgs {
        no_jail: crate::args::env_flag("AMPHI_VMM_NO_JAIL"),
        ..RelayArgs::default()
    };
    let (mut front, mut back) = (None, None);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (opt, inline) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match opt.as_str() {
            "-h" | "--help" => return Ok(None),
            "--no-jail" if inline.is_none() => {
                a.no_jail = true;
                continue;
            }
            _ => {}
        }
        let value = inline
            .or_else(|| it.next())
            .ok_or_else(|| format!("{opt} needs a value"))?;
        let fd = |v: &str| {
            v.parse::<RawFd>()
                .ok()
                .filter(|&n| n >= 3)
                .ok_or_else(|| format!("{opt} {v:?}: expected a descriptor number from 3"))
        };
        match opt.as_str() {
            "--frontend-fd" => front = Some(fd(&value)?),
            "--backend-fd" => back = Some(fd(&value)?),
            "--jail-dir" => a.jail_dir = Some(value.into()),
            "--jail-uid" => a.jail_uid = Some(crate::args::parse_id(&opt, &value)?),
            "--jail-gid" => a.jail_gid = Some(crate::args::parse_id(&opt, &value)?),
            _ => return Err(format!("unknown argument {arg:?} (see --help)")),
        }
    }
    a.frontend = front.ok_or("--frontend-fd N is required (see --help)")?;
    a.backend = back.ok_or("--backend-fd M is required (see --help)")?;
    if a.frontend == a.backend {
        return Err("--frontend-fd and --backend-fd name the same descriptor".into());
    }
    if a.jail_uid.is_none() {
        if let Ok(v) = std::env::var("AMPHI_VMM_UID") {
            a.jail_uid = Some(crate::args::parse_id("$AMPHI_VMM_UID", &v)?);
        }
    }
    if !a.no_jail && (a.jail_dir.is_none() || a.jail_uid.is_none()) {
        return Err("a jailed relay needs --jail-dir and --jail-uid (or --no-jail)".into());
    }
    Ok(Some(a))
}

/// A connected unix stream socket inherited as `fd`.
fn inherited(fd: RawFd, what: &str) -> Result<UnixStream, String> {
    // SAFETY: a plain C struct, all zeroes.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a number, into our own buffer.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    if rc != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("{what} {fd} is not an open socket"));
    }
    // SAFETY: an inherited descriptor that nothing else in this process
    // owns (taken once, before anything is opened).
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Runs the relay; returns the exit status.
pub fn run(a: &RelayArgs) -> i32 {
    let started = (|| -> Result<Relay, String> {
        let front = inherited(a.frontend, "--frontend-fd")?;
        let back = inherited(a.backend, "--backend-fd")?;
        if a.no_jail {
            eprintln!("amphi vmm: relay: warning: UNJAILED (--no-jail): debugging only");
        } else {
            let uid = a.jail_uid.unwrap_or_default();
            let root = a.jail_dir.clone().unwrap_or_default();
            jail::lockdown::enter(&jail::Lockdown {
                root: &root,
                uid,
                gid: a.jail_gid.unwrap_or(uid),
                parent_death_signal: Some(libc::SIGKILL),
            })
            .map_err(|e| e.to_string())?;
            jail::install_sigsys_reporter().map_err(|e| e.to_string())?;
            SeccompFilters::for_kinds(FilterParams::current(), &[ThreadKind::Relay])
                .and_then(|f| f.apply(ThreadKind::Relay, 0))
                .map_err(|e| e.to_string())?;
        }
        Ok(Relay::new(front, back))
    })();
    let mut relay = match started {
        Ok(r) => r,
        Err(e) => {
            eprintln!("amphi vmm: relay: error: {e}");
            return EXIT_AMPHI;
        }
    };
    match relay.relay() {
        Ending::FrontendClosed => 0,
        Ending::FrontendFailed(why) => {
            eprintln!("amphi vmm: relay: error: the frontend (QEMU): {why}");
            1
        }
        Ending::BackendGone(why) => match relay.take_over() {
            Ok(mut served) => {
                let said = format!(
                    "taken over: virtiofsd is gone ({why}); rings {:?} answered with EIO, {} requests it had not completed included",
                    served.rings(),
                    served.in_flight
                );
                verdict(&said);
                served.serve_all();
                loop {
                    if let Err(e) = served.serve_kicked(-1) {
                        eprintln!("amphi vmm: relay: error: {e}");
                        return 1;
                    }
                }
            }
            Err(e) => {
                verdict(&format!("not taken over: virtiofsd is gone ({why}); {e}"));
                EXIT_NOT_TAKEN
            }
        },
    }
}

/// The line amphi reads, on stdout and on the log.
fn verdict(line: &str) {
    eprintln!("amphi vmm: relay: {line}");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Exit status for a bad command line.
pub fn usage_error(e: &str) -> i32 {
    eprintln!("amphi vmm: relay: error: {e}");
    EXIT_USAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Option<RelayArgs>, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn relay_command_lines() {
        let a = p(&["--frontend-fd", "3", "--backend-fd=4", "--no-jail"])
            .unwrap()
            .unwrap();
        assert_eq!((a.frontend, a.backend, a.no_jail), (3, 4, true));
        let a = p(&[
            "--frontend-fd=5",
            "--backend-fd=6",
            "--jail-dir",
            "/j",
            "--jail-uid",
            "7",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.jail_dir, a.jail_uid, a.jail_gid),
            (Some("/j".into()), Some(7), None)
        );
        assert_eq!(p(&["--help"]).unwrap(), None);
        let err = |args: &[&str]| p(args).unwrap_err();
        assert!(err(&["--backend-fd=4"]).contains("--frontend-fd N is required"));
        assert!(err(&["--frontend-fd=2", "--backend-fd=4"]).contains("from 3"));
        assert!(err(&["--frontend-fd=4", "--backend-fd=4", "--no-jail"]).contains("same"));
        assert!(err(&["--frontend-fd=3", "--backend-fd=4", "--bogus=1"]).contains("unknown"));
        if std::env::var_os("AMPHI_VMM_UID").is_none()
            && std::env::var_os("AMPHI_VMM_NO_JAIL").is_none()
        {
            assert!(err(&["--frontend-fd=3", "--backend-fd=4"]).contains("--jail-dir"));
        }
    }
}
