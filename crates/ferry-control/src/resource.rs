//! Transfers as the API shows them: validation of a manifest before anything is stored,
//! phases, status, runs and events.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use ferry_core::{Error, TransformSpec};
use ferry_engine::manifest::{AddressSpec, ConcurrencyPolicy, API_VERSION};
use ferry_state::{EventRecord, RunRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::schedule::Schedule;

pub const DEFAULT_MAX_FAILED_RETRIES: u32 = 3;
pub const DEFAULT_SUCCESSFUL_HISTORY: u32 = 3;
pub const DEFAULT_FAILED_HISTORY: u32 = 1;
const MAX_RETRIES: u64 = 100;
const MAX_HISTORY: u64 = 1000;

/// Where a transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Phase {
    /// Waiting for its first run (or its next schedule, before any run).
    Pending,
    Running,
    /// The last run succeeded.
    Succeeded,
    /// The last run failed after its retries; the next schedule tries again.
    Failed,
    /// The last run failed for a reason retrying cannot fix (authentication, data).
    Fatal,
    /// `spec.suspend` is true and nothing runs.
    Suspended,
    /// The spec cannot run as written (checked against the data at run time).
    ConfigurationError,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Running,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Fatal,
        Phase::Suspended,
        Phase::ConfigurationError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Fatal => "Fatal",
            Phase::Suspended => "Suspended",
            Phase::ConfigurationError => "ConfigurationError",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text))
    }
}

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Its place in the manifest, e.g. `spec.schedule` or `spec.transformation[1].columns`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A manifest that passed validation, with what the control plane reads from it.
#[derive(Clone, Debug)]
pub struct TransferManifest {
    /// The manifest as given (secrets as references), `status` removed.
    pub raw: Value,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub settings: Settings,
}

/// The service fields of a spec, with defaults applied.
#[derive(Clone, Debug)]
pub struct Settings {
    pub schedule: Option<Schedule>,
    pub suspend: bool,
    pub concurrency_policy: ConcurrencyPolicy,
    pub max_failed_retries: u32,
    pub successful_history: u32,
    pub failed_history: u32,
    /// A StreamTransfer: its run keeps the destination up to date until it is suspended or
    /// deleted.
    pub stream: bool,
    /// A `kind: Command`: its runs execute a program on a data plane.
    pub command: bool,
}

const SPEC_FIELDS: [&str; 13] = [
    "command",
    "dataPlane",
    "execution",
    "source",
    "destination",
    "transformation",
    "schedule",
    "timeZone",
    "suspend",
    "concurrencyPolicy",
    "maxFailedRetries",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
];

