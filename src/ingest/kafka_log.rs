//! Kafka client errors, logged without flooding the log.
//!
//! librdkafka reports a broker that is down as an error each time it notices
//! again: several a second while it retries, and hundreds in the few
//! milliseconds a client takes to close (measured: 606 lines at one engine's
//! stop, 6-8 a second before it, from rdkafka's default context, which logs
//! every one at ERROR). [`ErrorLog`] lets the first error of a kind through,
//! then at most one per [`REPEAT_EVERY`], carrying how many were held back
//! since the last one logged; another kind of error is logged at once.
//!
//! Hand-written: rate-limiting crates (`governor`) decide whether to let an
//! event through but keep no count of what they held back, which is what a
//! reader of the log needs ("and 212 more like it"); this is a map lookup and
//! a clock read per error.
//!
//! Memory: at most [`MAX_KINDS`] kinds remembered (an error's text, a time
//! and a count); when full, the map starts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use tracing::warn;

/// How often an error of one kind is logged at most.
pub const REPEAT_EVERY: Duration = Duration::from_secs(30);
/// Kinds of error remembered at once.
pub const MAX_KINDS: usize = 64;

/// When a kind was last logged, and how many of it were held back since.
#[derive(Debug, Clone, Copy)]
struct Seen {
    logged: Instant,
    held: u64,
}

/// Which Kafka errors to log now (see the module docs).
#[derive(Debug, Default)]
pub struct ErrorLog {
    seen: Mutex<HashMap<String, Seen>>,
}

impl ErrorLog {
    /// Whether an error of `kind` is to be logged now: `Some(held back since
    /// the last one logged)`, or `None` to hold it back.
    pub fn admit(&self, kind: &str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &str, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere while counting: the
        // counts are still usable.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = seen.get_mut(kind) {
            if now.duration_since(entry.logged) < REPEAT_EVERY {
                entry.held += 1;
                return None;
            }
            let held = entry.held;
            *entry = Seen {
                logged: now,
                held: 0,
            };
            return Some(held);
        }
        if seen.len() >= MAX_KINDS {
            seen.clear();
        }
        seen.insert(
            kind.to_string(),
            Seen {
                logged: now,
                held: 0,
            },
        );
        Some(0)
    }

    /// Logs `error` (with librdkafka's `reason`) if [`ErrorLog::admit`]
    /// lets it through.
    pub fn client_error(&self, error: &KafkaError, reason: &str) {
        if let Some(held_back) = self.admit(&error.to_string()) {
            warn!(%error, reason, held_back, "kafka client error");
        }
    }
}

/// A client context that logs the client's errors through an [`ErrorLog`]
/// (rdkafka's default logs each at ERROR).
#[derive(Debug, Default)]
pub struct LoggedContext {
    errors: ErrorLog,
}

impl ClientContext for LoggedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.client_error(&error, reason);
    }
}

impl ConsumerContext for LoggedContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_error_is_logged_once_per_period_with_the_count_held_back() {
        let log = ErrorLog::default();
        let start = Instant::now();
        assert_eq!(log.admit_at("AllBrokersDown", start), Some(0));
        for i in 1..=600 {
            let at = start + Duration::from_millis(i);
            assert_eq!(log.admit_at("AllBrokersDown", at), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(log.admit_at("UnknownTopic", start), Some(0));
        let later = start + REPEAT_EVERY;
        assert_eq!(log.admit_at("AllBrokersDown", later), Some(600));
        assert_eq!(log.admit_at("AllBrokersDown", later), None);
        assert_eq!(
            log.admit_at("AllBrokersDown", later + REPEAT_EVERY),
            Some(1)
        );
    }

    #[test]
    fn the_kinds_remembered_are_bounded() {
        let log = ErrorLog::default();
        let now = Instant::now();
        for i in 0..10 * MAX_KINDS {
            assert_eq!(log.admit_at(&format!("error {i}"), now), Some(0));
            assert!(log.seen.lock().expect("lock").len() <= MAX_KINDS);
        }
    }
}
