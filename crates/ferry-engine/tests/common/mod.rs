//! Running record transfers from tests: options with their own state directory, and a
//! copy that must succeed.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use ferry_core::DataAddress;
use ferry_engine::{transfer, CopyOptions, NoProgress, RecordOptions, RecordReport, Status};

/// Options with checkpoints in `state` and 5 MiB parts.
pub fn options(state: &Path) -> CopyOptions {
    CopyOptions {
        state_dir: state.to_path_buf(),
        part_size: 5 << 20,
        ..CopyOptions::default()
    }
}

/// A record transfer between two addresses.
pub async fn try_copy(
    src: &str,
    dst: &str,
    rec: &RecordOptions,
    state: &Path,
) -> ferry_core::Result<RecordReport> {
    try_copy_with(src, dst, rec, &options(state)).await
}

pub async fn try_copy_with(
    src: &str,
    dst: &str,
    rec: &RecordOptions,
    opts: &CopyOptions,
) -> ferry_core::Result<RecordReport> {
    transfer(
        &DataAddress::parse(src).unwrap(),
        &DataAddress::parse(dst).unwrap(),
        rec,
        opts,
        Arc::new(NoProgress),
    )
    .await
}

/// A record transfer that must succeed.
pub async fn copy(src: &str, dst: &str, rec: &RecordOptions, state: &Path) -> RecordReport {
    let report = try_copy(src, dst, rec, state).await.unwrap();
    assert_eq!(report.status, Status::Succeeded, "{:?}", report.error);
    report
}
