//! The site policy: `/etc/amphi/policy.toml` (or `--policy FILE`).
//!
//! ```toml
//! # default isolation when no rule matches: "auto" (default), "container" or "vm"
//! default_isolation = "auto"
//! # trust rules by registry/repository pattern, first match wins
//! [[trust]]
//! match = "registry.internal/**"
//! isolation = "container"     # or "vm" / "auto"
//! # per-image rules, first match wins; their isolation wins over trust rules
//! [[image]]
//! match = "docker.io/library/alpine:*"
//! isolation = "container"     # optional: without it, trust rules decide isolation
//! kernel = "6.1"              # optional guest kernel (ID, version or series)
//! infer = false               # optional: do not infer needs from the image's files
//! ```
//!
//! `infer = false` at the top turns inference off for every image; an
//! `[[image]]` rule's `infer` wins over it for the images it matches (the
//! first matching rule that sets `infer` counts). Inference (the image
//! scan's facts, see `dispatch::infer`) is on by default; turning it off
//! never stops a policy from forcing a microVM.
//!
//! Patterns match the normalised reference (`docker.io/library/alpine:3.19`)
//! and also its name without tag and digest (`docker.io/library/alpine`), so
//! `match = "docker.io/library/alpine"` covers every tag and digest. They
//! never cross a registry boundary:
//! - `*` matches any run of characters within one path component (never
//!   `/`), `?` one character other than `/`, `**` any run including `/`.
//! - A pattern is `**` (every image), `*` (the same, kept for old policies),
//!   or `REGISTRY/PATH`: the registry part, before the first `/`, is
//!   matched against the reference's registry host (with its port) as a
//!   whole; `**` is refused there. Case is ignored throughout. So `*.internal/**`
//!   matches `registry.internal/team/app:1` but never
//!   `ghcr.io/attacker/evil.internal/app:1`, and `registry.internal/**`
//!   never matches `registry.internal:5000/app:1` (another port is another
//!   registry: write `registry.internal:*/**` for every port).
//! - A last component that is exactly `*` covers every component below it,
//!   as before: `registry.internal/*` is everything in registry.internal,
//!   nested repositories included (`registry.internal/**` says the same
//!   more plainly); `docker.io/library/*` is every official image.
//! - A pattern without `/` (other than `*` and `**`) is refused: it could
//!   never match.
//!
//! A matching rule whose isolation is `auto` decides too: the image's
//! requirements (and its own `io.amphi.isolation`) choose.

use super::{DispatchError, IsolationChoice};
use crate::image::Reference;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the policy is read from when no `--policy` is given.
pub const DEFAULT_POLICY_PATH: &str = "/etc/amphi/policy.toml";
/// The environment variable that names another policy file.
pub const POLICY_ENV: &str = "AMPHI_POLICY";

/// A trust rule: images whose reference matches get this isolation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRule {
    #[serde(rename = "match")]
    pub pattern: String,
    pub isolation: IsolationChoice,
    /// The most network the matching images may have: "none",
    /// "private" or "host" (a flag cannot ask for more).
    #[serde(default)]
    pub network: Option<String>,
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
    /// Whether the image's needs are inferred from its files (default: the
    /// policy's `infer`, else yes).
    #[serde(default)]
    pub infer: Option<bool>,
    /// The most network the matching images may have (see [`TrustRule`]).
    #[serde(default)]
    pub network: Option<String>,
}

