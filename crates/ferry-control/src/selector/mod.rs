//! Choosing a data plane for a run: the instances the control plane knows, what each can
//! handle, and the strategies that pick one among the capable ones.
//!
//! - [`DataPlaneInstance`], [`RunRequest`]: an instance and what a run needs from it.
//! - [`strategy`]: the [`SelectionStrategy`] trait, the built-ins and the registry by name.
//! - [`registry`]: the in-memory [`Selector`] that keeps instances and selects.
//! - [`dataplanes`]: the [`DataPlaneRegistry`] the control plane uses, in memory, in the
//!   shared control store, or over HTTP.
//! - [`config`]: seeding instances from the configuration file and the environment.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::resource::FieldError;

pub mod config;
pub mod dataplanes;
pub mod registry;
pub mod strategy;

pub use config::{InstanceConfig, SelectorConfig};
pub use dataplanes::{
    DataPlaneRegistry, InMemoryRegistry, Registered, RegistryError, RegistryOptions,
    RemoteRegistry, StoreRegistry,
};
pub use registry::{NoInstance, SelectError, Selection, Selector};
pub use strategy::{
    LeastLoaded, LeastRecentlyUsed, RandomChoice, RoundRobin, SelectionStrategy, StrategyRegistry,
    UnknownStrategy,
};

/// Store types as manifests name them (`spec.source.type`).
pub const STORE_TYPES: [&str; 9] = [
    "file", "s3", "azure", "gcs", "http", "postgres", "mysql", "sqlite", "kafka",
];

/// In an allowed-types list, this entry allows every type (as does an empty list).
pub const ANY_TYPE: &str = "*";

/// A data plane whose last heartbeat is older than this counts as unavailable: three
/// heartbeats at the usual 5 s interval.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

/// `/v1/dataplanes/select` selects, so no data plane may be named `select`.
const RESERVED_ID: &str = "select";

/// The canonical name of a store type, accepting the aliases manifests accept; `None` when
/// the type is unknown.
pub fn canonical_type(name: &str) -> Option<&'static str> {
    let lower = name.trim().to_ascii_lowercase();
    let canonical = match lower.as_str() {
        "az" | "azureblob" => "azure",
        "gs" | "googlecloudstorage" => "gcs",
        "postgresql" => "postgres",
        "mariadb" => "mysql",
        "sqlite3" => "sqlite",
        other => other,
    };
    STORE_TYPES.into_iter().find(|t| *t == canonical)
}

/// Whether a data plane takes runs now; an unreachable one is marked unavailable and skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum InstanceState {
    #[default]
    Available,
    Unavailable,
}

impl InstanceState {
    /// The name as serialized and stored: `Available` or `Unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Available => "Available",
            InstanceState::Unavailable => "Unavailable",
        }
    }
}

/// The load a data plane last reported, for the least-loaded strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Load {
    /// Runs executing on it now.
    pub active_runs: u32,
    /// Throughput over all its runs, recently.
    #[serde(default)]
    pub bytes_per_second: f64,
    /// Runs it executes at once, when it says; without it, load is compared by runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
}

impl Load {
    /// Active runs per unit of capacity: what least-loaded compares first. A capacity of 0
    /// means full; without a capacity, each active run counts as 1.
    pub fn ratio(&self) -> f64 {
        match self.capacity {
            Some(0) => f64::INFINITY,
            Some(c) => f64::from(self.active_runs) / f64::from(c),
            None => f64::from(self.active_runs),
        }
    }

    /// Throughput as a number safe to compare: a negative or non-finite report counts as 0.
    pub fn throughput(&self) -> f64 {
        if self.bytes_per_second.is_finite() && self.bytes_per_second > 0.0 {
            self.bytes_per_second
        } else {
            0.0
        }
    }

    /// Lists every invalid field, named as in a heartbeat (`bytesPerSecond`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !self.bytes_per_second.is_finite() || self.bytes_per_second < 0.0 {
            errors.push(field_error(
                "bytesPerSecond",
                "must be a finite number, 0 or more",
            ));
        }
        errors
    }
}

/// One data plane the control plane can dispatch runs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataPlaneInstance {
    /// Unique among instances; appears in URLs (`/v1/dataplanes/{id}`).
    pub id: String,
    /// Where its API listens: an `http` or `https` URL.
    pub url: String,
    /// Source store types it reads (e.g. `postgres`); empty or `*` allows any.
    #[serde(default)]
    pub allowed_source_types: Vec<String>,
    /// Destination store types it writes (e.g. `s3`); empty or `*` allows any.
    #[serde(default)]
    pub allowed_destination_types: Vec<String>,
    /// Matched against a run's required labels (e.g. `region=eu`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Free-form facts about the instance, kept for operators and custom strategies.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: BTreeMap<String, Value>,
    #[serde(default)]
    pub state: InstanceState,
    /// Runs dispatched to it so far; round-robin picks the lowest.
    #[serde(default)]
    pub turn_count: u64,
    /// When it was last chosen (Unix milliseconds); absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// Chosen by the process that registers the data plane (a nonce, new at each start),
    /// so that its deregistration never removes a newer registration of the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// When it last sent a heartbeat (Unix milliseconds); absent if never. Once it is
    /// older than the heartbeat timeout, the instance counts as unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<i64>,
    /// External transfer engines it can delegate runs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<crate::engines::EngineInfo>,
}

