//! `ferry run` of a StreamTransfer: batch after batch in the foreground, each reading what
//! arrived since the last, until SIGINT or SIGTERM. The checks are the service's (one
//! error per bad field); a passing failure (broker or destination down) is retried with
//! backoff, and a batch cut short by the signal is finished by the next start, over the
//! same offsets.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_control::retry::{classify, Backoff, ErrorClass};
use ferry_core::{DataAddress, Error, Result};
use ferry_engine::report::NoProgress;
use ferry_engine::{CopyOptions, RecordOptions};

/// How long the loop waits after a batch before it looks for more.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    json: bool,
) -> Result<u8> {
    let shown = dst.to_string();
    eprintln!("ferry run: streaming {src} into {dst}; stop with Ctrl-C");
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        factor: 2.0,
    };
    let mut failures = 0u32;
    let stop = crate::serve::stop_signal();
    tokio::pin!(stop);
    loop {
        let batch = ferry_engine::transfer(src, dst, rec, opts, Arc::new(NoProgress));
        let wait = tokio::select! {
            _ = &mut stop => return Ok(0),
            done = batch => match done {
                Ok(report) if report.status == ferry_engine::report::Status::Succeeded => {
                    failures = 0;
                    if report.idle.is_none() {
                        if json {
                            println!("{}", serde_json::to_string(&report).unwrap_or_default());
                        } else {
                            println!(
                                "batch: {} rows into {} output(s){}",
                                report.destination.rows,
                                report.destination.files,
                                match report.held {
                                    0 => String::new(),
                                    n => format!(", {n} events wait in files still open"),
                                }
                            );
                        }
                    }
                    POLL
                }
                Ok(report) => {
                    let error = report.error.unwrap_or_else(|| "a batch failed".into());
                    return Err(Error::data(&shown, error));
                }
                Err(e) if classify(&e) == ErrorClass::Retryable => {
                    failures += 1;
                    let delay = backoff.delay(failures);
                    eprintln!("ferry run: {e}; trying again in {:.0} s", delay.as_secs_f64());
                    delay
                }
                Err(e) => return Err(e),
            },
        };
        tokio::select! {
            _ = &mut stop => return Ok(0),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The service's checks of a StreamTransfer (a kafka source, no schedule, a destination
/// that keeps adding), every bad field in one error.
pub fn check(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid_option(format!("manifest {}", path.display()), e))?;
    let raw: serde_json::Value = serde_norway::from_str(&text)
        .map_err(|e| Error::invalid_option(format!("manifest {}", path.display()), e))?;
    ferry_control::resource::validate(raw)
        .map(|_| ())
        .map_err(|errors| {
            let listed: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            Error::invalid_option(format!("manifest {}", path.display()), listed.join("; "))
        })
}
