//! The dispatcher at work on a real image: probe the host, read the
//! image's requirements and the policy, list the guest kernels, and
//! [`decide`]. `amphi run` and `amphi explain` both go through [`plan`].
//!
//! The plan is the contract: it carries the image as resolved, and for a
//! microVM the guest kernel and the monitor chosen, so the backends run
//! what was decided without resolving or choosing again.

use super::backend::{self, Backend, BackendChoice};
use super::resolve::ResolvedImage;
use super::{
    decide, image_requirements, CandidateKernel, DecideInput, Decision, DispatchError, Isolation,
    IsolationChoice, Policy,
};
use crate::host::HostInfo;
use crate::image::scan::CommandFacts;
use crate::image::{ImageRecord, Reference};
use crate::kernel::KernelEntry;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A decision with what `amphi explain` shows around it, and what the
/// backend needs to carry it out.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// The image reference, normalised (what policy patterns matched); for
    /// an image named by ID, the store name that decided.
    pub image: String,
    pub decision: Decision,
    /// What would run it: "native container" or the VM backend.
    pub backend: String,
    pub host: HostSummary,
    /// What the image scan said of the command that runs.
    pub scan: ScanReport,
    /// The image the decision is about: the backend runs this one.
    #[serde(skip)]
    pub resolved: ResolvedImage,
    /// The backend's part: a native container, or a microVM with its
    /// kernel and monitor (as `decision.isolation` says).
    #[serde(skip)]
    pub target: Target,
}

/// What runs the workload, as decided.
#[derive(Debug)]
pub enum Target {
    /// A native container on the host kernel.
    Container,
    /// A microVM.
    Vm(Box<VmPlan>),
}

/// The microVM side of a plan.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// The guest kernel the decision chose.
    pub kernel: GuestKernel,
    /// The monitor ([`backend::choose`] for that kernel on this host).
    pub backend: Backend,
    /// Said when the microVM starts (software emulation is slow).
    pub notice: Option<String>,
    /// Additions to the guest kernel's command line (from the inferred
    /// needs: `vsyscall=xonly`, `systemd.unified_cgroup_hierarchy=0`).
    pub cmdline: Vec<String>,
}

/// A guest kernel: an entry of the kernel catalog, or the file `--kernel`
/// named.
#[derive(Debug, Clone)]
pub enum GuestKernel {
    Catalog(KernelEntry),
    File { path: PathBuf, release: String },
}

impl GuestKernel {
    /// The ID the decision names it by (a file's is its path).
    pub fn id(&self) -> String {
        match self {
            GuestKernel::Catalog(e) => e.id.clone(),
            GuestKernel::File { path, .. } => path.display().to_string(),
        }
    }

    /// `uname -r` in the guest.
    pub fn release(&self) -> &str {
        match self {
            GuestKernel::Catalog(e) => &e.release,
            GuestKernel::File { release, .. } => release,
        }
    }

    /// Whether it has virtio-fs built in (`CONFIG_VIRTIO_FS=y`): None when
    /// its config is unknown (a file given with `--kernel`).
    pub fn virtio_fs(&self) -> Option<bool> {
        match self {
            GuestKernel::Catalog(e) => e
                .config_option("VIRTIO_FS")
                .ok()
                .map(|v| v.as_deref() == Some("y")),
            GuestKernel::File { .. } => None,
        }
    }

    /// PVM-enabled (a file given with `--kernel` is taken as not).
    pub fn pvm(&self) -> bool {
        matches!(self, GuestKernel::Catalog(e) if e.pvm)
    }

    /// The file to boot: a catalog kernel's vmlinux, else its bzImage.
    pub fn boot_file(&self) -> Result<PathBuf, PlanError> {
        match self {
            GuestKernel::File { path, .. } => Ok(path.clone()),
            GuestKernel::Catalog(e) => {
                e.vmlinux()
                    .or_else(|| e.bzimage())
                    .ok_or_else(|| PlanError::NoKernelFile {
                        id: e.id.clone(),
                        dir: e.dir.clone(),
                    })
            }
        }
    }
}

/// The host facts the decision used, in short.
#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    pub arch: String,
    pub kernel: String,
    pub config_source: String,
    pub cgroup: String,
    pub kvm: String,
    pub vsyscall: String,
}

