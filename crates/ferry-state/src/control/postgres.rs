//! [`ControlStore`] in a shared PostgreSQL database, so several servers share one state.
//!
//! Every method but one is a single statement, hence atomic without client-side
//! transactions, and callers share a few pipelined connections. Selecting a data plane is
//! a transaction (lock, choose, count the turn) on a session of its own. JSON documents are stored as text so they
//! come back exactly as written (jsonb would reorder object keys).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::redact::{redact, MASK};
use ferry_core::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, Config, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::dataplanes::{Chooser, ChooserMany, DataPlaneRecord, DataPlaneStore, AVAILABLE};
use super::documents::{DocumentRecord, DocumentStore};
use super::{ControlStore, EventRecord, NewEvent, RunRecord, TransferFilter, TransferRecord};

/// Sessions per store: enough to overlap concurrent requests, few enough that many
/// servers can share one database.
const POOL: usize = 4;

/// Advisory lock (per database) held while creating the schema, so that processes
/// starting together do not race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA_LOCK: i64 = 0x6665_7272_795f_7363;

/// Advisory lock held by each event append until it commits, so events commit in `seq`
/// order and a reader resuming after a `seq` never misses one committed later.
const EVENTS_LOCK: i64 = 0x6665_7272_795f_6576;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ferry_transfers (
    name        TEXT PRIMARY KEY,
    uid         TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    labels      TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    phase       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    next_due    BIGINT
);
CREATE INDEX IF NOT EXISTS ferry_transfers_due ON ferry_transfers (next_due)
    WHERE next_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS ferry_runs (
    id            TEXT PRIMARY KEY,
    transfer      TEXT NOT NULL,
    transfer_uid  TEXT NOT NULL,
    generation    BIGINT NOT NULL,
    phase         TEXT NOT NULL,
    trigger_kind  TEXT NOT NULL,
    attempt       BIGINT NOT NULL,
    scheduled_for BIGINT,
    not_before    BIGINT,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    owner         TEXT,
    lease_until   BIGINT,
    stats         TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS ferry_runs_by_transfer ON ferry_runs (transfer, created_at);
CREATE INDEX IF NOT EXISTS ferry_runs_unfinished ON ferry_runs (created_at)
    WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS ferry_runs_by_owner ON ferry_runs (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS ferry_events (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer  TEXT NOT NULL,
    run       TEXT,
    time      BIGINT NOT NULL,
    severity  TEXT NOT NULL,
    reason    TEXT NOT NULL,
    message   TEXT NOT NULL,
    data      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ferry_events_by_transfer ON ferry_events (transfer, seq);
CREATE TABLE IF NOT EXISTS ferry_dataplanes (
    id              TEXT PRIMARY KEY,
    registration    TEXT,
    document        TEXT NOT NULL,
    state           TEXT NOT NULL,
    turn_count      BIGINT NOT NULL,
    last_active_ms  BIGINT,
    heartbeat_ms    BIGINT,
    load            TEXT
);
CREATE TABLE IF NOT EXISTS ferry_documents (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    parent      TEXT,
    active      BOOLEAN NOT NULL,
    version     BIGINT NOT NULL,
    document    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX IF NOT EXISTS ferry_documents_by_parent ON ferry_documents (kind, parent, name);
";

macro_rules! transfer_columns {
    () => {
        "name, uid, generation, labels, manifest, phase, status, created_at, updated_at, next_due"
    };
}

macro_rules! run_columns {
    () => {
        "id, transfer, transfer_uid, generation, phase, trigger_kind, attempt, scheduled_for, \
         not_before, created_at, started_at, finished_at, owner, lease_until, stats, error"
    };
}

macro_rules! document_columns {
    () => {
        "kind, name, parent, active, version, document, updated_at"
    };
}

macro_rules! dataplane_columns {
    () => {
        "id, registration, document, state, turn_count, last_active_ms, heartbeat_ms, load"
    };
}

/// The statements the store runs; each session prepares one the first time it runs it.
#[derive(Clone, Copy)]
enum Q {
    CreateTransfer,
    GetTransfer,
    ListTransfers,
    DueTransfers,
    ReplaceManifest,
    SetStatus,
    ClaimSchedule,
    DeleteTransfer,
    PutRun,
    GetRun,
    ListRuns,
    UnfinishedRuns,
    DeleteRuns,
    ClaimRun,
    HandOverRun,
    RenewLeases,
    ReleaseRun,
    AppendEvent,
    AppendEvents,
    ListEvents,
    PutDataPlane,
    GetDataPlane,
    ListDataPlanes,
    DeleteDataPlane,
    HeartbeatDataPlane,
    SetDataPlaneState,
    LockDataPlanes,
    TakeTurns,
    InsertDocument,
    UpdateDocument,
    GetDocument,
    ListDocuments,
    DeleteDocument,
    DeleteDocuments,
}

const QUERIES: usize = Q::DeleteDocuments as usize + 1;

impl Q {
    /// Names sort by `COLLATE "C"`, byte order, as in SQLite, whatever the database's
    /// collation.
    fn sql(self) -> &'static str {
        match self {
            Q::CreateTransfer => concat!(
                "INSERT INTO ferry_transfers (",
                transfer_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name) DO NOTHING"
            ),
            Q::GetTransfer => concat!(
                "SELECT ",
                transfer_columns!(),
                " FROM ferry_transfers WHERE name = $1"
            ),
            Q::ListTransfers => concat!(
                "SELECT ",
                transfer_columns!(),
                " FROM ferry_transfers WHERE ($1::text IS NULL OR phase = $1) \
                 AND ($2::text IS NULL OR labels::jsonb @> $2::jsonb) \
                 AND ($3::text IS NULL OR name COLLATE \"C\" > $3) \
                 ORDER BY name COLLATE \"C\" LIMIT $4"
            ),
            Q::DueTransfers => concat!(
                "SELECT ",
                transfer_columns!(),
                " FROM ferry_transfers WHERE next_due IS NOT NULL AND next_due <= $1 \
                 ORDER BY name COLLATE \"C\""
            ),
            Q::ReplaceManifest => concat!(
                "UPDATE ferry_transfers SET manifest = $2, labels = $3, \
                 generation = generation + 1, updated_at = $4 WHERE name = $1 RETURNING ",
                transfer_columns!()
            ),
            Q::SetStatus => {
                "UPDATE ferry_transfers SET phase = $3, status = $4, updated_at = $5, next_due = $6
                 WHERE name = $1 AND uid = $2 AND updated_at <= $5"
            }
            Q::ClaimSchedule => {
                "UPDATE ferry_transfers SET next_due = $4, updated_at = GREATEST(updated_at, $5)
                 WHERE name = $1 AND uid = $2 AND next_due = $3"
            }
            // Data-modifying CTEs all run, in one statement: one transaction.
            Q::DeleteTransfer => {
                "WITH events AS (DELETE FROM ferry_events WHERE transfer = $1),
                      runs AS (DELETE FROM ferry_runs WHERE transfer = $1)
                 DELETE FROM ferry_transfers WHERE name = $1"
            }
            Q::PutRun => concat!(
                "INSERT INTO ferry_runs (",
                run_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL, $13, $14)
                 ON CONFLICT (id) DO UPDATE SET phase = EXCLUDED.phase,
                   trigger_kind = EXCLUDED.trigger_kind, attempt = EXCLUDED.attempt,
                   scheduled_for = EXCLUDED.scheduled_for, not_before = EXCLUDED.not_before,
                   started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
                   stats = EXCLUDED.stats, error = EXCLUDED.error"
            ),
            Q::GetRun => concat!("SELECT ", run_columns!(), " FROM ferry_runs WHERE id = $1"),
            Q::ListRuns => concat!(
                "SELECT ",
                run_columns!(),
                " FROM ferry_runs WHERE transfer = $1
                 ORDER BY created_at DESC, id COLLATE \"C\" DESC"
            ),
            Q::UnfinishedRuns => concat!(
                "SELECT ",
                run_columns!(),
                " FROM ferry_runs WHERE finished_at IS NULL ORDER BY created_at, id COLLATE \"C\""
            ),
            Q::DeleteRuns => "DELETE FROM ferry_runs WHERE id = ANY($1)",
            // One conditional UPDATE: PostgreSQL rechecks the condition on the newest row
            // version, so of racing claims exactly one matches.
            // A claimer finding the row locked by another one skips it instead of waiting:
            // that one is taking the run.
            Q::ClaimRun => concat!(
                "UPDATE ferry_runs SET owner = $2, lease_until = $3
                 WHERE id = (SELECT id FROM ferry_runs
                             WHERE id = $1 AND finished_at IS NULL
                               AND (owner IS NULL OR owner = $2 OR lease_until < $4)
                             FOR UPDATE SKIP LOCKED)
                 RETURNING ",
                run_columns!()
            ),
            Q::HandOverRun => {
                "UPDATE ferry_runs SET owner = $3, lease_until = $4
                 WHERE id = $1 AND owner = $2 AND finished_at IS NULL"
            }
            Q::RenewLeases => {
                "UPDATE ferry_runs SET lease_until = $2 WHERE owner = $1 AND finished_at IS NULL"
            }
            Q::ReleaseRun => {
                "UPDATE ferry_runs SET owner = NULL, lease_until = NULL WHERE id = $1 AND owner = $2"
            }
            // The lock is taken (in the subquery) before the identity default draws `seq`,
            // and held until the statement commits.
            Q::AppendEvent => {
                "INSERT INTO ferry_events (transfer, run, time, severity, reason, message, data)
                 SELECT $1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::text
                 FROM (SELECT pg_advisory_xact_lock($8::bigint)) AS serialized
                 RETURNING seq"
            }
            // Rows are inserted (and draw `seq`) in the order given.
            Q::AppendEvents => {
                "INSERT INTO ferry_events (transfer, run, time, severity, reason, message, data)
                 SELECT e.transfer, e.run, e.time, e.severity, e.reason, e.message, e.data
                 FROM (SELECT pg_advisory_xact_lock($8::bigint)) AS serialized,
                      unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                             $6::text[], $7::text[]) WITH ORDINALITY
                      AS e(transfer, run, time, severity, reason, message, data, n)
                 ORDER BY e.n
                 RETURNING seq"
            }
            Q::ListEvents => {
                "SELECT seq, transfer, run, time, severity, reason, message, data FROM ferry_events
                 WHERE transfer = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            }
            // A row the upsert inserted has no xmax yet; one it updated has this
            // transaction's, so `created` tells the two apart in the same statement.
            Q::PutDataPlane => concat!(
                "INSERT INTO ferry_dataplanes (",
                dataplane_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET registration = EXCLUDED.registration,
                   document = EXCLUDED.document, state = EXCLUDED.state,
                   heartbeat_ms = EXCLUDED.heartbeat_ms, load = EXCLUDED.load
                 RETURNING ",
                dataplane_columns!(),
                ", (xmax = 0) AS created"
            ),
            Q::GetDataPlane => concat!(
                "SELECT ",
                dataplane_columns!(),
                " FROM ferry_dataplanes WHERE id = $1"
            ),
            Q::ListDataPlanes => concat!(
                "SELECT ",
                dataplane_columns!(),
                " FROM ferry_dataplanes ORDER BY id COLLATE \"C\""
            ),
            Q::DeleteDataPlane => concat!(
                "DELETE FROM ferry_dataplanes WHERE id = $1
                 AND ($2::text IS NULL OR registration = $2) RETURNING ",
                dataplane_columns!()
            ),
            Q::HeartbeatDataPlane => concat!(
                "UPDATE ferry_dataplanes SET load = $2, heartbeat_ms = $3, state = $4
                 WHERE id = $1 RETURNING ",
                dataplane_columns!()
            ),
            Q::SetDataPlaneState => concat!(
                "UPDATE ferry_dataplanes SET state = $2 WHERE id = $1 RETURNING ",
                dataplane_columns!()
            ),
            // Rows are locked in id order, so concurrent selections never deadlock.
            Q::LockDataPlanes => concat!(
                "SELECT ",
                dataplane_columns!(),
                " FROM ferry_dataplanes ORDER BY id COLLATE \"C\" FOR UPDATE"
            ),
            Q::TakeTurns => concat!(
                "UPDATE ferry_dataplanes SET turn_count = turn_count + $2, last_active_ms = $3
                 WHERE id = $1 RETURNING ",
                dataplane_columns!()
            ),
            Q::InsertDocument => concat!(
                "INSERT INTO ferry_documents (",
                document_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, name) DO NOTHING"
            ),
            Q::UpdateDocument => {
                "UPDATE ferry_documents SET parent = $3, active = $4, version = $5, document = $6,
                   updated_at = $7 WHERE kind = $1 AND name = $2 AND version = $8"
            }
            Q::GetDocument => concat!(
                "SELECT ",
                document_columns!(),
                " FROM ferry_documents WHERE kind = $1 AND name = $2"
            ),
            Q::ListDocuments => concat!(
                "SELECT ",
                document_columns!(),
                " FROM ferry_documents WHERE kind = $1 AND ($2::text IS NULL OR parent = $2)
                 AND (NOT $3 OR active) ORDER BY name COLLATE \"C\""
            ),
            Q::DeleteDocument => "DELETE FROM ferry_documents WHERE kind = $1 AND name = $2",
            Q::DeleteDocuments => "DELETE FROM ferry_documents WHERE kind = $1 AND parent = $2",
        }
    }
}

