//! The container's side effects on the system, behind one trait: the
//! mounts, device nodes and links that build its root (rootfs.rs), and the
//! cgroup directories and files that hold its limits and device rules
//! (cgroups/, devices.rs). The engine's logic is generic over [`Effects`]:
//! a launch uses [`Real`], a zero-sized type whose methods are the system
//! calls the code made before this seam existed (statically dispatched and
//! inlined: nothing is added between clone and exec); unit tests use the
//! recorder in [`record`], which logs the calls, so that what a mount
//! option or a resources block turns into is checked without root.
//!
//! Lookups (openat2, stat, readlink, reading a cgroup's files) are not
//! effects: they stay real, so the tests run the logic on a real directory
//! tree.

use rustix::fs::{FileType, Gid, Mode, Uid};
use rustix::mount::MountPropagationFlags;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

/// What the container engine does to the system.
pub trait Effects {
    /// An open file, written one setting (or device rule) at a time.
    type Writer: io::Write;

    // --- files, at a directory descriptor (inside the rootfs) ---

    /// mkdirat(2).
    fn mkdirat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> rustix::io::Result<()>;
    /// Creates an empty file (`O_CREAT`, not following a symlink at `name`).
    fn create_file_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: Mode,
    ) -> rustix::io::Result<()>;
    /// symlinkat(2): `name` in `dir`, pointing to `target`.
    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<()>;
    /// unlinkat(2) of a non-directory.
    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()>;
    /// mknodat(2).
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: FileType,
        mode: Mode,
        dev: u64,
    ) -> rustix::io::Result<()>;
    /// fchmodat(2).
    fn chmodat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> rustix::io::Result<()>;
    /// fchownat(2), not following a symlink.
    fn chownat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: u32,
        gid: u32,
    ) -> rustix::io::Result<()>;

    // --- mounts ---

    /// mount(2) with raw `MS_*` flags; empty strings are passed as NULL.
    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> rustix::io::Result<()>;
    /// A bind mount of `source` on `target` (`MS_BIND`, with `MS_REC` when
    /// `recursive`).
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> rustix::io::Result<()>;
    /// Changes the propagation type of the mount at `target` (`MS_SHARED`,
    /// `MS_SLAVE`, ... with `MS_REC`).
    fn propagate(&self, target: &Path, flags: MountPropagationFlags) -> rustix::io::Result<()>;
    /// mount_setattr(2) with `AT_RECURSIVE` on the mount `mount` (an
    /// `O_PATH` descriptor) is the root of.
    fn mount_setattr(&self, mount: BorrowedFd<'_>, set: u64, clr: u64) -> rustix::io::Result<()>;

    // --- plain paths (the cgroup tree, a tmpfs being filled) ---

    /// mkdir(2).
    fn mkdir(&self, dir: &Path) -> io::Result<()>;
    /// mkdir -p.
    fn mkdir_all(&self, dir: &Path) -> io::Result<()>;
    /// rmdir(2).
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// A symbolic link at `link` pointing to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Writes a whole file (created if missing, truncated), as `fs::write`.
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Opens an existing file for writing (never creating it).
    fn open_write(&self, path: &Path) -> io::Result<Self::Writer>;
}

/// The system itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Real;

impl Effects for Real {
    type Writer = std::fs::File;

    #[inline]
    fn mkdirat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> rustix::io::Result<()> {
        rustix::fs::mkdirat(dir, name, mode)
    }

