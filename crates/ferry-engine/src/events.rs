//! Export and import of a Kafka topic, byte for byte: every event (key, value, headers,
//! timestamp and its type) into objects of the `ferry-events/1` container format, one run
//! of consecutive events of one partition per object, and back.
//!
//! **Export** reads up to [`WAVE`] partitions at once, from the start offsets (or, on a
//! re-run, from after the last object the checkpoint records) to the high watermarks taken
//! when the run started. Each partition's events stream into one object at a time, uploaded
//! in parts as they fill; an object is complete at `object_size` bytes of events or at the
//! partition's end, then recorded. Object boundaries depend only on the events, so a run
//! killed mid-object writes the same object again from its first offset: no event is
//! written twice into the final objects, none is missed. `_manifest.json` lists them.
//!
//! **Import** produces each partition's objects, in offset order, into the same partition
//! with an idempotent producer (`acks=all`, in order, no duplicates from its own retries).
//! After each object it waits for every delivery and records the target's next offset.
//! A re-run counts the events the target partition received since that record (offsets
//! of an idempotent producer without transactions are contiguous) and skips as many:
//! exactly once, provided nothing else writes to the target partitions meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_connectors::kafka::chunks::{self, Assembled, Assembler};
use ferry_connectors::kafka::container::{self, Event, EventReader, EventWriter};
use ferry_connectors::kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use ferry_connectors::kafka::rdkafka::error::KafkaError;
use ferry_connectors::kafka::rdkafka::message::Message;
use ferry_connectors::kafka::rdkafka::producer::Producer;
use ferry_connectors::kafka::rdkafka::{Offset, TopicPartitionList};
use ferry_connectors::kafka::{self, Delivered};
use ferry_connectors::{open_sink, open_source};
use ferry_core::{ChecksumAlgo, DataAddress, Entry, Error, Hasher, KafkaAddress, Result, Sink};
use ferry_state::StateStore;
use tokio::runtime::Handle;

use crate::options::CopyOptions;
use crate::report::{run_outcome, Action, CopyReport, FileReport, Progress};
use crate::upload::UploadWriter;

/// Partitions exported at once: each holds one object's parts in flight.
const WAVE: usize = 8;
/// The manifest every export writes at the root of its prefix.
pub const MANIFEST: &str = "_manifest.json";
/// What librdkafka may prefetch, in KiB, for all partitions together.
const PREFETCH_KIB: usize = 32 * 1024;

/// Runs an export (topic → files or objects) or an import (files or objects → topic).
pub(crate) async fn copy(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    run_id: String,
) -> Result<CopyReport> {
    opts.validate()?;
    let started = Instant::now();
    if let (DataAddress::Kafka(_), DataAddress::Kafka(_)) = (src, dst) {
        return Err(Error::not_supported(
            dst,
            "topic to topic: export the topic to a directory or prefix, then import it",
        ));
    }
    let state = opts.state_store()?;
    if !opts.resume {
        state.forget_run(&run_id)?;
    }
    state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
    let state = Arc::new(state);
    let observer = progress.clone();
    let files = match (src, dst) {
        (DataAddress::Kafka(topic), _) => {
            export(topic, dst, opts, progress, &state, &run_id).await?
        }
        (_, DataAddress::Kafka(topic)) => import(src, topic, progress, &state, &run_id).await?,
        _ => return Err(Error::Internal("not a Kafka transfer".into())),
    };
    let report = CopyReport::new(
        files,
        opts.checksum,
        started.elapsed(),
        false,
        observer.as_ref(),
    );
    state.finish_run(&run_id, run_outcome(report.failed))?;
    Ok(report)
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("a Kafka worker stopped: {e}"))
}

/// One finished object as the checkpoint and the manifest keep it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRecord {
    key: String,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
    events: u64,
    bytes: u64,
    checksum: String,
}

