//! Checkpoints in PostgreSQL (`--state-url`): a run killed with SIGKILL continues in
//! another process with another, empty state directory, as it would on another machine.

mod common;

use std::path::Path;

use common::{ferry, run_ok, start_and_kill};
use ferry_connectors::sqlite::rusqlite::Connection;
use ferry_connectors::testkit::{bytes, unique_name, TestPostgres};

/// A new PostgreSQL database for one test's checkpoints, dropped with the value.
struct Checkpoints {
    pg: TestPostgres,
    name: String,
    url: String,
}

impl Checkpoints {
    /// `None` (after saying why) outside CI when the test server is not configured.
    fn create() -> Option<Self> {
        let pg = TestPostgres::get()?;
        let name = unique_name("ferry_ckpt").replace('-', "_");
        pg.sql("ferry", &format!("CREATE DATABASE {name}"));
        let url = pg.url(&name);
        Some(Self { pg, name, url })
    }

    fn runs(&self) -> String {
        self.pg.sql(
            &self.name,
            "SELECT string_agg(status, ',') FROM ferry_checkpoint_runs",
        )
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.pg.sql(
            "ferry",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Every file under `dir` with its contents, sorted by name.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn manifest(source: &str, destination: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1\nkind: BatchTransfer\nmetadata: {{name: ckpt}}\n\
         spec:\n  source: {source}\n  destination: {destination}\n"
    )
}

#[test]
fn a_killed_run_continues_in_another_process_from_the_checkpoint_in_postgres() {
    let Some(db) = Checkpoints::create() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::create_dir(dir.join("in")).unwrap();
    for i in 0..40 {
        let mut csv = String::from("id,name,amount\n");
        for row in 0..200 {
            csv.push_str(&format!("{row},item {i}-{row},{}.5\n", row * i));
        }
        std::fs::write(dir.join(format!("in/part-{i:02}.csv")), csv).unwrap();
    }
    let source = "{type: file, path: in/, format: csv}";
    std::fs::write(
        dir.join("run.yaml"),
        manifest(source, "{type: file, path: out/, format: json}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("reference.yaml"),
        manifest(source, "{type: file, path: reference/, format: json}"),
    )
    .unwrap();
    run_ok(ferry(&dir.join("reference-state"), dir).args(["run", "reference.yaml"]));

    // Process A, state directory a/, is killed once five outputs are checkpointed.
    let a = dir.join("a");
    start_and_kill(
        ferry(&a, dir).args(["run", "run.yaml", "--state-url", &db.url]),
        "pause-after-files:5",
    );
    assert_eq!(db.runs(), "running", "A left its run in PostgreSQL");

    // Process B, with an empty state directory b/, takes the run over.
    let b = dir.join("b");
    let report = run_ok(ferry(&b, dir).args(["run", "run.yaml", "--state-url", &db.url]));
    assert_eq!(report["status"], "succeeded", "{report}");
    let skipped = report["skipped"].as_u64().unwrap();
    assert!(skipped >= 5, "B skipped what A finished: {report}");
    assert_eq!(
        skipped + report["objects"].as_u64().unwrap(),
        40,
        "{report}"
    );
    assert_eq!(tree(&dir.join("out")), tree(&dir.join("reference")));
    assert_eq!(db.runs(), "succeeded");
    assert!(
        !a.exists() && !b.exists(),
        "with --state-url nothing is kept in the state directory"
    );
}

#[test]
fn a_killed_upload_in_parts_continues_in_another_process() {
    let Some(db) = Checkpoints::create() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let data = bytes(6 * 5 * 1024 * 1024 + 17, 23);
    std::fs::write(dir.join("big.bin"), &data).unwrap();
    let args = [
        "copy",
        "--part-size",
        "5MiB",
        "--concurrency",
        "2",
        "big.bin",
        "copy.bin",
    ];
    start_and_kill(
        ferry(&dir.join("a"), dir)
            .args(args)
            .args(["--state-url", &db.url]),
        "pause-after-parts:2",
    );
    // The URL from the environment this time.
    let report = run_ok(
        ferry(&dir.join("b"), dir)
            .args(args)
            .env("FERRY_STATE_URL", &db.url),
    );
    assert_eq!(report["resumed"], 1, "{report}");
    let moved = report["bytes"].as_u64().unwrap();
    assert!(
        moved < data.len() as u64,
        "the second process moved {moved} bytes: it started over"
    );
    assert!(std::fs::read(dir.join("copy.bin")).unwrap() == data);
}

#[test]
fn a_load_killed_before_its_commit_is_committed_by_another_process_once() {
    let Some(db) = Checkpoints::create() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let src = Connection::open(dir.join("src.db")).unwrap();
    src.execute_batch(
        "CREATE TABLE events (id INTEGER NOT NULL, body TEXT);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000)
         INSERT INTO events SELECT n, hex(n) FROM g;",
    )
    .unwrap();
    run_ok(ferry(&dir.join("local"), dir).args([
        "copy",
        "sqlite:src.db?table=events",
        "events.parquet",
    ]));
    let dst = Connection::open(dir.join("dst.db")).unwrap();
    dst.execute_batch("CREATE TABLE events (id INTEGER, body TEXT);")
        .unwrap();
    let count = || -> i64 {
        dst.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    };
    std::fs::write(
        dir.join("load.yaml"),
        manifest(
            "{type: file, path: events.parquet, format: parquet}",
            "{type: sqlite, path: dst.db, table: events, mode: append}",
        ),
    )
    .unwrap();

    start_and_kill(
        ferry(&dir.join("a"), dir).args(["run", "load.yaml", "--state-url", &db.url]),
        "pause-before-commit:1",
    );
    assert_eq!(count(), 0);
    // B finds A's "committing" mark in PostgreSQL and commits A's staged rows instead
    // of loading them again.
    let report =
        run_ok(ferry(&dir.join("b"), dir).args(["run", "load.yaml", "--state-url", &db.url]));
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["skipped"], 1, "{report}");
    assert_eq!(count(), 20_000);
    // A third process finds the load done.
    let report =
        run_ok(ferry(&dir.join("c"), dir).args(["run", "load.yaml", "--state-url", &db.url]));
    assert_eq!(report["skipped"], 1, "{report}");
    assert_eq!(count(), 20_000, "the rows are in the table once");
}
