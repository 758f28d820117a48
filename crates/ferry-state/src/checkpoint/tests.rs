//! Every behaviour is checked on both backends: SQLite always, PostgreSQL when the test
//! server is configured (`FERRY_TEST_POSTGRES`; required under CI), each test in a new
//! database of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ferry_core::Error;
use tokio_postgres::NoTls;

use super::*;
use crate::control::postgres::parse_config;

/// The test server's URL (`FERRY_TEST_POSTGRES`, password in `PGPASSWORD`); `None`, after
/// saying so, outside CI when it is not configured.
fn server() -> Option<String> {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES") else {
        let msg = "PostgreSQL test service not configured (FERRY_TEST_POSTGRES unset): \
                   run `scripts/services up` and `eval \"$(scripts/services env)\"`";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipping the PostgreSQL backend: {msg}");
        return None;
    };
    Some(url)
}

/// Runs `sql` on the server (through the database in `url`), outside any store.
fn admin(url: &str, sql: &str) {
    let config = parse_config(url, "test server", "test", "the test server").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = config.config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
    });
}

/// A new, empty PostgreSQL database, dropped with the value.
struct Database {
    server: String,
    name: String,
    url: String,
}

impl Database {
    fn create() -> Option<Self> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let server = server()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "ferry_ckpt_{}_{nanos}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        admin(&server, &format!("CREATE DATABASE {name}"));
        let url = format!("{}/{name}", &server[..server.rfind('/').unwrap()]);
        Some(Self { server, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        admin(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Where a test keeps its checkpoints.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(Database),
}

impl Place {
    fn open(&self) -> StateStore {
        match self {
            Place::Sqlite(dir) => StateStore::open_for(dir.path(), None).unwrap(),
            Place::Postgres(db) => {
                StateStore::open_for(Path::new("unused"), Some(&db.url)).unwrap()
            }
        }
    }
}

/// Runs `body` on each backend, saying which one on stderr (shown when it fails).
fn on_each_backend(body: impl Fn(&Place)) {
    let mut places = vec![Place::Sqlite(tempfile::tempdir().unwrap())];
    places.extend(Database::create().map(Place::Postgres));
    for place in &places {
        let name = match place {
            Place::Sqlite(_) => "SQLite",
            Place::Postgres(_) => "PostgreSQL",
        };
        eprintln!("backend: {name}");
        body(place);
    }
}

#[test]
fn progress_survives_reopening() {
    on_each_backend(|place| {
        {
            let store = place.open();
            store.start_run("r1", "src", "dst").unwrap();
            store
                .begin_upload("r1", "big.bin", 100, Some("v1"), "up-1", 40)
                .unwrap();
            store
                .part_done(
                    "r1",
                    "big.bin",
                    0,
                    &PartToken("t0".into()),
                    Some("crc32c:00"),
                )
                .unwrap();
            store
                .part_done("r1", "big.bin", 2, &PartToken("t2".into()), None)
                .unwrap();
            store
                .file_done(
                    "r1",
                    "small.txt",
                    3,
                    Some("v9"),
                    Some("crc32c:01"),
                    Some("e1"),
                )
                .unwrap();
        }
        let store = place.open();
        let files = store.files("r1").unwrap();
        let big = &files["big.bin"];
        assert!(!big.done);
        assert_eq!(big.source_size, 100);
        assert_eq!(big.source_version.as_deref(), Some("v1"));
        let upload = big.upload.as_ref().unwrap();
        assert_eq!(upload.upload_id, "up-1");
        assert_eq!(upload.part_size, 40);
        assert_eq!(upload.parts.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(
            upload.parts[&0],
            (PartToken("t0".into()), Some("crc32c:00".into()))
        );
        assert_eq!(upload.parts[&2], (PartToken("t2".into()), None));
        let small = &files["small.txt"];
        assert!(small.done);
        assert!(small.upload.is_none());
        assert_eq!(small.checksum.as_deref(), Some("crc32c:01"));
        assert_eq!(small.dest_version.as_deref(), Some("e1"));
        assert!(store.files("other").unwrap().is_empty());
    });
}

#[test]
fn files_are_read_by_the_batch_and_open_uploads_alone() {
    on_each_backend(|place| {
        let store = place.open();
        store.start_run("r", "s", "d").unwrap();
        store.start_run("other", "s", "d").unwrap();
        for i in 0..300 {
            let key = format!("f/{i:03}");
            store
                .file_done("r", &key, i, None, Some("crc32c:00"), None)
                .unwrap();
        }
        store
            .begin_upload("r", "big 'one'", 100, None, "up-1", 40)
            .unwrap();
        store
            .part_done("r", "big 'one'", 1, &PartToken("t1".into()), None)
            .unwrap();
        store
            .begin_upload("other", "f/001", 9, None, "up-2", 4)
            .unwrap();

        let keys: Vec<String> = ["f/001", "big 'one'", "f/299", "not/there"]
            .map(String::from)
            .to_vec();
        let some = store.files_for("r", &keys).unwrap();
        assert_eq!(
            some.keys().collect::<Vec<_>>(),
            ["big 'one'", "f/001", "f/299"]
        );
        assert!(some["f/001"].done);
        assert_eq!(some["f/299"].source_size, 299);
        let upload = some["big 'one'"].upload.as_ref().unwrap();
        assert_eq!(upload.parts.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(store.files_for("r", &[]).unwrap().is_empty());
        // As many keys as a batch holds, in one call.
        let many: Vec<String> = (0..256).map(|i| format!("f/{i:03}")).collect();
        assert_eq!(store.files_for("r", &many).unwrap().len(), 256);

        let open = store.uploading("r").unwrap();
        assert_eq!(open.keys().collect::<Vec<_>>(), ["big 'one'"]);
        assert_eq!(open["big 'one'"].upload.as_ref().unwrap().upload_id, "up-1");
    });
}

#[test]
fn finishing_a_file_drops_its_parts_and_forgetting_a_run_drops_everything() {
    on_each_backend(|place| {
        let store = place.open();
        store.start_run("r'1", "s", "d").unwrap();
        store.begin_upload("r'1", "k", 10, None, "u", 5).unwrap();
        store
            .part_done("r'1", "k", 0, &PartToken("a".into()), None)
            .unwrap();
        store
            .file_done("r'1", "k", 10, None, Some("crc32c:ff"), None)
            .unwrap();
        let files = store.files("r'1").unwrap();
        assert!(files["k"].done && files["k"].upload.is_none());
        assert_eq!(store.run_status("r'1").unwrap().as_deref(), Some("running"));
        store.forget_run("r'1").unwrap();
        assert!(store.files("r'1").unwrap().is_empty());
        assert_eq!(store.run_status("r'1").unwrap(), None);
    });
}

#[test]
fn a_new_upload_replaces_the_old_one_and_forgetting_a_file_keeps_the_others() {
    on_each_backend(|place| {
        let store = place.open();
        store.start_run("r", "s", "d").unwrap();
        store
            .begin_upload("r", "a", 10, Some("v1"), "u1", 5)
            .unwrap();
        store
            .part_done("r", "a", 1, &PartToken("old".into()), None)
            .unwrap();
        // Recording the same part again keeps the newest token.
        store
            .part_done("r", "a", 1, &PartToken("newer".into()), Some("c"))
            .unwrap();
        assert_eq!(
            store.files("r").unwrap()["a"]
                .upload
                .as_ref()
                .unwrap()
                .parts[&1],
            (PartToken("newer".into()), Some("c".into()))
        );
        // The source changed: a new upload, without the old parts.
        store
            .begin_upload("r", "a", 12, Some("v2"), "u2", 6)
            .unwrap();
        let a = &store.files("r").unwrap()["a"];
        assert_eq!(
            (a.source_size, a.source_version.as_deref()),
            (12, Some("v2"))
        );
        let upload = a.upload.as_ref().unwrap();
        assert_eq!((upload.upload_id.as_str(), upload.part_size), ("u2", 6));
        assert!(upload.parts.is_empty());

        store.file_done("r", "b", 1, None, None, None).unwrap();
        store.forget_file("r", "a").unwrap();
        let files = store.files("r").unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["b"]);
        // A file done again after an upload: done, parts gone.
        store.begin_upload("r", "b", 1, None, "u3", 5).unwrap();
        assert!(!store.files("r").unwrap()["b"].done);

        store.finish_run("r", "succeeded").unwrap();
        assert_eq!(store.run_status("r").unwrap().as_deref(), Some("succeeded"));
        // Starting it again marks it running and keeps its progress.
        store.start_run("r", "s", "d").unwrap();
        assert_eq!(store.run_status("r").unwrap().as_deref(), Some("running"));
        assert_eq!(store.files("r").unwrap().len(), 1);
    });
}

#[test]
fn parts_recorded_from_many_threads_are_all_kept() {
    on_each_backend(|place| {
        let store = Arc::new(place.open());
        store
            .begin_upload("r", "big", 1 << 30, None, "u", 1 << 20)
            .unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let index = t * 25 + i;
                        let token = PartToken(format!("t{index}"));
                        store.part_done("r", "big", index, &token, None).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let files = store.files("r").unwrap();
        let parts = &files["big"].upload.as_ref().unwrap().parts;
        assert_eq!(parts.len(), 200);
        assert!(parts.iter().all(|(i, (t, _))| t.0 == format!("t{i}")));
    });
}

#[test]
fn the_sqlite_store_is_in_the_state_directory_and_postgres_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = StateStore::open_for(&state, None).unwrap();
    assert_eq!(
        store.location(),
        state.join("ferry.db").display().to_string()
    );
    assert!(state.join("ferry.db").is_file());
    let Some(db) = Database::create() else { return };
    let elsewhere = dir.path().join("not-created");
    let store = StateStore::open_for(&elsewhere, Some(&db.url)).unwrap();
    assert!(!elsewhere.exists());
    assert_eq!(store.location(), db.url);
}

#[test]
fn two_processes_on_one_database_share_their_checkpoints() {
    let Some(db) = Database::create() else { return };
    // Two stores, as two processes (each its own thread and session) would have.
    let a = StateStore::connect(&db.url).unwrap();
    let b = StateStore::connect(&db.url).unwrap();
    a.start_run("run", "s3://in/", "az://out/").unwrap();
    a.begin_upload("run", "big.bin", 100, Some("v1"), "up-1", 40)
        .unwrap();
    a.part_done(
        "run",
        "big.bin",
        0,
        &PartToken("t0".into()),
        Some("crc32c:0"),
    )
    .unwrap();
    a.file_done(
        "run",
        "small.txt",
        3,
        Some("v2"),
        Some("crc32c:1"),
        Some("e1"),
    )
    .unwrap();
    // Each write is committed when its call returns: b sees all of them at once.
    assert_eq!(b.run_status("run").unwrap().as_deref(), Some("running"));
    let seen = b.files("run").unwrap();
    assert_eq!(seen, a.files("run").unwrap());
    let parts = &seen["big.bin"].upload.as_ref().unwrap().parts;
    assert_eq!(parts.keys().copied().collect::<Vec<_>>(), [0]);
    assert!(seen["small.txt"].done);
    // b continues where a stopped; a (or a third process) sees b's progress.
    b.part_done("run", "big.bin", 1, &PartToken("t1".into()), None)
        .unwrap();
    b.file_done("run", "big.bin", 100, Some("v1"), Some("crc32c:2"), None)
        .unwrap();
    b.finish_run("run", "succeeded").unwrap();
    drop(a);
    let c = StateStore::connect(&db.url).unwrap();
    let files = c.files("run").unwrap();
    assert!(files.values().all(|f| f.done && f.upload.is_none()));
    assert_eq!(c.run_status("run").unwrap().as_deref(), Some("succeeded"));
}

#[test]
fn a_lost_session_is_reopened_without_failing_a_call() {
    let Some(db) = Database::create() else { return };
    let store = Arc::new(StateStore::connect(&db.url).unwrap());
    store
        .begin_upload("r", "big", 1 << 30, None, "u", 1 << 20)
        .unwrap();
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    // The server ends the session while calls are in flight, several times over.
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..150 {
                    let index = t * 150 + i;
                    let token = PartToken(format!("t{index}"));
                    store.part_done("r", "big", index, &token, None).unwrap();
                }
            })
        })
        .collect();
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(40));
        admin(&db.server, &terminate);
    }
    for writer in writers {
        writer.join().unwrap();
    }
    let files = store.files("r").unwrap();
    assert_eq!(files["big"].upload.as_ref().unwrap().parts.len(), 600);
}

