//! `amphi-lab extract-vmlinux`: the ELF vmlinux inside a bzImage, for a
//! PVH boot of a kernel that ships only as a bzImage (Debian's).
//!
//! The boot header says where the compressed payload is
//! (`amphi::kernel::probe::bzimage_payload`); its first bytes say how it is
//! compressed. Every format but gzip (whose own trailer has the size) ends
//! with the 4-byte little-endian uncompressed size, which is checked. The
//! result must be an x86_64 vmlinux, as the kernel probe sees it.

use amphi::kernel::probe::{bzimage_payload, probe_bytes, Format};
use anyhow::{bail, Context};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest vmlinux accepted (a stock kernel's is under 100 MB).
const MAX_VMLINUX: u64 = 1 << 30;
/// The block size of lz4's legacy frame: no block decompresses to more.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// The legacy frame's magic (little-endian 0x184C2102).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// How a kernel payload is compressed, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Lz4,
    Zstd,
    /// A format the kernel knows and this tool does not read: its name.
    Unsupported(&'static str),
}

impl Compression {
    pub fn detect(payload: &[u8]) -> Option<Compression> {
        const MAGICS: [(&[u8], Compression); 7] = [
            (&[0x1f, 0x8b], Compression::Gzip),
            (b"\xfd7zXZ\x00", Compression::Xz),
            (&LZ4_LEGACY_MAGIC, Compression::Lz4),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"BZh", Compression::Unsupported("bzip2")),
            (&[0x5d, 0x00, 0x00], Compression::Unsupported("lzma")),
            (b"\x89LZO", Compression::Unsupported("lzo")),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|&(_, c)| c)
    }
}

/// Reads `bzimage` and writes its vmlinux to `out` (through `out.tmp`).
pub fn extract_file(bzimage: &Path, out: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(bzimage).with_context(|| format!("{}", bzimage.display()))?;
    let vmlinux = extract(&data).with_context(|| format!("{}", bzimage.display()))?;
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &vmlinux).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
}

/// The vmlinux inside bzImage bytes.
pub fn extract(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let payload = bzimage_payload(data).map_err(anyhow::Error::msg)?;
    let Some(compression) = Compression::detect(payload) else {
        bail!(
            "the payload is in no compression format the kernel uses (it starts {:02x?})",
            &payload[..payload.len().min(6)]
        );
    };
    let vmlinux = decompress(compression, payload)?;
    match probe_bytes(&vmlinux) {
        Ok(k) if k.format == Format::Vmlinux => Ok(vmlinux),
        Ok(_) => bail!("the payload holds a bzImage, not an ELF vmlinux"),
        Err(reason) => bail!(
            "the payload decompressed to {} bytes that are not an ELF vmlinux: {reason}",
            vmlinux.len()
        ),
    }
}

/// The payload, decompressed; for every format but gzip the size in its
/// trailer is checked.
fn decompress(compression: Compression, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let name = match compression {
        Compression::Gzip => "gzip",
        Compression::Xz => "xz",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
        Compression::Unsupported(name) => bail!(
            "the payload is {name} compressed, which amphi-lab does not read \
             (it reads gzip, xz, lz4 and zstd)"
        ),
    };
    let mut out = Vec::new();
    if compression == Compression::Gzip {
        // One member; what follows it (padding) is not read.
        flate2::read::GzDecoder::new(payload)
            .take(MAX_VMLINUX)
            .read_to_end(&mut out)
            .context("decompressing the gzip payload")?;
        return Ok(out);
    }
    let Some((body, trailer)) = payload.split_last_chunk::<4>() else {
        bail!("the {name} payload is {} bytes, too short", payload.len());
    };
    let size = u32::from_le_bytes(*trailer);
    match compression {
        Compression::Xz => lzma_rust2::XzReader::new(body, false)
            .take(MAX_VMLINUX)
            .read_to_end(&mut out)
            .map(drop),
        Compression::Zstd => zstd::stream::read::Decoder::new(body)
            .and_then(|mut d| {
                d.window_log_max(31)?;
                d.take(MAX_VMLINUX).read_to_end(&mut out)
            })
            .map(drop),
        _ => lz4_legacy(body, &mut out),
    }
    .with_context(|| format!("decompressing the {name} payload"))?;
    if out.len() as u64 != u64::from(size) {
        bail!(
            "the {name} payload decompressed to {} bytes, its trailer says {size}",
            out.len()
        );
    }
    Ok(out)
}

