//! External transfer engines a data plane can delegate a whole run to (rclone's
//! remote-control daemon, …), the rules that route a run to one of them, and the one
//! poller that follows every delegated job.
//!
//! A run is executed by a *transfer service*: the built-in engine, or a delegate. The
//! delegate is chosen per run by [`route::Router`]; the job it runs is followed by
//! [`Poller`] (one task for all delegated runs, no thread per run), and its id is kept in
//! the run's record so that a restarted or replacing data plane re-attaches to it.

pub mod adf;
pub mod config;
pub mod delegate;
pub mod rclone;
pub mod route;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::DataAddress;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use config::{EngineConfig, EngineKind, EnginesConfig, Fallback};

/// Something went wrong talking to an engine, or in the job it ran.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine did not answer (refused, timed out): a passing problem, or a dead
    /// address; the text names the engine and its address.
    #[error("{0}")]
    Unreachable(String),
    /// The engine refused our credentials: retrying will not help.
    #[error("{0}")]
    Unauthorized(String),
    /// The engine answered, and said no (a bad request, a failed job).
    #[error("{0}")]
    Refused(String),
}

/// One external job of a run, as kept in the run's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    /// The engine's id for the job (rclone's job id).
    pub id: String,
    /// A name of ours the engine keeps with the job (rclone's stats group), which tells our
    /// job from another with the same id after the engine restarted.
    pub group: String,
}

/// What an engine says of a job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobState {
    pub finished: bool,
    pub success: bool,
    /// The engine's error, one line, when it failed.
    pub error: Option<String>,
    pub bytes: u64,
    pub total_bytes: u64,
    pub files: u64,
    pub total_files: u64,
    /// The engine no longer knows the job (it expired, or the engine restarted).
    pub gone: bool,
}

/// What a delegated run asks an engine to do.
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// Addresses with secrets resolved.
    pub source: DataAddress,
    pub destination: DataAddress,
    /// The source names one object (not a directory or prefix).
    pub single_object: bool,
    /// Our name for the job (see [`JobRef::group`]).
    pub group: String,
    /// The source's size from ferry's listing, for engines that report no total.
    pub estimated_bytes: Option<u64>,
}

/// An external transfer engine, driven over its API.
#[async_trait]
pub trait Engine: Send + Sync {
    fn config(&self) -> &EngineConfig;

    /// Starts the job; answers at once, without waiting for it to finish.
    async fn submit(&self, job: &JobRequest) -> Result<JobRef, EngineError>;

    /// The job of ours named `group`, if the engine still has it (finished or not).
    async fn find(&self, group: &str) -> Result<Option<JobRef>, EngineError>;

    /// How the job is doing.
    async fn poll(&self, job: &JobRef) -> Result<JobState, EngineError>;

    /// Asks the job to stop; [`Engine::poll`] tells when it has.
    async fn stop(&self, job: &JobRef) -> Result<(), EngineError>;

    /// Removes what [`Engine::submit`] created for the job besides the job itself
    /// (resources, secrets), once the job has ended, whatever its outcome.
    async fn cleanup(&self, _job: &JobRef) -> Result<(), EngineError> {
        Ok(())
    }
}

/// The engines of one data plane, with the runs each has now.
#[derive(Clone, Default)]
pub struct Engines {
    list: Vec<Arc<Registered>>,
    poller: Poller,
}

pub struct Registered {
    pub engine: Arc<dyn Engine>,
    active: AtomicUsize,
}

