//! The content store under `$AMPHI_ROOT`:
//!
//! ```text
//! blobs/sha256/<hex>            content-addressed blobs, verified while written
//! layers/sha256/<chain>/diff/   a layer unpacked on top of its parents (key: chain ID)
//! layers/sha256/<chain>/layer.json
//! images.json                   the image index (names -> manifest)
//! tmp/                          everything in progress; swept when no one works
//! store.lock, index.lock, locks/  flock(2) files
//! ```
//!
//! Everything appears atomically (temp + rename). Writers (pull, load) hold
//! `store.lock` shared; `gc` and `rmi` hold it exclusively, so anything in
//! `tmp/` while the exclusive lock is held is debris of a killed process.
//!
//! The store root is private (0700, owned by the user running amphi, see
//! [`secure_root`]): unpacked layers keep their setuid files, and container
//! records and logs hold what the containers were given and printed.

use super::digest::{Digest, HashingWriter};
use crate::sys::io::IoAt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FlockOperation;

/// Store-level failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("blob {expected}: digest mismatch, the content is {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: size mismatch, expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is missing from the store (run `amphi gc` and pull the image again)")]
    MissingBlob(Digest),
    #[error("image index {path} is corrupt: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
}

impl From<crate::sys::io::PathIoError> for StoreError {
    fn from(e: crate::sys::io::PathIoError) -> Self {
        StoreError::Io {
            path: e.path,
            error: e.error,
        }
    }
}

/// An open store.
pub struct Store {
    root: PathBuf,
    lock: File,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How a store is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Adding content (pull, load): shared with other writers.
    Write,
    /// Removing content (gc, rmi): alone.
    Exclusive,
    /// Only reading the index.
    Read,
}

impl Store {
    /// `$AMPHI_ROOT`, else `/var/lib/amphi` for root, else
    /// `$XDG_DATA_HOME/amphi` (or `~/.local/share/amphi`).
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("AMPHI_ROOT").filter(|r| !r.is_empty()) {
            return PathBuf::from(r);
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/amphi");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("amphi");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        PathBuf::from(home).join(".local/share/amphi")
    }

    /// Opens (creating it if needed) the store at `root`, after making sure
    /// it is private (see [`secure_root`]).
    pub fn open(root: &Path, access: Access) -> Result<Store, StoreError> {
        secure_root(root, "store", true)?;
        for d in ["blobs/sha256", "layers/sha256", "tmp", "locks"] {
            let p = root.join(d);
            // 0700 below a 0700 root: whatever the umask, nothing in the
            // store is for other users.
            std::os::unix::fs::DirBuilderExt::mode(
                fs::DirBuilder::new().recursive(true),
                PRIVATE_DIR,
            )
            .create(&p)
            .at(&p)?;
        }
        let lock_path = root.join("store.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        let store = Store {
            root: root.to_path_buf(),
            lock,
        };
        match access {
            Access::Exclusive => {
                store.flock(FlockOperation::LockExclusive)?;
                store.sweep_tmp()?;
            }
            Access::Write => {
                // Whoever finds the store idle cleans up after killed writers.
                if store
                    .flock(FlockOperation::NonBlockingLockExclusive)
                    .is_ok()
                {
                    store.sweep_tmp()?;
                }
                store.flock(FlockOperation::LockShared)?;
            }
            Access::Read => {}
        }
        Ok(store)
    }

    fn flock(&self, op: FlockOperation) -> Result<(), StoreError> {
        rustix::fs::flock(self.lock.as_fd(), op)
            .map_err(io::Error::from)
            .at(&self.root.join("store.lock"))?;
        Ok(())
    }

    /// Takes the store for removals, if no one else is writing right now.
    /// On failure the shared lock is taken again (a failed flock upgrade
    /// drops the lock held before).
    pub fn try_exclusive(&self) -> bool {
        if self.flock(FlockOperation::NonBlockingLockExclusive).is_ok() {
            return true;
        }
        let _ = self.flock(FlockOperation::LockShared);
        false
    }

