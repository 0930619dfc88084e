//! The dispatcher at work on a real image: probe the host, read the
//! image's requirements and the policy, list the guest kernels, and
//! [`decide`]. `amphi run` and `amphi explain` both go through [`plan`].

use super::backend::{self, BackendChoice};
use super::{
    decide, image_requirements, CandidateKernel, DecideInput, Decision, DispatchError, Isolation,
    IsolationChoice, Policy,
};
use crate::host::HostInfo;
use crate::image::{ImageRecord, Reference};
use crate::sys::exit::{amphi_err, RunError};
use serde::Serialize;
use std::path::Path;

/// A decision with what `amphi explain` shows around it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The image reference, normalised (what policy patterns matched); for
    /// an image named by ID, the store name that decided.
    pub image: String,
    pub decision: Decision,
    /// What would run it: "native container" or the VM backend.
    pub backend: String,
    pub host: HostSummary,
}

/// The host facts the decision used, in short.
#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    pub arch: String,
    pub kernel: String,
    pub config_source: String,
    pub cgroup: String,
    pub kvm: String,
}

impl HostSummary {
    fn of(h: &HostInfo) -> Self {
        HostSummary {
            arch: h.arch.clone(),
            kernel: h.kernel_release.clone(),
            config_source: h.config_source.clone(),
            cgroup: serde_name(&h.cgroup),
            kvm: serde_name(&h.kvm),
        }
    }
}

/// A serde enum's plain name ("hybrid", "pvm").
fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => "?".into(),
    }
}

/// The error for a failed decision: its message and every rule checked.
fn dispatch_err(e: DispatchError) -> RunError {
    let mut m = e.to_string();
    let reasons = e.reasons();
    if !reasons.is_empty() {
        m.push_str("\nrules checked:");
        for r in reasons {
            m.push_str(&format!("\n  {r}"));
        }
    }
    amphi_err(m)
}

/// Decides how `image` runs here (pulling it first if it is missing).
pub fn plan(
    store_root: &Path,
    image: &str,
    cli: IsolationChoice,
    policy_path: Option<&Path>,
    vm_backend: BackendChoice,
    kernel: Option<&str>,
) -> Result<Plan, RunError> {
    let (store, rec, config) = super::resolve_image(store_root, image)?;
    let requirements = image_requirements(&store, &rec, &config).map_err(dispatch_err)?;
    let policy = Policy::load(policy_path).map_err(dispatch_err)?;
    let host = crate::host::probe();
    let catalog = crate::kernel::Catalog::open(store_root);
    let references = policy_references(image, &rec);
    let decide_for = |kernels: &[CandidateKernel], cli_kernel: bool| {
        decide_strictest(&references, |reference| {
            decide(&DecideInput {
                host: &host,
                reference,
                requirements: &requirements,
                policy: &policy,
                cli,
                kernels,
                cli_kernel,
            })
        })
    };
    // `--kernel`: the only candidate (a file, or one catalog kernel).
    if let Some(k) = kernel {
        let only = given_kernel(store_root, k)?;
        let (reference, decision) = decide_for(std::slice::from_ref(&only), true);
        let decision = decision.map_err(dispatch_err)?;
        return Ok(finish(reference, decision, &[only], vm_backend, &host));
    }
    let mut kernels: Vec<CandidateKernel> = catalog
        .list()
        .unwrap_or_default()
        .iter()
        .map(CandidateKernel::from_entry)
        .collect();
    let mut decided = decide_for(&kernels, false);
    // An empty catalog gets amphi's own kernels from the machine's build
    // cache, but only when a microVM is wanted: native runs stay cheap.
    let wants_vm = !matches!(&decided.1, Ok(d) if d.isolation == Isolation::Container);
    if kernels.is_empty() && wants_vm {
        crate::kernel::register_builtins(store_root);
        kernels = catalog
            .list()
            .unwrap_or_default()
            .iter()
            .map(CandidateKernel::from_entry)
            .collect();
        decided = decide_for(&kernels, false);
    }
    let (reference, decision) = decided;
    let decision = decision.map_err(dispatch_err)?;
    Ok(finish(reference, decision, &kernels, vm_backend, &host))
}

