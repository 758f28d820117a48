//! A topic read as rows: each event's value decoded (JSON, Avro, text or bytes) into
//! columns, plus the metadata columns asked for (`_key`, `_partition`, `_offset`,
//! `_timestamp`, `_headers`). A topic read this way is a [`TableScan`] whose partitions
//! are the topic's, each an offset range, so every table destination and file format
//! works with it unchanged.
//!
//! Each partition is read on its own thread by its own consumer into a channel of two
//! batches; a batch holds at most `batch_rows` rows and about [`BATCH_BYTES`] of values,
//! so memory is bounded whatever the topic's size. Tombstones (events without a value)
//! carry no row for `json` and `avro`; for `string` and `bytes` their `value` is null.
//! A value that does not decode is handled per `onError`: the run fails naming the
//! partition and offset, the event is skipped (and counted in the log), or it is sent as
//! it was to the dead-letter topic with a `ferry.error` header.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, KafkaAddress, OnError, Result, ValueFormat};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::chunks::{Assembled, Assembler};
use super::container::Event;
use super::registry::Registry;
use super::{event_of, Delivered};
use crate::tables::{TablePartition, TableScan, CHANGE_DELETED, CHANGE_SEQ};

/// Values held for one batch before it is decoded and sent on.
pub const BATCH_BYTES: usize = 2 << 20;
/// What each partition's consumer may prefetch, in KiB.
const PREFETCH_KIB: usize = 8 * 1024;

/// Offsets `start..end` of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// Where a partition's reader closes its file early, so that a directory of a topic's
/// rows is cut into files of bounded size and time span. Each boundary is found from the
/// events themselves (their record time and size), so reading the same offsets again
/// cuts the same files.
#[derive(Clone, Default)]
pub struct Rolling {
    /// A file holds events of one record-time window of this many milliseconds
    /// (windows aligned on the epoch).
    pub interval_ms: Option<i64>,
    /// A file closes before the event that would take its keys' and values' bytes past
    /// this (a file holds at least one event).
    pub max_bytes: Option<u64>,
    /// The directory of an event's record time (`dt=2026-12-03/hour=07`): a file holds
    /// events of one directory.
    pub directory: Option<PathOfTime>,
}

/// The directory of a record time in milliseconds.
pub type PathOfTime = Arc<dyn Fn(i64) -> String + Send + Sync>;

impl Rolling {
    /// Whether any boundary is set.
    pub fn is_set(&self) -> bool {
        self.interval_ms.is_some() || self.max_bytes.is_some() || self.directory.is_some()
    }

    /// The record-time window of `timestamp` (ms).
    pub fn window(&self, timestamp: i64) -> Option<i64> {
        self.interval_ms.map(|i| timestamp.div_euclid(i.max(1)))
    }
}

impl std::fmt::Debug for Rolling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rolling")
            .field("interval_ms", &self.interval_ms)
            .field("max_bytes", &self.max_bytes)
            .field("directory", &self.directory.is_some())
            .finish()
    }
}

/// Where a file being filled stands against its [`Rolling`] boundaries.
struct Filling {
    rolling: Rolling,
    /// Events taken.
    events: u64,
    bytes: u64,
    /// The window and directory of the file's first event.
    window: Option<i64>,
    directory: Option<String>,
    /// The last record time whose directory was computed, and that directory.
    last: Option<(i64, String)>,
}

impl Filling {
    fn new(rolling: Rolling) -> Self {
        Filling {
            rolling,
            events: 0,
            bytes: 0,
            window: None,
            directory: None,
            last: None,
        }
    }

    /// Takes the next event; false when it belongs to the next file.
    fn fits(&mut self, timestamp: i64, size: u64) -> bool {
        let window = self.rolling.window(timestamp);
        let directory = match &self.rolling.directory {
            Some(path) => {
                // Events come in bursts of the same second: the directory is computed once.
                let second = timestamp.div_euclid(1000);
                match &self.last {
                    Some((at, dir)) if *at == second => Some(dir.clone()),
                    _ => {
                        let dir = path(timestamp);
                        self.last = Some((second, dir.clone()));
                        Some(dir)
                    }
                }
            }
            None => None,
        };
        if self.events == 0 {
            self.window = window;
            self.directory = directory;
        } else {
            let full = self
                .rolling
                .max_bytes
                .is_some_and(|max| self.bytes + size > max);
            if full || window != self.window || directory != self.directory {
                return false;
            }
        }
        self.events += 1;
        self.bytes += size;
        true
    }
}

