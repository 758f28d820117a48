//! Loading a table: a staging table filled by binary `COPY` on several connections, then
//! one transaction that swaps or merges it into the target.

use std::pin::Pin;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ferry_core::{Error, Result, TableAddress, WriteMode};
use futures::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use crate::tables::{
    check_key_columns, fields_to_add, is_change_column, is_change_stream, target_column, TableLoad,
    TableWriter, TargetState, CHANGE_DELETED, CHANGE_SEQ,
};

use super::source::table_columns;
use super::{connect, literal, pg_error, quote, split_name, CopyEncoder, PgColumn, PgType};

/// Encoded rows are sent in messages of about this size.
const SEND_BYTES: usize = 1 << 20;

/// A load into one table, planned and checked before any row moves.
pub struct PgLoad {
    address: TableAddress,
    /// The target's schema-qualified, quoted name.
    target: String,
    /// The target's own name, unquoted (what a new table is renamed to).
    target_name: String,
    target_exists: bool,
    staging: String,
    staging_name: String,
    schema_name: String,
    /// The target's columns for the incoming Arrow fields, in the same order.
    columns: Vec<PgColumn>,
    /// `CREATE TABLE` column definitions when the target does not exist yet.
    definitions: Vec<String>,
    mode: WriteMode,
    /// The rows are changes ([`is_change_stream`]): the staging table has the change
    /// columns too, and the commit keeps each key's last change, deleting tombstones.
    changes: bool,
    /// `ALTER TABLE … ADD COLUMN` for new fields (schemaEvolution: addColumns), run first.
    add_columns: Vec<String>,
}

impl PgLoad {
    /// Checks that rows of `schema` fit the table: every column exists with a type the
    /// values can be written as, key columns for upsert are present and unique-indexed.
    /// When the table does not exist, plans to create it from the Arrow types. Nothing is
    /// created or changed yet. `load_id` names the staging table, so a re-run of the same
    /// load finds what an interrupted one left.
    pub async fn prepare(address: &TableAddress, schema: SchemaRef, load_id: &str) -> Result<Self> {
        let Some(table) = &address.table else {
            return Err(Error::InvalidAddress {
                address: address.to_string(),
                reason: "a query can only be read from; name a table (?table=schema.name) to write"
                    .into(),
            });
        };
        let invalid = |reason: String| Error::InvalidAddress {
            address: address.to_string(),
            reason,
        };
        let (schema_part, name) = split_name(table).map_err(invalid)?;
        let client = connect(address).await?;
        let err = |e| pg_error(address, e);
        let schema_name = match schema_part {
            Some(s) => s,
            None => client
                .query_one("SELECT current_schema()::text", &[])
                .await
                .map_err(err)?
                .get::<_, Option<String>>(0)
                .ok_or_else(|| invalid("no schema to create the table in (search_path is empty); name it as schema.table".into()))?,
        };
        let target = format!("{}.{}", quote(&schema_name), quote(&name));
        let found = client
            .query_opt(
                "SELECT c.oid FROM pg_class c WHERE c.oid = to_regclass($1::text)",
                &[&target],
            )
            .await
            .map_err(err)?;
        let mode = address.mode;
        check_key_columns(address, &schema)?;
        let target_exists = found.is_some();
        let changes = mode == WriteMode::Upsert && is_change_stream(&schema);
        let change_column = |name: &str| PgColumn {
            name: name.to_string(),
            ty: if name == CHANGE_SEQ {
                PgType::Int8
            } else {
                PgType::Bool
            },
            nullable: false,
        };
        let mut add_columns = Vec::new();
        let (columns, definitions) = match found {
            Some(row) => {
                let oid: u32 = row.get(0);
                let existing = table_columns(&client, address, oid, &target).await?;
                let added = fields_to_add(&existing, |c| &c.name, &schema, address, &target)?;
                let mut columns = Vec::new();
                for field in schema.fields() {
                    if changes && is_change_column(field.name()) {
                        columns.push(change_column(field.name()));
                        continue;
                    }
                    if added.contains(field.name()) {
                        let ty = PgType::from_arrow(field).map_err(|reason| {
                            Error::data(address, format!("column '{}': {reason}", field.name()))
                        })?;
                        add_columns.push(format!(
                            "ALTER TABLE {target} ADD COLUMN {} {}",
                            quote(field.name()),
                            ty.sql()
                        ));
                        columns.push(PgColumn {
                            name: field.name().clone(),
                            ty,
                            nullable: true,
                        });
                        continue;
                    }
                    let column =
                        target_column(&existing, |c| &c.name, field.name(), address, &target)?;
                    columns.push(column.clone());
                }
                if mode == WriteMode::Upsert {
                    check_unique_key(&client, address, oid, &target, &address.key_columns).await?;
                }
                (columns, Vec::new())
            }
            None => {
                let mut columns = Vec::new();
                let mut definitions = Vec::new();
                for field in schema.fields() {
                    if changes && is_change_column(field.name()) {
                        columns.push(change_column(field.name()));
                        continue;
                    }
                    let ty = PgType::from_arrow(field).map_err(|reason| {
                        Error::data(address, format!("column '{}': {reason}", field.name()))
                    })?;
                    definitions.push(format!(
                        "{} {}{}",
                        quote(field.name()),
                        ty.sql(),
                        if field.is_nullable() { "" } else { " NOT NULL" }
                    ));
                    columns.push(PgColumn {
                        name: field.name().clone(),
                        ty,
                        nullable: field.is_nullable(),
                    });
                }
                (columns, definitions)
            }
        };
        // The encoder's checks name a column the values cannot be written into.
        CopyEncoder::new(columns.clone(), &schema).map_err(|e| Error::data(address, e))?;
        let staging_name = staging_name(&name, load_id);
        Ok(Self {
            address: address.clone(),
            staging: format!("{}.{}", quote(&schema_name), quote(&staging_name)),
            target,
            target_name: name,
            target_exists,
            staging_name,
            schema_name,
            columns,
            definitions,
            mode,
            changes,
            add_columns,
        })
    }

