//! The dispatcher: what an image requires ([`Requirements`]), what the site
//! allows ([`Policy`]), and the decision between a native container and a
//! microVM with a chosen guest kernel ([`decide`], a pure function whose
//! [`Decision`] always carries its [`Reason`]s and who decided).
//!
//! The policy is the authority; the image is hostile. Precedence of who
//! decides the isolation:
//! 1. The policy: its first matching `[[image]]` rule that has an
//!    `isolation`, else its first matching `[[trust]]` rule, else its
//!    `default_isolation` (`auto` without a policy file).
//! 2. `--isolation container|vm` on the command line: it decides over the
//!    image and the inference, and over the policy except that it may not
//!    lower the policy's `vm` (refused).
//! 3. The image's `io.amphi.isolation` (label or annotation) may only ask
//!    for more: its `vm` turns a policy's `container` or `auto` into a
//!    microVM; its `container` or `auto` never lowers a policy's `vm`, nor
//!    turns a policy's `container` into `auto`. Only where the policy says
//!    `auto` does the image's `container` or `auto` count.
//! 4. `auto`: the image's requirements decide, declared (annotations) and
//!    inferred from its files ([`infer`], unless the policy says
//!    `infer = false`): native only when the architecture matches, the OS
//!    is Linux and the host kernel meets them all. Requirements never
//!    bring a policy's `vm` down to a container.
//!
//! The guest kernel: `--kernel`, else the policy's `[[image]] kernel`, else
//! the image's `io.amphi.kernel`, else the newest catalog kernel that meets
//! the image's requirements. Policy patterns never cross a registry
//! boundary (see `policy.rs` for the pattern rules).

pub mod backend;
pub mod bundle;
mod constraint;
mod decide;
mod facts;
pub mod infer;
mod plan;
mod policy;
mod requirements;
mod resolve;

pub use constraint::{Comparator, Op, PartialVersion, VersionConstraint};
pub use decide::{
    decide, CandidateKernel, ChosenKernel, DecideInput, Decision, Outcome, Reason, BUILDABLE_SERIES,
};
pub use facts::{command_facts, image_scan};
pub use plan::{
    plan, GuestKernel, HostSummary, Plan, PlanError, PlanRequest, ScanReport, Target, VmPlan,
};
pub use policy::{
    glob_match, normalize_reference, reference_matches, ImageRule, Policy, TrustRule,
    DEFAULT_POLICY_PATH,
};
pub use requirements::{
    image_requirements, manifest_annotations, ConfigRequirement, ConfigWant, KeySource,
    Requirements, KEY_ISOLATION, KEY_KERNEL, KEY_KERNEL_CONFIG, KEY_KERNEL_VERSION,
};
pub use resolve::{resolve_image, ResolvedImage};

use crate::image::store::StoreError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Isolation as asked for (command line, annotation, policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationChoice {
    /// Let the image's requirements and the host decide.
    #[default]
    Auto,
    Container,
    Vm,
}

impl FromStr for IsolationChoice {
    type Err = DispatchError;
    fn from_str(s: &str) -> Result<Self, DispatchError> {
        match s {
            "auto" => Ok(IsolationChoice::Auto),
            "container" => Ok(IsolationChoice::Container),
            "vm" => Ok(IsolationChoice::Vm),
            other => Err(DispatchError::BadIsolation(other.to_string())),
        }
    }
}

impl fmt::Display for IsolationChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IsolationChoice::Auto => "auto",
            IsolationChoice::Container => "container",
            IsolationChoice::Vm => "vm",
        })
    }
}

/// Isolation as decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A native Linux container on the host kernel.
    Container,
    /// A microVM with its own guest kernel.
    Vm,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Vm => "vm",
        })
    }
}

/// Everything that can go wrong while deciding.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{origin} {key}={value:?} is malformed: {reason}")]
    BadAnnotation {
        key: String,
        value: String,
        origin: KeySource,
        reason: String,
    },
    #[error("reading manifest {digest}: {error}")]
    Store { digest: String, error: StoreError },
    #[error("manifest {digest} is malformed: {reason}")]
    BadManifest { digest: String, reason: String },
    #[error("{}: {}{reason}", path.display(), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    BadPolicy {
        path: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    #[error("policy file {}: {error}", path.display())]
    PolicyIo {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    BadReference(String),
    #[error("invalid isolation {0:?}: expected auto, container or vm")]
    BadIsolation(String),
    /// Neither a container nor a microVM can run the image here; `reasons`
    /// holds every rule checked up to the refusal (the last one refused).
    #[error("{message}")]
    Refused {
        rule: String,
        message: String,
        reasons: Vec<Reason>,
    },
}

impl DispatchError {
    /// The reasons gathered before a refusal (empty for other errors).
    pub fn reasons(&self) -> &[Reason] {
        match self {
            DispatchError::Refused { reasons, .. } => reasons,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_choices() {
        for (s, want) in [
            ("auto", IsolationChoice::Auto),
            ("container", IsolationChoice::Container),
            ("vm", IsolationChoice::Vm),
        ] {
            let got: IsolationChoice = s.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), s);
        }
        let e = "VM".parse::<IsolationChoice>().unwrap_err();
        assert!(e.to_string().contains("\"VM\""), "{e}");
        assert_eq!(IsolationChoice::default(), IsolationChoice::Auto);
        assert_eq!(serde_json::to_string(&Isolation::Vm).unwrap(), "\"vm\"");
    }
}
