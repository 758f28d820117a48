//! The pipeline loop: fires schedules, and advances every unfinished pipeline run one step
//! at a time, each step one compare-and-swap write of the run's document.
//!
//! Runs are claimed with a lease like transfer runs, so of several control planes sharing
//! a store one advances each run, and another takes it over when the lease ends. Every
//! attempt of a task is a run of a transfer with an id made from the pipeline run, the
//! task and the attempt: a control plane killed between creating that run and recording it
//! finds it again instead of starting a second one, and a transfer interrupted mid-way
//! resumes from its checkpoint like any run. Finished tasks are never run again.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::Result;
use ferry_engine::manifest::API_VERSION;
use ferry_state::{DocumentRecord, RunRecord, TransferRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::conditions;
use super::run::{self as r, Next, PipelineRun, TaskRun};
use super::spec::{PipelineSpec, TaskKind, TaskSpec};
use crate::controller::{now_ms, Inner};
use crate::resource::{validate, TransferManifest};
use crate::schedule::Schedule;

pub const PIPELINE: &str = "pipeline";
pub const PIPELINE_RUN: &str = "pipeline-run";
/// Labels on the transfers a pipeline run makes for its tasks.
pub const PIPELINE_LABEL: &str = "ferry.dev/pipeline";
pub const RUN_LABEL: &str = "ferry.dev/pipeline-run";
pub const TASK_LABEL: &str = "ferry.dev/task";
/// Finished runs kept per pipeline (with the transfers made for them).
pub const HISTORY: usize = 20;
/// Tasks running at once in one pipeline run, unless `maxParallel` says otherwise.
pub const DEFAULT_PARALLEL: usize = 4;
/// How often a `waitFor` is polled, unless it says.
const DEFAULT_POLL_SECONDS: u64 = 10;

/// A pipeline as stored: its manifest and what the loop keeps about it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineDoc {
    pub manifest: Value,
    pub uid: String,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The last schedule time a run was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_ms: Option<i64>,
}

/// A stored resource's document: a manifest with a generation.
pub(crate) trait Versioned: Serialize + serde::de::DeserializeOwned + Default {
    /// A first version, made at `now`.
    fn first(manifest: Value, now: i64) -> Self;
    fn manifest(&self) -> &Value;
    /// The manifest replaced at `now`, in a new generation.
    fn replace(&mut self, manifest: Value, now: i64);
}

/// Stores `manifest` as document `kind/name`: a first version, or the stored one with its
/// manifest replaced (a new generation only when it changed), compare-and-swap against
/// concurrent writers. The document and whether it was created.
pub(crate) async fn put_versioned<D: Versioned>(
    inner: &Inner,
    kind: &str,
    name: &str,
    manifest: &Value,
) -> Result<(D, bool)> {
    loop {
        let now = now_ms();
        let existing = inner.store.get_document(kind, name).await?;
        let (doc, expected) = match &existing {
            None => (D::first(manifest.clone(), now), None),
            Some(record) => {
                let mut doc: D =
                    serde_json::from_value(record.document.clone()).unwrap_or_default();
                if doc.manifest() != manifest {
                    doc.replace(manifest.clone(), now);
                }
                (doc, Some(record.version))
            }
        };
        let record = DocumentRecord::new(kind, name, json!(doc), now);
        if inner.store.put_document(&record, expected).await?.is_some() {
            return Ok((doc, existing.is_none()));
        }
    }
}

impl Versioned for PipelineDoc {
    fn first(manifest: Value, now: i64) -> Self {
        PipelineDoc {
            manifest,
            uid: format!("{:016x}", rand::random::<u64>()),
            generation: 1,
            created_at: now,
            updated_at: now,
            last_schedule_ms: None,
        }
    }

    fn manifest(&self) -> &Value {
        &self.manifest
    }

    fn replace(&mut self, manifest: Value, now: i64) {
        self.manifest = manifest;
        self.generation += 1;
        self.updated_at = now;
    }
}

