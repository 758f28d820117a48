//! Counting what an address holds, and asking a database a yes/no question: what a
//! pipeline's conditions check (`rowCount`, `query`).

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use ferry_connectors::open_source;
use ferry_connectors::tables::{open_table, Selection};
use ferry_core::{DataAddress, Error, Result, TableAddress};
use ferry_formats::{open_reader, Format, FormatOptions};
use tokio::runtime::Handle;

use crate::records::{location, open_input};

/// Rows at `address`: a table's or a query's (`COUNT(*)` in the database), or the records
/// of every file of a known format under a path or prefix (read in batches, never whole).
pub async fn count_rows(address: &DataAddress) -> Result<u64> {
    match address {
        DataAddress::Table(t) => {
            let counted = match (&t.query, &t.table) {
                (Some(query), _) => format!("SELECT COUNT(*) FROM ({query}) AS ferry_count"),
                (None, Some(table)) => format!("SELECT COUNT(*) FROM {table}"),
                (None, None) => {
                    return Err(Error::invalid_option(
                        address.to_string(),
                        "name a table or a query to count its rows",
                    ))
                }
            };
            let value = first_value(t, &counted).await?;
            value
                .parse::<u64>()
                .map_err(|_| Error::data(address, format!("COUNT(*) returned '{value}'")))
        }
        DataAddress::Kafka(_) => Err(Error::invalid_option(
            address.to_string(),
            "a topic's records are not counted; count the table or files it was loaded into",
        )),
        _ => {
            let source = open_source(address)?;
            let listing = source.list().await?;
            let single = listing.single_object;
            let mut total = 0;
            for entry in listing.entries {
                if !single && crate::records::is_marker(&entry.key) {
                    continue;
                }
                let Some(format) = Format::from_name(&entry.key) else {
                    if single {
                        return Err(Error::invalid_option(
                            address.to_string(),
                            "cannot tell the file's format from its name",
                        ));
                    }
                    continue;
                };
                let (source, handle) = (source.clone(), Handle::current());
                total += tokio::task::spawn_blocking(move || -> Result<u64> {
                    let input = open_input(&source, &entry, &handle, None);
                    let shown = location(&source, &entry);
                    let reader =
                        open_reader(format, &FormatOptions::default(), input, &shown, None)?;
                    let mut rows = 0;
                    for batch in reader {
                        rows += batch?.num_rows() as u64;
                    }
                    Ok(rows)
                })
                .await
                .map_err(|e| Error::Internal(format!("a count stopped: {e}")))??;
            }
            Ok(total)
        }
    }
}

/// Runs `sql` on the database `url` names; true when its first row's first column is
/// true (a boolean, a non-zero number, `t`/`true`/`yes`). Returns what it saw, for
/// messages.
pub async fn query_holds(url: &str, sql: &str) -> Result<(bool, String)> {
    let address = TableAddress::parse_connection(url)?;
    let value = first_value(&address, sql).await?;
    let holds = match value.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" => true,
        other => other.parse::<f64>().is_ok_and(|n| n != 0.0),
    };
    Ok((holds, value))
}

/// The first column of the first row `sql` returns, as text (`(no rows)` when none,
/// `NULL` when null).
async fn first_value(address: &TableAddress, sql: &str) -> Result<String> {
    let mut asked = address.clone();
    asked.table = None;
    asked.query = Some(sql.to_string());
    let table = open_table(&asked).await?;
    let scan = table.scan(&Selection::default(), 1).await?;
    if scan.partitions().is_empty() {
        return Ok("(no rows)".into());
    }
    let mut batches = scan.read(0, 1);
    while let Some(batch) = batches.recv().await {
        let batch = batch?;
        if batch.num_rows() == 0 || batch.num_columns() == 0 {
            continue;
        }
        return Ok(text(batch.column(0)));
    }
    Ok("(no rows)".into())
}

fn text(column: &Arc<dyn Array>) -> String {
    if column.is_null(0) {
        return "NULL".into();
    }
    match column.data_type() {
        DataType::Boolean => column.as_boolean().value(0).to_string(),
        DataType::Int64 => column.as_primitive::<Int64Type>().value(0).to_string(),
        _ => arrow::util::display::array_value_to_string(column, 0).unwrap_or_else(|_| "?".into()),
    }
}
