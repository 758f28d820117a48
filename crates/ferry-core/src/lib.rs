//! The model every other ferry crate speaks: where data lives ([`DataAddress`]),
//! what can go wrong ([`Error`]), how bytes are fingerprinted ([`ChecksumAlgo`]),
//! and the byte-path traits a store implements ([`Source`], [`Sink`]).
//!
//! This crate has no network or database dependencies.

pub mod address;
pub mod checksum;
pub mod error;
pub mod kafka;
pub mod redact;
pub mod secret;
pub mod store;
pub mod table;
pub mod transform;

pub use address::DataAddress;
pub use checksum::{ChecksumAlgo, Digest, Hasher};
pub use error::{Error, Result};
pub use kafka::{KafkaAddress, OnError, StartOffset, ValueFormat, METADATA_COLUMNS};
pub use store::{Entry, ListStream, Listing, PartToken, Sink, Source, UploadId};
pub use table::{schema_evolution, Database, TableAddress, WriteMode};
pub use transform::{Action, TransformSpec};