/// The whole policy. `Policy::default()` is what applies without a file:
/// `auto`, no rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default_isolation: IsolationChoice,
    /// Infer needs from the image's files (default yes).
    #[serde(default)]
    pub infer: Option<bool>,
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
            check_pattern(&r.pattern)
                .map_err(|why| bad(format!("[[trust]] rule {}: {why}", i + 1)))?;
            if let Some(n) = &r.network {
                n.parse::<crate::net::Network>()
                    .map_err(|why| bad(format!("[[trust]] rule {}: network: {why}", i + 1)))?;
            }
        }
        for (i, r) in p.images.iter().enumerate() {
            check_pattern(&r.pattern)
                .map_err(|why| bad(format!("[[image]] rule {}: {why}", i + 1)))?;
            if r.kernel.as_deref().is_some_and(|k| k.trim().is_empty()) {
                return Err(bad(format!("[[image]] rule {}: empty kernel", i + 1)));
            }
            if let Some(n) = &r.network {
                n.parse::<crate::net::Network>()
                    .map_err(|why| bad(format!("[[image]] rule {}: network: {why}", i + 1)))?;
            }
        }
        p.source = Some(path.to_path_buf());
        Ok(p)
    }

    /// Loads `path` (which must exist), or without one `$AMPHI_POLICY`
    /// (which must exist too: the OCI commands, which podman and
    /// containerd run, take no `--policy`), or the default file
    /// ([`DEFAULT_POLICY_PATH`]), whose absence means the default policy.
    pub fn load(path: Option<&Path>) -> Result<Policy, DispatchError> {
        match path {
            Some(p) => Self::load_file(p, true),
            None => match std::env::var_os(POLICY_ENV).filter(|v| !v.is_empty()) {
                Some(p) => Self::load_file(Path::new(&p), true),
                None => Self::load_file(Path::new(DEFAULT_POLICY_PATH), false),
            },
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

    /// Whether inference is on for `reference`, and where the policy says
    /// so; None when the policy says nothing (inference is then on).
    pub fn infer_rule(&self, reference: &str) -> Option<(bool, String)> {
        let rule = self
            .images
            .iter()
            .enumerate()
            .find(|(_, r)| r.infer.is_some() && reference_matches(&r.pattern, reference));
        if let Some((n, r)) = rule {
            return r.infer.map(|v| {
                (
                    v,
                    format!(
                        "[[image]] rule {} match {:?} in {}",
                        n + 1,
                        r.pattern,
                        self.describe()
                    ),
                )
            });
        }
        self.infer
            .map(|v| (v, format!("infer = {v} in the {}", self.describe())))
    }

    /// The most network `reference` may have, and the rule that says so:
    /// the strictest of every matching `[[image]]` and `[[trust]]` rule
    /// that sets one; None when no rule does.
    pub fn network_rule(&self, reference: &str) -> Option<(crate::net::Network, String)> {
        let images = self.images.iter().enumerate().filter_map(|(n, r)| {
            let net = r.network.as_deref()?.parse().ok()?;
            reference_matches(&r.pattern, reference).then(|| {
                (
                    net,
                    format!("[[image]] rule {} match {:?}", n + 1, r.pattern),
                )
            })
        });
        let trust = self.trust.iter().enumerate().filter_map(|(n, r)| {
            let net = r.network.as_deref()?.parse().ok()?;
            reference_matches(&r.pattern, reference).then(|| {
                (
                    net,
                    format!("[[trust]] rule {} match {:?}", n + 1, r.pattern),
                )
            })
        });
        images
            .chain(trust)
            .min_by_key(|(n, _): &(crate::net::Network, String)| n.rank())
            .map(|(n, rule)| (n, format!("{rule} in the {}", self.describe())))
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

/// Why `pattern` is not a usable policy pattern (see the module docs).
fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("empty match pattern".to_string());
    }
    if pattern == "*" || pattern == "**" {
        return Ok(());
    }
    if pattern.chars().any(char::is_whitespace) {
        return Err(format!(
            "match pattern {pattern:?} contains white space, which no image reference has"
        ));
    }
    let Some((host, _)) = pattern.split_once('/') else {
        return Err(format!(
            "match pattern {pattern:?} has no '/': patterns match REGISTRY/REPOSITORY[:TAG] \
             (write \"{pattern}/**\" for everything in a registry, \"**\" for every image)"
        ));
    };
    if host.is_empty() {
        return Err(format!(
            "match pattern {pattern:?} starts with '/': it must start with a registry host"
        ));
    }
    if host.contains("**") {
        return Err(format!(
            "match pattern {pattern:?}: '**' in the registry host (before the first '/') \
             would match across registries; use '*' there (as in \"*.internal/**\")"
        ));
    }
    Ok(())
}

/// The reference's name without tag and digest
/// (`docker.io/library/alpine:3.19@sha256:..` -> `docker.io/library/alpine`).
fn name_of(reference: &str) -> &str {
    let no_digest = reference.split_once('@').map_or(reference, |(n, _)| n);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    }
}

