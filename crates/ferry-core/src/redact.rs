//! Keeping secrets out of everything a user or a log sees.
//!
//! Two complementary rules: values of query parameters whose names say they hold a secret
//! are masked wherever a URL-ish string appears, and the values of the well-known credential
//! environment variables are masked wherever they appear verbatim.

/// Parts of option or query names whose values are secrets (case-insensitive substrings).
const SECRET_NAME_PARTS: &[&str] = &[
    "secret",
    "password",
    "token",
    "signature",
    "credential",
    "access_key",
    "account_key",
    "sas_key",
];

/// Short names that are secrets only when they are the whole name (`sig` of a SAS URL).
const SECRET_NAMES: &[&str] = &["sig", "sas", "key"];

/// Environment variables whose values must never be shown.
const SECRET_ENV_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN",
];

pub const MASK: &str = "***";

/// True when an option or query parameter named `name` carries a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    // `access_key_id` identifies, it does not authenticate.
    if lower.ends_with("access_key_id") || lower == "key_id" {
        return false;
    }
    SECRET_NAMES.contains(&lower.as_str()) || SECRET_NAME_PARTS.iter().any(|p| lower.contains(p))
}

/// Masks secrets in free text: `name=value` pairs with a secret-looking name, and the values
/// of the credential environment variables.
pub fn redact(text: &str) -> String {
    let mut out = redact_pairs(text);
    for var in SECRET_ENV_VARS {
        if let Ok(value) = std::env::var(var) {
            // Very short values would mask random substrings; real secrets are long.
            if value.len() >= 6 {
                out = out.replace(&value, MASK);
            }
        }
    }
    out
}

fn redact_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let name = &before[name_start..];
        out.push_str(before);
        out.push('=');
        let after = &after[1..];
        let value_len = after
            .find(['&', ' ', '"', '\'', ',', ')'])
            .unwrap_or(after.len());
        if !name.is_empty() && value_len > 0 && is_secret_name(name) {
            out.push_str(MASK);
        } else {
            out.push_str(&after[..value_len]);
        }
        rest = &after[value_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_secret_query_values_and_keeps_the_rest() {
        let s = "https://acct.blob.core.windows.net/c/x?sv=2021&sig=abc%2Fdef&se=1 failed";
        assert_eq!(
            redact(s),
            "https://acct.blob.core.windows.net/c/x?sv=2021&sig=***&se=1 failed"
        );
        let s = "s3://b/k?endpoint=http://h:9000&secret_access_key=hunter22&access_key_id=AKIA1";
        assert_eq!(
            redact(s),
            "s3://b/k?endpoint=http://h:9000&secret_access_key=***&access_key_id=AKIA1"
        );
    }

    #[test]
    fn names_are_classified() {
        assert!(is_secret_name("aws_secret_access_key"));
        assert!(is_secret_name("AZURE_STORAGE_ACCOUNT_KEY"));
        assert!(is_secret_name("sas_token"));
        assert!(!is_secret_name("access_key_id"));
        assert!(!is_secret_name("endpoint"));
        assert!(!is_secret_name("region"));
        assert!(!is_secret_name("unsigned_payload"));
    }
}
