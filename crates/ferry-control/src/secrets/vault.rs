//! Reading secrets over the HTTP API of HashiCorp Vault (and OpenBao, which speaks the same
//! API): KV v1 and v2 mounts, token or Kubernetes auth.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::VaultConfig;

const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_KUBERNETES_MOUNT: &str = "kubernetes";
const DEFAULT_KUBERNETES_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Why a Vault read failed; the caller adds which reference failed and where.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Vault did not answer, or answered that it cannot serve now: worth retrying.
    Unreachable(String),
    /// The configuration, token, policy, path or key is wrong: retrying will not help.
    Config(String),
}

impl Failure {
    /// The same failure with `hidden` (a token, a JWT) masked wherever Vault echoed it.
    fn without(self, hidden: &[&str]) -> Self {
        match self {
            Failure::Unreachable(text) => Failure::Unreachable(scrub(&text, hidden)),
            Failure::Config(text) => Failure::Config(scrub(&text, hidden)),
        }
    }
}

/// How requests prove who they are.
enum Auth {
    /// An `env:`/`file:` reference to the token; `None` reads `VAULT_TOKEN`.
    Token(Option<String>),
    Kubernetes {
        role: String,
        mount: String,
        token_path: String,
    },
}

/// A token from a Kubernetes login, reused until its lease (nearly) runs out.
struct Login {
    token: String,
    expires: Option<Instant>,
}

/// One Vault server; shared by every resolve call so a Kubernetes login is reused.
pub(crate) struct VaultClient {
    address: String,
    namespace: Option<String>,
    kv_version: Option<u8>,
    auth: Auth,
    http: reqwest::Client,
    login: Mutex<Option<Login>>,
}

impl fmt::Debug for VaultClient {
    // Hand-written so a cached login token can never be printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::Token(Some(reference)) => format!("token {reference}"),
            Auth::Token(None) => "token from VAULT_TOKEN".to_string(),
            Auth::Kubernetes { role, mount, .. } => {
                format!("kubernetes role {role} at auth/{mount}")
            }
        };
        f.debug_struct("VaultClient")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("kv_version", &self.kv_version)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

impl VaultClient {
    /// Checks `config`; errors are `(setting, reason)` for the caller to wrap.
    pub(crate) fn new(config: VaultConfig) -> Result<Self, (&'static str, String)> {
        let address = config.address.trim().trim_end_matches('/').to_string();
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err((
                "secrets.vault.address",
                format!("'{address}' is not an http:// or https:// URL"),
            ));
        }
        if let Some(v) = config.kv_version {
            if v != 1 && v != 2 {
                return Err(("secrets.vault.kvVersion", format!("{v}: must be 1 or 2")));
            }
        }
        if let Some(token) = &config.token {
            // Only references are accepted, so configuration files never hold the token.
            // The value is not echoed: it might be an inline token.
            if !(token.starts_with("env:") || token.starts_with("file:")) {
                return Err((
                    "secrets.vault.token",
                    "must be a reference (env:NAME or file:PATH), never the token itself".into(),
                ));
            }
        }
        let auth = match config.kubernetes {
            Some(k8s) => {
                if config.token.is_some() {
                    return Err((
                        "secrets.vault",
                        "set either token or kubernetes, not both".into(),
                    ));
                }
                if k8s.role.trim().is_empty() {
                    return Err(("secrets.vault.kubernetes.role", "must not be empty".into()));
                }
                Auth::Kubernetes {
                    role: k8s.role,
                    mount: k8s
                        .mount_path
                        .as_deref()
                        .map(|m| m.trim_matches('/'))
                        .filter(|m| !m.is_empty())
                        .unwrap_or(DEFAULT_KUBERNETES_MOUNT)
                        .to_string(),
                    token_path: k8s
                        .token_path
                        .unwrap_or_else(|| DEFAULT_KUBERNETES_TOKEN_PATH.to_string()),
                }
            }
            None => Auth::Token(config.token),
        };
        let timeout = config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout == 0 {
            return Err(("secrets.vault.timeoutMs", "must be more than 0".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout))
            .build()
            .map_err(|e| ("secrets.vault", format!("cannot build an HTTP client: {e}")))?;
        let namespace = config
            .namespace
            .or_else(|| std::env::var("VAULT_NAMESPACE").ok())
            .map(|n| n.trim_matches('/').to_string())
            .filter(|n| !n.is_empty());
        Ok(Self {
            address,
            namespace,
            kv_version: config.kv_version,
            auth,
            http,
            login: Mutex::new(None),
        })
    }

