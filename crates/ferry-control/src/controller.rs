//! The control loop: keeps each transfer's runs and status in line with its spec.
//!
//! A run is a row in the control store before it executes, and a process executes it only
//! after claiming it (a lease it renews while it works). A server killed mid-run finds its
//! own claims on restart and resumes them from the engine's checkpoint; another process
//! can take a run over only after the lease ends. Statuses are recomputed from the runs
//! after every change, so a crash between two writes heals on the next one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::{Error, Result};
use ferry_engine::manifest::ConcurrencyPolicy;
use ferry_engine::CopyOptions;
use ferry_state::{ControlStore, EventRecord, NewEvent, RunRecord, TransferFilter, TransferRecord};
use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};
use tokio::task::AbortHandle;

mod stream;

use crate::dispatch::Dispatcher;
use crate::engines::route::{Decision, ExecutionRequest, RouteError, RouteInput, Router};
use crate::engines::{Engines, Fallback};
use crate::execute::{self, Outcome, Prepared, Tracker};
use crate::metrics::{Metrics, Snapshot};
use crate::resource::{
    parse_time, time_text, validate, EventView, Execution, FieldError, Phase, RunRef, RunStats,
    RunView, Settings, TransferManifest, TransferStatus, TransferView,
};
use crate::retry::{Backoff, ErrorClass};
use crate::secrets::{redact_manifest, SecretResolver};
use crate::signaling::{Callbacks, FlowEvent};
use crate::webhook::Webhooks;

/// How the control loop behaves.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Checkpoints live under `data_dir/checkpoints`.
    pub data_dir: PathBuf,
    /// This process, as the owner of the runs it claims; stable across restarts.
    pub instance: String,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// How often the loop looks for due schedules and runs to start.
    pub tick: Duration,
    /// How often a running run's progress is written.
    pub progress_interval: Duration,
    /// Runs this process executes at once.
    pub max_active_runs: usize,
    pub backoff: Backoff,
    /// Engine settings for every run (state directory and run key are set per run).
    pub copy: CopyOptions,
    /// What this process does with runs.
    pub role: Role,
    /// Bearer token this process presents to other ferry processes (data planes, control
    /// planes' callbacks).
    pub peer_token: Option<String>,
    /// The URL clients reach this process at: pull endpoints are given under it.
    pub public_url: Option<String>,
    /// How long a pull flow's token is valid.
    pub pull_token_ttl: Duration,
}

/// What a process does with the runs in its store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// `ferry serve` alone: fires schedules and executes every run itself.
    #[default]
    Standalone,
    /// A control plane with remote data planes: fires schedules and dispatches each run to
    /// a data plane chosen by the selector; executes nothing.
    Control,
    /// `ferry dataplane`: executes the runs it is told to start (and its own runs after a
    /// restart); fires no schedules.
    Data,
}

impl ControlConfig {
    pub fn new(data_dir: PathBuf, instance: String) -> Self {
        Self {
            copy: CopyOptions {
                state_dir: data_dir.join("checkpoints"),
                ..CopyOptions::default()
            },
            data_dir,
            instance,
            lease: Duration::from_secs(30),
            tick: Duration::from_secs(1),
            progress_interval: Duration::from_secs(1),
            max_active_runs: 4,
            backoff: Backoff::default(),
            role: Role::Standalone,
            peer_token: None,
            public_url: None,
            pull_token_ttl: crate::pull::DEFAULT_TOKEN_TTL,
        }
    }
}

/// What the API can get wrong, mapped to status codes by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("transfer '{0}' not found")]
    NotFound(String),
    /// Something other than a transfer is missing; the text says what.
    #[error("{0}")]
    Missing(String),
    /// A message (not a transfer) is malformed; each field at fault is listed.
    #[error("the message is invalid")]
    BadMessage(Vec<FieldError>),
    #[error("{0}")]
    Conflict(String),
    #[error("the manifest is invalid")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] Error),
}

pub type ControlResult<T> = std::result::Result<T, ControlError>;

/// Locks serialising status rewrites, each for the transfers whose names hash to it.
const STATUS_LOCKS: usize = 64;

/// The control plane of one process. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn ControlStore>,
    pub(crate) config: ControlConfig,
    secrets: SecretResolver,
    webhooks: Webhooks,
    metrics: Metrics,
    events: broadcast::Sender<EventRecord>,
    pub(crate) active: Mutex<HashMap<String, Active>>,
    /// Serialise status rewrites of a transfer (by a hash of its name), so two writers
    /// never interleave a read and a write; other transfers' go on meanwhile.
    status_locks: Vec<tokio::sync::Mutex<()>>,
    pub(crate) wake: Notify,
    /// Wakes the pipeline loop: a run ended, a pipeline run was made.
    pub(crate) pipeline_wake: Notify,
    stopping: AtomicBool,
    /// No new runs start here (a data plane draining before it stops).
    pub(crate) draining: AtomicBool,
    /// True once the server stops taking requests: event streams end so connections close.
    closing: tokio::sync::watch::Sender<bool>,
    /// Parsed settings by (transfer uid, generation).
    settings: Mutex<HashMap<(String, i64), Settings>>,
    /// Where to report the runs started through the signaling API, by run id.
    pub(crate) callback_addresses: Mutex<HashMap<String, String>>,
    pub(crate) callbacks: Callbacks,
    /// The flows this process serves for download.
    pub(crate) pulls: crate::pull::PullFlows,
    dispatcher: std::sync::OnceLock<Dispatcher>,
    /// External engines runs can be delegated to, and the rules that choose.
    engines: std::sync::OnceLock<(Engines, Router)>,
    /// Where pipelines' notifications go.
    pub(crate) notifier: std::sync::OnceLock<crate::notify::Notifier>,
    pub(crate) trigger_polls: Mutex<crate::pipeline::triggers::Polls>,
}

