//! A StreamTransfer under `ferry serve`: a topic kept landed as JSON lines files while
//! events arrive, through a `kill -9` of the server and a suspend, every event exactly once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::{
    broker, new_topic, produce_rows as produce, send, send_timed, topic_of_rows, Sent,
};
use common::service::{free_port, Service};
use common::transfers::{events, wait_event};
use serde_json::{json, Value};

fn serve(root: &Path, port: u16, failpoint: Option<&str>) -> Service {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(root.join("data"))
        .env("FERRY_STATE_DIR", root.join("state"))
        .env_remove("FERRY_FAILPOINT")
        .current_dir(root);
    if let Some(fp) = failpoint {
        cmd.env("FERRY_FAILPOINT", fp);
    }
    Service::start(cmd, port)
}

/// How many times each id is in the lake's complete files.
fn landed(lake: &Path) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    for path in common::files_in(lake) {
        if path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "json")
        {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let row: Value = serde_json::from_str(line).unwrap();
                *ids.entry(row["id"].as_u64().unwrap()).or_default() += 1;
            }
        }
    }
    ids
}

/// Waits until the lake holds `count` distinct ids; each must be there once.
fn wait_landed(lake: &Path, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ids = landed(lake);
        let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "ids landed more than once: {twice:?}");
        if ids.len() as u64 == count {
            assert_eq!(
                ids.keys().copied().collect::<Vec<_>>(),
                (0..count).collect::<Vec<_>>()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} ids landed",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stream_lands_every_event_once_through_a_kill_and_a_suspend() {
    let Some(broker) = broker() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let topic = topic_of_rows(root, &broker, 100);
    let lake = root.join("lake");
    // Killed at a random point of its first batch: after 1, 2 or 3 of the row batches it
    // writes (one file per partition) were written, before the batch was committed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let failpoint = format!("pause-after-batches:{}", 1 + nanos % 3);
    let mut server = serve(root, free_port(), Some(&failpoint));
    let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "StreamTransfer",
        "metadata": {"name": "orders-lake"},
        "spec": {"source": {"type": "kafka", "brokers": broker, "topic": topic},
                 "destination": {"type": "file", "path": format!("{}/", lake.display()),
                                 "format": "json", "rotateIntervalSeconds": 1}}});
    let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
    assert_eq!(status, 201, "{body}");
    server.wait_line("failpoint reached");
    server.kill_9();
    assert!(landed(&lake).len() < 100);

    // Started again, it finishes that batch over the same offsets, then keeps landing
    // what arrives.
    let mut server = serve(root, free_port(), None);
    wait_landed(&lake, 100);
    produce(root, &broker, &topic, 100, 150);
    wait_landed(&lake, 150);
    let (_, runs) = server.call("GET", "/v1/transfers/orders-lake/runs", None);
    assert_eq!(
        runs.as_array().unwrap().len(),
        1,
        "one long-lived run: {runs}"
    );
    assert_eq!(runs[0]["phase"], "Running", "{runs}");
    // Its status says where it stands: every partition committed up to its high
    // watermark (150 events in all), no lag; and so do the Prometheus gauges.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        let (_, runs) = server.call("GET", "/v1/transfers/orders-lake/runs", None);
        let stream = runs[0]["stats"]["stream"].clone();
        let committed: i64 = stream["partitions"].as_array().map_or(0, |ps| {
            ps.iter().map(|p| p["committed"].as_i64().unwrap()).sum()
        });
        if committed == 150 && stream["lagEvents"] == 0 {
            break stream;
        }
        assert!(Instant::now() < deadline, "{runs}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stream["lagSeconds"], 0.0, "{stream}");
    assert!(stream["batches"].as_u64().unwrap() >= 1, "{stream}");
    let partitions = stream["partitions"].as_array().unwrap();
    assert!(
        partitions.iter().all(|p| p["committed"] == p["high"]),
        "{stream}"
    );
    let (_, metrics) = server.call("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for p in partitions {
        let line = format!(
            "ferry_stream_lag_events{{transfer=\"orders-lake\",partition=\"{}\"}} 0",
            p["partition"]
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }

    // Killed while idle; events arrive while it is down; started again, it goes on.
    server.kill_9();
    produce(root, &broker, &topic, 150, 200);
    let server = serve(root, free_port(), None);
    wait_landed(&lake, 200);

    // Suspended: nothing lands; resumed: the rest does.
    let (status, _) = server.call("POST", "/v1/transfers/orders-lake/suspend", None);
    assert_eq!(status, 200);
    wait_event(&server, "orders-lake", "RunSuspended");
    produce(root, &broker, &topic, 200, 250);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(landed(&lake).len(), 200, "landed while suspended");
    let (status, _) = server.call("POST", "/v1/transfers/orders-lake/resume", None);
    assert_eq!(status, 200);
    wait_landed(&lake, 250);
    let reasons: Vec<Value> = events(&server, "orders-lake")
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert!(!reasons.contains(&json!("RunSucceeded")), "{reasons:?}");
}

#[test]
fn a_stream_transfer_needs_a_topic_no_schedule_and_a_destination_that_keeps_adding() {
    let work = tempfile::tempdir().unwrap();
    let server = serve(work.path(), free_port(), None);
    let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "StreamTransfer",
        "metadata": {"name": "bad-stream"},
        "spec": {"source": {"type": "file", "path": "/data/in/"},
                 "destination": {"type": "postgres", "url": "postgres://h/db", "table": "t"},
                 "schedule": "* * * * *"}});
    let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for field in ["spec.source.type", "spec.schedule", "spec.destination.mode"] {
        assert!(fields.contains(&field), "{field} not in {body}");
    }

    // Files are cut in a directory only, and by a pattern of record time that reads.
    for (destination, field) in [
        (
            json!({"type": "postgres", "url": "postgres://h/db", "table": "t",
                   "mode": "append", "flushSize": 10}),
            "spec.destination.flushSize",
        ),
        (
            json!({"type": "file", "path": "/data/lake/", "format": "parquet",
                   "pathFormat": "dt=%Y-%m-%d/%Q"}),
            "spec.destination.pathFormat",
        ),
    ] {
        let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "StreamTransfer",
            "metadata": {"name": "bad-cut"},
            "spec": {"source": {"type": "kafka", "brokers": "127.0.0.1:9", "topic": "t"},
                     "destination": destination}});
        let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["details"][0]["field"], field, "{body}");
    }
}

