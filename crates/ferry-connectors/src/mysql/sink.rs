//! Loading a table: a staging table filled by multi-row `INSERT`s on several connections,
//! then a rename or one transaction that makes its rows the target's.
//!
//! MySQL commits every DDL statement on its own, so each commit is built so that, once
//! the rows are the target's, the staging table is either gone or empty: committing
//! again after a crash at any point is then a no-op.
//!
//! Changes into an `upsert` table ([`is_change_stream`]) are staged without the target's
//! constraints (a tombstone's row is null but for its key, a key may change many times);
//! the merge keeps each key's last change by offset, deleting the tombstoned keys and
//! upserting the rest in one transaction.

use arrow::datatypes::{FieldRef, SchemaRef};
use arrow::json::writer::EncoderOptions;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use ferry_core::{Error, Result, TableAddress, WriteMode};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::tables::{
    check_key_columns, fields_to_add, is_change_column, is_change_stream, target_column, TableLoad,
    TableWriter, TargetState, CHANGE_DELETED, CHANGE_SEQ,
};

use super::codec::{create_type, writable, LiteralWriter, MyType};
use super::source::table_columns;
use super::{connect, my_error, quote, table_of};

/// Statements are sent once they hold about this many bytes.
const STATEMENT_BYTES: usize = 1 << 20;
/// MySQL's identifiers are at most 64 characters.
const MAX_NAME: usize = 64;

/// A load into one table, planned and checked before any row moves.
pub struct MyLoad {
    address: TableAddress,
    /// `"db"."name"`
    target: String,
    /// The target's own name, unquoted.
    name: String,
    target_exists: bool,
    db: String,
    staging_name: String,
    /// What an overwrite renames the old table to, until it is dropped.
    old_name: String,
    /// The target's column names for the incoming fields, in the same order.
    columns: Vec<String>,
    /// `CREATE TABLE` column definitions when the target does not exist yet.
    definitions: Vec<String>,
    /// For each incoming field, whether its column refuses NULL.
    not_null: Vec<bool>,
    mode: WriteMode,
    /// The rows are changes: the staging table's column definitions (without the
    /// target's constraints, with the change columns).
    changes: Option<Vec<String>>,
    /// `ALTER TABLE … ADD COLUMN` for new fields (schemaEvolution: addColumns), run first.
    add_columns: Vec<String>,
}

