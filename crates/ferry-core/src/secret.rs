//! Secret references: settings name where a secret lives, never the secret itself.

use crate::{Error, Result};

/// Reads the secret `reference` names: `env:NAME` (an environment variable) or
/// `file:PATH` (a file's contents, trailing newline removed).
///
/// Errors name the reference, never the value.
pub fn resolve_secret(reference: &str) -> Result<Vec<u8>> {
    if let Some(name) = reference.strip_prefix("env:") {
        return std::env::var_os(name)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| {
                Error::invalid_option(
                    "secret reference",
                    format!("'{reference}': environment variable {name} is not set"),
                )
            });
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let mut bytes = std::fs::read(path).map_err(|e| {
            Error::invalid_option("secret reference", format!("'{reference}': {e}"))
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        return Ok(bytes);
    }
    Err(Error::invalid_option(
        "secret reference",
        format!("'{reference}': expected env:NAME or file:PATH"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_missing_variables() {
        let dir = std::env::temp_dir().join(format!("ferry-secret-{}", std::process::id()));
        std::fs::write(&dir, b"s3cr3t\n").unwrap();
        let got = resolve_secret(&format!("file:{}", dir.display())).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(got, b"s3cr3t");

        let err = resolve_secret("env:FERRY_TEST_SURELY_UNSET").unwrap_err();
        assert!(err
            .to_string()
            .contains("FERRY_TEST_SURELY_UNSET is not set"));
        assert!(resolve_secret("vault:x").is_err());
    }
}
