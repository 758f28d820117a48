//! Azure Data Factory as a transfer engine, over Azure Resource Manager's REST API
//! (api-version 2018-06-01) and Key Vault's (7.4).
//!
//! Per run: the credentials of each side go to Key Vault as transient secrets; a linked
//! service per side refers to them (never holding them itself); a Binary dataset per side
//! names the location; a pipeline with one Copy activity joins them, and `createRun`
//! starts it. The run is polled (`pipelineruns/{runId}`: Queued, InProgress, Succeeded,
//! Failed, Canceling, Cancelled), its progress read from `queryActivityruns` (dataRead,
//! dataWritten, filesWritten), cancelled with `cancel`, and everything made for it —
//! pipeline, datasets, linked services, secrets — is deleted once it has ended, whatever
//! the outcome. Tokens come from the client-credentials flow and are renewed before they
//! expire (and once more when a call is refused with 401).
//!
//! Every resource of a job is named after its group (`ferry-<run>-<n>`), so a data plane
//! that restarts finds the pipeline's run by name and deletes exactly what was made.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::DataAddress;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{Engine, EngineConfig, EngineError, JobRef, JobRequest, JobState};

pub const API_VERSION: &str = "2018-06-01";
pub const VAULT_API_VERSION: &str = "7.4";
const MANAGEMENT_SCOPE: &str = "https://management.azure.com/.default";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

pub struct DataFactory {
    config: EngineConfig,
    client: reqwest::Client,
    management: String,
    login: String,
    tenant: String,
    client_id: String,
    client_secret: String,
    factory: String,
    vault: String,
    vault_linked_service: String,
    /// Tokens by scope, with when to renew them.
    tokens: Mutex<HashMap<&'static str, (String, Instant)>>,
}

/// An answer of the API: its body, or not found.
enum Answer {
    Body(Value),
    NotFound,
}

fn required(c: &EngineConfig, value: &Option<String>, field: &str) -> Result<String, String> {
    value
        .clone()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "engine '{}': {field} is required for azureDataFactory",
                c.name
            )
        })
}

impl DataFactory {
    pub fn new(config: EngineConfig) -> Result<Self, String> {
        let client = super::http_client(&config, 60.0)?;
        let factory = format!(
            "subscriptions/{}/resourceGroups/{}/providers/Microsoft.DataFactory/factories/{}",
            required(&config, &config.subscription_id, "subscriptionId")?,
            required(&config, &config.resource_group, "resourceGroup")?,
            required(&config, &config.factory_name, "factoryName")?,
        );
        let client_secret = config
            .secret(&config.client_secret, "clientSecret")?
            .ok_or_else(|| format!("engine '{}': clientSecret is required", config.name))?;
        Ok(Self {
            management: config.url.trim_end_matches('/').to_string(),
            login: config
                .login_url
                .clone()
                .unwrap_or_else(|| "https://login.microsoftonline.com".into())
                .trim_end_matches('/')
                .to_string(),
            tenant: required(&config, &config.tenant_id, "tenantId")?,
            client_id: required(&config, &config.client_id, "clientId")?,
            client_secret,
            factory,
            vault: required(&config, &config.key_vault_url, "keyVaultUrl")?
                .trim_end_matches('/')
                .to_string(),
            vault_linked_service: required(
                &config,
                &config.key_vault_linked_service,
                "keyVaultLinkedService",
            )?,
            tokens: Mutex::new(HashMap::new()),
            client,
            config,
        })
    }

    fn at(&self) -> String {
        format!("engine {} at {}", self.config.name, self.management)
    }

