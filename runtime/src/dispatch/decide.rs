//! The decision: native container or microVM, and which guest kernel.
//!
//! Rules, in the order they are checked (each leaves a [`Reason`]):
//! - `architecture`: the image's must be the host's. A mismatch is refused:
//!   amphi only runs guests of the host architecture.
//! - `os`: must be linux (an empty `os` is taken as linux). Another OS is
//!   refused: it would need that OS's kernel in the microVM.
//! - `kernel.version`, `kernel.config`: the host kernel against the image's
//!   constraint and options; a miss makes the image need a VM. These only
//!   matter where the isolation is left to the image (`auto`): an image
//!   whose requirements the host meets is not run natively because of that
//!   when the policy says `vm`.
//! - `image.*` (the inference, see [`infer`]): each need the image
//!   scan's facts imply, against the host; a miss makes the image need a
//!   VM, and the guest kernel must then serve it too.
//! - Who decides the isolation (see [`super`] for the precedence): the
//!   policy (`policy.image`, `policy.trust`, `policy.default`: the first
//!   with an opinion decides, the others are listed as overridden), then
//!   `cli.isolation` (refused where it would lower the policy's vm; else
//!   it decides, and the image's opinion is listed as overridden), then
//!   `annotation.isolation`: the image's `vm` raises a `container` or
//!   `auto` policy to a microVM, its `container` or `auto` only counts
//!   where the policy says `auto` and is listed as ignored where the
//!   policy says `container` or `vm`. An `auto` result hands the choice to
//!   the requirements.
//! - A forced `container` is honoured even when the host misses the
//!   requirements; a `warning` reason says what is missed.
//! - For a VM, `host.kvm` says how it will run, and `kernel.select` names the
//!   guest kernel: with `--kernel`, that one (it must meet the requirements);
//!   else the preferred one (the policy's `[[image]] kernel`, else the
//!   image's `io.amphi.kernel`, which is listed as ignored when the policy
//!   names one) when it meets the requirements (else an error), otherwise
//!   the newest that meets them (PVM-enabled ones first on PVM hosts). A
//!   kernel whose config is unknown cannot prove a required option and is
//!   not chosen for an image that lists options; a bare option name needs
//!   `y` in a guest kernel (the guest cannot load modules).

use super::infer::{self, Inferred, Need};
use super::policy::Policy;
use super::requirements::{ConfigRequirement, Requirements, KEY_ISOLATION, KEY_KERNEL};
use super::{DispatchError, Isolation, IsolationChoice};
use crate::host::{HostInfo, KvmSupport};
use crate::image::scan::Fact;
use crate::kernel::{KernelConfig, KernelEntry, KernelVersion};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kernel series amphi can build itself (`amphi kernel build --version`),
/// newest first: what error messages suggest.
pub const BUILDABLE_SERIES: &[&str] = &["6.12", "6.1"];

/// A guest kernel the decision may pick (from the kernel catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateKernel {
    pub id: String,
    pub release: String,
    pub version: KernelVersion,
    /// None when the kernel's config is unknown.
    pub config: Option<KernelConfig>,
    /// PVM-enabled guest kernel.
    pub pvm: bool,
}

impl CandidateKernel {
    /// From a catalog entry (reads its config file).
    pub fn from_entry(e: &KernelEntry) -> Self {
        CandidateKernel {
            id: e.id.clone(),
            release: e.release.clone(),
            version: e.version,
            config: e.config(),
            pvm: e.pvm,
        }
    }
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct DecideInput<'a> {
    pub host: &'a HostInfo,
    /// The normalised image reference (see [`super::normalize_reference`]).
    pub reference: &'a str,
    pub requirements: &'a Requirements,
    pub policy: &'a Policy,
    /// `--isolation` on the command line (`Auto` when not given).
    pub cli: IsolationChoice,
    /// The guest kernels in the catalog, or the one `--kernel` named.
    pub kernels: &'a [CandidateKernel],
    /// `kernels` is the operator's `--kernel`: no preference (the policy's
    /// or the image's) applies.
    pub cli_kernel: bool,
    /// What the image scan says of the command that runs (empty when the
    /// image was not scanned): the inference rules ([`infer`]) turn it into
    /// requirements, unless the policy turns inference off.
    pub facts: &'a [Fact],
}

