//! Tables in any database behind one interface, which the engine drives.
//!
//! Reading: [`open_table`] finds a table (or prepares a query) and maps its columns to
//! Arrow; [`TableSource::scan`] plans partitions that the engine reads side by side, each
//! into a bounded channel of record batches.
//!
//! Loading: [`prepare_load`] checks the target against the incoming Arrow schema before
//! any row moves; rows then go into a staging table through one or more
//! [`TableWriter`]s, and [`TableLoad::commit`] makes them the table's in one step
//! according to the address's [`WriteMode`](ferry_core::WriteMode).

use std::future::Future;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use ferry_core::{Database, Error, Result, TableAddress};
use tokio::sync::mpsc;

/// What to read: a subset of the columns (in their order) and a row filter, both pushed
/// into the query the database runs.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub columns: Option<Vec<String>>,
    /// An SQL boolean expression over the columns, identifiers in double quotes and
    /// strings in single quotes (`''` inside), as [`ferry_transforms::pushdown`] writes it.
    pub filter: Option<String>,
}

impl Selection {
    /// The selected columns out of `all` (named by `name`), in the selection's order; all
    /// of them when the selection names none.
    pub fn pick<C: Clone>(
        &self,
        all: &[C],
        name: impl Fn(&C) -> &str,
        address: &TableAddress,
    ) -> Result<Vec<C>> {
        let Some(names) = &self.columns else {
            return Ok(all.to_vec());
        };
        names
            .iter()
            .map(|wanted| {
                all.iter()
                    .find(|c| name(c) == wanted)
                    .cloned()
                    .ok_or_else(|| Error::data(address, format!("column '{wanted}' not found")))
            })
            .collect()
    }
}

/// `select` narrowed to the rows of a partition's `predicate` that pass `filter`.
pub fn partition_query(select: &str, predicate: Option<&str>, filter: Option<&str>) -> String {
    let conditions: Vec<String> = predicate
        .into_iter()
        .chain(filter)
        .map(|c| format!("({c})"))
        .collect();
    if conditions.is_empty() {
        select.to_string()
    } else {
        format!("{select} WHERE {}", conditions.join(" AND "))
    }
}

/// An identifier quoted for SQL (double quotes: standard SQL, PostgreSQL, SQLite, and
/// MySQL sessions with `ANSI_QUOTES`).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// How a database spells table names.
pub(crate) struct NameRules {
    /// Characters that open and close a quoted part (doubled inside it).
    pub quotes: &'static [char],
    /// Whether unquoted parts fold to lower case.
    pub fold_lower: bool,
    /// What the part before the dot is called, for messages.
    pub qualifier: &'static str,
}

/// A table name split into its qualifier and name, both unquoted (`"Sales".orders` →
/// `Sales`, `orders`).
pub(crate) fn split_name(
    name: &str,
    rules: &NameRules,
) -> std::result::Result<(Option<String>, String), String> {
    let mut parts = Vec::new();
    let mut chars = name.trim().chars().peekable();
    loop {
        let mut part = String::new();
        match chars.peek().copied() {
            Some(q) if rules.quotes.contains(&q) => {
                chars.next();
                loop {
                    match chars.next() {
                        Some(c) if c == q && chars.peek() == Some(&q) => {
                            chars.next();
                            part.push(q);
                        }
                        Some(c) if c == q => break,
                        Some(c) => part.push(c),
                        None => return Err(format!("unclosed quote in table name '{name}'")),
                    }
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    part.push(if rules.fold_lower {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    });
                    chars.next();
                }
            }
        }
        if part.is_empty() {
            return Err(format!("table name '{name}' has an empty part"));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(c) => return Err(format!("unexpected '{c}' in table name '{name}'")),
        }
    }
    match parts.len() {
        1 => Ok((None, parts.pop().unwrap_or_default())),
        2 => {
            let table = parts.pop().unwrap_or_default();
            Ok((parts.pop(), table))
        }
        _ => Err(format!(
            "table name '{name}' should be table or {}.table",
            rules.qualifier
        )),
    }
}

/// Batches a partition's reader may hold ahead of its consumer: a slow consumer holds the
/// database back rather than filling memory.
const READ_AHEAD: usize = 2;