impl ObjectRecord {
    /// Reads back what [`record_object`] stored.
    fn from_checkpoint(key: &str, c: &ferry_state::FileCheckpoint) -> Option<ObjectRecord> {
        let (partition, first_offset) = container::parse_object_name(key)?;
        let (_, last) = c.source_version.as_deref()?.split_once('-')?;
        let (bytes, checksum) = c.dest_version.as_deref()?.split_once(' ')?;
        Some(ObjectRecord {
            key: key.to_string(),
            partition,
            first_offset,
            last_offset: last.parse().ok()?,
            events: c.source_size,
            bytes: bytes.parse().ok()?,
            checksum: checksum.to_string(),
        })
    }
}

fn record_object(state: &StateStore, run_id: &str, o: &ObjectRecord) -> Result<()> {
    state.file_done(
        run_id,
        &o.key,
        o.events,
        Some(&format!("{}-{}", o.first_offset, o.last_offset)),
        None,
        Some(&format!("{} {}", o.bytes, o.checksum)),
    )
}

async fn export(
    topic: &KafkaAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    state: &Arc<StateStore>,
    run_id: &str,
) -> Result<Vec<FileReport>> {
    let sink = open_sink(dst)?;
    let mut objects: Vec<ObjectRecord> = state
        .files(run_id)?
        .iter()
        .filter(|(_, c)| c.done)
        .filter_map(|(k, c)| ObjectRecord::from_checkpoint(k, c))
        .collect();
    let job = Export {
        topic: topic.clone(),
        sink: sink.clone(),
        state: state.clone(),
        run_id: run_id.to_string(),
        object_size: opts.object_size,
        part_size: opts.part_size.min(8 << 20) as usize,
        handle: Handle::current(),
        progress,
    };
    let mut files: Vec<FileReport> = objects
        .iter()
        .map(|o| FileReport {
            key: o.key.clone(),
            destination_key: o.key.clone(),
            size: o.bytes,
            moved: 0,
            action: Action::Skipped,
            checksum: Some(o.checksum.clone()),
            error: None,
        })
        .collect();
    let done = objects.clone();
    let exported = tokio::task::spawn_blocking(move || job.run(&done))
        .await
        .map_err(join_error)??;
    for (file, object) in exported.objects {
        files.push(file);
        objects.push(object);
    }
    objects.sort_by_key(|o| (o.partition, o.first_offset));
    let manifest = serde_json::json!({
        "format": container::FORMAT,
        "topic": topic.topic,
        "partitions": exported.partitions,
        "events": objects.iter().map(|o| o.events).sum::<u64>(),
        "objects": objects,
    });
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    sink.put(MANIFEST, Bytes::from(body)).await?;
    Ok(files)
}

/// What an export run wrote: each new object, and the topic's partition count (for the
/// manifest: what an import creates).
struct Exported {
    objects: Vec<(FileReport, ObjectRecord)>,
    partitions: usize,
}

struct Export {
    topic: KafkaAddress,
    sink: Arc<dyn Sink>,
    state: Arc<StateStore>,
    run_id: String,
    object_size: u64,
    part_size: usize,
    handle: Handle,
    progress: Arc<dyn Progress>,
}

/// The object a partition's events are going into.
struct Segment {
    writer: EventWriter<Hashing<UploadWriter>>,
    upload: UploadWriter,
    key: String,
    first: i64,
    last: i64,
    weight: u64,
}

