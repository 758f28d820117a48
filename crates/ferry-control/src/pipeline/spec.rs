//! `kind: Pipeline`: what a manifest says and how it is checked.
//!
//! ```text
//! apiVersion: ferry.dev/v1
//! kind: Pipeline
//! metadata: {name: daily-orders}
//! spec:
//!   params: {date: {default: "2026-12-03"}}
//!   trigger: {objectCreated: {address: "s3://drop/in/", glob: "*.csv"}}
//!   tasks:
//!     - name: load
//!       waitFor: {objects: {address: "s3://drop/in/", marker: _SUCCESS}, timeoutSeconds: 3600}
//!       transfer: {source: …, destination: …}          # a BatchTransfer's spec
//!       check: {rowCount: {source: …, destination: …}}
//!     - name: summary
//!       dependsOn: [{task: load}]
//!       command: {argv: [python3, summary.py, "${params.date}"], progress: {stdoutRegex: '(\d+)%'}}
//!   notify: [{channel: ops-mail, on: [TaskFailed, PipelineFailed]}]
//! ```
//!
//! [`validate_pipeline`] returns every problem at once, each naming its field: unknown
//! fields, tasks that are not exactly one of `transfer`, `transferRef`, `command` or
//! `template`, dependencies on unknown tasks and cycles (naming the tasks around it),
//! parameters used but not declared, inline transfers that a BatchTransfer would refuse,
//! unknown templates or missing template parameters, conditions that are not exactly one
//! kind or whose addresses do not parse, and bad schedules or triggers.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::DataAddress;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use ferry_engine::manifest::API_VERSION;

use crate::resource::{metadata, serde_error, validate, FieldError};
use crate::schedule::Schedule;

/// The built-in templates and the parameters each needs.
pub const TEMPLATES: &[(&str, &[&str])] = &[
    ("copy-tree", &["source", "destination"]),
    ("table-to-lake", &["table", "destination"]),
    ("lake-to-table", &["source", "table"]),
    ("verify-trees", &["source", "destination"]),
];

/// Event reasons a notification rule can name.
pub const NOTIFY_REASONS: &[&str] = &[
    "PipelineStarted",
    "PipelineSucceeded",
    "PipelineFailed",
    "TaskSucceeded",
    "TaskFailed",
    "TaskRetrying",
    "ConditionTimedOut",
    "CheckFailed",
];

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineSpec {
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    pub trigger: Option<TriggerSpec>,
    /// Tasks running at once (default 4).
    pub max_parallel: Option<usize>,
    pub tasks: Vec<TaskSpec>,
    #[serde(default)]
    pub notify: Vec<NotifyRule>,
    #[serde(default)]
    pub suspend: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParamSpec {
    pub default: Option<String>,
    pub description: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerSpec {
    pub object_created: Option<ObjectCreated>,
    pub after: Option<After>,
}

/// New objects under a prefix start a run each (or per `batch`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectCreated {
    pub address: String,
    pub glob: Option<String>,
    pub batch: Option<u32>,
    #[serde(default)]
    pub include_existing: bool,
    pub poll_seconds: Option<u64>,
}

/// The end of another pipeline's or transfer's run starts one.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct After {
    pub pipeline: Option<String>,
    pub transfer: Option<String>,
    #[serde(default)]
    pub when: When,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum When {
    #[default]
    Succeeded,
    Failed,
    Completed,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// The pipeline run fails (tasks already running finish).
    #[default]
    Fail,
    /// Tasks that do not depend on it go on.
    Continue,
    /// Expected: its `failed` branch runs and nobody is notified.
    Handled,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    /// An inline BatchTransfer spec.
    pub transfer: Option<Value>,
    /// A stored transfer, run as it is.
    pub transfer_ref: Option<String>,
    pub command: Option<CommandSpec>,
    pub template: Option<TemplateUse>,
    pub wait_for: Option<Condition>,
    pub check: Option<Condition>,
    pub retries: Option<RetrySpec>,
    #[serde(default)]
    pub on_failure: OnFailure,
    pub timeout_seconds: Option<u64>,
}

/// What a task is, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Transfer,
    TransferRef,
    Command,
    Template,
}

