//! The image a run names: from the store, or pulled first when missing.

use super::plan::PlanError;
use crate::image::manifest::ImageConfig;
use crate::image::{Access, ImageRecord, Store};
use std::path::Path;

/// An image as a run names it, found (or pulled) once: the store it is in,
/// its record there and its config. The plan carries it to the backend,
/// which runs exactly this image.
pub struct ResolvedImage {
    /// The store, open for reading (its shared lock held while the image
    /// is in use).
    pub store: Store,
    pub record: ImageRecord,
    pub config: ImageConfig,
}

impl std::fmt::Debug for ResolvedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedImage")
            .field("record", &self.record)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The image of a run: found in the store, or pulled when it is not there
/// (like docker), with its config.
pub fn resolve_image(
    store_root: &Path,
    image: &str,
    notify: fn(&str),
) -> Result<ResolvedImage, PlanError> {
    let store = Store::open(store_root, Access::Read)?;
    let idx = store.index()?;
    let rec = match idx.find(image) {
        Ok(r) => r.clone(),
        // Like docker: an image that is not here yet is pulled first.
        Err(crate::image::index::LookupError::NotFound(_))
            if crate::image::Reference::parse(image).is_ok() =>
        {
            pull_missing(store_root, image, notify)?
        }
        Err(e) => return Err(e.into()),
    };
    let cfg_bytes = store.read_blob(&rec.config)?;
    let config: ImageConfig =
        serde_json::from_slice(&cfg_bytes).map_err(|source| PlanError::ImageConfig {
            digest: rec.config.to_string(),
            source,
        })?;
    Ok(ResolvedImage {
        store,
        record: rec,
        config,
    })
}

fn pull_missing(
    store_root: &Path,
    image: &str,
    notify: fn(&str),
) -> Result<ImageRecord, PlanError> {
    let reference = crate::image::Reference::parse(image)?;
    notify(&format!(
        "Unable to find image {reference} locally, pulling it"
    ));
    let store = Store::open(store_root, Access::Write)?;
    let opts = crate::image::pull::PullOptions {
        platform: crate::image::manifest::Platform::host(),
        insecure: false,
        creds: None,
        progress: crate::image::progress::Progress::new(false),
    };
    crate::image::pull::pull(&store, &reference, &opts).map_err(|source| PlanError::Pull {
        image: image.to_string(),
        source,
    })
}
