//! [`DataPlaneRegistry`] over the control store's registrations, shared by every control
//! plane on the same database.
//!
//! The store keeps each instance as a JSON document (what it is and handles) next to the
//! fields that change: state, turn count, last active time, last heartbeat, load and the
//! registration nonce. A selection runs the strategy while the store holds every
//! registration, so two control planes never take the same turn.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_state::control::{DataPlaneRecord, DataPlaneStore};
use serde_json::{Map, Value};

use super::{
    check_load, system_clock, Clock, DataPlaneRegistry, Registered, RegistryError, RegistryOptions,
};
use crate::selector::registry::{choose, no_capable_instance, Selection};
use crate::selector::strategy::{StrategyRegistry, UnknownStrategy};
use crate::selector::{DataPlaneInstance, InstanceState, Load, RunRequest};

/// Fields kept in their own columns, not in the document.
const COLUMNS: [&str; 7] = [
    "id",
    "registration",
    "state",
    "turnCount",
    "lastActiveMs",
    "lastHeartbeatMs",
    "load",
];

/// Registrations in the control store (SQLite or PostgreSQL).
pub struct StoreRegistry {
    store: Arc<dyn DataPlaneStore>,
    strategies: StrategyRegistry,
    default_strategy: String,
    heartbeat_timeout: Duration,
    clock: Clock,
}

impl StoreRegistry {
    /// The registrations in `store`, selected with the strategies of `options`.
    pub fn new(
        store: Arc<dyn DataPlaneStore>,
        options: RegistryOptions,
    ) -> Result<Self, UnknownStrategy> {
        options.strategies.get(&options.default_strategy)?;
        Ok(Self {
            store,
            strategies: options.strategies,
            default_strategy: options.default_strategy,
            heartbeat_timeout: options.heartbeat_timeout,
            clock: system_clock(),
        })
    }

    /// Reads the time (Unix milliseconds) from `clock`, for tests and replays.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The stored record as an instance, as selection sees it at `now`.
    fn seen(&self, record: &DataPlaneRecord, now: i64) -> Result<DataPlaneInstance, RegistryError> {
        Ok(instance(record)?.as_of(now, self.heartbeat_timeout))
    }

    fn seen_all(
        &self,
        records: &[DataPlaneRecord],
        now: i64,
    ) -> Result<Vec<DataPlaneInstance>, RegistryError> {
        records.iter().map(|r| self.seen(r, now)).collect()
    }

    fn seen_one(
        &self,
        record: Option<DataPlaneRecord>,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        let now = (self.clock)();
        record.map(|r| self.seen(&r, now)).transpose()
    }
}

#[async_trait]
impl DataPlaneRegistry for StoreRegistry {
    async fn add(&self, instance: DataPlaneInstance) -> Result<Registered, RegistryError> {
        let errors = instance.validate();
        if !errors.is_empty() {
            return Err(RegistryError::Invalid(errors));
        }
        let (stored, replaced) = self
            .store
            .put_dataplane(&record(&instance.normalized()))
            .await?;
        Ok(Registered {
            instance: self.seen(&stored, (self.clock)())?,
            replaced,
        })
    }

    async fn remove(
        &self,
        id: &str,
        registration: Option<&str>,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        let removed = self.store.delete_dataplane(id, registration).await?;
        self.seen_one(removed)
    }

    async fn get(&self, id: &str) -> Result<Option<DataPlaneInstance>, RegistryError> {
        let record = self.store.get_dataplane(id).await?;
        self.seen_one(record)
    }

    async fn list(&self) -> Result<Vec<DataPlaneInstance>, RegistryError> {
        let records = self.store.list_dataplanes().await?;
        self.seen_all(&records, (self.clock)())
    }

    async fn select(
        &self,
        run: &RunRequest,
        strategy: Option<&str>,
    ) -> Result<Selection, RegistryError> {
        let name = strategy.unwrap_or(&self.default_strategy);
        let chosen_strategy = self.strategies.get(name)?;
        let now = (self.clock)();
        let mut failure = None;
        let chosen = self
            .store
            .select_dataplane(now, &mut |records| {
                let picked = self.seen_all(records, now).and_then(|seen| {
                    choose(&seen, run, name, chosen_strategy).map_err(RegistryError::from)
                });
                picked.map_err(|e| failure = Some(e)).ok()
            })
            .await?;
        match (chosen, failure) {
            (Some(record), _) => Ok(Selection {
                instance: self.seen(&record, now)?,
                strategy: name.to_string(),
            }),
            (None, Some(failure)) => Err(failure),
            (None, None) => Err(no_capable_instance(&[], run).into()),
        }
    }