/// Told how many more events (offsets) were read, whatever became of them, and their
/// keys' and values' bytes.
pub type EventsRead = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A planned read of a topic as rows.
pub struct TopicScan {
    address: KafkaAddress,
    ranges: Vec<Range>,
    partitions: Vec<TablePartition>,
    /// The columns values decode into.
    value_schema: SchemaRef,
    /// Those and the metadata columns.
    schema: SchemaRef,
    registry: Option<Arc<Registry>>,
    on_events: Option<EventsRead>,
    stopped: Arc<std::sync::Mutex<BTreeMap<i32, i64>>>,
    handle: tokio::runtime::Handle,
    /// Read as changes by these key columns ([`TopicScan::as_changes`]).
    changes: Option<Arc<Vec<String>>>,
    rolling: Rolling,
    /// The value columns when they were inferred: a value with another field ends a
    /// partition's read before it, so that the next run infers its column.
    inferred: Option<Arc<std::collections::HashSet<String>>>,
}

impl TopicScan {
    /// Plans reading `ranges` (empty ones left out). The value columns are `declared`,
    /// or for JSON inferred from up to `infer_rows` values, for Avro the registry's latest
    /// schema of `<topic>-value`.
    pub fn open(
        address: &KafkaAddress,
        ranges: Vec<Range>,
        declared: Option<SchemaRef>,
        infer_rows: usize,
    ) -> Result<TopicScan> {
        address
            .check()
            .map_err(|(name, reason)| Error::invalid_option(name, reason))?;
        let ranges: Vec<Range> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        let mut registry = None;
        let inferring = declared.is_none() && address.value_format == ValueFormat::Json;
        let value_schema = match (declared, address.value_format) {
            (_, ValueFormat::String) => {
                Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]))
            }
            (_, ValueFormat::Bytes) => Arc::new(Schema::new(vec![Field::new(
                "value",
                DataType::Binary,
                true,
            )])),
            (Some(schema), ValueFormat::Json) => schema,
            (None, ValueFormat::Json) => infer_json(address, &ranges, infer_rows)?,
            (_, ValueFormat::Avro) => {
                let r = Registry::new(address, tokio::runtime::Handle::current())?;
                let schema = r.reader_schema(address)?;
                registry = Some(r);
                schema
            }
        };
        let mut fields: Vec<Field> = value_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for name in &address.metadata {
            if value_schema.field_with_name(name).is_ok() {
                return Err(Error::data(
                    address.topic_shown(),
                    format!("the values have a field '{name}', which is also a metadata column; leave it out of 'metadata'"),
                ));
            }
            fields.push(metadata_field(name));
        }
        let inferred = inferring.then(|| {
            Arc::new(
                value_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
            )
        });
        let partitions = ranges
            .iter()
            .map(|r| TablePartition {
                key: format!("partition={:04}", r.partition),
                predicate: None,
            })
            .collect();
        Ok(TopicScan {
            address: address.clone(),
            ranges,
            partitions,
            value_schema,
            schema: Arc::new(Schema::new(fields)),
            registry,
            on_events: None,
            stopped: Arc::default(),
            handle: tokio::runtime::Handle::current(),
            changes: None,
            rolling: Rolling::default(),
            inferred,
        })
    }

    /// Closes each partition's file at the first of `rolling`'s boundaries: the reader
    /// stops there and says where ([`TopicScan::stopped`]), for the next run to start.
    pub fn with_rolling(mut self, rolling: Rolling) -> Self {
        self.rolling = rolling;
        self
    }

    /// Reads the events as changes of rows keyed by `key_columns`, for an `upsert` table:
    /// each row carries its offset ([`CHANGE_SEQ`]) so that only a key's last change
    /// counts, and a tombstone becomes a row flagged [`CHANGE_DELETED`] whose key columns
    /// come from the event's key (a JSON object with those fields or, for one key
    /// column, the key itself).
    pub fn as_changes(mut self, key_columns: &[String]) -> Self {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(CHANGE_SEQ, DataType::Int64, false));
        fields.push(Field::new(CHANGE_DELETED, DataType::Boolean, false));
        self.schema = Arc::new(Schema::new(fields));
        self.changes = Some(Arc::new(key_columns.to_vec()));
        self
    }

    /// Per partition, where a reader stopped short of its range's end: the first chunk
    /// of a message still incomplete there, or the first event of the next file
    /// ([`TopicScan::with_rolling`]), where the next run must start.
    pub fn stopped(&self) -> Arc<std::sync::Mutex<BTreeMap<i32, i64>>> {
        self.stopped.clone()
    }

    /// Reports the events each partition's reader gets through to `on_events`.
    pub fn with_progress(mut self, on_events: EventsRead) -> Self {
        self.on_events = Some(on_events);
        self
    }

    /// The ranges read, one per partition.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }
}