    /// A token for `scope`, from the cache while it has more than a minute left.
    async fn token(&self, scope: &'static str, fresh: bool) -> Result<String, EngineError> {
        if !fresh {
            if let Some((token, renew_at)) = crate::controller::lock(&self.tokens).get(scope) {
                if Instant::now() < *renew_at {
                    return Ok(token.clone());
                }
            }
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.login, self.tenant);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", &self.client_secret)
            .append_pair("scope", scope)
            .finish();
        let response = self
            .client
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                let what = format!(
                    "engine {}: the token endpoint {}",
                    self.config.name, self.login
                );
                super::unreachable(&what, e)
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = body["error_description"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no detail");
            let detail = ferry_core::error::one_line(detail);
            return Err(if status.is_client_error() {
                EngineError::Unauthorized(format!(
                    "engine {}: signing in as client {} failed ({}): {detail}",
                    self.config.name,
                    self.client_id,
                    status.as_u16()
                ))
            } else {
                EngineError::Unreachable(format!(
                    "engine {}: the token endpoint answered {}",
                    self.config.name,
                    status.as_u16()
                ))
            });
        }
        let token = body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let lifetime = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(300);
        // Renewed a minute before it expires, or halfway for short-lived tokens.
        let margin = (lifetime / 2).min(60);
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(margin));
        crate::controller::lock(&self.tokens).insert(scope, (token.clone(), renew_at));
        Ok(token)
    }

    /// One call; a 401 gets a new token and one more try.
    async fn call(
        &self,
        method: Method,
        url: &str,
        scope: &'static str,
        body: Option<&Value>,
    ) -> Result<Answer, EngineError> {
        let mut fresh = false;
        loop {
            let token = self.token(scope, fresh).await?;
            let mut request = self.client.request(method.clone(), url).bearer_auth(token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| super::unreachable(&self.at(), e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !fresh {
                fresh = true;
                continue;
            }
            let text = response.text().await.unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(Answer::Body(value));
            }
            if status == StatusCode::NOT_FOUND {
                return Ok(Answer::NotFound);
            }
            let detail = value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(200).collect());
            let what = format!(
                "{}: {} {} answered {}: {}",
                self.at(),
                method,
                url.split('?')
                    .next()
                    .unwrap_or(url)
                    .trim_start_matches(&self.management),
                status.as_u16(),
                ferry_core::error::one_line(&detail)
            );
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => EngineError::Unauthorized(what),
                s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                    EngineError::Unreachable(what)
                }
                _ => EngineError::Refused(what),
            });
        }
    }

    fn resource(&self, kind: &str, name: &str) -> String {
        format!(
            "{}/{}/{kind}/{name}?api-version={API_VERSION}",
            self.management, self.factory
        )
    }

    fn secret_url(&self, name: &str) -> String {
        format!(
            "{}/secrets/{name}?api-version={VAULT_API_VERSION}",
            self.vault
        )
    }

    async fn put(&self, kind: &str, name: &str, body: &Value) -> Result<(), EngineError> {
        self.call(
            Method::PUT,
            &self.resource(kind, name),
            MANAGEMENT_SCOPE,
            Some(body),
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, url: &str, scope: &'static str) -> Result<(), EngineError> {
        self.call(Method::DELETE, url, scope, None)
            .await
            .map(|_| ())
    }

    /// A linked service, a dataset and a secret for one side of `job`.
    fn side(
        &self,
        base: &str,
        role: &str,
        address: &DataAddress,
        folder: &str,
        file: Option<&str>,
    ) -> Result<Side, String> {
        let name = format!("{base}-{role}");
        let settings =
            ferry_connectors::object::resolved_settings(address).map_err(|e| e.to_string())?;
        let vault_ref = json!({"type": "AzureKeyVaultSecret",
            "store": {"referenceName": self.vault_linked_service, "type": "LinkedServiceReference"},
            "secretName": name});
        let (linked, secret, mut location, read, write) = match address {
            DataAddress::S3 { bucket, .. } => {
                let key = settings.get("access_key_id").ok_or_else(|| {
                    format!("{address}: Azure Data Factory needs an S3 access key")
                })?;
                let mut props = json!({"authenticationType": "AccessKey",
                    "accessKeyId": key, "secretAccessKey": vault_ref});
                if let Some(endpoint) = settings.get("endpoint") {
                    props["serviceUrl"] = json!(endpoint);
                }
                (
                    json!({"properties": {"type": "AmazonS3", "typeProperties": props}}),
                    settings
                        .get("secret_access_key")
                        .cloned()
                        .unwrap_or_default(),
                    json!({"type": "AmazonS3Location", "bucketName": bucket}),
                    json!({"type": "AmazonS3ReadSettings", "recursive": true}),
                    Value::Null,
                )
            }
            DataAddress::Azure { container, .. } => {
                let account = settings.get("account_name").cloned().unwrap_or_default();
                let endpoint = settings
                    .get("endpoint")
                    .map(|e| format!("BlobEndpoint={e};"))
                    .unwrap_or_else(|| "EndpointSuffix=core.windows.net;".into());
                let (field, secret) = match (settings.get("access_key"), settings.get("sas_key")) {
                    (Some(key), _) => (
                        "connectionString",
                        format!(
                            "DefaultEndpointsProtocol=https;AccountName={account};AccountKey={key};{endpoint}"
                        ),
                    ),
                    (None, Some(sas)) => (
                        "sasUri",
                        format!(
                            "https://{account}.blob.core.windows.net/?{}",
                            sas.trim_start_matches('?')
                        ),
                    ),
                    (None, None) => {
                        return Err(format!(
                            "{address}: Azure Data Factory needs the account's key or a SAS token"
                        ))
                    }
                };
                let mut props = serde_json::Map::new();
                props.insert(field.into(), vault_ref);
                (
                    json!({"properties": {"type": "AzureBlobStorage", "typeProperties": props}}),
                    secret,
                    json!({"type": "AzureBlobStorageLocation", "container": container}),
                    json!({"type": "AzureBlobStorageReadSettings", "recursive": true}),
                    json!({"type": "AzureBlobStorageWriteSettings"}),
                )
            }
            other => {
                return Err(format!(
                    "Azure Data Factory cannot reach {} stores from here",
                    other.kind()
                ))
            }
        };
        if !folder.is_empty() {
            location["folderPath"] = json!(folder);
        }
        if let Some(file) = file {
            location["fileName"] = json!(file);
        }
        let dataset = json!({"properties": {"type": "Binary",
            "linkedServiceName": {"referenceName": name, "type": "LinkedServiceReference"},
            "typeProperties": {"location": location}}});
        Ok(Side {
            name,
            linked,
            secret,
            dataset,
            read,
            write,
        })
    }

    /// What `submit` makes for `job`, in the order it makes it.
    pub fn plan(&self, job: &JobRequest) -> Result<Plan, String> {
        let base = resource_base(&job.group);
        let path = |a: &DataAddress| match a {
            DataAddress::S3 { key, .. } => key.clone(),
            DataAddress::Azure { path, .. } => path.clone(),
            _ => String::new(),
        };
        let (src_path, dst_path) = (path(&job.source), path(&job.destination));
        let (source, destination) = if job.single_object {
            let (dir, name) = split(&src_path);
            let (dst_dir, dst_name) = if job.destination.names_a_directory() {
                (dst_path.trim_end_matches('/').to_string(), name.clone())
            } else {
                split(&dst_path)
            };
            (
                self.side(&base, "source", &job.source, &dir, Some(&name))?,
                self.side(
                    &base,
                    "destination",
                    &job.destination,
                    &dst_dir,
                    Some(&dst_name),
                )?,
            )
        } else {
            (
                self.side(
                    &base,
                    "source",
                    &job.source,
                    src_path.trim_end_matches('/'),
                    None,
                )?,
                self.side(
                    &base,
                    "destination",
                    &job.destination,
                    dst_path.trim_end_matches('/'),
                    None,
                )?,
            )
        };
        if destination.write.is_null() {
            return Err("Azure Data Factory writes only to Azure Blob Storage here".into());
        }
        let pipeline = json!({"properties": {
            "description": format!("ferry run {} (made by ferry, deleted when the run ends)", job.group),
            "annotations": ["ferry"],
            "activities": [{
                "name": "Copy",
                "type": "Copy",
                "inputs": [{"referenceName": source.name, "type": "DatasetReference"}],
                "outputs": [{"referenceName": destination.name, "type": "DatasetReference"}],
                "policy": {"retry": 0},
                "typeProperties": {
                    "source": {"type": "BinarySource", "storeSettings": source.read},
                    "sink": {"type": "BinarySink", "storeSettings": destination.write},
                },
            }],
        }});
        Ok(Plan {
            pipeline_name: base,
            sides: [source, destination],
            pipeline,
        })
    }

    async fn make(&self, plan: &Plan) -> Result<String, EngineError> {
        for side in &plan.sides {
            self.call(
                Method::PUT,
                &self.secret_url(&side.name),
                VAULT_SCOPE,
                Some(
                    &json!({"value": side.secret, "contentType": "ferry transient credential",
                             "tags": {"madeBy": "ferry"}}),
                ),
            )
            .await?;
            self.put("linkedservices", &side.name, &side.linked).await?;
            self.put("datasets", &side.name, &side.dataset).await?;
        }
        self.put("pipelines", &plan.pipeline_name, &plan.pipeline)
            .await?;
        let url = format!(
            "{}/{}/pipelines/{}/createRun?api-version={API_VERSION}",
            self.management, self.factory, plan.pipeline_name
        );
        match self
            .call(Method::POST, &url, MANAGEMENT_SCOPE, Some(&json!({})))
            .await?
        {
            Answer::Body(v) => v["runId"].as_str().map(str::to_string).ok_or_else(|| {
                EngineError::Refused(format!("{}: createRun gave no runId", self.at()))
            }),
            Answer::NotFound => Err(EngineError::Refused(format!(
                "{}: pipeline {} not found right after it was made",
                self.at(),
                plan.pipeline_name
            ))),
        }
    }
}