    /// True when the target existed before this load.
    pub fn target_exists(&self) -> bool {
        self.target_exists
    }
}

#[async_trait]
impl TableLoad for PgLoad {
    fn target(&self) -> &str {
        &self.target
    }

    /// TRUNCATE, VACUUM FULL and CLUSTER give a table a new relation file node; DROP and
    /// CREATE a new oid.
    async fn target_state(&self, count_rows: bool) -> Result<Option<TargetState>> {
        let client = connect(&self.address).await?;
        let err = |e| pg_error(&self.address, e);
        let Some(row) = client
            .query_opt(
                "SELECT c.oid::bigint, pg_relation_filenode(c.oid)::bigint \
                 FROM pg_class c WHERE c.oid = to_regclass($1::text)",
                &[&self.target],
            )
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let (oid, node): (i64, Option<i64>) = (row.get(0), row.get(1));
        let rows = match count_rows {
            false => None,
            true => {
                let sql = format!("SELECT count(*) FROM {}", self.target);
                let n: i64 = client.query_one(&sql, &[]).await.map_err(err)?.get(0);
                Some(n.max(0) as u64)
            }
        };
        Ok(Some(TargetState {
            identity: format!("oid {oid}, file {}", node.unwrap_or_default()),
            rows,
        }))
    }

    fn creates_target(&self) -> bool {
        !self.target_exists
    }