impl PipelineDoc {
    pub fn spec(&self) -> Option<PipelineSpec> {
        serde_json::from_value(self.manifest["spec"].clone()).ok()
    }

    pub fn name(&self) -> &str {
        self.manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
    }
}

/// The key a pipeline's events are kept under.
pub fn events_key(pipeline: &str) -> String {
    format!("pipeline/{pipeline}")
}

/// One pass: schedules, then every unfinished run.
pub(crate) async fn tick(inner: &Arc<Inner>) -> Result<()> {
    let now = now_ms();
    for record in inner.store.list_documents(PIPELINE, None, false).await? {
        let Ok(doc) = serde_json::from_value::<PipelineDoc>(record.document.clone()) else {
            continue;
        };
        let Some(spec) = doc.spec() else {
            continue;
        };
        super::triggers::poll(inner, &doc, &spec).await;
        if let Err(e) = fire_schedule(inner, &record, doc, &spec, now).await {
            tracing::warn!("pipeline schedule: {e}");
        }
    }
    for record in inner.store.list_documents(PIPELINE_RUN, None, true).await? {
        if inner.stopping() {
            break;
        }
        let name = record.name.clone();
        if let Err(e) = advance(inner, record).await {
            tracing::warn!("pipeline run {name}: {e}");
        }
    }
    Ok(())
}

async fn fire_schedule(
    inner: &Arc<Inner>,
    record: &DocumentRecord,
    mut doc: PipelineDoc,
    spec: &PipelineSpec,
    now: i64,
) -> Result<()> {
    let Some(expr) = spec.schedule.as_deref().filter(|_| !spec.suspend) else {
        return Ok(());
    };
    let Ok(schedule) = Schedule::parse(expr, spec.time_zone.as_deref()) else {
        return Ok(());
    };
    let last = doc.last_schedule_ms.unwrap_or(doc.created_at);
    let Some(due) = schedule.due(ms_time(last), ms_time(now)) else {
        return Ok(());
    };
    let at = due.at.timestamp_millis();
    doc.last_schedule_ms = Some(at);
    let mut next = record.clone();
    next.document = serde_json::to_value(&doc).unwrap_or_default();
    next.updated_at = now;
    // Of several control planes, the one whose write lands makes the run.
    if inner
        .store
        .put_document(&next, Some(record.version))
        .await?
        .is_none()
    {
        return Ok(());
    }
    let params = BTreeMap::from([(
        "trigger.scheduledTime".to_string(),
        crate::resource::time_text(at),
    )]);
    create_run(inner, &doc, spec, "schedule", params, None).await?;
    Ok(())
}

fn ms_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Makes a run of the pipeline with `given` parameters over the declared defaults.
pub(crate) async fn create_run(
    inner: &Arc<Inner>,
    doc: &PipelineDoc,
    spec: &PipelineSpec,
    trigger: &str,
    given: BTreeMap<String, String>,
    id: Option<String>,
) -> Result<PipelineRun> {
    let name = doc.name().to_string();
    let now = now_ms();
    let id = id.unwrap_or_else(|| {
        format!(
            "{}-{:x}{:04x}",
            name.chars().take(40).collect::<String>(),
            now,
            rand::random::<u16>()
        )
    });
    let mut params: BTreeMap<String, String> = spec
        .params
        .iter()
        .filter_map(|(k, p)| p.default.clone().map(|d| (k.clone(), d)))
        .collect();
    params.extend(given);
    // Registered templates are expanded now: the run keeps the versions it started with.
    let (spec, expanded) = match expand_templates(inner, spec).await {
        Ok(spec) => (spec, None),
        Err(e) => (spec.clone(), Some(e)),
    };
    let spec = &spec;
    let mut run = PipelineRun {
        id: id.clone(),
        pipeline: name.clone(),
        pipeline_uid: doc.uid.clone(),
        phase: r::PENDING.into(),
        trigger: trigger.into(),
        params,
        spec: serde_json::to_value(spec).unwrap_or_default(),
        tasks: spec
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TaskRun {
                        phase: r::PENDING.into(),
                        ..TaskRun::default()
                    },
                )
            })
            .collect(),
        created_at: now,
        ..PipelineRun::default()
    };
    if let Some(e) = &expanded {
        // A template gone or changed since the pipeline was applied: nothing can start.
        run.phase = r::FAILED.into();
        run.error = Some(e.clone());
        run.finished_at = Some(now);
        for task in run.tasks.values_mut() {
            task.phase = r::CANCELLED.into();
        }
    }
    let mut record = DocumentRecord::new(PIPELINE_RUN, &id, json!(run), now);
    record.parent = Some(name.clone());
    record.active = expanded.is_none();
    if inner.store.put_document(&record, None).await?.is_none() {
        return Err(ferry_core::Error::Internal(format!(
            "pipeline run {id} exists already"
        )));
    }
    inner
        .emit(
            &events_key(&name),
            Some(&id),
            "Normal",
            "PipelineRunCreated",
            format!("run {id} created ({trigger})"),
            json!({"trigger": trigger}),
        )
        .await;
    if let Some(e) = expanded {
        inner
            .emit(
                &events_key(&name),
                Some(&id),
                "Warning",
                "PipelineFailed",
                format!("run {id} failed: {e}"),
                json!({"error": e}),
            )
            .await;
    }
    inner.pipeline_wake.notify_one();
    Ok(run)
}

