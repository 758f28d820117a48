//! The `ferry` binary as a user runs it: exit codes, one-line errors, JSON summaries, and
//! crash recovery with a real SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use ferry_connectors::testkit::{bytes, gcs_emulator_put, Remote};

const MIB: usize = 1024 * 1024;

fn ferry(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.env("FERRY_STATE_DIR", state)
        .env_remove("FERRY_STATE_URL")
        .env_remove("FERRY_FAILPOINT")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run ferry");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A user-facing error: exactly one line, names `needle`, no panic or backtrace.
fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("ferry: error: "), "{stderr}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn json_summary_has_the_documented_fields() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"hello").unwrap();
    std::fs::write(src.join("b"), b"").unwrap();
    let (code, out, err) = run(ferry(&work.path().join("state"))
        .args(["copy", "--json"])
        .arg(&src)
        .arg(work.path().join("dst")));
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["bytes"], 5);
    assert_eq!(v["objects"], 2);
    assert_eq!(v["skipped"], 0);
    assert!(v["duration_s"].is_f64() && v["throughput_bytes_per_s"].is_number());
    assert!(v["checksum"].as_str().unwrap().starts_with("crc32c:"));
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let (code, _, err) = run(ferry(&state).args(["copy", "wasb://bucket/x", "/tmp/x"]));
    assert_eq!(code, 2);
    assert_one_line_error(&err, "unknown scheme 'wasb'");

    let (code, _, err) = run(ferry(&state).args(["copy", "gs://Bad/x", "/tmp/x"]));
    assert_eq!(code, 2);
    assert_one_line_error(&err, "gs://Bad/x");

    // No GCS credentials anywhere: refused at once, before any request (object_store
    // would otherwise wait on a metadata server that is not there).
    let mut cmd = ferry(&state);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GOOGLE_") {
            cmd.env_remove(name);
        }
    }
    let (code, _, err) = run(cmd
        .env_remove("STORAGE_EMULATOR_HOST")
        .env_remove("FERRY_GCS_INSTANCE_CREDENTIALS")
        .env("HOME", work.path())
        .args(["copy", "gs://bucket/x", "/tmp/x"]));
    assert_eq!(code, 2, "{err}");
    assert_one_line_error(&err, "no GCS credentials");
    assert!(err.contains("gs://bucket/x"), "{err}");

    let (code, _, err) = run(ferry(&state).args(["copy", "s3://Bad_Bucket/k", "/tmp/x"]));
    assert_eq!(code, 2);
    assert_one_line_error(&err, "Bad_Bucket");

    let (code, _, err) = run(ferry(&state).args(["copy", "--part-size", "12 parsecs", "a", "b"]));
    assert_eq!(code, 2);
    assert_one_line_error(&err, "--part-size");

    let (code, _, err) = run(ferry(&state).args(["copy", "--checksum", "md4", "a", "b"]));
    assert_eq!(code, 2);
    assert_one_line_error(&err, "md4");

    let (code, _, _) = run(ferry(&state).args(["copy", "only-one-argument"]));
    assert_eq!(code, 2);
}

#[test]
fn failures_exit_1_naming_the_address() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let missing = work.path().join("no-such-dir");
    let (code, _, err) = run(ferry(&state)
        .arg("copy")
        .arg(&missing)
        .arg(work.path().join("out")));
    assert_eq!(code, 1);
    assert_one_line_error(&err, &format!("{}: not found", missing.display()));

    // The destination's parent is a file: not writable as a directory.
    let blocker = work.path().join("blocker");
    std::fs::write(&blocker, b"keep me").unwrap();
    let src = work.path().join("f.txt");
    std::fs::write(&src, b"data").unwrap();
    let (code, _, err) = run(ferry(&state)
        .arg("copy")
        .arg(&src)
        .arg(blocker.join("sub/f.txt")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("blocker"), "{err}");
    assert_eq!(
        std::fs::read(&blocker).unwrap(),
        b"keep me",
        "existing data was damaged"
    );
}

