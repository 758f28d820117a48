//! Shared by the test suites of every ferry crate: where the real test services are, and a
//! conformance suite that every [`Source`]/[`Sink`] backend must pass.
//!
//! Services are found through the variables `scripts/services env` prints. When one is
//! missing a test skips with a message, except under CI (`CI` set), where it fails: a
//! green CI must mean every backend was exercised.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ferry_core::{DataAddress, Error, Sink, Source};
use futures::StreamExt;

/// A remote backend the suites run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    S3,
    Azure,
    /// The GCS emulator (fake-gcs-server), found through `FERRY_TEST_GCS` and
    /// `STORAGE_EMULATOR_HOST`. It cannot take object_store's uploads: write fixtures with
    /// [`gcs_emulator_put`].
    Gcs,
}

impl Remote {
    /// The base address for tests (a bucket or container that `scripts/services up`
    /// created), or `None` (after saying why) when the service is not configured and this
    /// is not CI. Panics under CI when the service is missing.
    pub fn base(self) -> Option<String> {
        let (var, base, name) = match self {
            Remote::S3 => ("FERRY_TEST_S3_ENDPOINT", "s3://ferry-test", "S3"),
            Remote::Azure => ("FERRY_TEST_AZURE", "az://ferry-test", "Azure"),
            Remote::Gcs => ("FERRY_TEST_GCS", "gs://ferry-test", "GCS"),
        };
        if std::env::var_os(var).is_some() {
            return Some(base.to_string());
        }
        let msg = format!(
            "{name} test service not configured ({var} unset): run `scripts/services up` and `eval \"$(scripts/services env)\"`"
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        None
    }

    /// A fresh prefix under the base, unique to this process and call.
    pub fn unique(self, label: &str) -> Option<String> {
        self.base().map(|b| format!("{b}/{}/", unique_name(label)))
    }
}

/// The test Kafka broker's bootstrap address (`FERRY_TEST_KAFKA`), or `None` (after saying
/// why) outside CI when it is not configured. Panics under CI when it is missing.
pub fn kafka_broker() -> Option<String> {
    service("FERRY_TEST_KAFKA", "Kafka")
}

/// The value of `variable`, or `None` (after saying why) outside CI when it is not set.
/// Panics under CI when it is missing.
fn service(variable: &str, name: &str) -> Option<String> {
    let Ok(value) = std::env::var(variable) else {
        let msg = format!("{name} test service not configured ({variable} unset): run `scripts/services up` and `eval \"$(scripts/services env)\"`");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return None;
    };
    Some(value)
}

/// The server URL in `variable` cut back to `scheme://user@host:port/` (without a
/// database), or `None` (after saying why) outside CI when it is not set. Panics under CI
/// when it is missing.
fn database_server(variable: &str, name: &str) -> Option<String> {
    let url = service(variable, name)?;
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    Some(match url.rfind('/') {
        Some(i) if i >= after_scheme => url[..=i].to_string(),
        _ => format!("{url}/"),
    })
}

/// The test PostgreSQL server (`FERRY_TEST_POSTGRES`, password in `PGPASSWORD`).
pub struct TestPostgres {
    /// `postgres://user@host:port/` without a database.
    server: String,
}

impl TestPostgres {
    /// The server, or `None` (after saying why) outside CI when it is not configured.
    /// Panics under CI when it is missing.
    pub fn get() -> Option<Self> {
        database_server("FERRY_TEST_POSTGRES", "PostgreSQL").map(|server| Self { server })
    }

    /// The URL of database `db` (`ferry` and `ferry_copy` exist).
    pub fn url(&self, db: &str) -> String {
        format!("{}{db}", self.server)
    }

    /// Runs `sql` in `db` with psql, failing the test on any error; returns what it
    /// printed (unaligned, no headers), trimmed.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-Atq",
                "-d",
                &self.url(db),
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The test MySQL/MariaDB server (`FERRY_TEST_MYSQL`, password in `MYSQL_PWD`).
pub struct TestMysql {
    /// `mysql://user@host:port/` without a database.
    server: String,
}

impl TestMysql {
    /// The server, or `None` (after saying why) outside CI when it is not configured.
    /// Panics under CI when it is missing.
    pub fn get() -> Option<Self> {
        database_server("FERRY_TEST_MYSQL", "MySQL").map(|server| Self { server })
    }

    /// The URL of database `db` (`ferry` and `ferry_copy` exist).
    pub fn url(&self, db: &str) -> String {
        format!("{}{db}", self.server)
    }

