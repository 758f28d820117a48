//! ferry's REST API over a [`Controller`]: transfers, their runs and events, the data
//! planes that execute runs, metrics, health, and the OpenAPI document that describes it.
//!
//! [`app`] builds the whole router, so tests call it in-process without a socket.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_control::selector::{
    DataPlaneInstance, DataPlaneRegistry, InstanceState, Load, RunRequest, Selection,
};
use ferry_control::{
    ControlError, Controller, EventView, FieldError, Phase, RunView, TransferStatus, TransferView,
};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};

mod dataflows;
mod dataplanes;
mod pipelines;
mod pull;
pub mod ui;

pub use dataplanes::{SelectRequest, StateChange};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub controller: Controller,
    /// Bearer tokens that may call the API.
    pub tokens: Arc<Vec<String>>,
    /// The data planes `/v1/dataplanes` registers and selects.
    pub dataplanes: Arc<dyn DataPlaneRegistry>,
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/transfers", get(list_transfers).post(create_transfer))
        .route(
            "/v1/transfers/{name}",
            get(get_transfer)
                .put(replace_transfer)
                .delete(delete_transfer),
        )
        .route("/v1/transfers/{name}/suspend", post(suspend_transfer))
        .route("/v1/transfers/{name}/resume", post(resume_transfer))
        .route("/v1/transfers/{name}/run", post(run_transfer))
        .route("/v1/transfers/{name}/runs", get(list_runs))
        .route("/v1/transfers/{name}/events", get(list_events))
        .route("/v1/events", get(follow_all_events))
        .merge(pipelines::routes())
        .merge(dataflows::router())
        .merge(dataplanes::routes())
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(ui::routes())
        // A pull flow's own token, not an API token, opens its downloads.
        .merge(pull::routes())
        .merge(protected)
        .fallback(not_found)
        .with_state(state)
}

/// The OpenAPI document, generated from the handlers and types below.
#[derive(OpenApi)]
#[openapi(
    info(title = "ferry", description = "Transfers as durable resources: create them, run them on schedules, follow their runs and events."),
    paths(
        list_transfers, create_transfer, get_transfer, replace_transfer, delete_transfer,
        suspend_transfer, resume_transfer, run_transfer, list_runs, list_events, follow_all_events,
        dataplanes::list_dataplanes, dataplanes::register_dataplane, dataplanes::get_dataplane,
        dataplanes::delete_dataplane, dataplanes::select_dataplane,
        dataplanes::heartbeat_dataplane, dataplanes::set_dataplane_state,
        pipelines::list_pipelines, pipelines::create_pipeline, pipelines::get_pipeline,
        pipelines::replace_pipeline, pipelines::delete_pipeline, pipelines::suspend_pipeline,
        pipelines::resume_pipeline, pipelines::run_pipeline, pipelines::list_pipeline_runs,
        pipelines::get_pipeline_run, pipelines::list_pipeline_events,
        pipelines::list_templates, pipelines::create_template, pipelines::get_template,
        pipelines::replace_template, pipelines::delete_template,
        metrics, healthz, readyz,
        dataflows::prepare, dataflows::start, dataflows::status, dataflows::suspend,
        dataflows::resume, dataflows::terminate, dataflows::completed, dataflows::token,
        dataflows::notified
    ),
    components(schemas(ferry_control::pipeline::PipelineView, ferry_control::pipeline::PipelineStatus,
        ferry_control::pipeline::api::PipelineRunRef, ferry_control::pipeline::PipelineRunView,
        ferry_control::pipeline::TaskRunView, ferry_control::pipeline::TemplateView,
        ferry_control::pipeline::TemplateStatus, pipelines::RunRequestBody, TransferView, TransferStatus, RunView, EventView, FieldError, ApiErrorBody, DeleteReport, Phase,
        DataPlaneInstance, InstanceState, Load, RunRequest, Selection, SelectRequest, StateChange,
        ferry_control::signaling::FlowMessage, ferry_control::signaling::FlowResponse,
        ferry_control::signaling::FlowStatus, ferry_control::signaling::FlowState,
        ferry_control::signaling::ReasonMessage)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every error the API returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiErrorBody {
    /// One line; secrets redacted.
    pub error: String,
    /// For 422: every invalid field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// For 409 from `/v1/dataplanes/select`: why no data plane can take the run, naming
    /// what each registered one lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub struct ApiError {
    status: StatusCode,
    body: ApiErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ApiErrorBody {
                error: error.into(),
                details: Vec::new(),
                reason: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(_) | ControlError::Missing(_) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            ControlError::BadMessage(details) => ApiError {
                status: StatusCode::BAD_REQUEST,
                body: ApiErrorBody {
                    error: format!(
                        "the message is invalid: {}",
                        details
                            .iter()
                            .map(|d| format!("{}: {}", d.field, d.message))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    details,
                    reason: None,
                },
            },
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            ControlError::Invalid(details) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ApiErrorBody {
                    error: format!("the manifest is invalid: {} field(s)", details.len()),
                    details,
                    reason: None,
                },
            },
            ControlError::Store(e) => store_error(e),
        }
    }
}

