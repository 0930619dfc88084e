//! Unpacked layers, keyed by chain ID.
//!
//! A layer's content depends on the layers below it: in a merged-/usr image
//! one layer has `lib -> usr/lib` and the next writes `lib/x`, which must land
//! in `usr/lib/x`. So layer N is unpacked through an overlayfs mount of layers
//! 1..N-1 with a fresh upper directory, and that upper directory (with the
//! whiteouts overlayfs wrote for removals) becomes the stored layer. The key
//! is the chain ID (the diff IDs of the layer and all below it), so images
//! that share a base share its unpacked layers.
//!
//! The mount lives in a private mount namespace of the unpacking thread: if
//! the process dies, the kernel drops it, and nothing leaks.

use super::digest::Digest;
use super::manifest::Compression;
use super::progress::Progress;
use super::store::{remove_path, Store, StoreError};
use super::unpack::{unpack_layer, UnpackError};
use crate::sys::io::IoAt;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// What the store remembers of an unpacked layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    /// The compressed blob it came from.
    pub blob: Digest,
    /// Uncompressed size.
    pub size: u64,
    pub entries: u64,
}

/// Errors of layer preparation.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("layer {layer}: cannot prepare the overlay to unpack it: {reason}")]
    Overlay { layer: String, reason: String },
}

impl From<crate::sys::io::PathIoError> for LayerError {
    fn from(e: crate::sys::io::PathIoError) -> Self {
        LayerError::Store(e.into())
    }
}

/// One layer to make available.
pub struct LayerSpec<'a> {
    pub blob: &'a Digest,
    pub compression: Compression,
    pub diff_id: &'a Digest,
    /// How errors name it, e.g. `2/3 (sha256:…)`.
    pub label: String,
    pub blob_size: u64,
}

impl Store {
    /// The `diff` directory of a stored layer.
    pub fn layer_diff(&self, chain: &Digest) -> PathBuf {
        self.layer_dir(chain).join("diff")
    }

