//! Checkpoints in a shared PostgreSQL database, so that a run one process left (killed,
//! evicted, its machine gone) is continued by another process on another machine.
//!
//! The store's methods are synchronous and are called from async code, so the session
//! lives on a thread of its own, with its own single-threaded runtime; a call sends its
//! request there and waits for the answer. Requests from concurrent callers are pipelined
//! on the one session. Every request is one statement, hence its own transaction, and is
//! answered once the server reported the commit: a write is durable when its call returns.
//! Every request is also idempotent, so one whose session was lost is sent again once on
//! a new session.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use ferry_core::{Error, PartToken, Result};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::{now, FileCheckpoint, UploadCheckpoint};
use crate::control::postgres::{describe, dial, parse_config, shown, Session as Dialed, Target};

/// Advisory lock (per database) held while creating the tables, so that processes
/// starting together do not race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA_LOCK: i64 = 0x6665_7272_795f_636b;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ferry_checkpoint_runs (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    status      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ferry_checkpoint_files (
    run_id          TEXT NOT NULL,
    key             TEXT NOT NULL,
    source_size     BIGINT NOT NULL,
    source_version  TEXT,
    done            BOOLEAN NOT NULL,
    upload_id       TEXT,
    part_size       BIGINT,
    checksum        TEXT,
    dest_version    TEXT,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS ferry_checkpoint_parts (
    run_id   TEXT NOT NULL,
    key      TEXT NOT NULL,
    idx      BIGINT NOT NULL,
    token    TEXT NOT NULL,
    checksum TEXT,
    PRIMARY KEY (run_id, key, idx)
);
";

/// The statements, prepared on each session when it opens.
#[derive(Clone, Copy)]
enum Q {
    StartRun,
    FinishRun,
    Files,
    FilesFor,
    Uploading,
    BeginUpload,
    PartDone,
    FileDone,
    ForgetFile,
    ForgetRun,
    RunStatus,
}

const QUERIES: [Q; 11] = [
    Q::StartRun,
    Q::FinishRun,
    Q::Files,
    Q::FilesFor,
    Q::Uploading,
    Q::BeginUpload,
    Q::PartDone,
    Q::FileDone,
    Q::ForgetFile,
    Q::ForgetRun,
    Q::RunStatus,
];

