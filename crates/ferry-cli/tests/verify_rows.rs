//! `ferry verify` of rows: a table against its copy in files or another database, clean
//! when they hold the same rows, and naming the key of a row changed, removed or doubled.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ferry, run_ok};
use ferry_connectors::sqlite::rusqlite::Connection;
use ferry_connectors::testkit::{unique_name, TestMysql, TestPostgres};

/// `ferry verify ARGS --json` in `work`: exit code, the summary, stderr.
fn verify(work: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = ferry(&work.join("state"), work)
        .arg("verify")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), summary, stderr)
}

fn keys(report: &serde_json::Value) -> Vec<(String, String)> {
    report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap().to_string(),
                k["difference"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pg_schema(pg: &TestPostgres) -> String {
    let name = unique_name("verify").replace('-', "_");
    for db in ["ferry", "ferry_copy"] {
        pg.sql(db, &format!("CREATE SCHEMA {name}"));
    }
    name
}

/// 50,000 orders of several types, with NULLs and empty strings.
fn pg_orders(pg: &TestPostgres, table: &str) {
    pg.sql(
        "ferry",
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, customer text, amount numeric(12,2),
               placed date, at timestamptz, ratio float8, paid boolean, note varchar(20));
             INSERT INTO {table} SELECT g, 'c' || (g % 97), g * 0.25, date '2024-01-01' + g % 400,
               timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute', g / 7.0, g % 2 = 0,
               CASE WHEN g % 5 = 0 THEN NULL WHEN g % 5 = 1 THEN '' ELSE 'n' || g END
             FROM generate_series(1, 50000) g; ANALYZE {table}"
        ),
    );
}

#[test]
fn a_postgres_table_and_its_parquet_copy_verify_clean_and_a_changed_row_is_named() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = pg_schema(&pg);
    let table = format!("{s}.orders");
    pg_orders(&pg, &table);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", pg.url("ferry"));

    // --verify runs the comparison after the copy.
    let copied =
        run_ok(ferry(&state, work.path()).args(["copy", src.as_str(), "lake/", "--verify"]));
    assert_eq!(copied["verification"]["status"], "succeeded", "{copied}");
    assert_eq!(copied["verification"]["source"]["rows"], 50000);

    let (code, report, err) = verify(work.path(), &[src.as_str(), "lake/"]);
    assert_eq!(code, 0, "{report}{err}");
    assert_eq!(report["key"], serde_json::json!(["id"]));
    assert_eq!(report["destination"]["rows"], 50000);
    assert!(report["ranges"].as_u64().unwrap() > 1, "{report}");
    assert_eq!(report["source"]["digest"], report["destination"]["digest"]);

    // One value of one row changed: its range, then its key.
    pg.sql(
        "ferry",
        &format!("UPDATE {table} SET amount = amount + 0.01 WHERE id = 31337"),
    );
    let (code, report, _) = verify(work.path(), &[src.as_str(), "lake/"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["status"], "failed");
    assert_eq!(
        report["differing_ranges"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    let range = &report["differing_ranges"][0];
    assert!(range["from"].as_i64().unwrap() <= 31337 && range["to"].as_i64().unwrap() > 31337);
    assert_eq!(
        keys(&report),
        [("id=31337".to_string(), "changed".to_string())]
    );

    // A row deleted at the source, and a NULL where the copy has an empty string.
    pg.sql(
        "ferry",
        &format!("DELETE FROM {table} WHERE id = 7; UPDATE {table} SET note = NULL WHERE id = 11"),
    );
    let (code, report, _) = verify(work.path(), &[src.as_str(), "lake/"]);
    assert_eq!(code, 1);
    assert_eq!(
        keys(&report),
        [
            ("id=7".to_string(), "only at destination".to_string()),
            ("id=11".to_string(), "changed".to_string()),
            ("id=31337".to_string(), "changed".to_string()),
        ]
    );

    // Text output names them too.
    let out = ferry(&state, work.path())
        .args(["verify", src.as_str(), "lake/"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("key id=31337: changed"), "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("different: 49999 rows at source, 50000 at destination"),
        "{text}"
    );
}

#[test]
fn a_mysql_table_and_its_postgres_copy_verify_clean_and_a_changed_row_is_named() {
    let (Some(my), Some(pg)) = (TestMysql::get(), TestPostgres::get()) else {
        return;
    };
    let table = unique_name("verify").replace('-', "_");
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, name varchar(40), price decimal(10,3),
               made datetime, day date, weight double, small tinyint, flag boolean);
             INSERT INTO {table} SELECT seq, concat('item ', seq), seq / 8, 
               timestamp '2024-03-01 10:00:00' + interval seq second, date '2020-01-01' + interval (seq % 900) day,
               seq / 3, seq % 100, seq % 3 = 0
             FROM seq_1_to_20000"
        ),
    );
    let s = pg_schema(&pg);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = format!("{}?table={table}", my.url("ferry"));
    let dst = format!("{}?table={s}.{table}", pg.url("ferry_copy"));
    run_ok(ferry(&state, work.path()).args(["copy", src.as_str(), dst.as_str()]));

    let (code, report, err) = verify(work.path(), &[src.as_str(), dst.as_str()]);
    assert_eq!(code, 0, "{report}{err}");
    assert_eq!(report["source"]["rows"], 20000);
    assert_eq!(report["key"], serde_json::json!(["id"]));

    pg.sql(
        "ferry_copy",
        &format!("UPDATE {s}.{table} SET name = 'item x' WHERE id = 12345"),
    );
    let (code, report, _) = verify(work.path(), &[src.as_str(), dst.as_str()]);
    assert_eq!(code, 1);
    assert_eq!(
        keys(&report),
        [("id=12345".to_string(), "changed".to_string())]
    );
}

