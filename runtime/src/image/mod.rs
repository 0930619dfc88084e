//! The image side of amphi: references, the content store, registries,
//! archives, and safe layer unpacking.

pub mod digest;
pub mod gc;
pub mod import;
pub mod index;
pub mod layers;
pub mod load;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod scan;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use index::ImageRecord;
pub use reference::Reference;
pub use store::{Access, Store};

/// Everything that can go wrong on the image side.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Layer(#[from] layers::LayerError),
    #[error(transparent)]
    Lookup(#[from] index::LookupError),
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    #[error("{path}: {reason}")]
    Archive { path: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl From<crate::sys::io::PathIoError> for ImageError {
    fn from(e: crate::sys::io::PathIoError) -> Self {
        ImageError::Store(e.into())
    }
}

impl From<unpack::UnpackError> for ImageError {
    fn from(e: unpack::UnpackError) -> Self {
        ImageError::Layer(layers::LayerError::Unpack(e))
    }
}
