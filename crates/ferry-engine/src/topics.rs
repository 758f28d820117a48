//! Which offsets a run reads when a topic is a source of rows, and where the next run
//! starts.
//!
//! A run reads each selected partition from its start (the address's `startOffset`, or
//! where the last finished run of the same command stopped) to its end (`endOffset`, else
//! the high watermark when the run was planned). The ranges are recorded before anything
//! is read, so a run that was killed is finished by re-running it over the same ranges,
//! whose outputs it recognises; only a finished run moves the start on.
//!
//! Runs move on (each reads only what arrived since the last) when their destination keeps
//! what earlier runs wrote: a directory, whose files are named by partition and first
//! offset, and a table in `append` or `upsert` mode. A single file or a table in
//! `overwrite` mode holds the whole topic from `startOffset` every time.

use std::collections::BTreeMap;

use ferry_connectors::kafka::{self, rows::Range};
use ferry_core::{DataAddress, Error, KafkaAddress, Result, WriteMode};
use ferry_state::StateStore;

/// The checkpoint key of the ranges a run planned (removed when it finishes).
const PLANNED: &str = "planned";
/// The checkpoint key of where the next run starts, per partition.
const NEXT: &str = "next";

/// The offsets of one run of a topic, and where they are kept.
pub(crate) struct TopicRun {
    id: String,
    pub ranges: Vec<Range>,
    /// Whether finishing this run moves the next run's start.
    incremental: bool,
}

/// Whether runs into `dst` each read only what arrived since the last one.
pub(crate) fn incremental(dst: &DataAddress, names_file: bool) -> bool {
    match dst {
        DataAddress::Table(t) => t.mode != WriteMode::Overwrite,
        _ => !names_file,
    }
}

/// The checkpoint id of the offsets of runs from `address` into `dst`: the topic, the
/// partitions and offsets selected, and the destination. Options that change how values
/// decode (`onError`, `valueFormat`…) keep it, so a run after a fix goes on from where
/// the last finished one stopped.
///
/// Neither is the service's run key: each run of a transfer goes on from the last.
pub fn offsets_id(address: &KafkaAddress, dst: &DataAddress) -> String {
    let selected = format!(
        "kafka://{}/{} {:?} {:?} {:?}",
        address.bootstrap(),
        address.topic,
        address.partitions,
        address.start,
        address.end
    );
    let text = format!(
        "topic offsets\n{selected}\n{}",
        crate::records::canonical(dst)
    );
    format!(
        "{}.offsets",
        ferry_core::ChecksumAlgo::Xxh3.digest(text.as_bytes()).hex()
    )
}

/// Plans the ranges of a run whose offsets are kept under `id` ([`offsets_id`]), from the
/// checkpoint when an earlier run of it was killed. `record` (the source and destination as shown) keeps
/// the plan in the checkpoint; `None` (a dry run) only reads it.
pub(crate) fn plan(
    address: &KafkaAddress,
    state: &StateStore,
    id: String,
    resume: bool,
    incremental: bool,
    record: Option<(&str, &str)>,
) -> Result<TopicRun> {
    if !resume && record.is_some() {
        state.forget_run(&id)?;
    }
    let kept = state.files(&id)?;
    let read = |key: &str| -> Option<String> { kept.get(key)?.dest_version.clone() };
    if let Some(planned) = read(PLANNED) {
        let ranges: Vec<(i32, i64, i64)> = serde_json::from_str(&planned)
            .map_err(|e| Error::Internal(format!("the checkpoint's topic ranges: {e}")))?;
        tracing::info!("resuming over the offsets the interrupted run planned");
        return Ok(TopicRun {
            id,
            ranges: ranges
                .into_iter()
                .map(|(partition, start, end)| Range {
                    partition,
                    start,
                    end,
                })
                .collect(),
            incremental,
        });
    }
    let next = match read(NEXT).filter(|_| incremental) {
        Some(text) => parse_next(&text)?,
        None => BTreeMap::new(),
    };
    let ranges = next_ranges(address, &next)?;
    let Some((source, destination)) = record else {
        return Ok(TopicRun {
            id,
            ranges,
            incremental,
        });
    };
    state.start_run(&id, source, destination)?;
    let text: Vec<(i32, i64, i64)> = ranges
        .iter()
        .map(|r| (r.partition, r.start, r.end))
        .collect();
    let text = serde_json::to_string(&text).map_err(|e| Error::Internal(e.to_string()))?;
    state.file_done(&id, PLANNED, 0, None, None, Some(&text))?;
    Ok(TopicRun {
        id,
        ranges,
        incremental,
    })
}

