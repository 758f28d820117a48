//! One error type for the whole byte path, with semantic variants.
//!
//! Every message is one line that names the thing at fault; details are redacted when the
//! error is built, so printing an error can never leak a secret.

use std::fmt::Display;

use crate::redact::redact;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be parsed or names something ferry cannot use.
    #[error("invalid address '{address}': {reason}")]
    InvalidAddress { address: String, reason: String },

    /// A flag, option or setting is wrong.
    #[error("invalid {name}: {reason}")]
    InvalidOption { name: String, reason: String },

    #[error("{address}: not found")]
    NotFound { address: String },

    #[error("{address}: permission denied: {detail}")]
    PermissionDenied { address: String, detail: String },

    /// The store did not answer (connection refused, DNS, timeout) after retries.
    #[error("{address}: store unreachable: {detail}")]
    Unreachable { address: String, detail: String },

    /// The source object changed between listing and reading.
    #[error("{address}: source changed during the copy ({detail}); run the copy again to take the new version")]
    SourceChanged { address: String, detail: String },

    #[error("{address}: not supported: {detail}")]
    NotSupported { address: String, detail: String },

    /// Any other failure reported by a store.
    #[error("{address}: {detail}")]
    Store { address: String, detail: String },

    /// A transformation is misconfigured for the data it would see (missing column, bad
    /// option, a clause that does not parse). Found before any data moves.
    #[error("transformation {name}: {reason}")]
    InvalidTransform { name: String, reason: String },

    /// The data itself is at fault: a malformed row, a value the declared schema rejects,
    /// a corrupt file. `location` names the file and, where known, row and column.
    #[error("{location}: {detail}")]
    Data { location: String, detail: String },

    /// The checkpoint store failed.
    #[error("state store {path}: {detail}")]
    State { path: String, detail: String },

    /// A bug in ferry, not a problem with the input.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

impl Error {
    pub fn store(address: impl Display, detail: impl Display) -> Self {
        Self::Store {
            address: redact(&address.to_string()),
            detail: one_line(&detail.to_string()),
        }
    }

    pub fn not_found(address: impl Display) -> Self {
        Self::NotFound {
            address: one_line(&address.to_string()),
        }
    }

    pub fn unreachable(address: impl Display, detail: impl Display) -> Self {
        Self::Unreachable {
            address: redact(&address.to_string()),
            detail: one_line(&detail.to_string()),
        }
    }

    pub fn permission_denied(address: impl Display, detail: impl Display) -> Self {
        Self::PermissionDenied {
            address: redact(&address.to_string()),
            detail: one_line(&detail.to_string()),
        }
    }

    pub fn source_changed(address: impl Display, detail: impl Display) -> Self {
        Self::SourceChanged {
            address: redact(&address.to_string()),
            detail: one_line(&detail.to_string()),
        }
    }

    pub fn not_supported(address: impl Display, detail: impl Display) -> Self {
        Self::NotSupported {
            address: redact(&address.to_string()),
            detail: one_line(&detail.to_string()),
        }
    }

    pub fn invalid_option(name: impl Display, reason: impl Display) -> Self {
        Self::InvalidOption {
            name: name.to_string(),
            reason: one_line(&reason.to_string()),
        }
    }

    /// `name` is [`crate::TransformSpec::label`].
    pub fn invalid_transform(name: impl Display, reason: impl Display) -> Self {
        Self::InvalidTransform {
            name: name.to_string(),
            reason: one_line(&reason.to_string()),
        }
    }

    pub fn data(location: impl Display, detail: impl Display) -> Self {
        Self::Data {
            location: redact(&location.to_string()),
            detail: one_line(&detail.to_string()),
        }
    }

    pub fn state(path: impl Display, detail: impl Display) -> Self {
        Self::State {
            path: path.to_string(),
            detail: one_line(&detail.to_string()),
        }
    }

    pub fn io(address: impl Display, err: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let detail = err.to_string();
        match err.kind() {
            NotFound => Self::not_found(address),
            PermissionDenied | ReadOnlyFilesystem => Self::permission_denied(address, detail),
            _ => Self::store(address, detail),
        }
    }

    /// The process exit code for this error: 2 for bad usage or configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::InvalidAddress { .. }
            | Self::InvalidOption { .. }
            | Self::InvalidTransform { .. } => 2,
            _ => 1,
        }
    }
}

/// Errors shown to users are single lines: nested causes joined with `: `, secrets masked.
pub fn one_line(text: &str) -> String {
    let joined: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    redact(&joined.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_separate_usage_from_failure() {
        let usage = Error::invalid_option("--part-size", "must be at least 5 MiB");
        assert_eq!(usage.exit_code(), 2);
        assert_eq!(Error::not_found("s3://b/k").exit_code(), 1);
    }

    #[test]
    fn details_are_single_lines_without_secrets() {
        let e = Error::store(
            "az://c/p",
            "request failed\n  url: https://x/c/p?sig=abcdef&sv=1\n  status: 403",
        );
        let shown = e.to_string();
        assert!(!shown.contains('\n'));
        assert!(!shown.contains("abcdef"), "{shown}");
        assert!(shown.starts_with("az://c/p: request failed"), "{shown}");
    }
}