/// Checks everything about a manifest that can be checked without touching data or
/// secrets, and lists every invalid field.
pub fn validate(raw: Value) -> Result<TransferManifest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Value::Object(mut top) = raw else {
        return Err(vec![FieldError::new(
            "",
            "a transfer is an object with apiVersion, kind, metadata and spec",
        )]);
    };
    top.remove("status");
    for key in top.keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&key.as_str()) {
            errors.push(FieldError::new(key, "unknown field"));
        }
    }
    match top.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => errors.push(FieldError::new(
            "apiVersion",
            format!("{} is not supported; use {API_VERSION}", short(other)),
        )),
        None => errors.push(FieldError::new(
            "apiVersion",
            format!("required: {API_VERSION}"),
        )),
    }
    let (stream, command) = match top.get("kind").and_then(Value::as_str) {
        Some("BatchTransfer") => (false, false),
        Some("StreamTransfer") => (true, false),
        Some("Command") => (false, true),
        Some(other) => {
            errors.push(FieldError::new(
                "kind",
                format!("unknown kind '{other}'; use BatchTransfer, StreamTransfer or Command"),
            ));
            (false, false)
        }
        None => {
            errors.push(FieldError::new(
                "kind",
                "required: BatchTransfer, StreamTransfer or Command",
            ));
            (false, false)
        }
    };
    let (name, labels) = metadata(top.get("metadata"), &mut errors);
    let settings = match top.get("spec") {
        Some(Value::Object(spec)) => {
            if stream {
                check_stream(spec, &mut errors);
            }
            spec_settings(spec, command, &mut errors).map(|s| Settings {
                stream,
                command,
                ..s
            })
        }
        Some(_) => {
            errors.push(FieldError::new("spec", "must be an object"));
            None
        }
        None => {
            errors.push(FieldError::new("spec", "required"));
            None
        }
    };
    // What only the two ends together tell (a setting of one that the other rules out).
    if errors.is_empty() && !command && !has_run_time_values(&Value::Object(top.clone())) {
        let planned = ferry_engine::manifest::Manifest::from_json(Value::Object(top.clone()))
            .and_then(|m| m.plan());
        if let Err(ferry_core::Error::InvalidOption { name, reason }) = planned {
            if name.starts_with("spec.") {
                errors.push(FieldError::new(name, reason));
            }
        }
    }
    match (errors.is_empty(), settings) {
        (true, Some(settings)) => Ok(TransferManifest {
            raw: Value::Object(top),
            name,
            labels,
            settings,
        }),
        _ => Err(errors),
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

pub(crate) fn metadata(
    meta: Option<&Value>,
    errors: &mut Vec<FieldError>,
) -> (String, BTreeMap<String, String>) {
    let Some(Value::Object(meta)) = meta else {
        errors.push(FieldError::new("metadata", "required, with a name"));
        return (String::new(), BTreeMap::new());
    };
    for key in meta.keys() {
        if !["name", "labels", "annotations"].contains(&key.as_str()) {
            errors.push(FieldError::new(format!("metadata.{key}"), "unknown field"));
        }
    }
    let name = match meta.get("name") {
        Some(Value::String(name)) => {
            if let Err(reason) = check_name(name) {
                errors.push(FieldError::new("metadata.name", reason));
            }
            name.clone()
        }
        _ => {
            errors.push(FieldError::new("metadata.name", "required, a string"));
            String::new()
        }
    };
    let mut labels = BTreeMap::new();
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) if field == "labels" => {
                            labels.insert(k.clone(), s.clone());
                        }
                        Value::String(_) => {}
                        _ => errors.push(FieldError::new(
                            format!("metadata.{field}.{k}"),
                            "must be a string",
                        )),
                    }
                }
            }
            Some(_) => errors.push(FieldError::new(
                format!("metadata.{field}"),
                "must be a map of strings",
            )),
        }
    }
    (name, labels)
}

/// Names appear in URLs, configuration keys and Kubernetes objects: DNS labels.
/// A stable 64-bit hash (FNV-1a) of `text`, for names made from longer ones.
pub(crate) fn name_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn check_name(name: &str) -> Result<(), String> {
    check_dns_label(name, 63)
}

/// A DNS label of at most `max` bytes: lowercase letters, digits and '-', starting and
/// ending with a letter or digit.
/// `spec.execution: {engine: auto | inProcess | <name>, prefer: latency | throughput}`.
/// Whether a named engine exists is the data plane's to say.
fn check_execution(value: Option<&Value>, errors: &mut Vec<FieldError>) {
    let exec = match value {
        None | Some(Value::Null) => return,
        Some(Value::Object(m)) => m,
        Some(_) => {
            errors.push(FieldError::new(
                "spec.execution",
                "must be an object with engine and prefer",
            ));
            return;
        }
    };
    for (key, value) in exec {
        match key.as_str() {
            "engine" => {
                let ok = value.as_str().is_some_and(|e| {
                    e == "auto" || e == "inProcess" || check_dns_label(e, 63).is_ok()
                });
                if !ok {
                    errors.push(FieldError::new(
                        "spec.execution.engine",
                        "must be auto, inProcess or the name of an engine",
                    ));
                }
            }
            "prefer" => {
                if !matches!(value.as_str(), Some("latency" | "throughput")) {
                    errors.push(FieldError::new(
                        "spec.execution.prefer",
                        "must be latency or throughput",
                    ));
                }
            }
            _ => errors.push(FieldError::new(
                format!("spec.execution.{key}"),
                "unknown field; use engine or prefer",
            )),
        }
    }
}

pub fn check_dns_label(name: &str, max: usize) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}': use 1 to {max} lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

