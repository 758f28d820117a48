//! The API with its router in-process: requests go through `app(state).oneshot(…)`, the
//! control loop runs for real against an embedded SQLite store and moves real files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use ferry_api::{app, AppState};
use ferry_control::retry::Backoff;
use ferry_control::secrets::{SecretResolver, SecretsConfig};
use ferry_control::webhook::Webhooks;
use ferry_control::{ControlConfig, Controller};
use ferry_state::control::SqliteControlStore;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "test-token-5f2a";

struct Server {
    router: Router,
    controller: Controller,
    dir: tempfile::TempDir,
}

fn server() -> Server {
    server_with(SecretsConfig::default())
}

fn server_with(secrets: SecretsConfig) -> Server {
    server_full(secrets, Webhooks::start(Vec::new()).unwrap())
}

fn server_full(secrets: SecretsConfig, webhooks: Webhooks) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteControlStore::open(&dir.path().join("data")).unwrap());
    let mut config = ControlConfig::new(dir.path().join("data"), "test-instance".into());
    config.tick = Duration::from_millis(50);
    config.progress_interval = Duration::from_millis(50);
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
        factor: 2.0,
    };
    let controller = Controller::new(
        store,
        config,
        SecretResolver::new(secrets).unwrap(),
        webhooks,
    );
    controller.start();
    let router = app(AppState {
        controller: controller.clone(),
        tokens: Arc::new(vec![TOKEN.to_string()]),
        dataplanes: Arc::new(ferry_control::selector::InMemoryRegistry::new()),
    });
    Server {
        router,
        controller,
        dir,
    }
}

impl Server {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    /// Polls the transfer until `done` holds (the control loop works in the background).
    async fn wait_for(&self, name: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, t) = self
                .call("GET", &format!("/v1/transfers/{name}"), None)
                .await;
            assert_eq!(status, StatusCode::OK, "{t}");
            if done(&t) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "transfer {name} never got there: {t}"
            );
            let mut events = self.controller.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
        }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }
}

fn write_orders(path: &Path, rows: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut text = String::from("id,email,amount\n");
    for i in 0..rows {
        text.push_str(&format!("{i},user{i}@example.com,{}.5\n", i * 3));
    }
    std::fs::write(path, text).unwrap();
}

fn transfer(name: &str, src: &str, dst: &str) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1",
        "kind": "BatchTransfer",
        "metadata": {"name": name, "labels": {"team": "lake"}},
        "spec": {
            "source": {"type": "file", "path": src, "format": "csv"},
            "destination": {"type": "file", "path": dst, "format": "parquet"},
            "transformation": [{"action": "Digest", "columns": ["email"], "options": {"algo": "sha256"}}]
        }
    })
}