/// What a rule concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Satisfied.
    Ok,
    /// Not satisfied by the host: the image needs a microVM.
    NeedsVm,
    /// Decides for a microVM.
    ForcesVm,
    /// Decides for a native container.
    ForcesContainer,
    /// For information (an overridden opinion, how the VM will run...).
    Info,
    /// Honoured, but probably not what the image wants.
    Warning,
    /// Cannot run here (the decision fails).
    Refused,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::NeedsVm => "needs-vm",
            Outcome::ForcesVm => "forces-vm",
            Outcome::ForcesContainer => "forces-container",
            Outcome::Info => "info",
            Outcome::Warning => "warning",
            Outcome::Refused => "refused",
        })
    }
}

/// One rule's verdict: what was wanted, what there is, and the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// "architecture", "os", "kernel.version", "kernel.config",
    /// "cli.isolation", "annotation.isolation", "policy.image",
    /// "policy.trust", "policy.default", "host.kvm", "kernel.select".
    pub rule: String,
    pub wanted: String,
    pub have: String,
    pub outcome: Outcome,
    /// A human explanation ("" when the rest says it all).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Reason {
    fn new(
        rule: &str,
        wanted: impl Into<String>,
        have: impl Into<String>,
        outcome: Outcome,
        note: impl Into<String>,
    ) -> Reason {
        Reason {
            rule: rule.to_string(),
            wanted: wanted.into(),
            have: have.into(),
            outcome,
            note: note.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: wanted {}, have {}: {}",
            self.rule, self.wanted, self.have, self.outcome
        )?;
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}

/// The guest kernel chosen for a microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenKernel {
    pub id: String,
    pub release: String,
    pub version: KernelVersion,
}

/// How to run the image, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub isolation: Isolation,
    /// The guest kernel (microVMs only).
    pub kernel: Option<ChosenKernel>,
    /// Who decided the isolation: `--isolation` on the command line (the
    /// operator's override), a policy rule or default, or the image's
    /// `io.amphi.isolation` (which may only raise it to vm, or choose where
    /// the policy says auto).
    #[serde(default)]
    pub decided_by: String,
    /// Every rule checked, in order.
    pub reasons: Vec<Reason>,
    /// What the image scan found for the command that runs.
    #[serde(default)]
    pub facts: Vec<Fact>,
    /// The requirements inferred from those facts (none when the policy
    /// turns inference off).
    #[serde(default)]
    pub inferred: Vec<Inferred>,
    /// Additions to the guest kernel's command line the inferred needs
    /// ask for (microVMs only).
    #[serde(default)]
    pub guest_cmdline: Vec<String>,
    /// The most network the policy allows this image ("none", "private"
    /// or "host") and the rule that says so; None: no limit.
    #[serde(default)]
    pub network_limit: Option<(String, String)>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.isolation, &self.kernel) {
            (Isolation::Vm, Some(k)) => {
                writeln!(f, "isolation: vm (guest kernel {}, {})", k.id, k.release)?
            }
            (i, _) => writeln!(f, "isolation: {i}")?,
        }
        for r in &self.reasons {
            writeln!(f, "  {r}")?;
        }
        Ok(())
    }
}

fn refuse(rule: &str, message: String, reasons: Vec<Reason>) -> DispatchError {
    DispatchError::Refused {
        rule: rule.to_string(),
        message,
        reasons,
    }
}

/// Decides how to run the image. Pure: everything comes from `input`.
pub fn decide(input: &DecideInput) -> Result<Decision, DispatchError> {
    let mut reasons = Vec::new();
    check_architecture(input, &mut reasons)?;
    check_os(input, &mut reasons)?;
    // The host kernel against the requirements: what it misses.
    let mut misses: Vec<String> = Vec::new();
    kernel_version_rule(input, &mut reasons, &mut misses);
    kernel_config_rule(input, &mut reasons, &mut misses);
    let inferred = inferred_needs(input, &mut reasons, &mut misses);
    let native_ok = misses.is_empty();

    // Who decides the isolation: the policy, then the user's
    // `--isolation` (which may not lower the policy's vm), then the image,
    // which may only raise the result to a microVM.
    let (decider, choice, decided_by) = isolation_opinions(input, native_ok, &mut reasons)?;
    let mut isolation = None;
    match choice {
        IsolationChoice::Container => {
            isolation = Some(Isolation::Container);
            if !native_ok {
                reasons.push(Reason::new(
                    decider,
                    "container",
                    misses.join("; "),
                    Outcome::Warning,
                    format!("running natively anyway because of {decided_by}"),
                ));
            }
        }
        IsolationChoice::Vm => {}
        IsolationChoice::Auto if native_ok => isolation = Some(Isolation::Container),
        IsolationChoice::Auto => {}
    }
    if let Some(isolation) = isolation {
        return Ok(Decision {
            isolation,
            kernel: None,
            decided_by,
            reasons,
            facts: input.facts.to_vec(),
            inferred,
            guest_cmdline: Vec::new(),
            network_limit: network_limit(input),
        });
    }

    // A microVM.
    reasons.push(kvm_reason(input.host));
    let preferred = preferred_kernel(input, &mut reasons);
    let needs = Needs {
        req: input.requirements,
        inferred: &inferred,
    };
    let chosen = select_kernel(input, &needs, preferred, &mut reasons)?;
    let guest_cmdline = guest_cmdline(&inferred, &mut reasons);
    Ok(Decision {
        isolation: Isolation::Vm,
        kernel: Some(ChosenKernel {
            id: chosen.id.clone(),
            release: chosen.release.clone(),
            version: chosen.version,
        }),
        decided_by,
        reasons,
        facts: input.facts.to_vec(),
        inferred,
        guest_cmdline,
        network_limit: network_limit(input),
    })
}

