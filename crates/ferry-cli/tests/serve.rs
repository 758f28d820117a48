//! `ferry serve` as a real process, driven by `ferry transfers`: a run survives `kill -9`
//! of the server, and a schedule fires.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::service::{free_port, Service, TOKEN};

/// `ferry serve` on `port` with its data in `data`, started and listening.
struct Served;

impl Served {
    fn start(root: &Path, data: &Path, port: u16, failpoint: Option<&str>) -> Service {
        Self::start_with(root, data, port, failpoint, &[])
    }

    /// As `start`, with more environment for the server.
    fn start_with(
        root: &Path,
        data: &Path,
        port: u16,
        failpoint: Option<&str>,
        env: &[(&str, &str)],
    ) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .env("FERRY_STATE_DIR", root.join("state"))
            .env_remove("FERRY_FAILPOINT")
            .current_dir(root);
        if let Some(fp) = failpoint {
            cmd.env("FERRY_FAILPOINT", fp);
        }
        cmd.envs(env.iter().copied());
        Service::start(cmd, port)
    }
}

/// `ferry transfers ARGS --json` against the server on `port`.
fn transfers(root: &Path, port: u16, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("transfers")
        .args(args)
        .arg("--json")
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_TOKEN", TOKEN)
        .current_dir(root)
        .output()
        .expect("run ferry transfers");
    assert!(
        out.status.success(),
        "ferry transfers {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from ferry transfers")
}

/// Polls `ferry transfers get NAME` until `done` holds.
fn wait_for(root: &Path, port: u16, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = transfers(root, port, &["get", name]);
        if done(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "{name} never got there: {t}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_manifest(root: &Path, name: &str, body: &str) -> PathBuf {
    let path = root.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("apiVersion: ferry.dev/v1\nkind: BatchTransfer\nmetadata: {{name: {name}}}\nspec:\n{body}"),
    )
    .unwrap();
    path
}

/// `count` files of `size` random bytes in `root/in/`, and a manifest copying that
/// directory to `root/out/`.
fn blobs(root: &Path, count: u64, size: usize) -> PathBuf {
    std::fs::create_dir_all(root.join("in")).unwrap();
    for i in 0..count {
        std::fs::write(
            root.join(format!("in/part-{i}.bin")),
            ferry_connectors::testkit::bytes(size, i),
        )
        .unwrap();
    }
    write_manifest(
        root,
        "blobs",
        "  source: {type: file, path: in/}\n  destination: {type: file, path: out/}\n",
    )
}

/// Asserts that every file under `root/in/` arrived in `root/out/` unchanged.
fn assert_copied(root: &Path, count: u64) {
    for i in 0..count {
        let name = format!("part-{i}.bin");
        assert_eq!(
            std::fs::read(root.join("out").join(&name)).unwrap(),
            std::fs::read(root.join("in").join(&name)).unwrap(),
            "{name}"
        );
    }
}