/// One side of a job, as the factory sees it.
pub struct Side {
    pub name: String,
    pub linked: Value,
    /// The credential kept in Key Vault while the job runs.
    secret: String,
    pub dataset: Value,
    read: Value,
    write: Value,
}

/// Everything a job needs made.
pub struct Plan {
    pub pipeline_name: String,
    pub sides: [Side; 2],
    pub pipeline: Value,
}

/// `ferry/run-1/2` → `ferry-run-1-2`: the name of everything made for the job.
pub fn resource_base(group: &str) -> String {
    let mut out: String = group
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(100);
    out.trim_end_matches('-').to_string()
}

fn split(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((dir, name)) => (dir.into(), name.into()),
        None => (String::new(), trimmed.into()),
    }
}

fn window() -> Value {
    let now = chrono::Utc::now();
    json!({"lastUpdatedAfter": (now - chrono::Duration::days(30)).to_rfc3339(),
           "lastUpdatedBefore": (now + chrono::Duration::days(1)).to_rfc3339()})
}

#[async_trait]
impl Engine for DataFactory {
    fn config(&self) -> &EngineConfig {
        &self.config
    }

    async fn submit(&self, job: &JobRequest) -> Result<JobRef, EngineError> {
        let plan = self.plan(job).map_err(EngineError::Refused)?;
        match self.make(&plan).await {
            Ok(run_id) => Ok(JobRef {
                id: run_id,
                group: job.group.clone(),
            }),
            Err(err) => {
                // Nothing half-made stays behind: a failed submission removes what it made.
                let made = JobRef {
                    id: String::new(),
                    group: job.group.clone(),
                };
                if let Err(e) = self.cleanup(&made).await {
                    tracing::warn!(
                        "engine {}: after a failed submission: {e}",
                        self.config.name
                    );
                }
                Err(err)
            }
        }
    }