#[test]
fn unreachable_endpoint_fails_with_retries_not_a_hang() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f.txt");
    std::fs::write(&src, b"data").unwrap();
    // Port 9 on loopback (discard) has no listener here: connection refused.
    let (code, _, err) = run(ferry(&work.path().join("state"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-never-shown")
        .args(["copy", "--json"])
        .arg(&src)
        .arg("s3://bucket/f.txt?endpoint=http://127.0.0.1:9"));
    assert_eq!(code, 1, "{err}");
    assert!(err.is_empty() || !err.contains("s3cr3t"), "{err}");
}

#[test]
fn wrong_azure_key_is_permission_denied_without_the_key() {
    let Some(base) = Remote::Azure.unique("wrong-key") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f.txt");
    std::fs::write(&src, b"data").unwrap();
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let (code, out, err) = run(ferry(&work.path().join("state"))
        .env("AZURE_STORAGE_USE_EMULATOR", "false")
        .env("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1")
        .env("AZURE_STORAGE_ACCOUNT_KEY", wrong)
        .args(["copy"])
        .arg(&src)
        .arg(format!(
            "{base}f.txt?endpoint=http://127.0.0.1:10000/devstoreaccount1"
        )));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("permission denied") || err.contains("403"),
        "{err}"
    );
    assert!(
        !err.contains(wrong) && !out.contains(wrong),
        "the key leaked: {err}"
    );
}

/// Starts `ferry copy` with a failpoint, waits for it to announce the point, kills it
/// with SIGKILL, and returns once it is dead.
fn start_and_kill(state: &Path, failpoint: &str, args: &[&str]) {
    let mut child = ferry(state)
        .env("FERRY_FAILPOINT", failpoint)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let stderr = child.stderr.take().unwrap();
    let mut reached = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.starts_with("ferry: failpoint reached") {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "ferry exited before the failpoint: {:?}",
        child.wait()
    );
    // SIGKILL: no chance to clean up, exactly like a crash or an evicted pod.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
}

fn killed_copy_resumes(destination: &str, read_back: impl Fn() -> Vec<u8>) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big.bin");
    let data = bytes(6 * 5 * MIB + 17, 11);
    std::fs::write(&src, &data).unwrap();
    kill_and_resume(
        &work.path().join("state"),
        &src.display().to_string(),
        destination,
        data.len(),
    );
    assert!(read_back() == data, "content differs after resume");
}

/// Copies the one large object `source` to `destination` in 5 MiB parts, kills the copy
/// with SIGKILL after two parts, and checks that the next run resumed it.
fn kill_and_resume(state: &Path, source: &str, destination: &str, len: usize) {
    let args = [
        "copy",
        "--json",
        "--part-size",
        "5MiB",
        "--concurrency",
        "2",
        source,
        destination,
    ];
    start_and_kill(state, "pause-after-parts:2", &args);
    let (code, out, err) = run(ferry(state).args(args));
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["resumed"], 1, "{out}");
    let moved = v["bytes"].as_u64().unwrap();
    assert!(
        moved < len as u64,
        "the resumed run moved {moved} bytes: it started over"
    );
}

#[test]
fn killed_local_copy_resumes() {
    let work = tempfile::tempdir().unwrap();
    let dst = work.path().join("copy.bin");
    std::fs::write(&dst, b"previous version").unwrap();
    let dst_s = dst.display().to_string();
    killed_copy_resumes(&dst_s, || std::fs::read(&dst).unwrap());
}

/// Kills and resumes an upload to `remote`, then downloads it to compare.
/// The destination's base address, `None` when the store is not configured.
fn killed_remote_copy_resumes(remote: Remote) -> Option<String> {
    let base = remote.unique("killed")?;
    let dst = format!("{base}big.bin");
    let back = tempfile::tempdir().unwrap();
    let state = back.path().join("state");
    killed_copy_resumes(&dst, || {
        let out = back.path().join("back.bin");
        let (code, _, err) = run(ferry(&state).arg("copy").arg(&dst).arg(&out));
        assert_eq!(code, 0, "{err}");
        std::fs::read(out).unwrap()
    });
    Some(base)
}

#[test]
fn killed_s3_copy_resumes() {
    killed_remote_copy_resumes(Remote::S3);
}

#[test]
fn killed_azure_copy_resumes() {
    killed_remote_copy_resumes(Remote::Azure);
}