/// The policy's network limit for the image.
fn network_limit(input: &DecideInput) -> Option<(String, String)> {
    input
        .policy
        .network_rule(input.reference)
        .map(|(n, rule)| (n.name().to_string(), rule))
}

/// The image's architecture must be the host's (a missing one is assumed
/// to be).
fn check_architecture(input: &DecideInput, reasons: &mut Vec<Reason>) -> Result<(), DispatchError> {
    let host = input.host;
    let req = input.requirements;
    let platform = match &req.variant {
        Some(v) => format!("{}/{v}", req.architecture),
        None => req.architecture.clone(),
    };
    if req.architecture.is_empty() {
        reasons.push(Reason::new(
            "architecture",
            "(unspecified)",
            &host.arch,
            Outcome::Info,
            "the image config names no architecture; assuming the host's",
        ));
    } else if req.architecture == host.arch {
        reasons.push(Reason::new(
            "architecture",
            &platform,
            &host.arch,
            Outcome::Ok,
            "",
        ));
    } else {
        reasons.push(Reason::new(
            "architecture",
            &platform,
            &host.arch,
            Outcome::Refused,
            "amphi only runs guests of the host architecture",
        ));
        return Err(refuse(
            "architecture",
            format!(
                "image {} is built for {platform}, but this host is {} ({}): neither a container nor a microVM can run it, because amphi only runs guests of the host architecture; use an image for {}",
                input.reference, host.arch, host.machine, host.arch
            ),
            std::mem::take(reasons),
        ));
    }

    Ok(())
}

/// The image's OS must be Linux (a missing one is assumed to be).
fn check_os(input: &DecideInput, reasons: &mut Vec<Reason>) -> Result<(), DispatchError> {
    let req = input.requirements;
    match req.os.as_str() {
        "" => reasons.push(Reason::new(
            "os",
            "(unspecified)",
            "linux",
            Outcome::Info,
            "the image config names no OS; assuming linux",
        )),
        "linux" => reasons.push(Reason::new("os", "linux", "linux", Outcome::Ok, "")),
        other => {
            reasons.push(Reason::new(
                "os",
                other,
                "linux",
                Outcome::Refused,
                "amphi runs Linux images only",
            ));
            return Err(refuse(
                "os",
                format!(
                    "image {} is for the {other} OS: amphi runs Linux images only, natively or in a microVM with a Linux guest kernel; running another OS in a microVM would need that OS's kernel, which is not supported",
                    input.reference
                ),
                std::mem::take(reasons),
            ));
        }
    }

    Ok(())
}

/// `io.amphi.kernel.version` against the host kernel's release.
fn kernel_version_rule(input: &DecideInput, reasons: &mut Vec<Reason>, misses: &mut Vec<String>) {
    let host = input.host;
    let req = input.requirements;
    match (&req.kernel_version, &host.kernel_version) {
        (None, _) => reasons.push(Reason::new(
            "kernel.version",
            "any",
            host.kernel_display(),
            Outcome::Ok,
            "the image sets no io.amphi.kernel.version",
        )),
        (Some(c), Some(v)) if c.matches(v) => reasons.push(Reason::new(
            "kernel.version",
            c.to_string(),
            v.to_string(),
            Outcome::Ok,
            format!("from {}", req.origin(super::KEY_KERNEL_VERSION)),
        )),
        (Some(c), have) => {
            let note = format!(
                "{}; from {}",
                if have.is_some() {
                    "the host kernel is outside the image's range"
                } else {
                    "the host kernel release is not a version"
                },
                req.origin(super::KEY_KERNEL_VERSION)
            );
            reasons.push(Reason::new(
                "kernel.version",
                c.to_string(),
                host.kernel_display(),
                Outcome::NeedsVm,
                note,
            ));
            misses.push(format!(
                "the image asks for kernel {c}, host is {}",
                host.kernel_display()
            ));
        }
    }
}