/// What a run needs from the data plane that executes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    /// The manifest's `spec.source.type`, e.g. `postgres`.
    pub source_type: String,
    /// The manifest's `spec.destination.type`, e.g. `s3`.
    pub destination_type: String,
    /// Labels the instance must carry, each with the same value.
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    /// The transfer the run belongs to, for strategies and messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    /// The engine the transfer names in `spec.execution.engine`, which the instance must
    /// have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

impl RunRequest {
    pub fn new(source_type: impl Into<String>, destination_type: impl Into<String>) -> Self {
        Self {
            source_type: source_type.into(),
            destination_type: destination_type.into(),
            ..Self::default()
        }
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.required_labels.insert(key.into(), value.into());
        self
    }

    /// `source postgres → destination s3 with labels region=eu`, for messages.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "source {} → destination {}",
            self.source_type, self.destination_type
        );
        if !self.required_labels.is_empty() {
            let labels: Vec<String> = self
                .required_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            text.push_str(&format!(" with labels {}", labels.join(",")));
        }
        text
    }
}

impl DataPlaneInstance {
    /// An available instance with no restrictions, no labels and no history.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            allowed_source_types: Vec::new(),
            allowed_destination_types: Vec::new(),
            labels: BTreeMap::new(),
            properties: BTreeMap::new(),
            state: InstanceState::Available,
            turn_count: 0,
            last_active_ms: None,
            load: None,
            registration: None,
            last_heartbeat_ms: None,
            engines: Vec::new(),
        }
    }

    /// Lists every invalid field, named as in the API (`url`, `allowedSourceTypes[1]`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(reason) = check_id(&self.id) {
            errors.push(field_error("id", reason));
        } else if self.id == RESERVED_ID {
            errors.push(field_error(
                "id",
                format!(
                    "'{RESERVED_ID}' is reserved (POST /v1/dataplanes/select); choose another id"
                ),
            ));
        }
        if let Err(reason) = check_url(&self.url) {
            errors.push(field_error("url", reason));
        }
        for (field, list) in [
            ("allowedSourceTypes", &self.allowed_source_types),
            ("allowedDestinationTypes", &self.allowed_destination_types),
        ] {
            for (i, name) in list.iter().enumerate() {
                if name != ANY_TYPE && canonical_type(name).is_none() {
                    errors.push(field_error(
                        format!("{field}[{i}]"),
                        format!(
                            "unknown store type '{name}'; use one of {} or {ANY_TYPE}",
                            STORE_TYPES.join(", ")
                        ),
                    ));
                }
            }
        }
        for key in self.labels.keys() {
            if key.trim().is_empty() {
                errors.push(field_error("labels", "a label key is empty"));
            }
        }
        if let Some(load) = &self.load {
            errors.extend(
                load.validate()
                    .into_iter()
                    .map(|e| field_error(format!("load.{}", e.field), e.message)),
            );
        }
        if let Some(nonce) = &self.registration {
            if let Err(reason) = check_registration(nonce) {
                errors.push(field_error("registration", reason));
            }
        }
        if self.last_heartbeat_ms.is_some_and(|t| t < 0) {
            errors.push(field_error(
                "lastHeartbeatMs",
                "must be a time in Unix milliseconds, 0 or more",
            ));
        }
        errors
    }

    /// The instance as selection sees it at `now_ms`: unavailable once its last heartbeat
    /// is older than `heartbeat_timeout`. One that never sent a heartbeat (configured, or
    /// registered and silent since) keeps its state.
    pub fn as_of(mut self, now_ms: i64, heartbeat_timeout: Duration) -> Self {
        let timeout = i64::try_from(heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
        if self
            .last_heartbeat_ms
            .is_some_and(|beat| now_ms.saturating_sub(beat) > timeout)
        {
            self.state = InstanceState::Unavailable;
        }
        self
    }

    /// The instance with its type names in canonical form (`postgresql` → `postgres`), as
    /// the selector stores it; call after [`DataPlaneInstance::validate`].
    pub fn normalized(mut self) -> Self {
        for list in [
            &mut self.allowed_source_types,
            &mut self.allowed_destination_types,
        ] {
            for name in list.iter_mut() {
                if let Some(canonical) = canonical_type(name) {
                    *name = canonical.to_string();
                }
            }
        }
        self
    }

    /// True when the instance is available, allows both store types, and carries every
    /// required label with its value.
    pub fn can_handle(&self, run: &RunRequest) -> bool {
        self.missing(run).is_empty()
    }

    /// Why the instance cannot handle the run, one phrase per reason (empty when it can),
    /// e.g. `is unavailable`, `lacks source postgres`, `lacks label region=eu`.
    pub fn missing(&self, run: &RunRequest) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.state == InstanceState::Unavailable {
            reasons.push("is unavailable".to_string());
        }
        if !allows(&self.allowed_source_types, &run.source_type) {
            reasons.push(format!("lacks source {}", run.source_type));
        }
        if !allows(&self.allowed_destination_types, &run.destination_type) {
            reasons.push(format!("lacks destination {}", run.destination_type));
        }
        for (key, value) in &run.required_labels {
            match self.labels.get(key) {
                Some(have) if have == value => {}
                _ => reasons.push(format!("lacks label {key}={value}")),
            }
        }
        if let Some(engine) = &run.engine {
            if !self.engines.iter().any(|e| &e.name == engine) {
                reasons.push(format!("lacks engine {engine}"));
            }
        }
        reasons
    }
}

