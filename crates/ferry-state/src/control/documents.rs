//! Documents: the resources of the service other than transfers (pipelines, their runs,
//! the watermarks of their triggers), kept as JSON under a kind and a name.
//!
//! A document has a version that each write adds 1 to; a write names the version it read
//! and fails when another writer came first, so processes sharing the store change a
//! document one at a time (compare and swap). `parent` (a pipeline's name for its runs) and
//! `active` (a run not finished) are kept apart to list on.

use async_trait::async_trait;
use ferry_core::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One stored document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub kind: String,
    pub name: String,
    pub parent: Option<String>,
    pub active: bool,
    /// 1 when created; each write adds 1.
    pub version: i64,
    pub document: Value,
    pub updated_at: i64,
}

impl DocumentRecord {
    pub fn new(kind: &str, name: &str, document: Value, now: i64) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            parent: None,
            active: false,
            version: 0,
            document,
            updated_at: now,
        }
    }
}

/// Where documents are kept. Each method is atomic.
#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    /// Writes `record` when the stored version is `expected` (`None`: only when there is
    /// none) and returns the new version; `None` (and nothing changed) otherwise.
    async fn put_document(
        &self,
        record: &DocumentRecord,
        expected: Option<i64>,
    ) -> Result<Option<i64>>;
    async fn get_document(&self, kind: &str, name: &str) -> Result<Option<DocumentRecord>>;
    /// Documents of `kind` by name, only those of `parent` if given, only active ones if
    /// asked.
    async fn list_documents(
        &self,
        kind: &str,
        parent: Option<&str>,
        active_only: bool,
    ) -> Result<Vec<DocumentRecord>>;
    /// Deletes one document; false when there was none.
    async fn delete_document(&self, kind: &str, name: &str) -> Result<bool>;
    /// Deletes every document of `kind` under `parent`; returns how many.
    async fn delete_documents(&self, kind: &str, parent: &str) -> Result<u64>;
}
