//! PostgreSQL tables as record sources and sinks, moved with binary `COPY`.
//!
//! Reading decodes `COPY (SELECT …) TO STDOUT (FORMAT binary)` straight into Arrow
//! builders, in page-range partitions that share one exported snapshot. Loading encodes
//! Arrow batches into binary `COPY … FROM STDIN` on several connections into a staging
//! table, which one final transaction swaps or merges into the target.

mod codec;
mod sink;
mod source;

use std::time::Duration;

use ferry_core::{Error, Result, TableAddress};
use tokio_postgres::Client;

pub(crate) use crate::tables::quote;
use crate::tables::NameRules;

pub use codec::{CodecError, CopyDecoder, CopyEncoder, PgColumn, PgType};
pub use sink::{PgLoad, PgWriter};
pub use source::{PgScan, PgSource};

/// Opens a session to the database `address` names. What the URL leaves out comes from
/// the standard `PG*` environment variables; the password from the address's secret
/// reference, else `PGPASSWORD`.
pub async fn connect(address: &TableAddress) -> Result<Client> {
    let invalid = |reason: String| Error::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    // TLS settings are ferry's to apply (tokio-postgres knows neither verify-* nor roots).
    let mut url = address.url.clone();
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = Vec::new();
    for (k, v) in address.url.query_pairs() {
        match k.as_ref() {
            "sslmode" => sslmode = Some(v.into_owned()),
            "sslrootcert" => sslrootcert = Some(v.into_owned()),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
    let tls =
        ferry_state::tls::settings(sslmode.as_deref(), sslrootcert.as_deref()).map_err(invalid)?;
    let mut config: tokio_postgres::Config =
        url.as_str().parse().map_err(|e| invalid(format!("{e}")))?;
    config.ssl_mode(tls.mode.ssl_mode());
    if config.get_hosts().is_empty() {
        config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
    }
    if config.get_ports().is_empty() {
        if let Some(port) = env("PGPORT").and_then(|p| p.parse().ok()) {
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        config.user(env("PGUSER").or_else(|| env("USER")).unwrap_or_default());
    }
    if config.get_dbname().is_none() {
        if let Some(db) = env("PGDATABASE") {
            config.dbname(db);
        }
    }
    match &address.password {
        Some(reference) => {
            config.password(ferry_core::secret::resolve_secret(reference)?);
        }
        None => {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            }
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(30));
    }
    config.application_name("ferry");
    let (client, connection) = config
        .connect(tls.connector)
        .await
        .map_err(|e| pg_error(address, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// One line naming the database and what went wrong, with PostgreSQL's own message,
/// detail and hint when the server sent them.
pub(crate) fn pg_error(address: &TableAddress, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let mut text = db.message().to_string();
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(context) = db.where_() {
            text.push_str(&format!(" [{context}]"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        let code = db.code().code();
        return match &code[..2] {
            // 28: invalid authorization; 42501: insufficient privilege
            "28" => Error::permission_denied(address, text),
            _ if code == "42501" => Error::permission_denied(address, text),
            // 08: connection exception; 57P: operator intervention (terminated backend)
            "08" | "57" => Error::unreachable(address, text),
            _ => Error::store(address, text),
        };
    }
    if e.is_closed() {
        return Error::unreachable(address, "the server closed the connection");
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ferry_state::tls::explain(&mut text);
    if e.is_closed() || text.contains("connection") || text.contains("timed out") {
        Error::unreachable(address, text)
    } else {
        Error::store(address, text)
    }
}

/// A table name split into schema and name, both unquoted (`"Sales".orders` → `Sales`,
/// `orders`). Unquoted parts are folded to lower case, as PostgreSQL does.
pub(crate) fn split_name(name: &str) -> std::result::Result<(Option<String>, String), String> {
    let rules = NameRules {
        quotes: &['"'],
        fold_lower: true,
        qualifier: "schema",
    };
    crate::tables::split_name(name, &rules)
}

/// A string quoted as an SQL literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_like_postgres_reads_them() {
        assert_eq!(split_name("orders").unwrap(), (None, "orders".into()));
        assert_eq!(
            split_name("Sales.Orders").unwrap(),
            (Some("sales".into()), "orders".into())
        );
        assert_eq!(
            split_name("\"My.Schema\".\"Or\"\"ders\"").unwrap(),
            (Some("My.Schema".into()), "Or\"ders".into())
        );
        assert!(split_name("a.b.c").is_err());
        assert!(split_name("\"open").is_err());
        assert_eq!(quote("Or\"ders"), "\"Or\"\"ders\"");
    }
}
