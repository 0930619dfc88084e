//! The dispatcher's decision for an OCI bundle (`create`, the path
//! podman, containerd and Kubernetes take): container or microVM, and for
//! a microVM the guest kernel and backend. It is the same decision as for
//! an image ([`decide`]), with the spec's annotations in the place of the
//! image's labels and manifest annotations:
//! - `io.amphi.isolation` (`vm`, `container`, `auto`), which can only ask
//!   for more isolation than the policy gives;
//! - `io.amphi.kernel.version`, `io.amphi.kernel.config`: what the host
//!   kernel must meet to run it natively (else a microVM, on a catalog
//!   kernel that meets them);
//! - `io.amphi.kernel`: the catalog kernel wanted;
//! - the site policy, by image name where the client passes one:
//!   containerd's CRI sets `io.kubernetes.cri.image-name`, CRI-O
//!   `io.kubernetes.cri-o.ImageName`; podman passes none, so for podman
//!   only the policy's `default_isolation` (and the annotations) apply.
//!
//! A bundle carries no image files, so nothing is inferred from them. A
//! CRI pod's sandbox (pause) container is decided without the pod's
//! io.amphi.* annotations (they are for the pod's containers; the
//! sandbox runs none of the pod's code, and the CRI plugin joins its
//! namespaces from the host); the policy still decides for it.

use super::backend::{self, BackendChoice};
use super::decide::{decide, CandidateKernel, DecideInput};
use super::plan::{GuestKernel, VmPlan};
use super::policy::{normalize_reference, Policy};
use super::requirements::Requirements;
use super::Isolation;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The annotation a bundle asks for its isolation with.
pub const ISOLATION_ANNOTATION: &str = "io.amphi.isolation";
/// The annotations that carry the image's name, by client.
pub const IMAGE_NAME_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
];
/// The annotations that say a CRI container's role: `sandbox` (the pod's
/// pause container, which holds its namespaces) or `container`.
pub const CONTAINER_TYPE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];

/// The CRI role of the bundle's container, if a CRI set one.
pub fn cri_container_type(annotations: &HashMap<String, String>) -> Option<&str> {
    CONTAINER_TYPE_ANNOTATIONS
        .iter()
        .find_map(|a| annotations.get(*a).map(String::as_str))
}

/// The environment variable that picks the microVM backend for bundles
/// (`auto`, `builtin`, `qemu`), as `--vm-backend` does for `amphi run`.
pub const BACKEND_ENV: &str = "AMPHI_VM_BACKEND";

/// Where a bundle's container runs.
pub enum BundleTarget {
    Container,
    /// A microVM: why, and the kernel and backend.
    Vm {
        why: String,
        plan: Box<VmPlan>,
    },
}

/// The image name the client passed, normalised ("" when none did).
fn image_reference(annotations: &HashMap<String, String>) -> Result<String, String> {
    match IMAGE_NAME_ANNOTATIONS
        .iter()
        .find_map(|a| annotations.get(*a).map(|v| (*a, v)))
    {
        None => Ok(String::new()),
        Some((a, name)) => {
            normalize_reference(name).map_err(|e| format!("annotation {a}={name:?}: {e}"))
        }
    }
}

