//! ferry's durable state.
//!
//! - [`StateStore`]: run checkpoints (files done, uploads in flight), in embedded SQLite
//!   or a shared PostgreSQL.
//! - [`control`]: the service's transfers, runs, events and data plane registrations,
//!   behind the [`ControlStore`] trait, in embedded SQLite or a shared PostgreSQL.
//! - [`tls`]: TLS for PostgreSQL sessions (`sslmode`, `sslrootcert`), shared with the
//!   PostgreSQL connector.

mod checkpoint;
pub mod control;
#[cfg(test)]
mod test_net;
pub mod tls;

pub use checkpoint::{FileCheckpoint, StateStore, UploadCheckpoint};
pub use control::{
    ControlStore, DocumentRecord, DocumentStore, EventRecord, NewEvent, RunRecord, TransferFilter,
    TransferRecord,
};
