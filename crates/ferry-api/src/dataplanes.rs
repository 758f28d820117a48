//! `/v1/dataplanes`: data planes register, report in and drain here, and the control
//! plane (or a tool) selects one for a run.
//!
//! A selection no registered data plane can take is 409 Conflict: the request is valid,
//! the registrations cannot serve it now; the body's `reason` says what each one lacks.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ferry_control::selector::{
    DataPlaneInstance, InstanceState, Load, RegistryError, RunRequest, Selection,
};
use ferry_control::FieldError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::{store_error, ApiError, ApiErrorBody, ApiResult, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/dataplanes",
            get(list_dataplanes).post(register_dataplane),
        )
        .route("/v1/dataplanes/select", post(select_dataplane))
        .route(
            "/v1/dataplanes/{id}",
            get(get_dataplane).delete(delete_dataplane),
        )
        .route("/v1/dataplanes/{id}/heartbeat", post(heartbeat_dataplane))
        .route("/v1/dataplanes/{id}/state", put(set_dataplane_state))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(details) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ApiErrorBody {
                    error: format!("the request is invalid: {} field(s)", details.len()),
                    details,
                    reason: None,
                },
            },
            RegistryError::NoInstance(none) => ApiError {
                status: StatusCode::CONFLICT,
                body: ApiErrorBody {
                    error: none.reason.clone(),
                    details: Vec::new(),
                    reason: Some(none.reason),
                },
            },
            RegistryError::UnknownStrategy(unknown) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ApiErrorBody {
                    error: unknown.to_string(),
                    details: vec![FieldError {
                        field: "strategy".into(),
                        message: unknown.to_string(),
                    }],
                    reason: None,
                },
            },
            RegistryError::Store(e) => store_error(e),
            e @ RegistryError::Remote { .. } => {
                tracing::warn!("request failed: {e}");
                ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The body as `T`: 400 when it is not JSON, 422 when it is JSON of the wrong shape (an
/// unknown or missing field, a wrong type).
fn json_body<T: DeserializeOwned>(body: &Bytes, what: &str) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(
            status,
            format!(
                "the body is not {what}: {}",
                ferry_core::error::one_line(&e.to_string())
            ),
        )
    })
}

fn not_registered(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("data plane '{id}' is not registered; register it with POST /v1/dataplanes"),
    )
}

#[utoipa::path(get, path = "/v1/dataplanes", tag = "dataplanes",
    responses((status = 200, body = [DataPlaneInstance], description = "Every registered data plane, by id; one whose heartbeat is too old shows as Unavailable")))]
