//! Reading a table or query: catalog introspection, partitions (integer key ranges, else
//! page ranges) in one snapshot, and binary `COPY` decoded into Arrow.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use ferry_core::{Error, Result, TableAddress};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::tables::{
    partition_query, spawn_read, Selection, TablePartition, TableScan, TableSource,
};

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
    primary_key: Vec<String>,
}

/// A table or view the address names, as the catalog describes it.
struct Relation {
    /// The name as PostgreSQL prints it (`regclass::text`), quoted where needed.
    sql: String,
    /// `r` table, `m` materialized view, `v` view, `p` partitioned table, `f` foreign.
    kind: String,
    pages: u64,
    estimated_rows: Option<u64>,
    /// A NOT NULL integer column with a unique index, to split reads into key ranges.
    key: Option<String>,
}

impl PgSource {
    /// Connects, finds the table (or prepares the query) and maps its columns to Arrow.
    pub async fn open(address: &TableAddress) -> Result<Self> {
        let client = connect(address).await?;
        let err = |e| pg_error(address, e);
        let mut primary_key = Vec::new();
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
                    key: integer_key(&client, address, oid).await?,
                };
                let columns = table_columns(&client, address, oid, &relation.sql).await?;
                primary_key = client
                    .query(
                        "SELECT a.attname::text FROM pg_index i \
                         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                         WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n",
                        &[&oid],
                    )
                    .await
                    .map_err(err)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
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
            primary_key,
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

    fn primary_key(&self) -> &[String] {
        &self.primary_key
    }

    /// The table's size on disk, in bytes.
    fn estimated_bytes(&self) -> u64 {
        self.relation.as_ref().map_or(0, |r| r.pages * 8192)
    }

    /// Plans a read of `selection` in partitions for up to `parallel` connections. With
    /// more than one partition, a coordinating session exports a snapshot that every
    /// partition reads in, so together they see the table at one instant.
    async fn scan(&self, selection: &Selection, parallel: usize) -> Result<Box<dyn TableScan>> {
        let columns = selection.pick(&self.columns, |c| &c.name, &self.address)?;
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
        let count = match &self.relation {
            Some(r) if (r.kind == "r" || r.kind == "m") && r.pages >= MIN_PARTITION_PAGES => {
                partition_pages(r.pages, parallel).1
            }
            _ => 1,
        };
        let (snapshot, holder, partitions) = match &self.relation {
            Some(r) if count > 1 => {
                let client = connect(&self.address).await?;
                let err = |e| pg_error(&self.address, e);
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(err)?;
                let row = client
                    .query_one("SELECT pg_export_snapshot()", &[])
                    .await
                    .map_err(err)?;
                // Key ranges stay put when rows move between pages (an UPDATE, VACUUM
                // FULL), so a resumed export neither repeats nor misses rows; page
                // ranges serve tables without such a key.
                let partitions = match &r.key {
                    Some(key) => {
                        let bounds = client
                            .query_one(
                                &format!(
                                    "SELECT min({k})::int8, max({k})::int8 FROM {}",
                                    r.sql,
                                    k = quote(key)
                                ),
                                &[],
                            )
                            .await
                            .map_err(err)?;
                        match (bounds.get(0), bounds.get(1)) {
                            (Some(lo), Some(hi)) => key_ranges(key, lo, hi, count),
                            _ => vec![whole()],
                        }
                    }
                    None => page_ranges(r.pages, parallel),
                };
                (Some(row.get::<_, String>(0)), Some(client), partitions)
            }
            _ => (None, None, vec![whole()]),
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
        spawn_read(|tx| async move { inner.copy_out(&query, &key, batch_rows, &tx).await })
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

/// The whole table or query as one partition.
fn whole() -> TablePartition {
    TablePartition {
        key: "all".into(),
        predicate: None,
    }
}

/// Pages per partition and the number of partitions for a table of `pages`.
fn partition_pages(pages: u64, parallel: usize) -> (u64, u64) {
    let per = pages
        .div_ceil(parallel.max(1) as u64)
        .clamp(MIN_PARTITION_PAGES, MAX_PARTITION_PAGES);
    (per, pages.div_ceil(per).max(1))
}

/// `count` ranges of equal width over the key's values `lo..=hi`. The first and last are
/// open-ended, so keys written outside the bounds since planning are read too.
fn key_ranges(key: &str, lo: i64, hi: i64, count: u64) -> Vec<TablePartition> {
    let column = quote(key);
    let span = i128::from(hi) - i128::from(lo) + 1;
    let count = (count as i128).min(span).max(1);
    let step = (span + count - 1) / count;
    let bound = |i: i128| (i128::from(lo) + i * step) as i64;
    (0..count)
        .map(|i| {
            let mut conditions = Vec::new();
            if i > 0 {
                conditions.push(format!("{column} >= {}", bound(i)));
            }
            if i + 1 < count {
                conditions.push(format!("{column} < {}", bound(i + 1)));
            }
            TablePartition {
                key: format!("keys-{i}"),
                predicate: (!conditions.is_empty()).then(|| conditions.join(" AND ")),
            }
        })
        .collect()
}

/// The first NOT NULL smallint, integer or bigint column that alone has a unique index
/// (the primary key first), if the table has one.
async fn integer_key(client: &Client, address: &TableAddress, oid: u32) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = $1 AND i.indnkeyatts = 1 AND i.indisunique AND i.indisvalid \
             AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attnotnull \
             AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) \
             ORDER BY i.indisprimary DESC LIMIT 1",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error(address, e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Page ranges of equal size; the last one is open-ended so rows added at the end of the
/// table since planning are not missed.
fn page_ranges(pages: u64, parallel: usize) -> Vec<TablePartition> {
    let (per, count) = partition_pages(pages, parallel);
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

    #[test]
    fn key_ranges_are_open_at_both_ends_and_never_empty() {
        let parts = key_ranges("id", 1, 10, 3);
        let predicates: Vec<_> = parts.iter().map(|p| p.predicate.clone().unwrap()).collect();
        assert_eq!(
            predicates,
            ["\"id\" < 5", "\"id\" >= 5 AND \"id\" < 9", "\"id\" >= 9"]
        );
        // More partitions than keys: one per key at most; one key: no predicate at all.
        assert_eq!(key_ranges("id", 7, 8, 4).len(), 2);
        assert_eq!(key_ranges("id", 7, 7, 4)[0].predicate, None);
        // The full bigint range does not overflow.
        let parts = key_ranges("id", i64::MIN, i64::MAX, 4);
        assert_eq!(
            parts[3].predicate.as_deref(),
            Some("\"id\" >= 4611686018427387904")
        );
    }
}
