//! MySQL/MariaDB loads as a user runs them, killed with SIGKILL and run again.

mod common;

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