    /// Goes back to shared (writer) mode after [`Store::try_exclusive`].
    pub fn shared(&self) -> Result<(), StoreError> {
        self.flock(FlockOperation::LockShared)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes the debris of killed writers. Only call with the exclusive lock.
    fn sweep_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let e = e.at(&tmp)?;
            let p = e.path();
            tracing::debug!("removing leftover {}", p.display());
            remove_path(&p)?;
        }
        Ok(())
    }

    /// A fresh, unique path under `tmp/`.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}-{nanos:x}", std::process::id()))
    }

    /// Where the blob `d` lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether the blob `d` is in the store.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Writes a blob from `reader`, verifying its digest (and size, when
    /// known) while writing. The blob appears only if it is right. Returns
    /// true when this call added it.
    pub fn put_blob(
        &self,
        expected: &Digest,
        size: Option<u64>,
        reader: &mut dyn Read,
    ) -> Result<bool, StoreError> {
        if self.has_blob(expected) {
            return Ok(false);
        }
        let tmp = self.temp_path("blob");
        let result = (|| {
            let file = File::create(&tmp).at(&tmp)?;
            let mut w = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, file));
            io::copy(reader, &mut w).at(&tmp)?;
            let (actual, n, buf) = w.finish();
            buf.into_inner().map_err(|e| e.into_error()).at(&tmp)?;
            self.commit_blob(&tmp, expected, &actual, size, n)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| true)
    }

    /// Moves a fully written temp file into place after checking it.
    pub fn commit_blob(
        &self,
        tmp: &Path,
        expected: &Digest,
        actual: &Digest,
        size: Option<u64>,
        written: u64,
    ) -> Result<(), StoreError> {
        if actual != expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
        if let Some(s) = size {
            if s != written {
                return Err(StoreError::SizeMismatch {
                    digest: expected.clone(),
                    expected: s,
                    actual: written,
                });
            }
        }
        let dst = self.blob_path(expected);
        Ok(fs::rename(tmp, &dst).at(&dst)?)
    }

    /// Reads a (small) blob whole, re-verifying it.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let data = match fs::read(&p) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(d.clone()))
            }
            Err(e) => return Err(e).at(&p).map_err(Into::into),
        };
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Opens a blob for streaming.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let p = self.blob_path(d);
        match File::open(&p) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::MissingBlob(d.clone()))
            }
            Err(e) => Err(e).at(&p).map_err(Into::into),
        }
    }

    /// The directory of the layer with chain ID `chain`.
    pub fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(chain.hex())
    }

    /// Takes the per-object lock `name` (blocks until free).
    pub fn object_lock(&self, name: &str) -> Result<File, StoreError> {
        let p = self.root.join("locks").join(format!("{name}.lock"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)?;
        rustix::fs::flock(f.as_fd(), FlockOperation::LockExclusive)
            .map_err(io::Error::from)
            .at(&p)?;
        Ok(f)
    }

    /// Writes `data` to `path` atomically.
    pub fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.temp_path("file");
        let r = (|| {
            let mut f = File::create(&tmp).at(&tmp)?;
            f.write_all(data).at(&tmp)?;
            f.sync_data().at(&tmp)?;
            Ok(fs::rename(&tmp, path).at(path)?)
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }
}

/// The mode of amphi's private roots (the store and the state root).
pub const PRIVATE_DIR: u32 = 0o700;
/// The mode of files holding a container's config, environment or output.
pub const PRIVATE_FILE: u32 = 0o600;

/// Makes `dir` a private root of amphi's (`what`: "store", "state root"),
/// creating it (when `create`) with mode 0700 whatever the umask. amphi
/// refuses a root that another user could change under it:
///
/// * the root (after symlinks) must be owned by the user running amphi, or
///   by root: a directory of another user's, reached through a symlink or
///   not, would let that user plant images, layers or container state;
/// * no directory above it (on the path given and on the resolved path) may
///   be owned by another non-root user, or writable by others without the
///   sticky bit: they could rename the root away and put their own there.
///
/// A root of our own with a looser mode (a store made 0755 by an older
/// amphi, or under a lax umask) is tightened to 0700, with a warning that
/// names it and both modes. 0700 rather than 0711: nothing traverses these
/// directories with other credentials (the native runtime, overlayfs'
/// mounter, QEMU and the image tools all run as the store's owner), and
/// traversal alone would be enough to exec a setuid file in a layer whose
/// chain ID (public: it is a digest of the image) the attacker computed.
pub fn secure_root(dir: &Path, what: &str, create: bool) -> Result<(), StoreError> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::DirBuilderExt;
    let unsafe_root = |path: &Path, reason: String| StoreError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    let mut created = false;
    match fs::metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                check_ancestors(parent, dir, what)?;
                // Missing parents: 0755 whatever the umask (like mkdir -p
                // under umask 022), so that the checks below pass.
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .at(parent)?;
            }
            match fs::DirBuilder::new().mode(PRIVATE_DIR).create(dir) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).at(dir).map_err(Into::into),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir).map_err(Into::into),
    }
    // Everything below looks at the directory this fd holds, so a rename
    // between the checks and the chmod cannot redirect the chmod.
    let fd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .at(dir)?;
    let st = rustix::fs::fstat(&fd).map_err(io::Error::from).at(dir)?;
    let euid = rustix::process::geteuid().as_raw();
    if st.st_uid != euid && st.st_uid != 0 {
        return Err(unsafe_root(
            dir,
            format!(
                "the {what} directory is owned by uid {}, not by uid {euid} who runs amphi (nor by root): \
                 that user could plant or swap images and container state; refusing to use it \
                 (chown it, or choose another directory)",
                st.st_uid
            ),
        ));
    }
    let real = fs::canonicalize(dir).at(dir)?;
    if let Some(parent) = real.parent() {
        check_ancestors(parent, dir, what)?;
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        check_ancestors(parent, dir, what)?;
    }
    let mode = st.st_mode & 0o7777;
    // (A root-owned root used by another user is root's to fix.)
    if st.st_uid == euid && mode != PRIVATE_DIR {
        // Through the fd (an O_PATH one cannot fchmod; its /proc link can).
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::chmod(link.as_str(), Mode::from_raw_mode(PRIVATE_DIR))
            .map_err(io::Error::from)
            .at(dir)?;
        if !created && mode & 0o077 != 0 {
            eprintln!(
                "amphi: warning: the {what} {} had mode {mode:04o}, open to other local users; \
                 changed it to {PRIVATE_DIR:04o}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Checks that no directory from `dir` up can be changed by a user other
/// than root and us (see [`secure_root`]); `root` and `what` name the root
/// in the error.
fn check_ancestors(dir: &Path, root: &Path, what: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    let start = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for a in start.ancestors() {
        // Parents that do not exist yet are made by us.
        let Ok(m) = fs::metadata(a) else { continue };
        let mode = m.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        let problem = if m.uid() != 0 && m.uid() != euid {
            Some(format!("is owned by uid {}", m.uid()))
        } else if mode & 0o002 != 0 && !sticky {
            Some(format!("is writable by every user (mode {mode:04o})"))
        } else if mode & 0o020 != 0 && !sticky && m.gid() != 0 && m.gid() != egid {
            Some(format!(
                "is writable by group {} (mode {mode:04o})",
                m.gid()
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(StoreError::Unsafe {
                path: root.to_path_buf(),
                reason: format!(
                    "refusing this {what}: the directory {} above it {p}, so another user could \
                     replace the {what} with their own (choose a directory whose parents only \
                     root{} can change)",
                    a.display(),
                    if euid == 0 { "" } else { " and you" }
                ),
            });
        }
    }
    Ok(())
}

/// Writes `data` to `path` (created or truncated, never through a symlink)
/// with mode 0600 whatever the umask: for files holding a container's
/// config, environment or output.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = open_private(path, false)?;
    f.write_all(data)
}

/// Opens `path` for writing with mode 0600 set explicitly (created if
/// missing, never through a symlink); `append` keeps what is there.
pub fn open_private(path: &Path, append: bool) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .mode(PRIVATE_FILE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
    Ok(f)
}

/// Creates `path` and its missing parents; `path` itself gets mode 0700
/// whatever the umask (a container's state or record directory).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(parent)?;
    }
    match fs::DirBuilder::new().mode(PRIVATE_DIR).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = fs::symlink_metadata(path)?;
    if !m.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_DIR))
}