impl MyLoad {
    /// Checks that rows of `schema` fit the table: every column exists, every Arrow type
    /// can be written, key columns for upsert are present and form a primary key or
    /// unique index. When the table does not exist, plans it from the Arrow types (or the
    /// MySQL types a MySQL source recorded). Nothing is created or changed yet.
    pub async fn prepare(address: &TableAddress, schema: SchemaRef, load_id: &str) -> Result<Self> {
        let Some(table) = &address.table else {
            return Err(Error::InvalidAddress {
                address: address.to_string(),
                reason: "a query can only be read from; name a table (?table=name) to write".into(),
            });
        };
        let (db, name) = table_of(address, table)?;
        let target = format!("{}.{}", quote(&db), quote(&name));
        let mode = address.mode;
        check_key_columns(address, &schema)?;
        for field in schema.fields() {
            writable(field.data_type()).map_err(|reason| {
                Error::data(address, format!("column '{}': {reason}", field.name()))
            })?;
        }
        let mut conn = connect(address).await?;
        let err = |e| my_error(address, e);
        let found: Option<String> = conn
            .exec_first(
                "SELECT TABLE_TYPE FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&db, &name),
            )
            .await
            .map_err(err)?;
        let target_exists = found.is_some();
        let changing = mode == WriteMode::Upsert && is_change_stream(&schema);
        // A change stream's staging columns: every column nullable, and its own two.
        let mut staged = Vec::new();
        let change_definition = |name: &str| match name {
            CHANGE_SEQ => format!("{} BIGINT NOT NULL", quote(name)),
            _ => format!("{} BOOLEAN NOT NULL", quote(name)),
        };
        let mut add_columns = Vec::new();
        let (columns, definitions, not_null) = if target_exists {
            let existing = table_columns(&mut conn, address, &db, &name).await?;
            let added = fields_to_add(&existing, |c| &c.name, &schema, address, &target)?;
            // NULL would become a value in these (a counter, the current time).
            let generated: Vec<String> = conn
                .exec(
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                     AND (EXTRA LIKE '%auto_increment%' OR DATA_TYPE = 'timestamp')",
                    (&db, &name),
                )
                .await
                .map_err(err)?;
            let mut not_null = Vec::new();
            let mut columns = Vec::new();
            for field in schema.fields() {
                if changing && is_change_column(field.name()) {
                    staged.push(change_definition(field.name()));
                    not_null.push(false);
                    columns.push(field.name().clone());
                    continue;
                }
                if added.contains(field.name()) {
                    let ty = create_type(field, false).map_err(|reason| {
                        Error::data(address, format!("column '{}': {reason}", field.name()))
                    })?;
                    let definition = format!("{} {ty} NULL", quote(field.name()));
                    add_columns.push(format!("ALTER TABLE {target} ADD COLUMN {definition}"));
                    staged.push(definition);
                    not_null.push(false);
                    columns.push(field.name().clone());
                    continue;
                }
                let column = target_column(&existing, |c| &c.name, field.name(), address, &target)?;
                if column.ty == MyType::Bit && !field.data_type().is_integer() {
                    return Err(Error::data(
                        address,
                        format!(
                            "column '{}' of {target} is {} and takes integers, not {}",
                            column.name,
                            column.sql.as_deref().unwrap_or("bit"),
                            field.data_type()
                        ),
                    ));
                }
                let ty = match &column.sql {
                    Some(sql) => sql.clone(),
                    None => create_type(field, false).map_err(|reason| {
                        Error::data(address, format!("column '{}': {reason}", field.name()))
                    })?,
                };
                staged.push(format!("{} {ty} NULL", quote(&column.name)));
                not_null.push(!changing && !column.nullable && !generated.contains(&column.name));
                columns.push(column.name.clone());
            }
            if mode == WriteMode::Upsert {
                check_unique_key(&mut conn, address, &db, &name, &target).await?;
            }
            if mode == WriteMode::Overwrite {
                // InnoDB moves a foreign key with the table it references: after the swap
                // the old table could not be dropped.
                let referenced: Option<(String, String)> = conn
                    .exec_first(
                        "SELECT TABLE_NAME, CONSTRAINT_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS \
                         WHERE UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?",
                        (&db, &name),
                    )
                    .await
                    .map_err(err)?;
                if let Some((child, constraint)) = referenced {
                    return Err(Error::not_supported(
                        address,
                        format!(
                            "overwrite swaps in a new table, but foreign key {constraint} of table {child} references {target}; use mode=append into the emptied table, or drop the foreign key"
                        ),
                    ));
                }
            }
            (columns, Vec::new(), not_null)
        } else {
            let mut definitions = Vec::new();
            for field in schema.fields() {
                if changing && is_change_column(field.name()) {
                    staged.push(change_definition(field.name()));
                    continue;
                }
                let key = address
                    .key_columns
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(field.name()));
                let ty =
                    create_type(field, key && mode == WriteMode::Upsert).map_err(|reason| {
                        Error::data(address, format!("column '{}': {reason}", field.name()))
                    })?;
                staged.push(format!("{} {ty} NULL", quote(field.name())));
                definitions.push(format!(
                    "{} {ty}{}",
                    quote(field.name()),
                    // Explicit, so a `timestamp` does not become NOT NULL with a default.
                    if field.is_nullable() {
                        " NULL"
                    } else {
                        " NOT NULL"
                    }
                ));
            }
            if mode == WriteMode::Upsert {
                let keys: Vec<String> = address.key_columns.iter().map(|k| quote(k)).collect();
                definitions.push(format!("PRIMARY KEY ({})", keys.join(", ")));
            }
            (
                schema.fields().iter().map(|f| f.name().clone()).collect(),
                definitions,
                schema
                    .fields()
                    .iter()
                    .map(|f| !changing && !f.is_nullable())
                    .collect(),
            )
        };
        let _ = conn.disconnect().await;
        Ok(Self {
            address: address.clone(),
            target,
            target_exists,
            staging_name: staging_name(&name, load_id, ""),
            old_name: staging_name(&name, load_id, "_old"),
            db,
            columns,
            definitions,
            not_null,
            mode,
            name,
            changes: changing.then_some(staged),
            add_columns,
        })
    }

    fn staging(&self) -> String {
        format!("{}.{}", quote(&self.db), quote(&self.staging_name))
    }

    fn old(&self) -> String {
        format!("{}.{}", quote(&self.db), quote(&self.old_name))
    }

    /// The target's key columns as it spells them.
    fn keys(&self) -> Vec<&String> {
        self.columns
            .iter()
            .filter(|c| {
                self.address
                    .key_columns
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(c))
            })
            .collect()
    }

    /// What an upsert does to a row whose key exists: set every other loaded column.
    fn on_duplicate(&self) -> String {
        let keys = self.keys();
        let mut updates: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !keys.contains(c) && !is_change_column(c))
            .map(|c| format!("{0} = VALUES({0})", quote(c)))
            .collect();
        if updates.is_empty() {
            updates = keys
                .iter()
                .map(|k| format!("{0} = {0}", quote(k)))
                .collect();
        }
        format!("ON DUPLICATE KEY UPDATE {}", updates.join(", "))
    }

    /// The statements that merge staged changes: the target is created first when new;
    /// of each key's changes only the last (highest offset) counts, a tombstone deleting
    /// the key's row and anything else inserting or updating it.
    fn merge_changes(&self, sql: &mut Vec<String>) {
        let staging = self.staging();
        let keys: Vec<String> = self.keys().iter().map(|k| quote(k)).collect();
        let keys = keys.join(", ");
        if !self.target_exists {
            sql.push(format!(
                "CREATE TABLE IF NOT EXISTS {} ({}) DEFAULT CHARSET = utf8mb4",
                self.target,
                self.definitions.join(", ")
            ));
        }
        let list: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !is_change_column(c))
            .map(|c| quote(c))
            .collect();
        let list = list.join(", ");
        let last = format!(
            "SELECT {list}, {deleted} AS ferry_deleted, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {seq} DESC) AS ferry_last FROM {staging}",
            deleted = quote(CHANGE_DELETED),
            seq = quote(CHANGE_SEQ),
        );
        let matched: Vec<String> = self
            .keys()
            .iter()
            .map(|k| format!("t.{0} = s.{0}", quote(k)))
            .collect();
        sql.push("START TRANSACTION".into());
        sql.push(format!(
            "DELETE t FROM {} t JOIN ({last}) s ON {} WHERE s.ferry_last = 1 AND s.ferry_deleted",
            self.target,
            matched.join(" AND ")
        ));
        sql.push(format!(
            "INSERT INTO {} ({list}) SELECT {list} FROM ({last}) s WHERE s.ferry_last = 1 AND NOT s.ferry_deleted {}",
            self.target,
            self.on_duplicate()
        ));
        // Emptied with the merge: a re-run finding it merges nothing again.
        sql.push(format!("DELETE FROM {staging}"));
        sql.push("COMMIT".into());
        sql.push(format!("DROP TABLE {staging}"));
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A server error, speaking of the target rather than the staging table.
    fn error(&self, e: mysql_async::Error) -> Error {
        let error = my_error(&self.address, e);
        let text = error.to_string();
        if !text.contains(&self.staging_name) {
            return error;
        }
        let shown = text.replace(&self.staging_name, &self.target);
        let prefix = format!("{}: ", self.address);
        Error::store(&self.address, shown.strip_prefix(&prefix).unwrap_or(&shown))
    }

    async fn execute(&self, conn: &mut Conn, sql: &[String]) -> Result<()> {
        for statement in sql {
            conn.query_drop(statement.as_str())
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl TableLoad for MyLoad {
    fn target(&self) -> &str {
        &self.target
    }

    /// InnoDB gives a truncated or recreated table a new table id (MariaDB's
    /// `INNODB_SYS_TABLES`, MySQL 8's `INNODB_TABLES`, both need the PROCESS privilege);
    /// without them, the creation time tells a recreated table.
    async fn target_state(&self, count_rows: bool) -> Result<Option<TargetState>> {
        let mut conn = connect(&self.address).await?;
        let err = |e| my_error(&self.address, e);
        let created: Option<Option<String>> = conn
            .exec_first(
                "SELECT CAST(CREATE_TIME AS CHAR) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&self.db, &self.name),
            )
            .await
            .map_err(err)?;
        let Some(created) = created else {
            let _ = conn.disconnect().await;
            return Ok(None);
        };
        let innodb_name = format!("{}/{}", self.db, self.name);
        let mut identity = None;
        for view in ["INNODB_SYS_TABLES", "INNODB_TABLES"] {
            let sql = format!("SELECT TABLE_ID FROM information_schema.{view} WHERE NAME = ?");
            if let Ok(Some(id)) = conn.exec_first::<u64, _, _>(sql, (&innodb_name,)).await {
                identity = Some(format!("table id {id}"));
                break;
            }
        }
        let rows = match count_rows {
            false => None,
            true => conn
                .query_first::<u64, _>(format!("SELECT COUNT(*) FROM {}", self.target))
                .await
                .map_err(err)?,
        };
        let _ = conn.disconnect().await;
        Ok(Some(TargetState {
            identity: identity
                .unwrap_or_else(|| format!("created {}", created.unwrap_or_default())),
            rows,
        }))
    }

    fn creates_target(&self) -> bool {
        !self.target_exists
    }

    /// True when this load's staging table exists. An overwrite killed between its
    /// rename and dropping the old table left that old table: it is dropped here.
    async fn staging_exists(&self) -> Result<bool> {
        let mut conn = connect(&self.address).await?;
        self.execute(&mut conn, &[format!("DROP TABLE IF EXISTS {}", self.old())])
            .await?;
        let found: Option<String> = conn
            .exec_first(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&self.db, &self.staging_name),
            )
            .await
            .map_err(|e| my_error(&self.address, e))?;
        let _ = conn.disconnect().await;
        Ok(found.is_some())
    }

    /// Creates an empty staging table (like the target, or from the planned columns),
    /// replacing one an interrupted run left.
    async fn create_staging(&mut self) -> Result<()> {
        let mut conn = connect(&self.address).await?;
        self.execute(&mut conn, &self.add_columns).await?;
        let create = if let Some(staged) = &self.changes {
            format!(
                "CREATE TABLE {} ({}) DEFAULT CHARSET = utf8mb4",
                self.staging(),
                staged.join(", ")
            )
        } else if self.target_exists {
            format!("CREATE TABLE {} LIKE {}", self.staging(), self.target)
        } else {
            format!(
                "CREATE TABLE {} ({}) DEFAULT CHARSET = utf8mb4",
                self.staging(),
                self.definitions.join(", ")
            )
        };
        self.execute(
            &mut conn,
            &[format!("DROP TABLE IF EXISTS {}", self.staging()), create],
        )
        .await?;
        let _ = conn.disconnect().await;
        Ok(())
    }

    /// A new connection sending rows into the staging table.
    async fn writer(&self, schema: &SchemaRef) -> Result<Box<dyn TableWriter>> {
        let conn = connect(&self.address).await?;
        Ok(Box::new(MyWriter {
            address: self.address.clone(),
            conn: Some(conn),
            prefix: format!(
                "INSERT INTO {} ({}) VALUES ",
                self.staging(),
                self.column_list()
            ),
            fields: schema.fields().iter().cloned().collect(),
            statement: String::with_capacity(STATEMENT_BYTES + (64 << 10)),
            statement_rows: 0,
            rows: 0,
            json: EncoderOptions::default(),
            not_null: self.not_null.clone(),
            location: format!("{} (table {})", self.address, self.target),
            staging_name: self.staging_name.clone(),
            target: self.target.clone(),
        }))
    }

    /// Makes the staged rows the table's: a new table is renamed into place; `overwrite`
    /// swaps the tables in one `RENAME`; `append` and `upsert` insert from the staging
    /// table and empty it in one transaction, then drop it.
    async fn commit(&self) -> Result<()> {
        let mut conn = connect(&self.address).await?;
        let staging = self.staging();
        let mut sql = Vec::new();
        if self.changes.is_some() {
            self.merge_changes(&mut sql);
        } else if !self.target_exists {
            sql.push(format!("RENAME TABLE {staging} TO {}", self.target));
        } else {
            let list = self.column_list();
            let insert = format!(
                "INSERT INTO {} ({list}) SELECT {list} FROM {staging}",
                self.target
            );
            match self.mode {
                WriteMode::Overwrite => {
                    sql.push(format!("DROP TABLE IF EXISTS {}", self.old()));
                    sql.push(format!(
                        "RENAME TABLE {target} TO {old}, {staging} TO {target}",
                        target = self.target,
                        old = self.old()
                    ));
                    sql.push(format!("DROP TABLE {}", self.old()));
                }
                WriteMode::Append | WriteMode::Upsert => {
                    let insert = if self.mode == WriteMode::Append {
                        insert
                    } else {
                        format!("{insert} {}", self.on_duplicate())
                    };
                    sql.push("START TRANSACTION".into());
                    sql.push(insert);
                    // Emptied with the insert: a re-run finding it inserts nothing again.
                    sql.push(format!("DELETE FROM {staging}"));
                    sql.push("COMMIT".into());
                    sql.push(format!("DROP TABLE {staging}"));
                }
            }
        }
        self.execute(&mut conn, &sql).await?;
        let _ = conn.disconnect().await;
        Ok(())
    }

    /// Drops the staging table.
    async fn discard(&self) -> Result<()> {
        let mut conn = connect(&self.address).await?;
        self.execute(
            &mut conn,
            &[format!("DROP TABLE IF EXISTS {}", self.staging())],
        )
        .await?;
        let _ = conn.disconnect().await;
        Ok(())
    }
}

/// One connection's stream of rows into the staging table.
pub struct MyWriter {
    address: TableAddress,
    conn: Option<Conn>,
    prefix: String,
    fields: Vec<FieldRef>,
    statement: String,
    statement_rows: u64,
    /// Rows this writer sent before the current statement.
    rows: u64,
    json: EncoderOptions,
    not_null: Vec<bool>,
    location: String,
    staging_name: String,
    target: String,
}

impl MyWriter {
    /// Runs one `INSERT` of `count` rows.
    async fn send(&mut self, statement: &str, count: u64) -> Result<()> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::Internal("writer used after finish".into()))?;
        if let Err(e) = conn.query_drop(statement).await {
            return Err(self.statement_error(e));
        }
        self.rows += count;
        Ok(())
    }

    /// A value the column refused names the row among this writer's rows (MySQL counts
    /// from the statement's first).
    fn statement_error(&self, e: mysql_async::Error) -> Error {
        if let mysql_async::Error::Server(s) = &e {
            // out of range, data too long, incorrect value, NULL into NOT NULL, truncated,
            // duplicate key, check constraint
            if matches!(
                s.code,
                1048 | 1062 | 1264 | 1265 | 1292 | 1366 | 1406 | 1411 | 3819 | 4025
            ) {
                let mut text = s.message.replace(&self.staging_name, &self.target);
                if let Some(i) = text.rfind(" at row ") {
                    if let Ok(n) = text[i + 8..].trim().parse::<u64>() {
                        text = format!("{} at row {}", &text[..i], self.rows + n);
                    }
                }
                return Error::data(&self.location, ferry_core::error::one_line(&text));
            }
        }
        let text = my_error(&self.address, e).to_string();
        let prefix = format!("{}: ", self.address);
        let text = text.strip_prefix(&prefix).unwrap_or(&text);
        Error::data(
            &self.location,
            text.replace(&self.staging_name, &self.target),
        )
    }
}

