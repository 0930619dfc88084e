//! Why a run failed, typed: the CLI alone turns a [`RunError`] into text
//! and into an exit status (through [`RunError::failure`]).

use crate::container::launch::LaunchError;
use crate::container::sync::ChildError;
use crate::dispatch::PlanError;
use crate::sys::error::StepError;
use std::time::Duration;

/// Exit status when `--timeout` stopped the run (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;

/// The kind of a failure, which decides the exit status the CLI gives a
/// run, as docker does: amphi's own error (125), a command that cannot be
/// run (126) or is not found (127), `--timeout` (124, as timeout(1)), or
/// amphi interrupted by a signal (128+N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Amphi,
    CannotInvoke,
    NotFound,
    TimedOut,
    Signalled(i32),
}

impl Failure {
    /// The exit status for the kind, as docker uses them. Only the program
    /// entry points ask (the CLI, and the guest init for its error frame).
    pub fn exit_status(self) -> i32 {
        use crate::sys::exit::{EXIT_AMPHI, EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND};
        match self {
            Failure::Amphi => EXIT_AMPHI,
            Failure::CannotInvoke => EXIT_CANNOT_INVOKE,
            Failure::NotFound => EXIT_NOT_FOUND,
            Failure::TimedOut => EXIT_TIMEOUT,
            Failure::Signalled(s) => 128 + s,
        }
    }

    /// A short token for the kind (the detached monitor's report to its
    /// caller carries it across the pipe).
    pub fn token(self) -> String {
        match self {
            Failure::Amphi => "amphi".into(),
            Failure::CannotInvoke => "cannot-invoke".into(),
            Failure::NotFound => "not-found".into(),
            Failure::TimedOut => "timed-out".into(),
            Failure::Signalled(s) => format!("signal-{s}"),
        }
    }

    /// The kind a [`Failure::token`] names (amphi's own for anything else).
    pub fn from_token(t: &str) -> Failure {
        match t {
            "cannot-invoke" => Failure::CannotInvoke,
            "not-found" => Failure::NotFound,
            "timed-out" => Failure::TimedOut,
            t => t
                .strip_prefix("signal-")
                .and_then(|s| s.parse().ok())
                .map_or(Failure::Amphi, Failure::Signalled),
        }
    }
}

/// A failed run, on either path. Messages name the object and the problem;
/// a cause is kept as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag or an argument cannot be used as given.
    #[error("{0}")]
    Usage(String),
    /// The image could not be found or read, or the dispatcher refused.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The runtime spec could not be built from the image and the flags.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The container's runtime state could not be made or read.
    #[error(transparent)]
    State(#[from] crate::container::state::StateError),
    /// The container could not be started (its kind says whether the
    /// command was missing, could not be run, or the setup failed).
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A step failed for a cause of another type (an I/O error on a file
    /// or a resource, another layer's error): what was being done and why.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The microVM or its guest failed; the backend's log tells more.
    #[error("{0}")]
    Vm(String),
    /// The guest broke the channel protocol.
    #[error("guest protocol violation: {0}; the microVM was stopped")]
    Protocol(String),
    /// `--timeout` ended the microVM.
    #[error("--timeout: the microVM ran longer than {} s and was stopped", .0.as_secs_f64())]
    TimedOut(Duration),
    /// A signal ended the run before the workload could end by itself.
    #[error("{message}")]
    Signalled { signal: i32, message: String },
    /// A failure reported by another process (the guest's init, a
    /// detached run's monitor), with its kind.
    #[error("{message}")]
    Reported { failure: Failure, message: String },
    /// amphi's own error, with nothing below it to name.
    #[error("{0}")]
    Failed(String),
}

impl RunError {
    /// What failed, for the exit status.
    pub fn failure(&self) -> Failure {
        match self {
            RunError::Launch(LaunchError::Child(ChildError::NotFound { .. })) => Failure::NotFound,
            RunError::Launch(LaunchError::Child(ChildError::NotExecutable { .. })) => {
                Failure::CannotInvoke
            }
            RunError::TimedOut(_) => Failure::TimedOut,
            RunError::Signalled { signal, .. } => Failure::Signalled(*signal),
            RunError::Reported { failure, .. } => *failure,
            _ => Failure::Amphi,
        }
    }

    /// An I/O failure on `what` (a path, a pipe, ...).
    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> RunError {
        RunError::Step(StepError::new(what, source))
    }

    /// A step that failed for `source`; `what` names it ("" when the cause
    /// says it all).
    pub fn step(
        what: impl std::fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> RunError {
        RunError::Step(StepError::new(what, source))
    }

    /// A cause that says it all.
    pub fn cause(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RunError {
        RunError::step("", source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_comes_from_the_type_not_the_text() {
        let not_found = RunError::Launch(LaunchError::Child(ChildError::NotFound {
            program: "x".into(),
            searched_path: true,
        }));
        assert_eq!(not_found.failure(), Failure::NotFound);
        let denied = RunError::Launch(LaunchError::Child(ChildError::exec("/x", libc::EACCES)));
        assert_eq!(denied.failure(), Failure::CannotInvoke);
        // A setup failure whose text looks like a missing program is amphi's.
        let setup = RunError::Launch(LaunchError::Child(ChildError::setup(
            "mounts",
            "exec x: executable file not found in $PATH",
        )));
        assert_eq!(setup.failure(), Failure::Amphi);
        let runtime = RunError::Launch(LaunchError::Runtime(
            crate::container::launch::ParentError::DiedDuringSetup,
        ));
        assert_eq!(runtime.failure(), Failure::Amphi);
        let text = RunError::Failed("exec x: executable file not found in $PATH".into());
        assert_eq!(text.failure(), Failure::Amphi);
        assert_eq!(
            RunError::TimedOut(Duration::from_secs(2)).failure(),
            Failure::TimedOut
        );
    }

    #[test]
    fn tokens_round_trip() {
        for f in [
            Failure::Amphi,
            Failure::CannotInvoke,
            Failure::NotFound,
            Failure::TimedOut,
            Failure::Signalled(15),
        ] {
            assert_eq!(Failure::from_token(&f.token()), f);
        }
        assert_eq!(Failure::from_token("125"), Failure::Amphi);
        assert_eq!(Failure::NotFound.exit_status(), 127);
        assert_eq!(Failure::CannotInvoke.exit_status(), 126);
        assert_eq!(Failure::Amphi.exit_status(), 125);
        assert_eq!(Failure::TimedOut.exit_status(), 124);
        assert_eq!(Failure::Signalled(15).exit_status(), 143);
    }

    #[test]
    fn messages_keep_their_cause_and_its_text() {
        let e = RunError::io(
            "/x/config.json",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(
            e.to_string().starts_with("/x/config.json: No space left"),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
        let e = RunError::cause("plain words".to_string());
        assert_eq!(e.to_string(), "plain words");
    }
}
