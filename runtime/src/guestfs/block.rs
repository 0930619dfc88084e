//! The block rootfs: an ext4 image made with `mkfs.ext4 -d` from the merged
//! view, read-only in the guest (which puts a tmpfs overlay on it).
//!
//! `mkfs.ext4 -d` (e2fsprogs 1.47) keeps owners, modes (setuid included),
//! mtimes, symlinks, hardlinks, fifos and extended attributes (file
//! capabilities too). It does not copy the source root directory's mode
//! and mtime, and it adds `/lost+found`; a `debugfs -w` pass fixes both.
//! The root's owner is passed with `-E root_owner`.

use super::tools::{need, Tools};
use super::tree::Tree;
use super::GuestfsError;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

/// The image size for a tree: its allocated size plus a quarter, plus
/// 64 MiB for the filesystem's own metadata, in whole MiB.
pub fn image_size(alloc_bytes: u64) -> u64 {
    let raw = alloc_bytes + alloc_bytes / 4 + 64 * MIB;
    raw.div_ceil(MIB) * MIB
}

/// Makes the ext4 image `out` (which must not exist) from `tree`, walked at
/// `merged`. Paths must be absolute (the caller's cwd may be elsewhere).
pub fn build(tools: &Tools, tree: &Tree, merged: &Path, out: &Path) -> Result<(), GuestfsError> {
    let mkfs = need(&tools.mkfs_ext4, "mkfs.ext4", "e2fsprogs")?;
    let debugfs = need(&tools.debugfs, "debugfs", "e2fsprogs")?;
    let f = &tree.facts;
    let root = tree.nodes.first().ok_or_else(|| GuestfsError::Tool {
        tool: "mkfs.ext4".into(),
        reason: "the rootfs walk found no root directory".into(),
    })?;
    let size_k = image_size(f.alloc_bytes) / 1024;
    let inodes = f.entries + f.entries / 4 + 1024;
    let args: Vec<std::ffi::OsString> = vec![
        "-q".into(),
        "-F".into(),
        "-d".into(),
        merged.into(),
        "-L".into(),
        "amphi-rootfs".into(),
        // Read-only in the guest: no journal, no reserved blocks.
        "-O".into(),
        "^has_journal".into(),
        "-m".into(),
        "0".into(),
        "-N".into(),
        inodes.to_string().into(),
        "-E".into(),
        format!("root_owner={}:{}", root.uid, root.gid).into(),
        out.into(),
        format!("{size_k}k").into(),
    ];
    super::tools::run(mkfs, &args)?;

    let mut script = format!(
        "sif / mode 0{:o}\nsif / mtime @{}\n",
        root.mode,
        root.mtime.max(0)
    );
    if !f.has_lost_found {
        script.push_str("rmdir /lost+found\n");
    }
    debugfs_script(debugfs, out, &script)
}

/// Runs `debugfs -w -f -` with `script`. debugfs exits 0 even when a
/// request fails, so any message other than its banner is an error.
fn debugfs_script(debugfs: &Path, image: &Path, script: &str) -> Result<(), GuestfsError> {
    let err = |reason: String| GuestfsError::Tool {
        tool: "debugfs".into(),
        reason,
    };
    let mut child = Command::new(debugfs)
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(image)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {}: {e}", debugfs.display())))?;
    let wrote = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes());
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for it: {e}")))?;
    wrote.map_err(|e| err(format!("writing its requests: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !problems.is_empty() {
        return Err(err(format!(
            "fixing up {} failed ({}): {}",
            image.display(),
            out.status,
            problems.join("; ")
        )));
    }
    Ok(())
}
