//! Pipelines through a real `ferry serve`, driven by `ferry pipelines`: a file drop waited
//! for, loaded into PostgreSQL and counted, a summary exported to S3 as Parquet, a command
//! whose progress is inferred, a handled failure with its branch; the server killed with
//! SIGKILL mid-pipeline finishes it without redoing finished tasks. Then retries, timeouts,
//! missing programs, secrets and validation; registered task templates.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_connectors::testkit::{unique_name, Remote, TestPostgres};
use serde_json::Value;

mod common;

use common::service::{free_port, Service, TOKEN};

fn serve(root: &Path, port: u16, env: &[(&str, &str)]) -> Service {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(root.join("server"))
        .env("FERRY_STATE_DIR", root.join("state"))
        .env_remove("FERRY_FAILPOINT")
        .envs(env.iter().copied())
        .current_dir(root);
    Service::start(cmd, port)
}

/// `ferry pipelines ARGS` against the server on `port`: exit code, stdout, stderr.
fn pipelines(root: &Path, port: u16, args: &[&str]) -> (i32, String, String) {
    client(root, port, "pipelines", args)
}

/// `ferry COMMAND ARGS` against the server on `port`: exit code, stdout, stderr.
fn client(root: &Path, port: u16, command: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg(command)
        .args(args)
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_TOKEN", TOKEN)
        .current_dir(root)
        .output()
        .expect("run ferry pipelines");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pipelines_json(root: &Path, port: u16, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = pipelines(root, port, &all);
    assert_eq!(code, 0, "ferry pipelines {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Polls the run until `done` holds (progress has no event to wait for).
fn wait_run(server: &Service, pipeline: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, run) =
            server.call("GET", &format!("/v1/pipelines/{pipeline}/runs/{id}"), None);
        assert_eq!(status, 200, "{run}");
        if done(&run) {
            return run;
        }
        if Instant::now() > deadline {
            let (_, events) = server.call("GET", &format!("/v1/pipelines/{pipeline}/events"), None);
            panic!("the run never got there: {run:#}\n{events:#}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {run:#}"))
}

#[test]
fn a_pipeline_waits_for_a_drop_loads_checks_exports_and_survives_a_killed_server() {
    let (Some(pg), Some(lake)) = (TestPostgres::get(), Remote::S3.unique("pipeline")) else {
        return;
    };
    let endpoint = std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap();
    let (bucket, prefix) = lake.strip_prefix("s3://").unwrap().split_once('/').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("drop")).unwrap();
    let table = unique_name("orders").replace('-', "_");
    let url = pg.url("ferry");
    let manifest = format!(
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {{name: daily-orders}}
spec:
  params:
    day: {{default: "2026-12-04"}}
  maxParallel: 3
  tasks:
    - name: load
      waitFor: {{objects: {{address: drop/, glob: "*.csv", marker: _SUCCESS}}, pollSeconds: 1, timeoutSeconds: 300}}
      transfer:
        source: {{type: file, path: drop/, format: csv}}
        destination: {{type: postgres, url: "{url}", table: {table}, mode: overwrite}}
      check: {{rowCount: {{source: drop/, destination: "{url}?table={table}"}}}}
    - name: summary
      dependsOn: [{{task: load}}]
      transfer:
        source: {{type: postgres, url: "{url}", query: "SELECT country, count(*) AS orders, sum(amount) AS amount FROM {table} GROUP BY country"}}
        destination: {{type: s3, bucket: {bucket}, key: "{prefix}${{params.day}}/summary.parquet", endpoint: "{endpoint}"}}
    - name: crunch
      dependsOn: [{{task: load}}]
      command:
        argv: [sh, -c, 'echo "crunching 50%"; while [ ! -e gate ]; do sleep 0.1; done; echo "crunching 100%"; echo "done ${{params.day}}"']
        progress: {{stdoutRegex: '(\d+)%'}}
    - name: probe
      dependsOn: [{{task: load}}]
      onFailure: handled
      command: {{argv: [sh, -c, 'echo "no partner feed today" >&2; exit 3']}}
    - name: without-partner
      dependsOn: [{{task: probe, when: failed}}]
      command: {{argv: [sh, -c, 'echo fallback > fallback.txt']}}
    - name: with-partner
      dependsOn: [{{task: probe}}]
      command: {{argv: ["true"]}}
"#
    );
    std::fs::write(root.join("daily.yaml"), manifest).unwrap();
    let port = free_port();
    let mut server = serve(root, port, &[]);
    let (code, out, err) = pipelines(root, port, &["apply", "-f", "daily.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "pipeline/daily-orders created");
    let started = pipelines_json(root, port, &["run", "daily-orders", "-p", "day=2026-12-04"]);
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(started["params"]["day"], "2026-12-04");

    // Nothing to load yet: the task waits, and says what it sees.
    let waiting = wait_run(&server, "daily-orders", &id, |r| {
        task(r, "load")["condition"].is_string()
    });
    assert_eq!(task(&waiting, "load")["phase"], "Waiting", "{waiting:#}");
    assert_eq!(
        task(&waiting, "load")["condition"],
        "0 of 1 objects under drop/, no _SUCCESS"
    );
    std::fs::write(
        root.join("drop/a.csv"),
        "id,country,amount\n1,DE,10.5\n2,FR,20\n3,DE,30\n",
    )
    .unwrap();
    std::fs::write(root.join("drop/b.csv"), "id,country,amount\n4,IT,7\n").unwrap();
    std::fs::write(root.join("drop/_SUCCESS"), "").unwrap();

    // The command reports half way and waits at its gate: the server dies there.
    let half = wait_run(&server, "daily-orders", &id, |r| {
        task(r, "crunch")["progress"]["fraction"].as_f64() == Some(0.5)
    });
    assert_eq!(task(&half, "load")["phase"], "Succeeded", "{half:#}");
    server.kill_9();
    let mut server = serve(root, port, &[]);
    std::fs::write(root.join("gate"), "").unwrap();
    wait_run(&server, "daily-orders", &id, |r| {
        r["finishedAt"].is_string()
    });

    let done = pipelines_json(root, port, &["runs", "daily-orders", &id]);
    assert_eq!(done["phase"], "Succeeded", "{done:#}");
    let load = task(&done, "load");
    assert_eq!(
        (load["phase"].as_str(), load["attempt"].as_u64()),
        (Some("Succeeded"), Some(1))
    );
    assert_eq!(load["stats"]["numRecords"], 4);
    assert_eq!(
        load["condition"],
        format!("4 rows at drop/, 4 at {url}?table={table}")
    );
    assert_eq!(
        pg.sql("ferry", &format!("SELECT count(*) FROM {table}")),
        "4"
    );
    let summary = task(&done, "summary");
    assert_eq!(summary["phase"], "Succeeded");
    assert_eq!(summary["stats"]["numRecords"], 3, "{summary:#}");
    let crunch = task(&done, "crunch");
    assert_eq!(crunch["phase"], "Succeeded");
    let tail = crunch["stats"]["command"]["stdoutTail"].as_array().unwrap();
    assert_eq!(tail.last().unwrap(), "done 2026-12-04", "{crunch:#}");
    let probe = task(&done, "probe");
    assert_eq!(probe["phase"], "Failed");
    assert_eq!(probe["handled"], true);
    assert_eq!(
        probe["error"],
        "command sh exited with code 3: no partner feed today"
    );
    assert_eq!(task(&done, "without-partner")["phase"], "Succeeded");
    assert_eq!(task(&done, "with-partner")["phase"], "Skipped");
    assert_eq!(
        std::fs::read_to_string(root.join("fallback.txt")).unwrap(),
        "fallback\n"
    );

    // Finished tasks were not run again after the restart: one run of the load, one start.
    let (_, runs) = server.call("GET", &format!("/v1/transfers/{id}-load/runs"), None);
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
    let events = pipelines_json(root, port, &["events", "daily-orders"]);
    let started_load = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "TaskStarted" && e["data"]["task"] == "load")
        .count();
    assert_eq!(started_load, 1, "{events:#}");

    // The summary is in the lake, under the parameter's day.
    let back = root.join("back");
    let copied = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["copy", &format!("{lake}2026-12-04/summary.parquet")])
        .arg(back.join("summary.csv"))
        .env("AWS_ENDPOINT_URL", &endpoint)
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let csv = std::fs::read_to_string(back.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("DE,2,40.5")), "{csv}");

    let (code, out, _) = pipelines(root, port, &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("daily-orders") && out.contains("Succeeded"),
        "{out}"
    );
    assert!(server.terminate());
}