fn metadata_field(name: &str) -> Field {
    match name {
        "_key" => Field::new(name, DataType::Utf8, true),
        "_partition" => Field::new(name, DataType::Int32, false),
        "_offset" => Field::new(name, DataType::Int64, false),
        "_timestamp" => Field::new(
            name,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        _ => Field::new(name, DataType::Utf8, true),
    }
}

impl TableScan for TopicScan {
    fn partitions(&self) -> &[TablePartition] {
        &self.partitions
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn query(&self, index: usize) -> String {
        let r = self.ranges[index];
        format!(
            "{} partition {} offsets {}..{} as {} with {}{}",
            self.address.topic_shown(),
            r.partition,
            r.start,
            r.end,
            self.address.value_format.name(),
            self.address.metadata.join(","),
            if self.address.snapshot {
                " (snapshot)"
            } else {
                ""
            }
        )
    }

    fn read(&self, index: usize, batch_rows: usize) -> mpsc::Receiver<Result<RecordBatch>> {
        let (tx, rx) = mpsc::channel(2);
        let reader = PartitionReader {
            address: self.address.clone(),
            range: self.ranges[index],
            value_schema: self.value_schema.clone(),
            schema: self.schema.clone(),
            batch_rows: batch_rows.max(1),
            registry: self.registry.clone(),
            on_events: self.on_events.clone(),
            stopped: self.stopped.clone(),
            handle: self.handle.clone(),
            dead_letter: None,
            skipped: 0,
            changes: self.changes.clone(),
            rolling: self.rolling.clone(),
            inferred: self.inferred.clone(),
        };
        std::thread::spawn(move || {
            let mut reader = reader;
            if let Err(e) = reader.run(&tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        rx
    }
}

/// Reads up to `infer_rows` JSON values from the start of the ranges and infers their
/// columns; values that are not JSON objects are left to the read to report.
fn infer_json(address: &KafkaAddress, ranges: &[Range], infer_rows: usize) -> Result<SchemaRef> {
    let mut sample: Vec<serde_json::Value> = Vec::new();
    if !ranges.is_empty() && infer_rows > 0 {
        let consumer = assigned(address, ranges)?;
        let mut open: Vec<Range> = ranges.to_vec();
        while !open.is_empty() && sample.len() < infer_rows {
            let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = match polled {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    open.retain(|r| r.partition != p);
                    continue;
                }
                Err(e) if super::transient(&e) => continue,
                Err(e) => return Err(super::error(address, None, e)),
            };
            let Some(range) = open.iter().find(|r| r.partition == message.partition()) else {
                continue;
            };
            if message.offset() >= range.end {
                let p = range.partition;
                open.retain(|r| r.partition != p);
                continue;
            }
            if message.offset() + 1 >= range.end {
                let p = range.partition;
                open.retain(|r| r.partition != p);
            }
            if let Some(value) = message.payload() {
                if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_slice(value) {
                    sample.push(v);
                }
            }
        }
    }
    if sample.is_empty() && !ranges.is_empty() {
        return Err(Error::data(
            address.topic_shown(),
            "no value among the first events is a JSON object to infer columns from; declare them with --schema, or read with valueFormat=string or bytes",
        ));
    }
    let schema = arrow::json::reader::infer_json_schema_from_iterator(sample.iter().map(Ok))
        .map_err(|e| Error::data(address.topic_shown(), format!("inferring columns: {e}")))?;
    Ok(Arc::new(schema))
}

/// A consumer assigned to the start of each range.
fn assigned(address: &KafkaAddress, ranges: &[Range]) -> Result<BaseConsumer> {
    let consumer = super::consumer(address, PREFETCH_KIB)?;
    let mut list = TopicPartitionList::new();
    for r in ranges {
        list.add_partition_offset(&address.topic, r.partition, Offset::Offset(r.start))
            .map_err(|e| super::error(address, Some(r.partition), e))?;
    }
    consumer
        .assign(&list)
        .map_err(|e| super::error(address, None, e))?;
    Ok(consumer)
}

/// Reads one partition's range into batches.
struct PartitionReader {
    address: KafkaAddress,
    range: Range,
    value_schema: SchemaRef,
    schema: SchemaRef,
    batch_rows: usize,
    registry: Option<Arc<Registry>>,
    on_events: Option<EventsRead>,
    stopped: Arc<std::sync::Mutex<BTreeMap<i32, i64>>>,
    handle: tokio::runtime::Handle,
    dead_letter: Option<DeadLetters>,
    skipped: u64,
    changes: Option<Arc<Vec<String>>>,
    rolling: Rolling,
    inferred: Option<Arc<std::collections::HashSet<String>>>,
}

/// The events of one batch, before decoding.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    bytes: usize,
}

impl PartitionReader {
    fn run(&mut self, tx: &mpsc::Sender<Result<RecordBatch>>) -> Result<()> {
        let p = self.range.partition;
        let stop = || tx.is_closed();
        // A snapshot reads the range twice: once to learn each key's last offset (kept
        // on disk), then for the rows, keeping only those.
        let latest = match self.address.snapshot {
            true => Some(Latest::index(&self.address, self.range, &stop)?),
            false => None,
        };
        let mut pending = Pending::default();
        let mut assembler = Assembler::default();
        let mut reported = self.range.start;
        let mut bytes = 0u64;
        let on_events = self.on_events.clone();
        let report = |upto: i64, reported: &mut i64, bytes: &mut u64| {
            if let Some(f) = &on_events {
                f((upto - *reported).max(0) as u64, *bytes);
            }
            *reported = upto;
            *bytes = 0;
        };
        let (address, range) = (self.address.clone(), self.range);
        let mut filling = self
            .rolling
            .is_set()
            .then(|| Filling::new(self.rolling.clone()));
        // The first event of the next file, where the reader stopped.
        let mut rolled = None;
        let mut taken = 0u64;
        let inferred = self.inferred.clone();
        let at = |offset: i64| format!("{} partition {p} offset {offset}", address.topic_shown());
        let completed = each_event(&address, range, &mut assembler, &stop, |event, next| {
            let size =
                event.value.as_ref().map_or(0, Vec::len) + event.key.as_ref().map_or(0, Vec::len);
            if let (Some(known), Some(value)) = (&inferred, &event.value) {
                if let Some(field) = new_field(value, known) {
                    if taken > 0 {
                        tracing::info!(at = %at(event.offset), field = %field, "a new field: the run reads up to it, the next one from it with its column");
                        rolled = Some(event.offset);
                        return Ok(false);
                    }
                    tracing::warn!(at = %at(event.offset), field = %field, "a field not among the columns inferred is left out; declare the columns (schema) to read it");
                }
            }
            taken += 1;
            if let Some(filling) = &mut filling {
                if !filling.fits(event.timestamp, size as u64) {
                    rolled = Some(event.offset);
                    return Ok(false);
                }
            }
            bytes += size as u64;
            if let Some(latest) = &latest {
                if !latest.keeps(&event)? {
                    return Ok(true);
                }
            }
            pending.bytes += size + 64;
            pending.events.push(event);
            if pending.events.len() >= self.batch_rows || pending.bytes >= BATCH_BYTES {
                let batch = self.decode(std::mem::take(&mut pending))?;
                if batch.num_rows() > 0 && tx.blocking_send(Ok(batch)).is_err() {
                    return Ok(false);
                }
                report(next, &mut reported, &mut bytes);
            }
            Ok(true)
        })?;
        if !completed && rolled.is_none() {
            return Ok(());
        }
        let batch = self.decode(pending)?;
        if batch.num_rows() > 0 {
            let _ = tx.blocking_send(Ok(batch));
        }
        if let Some(at) = rolled {
            self.stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p, at);
            report(at, &mut reported, &mut bytes);
            return Ok(());
        }
        if let Some(first) = assembler.incomplete(p) {
            tracing::info!(at = %self.at(first), "a message still incomplete at the end is left for the next run");
            self.stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p, first);
        }
        report(self.range.end, &mut reported, &mut bytes);
        if self.skipped > 0 {
            tracing::warn!(
                topic = %self.address.topic_shown(),
                partition = self.range.partition,
                skipped = self.skipped,
                "events whose value did not decode were skipped (onError=skip)"
            );
        }
        Ok(())
    }

    /// Where an event is, for messages.
    fn at(&self, offset: i64) -> String {
        format!(
            "{} partition {} offset {offset}",
            self.address.topic_shown(),
            self.range.partition
        )
    }

    /// Decodes `pending` into one batch; events that do not decode are handled per
    /// `onError` (dead letters are delivered before the batch goes on).
    fn decode(&mut self, pending: Pending) -> Result<RecordBatch> {
        let mut events = pending.events;
        let mut tombstones = Vec::new();
        if matches!(
            self.address.value_format,
            ValueFormat::Json | ValueFormat::Avro
        ) {
            if self.changes.is_some() {
                let (values, deletes): (Vec<Event>, Vec<Event>) =
                    events.into_iter().partition(|e| e.value.is_some());
                events = values;
                tombstones = deletes;
            } else {
                events.retain(|e| e.value.is_some());
            }
        }
        let values = loop {
            match self.decode_values(&events) {
                Ok(columns) => break columns,
                Err((index, reason)) => {
                    let event = events.remove(index);
                    self.reject(&event, &reason)?;
                }
            }
        };
        let mut values = values;
        if let Some(keys) = self.changes.clone() {
            if !tombstones.is_empty() {
                let deletes = self.tombstone_rows(&keys, &mut tombstones)?;
                values = values
                    .iter()
                    .zip(&deletes)
                    .map(|(a, b)| arrow::compute::concat(&[a.as_ref(), b.as_ref()]))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::Internal(format!("joining tombstones: {e}")))?;
                events.append(&mut tombstones);
            }
        }
        if self.dead_letter.is_some() {
            self.flush_dead_letters()?;
        }
        let mut columns = values;
        for name in &self.address.metadata {
            columns.push(metadata_column(name, &events, self.range.partition));
        }
        if self.changes.is_some() {
            columns.push(Arc::new(Int64Array::from_iter_values(
                events.iter().map(|e| e.offset),
            )));
            columns.push(Arc::new(BooleanArray::from_iter(
                events.iter().map(|e| Some(e.value.is_none())),
            )));
        }
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("building a batch from a topic: {e}")))
    }

    /// The value columns of tombstones read as changes: null but for the key columns, taken
    /// from each event's key. A tombstone whose key gives none of them is handled per
    /// `onError` (it cannot say which row to delete).
    fn tombstone_rows(
        &mut self,
        keys: &[String],
        tombstones: &mut Vec<Event>,
    ) -> Result<Vec<ArrayRef>> {
        loop {
            let objects: std::result::Result<Vec<Vec<u8>>, (usize, String)> = tombstones
                .iter()
                .enumerate()
                .map(|(i, e)| key_object(keys, e.key.as_deref()).map_err(|reason| (i, reason)))
                .collect();
            let decoded = objects.and_then(|objects| {
                let events: Vec<Event> = objects
                    .into_iter()
                    .map(|value| Event {
                        value: Some(value),
                        ..Event::default()
                    })
                    .collect();
                decode_json(&self.value_schema, &events)
            });
            match decoded {
                Ok(columns) => return Ok(columns),
                Err((index, reason)) => {
                    let event = tombstones.remove(index);
                    self.reject(&event, &format!("tombstone: {reason}"))?;
                }
            }
        }
    }

    /// The value columns of `events`, or the index of the first event that does not decode
    /// and why.
    fn decode_values(
        &self,
        events: &[Event],
    ) -> std::result::Result<Vec<ArrayRef>, (usize, String)> {
        match self.address.value_format {
            ValueFormat::String => {
                let mut out = Vec::with_capacity(events.len());
                for (i, e) in events.iter().enumerate() {
                    match e.value.as_deref().map(std::str::from_utf8) {
                        None => out.push(None),
                        Some(Ok(text)) => out.push(Some(text)),
                        Some(Err(err)) => {
                            return Err((i, format!("value is not UTF-8 text: {err}")))
                        }
                    }
                }
                Ok(vec![Arc::new(StringArray::from(out)) as ArrayRef])
            }
            ValueFormat::Bytes => {
                let values: Vec<Option<&[u8]>> =
                    events.iter().map(|e| e.value.as_deref()).collect();
                Ok(vec![Arc::new(BinaryArray::from(values)) as ArrayRef])
            }
            ValueFormat::Json => decode_json(&self.value_schema, events),
            ValueFormat::Avro => match &self.registry {
                Some(registry) => registry.decode(&self.value_schema, events),
                None => Err((0, "internal: Avro without a registry".into())),
            },
        }
    }

    /// An event whose value did not decode: fail, skip or dead-letter it.
    fn reject(&mut self, event: &Event, reason: &str) -> Result<()> {
        match self.address.on_error {
            OnError::Fail => Err(Error::data(self.at(event.offset), reason)),
            OnError::Skip => {
                tracing::warn!(at = %self.at(event.offset), %reason, "skipped");
                self.skipped += 1;
                Ok(())
            }
            OnError::DeadLetter => {
                if self.dead_letter.is_none() {
                    self.dead_letter = Some(DeadLetters::open(&self.address, &self.handle)?);
                }
                let source = self.at(event.offset);
                let mut letter = event.clone();
                letter
                    .headers
                    .push(("ferry.error".into(), Some(reason.as_bytes().to_vec())));
                letter
                    .headers
                    .push(("ferry.source".into(), Some(source.as_bytes().to_vec())));
                match self.dead_letter.as_mut() {
                    Some(DeadLetters::Topic(topic)) => {
                        let (address, producer) = (&topic.0, &topic.1);
                        super::send_event(producer, address, None, &letter)?;
                        producer.poll(Duration::ZERO);
                    }
                    Some(DeadLetters::Prefix { pending, .. }) => pending.push(letter),
                    None => unreachable!("set above"),
                }
                tracing::warn!(at = %source, %reason, "kept as a dead letter");
                Ok(())
            }
        }
    }

    /// Waits until every dead letter so far is delivered, or written in one object named
    /// by the partition and the first one's offset (the same on a re-run).
    fn flush_dead_letters(&mut self) -> Result<()> {
        match self.dead_letter.as_mut() {
            None => Ok(()),
            Some(DeadLetters::Topic(topic)) => {
                let (address, producer) = (&topic.0, &topic.1);
                producer
                    .flush(Duration::from_secs(120))
                    .map_err(|e| super::error(address, None, e))?;
                match producer.context().error(address) {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
            Some(DeadLetters::Prefix { sink, pending }) => {
                let Some(first) = pending.first().map(|e| e.offset) else {
                    return Ok(());
                };
                let key = super::container::object_name(self.range.partition, first);
                let mut writer = super::container::EventWriter::new(Vec::new())
                    .map_err(|e| Error::Internal(e.to_string()))?;
                for letter in pending.drain(..) {
                    writer
                        .write(&letter)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                }
                let data = writer
                    .finish()
                    .map_err(|e| Error::Internal(e.to_string()))?;
                self.handle
                    .block_on(sink.put(&key, bytes::Bytes::from(data)))?;
                Ok(())
            }
        }
    }
}

/// Where events whose value does not decode go with `onError=deadLetter`.
enum DeadLetters {
    /// A topic on the same brokers, through an idempotent producer.
    Topic(Box<(KafkaAddress, BaseProducer<Delivered>)>),
    /// A prefix of events objects (`ferry-events/1`, as an export writes them), one per
    /// batch that had dead letters.
    Prefix {
        sink: Arc<dyn ferry_core::Sink>,
        pending: Vec<Event>,
    },
}

impl DeadLetters {
    fn open(address: &KafkaAddress, handle: &tokio::runtime::Handle) -> Result<DeadLetters> {
        let target = address.dead_letter.clone().unwrap_or_default();
        if ferry_core::kafka::dead_letter_prefix(&target) {
            let mut at = ferry_core::DataAddress::parse(&target)?;
            if let ferry_core::DataAddress::Local { path } = &at {
                // A prefix is a directory, whether or not it ends with '/'.
                std::fs::create_dir_all(path).map_err(|e| Error::store(&target, e.to_string()))?;
                at = ferry_core::DataAddress::parse(&format!("{}/", target.trim_end_matches('/')))?;
            }
            let _guard = handle.enter();
            return Ok(DeadLetters::Prefix {
                sink: crate::open_sink(&at)?,
                pending: Vec::new(),
            });
        }
        let mut topic = address.clone();
        topic.topic = target;
        let producer = super::producer(&topic)?;
        Ok(DeadLetters::Topic(Box::new((topic, producer))))
    }
}

/// The first top-level field of JSON object `value` not in `known` (none when the value is
/// not an object: decoding says what is wrong with it).
fn new_field(value: &[u8], known: &std::collections::HashSet<String>) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Fields<'a>(&'a std::collections::HashSet<String>);
    struct Name<'a>(&'a std::collections::HashSet<String>);
    impl<'de> DeserializeSeed<'de> for Name<'_> {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Name<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
            Ok((!self.0.contains(v)).then(|| v.to_string()))
        }
    }
    impl<'de> Visitor<'de> for Fields<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(
            self,
            mut map: M,
        ) -> std::result::Result<Self::Value, M::Error> {
            let mut found = None;
            while let Some(name) = map.next_key_seed(Name(self.0))? {
                map.next_value::<IgnoredAny>()?;
                found = found.or(name);
            }
            Ok(found)
        }
    }
    let mut d = serde_json::Deserializer::from_slice(value);
    d.deserialize_map(Fields(known)).ok().flatten()
}

