//! What a copy or a verification tells its caller, and how it reports progress as it goes.

use std::time::Duration;

use ferry_core::checksum::Hasher;
use ferry_core::ChecksumAlgo;
use serde::Serialize;

/// Observes a copy as it runs (a progress bar, a log, a metrics exporter).
pub trait Progress: Send + Sync {
    /// The plan as known so far: how many files and bytes will move. A listing that
    /// streams tells it again, with larger totals, as it goes, always before the files it
    /// adds start, so what is done never exceeds what is planned.
    fn planned(&self, _files: u64, _bytes: u64) {}
    /// More bytes reached the destination.
    fn advanced(&self, _bytes: u64) {}
    /// A file is complete (or failed).
    fn file_finished(&self, _key: &str) {}
    /// A file of a byte copy is settled: copied, skipped or failed, or, in a dry run,
    /// planned. The report keeps only totals and the first failures, so an observer that
    /// wants every file (a dry run's listing, a service's outputs) takes them here.
    fn file_reported(&self, _file: &FileReport) {}
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
    /// Files planned (in a dry run: would be copied), and their bytes.
    #[serde(skip)]
    pub planned: u64,
    #[serde(skip)]
    pub planned_bytes: u64,
    /// The first [`MAX_KEPT_FAILURES`] files that failed or did not verify.
    #[serde(skip)]
    pub failures: Vec<FileReport>,
}

impl CopyReport {
    /// The report of files settled all at once (archives, topics), each shown to
    /// `progress` as [`Progress::file_reported`].
    pub(crate) fn new(
        mut files: Vec<FileReport>,
        algo: ChecksumAlgo,
        elapsed: Duration,
        single: bool,
        progress: &dyn Progress,
    ) -> Self {
        files.sort_by(|a, b| a.key.cmp(&b.key));
        let mut tally = Tally::new(algo, single);
        for (place, file) in files.into_iter().enumerate() {
            progress.file_reported(&file);
            tally.settle(place as u64, file, None);
        }
        tally.finish(elapsed, false, None)
    }
}

/// How many failed files a report names; the rest are counted.
pub const MAX_KEPT_FAILURES: usize = 100;

/// How far past the oldest unsettled file a copy may start others: the tree checksum is
/// taken in listing order, so settled files wait here (a key and a checksum each) until
/// every file before them is settled. Bounds memory whatever the number of files.
pub(crate) const CHECKSUM_WINDOW: u64 = 16_384;

/// A copy's report, built file by file as files settle, in memory that does not grow with
/// the number of files.
pub(crate) struct Tally {
    single: bool,
    planned: u64,
    planned_bytes: u64,
    bytes: u64,
    objects: u64,
    skipped: u64,
    resumed: u64,
    failed: u64,
    /// Files whose copy at the destination did not verify.
    unverified: u64,
    first_error: Option<String>,
    failures: Vec<FileReport>,
    /// The tree checksum so far; `None` once a file has no checksum.
    hasher: Option<Hasher>,
    single_checksum: Option<String>,
    /// Settled files after a gap, by their place in the listing, waiting to be hashed.
    waiting: std::collections::BTreeMap<u64, (String, Option<String>)>,
    /// The place of the next file to hash.
    next: u64,
}

impl Tally {
    pub(crate) fn new(algo: ChecksumAlgo, single: bool) -> Self {
        Self {
            single,
            planned: 0,
            planned_bytes: 0,
            bytes: 0,
            objects: 0,
            skipped: 0,
            resumed: 0,
            failed: 0,
            unverified: 0,
            first_error: None,
            failures: Vec::new(),
            hasher: Some(algo.hasher()),
            single_checksum: None,
            waiting: std::collections::BTreeMap::new(),
            next: 0,
        }
    }

    /// Whether the file at listing place `place` may start: not too far past the oldest
    /// file not yet settled.
    pub(crate) fn has_room_for(&self, place: u64) -> bool {
        place < self.next + CHECKSUM_WINDOW
    }

    /// Records the file at listing place `place`; `verified` is `Some(false)` when its
    /// copy did not match the source.
    pub(crate) fn settle(&mut self, place: u64, file: FileReport, verified: Option<bool>) {
        self.planned += 1;
        self.planned_bytes += file.size;
        self.bytes += file.moved;
        match file.action {
            Action::Copied | Action::ServerSideCopied => self.objects += 1,
            Action::Resumed => {
                self.objects += 1;
                self.resumed += 1;
            }
            Action::Skipped => self.skipped += 1,
            Action::Failed => self.failed += 1,
            Action::WouldCopy => {}
        }
        if verified == Some(false) {
            self.unverified += 1;
        }
        if self.single {
            self.single_checksum = file.checksum.clone();
        } else {
            self.waiting
                .insert(place, (file.key.clone(), file.checksum.clone()));
            while let Some((key, checksum)) = self.waiting.remove(&self.next) {
                self.next += 1;
                let Some(h) = self.hasher.as_mut() else {
                    continue;
                };
                match checksum {
                    Some(c) => {
                        h.update(key.as_bytes());
                        h.update(b"\t");
                        h.update(c.as_bytes());
                        h.update(b"\n");
                    }
                    None => self.hasher = None,
                }
            }
        }
        if let Some(error) = &file.error {
            if self.first_error.is_none() {
                self.first_error = Some(error.clone());
            }
            if self.failures.len() < MAX_KEPT_FAILURES {
                self.failures.push(file);
            }
        }
    }

