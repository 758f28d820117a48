//! A cluster on loopback: PostgreSQL, two control planes (`ferry serve --role control`)
//! and three data planes (`ferry dataplane`) as separate processes. Runs spread over the
//! data planes as each strategy says, a data plane stopped with SIGTERM drains and
//! deregisters, and one killed with SIGKILL mid-transfer loses its runs to the others,
//! which finish them from the checkpoints, so every output is whole and no row doubles.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::service::{assert_same_tree, free_port, write_files, Service};
use ferry_connectors::testkit::{unique_name, TestPostgres};
use serde_json::{json, Value};

/// The lease in this test: how long a dead data plane keeps its runs.
const LEASE_SECONDS: &str = "3";

struct Cluster {
    pg: TestPostgres,
    db: String,
    root: PathBuf,
    control: Vec<Service>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.control.clear();
        self.pg.sql(
            "ferry",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
        );
    }
}

impl Cluster {
    /// A database of its own (named after `label`) on the test PostgreSQL, and a work
    /// directory; `None` when PostgreSQL is not configured (outside CI).
    fn new(label: &str) -> Option<(Cluster, tempfile::TempDir)> {
        let pg = TestPostgres::get()?;
        let db = unique_name(label).replace('-', "_");
        pg.sql("ferry", &format!("CREATE DATABASE {db}"));
        let work = tempfile::tempdir().unwrap();
        let cluster = Cluster {
            pg,
            db,
            root: work.path().to_path_buf(),
            control: Vec::new(),
        };
        Some((cluster, work))
    }

    /// The store's URL: over TLS, the server's certificate checked against the test CA
    /// (as the PostgreSQL sources and sinks that use the same URL do).
    fn store(&self) -> String {
        let ca = std::env::var("FERRY_TEST_POSTGRES_CA").expect("scripts/services env sets it");
        format!(
            "{}?sslmode=verify-full&sslrootcert={ca}",
            self.pg.url(&self.db)
        )
    }

    /// The sessions ferry has open to the store's database: (encrypted, not encrypted).
    fn store_sessions(&self) -> (usize, usize) {
        let counts = self.pg.sql(
            "ferry",
            &format!(
                "SELECT count(*) FILTER (WHERE ssl), count(*) FILTER (WHERE NOT ssl)
                 FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
                 WHERE datname = '{}' AND application_name = 'ferry'",
                self.db
            ),
        );
        let (tls, plain) = counts.split_once('|').expect("two counts");
        (tls.parse().unwrap(), plain.parse().unwrap())
    }