/// Reads `range` from its start, putting chunked messages together, and gives each
/// whole event and the offset after it to `each` until `each` says stop (`false`) or the
/// range ends. Returns whether the range was read to its end.
fn each_event(
    address: &KafkaAddress,
    range: Range,
    assembler: &mut Assembler,
    stop: &dyn Fn() -> bool,
    mut each: impl FnMut(Event, i64) -> Result<bool>,
) -> Result<bool> {
    let consumer = assigned(address, &[range])?;
    let p = range.partition;
    let at = |offset: i64| format!("{} partition {p} offset {offset}", address.topic_shown());
    let mut next = range.start;
    while next < range.end {
        let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
            if stop() {
                return Ok(false);
            }
            continue;
        };
        let message = match polled {
            Ok(m) => m,
            // The high watermark moved below the planned end (events deleted).
            Err(KafkaError::PartitionEOF(_)) => break,
            Err(e) if super::gone(&e) => return Err(Error::data(at(next), super::GONE)),
            Err(e) if super::transient(&e) => {
                tracing::warn!(error = %e, "Kafka: retrying");
                continue;
            }
            Err(e) => return Err(super::error(address, Some(p), e)),
        };
        if message.offset() >= range.end {
            break;
        }
        let offset = message.offset();
        next = offset + 1;
        let record = event_of(&message);
        drop(message);
        let event = match assembler.push(p, record) {
            Ok(Assembled::Event(e)) => e,
            Ok(Assembled::Partial) => continue,
            Ok(Assembled::Orphan) => {
                tracing::warn!(at = %at(offset), "a chunk whose message starts before the offsets read: left out");
                continue;
            }
            Err(why) => return Err(Error::data(at(offset), why)),
        };
        if !each(event, next)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Each key's last offset in one partition's range, and whether that last event is a
/// tombstone, kept in a SQLite file that is removed afterwards: memory stays bounded by
/// SQLite's page cache whatever the number of keys.
struct Latest {
    db: rusqlite::Connection,
    path: std::path::PathBuf,
}

impl Latest {
    fn index(address: &KafkaAddress, range: Range, stop: &dyn Fn() -> bool) -> Result<Latest> {
        let path = std::env::temp_dir().join(format!(
            "ferry-snapshot-{}-{}-{}.sqlite",
            std::process::id(),
            range.partition,
            range.start
        ));
        let _ = std::fs::remove_file(&path);
        let spill = |e: rusqlite::Error| Error::Internal(format!("the snapshot's key index: {e}"));
        let db = rusqlite::Connection::open(&path).map_err(spill)?;
        db.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -16384;
             CREATE TABLE latest (key BLOB PRIMARY KEY, at INTEGER NOT NULL, tombstone INTEGER NOT NULL) WITHOUT ROWID;
             BEGIN;",
        )
        .map_err(spill)?;
        let latest = Latest { db, path };
        {
            let mut upsert = latest
                .db
                .prepare(
                    "INSERT INTO latest VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET at = excluded.at, tombstone = excluded.tombstone",
                )
                .map_err(spill)?;
            let mut assembler = Assembler::default();
            each_event(address, range, &mut assembler, stop, |event, _| {
                if let Some(key) = &event.key {
                    upsert
                        .execute(rusqlite::params![key, event.offset, event.value.is_none()])
                        .map_err(spill)?;
                }
                Ok(true)
            })?;
        }
        latest.db.execute_batch("COMMIT").map_err(spill)?;
        Ok(latest)
    }

    /// Whether a snapshot keeps `event`: the last of its key, and not a tombstone (events
    /// without a key are all kept, tombstones never).
    fn keeps(&self, event: &Event) -> Result<bool> {
        if event.value.is_none() {
            return Ok(false);
        }
        let Some(key) = &event.key else {
            return Ok(true);
        };
        use rusqlite::OptionalExtension;
        let last: Option<i64> = self
            .db
            .prepare_cached("SELECT at FROM latest WHERE key = ?1")
            .and_then(|mut q| q.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| Error::Internal(format!("the snapshot's key index: {e}")))?;
        Ok(last == Some(event.offset))
    }
}

