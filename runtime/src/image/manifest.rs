//! The JSON documents of an image: indexes, manifests, descriptors and the
//! parts of the image config amphi reads. OCI and Docker schema2 media types
//! are both accepted; everything else is refused by name.

use super::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Manifest media types amphi accepts from registries and archives.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Errors about the content of image documents.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("unknown media type {media_type:?} for {what} {digest}")]
    UnknownMediaType {
        media_type: String,
        what: &'static str,
        digest: String,
    },
    #[error("malformed {what} {digest}: {error}")]
    Malformed {
        what: &'static str,
        digest: String,
        error: serde_json::Error,
    },
    #[error("no manifest for platform {wanted} in image index {digest} (available: {available})")]
    NoPlatform {
        wanted: String,
        digest: String,
        available: String,
    },
    #[error("image config {digest}: {reason}")]
    BadConfig { digest: String, reason: String },
}

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An OS/architecture pair, as in image indexes and `--platform`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on (`linux/amd64` on x86_64).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"
            )),
        }
    }

    fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Either kind of top-level document a tag can point at.
pub enum TopLevel {
    Index(Index),
    Manifest(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    schema_version: Option<i64>,
}

/// Parses a manifest or index. `declared` is the media type announced by the
/// registry or descriptor, if any; the document's own `mediaType` wins.
pub fn parse_top_level(
    bytes: &[u8],
    declared: Option<&str>,
    digest: &Digest,
) -> Result<TopLevel, ManifestError> {
    let malformed = |error| ManifestError::Malformed {
        what: "manifest",
        digest: digest.to_string(),
        error,
    };
    let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| declared.map(str::to_string))
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        });
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Ok(TopLevel::Index(
            serde_json::from_slice(bytes).map_err(malformed)?,
        )),
        OCI_MANIFEST | DOCKER_MANIFEST => {
            if let Some(version) = probe.schema_version.filter(|v| *v != 2) {
                return Err(ManifestError::UnknownMediaType {
                    media_type: format!("schemaVersion {version}"),
                    what: "manifest",
                    digest: digest.to_string(),
                });
            }
            Ok(TopLevel::Manifest(
                serde_json::from_slice(bytes).map_err(malformed)?,
            ))
        }
        other => Err(ManifestError::UnknownMediaType {
            media_type: other.to_string(),
            what: "manifest",
            digest: digest.to_string(),
        }),
    }
}

impl Index {
    /// Picks the manifest for `wanted`. Attestation manifests
    /// (`unknown/unknown`) never match.
    pub fn select(&self, wanted: &Platform, digest: &Digest) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
            .find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
            .ok_or_else(|| ManifestError::NoPlatform {
                wanted: wanted.to_string(),
                digest: digest.to_string(),
                available: {
                    let v: Vec<String> = self
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect();
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.join(", ")
                    }
                },
            })
    }
}

impl Manifest {
    /// Checks the media types of the config and layers.
    pub fn validate(&self, digest: &Digest) -> Result<(), ManifestError> {
        match self.config.media_type.as_str() {
            OCI_CONFIG | DOCKER_CONFIG => {}
            other => {
                return Err(ManifestError::UnknownMediaType {
                    media_type: other.to_string(),
                    what: "config of manifest",
                    digest: digest.to_string(),
                })
            }
        }
        for l in &self.layers {
            layer_compression(&l.media_type, &l.digest)?;
        }
        Ok(())
    }
}

/// The compression of a layer, from its media type.
pub fn layer_compression(media_type: &str, digest: &Digest) -> Result<Compression, ManifestError> {
    Ok(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        other => {
            return Err(ManifestError::UnknownMediaType {
                media_type: other.to_string(),
                what: "layer",
                digest: digest.to_string(),
            })
        }
    })
}

/// The parts of an image config amphi uses. The raw JSON is kept in the store
/// and shown whole by `amphi inspect`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// The `config` section: how to run the image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// The layer diff IDs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parses and checks a config against its manifest.
    pub fn parse(bytes: &[u8], digest: &Digest, layers: usize) -> Result<Self, ManifestError> {
        let cfg: ImageConfig =
            serde_json::from_slice(bytes).map_err(|error| ManifestError::Malformed {
                what: "image config",
                digest: digest.to_string(),
                error,
            })?;
        if cfg.rootfs.kind != "layers" {
            return Err(ManifestError::BadConfig {
                digest: digest.to_string(),
                reason: format!("rootfs.type is {:?}, expected \"layers\"", cfg.rootfs.kind),
            });
        }
        if cfg.rootfs.diff_ids.len() != layers {
            return Err(ManifestError::BadConfig {
                digest: digest.to_string(),
                reason: format!(
                    "{} diff_ids for {} layers in the manifest",
                    cfg.rootfs.diff_ids.len(),
                    layers
                ),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn selects_platform_and_explains_misses() {
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d("arm").to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": d("amd").to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": d("att").to_string(), "size": 1,
                 "platform": {"os": "unknown", "architecture": "unknown"}}
            ]
        });
        let bytes = serde_json::to_vec(&idx).unwrap();
        let TopLevel::Index(i) = parse_top_level(&bytes, None, &d("i")).unwrap() else {
            panic!("expected an index")
        };
        let host = Platform::parse("linux/amd64").unwrap();
        assert_eq!(i.select(&host, &d("i")).unwrap().digest, d("amd"));
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(i.select(&arm, &d("i")).unwrap().digest, d("arm"));
        let e = i
            .select(&Platform::parse("linux/s390x").unwrap(), &d("i"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux/s390x") && e.contains("linux/arm64/v8"),
            "{e}"
        );
    }

    #[test]
    fn refuses_unknown_media_types() {
        let m = serde_json::json!({"mediaType": "application/x-foo", "config": {}, "layers": []});
        let e = parse_top_level(&serde_json::to_vec(&m).unwrap(), None, &d("m"));
        assert!(matches!(e, Err(ManifestError::UnknownMediaType { .. })));
        assert!(layer_compression("application/x-tar+bz2", &d("l")).is_err());
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd", &d("l")).unwrap(),
            Compression::Zstd
        );
    }

    #[test]
    fn config_must_match_layers() {
        let c = serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d("a").to_string()]}});
        let bytes = serde_json::to_vec(&c).unwrap();
        assert!(ImageConfig::parse(&bytes, &d("c"), 1).is_ok());
        assert!(ImageConfig::parse(&bytes, &d("c"), 2).is_err());
    }
}
