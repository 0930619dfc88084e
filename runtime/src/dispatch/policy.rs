//! The site policy: `/etc/amphi/policy.toml` (or `--policy FILE`).
//!
//! ```toml
//! # default isolation when nothing else decides: "auto" (default), "container" or "vm"
//! default_isolation = "auto"
//! # trust rules by registry/repository glob, first match wins
//! [[trust]]
//! match = "registry.internal/*"
//! isolation = "container"     # or "vm" / "auto"
//! # per-image overrides (exact reference or glob), first match wins, win over trust rules
//! [[image]]
//! match = "docker.io/library/alpine:*"
//! isolation = "container"     # optional: without it, trust rules decide isolation
//! kernel = "6.1"              # optional preferred kernel (ID, version or series)
//! ```
//!
//! Patterns are globs (`*` any run of characters, `/` included; `?` one
//! character) matched against the normalised reference
//! (`docker.io/library/alpine:3.19`), and also against its name without
//! tag and digest (`docker.io/library/alpine`), so `match =
//! "docker.io/library/alpine"` covers every tag. A matching rule whose
//! isolation is `auto` decides too: the image's requirements choose.

use super::{DispatchError, IsolationChoice};
use crate::image::Reference;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the policy is read from when no `--policy` is given.
pub const DEFAULT_POLICY_PATH: &str = "/etc/amphi/policy.toml";

/// A trust rule: images whose reference matches get this isolation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRule {
    #[serde(rename = "match")]
    pub pattern: String,
    pub isolation: IsolationChoice,
}

/// A per-image override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRule {
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub isolation: Option<IsolationChoice>,
    /// Preferred guest kernel (ID, version or series).
    #[serde(default)]
    pub kernel: Option<String>,
}

/// The whole policy. `Policy::default()` is what applies without a file:
/// `auto`, no rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default_isolation: IsolationChoice,
    #[serde(default)]
    pub trust: Vec<TrustRule>,
    #[serde(default, rename = "image")]
    pub images: Vec<ImageRule>,
    /// The file it was read from (None: the built-in default).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Policy {
    /// Parses a policy file's text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, DispatchError> {
        let mut p: Policy = toml::from_str(text).map_err(|e| DispatchError::BadPolicy {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            reason: e.message().trim().to_string(),
        })?;
        let bad = |what: String| DispatchError::BadPolicy {
            path: path.to_path_buf(),
            line: None,
            reason: what,
        };
        for (i, r) in p.trust.iter().enumerate() {
            if r.pattern.trim().is_empty() {
                return Err(bad(format!(
                    "[[trust]] rule {}: empty match pattern",
                    i + 1
                )));
            }
        }
        for (i, r) in p.images.iter().enumerate() {
            if r.pattern.trim().is_empty() {
                return Err(bad(format!(
                    "[[image]] rule {}: empty match pattern",
                    i + 1
                )));
            }
            if r.kernel.as_deref().is_some_and(|k| k.trim().is_empty()) {
                return Err(bad(format!("[[image]] rule {}: empty kernel", i + 1)));
            }
        }
        p.source = Some(path.to_path_buf());
        Ok(p)
    }

    /// Loads `path` (which must exist), or without one the default file
    /// ([`DEFAULT_POLICY_PATH`]), whose absence means the default policy.
    pub fn load(path: Option<&Path>) -> Result<Policy, DispatchError> {
        match path {
            Some(p) => Self::load_file(p, true),
            None => Self::load_file(Path::new(DEFAULT_POLICY_PATH), false),
        }
    }

    /// Loads `path`; when it does not exist, an error if `required`, else
    /// the default policy.
    pub fn load_file(path: &Path, required: bool) -> Result<Policy, DispatchError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Policy::default())
            }
            Err(e) => Err(DispatchError::PolicyIo {
                path: path.to_path_buf(),
                error: e,
            }),
        }
    }

    /// The first per-image rule matching `reference` (normalised), with its index.
    pub fn image_rule(&self, reference: &str) -> Option<(usize, &ImageRule)> {
        self.images
            .iter()
            .enumerate()
            .find(|(_, r)| reference_matches(&r.pattern, reference))
    }

    /// The first trust rule matching `reference` (normalised), with its index.
    pub fn trust_rule(&self, reference: &str) -> Option<(usize, &TrustRule)> {
        self.trust
            .iter()
            .enumerate()
            .find(|(_, r)| reference_matches(&r.pattern, reference))
    }

    /// "policy /etc/amphi/policy.toml" or "built-in default policy".
    pub fn describe(&self) -> String {
        match &self.source {
            Some(p) => format!("policy {}", p.display()),
            None => "built-in default policy (no policy file)".to_string(),
        }
    }
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Normalises an image reference the way policy patterns see it:
/// `alpine:3.19` -> `docker.io/library/alpine:3.19`.
pub fn normalize_reference(reference: &str) -> Result<String, DispatchError> {
    Reference::parse(reference)
        .map(|r| r.to_string())
        .map_err(|e| DispatchError::BadReference(e.to_string()))
}

