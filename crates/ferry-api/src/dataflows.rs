//! The Dataplane Signaling API (`/dataflows/…`) a data plane serves, and the callback
//! endpoint (`/v1/signaling/…`) where a control plane hears from its data planes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_control::signaling::{FlowMessage, FlowResponse, FlowStatus, ReasonMessage};
use serde::de::DeserializeOwned;

use crate::{ApiError, ApiErrorBody, ApiResult, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/dataflows/prepare", post(prepare))
        .route("/dataflows/start", post(start))
        .route("/dataflows/{id}", get(status))
        .route("/dataflows/{id}/status", get(status))
        .route("/dataflows/{id}/suspend", post(suspend))
        .route("/dataflows/{id}/resume", post(resume))
        .route("/dataflows/{id}/terminate", post(terminate))
        .route("/dataflows/{id}/completed", post(completed))
        .route("/dataflows/{id}/token", post(token))
        .route("/dataflows/{id}/complete", post(completed))
        .route(
            "/v1/signaling/transfers/{id}/dataflow/{event}",
            post(notified),
        )
}

/// A JSON body, or an empty one as the default; a malformed one is a 400 naming the
/// problem.
fn message<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the message is not valid JSON: {e}"),
        )
    })
}

#[utoipa::path(post, path = "/dataflows/prepare", tag = "signaling",
    request_body = FlowMessage,
    responses((status = 200, body = FlowResponse), (status = 400, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody)))]
pub(crate) async fn prepare(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<FlowResponse>> {
    let msg: FlowMessage = message(&body)?;
    Ok(Json(state.controller.flow_prepare(msg).await?))
}

#[utoipa::path(post, path = "/dataflows/start", tag = "signaling",
    request_body = FlowMessage,
    responses((status = 200, body = FlowResponse), (status = 400, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody)))]
pub(crate) async fn start(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<FlowResponse>> {
    let msg: FlowMessage = message(&body)?;
    Ok(Json(state.controller.flow_start(msg).await?))
}

#[utoipa::path(get, path = "/dataflows/{id}/status", tag = "signaling",
    params(("id" = String, Path, description = "The flow's processId")),
    responses((status = 200, body = FlowStatus), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<FlowStatus>> {
    Ok(Json(state.controller.flow_status(&id).await?))
}

#[utoipa::path(post, path = "/dataflows/{id}/suspend", tag = "signaling",
    params(("id" = String, Path)), request_body = ReasonMessage,
    responses((status = 200, body = FlowResponse), (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody)))]
pub(crate) async fn suspend(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<FlowResponse>> {
    let msg: ReasonMessage = message(&body)?;
    Ok(Json(state.controller.flow_suspend(&id, msg.reason).await?))
}

#[utoipa::path(post, path = "/dataflows/{id}/resume", tag = "signaling",
    params(("id" = String, Path)),
    responses((status = 200, body = FlowResponse), (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody)))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<FlowResponse>> {
    Ok(Json(state.controller.flow_resume(&id).await?))
}

#[utoipa::path(post, path = "/dataflows/{id}/terminate", tag = "signaling",
    params(("id" = String, Path)), request_body = ReasonMessage,
    responses((status = 200, body = FlowResponse), (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody)))]
pub(crate) async fn terminate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<FlowResponse>> {
    let msg: ReasonMessage = message(&body)?;
    Ok(Json(
        state.controller.flow_terminate(&id, msg.reason).await?,
    ))
}

#[utoipa::path(post, path = "/dataflows/{id}/completed", tag = "signaling",
    params(("id" = String, Path)),
    responses((status = 200, body = FlowResponse), (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody)))]
pub(crate) async fn completed(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<FlowResponse>> {
    Ok(Json(state.controller.flow_completed(&id).await?))
}

#[utoipa::path(post, path = "/dataflows/{id}/token", tag = "signaling",
    params(("id" = String, Path)),
    responses((status = 200, body = FlowResponse, description = "a new token for a pull flow, in `dataAddress`"),
              (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<FlowResponse>> {
    Ok(Json(state.controller.flow_token(&id).await?))
}

#[utoipa::path(post, path = "/v1/signaling/transfers/{id}/dataflow/{event}", tag = "signaling",
    params(("id" = String, Path, description = "The run id"),
           ("event" = String, Path, description = "started, completed or errored")),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn notified(
    State(state): State<AppState>,
    Path((id, event)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if !["started", "completed", "errored"].contains(&event.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown data flow event '{event}'; use started, completed or errored"),
        ));
    }
    state.controller.flow_notified(&id, &event);
    Ok(StatusCode::NO_CONTENT)
}