/// lz4's legacy frame (`lz4 -l`, what the kernel's build writes): the
/// magic, then blocks, each a 4-byte little-endian compressed size and an
/// lz4 block of at most 8 MiB decompressed. The magic may appear again
/// where a block would start (concatenated frames).
fn lz4_legacy(body: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut rest = body
        .strip_prefix(&LZ4_LEGACY_MAGIC)
        .ok_or_else(|| bad("no lz4 legacy magic".into()))?;
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        if *len == LZ4_LEGACY_MAGIC {
            rest = tail;
            continue;
        }
        let len = u32::from_le_bytes(*len) as usize;
        let Some(compressed) = tail.get(..len) else {
            return Err(bad(format!(
                "a block of {len} bytes at offset {}, {} bytes left",
                body.len() - rest.len(),
                tail.len()
            )));
        };
        let n = lz4_flex::block::decompress_into(compressed, &mut block)
            .map_err(|e| bad(format!("block at offset {}: {e}", body.len() - rest.len())))?;
        if (out.len() + n) as u64 > MAX_VMLINUX {
            return Err(bad(format!("more than {MAX_VMLINUX} bytes")));
        }
        out.extend_from_slice(&block[..n]);
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} stray bytes at the end", rest.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A vmlinux the probe accepts: an x86_64 ELF executable with a PVH
    /// note and a banner, padded with compressible text.
    fn vmlinux() -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        d[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        d[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        d[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        d[52..54].copy_from_slice(&64u16.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        // One PT_LOAD over the whole file.
        d[64..68].copy_from_slice(&1u32.to_le_bytes());
        let body = b"Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\n";
        for i in 0..20_000u32 {
            d.extend_from_slice(format!("{i:08x} mov eax, ebx; call 0x{i:x}\n").as_bytes());
        }
        d.extend_from_slice(body);
        let len = d.len() as u64;
        d[64 + 32..64 + 40].copy_from_slice(&len.to_le_bytes());
        d
    }

    /// A bzImage whose payload is `payload` (protocol 2.15).
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup = 5 * 512;
        let mut d = vec![0u8; setup];
        d[0x1f1] = 4;
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        d[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        d[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        d.extend_from_slice(&[0u8; 0x40]);
        d.extend_from_slice(payload);
        // The boot header's syssize and the padding after the payload.
        d.extend_from_slice(&[0u8; 100]);
        d
    }

    fn with_size(mut payload: Vec<u8>, size: usize) -> Vec<u8> {
        payload.extend_from_slice(&(size as u32).to_le_bytes());
        payload
    }

    fn gzip(d: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(d).unwrap();
        gz.finish().unwrap()
    }

    /// xz as the kernel's build makes it: the x86 BCJ filter, then LZMA2,
    /// CRC32 check; the size appended.
    fn xz(d: &[u8]) -> Vec<u8> {
        let mut opts = lzma_rust2::XzOptions::with_preset(6);
        opts.set_check_sum_type(lzma_rust2::CheckType::Crc32);
        opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        let mut w = lzma_rust2::XzWriter::new(Vec::new(), opts).unwrap();
        w.write_all(d).unwrap();
        with_size(w.finish().unwrap(), d.len())
    }

    fn zstd(d: &[u8]) -> Vec<u8> {
        with_size(zstd::encode_all(d, 19).unwrap(), d.len())
    }

    /// lz4's legacy frame, in blocks of `block` bytes; the magic repeated
    /// after the first block, as concatenated frames have it.
    fn lz4(d: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for (i, chunk) in d.chunks(block).enumerate() {
            if i == 1 {
                out.extend_from_slice(&LZ4_LEGACY_MAGIC);
            }
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        with_size(out, d.len())
    }

    #[test]
    fn each_format_gives_back_the_vmlinux() {
        let v = vmlinux();
        for (name, payload) in [
            ("gzip", gzip(&v)),
            ("xz", xz(&v)),
            ("zstd", zstd(&v)),
            ("lz4", lz4(&v, 100_000)),
        ] {
            let got = extract(&bzimage(&payload)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(got == v, "{name}: {} bytes, not the vmlinux", got.len());
        }
    }

    #[test]
    fn a_wrong_trailer_or_content_is_refused() {
        let v = vmlinux();
        let mut payload = xz(&v);
        let n = payload.len();
        payload[n - 4..].copy_from_slice(&7u32.to_le_bytes());
        let e = format!("{:#}", extract(&bzimage(&payload)).unwrap_err());
        assert!(e.contains("its trailer says 7"), "{e}");

        let e = format!(
            "{:#}",
            extract(&bzimage(&gzip(b"not a kernel"))).unwrap_err()
        );
        assert!(e.contains("not an ELF vmlinux"), "{e}");

        let mut payload = lz4(&v, 100_000);
        payload.truncate(payload.len() - 50);
        let e = format!("{:#}", extract(&bzimage(&payload)).unwrap_err());
        assert!(e.contains("decompressing the lz4 payload"), "{e}");
    }

    #[test]
    fn other_formats_are_named() {
        let e = format!("{:#}", extract(&bzimage(b"BZh91AY&SY....")).unwrap_err());
        assert!(e.contains("bzip2 compressed"), "{e}");
        assert!(e.contains("gzip, xz, lz4 and zstd"), "{e}");
        let e = format!(
            "{:#}",
            extract(&bzimage(b"\x00\x01\x02\x03junk")).unwrap_err()
        );
        assert!(e.contains("no compression format"), "{e}");
        let e = format!("{:#}", extract(b"#!/bin/sh\n").unwrap_err());
        assert!(e.contains("not a bzImage"), "{e}");
    }
}