    /// The second control plane selects through the first one's registry API, as a
    /// remote selector; the turns are the same.
    fn control_plane(&mut self, n: usize) {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        if let Some(first) = self.control.first() {
            cmd.env(
                "FERRY_SELECTOR__URL",
                format!("http://127.0.0.1:{}", first.port),
            );
        }
        cmd.args(["serve", "--role", "control", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(self.root.join(format!("cp{n}")))
            .args(["--store", &self.store()])
            .env("FERRY_LEASE_SECONDS", LEASE_SECONDS)
            .env("FERRY_SELECTOR__STRATEGY", "round-robin")
            .env("FERRY_SELECTOR__HEARTBEAT_TIMEOUT_SECONDS", "3")
            .env_remove("FERRY_FAILPOINT")
            .current_dir(&self.root);
        self.control.push(Service::start(cmd, port));
    }

    fn data_plane(&self, id: &str, failpoint: Option<&str>) -> Service {
        self.data_plane_with(id, failpoint, &[])
    }

    /// A data plane with more environment (engines, …).
    fn data_plane_with(&self, id: &str, failpoint: Option<&str>, env: &[(&str, &str)]) -> Service {
        let port = free_port();
        let planes: Vec<String> = self
            .control
            .iter()
            .map(|c| format!("http://127.0.0.1:{}", c.port))
            .collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(["dataplane", "--id", id, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(self.root.join(id))
            .args(["--store", &self.store()])
            .args(["--control-plane", &planes.join(",")])
            .args(["--capacity", "4"])
            .env("FERRY_LEASE_SECONDS", LEASE_SECONDS)
            .env("FERRY_HEARTBEAT_SECONDS", "0.5")
            .env("FERRY_DRAIN_SECONDS", "60")
            .env_remove("FERRY_FAILPOINT")
            .current_dir(&self.root);
        if let Some(fp) = failpoint {
            cmd.env("FERRY_FAILPOINT", fp);
        }
        cmd.envs(env.iter().copied());
        let dp = Service::start(cmd, port);
        dp.wait_line("registered with the control plane");
        dp
    }

    /// The control plane that takes request `i` (they take turns).
    fn cp(&self, i: usize) -> &Service {
        &self.control[i % self.control.len()]
    }

    fn create(&self, i: usize, manifest: &Value) {
        let (status, body) = self.cp(i).call("POST", "/v1/transfers", Some(manifest));
        assert_eq!(status, 201, "{body}");
    }

    /// Waits until every transfer named succeeded; fails on a final failure.
    fn wait_succeeded(&self, names: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(180);
        for (i, name) in names.iter().enumerate() {
            loop {
                let (_, t) = self
                    .cp(i)
                    .call("GET", &format!("/v1/transfers/{name}"), None);
                let phase = t["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if phase == "Succeeded" {
                    break;
                }
                assert!(
                    !["Failed", "Fatal", "ConfigurationError"].contains(&phase.as_str()),
                    "{name}: {t}"
                );
                assert!(Instant::now() < deadline, "{name} never succeeded: {t}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// The events of a transfer.
    fn events(&self, name: &str) -> Vec<Value> {
        let (status, events) = self.cp(0).call(
            "GET",
            &format!("/v1/transfers/{name}/events?limit=1000"),
            None,
        );
        assert_eq!(status, 200, "{events}");
        events.as_array().unwrap().clone()
    }

    /// Data planes the transfer's run was dispatched to, in order.
    fn dispatched(&self, name: &str) -> Vec<String> {
        self.events(name)
            .iter()
            .filter(|e| e["reason"] == "RunDispatched")
            .map(|e| e["data"]["dataPlane"].as_str().unwrap().to_string())
            .collect()
    }

    /// How many of the transfers' runs went to each data plane; each went to one, at the
    /// first try.
    fn spread(&self, names: &[String]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for name in names {
            let failed: Vec<Value> = self
                .events(name)
                .into_iter()
                .filter(|e| e["type"] == "Warning")
                .collect();
            assert!(failed.is_empty(), "{name}: {failed:?}");
            assert_eq!(
                self.dispatched(name).len(),
                1,
                "{name}: {:?}",
                self.events(name)
            );
            let first = self.dispatched(name).into_iter().next();
            *counts
                .entry(first.unwrap_or_else(|| panic!("{name} was never dispatched")))
                .or_default() += 1;
        }
        counts
    }
}

fn copy_manifest(name: &str, from: &str, to: &str, strategy: Option<&str>) -> Value {
    let mut m = json!({
        "apiVersion": "ferry.dev/v1", "kind": "BatchTransfer",
        "metadata": {"name": name},
        "spec": {"source": {"type": "file", "path": from},
                 "destination": {"type": "file", "path": to}}
    });
    if let Some(s) = strategy {
        m["spec"]["dataPlane"] = json!({"strategy": s});
    }
    m
}

#[test]
fn runs_spread_over_data_planes_and_survive_one_killed_mid_transfer() {
    let Some((mut cluster, _work)) = Cluster::new("ferry_cluster") else {
        return;
    };
    cluster.control_plane(1);
    cluster.control_plane(2);
    let dp1 = cluster.data_plane("dp-1", None);
    let dp2 = cluster.data_plane("dp-2", None);
    let mut dp3 = cluster.data_plane("dp-3", None);
    let root = cluster.root.clone();
    let (status, planes) = cluster.cp(1).call("GET", "/v1/dataplanes", None);
    assert_eq!(status, 200, "{planes}");
    assert_eq!(planes.as_array().map(Vec::len), Some(3), "{planes}");
    let (tls, plain) = cluster.store_sessions();
    assert!(
        tls > 0 && plain == 0,
        "{tls} sessions over TLS, {plain} without"
    );

    // Round-robin with turn counts shared by both control planes, then least recently
    // used: each data plane gets exactly a third.
    write_files(&root.join("small"), 2, 10_000, 1);
    for strategy in ["round-robin", "least-recently-used"] {
        let names: Vec<String> = (0..6).map(|i| format!("{}-{i}", &strategy[..5])).collect();
        for (i, name) in names.iter().enumerate() {
            let out = format!("out-{name}/");
            let s = (strategy != "round-robin").then_some(strategy);
            cluster.create(i, &copy_manifest(name, "small/", &out, s));
            // One at a time, so the spread depends on the strategy, not on timing.
            cluster.wait_succeeded(std::slice::from_ref(name));
        }
        let spread = cluster.spread(&names);
        assert_eq!(
            spread,
            BTreeMap::from([("dp-1".into(), 2), ("dp-2".into(), 2), ("dp-3".into(), 2)]),
            "{strategy}"
        );
    }
    // Random: every data plane gets some of 30.
    let names: Vec<String> = (0..30).map(|i| format!("random-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        cluster.create(
            i,
            &copy_manifest(name, "small/", &format!("out-{name}/"), Some("random")),
        );
    }
    cluster.wait_succeeded(&names);
    let spread = cluster.spread(&names);
    assert_eq!(
        spread.len(),
        3,
        "random reached every data plane: {spread:?}"
    );
    assert_eq!(spread.values().sum::<usize>(), 30);

    // A data plane stopped with SIGTERM drains and deregisters; its replacement pauses
    // every run it gets after two files, until it is killed.
    assert!(dp3.terminate(), "dp-3 exits cleanly on SIGTERM");
    let (_, planes) = cluster.cp(0).call("GET", "/v1/dataplanes", None);
    let ids: Vec<&str> = planes
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dp-1", "dp-2"], "dp-3 deregistered");
    let mut victim = cluster.data_plane("dp-4", Some("pause-after-files:2"));

    // Objects and a table; the victim takes a third of them and stalls.
    let rows = 30_000;
    cluster.pg.sql(
        &cluster.db,
        &format!(
            "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note, g * 1.5 AS amount \
             FROM generate_series(1, {rows}) g; ALTER TABLE orders ADD PRIMARY KEY (id); \
             CREATE TABLE orders_copy (id integer, note text, amount numeric)"
        ),
    );
    let mut names = Vec::new();
    for k in 0..5 {
        let dir = format!("big-{k}");
        write_files(&root.join(&dir), 8, 300_000, 10 + k);
        let name = format!("objects-{k}");
        cluster.create(
            k as usize,
            &copy_manifest(&name, &format!("{dir}/"), &format!("out-{dir}/"), None),
        );
        names.push(name);
    }
    let table = json!({
        "apiVersion": "ferry.dev/v1", "kind": "BatchTransfer",
        "metadata": {"name": "orders"},
        "spec": {"source": {"type": "postgres", "url": cluster.store(), "table": "orders"},
                 "destination": {"type": "postgres", "url": cluster.store(),
                                 "table": "orders_copy", "mode": "append"}}
    });
    cluster.create(1, &table);
    names.push("orders".into());

    victim.wait_line("failpoint reached");
    victim.kill_9();
    cluster.wait_succeeded(&names);

    let mut taken_over = 0;
    for name in &names {
        let hops = cluster.dispatched(name);
        if hops.first().map(String::as_str) == Some("dp-4") {
            assert!(hops.len() >= 2, "{name} went on after dp-4 died: {hops:?}");
            assert_ne!(hops.last().map(String::as_str), Some("dp-4"), "{hops:?}");
            taken_over += 1;
        }
    }
    eprintln!("taken over from dp-4: {taken_over} of {}", names.len());
    assert!(taken_over >= 1, "the victim had runs to lose");
    let reasons: Vec<String> = names
        .iter()
        .flat_map(|n| cluster.events(n))
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "RunResumed"),
        "a run resumed from its checkpoint: {reasons:?}"
    );
    for k in 0..5 {
        assert_same_tree(
            &root.join(format!("big-{k}")),
            &root.join(format!("out-big-{k}")),
        );
    }
    let copied = cluster.pg.sql(
        &cluster.db,
        "SELECT count(*), count(DISTINCT id) FROM orders_copy",
    );
    assert_eq!(copied, format!("{rows}|{rows}"), "every row once");
    let differ = cluster.pg.sql(
        &cluster.db,
        "SELECT count(*) FROM (SELECT id, note, amount FROM orders \
         EXCEPT SELECT id, note, amount FROM orders_copy) d",
    );
    assert_eq!(differ, "0");
    drop((dp1, dp2));
}

#[test]
fn unreachable_and_incapable_data_planes_are_skipped_with_reasons() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["serve", "--role", "control", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(root.join("cp"))
        .env_remove("FERRY_STORE")
        .current_dir(root);
    let cp = Service::start(cmd, port);

    // Registrations with a malformed URL or an unknown type name the field.
    let (status, bad) = cp.call(
        "POST",
        "/v1/dataplanes",
        Some(&json!({"id": "dp-x", "url": "not a url"})),
    );
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["details"][0]["field"], "url", "{bad}");
    let (status, bad) = cp.call(
        "POST",
        "/v1/dataplanes",
        Some(&json!({"id": "dp-x", "url": "http://127.0.0.1:9",
                     "allowedSourceTypes": ["mongodb"]})),
    );
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["details"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("allowedSourceTypes"),
        "{bad}"
    );

    // A data plane nothing listens for: the run waits, the data plane is marked down.
    let (status, body) = cp.call(
        "POST",
        "/v1/dataplanes",
        Some(&json!({"id": "dp-gone", "url": "http://127.0.0.1:9",
                     "allowedSourceTypes": ["file"], "labels": {"region": "eu"}})),
    );
    assert_eq!(status, 201, "{body}");
    write_files(&root.join("in"), 1, 1000, 1);
    let (status, body) = cp.call(
        "POST",
        "/v1/transfers",
        Some(&copy_manifest("waits", "in/", "out/", None)),
    );
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let reasons = loop {
        let (_, events) = cp.call("GET", "/v1/transfers/waits/events", None);
        let reasons: Vec<String> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["reason"].as_str().unwrap(),
                    e["message"].as_str().unwrap()
                )
            })
            .collect();
        if reasons
            .iter()
            .any(|r| r.starts_with("NoDataPlaneAvailable"))
        {
            break reasons;
        }
        assert!(Instant::now() < deadline, "{reasons:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let failed = reasons
        .iter()
        .find(|r| r.starts_with("DispatchFailed"))
        .unwrap_or_else(|| panic!("{reasons:?}"));
    assert!(
        failed.contains("dp-gone") && failed.contains("unreachable"),
        "{failed}"
    );
    let (_, dp) = cp.call("GET", "/v1/dataplanes/dp-gone", None);
    assert_eq!(dp["state"], "Unavailable", "{dp}");
    let (_, t) = cp.call("GET", "/v1/transfers/waits", None);
    assert_eq!(
        t["status"]["phase"], "Pending",
        "it waits for a data plane: {t}"
    );

    // A run no registered data plane could ever take fails, saying what each lacks.
    let mut mars = copy_manifest("mars", "in/", "out2/", None);
    mars["spec"]["dataPlane"] = json!({"labels": {"region": "mars"}});
    assert_eq!(cp.call("POST", "/v1/transfers", Some(&mars)).0, 201);
    let deadline = Instant::now() + Duration::from_secs(60);
    let t = loop {
        let (_, t) = cp.call("GET", "/v1/transfers/mars", None);
        if t["status"]["phase"] == "ConfigurationError" {
            break t;
        }
        assert!(Instant::now() < deadline, "{t}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let error = t["status"]["error"].as_str().unwrap();
    assert!(
        error.contains("dp-gone") && error.contains("region"),
        "{error}"
    );
}

#[test]
fn a_run_naming_an_engine_goes_to_the_data_plane_that_has_it() {
    let Ok(rcd) = std::env::var("FERRY_TEST_RCLONE") else {
        assert!(std::env::var_os("CI").is_none(), "FERRY_TEST_RCLONE unset");
        return;
    };
    let user = std::env::var("FERRY_TEST_RCLONE_USER").unwrap();
    let password = std::env::var("FERRY_TEST_RCLONE_PASSWORD").unwrap();
    let Some((mut cluster, _work)) = Cluster::new("ferry_engines") else {
        return;
    };
    cluster.control_plane(1);
    let _plain = cluster.data_plane("dp-plain", None);
    let engine = [
        ("FERRY_ENGINES__RCLONE_CLUSTER__TYPE", "rclone"),
        ("FERRY_ENGINES__RCLONE_CLUSTER__URL", rcd.as_str()),
        ("FERRY_ENGINES__RCLONE_CLUSTER__USER", user.as_str()),
        (
            "FERRY_ENGINES__RCLONE_CLUSTER__PASSWORD",
            "env:RCLONE_PASSWORD",
        ),
        ("RCLONE_PASSWORD", password.as_str()),
    ];
    let _rclone = cluster.data_plane_with("dp-rclone", None, &engine);
    let (_, planes) = cluster.cp(0).call("GET", "/v1/dataplanes", None);
    let with_engine: Vec<&str> = planes
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["engines"][0]["name"] == "rclone-cluster")
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(with_engine, ["dp-rclone"], "{planes}");

    // Round-robin would alternate; naming the engine sends every run to dp-rclone.
    let root = cluster.root.clone();
    write_files(&root.join("in"), 2, 10_000, 4);
    let names: Vec<String> = (0..3).map(|i| format!("via-rclone-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let mut m = copy_manifest(
            name,
            &format!("{}/in/", root.display()),
            &format!("{}/out-{i}/", root.display()),
            None,
        );
        m["spec"]["execution"] = json!({"engine": "rclone-cluster"});
        cluster.create(i, &m);
        cluster.wait_succeeded(std::slice::from_ref(name));
        assert_eq!(cluster.dispatched(name), ["dp-rclone"]);
        let routed = cluster
            .events(name)
            .into_iter()
            .find(|e| e["reason"] == "RunRouted")
            .unwrap();
        assert_eq!(routed["data"]["engine"], "rclone-cluster", "{routed}");
        assert_same_tree(&root.join("in"), &root.join(format!("out-{i}")));
    }
}

#[test]
fn a_delegated_run_of_a_killed_data_plane_is_taken_over_and_reattaches_to_its_job() {
    if common::rclone::shared_rcd().is_none() {
        return;
    }
    let Some((mut cluster, _work)) = Cluster::new("ferry_takeover") else {
        return;
    };
    let root = cluster.root.clone();
    // One rcd both data planes delegate to, slow enough to kill a data plane mid-run.
    let rcd = common::rclone::Rcd::start_with(&root, "1M", &[]);
    let url = rcd.url();
    let engine = [
        ("FERRY_ENGINES__SHARED__TYPE", "rclone"),
        ("FERRY_ENGINES__SHARED__URL", url.as_str()),
        ("FERRY_ENGINES__SHARED__USER", common::rclone::PRIVATE_USER),
        ("FERRY_ENGINES__SHARED__PASSWORD", "env:RCLONE_PASSWORD"),
        ("FERRY_ENGINES__SHARED__POLL_SECONDS", "0.2"),
        ("RCLONE_PASSWORD", common::rclone::PRIVATE_PASSWORD),
    ];
    cluster.control_plane(1);
    let mut planes = BTreeMap::from([
        (
            "dp-a".to_string(),
            cluster.data_plane_with("dp-a", None, &engine),
        ),
        (
            "dp-b".to_string(),
            cluster.data_plane_with("dp-b", None, &engine),
        ),
    ]);

    write_files(&root.join("in"), 16, 1024 * 1024, 9);
    let mut m = copy_manifest(
        "handed-over",
        &format!("{}/in/", root.display()),
        &format!("{}/out/", root.display()),
        None,
    );
    m["spec"]["execution"] = json!({"engine": "shared"});
    cluster.create(0, &m);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (run, job) = loop {
        let (_, runs) = cluster
            .cp(0)
            .call("GET", "/v1/transfers/handed-over/runs", None);
        let run = runs[0].clone();
        if let Some(job) = run["stats"]["execution"]["job"]["id"].as_str() {
            break (run["id"].as_str().unwrap().to_string(), job.to_string());
        }
        assert!(Instant::now() < deadline, "{runs}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let first = cluster.dispatched("handed-over")[0].clone();
    planes.get_mut(&first).unwrap().kill_9();

    // After the lease, the other data plane takes the run and follows the same job.
    let deadline = Instant::now() + Duration::from_secs(90);
    let reattached = loop {
        if let Some(e) = cluster
            .events("handed-over")
            .into_iter()
            .find(|e| e["reason"] == "DelegatedJobReattached")
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}",
            cluster.events("handed-over")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(reattached["data"]["job"], json!(job), "{reattached}");
    rcd.call("core/bwlimit", json!({"rate": "off"}));
    cluster.wait_succeeded(&["handed-over".to_string()]);
    let dispatched = cluster.dispatched("handed-over");
    assert_eq!(dispatched.len(), 2, "{dispatched:?}");
    assert_ne!(dispatched[1], first);
    assert_eq!(
        rcd.jobs_of(&run).len(),
        1,
        "one rclone job for the run, ever"
    );
    assert_same_tree(&root.join("in"), &root.join("out"));
}

/// Keyed changes, round `r` of 30 keys: values, and a tombstone of every 5th key in odd
/// rounds. `last` follows each key's last value (absent after a tombstone).
fn changes(r: u64, last: &mut BTreeMap<String, u64>) -> Vec<common::kafka::Sent> {
    (0..30u64)
        .map(|k| {
            let key = format!("k{k}");
            let p = (k % 3) as i32;
            if r % 2 == 1 && k % 5 == r % 5 {
                last.remove(&key);
                return (p, Some(key), None);
            }
            let version = r * 1000 + k;
            last.insert(key.clone(), version);
            let value = json!({"key": key, "version": version});
            (p, Some(key), Some(value.to_string().into_bytes()))
        })
        .collect()
}

/// Two StreamTransfers on a data plane SIGKILLed while events keep arriving: one keeps
/// an upsert table equal to the keyed topic (tombstones deleting), the other appends
/// every event with its partition and offset. After the lease the other data plane
/// continues both from their committed positions: the append table then holds every
/// event exactly once and the upsert table each key's last value.
#[test]
fn streams_of_a_killed_data_plane_continue_on_another_with_every_event_once() {
    let Some(broker) = common::kafka::broker() else {
        return;
    };
    let Some((mut cluster, _work)) = Cluster::new("ferry_streams") else {
        return;
    };
    cluster.control_plane(1);
    let mut first = cluster.data_plane("dp-a", None);
    let topic = common::kafka::new_topic(&broker, 3);
    let mut last = BTreeMap::new();
    let mut sent = 0usize;
    let mut produce = |rounds: std::ops::Range<u64>, last: &mut BTreeMap<String, u64>| {
        for r in rounds {
            let events = changes(r, last);
            // Tombstones give no row in the append table.
            sent += events.iter().filter(|e| e.2.is_some()).count();
            common::kafka::send(&broker, &topic, &events);
        }
        sent
    };
    produce(0..20, &mut last);
    let stream = |name: &str, destination: Value| -> Value {
        json!({"apiVersion": "ferry.dev/v1", "kind": "StreamTransfer",
            "metadata": {"name": name},
            "spec": {"source": {"type": "kafka", "brokers": broker, "topic": topic,
                                "metadata": ["_partition", "_offset"]},
                     "destination": destination}})
    };
    let url = cluster.store();
    cluster.create(
        0,
        &stream(
            "latest",
            json!({"type": "postgres", "url": url, "table": "latest",
                   "mode": "upsert", "keyColumns": ["key"]}),
        ),
    );
    cluster.create(
        0,
        &stream(
            "every",
            json!({"type": "postgres", "url": url, "table": "every", "mode": "append"}),
        ),
    );
    let db = cluster.db.clone();
    let count = |cluster: &Cluster, table: &str| -> usize {
        let exists = cluster
            .pg
            .sql(&db, &format!("SELECT to_regclass('{table}') IS NOT NULL"));
        if exists != "t" {
            return 0;
        }
        cluster
            .pg
            .sql(&db, &format!("SELECT count(*) FROM {table}"))
            .parse()
            .unwrap()
    };
    let wait_rows = |cluster: &Cluster, table: &str, at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while count(cluster, table) < at_least {
            assert!(
                Instant::now() < deadline,
                "{table}: {} rows, waiting for {at_least}; {:?}",
                count(cluster, table),
                cluster.events(if table == "every" { "every" } else { "latest" })
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_rows(&cluster, "every", 1);
    let _second = cluster.data_plane("dp-b", None);
    // Under load: more events arrive while dp-a runs both streams, and it is killed at a
    // point of its batches that depends on the machine's timing.
    produce(20..30, &mut last);
    first.kill_9();
    let total = produce(30..60, &mut last);

    wait_rows(&cluster, "every", total);
    // Each (partition, offset) once, and as many as the topic holds values.
    let every = cluster.pg.sql(
        &db,
        "SELECT count(*), count(DISTINCT (_partition, _offset)) FROM every",
    );
    assert_eq!(every, format!("{total}|{}", total), "every event once");
    let latest = || -> BTreeMap<String, u64> {
        cluster
            .pg
            .sql(&db, "SELECT key, version FROM latest")
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('|').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest() != last {
        assert!(Instant::now() < deadline, "{:?} != {last:?}", latest());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both streams were handed over to dp-b: dispatched twice, each run still Running.
    for name in ["latest", "every"] {
        assert_eq!(cluster.dispatched(name), ["dp-a", "dp-b"], "{name}");
        let (_, runs) = cluster
            .cp(0)
            .call("GET", &format!("/v1/transfers/{name}/runs"), None);
        assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
        assert_eq!(runs[0]["phase"], "Running", "{runs}");
    }
}
