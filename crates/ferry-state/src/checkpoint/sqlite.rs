//! Checkpoints in an embedded SQLite database, `ferry.db` in the state directory.
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a commit is durable against a
//! process crash (`kill -9`) and costs no fsync; after a power loss the newest commits may
//! be missing, which only means some finished work is done again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ferry_core::{Error, PartToken, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{now, FileCheckpoint, UploadCheckpoint};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    status      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    run_id          TEXT NOT NULL,
    key             TEXT NOT NULL,
    source_size     INTEGER NOT NULL,
    source_version  TEXT,
    done            INTEGER NOT NULL,
    upload_id       TEXT,
    part_size       INTEGER,
    checksum        TEXT,
    dest_version    TEXT,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS parts (
    run_id   TEXT NOT NULL,
    key      TEXT NOT NULL,
    idx      INTEGER NOT NULL,
    token    TEXT NOT NULL,
    checksum TEXT,
    PRIMARY KEY (run_id, key, idx)
);
";

/// The checkpoint database in a state directory.
pub(super) struct SqliteCheckpoints {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteCheckpoints {
    /// Opens (creating if needed) `dir/ferry.db`.
    pub(super) fn open(dir: &Path) -> Result<Self> {
        let shown = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| Error::state(&shown, e))?;
        let path = dir.join("ferry.db");
        // Processes opening the same directory at once (partitions of one transfer) take
        // turns: switching a new database to WAL is not covered by the busy timeout.
        let opening = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("ferry.db.open"))
            .map_err(|e| Error::state(&shown, e))?;
        opening.lock().map_err(|e| Error::state(&shown, e))?;
        let conn = Connection::open(&path).map_err(|e| Error::state(&shown, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| Error::state(&shown, e))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| Error::state(&shown, e))?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolls back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, e: rusqlite::Error) -> Error {
        Error::state(self.path.display(), e)
    }

    /// Records that run `id` copies `source` to `destination`; keeps its progress if known.
    pub(super) fn start_run(&self, id: &str, source: &str, destination: &str) -> Result<()> {
        let t = now();
        self.conn()
            .execute(
                "INSERT INTO runs (id, source, destination, created_at, updated_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?4, 'running')
                 ON CONFLICT(id) DO UPDATE SET updated_at = ?4, status = 'running'",
                params![id, source, destination, t],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub(super) fn finish_run(&self, id: &str, status: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE runs SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, status, now()],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Everything the checkpoint holds for run `id`, by file key.
    pub(super) fn files(&self, id: &str) -> Result<BTreeMap<String, FileCheckpoint>> {
        self.files_where(id, "", &[])
    }

    /// What the checkpoint holds for the files `keys` of run `id`.
    pub(super) fn files_for(
        &self,
        id: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, FileCheckpoint>> {
        // Numbered from ?2: ?1 is the run.
        let list = (0..keys.len())
            .map(|i| format!("?{}", i + 2))
            .collect::<Vec<_>>()
            .join(",");
        let values: Vec<&dyn rusqlite::ToSql> =
            keys.iter().map(|k| k as &dyn rusqlite::ToSql).collect();
        self.files_where(id, &format!("AND key IN ({list})"), &values)
    }

    /// The files of run `id` with an upload in parts started and not finished.
    pub(super) fn uploading(&self, id: &str) -> Result<BTreeMap<String, FileCheckpoint>> {
        self.files_where(id, "AND upload_id IS NOT NULL", &[])
    }

    /// The files of run `id` that `filter` (an SQL condition on `key` and the columns of
    /// `files`, with parameters from `?2`) selects, with their parts.
    fn files_where(
        &self,
        id: &str,
        filter: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> Result<BTreeMap<String, FileCheckpoint>> {
        let conn = self.conn();
        let mut out = BTreeMap::new();
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&id];
        args.extend_from_slice(values);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT key, source_size, source_version, done, upload_id, part_size, checksum, dest_version
                 FROM files WHERE run_id = ?1 {filter}"
            ))
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(args.as_slice(), |r| {
                let upload_id: Option<String> = r.get(4)?;
                let part_size: Option<i64> = r.get(5)?;
                Ok((
                    r.get::<_, String>(0)?,
                    FileCheckpoint {
                        source_size: r.get::<_, i64>(1)? as u64,
                        source_version: r.get(2)?,
                        done: r.get::<_, i64>(3)? != 0,
                        upload: upload_id.map(|upload_id| UploadCheckpoint {
                            upload_id,
                            part_size: part_size.unwrap_or_default() as u64,
                            parts: BTreeMap::new(),
                        }),
                        checksum: r.get(6)?,
                        dest_version: r.get(7)?,
                    },
                ))
            })
            .map_err(|e| self.fail(e))?;
        for row in rows {
            let (key, file) = row.map_err(|e| self.fail(e))?;
            out.insert(key, file);
        }
        // Only files with an upload have parts; read those files' parts alone.
        let mut parts = conn
            .prepare("SELECT idx, token, checksum FROM parts WHERE run_id = ?1 AND key = ?2")
            .map_err(|e| self.fail(e))?;
        for (key, file) in out.iter_mut() {
            let Some(upload) = file.upload.as_mut() else {
                continue;
            };
            let rows = parts
                .query_map(params![id, key], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as usize,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
                .map_err(|e| self.fail(e))?;
            for row in rows {
                let (idx, token, checksum) = row.map_err(|e| self.fail(e))?;
                upload.parts.insert(idx, (PartToken(token), checksum));
            }
        }
        Ok(out)
    }

    /// Records a started upload in parts, replacing whatever was known of the file.
    pub(super) fn begin_upload(
        &self,
        id: &str,
        key: &str,
        source_size: u64,
        source_version: Option<&str>,
        upload_id: &str,
        part_size: u64,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.fail(e))?;
        tx.execute(
            "DELETE FROM parts WHERE run_id = ?1 AND key = ?2",
            params![id, key],
        )
        .and_then(|_| {
            tx.execute(
                "INSERT OR REPLACE INTO files
                 (run_id, key, source_size, source_version, done, upload_id, part_size, checksum, dest_version)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, NULL, NULL)",
                params![id, key, source_size as i64, source_version, upload_id, part_size as i64],
            )
        })
        .map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Records a completed part (after the destination acknowledged it).
    pub(super) fn part_done(
        &self,
        id: &str,
        key: &str,
        index: usize,
        token: &PartToken,
        checksum: Option<&str>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO parts (run_id, key, idx, token, checksum) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, key, index as i64, token.0, checksum],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Records a file as complete at the destination; its parts are no longer needed.
    pub(super) fn file_done(
        &self,
        id: &str,
        key: &str,
        source_size: u64,
        source_version: Option<&str>,
        checksum: Option<&str>,
        dest_version: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.fail(e))?;
        tx.execute(
            "DELETE FROM parts WHERE run_id = ?1 AND key = ?2",
            params![id, key],
        )
        .and_then(|_| {
            tx.execute(
                "INSERT OR REPLACE INTO files
                 (run_id, key, source_size, source_version, done, upload_id, part_size, checksum, dest_version)
                 VALUES (?1, ?2, ?3, ?4, 1, NULL, NULL, ?5, ?6)",
                params![id, key, source_size as i64, source_version, checksum, dest_version],
            )
        })
        .map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Forgets one file (its upload was aborted or its source changed).
    pub(super) fn forget_file(&self, id: &str, key: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM parts WHERE run_id = ?1 AND key = ?2",
            params![id, key],
        )
        .and_then(|_| {
            conn.execute(
                "DELETE FROM files WHERE run_id = ?1 AND key = ?2",
                params![id, key],
            )
        })
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Forgets everything about run `id`.
    pub(super) fn forget_run(&self, id: &str) -> Result<()> {
        self.conn()
            .execute_batch(&format!(
                "DELETE FROM parts WHERE run_id = {0}; DELETE FROM files WHERE run_id = {0}; DELETE FROM runs WHERE id = {0};",
                quote(id)
            ))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The status a run was last left in, if it is known.
    pub(super) fn run_status(&self, id: &str) -> Result<Option<String>> {
        self.conn()
            .query_row("SELECT status FROM runs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.fail(e))
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