    /// True when the staging table of this load exists (an interrupted run left it).
    async fn staging_exists(&self) -> Result<bool> {
        let client = connect(&self.address).await?;
        let row = client
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&self.staging])
            .await
            .map_err(|e| pg_error(&self.address, e))?;
        Ok(row.get(0))
    }

    /// Creates an empty staging table, replacing one an interrupted run left. Enum types a
    /// new table needs are created too.
    async fn create_staging(&mut self) -> Result<()> {
        let client = connect(&self.address).await?;
        let err = |e| pg_error(&self.address, e);
        for alter in &self.add_columns {
            client.batch_execute(alter).await.map_err(err)?;
        }
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.staging))
            .await
            .map_err(err)?;
        if self.changes {
            // Without the target's constraints: a tombstone's row is null but for its key.
            let like = match self.target_exists {
                true => format!("AS SELECT * FROM {} WITH NO DATA", self.target),
                false => {
                    for column in &self.columns {
                        create_enum(&client, &self.address, &column.ty).await?;
                    }
                    let columns: Vec<String> = self
                        .columns
                        .iter()
                        .filter(|c| !is_change_column(&c.name))
                        .map(|c| format!("{} {}", quote(&c.name), c.ty.sql()))
                        .collect();
                    format!("({})", columns.join(", "))
                }
            };
            client
                .batch_execute(&format!(
                    "CREATE UNLOGGED TABLE {} {like}; ALTER TABLE {0} ADD COLUMN {} bigint NOT NULL, ADD COLUMN {} boolean NOT NULL",
                    self.staging,
                    quote(CHANGE_SEQ),
                    quote(CHANGE_DELETED)
                ))
                .await
                .map_err(err)?;
            return Ok(());
        }
        if self.target_exists {
            // Merged into the target at the end, never read by anyone else: no WAL needed.
            client
                .batch_execute(&format!(
                    "CREATE UNLOGGED TABLE {} (LIKE {})",
                    self.staging, self.target
                ))
                .await
                .map_err(err)?;
            return Ok(());
        }
        for column in &self.columns {
            create_enum(&client, &self.address, &column.ty).await?;
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE {} ({})",
                self.staging,
                self.definitions.join(", ")
            ))
            .await
            .map_err(err)?;
        // Types as PostgreSQL now knows them (enum oids for array elements).
        let oid: u32 = client
            .query_one("SELECT to_regclass($1::text)::oid", &[&self.staging])
            .await
            .map_err(err)?
            .get(0);
        self.columns = table_columns(&client, &self.address, oid, &self.staging).await?;
        Ok(())
    }

    /// A new connection streaming rows into the staging table.
    async fn writer(&self, schema: &SchemaRef) -> Result<Box<dyn TableWriter>> {
        let encoder = CopyEncoder::new(self.columns.clone(), schema)
            .map_err(|e| Error::data(&self.address, e))?;
        let client = connect(&self.address).await?;
        let sink = client
            .copy_in(&format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                self.staging,
                self.column_list()
            ))
            .await
            .map_err(|e| self.error(e))?;
        let mut buf = BytesMut::with_capacity(SEND_BYTES * 2);
        CopyEncoder::header(&mut buf);
        Ok(Box::new(PgWriter {
            _client: client,
            sink: Box::pin(sink),
            encoder,
            buf,
            load: self.describe(),
        }))
    }

    /// Makes the staged rows the table's, in one transaction: a new table is renamed into
    /// place; `overwrite` replaces an existing table's rows, `append` adds to them, and
    /// `upsert` inserts or updates by key.
    async fn commit(&self) -> Result<()> {
        let client = connect(&self.address).await?;
        let list = self.column_list();
        let mut sql = vec!["BEGIN".to_string()];
        if self.changes {
            self.merge_changes(&mut sql);
        } else if !self.target_exists {
            sql.push(format!(
                "ALTER TABLE {} RENAME TO {}",
                self.staging,
                quote(&self.target_name)
            ));
            if self.mode == WriteMode::Upsert {
                sql.push(format!(
                    "ALTER TABLE {} ADD PRIMARY KEY ({})",
                    self.target,
                    self.key_list()
                ));
            }
        } else {
            let insert = format!(
                "INSERT INTO {} ({list}) SELECT {list} FROM {}",
                self.target, self.staging
            );
            match self.mode {
                WriteMode::Overwrite => {
                    sql.push(format!("TRUNCATE {}", self.target));
                    sql.push(insert);
                }
                WriteMode::Append => sql.push(insert),
                WriteMode::Upsert => {
                    sql.push(format!(
                        "{insert} ON CONFLICT ({}) {}",
                        self.key_list(),
                        self.on_conflict()
                    ));
                }
            }
            sql.push(format!("DROP TABLE {}", self.staging));
        }
        sql.push("COMMIT".into());
        client
            .batch_execute(&sql.join(";\n"))
            .await
            .map_err(|e| self.error(e))
    }

    /// Drops the staging table.
    async fn discard(&self) -> Result<()> {
        let client = connect(&self.address).await?;
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.staging))
            .await
            .map_err(|e| pg_error(&self.address, e))
    }
}

