//! `/v1/pipelines`: pipelines, their runs and their events; `/v1/templates`: the task
//! templates their tasks can use.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_control::pipeline::{PipelineRunView, PipelineView, TemplateView};
use ferry_control::EventView;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    event_stream, manifest_body, wants_stream, ApiError, ApiErrorBody, ApiResult, AppState,
    EventsQuery,
};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/pipelines", get(list_pipelines).post(create_pipeline))
        .route(
            "/v1/pipelines/{name}",
            get(get_pipeline)
                .put(replace_pipeline)
                .delete(delete_pipeline),
        )
        .route("/v1/pipelines/{name}/suspend", post(suspend_pipeline))
        .route("/v1/pipelines/{name}/resume", post(resume_pipeline))
        .route("/v1/pipelines/{name}/run", post(run_pipeline))
        .route("/v1/pipelines/{name}/runs", get(list_pipeline_runs))
        .route("/v1/pipelines/{name}/runs/{id}", get(get_pipeline_run))
        .route("/v1/pipelines/{name}/events", get(list_pipeline_events))
        .route("/v1/templates", get(list_templates).post(create_template))
        .route(
            "/v1/templates/{name}",
            get(get_template)
                .put(replace_template)
                .delete(delete_template),
        )
}

#[utoipa::path(get, path = "/v1/pipelines",
    responses((status = 200, body = [PipelineView])))]
pub(crate) async fn list_pipelines(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<PipelineView>>> {
    Ok(Json(state.controller.list_pipelines().await?))
}

#[utoipa::path(post, path = "/v1/pipelines",
    request_body(content = Object, description = "A manifest (apiVersion ferry.dev/v1, kind Pipeline), JSON or YAML; an existing pipeline of that name is replaced", content_type = "application/json"),
    responses((status = 201, body = PipelineView), (status = 200, body = PipelineView),
              (status = 422, body = ApiErrorBody)))]
pub(crate) async fn create_pipeline(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PipelineView>)> {
    let manifest = manifest_body(&headers, &body)?;
    let (view, created) = state.controller.apply_pipeline(manifest).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

#[utoipa::path(get, path = "/v1/pipelines/{name}", params(("name" = String, Path)),
    responses((status = 200, body = PipelineView), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn get_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineView>> {
    Ok(Json(state.controller.get_pipeline(&name).await?))
}

#[utoipa::path(put, path = "/v1/pipelines/{name}", params(("name" = String, Path)),
    request_body(content = Object, description = "The whole manifest; its spec replaces the stored one for the next runs", content_type = "application/json"),
    responses((status = 200, body = PipelineView), (status = 404, body = ApiErrorBody),
              (status = 422, body = ApiErrorBody)))]
pub(crate) async fn replace_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<PipelineView>> {
    let manifest = manifest_body(&headers, &body)?;
    if manifest["metadata"]["name"].as_str() != Some(name.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("metadata.name must be {name}, the pipeline in the path"),
        ));
    }
    state.controller.get_pipeline(&name).await?;
    Ok(Json(state.controller.apply_pipeline(manifest).await?.0))
}

#[utoipa::path(delete, path = "/v1/pipelines/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn delete_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.controller.delete_pipeline(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/pipelines/{name}/suspend", params(("name" = String, Path)),
    responses((status = 200, body = PipelineView), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn suspend_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineView>> {
    Ok(Json(
        state.controller.set_pipeline_suspend(&name, true).await?,
    ))
}

#[utoipa::path(post, path = "/v1/pipelines/{name}/resume", params(("name" = String, Path)),
    responses((status = 200, body = PipelineView), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn resume_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineView>> {
    Ok(Json(
        state.controller.set_pipeline_suspend(&name, false).await?,
    ))
}

/// The parameters of a manual run.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequestBody {
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

#[utoipa::path(post, path = "/v1/pipelines/{name}/run", params(("name" = String, Path)),
    request_body(content = RunRequestBody, description = "Optional: parameters over the declared defaults"),
    responses((status = 202, body = PipelineRunView), (status = 400, body = ApiErrorBody),
              (status = 404, body = ApiErrorBody)))]