/// `spec` with each task using a registered template replaced by what it stands for.
async fn expand_templates(
    inner: &Arc<Inner>,
    spec: &PipelineSpec,
) -> std::result::Result<PipelineSpec, String> {
    let uses_registered = |t: &TaskSpec| {
        t.template
            .as_ref()
            .is_some_and(|u| !super::templates::builtin(&u.name))
    };
    if !spec.tasks.iter().any(uses_registered) {
        return Ok(spec.clone());
    }
    let templates = super::template_api::registered(inner)
        .await
        .map_err(|e| e.to_string())?;
    let mut expanded = spec.clone();
    for task in expanded.tasks.iter_mut().filter(|t| uses_registered(t)) {
        let name = &task.template.as_ref().expect("checked").name;
        let template = templates
            .get(name)
            .ok_or_else(|| format!("task {}: template '{name}' not found", task.name))?;
        *task = super::templates::expand_user(task, template)
            .map_err(|e| format!("task {}: {e}", task.name))?;
    }
    Ok(expanded)
}

/// An event to write once the step that caused it is stored.
struct Said {
    severity: &'static str,
    reason: &'static str,
    message: String,
    data: Value,
}

fn said(severity: &'static str, reason: &'static str, message: String, data: Value) -> Said {
    Said {
        severity,
        reason,
        message,
        data,
    }
}

