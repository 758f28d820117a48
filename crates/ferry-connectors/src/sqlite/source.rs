//! Reading a table or query: declared types from the schema, one partition, values
//! checked against their column's type as they are converted.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use ferry_core::{Error, Result, TableAddress};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use tokio::sync::mpsc;

use crate::tables::{spawn_blocking_read, Selection, TablePartition, TableScan, TableSource};

use super::types::{
    arrow_field, parse_date, parse_decimal, parse_time, parse_timestamp, parse_uuid, SqlType,
};
use super::{blocking, connect, database_path, find_table, quote, sqlite_error, table_columns};

/// A batch is cut once its text and blob values take this many bytes.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// A table or query in an SQLite file, as a source of record batches.
pub struct SqliteSource {
    address: TableAddress,
    path: PathBuf,
    columns: Vec<SourceColumn>,
    /// The quoted table name, or the query as a subquery.
    from: String,
    estimated_rows: Option<u64>,
    bytes: u64,
    primary_key: Vec<String>,
}

#[derive(Clone, Debug)]
struct SourceColumn {
    name: String,
    declared: String,
    ty: SqlType,
    nullable: bool,
}

impl SourceColumn {
    fn field(&self) -> arrow::datatypes::Field {
        arrow_field(&self.name, &self.declared, self.ty, self.nullable)
    }
}

