//! `ferry`: parse, dispatch, print the error once, map it to an exit code.

mod args;
mod client;
mod cluster;
mod dataplane;
mod k8s;
mod output;
mod pipelines;
mod pull;
mod serve;
mod stream;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // Only the byte path needs it: the record path allocates and frees many buffers of a
    // few MiB, and mapping each one afresh costs more (page faults) than it saves.
    if cli.moves_bytes() {
        return_freed_buffers_to_the_os();
    }
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(args::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ferry: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// glibc raises its mmap threshold after large buffers are freed, and then serves later
/// part buffers from the heap, where freed memory stays in the process. A fixed threshold
/// keeps every part buffer mmapped, so peak RSS follows the byte budget.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_freed_buffers_to_the_os() {
    // SAFETY: mallopt only adjusts allocator settings; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_buffers_to_the_os() {}