/// One step of a run: whatever can move now moves, then the run is written back.
pub(crate) async fn advance(inner: &Arc<Inner>, record: DocumentRecord) -> Result<()> {
    let Ok(mut run) = serde_json::from_value::<PipelineRun>(record.document.clone()) else {
        return Ok(());
    };
    let now = now_ms();
    let me = &inner.config.instance;
    if run.owner.as_deref().is_some_and(|o| o != me) && run.lease_until.is_some_and(|t| t > now) {
        return Ok(());
    }
    let before = run.clone();
    run.owner = Some(me.clone());
    run.lease_until = Some(now + inner.config.lease.as_millis() as i64);
    let Some(spec) = run.spec() else {
        return Ok(());
    };
    let mut events = Vec::new();
    let mut starts = Vec::new();
    if run.phase == r::PENDING {
        run.phase = r::RUNNING.into();
        run.started_at = Some(now);
        events.push(said(
            "Normal",
            "PipelineStarted",
            format!("run {} started ({})", run.id, run.trigger),
            json!({"trigger": run.trigger}),
        ));
    }
    let parallel = spec.max_parallel.unwrap_or(DEFAULT_PARALLEL);
    // The runs of running tasks, read together.
    let mut fetched: BTreeMap<String, Option<RunRecord>> = futures::future::join_all(
        run.tasks
            .values()
            .filter(|t| t.phase == r::RUNNING)
            .filter_map(|t| {
                let id = t.run.clone()?;
                Some(async move { (inner.store.get_run(&id).await, id) })
            }),
    )
    .await
    .into_iter()
    .filter_map(|(found, id)| Some((id, found.ok()?)))
    .collect();
    for task in &spec.tasks {
        let failing = r::failing(&spec, &run.tasks).map(str::to_string);
        let busy = run.tasks.values().filter(|t| t.busy()).count();
        let mut state = run.tasks.get(&task.name).cloned().unwrap_or_default();
        let found = state.run.as_ref().and_then(|id| fetched.remove(id));
        step_task(
            inner,
            &run,
            task,
            &mut state,
            (failing.as_deref(), busy < parallel, now),
            found,
            (&mut events, &mut starts),
        )
        .await;
        run.tasks.insert(task.name.clone(), state);
    }
    // What the attempts decided on run, planned together; they are made once the
    // decision is stored (a pass that stops in between leaves them to the next one).
    let (spec_ref, run_ref) = (&spec, &run);
    let planned = futures::future::join_all(starts.iter().map(|name| async move {
        let task = spec_ref
            .tasks
            .iter()
            .find(|t| &t.name == name)
            .expect("a task of the run");
        (task, task_plan(inner, run_ref, task).await)
    }))
    .await;
    let mut to_make = Vec::new();
    for (task, result) in planned {
        let state = run.tasks.get_mut(&task.name).expect("a task of the run");
        match result {
            Ok(plan) => {
                let id = state.run.clone().unwrap_or_default();
                let transfer = plan.name().to_string();
                state.transfer = Some(transfer.clone());
                events.push(said(
                    "Normal",
                    "TaskStarted",
                    format!(
                        "task {} started (attempt {}): run {id} of transfer {transfer}",
                        task.name, state.attempt
                    ),
                    json!({"task": task.name, "attempt": state.attempt, "transfer": transfer, "run": id}),
                ));
                to_make.push((plan, id));
            }
            // Nothing to retry: the task cannot be made into a run.
            Err(e) => finish_failed(task, state, e, now, &mut events),
        }
    }
    if run.tasks.values().all(TaskRun::finished) {
        let (phase, error) = r::outcome(&run.tasks);
        run.phase = phase.into();
        run.error = error.clone();
        run.finished_at = Some(now);
        run.owner = None;
        run.lease_until = None;
        let seconds = (now - run.started_at.unwrap_or(now)) as f64 / 1000.0;
        events.push(match error {
            None => said(
                "Normal",
                "PipelineSucceeded",
                format!("run {} succeeded in {seconds:.1} s", run.id),
                json!({"durationSeconds": seconds}),
            ),
            Some(e) => said(
                "Warning",
                "PipelineFailed",
                format!("run {} failed: {e}", run.id),
                json!({"durationSeconds": seconds, "error": e}),
            ),
        });
    }
    // Nothing moved and the claim is fresh: no write.
    let changed = {
        let mut a = run.clone();
        let mut b = before.clone();
        a.lease_until = None;
        b.lease_until = None;
        a != b
            || !events.is_empty()
            || before
                .lease_until
                .is_none_or(|t| t - now < inner.config.lease.as_millis() as i64 / 2)
    };
    if !changed {
        return Ok(());
    }
    let mut next = record.clone();
    next.document = json!(run);
    next.active = !run.finished();
    next.updated_at = now;
    if inner
        .store
        .put_document(&next, Some(record.version))
        .await?
        .is_none()
    {
        // Another writer came first; the next pass starts from what it wrote.
        return Ok(());
    }
    if !to_make.is_empty() {
        ferry_engine::failpoint::attempts_decided().await;
    }
    notify(inner, &spec, &run, &events);
    // The events and the attempts' transfers and runs are written together.
    let key = events_key(&run.pipeline);
    let said: Vec<_> = events
        .into_iter()
        .map(|e| {
            (
                Some(run.id.clone()),
                e.severity,
                e.reason,
                e.message,
                e.data,
            )
        })
        .collect();
    let making = futures::future::join_all(to_make.into_iter().map(|(plan, id)| async move {
        if let Err(e) = make(inner, plan, &id).await {
            // The next pass finds the run missing and tries again, or fails the attempt.
            tracing::warn!("pipeline run: making {id}: {e}");
            inner.pipeline_wake.notify_one();
        }
    }));
    futures::join!(inner.emit_all(&key, said), making);
    if run.finished() {
        prune(inner, &run.pipeline).await?;
    }
    Ok(())
}

