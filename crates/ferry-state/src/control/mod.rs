//! The service's durable resources: transfers (desired state and status), their runs and
//! their events, the data planes registered to execute runs ([`dataplanes`]), and the other
//! resources (pipelines and their runs) as versioned documents ([`documents`]).
//!
//! Specs, statuses and statistics are kept as JSON documents: this crate stores them and
//! indexes the few fields it filters or claims on (name, phase, owner, lease), and the
//! control plane owns their meaning. Times are milliseconds since the Unix epoch, UTC.
//!
//! Two backends implement [`ControlStore`]: [`SqliteControlStore`], an embedded file for
//! one server, and [`PostgresControlStore`], a shared database for several servers. Both
//! pass the [`conformance`] suite.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ferry_core::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod conformance;
pub mod dataplanes;
pub mod documents;
pub(crate) mod postgres;
mod sqlite;

pub use dataplanes::{ChooserMany, DataPlaneRecord, DataPlaneStore};
pub use documents::{DocumentRecord, DocumentStore};
pub use postgres::PostgresControlStore;
pub use sqlite::SqliteControlStore;

/// A transfer as stored: its manifest (apiVersion, kind, metadata, spec, with secrets as
/// references) and its status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub name: String,
    /// Changes when the transfer is deleted and created again under the same name.
    pub uid: String,
    /// Starts at 1; each replaced spec adds 1.
    pub generation: i64,
    pub labels: BTreeMap<String, String>,
    pub manifest: Value,
    /// The phase, also inside `status`, kept apart to filter on.
    pub phase: String,
    pub status: Value,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the schedule next asks for a run (`None`: no schedule, or suspended), kept
    /// apart so the control loop reads only the transfers that are due.
    pub next_due: Option<i64>,
}

/// Which transfers a listing returns; the default is all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferFilter {
    /// Only transfers in this phase.
    pub phase: Option<String>,
    /// Only transfers carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Only transfers whose names sort (byte-wise) after this one: the next page.
    pub after: Option<String>,
    /// At most this many, by name.
    pub limit: Option<usize>,
}

impl TransferFilter {
    /// The labels as a JSON object, or `None` when any labels will do.
    fn labels_json(&self) -> Option<String> {
        (!self.labels.is_empty()).then(|| serde_json::to_string(&self.labels).unwrap_or_default())
    }
}

/// One execution of a transfer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub transfer: String,
    /// The transfer's uid when the run was made: a run outlives no transfer.
    pub transfer_uid: String,
    /// The spec generation the run executes.
    pub generation: i64,
    /// Pending, Running, Succeeded, Failed, Fatal, ConfigurationError, Cancelled.
    pub phase: String,
    /// Why the run exists: `created`, `schedule`, `manual`.
    pub trigger: String,
    /// Attempts started so far (retries included).
    pub attempt: i64,
    /// The schedule time it stands for, for scheduled runs.
    pub scheduled_for: Option<i64>,
    /// Not to be started before (a retry's backoff).
    pub not_before: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The process executing it, while it runs.
    pub owner: Option<String>,
    /// The owner's claim ends here unless renewed.
    pub lease_until: Option<i64>,
    /// Records, bytes, progress, schemas: whatever the control plane reports.
    pub stats: Value,
    pub error: Option<String>,
}

impl RunRecord {
    /// A new run of `transfer`, waiting to be claimed.
    pub fn pending(
        id: String,
        transfer: &TransferRecord,
        trigger: &str,
        scheduled_for: Option<i64>,
        now: i64,
    ) -> Self {
        Self {
            id,
            transfer: transfer.name.clone(),
            transfer_uid: transfer.uid.clone(),
            generation: transfer.generation,
            phase: "Pending".into(),
            trigger: trigger.into(),
            attempt: 0,
            scheduled_for,
            not_before: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            owner: None,
            lease_until: None,
            stats: Value::Object(Default::default()),
            error: None,
        }
    }

    /// True once the run can change no more.
    pub fn finished(&self) -> bool {
        self.finished_at.is_some()
    }
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub transfer: String,
    pub run: Option<String>,
    pub time: i64,
    /// `Normal` or `Warning`, as Kubernetes events.
    pub severity: String,
    /// A CamelCase word: RunStarted, Progress, RunSucceeded, RunFailed, …
    pub reason: String,
    pub message: String,
    pub data: Value,
}