pub(crate) async fn run_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PipelineRunView>)> {
    let request: RunRequestBody = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequestBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not {{\"params\": {{name: value}}}}: {}",
                    ferry_core::error::one_line(&e.to_string())
                ),
            )
        })?
    };
    let run = state.controller.run_pipeline(&name, request.params).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

#[utoipa::path(get, path = "/v1/pipelines/{name}/runs", params(("name" = String, Path)),
    responses((status = 200, body = [PipelineRunView]), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn list_pipeline_runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<PipelineRunView>>> {
    Ok(Json(state.controller.pipeline_runs(&name).await?))
}

#[utoipa::path(get, path = "/v1/pipelines/{name}/runs/{id}",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = PipelineRunView), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn get_pipeline_run(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<PipelineRunView>> {
    Ok(Json(state.controller.pipeline_run(&name, &id).await?))
}

#[utoipa::path(get, path = "/v1/pipelines/{name}/events", params(("name" = String, Path), EventsQuery),
    responses((status = 200, body = [EventView], description = "JSON, or with follow a text/event-stream of EventView"),
              (status = 404, body = ApiErrorBody)))]
pub(crate) async fn list_pipeline_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let after = q.after(&headers);
    if !wants_stream(&q, &headers) {
        let events = state
            .controller
            .pipeline_events(&name, after, limit)
            .await?;
        return Ok(Json(events).into_response());
    }
    let live = state.controller.subscribe();
    let backlog = state
        .controller
        .pipeline_events(&name, after, 10_000)
        .await?;
    let key = ferry_control::pipeline::runner::events_key(&name);
    Ok(event_stream(state.controller.clone(), key, backlog, live))
}

#[utoipa::path(get, path = "/v1/templates",
    responses((status = 200, body = [TemplateView], description = "The built-in templates, then the registered ones")))]
pub(crate) async fn list_templates(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<TemplateView>>> {
    Ok(Json(state.controller.list_templates().await?))
}

#[utoipa::path(post, path = "/v1/templates",
    request_body(content = Object, description = "A manifest (apiVersion ferry.dev/v1, kind TaskTemplate), JSON or YAML; an existing template of that name is replaced", content_type = "application/json"),
    responses((status = 201, body = TemplateView), (status = 200, body = TemplateView),
              (status = 422, body = ApiErrorBody)))]
pub(crate) async fn create_template(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TemplateView>)> {
    let manifest = manifest_body(&headers, &body)?;
    let (view, created) = state.controller.apply_template(manifest).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

#[utoipa::path(get, path = "/v1/templates/{name}", params(("name" = String, Path)),
    responses((status = 200, body = TemplateView), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn get_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TemplateView>> {
    Ok(Json(state.controller.get_template(&name).await?))
}

#[utoipa::path(put, path = "/v1/templates/{name}", params(("name" = String, Path)),
    request_body(content = Object, description = "The whole manifest; refused when a pipeline using the template would no longer fit it", content_type = "application/json"),
    responses((status = 200, body = TemplateView), (status = 404, body = ApiErrorBody),
              (status = 422, body = ApiErrorBody)))]
pub(crate) async fn replace_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<TemplateView>> {
    let manifest = manifest_body(&headers, &body)?;
    if manifest["metadata"]["name"].as_str() != Some(name.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("metadata.name must be {name}, the template in the path"),
        ));
    }
    state.controller.get_template(&name).await?;
    Ok(Json(state.controller.apply_template(manifest).await?.0))
}

#[utoipa::path(delete, path = "/v1/templates/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody, description = "Built in, or used by a pipeline")))]
pub(crate) async fn delete_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.controller.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