    /// Runs `sql` (one or more statements) in `db` with the `mariadb` client, failing the
    /// test on any error; returns what it printed (tab-separated, no headers), trimmed.
    /// Sessions use the connector's SQL dialect: double-quoted identifiers, UTC.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let url = url::Url::parse(&self.server).expect("FERRY_TEST_MYSQL is a URL");
        let out = std::process::Command::new("mariadb")
            .args([
                "--no-defaults",
                "--batch",
                "--skip-column-names",
                "--raw",
                "--protocol=tcp",
                "--default-character-set=utf8mb4",
                "--init-command=SET time_zone = '+00:00', sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES'",
                "-h",
                url.host_str().unwrap_or("127.0.0.1"),
                "-P",
                &url.port().unwrap_or(3306).to_string(),
                "-u",
                url.username(),
                "-D",
                db,
                "-e",
                sql,
            ])
            .output()
            .expect("run the mariadb client");
        assert!(
            out.status.success(),
            "mariadb failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The temporary parts ferry's uploads to `key` below the `gs://` `address` have left in
/// the bucket (none once an upload is completed or aborted).
pub async fn gcs_temporary_parts(address: &DataAddress, key: &str) -> Vec<String> {
    let DataAddress::Gcs {
        bucket, key: base, ..
    } = address
    else {
        panic!("{address} is not a gs:// address");
    };
    let name = match base.trim_end_matches('/') {
        "" => key.to_string(),
        base => format!("{base}/{key}"),
    };
    let folder = crate::gcs::destination_folder(&name);
    let at = DataAddress::parse(&format!("gs://{bucket}/{folder}")).expect("address");
    match crate::open_source(&at).expect("open").list().await {
        Ok(listing) => listing.entries.into_iter().map(|e| e.key).collect(),
        Err(ferry_core::Error::NotFound { .. }) => Vec::new(),
        Err(e) => panic!("listing {at}: {e}"),
    }
}

/// Writes an object into the GCS emulator through its JSON API (a media upload) by a
/// plain HTTP request, not through ferry's GCS writer, so that tests of reading do not
/// depend on ferry's writes. `address` is a `gs://` address naming a prefix; `key` is
/// below it.
pub async fn gcs_emulator_put(address: &DataAddress, key: &str, data: Bytes) {
    let DataAddress::Gcs {
        bucket, key: base, ..
    } = address
    else {
        panic!("{address} is not a gs:// address");
    };
    let emulator = std::env::var("STORAGE_EMULATOR_HOST")
        .expect("STORAGE_EMULATOR_HOST names the GCS emulator (scripts/services env)");
    let emulator = if emulator.contains("://") {
        emulator
    } else {
        format!("http://{emulator}")
    };
    let name = match base.trim_end_matches('/') {
        "" => key.to_string(),
        base => format!("{base}/{key}"),
    };
    let response = reqwest::Client::new()
        .post(format!(
            "{}/upload/storage/v1/b/{bucket}/o",
            emulator.trim_end_matches('/')
        ))
        .query(&[("uploadType", "media"), ("name", name.as_str())])
        .header("Content-Type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap_or_else(|e| panic!("uploading {name} to the GCS emulator: {e}"));
    assert!(
        response.status().is_success(),
        "uploading {name} to the GCS emulator: {}",
        response.status()
    );
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test run uses: label, process id, time and a counter.
pub fn unique_name(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{label}-{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Keys that exercise naming: nesting, unicode, spaces and URL-special characters.
pub const TRICKY_KEYS: &[&str] = &[
    "plain.txt",
    "dir/nested/deep.bin",
    "naïve ü/日本語.txt",
    "with space & #hash%.csv",
];

/// The keys `source` lists, in its order.
async fn listed_keys(source: &dyn Source) -> Vec<String> {
    let listing = source.list().await.expect("list");
    listing.entries.into_iter().map(|e| e.key).collect()
}

async fn read_all(source: &dyn Source, key: &str) -> Vec<u8> {
    let listing = source.list().await.expect("list");
    let entry = listing
        .entries
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("{key} not listed by {:?}", source.address()));
    if entry.size == 0 {
        return Vec::new();
    }
    source
        .read(entry, 0..entry.size)
        .await
        .expect("read")
        .to_vec()
}

/// The backend conformance suite. `sink` and `source` are the same backend opened for
/// writing and reading at one empty directory or prefix (`address`).
pub async fn conformance(address: &DataAddress, sink: &dyn Sink, source: &dyn Source) {
    source_conformance(address, source, |key, data| async move {
        let size = data.len() as u64;
        let written = sink
            .put(&key, data)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        assert_eq!(written.size, size);
    })
    .await;
    sink_conformance(address, sink, source).await;
}

/// The reading half of the suite: listing, whole and ranged reads, a changed object, a
/// missing one. `put` writes an object under `address` (through the backend's own sink,
/// or by other means where ferry cannot write, as with the GCS emulator).
pub async fn source_conformance<F, Fut>(address: &DataAddress, source: &dyn Source, put: F)
where
    F: Fn(String, Bytes) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Every tricky key, plus an empty object; listing shows them all.
    for (i, key) in TRICKY_KEYS.iter().enumerate() {
        put(key.to_string(), Bytes::from(bytes(1000 + i, i as u64))).await;
    }
    put("empty".into(), Bytes::new()).await;
    let listing = source.list().await.expect("list");
    assert!(!listing.single_object);
    let mut keys: Vec<&str> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    let mut expected: Vec<&str> = TRICKY_KEYS.iter().copied().chain(["empty"]).collect();
    expected.sort();
    assert_eq!(keys, expected, "listing of {address}");
    for (i, key) in TRICKY_KEYS.iter().enumerate() {
        assert_eq!(
            read_all(source, key).await,
            bytes(1000 + i, i as u64),
            "{key}"
        );
    }
    assert!(read_all(source, "empty").await.is_empty());

    // Ranged reads return exactly the range.
    let entry = listing
        .entries
        .iter()
        .find(|e| e.key == "plain.txt")
        .unwrap();
    let part = source.read(entry, 10..20).await.expect("ranged read");
    assert_eq!(&part[..], &bytes(1000, 0)[10..20]);

    // Overwrite replaces the content whole; a read of what was listed before fails as a
    // changed source instead of returning a mix.
    put("plain.txt".into(), Bytes::from_static(b"second version")).await;
    assert_eq!(read_all(source, "plain.txt").await, b"second version");
    let stale = source
        .read(entry, 0..entry.size)
        .await
        .expect_err("reading an object listed before it changed must fail");
    assert!(matches!(stale, Error::SourceChanged { .. }), "{stale}");

    // A single object named whole lists as itself.
    let one = crate::open_source(&address.join("dir/nested/deep.bin"))
        .expect("open")
        .list()
        .await
        .expect("list one object");
    assert!(one.single_object);
    assert_eq!(one.entries.len(), 1);
    assert_eq!(one.entries[0].key, "deep.bin");

    // A missing object is NotFound, naming it.
    let missing = address.join("no/such/object");
    let err = crate::open_source(&missing)
        .expect("open")
        .list()
        .await
        .expect_err("listing a missing object must fail");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no/such/object"), "{err}");
    let err = crate::open_source(&address.join("no/such/prefix/"))
        .expect("open")
        .list_stream()
        .await
        .expect_err("streaming a missing prefix must fail before its first entry");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    // A streamed listing comes in byte order of the keys, which a walk of directories by
    // name does not give: `dir-a/x` < `dir.txt` < `dir/…` < `dir0`.
    for key in ["dir0", "dir.txt", "dir-a/x"] {
        put(key.to_string(), Bytes::from_static(b"order")).await;
    }
    let streamed: Vec<String> = source
        .list_stream()
        .await
        .expect("list stream")
        .entries
        .map(|e| e.expect("streamed entry").key)
        .collect()
        .await;
    let mut sorted = streamed.clone();
    sorted.sort();
    assert_eq!(streamed, sorted, "streamed listing of {address}");
    assert!(streamed.contains(&"dir-a/x".to_string()), "{streamed:?}");
    let listed = listed_keys(source).await;
    assert_eq!(listed, streamed, "list and list_stream of {address}");
}

/// The writing half of the suite, run after [`source_conformance`] wrote its objects
/// through `sink`: heads, uploads in parts, aborted uploads.
async fn sink_conformance(address: &DataAddress, sink: &dyn Sink, source: &dyn Source) {
    let head = sink
        .head("plain.txt")
        .await
        .expect("head")
        .expect("present");
    assert_eq!(head.size, 14);
    assert!(sink.head("absent").await.expect("head absent").is_none());

    // Upload in parts, out of order; nothing is visible until completion.
    let part_size = sink.min_part_size().max(64 * 1024) as usize;
    let big = bytes(part_size * 2 + 777, 42);
    let upload = sink
        .create_upload("multi/big.bin")
        .await
        .expect("create upload");
    let chunks: Vec<&[u8]> = big.chunks(part_size).collect();
    let mut tokens = vec![None; chunks.len()];
    for i in (0..chunks.len()).rev() {
        let t = sink
            .put_part(
                "multi/big.bin",
                &upload,
                i,
                (i * part_size) as u64,
                Bytes::copy_from_slice(chunks[i]),
            )
            .await
            .expect("put part");
        tokens[i] = Some(t);
    }
    assert!(
        sink.head("multi/big.bin").await.expect("head").is_none(),
        "an upload in progress must not be visible"
    );
    let tokens = tokens.into_iter().map(Option::unwrap).collect();
    let done = sink
        .complete_upload("multi/big.bin", &upload, tokens)
        .await
        .expect("complete");
    assert_eq!(done.size, big.len() as u64);
    assert_eq!(read_all(source, "multi/big.bin").await, big);

    // An aborted upload leaves nothing behind and cannot be completed.
    let upload = sink
        .create_upload("multi/aborted.bin")
        .await
        .expect("create");
    let t = sink
        .put_part(
            "multi/aborted.bin",
            &upload,
            0,
            0,
            Bytes::from(bytes(1000, 7)),
        )
        .await
        .expect("part");
    sink.abort_upload("multi/aborted.bin", &upload)
        .await
        .expect("abort");
    assert!(sink
        .head("multi/aborted.bin")
        .await
        .expect("head")
        .is_none());
    // Azure cannot discard uncommitted blocks (it collects them after about a week), so
    // only stores with a real abort must refuse to complete.
    if address.kind() != "azure" {
        assert!(
            sink.complete_upload("multi/aborted.bin", &upload, vec![t])
                .await
                .is_err(),
            "completing an aborted upload must fail"
        );
    }
    let keys = listed_keys(source).await;
    assert!(!keys.iter().any(|k| k.contains("aborted")), "{keys:?}");
}
