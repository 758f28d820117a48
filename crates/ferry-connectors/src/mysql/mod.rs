//! MySQL and MariaDB tables as record sources and sinks, through `mysql_async`.
//!
//! Reading streams a binary-protocol result (one consistent snapshot per partition)
//! straight into Arrow builders. Loading sends multi-row `INSERT`s of about 1 MiB on
//! several connections into a staging table, which the commit renames into place or
//! merges into the target in one transaction.

mod codec;
mod sink;
mod source;

use arrow::datatypes::SchemaRef;
use ferry_core::{Error, Result, TableAddress};
use mysql_async::{Conn, Opts, OptsBuilder};
use percent_encoding::percent_decode_str;

pub(crate) use crate::tables::quote;
use crate::tables::{NameRules, TableLoad, TableSource};

pub use codec::{MyColumn, MyType, TYPE_KEY};
pub use sink::{MyLoad, MyWriter};
pub use source::{MyScan, MySource};

/// Every session reads and writes UTC, and speaks the SQL that pushed-down filters are
/// written in (double-quoted identifiers, `''` inside strings); strict mode turns values
/// a column cannot hold into errors instead of warnings.
const SESSION_SETUP: &str = "SET NAMES utf8mb4, time_zone = '+00:00', sql_mode = \
     'ANSI_QUOTES,NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'";

pub async fn open(address: &TableAddress) -> Result<Box<dyn TableSource>> {
    Ok(Box::new(MySource::open(address).await?))
}

pub async fn prepare(
    address: &TableAddress,
    schema: SchemaRef,
    load_id: &str,
) -> Result<Box<dyn TableLoad>> {
    Ok(Box::new(MyLoad::prepare(address, schema, load_id).await?))
}

/// Opens a session to the server `address` names. What the URL leaves out comes from
/// `MYSQL_HOST`, `MYSQL_TCP_PORT` and `USER`; the password from the address's secret
/// reference, else `MYSQL_PWD`.
pub async fn connect(address: &TableAddress) -> Result<Conn> {
    let invalid = |reason: String| Error::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = &address.url;
    // Connection parameters the driver knows (e.g. `compression=fast`), checked by it.
    let params = Opts::from_url(&format!("mysql://localhost/?{}", url.query().unwrap_or("")))
        .map_err(|e| invalid(e.to_string()))?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .or_else(|| env("MYSQL_HOST"))
        .unwrap_or_else(|| "localhost".into());
    let port = match url.port() {
        Some(port) => port,
        None => match env("MYSQL_TCP_PORT") {
            Some(p) => p
                .parse()
                .map_err(|_| invalid(format!("MYSQL_TCP_PORT '{p}' is not a port")))?,
            None => 3306,
        },
    };
    let user = Some(url.username())
        .filter(|u| !u.is_empty())
        .map(|u| percent_decode_str(u).decode_utf8_lossy().into_owned())
        .or_else(|| env("USER"))
        .unwrap_or_default();
    let password = match &address.password {
        Some(reference) => Some(
            String::from_utf8(ferry_core::secret::resolve_secret(reference)?)
                .map_err(|_| invalid("the password is not valid UTF-8".into()))?,
        ),
        None => env("MYSQL_PWD"),
    };
    let opts = OptsBuilder::from_opts(params)
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(user))
        .pass(password)
        .db_name(database(address))
        .prefer_socket(false)
        .init(vec![SESSION_SETUP]);
    Conn::new(opts).await.map_err(|e| my_error(address, e))
}

/// The database the URL's path names, if any.
pub(crate) fn database(address: &TableAddress) -> Option<String> {
    let path = address.url.path().trim_matches('/');
    (!path.is_empty()).then(|| percent_decode_str(path).decode_utf8_lossy().into_owned())
}

/// One line naming the server and what went wrong, with the server's own message.
pub(crate) fn my_error(address: &TableAddress, e: mysql_async::Error) -> Error {
    use mysql_async::{DriverError, Error as E};
    match e {
        E::Server(s) => {
            let text = ferry_core::error::one_line(&s.message);
            match s.code {
                // access denied: for the user, to a database, to a table, for a command;
                // a plugin refused the login
                1044 | 1045 | 1142 | 1143 | 1227 | 1698 | 1370 => {
                    Error::permission_denied(address, text)
                }
                // unknown database, unknown table
                1049 | 1146 => Error::not_found(format!("{address} ({text})")),
                // server shutting down, too many connections
                1053 | 1040 | 1203 => Error::unreachable(address, text),
                _ => Error::store(address, format!("{text} [{}]", s.code)),
            }
        }
        E::Io(io) => Error::unreachable(address, ferry_core::error::one_line(&io.to_string())),
        E::Driver(d @ (DriverError::ConnectionClosed | DriverError::PoolDisconnected)) => {
            Error::unreachable(address, d)
        }
        E::Url(u) => Error::InvalidAddress {
            address: address.to_string(),
            reason: u.to_string(),
        },
        other => Error::store(address, ferry_core::error::one_line(&other.to_string())),
    }
}

/// A table name split into database and name, both unquoted (`"Sales".orders` or
/// `` `Sales`.orders `` → `Sales`, `orders`). Names keep their case, as MySQL does.
pub(crate) fn split_name(name: &str) -> std::result::Result<(Option<String>, String), String> {
    let rules = NameRules {
        quotes: &['"', '`'],
        fold_lower: false,
        qualifier: "database",
    };
    crate::tables::split_name(name, &rules)
}

/// The database and table an address names; the database from the name or else the
/// URL's path.
pub(crate) fn table_of(address: &TableAddress, table: &str) -> Result<(String, String)> {
    let invalid = |reason: String| Error::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    let (db, name) = split_name(table).map_err(invalid)?;
    let db = db.or_else(|| database(address)).ok_or_else(|| {
        invalid("no database: name it in the URL (mysql://host/db) or as db.table".into())
    })?;
    Ok((db, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_and_keep_their_case() {
        assert_eq!(split_name("Orders").unwrap(), (None, "Orders".into()));
        assert_eq!(
            split_name("Sales.Orders").unwrap(),
            (Some("Sales".into()), "Orders".into())
        );
        assert_eq!(
            split_name("`My.Db`.\"Or\"\"ders\"").unwrap(),
            (Some("My.Db".into()), "Or\"ders".into())
        );
        assert!(split_name("a.b.c").is_err());
        assert!(split_name("`open").is_err());
        assert_eq!(quote("Or\"ders"), "\"Or\"\"ders\"");
    }
}
