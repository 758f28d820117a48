//! A control plane speaking the Dataplane Signaling protocol drives a `ferry dataplane`
//! process: it starts, suspends, resumes, terminates and completes flows, and hears of
//! them at its callback address.

mod common;

use std::path::Path;
use std::process::Command;

use common::service::{assert_same_tree, free_port, write_files, Callbacks, Service};
use serde_json::{json, Value};

fn dataplane(root: &Path, failpoint: Option<&str>) -> Service {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["dataplane", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(root.join("dp"))
        .current_dir(root)
        .env_remove("FERRY_CONTROL_PLANE")
        .env_remove("FERRY_FAILPOINT");
    if let Some(fp) = failpoint {
        cmd.env("FERRY_FAILPOINT", fp);
    }
    Service::start(cmd, port)
}

fn start_message(process: &str, message: &str, callback: u16, src: &str, dst: &str) -> Value {
    json!({
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "messageId": message,
        "participantId": "provider",
        "counterPartyId": "consumer",
        "dataspaceContext": "test",
        "processId": process,
        "agreementId": "agreement-1",
        "datasetId": "dataset-1",
        "callbackAddress": format!("http://127.0.0.1:{callback}/signaling"),
        "transferType": {"destinationType": "file", "flowType": "PUSH"},
        "sourceDataAddress": {"@type": "DataAddress", "type": "file", "endpoint": src},
        "dataAddress": {"@type": "DataAddress", "endpointType": "file",
                        "endpointProperties": [{"name": "path", "value": dst}]}
    })
}

#[test]
fn a_connector_starts_suspends_resumes_terminates_and_completes_flows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_files(&root.join("in"), 12, 200_000, 0);
    let dp = dataplane(root, Some("pause-once-after-files:3"));
    let mut cp = Callbacks::start();

    // Start: the flow moves data until the third file, where it hangs.
    let start = start_message("process-1", "m-1", cp.port, "in/", "out/");
    let (status, flow) = dp.call("POST", "/dataflows/start", Some(&start));
    assert_eq!(status, 200, "{flow}");
    assert_eq!(flow["state"], "STARTED");
    assert_eq!(flow["processId"], "process-1");
    assert!(flow["dataplaneId"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    dp.wait_line("failpoint reached");
    let started = cp.wait("/transfers/process-1/dataflow/started");
    assert_eq!(started["state"], "STARTED");

    // The same message again gets the same answer; another start of the process is refused.
    let (status, again) = dp.call("POST", "/dataflows/start", Some(&start));
    assert_eq!(
        (status, &again["state"]),
        (200, &json!("STARTED")),
        "{again}"
    );
    let other = start_message("process-1", "m-2", cp.port, "in/", "out/");
    let (status, refused) = dp.call("POST", "/dataflows/start", Some(&other));
    assert_eq!(status, 409, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("process-1"));

    // Suspend: it stops, keeps its checkpoint, holds no lease.
    let (status, suspended) = dp.call(
        "POST",
        "/dataflows/process-1/suspend",
        Some(&json!({"reason": "maintenance"})),
    );
    assert_eq!(
        (status, &suspended["state"]),
        (200, &json!("SUSPENDED")),
        "{suspended}"
    );
    let (_, st) = dp.call("GET", "/dataflows/process-1/status", None);
    assert_eq!(st["state"], "SUSPENDED", "{st}");
    assert_eq!(st["run"]["phase"], "Suspended", "{st}");
    assert!(st["run"].get("owner").is_none_or(Value::is_null), "{st}");
    let (status, _) = dp.call("POST", "/dataflows/process-1/suspend", None);
    assert_eq!(status, 200, "suspending twice is harmless");

    // Resume: it continues from its checkpoint and completes.
    let (status, resumed) = dp.call("POST", "/dataflows/process-1/resume", None);
    assert_eq!(
        (status, &resumed["state"]),
        (200, &json!("STARTED")),
        "{resumed}"
    );
    let completed = cp.wait("/transfers/process-1/dataflow/completed");
    assert_eq!(completed["state"], "COMPLETED", "{completed}");
    assert_same_tree(&root.join("in"), &root.join("out"));
    let (_, st) = dp.call("GET", "/dataflows/process-1", None);
    assert_eq!(st["state"], "COMPLETED", "{st}");
    let (_, events) = dp.call(
        "GET",
        &format!("/v1/transfers/{}/events", st["transfer"].as_str().unwrap()),
        None,
    );
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for reason in ["RunStarted", "RunSuspended", "RunResumed", "RunSucceeded"] {
        assert!(reasons.contains(&reason), "{reason} in {reasons:?}");
    }
    let (status, done) = dp.call("POST", "/dataflows/process-1/completed", None);
    assert_eq!(
        (status, &done["state"]),
        (200, &json!("COMPLETED")),
        "{done}"
    );
    let (status, _) = dp.call("POST", "/dataflows/process-1/terminate", None);
    assert_eq!(status, 409, "a completed flow stays completed");

    // Terminate a flow that cannot reach its destination and keeps retrying.
    let mut unreachable = start_message("process-2", "m-3", cp.port, "in/", "x");
    unreachable["dataAddress"] = json!({"type": "s3", "bucket": "b", "key": "out/",
        "endpoint": "http://127.0.0.1:9", "storeOptions": {"allow_http": "true",
        "skip_signature": "true"}});
    let (status, flow) = dp.call("POST", "/dataflows/start", Some(&unreachable));
    assert_eq!(status, 200, "{flow}");
    let (status, ended) = dp.call(
        "POST",
        "/dataflows/process-2/terminate",
        Some(&json!({"reason": "contract ended"})),
    );
    assert_eq!(
        (status, &ended["state"]),
        (200, &json!("TERMINATED")),
        "{ended}"
    );
    assert!(
        ended["error"].as_str().unwrap().contains("contract ended"),
        "{ended}"
    );
    let (status, _) = dp.call("POST", "/dataflows/process-2/resume", None);
    assert_eq!(status, 409, "a terminated flow stays terminated");
    let (status, again) = dp.call("POST", "/dataflows/process-2/terminate", None);
    assert_eq!((status, &again["state"]), (200, &json!("TERMINATED")));

    // Prepare, then start with another message: the prepared flow runs.
    let prepare = start_message("process-3", "m-4", cp.port, "in/", "out3/");
    let (status, prepared) = dp.call("POST", "/dataflows/prepare", Some(&prepare));
    assert_eq!(
        (status, &prepared["state"]),
        (200, &json!("PREPARED")),
        "{prepared}"
    );
    let (_, st) = dp.call("GET", "/dataflows/process-3/status", None);
    assert_eq!(st["state"], "PREPARED");
    let start3 = start_message("process-3", "m-5", cp.port, "in/", "out3/");
    let (status, _) = dp.call("POST", "/dataflows/start", Some(&start3));
    assert_eq!(status, 200);
    cp.wait("/transfers/process-3/dataflow/completed");
    assert_same_tree(&root.join("in"), &root.join("out3"));

    // A flow that cannot succeed is reported as errored, even to a control plane that
    // fails the first two deliveries.
    let mut flaky = Callbacks::failing_first(2);
    let missing = start_message("process-5", "m-7", flaky.port, "nowhere/", "out5/");
    let (status, _) = dp.call("POST", "/dataflows/start", Some(&missing));
    assert_eq!(status, 200);
    let errored = flaky.wait("/transfers/process-5/dataflow/errored");
    assert_eq!(errored["state"], "TERMINATED", "{errored}");
    assert!(
        errored["error"].as_str().unwrap().contains("nowhere"),
        "{errored}"
    );
    assert!(
        flaky
            .seen
            .iter()
            .any(|(p, _)| p.ends_with("/dataflow/started")),
        "started came first: {:?}",
        flaky.seen
    );

    // Bad messages name the field at fault; unknown flows are 404.
    let (status, bad) = dp.call("POST", "/dataflows/start", Some(&json!({"messageId": "m"})));
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("processId"),
        "{bad}"
    );
    let mut wrong = start_message("process-4", "m-6", cp.port, "in/", "out4/");
    wrong["dataAddress"]["endpointType"] = json!("ftp");
    let (status, bad) = dp.call("POST", "/dataflows/start", Some(&wrong));
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["details"][0]["field"], "dataAddress.type", "{bad}");
    let (status, bad) = dp.call("POST", "/dataflows/start", Some(&json!("not a message")));
    assert_eq!(status, 400, "{bad}");
    let (status, _) = dp.call("GET", "/dataflows/nope/status", None);
    assert_eq!(status, 404);
    let (status, _) = dp.call("POST", "/dataflows/nope/suspend", None);
    assert_eq!(status, 404);
}

