//! One delegated attempt: submit the run's job to its engine (or re-attach to the job an
//! earlier attempt or another data plane submitted), follow it through the poller, turn
//! its counts into the run's progress, and stop it when the run is cancelled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Engine, EngineError, JobRef, JobRequest, JobState, Registered};
use crate::controller::Inner;
use crate::execute::{Outcome, Prepared, Tracker};
use crate::resource::{Execution, RunStats};
use crate::retry::ErrorClass;
use ferry_state::RunRecord;

/// How long an engine may stay unreachable while it runs our job before the attempt
/// gives up (the next attempt re-attaches to the job if it still exists).
const UNREACHABLE_FOR: Duration = Duration::from_secs(120);
/// Jobs submitted for one run before a vanished job counts as a failure.
const MAX_SUBMISSIONS: u32 = 5;

/// Stops the external job when the attempt is dropped before its job ended (cancel,
/// Replace, suspend, delete), unless the whole process is stopping: then the job goes on
/// and the next start re-attaches to it.
struct StopOnDrop {
    inner: Arc<Inner>,
    engine: Arc<dyn Engine>,
    transfer: String,
    run: String,
    job: Option<JobRef>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(job) = self.job.take() else { return };
        if self.inner.stopping() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (inner, engine) = (self.inner.clone(), self.engine.clone());
        let (transfer, run) = (
            std::mem::take(&mut self.transfer),
            std::mem::take(&mut self.run),
        );
        handle.spawn(async move {
            let name = engine.config().name.clone();
            let mut stopped = stop_and_wait(engine.as_ref(), &job).await;
            if stopped.is_ok() {
                stopped = engine.cleanup(&job).await;
            }
            let (severity, message) = match &stopped {
                Ok(()) => (
                    "Normal",
                    format!("run {run}: job {} on engine {name} stopped", job.id),
                ),
                Err(e) => (
                    "Warning",
                    format!(
                        "run {run}: job {} on engine {name} may still be running: {e}",
                        job.id
                    ),
                ),
            };
            inner
                .emit(
                    &transfer,
                    Some(&run),
                    severity,
                    "DelegatedJobStopped",
                    message,
                    json!({"engine": name, "job": job.id, "stopped": stopped.is_ok()}),
                )
                .await;
        });
    }
}