impl TaskSpec {
    /// The task's kind when exactly one is given.
    pub fn kind(&self) -> Option<TaskKind> {
        let given = [
            (self.transfer.is_some(), TaskKind::Transfer),
            (self.transfer_ref.is_some(), TaskKind::TransferRef),
            (self.command.is_some(), TaskKind::Command),
            (self.template.is_some(), TaskKind::Template),
        ];
        let mut kinds = given.iter().filter(|(set, _)| *set).map(|(_, k)| *k);
        match (kinds.next(), kinds.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dependency {
    pub task: String,
    #[serde(default)]
    pub when: When,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommandSpec {
    pub argv: Vec<String>,
    /// Values may be secret references (`ref+env://NAME`, `ref+file://PATH`,
    /// `ref+vault://PATH#KEY`), resolved on the data plane when the command starts.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub progress: Option<ProgressSpec>,
    /// Hints for the data plane (`cpu`, `memory`), shown and used for placement.
    pub resources: Option<BTreeMap<String, String>>,
}

/// How a command's progress is inferred: a pattern in its output whose first group is a
/// percentage, or the bytes written under a path against an expected total.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProgressSpec {
    pub stdout_regex: Option<String>,
    pub watch_path: Option<String>,
    pub expected_bytes: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateUse {
    pub name: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    pub count: u32,
    pub backoff_seconds: Option<u64>,
}

/// A pre-condition (`waitFor`: `objects`, `table`, `query`) or a post-condition
/// (`check`: `rowCount`, `verify`, `query`): exactly one kind.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub objects: Option<ObjectsCondition>,
    pub table: Option<String>,
    pub query: Option<QueryCondition>,
    pub row_count: Option<TwoEnds>,
    pub verify: Option<TwoEnds>,
    pub timeout_seconds: Option<u64>,
    pub poll_seconds: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectsCondition {
    pub address: String,
    pub glob: Option<String>,
    pub min_count: Option<u64>,
    pub min_age_seconds: Option<u64>,
    /// A file that must exist too (`_SUCCESS`).
    pub marker: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryCondition {
    /// A database URL (`postgres://…`, `mysql://…`, `sqlite://…`).
    pub url: String,
    /// Holds when its first row's first column is true.
    pub sql: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TwoEnds {
    pub source: String,
    pub destination: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifyRule {
    pub channel: String,
    pub on: Vec<String>,
    pub severity: Option<String>,
}

/// A checked Pipeline manifest.
#[derive(Clone, Debug)]
pub struct PipelineManifest {
    pub raw: Value,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: PipelineSpec,
}

/// Checks a Pipeline manifest; every problem is listed, each naming its field.
pub fn validate_pipeline(raw: Value) -> Result<PipelineManifest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let (raw, name, labels, spec) =
        manifest_parts::<PipelineSpec>(raw, "Pipeline", "spec, with tasks", &mut errors);
    if let Some(spec) = &spec {
        check_spec(&name, spec, &mut errors);
    }
    match (errors.is_empty(), spec) {
        (true, Some(spec)) => Ok(PipelineManifest {
            raw,
            name,
            labels,
            spec,
        }),
        _ => Err(errors),
    }
}

/// A manifest's parts (`status` left out): the object, its name, its labels and its spec
/// as `T`, each problem with them added to `errors`.
pub(super) fn manifest_parts<T: serde::de::DeserializeOwned>(
    raw: Value,
    kind: &str,
    spec_hint: &str,
    errors: &mut Vec<FieldError>,
) -> (Value, String, BTreeMap<String, String>, Option<T>) {
    let Value::Object(mut top) = raw else {
        errors.push(FieldError::new(
            "",
            format!("a {kind} is an object with apiVersion, kind, metadata and spec"),
        ));
        return (Value::Null, String::new(), BTreeMap::new(), None);
    };
    top.remove("status");
    for key in top.keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&key.as_str()) {
            errors.push(FieldError::new(key, "unknown field"));
        }
    }
    if top.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
        errors.push(FieldError::new(
            "apiVersion",
            format!("required: {API_VERSION}"),
        ));
    }
    if top.get("kind").and_then(Value::as_str) != Some(kind) {
        errors.push(FieldError::new("kind", format!("required: {kind}")));
    }
    let (name, labels) = metadata(top.get("metadata"), errors);
    let spec = match top.get("spec") {
        Some(spec) => match serde_json::from_value::<T>(spec.clone()) {
            Ok(spec) => Some(spec),
            Err(e) => {
                errors.push(serde_error("spec", &e.to_string()));
                None
            }
        },
        None => {
            errors.push(FieldError::new("spec", format!("required: {spec_hint}")));
            None
        }
    };
    (Value::Object(top), name, labels, spec)
}

fn check_spec(pipeline: &str, spec: &PipelineSpec, errors: &mut Vec<FieldError>) {
    if spec.tasks.is_empty() {
        errors.push(FieldError::new("spec.tasks", "at least one task"));
    }
    if let Some(expr) = &spec.schedule {
        if let Err(reason) = Schedule::parse(expr, spec.time_zone.as_deref()) {
            errors.push(FieldError::new("spec.schedule", reason));
        }
    } else if spec.time_zone.is_some() {
        errors.push(FieldError::new(
            "spec.timeZone",
            "applies to a schedule; set spec.schedule too",
        ));
    }
    if spec.max_parallel == Some(0) {
        errors.push(FieldError::new("spec.maxParallel", "must be at least 1"));
    }
    if let Some(trigger) = &spec.trigger {
        check_trigger(trigger, errors);
    }
    let mut names = BTreeSet::new();
    for (i, task) in spec.tasks.iter().enumerate() {
        let at = format!("spec.tasks[{i}]");
        if let Err(reason) = crate::resource::check_name(&task.name) {
            errors.push(FieldError::new(format!("{at}.name"), reason));
        }
        if !names.insert(task.name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("task '{}' is named twice", task.name),
            ));
        }
    }
    for (i, task) in spec.tasks.iter().enumerate() {
        check_task(pipeline, spec, i, task, &names, errors);
    }
    if let Some(cycle) = cycle(&spec.tasks) {
        errors.push(FieldError::new(
            "spec.tasks",
            format!(
                "the tasks depend on each other in a cycle: {}",
                cycle.join(" → ")
            ),
        ));
    }
    for (i, rule) in spec.notify.iter().enumerate() {
        let at = format!("spec.notify[{i}]");
        if rule.channel.trim().is_empty() {
            errors.push(FieldError::new(format!("{at}.channel"), "required"));
        }
        if rule.on.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.on"),
                format!(
                    "list the events to notify of: {}",
                    NOTIFY_REASONS.join(", ")
                ),
            ));
        }
        for reason in &rule.on {
            if !NOTIFY_REASONS.contains(&reason.as_str()) {
                errors.push(FieldError::new(
                    format!("{at}.on"),
                    format!(
                        "unknown event '{reason}'; use {}",
                        NOTIFY_REASONS.join(", ")
                    ),
                ));
            }
        }
        if let Some(s) = &rule.severity {
            if s != "Normal" && s != "Warning" {
                errors.push(FieldError::new(
                    format!("{at}.severity"),
                    "Normal or Warning",
                ));
            }
        }
    }
}