    #[inline]
    fn create_file_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: Mode,
    ) -> rustix::io::Result<()> {
        use rustix::fs::OFlags;
        rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            mode,
        )
        .map(drop)
    }

    #[inline]
    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<()> {
        rustix::fs::symlinkat(target, dir, name)
    }

    #[inline]
    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
        rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty())
    }

    #[inline]
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: FileType,
        mode: Mode,
        dev: u64,
    ) -> rustix::io::Result<()> {
        rustix::fs::mknodat(dir, name, kind, mode, dev)
    }

    #[inline]
    fn chmodat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> rustix::io::Result<()> {
        rustix::fs::chmodat(dir, name, mode, rustix::fs::AtFlags::empty())
    }

    #[inline]
    fn chownat(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: u32,
        gid: u32,
    ) -> rustix::io::Result<()> {
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
    }

    #[inline]
    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> rustix::io::Result<()> {
        mount_raw(source, target, fstype, flags, data)
    }

    #[inline]
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> rustix::io::Result<()> {
        if recursive {
            rustix::mount::mount_bind_recursive(source, target)
        } else {
            rustix::mount::mount_bind(source, target)
        }
    }

    #[inline]
    fn propagate(&self, target: &Path, flags: MountPropagationFlags) -> rustix::io::Result<()> {
        rustix::mount::mount_change(target, flags)
    }

    #[inline]
    fn mount_setattr(&self, mount: BorrowedFd<'_>, set: u64, clr: u64) -> rustix::io::Result<()> {
        let a = MountAttr {
            attr_set: set,
            attr_clr: clr,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a
        // valid, initialised struct of the kernel's layout; the path is an
        // empty C string and `mount` an open descriptor (AT_EMPTY_PATH).
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                mount.as_raw_fd(),
                c"".as_ptr(),
                (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
                &a as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        last_errno(r)
    }

    #[inline]
    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)
    }

    #[inline]
    fn mkdir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    #[inline]
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }

    #[inline]
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    #[inline]
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }

    #[inline]
    fn open_write(&self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new().write(true).open(path)
    }
}

/// The kernel's `struct mount_attr` (linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A raw system call's result: 0, or -1 with errno set.
fn last_errno(r: libc::c_long) -> rustix::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(rustix::io::Errno::from_raw_os_error(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        ))
    }
}

/// `s` as a C string; a NUL byte (from a bundle's mount, which would be
/// cut short there, dropping options) is EINVAL.
fn c(s: &str) -> rustix::io::Result<CString> {
    CString::new(s).map_err(|_| rustix::io::Errno::INVAL)
}