impl PgLoad {
    /// The statements that merge staged changes: the target is created first when new;
    /// of each key's changes only the last (highest offset) counts, a tombstone deleting
    /// the key's row and anything else inserting or updating it.
    fn merge_changes(&self, sql: &mut Vec<String>) {
        let keys = self.key_list();
        if !self.target_exists {
            sql.push(format!(
                "CREATE TABLE {} ({}, PRIMARY KEY ({keys}))",
                self.target,
                self.definitions.join(", ")
            ));
        }
        let last = format!(
            "SELECT DISTINCT ON ({keys}) * FROM {} ORDER BY {keys}, {} DESC",
            self.staging,
            quote(CHANGE_SEQ)
        );
        let matched: Vec<String> = self
            .address
            .key_columns
            .iter()
            .map(|k| {
                let k = self.column_name(k);
                format!("t.{k} = s.{k}")
            })
            .collect();
        sql.push(format!(
            "DELETE FROM {} t USING ({last}) s WHERE {} AND s.{}",
            self.target,
            matched.join(" AND "),
            quote(CHANGE_DELETED)
        ));
        let list = self.target_list();
        sql.push(format!(
            "INSERT INTO {} ({list}) SELECT {list} FROM ({last}) s WHERE NOT s.{} ON CONFLICT ({keys}) {}",
            self.target,
            quote(CHANGE_DELETED),
            self.on_conflict()
        ));
        sql.push(format!("DROP TABLE {}", self.staging));
    }

    /// What an upsert does to a row whose key exists.
    fn on_conflict(&self) -> String {
        crate::tables::on_conflict(
            self.columns.iter().map(|c| c.name.as_str()),
            &self.address.key_columns,
        )
    }

