//! What the API does with task templates: the built-in ones, and the `kind: TaskTemplate`
//! resources users register, read, list and delete.
//!
//! A template stays consistent with the pipelines using it: one cannot be deleted while a
//! pipeline names it, nor replaced by one that a pipeline's task no longer fits (a
//! parameter it gives that is gone, one it does not give that became required).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::runner::{PipelineDoc, PIPELINE};
use super::spec::{check_template_uses, ParamSpec, PipelineSpec, TEMPLATES};
use super::templates::{builtin, validate_template, TaskTemplateSpec, TEMPLATE};
use crate::controller::{ControlError, ControlResult, Controller, Inner};
use crate::resource::{time_text, FieldError};
use crate::secrets::redact_manifest;

/// A template as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    pub api_version: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// A registered template's spec (secrets redacted); a built-in's parameters.
    #[schema(value_type = Object)]
    pub spec: Value,
    pub status: TemplateStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStatus {
    pub built_in: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Pipelines with a task using it.
    pub used_by: Vec<String>,
}

/// How a registered template is stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TemplateDoc {
    pub manifest: Value,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl super::runner::Versioned for TemplateDoc {
    fn first(manifest: Value, now: i64) -> Self {
        TemplateDoc {
            manifest,
            generation: 1,
            created_at: now,
            updated_at: now,
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

impl TemplateDoc {
    pub fn spec(&self) -> Option<TaskTemplateSpec> {
        serde_json::from_value(self.manifest["spec"].clone()).ok()
    }
}

/// Every registered template's spec, by name.
pub(crate) async fn registered(
    inner: &Inner,
) -> ferry_core::Result<BTreeMap<String, TaskTemplateSpec>> {
    Ok(inner
        .store
        .list_documents(TEMPLATE, None, false)
        .await?
        .into_iter()
        .filter_map(|record| {
            let doc: TemplateDoc = serde_json::from_value(record.document).ok()?;
            Some((record.name, doc.spec()?))
        })
        .collect())
}

/// The problems of `spec`'s tasks with registered templates, as a pipeline's fields.
pub(crate) fn check_uses(
    spec: &PipelineSpec,
    templates: &BTreeMap<String, TaskTemplateSpec>,
) -> Vec<FieldError> {
    let names: Vec<String> = templates.keys().cloned().collect();
    check_template_uses(spec, |name| templates.get(name), &names)
}

fn missing(name: &str) -> ControlError {
    ControlError::Missing(format!("template '{name}' not found"))
}

impl Controller {
    /// Registers the template, or replaces the one of its name; true when it was created.
    pub async fn apply_template(&self, raw: Value) -> ControlResult<(TemplateView, bool)> {
        let manifest = validate_template(raw).map_err(ControlError::Invalid)?;
        // Every pipeline using it must still fit the new version.
        let mut templates = registered(&self.inner).await?;
        templates.insert(manifest.name.clone(), manifest.spec.clone());
        let mut unfit = Vec::new();
        for (pipeline, spec) in self.pipeline_specs().await? {
            for e in check_uses(&spec, &templates) {
                unfit.push(FieldError::new(
                    "spec.params",
                    format!(
                        "pipeline {pipeline} would no longer fit: {}: {}",
                        e.field, e.message
                    ),
                ));
            }
        }
        if !unfit.is_empty() {
            return Err(ControlError::Invalid(unfit));
        }
        let (_, created) = super::runner::put_versioned::<TemplateDoc>(
            &self.inner,
            TEMPLATE,
            &manifest.name,
            &manifest.raw,
        )
        .await?;
        Ok((self.get_template(&manifest.name).await?, created))
    }

    pub async fn get_template(&self, name: &str) -> ControlResult<TemplateView> {
        let users = self.template_users().await?;
        let used_by = users.get(name).cloned().unwrap_or_default();
        if let Some((_, needed)) = TEMPLATES.iter().find(|(n, _)| *n == name) {
            return Ok(builtin_view(name, needed, used_by));
        }
        let record = self
            .inner
            .store
            .get_document(TEMPLATE, name)
            .await?
            .ok_or_else(|| missing(name))?;
        let doc: TemplateDoc = serde_json::from_value(record.document)
            .map_err(|e| ControlError::Store(ferry_core::Error::Internal(e.to_string())))?;
        Ok(view(&doc, used_by))
    }

    /// The built-in templates, then the registered ones by name.
    pub async fn list_templates(&self) -> ControlResult<Vec<TemplateView>> {
        let users = self.template_users().await?;
        let used_by = |name: &str| users.get(name).cloned().unwrap_or_default();
        let mut views: Vec<TemplateView> = TEMPLATES
            .iter()
            .map(|(name, needed)| builtin_view(name, needed, used_by(name)))
            .collect();
        for record in self
            .inner
            .store
            .list_documents(TEMPLATE, None, false)
            .await?
        {
            if let Ok(doc) = serde_json::from_value::<TemplateDoc>(record.document) {
                views.push(view(&doc, used_by(&record.name)));
            }
        }
        Ok(views)
    }

    /// Deletes a registered template no pipeline uses (runs under way keep theirs).
    pub async fn delete_template(&self, name: &str) -> ControlResult<()> {
        if builtin(name) {
            return Err(ControlError::Conflict(format!(
                "template '{name}' is built in and cannot be deleted"
            )));
        }
        if self
            .inner
            .store
            .get_document(TEMPLATE, name)
            .await?
            .is_none()
        {
            return Err(missing(name));
        }
        if let Some(users) = self.template_users().await?.get(name) {
            return Err(ControlError::Conflict(format!(
                "template '{name}' is used by pipeline {}; change or delete {} first",
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" }
            )));
        }
        self.inner.store.delete_document(TEMPLATE, name).await?;
        Ok(())
    }

    async fn pipeline_specs(&self) -> ControlResult<Vec<(String, PipelineSpec)>> {
        Ok(self
            .inner
            .store
            .list_documents(PIPELINE, None, false)
            .await?
            .into_iter()
            .filter_map(|record| {
                let doc: PipelineDoc = serde_json::from_value(record.document).ok()?;
                Some((record.name, doc.spec()?))
            })
            .collect())
    }

    /// The pipelines using each template, by template name.
    async fn template_users(&self) -> ControlResult<BTreeMap<String, Vec<String>>> {
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (pipeline, spec) in self.pipeline_specs().await? {
            let mut names: Vec<&str> = spec
                .tasks
                .iter()
                .filter_map(|t| t.template.as_ref().map(|u| u.name.as_str()))
                .collect();
            names.dedup();
            for name in names {
                let list = users.entry(name.to_string()).or_default();
                if !list.contains(&pipeline) {
                    list.push(pipeline.clone());
                }
            }
        }
        Ok(users)
    }
}

fn builtin_view(name: &str, needed: &[&str], used_by: Vec<String>) -> TemplateView {
    let params: BTreeMap<&str, ParamSpec> =
        needed.iter().map(|p| (*p, ParamSpec::default())).collect();
    TemplateView {
        api_version: ferry_engine::manifest::API_VERSION.into(),
        kind: "TaskTemplate".into(),
        metadata: json!({"name": name}),
        spec: json!({"params": params}),
        status: TemplateStatus {
            built_in: true,
            used_by,
            ..TemplateStatus::default()
        },
    }
}

fn view(doc: &TemplateDoc, used_by: Vec<String>) -> TemplateView {
    let redacted = redact_manifest(&doc.manifest);
    TemplateView {
        api_version: redacted["apiVersion"].as_str().unwrap_or_default().into(),
        kind: redacted["kind"].as_str().unwrap_or_default().into(),
        metadata: redacted["metadata"].clone(),
        spec: redacted["spec"].clone(),
        status: TemplateStatus {
            built_in: false,
            generation: Some(doc.generation),
            created_at: Some(time_text(doc.created_at)),
            used_by,
        },
    }
}
