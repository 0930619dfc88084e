//! `amphi-lab cpio`: a directory as a gzip'd newc archive, with amphi's
//! cpio writer (`amphi::guestfs::cpio`, the one that writes the guest
//! initramfs). The kernel unpacks concatenated archives in turn, which is
//! how level 1's initrd is put together from cached pieces.

use amphi::guestfs::cpio::{Header, Writer};
use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The gzip level of the pieces (as `gzip -6`).
const LEVEL: u32 = 6;

/// Writes the contents of `dir` to `out` (through `out.tmp`, renamed at the
/// end, so a cached piece is whole or absent).
pub fn write_dir(dir: &Path, out: &Path) -> anyhow::Result<()> {
    if !fs::metadata(dir)
        .with_context(|| format!("{}", dir.display()))?
        .is_dir()
    {
        bail!("{} is not a directory", dir.display());
    }
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    let gz = GzEncoder::new(
        BufWriter::with_capacity(1 << 20, file),
        flate2::Compression::new(LEVEL),
    );
    let mut w = Writer::new(gz);
    let mut ino = 0;
    let written = add_dir(&mut w, dir, b"", &mut ino).and_then(|()| {
        let gz = w.finish().context("the archive trailer")?;
        let mut buf = gz.finish().context("the gzip trailer")?;
        buf.flush().context("flushing")?;
        Ok(())
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("writing {} from {}", out.display(), dir.display())));
    }
    fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
}

/// Writes the entries of directory `path` (named `prefix` in the archive,
/// empty for the top), sorted by name, each directory before its contents.
fn add_dir<W: Write>(
    w: &mut Writer<W>,
    path: &Path,
    prefix: &[u8],
    ino: &mut u32,
) -> anyhow::Result<()> {
    let mut names: Vec<_> = fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("reading {}", path.display()))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let src = path.join(&name);
        let mut archived = prefix.to_vec();
        if !archived.is_empty() {
            archived.push(b'/');
        }
        archived.extend_from_slice(name.as_bytes());
        add_entry(w, &src, &archived, ino)?;
    }
    Ok(())
}

