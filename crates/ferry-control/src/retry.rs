//! When to try again: exponential backoff with jitter, and which errors are worth retrying.

use std::time::Duration;

use ferry_core::Error;
use rand::rngs::{SmallRng, SysRng};
use rand::{RngExt, SeedableRng};

/// Exponential backoff with "equal jitter": the delay is half the exponential step plus a
/// random part of up to the other half, so retries spread out yet never come back early.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The step before the first retry.
    pub initial: Duration,
    /// No step is longer than this.
    pub max: Duration,
    /// Each failure multiplies the step by this (values below 1 count as 1).
    pub factor: f64,
}

impl Default for Backoff {
    /// 10 s, doubling, at most 10 minutes: paced for transfers, whose failures are mostly
    /// stores that need time to recover.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(600),
            factor: 2.0,
        }
    }
}

impl Backoff {
    /// How long to wait after `failed_attempts` failures (0 and 1 both give the first step),
    /// jittered at random.
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        self.delay_with(failed_attempts, random_unit())
    }

    /// [`Backoff::delay`] with the random part given: `jitter` in `0..=1` (clamped) picks the
    /// delay between half the step (0) and the whole step (1), so tests are deterministic.
    pub fn delay_with(&self, failed_attempts: u32, jitter: f64) -> Duration {
        let step = self.step(failed_attempts).as_secs_f64();
        let jitter = if jitter.is_nan() {
            0.5
        } else {
            jitter.clamp(0.0, 1.0)
        };
        Duration::try_from_secs_f64(step * (0.5 + 0.5 * jitter)).unwrap_or(self.max)
    }

    /// The un-jittered step: `initial * factor^(failed_attempts - 1)`, capped at `max`.
    fn step(&self, failed_attempts: u32) -> Duration {
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let exponent = i32::try_from(failed_attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * factor.powi(exponent);
        let step = Duration::try_from_secs_f64(secs).unwrap_or(self.max);
        step.min(self.max)
    }
}

/// A uniform value in `0..1`; 0.5 in the unlikely case the system RNG is unavailable.
fn random_unit() -> f64 {
    match SmallRng::try_from_rng(&mut SysRng) {
        Ok(mut rng) => rng.random::<f64>(),
        Err(_) => 0.5,
    }
}

/// What a failed run's error says about running it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient (network, throttling, a source that changed under the copy): retry with
    /// backoff.
    Retryable,
    /// The same input will fail the same way (permissions, missing objects, bad data): do
    /// not retry.
    Fatal,
    /// The transfer's settings are wrong: do not retry until they are changed.
    Configuration,
}

impl ErrorClass {
    /// The lower-case name used in run records and events.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Fatal => "fatal",
            ErrorClass::Configuration => "configuration",
        }
    }
}

/// Sorts an error into an [`ErrorClass`]. Store errors are transient only when their detail
/// says so (throttling, 429/503, timeouts, dropped connections); otherwise they are fatal.
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::Unreachable { .. } | Error::SourceChanged { .. } | Error::State { .. } => {
            ErrorClass::Retryable
        }
        Error::InvalidAddress { .. }
        | Error::InvalidOption { .. }
        | Error::InvalidTransform { .. } => ErrorClass::Configuration,
        Error::Store { detail, .. } if is_transient(detail) => ErrorClass::Retryable,
        Error::PermissionDenied { .. }
        | Error::NotFound { .. }
        | Error::Data { .. }
        | Error::NotSupported { .. }
        | Error::Store { .. }
        | Error::Internal(_) => ErrorClass::Fatal,
        // Variants added later are fatal until someone decides otherwise: retrying an
        // unknown failure forever is worse than stopping.
        _ => ErrorClass::Fatal,
    }
}

/// Phrases in a store's error detail that mark a transient failure (matched lower case).
const TRANSIENT_PHRASES: &[&str] = &[
    "throttl",
    "slow down",
    "slowdown",
    "too many requests",
    "service unavailable",
    "timeout",
    "timed out",
    "connection reset",
    "closed the connection",
    "broken pipe",
];

/// HTTP statuses in a store's error detail that mark a transient failure.
const TRANSIENT_STATUSES: &[&str] = &["429", "503"];

fn is_transient(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    TRANSIENT_PHRASES.iter().any(|p| lower.contains(p))
        || TRANSIENT_STATUSES
            .iter()
            .any(|code| contains_number(&lower, code))
}