fn spec_settings(
    spec: &Map<String, Value>,
    command: bool,
    errors: &mut Vec<FieldError>,
) -> Option<Settings> {
    let before = errors.len();
    for key in spec.keys() {
        let moves = ["source", "destination", "transformation", "execution"];
        if !SPEC_FIELDS.contains(&key.as_str())
            || (command && moves.contains(&key.as_str()))
            || (!command && key == "command")
        {
            errors.push(FieldError::new(format!("spec.{key}"), "unknown field"));
        }
    }
    if command {
        match spec.get("command") {
            None => errors.push(FieldError::new(
                "spec.command",
                "required: the program to run (argv, env, workingDir, timeoutSeconds, progress)",
            )),
            Some(value) => crate::pipeline::spec::check_command("spec.command", value, errors),
        }
    }
    for side in ["source", "destination"].into_iter().filter(|_| !command) {
        match spec.get(side) {
            None => errors.push(FieldError::new(format!("spec.{side}"), "required")),
            Some(value) => check_address(&format!("spec.{side}"), value, errors),
        }
    }
    match spec.get("transformation") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, item) in list.iter().enumerate() {
                check_transformation(&format!("spec.transformation[{i}]"), item, errors);
            }
        }
        Some(_) => errors.push(FieldError::new(
            "spec.transformation",
            "must be a list of transformations",
        )),
    }

    match spec.get("dataPlane") {
        None | Some(Value::Null) => {}
        Some(Value::Object(dp)) => {
            for (key, value) in dp {
                let ok = match key.as_str() {
                    "labels" => value
                        .as_object()
                        .is_some_and(|m| m.values().all(Value::is_string)),
                    "strategy" => value.as_str().is_some_and(|s| !s.trim().is_empty()),
                    _ => {
                        errors.push(FieldError::new(
                            format!("spec.dataPlane.{key}"),
                            "unknown field; use labels or strategy",
                        ));
                        continue;
                    }
                };
                if !ok {
                    errors.push(FieldError::new(
                        format!("spec.dataPlane.{key}"),
                        if key == "labels" {
                            "must be a map of strings"
                        } else {
                            "must be the name of a selection strategy"
                        },
                    ));
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            "spec.dataPlane",
            "must be an object with labels and strategy",
        )),
    }
    check_execution(spec.get("execution"), errors);
    let time_zone = match spec.get("timeZone") {
        None | Some(Value::Null) => None,
        Some(Value::String(tz)) => Some(tz.as_str()),
        Some(_) => {
            errors.push(FieldError::new("spec.timeZone", "must be a string"));
            None
        }
    };
    let schedule = match spec.get("schedule") {
        None | Some(Value::Null) => {
            if time_zone.is_some() {
                errors.push(FieldError::new(
                    "spec.timeZone",
                    "applies to a schedule; set spec.schedule too",
                ));
            }
            None
        }
        Some(Value::String(expr)) => match Schedule::parse(expr, time_zone) {
            Ok(s) => Some(s),
            Err(reason) => {
                let field = if reason.contains("time zone") {
                    "spec.timeZone"
                } else {
                    "spec.schedule"
                };
                errors.push(FieldError::new(field, reason));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(
                "spec.schedule",
                "must be a cron expression in a string, e.g. \"*/15 * * * *\"",
            ));
            None
        }
    };
    let suspend = match spec.get("suspend") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new("spec.suspend", "must be true or false"));
            false
        }
    };
    let concurrency_policy = match spec.get("concurrencyPolicy") {
        None | Some(Value::Null) => ConcurrencyPolicy::default(),
        Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| {
            errors.push(FieldError::new(
                "spec.concurrencyPolicy",
                format!("{} is not one of Forbid, Allow, Replace", short(v)),
            ));
            ConcurrencyPolicy::default()
        }),
    };
    let mut number = |field: &str, max: u64, default: u32| -> u32 {
        match spec.get(field) {
            None | Some(Value::Null) => default,
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => n as u32,
                _ => {
                    errors.push(FieldError::new(
                        format!("spec.{field}"),
                        format!(
                            "{} is out of range: a whole number from 0 to {max}",
                            short(v)
                        ),
                    ));
                    default
                }
            },
        }
    };
    let max_failed_retries = number("maxFailedRetries", MAX_RETRIES, DEFAULT_MAX_FAILED_RETRIES);
    let successful_history = number(
        "successfulJobsHistoryLimit",
        MAX_HISTORY,
        DEFAULT_SUCCESSFUL_HISTORY,
    );
    let failed_history = number(
        "failedJobsHistoryLimit",
        MAX_HISTORY,
        DEFAULT_FAILED_HISTORY,
    );
    (errors.len() == before).then_some(Settings {
        schedule,
        suspend,
        concurrency_policy,
        max_failed_retries,
        successful_history,
        failed_history,
        stream: false,
        command: false,
    })
}