/// A store failure: 503 when the store does not answer, one line, logged.
fn store_error(e: ferry_core::Error) -> ApiError {
    tracing::warn!("request failed: {e}");
    let status = match e {
        ferry_core::Error::Unreachable { .. } | ferry_core::Error::State { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ferry_core::Error::InvalidOption { .. } | ferry_core::Error::InvalidAddress { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, ferry_core::error::one_line(&e.to_string()))
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        state
            .tokens
            .iter()
            .any(|t| same(t.as_bytes(), g.as_bytes()))
    });
    if ok {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "a bearer token is required: send Authorization: Bearer <token>",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("valid header"),
    );
    response
}

/// Compares in time that does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
}

/// A manifest body: JSON, or YAML when the content type says so (or it is not JSON).
pub(crate) fn manifest_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let yaml = content_type.contains("yaml");
    let parsed = if yaml {
        serde_norway::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).or_else(|json_err| {
            if content_type.contains("json") {
                Err(json_err.to_string())
            } else {
                serde_norway::from_slice::<Value>(body).map_err(|e| e.to_string())
            }
        })
    };
    parsed.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a {} manifest: {}",
                if yaml { "YAML" } else { "JSON or YAML" },
                ferry_core::error::one_line(&e)
            ),
        )
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// Only transfers in this phase.
    phase: Option<String>,
    /// Only transfers with these labels: `team=lake,tier=gold`.
    label_selector: Option<String>,
    /// At most this many (1 to 10000), by name; the answer's `Ferry-Continue` header
    /// (and `Link: …; rel="next"`) says how to ask for the next page when more follow.
    limit: Option<usize>,
    /// The `Ferry-Continue` token of the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    continue_token: Option<String>,
}

/// The header carrying the token of a list's next page.
pub const CONTINUE_HEADER: &str = "ferry-continue";

/// An opaque token for the page after `name`.
fn continue_token(name: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("after:{name}"))
}

fn after_token(token: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("after:")
        .map(str::to_string)
}

#[utoipa::path(get, path = "/v1/transfers", params(ListQuery),
    responses((status = 200, body = [TransferView], headers(("ferry-continue" = String, description = "The token of the next page, when more follow"))),
              (status = 400, body = ApiErrorBody)))]
async fn list_transfers(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let phase = match q.phase.as_deref() {
        None | Some("") => None,
        Some(p) => Some(Phase::parse(p).ok_or_else(|| {
            let known: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("phase '{p}' is not one of {}", known.join(", ")),
            )
        })?),
    };
    let mut labels = BTreeMap::new();
    for pair in q.label_selector.iter().flat_map(|s| s.split(',')) {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("labelSelector '{pair}': expected key=value"),
            )
        })?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    if q.limit.is_some_and(|n| !(1..=10_000).contains(&n)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit must be between 1 and 10000",
        ));
    }
    let after = match q.continue_token.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => Some(after_token(token).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "continue: not a token this server gave; start again without it",
            )
        })?),
    };
    let (views, next) = state
        .controller
        .list_page(phase, &labels, after, q.limit)
        .await?;
    let mut response = Json(views).into_response();
    if let Some(next) = next {
        let token = continue_token(&next);
        let mut query = vec![
            format!("limit={}", q.limit.unwrap_or_default()),
            format!("continue={token}"),
        ];
        if let Some(p) = &q.phase {
            query.push(format!("phase={}", urlencoding(p)));
        }
        if let Some(l) = &q.label_selector {
            query.push(format!("labelSelector={}", urlencoding(l)));
        }
        let headers = response.headers_mut();
        if let Ok(v) = token.parse() {
            headers.insert(CONTINUE_HEADER, v);
        }
        if let Ok(v) = format!("</v1/transfers?{}>; rel=\"next\"", query.join("&")).parse() {
            headers.insert(axum::http::header::LINK, v);
        }
    }
    Ok(response)
}

