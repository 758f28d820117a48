//! Flags, their validation into engine settings, and the commands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ferry_core::{ChecksumAlgo, DataAddress, Error, Result, TransformSpec};
use ferry_engine::manifest::Manifest;
use ferry_engine::topics::FileRolling;
use ferry_engine::{
    options::default_state_dir, parse_size, ArchiveAction, ArchiveKind, CopyOptions, NoProgress,
    Partition, Progress, RecordOptions, Status,
};
use ferry_formats::{Format, FormatOptions};

use crate::output;

/// Move datasets between local disks, S3, Azure Blob Storage and databases: fast,
/// resumable and verified; once from the command line, or as a service.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output on stderr (-v info, -vv debug); FERRY_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy a file, directory or prefix to another place.
    ///
    /// Addresses: ./dir, /abs/path, file:///abs, s3://bucket/key, az://container/path,
    /// gs://bucket/key, http(s)://host/file (source only). A directory or prefix is copied recursively into
    /// the destination. Re-running an interrupted copy continues where it stopped.
    Copy(Box<CopyArgs>),
    /// Compare two trees (or two objects) without copying and list every difference; or
    /// prove a table copy: compare the rows of two tables, queries or datasets of files
    /// (order-free digests per key range), naming the ranges and keys that differ.
    Verify(VerifyArgs),
    /// Run the transfer a manifest describes (apiVersion ferry.dev/v1, kind BatchTransfer).
    Run(RunArgs),
    /// Run the service: REST API, durable transfers, schedules, retries and events, with
    /// an embedded data plane.
    Serve(crate::serve::ServeArgs),
    /// Run a data plane: executes runs and serves the Dataplane Signaling API
    /// (`/dataflows/…`), alone or registered with a control plane.
    Dataplane(crate::dataplane::DataplaneArgs),
    /// Serve a dataset for download (a pull flow) from a running `ferry serve` or `ferry
    /// dataplane`: an endpoint and a short-lived token for it.
    Pull(crate::pull::PullArgs),
    /// Manage the transfers of a running `ferry serve`.
    Transfers(crate::client::TransfersArgs),
    /// Manage the pipelines of a running `ferry serve`: graphs of transfers, commands and
    /// checks with triggers.
    Pipelines(crate::pipelines::PipelinesArgs),
    /// Manage the task templates pipelines use: the built-in ones, and those registered as
    /// `kind: TaskTemplate`.
    Templates(crate::pipelines::TemplatesArgs),
    /// Kubernetes resources for ferry, printed as YAML.
    K8s(crate::k8s::K8sArgs),
}

/// How a run shows itself and where it keeps its checkpoint.
#[derive(Args, Debug)]
struct RunControl {
    /// Ignore (and discard) the checkpoint of an earlier run: copy everything again.
    #[arg(long)]
    no_resume: bool,
    /// List what would be copied; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where checkpoints are kept [default: $FERRY_STATE_DIR, else ~/.local/state/ferry].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Keep checkpoints in PostgreSQL instead of --state-dir, shared by every process that
    /// uses the same database: a run killed on one machine continues on another.
    /// postgres://user@host:port/database, password from PGPASSWORD
    /// [default: $FERRY_STATE_URL].
    #[arg(long, value_name = "URL")]
    state_url: Option<String>,
    /// Show progress even when stderr is not a terminal (then as a plain line every 2 s).
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The manifest (YAML).
    manifest: PathBuf,
    /// Print one JSON summary on stdout instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    control: RunControl,
    #[command(flatten)]
    partition: PartitionArgs,
}

/// One of several processes sharing a transfer, such as the pods of a Kubernetes Indexed Job.
#[derive(Args, Debug)]
struct PartitionArgs {
    /// Split the transfer into N partitions and run one of them: its share of the files or
    /// table ranges.
    #[arg(long, value_name = "N")]
    partitions: Option<u32>,
    /// The partition to run, from 0 [default: $JOB_COMPLETION_INDEX, which Kubernetes sets].
    #[arg(long, value_name = "I", requires = "partitions")]
    partition: Option<u32>,
}