/// An event as stored; `seq` grows with every event of the store, so a reader resumes
/// after the last one it saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Where the service keeps its resources.
///
/// Methods that change one record do so atomically. `claim_run` is the only way a process
/// takes a run to execute, so two processes never execute one run at once. Every control
/// store keeps data plane registrations too.
#[async_trait]
pub trait ControlStore: DataPlaneStore + DocumentStore {
    /// Stores a new transfer; false (and nothing changed) when the name is taken.
    async fn create_transfer(&self, transfer: &TransferRecord) -> Result<bool>;
    async fn get_transfer(&self, name: &str) -> Result<Option<TransferRecord>>;
    /// The transfers `filter` selects, by name.
    /// The transfers the filter selects, by name (byte-wise), a page of them when it has a
    /// limit.
    async fn list_transfers(&self, filter: &TransferFilter) -> Result<Vec<TransferRecord>>;
    /// Replaces manifest and labels, adds 1 to the generation and returns the new record;
    /// `None` when there is no such transfer.
    async fn replace_manifest(
        &self,
        name: &str,
        manifest: &Value,
        labels: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<Option<TransferRecord>>;
    /// Sets phase, status and next due time of the transfer whose uid is `uid`, as computed
    /// from what was read at `now`; false when it is gone, or when it changed after `now`
    /// (another process wrote a newer status, so this one is stale and dropped).
    async fn set_status(
        &self,
        name: &str,
        uid: &str,
        phase: &str,
        status: &Value,
        next_due: Option<i64>,
        now: i64,
    ) -> Result<bool>;
    /// Takes the schedule time `due` of the transfer whose uid is `uid` for this process:
    /// moves `next_due` from `due` to `next_due`. False when another process took it first,
    /// so of several control planes sharing the store exactly one fires each schedule time.
    async fn claim_schedule(
        &self,
        name: &str,
        uid: &str,
        due: i64,
        next_due: Option<i64>,
        now: i64,
    ) -> Result<bool>;
    /// Transfers whose `next_due` is at or before `now`, by name.
    async fn due_transfers(&self, now: i64) -> Result<Vec<TransferRecord>>;
    /// Deletes a transfer with its runs and events; false when there was none.
    async fn delete_transfer(&self, name: &str) -> Result<bool>;

    /// Inserts or replaces a run, except the claim fields (`owner`, `lease_until`), which
    /// only the claim methods change.
    async fn put_run(&self, run: &RunRecord) -> Result<()>;
    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>>;
    /// A transfer's runs, newest first.
    async fn list_runs(&self, transfer: &str) -> Result<Vec<RunRecord>>;
    /// Runs not finished, of every transfer, oldest first.
    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>>;
    async fn delete_runs(&self, ids: &[String]) -> Result<()>;
    /// Makes `owner` the run's owner until `lease_until`, if the run is unfinished and has
    /// no owner, or its owner's lease ended before `now`, or `owner` owns it already.
    /// Returns the run when the claim holds.
    async fn claim_run(
        &self,
        id: &str,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Option<RunRecord>>;
    /// Passes the claim on an unfinished run from `from` to `to`, with a new lease; false
    /// when `from` does not hold it. A control plane claims a run in its own name while it
    /// chooses a data plane, then hands the claim to that data plane.
    async fn hand_over_run(&self, id: &str, from: &str, to: &str, lease_until: i64)
        -> Result<bool>;
    /// Extends every lease `owner` holds; returns how many.
    async fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<u64>;
    /// Gives a run up: no owner, no lease.
    async fn release_run(&self, id: &str, owner: &str) -> Result<()>;

    async fn append_event(&self, event: &NewEvent) -> Result<EventRecord>;
    /// Several events in their order, in one write where the store can.
    async fn append_events(&self, events: &[NewEvent]) -> Result<Vec<EventRecord>> {
        let mut appended = Vec::with_capacity(events.len());
        for event in events {
            appended.push(self.append_event(event).await?);
        }
        Ok(appended)
    }
    /// A transfer's events with `seq > after`, oldest first, at most `limit`.
    async fn list_events(
        &self,
        transfer: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>>;
}
