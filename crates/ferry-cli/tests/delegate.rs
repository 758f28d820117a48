//! Runs delegated to rclone's remote-control daemon by `ferry serve`: routed by size (and
//! kept in-process by `prefer: latency`) with the reason in the run and its events, trees
//! copied local → S3 → Azure → local through rclone, a run cancelled midway whose rclone
//! job stops, a data plane killed midway that re-attaches to the same job, and engines that
//! cannot be reached or refuse ferry's credentials.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::rclone::{shared_rcd, Rcd, PRIVATE_PASSWORD};
use common::service::{assert_same_tree, free_port, write_files, Service};
use common::transfers::{
    apply, count, events, finished, remote, serve_with_engines, wait_event, wait_run,
};
use ferry_connectors::testkit::Remote;
use serde_json::{json, Value};

/// `ferry serve` with `engines` (YAML list items) and the private rcd's password.
fn serve(root: &Path, engines: &str) -> Service {
    serve_with_engines(
        root,
        engines,
        free_port(),
        &[("RCD_PASSWORD", PRIVATE_PASSWORD)],
    )
}

fn file(path: &Path) -> Value {
    json!({"type": "file", "path": format!("{}/", path.display())})
}

#[test]
fn runs_are_routed_by_size_to_rclone_through_s3_and_azure_and_latency_keeps_one_here() {
    let Some((url, user, password)) = shared_rcd() else {
        return;
    };
    let (Some(s3), Some(az)) = (
        Remote::S3.unique("delegate"),
        Remote::Azure.unique("delegate"),
    ) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    write_files(&root.join("in"), 6, 512 * 1024, 7);
    write_files(&root.join("in/nested"), 2, 4096, 8);
    let engine = format!(
        "- {{name: rclone-test, type: rclone, url: '{url}', user: {user}, \
         password: 'env:SHARED_RCD_PASSWORD', delegateAboveBytes: 1MiB}}\n"
    );
    let env = [("SHARED_RCD_PASSWORD", password.as_str())];
    let server = serve_with_engines(root, &engine, free_port(), &env);

    // local → S3 → Azure → local, each 3 MiB: above delegateAboveBytes, so rclone's.
    let hops = [
        ("to-s3", file(&root.join("in")), remote(&s3)),
        ("to-azure", remote(&s3), remote(&az)),
        ("back", remote(&az), file(&root.join("back"))),
    ];
    for (name, source, destination) in hops {
        apply(
            &server,
            name,
            json!({"source": source, "destination": destination}),
        );
        let run = wait_run(&server, name, finished);
        assert_eq!(run["phase"], "Succeeded", "{name}: {run}");
        let execution = &run["stats"]["execution"];
        assert_eq!(execution["engine"], "rclone-test", "{name}: {run}");
        assert_eq!(execution["rule"], "size");
        assert_eq!(
            execution["reason"],
            "3 MiB estimated ≥ delegateAboveBytes 1 MiB of rclone-test"
        );
        assert_eq!(run["stats"]["bytes"], 6 * 512 * 1024 + 2 * 4096, "{run}");
        let events = events(&server, name);
        let routed = events.iter().find(|e| e["reason"] == "RunRouted").unwrap();
        assert_eq!(routed["data"]["engine"], "rclone-test");
        assert_eq!(count(&events, "DelegatedJobSubmitted"), 1, "{events:?}");
    }
    assert_same_tree(&root.join("in"), &root.join("back"));
    let (_, metrics) = server.call("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("ferry_runs_routed_total{engine=\"rclone-test\",rule=\"size\"} 3"),
        "{metrics}"
    );

    // The same tree, asked for low latency: copied here.
    apply(
        &server,
        "quick",
        json!({"source": file(&root.join("in")), "destination": file(&root.join("quick")),
               "execution": {"prefer": "latency"}}),
    );
    let run = wait_run(&server, "quick", finished);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    assert_eq!(run["stats"]["execution"]["engine"], "inProcess");
    assert_eq!(
        run["stats"]["execution"]["reason"],
        "prefer: latency keeps the run in-process"
    );
    assert_eq!(count(&events(&server, "quick"), "DelegatedJobSubmitted"), 0);
    assert_same_tree(&root.join("in"), &root.join("quick"));
}

