//! `/v1/dataplanes` in-process (`app(state).oneshot(…)`), and the remote registry client
//! against the same router served on a local port.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use ferry_api::{app, AppState};
use ferry_control::secrets::{SecretResolver, SecretsConfig};
use ferry_control::selector::dataplanes::conformance;
use ferry_control::selector::{
    DataPlaneRegistry, InMemoryRegistry, RegistryError, RegistryOptions, RemoteRegistry,
    RunRequest, StoreRegistry,
};
use ferry_control::webhook::Webhooks;
use ferry_control::{ControlConfig, Controller};
use ferry_state::control::SqliteControlStore;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "test-token-dp-7c41";

struct Server {
    router: Router,
    _dir: tempfile::TempDir,
}

/// The API with `dataplanes` as its registry; the controller is there but not started.
fn server(dataplanes: Arc<dyn DataPlaneRegistry>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Arc::new(SqliteControlStore::open(&data).unwrap());
    let controller = Controller::new(
        store,
        ControlConfig::new(data, "test-instance".into()),
        SecretResolver::new(SecretsConfig::default()).unwrap(),
        Webhooks::start(Vec::new()).unwrap(),
    );
    let router = app(AppState {
        controller,
        tokens: Arc::new(vec![TOKEN.to_string()]),
        dataplanes,
    });
    Server { router, _dir: dir }
}

fn in_memory() -> Server {
    server(Arc::new(InMemoryRegistry::new()))
}

