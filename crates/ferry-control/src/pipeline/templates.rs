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
//!
//! Users register their own as `kind: TaskTemplate` resources (stored as documents of
//! kind [`TEMPLATE`]): declared parameters (with defaults or required), a transfer's or a
//! command's spec using them as `${params.x}`, and conditions, retries and a timeout a task
//! takes unless it says otherwise. A pipeline run expands them when it is made
//! ([`expand_user`]), so it keeps the template it started with.

use std::collections::BTreeMap;

use ferry_core::DataAddress;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::spec::{
    check_task, manifest_parts, CommandSpec, Condition, ParamSpec, PipelineSpec, RetrySpec,
    TaskSpec, TemplateUse,
};
use crate::resource::FieldError;

/// The document kind of registered task templates.
pub const TEMPLATE: &str = "template";

/// `kind: TaskTemplate`'s spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskTemplateSpec {
    pub description: Option<String>,
    /// A parameter without a default must be given by the task.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// A BatchTransfer's spec, or
    pub transfer: Option<Value>,
    /// a command.
    pub command: Option<CommandSpec>,
    pub wait_for: Option<Condition>,
    pub check: Option<Condition>,
    pub retries: Option<RetrySpec>,
    pub timeout_seconds: Option<u64>,
}

/// A checked TaskTemplate manifest.
#[derive(Clone, Debug)]
pub struct TemplateManifest {
    pub raw: Value,
    pub name: String,
    pub spec: TaskTemplateSpec,
}

/// Checks a TaskTemplate manifest as a pipeline's task is checked, every problem listed
/// with its field.
pub fn validate_template(raw: Value) -> Result<TemplateManifest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let (raw, name, _, spec) = manifest_parts::<TaskTemplateSpec>(
        raw,
        "TaskTemplate",
        "spec, with params and a transfer or a command",
        &mut errors,
    );
    if builtin(&name) {
        errors.push(FieldError::new(
            "metadata.name",
            format!("'{name}' is a built-in template; choose another name"),
        ));
    }
    if let Some(spec) = &spec {
        if spec.transfer.is_some() == spec.command.is_some() {
            errors.push(FieldError::new(
                "spec",
                "exactly one of transfer or command",
            ));
        } else {
            let task = as_task(spec, "task");
            let pipeline = PipelineSpec {
                params: spec.params.clone(),
                schedule: None,
                time_zone: None,
                trigger: None,
                max_parallel: None,
                tasks: vec![task.clone()],
                notify: Vec::new(),
                suspend: false,
            };
            let names = [task.name.as_str()].into_iter().collect();
            let mut found = Vec::new();
            check_task(&name, &pipeline, 0, &task, &names, &mut found);
            for e in found {
                let field = match e.field.strip_prefix("spec.tasks[0]") {
                    Some(rest) => format!("spec{rest}"),
                    None => e.field,
                };
                let message = e
                    .message
                    .replace("nor a trigger's value", "of the template");
                errors.push(FieldError::new(field, message));
            }
        }
    }
    match (errors.is_empty(), spec) {
        (true, Some(spec)) => Ok(TemplateManifest { raw, name, spec }),
        _ => Err(errors),
    }
}

/// Whether `name` is one of the built-in templates.
pub fn builtin(name: &str) -> bool {
    super::spec::TEMPLATES.iter().any(|(n, _)| *n == name)
}

/// The template's task, named `name`, its placeholders as written.
fn as_task(spec: &TaskTemplateSpec, name: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        depends_on: Vec::new(),
        transfer: spec.transfer.clone(),
        transfer_ref: None,
        command: spec.command.clone(),
        template: None,
        wait_for: spec.wait_for.clone(),
        check: spec.check.clone(),
        retries: spec.retries.clone(),
        on_failure: Default::default(),
        timeout_seconds: spec.timeout_seconds,
    }
}

