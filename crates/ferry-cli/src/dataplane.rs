//! `ferry dataplane`: a process that executes runs and serves the Dataplane Signaling API.
//!
//! Alone it takes flows from any control plane that speaks the protocol. Given a control
//! plane (`--control-plane`), it registers there (its URL, the store types it handles, its
//! labels and capacity), sends heartbeats with its load, and on SIGTERM stops taking runs,
//! drains, and deregisters last; a heartbeat the control plane does not recognise makes
//! it register again, so a control plane restarted with an empty registry finds it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ferry_core::{Error, Result};
use serde::Deserialize;
use serde_json::{json, Value};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

#[derive(Args, Debug)]
pub struct DataplaneArgs {
    /// A YAML settings file (as `ferry serve`'s, with a `dataplane:` section).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8081; env FERRY_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where its store, checkpoints and instance id live [default:
    /// ~/.local/state/ferry/dataplane; env FERRY_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite` (alone) or the PostgreSQL URL its control planes share [env FERRY_STORE].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The URL the control plane reaches it at [default: http://LISTEN; env
    /// FERRY_ADVERTISE_URL].
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// The control plane(s) to register with, comma-separated; tried in turn [env
    /// FERRY_CONTROL_PLANE].
    #[arg(long, value_name = "URL")]
    pub control_plane: Option<String>,
    /// Its name in the registry [default: kept in the data dir; env FERRY_INSTANCE_ID].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Source store types it reads, comma-separated, `*` for any [env FERRY_SOURCE_TYPES].
    #[arg(long, value_name = "TYPES")]
    pub source_types: Option<String>,
    /// Destination store types it writes [env FERRY_DESTINATION_TYPES].
    #[arg(long, value_name = "TYPES")]
    pub destination_types: Option<String>,
    /// A label runs can require, `key=value`; repeat for several [env FERRY_LABELS,
    /// comma-separated].
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Runs it executes at once [default: 4; env FERRY_CAPACITY].
    #[arg(long, value_name = "N")]
    pub capacity: Option<u32>,
}

/// The `dataplane:` section of the settings file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneSettings {
    /// Control plane URLs, tried in turn.
    #[serde(default)]
    pub control_planes: Vec<String>,
    #[serde(default)]
    pub source_types: Vec<String>,
    #[serde(default)]
    pub destination_types: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Option<u32>,
    /// Seconds between heartbeats [default: 5].
    pub heartbeat_seconds: Option<f64>,
    /// Seconds a stopping data plane waits for its runs to finish before it interrupts
    /// them (they resume elsewhere from their checkpoints) [default: 240].
    pub drain_seconds: Option<f64>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn labels(items: &[String], into: &mut BTreeMap<String, String>) -> Result<()> {
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            return Err(Error::invalid_option(
                "--label",
                format!("'{item}' is not key=value"),
            ));
        };
        into.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(())
}

impl DataplaneSettings {
    pub fn env_overrides(&mut self) -> Result<()> {
        if let Some(v) = env("FERRY_CONTROL_PLANE") {
            self.control_planes = list(&v);
        }
        if let Some(v) = env("FERRY_SOURCE_TYPES") {
            self.source_types = list(&v);
        }
        if let Some(v) = env("FERRY_DESTINATION_TYPES") {
            self.destination_types = list(&v);
        }
        if let Some(v) = env("FERRY_LABELS") {
            labels(&list(&v), &mut self.labels)?;
        }
        if let Some(v) = env("FERRY_CAPACITY") {
            self.capacity = Some(
                v.parse()
                    .map_err(|_| Error::invalid_option("FERRY_CAPACITY", "not a number"))?,
            );
        }
        if let Some(v) = env("FERRY_HEARTBEAT_SECONDS") {
            self.heartbeat_seconds =
                Some(v.parse().map_err(|_| {
                    Error::invalid_option("FERRY_HEARTBEAT_SECONDS", "not a number")
                })?);
        }
        if let Some(v) = env("FERRY_DRAIN_SECONDS") {
            self.drain_seconds = Some(
                v.parse()
                    .map_err(|_| Error::invalid_option("FERRY_DRAIN_SECONDS", "not a number"))?,
            );
        }
        Ok(())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_seconds.unwrap_or(5.0).clamp(0.2, 300.0))
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain_seconds.unwrap_or(240.0).clamp(0.0, 86_400.0))
    }
}

