//! Transfer manifests: `ferry run FILE.yaml`.
//!
//! ```yaml
//! apiVersion: ferry.dev/v1
//! kind: BatchTransfer
//! metadata: {name: orders-to-lake}
//! spec:
//!   source:      {type: file, path: examples/data/orders.csv, format: csv}
//!   destination: {type: s3, bucket: lake, key: orders/, format: parquet}
//!   transformation:
//!   - {name: drop-notes, action: RemoveColumn, columns: [notes]}
//! ```
//!
//! Every level rejects keys it does not know, so a misspelt setting is an error rather
//! than silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_core::{DataAddress, Error, Result, TableAddress, TransformSpec, WriteMode};
use ferry_formats::{ColumnSpec, Format, FormatOptions};
use serde::Deserialize;

use crate::topics::FileRolling;
use crate::RecordOptions;

pub const API_VERSION: &str = "ferry.dev/v1";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: TransferSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransferSpec {
    pub source: AddressSpec,
    pub destination: AddressSpec,
    /// Applied in order.
    #[serde(default)]
    pub transformation: Vec<TransformSpec>,
    /// Service: when to run, as a 5-field cron expression (`*/15 * * * *`). Without one, the
    /// service runs the transfer once, when it is created. `ferry run` ignores it.
    pub schedule: Option<String>,
    /// Service: the IANA time zone the schedule is read in (`Europe/Berlin`) [default: UTC].
    pub time_zone: Option<String>,
    /// Service: no new runs while true; a running run finishes.
    #[serde(default)]
    pub suspend: bool,
    /// Service: what a scheduled run does when the previous one is still running.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Service: how often a run that failed for a passing reason is tried again [default: 3].
    pub max_failed_retries: Option<u32>,
    /// Service: how many succeeded runs are kept [default: 3].
    pub successful_jobs_history_limit: Option<u32>,
    /// Service: how many failed runs are kept [default: 1].
    pub failed_jobs_history_limit: Option<u32>,
    /// Service with several data planes: which may execute the runs.
    pub data_plane: Option<DataPlaneSpec>,
    /// Service: which transfer service executes the runs (`engine: auto | inProcess |
    /// <name>`, `prefer: latency | throughput`); the data plane routes by it. `ferry run`
    /// executes in-process whatever it says.
    pub execution: Option<serde_json::Value>,
}

/// What a transfer asks of the data plane that executes its runs. `ferry run` ignores it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataPlaneSpec {
    /// Labels the data plane must carry, each with the same value (`region: eu`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The selection strategy for this transfer's runs (`round-robin`, `random`,
    /// `least-recently-used`, `least-loaded`, or a custom one) [default: the control
    /// plane's].
    pub strategy: Option<String>,
}

/// What a scheduled run does when the previous run of its transfer is still running, as
/// for Kubernetes CronJobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ConcurrencyPolicy {
    /// Skip the new run.
    #[default]
    Forbid,
    /// Run both.
    Allow,
    /// Stop the running one and start the new one.
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    File,
    S3,
    #[serde(alias = "az", alias = "azureblob")]
    Azure,
    #[serde(alias = "gs", alias = "googlecloudstorage")]
    Gcs,
    Http,
    #[serde(alias = "postgresql")]
    Postgres,
    #[serde(alias = "mariadb")]
    Mysql,
    #[serde(alias = "sqlite3")]
    Sqlite,
    Kafka,
}

/// `kafka`: one broker (`host:9092`), or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Brokers {
    One(String),
    Many(Vec<String>),
}

/// `kafka`: where to start reading.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StartSpec {
    /// `earliest`, `latest`, or an RFC 3339 time.
    Named(String),
    /// The offset per partition.
    PerPartition(BTreeMap<i32, i64>),
}

/// `kafka`: the metadata columns added to rows read from a topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MetadataSpec {
    All(bool),
    Some(Vec<String>),
}