/// One session with the statements it has prepared.
struct Conn {
    session: Session,
    prepared: [OnceCell<Statement>; QUERIES],
    /// Set when a call found the session closed, so the next caller opens a new one.
    broken: AtomicBool,
}

impl Conn {
    fn new(session: Session) -> Self {
        Self {
            session,
            prepared: std::array::from_fn(|_| OnceCell::new()),
            broken: AtomicBool::new(false),
        }
    }

    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.session.client.is_closed()
    }

    async fn statement(&self, q: Q) -> Result<&Statement, tokio_postgres::Error> {
        self.prepared[q as usize]
            .get_or_try_init(|| self.session.client.prepare(q.sql()))
            .await
    }
}

pub struct PostgresControlStore {
    /// The URL without its password, to name the store in errors.
    shown: String,
    target: Target,
    /// Opened on first use and again after the session is lost (a server restart).
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    /// The session for data plane selections: a transaction needs a session to itself.
    selecting: Mutex<Option<Conn>>,
}

impl PostgresControlStore {
    /// Connects to `postgres://user[:password]@host[:port]/database` and creates the
    /// tables if needed. The password comes from the URL, else `PGPASSWORD`; TLS as
    /// `sslmode` and `sslrootcert` say (see [`crate::tls`]); a statement unanswered for
    /// `query_timeout` seconds (15 by default) fails and its session is given up.
    pub async fn connect(url: &str) -> Result<Self> {
        let shown = shown(url);
        let target = parse_config(url, &shown, "--store", "the control store")?;
        let mut session = dial(&target, &shown).await?;
        match target.answered(create_schema(&mut session.client)).await {
            Some(created) => {
                created.map_err(|e| Error::state(&shown, describe(&e, &target.config)))?
            }
            None => return Err(target.silent(&shown)),
        }
        let mut slots: Vec<_> = (0..POOL).map(|_| Mutex::new(None)).collect();
        slots[0] = Mutex::new(Some(Arc::new(Conn::new(session))));
        Ok(Self {
            shown,
            target,
            slots,
            next: AtomicUsize::new(0),
            selecting: Mutex::new(None),
        })
    }

