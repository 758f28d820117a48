//! Where data lives: a [`DataAddress`] parsed from a URL shorthand or a path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use url::Url;

use crate::kafka::KafkaAddress;
use crate::redact::{is_secret_name, redact, MASK};
use crate::table::{Database, TableAddress};
use crate::Error;

/// A location of files or objects.
///
/// Parsed from `./dir`, `/abs/path`, `file:///abs`, `s3://bucket/key?opt=v`,
/// `az://container/path?opt=v`, `gs://bucket/key?opt=v` or `http(s)://host/path`. A key or path ending in `/`
/// names a directory or prefix. Options in the query string are per-address settings
/// (`endpoint`, `region`, …) applied on top of the environment.
#[derive(Clone, PartialEq, Eq)]
pub enum DataAddress {
    Local {
        path: PathBuf,
    },
    S3 {
        bucket: String,
        key: String,
        options: BTreeMap<String, String>,
    },
    Azure {
        container: String,
        path: String,
        options: BTreeMap<String, String>,
    },
    /// Google Cloud Storage: `gs://bucket/key`.
    Gcs {
        bucket: String,
        key: String,
        options: BTreeMap<String, String>,
    },
    /// Read-only: a single object served over HTTP(S).
    Http {
        url: Url,
    },
    /// A table, or a query's result, in a database: `postgres://host/db?table=t`.
    Table(TableAddress),
    /// A Kafka topic: `kafka://host:9092/topic`.
    Kafka(KafkaAddress),
}