/// Where a dataset lives and how it is encoded, in the typed form.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddressSpec {
    #[serde(rename = "type")]
    pub store: StoreType,
    /// `file`: the file or directory. `azure`: the path inside the container. `sqlite`: the
    /// database file.
    pub path: Option<String>,
    /// `s3`, `gcs`.
    pub bucket: Option<String>,
    /// `s3`, `gcs`: the object key or prefix (ending in `/`).
    pub key: Option<String>,
    /// `azure`.
    pub container: Option<String>,
    /// `azure`: the storage account.
    pub account: Option<String>,
    /// `s3`, `azure`, `gcs`: a non-default endpoint (S3-compatible servers, Azurite, a GCS
    /// emulator).
    pub endpoint: Option<String>,
    /// `s3`.
    pub region: Option<String>,
    /// `http`: the object's URL. `postgres`, `mysql`: the database,
    /// `postgres://user@host:port/db`; `sqlite`: `sqlite:///path/file.db` (or `path`).
    pub url: Option<String>,
    /// Databases: the table, `schema.name` or `name`.
    pub table: Option<String>,
    /// Databases, as a source: a query whose result is read instead of a table.
    pub query: Option<String>,
    /// `postgres`, `mysql`: a secret reference for the password (`env:NAME`, `file:PATH`).
    pub password: Option<String>,
    /// Databases, as a destination: `overwrite` (default), `append` or `upsert`.
    pub mode: Option<WriteMode>,
    /// Databases, mode `upsert`: the columns that identify a row.
    pub key_columns: Option<Vec<String>>,
    /// Databases, as a destination: `addColumns` (a new nullable field adds a column) or
    /// `none` (default: a field the table lacks is an error).
    pub schema_evolution: Option<String>,
    /// `kafka`: `host:9092`, or a list of them.
    pub brokers: Option<Brokers>,
    /// `kafka`.
    pub topic: Option<String>,
    /// `kafka`: only these partitions (default: all).
    pub partitions: Option<Vec<i32>>,
    /// `kafka`: `earliest` (default), `latest`, an RFC 3339 time, or `{partition: offset}`.
    pub start_offset: Option<StartSpec>,
    /// `kafka`: `{partition: offset}` to stop before (default: the high watermarks when the
    /// run starts).
    pub end_offset: Option<BTreeMap<i32, i64>>,
    /// `kafka`: a consumer group to commit positions to.
    pub group_id: Option<String>,
    /// `kafka`: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    pub security_protocol: Option<String>,
    /// `kafka`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub sasl_mechanism: Option<String>,
    /// `kafka`: the SASL user (the password is `password`, a secret reference).
    pub user: Option<String>,
    /// `kafka`: the CA that signed the brokers' certificates (PEM file).
    pub ca_file: Option<String>,
    /// `kafka`, as a destination: create the topic when missing.
    pub create_topic: Option<bool>,
    /// `kafka`, read or written as rows: `json` (default), `avro`, `string` or `bytes`.
    pub value_format: Option<String>,
    /// `kafka`: a Confluent-compatible schema registry's URL (for `avro`).
    pub schema_registry: Option<String>,
    /// `kafka`, read as rows: `true`, or a list of `_key`, `_partition`, `_offset`,
    /// `_timestamp`, `_headers`.
    pub metadata: Option<MetadataSpec>,
    /// `kafka`, read as rows: `fail` (default), `skip` or `deadLetter`.
    pub on_error: Option<String>,
    /// `kafka`, with `onError: deadLetter`: the topic receiving events that do not decode.
    pub dead_letter: Option<String>,
    /// `kafka`, read as rows: only each key's last value (tombstones delete).
    pub create_snapshot: Option<bool>,
    /// A directory receiving a topic's rows: at most this many events per file.
    pub flush_size: Option<u64>,
    /// A directory receiving a topic's rows: a file holds one window of record time this
    /// long (a StreamTransfer's default: 60).
    pub rotate_interval_seconds: Option<u64>,
    /// A directory receiving a topic's rows: a file closes before its events' keys and
    /// values pass this many bytes (a StreamTransfer's default: 128 MiB).
    pub max_file_bytes: Option<u64>,
    /// A directory receiving a topic's rows: the directory of each file from its first
    /// event's record time, strftime-style in UTC (`dt=%Y-%m-%d/hour=%H`).
    pub path_format: Option<String>,
    /// A StreamTransfer with `createSnapshot` into a directory: seconds between compacted
    /// snapshots of the topic under `snapshots/` (default 3600).
    pub snapshot_interval_seconds: Option<u64>,
    /// Files and objects, as a source: `extract` unpacks the archive the address names
    /// into a tree at the destination. As a destination: `tar`, `tar.gz`, `tar.zst` or
    /// `zip` packs the source tree into the one object the address names.
    pub archive: Option<String>,
    /// Other settings of the store (object_store's names, e.g. `skip_signature`).
    /// Credentials belong in the environment, not here.
    #[serde(default)]
    pub store_options: BTreeMap<String, String>,
    pub format: Option<Format>,
    /// The columns and their types, instead of inferring them (CSV, JSON).
    pub schema: Option<Vec<ColumnSpec>>,
    /// Format settings: header, delimiter, quote, escape, nullValue, inferRows,
    /// compression, rowGroupSize, batchSize.
    #[serde(default)]
    pub options: FormatOptions,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_option(format!("manifest {}", path.display()), e.to_string())
        })?;
        Self::parse(&text).map_err(|e| match e {
            // The field at fault stays in the message (serde's own errors name theirs).
            Error::InvalidOption { name, reason } if name != "manifest" => Error::invalid_option(
                format!("manifest {}", path.display()),
                format!("{name}: {reason}"),
            ),
            Error::InvalidOption { reason, .. } => {
                Error::invalid_option(format!("manifest {}", path.display()), reason)
            }
            other => other,
        })
    }

    /// A manifest file for `ferry run`: a BatchTransfer runs once, a StreamTransfer until
    /// it is interrupted.
    pub fn parse(text: &str) -> Result<Self> {
        let manifest: Manifest =
            serde_norway::from_str(text).map_err(|e| Error::invalid_option("manifest", e))?;
        manifest.checked()
    }

    /// Whether it is a StreamTransfer.
    pub fn is_stream(&self) -> bool {
        self.kind == "StreamTransfer"
    }

    /// A manifest already read as JSON (the service's stored form, secrets resolved).
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| Error::invalid_option("manifest", e))?;
        manifest.checked()
    }

    fn checked(self) -> Result<Self> {
        let manifest = self;
        if manifest.api_version != API_VERSION {
            return Err(Error::invalid_option(
                "manifest",
                format!(
                    "apiVersion '{}' is not supported; use {API_VERSION}",
                    manifest.api_version
                ),
            ));
        }
        match manifest.kind.as_str() {
            // A StreamTransfer's runs are micro-batches of the service's stream loop, each
            // executed like a BatchTransfer of what arrived since the last.
            "BatchTransfer" | "StreamTransfer" => {}
            other => {
                return Err(Error::invalid_option(
                    "manifest",
                    format!("unknown kind '{other}'; use BatchTransfer or StreamTransfer"),
                ))
            }
        }
        manifest.spec.source.address("spec.source")?;
        manifest.spec.destination.address("spec.destination")?;
        Ok(manifest)
    }

    /// The two addresses and what happens between them.
    pub fn plan(&self) -> Result<(DataAddress, DataAddress, RecordOptions)> {
        let src = &self.spec.source;
        let dst = &self.spec.destination;
        let mut source_options = src.options.clone();
        if src.schema.is_some() {
            source_options.schema = src.schema.clone();
        }
        if dst.schema.is_some() {
            return Err(Error::invalid_option(
                "spec.destination.schema",
                "a destination's schema comes from the source and the transformations",
            ));
        }
        let mut source = src.address("spec.source")?;
        let destination = dst.address("spec.destination")?;
        let mut rolling = self.rolling(&source, &destination)?;
        self.stream_snapshot(&mut source, &destination, &mut rolling)?;
        let rec = RecordOptions {
            source_format: src.format,
            source_options,
            dest_format: dst.format,
            dest_options: dst.options.clone(),
            transforms: self.spec.transformation.clone(),
            rolling,
        };
        Ok((source, destination, rec))
    }

    /// What the transfer does with archives (`archive` on the source or the destination).
    pub fn archive(&self) -> Result<Option<crate::ArchiveAction>> {
        let (src, dst) = (&self.spec.source, &self.spec.destination);
        let bytes = |spec: &AddressSpec| {
            matches!(
                spec.store,
                StoreType::File
                    | StoreType::S3
                    | StoreType::Azure
                    | StoreType::Gcs
                    | StoreType::Http
            )
        };
        let action = match (src.archive.as_deref(), dst.archive.as_deref()) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(Error::invalid_option(
                    "spec.destination.archive",
                    "a transfer either extracts (source) or packs (destination)",
                ))
            }
            (Some("extract"), None) => crate::ArchiveAction::Extract,
            (Some(other), None) => {
                return Err(Error::invalid_option(
                    "spec.source.archive",
                    format!("'{other}': a source's archive is 'extract'"),
                ))
            }
            (None, Some(kind)) => crate::ArchiveAction::Pack(kind.parse().map_err(|_| {
                Error::invalid_option(
                    "spec.destination.archive",
                    format!("'{kind}': expected tar, tar.gz, tar.zst or zip"),
                )
            })?),
        };
        let at = if src.archive.is_some() {
            "spec.source.archive"
        } else {
            "spec.destination.archive"
        };
        if !bytes(src) || !bytes(dst) {
            return Err(Error::invalid_option(
                at,
                "is for files and objects at both ends",
            ));
        }
        if self.is_stream()
            || !self.spec.transformation.is_empty()
            || src.format.is_some()
            || dst.format.is_some()
        {
            return Err(Error::invalid_option(
                at,
                "moves bytes as they are: no stream, format or transformation",
            ));
        }
        Ok(Some(action))
    }

    /// How files are cut in the destination directory of a topic's rows; a stream's
    /// files stay open until full or their window is over.
    fn rolling(&self, src: &DataAddress, dst: &DataAddress) -> Result<FileRolling> {
        let d = &self.spec.destination;
        let rolling = FileRolling {
            flush_size: d.flush_size,
            rotate_interval_seconds: d.rotate_interval_seconds,
            max_file_bytes: d.max_file_bytes,
            path_format: d.path_format.clone(),
            hold_open: false,
            snapshot_interval_seconds: None,
        };
        rolling.check(src, dst, d.format.is_some(), &|name| {
            format!("spec.destination.{name}")
        })?;
        Ok(match self.kind == "StreamTransfer" {
            true => rolling.for_stream(src, dst),
            false => rolling,
        })
    }

    /// `createSnapshot` on a stream: its batches read what arrived (not the whole topic
    /// each time). Into a table, mode `upsert` keeps each key's last value (tombstones
    /// deleting); into a directory, a compacted snapshot of the topic is written every
    /// `snapshotIntervalSeconds` besides the files of every event.
    fn stream_snapshot(
        &self,
        src: &mut DataAddress,
        dst: &DataAddress,
        rolling: &mut FileRolling,
    ) -> Result<()> {
        let interval = self.spec.destination.snapshot_interval_seconds;
        let stream = self.kind == "StreamTransfer";
        let snapshot = matches!(src, DataAddress::Kafka(k) if k.snapshot);
        if interval.is_some() && !(stream && snapshot && dst.names_a_directory()) {
            return Err(Error::invalid_option(
                "spec.destination.snapshotIntervalSeconds",
                "is for a StreamTransfer with createSnapshot: true into a directory",
            ));
        }
        if interval == Some(0) {
            return Err(Error::invalid_option(
                "spec.destination.snapshotIntervalSeconds",
                "must be at least 1",
            ));
        }
        let DataAddress::Kafka(topic) = src else {
            return Ok(());
        };
        if !stream || !snapshot {
            return Ok(());
        }
        match dst {
            DataAddress::Table(t) if t.mode != WriteMode::Upsert => {
                return Err(Error::invalid_option(
                    "spec.source.createSnapshot",
                    "a stream into a table keeps each key's last value in mode upsert (with keyColumns)",
                ))
            }
            DataAddress::Table(_) => {}
            _ => rolling.snapshot_interval_seconds = Some(interval.unwrap_or(3600)),
        }
        topic.snapshot = false;
        Ok(())
    }
}

