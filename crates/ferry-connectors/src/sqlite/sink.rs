//! Loading a table: a staging table in the same file, filled by one writer in
//! transactions of many rows, then one transaction that renames or merges it into the
//! target. SQLite's DDL is transactional, so the staging table is gone exactly when the
//! commit happened.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::*;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use ferry_core::{Error, Result, TableAddress, WriteMode};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags};

use crate::tables::{
    check_key_columns, fields_to_add, is_change_column, is_change_stream, target_column, TableLoad,
    TableWriter, TargetState, CHANGE_DELETED, CHANGE_SEQ,
};

use super::types::{
    declared_for, format_date, format_time, format_timestamp, format_uuid, SqlType,
};
use super::{
    blocking, connect, database_path, find_table, quote, sqlite_error, table_columns, TableColumn,
    BUSY_TIMEOUT,
};

/// Rows the writer inserts per transaction: large enough that commits cost nothing, small
/// enough that the write-ahead log is checkpointed as the load goes.
const ROWS_PER_TRANSACTION: u64 = 65_536;

const META_EXTENSION: &str = "ARROW:extension:name";
const UUID_EXTENSION: &str = "arrow.uuid";

/// A load into one table, planned and checked before any row moves.
pub struct SqliteLoad {
    address: TableAddress,
    path: PathBuf,
    file_existed: bool,
    /// The target's name as SQLite spells it (or as given, for a new table).
    target_name: String,
    target_exists: bool,
    staging_name: String,
    /// The target's columns for the incoming fields, in the same order.
    columns: Vec<LoadColumn>,
    /// The staging table's column definitions (and a new table's primary key).
    definitions: Vec<String>,
    /// Key columns as the target names them.
    keys: Vec<String>,
    mode: WriteMode,
    /// The rows are changes ([`is_change_stream`]): staged with the change columns and
    /// without the target's constraints, merged keeping each key's last change.
    changes: bool,
    /// A new table's definitions when the rows are changes (the staging table's differ).
    target_definitions: Vec<String>,
    /// `ALTER TABLE … ADD COLUMN` for new fields (schemaEvolution: addColumns), run first.
    add_columns: Vec<String>,
}

#[derive(Clone, Debug)]
struct LoadColumn {
    name: String,
    /// What the target reads the column as; None when it has no declared type.
    ty: Option<SqlType>,
    not_null: bool,
}

impl SqliteLoad {
    /// Checks that rows of `schema` fit the table: every column exists with a type the
    /// values can be written as; for upsert, the key columns are present and form the
    /// primary key or a unique index. When the table (or the file) does not exist, plans
    /// to create it from the Arrow types. Nothing is created or changed yet.
    pub async fn prepare(address: &TableAddress, schema: SchemaRef, load_id: &str) -> Result<Self> {
        let Some(table) = address.table.clone() else {
            return Err(Error::InvalidAddress {
                address: address.to_string(),
                reason: "a query can only be read from; name a table (?table=name) to write".into(),
            });
        };
        let address = address.clone();
        let path = database_path(&address)?;
        check_key_columns(&address, &schema)?;
        for field in schema.fields() {
            check_writable(field).map_err(|reason| {
                Error::data(&address, format!("column '{}': {reason}", field.name()))
            })?;
        }
        let load_id = load_id.to_string();
        blocking(move || {
            let file_existed = path.exists();
            let connection = if file_existed {
                Some(connect(&address, &path, false)?)
            } else {
                None
            };
            let found = match &connection {
                Some(c) => find_table(c, &table).map_err(|e| sqlite_error(&address, e))?,
                None => None,
            };
            let mode = address.mode;
            let mut load = Self {
                staging_name: staging_name(found.as_deref().unwrap_or(&table), &load_id),
                target_name: found.clone().unwrap_or(table),
                target_exists: found.is_some(),
                address,
                path,
                file_existed,
                columns: Vec::new(),
                definitions: Vec::new(),
                keys: Vec::new(),
                mode,
                changes: mode == WriteMode::Upsert && is_change_stream(&schema),
                target_definitions: Vec::new(),
                add_columns: Vec::new(),
            };
            match (&connection, found) {
                (Some(connection), Some(name)) => load.plan_existing(connection, &name, &schema)?,
                _ => load.plan_new(&schema),
            }
            Ok(load)
        })
        .await
    }