/// The stream status of `transfer`'s run once `ready` holds for it.
fn wait_status(server: &Service, transfer: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, runs) = server.call("GET", &format!("/v1/transfers/{transfer}/runs"), None);
        let stream = runs[0]["stats"]["stream"].clone();
        if ready(&stream) {
            return stream;
        }
        assert!(Instant::now() < deadline, "{runs}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Events `ids` in partition 0 at record time `at` (ms).
fn at(ids: std::ops::Range<u64>, at: i64) -> Vec<(Sent, Option<i64>)> {
    ids.map(|i| {
        (
            (0, None, Some(json!({"id": i}).to_string().into_bytes())),
            Some(at),
        )
    })
    .collect()
}

/// The files of a stream of `topic` in partition 0, by name.
fn files(lake: &Path, topic: &str) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(lake.join(format!("topic={topic}/partition=0000")))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_streams_file_stays_open_until_full_or_its_window_is_over() {
    let Some(broker) = broker() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let server = serve(root, free_port(), None);
    let stream = |name: &str, topic: &str, lake: &Path, interval: u64| {
        json!({"apiVersion": "ferry.dev/v1", "kind": "StreamTransfer",
            "metadata": {"name": name},
            "spec": {"source": {"type": "kafka", "brokers": broker, "topic": topic},
                     "destination": {"type": "file", "path": format!("{}/", lake.display()),
                                     "format": "json", "flushSize": 100,
                                     "rotateIntervalSeconds": interval}}})
    };
    // Record times five minutes ahead (brokers refuse more than an hour), in 20-minute
    // windows: theirs is not over by the clock during the test.
    let window = 1_200_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let later = now + 300_000;
    let topic = new_topic(&broker, 1);
    let lake = root.join("held");
    let (status, body) = server.call(
        "POST",
        "/v1/transfers",
        Some(&stream("held", &topic, &lake, 1200)),
    );
    assert_eq!(status, 201, "{body}");

    // Fewer events than a file holds, their window open: they wait, and the status says so.
    send_timed(&broker, &topic, &at(0..10, later));
    let status = wait_status(&server, "held", |s| s["heldEvents"] == 10);
    assert_eq!(status["lagEvents"], 10, "{status}");
    assert!(
        files(&lake, &topic).is_empty(),
        "{:?}",
        files(&lake, &topic)
    );

    // A full file is written; the rest waits.
    send_timed(&broker, &topic, &at(10..110, later));
    wait_landed(&lake, 100);
    wait_status(&server, "held", |s| s["heldEvents"] == 10);
    assert_eq!(files(&lake, &topic), ["00000000000000000000.jsonl"]);

    // An event of the next window closes the open file.
    send_timed(
        &broker,
        &topic,
        &at(110..111, (later / window + 1) * window),
    );
    wait_landed(&lake, 110);
    wait_status(&server, "held", |s| s["heldEvents"] == 1);
    assert_eq!(
        files(&lake, &topic),
        ["00000000000000000000.jsonl", "00000000000000000100.jsonl"]
    );
    // The transfer shows where its stream stands.
    let (_, transfer) = server.call("GET", "/v1/transfers/held", None);
    assert_eq!(transfer["status"]["stream"]["heldEvents"], 1, "{transfer}");
    assert_eq!(transfer["status"]["stream"]["lagEvents"], 1, "{transfer}");

    // Deleted with cleanup, it removes every file it wrote (not only its last batch's),
    // leaving others alone, and forgets its positions: created again, it starts over.
    std::fs::write(
        lake.join(format!("topic={topic}/partition=0000/notes.txt")),
        "mine",
    )
    .unwrap();
    let (status, body) = server.call("DELETE", "/v1/transfers/held?cleanup=true", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(files(&lake, &topic), ["notes.txt"], "{body}");
    let (status, body) = server.call(
        "POST",
        "/v1/transfers",
        Some(&stream("held", &topic, &lake, 1200)),
    );
    assert_eq!(status, 201, "{body}");
    wait_landed(&lake, 110);

    // A partition that goes quiet still closes its file once the window is over by the
    // clock, not before: 5-second windows, events 3 seconds ahead, nothing after them.
    let quiet = new_topic(&broker, 1);
    let quiet_lake = root.join("quiet");
    let (status, body) = server.call(
        "POST",
        "/v1/transfers",
        Some(&stream("quiet", &quiet, &quiet_lake, 5)),
    );
    assert_eq!(status, 201, "{body}");
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3000;
    send_timed(&broker, &quiet, &at(0..5, soon));
    wait_landed(&quiet_lake, 5);
    // Events with a new field: their file has its column, and an event says so.
    let wider: Vec<(Sent, Option<i64>)> = (5..8)
        .map(|i| {
            let value = json!({"id": i, "email": format!("u{i}@example.com")});
            ((0, None, Some(value.to_string().into_bytes())), Some(now))
        })
        .collect();
    send_timed(&broker, &quiet, &wider);
    wait_landed(&quiet_lake, 8);
    let changed = wait_event(&server, "quiet", "SchemaChanged");
    assert_eq!(changed["data"]["added"], json!(["email"]), "{changed}");
    let window_end = (soon / 5000 + 1) * 5000;
    let first = format!("topic={quiet}/partition=0000/00000000000000000000.jsonl");
    let written = std::fs::metadata(quiet_lake.join(first))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        written >= window_end,
        "written at {written}, before its window ended at {window_end}"
    );
    let status = wait_status(&server, "quiet", |s| s["lagEvents"] == 0);
    assert_eq!(status["heldEvents"], 0, "{status}");
}

/// Each snapshot directory under `lake/snapshots/` and the (key, version) rows in it.
fn snapshots(lake: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for dir in std::fs::read_dir(lake.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let mut rows = BTreeMap::new();
        for path in common::files_in(&dir.path()) {
            if path.extension().is_some_and(|e| e == "jsonl") {
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let row: Value = serde_json::from_str(line).unwrap();
                    let key = row["key"].as_str().unwrap().to_string();
                    assert!(rows.insert(key, row["version"].as_u64().unwrap()).is_none());
                }
            }
        }
        out.insert(dir.file_name().to_string_lossy().into_owned(), rows);
    }
    out
}