impl AddressSpec {
    /// The address this spec names; `at` is its place in the manifest, for errors.
    pub fn address(&self, at: &str) -> Result<DataAddress> {
        let need = |field: &Option<String>, name: &str| {
            field.clone().ok_or_else(|| {
                Error::invalid_option(
                    format!("{at}.{name}"),
                    format!("required for type {}", self.type_name()),
                )
            })
        };
        // Each store type uses some of the fields; setting another is a mistake worth naming.
        let used: &[&str] = match self.store {
            StoreType::File => &["path"],
            StoreType::S3 => &["bucket", "key", "endpoint", "region"],
            StoreType::Azure => &["container", "path", "account", "endpoint"],
            StoreType::Gcs => &["bucket", "key", "endpoint"],
            StoreType::Http => &["url"],
            StoreType::Postgres | StoreType::Mysql => &[
                "url",
                "table",
                "query",
                "password",
                "mode",
                "keyColumns",
                "schemaEvolution",
            ],
            StoreType::Sqlite => &[
                "path",
                "url",
                "table",
                "query",
                "mode",
                "keyColumns",
                "schemaEvolution",
            ],
            StoreType::Kafka => &["password", "keyColumns"],
        };
        let fields = [
            ("path", &self.path),
            ("bucket", &self.bucket),
            ("key", &self.key),
            ("container", &self.container),
            ("account", &self.account),
            ("endpoint", &self.endpoint),
            ("region", &self.region),
            ("url", &self.url),
            ("table", &self.table),
            ("query", &self.query),
            ("password", &self.password),
            ("mode", &self.mode.map(|m| m.to_string())),
            (
                "keyColumns",
                &self.key_columns.as_ref().map(|k| k.join(",")),
            ),
            ("schemaEvolution", &self.schema_evolution),
        ];
        let unused = fields
            .iter()
            .find(|(name, value)| value.is_some() && !used.contains(name))
            .map(|(name, _)| *name)
            .or_else(|| {
                let stores_options = matches!(
                    self.store,
                    StoreType::S3 | StoreType::Azure | StoreType::Gcs
                );
                (!stores_options && !self.store_options.is_empty()).then_some("storeOptions")
            });
        if let Some(name) = unused {
            return Err(Error::invalid_option(
                format!("{at}.{name}"),
                format!("not used by type {}", self.type_name()),
            ));
        }
        if let Some(name) = self
            .kafka_fields()
            .first()
            .filter(|_| self.store != StoreType::Kafka)
        {
            return Err(Error::invalid_option(
                format!("{at}.{}", name.0),
                format!("not used by type {}", self.type_name()),
            ));
        }
        let mut options = self.store_options.clone();
        let fields_as_options = [
            ("endpoint", &self.endpoint),
            ("region", &self.region),
            ("account", &self.account),
        ];
        for (name, value) in fields_as_options {
            if let Some(v) = value {
                options.insert(name.to_string(), v.clone());
            }
        }
        Ok(match self.store {
            StoreType::File => DataAddress::Local {
                path: PathBuf::from(need(&self.path, "path")?),
            },
            StoreType::S3 => DataAddress::S3 {
                bucket: need(&self.bucket, "bucket")?,
                key: self.key.clone().unwrap_or_default(),
                options,
            },
            StoreType::Azure => DataAddress::Azure {
                container: need(&self.container, "container")?,
                path: self.path.clone().unwrap_or_default(),
                options,
            },
            StoreType::Gcs => DataAddress::Gcs {
                bucket: need(&self.bucket, "bucket")?,
                key: self.key.clone().unwrap_or_default(),
                options,
            },
            StoreType::Postgres | StoreType::Mysql | StoreType::Sqlite => {
                let url = match (&self.path, self.store) {
                    (Some(path), StoreType::Sqlite) => sqlite_url(path),
                    _ => need(&self.url, "url")?,
                };
                let mut table = TableAddress::parse_connection(&url)?;
                if table.database.name() != self.type_name() {
                    return Err(Error::invalid_option(
                        format!("{at}.url"),
                        format!("must be a {}:// URL", self.type_name()),
                    ));
                }
                if self.table.is_some() || self.query.is_some() {
                    table.table = self.table.clone();
                    table.query = self.query.clone();
                }
                if self.password.is_some() {
                    table.password = self.password.clone();
                }
                if let Some(mode) = self.mode {
                    table.mode = mode;
                }
                if let Some(keys) = &self.key_columns {
                    table.key_columns = keys.clone();
                }
                if let Some(value) = &self.schema_evolution {
                    table.add_columns = ferry_core::schema_evolution(value).map_err(|reason| {
                        Error::invalid_option(format!("{at}.schemaEvolution"), reason)
                    })?;
                }
                table
                    .validate()
                    .map_err(|reason| Error::invalid_option(at, reason))?;
                DataAddress::Table(table)
            }
            StoreType::Kafka => self.kafka_address(at)?,
            StoreType::Http => {
                let url = need(&self.url, "url")?;
                match DataAddress::parse(&url)? {
                    http @ DataAddress::Http { .. } => http,
                    _ => {
                        return Err(Error::invalid_option(
                            format!("{at}.url"),
                            "must be an http:// or https:// URL",
                        ))
                    }
                }
            }
        })
    }

