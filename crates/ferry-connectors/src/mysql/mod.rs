//! Placeholder until the connector lands.

use arrow::datatypes::SchemaRef;
use ferry_core::{Error, Result, TableAddress};

use crate::tables::{TableLoad, TableSource};

pub async fn open(address: &TableAddress) -> Result<Box<dyn TableSource>> {
    Err(Error::InvalidAddress {
        address: address.to_string(),
        reason: "not supported yet".into(),
    })
}

pub async fn prepare(
    address: &TableAddress,
    _schema: SchemaRef,
    _load_id: &str,
) -> Result<Box<dyn TableLoad>> {
    open(address).await.map(|_| unreachable!())
}
