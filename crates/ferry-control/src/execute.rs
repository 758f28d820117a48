//! One attempt of a run on the embedded data plane: resolve secrets, plan, move the data
//! with the engine, and say how it went in the control plane's terms.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::{DataAddress, Error};
use ferry_engine::manifest::Manifest;
use ferry_engine::{CopyOptions, Progress, Status};
use ferry_state::RunRecord;
use serde_json::Value;

use crate::controller::{now_ms, ControlError};
use crate::resource::{RunProgress, RunStats};
use crate::retry::{classify, ErrorClass};
use crate::secrets::SecretResolver;

/// How an attempt ended.
pub enum Outcome {
    Succeeded(RunStats),
    Failed {
        /// One line, secrets removed.
        error: String,
        class: ErrorClass,
        /// What moved before it failed, when known.
        moved: Option<RunStats>,
    },
}

/// Follows the engine's progress for status and events.
#[derive(Default)]
pub struct Tracker {
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    /// Events planned and done, once a stream's plan is known (`u64::MAX`: not a stream).
    events_total: AtomicU64,
    events_done: AtomicU64,
    started: std::sync::OnceLock<Instant>,
    last_advance: AtomicI64,
    /// A fraction done that a command's output or files tell (f64 bits; `u64::MAX`: none
    /// seen, and 0 in a new tracker means none too).
    fraction: AtomicU64,
    /// What a byte copy wrote, relative to its destination (for `?cleanup=true`).
    outputs: std::sync::Mutex<Vec<String>>,
}

impl Progress for Tracker {
    fn planned(&self, _files: u64, bytes: u64) {
        self.bytes_total.store(bytes, Ordering::Relaxed);
        let _ = self.started.set(Instant::now());
    }

    fn advanced(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.last_advance.store(now_ms(), Ordering::Relaxed);
    }

    fn events_planned(&self, events: u64) {
        self.events_total
            .store(events.saturating_add(1), Ordering::Relaxed);
        let _ = self.started.set(Instant::now());
    }

    fn events_done(&self, events: u64) {
        self.events_done.fetch_add(events, Ordering::Relaxed);
        self.last_advance.store(now_ms(), Ordering::Relaxed);
    }

    fn file_reported(&self, file: &ferry_engine::FileReport) {
        if file.error.is_none() {
            if let Ok(mut outputs) = self.outputs.lock() {
                outputs.push(file.destination_key.clone());
            }
        }
    }
}

impl Tracker {
    /// The outputs reported so far, taken out of the tracker.
    fn take_outputs(&self) -> Vec<String> {
        self.outputs
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }

