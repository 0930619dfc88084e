//! Loading and checking a bundle's `config.json`. Errors name the JSON path
//! of the bad field.

use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};

/// The OCI runtime spec versions amphi implements.
pub const SUPPORTED_MAJOR: &str = "1.";

/// A bundle's config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not valid JSON: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("{path}: invalid config at `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

fn invalid(path: &Path, field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Reads `config.json` from `bundle` and checks what amphi relies on.
pub fn load(bundle: &Path) -> Result<Spec, ConfigError> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|error| ConfigError::Read {
        path: path.clone(),
        error,
    })?;
    parse(&data, &path)
}

/// Annotations amphi sets on the specs it builds itself (`amphi run`):
/// they tell the engine which host directories make the rootfs. From
/// anyone else (a bundle's author, an image's annotations that a client
/// copies into the spec, a Kubernetes pod) they would mount arbitrary host
/// directories as the container's root, so a bundle carrying one is
/// refused.
pub const INTERNAL_ANNOTATIONS: &[&str] = &[
    super::rootfs::OVERLAY_LOWER,
    super::rootfs::OVERLAY_UPPER,
    super::rootfs::OVERLAY_WORK,
];

/// [`load`] for a bundle given by a client (`create`, `run --bundle`):
/// also refuses amphi's internal annotations.
pub fn load_bundle(bundle: &Path) -> Result<Spec, ConfigError> {
    let spec = load(bundle)?;
    let path = bundle.join("config.json");
    if let Some(ann) = spec.annotations() {
        for key in INTERNAL_ANNOTATIONS {
            if ann.contains_key(*key) {
                return Err(invalid(
                    &path,
                    &format!("annotations.{key}"),
                    "this annotation is amphi's own (for the containers `amphi run` prepares) and is refused in a bundle",
                ));
            }
        }
    }
    Ok(spec)
}

/// Parses and checks a config; `path` is only used in messages.
pub fn parse(data: &[u8], path: &Path) -> Result<Spec, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        // A syntax error has no field to name (its path is `?`): the line
        // and column say where.
        if matches!(
            e.inner().classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        ) {
            return ConfigError::Syntax {
                path: path.to_path_buf(),
                reason: e.into_inner().to_string(),
            };
        }
        let field = e.path().to_string();
        invalid(
            path,
            if field == "." { "(document)" } else { &field },
            e.into_inner().to_string(),
        )
    })?;
    check(&spec, path)?;
    Ok(spec)
}