/// Sends what the pipeline's `notify` rules ask for. Handled failures notify nobody.
fn notify(inner: &Arc<Inner>, spec: &PipelineSpec, run: &PipelineRun, events: &[Said]) {
    let Some(notifier) = inner.notifier.get() else {
        return;
    };
    for e in events {
        if e.data["handled"].as_bool() == Some(true) {
            continue;
        }
        for rule in &spec.notify {
            let wanted = rule.on.iter().any(|r| r == e.reason)
                && rule.severity.as_deref().is_none_or(|s| s == e.severity);
            if !wanted {
                continue;
            }
            notifier.send(
                &rule.channel,
                crate::notify::Note {
                    pipeline: run.pipeline.clone(),
                    run: run.id.clone(),
                    task: e.data["task"].as_str().map(str::to_string),
                    reason: e.reason.to_string(),
                    severity: e.severity.to_string(),
                    message: e.message.clone(),
                    error: e.data["error"].as_str().map(str::to_string),
                    link: notifier.link(&run.pipeline, &run.id),
                },
            );
        }
    }
}

/// Moves one task as far as it can go now.
async fn step_task(
    inner: &Arc<Inner>,
    run: &PipelineRun,
    task: &TaskSpec,
    state: &mut TaskRun,
    (failing, free, now): (Option<&str>, bool, i64),
    fetched: Option<Option<RunRecord>>,
    (events, starts): (&mut Vec<Said>, &mut Vec<String>),
) {
    let name = &task.name;
    if state.phase == r::PENDING {
        match r::next(task, &run.tasks, failing) {
            Next::Wait => return,
            Next::Skip(why) => {
                state.phase = r::SKIPPED.into();
                state.finished_at = Some(now);
                state.error = Some(why.clone());
                events.push(said(
                    "Normal",
                    "TaskSkipped",
                    format!("task {name} skipped: {why}"),
                    json!({"task": name}),
                ));
                return;
            }
            Next::Start if task.wait_for.is_some() => {
                state.started_at = Some(now);
                state.phase = r::WAITING.into();
                state.waiting_since = Some(now);
                state.not_before = Some(now);
            }
            // No free slot: it stays pending until one frees.
            Next::Start if !free => return,
            Next::Start => {
                state.started_at = Some(now);
                plan_attempt(&run.id, task, state, now, starts);
                return;
            }
        }
    }
    if state.phase == r::WAITING && state.not_before.is_none_or(|t| t <= now) {
        let condition = task
            .wait_for
            .as_ref()
            .expect("waiting tasks have a condition");
        let (holds, seen) = conditions::evaluate(condition, &run.params).await;
        let poll = condition.poll_seconds.unwrap_or(DEFAULT_POLL_SECONDS) as i64 * 1000;
        let waited = now - state.waiting_since.unwrap_or(now);
        state.condition = Some(seen.clone());
        if holds {
            if free {
                events.push(said(
                    "Normal",
                    "ConditionMet",
                    format!("task {name}: waitFor holds: {seen}"),
                    json!({"task": name, "seen": seen}),
                ));
                plan_attempt(&run.id, task, state, now, starts);
            } else {
                state.not_before = Some(now);
            }
        } else if let Some(limit) = condition
            .timeout_seconds
            .filter(|l| waited >= *l as i64 * 1000)
        {
            let error = format!("waitFor did not hold within {limit} s; last saw: {seen}");
            events.push(said(
                "Warning",
                "ConditionTimedOut",
                format!("task {name}: {error}"),
                json!({"task": name, "seen": seen}),
            ));
            finish_failed(task, state, error, now, events);
        } else {
            state.not_before = Some(now + poll);
        }
        return;
    }
    if state.phase == r::RETRYING && state.not_before.is_none_or(|t| t <= now) && free {
        plan_attempt(&run.id, task, state, now, starts);
        return;
    }
    if state.phase == r::RUNNING {
        let Some(id) = state.run.clone() else {
            return;
        };
        let found = match fetched {
            Some(found) => found,
            None => match inner.store.get_run(&id).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!("task {name}: {e}");
                    return;
                }
            },
        };
        let Some(transfer_run) = found else {
            // Recorded but not made yet (the pass that decided it stopped, or its making
            // failed), or pruned: make it.
            match make_attempt(inner, run, task, state).await {
                Ok(transfer) => events.push(said(
                    "Normal",
                    "TaskStarted",
                    format!(
                        "task {name} started (attempt {}, made by a later pass): run {id} of transfer {transfer}",
                        state.attempt
                    ),
                    json!({"task": name, "attempt": state.attempt, "transfer": transfer, "run": id}),
                )),
                Err((e, false)) => finish_failed(task, state, e, now, events),
                Err((e, true)) => attempt_failed(task, state, e, now, events),
            }
            return;
        };
        if !transfer_run.finished() {
            let limit = task.timeout_seconds.map(|s| s as i64 * 1000);
            let started = state.attempt_started_at.unwrap_or(now);
            if let Some(limit) = limit.filter(|l| now - started > *l) {
                let why = format!("the task timed out after {} s", limit / 1000);
                let _ = inner.finish_cancelled(&transfer_run, &why).await;
                attempt_failed(task, state, why, now, events);
            }
            return;
        }
        state.stats = Some(kept_stats(&transfer_run));
        if transfer_run.phase != r::SUCCEEDED {
            let error = transfer_run
                .error
                .clone()
                .unwrap_or_else(|| format!("run {id} ended {}", transfer_run.phase));
            attempt_failed(task, state, error, now, events);
            return;
        }
        match &task.check {
            None => succeed(task, state, now, events),
            Some(check) => {
                state.phase = r::CHECKING.into();
                let (holds, seen) = conditions::evaluate(check, &run.params).await;
                state.condition = Some(seen.clone());
                if holds {
                    succeed(task, state, now, events);
                } else {
                    events.push(said(
                        "Warning",
                        "CheckFailed",
                        format!("task {name}: check failed: {seen}"),
                        json!({"task": name, "seen": seen}),
                    ));
                    attempt_failed(task, state, format!("check failed: {seen}"), now, events);
                }
            }
        }
    }
}