/// The references the policy sees for `image` as the user named it. By
/// name (or `name@digest`): that name, normalised. By image ID or bare
/// digest: every name the image has in the store (an ID says nothing about
/// where the image came from, and must not be read as a docker.io name),
/// or none but the ID when it has no names (then only `*`/`**` rules
/// match).
fn policy_references(image: &str, rec: &ImageRecord) -> Vec<String> {
    if let Ok(r) = Reference::parse(image) {
        let name = r.to_string();
        let by_name = rec.names.contains(&name)
            || (r.tag.is_none()
                && r.digest.as_ref() == Some(&rec.manifest)
                && rec
                    .names
                    .iter()
                    .any(|n| Reference::parse(n).is_ok_and(|n| n.repo_name() == r.repo_name())));
        if by_name {
            return vec![name];
        }
    }
    if rec.names.is_empty() {
        return vec![rec.config.to_string()];
    }
    let mut names = rec.names.clone();
    names.sort();
    names.dedup();
    names
}

/// Decides for each of `references` and keeps the strictest result: the
/// first refusal, else the first microVM, else the first decision.
fn decide_strictest(
    references: &[String],
    decide_one: impl Fn(&str) -> Result<Decision, DispatchError>,
) -> (String, Result<Decision, DispatchError>) {
    let mut best: Option<(String, Result<Decision, DispatchError>)> = None;
    for r in references {
        let d = decide_one(r);
        let rank = |d: &Result<Decision, DispatchError>| match d {
            Err(_) => 2,
            Ok(d) if d.isolation == Isolation::Vm => 1,
            Ok(_) => 0,
        };
        if best.as_ref().is_none_or(|(_, b)| rank(&d) > rank(b)) {
            best = Some((r.clone(), d));
        }
    }
    best.expect("an image has at least one reference")
}

/// The kernel `--kernel` names: a file (probed; its embedded config, if
/// any, is what config requirements are checked against) or a catalog
/// kernel.
fn given_kernel(store_root: &Path, k: &str) -> Result<CandidateKernel, RunError> {
    if k.contains('/') {
        let (img, _) = crate::kernel::probe::probe(Path::new(k))
            .map_err(|e| amphi_err(format!("--kernel: {e}")))?;
        return Ok(CandidateKernel {
            id: k.to_string(),
            release: img.release,
            version: img.version,
            config: img
                .ikconfig
                .as_deref()
                .and_then(|c| crate::kernel::config::parse(c).ok()),
            pvm: false,
        });
    }
    let catalog = crate::kernel::Catalog::open(store_root);
    if catalog.list().map(|l| l.is_empty()).unwrap_or(true) {
        crate::kernel::register_builtins(store_root);
    }
    let e = catalog
        .get(k)
        .map_err(|e| amphi_err(format!("--kernel: {e}")))?;
    Ok(CandidateKernel::from_entry(&e))
}

fn finish(
    reference: String,
    decision: Decision,
    kernels: &[CandidateKernel],
    vm_backend: BackendChoice,
    host: &HostInfo,
) -> Plan {
    let backend = match (&decision.isolation, &decision.kernel) {
        (Isolation::Container, _) => "native container (host kernel)".to_string(),
        (Isolation::Vm, k) => {
            let cand = k
                .as_ref()
                .and_then(|k| kernels.iter().find(|c| c.id == k.id));
            let (b, _) = backend::choose(
                vm_backend,
                amphi_vmm::detect_kvm_kind(),
                cand.is_some_and(|c| c.pvm),
                cand.map_or("", |c| c.release.as_str()),
            );
            b.describe().to_string()
        }
    };
    Plan {
        image: reference,
        decision,
        backend,
        host: HostSummary::of(host),
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.decision;
        match (&d.isolation, &d.kernel) {
            (Isolation::Vm, Some(k)) => writeln!(
                f,
                "{}: microVM, guest kernel {} ({})",
                self.image, k.release, k.id
            )?,
            (Isolation::Vm, None) => writeln!(f, "{}: microVM", self.image)?,
            (Isolation::Container, _) => writeln!(f, "{}: native container", self.image)?,
        }
        if !d.decided_by.is_empty() {
            writeln!(f, "decided by: {}", d.decided_by)?;
        }
        writeln!(f, "backend: {}", self.backend)?;
        writeln!(
            f,
            "host: {} kernel {}, cgroup {}, KVM {} (config: {})",
            self.host.arch,
            self.host.kernel,
            self.host.cgroup,
            self.host.kvm,
            self.host.config_source
        )?;
        writeln!(f, "rules:")?;
        for r in &d.reasons {
            writeln!(f, "  {r}")?;
        }
        Ok(())
    }
}
