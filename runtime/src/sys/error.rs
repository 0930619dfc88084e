//! The error of a step that failed for a cause of another type, which the
//! error enums of the layers above share.

/// What was being done (empty when the cause says it all) and the cause,
/// kept as the error's source: `{what}: {cause}`.
#[derive(Debug, thiserror::Error)]
#[error("{}{source}", if what.is_empty() { String::new() } else { format!("{what}: ") })]
pub struct StepError {
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StepError {
    pub fn new(
        what: impl std::fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StepError {
        StepError {
            what: what.to_string(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_then_why_and_keeps_the_cause() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = StepError::new("/x/config.json", io);
        assert!(
            e.to_string().starts_with("/x/config.json: No space left"),
            "{e}"
        );
        let cause = std::error::Error::source(&e).expect("a source");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(StepError::new("", "plain words").to_string(), "plain words");
    }
}
