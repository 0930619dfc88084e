//! The image scan for a run: the stored one, or made now and stored.

use super::resolve::ResolvedImage;
use crate::image::scan::{scan_rootfs, CommandFacts, ImageScan};
use crate::spec::{process_args, RunFlags};

/// The image's scan: the stored one (of the current format), else scanned
/// now (a read-only overlay of its layers, see
/// [`crate::guestfs::with_image_rootfs`]) and stored for the next run.
/// `rescan` ignores a stored scan.
pub fn image_scan(resolved: &ResolvedImage, rescan: bool) -> Result<ImageScan, String> {
    let store = &resolved.store;
    let rec = &resolved.record;
    if !rescan {
        if let Some(s) = store.load_scan(&rec.manifest) {
            return Ok(s);
        }
    }
    let argv = process_args(&resolved.config, &RunFlags::default()).unwrap_or_default();
    let path = image_path(resolved);
    let scan = crate::guestfs::with_image_rootfs(store, rec, |root| {
        scan_rootfs(root, &argv, path.as_deref())
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if scan.transient {
        tracing::warn!(image = %rec.config, "the image scan met a passing error: not stored, the next run scans again");
    } else if let Err(e) = store.save_scan(&rec.manifest, &scan) {
        tracing::warn!(image = %rec.config, error = %e, "could not store the image scan");
    }
    Ok(scan)
}

/// The image's PATH (from its config's env), if it sets one.
fn image_path(resolved: &ResolvedImage) -> Option<String> {
    resolved
        .config
        .config
        .as_ref()?
        .env
        .as_ref()?
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
}

/// The facts for the command a run would start: `command` and
/// `entrypoint` are `run`'s overrides (empty / None: the image's own).
pub fn command_facts(
    resolved: &ResolvedImage,
    scan: &ImageScan,
    command: &[String],
    entrypoint: Option<&str>,
) -> CommandFacts {
    let flags = RunFlags {
        command: command.to_vec(),
        entrypoint: entrypoint.map(str::to_string),
        ..RunFlags::default()
    };
    match process_args(&resolved.config, &flags) {
        Ok(argv) => scan.facts_for(&argv, image_path(resolved).as_deref()),
        Err(_) => scan.facts_for(&[], None),
    }
}
