//! [`ControlStore`] in an embedded SQLite file: one server, no setup.
//!
//! Statements are short (one row, indexed), so they run on the caller's thread under one
//! lock; WAL with `synchronous=NORMAL` makes each commit durable against a process crash
//! without an fsync per request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use ferry_core::{Error, Result};
use rusqlite::{params, Connection, Row};
use serde_json::Value;

use super::dataplanes::{Chooser, DataPlaneRecord, DataPlaneStore, AVAILABLE};
use super::documents::{DocumentRecord, DocumentStore};
use super::{ControlStore, EventRecord, NewEvent, RunRecord, TransferFilter, TransferRecord};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS transfers (
    name        TEXT PRIMARY KEY,
    uid         TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    labels      TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    phase       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    next_due    INTEGER
);
CREATE INDEX IF NOT EXISTS transfers_due ON transfers (next_due) WHERE next_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS runs (
    id            TEXT PRIMARY KEY,
    transfer      TEXT NOT NULL,
    transfer_uid  TEXT NOT NULL,
    generation    INTEGER NOT NULL,
    phase         TEXT NOT NULL,
    trigger_kind  TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    scheduled_for INTEGER,
    not_before    INTEGER,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    owner         TEXT,
    lease_until   INTEGER,
    stats         TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_transfer ON runs (transfer, created_at);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (finished_at, created_at);
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer  TEXT NOT NULL,
    run       TEXT,
    time      INTEGER NOT NULL,
    severity  TEXT NOT NULL,
    reason    TEXT NOT NULL,
    message   TEXT NOT NULL,
    data      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_transfer ON events (transfer, seq);
CREATE TABLE IF NOT EXISTS ferry_dataplanes (
    id              TEXT PRIMARY KEY,
    registration    TEXT,
    document        TEXT NOT NULL,
    state           TEXT NOT NULL,
    turn_count      INTEGER NOT NULL,
    last_active_ms  INTEGER,
    heartbeat_ms    INTEGER,
    load            TEXT
);
CREATE TABLE IF NOT EXISTS ferry_documents (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    parent      TEXT,
    active      INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    document    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX IF NOT EXISTS documents_by_parent ON ferry_documents (kind, parent, name);
";

const RUN_COLUMNS: &str = "id, transfer, transfer_uid, generation, phase, trigger_kind, attempt, \
     scheduled_for, not_before, created_at, started_at, finished_at, owner, lease_until, stats, error";

const TRANSFER_COLUMNS: &str =
    "name, uid, generation, labels, manifest, phase, status, created_at, updated_at, next_due";

const DATAPLANE_COLUMNS: &str =
    "id, registration, document, state, turn_count, last_active_ms, heartbeat_ms, load";

/// Connections that only read, so listings never wait for a write (WAL lets readers and
/// the writer work at once).
const READERS: usize = 2;

pub struct SqliteControlStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl SqliteControlStore {
    /// Opens (creating if needed) `dir/control.db`.
    pub fn open(dir: &Path) -> Result<Self> {
        let shown = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| Error::state(&shown, e))?;
        let path = dir.join("control.db");
        let conn = Connection::open(&path).map_err(|e| Error::state(&shown, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .and_then(|()| {
                conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            })
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| Error::state(&shown, e))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let reader = Connection::open_with_flags(&path, flags)
                .and_then(|r| {
                    r.busy_timeout(std::time::Duration::from_secs(10))
                        .map(|()| r)
                })
                .map_err(|e| Error::state(&shown, e))?;
            readers.push(Mutex::new(reader));
        }
        Ok(Self {
            path,
            conn: Mutex::new(conn),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free reading connection, else the next one in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for r in &self.readers {
            if let Ok(guard) = r.try_lock() {
                return guard;
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, e: impl std::fmt::Display) -> Error {
        Error::state(self.path.display(), e)
    }

    /// Reads rows on a reading connection; the caller decodes their JSON after the
    /// connection is free again.
    fn fetch<T>(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.fail(e))?;
        let rows = stmt.query_map(args, row).map_err(|e| self.fail(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.fail(e))
    }

    fn transfer_where(
        &self,
        clause: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<TransferRecord>> {
        let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers {clause}");
        let rows = self.fetch(&sql, args, transfer_row)?;
        rows.into_iter()
            .map(|(mut t, [labels, manifest, status])| {
                t.labels = serde_json::from_str(&labels).map_err(|e| self.fail(e))?;
                t.manifest = self.parse(&manifest)?;
                t.status = self.parse(&status)?;
                Ok(t)
            })
            .collect()
    }

    fn run_where(&self, clause: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<RunRecord>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs {clause}");
        let rows = self.fetch(&sql, args, run_row)?;
        rows.into_iter()
            .map(|(mut r, stats)| {
                r.stats = self.parse(&stats)?;
                Ok(r)
            })
            .collect()
    }

    fn parse(&self, text: &str) -> Result<Value> {
        serde_json::from_str(text).map_err(|e| self.fail(e))
    }

    fn dataplane_where(
        &self,
        clause: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<DataPlaneRecord>> {
        let sql = format!("SELECT {DATAPLANE_COLUMNS} FROM ferry_dataplanes {clause}");
        let rows = self.fetch(&sql, args, dataplane_row)?;
        self.dataplanes(rows)
    }

    fn dataplanes(&self, rows: Vec<DataPlaneRow>) -> Result<Vec<DataPlaneRecord>> {
        rows.into_iter()
            .map(|(mut d, document, load)| {
                d.document = self.parse(&document)?;
                d.load = load.map(|l| self.parse(&l)).transpose()?;
                Ok(d)
            })
            .collect()
    }

    /// Runs one statement on the writing connection that returns data plane rows.
    fn change_dataplane(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Option<DataPlaneRecord>> {
        let rows = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(sql).map_err(|e| self.fail(e))?;
            let rows = stmt
                .query_map(args, dataplane_row)
                .map_err(|e| self.fail(e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| self.fail(e))?
        };
        Ok(self.dataplanes(rows)?.pop())
    }
}

/// A transfer row, its JSON columns (labels, manifest, status) still text.
fn transfer_row(r: &Row<'_>) -> rusqlite::Result<(TransferRecord, [String; 3])> {
    let record = TransferRecord {
        name: r.get(0)?,
        uid: r.get(1)?,
        generation: r.get(2)?,
        labels: BTreeMap::new(),
        manifest: Value::Null,
        phase: r.get(5)?,
        status: Value::Null,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        next_due: r.get(9)?,
    };
    Ok((record, [r.get(3)?, r.get(4)?, r.get(6)?]))
}

/// A run row, its stats still text.
fn run_row(r: &Row<'_>) -> rusqlite::Result<(RunRecord, String)> {
    let record = RunRecord {
        id: r.get(0)?,
        transfer: r.get(1)?,
        transfer_uid: r.get(2)?,
        generation: r.get(3)?,
        phase: r.get(4)?,
        trigger: r.get(5)?,
        attempt: r.get(6)?,
        scheduled_for: r.get(7)?,
        not_before: r.get(8)?,
        created_at: r.get(9)?,
        started_at: r.get(10)?,
        finished_at: r.get(11)?,
        owner: r.get(12)?,
        lease_until: r.get(13)?,
        stats: Value::Null,
        error: r.get(15)?,
    };
    Ok((record, r.get(14)?))
}

/// A data plane row, its document and load still text.
type DataPlaneRow = (DataPlaneRecord, String, Option<String>);

fn dataplane_row(r: &Row<'_>) -> rusqlite::Result<DataPlaneRow> {
    let record = DataPlaneRecord {
        id: r.get(0)?,
        registration: r.get(1)?,
        document: Value::Null,
        state: r.get(3)?,
        turn_count: r.get(4)?,
        last_active_ms: r.get(5)?,
        heartbeat_ms: r.get(6)?,
        load: None,
    };
    Ok((record, r.get(2)?, r.get(7)?))
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[async_trait]
impl ControlStore for SqliteControlStore {
    async fn create_transfer(&self, t: &TransferRecord) -> Result<bool> {
        let n = self
            .conn()
            .prepare_cached(&format!(
                "INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(name) DO NOTHING"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    t.name,
                    t.uid,
                    t.generation,
                    json(&t.labels),
                    json(&t.manifest),
                    t.phase,
                    json(&t.status),
                    t.created_at,
                    t.updated_at,
                    t.next_due
                ])
            })
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn get_transfer(&self, name: &str) -> Result<Option<TransferRecord>> {
        Ok(self.transfer_where("WHERE name = ?1", &[&name])?.pop())
    }

    async fn list_transfers(&self, filter: &TransferFilter) -> Result<Vec<TransferRecord>> {
        // Every wanted label must be among the transfer's, key and value alike.
        self.transfer_where(
            "WHERE (?1 IS NULL OR phase = ?1)
               AND (?2 IS NULL OR NOT EXISTS (
                   SELECT 1 FROM json_each(?2) AS want WHERE NOT EXISTS (
                       SELECT 1 FROM json_each(transfers.labels) AS have
                       WHERE have.key = want.key AND have.value = want.value)))
               AND (?3 IS NULL OR name > ?3)
             ORDER BY name LIMIT ?4",
            &[
                &filter.phase,
                &filter.labels_json(),
                &filter.after,
                // A negative limit is none.
                &filter
                    .limit
                    .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            ],
        )
    }

    async fn replace_manifest(
        &self,
        name: &str,
        manifest: &Value,
        labels: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<Option<TransferRecord>> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE transfers SET manifest = ?2, labels = ?3, generation = generation + 1,
                 updated_at = ?4 WHERE name = ?1",
            )
            .and_then(|mut s| s.execute(params![name, json(manifest), json(labels), now]))
            .map_err(|e| self.fail(e))?;
        if n == 0 {
            return Ok(None);
        }
        self.get_transfer(name).await
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
            .conn()
            .prepare_cached(
                "UPDATE transfers SET phase = ?3, status = ?4, updated_at = ?5, next_due = ?6
                 WHERE name = ?1 AND uid = ?2 AND updated_at <= ?5",
            )
            .and_then(|mut s| s.execute(params![name, uid, phase, json(status), now, next_due]))
            .map_err(|e| self.fail(e))?;
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
            .conn()
            .prepare_cached(
                "UPDATE transfers SET next_due = ?4, updated_at = MAX(updated_at, ?5)
                 WHERE name = ?1 AND uid = ?2 AND next_due = ?3",
            )
            .and_then(|mut s| s.execute(params![name, uid, due, next_due, now]))
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn due_transfers(&self, now: i64) -> Result<Vec<TransferRecord>> {
        self.transfer_where(
            "WHERE next_due IS NOT NULL AND next_due <= ?1 ORDER BY name",
            &[&now],
        )
    }

    async fn delete_transfer(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.fail(e))?;
        tx.execute("DELETE FROM events WHERE transfer = ?1", [name])
            .and_then(|_| tx.execute("DELETE FROM runs WHERE transfer = ?1", [name]))
            .map_err(|e| self.fail(e))?;
        let n = tx
            .execute("DELETE FROM transfers WHERE name = ?1", [name])
            .map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn put_run(&self, r: &RunRecord) -> Result<()> {
        self.conn()
            .prepare_cached(&format!(
                "INSERT INTO runs ({RUN_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, NULL, ?13, ?14)
                 ON CONFLICT(id) DO UPDATE SET phase = ?5, trigger_kind = ?6, attempt = ?7,
                   scheduled_for = ?8, not_before = ?9, started_at = ?11, finished_at = ?12,
                   stats = ?13, error = ?14"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    r.id,
                    r.transfer,
                    r.transfer_uid,
                    r.generation,
                    r.phase,
                    r.trigger,
                    r.attempt,
                    r.scheduled_for,
                    r.not_before,
                    r.created_at,
                    r.started_at,
                    r.finished_at,
                    json(&r.stats),
                    r.error
                ])
            })
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>> {
        Ok(self.run_where("WHERE id = ?1", &[&id])?.pop())
    }

    async fn list_runs(&self, transfer: &str) -> Result<Vec<RunRecord>> {
        self.run_where(
            "WHERE transfer = ?1 ORDER BY created_at DESC, id DESC",
            &[&transfer],
        )
    }

    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>> {
        self.run_where("WHERE finished_at IS NULL ORDER BY created_at, id", &[])
    }

    async fn delete_runs(&self, ids: &[String]) -> Result<()> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("DELETE FROM runs WHERE id = ?1")
            .map_err(|e| self.fail(e))?;
        for id in ids {
            stmt.execute([id]).map_err(|e| self.fail(e))?;
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
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE runs SET owner = ?2, lease_until = ?3
                 WHERE id = ?1 AND finished_at IS NULL
                   AND (owner IS NULL OR owner = ?2 OR lease_until < ?4)",
            )
            .and_then(|mut s| s.execute(params![id, owner, lease_until, now]))
            .map_err(|e| self.fail(e))?;
        if n == 0 {
            return Ok(None);
        }
        self.get_run(id).await
    }

    async fn hand_over_run(
        &self,
        id: &str,
        from: &str,
        to: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE runs SET owner = ?3, lease_until = ?4
                 WHERE id = ?1 AND owner = ?2 AND finished_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![id, from, to, lease_until]))
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<u64> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE runs SET lease_until = ?2 WHERE owner = ?1 AND finished_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![owner, lease_until]))
            .map_err(|e| self.fail(e))?;
        Ok(n as u64)
    }

    async fn release_run(&self, id: &str, owner: &str) -> Result<()> {
        self.conn()
            .prepare_cached(
                "UPDATE runs SET owner = NULL, lease_until = NULL WHERE id = ?1 AND owner = ?2",
            )
            .and_then(|mut s| s.execute(params![id, owner]))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn append_event(&self, e: &NewEvent) -> Result<EventRecord> {
        let conn = self.conn();
        let seq = conn
            .prepare_cached(
                "INSERT INTO events (transfer, run, time, severity, reason, message, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING seq",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![
                        e.transfer,
                        e.run,
                        e.time,
                        e.severity,
                        e.reason,
                        e.message,
                        json(&e.data)
                    ],
                    |r| r.get(0),
                )
            })
            .map_err(|e| self.fail(e))?;
        Ok(EventRecord {
            seq,
            event: e.clone(),
        })
    }

    async fn list_events(
        &self,
        transfer: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        let rows = self.fetch(
            "SELECT seq, transfer, run, time, severity, reason, message, data FROM events
             WHERE transfer = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            &[&transfer, &after, &(limit as i64)],
            |r| {
                let event = NewEvent {
                    transfer: r.get(1)?,
                    run: r.get(2)?,
                    time: r.get(3)?,
                    severity: r.get(4)?,
                    reason: r.get(5)?,
                    message: r.get(6)?,
                    data: Value::Null,
                };
                Ok((r.get::<_, i64>(0)?, event, r.get::<_, String>(7)?))
            },
        )?;
        rows.into_iter()
            .map(|(seq, mut event, data)| {
                event.data = self.parse(&data)?;
                Ok(EventRecord { seq, event })
            })
            .collect()
    }
}

#[async_trait]
impl DataPlaneStore for SqliteControlStore {
    async fn put_dataplane(&self, d: &DataPlaneRecord) -> Result<(DataPlaneRecord, bool)> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.fail(e))?;
        let replaced = tx
            .prepare_cached("SELECT 1 FROM ferry_dataplanes WHERE id = ?1")
            .and_then(|mut s| s.exists([&d.id]))
            .map_err(|e| self.fail(e))?;
        let row = tx
            .prepare_cached(&format!(
                "INSERT INTO ferry_dataplanes ({DATAPLANE_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET registration = ?2, document = ?3, state = ?4,
                   heartbeat_ms = ?7, load = ?8
                 RETURNING {DATAPLANE_COLUMNS}"
            ))
            .and_then(|mut s| {
                s.query_row(
                    params![
                        d.id,
                        d.registration,
                        json(&d.document),
                        d.state,
                        d.turn_count,
                        d.last_active_ms,
                        d.heartbeat_ms,
                        d.load.as_ref().map(json)
                    ],
                    dataplane_row,
                )
            })
            .map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))?;
        drop(conn);
        let stored = self.dataplanes(vec![row])?.pop();
        let stored = stored.ok_or_else(|| self.fail("storing a data plane returned no row"))?;
        Ok((stored, replaced))
    }

    async fn get_dataplane(&self, id: &str) -> Result<Option<DataPlaneRecord>> {
        Ok(self.dataplane_where("WHERE id = ?1", &[&id])?.pop())
    }

    async fn list_dataplanes(&self) -> Result<Vec<DataPlaneRecord>> {
        self.dataplane_where("ORDER BY id", &[])
    }

    async fn delete_dataplane(
        &self,
        id: &str,
        registration: Option<&str>,
    ) -> Result<Option<DataPlaneRecord>> {
        self.change_dataplane(
            &format!(
                "DELETE FROM ferry_dataplanes WHERE id = ?1 AND (?2 IS NULL OR registration = ?2)
                 RETURNING {DATAPLANE_COLUMNS}"
            ),
            &[&id, &registration],
        )
    }

    async fn heartbeat_dataplane(
        &self,
        id: &str,
        load: &Value,
        now: i64,
    ) -> Result<Option<DataPlaneRecord>> {
        self.change_dataplane(
            &format!(
                "UPDATE ferry_dataplanes SET load = ?2, heartbeat_ms = ?3, state = ?4 WHERE id = ?1
                 RETURNING {DATAPLANE_COLUMNS}"
            ),
            &[&id, &json(load), &now, &AVAILABLE],
        )
    }

    async fn set_dataplane_state(&self, id: &str, state: &str) -> Result<Option<DataPlaneRecord>> {
        self.change_dataplane(
            &format!(
                "UPDATE ferry_dataplanes SET state = ?2 WHERE id = ?1 RETURNING {DATAPLANE_COLUMNS}"
            ),
            &[&id, &state],
        )
    }

    async fn select_dataplane(
        &self,
        now: i64,
        choose: &mut Chooser<'_>,
    ) -> Result<Option<DataPlaneRecord>> {
        // An immediate transaction takes the database's write lock before reading, so other
        // processes on the same file wait until the turn is counted.
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.fail(e))?;
        let rows = tx
            .prepare_cached(&format!(
                "SELECT {DATAPLANE_COLUMNS} FROM ferry_dataplanes ORDER BY id"
            ))
            .and_then(|mut s| {
                s.query_map([], dataplane_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.fail(e))?;
        let records = self.dataplanes(rows)?;
        let Some(chosen) = choose(&records).and_then(|i| records.get(i)) else {
            return Ok(None);
        };
        let row = tx
            .prepare_cached(&format!(
                "UPDATE ferry_dataplanes SET turn_count = turn_count + 1, last_active_ms = ?2
                 WHERE id = ?1 RETURNING {DATAPLANE_COLUMNS}"
            ))
            .and_then(|mut s| s.query_row(params![chosen.id, now], dataplane_row))
            .map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))?;
        drop(conn);
        Ok(self.dataplanes(vec![row])?.pop())
    }
}