/// What a StreamTransfer needs besides a BatchTransfer's fields: a topic to read, no
/// schedule, and a destination that keeps what earlier batches wrote (a directory, or a
/// table in `append` or `upsert` mode).
fn check_stream(spec: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let source = spec
        .get("source")
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str);
    if source.is_some_and(|t| t != "kafka") {
        errors.push(FieldError::new(
            "spec.source.type",
            "a StreamTransfer reads a stream: kafka",
        ));
    }
    if spec.get("schedule").is_some_and(|s| !s.is_null()) {
        errors.push(FieldError::new(
            "spec.schedule",
            "a StreamTransfer runs continuously; it takes no schedule",
        ));
    }
    let Some(dst) = spec.get("destination") else {
        return;
    };
    match dst.get("type").and_then(Value::as_str).unwrap_or("") {
        "file" | "s3" | "azure" | "az" | "gcs" | "gs" => {
            let at = if dst.get("key").is_some() {
                "key"
            } else {
                "path"
            };
            let ends = dst.get(at).and_then(Value::as_str).unwrap_or("");
            if !ends.is_empty() && !ends.ends_with('/') {
                errors.push(FieldError::new(
                    format!("spec.destination.{at}"),
                    "a StreamTransfer writes files into a directory: end it with '/'",
                ));
            }
        }
        "kafka" => errors.push(FieldError::new(
            "spec.destination.type",
            "a StreamTransfer from a topic into a topic is not supported",
        )),
        _ => {
            let mode = dst
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("overwrite");
            if mode == "overwrite" {
                errors.push(FieldError::new(
                    "spec.destination.mode",
                    "a StreamTransfer adds to its table: use append or upsert",
                ));
            }
        }
    }
}

/// True when some string in `v` is a secret reference resolved at run time.
fn has_run_time_values(v: &Value) -> bool {
    match v {
        Value::String(s) => s.starts_with("ref+"),
        Value::Array(items) => items.iter().any(has_run_time_values),
        Value::Object(map) => {
            map.contains_key("vaultPath") || map.values().any(has_run_time_values)
        }
        _ => false,
    }
}

fn check_address(at: &str, value: &Value, errors: &mut Vec<FieldError>) {
    let Value::Object(map) = value else {
        errors.push(FieldError::new(at, "must be an object with a type"));
        return;
    };
    // Serving for download is no transfer: nothing moves until a consumer asks.
    if map.get("type").and_then(Value::as_str) == Some("pull") {
        errors.push(FieldError::new(
            format!("{at}.type"),
            "'pull' is not a transfer's destination: serve a dataset for download with \
             `ferry pull start SOURCE` (a pull flow, with an endpoint and a token)",
        ));
        return;
    }
    let mut structural = map.clone();
    if let Some(path) = structural.remove("vaultPath") {
        if !path.is_string() {
            errors.push(FieldError::new(
                format!("{at}.vaultPath"),
                "must be a path in Vault, e.g. secret/data/lake",
            ));
        }
    }
    let spec: AddressSpec = match serde_json::from_value(Value::Object(structural)) {
        Ok(spec) => spec,
        Err(e) => {
            errors.push(serde_error(at, &e.to_string()));
            return;
        }
    };
    // Fields that come from Vault are only known at run time; what is here must still fit.
    if has_run_time_values(value) {
        return;
    }
    if let Err(e) = spec.address(at) {
        errors.push(field_error(at, e));
    }
}

fn check_transformation(at: &str, value: &Value, errors: &mut Vec<FieldError>) {
    let spec: TransformSpec = match serde_json::from_value(value.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            errors.push(serde_error(at, &e.to_string()));
            return;
        }
    };
    use ferry_core::Action;
    let needs_columns = !matches!(spec.action, Action::Filter | Action::Sample);
    if needs_columns && spec.columns.is_empty() {
        errors.push(FieldError::new(
            format!("{at}.columns"),
            format!(
                "required for action {}: the columns it applies to",
                spec.action.as_str()
            ),
        ));
    }
}

/// serde names unknown fields and bad variants in its message; lift the field name into
/// the path when it says which.
pub(crate) fn serde_error(at: &str, message: &str) -> FieldError {
    let field = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|rest| rest.split('`').next());
    match field {
        Some(name) => FieldError::new(format!("{at}.{name}"), first_clause(message)),
        None => FieldError::new(at, first_clause(message)),
    }
}

