//! What a kernel file is: an x86_64 ELF `vmlinux` (direct boot: amphi's VMM
//! enters Linux at its 64-bit entry, QEMU through PVH when it carries the
//! Xen PHYS32_ENTRY note) or a `bzImage` (Linux boot protocol, "HdrS" at
//! 0x202). Finds its version and, when it embeds one, its config.

use super::config::{extract_ikconfig, find};
use super::{KernelError, KernelVersion};
use std::io::Read;
use std::path::Path;

/// The file formats a catalog entry can hold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Format {
    /// ELF `vmlinux`, loaded directly.
    #[serde(rename = "vmlinux")]
    Vmlinux,
    /// Compressed `bzImage`, loaded through the Linux boot protocol.
    #[serde(rename = "bzImage")]
    BzImage,
}

impl Format {
    /// The file name inside a catalog entry, and the name shown to users.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Vmlinux => "vmlinux",
            Format::BzImage => "bzImage",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "vmlinux" => Some(Format::Vmlinux),
            "bzImage" => Some(Format::BzImage),
            _ => None,
        }
    }
}

/// What [`probe`] learnt about a kernel file.
#[derive(Debug, Clone)]
pub struct KernelImage {
    pub format: Format,
    /// The release as `uname -r` shows it, e.g. "6.12.117" or "6.1.0-56-amd64".
    pub release: String,
    pub version: KernelVersion,
    /// PVH entry point (physical address) from the XEN_ELFNOTE_PHYS32_ENTRY note.
    pub pvh_entry: Option<u64>,
    /// The config the kernel embeds (`CONFIG_IKCONFIG`), when it could be read.
    pub ikconfig: Option<Vec<u8>>,
}

/// Reads and checks a kernel file.
pub fn probe(path: &Path) -> Result<(KernelImage, Vec<u8>), KernelError> {
    let bad = |reason: String| KernelError::BadKernel {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| missing_or(e, "kernel file", path))?;
    if meta.is_dir() {
        return Err(bad("is a directory, not a kernel file".into()));
    }
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    let data = std::fs::read(path).map_err(|e| KernelError::io(path, e))?;
    let image = probe_bytes(&data).map_err(bad)?;
    Ok((image, data))
}

/// [`KernelError::Missing`] for NotFound, else the I/O error.
pub(crate) fn missing_or(e: std::io::Error, what: &'static str, path: &Path) -> KernelError {
    if e.kind() == std::io::ErrorKind::NotFound {
        KernelError::Missing {
            what,
            path: path.to_path_buf(),
        }
    } else {
        KernelError::io(path, e)
    }
}

/// Checks kernel bytes; the error is the reason they are not a usable kernel.
pub fn probe_bytes(data: &[u8]) -> Result<KernelImage, String> {
    if data.is_empty() {
        return Err("empty file".into());
    }
    if data.starts_with(b"\x7fELF") {
        return probe_elf(data);
    }
    if data.get(0x202..0x206) == Some(b"HdrS") {
        return probe_bzimage(data);
    }
    Err(
        "neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" boot header at 0x202)"
            .into(),
    )
}

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(off..off + 8)?.try_into().ok()?))
}

const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn probe_elf(d: &[u8]) -> Result<KernelImage, String> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    if d.len() < EHDR {
        return Err(format!(
            "truncated ELF: {} bytes, shorter than an ELF header",
            d.len()
        ));
    }
    if d[4] != 2 || d[5] != 1 {
        return Err("not a 64-bit little-endian ELF, so not an x86_64 vmlinux".into());
    }
    let machine = u16_at(d, 18).unwrap_or(0);
    if machine != EM_X86_64 {
        return Err(format!("ELF for machine {machine}, not x86_64 (62)"));
    }
    let etype = u16_at(d, 16).unwrap_or(0);
    if etype != ET_EXEC {
        return Err(format!(
            "ELF type {etype} is not an executable (a vmlinux is ET_EXEC; this looks like a program or library)"
        ));
    }
    let phoff = u64_at(d, 32).unwrap_or(0) as usize;
    let shoff = u64_at(d, 40).unwrap_or(0);
    let phentsize = u16_at(d, 54).unwrap_or(0) as usize;
    let phnum = u16_at(d, 56).unwrap_or(0) as usize;
    let shentsize = u16_at(d, 58).unwrap_or(0) as u64;
    let shnum = u16_at(d, 60).unwrap_or(0) as u64;
    let len = d.len() as u64;
    if phnum == 0 || phentsize < PHDR {
        return Err("ELF without program headers: nothing to load".into());
    }
    let ph_end = phoff as u64 + (phnum * phentsize) as u64;
    if ph_end > len {
        return Err(format!(
            "truncated ELF: program headers end at byte {ph_end}, the file has {len}"
        ));
    }
    if shnum > 0 && shoff + shnum * shentsize > len {
        return Err(format!(
            "truncated ELF: section headers end at byte {}, the file has {len}",
            shoff + shnum * shentsize
        ));
    }
    let mut pvh_entry = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let ptype = u32_at(d, ph).unwrap_or(0);
        let off = u64_at(d, ph + 8).unwrap_or(0);
        let filesz = u64_at(d, ph + 32).unwrap_or(0);
        if off.saturating_add(filesz) > len {
            return Err(format!(
                "truncated ELF: segment {i} ends at byte {}, the file has {len}",
                off.saturating_add(filesz)
            ));
        }
        if ptype == amphi_vmm::elf::PT_NOTE {
            let notes = &d[off as usize..(off + filesz) as usize];
            pvh_entry = pvh_entry.or_else(|| find_pvh_note(notes));
        }
    }
    let Some(release) = banner_release(d) else {
        return Err(if pvh_entry.is_some() {
            "ELF with a PVH entry but no \"Linux version\" banner: cannot tell the kernel version"
                .into()
        } else {
            "x86_64 ELF executable without a PVH note or a \"Linux version\" banner: not a Linux vmlinux"
                .into()
        });
    };
    let version = KernelVersion::parse(&release)
        .map_err(|_| format!("unreadable kernel version {release:?} in its banner"))?;
    Ok(KernelImage {
        format: Format::Vmlinux,
        release,
        version,
        pvh_entry,
        ikconfig: extract_ikconfig(d),
    })
}

