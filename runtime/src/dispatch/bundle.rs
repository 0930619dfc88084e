//! The dispatcher's decision for an OCI bundle (`create`/`run --bundle`,
//! the path podman, containerd and Kubernetes take): whether the container
//! must run in a microVM. It comes from
//! - the spec's annotation `io.amphi.isolation` (`vm`, `container`,
//!   `auto`), which, like an image's label, can only ask for more
//!   isolation than the policy gives;
//! - the site policy, by image name where the client passes one:
//!   containerd's CRI sets `io.kubernetes.cri.image-name`, CRI-O
//!   `io.kubernetes.cri-o.ImageName`; podman passes none, so for podman
//!   only the policy's `default_isolation` (and the annotation) apply.
//!
//! amphi's OCI interface does not run microVM containers yet, so a bundle
//! that must have one is refused at `create` with the reason: never run
//! natively against the operator's policy.

use super::policy::{normalize_reference, Policy};
use super::IsolationChoice;
use std::collections::HashMap;

/// The annotation a bundle asks for its isolation with.
pub const ISOLATION_ANNOTATION: &str = "io.amphi.isolation";
/// The annotations that carry the image's name, by client.
pub const IMAGE_NAME_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
];

/// Why the bundle must run in a microVM; None when it may run natively.
/// A malformed `io.amphi.isolation` is an error naming it.
pub fn needs_vm(
    annotations: &HashMap<String, String>,
    policy: &Policy,
) -> Result<Option<String>, String> {
    let asked = match annotations.get(ISOLATION_ANNOTATION) {
        None => IsolationChoice::Auto,
        Some(v) => v.parse().map_err(|_| {
            format!("annotation {ISOLATION_ANNOTATION}={v:?}: expected vm, container or auto")
        })?,
    };
    let image = IMAGE_NAME_ANNOTATIONS
        .iter()
        .find_map(|a| annotations.get(*a).map(|v| (*a, v)));
    if let Some(why) = policy_says_vm(policy, image)? {
        return Ok(Some(why));
    }
    Ok((asked == IsolationChoice::Vm).then(|| format!("the annotation {ISOLATION_ANNOTATION}=vm")))
}

/// The policy's rule for the image (by name when there is one), if it
/// says vm.
fn policy_says_vm(
    policy: &Policy,
    image: Option<(&str, &String)>,
) -> Result<Option<String>, String> {
    let src = policy.describe();
    if let Some((annotation, name)) = image {
        let reference = normalize_reference(name)
            .map_err(|e| format!("annotation {annotation}={name:?}: {e}"))?;
        if let Some((n, r)) = policy.image_rule(&reference) {
            if let Some(iso) = r.isolation {
                return Ok((iso == IsolationChoice::Vm).then(|| {
                    format!(
                        "[[image]] rule {} match {:?} in the {src} (image {reference})",
                        n + 1,
                        r.pattern
                    )
                }));
            }
        }
        if let Some((n, r)) = policy.trust_rule(&reference) {
            return Ok((r.isolation == IsolationChoice::Vm).then(|| {
                format!(
                    "[[trust]] rule {} match {:?} in the {src} (image {reference})",
                    n + 1,
                    r.pattern
                )
            }));
        }
    }
    Ok((policy.default_isolation == IsolationChoice::Vm)
        .then(|| format!("default_isolation = \"vm\" in the {src}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_annotation_and_the_policy_decide_and_only_the_policy_can_lower() {
        let none = Policy::default();
        assert_eq!(needs_vm(&ann(&[]), &none).unwrap(), None);
        let why = needs_vm(&ann(&[(ISOLATION_ANNOTATION, "vm")]), &none).unwrap();
        assert!(why.unwrap().contains("io.amphi.isolation=vm"));
        assert!(needs_vm(&ann(&[(ISOLATION_ANNOTATION, "kvm")]), &none)
            .unwrap_err()
            .contains("expected vm, container or auto"));

        let policy = Policy::parse(
            "[[trust]]\nmatch = \"untrusted.example/**\"\nisolation = \"vm\"\n\
             [[image]]\nmatch = \"docker.io/library/busybox\"\nisolation = \"container\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let cri = |name: &str, iso: &str| {
            ann(&[
                ("io.kubernetes.cri.image-name", name),
                (ISOLATION_ANNOTATION, iso),
            ])
        };
        // The policy's vm holds whatever the annotation says.
        let why = needs_vm(&cri("untrusted.example/x/app:1", "container"), &policy).unwrap();
        assert!(why.unwrap().contains("[[trust]] rule 1"));
        // CRI-O's annotation names the image too.
        let crio = ann(&[("io.kubernetes.cri-o.ImageName", "untrusted.example/app")]);
        assert!(needs_vm(&crio, &policy).unwrap().is_some());
        // A container rule: the annotation may still ask for more.
        assert_eq!(needs_vm(&cri("busybox", "auto"), &policy).unwrap(), None);
        assert!(needs_vm(&cri("busybox", "vm"), &policy).unwrap().is_some());
        // default_isolation covers images without a name (podman).
        let strict = Policy::parse("default_isolation = \"vm\"\n", Path::new("p.toml")).unwrap();
        assert!(needs_vm(&ann(&[]), &strict)
            .unwrap()
            .unwrap()
            .contains("default_isolation"));
        assert!(needs_vm(&cri("Bad Name!", "auto"), &policy)
            .unwrap_err()
            .contains("io.kubernetes.cri.image-name"));
    }
}
