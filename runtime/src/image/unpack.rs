//! Safe layer extraction.
//!
//! Every path of a layer is resolved inside the target root the way the
//! kernel would resolve it if the root were `/`: parents are opened with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlinked parent (absolute or relative) is
//! followed inside the root and never outside it, and the last component is
//! never followed. Names that are absolute or contain `..` are refused, as
//! are hardlinks whose target would leave the root. Device nodes are skipped.
//!
//! Whiteouts are applied by removing the whited-out path through the target
//! root. When the target is an overlayfs mount over the lower layers (as the
//! store does for every layer but the first), overlayfs records the removal
//! as a whiteout in the new layer's upper directory, which is exactly the
//! layer format the native rootfs stacks later.

use super::digest::{Digest, HashingReader};
use super::manifest::Compression;
use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A layer could not be unpacked. Always names the layer, and the entry
/// when one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Refused {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: entry {entry:?}: {error}")]
    Entry {
        layer: String,
        entry: String,
        error: io::Error,
    },
    #[error("layer {layer}: cannot read the layer stream ({compression}): {error}")]
    Stream {
        layer: String,
        compression: &'static str,
        error: io::Error,
    },
    #[error("layer {layer}: diff ID mismatch: the uncompressed layer is {actual}, the image config says {expected}")]
    DiffId {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
}

/// What an unpack did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Digest of the uncompressed tar stream.
    pub diff_id: Option<Digest>,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Entries written.
    pub entries: u64,
    /// Things skipped on purpose (device nodes, refused xattrs).
    pub warnings: Vec<String>,
}

/// Wraps a compressed layer stream in the right decoder.
pub fn decompress<'a, R: Read + 'a>(
    reader: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            256 * 1024,
            reader,
        ))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "uncompressed tar",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// Unpacks one compressed layer into the directory `root`, checking its diff