fn check_trigger(trigger: &TriggerSpec, errors: &mut Vec<FieldError>) {
    if trigger.object_created.is_some() == trigger.after.is_some() {
        errors.push(FieldError::new(
            "spec.trigger",
            "exactly one of objectCreated or after",
        ));
    }
    if let Some(o) = &trigger.object_created {
        let at = "spec.trigger.objectCreated";
        match DataAddress::parse(&o.address) {
            Ok(a) if a.names_a_directory() => {}
            Ok(_) => errors.push(FieldError::new(
                format!("{at}.address"),
                "a directory or prefix to watch (ending in '/')",
            )),
            Err(e) => errors.push(FieldError::new(format!("{at}.address"), e.to_string())),
        }
        if let Some(glob) = &o.glob {
            if let Err(e) = globset::Glob::new(glob) {
                errors.push(FieldError::new(format!("{at}.glob"), e.to_string()));
            }
        }
        if o.batch == Some(0) || o.poll_seconds == Some(0) {
            errors.push(FieldError::new(at, "batch and pollSeconds are at least 1"));
        }
    }
    if let Some(after) = &trigger.after {
        if after.pipeline.is_some() == after.transfer.is_some() {
            errors.push(FieldError::new(
                "spec.trigger.after",
                "exactly one of pipeline or transfer",
            ));
        }
    }
}