/// mount(2) with raw `MS_*` flags (rustix has no remount-with-flags).
pub(super) fn mount_raw(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> rustix::io::Result<()> {
    let (src, tgt, typ, dat) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    let opt = |x: &CString, s: &str| {
        if s.is_empty() {
            std::ptr::null()
        } else {
            x.as_ptr()
        }
    };
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let r = unsafe {
        libc::mount(
            opt(&src, source),
            tgt.as_ptr(),
            opt(&typ, fstype),
            flags,
            opt(&dat, data) as *const libc::c_void,
        )
    };
    last_errno(r as libc::c_long)
}

/// A recorder of effects, for unit tests. Every call is logged. Those
/// that need no privilege and change what later lookups see in the test's
/// directory tree (directories, empty files, symbolic links, unlinks,
/// writes to its files) are also made there, and only there: the recorder
/// panics on any such call outside its root. Mounts, device nodes,
/// ownership and modes are only logged. Paths are shown relative to the
/// root (`/dev/null` for `<root>/dev/null`), descriptors as the paths they
/// stand for. A test can make chosen calls fail ([`Recorder::fail`]): they
/// are logged, and not made.
#[cfg(test)]
pub mod record {
    use super::*;
    use std::cell::RefCell;
    use std::path::PathBuf;
    use std::rc::Rc;

    /// One logged call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mkdir(PathBuf),
        MkdirAll(PathBuf),
        CreateFile(PathBuf),
        Symlink {
            link: PathBuf,
            target: PathBuf,
        },
        Unlink(PathBuf),
        RemoveDir(PathBuf),
        /// `kind`: 'c', 'b' or 'p'.
        Mknod {
            path: PathBuf,
            kind: char,
            mode: u32,
            major: u32,
            minor: u32,
        },
        Chmod {
            path: PathBuf,
            mode: u32,
        },
        Chown {
            path: PathBuf,
            uid: u32,
            gid: u32,
        },
        Mount {
            source: String,
            target: PathBuf,
            fstype: String,
            flags: libc::c_ulong,
            data: String,
        },
        Bind {
            source: PathBuf,
            target: PathBuf,
            recursive: bool,
        },
        Propagate {
            target: PathBuf,
            flags: libc::c_ulong,
        },
        SetAttr {
            target: PathBuf,
            set: u64,
            clr: u64,
        },
        /// An existing file opened for writing.
        Open(PathBuf),
        /// One write(2) to an opened file, or a whole-file write.
        Write {
            path: PathBuf,
            data: String,
        },
    }

    type Failure = Rc<dyn Fn(&Call) -> Option<rustix::io::Errno>>;

    /// Logs calls; see the module's documentation.
    pub struct Recorder {
        root: PathBuf,
        log: Rc<RefCell<Vec<Call>>>,
        fail: Failure,
    }

    impl Recorder {
        /// A recorder showing paths relative to `root`.
        pub fn new(root: &Path) -> Recorder {
            Recorder {
                root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
                log: Rc::default(),
                fail: Rc::new(|_| None),
            }
        }

        /// Makes the calls `f` returns an errno for fail with it.
        pub fn fail(mut self, f: impl Fn(&Call) -> Option<rustix::io::Errno> + 'static) -> Self {
            self.fail = Rc::new(f);
            self
        }

        /// The calls so far.
        pub fn calls(&self) -> Vec<Call> {
            self.log.borrow().clone()
        }

        /// The calls so far, forgotten.
        pub fn take(&self) -> Vec<Call> {
            std::mem::take(&mut self.log.borrow_mut())
        }

        /// Logs `c`; its injected failure, if any.
        fn push(&self, c: Call) -> rustix::io::Result<()> {
            let r = (self.fail)(&c);
            self.log.borrow_mut().push(c);
            r.map_or(Ok(()), Err)
        }

        /// `p` as shown: through `/proc/self/fd/N` to what it stands for,
        /// then relative to the root.
        pub fn show(&self, p: &Path) -> PathBuf {
            let real = real_path(p);
            match real.strip_prefix(&self.root) {
                Ok(rel) => Path::new("/").join(rel),
                Err(_) => real,
            }
        }

        fn at(&self, dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> PathBuf {
            self.show(&fd_path(dir)).join(name)
        }

        /// `p` as shown, after checking that it lies in the root (for a
        /// call made for real).
        fn inside(&self, p: &Path) -> PathBuf {
            let real = real_path(p);
            assert!(
                real.starts_with(&self.root),
                "recorder: {} is outside the test's root {}",
                real.display(),
                self.root.display()
            );
            self.show(p)
        }

        fn inside_at(&self, dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> PathBuf {
            self.inside(&fd_path(dir)).join(name)
        }
    }

    fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// What a `/proc/self/fd/N` path stands for; other paths as they are.
    fn real_path(p: &Path) -> PathBuf {
        if p.starts_with("/proc/self/fd") {
            std::fs::read_link(p).unwrap_or_else(|_| p.to_path_buf())
        } else {
            p.to_path_buf()
        }
    }

    /// A file the recorder opened: each write is logged, and made.
    pub struct Writer {
        file: std::fs::File,
        path: PathBuf,
        log: Rc<RefCell<Vec<Call>>>,
        fail: Failure,
    }

    impl io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let c = Call::Write {
                path: self.path.clone(),
                data: String::from_utf8_lossy(buf).into_owned(),
            };
            let failed = (self.fail)(&c);
            self.log.borrow_mut().push(c);
            if let Some(e) = failed {
                return Err(e.into());
            }
            self.file.write_all(buf)?;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Effects for Recorder {
        type Writer = Writer;

        fn mkdirat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> rustix::io::Result<()> {
            self.push(Call::Mkdir(self.inside_at(dir, name)))?;
            Real.mkdirat(dir, name, mode)
        }

        fn create_file_at(
            &self,
            dir: BorrowedFd<'_>,
            name: &OsStr,
            mode: Mode,
        ) -> rustix::io::Result<()> {
            self.push(Call::CreateFile(self.inside_at(dir, name)))?;
            Real.create_file_at(dir, name, mode)
        }

        fn symlinkat(
            &self,
            target: &str,
            dir: BorrowedFd<'_>,
            name: &str,
        ) -> rustix::io::Result<()> {
            self.push(Call::Symlink {
                link: self.inside_at(dir, name),
                target: target.into(),
            })?;
            Real.symlinkat(target, dir, name)
        }

        fn unlinkat(&self, dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
            self.push(Call::Unlink(self.inside_at(dir, name)))?;
            Real.unlinkat(dir, name)
        }

        fn mknodat(
            &self,
            dir: BorrowedFd<'_>,
            name: &OsStr,
            kind: FileType,
            mode: Mode,
            dev: u64,
        ) -> rustix::io::Result<()> {
            let kind = match kind {
                FileType::BlockDevice => 'b',
                FileType::Fifo => 'p',
                _ => 'c',
            };
            self.push(Call::Mknod {
                path: self.at(dir, name),
                kind,
                mode: mode.bits(),
                major: rustix::fs::major(dev),
                minor: rustix::fs::minor(dev),
            })
        }

        fn chmodat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> rustix::io::Result<()> {
            self.push(Call::Chmod {
                path: self.at(dir, name),
                mode: mode.bits(),
            })
        }

        fn chownat(
            &self,
            dir: BorrowedFd<'_>,
            name: &OsStr,
            uid: u32,
            gid: u32,
        ) -> rustix::io::Result<()> {
            self.push(Call::Chown {
                path: self.at(dir, name),
                uid,
                gid,
            })
        }

        fn mount(
            &self,
            source: &str,
            target: &str,
            fstype: &str,
            flags: libc::c_ulong,
            data: &str,
        ) -> rustix::io::Result<()> {
            // What the real call refuses before the kernel sees it.
            for s in [source, target, fstype, data] {
                c(s)?;
            }
            self.push(Call::Mount {
                source: source.into(),
                target: self.show(Path::new(target)),
                fstype: fstype.into(),
                flags,
                data: data.into(),
            })
        }

        fn bind(&self, source: &Path, target: &Path, recursive: bool) -> rustix::io::Result<()> {
            self.push(Call::Bind {
                source: source.into(),
                target: self.show(target),
                recursive,
            })
        }

        fn propagate(&self, target: &Path, flags: MountPropagationFlags) -> rustix::io::Result<()> {
            self.push(Call::Propagate {
                target: self.show(target),
                flags: flags.bits().into(),
            })
        }

        fn mount_setattr(
            &self,
            mount: BorrowedFd<'_>,
            set: u64,
            clr: u64,
        ) -> rustix::io::Result<()> {
            self.push(Call::SetAttr {
                target: self.show(&fd_path(mount)),
                set,
                clr,
            })
        }

        fn mkdir(&self, dir: &Path) -> io::Result<()> {
            self.push(Call::Mkdir(self.inside(dir)))?;
            Real.mkdir(dir)
        }

        fn mkdir_all(&self, dir: &Path) -> io::Result<()> {
            self.push(Call::MkdirAll(self.inside(dir)))?;
            Real.mkdir_all(dir)
        }

        fn remove_dir(&self, dir: &Path) -> io::Result<()> {
            self.push(Call::RemoveDir(self.inside(dir)))?;
            Real.remove_dir(dir)
        }

        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            self.push(Call::Symlink {
                link: self.inside(link),
                target: target.into(),
            })?;
            Real.symlink(target, link)
        }

        fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            self.push(Call::Write {
                path: self.inside(path),
                data: String::from_utf8_lossy(data).into_owned(),
            })?;
            Real.write_file(path, data)
        }

        fn open_write(&self, path: &Path) -> io::Result<Writer> {
            let shown = self.inside(path);
            self.push(Call::Open(shown.clone()))?;
            Ok(Writer {
                file: Real.open_write(path)?,
                path: shown,
                log: Rc::clone(&self.log),
                fail: Rc::clone(&self.fail),
            })
        }
    }
}