    fn plan_existing(
        &mut self,
        connection: &Connection,
        name: &str,
        schema: &SchemaRef,
    ) -> Result<()> {
        let address = &self.address.clone();
        let existing = table_columns(connection, name).map_err(|e| sqlite_error(address, e))?;
        let shown = format!("'{name}'");
        let added = fields_to_add(&existing, |c| &c.name, schema, address, &shown)?;
        for field in schema.fields() {
            if self.changes && is_change_column(field.name()) {
                self.push_change_column(field.name());
                continue;
            }
            if added.contains(field.name()) {
                let declared = declared_for(field);
                let definition = format!("{} {declared}", quote(field.name()));
                self.add_columns.push(format!(
                    "ALTER TABLE {} ADD COLUMN {definition}",
                    self.target()
                ));
                self.definitions.push(definition);
                self.columns.push(LoadColumn {
                    name: field.name().clone(),
                    ty: SqlType::from_declared(&declared),
                    not_null: false,
                });
                continue;
            }
            let column = target_column(&existing, |c| &c.name, field.name(), address, &shown)?;
            if column.generated {
                return Err(Error::data(
                    address,
                    format!("column '{}' of table '{name}' is generated and cannot be written; remove it (RemoveColumn)", column.name),
                ));
            }
            let ty = SqlType::from_declared(&column.declared);
            if let Some(ty) = ty {
                if !ty.accepts(field.data_type()) {
                    return Err(Error::data(
                        address,
                        format!(
                            "column '{}' of table '{name}' is declared {}: values of type {} cannot be written into it",
                            column.name, column.declared, field.data_type()
                        ),
                    ));
                }
            }
            self.definitions.push(format!(
                "{} {}{}",
                quote(&column.name),
                column.declared,
                if column.not_null && !self.changes {
                    " NOT NULL"
                } else {
                    ""
                }
            ));
            self.columns.push(LoadColumn {
                name: column.name.clone(),
                ty,
                not_null: column.not_null,
            });
        }
        self.keys = address
            .key_columns
            .iter()
            .map(|k| {
                existing
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(k))
                    .map_or(k.clone(), |c| c.name.clone())
            })
            .collect();
        if self.mode == WriteMode::Upsert {
            check_unique_key(connection, address, name, &existing, &self.keys)?;
        }
        Ok(())
    }

    /// A change column of the staging table, untyped.
    fn push_change_column(&mut self, name: &str) {
        self.definitions.push(quote(name));
        self.columns.push(LoadColumn {
            name: name.to_string(),
            ty: None,
            not_null: false,
        });
    }

    fn plan_new(&mut self, schema: &SchemaRef) {
        for field in schema.fields() {
            if self.changes && is_change_column(field.name()) {
                self.push_change_column(field.name());
                continue;
            }
            let declared = declared_for(field);
            let not_null = !field.is_nullable();
            let definition = format!(
                "{} {declared}{}",
                quote(field.name()),
                if not_null { " NOT NULL" } else { "" }
            );
            if self.changes {
                self.target_definitions.push(definition);
                self.definitions
                    .push(format!("{} {declared}", quote(field.name())));
            } else {
                self.definitions.push(definition);
            }
            self.columns.push(LoadColumn {
                name: field.name().clone(),
                ty: SqlType::from_declared(&declared),
                not_null,
            });
        }
        self.keys = self
            .address
            .key_columns
            .iter()
            .map(|k| {
                self.columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(k))
                    .map_or(k.clone(), |c| c.name.clone())
            })
            .collect();
        if self.changes {
            self.target_definitions
                .push(format!("PRIMARY KEY ({})", self.key_list()));
        } else if self.mode == WriteMode::Upsert {
            // The new table is renamed into place, key and all.
            self.definitions
                .push(format!("PRIMARY KEY ({})", self.key_list()));
        }
    }

    /// The statements that merge staged changes (the target created first when new): of
    /// each key's changes only the last (highest offset) counts, a tombstone deleting the
    /// key's row and anything else inserting or updating it.
    fn merge_changes(&self) -> Vec<String> {
        let (target, staging, keys) = (self.target(), self.staging(), self.key_list());
        let mut sql = Vec::new();
        if !self.target_exists {
            sql.push(format!(
                "CREATE TABLE {target} ({})",
                self.target_definitions.join(", ")
            ));
        }
        let last = format!(
            "(SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {} DESC) AS __ferry_n FROM {staging}) WHERE __ferry_n = 1)",
            quote(CHANGE_SEQ)
        );
        let deleted = quote(CHANGE_DELETED);
        sql.push(format!(
            "DELETE FROM {target} WHERE ({keys}) IN (SELECT {keys} FROM {last} WHERE {deleted})"
        ));
        let list = list(
            self.columns
                .iter()
                .map(|c| c.name.as_str())
                .filter(|c| !is_change_column(c)),
        );
        sql.push(format!(
            "INSERT INTO {target} ({list}) SELECT {list} FROM {last} WHERE NOT {deleted} ON CONFLICT ({keys}) {}",
            self.on_conflict()
        ));
        sql.push(format!("DROP TABLE {staging}"));
        sql
    }

    /// What an upsert does to a row whose key exists.
    fn on_conflict(&self) -> String {
        crate::tables::on_conflict(self.columns.iter().map(|c| c.name.as_str()), &self.keys)
    }

    fn column_list(&self) -> String {
        list(self.columns.iter().map(|c| c.name.as_str()))
    }

    fn key_list(&self) -> String {
        list(self.keys.iter().map(String::as_str))
    }

    fn target(&self) -> String {
        quote(&self.target_name)
    }

    fn staging(&self) -> String {
        quote(&self.staging_name)
    }
}