#[test]
fn tasks_retry_time_out_name_what_failed_and_never_show_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let secret = format!("pl-secret-{:x}", std::process::id() as u64 * 7919);
    let manifest = r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: faults}
spec:
  tasks:
    - name: flaky
      retries: {count: 2, backoffSeconds: 1}
      command: {argv: [sh, -c, 'n=$(cat tries 2>/dev/null || echo 0); echo $((n+1)) > tries; [ "$n" -ge 1 ]']}
    - name: missing
      command: {argv: [no-such-program-ferry, --version]}
    - name: never
      waitFor: {objects: {address: nothing-here/, minCount: 2}, pollSeconds: 1, timeoutSeconds: 2}
      command: {argv: ["true"]}
    - name: talkative
      onFailure: continue
      command:
        argv: [sh, -c, 'echo "token is $API_TOKEN"; echo "bad token $API_TOKEN" >&2; exit 1']
        env: {API_TOKEN: "ref+env://FERRY_PL_SECRET"}
"#;
    std::fs::write(root.join("faults.yaml"), manifest).unwrap();
    let port = free_port();
    let mut server = serve(root, port, &[("FERRY_PL_SECRET", &secret)]);
    assert_eq!(pipelines(root, port, &["apply", "-f", "faults.yaml"]).0, 0);
    let (code, out, _) = pipelines(root, port, &["run", "faults", "--wait"]);
    assert_eq!(code, 1, "a failed run exits 1: {out}");
    let runs = pipelines_json(root, port, &["runs", "faults"]);
    let run = &runs[0];
    assert_eq!(run["phase"], "Failed", "{run:#}");

    let flaky = task(run, "flaky");
    assert_eq!(
        (flaky["phase"].as_str(), flaky["attempt"].as_u64()),
        (Some("Succeeded"), Some(2))
    );
    let missing = task(run, "missing");
    assert_eq!(missing["phase"], "Failed");
    assert_eq!(
        missing["error"],
        "command no-such-program-ferry: not found on this data plane's PATH"
    );
    let never = task(run, "never");
    assert_eq!(never["phase"], "Failed");
    assert_eq!(
        never["error"],
        "waitFor did not hold within 2 s; last saw: 0 of 2 objects under nothing-here/"
    );
    let talkative = task(run, "talkative");
    assert_eq!(
        talkative["error"],
        "command sh exited with code 1: bad token ***"
    );
    assert_eq!(
        talkative["stats"]["command"]["stdoutTail"][0],
        "token is ***"
    );
    // The run's error names every unhandled failure.
    let error = run["error"].as_str().unwrap();
    for name in ["missing:", "never:", "talkative:"] {
        assert!(error.contains(name), "{error}");
    }
    let events = pipelines_json(root, port, &["events", "faults"]);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "TaskRetrying" && e["data"]["task"] == "flaky"));
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "ConditionTimedOut"));

    // The secret is nowhere: not in answers, events, or the server's log.
    let (_, transfers) = server.call("GET", "/v1/transfers", None);
    for shown in [run.to_string(), events.to_string(), transfers.to_string()] {
        assert!(!shown.contains(&secret));
    }
    assert!(server.terminate());
    let log: Vec<String> = server.lines.try_iter().collect();
    assert!(!log.iter().any(|l| l.contains(&secret)));

    // Bad manifests: every problem at once, each naming its field.
    std::fs::write(
        root.join("bad.yaml"),
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: bad}
spec:
  tasks:
    - {name: a, dependsOn: [{task: b}], command: {argv: ["true"]}}
    - {name: b, dependsOn: [{task: a}], command: {argv: ["true"]}}
    - {name: c, transferRef: x, command: {argv: ["true"]}}