/// Checksums what passes through to the upload.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Export {
    fn run(&self, done: &[ObjectRecord]) -> Result<Exported> {
        let topic = &self.topic;
        let consumer = kafka::consumer(topic, PREFETCH_KIB)?;
        let (partitions, all) = kafka::partitions(&consumer, topic)?;
        let mut marks = BTreeMap::new();
        for p in &partitions {
            marks.insert(*p, kafka::watermarks(&consumer, topic, *p)?);
        }
        let mut starts = kafka::start_offsets(&consumer, topic, &marks)?;
        for o in done {
            if let Some(start) = starts.get_mut(&o.partition) {
                *start = (*start).max(o.last_offset + 1);
            }
        }
        let ends: BTreeMap<i32, i64> = marks
            .iter()
            .map(|(p, (_, high))| (*p, kafka::end_offset(topic, *p, *high)))
            .collect();
        let mut todo = Vec::new();
        for p in &partitions {
            let (low, _) = marks[p];
            let start = kafka::kept_start(*p, starts[p], low);
            if start < ends[p] {
                todo.push((*p, start));
            }
        }
        self.progress.planned(todo.len() as u64, 0);
        self.progress
            .events_planned(todo.iter().map(|(p, start)| (ends[p] - start) as u64).sum());
        let mut objects = Vec::new();
        for wave in todo.chunks(WAVE) {
            objects.extend(self.wave(&consumer, wave, &ends)?);
        }
        Ok(Exported {
            objects,
            partitions: all,
        })
    }

    /// Exports `wave` (partition, start offset) up to `ends`.
    fn wave(
        &self,
        consumer: &BaseConsumer,
        wave: &[(i32, i64)],
        ends: &BTreeMap<i32, i64>,
    ) -> Result<Vec<(FileReport, ObjectRecord)>> {
        let topic = &self.topic;
        // A killed run may have left the partial file of the object it was writing.
        let unfinished: Vec<String> = wave
            .iter()
            .map(|(p, start)| container::object_name(*p, *start))
            .collect();
        self.handle
            .block_on(self.sink.discard_unrecorded(&unfinished))?;
        let mut assignment = TopicPartitionList::new();
        for (p, start) in wave {
            assignment
                .add_partition_offset(&topic.topic, *p, Offset::Offset(*start))
                .map_err(|e| kafka::error(topic, Some(*p), e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| kafka::error(topic, None, e))?;
        let mut open: BTreeSet<i32> = wave.iter().map(|(p, _)| *p).collect();
        let mut segments: BTreeMap<i32, Segment> = BTreeMap::new();
        // Events sent in chunks are exported whole; a message still incomplete at the
        // end is left for the next run, which starts at its first chunk.
        let mut assembler = Assembler::default();
        let mut files = Vec::new();
        while !open.is_empty() {
            let Some(polled) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = match polled {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    if open.remove(&p) {
                        assembler.drop_partial(p);
                        self.finish(consumer, &mut segments, p, &mut files)?;
                    }
                    continue;
                }
                Err(e) if kafka::transient(&e) => {
                    tracing::warn!(error = %e, "Kafka: retrying");
                    continue;
                }
                Err(e) => return Err(kafka::error(topic, None, e)),
            };
            let p = message.partition();
            if !open.contains(&p) {
                continue;
            }
            let end = ends[&p];
            if message.offset() >= end {
                open.remove(&p);
                self.finish(consumer, &mut segments, p, &mut files)?;
                continue;
            }
            let offset = message.offset();
            let record = kafka::event_of(&message);
            drop(message);
            let at_end = offset + 1 >= end;
            let assembled = assembler.push(p, record).map_err(|why| {
                Error::data(
                    format!("{} partition {p} offset {offset}", topic.topic_shown()),
                    why,
                )
            })?;
            match assembled {
                Assembled::Event(event) => {
                    self.append(&mut segments, p, &event, offset)?;
                    let full = segments
                        .get(&p)
                        .is_some_and(|s| s.weight >= self.object_size);
                    if at_end {
                        open.remove(&p);
                        self.finish(consumer, &mut segments, p, &mut files)?;
                    } else if full {
                        self.finish(consumer, &mut segments, p, &mut files)?;
                    }
                }
                Assembled::Partial | Assembled::Orphan => {
                    if matches!(assembled, Assembled::Orphan) {
                        tracing::warn!(
                            partition = p,
                            offset,
                            "a chunk whose message starts before the offsets read: left out"
                        );
                    }
                    if at_end {
                        if let Some(first) = assembler.incomplete(p) {
                            tracing::info!(
                                partition = p,
                                from = first,
                                "a message still incomplete at the end is left for the next run"
                            );
                        }
                        assembler.drop_partial(p);
                        open.remove(&p);
                        self.finish(consumer, &mut segments, p, &mut files)?;
                    }
                }
            }
        }
        consumer
            .unassign()
            .map_err(|e| kafka::error(topic, None, e))?;
        Ok(files)
    }

    /// Writes `event` into partition `p`'s open object (opening one); `through` is the
    /// last offset it took (its last chunk's, when it came in chunks).
    fn append(
        &self,
        segments: &mut BTreeMap<i32, Segment>,
        p: i32,
        event: &Event,
        through: i64,
    ) -> Result<()> {
        if let std::collections::btree_map::Entry::Vacant(slot) = segments.entry(p) {
            let key = container::object_name(p, event.offset);
            let upload = UploadWriter::new(
                self.sink.clone(),
                &key,
                self.handle.clone(),
                self.part_size,
                2,
                None,
            );
            let hashing = Hashing {
                inner: upload.clone(),
                hasher: ChecksumAlgo::Crc32c.hasher(),
                bytes: 0,
            };
            let writer =
                EventWriter::new(hashing).map_err(|e| upload.error_or(self.io(&key, e)))?;
            slot.insert(Segment {
                writer,
                upload,
                key,
                first: event.offset,
                last: event.offset,
                weight: 0,
            });
        }
        let Some(segment) = segments.get_mut(&p) else {
            return Err(Error::Internal("no open object".into()));
        };
        segment
            .writer
            .write(event)
            .map_err(|e| segment.upload.error_or(self.io(&segment.key, e)))?;
        segment.last = through;
        segment.weight += event.weight();
        self.progress.advanced(event.weight());
        self.progress.events_done(1);
        Ok(())
    }

    /// Completes partition `p`'s open object, if any, and records it.
    fn finish(
        &self,
        consumer: &BaseConsumer,
        segments: &mut BTreeMap<i32, Segment>,
        p: i32,
        files: &mut Vec<(FileReport, ObjectRecord)>,
    ) -> Result<()> {
        let Some(segment) = segments.remove(&p) else {
            return Ok(());
        };
        let events = segment.writer.events();
        let hashing = segment
            .writer
            .finish()
            .map_err(|e| segment.upload.error_or(self.io(&segment.key, e)))?;
        let written: Entry = segment.upload.commit()?;
        let record = ObjectRecord {
            key: segment.key.clone(),
            partition: p,
            first_offset: segment.first,
            last_offset: segment.last,
            events,
            bytes: hashing.bytes,
            checksum: hashing.hasher.finish().to_string(),
        };
        record_object(&self.state, &self.run_id, &record)?;
        if self.topic.group_id.is_some() {
            let mut position = TopicPartitionList::new();
            position
                .add_partition_offset(&self.topic.topic, p, Offset::Offset(segment.last + 1))
                .map_err(|e| kafka::error(&self.topic, Some(p), e))?;
            consumer
                .commit(&position, CommitMode::Sync)
                .map_err(|e| kafka::error(&self.topic, Some(p), e))?;
        }
        self.progress.file_finished(&segment.key);
        let file = FileReport {
            key: format!("partition {p} offsets {}-{}", segment.first, segment.last),
            destination_key: segment.key,
            size: written.size,
            moved: written.size,
            action: Action::Copied,
            checksum: Some(record.checksum.clone()),
            error: None,
        };
        files.push((file, record));
        self.handle.block_on(crate::failpoint::file_recorded());
        crate::failpoint::object_exported();
        Ok(())
    }

    fn io(&self, key: &str, e: std::io::Error) -> Error {
        Error::store(self.sink.address().join(key), e.to_string())
    }
}

