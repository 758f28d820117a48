//! What the API does with pipelines: apply, read, list, delete, suspend, resume, run with
//! parameters, and their runs and events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::run::{PipelineRun, TaskRun};
use super::runner::{self, events_key, PipelineDoc, PIPELINE, PIPELINE_RUN};
use super::spec::validate_pipeline;
use crate::controller::{now_ms, ControlError, ControlResult, Controller};
use crate::resource::{time_text, EventView, FieldError, RunProgress};
use crate::secrets::redact_manifest;
use ferry_state::DocumentRecord;

/// A pipeline as the API shows it: its manifest (secrets redacted) and status.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineView {
    pub api_version: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    #[schema(value_type = Object)]
    pub spec: Value,
    pub status: PipelineStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// Active or Suspended.
    pub phase: String,
    pub generation: i64,
    pub created_at: String,
    /// Unfinished runs.
    pub active_runs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<PipelineRunRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunRef {
    pub id: String,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A pipeline run as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunView {
    pub id: String,
    pub pipeline: String,
    /// Pending, Running, Succeeded, Failed, Cancelled.
    pub phase: String,
    pub trigger: String,
    pub params: BTreeMap<String, String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// In the order of the spec.
    pub tasks: Vec<TaskRunView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunView {
    pub name: String,
    /// Pending, Waiting, Running, Checking, Retrying, Succeeded, Failed, Skipped, Cancelled.
    pub phase: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When the next retry starts or the condition is polled again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_at: Option<String>,
    /// What the condition last saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The running attempt's progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub stats: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub handled: bool,
}

fn missing(name: &str) -> ControlError {
    ControlError::Missing(format!("pipeline '{name}' not found"))
}

impl Controller {
    /// Creates the pipeline, or replaces its spec; true when it was created.
    pub async fn apply_pipeline(&self, raw: Value) -> ControlResult<(PipelineView, bool)> {
        let manifest = validate_pipeline(raw).map_err(ControlError::Invalid)?;
        let mut unknown: Vec<FieldError> = manifest
            .spec
            .notify
            .iter()
            .enumerate()
            .filter(|(_, rule)| {
                !self
                    .inner
                    .notifier
                    .get()
                    .is_some_and(|n| n.has(&rule.channel))
            })
            .map(|(i, rule)| {
                FieldError::new(
                    format!("spec.notify[{i}].channel"),
                    format!(
                        "no channel named {} in the server's notifications settings",
                        rule.channel
                    ),
                )
            })
            .collect();
        let templates = super::template_api::registered(&self.inner).await?;
        unknown.extend(super::template_api::check_uses(&manifest.spec, &templates));
        if !unknown.is_empty() {
            return Err(ControlError::Invalid(unknown));
        }
        let (doc, created) = runner::put_versioned::<PipelineDoc>(
            &self.inner,
            PIPELINE,
            &manifest.name,
            &manifest.raw,
        )
        .await?;
        self.inner
            .emit(
                &events_key(&manifest.name),
                None,
                "Normal",
                if created { "Created" } else { "Updated" },
                format!(
                    "pipeline {} (generation {})",
                    if created { "created" } else { "applied" },
                    doc.generation
                ),
                json!({"generation": doc.generation}),
            )
            .await;
        self.inner.pipeline_wake.notify_one();
        Ok((self.get_pipeline(&manifest.name).await?, created))
    }

    async fn pipeline_doc(&self, name: &str) -> ControlResult<(DocumentRecord, PipelineDoc)> {
        let record = self
            .inner
            .store
            .get_document(PIPELINE, name)
            .await?
            .ok_or_else(|| missing(name))?;
        let doc = serde_json::from_value(record.document.clone())
            .map_err(|e| ControlError::Store(ferry_core::Error::Internal(e.to_string())))?;
        Ok((record, doc))
    }

    pub async fn get_pipeline(&self, name: &str) -> ControlResult<PipelineView> {
        let (_, doc) = self.pipeline_doc(name).await?;
        let runs = self.stored_runs(name).await?;
        Ok(view(&doc, &runs))
    }

    pub async fn list_pipelines(&self) -> ControlResult<Vec<PipelineView>> {
        let mut views = Vec::new();
        for record in self
            .inner
            .store
            .list_documents(PIPELINE, None, false)
            .await?
        {
            let Ok(doc) = serde_json::from_value::<PipelineDoc>(record.document) else {
                continue;
            };
            let runs = self.stored_runs(doc.name()).await?;
            views.push(view(&doc, &runs));
        }
        Ok(views)
    }

    /// Deletes the pipeline, cancelling its unfinished runs and removing every run with
    /// the transfers made for its tasks.
    pub async fn delete_pipeline(&self, name: &str) -> ControlResult<()> {
        self.pipeline_doc(name).await?;
        self.inner.store.delete_document(PIPELINE, name).await?;
        self.inner
            .store
            .delete_document(super::triggers::TRIGGER, name)
            .await?;
        for run in self.stored_runs(name).await? {
            for state in run.tasks.values().filter(|t| !t.finished()) {
                if let Some(id) = &state.run {
                    if let Some(r) = self.inner.store.get_run(id).await? {
                        if !r.finished() {
                            self.inner
                                .finish_cancelled(&r, "its pipeline was deleted")
                                .await?;
                        }
                    }
                }
            }
            runner::remove_run(&self.inner, &run).await?;
        }
        Ok(())
    }

    /// Suspends (no schedule or trigger fires; runs under way go on) or resumes.
    pub async fn set_pipeline_suspend(
        &self,
        name: &str,
        suspend: bool,
    ) -> ControlResult<PipelineView> {
        loop {
            let (mut record, mut doc) = self.pipeline_doc(name).await?;
            let expected = record.version;
            doc.manifest["spec"]["suspend"] = json!(suspend);
            doc.updated_at = now_ms();
            if !suspend {
                // Schedule times passed while suspended are not made up for.
                doc.last_schedule_ms = Some(doc.updated_at);
            }
            record.document = json!(doc);
            if self
                .inner
                .store
                .put_document(&record, Some(expected))
                .await?
                .is_some()
            {
                self.inner
                    .emit(
                        &events_key(name),
                        None,
                        "Normal",
                        if suspend { "Suspended" } else { "Resumed" },
                        format!("pipeline {}", if suspend { "suspended" } else { "resumed" }),
                        json!({}),
                    )
                    .await;
                return self.get_pipeline(name).await;
            }
        }
    }

    /// Starts a run now with `params` over the declared defaults (suspended pipelines
    /// too: an explicit request wins). Undeclared parameters are refused.
    pub async fn run_pipeline(
        &self,
        name: &str,
        params: BTreeMap<String, String>,
    ) -> ControlResult<PipelineRunView> {
        let (_, doc) = self.pipeline_doc(name).await?;
        let spec = doc.spec().ok_or_else(|| {
            ControlError::Conflict(format!("pipeline '{name}' has no valid spec"))
        })?;
        let unknown: Vec<FieldError> = params
            .keys()
            .filter(|k| !spec.params.contains_key(*k))
            .map(|k| {
                FieldError::new(
                    format!("params.{k}"),
                    format!(
                        "not a parameter of pipeline {name} (declared: {})",
                        spec.params.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(ControlError::BadMessage(unknown));
        }
        let run = runner::create_run(&self.inner, &doc, &spec, "manual", params, None).await?;
        Ok(self.run_view(&run))
    }

    async fn stored_runs(&self, name: &str) -> ControlResult<Vec<PipelineRun>> {
        Ok(runner::runs_of(&self.inner, name).await?)
    }

    /// Newest first.
    pub async fn pipeline_runs(&self, name: &str) -> ControlResult<Vec<PipelineRunView>> {
        self.pipeline_doc(name).await?;
        let mut views = Vec::new();
        for run in self.stored_runs(name).await? {
            views.push(self.run_view(&run));
        }
        for view in &mut views {
            self.with_progress(view).await;
        }
        Ok(views)
    }

    pub async fn pipeline_run(&self, name: &str, id: &str) -> ControlResult<PipelineRunView> {
        let record = self
            .inner
            .store
            .get_document(PIPELINE_RUN, id)
            .await?
            .filter(|d| d.parent.as_deref() == Some(name))
            .ok_or_else(|| ControlError::Missing(format!("pipeline run '{id}' not found")))?;
        let run: PipelineRun = serde_json::from_value(record.document)
            .map_err(|e| ControlError::Store(ferry_core::Error::Internal(e.to_string())))?;
        let mut view = self.run_view(&run);
        self.with_progress(&mut view).await;
        Ok(view)
    }

    pub async fn pipeline_events(
        &self,
        name: &str,
        after: i64,
        limit: usize,
    ) -> ControlResult<Vec<EventView>> {
        self.pipeline_doc(name).await?;
        let events = self
            .inner
            .store
            .list_events(&events_key(name), after, limit)
            .await?;
        Ok(events.iter().map(EventView::of).collect())
    }

    /// Events kept under `key` (a transfer's name, or `pipeline/NAME`), whatever they
    /// belong to: what an event stream reads after it fell behind.
    pub async fn events_by_key(
        &self,
        key: &str,
        after: i64,
        limit: usize,
    ) -> ControlResult<Vec<EventView>> {
        let events = self.inner.store.list_events(key, after, limit).await?;
        Ok(events.iter().map(EventView::of).collect())
    }

    fn run_view(&self, run: &PipelineRun) -> PipelineRunView {
        let order: Vec<String> = run
            .spec()
            .map(|s| s.tasks.into_iter().map(|t| t.name).collect())
            .unwrap_or_else(|| run.tasks.keys().cloned().collect());
        PipelineRunView {
            id: run.id.clone(),
            pipeline: run.pipeline.clone(),
            phase: run.phase.clone(),
            trigger: run.trigger.clone(),
            params: run.params.clone(),
            created_at: time_text(run.created_at),
            started_at: run.started_at.map(time_text),
            finished_at: run.finished_at.map(time_text),
            error: run.error.clone(),
            tasks: order
                .iter()
                .filter_map(|name| run.tasks.get(name).map(|t| task_view(name, t)))
                .collect(),
        }
    }

    /// Running tasks' progress, from their runs (fresher where they execute here).
    async fn with_progress(&self, view: &mut PipelineRunView) {
        for task in view
            .tasks
            .iter_mut()
            .filter(|t| t.phase == super::run::RUNNING)
        {
            let Some(id) = &task.run else { continue };
            if let Ok(Some(r)) = self.inner.store.get_run(id).await {
                task.progress = self.inner.run_view(&r).stats.progress;
            }
        }
    }
}

fn task_view(name: &str, t: &TaskRun) -> TaskRunView {
    TaskRunView {
        name: name.to_string(),
        phase: t.phase.clone(),
        attempt: t.attempt,
        transfer: t.transfer.clone(),
        run: t.run.clone(),
        started_at: t.started_at.map(time_text),
        finished_at: t.finished_at.map(time_text),
        next_at: t.not_before.filter(|_| !t.finished()).map(time_text),
        condition: t.condition.clone(),
        progress: None,
        stats: t.stats.clone(),
        error: t.error.clone(),
        handled: t.handled,
    }
}

fn view(doc: &PipelineDoc, runs: &[PipelineRun]) -> PipelineView {
    let redacted = redact_manifest(&doc.manifest);
    let suspended = redacted["spec"]["suspend"].as_bool().unwrap_or(false);
    let last = runs.iter().find(|r| r.finished());
    PipelineView {
        api_version: redacted["apiVersion"].as_str().unwrap_or_default().into(),
        kind: redacted["kind"].as_str().unwrap_or_default().into(),
        metadata: redacted["metadata"].clone(),
        spec: redacted["spec"].clone(),
        status: PipelineStatus {
            phase: if suspended { "Suspended" } else { "Active" }.into(),
            generation: doc.generation,
            created_at: time_text(doc.created_at),
            active_runs: runs
                .iter()
                .filter(|r| !r.finished())
                .map(|r| r.id.clone())
                .collect(),
            last_run: last.map(|r| PipelineRunRef {
                id: r.id.clone(),
                phase: r.phase.clone(),
                finished_at: r.finished_at.map(time_text),
                error: r.error.clone(),
            }),
            last_schedule_time: doc.last_schedule_ms.map(time_text),
        },
    }
}
