//! Tables in relational databases: where they are and how a load writes them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;
use url::Url;

use crate::redact::{redact, MASK};
use crate::Error;

/// The database families ferry speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Database {
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
    /// An SQLite file, opened in-process.
    Sqlite,
}

impl Database {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }

    /// The family a URL scheme names: `postgres`/`postgresql`, `mysql`/`mariadb`,
    /// `sqlite`/`sqlite3`.
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::Mysql),
            "sqlite" | "sqlite3" => Some(Self::Sqlite),
            _ => None,
        }
    }
}

/// How a load writes into its table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Load into a staging table, then swap it in: readers see the old table or the new one.
    #[default]
    Overwrite,
    /// Add the rows to what the table holds, all of them or none.
    Append,
    /// Insert new keys and update existing ones, on `keyColumns`.
    Upsert,
}

impl FromStr for WriteMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "overwrite" => Ok(Self::Overwrite),
            "append" => Ok(Self::Append),
            "upsert" => Ok(Self::Upsert),
            other => Err(format!(
                "unknown mode '{other}': expected overwrite, append or upsert"
            )),
        }
    }
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Overwrite => "overwrite",
            Self::Append => "append",
            Self::Upsert => "upsert",
        })
    }
}

/// A table, or the result of a query, in a database.
///
/// Parsed from `postgres://user@host:5432/db?table=schema.name` (or `query=SELECT …`).
/// ferry's own parameters (`table`, `query`, `mode`, `keyColumns`, `password`) are taken out
/// of the URL; the rest are connection parameters. `password` is a secret reference
/// (`env:NAME`, `file:PATH`); the standard `PG*` environment variables fill what the URL
/// leaves out.
#[derive(Clone, PartialEq, Eq)]
pub struct TableAddress {
    pub database: Database,
    /// The connection URL without ferry's parameters.
    pub url: Url,
    pub table: Option<String>,
    pub query: Option<String>,
    /// A secret reference for the password, resolved when connecting.
    pub password: Option<String>,
    pub mode: WriteMode,
    pub key_columns: Vec<String>,
    /// `schemaEvolution=addColumns`: a nullable field the table lacks becomes a new
    /// column (else it is an error naming the field).
    pub add_columns: bool,
}

impl TableAddress {
    /// Parses and checks a complete address.
    pub(crate) fn parse(input: &str, url: Url) -> Result<Self, Error> {
        let address = Self::from_url(input, url)?;
        address.validate().map_err(|reason| Error::InvalidAddress {
            address: address.to_string(),
            reason,
        })?;
        Ok(address)
    }

    /// Parses a connection URL whose table may be given elsewhere (in a manifest).
    pub fn parse_connection(input: &str) -> Result<Self, Error> {
        let url = Url::parse(input.trim()).map_err(|e| Error::InvalidAddress {
            address: redact(input),
            reason: format!("malformed URL: {e}"),
        })?;
        if Database::from_scheme(url.scheme()).is_none() {
            return Err(Error::InvalidAddress {
                address: redact(input),
                reason: "expected a postgres://, mysql:// or sqlite:// URL".into(),
            });
        }
        Self::from_url(input, url)
    }

    fn from_url(input: &str, url: Url) -> Result<Self, Error> {
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some(MASK));
        }
        let shown = if shown == url {
            input.to_string()
        } else {
            shown.to_string()
        };
        let invalid = |reason: String| Error::InvalidAddress {
            address: redact(&shown),
            reason,
        };
        let database = Database::from_scheme(url.scheme())
            .ok_or_else(|| invalid(format!("'{}' is not a database scheme", url.scheme())))?;
        let mut address = Self {
            database,
            url: url.clone(),
            table: None,
            query: None,
            password: None,
            mode: WriteMode::default(),
            key_columns: Vec::new(),
            add_columns: false,
        };
        let mut kept = Vec::new();
        for (k, v) in url.query_pairs() {
            let v = v.into_owned();
            match k.as_ref() {
                "table" => address.table = Some(v),
                "query" => address.query = Some(v),
                "password" => address.password = Some(v),
                "mode" => address.mode = v.parse().map_err(invalid)?,
                "keyColumns" | "key_columns" => {
                    address.key_columns = v
                        .split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect()
                }
                "schemaEvolution" => address.add_columns = schema_evolution(&v).map_err(invalid)?,
                _ => kept.push((k.into_owned(), v)),
            }
        }
        address.url.set_query(None);
        if !kept.is_empty() {
            address.url.query_pairs_mut().extend_pairs(kept);
        }
        if url.password().is_some() {
            let variable = match database {
                Database::Mysql => "MYSQL_PWD",
                _ => "PGPASSWORD",
            };
            return Err(invalid(format!(
                "a password in the URL would be stored and shown; give it as a secret reference (?password=env:NAME or file:PATH) or in {variable}"
            )));
        }
        if database == Database::Sqlite {
            address.sqlite_path().map_err(invalid)?;
        }
        Ok(address)
    }

    /// Checks what any table address needs; called again on addresses built from manifests.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.table, &self.query) {
            (Some(_), Some(_)) => return Err("give either table= or query=, not both".into()),
            (None, None) => {
                return Err(
                    "name a table (?table=schema.name) or, to read, a query (?query=SELECT …)"
                        .into(),
                )
            }
            (Some(t), None) if t.trim().is_empty() => return Err("empty table name".into()),
            _ => {}
        }
        if self.mode == WriteMode::Upsert && self.key_columns.is_empty() {
            return Err("mode upsert needs keyColumns (e.g. ?keyColumns=id)".into());
        }
        Ok(())
    }

    /// The file an `sqlite:` address names: `sqlite:///abs/path.db` or `sqlite:rel/path.db`.
    pub fn sqlite_path(&self) -> Result<PathBuf, String> {
        let url = &self.url;
        if url.host_str().is_some_and(|h| !h.is_empty()) {
            return Err(format!(
                "an sqlite address names a file, not a host ('{}'): write sqlite:///absolute/path.db or sqlite:relative/path.db",
                url.host_str().unwrap_or_default()
            ));
        }
        let path = percent_decode_str(url.path())
            .decode_utf8_lossy()
            .into_owned();
        if path.is_empty() || path == "/" {
            return Err("no database file: write sqlite:///absolute/path.db".into());
        }
        Ok(PathBuf::from(path))
    }

    /// The table's name as the user wrote it, or `query` for a query.
    pub fn name(&self) -> &str {
        self.table.as_deref().unwrap_or("query")
    }
}

/// Whether `schemaEvolution` (`none` or `addColumns`) adds columns.
pub fn schema_evolution(value: &str) -> Result<bool, String> {
    match value {
        "addColumns" => Ok(true),
        "none" => Ok(false),
        other => Err(format!(
            "schemaEvolution '{other}': use addColumns (a new nullable field adds a column) or none"
        )),
    }
}

impl fmt::Display for TableAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some(MASK));
        }
        {
            let mut pairs = shown.query_pairs_mut();
            if let Some(t) = &self.table {
                pairs.append_pair("table", t);
            }
            if let Some(q) = &self.query {
                pairs.append_pair("query", q);
            }
            if self.mode != WriteMode::default() {
                pairs.append_pair("mode", &self.mode.to_string());
            }
            if !self.key_columns.is_empty() {
                pairs.append_pair("keyColumns", &self.key_columns.join(","));
            }
            if self.add_columns {
                pairs.append_pair("schemaEvolution", "addColumns");
            }
        }
        let text = shown.to_string();
        // An empty query string leaves a trailing '?'.
        write!(f, "{}", redact(text.trim_end_matches('?')))
    }
}
