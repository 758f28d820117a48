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
//!
//! Into a directory, [`FileRolling`] cuts each partition's events into files: a run
//! plans at most `flushSize` offsets per partition, its readers stop at the end of a
//! record-time window, a directory of `pathFormat` or `maxFileBytes`, and the run is
//! followed by the next until the partitions reach the ends the first one planned. A
//! stream's batch also holds back a partition's last events while their file is still
//! open (fewer than `flushSize`, their window not over by the clock nor by a later
//! event), so that each file is written once, whole.

use std::collections::BTreeMap;

use ferry_connectors::kafka::{self, rows::Range};
use ferry_core::{DataAddress, Error, KafkaAddress, Result, WriteMode};
use ferry_state::StateStore;

/// The checkpoint key of the ranges a run planned (removed when it finishes).
const PLANNED: &str = "planned";
/// The checkpoint key of where the next run starts, per partition.
const NEXT: &str = "next";

/// How a topic's rows are cut into files in a directory.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRolling {
    /// A file holds at most this many events (offsets).
    pub flush_size: Option<u64>,
    /// A file holds events of one window of record time this long (windows aligned on
    /// the epoch, UTC).
    pub rotate_interval_seconds: Option<u64>,
    /// A file closes before the event that would take its keys' and values' bytes past
    /// this.
    pub max_file_bytes: Option<u64>,
    /// The directory of a file from its first event's record time, strftime-style
    /// (`dt=%Y-%m-%d/hour=%H`), in UTC.
    pub path_format: Option<String>,
    /// A stream's batch: a partition's last events wait while their file is open.
    pub hold_open: bool,
    /// A stream with `createSnapshot` into a directory: seconds between compacted
    /// snapshots of the topic (written by the stream's run, not by a batch).
    pub snapshot_interval_seconds: Option<u64>,
}

impl FileRolling {
    /// What a stream into a directory uses where its manifest says nothing: files of at
    /// most a minute of record time and 128 MiB of events.
    pub const STREAM_INTERVAL_SECONDS: u64 = 60;
    pub const STREAM_MAX_FILE_BYTES: u64 = 128 << 20;

    /// Whether anything cuts files.
    pub fn is_set(&self) -> bool {
        self.flush_size.is_some()
            || self.rotate_interval_seconds.is_some()
            || self.max_file_bytes.is_some()
            || self.path_format.is_some()
    }

    /// Whether `src` to `dst` writes a topic's rows into files that can be cut.
    fn cuts(src: &DataAddress, dst: &DataAddress) -> bool {
        matches!(src, DataAddress::Kafka(_))
            && !matches!(dst, DataAddress::Table(_) | DataAddress::Kafka(_))
            && dst.names_a_directory()
    }

    /// Checks the settings for a transfer from `src` to `dst` whose destination format is
    /// named or not; `field` gives a setting's name as the user wrote it
    /// (`spec.destination.flushSize`, `--flush-size`).
    pub fn check(
        &self,
        src: &DataAddress,
        dst: &DataAddress,
        format_named: bool,
        field: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        let given = [
            ("flushSize", self.flush_size),
            ("rotateIntervalSeconds", self.rotate_interval_seconds),
            ("maxFileBytes", self.max_file_bytes),
            ("pathFormat", self.path_format.as_ref().map(|_| 1)),
        ];
        for (name, value) in given {
            let Some(value) = value else { continue };
            if !Self::cuts(src, dst) {
                return Err(Error::invalid_option(
                    field(name),
                    "cuts a topic's rows into files: the source must be kafka and the destination a directory (ending in '/')",
                ));
            }
            if !format_named {
                return Err(Error::invalid_option(
                    field(name),
                    "cuts a topic's rows into files: name the files' format",
                ));
            }
            if value == 0 {
                return Err(Error::invalid_option(field(name), "must be at least 1"));
            }
        }
        match &self.path_format {
            Some(format) => Self::check_path_format(format, &field("pathFormat")),
            None => Ok(()),
        }
    }