impl DataAddress {
    /// Parses an address, naming the input (secrets masked) in any error.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidAddress {
            address: redact(input),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(invalid("empty address"));
        }
        // `sqlite:relative/file.db` names a file relative to the working directory.
        let relative_sqlite = trimmed.split_once(':').filter(|(s, rest)| {
            !rest.starts_with("//") && Database::from_scheme(s) == Some(Database::Sqlite)
        });
        if let Some(rest) = trimmed
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("kafka://"))
            .map(|_| &trimmed[8..])
        {
            // Several brokers (`b1:9092,b2:9092`) are no URL host: parsed by hand.
            return KafkaAddress::parse(rest)
                .map(Self::Kafka)
                .map_err(|r| invalid(&r));
        }
        let Some((scheme, _)) = trimmed.split_once("://").or(relative_sqlite) else {
            return Ok(Self::Local {
                path: PathBuf::from(trimmed),
            });
        };
        let scheme = scheme.to_ascii_lowercase();
        let known = [
            "file",
            "s3",
            "az",
            "azure",
            "gs",
            "http",
            "https",
            "postgres",
            "postgresql",
            "mysql",
            "mariadb",
            "sqlite",
            "sqlite3",
        ];
        if !known.contains(&scheme.as_str()) {
            return Err(invalid(&format!(
                "unknown scheme '{scheme}': expected a local path, file://, s3://, az://, gs://, http://, https://, postgres://, mysql://, sqlite:// or kafka://"
            )));
        }
        let url = Url::parse(trimmed).map_err(|e| invalid(&format!("malformed URL: {e}")))?;
        match scheme.as_str() {
            s if Database::from_scheme(s).is_some() => {
                Ok(Self::Table(TableAddress::parse(input, url)?))
            }
            "file" => {
                let path = url.to_file_path().map_err(|()| {
                    invalid("file:// URLs need an absolute path, e.g. file:///data/in")
                })?;
                let mut path_str = path.to_string_lossy().into_owned();
                if url.path().ends_with('/') && !path_str.ends_with('/') {
                    path_str.push('/');
                }
                Ok(Self::Local {
                    path: PathBuf::from(path_str),
                })
            }
            "s3" => Ok(Self::S3 {
                bucket: bucket_name(&url, "s3", "-.").map_err(|r| invalid(&r))?,
                key: decoded_key(&url).map_err(|r| invalid(&r))?,
                options: options(&url).map_err(|r| invalid(&r))?,
            }),
            // GCS bucket names also take '_' (not as the first or last character).
            "gs" => Ok(Self::Gcs {
                bucket: bucket_name(&url, "gs", "-._").map_err(|r| invalid(&r))?,
                key: decoded_key(&url).map_err(|r| invalid(&r))?,
                options: options(&url).map_err(|r| invalid(&r))?,
            }),
            "az" | "azure" => {
                let container = url.host_str().unwrap_or_default().to_string();
                if container.is_empty() {
                    return Err(invalid(
                        "missing container name, e.g. az://my-container/prefix/",
                    ));
                }
                Ok(Self::Azure {
                    container,
                    path: decoded_key(&url).map_err(|r| invalid(&r))?,
                    options: options(&url).map_err(|r| invalid(&r))?,
                })
            }
            _ => {
                if url.host_str().unwrap_or_default().is_empty() {
                    return Err(invalid("missing host"));
                }
                Ok(Self::Http { url })
            }
        }
    }

    /// The kind of store, as used in manifests and messages: `file`, `s3`, `azure`, `gcs`,
    /// `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local { .. } => "file",
            Self::S3 { .. } => "s3",
            Self::Azure { .. } => "azure",
            Self::Gcs { .. } => "gcs",
            Self::Http { .. } => "http",
            Self::Table(t) => t.database.name(),
            Self::Kafka(_) => "kafka",
        }
    }

    /// True when the address ends in `/`, i.e. the user named a directory or prefix.
    pub fn names_a_directory(&self) -> bool {
        match self {
            Self::Local { path } => path.as_os_str().to_string_lossy().ends_with('/'),
            Self::S3 { key, .. } | Self::Gcs { key, .. } => key.is_empty() || key.ends_with('/'),
            Self::Azure { path, .. } => path.is_empty() || path.ends_with('/'),
            Self::Http { url } => url.path().ends_with('/'),
            Self::Table(_) | Self::Kafka(_) => false,
        }
    }

    /// The path, key or URL path, which is where a file name and extension are read from.
    pub fn path_text(&self) -> String {
        match self {
            Self::Local { path } => path.to_string_lossy().into_owned(),
            Self::S3 { key, .. } | Self::Gcs { key, .. } => key.clone(),
            Self::Azure { path, .. } => path.clone(),
            Self::Http { url } => url.path().to_string(),
            // A table or a topic has no file name to take a format from.
            Self::Table(_) | Self::Kafka(_) => String::new(),
        }
    }

    /// Per-address options (empty for local and HTTP addresses).
    pub fn options(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Self::S3 { options, .. } | Self::Azure { options, .. } | Self::Gcs { options, .. } => {
                Some(options)
            }
            _ => None,
        }
    }

    /// The same address with the key or path replaced by `child` appended (with a `/`).
    pub fn join(&self, child: &str) -> Self {
        let join = |base: &str| {
            if base.is_empty() || base.ends_with('/') {
                format!("{base}{child}")
            } else {
                format!("{base}/{child}")
            }
        };
        match self {
            Self::Local { path } => Self::Local {
                path: Path::new(&join(&path.to_string_lossy())).to_path_buf(),
            },
            Self::S3 {
                bucket,
                key,
                options,
            } => Self::S3 {
                bucket: bucket.clone(),
                key: join(key),
                options: options.clone(),
            },
            Self::Azure {
                container,
                path,
                options,
            } => Self::Azure {
                container: container.clone(),
                path: join(path),
                options: options.clone(),
            },
            Self::Gcs {
                bucket,
                key,
                options,
            } => Self::Gcs {
                bucket: bucket.clone(),
                key: join(key),
                options: options.clone(),
            },
            Self::Http { url } => Self::Http {
                url: url.join(child).unwrap_or_else(|_| url.clone()),
            },
            Self::Table(_) | Self::Kafka(_) => self.clone(),
        }
    }
}

/// The bucket of an `s3://` or `gs://` URL: lowercase letters, digits and `allowed`.
fn bucket_name(url: &Url, scheme: &str, allowed: &str) -> Result<String, String> {
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err(format!(
            "missing bucket name, e.g. {scheme}://my-bucket/prefix/"
        ));
    }
    if !bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || allowed.contains(c))
    {
        let shown: Vec<String> = allowed.chars().map(|c| format!("'{c}'")).collect();
        return Err(format!(
            "bucket name '{bucket}' may hold only lowercase letters, digits and {}",
            shown.join(", ")
        ));
    }
    Ok(bucket)
}

