//! Data planes and the default strategy from configuration: the `selector` section of the
//! file, with `FERRY_SELECTOR__…` environment variables over it.
//!
//! `FERRY_SELECTOR__STRATEGY=least-loaded`,
//! `FERRY_SELECTOR__INSTANCES__DP_A__URL=http://dp-a:8080`,
//! `FERRY_SELECTOR__INSTANCES__DP_A__ALLOWEDSOURCETYPES=postgres,file`,
//! `FERRY_SELECTOR__INSTANCES__DP_A__ALLOWEDDESTINATIONTYPES=s3`,
//! `FERRY_SELECTOR__INSTANCES__DP_A__LABELS__REGION=eu` configure instance `dp-a`: names
//! and label keys are lowercased, and `_` in an instance name becomes `-` (ids are
//! DNS-style, and `-` is not portable in variable names).

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_state::control::DataPlaneStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::dataplanes::{
    DataPlaneRegistry, InMemoryRegistry, RegistryError, RegistryOptions, StoreRegistry,
};
use super::registry::Selector;
use super::{field_error, DataPlaneInstance};
use crate::resource::FieldError;

const PREFIX: &str = "FERRY_SELECTOR__";

/// The `selector` section: the default strategy and the instances to register at start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorConfig {
    /// The strategy for runs that name none; round-robin when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Instances by id.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceConfig>,
    /// A data plane whose last heartbeat is older than this counts as unavailable
    /// [default: 15].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_seconds: Option<f64>,
    /// Another control plane whose registry (`/v1/dataplanes`) this one selects through,
    /// instead of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One configured instance; its id is its key in `instances`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceConfig {
    pub url: String,
    /// Empty or `*` allows any source type.
    #[serde(default)]
    pub allowed_source_types: Vec<String>,
    /// Empty or `*` allows any destination type.
    #[serde(default)]
    pub allowed_destination_types: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: BTreeMap<String, Value>,
}

impl InstanceConfig {
    pub fn instance(&self, id: &str) -> DataPlaneInstance {
        DataPlaneInstance {
            allowed_source_types: self.allowed_source_types.clone(),
            allowed_destination_types: self.allowed_destination_types.clone(),
            labels: self.labels.clone(),
            properties: self.properties.clone(),
            ..DataPlaneInstance::new(id, self.url.clone())
        }
    }
}

impl SelectorConfig {
    /// The configuration the environment alone gives.
    pub fn from_env(vars: impl Iterator<Item = (String, String)>) -> Result<Self, String> {
        Self::default().merge_env(vars)
    }

