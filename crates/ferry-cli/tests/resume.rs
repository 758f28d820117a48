//! Re-running the same command finishes the job, even when the killed run's last step
//! reached the destination: a completed upload it never recorded, a table load whose
//! table was emptied, truncated or dropped since.

mod common;

use std::path::Path;
use std::process::Command;

use common::proxy::{Answer, Proxy, Seen};
use common::{ferry, start_and_kill};
use ferry_connectors::testkit::{bytes, Remote};

const MIB: usize = 1024 * 1024;

/// `ferry copy` in parts of 5 MiB, with its S3 requests going to `endpoint`.
fn copy(state: &Path, src: &str, dst: &str, endpoint: Option<&str>) -> Command {
    let mut cmd = ferry(state, state.parent().unwrap());
    cmd.args([
        "copy",
        "--part-size",
        "5MiB",
        "--concurrency",
        "2",
        src,
        dst,
    ]);
    if let Some(endpoint) = endpoint {
        cmd.env("AWS_ENDPOINT_URL", endpoint);
    }
    cmd
}

fn summary(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.arg("--json").output().expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

fn s3_upstream() -> Option<String> {
    Remote::S3.base()?;
    let endpoint = std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap();
    Some(
        endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
    )
}

fn is_completion(s: &Seen) -> bool {
    s.method == "POST" && s.target.contains("uploadId=")
}

/// `uploadId=…` of a request the proxy saw.
fn upload_id(seen: &Seen) -> String {
    let query = seen.target.split_once('?').unwrap().1;
    let id = query.split('&').find(|p| p.starts_with("uploadId="));
    id.unwrap().to_string()
}

/// The upload id of the one completion `proxy` saw.
fn completed_upload(proxy: &Proxy) -> String {
    let seen = proxy.seen(is_completion);
    assert_eq!(seen.len(), 1, "{seen:?}");
    upload_id(&seen[0])
}

/// A work directory with a state directory and a source file of three and a bit 5 MiB
/// parts of bytes from `seed`: the directory, the state, the source's path, its bytes.
fn big_source(seed: u64) -> (tempfile::TempDir, std::path::PathBuf, String, Vec<u8>) {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("big.bin");
    let data = bytes(3 * 5 * MIB + 17, seed);
    std::fs::write(&src, &data).unwrap();
    let src = src.display().to_string();
    (work, state, src, data)
}

fn is_part(s: &Seen) -> bool {
    s.method == "PUT" && s.target.contains("partNumber=")
}

fn no_such_upload() -> Answer {
    Answer {
        status: "404 Not Found",
        body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchUpload</Code>\
               <Message>The specified upload does not exist.</Message></Error>"
            .into(),
    }
}

fn internal_error() -> Answer {
    Answer {
        status: "500 Internal Server Error",
        body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
               <Message>We encountered an internal error.</Message></Error>"
            .into(),
    }
}

fn read_s3(state: &Path, object: &str) -> Vec<u8> {
    let out = state.parent().unwrap().join("read-back.bin");
    let _ = std::fs::remove_file(&out);
    let done = ferry(state, state.parent().unwrap())
        .args(["copy", object, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    std::fs::read(out).unwrap()
}

/// Kills a copy to S3 after its completion was sent and answered, before the checkpoint
/// recorded it; the re-run's own completion gets `answer` (the upload is gone, or the
/// server fails). The re-run must find the object complete and send no part again.
fn completed_but_unrecorded_upload_is_done(answer: fn() -> Answer) {
    let Some(upstream) = s3_upstream() else {
        return;
    };
    let (_work, state, src_s, data) = big_source(5);
    let dst = format!("{}big.bin", Remote::S3.unique("race").unwrap());

    let through = Proxy::start(&upstream, |_| None);
    start_and_kill(
        &mut copy(&state, &src_s, &dst, Some(&through.url())),
        "pause-after-complete:1",
    );
    let stale = completed_upload(&through);

    let racing = Proxy::start(&upstream, move |s| s.target.contains(&stale).then(answer));
    let v = summary(&mut copy(&state, &src_s, &dst, Some(&racing.url())));
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["resumed"], 1, "{v}");
    assert_eq!(v["bytes"], 0, "the re-run moved bytes again: {v}");
    assert_eq!(racing.count(is_part), 0, "parts were sent again");
    assert!(racing.count(is_completion) >= 1);
    assert!(read_s3(&state, &dst) == data, "content differs");
}

#[test]
fn completed_upload_whose_id_is_gone_counts_as_done() {
    completed_but_unrecorded_upload_is_done(no_such_upload);
}

#[test]
fn completed_upload_whose_completion_now_fails_counts_as_done() {
    completed_but_unrecorded_upload_is_done(internal_error);
}

/// The killed run uploaded every part but never completed, and the upload is gone since
/// (expired, aborted): nothing arrived, so the re-run starts the file again.
#[test]
fn gone_upload_without_its_object_starts_the_file_again() {
    let Some(upstream) = s3_upstream() else {
        return;
    };
    let (_work, state, src_s, data) = big_source(9);
    let dst = format!("{}big.bin", Remote::S3.unique("gone").unwrap());

    let through = Proxy::start(&upstream, |_| None);
    start_and_kill(
        &mut copy(&state, &src_s, &dst, Some(&through.url())),
        "pause-after-parts:4",
    );
    assert_eq!(through.count(is_completion), 0);
    let stale = upload_id(&through.seen(is_part)[0]);

    let racing = Proxy::start(&upstream, move |s| {
        (is_completion(s) && s.target.contains(&stale)).then(no_such_upload)
    });
    let v = summary(&mut copy(&state, &src_s, &dst, Some(&racing.url())));
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["bytes"], data.len() as u64, "{v}");
    assert!(read_s3(&state, &dst) == data, "content differs");
}

#[test]
fn completed_local_upload_is_not_copied_again() {
    let (work, state, s, data) = big_source(6);
    let dst = work.path().join("copy.bin");
    let d = dst.display().to_string();
    start_and_kill(&mut copy(&state, &s, &d, None), "pause-after-complete:1");
    let v = summary(&mut copy(&state, &s, &d, None));
    assert_eq!((&v["failed"], &v["resumed"]), (&0.into(), &1.into()), "{v}");
    assert_eq!(v["bytes"], 0, "the re-run copied again: {v}");
    assert!(std::fs::read(&dst).unwrap() == data);
}

/// The object the killed run completed was replaced by another of the same size: the
/// re-run must not take it for its own, and copies the file again.
#[test]
fn replaced_object_of_the_same_size_is_copied_again() {
    let (work, state, src_s, data) = big_source(7);
    let other = work.path().join("other.bin");
    std::fs::write(&other, bytes(data.len(), 8)).unwrap();

    // Local: the read-back checksum tells them apart.
    let dst = work.path().join("copy.bin");
    let d = dst.display().to_string();
    start_and_kill(
        &mut copy(&state, &src_s, &d, None),
        "pause-after-complete:1",
    );
    std::fs::copy(&other, &dst).unwrap();
    let v = summary(&mut copy(&state, &src_s, &d, None));
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["bytes"], data.len() as u64, "{v}");
    assert!(std::fs::read(&dst).unwrap() == data);

    // S3: the multipart ETag tells them apart.
    let Some(upstream) = s3_upstream() else {
        return;
    };
    let dst = format!("{}big.bin", Remote::S3.unique("replaced").unwrap());
    let through = Proxy::start(&upstream, |_| None);
    start_and_kill(
        &mut copy(&state, &src_s, &dst, Some(&through.url())),
        "pause-after-complete:1",
    );
    let stale = completed_upload(&through);
    let status = ferry(&state, work.path())
        .args(["copy", "--part-size", "5MiB"])
        .args([other.to_str().unwrap(), dst.as_str()])
        .status()
        .unwrap();
    assert!(status.success());
    let racing = Proxy::start(&upstream, move |s| {
        s.target.contains(&stale).then(no_such_upload)
    });
    let v = summary(&mut copy(&state, &src_s, &dst, Some(&racing.url())));
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["bytes"], data.len() as u64, "{v}");
    assert_eq!(racing.count(is_part), 4, "the file was not copied again");
    assert!(read_s3(&state, &dst) == data, "content differs");
}