#[test]
fn a_stream_with_create_snapshot_writes_compacted_snapshots_beside_every_event() {
    let Some(broker) = broker() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let server = serve(root, free_port(), None);
    let topic = new_topic(&broker, 2);
    // Ten keys in three versions; keys 3 and 7 end with a tombstone.
    let mut expected = BTreeMap::new();
    let mut events: Vec<Sent> = Vec::new();
    for version in 0..3u64 {
        for k in 0..10u64 {
            let key = format!("k{k}");
            let value = if version == 2 && (k == 3 || k == 7) {
                expected.remove(&key);
                None
            } else {
                expected.insert(key.clone(), version * 10 + k);
                Some(
                    json!({"key": key, "version": version * 10 + k})
                        .to_string()
                        .into_bytes(),
                )
            };
            events.push(((k % 2) as i32, Some(key), value));
        }
    }
    send(&broker, &topic, &events);
    let lake = root.join("lake");
    let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "StreamTransfer",
        "metadata": {"name": "compacted"},
        "spec": {"source": {"type": "kafka", "brokers": broker, "topic": topic,
                            "createSnapshot": true},
                 "destination": {"type": "file", "path": format!("{}/", lake.display()),
                                 "format": "json", "rotateIntervalSeconds": 1,
                                 "snapshotIntervalSeconds": 1}}});
    let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
    assert_eq!(status, 201, "{body}");
    // Every event with a value lands in the stream's files, and a snapshot taken once
    // they are committed holds each key's last value only.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = snapshots(&lake).values().any(|rows| *rows == expected);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", snapshots(&lake));
        std::thread::sleep(Duration::from_millis(200));
    }
    let files: usize = ["partition=0000", "partition=0001"]
        .iter()
        .flat_map(|p| {
            std::fs::read_dir(lake.join(format!("topic={topic}/{p}")))
                .unwrap()
                .flatten()
        })
        .map(|f| std::fs::read_to_string(f.path()).unwrap().lines().count())
        .sum();
    assert_eq!(files, 28, "every event with a value, once");
    wait_event(&server, "compacted", "StreamSnapshot");

    // Into a table, a compacted view is an upsert table.
    let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "StreamTransfer",
        "metadata": {"name": "compacted-table"},
        "spec": {"source": {"type": "kafka", "brokers": broker, "topic": topic,
                            "createSnapshot": true},
                 "destination": {"type": "postgres", "url": "postgres://h/db", "table": "t",
                                 "mode": "append"}}});
    let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["details"][0]["field"], "spec.source.createSnapshot",
        "{body}"
    );
}

