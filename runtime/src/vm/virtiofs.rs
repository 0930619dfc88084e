//! Host directories in a microVM over virtio-fs: one virtiofsd per share,
//! started before the backend and ended with it.
//!
//! Two shares, each its own daemon (and its own virtio-fs device and tag),
//! because they need opposite settings:
//! - **the image's rootfs** (tag [`ROOT_TAG`]): a read-only overlay of the
//!   image's stored layers, served `--readonly --cache=always --xattr`
//!   (nothing on the host ever changes an unpacked layer, so the guest may
//!   cache everything; file capabilities travel as xattrs). The guest puts
//!   a tmpfs upper over it: its writes never reach the store.
//! - **the volumes** (`-v`, tag [`VOLUME_TAG`]): a small tmpfs holding one
//!   entry per volume, `0`, `1`, ..., each a bind mount of the host path (a
//!   directory or a file), read-only (recursively) for `:ro`; served with
//!   `--cache=auto` (the host may change a volume while the guest runs:
//!   close-to-open consistency, as NFS gives) and without CAP_MKNOD (a
//!   guest cannot make device nodes in a host directory).
//!
//! The mounts are made in a mount namespace of the daemon's own, between
//! fork and exec: nothing appears in the host's namespace, and nothing is
//! left when the daemon ends. virtiofsd then sandboxes itself (its
//! `namespace` sandbox: new pid, mount and network namespaces, pivot_root
//! into the share, seccomp, only the capabilities it needs; file handles
//! off, so it never holds CAP_DAC_READ_SEARCH).
//!
//! The vhost-user socket never exists as a file for longer than the spawn:
//! amphi binds it in the 0700 run directory, connects the backend's end,
//! removes the name, and hands the listening end to virtiofsd (`--fd`) and
//! the connected end to the backend. Nobody else can connect, and a
//! `kill -9` leaves no socket behind.
//!
//! Lifetime: the daemon gets SIGKILL when amphi dies (its sandbox's server
//! process gets SIGTERM when the daemon dies, and exits); it exits by itself
//! when the backend closes its end; the run's cleanup kills it. A daemon
//! that ends while the VM runs ends the run with an error (the guest's file
//! operations on the share would never complete).

use super::console::Capture;
use crate::run::RunError;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub use crate::proto::{VIRTIOFS_ROOT_TAG as ROOT_TAG, VIRTIOFS_VOLUME_TAG as VOLUME_TAG};
/// Where the guest init mounts the volumes share; volume `n` is
/// `GUEST_VOLUMES/n`.
pub const GUEST_VOLUMES: &str = "/.amphi/vol";
/// The descriptor number virtiofsd gets its listening socket on.
const LISTEN_FD: i32 = 3;

/// `$AMPHI_VIRTIOFSD`, else `virtiofsd` from PATH (or /usr/libexec, where
/// Debian's package puts it).
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("AMPHI_VIRTIOFSD").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "$AMPHI_VIRTIOFSD names {}, which does not exist",
                p.display()
            ))
        };
    }
    crate::guestfs::find_program("virtiofsd")
        .or_else(|| Some(PathBuf::from("/usr/libexec/virtiofsd")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            "virtiofsd is not installed: microVM volumes and the virtio-fs rootfs need it (run scripts/setup, which builds it with `cargo install virtiofsd`, or set $AMPHI_VIRTIOFSD)".into()
        })
}

/// One `-v` volume as the share holds it.
#[derive(Clone, Debug)]
pub struct VolumeShare {
    /// The host path (canonical): a directory or a file.
    pub host: PathBuf,
    pub readonly: bool,
}

/// What a daemon shares.
#[derive(Clone, Debug)]
pub enum Share {
    /// A read-only overlay of `lowers` (stored layer directories, top
    /// first).
    Rootfs { lowers: Vec<PathBuf> },
    /// The volumes, in order.
    Volumes(Vec<VolumeShare>),
}

impl Share {
    pub fn tag(&self) -> &'static str {
        match self {
            Share::Rootfs { .. } => ROOT_TAG,
            Share::Volumes(_) => VOLUME_TAG,
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Share::Rootfs { .. } => "the image's rootfs".into(),
            Share::Volumes(v) => {
                let names: Vec<String> = v.iter().map(|v| v.host.display().to_string()).collect();
                format!("the volumes ({})", names.join(", "))
            }
        }
    }

    /// The directory (in the run directory) the daemon shares, and the
    /// name of the socket's path, which exists only during the spawn.
    fn paths(&self, run_dir: &Path) -> (PathBuf, PathBuf) {
        let name = match self {
            Share::Rootfs { .. } => "vfs-root",
            Share::Volumes(_) => "vfs-vol",
        };
        (run_dir.join(name), run_dir.join(format!("{name}.sock")))
    }
}