/// Where a stream stands in one partition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub partition: i32,
    /// The first offset not yet committed at the destination (where the next run starts).
    pub committed: i64,
    /// The partition's high watermark now.
    pub high: i64,
    /// Events between them.
    pub lag: i64,
}

/// Where runs from `address` into `dst` stand in each partition: what finished runs
/// committed (or the address's start where none did yet) against the high watermarks.
pub fn positions(
    address: &KafkaAddress,
    dst: &DataAddress,
    state: &StateStore,
) -> Result<Vec<Position>> {
    let kept = state.files(&offsets_id(address, dst))?;
    let next = match kept.get(NEXT).and_then(|c| c.dest_version.as_deref()) {
        Some(text) => parse_next(text)?,
        None => BTreeMap::new(),
    };
    Ok(next_ranges(address, &next)?
        .into_iter()
        .map(|r| Position {
            partition: r.partition,
            committed: r.start,
            high: r.end,
            lag: (r.end - r.start).max(0),
        })
        .collect())
}

/// Where the next run starts, per partition, as the checkpoint keeps it.
fn parse_next(text: &str) -> Result<BTreeMap<i32, i64>> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("the checkpoint's topic positions: {e}")))
}

/// Each selected partition from `next` (or the address's start where it has none, or the
/// first offset still kept) to its end (`endOffset`, else the high watermark now).
fn next_ranges(address: &KafkaAddress, next: &BTreeMap<i32, i64>) -> Result<Vec<Range>> {
    let consumer = kafka::consumer(address, 64)?;
    let (partitions, _) = kafka::partitions(&consumer, address)?;
    let mut marks = BTreeMap::new();
    for p in &partitions {
        marks.insert(*p, kafka::watermarks(&consumer, address, *p)?);
    }
    let starts = kafka::start_offsets(&consumer, address, &marks)?;
    Ok(partitions
        .iter()
        .map(|p| {
            let (low, high) = marks[p];
            let start = next.get(p).copied().unwrap_or(starts[p]);
            Range {
                partition: *p,
                start: kafka::kept_start(*p, start, low),
                end: kafka::end_offset(address, *p, high),
            }
        })
        .collect())
}

impl TopicRun {
    /// Records that the run finished: the next starts where this one ended, or, in a
    /// partition where it `stopped` short (a message in chunks still incomplete), there.
    pub(crate) fn finished(&self, state: &StateStore, stopped: &BTreeMap<i32, i64>) -> Result<()> {
        if self.incremental {
            let kept = state.files(&self.id)?;
            let mut next: BTreeMap<i32, i64> = kept
                .get(NEXT)
                .and_then(|c| serde_json::from_str(c.dest_version.as_deref()?).ok())
                .unwrap_or_default();
            for r in &self.ranges {
                let end = stopped.get(&r.partition).copied().unwrap_or(r.end);
                next.insert(r.partition, end.max(r.start));
            }
            let text = serde_json::to_string(&next).map_err(|e| Error::Internal(e.to_string()))?;
            state.file_done(&self.id, NEXT, 0, None, None, Some(&text))?;
        }
        state.forget_file(&self.id, PLANNED)
    }

    /// Whether there is anything to read.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.iter().all(|r| r.start >= r.end)
    }

    /// Events in the ranges (offsets; a compacted topic holds fewer).
    pub(crate) fn events(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| (r.end - r.start).max(0) as u64)
            .sum()
    }
}
