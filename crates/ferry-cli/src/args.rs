//! Flags, their validation into engine settings, and the commands.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ferry_core::{ChecksumAlgo, DataAddress, Error, Result};
use ferry_engine::{
    options::default_state_dir, parse_size, CopyOptions, NoProgress, Progress, Status,
};

use crate::output;

/// Move files and objects between local disks, S3 and Azure Blob Storage: fast, resumable
/// and verified.
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
    /// http(s)://host/file (source only). A directory or prefix is copied recursively into
    /// the destination. Re-running an interrupted copy continues where it stopped.
    Copy(CopyArgs),
    /// Compare two trees (or two objects) without copying and list every difference.
    Verify(VerifyArgs),
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
    /// Ignore (and discard) the checkpoint of an earlier run: copy everything again.
    #[arg(long)]
    no_resume: bool,
    /// List what would be copied; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where checkpoints are kept [default: $FERRY_STATE_DIR, else ~/.local/state/ferry].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Show progress even when stderr is not a terminal (then as a plain line every 2 s).
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    source: String,
    destination: String,
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
            checksum: self.checksum.parse::<ChecksumAlgo>()?,
            ..CopyOptions::default()
        })
    }
}

pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Copy(args) => copy(args).await,
        Command::Verify(args) => verify(args).await,
    }
}

async fn copy(args: CopyArgs) -> Result<u8> {
    let src = DataAddress::parse(&args.source)?;
    let dst = DataAddress::parse(&args.destination)?;
    let opts = CopyOptions {
        concurrency: args.concurrency,
        include: args.include,
        exclude: args.exclude,
        verify: args.verify,
        resume: !args.no_resume,
        dry_run: args.dry_run,
        state_dir: args.state_dir.unwrap_or_else(default_state_dir),
        ..args.common.options()?
    };
    opts.validate()?;
    let on_terminal = std::io::stderr().is_terminal();
    let show_bar =
        !args.no_progress && !args.common.json && !opts.dry_run && (args.progress || on_terminal);
    let bar = show_bar.then(|| output::Bar::new(on_terminal));
    let progress: Arc<dyn Progress> = match &bar {
        Some(bar) => bar.clone(),
        None => Arc::new(NoProgress),
    };
    let report = ferry_engine::copy(&src, &dst, &opts, progress).await?;
    if let Some(bar) = bar {
        bar.finish();
    }
    output::copy_report(&report, &src, &dst, opts.dry_run, args.common.json);
    Ok(if report.status == Status::Succeeded {
        0
    } else {
        1
    })
}

async fn verify(args: VerifyArgs) -> Result<u8> {
    let src = DataAddress::parse(&args.source)?;
    let dst = DataAddress::parse(&args.destination)?;
    let opts = args.common.options()?;
    let report = ferry_engine::verify(&src, &dst, &opts).await?;
    output::verify_report(&report, args.common.json);
    Ok(if report.status == Status::Succeeded {
        0
    } else {
        1
    })
}
