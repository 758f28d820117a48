//! The record path: files are read as Arrow record batches, transformed, and written in
//! a format. Used when the two ends' formats differ or transformations are asked for.
//!
//! Each output file is produced on its own blocking thread, fed by a reader thread through
//! a channel of two batches, and uploaded in parts as it is written, so memory is bounded by
//! batch size, the format's row group and the parts in flight, whatever the data's size.
//! An output becomes visible only when complete; the checkpoint records finished outputs,
//! so a re-run skips them.

use std::io;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{Schema, SchemaRef};
use bytes::Bytes;
use ferry_core::TransformSpec;
use ferry_core::{ChecksumAlgo, DataAddress, Entry, Error, Result, Sink, Source};
use ferry_formats::{
    describe_schema, open_reader, open_writer, written_schema, Codec, FieldDescription, FileAccess,
    Format, FormatOptions, Input, RandomAccess,
};
use ferry_state::StateStore;
use ferry_transforms::Chain;
use futures::StreamExt;
use serde::Serialize;
use tokio::runtime::Handle;

use crate::partition::{self, Share};
use crate::report::{run_outcome, Progress, Status};
use crate::upload::{OnStart, UploadWriter};
use crate::CopyOptions;

/// What the record path does on the way: formats at both ends and transformations.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecordOptions {
    /// The source's format; else each file's extension says.
    pub source_format: Option<Format>,
    pub source_options: FormatOptions,
    /// The destination's format; else its extension, else the source's.
    pub dest_format: Option<Format>,
    pub dest_options: FormatOptions,
    pub transforms: Vec<TransformSpec>,
    /// How a topic's rows are cut into files in a directory.
    pub rolling: crate::topics::FileRolling,
}

impl RecordOptions {
    /// True when copying `src` to `dst` must go through records rather than bytes: there
    /// are transformations, or the formats of the two ends are known and differ.
    pub fn needed(&self, src: &DataAddress, dst: &DataAddress) -> bool {
        let table = |a: &DataAddress| matches!(a, DataAddress::Table(_));
        if !self.transforms.is_empty() || table(src) || table(dst) {
            return true;
        }
        // A topic's events go as they are to a directory (an export) unless a format is
        // named; into a table or a file of a known format they are rows.
        if matches!(src, DataAddress::Kafka(_)) {
            return self.dest_format.is_some() || Format::from_name(&dst.path_text()).is_some();
        }
        if matches!(dst, DataAddress::Kafka(_)) {
            return self.source_format.is_some() || Format::from_name(&src.path_text()).is_some();
        }
        let from = self
            .source_format
            .or_else(|| Format::from_name(&src.path_text()));
        let to = self
            .dest_format
            .or_else(|| Format::from_name(&dst.path_text()));
        // `orders.csv` to `orders.csv.gz` is the same format, but the bytes change.
        // A bad compression option goes the record way too, which reports it.
        let codecs_differ = match (from, to) {
            (Some(_), Some(to)) => Codec::for_output(to, &self.dest_options, &dst.path_text())
                .map_or(true, |out| out != Codec::from_name(&src.path_text())),
            _ => false,
        };
        matches!((from, to), (Some(a), Some(b)) if a != b)
            || codecs_differ
            || (self.dest_format.is_some() && from.is_none())
    }
}

/// One side of a record transfer as reported: where, which format, which schema.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetReport {
    pub address: String,
    /// The file format, or `table` for a database table.
    pub format: String,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    /// A topic's events read (tombstones and skipped ones included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    pub schema: Vec<FieldDescription>,
}

/// One output file.
#[derive(Clone, Debug, Serialize)]
pub struct OutputReport {
    /// Relative to the destination address (`""`: the address itself).
    pub key: String,
    /// The input files it was made from, relative to the source address.
    pub inputs: Vec<String>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Done by an earlier run and still at the destination.
    pub skipped: bool,
    /// Why it was skipped, or done again although an earlier run had done it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OutputReport {
    /// An output planned from `inputs`, nothing done yet.
    pub(crate) fn planned(key: String, inputs: Vec<String>) -> OutputReport {
        OutputReport {
            key,
            inputs,
            rows_read: 0,
            rows_written: 0,
            bytes_read: 0,
            bytes_written: 0,
            skipped: false,
            reason: None,
            error: None,
        }
    }
}

