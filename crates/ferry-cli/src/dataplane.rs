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
use ferry_control::selector::{
    DataPlaneInstance, DataPlaneRegistry, InstanceState, Load, RegistryError, RemoteRegistry,
};
use ferry_core::{Error, Result};
use serde::Deserialize;

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

use ferry_control::selector::config::list;

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

/// A data plane's registration with its control plane(s), kept alive by heartbeats; the
/// calls go through the registry client, to the first control plane that answers.
pub struct Agent {
    planes: Vec<RemoteRegistry>,
    registration: DataPlaneInstance,
    capacity: u32,
}

/// The first answer of `$planes` to `$call`: a control plane that cannot be reached
/// gives way to the next.
macro_rules! first_answer {
    ($planes:expr, |$plane:ident| $call:expr) => {{
        let mut answer = Err(RegistryError::Remote {
            url: "control plane".into(),
            detail: "none configured".into(),
        });
        for $plane in $planes {
            answer = $call.await;
            if !matches!(answer, Err(RegistryError::Remote { .. })) {
                break;
            }
        }
        answer.map_err(|e| Error::invalid_option("control plane", e.to_string()))
    }};
}

impl Agent {
    pub fn new(
        settings: &DataplaneSettings,
        id: &str,
        url: &str,
        token: Option<String>,
    ) -> Result<Self> {
        let planes = settings
            .control_planes
            .iter()
            .map(|base| RemoteRegistry::new(base, token.as_deref()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid_option("--control-plane", e.to_string()))?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let capacity = settings.capacity.unwrap_or(4);
        let mut registration = DataPlaneInstance::new(id, url);
        registration.allowed_source_types = settings.source_types.clone();
        registration.allowed_destination_types = settings.destination_types.clone();
        registration.labels = settings.labels.clone();
        // Tells this process's registration from a later one's under the same id.
        registration.registration =
            Some(format!("{:x}-{:x}", started.as_nanos(), std::process::id()));
        registration.load = Some(load(0, 0.0, capacity));
        Ok(Self {
            planes,
            registration,
            capacity,
        })
    }

    /// Lists the engines it can delegate runs to in its registration.
    pub fn with_engines(mut self, engines: Vec<ferry_control::engines::EngineInfo>) -> Self {
        self.registration.engines = engines;
        self
    }

    /// Registers (or registers again, replacing the earlier registration).
    pub async fn register(&self) -> Result<()> {
        first_answer!(&self.planes, |plane| plane.add(self.registration.clone())).map(|_| ())
    }

    /// Reports the load; registers again when the control plane does not know this
    /// data plane (it lost its registry, or removed it).
    pub async fn heartbeat(&self, active_runs: usize, bytes_per_second: f64) -> Result<()> {
        let id = &self.registration.id;
        let now = load(active_runs, bytes_per_second, self.capacity);
        match first_answer!(&self.planes, |plane| plane.heartbeat(id, now.clone()))? {
            Some(_) => Ok(()),
            None => self.register().await,
        }
    }

    /// Tells the control plane to send no more runs here.
    pub async fn drain(&self) -> Result<()> {
        let id = &self.registration.id;
        first_answer!(&self.planes, |plane| plane
            .set_state(id, InstanceState::Unavailable))
        .map(|_| ())
    }

    /// Removes this registration, unless a newer process registered under the same id.
    pub async fn deregister(&self) -> Result<()> {
        let (id, nonce) = (&self.registration.id, &self.registration.registration);
        first_answer!(&self.planes, |plane| plane.remove(id, nonce.as_deref())).map(|_| ())
    }
}

fn load(active_runs: usize, bytes_per_second: f64, capacity: u32) -> Load {
    Load {
        active_runs: u32::try_from(active_runs).unwrap_or(u32::MAX),
        bytes_per_second,
        capacity: Some(capacity),
    }
}
