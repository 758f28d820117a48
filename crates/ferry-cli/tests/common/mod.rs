//! Running the `ferry` binary from tests: a command with its own state directory, and a
//! run stopped at a failpoint and killed with SIGKILL.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// `ferry` with its state in `state`, run in `cwd`, without a failpoint from outside.
pub fn ferry(state: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.env("FERRY_STATE_DIR", state)
        .env_remove("FERRY_STATE_URL")
        .env_remove("FERRY_FAILPOINT")
        .current_dir(cwd)
        .stdin(Stdio::null());
    cmd
}

/// Starts ferry with a failpoint, waits until it announces it, then SIGKILLs it.
pub fn start_and_kill(cmd: &mut Command, failpoint: &str) {
    let mut child = cmd
        .env("FERRY_FAILPOINT", failpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let stderr = child.stderr.take().unwrap();
    let reached = BufReader::new(stderr)
        .lines()
        .any(|line| line.unwrap().starts_with("ferry: failpoint reached"));
    assert!(
        reached,
        "ferry exited before the failpoint: {:?}",
        child.wait()
    );
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
}

/// Runs ferry with `--json`, asserts it succeeded, and returns its summary.
pub fn run_ok(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.arg("--json").output().expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}
/// `ferry copy ARGS` in `work` (state in `work/state`): exit code, stdout, stderr.
pub fn copy_in(work: &Path, args: &[&str]) -> (i32, String, String) {
    let out = ferry(&work.join("state"), work)
        .arg("copy")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// As [`copy_in`], which must succeed; its stdout.
pub fn copy_in_ok(work: &Path, args: &[&str]) -> String {
    let (code, out, err) = copy_in(work, args);
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// Every file under `dir`, however deep, in name order (none when `dir` is missing).
pub fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

pub mod kafka;
pub mod proxy;
pub mod rclone;
pub mod service;
pub mod transfers;