#[test]
fn ferry_run_keeps_a_stream_going_in_the_foreground_until_interrupted() {
    let Some(broker) = broker() else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let topic = topic_of_rows(root, &broker, 100);
    let lake = root.join("lake");
    let manifest = root.join("stream.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ferry.dev/v1\nkind: StreamTransfer\nmetadata: {{name: fg}}\nspec:\n  source: {{type: kafka, brokers: \"{broker}\", topic: {topic}}}\n  destination: {{type: file, path: \"{}/\", format: json, rotateIntervalSeconds: 1}}\n",
            lake.display()
        ),
    )
    .unwrap();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["run", "--state-dir"])
            .arg(root.join("state"))
            .arg(&manifest)
            .env_remove("FERRY_FAILPOINT")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let interrupt = |child: std::process::Child| {
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let child = start();
    wait_landed(&lake, 100);
    produce(root, &broker, &topic, 100, 150);
    wait_landed(&lake, 150);
    let out = interrupt(child);
    assert!(out.contains("batch: "), "{out}");
    // Started again, it goes on from where it stopped.
    produce(root, &broker, &topic, 150, 170);
    let child = start();
    wait_landed(&lake, 170);
    interrupt(child);

    // The service's checks, every bad field at once.
    std::fs::write(
        &manifest,
        "apiVersion: ferry.dev/v1\nkind: StreamTransfer\nmetadata: {name: bad}\nspec:\n  source: {type: file, path: /data/in/}\n  destination: {type: file, path: /data/out/}\n  schedule: '* * * * *'\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("run")
        .arg(&manifest)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("spec.source.type") && err.contains("spec.schedule"),
        "{err}"
    );
}
