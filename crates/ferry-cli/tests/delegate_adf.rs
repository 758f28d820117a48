//! Runs delegated to Azure Data Factory by `ferry serve`, against `tests/adf/standin.py`: a
//! stateful stand-in for Data Factory, Key Vault and the token endpoint (no emulator of
//! Data Factory exists; this is not Azure). It checks every body ferry sends against the
//! documented shapes in `tests/adf/examples`, expires tokens while ferry holds them, and
//! simulates queued, running, failing and cancelled pipeline runs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::service::{free_port, http, write_files, Service};
use common::transfers::{apply, events, finished, remote, serve_with_engines, wait_run};
use ferry_connectors::testkit::Remote;
use serde_json::{json, Value};

const CLIENT_ID: &str = "0f1e2d3c-ferry-test";
const CLIENT_SECRET: &str = "adf-client-secret-91b2";

struct StandIn {
    child: Child,
    port: u16,
}

impl StandIn {
    /// Tokens live `token_seconds` but are announced as living an hour.
    fn start(token_seconds: f64) -> StandIn {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/adf/standin.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--port",
                "0",
                "--client-id",
                CLIENT_ID,
                "--client-secret",
                CLIENT_SECRET,
            ])
            .args(["--token-seconds", &token_seconds.to_string()])
            .args(["--claimed-token-seconds", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .expect("the stand-in's port")
            .parse()
            .unwrap();
        StandIn { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> Value {
        http(self.port, "GET", "/_standin/state", None).1
    }

    /// Everything made for runs is gone: no pipeline, dataset, linked service or secret.
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.state();
            let left: usize = ["pipelines", "datasets", "linkedservices", "secrets"]
                .iter()
                .map(|k| s[k].as_object().map_or(0, |m| m.len()))
                .sum();
            if left == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "left behind: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine(name: &str, standin: &StandIn, secret_var: &str) -> String {
    let url = standin.url();
    format!(
        "- {{name: {name}, type: azureDataFactory, url: '{url}', loginUrl: '{url}', \
         tenantId: tenant-1, clientId: {CLIENT_ID}, clientSecret: 'env:{secret_var}', \
         subscriptionId: sub-1, resourceGroup: rg-1, factoryName: factory-1, \
         keyVaultUrl: '{url}/vault', keyVaultLinkedService: ferry-key-vault, pollSeconds: 0.2}}\n"
    )
}

fn serve(root: &Path, engines: &str, port: u16) -> Service {
    let env = [
        ("ADF_SECRET", CLIENT_SECRET),
        ("ADF_WRONG_SECRET", "not-the-secret"),
    ];
    serve_with_engines(root, engines, port, &env)
}

fn reasons(server: &Service, name: &str) -> Vec<String> {
    events(server, name)
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect()
}

/// Objects in S3 under `base` + each of `folders`, for the runs to read.
fn sources(root: &Path, base: &str, folders: &[&str]) {
    write_files(&root.join("src"), 3, 2048, 11);
    for folder in folders {
        common::copy_in_ok(root, &["src/", &format!("{base}{folder}/")]);
    }
}

#[test]
fn adf_runs_succeed_fail_cancel_and_reattach_and_leave_nothing_behind() {
    let (Some(s3), Some(az)) = (Remote::S3.unique("adf"), Remote::Azure.unique("adf")) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    sources(root, &s3, &["ok", "fail", "slow", "queue"]);
    // Tokens die after 0.8 s while ferry believes they last an hour: every run outlives
    // its first token.
    let standin = StandIn::start(0.8);
    let engines =
        engine("adf", &standin, "ADF_SECRET") + &engine("adf-wrong", &standin, "ADF_WRONG_SECRET");
    let port = free_port();
    let mut server = serve(root, &engines, port);
    let spec = |folder: &str, engine: &str| {
        json!({"source": remote(&format!("{s3}{folder}/")),
               "destination": remote(&format!("{az}{folder}/")),
               "execution": {"engine": engine}, "maxFailedRetries": 0})
    };

    // Succeeds, with its progress from the Copy activity, through an expired token.
    apply(&server, "ok", spec("ok", "adf"));
    let run = wait_run(&server, "ok", finished);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    assert_eq!(run["stats"]["bytes"], 3 * 1024 * 1024, "{run}");
    assert_eq!(run["stats"]["objects"], 3, "{run}");
    assert_eq!(run["stats"]["execution"]["engine"], "adf");
    standin.assert_clean();
    let state = standin.state();
    assert!(state["expired_refusals"].as_u64() > Some(0), "{state}");
    // Secrets went to the vault, and nowhere else: not in the engine's linked services
    // (the stand-in refuses inline credentials) and not in ferry's events or run.
    let text = format!("{run}{:?}", reasons(&server, "ok"));
    assert!(!text.contains(CLIENT_SECRET));

    // Fails: the factory's error, one line, and nothing left behind.
    apply(&server, "fail", spec("fail", "adf"));
    let run = wait_run(&server, "fail", finished);
    assert_eq!(run["phase"], "Failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with("engine adf job ") && error.contains("The required blob is missing"),
        "{error}"
    );
    standin.assert_clean();

    // Cancelled through ferry while it runs: the pipeline run is cancelled, and cleaned up.
    apply(&server, "slow", spec("slow", "adf"));
    let run = wait_run(&server, "slow", |r| {
        r["stats"]["progress"]["bytesDone"].as_u64() > Some(0)
    });
    let job = run["stats"]["execution"]["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = server.call("POST", "/v1/transfers/slow/suspend", None);
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reasons(&server, "slow").contains(&"DelegatedJobStopped".to_string()) {
        assert!(Instant::now() < deadline, "{:?}", reasons(&server, "slow"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(standin.state()["runs"][&job]["status"], "Cancelled");
    standin.assert_clean();

    // A data plane killed while the run is queued re-attaches to the same pipeline run.
    apply(&server, "queued", spec("queue", "adf"));
    let run = wait_run(&server, "queued", |r| {
        r["stats"]["execution"]["job"]["id"].is_string()
    });
    let job = run["stats"]["execution"]["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.kill_9();
    let server = serve(root, &engines, free_port());
    let run = wait_run(&server, "queued", finished);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    assert_eq!(run["stats"]["execution"]["job"]["id"], json!(job));
    assert!(reasons(&server, "queued").contains(&"DelegatedJobReattached".to_string()));
    // One pipeline run was ever created for it (requests refused for an expired token
    // and sent again do not count).
    let runs = standin.state()["runs"].clone();
    let created: Vec<&Value> = runs
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["pipelineName"].as_str().unwrap().contains("queued"))
        .collect();
    assert_eq!(created.len(), 1, "{runs}");
    standin.assert_clean();

    // Wrong client credentials: fatal, one line, the secret nowhere.
    apply(&server, "wrong", spec("ok", "adf-wrong"));
    let run = wait_run(&server, "wrong", finished);
    assert_eq!(run["phase"], "Fatal", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("signing in as client 0f1e2d3c-ferry-test failed (401): AADSTS7000215"),
        "{error}"
    );
    assert!(!error.contains("not-the-secret"), "{error}");

    // A store Data Factory cannot write here is refused when the transfer is applied.
    let manifest = json!({"apiVersion": "ferry.dev/v1", "kind": "BatchTransfer",
        "metadata": {"name": "to-s3"}, "spec": {"source": remote(&format!("{s3}ok/")),
        "destination": remote(&format!("{s3}copy/")), "execution": {"engine": "adf"}}});
    let (status, body) = server.call("POST", "/v1/transfers", Some(&manifest));
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("engine adf does not take s3 as a destination"),
        "{body}"
    );
}