impl DataplaneArgs {
    /// Flags override the file and the environment.
    pub fn apply(&self, s: &mut DataplaneSettings) -> Result<()> {
        if let Some(v) = &self.control_plane {
            s.control_planes = list(v);
        }
        if let Some(v) = &self.source_types {
            s.source_types = list(v);
        }
        if let Some(v) = &self.destination_types {
            s.destination_types = list(v);
        }
        labels(&self.labels, &mut s.labels)?;
        if let Some(v) = self.capacity {
            s.capacity = Some(v);
        }
        Ok(())
    }
}

/// A data plane's registration with its control plane, kept alive by heartbeats.
pub struct Agent {
    client: reqwest::Client,
    control_planes: Vec<String>,
    token: Option<String>,
    registration: Value,
    id: String,
    nonce: String,
}

impl Agent {
    pub fn new(
        settings: &DataplaneSettings,
        id: &str,
        url: &str,
        token: Option<String>,
    ) -> Result<Self> {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Tells this process's registration from a later one's under the same id.
        let nonce = format!("{:x}-{:x}", started.as_nanos(), std::process::id());
        let registration = json!({
            "id": id,
            "url": url,
            "allowedSourceTypes": settings.source_types,
            "allowedDestinationTypes": settings.destination_types,
            "labels": settings.labels,
            "registration": nonce,
            "load": {"activeRuns": 0, "bytesPerSecond": 0.0,
                     "capacity": settings.capacity.unwrap_or(4)},
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(format!("no HTTP client: {e}")))?;
        Ok(Self {
            client,
            control_planes: settings.control_planes.clone(),
            token,
            registration,
            id: id.to_string(),
            nonce,
        })
    }

    /// Sends a request to the first control plane that answers; its status and body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String)> {
        let mut last = String::from("no control plane configured");
        for base in &self.control_planes {
            let url = format!("{}{path}", base.trim_end_matches('/'));
            let mut request = self.client.request(method.clone(), &url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    return Ok((status, text));
                }
                Err(e) => last = format!("{base}: {}", ferry_core::error::one_line(&e.to_string())),
            }
        }
        Err(Error::Unreachable {
            address: "control plane".into(),
            detail: last,
        })
    }

    /// Registers (or registers again, replacing the earlier registration).
    pub async fn register(&self) -> Result<()> {
        let (status, text) = self
            .send(
                reqwest::Method::POST,
                "/v1/dataplanes",
                Some(&self.registration),
            )
            .await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(Error::invalid_option(
            "registration",
            format!(
                "the control plane refused it ({status}): {}",
                one_line_body(&text)
            ),
        ))
    }

    /// Reports the load; registers again when the control plane does not know this
    /// data plane (it lost its registry, or removed it).
    pub async fn heartbeat(
        &self,
        active_runs: usize,
        bytes_per_second: f64,
        capacity: u32,
    ) -> Result<()> {
        let load = json!({"activeRuns": active_runs, "bytesPerSecond": bytes_per_second,
                          "capacity": capacity});
        let path = format!("/v1/dataplanes/{}/heartbeat", self.id);
        let (status, text) = self.send(reqwest::Method::POST, &path, Some(&load)).await?;
        match status {
            200..=299 => Ok(()),
            404 => self.register().await,
            _ => Err(Error::invalid_option(
                "heartbeat",
                format!(
                    "the control plane refused it ({status}): {}",
                    one_line_body(&text)
                ),
            )),
        }
    }

    /// Tells the control plane to send no more runs here.
    pub async fn drain(&self) -> Result<()> {
        let path = format!("/v1/dataplanes/{}/state", self.id);
        self.send(
            reqwest::Method::PUT,
            &path,
            Some(&json!({"state": "Unavailable"})),
        )
        .await
        .map(|_| ())
    }

    /// Removes this registration, unless a newer process registered under the same id.
    pub async fn deregister(&self) -> Result<()> {
        let path = format!("/v1/dataplanes/{}?registration={}", self.id, self.nonce);
        self.send(reqwest::Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }
}

fn one_line_body(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| ferry_core::error::one_line(text))
}
