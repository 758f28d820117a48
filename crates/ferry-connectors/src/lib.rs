//! ferry's stores. Each address family has one module; [`open_source`] and [`open_sink`]
//! turn a [`DataAddress`] into the backend that serves it.

use std::sync::Arc;

use ferry_core::{DataAddress, Error, Result, Sink, Source};

mod gcs;
pub mod kafka;
pub mod local;
pub mod mysql;
pub mod object;
pub mod postgres;
pub mod serve;
pub mod sqlite;
pub mod tables;
pub mod testkit;

pub use local::LocalStore;
pub use object::ObjectBackend;
pub use tables::{
    open_table, prepare_load, Selection, TableLoad, TablePartition, TableScan, TableSource,
    TableWriter, TargetState,
};

/// The backend that reads `address`.
pub fn open_source(address: &DataAddress) -> Result<Arc<dyn Source>> {
    Ok(match address {
        DataAddress::Table(_) | DataAddress::Kafka(_) => return Err(not_files(address)),
        DataAddress::Local { .. } => Arc::new(LocalStore::new(address.clone())?),
        _ => Arc::new(ObjectBackend::new(address.clone())?),
    })
}

/// The backend that writes `address`.
pub fn open_sink(address: &DataAddress) -> Result<Arc<dyn Sink>> {
    Ok(match address {
        DataAddress::Table(_) | DataAddress::Kafka(_) => return Err(not_files(address)),
        DataAddress::Local { .. } => Arc::new(LocalStore::new(address.clone())?),
        DataAddress::Http { .. } => {
            return Err(Error::InvalidAddress {
                address: address.to_string(),
                reason: "http(s) addresses can only be read from; choose a local, s3://, az:// or gs:// destination".into(),
            })
        }
        _ => Arc::new(ObjectBackend::new(address.clone())?),
    })
}

/// Tables move as records, never as bytes.
fn not_files(address: &DataAddress) -> Error {
    let why = match address {
        DataAddress::Kafka(_) => "a topic holds events, not files; it is exported to or imported from files and objects whole",
        _ => "a table holds rows, not files; it can be copied to or from files in a format, or another table",
    };
    Error::not_supported(address, why)
}