    /// A StreamTransfer's settings: into a directory, files stay open until full or their
    /// window is over, and are at most a minute of record time and 128 MiB of events
    /// unless set otherwise.
    pub fn for_stream(mut self, src: &DataAddress, dst: &DataAddress) -> Self {
        if Self::cuts(src, dst) {
            self.hold_open = true;
            self.rotate_interval_seconds = self
                .rotate_interval_seconds
                .or(Some(Self::STREAM_INTERVAL_SECONDS));
            self.max_file_bytes = self.max_file_bytes.or(Some(Self::STREAM_MAX_FILE_BYTES));
        }
        self
    }

    /// Checks `pathFormat` (at `field`, for the message): strftime fields chrono knows, a
    /// relative path without `..`.
    fn check_path_format(format: &str, field: &str) -> Result<()> {
        use chrono::format::{Item, StrftimeItems};
        if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
            return Err(Error::invalid_option(
                field,
                format!(
                    "'{format}' is not a strftime pattern chrono reads (e.g. dt=%Y-%m-%d/hour=%H)"
                ),
            ));
        }
        if format.starts_with('/') || format.split('/').any(|part| part == "..") {
            return Err(Error::invalid_option(
                field,
                format!("'{format}' must be a relative path without '..'"),
            ));
        }
        Ok(())
    }

    /// The directory of record time `ms` under `pathFormat`.
    pub fn directory(&self, ms: i64) -> Option<String> {
        let format = self.path_format.as_deref()?;
        let time = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        Some(
            time.format(format)
                .to_string()
                .trim_matches('/')
                .to_string(),
        )
    }

    /// Where the readers stop.
    pub(crate) fn boundaries(&self) -> kafka::rows::Rolling {
        let directory: Option<kafka::rows::PathOfTime> = self.path_format.as_ref().map(|_| {
            let me = self.clone();
            std::sync::Arc::new(move |ms: i64| me.directory(ms).unwrap_or_default())
                as kafka::rows::PathOfTime
        });
        kafka::rows::Rolling {
            interval_ms: self
                .rotate_interval_seconds
                .map(|s| (s.max(1) * 1000) as i64),
            max_bytes: self.max_file_bytes,
            directory,
        }
    }
}

/// The offsets of one run of a topic, and where they are kept.
pub(crate) struct TopicRun {
    id: String,
    pub ranges: Vec<Range>,
    /// Per partition, the end before cutting at `flushSize` or holding events back: a
    /// following run goes no further.
    pub ends: BTreeMap<i32, i64>,
    /// Events held back while their file is open.
    pub held: u64,
    /// The record time of each range's first event, where planning asked the broker.
    pub first_times: BTreeMap<i32, i64>,
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
/// decode (`onError`, `valueFormat`…) keep it, and so does the table's `schemaEvolution`,
/// so a run after a fix goes on from where the last finished one stopped.
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
    let dst = match dst {
        DataAddress::Table(t) if t.add_columns => DataAddress::Table(ferry_core::TableAddress {
            add_columns: false,
            ..t.clone()
        }),
        other => other.clone(),
    };
    let text = format!(
        "topic offsets\n{selected}\n{}",
        crate::records::canonical(&dst)
    );
    format!(
        "{}.offsets",
        ferry_core::ChecksumAlgo::Xxh3.digest(text.as_bytes()).hex()
    )
}

