//! Garbage collection: drop blobs and unpacked layers no image refers to,
//! and whatever killed processes left half-done.

use super::digest::Digest;
use super::manifest::{parse_top_level, TopLevel};
use super::store::{remove_path, Store, StoreError};
use crate::sys::io::IoAt;
use std::collections::HashSet;
use std::fs;

/// What the images in the index keep alive.
#[derive(Default)]
pub struct Referenced {
    pub blobs: HashSet<Digest>,
    pub layers: HashSet<Digest>,
    /// Top-layer chain IDs: what the guest rootfs cache (`vm/`) is keyed by.
    pub tops: HashSet<Digest>,
}

/// What a gc removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub images_removed: usize,
    /// Guest rootfs artefacts (`vm/`) of images that are gone (counted by
    /// `guestfs::gc`).
    pub vm_removed: usize,
    pub bytes_freed: u64,
}

impl Store {
    /// The blobs and layers referenced by indexed images.
    pub fn referenced(&self) -> Result<Referenced, StoreError> {
        let mut r = Referenced::default();
        for img in self.index()?.images {
            r.blobs.insert(img.manifest.clone());
            r.blobs.insert(img.config.clone());
            r.layers.extend(img.layers.iter().cloned());
            r.tops.extend(img.layers.last().cloned());
            if let Ok(bytes) = self.read_blob(&img.manifest) {
                if let Ok(TopLevel::Manifest(m)) = parse_top_level(&bytes, None, &img.manifest) {
                    r.blobs.extend(m.layers.into_iter().map(|l| l.digest));
                }
            }
        }
        Ok(r)
    }

    /// The store's part of `amphi gc`: removes unreferenced blobs and
    /// layers, dangling (nameless) images, and leftovers, and returns what
    /// the images left keep alive, for the caches above the store that are
    /// keyed by it (`guestfs::gc` composes the two; call that). Needs a store
    /// opened with [`super::Access::Exclusive`].
    pub fn gc_store(&self) -> Result<(GcReport, Referenced), StoreError> {
        let mut report = GcReport::default();
        self.update_index(|idx| {
            let before = idx.images.len();
            idx.images.retain(|i| !i.names.is_empty());
            report.images_removed = before - idx.images.len();
            Ok(())
        })?;
        let keep = self.referenced()?;
        // The image scans of manifests no image has any more.
        let manifests: Vec<_> = self
            .index()?
            .images
            .into_iter()
            .map(|i| i.manifest)
            .collect();
        self.prune_scans(&manifests);
        let blobs = self.root().join("blobs/sha256");
        for e in fs::read_dir(&blobs).at(&blobs)? {
            let e = e.at(&blobs)?;
            let name = e.file_name();
            let keep_it = Digest::parse(&format!("sha256:{}", name.to_string_lossy()))
                .map(|d| keep.blobs.contains(&d))
                .unwrap_or(false);
            if !keep_it {
                report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                remove_path(&e.path())?;
                report.blobs_removed += 1;
            }
        }
        let layers = self.root().join("layers/sha256");
        for e in fs::read_dir(&layers).at(&layers)? {
            let e = e.at(&layers)?;
            let name = e.file_name();
            let d = Digest::parse(&format!("sha256:{}", name.to_string_lossy())).ok();
            let complete = d.as_ref().and_then(|d| self.layer_meta(d));
            let keep_it = match (&d, &complete) {
                (Some(d), Some(_)) => keep.layers.contains(d),
                _ => false,
            };
            if !keep_it {
                report.bytes_freed += complete.map(|m| m.size).unwrap_or(0);
                remove_path(&e.path())?;
                report.layers_removed += 1;
            }
        }
        let locks = self.root().join("locks");
        if let Ok(rd) = fs::read_dir(&locks) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok((report, keep))
    }
}