    async fn select_many(
        &self,
        runs: &[(RunRequest, Option<String>)],
    ) -> Vec<Result<Selection, RegistryError>> {
        let mut results: Vec<Option<Result<Selection, RegistryError>>> =
            (0..runs.len()).map(|_| None).collect();
        let mut names = Vec::with_capacity(runs.len());
        let mut strategies = Vec::with_capacity(runs.len());
        for (i, (_, strategy)) in runs.iter().enumerate() {
            let name = strategy.as_deref().unwrap_or(&self.default_strategy);
            match self.strategies.get(name) {
                Ok(chosen) => strategies.push(Some(chosen)),
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    strategies.push(None);
                }
            }
            names.push(name.to_string());
        }
        let now = (self.clock)();
        let mut failures: Vec<Option<RegistryError>> = (0..runs.len()).map(|_| None).collect();
        let picks = self
            .store
            .select_dataplanes(now, runs.len(), &mut |i, records| {
                let strategy = strategies[i].as_ref()?;
                let picked = self.seen_all(records, now).and_then(|seen| {
                    choose(&seen, &runs[i].0, &names[i], *strategy).map_err(RegistryError::from)
                });
                picked.map_err(|e| failures[i] = Some(e)).ok()
            })
            .await;
        let picks = match picks {
            Ok(picks) => picks,
            Err(e) => {
                let shown = e.to_string();
                return (0..runs.len())
                    .map(|_| Err(ferry_core::Error::Internal(shown.clone()).into()))
                    .collect();
            }
        };
        for (i, pick) in picks.into_iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            results[i] = Some(match (pick, failures[i].take()) {
                (Some(record), _) => self.seen(&record, now).map(|instance| Selection {
                    instance,
                    strategy: names[i].clone(),
                }),
                (None, Some(failure)) => Err(failure),
                (None, None) => Err(no_capable_instance(&[], &runs[i].0).into()),
            });
        }
        results
            .into_iter()
            .map(|r| r.expect("every run has a result"))
            .collect()
    }

    async fn heartbeat(
        &self,
        id: &str,
        load: Load,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        check_load(&load)?;
        let load = serde_json::to_value(&load).map_err(|e| stored(id, e))?;
        let record = self
            .store
            .heartbeat_dataplane(id, &load, (self.clock)())
            .await?;
        self.seen_one(record)
    }

    async fn set_state(
        &self,
        id: &str,
        state: InstanceState,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        let record = self.store.set_dataplane_state(id, state.as_str()).await?;
        self.seen_one(record)
    }
}

/// The instance as the store keeps it: the document without the fields it keeps apart.
fn record(instance: &DataPlaneInstance) -> DataPlaneRecord {
    let mut document = match serde_json::to_value(instance) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for column in COLUMNS {
        document.remove(column);
    }
    DataPlaneRecord {
        id: instance.id.clone(),
        registration: instance.registration.clone(),
        document: Value::Object(document),
        state: instance.state.as_str().to_string(),
        turn_count: i64::try_from(instance.turn_count).unwrap_or(i64::MAX),
        last_active_ms: instance.last_active_ms,
        heartbeat_ms: instance.last_heartbeat_ms,
        load: instance
            .load
            .as_ref()
            .and_then(|l| serde_json::to_value(l).ok()),
    }
}

/// The instance a stored record describes.
fn instance(record: &DataPlaneRecord) -> Result<DataPlaneInstance, RegistryError> {
    let Value::Object(mut document) = record.document.clone() else {
        return Err(stored(&record.id, "the document is not a JSON object"));
    };
    let turns = u64::try_from(record.turn_count).unwrap_or(0);
    let columns = [
        ("id", Value::from(record.id.clone())),
        ("registration", Value::from(record.registration.clone())),
        ("state", Value::from(record.state.clone())),
        ("turnCount", Value::from(turns)),
        ("lastActiveMs", Value::from(record.last_active_ms)),
        ("lastHeartbeatMs", Value::from(record.heartbeat_ms)),
        ("load", record.load.clone().unwrap_or(Value::Null)),
    ];
    for (key, value) in columns {
        document.insert(key.to_string(), value);
    }
    serde_json::from_value(Value::Object(document)).map_err(|e| stored(&record.id, e))
}

