//! SQLite transfers as a user runs them: relative addresses, out to files and back, and a
//! load killed with SIGKILL, then run again.

mod common;

use std::path::Path;

use common::{ferry, run_ok, start_and_kill};
use ferry_connectors::sqlite::rusqlite::Connection;

fn sql(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

fn digest(db: &Path, table: &str) -> String {
    Connection::open(db)
        .unwrap()
        .query_row(
            &format!("SELECT count(*) || ':' || sum(id) || ':' || sum(length(body)) FROM {table}"),
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// 150,000 rows: several batches.
fn big_table(db: &Path) {
    sql(
        db,
        "CREATE TABLE events (id INTEGER NOT NULL, body TEXT, amount DECIMAL(12,2));
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 150000)
         INSERT INTO events SELECT n, hex(n) || substr('yyyyyyyyyyyyyyyyyyyy', 1, n % 20), n * 0.5 FROM g;",
    );
}

#[test]
fn a_table_goes_out_to_files_and_back() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    big_table(&work.path().join("src.db"));
    run_ok(ferry(&state, work.path()).args(["copy", "sqlite:src.db?table=events", "out/"]));
    let report = run_ok(ferry(&state, work.path()).args([
        "copy",
        "out/",
        "sqlite:back/copy.db?table=events",
    ]));
    assert_eq!(report["status"], "succeeded");
    assert_eq!(
        digest(&work.path().join("src.db"), "events"),
        digest(&work.path().join("back/copy.db"), "events")
    );
}

#[test]
fn a_killed_load_leaves_the_table_as_it_was_and_a_rerun_adds_the_rows_once() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    big_table(&work.path().join("src.db"));
    run_ok(ferry(&state, work.path()).args([
        "copy",
        "sqlite:src.db?table=events",
        "events.parquet",
    ]));
    let dst = work.path().join("dst.db");
    sql(
        &dst,
        "CREATE TABLE events (id INTEGER, body TEXT, amount DECIMAL(12,2));
         INSERT INTO events VALUES (0, 'before', 0);",
    );
    let args = [
        "copy",
        "events.parquet",
        "sqlite:dst.db?table=events&mode=append",
    ];
    let count = || -> i64 {
        Connection::open(&dst)
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    };

    // Killed while streaming rows, then killed just before committing: nothing shows.
    start_and_kill(
        ferry(&state, work.path()).args(args),
        "pause-after-batches:2",
    );
    assert_eq!(count(), 1);
    start_and_kill(
        ferry(&state, work.path()).args(args),
        "pause-before-commit:1",
    );
    assert_eq!(count(), 1);

    let report = run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(report["status"], "succeeded");
    assert_eq!(count(), 150_001, "every row once, the old one kept");
    run_ok(ferry(&state, work.path()).args(args));
    assert_eq!(count(), 150_001, "a finished load is not appended twice");
    let tables: String = Connection::open(&dst)
        .unwrap()
        .query_row(
            "SELECT group_concat(name) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, "events", "no staging table left");
}
