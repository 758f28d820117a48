//! PostgreSQL transfers as a user runs them, killed with SIGKILL and run again.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{ferry, run_ok, start_and_kill};
use ferry_connectors::testkit::{unique_name, TestPostgres};

fn schema(pg: &TestPostgres) -> String {
    let name = unique_name("kill").replace('-', "_");
    for db in ["ferry", "ferry_copy"] {
        pg.sql(db, &format!("CREATE SCHEMA {name}"));
    }
    name
}

/// 150,000 rows over more than one partition.
fn big_table(pg: &TestPostgres, table: &str) {
    pg.sql(
        "ferry",
        &format!(
            "CREATE TABLE {table} AS SELECT g AS id, md5(g::text) || repeat('y', g % 40) AS body,
             g * 0.5 AS amount FROM generate_series(1, 150000) g; ANALYZE {table}"
        ),
    );
}

#[test]
fn a_killed_table_export_continues_from_its_finished_partitions() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg);
    let table = format!("{s}.events");
    big_table(&pg, &table);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", pg.url("ferry"));
    let args = ["copy", src.as_str(), "lake/"];

    start_and_kill(ferry(&state, work.path()).args(args), "pause-after-files:1");
    let report = run_ok(ferry(&state, work.path()).args(args));
    assert!(
        report["skipped"].as_u64() >= Some(1),
        "the finished partition is kept: {report}"
    );
    let outputs = report["outputs"].as_array().unwrap();
    assert!(outputs.len() >= 2, "{report}");
    // No key to split by: the table is read in page ranges.
    assert!(outputs[0]["inputs"][0]
        .as_str()
        .is_some_and(|i| i.starts_with("pages-")));
    let written: u64 = outputs
        .iter()
        .filter(|o| o["skipped"] == false)
        .map(|o| o["rows_written"].as_u64().unwrap())
        .sum();
    assert!(written < 150_000, "only the rest was read again");

    // All rows are there exactly once: load the files back and compare.
    let back = format!("{}?table={table}", pg.url("ferry_copy"));
    run_ok(ferry(&state, work.path()).args(["copy", "lake/", back.as_str()]));
    let digest = |db| {
        pg.sql(db, &format!("SELECT count(*) || md5(string_agg(id || body || amount, ',' ORDER BY id)) FROM {table}"))
    };
    assert_eq!(digest("ferry"), digest("ferry_copy"));
}

#[test]
fn a_killed_load_leaves_the_table_as_it_was_and_a_rerun_adds_the_rows_once() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg);
    let table = format!("{s}.events");
    big_table(&pg, &table);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", pg.url("ferry"));
    run_ok(ferry(&state, work.path()).args(["copy", src.as_str(), "events.parquet"]));
    pg.sql(
        "ferry_copy",
        &format!("CREATE TABLE {table} (id integer, body text, amount numeric); INSERT INTO {table} VALUES (0, 'before', 0)"),
    );
    let dst = format!("{}?table={table}&mode=append", pg.url("ferry_copy"));
    let args = ["copy", "events.parquet", dst.as_str()];
    let count = || pg.sql("ferry_copy", &format!("SELECT count(*) FROM {table}"));

    // Killed while streaming rows, then killed just before committing: nothing shows.
    start_and_kill(
        ferry(&state, work.path()).args(args),
        "pause-after-batches:2",
    );
    assert_eq!(count(), "1");
    start_and_kill(
        ferry(&state, work.path()).args(args),
        "pause-before-commit:1",
    );
    assert_eq!(count(), "1");

    let report = run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(report["status"], "succeeded");
    assert_eq!(count(), "150001", "every row once, the old one kept");
    // Running the finished load again does not append twice.
    run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(count(), "150001");
    let staging = pg.sql(
        "ferry_copy",
        &format!(
            "SELECT count(*) FROM pg_tables WHERE schemaname = '{s}' AND tablename LIKE '%ferry%'"
        ),
    );
    assert_eq!(staging, "0", "no staging table left");
}

