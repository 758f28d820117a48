//! `GET /pull/{flowId}/{path}`: a pull flow's source served for download, with the flow's
//! token instead of an API token. Objects stream from the store, one read per range; `Range`
//! (one range, or several as `multipart/byteranges`), `If-Range`, `ETag`, `Last-Modified`
//! and `HEAD` work as a resumable, parallel download needs; a directory answers with the
//! tree below it as JSON.

use std::ops::Range;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ferry_connectors::serve::{key_segments, Lookup, Served, ServedObject};
use ferry_control::pull::Denied;
use futures::{stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;

/// More ranges than this in one request are refused (416): each costs a store request.
const MAX_RANGES: usize = 64;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/pull/{id}", get(root))
        .route("/pull/{id}/", get(root))
        .route("/pull/{id}/{*path}", get(object))
}

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

async fn root(
    state: State<AppState>,
    method: Method,
    Path(id): Path<String>,
    query: Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    serve(state, method, id, String::new(), query, headers).await
}

async fn object(
    state: State<AppState>,
    method: Method,
    Path((id, path)): Path<(String, String)>,
    query: Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    serve(state, method, id, path, query, headers).await
}

/// One line naming the flow and the path, never the token.
fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn denied(id: &str, why: Denied) -> Response {
    let (status, challenge, message) = match why {
        Denied::Missing => (
            StatusCode::UNAUTHORIZED,
            "Bearer realm=\"ferry\"",
            format!("data flow '{id}': a bearer token is required (Authorization: Bearer …, or ?token=)"),
        ),
        Denied::Invalid => (
            StatusCode::UNAUTHORIZED,
            "Bearer realm=\"ferry\", error=\"invalid_token\"",
            format!("data flow '{id}': the token is not valid for this flow"),
        ),
        Denied::Expired => (
            StatusCode::UNAUTHORIZED,
            "Bearer realm=\"ferry\", error=\"invalid_token\", error_description=\"expired\"",
            format!("data flow '{id}': the token expired; ask the control plane for a new one"),
        ),
        Denied::Revoked(state) => (
            StatusCode::FORBIDDEN,
            "Bearer realm=\"ferry\", error=\"invalid_token\", error_description=\"revoked\"",
            format!("data flow '{id}' is {state:?}: its tokens are revoked"),
        ),
    };
    let mut response = refuse(status, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn serve(
    State(state): State<AppState>,
    method: Method,
    id: String,
    path: String,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let token = bearer(&headers).or(query.token.as_deref());
    let granted = match state.controller.pulls().authorize(&id, token) {
        Ok(granted) => granted,
        Err(why) => return denied(&id, why),
    };
    if let Err(why) = key_segments(&path) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "data flow '{id}': the path '{}' is refused: {why}",
                shown(&path)
            ),
        );
    }
    let served = match granted
        .opened
        .get_or_try_init(|| async { Served::open(&granted.source).await.map(Arc::new) })
        .await
    {
        Ok(served) => served.clone(),
        Err(e) => return store_failure(&id, &path, e),
    };
    let found = match served.lookup(&path).await {
        Ok(found) => found,
        Err(e) => return store_failure(&id, &path, e),
    };
    match found {
        Lookup::Tree(objects) => listing(&id, &path, objects),
        Lookup::Object(object) => send(&id, served, object, &method, &headers).await,
    }
}

/// A path as the user wrote it, safe for a one-line message.
fn shown(path: &str) -> String {
    path.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect()
}

/// The store's own message stays in the log: it names the provider's bucket or directory.
fn store_failure(id: &str, path: &str, e: ferry_core::Error) -> Response {
    let path = shown(path);
    match e {
        ferry_core::Error::NotFound { .. } => refuse(
            StatusCode::NOT_FOUND,
            format!("data flow '{id}': '{path}' not found"),
        ),
        ferry_core::Error::InvalidOption { .. } => refuse(
            StatusCode::BAD_REQUEST,
            format!("data flow '{id}': the path '{path}' is refused"),
        ),
        e => {
            tracing::warn!(flow = id, path, "pull request failed: {e}");
            refuse(
                StatusCode::BAD_GATEWAY,
                format!("data flow '{id}': '{path}' could not be read from the source; try again"),
            )
        }
    }
}

