//! Transfers applied to a running `ferry serve` over its API, and their runs and events.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::service::Service;

/// `ferry serve` on `port` with `engines` (YAML list items) in its settings file
/// (`root/ferry.yaml`, kept for a restart), its data and state under `root`, and `env`.
pub fn serve_with_engines(root: &Path, engines: &str, port: u16, env: &[(&str, &str)]) -> Service {
    std::fs::write(root.join("ferry.yaml"), format!("engines:\n{engines}")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(root.join("ferry.yaml"))
        .arg("--data-dir")
        .arg(root.join("data"))
        .env("FERRY_STATE_DIR", root.join("state"))
        .env_remove("FERRY_FAILPOINT")
        .envs(env.iter().copied())
        .current_dir(root);
    Service::start(cmd, port)
}

/// Creates the one-time transfer `name` with `spec`; it gets its run at once.
pub fn apply(server: &Service, name: &str, spec: Value) {
    let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "BatchTransfer",
                          "metadata": {"name": name}, "spec": spec});
    let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
    assert_eq!(status, 201, "{body}");
}

pub fn finished(run: &Value) -> bool {
    [
        "Succeeded",
        "Failed",
        "Fatal",
        "ConfigurationError",
        "Cancelled",
    ]
    .contains(&run["phase"].as_str().unwrap_or(""))
}

/// The transfer's newest run once `done` holds for it; fails at once if the run finished
/// otherwise, or after two minutes.
pub fn wait_run(server: &Service, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, runs) = server.call("GET", &format!("/v1/transfers/{name}/runs"), None);
        if let Some(run) = runs.as_array().and_then(|r| r.first()) {
            if done(run) {
                return run.clone();
            }
            assert!(Instant::now() < deadline && !finished(run), "{name}: {run}");
        }
        assert!(Instant::now() < deadline, "{name}: no run");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn events(server: &Service, name: &str) -> Vec<Value> {
    let (_, events) = server.call("GET", &format!("/v1/transfers/{name}/events"), None);
    events.as_array().cloned().unwrap_or_default()
}

/// The transfer's first event with `reason`, once there is one.
pub fn wait_event(server: &Service, name: &str, reason: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(e) = events(server, name)
            .into_iter()
            .find(|e| e["reason"] == reason)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "{name}: no {reason} event");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn count(events: &[Value], reason: &str) -> usize {
    events.iter().filter(|e| e["reason"] == reason).count()
}

/// `s3://bucket/prefix/` or `az://container/prefix/` as a manifest address.
pub fn remote(url: &str) -> Value {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (bucket, key) = rest.split_once('/').unwrap();
    match scheme {
        "s3" => json!({"type": "s3", "bucket": bucket, "key": key}),
        _ => json!({"type": "azure", "container": bucket, "path": key}),
    }
}
