//! MySQL and MariaDB tables as record sources and sinks, through `mysql_async`.
//!
//! Reading streams a binary-protocol result (one consistent snapshot per partition)
//! straight into Arrow builders. Loading sends multi-row `INSERT`s of about 1 MiB on
//! several connections into a staging table, which the commit renames into place or
//! merges into the target in one transaction.

mod codec;
mod sink;
mod source;

use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use ferry_core::{Error, Result, TableAddress};
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
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

/// How a session is protected, as the MySQL client's `--ssl-mode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SslMode {
    Disabled,
    /// TLS when the server offers it, unchecked; else plain (the default).
    Preferred,
    /// TLS, unchecked (checked as `VerifyCa` when `ssl-ca` is given).
    Required,
    /// TLS, the chain checked against `ssl-ca` (else the built-in roots).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyIdentity,
}

impl SslMode {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        Ok(match text.to_ascii_uppercase().replace('-', "_").as_str() {
            "DISABLED" => Self::Disabled,
            "PREFERRED" => Self::Preferred,
            "REQUIRED" => Self::Required,
            "VERIFY_CA" => Self::VerifyCa,
            "VERIFY_IDENTITY" => Self::VerifyIdentity,
            _ => {
                return Err(format!(
                    "unknown ssl-mode '{text}': expected DISABLED, PREFERRED, REQUIRED, \
                     VERIFY_CA or VERIFY_IDENTITY"
                ))
            }
        })
    }
}

/// How long opening a session may take, unless the URL says (`connect-timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// ferry's own session parameters, taken out of the URL's query before the driver
/// reads the rest.
struct Session {
    ssl_mode: SslMode,
    ssl_ca: Option<PathBuf>,
    connect_timeout: Duration,
    /// The rest of the query, for the driver.
    driver_query: String,
}

impl Session {
    fn parse(url: &url::Url) -> std::result::Result<Self, String> {
        let mut session = Session {
            ssl_mode: SslMode::Preferred,
            ssl_ca: None,
            connect_timeout: CONNECT_TIMEOUT,
            driver_query: String::new(),
        };
        let mut kept = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in url.query_pairs() {
            match k.replace('_', "-").as_str() {
                "ssl-mode" => session.ssl_mode = SslMode::parse(&v)?,
                "ssl-ca" => {
                    let path = PathBuf::from(v.as_ref());
                    std::fs::metadata(&path)
                        .map_err(|e| format!("ssl-ca {}: {e}", path.display()))?;
                    session.ssl_ca = Some(path);
                }
                "connect-timeout" => {
                    session.connect_timeout = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| {
                            format!("connect-timeout={v}: expected a number of seconds above 0")
                        })?;
                }
                _ => {
                    kept.append_pair(&k, &v);
                }
            }
        }
        session.driver_query = kept.finish();
        Ok(session)
    }

    /// The driver's TLS options for `mode` (`None`: plain).
    fn ssl_opts(&self, mode: SslMode) -> Option<SslOpts> {
        // As the MySQL client does, a CA makes REQUIRED check the chain.
        let mode = match (mode, &self.ssl_ca) {
            (SslMode::Required, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let opts = SslOpts::default();
        let opts = match &self.ssl_ca {
            Some(ca) => opts
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true),
            None => opts,
        };
        match mode {
            SslMode::Disabled => None,
            SslMode::Preferred | SslMode::Required => {
                Some(opts.with_danger_accept_invalid_certs(true))
            }
            SslMode::VerifyCa => Some(opts.with_danger_skip_domain_validation(true)),
            SslMode::VerifyIdentity => Some(opts),
        }
    }
}

/// Opens a session to the server `address` names. What the URL leaves out comes from
/// `MYSQL_HOST`, `MYSQL_TCP_PORT` and `USER`; the password from the address's secret
/// reference, else `MYSQL_PWD`. TLS as `ssl-mode` and `ssl-ca` say; opening gives up after
/// `connect-timeout` seconds.
pub async fn connect(address: &TableAddress) -> Result<Conn> {
    let invalid = |reason: String| Error::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = &address.url;
    let session = Session::parse(url).map_err(invalid)?;
    // Connection parameters the driver knows (e.g. `compression=fast`), checked by it.
    let params = Opts::from_url(&format!("mysql://localhost/?{}", session.driver_query))
        .map_err(|e| invalid(e.to_string()))?;
    // A peer that vanished is noticed by the kernel, not after TCP's default two hours.
    let keepalive = params.tcp_keepalive().or(Some(Duration::from_secs(10)));
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
        .tcp_keepalive(keepalive)
        .init(vec![SESSION_SETUP]);
    let open = |mode: SslMode| {
        let opts = opts.clone().ssl_opts(session.ssl_opts(mode));
        async move {
            match tokio::time::timeout(session.connect_timeout, Conn::new(opts)).await {
                Ok(opened) => opened.map_err(|e| my_error(address, e)),
                Err(_) => Err(Error::unreachable(
                    address,
                    format!(
                        "no session within {} s (connect-timeout)",
                        session.connect_timeout.as_secs_f64()
                    ),
                )),
            }
        }
    };
    match open(session.ssl_mode).await {
        // PREFERRED: plain when the server has no TLS to offer.
        Err(e) if session.ssl_mode == SslMode::Preferred && no_tls(&e) => {
            open(SslMode::Disabled).await
        }
        opened => opened,
    }
}

/// What [`my_error`] says of a server that cannot do TLS.
const NO_TLS: &str = "the server does not support TLS";

fn no_tls(e: &Error) -> bool {
    e.to_string().contains(NO_TLS)
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
        E::Io(io) => {
            let mut text = io.to_string();
            let mut source = std::error::Error::source(&io);
            while let Some(cause) = source {
                let shown = cause.to_string();
                if !text.contains(&shown) {
                    text.push_str(&format!(": {shown}"));
                }
                source = cause.source();
            }
            let text = ferry_core::error::one_line(&text);
            // A certificate refused is not mended by trying again.
            if text.contains("UnknownIssuer") {
                Error::store(
                    address,
                    format!(
                        "{text}; the server's certificate is not signed by a trusted CA: \
                         give the CA's certificate as ssl-ca=PATH"
                    ),
                )
            } else if text.contains("NotValidForName") {
                Error::store(
                    address,
                    format!(
                        "{text}; the server's certificate does not name this host: connect \
                         by a name it holds, or use ssl-mode=VERIFY_CA"
                    ),
                )
            } else if matches!(io, mysql_async::IoError::Tls(_)) || text.contains("certificate") {
                Error::store(address, text)
            } else {
                Error::unreachable(address, text)
            }
        }
        E::Driver(d @ (DriverError::ConnectionClosed | DriverError::PoolDisconnected)) => {
            Error::unreachable(address, d)
        }
        E::Url(u) => Error::InvalidAddress {
            address: address.to_string(),
            reason: u.to_string(),
        },
        E::Driver(DriverError::NoClientSslFlagFromServer) => Error::store(
            address,
            format!(
                "{NO_TLS}: use ssl-mode=PREFERRED or DISABLED, or give the server a certificate"
            ),
        ),
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
