//! The VMM library's `tracing` events on stderr, one line each, as amphi
//! prints its own (`  WARN message key=value`): a subscriber of a few
//! lines instead of tracing-subscriber's formatting machinery. The level
//! is `$AMPHI_LOG` when it is one of error, warn, info, debug or trace
//! (amphi's default, warn, otherwise).

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Prints events at `max` and above.
struct Stderr {
    max: Level,
}

/// The level `$AMPHI_LOG` names (a plain level only), else warn.
fn level(env: Option<&str>) -> Level {
    match env.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("error") => Level::ERROR,
        Some("info") => Level::INFO,
        Some("debug") => Level::DEBUG,
        Some("trace") => Level::TRACE,
        _ => Level::WARN,
    }
}

/// Installs the subscriber for the whole process.
pub fn init() {
    let max = level(std::env::var("AMPHI_LOG").ok().as_deref());
    // Fails only if one is installed already: keep that one.
    let _ = tracing::subscriber::set_global_default(Stderr { max });
}

/// The message first, then the other fields as key=value.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// One event's line, without the newline.
fn format(level: &Level, line: &Line) -> String {
    format!("{level:>5} {}{}", line.message, line.fields)
}

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let text = format(event.metadata().level(), &line);
        // One write per line, so lines of two threads do not interleave.
        let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_lines() {
        assert_eq!(level(None), Level::WARN);
        assert_eq!(level(Some("debug")), Level::DEBUG);
        assert_eq!(level(Some("amphi=debug")), Level::WARN);
        let line = Line {
            message: "the backend ended".into(),
            fields: " fd=3".into(),
        };
        assert_eq!(format(&Level::WARN, &line), " WARN the backend ended fd=3");
        assert_eq!(format(&Level::ERROR, &line), "ERROR the backend ended fd=3");
    }
}