impl SqliteSource {
    /// Opens the file read-only, finds the table (or prepares the query) and maps its
    /// columns to Arrow. A missing file is an error, never created.
    pub async fn open(address: &TableAddress) -> Result<Self> {
        let address = address.clone();
        let path = database_path(&address)?;
        blocking(move || {
            let connection = connect(&address, &path, false)?;
            let err = |e| sqlite_error(&address, e);
            let mut primary_key = Vec::new();
            let (columns, from, estimated_rows, bytes) = match (&address.table, &address.query) {
                (Some(table), _) => {
                    let name = find_table(&connection, table)
                        .map_err(err)?
                        .ok_or_else(|| Error::not_found(format!("table '{table}' in {address}")))?;
                    let from = quote(&name);
                    let described = table_columns(&connection, &name).map_err(err)?;
                    let mut keys: Vec<_> = described.iter().filter(|c| c.pk > 0).collect();
                    keys.sort_by_key(|c| c.pk);
                    primary_key = keys.iter().map(|c| c.name.clone()).collect();
                    let names: Vec<String> = described.iter().map(|c| c.name.clone()).collect();
                    let declared: Vec<String> =
                        described.iter().map(|c| c.declared.clone()).collect();
                    let nullable: Vec<bool> = described.iter().map(|c| !c.not_null).collect();
                    let select = format!(
                        "SELECT {} FROM {from}",
                        names
                            .iter()
                            .map(|n| quote(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    let columns =
                        typed_columns(&connection, &address, &select, names, declared, nullable)?;
                    let rows = estimated_rows(&connection, &name);
                    let bytes = table_bytes(&connection, &name);
                    (columns, from, rows, bytes)
                }
                (None, Some(query)) => {
                    let query = query.trim().trim_end_matches(';').to_string();
                    let statement = connection.prepare(&query).map_err(err)?;
                    if !statement.readonly() {
                        return Err(Error::InvalidAddress {
                            address: address.to_string(),
                            reason: "the query would change the database; give a SELECT".into(),
                        });
                    }
                    let names: Vec<String> = statement.column_names().map(str::to_string).collect();
                    let declared: Vec<String> = statement
                        .columns()
                        .map(|c| c.decl_type().unwrap_or("").to_string())
                        .collect();
                    drop(statement);
                    let nullable = vec![true; names.len()];
                    let columns =
                        typed_columns(&connection, &address, &query, names, declared, nullable)?;
                    (columns, format!("({query}) AS q"), None, 0)
                }
                (None, None) => {
                    return Err(Error::InvalidAddress {
                        address: address.to_string(),
                        reason: "name a table or a query".into(),
                    })
                }
            };
            Ok(Self {
                address,
                path,
                columns,
                from,
                estimated_rows,
                bytes,
                primary_key,
            })
        })
        .await
    }
}

/// Columns with their types: from the declared type, or for a column without one, from
/// the storage class of its value in the first row (`select` returns the columns).
fn typed_columns(
    connection: &Connection,
    address: &TableAddress,
    select: &str,
    names: Vec<String>,
    declared: Vec<String>,
    nullable: Vec<bool>,
) -> Result<Vec<SourceColumn>> {
    let mut guessed: Vec<Option<SqlType>> =
        declared.iter().map(|d| SqlType::from_declared(d)).collect();
    if guessed.iter().any(Option::is_none) {
        let mut statement = connection
            .prepare(&format!("{select} LIMIT 1"))
            .map_err(|e| sqlite_error(address, e))?;
        let mut rows = statement.query([]).map_err(|e| sqlite_error(address, e))?;
        let first = rows.next().map_err(|e| sqlite_error(address, e))?;
        for (i, slot) in guessed.iter_mut().enumerate() {
            if slot.is_none() {
                let class = match first.map(|row| row.get_ref(i)) {
                    Some(Ok(ValueRef::Integer(_))) => "integer",
                    Some(Ok(ValueRef::Real(_))) => "real",
                    Some(Ok(ValueRef::Blob(_))) => "blob",
                    _ => "text",
                };
                *slot = Some(SqlType::from_storage_class(class));
            }
        }
    }
    Ok(names
        .into_iter()
        .zip(declared)
        .zip(guessed)
        .zip(nullable)
        .map(|(((name, declared), ty), nullable)| SourceColumn {
            name,
            declared,
            ty: ty.unwrap_or(SqlType::Text),
            nullable,
        })
        .collect())
}

/// Rows from `sqlite_stat1` (written by `ANALYZE`), when the table has been analyzed.
fn estimated_rows(connection: &Connection, table: &str) -> Option<u64> {
    let stat: String = connection
        .query_row(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = ?1 ORDER BY idx IS NOT NULL LIMIT 1",
            [table],
            |row| row.get(0),
        )
        .ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// The table's pages, from `dbstat` when SQLite has it, else the whole file's.
fn table_bytes(connection: &Connection, table: &str) -> u64 {
    let of_table = connection.query_row(
        "SELECT sum(pgsize) FROM dbstat WHERE name = ?1",
        [table],
        |row| row.get::<_, Option<i64>>(0),
    );
    if let Ok(Some(bytes)) = of_table {
        return bytes.max(0) as u64;
    }
    connection
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_or(0, |b| b.max(0) as u64)
}

#[async_trait]
impl TableSource for SqliteSource {
    fn address(&self) -> &TableAddress {
        &self.address
    }

    fn schema(&self) -> SchemaRef {
        schema_of(&self.columns)
    }

    fn estimated_rows(&self) -> Option<u64> {
        self.estimated_rows
    }

    fn estimated_bytes(&self) -> u64 {
        self.bytes
    }

    fn primary_key(&self) -> &[String] {
        &self.primary_key
    }

    /// One partition: a single statement reads one snapshot of the file, and SQLite on a
    /// local disk reads faster than partitions could be converted side by side.
    async fn scan(&self, selection: &Selection, _parallel: usize) -> Result<Box<dyn TableScan>> {
        let columns = selection.pick(&self.columns, |c| &c.name, &self.address)?;
        let list = if columns.is_empty() {
            "NULL".to_string()
        } else {
            columns
                .iter()
                .map(|c| quote(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut query = format!("SELECT {list} FROM {}", self.from);
        if let Some(filter) = &selection.filter {
            query.push_str(&format!(" WHERE ({filter})"));
        }
        Ok(Box::new(SqliteScan {
            inner: Arc::new(ScanInner {
                address: self.address.clone(),
                path: self.path.clone(),
                columns,
                query,
            }),
            partitions: vec![TablePartition {
                key: "all".into(),
                predicate: None,
            }],
        }))
    }
}

fn schema_of(columns: &[SourceColumn]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(SourceColumn::field).collect::<Vec<_>>(),
    ))
}

/// A planned read of one partition.
pub struct SqliteScan {
    inner: Arc<ScanInner>,
    partitions: Vec<TablePartition>,
}

struct ScanInner {
    address: TableAddress,
    path: PathBuf,
    columns: Vec<SourceColumn>,
    query: String,
}

impl TableScan for SqliteScan {
    fn partitions(&self) -> &[TablePartition] {
        &self.partitions
    }

    fn schema(&self) -> SchemaRef {
        schema_of(&self.inner.columns)
    }

    fn query(&self, _index: usize) -> String {
        self.inner.query.clone()
    }

    /// Reads on a blocking thread of its own; batches wait in a channel of two, so a slow
    /// consumer holds the reader back.
    fn read(&self, _index: usize, batch_rows: usize) -> mpsc::Receiver<Result<RecordBatch>> {
        let inner = self.inner.clone();
        spawn_blocking_read(move |tx| inner.read(batch_rows.max(1), tx))
    }
}

impl ScanInner {
    fn read(&self, batch_rows: usize, tx: &mpsc::Sender<Result<RecordBatch>>) -> Result<()> {
        let address = &self.address;
        let err = |e| sqlite_error(address, e);
        let connection = connect(address, &self.path, false)?;
        let mut statement = connection.prepare(&self.query).map_err(err)?;
        let mut rows = statement.query([]).map_err(err)?;
        let schema = schema_of(&self.columns);
        let mut builders: Vec<ColumnBuilder> = self
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(c.ty, batch_rows))
            .collect();
        let (mut in_batch, mut bytes, mut row_number) = (0usize, 0usize, 0u64);
        while let Some(row) = rows.next().map_err(err)? {
            row_number += 1;
            for (i, builder) in builders.iter_mut().enumerate() {
                let value = row.get_ref(i).map_err(err)?;
                bytes += match value {
                    ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
                    _ => 8,
                };
                builder.push(value).map_err(|reason| {
                    let column = &self.columns[i];
                    Error::data(
                        address,
                        format!(
                            "column '{}' row {row_number}: {reason}, not {} (declared {}); read it through a query that converts it, e.g. ?query=SELECT CAST(\"{}\" AS TEXT) AS \"{}\" …",
                            column.name,
                            column.ty.describe(),
                            if column.declared.is_empty() { "without a type" } else { &column.declared },
                            column.name,
                            column.name,
                        ),
                    )
                })?;
            }
            in_batch += 1;
            if in_batch >= batch_rows || bytes >= MAX_BATCH_BYTES {
                let batch = finish_batch(&schema, &mut builders, in_batch)?;
                if tx.blocking_send(Ok(batch)).is_err() {
                    return Ok(()); // the consumer stopped
                }
                (in_batch, bytes) = (0, 0);
            }
        }
        if in_batch > 0 {
            let batch = finish_batch(&schema, &mut builders, in_batch)?;
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(())
    }
}

fn finish_batch(
    schema: &SchemaRef,
    builders: &mut [ColumnBuilder],
    rows: usize,
) -> Result<RecordBatch> {
    let arrays: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
    RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| Error::Internal(format!("sqlite batch: {e}")))
}

/// Values of one column on their way into Arrow.
enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Blob(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Time(Time64MicrosecondBuilder),
    Uuid(FixedSizeBinaryBuilder),
}

impl ColumnBuilder {
    fn new(ty: SqlType, rows: usize) -> Self {
        match ty {
            SqlType::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            SqlType::Int16 => Self::Int16(Int16Builder::with_capacity(rows)),
            SqlType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            SqlType::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            SqlType::Decimal(p, s) => Self::Decimal(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(p, s)
                    .unwrap_or_default(),
                p,
                s,
            ),
            SqlType::Text => Self::Text(StringBuilder::new()),
            SqlType::Blob => Self::Blob(BinaryBuilder::new()),
            SqlType::Date => Self::Date(Date32Builder::with_capacity(rows)),
            SqlType::Timestamp => Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows)),
            SqlType::TimestampTz => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            SqlType::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(rows)),
            SqlType::Uuid => Self::Uuid(FixedSizeBinaryBuilder::with_capacity(rows, 16)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b, ..) => Arc::new(b.finish()),
            Self::Text(b) => Arc::new(b.finish()),
            Self::Blob(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Uuid(b) => Arc::new(b.finish()),
        }
    }

    /// Appends one value; the error says what the value is.
    fn push(&mut self, value: ValueRef<'_>) -> std::result::Result<(), String> {
        if value == ValueRef::Null {
            match self {
                Self::Bool(b) => b.append_null(),
                Self::Int16(b) => b.append_null(),
                Self::Int64(b) => b.append_null(),
                Self::Float64(b) => b.append_null(),
                Self::Decimal(b, ..) => b.append_null(),
                Self::Text(b) => b.append_null(),
                Self::Blob(b) => b.append_null(),
                Self::Date(b) => b.append_null(),
                Self::Timestamp(b) => b.append_null(),
                Self::Time(b) => b.append_null(),
                Self::Uuid(b) => b.append_null(),
            }
            return Ok(());
        }
        let wrong = || Err(show(value));
        match (self, value) {
            (Self::Bool(b), ValueRef::Integer(i @ (0 | 1))) => b.append_value(i == 1),
            (Self::Bool(b), ValueRef::Text(t)) if t.eq_ignore_ascii_case(b"true") => {
                b.append_value(true)
            }
            (Self::Bool(b), ValueRef::Text(t)) if t.eq_ignore_ascii_case(b"false") => {
                b.append_value(false)
            }
            (Self::Int16(b), ValueRef::Integer(i)) => match i16::try_from(i) {
                Ok(v) => b.append_value(v),
                Err(_) => return wrong(),
            },
            (Self::Int16(b), ValueRef::Real(f)) => {
                match whole(f).and_then(|i| i16::try_from(i).ok()) {
                    Some(v) => b.append_value(v),
                    None => return wrong(),
                }
            }
            (Self::Int64(b), ValueRef::Integer(i)) => b.append_value(i),
            (Self::Int64(b), ValueRef::Real(f)) => match whole(f) {
                Some(v) => b.append_value(v),
                None => return wrong(),
            },
            (Self::Float64(b), ValueRef::Real(f)) => b.append_value(f),
            (Self::Float64(b), ValueRef::Integer(i)) => {
                // Exact only up to 2^53.
                if (i as f64) as i128 != i as i128 {
                    return Err(format!("{} (too large for a double exactly)", show(value)));
                }
                b.append_value(i as f64)
            }
            (Self::Decimal(b, p, s), v) => {
                let text = match v {
                    ValueRef::Integer(i) => i.to_string(),
                    ValueRef::Real(f) => format!("{f}"),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    _ => return wrong(),
                };
                match parse_decimal(&text, *p, *s) {
                    Some(v) => b.append_value(v),
                    None => {
                        return Err(format!(
                            "{} (does not fit DECIMAL({p},{s}) exactly)",
                            show(value)
                        ))
                    }
                }
            }
            (Self::Text(b), ValueRef::Text(t)) => match std::str::from_utf8(t) {
                Ok(s) => b.append_value(s),
                Err(_) => return Err("text that is not valid UTF-8".into()),
            },
            (Self::Text(b), ValueRef::Integer(i)) => b.append_value(i.to_string()),
            (Self::Text(b), ValueRef::Real(f)) => b.append_value(format!("{f:?}")),
            (Self::Blob(b), ValueRef::Blob(v)) => b.append_value(v),
            (Self::Date(b), ValueRef::Text(t)) => {
                match std::str::from_utf8(t).ok().and_then(parse_date) {
                    Some(days) if i32::try_from(days).is_ok() => b.append_value(days as i32),
                    _ => return wrong(),
                }
            }
            (Self::Timestamp(b), ValueRef::Text(t)) => {
                match std::str::from_utf8(t).ok().and_then(parse_timestamp) {
                    Some(micros) => b.append_value(micros),
                    None => return wrong(),
                }
            }
            (Self::Timestamp(b), ValueRef::Integer(secs)) => match secs.checked_mul(1_000_000) {
                Some(micros) => b.append_value(micros),
                None => return wrong(),
            },
            (Self::Time(b), ValueRef::Text(t)) => {
                match std::str::from_utf8(t).ok().and_then(parse_time) {
                    Some(micros) => b.append_value(micros),
                    None => return wrong(),
                }
            }
            (Self::Uuid(b), ValueRef::Text(t)) => {
                match std::str::from_utf8(t).ok().and_then(parse_uuid) {
                    Some(bytes) => b.append_value(bytes).map_err(|e| e.to_string())?,
                    None => return wrong(),
                }
            }
            (Self::Uuid(b), ValueRef::Blob(v)) if v.len() == 16 => {
                b.append_value(v).map_err(|e| e.to_string())?
            }
            _ => return wrong(),
        }
        Ok(())
    }
}

/// A real that holds a whole number within i64.
fn whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f))
        .then_some(f as i64)
}

/// A value as a message shows it (short, storage class first).
fn show(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => format!("integer {i}"),
        ValueRef::Real(f) => format!("real {f:?}"),
        ValueRef::Text(t) => {
            let text = String::from_utf8_lossy(t);
            let short: String = text.chars().take(40).collect();
            let more = if short.len() < text.len() { "…" } else { "" };
            format!("text '{short}{more}'")
        }
        ValueRef::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}