fn check(spec: &Spec, path: &Path) -> Result<(), ConfigError> {
    if !spec.version().starts_with(SUPPORTED_MAJOR) {
        return Err(invalid(
            path,
            "ociVersion",
            format!(
                "unsupported version {:?} (amphi implements 1.x)",
                spec.version()
            ),
        ));
    }
    let Some(root) = spec.root() else {
        return Err(invalid(path, "root", "missing"));
    };
    if root.path().as_os_str().is_empty() {
        return Err(invalid(path, "root.path", "empty"));
    }
    let Some(process) = spec.process() else {
        return Err(invalid(
            path,
            "process",
            "missing (amphi needs a process to run)",
        ));
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid(path, "process.args", "empty: nothing to run"));
    }
    let args = process.args().as_deref().unwrap_or_default();
    if let Err(e) = crate::sys::cstr::check_args(args) {
        return Err(invalid(
            path,
            &format!("process.args[{}]", e.index()),
            e.to_string(),
        ));
    }
    let env = process.env().as_deref().unwrap_or_default();
    if let Err(e) = crate::sys::cstr::check_env(env) {
        return Err(invalid(
            path,
            &format!("process.env[{}]", e.index()),
            e.to_string(),
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            path,
            "process.cwd",
            format!("{:?} is not an absolute path", process.cwd()),
        ));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                path,
                &format!("mounts[{i}].destination"),
                format!("{:?} is not an absolute path", m.destination()),
            ));
        }
    }
    if let Some(linux) = spec.linux() {
        if let Some(p) = linux.personality() {
            if let Err(e) = super::setup::personality_value(p) {
                return Err(invalid(path, &e.field(), e.reason()));
            }
        }
        // Masking and read-only paths are mounts: without a mount namespace
        // of its own the container could not have them, and running it
        // without them would quietly give it what the spec hides.
        let has_mount_ns = linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Mount);
        for (field, paths) in [
            ("linux.maskedPaths", linux.masked_paths()),
            ("linux.readonlyPaths", linux.readonly_paths()),
        ] {
            if !has_mount_ns && paths.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(invalid(
                    path,
                    field,
                    "needs a mount namespace (linux.namespaces has no \"mount\"): the paths cannot be hidden without one",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if !seen.insert(ns.typ()) {
                return Err(invalid(
                    path,
                    &format!("linux.namespaces[{i}].type"),
                    format!("namespace {} listed twice", ns.typ()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn parse_v(v: &serde_json::Value) -> Result<Spec, ConfigError> {
        parse(&serde_json::to_vec(v).unwrap(), Path::new("config.json"))
    }

    #[test]
    fn accepts_minimal_config() {
        parse_v(&base()).unwrap();
    }

    #[test]
    fn masked_or_readonly_paths_need_a_mount_namespace() {
        for field in ["maskedPaths", "readonlyPaths"] {
            let mut v = base();
            v["linux"][field] = serde_json::json!(["/proc/kcore"]);
            parse_v(&v).unwrap();
            v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
            let e = parse_v(&v).unwrap_err().to_string();
            assert!(
                e.contains(&format!("linux.{field}")) && e.contains("mount namespace"),
                "{e}"
            );
            v["linux"][field] = serde_json::json!([]);
            parse_v(&v).unwrap();
        }
    }

    #[test]
    fn names_the_bad_field() {
        let mut v = base();
        v["linux"]["namespaces"][1]["type"] = "bogus".into();
        let e = parse_v(&v).unwrap_err().to_string();
        assert!(e.contains("linux.namespaces[1].type"), "{e}");

        let mut v = base();
        v["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_CHOWN", "CAP_NOPE"]});
        let e = parse_v(&v).unwrap_err().to_string();
        assert!(e.contains("process.capabilities.bounding"), "{e}");
        assert!(e.contains("CAP_NOPE"), "{e}");

        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert!(parse_v(&v)
            .unwrap_err()
            .to_string()
            .contains("process.args"));

        let mut v = base();
        v["process"]["args"] = serde_json::json!(["sh", "-c", "a\0b"]);
        let e = parse_v(&v).unwrap_err().to_string();
        assert_eq!(
            e,
            r#"config.json: invalid config at `process.args[2]`: process argument 2 ("a\0b") contains a NUL byte"#
        );

        let mut v = base();
        v["process"]["env"] = serde_json::json!(["PATH=/bin", "KEY=x\0y"]);
        let e = parse_v(&v).unwrap_err().to_string();
        assert_eq!(
            e,
            r#"config.json: invalid config at `process.env[1]`: environment variable "KEY" (entry 1) contains a NUL byte"#
        );

        let mut v = base();
        v["linux"]["personality"] =
            serde_json::json!({"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE", "NOPE"]});
        let e = parse_v(&v).unwrap_err().to_string();
        assert!(
            e.contains("`linux.personality.flags[1]`: unknown flag \"NOPE\""),
            "{e}"
        );
        v["linux"]["personality"]["flags"] = serde_json::json!(["ADDR_NO_RANDOMIZE"]);
        let spec = parse_v(&v).unwrap();
        let p = spec
            .linux()
            .as_ref()
            .unwrap()
            .personality()
            .as_ref()
            .unwrap();
        assert_eq!(
            super::super::setup::personality_value(p).unwrap(),
            0x0040008
        );

        let mut v = base();
        v["ociVersion"] = "2.0.0".into();
        assert!(parse_v(&v).unwrap_err().to_string().contains("ociVersion"));

        let e = parse(b"{not json", Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json: not valid JSON"), "{e}");
        assert!(e.contains("line 1 column 2"), "{e}");
        let e = parse(b"{\"ociVersion\": \"1.0.2\",", Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON: EOF"), "{e}");
    }
}