fn succeed(task: &TaskSpec, state: &mut TaskRun, now: i64, events: &mut Vec<Said>) {
    state.phase = r::SUCCEEDED.into();
    state.finished_at = Some(now);
    state.error = None;
    let stats = state.stats.clone().unwrap_or_default();
    let what = match stats["command"]["exitCode"].as_i64() {
        Some(code) => format!("exit code {code}"),
        None => format!(
            "{} records, {} bytes",
            stats["numRecords"].as_u64().unwrap_or(0),
            stats["bytes"].as_u64().unwrap_or(0)
        ),
    };
    events.push(said(
        "Normal",
        "TaskSucceeded",
        format!(
            "task {} succeeded (attempt {}): {what}",
            task.name, state.attempt
        ),
        json!({"task": task.name, "attempt": state.attempt, "stats": stats}),
    ));
}

/// An attempt failed: the task retries while it may, else fails.
fn attempt_failed(
    task: &TaskSpec,
    state: &mut TaskRun,
    error: String,
    now: i64,
    events: &mut Vec<Said>,
) {
    let retries = task.retries.as_ref().map_or(0, |r| r.count);
    if state.attempt <= retries {
        let base = task
            .retries
            .as_ref()
            .and_then(|r| r.backoff_seconds)
            .unwrap_or(10);
        let delay = r::backoff_ms(base, state.attempt);
        state.phase = r::RETRYING.into();
        state.not_before = Some(now + delay);
        state.error = Some(error.clone());
        events.push(said(
            "Warning",
            "TaskRetrying",
            format!(
                "task {} attempt {} failed; retrying in {} s (retry {} of {retries}): {error}",
                task.name,
                state.attempt,
                delay / 1000,
                state.attempt
            ),
            json!({"task": task.name, "attempt": state.attempt, "error": error}),
        ));
        return;
    }
    finish_failed(task, state, error, now, events);
}

