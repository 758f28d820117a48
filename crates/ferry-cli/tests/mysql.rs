//! MySQL/MariaDB loads as a user runs them, killed with SIGKILL (or their sessions
//! killed by the server) and run again.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use common::{ferry, run_ok, start_and_kill};
use ferry_connectors::testkit::{unique_name, TestMysql};

#[test]
fn a_killed_load_leaves_the_table_as_it_was_and_a_rerun_adds_the_rows_once() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let table = unique_name("kill").replace('-', "_");
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, body varchar(80), amount decimal(12,2));
             INSERT INTO {table} SELECT seq, concat(md5(seq), repeat('y', seq % 40)), seq * 0.5
             FROM seq_1_to_150000"
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", my.url("ferry"));
    run_ok(ferry(&state, work.path()).args(["copy", src.as_str(), "events.parquet"]));
    my.sql(
        "ferry_copy",
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, body varchar(80), amount decimal(12,2));
             INSERT INTO {table} VALUES (0, 'before', 0)"
        ),
    );
    let dst = format!("{}?table={table}&mode=append", my.url("ferry_copy"));
    let args = ["copy", "events.parquet", dst.as_str()];
    let count = || my.sql("ferry_copy", &format!("SELECT count(*) FROM {table}"));

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
    run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(count(), "150001", "a finished load is not appended twice");
    let checksum = |db| my.sql(db, &format!("CHECKSUM TABLE {table}"));
    my.sql("ferry_copy", &format!("DELETE FROM {table} WHERE id = 0"));
    assert_eq!(
        checksum("ferry").split_whitespace().last(),
        checksum("ferry_copy").split_whitespace().last()
    );
    let staging = my.sql(
        "ferry_copy",
        &format!(
            "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'ferry_copy' AND TABLE_NAME LIKE '{table}%ferry%'"
        ),
    );
    assert_eq!(staging, "0", "no staging table left");
}

#[test]
fn a_load_whose_session_is_killed_fails_clearly_and_a_rerun_adds_the_rows_once() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    // A database of its own, so that killing its sessions touches no other test.
    let db = unique_name("dropped").replace('-', "_");
    let table = "events";
    my.sql("ferry", &format!("CREATE DATABASE {db}"));
    my.sql(
        &db,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, body varchar(80));
             INSERT INTO {table} SELECT seq, concat(md5(seq), repeat('y', seq % 40))
             FROM seq_1_to_150000"
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", my.url(&db));
    run_ok(ferry(&state, work.path()).args(["copy", src.as_str(), "events.parquet"]));
    my.sql(
        &db,
        "CREATE TABLE copied (id bigint PRIMARY KEY, body varchar(80));
         INSERT INTO copied VALUES (0, 'before')",
    );
    let dst = format!("{}?table=copied&mode=append", my.url(&db));
    let args = ["copy", "events.parquet", dst.as_str()];
    let count = || my.sql(&db, "SELECT count(*) FROM copied");

    let mut child = ferry(&state, work.path())
        .args(args)
        .arg("--json")
        .env("FERRY_FAILPOINT", "wait-after-batches:1")
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
    let sessions = my.sql(
        "ferry",
        &format!(
            "SELECT ID FROM information_schema.PROCESSLIST
             WHERE DB = '{db}' AND ID <> CONNECTION_ID()"
        ),
    );
    assert!(!sessions.is_empty(), "ferry has sessions to {db}");
    for id in sessions.split_whitespace() {
        my.sql("ferry", &format!("KILL CONNECTION {id}"));
    }
    // Let it go on, into the killed sessions.
    drop(child.stdin.take());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(out.status.code(), Some(1), "{report} {rest}");
    let error = report["outputs"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&db) && error.contains("copied") && !error.contains('\n'),
        "{report}"
    );
    assert_eq!(count(), "1", "the table is as it was");

    let report = run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(count(), "150001", "every row once, the old one kept");
    my.sql("ferry", &format!("DROP DATABASE {db}"));
}