    /// The next session round-robin, (re)opened if it is not open.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        match slot.as_ref() {
            Some(conn) if conn.usable() => Ok(Arc::clone(conn)),
            _ => {
                *slot = None;
                let conn = Arc::new(Conn::new(dial(&self.target, &self.shown).await?));
                *slot = Some(Arc::clone(&conn));
                Ok(conn)
            }
        }
    }

    fn fail(&self, e: &tokio_postgres::Error) -> Error {
        Error::state(&self.shown, describe(e, &self.target.config))
    }

    /// An error from `conn`, marking it for replacement when the session is gone.
    fn failed(&self, conn: &Conn, e: &tokio_postgres::Error) -> Error {
        if e.is_closed() {
            conn.broken.store(true, Ordering::Relaxed);
        }
        self.fail(e)
    }

    /// Runs `call` on `conn` within the time allowed; a session that did not answer in
    /// time is given up, as one that closed.
    async fn answered<T>(
        &self,
        conn: &Conn,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        match self.target.answered(call).await {
            Some(answer) => answer.map_err(|e| self.failed(conn, &e)),
            None => {
                conn.broken.store(true, Ordering::Relaxed);
                Err(self.target.silent(&self.shown))
            }
        }
    }

    async fn query(&self, q: Q, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let conn = self.conn().await?;
        self.answered(&conn, async {
            let statement = conn.statement(q).await?;
            conn.session.client.query(statement, params).await
        })
        .await
    }

    async fn execute(&self, q: Q, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let conn = self.conn().await?;
        self.answered(&conn, async {
            let statement = conn.statement(q).await?;
            conn.session.client.execute(statement, params).await
        })
        .await
    }

    fn get<'r, T: FromSql<'r>>(&self, row: &'r Row, i: usize) -> Result<T> {
        row.try_get(i).map_err(|e| self.fail(&e))
    }

    fn json<T: DeserializeOwned>(&self, row: &Row, i: usize) -> Result<T> {
        let text: &str = self.get(row, i)?;
        serde_json::from_str(text).map_err(|e| {
            let column = row.columns().get(i).map_or("?", |c| c.name());
            Error::state(&self.shown, format!("column {column}: {e}"))
        })
    }

    fn transfer(&self, row: &Row) -> Result<TransferRecord> {
        Ok(TransferRecord {
            name: self.get(row, 0)?,
            uid: self.get(row, 1)?,
            generation: self.get(row, 2)?,
            labels: self.json(row, 3)?,
            manifest: self.json(row, 4)?,
            phase: self.get(row, 5)?,
            status: self.json(row, 6)?,
            created_at: self.get(row, 7)?,
            updated_at: self.get(row, 8)?,
            next_due: self.get(row, 9)?,
        })
    }

    fn run(&self, row: &Row) -> Result<RunRecord> {
        Ok(RunRecord {
            id: self.get(row, 0)?,
            transfer: self.get(row, 1)?,
            transfer_uid: self.get(row, 2)?,
            generation: self.get(row, 3)?,
            phase: self.get(row, 4)?,
            trigger: self.get(row, 5)?,
            attempt: self.get(row, 6)?,
            scheduled_for: self.get(row, 7)?,
            not_before: self.get(row, 8)?,
            created_at: self.get(row, 9)?,
            started_at: self.get(row, 10)?,
            finished_at: self.get(row, 11)?,
            owner: self.get(row, 12)?,
            lease_until: self.get(row, 13)?,
            stats: self.json(row, 14)?,
            error: self.get(row, 15)?,
        })
    }

    async fn runs(&self, q: Q, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<RunRecord>> {
        let rows = self.query(q, params).await?;
        rows.iter().map(|row| self.run(row)).collect()
    }

    fn dataplane(&self, row: &Row) -> Result<DataPlaneRecord> {
        let load: Option<&str> = self.get(row, 7)?;
        Ok(DataPlaneRecord {
            id: self.get(row, 0)?,
            registration: self.get(row, 1)?,
            document: self.json(row, 2)?,
            state: self.get(row, 3)?,
            turn_count: self.get(row, 4)?,
            last_active_ms: self.get(row, 5)?,
            heartbeat_ms: self.get(row, 6)?,
            load: load
                .map(|text| {
                    serde_json::from_str(text)
                        .map_err(|e| Error::state(&self.shown, format!("column load: {e}")))
                })
                .transpose()?,
        })
    }

    async fn dataplanes(
        &self,
        q: Q,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<DataPlaneRecord>> {
        let rows = self.query(q, params).await?;
        rows.iter().map(|row| self.dataplane(row)).collect()
    }

    /// [`DataPlaneStore::select_dataplane`] on the selection session: one transaction that
    /// locks every registration, so selections from every store sharing the database wait
    /// for each other.
    async fn select_many_on(
        &self,
        conn: &mut Conn,
        now: i64,
        count: usize,
        choose: &mut ChooserMany<'_>,
    ) -> Result<Vec<Option<DataPlaneRecord>>> {
        let lock_all = conn
            .statement(Q::LockDataPlanes)
            .await
            .map_err(|e| self.failed(conn, &e))?
            .clone();
        let take_turns = conn
            .statement(Q::TakeTurns)
            .await
            .map_err(|e| self.failed(conn, &e))?
            .clone();
        let broken = &conn.broken;
        let fail = |e: tokio_postgres::Error| {
            if e.is_closed() {
                broken.store(true, Ordering::Relaxed);
            }
            self.fail(&e)
        };
        // Dropped without a commit (an error, or a chooser that panics), it rolls back.
        let tx = conn.session.client.transaction().await.map_err(fail)?;
        let rows = tx.query(&lock_all, &[]).await.map_err(fail)?;
        let mut records = rows
            .iter()
            .map(|row| self.dataplane(row))
            .collect::<Result<Vec<_>>>()?;
        let mut picks = Vec::with_capacity(count);
        let mut taken = vec![0i64; records.len()];
        for i in 0..count {
            let pick = choose(i, &records).filter(|j| *j < records.len());
            if let Some(j) = pick {
                records[j].turn_count += 1;
                records[j].last_active_ms = Some(now);
                taken[j] += 1;
            }
            picks.push(pick);
        }
        if taken.iter().all(|n| *n == 0) {
            tx.rollback().await.map_err(fail)?;
            return Ok(vec![None; count]);
        }
        let mut stored = vec![None; records.len()];
        for (j, n) in taken.iter().enumerate().filter(|(_, n)| **n > 0) {
            let rows = tx
                .query(&take_turns, &[&records[j].id, n, &now])
                .await
                .map_err(fail)?;
            stored[j] = rows.first().map(|row| self.dataplane(row)).transpose()?;
        }
        tx.commit().await.map_err(fail)?;
        Ok(picks
            .into_iter()
            .map(|pick| pick.and_then(|j| stored[j].clone()))
            .collect())
    }
}

/// Where the store is, for messages: the URL with its password masked.
pub(crate) fn shown(url: &str) -> String {
    // As tokio-postgres reads it: user and password run up to the first `@`.
    let start = url.find("://").map_or(0, |i| i + 3);
    let masked = match url[start..].find('@') {
        Some(at) => match url[start..start + at].find(':') {
            Some(colon) => format!("{}{MASK}{}", &url[..=start + colon], &url[start + at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    redact(&masked)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// How long a statement may go unanswered, unless the URL says (`query_timeout`): a
/// session whose server went silent is given up after this rather than TCP's minutes.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// Where a store's sessions go and how: the session settings, the TLS connector, and how
/// long to wait for an answer.
pub(crate) struct Target {
    pub(crate) config: Config,
    tls: MakeRustlsConnect,
    /// How long one statement (or opening a session) may go unanswered.
    pub(crate) answer_within: Duration,
    /// What the store is, in messages ("the control store").
    store: &'static str,
}

impl Target {
    /// The error for a statement that was not answered in time.
    pub(crate) fn silent(&self, shown: &str) -> Error {
        Error::unreachable(
            shown,
            format!(
                "{} did not answer within {} s (query_timeout); the session is given up",
                self.store,
                self.answer_within.as_secs_f64()
            ),
        )
    }

    /// Runs `call` (statements on one session), giving up after [`Self::answer_within`].
    pub(crate) async fn answered<T>(
        &self,
        call: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::time::timeout(self.answer_within, call).await.ok()
    }
}

/// The session settings: the URL's, `PGPASSWORD` when it has no password, and ferry's own
/// parameters taken out: `sslmode` and `sslrootcert` (else `PGSSLMODE`, `PGSSLROOTCERT`)
/// and `query_timeout`. Errors name `flag`; `store` (e.g. "the control store") names the
/// store in messages.
pub(crate) fn parse_config(
    url: &str,
    shown: &str,
    flag: &str,
    store: &'static str,
) -> Result<Target> {
    let invalid = |reason: String| Error::invalid_option(flag, reason);
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(invalid(format!(
            "'{shown}': expected postgres://user@host:port/database"
        )));
    };
    // The query starts at the first `?` after the credentials (a password may hold one).
    let after_credentials = url.len() - rest.len() + rest.find('@').map_or(0, |i| i + 1);
    let (base, query) = match url[after_credentials..].find('?') {
        Some(i) => url.split_at(after_credentials + i),
        None => (url, ""),
    };
    let (mut sslmode, mut sslrootcert, mut answer_within) = (None, None, ANSWER_WITHIN);
    let mut kept = Vec::new();
    for pair in query.trim_start_matches('?').split('&') {
        let decoded = |v: &str| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        };
        match pair.split_once('=') {
            Some(("sslmode", mode)) => sslmode = Some(decoded(mode)),
            Some(("sslrootcert", path)) => sslrootcert = Some(decoded(path)),
            Some(("query_timeout", secs)) => {
                answer_within = secs
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        invalid(format!(
                            "'{shown}': query_timeout={secs}: expected a number of seconds above 0"
                        ))
                    })?;
            }
            _ if pair.is_empty() => {}
            _ => kept.push(pair),
        }
    }
    let tls = crate::tls::settings(sslmode.as_deref(), sslrootcert.as_deref())
        .map_err(|e| invalid(format!("'{shown}': {e}")))?;
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
        invalid(format!("'{shown}': {}", describe(&e, &Config::new())))
    })?;
    config.ssl_mode(tls.mode.ssl_mode());
    if config.get_password().is_none() {
        if let Some(password) = env("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("ferry");
    }
    // A peer that vanishes (host down, cable cut) is noticed by the kernel in about 20 s;
    // one that stays connected but silent is noticed by `answer_within`.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(3))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20));
    Ok(Target {
        config,
        tls: tls.connector,
        answer_within,
        store,
    })
}

/// An open session: its client, and the task that drives its connection, stopped when
/// the session is dropped (a silent server would otherwise keep it waiting forever).
pub(crate) struct Session {
    pub(crate) client: Client,
    connection: tokio::task::AbortHandle,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Opens a session; a server that does not answer (or is starting or stopping) is
/// unreachable, any other refusal (password, missing database, TLS) a state error.
pub(crate) async fn dial(target: &Target, shown: &str) -> Result<Session> {
    let config = &target.config;
    let connecting = config.connect(target.tls.clone());
    // tokio-postgres bounds the TCP connect only; the handshake and startup are bounded
    // here, like statements.
    let within = target.answer_within.max(Duration::from_secs(10));
    let Ok(connected) = tokio::time::timeout(within, connecting).await else {
        return Err(Error::unreachable(
            shown,
            format!(
                "{} did not answer within {} s while opening a session",
                target.store,
                within.as_secs_f64()
            ),
        ));
    };
    let (client, connection) = connected.map_err(|e| {
        let unreachable = match e.as_db_error() {
            // 08: connection exception; 57: operator intervention (starting up, shutdown).
            Some(db) => matches!(&db.code().code()[..2], "08" | "57"),
            None => e.is_closed() || (caused_by_io(&e) && !is_tls(&e)),
        };
        let detail = describe(&e, config);
        if unreachable {
            Error::unreachable(shown, detail)
        } else {
            Error::state(shown, detail)
        }
    })?;
    // The session ends with the connection; callers then see `is_closed` and reconnect.
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    })
    .abort_handle();
    Ok(Session { client, connection })
}