    /// This configuration (from the file) with the `FERRY_SELECTOR__…` variables over it:
    /// a variable replaces the field it names, labels are merged key by key. Other
    /// variables are ignored; errors name the variable.
    pub fn merge_env(
        mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        // Instances the environment touched, with the variable to blame if the URL is missing.
        let mut touched: BTreeMap<String, String> = BTreeMap::new();
        let mut vars: Vec<(String, String)> = vars.filter(|(k, _)| k.starts_with(PREFIX)).collect();
        vars.sort();
        for (var, value) in vars {
            let path: Vec<&str> = var[PREFIX.len()..].split("__").collect();
            match path.as_slice() {
                ["STRATEGY"] => {
                    let name = value.trim();
                    if name.is_empty() {
                        return Err(format!("{var} is empty; name a selection strategy"));
                    }
                    self.strategy = Some(name.to_string());
                }
                ["URL"] => {
                    let url = value.trim();
                    if url.is_empty() {
                        return Err(format!("{var} is empty; give a control plane's URL"));
                    }
                    self.url = Some(url.to_string());
                }
                ["HEARTBEAT_TIMEOUT_SECONDS"] => {
                    let seconds: f64 = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| format!("{var} is not a number of seconds"))?;
                    self.heartbeat_timeout_seconds = Some(seconds);
                }
                ["INSTANCES", name, field @ ..] if !name.is_empty() && !field.is_empty() => {
                    let id = name.to_ascii_lowercase().replace('_', "-");
                    let instance = self.instances.entry(id.clone()).or_default();
                    touched
                        .entry(id)
                        .or_insert_with(|| format!("{PREFIX}INSTANCES__{name}__URL"));
                    match field {
                        ["URL"] => {
                            let url = value.trim();
                            if url.is_empty() {
                                return Err(format!("{var} is empty; give the data plane's URL"));
                            }
                            instance.url = url.to_string();
                        }
                        ["ALLOWEDSOURCETYPES"] => instance.allowed_source_types = list(&value),
                        ["ALLOWEDDESTINATIONTYPES"] => {
                            instance.allowed_destination_types = list(&value)
                        }
                        ["LABELS", key] if !key.is_empty() => {
                            instance
                                .labels
                                .insert(key.to_ascii_lowercase(), value.clone());
                        }
                        _ => {
                            return Err(format!(
                                "{var} is not a selector setting; an instance takes __URL, \
                                 __ALLOWEDSOURCETYPES, __ALLOWEDDESTINATIONTYPES or __LABELS__<KEY>"
                            ))
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "{var} is not a selector setting; use {PREFIX}STRATEGY or \
                         {PREFIX}INSTANCES__<NAME>__<FIELD>"
                    ))
                }
            }
        }
        for (id, url_var) in touched {
            if self.instances.get(&id).is_some_and(|i| i.url.is_empty()) {
                return Err(format!(
                    "{url_var} is required: data plane '{id}' has no URL in the file or the environment"
                ));
            }
        }
        Ok(self)
    }

    /// A selector with the configured strategy and instances; fields are named as in the
    /// file, e.g. `selector.instances.dp-a.url`.
    pub fn selector(&self) -> Result<Selector, Vec<FieldError>> {
        let selector = Selector::new();
        let mut errors = Vec::new();
        if let Some(name) = &self.strategy {
            if let Err(e) = selector.set_default_strategy(name) {
                errors.push(field_error("selector.strategy", e.to_string()));
            }
        }
        let instances = self.checked_instances(&mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        for instance in instances {
            selector.add(instance)?;
        }
        Ok(selector)
    }

    /// The registry the control plane selects with, holding the configured instances:
    ///
    /// - exactly one instance configured and `options.registrations` off: that instance,
    ///   in memory; selecting never touches the store.
    /// - otherwise, with a store: the store's registrations ([`StoreRegistry`]), the
    ///   configured instances registered into it (replacing ones of the same id).
    /// - without a store: in memory ([`InMemoryRegistry`]).
    ///
    /// The configured strategy (checked against `options.strategies`, custom ones
    /// included) replaces `options.default_strategy`. Errors are named as in the file.
    pub async fn registry(
        &self,
        store: Option<Arc<dyn DataPlaneStore>>,
        mut options: RegistryOptions,
    ) -> Result<Arc<dyn DataPlaneRegistry>, RegistryError> {
        let mut errors = Vec::new();
        if let Some(name) = &self.strategy {
            match options.strategies.get(name) {
                Ok(_) => options.default_strategy = name.clone(),
                Err(e) => errors.push(field_error("selector.strategy", e.to_string())),
            }
        }
        if let Some(seconds) = self.heartbeat_timeout_seconds {
            match std::time::Duration::try_from_secs_f64(seconds) {
                Ok(d) if seconds > 0.0 => options.heartbeat_timeout = d,
                _ => errors.push(field_error(
                    "selector.heartbeatTimeoutSeconds",
                    "must be a positive number of seconds",
                )),
            }
        }
        let instances = self.checked_instances(&mut errors);
        if !errors.is_empty() {
            return Err(RegistryError::Invalid(errors));
        }
        let single = instances.len() == 1 && !options.registrations;
        let registry: Arc<dyn DataPlaneRegistry> = match store {
            Some(store) if !single => Arc::new(StoreRegistry::new(store, options)?),
            _ => Arc::new(InMemoryRegistry::with_options(options)?),
        };
        for instance in instances {
            registry.add(instance).await?;
        }
        Ok(registry)
    }

    /// The configured instances that are valid; the others' errors go to `errors`,
    /// named `selector.instances.<id>.<field>`.
    fn checked_instances(&self, errors: &mut Vec<FieldError>) -> Vec<DataPlaneInstance> {
        let mut valid = Vec::new();
        for (id, config) in &self.instances {
            let instance = config.instance(id);
            let found = instance.validate();
            if found.is_empty() {
                valid.push(instance);
                continue;
            }
            errors.extend(found.into_iter().map(|e| {
                let field = if e.field == "id" {
                    format!("selector.instances.{id}")
                } else {
                    format!("selector.instances.{id}.{}", e.field)
                };
                field_error(field, e.message)
            }));
        }
        valid
    }
}

