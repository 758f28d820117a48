//! ferry's durable state.
//!
//! - [`StateStore`]: run checkpoints (files done, uploads in flight), in embedded SQLite
//!   or a shared PostgreSQL.
//! - [`control`]: the service's transfers, runs, events and data plane registrations,
//!   behind the [`ControlStore`] trait, in embedded SQLite or a shared PostgreSQL.

mod checkpoint;
pub mod control;

pub use checkpoint::{FileCheckpoint, StateStore, UploadCheckpoint};
pub use control::{
    ControlStore, DocumentRecord, DocumentStore, EventRecord, NewEvent, RunRecord, TransferFilter,
    TransferRecord,
};