fn decoded_key(url: &Url) -> Result<String, String> {
    let raw = url.path().trim_start_matches('/');
    percent_decode(raw).ok_or_else(|| "the key is not valid percent-encoded UTF-8".to_string())
}

fn options(url: &Url) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in url.query_pairs() {
        let k = k.to_ascii_lowercase();
        if k.is_empty() {
            return Err("empty option name in the query string".into());
        }
        if out.insert(k.clone(), v.into_owned()).is_some() {
            return Err(format!("option '{k}' given twice"));
        }
    }
    Ok(out)
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl FromStr for DataAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// Shows the address as a URL with secret option values masked.
impl fmt::Display for DataAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let write_opts = |f: &mut fmt::Formatter<'_>, options: &BTreeMap<String, String>| {
            let mut sep = '?';
            for (k, v) in options {
                let v = if is_secret_name(k) { MASK } else { v.as_str() };
                write!(f, "{sep}{k}={v}")?;
                sep = '&';
            }
            Ok(())
        };
        match self {
            Self::Local { path } => write!(f, "{}", path.display()),
            Self::S3 {
                bucket,
                key,
                options,
            } => {
                write!(f, "s3://{bucket}/{key}")?;
                write_opts(f, options)
            }
            Self::Azure {
                container,
                path,
                options,
            } => {
                write!(f, "az://{container}/{path}")?;
                write_opts(f, options)
            }
            Self::Gcs {
                bucket,
                key,
                options,
            } => {
                write!(f, "gs://{bucket}/{key}")?;
                write_opts(f, options)
            }
            Self::Http { url } => {
                let mut shown = url.clone();
                let _ = shown.set_password(None);
                write!(f, "{}", redact(shown.as_str()))
            }
            Self::Table(t) => write!(f, "{t}"),
            Self::Kafka(k) => write!(f, "{k}"),
        }
    }
}