fn finish_failed(
    task: &TaskSpec,
    state: &mut TaskRun,
    error: String,
    now: i64,
    events: &mut Vec<Said>,
) {
    let handled = task.on_failure == super::spec::OnFailure::Handled;
    state.phase = r::FAILED.into();
    state.finished_at = Some(now);
    state.error = Some(error.clone());
    state.handled = handled;
    events.push(said(
        if handled { "Normal" } else { "Warning" },
        "TaskFailed",
        format!(
            "task {} failed after {} attempts{}: {error}",
            task.name,
            state.attempt,
            if handled { " (handled)" } else { "" }
        ),
        json!({"task": task.name, "attempts": state.attempt, "error": error, "handled": handled}),
    ));
}

/// Starts the next attempt: the transfer it runs as, and that transfer's run.
fn plan_attempt(
    run: &str,
    task: &TaskSpec,
    state: &mut TaskRun,
    now: i64,
    starts: &mut Vec<String>,
) {
    state.attempt += 1;
    state.phase = r::RUNNING.into();
    state.attempt_started_at = Some(now);
    state.not_before = None;
    state.run = Some(format!(
        "{}-a{}",
        r::task_transfer_name(run, &task.name),
        state.attempt
    ));
    starts.push(task.name.clone());
}

/// What an attempt runs.
enum Plan {
    /// A stored transfer.
    Stored(Box<TransferRecord>),
    /// A transfer made for the task (unless an earlier pass made it).
    Make(Box<TransferManifest>),
}

impl Plan {
    fn name(&self) -> &str {
        match self {
            Plan::Stored(record) => &record.name,
            Plan::Make(manifest) => &manifest.name,
        }
    }
}

/// Makes the transfer and the run of a planned attempt; the error says whether another
/// attempt may do better.
async fn make_attempt(
    inner: &Arc<Inner>,
    run: &PipelineRun,
    task: &TaskSpec,
    state: &TaskRun,
) -> std::result::Result<String, (String, bool)> {
    let plan = task_plan(inner, run, task).await.map_err(|e| (e, false))?;
    let id = state.run.clone().unwrap_or_default();
    let name = plan.name().to_string();
    make(inner, plan, &id).await.map_err(|e| (e, true))?;
    Ok(name)
}