    /// The `kafka` fields that are set, by name, as address options.
    fn kafka_fields(&self) -> Vec<(&'static str, String)> {
        let list = |items: Vec<String>| items.join(",");
        let per_partition =
            |map: &BTreeMap<i32, i64>| list(map.iter().map(|(p, o)| format!("{p}:{o}")).collect());
        let mut out = Vec::new();
        if self.brokers.is_some() {
            out.push(("brokers", String::new()));
        }
        if let Some(t) = &self.topic {
            out.push(("topic", t.clone()));
        }
        if let Some(p) = &self.partitions {
            out.push(("partitions", list(p.iter().map(i32::to_string).collect())));
        }
        match &self.start_offset {
            Some(StartSpec::Named(n)) => out.push(("startOffset", n.clone())),
            Some(StartSpec::PerPartition(map)) => out.push(("startOffset", per_partition(map))),
            None => {}
        }
        if let Some(map) = &self.end_offset {
            out.push(("endOffset", per_partition(map)));
        }
        for (name, value) in [
            ("groupId", &self.group_id),
            ("securityProtocol", &self.security_protocol),
            ("saslMechanism", &self.sasl_mechanism),
            ("user", &self.user),
            ("caFile", &self.ca_file),
        ] {
            if let Some(v) = value {
                out.push((name, v.clone()));
            }
        }
        if let Some(create) = self.create_topic {
            out.push(("createTopic", create.to_string()));
        }
        for (name, value) in [
            ("valueFormat", &self.value_format),
            ("schemaRegistry", &self.schema_registry),
            ("onError", &self.on_error),
            ("deadLetter", &self.dead_letter),
        ] {
            if let Some(v) = value {
                out.push((name, v.clone()));
            }
        }
        if let Some(snapshot) = self.create_snapshot {
            out.push(("createSnapshot", snapshot.to_string()));
        }
        match &self.metadata {
            Some(MetadataSpec::All(all)) => out.push(("metadata", all.to_string())),
            Some(MetadataSpec::Some(list)) => out.push(("metadata", list.join(","))),
            None => {}
        }
        out
    }

