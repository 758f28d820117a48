//! SQLite tables as record sources and sinks, in-process through `rusqlite`.
//!
//! SQLite is synchronous and local: every statement runs on a blocking thread. A table is
//! read in one partition (one statement sees one snapshot), values converted by the
//! column's declared type. A load fills a staging table in the same file, in
//! transactions of many rows, and one final transaction renames or merges it into the
//! target, so the target changes all at once or not at all.

mod sink;
mod source;
mod types;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use ferry_core::{Error, Result, TableAddress};
use rusqlite::{Connection, ErrorCode, OpenFlags};

pub(crate) use crate::tables::quote;
use crate::tables::{TableLoad, TableSource};

/// For callers (and tests) that inspect a database next to ferry.
pub use rusqlite;
pub use sink::{SqliteLoad, SqliteWriter};
pub use source::{SqliteScan, SqliteSource};

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the table or query `address` names, for reading.
pub async fn open(address: &TableAddress) -> Result<Box<dyn TableSource>> {
    Ok(Box::new(SqliteSource::open(address).await?))
}

/// Prepares a load into the table `address` names.
pub async fn prepare(
    address: &TableAddress,
    schema: SchemaRef,
    load_id: &str,
) -> Result<Box<dyn TableLoad>> {
    Ok(Box::new(
        SqliteLoad::prepare(address, schema, load_id).await?,
    ))
}

/// The database file of `address`.
pub(crate) fn database_path(address: &TableAddress) -> Result<PathBuf> {
    address
        .sqlite_path()
        .map_err(|reason| Error::InvalidAddress {
            address: address.to_string(),
            reason,
        })
}

/// Opens an existing database file; `write` asks for a read-write connection. A missing
/// file is never created here.
pub(crate) fn connect(address: &TableAddress, path: &Path, write: bool) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::not_found(format!(
            "sqlite database file '{}'",
            path.display()
        )));
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection =
        Connection::open_with_flags(path, flags).map_err(|e| sqlite_error(address, e))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sqlite_error(address, e))?;
    // Opening is lazy: the first read finds a file that is not a database.
    connection
        .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| sqlite_error(address, e))?;
    Ok(connection)
}

/// One line naming the database and what went wrong.
pub(crate) fn sqlite_error(address: &TableAddress, e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(failure, message) = &e {
        let text = message.clone().unwrap_or_else(|| failure.to_string());
        return match failure.code {
            ErrorCode::NotADatabase => Error::store(
                address,
                "the file is not an SQLite database (or is encrypted)",
            ),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Error::store(
                address,
                format!(
                    "{text}: another connection holds a lock on the database; retry when it is done"
                ),
            ),
            ErrorCode::PermissionDenied | ErrorCode::ReadOnly | ErrorCode::CannotOpen => {
                Error::permission_denied(address, text)
            }
            _ => Error::store(address, text),
        };
    }
    Error::store(address, e)
}

/// Runs `work` on a blocking thread.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("sqlite worker: {e}")))?
}

/// A table or view `name` names in the main schema, as SQLite spells it (names are
/// compared without regard to ASCII case, as SQLite does).
pub(crate) fn find_table(connection: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    let mut statement = connection.prepare(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE \
         ORDER BY name = ?1 DESC LIMIT 1",
    )?;
    let mut rows = statement.query([name])?;
    Ok(match rows.next()? {
        Some(row) => Some(row.get(0)?),
        None => None,
    })
}

/// A column of a table as `PRAGMA table_xinfo` describes it.
#[derive(Clone, Debug)]
pub(crate) struct TableColumn {
    pub name: String,
    pub declared: String,
    pub not_null: bool,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub pk: i64,
    /// Generated columns can be read, never written.
    pub generated: bool,
}

pub(crate) fn table_columns(
    connection: &Connection,
    table: &str,
) -> rusqlite::Result<Vec<TableColumn>> {
    let mut statement = connection
        .prepare("SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1)")?;
    let rows = statement.query_map([table], |row| {
        let hidden: i64 = row.get(4)?;
        Ok((
            TableColumn {
                name: row.get(0)?,
                declared: row.get(1)?,
                not_null: row.get::<_, i64>(2)? != 0,
                pk: row.get(3)?,
                generated: hidden == 2 || hidden == 3,
            },
            hidden,
        ))
    })?;
    // hidden = 1: a virtual table's hidden column, not part of SELECT *.
    rows.filter(|r| !matches!(r, Ok((_, 1))))
        .map(|r| r.map(|(c, _)| c))
        .collect()
}