/// ID when `expected` is given. `layer` names the layer in errors.
pub fn unpack_layer<R: Read>(
    reader: R,
    compression: Compression,
    root: BorrowedFd<'_>,
    layer: &str,
    expected: Option<&Digest>,
) -> Result<Unpacked, UnpackError> {
    let stream_err = |source| UnpackError::Stream {
        layer: layer.to_string(),
        compression: compression_name(compression),
        error: source,
    };
    let decoded = decompress(reader, compression).map_err(stream_err)?;
    let mut hashing = HashingReader::new(decoded);
    let mut u = Unpacker {
        root,
        layer,
        compression,
        written: HashSet::new(),
        dirs: Vec::new(),
        buf: vec![0u8; 128 * 1024],
        out: Unpacked::default(),
    };
    u.run(&mut hashing)?;
    let (diff_id, size) = hashing.finish().map_err(stream_err)?;
    if let Some(expected) = expected {
        if *expected != diff_id {
            return Err(UnpackError::DiffId {
                layer: layer.to_string(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    u.out.diff_id = Some(diff_id);
    u.out.size = size;
    Ok(u.out)
}

struct PendingDir {
    path: Vec<u8>,
    mtime: i64,
}

struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    layer: &'a str,
    compression: Compression,
    /// Paths written by this layer; whiteouts only remove lower content.
    written: HashSet<Vec<u8>>,
    /// Directory mtimes, applied last (creating children changes them).
    dirs: Vec<PendingDir>,
    /// Copy buffer, reused across entries.
    buf: Vec<u8>,
    out: Unpacked,
}

/// Splits an entry name into components, refusing absolute names and `..`.
fn components(name: &[u8]) -> Result<Vec<&[u8]>, String> {
    if name.first() == Some(&b'/') {
        return Err("absolute entry names are refused".into());
    }
    if name.contains(&0) {
        return Err("entry name contains a NUL byte".into());
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("entry names that climb with \"..\" are refused".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(c: &[&[u8]]) -> Vec<u8> {
    c.join(&b'/')
}

fn as_os(b: &[u8]) -> &std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(b)
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl Unpacker<'_> {
    fn refuse(&self, entry: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    /// The layer stream itself is bad (corrupt compression, truncated tar).
    fn stream_err(&self, source: io::Error) -> UnpackError {
        UnpackError::Stream {
            layer: self.layer.to_string(),
            compression: compression_name(self.compression),
            error: source,
        }
    }

    fn io_err(&self, entry: &[u8], source: io::Error) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            error: source,
        }
    }

    fn run<R: Read>(&mut self, reader: &mut R) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.stream_err(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.stream_err(e))?;
            let name = entry.path_bytes().into_owned();
            self.entry(&mut entry, &name)?;
        }
        self.finish_dirs();
        Ok(())
    }

    /// Opens the directory `path` (components) inside the root, creating
    /// missing directories on the way (mode 0755, like tar).
    fn open_dir(&self, comps: &[&[u8]]) -> io::Result<OwnedFd> {
        self.mkdir_p(&join(comps), &mut 0)
    }

    /// Opens (creating what is missing, mode 0755) the directory `path`,
    /// resolved inside the root as the kernel would with the root as `/`.
    /// `path` may hold `..` and symlinks: it can come from a symlink's
    /// target. A symlink whose target is missing gets its target created,
    /// inside the root, as `mkdir -p` would; `links` counts the symlinks
    /// expanded that way.
    fn mkdir_p(&self, path: &[u8], links: &mut u32) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let open = |p: &[u8]| {
            let p: &[u8] = if p.is_empty() { b"." } else { p };
            crate::sys::io::openat2(self.root, as_os(p), flags, Mode::empty(), RESOLVE)
        };
        match open(path) {
            Err(Errno::NOENT) => {}
            r => return Ok(r?),
        }
        let trimmed = match path.iter().rposition(|b| *b != b'/') {
            Some(end) => &path[..=end],
            // The root itself always exists.
            None => return Err(Errno::NOENT.into()),
        };
        let (parent, last) = match trimmed.iter().rposition(|b| *b == b'/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (&b""[..], trimmed),
        };
        if last == b"." || last == b".." {
            self.mkdir_p(parent, links)?;
            return Ok(open(path)?);
        }
        let parent_fd = self.mkdir_p(parent, links)?;
        match rustix::fs::mkdirat(&parent_fd, as_os(last), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // Open the directory without following a symlink raced in.
        let err = match rustix::fs::openat(
            &parent_fd,
            as_os(last),
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => return Ok(fd),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => e,
            Err(e) => return Err(e.into()),
        };
        // A symlink whose target does not exist (yet).
        let target = match rustix::fs::readlinkat(&parent_fd, as_os(last), Vec::new()) {
            Ok(t) => t.into_bytes(),
            Err(Errno::INVAL) => return Err(err.into()),
            Err(e) => return Err(e.into()),
        };
        *links += 1;
        if *links > 40 {
            return Err(Errno::LOOP.into());
        }
        // Relative targets start from the link's directory, absolute ones
        // from the root (RESOLVE_IN_ROOT takes care of both).
        let mut resolved = Vec::new();
        if target.first() != Some(&b'/') && !parent.is_empty() {
            resolved.extend_from_slice(parent);
            resolved.push(b'/');
        }
        resolved.extend_from_slice(&target);
        self.mkdir_p(&resolved, links)
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        let comps = components(name).map_err(|r| self.refuse(name, r))?;
        let kind = entry.header().entry_type();
        use tar::EntryType as E;
        if matches!(
            kind,
            E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink
        ) {
            return Ok(());
        }
        if comps.is_empty() {
            // "./": the root directory's own metadata.
            return if kind == E::Directory {
                self.root_dir(entry, name)
            } else {
                Ok(())
            };
        }
        let (parent_comps, last) = comps.split_at(comps.len() - 1);
        let last = last[0];
        let path = join(&comps);

        // Whiteouts.
        if let Some(target) = last.strip_prefix(b".wh.") {
            return self.whiteout(parent_comps, target, name);
        }

        match kind {
            E::Char | E::Block => {
                self.out.warnings.push(format!(
                    "layer {}: skipped device node {:?}",
                    self.layer,
                    String::from_utf8_lossy(name)
                ));
                return Ok(());
            }
            E::Regular | E::Continuous | E::Directory | E::Symlink | E::Link | E::Fifo => {}
            other => {
                return Err(self.refuse(name, format!("unsupported tar entry type {other:?}")));
            }
        }

        let parent = self
            .open_dir(parent_comps)
            .map_err(|e| self.io_err(name, e))?;
        match kind {
            E::Directory => self.directory(&parent, last, &path, entry, name)?,
            // A link to itself is nothing to do.
            E::Link => {
                if !self.hardlink(&parent, last, &comps, entry, name)? {
                    return Ok(());
                }
            }
            // Everything else replaces whatever is at the path.
            _ => {
                remove_existing(&parent, last).map_err(|e| self.io_err(name, e))?;
                self.create(&parent, last, kind, entry, name)?;
            }
        }
        self.written.insert(path);
        self.out.entries += 1;
        Ok(())
    }

    /// The root directory's own metadata ("./").
    fn root_dir<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        let root = rustix::fs::openat(
            self.root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| self.io_err(name, e.into()))?;
        self.set_meta(root.as_fd(), entry, name, false)?;
        self.dirs.push(PendingDir {
            path: Vec::new(),
            mtime: mtime_of(entry),
        });
        Ok(())
    }

    /// A whiteout in `parent_comps`: `.wh..opq` makes the directory opaque,
    /// `.wh.NAME` removes NAME (unless this layer wrote it).
    fn whiteout(
        &mut self,
        parent_comps: &[&[u8]],
        target: &[u8],
        name: &[u8],
    ) -> Result<(), UnpackError> {
        let parent = self
            .open_dir(parent_comps)
            .map_err(|e| self.io_err(name, e))?;
        if target == b".wh..opq" {
            self.opaque(&parent, &join(parent_comps))
                .map_err(|e| self.io_err(name, e))?;
        } else if !target.is_empty() {
            let mut victim = join(parent_comps);
            if !victim.is_empty() {
                victim.push(b'/');
            }
            victim.extend_from_slice(target);
            if !self.written.contains(&victim) {
                remove_all_at(&parent, target).map_err(|e| self.io_err(name, e))?;
            }
        }
        Ok(())
    }

    /// A directory: made (or kept, if one is there; anything else there
    /// is removed) and given the entry's metadata; its mtime set at the end.
    fn directory<R: Read>(
        &mut self,
        parent: &OwnedFd,
        last: &[u8],
        path: &[u8],
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        let lname = as_os(last);
        match rustix::fs::statat(parent, lname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => {
                remove_all_at(parent, last).map_err(|e| self.io_err(name, e))?;
                mkdir(parent, last).map_err(|e| self.io_err(name, e))?;
            }
            Err(Errno::NOENT) => mkdir(parent, last).map_err(|e| self.io_err(name, e))?,
            Err(e) => return Err(self.io_err(name, e.into())),
        }
        let fd = rustix::fs::openat(
            parent,
            lname,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_err(name, e.into()))?;
        self.set_meta(fd.as_fd(), entry, name, false)?;
        self.dirs.push(PendingDir {
            path: path.to_vec(),
            mtime: mtime_of(entry),
        });
        Ok(())
    }

    /// A hard link to an earlier entry of the rootfs. False when the
    /// link is to itself (nothing done).
    fn hardlink<R: Read>(
        &mut self,
        parent: &OwnedFd,
        last: &[u8],
        comps: &[&[u8]],
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<bool, UnpackError> {
        let lname = as_os(last);
        // Resolve the target before removing anything: a link to itself
        // must not delete its own target.
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.refuse(name, "hardlink without a target"))?
            .into_owned();
        let tcomps = components(&target).map_err(|r| {
            self.refuse(
                name,
                format!(
                    "hardlink target {:?} resolves outside the rootfs: {r}",
                    String::from_utf8_lossy(&target)
                ),
            )
        })?;
        if tcomps.is_empty() {
            return Err(self.refuse(name, "hardlink to the root directory"));
        }
        if tcomps == comps {
            return Ok(false);
        }
        let (tparent_comps, tlast) = tcomps.split_at(tcomps.len() - 1);
        let tparent = self
            .open_dir(tparent_comps)
            .map_err(|e| self.io_err(name, e))?;
        remove_existing(parent, last).map_err(|e| self.io_err(name, e))?;
        rustix::fs::linkat(&tparent, as_os(tlast[0]), parent, lname, AtFlags::empty()).map_err(
            |e| {
                self.io_err(
                    name,
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!(
                            "cannot hardlink to {:?}: {e}",
                            String::from_utf8_lossy(&target)
                        ),
                    ),
                )
            },
        )?;
        Ok(true)
    }

    /// A symlink, fifo or regular file, at a path now free.
    fn create<R: Read>(
        &mut self,
        parent: &OwnedFd,
        last: &[u8],
        kind: tar::EntryType,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        use tar::EntryType as E;
        let lname = as_os(last);
        match kind {
            E::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(name, "symlink without a target"))?
                    .into_owned();
                if target.contains(&0) {
                    return Err(self.refuse(name, "symlink target contains a NUL byte"));
                }
                rustix::fs::symlinkat(as_os(&target), parent, lname)
                    .map_err(|e| self.io_err(name, e.into()))?;
                let h = entry.header();
                chown_at(parent, lname, h).map_err(|e| self.io_err(name, e))?;
                let t = timestamps(mtime_of(entry));
                let _ = rustix::fs::utimensat(parent, lname, &t, AtFlags::SYMLINK_NOFOLLOW);
            }
            E::Fifo => {
                rustix::fs::mknodat(parent, lname, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| self.io_err(name, e.into()))?;
                let fd = rustix::fs::openat(
                    parent,
                    lname,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io_err(name, e.into()))?;
                chown_at(&fd, "", entry.header()).map_err(|e| self.io_err(name, e))?;
                let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
                rustix::fs::chmodat(parent, lname, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(|e| self.io_err(name, e.into()))?;
                let t = timestamps(mtime_of(entry));
                let _ = rustix::fs::utimensat(parent, lname, &t, AtFlags::SYMLINK_NOFOLLOW);
            }
            _ => {
                let fd = rustix::fs::openat(
                    parent,
                    lname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io_err(name, e.into()))?;
                let mut file = File::from(fd);
                self.copy_data(entry, &mut file, name)?;
                self.set_meta(file.as_fd(), entry, name, true)?;
            }
        }
        Ok(())
    }

    /// Copies an entry's data, telling read errors (the stream) apart from
    /// write errors (the target).
    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        name: &[u8],
    ) -> Result<(), UnpackError> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(self.stream_err(e)),
            };
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(self.io_err(name, e));
            }
        };
        self.buf = buf;
        result
    }

    /// Owner, mode, xattrs (and mtime for files) on an open file or directory.
    fn set_meta<R: Read>(
        &mut self,
        fd: BorrowedFd<'_>,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
        with_mtime: bool,
    ) -> Result<(), UnpackError> {
        let h = entry.header();
        chown_at(&fd, "", h).map_err(|e| self.io_err(name, e))?;
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
            .map_err(|e| self.io_err(name, e.into()))?;
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                let Some(xname) = key.strip_prefix("SCHILY.xattr.") else {
                    continue;
                };
                if xname.starts_with("trusted.overlay.") || xname.starts_with("user.overlay.") {
                    self.out.warnings.push(format!(
                        "layer {}: entry {:?}: refused overlayfs xattr {xname}",
                        self.layer,
                        String::from_utf8_lossy(name)
                    ));
                    continue;
                }
                match rustix::fs::fsetxattr(fd, xname, ext.value_bytes(), XattrFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::OPNOTSUPP | Errno::PERM | Errno::INVAL) => {
                        self.out.warnings.push(format!(
                            "layer {}: entry {:?}: xattr {xname} not supported here, skipped",
                            self.layer,
                            String::from_utf8_lossy(name)
                        ))
                    }
                    Err(e) => return Err(self.io_err(name, e.into())),
                }
            }
        }
        if with_mtime {
            let _ = rustix::fs::futimens(fd, &timestamps(mtime_of(entry)));
        }
        Ok(())
    }

    /// An opaque directory hides everything the lower layers put in it:
    /// everything below it that this layer did not write is removed (the
    /// marker may come after entries of this layer in the same directory,
    /// and those may be directories the lower layers also have).
    fn opaque(&self, dir: &OwnedFd, dir_path: &[u8]) -> io::Result<()> {
        let mut prefix = dir_path.to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        // What this layer wrote below the directory, and the parents of it
        // (which may have been created implicitly).
        let mut keep: HashSet<&[u8]> = HashSet::new();
        for w in &self.written {
            if w.len() > prefix.len() && w.starts_with(&prefix) {
                keep.insert(w);
                for (i, b) in w.iter().enumerate().skip(prefix.len()) {
                    if *b == b'/' {
                        keep.insert(&w[..i]);
                    }
                }
            }
        }
        prune(dir, dir_path, &keep)
    }

    fn finish_dirs(&mut self) {
        // Deepest first, so setting a parent's mtime comes after its children.
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let path: &[u8] = if d.path.is_empty() { b"." } else { &d.path };
            if let Ok(fd) =
                crate::sys::io::openat2(self.root, as_os(path), flags, Mode::empty(), RESOLVE)
            {
                let _ = rustix::fs::futimens(&fd, &timestamps(d.mtime));
            }
        }
    }
}

