//! Custom programs a data plane runs: the runs of a `kind: Command` resource, which is what
//! a pipeline's `command` task becomes.
//!
//! The program runs in a process group of its own, without a shell, with the environment
//! the spec gives (secret references already resolved) on top of the data plane's. Its
//! progress is inferred, since most programs report none: from a percentage its output
//! prints (`progress.stdoutRegex`), or from the bytes under a watched path against the
//! total it is expected to write. The last lines of its stdout and stderr are kept with
//! the run, secrets scrubbed. A timeout, a cancelled run or a dropped attempt kills the
//! whole group.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use utoipa::ToSchema;

use crate::execute::{scrub_text, Outcome, Tracker};
use crate::pipeline::spec::CommandSpec;
use crate::resource::RunStats;
use crate::retry::ErrorClass;

/// Lines of each output stream kept with the run.
pub const TAIL_LINES: usize = 20;
/// Bytes kept of one line.
const LINE_BYTES: usize = 2000;

/// How a command ended, kept in the run's stats.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    /// The exit code; absent when a signal ended it.
    pub exit_code: Option<i32>,
    pub stdout_tail: Vec<String>,
    pub stderr_tail: Vec<String>,
}

/// Kills the command's process group when dropped, whatever ended the attempt.
struct Group(Option<i32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // The group's leader may be gone while programs it started still run; `kill`
            // of a group that is gone only fails.
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// Runs the command once; `hidden` are the secret values to scrub from what it printed.
pub async fn run(spec: &CommandSpec, hidden: &[String], tracker: Arc<Tracker>) -> Outcome {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&spec.argv[1..])
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    die_with_parent(&mut command);
    let failed = |error: String, class| Outcome::Failed {
        error: scrub_text(&error, hidden),
        class,
        moved: None,
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => match &spec.working_dir {
                    Some(dir) if !Path::new(dir).is_dir() => {
                        format!("working directory {dir} does not exist")
                    }
                    _ => "not found on this data plane's PATH".to_string(),
                },
                std::io::ErrorKind::PermissionDenied => "not executable (permission denied)".into(),
                _ => e.to_string(),
            };
            return failed(
                format!("command {program}: {why}"),
                ErrorClass::Configuration,
            );
        }
    };
    let _group = Group(child.id().map(|id| id as i32));
    tracker.observed(0, 0);
    let regex = spec
        .progress
        .as_ref()
        .and_then(|p| p.stdout_regex.as_deref())
        .and_then(|r| regex::Regex::new(r).ok());
    let stdout: Tail = Arc::default();
    let stderr: Tail = Arc::default();
    let out = tokio::spawn(follow(
        child.stdout.take(),
        stdout.clone(),
        regex,
        tracker.clone(),
    ));
    let err = tokio::spawn(follow(
        child.stderr.take(),
        stderr.clone(),
        None,
        tracker.clone(),
    ));
    let watch = spec.progress.as_ref().and_then(|p| {
        let path = p.watch_path.clone()?;
        let expected = p.expected_bytes?;
        let tracker = tracker.clone();
        Some(tokio::spawn(async move {
            loop {
                let size = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || size_under(Path::new(&path))
                })
                .await
                .unwrap_or(0);
                tracker.observed(size.min(expected), expected);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }))
    });
    let waited = match spec.timeout_seconds {
        Some(s) => tokio::time::timeout(Duration::from_secs(s), child.wait())
            .await
            .map_err(|_| s),
        None => Ok(child.wait().await),
    };
    if let Some(w) = watch {
        w.abort();
    }
    // The group may hold the pipes open after the program ended: its output is what came
    // before now.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = out.await;
        let _ = err.await;
    })
    .await;
    let tail = |t: &Tail| -> Vec<String> {
        let lines = t.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(|l| scrub_text(l, hidden)).collect()
    };
    let result = CommandResult {
        exit_code: None,
        stdout_tail: tail(&stdout),
        stderr_tail: tail(&stderr),
    };
    let last_err = last_lines(&result.stderr_tail);
    let status = match waited {
        Err(seconds) => {
            return Outcome::Failed {
                error: scrub_text(
                    &format!("command {program} timed out after {seconds} s{}", last_err),
                    hidden,
                ),
                class: ErrorClass::Retryable,
                moved: Some(stats(result)),
            }
        }
        Ok(Err(e)) => return failed(format!("command {program}: {e}"), ErrorClass::Retryable),
        Ok(Ok(status)) => status,
    };
    let result = CommandResult {
        exit_code: status.code(),
        ..result
    };
    if status.success() {
        tracker.fraction_observed(1.0);
        return Outcome::Succeeded(stats(result));
    }
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "failed".into(),
    };
    let error = scrub_text(&format!("command {program} {how}{}", last_err), hidden);
    Outcome::Failed {
        error,
        class: ErrorClass::Retryable,
        moved: Some(stats(result)),
    }
}

/// The program is killed when this process dies, even by SIGKILL (which runs no drop):
/// a data plane that restarts runs the command again, and must not find the first one
/// still running. (Linux only; programs the command starts in turn are not covered.)
#[allow(unsafe_code)]
fn die_with_parent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: between fork and exec only async-signal-safe calls may run; prctl is one.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// `: line | line | line`, the last three of `tail`, or nothing.
fn last_lines(tail: &[String]) -> String {
    let from = tail.len().saturating_sub(3);
    match tail[from..].join(" | ") {
        text if text.is_empty() => String::new(),
        text => format!(": {text}"),
    }
}

fn stats(result: CommandResult) -> RunStats {
    RunStats {
        command: Some(result),
        ..RunStats::default()
    }
}

/// Keeps the last lines of a stream; with `progress`, the first group of the last match
/// is the percentage done.
async fn follow(
    stream: Option<impl AsyncRead + Unpin>,
    tail: Tail,
    progress: Option<regex::Regex>,
    tracker: Arc<Tracker>,
) {
    let Some(stream) = stream else { return };
    let mut reader = BufReader::new(stream);
    // A line is kept up to LINE_BYTES; the rest of a longer one is read and dropped, so a
    // program printing without newlines never grows this.
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut done = false;
    while !done {
        let (consumed, ended) = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                done = true;
                (0, !line.is_empty())
            }
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let room = LINE_BYTES.saturating_sub(line.len());
                    line.extend_from_slice(&buf[..i.min(room)]);
                    (i + 1, true)
                }
                None => {
                    let room = LINE_BYTES.saturating_sub(line.len());
                    line.extend_from_slice(&buf[..buf.len().min(room)]);
                    (buf.len(), false)
                }
            },
        };
        reader.consume(consumed);
        if !ended {
            continue;
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_string();
        line.clear();
        if let Some(re) = &progress {
            let percent = re
                .captures_iter(&text)
                .last()
                .and_then(|c| c.get(1))
                .and_then(|m| m.as_str().parse::<f64>().ok());
            if let Some(p) = percent.filter(|p| p.is_finite()) {
                tracker.fraction_observed(p.clamp(0.0, 100.0) / 100.0);
            }
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}

/// Bytes of the files under `path` (or of the file itself).
fn size_under(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
