//! What an image asks of the kernel that runs it: the OCI platform, and
//! amphi's annotations (on the manifest) or labels (in the image config).
//!
//! | key | value |
//! |---|---|
//! | `io.amphi.kernel.version` | a [`VersionConstraint`]: `>=6.1, <6.2` |
//! | `io.amphi.kernel.config` | [`ConfigRequirement`]s: `CONFIG_USER_NS=y,CONFIG_NF_TABLES` |
//! | `io.amphi.isolation` | `vm` or `container` (`auto`: no preference) |
//! | `io.amphi.kernel` | a preferred catalog kernel: ID, version or series |
//!
//! A manifest annotation wins over a label of the same key.

use super::constraint::VersionConstraint;
use super::{DispatchError, IsolationChoice};
use crate::image::index::ImageRecord;
use crate::image::manifest::ImageConfig;
use crate::image::Store;
use crate::kernel::config::{is_option_name, KernelConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub const KEY_KERNEL_VERSION: &str = "io.amphi.kernel.version";
pub const KEY_KERNEL_CONFIG: &str = "io.amphi.kernel.config";
pub const KEY_ISOLATION: &str = "io.amphi.isolation";
pub const KEY_KERNEL: &str = "io.amphi.kernel";

/// What a required option must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum ConfigWant {
    /// Bare name: `y` or `m` (in a guest kernel only `y` counts: the guest
    /// has no module tree).
    Enabled,
    /// `=y`.
    Builtin,
    /// `=m`.
    Module,
    /// `=n`: not set (or explicitly `n`).
    NotSet,
    /// `=value`: exactly this value (quotes around it are removed).
    Value(String),
}

/// One required kernel config option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRequirement {
    /// `CONFIG_NAME`.
    pub name: String,
    pub want: ConfigWant,
}

impl ConfigRequirement {
    /// Parses the comma-separated list `CONFIG_USER_NS=y,CONFIG_NF_TABLES`.
    /// Names without the `CONFIG_` prefix get it (`USER_NS` means
    /// `CONFIG_USER_NS`); names must be upper-case letters, digits and `_`.
    /// Empty items (a trailing comma) are ignored; an empty list is an error.
    pub fn parse_list(s: &str) -> Result<Vec<ConfigRequirement>, String> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let name = if name.starts_with("CONFIG_") {
                name.to_string()
            } else {
                format!("CONFIG_{name}")
            };
            if !is_option_name(&name) {
                return Err(format!(
                    "{item:?}: option names are CONFIG_ followed by upper-case letters, digits and _"
                ));
            }
            let want = match value {
                None => ConfigWant::Enabled,
                Some("y") => ConfigWant::Builtin,
                Some("m") => ConfigWant::Module,
                Some("n") => ConfigWant::NotSet,
                Some("") => return Err(format!("{item:?}: no value after '='")),
                Some(v) => {
                    let v = v
                        .strip_prefix('"')
                        .and_then(|x| x.strip_suffix('"'))
                        .unwrap_or(v);
                    ConfigWant::Value(v.to_string())
                }
            };
            out.push(ConfigRequirement { name, want });
        }
        if out.is_empty() {
            return Err(
                "no options listed (expected e.g. \"CONFIG_USER_NS=y,CONFIG_NF_TABLES\")".into(),
            );
        }
        Ok(out)
    }

    /// Whether `config` meets it. `guest`: judging a guest kernel, where a
    /// bare name needs `y` (modules cannot be loaded in the guest).
    pub fn met_by(&self, config: &KernelConfig, guest: bool) -> bool {
        let have = config.get(&self.name).map(String::as_str);
        match &self.want {
            ConfigWant::Enabled if guest => have == Some("y"),
            ConfigWant::Enabled => matches!(have, Some("y" | "m")),
            ConfigWant::Builtin => have == Some("y"),
            ConfigWant::Module => have == Some("m"),
            ConfigWant::NotSet => matches!(have, None | Some("n")),
            ConfigWant::Value(v) => have == Some(v.as_str()),
        }
    }

    /// How `config` has the option: "CONFIG_X=m" or "CONFIG_X not set".
    pub fn describe_have(&self, config: &KernelConfig) -> String {
        match config.get(&self.name) {
            Some(v) => format!("{}={v}", self.name),
            None => format!("{} not set", self.name),
        }
    }
}

impl fmt::Display for ConfigRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.want {
            ConfigWant::Enabled => write!(f, "{}", self.name),
            ConfigWant::Builtin => write!(f, "{}=y", self.name),
            ConfigWant::Module => write!(f, "{}=m", self.name),
            ConfigWant::NotSet => write!(f, "{}=n", self.name),
            ConfigWant::Value(v) => write!(f, "{}={v}", self.name),
        }
    }
}

/// Where an amphi key's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// An annotation on the image manifest.
    Annotation,
    /// A label in the image config.
    Label,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Annotation => "manifest annotation",
            KeySource::Label => "image label",
        })
    }
}