/// Plans the ranges of a run whose offsets are kept under `id` ([`offsets_id`]), from the
/// checkpoint when an earlier run of it was killed. `record` (the source and destination as shown) keeps
/// the plan in the checkpoint; `None` (a dry run) only reads it.
///
/// Into a directory, the ranges are cut per `rolling`, and go no further than `until`
/// (the first run's ends, for the runs that follow it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    address: &KafkaAddress,
    state: &StateStore,
    id: String,
    resume: bool,
    incremental: bool,
    record: Option<(&str, &str)>,
    rolling: &FileRolling,
    until: Option<&BTreeMap<i32, i64>>,
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
        let ranges: Vec<Range> = ranges
            .into_iter()
            .map(|(partition, start, end)| Range {
                partition,
                start,
                end,
            })
            .collect();
        // The runs that follow it plan their own ends.
        return Ok(TopicRun {
            id,
            ends: BTreeMap::new(),
            ranges,
            held: 0,
            first_times: BTreeMap::new(),
            incremental,
        });
    }
    let next = match read(NEXT).filter(|_| incremental) {
        Some(text) => parse_next(&text)?,
        None => BTreeMap::new(),
    };
    let consumer = kafka::consumer(address, 64)?;
    let mut ranges = next_ranges(&consumer, address, &next)?;
    for r in &mut ranges {
        if let Some(end) = until.and_then(|u| u.get(&r.partition)) {
            r.end = r.end.min(*end).max(r.start);
        }
    }
    let ends = ranges.iter().map(|r| (r.partition, r.end)).collect();
    let (ranges, held, first_times) = cut(&consumer, address, ranges, rolling)?;
    let Some((source, destination)) = record else {
        return Ok(TopicRun {
            id,
            ranges,
            ends,
            held,
            first_times,
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
        ends,
        held,
        first_times,
        incremental,
    })
}

/// Cuts `ranges` at `flushSize` offsets and, for a stream's batch, holds back the last
/// events of a partition whose file is still open; returns the ranges to read and the
/// events held back.
fn cut(
    consumer: &kafka::rdkafka::consumer::BaseConsumer,
    address: &KafkaAddress,
    ranges: Vec<Range>,
    rolling: &FileRolling,
) -> Result<(Vec<Range>, u64, BTreeMap<i32, i64>)> {
    let mut times = BTreeMap::new();
    if !rolling.is_set() && !rolling.hold_open {
        return Ok((ranges, 0, times));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let interval = rolling
        .rotate_interval_seconds
        .unwrap_or(FileRolling::STREAM_INTERVAL_SECONDS)
        .max(1) as i64
        * 1000;
    let mut held = 0;
    let mut out = Vec::with_capacity(ranges.len());
    for mut r in ranges {
        let full = rolling
            .flush_size
            .is_some_and(|n| (r.end - r.start) as u64 >= n);
        if let Some(n) = rolling.flush_size {
            r.end = r.end.min(r.start + n as i64);
        }
        if rolling.hold_open && !full && r.start < r.end {
            // The file these events start is open until its window is over: by the clock,
            // or because a later event falls in the next one.
            let first = kafka::timestamp_at(consumer, address, r.partition, r.start, r.end)?;
            if let Some(t) = first {
                times.insert(r.partition, t);
            }
            let over = match first {
                None => true,
                Some(t) if now >= (t.div_euclid(interval) + 1) * interval => true,
                Some(t) => {
                    let last =
                        kafka::timestamp_at(consumer, address, r.partition, r.end - 1, r.end)?;
                    last.is_some_and(|l| {
                        l.div_euclid(interval) != t.div_euclid(interval)
                            || rolling.directory(l) != rolling.directory(t)
                    })
                }
            };
            if !over {
                held += (r.end - r.start) as u64;
                r.end = r.start;
            }
        }
        out.push(r);
    }
    Ok((out, held, times))
}

/// The record time of each range's first event (those without are left out), asking the
/// broker only for those `known` lacks.
pub(crate) fn first_times(
    address: &KafkaAddress,
    ranges: &[Range],
    known: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>> {
    let mut times = known.clone();
    let missing: Vec<&Range> = ranges
        .iter()
        .filter(|r| r.start < r.end && !known.contains_key(&r.partition))
        .collect();
    if missing.is_empty() {
        return Ok(times);
    }
    let consumer = kafka::consumer(address, 64)?;
    for r in missing {
        if let Some(t) = kafka::timestamp_at(&consumer, address, r.partition, r.start, r.end)? {
            times.insert(r.partition, t);
        }
    }
    Ok(times)
}

/// Whether `key` (relative to a destination directory) is named as a topic run names its
/// files: `topic=<name>/[<pathFormat directories>/]partition=NNNN/<first offset, 20
/// digits>.<ext>`.
pub fn is_output_name(key: &str) -> bool {
    let mut parts = key.rsplit('/');
    let (Some(file), Some(dir)) = (parts.next(), parts.next()) else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let partition = dir.strip_prefix("partition=").is_some_and(|p| digits(p, 4));
    let offset = file
        .split_once('.')
        .is_some_and(|(o, ext)| digits(o, 20) && !ext.is_empty());
    partition && offset && key.starts_with("topic=")
}

/// Where a stream stands in one partition.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub partition: i32,
    /// The first offset not yet committed at the destination (where the next run starts).
    pub committed: i64,
    /// The partition's high watermark now.
    pub high: i64,
    /// Events between them.
    pub lag: i64,
    /// How old the first event not yet committed is, by its record time (0 when none is
    /// waiting).
    #[serde(default)]
    pub lag_seconds: f64,
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
    let consumer = kafka::consumer(address, 64)?;
    let now = chrono::Utc::now().timestamp_millis();
    next_ranges(&consumer, address, &next)?
        .into_iter()
        .map(|r| {
            let lag = (r.end - r.start).max(0);
            let first = match lag {
                0 => None,
                _ => kafka::timestamp_at(&consumer, address, r.partition, r.start, r.end)?,
            };
            Ok(Position {
                partition: r.partition,
                committed: r.start,
                high: r.end,
                lag,
                lag_seconds: first.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
            })
        })
        .collect()
}

/// Where the next run starts, per partition, as the checkpoint keeps it.
fn parse_next(text: &str) -> Result<BTreeMap<i32, i64>> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("the checkpoint's topic positions: {e}")))
}