#[test]
fn a_topic_export_suspended_through_signaling_resumes_where_it_stopped() {
    let Some(broker) = common::kafka::broker() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let topic = common::kafka::topic_of_rows(root, &broker, 3000);

    // The export stops after its second object (of three partitions' objects).
    let dp = dataplane(root, Some("pause-once-after-files:2"));
    let mut cp = Callbacks::start();
    let mut start = start_message("process-k", "m-k", cp.port, "unused", "export/");
    start["sourceDataAddress"] = json!({"@type": "DataAddress", "type": "kafka",
        "endpoint": broker, "topic": topic});
    let (status, flow) = dp.call("POST", "/dataflows/start", Some(&start));
    assert_eq!(status, 200, "{flow}");
    dp.wait_line("failpoint reached");
    let (status, suspended) = dp.call("POST", "/dataflows/process-k/suspend", None);
    assert_eq!(
        (status, &suspended["state"]),
        (200, &json!("SUSPENDED")),
        "{suspended}"
    );
    let before = objects(&root.join("export"));
    assert_eq!(
        before.len(),
        2,
        "two objects finished before the suspension"
    );
    let events_before: usize = before.iter().map(|o| events_in(o).len()).sum();

    let (status, resumed) = dp.call("POST", "/dataflows/process-k/resume", None);
    assert_eq!(
        (status, &resumed["state"]),
        (200, &json!("STARTED")),
        "{resumed}"
    );
    let completed = cp.wait("/transfers/process-k/dataflow/completed");
    assert_eq!(completed["state"], "COMPLETED", "{completed}");

    // Every event once: 3,000 offsets, none twice, in the three partitions' objects.
    let mut seen = std::collections::BTreeSet::new();
    for object in objects(&root.join("export")) {
        let p: i32 = object
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()["partition=".len()..]
            .parse()
            .unwrap();
        for offset in events_in(&object) {
            assert!(
                seen.insert((p, offset)),
                "partition {p} offset {offset} twice"
            );
        }
    }
    assert_eq!(seen.len(), 3000);
    let (_, st) = dp.call("GET", "/dataflows/process-k", None);
    // The resumed attempt counts what it moved itself, as for files.
    assert_eq!(
        st["run"]["stats"]["numRecords"],
        3000 - events_before,
        "{st}"
    );
}