impl fmt::Debug for DataAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataAddress({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_file_urls() {
        assert_eq!(
            DataAddress::parse("./data").unwrap(),
            DataAddress::Local {
                path: "./data".into()
            }
        );
        assert_eq!(
            DataAddress::parse("file:///abs/dir/").unwrap(),
            DataAddress::Local {
                path: "/abs/dir/".into()
            }
        );
        assert!(DataAddress::parse("data/").unwrap().names_a_directory());
    }

    #[test]
    fn sqlite_files_by_absolute_or_relative_path() {
        for (input, path) in [
            ("sqlite:///abs/app.db?table=t", "/abs/app.db"),
            ("sqlite:data/app.db?table=t", "data/app.db"),
        ] {
            let DataAddress::Table(t) = DataAddress::parse(input).unwrap() else {
                panic!("{input} is a table");
            };
            assert_eq!(t.sqlite_path().unwrap(), PathBuf::from(path));
        }
    }

    #[test]
    fn s3_with_options_and_unicode_key() {
        let a = DataAddress::parse(
            "s3://my-bucket/dir/na%C3%AFve%20file.txt?endpoint=http://127.0.0.1:9000&Region=us-east-1",
        )
        .unwrap();
        let DataAddress::S3 {
            bucket,
            key,
            options,
        } = &a
        else {
            panic!("not s3: {a:?}")
        };
        assert_eq!(bucket, "my-bucket");
        assert_eq!(key, "dir/naïve file.txt");
        assert_eq!(options["endpoint"], "http://127.0.0.1:9000");
        assert_eq!(options["region"], "us-east-1");
        assert!(!a.names_a_directory());
        assert!(DataAddress::parse("s3://b").unwrap().names_a_directory());
    }

    #[test]
    fn azure_and_http() {
        let a = DataAddress::parse("az://cont/a/b/").unwrap();
        assert_eq!(a.kind(), "azure");
        assert!(a.names_a_directory());
        let h = DataAddress::parse("https://example.com/x.bin").unwrap();
        assert_eq!(h.kind(), "http");
    }

    #[test]
    fn gcs_buckets_keys_and_options() {
        let a =
            DataAddress::parse("gs://my_bucket.v2/dir/na%C3%AFve.txt?service_account_key=hunter22")
                .unwrap();
        let DataAddress::Gcs {
            bucket,
            key,
            options,
        } = &a
        else {
            panic!("not gcs: {a:?}")
        };
        assert_eq!(bucket, "my_bucket.v2");
        assert_eq!(key, "dir/naïve.txt");
        assert_eq!(options["service_account_key"], "hunter22");
        assert_eq!(a.kind(), "gcs");
        assert!(!a.names_a_directory());
        assert_eq!(
            a.to_string(),
            "gs://my_bucket.v2/dir/naïve.txt?service_account_key=***"
        );
        assert!(DataAddress::parse("gs://b").unwrap().names_a_directory());
        assert_eq!(
            DataAddress::parse("gs://b/pre")
                .unwrap()
                .join("x")
                .to_string(),
            "gs://b/pre/x"
        );
        let e = DataAddress::parse("gs://Bad/k").unwrap_err().to_string();
        assert!(e.contains("gs://Bad/k") && e.contains("'Bad'"), "{e}");
        let e = DataAddress::parse("gs:///k").unwrap_err().to_string();
        assert!(e.contains("gs://my-bucket/prefix/"), "{e}");
    }

    #[test]
    fn errors_name_the_address_and_the_fault() {
        let e = DataAddress::parse("wasb://bucket/x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("wasb://bucket/x") && e.contains("unknown scheme 'wasb'"),
            "{e}"
        );
        let e = DataAddress::parse("s3:///key").unwrap_err().to_string();
        assert!(e.contains("missing bucket"), "{e}");
        let e = DataAddress::parse("s3://Bad_Bucket/k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Bad_Bucket"), "{e}");
        let e = DataAddress::parse("wasb://b/k?sig=hunter22")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter22") && e.contains("sig=***"), "{e}");
        let e = DataAddress::parse("http://").unwrap_err().to_string();
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn display_masks_secret_options() {
        let a = DataAddress::parse("s3://b/k?secret_access_key=hunter22&region=eu").unwrap();
        let shown = a.to_string();
        assert_eq!(shown, "s3://b/k?region=eu&secret_access_key=***");
    }

    #[test]
    fn postgres_tables_and_queries() {
        let a = DataAddress::parse(
            "postgres://app@db.example:5432/shop?table=sales.orders&mode=upsert&keyColumns=id,%20day&sslmode=disable",
        )
        .unwrap();
        let DataAddress::Table(t) = &a else {
            panic!("not a table: {a:?}")
        };
        assert_eq!(t.table.as_deref(), Some("sales.orders"));
        assert_eq!(t.mode, crate::WriteMode::Upsert);
        assert_eq!(t.key_columns, ["id", "day"]);
        assert_eq!(
            t.url.as_str(),
            "postgres://app@db.example:5432/shop?sslmode=disable"
        );
        assert_eq!(a.kind(), "postgres");
        assert_eq!(
            a.to_string(),
            "postgres://app@db.example:5432/shop?sslmode=disable&table=sales.orders&mode=upsert&keyColumns=id%2Cday"
        );
        let q = DataAddress::parse("postgresql://h/db?query=SELECT%201").unwrap();
        let DataAddress::Table(q) = q else { panic!() };
        assert_eq!(q.query.as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn table_address_errors() {
        let e = DataAddress::parse("postgres://u:hunter22@h/db?table=t")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter22") && e.contains("secret reference"),
            "{e}"
        );
        let e = DataAddress::parse("postgres://h/db")
            .unwrap_err()
            .to_string();
        assert!(e.contains("?table="), "{e}");
        let e = DataAddress::parse("postgres://h/db?table=t&mode=merge")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown mode 'merge'"), "{e}");
        let e = DataAddress::parse("postgres://h/db?table=t&mode=upsert")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keyColumns"), "{e}");
    }

    #[test]
    fn join_appends_one_segment() {
        let a = DataAddress::parse("s3://b/pre").unwrap().join("x/y");
        assert_eq!(a.to_string(), "s3://b/pre/x/y");
        let a = DataAddress::parse("s3://b/").unwrap().join("x");
        assert_eq!(a.to_string(), "s3://b/x");
    }
}
