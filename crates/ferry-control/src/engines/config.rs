//! The `engines:` list of a data plane's settings, and its `FERRY_ENGINES__<NAME>__<FIELD>`
//! variables.

use serde::Deserialize;

use crate::selector::config::list;

/// The kinds of engine ferry can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EngineKind {
    /// `rclone rcd`, over its remote-control API.
    Rclone,
    /// Azure Data Factory, over Azure Resource Manager's REST API: one pipeline with one
    /// Copy activity per run.
    AzureDataFactory,
}

const KINDS: &str = "rclone, azureDataFactory";

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rclone => "rclone",
            Self::AzureDataFactory => "azureDataFactory",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "rclone" => Some(Self::Rclone),
            "azuredatafactory" => Some(Self::AzureDataFactory),
            _ => None,
        }
    }
}

/// What a delegated run does when its engine cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Fallback {
    /// The run fails (and is retried by its transfer's policy), naming the engine.
    #[default]
    Fail,
    /// The run is executed here instead.
    InProcess,
}

/// One engine of a data plane.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EngineConfig {
    /// Its name in routing decisions, events and `spec.execution.engine`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// Where its API is (rclone: `http://127.0.0.1:5572`).
    pub url: String,
    pub user: Option<String>,
    /// A secret reference (`env:NAME`, `file:PATH`), never the password itself.
    pub password: Option<String>,
    /// Store types it reads and writes (`file`, `s3`, `azure`); empty: every type the
    /// engine kind supports.
    #[serde(default)]
    pub source_types: Vec<String>,
    #[serde(default)]
    pub destination_types: Vec<String>,
    /// Runs it is given at once; more stay in-process [default: 8].
    pub max_concurrent_runs: Option<usize>,
    /// Runs whose source holds at least this many bytes (a number, or `1GiB`, `500MB`)
    /// are delegated; smaller ones stay in-process. Unset: size does not delegate to this
    /// engine.
    #[serde(default, deserialize_with = "size")]
    pub delegate_above_bytes: Option<u64>,
    /// When the data plane is busy (its in-process runs fill its capacity, or it moves
    /// more than `busyAboveBytesPerSecond`), runs this engine can do are delegated.
    #[serde(default)]
    pub delegate_when_busy: bool,
    pub busy_above_bytes_per_second: Option<f64>,
    #[serde(default)]
    pub fallback: Fallback,
    /// Seconds between polls of a job [default: 1].
    pub poll_seconds: Option<f64>,
    /// Seconds a call to the engine may take [default: 30].
    pub timeout_seconds: Option<f64>,
    /// Seconds a delegated job may run before ferry stops it and fails the attempt
    /// [default: none].
    pub run_timeout_seconds: Option<f64>,
    /// Azure Data Factory: the service principal (client credentials) ferry signs in as.
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// A secret reference (`env:NAME`, `file:PATH`).
    pub client_secret: Option<String>,
    /// Azure Data Factory: where the factory is.
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    pub factory_name: Option<String>,
    /// Azure Data Factory: the Key Vault (`https://NAME.vault.azure.net`) that holds each
    /// run's store credentials while it runs, and the factory's linked service to it.
    pub key_vault_url: Option<String>,
    pub key_vault_linked_service: Option<String>,
    /// Azure Data Factory: where tokens come from [default:
    /// https://login.microsoftonline.com].
    pub login_url: Option<String>,
}

/// A byte count given as a number or as text with a unit.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => ferry_engine::options::parse_size(t.trim())
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl EngineConfig {
    pub fn max_concurrent_runs(&self) -> usize {
        self.max_concurrent_runs.unwrap_or(8).max(1)
    }

    /// The password its reference names.
    pub fn password(&self) -> Result<Option<String>, String> {
        self.secret(&self.password, "password")
    }

    /// The value a secret reference of this engine names.
    pub fn secret(
        &self,
        reference: &Option<String>,
        field: &str,
    ) -> Result<Option<String>, String> {
        let Some(reference) = reference else {
            return Ok(None);
        };
        let bytes = ferry_core::secret::resolve_secret(reference)
            .map_err(|e| format!("engine '{}' {field}: {e}", self.name))?;
        String::from_utf8(bytes)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|_| format!("engine '{}' {field} is not UTF-8", self.name))
    }
}

/// The `engines:` list.
pub type EnginesConfig = Vec<EngineConfig>;

const PREFIX: &str = "FERRY_ENGINES__";