    fn kafka_address(&self, at: &str) -> Result<DataAddress> {
        let brokers = match &self.brokers {
            Some(Brokers::One(b)) => b.clone(),
            Some(Brokers::Many(list)) => list.join(","),
            None => {
                return Err(Error::invalid_option(
                    format!("{at}.brokers"),
                    "required for type kafka",
                ))
            }
        };
        let Some(topic) = &self.topic else {
            return Err(Error::invalid_option(
                format!("{at}.topic"),
                "required for type kafka",
            ));
        };
        let mut address = ferry_core::KafkaAddress::parse(&format!("{brokers}/{topic}"))
            .map_err(|reason| Error::invalid_option(format!("{at}.brokers"), reason))?;
        let mut fields = self.kafka_fields();
        fields.retain(|(name, _)| !matches!(*name, "brokers" | "topic"));
        if let Some(p) = &self.password {
            fields.push(("password", p.clone()));
        }
        if let Some(keys) = &self.key_columns {
            fields.push(("keyColumns", keys.join(",")));
        }
        for (name, value) in fields {
            address
                .set(name, &value)
                .map_err(|reason| Error::invalid_option(format!("{at}.{name}"), reason))?;
        }
        Ok(DataAddress::Kafka(address))
    }

    fn type_name(&self) -> &'static str {
        match self.store {
            StoreType::File => "file",
            StoreType::S3 => "s3",
            StoreType::Azure => "azure",
            StoreType::Gcs => "gcs",
            StoreType::Http => "http",
            StoreType::Postgres => "postgres",
            StoreType::Mysql => "mysql",
            StoreType::Sqlite => "sqlite",
            StoreType::Kafka => "kafka",
        }
    }
}