/// The reasons of a transfer's events, in order.
fn reasons(root: &Path, port: u16, name: &str) -> Vec<String> {
    let events = transfers(root, port, &["events", name]);
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_run_killed_with_the_server_finishes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifest = blobs(root, 6, 3 << 20);
    let data = root.join("server");
    let port = free_port();
    let mut server = Served::start(root, &data, port, Some("pause-after-files:2"));

    // A second server on the same data would execute the same runs: refused.
    let second = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(&data)
        .env("FERRY_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another ferry serve"));

    let applied = transfers(root, port, &["apply", "-f", manifest.to_str().unwrap()]);
    assert_eq!(applied["metadata"]["name"], "blobs");
    server.wait_line("failpoint reached");
    let running = transfers(root, port, &["get", "blobs"]);
    assert_eq!(running["status"]["phase"], "Running", "{running}");
    server.kill_9();

    let server = Served::start(root, &data, port, None);
    let done = wait_for(root, port, "blobs", |t| t["status"]["phase"] == "Succeeded");
    assert!(done["status"]["error"].is_null(), "{done}");
    assert_copied(root, 6);
    let runs = transfers(root, port, &["runs", "blobs"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(
        runs.len(),
        1,
        "the same run went on, no second one: {runs:?}"
    );
    assert_eq!(runs[0]["phase"], "Succeeded");
    assert_eq!(runs[0]["attempt"], 2);
    // The resumed attempt moved only what the first had not finished.
    let bytes = runs[0]["stats"]["bytes"].as_u64().unwrap();
    assert!(bytes < 6 * (3 << 20), "moved {bytes} bytes again");
    let reasons = reasons(root, port, "blobs");
    let resumed = reasons.iter().position(|r| r == "RunResumed");
    let succeeded = reasons.iter().position(|r| r == "RunSucceeded");
    assert!(
        resumed.is_some() && resumed < succeeded,
        "resumed, then succeeded: {reasons:?}"
    );
    assert_eq!(reasons.iter().filter(|r| *r == "RunSucceeded").count(), 1);
    drop(server);
}

#[test]
fn sigterm_stops_a_run_that_the_next_start_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifest = blobs(root, 4, 1 << 20);
    let data = root.join("server");
    let port = free_port();
    let mut server = Served::start(root, &data, port, Some("pause-after-files:1"));
    transfers(root, port, &["apply", "-f", manifest.to_str().unwrap()]);
    server.wait_line("failpoint reached");
    // A client following events must not hold the shutdown up.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["transfers", "events", "blobs", "--follow"])
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = follower.stdout.take().unwrap();
    let (tx, followed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = followed.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(first.contains("Created"), "{first}");
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    server.wait_line("stopping");
    assert!(
        server.child.wait().unwrap().success(),
        "a clean exit on SIGTERM"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the follower was never let go");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ended.success(), "the stream ended cleanly: {ended:?}");

    let _server = Served::start(root, &data, port, None);
    wait_for(root, port, "blobs", |t| t["status"]["phase"] == "Succeeded");
    let reasons = reasons(root, port, "blobs");
    let interrupted = reasons.iter().position(|r| r == "RunInterrupted");
    let resumed = reasons.iter().position(|r| r == "RunResumed");
    assert!(
        interrupted.is_some() && interrupted < resumed,
        "interrupted, then resumed: {reasons:?}"
    );
    assert_copied(root, 4);
}

#[test]
fn a_schedule_fires_and_events_can_be_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::write(root.join("in/orders.csv"), "id,amount\n1,2.5\n2,3.5\n").unwrap();
    let port = free_port();
    let _server = Served::start(root, &root.join("server"), port, None);
    let manifest = write_manifest(
        root,
        "minutely",
        "  source: {type: file, path: in/orders.csv}\n  destination: {type: file, path: out/orders.parquet}\n  schedule: \"* * * * *\"\n",
    );
    transfers(root, port, &["apply", "-f", manifest.to_str().unwrap()]);

    let mut follow = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["transfers", "events", "minutely", "--follow"])
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("RunSucceeded");
        seen.push(line);
        if done {
            break;
        }
    }
    follow.kill().unwrap();
    let _ = follow.wait();
    assert!(
        seen.iter().any(|l| l.contains("Created")) && seen.iter().any(|l| l.contains("RunStarted")),
        "{seen:?}"
    );
    let t = transfers(root, port, &["get", "minutely"]);
    assert_eq!(t["status"]["phase"], "Succeeded", "{t}");
    assert_eq!(t["status"]["numRecords"], 2);
    assert!(t["status"]["lastScheduleTime"].is_string());
    let runs = transfers(root, port, &["runs", "minutely"]);
    assert_eq!(runs[0]["trigger"], "schedule");
    assert!(root.join("out/orders.parquet").is_file());
}

#[test]
fn a_secret_is_used_but_never_logged_stored_or_shown() {
    let Some(base) = ferry_connectors::testkit::Remote::S3.unique("serve-secret") else {
        return;
    };
    let endpoint = std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap();
    let (bucket, key) = base.strip_prefix("s3://").unwrap().split_once('/').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::write(root.join("in/orders.csv"), "id,amount\n1,2.5\n2,3.5\n").unwrap();
    // The S3 test server takes any key pair: the secret only has to be used.
    let secret = format!("e2e-secret-{:x}", std::process::id() as u64 * 104_729);
    let data = root.join("server");
    let port = free_port();
    let mut server = Served::start_with(
        root,
        &data,
        port,
        None,
        &[("FERRY_E2E_SECRET", &secret), ("FERRY_LOG", "debug")],
    );
    let manifest = write_manifest(
        root,
        "secretive",
        &format!(
            "  source: {{type: file, path: in/orders.csv}}\n  destination:\n    type: s3\n    bucket: {bucket}\n    key: {key}\n    format: parquet\n    endpoint: {endpoint}\n    storeOptions: {{allow_http: \"true\", secret_access_key: \"ref+env://FERRY_E2E_SECRET\"}}\n"
        ),
    );
    let mut shown = vec![transfers(
        root,
        port,
        &["apply", "-f", manifest.to_str().unwrap()],
    )];
    shown.push(wait_for(root, port, "secretive", |t| {
        t["status"]["phase"] == "Succeeded"
    }));
    shown.push(transfers(root, port, &["runs", "secretive"]));
    shown.push(transfers(root, port, &["events", "secretive"]));
    shown.push(transfers(root, port, &["list"]));
    for answer in &shown {
        assert!(!answer.to_string().contains(&secret), "shown: {answer}");
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut log = String::new();
    while let Ok(line) = server.lines.recv_timeout(Duration::from_secs(5)) {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        log.contains("RunSucceeded") || log.contains("succeeded"),
        "the debug log: {log}"
    );
    assert!(!log.contains(&secret), "the log holds the secret");
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                path.display()
            );
        }
    }
}