fn rename_staging(error: Error, address: &TableAddress, staging: &str, target: &str) -> Error {
    let text = error.to_string();
    if !text.contains(staging) {
        return error;
    }
    let shown = text.replace(staging, target);
    let prefix = format!("{address}: ");
    Error::store(address, shown.strip_prefix(&prefix).unwrap_or(&shown))
}

#[async_trait]
impl TableLoad for SqliteLoad {
    fn target(&self) -> &str {
        &self.target_name
    }

    /// A dropped and recreated table gets a new root page; an emptied one keeps it, and
    /// only its row count tells.
    async fn target_state(&self, count_rows: bool) -> Result<Option<TargetState>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let (address, path) = (self.address.clone(), self.path.clone());
        let (name, quoted) = (self.target_name.clone(), self.target());
        blocking(move || {
            let connection = connect(&address, &path, false)?;
            let err = |e| sqlite_error(&address, e);
            let root: Option<i64> = connection
                .query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                    [&name],
                    |row| row.get(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .map_err(err)?;
            let Some(root) = root else {
                return Ok(None);
            };
            let rows = match count_rows {
                false => None,
                true => {
                    let sql = format!("SELECT count(*) FROM {quoted}");
                    let n: i64 = connection.query_row(&sql, [], |r| r.get(0)).map_err(err)?;
                    Some(n.max(0) as u64)
                }
            };
            Ok(Some(TargetState {
                identity: format!("root page {root}"),
                rows,
            }))
        })
        .await
    }

    fn creates_target(&self) -> bool {
        !self.target_exists
    }

    /// SQLite has one writer at a time.
    fn max_writers(&self) -> usize {
        1
    }

    async fn staging_exists(&self) -> Result<bool> {
        if !self.path.exists() {
            return Ok(false);
        }
        let (address, path, staging) = (
            self.address.clone(),
            self.path.clone(),
            self.staging_name.clone(),
        );
        blocking(move || {
            let connection = connect(&address, &path, false)?;
            find_table(&connection, &staging)
                .map(|found| found.is_some())
                .map_err(|e| sqlite_error(&address, e))
        })
        .await
    }