impl PartitionArgs {
    fn partition(&self) -> Result<Option<Partition>> {
        let Some(count) = self.partitions else {
            return Ok(None);
        };
        let (index, given_as) = match self.partition {
            Some(index) => (index, "--partition"),
            None => {
                let from_env = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
                    Error::invalid_option(
                        "--partition",
                        "give --partition I, or set JOB_COMPLETION_INDEX (a Kubernetes Indexed Job sets it)",
                    )
                })?;
                let index = from_env.trim().parse().map_err(|_| {
                    Error::invalid_option(
                        "JOB_COMPLETION_INDEX",
                        format!("'{from_env}' is not a partition number"),
                    )
                })?;
                (index, "JOB_COMPLETION_INDEX")
            }
        };
        Partition::new(index, count).map(Some).map_err(|e| match e {
            Error::InvalidOption { name, reason } if name == "--partition" => {
                Error::invalid_option(given_as, reason)
            }
            other => other,
        })
    }
}

/// Formats and transformations: when given, or when the two ends' extensions name
/// different formats, the copy reads records and writes them in the destination's format.
#[derive(Args, Debug)]
struct RecordArgs {
    /// Apply a transformation, e.g. 'Digest(email, algo=sha256)', 'Filter(amount > 100)',
    /// 'RemoveColumn(notes)', 'Redact(phone, mode=formatted)', 'Sample(fraction=0.1, seed=7)',
    /// 'Encrypt(ssn, keyRef=env:FERRY_KEY)'. Repeatable; applied in order.
    #[arg(long = "transform", value_name = "SPEC")]
    transforms: Vec<String>,
    /// A YAML file holding a list of transformations, as in a manifest. Repeatable.
    #[arg(long = "transform-file", value_name = "FILE")]
    transform_files: Vec<PathBuf>,
    /// The source's format (csv, json, parquet, avro, orc) [default: from each file's extension].
    #[arg(long, value_name = "FORMAT")]
    source_format: Option<String>,
    /// The destination's format [default: from its extension, else the source's].
    #[arg(long, value_name = "FORMAT")]
    dest_format: Option<String>,
    /// A source format setting, e.g. delimiter=';', header=false, nullValue=NA. Repeatable.
    #[arg(long = "source-option", value_name = "KEY=VALUE")]
    source_options: Vec<String>,
    /// A destination format setting, e.g. compression=zstd, rowGroupSize=100000. Repeatable.
    #[arg(long = "dest-option", value_name = "KEY=VALUE")]
    dest_options: Vec<String>,
    /// A topic's rows into a directory: at most N events per file.
    #[arg(long, value_name = "N")]
    flush_size: Option<u64>,
    /// A topic's rows into a directory: one file per window of record time this long.
    #[arg(long = "rotate-interval", value_name = "SECONDS")]
    rotate_interval: Option<u64>,
    /// A topic's rows into a directory: close a file before its events pass this size (e.g. 64MiB).
    #[arg(long, value_name = "SIZE")]
    max_file_size: Option<String>,
    /// A topic's rows into a directory: each file's directory from its first event's
    /// record time, strftime-style in UTC, e.g. 'dt=%Y-%m-%d/hour=%H'.
    #[arg(long, value_name = "PATTERN")]
    path_format: Option<String>,
}

