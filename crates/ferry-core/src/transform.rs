//! What a transformation is, as written in a manifest or on the command line.
//!
//! The specification is data only; `ferry-transforms` binds it to a schema (which is where
//! missing columns and bad options are found) and applies it to record batches.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// One entry of a transfer's `transformation:` list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Names the transformation in errors and reports; defaults to the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Action-specific settings; each action rejects keys it does not know.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub options: Map<String, Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    RemoveColumn,
    Filter,
    Sample,
    Digest,
    Redact,
    Encrypt,
    Decrypt,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::RemoveColumn,
        Action::Filter,
        Action::Sample,
        Action::Digest,
        Action::Redact,
        Action::Encrypt,
        Action::Decrypt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::RemoveColumn => "RemoveColumn",
            Action::Filter => "Filter",
            Action::Sample => "Sample",
            Action::Digest => "Digest",
            Action::Redact => "Redact",
            Action::Encrypt => "Encrypt",
            Action::Decrypt => "Decrypt",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
                Error::invalid_option(
                    "transformation",
                    format!("unknown action '{s}'; known: {}", known.join(", ")),
                )
            })
    }
}

impl TransformSpec {
    /// How errors name it: `'hash-email' (Digest)`, or just the action when unnamed.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("'{name}' ({})", self.action),
            None => self.action.to_string(),
        }
    }
}

/// The command-line form: `Action(col1, col2, key=value, ...)`.
///
/// `Filter` takes its whole argument as the clause (`Filter(amount > 100)`), so SQL needs
/// no quoting. Values are strings unless they read as a number or `true`/`false`; quote a
/// value (`'...'` or `"..."`) to keep commas or `=` in it.
impl FromStr for TransformSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad =
            |reason: &str| Error::invalid_option("--transform", format!("'{text}': {reason}"));
        let text = text.trim();
        let (action, args) = match text.find('(') {
            Some(open) => {
                let Some(inner) = text[open + 1..].strip_suffix(')') else {
                    return Err(bad("expected Action(arguments) ending in ')'"));
                };
                (&text[..open], inner)
            }
            None => (text, ""),
        };
        let action: Action = action.trim().parse()?;
        let mut spec = TransformSpec {
            name: None,
            action,
            columns: Vec::new(),
            options: Map::new(),
        };
        if action == Action::Filter {
            let clause = args.trim();
            let clause = clause
                .strip_prefix("clause")
                .and_then(|rest| rest.trim_start().strip_prefix('='))
                .map(|c| unquote(c.trim()))
                .unwrap_or(clause);
            if clause.is_empty() {
                return Err(bad("Filter needs a clause, e.g. Filter(amount > 100)"));
            }
            spec.options
                .insert("clause".into(), Value::String(clause.into()));
            return Ok(spec);
        }
        for arg in split_args(args).map_err(|r| bad(&r))? {
            match split_key_value(&arg) {
                Some((key, value)) => {
                    spec.options.insert(key.to_string(), scalar(value));
                }
                None => spec.columns.push(unquote(&arg).to_string()),
            }
        }
        Ok(spec)
    }
}

/// Splits on top-level commas, honouring quotes.
fn split_args(args: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in args.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (None, ',') => out.push(std::mem::take(&mut current)),
            (None, c) => current.push(c),
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    out.push(current);
    let out: Vec<String> = out.into_iter().map(|a| a.trim().to_string()).collect();
    if out.len() == 1 && out[0].is_empty() {
        return Ok(Vec::new());
    }
    if out.iter().any(String::is_empty) {
        return Err("empty argument".into());
    }
    Ok(out)
}

fn split_key_value(arg: &str) -> Option<(&str, &str)> {
    let (key, value) = arg.split_once('=')?;
    let key = key.trim();
    let is_ident = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    is_ident.then(|| (key, value.trim()))
}

fn unquote(value: &str) -> &str {
    for q in ['\'', '"'] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

fn scalar(value: &str) -> Value {
    if value.starts_with(['\'', '"']) {
        return Value::String(unquote(value).to_string());
    }
    match value {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = value.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = value.parse::<f64>() {
        if let Some(n) = serde_json::Number::from_f64(f) {
            return Value::Number(n);
        }
    }
    Value::String(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_form_parses_columns_and_typed_options() {
        let spec: TransformSpec = "Digest(email, phone, algo=sha256, seed=7)".parse().unwrap();
        assert_eq!(spec.action, Action::Digest);
        assert_eq!(spec.columns, ["email", "phone"]);
        assert_eq!(spec.options["algo"], Value::from("sha256"));
        assert_eq!(spec.options["seed"], Value::from(7));

        let spec: TransformSpec = "Redact(phone, mode=fixed, value='a,b=c')".parse().unwrap();
        assert_eq!(spec.options["value"], Value::from("a,b=c"));

        let spec: TransformSpec = "sample(fraction=0.25, seed=1)".parse().unwrap();
        assert_eq!(spec.action, Action::Sample);
        assert_eq!(spec.options["fraction"], Value::from(0.25));
    }

    #[test]
    fn filter_takes_the_whole_clause() {
        let spec: TransformSpec = "Filter(amount > 100 AND country = 'DE')".parse().unwrap();
        assert_eq!(
            spec.options["clause"],
            Value::from("amount > 100 AND country = 'DE'")
        );
        let spec: TransformSpec = "Filter(clause=\"a IN (1, 2)\")".parse().unwrap();
        assert_eq!(spec.options["clause"], Value::from("a IN (1, 2)"));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let err = "Hash(email)".parse::<TransformSpec>().unwrap_err();
        assert!(err.to_string().contains("unknown action 'Hash'"), "{err}");
        assert_eq!(err.exit_code(), 2);
        assert!("Digest(email".parse::<TransformSpec>().is_err());
        assert!("Digest(email, 'x)".parse::<TransformSpec>().is_err());
        assert!("Filter()".parse::<TransformSpec>().is_err());
    }

    #[test]
    fn manifest_form_rejects_unknown_keys() {
        let err = serde_json::from_str::<TransformSpec>(
            r#"{"action": "RemoveColumn", "columns": ["a"], "colums": ["b"]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `colums`"), "{err}");
    }
}