    /// Reads a stored layer's metadata, `None` when it is not (completely)
    /// there.
    pub fn layer_meta(&self, chain: &Digest) -> Option<LayerMeta> {
        let b = fs::read(self.layer_dir(chain).join("layer.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Makes sure every layer of the chain is unpacked; returns the chain
    /// IDs and metas, bottom first.
    pub fn ensure_layers(
        &self,
        layers: &[LayerSpec<'_>],
        progress: &Progress,
    ) -> Result<Vec<LayerMeta>, LayerError> {
        let mut out: Vec<LayerMeta> = Vec::with_capacity(layers.len());
        let mut parent: Option<Digest> = None;
        for spec in layers {
            let chain = Digest::chain(parent.as_ref(), spec.diff_id);
            let meta = match self.layer_meta(&chain) {
                Some(m) => m,
                None => {
                    let _lock = self.object_lock(&format!("layer-{}", chain.hex()))?;
                    match self.layer_meta(&chain) {
                        Some(m) => m,
                        None => self.unpack_one(spec, &chain, parent.as_ref(), &out, progress)?,
                    }
                }
            };
            parent = Some(chain);
            out.push(meta);
        }
        Ok(out)
    }

    fn unpack_one(
        &self,
        spec: &LayerSpec<'_>,
        chain: &Digest,
        parent: Option<&Digest>,
        below: &[LayerMeta],
        progress: &Progress,
    ) -> Result<LayerMeta, LayerError> {
        let tmp = self.temp_path("layer");
        let result = self.unpack_into(spec, &tmp, below, progress);
        let unpacked = match result {
            Ok(u) => u,
            Err(e) => {
                let _ = remove_path(&tmp);
                return Err(e);
            }
        };
        // A debootstrap tree carries a dozen device nodes: say so once.
        const SHOWN: usize = 3;
        for w in unpacked.warnings.iter().take(SHOWN) {
            progress.println(&format!("warning: {w}"));
        }
        if unpacked.warnings.len() > SHOWN {
            progress.println(&format!(
                "warning: layer {}: {} more entries skipped (run with --log-level debug to list them)",
                spec.label,
                unpacked.warnings.len() - SHOWN
            ));
            for w in &unpacked.warnings[SHOWN..] {
                tracing::debug!("{w}");
            }
        }
        let meta = LayerMeta {
            chain_id: chain.clone(),
            diff_id: spec.diff_id.clone(),
            parent: parent.cloned(),
            blob: spec.blob.clone(),
            size: unpacked.size,
            entries: unpacked.entries,
        };
        let finish = (|| -> Result<(), StoreError> {
            let p = tmp.join("layer.json");
            fs::write(
                &p,
                serde_json::to_vec_pretty(&meta).expect("meta serialises"),
            )
            .at(&p)?;
            let dst = self.layer_dir(chain);
            // A leftover (incomplete: no layer.json) directory from a killed
            // process that predates tmp/ use is replaced.
            remove_path(&dst)?;
            Ok(fs::rename(&tmp, &dst).at(&dst)?)
        })();
        if let Err(e) = finish {
            let _ = remove_path(&tmp);
            return Err(e.into());
        }
        Ok(meta)
    }

    fn unpack_into(
        &self,
        spec: &LayerSpec<'_>,
        tmp: &Path,
        below: &[LayerMeta],
        progress: &Progress,
    ) -> Result<super::unpack::Unpacked, LayerError> {
        let diff = tmp.join("diff");
        fs::create_dir_all(&diff).at(&diff)?;
        let blob = self.open_blob(spec.blob)?;
        let bar = progress.bytes(&format!("unpack {}", spec.blob.short()), spec.blob_size);
        let reader = bar.wrap_read(io::BufReader::with_capacity(256 * 1024, blob));
        let lowers: Vec<PathBuf> = below
            .iter()
            .rev()
            .map(|m| self.layer_diff(&m.chain_id))
            .collect();
        let label = spec.label.clone();
        let compression = spec.compression;
        let diff_id = spec.diff_id.clone();
        let tmp_owned = tmp.to_path_buf();
        // The mount namespace is per thread (unshare(CLONE_NEWNS) unshares
        // the thread's fs context), so the overlay is invisible to everyone
        // else and vanishes with the thread.
        let r = std::thread::scope(|s| {
            s.spawn(move || -> Result<_, LayerError> {
                let target = if lowers.is_empty() {
                    diff.clone()
                } else {
                    mount_overlay(&tmp_owned, &lowers).map_err(|reason| LayerError::Overlay {
                        layer: label.clone(),
                        reason,
                    })?
                };
                let root = rustix::fs::open(
                    &target,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(io::Error::from)
                .at(&target)?;
                let r = unpack_layer(
                    Box::new(reader) as Box<dyn Read + Send>,
                    compression,
                    std::os::fd::AsFd::as_fd(&root),
                    &label,
                    Some(&diff_id),
                );
                drop(root);
                if !lowers.is_empty() {
                    let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
                }
                Ok(r?)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(LayerError::Overlay {
                    layer: spec.label.clone(),
                    reason: "the unpacking thread panicked".into(),
                })
            })
        });
        bar.finish_and_clear();
        // Only the upper directory is the layer.
        for d in ["work", "merged"] {
            remove_path(&tmp.join(d))?;
        }
        r
    }
}

/// In the calling thread: a private mount namespace and an overlay of
/// `lowers` (top first) with `tmp/diff` as upper, mounted on `tmp/merged`.
fn mount_overlay(tmp: &Path, lowers: &[PathBuf]) -> Result<PathBuf, String> {
    use rustix::mount::{mount, mount_change, MountFlags, MountPropagationFlags};
    // SAFETY: only the mount namespace (and with it this thread's fs
    // context) is unshared; no memory or file-table state changes.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e} (unpacking layers needs root)"))?;
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    let work = tmp.join("work");
    let merged = tmp.join("merged");
    for d in [&work, &merged] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let opts = crate::sys::overlay::options(lowers, Some((&tmp.join("diff"), &work)))
        .map_err(|e| e.to_string())?;
    let data = std::ffi::CString::new(opts).map_err(|e| e.to_string())?;
    mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| format!("mount overlay on {}: {e}", merged.display()))?;
    Ok(merged)
}