#[tokio::test]
async fn every_endpoint_but_health_needs_a_token() {
    let s = server();
    for (method, path) in [
        ("GET", "/v1/transfers"),
        ("POST", "/v1/transfers"),
        ("GET", "/v1/transfers/x"),
        ("PUT", "/v1/transfers/x"),
        ("DELETE", "/v1/transfers/x"),
        ("POST", "/v1/transfers/x/suspend"),
        ("POST", "/v1/transfers/x/resume"),
        ("POST", "/v1/transfers/x/run"),
        ("GET", "/v1/transfers/x/runs"),
        ("GET", "/v1/transfers/x/events"),
        ("GET", "/v1/events"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ] {
        for auth in [None, Some("Bearer wrong"), Some("Basic dGVzdA==")] {
            let mut r = Request::builder().method(method).uri(path);
            if let Some(a) = auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            let (status, body) = s.send(r.body(Body::empty()).unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
            assert!(body["error"].as_str().unwrap().contains("bearer token"));
        }
    }
    for path in ["/healthz", "/readyz"] {
        let r = Request::builder().uri(path).body(Body::empty()).unwrap();
        assert_eq!(s.send(r).await.0, StatusCode::OK, "{path}");
    }
    let (status, doc) = s.call("GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/v1/transfers", "/v1/transfers/{name}/events", "/metrics"] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["TransferStatus"].is_object());
}

#[tokio::test]
async fn invalid_transfers_list_every_field_and_store_nothing() {
    let s = server();
    let mut bad = transfer("bad", "in.csv", "out/");
    bad["spec"]["schedule"] = json!("every minute");
    bad["spec"]["destination"] = Value::Null;
    bad["spec"].as_object_mut().unwrap().remove("destination");
    bad["spec"]["source"]["type"] = json!("ftp");
    bad["spec"]["transformation"] = json!([{"action": "Shuffle"}, {"action": "Redact"}]);
    bad["spec"]["maxFailedRetries"] = json!(500);
    bad["spec"]["successfulJobsHistoryLimit"] = json!(-2);
    let (status, body) = s.call("POST", "/v1/transfers", Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in [
        "spec.schedule",
        "spec.destination",
        "spec.source",
        "spec.transformation[0]",
        "spec.transformation[1].columns",
        "spec.maxFailedRetries",
        "spec.successfulJobsHistoryLimit",
    ] {
        assert!(fields.contains(&f), "{f} not in {fields:?}");
    }
    let (_, list) = s.call("GET", "/v1/transfers", None).await;
    assert_eq!(list, json!([]), "nothing was stored");

    let request = Request::builder()
        .method("POST")
        .uri("/v1/transfers")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (status, body) = s.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("not a JSON"),
        "{body}"
    );
}

#[tokio::test]
async fn a_one_time_transfer_runs_once_and_reports_status_runs_and_events() {
    let s = server();
    write_orders(&s.dir.path().join("in/orders.csv"), 500);
    let manifest = transfer("orders", &s.path("in/orders.csv"), &s.path("out/"));
    // YAML bodies are accepted too.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/transfers")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(serde_norway::to_string(&manifest).unwrap()))
        .unwrap();
    let (status, created) = s.send(request).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, _) = s
        .call("POST", "/v1/transfers", Some(manifest.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let t = s
        .wait_for("orders", |t| t["status"]["phase"] == "Succeeded")
        .await;
    let st = &t["status"];
    assert_eq!(st["numRecords"], 500);
    assert!(st["bytes"].as_u64().unwrap() > 0);
    assert!(st["lastSuccessTime"].is_string());
    assert!(st["lastRecordTime"].is_string());
    assert_eq!(st["lastCompletedRun"]["phase"], "Succeeded");
    assert!(st.get("activeRun").is_none());
    let fields: Vec<&str> = st["destinationSchema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["id", "email", "amount"]);
    assert!(s.dir.path().join("out/orders.parquet").is_file());
    // A finished run's checkpoint is forgotten, so the checkpoint store does not grow
    // with every scheduled run.
    let checkpoints =
        rusqlite::Connection::open(s.dir.path().join("data/checkpoints/ferry.db")).unwrap();
    let left: i64 = checkpoints
        .query_row(
            "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM files)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "checkpoint rows left after a finished run");

    let (_, runs) = s.call("GET", "/v1/transfers/orders/runs", None).await;
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "a one-time transfer runs once: {runs:?}");
    assert_eq!(runs[0]["trigger"], "created");
    assert_eq!(runs[0]["attempt"], 1);
    assert_eq!(runs[0]["stats"]["numRecords"], 500);

    let (_, events) = s.call("GET", "/v1/transfers/orders/events", None).await;
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for r in ["Created", "RunCreated", "RunStarted", "RunSucceeded"] {
        assert!(reasons.contains(&r), "{r} not in {reasons:?}");
    }
    let succeeded = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "RunSucceeded")
        .unwrap();
    assert_eq!(succeeded["data"]["records"], 500);
    assert!(succeeded["data"]["durationSeconds"].as_f64().unwrap() > 0.0);

    // Run it again on request: a second run, history kept.
    let (status, run) = s.call("POST", "/v1/transfers/orders/run", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = run["id"].as_str().unwrap().to_string();
    let t = s
        .wait_for("orders", |t| {
            t["status"]["lastCompletedRun"]["id"] == id.as_str()
        })
        .await;
    assert_eq!(t["status"]["phase"], "Succeeded");

    let (_, metrics) = s.call("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("ferry_transfers{phase=\"Succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_runs_finished_total{phase=\"Succeeded\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_records_moved_total 1000"),
        "{metrics}"
    );

    let (status, deleted) = s
        .call("DELETE", "/v1/transfers/orders?cleanup=true", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["removed"], json!(["orders.parquet"]));
    assert!(!s.dir.path().join("out/orders.parquet").exists());
    assert!(
        s.dir.path().join("in/orders.csv").exists(),
        "the source stays"
    );
    let (status, _) = s.call("GET", "/v1/transfers/orders", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.call("GET", "/v1/transfers/orders/events", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_filters_replace_suspend_and_resume() {
    let s = server();
    let mut a = transfer("a-hourly", "in.csv", "out/");
    a["spec"]["schedule"] = json!("0 * * * *");
    let mut b = transfer("b-daily", "in.csv", "out/");
    b["spec"]["schedule"] = json!("0 3 * * *");
    b["spec"]["timeZone"] = json!("Europe/Berlin");
    b["metadata"]["labels"] = json!({"team": "ops"});
    for t in [a.clone(), b] {
        let (status, body) = s.call("POST", "/v1/transfers", Some(t)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"]["phase"], "Pending");
        assert!(body["status"]["nextScheduleTime"].is_string(), "{body}");
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all) = s.call("GET", "/v1/transfers", None).await;
    assert_eq!(names(&all), ["a-hourly", "b-daily"]);
    let (_, ops) = s
        .call("GET", "/v1/transfers?labelSelector=team%3Dops", None)
        .await;
    assert_eq!(names(&ops), ["b-daily"]);
    let (status, _) = s.call("GET", "/v1/transfers?phase=Sleeping", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, t) = s.call("POST", "/v1/transfers/a-hourly/suspend", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t["spec"]["suspend"], true);
    let (_, suspended) = s.call("GET", "/v1/transfers?phase=Suspended", None).await;
    assert_eq!(names(&suspended), ["a-hourly"]);
    let (_, t) = s.call("POST", "/v1/transfers/a-hourly/resume", None).await;
    assert_eq!(t["status"]["phase"], "Pending");

    a["spec"]["schedule"] = json!("30 2 * * 1");
    let (status, replaced) = s
        .call("PUT", "/v1/transfers/a-hourly", Some(a.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["spec"]["schedule"], "30 2 * * 1");
    let (status, _) = s.call("PUT", "/v1/transfers/b-daily", Some(a)).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the name must match"
    );
    let (status, _) = s.call("POST", "/v1/transfers/nope/run", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failures_are_retried_when_passing_and_final_when_not() {
    let s = server();
    // Nothing listens on port 9: unreachable, retried maxFailedRetries times.
    let mut flaky = transfer("flaky", "x", "y");
    flaky["spec"]["source"] = json!({"type": "s3", "bucket": "b", "key": "in.csv", "format": "csv",
        "endpoint": "http://127.0.0.1:9", "storeOptions": {"allow_http": "true"}});
    flaky["spec"]["destination"] =
        json!({"type": "file", "path": s.path("out/"), "format": "parquet"});
    flaky["spec"]["maxFailedRetries"] = json!(2);
    // A missing column: a configuration error found when the data is seen.
    write_orders(&s.dir.path().join("in/orders.csv"), 10);
    let mut misfit = transfer("misfit", &s.path("in/orders.csv"), &s.path("out2/"));
    misfit["spec"]["transformation"] = json!([{"action": "Digest", "columns": ["ssn"]}]);
    // A missing source: no retry can fix it.
    let missing = transfer("missing", &s.path("in/none.csv"), &s.path("out3/"));
    for t in [flaky, misfit, missing] {
        assert_eq!(
            s.call("POST", "/v1/transfers", Some(t)).await.0,
            StatusCode::CREATED
        );
    }
    let t = s
        .wait_for("flaky", |t| t["status"]["phase"] == "Failed")
        .await;
    assert!(
        t["status"]["error"]
            .as_str()
            .unwrap()
            .contains("s3://b/in.csv: store unreachable"),
        "{t}"
    );
    let (_, runs) = s.call("GET", "/v1/transfers/flaky/runs", None).await;
    assert_eq!(runs[0]["attempt"], 3, "one try and two retries: {runs}");
    let (_, events) = s.call("GET", "/v1/transfers/flaky/events", None).await;
    let retries = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "RunRetrying")
        .count();
    assert_eq!(retries, 2);

    let t = s
        .wait_for("misfit", |t| t["status"]["phase"] == "ConfigurationError")
        .await;
    assert!(
        t["status"]["error"].as_str().unwrap().contains("ssn"),
        "{t}"
    );
    let t = s
        .wait_for("missing", |t| t["status"]["phase"] == "Fatal")
        .await;
    assert!(
        t["status"]["error"].as_str().unwrap().contains("none.csv"),
        "{t}"
    );
    for name in ["misfit", "missing"] {
        let (_, runs) = s
            .call("GET", &format!("/v1/transfers/{name}/runs"), None)
            .await;
        assert_eq!(runs[0]["attempt"], 1, "{name} is not retried: {runs}");
        assert!(!t["status"]["error"].as_str().unwrap().contains('\n'));
    }
}

#[tokio::test]
async fn history_limits_prune_old_runs() {
    let s = server();
    write_orders(&s.dir.path().join("in/orders.csv"), 5);
    let mut t = transfer("pruned", &s.path("in/orders.csv"), &s.path("out/"));
    t["spec"]["successfulJobsHistoryLimit"] = json!(1);
    assert_eq!(
        s.call("POST", "/v1/transfers", Some(t)).await.0,
        StatusCode::CREATED
    );
    s.wait_for("pruned", |t| t["status"]["phase"] == "Succeeded")
        .await;
    for _ in 0..2 {
        let (_, run) = s.call("POST", "/v1/transfers/pruned/run", None).await;
        let id = run["id"].as_str().unwrap().to_string();
        s.wait_for("pruned", |t| {
            t["status"]["lastCompletedRun"]["id"] == id.as_str()
        })
        .await;
    }
    let (_, runs) = s.call("GET", "/v1/transfers/pruned/runs", None).await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
}

#[tokio::test]
async fn secrets_never_come_back_and_are_never_stored() {
    let s = server();
    let secret = "pw-9d8e7f-never-show";
    std::env::set_var("FERRY_API_TEST_SECRET", secret);
    write_orders(&s.dir.path().join("in/orders.csv"), 5);
    let mut t = transfer("secretive", &s.path("in/orders.csv"), &s.path("out/"));
    // Inline secrets are redacted in answers; references are shown as written.
    t["spec"]["transformation"] = json!([{"action": "Encrypt", "columns": ["email"],
        "options": {"keyRef": "env:FERRY_API_TEST_KEY"}}]);
    t["spec"]["destination"] = json!({"type": "s3", "bucket": "nowhere", "key": "k/",
        "format": "parquet", "endpoint": "http://127.0.0.1:9",
        "storeOptions": {"secret_access_key": "ref+env://FERRY_API_TEST_SECRET",
                         "allow_http": "true"}});
    let (status, created) = s.call("POST", "/v1/transfers", Some(t)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["spec"]["destination"]["storeOptions"]["secret_access_key"],
        "ref+env://FERRY_API_TEST_SECRET"
    );
    let t = s
        .wait_for("secretive", |t| {
            matches!(
                t["status"]["phase"].as_str(),
                Some("Failed" | "Fatal" | "ConfigurationError")
            )
        })
        .await;
    let (_, runs) = s.call("GET", "/v1/transfers/secretive/runs", None).await;
    let (_, events) = s.call("GET", "/v1/transfers/secretive/events", None).await;
    let (_, list) = s.call("GET", "/v1/transfers", None).await;
    for (what, text) in [
        ("transfer", t.to_string()),
        ("runs", runs.to_string()),
        ("events", events.to_string()),
        ("list", list.to_string()),
    ] {
        assert!(!text.contains(secret), "{what} shows the secret: {text}");
    }
    let store = std::fs::read(s.dir.path().join("data/control.db")).unwrap();
    let wal = std::fs::read(s.dir.path().join("data/control.db-wal")).unwrap_or_default();
    for bytes in [store, wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the store holds the secret"
        );
    }
}

/// A test service's setting, or `None` outside CI when it is missing (CI fails instead).
fn service(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(v) => Some(v),
        Err(_) if std::env::var_os("CI").is_some() => panic!("{variable} unset under CI"),
        Err(_) => {
            eprintln!("skipping: {variable} unset; run scripts/services up and eval \"$(scripts/services env)\"");
            None
        }
    }
}

/// Every copy of ferry's state a user or operator could read, as bytes.
fn state_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn vault_secrets_reach_the_run_and_nothing_else() {
    let (Some(vault), Some(token), Some(s3)) = (
        service("FERRY_TEST_VAULT"),
        service("FERRY_TEST_VAULT_TOKEN"),
        service("FERRY_TEST_S3_ENDPOINT"),
    ) else {
        return;
    };
    // The S3 test server takes any key pair; the secret only has to be used.
    let secret = format!("vault-held-{:x}", std::process::id() as u64 * 7919);
    let path = format!("ferry-api-test-{}", std::process::id());
    let stored = reqwest::Client::new()
        .post(format!("{vault}/v1/secret/data/{path}"))
        .header("X-Vault-Token", &token)
        .json(
            &json!({"data": {"access_key_id": "vault-user", "secret_access_key": secret,
                               "region": "us-east-1"}}),
        )
        .send()
        .await
        .unwrap();
    assert!(stored.status().is_success(), "{}", stored.status());

    std::env::set_var("FERRY_API_TEST_VAULT_TOKEN", &token);
    let secrets: SecretsConfig = serde_json::from_value(json!({
        "vault": {"address": vault, "token": "env:FERRY_API_TEST_VAULT_TOKEN"}
    }))
    .unwrap();
    let s = server_with(secrets);
    write_orders(&s.dir.path().join("in/orders.csv"), 50);
    let prefix = format!("api-vault-{}/", std::process::id());
    let mut t = transfer("from-vault", &s.path("in/orders.csv"), "unused");
    t["spec"]["destination"] = json!({
        "type": "s3", "bucket": "ferry-test", "key": prefix, "format": "parquet",
        "endpoint": s3,
        "storeOptions": {
            "vaultPath": format!("secret/data/{path}"),
            "secret_access_key": format!("ref+vault://secret/{path}#secret_access_key"),
            "allow_http": "true"
        }
    });
    let (status, created) = s.call("POST", "/v1/transfers", Some(t)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let done = s
        .wait_for("from-vault", |t| {
            t["status"]["phase"] != "Pending" && t["status"]["phase"] != "Running"
        })
        .await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    assert_eq!(done["status"]["numRecords"], 50);

    let (_, runs) = s.call("GET", "/v1/transfers/from-vault/runs", None).await;
    let (_, events) = s.call("GET", "/v1/transfers/from-vault/events", None).await;
    let (_, metrics) = s.call("GET", "/metrics", None).await;
    for (what, text) in [
        ("transfer", done.to_string()),
        ("runs", runs.to_string()),
        ("events", events.to_string()),
        ("metrics", metrics.to_string()),
    ] {
        assert!(!text.contains(&secret), "{what} shows the secret: {text}");
    }
    let files = state_files(s.dir.path());
    assert!(files.iter().any(|(name, _)| name.ends_with("control.db")));
    for (name, bytes) in files {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{name} holds the secret"
        );
    }
}

#[tokio::test]
async fn events_reach_a_webhook() {
    // A receiver that hands every event it gets to the test.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let receiver = Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(event): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let hooks: Vec<ferry_control::webhook::WebhookConfig> =
        serde_json::from_value(json!([{"url": url, "reasons": ["RunStarted", "RunSucceeded"]}]))
            .unwrap();
    let s = server_full(SecretsConfig::default(), Webhooks::start(hooks).unwrap());
    write_orders(&s.dir.path().join("in/orders.csv"), 20);
    let t = transfer("hooked", &s.path("in/orders.csv"), &s.path("out/"));
    assert_eq!(
        s.call("POST", "/v1/transfers", Some(t)).await.0,
        StatusCode::CREATED
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the webhook hears of the run")
            .unwrap();
        got.push(event);
    }
    assert_eq!(
        got[0]["reason"], "RunStarted",
        "in order, filtered: {got:?}"
    );
    assert_eq!(got[1]["reason"], "RunSucceeded");
    assert_eq!(got[1]["transfer"], "hooked");
    assert_eq!(got[1]["data"]["records"], 20);
}

/// `/v1/events` streams every transfer's events as they happen (what the web console's
/// lists follow), and a transfer's events honour `Last-Event-ID` like `after`.
#[tokio::test]
async fn every_event_is_streamed_and_last_event_id_resumes_a_stream() {
    let s = server();
    let request = Request::builder()
        .uri("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = s.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = response.into_body().into_data_stream();

    write_orders(&s.dir.path().join("in/orders.csv"), 10);
    let manifest = transfer("streamed", &s.path("in/orders.csv"), &s.path("out/"));
    let (status, _) = s.call("POST", "/v1/transfers", Some(manifest)).await;
    assert_eq!(status, StatusCode::CREATED);

    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !text.contains("event: RunSucceeded") {
        let chunk = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut stream))
            .await
            .expect("the run's events arrive on /v1/events")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: Created"), "{text}");
    assert!(text.contains("\"transfer\":\"streamed\""), "{text}");

    let (_, all) = s.call("GET", "/v1/transfers/streamed/events", None).await;
    let all = all.as_array().unwrap();
    let first = all[0]["seq"].as_i64().unwrap();
    let request = Request::builder()
        .uri("/v1/transfers/streamed/events")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header("Last-Event-ID", first.to_string())
        .body(Body::empty())
        .unwrap();
    let (status, after) = s.send(request).await;
    assert_eq!(status, StatusCode::OK);
    let after = after.as_array().unwrap();
    assert_eq!(after.len(), all.len() - 1);
    assert!(after.iter().all(|e| e["seq"].as_i64().unwrap() > first));
}

#[tokio::test]
async fn lists_come_in_pages_that_follow_each_other_to_the_end() {
    let s = server();
    for i in 0..7 {
        let mut t = transfer(&format!("t-{i:02}"), "in.csv", "out/");
        if i % 2 == 0 {
            t["metadata"]["labels"] = json!({"team": "even"});
        }
        let (status, body) = s.call("POST", "/v1/transfers", Some(t)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let page = |uri: String| {
        let router = s.router.clone();
        async move {
            let request = Request::builder()
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let token = response
                .headers()
                .get("ferry-continue")
                .map(|v| v.to_str().unwrap().to_string());
            let link = response
                .headers()
                .get(header::LINK)
                .map(|v| v.to_str().unwrap().to_string());
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            let names: Vec<String> = serde_json::from_slice::<Value>(&bytes)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            (names, token, link)
        }
    };
    let mut seen = Vec::new();
    let mut uri = "/v1/transfers?limit=3".to_string();
    let mut pages = 0;
    loop {
        let (names, token, link) = page(uri.clone()).await;
        assert!(names.len() <= 3);
        seen.extend(names);
        pages += 1;
        match token {
            Some(token) => {
                assert_eq!(
                    link.unwrap(),
                    format!("</v1/transfers?limit=3&continue={token}>; rel=\"next\"")
                );
                uri = format!("/v1/transfers?limit=3&continue={token}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let all: Vec<String> = (0..7).map(|i| format!("t-{i:02}")).collect();
    assert_eq!(seen, all, "every transfer once, in order");

    // Filters hold across pages; a page that ends the list says so.
    let (names, token, _) = page("/v1/transfers?limit=2&labelSelector=team%3Deven".into()).await;
    assert_eq!(names, ["t-00", "t-02"]);
    let (names, next, _) = page(format!(
        "/v1/transfers?limit=2&labelSelector=team%3Deven&continue={}",
        token.unwrap()
    ))
    .await;
    assert_eq!(names, ["t-04", "t-06"]);
    assert_eq!(next, None, "the last page has no token");
    let (names, next, _) = page("/v1/transfers?limit=7".into()).await;
    assert_eq!((names.len(), next), (7, None));

    for bad in [
        "/v1/transfers?limit=0",
        "/v1/transfers?limit=10001",
        "/v1/transfers?continue=bm9wZQ",
    ] {
        let (status, body) = s.call("GET", bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}
