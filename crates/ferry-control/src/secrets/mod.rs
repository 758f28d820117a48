//! Secrets in manifests: references are stored, values are fetched at run time and live
//! only in memory.
//!
//! A manifest names where a secret lives, never the secret:
//!
//! - `vaultPath: secret/lake-creds` in any object merges the key/values stored at that
//!   Vault path into the object (fields written in the object win);
//! - a string `ref+vault://<path>#<key>`, `ref+env://NAME` or `ref+file://PATH` is replaced
//!   by the secret it names (a Vault value that is not a string keeps its JSON type);
//! - `env:NAME` / `file:PATH` in credential fields (`password`, `keyRef`, …) are left for
//!   the connectors, which read them when they connect.
//!
//! [`SecretResolver::resolve_manifest`] makes the copy a run uses; [`redact_manifest`] and
//! [`references`] are what API responses show instead.

mod vault;

use std::collections::HashMap;
use std::fmt::Display;

use ferry_core::redact::{is_secret_name, redact, MASK};
use ferry_core::Error;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use vault::{Failure, VaultClient};

/// Where secrets come from, as written in the service's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretsConfig {
    /// The Vault server for `vaultPath` and `ref+vault://`; without it `VAULT_ADDR` is used.
    pub vault: Option<VaultConfig>,
}

/// A HashiCorp Vault (or OpenBao) server and how to log in to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VaultConfig {
    /// `http://127.0.0.1:8200`.
    pub address: String,
    /// Where the token is (`env:NAME` or `file:PATH`), so configuration never holds it;
    /// without it (and without `kubernetes`) `VAULT_TOKEN` is used.
    pub token: Option<String>,
    /// Log in with the pod's service account instead of a token.
    pub kubernetes: Option<KubernetesAuth>,
    /// The KV secrets engine version (1 or 2); by default asked of Vault per mount, and 2
    /// when Vault will not say.
    pub kv_version: Option<u8>,
    /// The Vault Enterprise namespace; defaults to `VAULT_NAMESPACE`.
    pub namespace: Option<String>,
    /// Per-request timeout; 10 s by default.
    pub timeout_ms: Option<u64>,
}

/// Vault's Kubernetes auth method: the service account token is exchanged for a Vault token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesAuth {
    pub role: String,
    /// Where the auth method is mounted; `kubernetes` by default.
    pub mount_path: Option<String>,
    /// The service account token; the path Kubernetes mounts it at by default.
    pub token_path: Option<String>,
}

/// Resolves the secret references of manifests; one per service, shared by its runs (a
/// Kubernetes login is reused until its lease ends).
#[derive(Debug)]
pub struct SecretResolver {
    vault: Option<VaultClient>,
}

impl SecretResolver {
    /// Checks `config`. Without a Vault section, `VAULT_ADDR` (if set) names the server.
    pub fn new(config: SecretsConfig) -> Result<Self, Error> {
        let vault = config.vault.or_else(|| {
            std::env::var("VAULT_ADDR")
                .ok()
                .filter(|a| !a.trim().is_empty())
                .map(|address| VaultConfig {
                    address,
                    ..VaultConfig::default()
                })
        });
        let vault = vault
            .map(VaultClient::new)
            .transpose()
            .map_err(|(name, reason)| Error::invalid_option(name, reason))?;
        Ok(Self { vault })
    }

    /// A copy of `manifest` with every secret reference replaced by its value (see the
    /// module documentation). The copy is for running only: never store, log or show it.
    ///
    /// Fails on the first reference that cannot be resolved, naming it and where it is:
    /// [`Error::Unreachable`] when Vault did not answer (worth retrying), otherwise
    /// [`Error::InvalidOption`] (a missing path or key, a refused token: not worth it).
    pub async fn resolve_manifest(&self, manifest: &Value) -> Result<Value, Error> {
        let mut uses = Vec::new();
        collect_vault_paths(manifest, "", &mut uses)?;

        let mut fetched: HashMap<String, (String, Map<String, Value>)> = HashMap::new();
        if !uses.is_empty() {
            let Some(vault) = &self.vault else {
                let first = &uses[0];
                return Err(config_error(
                    &first.reference,
                    &first.location,
                    "no Vault is configured (set secrets.vault.address or VAULT_ADDR)",
                ));
            };
            let mut session = vault.session();
            for VaultUse {
                path,
                reference,
                location,
            } in uses
            {
                if fetched.contains_key(&path) {
                    continue;
                }
                match session.read(&path).await {
                    Ok(found) => {
                        fetched.insert(path, found);
                    }
                    Err(Failure::Unreachable(detail)) => {
                        return Err(Error::unreachable(subject(&reference, &location), detail))
                    }
                    Err(Failure::Config(reason)) => {
                        return Err(config_error(&reference, &location, reason))
                    }
                }
            }
        }
        substitute(manifest, "", &fetched)
    }
}