fn sqlite(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

#[test]
fn a_sqlite_table_and_its_csv_copy_verify_clean_and_a_doubled_row_is_named() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    sqlite(
        &work.path().join("src.db"),
        "CREATE TABLE events (id INTEGER NOT NULL, body TEXT, amount REAL, day TEXT);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 30000)
         INSERT INTO events SELECT n, 'b' || n, n * 0.5, date('2024-01-01', '+' || (n % 300) || ' days') FROM g;",
    );
    run_ok(ferry(&state, work.path()).args(["copy", "sqlite:src.db?table=events", "events.csv"]));

    // No primary key: one digest, or ranges by the key given.
    let (code, report, err) = verify(work.path(), &["sqlite:src.db?table=events", "events.csv"]);
    assert_eq!(code, 0, "{report}{err}");
    assert_eq!(report["ranges"], 1);
    let (code, report, err) = verify(
        work.path(),
        &["sqlite:src.db?table=events", "events.csv", "--key", "id"],
    );
    assert_eq!(code, 0, "{report}{err}");
    assert!(report["ranges"].as_u64().unwrap() > 1);

    // A row doubled in the copy.
    let csv = work.path().join("events.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("4242,"))
        .unwrap()
        .to_string();
    std::fs::write(&csv, format!("{text}{line}\n")).unwrap();
    let (code, report, _) = verify(
        work.path(),
        &["sqlite:src.db?table=events", "events.csv", "--key", "id"],
    );
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        keys(&report),
        [(
            "id=4242".to_string(),
            "1 rows at source, 2 at destination".to_string()
        )]
    );
    assert_eq!(report["destination"]["rows"], 30001);
}

#[test]
fn bad_input_is_one_line_naming_the_address_or_column_without_secrets() {
    let work = tempfile::tempdir().unwrap();
    sqlite(
        &work.path().join("src.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    std::fs::write(work.path().join("t.csv"), "id,v\n1,a\n").unwrap();

    let (code, _, err) = verify(
        work.path(),
        &["sqlite:src.db?table=t", "t.csv", "--key", "nope"],
    );
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("'nope'") && err.contains("--key"), "{err}");

    let (code, _, err) = verify(work.path(), &["sqlite:src.db?table=missing", "t.csv"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("missing"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .current_dir(work.path())
        .env("FERRY_STATE_DIR", work.path().join("state"))
        .args([
            "verify",
            "postgres://someone:hunter2@127.0.0.1:1/db?table=t",
            "t.csv",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("127.0.0.1") && !err.contains("hunter2"),
        "{err}"
    );
}