/// Whether `pattern` matches the normalised `reference`, or its name without
/// tag and digest.
pub fn reference_matches(pattern: &str, reference: &str) -> bool {
    if glob_match(pattern, reference) {
        return true;
    }
    let no_digest = reference.split_once('@').map_or(reference, |(n, _)| n);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let name = match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    name != reference && glob_match(pattern, name)
}

/// Glob match: `*` matches any run of characters (including `/`), `?` exactly
/// one character; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last '*' was, and the text position it is tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "anything/at/all:1", true),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("registry.internal/*", "registry.internal/team/app:1", true),
            ("registry.internal/*", "registry.internalx/app:1", false),
            (
                "docker.io/library/alpine:*",
                "docker.io/library/alpine:3.19",
                true,
            ),
            (
                "docker.io/library/alpine:*",
                "docker.io/library/alpine-x:3.19",
                false,
            ),
            (
                "docker.io/library/alpine:3.1?",
                "docker.io/library/alpine:3.19",
                true,
            ),
            (
                "docker.io/library/alpine:3.1?",
                "docker.io/library/alpine:3.1",
                false,
            ),
            ("*/busybox:*", "localhost/demo/busybox:latest", true),
            (
                "127.0.0.1:5000/*",
                "127.0.0.1:5000/demo/busybox:latest",
                true,
            ),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a**c", "ac", true),
            ("*.internal/*", "registry.internal/x:1", true),
            ("exact:1", "exact:1", true),
            ("exact:1", "exact:12", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn references() {
        assert_eq!(
            normalize_reference("alpine:3.19").unwrap(),
            "docker.io/library/alpine:3.19"
        );
        assert_eq!(
            normalize_reference("localhost/demo/busybox").unwrap(),
            "localhost/demo/busybox:latest"
        );
        assert!(normalize_reference("UPPER/case").is_err());
        assert!(reference_matches(
            "docker.io/library/alpine",
            "docker.io/library/alpine:3.19"
        ));
        assert!(reference_matches(
            "127.0.0.1:5000/demo/busybox",
            "127.0.0.1:5000/demo/busybox:latest"
        ));
        assert!(!reference_matches(
            "docker.io/library/alpine",
            "docker.io/library/alpinex:3.19"
        ));
    }

    const EXAMPLE: &str = r#"
# default isolation
default_isolation = "auto"
[[trust]]
match = "registry.internal/*"
isolation = "container"
[[trust]]
match = "*"
isolation = "vm"
[[image]]
match = "docker.io/library/alpine:*"
isolation = "container"
kernel = "6.1"
[[image]]
match = "docker.io/library/debian:*"
kernel = "6.12"
"#;

    #[test]
    fn parses_the_example() {
        let p = Policy::parse(EXAMPLE, Path::new("/p.toml")).unwrap();
        assert_eq!(p.default_isolation, IsolationChoice::Auto);
        assert_eq!(p.trust.len(), 2);
        assert_eq!(p.images.len(), 2);
        assert_eq!(p.images[1].isolation, None);
        let (i, r) = p.image_rule("docker.io/library/alpine:3.19").unwrap();
        assert_eq!((i, r.kernel.as_deref()), (0, Some("6.1")));
        let (i, r) = p.trust_rule("registry.internal/a/b:1").unwrap();
        assert_eq!((i, r.isolation), (0, IsolationChoice::Container));
        let (i, _) = p.trust_rule("quay.io/x/y:1").unwrap();
        assert_eq!(i, 1);
        assert_eq!(p.describe(), "policy /p.toml");
        assert_eq!(Policy::parse("", Path::new("/e")).unwrap().trust, vec![]);
    }

    #[test]
    fn bad_policies_name_file_line_and_reason() {
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("default_isolation = \"auto\"\nbogus = 1\n", Some(2), "bogus"),
            ("default_isolation = \"sometimes\"\n", Some(1), "sometimes"),
            (
                "[[trust]]\nmatch = \"*\"\nisolation = \"vm\"\n[[trust]]\nmatch = \"x\"\nisolation = \"maybe\"\n",
                Some(6),
                "maybe",
            ),
            ("[[trust]]\nmatch = \"*\"\n", Some(1), "isolation"),
            ("[[image]]\nmatch = \"a\"\nkernal = \"6.1\"\n", Some(3), "kernal"),
            ("default_isolation = \n", Some(1), ""),
            ("[[trust]]\nmatch = \"\"\nisolation = \"vm\"\n", None, "empty match"),
        ];
        for (text, line, needle) in cases {
            let e = Policy::parse(text, Path::new("/etc/amphi/policy.toml")).unwrap_err();
            let DispatchError::BadPolicy { line: got, .. } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(got, line, "{text:?}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("/etc/amphi/policy.toml"), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            if let Some(l) = line {
                assert!(msg.contains(&format!("line {l}")), "{msg}");
            }
        }
    }

    #[test]
    fn loading() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert!(matches!(
            Policy::load(Some(&missing)),
            Err(DispatchError::PolicyIo { .. })
        ));
        assert_eq!(
            Policy::load_file(&missing, false).unwrap(),
            Policy::default()
        );
        let f = dir.path().join("p.toml");
        std::fs::write(&f, EXAMPLE).unwrap();
        let p = Policy::load(Some(&f)).unwrap();
        assert_eq!(p.source.as_deref(), Some(f.as_path()));
    }
}