pub(super) fn check_task(
    pipeline: &str,
    spec: &PipelineSpec,
    i: usize,
    task: &TaskSpec,
    names: &BTreeSet<&str>,
    errors: &mut Vec<FieldError>,
) {
    let at = format!("spec.tasks[{i}]");
    for (j, dep) in task.depends_on.iter().enumerate() {
        if dep.task == task.name {
            errors.push(FieldError::new(
                format!("{at}.dependsOn[{j}].task"),
                "a task cannot depend on itself",
            ));
        } else if !names.contains(dep.task.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.dependsOn[{j}].task"),
                format!("no task named '{}'", dep.task),
            ));
        }
    }
    // Parameters are substituted at run time; checked here with their defaults.
    let task_value = serde_json::to_value(task).unwrap_or_default();
    for used in placeholders(&task_value) {
        let declared = match used.strip_prefix("params.") {
            Some(p) => spec.params.contains_key(p),
            None => used.starts_with("trigger.") && spec.trigger.is_some(),
        };
        if !declared {
            errors.push(FieldError::new(
                at.clone(),
                format!(
                    "'${{{used}}}' is not a declared parameter (spec.params) nor a trigger's value"
                ),
            ));
        }
    }
    match task.kind() {
        None => errors.push(FieldError::new(
            at.clone(),
            "exactly one of transfer, transferRef, command or template",
        )),
        Some(TaskKind::Transfer) => {
            let inline = substitute(task.transfer.as_ref().unwrap_or(&Value::Null), spec);
            let manifest = json!({"apiVersion": API_VERSION, "kind": "BatchTransfer",
                "metadata": {"name": format!("{pipeline}-{}", task.name).chars().take(63).collect::<String>()},
                "spec": inline});
            if let Err(found) = validate(manifest) {
                for e in found {
                    let field = match e.field.strip_prefix("spec") {
                        Some(rest) => format!("{at}.transfer{rest}"),
                        None => format!("{at}.transfer"),
                    };
                    errors.push(FieldError::new(field, e.message));
                }
            }
        }
        Some(TaskKind::TransferRef) => {
            if let Err(reason) =
                crate::resource::check_name(task.transfer_ref.as_deref().unwrap_or(""))
            {
                errors.push(FieldError::new(format!("{at}.transferRef"), reason));
            }
        }
        Some(TaskKind::Command) => {
            let command = task.command.as_ref().expect("checked");
            check_command_spec(&format!("{at}.command"), command, errors);
        }
        Some(TaskKind::Template) => {
            // A registered template is checked against the store (check_template_use).
            let used = task.template.as_ref().expect("checked");
            if let Some((_, needed)) = TEMPLATES.iter().find(|(name, _)| *name == used.name) {
                let needed: Vec<(&str, bool)> = needed.iter().map(|p| (*p, true)).collect();
                check_params(&at, used, &needed, errors);
            }
        }
    }
    if let Some(c) = &task.wait_for {
        check_condition(&format!("{at}.waitFor"), c, true, spec, errors);
    }
    if let Some(c) = &task.check {
        check_condition(&format!("{at}.check"), c, false, spec, errors);
    }
    if task.timeout_seconds == Some(0) {
        errors.push(FieldError::new(
            format!("{at}.timeoutSeconds"),
            "must be at least 1",
        ));
    }
    if task.retries.as_ref().is_some_and(|r| r.count > 100) {
        errors.push(FieldError::new(
            format!("{at}.retries.count"),
            "at most 100",
        ));
    }
}