impl Drop for Latest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// JSON objects into the value columns; the first value that is not an object, or whose
/// fields do not fit the columns, is reported by index.
fn decode_json(
    schema: &SchemaRef,
    events: &[Event],
) -> std::result::Result<Vec<ArrayRef>, (usize, String)> {
    let decoder = || {
        arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(events.len().max(1) + 1)
            .with_strict_mode(false)
            .build_decoder()
            .map_err(|e| (0, format!("internal: {e}")))
    };
    let mut all = decoder()?;
    for (i, event) in events.iter().enumerate() {
        let value = event.value.as_deref().unwrap_or_default();
        // One value, one object, one row: anything else would shift the rows.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(value) {
            return Err((i, format!("value is not JSON: {e}")));
        }
        if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err((i, "value is JSON but not an object".into()));
        }
        let used = all.decode(value).map_err(|e| (i, e.to_string()))?;
        if used != value.len() {
            return Err((i, "value holds more than one JSON value".into()));
        }
    }
    match all.flush() {
        Ok(Some(batch)) => Ok(batch.columns().to_vec()),
        Ok(None) => Ok(empty_columns(schema)),
        Err(batch_error) => {
            // Find the value at fault: the first that does not decode on its own.
            for (i, event) in events.iter().enumerate() {
                let mut one = decoder()?;
                let value = event.value.as_deref().unwrap_or_default();
                if let Err(e) = one.decode(value).and_then(|_| one.flush().map(|_| ())) {
                    return Err((i, format!("value does not fit the columns: {e}")));
                }
            }
            Err((0, format!("values do not fit the columns: {batch_error}")))
        }
    }
}