/// `postgres, file,` → `["postgres", "file"]`: a comma-separated setting.
pub fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use ferry_state::control::dataplanes::Chooser;
    use ferry_state::control::DataPlaneRecord;

    use super::*;
    use crate::selector::{RunRequest, SelectionStrategy};

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_environment_alone_configures_instances() {
        let config = SelectorConfig::from_env(env(&[
            ("FERRY_SELECTOR__STRATEGY", "least-loaded"),
            ("FERRY_SELECTOR__INSTANCES__DP_A__URL", "http://dp-a:8080"),
            (
                "FERRY_SELECTOR__INSTANCES__DP_A__ALLOWEDSOURCETYPES",
                "postgres, file,",
            ),
            (
                "FERRY_SELECTOR__INSTANCES__DP_A__ALLOWEDDESTINATIONTYPES",
                "s3",
            ),
            ("FERRY_SELECTOR__INSTANCES__DP_A__LABELS__REGION", "EU"),
            ("FERRY_OTHER", "ignored"),
            ("PATH", "/usr/bin"),
        ]))
        .unwrap();
        assert_eq!(config.strategy.as_deref(), Some("least-loaded"));
        let dp = &config.instances["dp-a"];
        assert_eq!(dp.url, "http://dp-a:8080");
        assert_eq!(dp.allowed_source_types, vec!["postgres", "file"]);
        assert_eq!(dp.allowed_destination_types, vec!["s3"]);
        assert_eq!(dp.labels["region"], "EU");

        let selector = config.selector().unwrap();
        assert_eq!(selector.default_strategy(), "least-loaded");
        let run = RunRequest::new("postgres", "s3").with_label("region", "EU");
        assert_eq!(selector.select(&run, None).unwrap().instance.id, "dp-a");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let file: SelectorConfig = serde_json::from_value(serde_json::json!({
            "strategy": "random",
            "instances": {
                "dp-a": {"url": "http://old:1", "allowedSourceTypes": ["file"], "labels": {"tier": "gold"}},
                "dp-b": {"url": "https://dp-b"}
            }
        }))
        .unwrap();
        let config = file
            .merge_env(env(&[
                ("FERRY_SELECTOR__INSTANCES__DP_A__URL", "http://new:2"),
                ("FERRY_SELECTOR__INSTANCES__DP_A__LABELS__REGION", "eu"),
            ]))
            .unwrap();
        assert_eq!(config.strategy.as_deref(), Some("random"));
        let dp = &config.instances["dp-a"];
        assert_eq!(dp.url, "http://new:2");
        assert_eq!(dp.allowed_source_types, vec!["file"]);
        assert_eq!(dp.labels.len(), 2);
        assert_eq!(config.instances["dp-b"].url, "https://dp-b");
        assert_eq!(config.selector().unwrap().list().len(), 2);
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| SelectorConfig::from_env(env(pairs)).unwrap_err();
        let e = err(&[("FERRY_SELECTOR__INSTANCES__DP_A__LABELS__REGION", "eu")]);
        assert!(
            e.starts_with("FERRY_SELECTOR__INSTANCES__DP_A__URL is required"),
            "{e}"
        );
        let e = err(&[("FERRY_SELECTOR__INSTANCES__DP_A__PORT", "80")]);
        assert!(
            e.starts_with("FERRY_SELECTOR__INSTANCES__DP_A__PORT is not a selector setting"),
            "{e}"
        );
        let e = err(&[("FERRY_SELECTOR__STRATEGIES", "random")]);
        assert!(e.starts_with("FERRY_SELECTOR__STRATEGIES is not"), "{e}");
        let e = err(&[("FERRY_SELECTOR__INSTANCES__DP_A__URL", " ")]);
        assert!(
            e.starts_with("FERRY_SELECTOR__INSTANCES__DP_A__URL is empty"),
            "{e}"
        );
        let e = err(&[("FERRY_SELECTOR__STRATEGY", "")]);
        assert!(e.starts_with("FERRY_SELECTOR__STRATEGY is empty"), "{e}");
    }

    #[test]
    fn building_the_selector_names_the_configured_fields() {
        let config = SelectorConfig::from_env(env(&[
            ("FERRY_SELECTOR__STRATEGY", "fastest"),
            ("FERRY_SELECTOR__INSTANCES__DP_A__URL", "dp-a:8080"),
            (
                "FERRY_SELECTOR__INSTANCES__DP_A__ALLOWEDSOURCETYPES",
                "file,mongo",
            ),
            ("FERRY_SELECTOR__INSTANCES__BAD.NAME__URL", "http://x"),
        ]))
        .unwrap();
        let errors = config.selector().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "selector.strategy",
                "selector.instances.bad.name",
                "selector.instances.dp-a.url",
                "selector.instances.dp-a.allowedSourceTypes[1]",
            ]
        );
    }

    /// A store that fails every call and counts them.
    #[derive(Default)]
    struct FailingStore {
        calls: std::sync::atomic::AtomicUsize,
    }

    impl FailingStore {
        fn fail<T>(&self) -> ferry_core::Result<T> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ferry_core::Error::state("failing store", "called"))
        }

        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[async_trait::async_trait]
    impl DataPlaneStore for FailingStore {
        async fn put_dataplane(
            &self,
            _: &DataPlaneRecord,
        ) -> ferry_core::Result<(DataPlaneRecord, bool)> {
            self.fail()
        }
        async fn get_dataplane(&self, _: &str) -> ferry_core::Result<Option<DataPlaneRecord>> {
            self.fail()
        }
        async fn list_dataplanes(&self) -> ferry_core::Result<Vec<DataPlaneRecord>> {
            self.fail()
        }
        async fn delete_dataplane(
            &self,
            _: &str,
            _: Option<&str>,
        ) -> ferry_core::Result<Option<DataPlaneRecord>> {
            self.fail()
        }
        async fn heartbeat_dataplane(
            &self,
            _: &str,
            _: &Value,
            _: i64,
        ) -> ferry_core::Result<Option<DataPlaneRecord>> {
            self.fail()
        }
        async fn set_dataplane_state(
            &self,
            _: &str,
            _: &str,
        ) -> ferry_core::Result<Option<DataPlaneRecord>> {
            self.fail()
        }
        async fn select_dataplane(
            &self,
            _: i64,
            _: &mut Chooser<'_>,
        ) -> ferry_core::Result<Option<DataPlaneRecord>> {
            self.fail()
        }
    }

    fn one_instance() -> SelectorConfig {
        SelectorConfig::from_env(env(&[(
            "FERRY_SELECTOR__INSTANCES__DP_A__URL",
            "http://dp-a:8081",
        )]))
        .unwrap()
    }

    #[tokio::test]
    async fn a_single_configured_instance_is_selected_without_the_store() {
        let store = Arc::new(FailingStore::default());
        let registry = one_instance()
            .registry(Some(store.clone()), RegistryOptions::default())
            .await
            .unwrap();
        let run = RunRequest::new("postgres", "s3");
        for turn in 1..=3 {
            let chosen = registry.select(&run, None).await.unwrap();
            assert_eq!(chosen.instance.id, "dp-a");
            assert_eq!(chosen.instance.turn_count, turn);
        }
        assert_eq!(registry.list().await.unwrap().len(), 1);
        assert_eq!(store.calls(), 0, "the store is never called");

        // With registrations on, the store is the registry, from the start.
        let options = RegistryOptions {
            registrations: true,
            ..RegistryOptions::default()
        };
        let Err(err) = one_instance().registry(Some(store.clone()), options).await else {
            panic!("the failing store is used");
        };
        assert!(matches!(err, RegistryError::Store(_)), "{err}");
        assert_eq!(store.calls(), 1);
    }

    #[tokio::test]
    async fn configured_instances_are_registered_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ferry_state::control::SqliteControlStore::open(dir.path()).unwrap());
        let config = SelectorConfig::from_env(env(&[
            ("FERRY_SELECTOR__STRATEGY", "least-recently-used"),
            ("FERRY_SELECTOR__INSTANCES__DP_A__URL", "http://dp-a:8081"),
            ("FERRY_SELECTOR__INSTANCES__DP_B__URL", "http://dp-b:8081"),
            (
                "FERRY_SELECTOR__INSTANCES__DP_B__ALLOWEDSOURCETYPES",
                "postgresql",
            ),
        ]))
        .unwrap();
        let registry = config
            .registry(Some(store.clone()), RegistryOptions::default())
            .await
            .unwrap();
        let stored = store.list_dataplanes().await.unwrap();
        let ids: Vec<&str> = stored.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["dp-a", "dp-b"]);
        assert_eq!(
            stored[1].document["allowedSourceTypes"],
            serde_json::json!(["postgres"])
        );

        let chosen = registry
            .select(&RunRequest::new("file", "s3"), None)
            .await
            .unwrap();
        assert_eq!(chosen.strategy, "least-recently-used");
        let turns = store
            .get_dataplane(&chosen.instance.id)
            .await
            .unwrap()
            .unwrap()
            .turn_count;
        assert_eq!(turns, 1, "the turn is counted in the store");

        // Started again (a restart, or a second control plane): the history stays.
        let again = config
            .registry(Some(store.clone()), RegistryOptions::default())
            .await
            .unwrap();
        assert_eq!(
            again
                .get(&chosen.instance.id)
                .await
                .unwrap()
                .unwrap()
                .turn_count,
            1
        );
    }

    #[tokio::test]
    async fn the_configured_strategy_may_be_a_custom_one() {
        struct Last;
        impl SelectionStrategy for Last {
            fn name(&self) -> &str {
                "last"
            }
            fn choose(&self, candidates: &[&DataPlaneInstance], _: &RunRequest) -> Option<usize> {
                candidates.len().checked_sub(1)
            }
        }
        let config = |strategy: &str| {
            SelectorConfig::from_env(env(&[
                ("FERRY_SELECTOR__STRATEGY", strategy),
                ("FERRY_SELECTOR__INSTANCES__DP_A__URL", "http://dp-a:8081"),
                ("FERRY_SELECTOR__INSTANCES__DP_B__URL", "http://dp-b:8081"),
            ]))
            .unwrap()
        };
        let mut options = RegistryOptions::default();
        options.strategies.register(Box::new(Last));
        let registry = config("last").registry(None, options).await.unwrap();
        let chosen = registry
            .select(&RunRequest::new("file", "s3"), None)
            .await
            .unwrap();
        assert_eq!(
            (chosen.instance.id.as_str(), chosen.strategy.as_str()),
            ("dp-b", "last")
        );

        let Err(RegistryError::Invalid(errors)) = config("last")
            .registry(None, RegistryOptions::default())
            .await
        else {
            panic!("'last' is not a built-in");
        };
        assert_eq!(errors[0].field, "selector.strategy");
    }

    #[test]
    fn the_file_section_rejects_unknown_fields() {
        let typo = serde_json::from_value::<SelectorConfig>(serde_json::json!({
            "instances": {"dp-a": {"url": "http://dp-a", "allowedSourceType": ["file"]}}
        }));
        assert!(typo.unwrap_err().to_string().contains("allowedSourceType"));
    }
}