    /// Creates the file when missing (in write-ahead-log mode, so readers of the file
    /// are not held up by the load) and an empty staging table, replacing one an
    /// interrupted run left.
    async fn create_staging(&mut self) -> Result<()> {
        let mut sql: String = self.add_columns.iter().map(|a| format!("{a}; ")).collect();
        sql.push_str(&format!(
            "DROP TABLE IF EXISTS {staging}; CREATE TABLE {staging} ({});",
            self.definitions.join(", "),
            staging = self.staging()
        ));
        let (address, path) = (self.address.clone(), self.path.clone());
        blocking(move || {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), &e))?;
            }
            let connection = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| sqlite_error(&address, e))?;
            connection
                .busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| sqlite_error(&address, e))?;
            let err = |e| sqlite_error(&address, e);
            connection
                .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                .map_err(err)?;
            connection.execute_batch(&sql).map_err(err)
        })
        .await
    }

    async fn writer(&self, schema: &SchemaRef) -> Result<Box<dyn TableWriter>> {
        let connection = {
            let load = self.describe();
            blocking(move || {
                let connection = connect(&load.address, &load.path, true)?;
                // The staging table is ours alone; the final commit is the durable step.
                connection
                    .execute_batch("PRAGMA synchronous = NORMAL")
                    .map_err(|e| sqlite_error(&load.address, e))?;
                Ok(connection)
            })
            .await?
        };
        let placeholders = vec!["?"; self.columns.len()].join(", ");
        Ok(Box::new(SqliteWriter {
            connection: Some(connection),
            insert: format!(
                "INSERT INTO {} ({}) VALUES ({placeholders})",
                self.staging(),
                self.column_list()
            ),
            schema: schema.clone(),
            columns: Arc::new(self.columns.clone()),
            rows: 0,
            uncommitted: 0,
            load: self.describe(),
        }))
    }

    /// Makes the staged rows the table's in one transaction: a new table is renamed into
    /// place; `overwrite` replaces an existing table's rows, `append` adds to them and
    /// `upsert` inserts or updates by key.
    async fn commit(&self) -> Result<()> {
        let mut sql = Vec::new();
        let (target, staging, list) = (self.target(), self.staging(), self.column_list());
        if self.changes {
            sql = self.merge_changes();
        } else if !self.target_exists {
            sql.push(format!("ALTER TABLE {staging} RENAME TO {target}"));
        } else {
            let insert = format!("INSERT INTO {target} ({list}) SELECT {list} FROM {staging}");
            match self.mode {
                WriteMode::Overwrite => {
                    sql.push(format!("DELETE FROM {target}"));
                    sql.push(insert);
                }
                WriteMode::Append => sql.push(insert),
                WriteMode::Upsert => {
                    // `WHERE true` keeps SQLite from reading ON as a join constraint.
                    sql.push(format!(
                        "{insert} WHERE true ON CONFLICT ({}) {}",
                        self.key_list(),
                        self.on_conflict()
                    ));
                }
            }
            sql.push(format!("DROP TABLE {staging}"));
        }
        let load = self.describe();
        blocking(move || {
            let connection = connect(&load.address, &load.path, true)?;
            connection
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| load.error(e))?;
            let result = sql
                .iter()
                .try_for_each(|s| connection.execute_batch(s))
                .and_then(|()| connection.execute_batch("COMMIT"));
            if let Err(e) = result {
                let _ = connection.execute_batch("ROLLBACK");
                return Err(load.error(e));
            }
            Ok(())
        })
        .await
    }

    /// Drops the staging table; a file this load created and left empty is removed.
    async fn discard(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let load = self.describe();
        let (staging, remove_file) = (self.staging(), !self.file_existed);
        blocking(move || {
            let connection = connect(&load.address, &load.path, true)?;
            let err = |e| sqlite_error(&load.address, e);
            connection
                .execute_batch(&format!("DROP TABLE IF EXISTS {staging}"))
                .map_err(err)?;
            let objects: i64 = connection
                .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                .map_err(err)?;
            drop(connection);
            if remove_file && objects == 0 {
                for suffix in ["", "-wal", "-shm"] {
                    let mut name = load.path.clone().into_os_string();
                    name.push(suffix);
                    let _ = std::fs::remove_file(name);
                }
            }
            Ok(())
        })
        .await
    }
}

impl SqliteLoad {
    fn describe(&self) -> LoadNames {
        LoadNames {
            address: self.address.clone(),
            path: self.path.clone(),
            staging_name: self.staging_name.clone(),
            target_name: self.target_name.clone(),
        }
    }
}

/// What the writer and the blocking steps need to open the file and name the target.
#[derive(Clone)]
struct LoadNames {
    address: TableAddress,
    path: PathBuf,
    staging_name: String,
    target_name: String,
}

impl LoadNames {
    fn error(&self, e: rusqlite::Error) -> Error {
        rename_staging(
            sqlite_error(&self.address, e),
            &self.address,
            &self.staging_name,
            &self.target_name,
        )
    }
}

/// The one stream of rows into the staging table.
pub struct SqliteWriter {
    /// Moved to the blocking thread while a batch is written.
    connection: Option<Connection>,
    insert: String,
    schema: SchemaRef,
    columns: Arc<Vec<LoadColumn>>,
    rows: u64,
    uncommitted: u64,
    load: LoadNames,
}

