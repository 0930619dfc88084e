//! The last step of every pull and load: with all blobs of a manifest in the
//! store, check the config against the manifest, unpack the layers and name
//! the image. On failure, blobs this operation added are taken back out so a
//! bad image leaves no trace.

use super::digest::Digest;
use super::index::ImageRecord;
use super::layers::LayerSpec;
use super::manifest::{layer_compression, ImageConfig, Manifest};
use super::progress::Progress;
use super::store::{remove_path, Store};
use super::ImageError;
use std::collections::HashSet;

/// Blobs written by one operation, to take back if it fails.
#[derive(Default)]
pub struct NewBlobs(pub Vec<Digest>);

impl NewBlobs {
    /// Records that `d` was added by this operation.
    pub fn add(&mut self, added: bool, d: &Digest) {
        if added {
            self.0.push(d.clone());
        }
    }

    /// Removes the recorded blobs that no image references, if no other
    /// writer is busy (otherwise `amphi gc` will).
    pub fn discard(&self, store: &Store) {
        if self.0.is_empty() || !store.try_exclusive() {
            return;
        }
        let referenced = store.referenced().map(|r| r.blobs).unwrap_or_default();
        for d in &self.0 {
            if !referenced.contains(d) {
                let _ = std::fs::remove_file(store.blob_path(d));
            }
        }
        let _ = store.shared();
    }
}

/// Checks, unpacks and names an image whose blobs are all in the store.
pub fn register(
    store: &Store,
    names: Vec<String>,
    manifest_digest: &Digest,
    manifest: &Manifest,
    progress: &Progress,
) -> Result<ImageRecord, ImageError> {
    manifest.validate(manifest_digest)?;
    let cfg_bytes = store.read_blob(&manifest.config.digest)?;
    let cfg = ImageConfig::parse(&cfg_bytes, &manifest.config.digest, manifest.layers.len())?;
    let n = manifest.layers.len();
    let specs = manifest
        .layers
        .iter()
        .zip(&cfg.rootfs.diff_ids)
        .enumerate()
        .map(|(i, (l, diff_id))| {
            Ok(LayerSpec {
                blob: &l.digest,
                compression: layer_compression(&l.media_type, &l.digest)?,
                diff_id,
                label: format!("{}/{} ({})", i + 1, n, l.digest),
                blob_size: l.size.max(0) as u64,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    // Layers this operation unpacks are taken back if it fails, like blobs.
    let mut parent = None;
    let fresh: Vec<Digest> = specs
        .iter()
        .map(|s| {
            let chain = Digest::chain(parent.as_ref(), s.diff_id);
            parent = Some(chain.clone());
            chain
        })
        .filter(|c| store.layer_meta(c).is_none())
        .collect();
    let r = finish(
        store,
        names,
        manifest_digest,
        manifest,
        &cfg,
        &specs,
        progress,
    );
    if r.is_err() {
        discard_layers(store, &fresh);
    }
    r
}

/// Removes the layers in `fresh` that no image references, if no other
/// writer is busy (otherwise `amphi gc` will).
fn discard_layers(store: &Store, fresh: &[Digest]) {
    if fresh.is_empty() || !store.try_exclusive() {
        return;
    }
    // An unreadable index keeps everything: `amphi gc` will sort it out.
    if let Ok(referenced) = store.referenced() {
        for c in fresh {
            if !referenced.layers.contains(c) {
                let _ = remove_path(&store.layer_dir(c));
            }
        }
    }
    let _ = store.shared();
}

/// Unpacks the layers and adds the image to the index.
fn finish(
    store: &Store,
    names: Vec<String>,
    manifest_digest: &Digest,
    manifest: &Manifest,
    cfg: &ImageConfig,
    specs: &[LayerSpec<'_>],
    progress: &Progress,
) -> Result<ImageRecord, ImageError> {
    let metas = store.ensure_layers(specs, progress)?;
    let platform = match &cfg.variant {
        Some(v) => format!("{}/{}/{v}", cfg.os, cfg.architecture),
        None => format!("{}/{}", cfg.os, cfg.architecture),
    };
    let mut seen = HashSet::new();
    let rec = ImageRecord {
        manifest: manifest_digest.clone(),
        config: manifest.config.digest.clone(),
        names: names
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .collect(),
        platform,
        layers: metas.iter().map(|m| m.chain_id.clone()).collect(),
        size: manifest.layers.iter().map(|l| l.size.max(0) as u64).sum(),
        unpacked_size: metas.iter().map(|m| m.size).sum(),
        created: cfg.created.clone(),
        added: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    store.update_index(|idx| {
        idx.add(rec.clone());
        Ok(())
    })?;
    Ok(rec)
}