const DOCUMENT_COLUMNS: &str = "kind, name, parent, active, version, document, updated_at";

fn document_row(r: &Row<'_>) -> rusqlite::Result<(DocumentRecord, String)> {
    let record = DocumentRecord {
        kind: r.get(0)?,
        name: r.get(1)?,
        parent: r.get(2)?,
        active: r.get(3)?,
        version: r.get(4)?,
        document: Value::Null,
        updated_at: r.get(6)?,
    };
    Ok((record, r.get(5)?))
}

impl SqliteControlStore {
    fn document_where(
        &self,
        clause: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<DocumentRecord>> {
        let sql = format!("SELECT {DOCUMENT_COLUMNS} FROM ferry_documents {clause}");
        let rows = self.fetch(&sql, args, document_row)?;
        rows.into_iter()
            .map(|(mut d, document)| {
                d.document = self.parse(&document)?;
                Ok(d)
            })
            .collect()
    }
}

#[async_trait]
impl DocumentStore for SqliteControlStore {
    async fn put_document(&self, d: &DocumentRecord, expected: Option<i64>) -> Result<Option<i64>> {
        let version = expected.unwrap_or(0) + 1;
        let args = params![
            d.kind,
            d.name,
            d.parent,
            d.active,
            version,
            json(&d.document),
            d.updated_at,
            expected
        ];
        let sql = match expected {
            None => format!(
                "INSERT INTO ferry_documents ({DOCUMENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(kind, name) DO NOTHING"
            ),
            Some(_) => "UPDATE ferry_documents SET parent = ?3, active = ?4, version = ?5,
                   document = ?6, updated_at = ?7
                 WHERE kind = ?1 AND name = ?2 AND version = ?8"
                .to_string(),
        };
        // The INSERT has no ?8.
        let n = match expected {
            None => self.conn().execute(&sql, &args[..7]),
            Some(_) => self.conn().execute(&sql, args),
        }
        .map_err(|e| self.fail(e))?;
        Ok((n == 1).then_some(version))
    }