    /// State for one resolve call: each path is read at most once.
    pub(crate) fn session(&self) -> Session<'_> {
        Session {
            client: self,
            token: None,
            fresh_login: false,
            jwt: None,
            mounts: Vec::new(),
            secrets: HashMap::new(),
        }
    }

    /// One request; a Vault that does not answer, is sealed or is overloaded is
    /// `Unreachable`, any other answer is returned with its JSON body (`Null` if none).
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Failure> {
        let url = format!("{}/v1/{path}", self.address);
        let mut request = self.http.request(method, &url);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.no_answer(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.no_answer(e))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure::Unreachable(format!(
                "Vault at {} answered {status}{}",
                self.address,
                vault_errors(&body)
            )));
        }
        Ok((status, body))
    }

    fn no_answer(&self, e: reqwest::Error) -> Failure {
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Failure::Unreachable(format!("Vault at {} did not answer: {text}", self.address))
    }

    /// The cached Kubernetes login token, or a new login when there is none, it has
    /// expired or `renew` is set (Vault refused the cached one). Returns the token and the
    /// service account JWT when a login happened (so errors can be scrubbed of it).
    async fn kubernetes_token(&self, renew: bool) -> Result<(String, Option<String>), Failure> {
        let Auth::Kubernetes {
            role,
            mount,
            token_path,
        } = &self.auth
        else {
            return Err(Failure::Config("Kubernetes auth is not configured".into()));
        };
        if !renew {
            let cached = self.login.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(login) = cached.as_ref() {
                if login.expires.is_none_or(|at| Instant::now() < at) {
                    return Ok((login.token.clone(), None));
                }
            }
        }
        let jwt = std::fs::read_to_string(token_path).map_err(|e| {
            Failure::Config(format!(
                "cannot read the Kubernetes service account token {token_path}: {e}"
            ))
        })?;
        let jwt = jwt.trim().to_string();
        let login_path = format!("auth/{mount}/login");
        let body = json!({ "role": role, "jwt": jwt });
        let (status, answer) = self
            .send(Method::POST, &login_path, None, Some(&body))
            .await
            .map_err(|f| f.without(&[&jwt]))?;
        if !status.is_success() {
            return Err(Failure::Config(scrub(
                &format!(
                    "Kubernetes login to Vault at {login_path} as role '{role}' failed ({status}){}",
                    vault_errors(&answer)
                ),
                &[&jwt],
            )));
        }
        let Some(token) = answer["auth"]["client_token"].as_str().map(str::to_string) else {
            return Err(Failure::Config(format!(
                "Kubernetes login to Vault at {login_path} as role '{role}' returned no client token"
            )));
        };
        let lease = answer["auth"]["lease_duration"].as_u64().unwrap_or(0);
        // Renew a little before the lease ends, so a token never expires mid-run.
        let expires = (lease > 0).then(|| Instant::now() + Duration::from_secs(lease) * 9 / 10);
        tracing::info!(
            "logged in to Vault at {} with Kubernetes auth (role {role}, lease {lease}s)",
            self.address
        );
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = Some(Login {
            token: token.clone(),
            expires,
        });
        Ok((token, Some(jwt)))
    }

    fn forget_login(&self) {
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// What one resolve call has learnt: the token, the mounts and every secret read so far.
pub(crate) struct Session<'a> {
    client: &'a VaultClient,
    token: Option<String>,
    /// The token came from a login in this session (so a 403 is not worth a new login).
    fresh_login: bool,
    /// The service account JWT, when a login happened, so no error can carry it.
    jwt: Option<String>,
    /// Mount paths (with a trailing `/`) and their KV versions.
    mounts: Vec<(String, u8)>,
    /// Secret data by API path.
    secrets: HashMap<String, Map<String, Value>>,
}