#[derive(Args, Debug)]
struct Common {
    /// Checksum computed while copying or comparing: crc32c, xxh3 or sha256.
    #[arg(long, default_value = "crc32c", value_name = "ALGO")]
    checksum: String,
    /// Files in flight at once.
    #[arg(long, default_value_t = CopyOptions::default().transfers, value_name = "N")]
    transfers: usize,
    /// Size of the parts large files move in (e.g. 16MiB); files up to this size move whole.
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    part_size: String,
    /// Most bytes held in memory for data in flight.
    #[arg(long, default_value = "128MiB", value_name = "SIZE")]
    max_buffer: String,
    /// Bytes of events per object when exporting a Kafka topic.
    #[arg(long, default_value = "64MiB", value_name = "SIZE")]
    object_size: String,
    /// Print one JSON summary on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// Where to copy from.
    source: String,
    /// Where to copy to. A trailing '/' or an existing directory means "into".
    destination: String,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    records: RecordArgs,
    /// Parts in flight at once for one file.
    #[arg(long, default_value_t = CopyOptions::default().concurrency, value_name = "N")]
    concurrency: usize,
    /// Copy only keys matching GLOB (a pattern without '/' matches file names). Repeatable.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip keys matching GLOB. Repeatable.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// After copying, re-read the destination and compare checksums.
    #[arg(long)]
    verify: bool,
    /// The source is one archive (.tar, .tar.gz, .tgz, .tar.zst, .tzst, .zip): write its
    /// members as a tree under the destination, reading it once as it streams.
    #[arg(long, conflicts_with = "archive")]
    extract: bool,
    /// Pack the source tree into one archive at the destination as it uploads:
    /// tar, tar.gz, tar.zst or zip.
    #[arg(long, value_name = "KIND")]
    archive: Option<String>,
    /// A header sent with every request to an http(s) source, as 'Name: value'
    /// (repeatable), e.g. 'Authorization: Bearer TOKEN' for a pull endpoint. A `token`
    /// query parameter of the source is sent as that header too.
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    #[command(flatten)]
    control: RunControl,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    source: String,
    destination: String,
    /// Rows: the key columns (comma-separated) that name rows and, when the first is an
    /// integer, cut them into ranges [default: the table's primary key].
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    key: Vec<String>,
    /// Rows: the source's format, when its file names do not say (csv, json, parquet, avro, orc).
    #[arg(long, value_name = "FORMAT")]
    source_format: Option<String>,
    /// Rows: the destination's format, when its file names do not say.
    #[arg(long, value_name = "FORMAT")]
    dest_format: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn size_flag(name: &str, value: &str) -> Result<u64> {
    parse_size(value).map_err(|reason| Error::invalid_option(name, reason))
}

impl Common {
    fn options(&self) -> Result<CopyOptions> {
        Ok(CopyOptions {
            transfers: self.transfers,
            part_size: size_flag("--part-size", &self.part_size)?,
            max_buffer: size_flag("--max-buffer", &self.max_buffer)?,
            object_size: size_flag("--object-size", &self.object_size)?.max(1),
            checksum: self.checksum.parse::<ChecksumAlgo>()?,
            ..CopyOptions::default()
        })
    }
}

impl Cli {
    /// True for commands that move bytes through part buffers (copies, manifests and
    /// verifications without conversion). Decided before any thread starts; parse errors
    /// count as no.
    pub fn moves_bytes(&self) -> bool {
        match &self.command {
            Command::Copy(args) => {
                let (Ok(src), Ok(dst), Ok(rec)) = (
                    DataAddress::parse(&args.source),
                    DataAddress::parse(&args.destination),
                    args.records.options(),
                ) else {
                    return false;
                };
                !rec.needed(&src, &dst)
            }
            Command::Verify(args) => {
                let (Ok(src), Ok(dst)) = (
                    DataAddress::parse(&args.source),
                    DataAddress::parse(&args.destination),
                ) else {
                    return false;
                };
                !ferry_engine::compares_rows(&src, &dst)
                    && args.source_format.is_none()
                    && args.dest_format.is_none()
            }
            Command::Run(args) => Manifest::load(&args.manifest)
                .and_then(|m| m.plan())
                .is_ok_and(|(src, dst, rec)| !rec.needed(&src, &dst)),
            Command::Serve(_)
            | Command::Dataplane(_)
            | Command::Transfers(_)
            | Command::Pull(_)
            | Command::Pipelines(_)
            | Command::Templates(_)
            | Command::K8s(_) => false,
        }
    }
}

pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Copy(args) => {
            ferry_connectors::object::set_http_headers(&args.headers)?;
            copy(*args).await
        }
        Command::Verify(args) => verify(args).await,
        Command::Run(args) => run_manifest(args).await,
        Command::Serve(args) => crate::serve::serve(args).await,
        Command::Dataplane(args) => crate::serve::dataplane(args).await,
        Command::Transfers(args) => crate::client::transfers(args).await,
        Command::Pull(args) => crate::pull::pull(args).await,
        Command::Pipelines(args) => crate::pipelines::pipelines(args).await,
        Command::Templates(args) => crate::pipelines::templates(args).await,
        Command::K8s(args) => crate::k8s::k8s(args).await,
    }
}

impl RecordArgs {
    fn options(&self) -> Result<RecordOptions> {
        let mut transforms = Vec::new();
        for path in &self.transform_files {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::invalid_option(format!("--transform-file {}", path.display()), e)
            })?;
            let list: Vec<TransformSpec> = serde_norway::from_str(&text).map_err(|e| {
                Error::invalid_option(format!("--transform-file {}", path.display()), e)
            })?;
            transforms.extend(list);
        }
        for spec in &self.transforms {
            transforms.push(spec.parse()?);
        }
        Ok(RecordOptions {
            source_format: parse_format("--source-format", &self.source_format)?,
            source_options: format_options("--source-option", &self.source_options)?,
            dest_format: parse_format("--dest-format", &self.dest_format)?,
            dest_options: format_options("--dest-option", &self.dest_options)?,
            transforms,
            rolling: FileRolling {
                flush_size: self.flush_size,
                rotate_interval_seconds: self.rotate_interval,
                max_file_bytes: self
                    .max_file_size
                    .as_deref()
                    .map(|s| {
                        ferry_engine::parse_size(s)
                            .map_err(|e| Error::invalid_option("--max-file-size", e))
                    })
                    .transpose()?,
                path_format: self.path_format.clone(),
                hold_open: false,
                snapshot_interval_seconds: None,
            },
        })
    }
}