pub(crate) struct Active {
    pub(crate) transfer: String,
    pub(crate) task: AbortHandle,
    pub(crate) tracker: Arc<Tracker>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn new_id(name: &str) -> String {
    format!("{name}-{:x}{:04x}", now_ms(), rand::random::<u16>())
}

const FAILED_PHASES: [&str; 4] = ["Failed", "Fatal", "ConfigurationError", "Cancelled"];

/// A run stopped by the signaling API; it keeps its checkpoint and resumes when told to.
pub(crate) const SUSPENDED: &str = "Suspended";

impl Controller {
    pub fn new(
        store: Arc<dyn ControlStore>,
        config: ControlConfig,
        secrets: SecretResolver,
        webhooks: Webhooks,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        let callbacks = Callbacks::start(config.peer_token.clone());
        let pulls = crate::pull::PullFlows::new(config.pull_token_ttl);
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                secrets,
                webhooks,
                metrics: Metrics::default(),
                events,
                active: Mutex::new(HashMap::new()),
                status_locks: (0..STATUS_LOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                wake: Notify::new(),
                pipeline_wake: Notify::new(),
                stopping: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                closing: tokio::sync::watch::Sender::new(false),
                settings: Mutex::new(HashMap::new()),
                callback_addresses: Mutex::new(HashMap::new()),
                callbacks,
                pulls,
                dispatcher: std::sync::OnceLock::new(),
                engines: std::sync::OnceLock::new(),
                notifier: std::sync::OnceLock::new(),
                trigger_polls: Mutex::new(Default::default()),
            }),
        }
    }

    /// Sends pipelines' notifications through these channels. Set once.
    pub fn with_notifier(self, notifier: crate::notify::Notifier) -> Self {
        let _ = self.inner.notifier.set(notifier);
        self
    }

    /// Dispatches runs to remote data planes instead of executing them (role `Control`).
    /// Set once; a second dispatcher is ignored.
    pub fn with_dispatcher(self, dispatcher: Dispatcher) -> Self {
        let _ = self.inner.dispatcher.set(dispatcher);
        self
    }

    /// Lets this process delegate runs to external engines, routed by `router`. Set once.
    pub fn with_engines(self, engines: Engines, router: Router) -> Self {
        let _ = self.inner.engines.set((engines, router));
        self
    }

    pub fn engines(&self) -> &Engines {
        self.inner.engines()
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    /// The flows this process serves for download (pull flows).
    pub fn pulls(&self) -> &crate::pull::PullFlows {
        &self.inner.pulls
    }

    /// Runs executing in this process now.
    pub fn active_runs(&self) -> usize {
        lock(&self.inner.active).len()
    }

    /// Bytes per second over the runs executing here now.
    pub fn bytes_per_second(&self) -> f64 {
        self.inner.bytes_per_second()
    }

    /// Stops taking new runs; those executing go on. For a data plane draining before it
    /// stops.
    pub fn stop_taking_runs(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn store(&self) -> &Arc<dyn ControlStore> {
        &self.inner.store
    }

    /// Starts the control loop; it runs until [`Controller::shutdown`].
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        if inner.config.role != Role::Data {
            let inner = inner.clone();
            tokio::spawn(async move {
                while !inner.stopping.load(Ordering::SeqCst) {
                    if let Err(e) = crate::pipeline::runner::tick(&inner).await {
                        tracing::warn!("pipeline loop: {e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(inner.config.tick) => {}
                        _ = inner.pipeline_wake.notified() => {}
                    }
                }
            });
        }
        tokio::spawn(async move {
            while !inner.stopping.load(Ordering::SeqCst) {
                if let Err(e) = inner.clone().tick().await {
                    tracing::warn!("control loop: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(inner.config.tick) => {}
                    _ = inner.wake.notified() => {}
                }
            }
        })
    }

    /// Stops starting runs, interrupts the running ones (their checkpoints stay, so the
    /// next start resumes them) and gives their claims up.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        inner.wake.notify_one();
        inner.pipeline_wake.notify_one();
        let active: Vec<(String, Active)> = lock(&inner.active).drain().collect();
        for (_, a) in &active {
            a.task.abort();
        }
        for (id, a) in active {
            let Ok(Some(mut run)) = inner.store.get_run(&id).await else {
                continue;
            };
            if run.finished() {
                continue;
            }
            run.phase = "Pending".into();
            run.stats = with_progress(&run.stats, &a.tracker);
            let _ = inner.store.put_run(&run).await;
            let _ = inner.store.release_run(&id, &inner.config.instance).await;
            inner
                .emit(
                    &a.transfer,
                    Some(&id),
                    "Warning",
                    "RunInterrupted",
                    "the server stopped; the run resumes from its checkpoint on the next start"
                        .into(),
                    json!({}),
                )
                .await;
            let _ = inner.refresh_status(&a.transfer).await;
        }
    }

    /// Creates a transfer; a one-time transfer (no schedule) gets its run at once.
    pub async fn create(&self, raw: Value) -> ControlResult<TransferView> {
        let manifest = validate(raw).map_err(ControlError::Invalid)?;
        self.check_execution(&manifest)?;
        let record = self.inner.create_record(&manifest).await?;
        if manifest.settings.schedule.is_none() && !manifest.settings.suspend {
            self.inner.new_run(&record, "created", None, None).await?;
        }
        self.get(&record.name).await
    }
}

impl Inner {
    /// Stores a new transfer, without runs.
    pub(crate) async fn create_record(
        &self,
        manifest: &TransferManifest,
    ) -> ControlResult<TransferRecord> {
        let inner = self;
        let now = now_ms();
        let phase = if manifest.settings.suspend {
            Phase::Suspended
        } else {
            Phase::Pending
        };
        let status = TransferStatus {
            phase: Some(phase),
            observed_generation: 1,
            next_schedule_time: next_schedule(&manifest.settings, now),
            ..TransferStatus::default()
        };
        let record = TransferRecord {
            name: manifest.name.clone(),
            uid: format!("{:016x}", rand::random::<u64>()),
            generation: 1,
            labels: manifest.labels.clone(),
            manifest: manifest.raw.clone(),
            phase: phase.as_str().into(),
            status: serde_json::to_value(&status).unwrap_or_default(),
            created_at: now,
            updated_at: now,
            next_due: next_due(&manifest.settings, now),
        };
        if !inner.store.create_transfer(&record).await? {
            return Err(ControlError::Conflict(format!(
                "transfer '{}' already exists; replace it with PUT /v1/transfers/{}",
                record.name, record.name
            )));
        }
        inner
            .emit(
                &record.name,
                None,
                "Normal",
                "Created",
                "transfer created".into(),
                json!({}),
            )
            .await;
        Ok(record)
    }
}

impl Controller {
    /// Replaces the spec (and labels) of an existing transfer.
    pub async fn replace(&self, name: &str, raw: Value) -> ControlResult<TransferView> {
        let manifest = validate(raw).map_err(ControlError::Invalid)?;
        if manifest.name != name {
            return Err(ControlError::Invalid(vec![FieldError {
                field: "metadata.name".into(),
                message: format!("'{}' does not match the transfer '{name}'", manifest.name),
            }]));
        }
        self.check_execution(&manifest)?;
        self.replace_manifest(&manifest).await
    }

    /// A process that executes runs refuses `spec.execution.engine` naming an engine it
    /// does not have, or one that cannot do the transfer. (A control plane leaves that to
    /// its data planes.)
    pub(crate) fn check_execution(&self, manifest: &TransferManifest) -> ControlResult<()> {
        if self.inner.config.role == Role::Control {
            return Ok(());
        }
        let spec = &manifest.raw["spec"];
        let request = ExecutionRequest::of_spec(spec);
        let Some(name) = request.named() else {
            return Ok(());
        };
        let engines = self.inner.engines();
        let message = match engines.get(name) {
            None => {
                let known: Vec<&str> = engines.all().iter().map(|e| e.name()).collect();
                format!(
                    "no engine named '{name}' here (engines: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            }
            Some(engine) => {
                let kind = |side: &str| spec[side]["type"].as_str().unwrap_or("").to_string();
                let transforms = spec["transformation"]
                    .as_array()
                    .is_some_and(|t| !t.is_empty());
                match crate::engines::route::unable_types(engine, &kind("source"), &kind("destination")) {
                    Some(why) => why,
                    None if transforms => format!(
                        "engine {name} copies bytes as they are and cannot apply spec.transformation"
                    ),
                    None => return Ok(()),
                }
            }
        };
        Err(ControlError::Invalid(vec![FieldError {
            field: "spec.execution.engine".into(),
            message,
        }]))
    }

    async fn replace_manifest(&self, manifest: &TransferManifest) -> ControlResult<TransferView> {
        let inner = &self.inner;
        let record = inner
            .store
            .replace_manifest(&manifest.name, &manifest.raw, &manifest.labels, now_ms())
            .await?
            .ok_or_else(|| ControlError::NotFound(manifest.name.clone()))?;
        inner
            .emit(
                &record.name,
                None,
                "Normal",
                "SpecReplaced",
                format!("spec replaced (generation {})", record.generation),
                json!({"generation": record.generation}),
            )
            .await;
        inner.refresh_status(&record.name).await?;
        inner.wake.notify_one();
        self.get(&record.name).await
    }

    pub async fn get(&self, name: &str) -> ControlResult<TransferView> {
        let record = self.inner.transfer(name).await?;
        let mut view = self.inner.view(&record);
        // A stream's status is its run's, as of its last batch.
        if view.kind == "StreamTransfer" {
            if let Some(id) = &view.status.active_run {
                if let Some(run) = self.inner.store.get_run(id).await? {
                    view.status.stream = RunView::of(&run).stats.stream;
                }
            }
        }
        Ok(view)
    }

    /// Transfers, optionally only those in `phase` and carrying every label in `labels`.
    pub async fn list(
        &self,
        phase: Option<Phase>,
        labels: &BTreeMap<String, String>,
    ) -> ControlResult<Vec<TransferView>> {
        Ok(self.list_page(phase, labels, None, None).await?.0)
    }

    /// A page of at most `limit` transfers by name, after the one named `after`, and the
    /// name to continue after when more may follow.
    pub async fn list_page(
        &self,
        phase: Option<Phase>,
        labels: &BTreeMap<String, String>,
        after: Option<String>,
        limit: Option<usize>,
    ) -> ControlResult<(Vec<TransferView>, Option<String>)> {
        let filter = TransferFilter {
            phase: phase.map(|p| p.as_str().to_string()),
            labels: labels.clone(),
            after,
            // One more than asked for tells whether another page follows.
            limit: limit.map(|n| n + 1),
        };
        let mut records = self.inner.store.list_transfers(&filter).await?;
        let more = limit.is_some_and(|n| records.len() > n);
        if let Some(n) = limit {
            records.truncate(n);
        }
        let next = more
            .then(|| records.last().map(|r| r.name.clone()))
            .flatten();
        Ok((records.iter().map(|r| self.inner.view(r)).collect(), next))
    }

    /// Deletes a transfer, its runs and its events; a running run is stopped first.
    /// With `cleanup`, what its runs wrote at the destination is removed too.
    pub async fn delete(&self, name: &str, cleanup: bool) -> ControlResult<Vec<String>> {
        let inner = &self.inner;
        let record = inner.transfer(name).await?;
        inner.cancel_active(name, None);
        let mut removed = Vec::new();
        if cleanup {
            let runs = inner.store.list_runs(name).await?;
            removed = execute::cleanup(&inner.secrets, &record.manifest, &runs, &inner.config.copy)
                .await?;
        }
        inner.store.delete_transfer(name).await?;
        inner.settings_forget(&record.uid);
        Ok(removed)
    }

    /// Sets `spec.suspend`.
    pub async fn set_suspend(&self, name: &str, suspend: bool) -> ControlResult<TransferView> {
        let record = self.inner.transfer(name).await?;
        let mut raw = record.manifest.clone();
        raw["spec"]["suspend"] = Value::Bool(suspend);
        let manifest = validate(raw).map_err(ControlError::Invalid)?;
        let view = self.replace_manifest(&manifest).await?;
        if suspend {
            self.suspend_runs(name).await?;
        } else {
            self.resume_runs(name).await?;
        }
        let reason = if suspend { "Suspended" } else { "Resumed" };
        self.inner
            .emit(
                name,
                None,
                "Normal",
                reason,
                format!("transfer {}", reason.to_lowercase()),
                json!({}),
            )
            .await;
        Ok(view)
    }

    /// Stops the transfer's runs in progress in this process where they are (readers and
    /// writers stop; the checkpoint keeps their position) and marks them suspended.
    async fn suspend_runs(&self, transfer: &str) -> Result<()> {
        let inner = &self.inner;
        for run in inner.store.list_runs(transfer).await? {
            if run.finished() || run.phase == SUSPENDED {
                continue;
            }
            let here = lock(&inner.active).contains_key(&run.id);
            if !here {
                // Not started yet, or another process's: it waits while suspended.
                if run.phase == "Pending" {
                    let mut run = run;
                    run.phase = SUSPENDED.into();
                    inner.store.put_run(&run).await?;
                }
                continue;
            }
            // Suspended first, so that nothing claims the run again once its attempt is
            // stopped; then stopped.
            let mut suspended = run.clone();
            suspended.phase = SUSPENDED.into();
            inner.store.put_run(&suspended).await?;
            let Some(active) = lock(&inner.active).remove(&run.id) else {
                continue;
            };
            active.task.abort();
            // Read again: the attempt may have ended while it was being stopped.
            let Some(mut run) = inner.store.get_run(&run.id).await? else {
                continue;
            };
            if run.finished() {
                continue;
            }
            run.phase = SUSPENDED.into();
            run.stats = with_progress(&run.stats, &active.tracker);
            inner.store.put_run(&run).await?;
            inner
                .store
                .release_run(&run.id, &inner.config.instance)
                .await?;
            inner
                .emit(
                    transfer,
                    Some(&run.id),
                    "Normal",
                    "RunSuspended",
                    format!(
                        "run {} suspended with its transfer; it resumes from its checkpoint",
                        run.id
                    ),
                    json!({"reason": "transfer suspended"}),
                )
                .await;
        }
        Ok(())
    }

    /// Lets the transfer's suspended runs go on from their checkpoints.
    async fn resume_runs(&self, transfer: &str) -> Result<()> {
        let inner = &self.inner;
        for mut run in inner.store.list_runs(transfer).await? {
            if run.phase == SUSPENDED {
                run.phase = "Pending".into();
                inner.store.put_run(&run).await?;
            }
        }
        inner.wake.notify_one();
        Ok(())
    }

    /// Starts a run now, whatever the schedule says (suspended transfers included: an
    /// explicit request wins).
    pub async fn run_now(&self, name: &str) -> ControlResult<RunView> {
        let inner = &self.inner;
        let record = inner.transfer(name).await?;
        let run = inner.new_run(&record, "manual", None, None).await?;
        Ok(RunView::of(&run))
    }

    pub async fn runs(&self, name: &str) -> ControlResult<Vec<RunView>> {
        self.inner.transfer(name).await?;
        let runs = self.inner.store.list_runs(name).await?;
        Ok(runs.iter().map(|r| self.inner.run_view(r)).collect())
    }

    pub async fn events(
        &self,
        name: &str,
        after: i64,
        limit: usize,
    ) -> ControlResult<Vec<EventView>> {
        self.inner.transfer(name).await?;
        let events = self.inner.store.list_events(name, after, limit).await?;
        Ok(events.iter().map(EventView::of).collect())
    }

    /// Every event from now on, as it is recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.inner.events.subscribe()
    }

    /// Ends every event stream, so that a server shutting down is not held open by
    /// clients following events.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves once [`Controller::close_streams`] was called.
    pub fn streams_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.inner.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// True when the store answers.
    pub async fn ready(&self) -> bool {
        self.inner.store.get_transfer("-").await.is_ok()
    }

    pub async fn metrics_text(&self) -> ControlResult<String> {
        let inner = &self.inner;
        let mut by_phase: BTreeMap<&'static str, u64> =
            Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        for t in inner
            .store
            .list_transfers(&TransferFilter::default())
            .await?
        {
            if let Some(p) = Phase::parse(&t.phase) {
                *by_phase.entry(p.as_str()).or_default() += 1;
            }
        }
        let hooks = (
            inner.webhooks.delivered(),
            inner.webhooks.failed(),
            inner.webhooks.dropped(),
        );
        let mut text = inner.metrics.render(&Snapshot {
            transfers_by_phase: by_phase,
            active_runs: lock(&inner.active).len() as u64,
            webhook_delivered: hooks.0,
            webhook_failed: hooks.1,
            webhook_dropped: hooks.2,
            delegated_runs: inner
                .engines()
                .all()
                .iter()
                .map(|e| (e.name().to_string(), e.active() as u64))
                .collect(),
        });
        if let Some(notifier) = inner.notifier.get() {
            text.push_str(
                "# HELP ferry_notifications_total Pipeline notifications by channel and result.\n\
                 # TYPE ferry_notifications_total counter\n",
            );
            for (channel, counts) in notifier.counts() {
                for (result, n) in ["sent", "failed", "dropped", "suppressed"]
                    .iter()
                    .zip(counts)
                {
                    text.push_str(&format!(
                        "ferry_notifications_total{{channel=\"{channel}\",result=\"{result}\"}} {n}\n"
                    ));
                }
            }
        }
        Ok(text)
    }
}

/// When the control loop must next look at a transfer: its schedule's next time after
/// `after`, unless it has no schedule or is suspended.
fn next_due(settings: &Settings, after: i64) -> Option<i64> {
    if settings.suspend {
        return None;
    }
    let next = settings.schedule.as_ref()?.next_after(ms_to_time(after))?;
    Some(next.timestamp_millis())
}

fn next_schedule(settings: &Settings, after: i64) -> Option<String> {
    next_due(settings, after).map(time_text)
}

pub(crate) fn with_progress(stats: &Value, tracker: &Tracker) -> Value {
    let mut s: RunStats = serde_json::from_value(stats.clone()).unwrap_or_default();
    s.progress = Some(tracker.progress());
    s.last_record_ms = tracker.last_advance_ms().or(s.last_record_ms);
    serde_json::to_value(s).unwrap_or_default()
}

impl Inner {
    pub(crate) fn engines(&self) -> &Engines {
        static NONE: std::sync::OnceLock<Engines> = std::sync::OnceLock::new();
        match self.engines.get() {
            Some((engines, _)) => engines,
            None => NONE.get_or_init(Engines::default),
        }
    }

    /// Bytes per second over the runs executing here now.
    pub(crate) fn bytes_per_second(&self) -> f64 {
        lock(&self.active)
            .values()
            .map(|a| a.tracker.bytes_per_second())
            .sum()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) async fn transfer(&self, name: &str) -> ControlResult<TransferRecord> {
        self.store
            .get_transfer(name)
            .await?
            .ok_or_else(|| ControlError::NotFound(name.to_string()))
    }

    fn settings(&self, record: &TransferRecord) -> Option<Settings> {
        let key = (record.uid.clone(), record.generation);
        if let Some(s) = lock(&self.settings).get(&key) {
            return Some(s.clone());
        }
        let settings = validate(record.manifest.clone()).ok()?.settings;
        lock(&self.settings).insert(key, settings.clone());
        Some(settings)
    }

    fn settings_forget(&self, uid: &str) {
        lock(&self.settings).retain(|(u, _), _| u != uid);
    }

    fn view(&self, record: &TransferRecord) -> TransferView {
        let redacted = redact_manifest(&record.manifest);
        let mut status: TransferStatus =
            serde_json::from_value(record.status.clone()).unwrap_or_default();
        // Progress of a run in this process is fresher than what was last written.
        if let Some(run) = &status.active_run {
            if let Some(a) = lock(&self.active).get(run) {
                status.progress = Some(a.tracker.progress());
            }
        }
        TransferView {
            api_version: redacted["apiVersion"].as_str().unwrap_or_default().into(),
            kind: redacted["kind"].as_str().unwrap_or_default().into(),
            metadata: redacted["metadata"].clone(),
            spec: redacted["spec"].clone(),
            status,
        }
    }

    pub(crate) fn run_view(&self, run: &RunRecord) -> RunView {
        let mut view = RunView::of(run);
        if let Some(a) = lock(&self.active).get(&run.id) {
            view.stats.progress = Some(a.tracker.progress());
        }
        view
    }

    pub(crate) async fn emit(
        &self,
        transfer: &str,
        run: Option<&str>,
        severity: &str,
        reason: &str,
        message: String,
        data: Value,
    ) {
        let event = NewEvent {
            transfer: transfer.into(),
            run: run.map(str::to_string),
            time: now_ms(),
            severity: severity.into(),
            reason: reason.into(),
            message,
            data,
        };
        self.metrics.event();
        if matches!(reason, "RunSucceeded" | "RunFailed" | "RunCancelled") {
            self.pipeline_wake.notify_one();
        }
        match self.store.append_event(&event).await {
            Ok(record) => {
                if let Ok(body) = serde_json::to_value(EventView::of(&record)) {
                    self.webhooks.send(&body, reason);
                }
                let _ = self.events.send(record);
            }
            Err(e) => tracing::warn!("event {reason} of {transfer} not recorded: {e}"),
        }
        if severity == "Warning" {
            tracing::warn!(transfer, run, reason, "{}", event.message);
        } else {
            tracing::info!(transfer, run, reason, "{}", event.message);
        }
    }

    /// Counts a dispatch in the metrics' histograms.
    pub(crate) fn dispatched(&self, select: f64, total: f64) {
        self.metrics.dispatched(select, total);
    }

    fn status_lock(&self, transfer: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        transfer.hash(&mut hasher);
        &self.status_locks[hasher.finish() as usize % self.status_locks.len()]
    }

    /// Several events under one key, written together in their order.
    pub(crate) async fn emit_all(
        &self,
        key: &str,
        events: Vec<(Option<String>, &str, &str, String, Value)>,
    ) {
        let time = now_ms();
        let new: Vec<NewEvent> = events
            .into_iter()
            .map(|(run, severity, reason, message, data)| NewEvent {
                transfer: key.into(),
                run,
                time,
                severity: severity.into(),
                reason: reason.into(),
                message,
                data,
            })
            .collect();
        for e in &new {
            self.metrics.event();
            if e.severity == "Warning" {
                tracing::warn!(
                    transfer = key,
                    run = e.run,
                    reason = e.reason,
                    "{}",
                    e.message
                );
            } else {
                tracing::info!(
                    transfer = key,
                    run = e.run,
                    reason = e.reason,
                    "{}",
                    e.message
                );
            }
        }
        match self.store.append_events(&new).await {
            Ok(records) => {
                for record in records {
                    if let Ok(body) = serde_json::to_value(EventView::of(&record)) {
                        self.webhooks.send(&body, &record.event.reason);
                    }
                    let _ = self.events.send(record);
                }
            }
            Err(e) => tracing::warn!("{} events of {key} not recorded: {e}", new.len()),
        }
    }

    pub(crate) async fn new_run(
        &self,
        record: &TransferRecord,
        trigger: &str,
        scheduled_for: Option<i64>,
        id: Option<String>,
    ) -> Result<RunRecord> {
        let now = now_ms();
        let id = id.unwrap_or_else(|| new_id(&record.name));
        let run = RunRecord::pending(id, record, trigger, scheduled_for, now);
        self.store.put_run(&run).await?;
        self.emit(
            &record.name,
            Some(&run.id),
            "Normal",
            "RunCreated",
            format!("run {} created ({trigger})", run.id),
            json!({"trigger": trigger}),
        )
        .await;
        // The dispatcher may take it while the transfer's status catches up.
        self.wake.notify_one();
        self.refresh_status(&record.name).await?;
        Ok(run)
    }

    /// Stops runs of `transfer` executing here (all, or all but `keep`).
    fn cancel_active(&self, transfer: &str, keep: Option<&str>) -> Vec<String> {
        let mut active = lock(&self.active);
        let ids: Vec<String> = active
            .iter()
            .filter(|(id, a)| a.transfer == transfer && Some(id.as_str()) != keep)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            if let Some(a) = active.remove(id) {
                a.task.abort();
            }
        }
        ids
    }

    /// One pass of the loop: renew claims, fire due schedules, start runs.
    async fn tick(self: Arc<Self>) -> Result<()> {
        let now = now_ms();
        let lease_until = now + self.config.lease.as_millis() as i64;
        // Claims are held by runs executing here, and on a data plane by runs queued for
        // it; nothing to renew otherwise.
        if !lock(&self.active).is_empty() || self.config.role == Role::Data {
            self.store
                .renew_leases(&self.config.instance, lease_until)
                .await?;
        }
        let role = self.config.role;
        let mut unfinished = self.store.unfinished_runs().await?;
        if role != Role::Data {
            for record in &self.store.due_transfers(now).await? {
                let Some(settings) = self.settings(record) else {
                    continue;
                };
                // Of several control planes sharing the store, one fires each time.
                let next = next_due(&settings, now);
                let Some(due) = record.next_due else {
                    continue;
                };
                if !self
                    .store
                    .claim_schedule(&record.name, &record.uid, due, next, now)
                    .await?
                {
                    continue;
                }
                if let Some(created) = self
                    .fire_schedule(record, &settings, &unfinished, now)
                    .await?
                {
                    unfinished.push(created);
                }
            }
        }
        if role == Role::Control {
            if let Some(dispatcher) = self.dispatcher.get() {
                dispatcher.dispatch(&self, unfinished, now).await;
            }
            return Ok(());
        }
        for run in unfinished {
            if self.stopping.load(Ordering::SeqCst) || self.draining.load(Ordering::SeqCst) {
                break;
            }
            if lock(&self.active).len() >= self.config.max_active_runs {
                break;
            }
            if lock(&self.active).contains_key(&run.id)
                || run.not_before.is_some_and(|t| t > now)
                || run.phase == SUSPENDED
            {
                continue;
            }
            // A data plane executes what it is told to, and its own runs after a restart.
            if role == Role::Data && run.owner.as_deref() != Some(&self.config.instance) {
                continue;
            }
            let Some(claimed) = self
                .store
                .claim_run(&run.id, &self.config.instance, lease_until, now)
                .await?
            else {
                continue;
            };
            self.clone().spawn_run(claimed);
        }
        Ok(())
    }

    /// Creates the run a due schedule asks for, as the concurrency policy allows.
    async fn fire_schedule(
        &self,
        record: &TransferRecord,
        settings: &Settings,
        unfinished: &[RunRecord],
        now: i64,
    ) -> Result<Option<RunRecord>> {
        let Some(schedule) = &settings.schedule else {
            return Ok(None);
        };
        if settings.suspend {
            return Ok(None);
        }
        let status: TransferStatus =
            serde_json::from_value(record.status.clone()).unwrap_or_default();
        let last = status
            .last_schedule_time
            .as_deref()
            .and_then(parse_time)
            .map(|t| t.timestamp_millis())
            .unwrap_or(record.created_at);
        let Some(due) = schedule.due(ms_to_time(last), ms_to_time(now)) else {
            return Ok(None);
        };
        let at = due.at.timestamp_millis();
        self.set_last_schedule(record, at).await?;
        if due.missed > 0 {
            self.emit(
                &record.name,
                None,
                "Warning",
                "MissedSchedules",
                format!(
                    "{} scheduled times passed while the server was down; running once for {}",
                    due.missed,
                    time_text(at)
                ),
                json!({"missed": due.missed}),
            )
            .await;
        }
        let running: Vec<RunRecord> = unfinished
            .iter()
            .filter(|r| r.transfer == record.name)
            .cloned()
            .collect();
        if !running.is_empty() {
            match settings.concurrency_policy {
                ConcurrencyPolicy::Forbid => {
                    self.emit(
                        &record.name,
                        None,
                        "Normal",
                        "RunSkipped",
                        format!(
                            "schedule {} skipped: run {} is still running (concurrencyPolicy Forbid)",
                            time_text(at),
                            running[0].id
                        ),
                        json!({}),
                    )
                    .await;
                    return Ok(None);
                }
                ConcurrencyPolicy::Allow => {}
                ConcurrencyPolicy::Replace => {
                    for run in &running {
                        self.finish_cancelled(run, "replaced by a newer scheduled run")
                            .await?;
                    }
                }
            }
        }
        self.new_run(record, "schedule", Some(at), None)
            .await
            .map(Some)
    }

    async fn set_last_schedule(&self, record: &TransferRecord, at: i64) -> Result<()> {
        let _guard = self.status_lock(&record.name).lock().await;
        let now = now_ms();
        let Some(current) = self.store.get_transfer(&record.name).await? else {
            return Ok(());
        };
        let mut status: TransferStatus =
            serde_json::from_value(current.status.clone()).unwrap_or_default();
        status.last_schedule_time = Some(time_text(at));
        let settings = self.settings(&current);
        status.next_schedule_time = settings.as_ref().and_then(|s| next_schedule(s, at));
        self.store
            .set_status(
                &current.name,
                &current.uid,
                &current.phase,
                &serde_json::to_value(&status).unwrap_or_default(),
                settings.as_ref().and_then(|s| next_due(s, at)),
                now,
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn finish_cancelled(&self, run: &RunRecord, why: &str) -> Result<()> {
        if let Some(a) = lock(&self.active).remove(&run.id) {
            a.task.abort();
        }
        let mut run = self
            .store
            .get_run(&run.id)
            .await?
            .unwrap_or_else(|| run.clone());
        run.phase = "Cancelled".into();
        run.finished_at = Some(now_ms());
        run.error = Some(why.into());
        self.store.put_run(&run).await?;
        self.store
            .release_run(&run.id, &self.config.instance)
            .await?;
        self.emit(
            &run.transfer,
            Some(&run.id),
            "Warning",
            "RunCancelled",
            format!("run {} cancelled: {why}", run.id),
            json!({}),
        )
        .await;
        self.refresh_status(&run.transfer).await
    }

    pub(crate) fn spawn_run(self: Arc<Self>, run: RunRecord) {
        let tracker = Arc::new(Tracker::default());
        let id = run.id.clone();
        let transfer = run.transfer.clone();
        let mut active = lock(&self.active);
        // Started here already (the control loop and a start message can meet).
        if active.contains_key(&id) {
            return;
        }
        let this = self.clone();
        let t = tracker.clone();
        let task = tokio::spawn(async move {
            let id = run.id.clone();
            if let Err(e) = this.clone().execute(run, t).await {
                tracing::warn!("run {id}: {e}");
            }
            lock(&this.active).remove(&id);
            this.wake.notify_one();
        });
        active.insert(
            id,
            Active {
                transfer,
                task: task.abort_handle(),
                tracker,
            },
        );
    }

    /// One attempt of a run, from claim to its outcome.
    async fn execute(self: Arc<Self>, mut run: RunRecord, tracker: Arc<Tracker>) -> Result<()> {
        let Some(record) = self.store.get_transfer(&run.transfer).await? else {
            return self
                .finish_cancelled(&run, "its transfer was deleted")
                .await;
        };
        if record.uid != run.transfer_uid {
            return self
                .finish_cancelled(&run, "its transfer was deleted")
                .await;
        }
        // Running: the process died mid-attempt; started before without an error: the
        // server stopped it on shutdown. Either way the checkpoint holds its progress.
        let resumed = run.phase == "Running" || (run.attempt > 0 && run.error.is_none());
        let now = now_ms();
        run.attempt += 1;
        run.phase = "Running".into();
        run.started_at.get_or_insert(now);
        run.not_before = None;
        self.store.put_run(&run).await?;
        self.metrics.run_started();
        let (reason, message) = if resumed {
            (
                "RunResumed",
                format!(
                    "run {} resumed from its checkpoint after an interruption",
                    run.id
                ),
            )
        } else {
            (
                "RunStarted",
                format!("run {} started (attempt {})", run.id, run.attempt),
            )
        };
        self.emit(
            &run.transfer,
            Some(&run.id),
            "Normal",
            reason,
            message,
            json!({"attempt": run.attempt}),
        )
        .await;
        self.refresh_status(&run.transfer).await?;
        self.notify_flow(&run, &record, FlowEvent::Started);

        let reporter = {
            let this = self.clone();
            let (id, transfer, tracker) = (run.id.clone(), run.transfer.clone(), tracker.clone());
            tokio::spawn(async move { this.report_progress(&id, &transfer, &tracker).await })
        };
        let mut opts = self.config.copy.clone();
        opts.run_key = Some(run.id.clone());
        opts.resume = true;
        let command = self.settings(&record).is_some_and(|s| s.command);
        // A command has no addresses to plan: it resolves its own secrets.
        let prepared = if command {
            Err(execute::command(&self.secrets, &record.manifest, tracker.clone()).await)
        } else {
            execute::prepare(&self.secrets, &record.manifest).await
        };
        let outcome = match prepared {
            Err(outcome) => outcome,
            Ok(prepared) if self.settings(&record).is_some_and(|s| s.stream) => {
                self.stream(&mut run, &record, prepared, &opts, tracker.clone())
                    .await
            }
            Ok(prepared) => {
                self.attempt(&mut run, &record, prepared, &opts, tracker.clone())
                    .await
            }
        };
        reporter.abort();

        let settings = self.settings(&record);
        let max_retries = settings.as_ref().map_or(0, |s| s.max_failed_retries);
        let now = now_ms();
        let mut stats: RunStats = serde_json::from_value(run.stats.clone()).unwrap_or_default();
        stats.progress = None;
        stats.last_record_ms = tracker.last_advance_ms().or(stats.last_record_ms);
        let seconds = ((now - run.started_at.unwrap_or(now)) as f64 / 1000.0).max(0.001);
        let (severity, reason, message, data) = match outcome {
            Outcome::Succeeded(done) => {
                stats.merge(done, seconds);
                run.phase = "Succeeded".into();
                run.finished_at = Some(now);
                run.error = None;
                self.metrics
                    .run_finished("Succeeded", seconds, stats.bytes, stats.num_records);
                (
                    "Normal",
                    "RunSucceeded",
                    format!(
                        "run {} succeeded: {} records, {} bytes in {:.2} s ({:.0} bytes/s)",
                        run.id, stats.num_records, stats.bytes, seconds, stats.bytes_per_second
                    ),
                    json!({"records": stats.num_records, "bytes": stats.bytes,
                           "durationSeconds": seconds, "bytesPerSecond": stats.bytes_per_second,
                           "recordsPerSecond": stats.records_per_second}),
                )
            }
            Outcome::Failed {
                error,
                class,
                moved,
            } => {
                if let Some(moved) = moved {
                    self.metrics.moved(moved.bytes, moved.num_records);
                    // A command's exit code and output tell why it failed.
                    if moved.command.is_some() {
                        stats.command = moved.command;
                    }
                }
                run.error = Some(error.clone());
                if class == ErrorClass::Retryable && (run.attempt as u32) <= max_retries {
                    let delay = self.config.backoff.delay(run.attempt as u32);
                    run.phase = "Pending".into();
                    run.not_before = Some(now + delay.as_millis() as i64);
                    self.metrics.retried();
                    (
                        "Warning",
                        "RunRetrying",
                        format!(
                            "attempt {} of run {} failed; retrying in {:.0} s (retry {} of {max_retries}): {error}",
                            run.attempt,
                            run.id,
                            delay.as_secs_f64(),
                            run.attempt
                        ),
                        json!({"attempt": run.attempt, "delaySeconds": delay.as_secs_f64(), "error": error}),
                    )
                } else {
                    let phase = match class {
                        ErrorClass::Retryable => "Failed",
                        ErrorClass::Fatal => "Fatal",
                        ErrorClass::Configuration => "ConfigurationError",
                    };
                    run.phase = phase.into();
                    run.finished_at = Some(now);
                    self.metrics.run_finished(phase, seconds, 0, 0);
                    (
                        "Warning",
                        "RunFailed",
                        format!(
                            "run {} failed ({phase}) after {} attempts: {error}",
                            run.id, run.attempt
                        ),
                        json!({"phase": phase, "attempts": run.attempt, "error": error}),
                    )
                }
            }
        };
        run.stats = serde_json::to_value(&stats).unwrap_or_default();
        self.store.put_run(&run).await?;
        self.store
            .release_run(&run.id, &self.config.instance)
            .await?;
        self.emit(
            &run.transfer,
            Some(&run.id),
            severity,
            reason,
            message,
            data,
        )
        .await;
        if run.phase == "Succeeded" {
            self.notify_flow(&run, &record, FlowEvent::Completed);
        } else if run.finished() {
            self.notify_flow(&run, &record, FlowEvent::Errored);
        }
        self.prune_history(&run.transfer, settings.as_ref()).await?;
        self.refresh_status(&run.transfer).await?;
        Ok(())
    }

    /// One attempt on the transfer service routing chooses: this process's engine, or an
    /// external one. A run keeps the service it was first routed to: a delegated run
    /// re-attaches to its job, an in-process one resumes from its checkpoint.
    async fn attempt(
        self: &Arc<Self>,
        run: &mut RunRecord,
        record: &TransferRecord,
        prepared: Prepared,
        opts: &CopyOptions,
        tracker: Arc<Tracker>,
    ) -> Outcome {
        let engines = self.engines();
        if engines.is_empty() {
            return execute::run(prepared, opts, tracker).await;
        }
        let stats: RunStats = serde_json::from_value(run.stats.clone()).unwrap_or_default();
        let listing = tokio::sync::OnceCell::new();
        let list = || async {
            listing
                .get_or_try_init(|| async {
                    ferry_connectors::open_source(&prepared.source)?
                        .list()
                        .await
                })
                .await
                .cloned()
        };
        let decision = match stats.execution.map(|x| x.decision) {
            Some(d) => d,
            None => {
                let router = self
                    .engines
                    .get()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                let request = ExecutionRequest::of_spec(&record.manifest["spec"]);
                let delegated: usize = engines.all().iter().map(|e| e.active()).sum();
                let active = lock(&self.active).len();
                let input = RouteInput {
                    source: &prepared.source,
                    destination: &prepared.destination,
                    records: prepared.on_record_path(),
                    request: &request,
                    in_process_runs: active.saturating_sub(delegated + 1),
                    capacity: self.config.max_active_runs,
                    bytes_per_second: self.bytes_per_second(),
                };
                let sized = || async {
                    let l = list().await?;
                    Ok(l.entries.iter().map(|e| e.size).sum())
                };
                match router.route(engines, &input, sized).await {
                    Ok(d) => {
                        if let Err(e) = self.routed(run, &d).await {
                            return prepared.failed(&e.to_string(), ErrorClass::Retryable);
                        }
                        d
                    }
                    Err(RouteError::Request(text)) => {
                        return prepared.failed(&text, ErrorClass::Configuration)
                    }
                    Err(RouteError::Source(e)) => {
                        return execute::failed_with(&e, &prepared.hidden)
                    }
                }
            }
        };
        if !decision.delegated() {
            return execute::run(prepared, opts, tracker).await;
        }
        let Some(engine) = engines.get(&decision.engine).cloned() else {
            return prepared.failed(
                &format!(
                    "the run was delegated to engine {}, which this data plane no longer has",
                    decision.engine
                ),
                ErrorClass::Configuration,
            );
        };
        let (single_object, estimated) = match list().await {
            Ok(l) => (
                l.single_object,
                l.entries.iter().map(|e| e.size).sum::<u64>(),
            ),
            Err(e) => return execute::failed_with(&e, &prepared.hidden),
        };
        match self
            .delegate(
                run,
                engine.clone(),
                &prepared,
                (single_object, estimated),
                tracker.clone(),
            )
            .await
        {
            Ok(outcome) => outcome,
            Err(err) if engine.engine.config().fallback == Fallback::InProcess => {
                let d = Decision::in_process("fallback", format!("{err}; fallback: inProcess"));
                if let Err(e) = self.routed(run, &d).await {
                    return prepared.failed(&e.to_string(), ErrorClass::Retryable);
                }
                execute::run(prepared, opts, tracker).await
            }
            Err(err) => self.engine_failed(&prepared, &decision.engine, err),
        }
    }

    /// Changes a running run's stats as stored (the progress reporter writes them too, so
    /// the stored ones are read first) and keeps `run` in step.
    pub(crate) async fn update_stats(
        &self,
        run: &mut RunRecord,
        change: impl FnOnce(&mut RunStats),
    ) -> Result<()> {
        if let Some(stored) = self.store.get_run(&run.id).await? {
            run.stats = stored.stats;
        }
        let mut stats: RunStats = serde_json::from_value(run.stats.clone()).unwrap_or_default();
        change(&mut stats);
        run.stats = serde_json::to_value(&stats).unwrap_or_default();
        self.store.put_run(run).await
    }

    /// Records where the run goes and why: in its stats and as a `RunRouted` event.
    async fn routed(&self, run: &mut RunRecord, decision: &Decision) -> Result<()> {
        self.update_stats(run, |stats| {
            stats.execution = Some(Execution {
                decision: decision.clone(),
                group: None,
                job: None,
                submissions: 0,
            })
        })
        .await?;
        self.metrics.routed(&decision.engine, &decision.rule);
        self.emit(
            &run.transfer,
            Some(&run.id),
            "Normal",
            "RunRouted",
            format!(
                "run {} routed to {}: {}",
                run.id, decision.engine, decision.reason
            ),
            serde_json::to_value(decision).unwrap_or_default(),
        )
        .await;
        Ok(())
    }

    /// Writes progress while a run works, and an event at each quarter.
    async fn report_progress(&self, id: &str, transfer: &str, tracker: &Tracker) {
        let mut milestone = 0;
        loop {
            tokio::time::sleep(self.config.progress_interval).await;
            let progress = tracker.progress();
            if let Ok(Some(mut run)) = self.store.get_run(id).await {
                if run.finished() {
                    return;
                }
                run.stats = with_progress(&run.stats, tracker);
                let _ = self.store.put_run(&run).await;
            }
            let _ = self.refresh_status(transfer).await;
            let reached = progress
                .fraction
                .map_or(0, |f| (f * 4.0).floor() as i32)
                .min(3);
            if reached > milestone {
                milestone = reached;
                self.emit(
                    transfer,
                    Some(id),
                    "Normal",
                    "Progress",
                    format!(
                        "run {id} is {}% done ({} of {} bytes)",
                        milestone * 25,
                        progress.bytes_done,
                        progress.bytes_total
                    ),
                    json!({"percent": milestone * 25, "bytesDone": progress.bytes_done,
                           "bytesTotal": progress.bytes_total}),
                )
                .await;
            }
        }
    }

    /// Keeps the newest `successfulJobsHistoryLimit` succeeded and `failedJobsHistoryLimit`
    /// failed runs.
    async fn prune_history(&self, transfer: &str, settings: Option<&Settings>) -> Result<()> {
        let Some(settings) = settings else {
            return Ok(());
        };
        let runs = self.store.list_runs(transfer).await?;
        let (mut ok, mut failed) = (0, 0);
        let mut drop = Vec::new();
        for run in runs.iter().filter(|r| r.finished()) {
            let (seen, limit) = if run.phase == "Succeeded" {
                (&mut ok, settings.successful_history)
            } else {
                (&mut failed, settings.failed_history)
            };
            *seen += 1;
            if *seen > limit {
                drop.push(run.id.clone());
            }
        }
        if !drop.is_empty() {
            self.store.delete_runs(&drop).await?;
        }
        Ok(())
    }

    /// Recomputes a transfer's status from its runs and spec.
    pub(crate) async fn refresh_status(&self, name: &str) -> Result<()> {
        let _guard = self.status_lock(name).lock().await;
        // Taken before reading: a status computed from older reads than another
        // process's write is dropped by the store.
        let now = now_ms();
        let Some(record) = self.store.get_transfer(name).await? else {
            return Ok(());
        };
        let runs = self.store.list_runs(name).await?;
        let (phase, status) = self.compute_status(&record, &runs);
        let value = serde_json::to_value(&status).unwrap_or_default();
        let last = status
            .last_schedule_time
            .as_deref()
            .and_then(parse_time)
            .map_or(record.created_at, |t| t.timestamp_millis());
        let due = self.settings(&record).and_then(|s| next_due(&s, last));
        if value != record.status || record.phase != phase.as_str() || due != record.next_due {
            self.store
                .set_status(&record.name, &record.uid, phase.as_str(), &value, due, now)
                .await?;
        }
        Ok(())
    }

    /// A transfer's phase and status from its runs, its spec and what runs here.
    fn compute_status(
        &self,
        record: &TransferRecord,
        runs: &[RunRecord],
    ) -> (Phase, TransferStatus) {
        let settings = self.settings(record);
        let mut status: TransferStatus =
            serde_json::from_value(record.status.clone()).unwrap_or_default();
        let running = runs.iter().find(|r| r.phase == "Running" && !r.finished());
        let waiting = runs.iter().find(|r| !r.finished());
        let last_done = runs.iter().find(|r| r.finished() && r.phase != "Cancelled");
        let suspended = settings.as_ref().is_some_and(|s| s.suspend);

        status.active_run = running.or(waiting).map(|r| r.id.clone());
        status.progress = running.and_then(|r| {
            lock(&self.active)
                .get(&r.id)
                .map(|a| a.tracker.progress())
                .or_else(|| RunView::of(r).stats.progress)
        });
        if let Some(run) = runs.iter().find(|r| r.finished()) {
            let reference = RunRef {
                id: run.id.clone(),
                phase: run.phase.clone(),
                finished_at: run.finished_at.map(time_text),
                error: run.error.clone(),
            };
            if run.phase == "Succeeded" {
                let stats = RunView::of(run).stats;
                let newer = status
                    .last_completed_run
                    .as_ref()
                    .is_none_or(|r| r.id != run.id);
                if newer {
                    status.num_records = stats.num_records;
                    status.bytes = stats.bytes;
                    status.last_success_time = run.finished_at.map(time_text);
                    if stats.source_schema.is_some() {
                        status.source_schema = stats.source_schema;
                    }
                    if stats.destination_schema.is_some() {
                        status.destination_schema = stats.destination_schema;
                    }
                    status.observed_generation = run.generation;
                }
                status.last_completed_run = Some(reference);
            } else if FAILED_PHASES.contains(&run.phase.as_str()) {
                status.last_failed_run = Some(reference);
            }
        }
        if let Some(ms) = runs
            .iter()
            .filter_map(|r| RunView::of(r).stats.last_record_ms)
            .max()
        {
            let text = time_text(ms);
            if status
                .last_record_time
                .as_deref()
                .is_none_or(|t| *t < *text)
            {
                status.last_record_time = Some(text);
            }
        }
        let phase = if running.is_some() {
            Phase::Running
        } else if suspended {
            Phase::Suspended
        } else if waiting.is_some() {
            Phase::Pending
        } else if let Some(run) = last_done {
            Phase::parse(&run.phase).unwrap_or(Phase::Failed)
        } else {
            Phase::Pending
        };
        status.error = match phase {
            Phase::Running | Phase::Succeeded | Phase::Suspended => None,
            _ => waiting.and_then(|r| r.error.clone()).or_else(|| {
                last_done
                    .filter(|r| r.phase != "Succeeded")
                    .and_then(|r| r.error.clone())
            }),
        };
        status.phase = Some(phase);
        status.next_schedule_time = settings.as_ref().and_then(|s| {
            let from = status
                .last_schedule_time
                .as_deref()
                .and_then(parse_time)
                .map_or(record.created_at, |t| t.timestamp_millis());
            next_schedule(s, from.max(now_ms()))
        });
        (phase, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_state::control::SqliteControlStore;

    const MINUTE: i64 = 60_000;
    /// 2026-01-05 00:00 UTC, a Monday.
    const T0: i64 = 1_767_571_200_000;

    fn controller(dir: &std::path::Path) -> Controller {
        let store = Arc::new(SqliteControlStore::open(dir).unwrap());
        Controller::new(
            store,
            ControlConfig::new(dir.to_path_buf(), "test".into()),
            SecretResolver::new(Default::default()).unwrap(),
            Webhooks::start(Vec::new()).unwrap(),
        )
    }

    /// A transfer on `*/5 * * * *` created at T0, with a run of it still going.
    async fn scheduled_with_a_running_run(
        c: &Controller,
        policy: &str,
    ) -> (TransferRecord, RunRecord) {
        let manifest = json!({
            "apiVersion": "ferry.dev/v1", "kind": "BatchTransfer",
            "metadata": {"name": "every-five"},
            "spec": {"source": {"type": "file", "path": "in.csv"},
                     "destination": {"type": "file", "path": "out/"},
                     "schedule": "*/5 * * * *", "concurrencyPolicy": policy}
        });
        c.create(manifest).await.unwrap();
        let inner = &c.inner;
        let mut record = inner
            .store
            .get_transfer("every-five")
            .await
            .unwrap()
            .unwrap();
        record.created_at = T0;
        let run = inner
            .new_run(&record, "schedule", Some(T0), None)
            .await
            .unwrap();
        (record, run)
    }

    async fn reasons(c: &Controller) -> Vec<String> {
        c.events("every-five", 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.reason)
            .collect()
    }

    #[tokio::test]
    async fn forbid_skips_a_due_run_while_one_is_running() {
        let dir = tempfile::tempdir().unwrap();
        let c = controller(dir.path());
        let (record, run) = scheduled_with_a_running_run(&c, "Forbid").await;
        let settings = c.inner.settings(&record).unwrap();
        let fired = c
            .inner
            .fire_schedule(
                &record,
                &settings,
                std::slice::from_ref(&run),
                T0 + 6 * MINUTE,
            )
            .await
            .unwrap();
        assert!(fired.is_none());
        assert!(reasons(&c).await.contains(&"RunSkipped".to_string()));
        assert_eq!(c.runs("every-five").await.unwrap().len(), 1);
        let status = c.get("every-five").await.unwrap().status;
        assert_eq!(
            status.last_schedule_time.as_deref(),
            Some("2026-01-05T00:05:00.000Z")
        );
    }

    #[tokio::test]
    async fn allow_runs_both_and_replace_cancels_the_old_run() {
        let dir = tempfile::tempdir().unwrap();
        let c = controller(dir.path());
        let (record, run) = scheduled_with_a_running_run(&c, "Allow").await;
        let settings = c.inner.settings(&record).unwrap();
        let fired = c
            .inner
            .fire_schedule(
                &record,
                &settings,
                std::slice::from_ref(&run),
                T0 + 5 * MINUTE,
            )
            .await
            .unwrap()
            .expect("a second run");
        assert_eq!(fired.scheduled_for, Some(T0 + 5 * MINUTE));
        let old = c.inner.store.get_run(&run.id).await.unwrap().unwrap();
        assert!(!old.finished(), "Allow leaves the first run alone");

        let dir = tempfile::tempdir().unwrap();
        let c = controller(dir.path());
        let (record, run) = scheduled_with_a_running_run(&c, "Replace").await;
        let settings = c.inner.settings(&record).unwrap();
        let fired = c
            .inner
            .fire_schedule(
                &record,
                &settings,
                std::slice::from_ref(&run),
                T0 + 5 * MINUTE,
            )
            .await
            .unwrap();
        assert!(fired.is_some());
        let old = c.inner.store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(old.phase, "Cancelled");
        assert!(reasons(&c).await.contains(&"RunCancelled".to_string()));
    }

    #[tokio::test]
    async fn downtime_gives_one_catch_up_run_for_the_latest_time() {
        let dir = tempfile::tempdir().unwrap();
        let c = controller(dir.path());
        let (record, run) = scheduled_with_a_running_run(&c, "Forbid").await;
        c.inner.store.delete_runs(&[run.id]).await.unwrap();
        let settings = c.inner.settings(&record).unwrap();
        // Down from T0 to T0+17 min: 00:05, 00:10 and 00:15 passed.
        let fired = c
            .inner
            .fire_schedule(&record, &settings, &[], T0 + 17 * MINUTE)
            .await
            .unwrap()
            .expect("one catch-up run");
        assert_eq!(fired.scheduled_for, Some(T0 + 15 * MINUTE));
        let events = c.events("every-five", 0, 100).await.unwrap();
        let missed = events
            .iter()
            .find(|e| e.reason == "MissedSchedules")
            .unwrap();
        assert_eq!(missed.data["missed"], 2);
        // Nothing more is due until 00:20.
        let record = c
            .inner
            .store
            .get_transfer("every-five")
            .await
            .unwrap()
            .unwrap();
        let again = c
            .inner
            .fire_schedule(&record, &settings, &[fired], T0 + 19 * MINUTE)
            .await
            .unwrap();
        assert!(again.is_none());
        assert_eq!(c.runs("every-five").await.unwrap().len(), 1);
    }
}