/// A transfer of sixteen 1 MiB files through `rcd` at 1 MiB/s (16 s), and its run once
/// rclone has moved some of it.
fn slow_run(server: &Service, root: &Path, name: &str) -> Value {
    write_files(&root.join("in"), 16, 1024 * 1024, 3);
    apply(
        server,
        name,
        json!({"source": file(&root.join("in")), "destination": file(&root.join(name)),
               "execution": {"engine": "slow"}}),
    );
    wait_run(server, name, |r| {
        r["stats"]["execution"]["job"]["id"].is_string()
            && r["stats"]["progress"]["bytesDone"].as_u64() > Some(0)
    })
}

/// A private rcd at 1 MiB/s (with `args`), a server whose engine `slow` it is, and the
/// engine's settings (to start the server again).
fn slow_engine(root: &Path, args: &[&str]) -> (Rcd, Service, String) {
    let rcd = Rcd::start_with(root, "1M", args);
    let engine = format!(
        "- {{name: slow, type: rclone, url: '{}', user: ferry, password: 'env:RCD_PASSWORD', pollSeconds: 0.2}}\n",
        rcd.url()
    );
    let server = serve(root, &engine);
    (rcd, server, engine)
}

#[test]
fn a_delegated_run_suspended_or_deleted_midway_stops_its_rclone_job_and_resumes() {
    if shared_rcd().is_none() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (rcd, server, _) = slow_engine(root, &[]);

    let run = slow_run(&server, root, "paused");
    let job = run["stats"]["execution"]["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = server.call("POST", "/v1/transfers/paused/suspend", None);
    assert_eq!(status, 200, "{body}");
    let stopped = wait_event(&server, "paused", "DelegatedJobStopped");
    assert_eq!(stopped["data"]["stopped"], true, "{stopped}");
    // rclone says the job ended without success: stopped, not finished.
    let state = rcd.job(&job);
    assert_eq!(
        (state["finished"].clone(), state["success"].clone()),
        (json!(true), json!(false)),
        "{state}"
    );
    assert_eq!(wait_run(&server, "paused", |_| true)["phase"], "Suspended");

    // Resumed at full speed: a new job (rclone skips what the first one finished).
    rcd.call("core/bwlimit", json!({"rate": "off"}));
    let (status, body) = server.call("POST", "/v1/transfers/paused/resume", None);
    assert_eq!(status, 200, "{body}");
    let run = wait_run(&server, "paused", finished);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    assert_same_tree(&root.join("in"), &root.join("paused"));
    let events = events(&server, "paused");
    assert_eq!(count(&events, "DelegatedJobSubmitted"), 2, "{events:?}");
    assert_ne!(run["stats"]["execution"]["job"]["id"], json!(job));

    // Deleted midway: its job is stopped too.
    rcd.call("core/bwlimit", json!({"rate": "1M"}));
    let run = slow_run(&server, root, "dropped");
    let job = run["stats"]["execution"]["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = server.call("DELETE", "/v1/transfers/dropped", None);
    assert!(status == 200 || status == 204, "{status} {body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = rcd.job(&job);
        if state["finished"] == true {
            assert_eq!(state["success"], false, "{state}");
            break;
        }
        assert!(Instant::now() < deadline, "job {job} still runs: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_data_plane_killed_midway_reattaches_to_the_same_rclone_job() {
    if shared_rcd().is_none() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (rcd, mut server, engine) = slow_engine(root, &[]);
    let run = slow_run(&server, root, "survivor");
    let id = run["id"].as_str().unwrap().to_string();
    let job = run["stats"]["execution"]["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.kill_9();

    // The job goes on without ferry; the restarted server follows it to the end.
    let server = serve(root, &engine);
    let reattached = wait_event(&server, "survivor", "DelegatedJobReattached");
    assert_eq!(reattached["data"]["job"], json!(job), "{reattached}");
    rcd.call("core/bwlimit", json!({"rate": "off"}));
    let run = wait_run(&server, "survivor", finished);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    assert_eq!(run["attempt"], 2, "{run}");
    assert_same_tree(&root.join("in"), &root.join("survivor"));
    // One job for the run, ever.
    assert_eq!(
        count(&events(&server, "survivor"), "DelegatedJobSubmitted"),
        1
    );
    let jobs = rcd.jobs_of(&id);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["id"].to_string(), job);
}

#[test]
fn a_job_rclone_forgot_while_the_data_plane_was_down_is_submitted_again_not_assumed_done() {
    if shared_rcd().is_none() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (rcd, mut server, engine) = slow_engine(
        root,
        &[
            "--rc-job-expire-duration",
            "1s",
            "--rc-job-expire-interval",
            "200ms",
        ],
    );
    let run = slow_run(&server, root, "forgotten");
    let job = run["stats"]["execution"]["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.kill_9();
    // Stopped behind ferry's back, and then forgotten by rclone: the copy is incomplete.
    rcd.call("job/stop", json!({"jobid": job.parse::<i64>().unwrap()}));
    let deadline = Instant::now() + Duration::from_secs(60);
    while rcd.job(&job)["error"] != "job not found" {
        assert!(Instant::now() < deadline, "rclone never forgot job {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(std::fs::read_dir(root.join("forgotten")).map_or(0, |d| d.count()) < 16);
    rcd.call("core/bwlimit", json!({"rate": "off"}));

    let server = serve(root, &engine);
    let run = wait_run(&server, "forgotten", finished);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    let events = events(&server, "forgotten");
    let vanished = events
        .iter()
        .find(|e| e["reason"] == "DelegatedJobVanished")
        .unwrap();
    assert_eq!(vanished["data"]["job"], json!(job));
    assert_eq!(count(&events, "DelegatedJobSubmitted"), 2, "{events:?}");
    assert_same_tree(&root.join("in"), &root.join("forgotten"));
}

#[test]
fn dead_engines_fail_or_fall_back_and_bad_credentials_or_names_are_refused() {
    let Some((url, user, _)) = shared_rcd() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    write_files(&root.join("in"), 2, 1000, 5);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let server = serve(
        root,
        &format!(
            "- {{name: dead, type: rclone, url: '{dead}'}}\n\
             - {{name: dead-but-fallback, type: rclone, url: '{dead}', fallback: inProcess}}\n\
             - {{name: wrong-password, type: rclone, url: '{url}', user: {user}, password: 'env:RCD_PASSWORD'}}\n"
        ),
    );
    let to = |engine: &str| {
        json!({"source": file(&root.join("in")), "destination": file(&root.join(engine)),
               "execution": {"engine": engine}})
    };

    let mut once = to("dead");
    once["maxFailedRetries"] = json!(0);
    apply(&server, "dead", once);
    let run = wait_run(&server, "dead", finished);
    assert_eq!(run["phase"], "Failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("engine dead at {dead} cannot be reached")),
        "{error}"
    );
    assert!(!root.join("dead").exists());

    apply(&server, "dead-but-fallback", to("dead-but-fallback"));
    let run = wait_run(&server, "dead-but-fallback", finished);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    assert_eq!(run["stats"]["execution"]["engine"], "inProcess");
    assert_eq!(run["stats"]["execution"]["rule"], "fallback");
    assert_same_tree(&root.join("in"), &root.join("dead-but-fallback"));

    apply(&server, "wrong-password", to("wrong-password"));
    let run = wait_run(&server, "wrong-password", finished);
    assert_eq!(run["phase"], "Fatal", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("refused ferry's credentials (401)"),
        "{error}"
    );
    assert!(!error.contains(PRIVATE_PASSWORD), "{error}");

    // A missing source fails as it would in-process, before any engine is asked.
    let missing = |engine: &str| {
        json!({"source": file(&root.join("nope")), "destination": file(&root.join("x")),
               "execution": {"engine": engine}, "maxFailedRetries": 0})
    };
    apply(&server, "missing-here", missing("inProcess"));
    apply(&server, "missing-there", missing("dead"));
    let here = wait_run(&server, "missing-here", finished);
    let there = wait_run(&server, "missing-there", finished);
    assert_eq!(there["phase"], here["phase"], "{there}");
    assert_eq!(there["error"], here["error"], "{there}");
    assert!(there["error"].as_str().unwrap().contains("nope"), "{there}");

    // Named engines must exist here and be able to do the transfer.
    for (engine, destination, message) in [
        (
            "nope",
            file(&root.join("x")),
            "no engine named 'nope' here (engines: dead, dead-but-fallback, wrong-password)",
        ),
        (
            "dead",
            json!({"type": "kafka", "brokers": "127.0.0.1:1", "topic": "t"}),
            "engine dead does not take kafka as a destination",
        ),
    ] {
        let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "BatchTransfer",
            "metadata": {"name": "named"},
            "spec": {"source": file(&root.join("in")), "destination": destination,
                     "execution": {"engine": engine}}});
        let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
        assert_eq!(status, 422, "{body}");
        let errors = body.to_string();
        assert!(
            errors.contains("spec.execution.engine") && errors.contains(message),
            "{errors}"
        );
    }
}
