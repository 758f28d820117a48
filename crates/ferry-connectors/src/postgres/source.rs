//! Reading a table or query: catalog introspection, page-range partitions in one snapshot,
//! and binary `COPY` decoded into Arrow.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use ferry_core::{Error, Result, TableAddress};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::tables::{Selection, TablePartition, TableScan, TableSource};

use super::{connect, literal, pg_error, quote, CopyDecoder, PgColumn, PgType};

/// Pages per partition at most (128 MiB of 8 KiB pages): small enough that a killed run
/// loses little, large enough that per-partition costs vanish.
const MAX_PARTITION_PAGES: u64 = 16_384;
/// Tables smaller than this are read in one piece.
const MIN_PARTITION_PAGES: u64 = 1_024;

/// A table or query as a source of record batches.
pub struct PgSource {
    address: TableAddress,
    columns: Vec<PgColumn>,
    relation: Option<Relation>,
}

/// A table or view the address names, as the catalog describes it.
struct Relation {
    /// The name as PostgreSQL prints it (`regclass::text`), quoted where needed.
    sql: String,
    /// `r` table, `m` materialized view, `v` view, `p` partitioned table, `f` foreign.
    kind: String,
    pages: u64,
    estimated_rows: Option<u64>,
}

impl PgSource {
    /// Connects, finds the table (or prepares the query) and maps its columns to Arrow.
    pub async fn open(address: &TableAddress) -> Result<Self> {
        let client = connect(address).await?;
        let err = |e| pg_error(address, e);
        let (columns, relation) = match (&address.table, &address.query) {
            (Some(table), _) => {
                let row = client
                    .query_opt(
                        "SELECT c.oid, c.oid::regclass::text, c.relkind::text, \
                         pg_relation_size(c.oid) / current_setting('block_size')::bigint, \
                         c.reltuples::float8 \
                         FROM pg_class c WHERE c.oid = to_regclass($1::text)",
                        &[table],
                    )
                    .await
                    .map_err(err)?
                    .ok_or_else(|| Error::not_found(format!("table '{table}' in {address}")))?;
                let oid: u32 = row.get(0);
                let relation = Relation {
                    sql: row.get(1),
                    kind: row.get(2),
                    pages: row.get::<_, i64>(3).max(0) as u64,
                    estimated_rows: Some(row.get::<_, f64>(4))
                        .filter(|n| *n >= 0.0)
                        .map(|n| n as u64),
                };
                let columns = table_columns(&client, address, oid, &relation.sql).await?;
                (columns, Some(relation))
            }
            (None, Some(query)) => (query_columns(&client, address, query).await?, None),
            (None, None) => {
                return Err(Error::InvalidAddress {
                    address: address.to_string(),
                    reason: "name a table or a query".into(),
                })
            }
        };
        Ok(Self {
            address: address.clone(),
            columns,
            relation,
        })
    }
}

#[async_trait]
impl TableSource for PgSource {
    fn address(&self) -> &TableAddress {
        &self.address
    }

    /// The Arrow schema of every column.
    fn schema(&self) -> SchemaRef {
        schema_of(&self.columns)
    }

    /// The catalog's row estimate (no `COUNT(*)`), when the table has been analyzed.
    fn estimated_rows(&self) -> Option<u64> {
        self.relation.as_ref().and_then(|r| r.estimated_rows)
    }

    /// The table's size on disk, in bytes.
    fn estimated_bytes(&self) -> u64 {
        self.relation.as_ref().map_or(0, |r| r.pages * 8192)
    }