/// Whether an allowed-types list admits a type: empty or `*` admits any; names compare in
/// canonical form, so `postgresql` matches `postgres`.
fn allows(allowed: &[String], wanted: &str) -> bool {
    if allowed.is_empty() || allowed.iter().any(|a| a == ANY_TYPE) {
        return true;
    }
    let wanted = canonical_type(wanted).map_or_else(|| wanted.to_string(), str::to_string);
    allowed
        .iter()
        .any(|a| canonical_type(a).map_or(a.as_str(), |c| c) == wanted)
}

pub(crate) fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Ids appear in URLs and in configuration keys, so they follow the rules of transfer names.
fn check_id(id: &str) -> Result<(), String> {
    crate::resource::check_name(id)
}

/// A registration nonce travels in query strings and logs: 1 to 128 characters, none of
/// them blank or a control character.
fn check_registration(nonce: &str) -> Result<(), String> {
    if nonce.is_empty() || nonce.len() > 128 {
        return Err("use 1 to 128 characters".into());
    }
    if nonce.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

/// The control plane calls the instance over HTTP: an absolute `http`/`https` URL with a
/// host, and nothing a base URL should not carry (credentials, query, fragment).
pub(crate) fn check_url(text: &str) -> Result<(), String> {
    let parsed = url::Url::parse(text).map_err(|e| format!("'{text}' is not a URL: {e}"))?;
    if !["http", "https"].contains(&parsed.scheme()) {
        return Err(format!(
            "'{text}': the scheme must be http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{text}' has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "'{text}' carries credentials; configure them elsewhere"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "'{text}' has a query or fragment; give the base URL only"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn can_handle_checks_state_types_and_labels() {
        let mut dp = DataPlaneInstance::new("dp-a", "http://dp-a:8080");
        dp.allowed_source_types = vec!["postgres".into(), "file".into()];
        dp.allowed_destination_types = vec!["s3".into()];
        dp.labels.insert("region".into(), "eu".into());

        assert!(dp.can_handle(&RunRequest::new("postgres", "s3")));
        assert!(dp.can_handle(&RunRequest::new("postgresql", "s3")));
        assert!(dp.can_handle(&RunRequest::new("file", "s3").with_label("region", "eu")));
        assert!(!dp.can_handle(&RunRequest::new("mysql", "s3")));
        assert!(!dp.can_handle(&RunRequest::new("postgres", "azure")));
        assert!(!dp.can_handle(&RunRequest::new("postgres", "s3").with_label("region", "us")));
        assert!(!dp.can_handle(&RunRequest::new("postgres", "s3").with_label("tier", "gold")));

        dp.state = InstanceState::Unavailable;
        assert!(!dp.can_handle(&RunRequest::new("postgres", "s3")));
        assert_eq!(
            dp.missing(&RunRequest::new("mysql", "s3").with_label("region", "us")),
            vec![
                "is unavailable",
                "lacks source mysql",
                "lacks label region=us"
            ]
        );
    }

    #[test]
    fn a_run_naming_an_engine_needs_an_instance_that_has_it() {
        let mut dp = DataPlaneInstance::new("dp-a", "http://dp-a:8080");
        let mut run = RunRequest::new("file", "s3");
        run.engine = Some("rclone-eu".into());
        assert_eq!(dp.missing(&run), vec!["lacks engine rclone-eu"]);
        dp.engines.push(crate::engines::EngineInfo {
            name: "rclone-eu".into(),
            kind: "rclone".into(),
            ..Default::default()
        });
        assert!(dp.can_handle(&run));
        // The registration carries the engines as it is sent and stored.
        let text = serde_json::to_string(&dp).unwrap();
        let back: DataPlaneInstance = serde_json::from_str(&text).unwrap();
        assert_eq!(back.engines[0].name, "rclone-eu");
    }

    #[test]
    fn empty_or_star_allows_any_type() {
        let open = DataPlaneInstance::new("dp-a", "https://dp-a");
        assert!(open.can_handle(&RunRequest::new("sqlite", "http")));
        let mut star = DataPlaneInstance::new("dp-b", "https://dp-b");
        star.allowed_source_types = vec!["*".into()];
        star.allowed_destination_types = vec!["azure".into()];
        assert!(star.can_handle(&RunRequest::new("mysql", "azureblob")));
        assert!(!star.can_handle(&RunRequest::new("mysql", "s3")));
    }

    #[test]
    fn validation_names_the_fields() {
        let mut dp = DataPlaneInstance::new("DP_A", "ftp://dp-a");
        dp.allowed_source_types = vec!["s3".into(), "mongo".into()];
        dp.allowed_destination_types = vec!["pulsar".into()];
        dp.load = Some(Load {
            active_runs: 1,
            bytes_per_second: f64::NAN,
            capacity: None,
        });
        let errors = dp.validate();
        assert_eq!(
            fields(&errors),
            vec![
                "id",
                "url",
                "allowedSourceTypes[1]",
                "allowedDestinationTypes[0]",
                "load.bytesPerSecond"
            ]
        );
        assert!(errors[1].message.contains("http or https"), "{errors:?}");
        assert!(errors[2].message.contains("'mongo'"), "{errors:?}");

        for bad in [
            "dp-a:8080",
            "http://",
            "not a url",
            "http://u:p@dp-a",
            "http://dp-a?x=1",
        ] {
            let errors = DataPlaneInstance::new("dp-a", bad).validate();
            assert_eq!(fields(&errors), vec!["url"], "{bad}: {errors:?}");
        }
        for good in [
            "http://dp-a:8080",
            "https://10.0.0.5/ferry/",
            "http://[::1]:80",
        ] {
            assert!(DataPlaneInstance::new("dp-a", good).validate().is_empty());
        }
    }

    #[test]
    fn registrations_and_heartbeats_are_checked() {
        let mut dp = DataPlaneInstance::new("select", "http://dp-a");
        dp.registration = Some("two words".into());
        dp.last_heartbeat_ms = Some(-1);
        let errors = dp.validate();
        assert_eq!(
            fields(&errors),
            vec!["id", "registration", "lastHeartbeatMs"]
        );
        assert!(errors[0].message.contains("reserved"), "{errors:?}");
        dp.id = "dp-a".into();
        dp.registration = Some("9f1c2d-start-1".into());
        dp.last_heartbeat_ms = Some(1_000);
        assert!(dp.validate().is_empty());
        let run = RunRequest::new("file", "s3");
        assert!(dp.clone().as_of(1_000, Duration::ZERO).can_handle(&run));
        assert!(!dp.clone().as_of(1_001, Duration::ZERO).can_handle(&run));
        assert_eq!(
            dp.clone().as_of(16_000, DEFAULT_HEARTBEAT_TIMEOUT).state,
            InstanceState::Available
        );
        assert_eq!(
            dp.clone().as_of(16_001, DEFAULT_HEARTBEAT_TIMEOUT).state,
            InstanceState::Unavailable
        );
        dp.last_heartbeat_ms = None;
        assert_eq!(
            dp.as_of(i64::MAX, DEFAULT_HEARTBEAT_TIMEOUT).state,
            InstanceState::Available,
            "no heartbeat, no expiry"
        );
    }

    #[test]
    fn instances_read_and_write_camel_case() {
        let dp: DataPlaneInstance = serde_json::from_value(serde_json::json!({
            "id": "dp-a",
            "url": "http://dp-a",
            "allowedSourceTypes": ["postgresql"],
            "labels": {"region": "eu"},
            "load": {"activeRuns": 2, "capacity": 4}
        }))
        .unwrap();
        assert_eq!(dp.state, InstanceState::Available);
        assert_eq!(dp.load.as_ref().unwrap().ratio(), 0.5);
        assert_eq!(
            dp.clone().normalized().allowed_source_types,
            vec!["postgres"]
        );
        let back = serde_json::to_value(&dp).unwrap();
        assert_eq!(back["allowedDestinationTypes"], serde_json::json!([]));
        assert_eq!(back["turnCount"], 0);

        let unknown = serde_json::from_value::<DataPlaneInstance>(serde_json::json!({
            "id": "dp-a", "url": "http://dp-a", "sourceTypes": []
        }));
        assert!(unknown.is_err());
    }
}