/// An object to import: its partition, first offset and listing entry.
struct Input {
    partition: i32,
    entry: Entry,
}

async fn import(
    src: &DataAddress,
    topic: &KafkaAddress,
    progress: Arc<dyn Progress>,
    state: &StateStore,
    run_id: &str,
) -> Result<Vec<FileReport>> {
    let source = open_source(src)?;
    let listing = source.list().await?;
    let manifest = match listing.entries.iter().find(|e| e.key == MANIFEST) {
        Some(entry) => read_manifest(source.as_ref(), entry).await,
        None => None,
    };
    let mut inputs: Vec<(i64, Input)> = listing
        .entries
        .into_iter()
        .filter_map(|entry| {
            let (partition, first) = container::parse_object_name(&entry.key)?;
            Some((first, Input { partition, entry }))
        })
        .collect();
    if inputs.is_empty() {
        return Err(Error::not_found(format!(
            "{src}: no exported events (partition=NNNN/…{} objects)",
            container::SUFFIX
        )));
    }
    inputs.sort_by_key(|(first, i)| (i.partition, *first));
    if let Some((_, listed)) = &manifest {
        // Objects another export left under the same prefix are not this export's.
        inputs.retain(|(_, i)| {
            let keep = listed.contains_key(&i.entry.key);
            if !keep {
                tracing::warn!(key = %i.entry.key, "not in {MANIFEST}: left out");
            }
            keep
        });
    }
    let manifest_partitions = match &manifest {
        Some((n, _)) => *n,
        None => inputs
            .iter()
            .map(|(_, i)| i.partition + 1)
            .max()
            .unwrap_or(1) as usize,
    };
    let checkpoints = state.files(run_id)?;
    progress.planned(
        inputs.len() as u64,
        inputs.iter().map(|(_, i)| i.entry.size).sum(),
    );
    if let Some((_, listed)) = &manifest {
        let events = inputs
            .iter()
            .filter(|(_, i)| !checkpoints.get(&i.entry.key).is_some_and(|c| c.done))
            .map(|(_, i)| listed.get(&i.entry.key).copied().unwrap_or_default())
            .sum();
        progress.events_planned(events);
    }

    let producer = Arc::new(kafka::producer(topic)?);
    let target = match kafka::topic_partitions(producer.as_ref(), topic)? {
        Some(p) => p,
        None if topic.create_topic => {
            kafka::create_topic(topic, manifest_partitions as i32).await?;
            wait_for_topic(&producer, topic).await?
        }
        None => {
            return Err(Error::not_found(format!(
            "topic '{}' at {} (add ?createTopic=true to create it with the source's {} partitions)",
            topic.topic,
            topic.bootstrap(),
            manifest_partitions
        )))
        }
    };
    if let Some((_, missing)) = inputs.iter().find(|(_, i)| !target.contains(&i.partition)) {
        return Err(Error::invalid_option(
            "destination",
            format!(
                "the export has partition {} but topic '{}' has {} partitions",
                missing.partition,
                topic.topic,
                target.len()
            ),
        ));
    }
    let consumer = kafka::consumer(topic, 1024)?;
    let max_message = kafka::max_message_bytes(topic).await?;

    let mut files = Vec::new();
    let mut by_partition: BTreeMap<i32, Vec<Input>> = BTreeMap::new();
    for (_, input) in inputs {
        by_partition.entry(input.partition).or_default().push(input);
    }
    for (p, inputs) in by_partition {
        // Where the target partition stood after the last recorded object (or before the
        // first event this import sent).
        let start_key = format!("start/partition={p:04}");
        let mut recorded = inputs
            .iter()
            .rev()
            .find_map(|i| checkpoints.get(&i.entry.key).filter(|c| c.done))
            .or_else(|| checkpoints.get(&start_key))
            .and_then(|c| c.dest_version.as_deref()?.parse::<i64>().ok());
        // Once this run has sent an object to `p`, the recorded offset is the target's end.
        let mut sent_here = false;
        for input in inputs {
            let key = &input.entry.key;
            if checkpoints.get(key).is_some_and(|c| c.done) {
                files.push(report(&input, Action::Skipped, 0));
                continue;
            }
            let (base, already) = match recorded.filter(|_| sent_here) {
                Some(at) => (at, 0),
                None => {
                    let (_, high) = kafka::watermarks(&consumer, topic, p)?;
                    let base = match recorded {
                        Some(at) => at,
                        None => {
                            let high_text = high.to_string();
                            state.file_done(run_id, &start_key, 0, None, None, Some(&high_text))?;
                            high
                        }
                    };
                    // Events of this object the target received before the run that
                    // sent them died.
                    (base, high - base)
                }
            };
            if already < 0 {
                return Err(Error::store(
                    topic.topic_shown(),
                    format!("partition {p} holds fewer events than this import recorded sending (was it emptied?); run with --no-resume to import again"),
                ));
            }
            let data = source.read(&input.entry, 0..input.entry.size).await?;
            let (sent, next) = {
                let (producer, topic, progress) =
                    (producer.clone(), topic.clone(), progress.clone());
                let key = key.clone();
                tokio::task::spawn_blocking(move || {
                    send_object(
                        &producer,
                        &topic,
                        p,
                        &key,
                        &data,
                        already as u64,
                        max_message,
                        &*progress,
                    )
                })
                .await
                .map_err(join_error)??
            };
            let next = next.unwrap_or(base + already);
            state.file_done(run_id, key, sent, None, None, Some(&next.to_string()))?;
            recorded = Some(next);
            sent_here = true;
            progress.file_finished(key);
            let action = if already > 0 {
                Action::Resumed
            } else {
                Action::Copied
            };
            files.push(report(&input, action, input.entry.size));
            crate::failpoint::file_recorded().await;
        }
    }
    Ok(files)
}