    /// Plans a read of `selection` in partitions for up to `parallel` connections. With
    /// more than one partition, a coordinating session exports a snapshot that every
    /// partition reads in, so together they see the table at one instant.
    async fn scan(&self, selection: &Selection, parallel: usize) -> Result<Box<dyn TableScan>> {
        let columns = match &selection.columns {
            None => self.columns.clone(),
            Some(names) => names
                .iter()
                .map(|name| {
                    self.columns
                        .iter()
                        .find(|c| &c.name == name)
                        .cloned()
                        .ok_or_else(|| {
                            Error::data(&self.address, format!("column '{name}' not found"))
                        })
                })
                .collect::<Result<_>>()?,
        };
        let list = columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let from = match (&self.relation, &self.address.query) {
            (Some(r), _) => r.sql.clone(),
            (None, Some(q)) => format!("({}) AS q", q.trim().trim_end_matches(';')),
            (None, None) => unreachable!("open() checked the address"),
        };
        let select = format!(
            "SELECT {} FROM {from}",
            if list.is_empty() { "" } else { &list }
        );
        let partitions = match &self.relation {
            Some(r) if (r.kind == "r" || r.kind == "m") && r.pages >= MIN_PARTITION_PAGES => {
                page_ranges(r.pages, parallel)
            }
            _ => vec![TablePartition {
                key: "all".into(),
                predicate: None,
            }],
        };
        let (snapshot, holder) = if partitions.len() > 1 {
            let client = connect(&self.address).await?;
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| pg_error(&self.address, e))?;
            let row = client
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .map_err(|e| pg_error(&self.address, e))?;
            (Some(row.get::<_, String>(0)), Some(client))
        } else {
            (None, None)
        };
        Ok(Box::new(PgScan {
            inner: Arc::new(ScanInner {
                address: self.address.clone(),
                columns,
                select,
                filter: selection.filter.clone(),
                snapshot,
                _holder: holder,
            }),
            partitions,
        }))
    }
}

/// A planned read: partitions, and the snapshot they share while this lives.
pub struct PgScan {
    inner: Arc<ScanInner>,
    partitions: Vec<TablePartition>,
}

struct ScanInner {
    address: TableAddress,
    columns: Vec<PgColumn>,
    select: String,
    filter: Option<String>,
    snapshot: Option<String>,
    /// The session whose open transaction keeps the exported snapshot alive.
    _holder: Option<Client>,
}

impl TableScan for PgScan {
    fn partitions(&self) -> &[TablePartition] {
        &self.partitions
    }

    fn schema(&self) -> SchemaRef {
        schema_of(&self.inner.columns)
    }

    /// The query one partition runs (without `COPY`).
    fn query(&self, index: usize) -> String {
        let p = &self.partitions[index];
        let conditions: Vec<String> = p
            .predicate
            .iter()
            .chain(self.inner.filter.iter())
            .map(|c| format!("({c})"))
            .collect();
        if conditions.is_empty() {
            self.inner.select.clone()
        } else {
            format!("{} WHERE {}", self.inner.select, conditions.join(" AND "))
        }
    }

    /// Reads partition `index` on its own connection. Batches arrive through a channel of
    /// two, so a slow consumer holds the database back rather than filling memory.
    fn read(&self, index: usize, batch_rows: usize) -> mpsc::Receiver<Result<RecordBatch>> {
        let (tx, rx) = mpsc::channel(2);
        let inner = self.inner.clone();
        let query = self.query(index);
        let key = self.partitions[index].key.clone();
        tokio::spawn(async move {
            let result = inner.copy_out(&query, &key, batch_rows, &tx).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}

impl ScanInner {
    async fn copy_out(
        &self,
        query: &str,
        key: &str,
        batch_rows: usize,
        tx: &mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<()> {
        let address = &self.address;
        let client = connect(address).await?;
        if let Some(snapshot) = &self.snapshot {
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                    literal(snapshot)
                ))
                .await
                .map_err(|e| pg_error(address, e))?;
        }
        let stream = client
            .copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
            .await
            .map_err(|e| pg_error(address, e))?;
        let mut stream = std::pin::pin!(stream);
        let mut decoder = CopyDecoder::new(self.columns.clone(), batch_rows);
        let location = || format!("{address} (partition {key})");
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| pg_error(address, e))?;
            decoder
                .push(&chunk, &mut out)
                .map_err(|e| Error::data(location(), e))?;
            for batch in out.drain(..) {
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(()); // the consumer stopped
                }
            }
        }
        if let Some(batch) = decoder.finish().map_err(|e| Error::data(location(), e))? {
            let _ = tx.send(Ok(batch)).await;
        }
        Ok(())
    }
}