/// One entry; a directory with what it holds.
fn add_entry<W: Write>(
    w: &mut Writer<W>,
    src: &Path,
    name: &[u8],
    ino: &mut u32,
) -> anyhow::Result<()> {
    let what = || src.display().to_string();
    let meta = fs::symlink_metadata(src).with_context(what)?;
    *ino += 1;
    // Owned by root (as `cpio -R 0:0`); every name its own inode, so the
    // kernel links nothing together.
    let mut h = Header {
        ino: *ino,
        mode: meta.mode(),
        nlink: 1,
        mtime: meta.mtime().clamp(0, i64::from(u32::MAX)) as u32,
        ..Header::default()
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        h.nlink = 2;
        w.dir(name, &h).with_context(what)?;
        add_dir(w, src, name, ino)
    } else if kind.is_file() {
        let mut f = File::open(src).with_context(what)?;
        w.entry(name, &h, meta.len(), &mut f).with_context(what)
    } else if kind.is_symlink() {
        let target = fs::read_link(src).with_context(what)?;
        w.symlink(name, &h, target.as_os_str().as_bytes())
            .with_context(what)
    } else if kind.is_char_device() || kind.is_block_device() {
        h.rdev_major = rustix::fs::major(meta.rdev());
        h.rdev_minor = rustix::fs::minor(meta.rdev());
        w.entry(name, &h, 0, &mut io::empty()).with_context(what)
    } else if kind.is_fifo() {
        w.entry(name, &h, 0, &mut io::empty()).with_context(what)
    } else {
        bail!("{}: a socket cannot go into an initramfs", what())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi::guestfs::cpio::{S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// (name, mode, uid, gid, nlink, rdev major, minor, data) of each entry.
    type Entry = (String, u32, u32, u32, u32, u32, u32, Vec<u8>);

    fn hex(b: &[u8]) -> u32 {
        u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap()
    }

    /// Reads a newc archive back (up to the trailer).
    fn entries(archive: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut at = 0;
        let align = |n: usize| n.div_ceil(4) * 4;
        loop {
            let h = &archive[at..at + 110];
            assert_eq!(&h[..6], b"070701");
            let field = |i: usize| hex(&h[6 + 8 * i..14 + 8 * i]);
            let (size, namesize) = (field(6) as usize, field(11) as usize);
            let name = &archive[at + 110..at + 110 + namesize - 1];
            let name = String::from_utf8(name.to_vec()).unwrap();
            let data_at = align(at + 110 + namesize);
            if name == "TRAILER!!!" {
                return out;
            }
            let data = archive[data_at..data_at + size].to_vec();
            out.push((
                name,
                field(1),
                field(2),
                field(3),
                field(4),
                field(9),
                field(10),
                data,
            ));
            at = align(data_at + size);
        }
    }

    #[test]
    fn a_directory_becomes_a_sorted_root_owned_archive() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        fs::create_dir_all(stage.join("bin")).unwrap();
        fs::create_dir_all(stage.join("l2")).unwrap();
        fs::write(stage.join("init"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(stage.join("bin/busybox"), vec![0xaa; 5000]).unwrap();
        symlink("busybox", stage.join("bin/sh")).unwrap();
        // A hardlink is stored with its data under both names.
        fs::hard_link(stage.join("bin/busybox"), stage.join("bin/bb")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            stage.join("l2/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let out = dir.path().join("piece.cpio.gz");
        write_dir(&stage, &out).unwrap();
        assert!(!dir.path().join("piece.cpio.gz.tmp").exists());
        let mut archive = Vec::new();
        flate2::read::GzDecoder::new(File::open(&out).unwrap())
            .read_to_end(&mut archive)
            .unwrap();
        assert_eq!(archive.len() % 512, 0);
        let got = entries(&archive);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/bb",
                "bin/busybox",
                "bin/sh",
                "init",
                "l2",
                "l2/fifo"
            ]
        );
        let by = |n: &str| got.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(by("bin").1, S_IFDIR | 0o755);
        assert_eq!(by("bin").4, 2);
        assert_eq!(by("init").1, S_IFREG | 0o755);
        assert_eq!(by("init").7, b"#!/bin/sh\necho hi\n");
        assert_eq!(by("bin/sh").1 & 0o170000, S_IFLNK);
        assert_eq!(by("bin/sh").7, b"busybox");
        assert_eq!(by("bin/bb").7, vec![0xaa; 5000]);
        assert_eq!(by("bin/bb").4, 1);
        assert_eq!(by("l2/fifo").1, S_IFIFO | 0o600);
        for e in &got {
            assert_eq!((e.2, e.3), (0, 0), "{} is not root's", e.0);
        }
    }

    #[test]
    fn device_nodes_keep_their_numbers() {
        if !amphi_test_skip::is_root() {
            amphi_test_skip::skip("making /dev/console in a stage needs root (mknod)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        fs::create_dir_all(stage.join("dev")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            stage.join("dev/console"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(5, 1),
        )
        .unwrap();
        let out = dir.path().join("piece.cpio.gz");
        write_dir(&stage, &out).unwrap();
        let mut archive = Vec::new();
        flate2::read::GzDecoder::new(File::open(&out).unwrap())
            .read_to_end(&mut archive)
            .unwrap();
        let got = entries(&archive);
        let console = got.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!(console.1, amphi::guestfs::cpio::S_IFCHR | 0o600);
        assert_eq!((console.5, console.6), (5, 1));
    }

    #[test]
    fn a_missing_directory_or_a_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.cpio.gz");
        let e = write_dir(&dir.path().join("nope"), &out).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        let stage = dir.path().join("stage");
        fs::create_dir(&stage).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(stage.join("s")).unwrap();
        let e = write_dir(&stage, &out).unwrap_err();
        assert!(format!("{e:#}").contains("a socket cannot go"), "{e:#}");
        assert!(!out.exists());
        assert!(!dir.path().join("x.cpio.gz.tmp").exists());
    }
}