impl Q {
    /// Data-modifying CTEs all run, in one statement: one transaction.
    fn sql(self) -> &'static str {
        match self {
            Q::StartRun => {
                "INSERT INTO ferry_checkpoint_runs
                   (id, source, destination, created_at, updated_at, status)
                 VALUES ($1, $2, $3, $4, $4, 'running')
                 ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at,
                   status = 'running'"
            }
            Q::FinishRun => {
                "UPDATE ferry_checkpoint_runs SET status = $2, updated_at = $3 WHERE id = $1"
            }
            // One statement, so files and parts come from one snapshot.
            Q::Files => {
                "SELECT f.key, f.source_size, f.source_version, f.done, f.upload_id, f.part_size,
                        f.checksum, f.dest_version, p.idx, p.token, p.checksum
                 FROM ferry_checkpoint_files f
                 LEFT JOIN ferry_checkpoint_parts p ON p.run_id = f.run_id AND p.key = f.key
                 WHERE f.run_id = $1"
            }
            Q::FilesFor => {
                "SELECT f.key, f.source_size, f.source_version, f.done, f.upload_id, f.part_size,
                        f.checksum, f.dest_version, p.idx, p.token, p.checksum
                 FROM ferry_checkpoint_files f
                 LEFT JOIN ferry_checkpoint_parts p ON p.run_id = f.run_id AND p.key = f.key
                 WHERE f.run_id = $1 AND f.key = ANY($2)"
            }
            Q::Uploading => {
                "SELECT f.key, f.source_size, f.source_version, f.done, f.upload_id, f.part_size,
                        f.checksum, f.dest_version, p.idx, p.token, p.checksum
                 FROM ferry_checkpoint_files f
                 LEFT JOIN ferry_checkpoint_parts p ON p.run_id = f.run_id AND p.key = f.key
                 WHERE f.run_id = $1 AND f.upload_id IS NOT NULL"
            }
            Q::BeginUpload => {
                "WITH parts AS (DELETE FROM ferry_checkpoint_parts WHERE run_id = $1 AND key = $2)
                 INSERT INTO ferry_checkpoint_files (run_id, key, source_size, source_version,
                   done, upload_id, part_size, checksum, dest_version)
                 VALUES ($1, $2, $3, $4, FALSE, $5, $6, NULL, NULL)
                 ON CONFLICT (run_id, key) DO UPDATE SET source_size = EXCLUDED.source_size,
                   source_version = EXCLUDED.source_version, done = FALSE,
                   upload_id = EXCLUDED.upload_id, part_size = EXCLUDED.part_size,
                   checksum = NULL, dest_version = NULL"
            }
            Q::PartDone => {
                "INSERT INTO ferry_checkpoint_parts (run_id, key, idx, token, checksum)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (run_id, key, idx) DO UPDATE SET token = EXCLUDED.token,
                   checksum = EXCLUDED.checksum"
            }
            Q::FileDone => {
                "WITH parts AS (DELETE FROM ferry_checkpoint_parts WHERE run_id = $1 AND key = $2)
                 INSERT INTO ferry_checkpoint_files (run_id, key, source_size, source_version,
                   done, upload_id, part_size, checksum, dest_version)
                 VALUES ($1, $2, $3, $4, TRUE, NULL, NULL, $5, $6)
                 ON CONFLICT (run_id, key) DO UPDATE SET source_size = EXCLUDED.source_size,
                   source_version = EXCLUDED.source_version, done = TRUE, upload_id = NULL,
                   part_size = NULL, checksum = EXCLUDED.checksum,
                   dest_version = EXCLUDED.dest_version"
            }
            Q::ForgetFile => {
                "WITH parts AS (DELETE FROM ferry_checkpoint_parts WHERE run_id = $1 AND key = $2)
                 DELETE FROM ferry_checkpoint_files WHERE run_id = $1 AND key = $2"
            }
            Q::ForgetRun => {
                "WITH parts AS (DELETE FROM ferry_checkpoint_parts WHERE run_id = $1),
                      files AS (DELETE FROM ferry_checkpoint_files WHERE run_id = $1)
                 DELETE FROM ferry_checkpoint_runs WHERE id = $1"
            }
            Q::RunStatus => "SELECT status FROM ferry_checkpoint_runs WHERE id = $1",
        }
    }
}

/// What a caller asks of the session thread.
enum Op {
    StartRun {
        id: String,
        source: String,
        destination: String,
    },
    FinishRun {
        id: String,
        status: String,
    },
    Files {
        id: String,
    },
    FilesFor {
        id: String,
        keys: Vec<String>,
    },
    Uploading {
        id: String,
    },
    BeginUpload {
        id: String,
        key: String,
        source_size: i64,
        source_version: Option<String>,
        upload_id: String,
        part_size: i64,
    },
    PartDone {
        id: String,
        key: String,
        index: i64,
        token: String,
        checksum: Option<String>,
    },
    FileDone {
        id: String,
        key: String,
        source_size: i64,
        source_version: Option<String>,
        checksum: Option<String>,
        dest_version: Option<String>,
    },
    ForgetFile {
        id: String,
        key: String,
    },
    ForgetRun {
        id: String,
    },
    RunStatus {
        id: String,
    },
}

enum Answer {
    Done,
    Files(BTreeMap<String, FileCheckpoint>),
    Status(Option<String>),
}

struct Request {
    op: Op,
    reply: mpsc::SyncSender<Result<Answer>>,
}

/// The checkpoint tables in a PostgreSQL database.
pub(super) struct PostgresCheckpoints {
    /// The URL without its password, to name the store in errors.
    shown: String,
    requests: UnboundedSender<Request>,
}

impl PostgresCheckpoints {
    /// Connects to `postgres://user[:password]@host[:port]/database` (password from the
    /// URL, else `PGPASSWORD`; TLS as `sslmode` and `sslrootcert` say; `query_timeout`)
    /// and creates the tables if needed. Blocks until the session is open.
    pub(super) fn connect(url: &str) -> Result<Self> {
        let shown = shown(url);
        // One session per database and process, shared by every run: a service starting
        // many runs neither opens a connection nor checks the tables for each of them.
        static SESSIONS: std::sync::OnceLock<
            std::sync::Mutex<std::collections::HashMap<String, UnboundedSender<Request>>>,
        > = std::sync::OnceLock::new();
        let mut sessions = SESSIONS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(requests) = sessions.get(url).filter(|r| !r.is_closed()) {
            return Ok(Self {
                shown,
                requests: requests.clone(),
            });
        }
        let store = Self::open_session(url, shown)?;
        sessions.insert(url.to_string(), store.requests.clone());
        Ok(store)
    }