"#,
    )
    .unwrap();
    let port = free_port();
    let _server = serve(root, port, &[]);
    let (code, _, err) = pipelines(root, port, &["apply", "-f", "bad.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a → b → a"), "{err}");
    assert!(err.contains("spec.tasks[2]: exactly one of"), "{err}");
}

/// Mails in the test server's maildir addressed to `to`.
fn mails_to(to: &str) -> Vec<String> {
    let dir = std::path::PathBuf::from(std::env::var("FERRY_TEST_SMTP_MAILDIR").unwrap());
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        for entry in std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if text.contains(to) {
                found.push(text);
            }
        }
    }
    found
}

#[test]
fn failures_are_mailed_over_starttls_and_posted_once_and_handled_ones_never() {
    let Ok(smtp) = std::env::var("FERRY_TEST_SMTP") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "FERRY_TEST_SMTP is not set"
        );
        return;
    };
    let ca = std::env::var("FERRY_TEST_SMTP_CA").unwrap();
    let user = std::env::var("FERRY_TEST_SMTP_USER").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let to = format!("{}@example.com", unique_name("ops"));
    // The chat endpoint refuses the first post: the channel retries it.
    let mut chat = common::service::Callbacks::failing_first(1);
    let dead = free_port();
    std::fs::write(
        root.join("settings.yaml"),
        format!(
            r#"notifications:
  publicUrl: https://ferry.example.com
  attempts: 3
  retrySeconds: 0.05
  channels:
  - name: ops-mail
    email: {{server: "{smtp}", caFile: "{ca}", username: {user}, password: env:FERRY_SMTP_PASSWORD, from: "ferry <ferry@example.com>", to: ["{to}"]}}
  - name: team-chat
    slack: {{url: "http://127.0.0.1:{}/hooks/team"}}
  - name: dead-hook
    webhook: {{url: "http://127.0.0.1:{dead}/gone"}}
"#,
            chat.port
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("alerts.yaml"),
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: alerts}
spec:
  tasks:
    - name: export
      command: {argv: [sh, -c, 'echo "disk full" >&2; exit 4']}
    - name: optional
      onFailure: handled
      command: {argv: ["false"]}
  notify:
    - {channel: ops-mail, on: [TaskFailed, PipelineFailed]}
    - {channel: team-chat, on: [PipelineFailed]}
    - {channel: dead-hook, on: [PipelineFailed]}
"#,
    )
    .unwrap();
    let port = free_port();
    let password = std::env::var("FERRY_TEST_SMTP_PASSWORD").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(root.join("settings.yaml"))
        .arg("--data-dir")
        .arg(root.join("server"))
        .env("FERRY_SMTP_PASSWORD", &password)
        .current_dir(root);
    let server = Service::start(cmd, port);
    assert_eq!(pipelines(root, port, &["apply", "-f", "alerts.yaml"]).0, 0);
    // The same failure twice: the second run notifies nobody.
    for _ in 0..2 {
        let (code, out, _) = pipelines(root, port, &["run", "alerts", "--wait"]);
        assert_eq!(code, 1, "{out}");
    }
    let posted = chat.wait("/hooks/team");
    let text = posted.to_string();
    assert!(text.contains("PipelineFailed alerts"), "{posted:#}");
    assert!(text.contains("disk full"), "{posted:#}");
    assert!(
        text.contains("https://ferry.example.com/v1/pipelines/alerts/runs/alerts-"),
        "{posted:#}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let metric = |name: &str| -> Option<u64> {
        let (_, body) = server.call("GET", "/metrics", None);
        let text = body.as_str().unwrap_or_default().to_string();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    // Two mails (the task, the run), the dead hook given up, the repeats suppressed.
    loop {
        let mails = mails_to(&to);
        let failed = metric(r#"ferry_notifications_total{channel="dead-hook",result="failed"}"#);
        if mails.len() >= 2 && failed == Some(1) {
            break;
        }
        if Instant::now() > deadline {
            let log: Vec<String> = server.lines.try_iter().collect();
            panic!("{} mails, dead hook {failed:?}; log: {log:#?}", mails.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mails = mails_to(&to);
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let task_mail = mails
        .iter()
        .find(|m| m.contains("Subject: [ferry] TaskFailed alerts: task export"))
        .unwrap_or_else(|| panic!("{mails:#?}"));
    assert!(
        task_mail.contains("Error: command sh exited with code 4: disk full"),
        "{task_mail}"
    );
    assert!(
        !mails.iter().any(|m| m.contains("optional")),
        "a handled failure mailed: {mails:#?}"
    );
    assert_eq!(
        metric(r#"ferry_notifications_total{channel="ops-mail",result="suppressed"}"#),
        Some(2)
    );
    assert_eq!(
        metric(r#"ferry_notifications_total{channel="team-chat",result="sent"}"#),
        Some(1)
    );
    // A rule naming a channel the server lacks is refused with its field.
    std::fs::write(
        root.join("unknown.yaml"),
        "apiVersion: ferry.dev/v1\nkind: Pipeline\nmetadata: {name: unknown}\nspec:\n  tasks: [{name: a, command: {argv: [\"true\"]}}]\n  notify: [{channel: pager, on: [PipelineFailed]}]\n",
    )
    .unwrap();
    let (code, _, err) = pipelines(root, port, &["apply", "-f", "unknown.yaml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("spec.notify[0].channel: no channel named pager"),
        "{err}"
    );
}

fn runs_of(server: &Service, pipeline: &str) -> Vec<Value> {
    let (status, runs) = server.call("GET", &format!("/v1/pipelines/{pipeline}/runs"), None);
    assert_eq!(status, 200, "{runs}");
    runs.as_array().cloned().unwrap_or_default()
}

/// Waits until `pipeline` has `n` finished runs.
fn wait_finished(server: &Service, pipeline: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = runs_of(server, pipeline);
        let done = runs.iter().filter(|r| r["finishedAt"].is_string()).count();
        if done >= n {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "{pipeline}: {done} of {n} runs: {runs:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn new_objects_start_one_run_each_across_a_restart_and_runs_chain_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("drop")).unwrap();
    std::fs::write(root.join("drop/old.csv"), "id\n0\n").unwrap();
    std::fs::write(
        root.join("ingest.yaml"),
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: ingest}
spec:
  trigger: {objectCreated: {address: drop/, glob: "*.csv"}}
  tasks:
    - name: note
      command: {argv: [sh, -c, 'echo "${trigger.object.key}" >> fired.txt']}
"#,
    )
    .unwrap();
    std::fs::write(
        root.join("report.yaml"),
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: report}
spec:
  trigger: {after: {pipeline: ingest, when: succeeded}}
  tasks:
    - name: note
      command: {argv: [sh, -c, 'echo "${trigger.run}" >> after.txt']}
"#,
    )
    .unwrap();
    std::fs::write(
        root.join("watcher.yaml"),
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: watcher}
spec:
  trigger: {objectCreated: {address: "s3://nowhere/in/?endpoint=http://127.0.0.1:9&allow_http=true", pollSeconds: 1}}
  tasks:
    - {name: note, command: {argv: ["true"]}}
"#,
    )
    .unwrap();
    let port = free_port();
    let mut server = serve(root, port, &[]);
    for file in ["ingest.yaml", "report.yaml", "watcher.yaml"] {
        let (code, _, err) = pipelines(root, port, &["apply", "-f", file]);
        assert_eq!(code, 0, "{file}: {err}");
    }
    std::fs::write(root.join("drop/a.csv"), "id\n1\n").unwrap();
    std::fs::write(root.join("drop/b.csv"), "id\n2\n").unwrap();
    std::fs::write(root.join("drop/notes.txt"), "not a csv").unwrap();
    wait_finished(&server, "ingest", 2);
    wait_finished(&server, "report", 2);
    server.kill_9();
    let server = serve(root, port, &[]);
    std::fs::write(root.join("drop/c.csv"), "id\n3\n").unwrap();
    let ingested = wait_finished(&server, "ingest", 3);
    let reported = wait_finished(&server, "report", 3);

    // Each new object fired once; the one already there and the other kind never did.
    let mut fired: Vec<String> = std::fs::read_to_string(root.join("fired.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    fired.sort();
    assert_eq!(fired, ["a.csv", "b.csv", "c.csv"]);
    assert_eq!(ingested.len(), 3, "{ingested:#?}");
    assert!(ingested.iter().all(|r| r["trigger"] == "objectCreated"));
    // Each ingest run started one report run, naming it.
    let mut after: Vec<String> = std::fs::read_to_string(root.join("after.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    after.sort();
    let mut ids: Vec<String> = ingested
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(after, ids);
    assert_eq!(reported.len(), 3);

    // A store that does not answer: a warning, no run.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, events) = server.call("GET", "/v1/pipelines/watcher/events", None);
        if let Some(e) = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["reason"] == "TriggerFailing")
        {
            assert_eq!(e["type"], "Warning");
            break;
        }
        assert!(Instant::now() < deadline, "{events:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(runs_of(&server, "watcher").is_empty());
}

#[test]
fn registered_templates_run_as_tasks_and_stay_consistent_with_their_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("in")).unwrap();
    std::fs::write(root.join("in/a.txt"), "alpha\n").unwrap();
    let stamp = r#"apiVersion: ferry.dev/v1
kind: TaskTemplate
metadata: {name: stamp}
spec:
  description: appends a word to a file
  params:
    word: {}
    out: {default: stamps.txt}
  command: {argv: [sh, -c, 'echo "${params.word}" >> ${params.out}']}
"#;
    let mirror = r#"apiVersion: ferry.dev/v1
kind: TaskTemplate
metadata: {name: mirror}
spec:
  params: {from: {}, to: {}}
  transfer:
    source: {type: file, path: "${params.from}"}
    destination: {type: file, path: "${params.to}"}
  check: {verify: {source: "${params.from}", destination: "${params.to}"}}
"#;
    let uses = r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: uses}
spec:
  params: {day: {default: mon}}
  tasks:
    - name: first
      template: {name: stamp, params: {word: "hello-${params.day}"}}
    - name: copy
      dependsOn: [{task: first}]
      template: {name: mirror, params: {from: in/, to: "out-${params.day}/"}}
"#;
    for (file, text) in [
        ("stamp.yaml", stamp),
        ("mirror.yaml", mirror),
        ("uses.yaml", uses),
    ] {
        std::fs::write(root.join(file), text).unwrap();
    }
    let port = free_port();
    let _server = serve(root, port, &[]);
    let (code, out, err) = client(root, port, "templates", &["apply", "-f", "stamp.yaml"]);
    assert_eq!((code, out.trim()), (0, "template/stamp created"), "{err}");
    assert_eq!(
        client(root, port, "templates", &["apply", "-f", "mirror.yaml"]).0,
        0
    );
    let (_, listed, _) = client(root, port, "templates", &["list"]);
    for shown in [
        "copy-tree",
        "built in",
        "stamp",
        "registered",
        "word out=stamps.txt",
    ] {
        assert!(listed.contains(shown), "{shown} not in {listed}");
    }

    // A pipeline naming a template nobody registered, or leaving out a parameter it needs,
    // is refused with the task's field.
    std::fs::write(
        root.join("bad.yaml"),
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: bad}
spec:
  tasks:
    - {name: a, template: {name: nope}}
    - {name: b, template: {name: stamp, params: {colour: red}}}
"#,
    )
    .unwrap();
    let (code, _, err) = pipelines(root, port, &["apply", "-f", "bad.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: invalid pipeline: the manifest is invalid"),
        "{err}"
    );
    for expected in [
        "spec.tasks[0].template.name: unknown template 'nope'; built in: copy-tree, table-to-lake, lake-to-table, verify-trees; registered: mirror, stamp",
        "spec.tasks[1].template.params.word: required by template 'stamp'",
        "spec.tasks[1].template.params.colour: template 'stamp' takes out, word",
    ] {
        assert!(err.contains(expected), "{expected} not in {err}");
    }

    assert_eq!(pipelines(root, port, &["apply", "-f", "uses.yaml"]).0, 0);
    let (code, out, err) = pipelines(root, port, &["run", "uses", "-p", "day=tue", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(root.join("stamps.txt")).unwrap(),
        "hello-tue\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("out-tue/a.txt")).unwrap(),
        "alpha\n"
    );
    let run = &pipelines_json(root, port, &["runs", "uses"])[0];
    assert_eq!(task(run, "copy")["phase"], "Succeeded", "{run:#}");

    // While a pipeline uses it, a template can neither go nor change so the task no
    // longer fits.
    let (code, _, err) = client(root, port, "templates", &["delete", "stamp"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("template 'stamp' is used by pipeline uses; change or delete it first"),
        "{err}"
    );
    std::fs::write(
        root.join("stamp2.yaml"),
        stamp.replace("out: {default: stamps.txt}", "out: {}"),
    )
    .unwrap();
    let (code, _, err) = client(root, port, "templates", &["apply", "-f", "stamp2.yaml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("pipeline uses would no longer fit: spec.tasks[0].template.params.out: required by template 'stamp'"),
        "{err}"
    );
    let (_, shown, _) = client(root, port, "templates", &["get", "stamp", "--json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["status"]["usedBy"], serde_json::json!(["uses"]));
    let (code, _, err) = client(root, port, "templates", &["delete", "copy-tree"]);
    assert_eq!(code, 2);
    assert!(err.contains("built in and cannot be deleted"), "{err}");

    assert_eq!(pipelines(root, port, &["delete", "uses"]).0, 0);
    let (code, out, err) = client(root, port, "templates", &["delete", "stamp"]);
    assert_eq!((code, out.trim()), (0, "template/stamp deleted"), "{err}");
    let (code, _, err) = client(root, port, "templates", &["get", "stamp"]);
    assert_ne!(code, 0);
    assert!(err.contains("template 'stamp' not found"), "{err}");
}

#[test]
fn an_attempt_stored_but_not_made_when_the_server_dies_is_made_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("pair.yaml"),
        r#"apiVersion: ferry.dev/v1
kind: Pipeline
metadata: {name: pair}
spec:
  tasks:
    - name: first
      command: {argv: [sh, -c, "echo first >> log.txt"]}
    - name: second
      dependsOn: [{task: first}]
      command: {argv: [sh, -c, "echo second >> log.txt"]}
"#,
    )
    .unwrap();
    let port = free_port();
    // The second decision (to start `second`) is stored, then the server hangs before
    // writing its events, transfer and run, and is killed there.
    let mut server = serve(
        root,
        port,
        &[("FERRY_FAILPOINT", "pause-after-attempts-decided:2")],
    );
    assert_eq!(pipelines(root, port, &["apply", "-f", "pair.yaml"]).0, 0);
    let id = pipelines_json(root, port, &["run", "pair"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_line("failpoint reached: pause-after-attempts-decided:2");
    let run = pipelines_json(root, port, &["runs", "pair", &id]);
    let second = task(&run, "second");
    assert_eq!(
        (second["phase"].as_str(), second["attempt"].as_u64()),
        (Some("Running"), Some(1))
    );
    let (_, transfers) = server.call("GET", "/v1/transfers", None);
    assert!(
        !transfers
            .to_string()
            .contains(second["transfer"].as_str().unwrap()),
        "not made yet: {transfers:#}"
    );
    server.kill_9();

    let server = serve(root, port, &[]);
    let run = wait_run(&server, "pair", &id, |r| r["finishedAt"].is_string());
    assert_eq!(run["phase"], "Succeeded", "{run:#}");
    let second = task(&run, "second");
    assert_eq!(second["attempt"], 1, "made, not retried: {run:#}");
    assert_eq!(
        std::fs::read_to_string(root.join("log.txt")).unwrap(),
        "first\nsecond\n"
    );
    // The events of the interrupted pass (first's end, second's start) were never written:
    // the run's document is what counts, and the later pass says what it made.
    let events = pipelines_json(root, port, &["events", "pair"]);
    let started: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "TaskStarted" && e["data"]["task"] == "second")
        .collect();
    assert_eq!(started.len(), 1, "{events:#}");
    assert!(started[0]["message"]
        .as_str()
        .unwrap()
        .contains("made by a later pass"));
}