/// Checks the parameters a task gives a template: `needed` names each parameter the
/// template takes and whether it must be given.
fn check_params(
    at: &str,
    used: &TemplateUse,
    needed: &[(&str, bool)],
    errors: &mut Vec<FieldError>,
) {
    for (p, _) in needed
        .iter()
        .filter(|(p, required)| *required && !used.params.contains_key(*p))
    {
        errors.push(FieldError::new(
            format!("{at}.template.params.{p}"),
            format!("required by template '{}'", used.name),
        ));
    }
    for p in used
        .params
        .keys()
        .filter(|p| !needed.iter().any(|(n, _)| n == p))
    {
        let takes: Vec<&str> = needed.iter().map(|(n, _)| *n).collect();
        errors.push(FieldError::new(
            format!("{at}.template.params.{p}"),
            match takes.is_empty() {
                true => format!("template '{}' takes no parameters", used.name),
                false => format!("template '{}' takes {}", used.name, takes.join(", ")),
            },
        ));
    }
}

/// Checks the tasks of `spec` that use a template which is not built in against the
/// registered ones (`registered` finds one by name).
pub fn check_template_uses<'a>(
    spec: &PipelineSpec,
    registered: impl Fn(&str) -> Option<&'a super::templates::TaskTemplateSpec>,
    names: &[String],
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, task) in spec.tasks.iter().enumerate() {
        let Some(used) = task.template.as_ref().filter(|_| task.kind().is_some()) else {
            continue;
        };
        if TEMPLATES.iter().any(|(name, _)| *name == used.name) {
            continue;
        }
        let at = format!("spec.tasks[{i}]");
        match registered(&used.name) {
            Some(template) => {
                let needed: Vec<(&str, bool)> = template
                    .params
                    .iter()
                    .map(|(p, s)| (p.as_str(), s.default.is_none()))
                    .collect();
                check_params(&at, used, &needed, &mut errors);
            }
            None => errors.push(FieldError::new(
                format!("{at}.template.name"),
                format!(
                    "unknown template '{}'; built in: {}; registered: {}",
                    used.name,
                    TEMPLATES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                    match names.is_empty() {
                        true => "none (ferry templates apply -f FILE)".to_string(),
                        false => names.join(", "),
                    }
                ),
            )),
        }
    }
    errors
}

/// Checks a `kind: Command`'s `spec.command` (a pipeline's command task is checked as
/// part of its pipeline).
pub fn check_command(at: &str, value: &Value, errors: &mut Vec<FieldError>) {
    match serde_json::from_value::<CommandSpec>(value.clone()) {
        Ok(command) => check_command_spec(at, &command, errors),
        Err(e) => errors.push(serde_error(at, &e.to_string())),
    }
}

fn check_command_spec(at: &str, command: &CommandSpec, errors: &mut Vec<FieldError>) {
    if command.argv.is_empty() || command.argv[0].trim().is_empty() {
        errors.push(FieldError::new(
            format!("{at}.argv"),
            "the program and its arguments, e.g. [python3, summary.py]",
        ));
    }
    if command.timeout_seconds == Some(0) {
        errors.push(FieldError::new(
            format!("{at}.timeoutSeconds"),
            "must be at least 1",
        ));
    }
    if let Some(p) = &command.progress {
        check_progress(&format!("{at}.progress"), p, errors);
    }
}