fn stored(id: &str, detail: impl std::fmt::Display) -> RegistryError {
    RegistryError::Store(ferry_core::Error::state(
        "ferry_dataplanes",
        format!("data plane '{id}': {detail}"),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use ferry_connectors::testkit::{unique_name, TestPostgres};
    use ferry_state::control::{PostgresControlStore, SqliteControlStore};

    use super::super::conformance;
    use super::*;

    fn registry(store: Arc<dyn DataPlaneStore>) -> StoreRegistry {
        StoreRegistry::new(store, RegistryOptions::default()).unwrap()
    }

    fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn DataPlaneStore> {
        Arc::new(SqliteControlStore::open(dir.path()).unwrap())
    }

    /// A new, empty database on the test server, dropped with the value.
    struct Database {
        server: TestPostgres,
        name: String,
    }

    impl Database {
        /// `None` (after saying why) outside CI when the server is not configured.
        fn create() -> Option<Self> {
            let server = TestPostgres::get()?;
            let name = unique_name("ferry_dp").replace('-', "_");
            server.sql("ferry", &format!("CREATE DATABASE {name}"));
            Some(Self { server, name })
        }

        async fn store(&self) -> Arc<dyn DataPlaneStore> {
            let url = self.server.url(&self.name);
            Arc::new(PostgresControlStore::connect(&url).await.unwrap())
        }
    }

    impl Drop for Database {
        fn drop(&mut self) {
            // Not `sql`, which panics: this may run while a failed test unwinds.
            let _ = std::process::Command::new("psql")
                .args(["-X", "-q", "-d", &self.server.url("ferry"), "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .output();
        }
    }

    /// Two control planes, each with its own registry over its own store handle, select
    /// at once: every turn is taken exactly once, so round-robin stays even.
    async fn two_control_planes_take_turns_together(
        a: Arc<dyn DataPlaneStore>,
        b: Arc<dyn DataPlaneStore>,
    ) {
        let planes = [Arc::new(registry(a)), Arc::new(registry(b))];
        for id in ["dp-a", "dp-b", "dp-c"] {
            planes[0].add(conformance::instance(id)).await.unwrap();
        }
        let selections: Vec<_> = (0..60)
            .map(|i| {
                let plane = Arc::clone(&planes[i % 2]);
                tokio::spawn(async move {
                    let run = RunRequest::new("file", "s3");
                    let chosen = plane.select(&run, None).await.unwrap();
                    (chosen.instance.id, chosen.instance.turn_count)
                })
            })
            .collect();
        let mut taken = Vec::new();
        for selection in selections {
            taken.push(selection.await.unwrap());
        }
        taken.sort();
        let expected: Vec<(String, u64)> = ["dp-a", "dp-b", "dp-c"]
            .iter()
            .flat_map(|id| (1..=20).map(move |turn| (id.to_string(), turn)))
            .collect();
        assert_eq!(taken, expected, "each turn taken once");
        let turns: Vec<u64> = planes[1]
            .list()
            .await
            .unwrap()
            .iter()
            .map(|dp| dp.turn_count)
            .collect();
        assert_eq!(turns, [20, 20, 20]);
    }

    #[tokio::test]
    async fn conforms_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        conformance::all(&registry(sqlite(&dir))).await;
    }

    #[tokio::test]
    async fn heartbeats_expire_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicI64::new(0));
        let clock = Arc::clone(&now);
        let registry = registry(sqlite(&dir)).with_clock(move || clock.load(Ordering::Relaxed));
        conformance::heartbeats_expire(&registry, &|t| now.store(t, Ordering::Relaxed)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_control_planes_on_one_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        two_control_planes_take_turns_together(sqlite(&dir), sqlite(&dir)).await;
    }

    #[tokio::test]
    async fn conforms_on_postgres() {
        let Some(db) = Database::create() else { return };
        conformance::all(&registry(db.store().await)).await;
        let now = Arc::new(AtomicI64::new(0));
        let clock = Arc::clone(&now);
        let registry = registry(db.store().await).with_clock(move || clock.load(Ordering::Relaxed));
        conformance::heartbeats_expire(&registry, &|t| now.store(t, Ordering::Relaxed)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_control_planes_on_one_postgres_database() {
        let Some(db) = Database::create() else { return };
        let (a, b) = tokio::join!(db.store(), db.store());
        two_control_planes_take_turns_together(a, b).await;
    }

    #[test]
    fn the_document_holds_what_the_instance_is_and_the_columns_the_rest() {
        let mut dp = conformance::instance("dp-a");
        dp.labels.insert("region".into(), "eu".into());
        dp.state = InstanceState::Unavailable;
        dp.turn_count = 7;
        dp.last_active_ms = Some(5);
        dp.last_heartbeat_ms = Some(6);
        dp.registration = Some("n1".into());
        dp.load = Some(Load {
            active_runs: 1,
            bytes_per_second: 2.0,
            capacity: None,
        });
        let stored = record(&dp);
        assert_eq!(
            stored.document,
            serde_json::json!({
                "url": "http://dp-a:8081", "allowedSourceTypes": [], "allowedDestinationTypes": [],
                "labels": {"region": "eu"}, "properties": {}
            })
        );
        assert_eq!(
            (
                stored.state.as_str(),
                stored.turn_count,
                stored.heartbeat_ms
            ),
            ("Unavailable", 7, Some(6))
        );
        assert_eq!(instance(&stored).unwrap(), dp);

        let mut broken = stored;
        broken.document = serde_json::json!({"url": "http://dp-a", "colour": "red"});
        let err = instance(&broken).unwrap_err();
        assert!(matches!(err, RegistryError::Store(_)), "{err}");
        assert!(err.to_string().contains("data plane 'dp-a'"), "{err}");
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