/// Runs ferry until it has written `batches` batches, terminates the database sessions
/// whose query mentions `like`, lets ferry go on, and returns its exit code, JSON summary
/// and stderr.
fn run_and_drop_connection(
    cmd: &mut Command,
    pg: &TestPostgres,
    like: &str,
    batches: u32,
) -> (Option<i32>, serde_json::Value, String) {
    let mut child = cmd
        .arg("--json")
        .env("FERRY_FAILPOINT", format!("wait-after-batches:{batches}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("ferry: failpoint reached") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "ferry exited early"
        );
    }
    let killed = pg.sql(
        "ferry",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE query LIKE '%{like}%' AND pid <> pg_backend_pid()"
        ),
    );
    assert_ne!(killed, "0", "no session was reading or writing {like}");
    // Let it go on, into the dropped connection.
    drop(child.stdin.take());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    (out.status.code(), report, rest)
}

/// 600,000 rows without a key: large enough that the server is still sending when its
/// session is terminated.
fn large_table(pg: &TestPostgres, table: &str) {
    pg.sql(
        "ferry",
        &format!(
            "CREATE TABLE {table} AS SELECT g AS id, md5(g::text) || repeat('z', g % 50) AS body
             FROM generate_series(1, 600000) g; ANALYZE {table}"
        ),
    );
}

fn digest(pg: &TestPostgres, db: &str, table: &str) -> String {
    pg.sql(
        db,
        &format!("SELECT count(*) || md5(string_agg(id || body, ',' ORDER BY id)) FROM {table}"),
    )
}

#[test]
fn an_export_whose_connection_drops_fails_clearly_and_a_rerun_finishes_it() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg);
    let table = format!("{s}.wide");
    large_table(&pg, &table);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", pg.url("ferry"));
    let args = ["copy", src.as_str(), "lake/"];

    let (code, report, stderr) =
        run_and_drop_connection(ferry(&state, work.path()).args(args), &pg, &table, 1);
    assert_eq!(code, Some(1), "{report} {stderr}");
    let errors: Vec<&str> = report["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["error"].as_str())
        .collect();
    assert!(!errors.is_empty(), "{report}");
    for e in &errors {
        assert!(
            e.contains("closed the connection") && e.contains(&table) && !e.contains('\n'),
            "{e}"
        );
        assert!(!e.contains("password=") && !e.contains(":ferry@"), "{e}");
    }

    let report = run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(report["status"], "succeeded", "{report}");
    let back = format!("{}?table={table}", pg.url("ferry_copy"));
    run_ok(ferry(&state, work.path()).args(["copy", "lake/", back.as_str()]));
    assert_eq!(
        digest(&pg, "ferry", &table),
        digest(&pg, "ferry_copy", &table)
    );
}

#[test]
fn a_load_whose_connection_drops_leaves_the_table_as_it_was() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg);
    let table = format!("{s}.wide");
    large_table(&pg, &table);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", pg.url("ferry"));
    run_ok(ferry(&state, work.path()).args(["copy", src.as_str(), "wide.parquet"]));
    pg.sql(
        "ferry_copy",
        &format!("CREATE TABLE {table} (id integer, body text); INSERT INTO {table} VALUES (0, 'before')"),
    );
    let dst = format!("{}?table={table}&mode=append", pg.url("ferry_copy"));
    let args = ["copy", "wide.parquet", dst.as_str()];

    let (code, report, stderr) = run_and_drop_connection(
        ferry(&state, work.path()).args(args),
        &pg,
        &format!("{s}\".\"wide__ferry"),
        1,
    );
    assert_eq!(code, Some(1), "{report} {stderr}");
    let error = report["outputs"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&table) && error.contains("closed the connection") && !error.contains('\n'),
        "{report}"
    );
    let count = || pg.sql("ferry_copy", &format!("SELECT count(*) FROM {table}"));
    assert_eq!(count(), "1", "the table is as it was");

    let report = run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(count(), "600001", "every row once, the old one kept");
}
