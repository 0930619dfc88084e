//! The host programs the guest rootfs needs: `mkfs.ext4` and `debugfs`
//! (e2fsprogs) for block images, `strip` or `objcopy` (binutils) for the
//! guest init.

use super::GuestfsError;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where each tool is; `None` when it is not installed.
#[derive(Clone, Debug)]
pub struct Tools {
    pub mkfs_ext4: Option<PathBuf>,
    pub debugfs: Option<PathBuf>,
    pub strip: Option<PathBuf>,
    pub objcopy: Option<PathBuf>,
}

impl Tools {
    /// Looks the tools up in `$PATH`, then in the sbin directories (which a
    /// non-root `$PATH` often lacks).
    pub fn find() -> Tools {
        Tools {
            mkfs_ext4: find("mkfs.ext4"),
            debugfs: find("debugfs"),
            strip: find("strip"),
            objcopy: find("objcopy"),
        }
    }
}

/// `name` on `$PATH` (or in the usual bin and sbin directories), executable.
pub(crate) fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `tool` or an error that says which package to install.
pub fn need<'a>(
    tool: &'a Option<PathBuf>,
    name: &str,
    package: &str,
) -> Result<&'a Path, GuestfsError> {
    tool.as_deref().ok_or_else(|| GuestfsError::Tool {
        tool: name.to_string(),
        reason: format!("not found in $PATH or /usr/sbin, /sbin (install {package})"),
    })
}

/// Runs `program args...`, returning an error with the tail of its output
/// when it fails.
pub fn run<I, S>(program: &Path, args: I) -> Result<(), GuestfsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string());
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| GuestfsError::Tool {
            tool: name.clone(),
            reason: format!("cannot run {}: {e}", program.display()),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(8)..].join("\n  ");
    Err(GuestfsError::Tool {
        tool: name,
        reason: format!("failed ({}):\n  {tail}", out.status),
    })
}
