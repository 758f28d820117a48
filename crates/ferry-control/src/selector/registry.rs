//! The data planes this control plane knows, kept in memory, and the selection of one
//! for a run.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::strategy::{RoundRobin, SelectionStrategy, StrategyRegistry, UnknownStrategy};
use super::{
    field_error, DataPlaneInstance, InstanceState, Load, RunRequest, DEFAULT_HEARTBEAT_TIMEOUT,
};
use crate::resource::FieldError;

/// The instance chosen for a run, as it is after the choice (turn counted, marked active).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    pub instance: DataPlaneInstance,
    /// The strategy in effect; with a single instance registered it is not consulted.
    pub strategy: String,
}

/// No data plane can take the run; the reason says what each registered one lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{reason}")]
pub struct NoInstance {
    pub reason: String,
}

/// Why a selection failed: a strategy name nobody registered, or no capable instance.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    UnknownStrategy(#[from] UnknownStrategy),
    #[error(transparent)]
    NoInstance(#[from] NoInstance),
}

/// Data plane instances in memory, with the strategies that choose among them.
#[derive(Debug)]
pub struct Selector {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    instances: BTreeMap<String, DataPlaneInstance>,
    strategies: StrategyRegistry,
    default_strategy: String,
    heartbeat_timeout: Duration,
}

impl Default for Selector {
    fn default() -> Self {
        Self::new()
    }
}