/// `io.amphi.kernel.config` against the host kernel's config.
fn kernel_config_rule(input: &DecideInput, reasons: &mut Vec<Reason>, misses: &mut Vec<String>) {
    let host = input.host;
    let req = input.requirements;
    if req.kernel_config.is_empty() {
        reasons.push(Reason::new(
            "kernel.config",
            "none",
            if host.config.is_some() {
                host.config_source.as_str()
            } else {
                "unknown"
            },
            Outcome::Ok,
            "the image sets no io.amphi.kernel.config",
        ));
    } else if let Some(config) = &host.config {
        for r in &req.kernel_config {
            let ok = r.met_by(config, false);
            let have = r.describe_have(config);
            if !ok {
                misses.push(format!("the image needs {r}, host has {have}"));
            }
            reasons.push(Reason::new(
                "kernel.config",
                r.to_string(),
                have,
                if ok { Outcome::Ok } else { Outcome::NeedsVm },
                "",
            ));
        }
    } else {
        let wanted = list(&req.kernel_config);
        reasons.push(Reason::new(
            "kernel.config",
            &wanted,
            "unknown",
            Outcome::NeedsVm,
            format!("cannot prove the options natively: {}", host.config_source),
        ));
        misses.push(format!(
            "the image needs {wanted}, the host kernel config is unknown"
        ));
    }
}

/// What the image's own files say (the image scan), unless the policy
/// turns inference off for this image; each need the host misses is a miss.
fn inferred_needs(
    input: &DecideInput,
    reasons: &mut Vec<Reason>,
    misses: &mut Vec<String>,
) -> Vec<Inferred> {
    let host = input.host;
    let mut inferred = match input.policy.infer_rule(input.reference) {
        Some((false, from)) => {
            if !input.facts.is_empty() {
                reasons.push(Reason::new(
                    "policy.infer",
                    "inference from the image's files",
                    from,
                    Outcome::Info,
                    "turned off by the policy: the image scan's facts are not used",
                ));
            }
            Vec::new()
        }
        _ => infer::infer(input.facts),
    };
    for i in &mut inferred {
        let reason = infer::host_reason(i, host);
        if !i.host_ok {
            misses.push(format!("{} ({})", i.describe(), i.host_has));
        }
        reasons.push(reason);
    }
    inferred
}

/// How the microVM will run on this host's KVM.
fn kvm_reason(host: &HostInfo) -> Reason {
    match host.kvm {
        KvmSupport::Hardware => Reason::new(
            "host.kvm",
            "a microVM",
            host.kvm.to_string(),
            Outcome::Info,
            "the built-in VMM",
        ),
        KvmSupport::Pvm => Reason::new(
            "host.kvm",
            "a microVM",
            host.kvm.to_string(),
            Outcome::Info,
            "the built-in VMM with a PVM-enabled guest kernel, else QEMU in software emulation",
        ),
        KvmSupport::Unrecognized | KvmSupport::None => Reason::new(
            "host.kvm",
            "a microVM",
            host.kvm.to_string(),
            Outcome::Info,
            "no usable KVM: the microVM runs under QEMU software emulation (slow)",
        ),
    }
}

/// The guest kernel wanted: the operator's `--kernel` (the only candidate
/// then: None here), else the policy's `[[image]] kernel`, else the image's
/// `io.amphi.kernel`; with where it came from.
fn preferred_kernel(input: &DecideInput, reasons: &mut Vec<Reason>) -> Option<(String, String)> {
    let req = input.requirements;
    let image_rule = input.policy.image_rule(input.reference);
    let policy_kernel = image_rule.and_then(|(n, rule)| {
        rule.kernel.clone().map(|k| {
            (
                k,
                format!(
                    "[[image]] rule {} match {:?} in {}",
                    n + 1,
                    rule.pattern,
                    input.policy.describe()
                ),
            )
        })
    });
    let image_kernel = req.kernel.clone().map(|k| (k, req.origin(KEY_KERNEL)));
    if input.cli_kernel {
        if let Some((k, from)) = policy_kernel.iter().chain(&image_kernel).next() {
            reasons.push(Reason::new(
                "kernel.select",
                format!("{k} (from {from})"),
                "--kernel on the command line",
                Outcome::Info,
                "overridden by the operator's --kernel",
            ));
        }
        None
    } else if let Some(p) = policy_kernel {
        if let Some((k, from)) = &image_kernel {
            reasons.push(Reason::new(
                "kernel.select",
                format!("{k} (from {from})"),
                format!("{} (from {})", p.0, p.1),
                Outcome::Info,
                "ignored: the policy names the kernel, an image's preference applies only where the policy has none",
            ));
        }
        Some(p)
    } else {
        image_kernel
    }
}