/// Removes a file or a whole directory tree, never following symlinks.
pub fn remove_path(p: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // Make sure unreadable directories (overlay work dirs) can go.
            fs::remove_dir_all(p).or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        }
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .at(p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Access::Write).unwrap();
        let data = b"hello";
        let d = Digest::of(data);
        assert!(s.put_blob(&d, Some(5), &mut &data[..]).unwrap());
        assert!(!s.put_blob(&d, Some(5), &mut &data[..]).unwrap());
        assert_eq!(s.read_blob(&d).unwrap(), data);

        let wrong = Digest::of(b"other");
        let e = s.put_blob(&wrong, None, &mut &data[..]).unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!s.has_blob(&wrong));
        let e = s
            .put_blob(&Digest::of(b"hell"), Some(3), &mut &b"hell"[..])
            .unwrap_err();
        assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
        // Nothing half-written is left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_new_store_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/store");
        let _s = Store::open(&root, Access::Write).unwrap();
        assert_eq!(mode(&root), 0o700);
        for d in ["blobs", "layers", "tmp", "locks"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        // Not created when only checked.
        let other = dir.path().join("absent");
        secure_root(&other, "store", false).unwrap();
        assert!(!other.exists());
    }

    #[test]
    fn an_open_store_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        fs::create_dir(&root).unwrap();
        chmod(&root, 0o755);
        Store::open(&root, Access::Read).unwrap();
        assert_eq!(mode(&root), 0o700);
        chmod(&root, 0o711);
        secure_root(&root, "state root", false).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    /// Needs root (to hand directories to another user), which the
    /// runtime's tests have.
    #[test]
    fn a_root_another_user_owns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = secure_root(&theirs, "store", true).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(matches!(
            Store::open(&theirs, Access::Write),
            Err(StoreError::Unsafe { .. })
        ));
        // Reached through a symlink of ours: still theirs.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&theirs, &link).unwrap();
        let e = secure_root(&link, "store", true).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        // A store of ours inside their directory: they could swap it.
        let inside = theirs.join("store");
        let e = secure_root(&inside, "store", true).unwrap_err().to_string();
        assert!(
            e.contains("owned by uid 65534") && e.contains("above it"),
            "{e}"
        );
        assert!(!inside.exists());
    }

    #[test]
    fn a_root_under_a_world_writable_parent_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("shared");
        fs::create_dir(&parent).unwrap();
        chmod(&parent, 0o777);
        let root = parent.join("store");
        let e = secure_root(&root, "store", true).unwrap_err().to_string();
        assert!(e.contains("writable by every user"), "{e}");
        // Like /tmp: others cannot rename or delete what is ours.
        chmod(&parent, 0o1777);
        secure_root(&root, "store", true).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn private_files_ignore_the_umask_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        fs::write(&p, b"old").unwrap();
        chmod(&p, 0o644);
        write_private(&p, b"{}").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_private(&link, true).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        let d = dir.path().join("c/id");
        create_private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&dir.path().join("c")), 0o700);
    }

    #[test]
    fn exclusive_open_sweeps_debris() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), Access::Write).unwrap();
            fs::create_dir_all(s.temp_path("layer").join("diff/a/b")).unwrap();
            fs::write(s.temp_path("blob"), b"partial").unwrap();
        }
        let _s = Store::open(dir.path(), Access::Exclusive).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