/// The transfer a task's attempts run: the stored one it names, or one to make for this
/// pipeline run from its inline spec, template or command. Reads, never writes.
async fn task_plan(
    inner: &Arc<Inner>,
    run: &PipelineRun,
    task: &TaskSpec,
) -> std::result::Result<Plan, String> {
    let (kind, spec) = match task.kind() {
        Some(TaskKind::TransferRef) => {
            let name = r::substitute(
                &Value::String(task.transfer_ref.clone().unwrap_or_default()),
                &run.params,
            );
            let name = name.as_str().unwrap_or_default().to_string();
            return match inner.store.get_transfer(&name).await {
                Ok(Some(record)) => Ok(Plan::Stored(Box::new(record))),
                Ok(None) => Err(format!("transferRef: no transfer named {name}")),
                Err(e) => Err(e.to_string()),
            };
        }
        Some(TaskKind::Transfer) => ("BatchTransfer", task.transfer.clone().unwrap_or_default()),
        Some(TaskKind::Command) => {
            let command = serde_json::to_value(&task.command).unwrap_or_default();
            ("Command", json!({"command": command}))
        }
        Some(TaskKind::Template) => {
            let used = task.template.clone().expect("checked");
            let used = super::spec::TemplateUse {
                params: used
                    .params
                    .iter()
                    .map(|(k, v)| {
                        let v = r::substitute(&Value::String(v.clone()), &run.params);
                        (k.clone(), v.as_str().unwrap_or_default().to_string())
                    })
                    .collect(),
                ..used
            };
            super::templates::expand(&used)?
        }
        None => return Err("exactly one of transfer, transferRef, command or template".into()),
    };
    let name = r::task_transfer_name(&run.id, &task.name);
    let mut spec = r::substitute(&spec, &run.params);
    if let Value::Object(map) = &mut spec {
        // Retries are the task's; one attempt is one run.
        map.remove("schedule");
        map.insert("maxFailedRetries".into(), json!(0));
    }
    let manifest = json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "labels": {
            PIPELINE_LABEL: run.pipeline, RUN_LABEL: run.id, TASK_LABEL: task.name}},
        "spec": spec,
    });
    let manifest = validate(manifest).map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok(Plan::Make(Box::new(manifest)))
}

/// The run `id` of the planned transfer, the transfer made first if it is to be.
async fn make(inner: &Arc<Inner>, plan: Plan, id: &str) -> std::result::Result<(), String> {
    let name = plan.name().to_string();
    let record = match plan {
        Plan::Stored(record) => Some(*record),
        Plan::Make(manifest) => match inner.create_record(&manifest).await {
            Ok(record) => Some(record),
            // Made by an earlier pass.
            Err(crate::ControlError::Conflict(_)) => None,
            Err(e) => return Err(e.to_string()),
        },
    };
    if inner
        .store
        .get_run(id)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let record = match record {
        Some(record) => record,
        None => inner
            .store
            .get_transfer(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("transfer {name} was deleted"))?,
    };
    inner
        .new_run(&record, "pipeline", None, Some(id.to_string()))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What a task keeps of its attempt's statistics.
fn kept_stats(run: &RunRecord) -> Value {
    let mut stats = run.stats.clone();
    if let Value::Object(map) = &mut stats {
        for noisy in ["sourceSchema", "destinationSchema", "progress", "execution"] {
            map.remove(noisy);
        }
        if let Some(Value::Array(outputs)) = map.get_mut("outputs") {
            outputs.truncate(100);
        }
    }
    stats
}

/// Keeps the newest [`HISTORY`] finished runs of a pipeline, removing older ones with the
/// transfers made for them.
pub(crate) async fn prune(inner: &Arc<Inner>, pipeline: &str) -> Result<()> {
    let finished = runs_of(inner, pipeline)
        .await?
        .into_iter()
        .filter(PipelineRun::finished);
    for old in finished.skip(HISTORY) {
        remove_run(inner, &old).await?;
    }
    Ok(())
}

/// A pipeline's runs, newest first.
pub(crate) async fn runs_of(inner: &Arc<Inner>, pipeline: &str) -> Result<Vec<PipelineRun>> {
    let mut runs: Vec<PipelineRun> = inner
        .store
        .list_documents(PIPELINE_RUN, Some(pipeline), false)
        .await?
        .into_iter()
        .filter_map(|d| serde_json::from_value(d.document).ok())
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    Ok(runs)
}

/// Deletes a run's document and the transfers made for its tasks.
pub(crate) async fn remove_run(inner: &Arc<Inner>, run: &PipelineRun) -> Result<()> {
    for state in run.tasks.values() {
        let Some(transfer) = &state.transfer else {
            continue;
        };
        if let Some(t) = inner.store.get_transfer(transfer).await? {
            if t.labels.get(RUN_LABEL) == Some(&run.id) {
                inner.store.delete_transfer(transfer).await?;
            }
        }
    }
    inner.store.delete_document(PIPELINE_RUN, &run.id).await?;
    Ok(())
}
