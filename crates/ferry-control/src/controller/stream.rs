//! A StreamTransfer's run: batch after batch, each reading what arrived since the last
//! (positions move only once a batch's outputs are complete, so a batch cut short by a
//! kill is done again over the same offsets), until the run is stopped (suspend, delete
//! and shutdown abort it) or a batch fails for a reason a retry cannot fix. A passing
//! failure (broker or destination down) is retried with backoff, for ever.
//!
//! After each batch the run's status says where the stream stands: per partition the
//! committed position against the high watermark, the lag in events and in seconds (the
//! age of the oldest event waiting, by record time), and its rates over the last minute.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::DataAddress;
use ferry_engine::topics::Position;
use ferry_engine::CopyOptions;
use ferry_state::{RunRecord, TransferRecord};
use serde_json::json;

use super::Inner;
use crate::execute::{self, Outcome, Prepared, Tracker};
use crate::resource::{RunStats, StreamStatus};
use crate::retry::ErrorClass;

/// How long a stream's run waits after a batch before it looks for more.
const POLL: Duration = Duration::from_secs(1);
/// The window of the rates in the status.
const WINDOW: Duration = Duration::from_secs(60);
/// A lag that grows for this long while batches move nothing is a stall.
const STALL: Duration = Duration::from_secs(30);
/// At most this many outputs of the last batch are shown.
const SHOWN_OUTPUTS: usize = 16;

/// What a stream's run remembers between batches for its status.
struct Watch {
    /// (when, records, bytes) of the batches in the window.
    window: VecDeque<(Instant, u64, u64)>,
    started: Instant,
    /// Since when the lag has grown with nothing moving, and the lag then.
    stalled_since: Option<(Instant, i64)>,
    /// A stall was reported and nothing has moved since.
    stall_reported: bool,
    status: StreamStatus,
}

impl Watch {
    fn new() -> Self {
        let now = Instant::now();
        Watch {
            window: VecDeque::new(),
            started: now,
            stalled_since: None,
            stall_reported: false,
            status: StreamStatus::default(),
        }
    }

    /// Takes a batch's stats and the positions after it; true when the lag has grown for
    /// [`STALL`] while nothing moved (reported once until something moves again).
    fn batch(&mut self, done: &RunStats, positions: Option<Vec<Position>>) -> bool {
        let now = Instant::now();
        let moved = done.num_records > 0 || done.bytes > 0;
        self.window.push_back((now, done.num_records, done.bytes));
        while self
            .window
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > WINDOW)
        {
            self.window.pop_front();
        }
        let span = now
            .duration_since(self.started)
            .min(WINDOW)
            .as_secs_f64()
            .max(1.0);
        let (records, bytes) = self
            .window
            .iter()
            .fold((0, 0), |(r, b), (_, dr, db)| (r + dr, b + db));
        self.status.records_per_second = records as f64 / span;
        self.status.bytes_per_second = bytes as f64 / span;
        if moved {
            self.status.batches += 1;
            // A table load's output has no name of its own (the table is the destination).
            self.status.last_committed = done
                .outputs
                .iter()
                .filter(|o| !o.is_empty())
                .take(SHOWN_OUTPUTS)
                .cloned()
                .collect();
            self.stall_reported = false;
        }
        let Some(positions) = positions else {
            return false;
        };
        let lag: i64 = positions.iter().map(|p| p.lag).sum();
        self.status.held_events = done.held_events;
        let mut stalled = false;
        // Events held back in open files wait for their window to close, not for a fix.
        if moved || lag == 0 || done.held_events > 0 {
            self.stalled_since = None;
        } else {
            match self.stalled_since {
                Some((since, first)) if lag > first && now.duration_since(since) >= STALL => {
                    stalled = !self.stall_reported;
                    self.stall_reported = true;
                }
                Some(_) => {}
                None => self.stalled_since = Some((now, lag)),
            }
        }
        self.status.lag_events = lag;
        // The oldest event waiting, by record time.
        self.status.lag_seconds = positions.iter().map(|p| p.lag_seconds).fold(0.0, f64::max);
        self.status.partitions = positions;
        stalled
    }
}

