//! ferry's transfer engine: runs one copy or verification between two addresses.

pub mod archive;
mod budget;
mod copy;
pub mod count;
mod events;
pub mod failpoint;
mod filter;
pub mod manifest;
pub mod options;
mod partition;
mod records;
pub mod report;
mod row_verify;
mod tables;
pub mod topics;
mod upload;
mod verify;

pub use archive::{ArchiveAction, ArchiveKind};
pub use copy::{copy, forget_checkpoint};
pub use filter::KeyFilter;
pub use options::{parse_size, CopyOptions};
pub use partition::Partition;
pub use records::{transfer, DatasetReport, OutputReport, RecordOptions, RecordReport};
pub use report::{
    Action, CopyReport, Difference, FileReport, NoProgress, Progress, Status, VerifyReport,
};
pub use row_verify::{
    compares_rows, verify_rows, KeyDifference, RangeDifference, RowSide, RowVerifyOptions,
    RowVerifyReport,
};
pub use verify::verify;