/// Each selected partition from `next` (or the address's start where it has none, or the
/// first offset still kept) to its end (`endOffset`, else the high watermark now).
fn next_ranges(
    consumer: &kafka::rdkafka::consumer::BaseConsumer,
    address: &KafkaAddress,
    next: &BTreeMap<i32, i64>,
) -> Result<Vec<Range>> {
    let (partitions, _) = kafka::partitions(consumer, address)?;
    let mut marks = BTreeMap::new();
    for p in &partitions {
        marks.insert(*p, kafka::watermarks(consumer, address, *p)?);
    }
    let starts = kafka::start_offsets(consumer, address, &marks)?;
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

    /// Where the run read from, for messages: `events from orders partition 0 offset 6`.
    pub(crate) fn read_from(&self, src: &DataAddress) -> String {
        let topic = match src {
            DataAddress::Kafka(k) => k.topic_shown(),
            other => other.to_string(),
        };
        let at: Vec<String> = self
            .ranges
            .iter()
            .filter(|r| r.start < r.end)
            .map(|r| format!("partition {} offset {}", r.partition, r.start))
            .collect();
        format!("events from {topic} {}", at.join(", "))
    }

    /// Whether there is anything to read.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.iter().all(|r| r.start >= r.end)
    }

    /// Whether a partition stopped (where `stopped` says, else at its range's end) past
    /// its range's start and short of the end planned before cutting: more to read now.
    /// (A run that finished an interrupted one goes no further than its ranges.)
    pub(crate) fn more(&self, stopped: &BTreeMap<i32, i64>) -> bool {
        self.ranges.iter().any(|r| {
            let at = stopped.get(&r.partition).copied().unwrap_or(r.end);
            let end = self.ends.get(&r.partition).copied().unwrap_or(r.end);
            at > r.start && at < end
        })
    }

    /// The ends the run planned before cutting, for the runs that follow it.
    pub(crate) fn until(&self) -> BTreeMap<i32, i64> {
        self.ends.clone()
    }

    /// Events in the ranges (offsets; a compacted topic holds fewer).
    pub(crate) fn events(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| (r.end - r.start).max(0) as u64)
            .sum()
    }
}
