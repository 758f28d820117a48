//! The web console's routes: served without a token (the page signs in itself), the
//! console's routes fall back to its page, unknown files are 404, and the API behind it
//! still wants the token. Holds whether or not the console was built into this binary.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use ferry_api::{app, ui, AppState};
use ferry_control::secrets::{SecretResolver, SecretsConfig};
use ferry_control::webhook::Webhooks;
use ferry_control::{ControlConfig, Controller};
use ferry_state::control::SqliteControlStore;
use tower::ServiceExt;

fn router(dir: &std::path::Path) -> Router {
    let store = Arc::new(SqliteControlStore::open(&dir.join("data")).unwrap());
    let controller = Controller::new(
        store,
        ControlConfig::new(dir.join("data"), "ui-test".into()),
        SecretResolver::new(SecretsConfig::default()).unwrap(),
        Webhooks::start(Vec::new()).unwrap(),
    );
    app(AppState {
        controller,
        tokens: Arc::new(vec!["ui-test-token".to_string()]),
        dataplanes: Arc::new(ferry_control::selector::InMemoryRegistry::new()),
    })
}

struct Answer {
    status: StatusCode,
    content_type: String,
    encoding: Option<String>,
    cache: Option<String>,
    csp: Option<String>,
    body: String,
}

async fn get(router: &Router, path: &str, gzip: bool) -> Answer {
    let mut request = Request::builder().uri(path);
    if gzip {
        request = request.header(header::ACCEPT_ENCODING, "gzip, br");
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
    };
    let (status, content_type) = (response.status(), text(header::CONTENT_TYPE));
    let (encoding, cache) = (text(header::CONTENT_ENCODING), text(header::CACHE_CONTROL));
    let csp = text(header::CONTENT_SECURITY_POLICY);
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .unwrap();
    Answer {
        status,
        content_type: content_type.unwrap_or_default(),
        encoding,
        cache,
        csp,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

#[tokio::test]
async fn the_console_is_served_without_a_token_and_the_api_still_wants_one() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());

    let page = get(&router, "/ui/", false).await;
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    if ui::BUILT {
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("<div id=\"app\""), "{}", page.body);
        assert_eq!(page.cache.as_deref(), Some("no-cache"));
        // The page keeps the API token: no script but its own runs there.
        assert!(page.csp.unwrap().contains("default-src 'self'"));
    } else {
        // A binary built without `scripts/console build` says how to get the console.
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(page.body.contains("scripts/console build"), "{}", page.body);
    }

    // A page of the console's own (a transfer's detail) is the same document: the
    // browser routes it.
    let deep = get(&router, "/ui/transfers/orders-to-lake", false).await;
    assert_eq!(deep.status, page.status);
    assert_eq!(deep.body, page.body);
    assert!(deep.content_type.starts_with("text/html"));

    // A file the build does not have is a plain 404, not the page.
    let missing = get(&router, "/ui/assets/no-such-file-1234.js", false).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_ne!(missing.body, page.body);

    // The API behind it still needs the token.
    for path in ["/v1/transfers", "/v1/events", "/openapi.json"] {
        assert_eq!(
            get(&router, path, false).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
}

#[tokio::test]
async fn built_assets_have_their_types_long_caching_and_gzip() {
    if !ui::BUILT {
        eprintln!("console not built into this binary (scripts/console build): skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let page = get(&router, "/ui/", false).await;
    let script = page
        .body
        .split("src=\"/ui/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page loads a script from /ui/assets/");
    let plain = get(&router, &format!("/ui/{script}"), false).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(
        plain.content_type.starts_with("text/javascript"),
        "{}",
        plain.content_type
    );
    assert!(plain.cache.unwrap().contains("immutable"));
    assert_eq!(plain.encoding, None);
    let zipped = get(&router, &format!("/ui/{script}"), true).await;
    assert_eq!(zipped.status, StatusCode::OK);
    assert_eq!(zipped.encoding.as_deref(), Some("gzip"));
}