/// A running virtiofsd.
pub struct Daemon {
    pub tag: &'static str,
    pub what: String,
    pub child: Child,
    /// The backend's end of the vhost-user connection (inherited by the
    /// backend; closed here once it is spawned).
    pub frontend: Option<OwnedFd>,
    /// Its stderr.
    log: Capture,
    /// Its end has been reported ([`Daemon::ended`]).
    reported: bool,
    /// The vhost-user relay in front of it (QEMU's side; see
    /// [`Daemon::relay`]).
    relay: Option<Relay>,
}

/// A running `amphi-vmm vhost-user-relay`.
struct Relay {
    child: Child,
    /// Its stdout: the verdict line once virtiofsd is gone.
    verdict: OwnedFd,
    log: Capture,
}

/// How long amphi waits for the relay's verdict once virtiofsd has gone
/// (the relay sees the hang-up at once; the wait covers a loaded host).
const VERDICT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Relay {
    /// The relay's verdict line, or why there is none.
    fn verdict(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        let deadline = std::time::Instant::now() + VERDICT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !crate::sys::poll::wait_readable(self.verdict.as_raw_fd(), left) {
                if left.is_zero() {
                    return Err("the relay said nothing".into());
                }
                // Interrupted: wait out the rest.
                continue;
            }
            let mut buf = [0u8; 512];
            let got = rustix::io::read(&self.verdict, &mut buf).unwrap_or(0);
            if got == 0 {
                let st = self.child.try_wait().ok().flatten();
                return Err(match st {
                    Some(st) => format!("the relay ended ({st})"),
                    None => "the relay closed its output".into(),
                });
            }
            line.extend_from_slice(&buf[..got]);
            if let Some(end) = line.iter().position(|&b| b == b'\n') {
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if line.len() > 4096 {
                return Err("the relay's verdict is not a line".into());
            }
        }
    }
}

/// A virtiofsd that ended while its VM ran.
#[derive(Debug)]
pub struct Gone {
    /// Which daemon, and how it ended.
    pub what: String,
    /// Its last words (a "--- virtiofsd said" block), or nothing.
    pub said: String,
    /// The guest's requests to the share get EIO from now on: the relay
    /// in front of QEMU took the rings over. (amphi's VMM does so
    /// itself, without a relay: the session knows.)
    pub failing: bool,
}