    pub(crate) fn finish(
        self,
        elapsed: Duration,
        verify: bool,
        idle: Option<String>,
    ) -> CopyReport {
        let failed = self.failed;
        let bad = failed + self.unverified;
        let duration_s = elapsed.as_secs_f64();
        let error = self.first_error.map(|first| {
            if bad > 1 {
                format!("{first} (and {} more failed files)", bad - 1)
            } else {
                first
            }
        });
        let checksum = if self.single {
            self.single_checksum
        } else {
            self.hasher.map(|h| h.finish().to_string())
        };
        let verified = if !verify {
            None
        } else if self.unverified > 0 {
            Some(false)
        } else {
            (failed == 0).then_some(true)
        };
        CopyReport {
            status: if bad == 0 {
                Status::Succeeded
            } else {
                Status::Failed
            },
            bytes: self.bytes,
            objects: self.objects,
            skipped: self.skipped,
            resumed: self.resumed,
            failed,
            duration_s,
            throughput_bytes_per_s: if duration_s > 0.0 {
                self.bytes as f64 / duration_s
            } else {
                0.0
            },
            checksum,
            verified,
            error,
            idle,
            planned: self.planned,
            planned_bytes: self.planned_bytes,
            failures: self.failures,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, checksum: Option<&str>, error: Option<&str>) -> FileReport {
        FileReport {
            key: key.into(),
            destination_key: key.into(),
            size: 10,
            moved: 10,
            action: if error.is_some() {
                Action::Failed
            } else {
                Action::Copied
            },
            checksum: checksum.map(Into::into),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn files_settling_in_any_order_give_the_tree_checksum_of_the_sorted_listing() {
        let keys: Vec<String> = (0..500).map(|i| format!("k/{i:04}")).collect();
        let files: Vec<FileReport> = keys
            .iter()
            .map(|k| file(k, Some(&format!("crc32c:{}", k.len() * 7)), None))
            .collect();
        let mut expected = ChecksumAlgo::Xxh3.hasher();
        for f in &files {
            expected.update(format!("{}\t{}\n", f.key, f.checksum.as_ref().unwrap()).as_bytes());
        }
        let expected = expected.finish().to_string();

        // Settled in a scrambled order (as concurrent copies finish), by listing place.
        let mut tally = Tally::new(ChecksumAlgo::Xxh3, false);
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|&i| (i * 7919) % files.len());
        assert_ne!(order[..5], [0, 1, 2, 3, 4]);
        for i in order {
            tally.settle(i as u64, files[i].clone(), None);
        }
        assert!(tally.waiting.is_empty());
        let report = tally.finish(Duration::from_secs(1), false, None);
        assert_eq!(report.checksum.as_deref(), Some(expected.as_str()));
        assert_eq!(
            (report.objects, report.bytes, report.planned),
            (500, 5000, 500)
        );

        // Files handed over at once are sorted first, whatever their order.
        let mut reversed = files.clone();
        reversed.reverse();
        let at_once = CopyReport::new(
            reversed,
            ChecksumAlgo::Xxh3,
            Duration::from_secs(1),
            false,
            &NoProgress,
        );
        assert_eq!(at_once.checksum, report.checksum);
    }

    #[test]
    fn a_window_bounds_the_files_waiting_for_an_earlier_one() {
        let mut tally = Tally::new(ChecksumAlgo::Crc32c, false);
        assert!(tally.has_room_for(CHECKSUM_WINDOW - 1));
        assert!(!tally.has_room_for(CHECKSUM_WINDOW));
        // Place 0 is slow; the ones after it wait, and the window does not move.
        tally.settle(1, file("b", Some("c"), None), None);
        assert!(!tally.has_room_for(CHECKSUM_WINDOW));
        tally.settle(0, file("a", Some("c"), None), None);
        assert!(tally.has_room_for(CHECKSUM_WINDOW + 1));
        assert!(!tally.has_room_for(CHECKSUM_WINDOW + 2));
    }

    #[test]
    fn failures_are_counted_and_only_the_first_are_kept() {
        let mut tally = Tally::new(ChecksumAlgo::Crc32c, false);
        let n = MAX_KEPT_FAILURES + 50;
        for i in 0..n {
            let key = format!("f{i:04}");
            tally.settle(
                i as u64,
                file(&key, None, Some(&format!("{key}: gone"))),
                None,
            );
        }
        tally.settle(n as u64, file("ok", Some("c"), None), Some(false));
        let report = tally.finish(Duration::from_secs(1), true, None);
        assert_eq!(report.failed, n as u64);
        assert_eq!(report.failures.len(), MAX_KEPT_FAILURES);
        assert_eq!(report.failures[0].key, "f0000");
        assert_eq!(
            report.error.as_deref(),
            Some(format!("f0000: gone (and {n} more failed files)").as_str())
        );
        assert_eq!(report.verified, Some(false));
        assert_eq!(report.status, Status::Failed);
        assert_eq!(
            report.checksum, None,
            "a file without a checksum leaves none"
        );
    }
}