#[async_trait]
impl TableWriter for MyWriter {
    /// Encodes `batch` as `INSERT` rows and sends each statement that has filled up.
    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        // Encoded first, sent after: the JSON encoders cannot live across an await.
        let full = {
            let fields = &self.fields;
            let options = &self.json;
            let mut literals = LiteralWriter::new(batch, fields, &self.not_null, options)
                .map_err(|e| Error::data(&self.location, e))?;
            let mut full: Vec<(String, u64)> = Vec::new();
            let mut pending = 0;
            for row in 0..batch.num_rows() {
                if self.statement_rows == 0 {
                    self.statement.push_str(&self.prefix);
                } else {
                    self.statement.push_str(", ");
                }
                literals
                    .row(row, &mut self.statement)
                    .map_err(|(column, e)| {
                        Error::data(
                            &self.location,
                            format!(
                                "column '{}', row {}: {e}",
                                fields[column].name(),
                                self.rows + pending + self.statement_rows + 1
                            ),
                        )
                    })?;
                self.statement_rows += 1;
                if self.statement.len() >= STATEMENT_BYTES {
                    let statement = std::mem::replace(
                        &mut self.statement,
                        String::with_capacity(STATEMENT_BYTES + (64 << 10)),
                    );
                    full.push((statement, self.statement_rows));
                    pending += self.statement_rows;
                    self.statement_rows = 0;
                }
            }
            full
        };
        for (statement, count) in full {
            self.send(&statement, count).await?;
        }
        Ok(())
    }

    /// Sends what is left; returns how many rows this writer stored.
    async fn finish(mut self: Box<Self>) -> Result<u64> {
        if self.statement_rows > 0 {
            let statement = std::mem::take(&mut self.statement);
            let count = self.statement_rows;
            self.send(&statement, count).await?;
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
        Ok(self.rows)
    }
}