/// `text` with everything but unreserved characters percent-encoded.
fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[utoipa::path(post, path = "/v1/transfers",
    request_body(content = Object, description = "A manifest (apiVersion ferry.dev/v1, kind BatchTransfer), JSON or YAML", content_type = "application/json"),
    responses((status = 201, body = TransferView), (status = 409, body = ApiErrorBody),
              (status = 422, body = ApiErrorBody)))]
async fn create_transfer(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TransferView>)> {
    let manifest = manifest_body(&headers, &body)?;
    let view = state.controller.create(manifest).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/transfers/{name}", params(("name" = String, Path)),
    responses((status = 200, body = TransferView), (status = 404, body = ApiErrorBody)))]
async fn get_transfer(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TransferView>> {
    Ok(Json(state.controller.get(&name).await?))
}

#[utoipa::path(put, path = "/v1/transfers/{name}", params(("name" = String, Path)),
    request_body(content = Object, description = "The whole manifest; its spec replaces the stored one", content_type = "application/json"),
    responses((status = 200, body = TransferView), (status = 404, body = ApiErrorBody),
              (status = 422, body = ApiErrorBody)))]
async fn replace_transfer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<TransferView>> {
    let manifest = manifest_body(&headers, &body)?;
    Ok(Json(state.controller.replace(&name, manifest).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Also remove what the transfer's runs wrote at its destination.
    #[serde(default)]
    cleanup: bool,
}

/// What a delete removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteReport {
    pub deleted: String,
    /// Keys removed at the destination (with `cleanup=true`).
    pub removed: Vec<String>,
}

#[utoipa::path(delete, path = "/v1/transfers/{name}", params(("name" = String, Path), DeleteQuery),
    responses((status = 200, body = DeleteReport), (status = 404, body = ApiErrorBody)))]
async fn delete_transfer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<DeleteReport>> {
    let removed = state.controller.delete(&name, q.cleanup).await?;
    Ok(Json(DeleteReport {
        deleted: name,
        removed,
    }))
}

#[utoipa::path(post, path = "/v1/transfers/{name}/suspend", params(("name" = String, Path)),
    responses((status = 200, body = TransferView), (status = 404, body = ApiErrorBody)))]
async fn suspend_transfer(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TransferView>> {
    Ok(Json(state.controller.set_suspend(&name, true).await?))
}

#[utoipa::path(post, path = "/v1/transfers/{name}/resume", params(("name" = String, Path)),
    responses((status = 200, body = TransferView), (status = 404, body = ApiErrorBody)))]
async fn resume_transfer(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TransferView>> {
    Ok(Json(state.controller.set_suspend(&name, false).await?))
}

#[utoipa::path(post, path = "/v1/transfers/{name}/run", params(("name" = String, Path)),
    responses((status = 202, body = RunView), (status = 404, body = ApiErrorBody)))]
async fn run_transfer(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.controller.run_now(&name).await?),
    ))
}

#[utoipa::path(get, path = "/v1/transfers/{name}/runs", params(("name" = String, Path)),
    responses((status = 200, body = [RunView]), (status = 404, body = ApiErrorBody)))]
async fn list_runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<RunView>>> {
    Ok(Json(state.controller.runs(&name).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    pub(crate) after: i64,
    /// At most this many (default 1000).
    pub(crate) limit: Option<usize>,
    /// Keep the connection open and send new events as server-sent events (also chosen
    /// by `Accept: text/event-stream`).
    #[serde(default)]
    pub(crate) follow: bool,
}

#[utoipa::path(get, path = "/v1/transfers/{name}/events", params(("name" = String, Path), EventsQuery),
    responses((status = 200, body = [EventView], description = "JSON, or with follow a text/event-stream of EventView"),
              (status = 404, body = ApiErrorBody)))]