/// Every secret reference in `manifest`, in order of first appearance: `ref+` strings and
/// `env:`/`file:` credential fields as written, `vaultPath` values as `ref+vault://<path>`.
pub fn references(manifest: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_references(manifest, None, &mut found);
    found
}

/// `field` is the name of the field holding `value`.
fn collect_references(value: &Value, field: Option<&str>, found: &mut Vec<String>) {
    fn push(found: &mut Vec<String>, reference: String) {
        if !found.contains(&reference) {
            found.push(reference);
        }
    }
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(s) if key == "vaultPath" => {
                        push(found, format!("ref+vault://{}", s.trim_matches('/')));
                    }
                    Value::String(s)
                        if is_ref_syntax(s)
                            || (is_credential_field(key, field) && is_plain_ref(s)) =>
                    {
                        push(found, s.clone());
                    }
                    _ => collect_references(value, Some(key), found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_references(v, field, found)),
        Value::String(s) if is_ref_syntax(s) => push(found, s.clone()),
        _ => {}
    }
}

/// `manifest` as API responses may show it: references stay as written, inline secrets
/// become `***` (credential fields, passwords in URLs, secret query parameters).
pub fn redact_manifest(manifest: &Value) -> Value {
    redact_value(manifest, None, false)
}

/// `secret` is true below a credential field: every value there is hidden.
fn redact_value(value: &Value, field: Option<&str>, secret: bool) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                let shown = if key == "vaultPath" {
                    value.clone()
                } else {
                    let secret = secret || is_secret_field(key, field);
                    redact_value(value, Some(key), secret)
                };
                out.insert(key.clone(), shown);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| redact_value(v, field, secret))
                .collect(),
        ),
        Value::String(s) if is_ref_syntax(s) || is_plain_ref(s) => value.clone(),
        Value::String(s) if secret => {
            if s.is_empty() {
                value.clone()
            } else {
                Value::String(MASK.into())
            }
        }
        Value::String(s) => Value::String(redact(&mask_url_passwords(s))),
        Value::Number(_) | Value::Bool(_) if secret => Value::String(MASK.into()),
        _ => value.clone(),
    }
}

/// Whether field `key` (inside field `parent`) holds a secret. A manifest's own `key` is an
/// object key, not a credential; inside `storeOptions` it is the store's.
fn is_secret_field(key: &str, parent: Option<&str>) -> bool {
    is_secret_name(key) && (key != "key" || parent == Some("storeOptions"))
}

/// Fields whose `env:`/`file:` values are secret references (`password`, `keyRef`, …).
fn is_credential_field(key: &str, parent: Option<&str>) -> bool {
    is_secret_field(key, parent) || key.ends_with("Ref")
}

fn is_plain_ref(s: &str) -> bool {
    s.starts_with("env:") || s.starts_with("file:")
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`, for every URL in `text`.
fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let authority_start = i + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        match authority.rfind('@').and_then(|at| {
            let colon = authority[..at].find(':')?;
            (colon + 1 < at).then_some((colon, at))
        }) {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A `ref+<scheme>://…` string (whether or not the scheme is known).
fn is_ref_syntax(s: &str) -> bool {
    s.strip_prefix("ref+")
        .and_then(|r| r.split_once("://"))
        .is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// A parsed `ref+` string.
enum Reference<'a> {
    Vault { path: &'a str, key: &'a str },
    Env(&'a str),
    File(&'a str),
}

/// `None` when `s` is not a `ref+` string; the reason when it is one ferry cannot use.
fn parse_reference(s: &str) -> Option<Result<Reference<'_>, String>> {
    if !is_ref_syntax(s) {
        return None;
    }
    let (scheme, rest) = s["ref+".len()..].split_once("://")?;
    Some(match scheme {
        "vault" => match rest.split_once('#') {
            Some((path, key)) if !path.trim_matches('/').is_empty() && !key.is_empty() => {
                Ok(Reference::Vault {
                    path: path.trim_matches('/'),
                    key,
                })
            }
            Some((path, _)) if path.trim_matches('/').is_empty() => {
                Err("names no Vault path".to_string())
            }
            _ => Err("names no key: write ref+vault://<path>#<key>".to_string()),
        },
        "env" if !rest.is_empty() && !rest.contains(['=', '\0']) => Ok(Reference::Env(rest)),
        "env" => Err("names no environment variable".to_string()),
        "file" if !rest.is_empty() => Ok(Reference::File(rest)),
        "file" => Err("names no file".to_string()),
        _ => Err(
            "unknown kind of reference (expected ref+vault://, ref+env:// or ref+file://)"
                .to_string(),
        ),
    })
}

/// A Vault path a manifest needs, with the first reference that needs it.
struct VaultUse {
    path: String,
    reference: String,
    location: String,
}

/// Finds every Vault path `value` needs, and rejects malformed references before any
/// request is made.
fn collect_vault_paths(
    value: &Value,
    location: &str,
    uses: &mut Vec<VaultUse>,
) -> Result<(), Error> {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let here = child(location, key);
                if key == "vaultPath" {
                    let path = value
                        .as_str()
                        .map(|p| p.trim_matches('/'))
                        .filter(|p| !p.is_empty())
                        .ok_or_else(|| {
                            config_error("vaultPath", &here, "must be a string naming a Vault path")
                        })?;
                    uses.push(VaultUse {
                        path: path.to_string(),
                        reference: format!("vaultPath {path}"),
                        location: here,
                    });
                } else {
                    collect_vault_paths(value, &here, uses)?;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_vault_paths(item, &format!("{location}[{i}]"), uses)?;
            }
        }
        Value::String(s) => match parse_reference(s) {
            Some(Ok(Reference::Vault { path, .. })) => uses.push(VaultUse {
                path: path.to_string(),
                reference: s.clone(),
                location: location.to_string(),
            }),
            Some(Err(reason)) => return Err(config_error(s, location, reason)),
            _ => {}
        },
        _ => {}
    }
    Ok(())
}