impl Inner {
    pub(super) async fn stream(
        self: &Arc<Self>,
        run: &mut RunRecord,
        record: &TransferRecord,
        mut prepared: Prepared,
        opts: &CopyOptions,
        tracker: Arc<Tracker>,
    ) -> Outcome {
        let mut failures = 0u32;
        let mut watch = Watch::new();
        // When the last compacted snapshot was written (createSnapshot into a directory).
        let mut snapshot_at: Option<Instant> = None;
        // The columns the last batch wrote.
        let mut columns: Option<Vec<String>> = None;
        let outcome = loop {
            // Secrets are resolved once per run, and again after a failure (a rotated
            // credential may be its cause), not once per batch.
            if failures > 0 {
                match execute::prepare(&self.secrets, &record.manifest).await {
                    Ok(p) => prepared = p,
                    Err(outcome) => break outcome,
                }
            }
            match self
                .attempt(run, record, prepared.clone(), opts, tracker.clone())
                .await
            {
                Outcome::Succeeded(done) => {
                    if failures > 0 {
                        self.emit(
                            &run.transfer,
                            Some(&run.id),
                            "Normal",
                            "StreamRecovered",
                            format!("run {} is moving again", run.id),
                            json!({}),
                        )
                        .await;
                    }
                    failures = 0;
                    let positions = positions(&prepared, opts).await;
                    if watch.batch(&done, positions) {
                        let lag = watch.status.lag_events;
                        self.emit(
                            &run.transfer,
                            Some(&run.id),
                            "Warning",
                            "StreamStalled",
                            format!(
                                "run {}: {lag} events behind and growing for {} s while nothing moved",
                                run.id,
                                STALL.as_secs()
                            ),
                            json!({"lagEvents": lag}),
                        )
                        .await;
                    }
                    self.metrics.stream_lag(
                        &run.transfer,
                        watch
                            .status
                            .partitions
                            .iter()
                            .map(|p| (p.partition, p.lag))
                            .collect(),
                        watch.status.lag_seconds,
                    );
                    if let Err(e) = self.add_batch(run, &done, &watch.status).await {
                        tracing::warn!("run {}: {e}", run.id);
                    }
                    // Only a batch that wrote rows says what the rows look like now.
                    let written = done
                        .destination_schema
                        .as_ref()
                        .filter(|_| done.num_records > 0);
                    if let Some(now) = written.map(column_names) {
                        if let Some(before) = columns.as_ref().filter(|b| **b != now) {
                            let added: Vec<&String> =
                                now.iter().filter(|c| !before.contains(c)).collect();
                            let removed: Vec<&String> =
                                before.iter().filter(|c| !now.contains(c)).collect();
                            self.emit(
                                &run.transfer,
                                Some(&run.id),
                                "Normal",
                                "SchemaChanged",
                                format!(
                                    "run {}: the rows' columns changed (added: {added:?}, removed: {removed:?})",
                                    run.id
                                ),
                                json!({"added": added, "removed": removed}),
                            )
                            .await;
                        }
                        columns = Some(now);
                    }
                    let every = prepared.records.rolling.snapshot_interval_seconds;
                    let due = every.is_some_and(|s| {
                        snapshot_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(s))
                    });
                    if due && !watch.status.partitions.is_empty() {
                        snapshot_at = Some(Instant::now());
                        self.snapshot(run, &prepared, opts, &watch.status.partitions)
                            .await;
                    }
                    tokio::time::sleep(POLL).await;
                }
                Outcome::Failed {
                    error,
                    class: ErrorClass::Retryable,
                    ..
                } => {
                    failures = failures.saturating_add(1);
                    let delay = self
                        .config
                        .backoff
                        .delay(failures)
                        .min(Duration::from_secs(60));
                    self.emit(
                        &run.transfer,
                        Some(&run.id),
                        "Warning",
                        "StreamRetrying",
                        format!(
                            "run {}: {error}; trying again in {:.0} s",
                            run.id,
                            delay.as_secs_f64()
                        ),
                        json!({"error": error, "delaySeconds": delay.as_secs_f64(), "failures": failures}),
                    )
                    .await;
                    tokio::time::sleep(delay).await;
                }
                other => break other,
            }
        };
        self.metrics.stream_ended(&run.transfer);
        outcome
    }

    /// Writes a compacted snapshot of the topic up to the committed `positions` (each key's
    /// last value, keys whose last event is a tombstone left out) under
    /// `snapshots/<time>/` of the destination directory, as a `StreamSnapshot` event says;
    /// a failure is a warning and the stream goes on.
    async fn snapshot(
        &self,
        run: &RunRecord,
        prepared: &Prepared,
        opts: &CopyOptions,
        positions: &[Position],
    ) {
        let DataAddress::Kafka(topic) = &prepared.source else {
            return;
        };
        let mut topic = topic.clone();
        topic.snapshot = true;
        topic.end = Some(
            positions
                .iter()
                .map(|p| (p.partition, p.committed))
                .collect(),
        );
        let name = chrono::Utc::now()
            .format("snapshots/%Y%m%dT%H%M%SZ/")
            .to_string();
        let dst = prepared.destination.join(&name);
        let mut rec = prepared.records.clone();
        rec.rolling = Default::default();
        let progress: Arc<dyn ferry_engine::Progress> = Arc::new(ferry_engine::report::NoProgress);
        let done =
            ferry_engine::transfer(&DataAddress::Kafka(topic), &dst, &rec, opts, progress).await;
        let (kind, reason, message, data) = match done {
            Ok(report) if report.status == ferry_engine::report::Status::Succeeded => (
                "Normal",
                "StreamSnapshot",
                format!(
                    "run {}: a compacted snapshot of {} rows in {name}",
                    run.id, report.destination.rows
                ),
                json!({"directory": name, "rows": report.destination.rows,
                       "files": report.destination.files}),
            ),
            Ok(report) => (
                "Warning",
                "StreamSnapshotFailed",
                format!(
                    "run {}: the snapshot in {name} failed: {}",
                    run.id,
                    prepared.scrub(report.error.as_deref().unwrap_or("unknown"))
                ),
                json!({"directory": name}),
            ),
            Err(e) => (
                "Warning",
                "StreamSnapshotFailed",
                format!(
                    "run {}: the snapshot in {name} failed: {}",
                    run.id,
                    prepared.scrub(&e.to_string())
                ),
                json!({"directory": name}),
            ),
        };
        self.emit(&run.transfer, Some(&run.id), kind, reason, message, data)
            .await;
    }

    /// Adds what a stream's batch moved to its run's totals, and where it stands. Outputs
    /// are not accumulated (a stream writes without end): the last batch's are shown.
    async fn add_batch(
        &self,
        run: &mut RunRecord,
        done: &RunStats,
        status: &StreamStatus,
    ) -> ferry_core::Result<()> {
        self.update_stats(run, |stats| {
            stats.num_records += done.num_records;
            stats.bytes += done.bytes;
            stats.objects += done.objects;
            if done.num_records > 0 || done.bytes > 0 {
                stats.last_record_ms = Some(super::now_ms());
            }
            stats.records_per_second = status.records_per_second;
            stats.bytes_per_second = status.bytes_per_second;
            stats.source_schema = done.source_schema.clone().or(stats.source_schema.take());
            stats.destination_schema = done
                .destination_schema
                .clone()
                .or(stats.destination_schema.take());
            stats.stream = Some(status.clone());
        })
        .await
    }
}

/// The column names of a schema as a run's stats describe it.
fn column_names(schema: &serde_json::Value) -> Vec<String> {
    schema
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Where the stream stands in each partition; `None` (and a log line) when the broker
/// cannot say now.
async fn positions(prepared: &Prepared, opts: &CopyOptions) -> Option<Vec<Position>> {
    let DataAddress::Kafka(address) = &prepared.source else {
        return None;
    };
    let (address, dst, opts) = (address.clone(), prepared.destination.clone(), opts.clone());
    let found = tokio::task::spawn_blocking(move || {
        let state = opts.state_store()?;
        ferry_engine::topics::positions(&address, &dst, &state)
    })
    .await
    .unwrap_or_else(|e| Err(ferry_core::Error::Internal(e.to_string())));
    found
        .inspect_err(|e| tracing::warn!("the stream's positions: {e}"))
        .ok()
}