/// Everything an image asks of the kernel and isolation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// OCI `os` ("linux"); "" when the config names none.
    pub os: String,
    /// OCI `architecture` ("amd64"); "" when the config names none.
    pub architecture: String,
    pub variant: Option<String>,
    pub kernel_version: Option<VersionConstraint>,
    pub kernel_config: Vec<ConfigRequirement>,
    /// `io.amphi.isolation` (None when absent or `auto`).
    pub isolation: Option<IsolationChoice>,
    /// `io.amphi.kernel`.
    pub kernel: Option<String>,
    /// For each amphi key present, whether it came from an annotation or a label.
    pub sources: BTreeMap<String, KeySource>,
}

impl Requirements {
    /// From the image config and the manifest's annotations (which win over
    /// the config's labels). Malformed values are errors naming key and value.
    pub fn from_parts(
        config: &ImageConfig,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Requirements, DispatchError> {
        let labels = config.config.as_ref().and_then(|c| c.labels.as_ref());
        let mut sources = BTreeMap::new();
        let mut get = |key: &str| -> Option<String> {
            if let Some(v) = annotations.get(key) {
                sources.insert(key.to_string(), KeySource::Annotation);
                return Some(v.clone());
            }
            let v = labels?.get(key)?;
            sources.insert(key.to_string(), KeySource::Label);
            Some(v.clone())
        };
        let version = get(KEY_KERNEL_VERSION);
        let kconfig = get(KEY_KERNEL_CONFIG);
        let isolation = get(KEY_ISOLATION);
        let kernel = get(KEY_KERNEL);
        let bad = |key: &str, value: &str, reason: String| DispatchError::BadAnnotation {
            key: key.to_string(),
            value: value.to_string(),
            origin: sources.get(key).copied().unwrap_or(KeySource::Annotation),
            reason,
        };
        let kernel_version = match &version {
            Some(v) => {
                Some(VersionConstraint::parse(v).map_err(|e| bad(KEY_KERNEL_VERSION, v, e))?)
            }
            None => None,
        };
        let kernel_config = match &kconfig {
            Some(v) => {
                ConfigRequirement::parse_list(v).map_err(|e| bad(KEY_KERNEL_CONFIG, v, e))?
            }
            None => Vec::new(),
        };
        let isolation = match isolation.as_deref().map(str::trim) {
            None | Some("auto") => None,
            Some("vm") => Some(IsolationChoice::Vm),
            Some("container") => Some(IsolationChoice::Container),
            Some(other) => {
                return Err(bad(
                    KEY_ISOLATION,
                    other,
                    "expected \"vm\" or \"container\"".into(),
                ))
            }
        };
        let kernel = match kernel.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err(bad(KEY_KERNEL, "", "empty kernel name".into())),
            Some(k) if k.chars().any(|c| c.is_whitespace() || c == '/') => {
                return Err(bad(
                    KEY_KERNEL,
                    k,
                    "expected a kernel ID, version or series (e.g. 6.12)".into(),
                ))
            }
            Some(k) => Some(k.to_string()),
        };
        Ok(Requirements {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
            kernel_version,
            kernel_config,
            isolation,
            kernel,
            sources,
        })
    }

