//! Rows written to a topic: one event per row, its value the row as JSON (or Avro in the
//! schema registry's wire format, its schema registered under `<topic>-value`; or one
//! column's text or bytes), its key the `keyColumns`' values (one column: its text;
//! several: a JSON object of them; none: no key). The producer is idempotent with
//! `acks=all`, and keyed events go to the partition Kafka's own clients would choose
//! (murmur2), so a key's events stay in order in one partition.

use std::time::Duration;

use arrow::array::{Array, ArrayRef, BinaryArray, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_avro::schema::{AvroSchema, FingerprintStrategy};
use arrow_avro::writer::format::AvroSoeFormat;
use arrow_avro::writer::{Encoder, WriterBuilder};
use ferry_core::{Error, KafkaAddress, Result, ValueFormat};
use rdkafka::producer::{BaseProducer, Producer};
use tokio::runtime::Handle;

use super::chunks;
use super::container::Event;
use super::registry::Registry;
use super::Delivered;

/// How rows become values.
enum Encoding {
    Json,
    Avro(Box<Encoder>),
    /// The value column (cast to text or taken as bytes).
    Column(usize),
}

/// Writes rows to a topic (blocking: run it on a thread of its own).
pub struct TopicWriter {
    address: KafkaAddress,
    producer: BaseProducer<Delivered>,
    encoding: Encoding,
    keys: Vec<usize>,
    schema: SchemaRef,
    /// The largest message the topic takes; larger rows go in chunks.
    max_message: usize,
    /// Names this writer's chunked messages (with a counter).
    run: String,
    chunked: u64,
    /// Value bytes sent.
    pub bytes: u64,
}

impl TopicWriter {
    /// Checks the columns against the address (key columns, value column), makes sure the
    /// topic exists (creating it with `createTopic`, with the cluster's default partition
    /// count), and for Avro registers the rows' schema.
    pub fn open(address: &KafkaAddress, schema: SchemaRef, handle: Handle) -> Result<TopicWriter> {
        address
            .check()
            .map_err(|(name, reason)| Error::invalid_option(name, reason))?;
        let column = |name: &str| {
            schema.index_of(name).map_err(|_| {
                Error::invalid_option(
                    "keyColumns",
                    format!(
                        "no column '{name}' among {}",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        };
        let keys = address
            .key_columns
            .iter()
            .map(|k| column(k))
            .collect::<Result<Vec<_>>>()?;
        let producer = super::producer(address)?;
        if super::topic_partitions(&producer, address)?.is_none() {
            if !address.create_topic {
                return Err(Error::not_found(format!(
                    "topic '{}' at {} (add ?createTopic=true to create it)",
                    address.topic,
                    address.bootstrap()
                )));
            }
            handle.block_on(super::create_topic(address, -1))?;
        }
        let max_message = handle.block_on(super::max_message_bytes(address))?;
        let encoding = match address.value_format {
            ValueFormat::Json => Encoding::Json,
            ValueFormat::Avro => {
                let avro = AvroSchema::try_from(schema.as_ref()).map_err(|e| {
                    Error::invalid_option(
                        "valueFormat",
                        format!("the rows have no Avro schema: {e}"),
                    )
                })?;
                let avro = with_null_defaults(avro);
                let registry = Registry::new(address, handle)?;
                let id = registry.register(&format!("{}-value", address.topic), &avro)?;
                let encoder = WriterBuilder::new(schema.as_ref().clone())
                    .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                    .build_encoder::<AvroSoeFormat>()
                    .map_err(|e| Error::Internal(format!("an Avro encoder: {e}")))?;
                Encoding::Avro(Box::new(encoder))
            }
            ValueFormat::String | ValueFormat::Bytes => {
                let index = match schema.index_of("value") {
                    Ok(i) => i,
                    Err(_) if schema.fields().len() == 1 => 0,
                    Err(_) => {
                        return Err(Error::invalid_option(
                            "valueFormat",
                            format!(
                                "{} values come from one column: name it 'value' or select only it",
                                address.value_format.name()
                            ),
                        ))
                    }
                };
                Encoding::Column(index)
            }
        };
        Ok(TopicWriter {
            address: address.clone(),
            producer,
            encoding,
            keys,
            schema,
            max_message,
            run: format!(
                "{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            chunked: 0,
            bytes: 0,
        })
    }

    /// Sends one event per row of `batch` (delivery is checked by [`finish`]).
    ///
    /// [`finish`]: TopicWriter::finish
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let values = self.values(batch)?;
        let keys = self.keys(batch)?;
        for (row, value) in values.into_iter().enumerate() {
            let key = keys.as_ref().and_then(|k| k[row].clone());
            self.bytes += value.as_ref().map_or(0, Vec::len) as u64;
            let event = Event {
                offset: 0,
                timestamp: -1,
                timestamp_type: 0,
                key,
                value,
                headers: Vec::new(),
            };
            if chunks::too_large(&event, self.max_message) {
                self.chunked += 1;
                let id = format!("{}-{}", self.run, self.chunked);
                for chunk in chunks::split(&event, self.max_message, &id) {
                    self.send(&chunk)?;
                }
            } else {
                self.send(&event)?;
            }
        }
        self.producer.poll(Duration::ZERO);
        match self.producer.context().error(&self.address) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn send(&self, event: &Event) -> Result<()> {
        super::send_event(&self.producer, &self.address, None, event)
    }

    /// Waits until every event is delivered; the first failed delivery is the error.
    pub fn finish(self) -> Result<u64> {
        self.producer
            .flush(Duration::from_secs(120))
            .map_err(|e| super::error(&self.address, None, e))?;
        match self.producer.context().error(&self.address) {
            Some(e) => Err(e),
            None => Ok(self.bytes),
        }
    }

    fn values(&mut self, batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        match &mut self.encoding {
            Encoding::Json => self.json_rows(batch),
            Encoding::Avro(encoder) => {
                encoder.encode(batch).map_err(|e| {
                    Error::data(self.address.topic_shown(), format!("Avro encoding: {e}"))
                })?;
                Ok(encoder
                    .flush()
                    .iter()
                    .map(|row| Some(row.to_vec()))
                    .collect())
            }
            Encoding::Column(index) => {
                let column = batch.column(*index);
                Ok(match self.address.value_format {
                    ValueFormat::Bytes => as_bytes(column)?,
                    _ => text(column)?
                        .iter()
                        .map(|v| v.map(|s| s.as_bytes().to_vec()))
                        .collect(),
                })
            }
        }
    }

    /// Each row's key, or `None` without key columns.
    fn keys(&self, batch: &RecordBatch) -> Result<Option<Vec<Option<Vec<u8>>>>> {
        match self.keys.as_slice() {
            [] => Ok(None),
            [one] => {
                let text = text(batch.column(*one))?;
                Ok(Some(
                    text.iter()
                        .map(|v| v.map(|s| s.as_bytes().to_vec()))
                        .collect(),
                ))
            }
            several => {
                let projected = batch
                    .project(several)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                self.json_rows(&projected).map(Some)
            }
        }
    }

    /// Each row of `batch` as a JSON object.
    fn json_rows(&self, batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(batch.get_array_memory_size());
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
        writer
            .write(batch)
            .and_then(|_| writer.finish())
            .map_err(|e| self.fail(e))?;
        // JSON escapes newlines inside strings: each line is one row.
        Ok(out
            .split(|b| *b == b'\n')
            .take(batch.num_rows())
            .map(|line| Some(line.to_vec()))
            .collect())
    }

    fn fail(&self, e: arrow::error::ArrowError) -> Error {
        Error::data(
            self.address.topic_shown(),
            format!(
                "encoding rows with columns {:?}: {e}",
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
            ),
        )
    }
}

/// The schema with `"default": null` on every nullable field, so that a registry checking
/// compatibility lets a later version add or drop such a column.
fn with_null_defaults(schema: AvroSchema) -> AvroSchema {
    fn walk(node: &mut serde_json::Value) {
        let Some(fields) = node.get_mut("fields").and_then(|f| f.as_array_mut()) else {
            return;
        };
        for field in fields {
            let nullable = field["type"]
                .as_array()
                .is_some_and(|t| t.first() == Some(&serde_json::Value::from("null")));
            if nullable && field.get("default").is_none() {
                field["default"] = serde_json::Value::Null;
            }
            walk(&mut field["type"]);
            if let Some(branches) = field["type"].as_array_mut() {
                branches.iter_mut().for_each(walk);
            }
        }
    }
    match serde_json::from_str::<serde_json::Value>(&schema.json_string) {
        Ok(mut json) => {
            walk(&mut json);
            AvroSchema::new(json.to_string())
        }
        Err(_) => schema,
    }
}

/// A column as text (numbers and dates in their usual form).
fn text(column: &ArrayRef) -> Result<StringArray> {
    let cast = arrow::compute::cast(column, &DataType::Utf8)
        .map_err(|e| Error::Internal(format!("a column as text: {e}")))?;
    Ok(cast
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .unwrap_or_else(|| StringArray::from(vec![None::<&str>; column.len()])))
}

fn as_bytes(column: &ArrayRef) -> Result<Vec<Option<Vec<u8>>>> {
    let cast = arrow::compute::cast(column, &DataType::Binary)
        .map_err(|e| Error::invalid_option("valueFormat", format!("bytes from a column: {e}")))?;
    let binary = cast
        .as_any()
        .downcast_ref::<BinaryArray>()
        .ok_or_else(|| Error::Internal("a binary column".into()))?;
    Ok(binary.iter().map(|v| v.map(<[u8]>::to_vec)).collect())
}