pub(crate) async fn list_dataplanes(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<DataPlaneInstance>>> {
    Ok(Json(state.dataplanes.list().await?))
}

#[utoipa::path(post, path = "/v1/dataplanes", tag = "dataplanes",
    request_body = DataPlaneInstance,
    responses((status = 201, body = DataPlaneInstance, description = "Registered"),
              (status = 200, body = DataPlaneInstance, description = "Replaced a registration of the same id; its turn count and last active time are kept"),
              (status = 400, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub(crate) async fn register_dataplane(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<DataPlaneInstance>)> {
    let instance: DataPlaneInstance = json_body(&body, "a data plane")?;
    let added = state.dataplanes.add(instance).await?;
    let status = if added.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(added.instance)))
}

#[utoipa::path(get, path = "/v1/dataplanes/{id}", tag = "dataplanes", params(("id" = String, Path)),
    responses((status = 200, body = DataPlaneInstance), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn get_dataplane(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DataPlaneInstance>> {
    match state.dataplanes.get(&id).await? {
        Some(instance) => Ok(Json(instance)),
        None => Err(not_registered(&id)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeregisterQuery {
    /// Remove the data plane only if this is its registration nonce, so that a process
    /// that stops never removes the registration of the one that replaced it.
    registration: Option<String>,
}

#[utoipa::path(delete, path = "/v1/dataplanes/{id}", tag = "dataplanes",
    params(("id" = String, Path), DeregisterQuery),
    responses((status = 200, body = DataPlaneInstance, description = "Removed"),
              (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody, description = "Registered again under another registration; not removed")))]
pub(crate) async fn delete_dataplane(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DeregisterQuery>,
) -> ApiResult<Json<DataPlaneInstance>> {
    let registration = q.registration.as_deref();
    if let Some(removed) = state.dataplanes.remove(&id, registration).await? {
        return Ok(Json(removed));
    }
    if registration.is_some() && state.dataplanes.get(&id).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "data plane '{id}' is registered again under another registration; not removed"
            ),
        ));
    }
    Err(not_registered(&id))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SelectQuery {
    /// The selection strategy (`round-robin`, `random`, `least-recently-used`,
    /// `least-loaded` or a custom one); the configured default when absent. May also be
    /// given as the body's `strategy` field.
    strategy: Option<String>,
}

/// A selection request: what the run needs, and optionally the strategy.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectRequest {
    #[serde(flatten)]
    pub run: RunRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

#[utoipa::path(post, path = "/v1/dataplanes/select", tag = "dataplanes", params(SelectQuery),
    request_body = SelectRequest,
    responses((status = 200, body = Selection, description = "The chosen data plane, its turn counted"),
              (status = 409, body = ApiErrorBody, description = "No registered data plane can take the run; `reason` says what each lacks"),
              (status = 422, body = ApiErrorBody, description = "An invalid request or an unknown strategy (field `strategy`)")))]
pub(crate) async fn select_dataplane(
    State(state): State<AppState>,
    Query(q): Query<SelectQuery>,
    body: Bytes,
) -> ApiResult<Json<Selection>> {
    let mut request: Value = json_body(&body, "a run request")?;
    // `strategy` is this endpoint's, not the run's: take it out before reading the run.
    let in_body = match request.as_object_mut().and_then(|o| o.remove("strategy")) {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err(invalid("strategy", "must be a strategy name")),
    };
    let strategy = match (q.strategy, in_body) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                "strategy",
                format!("the query names '{a}' and the body '{b}'; give one"),
            ))
        }
        (a, b) => a.or(b),
    };
    let run: RunRequest = serde_json::from_value(request).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the body is not a run request: {}",
                ferry_core::error::one_line(&e.to_string())
            ),
        )
    })?;
    Ok(Json(
        state.dataplanes.select(&run, strategy.as_deref()).await?,
    ))
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    RegistryError::Invalid(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
    .into()
}

#[utoipa::path(post, path = "/v1/dataplanes/{id}/heartbeat", tag = "dataplanes",
    params(("id" = String, Path)), request_body = Load,
    responses((status = 200, body = DataPlaneInstance, description = "Recorded; the data plane is available"),
              (status = 404, body = ApiErrorBody, description = "Not registered: register again"),
              (status = 422, body = ApiErrorBody)))]
pub(crate) async fn heartbeat_dataplane(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<DataPlaneInstance>> {
    let load: Load = json_body(&body, "a load report")?;
    match state.dataplanes.heartbeat(&id, load).await? {
        Some(instance) => Ok(Json(instance)),
        None => Err(not_registered(&id)),
    }
}

/// A data plane's new state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub state: InstanceState,
}

#[utoipa::path(put, path = "/v1/dataplanes/{id}/state", tag = "dataplanes",
    params(("id" = String, Path)), request_body = StateChange,
    responses((status = 200, body = DataPlaneInstance), (status = 404, body = ApiErrorBody),
              (status = 422, body = ApiErrorBody)))]
pub(crate) async fn set_dataplane_state(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<DataPlaneInstance>> {
    let change: StateChange = json_body(&body, "a state change ({\"state\": \"Unavailable\"})")?;
    match state.dataplanes.set_state(&id, change.state).await? {
        Some(instance) => Ok(Json(instance)),
        None => Err(not_registered(&id)),
    }
}
