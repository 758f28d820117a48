//! Reading a table or query: catalog introspection, key-range partitions, and
//! binary-protocol rows decoded into Arrow in a consistent snapshot.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use ferry_core::{Error, Result, TableAddress};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::sync::mpsc;

use crate::tables::{
    partition_query, spawn_read, Selection, TablePartition, TableScan, TableSource,
};

use super::codec::{schema_of, MyColumn, MyType, RowDecoder};
use super::{connect, my_error, quote, table_of};

/// A batch is sent once it holds about this many bytes, even below `batch_rows`.
const BATCH_BYTES: usize = 16 << 20;
/// Tables at least this large, with a single integer primary key, are read in key ranges.
const MIN_PARTITION_BYTES: u64 = 64 << 20;
/// Key ranges hold about this many bytes at most.
const MAX_PARTITION_BYTES: u64 = 256 << 20;

/// A table or query as a source of record batches.
pub struct MySource {
    address: TableAddress,
    columns: Vec<MyColumn>,
    relation: Option<Relation>,
    primary_key: Vec<String>,
}

/// A table the address names, as the catalog describes it.
struct Relation {
    /// `"db"."name"`
    sql: String,
    rows: Option<u64>,
    bytes: u64,
    /// A single-column integer primary key, with its smallest and largest value.
    key: Option<(String, i128, i128)>,
}

impl MySource {
    /// Connects, finds the table (or prepares the query) and maps its columns to Arrow.
    pub async fn open(address: &TableAddress) -> Result<Self> {
        let mut conn = connect(address).await?;
        let mut primary_key = Vec::new();
        let (columns, relation) = match (&address.table, &address.query) {
            (Some(table), _) => {
                let (db, name) = table_of(address, table)?;
                let found: Option<(Option<u64>, Option<u64>)> = conn
                    .exec_first(
                        "SELECT TABLE_ROWS, DATA_LENGTH FROM information_schema.TABLES \
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                        (&db, &name),
                    )
                    .await
                    .map_err(|e| my_error(address, e))?;
                let (rows, bytes) = found
                    .ok_or_else(|| Error::not_found(format!("table '{table}' in {address}")))?;
                let columns = table_columns(&mut conn, address, &db, &name).await?;
                let sql = format!("{}.{}", quote(&db), quote(&name));
                primary_key = conn
                    .exec(
                        "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
                         ORDER BY SEQ_IN_INDEX",
                        (&db, &name),
                    )
                    .await
                    .map_err(|e| my_error(address, e))?;
                let key = if bytes.unwrap_or(0) >= MIN_PARTITION_BYTES {
                    integer_key(&mut conn, address, &db, &name, &sql, &columns).await?
                } else {
                    None
                };
                let relation = Relation {
                    sql,
                    rows,
                    bytes: bytes.unwrap_or(0),
                    key,
                };
                (columns, Some(relation))
            }
            (None, Some(query)) => (query_columns(&mut conn, address, query).await?, None),
            (None, None) => {
                return Err(Error::InvalidAddress {
                    address: address.to_string(),
                    reason: "name a table or a query".into(),
                })
            }
        };
        let _ = conn.disconnect().await;
        Ok(Self {
            address: address.clone(),
            columns,
            relation,
            primary_key,
        })
    }
}

#[async_trait]
impl TableSource for MySource {
    fn address(&self) -> &TableAddress {
        &self.address
    }

    fn schema(&self) -> SchemaRef {
        schema_of(&self.columns)
    }

    /// The catalog's row estimate (InnoDB's is approximate).
    fn estimated_rows(&self) -> Option<u64> {
        self.relation.as_ref().and_then(|r| r.rows)
    }

    fn estimated_bytes(&self) -> u64 {
        self.relation.as_ref().map_or(0, |r| r.bytes)
    }

    fn primary_key(&self) -> &[String] {
        &self.primary_key
    }