impl Registered {
    pub fn name(&self) -> &str {
        &self.engine.config().name
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a run as the engine's while the slot lives.
    pub fn slot(self: &Arc<Self>) -> Slot {
        self.active.fetch_add(1, Ordering::Relaxed);
        Slot(self.clone())
    }
}

/// A run counted against its engine's `maxConcurrentRuns`.
pub struct Slot(Arc<Registered>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Engines {
    /// Engines built from their settings (secrets resolved).
    pub fn new(engines: Vec<Arc<dyn Engine>>) -> Self {
        Self {
            list: engines
                .into_iter()
                .map(|engine| {
                    Arc::new(Registered {
                        engine,
                        active: AtomicUsize::new(0),
                    })
                })
                .collect(),
            poller: Poller::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn all(&self) -> &[Arc<Registered>] {
        &self.list
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Registered>> {
        self.list.iter().find(|e| e.name() == name)
    }

    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    /// What a data plane tells its control plane about its engines.
    pub fn infos(&self) -> Vec<EngineInfo> {
        self.list
            .iter()
            .map(|e| {
                let c = e.engine.config();
                EngineInfo {
                    name: c.name.clone(),
                    kind: c.kind.as_str().to_string(),
                    source_types: c.source_types.clone(),
                    destination_types: c.destination_types.clone(),
                }
            })
            .collect()
    }
}

/// An engine as a data plane's registration lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub source_types: Vec<String>,
    #[serde(default)]
    pub destination_types: Vec<String>,
}

/// One observation of a job: its state, or why the engine could not be asked.
pub type Observation = Result<JobState, EngineError>;

/// Follows every delegated job from one task: each job is asked after every interval
/// (1 s, doubled up to 16 s while its engine does not answer), and the answer goes to the
/// run waiting for it. A job nobody waits for any more is dropped.
#[derive(Clone, Default)]
pub struct Poller {
    jobs: Arc<Mutex<HashMap<String, Watched>>>,
    started: Arc<std::sync::OnceLock<()>>,
}

struct Watched {
    engine: Arc<dyn Engine>,
    job: JobRef,
    tx: watch::Sender<Option<Observation>>,
    next: Instant,
    failures: u32,
}

pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(16);

impl Poller {
    /// Starts following `job`; the receiver sees each new observation.
    pub fn watch(
        &self,
        engine: Arc<dyn Engine>,
        job: JobRef,
    ) -> watch::Receiver<Option<Observation>> {
        self.start();
        let (tx, rx) = watch::channel(None);
        let key = format!("{}/{}", engine.config().name, job.group);
        crate::controller::lock(&self.jobs).insert(
            key,
            Watched {
                engine,
                job,
                tx,
                next: Instant::now(),
                failures: 0,
            },
        );
        rx
    }

    /// Jobs followed now.
    pub fn len(&self) -> usize {
        crate::controller::lock(&self.jobs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn start(&self) {
        if self.started.set(()).is_err() {
            return;
        }
        let jobs = Arc::downgrade(&self.jobs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(jobs) = jobs.upgrade() else { return };
                let now = Instant::now();
                let due: Vec<(String, Arc<dyn Engine>, JobRef)> = {
                    let mut map = crate::controller::lock(&jobs);
                    map.retain(|_, w| !w.tx.is_closed());
                    map.iter()
                        .filter(|(_, w)| w.next <= now)
                        .map(|(k, w)| (k.clone(), w.engine.clone(), w.job.clone()))
                        .collect()
                };
                // The jobs of one pass are asked concurrently; a slow engine delays only
                // its own answers' turn, not the loop's next pass by more than its timeout.
                let answers = futures::future::join_all(due.into_iter().map(
                    |(key, engine, job)| async move {
                        let answer = engine.poll(&job).await;
                        (key, answer)
                    },
                ))
                .await;
                let mut map = crate::controller::lock(&jobs);
                for (key, answer) in answers {
                    let Some(w) = map.get_mut(&key) else { continue };
                    let interval = engine_interval(w.engine.config());
                    if matches!(answer, Err(EngineError::Unreachable(_))) {
                        w.failures = w.failures.saturating_add(1);
                    } else {
                        w.failures = 0;
                    }
                    let backoff = interval
                        .saturating_mul(1 << w.failures.min(5))
                        .min(MAX_POLL_INTERVAL.max(interval));
                    w.next = Instant::now() + backoff;
                    let _ = w.tx.send(Some(answer));
                }
            }
        });
    }
}

/// An HTTP client for calls to `config`'s engine: its `timeoutSeconds` (else `default`
/// seconds) per call, at most 10 s to connect.
pub(crate) fn http_client(config: &EngineConfig, default: f64) -> Result<reqwest::Client, String> {
    let timeout =
        Duration::from_secs_f64(config.timeout_seconds.unwrap_or(default).clamp(1.0, 600.0));
    reqwest::Client::builder()
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .build()
        .map_err(|e| format!("engine '{}': no HTTP client: {e}", config.name))
}

/// A request that got no answer from `what` (an engine and its address).
pub(crate) fn unreachable(what: &str, e: reqwest::Error) -> EngineError {
    EngineError::Unreachable(format!(
        "{what} cannot be reached: {}",
        crate::webhook::describe(e)
    ))
}

fn engine_interval(config: &EngineConfig) -> Duration {
    config
        .poll_seconds
        .map(|s| Duration::from_secs_f64(s.clamp(0.1, 60.0)))
        .unwrap_or(POLL_INTERVAL)
}

/// Builds the engines a data plane's settings list (secrets already resolved).
pub fn build(configs: &[EngineConfig]) -> Result<Engines, String> {
    let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
    for c in configs {
        match c.kind {
            EngineKind::Rclone => engines.push(Arc::new(rclone::Rclone::new(c.clone())?)),
            EngineKind::AzureDataFactory => {
                engines.push(Arc::new(adf::DataFactory::new(c.clone())?))
            }
        }
    }
    Ok(Engines::new(engines))
}