/// Upsert needs a primary key or unique index on exactly the key columns.
async fn check_unique_key(
    conn: &mut Conn,
    address: &TableAddress,
    db: &str,
    name: &str,
    target: &str,
) -> Result<()> {
    let rows: Vec<(String, String)> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (db, name),
        )
        .await
        .map_err(|e| my_error(address, e))?;
    let mut wanted: Vec<String> = address
        .key_columns
        .iter()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    wanted.sort();
    let mut indexes: Vec<(String, Vec<String>)> = Vec::new();
    for (index, column) in rows {
        match indexes.last_mut() {
            Some((name, columns)) if *name == index => columns.push(column.to_ascii_lowercase()),
            _ => indexes.push((index, vec![column.to_ascii_lowercase()])),
        }
    }
    let found = indexes.into_iter().any(|(_, mut have)| {
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
                address.key_columns.join(", ")
            ),
        ))
    }
}

/// `<table>__ferry_<id><suffix>`, within MySQL's 64-character identifiers.
fn staging_name(table: &str, load_id: &str, suffix: &str) -> String {
    let id: String = load_id.chars().take(12).collect();
    let suffix = format!("__ferry_{id}{suffix}");
    let mut base: String = table.to_string();
    while base.chars().count() + suffix.chars().count() > MAX_NAME {
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
            staging_name("orders", "0123456789abcdef", ""),
            "orders__ferry_0123456789ab"
        );
        let long = "x".repeat(80);
        assert_eq!(staging_name(&long, "ab", "_old").chars().count(), 64);
    }
}