impl Daemon {
    /// The backend's end of the connection, by number (-1 once closed).
    pub fn frontend_fd(&self) -> i32 {
        self.frontend.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    /// The daemon has ended (said once): which share, and how.
    pub fn ended(&mut self) -> Option<Gone> {
        if self.reported {
            return None;
        }
        let st = self.child.try_wait().ok()??;
        self.reported = true;
        let (failing, relay_said) = match self.relay.as_mut() {
            None => (false, String::new()),
            Some(r) => {
                let verdict = r.verdict();
                if verdict.is_err() {
                    r.log.settle(std::time::Duration::from_millis(500));
                }
                let (said, _) = r.log.tail(5);
                let said = said.trim();
                let block = if said.is_empty() || verdict.is_ok() {
                    String::new()
                } else {
                    format!("\n--- its vhost-user relay said\n{said}")
                };
                match verdict {
                    Ok(v) if v.starts_with("taken over") => (true, String::new()),
                    Ok(v) => (false, format!("\n--- its vhost-user relay: {v}{block}")),
                    Err(e) => (false, format!("\n--- its vhost-user relay: {e}{block}")),
                }
            }
        };
        self.log.settle(std::time::Duration::from_millis(500));
        let (said, _) = self.log.tail(10);
        let said = said.trim();
        Some(Gone {
            what: format!(
                "virtiofsd serving {} ended while the microVM ran ({st})",
                self.what
            ),
            said: if said.is_empty() {
                relay_said
            } else {
                format!("\n--- virtiofsd said\n{said}{relay_said}")
            },
            failing,
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.relay.as_mut() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }

    /// Puts `amphi-vmm vhost-user-relay` (`vmm`) between the backend and
    /// virtiofsd: the relay takes virtiofsd's connection, and
    /// [`Daemon::frontend`] becomes the other end of a new pair, for QEMU.
    /// QEMU alone leaves a dead virtiofsd's requests waiting for ever;
    /// through the relay they fail with EIO (see `amphi_vmm`'s
    /// `fs::relay`). Jailed like QEMU (in the run's jail directory, as its
    /// user), unless the monitor runs unjailed.
    pub fn relay(&mut self, vmm: &Path, run_dir: &Path) -> Result<(), RunError> {
        let Some(backend) = self.frontend.take() else {
            return Err(RunError::Failed(format!(
                "the vhost-user relay for {}: virtiofsd's connection is gone",
                self.what
            )));
        };
        let (qemu_end, relay_end) =
            UnixStream::pair().map_err(|e| RunError::io("socketpair", e))?;
        let (verdict_r, verdict_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| RunError::io("pipe", e.into()))?;
        let (log_r, log_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| RunError::io("pipe", e.into()))?;
        let mut cmd = Command::new(vmm);
        cmd.args(["vhost-user-relay", "--frontend-fd=3", "--backend-fd=4"]);
        if super::jail::unjailed() {
            cmd.arg("--no-jail");
        } else {
            let (dir, uid) = super::jail::run_jail(run_dir).map_err(RunError::Failed)?;
            cmd.arg("--jail-dir")
                .arg(&dir)
                .arg(format!("--jail-uid={uid}"));
        }
        cmd.stdin(Stdio::null()).stdout(verdict_w).stderr(log_w);
        let parent = std::process::id() as libc::pid_t;
        let (front_fd, back_fd) = (relay_end.as_raw_fd(), backend.as_raw_fd());
        // SAFETY: async-signal-safe calls only between fork and exec: the
        // two sockets become descriptors 3 and 4 (by way of copies above
        // both, closed at exec), in a process group of the relay's own (a
        // ^C on the terminal is amphi's to forward), dying with amphi.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpgid(0, 0);
                crate::sys::signal::die_with_parent(parent)?;
                let f = libc::fcntl(front_fd, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(back_fd, libc::F_DUPFD_CLOEXEC, 10);
                if f == -1 || b == -1 || libc::dup2(f, 3) == -1 || libc::dup2(b, 4) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            RunError::io(
                format_args!(
                    "starting the vhost-user relay ({} vhost-user-relay) for {}",
                    vmm.display(),
                    self.what
                ),
                e,
            )
        })?;
        drop(cmd);
        self.frontend = Some(qemu_end.into());
        self.relay = Some(Relay {
            child,
            verdict: verdict_r,
            log: Capture::start(log_r, super::console::BACKEND_KEEP),
        });
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One mount-namespace step, its strings made before the fork.
enum Step {
    /// tmpfs on the path (the volumes' holder).
    Tmpfs(CString),
    /// overlay on `dst`, with the layers named relative to `cwd`.
    Overlay {
        cwd: CString,
        dst: CString,
        data: CString,
    },
    Mkdir(CString),
    /// An empty file to bind a file volume onto.
    Touch(CString),
    /// A recursive bind of `src` on `dst`.
    Bind {
        src: CString,
        dst: CString,
    },
    /// `dst` and every mount below it read-only.
    ReadOnly(CString),
    /// The holder tmpfs itself read-only (its entries keep theirs).
    SealHolder(CString),
}

fn cstr(p: &Path) -> Result<CString, RunError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| RunError::Usage(format!("{}: a NUL byte in the path", p.display())))
}

/// The mounts that build `share` on `dir`.
fn steps(share: &Share, dir: &Path, empty: &Path) -> Result<Vec<Step>, RunError> {
    let mut out = Vec::new();
    match share {
        Share::Rootfs { lowers } => {
            // Relative to the layers' directory, like guestfs's merged
            // view: short option strings; an empty directory at the bottom
            // (overlayfs wants two lowers without an upper).
            let base = lowers
                .first()
                .and_then(|l| l.parent()?.parent())
                .ok_or_else(|| RunError::Failed("the image has no layers to share".into()))?;
            let mut rel: Vec<PathBuf> = lowers
                .iter()
                .map(|l| l.strip_prefix(base).map(Path::to_path_buf))
                .collect::<Result<_, _>>()
                .map_err(|_| RunError::Failed("the image's layers are not in one store".into()))?;
            rel.push(empty.to_path_buf());
            let data = crate::sys::overlay::options(&rel, None)
                .map_err(|e| RunError::step("the rootfs share's overlay", e))?;
            out.push(Step::Overlay {
                cwd: cstr(base)?,
                dst: cstr(dir)?,
                data: CString::new(data)
                    .map_err(|_| RunError::Failed("a NUL byte in a layer path".into()))?,
            });
        }
        Share::Volumes(vols) => {
            out.push(Step::Tmpfs(cstr(dir)?));
            for (i, v) in vols.iter().enumerate() {
                let dst = cstr(&dir.join(i.to_string()))?;
                out.push(if v.host.is_dir() {
                    Step::Mkdir(dst.clone())
                } else {
                    Step::Touch(dst.clone())
                });
                out.push(Step::Bind {
                    src: cstr(&v.host)?,
                    dst: dst.clone(),
                });
                if v.readonly {
                    out.push(Step::ReadOnly(dst));
                }
            }
            out.push(Step::SealHolder(cstr(dir)?));
        }
    }
    Ok(out)
}

/// Runs the steps in the child, between fork and exec: raw system calls on
/// strings made before the fork; nothing allocates.
fn run_steps(steps: &[Step]) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let none = std::ptr::null::<libc::c_char>();
    let base = libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: mount(2), mkdir(2), open(2), chdir(2) and mount_setattr(2)
    // on NUL-terminated strings owned by `steps`, which outlives the calls.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for s in steps {
            match s {
                Step::Tmpfs(d) => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    d.as_ptr(),
                    c"tmpfs".as_ptr(),
                    base | libc::MS_NOEXEC,
                    c"mode=0755,size=64k".as_ptr().cast(),
                ))?,
                Step::Overlay { cwd, dst, data } => {
                    check(libc::chdir(cwd.as_ptr()))?;
                    check(libc::mount(
                        c"overlay".as_ptr(),
                        dst.as_ptr(),
                        c"overlay".as_ptr(),
                        base | libc::MS_RDONLY,
                        data.as_ptr().cast(),
                    ))?;
                    check(libc::chdir(c"/".as_ptr()))?;
                }
                Step::Mkdir(d) => check(libc::mkdir(d.as_ptr(), 0o755))?,
                Step::Touch(f) => {
                    let fd = libc::open(
                        f.as_ptr(),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    );
                    check(fd)?;
                    libc::close(fd);
                }
                Step::Bind { src, dst } => check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?,
                Step::ReadOnly(d) => {
                    let attr = libc::mount_attr {
                        attr_set: libc::MOUNT_ATTR_RDONLY,
                        attr_clr: 0,
                        propagation: 0,
                        userns_fd: 0,
                    };
                    check(libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        d.as_ptr(),
                        libc::AT_RECURSIVE,
                        &attr as *const libc::mount_attr,
                        std::mem::size_of::<libc::mount_attr>(),
                    ) as libc::c_int)?;
                }
                Step::SealHolder(d) => check(libc::mount(
                    none,
                    d.as_ptr(),
                    none,
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | base | libc::MS_NOEXEC,
                    std::ptr::null(),
                ))?,
            }
        }
    }
    Ok(())
}