impl HostSummary {
    fn of(h: &HostInfo) -> Self {
        HostSummary {
            arch: h.arch.clone(),
            kernel: h.kernel_release.clone(),
            config_source: h.config_source.clone(),
            cgroup: serde_name(&h.cgroup),
            kvm: serde_name(&h.kvm),
            vsyscall: serde_name(&h.vsyscall),
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

/// Why a run could not be planned: the image could not be found or read,
/// `--kernel` could not be used, or the dispatcher refused the run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The dispatcher refused: its message, then every rule it checked.
    #[error("{}", with_rules_checked(.0))]
    Decision(#[source] DispatchError),
    #[error(transparent)]
    Store(#[from] crate::image::store::StoreError),
    #[error(transparent)]
    Lookup(#[from] crate::image::index::LookupError),
    #[error(transparent)]
    Reference(#[from] crate::image::reference::ReferenceError),
    #[error("image config {digest}: {source}")]
    ImageConfig {
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {image} is not in the store and pulling it failed: {source}")]
    Pull {
        image: String,
        #[source]
        source: crate::image::ImageError,
    },
    #[error("--kernel: {0}")]
    Kernel(#[source] crate::kernel::KernelError),
    #[error("guest kernel {id} has no kernel file in {}", dir.display())]
    NoKernelFile { id: String, dir: PathBuf },
    #[error("image {image}: the dispatcher chose a microVM without one of the candidate guest kernels ({chosen:?})")]
    NoCandidateKernel {
        image: String,
        chosen: Option<String>,
    },
}

impl From<DispatchError> for PlanError {
    fn from(e: DispatchError) -> Self {
        PlanError::Decision(e)
    }
}

/// A refusal's message and every rule checked.
fn with_rules_checked(e: &DispatchError) -> String {
    let mut m = e.to_string();
    let reasons = e.reasons();
    if !reasons.is_empty() {
        m.push_str("\nrules checked:");
        for r in reasons {
            m.push_str(&format!("\n  {r}"));
        }
    }
    m
}

/// What a plan is asked for: `run`'s and `explain`'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The image store (and kernel catalog) root.
    pub store_root: &'a Path,
    pub image: &'a str,
    /// `--isolation` (`Auto` when not given).
    pub isolation: IsolationChoice,
    /// `--policy`.
    pub policy: Option<&'a Path>,
    pub vm_backend: BackendChoice,
    /// `--kernel`.
    pub kernel: Option<&'a str>,
    /// The command after the image name (empty: the image's Cmd).
    pub command: &'a [String],
    /// `--entrypoint`.
    pub entrypoint: Option<&'a str>,
    /// Scan the image again even when a stored scan exists.
    pub rescan: bool,
    /// Where notices for the user go (an image being pulled): the CLI's
    /// stderr; nowhere by default.
    pub notify: fn(&str),
}

impl<'a> PlanRequest<'a> {
    /// A request for `image` with every option at its default.
    pub fn new(store_root: &'a Path, image: &'a str) -> Self {
        PlanRequest {
            store_root,
            image,
            isolation: IsolationChoice::Auto,
            policy: None,
            vm_backend: BackendChoice::Auto,
            kernel: None,
            command: &[],
            entrypoint: None,
            rescan: false,
            notify: |_| {},
        }
    }
}

/// What the image scan said of the command a run starts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    /// `/etc/os-release`'s name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Where the command's `argv[0]` led inside the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// Why the command's own facts are unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// Why there is no scan at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Files the scan read and how long it took (when it ran now or was
    /// stored).
    pub files_read: usize,
    pub micros: u64,
}

/// Decides how `image` runs here (pulling it first if it is missing).
pub fn plan(req: &PlanRequest) -> Result<Plan, PlanError> {
    let store_root = req.store_root;
    let image = req.image;
    let resolved = super::resolve_image(store_root, image, req.notify)?;
    let requirements = image_requirements(&resolved.store, &resolved.record, &resolved.config)?;
    let policy = Policy::load(req.policy)?;
    let host = crate::host::probe();
    // The image's own files, as the stored scan saw them (scanned now on
    // first use). A scan that cannot be made leaves no facts: inference
    // only ever adds requirements, and the explanation says why.
    let (command, scan_report) = match super::facts::image_scan(&resolved, req.rescan) {
        Ok(scan) => {
            let cf = super::facts::command_facts(&resolved, &scan, req.command, req.entrypoint);
            let report = ScanReport {
                os: scan.os_name().to_string(),
                executable: cf.executable.clone(),
                unknown: cf.unknown.clone(),
                error: None,
                files_read: scan.files_read,
                micros: scan.micros,
            };
            (cf, report)
        }
        Err(e) => (
            CommandFacts::default(),
            ScanReport {
                error: Some(format!("the image could not be scanned: {e}")),
                ..ScanReport::default()
            },
        ),
    };
    let catalog = crate::kernel::Catalog::open(store_root);
    let references = policy_references(image, &resolved.record);
    let decide_for = |kernels: &[CandidateKernel], cli_kernel: bool| {
        decide_strictest(&references, |reference| {
            decide(&DecideInput {
                host: &host,
                reference,
                requirements: &requirements,
                policy: &policy,
                cli: req.isolation,
                kernels,
                cli_kernel,
                facts: &command.facts,
            })
        })
    };
    // Each candidate as the decision sees it, and the kernel it stands for.
    let catalog_kernels = || -> (Vec<CandidateKernel>, Vec<GuestKernel>) {
        let entries = catalog.list().unwrap_or_default();
        let seen = entries.iter().map(CandidateKernel::from_entry).collect();
        (
            seen,
            entries.into_iter().map(GuestKernel::Catalog).collect(),
        )
    };
    // `--kernel`: the only candidate (a file, or one catalog kernel).
    let (kernels, decided) = if let Some(k) = req.kernel {
        let (seen, only) = given_kernel(store_root, k)?;
        (vec![only], decide_for(std::slice::from_ref(&seen), true))
    } else {
        let (mut seen, mut kernels) = catalog_kernels();
        let mut decided = decide_for(&seen, false);
        // An empty catalog gets amphi's own kernels from the machine's
        // build cache, but only when a microVM is wanted: native runs stay
        // cheap.
        let wants_vm = !matches!(&decided.1, Ok(d) if d.isolation == Isolation::Container);
        if kernels.is_empty() && wants_vm {
            crate::kernel::register_builtins(store_root);
            (seen, kernels) = catalog_kernels();
            decided = decide_for(&seen, false);
        }
        (kernels, decided)
    };
    let (reference, decision) = decided;
    let decision = decision?;
    finish(
        reference,
        decision,
        scan_report,
        resolved,
        kernels,
        req.vm_backend,
        &host,
    )
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

/// The kernel `--kernel` names, and what the decision sees of it: a file
/// (probed; its embedded config, if any, is what config requirements are
/// checked against) or a catalog kernel (by ID, version, series or ID
/// prefix). The one lookup of `--kernel`: the backend boots what it finds.
fn given_kernel(store_root: &Path, k: &str) -> Result<(CandidateKernel, GuestKernel), PlanError> {
    if k.contains('/') {
        let (img, _) = crate::kernel::probe::probe(Path::new(k)).map_err(PlanError::Kernel)?;
        let seen = CandidateKernel {
            id: k.to_string(),
            release: img.release.clone(),
            version: img.version,
            config: img
                .ikconfig
                .as_deref()
                .and_then(|c| crate::kernel::config::parse(c).ok()),
            pvm: false,
        };
        let file = GuestKernel::File {
            path: PathBuf::from(k),
            release: img.release,
        };
        return Ok((seen, file));
    }
    let catalog = crate::kernel::Catalog::open(store_root);
    if catalog.list().map(|l| l.is_empty()).unwrap_or(true) {
        crate::kernel::register_builtins(store_root);
    }
    let e = catalog.get(k).map_err(PlanError::Kernel)?;
    Ok((CandidateKernel::from_entry(&e), GuestKernel::Catalog(e)))
}

/// The plan of a decision: for a microVM, the kernel it chose (one of
/// `kernels`) and the monitor for it.
fn finish(
    reference: String,
    decision: Decision,
    scan: ScanReport,
    resolved: ResolvedImage,
    kernels: Vec<GuestKernel>,
    vm_backend: BackendChoice,
    host: &HostInfo,
) -> Result<Plan, PlanError> {
    let target = match (&decision.isolation, &decision.kernel) {
        (Isolation::Container, _) => Target::Container,
        (Isolation::Vm, chosen) => {
            let kernel = chosen
                .as_ref()
                .and_then(|c| kernels.into_iter().find(|k| k.id() == c.id))
                .ok_or_else(|| PlanError::NoCandidateKernel {
                    image: reference.clone(),
                    chosen: decision.kernel.as_ref().map(|k| k.id.clone()),
                })?;
            let (backend, notice) = backend::choose(
                vm_backend,
                amphi_vmm::detect_kvm_kind(),
                kernel.pvm(),
                kernel.release(),
            );
            Target::Vm(Box::new(VmPlan {
                kernel,
                backend,
                notice,
                cmdline: decision.guest_cmdline.clone(),
            }))
        }
    };
    let backend = match &target {
        Target::Container => "native container (host kernel)".to_string(),
        Target::Vm(vm) => vm.backend.describe().to_string(),
    };
    Ok(Plan {
        image: reference,
        decision,
        backend,
        host: HostSummary::of(host),
        scan,
        resolved,
        target,
    })
}

impl Plan {
    /// The image scan's part of `amphi explain`: each inferred need as
    /// "FACT: needs NEED, HOST → OUTCOME".
    fn fmt_scan(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.decision;
        let sc = &self.scan;
        let mut parts = Vec::new();
        if !sc.os.is_empty() {
            parts.push(sc.os.clone());
        }
        if let Some(e) = &sc.executable {
            parts.push(format!("command {e}"));
        }
        writeln!(f, "image scan: {}", parts.join(", "))?;
        if let Some(e) = &sc.error {
            writeln!(f, "  {e}")?;
        }
        if let Some(u) = &sc.unknown {
            writeln!(f, "  {u}")?;
        }
        let outcome = match (&d.isolation, &d.kernel) {
            (Isolation::Vm, Some(k)) => format!("microVM with kernel {}", k.release),
            (Isolation::Vm, None) => "microVM".to_string(),
            (Isolation::Container, _) => "native container".to_string(),
        };
        for i in &d.inferred {
            let have = &i.host_has;
            match (have.is_empty(), i.host_ok) {
                (true, _) => writeln!(f, "  {}: needs {}", i.fact, i.need)?,
                (false, true) => writeln!(f, "  {}: needs {}, {have}: ok", i.fact, i.need)?,
                (false, false) => writeln!(
                    f,
                    "  {}: needs {}, {have} \u{2192} {outcome}",
                    i.fact, i.need
                )?,
            }
        }
        let shown: Vec<&crate::image::scan::Fact> = d.inferred.iter().map(|i| &i.fact).collect();
        for fact in d.facts.iter().filter(|x| !shown.contains(x)) {
            writeln!(f, "  {fact}")?;
        }
        if sc.error.is_none() && d.facts.is_empty() {
            writeln!(f, "  nothing that constrains the kernel")?;
        }
        Ok(())
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
            "host: {} kernel {}, cgroup {}, KVM {}, vsyscall {} (config: {})",
            self.host.arch,
            self.host.kernel,
            self.host.cgroup,
            self.host.kvm,
            self.host.vsyscall,
            self.host.config_source
        )?;
        self.fmt_scan(f)?;
        writeln!(f, "rules:")?;
        for r in &d.reasons {
            writeln!(f, "  {r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Format, KernelVersion};

    fn entry(dir: &Path, formats: Vec<Format>, pvm: bool) -> KernelEntry {
        KernelEntry {
            id: "6.12.57-0123456789ab".into(),
            version: KernelVersion::parse("6.12.57").unwrap(),
            release: "6.12.57-amphi".into(),
            pvm,
            pvh_entry: None,
            formats,
            config_sha256: None,
            config_source: "unknown".into(),
            source: "test".into(),
            recipe: None,
            added: "2026-01-01T00:00:00Z".into(),
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn a_catalog_kernel_boots_its_vmlinux_else_its_bzimage() {
        let dir = Path::new("/kernels/k");
        let both = GuestKernel::Catalog(entry(dir, vec![Format::BzImage, Format::Vmlinux], true));
        assert_eq!(both.boot_file().unwrap(), dir.join("vmlinux"));
        assert_eq!(both.id(), "6.12.57-0123456789ab");
        assert_eq!(both.release(), "6.12.57-amphi");
        assert!(both.pvm());
        let bz = GuestKernel::Catalog(entry(dir, vec![Format::BzImage], false));
        assert_eq!(bz.boot_file().unwrap(), dir.join("bzImage"));
        assert!(!bz.pvm());
        let none = GuestKernel::Catalog(entry(dir, vec![], false));
        let e = none.boot_file().unwrap_err();
        assert!(matches!(e, PlanError::NoKernelFile { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "guest kernel 6.12.57-0123456789ab has no kernel file in /kernels/k"
        );
    }

    #[test]
    fn a_kernel_file_is_booted_as_given_and_is_not_pvm() {
        let file = GuestKernel::File {
            path: PathBuf::from("/boot/vmlinuz-6.1"),
            release: "6.1.0-test".into(),
        };
        assert_eq!(file.id(), "/boot/vmlinuz-6.1");
        assert_eq!(file.boot_file().unwrap(), Path::new("/boot/vmlinuz-6.1"));
        assert_eq!(file.release(), "6.1.0-test");
        assert!(!file.pvm());
    }
}