/// Whether `pattern` matches the normalised `reference`, or its name without
/// tag and digest, ignoring case. The registry host is matched as a
/// whole; `*` never crosses `/` (see the module docs).
pub fn reference_matches(pattern: &str, reference: &str) -> bool {
    if pattern == "*" || pattern == "**" {
        return true;
    }
    // Case never tells two images apart for a policy: registry hosts are
    // DNS names, repository paths are lower-case by their grammar, and a
    // tag differing only in case is still in the same repository.
    let pattern = pattern.to_ascii_lowercase();
    let reference = reference.to_ascii_lowercase();
    let Some((phost, ppath)) = pattern.split_once('/') else {
        return false;
    };
    // A last component that is exactly `*` covers everything below it.
    let ppath = match ppath.strip_suffix('*') {
        Some(head) if head.is_empty() || head.ends_with('/') => format!("{head}**"),
        _ => ppath.to_string(),
    };
    let matches = |text: &str| match text.split_once('/') {
        Some((thost, tpath)) => {
            // `**` in a host is refused when a policy is read; should one
            // get here, it must not reach past the host either.
            !phost.contains("**") && glob_match(phost, thost) && glob_match(&ppath, tpath)
        }
        None => false,
    };
    let name = name_of(&reference);
    matches(&reference) || (name != reference && matches(name))
}