#[test]
fn the_client_drives_every_action() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::write(root.join("in/orders.csv"), "id,amount\n1,2.5\n").unwrap();
    let port = free_port();
    let _server = Served::start(root, &root.join("server"), port, None);
    let manifest = write_manifest(
        root,
        "acts",
        "  source: {type: file, path: in/orders.csv}\n  destination: {type: file, path: out/orders.parquet}\n",
    );
    let path = manifest.to_str().unwrap();
    transfers(root, port, &["apply", "-f", path]);
    wait_for(root, port, "acts", |t| t["status"]["phase"] == "Succeeded");
    // Applying again replaces the spec.
    let again = transfers(root, port, &["apply", "-f", path]);
    assert_eq!(again["metadata"]["name"], "acts");

    let suspended = transfers(root, port, &["suspend", "acts"]);
    assert_eq!(suspended["spec"]["suspend"], true);
    let listed = transfers(root, port, &["list", "--phase", "Suspended"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // Listed a page at a time, to the end.
    for name in ["acts-2", "acts-3"] {
        let more = write_manifest(
            root,
            name,
            "  source: {type: file, path: in/orders.csv}\n  destination: {type: file, path: out/more/}\n  suspend: true\n",
        );
        transfers(root, port, &["apply", "-f", more.to_str().unwrap()]);
    }
    let listed = transfers(root, port, &["list", "--chunk-size", "1"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acts", "acts-2", "acts-3"]);
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["transfers", "list", "--chunk-size", "2"])
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "one header, three rows: {text}");
    assert!(lines[0].starts_with("NAME"));
    assert!(lines[3].starts_with("acts-3"), "{text}");
    let resumed = transfers(root, port, &["resume", "acts"]);
    assert_eq!(resumed["spec"]["suspend"], false);
    let run = transfers(root, port, &["run", "acts"]);
    let id = run["id"].as_str().unwrap().to_string();
    wait_for(root, port, "acts", |t| {
        t["status"]["lastCompletedRun"]["id"] == id.as_str()
    });
    let deleted = transfers(root, port, &["delete", "acts", "--cleanup"]);
    assert_eq!(deleted["removed"], serde_json::json!([""]));
    assert!(!root.join("out/orders.parquet").exists());

    // What goes wrong is one line naming it, with the exit code for bad input.
    let client = |args: &[&str], token: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("transfers")
            .args(args)
            .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
            .env("FERRY_TOKEN", token)
            .current_dir(root)
            .output()
            .unwrap()
    };
    let out = client(&["get", "acts"], TOKEN);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("transfer 'acts' not found"));
    let out = client(&["list"], "wrong");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bearer token") && stderr.lines().count() == 1,
        "{stderr}"
    );
    std::fs::write(root.join("bad.yaml"), "apiVersion: ferry.dev/v1\nkind: BatchTransfer\nmetadata: {name: bad}\nspec:\n  source: {type: file, path: in/}\n  schedule: \"61 * * * *\"\n").unwrap();
    let out = client(&["apply", "-f", "bad.yaml"], TOKEN);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.schedule") && stderr.contains("spec.destination"),
        "{stderr}"
    );
}

#[test]
fn a_transfer_suspended_mid_export_resumes_where_it_stopped() {
    let Some(broker) = common::kafka::broker() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let topic = common::kafka::topic_of_rows(root, &broker, 3000);
    let manifest = write_manifest(
        root,
        "topic-backup",
        &format!("  source: {{type: kafka, brokers: '{broker}', topic: {topic}}}\n  destination: {{type: file, path: backup/}}\n"),
    );
    let port = free_port();
    let server = Served::start(
        root,
        &root.join("server"),
        port,
        Some("pause-once-after-files:2"),
    );
    transfers(root, port, &["apply", "-f", manifest.to_str().unwrap()]);
    server.wait_line("failpoint reached");

    // Suspended: the run stops where it is and says so.
    transfers(root, port, &["suspend", "topic-backup"]);
    let runs = transfers(root, port, &["runs", "topic-backup"]);
    assert_eq!(runs[0]["phase"], "Suspended", "{runs}");
    let objects = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .map(|parts| {
                parts
                    .flatten()
                    .filter(|p| p.path().is_dir())
                    .map(|p| std::fs::read_dir(p.path()).unwrap().count())
                    .sum()
            })
            .unwrap_or(0)
    };
    assert_eq!(objects(&root.join("backup")), 2);

    // Resumed: the same run goes on from its checkpoint and every event is there once.
    transfers(root, port, &["resume", "topic-backup"]);
    wait_for(root, port, "topic-backup", |t| {
        t["status"]["phase"] == "Succeeded"
    });
    let runs = transfers(root, port, &["runs", "topic-backup"]);
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["attempt"], 2, "{runs}");
    assert_eq!(objects(&root.join("backup")), 3);
    let reasons = reasons(root, port, "topic-backup");
    for reason in ["RunSuspended", "RunResumed", "RunSucceeded"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }
    let restored = format!("{topic}_restored");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "copy",
            "backup/",
            &format!("kafka://{broker}/{restored}?createTopic=true"),
        ])
        .env("FERRY_STATE_DIR", root.join("state"))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::kafka::read_events(&broker, &restored).len(), 3000);
}
