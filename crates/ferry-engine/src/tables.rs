//! Transfers where one end, or both, is a database table.
//!
//! A table is read in partitions, one connection each, all in one snapshot; files are read
//! one after another. Batches go through the transformations, then either into files (one
//! per partition when the destination is a directory, so a killed run resumes from its
//! completed partitions) or into a table load: several streams into a staging table,
//! made the table's in one step at the end. The database behind either end is any that
//! `ferry_connectors::tables` speaks to.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferry_connectors::kafka::rows::TopicScan;
use ferry_connectors::{
    open_sink, open_source, open_table, prepare_load, Selection, TableLoad, TableScan, TargetState,
};
use ferry_core::{
    ChecksumAlgo, DataAddress, Entry, KafkaAddress, Result, Sink, Source, TableAddress,
};
use ferry_core::{TransformSpec, WriteMode};
use ferry_formats::{describe_schema, open_writer, written_schema, Format};
use ferry_state::StateStore;
use ferry_transforms::Chain;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Mutex};

use crate::partition::{self, Share};
use crate::records::{
    collect_inputs, discard_uploads, fingerprint, finish, join_error, probe_schema, read_input,
    record_output, run_id, DatasetReport, OutputReport, RecordOptions, RecordReport,
};
use crate::report::{run_outcome, Progress};
use crate::topics::TopicRun;
use crate::upload::{OnStart, UploadWriter};
use crate::{CopyOptions, KeyFilter};

/// Rows per batch read from a table (fewer when rows are wide: the decoder caps bytes).
const BATCH_ROWS: usize = 32_768;
/// The checkpoint key of a table destination.
const TABLE_KEY: &str = "";
/// Recorded before a load commits (with the rows staged in place of a part size): on a
/// re-run, a missing staging table means it did.
const COMMITTING: &str = "committing";

/// What a committed load left, kept as the checkpoint's destination version: a re-run
/// skips the load only while the table is the same one and still holds those rows.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Loaded {
    /// The table's identity right after the commit ([`TargetState::identity`]).
    identity: String,
    /// The rows the load left in the table.
    rows: u64,
    /// When it committed (RFC 3339).
    at: String,
}

impl Loaded {
    /// Reads what a load recorded; `None` for a checkpoint written before ferry kept it.
    fn recorded(dest_version: Option<&str>) -> Option<Loaded> {
        serde_json::from_str(dest_version?).ok()
    }

    /// Why the load counts as still done (`Ok`) or must run again (`Err`), given the
    /// table as it is now.
    fn still_held(
        this: Option<&Loaded>,
        table: &str,
        now: Option<&TargetState>,
    ) -> std::result::Result<String, String> {
        let Some(now) = now else {
            return Err(format!("table {table} no longer exists"));
        };
        let Some(this) = this else {
            return Ok(format!("table {table} was loaded by an earlier run"));
        };
        if now.identity != this.identity {
            return Err(format!(
                "table {table} was truncated or recreated since the load at {}",
                this.at
            ));
        }
        let rows = now.rows.unwrap_or_default();
        if rows < this.rows {
            return Err(format!(
                "table {table} holds {} rows, fewer than the {} loaded at {}",
                thousands(rows),
                thousands(this.rows),
                this.at
            ));
        }
        Ok(format!(
            "table {table} still holds the {} rows loaded at {}",
            thousands(this.rows),
            this.at
        ))
    }
}

/// `6001215` → `6,001,215`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table's name for messages: `public.t` rather than `"public"."t"`.
fn shown(load: &dyn TableLoad) -> String {
    load.target().replace(['"', '`'], "")
}

/// Where the rows come from.
enum Origin {
    Table {
        scan: Arc<dyn TableScan>,
    },
    Files {
        source: Arc<dyn Source>,
        inputs: Vec<(Entry, Format)>,
        format: Format,
    },
}

/// What is read, and what the rows look like on the way.
struct Plan {
    origin: Origin,
    /// The whole source's schema, as reported.
    source_schema: SchemaRef,
    /// What the origin yields (after columns pushed into the query are left out).
    input_schema: SchemaRef,
    /// The transformations ferry applies (those the database runs are taken out).
    transforms: Vec<TransformSpec>,
    output_schema: SchemaRef,
    /// Bytes the source holds, for progress.
    bytes: u64,
    /// The units (table ranges or files) this process reads: all of them, or its
    /// partition's share.
    share: Share<usize>,
    /// When the rows come from a topic: its offsets, and each unit's output name.
    topic: Option<TopicPlan>,
}

/// A topic read as rows (its scan is the plan's origin).
struct TopicPlan {
    run: Option<TopicRun>,
    /// Per unit: `topic=orders/partition=0003/00000000000000001200`, the topic, partition
    /// and first offset (with `pathFormat`, its directory after the topic's).
    names: Vec<String>,
    /// `kafka (json)`.
    label: String,
    /// Events and bytes (keys and values) read so far.
    read: Arc<(AtomicU64, AtomicU64)>,
    /// Where readers stopped short of their ranges' ends.
    stopped: Arc<std::sync::Mutex<std::collections::BTreeMap<i32, i64>>>,
}