/// Page ranges of equal size; the last one is open-ended so rows added at the end of the
/// table since planning are not missed.
fn page_ranges(pages: u64, parallel: usize) -> Vec<TablePartition> {
    let per = pages
        .div_ceil(parallel.max(1) as u64)
        .clamp(MIN_PARTITION_PAGES, MAX_PARTITION_PAGES);
    let count = pages.div_ceil(per).max(1);
    (0..count)
        .map(|i| {
            let start = i * per;
            let predicate = if i + 1 == count {
                format!("ctid >= '({start},0)'::tid")
            } else {
                format!(
                    "ctid >= '({start},0)'::tid AND ctid < '({},0)'::tid",
                    start + per
                )
            };
            TablePartition {
                key: format!("pages-{start}"),
                predicate: Some(predicate),
            }
        })
        .collect()
}

fn schema_of(columns: &[PgColumn]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(PgColumn::arrow_field)
            .collect::<Vec<_>>(),
    ))
}

/// A table's columns from the catalog, with typmods (numeric precision and scale,
/// varchar length), resolved to types by preparing a query over them.
pub(crate) async fn table_columns(
    client: &Client,
    address: &TableAddress,
    oid: u32,
    sql: &str,
) -> Result<Vec<PgColumn>> {
    let err = |e| pg_error(address, e);
    let rows = client
        .query(
            "SELECT attname::text, atttypmod, format_type(atttypid, atttypmod), attnotnull \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(err)?;
    let statement = client
        .prepare(&format!("SELECT * FROM {sql} LIMIT 0"))
        .await
        .map_err(err)?;
    rows.iter()
        .zip(statement.columns())
        .map(|(row, column)| {
            let name: String = row.get(0);
            let ty = PgType::from_pg(column.type_(), row.get(1), row.get::<_, &str>(2))
                .map_err(|reason| unsupported(address, &name, &reason))?;
            Ok(PgColumn {
                name,
                ty,
                nullable: !row.get::<_, bool>(3),
            })
        })
        .collect()
}

async fn query_columns(
    client: &Client,
    address: &TableAddress,
    query: &str,
) -> Result<Vec<PgColumn>> {
    let statement = client
        .prepare(query.trim().trim_end_matches(';'))
        .await
        .map_err(|e| pg_error(address, e))?;
    statement
        .columns()
        .iter()
        .map(|column| {
            let ty = PgType::from_pg(column.type_(), -1, column.type_().name())
                .map_err(|reason| unsupported(address, column.name(), &reason))?;
            Ok(PgColumn {
                name: column.name().to_string(),
                ty,
                nullable: true,
            })
        })
        .collect()
}

fn unsupported(address: &TableAddress, column: &str, reason: &str) -> Error {
    Error::not_supported(
        address,
        format!(
            "column '{column}': {reason}; read it through a query that casts it, e.g. ?query=SELECT {column}::text AS {column}, …"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_ranges_cover_the_table_and_stay_open_at_the_end() {
        let parts = page_ranges(140_000, 2);
        assert_eq!(parts.len(), 9);
        assert_eq!(
            parts[0].predicate.as_deref(),
            Some("ctid >= '(0,0)'::tid AND ctid < '(16384,0)'::tid")
        );
        assert_eq!(
            parts[8].predicate.as_deref(),
            Some("ctid >= '(131072,0)'::tid")
        );
        let parts = page_ranges(3_000, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].key, "pages-1500");
    }
}