#[async_trait]
impl TableWriter for SqliteWriter {
    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let connection = self
            .connection
            .take()
            .ok_or_else(|| Error::Internal("sqlite writer used after a failure".into()))?;
        let rows_in_batch = batch.num_rows() as u64;
        let batch = batch.clone();
        let (insert, schema, columns, load) = (
            self.insert.clone(),
            self.schema.clone(),
            self.columns.clone(),
            self.load.clone(),
        );
        let (rows, mut uncommitted) = (self.rows, self.uncommitted);
        let connection = blocking(move || {
            let err = |e| load.error(e);
            if uncommitted == 0 {
                connection.execute_batch("BEGIN").map_err(err)?;
            }
            insert_batch(&connection, &insert, &schema, &columns, &batch, rows, &load)?;
            uncommitted += batch.num_rows() as u64;
            if uncommitted >= ROWS_PER_TRANSACTION {
                connection.execute_batch("COMMIT").map_err(err)?;
            }
            Ok(connection)
        })
        .await?;
        self.rows += rows_in_batch;
        self.uncommitted = if self.uncommitted + rows_in_batch >= ROWS_PER_TRANSACTION {
            0
        } else {
            self.uncommitted + rows_in_batch
        };
        self.connection = Some(connection);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let connection = self
            .connection
            .take()
            .ok_or_else(|| Error::Internal("sqlite writer used after a failure".into()))?;
        let (uncommitted, load) = (self.uncommitted, self.load.clone());
        blocking(move || {
            if uncommitted > 0 {
                connection
                    .execute_batch("COMMIT")
                    .map_err(|e| load.error(e))?;
            }
            Ok(())
        })
        .await?;
        Ok(self.rows)
    }
}

/// Inserts every row of `batch`; `before` rows came earlier (for row numbers in messages).
fn insert_batch(
    connection: &Connection,
    insert: &str,
    schema: &SchemaRef,
    columns: &[LoadColumn],
    batch: &RecordBatch,
    before: u64,
    load: &LoadNames,
) -> Result<()> {
    let location = format!("{} (table '{}')", load.address, load.target_name);
    let values: Vec<Values> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(array, field)| {
            Values::new(field, array)
                .map_err(|e| Error::data(&location, format!("column '{}': {e}", field.name())))
        })
        .collect::<Result<_>>()?;
    let mut statement = connection.prepare(insert).map_err(|e| load.error(e))?;
    for row in 0..batch.num_rows() {
        for (i, (value, column)) in values.iter().zip(columns).enumerate() {
            let bound = value.get(row, column.ty).and_then(|v| match v {
                ToSqlOutput::Owned(Value::Null) if column.not_null => {
                    Err("NULL, but the column is NOT NULL".to_string())
                }
                v => Ok(v),
            });
            let bound = bound.map_err(|reason| {
                Error::data(
                    &location,
                    format!(
                        "column '{}' row {}: {reason}; the table is unchanged",
                        column.name,
                        before + row as u64 + 1
                    ),
                )
            })?;
            statement
                .raw_bind_parameter(i + 1, bound)
                .map_err(|e| load.error(e))?;
        }
        statement.raw_execute().map_err(|e| {
            let error = load.error(e);
            Error::data(
                &location,
                format!("row {}: {error}", before + row as u64 + 1),
            )
        })?;
    }
    Ok(())
}

/// Whether the writer can turn values of `field` into SQLite values.
fn check_writable(field: &Field) -> std::result::Result<(), String> {
    Values::new(field, &new_empty_array(field.data_type())).map(|_| ())
}

/// One column of a batch, in the form its values are bound from.
enum Values {
    Null,
    Bool(BooleanArray),
    Int(Int64Array),
    UInt64(UInt64Array),
    Float(Float64Array),
    Text(StringArray),
    Blob(BinaryArray),
    FixedBlob(FixedSizeBinaryArray),
    Uuid(FixedSizeBinaryArray),
    Date(Date32Array),
    /// Raw values and nanoseconds per unit.
    Timestamp(Int64Array, i128, bool),
    Time(Int64Array, i64),
    /// Lists, structs and maps as JSON text.
    Json(Vec<Option<String>>, Option<arrow::buffer::NullBuffer>),
}