/// An engine's variables: (variable, field, value).
type Fields = Vec<(String, String, String)>;

fn number<T: std::str::FromStr>(var: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{var} is not a number"))
}

/// `engines` (from the file) with the `FERRY_ENGINES__<NAME>__<FIELD>` variables over it;
/// `<NAME>` is the engine's name in upper case with `_` for `-`. A variable replaces the
/// field it names; a new engine needs `__TYPE` and `__URL`. Errors name the variable.
pub fn merge_env(
    mut engines: EnginesConfig,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<EnginesConfig, String> {
    let mut vars: Vec<(String, String)> = vars.filter(|(k, _)| k.starts_with(PREFIX)).collect();
    vars.sort();
    // Fields of engines that are not in the file yet, by name.
    let mut new: Vec<(String, Fields)> = Vec::new();
    for (var, value) in vars {
        let rest = &var[PREFIX.len()..];
        let Some((name, field)) = rest.split_once("__") else {
            return Err(format!(
                "{var} is not an engine setting; use {PREFIX}<NAME>__<FIELD>"
            ));
        };
        let name = name.to_ascii_lowercase().replace('_', "-");
        match engines.iter_mut().find(|e| e.name == name) {
            Some(engine) => set(engine, &var, field, &value)?,
            None => match new.iter_mut().find(|(n, _)| *n == name) {
                Some((_, fields)) => fields.push((var.clone(), field.to_string(), value)),
                None => new.push((name, vec![(var.clone(), field.to_string(), value)])),
            },
        }
    }
    for (name, fields) in new {
        let get = |f: &str| fields.iter().find(|(_, field, _)| field == f);
        let kind = get("TYPE").ok_or_else(|| {
            format!(
                "{PREFIX}{}__TYPE is required for engine '{name}'",
                name.to_ascii_uppercase().replace('-', "_")
            )
        })?;
        let kind = EngineKind::parse(&kind.2)
            .ok_or_else(|| format!("{} is '{}'; the engine types are: {KINDS}", kind.0, kind.2))?;
        let url = get("URL").ok_or_else(|| {
            format!(
                "{PREFIX}{}__URL is required for engine '{name}'",
                name.to_ascii_uppercase().replace('-', "_")
            )
        })?;
        let mut engine = EngineConfig {
            name,
            kind,
            url: url.2.clone(),
            user: None,
            password: None,
            source_types: Vec::new(),
            destination_types: Vec::new(),
            max_concurrent_runs: None,
            delegate_above_bytes: None,
            delegate_when_busy: false,
            busy_above_bytes_per_second: None,
            fallback: Fallback::Fail,
            poll_seconds: None,
            timeout_seconds: None,
            run_timeout_seconds: None,
            tenant_id: None,
            client_id: None,
            client_secret: None,
            subscription_id: None,
            resource_group: None,
            factory_name: None,
            key_vault_url: None,
            key_vault_linked_service: None,
            login_url: None,
        };
        for (var, field, value) in &fields {
            set(&mut engine, var, field, value)?;
        }
        engines.push(engine);
    }
    Ok(engines)
}

fn set(engine: &mut EngineConfig, var: &str, field: &str, value: &str) -> Result<(), String> {
    match field {
        "TYPE" => {
            engine.kind = EngineKind::parse(value)
                .ok_or_else(|| format!("{var} is '{value}'; the engine types are: {KINDS}"))?
        }
        "URL" => engine.url = value.trim().to_string(),
        "USER" => engine.user = Some(value.to_string()),
        "PASSWORD" => engine.password = Some(value.to_string()),
        "SOURCE_TYPES" => engine.source_types = list(value),
        "DESTINATION_TYPES" => engine.destination_types = list(value),
        "MAX_CONCURRENT_RUNS" => engine.max_concurrent_runs = Some(number(var, value)?),
        "DELEGATE_ABOVE_BYTES" => {
            engine.delegate_above_bytes = Some(
                ferry_engine::options::parse_size(value.trim())
                    .map_err(|e| format!("{var}: {e}"))?,
            )
        }
        "DELEGATE_WHEN_BUSY" => {
            engine.delegate_when_busy = match value.trim() {
                "true" => true,
                "false" => false,
                _ => return Err(format!("{var} must be true or false")),
            }
        }
        "BUSY_ABOVE_BYTES_PER_SECOND" => {
            engine.busy_above_bytes_per_second = Some(number(var, value)?)
        }
        "FALLBACK" => {
            engine.fallback = match value.trim() {
                "inProcess" => Fallback::InProcess,
                "fail" => Fallback::Fail,
                _ => return Err(format!("{var} must be inProcess or fail")),
            }
        }
        "POLL_SECONDS" => engine.poll_seconds = Some(number(var, value)?),
        "TIMEOUT_SECONDS" => engine.timeout_seconds = Some(number(var, value)?),
        "RUN_TIMEOUT_SECONDS" => engine.run_timeout_seconds = Some(number(var, value)?),
        "TENANT_ID" => engine.tenant_id = Some(value.to_string()),
        "CLIENT_ID" => engine.client_id = Some(value.to_string()),
        "CLIENT_SECRET" => engine.client_secret = Some(value.to_string()),
        "SUBSCRIPTION_ID" => engine.subscription_id = Some(value.to_string()),
        "RESOURCE_GROUP" => engine.resource_group = Some(value.to_string()),
        "FACTORY_NAME" => engine.factory_name = Some(value.to_string()),
        "KEY_VAULT_URL" => engine.key_vault_url = Some(value.to_string()),
        "KEY_VAULT_LINKED_SERVICE" => engine.key_vault_linked_service = Some(value.to_string()),
        "LOGIN_URL" => engine.login_url = Some(value.to_string()),
        _ => {
            return Err(format!(
                "{var} is not an engine setting; an engine takes __TYPE, __URL, __USER, __PASSWORD, \
                 __SOURCE_TYPES, __DESTINATION_TYPES, __MAX_CONCURRENT_RUNS, __DELEGATE_ABOVE_BYTES, \
                 __DELEGATE_WHEN_BUSY, __BUSY_ABOVE_BYTES_PER_SECOND, __FALLBACK, __POLL_SECONDS, \
                 __TIMEOUT_SECONDS, __RUN_TIMEOUT_SECONDS; Azure Data Factory also __TENANT_ID, \
                 __CLIENT_ID, __CLIENT_SECRET, __SUBSCRIPTION_ID, __RESOURCE_GROUP, __FACTORY_NAME, \
                 __KEY_VAULT_URL, __KEY_VAULT_LINKED_SERVICE, __LOGIN_URL"
            ))
        }
    }
    Ok(())
}

/// Checks the list: unique names that can be named in a manifest, store types known to
/// the engine kind, an http(s) URL. Each problem names the field (`engines[1].url`).
pub fn validate(engines: &[EngineConfig]) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        let at = format!("engines[{i}]");
        if let Err(why) = crate::resource::check_dns_label(&e.name, 63) {
            errors.push(format!("{at}.name: {why}"));
        }
        if ["auto", "inprocess"].contains(&e.name.to_ascii_lowercase().as_str()) {
            errors.push(format!("{at}.name: '{}' is reserved", e.name));
        }
        if engines[..i].iter().any(|o| o.name == e.name) {
            errors.push(format!("{at}.name: '{}' is used twice", e.name));
        }
        match url::Url::parse(&e.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => errors.push(format!("{at}.url: '{}' is not an http(s) URL", e.url)),
        }
        for (field, side, types) in [
            ("sourceTypes", Side::Source, &e.source_types),
            ("destinationTypes", Side::Destination, &e.destination_types),
        ] {
            for t in types {
                if !supported(e.kind, side).contains(&canonical(t).as_str()) {
                    errors.push(format!(
                        "{at}.{field}: {} cannot take '{t}' as a {}; it takes {}",
                        e.kind.as_str(),
                        side.as_str(),
                        supported(e.kind, side).join(", ")
                    ));
                }
            }
        }
        if let Err(why) = e.password() {
            errors.push(format!("{at}.password: {why}"));
        }
        if e.kind == EngineKind::AzureDataFactory {
            for (field, value) in [
                ("tenantId", &e.tenant_id),
                ("clientId", &e.client_id),
                ("clientSecret", &e.client_secret),
                ("subscriptionId", &e.subscription_id),
                ("resourceGroup", &e.resource_group),
                ("factoryName", &e.factory_name),
                ("keyVaultUrl", &e.key_vault_url),
                ("keyVaultLinkedService", &e.key_vault_linked_service),
            ] {
                if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                    errors.push(format!("{at}.{field}: required for azureDataFactory"));
                }
            }
            if let Err(why) = e.secret(&e.client_secret, "clientSecret") {
                errors.push(format!("{at}.clientSecret: {why}"));
            }
        }
    }
    errors
}

