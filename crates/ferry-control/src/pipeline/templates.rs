//! The built-in task templates: a name and a few addresses instead of a whole transfer.
//!
//! | template | parameters | what it runs |
//! |---|---|---|
//! | `copy-tree` | `source`, `destination` | a byte-for-byte copy of a tree (resumable) |
//! | `table-to-lake` | `table`, `destination` | a table exported as Parquet files |
//! | `lake-to-table` | `source`, `table` | files (CSV, JSON, Parquet, …) loaded into a table |
//! | `verify-trees` | `source`, `destination` | `ferry verify`: both trees compared by checksum |
//!
//! Parameters are addresses as `ferry copy` takes them (`s3://lake/in/`,
//! `postgres://…?table=orders&mode=replace`) and may hold `${params.x}`.

use std::collections::BTreeMap;

use ferry_core::DataAddress;
use serde_json::{json, Map, Value};

use super::spec::TemplateUse;

/// The inline spec (a BatchTransfer's, or with `command` a Command's) a template stands
/// for.
pub fn expand(used: &TemplateUse) -> Result<(&'static str, Value), String> {
    let p = &used.params;
    let get = |name: &str| -> Result<Value, String> {
        let text = p
            .get(name)
            .ok_or_else(|| format!("template {}: parameter {name} is required", used.name))?;
        address_spec(text).map_err(|e| format!("template {} parameter {name}: {e}", used.name))
    };
    Ok(match used.name.as_str() {
        "copy-tree" => (
            "BatchTransfer",
            json!({"source": get("source")?, "destination": get("destination")?}),
        ),
        "table-to-lake" => {
            let mut destination = get("destination")?;
            destination["format"] = json!("parquet");
            (
                "BatchTransfer",
                json!({"source": get("table")?, "destination": destination}),
            )
        }
        "lake-to-table" => (
            "BatchTransfer",
            json!({"source": get("source")?, "destination": get("table")?}),
        ),
        "verify-trees" => {
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "ferry".into());
            let (source, destination) = (&p["source"], &p["destination"]);
            (
                "Command",
                json!({"command": {"argv": [exe, "verify", source, destination]}}),
            )
        }
        other => return Err(format!("unknown template '{other}'")),
    })
}

/// An address as a manifest's `{type, …}` object.
pub fn address_spec(text: &str) -> Result<Value, String> {
    // Placeholders are filled before a run uses the spec; checked here with a stand-in.
    let address = DataAddress::parse(text).map_err(|e| e.to_string())?;
    let mut spec = Map::new();
    let options = |options: &BTreeMap<String, String>, spec: &mut Map<String, Value>| {
        for (k, v) in options {
            match k.as_str() {
                "endpoint" | "region" | "account" => {
                    spec.insert(k.clone(), json!(v));
                }
                other => {
                    return Err(format!(
                        "option {other} cannot be given to a template; use an inline transfer"
                    ))
                }
            }
        }
        Ok(())
    };
    match &address {
        DataAddress::Local { path } => {
            spec.insert("type".into(), json!("file"));
            spec.insert("path".into(), json!(path_text(text, path)));
        }
        DataAddress::S3 {
            bucket,
            key,
            options: o,
        } => {
            spec.insert("type".into(), json!("s3"));
            spec.insert("bucket".into(), json!(bucket));
            spec.insert("key".into(), json!(key));
            options(o, &mut spec)?;
        }
        DataAddress::Azure {
            container,
            path,
            options: o,
        } => {
            spec.insert("type".into(), json!("azure"));
            spec.insert("container".into(), json!(container));
            spec.insert("path".into(), json!(path));
            options(o, &mut spec)?;
        }
        DataAddress::Http { url } => {
            spec.insert("type".into(), json!("http"));
            spec.insert("url".into(), json!(url.as_str()));
        }
        DataAddress::Table(t) => {
            let kind = match t.database {
                ferry_core::Database::Postgres => "postgres",
                ferry_core::Database::Mysql => "mysql",
                ferry_core::Database::Sqlite => "sqlite",
            };
            spec.insert("type".into(), json!(kind));
            spec.insert("url".into(), json!(t.url.as_str()));
            if let Some(table) = &t.table {
                spec.insert("table".into(), json!(table));
            }
            if let Some(query) = &t.query {
                spec.insert("query".into(), json!(query));
            }
            spec.insert("mode".into(), json!(t.mode.to_string()));
            if !t.key_columns.is_empty() {
                spec.insert("keyColumns".into(), json!(t.key_columns));
            }
        }
        DataAddress::Kafka(_) => {
            return Err("topics are not template parameters; use an inline transfer".into())
        }
    }
    Ok(Value::Object(spec))
}

/// A local path as written, keeping a trailing `/` that names a directory.
fn path_text(text: &str, path: &std::path::Path) -> String {
    let shown = path.display().to_string();
    if text.ends_with('/') && !shown.ends_with('/') {
        format!("{shown}/")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(name: &str, params: &[(&str, &str)]) -> TemplateUse {
        TemplateUse {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn templates_expand_into_specs_a_transfer_or_command_accepts() {
        let (kind, spec) = expand(&used(
            "table-to-lake",
            &[
                ("table", "postgres://ferry@db:5432/shop?table=orders"),
                (
                    "destination",
                    "s3://lake/orders/?endpoint=http://127.0.0.1:9000",
                ),
            ],
        ))
        .unwrap();
        assert_eq!(kind, "BatchTransfer");
        assert_eq!(spec["source"]["type"], "postgres");
        assert_eq!(spec["source"]["table"], "orders");
        assert_eq!(spec["destination"]["bucket"], "lake");
        assert_eq!(spec["destination"]["key"], "orders/");
        assert_eq!(spec["destination"]["endpoint"], "http://127.0.0.1:9000");
        assert_eq!(spec["destination"]["format"], "parquet");
        // What it expands to is a BatchTransfer the service accepts.
        let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": kind,
            "metadata": {"name": "t"}, "spec": spec});
        assert!(crate::resource::validate(manifest).is_ok());

        let (kind, spec) = expand(&used(
            "copy-tree",
            &[("source", "in/"), ("destination", "/lake/")],
        ))
        .unwrap();
        assert_eq!(
            (kind, &spec["source"]["path"]),
            ("BatchTransfer", &json!("in/"))
        );
        let (kind, spec) = expand(&used(
            "verify-trees",
            &[("source", "in/"), ("destination", "out/")],
        ))
        .unwrap();
        assert_eq!(kind, "Command");
        assert_eq!(spec["command"]["argv"][1], "verify");

        let err = expand(&used(
            "copy-tree",
            &[
                ("source", "s3://b/k/?skip_signature=true"),
                ("destination", "x/"),
            ],
        ))
        .unwrap_err();
        assert!(
            err.contains("option skip_signature cannot be given to a template"),
            "{err}"
        );
    }
}