/// The offsets of the events in one exported object.
fn events_in(object: &Path) -> Vec<i64> {
    let data = std::fs::read(object).unwrap();
    let mut reader = ferry_connectors::kafka::container::EventReader::new(&data[..]).unwrap();
    let mut out = Vec::new();
    while let Some(e) = reader.next_event().unwrap() {
        out.push(e.offset);
    }
    out
}

/// The events objects under an export directory.
fn objects(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for part in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if part.path().is_dir() {
            for f in std::fs::read_dir(part.path()).unwrap().flatten() {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// Rows in the JSON lines files under `dir`.
fn rows_under(dir: &Path) -> usize {
    common::files_in(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

#[test]
fn a_stream_flow_keeps_landing_what_arrives_until_it_is_terminated() {
    let Some(broker) = common::kafka::broker() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let topic = common::kafka::topic_of_rows(root, &broker, 100);
    let dp = dataplane(root, None);
    let cp = Callbacks::start();
    let mut start = start_message("process-s", "m-s", cp.port, "unused", "lake/");
    start["sourceDataAddress"] = json!({"@type": "DataAddress", "type": "kafka",
        "endpoint": broker, "topic": topic});
    start["dataAddress"]["endpointProperties"] = json!([
        {"name": "path", "value": "lake/"}, {"name": "format", "value": "json"},
        {"name": "rotateIntervalSeconds", "value": 1}]);
    start["properties"] = json!({"ferry.stream": true});
    let (status, flow) = dp.call("POST", "/dataflows/start", Some(&start));
    assert_eq!(status, 200, "{flow}");
    let wait_rows = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while rows_under(&root.join("lake")) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} rows",
                rows_under(&root.join("lake"))
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(rows_under(&root.join("lake")), n);
    };
    wait_rows(100);
    // A stream's flow stays STARTED and lands what arrives next.
    common::kafka::produce_rows(root, &broker, &topic, 100, 150);
    wait_rows(150);
    let (_, st) = dp.call("GET", "/dataflows/process-s/status", None);
    assert_eq!(st["state"], "STARTED", "{st}");
    let (status, ended) = dp.call("POST", "/dataflows/process-s/terminate", Some(&json!({})));
    assert_eq!(status, 200, "{ended}");
    let (_, st) = dp.call("GET", "/dataflows/process-s/status", None);
    assert_eq!(st["state"], "TERMINATED", "{st}");
}