/// A side of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The store types an engine kind can read (source) or write (destination). Azure Data
/// Factory's Amazon S3 connector is a source only, and it cannot reach the data plane's
/// disk.
pub fn supported(kind: EngineKind, side: Side) -> &'static [&'static str] {
    match (kind, side) {
        (EngineKind::Rclone, _) => &["file", "s3", "azure"],
        (EngineKind::AzureDataFactory, Side::Source) => &["s3", "azure"],
        (EngineKind::AzureDataFactory, Side::Destination) => &["azure"],
    }
}

pub(crate) fn canonical(t: &str) -> String {
    crate::selector::canonical_type(t)
        .map(str::to_string)
        .unwrap_or_else(|| t.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(items: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_environment_adds_an_engine_and_overrides_fields() {
        let file: EnginesConfig = serde_norway::from_str(
            "- {name: rclone-eu, type: rclone, url: 'http://127.0.0.1:5572', delegateAboveBytes: 10}\n\
             - {name: rclone-big, type: rclone, url: 'http://127.0.0.1:5572', delegateAboveBytes: 2GiB}",
        )
        .unwrap();
        let merged = merge_env(
            file,
            vars(&[
                ("FERRY_ENGINES__RCLONE_EU__DELEGATE_ABOVE_BYTES", "1GiB"),
                ("FERRY_ENGINES__RCLONE_US__TYPE", "rclone"),
                ("FERRY_ENGINES__RCLONE_US__URL", "http://127.0.0.1:5573"),
                ("FERRY_ENGINES__RCLONE_US__SOURCE_TYPES", "file, s3"),
                ("FERRY_ENGINES__RCLONE_US__FALLBACK", "inProcess"),
                ("FERRY_OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].delegate_above_bytes, Some(1 << 30));
        assert_eq!(merged[1].delegate_above_bytes, Some(2 << 30));
        assert_eq!(merged[2].name, "rclone-us");
        assert_eq!(merged[2].source_types, ["file", "s3"]);
        assert_eq!(merged[2].fallback, Fallback::InProcess);
        assert!(validate(&merged).is_empty(), "{:?}", validate(&merged));
    }

    #[test]
    fn bad_settings_name_the_variable_or_field() {
        let e = merge_env(Vec::new(), vars(&[("FERRY_ENGINES__X__URL", "http://h")])).unwrap_err();
        assert!(e.contains("FERRY_ENGINES__X__TYPE is required"), "{e}");
        let e = merge_env(
            Vec::new(),
            vars(&[
                ("FERRY_ENGINES__X__TYPE", "rclone"),
                ("FERRY_ENGINES__X__URL", "http://h"),
                ("FERRY_ENGINES__X__COLOUR", "red"),
            ]),
        )
        .unwrap_err();
        assert!(
            e.starts_with("FERRY_ENGINES__X__COLOUR is not an engine setting"),
            "{e}"
        );
        let file: EnginesConfig = serde_norway::from_str(
            "[{name: a, type: rclone, url: 'ftp://h', sourceTypes: [kafka]}, {name: a, type: rclone, url: 'http://h'}]",
        )
        .unwrap();
        let errors = validate(&file);
        assert!(
            errors.iter().any(|e| e.starts_with("engines[0].url:")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e
                    .starts_with("engines[0].sourceTypes: rclone cannot take 'kafka' as a source")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e == "engines[1].name: 'a' is used twice"),
            "{errors:?}"
        );
    }

    #[test]
    fn azure_data_factory_needs_its_factory_and_vault_and_writes_only_to_azure() {
        let file: EnginesConfig = serde_norway::from_str(
            "[{name: adf, type: azureDataFactory, url: 'https://management.azure.com', \
              tenantId: t, clientId: c, destinationTypes: [s3]}]",
        )
        .unwrap();
        let errors = validate(&file);
        for field in [
            "clientSecret",
            "subscriptionId",
            "resourceGroup",
            "factoryName",
            "keyVaultUrl",
            "keyVaultLinkedService",
        ] {
            let want = format!("engines[0].{field}: required for azureDataFactory");
            assert!(errors.contains(&want), "{want} not in {errors:?}");
        }
        assert!(
            errors.iter().any(|e| e.starts_with(
                "engines[0].destinationTypes: azureDataFactory cannot take 's3' as a destination; it takes azure"
            )),
            "{errors:?}"
        );
    }
}
