//! An I/O error with the path it happened at, for every layer's error type.

use std::path::{Path, PathBuf};

/// An I/O error and the path it happened at: `{path}: {error}`. The error
/// enums that name a path take it with `From` (`.at(path)?`).
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct PathIoError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Adds the path to an io::Error.
pub trait IoAt<T> {
    fn at(self, path: &Path) -> Result<T, PathIoError>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, PathIoError> {
        self.map_err(|error| PathIoError {
            path: path.to_path_buf(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_path() {
        let e = std::fs::read("/nonexistent/amphi-io-at")
            .at(Path::new("/nonexistent/amphi-io-at"))
            .unwrap_err();
        assert_eq!(e.error.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            format!("/nonexistent/amphi-io-at: {}", e.error)
        );
    }
}
