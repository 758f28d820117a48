//! A Confluent-compatible schema registry, and Avro values in its wire format: a zero
//! byte, the schema id (4 bytes, big-endian), then the Avro datum.
//!
//! Schemas are fetched once per id and kept. A topic read as rows takes the latest schema
//! of `<topic>-value` as its columns; each value is decoded with the schema it was written
//! with, resolved to those columns (Avro's rules: fields added with defaults, fields
//! removed, promoted types), so several compatible versions read as one table. Rows
//! written to a topic register their schema under `<topic>-value` and carry its id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use ferry_core::{Error, KafkaAddress, Result};
use tokio::runtime::Handle;

use super::container::Event;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The registry an address names, with the schemas it has answered.
pub struct Registry {
    url: String,
    client: reqwest::Client,
    handle: Handle,
    by_id: Mutex<HashMap<u32, AvroSchema>>,
    /// The id whose schema gives the columns rows are read into.
    reader: Mutex<Option<(u32, AvroSchema)>>,
}

impl Registry {
    /// The address's registry; `handle` runs its requests (from blocking threads).
    pub fn new(address: &KafkaAddress, handle: Handle) -> Result<Arc<Registry>> {
        let url = address.schema_registry.clone().ok_or_else(|| {
            Error::invalid_option("schemaRegistry", "required with valueFormat=avro")
        })?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(format!("an HTTP client: {e}")))?;
        Ok(Arc::new(Registry {
            url,
            client,
            handle,
            by_id: Mutex::new(HashMap::new()),
            reader: Mutex::new(None),
        }))
    }

    fn failed(&self, what: &str, detail: impl std::fmt::Display) -> Error {
        Error::store(
            format!("schema registry {}", self.url),
            format!("{what}: {detail}"),
        )
    }

    /// GETs `path`; `None` when the registry answers 404.
    fn get(&self, path: &str) -> Result<Option<serde_json::Value>> {
        let url = format!("{}{path}", self.url);
        self.handle.block_on(async {
            let response = self
                .client
                .get(&url)
                .header("Accept", CONTENT_TYPE)
                .send()
                .await
                .map_err(|e| self.failed(path, without_url(&e)))?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let status = response.status();
            let body = response
                .text()
                .await
                .map_err(|e| self.failed(path, without_url(&e)))?;
            if !status.is_success() {
                return Err(self.failed(path, format!("{status}: {}", first_line(&body))));
            }
            serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| self.failed(path, format!("not JSON: {e}")))
        })
    }

    /// The schema of `id`, fetched once.
    pub fn schema(&self, id: u32) -> Result<AvroSchema> {
        if let Some(s) = lock(&self.by_id).get(&id) {
            return Ok(s.clone());
        }
        let path = format!("/schemas/ids/{id}");
        let body = self
            .get(&path)?
            .ok_or_else(|| self.failed(&path, "no schema has this id"))?;
        let schema =
            schema_text(&body).ok_or_else(|| self.failed(&path, "no 'schema' in the answer"))?;
        let schema = AvroSchema::new(schema);
        lock(&self.by_id).insert(id, schema.clone());
        Ok(schema)
    }

    /// The latest schema of `subject` and its id; `None` when the subject has none.
    pub fn latest(&self, subject: &str) -> Result<Option<(u32, AvroSchema)>> {
        let path = format!("/subjects/{subject}/versions/latest");
        let Some(body) = self.get(&path)? else {
            return Ok(None);
        };
        let id = body["id"]
            .as_u64()
            .ok_or_else(|| self.failed(&path, "no 'id' in the answer"))? as u32;
        let schema =
            schema_text(&body).ok_or_else(|| self.failed(&path, "no 'schema' in the answer"))?;
        let schema = AvroSchema::new(schema);
        lock(&self.by_id).insert(id, schema.clone());
        Ok(Some((id, schema)))
    }

    /// Registers `schema` under `subject` (the registry answers the existing id when it
    /// has it already) and returns its id.
    pub fn register(&self, subject: &str, schema: &AvroSchema) -> Result<u32> {
        let path = format!("/subjects/{subject}/versions");
        let url = format!("{}{path}", self.url);
        let body = serde_json::json!({"schema": schema.json_string, "schemaType": "AVRO"});
        let id = self.handle.block_on(async {
            let response = self
                .client
                .post(&url)
                .header("Content-Type", CONTENT_TYPE)
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| self.failed(&path, without_url(&e)))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| self.failed(&path, without_url(&e)))?;
            if !status.is_success() {
                return Err(self.failed(&path, format!("{status}: {}", first_line(&text))));
            }
            let answer: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| self.failed(&path, format!("not JSON: {e}")))?;
            answer["id"]
                .as_u64()
                .map(|id| id as u32)
                .ok_or_else(|| self.failed(&path, "no 'id' in the answer"))
        })?;
        lock(&self.by_id).insert(id, schema.clone());
        Ok(id)
    }

    /// The columns values of `topic` are read into: its latest `<topic>-value` schema's.
    pub fn reader_schema(&self, address: &KafkaAddress) -> Result<SchemaRef> {
        let subject = format!("{}-value", address.topic);
        let (id, schema) = self.latest(&subject)?.ok_or_else(|| {
            self.failed(
                &format!("/subjects/{subject}/versions/latest"),
                "the subject has no schema: was the topic written in Avro with this registry?",
            )
        })?;
        let decoder = self
            .decoder(&schema, &[(id, schema.clone())], 1)
            .map_err(|e| {
                self.failed(
                    &format!("/schemas/ids/{id}"),
                    format!("not a usable Avro schema: {e}"),
                )
            })?;
        *lock(&self.reader) = Some((id, schema));
        Ok(decoder.schema())
    }

    fn decoder(
        &self,
        reader: &AvroSchema,
        writers: &[(u32, AvroSchema)],
        rows: usize,
    ) -> std::result::Result<arrow_avro::reader::Decoder, arrow::error::ArrowError> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        for (id, schema) in writers {
            store.set(Fingerprint::Id(*id), schema.clone())?;
        }
        ReaderBuilder::new()
            .with_batch_size(rows.max(1))
            .with_reader_schema(reader.clone())
            .with_writer_schema_store(store)
            .build_decoder()
    }

    /// Decodes `events`' values into the reader schema's columns, or says which event
    /// (by index) does not decode and why.
    pub fn decode(
        &self,
        schema: &SchemaRef,
        events: &[Event],
    ) -> std::result::Result<Vec<ArrayRef>, (usize, String)> {
        let Some((_, reader)) = lock(&self.reader).clone() else {
            return Err((0, "internal: no reader schema".into()));
        };
        // Every writer schema the values name, fetched (once) and checked against the
        // reader schema before any is decoded.
        let mut writers: Vec<(u32, AvroSchema)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let Some(id) = wire_id(event.value.as_deref().unwrap_or_default()) else {
                return Err((i, "value is not Avro in the schema registry's wire format (a 0 byte, then a 4-byte schema id)".into()));
            };
            if writers.iter().any(|(w, _)| *w == id) {
                continue;
            }
            let schema = self.schema(id).map_err(|e| (i, e.to_string()))?;
            writers.push((id, schema));
            if let Err(e) = self.decoder(&reader, &writers, 1) {
                return Err((
                    i,
                    format!(
                        "schema id {id} does not resolve to the topic's latest value schema: {e}"
                    ),
                ));
            }
        }
        let mut decoder = self
            .decoder(&reader, &writers, events.len() + 1)
            .map_err(|e| (0, e.to_string()))?;
        let mut batches: Vec<RecordBatch> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let value = event.value.as_deref().unwrap_or_default();
            let bad = |e: arrow_avro::errors::AvroError| (i, format!("value does not decode: {e}"));
            let mut at = decoder.decode(value).map_err(bad)?;
            if at < value.len() {
                // A value written with another schema than the one before: the decoder
                // took its prefix and stops until the rows so far are a batch of their own.
                if let Some(batch) = decoder.flush().map_err(|e| (i, e.to_string()))? {
                    batches.push(batch);
                }
                at += decoder.decode(&value[at..]).map_err(bad)?;
            }
            if at != value.len() {
                return Err((
                    i,
                    format!("value has {} bytes after its Avro datum", value.len() - at),
                ));
            }
        }
        if let Some(batch) = decoder.flush().map_err(|e| (0, e.to_string()))? {
            batches.push(batch);
        }
        if batches.is_empty() {
            return Ok(schema
                .fields()
                .iter()
                .map(|f| arrow::array::new_empty_array(f.data_type()))
                .collect());
        }
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches)
            .map_err(|e| (0, e.to_string()))?;
        Ok(batch.columns().to_vec())
    }
}

/// The schema id of a value in the wire format.
fn wire_id(value: &[u8]) -> Option<u32> {
    match value {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn schema_text(body: &serde_json::Value) -> Option<String> {
    body["schema"].as_str().map(str::to_string)
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// What reqwest's error says beyond the URL (the message names the registry already).
fn without_url(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