/// `task`, which uses the registered `template`, as the transfer or command task it stands
/// for: the template's `${params.x}` filled with what the task gives (or the defaults),
/// the task's own conditions, retries and timeout winning over the template's.
/// Placeholders in what the task gives (the pipeline's `${params.date}`) stay for the run.
pub fn expand_user(task: &TaskSpec, template: &TaskTemplateSpec) -> Result<TaskSpec, String> {
    let used = task.template.as_ref().ok_or("not a template task")?;
    let mut values = BTreeMap::new();
    for (name, p) in &template.params {
        match used.params.get(name).or(p.default.as_ref()) {
            Some(v) => {
                values.insert(name.clone(), v.clone());
            }
            None => {
                return Err(format!(
                    "template {}: parameter {name} is required",
                    used.name
                ))
            }
        }
    }
    let filled = super::run::fill(
        &serde_json::to_value(as_task(template, &task.name)).map_err(|e| e.to_string())?,
        &|used: &str| used.strip_prefix("params.").and_then(|p| values.get(p)),
    );
    let from: TaskSpec = serde_json::from_value(filled).map_err(|e| e.to_string())?;
    Ok(TaskSpec {
        transfer: from.transfer,
        command: from.command,
        template: None,
        wait_for: task.wait_for.clone().or(from.wait_for),
        check: task.check.clone().or(from.check),
        retries: task.retries.clone().or(from.retries),
        timeout_seconds: task.timeout_seconds.or(from.timeout_seconds),
        ..task.clone()
    })
}

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
        DataAddress::Gcs {
            bucket,
            key,
            options: o,
        } => {
            spec.insert("type".into(), json!("gcs"));
            spec.insert("bucket".into(), json!(bucket));
            spec.insert("key".into(), json!(key));
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

    fn template(spec: Value) -> Value {
        json!({"apiVersion": "ferry.dev/v1", "kind": "TaskTemplate",
            "metadata": {"name": "nightly-export"}, "spec": spec})
    }

    #[test]
    fn a_registered_template_is_checked_as_a_task_with_its_own_parameters() {
        let ok = validate_template(template(json!({
            "description": "a table of the shop as Parquet",
            "params": {"table": {}, "bucket": {"default": "lake"}},
            "transfer": {
                "source": {"type": "postgres", "url": "postgres://shop@db/shop", "table": "${params.table}"},
                "destination": {"type": "s3", "bucket": "${params.bucket}", "key": "${params.table}/", "format": "parquet"}},
            "retries": {"count": 2}
        })))
        .unwrap();
        assert_eq!(ok.name, "nightly-export");
        assert_eq!(ok.spec.params.len(), 2);

        let errors =
            validate_template(json!({"apiVersion": "ferry.dev/v1", "kind": "TaskTemplate",
            "metadata": {"name": "copy-tree"},
            "spec": {"params": {"x": {}}, "command": {"argv": ["echo", "${params.y}"]},
                     "transfer": {}, "extra": 1}}))
            .unwrap_err();
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("spec.extra: unknown field `extra`"),
            "{shown:?}"
        );
        assert!(shown[1].starts_with("metadata.name: 'copy-tree' is a built-in"));

        let errors = validate_template(json!({"apiVersion": "ferry.dev/v1", "kind": "TaskTemplate",
            "metadata": {"name": "copy-tree"},
            "spec": {"params": {"x": {}}, "command": {"argv": ["echo", "${params.y}"], "timeoutSeconds": 0},
                     "check": {"table": "t"}}}))
        .unwrap_err();
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(
            shown,
            [
                "metadata.name: 'copy-tree' is a built-in template; choose another name",
                "spec: '${params.y}' is not a declared parameter (spec.params) of the template",
                "spec.command.timeoutSeconds: must be at least 1",
                "spec.check: exactly one of rowCount, verify, query",
            ]
        );
        let errors = validate_template(template(json!({"params": {}}))).unwrap_err();
        assert_eq!(errors[0].message, "exactly one of transfer or command");
    }

    #[test]
    fn a_task_using_a_registered_template_becomes_the_task_it_stands_for() {
        let spec: TaskTemplateSpec = serde_json::from_value(json!({
            "params": {"table": {}, "bucket": {"default": "lake"}},
            "transfer": {"source": {"type": "sqlite", "url": "sqlite://shop.db", "table": "${params.table}"},
                         "destination": {"type": "file", "path": "/${params.bucket}/${params.table}/${params.date}/"}},
            "retries": {"count": 2},
            "timeoutSeconds": 60
        }))
        .unwrap();
        let task: TaskSpec = serde_json::from_value(json!({
            "name": "export", "dependsOn": [{"task": "load"}],
            "template": {"name": "nightly-export", "params": {"table": "orders-${params.date}"}},
            "timeoutSeconds": 5
        }))
        .unwrap();
        let out = expand_user(&task, &spec).unwrap();
        assert_eq!(out.template, None);
        assert_eq!(out.depends_on, task.depends_on);
        let t = out.transfer.unwrap();
        // The task's value keeps the pipeline's placeholder for the run to fill, and is
        // not filled again by the template's own `date`-less parameters.
        assert_eq!(t["source"]["table"], "orders-${params.date}");
        assert_eq!(
            t["destination"]["path"],
            "/lake/orders-${params.date}/${params.date}/"
        );
        assert_eq!(out.retries.unwrap().count, 2);
        assert_eq!(out.timeout_seconds, Some(5));

        let missing: TaskSpec = serde_json::from_value(
            json!({"name": "export", "template": {"name": "nightly-export"}}),
        )
        .unwrap();
        assert_eq!(
            expand_user(&missing, &spec).unwrap_err(),
            "template nightly-export: parameter table is required"
        );
    }
}