    /// The target's columns loaded, without a change stream's own.
    fn target_list(&self) -> String {
        self.columns
            .iter()
            .filter(|c| !is_change_column(&c.name))
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Key column `k` as the table spells it, quoted.
    fn column_name(&self, k: &str) -> String {
        let name = self
            .columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(k))
            .map_or(k, |c| c.name.as_str());
        quote(name)
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_list(&self) -> String {
        self.address
            .key_columns
            .iter()
            .map(|k| self.column_name(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn describe(&self) -> LoadNames {
        LoadNames {
            address: self.address.clone(),
            staging_name: self.staging_name.clone(),
            schema_name: self.schema_name.clone(),
            target: self.target.clone(),
        }
    }

    fn error(&self, e: tokio_postgres::Error) -> Error {
        self.describe().error(e)
    }
}

/// What an error message needs to speak of the target rather than the staging table.
struct LoadNames {
    address: TableAddress,
    staging_name: String,
    schema_name: String,
    target: String,
}

impl LoadNames {
    fn error(&self, e: tokio_postgres::Error) -> Error {
        let error = pg_error(&self.address, e);
        let text = error.to_string();
        if !text.contains(&self.staging_name) {
            return error;
        }
        let shown = text
            .replace(
                &format!("{}.{}", self.schema_name, self.staging_name),
                &self.target,
            )
            .replace(&self.staging_name, &self.target);
        let prefix = format!("{}: ", self.address);
        Error::store(&self.address, shown.strip_prefix(&prefix).unwrap_or(&shown))
    }
}

/// One connection's stream of rows into the staging table.
pub struct PgWriter {
    _client: Client,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    encoder: CopyEncoder,
    buf: BytesMut,
    load: LoadNames,
}

#[async_trait]
impl TableWriter for PgWriter {
    /// Encodes `batch` (on the calling thread) and sends what has filled up.
    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.encoder.encode(batch, &mut self.buf).map_err(|e| {
            Error::data(
                format!("{} (table {})", self.load.address, self.load.target),
                e,
            )
        })?;
        if self.buf.len() >= SEND_BYTES {
            let chunk = self.buf.split().freeze();
            self.sink
                .send(chunk)
                .await
                .map_err(|e| self.load.error(e))?;
        }
        Ok(())
    }

    /// Ends the stream; the rows are then committed in the staging table. Returns how many.
    async fn finish(mut self: Box<Self>) -> Result<u64> {
        CopyEncoder::trailer(&mut self.buf);
        let chunk = self.buf.split().freeze();
        self.sink
            .send(chunk)
            .await
            .map_err(|e| self.load.error(e))?;
        self.sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| self.load.error(e))
    }
}

/// Creates the enum type a new column needs when the database does not have it.
async fn create_enum(client: &Client, address: &TableAddress, ty: &PgType) -> Result<()> {
    let (sql, labels) = match ty {
        PgType::Enum { sql, labels, .. } => (sql, labels),
        PgType::Array(inner) => return Box::pin(create_enum(client, address, inner)).await,
        _ => return Ok(()),
    };
    let exists: bool = client
        .query_one("SELECT to_regtype($1::text) IS NOT NULL", &[sql])
        .await
        .map_err(|e| pg_error(address, e))?
        .get(0);
    if !exists {
        let labels: Vec<String> = labels.iter().map(|l| literal(l)).collect();
        client
            .batch_execute(&format!(
                "CREATE TYPE {sql} AS ENUM ({})",
                labels.join(", ")
            ))
            .await
            .map_err(|e| pg_error(address, e))?;
    }
    Ok(())
}

/// Upsert needs a unique index or primary key on exactly the key columns.
async fn check_unique_key(
    client: &Client,
    address: &TableAddress,
    oid: u32,
    target: &str,
    keys: &[String],
) -> Result<()> {
    let rows = client
        .query(
            "SELECT array_agg(a.attname::text) FROM pg_index x \
             CROSS JOIN LATERAL unnest(x.indkey) AS k(attnum) \
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
             WHERE x.indrelid = $1 AND x.indisunique AND x.indpred IS NULL \
             GROUP BY x.indexrelid",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error(address, e))?;
    let mut wanted: Vec<String> = keys.iter().map(|k| k.to_ascii_lowercase()).collect();
    wanted.sort();
    let found = rows.iter().any(|row| {
        let mut have: Vec<String> = row
            .get::<_, Vec<String>>(0)
            .iter()
            .map(|c| c.to_ascii_lowercase())
            .collect();
        have.sort();
        have == wanted
    });
    if found {
        Ok(())
    } else {
        Err(Error::data(
            address,
            format!(
                "upsert into {target} needs a primary key or unique index on ({}); the table has none",
                keys.join(", ")
            ),
        ))
    }
}

/// `<table>__ferry_<id>`, within PostgreSQL's 63-byte identifiers.
fn staging_name(table: &str, load_id: &str) -> String {
    let suffix = format!("__ferry_{}", &load_id[..load_id.len().min(12)]);
    let mut base: String = table.to_string();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_fit_identifiers() {
        assert_eq!(
            staging_name("orders", "0123456789abcdef"),
            "orders__ferry_0123456789ab"
        );
        let long = "x".repeat(80);
        assert_eq!(staging_name(&long, "ab").len(), 63);
    }
}