/// The JSON object a tombstone's key stands for: the key itself when it is an object
/// holding every key column, else, for one key column, that column set to the key (as a
/// JSON number, or as text).
fn key_object(keys: &[String], key: Option<&[u8]>) -> std::result::Result<Vec<u8>, String> {
    let Some(key) = key else {
        return Err("no key to tell which row to delete".into());
    };
    let parsed: Option<serde_json::Value> = serde_json::from_slice(key).ok();
    if let Some(serde_json::Value::Object(map)) = &parsed {
        if let Some(missing) = keys.iter().find(|k| !map.contains_key(k.as_str())) {
            return Err(format!("the key has no field '{missing}'"));
        }
        return Ok(key.to_vec());
    }
    let [column] = keys else {
        return Err(format!(
            "the key is not a JSON object with the key columns ({})",
            keys.join(", ")
        ));
    };
    let value = match parsed {
        Some(n @ serde_json::Value::Number(_)) => n,
        Some(s @ serde_json::Value::String(_)) => s,
        _ => serde_json::Value::String(String::from_utf8_lossy(key).into_owned()),
    };
    Ok(serde_json::json!({ column.as_str(): value })
        .to_string()
        .into_bytes())
}

fn empty_columns(schema: &SchemaRef) -> Vec<ArrayRef> {
    schema
        .fields()
        .iter()
        .map(|f| arrow::array::new_empty_array(f.data_type()))
        .collect()
}

fn metadata_column(name: &str, events: &[Event], partition: i32) -> ArrayRef {
    match name {
        "_key" => Arc::new(StringArray::from_iter(events.iter().map(|e| {
            e.key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
        }))),
        "_partition" => Arc::new(Int32Array::from(vec![partition; events.len()])),
        "_offset" => Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.offset),
        )),
        "_timestamp" => Arc::new(
            TimestampMillisecondArray::from_iter(
                events
                    .iter()
                    .map(|e| (e.timestamp >= 0).then_some(e.timestamp)),
            )
            .with_timezone("UTC"),
        ),
        _ => Arc::new(StringArray::from_iter(events.iter().map(|e| {
            if e.headers.is_empty() {
                return None;
            }
            let map: serde_json::Map<String, serde_json::Value> = e
                .headers
                .iter()
                .map(|(k, v)| {
                    let value = v.as_deref().map_or(serde_json::Value::Null, |v| {
                        serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
                    });
                    (k.clone(), value)
                })
                .collect();
            Some(serde_json::Value::Object(map).to_string())
        }))),
    }
}