impl Session<'_> {
    /// The key/values stored at the Vault `path` (as a user wrote it), with the API path
    /// they were read from.
    pub(crate) async fn read(
        &mut self,
        path: &str,
    ) -> Result<(String, Map<String, Value>), Failure> {
        let (mount, version) = self.mount_of(path).await?;
        let api_path = if version == 2 {
            let rest = &path[mount.len().min(path.len())..];
            if rest.starts_with("data/") {
                path.to_string()
            } else {
                format!("{mount}data/{rest}")
            }
        } else {
            path.to_string()
        };
        if let Some(data) = self.secrets.get(&api_path) {
            return Ok((api_path, data.clone()));
        }
        tracing::debug!("reading Vault path {api_path} (KV v{version})");
        let (status, body) = self.authorized(Method::GET, &api_path, true).await?;
        let data = match status {
            s if s.is_success() => {
                let data = if version == 2 {
                    &body["data"]["data"]
                } else {
                    &body["data"]
                };
                match data {
                    Value::Object(map) => map.clone(),
                    _ => {
                        return Err(Failure::Config(format!(
                            "nothing stored at {api_path} (deleted?)"
                        )))
                    }
                }
            }
            StatusCode::NOT_FOUND => {
                return Err(Failure::Config(format!("nothing stored at {api_path}")))
            }
            StatusCode::FORBIDDEN => {
                return Err(Failure::Config(format!(
                    "permission denied reading {api_path}: check the Vault token and its policy{}",
                    self.scrubbed_errors(&body)
                )))
            }
            s => {
                return Err(Failure::Config(format!(
                    "Vault answered {s} reading {api_path}{}",
                    self.scrubbed_errors(&body)
                )))
            }
        };
        self.secrets.insert(api_path.clone(), data.clone());
        Ok((api_path, data))
    }

    /// The mount `path` lies in and its KV version: asked of Vault once per mount, the
    /// configured `kvVersion` winning; when Vault will not say, the first path segment
    /// and KV v2.
    async fn mount_of(&mut self, path: &str) -> Result<(String, u8), Failure> {
        if let Some(known) = self
            .mounts
            .iter()
            .find(|(m, _)| path.starts_with(m.as_str()))
        {
            return Ok(known.clone());
        }
        let (status, body) = self
            .authorized(
                Method::GET,
                &format!("sys/internal/ui/mounts/{path}"),
                false,
            )
            .await?;
        let detected = status
            .is_success()
            .then(|| body["data"]["path"].as_str())
            .flatten()
            .map(|m| m.trim_end_matches('/'))
            .filter(|m| !m.is_empty() && (path == *m || path.starts_with(&format!("{m}/"))))
            .map(|m| {
                let version = match body["data"]["options"]["version"].as_str() {
                    Some("2") => 2,
                    _ => 1,
                };
                (format!("{m}/"), version)
            });
        let (mount, version) = detected.unwrap_or_else(|| {
            let first = path.split('/').next().unwrap_or(path);
            (format!("{first}/"), 2)
        });
        let known = (mount, self.client.kv_version.unwrap_or(version));
        self.mounts.push(known.clone());
        Ok(known)
    }

    /// A request with the session's token. With `relogin`, a cached Kubernetes token that
    /// Vault refuses (revoked before its lease ended) is replaced by one new login.
    async fn authorized(
        &mut self,
        method: Method,
        path: &str,
        relogin: bool,
    ) -> Result<(StatusCode, Value), Failure> {
        let token = self.token().await?;
        let answer = self
            .client
            .send(method.clone(), path, Some(&token), None)
            .await
            .map_err(|f| f.without(&[&token]))?;
        let is_kubernetes = matches!(self.client.auth, Auth::Kubernetes { .. });
        if relogin && answer.0 == StatusCode::FORBIDDEN && is_kubernetes && !self.fresh_login {
            self.client.forget_login();
            self.token = None;
            let (token, jwt) = self.client.kubernetes_token(true).await?;
            self.fresh_login = true;
            self.jwt = jwt;
            self.token = Some(token.clone());
            return self
                .client
                .send(method, path, Some(&token), None)
                .await
                .map_err(|f| f.without(&[&token]));
        }
        Ok(answer)
    }

    async fn token(&mut self) -> Result<String, Failure> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let token = match &self.client.auth {
            Auth::Token(reference) => static_token(reference.as_deref())?,
            Auth::Kubernetes { .. } => {
                let (token, jwt) = self.client.kubernetes_token(false).await?;
                self.fresh_login = jwt.is_some();
                self.jwt = jwt;
                token
            }
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Failure::Config(
                "the Vault token is empty or holds characters a token cannot have".into(),
            ));
        }
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Vault's own error texts, never carrying the token or the service account JWT.
    fn scrubbed_errors(&self, body: &Value) -> String {
        let hidden: Vec<&str> = [self.token.as_deref(), self.jwt.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        scrub(&vault_errors(body), &hidden)
    }
}

/// The configured token reference read now (tokens get rotated), or `VAULT_TOKEN`.
fn static_token(reference: Option<&str>) -> Result<String, Failure> {
    let bytes = match reference {
        Some(reference) => ferry_core::secret::resolve_secret(reference)
            .map_err(|e| Failure::Config(format!("the Vault token: {e}")))?,
        None => match std::env::var_os("VAULT_TOKEN") {
            Some(token) => token.into_encoded_bytes(),
            None => {
                return Err(Failure::Config(
                    "no Vault token: set secrets.vault.token (env:NAME or file:PATH), \
                     VAULT_TOKEN, or secrets.vault.kubernetes"
                        .into(),
                ))
            }
        },
    };
    String::from_utf8(bytes)
        .map(|t| t.trim().to_string())
        .map_err(|_| Failure::Config("the Vault token is not UTF-8 text".into()))
}

/// `: <Vault's error texts>`, or nothing when it gave none.
fn vault_errors(body: &Value) -> String {
    let texts: Vec<&str> = body["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if texts.is_empty() {
        String::new()
    } else {
        format!(": {}", texts.join("; "))
    }
}

fn scrub(text: &str, hidden: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in hidden {
        if secret.len() >= 4 {
            out = out.replace(secret, ferry_core::redact::MASK);
        }
    }
    out
}