fn first_clause(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_string()
}

fn field_error(at: &str, e: Error) -> FieldError {
    match e {
        Error::InvalidOption { name, reason } => FieldError::new(name, reason),
        Error::InvalidAddress { address, reason } => {
            FieldError::new(at, format!("'{address}': {reason}"))
        }
        other => FieldError::new(at, other.to_string()),
    }
}

/// Milliseconds since the epoch as RFC 3339, for the API.
pub fn time_text(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Progress of a running run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunProgress {
    /// 0 to 1, when the total is known.
    pub fraction: Option<f64>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// A stream's events read or written, and how many the run plans (when it reads or
    /// writes a topic; progress and time left then count events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_total: Option<u64>,
    /// Seconds left at the current rate.
    pub eta_seconds: Option<f64>,
}

/// What a run moved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStats {
    /// Rows written (record transfers).
    pub num_records: u64,
    pub bytes: u64,
    /// Files, objects or tables written.
    pub objects: u64,
    pub duration_seconds: f64,
    pub bytes_per_second: f64,
    pub records_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,
    /// What the run wrote, relative to the destination (for `?cleanup=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub source_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub destination_schema: Option<Value>,
    /// Milliseconds since the epoch when the last record or byte moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_record_ms: Option<i64>,
    /// Which transfer service executes the run (this data plane, or an engine), why, and
    /// the engine's job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// Where a StreamTransfer's run stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
    /// A stream's batch: events left for a later one because their file is still open.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_events: u64,
    /// A command's exit code and the last lines it printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<crate::command::CommandResult>,
}

/// Where a StreamTransfer's run stands, as of its last batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// Per partition: the first offset not yet committed at the destination, the high
    /// watermark, and the events between.
    #[schema(value_type = Vec<Object>)]
    pub partitions: Vec<ferry_engine::topics::Position>,
    /// Events not yet committed, over all partitions.
    pub lag_events: i64,
    /// How old the oldest event not yet committed is, by record time (0 when caught up).
    pub lag_seconds: f64,
    /// Over the last minute.
    pub records_per_second: f64,
    pub bytes_per_second: f64,
    /// The outputs of the last batch that moved anything (files, or the table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_committed: Vec<String>,
    /// Batches committed by this run.
    pub batches: u64,
    /// Events read into files still open (not full, their record-time window not over),
    /// written when the files close.
    #[serde(default)]
    pub held_events: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a run is executed: the routing decision, and for a delegated run its external job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    #[serde(flatten)]
    pub decision: crate::engines::route::Decision,
    /// Our name for the engine's current job; kept before the job is submitted, so that a
    /// data plane killed in between finds the job by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::engines::JobRef>,
    /// Jobs submitted for the run so far.
    #[serde(default)]
    pub submissions: u32,
}

/// A run as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub id: String,
    pub transfer: String,
    /// Pending, Running, Succeeded, Failed, Fatal, ConfigurationError, Cancelled.
    pub phase: String,
    /// created, schedule, manual.
    pub trigger: String,
    pub attempt: i64,
    pub generation: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub stats: RunStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunView {
    pub fn of(run: &RunRecord) -> Self {
        Self {
            id: run.id.clone(),
            transfer: run.transfer.clone(),
            phase: run.phase.clone(),
            trigger: run.trigger.clone(),
            attempt: run.attempt,
            generation: run.generation,
            scheduled_for: run.scheduled_for.map(time_text),
            next_attempt_at: run.not_before.filter(|_| !run.finished()).map(time_text),
            created_at: time_text(run.created_at),
            started_at: run.started_at.map(time_text),
            finished_at: run.finished_at.map(time_text),
            owner: run.owner.clone(),
            stats: serde_json::from_value(run.stats.clone()).unwrap_or_default(),
            error: run.error.clone(),
        }
    }
}

/// A short reference to a finished run, in a transfer's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    pub id: String,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A transfer's status, kept current by the control plane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferStatus {
    #[schema(value_type = String)]
    pub phase: Option<Phase>,
    /// One line, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records written by the last completed run.
    pub num_records: u64,
    /// Bytes moved by the last completed run.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,
    pub observed_generation: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_record_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_completed_run: Option<RunRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failed_run: Option<RunRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub source_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub destination_schema: Option<Value>,
    /// A StreamTransfer: where its running stream stands (its run's `stats.stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

