//! `ferry run --partitions N`: N processes, started side by side as the pods of a
//! Kubernetes Indexed Job are (the partition from `JOB_COMPLETION_INDEX`), together do the
//! work of one run, each piece once.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::ferry;
use ferry_connectors::testkit::{bytes, unique_name, TestPostgres};

const PARTITIONS: u32 = 3;

/// Runs `ferry run MANIFEST --partitions 3 --json` as three processes at once, one per
/// partition, and returns each one's output, by partition.
fn run_partitions(work: &Path, manifest: &str) -> Vec<Output> {
    let state = work.join("state");
    let children: Vec<_> = (0..PARTITIONS)
        .map(|index| {
            ferry(&state, work)
                .args(["run", manifest, "--partitions", "3", "--json"])
                .env("JOB_COMPLETION_INDEX", index.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn ferry")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for ferry"))
        .collect()
}

/// The JSON summary of a partition that succeeded.
fn summary(index: usize, out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "partition {index}: {stderr}");
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

/// Every file under `dir`, by its path relative to `dir`.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn manifest(work: &Path, name: &str, source: &str, destination: &str) -> String {
    let file = format!("{name}.yaml");
    std::fs::write(
        work.join(&file),
        format!(
            "apiVersion: ferry.dev/v1\nkind: BatchTransfer\nmetadata: {{name: {name}}}\nspec:\n  source: {source}\n  destination: {destination}\n"
        ),
    )
    .unwrap();
    file
}

#[test]
fn three_partitions_copy_a_directory_once_between_them() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for i in 0..60u64 {
        let dir = src.join(format!("day-{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        // Mostly small files, a few of several parts (the part size is 16 MiB by default).
        let len = if i % 20 == 0 {
            17 << 20
        } else {
            1000 + 37 * i as usize
        };
        std::fs::write(dir.join(format!("file-{i}.bin")), bytes(len, i)).unwrap();
    }
    let m = manifest(
        work.path(),
        "tree",
        "{type: file, path: src/}",
        "{type: file, path: dst/}",
    );

    let outputs = run_partitions(work.path(), &m);
    let mut copied = 0;
    for (index, out) in outputs.iter().enumerate() {
        let report = summary(index, out);
        assert_eq!(report["status"], "succeeded", "{report}");
        let objects = report["objects"].as_u64().unwrap();
        assert!(objects > 0, "partition {index} copied nothing: {report}");
        copied += objects;
    }
    assert_eq!(copied, 60, "each file copied by exactly one partition");
    assert_eq!(
        tree(&src),
        tree(&work.path().join("dst")),
        "together the partitions copied the directory, byte for byte"
    );
}

#[test]
fn a_single_file_is_copied_by_partition_0_and_the_others_say_they_have_nothing_to_do() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("one.bin"), bytes(5000, 7)).unwrap();
    let m = manifest(
        work.path(),
        "one",
        "{type: file, path: one.bin}",
        "{type: file, path: copy.bin}",
    );
    let outputs = run_partitions(work.path(), &m);
    for (index, out) in outputs.iter().enumerate() {
        let report = summary(index, out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if index == 0 {
            assert_eq!(report["objects"], 1, "{report}");
            assert!(stderr.trim().is_empty(), "{stderr}");
        } else {
            assert_eq!(report["objects"], 0, "{report}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(
                lines,
                [format!(
                    "ferry: partition {index} of 3: nothing to do: the source is one object; partition 0 does it all"
                )],
            );
        }
    }
    assert_eq!(
        std::fs::read(work.path().join("copy.bin")).unwrap(),
        bytes(5000, 7)
    );
}

/// About 28 MiB, so the table is read in several key ranges.
fn partitioned_table(pg: &TestPostgres, table: &str) {
    pg.sql(
        "ferry",
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, body text, amount numeric);
             INSERT INTO {table} SELECT g, md5(g::text) || repeat('p', g % 60), g * 0.25
             FROM generate_series(1, 250000) g; ANALYZE {table}"
        ),
    );
}

fn digest(pg: &TestPostgres, db: &str, table: &str) -> String {
    pg.sql(
        db,
        &format!(
            "SELECT count(*) || ' ' || md5(string_agg(id || ':' || body || ':' || amount, ',' ORDER BY id)) FROM {table}"
        ),
    )
}

fn schema(pg: &TestPostgres) -> String {
    let name = unique_name("parts").replace('-', "_");
    for db in ["ferry", "ferry_copy"] {
        pg.sql(db, &format!("CREATE SCHEMA {name}"));
    }
    name
}