/// `KEY=VALUE` flags into format settings; unknown keys are errors.
fn format_options(flag: &str, pairs: &[String]) -> Result<FormatOptions> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::invalid_option(
                flag,
                format!("'{pair}': expected KEY=VALUE"),
            ));
        };
        let value = match value.parse::<u64>() {
            Ok(n)
                if key != "delimiter"
                    && key != "quote"
                    && key != "escape"
                    && key != "nullValue" =>
            {
                serde_json::Value::from(n)
            }
            _ => match value {
                "true" => serde_json::Value::Bool(true),
                "false" => serde_json::Value::Bool(false),
                other => serde_json::Value::from(other),
            },
        };
        map.insert(key.trim().to_string(), value);
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| Error::invalid_option(flag, e))
}

impl RunControl {
    fn options(&self, base: CopyOptions) -> CopyOptions {
        CopyOptions {
            resume: !self.no_resume,
            dry_run: self.dry_run,
            state_dir: self.state_dir.clone().unwrap_or_else(default_state_dir),
            state_url: self.state_url.clone().or_else(|| {
                std::env::var("FERRY_STATE_URL")
                    .ok()
                    .filter(|url| !url.is_empty())
            }),
            ..base
        }
    }
}

/// A progress bar on a terminal (or with --progress), unless the output is JSON.
fn progress_for(control: &RunControl, json: bool) -> (Option<Arc<output::Bar>>, Arc<dyn Progress>) {
    let on_terminal = std::io::stderr().is_terminal();
    let show_bar =
        !control.no_progress && !json && !control.dry_run && (control.progress || on_terminal);
    let bar = show_bar.then(|| output::Bar::new(on_terminal));
    let progress: Arc<dyn Progress> = match &bar {
        Some(bar) => bar.clone(),
        None => Arc::new(NoProgress),
    };
    (bar, progress)
}

async fn records(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    control: &RunControl,
    json: bool,
) -> Result<u8> {
    let (bar, progress) = progress_for(control, json);
    let report = ferry_engine::transfer(src, dst, rec, opts, progress).await?;
    if let Some(bar) = bar {
        bar.finish();
    }
    let succeeded = report.status == Status::Succeeded;
    // --verify: the rows, once loaded, against the source's (keyed by an upsert's key).
    let verification = if opts.verify && succeeded && !opts.dry_run {
        let key = match dst {
            DataAddress::Table(t) => t.key_columns.clone(),
            _ => Vec::new(),
        };
        let how = ferry_engine::RowVerifyOptions { key };
        Some(ferry_engine::verify_rows(src, dst, rec, opts, &how).await?)
    } else {
        None
    };
    output::record_report(&report, opts.dry_run, json, verification.as_ref());
    let verified = verification
        .as_ref()
        .is_none_or(|v| v.status == Status::Succeeded);
    Ok(if succeeded && verified { 0 } else { 1 })
}

async fn run_manifest(args: RunArgs) -> Result<u8> {
    let manifest = Manifest::load(&args.manifest)?;
    if manifest.is_stream() {
        crate::stream::check(&args.manifest)?;
    }
    let (src, dst, rec) = manifest.plan()?;
    let opts = CopyOptions {
        partition: args.partition.partition()?,
        archive: manifest.archive()?,
        ..args.control.options(CopyOptions::default())
    };
    if opts.archive.is_some() {
        return bytes(&src, &dst, &opts, &args.control, args.json).await;
    }
    if manifest.is_stream() {
        return crate::stream::run(&src, &dst, &rec, &opts, args.json).await;
    }
    // As the service runs it: bytes as they are, unless formats or transformations differ.
    if rec.needed(&src, &dst) {
        records(&src, &dst, &rec, &opts, &args.control, args.json).await
    } else {
        bytes(&src, &dst, &opts, &args.control, args.json).await
    }
}

