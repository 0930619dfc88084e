//! The guest init: the amphi binary itself, statically linked, stripped of
//! debug info (a debug build is ~190 MB, ~25 MB stripped) so the guest
//! loads it quickly.

use super::tools::Tools;
use super::GuestfsError;
use crate::image::Digest;
use crate::sys::io::IoAt;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn init_err(path: &Path, reason: impl Into<String>) -> GuestfsError {
    GuestfsError::Init {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The memo key of a binary: its identity and change times. Hashing a
/// debug build takes about a second, so the sha256 is remembered under
/// this key (`vm/binsum/<key>`), which changes whenever the file does.
pub fn stat_key(bin: &Path) -> Result<String, GuestfsError> {
    let m = fs::metadata(bin).map_err(|e| init_err(bin, e.to_string()))?;
    if !m.is_file() {
        return Err(init_err(bin, "not a regular file"));
    }
    let id = format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    Ok(Digest::of(id.as_bytes()).hex().to_string())
}

/// The sha256 of the file at `bin`.
pub fn hash_file(bin: &Path) -> Result<Digest, GuestfsError> {
    let mut f = File::open(bin).map_err(|e| init_err(bin, e.to_string()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| init_err(bin, e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Digest::parse(&format!("sha256:{}", hex::encode(h.finalize())))
        .map_err(|e| init_err(bin, e.to_string()))
}

/// The sha256 of `bin`, remembered in `memo_dir` by [`stat_key`].
/// `tmp` makes a temp path for the atomic memo write.
pub fn digest(
    bin: &Path,
    memo_dir: &Path,
    tmp: impl FnOnce() -> std::path::PathBuf,
) -> Result<Digest, GuestfsError> {
    let key = stat_key(bin)?;
    let memo = memo_dir.join(&key);
    if let Ok(s) = fs::read_to_string(&memo) {
        if let Ok(d) = Digest::parse(s.trim()) {
            return Ok(d);
        }
    }
    let d = hash_file(bin)?;
    // The memo is only a shortcut: failing to write it is no error.
    let t = tmp();
    if fs::write(&t, d.to_string()).is_ok() {
        if fs::rename(&t, &memo).is_err() {
            let _ = fs::remove_file(&t);
        }
    } else {
        let _ = fs::remove_file(&t);
    }
    Ok(d)
}

/// Refuses what cannot be a guest PID 1: anything but a static x86-64/
/// aarch64 ELF executable (a dynamic one would need a loader the
/// initramfs does not have, and the kernel would only say "error -2").
pub fn check_static(bin: &Path) -> Result<(), GuestfsError> {
    let mut f = File::open(bin).map_err(|e| init_err(bin, e.to_string()))?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr)
        .map_err(|_| init_err(bin, "not an ELF executable (too short)"))?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(init_err(bin, "not a 64-bit little-endian ELF executable"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([ehdr[o], ehdr[o + 1]]) as u64;
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().expect("8 bytes"));
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    if phentsize < 56 || phnum == 0 {
        return Err(init_err(bin, "ELF file without program headers"));
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut ph))
        .map_err(|e| init_err(bin, format!("reading ELF program headers: {e}")))?;
    const PT_INTERP: u32 = 3;
    for h in ph.chunks(phentsize as usize) {
        if u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) == PT_INTERP {
            return Err(init_err(
                bin,
                "dynamically linked; the guest init must be static (build amphi with the \
                 workspace's .cargo/config.toml, which links with +crt-static)",
            ));
        }
    }
    Ok(())
}

/// Writes `bin` without debug info to `out`; returns warnings. Uses `strip
/// --strip-debug` (symbols stay, for backtraces), else `objcopy
/// --strip-debug`, else copies the binary whole and says so.
pub fn strip(tools: &Tools, bin: &Path, out: &Path) -> Result<Vec<String>, GuestfsError> {
    // Resolved here: a `/proc/self/exe` handed to strip would be strip.
    let resolved = fs::canonicalize(bin).map_err(|e| init_err(bin, e.to_string()))?;
    let bin = resolved.as_path();
    let (prog, args): (&Path, Vec<std::ffi::OsString>) = if let Some(s) = &tools.strip {
        (
            s,
            vec!["--strip-debug".into(), "-o".into(), out.into(), bin.into()],
        )
    } else if let Some(o) = &tools.objcopy {
        (o, vec!["--strip-debug".into(), bin.into(), out.into()])
    } else {
        fs::copy(bin, out).at(out)?;
        return Ok(vec![format!(
            "neither strip nor objcopy is installed (binutils): the guest init {} goes into the initramfs with its debug info",
            bin.display()
        )]);
    };
    super::tools::run(prog, &args)?;
    Ok(Vec::new())
}