/// Runs `read` on a task of its own, sending its batches into the channel returned. An
/// error it returns is sent as the stream's last item.
pub fn spawn_read<F, Fut>(read: F) -> mpsc::Receiver<Result<RecordBatch>>
where
    F: FnOnce(mpsc::Sender<Result<RecordBatch>>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let reading = read(tx.clone());
    tokio::spawn(async move {
        if let Err(e) = reading.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// [`spawn_read`] for a synchronous reader, on a blocking thread.
pub fn spawn_blocking_read<F>(read: F) -> mpsc::Receiver<Result<RecordBatch>>
where
    F: FnOnce(&mpsc::Sender<Result<RecordBatch>>) -> Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = read(&tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// The column of a change stream's rows (a topic read into an `upsert` table) that orders
/// the changes of a key: the event's offset. Staged with the rows, never a target column.
pub const CHANGE_SEQ: &str = "__ferry_seq";
/// The column of a change stream's rows that is true for a tombstone: the key's row is
/// deleted.
pub const CHANGE_DELETED: &str = "__ferry_deleted";

/// Whether rows of `schema` are changes (they end with [`CHANGE_SEQ`] and
/// [`CHANGE_DELETED`]): only the last change of each key counts, and a tombstone deletes.
pub fn is_change_stream(schema: &Schema) -> bool {
    let n = schema.fields().len();
    n >= 2
        && schema.field(n - 2).name() == CHANGE_SEQ
        && schema.field(n - 1).name() == CHANGE_DELETED
}

/// Whether `name` is one of a change stream's own columns.
pub fn is_change_column(name: &str) -> bool {
    name == CHANGE_SEQ || name == CHANGE_DELETED
}

/// What an upsert (`INSERT … ON CONFLICT (keys)`, PostgreSQL and SQLite) does to a row
/// whose key exists: set every other loaded column from the row proposed; nothing when
/// every column is a key. A change stream's own columns are never set.
pub(crate) fn on_conflict<'a>(columns: impl Iterator<Item = &'a str>, keys: &[String]) -> String {
    let updates: Vec<String> = columns
        .filter(|c| !is_change_column(c) && !keys.iter().any(|k| k.eq_ignore_ascii_case(c)))
        .map(|c| format!("{0} = excluded.{0}", quote(c)))
        .collect();
    if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    }
}

/// Checks, before a load, that the upsert key columns are among the source's columns.
pub fn check_key_columns(address: &TableAddress, schema: &Schema) -> Result<()> {
    for key in &address.key_columns {
        if schema.field_with_name(key).is_err() {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::data(
                address,
                format!(
                    "key column '{key}' is not among the source's columns ({})",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The fields of `schema` table `target` (its columns `existing`, named by `name`) has no
/// column for: new columns under `schemaEvolution=addColumns` when they are nullable, else
/// an error naming the first. A change stream's own columns are not the table's.
pub fn fields_to_add<C>(
    existing: &[C],
    name: impl Fn(&C) -> &str,
    schema: &Schema,
    address: &TableAddress,
    target: &str,
) -> Result<Vec<String>> {
    let mut added = Vec::new();
    for field in schema.fields() {
        if is_change_column(field.name())
            || existing
                .iter()
                .any(|c| name(c).eq_ignore_ascii_case(field.name()))
        {
            continue;
        }
        if !address.add_columns {
            // The error of a missing column, naming the table's.
            target_column(existing, &name, field.name(), address, target)?;
        }
        if !field.is_nullable() {
            return Err(Error::data(
                address,
                format!(
                    "column '{}' of the source is not in table {target}, and only a nullable field becomes a new column (schemaEvolution: addColumns)",
                    field.name()
                ),
            ));
        }
        tracing::info!(table = %target, column = %field.name(), "a new field: adding its column (schemaEvolution: addColumns)");
        added.push(field.name().clone());
    }
    Ok(added)
}

/// The column of the target (`existing`, named by `name`) that source column `field`
/// loads into: the one with its exact name, else the only one matching it regardless of
/// case. `target` names the table in the error.
pub fn target_column<'a, C>(
    existing: &'a [C],
    name: impl Fn(&C) -> &str,
    field: &str,
    address: &TableAddress,
    target: &str,
) -> Result<&'a C> {
    existing
        .iter()
        .find(|c| name(c) == field)
        .or_else(|| {
            let mut same = existing
                .iter()
                .filter(|c| name(c).eq_ignore_ascii_case(field));
            same.next().filter(|_| same.next().is_none())
        })
        .ok_or_else(|| {
            let names: Vec<&str> = existing.iter().map(&name).collect();
            Error::data(
                address,
                format!(
                    "column '{field}' of the source is not in table {target} (its columns: {}); add it, or let ferry add nullable ones (schemaEvolution: addColumns)",
                    names.join(", ")
                ),
            )
        })
}

/// One piece of a scan, read on its own connection.
#[derive(Clone, Debug)]
pub struct TablePartition {
    /// Stable across runs of the same plan: names outputs and checkpoints.
    pub key: String,
    /// A predicate selecting this partition's rows (a key or page range), if any.
    pub predicate: Option<String>,
}

/// A table or a query's result, opened for reading.
#[async_trait]
pub trait TableSource: Send + Sync {
    fn address(&self) -> &TableAddress;

    /// All columns, as Arrow fields. Database types that Arrow cannot tell apart travel in
    /// field metadata (e.g. `ferry.pg.type`), so a load into the same database recreates
    /// them.
    fn schema(&self) -> SchemaRef;

    /// Rows, from the catalog's statistics (never a `COUNT(*)`).
    fn estimated_rows(&self) -> Option<u64>;

    /// Bytes the table occupies, from the catalog, for progress (0 when unknown).
    fn estimated_bytes(&self) -> u64;

    /// The primary key's columns in key order: empty for a query or a table without one.
    fn primary_key(&self) -> &[String] {
        &[]
    }

    /// Plans a read of `selection` in up to about `parallel` partitions at once (a scan
    /// may plan more partitions than that; they are read `parallel` at a time). All
    /// partitions see one consistent state of the table where the database allows it.
    async fn scan(&self, selection: &Selection, parallel: usize) -> Result<Box<dyn TableScan>>;
}

/// A planned read. Whatever keeps its snapshot alive lives as long as this does.
pub trait TableScan: Send + Sync {
    fn partitions(&self) -> &[TablePartition];

    /// The columns each batch holds (the selection's, in its order).
    fn schema(&self) -> SchemaRef;

    /// The query partition `index` runs: a run compares it with its checkpoint to tell
    /// whether a finished partition is still the same work.
    fn query(&self, index: usize) -> String;

    /// Reads partition `index` on its own connection, into a channel of a few batches
    /// (a slow consumer holds the database back rather than filling memory). An error
    /// ends the stream; batches hold at most `batch_rows` rows.
    fn read(&self, index: usize, batch_rows: usize) -> mpsc::Receiver<Result<RecordBatch>>;
}

/// A load's target as it is now: what a finished load checks before it is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetState {
    /// Changes when the table is dropped and created again or truncated, where the
    /// database tells (PostgreSQL: oid and relation file node; InnoDB: table id; SQLite:
    /// root page, which TRUNCATE's equivalent, `DELETE` without `WHERE`, keeps).
    pub identity: String,
    /// The rows it holds, when they were counted (a full scan on some databases).
    pub rows: Option<u64>,
}

/// A load into one table, prepared and checked.
#[async_trait]
pub trait TableLoad: Send + Sync {
    /// The target as the database names it, for messages.
    fn target(&self) -> &str;

    /// How many writers may stream into the staging table at once.
    fn max_writers(&self) -> usize {
        usize::MAX
    }

    /// Whether the commit creates the target, which did not exist when the load was
    /// prepared. Another process may create it meanwhile; that commit then fails, and a
    /// load prepared anew commits into the table instead.
    fn creates_target(&self) -> bool;

    /// Whether an earlier run of this load (same load id) staged rows that were not
    /// committed. After a commit that succeeded this is false, even when the process died
    /// right after it, so a re-run never commits the same rows twice.
    async fn staging_exists(&self) -> Result<bool>;

    /// Creates the staging table, replacing one a killed run left behind.
    async fn create_staging(&mut self) -> Result<()>;

    /// A writer into the staging table, for batches of `schema` (the schema the load was
    /// prepared with).
    async fn writer(&self, schema: &SchemaRef) -> Result<Box<dyn TableWriter>>;

    /// Makes the staged rows the table's, per the address's mode, all or nothing, and
    /// removes the staging table. Creates the target when it did not exist.
    async fn commit(&self) -> Result<()>;

    /// Drops the staging table after a failed load; the target is untouched.
    async fn discard(&self) -> Result<()>;

    /// The target's identity now, and its row count when `count_rows`, or `None` when
    /// it does not exist.
    async fn target_state(&self, count_rows: bool) -> Result<Option<TargetState>>;
}

/// One stream of rows into the staging table.
#[async_trait]
pub trait TableWriter: Send {
    async fn write(&mut self, batch: &RecordBatch) -> Result<()>;

    /// Flushes what is buffered; returns the rows this writer stored.
    async fn finish(self: Box<Self>) -> Result<u64>;
}

/// Opens the table or query `address` names, for reading.
pub async fn open_table(address: &TableAddress) -> Result<Box<dyn TableSource>> {
    Ok(match address.database {
        Database::Postgres => Box::new(crate::postgres::PgSource::open(address).await?),
        Database::Mysql => crate::mysql::open(address).await?,
        Database::Sqlite => crate::sqlite::open(address).await?,
    })
}

/// Prepares a load of batches shaped like `schema` into the table `address` names,
/// checking before any row moves that the table can hold them. `load_id` names the
/// staging table; the same id finds what a killed run left.
pub async fn prepare_load(
    address: &TableAddress,
    schema: SchemaRef,
    load_id: &str,
) -> Result<Box<dyn TableLoad>> {
    Ok(match address.database {
        Database::Postgres => {
            Box::new(crate::postgres::PgLoad::prepare(address, schema, load_id).await?)
        }
        Database::Mysql => crate::mysql::prepare(address, schema, load_id).await?,
        Database::Sqlite => crate::sqlite::prepare(address, schema, load_id).await?,
    })
}