    /// "manifest annotation io.amphi.kernel.version" (or "image label ...").
    pub fn origin(&self, key: &str) -> String {
        match self.sources.get(key) {
            Some(s) => format!("{s} {key}"),
            None => key.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct AnnotatedDoc {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The annotations of the image's manifest (empty when it has none).
pub fn manifest_annotations(
    store: &Store,
    rec: &ImageRecord,
) -> Result<BTreeMap<String, String>, DispatchError> {
    let data = store
        .read_blob(&rec.manifest)
        .map_err(|e| DispatchError::Store {
            digest: rec.manifest.to_string(),
            error: e,
        })?;
    let doc: AnnotatedDoc =
        serde_json::from_slice(&data).map_err(|e| DispatchError::BadManifest {
            digest: rec.manifest.to_string(),
            reason: e.to_string(),
        })?;
    Ok(doc.annotations.unwrap_or_default())
}

/// The requirements of a stored image: its config plus its manifest's annotations.
pub fn image_requirements(
    store: &Store,
    rec: &ImageRecord,
    config: &ImageConfig,
) -> Result<Requirements, DispatchError> {
    Requirements::from_parts(config, &manifest_annotations(store, rec)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::RunConfig;

    fn cfg(labels: &[(&str, &str)]) -> ImageConfig {
        ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: Some(RunConfig {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn config_requirement_list() {
        let r = ConfigRequirement::parse_list(
            "CONFIG_USER_NS=y, CONFIG_NF_TABLES,USER_NS=m,CONFIG_X=n,CONFIG_HZ=250,CONFIG_S=\"a b\",",
        )
        .unwrap();
        let shown: Vec<String> = r.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            shown,
            [
                "CONFIG_USER_NS=y",
                "CONFIG_NF_TABLES",
                "CONFIG_USER_NS=m",
                "CONFIG_X=n",
                "CONFIG_HZ=250",
                "CONFIG_S=a b"
            ]
        );
        for bad in [
            "",
            " , ",
            "config_user_ns",
            "CONFIG_",
            "CONFIG_A=",
            "CONFIG-A",
            "A B",
        ] {
            assert!(
                ConfigRequirement::parse_list(bad).is_err(),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn config_requirement_checks() {
        let c: KernelConfig = map(&[("CONFIG_A", "y"), ("CONFIG_B", "m"), ("CONFIG_HZ", "250")])
            .into_iter()
            .collect();
        let check =
            |s: &str, guest: bool| ConfigRequirement::parse_list(s).unwrap()[0].met_by(&c, guest);
        let cases = [
            ("CONFIG_A", false, true),
            ("CONFIG_B", false, true),
            ("CONFIG_B", true, false),
            ("CONFIG_A", true, true),
            ("CONFIG_C", false, false),
            ("CONFIG_A=y", false, true),
            ("CONFIG_B=y", false, false),
            ("CONFIG_B=m", true, true),
            ("CONFIG_C=n", false, true),
            ("CONFIG_A=n", false, false),
            ("CONFIG_HZ=250", false, true),
            ("CONFIG_HZ=1000", false, false),
        ];
        for (s, guest, want) in cases {
            assert_eq!(check(s, guest), want, "{s} guest={guest}");
        }
    }

    #[test]
    fn requirements_from_annotations_and_labels() {
        let config = cfg(&[
            (KEY_KERNEL_VERSION, ">=5.15"),
            (KEY_ISOLATION, "container"),
            (KEY_KERNEL_CONFIG, "CONFIG_USER_NS"),
        ]);
        let r = Requirements::from_parts(
            &config,
            &map(&[(KEY_KERNEL_VERSION, "<6.13"), (KEY_KERNEL, "6.12")]),
        )
        .unwrap();
        assert_eq!(r.kernel_version.as_ref().unwrap().to_string(), "<6.13");
        assert_eq!(r.isolation, Some(IsolationChoice::Container));
        assert_eq!(r.kernel.as_deref(), Some("6.12"));
        assert_eq!(r.kernel_config.len(), 1);
        assert_eq!(r.sources[KEY_KERNEL_VERSION], KeySource::Annotation);
        assert_eq!(r.sources[KEY_ISOLATION], KeySource::Label);
        assert_eq!(
            r.origin(KEY_KERNEL_VERSION),
            "manifest annotation io.amphi.kernel.version"
        );
        assert_eq!((r.os.as_str(), r.architecture.as_str()), ("linux", "amd64"));

        let none = Requirements::from_parts(&ImageConfig::default(), &BTreeMap::new()).unwrap();
        assert!(none.kernel_version.is_none() && none.kernel_config.is_empty());
        assert!(none.isolation.is_none() && none.sources.is_empty());
        let auto = Requirements::from_parts(&cfg(&[(KEY_ISOLATION, "auto")]), &BTreeMap::new());
        assert_eq!(auto.unwrap().isolation, None);
    }

    #[test]
    fn malformed_values_name_key_and_value() {
        let cases = [
            (KEY_KERNEL_VERSION, "~6.1"),
            (KEY_KERNEL_CONFIG, "lower_case"),
            (KEY_ISOLATION, "sandbox"),
            (KEY_KERNEL, "a b"),
        ];
        for (key, value) in cases {
            let e = Requirements::from_parts(&cfg(&[]), &map(&[(key, value)])).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains(value), "{msg}");
            let e = Requirements::from_parts(&cfg(&[(key, value)]), &BTreeMap::new()).unwrap_err();
            assert!(e.to_string().contains("image label"), "{e}");
        }
    }

    #[test]
    fn reads_annotations_from_the_store() {
        use crate::image::{Access, Digest};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Access::Write).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::image::manifest::OCI_MANIFEST,
            "config": {"mediaType": crate::image::manifest::OCI_CONFIG,
                       "digest": Digest::of(b"c").to_string(), "size": 1},
            "layers": [],
            "annotations": {KEY_KERNEL_VERSION: ">=6.1, <6.2"}
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = Digest::of(&bytes);
        std::fs::write(store.blob_path(&digest), &bytes).unwrap();
        let rec = ImageRecord {
            manifest: digest,
            config: Digest::of(b"c"),
            names: vec!["localhost/demo/x:latest".into()],
            platform: "linux/amd64".into(),
            layers: vec![],
            size: 0,
            unpacked_size: 0,
            created: None,
            added: 0,
        };
        let r = image_requirements(&store, &rec, &cfg(&[])).unwrap();
        assert_eq!(r.kernel_version.unwrap().to_string(), ">=6.1, <6.2");
        assert_eq!(r.sources[KEY_KERNEL_VERSION], KeySource::Annotation);
        let missing = ImageRecord {
            manifest: Digest::of(b"nope"),
            ..rec
        };
        assert!(image_requirements(&store, &missing, &cfg(&[])).is_err());
    }
}