/// True when `number` appears in `text` not as part of a longer number (`part-4290` is no
/// 429).
fn contains_number(text: &str, number: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(number).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + number.len()).copied();
        !before.is_some_and(|b| b.is_ascii_digit()) && !after.is_some_and(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff::default();
        // With the full jitter part, the delay is the whole step.
        assert_eq!(b.delay_with(1, 1.0), 10 * SECOND);
        assert_eq!(b.delay_with(2, 1.0), 20 * SECOND);
        assert_eq!(b.delay_with(3, 1.0), 40 * SECOND);
        assert_eq!(b.delay_with(7, 1.0), 600 * SECOND); // 640 s capped
        assert_eq!(b.delay_with(u32::MAX, 1.0), 600 * SECOND);
        assert_eq!(b.delay_with(0, 1.0), 10 * SECOND);
        // With none, half the step.
        assert_eq!(b.delay_with(1, 0.0), 5 * SECOND);
        assert_eq!(b.delay_with(3, 0.0), 20 * SECOND);
        assert_eq!(b.delay_with(3, 0.5), 30 * SECOND);
        // Out-of-range jitter is clamped.
        assert_eq!(b.delay_with(1, 7.0), 10 * SECOND);
        assert_eq!(b.delay_with(1, -1.0), 5 * SECOND);
    }

    #[test]
    fn odd_settings_stay_sane() {
        let shrinking = Backoff {
            initial: SECOND,
            max: 60 * SECOND,
            factor: 0.1,
        };
        assert_eq!(shrinking.delay_with(5, 1.0), SECOND);
        let nan = Backoff {
            factor: f64::NAN,
            ..shrinking
        };
        assert_eq!(nan.delay_with(5, 1.0), SECOND);
        let huge = Backoff {
            factor: 1e300,
            ..shrinking
        };
        assert_eq!(huge.delay_with(10, 1.0), 60 * SECOND);
    }

    #[test]
    fn random_delays_stay_within_the_step() {
        let b = Backoff::default();
        for _ in 0..100 {
            let d = b.delay(2);
            assert!((10 * SECOND..=20 * SECOND).contains(&d), "{d:?}");
        }
    }

    #[test]
    fn retryable_errors() {
        for e in [
            Error::unreachable("s3://b/k", "connection refused"),
            Error::source_changed("s3://b/k", "etag differs"),
            Error::state("/var/lib/ferry/state.db", "database is locked"),
            Error::store("s3://b/k", "SlowDown: please reduce your request rate"),
            Error::store("az://c/p", "request was throttled"),
            Error::store("gs://b/k", "HTTP status 429"),
            Error::store("gs://b/k", "status: 503 Service Unavailable"),
            Error::store("pg://db/t", "operation timed out"),
            Error::store("pg://db/t", "read timeout"),
            Error::store("mysql://db/t", "Connection reset by peer (os error 104)"),
            Error::store("pg://db/t", "server closed the connection unexpectedly"),
        ] {
            assert_eq!(classify(&e), ErrorClass::Retryable, "{e}");
        }
    }

    #[test]
    fn configuration_errors() {
        for e in [
            Error::InvalidAddress {
                address: "nope://x".into(),
                reason: "unknown scheme".into(),
            },
            Error::invalid_option("--part-size", "must be at least 5 MiB"),
            Error::invalid_transform("rename", "column 'x' not found"),
        ] {
            assert_eq!(classify(&e), ErrorClass::Configuration, "{e}");
        }
    }

    #[test]
    fn fatal_errors() {
        for e in [
            Error::permission_denied("s3://b/k", "AccessDenied"),
            Error::not_found("s3://b/k"),
            Error::data("file.csv:3", "expected 4 columns, found 5"),
            Error::not_supported("ftp://x", "append"),
            Error::Internal("unreachable state".into()),
            Error::store("s3://b/k", "InvalidObjectState"),
            // A number that merely contains 429 or 503 is not a status.
            Error::store("s3://b/part-4290.csv", "checksum mismatch"),
            Error::store("s3://b/k", "object 15031 is corrupt"),
        ] {
            assert_eq!(classify(&e), ErrorClass::Fatal, "{e}");
        }
    }

    #[test]
    fn class_names() {
        assert_eq!(ErrorClass::Retryable.as_str(), "retryable");
        assert_eq!(ErrorClass::Fatal.as_str(), "fatal");
        assert_eq!(ErrorClass::Configuration.as_str(), "configuration");
    }
}
