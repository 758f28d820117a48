//! What a copy or a verification tells its caller, and how it reports progress as it goes.

use std::time::Duration;

use ferry_core::ChecksumAlgo;
use serde::Serialize;

/// Observes a copy as it runs (a progress bar, a log, a metrics exporter).
pub trait Progress: Send + Sync {
    /// The plan is known: how many files and bytes will move (skipped ones excluded).
    fn planned(&self, _files: u64, _bytes: u64) {}
    /// More bytes reached the destination.
    fn advanced(&self, _bytes: u64) {}
    /// A file is complete (or failed).
    fn file_finished(&self, _key: &str) {}
    /// A stream's plan: how many events (offsets) the run reads or writes. Progress is
    /// then counted in events, which a stream knows exactly, rather than bytes.
    fn events_planned(&self, _events: u64) {}
    /// More events were read or written (whatever became of them: skipped ones count).
    fn events_done(&self, _events: u64) {}
}

/// Progress nobody watches.
pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    Failed,
}

/// How a run ended, as the checkpoint records it.
pub(crate) fn run_outcome(failed: u64) -> &'static str {
    if failed == 0 {
        "succeeded"
    } else {
        "failed"
    }
}

/// How one file was handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Copied,
    /// Done by an earlier run, per the checkpoint, and still present at the destination.
    Skipped,
    /// Copied inside the store without passing through ferry.
    ServerSideCopied,
    /// Continued an upload an earlier run started.
    Resumed,
    Failed,
    /// Listed by a dry run.
    WouldCopy,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub key: String,
    /// Where it went, relative to the destination address (`""`: the address itself).
    pub destination_key: String,
    pub size: u64,
    /// Bytes this run sent (less than `size` for a resumed upload, 0 when skipped).
    pub moved: u64,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The summary `ferry copy --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    pub status: Status,
    /// Bytes moved by this run (skipped files and parts finished earlier excluded).
    pub bytes: u64,
    /// Objects written by this run.
    pub objects: u64,
    pub skipped: u64,
    /// Objects whose interrupted upload this run continued.
    pub resumed: u64,
    pub failed: u64,
    pub duration_s: f64,
    pub throughput_bytes_per_s: f64,
    /// The source's checksum: the file's own for one file, else a digest of the sorted
    /// `key<TAB>checksum` lines of every file. `None` when a file has none (server-side copy).
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why this partition of a partitioned run had nothing to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    #[serde(skip)]
    pub files: Vec<FileReport>,
}

impl CopyReport {
    pub(crate) fn new(
        files: Vec<FileReport>,
        algo: ChecksumAlgo,
        elapsed: Duration,
        single: bool,
    ) -> Self {
        let mut bytes = 0;
        let (mut objects, mut skipped, mut failed, mut resumed) = (0, 0, 0, 0);
        for f in &files {
            bytes += f.moved;
            match f.action {
                Action::Copied | Action::ServerSideCopied => objects += 1,
                Action::Resumed => {
                    objects += 1;
                    resumed += 1;
                }
                Action::Skipped => skipped += 1,
                Action::Failed => failed += 1,
                Action::WouldCopy => {}
            }
        }
        let duration_s = elapsed.as_secs_f64();
        let checksum = tree_checksum(&files, algo, single);
        let error = files.iter().find_map(|f| f.error.clone()).map(|first| {
            if failed > 1 {
                format!("{first} (and {} more failed files)", failed - 1)
            } else {
                first
            }
        });
        Self {
            status: if failed == 0 {
                Status::Succeeded
            } else {
                Status::Failed
            },
            bytes,
            objects,
            skipped,
            resumed,
            failed,
            duration_s,
            throughput_bytes_per_s: if duration_s > 0.0 {
                bytes as f64 / duration_s
            } else {
                0.0
            },
            checksum,
            verified: None,
            error,
            idle: None,
            files,
        }
    }
}

fn tree_checksum(files: &[FileReport], algo: ChecksumAlgo, single: bool) -> Option<String> {
    if single {
        return files.first().and_then(|f| f.checksum.clone());
    }
    let mut h = algo.hasher();
    let mut sorted: Vec<&FileReport> = files.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for f in sorted {
        h.update(f.key.as_bytes());
        h.update(b"\t");
        h.update(f.checksum.as_ref()?.as_bytes());
        h.update(b"\n");
    }
    Some(h.finish().to_string())
}

/// One difference found by a verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    MissingAtDestination {
        key: String,
    },
    OnlyAtDestination {
        key: String,
    },
    SizeDiffers {
        key: String,
        source: u64,
        destination: u64,
    },
    ChecksumDiffers {
        key: String,
        source: String,
        destination: String,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingAtDestination { key } => write!(f, "missing at destination: {key}"),
            Self::OnlyAtDestination { key } => write!(f, "only at destination: {key}"),
            Self::SizeDiffers {
                key,
                source,
                destination,
            } => write!(
                f,
                "size differs: {key} (source {source}, destination {destination})"
            ),
            Self::ChecksumDiffers {
                key,
                source,
                destination,
            } => write!(
                f,
                "checksum differs: {key} (source {source}, destination {destination})"
            ),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub status: Status,
    pub compared: u64,
    pub bytes: u64,
    pub differences: Vec<Difference>,
    pub duration_s: f64,
}