/// The copy of `value` with references replaced, given the Vault data already read
/// (by path as written: API path and key/values).
fn substitute(
    value: &Value,
    location: &str,
    vault: &HashMap<String, (String, Map<String, Value>)>,
) -> Result<Value, Error> {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                if key == "vaultPath" {
                    // Stored fields take the place of `vaultPath`; written fields win.
                    let path = value.as_str().unwrap_or_default().trim_matches('/');
                    if let Some((_, data)) = vault.get(path) {
                        for (k, v) in data {
                            if !map.contains_key(k) {
                                out.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    continue;
                }
                let resolved = substitute(value, &child(location, key), vault)?;
                out.insert(key.clone(), resolved);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| substitute(item, &format!("{location}[{i}]"), vault))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::String(s) => match parse_reference(s) {
            None => Ok(value.clone()),
            Some(Err(reason)) => Err(config_error(s, location, reason)),
            Some(Ok(Reference::Vault { path, key })) => {
                let (api_path, data) = vault.get(path).ok_or_else(|| {
                    Error::Internal(format!("secret {s} at {location} was not read"))
                })?;
                data.get(key).cloned().ok_or_else(|| {
                    config_error(s, location, format!("key '{key}' not found at {api_path}"))
                })
            }
            Some(Ok(Reference::Env(name))) => match std::env::var(name) {
                Ok(v) => Ok(Value::String(v)),
                Err(std::env::VarError::NotPresent) => Err(config_error(
                    s,
                    location,
                    format!("environment variable {name} is not set"),
                )),
                Err(std::env::VarError::NotUnicode(_)) => Err(config_error(
                    s,
                    location,
                    format!("environment variable {name} is not UTF-8 text"),
                )),
            },
            Some(Ok(Reference::File(path))) => {
                let text = std::fs::read(path)
                    .map_err(|e| config_error(s, location, format!("cannot read {path}: {e}")))
                    .and_then(|bytes| {
                        String::from_utf8(bytes).map_err(|_| {
                            config_error(s, location, format!("{path} is not UTF-8 text"))
                        })
                    })?;
                Ok(Value::String(
                    text.trim_end_matches(['\n', '\r']).to_string(),
                ))
            }
        },
        _ => Ok(value.clone()),
    }
}

fn child(location: &str, key: &str) -> String {
    if location.is_empty() {
        key.to_string()
    } else {
        format!("{location}.{key}")
    }
}

/// `secret <reference> at <location>`: what every resolution error starts with.
fn subject(reference: &str, location: &str) -> String {
    let location = if location.is_empty() {
        "the top level"
    } else {
        location
    };
    format!("secret {reference} at {location}")
}

fn config_error(reference: &str, location: &str, reason: impl Display) -> Error {
    Error::invalid_option(subject(reference, location), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked_and_the_rest_kept() {
        assert_eq!(
            mask_url_passwords("postgres://u:pw@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(mask_url_passwords("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_url_passwords("http://h:9000/x"), "http://h:9000/x");
        assert_eq!(
            mask_url_passwords("a=s3://k:s@b/x&b=http://u:p:q@h"),
            "a=s3://k:***@b/x&b=http://u:***@h"
        );
    }

    #[test]
    fn references_parse() {
        assert!(matches!(
            parse_reference("ref+vault://secret/data/x/#pw"),
            Some(Ok(Reference::Vault {
                path: "secret/data/x",
                key: "pw"
            }))
        ));
        assert!(matches!(
            parse_reference("ref+vault://secret/x"),
            Some(Err(_))
        ));
        assert!(matches!(parse_reference("ref+env://"), Some(Err(_))));
        assert!(matches!(parse_reference("ref+sops://x"), Some(Err(_))));
        assert!(parse_reference("ref+ nothing").is_none());
        assert!(parse_reference("postgres://x").is_none());
    }
}
