//! The image index (`images.json`): which names point at which manifest.

use super::digest::Digest;
use super::reference::Reference;
use super::store::{Store, StoreError};
use crate::sys::io::IoAt;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;

/// One image in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Manifest digest: the image's identity in the store.
    pub manifest: Digest,
    /// Config digest: the image ID, as docker shows it.
    pub config: Digest,
    /// Names (`registry/repo:tag` or `registry/repo@digest`).
    pub names: Vec<String>,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Chain IDs of the unpacked layers, bottom first.
    pub layers: Vec<Digest>,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    /// Uncompressed size of all layers.
    pub unpacked_size: u64,
    /// The config's `created` time.
    #[serde(default)]
    pub created: Option<String>,
    /// When it entered this store (seconds since the epoch).
    pub added: u64,
}

/// The whole index.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Index {
    pub images: Vec<ImageRecord>,
}

/// An image argument did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("image {0:?} not found in the store (see `amphi images`; `amphi pull` or `amphi load` it first)")]
    NotFound(String),
    #[error("image ID prefix {0:?} is ambiguous: it matches {1}")]
    Ambiguous(String, String),
}

impl Index {
    /// Finds an image by name (normalised like a reference), full or
    /// prefix image ID (at least 4 hex digits), or manifest digest.
    pub fn find(&self, arg: &str) -> Result<&ImageRecord, LookupError> {
        let not_found = || LookupError::NotFound(arg.to_string());
        if let Ok(r) = Reference::parse(arg) {
            let name = r.to_string();
            if let Some(i) = self.images.iter().find(|i| i.names.contains(&name)) {
                return Ok(i);
            }
            if let (Some(d), None) = (&r.digest, &r.tag) {
                if let Some(i) = self.images.iter().find(|i| {
                    i.manifest == *d && i.names.iter().any(|n| n.starts_with(&r.repo_name()))
                }) {
                    return Ok(i);
                }
            }
        }
        let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = self
                .images
                .iter()
                .filter(|i| i.config.hex().starts_with(hex) || i.manifest.hex().starts_with(hex))
                .collect();
            return match hits.as_slice() {
                [] => Err(not_found()),
                [one] => Ok(one),
                many => {
                    let first = many[0].config.clone();
                    if many.iter().all(|i| i.config == first) {
                        Ok(many[0])
                    } else {
                        Err(LookupError::Ambiguous(
                            arg.to_string(),
                            many.iter()
                                .map(|i| i.config.short().to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                        ))
                    }
                }
            };
        }
        Err(not_found())
    }

    /// Adds or updates `rec`; each name points at one image only.
    pub fn add(&mut self, rec: ImageRecord) {
        for other in &mut self.images {
            other.names.retain(|n| !rec.names.contains(n));
        }
        if let Some(existing) = self.images.iter_mut().find(|i| i.manifest == rec.manifest) {
            for n in rec.names {
                if !existing.names.contains(&n) {
                    existing.names.push(n);
                }
            }
        } else {
            self.images.push(rec);
        }
        // Images that lost all their names to newer pulls become dangling:
        // docker shows them as <none>; we keep them until rmi or gc.
    }
}

impl Store {
    fn index_path(&self) -> std::path::PathBuf {
        self.root().join("images.json")
    }

    /// Reads the index.
    pub fn index(&self) -> Result<Index, StoreError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::CorruptIndex {
                path: p.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e).at(&p).map_err(Into::into),
        }
    }

    /// Read-modify-write of the index under its lock.
    pub fn update_index<T>(
        &self,
        f: impl FnOnce(&mut Index) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lp = self.root().join("index.lock");
        let lock: File = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .at(&lp)?;
        rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockExclusive)
            .map_err(io::Error::from)
            .at(&lp)?;
        let mut idx = self.index()?;
        let out = f(&mut idx)?;
        let data = serde_json::to_vec_pretty(&idx).expect("index serialises");
        self.write_atomic(&self.index_path(), &data)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tag: &str, cfg: &str) -> ImageRecord {
        ImageRecord {
            manifest: Digest::of(format!("m{cfg}").as_bytes()),
            config: Digest::of(cfg.as_bytes()),
            names: vec![Reference::parse(tag).unwrap().to_string()],
            platform: "linux/amd64".into(),
            layers: vec![],
            size: 0,
            unpacked_size: 0,
            created: None,
            added: 0,
        }
    }

    #[test]
    fn finds_by_name_and_id() {
        let mut idx = Index::default();
        idx.add(rec("localhost/demo/busybox:latest", "a"));
        idx.add(rec("busybox", "b"));
        assert_eq!(
            idx.find("localhost/demo/busybox").unwrap().config,
            Digest::of(b"a")
        );
        assert_eq!(
            idx.find("docker.io/library/busybox:latest").unwrap().config,
            Digest::of(b"b")
        );
        let id = Digest::of(b"b");
        assert_eq!(idx.find(&id.hex()[..8]).unwrap().config, id);
        assert!(matches!(idx.find("nothere"), Err(LookupError::NotFound(_))));
    }

    #[test]
    fn a_name_moves_to_the_newest_image() {
        let mut idx = Index::default();
        idx.add(rec("app:1", "old"));
        idx.add(rec("app:1", "new"));
        assert_eq!(idx.find("app:1").unwrap().config, Digest::of(b"new"));
        assert!(idx.images[0].names.is_empty());
    }
}