/// A transfer as the API shows it: the manifest with secrets redacted, and its status.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferView {
    pub api_version: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    #[schema(value_type = Object)]
    pub spec: Value,
    pub status: TransferStatus,
}

/// An event as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub seq: i64,
    pub transfer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    pub time: String,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub severity: String,
    pub reason: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub data: Value,
}

impl EventView {
    pub fn of(e: &EventRecord) -> Self {
        Self {
            seq: e.seq,
            transfer: e.event.transfer.clone(),
            run: e.event.run.clone(),
            time: time_text(e.event.time),
            severity: e.event.severity.clone(),
            reason: e.event.reason.clone(),
            message: e.event.message.clone(),
            data: e.event.data.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Value {
        json!({
            "apiVersion": "ferry.dev/v1",
            "kind": "BatchTransfer",
            "metadata": {"name": "orders", "labels": {"team": "lake"}},
            "spec": {
                "source": {"type": "file", "path": "in/orders.csv", "format": "csv"},
                "destination": {"type": "file", "path": "out/", "format": "parquet"},
                "transformation": [{"action": "RemoveColumn", "columns": ["notes"]}],
                "schedule": "*/5 * * * *",
                "maxFailedRetries": 2
            }
        })
    }

    #[test]
    fn a_good_manifest_passes_with_its_settings() {
        let m = validate(manifest()).unwrap();
        assert_eq!(m.name, "orders");
        assert_eq!(m.labels["team"], "lake");
        assert_eq!(m.settings.max_failed_retries, 2);
        assert_eq!(m.settings.successful_history, DEFAULT_SUCCESSFUL_HISTORY);
        assert!(m.settings.schedule.is_some());
    }

    #[test]
    fn a_pull_destination_points_to_ferry_pull() {
        let mut m = manifest();
        m["spec"]["destination"] = json!({"type": "pull"});
        let errors = validate(m).unwrap_err();
        let pull = errors
            .iter()
            .find(|e| e.field == "spec.destination.type")
            .unwrap_or_else(|| panic!("{errors:?}"));
        assert!(pull.message.contains("ferry pull start"), "{pull:?}");
    }

    #[test]
    fn every_invalid_field_is_listed() {
        let mut m = manifest();
        let spec = m["spec"].as_object_mut().unwrap();
        spec.insert("schedule".into(), json!("61 * * * *"));
        spec.remove("destination");
        spec.insert("maxFailedRetries".into(), json!(1000));
        spec.insert("failedJobsHistoryLimit".into(), json!(-1));
        spec.insert("concurrencyPolicy".into(), json!("Sometimes"));
        spec["source"]["type"] = json!("ftp");
        spec.insert(
            "transformation".into(),
            json!([{"action": "Digest"}, {"action": "Shuffle", "columns": ["a"]}]),
        );
        spec.insert("colour".into(), json!("red"));
        let errors = validate(m).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "spec.colour",
            "spec.source",
            "spec.destination",
            "spec.transformation[0].columns",
            "spec.transformation[1]",
            "spec.schedule",
            "spec.concurrencyPolicy",
            "spec.maxFailedRetries",
            "spec.failedJobsHistoryLimit",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing in {errors:?}"
            );
        }
        let source = errors.iter().find(|e| e.field == "spec.source").unwrap();
        assert!(source.message.contains("ftp"), "{source:?}");
        let shuffle = errors
            .iter()
            .find(|e| e.field == "spec.transformation[1]")
            .unwrap();
        assert!(shuffle.message.contains("Shuffle"), "{shuffle:?}");
        assert!(errors.iter().all(|e| !e.message.contains('\n')));
    }

    #[test]
    fn names_and_kinds() {
        let mut m = manifest();
        m["metadata"]["name"] = json!("Orders_2024");
        m["kind"] = json!("Copy");
        let errors = validate(m).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].field, "kind");
        assert_eq!(errors[1].field, "metadata.name");
    }

    #[test]
    fn vault_fields_are_checked_at_run_time_only() {
        let mut m = manifest();
        m["spec"]["destination"] = json!({"type": "s3", "vaultPath": "secret/data/lake",
                                          "format": "parquet"});
        validate(m.clone()).unwrap();
        m["spec"]["destination"]["colour"] = json!("red");
        let errors = validate(m).unwrap_err();
        assert_eq!(errors[0].field, "spec.destination.colour", "{errors:?}");
    }
}