    async fn find(&self, group: &str) -> Result<Option<JobRef>, EngineError> {
        let mut body = window();
        body["filters"] = json!([{"operand": "PipelineName", "operator": "Equals",
                                  "values": [resource_base(group)]}]);
        let url = format!(
            "{}/{}/queryPipelineRuns?api-version={API_VERSION}",
            self.management, self.factory
        );
        let Answer::Body(v) = self
            .call(Method::POST, &url, MANAGEMENT_SCOPE, Some(&body))
            .await?
        else {
            return Ok(None);
        };
        Ok(v["value"]
            .as_array()
            .and_then(|runs| runs.first())
            .and_then(|r| r["runId"].as_str())
            .map(|id| JobRef {
                id: id.to_string(),
                group: group.to_string(),
            }))
    }

    async fn poll(&self, job: &JobRef) -> Result<JobState, EngineError> {
        let url = format!(
            "{}/{}/pipelineruns/{}?api-version={API_VERSION}",
            self.management, self.factory, job.id
        );
        let Answer::Body(run) = self.call(Method::GET, &url, MANAGEMENT_SCOPE, None).await? else {
            return Ok(JobState {
                gone: true,
                ..JobState::default()
            });
        };
        let status = run["status"].as_str().unwrap_or("");
        let url = format!(
            "{}/{}/pipelineruns/{}/queryActivityruns?api-version={API_VERSION}",
            self.management, self.factory, job.id
        );
        let activities = match self
            .call(Method::POST, &url, MANAGEMENT_SCOPE, Some(&window()))
            .await?
        {
            Answer::Body(v) => v,
            Answer::NotFound => Value::Null,
        };
        let copy = activities["value"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["activityName"] == "Copy"))
            .cloned()
            .unwrap_or(Value::Null);
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let output = &copy["output"];
        let error = copy["error"]["message"]
            .as_str()
            .filter(|m| !m.is_empty())
            .or(run["message"].as_str().filter(|m| !m.is_empty()))
            .map(ferry_core::error::one_line);
        let (finished, success) = match status {
            "Succeeded" => (true, true),
            "Failed" | "Cancelled" => (true, false),
            _ => (false, false),
        };
        Ok(JobState {
            finished,
            success,
            error: if status == "Cancelled" {
                Some(error.unwrap_or_else(|| "the pipeline run was cancelled".into()))
            } else {
                error.filter(|_| finished && !success)
            },
            bytes: n(&output["dataWritten"]).max(n(&output["dataRead"])),
            total_bytes: 0,
            files: n(&output["filesWritten"]),
            total_files: n(&output["filesRead"]),
            gone: false,
        })
    }

    async fn stop(&self, job: &JobRef) -> Result<(), EngineError> {
        let url = format!(
            "{}/{}/pipelineruns/{}/cancel?api-version={API_VERSION}",
            self.management, self.factory, job.id
        );
        self.call(Method::POST, &url, MANAGEMENT_SCOPE, None)
            .await
            .map(|_| ())
    }

    async fn cleanup(&self, job: &JobRef) -> Result<(), EngineError> {
        let base = resource_base(&job.group);
        // Dependants first: the pipeline uses the datasets, which use the linked services,
        // which use the secrets. A missing resource is fine (404 counts as gone).
        let mut first_error = None;
        let mut steps = vec![(self.resource("pipelines", &base), MANAGEMENT_SCOPE)];
        for role in ["source", "destination"] {
            steps.push((
                self.resource("datasets", &format!("{base}-{role}")),
                MANAGEMENT_SCOPE,
            ));
        }
        for role in ["source", "destination"] {
            steps.push((
                self.resource("linkedservices", &format!("{base}-{role}")),
                MANAGEMENT_SCOPE,
            ));
        }
        for role in ["source", "destination"] {
            steps.push((self.secret_url(&format!("{base}-{role}")), VAULT_SCOPE));
            // Soft-deleted secrets are purged too, where the vault allows it.
            steps.push((
                format!(
                    "{}/deletedsecrets/{base}-{role}?api-version={VAULT_API_VERSION}",
                    self.vault
                ),
                VAULT_SCOPE,
            ));
        }
        for (url, scope) in steps {
            match self.delete(&url, scope).await {
                Ok(()) => {}
                // Purging needs a permission many vaults do not grant; the secret is
                // deleted (and expires) all the same.
                Err(EngineError::Unauthorized(_)) if url.contains("/deletedsecrets/") => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