impl Values {
    fn new(field: &Field, array: &ArrayRef) -> std::result::Result<Self, String> {
        use DataType as D;
        let to = |dt: &DataType| cast(array, dt).map_err(|e| e.to_string());
        let is_uuid =
            field.metadata().get(META_EXTENSION).map(String::as_str) == Some(UUID_EXTENSION);
        Ok(match array.data_type() {
            D::Null => Values::Null,
            D::Boolean => Values::Bool(array.as_boolean().clone()),
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 => {
                Values::Int(to(&D::Int64)?.as_primitive().clone())
            }
            D::UInt64 => Values::UInt64(array.as_primitive().clone()),
            D::Float16 | D::Float32 | D::Float64 => {
                Values::Float(to(&D::Float64)?.as_primitive().clone())
            }
            D::Utf8 => Values::Text(array.as_string::<i32>().clone()),
            D::LargeUtf8
            | D::Utf8View
            | D::Decimal32(..)
            | D::Decimal64(..)
            | D::Decimal128(..)
            | D::Decimal256(..)
            | D::Interval(_)
            | D::Duration(_) => Values::Text(to(&D::Utf8)?.as_string::<i32>().clone()),
            D::Dictionary(_, _) => Values::Text(to(&D::Utf8)?.as_string::<i32>().clone()),
            D::Binary => Values::Blob(array.as_binary::<i32>().clone()),
            D::LargeBinary | D::BinaryView => {
                Values::Blob(to(&D::Binary)?.as_binary::<i32>().clone())
            }
            D::FixedSizeBinary(16) if is_uuid => Values::Uuid(array.as_fixed_size_binary().clone()),
            D::FixedSizeBinary(_) => Values::FixedBlob(array.as_fixed_size_binary().clone()),
            D::Date32 => Values::Date(array.as_primitive().clone()),
            D::Date64 => Values::Date(to(&D::Date32)?.as_primitive().clone()),
            D::Timestamp(unit, tz) => Values::Timestamp(
                to(&D::Int64)?.as_primitive().clone(),
                nanos_per(unit) as i128,
                tz.is_some(),
            ),
            D::Time32(_) => Values::Time(
                to(&D::Int64)?.as_primitive().clone(),
                match array.data_type() {
                    D::Time32(TimeUnit::Second) => 1_000_000_000,
                    _ => 1_000_000,
                },
            ),
            D::Time64(unit) => Values::Time(to(&D::Int64)?.as_primitive().clone(), nanos_per(unit)),
            D::List(_) | D::LargeList(_) | D::FixedSizeList(..) | D::Struct(_) | D::Map(..) => {
                json_texts(field, array)?
            }
            other => {
                return Err(format!(
                    "values of type {other} cannot be written to SQLite"
                ))
            }
        })
    }