fn http_date(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

fn listing(id: &str, path: &str, objects: Vec<ServedObject>) -> Response {
    let entries: Vec<_> = objects
        .iter()
        .map(|o| {
            json!({
                "key": o.key,
                "size": o.size,
                "lastModified": o.last_modified_ms
                    .and_then(DateTime::<Utc>::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                "etag": o.etag,
            })
        })
        .collect();
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let mut response = Json(json!({
        "flowId": id,
        "path": path,
        "objects": entries,
        "count": objects.len(),
        "bytes": total,
    }))
    .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    response
}

/// The ranges a `Range` header asks for, clipped to `size`; `None` to serve the whole
/// object (no header, or one this server does not understand); `Some(empty)` when none can
/// be satisfied.
fn ranges(value: &str, size: u64) -> Option<Vec<Range<u64>>> {
    let specs = value.trim().strip_prefix("bytes=")?;
    let mut out = Vec::new();
    for spec in specs.split(',') {
        let (start, end) = spec.trim().split_once('-')?;
        let (start, end) = (start.trim(), end.trim());
        let range = if start.is_empty() {
            let suffix: u64 = end.parse().ok()?;
            if suffix == 0 {
                continue;
            }
            size.saturating_sub(suffix)..size
        } else {
            let start: u64 = start.parse().ok()?;
            let end = if end.is_empty() {
                size
            } else {
                let end: u64 = end.parse().ok()?;
                if end < start {
                    return None;
                }
                end.saturating_add(1).min(size)
            };
            if start >= size {
                continue;
            }
            start..end
        };
        out.push(range);
    }
    Some(out)
}

/// Whether an `If-Range` validator still names this version of the object.
fn if_range_holds(value: &str, object: &ServedObject) -> bool {
    let value = value.trim();
    if value.starts_with('"') {
        // A strong comparison: a weak validator never matches.
        return object
            .etag
            .as_deref()
            .is_some_and(|etag| value.trim_matches('"') == etag);
    }
    if value.starts_with("W/") {
        return false;
    }
    match (DateTime::parse_from_rfc2822(value), object.last_modified_ms) {
        (Ok(date), Some(ms)) => date.timestamp() == ms.div_euclid(1000),
        _ => false,
    }
}

async fn send(
    id: &str,
    served: Arc<Served>,
    object: ServedObject,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let size = object.size;
    let mut requested = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ranges(v, size));
    if let Some(validator) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if !if_range_holds(validator, &object) {
            requested = None;
        }
    }
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, no-store");
    if let Some(etag) = &object.etag {
        builder = builder.header(header::ETAG, format!("\"{etag}\""));
    }
    if let Some(date) = object.last_modified_ms.and_then(http_date) {
        builder = builder.header(header::LAST_MODIFIED, date);
    }
    let head = method == Method::HEAD;
    let ranges = match requested {
        Some(r) if r.is_empty() || r.len() > MAX_RANGES => {
            let why = if r.is_empty() {
                format!(
                    "data flow '{id}': no requested range is within '{}' ({size} bytes)",
                    shown(&object.key)
                )
            } else {
                format!("data flow '{id}': more than {MAX_RANGES} ranges in one request")
            };
            let mut response = refuse(StatusCode::RANGE_NOT_SATISFIABLE, why);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("a valid header"),
            );
            return response;
        }
        Some(r) => r,
        None => std::iter::once(0..size).collect(),
    };
    let whole = ranges.len() == 1 && ranges[0] == (0..size);
    if ranges.len() == 1 {
        let range = ranges[0].clone();
        let status = if whole {
            StatusCode::OK
        } else {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!(
                    "bytes {}-{}/{size}",
                    range.start,
                    range.end.saturating_sub(1)
                ),
            );
            StatusCode::PARTIAL_CONTENT
        };
        builder = builder
            .status(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, range.end - range.start);
        if head {
            return builder.body(Body::empty()).expect("a valid response");
        }
        let body = match served.read(&object, range).await {
            Ok(stream) => Body::from_stream(stream),
            Err(e) => return store_failure(id, &object.key, e),
        };
        return builder.body(body).expect("a valid response");
    }
    // Several ranges: one part each, framed by a boundary.
    let boundary = format!(
        "ferry-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let part_headers: Vec<String> = ranges
        .iter()
        .map(|r| {
            format!(
                "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {}-{}/{size}\r\n\r\n",
                r.start,
                r.end - 1
            )
        })
        .collect();
    let closing = format!("\r\n--{boundary}--\r\n");
    let length: u64 = part_headers.iter().map(|h| h.len() as u64).sum::<u64>()
        + ranges.iter().map(|r| r.end - r.start).sum::<u64>()
        + closing.len() as u64;
    builder = builder
        .status(StatusCode::PARTIAL_CONTENT)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/byteranges; boundary={boundary}"),
        )
        .header(header::CONTENT_LENGTH, length);
    if head {
        return builder.body(Body::empty()).expect("a valid response");
    }
    let parts = ranges
        .into_iter()
        .zip(part_headers)
        .map(move |(range, head)| {
            let served = served.clone();
            let object = object.clone();
            let head = stream::once(async move { Ok::<_, ferry_core::Error>(Bytes::from(head)) });
            // Each part's read starts only when the part before it has been sent.
            let data = stream::once(async move { served.read(&object, range).await })
                .map(|opened| match opened {
                    Ok(s) => s,
                    Err(e) => stream::once(async move { Err(e) }).boxed(),
                })
                .flatten();
            head.chain(data)
        });
    let body = stream::iter(parts)
        .flatten()
        .chain(stream::once(async move { Ok(Bytes::from(closing)) }));
    builder
        .body(Body::from_stream(body))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(range: Range<u64>) -> Option<Vec<Range<u64>>> {
        Some(std::iter::once(range).collect())
    }

    #[test]
    fn range_headers_are_read_as_rfc_9110_says() {
        assert_eq!(ranges("bytes=0-9", 100), one(0..10));
        assert_eq!(ranges("bytes=90-", 100), one(90..100));
        assert_eq!(ranges("bytes=-10", 100), one(90..100));
        assert_eq!(ranges("bytes=-1000", 100), one(0..100));
        assert_eq!(ranges("bytes=95-200", 100), one(95..100));
        assert_eq!(ranges("bytes=0-0, 5-9", 100), Some(vec![0..1, 5..10]));
        assert_eq!(ranges("bytes=100-", 100), Some(vec![]));
        assert_eq!(ranges("bytes=5-1", 100), None);
        assert_eq!(ranges("items=0-1", 100), None);
        assert_eq!(ranges("bytes=a-b", 100), None);
    }

    #[test]
    fn if_range_compares_strongly() {
        let object = ServedObject {
            key: "k".into(),
            size: 1,
            last_modified_ms: Some(1_700_000_000_500),
            etag: Some("abc".into()),
        };
        assert!(if_range_holds("\"abc\"", &object));
        assert!(!if_range_holds("\"abd\"", &object));
        assert!(!if_range_holds("W/\"abc\"", &object));
        assert!(if_range_holds(
            &http_date(1_700_000_000_000).unwrap(),
            &object
        ));
        assert!(!if_range_holds(
            &http_date(1_600_000_000_000).unwrap(),
            &object
        ));
    }
}