/// Asks the engine to stop `job` and waits (up to 30 s) until it says the job finished.
pub async fn stop_and_wait(engine: &dyn Engine, job: &JobRef) -> Result<(), EngineError> {
    engine.stop(job).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = engine.poll(job).await?;
        if state.finished || state.gone {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(EngineError::Refused(format!(
                "job {} did not stop within 30 s",
                job.id
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The class of a failed job's error: credentials and missing stores are not helped by
/// a retry; anything else may be.
pub fn classify(error: &str) -> ErrorClass {
    const FATAL: &[&str] = &[
        "accessdenied",
        "access denied",
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "authenticationfailed",
        "authorizationfailure",
        "forbidden",
        "status code: 403",
        "status code: 401",
        "directory not found",
        "object not found",
        "nosuchbucket",
        "containernotfound",
        "file does not exist",
    ];
    let lower = error.to_ascii_lowercase();
    if FATAL.iter().any(|p| lower.contains(p)) {
        ErrorClass::Fatal
    } else {
        ErrorClass::Retryable
    }
}

const GONE: &str =
    "is no longer known to the engine (forgotten after it ended, or the engine restarted)";

/// What an earlier attempt left at the engine.
enum Reattach {
    /// No job of the run is known.
    Nothing,
    /// A job still running, or finished with success: this attempt follows it.
    Job(JobRef),
    /// The recorded job ended otherwise, or the engine forgot it; why.
    Ended(String),
}

impl Inner {
    /// Executes `run` on `engine`, as its recorded routing decision says. Progress goes to
    /// `tracker`. `Err` when the engine could not be reached before any job of the run
    /// was submitted or found, so that the caller may fall back to executing it here.
    pub(crate) async fn delegate(
        self: &Arc<Self>,
        run: &mut RunRecord,
        engine: Arc<Registered>,
        prepared: &Prepared,
        (single_object, estimated): (bool, u64),
        tracker: Arc<Tracker>,
    ) -> Result<Outcome, EngineError> {
        let _slot = engine.slot();
        let e = engine.engine.clone();
        let name = e.config().name.clone();
        let run_timeout = e
            .config()
            .run_timeout_seconds
            .map(|s| Duration::from_secs_f64(s.clamp(1.0, 30.0 * 86_400.0)));
        let mut stats: RunStats = serde_json::from_value(run.stats.clone()).unwrap_or_default();
        let Some(mut execution) = stats.execution.take() else {
            return Ok(
                prepared.failed("a delegated run has no routing decision", ErrorClass::Fatal)
            );
        };
        let mut request = JobRequest {
            source: prepared.source.clone(),
            destination: prepared.destination.clone(),
            single_object,
            group: String::new(),
            estimated_bytes: Some(estimated),
        };

        // An earlier attempt's job (this data plane before a restart, or another one).
        let mut job = match self.reattach(&e, &execution).await {
            Ok(Reattach::Job(job)) => Some(job),
            Ok(Reattach::Ended(why)) => {
                if let Some(earlier) = &execution.job {
                    self.vanished(run, &name, &earlier.id, &why).await;
                }
                None
            }
            Ok(Reattach::Nothing) => None,
            // Nothing of this run is known to be at the engine: the caller may fall back.
            Err(err @ EngineError::Unreachable(_)) if execution.job.is_none() => return Err(err),
            Err(err) => return Ok(self.engine_failed(prepared, &name, err)),
        };
        if let Some(j) = &job {
            self.emit(
                &run.transfer,
                Some(&run.id),
                "Normal",
                "DelegatedJobReattached",
                format!(
                    "run {} re-attached to job {} on engine {name}",
                    run.id, j.id
                ),
                json!({"engine": name, "job": j.id}),
            )
            .await;
        }
        let mut guard = StopOnDrop {
            inner: self.clone(),
            engine: e.clone(),
            transfer: run.transfer.clone(),
            run: run.id.clone(),
            job: None,
        };
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let current = match job.take() {
                Some(j) => j,
                None => {
                    if execution.submissions >= MAX_SUBMISSIONS {
                        return Ok(prepared.failed(
                            &format!(
                                "engine {name}: the run's job vanished {MAX_SUBMISSIONS} times; the destination may be incomplete"
                            ),
                            ErrorClass::Retryable,
                        ));
                    }
                    let first = execution.job.is_none() && execution.submissions == 0;
                    // The group is recorded before the job exists, so that a data plane
                    // killed in between finds the job by it instead of starting another.
                    execution.submissions += 1;
                    request.group = format!("ferry/{}/{}", run.id, execution.submissions);
                    execution.group = Some(request.group.clone());
                    execution.job = None;
                    if let Err(err) = self.record(run, &execution).await {
                        return Ok(prepared.failed(&err.to_string(), ErrorClass::Retryable));
                    }
                    let submitted = match e.submit(&request).await {
                        Ok(j) => j,
                        Err(err @ EngineError::Unreachable(_)) if first => return Err(err),
                        Err(err) => return Ok(self.engine_failed(prepared, &name, err)),
                    };
                    execution.job = Some(submitted.clone());
                    if let Err(err) = self.record(run, &execution).await {
                        guard.job = Some(submitted);
                        return Ok(prepared.failed(&err.to_string(), ErrorClass::Retryable));
                    }
                    self.emit(
                        &run.transfer,
                        Some(&run.id),
                        "Normal",
                        "DelegatedJobSubmitted",
                        format!(
                            "run {} submitted to engine {name} as job {}",
                            run.id, submitted.id
                        ),
                        json!({"engine": name, "job": submitted.id, "group": submitted.group}),
                    )
                    .await;
                    submitted
                }
            };
            guard.job = Some(current.clone());
            let started = Instant::now();
            let mut updates = self.engines().poller().watch(e.clone(), current.clone());
            let ended: JobState = loop {
                if updates.changed().await.is_err() {
                    return Ok(prepared.failed("the engine poller stopped", ErrorClass::Retryable));
                }
                let observation = updates.borrow_and_update().clone();
                match observation {
                    None => continue,
                    Some(Err(EngineError::Unreachable(why))) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > UNREACHABLE_FOR {
                            // Not stopped: the job may well go on, and the next attempt
                            // re-attaches to it.
                            guard.job = None;
                            return Ok(prepared.failed(&why, ErrorClass::Retryable));
                        }
                    }
                    Some(Err(err)) => {
                        guard.job = None;
                        return Ok(self.engine_failed(prepared, &name, err));
                    }
                    Some(Ok(state)) => {
                        unreachable_since = None;
                        if state.gone || state.finished {
                            break state;
                        }
                        tracker.observed(state.bytes, state.total_bytes.max(estimated));
                        if let Some(limit) = run_timeout.filter(|l| started.elapsed() > *l) {
                            let stopped = stop_and_wait(e.as_ref(), &current).await;
                            guard.job = None;
                            self.clean(&e, &current, run).await;
                            let mut text = format!(
                                "engine {name}: job {} ran longer than runTimeoutSeconds ({} s)",
                                current.id,
                                limit.as_secs()
                            );
                            match stopped {
                                Ok(()) => text.push_str(" and was stopped"),
                                Err(err) => text.push_str(&format!("; stopping it failed: {err}")),
                            }
                            return Ok(prepared.failed(&text, ErrorClass::Retryable));
                        }
                    }
                }
            };
            guard.job = None;
            if ended.gone {
                // Never assumed a success: the job is submitted again, and the engine
                // compares the destination with the source (rclone skips what is there).
                self.vanished(run, &name, &current.id, GONE).await;
                continue;
            }
            tracker.observed(ended.bytes, ended.total_bytes.max(estimated));
            self.clean(&e, &current, run).await;
            if ended.success {
                return Ok(Outcome::Succeeded(RunStats {
                    bytes: ended.bytes,
                    objects: ended.files,
                    execution: Some(execution),
                    ..RunStats::default()
                }));
            }
            let error = ended.error.unwrap_or_else(|| "the job failed".into());
            return Ok(Outcome::Failed {
                error: crate::execute::scrub_text(
                    &format!("engine {name} job {} failed: {error}", current.id),
                    &prepared.hidden,
                ),
                class: classify(&error),
                moved: Some(RunStats {
                    bytes: ended.bytes,
                    objects: ended.files,
                    ..RunStats::default()
                }),
            });
        }
    }

    /// The job an earlier attempt left running or finished successfully, if the engine
    /// still has it. A job that failed or was stopped is not taken: this attempt submits
    /// another (the engine skips what is already at the destination).
    async fn reattach(
        &self,
        engine: &Arc<dyn Engine>,
        execution: &Execution,
    ) -> Result<Reattach, EngineError> {
        let Some(group) = &execution.group else {
            return Ok(Reattach::Nothing);
        };
        let job = match &execution.job {
            Some(job) => Some(job.clone()),
            // Killed between recording the group and recording the job's id.
            None => engine.find(group).await?,
        };
        let Some(job) = job else {
            return Ok(Reattach::Nothing);
        };
        let state = engine.poll(&job).await?;
        let why = if state.gone {
            GONE.to_string()
        } else if state.finished && !state.success {
            match state.error {
                Some(e) => format!("ended without success ({e})"),
                None => "ended without success".to_string(),
            }
        } else {
            return Ok(Reattach::Job(job));
        };
        // What the ended job left at the engine (resources, secrets) goes first.
        engine.cleanup(&job).await?;
        Ok(Reattach::Ended(why))
    }

    /// The run's job ended without success or vanished (`why`), and a new one follows.
    async fn vanished(&self, run: &RunRecord, engine: &str, job: &str, why: &str) {
        self.emit(
            &run.transfer,
            Some(&run.id),
            "Warning",
            "DelegatedJobVanished",
            format!(
                "run {}: job {job} on engine {engine} {why}; submitting a new one: the engine compares the destination with the source and copies what is missing",
                run.id
            ),
            json!({"engine": engine, "job": job}),
        )
        .await;
    }

    /// Removes what the engine made for `job`; a failure is reported, not fatal.
    async fn clean(&self, engine: &Arc<dyn Engine>, job: &JobRef, run: &RunRecord) {
        if let Err(err) = engine.cleanup(job).await {
            let name = &engine.config().name;
            self.emit(
                &run.transfer,
                Some(&run.id),
                "Warning",
                "DelegatedCleanupFailed",
                format!(
                    "run {}: engine {name} kept what job {} used: {err}",
                    run.id, job.id
                ),
                json!({"engine": name, "job": job.id}),
            )
            .await;
        }
    }

    async fn record(&self, run: &mut RunRecord, execution: &Execution) -> ferry_core::Result<()> {
        self.update_stats(run, |stats| stats.execution = Some(execution.clone()))
            .await
    }

    pub(crate) fn engine_failed(
        &self,
        prepared: &Prepared,
        name: &str,
        err: EngineError,
    ) -> Outcome {
        let class = match &err {
            EngineError::Unreachable(_) => ErrorClass::Retryable,
            EngineError::Unauthorized(_) => ErrorClass::Fatal,
            EngineError::Refused(text) => classify(text),
        };
        let text = match &err {
            EngineError::Refused(t) if !t.contains(name) => format!("engine {name}: {t}"),
            other => other.to_string(),
        };
        prepared.failed(&text, class)
    }
}