async fn copy(args: CopyArgs) -> Result<u8> {
    let src = DataAddress::parse(&args.source)?;
    let dst = DataAddress::parse(&args.destination)?;
    let opts = args.control.options(CopyOptions {
        concurrency: args.concurrency,
        include: args.include,
        exclude: args.exclude,
        verify: args.verify,
        archive: match (args.extract, &args.archive) {
            (true, _) => Some(ArchiveAction::Extract),
            (false, Some(kind)) => Some(ArchiveAction::Pack(kind.parse::<ArchiveKind>()?)),
            (false, None) => None,
        },
        ..args.common.options()?
    });
    opts.validate()?;
    if opts.archive.is_some() {
        let rec = args.records.options()?;
        if !rec.transforms.is_empty() || rec.source_format.is_some() || rec.dest_format.is_some() {
            return Err(Error::invalid_option(
                if args.extract {
                    "--extract"
                } else {
                    "--archive"
                },
                "moves bytes as they are; formats and transformations do not apply",
            ));
        }
        return bytes(&src, &dst, &opts, &args.control, args.common.json).await;
    }
    let rec = args.records.options()?;
    rec.rolling
        .check(&src, &dst, rec.dest_format.is_some(), &|name| {
            match name {
                "flushSize" => "--flush-size",
                "rotateIntervalSeconds" => "--rotate-interval",
                "maxFileBytes" => "--max-file-size",
                _ => "--path-format",
            }
            .to_string()
        })?;
    if rec.needed(&src, &dst) {
        if opts.verify && !rec.transforms.is_empty() {
            return Err(Error::invalid_option(
                "--verify",
                "compares the rows at both ends, and a transformation changes them by design",
            ));
        }
        if opts.verify
            && [&src, &dst]
                .iter()
                .any(|a| matches!(a, DataAddress::Kafka(_)))
        {
            return Err(Error::invalid_option(
                "--verify",
                "compares the rows at both ends; a topic's cannot be read again as they were",
            ));
        }
        return records(&src, &dst, &rec, &opts, &args.control, args.common.json).await;
    }
    bytes(&src, &dst, &opts, &args.control, args.common.json).await
}

async fn bytes(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
    control: &RunControl,
    json: bool,
) -> Result<u8> {
    let (bar, progress) = progress_for(control, json);
    let progress: Arc<dyn Progress> = if opts.dry_run {
        Arc::new(output::DryRun::new(dst, json))
    } else {
        progress
    };
    let report = ferry_engine::copy(src, dst, opts, progress).await?;
    if let Some(bar) = bar {
        bar.finish();
    }
    output::copy_report(&report, src, opts.dry_run, json);
    Ok(if report.status == Status::Succeeded {
        0
    } else {
        1
    })
}

/// The format a `--source-format`/`--dest-format` flag names, if given.
fn parse_format(flag: &str, value: &Option<String>) -> Result<Option<Format>> {
    value
        .as_deref()
        .map(|v| {
            v.parse::<Format>()
                .map_err(|e| Error::invalid_option(flag, e.to_string()))
        })
        .transpose()
}

async fn verify(args: VerifyArgs) -> Result<u8> {
    let src = DataAddress::parse(&args.source)?;
    let dst = DataAddress::parse(&args.destination)?;
    let opts = args.common.options()?;
    let rec = RecordOptions {
        source_format: parse_format("--source-format", &args.source_format)?,
        dest_format: parse_format("--dest-format", &args.dest_format)?,
        ..RecordOptions::default()
    };
    if ferry_engine::compares_rows(&src, &dst)
        || rec.source_format.is_some()
        || rec.dest_format.is_some()
    {
        opts.validate()?;
        let how = ferry_engine::RowVerifyOptions { key: args.key };
        let report = ferry_engine::verify_rows(&src, &dst, &rec, &opts, &how).await?;
        output::row_verify_report(&report, args.common.json);
        return Ok(if report.status == Status::Succeeded {
            0
        } else {
            1
        });
    }
    if !args.key.is_empty() {
        return Err(Error::invalid_option(
            "--key",
            "compares rows, and neither end is a table nor the two formats differ (give --source-format/--dest-format to compare files by rows)",
        ));
    }
    let report = ferry_engine::verify(&src, &dst, &opts).await?;
    output::verify_report(&report, args.common.json);
    Ok(if report.status == Status::Succeeded {
        0
    } else {
        1
    })
}