/// The desc of the `Xen` note of type XEN_ELFNOTE_PHYS32_ENTRY in a PT_NOTE segment.
fn find_pvh_note(notes: &[u8]) -> Option<u64> {
    let note = amphi_vmm::elf::notes(notes)
        .find(|n| n.name == b"Xen\0" && n.kind == XEN_ELFNOTE_PHYS32_ENTRY)?;
    match note.desc.len() {
        4 => u32_at(note.desc, 0).map(u64::from),
        8 => u64_at(note.desc, 0),
        _ => None,
    }
}

/// The release in "Linux version 6.12.117 (user@host) ..." (the first such
/// banner followed by a digit).
fn banner_release(d: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = find(&d[from..], BANNER) {
        let start = from + pos + BANNER.len();
        let rest = &d[start..d.len().min(start + 64)];
        if rest.first().is_some_and(u8::is_ascii_digit) {
            let end = rest
                .iter()
                .position(|&b| b == b' ' || b == 0 || b == b'\n')
                .unwrap_or(rest.len());
            return std::str::from_utf8(&rest[..end]).ok().map(str::to_string);
        }
        from = start;
    }
    None
}

fn probe_bzimage(d: &[u8]) -> Result<KernelImage, String> {
    let protocol = u16_at(d, 0x206).unwrap_or(0);
    if protocol < 0x200 {
        return Err(format!(
            "boot protocol {}.{:02} is too old (a bzImage has 2.00 or later)",
            protocol >> 8,
            protocol & 0xff
        ));
    }
    let setup_size = setup_size(d);
    // syssize: the protected-mode part in 16-byte paragraphs (protocol 2.04+).
    let syssize = u32_at(d, 0x1f4).unwrap_or(0) as u64 * 16;
    let expected = setup_size as u64 + syssize;
    if (d.len() as u64) < expected.max(setup_size as u64 + 1) {
        return Err(format!(
            "truncated bzImage: the boot header says {expected} bytes, the file has {}",
            d.len()
        ));
    }
    let ptr = u16_at(d, 0x20e).unwrap_or(0) as usize;
    let release = if ptr == 0 {
        None
    } else {
        d.get(ptr + 0x200..setup_size.min(ptr + 0x200 + 256))
            .and_then(|s| {
                let end = s.iter().position(|&b| b == b' ' || b == 0)?;
                std::str::from_utf8(&s[..end]).ok().map(str::to_string)
            })
    };
    // The payload (protocol 2.08+): the compressed vmlinux. gzip can be read
    // here, which gives the embedded config of kernels built with IKCONFIG.
    let mut ikconfig = None;
    let mut payload_release = None;
    if let Ok(payload) = bzimage_payload(d) {
        if payload.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            let gz = flate2::read::GzDecoder::new(payload);
            if gz.take(1 << 30).read_to_end(&mut out).is_ok() {
                ikconfig = extract_ikconfig(&out);
                payload_release = banner_release(&out);
            }
        }
    }
    let release = release.or(payload_release).ok_or_else(|| {
        "bzImage without a kernel_version string: cannot tell the kernel version".to_string()
    })?;
    let version = KernelVersion::parse(&release)
        .map_err(|_| format!("unreadable kernel version {release:?} in the boot header"))?;
    Ok(KernelImage {
        format: Format::BzImage,
        release,
        version,
        pvh_entry: None,
        ikconfig,
    })
}