/// Decides where the bundle with `annotations` runs. The guest kernels are
/// the catalog's of `store_root` (amphi's own builds are registered when
/// the catalog is empty and a microVM is wanted).
pub fn decide_bundle(
    store_root: &Path,
    annotations: &HashMap<String, String>,
    policy: &Policy,
) -> Result<BundleTarget, String> {
    // A pod's sandbox (the pause container) runs no code of the pod's
    // images: it only holds the pod's namespaces, which the host's CRI
    // plugin then joins by the sandbox's pid. The pod's io.amphi.*
    // annotations are for its containers, decided one by one, so the
    // sandbox is decided without them. The policy still applies to it:
    // anyone can write the container-type annotation (`podman run
    // --annotation`), and no annotation may lower the policy's word.
    let sandbox = cri_container_type(annotations) == Some("sandbox");
    let reference = image_reference(annotations)?;
    let amphi: BTreeMap<String, String> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with("io.amphi.") && !sandbox)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let requirements =
        Requirements::from_parts(&Default::default(), &amphi).map_err(|e| e.to_string())?;
    let host = crate::host::probe();
    let catalog = crate::kernel::Catalog::open(store_root);
    let list = || catalog.list().unwrap_or_default();
    let run = |entries: &[crate::kernel::KernelEntry]| {
        let seen: Vec<CandidateKernel> = entries.iter().map(CandidateKernel::from_entry).collect();
        decide(&DecideInput {
            host: &host,
            reference: &reference,
            requirements: &requirements,
            policy,
            cli: super::IsolationChoice::Auto,
            kernels: &seen,
            cli_kernel: false,
            facts: &[],
        })
    };
    let mut entries = list();
    let mut decision = run(&entries);
    let wants_vm = !matches!(&decision, Ok(d) if d.isolation == Isolation::Container);
    if entries.is_empty() && wants_vm {
        crate::kernel::register_builtins(store_root);
        entries = list();
        decision = run(&entries);
    }
    let decision = decision.map_err(|e| e.to_string())?;
    if decision.isolation == Isolation::Container {
        return Ok(BundleTarget::Container);
    }
    let chosen = decision.kernel.as_ref().ok_or_else(|| {
        format!(
            "this container needs a microVM ({}), and no guest kernel in the catalog of {} meets its needs (`amphi kernel build` makes one)",
            decision.decided_by,
            store_root.display()
        )
    })?;
    let entry = entries
        .into_iter()
        .find(|e| e.id == chosen.id)
        .ok_or_else(|| format!("guest kernel {} left the catalog", chosen.id))?;
    let kernel = GuestKernel::Catalog(entry);
    let choice: BackendChoice = match std::env::var(BACKEND_ENV) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| format!("${BACKEND_ENV}: {e}"))?,
        _ => BackendChoice::Auto,
    };
    let (backend, notice) = backend::choose(
        choice,
        amphi_vmm::detect_kvm_kind(),
        kernel.pvm(),
        kernel.release(),
    );
    Ok(BundleTarget::Vm {
        why: decision.decided_by.clone(),
        plan: Box::new(VmPlan {
            kernel,
            backend,
            notice,
            cmdline: decision.guest_cmdline.clone(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// None for a container; for a microVM, why (from the target, or from
    /// the error when this machine has no guest kernel to give it).
    fn vm_why(store: &Path, a: &HashMap<String, String>, p: &Policy) -> Option<String> {
        match decide_bundle(store, a, p) {
            Ok(BundleTarget::Container) => None,
            Ok(BundleTarget::Vm { why, .. }) => Some(why),
            Err(e) => Some(e),
        }
    }

    fn pod_sandbox() -> HashMap<String, String> {
        ann(&[
            ("io.kubernetes.cri.container-type", "sandbox"),
            (ISOLATION_ANNOTATION, "vm"),
        ])
    }

    #[test]
    fn the_annotations_and_the_policy_decide_and_only_the_policy_can_lower() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let none = Policy::default();
        assert_eq!(vm_why(store, &ann(&[]), &none), None);
        let why = vm_why(store, &ann(&[(ISOLATION_ANNOTATION, "vm")]), &none).unwrap();
        assert!(why.contains("io.amphi.isolation"), "{why}");
        let bad = vm_why(store, &ann(&[(ISOLATION_ANNOTATION, "kvm")]), &none).unwrap();
        assert!(
            bad.contains("io.amphi.isolation") && bad.contains("kvm"),
            "{bad}"
        );
        // A kernel newer than any host's: only a microVM can give it.
        let why = vm_why(store, &ann(&[("io.amphi.kernel.version", ">=99.0")]), &none).unwrap();
        assert!(why.contains("requirements") || why.contains("99"), "{why}");

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
        let why = vm_why(
            store,
            &cri("untrusted.example/x/app:1", "container"),
            &policy,
        )
        .unwrap();
        assert!(why.contains("trust"), "{why}");
        // CRI-O's annotation names the image too.
        let crio = ann(&[("io.kubernetes.cri-o.ImageName", "untrusted.example/app")]);
        assert!(vm_why(store, &crio, &policy).is_some());
        // A container rule: the annotation may still ask for more.
        assert_eq!(vm_why(store, &cri("busybox", "auto"), &policy), None);
        assert!(vm_why(store, &cri("busybox", "vm"), &policy).is_some());
        // default_isolation covers images without a name (podman).
        let strict = Policy::parse("default_isolation = \"vm\"\n", Path::new("p.toml")).unwrap();
        let why = vm_why(store, &ann(&[]), &strict).unwrap();
        assert!(why.contains("default"), "{why}");
        // A pod's sandbox: the pod's annotation is for its containers...
        let mut pause = pod_sandbox();
        assert_eq!(
            vm_why(store, &pause, &none),
            None,
            "a pod's sandbox stays native"
        );
        pause.insert(
            "io.kubernetes.cri.container-type".into(),
            "container".into(),
        );
        assert!(vm_why(store, &pause, &none).is_some());
        // ...but the sandbox's annotation cannot lower the policy's vm:
        // anyone can write it (`podman run --annotation`).
        let why = vm_why(store, &pod_sandbox(), &strict).unwrap();
        assert!(why.contains("default"), "{why}");
        let mut claimed = cri("untrusted.example/x/app:1", "container");
        claimed.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        let why = vm_why(store, &claimed, &policy).unwrap();
        assert!(why.contains("trust"), "{why}");
        let bad = vm_why(store, &cri("Bad Name!", "auto"), &policy).unwrap();
        assert!(bad.contains("io.kubernetes.cri.image-name"), "{bad}");
    }
}