/// The `sqlite:` URL of a database file given as a path.
fn sqlite_url(path: &str) -> String {
    let encoded: String = path
        .chars()
        .map(|c| match c {
            '%' | '?' | '#' | ' ' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect();
    if encoded.starts_with('/') {
        format!("sqlite://{encoded}")
    } else {
        format!("sqlite:{encoded}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: ferry.dev/v1
kind: BatchTransfer
metadata: {name: orders-to-lake}
spec:
  source:      {type: file, path: examples/data/orders.csv, format: csv}
  destination: {type: s3, bucket: lake, key: orders/, format: parquet, endpoint: "http://127.0.0.1:9000"}
  transformation:
  - {name: drop-notes, action: RemoveColumn, columns: [notes]}
  - {name: big-orders, action: Filter, options: {clause: "amount > 100 AND country = 'DE'"}}
  - {name: hash-email, action: Digest, columns: [email], options: {algo: sha256}}
  - {name: hide-phone, action: Redact, columns: [phone], options: {mode: formatted}}
"#;

    #[test]
    fn the_issue_example_plans_a_record_transfer() {
        let manifest = Manifest::parse(EXAMPLE).unwrap();
        assert_eq!(manifest.metadata.name, "orders-to-lake");
        let (src, dst, rec) = manifest.plan().unwrap();
        assert_eq!(src, DataAddress::parse("examples/data/orders.csv").unwrap());
        assert_eq!(
            dst,
            DataAddress::parse("s3://lake/orders/?endpoint=http://127.0.0.1:9000").unwrap()
        );
        assert_eq!(rec.source_format, Some(Format::Csv));
        assert_eq!(rec.dest_format, Some(Format::Parquet));
        assert_eq!(rec.transforms.len(), 4);
        assert_eq!(rec.transforms[3].label(), "'hide-phone' (Redact)");
    }

    #[test]
    fn gcs_addresses() {
        let text = EXAMPLE.replace(
            "{type: s3, bucket: lake, key: orders/, format: parquet, endpoint: \"http://127.0.0.1:9000\"}",
            "{type: gcs, bucket: lake_2, key: orders/, format: parquet, endpoint: \"http://127.0.0.1:4443\", storeOptions: {skip_signature: \"true\"}}",
        );
        assert_ne!(text, EXAMPLE);
        let (_, dst, _) = Manifest::parse(&text).unwrap().plan().unwrap();
        assert_eq!(
            dst,
            DataAddress::parse(
                "gs://lake_2/orders/?endpoint=http://127.0.0.1:4443&skip_signature=true"
            )
            .unwrap()
        );
        let wrong = text.replace("key: orders/", "container: orders");
        let err = Manifest::parse(&wrong).unwrap_err().to_string();
        assert!(
            err.contains("container") && err.contains("not used by type gcs"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        for (from, to) in [
            (
                "metadata: {name: orders-to-lake}",
                "metadata: {name: x, nmae: y}",
            ),
            ("format: csv}", "format: csv, delimter: ';'}"),
            (
                "action: RemoveColumn,",
                "action: RemoveColumn, colour: red,",
            ),
            ("kind: BatchTransfer", "kind: BatchTransfer\nextra: 1"),
        ] {
            let text = EXAMPLE.replace(from, to);
            assert_ne!(text, EXAMPLE, "{from}");
            let err = Manifest::parse(&text).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{to}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn kafka_sources_and_destinations() {
        let manifest = |source: &str| {
            EXAMPLE.replace(
                "source:      {type: file, path: examples/data/orders.csv, format: csv}",
                &format!("source:      {source}"),
            )
        };
        let text = manifest(
            "{type: kafka, brokers: [\"b1:9092\", \"b2:9092\"], topic: orders, partitions: [0, 2], startOffset: {0: 5}, groupId: g, password: env:KAFKA_PASSWORD}",
        );
        assert_ne!(text, EXAMPLE);
        let (src, _, _) = Manifest::parse(&text).unwrap().plan().unwrap();
        let DataAddress::Kafka(k) = &src else {
            panic!("{src}")
        };
        assert_eq!(
            (k.bootstrap().as_str(), k.topic.as_str()),
            ("b1:9092,b2:9092", "orders")
        );
        assert_eq!(k.partitions, Some(vec![0, 2]));
        assert_eq!(k.password.as_deref(), Some("env:KAFKA_PASSWORD"));
        assert!(!src.to_string().contains("KAFKA_PASSWORD"));
        let rows = manifest(
            "{type: kafka, brokers: b:9092, topic: orders, valueFormat: string, metadata: [_offset, _key], onError: deadLetter, deadLetter: orders-dlq}",
        );
        let (src, _, _) = Manifest::parse(&rows).unwrap().plan().unwrap();
        let DataAddress::Kafka(k) = &src else {
            panic!("{src}")
        };
        assert_eq!(k.value_format, ferry_core::ValueFormat::String);
        assert_eq!(k.metadata, ["_key", "_offset"]);
        assert_eq!(k.on_error, ferry_core::OnError::DeadLetter);
        assert_eq!(k.dead_letter.as_deref(), Some("orders-dlq"));
        let all = manifest("{type: kafka, brokers: b:9092, topic: orders, metadata: true}");
        let (src, _, _) = Manifest::parse(&all).unwrap().plan().unwrap();
        assert!(
            src.to_string()
                .contains("metadata=_key,_partition,_offset,_timestamp,_headers"),
            "{src}"
        );
        for (source, field) in [
            ("{type: kafka, topic: orders}", "spec.source.brokers"),
            ("{type: kafka, brokers: b:9092}", "spec.source.topic"),
            (
                "{type: kafka, brokers: b:9092, topic: o, table: t}",
                "spec.source.table",
            ),
            (
                "{type: kafka, brokers: b:9092, topic: o, startOffset: soon}",
                "spec.source.startOffset",
            ),
            ("{type: file, path: x, topic: o}", "spec.source.topic"),
        ] {
            let err = Manifest::parse(&manifest(source)).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidOption { name, .. } if name == field),
                "{source}: {err}"
            );
        }
    }

    #[test]
    fn wrong_fields_for_the_store_and_bad_kinds() {
        let err = Manifest::parse(&EXAMPLE.replace("bucket: lake", "container: lake"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.destination.container"), "{err}");
        let err = Manifest::parse(&EXAMPLE.replace("BatchTransfer", "Copy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind 'Copy'"), "{err}");
        let err = Manifest::parse(&EXAMPLE.replace("action: Digest", "action: Hash"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Hash"), "{err}");
    }
}