/// Whether `e` is a TLS failure (untrusted certificate, no TLS on the server), which
/// trying again will not mend.
fn is_tls(e: &tokio_postgres::Error) -> bool {
    e.to_string().contains("TLS")
}

fn caused_by_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

async fn create_schema(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
        .await?;
    tx.batch_execute(SCHEMA).await?;
    tx.commit().await
}

/// One line: PostgreSQL's message with its code, detail and hint, or the client error
/// with its causes; never the password.
pub(crate) fn describe(e: &tokio_postgres::Error, config: &Config) -> String {
    let mut text = match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            crate::tls::explain(&mut text);
            text
        }
    };
    // Neither the server nor the client quote it, but make sure; very short passwords
    // would mask random words, so they are left to the line above.
    if let Some(password) = config
        .get_password()
        .and_then(|p| std::str::from_utf8(p).ok())
    {
        if password.len() >= 6 {
            text = text.replace(password, MASK);
        }
    }
    text
}

fn text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[async_trait]
impl ControlStore for PostgresControlStore {
    async fn create_transfer(&self, t: &TransferRecord) -> Result<bool> {
        let n = self
            .execute(
                Q::CreateTransfer,
                &[
                    &t.name,
                    &t.uid,
                    &t.generation,
                    &text(&t.labels),
                    &text(&t.manifest),
                    &t.phase,
                    &text(&t.status),
                    &t.created_at,
                    &t.updated_at,
                    &t.next_due,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn get_transfer(&self, name: &str) -> Result<Option<TransferRecord>> {
        let rows = self.query(Q::GetTransfer, &[&name]).await?;
        rows.first().map(|row| self.transfer(row)).transpose()
    }

    async fn list_transfers(&self, filter: &TransferFilter) -> Result<Vec<TransferRecord>> {
        let labels = filter.labels_json();
        let rows = self
            .query(
                Q::ListTransfers,
                &[
                    &filter.phase,
                    &labels,
                    &filter.after,
                    &filter.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                ],
            )
            .await?;
        rows.iter().map(|row| self.transfer(row)).collect()
    }

    async fn replace_manifest(
        &self,
        name: &str,
        manifest: &Value,
        labels: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<Option<TransferRecord>> {
        let rows = self
            .query(
                Q::ReplaceManifest,
                &[&name, &text(manifest), &text(labels), &now],
            )
            .await?;
        rows.first().map(|row| self.transfer(row)).transpose()
    }

    async fn set_status(
        &self,
        name: &str,
        uid: &str,
        phase: &str,
        status: &Value,
        next_due: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .execute(
                Q::SetStatus,
                &[&name, &uid, &phase, &text(status), &now, &next_due],
            )
            .await?;
        Ok(n == 1)
    }

    async fn claim_schedule(
        &self,
        name: &str,
        uid: &str,
        due: i64,
        next_due: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .execute(Q::ClaimSchedule, &[&name, &uid, &due, &next_due, &now])
            .await?;
        Ok(n == 1)
    }

    async fn due_transfers(&self, now: i64) -> Result<Vec<TransferRecord>> {
        let rows = self.query(Q::DueTransfers, &[&now]).await?;
        rows.iter().map(|row| self.transfer(row)).collect()
    }

    async fn delete_transfer(&self, name: &str) -> Result<bool> {
        Ok(self.execute(Q::DeleteTransfer, &[&name]).await? == 1)
    }

    async fn put_run(&self, r: &RunRecord) -> Result<()> {
        self.execute(
            Q::PutRun,
            &[
                &r.id,
                &r.transfer,
                &r.transfer_uid,
                &r.generation,
                &r.phase,
                &r.trigger,
                &r.attempt,
                &r.scheduled_for,
                &r.not_before,
                &r.created_at,
                &r.started_at,
                &r.finished_at,
                &text(&r.stats),
                &r.error,
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>> {
        Ok(self.runs(Q::GetRun, &[&id]).await?.pop())
    }

    async fn list_runs(&self, transfer: &str) -> Result<Vec<RunRecord>> {
        self.runs(Q::ListRuns, &[&transfer]).await
    }

    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>> {
        self.runs(Q::UnfinishedRuns, &[]).await
    }

    async fn delete_runs(&self, ids: &[String]) -> Result<()> {
        if !ids.is_empty() {
            self.execute(Q::DeleteRuns, &[&ids]).await?;
        }
        Ok(())
    }

    async fn claim_run(
        &self,
        id: &str,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Option<RunRecord>> {
        Ok(self
            .runs(Q::ClaimRun, &[&id, &owner, &lease_until, &now])
            .await?
            .pop())
    }

    async fn hand_over_run(
        &self,
        id: &str,
        from: &str,
        to: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let n = self
            .execute(Q::HandOverRun, &[&id, &from, &to, &lease_until])
            .await?;
        Ok(n == 1)
    }

    async fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<u64> {
        self.execute(Q::RenewLeases, &[&owner, &lease_until]).await
    }

    async fn release_run(&self, id: &str, owner: &str) -> Result<()> {
        self.execute(Q::ReleaseRun, &[&id, &owner]).await?;
        Ok(())
    }

    async fn append_event(&self, e: &NewEvent) -> Result<EventRecord> {
        let rows = self
            .query(
                Q::AppendEvent,
                &[
                    &e.transfer,
                    &e.run,
                    &e.time,
                    &e.severity,
                    &e.reason,
                    &e.message,
                    &text(&e.data),
                    &EVENTS_LOCK,
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(Error::state(
                &self.shown,
                "appending an event returned no seq",
            ));
        };
        Ok(EventRecord {
            seq: self.get(row, 0)?,
            event: e.clone(),
        })
    }

    async fn append_events(&self, events: &[NewEvent]) -> Result<Vec<EventRecord>> {
        if events.len() < 2 {
            let mut appended = Vec::new();
            for e in events {
                appended.push(self.append_event(e).await?);
            }
            return Ok(appended);
        }
        let column = |f: fn(&NewEvent) -> &str| events.iter().map(f).collect::<Vec<&str>>();
        let runs: Vec<Option<&str>> = events.iter().map(|e| e.run.as_deref()).collect();
        let times: Vec<i64> = events.iter().map(|e| e.time).collect();
        let data: Vec<String> = events.iter().map(|e| text(&e.data)).collect();
        let rows = self
            .query(
                Q::AppendEvents,
                &[
                    &column(|e| &e.transfer),
                    &runs,
                    &times,
                    &column(|e| &e.severity),
                    &column(|e| &e.reason),
                    &column(|e| &e.message),
                    &data,
                    &EVENTS_LOCK,
                ],
            )
            .await?;
        let mut seqs = rows
            .iter()
            .map(|row| self.get::<i64>(row, 0))
            .collect::<Result<Vec<_>>>()?;
        if seqs.len() != events.len() {
            return Err(Error::state(
                &self.shown,
                "appending events returned fewer seqs than events",
            ));
        }
        seqs.sort_unstable();
        Ok(seqs
            .into_iter()
            .zip(events)
            .map(|(seq, e)| EventRecord {
                seq,
                event: e.clone(),
            })
            .collect())
    }

    async fn list_events(
        &self,
        transfer: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(Q::ListEvents, &[&transfer, &after, &limit])
            .await?;
        rows.iter()
            .map(|row| {
                Ok(EventRecord {
                    seq: self.get(row, 0)?,
                    event: NewEvent {
                        transfer: self.get(row, 1)?,
                        run: self.get(row, 2)?,
                        time: self.get(row, 3)?,
                        severity: self.get(row, 4)?,
                        reason: self.get(row, 5)?,
                        message: self.get(row, 6)?,
                        data: self.json(row, 7)?,
                    },
                })
            })
            .collect()
    }
}

#[async_trait]
impl DataPlaneStore for PostgresControlStore {
    async fn put_dataplane(&self, d: &DataPlaneRecord) -> Result<(DataPlaneRecord, bool)> {
        let load = d.load.as_ref().map(text);
        let rows = self
            .query(
                Q::PutDataPlane,
                &[
                    &d.id,
                    &d.registration,
                    &text(&d.document),
                    &d.state,
                    &d.turn_count,
                    &d.last_active_ms,
                    &d.heartbeat_ms,
                    &load,
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(Error::state(
                &self.shown,
                "storing a data plane returned no row",
            ));
        };
        let created: bool = self.get(row, 8)?;
        Ok((self.dataplane(row)?, !created))
    }

    async fn get_dataplane(&self, id: &str) -> Result<Option<DataPlaneRecord>> {
        Ok(self.dataplanes(Q::GetDataPlane, &[&id]).await?.pop())
    }

    async fn list_dataplanes(&self) -> Result<Vec<DataPlaneRecord>> {
        self.dataplanes(Q::ListDataPlanes, &[]).await
    }

    async fn delete_dataplane(
        &self,
        id: &str,
        registration: Option<&str>,
    ) -> Result<Option<DataPlaneRecord>> {
        Ok(self
            .dataplanes(Q::DeleteDataPlane, &[&id, &registration])
            .await?
            .pop())
    }

    async fn heartbeat_dataplane(
        &self,
        id: &str,
        load: &Value,
        now: i64,
    ) -> Result<Option<DataPlaneRecord>> {
        Ok(self
            .dataplanes(Q::HeartbeatDataPlane, &[&id, &text(load), &now, &AVAILABLE])
            .await?
            .pop())
    }

    async fn set_dataplane_state(&self, id: &str, state: &str) -> Result<Option<DataPlaneRecord>> {
        Ok(self
            .dataplanes(Q::SetDataPlaneState, &[&id, &state])
            .await?
            .pop())
    }

    async fn select_dataplane(
        &self,
        now: i64,
        choose: &mut Chooser<'_>,
    ) -> Result<Option<DataPlaneRecord>> {
        let mut one = |_: usize, records: &[DataPlaneRecord]| choose(records);
        Ok(self
            .select_dataplanes(now, 1, &mut one)
            .await?
            .pop()
            .flatten())
    }

    async fn select_dataplanes(
        &self,
        now: i64,
        count: usize,
        choose: &mut ChooserMany<'_>,
    ) -> Result<Vec<Option<DataPlaneRecord>>> {
        let mut slot = self.selecting.lock().await;
        if !slot.as_ref().is_some_and(Conn::usable) {
            *slot = None;
            *slot = Some(Conn::new(dial(&self.target, &self.shown).await?));
        }
        match slot.as_mut() {
            Some(conn) => {
                let selected = self
                    .target
                    .answered(self.select_many_on(conn, now, count, choose))
                    .await;
                selected.unwrap_or_else(|| {
                    conn.broken.store(true, Ordering::Relaxed);
                    Err(self.target.silent(&self.shown))
                })
            }
            None => Err(Error::Internal("the selection session is not open".into())),
        }
    }
}

impl PostgresControlStore {
    async fn documents(&self, q: Q, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<DocumentRecord>> {
        let rows = self.query(q, params).await?;
        rows.iter()
            .map(|row| {
                Ok(DocumentRecord {
                    kind: self.get(row, 0)?,
                    name: self.get(row, 1)?,
                    parent: self.get(row, 2)?,
                    active: self.get(row, 3)?,
                    version: self.get(row, 4)?,
                    document: self.json(row, 5)?,
                    updated_at: self.get(row, 6)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl DocumentStore for PostgresControlStore {
    async fn put_document(&self, d: &DocumentRecord, expected: Option<i64>) -> Result<Option<i64>> {
        let version = expected.unwrap_or(0) + 1;
        let document = text(&d.document);
        let n = match expected {
            None => {
                self.execute(
                    Q::InsertDocument,
                    &[
                        &d.kind,
                        &d.name,
                        &d.parent,
                        &d.active,
                        &version,
                        &document,
                        &d.updated_at,
                    ],
                )
                .await?
            }
            Some(expected) => {
                self.execute(
                    Q::UpdateDocument,
                    &[
                        &d.kind,
                        &d.name,
                        &d.parent,
                        &d.active,
                        &version,
                        &document,
                        &d.updated_at,
                        &expected,
                    ],
                )
                .await?
            }
        };
        Ok((n == 1).then_some(version))
    }

    async fn get_document(&self, kind: &str, name: &str) -> Result<Option<DocumentRecord>> {
        Ok(self.documents(Q::GetDocument, &[&kind, &name]).await?.pop())
    }

    async fn list_documents(
        &self,
        kind: &str,
        parent: Option<&str>,
        active_only: bool,
    ) -> Result<Vec<DocumentRecord>> {
        self.documents(Q::ListDocuments, &[&kind, &parent, &active_only])
            .await
    }

    async fn delete_document(&self, kind: &str, name: &str) -> Result<bool> {
        Ok(self.execute(Q::DeleteDocument, &[&kind, &name]).await? == 1)
    }

    async fn delete_documents(&self, kind: &str, parent: &str) -> Result<u64> {
        self.execute(Q::DeleteDocuments, &[&kind, &parent]).await
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio_postgres::config::SslMode;
    use tokio_postgres::NoTls;

    use super::*;
    use crate::control::conformance;
    use crate::test_net;

    /// The test server's URL (`FERRY_TEST_POSTGRES`, password in `PGPASSWORD`); `None`,
    /// after saying so, outside CI when it is not configured.
    fn server() -> Option<String> {
        let Ok(url) = std::env::var("FERRY_TEST_POSTGRES") else {
            let msg = "PostgreSQL test service not configured (FERRY_TEST_POSTGRES unset): \
                       run `scripts/services up` and `eval \"$(scripts/services env)\"`";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("skipping: {msg}");
            return None;
        };
        Some(url)
    }

    async fn admin(url: &str) -> Client {
        let mut config: Config = url.parse().unwrap();
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            }
        }
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// Runs `body` with the URL of a new, empty database, dropped afterwards even when
    /// `body` panics.
    async fn with_database<F, Fut>(body: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let Some(server) = server() else { return };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "ferry_ctl_{}_{nanos}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin(&server).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = &server[..server.rfind('/').unwrap()];
        let outcome = tokio::spawn(body(format!("{base}/{name}"))).await;
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .unwrap();
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    #[tokio::test]
    async fn conforms() {
        with_database(|url| async move {
            let store = PostgresControlStore::connect(&url).await.unwrap();
            conformance::all(&store).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_processes_take_data_plane_turns_together() {
        with_database(|url| async move {
            let (a, b) = tokio::join!(
                PostgresControlStore::connect(&url),
                PostgresControlStore::connect(&url)
            );
            conformance::shared_round_robin(Arc::new(a.unwrap()), Arc::new(b.unwrap())).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_racing_claims_from_two_processes_exactly_one_wins() {
        with_database(|url| async move {
            let (a, b) = tokio::join!(
                PostgresControlStore::connect(&url),
                PostgresControlStore::connect(&url)
            );
            let stores = [Arc::new(a.unwrap()), Arc::new(b.unwrap())];
            stores[0]
                .put_run(&conformance::run("race", "orders", 1))
                .await
                .unwrap();
            let claims: Vec<_> = (0..20)
                .map(|i| {
                    let store = Arc::clone(&stores[i % 2]);
                    tokio::spawn(async move {
                        let owner = format!("p{i}");
                        let won = store.claim_run("race", &owner, 10_000, 100).await.unwrap();
                        won.map(|run| (owner, run))
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for claim in claims {
                winners.extend(claim.await.unwrap());
            }
            assert_eq!(winners.len(), 1, "{winners:?}");
            let (owner, run) = &winners[0];
            assert_eq!(run.owner.as_ref(), Some(owner));
            let stored = stores[1].get_run("race").await.unwrap().unwrap();
            assert_eq!(stored.owner.as_ref(), Some(owner));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_get_distinct_growing_seqs() {
        with_database(|url| async move {
            let (a, b) = tokio::join!(
                PostgresControlStore::connect(&url),
                PostgresControlStore::connect(&url)
            );
            let stores = [Arc::new(a.unwrap()), Arc::new(b.unwrap())];
            let appends: Vec<_> = (0..40)
                .map(|i| {
                    let store = Arc::clone(&stores[i % 2]);
                    tokio::spawn(async move {
                        let event = NewEvent {
                            transfer: "orders".into(),
                            run: None,
                            time: i as i64,
                            severity: "Normal".into(),
                            reason: "Progress".into(),
                            message: format!("event {i}"),
                            data: serde_json::json!({"i": i}),
                        };
                        store.append_event(&event).await.unwrap().seq
                    })
                })
                .collect();
            let mut seqs = Vec::new();
            for append in appends {
                seqs.push(append.await.unwrap());
            }
            let listed = stores[0].list_events("orders", 0, 100).await.unwrap();
            let listed: Vec<i64> = listed.iter().map(|e| e.seq).collect();
            seqs.sort_unstable();
            assert_eq!(listed, seqs, "every append listed once, in seq order");
            assert!(listed.windows(2).all(|w| w[0] < w[1]));
        })
        .await;
    }

    #[tokio::test]
    async fn a_lost_session_is_reopened() {
        with_database(|url| async move {
            let store = PostgresControlStore::connect(&url).await.unwrap();
            assert!(store
                .create_transfer(&conformance::transfer("orders", "u1"))
                .await
                .unwrap());
            // Open every pooled session, then have the server end them all.
            for _ in 0..2 * POOL {
                store.get_transfer("orders").await.unwrap().unwrap();
            }
            let killer = admin(&url).await;
            let killed = killer
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'ferry'",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(killed.len(), POOL);
            // Calls that find a session gone may fail, but each session only once.
            let mut failures = 0;
            for _ in 0..3 * POOL {
                match store.get_transfer("orders").await {
                    Ok(got) => assert!(got.is_some()),
                    Err(e) => {
                        failures += 1;
                        assert!(failures <= POOL, "the store stays broken: {e}");
                    }
                }
            }
            for _ in 0..POOL {
                store.get_transfer("orders").await.unwrap().unwrap();
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_password_is_one_line_without_the_password() {
        with_database(|url| async move {
            let wrong = "not-the-password-7f3a";
            let url = url.replacen('@', &format!(":{wrong}@"), 1);
            let Err(e) = PostgresControlStore::connect(&url).await else {
                panic!("a wrong password is refused");
            };
            let text = e.to_string();
            assert!(!text.contains(wrong), "{text}");
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains("password authentication failed"), "{text}");
            assert!(text.contains(&format!(":{MASK}@")), "{text}");
        })
        .await;
    }

    #[tokio::test]
    async fn an_unanswered_connect_is_unreachable() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://ferry:secret-pass-91@127.0.0.1:{port}/ferry");
        let Err(e) = PostgresControlStore::connect(&url).await else {
            panic!("nothing listens on port {port}");
        };
        assert!(matches!(e, Error::Unreachable { .. }), "{e}");
        assert!(!e.to_string().contains("secret-pass-91"), "{e}");
    }

    #[tokio::test]
    async fn bad_tls_settings_and_other_addresses_are_refused_before_connecting() {
        let Err(e) = PostgresControlStore::connect("mysql://ferry@db/x").await else {
            panic!("only postgres:// URLs");
        };
        assert!(matches!(e, Error::InvalidOption { .. }), "{e}");
        let Err(e) = PostgresControlStore::connect("postgres://db/x?sslmode=sometimes").await
        else {
            panic!("an unknown sslmode is refused");
        };
        assert!(e.to_string().contains("unknown sslmode 'sometimes'"), "{e}");
        let url =
            "postgres://ferry:pw-123456@db.invalid/x?sslmode=verify-full&sslrootcert=/no/ca.pem";
        let Err(e) = PostgresControlStore::connect(url).await else {
            panic!("a missing sslrootcert is refused");
        };
        let text = e.to_string();
        assert!(text.contains("sslrootcert /no/ca.pem"), "{text}");
        assert!(
            text.contains("--store") && !text.contains("pw-123456"),
            "{text}"
        );
        let Err(e) = PostgresControlStore::connect("postgres://db/x?query_timeout=0").await else {
            panic!("a zero query_timeout is refused");
        };
        assert!(e.to_string().contains("query_timeout=0"), "{e}");
    }

    /// Whether the server sees the store's sessions as encrypted.
    async fn encrypted(store: &PostgresControlStore) -> bool {
        let conn = store.conn().await.unwrap();
        let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
        conn.session
            .client
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn sessions_are_encrypted_as_sslmode_says() {
        with_database(|url| async move {
            let ca = test_net::ca();
            for (i, (query, tls)) in [
                (format!("sslmode=verify-full&sslrootcert={ca}"), true),
                (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
                ("sslmode=require".to_string(), true),
                ("sslmode=disable".to_string(), false),
            ]
            .into_iter()
            .enumerate()
            {
                let store = PostgresControlStore::connect(&format!("{url}?{query}"))
                    .await
                    .unwrap_or_else(|e| panic!("{query}: {e}"));
                assert_eq!(encrypted(&store).await, tls, "{query}");
                let name = format!("t{i}");
                assert!(store
                    .create_transfer(&conformance::transfer(&name, "u1"))
                    .await
                    .unwrap());
                assert!(store.get_transfer(&name).await.unwrap().is_some());
            }
        })
        .await;
    }

    #[tokio::test]
    async fn verify_full_without_the_ca_is_refused_in_one_line() {
        let Some(server) = server() else { return };
        let Err(e) = PostgresControlStore::connect(&format!("{server}?sslmode=verify-full")).await
        else {
            panic!("the test CA is not among the system's roots");
        };
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains(&shown(&server)), "{text}");
        assert!(text.contains("sslrootcert"), "{text}");
        if !matches!(e, Error::InvalidOption { .. }) {
            // The machine has system roots: the handshake fails on the certificate.
            assert!(matches!(e, Error::State { .. }), "{text}");
            assert!(text.contains("not signed by a trusted CA"), "{text}");
        }
    }

    #[tokio::test]
    async fn require_against_a_server_without_tls_says_so() {
        let port = test_net::plain_server();
        let url = format!("postgres://ferry:pw-123456@127.0.0.1:{port}/ferry?sslmode=require");
        let Err(e) = PostgresControlStore::connect(&url).await else {
            panic!("the server has no TLS");
        };
        let text = e.to_string();
        assert!(text.contains("server does not support TLS"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(
            !text.contains("pw-123456") && !text.contains('\n'),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_fails_calls_within_the_timeout() {
        with_database(|url| async move {
            let (user, upstream, db) = test_net::parts(&url);
            let proxy = test_net::Proxy::start(&upstream);
            let port = proxy.port;
            let url = format!("postgres://{user}@127.0.0.1:{port}/{db}?query_timeout=2");
            let store = PostgresControlStore::connect(&url).await.unwrap();
            assert!(store
                .create_transfer(&conformance::transfer("orders", "u1"))
                .await
                .unwrap());
            // Every pooled session open, so the next call goes to one that is.
            for _ in 0..2 * POOL {
                store.get_transfer("orders").await.unwrap().unwrap();
            }
            proxy.silence();
            let started = std::time::Instant::now();
            let Err(e) = store.get_transfer("orders").await else {
                panic!("the server is silent");
            };
            let text = e.to_string();
            assert!(matches!(e, Error::Unreachable { .. }), "{text}");
            assert!(
                text.contains("the control store did not answer within 2 s"),
                "{text}"
            );
            assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
            // Other sessions, and new ones, are not answered either.
            for _ in 0..2 {
                let Err(e) = store.get_transfer("orders").await else {
                    panic!("the server is silent");
                };
                assert!(e.to_string().contains("did not answer within"), "{e}");
            }
            assert!(started.elapsed() < Duration::from_secs(30));
        })
        .await;
    }

    #[test]
    fn the_shown_url_has_no_password() {
        assert_eq!(
            shown("postgres://app:s3cr%40t@db:5432/shop?sslmode=disable"),
            "postgres://app:***@db:5432/shop?sslmode=disable"
        );
        assert_eq!(shown("postgres://app@db/shop"), "postgres://app@db/shop");
        assert_eq!(
            shown("postgres://app@db/shop?password=hunter22"),
            "postgres://app@db/shop?password=***"
        );
    }

    #[test]
    fn ferrys_parameters_are_taken_out_and_the_rest_kept() {
        let target = parse_config(
            "postgres://app:pw?x@db:5432/shop?sslmode=require&application_name=tool&query_timeout=2.5",
            "shown",
            "--store",
            "the control store",
        )
        .unwrap();
        let config = &target.config;
        assert_eq!(config.get_password(), Some(&b"pw?x"[..]));
        assert_eq!(config.get_dbname(), Some("shop"));
        assert_eq!(config.get_application_name(), Some("tool"));
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(target.answer_within, Duration::from_millis(2500));
        assert!(config.get_keepalives());
    }
}