    /// What an external engine says it moved so far, and of how much (its own counts
    /// replace ours).
    pub fn observed(&self, bytes_done: u64, bytes_total: u64) {
        let _ = self.started.set(Instant::now());
        self.bytes_total.store(bytes_total, Ordering::Relaxed);
        let before = self.bytes_done.swap(bytes_done, Ordering::Relaxed);
        if bytes_done > before {
            self.last_advance.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The fraction done, as a command tells it (0 to 1).
    pub fn fraction_observed(&self, fraction: f64) {
        let _ = self.started.set(Instant::now());
        let before = self.fraction_seen();
        self.fraction
            .store(fraction.to_bits().max(1), Ordering::Relaxed);
        if before.is_none_or(|b| fraction > b) {
            self.last_advance.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn fraction_seen(&self) -> Option<f64> {
        match self.fraction.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    pub fn bytes_done(&self) -> u64 {
        self.bytes_done.load(Ordering::Relaxed)
    }
}

impl Tracker {
    pub fn progress(&self) -> RunProgress {
        let total = self.bytes_total.load(Ordering::Relaxed);
        let done = self.bytes_done.load(Ordering::Relaxed).min(total.max(1));
        // Stored plus one, so that 0 means "not a stream".
        let events_total = self.events_total.load(Ordering::Relaxed).checked_sub(1);
        let events_done = events_total.map(|t| self.events_done.load(Ordering::Relaxed).min(t));
        let fraction = match (events_total, events_done) {
            (Some(0), _) => Some(1.0),
            (Some(t), Some(d)) => Some(d as f64 / t as f64),
            _ => self
                .fraction_seen()
                .or_else(|| (total > 0).then(|| done as f64 / total as f64)),
        };
        let eta_seconds = match (fraction, self.started.get()) {
            (Some(f), Some(started)) if f > 0.0 && f < 1.0 => {
                let spent = started.elapsed().as_secs_f64();
                Some(spent / f * (1.0 - f))
            }
            (Some(f), _) if f >= 1.0 => Some(0.0),
            _ => None,
        };
        RunProgress {
            fraction,
            bytes_done: done,
            bytes_total: total,
            events_done,
            events_total,
            eta_seconds,
        }
    }

    /// Bytes moved per second since the attempt planned its work.
    pub fn bytes_per_second(&self) -> f64 {
        let done = self.bytes_done.load(Ordering::Relaxed) as f64;
        match self.started.get() {
            Some(started) => done / started.elapsed().as_secs_f64().max(0.001),
            None => 0.0,
        }
    }

    /// The events done, when the run reads or writes a topic.
    pub fn events(&self) -> Option<u64> {
        (self.events_total.load(Ordering::Relaxed) > 0)
            .then(|| self.events_done.load(Ordering::Relaxed))
    }

    pub fn last_advance_ms(&self) -> Option<i64> {
        Some(self.last_advance.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }
}

impl RunStats {
    /// Takes what an attempt reported, with rates over the run's whole duration.
    pub fn merge(&mut self, done: RunStats, seconds: f64) {
        let last_record_ms = self.last_record_ms;
        let execution = self.execution.take();
        *self = done;
        self.last_record_ms = self.last_record_ms.or(last_record_ms);
        self.execution = self.execution.take().or(execution);
        self.duration_seconds = seconds;
        self.bytes_per_second = self.bytes as f64 / seconds;
        self.records_per_second = self.num_records as f64 / seconds;
    }
}

/// A run's manifest with its secrets resolved and its addresses planned.
#[derive(Clone)]
pub struct Prepared {
    pub resolved: Value,
    /// The secret values resolution put in, to scrub from anything shown.
    pub hidden: Vec<String>,
    pub source: DataAddress,
    pub destination: DataAddress,
    pub records: ferry_engine::RecordOptions,
}

impl Prepared {
    /// True when the run converts formats or transforms records.
    pub fn on_record_path(&self) -> bool {
        self.records.needed(&self.source, &self.destination)
    }

    /// `text` without this run's secrets.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.hidden)
    }

    /// `error` as an outcome, its text scrubbed of this run's secrets.
    pub fn failed(&self, error: &str, class: ErrorClass) -> Outcome {
        Outcome::Failed {
            error: scrub(error, &self.hidden),
            class,
            moved: None,
        }
    }
}

/// Resolves the manifest's secrets and plans its addresses; a failure is the attempt's
/// outcome.
pub async fn prepare(secrets: &SecretResolver, manifest: &Value) -> Result<Prepared, Outcome> {
    let (resolved, mut hidden) = resolve(secrets, manifest).await?;
    let (source, destination, records) = Manifest::from_json(resolved.clone())
        .and_then(|m| m.plan())
        .map_err(|e| failed(&e, &hidden))?;
    // Keys that come from the environment too: an engine's error may quote the store's
    // settings it was given (rclone names an on-the-fly remote by its parameters).
    for address in [&source, &destination] {
        hidden.extend(store_secrets(address));
    }
    hidden.sort_by_key(|s| std::cmp::Reverse(s.len()));
    hidden.dedup();
    Ok(Prepared {
        resolved,
        hidden,
        source,
        destination,
        records,
    })
}

/// The manifest with its secret references resolved, and the secret values it then
/// holds (longest first), to scrub from anything shown.
async fn resolve(
    secrets: &SecretResolver,
    manifest: &Value,
) -> Result<(Value, Vec<String>), Outcome> {
    let resolved = secrets
        .resolve_manifest(manifest)
        .await
        .map_err(|e| failed(&e, &[]))?;
    let mut hidden = secret_values(manifest, &resolved);
    hidden.sort_by_key(|s| std::cmp::Reverse(s.len()));
    Ok((resolved, hidden))
}

/// A `kind: Command`'s run, once: its secret references resolved, the program run here.
pub async fn command(secrets: &SecretResolver, manifest: &Value, tracker: Arc<Tracker>) -> Outcome {
    let (resolved, hidden) = match resolve(secrets, manifest).await {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    let spec: crate::pipeline::spec::CommandSpec =
        match serde_json::from_value(resolved["spec"]["command"].clone()) {
            Ok(spec) => spec,
            Err(e) => {
                return failed(
                    &Error::invalid_option("spec.command", e.to_string()),
                    &hidden,
                )
            }
        };
    crate::command::run(&spec, &hidden, tracker).await
}

/// Runs the prepared transfer once on this data plane's own engine.
pub async fn run(prepared: Prepared, opts: &CopyOptions, tracker: Arc<Tracker>) -> Outcome {
    apart(prepared.resolved, prepared.hidden, opts.clone(), tracker).await
}

/// An error as an outcome, classified, its text scrubbed of `hidden`.
pub fn failed_with(e: &Error, hidden: &[String]) -> Outcome {
    failed(e, hidden)
}

/// Runs the engine in a thread with a runtime of its own. The engine's futures hold
/// borrows across awaits that the compiler cannot prove `Send` for every lifetime, so they
/// cannot be spawned on a shared runtime; and dropping a runtime of its own stops a run at
/// once (its tasks are cancelled) when the caller gives up on it.
async fn apart(
    resolved: Value,
    hidden: Vec<String>,
    opts: CopyOptions,
    tracker: Arc<Tracker>,
) -> Outcome {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = std::thread::Builder::new()
        .name("ferry-run".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = done_tx.send(failed(&Error::Internal(format!("no runtime: {e}")), &[]));
                    return;
                }
            };
            let outcome = runtime.block_on(async move {
                tokio::select! {
                    outcome = engine(resolved, &hidden, &opts, tracker) => Some(outcome),
                    _ = stop_rx => None,
                }
            });
            runtime.shutdown_background();
            if let Some(outcome) = outcome {
                let _ = done_tx.send(outcome);
            }
        });
    if let Err(e) = started {
        return failed(&Error::Internal(format!("no thread for the run: {e}")), &[]);
    }
    // Dropped with this future, which tells the thread to stop.
    let _stop = stop_tx;
    done_rx.await.unwrap_or_else(|_| Outcome::Failed {
        error: "the run was stopped".into(),
        class: ErrorClass::Retryable,
        moved: None,
    })
}

async fn engine(
    resolved: Value,
    hidden: &[String],
    opts: &CopyOptions,
    tracker: Arc<Tracker>,
) -> Outcome {
    let planned = Manifest::from_json(resolved).and_then(|m| Ok((m.plan()?, m.archive()?)));
    let ((src, dst, rec), archive) = match planned {
        Ok(p) => p,
        Err(e) => return failed(&e, hidden),
    };
    let with_archive = CopyOptions {
        archive,
        ..opts.clone()
    };
    let opts = &with_archive;
    let progress: Arc<dyn Progress> = tracker.clone();
    if archive.is_none() && rec.needed(&src, &dst) {
        match ferry_engine::transfer(&src, &dst, &rec, opts, progress).await {
            Ok(report) => {
                let stats = RunStats {
                    num_records: report.destination.rows,
                    bytes: report.destination.bytes,
                    objects: report.objects,
                    outputs: report
                        .outputs
                        .iter()
                        .filter(|o| !o.skipped && o.error.is_none())
                        .map(|o| o.key.clone())
                        .collect(),
                    source_schema: serde_json::to_value(&report.source.schema).ok(),
                    destination_schema: serde_json::to_value(&report.destination.schema).ok(),
                    held_events: report.held,
                    ..RunStats::default()
                };
                match report.status {
                    Status::Succeeded => succeeded(stats, (&src, &dst, &rec, opts)),
                    Status::Failed => report_failed(report.error, hidden, stats),
                }
            }
            Err(e) => failed(&e, hidden),
        }
    } else {
        match ferry_engine::copy(&src, &dst, opts, progress).await {
            Ok(report) => {
                let stats = RunStats {
                    // A topic's export or import moves events: each is a record.
                    num_records: tracker.events().unwrap_or_default(),
                    bytes: report.bytes,
                    objects: report.objects,
                    outputs: tracker.take_outputs(),
                    ..RunStats::default()
                };
                match report.status {
                    Status::Succeeded => succeeded(stats, (&src, &dst, &rec, opts)),
                    Status::Failed => report_failed(report.error, hidden, stats),
                }
            }
            Err(e) => failed(&e, hidden),
        }
    }
}

/// A finished run's checkpoint is no use to anyone: the next run of the transfer has a
/// run key of its own.
fn succeeded(
    stats: RunStats,
    (src, dst, rec, opts): (
        &DataAddress,
        &DataAddress,
        &ferry_engine::RecordOptions,
        &CopyOptions,
    ),
) -> Outcome {
    if let Err(e) = ferry_engine::forget_checkpoint(src, dst, rec, opts) {
        tracing::warn!("the checkpoint of a finished run stays: {e}");
    }
    Outcome::Succeeded(stats)
}

fn failed(e: &Error, hidden: &[String]) -> Outcome {
    Outcome::Failed {
        error: scrub(&e.to_string(), hidden),
        class: classify(e),
        moved: None,
    }
}

/// Some files failed while others moved: a passing problem as far as we can tell, and
/// the next attempt continues from the checkpoint.
fn report_failed(error: Option<String>, hidden: &[String], moved: RunStats) -> Outcome {
    let error = error.unwrap_or_else(|| "some files failed".into());
    Outcome::Failed {
        error: scrub(&error, hidden),
        class: ErrorClass::Retryable,
        moved: Some(moved),
    }
}

/// The secret values an object store address resolves to (its options over the
/// environment): keys and tokens of 8 characters or more, which cannot be mistaken for
/// ordinary words in a message.
fn store_secrets(address: &DataAddress) -> Vec<String> {
    if !matches!(
        address,
        DataAddress::S3 { .. } | DataAddress::Azure { .. } | DataAddress::Gcs { .. }
    ) {
        return Vec::new();
    }
    let Ok(settings) = ferry_connectors::object::resolved_settings(address) else {
        return Vec::new();
    };
    [
        "secret_access_key",
        "token",
        "access_key",
        "sas_key",
        "service_account_key",
    ]
    .iter()
    .filter_map(|k| settings.get(k))
    .filter(|v| v.len() >= 8)
    .cloned()
    .collect()
}

/// The strings secret resolution put into the manifest: anything in `resolved` that is
/// not, at the same place, in `original`.
fn secret_values(original: &Value, resolved: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(original: Option<&Value>, resolved: &Value, out: &mut Vec<String>) {
        match resolved {
            Value::String(s)
                if original.and_then(Value::as_str) != Some(s.as_str()) && s.len() >= 3 =>
            {
                out.push(s.clone());
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(original.and_then(|o| o.get(i)), item, out);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    walk(original.and_then(|o| o.get(k)), v, out);
                }
            }
            _ => {}
        }
    }
    walk(Some(original), resolved, &mut out);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `text` on one line, with the secret values in `hidden` masked.
pub fn scrub_text(text: &str, hidden: &[String]) -> String {
    scrub(text, hidden)
}

fn scrub(text: &str, hidden: &[String]) -> String {
    let mut text = ferry_core::error::one_line(text);
    for secret in hidden {
        text = text.replace(secret.as_str(), ferry_core::redact::MASK);
    }
    text
}

/// Removes what `runs` wrote at the transfer's destination; returns the removed keys.
pub async fn cleanup(
    secrets: &SecretResolver,
    manifest: &Value,
    runs: &[RunRecord],
    opts: &CopyOptions,
) -> Result<Vec<String>, ControlError> {
    let resolved = secrets.resolve_manifest(manifest).await?;
    let (src, dst, _) = Manifest::from_json(resolved)?.plan()?;
    if let DataAddress::Table(table) = &dst {
        return Err(ControlError::Conflict(format!(
            "cleanup of a table destination is not supported ({}): delete without cleanup and drop or truncate the table yourself",
            table
        )));
    }
    let sink = ferry_connectors::open_sink(&dst)?;
    let mut keys: Vec<String> = runs
        .iter()
        .filter_map(|r| serde_json::from_value::<RunStats>(r.stats.clone()).ok())
        .flat_map(|s| s.outputs)
        .collect();
    if manifest["kind"] == "StreamTransfer" {
        // A stream's run keeps only its last batch's outputs: what it wrote is found under
        // its directory by the names topic runs give their files.
        if let Ok(listing) = ferry_connectors::open_source(&dst)?.list().await {
            keys.extend(
                listing
                    .entries
                    .into_iter()
                    .map(|e| e.key)
                    .filter(|k| ferry_engine::topics::is_output_name(k)),
            );
        }
        // Its positions go too: the same stream created again starts over.
        if let DataAddress::Kafka(topic) = &src {
            let id = ferry_engine::topics::offsets_id(topic, &dst);
            let opts = opts.clone();
            tokio::task::spawn_blocking(move || opts.state_store()?.forget_run(&id))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
        }
    }
    keys.sort();
    keys.dedup();
    let mut removed = Vec::new();
    for key in keys {
        if sink.delete(&key).await? {
            removed.push(key);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_from_the_address_are_hidden_and_short_words_are_not() {
        let s3 = DataAddress::parse(
            "s3://lake/in/?secret_access_key=wJalrXUtnFEMI-K7MDENG&access_key_id=AKIDEXAMPLE",
        )
        .unwrap();
        let hidden = store_secrets(&s3);
        assert!(
            hidden.contains(&"wJalrXUtnFEMI-K7MDENG".to_string()),
            "{hidden:?}"
        );
        // The key id is not a secret; rclone's error naming the remote keeps it.
        assert!(!hidden.contains(&"AKIDEXAMPLE".to_string()), "{hidden:?}");
        let shown = scrub_text(
            "Failed to create file system for \":s3,secret_access_key=wJalrXUtnFEMI-K7MDENG:lake\"",
            &hidden,
        );
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        let short = DataAddress::parse("s3://lake/in/?secret_access_key=test").unwrap();
        assert!(store_secrets(&short).is_empty());
        assert!(store_secrets(&DataAddress::parse("/data/in/").unwrap()).is_empty());
    }
}
