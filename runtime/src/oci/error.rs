//! The errors of the OCI runtime commands. The CLI prints them (as runc
//! does: one line, or a log entry for the caller) and chooses the status.

use crate::container::caps::CapsError;
use crate::container::cgroups::CgroupError;
use crate::container::config::ConfigError;
use crate::container::launch::LaunchError;
use crate::container::state::StateError;
use crate::sys::error::StepError;

/// Why an OCI runtime command failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The command cannot be done as asked: bad input, or a container in
    /// the wrong state. The message names the object and the problem.
    #[error("{0}")]
    Invalid(String),
    /// The bundle's config.json cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The container (or the process for `exec`) could not be started.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The container's state is missing, unreadable, or its id invalid.
    #[error(transparent)]
    State(#[from] StateError),
    /// A capability name (`exec --cap`) that is not one.
    #[error(transparent)]
    Caps(#[from] CapsError),
    /// The container's cgroups could not be read or changed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A step failed for a cause of another type (an I/O error on a file
    /// or a resource, the engine's cgroups, hooks or state file): what was
    /// being done and why.
    #[error(transparent)]
    Step(#[from] StepError),
}

impl OciError {
    pub fn io(what: impl std::fmt::Display, source: impl Into<std::io::Error>) -> OciError {
        OciError::Step(StepError::new(what, source.into()))
    }

    /// A step that failed for `source` (another layer's error).
    pub fn step(
        what: impl std::fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> OciError {
        OciError::Step(StepError::new(what, source))
    }

    /// Another layer's error whose message says it all.
    pub fn cause(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> OciError {
        OciError::step("", source)
    }
}

impl From<String> for OciError {
    fn from(m: String) -> Self {
        OciError::Invalid(m)
    }
}

impl From<&str> for OciError {
    fn from(m: &str) -> Self {
        OciError::Invalid(m.to_string())
    }
}
