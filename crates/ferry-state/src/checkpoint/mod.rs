//! Durable checkpoints for runs.
//!
//! A checkpoint records, per run, which files are done (with their checksums and the
//! destination version written) and, for files moving in parts, the upload id and every
//! completed part. A later process reads it back to skip finished files and to continue
//! interrupted uploads where they stopped.
//!
//! Two backends keep them: an embedded SQLite file in a state directory, for the processes
//! of one machine, and a shared PostgreSQL database, so that a run interrupted on one
//! machine continues on another. Both behave the same; every write is durable against a
//! process crash when its call returns.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_core::{PartToken, Result};

mod postgres;
mod sqlite;

use postgres::PostgresCheckpoints;
use sqlite::SqliteCheckpoints;

/// What the checkpoint knows about one file of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileCheckpoint {
    pub source_size: u64,
    pub source_version: Option<String>,
    pub done: bool,
    /// Set while the file moves in parts.
    pub upload: Option<UploadCheckpoint>,
    /// The file's checksum (`algo:hex`), once done.
    pub checksum: Option<String>,
    /// The version the destination reported after the write, once done.
    pub dest_version: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadCheckpoint {
    pub upload_id: String,
    pub part_size: u64,
    /// Completed parts by index: the token to complete the upload with, and the part's checksum.
    pub parts: BTreeMap<usize, (PartToken, Option<String>)>,
}

/// The checkpoints of runs, in a state directory or in a PostgreSQL database.
///
/// The methods block until the store answered (they are cheap next to the data they
/// describe); each one that writes returns once the write is durable.
pub struct StateStore {
    backend: Backend,
}

enum Backend {
    Sqlite(SqliteCheckpoints),
    Postgres(PostgresCheckpoints),
}

/// Calls the same method on whichever backend the store has.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*),
            Backend::Postgres(b) => b.$method($($arg),*),
        }
    };
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl StateStore {
    /// Opens (creating if needed) the SQLite database `dir/ferry.db`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            backend: Backend::Sqlite(SqliteCheckpoints::open(dir)?),
        })
    }

    /// Connects to the checkpoint tables (`ferry_checkpoint_*`, created if needed) in the
    /// PostgreSQL database at `postgres://user[:password]@host[:port]/database`. The
    /// password comes from the URL, else `PGPASSWORD`; the session is not encrypted, so
    /// `sslmode` must be `disable`, `allow` or `prefer`. Blocks until connected.
    pub fn connect(url: &str) -> Result<Self> {
        Ok(Self {
            backend: Backend::Postgres(PostgresCheckpoints::connect(url)?),
        })
    }

    /// The store a run's options name: PostgreSQL at `url` when there is one (`dir` is
    /// then not used), else the SQLite database in `dir`.
    pub fn open_for(dir: &Path, url: Option<&str>) -> Result<Self> {
        match url {
            Some(url) => Self::connect(url),
            None => Self::open(dir),
        }
    }

    /// Where the checkpoints are, for messages: the SQLite file, or the database URL
    /// without its password.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(b) => b.path().display().to_string(),
            Backend::Postgres(b) => b.shown().to_string(),
        }
    }

    /// Records that run `id` copies `source` to `destination`; keeps its progress if known.
    pub fn start_run(&self, id: &str, source: &str, destination: &str) -> Result<()> {
        dispatch!(self.start_run(id, source, destination))
    }

    pub fn finish_run(&self, id: &str, status: &str) -> Result<()> {
        dispatch!(self.finish_run(id, status))
    }

    /// Everything the checkpoint holds for run `id`, by file key.
    pub fn files(&self, id: &str) -> Result<BTreeMap<String, FileCheckpoint>> {
        dispatch!(self.files(id))
    }

    /// What the checkpoint holds for the files `keys` of run `id` (those it knows), so a
    /// run over millions of files reads its checkpoint a batch at a time.
    pub fn files_for(&self, id: &str, keys: &[String]) -> Result<BTreeMap<String, FileCheckpoint>> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        dispatch!(self.files_for(id, keys))
    }

    /// The files of run `id` whose upload in parts was started and not finished.
    pub fn uploading(&self, id: &str) -> Result<BTreeMap<String, FileCheckpoint>> {
        dispatch!(self.uploading(id))
    }

    /// Records a started upload in parts, replacing whatever was known of the file.
    pub fn begin_upload(
        &self,
        id: &str,
        key: &str,
        source_size: u64,
        source_version: Option<&str>,
        upload_id: &str,
        part_size: u64,
    ) -> Result<()> {
        dispatch!(self.begin_upload(id, key, source_size, source_version, upload_id, part_size))
    }

    /// Records a completed part (after the destination acknowledged it).
    pub fn part_done(
        &self,
        id: &str,
        key: &str,
        index: usize,
        token: &PartToken,
        checksum: Option<&str>,
    ) -> Result<()> {
        dispatch!(self.part_done(id, key, index, token, checksum))
    }

    /// Records a file as complete at the destination; its parts are no longer needed.
    pub fn file_done(
        &self,
        id: &str,
        key: &str,
        source_size: u64,
        source_version: Option<&str>,
        checksum: Option<&str>,
        dest_version: Option<&str>,
    ) -> Result<()> {
        dispatch!(self.file_done(id, key, source_size, source_version, checksum, dest_version))
    }

    /// Forgets one file (its upload was aborted or its source changed).
    pub fn forget_file(&self, id: &str, key: &str) -> Result<()> {
        dispatch!(self.forget_file(id, key))
    }

    /// Forgets everything about run `id`.
    pub fn forget_run(&self, id: &str) -> Result<()> {
        dispatch!(self.forget_run(id))
    }

    /// The status a run was last left in, if it is known.
    pub fn run_status(&self, id: &str) -> Result<Option<String>> {
        dispatch!(self.run_status(id))
    }
}

#[cfg(test)]
mod tests;