/// Glob match: `*` matches any run of characters other than `/`, `**` any
/// run including `/`, `?` exactly one character other than `/`; everything
/// else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy)]
    enum Tok {
        Lit(char),
        One,
        Star,
        AnyStar,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '*' => {
                if chars.peek() == Some(&'*') {
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                    Tok::AnyStar
                } else {
                    Tok::Star
                }
            }
            '?' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    let t: Vec<char> = text.chars().collect();
    // row[j]: the tokens so far match text[..j].
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for tok in toks {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match tok {
                Tok::Lit(c) => j > 0 && row[j - 1] && t[j - 1] == c,
                Tok::One => j > 0 && row[j - 1] && t[j - 1] != '/',
                Tok::Star => row[j] || (j > 0 && next[j - 1] && t[j - 1] != '/'),
                Tok::AnyStar => row[j] || (j > 0 && next[j - 1]),
            };
        }
        row = next;
    }
    row[t.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("**", "anything/at/all:1", true),
            ("**", "", true),
            ("*", "no-slash:1", true),
            ("*", "a/b", false),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*c", "a/c", false),
            ("a**c", "a/b/c", true),
            ("a**c", "ac", true),
            ("a***c", "a/c", true),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("a/**/c", "a/x/y/c", true),
            ("a/**/c", "a/c", false),
            ("exact:1", "exact:1", true),
            ("exact:1", "exact:12", false),
            (
                "*.internal/*",
                "ghcr.io/attacker/evil.internal/app:1",
                false,
            ),
            ("*.internal/*", "registry.internal/app:1", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p:?} vs {t:?}");
        }
    }

    /// Policy patterns against normalised references, hostile ones included.
    #[test]
    fn reference_patterns() {
        let cases = [
            // Every image.
            ("**", "ghcr.io/attacker/app:1", true),
            ("*", "ghcr.io/attacker/app:1", true),
            // The registry host is matched as a whole: a pattern for one
            // registry never matches a path component on another.
            ("*.internal/*", "registry.internal/app:1", true),
            ("*.internal/*", "registry.internal/team/app:1", true),
            ("*.internal/*", "ghcr.io/attacker/evil.internal/app:1", false),
            ("*.internal/**", "ghcr.io/attacker/evil.internal/app:1", false),
            ("*.internal/*", "docker.io/evil.internal/app:1", false),
            ("*.internal/*", "evil.internal.attacker.io/app:1", false),
            ("registry.internal/*", "registry.internalx/app:1", false),
            ("registry.internal/*", "registry.internal.attacker.io/app:1", false),
            ("registry.internal/*", "attacker.io/registry.internal/app:1", false),
            ("registry.internal/**", "ghcr.io/x/registry.internal/app:1", false),
            ("*/library/alpine", "ghcr.io/library/alpine:3", true),
            ("*/library/alpine", "ghcr.io/x/library/alpine:3", false),
            // A trailing `/*` covers nested repositories, in its registry only.
            ("registry.internal/*", "registry.internal/team/sub/app:1", true),
            ("registry.internal/team/*", "registry.internal/team/sub/app:1", true),
            ("registry.internal/team/*", "registry.internal/teamx/app:1", false),
            ("registry.internal/team/*", "registry.internal/other/team/app:1", false),
            // `*` elsewhere stays within one component.
            ("registry.internal/*/app", "registry.internal/team/app:1", true),
            ("registry.internal/*/app", "registry.internal/a/b/app:1", false),
            ("registry.internal/**/app", "registry.internal/a/b/app:1", true),
            // Ports: another port is another registry.
            ("registry.internal/*", "registry.internal:5000/app:1", false),
            ("registry.internal:5000/*", "registry.internal:5000/app:1", true),
            ("registry.internal:*/*", "registry.internal:5000/app:1", true),
            ("registry.internal:*/*", "registry.internal/app:1", false),
            ("*.internal/*", "evil.internal:5000/app:1", false),
            ("127.0.0.1:5000/*", "127.0.0.1:5000/demo/busybox:latest", true),
            ("127.0.0.1:5000/demo/busybox", "127.0.0.1:5000/demo/busybox:latest", true),
            // The host ignores case (DNS does); an upper-case reference
            // host cannot dodge a rule.
            ("evil.example/*", "EVIL.example/app:1", true),
            ("Registry.Internal/*", "registry.internal/app:1", true),
            ("docker.io/library/alpine:edge", "docker.io/library/alpine:EDGE", true),
            ("*.internal/*", "GHCR.IO/attacker/EVIL.INTERNAL/app:1", false),
            // Tags and digests.
            ("docker.io/library/alpine", "docker.io/library/alpine:3.19", true),
            ("docker.io/library/alpine", "docker.io/library/alpine:latest", true),
            (
                "docker.io/library/alpine",
                "docker.io/library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                true,
            ),
            (
                "docker.io/library/alpine",
                "docker.io/library/alpine:3@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                true,
            ),
            ("docker.io/library/alpine", "docker.io/library/alpinex:3.19", false),
            ("docker.io/library/alpine", "docker.io/library/alpine/x:3.19", false),
            ("docker.io/library/alpine:*", "docker.io/library/alpine:3.19", true),
            ("docker.io/library/alpine:*", "docker.io/library/alpine-x:3.19", false),
            ("docker.io/library/alpine:3.1?", "docker.io/library/alpine:3.19", true),
            ("docker.io/library/alpine:3.1?", "docker.io/library/alpine:3.1", false),
            (
                "docker.io/library/alpine:*",
                "docker.io/library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                false,
            ),
            ("docker.io/library/*", "docker.io/library/alpine:3.19", true),
            ("docker.io/library/*", "docker.io/attacker/alpine:3.19", false),
            // A tag that looks like a pattern or a path is just text.
            ("docker.io/library/alpine:*", "docker.io/library/alpine:x.internal", true),
            ("*.internal/*", "docker.io/library/alpine:x.internal", false),
            // Patterns without a registry part match nothing.
            ("alpine", "docker.io/library/alpine:latest", false),
            ("registry.internal", "registry.internal/app:1", false),
        ];
        for (p, r, want) in cases {
            assert_eq!(reference_matches(p, r), want, "{p:?} vs {r:?}");
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
        // What an attacker would type to look like an internal image.
        assert_eq!(
            normalize_reference("ghcr.io/attacker/evil.internal/app:1").unwrap(),
            "ghcr.io/attacker/evil.internal/app:1"
        );
        assert_eq!(
            normalize_reference("evil.internal/app:1").unwrap(),
            "evil.internal/app:1"
        );
    }

    #[test]
    fn unusable_patterns_are_refused() {
        let cases = [
            ("", "empty match pattern"),
            ("alpine", "has no '/'"),
            ("registry.internal", "\"registry.internal/**\""),
            ("/library/alpine", "starts with '/'"),
            ("**/alpine", "'**' in the registry host"),
            ("**.internal/*", "'**' in the registry host"),
            ("registry.internal/ app", "white space"),
        ];
        for (pattern, needle) in cases {
            for section in ["trust", "image"] {
                let text = format!("[[{section}]]\nmatch = {pattern:?}\nisolation = \"vm\"\n");
                let e = Policy::parse(&text, Path::new("/p.toml")).unwrap_err();
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("[[{section}]] rule 1"))
                        && msg.contains(needle)
                        && msg.contains("/p.toml"),
                    "{pattern:?}: {msg}"
                );
            }
        }
        for ok in ["*", "**", "*/*", "*.internal/**", "registry.internal:*/app"] {
            let text = format!("[[trust]]\nmatch = {ok:?}\nisolation = \"vm\"\n");
            Policy::parse(&text, Path::new("/p.toml")).unwrap();
        }
    }

    const EXAMPLE: &str = r#"
# default isolation
default_isolation = "auto"
[[trust]]
match = "registry.internal/*"
isolation = "container"
[[trust]]
match = "**"
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
