//! Data plane registrations: the data planes control planes dispatch runs to, shared by
//! every control plane that uses the store.
//!
//! A registration is a JSON document (what the data plane is and what it handles), kept as
//! the control plane writes it, and the fields that change as runs are dispatched and data
//! planes report in: turn count, last active time, last heartbeat, load and state. The
//! control plane owns their meaning; the store keeps them consistent, above all in
//! [`DataPlaneStore::select_dataplane`], where choosing and counting the turn are one step.

use async_trait::async_trait;
use ferry_core::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The state a heartbeat sets: the data plane takes runs.
pub const AVAILABLE: &str = "Available";

/// One registered data plane, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataPlaneRecord {
    pub id: String,
    /// Chosen by the process that registered it, so its deregistration can name it and
    /// leave a newer registration of the same id in place.
    pub registration: Option<String>,
    /// What the data plane is: URL, store types, labels, properties.
    pub document: Value,
    /// `Available` or `Unavailable`, as the control plane names them.
    pub state: String,
    /// Runs dispatched to it so far.
    pub turn_count: i64,
    /// When it was last chosen.
    pub last_active_ms: Option<i64>,
    /// When it last reported in; `None` if it never did.
    pub heartbeat_ms: Option<i64>,
    /// The load it last reported.
    pub load: Option<Value>,
}

/// Picks one of the registrations, all of them ordered by id, by its index; `None` picks
/// none. It runs while every registration is locked, so it must be quick and not block.
pub type Chooser<'a> = dyn FnMut(&[DataPlaneRecord]) -> Option<usize> + Send + 'a;

/// Picks for the `i`th of several selections, as [`Chooser`] does; the registrations show
/// the turns the earlier picks took.
pub type ChooserMany<'a> = dyn FnMut(usize, &[DataPlaneRecord]) -> Option<usize> + Send + 'a;

/// Where data plane registrations are kept.
///
/// Each method is atomic. [`DataPlaneStore::select_dataplane`] holds every registration
/// while it chooses, so control planes sharing a store take turns over the same counts.
#[async_trait]
pub trait DataPlaneStore: Send + Sync + 'static {
    /// Inserts the registration, or replaces the one with its id while keeping that one's
    /// turn count and last active time. Returns the stored record and whether it replaced
    /// one.
    async fn put_dataplane(&self, record: &DataPlaneRecord) -> Result<(DataPlaneRecord, bool)>;
    async fn get_dataplane(&self, id: &str) -> Result<Option<DataPlaneRecord>>;
    /// Every registration, by id.
    async fn list_dataplanes(&self) -> Result<Vec<DataPlaneRecord>>;
    /// Deletes the registration and returns it; with `registration`, only if it matches.
    async fn delete_dataplane(
        &self,
        id: &str,
        registration: Option<&str>,
    ) -> Result<Option<DataPlaneRecord>>;
    /// Stores the reported load and the time, and makes the data plane available; `None`
    /// when it is not registered.
    async fn heartbeat_dataplane(
        &self,
        id: &str,
        load: &Value,
        now: i64,
    ) -> Result<Option<DataPlaneRecord>>;
    async fn set_dataplane_state(&self, id: &str, state: &str) -> Result<Option<DataPlaneRecord>>;
    /// Locks every registration, lets `choose` pick one, adds 1 to its turn count, sets its
    /// last active time to `now` and returns it; `None` (and nothing changed) when
    /// `choose` picks none.
    async fn select_dataplane(
        &self,
        now: i64,
        choose: &mut Chooser<'_>,
    ) -> Result<Option<DataPlaneRecord>>;
    /// `count` selections at once: as [`select_dataplane`](Self::select_dataplane) each,
    /// under one lock where the store can, every pick counted before the next is chosen.
    /// The picks in order, `None` where `choose` picked none.
    async fn select_dataplanes(
        &self,
        now: i64,
        count: usize,
        choose: &mut ChooserMany<'_>,
    ) -> Result<Vec<Option<DataPlaneRecord>>> {
        let mut picks = Vec::with_capacity(count);
        for i in 0..count {
            picks.push(
                self.select_dataplane(now, &mut |records| choose(i, records))
                    .await?,
            );
        }
        Ok(picks)
    }
}