fn mtime_of<R: Read>(entry: &tar::Entry<'_, R>) -> i64 {
    entry.header().mtime().unwrap_or(0) as i64
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn mkdir(parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(
        parent,
        as_os(name),
        Mode::from_raw_mode(0o755),
    )?)
}

fn chown_at<Fd: AsFd, P: AsRef<std::ffi::OsStr>>(
    fd: &Fd,
    path: P,
    h: &tar::Header,
) -> io::Result<()> {
    let path = path.as_ref();
    let uid = h.uid().unwrap_or(0) as u32;
    let gid = h.gid().unwrap_or(0) as u32;
    let flags = if path.is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let (u, g) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    match rustix::fs::chownat(fd, path, Some(u), Some(g), flags) {
        Ok(()) => Ok(()),
        // Unprivileged or unmapped ids: keep the caller's ownership.
        Err(Errno::PERM | Errno::INVAL) if !rustix::process::geteuid().is_root() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes everything below `dir` (at `dir_path`) that is not in `keep`,
/// descending into the directories that are.
fn prune(dir: &OwnedFd, dir_path: &[u8], keep: &HashSet<&[u8]>) -> io::Result<()> {
    let mut names = Vec::new();
    for e in Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        let mut p = dir_path.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&n);
        if !keep.contains(&p[..]) {
            remove_all_at(dir, &n)?;
            continue;
        }
        let st = rustix::fs::statat(dir, as_os(&n), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = rustix::fs::openat(
                dir,
                as_os(&n),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            prune(&sub, &p, keep)?;
        }
    }
    Ok(())
}

/// Removes whatever non-directory, or empty-able directory tree, is at
/// `name` in `parent`; nothing when there is nothing. Never follows symlinks.
fn remove_existing(parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    remove_all_at(parent, name)
}

/// `rm -rf` of `name` inside `parent`, through file descriptors only.
pub(crate) fn remove_all_at(parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let n = as_os(name);
    let st = match rustix::fs::statat(parent, n, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(parent, n, AtFlags::empty())?);
    }
    let dir = rustix::fs::openat(
        parent,
        n,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for e in Dir::read_from(&dir)? {
        let e = e?;
        let c = e.file_name().to_bytes();
        if c != b"." && c != b".." {
            children.push(c.to_vec());
        }
    }
    for c in children {
        remove_all_at(&dir, &c)?;
    }
    Ok(rustix::fs::unlinkat(parent, n, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"../x").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"a/b\0c").is_err());
        assert_eq!(
            components(b"./a//b/./c").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./").unwrap().is_empty());
    }
}