impl Selector {
    /// No instances, the built-in strategies, round-robin by default.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                instances: BTreeMap::new(),
                strategies: StrategyRegistry::new(),
                default_strategy: RoundRobin::NAME.to_string(),
                heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            }),
        }
    }

    /// No instances, the given strategies, and the one used when a run names none.
    pub fn with_strategies(
        strategies: StrategyRegistry,
        default_strategy: &str,
    ) -> Result<Self, UnknownStrategy> {
        strategies.get(default_strategy)?;
        Ok(Self {
            inner: Mutex::new(Inner {
                instances: BTreeMap::new(),
                strategies,
                default_strategy: default_strategy.to_string(),
                heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change is a single insert or field update, so a panic elsewhere leaves
        // nothing half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a custom strategy (or replaces one of the same name).
    pub fn register_strategy(&self, strategy: Box<dyn SelectionStrategy>) {
        self.lock().strategies.register(strategy);
    }

    pub fn strategy_names(&self) -> Vec<String> {
        self.lock().strategies.names()
    }

    pub fn default_strategy(&self) -> String {
        self.lock().default_strategy.clone()
    }

    pub fn set_default_strategy(&self, name: &str) -> Result<(), UnknownStrategy> {
        let mut inner = self.lock();
        inner.strategies.get(name)?;
        inner.default_strategy = name.to_string();
        Ok(())
    }

    /// An instance whose last heartbeat is older than this counts as unavailable
    /// ([`DEFAULT_HEARTBEAT_TIMEOUT`] unless set).
    pub fn set_heartbeat_timeout(&self, timeout: Duration) {
        self.lock().heartbeat_timeout = timeout;
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        self.lock().heartbeat_timeout
    }

    /// Registers an instance after validation, with its type names in canonical form.
    pub fn add(&self, instance: DataPlaneInstance) -> Result<(), Vec<FieldError>> {
        let errors = instance.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut inner = self.lock();
        if inner.instances.contains_key(&instance.id) {
            return Err(vec![field_error(
                "id",
                format!("data plane '{}' is already registered", instance.id),
            )]);
        }
        let instance = instance.normalized();
        inner.instances.insert(instance.id.clone(), instance);
        Ok(())
    }

    /// Registers an instance after validation, or replaces the one with its id while
    /// keeping that one's turn count and last active time. Returns the instance as stored
    /// and whether it replaced one.
    pub fn put(
        &self,
        instance: DataPlaneInstance,
    ) -> Result<(DataPlaneInstance, bool), Vec<FieldError>> {
        let errors = instance.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut instance = instance.normalized();
        let mut inner = self.lock();
        let replaced = match inner.instances.get(&instance.id) {
            Some(old) => {
                instance.turn_count = old.turn_count;
                instance.last_active_ms = old.last_active_ms;
                true
            }
            None => false,
        };
        inner
            .instances
            .insert(instance.id.clone(), instance.clone());
        Ok((instance, replaced))
    }

    pub fn remove(&self, id: &str) -> Option<DataPlaneInstance> {
        self.lock().instances.remove(id)
    }

    /// Removes the instance if `registration` is `None` or names its registration.
    pub fn deregister(&self, id: &str, registration: Option<&str>) -> Option<DataPlaneInstance> {
        let mut inner = self.lock();
        let matches = inner.instances.get(id).is_some_and(|dp| {
            registration.is_none_or(|nonce| dp.registration.as_deref() == Some(nonce))
        });
        if matches {
            inner.instances.remove(id)
        } else {
            None
        }
    }

    /// The instance as selection sees it now (see [`DataPlaneInstance::as_of`]).
    pub fn get(&self, id: &str) -> Option<DataPlaneInstance> {
        self.get_at(id, Utc::now().timestamp_millis())
    }

    /// [`Selector::get`] at a given time (Unix milliseconds).
    pub fn get_at(&self, id: &str, now_ms: i64) -> Option<DataPlaneInstance> {
        let inner = self.lock();
        let timeout = inner.heartbeat_timeout;
        inner
            .instances
            .get(id)
            .map(|dp| dp.clone().as_of(now_ms, timeout))
    }

    /// Every instance, by id, as selection sees it now.
    pub fn list(&self) -> Vec<DataPlaneInstance> {
        self.list_at(Utc::now().timestamp_millis())
    }

    /// [`Selector::list`] at a given time (Unix milliseconds).
    pub fn list_at(&self, now_ms: i64) -> Vec<DataPlaneInstance> {
        let inner = self.lock();
        let timeout = inner.heartbeat_timeout;
        inner
            .instances
            .values()
            .map(|dp| dp.clone().as_of(now_ms, timeout))
            .collect()
    }

    /// Skips the instance in selections until it is marked available again; false when no
    /// instance has the id.
    pub fn mark_unavailable(&self, id: &str) -> bool {
        self.update(id, |dp| dp.state = InstanceState::Unavailable)
            .is_some()
    }

    pub fn mark_available(&self, id: &str) -> bool {
        self.update(id, |dp| dp.state = InstanceState::Available)
            .is_some()
    }

    /// Sets the instance's state and returns it; `None` when no instance has the id.
    pub fn set_state(&self, id: &str, state: InstanceState) -> Option<DataPlaneInstance> {
        self.update(id, |dp| dp.state = state)
    }

    /// Records the load the instance reported; false when no instance has the id.
    pub fn report_load(&self, id: &str, load: Load) -> bool {
        self.update(id, |dp| dp.load = Some(load)).is_some()
    }

    /// Records a heartbeat at `now_ms` with the load it reports, and makes the instance
    /// available; `None` when no instance has the id.
    pub fn heartbeat_at(&self, id: &str, load: Load, now_ms: i64) -> Option<DataPlaneInstance> {
        self.update(id, |dp| {
            dp.load = Some(load);
            dp.last_heartbeat_ms = Some(now_ms);
            dp.state = InstanceState::Available;
        })
    }

    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut DataPlaneInstance),
    ) -> Option<DataPlaneInstance> {
        let mut inner = self.lock();
        let dp = inner.instances.get_mut(id)?;
        change(dp);
        Some(dp.clone())
    }

    /// Chooses an instance for the run with the named strategy (the default when `None`),
    /// then counts the turn and marks the instance active now.
    pub fn select(
        &self,
        run: &RunRequest,
        strategy: Option<&str>,
    ) -> Result<Selection, SelectError> {
        self.select_at(run, strategy, Utc::now().timestamp_millis())
    }

    /// [`Selector::select`] at a given time (Unix milliseconds), for tests and replays.
    pub fn select_at(
        &self,
        run: &RunRequest,
        strategy: Option<&str>,
        now_ms: i64,
    ) -> Result<Selection, SelectError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let name = strategy
            .map(str::to_string)
            .unwrap_or_else(|| inner.default_strategy.clone());
        let chosen_strategy = inner.strategies.get(&name)?;
        let seen: Vec<DataPlaneInstance> = inner
            .instances
            .values()
            .map(|dp| dp.clone().as_of(now_ms, inner.heartbeat_timeout))
            .collect();
        let i = choose(&seen, run, &name, chosen_strategy)?;
        let Some(dp) = inner.instances.get_mut(&seen[i].id) else {
            return Err(no_capable_instance(&seen, run).into());
        };
        dp.turn_count += 1;
        dp.last_active_ms = Some(now_ms);
        Ok(Selection {
            instance: dp.clone().as_of(now_ms, inner.heartbeat_timeout),
            strategy: name,
        })
    }
}

/// Which of `instances` (ordered by id, as selection sees them now) takes the run: a
/// single instance whenever it can, else the one the strategy picks among the capable.
/// Returns its index in `instances`.
pub(crate) fn choose(
    instances: &[DataPlaneInstance],
    run: &RunRequest,
    name: &str,
    strategy: &dyn SelectionStrategy,
) -> Result<usize, NoInstance> {
    if let [only] = instances {
        return if only.can_handle(run) {
            Ok(0)
        } else {
            Err(no_capable_instance(instances, run))
        };
    }
    let (places, candidates): (Vec<usize>, Vec<&DataPlaneInstance>) = instances
        .iter()
        .enumerate()
        .filter(|(_, dp)| dp.can_handle(run))
        .unzip();
    if candidates.is_empty() {
        return Err(no_capable_instance(instances, run));
    }
    match strategy.choose(&candidates, run) {
        Some(i) if i < candidates.len() => Ok(places[i]),
        _ => {
            let ids: Vec<&str> = candidates.iter().map(|dp| dp.id.as_str()).collect();
            Err(NoInstance {
                reason: format!(
                    "strategy '{name}' chose none of the data planes that handle {} ({})",
                    run.describe(),
                    ids.join(", ")
                ),
            })
        }
    }
}

/// "no available data plane handles source postgres → destination s3 (2 registered:
/// dp-a lacks source postgres, dp-b is unavailable)".
pub(crate) fn no_capable_instance(instances: &[DataPlaneInstance], run: &RunRequest) -> NoInstance {
    let registered = if instances.is_empty() {
        "none registered".to_string()
    } else {
        let each: Vec<String> = instances
            .iter()
            .map(|dp| format!("{} {}", dp.id, dp.missing(run).join(" and ")))
            .collect();
        format!("{} registered: {}", instances.len(), each.join(", "))
    };
    NoInstance {
        reason: format!(
            "no available data plane handles {} ({registered})",
            run.describe()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(id: &str) -> DataPlaneInstance {
        DataPlaneInstance::new(id, format!("http://{id}:8080"))
    }

    fn selector(ids: &[&str]) -> Selector {
        let selector = Selector::new();
        for id in ids {
            selector.add(dp(id)).unwrap();
        }
        selector
    }

    fn counts(selector: &Selector) -> Vec<u64> {
        selector.list().iter().map(|dp| dp.turn_count).collect()
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let selector = selector(&["dp-a", "dp-b", "dp-c"]);
        let run = RunRequest::new("file", "s3");
        let mut order = Vec::new();
        for _ in 0..300 {
            let chosen = selector.select(&run, None).unwrap();
            assert_eq!(chosen.strategy, "round-robin");
            order.push(chosen.instance.id);
        }
        assert_eq!(counts(&selector), vec![100, 100, 100]);
        assert_eq!(order[..4], ["dp-a", "dp-b", "dp-c", "dp-a"]);
    }

    #[test]
    fn a_newcomer_catches_up_under_round_robin_and_least_recently_used() {
        let selector = selector(&["dp-a", "dp-b"]);
        let run = RunRequest::new("file", "s3");
        for t in 0..4 {
            selector.select_at(&run, None, t).unwrap();
        }
        selector.add(dp("dp-c")).unwrap();
        let lru = selector
            .select_at(&run, Some("least-recently-used"), 10)
            .unwrap();
        assert_eq!(lru.instance.id, "dp-c");
        assert_eq!(lru.instance.last_active_ms, Some(10));
        // dp-a was active at 2, dp-b at 3.
        let lru = selector
            .select_at(&run, Some("least-recently-used"), 11)
            .unwrap();
        assert_eq!(lru.instance.id, "dp-a");
        assert_eq!(selector.select(&run, None).unwrap().instance.id, "dp-c");
    }

    #[test]
    fn least_loaded_follows_the_reports() {
        let selector = selector(&["dp-a", "dp-b", "dp-c"]);
        let run = RunRequest::new("file", "s3");
        let load = |active_runs| Load {
            active_runs,
            bytes_per_second: 0.0,
            capacity: Some(4),
        };
        assert!(selector.report_load("dp-a", load(3)));
        assert!(selector.report_load("dp-b", load(1)));
        assert!(!selector.report_load("dp-z", load(0)));
        let chosen = selector.select(&run, Some("least-loaded")).unwrap();
        assert_eq!(chosen.instance.id, "dp-b");
        assert!(selector.report_load("dp-b", load(4)));
        // dp-c never reported and comes after dp-a's 3 of 4.
        let chosen = selector.select(&run, Some("least-loaded")).unwrap();
        assert_eq!(chosen.instance.id, "dp-a");
    }

    #[test]
    fn random_reaches_every_capable_instance_and_only_those() {
        let selector = selector(&["dp-a", "dp-b", "dp-c", "dp-d"]);
        selector.mark_unavailable("dp-d");
        let run = RunRequest::new("file", "s3");
        for _ in 0..600 {
            selector.select(&run, Some("random")).unwrap();
        }
        let turns = counts(&selector);
        assert_eq!(turns[3], 0);
        assert!(turns[..3].iter().all(|n| *n > 100), "{turns:?}");
        assert_eq!(turns.iter().sum::<u64>(), 600);
    }

    #[test]
    fn unavailable_instances_are_skipped_until_available_again() {
        let selector = selector(&["dp-a", "dp-b"]);
        let run = RunRequest::new("file", "s3");
        assert!(selector.mark_unavailable("dp-a"));
        for _ in 0..3 {
            assert_eq!(selector.select(&run, None).unwrap().instance.id, "dp-b");
        }
        assert!(selector.mark_available("dp-a"));
        assert_eq!(selector.select(&run, None).unwrap().instance.id, "dp-a");
        assert!(!selector.mark_unavailable("dp-z"));
    }

    #[test]
    fn no_capable_instance_says_what_each_lacks() {
        let selector = Selector::new();
        let mut a = dp("dp-a");
        a.allowed_source_types = vec!["file".into()];
        let b = dp("dp-b");
        let mut c = dp("dp-c");
        c.labels.insert("region".into(), "us".into());
        for instance in [a, b, c] {
            selector.add(instance).unwrap();
        }
        selector.mark_unavailable("dp-b");
        let run = RunRequest::new("postgres", "s3").with_label("region", "eu");
        let err = selector.select(&run, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no available data plane handles source postgres → destination s3 with labels region=eu \
             (3 registered: dp-a lacks source postgres and lacks label region=eu, \
             dp-b is unavailable and lacks label region=eu, dp-c lacks label region=eu)"
        );
        assert!(matches!(err, SelectError::NoInstance(_)));
        assert_eq!(counts(&selector), vec![0, 0, 0]);

        let empty = Selector::new().select(&run, None).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "no available data plane handles source postgres → destination s3 with labels region=eu (none registered)"
        );
    }

    #[test]
    fn a_single_instance_is_chosen_without_a_strategy() {
        struct Never;
        impl SelectionStrategy for Never {
            fn name(&self) -> &str {
                "never"
            }
            fn choose(&self, _: &[&DataPlaneInstance], _: &RunRequest) -> Option<usize> {
                None
            }
        }
        let mut strategies = StrategyRegistry::empty();
        strategies.register(Box::new(Never));
        let selector = Selector::with_strategies(strategies, "never").unwrap();
        selector.add(dp("dp-a")).unwrap();
        let run = RunRequest::new("file", "s3");
        let chosen = selector.select_at(&run, None, 7).unwrap();
        assert_eq!(chosen.instance.id, "dp-a");
        assert_eq!(chosen.instance.turn_count, 1);
        assert_eq!(chosen.instance.last_active_ms, Some(7));

        selector.mark_unavailable("dp-a");
        let err = selector.select(&run, None).unwrap_err();
        assert!(err.to_string().contains("dp-a is unavailable"), "{err}");

        // With two, the strategy decides, and declining is reported as such.
        selector.mark_available("dp-a");
        selector.add(dp("dp-b")).unwrap();
        let err = selector.select(&run, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "strategy 'never' chose none of the data planes that handle source file → destination s3 (dp-a, dp-b)"
        );
    }

    #[test]
    fn custom_strategies_register_by_name() {
        struct MostTurns;
        impl SelectionStrategy for MostTurns {
            fn name(&self) -> &str {
                "sticky"
            }
            fn choose(&self, candidates: &[&DataPlaneInstance], _: &RunRequest) -> Option<usize> {
                (0..candidates.len()).max_by_key(|i| candidates[*i].turn_count)
            }
        }
        let selector = selector(&["dp-a", "dp-b"]);
        selector.register_strategy(Box::new(MostTurns));
        let run = RunRequest::new("file", "s3");
        selector.select(&run, None).unwrap(); // round-robin: dp-a
        selector.select(&run, None).unwrap(); // dp-b
        selector.select(&run, None).unwrap(); // dp-a, now ahead
        for _ in 0..5 {
            let chosen = selector.select(&run, Some("sticky")).unwrap();
            assert_eq!(
                (chosen.instance.id.as_str(), chosen.strategy.as_str()),
                ("dp-a", "sticky")
            );
        }
        selector.set_default_strategy("sticky").unwrap();
        assert_eq!(selector.select(&run, None).unwrap().instance.id, "dp-a");
    }

    #[test]
    fn unknown_strategies_are_errors_listing_the_known_ones() {
        let selector = selector(&["dp-a", "dp-b"]);
        let run = RunRequest::new("file", "s3");
        let err = selector.select(&run, Some("fastest")).unwrap_err();
        assert!(matches!(err, SelectError::UnknownStrategy(_)));
        assert_eq!(
            err.to_string(),
            "unknown selection strategy 'fastest'; known: least-loaded, least-recently-used, random, round-robin"
        );
        assert!(selector.set_default_strategy("fastest").is_err());
        assert!(Selector::with_strategies(StrategyRegistry::new(), "fastest").is_err());
        assert_eq!(counts(&selector), vec![0, 0]);
    }

    #[test]
    fn add_validates_and_rejects_duplicates() {
        let selector = selector(&["dp-a"]);
        let dup = selector.add(dp("dp-a")).unwrap_err();
        assert_eq!(dup[0].field, "id");
        assert!(dup[0].message.contains("already registered"));

        let mut bad = DataPlaneInstance::new("dp-b", "file:///tmp");
        bad.allowed_destination_types = vec!["s3".into(), "ftp".into()];
        let errors = selector.add(bad).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["url", "allowedDestinationTypes[1]"]);

        let mut aliased = dp("dp-c");
        aliased.allowed_source_types = vec!["PostgreSQL".into()];
        selector.add(aliased).unwrap();
        assert_eq!(
            selector.get("dp-c").unwrap().allowed_source_types,
            vec!["postgres"]
        );
        assert_eq!(selector.remove("dp-c").map(|dp| dp.id), Some("dp-c".into()));
        assert!(selector.get("dp-c").is_none());
        assert_eq!(selector.list().len(), 1);
    }
}