/// The size of a bzImage's real-mode setup (the boot sector and the setup
/// sectors; 0 setup sectors means 4).
fn setup_size(d: &[u8]) -> usize {
    let setup_sects = match d.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => n as usize,
    };
    (setup_sects + 1) * 512
}

/// The compressed kernel inside a bzImage (boot protocol 2.08+:
/// `payload_offset` at 0x248, after the setup, and `payload_length` at
/// 0x24c). Its first bytes say how it is compressed; the error is why there
/// is none.
pub fn bzimage_payload(d: &[u8]) -> Result<&[u8], String> {
    if d.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no \"HdrS\" boot header at 0x202)".into());
    }
    let protocol = u16_at(d, 0x206).unwrap_or(0);
    if protocol < 0x208 {
        return Err(format!(
            "boot protocol {}.{:02} does not say where the payload is (2.08 or later does)",
            protocol >> 8,
            protocol & 0xff
        ));
    }
    let off = (u32_at(d, 0x248).unwrap_or(0) as usize).saturating_add(setup_size(d));
    let len = u32_at(d, 0x24c).unwrap_or(0) as usize;
    match d.get(off..off.saturating_add(len)) {
        Some(payload) if !payload.is_empty() => Ok(payload),
        Some(_) => Err("the boot header gives an empty payload".into()),
        None => Err(format!(
            "truncated bzImage: the payload ends at byte {}, the file has {}",
            off.saturating_add(len),
            d.len()
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn put16(d: &mut [u8], off: usize, v: u16) {
        d[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(d: &mut [u8], off: usize, v: u32) {
        d[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(d: &mut [u8], off: usize, v: u64) {
        d[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A minimal x86_64 ELF executable: one PT_NOTE (optionally with the PVH
    /// note), one PT_LOAD holding `body`.
    pub fn tiny_elf(pvh: bool, body: &[u8]) -> Vec<u8> {
        let mut notes = Vec::new();
        if pvh {
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&8u32.to_le_bytes());
            notes.extend_from_slice(&18u32.to_le_bytes());
            notes.extend_from_slice(b"Xen\0");
            notes.extend_from_slice(&0x0100_0000u64.to_le_bytes());
        }
        // A GNU note first, so the walk has to skip one.
        let mut gnu = Vec::new();
        gnu.extend_from_slice(&4u32.to_le_bytes());
        gnu.extend_from_slice(&5u32.to_le_bytes());
        gnu.extend_from_slice(&3u32.to_le_bytes());
        gnu.extend_from_slice(b"GNU\0abcde\0\0\0");
        gnu.extend_from_slice(&notes);
        let notes = gnu;
        let phoff = 64;
        let notes_off = phoff + 2 * 56;
        let body_off = notes_off + notes.len();
        let mut d = vec![0u8; body_off];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        put16(&mut d, 16, ET_EXEC);
        put16(&mut d, 18, EM_X86_64);
        put64(&mut d, 32, phoff as u64);
        put16(&mut d, 52, 64);
        put16(&mut d, 54, 56);
        put16(&mut d, 56, 2);
        put32(&mut d, phoff, amphi_vmm::elf::PT_NOTE);
        put64(&mut d, phoff + 8, notes_off as u64);
        put64(&mut d, phoff + 32, notes.len() as u64);
        put32(&mut d, phoff + 56, 1);
        put64(&mut d, phoff + 56 + 8, body_off as u64);
        put64(&mut d, phoff + 56 + 32, body.len() as u64);
        d[notes_off..].copy_from_slice(&notes);
        d.extend_from_slice(body);
        d
    }

    /// A minimal bzImage: boot header with `release`, a gzip payload of `payload`.
    pub fn tiny_bzimage(release: &str, payload: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(payload).unwrap();
        let gz = gz.finish().unwrap();
        let setup_sects = 4usize;
        let setup = (setup_sects + 1) * 512;
        let mut d = vec![0u8; setup];
        d[0x1f1] = setup_sects as u8;
        put16(&mut d, 0x1fe, 0xaa55);
        d[0x202..0x206].copy_from_slice(b"HdrS");
        put16(&mut d, 0x206, 0x20f);
        put16(&mut d, 0x20e, 0x300 - 0x200);
        let s = format!("{release} (test@host) #1 SMP\0");
        d[0x300..0x300 + s.len()].copy_from_slice(s.as_bytes());
        put32(&mut d, 0x248, 0x10);
        put32(&mut d, 0x24c, gz.len() as u32);
        let mut body = vec![0u8; 0x10];
        body.extend_from_slice(&gz);
        body.resize(body.len().div_ceil(16) * 16, 0);
        put32(&mut d, 0x1f4, (body.len() / 16) as u32);
        d.extend_from_slice(&body);
        d
    }

    fn ikconfig_blob(cfg: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(cfg).unwrap();
        let mut b = b"IKCFG_ST".to_vec();
        b.extend_from_slice(&gz.finish().unwrap());
        b.extend_from_slice(b"IKCFG_ED");
        b
    }

    #[test]
    fn reads_a_vmlinux() {
        let mut body =
            b"....Linux version %s....Linux version 6.12.117 (root@vm) (gcc) #1 SMP\n\0".to_vec();
        body.extend_from_slice(&ikconfig_blob(b"CONFIG_PVH=y\n"));
        let k = probe_bytes(&tiny_elf(true, &body)).unwrap();
        assert_eq!(k.format, Format::Vmlinux);
        assert_eq!(k.release, "6.12.117");
        assert_eq!(k.version, KernelVersion::new(6, 12, 117));
        assert_eq!(k.pvh_entry, Some(0x0100_0000));
        assert_eq!(k.ikconfig.as_deref(), Some(&b"CONFIG_PVH=y\n"[..]));

        let k = probe_bytes(&tiny_elf(false, b"Linux version 6.1.0-56-amd64 (x)")).unwrap();
        assert_eq!(k.release, "6.1.0-56-amd64");
        assert_eq!(k.pvh_entry, None);
        assert_eq!(k.ikconfig, None);
    }

    #[test]
    fn refuses_bad_elves() {
        let good = tiny_elf(true, b"Linux version 6.12.1 x");
        let err = |d: &[u8]| probe_bytes(d).unwrap_err();
        assert!(err(&good[..40]).contains("truncated ELF"));
        assert!(err(&good[..good.len() - 3]).contains("truncated ELF"));
        assert!(err(&good[..100]).contains("truncated ELF"));
        let mut m = good.clone();
        put16(&mut m, 18, 183); // aarch64
        assert!(err(&m).contains("not x86_64"));
        let mut m = good.clone();
        put16(&mut m, 16, 3); // ET_DYN
        assert!(err(&m).contains("not an executable"));
        let mut m = good.clone();
        m[4] = 1;
        assert!(err(&m).contains("64-bit"));
        assert!(err(&tiny_elf(false, b"no banner")).contains("not a Linux vmlinux"));
        assert!(err(&tiny_elf(true, b"no banner")).contains("cannot tell the kernel version"));
    }

    #[test]
    fn reads_a_bzimage() {
        let mut payload = tiny_elf(true, b"Linux version 6.1.192 (x)");
        payload.extend_from_slice(&ikconfig_blob(b"CONFIG_PVM_GUEST=y\n"));
        let d = tiny_bzimage("6.1.192", &payload);
        let k = probe_bytes(&d).unwrap();
        assert_eq!(k.format, Format::BzImage);
        assert_eq!(k.version, KernelVersion::new(6, 1, 192));
        assert_eq!(k.ikconfig.as_deref(), Some(&b"CONFIG_PVM_GUEST=y\n"[..]));
        // Trailing data (a signature) is fine; a missing tail is not.
        let mut longer = d.clone();
        longer.extend_from_slice(&[0; 100]);
        assert!(probe_bytes(&longer).is_ok());
        let e = probe_bytes(&d[..d.len() - 16]).unwrap_err();
        assert!(e.contains("truncated bzImage"), "{e}");
        let e = probe_bytes(&d[..0x210]).unwrap_err();
        assert!(e.contains("truncated bzImage"), "{e}");
    }

    #[test]
    fn finds_the_bzimage_payload() {
        let d = tiny_bzimage("6.1.192", b"the kernel");
        let payload = bzimage_payload(&d).unwrap();
        assert!(payload.starts_with(&[0x1f, 0x8b]), "{payload:02x?}");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"the kernel");
        let e = bzimage_payload(&d[..d.len() - 40]).unwrap_err();
        assert!(e.contains("truncated bzImage"), "{e}");
        let mut old = d.clone();
        put16(&mut old, 0x206, 0x207);
        let e = bzimage_payload(&old).unwrap_err();
        assert!(e.contains("boot protocol 2.07"), "{e}");
        assert!(bzimage_payload(b"\x7fELF")
            .unwrap_err()
            .contains("not a bzImage"));
    }

    #[test]
    fn refuses_other_files() {
        assert_eq!(probe_bytes(b"").unwrap_err(), "empty file");
        assert!(probe_bytes(b"#!/bin/sh\necho hi\n")
            .unwrap_err()
            .contains("neither an ELF vmlinux nor a bzImage"));
    }
}