/// virtiofsd's arguments for `share` on `dir`.
fn args(share: &Share, dir: &Path) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![
        format!("--fd={LISTEN_FD}").into(),
        "--shared-dir".into(),
        dir.as_os_str().to_owned(),
        "--sandbox=namespace".into(),
        "--seccomp=kill".into(),
        // O_PATH descriptors, never file handles: no CAP_DAC_READ_SEARCH
        // (open_by_handle_at reaches any file of the filesystem).
        "--inode-file-handles=never".into(),
        // One queue's requests served in order, in the queue's thread:
        // amphi's VMM relies on it when the daemon dies (it answers from
        // the used ring's index on with EIO; see vmm's fs/lost.rs).
        "--thread-pool-size=0".into(),
        "--log-level=error".into(),
    ];
    match share {
        Share::Rootfs { .. } => {
            a.extend(["--readonly", "--cache=always", "--xattr"].map(Into::into));
        }
        Share::Volumes(_) => {
            a.extend(["--cache=auto", "--modcaps=-mknod"].map(Into::into));
        }
    }
    a
}

/// Starts the daemon for `share` of the run in `run_dir`, with its socket
/// connected for the backend. Its stderr is kept in a bounded ring, for
/// the error if it ends early.
pub fn spawn(bin: &Path, share: Share, run_dir: &Path) -> Result<Daemon, RunError> {
    let (dir, sock) = share.paths(run_dir);
    let empty = run_dir.join("vfs-empty");
    for d in [&dir, &empty] {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(RunError::io(d.display(), e)),
        }
    }
    let steps = steps(&share, &dir, &empty)?;
    let listener = UnixListener::bind(&sock).map_err(|e| RunError::io(sock.display(), e))?;
    let frontend = UnixStream::connect(&sock);
    let _ = std::fs::remove_file(&sock);
    let frontend = frontend.map_err(|e| RunError::io(sock.display(), e))?;
    let listen_fd = listener.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let (log_r, log_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| RunError::io("pipe", e.into()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args(&share, &dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_w);
    // SAFETY: async-signal-safe calls only between fork and exec (see
    // `run_steps`); `steps` and the listener live until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            crate::sys::signal::die_with_parent(parent)?;
            run_steps(&steps)?;
            // The listening socket as LISTEN_FD, inherited by virtiofsd.
            if listen_fd == LISTEN_FD {
                crate::sys::io::keep_on_exec(LISTEN_FD)?;
            } else if libc::dup2(listen_fd, LISTEN_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        RunError::io(
            format_args!(
                "starting virtiofsd ({}) for {}",
                bin.display(),
                share.describe()
            ),
            e,
        )
    })?;
    drop(cmd);
    drop(listener);
    Ok(Daemon {
        tag: share.tag(),
        what: share.describe(),
        child,
        frontend: Some(frontend.into()),
        log: Capture::start(log_r, super::console::BACKEND_KEEP),
        reported: false,
        relay: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_share_gets_the_settings_its_content_needs() {
        let root = Share::Rootfs {
            lowers: vec!["/s/layers/sha256/b/diff".into()],
        };
        let a = args(&root, Path::new("/r/vfs-root"));
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        for want in [
            "--readonly",
            "--cache=always",
            "--sandbox=namespace",
            "--inode-file-handles=never",
        ] {
            assert!(a.contains(&want.to_string()), "{want} in {a:?}");
        }
        let vols = Share::Volumes(vec![VolumeShare {
            host: "/tmp".into(),
            readonly: true,
        }]);
        let v: Vec<String> = args(&vols, Path::new("/r/vfs-vol"))
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert!(v.contains(&"--cache=auto".to_string()) && !v.contains(&"--readonly".to_string()));
        assert!(v.contains(&"--modcaps=-mknod".to_string()));
        assert_eq!((root.tag(), vols.tag()), (ROOT_TAG, VOLUME_TAG));
    }

    #[test]
    fn volume_steps_bind_each_path_and_seal_read_only_ones() {
        let vols = Share::Volumes(vec![
            VolumeShare {
                host: "/tmp".into(),
                readonly: true,
            },
            VolumeShare {
                host: "/etc/hostname".into(),
                readonly: false,
            },
        ]);
        let s = steps(&vols, Path::new("/r/vfs-vol"), Path::new("/r/e")).unwrap();
        let names: Vec<&str> = s
            .iter()
            .map(|s| match s {
                Step::Tmpfs(_) => "tmpfs",
                Step::Overlay { .. } => "overlay",
                Step::Mkdir(_) => "mkdir",
                Step::Touch(_) => "touch",
                Step::Bind { .. } => "bind",
                Step::ReadOnly(_) => "ro",
                Step::SealHolder(_) => "seal",
            })
            .collect();
        assert_eq!(
            names,
            ["tmpfs", "mkdir", "bind", "ro", "touch", "bind", "seal"]
        );
        let root = Share::Rootfs {
            lowers: vec![
                "/s/layers/sha256/top/diff".into(),
                "/s/layers/sha256/bottom/diff".into(),
            ],
        };
        match &steps(&root, Path::new("/r/vfs-root"), Path::new("/r/e")).unwrap()[..] {
            [Step::Overlay { cwd, data, .. }] => {
                assert_eq!(cwd.to_str().unwrap(), "/s/layers/sha256");
                assert!(data
                    .to_str()
                    .unwrap()
                    .starts_with("lowerdir=top/diff:bottom/diff:/r/e,"));
            }
            _ => panic!("one overlay step"),
        }
    }
}