    async fn get_document(&self, kind: &str, name: &str) -> Result<Option<DocumentRecord>> {
        Ok(self
            .document_where("WHERE kind = ?1 AND name = ?2", &[&kind, &name])?
            .pop())
    }

    async fn list_documents(
        &self,
        kind: &str,
        parent: Option<&str>,
        active_only: bool,
    ) -> Result<Vec<DocumentRecord>> {
        self.document_where(
            "WHERE kind = ?1 AND (?2 IS NULL OR parent = ?2) AND (?3 = 0 OR active = 1)
             ORDER BY name",
            &[&kind, &parent, &active_only],
        )
    }

    async fn delete_document(&self, kind: &str, name: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM ferry_documents WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
            .map_err(|e| self.fail(e))?;
        Ok(n == 1)
    }

    async fn delete_documents(&self, kind: &str, parent: &str) -> Result<u64> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM ferry_documents WHERE kind = ?1 AND parent = ?2",
                params![kind, parent],
            )
            .map_err(|e| self.fail(e))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::conformance;
    use super::SqliteControlStore;

    #[tokio::test]
    async fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteControlStore::open(dir.path()).unwrap();
        conformance::all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_handles_on_one_file_take_turns_together() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(SqliteControlStore::open(dir.path()).unwrap());
        let b = Arc::new(SqliteControlStore::open(dir.path()).unwrap());
        conformance::shared_round_robin(a, b).await;
    }
}