    fn open_session(url: &str, shown: String) -> Result<Self> {
        let target = parse_config(url, &shown, "--state-url", "the checkpoint store")?;
        let (requests, inbox) = unbounded_channel();
        let (ready, opened) = mpsc::sync_channel(1);
        let session = Session {
            shown: shown.clone(),
            target,
            conn: Mutex::new(None),
        };
        std::thread::Builder::new()
            .name("ferry-checkpoints".into())
            .spawn({
                let shown = shown.clone();
                move || match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(serve(Arc::new(session), inbox, ready)),
                    Err(e) => {
                        let _ = ready.send(Err(Error::state(&shown, e)));
                    }
                }
            })
            .map_err(|e| Error::state(&shown, e))?;
        opened
            .recv()
            .unwrap_or_else(|_| Err(Error::state(&shown, "the session thread ended")))?;
        Ok(Self { shown, requests })
    }

    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    fn call(&self, op: Op) -> Result<Answer> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || Error::state(&self.shown, "the session thread ended");
        self.requests
            .send(Request { op, reply })
            .map_err(|_| gone())?;
        answer.recv().unwrap_or_else(|_| Err(gone()))
    }

    fn write(&self, op: Op) -> Result<()> {
        match self.call(op)? {
            Answer::Done => Ok(()),
            _ => Err(Error::state(&self.shown, "unexpected answer to a write")),
        }
    }

    pub(super) fn start_run(&self, id: &str, source: &str, destination: &str) -> Result<()> {
        self.write(Op::StartRun {
            id: id.into(),
            source: source.into(),
            destination: destination.into(),
        })
    }

    pub(super) fn finish_run(&self, id: &str, status: &str) -> Result<()> {
        self.write(Op::FinishRun {
            id: id.into(),
            status: status.into(),
        })
    }

    pub(super) fn files(&self, id: &str) -> Result<BTreeMap<String, FileCheckpoint>> {
        self.read_files(Op::Files { id: id.into() })
    }

    pub(super) fn files_for(
        &self,
        id: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, FileCheckpoint>> {
        self.read_files(Op::FilesFor {
            id: id.into(),
            keys: keys.to_vec(),
        })
    }

    pub(super) fn uploading(&self, id: &str) -> Result<BTreeMap<String, FileCheckpoint>> {
        self.read_files(Op::Uploading { id: id.into() })
    }

    fn read_files(&self, op: Op) -> Result<BTreeMap<String, FileCheckpoint>> {
        match self.call(op)? {
            Answer::Files(files) => Ok(files),
            _ => Err(Error::state(&self.shown, "unexpected answer to a read")),
        }
    }

    pub(super) fn begin_upload(
        &self,
        id: &str,
        key: &str,
        source_size: u64,
        source_version: Option<&str>,
        upload_id: &str,
        part_size: u64,
    ) -> Result<()> {
        self.write(Op::BeginUpload {
            id: id.into(),
            key: key.into(),
            source_size: source_size as i64,
            source_version: source_version.map(Into::into),
            upload_id: upload_id.into(),
            part_size: part_size as i64,
        })
    }

    pub(super) fn part_done(
        &self,
        id: &str,
        key: &str,
        index: usize,
        token: &PartToken,
        checksum: Option<&str>,
    ) -> Result<()> {
        self.write(Op::PartDone {
            id: id.into(),
            key: key.into(),
            index: index as i64,
            token: token.0.clone(),
            checksum: checksum.map(Into::into),
        })
    }

    pub(super) fn file_done(
        &self,
        id: &str,
        key: &str,
        source_size: u64,
        source_version: Option<&str>,
        checksum: Option<&str>,
        dest_version: Option<&str>,
    ) -> Result<()> {
        self.write(Op::FileDone {
            id: id.into(),
            key: key.into(),
            source_size: source_size as i64,
            source_version: source_version.map(Into::into),
            checksum: checksum.map(Into::into),
            dest_version: dest_version.map(Into::into),
        })
    }

    pub(super) fn forget_file(&self, id: &str, key: &str) -> Result<()> {
        self.write(Op::ForgetFile {
            id: id.into(),
            key: key.into(),
        })
    }

    pub(super) fn forget_run(&self, id: &str) -> Result<()> {
        self.write(Op::ForgetRun { id: id.into() })
    }

    pub(super) fn run_status(&self, id: &str) -> Result<Option<String>> {
        match self.call(Op::RunStatus { id: id.into() })? {
            Answer::Status(status) => Ok(status),
            _ => Err(Error::state(&self.shown, "unexpected answer to a read")),
        }
    }
}