#[test]
fn a_wrong_password_is_one_line_naming_the_store_without_the_password() {
    let Some(db) = Database::create() else { return };
    let wrong = "not-the-password-5d1c";
    let url = db.url.replacen('@', &format!(":{wrong}@"), 1);
    let Err(e) = StateStore::connect(&url) else {
        panic!("a wrong password is refused");
    };
    let text = e.to_string();
    assert!(matches!(e, Error::State { .. }), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains(&db.name), "{text}");
    assert!(text.contains(":***@"), "{text}");
}

#[test]
fn an_unanswered_connect_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://ferry:secret-pass-37@127.0.0.1:{port}/ferry");
    let Err(e) = StateStore::connect(&url) else {
        panic!("nothing listens on port {port}");
    };
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(!e.to_string().contains("secret-pass-37"), "{e}");
}

#[test]
fn checkpoints_are_kept_over_tls() {
    let Some(db) = Database::create() else { return };
    let ca = crate::test_net::ca();
    let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", db.url);
    let store = StateStore::connect(&url).unwrap();
    store.start_run("r", "s3://a/", "s3://b/").unwrap();
    store.file_done("r", "k", 3, None, None, None).unwrap();
    assert!(store.files("r").unwrap()["k"].done);
}

#[test]
fn a_silent_server_fails_a_call_within_the_timeout() {
    let Some(db) = Database::create() else { return };
    let (user, upstream, name) = crate::test_net::parts(&db.url);
    let proxy = crate::test_net::Proxy::start(&upstream);
    let port = proxy.port;
    let url = format!("postgres://{user}@127.0.0.1:{port}/{name}?query_timeout=2");
    let store = StateStore::connect(&url).unwrap();
    store.start_run("r", "s3://a/", "s3://b/").unwrap();
    proxy.silence();
    let started = std::time::Instant::now();
    let Err(e) = store.file_done("r", "k", 3, None, None, None) else {
        panic!("the server is silent");
    };
    let text = e.to_string();
    assert!(
        text.contains("the checkpoint store did not answer within 2 s"),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn bad_tls_settings_and_other_urls_are_refused_naming_the_flag() {
    let Err(e) = StateStore::connect("postgres://ferry:pw-123456@db.invalid/x?sslmode=sometimes")
    else {
        panic!("an unknown sslmode is refused");
    };
    let text = e.to_string();
    assert!(matches!(e, Error::InvalidOption { .. }), "{text}");
    assert!(text.contains("--state-url"), "{text}");
    assert!(text.contains("unknown sslmode 'sometimes'"), "{text}");
    assert!(!text.contains("pw-123456"), "{text}");
    let Err(e) = StateStore::open_for(Path::new("x"), Some("mysql://ferry:pw-123456@db/x")) else {
        panic!("only postgres:// URLs");
    };
    let text = e.to_string();
    assert!(
        text.contains("--state-url") && text.contains("expected postgres://"),
        "{text}"
    );
    assert!(!text.contains("pw-123456"), "{text}");
}
