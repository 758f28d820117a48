//! [`DataPlaneRegistry`] over a control plane's `/v1/dataplanes` API.
//!
//! Answers map back to the errors an embedded registry gives: 422 to
//! [`RegistryError::Invalid`] (or [`RegistryError::UnknownStrategy`] when the field is
//! `strategy`), 409 from a selection to [`RegistryError::NoInstance`], 404 to `None`.
//! Anything else is [`RegistryError::Remote`], one line naming the control plane.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Client, Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{check_load, DataPlaneRegistry, Registered, RegistryError};
use crate::resource::FieldError;
use crate::selector::registry::{NoInstance, Selection};
use crate::selector::strategy::UnknownStrategy;
use crate::selector::{check_url, field_error, DataPlaneInstance, InstanceState, Load, RunRequest};

/// For calls without a body.
const NO_BODY: Option<&()> = None;

/// How long one call may take unless set otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A control plane's registry, over HTTP.
pub struct RemoteRegistry {
    base: Url,
    /// The base URL for messages, redacted.
    shown: String,
    client: Client,
    token: Option<HeaderValue>,
    timeout: Duration,
}

/// An error body as the API sends it.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    details: Vec<FieldError>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
struct StateBody {
    state: InstanceState,
}

impl RemoteRegistry {
    /// The registry of the control plane at `base_url` (e.g. `http://control:8080`),
    /// called with `token` as its bearer token.
    pub fn new(base_url: &str, token: Option<&str>) -> Result<Self, RegistryError> {
        let invalid = |field: &str, message: String| {
            RegistryError::Invalid(vec![field_error(field, message)])
        };
        check_url(base_url).map_err(|e| invalid("url", e))?;
        let base = Url::parse(base_url).map_err(|e| invalid("url", e.to_string()))?;
        let token = token
            .map(|t| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .map_err(|_| invalid("token", "is not a valid header value".into()))?;
                value.set_sensitive(true);
                Ok::<_, RegistryError>(value)
            })
            .transpose()?;
        let shown = ferry_core::redact::redact(base.as_str());
        let client = Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            // A redirected POST turns into a GET; a moved control plane is a setting to fix.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RegistryError::Remote {
                url: shown.clone(),
                detail: format!("cannot create an HTTP client: {e}"),
            })?;
        Ok(Self {
            base,
            shown,
            client,
            token,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Gives each call at most `timeout` (10 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn failed(&self, detail: impl Into<String>) -> RegistryError {
        RegistryError::Remote {
            url: self.shown.clone(),
            detail: ferry_core::error::one_line(&detail.into()),
        }
    }

    /// `base/v1/dataplanes/<segments…>`, each segment escaped.
    fn url(&self, segments: &[&str]) -> Result<Url, RegistryError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| self.failed("the URL cannot take a path"))?
            .pop_if_empty()
            .extend(["v1", "dataplanes"])
            .extend(segments);
        Ok(url)
    }

    /// Sends the request; returns the status and the body.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<(&str, &str)>,
        body: Option<&impl Serialize>,
    ) -> Result<(StatusCode, Vec<u8>), RegistryError> {
        let mut request = self
            .client
            .request(method, self.url(segments)?)
            .timeout(self.timeout);
        if let Some(pair) = query {
            request = request.query(&[pair]);
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.failed(crate::webhook::describe(e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.failed(crate::webhook::describe(e)))?;
        Ok((status, bytes.to_vec()))
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, RegistryError> {
        serde_json::from_slice(body)
            .map_err(|e| self.failed(format!("the answer is not what ferry expects: {e}")))
    }

    /// An answer no call expects: the status and the API's one-line error.
    fn unexpected(&self, status: StatusCode, body: &[u8]) -> RegistryError {
        let error = serde_json::from_slice::<ErrorBody>(body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect());
        self.failed(format!("HTTP {status}: {error}"))
    }

    fn invalid(&self, status: StatusCode, body: &[u8]) -> RegistryError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) if !b.details.is_empty() => RegistryError::Invalid(b.details),
            _ => self.unexpected(status, body),
        }
    }

    /// A body on 200, `None` on 404; `also_none` lists other statuses meaning "not there".
    fn found<T: DeserializeOwned>(
        &self,
        (status, body): (StatusCode, Vec<u8>),
        also_none: &[StatusCode],
    ) -> Result<Option<T>, RegistryError> {
        match status {
            StatusCode::OK => self.decode(&body).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNPROCESSABLE_ENTITY => Err(self.invalid(status, &body)),
            s if also_none.contains(&s) => Ok(None),
            s => Err(self.unexpected(s, &body)),
        }
    }
}

