//! An I/O error with the path it happened at, for every layer's error type.

use std::path::{Path, PathBuf};

/// An I/O error and the path it happened at: `{path}: {error}`. The error
/// enums that name a path take it with `From` (`.at(path)?`).
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct PathIoError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Adds the path to an io::Error.
pub trait IoAt<T> {
    fn at(self, path: &Path) -> Result<T, PathIoError>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, PathIoError> {
        self.map_err(|error| PathIoError {
            path: path.to_path_buf(),
            error,
        })
    }
}

/// How often [`openat2`] tries again after `EAGAIN`.
pub const OPENAT2_RETRIES: u32 = 64;

/// `openat2(2)`, tried again when the kernel answers `EAGAIN`: with
/// `RESOLVE_IN_ROOT` or `RESOLVE_BENEATH`, a rename or mount anywhere on the
/// system while the path walks a `..` makes the kernel refuse rather than
/// risk an escape, and asks the caller to retry (openat2(2), ERRORS). Busy
/// hosts (parallel container starts, tests) hit it. After
/// [`OPENAT2_RETRIES`] tries the `EAGAIN` is the caller's, as any error.
pub fn openat2<Fd: std::os::fd::AsFd, P: rustix::path::Arg + Copy>(
    dirfd: Fd,
    path: P,
    oflags: rustix::fs::OFlags,
    mode: rustix::fs::Mode,
    resolve: rustix::fs::ResolveFlags,
) -> rustix::io::Result<std::os::fd::OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(&dirfd, path, oflags, mode, resolve) {
            Err(rustix::io::Errno::AGAIN) if tries < OPENAT2_RETRIES => tries += 1,
            r => return r,
        }
    }
}

/// Reads our stdin in chunks of up to `chunk` bytes and hands each to `f`,
/// then `None` at its end (or at a read error); stops early when `f`
/// returns false (its receiver is gone). For the threads that forward a
/// client's stdin.
pub fn each_stdin_chunk(chunk: usize, mut f: impl FnMut(Option<&[u8]>) -> bool) {
    use std::io::Read;
    let mut buf = vec![0u8; chunk];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !f(Some(&buf[..n])) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    f(None);
}

/// Clears close-on-exec on `fd`, so that a program about to be executed
/// inherits it by its number. Async-signal-safe (one fcntl): for use
/// between fork and exec.
pub fn keep_on_exec(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl(F_SETFD) on a descriptor number touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_path() {
        let e = std::fs::read("/nonexistent/amphi-io-at")
            .at(Path::new("/nonexistent/amphi-io-at"))
            .unwrap_err();
        assert_eq!(e.error.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            format!("/nonexistent/amphi-io-at: {}", e.error)
        );
    }

    /// The wrapper opens in the root as openat2 does and returns errors
    /// other than EAGAIN unchanged. (The EAGAIN itself comes from a race
    /// with renames and mounts elsewhere on the system that a test cannot
    /// provoke on demand; CI met it once in the image scan.)
    #[test]
    fn openat2_passes_results_through() {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/f"), b"x").unwrap();
        let rootfd = std::fs::File::open(root).unwrap();
        let fd = openat2(
            &rootfd,
            "a/b/../../../../a/f",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).unwrap();
        assert_eq!(text, "x", "climbing `..` stays in the root");
        // Other errors are returned as they are.
        let e = openat2(
            &rootfd,
            "missing",
            OFlags::RDONLY,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )
        .unwrap_err();
        assert_eq!(e, rustix::io::Errno::NOENT);
    }
}
