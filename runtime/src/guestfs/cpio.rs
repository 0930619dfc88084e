//! A writer of "newc" cpio archives (magic `070701`), the format the Linux
//! kernel unpacks into its initramfs (see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (13 fields of 8 hex digits), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes.
//! Hardlinks share an inode number and carry `nlink` > 1; by convention the
//! data goes with the last name only, the others have size 0 (GNU cpio and
//! the kernel both link the names together). An archive ends with the entry
//! `TRAILER!!!`; [`Writer::finish`] pads it to 512 bytes, so that archives
//! can be concatenated (the kernel unpacks them one after the other).

use std::io::{self, Read, Write};

/// The name of the entry that ends an archive.
pub const TRAILER: &[u8] = b"TRAILER!!!";

/// Longest name (without its NUL) the kernel accepts (`PATH_MAX` - 1).
pub const MAX_NAME: usize = 4095;

/// File type bits of `mode`, as in `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFCHR: u32 = 0o020000;

/// The metadata of one entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Inode number; equal for the names of one hardlinked file.
    pub ino: u32,
    /// File type and permission bits (`st_mode`, setuid and sticky included).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Names of this inode in the archive (1 unless hardlinked).
    pub nlink: u32,
    /// Seconds since the epoch.
    pub mtime: u32,
    /// Device number of a character or block device node.
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// Streams a newc archive into `W`.
pub struct Writer<W: Write> {
    out: W,
    pos: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, pos: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.pos % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// Writes one entry whose data (`size` bytes) comes from `data`.
    /// `name` is relative (`bin/sh`, no leading `/`). Fails if `data` holds
    /// fewer than `size` bytes; reads no more than `size`.
    pub fn entry(
        &mut self,
        name: &[u8],
        h: &Header,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        if name.is_empty() || name.len() > MAX_NAME || name.contains(&0) {
            return Err(invalid(format!(
                "cpio entry name {:?}: must be 1 to {MAX_NAME} bytes without NUL",
                String::from_utf8_lossy(name)
            )));
        }
        let size32 = u32::try_from(size).map_err(|_| {
            invalid(format!(
                "cpio entry {:?}: {size} bytes is over the 4 GiB a newc archive can hold",
                String::from_utf8_lossy(name)
            ))
        })?;
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            size32,
            0, // devmajor of the file's own filesystem
            0, // devminor
            h.rdev_major,
            h.rdev_minor,
            name.len() as u32 + 1,
            0, // check (only the "070702" crc format uses it)
        ];
        let mut hdr = Vec::with_capacity(110);
        hdr.extend_from_slice(b"070701");
        for f in fields {
            hdr.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.put(&hdr)?;
        self.put(name)?;
        self.put(&[0])?;
        self.pad()?;
        if size > 0 {
            let copied = io::copy(&mut data.take(size), &mut self.out)?;
            self.pos += copied;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "cpio entry {:?}: expected {size} bytes of data, got {copied}",
                        String::from_utf8_lossy(name)
                    ),
                ));
            }
            self.pad()?;
        }
        Ok(())
    }

    /// A directory.
    pub fn dir(&mut self, name: &[u8], h: &Header) -> io::Result<()> {
        self.entry(name, h, 0, &mut io::empty())
    }

    /// A symlink to `target` (the target is the entry's data).
    pub fn symlink(&mut self, name: &[u8], h: &Header, target: &[u8]) -> io::Result<()> {
        self.entry(name, h, target.len() as u64, &mut &target[..])
    }

    /// Writes the trailer, pads the archive to 512 bytes and returns the
    /// output (not flushed).
    pub fn finish(mut self) -> io::Result<W> {
        let h = Header {
            nlink: 1,
            ..Header::default()
        };
        self.entry(TRAILER, &h, 0, &mut io::empty())?;
        let n = ((512 - self.pos % 512) % 512) as usize;
        self.put(&vec![0u8; n])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_padding() {
        let mut w = Writer::new(Vec::new());
        let h = Header {
            ino: 1,
            mode: S_IFREG | 0o4755,
            uid: 1000,
            gid: 0x1234_5678,
            nlink: 1,
            mtime: 0xdead_beef,
            ..Header::default()
        };
        w.entry(b"ab", &h, 5, &mut &b"hello world"[..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000001");
        assert_eq!(&out[14..22], b"000089ED");
        assert_eq!(&out[30..38], b"12345678");
        assert_eq!(&out[46..54], b"DEADBEEF");
        assert_eq!(&out[54..62], b"00000005");
        assert_eq!(&out[94..102], b"00000003"); // namesize: "ab\0"
                                                // 110 + 3 = 113 -> padded to 116, then 5 bytes of data.
        assert_eq!(&out[110..116], b"ab\0\0\0\0");
        assert_eq!(&out[116..121], b"hello");
        assert_eq!(&out[121..124], b"\0\0\0");
        assert_eq!(&out[124..130], b"070701");
        assert_eq!(out.len() % 512, 0);
        let trailer = out.windows(TRAILER.len()).position(|w| w == TRAILER);
        assert!(trailer.is_some());
    }

    #[test]
    fn short_data_and_bad_names_are_errors() {
        let mut w = Writer::new(Vec::new());
        let h = Header::default();
        assert!(w.entry(b"x", &h, 10, &mut &b"abc"[..]).is_err());
        let mut w = Writer::new(Vec::new());
        assert!(w.dir(b"", &h).is_err());
        assert!(w.dir(b"a\0b", &h).is_err());
        assert!(w.dir(&vec![b'a'; MAX_NAME + 1], &h).is_err());
        assert!(w.dir(&vec![b'a'; MAX_NAME], &h).is_ok());
        let mut w = Writer::new(io::sink());
        assert!(w.entry(b"big", &h, 1 << 32, &mut io::repeat(0)).is_err());
    }
}