/// What the inferred needs add to the guest kernel's command line.
fn guest_cmdline(inferred: &[Inferred], reasons: &mut Vec<Reason>) -> Vec<String> {
    let mut guest_cmdline: Vec<String> = Vec::new();
    for i in inferred {
        if let Some(c) = infer::guest_cmdline(&i.need) {
            if !guest_cmdline.iter().any(|x| x == c) {
                guest_cmdline.push(c.to_string());
            }
        }
    }
    if !guest_cmdline.is_empty() {
        reasons.push(Reason::new(
            "kernel.cmdline",
            "what the inferred needs ask of the guest",
            guest_cmdline.join(" "),
            Outcome::Info,
            "added to the guest kernel's command line",
        ));
    }
    guest_cmdline
}

/// Records every opinion on the isolation and returns who decided, the
/// choice and a description of the decider. Precedence: `--isolation` on
/// the command line (the operator's override: nothing else is consulted);
/// else the policy's first matching `[[image]]` rule with an isolation, its
/// first matching `[[trust]]` rule, its `default_isolation`; the image's
/// `io.amphi.isolation` then only counts when it asks for `vm`, or when
/// the policy says `auto` (the image is then free to choose, as its
/// requirements are).
/// The outcome that records a choice forcing the isolation.
fn forces(c: IsolationChoice) -> Outcome {
    match c {
        IsolationChoice::Container => Outcome::ForcesContainer,
        IsolationChoice::Vm => Outcome::ForcesVm,
        IsolationChoice::Auto => Outcome::Info,
    }
}

