//! The web console at `/ui/`: the files `scripts/console build` made, embedded at compile
//! time (see `build.rs`). A client of the public API like any other, so these routes need
//! no token: the page signs in itself and sends the token with each API call.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Whether this binary holds a built console.
pub const BUILT: bool = !ASSETS.is_empty();

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("", &headers) }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

/// A file of the build; for a path that names no file and looks like a page (no
/// extension), `index.html`, whose script routes it in the browser.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let last = path.rsplit('/').next().unwrap_or("");
    let page = path.is_empty() || !last.contains('.');
    let path = match asset(path) {
        Some(_) if !path.is_empty() => path,
        _ if !page => {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("the console has no file {path}\n"),
            )
                .into_response()
        }
        _ if !BUILT => return not_built(),
        _ => "index.html",
    };
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let compressed = gzip.then(|| asset(&format!("{path}.gz"))).flatten();
    let body = compressed.or_else(|| asset(path)).unwrap_or_default();
    // Vite names what it builds under assets/ by content hash: cached for good. The page
    // itself is asked again each time, so a new binary's console is picked up.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(path)),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response();
    if path == "index.html" {
        // The page holds the API token: only its own scripts run, and no other site frames it.
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                 frame-ancestors 'none'; form-action 'self'",
            ),
        );
        response.headers_mut().insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if compressed.is_some() {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map_or("", |(_, ext)| ext) {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

const NOT_BUILT: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ferry console: not built</title>
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>
<body style=\"font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem\">
<h1>The web console was not built into this binary</h1>
<p>This <code>ferry</code> was compiled without the console's assets. Build them, then
build ferry again (they are embedded at compile time):</p>
<pre>scripts/console build
cargo build -p ferry-cli</pre>
<p><code>scripts/console build</code> needs Node.js 20 and npm. The API itself works
without the console: see <a href=\"/openapi.json\">/openapi.json</a> (it needs the bearer token).</p>
</body></html>
";

fn not_built() -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        NOT_BUILT,
    )
        .into_response()
}