/// A database the table tests load into: the address of table `t`, and SQL run on it.
struct Db {
    name: &'static str,
    address: String,
    sql: Box<dyn Fn(&str) -> String>,
    /// TRUNCATE exists (SQLite empties with DELETE, which keeps the table's identity).
    truncates: bool,
}

/// `ferry copy rows.csv DB?table=t&mode=append` as a user runs it: what it printed on
/// stdout and stderr.
fn load(work: &Path, db: &Db, json: bool) -> (String, String) {
    let mut cmd = ferry(&work.join("state"), work);
    cmd.args(["copy", "rows.csv", &format!("{}&mode=append", db.address)]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}: {stderr}", db.name);
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn rows(db: &Db) -> u64 {
    (db.sql)("SELECT count(*) FROM t").parse().unwrap()
}

/// A finished load is skipped, with its reason, only while the table still holds it:
/// emptied, truncated (and refilled) or dropped, it is loaded again by the same command.
fn finished_load_is_skipped_only_while_the_table_holds_it(db: Db) {
    let work = tempfile::tempdir().unwrap();
    let csv: String = std::iter::once("id,name\n".to_string())
        .chain((1..=1000).map(|i| format!("{i},row {i}\n")))
        .collect();
    std::fs::write(work.path().join("rows.csv"), csv).unwrap();
    let name = db.name;
    let loaded_again = |(out, err): (String, String), why: &str| {
        assert!(!out.contains("already done"), "{name}: skipped: {out}");
        assert!(
            err.contains("ferry: loaded again: table ") && err.contains(why),
            "{name}: no '{why}' in: {err}"
        );
    };
    let skipped = |(out, _): (String, String)| {
        assert!(
            out.contains("1 already done: table ")
                && out.contains("still holds the 1,000 rows loaded at"),
            "{name}: not skipped: {out}"
        );
    };

    let (out, _) = load(work.path(), &db, false);
    assert!(!out.contains("already done"), "{out}");
    assert_eq!(rows(&db), 1000);

    // Untouched: skipped, saying why (also in the JSON summary).
    skipped(load(work.path(), &db, false));
    let (out, _) = load(work.path(), &db, true);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["skipped"], 1, "{v}");
    let reason = v["outputs"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("still holds the 1,000 rows loaded at"),
        "{v}"
    );
    assert_eq!(rows(&db), 1000);

    // Emptied.
    (db.sql)("DELETE FROM t");
    loaded_again(
        load(work.path(), &db, false),
        "holds 0 rows, fewer than the 1,000",
    );
    assert_eq!(rows(&db), 1000);

    // Truncated, then refilled with more rows than were loaded: only the identity tells.
    if db.truncates {
        (db.sql)("TRUNCATE TABLE t");
        (db.sql)("INSERT INTO t (id, name) VALUES (5001, 'other')");
        for _ in 0..10 {
            (db.sql)("INSERT INTO t (id, name) SELECT id + 5000, name FROM t");
        }
        let before = rows(&db);
        assert!(before >= 1000);
        loaded_again(load(work.path(), &db, false), "truncated or recreated");
        assert_eq!(rows(&db), before + 1000);
        (db.sql)("DELETE FROM t WHERE name = 'other'");
        skipped(load(work.path(), &db, false));
    }

    // Dropped.
    (db.sql)("DROP TABLE t");
    loaded_again(load(work.path(), &db, false), "no longer exists");
    assert_eq!(rows(&db), 1000);
    skipped(load(work.path(), &db, false));
    assert_eq!(rows(&db), 1000);
}