/// An opinion on the isolation: the rule, its choice, where it comes from.
type Opinion = (&'static str, IsolationChoice, String);

fn isolation_opinions(
    input: &DecideInput,
    native_ok: bool,
    reasons: &mut Vec<Reason>,
) -> Result<Opinion, DispatchError> {
    let req = input.requirements;
    let policy = policy_opinions(input);
    let image = req
        .isolation
        .map(|i| ("annotation.isolation", i, req.origin(KEY_ISOLATION)));
    // The user's `--isolation`: it decides over the image and the
    // inference, and over the policy except where the policy says vm (a
    // user may ask for more isolation than the policy, never less).
    if input.cli != IsolationChoice::Auto {
        return cli_decides(input, &policy, image.as_ref(), reasons);
    }
    // The policy: its first opinion decides.
    let (prule, pchoice, pfrom) = policy[0].clone();
    let image_raises =
        matches!(image, Some((_, IsolationChoice::Vm, _))) && pchoice != IsolationChoice::Vm;
    let (pnote, poutcome) = if image_raises {
        (
            "raised to vm by the image's io.amphi.isolation".to_string(),
            Outcome::Info,
        )
    } else if pchoice == IsolationChoice::Auto {
        let who = if image.is_some() {
            "the image's io.amphi.isolation decides"
        } else if native_ok {
            "the image's requirements decide: the host meets them"
        } else {
            "the image's requirements decide"
        };
        (who.to_string(), Outcome::Info)
    } else {
        (String::new(), forces(pchoice))
    };
    reasons.push(Reason::new(
        prule,
        pchoice.to_string(),
        &pfrom,
        poutcome,
        pnote,
    ));
    for (rule, c, src) in &policy[1..] {
        reasons.push(Reason::new(
            rule,
            c.to_string(),
            src,
            Outcome::Info,
            format!("overridden by {prule}"),
        ));
    }

    // The image: it may ask for more isolation, never less.
    let Some(image) = image else {
        return Ok((prule, pchoice, pfrom));
    };
    Ok(image_opinion(
        (prule, pchoice, pfrom),
        image,
        image_raises,
        reasons,
    ))
}

/// The policy's opinions, first the one that counts: its first matching
/// `[[image]]` rule with an isolation, its first matching `[[trust]]` rule,
/// its `default_isolation`.
fn policy_opinions(input: &DecideInput) -> Vec<Opinion> {
    let mut policy: Vec<Opinion> = Vec::new();
    if let Some((n, rule)) = input.policy.image_rule(input.reference) {
        if let Some(i) = rule.isolation {
            policy.push((
                "policy.image",
                i,
                format!(
                    "[[image]] rule {} match {:?} in {}",
                    n + 1,
                    rule.pattern,
                    input.policy.describe()
                ),
            ));
        }
    }
    if let Some((n, rule)) = input.policy.trust_rule(input.reference) {
        policy.push((
            "policy.trust",
            rule.isolation,
            format!(
                "[[trust]] rule {} match {:?} in {}",
                n + 1,
                rule.pattern,
                input.policy.describe()
            ),
        ));
    }
    policy.push((
        "policy.default",
        input.policy.default_isolation,
        format!("default_isolation of the {}", input.policy.describe()),
    ));
    policy
}

/// `--isolation` on the command line decides, unless it would lower the
/// policy's vm.
fn cli_decides(
    input: &DecideInput,
    policy: &[Opinion],
    image: Option<&Opinion>,
    reasons: &mut Vec<Reason>,
) -> Result<Opinion, DispatchError> {
    let from = format!("--isolation {} on the command line", input.cli);
    let (prule, pchoice, pfrom) = &policy[0];
    if input.cli == IsolationChoice::Container && *pchoice == IsolationChoice::Vm {
        reasons.push(Reason::new(prule, "vm", pfrom, Outcome::ForcesVm, ""));
        reasons.push(Reason::new(
            "cli.isolation",
            "container",
            &from,
            Outcome::Refused,
            format!("{prule} says vm: the policy may not be lowered"),
        ));
        return Err(refuse(
            "cli.isolation",
            format!(
                "--isolation container is not allowed for image {}: the operator's policy ({pfrom}) says it runs in a microVM, and a command line may ask for more isolation than the policy, never less; run it without --isolation, or change the policy",
                input.reference
            ),
            std::mem::take(reasons),
        ));
    }
    reasons.push(Reason::new(
        "cli.isolation",
        input.cli.to_string(),
        &from,
        forces(input.cli),
        "the user's choice: the image's opinion and the inference are not consulted",
    ));
    for (rule, c, src) in policy.iter().chain(image) {
        reasons.push(Reason::new(
            rule,
            c.to_string(),
            src,
            Outcome::Info,
            "overridden by --isolation on the command line",
        ));
    }
    Ok(("cli.isolation", input.cli, from))
}

/// The image's `io.amphi.isolation` against the policy's choice: it counts
/// when it raises the isolation to vm, or when the policy says auto.
fn image_opinion(
    (prule, pchoice, pfrom): Opinion,
    (irule, ichoice, ifrom): Opinion,
    image_raises: bool,
    reasons: &mut Vec<Reason>,
) -> Opinion {
    match (pchoice, ichoice) {
        (_, IsolationChoice::Vm) if image_raises => {
            reasons.push(Reason::new(
                irule,
                "vm",
                &ifrom,
                Outcome::ForcesVm,
                format!("the image asks for more isolation than {prule} ({pchoice})"),
            ));
            (irule, IsolationChoice::Vm, ifrom)
        }
        (IsolationChoice::Auto, i) => {
            reasons.push(Reason::new(
                irule,
                i.to_string(),
                &ifrom,
                forces(i),
                format!("{prule} is auto: the image chooses"),
            ));
            (irule, i, ifrom)
        }
        (p, i) if p == i => {
            reasons.push(Reason::new(
                irule,
                i.to_string(),
                &ifrom,
                Outcome::Info,
                format!("the same as {prule}"),
            ));
            (prule, pchoice, pfrom)
        }
        (p, i) => {
            reasons.push(Reason::new(
                irule,
                i.to_string(),
                &ifrom,
                Outcome::Info,
                format!(
                    "ignored: {prule} says {p}, and an image may ask for more isolation than the policy, never less"
                ),
            ));
            (prule, pchoice, pfrom)
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything a guest kernel must meet: the image's declared requirements
/// and the inferred ones.
struct Needs<'a> {
    req: &'a Requirements,
    inferred: &'a [Inferred],
}

impl Needs<'_> {
    /// The config options a guest kernel needs: the image's, then the
    /// inferred needs' (deduplicated).
    fn config(&self) -> Vec<ConfigRequirement> {
        let mut out = self.req.kernel_config.clone();
        for i in self.inferred {
            for r in infer::guest_config(&i.need) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        out
    }

    /// The lowest kernel version the inferred needs allow, and the fact
    /// that asks for it.
    fn inferred_min(&self) -> Option<(KernelVersion, &Inferred)> {
        self.inferred
            .iter()
            .filter_map(|i| match &i.need {
                Need::KernelAtLeast { version } => Some((*version, i)),
                _ => None,
            })
            .max_by(|a, b| a.0.cmp(&b.0))
    }

    /// Why `k` does not meet them (empty when it does).
    fn misses(&self, k: &CandidateKernel) -> Vec<String> {
        let req = self.req;
        let mut out = Vec::new();
        if let Some(c) = &req.kernel_version {
            if !c.matches(&k.version) {
                out.push(format!("version {} is outside {c}", k.version));
            }
        }
        if let Some((min, i)) = self.inferred_min() {
            if k.version < min {
                out.push(format!(
                    "version {} is older than {min}, which {} asks for",
                    k.version,
                    i.fact.path()
                ));
            }
        }
        let config = self.config();
        if !config.is_empty() {
            match &k.config {
                None => out.push(format!(
                    "its config is unknown, so it cannot prove {}",
                    list(&config)
                )),
                Some(kc) => {
                    for r in &config {
                        if !r.met_by(kc, true) {
                            let extra = if kc.get(&r.name).map(String::as_str) == Some("m")
                                && matches!(r.want, super::ConfigWant::Enabled)
                            {
                                " (a module: the guest cannot load it)"
                            } else {
                                ""
                            };
                            out.push(format!("needs {r}, has {}{extra}", r.describe_have(kc)));
                        }
                    }
                }
            }
        }
        out
    }

    /// What the image needs of a guest kernel, for messages.
    fn describe(&self) -> String {
        let req = self.req;
        let mut parts = Vec::new();
        if let Some(c) = &req.kernel_version {
            parts.push(format!("version {c}"));
        }
        if let Some((min, i)) = self.inferred_min() {
            parts.push(format!("version >= {min} ({})", i.fact));
        }
        let config = self.config();
        if !config.is_empty() {
            parts.push(format!("config {}", list(&config)));
        }
        if parts.is_empty() {
            "any kernel".to_string()
        } else {
            parts.join(" and ")
        }
    }

    /// The command(s) that would give the catalog a kernel meeting them.
    fn fix_hint(&self) -> String {
        let add = "add a kernel that meets them with `amphi kernel add PATH --config CONFIG`";
        let min = self.inferred_min().map(|(v, _)| v);
        let buildable: Vec<&str> = BUILDABLE_SERIES
            .iter()
            .copied()
            .filter(|s| {
                let ok_min = match (min, KernelVersion::parse(s)) {
                    (Some(m), Ok(sv)) => (sv.major, sv.minor) >= (m.major, m.minor),
                    _ => true,
                };
                let ok_req = match &self.req.kernel_version {
                    Some(c) => c.first_allowed_series(&[s]).is_some(),
                    None => true,
                };
                ok_min && ok_req
            })
            .collect();
        match buildable.first() {
            Some(s) => format!("run `amphi kernel build --version {s}`, or {add}"),
            None => format!(
                "no kernel series amphi builds ({}) satisfies them: {add}",
                BUILDABLE_SERIES.join(", ")
            ),
        }
    }
}

/// A kernel by ID, version ("6.12.57"), series ("6.12", newest) or unique ID
/// prefix, as [`crate::kernel::Catalog::get`] finds them.
fn find_kernel<'a>(
    query: &str,
    kernels: &'a [CandidateKernel],
) -> Result<&'a CandidateKernel, String> {
    if let Some(k) = kernels.iter().find(|k| k.id == query) {
        return Ok(k);
    }
    // A bare version or series names kernels by version only: "6.1" must
    // not reach 6.12.57-... through ID prefixes.
    let version_query = query.chars().all(|c| c.is_ascii_digit() || c == '.');
    if version_query {
        if let Ok(v) = KernelVersion::parse(query) {
            let series = query.matches('.').count() == 1;
            let best = kernels
                .iter()
                .filter(|k| {
                    if series {
                        k.version.major == v.major && k.version.minor == v.minor
                    } else {
                        k.version == v
                    }
                })
                .max_by(|a, b| a.version.cmp(&b.version).then_with(|| b.id.cmp(&a.id)));
            if let Some(k) = best {
                return Ok(k);
            }
        }
    }
    let prefixed: Vec<&CandidateKernel> = kernels
        .iter()
        .filter(|k| !version_query && k.id.starts_with(query))
        .collect();
    match prefixed.as_slice() {
        [one] => Ok(one),
        [] if kernels.is_empty() => Err("the kernel catalog is empty".to_string()),
        [] => Err(format!(
            "it is not in the kernel catalog (have: {})",
            kernels
                .iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        many => Err(format!(
            "it matches several kernels ({}): give the full ID",
            many.iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn select_kernel<'a>(
    input: &DecideInput<'a>,
    needs: &Needs,
    preferred: Option<(String, String)>,
    reasons: &mut Vec<Reason>,
) -> Result<&'a CandidateKernel, DispatchError> {
    let k = match preferred {
        Some((query, from)) => preferred_candidate(input, needs, &query, &from, reasons)?,
        None => newest_candidate(input, needs, reasons)?,
    };
    if input.host.kvm == KvmSupport::Pvm && !k.pvm {
        reasons.push(Reason::new(
            "kernel.select",
            "a PVM-enabled guest kernel",
            format!("{} (not PVM-enabled)", k.id),
            Outcome::Info,
            "on this PVM host only a PVM-enabled guest kernel runs under KVM: this one runs under QEMU in software emulation (slow); add a PVM-enabled kernel with `amphi kernel add PATH --pvm`",
        ));
    }
    Ok(k)
}

/// The preferred kernel (`query`, asked for by `from`), which must exist
/// and meet the needs.
fn preferred_candidate<'a>(
    input: &DecideInput<'a>,
    needs: &Needs,
    query: &str,
    from: &str,
    reasons: &mut Vec<Reason>,
) -> Result<&'a CandidateKernel, DispatchError> {
    let k = match find_kernel(query, input.kernels) {
        Ok(k) => k,
        Err(why) => {
            let build = if BUILDABLE_SERIES.contains(&query) {
                format!("run `amphi kernel build --version {query}` or ")
            } else {
                String::new()
            };
            let message = format!(
                "preferred guest kernel {query:?} (from {from}): {why}; {build}add it with `amphi kernel add PATH --config CONFIG`"
            );
            reasons.push(Reason::new(
                "kernel.select",
                format!("{query} (from {from})"),
                "not found",
                Outcome::Refused,
                why,
            ));
            return Err(refuse("kernel.select", message, std::mem::take(reasons)));
        }
    };
    let misses = needs.misses(k);
    if !misses.is_empty() {
        let why = misses.join("; ");
        reasons.push(Reason::new(
            "kernel.select",
            format!("{query} (from {from}) meeting {}", needs.describe()),
            &k.id,
            Outcome::Refused,
            &why,
        ));
        return Err(refuse(
            "kernel.select",
            format!(
                "preferred guest kernel {} (asked for as {query:?} by {from}) does not meet the image's requirements: {why}; choose another kernel or drop the preference",
                k.id
            ),
            std::mem::take(reasons),
        ));
    }
    reasons.push(Reason::new(
        "kernel.select",
        format!("{query} (from {from}) meeting {}", needs.describe()),
        format!("{} ({})", k.id, k.release),
        Outcome::Ok,
        "the preferred kernel",
    ));
    Ok(k)
}

/// The newest kernel that meets the needs (on a PVM host, the newest
/// PVM-enabled one first).
fn newest_candidate<'a>(
    input: &DecideInput<'a>,
    needs: &Needs,
    reasons: &mut Vec<Reason>,
) -> Result<&'a CandidateKernel, DispatchError> {
    let pvm_host = input.host.kvm == KvmSupport::Pvm;
    let mut meeting: Vec<&CandidateKernel> = input
        .kernels
        .iter()
        .filter(|k| needs.misses(k).is_empty())
        .collect();
    meeting.sort_by(|a, b| b.version.cmp(&a.version).then_with(|| a.id.cmp(&b.id)));
    let pick = if pvm_host {
        meeting
            .iter()
            .find(|k| k.pvm)
            .or_else(|| meeting.first())
            .copied()
    } else {
        meeting.first().copied()
    };
    let Some(k) = pick else {
        let detail = if input.kernels.is_empty() {
            "the kernel catalog is empty".to_string()
        } else {
            input
                .kernels
                .iter()
                .map(|k| format!("{}: {}", k.id, needs.misses(k).join("; ")))
                .collect::<Vec<_>>()
                .join("; ")
        };
        reasons.push(Reason::new(
            "kernel.select",
            needs.describe(),
            "no kernel meets it",
            Outcome::Refused,
            &detail,
        ));
        return Err(refuse(
            "kernel.select",
            format!(
                "image {} needs a microVM, but no guest kernel in the catalog meets its requirements ({}): {detail}. To fix: {}",
                input.reference,
                needs.describe(),
                needs.fix_hint()
            ),
            std::mem::take(reasons),
        ));
    };
    let note = if pvm_host && k.pvm {
        "the newest PVM-enabled kernel that meets them"
    } else {
        "the newest kernel that meets them"
    };
    reasons.push(Reason::new(
        "kernel.select",
        needs.describe(),
        format!("{} ({})", k.id, k.release),
        Outcome::Ok,
        note,
    ));
    Ok(k)
}

#[cfg(test)]
mod tests;