fn check_progress(at: &str, p: &ProgressSpec, errors: &mut Vec<FieldError>) {
    if p.stdout_regex.is_some() == p.watch_path.is_some() {
        errors.push(FieldError::new(
            at,
            "exactly one of stdoutRegex or watchPath (with expectedBytes)",
        ));
    }
    if let Some(re) = &p.stdout_regex {
        match regex::Regex::new(re) {
            Ok(r) if r.captures_len() >= 2 => {}
            Ok(_) => errors.push(FieldError::new(
                format!("{at}.stdoutRegex"),
                "needs a group capturing the percentage, e.g. '(\\d+)%'",
            )),
            Err(e) => errors.push(FieldError::new(
                format!("{at}.stdoutRegex"),
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .to_string(),
            )),
        }
    }
    if p.watch_path.is_some() && p.expected_bytes.unwrap_or(0) == 0 {
        errors.push(FieldError::new(
            format!("{at}.expectedBytes"),
            "required with watchPath: the bytes the command writes in all",
        ));
    }
}

fn check_condition(
    at: &str,
    c: &Condition,
    before: bool,
    spec: &PipelineSpec,
    errors: &mut Vec<FieldError>,
) {
    let kinds: Vec<&str> = [
        ("objects", c.objects.is_some()),
        ("table", c.table.is_some()),
        ("query", c.query.is_some()),
        ("rowCount", c.row_count.is_some()),
        ("verify", c.verify.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    let allowed: &[&str] = match before {
        true => &["objects", "table", "query"],
        false => &["rowCount", "verify", "query"],
    };
    if kinds.len() != 1 || !allowed.contains(&kinds[0]) {
        errors.push(FieldError::new(
            at,
            format!("exactly one of {}", allowed.join(", ")),
        ));
    }
    if c.timeout_seconds == Some(0) || c.poll_seconds == Some(0) {
        errors.push(FieldError::new(
            at,
            "timeoutSeconds and pollSeconds are at least 1",
        ));
    }
    let address = |field: &str, text: &str, errors: &mut Vec<FieldError>| {
        let text = substitute(&Value::String(text.into()), spec);
        if let Err(e) = DataAddress::parse(text.as_str().unwrap_or_default()) {
            errors.push(FieldError::new(format!("{at}.{field}"), e.to_string()));
        }
    };
    if let Some(o) = &c.objects {
        address("objects.address", &o.address, errors);
        if let Some(glob) = &o.glob {
            if let Err(e) = globset::Glob::new(glob) {
                errors.push(FieldError::new(format!("{at}.objects.glob"), e.to_string()));
            }
        }
    }
    if let Some(t) = &c.table {
        address("table", t, errors);
    }
    if let Some(q) = &c.query {
        if let Err(e) = ferry_core::TableAddress::parse_connection(&q.url) {
            errors.push(FieldError::new(format!("{at}.query.url"), e.to_string()));
        }
        if q.sql.trim().is_empty() {
            errors.push(FieldError::new(format!("{at}.query.sql"), "required"));
        }
    }
    for (name, ends) in [("rowCount", &c.row_count), ("verify", &c.verify)] {
        if let Some(ends) = ends {
            address(&format!("{name}.source"), &ends.source, errors);
            address(&format!("{name}.destination"), &ends.destination, errors);
        }
    }
}

/// The `${…}` placeholders in the strings of `value`.
fn placeholders(value: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(start) = rest.find("${") {
                    let Some(len) = rest[start + 2..].find('}') else {
                        break;
                    };
                    found.insert(rest[start + 2..start + 2 + len].to_string());
                    rest = &rest[start + 2 + len + 1..];
                }
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    found
}

/// `value` with each parameter replaced by its default (or its name) and each trigger
/// value by a sample, for checking what a run will see.
fn substitute(value: &Value, spec: &PipelineSpec) -> Value {
    match value {
        Value::String(s) => {
            let mut out = s.clone();
            for used in placeholders(value) {
                let with = match used.strip_prefix("params.") {
                    Some(p) => spec
                        .params
                        .get(p)
                        .and_then(|d| d.default.clone())
                        .unwrap_or_else(|| p.to_string()),
                    None => used.replace('.', "-"),
                };
                out = out.replace(&format!("${{{used}}}"), &with);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, spec)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, spec)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// The tasks around a dependency cycle, first one repeated at the end, if any.
fn cycle(tasks: &[TaskSpec]) -> Option<Vec<String>> {
    // A name given twice (reported on its own) is its first task.
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        index.entry(t.name.as_str()).or_insert(i);
    }
    // 0 unvisited, 1 on the path, 2 done.
    let mut state = vec![0u8; tasks.len()];
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        tasks: &[TaskSpec],
        index: &BTreeMap<&str, usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        state[i] = 1;
        path.push(i);
        for dep in &tasks[i].depends_on {
            let Some(&j) = index.get(dep.task.as_str()) else {
                continue;
            };
            if j == i {
                continue;
            }
            if state[j] == 1 {
                let from = path.iter().position(|&k| k == j).unwrap_or(0);
                let mut names: Vec<String> = path[from..]
                    .iter()
                    .map(|&k| tasks[k].name.clone())
                    .collect();
                names.push(tasks[j].name.clone());
                return Some(names);
            }
            if state[j] == 0 {
                if let Some(found) = visit(j, tasks, index, state, path) {
                    return Some(found);
                }
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    (0..tasks.len()).find_map(|i| {
        if state[i] == 0 {
            visit(i, tasks, &index, &mut state, &mut path)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(spec: Value) -> Value {
        json!({"apiVersion": "ferry.dev/v1", "kind": "Pipeline",
               "metadata": {"name": "daily-orders"}, "spec": spec})
    }

    fn fields(raw: Value) -> Vec<String> {
        validate_pipeline(raw)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_file_drop_load_check_and_summary_is_accepted() {
        let raw = pipeline(json!({
            "params": {"date": {"default": "2026-12-03"}},
            "trigger": {"objectCreated": {"address": "s3://drop/in/", "glob": "*.csv"}},
            "tasks": [
                {"name": "load",
                 "waitFor": {"objects": {"address": "s3://drop/in/", "marker": "_SUCCESS"},
                             "timeoutSeconds": 3600},
                 "transfer": {"source": {"type": "s3", "bucket": "drop", "key": "in/${params.date}/"},
                              "destination": {"type": "postgres",
                                              "url": "postgres://ferry@db/ferry", "table": "orders"}},
                 "check": {"rowCount": {"source": "s3://drop/in/", "destination": "postgres://ferry@db/ferry?table=orders"}}},
                {"name": "summary", "dependsOn": [{"task": "load"}],
                 "command": {"argv": ["python3", "summary.py", "${params.date}", "${trigger.object.key}"],
                             "progress": {"stdoutRegex": "(\\d+)%"}}},
                {"name": "export", "dependsOn": [{"task": "summary", "when": "succeeded"}],
                 "template": {"name": "table-to-lake",
                              "params": {"table": "postgres://db/ferry?table=orders", "destination": "s3://lake/orders/"}}},
                {"name": "cleanup-on-failure", "dependsOn": [{"task": "load", "when": "failed"}],
                 "transferRef": "clean-drop", "onFailure": "handled"}
            ],
            "notify": [{"channel": "ops-mail", "on": ["TaskFailed", "PipelineFailed"]}]
        }));
        let checked = validate_pipeline(raw).unwrap();
        assert_eq!(checked.spec.tasks.len(), 4);
        assert_eq!(checked.spec.tasks[2].kind(), Some(TaskKind::Template));
        assert_eq!(checked.spec.tasks[3].on_failure, OnFailure::Handled);
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let raw = pipeline(json!({
            "tasks": [
                {"name": "a", "dependsOn": [{"task": "c"}], "command": {"argv": ["true"]}},
                {"name": "b", "dependsOn": [{"task": "a"}, {"task": "nope"}],
                 "command": {"argv": []}, "template": {"name": "copy-tree", "params": {}}},
                {"name": "c", "dependsOn": [{"task": "b"}],
                 "transfer": {"source": {"type": "file", "path": "/in/${params.day}/"},
                              "destination": {"type": "ftp"}}},
                {"name": "d", "template": {"name": "table-to-lake", "params": {"table": "x", "extra": "y"}},
                 "waitFor": {"rowCount": {"source": "/a/", "destination": "/b/"}},
                 "check": {"query": {"url": "postgres://db/x", "sql": " "}}},
                {"name": "e", "command": {"argv": ["x"], "progress": {"stdoutRegex": "\\d+%"}}},
                {"name": "a", "transferRef": "Bad_Name"}
            ],
            "notify": [{"channel": "ops", "on": ["Whatever"]}],
            "trigger": {"objectCreated": {"address": "s3://drop/in/file.csv"}}
        }));
        let found = fields(raw);
        let expect = [
            "spec.tasks[5].name: task 'a' is named twice",
            "spec.tasks[1].dependsOn[1].task: no task named 'nope'",
            "spec.tasks[1]: exactly one of transfer, transferRef, command or template",
            "spec.tasks[2]: '${params.day}' is not a declared parameter",
            "spec.tasks[2].transfer.destination",
            "spec.tasks[3].template.params.destination: required by template 'table-to-lake'",
            "spec.tasks[3].template.params.extra: template 'table-to-lake' takes table, destination",
            "spec.tasks[3].waitFor: exactly one of objects, table, query",
            "spec.tasks[3].check.query.sql: required",
            "spec.tasks[4].command.progress.stdoutRegex: needs a group",
            "spec.tasks[5].transferRef",
            "spec.tasks: the tasks depend on each other in a cycle: a → c → b → a",
            "spec.notify[0].on: unknown event 'Whatever'",
            "spec.trigger.objectCreated.address: a directory or prefix",
        ];
        for e in expect {
            assert!(
                found.iter().any(|f| f.starts_with(e)),
                "{e}\nnot in:\n{}",
                found.join("\n")
            );
        }
    }

    #[test]
    fn unknown_fields_and_kinds_are_named() {
        let raw = json!({"apiVersion": "ferry.dev/v1", "kind": "Pipe", "metadata": {"name": "p"},
                         "spec": {"tasks": [{"name": "a", "comand": {"argv": ["x"]}}]}});
        let found = fields(raw);
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("kind: required: Pipeline")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f.contains("comand")), "{found:?}");
    }

    #[test]
    fn a_cycle_names_its_tasks_and_a_graph_without_one_passes() {
        let task = |name: &str, deps: &[&str]| TaskSpec {
            name: name.into(),
            depends_on: deps
                .iter()
                .map(|d| Dependency {
                    task: d.to_string(),
                    when: When::Succeeded,
                })
                .collect(),
            transfer: None,
            transfer_ref: Some("t".into()),
            command: None,
            template: None,
            wait_for: None,
            check: None,
            retries: None,
            on_failure: OnFailure::Fail,
            timeout_seconds: None,
        };
        let diamond = [
            task("a", &[]),
            task("b", &["a"]),
            task("c", &["a"]),
            task("d", &["b", "c"]),
        ];
        assert_eq!(cycle(&diamond), None);
        let looped = [task("a", &["d"]), task("b", &["a"]), task("d", &["b"])];
        assert_eq!(
            cycle(&looped),
            Some(vec!["a".into(), "d".into(), "b".into(), "a".into()])
        );
    }
}