/// An upload to GCS killed with SIGKILL resumes from its finished parts (temporary
/// objects a later process composes), and what it left behind is gone.
#[test]
fn killed_gcs_copy_resumes() {
    let Some(base) = killed_remote_copy_resumes(Remote::Gcs) else {
        return;
    };
    let keys = tokio::runtime::Runtime::new().unwrap().block_on(
        ferry_connectors::testkit::gcs_temporary_parts(
            &ferry_core::DataAddress::parse(&base).unwrap(),
            "big.bin",
        ),
    );
    assert!(keys.is_empty(), "temporary parts left: {keys:?}");
}

/// A download from GCS killed with SIGKILL mid-way resumes from its finished parts; the
/// object is put there through the emulator's own JSON API.
#[test]
fn killed_gcs_download_resumes() {
    let Some(base) = Remote::Gcs.unique("killed") else {
        return;
    };
    let data = bytes(6 * 5 * MIB + 17, 12);
    let remote = ferry_core::DataAddress::parse(&base).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(gcs_emulator_put(&remote, "big.bin", data.clone().into()));
    let work = tempfile::tempdir().unwrap();
    let dst = work.path().join("big.bin");
    kill_and_resume(
        &work.path().join("state"),
        &format!("{base}big.bin"),
        &dst.display().to_string(),
        data.len(),
    );
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "content differs after resume"
    );
}

#[test]
fn killed_tree_copy_skips_finished_files() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("f{i:03}")), bytes(1000, i)).unwrap();
    }
    let dst = work.path().join("dst");
    let (s, d) = (format!("{}/", src.display()), format!("{}/", dst.display()));
    let args = ["copy", "--json", "--transfers", "2", s.as_str(), d.as_str()];
    start_and_kill(&state, "pause-after-files:10", &args);
    let (code, out, err) = run(ferry(&state).args(args));
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    let skipped = v["skipped"].as_u64().unwrap();
    assert!(skipped >= 10, "{out}");
    assert_eq!(skipped + v["objects"].as_u64().unwrap(), 50, "{out}");
    let (code, out, _) = run(ferry(&state).args(["verify", "--json", s.as_str(), d.as_str()]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["compared"], 50);
}

#[test]
fn killed_copy_leaves_the_old_destination_intact_and_no_partial_object() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("big.bin");
    std::fs::write(&src, bytes(4 * MIB, 1)).unwrap();
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let dst = out_dir.join("big.bin");
    std::fs::write(&dst, b"old contents").unwrap();
    let (s, d) = (src.display().to_string(), dst.display().to_string());
    start_and_kill(
        &state,
        "pause-after-parts:1",
        &["copy", "--part-size", "1MiB", "--concurrency", "1", &s, &d],
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"old contents");
    // `--no-resume` starts over and removes the abandoned partial file.
    let (code, _, err) =
        run(ferry(&state).args(["copy", "--no-resume", "--part-size", "1MiB", &s, &d]));
    assert_eq!(code, 0, "{err}");
    let names: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("big.bin")]);
    assert_eq!(std::fs::read(&dst).unwrap(), bytes(4 * MIB, 1));
}

#[test]
fn dry_run_lists_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("keep.csv"), b"1").unwrap();
    std::fs::write(src.join("skip.tmp"), b"2").unwrap();
    let dst = work.path().join("dst");
    let (code, out, err) = run(ferry(&work.path().join("state"))
        .args(["copy", "--dry-run", "--exclude", "*.tmp"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would copy keep.csv"), "{out}");
    assert!(!out.contains("skip.tmp"), "{out}");
    assert!(!dst.exists());

    // The JSON form is printed as the files are listed, and is still one JSON line: with
    // files, and with none.
    std::fs::write(src.join("also.csv"), b"345").unwrap();
    for (exclude, keys, bytes) in [("*.tmp", vec!["also.csv", "keep.csv"], 4), ("*", vec![], 0)] {
        let (code, out, err) = run(ferry(&work.path().join("state"))
            .args(["copy", "--dry-run", "--json", "--exclude", exclude])
            .arg(&src)
            .arg(&dst));
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 1, "{out}");
        let v = json(&out);
        assert_eq!(v["status"], "dry_run", "{out}");
        assert_eq!(v["objects"], keys.len(), "{out}");
        assert_eq!(v["bytes"], bytes, "{out}");
        let listed: Vec<&str> = v["would_copy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["key"].as_str().unwrap())
            .collect();
        assert_eq!(listed, keys, "{out}");
    }
    assert!(!dst.exists());
}