async fn list_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let after = q.after(&headers);
    if !wants_stream(&q, &headers) {
        return Ok(Json(state.controller.events(&name, after, limit).await?).into_response());
    }
    // Subscribe before reading the backlog, so nothing falls between the two.
    let live = state.controller.subscribe();
    let backlog = state.controller.events(&name, after, 10_000).await?;
    Ok(event_stream(state.controller.clone(), name, backlog, live))
}

impl EventsQuery {
    /// `after`, or when it is not given, the `Last-Event-ID` a reconnecting event stream
    /// client sends.
    pub(crate) fn after(&self, headers: &HeaderMap) -> i64 {
        if self.after > 0 {
            return self.after;
        }
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Whether an events request asks for server-sent events (`follow`, or the `Accept`
/// header).
pub(crate) fn wants_stream(q: &EventsQuery, headers: &HeaderMap) -> bool {
    q.follow
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

/// `backlog`, then the live events kept under `key`, as server-sent events.
pub(crate) fn event_stream(
    controller: Controller,
    key: String,
    backlog: Vec<EventView>,
    live: tokio::sync::broadcast::Receiver<ferry_state::EventRecord>,
) -> Response {
    Sse::new(follow(controller, key, backlog, live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn follow(
    controller: Controller,
    name: String,
    backlog: Vec<EventView>,
    live: tokio::sync::broadcast::Receiver<ferry_state::EventRecord>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let last = backlog.last().map_or(0, |e| e.seq);
    let closed = controller.streams_closed();
    let state = (controller, name, backlog.into_iter(), live, last);
    let events = futures::stream::unfold(
        state,
        |(controller, name, mut backlog, mut live, mut last)| async move {
            if let Some(e) = backlog.next() {
                let event = sse_event(&e);
                return Some((Ok(event), (controller, name, backlog, live, last)));
            }
            loop {
                match live.recv().await {
                    Ok(record) if record.event.transfer == name && record.seq > last => {
                        last = record.seq;
                        let event = sse_event(&EventView::of(&record));
                        return Some((Ok(event), (controller, name, backlog, live, last)));
                    }
                    Ok(_) => {}
                    // Fell behind: read what was missed from the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let missed = controller.events_by_key(&name, last, 10_000).await.ok()?;
                        if let Some(newest) = missed.last() {
                            last = newest.seq;
                        }
                        backlog = missed.into_iter();
                        if let Some(e) = backlog.next() {
                            let event = sse_event(&e);
                            return Some((Ok(event), (controller, name, backlog, live, last)));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    // The stream ends when the server stops, so that it does not hold the shutdown up.
    futures::StreamExt::take_until(events, closed)
}

#[utoipa::path(get, path = "/v1/events",
    responses((status = 200, body = [EventView], description = "A text/event-stream of the events of every transfer and pipeline from now on (no backlog: read a transfer's or pipeline's own events for those); a client that reconnects reads current state again")))]
async fn follow_all_events(State(state): State<AppState>) -> Response {
    let live = state.controller.subscribe();
    let closed = state.controller.streams_closed();
    let events = futures::stream::unfold(live, |mut live| async move {
        let event = match live.recv().await {
            Ok(record) => sse_event(&EventView::of(&record)),
            // Fell behind: say so, so the client reads current state again.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                Event::default().event("Lagged").data(missed.to_string())
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), live))
    });
    Sse::new(futures::StreamExt::take_until(events, closed))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn sse_event(e: &EventView) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.reason.clone())
        .data(serde_json::to_string(e).unwrap_or_default())
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let text = state.controller.metrics_text().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[utoipa::path(get, path = "/healthz", security(()),
    responses((status = 200, description = "The process is up")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", security(()),
    responses((status = 200, description = "The store answers"), (status = 503, description = "The store does not answer")))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.controller.ready().await {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the control store does not answer\n",
        )
            .into_response()
    }
}