/// The session thread: opens the session (reporting on `ready`), then answers requests,
/// each in a task of its own so they pipeline, until the store is dropped.
async fn serve(
    session: Arc<Session>,
    mut inbox: UnboundedReceiver<Request>,
    ready: mpsc::SyncSender<Result<()>>,
) {
    match session.open(true).await {
        Ok(conn) => {
            *session.conn.lock().await = Some(conn);
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    }
    while let Some(Request { op, reply }) = inbox.recv().await {
        let session = Arc::clone(&session);
        tokio::spawn(async move {
            let _ = reply.send(session.answer(&op).await);
        });
    }
}

/// An open session with its prepared statements.
struct Conn {
    session: Dialed,
    statements: Vec<Statement>,
    /// Set when a request found the session gone, so the next one opens a new session.
    broken: AtomicBool,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.session.client.is_closed()
    }

    /// Whether `e` means the session is gone (then marked so): the connection closed, or
    /// the server ended it (class 08, connection exception; 57, operator intervention).
    fn lost(&self, e: &tokio_postgres::Error) -> bool {
        let lost = e.is_closed()
            || self.session.client.is_closed()
            || e.as_db_error()
                .is_some_and(|db| matches!(&db.code().code()[..2], "08" | "57"));
        if lost {
            self.broken.store(true, Ordering::Relaxed);
        }
        lost
    }

    async fn execute(
        &self,
        q: Q,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.session
            .client
            .execute(&self.statements[q as usize], params)
            .await
    }

    async fn query(
        &self,
        q: Q,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.session
            .client
            .query(&self.statements[q as usize], params)
            .await
    }
}

/// The session thread's state: where to connect, and the session, opened again when lost.
struct Session {
    shown: String,
    target: Target,
    conn: Mutex<Option<Arc<Conn>>>,
}

impl Session {
    fn fail(&self, e: &tokio_postgres::Error) -> Error {
        Error::state(&self.shown, describe(e, &self.target.config))
    }

    /// A new session, with the tables created first when `create` is set.
    async fn open(&self, create: bool) -> Result<Arc<Conn>> {
        let mut session = dial(&self.target, &self.shown).await?;
        let prepared = self.target.answered(async {
            let client = &mut session.client;
            if create {
                let tx = client.transaction().await?;
                tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
                    .await?;
                tx.batch_execute(SCHEMA).await?;
                tx.commit().await?;
            }
            let mut statements = Vec::with_capacity(QUERIES.len());
            for q in QUERIES {
                statements.push(client.prepare(q.sql()).await?);
            }
            Ok(statements)
        });
        let statements = match prepared.await {
            Some(prepared) => prepared.map_err(|e| self.fail(&e))?,
            None => return Err(self.target.silent(&self.shown)),
        };
        Ok(Arc::new(Conn {
            session,
            statements,
            broken: AtomicBool::new(false),
        }))
    }

