//! `ferry run` and record-path `ferry copy` as a user runs them.

mod common;

use std::path::{Path, PathBuf};

use common::{ferry, start_and_kill};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line_error(code: i32, stderr: &str, expected_code: i32, needles: &[&str]) {
    assert_eq!(code, expected_code, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "'{needle}' not in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A working directory laid out like the repository: examples/data and examples/manifests.
fn workspace() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    for rel in [
        "examples/data/orders.csv",
        "examples/manifests/orders-to-lake.yaml",
    ] {
        let to = work.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join(rel), to).unwrap();
    }
    work
}

#[test]
fn the_readme_manifest_runs_and_reports_schemas() {
    let work = workspace();
    let state = work.path().join("state");
    let (code, out, err) = run(ferry(&state, work.path()).args([
        "run",
        "examples/manifests/orders-to-lake.yaml",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["source"]["format"], "csv");
    assert_eq!(report["source"]["rows"], 200);
    assert_eq!(report["destination"]["format"], "parquet");
    let source_columns: Vec<&str> = report["source"]["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(source_columns.contains(&"notes"));
    let dest_columns: Vec<&str> = report["destination"]["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(!dest_columns.contains(&"notes"));
    assert_eq!(report["destination"]["schema"][0]["type"], "Int64");
    assert_eq!(
        report["transformations"],
        serde_json::json!([
            "'drop-notes' (RemoveColumn)",
            "'big-orders' (Filter)",
            "'hash-email' (Digest)",
            "'hide-phone' (Redact)"
        ])
    );
    let rows = report["destination"]["rows"].as_u64().unwrap();
    assert!(rows > 0 && rows < 200, "{rows}");
    assert!(work.path().join("out/lake/orders/orders.parquet").is_file());

    // Text output says what happened in one line.
    let (code, out, err) = run(ferry(&state, work.path()).args([
        "run",
        "examples/manifests/orders-to-lake.yaml",
        "--no-resume",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("converted: 200 rows (csv")
            && out.contains(&format!("-> {rows} rows (parquet")),
        "{out}"
    );
}

#[test]
fn copy_takes_transformations_as_flags() {
    let work = workspace();
    let state = work.path().join("state");
    // A file of transformations comes first, then the flags, in order.
    std::fs::write(
        work.path().join("steps.yaml"),
        "- {name: no-notes, action: RemoveColumn, columns: [notes]}\n",
    )
    .unwrap();
    let (code, _, err) = run(ferry(&state, work.path()).args([
        "copy",
        "examples/data/orders.csv",
        "out/orders.jsonl",
        "--transform-file",
        "steps.yaml",
        "--transform",
        "RemoveColumn(phone)",
        "--transform",
        "Digest(email, algo=md5)",
        "--transform",
        "Filter(country IN ('DE', 'FR') AND amount BETWEEN 100 AND 200)",
    ]));
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(work.path().join("out/orders.jsonl")).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "order_id",
                "customer_id",
                "email",
                "country",
                "amount",
                "ordered_at"
            ]
        );
        let email = row["email"].as_str().unwrap();
        assert!(email.len() == 32 && email.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(["DE", "FR"].contains(&row["country"].as_str().unwrap()));
        let amount = row["amount"].as_f64().unwrap();
        assert!((100.0..=200.0).contains(&amount), "{amount}");
    }
}

#[test]
fn encrypt_then_decrypt_gives_back_the_file() {
    let work = workspace();
    let state = work.path().join("state");
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    for deterministic in ["false", "true"] {
        let encrypt =
            format!("Encrypt(email, phone, keyRef=env:ORDERS_KEY, deterministic={deterministic})");
        let decrypt =
            format!("Decrypt(email, phone, keyRef=env:ORDERS_KEY, deterministic={deterministic})");
        let (code, _, err) = run(ferry(&state, work.path()).env("ORDERS_KEY", key).args([
            "copy",
            "examples/data/orders.csv",
            "sealed.parquet",
            "--transform",
            &encrypt,
        ]));
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = run(ferry(&state, work.path()).env("ORDERS_KEY", key).args([
            "copy",
            "sealed.parquet",
            "sealed.csv",
        ]));
        assert_eq!(code, 0, "{err}");
        let sealed = std::fs::read_to_string(work.path().join("sealed.csv")).unwrap();
        assert!(
            !sealed.contains("@example.com"),
            "e-mail addresses left in clear"
        );

        let (code, _, err) = run(ferry(&state, work.path()).env("ORDERS_KEY", key).args([
            "copy",
            "sealed.parquet",
            "opened.csv",
            "--transform",
            &decrypt,
        ]));
        assert_eq!(code, 0, "{err}");
        // The same file through the record path without encryption (inferred amounts are
        // floats, so 145.70 comes back as 145.7 either way).
        let (code, _, err) = run(ferry(&state, work.path()).args([
            "copy",
            "examples/data/orders.csv",
            "plain.csv",
            "--transform",
            "Sample(fraction=1)",
        ]));
        assert_eq!(code, 0, "{err}");
        let plain = std::fs::read_to_string(work.path().join("plain.csv")).unwrap();
        let opened = std::fs::read_to_string(work.path().join("opened.csv")).unwrap();
        assert_eq!(opened, plain, "deterministic={deterministic}");
        assert!(opened.contains("customer21@example.com,+49 170-3530829"));

        // The wrong key fails, naming the column, and writes nothing.
        let (code, _, err) = run(ferry(&state, work.path())
            .env("ORDERS_KEY", key.replace("00", "11"))
            .args([
                "copy",
                "sealed.parquet",
                "wrong.csv",
                "--transform",
                &decrypt,
            ]));
        one_line_error(code, &err, 1, &["column 'email'", "cannot decrypt"]);
        assert!(!work.path().join("wrong.csv").exists());
        for file in ["opened.csv", "plain.csv"] {
            std::fs::remove_file(work.path().join(file)).unwrap();
        }
    }
}

#[test]
fn bad_manifests_and_transformations_exit_2_with_one_line() {
    let work = workspace();
    let state = work.path().join("state");
    let manifest =
        std::fs::read_to_string(work.path().join("examples/manifests/orders-to-lake.yaml"))
            .unwrap();
    let cases = [
        (
            "format: csv}",
            "format: csv, delimter: ';'}",
            vec!["unknown field `delimter`"],
        ),
        ("action: Digest", "action: Hash", vec!["Hash"]),
        (
            "clause: \"amount > 100 AND country = 'DE'\"",
            "clause: \"amount >> 100\"",
            vec!["'big-orders' (Filter)"],
        ),
        (
            "columns: [email]",
            "columns: [e_mail]",
            vec!["'hash-email' (Digest)", "column 'e_mail' not found"],
        ),
        (
            "options: {algo: sha256}",
            "options: {algo: sha3}",
            vec!["'hash-email' (Digest)", "sha3"],
        ),
    ];
    for (from, to, needles) in cases {
        let changed = manifest.replace(from, to);
        assert_ne!(changed, manifest, "{from}");
        std::fs::write(work.path().join("bad.yaml"), changed).unwrap();
        let (code, _, err) = run(ferry(&state, work.path()).args(["run", "bad.yaml"]));
        one_line_error(code, &err, 2, &needles);
        assert!(
            !work.path().join("out").exists(),
            "{to}: something was written"
        );
    }
    let (code, _, err) = run(ferry(&state, work.path()).args([
        "copy",
        "examples/data/orders.csv",
        "out.parquet",
        "--transform",
        "Shuffle(email)",
    ]));
    one_line_error(code, &err, 2, &["unknown action 'Shuffle'"]);
}

#[test]
fn a_malformed_row_fails_naming_file_and_line() {
    let work = workspace();
    let state = work.path().join("state");
    let csv = work.path().join("examples/data/orders.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("201,1,x@example.com,+49 1,DE,not-a-number,2026-01-01T00:00:00Z,\n");
    std::fs::write(&csv, text).unwrap();
    let (code, _, err) = run(ferry(&state, work.path()).args([
        "copy",
        "examples/data/orders.csv",
        "out/orders.parquet",
        "--source-option",
        "inferRows=10",
    ]));
    one_line_error(
        code,
        &err,
        1,
        &[
            "orders.csv",
            "line 202",
            "column 'amount'",
            "'not-a-number'",
        ],
    );
    assert!(!work.path().join("out/orders.parquet").exists());
}

#[test]
fn a_killed_conversion_leaves_nothing_and_finishes_when_run_again() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let mut text = String::from("id,text\n");
    for i in 0..40_000 {
        text.push_str(&format!(
            "{i},{}\n",
            "lorem ipsum dolor sit amet ".repeat(4)
        ));
    }
    std::fs::write(work.path().join("big.csv"), &text).unwrap();
    std::fs::create_dir(work.path().join("out")).unwrap();
    let args = [
        "copy",
        "big.csv",
        "out/",
        "--dest-format",
        "json",
        "--part-size",
        "1MiB",
    ];

    // Killed after three batches: parts are uploaded, the output is not complete.
    start_and_kill(
        ferry(&state, work.path()).args(args),
        "pause-after-batches:3",
    );
    let left: Vec<_> = std::fs::read_dir(work.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        left.len() == 1
            && left[0].starts_with(".big.jsonl.")
            && left[0].ends_with(".ferry-partial"),
        "only a hidden partial file: {left:?}"
    );

    let (code, _, err) = run(ferry(&state, work.path()).args(args));
    assert_eq!(code, 0, "{err}");
    let names: Vec<_> = std::fs::read_dir(work.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        ["big.jsonl"],
        "the partial output of the killed run is gone"
    );
    let written = std::fs::read_to_string(work.path().join("out/big.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 40_000);

    let (code, out, err) = run(ferry(&state, work.path()).args(args).arg("--json"));
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (report["skipped"].as_u64(), report["objects"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn compressed_files_are_read_and_written_as_they_stream() {
    let work = workspace();
    let state = work.path().join("state");
    let at = |p: &str| work.path().join(p);
    // Written gzip by the name; the system's gzip reads it back to the same rows.
    let (code, _, err) = run(ferry(&state, work.path()).args([
        "copy",
        "examples/data/orders.csv",
        "gz/orders.csv.gz",
    ]));
    assert_eq!(code, 0, "{err}");
    let packed = std::fs::read(at("gz/orders.csv.gz")).unwrap();
    assert_eq!(&packed[..2], &[0x1f, 0x8b]);
    let unpacked = Command::new("gzip")
        .args(["-dc"])
        .arg(at("gz/orders.csv.gz"))
        .output()
        .unwrap();
    assert!(unpacked.status.success());
    // The reference every later route must give back byte for byte: ferry's CSV of them.
    let plain = String::from_utf8(unpacked.stdout).unwrap();
    let original = std::fs::read_to_string(at("examples/data/orders.csv")).unwrap();
    assert_eq!(plain.lines().count(), original.lines().count());
    assert_eq!(plain.lines().next(), original.lines().next(), "the header");

    // Read gzip into Parquet, Parquet into a directory with compression=zstd, that back
    // into plain CSV: the same rows all the way.
    for (from, to, extra) in [
        ("gz/orders.csv.gz", "lake/orders.parquet", None),
        ("lake/", "export/", Some("compression=zstd")),
        ("export/orders.csv.zst", "again/orders.csv", None),
    ] {
        let mut cmd = ferry(&state, work.path());
        cmd.args(["copy", from, to]);
        if let Some(option) = extra {
            cmd.args(["--dest-format", "csv", "--dest-option", option]);
        }
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, 0, "{from} -> {to}: {err}");
    }
    let zst = std::fs::read(at("export/orders.csv.zst")).unwrap();
    assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let again = std::fs::read_to_string(at("again/orders.csv")).unwrap();
    assert!(
        again == plain,
        "gzip -> parquet -> zstd -> csv changed the rows"
    );

    // A stream cut short fails in one line naming the file; nothing is written.
    std::fs::write(at("gz/cut.csv.gz"), &packed[..packed.len() / 2]).unwrap();
    let (code, _, err) =
        run(ferry(&state, work.path()).args(["copy", "gz/cut.csv.gz", "bad/cut.parquet"]));
    one_line_error(code, &err, 1, &["cut.csv.gz", "gzip", "compressed byte"]);
    assert!(!at("bad/cut.parquet").exists());
}