/// Runs a transfer from or to a table.
pub(crate) async fn transfer(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<RecordReport> {
    opts.validate()?;
    if let DataAddress::Table(table) = dst {
        opts.check_destination_mode(table.mode)?;
    }
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parallel = opts.transfers.min(cores).max(1);
    if let DataAddress::Kafka(address) = src {
        return from_topic(address, src, dst, rec, opts, progress, started, parallel).await;
    }
    let plan = plan(src, dst, rec, opts, parallel, progress.clone(), None).await?;
    transfer_planned(src, dst, plan, rec, opts, progress, started, parallel).await
}

/// A topic's rows: one run over what arrived since the last, or into a directory whose
/// files are cut ([`crate::topics::FileRolling`]), runs one after the other until the
/// first one's ends, as one report.
#[allow(clippy::too_many_arguments)]
async fn from_topic(
    address: &KafkaAddress,
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    started: Instant,
    parallel: usize,
) -> Result<RecordReport> {
    let mut until: Option<std::collections::BTreeMap<i32, i64>> = None;
    let mut total: Option<RecordReport> = None;
    loop {
        let cap = until.as_ref();
        let plan = plan_topic(address, src, dst, rec, opts, progress.clone(), cap).await?;
        let (report, run, more) = topic_run(
            src,
            dst,
            plan,
            rec,
            opts,
            progress.clone(),
            started,
            parallel,
        )
        .await?;
        let moved = report.idle.is_none();
        let report = match total.take() {
            Some(mut before) if !moved => {
                before.held = report.held;
                before
            }
            Some(before) => before.and_then(report, started),
            None => report,
        };
        if report.status != crate::report::Status::Succeeded || !more || opts.dry_run {
            return Ok(report);
        }
        if until.is_none() && !run.is_empty() {
            until = Some(run);
        }
        total = Some(report);
    }
}

/// One run of a topic's rows; also the ends it planned before cutting (empty for a run
/// that resumed an interrupted one), and whether a partition stopped short of them with
/// something read (a file cut, a new field), for another run to go on.
#[allow(clippy::too_many_arguments)]
async fn topic_run(
    src: &DataAddress,
    dst: &DataAddress,
    mut plan: Plan,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    started: Instant,
    parallel: usize,
) -> Result<(RecordReport, std::collections::BTreeMap<i32, i64>, bool)> {
    if let Some((run, stopped)) = plan
        .topic
        .as_mut()
        .and_then(|t| Some((t.run.take()?, t.stopped.clone())))
    {
        let state = opts.state_store()?;
        let until = run.until();
        if run.is_empty() {
            // Nothing arrived since the last run: the destination is left as it is.
            if !opts.dry_run {
                run.finished(&state, &Default::default())?;
            }
            let dest_format = match dst {
                DataAddress::Table(_) => "table".to_string(),
                _ => rec
                    .dest_format
                    .or_else(|| Format::from_name(&dst.path_text()))
                    .unwrap_or(Format::Parquet)
                    .to_string(),
            };
            let mut report = finish(
                plan.source_report(src, 0),
                dst,
                dest_format,
                &plan.output_schema,
                rec,
                Vec::new(),
                started,
            );
            report.idle = Some(match run.held {
                0 => "no events since the last run".into(),
                n => format!("{n} events wait in files still open"),
            });
            report.held = run.held;
            return Ok((report, until, false));
        }
        progress.events_planned(run.events());
        // What the destination refuses (a column it lacks) is said with where the run read.
        let read_from = run.read_from(src);
        let mut report = transfer_planned(src, dst, plan, rec, opts, progress, started, parallel)
            .await
            .map_err(|e| match e {
                ferry_core::Error::Data { location, detail } if location == dst.to_string() => {
                    ferry_core::Error::Data {
                        location,
                        detail: format!("{detail} ({read_from})"),
                    }
                }
                other => other,
            })?;
        let stopped = stopped.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if report.status == crate::report::Status::Succeeded && !opts.dry_run {
            run.finished(&state, &stopped)?;
        }
        report.held = run.held;
        let more = run.more(&stopped);
        return Ok((report, until, more));
    }
    Err(ferry_core::Error::Internal(
        "a topic's plan without its offsets".into(),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn transfer_planned(
    src: &DataAddress,
    dst: &DataAddress,
    plan: Plan,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    started: Instant,
    parallel: usize,
) -> Result<RecordReport> {
    match dst {
        DataAddress::Kafka(topic) => {
            to_topic(
                src, dst, topic, plan, rec, opts, progress, started, parallel,
            )
            .await
        }
        DataAddress::Table(table) => {
            to_table(
                src, dst, table, plan, rec, opts, progress, started, parallel,
            )
            .await
        }
        _ => to_files(src, dst, plan, rec, opts, progress, started, parallel).await,
    }
}

async fn plan(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    parallel: usize,
    progress: Arc<dyn Progress>,
    until: Option<&std::collections::BTreeMap<i32, i64>>,
) -> Result<Plan> {
    if let DataAddress::Kafka(address) = src {
        return plan_topic(address, src, dst, rec, opts, progress, until).await;
    }
    if let DataAddress::Table(address) = src {
        let table = open_table(address).await?;
        let source_schema = table.schema();
        let pushed = ferry_transforms::pushdown(&rec.transforms, &source_schema)?;
        let selection = Selection {
            columns: pushed.columns,
            filter: (!pushed.filters.is_empty()).then(|| pushed.filters.join(" AND ")),
        };
        // Partitions must plan the same ranges, so their plan cannot depend on the cores
        // each one has: it depends on the flags, which they share.
        let planned = match opts.partition {
            Some(p) => opts.transfers.max(1) * p.count as usize,
            None => parallel,
        };
        let scan = table.scan(&selection, planned).await?;
        let input_schema = scan.schema();
        let transforms = rec.transforms[pushed.consumed..].to_vec();
        let output_schema = Chain::bind(&transforms, input_schema.clone())?.output_schema();
        return Ok(Plan {
            share: partition::units(opts.partition, scan.partitions().len()),
            origin: Origin::Table { scan: scan.into() },
            source_schema,
            input_schema,
            transforms,
            output_schema,
            bytes: table.estimated_bytes(),
            topic: None,
        });
    }
    let filter = KeyFilter::new(&opts.include, &opts.exclude)?;
    let source = open_source(src)?;
    let inputs = collect_inputs(src, &filter, source.list().await?, rec)?;
    let (first, format) = inputs[0].clone();
    let input_schema = probe_schema(&source, &first, format, rec).await?;
    let output_schema = Chain::bind(&rec.transforms, input_schema.clone())?.output_schema();
    let share = partition::files(opts.partition, (0..inputs.len()).collect(), |&i| {
        inputs[i].0.key.as_str()
    });
    Ok(Plan {
        bytes: inputs.iter().map(|(e, _)| e.size).sum(),
        share,
        origin: Origin::Files {
            source,
            inputs,
            format,
        },
        source_schema: input_schema.clone(),
        input_schema,
        transforms: rec.transforms.clone(),
        output_schema,
        topic: None,
    })
}

/// A topic's partitions as units, over the offsets this run reads.
async fn plan_topic(
    address: &KafkaAddress,
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    until: Option<&std::collections::BTreeMap<i32, i64>>,
) -> Result<Plan> {
    if opts.partition.is_some() {
        return Err(ferry_core::Error::invalid_option(
            "--partition",
            "a topic is read by one process; select its partitions with ?partitions=0,1 instead",
        ));
    }
    let names_file = !dst.names_a_directory() && Format::from_name(&dst.path_text()).is_some();
    // A snapshot is of the whole topic from startOffset, every time.
    let incremental = crate::topics::incremental(dst, names_file) && !address.snapshot;
    let declared = match &rec.source_options.schema {
        Some(columns) => Some(ferry_formats::declared_schema(columns)?),
        None => None,
    };
    let infer_rows = rec.source_options.infer_rows.unwrap_or(1000);
    let offsets = crate::topics::offsets_id(address, dst);
    let state = opts.state_store()?;
    let (owned, resume, dry_run) = (address.clone(), opts.resume, opts.dry_run);
    // Into an upsert table, the events are changes: a key's last one counts, and a
    // tombstone deletes its row.
    let changes = match dst {
        DataAddress::Table(t) if t.mode == WriteMode::Upsert => Some(t.key_columns.clone()),
        _ => None,
    };
    let read = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let counted = read.clone();
    let shown = (src.to_string(), dst.to_string());
    // Only files in a directory are cut.
    let rolling = match incremental && !matches!(dst, DataAddress::Table(_)) {
        true => rec.rolling.clone(),
        false => Default::default(),
    };
    let until = until.cloned();
    let (run, scan, times) = tokio::task::spawn_blocking(move || -> Result<_> {
        // A dry run plans without recording anything.
        let record = (!dry_run).then_some((shown.0.as_str(), shown.1.as_str()));
        let run = crate::topics::plan(
            &owned,
            &state,
            offsets,
            resume,
            incremental,
            record,
            &rolling,
            until.as_ref(),
        )?;
        let mut scan = TopicScan::open(&owned, run.ranges.clone(), declared, infer_rows)?;
        if let Some(keys) = changes {
            scan = scan.as_changes(&keys);
        }
        let times = match rolling.path_format {
            Some(_) => crate::topics::first_times(&owned, scan.ranges(), &run.first_times)?,
            None => Default::default(),
        };
        let scan = scan.with_rolling(rolling.boundaries());
        let scan = scan.with_progress(Arc::new(move |events, bytes| {
            counted.0.fetch_add(events, Ordering::Relaxed);
            counted.1.fetch_add(bytes, Ordering::Relaxed);
            progress.events_done(events);
        }));
        Ok((run, scan, times))
    })
    .await
    .map_err(join_error)??;
    // Under `pathFormat`, a file goes in the directory of its first event's record time.
    let names = scan
        .ranges()
        .iter()
        .map(|r| {
            let name = format!("partition={:04}/{:020}", r.partition, r.start);
            let topic = format!("topic={}", address.topic);
            match times
                .get(&r.partition)
                .and_then(|t| rec.rolling.directory(*t))
            {
                Some(dir) if !dir.is_empty() => format!("{topic}/{dir}/{name}"),
                _ => format!("{topic}/{name}"),
            }
        })
        .collect();
    let label = format!("kafka ({})", address.value_format.name());
    let input_schema = scan.schema();
    let output_schema = Chain::bind(&rec.transforms, input_schema.clone())?.output_schema();
    let stopped = scan.stopped();
    Ok(Plan {
        share: partition::units(None, scan.partitions().len()),
        origin: Origin::Table {
            scan: Arc::new(scan),
        },
        source_schema: input_schema.clone(),
        input_schema,
        transforms: rec.transforms.clone(),
        output_schema,
        bytes: 0,
        topic: Some(TopicPlan {
            run: Some(run),
            names,
            label,
            read,
            stopped,
        }),
    })
}

impl Plan {
    /// How many units the origin has: table ranges or files, whichever partition reads them.
    fn units(&self) -> usize {
        match &self.origin {
            Origin::Table { scan } => scan.partitions().len(),
            Origin::Files { inputs, .. } => inputs.len(),
        }
    }

    fn unit_names(&self, units: &[usize]) -> Vec<String> {
        units
            .iter()
            .map(|&i| match &self.origin {
                Origin::Table { scan } => scan.partitions()[i].key.clone(),
                Origin::Files { inputs, .. } => inputs[i].0.key.clone(),
            })
            .collect()
    }

    fn format_name(&self) -> String {
        if let Some(t) = &self.topic {
            return t.label.clone();
        }
        match &self.origin {
            Origin::Table { .. } => "table".into(),
            Origin::Files { format, .. } => format.to_string(),
        }
    }

    /// What a checkpoint compares to tell that `units` are the same work as before.
    fn fingerprint(&self, units: &[usize]) -> (u64, String) {
        match &self.origin {
            Origin::Table { scan } => {
                let text: Vec<String> = units.iter().map(|&i| scan.query(i)).collect();
                let digest = ChecksumAlgo::Xxh3.digest(text.join("\n").as_bytes());
                (0, digest.hex())
            }
            Origin::Files { inputs, .. } => {
                let chosen: Vec<_> = units.iter().map(|&i| inputs[i].clone()).collect();
                fingerprint(&chosen)
            }
        }
    }

    /// Starts reading `units` into a channel, up to `parallel` table partitions at once.
    fn feed(
        &self,
        units: Vec<usize>,
        parallel: usize,
        rec: &RecordOptions,
        progress: Arc<dyn Progress>,
    ) -> mpsc::Receiver<Result<RecordBatch>> {
        let (tx, rx) = mpsc::channel(2 * parallel.max(1));
        match &self.origin {
            Origin::Table { scan } => {
                let scan = scan.clone();
                // A topic's batches are the formats' size (8,192 rows): each partition
                // reader holds its batches besides librdkafka's prefetch.
                let default = match self.topic {
                    Some(_) => ferry_formats::FormatOptions::DEFAULT_BATCH_SIZE,
                    None => BATCH_ROWS,
                };
                let batch_rows = rec.source_options.batch_size.unwrap_or(default);
                tokio::spawn(async move {
                    futures::stream::iter(units)
                        .for_each_concurrent(parallel, |i| {
                            let (tx, progress) = (tx.clone(), progress.clone());
                            let mut partition = scan.read(i, batch_rows);
                            async move {
                                while let Some(batch) = partition.recv().await {
                                    if let Ok(b) = &batch {
                                        progress.advanced(b.get_array_memory_size() as u64);
                                    }
                                    let stop = batch.is_err();
                                    if tx.send(batch).await.is_err() || stop {
                                        break;
                                    }
                                }
                            }
                        })
                        .await;
                });
            }
            Origin::Files { source, inputs, .. } => {
                let chosen: Vec<_> = units.iter().map(|&i| inputs[i].clone()).collect();
                let (source, rec, schema) =
                    (source.clone(), rec.clone(), self.input_schema.clone());
                let handle = Handle::current();
                tokio::task::spawn_blocking(move || {
                    for (entry, format) in chosen {
                        let reader = read_input(
                            &source,
                            &entry,
                            format,
                            &rec,
                            &schema,
                            &handle,
                            Some(progress.clone()),
                        );
                        let reader = match reader {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e));
                                return;
                            }
                        };
                        for batch in reader {
                            let stop = batch.is_err();
                            if tx.blocking_send(batch).is_err() || stop {
                                return;
                            }
                        }
                    }
                });
            }
        }
        rx
    }

    fn source_report(&self, src: &DataAddress, rows: u64) -> DatasetReport {
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        DatasetReport {
            address: src.to_string(),
            format: self.format_name(),
            files: self.share.items.len() as u64,
            rows,
            bytes: self.topic.as_ref().map_or(self.bytes, |t| read(&t.read.1)),
            events: self.topic.as_ref().map(|t| read(&t.read.0)),
            schema: describe_schema(&self.source_schema),
        }
    }
}

/// A table into files: one file per partition in a directory, or all into one file.
#[allow(clippy::too_many_arguments)]
async fn to_files(
    src: &DataAddress,
    dst: &DataAddress,
    plan: Plan,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    started: Instant,
    parallel: usize,
) -> Result<RecordReport> {
    let sink = open_sink(dst)?;
    let dst_path = dst.path_text();
    let names_file = !dst.names_a_directory()
        && Format::from_name(&dst_path).is_some()
        && !sink.is_directory().await?;
    let dest_format = rec
        .dest_format
        .or_else(|| Format::from_name(&dst_path).filter(|_| names_file))
        .unwrap_or(Format::Parquet);
    let location = dst.to_string();
    let written = written_schema(
        dest_format,
        &rec.dest_options,
        &plan.output_schema,
        &location,
    )?;
    open_writer(
        dest_format,
        &rec.dest_options,
        plan.output_schema.clone(),
        Box::new(io::sink()),
        &location,
    )?;
    let (outputs, idle): (Vec<(String, Vec<usize>)>, _) = if names_file {
        let one = vec![(String::new(), (0..plan.units()).collect())];
        let share = partition::whole(opts.partition, one, "the destination is one file");
        (share.items, share.idle)
    } else {
        // Partitions write side by side: their names must differ even if their plans did.
        let name = |i: usize| match (&plan.topic, opts.partition) {
            (Some(t), _) => t.names[i].clone(),
            (None, Some(p)) => format!("partition-{}-part-{i:05}", p.index),
            (None, None) => format!("part-{i:05}"),
        };
        let each = plan
            .share
            .items
            .iter()
            .map(|&i| Ok((rec.dest_options.file_name(dest_format, &name(i))?, vec![i])))
            .collect::<Result<Vec<_>>>()?;
        (each, plan.share.idle.clone())
    };
    let outputs: Vec<(String, Vec<usize>, OutputReport)> = outputs
        .into_iter()
        .map(|(key, units)| {
            let report = OutputReport::planned(key.clone(), plan.unit_names(&units));
            (key, units, report)
        })
        .collect();
    if opts.dry_run {
        let reports = outputs.into_iter().map(|(_, _, r)| r).collect();
        let mut report = finish(
            plan.source_report(src, 0),
            dst,
            dest_format,
            &written,
            rec,
            reports,
            started,
        );
        report.idle = idle;
        return Ok(report);
    }

    let state = Arc::new(opts.state_store()?);
    let run_id = run_id(src, dst, rec, opts);
    // Partitions done by an interrupted run are kept; after a run that finished, a new
    // one reads the table afresh.
    discard_uploads(&state, &run_id, sink.as_ref()).await?;
    if !opts.resume || state.run_status(&run_id)?.as_deref() == Some(run_outcome(0)) {
        state.forget_run(&run_id)?;
    }
    state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
    let checkpoints = state.files(&run_id)?;
    progress.planned(outputs.len() as u64, plan.bytes);

    // A directory gets its partitions side by side; one file gets them all at once.
    let (outer, inner) = if names_file {
        (1, parallel)
    } else {
        (parallel, 1)
    };
    let job = Arc::new(FileJob {
        sink,
        plan,
        rec: rec.clone(),
        dest_format,
        state: state.clone(),
        run_id: run_id.clone(),
        part_size: opts.part_size as usize,
        concurrency: opts.concurrency,
        progress: progress.clone(),
    });
    let reports: Vec<OutputReport> =
        futures::stream::iter(outputs.into_iter().map(|(key, units, planned)| {
            let job = job.clone();
            let done_before = checkpoints.get(&key).cloned();
            async move {
                let (_, version) = job.plan.fingerprint(&units);
                let done = done_before
                    .filter(|c| c.done && c.source_version.as_deref() == Some(version.as_str()));
                if done.is_some() {
                    if let Ok(Some(at)) = job.sink.head(&key).await {
                        return OutputReport {
                            skipped: true,
                            bytes_written: at.size,
                            ..planned
                        };
                    }
                }
                let rx = job.plan.feed(units, inner, &job.rec, job.progress.clone());
                let worker = {
                    let (job, key, version) = (job.clone(), key.clone(), version.clone());
                    let handle = Handle::current();
                    tokio::task::spawn_blocking(move || {
                        job.write(&key, &version, rx, handle, planned)
                    })
                };
                let outcome = worker.await.map_err(join_error).and_then(|r| r);
                let progress = job.progress.as_ref();
                record_output(&job.state, &job.run_id, key, 0, &version, outcome, progress).await
            }
        }))
        .buffer_unordered(outer)
        .collect()
        .await;

    let rows = reports.iter().map(|r| r.rows_read).sum();
    let mut report = finish(
        job.plan.source_report(src, rows),
        dst,
        dest_format,
        &written,
        rec,
        reports,
        started,
    );
    report.idle = idle;
    state.finish_run(&run_id, run_outcome(report.failed))?;
    Ok(report)
}

/// What the file writers share.
struct FileJob {
    sink: Arc<dyn Sink>,
    plan: Plan,
    rec: RecordOptions,
    dest_format: Format,
    state: Arc<StateStore>,
    run_id: String,
    part_size: usize,
    concurrency: usize,
    progress: Arc<dyn Progress>,
}

impl FileJob {
    /// Writes one output from the batches of `rx` (blocking; runs on its own thread).
    fn write(
        &self,
        key: &str,
        version: &str,
        mut rx: mpsc::Receiver<Result<RecordBatch>>,
        handle: Handle,
        mut report: OutputReport,
    ) -> Result<(OutputReport, Entry)> {
        let on_start: OnStart = {
            let (state, run_id, key, version) = (
                self.state.clone(),
                self.run_id.clone(),
                key.to_string(),
                version.to_string(),
            );
            let part_size = self.part_size as u64;
            Box::new(move |upload_id| {
                state.begin_upload(&run_id, &key, 0, Some(&version), upload_id, part_size)
            })
        };
        let upload = UploadWriter::new(
            self.sink.clone(),
            key,
            handle,
            self.part_size,
            self.concurrency,
            Some(on_start),
        );
        let location = if key.is_empty() {
            self.sink.address().to_string()
        } else {
            self.sink.address().join(key).to_string()
        };
        let mut writer = open_writer(
            self.dest_format,
            &self.rec.dest_options,
            self.plan.output_schema.clone(),
            Box::new(upload.clone()),
            &location,
        )?;
        let mut chain = Chain::bind(&self.plan.transforms, self.plan.input_schema.clone())?;
        while let Some(batch) = rx.blocking_recv() {
            let batch = batch?;
            report.rows_read += batch.num_rows() as u64;
            let batch = chain.apply(batch)?;
            if batch.num_rows() > 0 {
                report.rows_written += batch.num_rows() as u64;
                writer.write(&batch).map_err(|e| upload.error_or(e))?;
                crate::failpoint::batch_written();
            }
        }
        writer.finish().map_err(|e| upload.error_or(e))?;
        let written = upload.commit()?;
        report.bytes_written = written.size;
        Ok((report, written))
    }
}

/// Files or a table into a table: `parallel` COPY streams into a staging table, then one
/// committing transaction.
#[allow(clippy::too_many_arguments)]
async fn to_table(
    src: &DataAddress,
    dst: &DataAddress,
    table: &TableAddress,
    plan: Plan,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    started: Instant,
    parallel: usize,
) -> Result<RecordReport> {
    let run_id = run_id(src, dst, rec, opts);
    let units = plan.share.items.clone();
    let mut report = OutputReport::planned(TABLE_KEY.to_string(), plan.unit_names(&units));
    let done = |plan: &Plan, report: OutputReport| {
        let rows = report.rows_read;
        let mut done = finish(
            plan.source_report(src, rows),
            dst,
            "table",
            &plan.output_schema,
            rec,
            vec![report],
            started,
        );
        done.idle = plan.share.idle.clone();
        done
    };
    // A partition with nothing to read leaves the table alone (not even creating it).
    if plan.share.idle.is_some() {
        return Ok(done(&plan, report));
    }
    let mut load = prepare_load(table, plan.output_schema.clone(), &run_id).await?;
    let parallel = parallel.min(load.max_writers()).max(1);
    if opts.dry_run {
        return Ok(done(&plan, report));
    }

    let state = opts.state_store()?;
    let (size, version) = plan.fingerprint(&units);
    let previous = state
        .files(&run_id)?
        .remove(TABLE_KEY)
        .filter(|c| opts.resume && c.source_version.as_deref() == Some(version.as_str()));
    let from_files = matches!(plan.origin, Origin::Files { .. });
    if let Some(previous) = &previous {
        // The same files were loaded already, and the table still holds them; a table
        // source is read afresh each run.
        if previous.done && from_files {
            let recorded = Loaded::recorded(previous.dest_version.as_deref());
            let now = load.target_state(true).await?;
            match Loaded::still_held(recorded.as_ref(), &shown(load.as_ref()), now.as_ref()) {
                Ok(reason) => {
                    report.skipped = true;
                    report.reason = Some(reason);
                    return Ok(done(&plan, report));
                }
                Err(reason) => {
                    tracing::info!(%reason, "loading again");
                    report.reason = Some(format!("loaded again: {reason}"));
                }
            }
        }
        // Killed while committing: the staging table is gone exactly when the commit was.
        let committing = previous
            .upload
            .as_ref()
            .filter(|u| u.upload_id == COMMITTING);
        if let (Some(committing), false) = (committing, previous.done) {
            if load.staging_exists().await? {
                load.commit().await?;
            }
            let upsert = table.mode == WriteMode::Upsert;
            let loaded = record_loaded(load.as_ref(), committing.part_size, upsert).await?;
            state.file_done(
                &run_id,
                TABLE_KEY,
                size,
                Some(&version),
                None,
                Some(&loaded),
            )?;
            state.finish_run(&run_id, run_outcome(0))?;
            report.skipped = true;
            return Ok(done(&plan, report));
        }
    }
    state.forget_run(&run_id)?;
    state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
    progress.planned(1, plan.bytes);

    load.create_staging().await?;
    let load: Arc<dyn TableLoad> = load.into();
    let plan = Arc::new(plan);
    let rx = Arc::new(Mutex::new(plan.feed(
        units,
        parallel,
        rec,
        progress.clone(),
    )));
    let writers: Vec<_> = (0..parallel)
        .map(|_| {
            let (load, plan, rx) = (load.clone(), plan.clone(), rx.clone());
            let handle = Handle::current();
            tokio::task::spawn_blocking(move || {
                let result = stream_rows(load.as_ref(), &plan, &rx, &handle);
                if result.is_err() {
                    // Stop the readers and the other streams: the load has failed.
                    handle.block_on(async { rx.lock().await.close() });
                }
                result
            })
        })
        .collect();
    let mut failure = None;
    for writer in writers {
        match writer.await.map_err(join_error).and_then(|r| r) {
            Ok((read, written)) => {
                report.rows_read += read;
                report.rows_written += written;
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let outcome = match failure {
        Some(e) => Err(e),
        None => {
            let staged = Staged {
                size,
                version: &version,
                rows: report.rows_written,
                upsert: table.mode == WriteMode::Upsert,
            };
            commit_or_add(&state, &run_id, load.as_ref(), table, &plan, staged).await
        }
    };
    if let Err(e) = outcome {
        if let Err(d) = load.discard().await {
            tracing::warn!(error = %d, "could not drop the staging table");
        }
        report.error = Some(e.to_string());
        report.rows_written = 0;
        state.finish_run(&run_id, run_outcome(1))?;
        return Ok(done(&plan, report));
    }
    progress.file_finished(TABLE_KEY);
    state.finish_run(&run_id, run_outcome(0))?;
    Ok(done(&plan, report))
}

/// The checkpoint key of a topic destination.
const TOPIC_KEY: &str = "topic";

/// Rows into a topic: the origin's readers feed one producer. A finished run of the same
/// files is skipped; a run killed midway sends every row again (at least once).
#[allow(clippy::too_many_arguments)]
async fn to_topic(
    src: &DataAddress,
    dst: &DataAddress,
    topic: &KafkaAddress,
    plan: Plan,
    rec: &RecordOptions,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    started: Instant,
    parallel: usize,
) -> Result<RecordReport> {
    let units = plan.share.items.clone();
    let mut report = OutputReport::planned(String::new(), plan.unit_names(&units));
    let format = format!("kafka ({})", topic.value_format.name());
    let done = |plan: &Plan, report: OutputReport| {
        let mut done = finish(
            plan.source_report(src, report.rows_read),
            dst,
            &format,
            &plan.output_schema,
            rec,
            vec![report],
            started,
        );
        done.idle = plan.share.idle.clone();
        done
    };
    if plan.share.idle.is_some() || opts.dry_run {
        return Ok(done(&plan, report));
    }
    let run_id = run_id(src, dst, rec, opts);
    let state = opts.state_store()?;
    let (size, version) = plan.fingerprint(&units);
    let from_files = matches!(plan.origin, Origin::Files { .. });
    let previous = state
        .files(&run_id)?
        .remove(TOPIC_KEY)
        .filter(|c| opts.resume && c.done && from_files);
    if let Some(previous) = previous.filter(|c| c.source_version.as_deref() == Some(&version)) {
        report.skipped = true;
        report.reason = Some(format!(
            "the same files were sent to {} at {}",
            topic.topic_shown(),
            previous.dest_version.unwrap_or_default()
        ));
        return Ok(done(&plan, report));
    }
    state.forget_run(&run_id)?;
    state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
    progress.planned(1, plan.bytes);
    let plan = Arc::new(plan);
    let mut rx = plan.feed(units, parallel, rec, progress.clone());
    let writer = {
        let (plan, topic) = (plan.clone(), topic.clone());
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || -> Result<(u64, u64, u64)> {
            let mut chain = Chain::bind(&plan.transforms, plan.input_schema.clone())?;
            let mut writer = ferry_connectors::kafka::sink::TopicWriter::open(
                &topic,
                plan.output_schema.clone(),
                handle,
            )?;
            let (mut read, mut written) = (0, 0);
            while let Some(batch) = rx.blocking_recv() {
                let batch = batch?;
                read += batch.num_rows() as u64;
                let batch = chain.apply(batch)?;
                if batch.num_rows() > 0 {
                    written += batch.num_rows() as u64;
                    writer.write(&batch)?;
                    crate::failpoint::batch_written();
                }
            }
            let bytes = writer.finish()?;
            Ok((read, written, bytes))
        })
    };
    match writer.await.map_err(join_error).and_then(|r| r) {
        Ok((read, written, bytes)) => {
            report.rows_read = read;
            report.rows_written = written;
            report.bytes_written = bytes;
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            state.file_done(&run_id, TOPIC_KEY, size, Some(&version), None, Some(&at))?;
            progress.file_finished(TOPIC_KEY);
            state.finish_run(&run_id, run_outcome(0))?;
        }
        Err(e) => {
            report.error = Some(e.to_string());
            state.finish_run(&run_id, run_outcome(1))?;
        }
    }
    Ok(done(&plan, report))
}

/// Commits the load. When the commit was to create the target and another process (a
/// partition of the same run) created it meanwhile, the staged rows go into that table.
async fn commit_or_add(
    state: &StateStore,
    run_id: &str,
    load: &dyn TableLoad,
    table: &TableAddress,
    plan: &Plan,
    staged: Staged<'_>,
) -> Result<()> {
    let failure = match commit(state, run_id, load, &staged).await {
        Err(e) if load.creates_target() => e,
        outcome => return outcome,
    };
    let Ok(again) = prepare_load(table, plan.output_schema.clone(), run_id).await else {
        return Err(failure);
    };
    if again.creates_target() || !again.staging_exists().await.unwrap_or(false) {
        return Err(failure);
    }
    tracing::info!(
        target = again.target(),
        "created by another process meanwhile: adding the rows to it"
    );
    commit(state, run_id, again.as_ref(), &staged).await
}

/// A load ready to commit: its source fingerprint and the rows it staged.
struct Staged<'a> {
    size: u64,
    version: &'a str,
    rows: u64,
    /// An upsert may leave fewer rows than it staged (keys repeated among them).
    upsert: bool,
}

/// Records that the load is committing, commits, and records what it left in the table.
async fn commit(
    state: &StateStore,
    run_id: &str,
    load: &dyn TableLoad,
    staged: &Staged<'_>,
) -> Result<()> {
    let (size, version) = (staged.size, Some(staged.version));
    state.begin_upload(run_id, TABLE_KEY, size, version, COMMITTING, staged.rows)?;
    crate::failpoint::before_commit().await;
    load.commit().await?;
    let loaded = record_loaded(load, staged.rows, staged.upsert).await?;
    state.file_done(run_id, TABLE_KEY, size, version, None, Some(&loaded))
}

/// What a load that staged `rows` left in its table, as the checkpoint keeps it. The
/// table is counted (a scan) only when that count matters: an upsert may leave fewer rows
/// than it staged, and a checkpoint from before rows were kept says 0.
async fn record_loaded(load: &dyn TableLoad, rows: u64, upsert: bool) -> Result<String> {
    let count = rows == 0 || upsert;
    let now = load.target_state(count).await?.ok_or_else(|| {
        ferry_core::Error::Internal(format!("table {} is missing after its load", shown(load)))
    })?;
    let rows = match now.rows {
        Some(held) if rows == 0 => held,
        Some(held) => rows.min(held),
        None => rows,
    };
    let loaded = Loaded {
        identity: now.identity,
        rows,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    serde_json::to_string(&loaded).map_err(|e| ferry_core::Error::Internal(e.to_string()))
}

/// One COPY stream: takes batches from the shared channel until it is empty, transforms
/// and encodes them on this thread. Returns rows read and rows written.
fn stream_rows(
    load: &dyn TableLoad,
    plan: &Plan,
    rx: &Mutex<mpsc::Receiver<Result<RecordBatch>>>,
    handle: &Handle,
) -> Result<(u64, u64)> {
    let mut chain = Chain::bind(&plan.transforms, plan.input_schema.clone())?;
    let mut writer = handle.block_on(load.writer(&plan.output_schema))?;
    let (mut read, mut written) = (0, 0);
    while let Some(batch) = handle.block_on(async { rx.lock().await.recv().await }) {
        let batch = batch?;
        read += batch.num_rows() as u64;
        let batch = chain.apply(batch)?;
        if batch.num_rows() > 0 {
            written += batch.num_rows() as u64;
            handle.block_on(writer.write(&batch))?;
            crate::failpoint::batch_written();
        }
    }
    handle.block_on(writer.finish())?;
    Ok((read, written))
}