/// The summary of a record transfer, with its technical metadata.
#[derive(Clone, Debug, Serialize)]
pub struct RecordReport {
    pub status: Status,
    pub source: DatasetReport,
    pub destination: DatasetReport,
    /// The transformations applied, in order.
    pub transformations: Vec<String>,
    pub objects: u64,
    pub skipped: u64,
    pub failed: u64,
    pub duration_s: f64,
    pub rows_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why this partition of a partitioned run had nothing to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    /// A stream's events left for a later batch because their file is still open.
    #[serde(skip_serializing_if = "is_zero")]
    pub held: u64,
    pub outputs: Vec<OutputReport>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RecordReport {
    /// This run's report followed by `next`'s, as one run that began at `started`.
    pub(crate) fn and_then(mut self, next: RecordReport, started: Instant) -> RecordReport {
        let add = |a: &mut DatasetReport, b: &DatasetReport| {
            a.files += b.files;
            a.rows += b.rows;
            a.bytes += b.bytes;
            a.events = match (a.events, b.events) {
                (None, None) => None,
                (x, y) => Some(x.unwrap_or(0) + y.unwrap_or(0)),
            };
            if a.schema.is_empty() {
                a.schema = b.schema.clone();
            }
        };
        add(&mut self.source, &next.source);
        add(&mut self.destination, &next.destination);
        self.status = next.status;
        self.objects += next.objects;
        self.skipped += next.skipped;
        self.failed += next.failed;
        self.error = next.error.or(self.error);
        self.held = next.held;
        self.outputs.extend(next.outputs);
        self.duration_s = started.elapsed().as_secs_f64();
        self.rows_per_s = self.source.rows as f64 / self.duration_s.max(1e-9);
        self
    }
}

/// The plan for one output file.
struct Output {
    key: String,
    inputs: Vec<(Entry, Format)>,
}

/// Everything the blocking workers share.
struct Job {
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    handle: Handle,
    rec: RecordOptions,
    dest_format: Format,
    /// The schema every input is read with (CSV, JSON) or must have (others).
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    part_size: usize,
    concurrency: usize,
    progress: Arc<dyn Progress>,
    state: Arc<StateStore>,
    run_id: String,
}

/// Runs a record transfer from `src` to `dst`.
pub async fn transfer(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<RecordReport> {
    let started = Instant::now();
    if matches!(src, DataAddress::Table(_) | DataAddress::Kafka(_))
        || matches!(dst, DataAddress::Table(_) | DataAddress::Kafka(_))
    {
        return crate::tables::transfer(src, dst, rec, opts, progress).await;
    }
    let (filter, source, sink, listing) = crate::copy::open_and_list(src, dst, opts).await?;
    let inputs = collect_inputs(src, &filter, listing, rec)?;
    let (first, first_format) = inputs[0].clone();

    let dst_path = dst.path_text();
    let names_file = !dst.names_a_directory()
        && Format::from_name(&dst_path).is_some()
        && !sink.is_directory().await?;
    let dest_format = rec
        .dest_format
        .or_else(|| Format::from_name(&dst_path).filter(|_| names_file))
        .unwrap_or(first_format);
    // Every partition reads the schema from the same first file, whichever files it writes.
    let Share {
        items: outputs,
        idle,
    } = if names_file {
        let one = vec![Output {
            key: String::new(),
            inputs,
        }];
        partition::whole(opts.partition, one, "the destination is one file")
    } else {
        let each = inputs
            .into_iter()
            .map(|(entry, format)| {
                Ok(Output {
                    key: rec.dest_options.file_name(dest_format, &entry.key)?,
                    inputs: vec![(entry, format)],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        partition::files(opts.partition, each, |o: &Output| o.inputs[0].0.key.clone())
    };

    // Everything that can be wrong with the request shows up here, before data moves:
    // the first file's schema, the transformations bound to it, the writer's types.
    let handle = Handle::current();
    let probe = {
        let (source, rec, handle) = (source.clone(), rec.clone(), handle.clone());
        let dst = dst.to_string();
        tokio::task::spawn_blocking(move || -> Result<(SchemaRef, SchemaRef, SchemaRef)> {
            let input = open_input(&source, &first, &handle, None);
            let reader = open_reader(
                first_format,
                &rec.source_options,
                input,
                &location(&source, &first),
                None,
            )?;
            let schema = reader.schema();
            let chain = Chain::bind(&rec.transforms, schema.clone())?;
            let out = chain.output_schema();
            let written = written_schema(dest_format, &rec.dest_options, &out, &dst)?;
            open_writer(
                dest_format,
                &rec.dest_options,
                out.clone(),
                Box::new(io::sink()),
                &dst,
            )?;
            Ok((schema, out, written))
        })
    };
    let (input_schema, output_schema, written_schema) = probe.await.map_err(join_error)??;

    let source_report = |rows, bytes, files| DatasetReport {
        events: None,
        address: src.to_string(),
        format: first_format.to_string(),
        files,
        rows,
        bytes,
        schema: describe_schema(&input_schema),
    };
    if opts.dry_run {
        let planned = outputs.iter().map(|o| o.inputs.len() as u64).sum();
        let bytes = outputs
            .iter()
            .flat_map(|o| &o.inputs)
            .map(|(e, _)| e.size)
            .sum();
        let mut report = finish(
            source_report(0, bytes, planned),
            dst,
            dest_format,
            &written_schema,
            rec,
            outputs.into_iter().map(|o| planned_report(&o)).collect(),
            started,
        );
        report.idle = idle;
        return Ok(report);
    }

    let state = Arc::new(opts.state_store()?);
    let run_id = run_id(src, dst, rec, opts);
    discard_uploads(&state, &run_id, sink.as_ref()).await?;
    let earlier = state.run_status(&run_id)?.is_some();
    if !opts.resume {
        state.forget_run(&run_id)?;
    }
    state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
    let checkpoints = state.files(&run_id)?;
    if earlier {
        // An earlier attempt may have been killed after starting an output's upload and
        // before recording it; no one else writes this run's outputs.
        let unfinished: Vec<String> = outputs
            .iter()
            .filter(|o| !checkpoints.get(&o.key).is_some_and(|c| c.done))
            .map(|o| o.key.clone())
            .collect();
        sink.discard_unrecorded(&unfinished).await?;
    }

    let total_bytes = outputs
        .iter()
        .flat_map(|o| &o.inputs)
        .map(|(e, _)| e.size)
        .sum();
    let total_files = outputs.iter().map(|o| o.inputs.len() as u64).sum();
    progress.planned(total_files, total_bytes);

    let job = Arc::new(Job {
        source,
        sink,
        handle,
        rec: rec.clone(),
        dest_format,
        input_schema: input_schema.clone(),
        output_schema: output_schema.clone(),
        part_size: opts.part_size as usize,
        concurrency: opts.concurrency,
        progress: progress.clone(),
        state: state.clone(),
        run_id: run_id.clone(),
    });
    // Each output holds a row group or more in memory while it encodes, so outputs in
    // flight are bounded by the cores that can encode them, not by --transfers.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parallel = opts.transfers.min(cores).max(1);
    let reports: Vec<OutputReport> = futures::stream::iter(outputs.into_iter().map(|output| {
        let job = job.clone();
        let state = state.clone();
        let run_id = run_id.clone();
        let done_before = checkpoints.get(&output.key).cloned();
        async move {
            let (size, version) = fingerprint(&output.inputs);
            if let Some(c) = done_before.filter(|c| {
                c.done && c.source_size == size && c.source_version.as_deref() == Some(&version)
            }) {
                if let Ok(Some(at)) = job.sink.head(&output.key).await {
                    if c.dest_version.is_none() || at.version == c.dest_version {
                        let mut report = planned_report(&output);
                        report.skipped = true;
                        report.bytes_written = at.size;
                        job.progress.advanced(size);
                        return report;
                    }
                }
            }
            let key = output.key.clone();
            let worker = {
                let job = job.clone();
                tokio::task::spawn_blocking(move || job.write_output(&output))
            };
            let outcome = worker.await.map_err(join_error).and_then(|r| r);
            record_output(
                &state,
                &run_id,
                key,
                size,
                &version,
                outcome,
                job.progress.as_ref(),
            )
            .await
        }
    }))
    .buffer_unordered(parallel)
    .collect()
    .await;

    let rows_read = reports.iter().map(|r| r.rows_read).sum();
    let bytes_read = reports.iter().map(|r| r.bytes_read).sum();
    let mut report = finish(
        source_report(rows_read, bytes_read, total_files),
        dst,
        dest_format,
        &written_schema,
        rec,
        reports,
        started,
    );
    report.idle = idle;
    state.finish_run(&run_id, run_outcome(report.failed))?;
    Ok(report)
}

/// The files of a dataset with their formats: every file for a single-file address, and
/// for a directory those that pass the filter and whose format is known.
/// Files a directory's reader leaves out, as Spark and Hive do: markers and side files
/// whose name starts with `_` or `.` (`_SUCCESS`, `.part-0.crc`).
pub fn is_marker(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with('_') || name.starts_with('.')
}

pub(crate) fn collect_inputs(
    src: &DataAddress,
    filter: &crate::KeyFilter,
    listing: ferry_core::Listing,
    rec: &RecordOptions,
) -> Result<Vec<(Entry, Format)>> {
    let single = listing.single_object;
    let mut inputs = Vec::new();
    for entry in listing.entries {
        if !single && (!filter.allows(&entry.key) || is_marker(&entry.key)) {
            continue;
        }
        let format = match rec.source_format.or_else(|| Format::from_name(&entry.key)) {
            Some(f) => f,
            None if single => {
                return Err(Error::invalid_option(
                    "source format",
                    format!(
                        "cannot tell the format of '{}' from its name; give it (--source-format csv|json|parquet|avro|orc)",
                        entry.key
                    ),
                ))
            }
            // A directory may hold other files (_SUCCESS, README); only formats are read.
            None => continue,
        };
        inputs.push((entry, format));
    }
    if inputs.is_empty() {
        return Err(Error::not_found(format!(
            "{src} (no files of a known format; give --source-format)"
        )));
    }
    Ok(inputs)
}

/// Opens one input as batches. Text formats are read with the dataset's schema; the
/// others must have its columns.
pub(crate) fn read_input(
    source: &Arc<dyn Source>,
    entry: &Entry,
    format: Format,
    rec: &RecordOptions,
    input_schema: &SchemaRef,
    handle: &Handle,
    progress: Option<Arc<dyn Progress>>,
) -> Result<ferry_formats::BatchReader> {
    let location = location(source, entry);
    let input = open_input(source, entry, handle, progress);
    let text_format = matches!(format, Format::Csv | Format::Json);
    let reader = open_reader(
        format,
        &rec.source_options,
        input,
        &location,
        text_format.then(|| input_schema.clone()),
    )?;
    if !text_format && !same_columns(&reader.schema(), input_schema) {
        return Err(Error::data(
            &location,
            format!(
                "its columns ({}) differ from the first file's ({})",
                columns(&reader.schema()),
                columns(input_schema)
            ),
        ));
    }
    Ok(reader)
}

/// The schema of the first input, read before any data moves.
pub(crate) async fn probe_schema(
    source: &Arc<dyn Source>,
    first: &Entry,
    format: Format,
    rec: &RecordOptions,
) -> Result<SchemaRef> {
    let (source, first, options, handle) = (
        source.clone(),
        first.clone(),
        rec.source_options.clone(),
        Handle::current(),
    );
    tokio::task::spawn_blocking(move || {
        let input = open_input(&source, &first, &handle, None);
        let reader = open_reader(format, &options, input, &location(&source, &first), None)?;
        Ok(reader.schema())
    })
    .await
    .map_err(join_error)?
}

pub(crate) fn finish(
    source: DatasetReport,
    dst: &DataAddress,
    dest_format: impl ToString,
    output_schema: &Schema,
    rec: &RecordOptions,
    mut outputs: Vec<OutputReport>,
    started: Instant,
) -> RecordReport {
    outputs.sort_by(|a, b| a.key.cmp(&b.key));
    let failed = outputs.iter().filter(|o| o.error.is_some()).count() as u64;
    let skipped = outputs.iter().filter(|o| o.skipped).count() as u64;
    let error = outputs.iter().find_map(|o| o.error.clone()).map(|first| {
        if failed > 1 {
            format!("{first} (and {} more failed outputs)", failed - 1)
        } else {
            first
        }
    });
    let duration_s = started.elapsed().as_secs_f64();
    let rows_written = outputs.iter().map(|o| o.rows_written).sum();
    RecordReport {
        status: if failed == 0 {
            Status::Succeeded
        } else {
            Status::Failed
        },
        rows_per_s: source.rows as f64 / duration_s.max(1e-9),
        source,
        destination: DatasetReport {
            events: None,
            address: dst.to_string(),
            format: dest_format.to_string(),
            files: outputs.len() as u64,
            rows: rows_written,
            bytes: outputs.iter().map(|o| o.bytes_written).sum(),
            schema: describe_schema(output_schema),
        },
        transformations: rec.transforms.iter().map(|t| t.label()).collect(),
        objects: outputs
            .iter()
            .filter(|o| o.error.is_none() && !o.skipped)
            .count() as u64,
        skipped,
        failed,
        duration_s,
        error,
        idle: None,
        held: 0,
        outputs,
    }
}

/// Checkpoints an output a worker finished (or reports why it failed).
pub(crate) async fn record_output(
    state: &StateStore,
    run_id: &str,
    key: String,
    size: u64,
    version: &str,
    outcome: Result<(OutputReport, Entry)>,
    progress: &dyn Progress,
) -> OutputReport {
    let (report, written) = match outcome {
        Ok(done) => done,
        Err(e) => return failed_report(key, e),
    };
    let recorded = state.file_done(
        run_id,
        &key,
        size,
        Some(version),
        None,
        written.version.as_deref(),
    );
    progress.file_finished(&key);
    match recorded {
        Ok(()) => {
            crate::failpoint::file_recorded().await;
            report
        }
        Err(e) => failed_report(key, e),
    }
}

/// Uploads an interrupted run left unfinished hold partial outputs: discard them.
pub(crate) async fn discard_uploads(
    state: &StateStore,
    run_id: &str,
    sink: &dyn Sink,
) -> Result<()> {
    for (key, checkpoint) in state.files(run_id)? {
        if let Some(upload) = checkpoint.upload.filter(|_| !checkpoint.done) {
            if let Err(e) = sink.abort_upload(&key, &upload.upload_id).await {
                tracing::warn!(%key, error = %e, "could not discard an unfinished output");
            }
            state.forget_file(run_id, &key)?;
        }
    }
    Ok(())
}

fn planned_report(output: &Output) -> OutputReport {
    OutputReport::planned(
        output.key.clone(),
        output.inputs.iter().map(|(e, _)| e.key.clone()).collect(),
    )
}

pub(crate) fn failed_report(key: String, error: Error) -> OutputReport {
    tracing::debug!(%key, %error, "output failed");
    OutputReport {
        key,
        inputs: Vec::new(),
        rows_read: 0,
        rows_written: 0,
        bytes_read: 0,
        bytes_written: 0,
        skipped: false,
        reason: None,
        error: Some(error.to_string()),
    }
}

/// The inputs' total size and a digest of their names and versions: what the checkpoint
/// compares to decide that an output made earlier is still current.
pub(crate) fn fingerprint(inputs: &[(Entry, Format)]) -> (u64, String) {
    let mut text = String::new();
    let mut size = 0;
    for (e, _) in inputs {
        size += e.size;
        text.push_str(&format!("{}\t{}\t{:?}\n", e.key, e.size, e.version));
    }
    (size, ChecksumAlgo::Xxh3.digest(text.as_bytes()).hex())
}

/// An address as a run id takes it: a local path made absolute, so the same command run
/// from another directory finds the same checkpoint.
pub(crate) fn canonical(a: &DataAddress) -> String {
    match a {
        DataAddress::Local { path } => std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .to_string_lossy()
            .into_owned(),
        other => other.to_string(),
    }
}

/// The same request (and partition) always has the same run id, so re-running it finds its
/// checkpoint.
pub(crate) fn run_id(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
) -> String {
    let spec = serde_json::to_string(rec).unwrap_or_default();
    let text = format!(
        "records\n{}\n{}\n{spec}{}",
        canonical(src),
        canonical(dst),
        opts.run_id_suffix()
    );
    ChecksumAlgo::Xxh3.digest(text.as_bytes()).hex()
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("a worker stopped: {e}"))
}

pub(crate) fn location(source: &Arc<dyn Source>, entry: &Entry) -> String {
    let base = source.address();
    if entry.key.is_empty() || base.path_text().ends_with(&entry.key) {
        base.to_string()
    } else {
        base.join(&entry.key).to_string()
    }
}

/// A local file is read directly; anything else in ranged requests.
pub(crate) fn open_input(
    source: &Arc<dyn Source>,
    entry: &Entry,
    handle: &Handle,
    progress: Option<Arc<dyn Progress>>,
) -> Input {
    let access: Box<dyn RandomAccess> = match source
        .local_path(entry)
        .and_then(|p| FileAccess::open(&p).ok())
    {
        Some(file) => Box::new(file),
        None => Box::new(SourceAccess {
            source: source.clone(),
            entry: entry.clone(),
            handle: handle.clone(),
        }),
    };
    Input::new(Counted { access, progress })
}

struct SourceAccess {
    source: Arc<dyn Source>,
    entry: Entry,
    handle: Handle,
}

impl RandomAccess for SourceAccess {
    fn len(&self) -> u64 {
        self.entry.size
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = (offset + len as u64).min(self.entry.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        self.handle
            .block_on(self.source.read(&self.entry, offset..end))
            .map_err(io::Error::other)
    }

    fn block_size(&self) -> usize {
        8 << 20
    }

    fn cached_blocks(&self) -> usize {
        8
    }
}

/// Reports bytes read to the progress display.
struct Counted {
    access: Box<dyn RandomAccess>,
    progress: Option<Arc<dyn Progress>>,
}

impl RandomAccess for Counted {
    fn len(&self) -> u64 {
        self.access.len()
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let bytes = self.access.read_at(offset, len)?;
        if let Some(progress) = &self.progress {
            progress.advanced(bytes.len() as u64);
        }
        Ok(bytes)
    }

    fn block_size(&self) -> usize {
        self.access.block_size()
    }

    fn cached_blocks(&self) -> usize {
        self.access.cached_blocks()
    }
}

impl Job {
    /// Produces one output file (blocking; runs on its own thread).
    fn write_output(&self, output: &Output) -> Result<(OutputReport, Entry)> {
        let dest_location = if output.key.is_empty() {
            self.sink.address().to_string()
        } else {
            self.sink.address().join(&output.key).to_string()
        };
        let on_start: OnStart = {
            let (state, run_id, key) =
                (self.state.clone(), self.run_id.clone(), output.key.clone());
            let (size, version) = fingerprint(&output.inputs);
            let part_size = self.part_size as u64;
            Box::new(move |upload_id| {
                state.begin_upload(&run_id, &key, size, Some(&version), upload_id, part_size)
            })
        };
        let upload = UploadWriter::new(
            self.sink.clone(),
            &output.key,
            self.handle.clone(),
            self.part_size,
            self.concurrency,
            Some(on_start),
        );
        let mut writer = open_writer(
            self.dest_format,
            &self.rec.dest_options,
            self.output_schema.clone(),
            Box::new(upload.clone()),
            &dest_location,
        )?;
        let mut chain = Chain::bind(&self.rec.transforms, self.input_schema.clone())?;
        let mut report = planned_report(output);
        for (entry, format) in &output.inputs {
            let reader = read_input(
                &self.source,
                entry,
                *format,
                &self.rec,
                &self.input_schema,
                &self.handle,
                Some(self.progress.clone()),
            )?;
            // Decoding on one thread, transforming and encoding on this one.
            let (tx, rx) = sync_channel(2);
            let read_result = std::thread::scope(|scope| -> Result<()> {
                let producer = scope.spawn(move || {
                    for batch in reader {
                        let stop = batch.is_err();
                        if tx.send(batch).is_err() || stop {
                            break;
                        }
                    }
                });
                let result = (|| {
                    for batch in rx.iter() {
                        let batch = batch?;
                        report.rows_read += batch.num_rows() as u64;
                        let batch = chain.apply(batch)?;
                        if batch.num_rows() > 0 {
                            report.rows_written += batch.num_rows() as u64;
                            writer.write(&batch).map_err(|e| upload.error_or(e))?;
                            crate::failpoint::batch_written();
                        }
                    }
                    Ok(())
                })();
                drop(rx);
                let _ = producer.join();
                result
            });
            read_result?;
        }
        writer.finish().map_err(|e| upload.error_or(e))?;
        let written = upload.commit()?;
        // Footer-indexed formats read some ranges twice; report what the inputs hold.
        report.bytes_read = output.inputs.iter().map(|(e, _)| e.size).sum();
        report.bytes_written = written.size;
        Ok((report, written))
    }
}

fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

fn columns(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}