#[async_trait]
impl DataPlaneRegistry for RemoteRegistry {
    async fn add(&self, instance: DataPlaneInstance) -> Result<Registered, RegistryError> {
        let (status, body) = self.call(Method::POST, &[], None, Some(&instance)).await?;
        match status {
            StatusCode::CREATED | StatusCode::OK => Ok(Registered {
                instance: self.decode(&body)?,
                replaced: status == StatusCode::OK,
            }),
            StatusCode::UNPROCESSABLE_ENTITY => Err(self.invalid(status, &body)),
            s => Err(self.unexpected(s, &body)),
        }
    }

    async fn remove(
        &self,
        id: &str,
        registration: Option<&str>,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        let query = registration.map(|r| ("registration", r));
        let answer = self.call(Method::DELETE, &[id], query, NO_BODY).await?;
        // 409: registered again under another nonce, so not removed.
        self.found(answer, &[StatusCode::CONFLICT])
    }

    async fn get(&self, id: &str) -> Result<Option<DataPlaneInstance>, RegistryError> {
        let answer = self.call(Method::GET, &[id], None, NO_BODY).await?;
        self.found(answer, &[])
    }

    async fn list(&self) -> Result<Vec<DataPlaneInstance>, RegistryError> {
        let (status, body) = self.call(Method::GET, &[], None, NO_BODY).await?;
        match status {
            StatusCode::OK => self.decode(&body),
            s => Err(self.unexpected(s, &body)),
        }
    }

    async fn select(
        &self,
        run: &RunRequest,
        strategy: Option<&str>,
    ) -> Result<Selection, RegistryError> {
        let query = strategy.map(|s| ("strategy", s));
        let (status, body) = self
            .call(Method::POST, &["select"], query, Some(run))
            .await?;
        match status {
            StatusCode::OK => self.decode(&body),
            StatusCode::CONFLICT => {
                let answer: ErrorBody = self.decode(&body)?;
                Err(NoInstance {
                    reason: answer.reason.unwrap_or(answer.error),
                }
                .into())
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                let answer: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
                match (
                    strategy,
                    answer.details.iter().find(|d| d.field == "strategy"),
                ) {
                    (Some(name), Some(detail)) => Err(UnknownStrategy {
                        name: name.to_string(),
                        known: known_strategies(&detail.message),
                    }
                    .into()),
                    _ => Err(self.invalid(status, &body)),
                }
            }
            s => Err(self.unexpected(s, &body)),
        }
    }

    async fn heartbeat(
        &self,
        id: &str,
        load: Load,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        check_load(&load)?;
        let answer = self
            .call(Method::POST, &[id, "heartbeat"], None, Some(&load))
            .await?;
        self.found(answer, &[])
    }

    async fn set_state(
        &self,
        id: &str,
        state: InstanceState,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        let answer = self
            .call(
                Method::PUT,
                &[id, "state"],
                None,
                Some(&StateBody { state }),
            )
            .await?;
        self.found(answer, &[])
    }
}

/// The names after `known: ` in an unknown-strategy message.
fn known_strategies(message: &str) -> Vec<String> {
    message
        .rsplit_once("known: ")
        .map(|(_, names)| names.split(", ").map(str::to_string).collect())
        .unwrap_or_default()
}