fn report(input: &Input, action: Action, moved: u64) -> FileReport {
    FileReport {
        key: input.entry.key.clone(),
        destination_key: format!("partition {}", input.partition),
        size: input.entry.size,
        moved,
        action,
        checksum: None,
        error: None,
    }
}

/// The partition count and the object keys an export's manifest gives.
async fn read_manifest(
    source: &dyn ferry_core::Source,
    entry: &Entry,
) -> Option<(usize, BTreeMap<String, u64>)> {
    let data = source.read(entry, 0..entry.size).await.ok()?;
    let manifest: serde_json::Value = serde_json::from_slice(&data).ok()?;
    let keys = manifest["objects"]
        .as_array()?
        .iter()
        .filter_map(|o| {
            let events = o["events"].as_u64().unwrap_or_default();
            o["key"].as_str().map(|k| (k.to_string(), events))
        })
        .collect();
    Some((manifest["partitions"].as_u64()? as usize, keys))
}

/// A topic just created shows in the metadata after a moment.
async fn wait_for_topic(
    producer: &ferry_connectors::kafka::rdkafka::producer::BaseProducer<Delivered>,
    topic: &KafkaAddress,
) -> Result<Vec<i32>> {
    for _ in 0..50 {
        if let Some(p) = kafka::topic_partitions(producer, topic)? {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::store(
        topic.topic_shown(),
        "created, but its metadata never showed it",
    ))
}

/// Produces the events of one object after its first `skip` to partition `p`, waits for
/// every delivery, and returns the events sent and the target's next offset.
#[allow(clippy::too_many_arguments)]
fn send_object(
    producer: &ferry_connectors::kafka::rdkafka::producer::BaseProducer<Delivered>,
    topic: &KafkaAddress,
    p: i32,
    key: &str,
    data: &[u8],
    skip: u64,
    max_message: usize,
    progress: &dyn Progress,
) -> Result<(u64, Option<i64>)> {
    let corrupt =
        |e: std::io::Error| Error::data(key, format!("not a readable events object: {e}"));
    let mut reader = EventReader::new(data).map_err(corrupt)?;
    // Records, not events, are counted: an event too large for the topic is several.
    let (mut seen, mut sent) = (0u64, 0u64);
    while let Some(whole) = reader.next_event().map_err(corrupt)? {
        progress.events_done(1);
        let split;
        let records = if chunks::too_large(&whole, max_message) {
            split = chunks::split(&whole, max_message, &format!("{p}:{}", whole.offset));
            split.as_slice()
        } else {
            std::slice::from_ref(&whole)
        };
        for event in records {
            seen += 1;
            if seen <= skip {
                continue;
            }
            kafka::send_event(producer, topic, Some(p), event)?;
            sent += 1;
            crate::failpoint::event_sent(|| {
                // The point of the failpoint is that these events did land.
                while producer.flush(Duration::from_secs(30)).is_err() {}
            });
            if let Some(e) = producer.context().error(topic) {
                return Err(e);
            }
        }
        progress.advanced(whole.weight());
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| kafka::error(topic, Some(p), e))?;
    if let Some(e) = producer.context().error(topic) {
        return Err(e);
    }
    let next = producer.context().last(p).map(|o| o + 1);
    Ok((sent, next))
}