    /// The SQLite value of `row`, checked against the target column's type.
    fn get(
        &self,
        row: usize,
        target: Option<SqlType>,
    ) -> std::result::Result<ToSqlOutput<'_>, String> {
        let null = ToSqlOutput::Owned(Value::Null);
        let int = |i: i64| ToSqlOutput::Owned(Value::Integer(i));
        let text = |s: String| ToSqlOutput::Owned(Value::Text(s));
        Ok(match self {
            Values::Null => null,
            Values::Bool(a) => match a.is_null(row) {
                true => null,
                false => int(i64::from(a.value(row))),
            },
            Values::Int(a) => match a.is_null(row) {
                true => null,
                false => {
                    let v = a.value(row);
                    if target == Some(SqlType::Int16) && i16::try_from(v).is_err() {
                        return Err(format!("{v} does not fit the column's SMALLINT range"));
                    }
                    int(v)
                }
            },
            Values::UInt64(a) => match a.is_null(row) {
                true => null,
                false => {
                    let v = a.value(row);
                    let v = i64::try_from(v)
                        .map_err(|_| format!("{v} is larger than SQLite's largest integer"))?;
                    if target == Some(SqlType::Int16) && i16::try_from(v).is_err() {
                        return Err(format!("{v} does not fit the column's SMALLINT range"));
                    }
                    int(v)
                }
            },
            Values::Float(a) => match a.is_null(row) {
                true => null,
                false => {
                    let v = a.value(row);
                    if v.is_nan() {
                        return Err("NaN, which SQLite would store as NULL".into());
                    }
                    ToSqlOutput::Owned(Value::Real(v))
                }
            },
            Values::Text(a) => match a.is_null(row) {
                true => null,
                false => ToSqlOutput::Borrowed(ValueRef::Text(a.value(row).as_bytes())),
            },
            Values::Blob(a) => match a.is_null(row) {
                true => null,
                false => ToSqlOutput::Borrowed(ValueRef::Blob(a.value(row))),
            },
            Values::FixedBlob(a) => match a.is_null(row) {
                true => null,
                false => ToSqlOutput::Borrowed(ValueRef::Blob(a.value(row))),
            },
            Values::Uuid(a) => match a.is_null(row) {
                true => null,
                false => text(format_uuid(a.value(row))),
            },
            Values::Date(a) => match a.is_null(row) {
                true => null,
                false => text(format_date(i64::from(a.value(row)))),
            },
            Values::Timestamp(a, per, tz) => match a.is_null(row) {
                true => null,
                false => {
                    let mut shown = format_timestamp(i128::from(a.value(row)) * per);
                    if *tz {
                        shown.push_str("+00:00");
                    }
                    text(shown)
                }
            },
            Values::Time(a, per) => match a.is_null(row) {
                true => null,
                false => text(format_time(a.value(row) * per)),
            },
            Values::Json(texts, nulls) => {
                match (nulls.as_ref().is_some_and(|n| n.is_null(row)), &texts[row]) {
                    (false, Some(json)) => ToSqlOutput::Borrowed(ValueRef::Text(json.as_bytes())),
                    _ => null,
                }
            }
        })
    }
}

fn nanos_per(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// Each value of a nested column as JSON text.
fn json_texts(field: &Field, array: &ArrayRef) -> std::result::Result<Values, String> {
    let field: FieldRef = Arc::new(field.clone());
    let options = arrow::json::writer::EncoderOptions::default();
    let mut encoder = arrow::json::writer::make_encoder(&field, array.as_ref(), &options)
        .map_err(|e| e.to_string())?;
    let mut texts = Vec::with_capacity(array.len());
    let mut buf = Vec::new();
    for row in 0..array.len() {
        if array.is_null(row) {
            texts.push(None);
            continue;
        }
        buf.clear();
        encoder.encode(row, &mut buf);
        texts.push(Some(String::from_utf8_lossy(&buf).into_owned()));
    }
    Ok(Values::Json(texts, array.logical_nulls()))
}

/// Upsert needs the primary key or a unique index on exactly the key columns.
fn check_unique_key(
    connection: &Connection,
    address: &TableAddress,
    table: &str,
    columns: &[TableColumn],
    keys: &[String],
) -> Result<()> {
    let err = |e| sqlite_error(address, e);
    let normalize = |names: Vec<String>| {
        let mut names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        names.sort();
        names
    };
    let wanted = normalize(keys.to_vec());
    let primary = normalize(
        columns
            .iter()
            .filter(|c| c.pk > 0)
            .map(|c| c.name.clone())
            .collect(),
    );
    if primary == wanted {
        return Ok(());
    }
    let mut statement = connection
        .prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" AND NOT partial")
        .map_err(err)?;
    let indexes: Vec<String> = statement
        .query_map([table], |row| row.get(0))
        .map_err(err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(err)?;
    for index in indexes {
        let mut statement = connection
            .prepare("SELECT name FROM pragma_index_info(?1)")
            .map_err(err)?;
        let names: Vec<Option<String>> = statement
            .query_map([&index], |row| row.get(0))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        // An index on an expression has no name for that part.
        if let Some(names) = names.into_iter().collect::<Option<Vec<_>>>() {
            if normalize(names) == wanted {
                return Ok(());
            }
        }
    }
    Err(Error::data(
        address,
        format!(
            "upsert into '{table}' needs a primary key or unique index on ({}); the table has none",
            keys.join(", ")
        ),
    ))
}

/// `<table>__ferry_<first 12 characters of the load id>`.
fn staging_name(table: &str, load_id: &str) -> String {
    let id: String = load_id.chars().take(12).collect();
    format!("{table}__ferry_{id}")
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(quote).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_carry_the_load_id() {
        assert_eq!(
            staging_name("orders", "0123456789abcdef"),
            "orders__ferry_0123456789ab"
        );
    }
}