impl Server {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
        self.raw(method, path, body).await
    }

    async fn raw(&self, method: &str, path: &str, body: Body) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn register(&self, instance: Value) -> Value {
        let (status, body) = self.call("POST", "/v1/dataplanes", Some(instance)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

fn fields(body: &Value) -> Vec<&str> {
    body["details"]
        .as_array()
        .map(|d| d.iter().map(|e| e["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_dataplane_endpoint_needs_a_token_and_is_documented() {
    let s = in_memory();
    for (method, path) in [
        ("GET", "/v1/dataplanes"),
        ("POST", "/v1/dataplanes"),
        ("POST", "/v1/dataplanes/select"),
        ("GET", "/v1/dataplanes/dp-a"),
        ("DELETE", "/v1/dataplanes/dp-a"),
        ("POST", "/v1/dataplanes/dp-a/heartbeat"),
        ("PUT", "/v1/dataplanes/dp-a/state"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, "Bearer wrong")
            .body(Body::empty())
            .unwrap();
        let response = s.router.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    let (status, doc) = s.call("GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/dataplanes",
        "/v1/dataplanes/{id}",
        "/v1/dataplanes/select",
        "/v1/dataplanes/{id}/heartbeat",
        "/v1/dataplanes/{id}/state",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    for schema in [
        "DataPlaneInstance",
        "RunRequest",
        "Selection",
        "Load",
        "StateChange",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert!(doc["paths"]["/v1/dataplanes/select"]["post"]["responses"]["409"].is_object());
}

#[tokio::test]
async fn registering_creates_then_replaces_and_names_invalid_fields() {
    let s = in_memory();
    let created = s
        .register(
            json!({"id": "dp-a", "url": "http://dp-a:8081", "allowedSourceTypes": ["postgresql"]}),
        )
        .await;
    assert_eq!(created["allowedSourceTypes"], json!(["postgres"]));
    assert_eq!(created["state"], "Available");
    let (status, _) = s
        .call(
            "POST",
            "/v1/dataplanes/select",
            Some(json!({"sourceType": "postgres", "destinationType": "s3"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, replaced) = s
        .call(
            "POST",
            "/v1/dataplanes",
            Some(json!({"id": "dp-a", "url": "http://dp-a-2:8081", "registration": "n2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["url"], "http://dp-a-2:8081");
    assert_eq!(replaced["turnCount"], 1, "the history is kept");

    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes",
            Some(json!({"id": "dp-b", "url": "dp-b:8081"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["url"]);
    assert!(body["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("dp-b:8081"));

    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes",
            Some(
                json!({"id": "dp-b", "url": "http://dp-b", "allowedSourceTypes": ["mongo"],
                        "allowedDestinationTypes": ["s3", "pulsar"]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        fields(&body),
        ["allowedSourceTypes[0]", "allowedDestinationTypes[1]"]
    );

    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes",
            Some(json!({"id": "dp-b", "url": "http://dp-b", "sourceTypes": []})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("sourceTypes"),
        "{body}"
    );
    let (status, body) = s
        .raw("POST", "/v1/dataplanes", Body::from("{not json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, list) = s.call("GET", "/v1/dataplanes", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "nothing invalid was stored"
    );
    let (status, got) = s.call("GET", "/v1/dataplanes/dp-a", None).await;
    assert_eq!(
        (status, &got["registration"]),
        (StatusCode::OK, &json!("n2"))
    );
    let (status, body) = s.call("GET", "/v1/dataplanes/dp-z", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("'dp-z' is not registered"));
}

#[tokio::test]
async fn selection_takes_turns_names_its_strategy_and_says_why_none_can() {
    let s = in_memory();
    s.register(json!({"id": "dp-a", "url": "http://dp-a", "allowedSourceTypes": ["file"]}))
        .await;
    s.register(json!({"id": "dp-b", "url": "http://dp-b", "labels": {"region": "eu"}}))
        .await;
    let run = json!({"sourceType": "file", "destinationType": "s3"});
    let mut order = Vec::new();
    for _ in 0..4 {
        let (status, chosen) = s
            .call("POST", "/v1/dataplanes/select", Some(run.clone()))
            .await;
        assert_eq!(status, StatusCode::OK, "{chosen}");
        assert_eq!(chosen["strategy"], "round-robin");
        order.push(chosen["instance"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(order, ["dp-a", "dp-b", "dp-a", "dp-b"]);

    let (status, chosen) = s
        .call(
            "POST",
            "/v1/dataplanes/select?strategy=least-recently-used",
            Some(run.clone()),
        )
        .await;
    assert_eq!(
        (status, &chosen["strategy"]),
        (StatusCode::OK, &json!("least-recently-used"))
    );
    let mut with_strategy = run.clone();
    with_strategy["strategy"] = json!("random");
    let (status, chosen) = s
        .call("POST", "/v1/dataplanes/select", Some(with_strategy.clone()))
        .await;
    assert_eq!(
        (status, &chosen["strategy"]),
        (StatusCode::OK, &json!("random"))
    );
    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes/select?strategy=least-loaded",
            Some(with_strategy),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["strategy"]);

    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes/select?strategy=fastest",
            Some(run.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["strategy"]);
    assert!(
        body["error"].as_str().unwrap().contains("'fastest'"),
        "{body}"
    );

    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes/select",
            Some(json!({"sourceType": "postgres", "destinationType": "s3", "requiredLabels": {"region": "us"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["reason"],
        "no available data plane handles source postgres → destination s3 with labels region=us \
         (2 registered: dp-a lacks source postgres and lacks label region=us, dp-b lacks label region=us)"
    );
    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes/select",
            Some(json!({"sourceType": "file"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("destinationType"),
        "{body}"
    );

    let (_, list) = s.call("GET", "/v1/dataplanes", None).await;
    let turns: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|dp| dp["turnCount"].as_u64().unwrap())
        .collect();
    assert_eq!(
        turns.iter().sum::<u64>(),
        6,
        "refused selections take no turn: {turns:?}"
    );
}

#[tokio::test]
async fn heartbeats_states_and_deregistration() {
    let s = in_memory();
    s.register(json!({"id": "dp-a", "url": "http://dp-a", "registration": "n1"}))
        .await;
    s.register(json!({"id": "dp-b", "url": "http://dp-b"}))
        .await;

    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes/dp-z/heartbeat",
            Some(json!({"activeRuns": 0})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a data plane learns to register again"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("POST /v1/dataplanes"),
        "{body}"
    );
    let (status, body) = s
        .call(
            "POST",
            "/v1/dataplanes/dp-a/heartbeat",
            Some(json!({"activeRuns": 1, "bytesPerSecond": -5.0})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), ["bytesPerSecond"]);

    let (status, drained) = s
        .call(
            "PUT",
            "/v1/dataplanes/dp-a/state",
            Some(json!({"state": "Unavailable"})),
        )
        .await;
    assert_eq!(
        (status, &drained["state"]),
        (StatusCode::OK, &json!("Unavailable"))
    );
    let run = json!({"sourceType": "file", "destinationType": "s3"});
    for _ in 0..3 {
        let (_, chosen) = s
            .call("POST", "/v1/dataplanes/select", Some(run.clone()))
            .await;
        assert_eq!(chosen["instance"]["id"], "dp-b");
    }
    let (status, _) = s
        .call(
            "PUT",
            "/v1/dataplanes/dp-z/state",
            Some(json!({"state": "Unavailable"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(
            "PUT",
            "/v1/dataplanes/dp-a/state",
            Some(json!({"state": "Draining"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, beat) = s
        .call(
            "POST",
            "/v1/dataplanes/dp-a/heartbeat",
            Some(json!({"activeRuns": 2, "capacity": 8})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert_eq!(beat["state"], "Available");
    assert_eq!(
        beat["load"],
        json!({"activeRuns": 2, "bytesPerSecond": 0.0, "capacity": 8})
    );
    assert!(beat["lastHeartbeatMs"].as_i64().unwrap() > 0);

    let (status, body) = s
        .call("DELETE", "/v1/dataplanes/dp-a?registration=n0", None)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an older registration's deregistration: {body}"
    );
    let (status, removed) = s
        .call("DELETE", "/v1/dataplanes/dp-a?registration=n1", None)
        .await;
    assert_eq!((status, &removed["id"]), (StatusCode::OK, &json!("dp-a")));
    let (status, _) = s.call("DELETE", "/v1/dataplanes/dp-a", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.call("DELETE", "/v1/dataplanes/dp-b", None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = s.call("GET", "/v1/dataplanes", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_heartbeat_too_old_makes_a_data_plane_unavailable() {
    let options = RegistryOptions {
        heartbeat_timeout: Duration::from_millis(300),
        ..RegistryOptions::default()
    };
    let s = server(Arc::new(InMemoryRegistry::with_options(options).unwrap()));
    s.register(json!({"id": "dp-a", "url": "http://dp-a"}))
        .await;
    s.register(json!({"id": "dp-b", "url": "http://dp-b"}))
        .await;
    let (status, _) = s
        .call(
            "POST",
            "/v1/dataplanes/dp-a/heartbeat",
            Some(json!({"activeRuns": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let (_, a) = s.call("GET", "/v1/dataplanes/dp-a", None).await;
    assert_eq!(a["state"], "Unavailable", "{a}");
    let (_, b) = s.call("GET", "/v1/dataplanes/dp-b", None).await;
    assert_eq!(
        b["state"], "Available",
        "never sent a heartbeat, never expires: {b}"
    );
    s.call(
        "PUT",
        "/v1/dataplanes/dp-b/state",
        Some(json!({"state": "Unavailable"})),
    )
    .await;
    let run = json!({"sourceType": "file", "destinationType": "s3"});
    let (status, body) = s
        .call("POST", "/v1/dataplanes/select", Some(run.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("dp-a is unavailable"),
        "{body}"
    );

    s.call(
        "POST",
        "/v1/dataplanes/dp-a/heartbeat",
        Some(json!({"activeRuns": 0})),
    )
    .await;
    let (status, chosen) = s.call("POST", "/v1/dataplanes/select", Some(run)).await;
    assert_eq!(
        (status, &chosen["instance"]["id"]),
        (StatusCode::OK, &json!("dp-a"))
    );
}

/// Serves `router` on a local port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// A control plane with a store-backed registry whose clock the test moves.
async fn remote_over_store() -> (RemoteRegistry, Arc<AtomicI64>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteControlStore::open(&dir.path().join("registry")).unwrap());
    let now = Arc::new(AtomicI64::new(1));
    let clock = Arc::clone(&now);
    let registry = StoreRegistry::new(store, RegistryOptions::default())
        .unwrap()
        .with_clock(move || clock.load(Ordering::Relaxed));
    let s = server(Arc::new(registry));
    let base = serve(s.router).await;
    let remote = RemoteRegistry::new(&base, Some(TOKEN)).unwrap();
    (remote, now, dir)
}

#[tokio::test]
async fn the_remote_registry_behaves_as_an_embedded_one() {
    let (remote, _now, _dir) = remote_over_store().await;
    conformance::all(&remote).await;
}

#[tokio::test]
async fn over_http_heartbeats_expire_too() {
    let (remote, now, _dir) = remote_over_store().await;
    conformance::heartbeats_expire(&remote, &|t| now.store(t, Ordering::Relaxed)).await;
}

#[tokio::test]
async fn remote_failures_are_one_line_without_the_token() {
    let s = in_memory();
    let base = serve(s.router).await;
    let wrong = RemoteRegistry::new(&base, Some("not-the-token-93ab")).unwrap();
    let err = wrong.list().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Remote { .. }), "{text}");
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(!text.contains("not-the-token-93ab"), "{text}");
    assert!(!text.contains('\n'), "{text}");

    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = RemoteRegistry::new(&format!("http://127.0.0.1:{port}"), Some(TOKEN))
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let err = gone
        .select(&RunRequest::new("file", "s3"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Remote { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    let Err(RegistryError::Invalid(errors)) = RemoteRegistry::new("control:8080", None) else {
        panic!("a base URL without a scheme is refused");
    };
    assert_eq!(errors[0].field, "url");
}