    /// Plans a read of `selection`. Large tables with a single integer primary key are
    /// split into key ranges; each range reads in its own snapshot, since MySQL cannot
    /// share one between connections.
    async fn scan(&self, selection: &Selection, parallel: usize) -> Result<Box<dyn TableScan>> {
        let columns = selection.pick(&self.columns, |c| &c.name, &self.address)?;
        let list = if columns.is_empty() {
            "1".to_string()
        } else {
            columns
                .iter()
                .map(|c| quote(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let from = match (&self.relation, &self.address.query) {
            (Some(r), _) => r.sql.clone(),
            (None, Some(q)) => format!("({}) AS q", q.trim().trim_end_matches(';')),
            (None, None) => unreachable!("open() checked the address"),
        };
        let partitions = match &self.relation {
            Some(Relation {
                key: Some((key, min, max)),
                bytes,
                ..
            }) => key_ranges(key, *min, *max, *bytes, parallel),
            _ => vec![TablePartition {
                key: "all".into(),
                predicate: None,
            }],
        };
        Ok(Box::new(MyScan {
            inner: Arc::new(ScanInner {
                address: self.address.clone(),
                columns,
                select: format!("SELECT {list} FROM {from}"),
                filter: selection.filter.clone(),
            }),
            partitions,
        }))
    }
}

/// A planned read.
pub struct MyScan {
    inner: Arc<ScanInner>,
    partitions: Vec<TablePartition>,
}

struct ScanInner {
    address: TableAddress,
    columns: Vec<MyColumn>,
    select: String,
    filter: Option<String>,
}

impl TableScan for MyScan {
    fn partitions(&self) -> &[TablePartition] {
        &self.partitions
    }

    fn schema(&self) -> SchemaRef {
        schema_of(&self.inner.columns)
    }

    fn query(&self, index: usize) -> String {
        partition_query(
            &self.inner.select,
            self.partitions[index].predicate.as_deref(),
            self.inner.filter.as_deref(),
        )
    }

    /// Reads partition `index` on its own connection.
    fn read(&self, index: usize, batch_rows: usize) -> mpsc::Receiver<Result<RecordBatch>> {
        let inner = self.inner.clone();
        let query = self.query(index);
        let key = self.partitions[index].key.clone();
        spawn_read(|tx| async move { inner.stream(&query, &key, batch_rows.max(1), &tx).await })
    }
}

impl ScanInner {
    async fn stream(
        &self,
        query: &str,
        key: &str,
        batch_rows: usize,
        tx: &mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<()> {
        let address = &self.address;
        let err = |e| my_error(address, e);
        let mut conn = connect(address).await?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(err)?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(err)?;
        let location = || format!("{address} (partition {key})");
        let mut decoder = RowDecoder::new(self.columns.clone());
        let mut result = conn.exec_iter(query, ()).await.map_err(err)?;
        while let Some(row) = result.next().await.map_err(err)? {
            decoder
                .push(row.unwrap())
                .map_err(|e| Error::data(location(), e))?;
            if decoder.rows() >= batch_rows || decoder.bytes() >= BATCH_BYTES {
                let batch = decoder.flush().map_err(|e| Error::data(location(), e))?;
                if let Some(batch) = batch {
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok(()); // the consumer stopped
                    }
                }
            }
        }
        drop(result);
        if let Some(batch) = decoder.flush().map_err(|e| Error::data(location(), e))? {
            let _ = tx.send(Ok(batch)).await;
        }
        let _ = conn.query_drop("COMMIT").await;
        let _ = conn.disconnect().await;
        Ok(())
    }
}

/// Ranges of the key of about equal width; the first and last are open-ended so rows
/// added since planning are not missed.
fn key_ranges(key: &str, min: i128, max: i128, bytes: u64, parallel: usize) -> Vec<TablePartition> {
    let count = bytes
        .div_ceil(MAX_PARTITION_BYTES)
        .max(parallel.max(1) as u64)
        .clamp(1, 1024) as i128;
    let width = ((max - min) / count).max(1) + 1;
    let column = quote(key);
    let mut out = Vec::new();
    let mut start = min;
    while out.is_empty() || start <= max {
        let end = start + width;
        let first = out.is_empty();
        let last = end > max;
        let predicate = match (first, last) {
            (true, true) => None,
            (true, false) => Some(format!("{column} < {end}")),
            (false, true) => Some(format!("{column} >= {start}")),
            (false, false) => Some(format!("{column} >= {start} AND {column} < {end}")),
        };
        out.push(TablePartition {
            key: format!("key-{start}"),
            predicate,
        });
        if last {
            break;
        }
        start = end;
    }
    out
}

/// A table's columns from the catalog, with the declared type of each.
pub(crate) async fn table_columns(
    conn: &mut Conn,
    address: &TableAddress,
    db: &str,
    name: &str,
) -> Result<Vec<MyColumn>> {
    let rows: Vec<(String, String, String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (db, name),
        )
        .await
        .map_err(|e| my_error(address, e))?;
    rows.into_iter()
        .map(|(name, data_type, column_type, nullable)| {
            let ty = MyType::from_catalog(&data_type, &column_type)
                .map_err(|reason| unsupported(address, &name, &reason))?;
            Ok(MyColumn {
                name,
                ty,
                sql: Some(column_type),
                nullable: nullable == "YES",
            })
        })
        .collect()
}

/// The table's primary key when it is one integer column, with its range.
async fn integer_key(
    conn: &mut Conn,
    address: &TableAddress,
    db: &str,
    name: &str,
    sql: &str,
    columns: &[MyColumn],
) -> Result<Option<(String, i128, i128)>> {
    let keys: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY'",
            (db, name),
        )
        .await
        .map_err(|e| my_error(address, e))?;
    let [key] = keys.as_slice() else {
        return Ok(None);
    };
    let integer = columns.iter().any(|c| {
        &c.name == key
            && matches!(
                c.ty,
                MyType::Int8
                    | MyType::Int16
                    | MyType::Int32
                    | MyType::Int64
                    | MyType::UInt8
                    | MyType::UInt16
                    | MyType::UInt32
                    | MyType::UInt64
            )
    });
    if !integer {
        return Ok(None);
    }
    let k = quote(key);
    let range: Option<(Option<String>, Option<String>)> = conn
        .query_first(format!("SELECT MIN({k}), MAX({k}) FROM {sql}"))
        .await
        .map_err(|e| my_error(address, e))?;
    Ok(match range {
        Some((Some(min), Some(max))) => match (min.parse(), max.parse()) {
            (Ok(min), Ok(max)) => Some((key.clone(), min, max)),
            _ => None,
        },
        _ => None,
    })
}

async fn query_columns(
    conn: &mut Conn,
    address: &TableAddress,
    query: &str,
) -> Result<Vec<MyColumn>> {
    let statement = conn
        .prep(query.trim().trim_end_matches(';'))
        .await
        .map_err(|e| my_error(address, e))?;
    let columns = statement
        .columns()
        .iter()
        .map(|column| {
            let name = column.name_str().into_owned();
            let ty = MyType::from_result(column)
                .map_err(|reason| unsupported(address, &name, &reason))?;
            Ok(MyColumn {
                name,
                ty,
                sql: None,
                nullable: true,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let _ = conn.close(statement).await;
    Ok(columns)
}

fn unsupported(address: &TableAddress, column: &str, reason: &str) -> Error {
    Error::not_supported(
        address,
        format!(
            "column '{column}': {reason}; read it through a query that converts it, e.g. ?query=SELECT CAST({column} AS CHAR) AS {column}, …"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_cover_the_keys_and_stay_open_at_both_ends() {
        let parts = key_ranges("id", 1, 1000, 100 << 20, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].predicate.as_deref(), Some("\"id\" < 251"));
        assert_eq!(
            parts[1].predicate.as_deref(),
            Some("\"id\" >= 251 AND \"id\" < 501")
        );
        assert_eq!(parts[3].predicate.as_deref(), Some("\"id\" >= 751"));
        let parts = key_ranges("id", 5, 5, 100 << 20, 4);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].predicate.is_none());
    }
}