    /// The open session, or a new one if it was lost.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.usable()) {
            return Ok(Arc::clone(conn));
        }
        *slot = None;
        let conn = self.open(false).await?;
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn answer(&self, op: &Op) -> Result<Answer> {
        let conn = self.conn().await?;
        match self.run(&conn, op).await? {
            Ok(answer) => self.read(answer),
            Err(e) if conn.lost(&e) => {
                // It may have committed or not; either way running it again is harmless.
                let conn = self.conn().await?;
                match self.run(&conn, op).await? {
                    Ok(answer) => self.read(answer),
                    Err(e) => {
                        conn.lost(&e);
                        Err(self.fail(&e))
                    }
                }
            }
            Err(e) => Err(self.fail(&e)),
        }
    }

    /// [`run`] within the time allowed: a session that did not answer in time is given
    /// up, and the request fails (not sent again, as the server may still be working).
    async fn run(&self, conn: &Conn, op: &Op) -> Result<Result<Raw, tokio_postgres::Error>> {
        match self.target.answered(run(conn, op)).await {
            Some(answer) => Ok(answer),
            None => {
                conn.broken.store(true, Ordering::Relaxed);
                Err(self.target.silent(&self.shown))
            }
        }
    }

    /// Turns rows into the answer.
    fn read(&self, raw: Raw) -> Result<Answer> {
        match raw {
            Raw::Done => Ok(Answer::Done),
            Raw::Status(rows) => Ok(Answer::Status(match rows.first() {
                Some(row) => row.try_get(0).map_err(|e| self.fail(&e))?,
                None => None,
            })),
            Raw::Files(rows) => {
                let mut files = BTreeMap::new();
                for row in &rows {
                    self.file_row(row, &mut files).map_err(|e| self.fail(&e))?;
                }
                Ok(Answer::Files(files))
            }
        }
    }

    /// Adds one row of [`Q::Files`]: a file, with one of its parts if it has any.
    fn file_row(
        &self,
        row: &Row,
        files: &mut BTreeMap<String, FileCheckpoint>,
    ) -> Result<(), tokio_postgres::Error> {
        let key: String = row.try_get(0)?;
        if !files.contains_key(&key) {
            let upload_id: Option<String> = row.try_get(4)?;
            let part_size: Option<i64> = row.try_get(5)?;
            let file = FileCheckpoint {
                source_size: row.try_get::<_, i64>(1)? as u64,
                source_version: row.try_get(2)?,
                done: row.try_get(3)?,
                upload: upload_id.map(|upload_id| UploadCheckpoint {
                    upload_id,
                    part_size: part_size.unwrap_or_default() as u64,
                    parts: BTreeMap::new(),
                }),
                checksum: row.try_get(6)?,
                dest_version: row.try_get(7)?,
            };
            files.insert(key.clone(), file);
        }
        let index: Option<i64> = row.try_get(8)?;
        let token: Option<String> = row.try_get(9)?;
        if let (Some(index), Some(token)) = (index, token) {
            let checksum: Option<String> = row.try_get(10)?;
            if let Some(upload) = files.get_mut(&key).and_then(|f| f.upload.as_mut()) {
                upload
                    .parts
                    .insert(index as usize, (PartToken(token), checksum));
            }
        }
        Ok(())
    }
}

/// What a statement returned, before it is read.
enum Raw {
    Done,
    Files(Vec<Row>),
    Status(Vec<Row>),
}

async fn run(conn: &Conn, op: &Op) -> Result<Raw, tokio_postgres::Error> {
    match op {
        Op::StartRun {
            id,
            source,
            destination,
        } => {
            conn.execute(Q::StartRun, &[id, source, destination, &now()])
                .await?;
        }
        Op::FinishRun { id, status } => {
            conn.execute(Q::FinishRun, &[id, status, &now()]).await?;
        }
        Op::Files { id } => return Ok(Raw::Files(conn.query(Q::Files, &[id]).await?)),
        Op::FilesFor { id, keys } => {
            return Ok(Raw::Files(conn.query(Q::FilesFor, &[id, keys]).await?))
        }
        Op::Uploading { id } => return Ok(Raw::Files(conn.query(Q::Uploading, &[id]).await?)),
        Op::BeginUpload {
            id,
            key,
            source_size,
            source_version,
            upload_id,
            part_size,
        } => {
            conn.execute(
                Q::BeginUpload,
                &[id, key, source_size, source_version, upload_id, part_size],
            )
            .await?;
        }
        Op::PartDone {
            id,
            key,
            index,
            token,
            checksum,
        } => {
            conn.execute(Q::PartDone, &[id, key, index, token, checksum])
                .await?;
        }
        Op::FileDone {
            id,
            key,
            source_size,
            source_version,
            checksum,
            dest_version,
        } => {
            conn.execute(
                Q::FileDone,
                &[id, key, source_size, source_version, checksum, dest_version],
            )
            .await?;
        }
        Op::ForgetFile { id, key } => {
            conn.execute(Q::ForgetFile, &[id, key]).await?;
        }
        Op::ForgetRun { id } => {
            conn.execute(Q::ForgetRun, &[id]).await?;
        }
        Op::RunStatus { id } => {
            return Ok(Raw::Status(conn.query(Q::RunStatus, &[id]).await?));
        }
    }
    Ok(Raw::Done)
}