#[test]
fn three_partitions_append_a_table_into_a_new_table_each_row_once() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg);
    let table = format!("{s}.events");
    partitioned_table(&pg, &table);
    let work = tempfile::tempdir().unwrap();
    // The target does not exist: the first partition to commit creates it, the others
    // add to it.
    let m = manifest(
        work.path(),
        "events",
        &format!(
            "{{type: postgres, url: \"{}\", table: {table}}}",
            pg.url("ferry")
        ),
        &format!(
            "{{type: postgres, url: \"{}\", table: {table}, mode: append}}",
            pg.url("ferry_copy")
        ),
    );

    let outputs = run_partitions(work.path(), &m);
    let mut rows = 0;
    for (index, out) in outputs.iter().enumerate() {
        let report = summary(index, out);
        assert_eq!(report["status"], "succeeded", "{report}");
        let read = report["source"]["rows"].as_u64().unwrap();
        assert!(read > 0, "partition {index} read nothing: {report}");
        rows += read;
    }
    assert_eq!(rows, 250_000);
    assert_eq!(
        digest(&pg, "ferry", &table),
        digest(&pg, "ferry_copy", &table)
    );
    let staging = pg.sql(
        "ferry_copy",
        &format!(
            "SELECT count(*) FROM pg_tables WHERE schemaname = '{s}' AND tablename LIKE '%ferry%'"
        ),
    );
    assert_eq!(staging, "0", "no staging table left");
}

#[test]
fn three_partitions_export_a_table_into_files_that_do_not_collide() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg);
    let table = format!("{s}.events");
    partitioned_table(&pg, &table);
    let work = tempfile::tempdir().unwrap();
    let m = manifest(
        work.path(),
        "export",
        &format!(
            "{{type: postgres, url: \"{}\", table: {table}}}",
            pg.url("ferry")
        ),
        "{type: file, path: lake/, format: parquet}",
    );

    let outputs = run_partitions(work.path(), &m);
    let mut written = 0;
    for (index, out) in outputs.iter().enumerate() {
        let report = summary(index, out);
        for output in report["outputs"].as_array().unwrap() {
            let key = output["key"].as_str().unwrap();
            assert!(
                key.starts_with(&format!("partition-{index}-part-")),
                "{key} does not name partition {index}"
            );
            written += 1;
        }
    }
    let files = tree(&work.path().join("lake"));
    assert_eq!(files.len(), written, "one file per range, none overwritten");

    // Loaded back in one run, the files hold every row once.
    let back = format!("{}?table={table}", pg.url("ferry_copy"));
    let state = work.path().join("state");
    common::run_ok(ferry(&state, work.path()).args(["copy", "lake/", back.as_str()]));
    assert_eq!(
        digest(&pg, "ferry", &table),
        digest(&pg, "ferry_copy", &table)
    );
}

/// Runs ferry and returns its exit code and stderr.
fn fails(cmd: &mut std::process::Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("run ferry");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "'{needle}' not in: {stderr}");
    }
}

#[test]
fn a_partitioned_overwrite_of_a_table_is_refused_naming_the_field() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("rows.csv"), "id,name\n1,a\n2,b\n").unwrap();
    let state = work.path().join("state");
    for mode in ["", ", mode: overwrite"] {
        let m = manifest(
            work.path(),
            "load",
            "{type: file, path: rows.csv}",
            &format!("{{type: sqlite, path: shop.db, table: people{mode}}}"),
        );
        let (code, stderr) = fails(
            ferry(&state, work.path())
                .args(["run", &m, "--partitions", "3"])
                .env("JOB_COMPLETION_INDEX", "1"),
        );
        assert_eq!(code, Some(2), "{stderr}");
        one_line(&stderr, &["spec.destination.mode", "append or upsert"]);
        assert!(!work.path().join("shop.db").exists(), "nothing was written");
    }
}

#[test]
fn a_partition_outside_the_count_or_none_at_all_is_refused() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a.bin"), b"a").unwrap();
    let m = manifest(
        work.path(),
        "one",
        "{type: file, path: a.bin}",
        "{type: file, path: b.bin}",
    );
    let state = work.path().join("state");
    let run = |extra: &[&str], index: Option<&str>| {
        let mut cmd = ferry(&state, work.path());
        cmd.args(["run", &m, "--partitions", "3"])
            .args(extra)
            .env_remove("JOB_COMPLETION_INDEX");
        if let Some(i) = index {
            cmd.env("JOB_COMPLETION_INDEX", i);
        }
        fails(&mut cmd)
    };

    let (code, stderr) = run(&["--partition", "3"], None);
    assert_eq!(code, Some(2), "{stderr}");
    one_line(&stderr, &["--partition", "3 is not below --partitions 3"]);

    let (code, stderr) = run(&[], Some("5"));
    assert_eq!(code, Some(2), "{stderr}");
    one_line(
        &stderr,
        &["JOB_COMPLETION_INDEX", "5 is not below --partitions 3"],
    );

    let (code, stderr) = run(&[], None);
    assert_eq!(code, Some(2), "{stderr}");
    one_line(&stderr, &["--partition", "JOB_COMPLETION_INDEX"]);

    // --partition decides over the environment.
    let (code, stderr) = run(&["--partition", "0"], Some("7"));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(work.path().join("b.bin")).unwrap(), b"a");
}