#[test]
fn finished_postgres_load_is_skipped_only_while_the_table_holds_it() {
    let Some(pg) = ferry_connectors::testkit::TestPostgres::get() else {
        return;
    };
    let schema = ferry_connectors::testkit::unique_name("resume").replace('-', "_");
    pg.sql("ferry", &format!("CREATE SCHEMA {schema}"));
    let address = format!("{}?table={schema}.t", pg.url("ferry"));
    finished_load_is_skipped_only_while_the_table_holds_it(Db {
        name: "PostgreSQL",
        address,
        sql: Box::new(move |sql| pg.sql("ferry", &format!("SET search_path TO {schema}; {sql}"))),
        truncates: true,
    });
}

#[test]
fn finished_mysql_load_is_skipped_only_while_the_table_holds_it() {
    let Some(my) = ferry_connectors::testkit::TestMysql::get() else {
        return;
    };
    let db = ferry_connectors::testkit::unique_name("resume").replace('-', "_");
    my.sql("ferry", &format!("CREATE DATABASE {db}"));
    let address = format!("{}?table=t", my.url(&db));
    finished_load_is_skipped_only_while_the_table_holds_it(Db {
        name: "MySQL",
        address,
        sql: Box::new(move |sql| my.sql(&db, sql)),
        truncates: true,
    });
}

#[test]
fn finished_sqlite_load_is_skipped_only_while_the_table_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let address = format!("sqlite:{}?table=t", path.display());
    finished_load_is_skipped_only_while_the_table_holds_it(Db {
        name: "SQLite",
        address,
        sql: Box::new(move |sql| {
            let c = ferry_connectors::sqlite::rusqlite::Connection::open(&path).unwrap();
            if sql.starts_with("SELECT") {
                c.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .unwrap()
                    .to_string()
            } else {
                c.execute_batch(sql).unwrap();
                String::new()
            }
        }),
        truncates: false,
    });
}
