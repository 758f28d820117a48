//! The data planes this control plane knows, kept in memory, and the selection of one
//! for a run.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::strategy::{RoundRobin, SelectionStrategy, StrategyRegistry, UnknownStrategy};
use super::{field_error, DataPlaneInstance, InstanceState, Load, RunRequest};
use crate::resource::FieldError;

/// The instance chosen for a run, as it is after the choice (turn counted, marked active).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    pub instance: DataPlaneInstance,
    /// The strategy in effect; with a single instance registered it is not consulted.
    pub strategy: String,
}

/// No data plane can take the run; the reason says what each registered one lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema, thiserror::Error)]
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

    pub fn remove(&self, id: &str) -> Option<DataPlaneInstance> {
        self.lock().instances.remove(id)
    }

    pub fn get(&self, id: &str) -> Option<DataPlaneInstance> {
        self.lock().instances.get(id).cloned()
    }

    /// Every instance, by id.
    pub fn list(&self) -> Vec<DataPlaneInstance> {
        self.lock().instances.values().cloned().collect()
    }

    /// Skips the instance in selections until it is marked available again; false when no
    /// instance has the id.
    pub fn mark_unavailable(&self, id: &str) -> bool {
        self.update(id, |dp| dp.state = InstanceState::Unavailable)
    }

    pub fn mark_available(&self, id: &str) -> bool {
        self.update(id, |dp| dp.state = InstanceState::Available)
    }

    /// Records the load the instance reported; false when no instance has the id.
    pub fn report_load(&self, id: &str, load: Load) -> bool {
        self.update(id, |dp| dp.load = Some(load))
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut DataPlaneInstance)) -> bool {
        match self.lock().instances.get_mut(id) {
            Some(dp) => {
                change(dp);
                true
            }
            None => false,
        }
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
        let mut inner = self.lock();
        let name = strategy
            .map(str::to_string)
            .unwrap_or_else(|| inner.default_strategy.clone());
        let chosen_strategy = inner.strategies.get(&name)?;

        let chosen_id = if inner.instances.len() == 1 {
            // A single data plane is the answer whenever it can take the run.
            inner
                .instances
                .values()
                .find(|dp| dp.can_handle(run))
                .map(|dp| dp.id.clone())
        } else {
            let candidates: Vec<&DataPlaneInstance> = inner
                .instances
                .values()
                .filter(|dp| dp.can_handle(run))
                .collect();
            if candidates.is_empty() {
                None
            } else {
                match chosen_strategy.choose(&candidates, run) {
                    Some(i) if i < candidates.len() => Some(candidates[i].id.clone()),
                    _ => {
                        let ids: Vec<&str> = candidates.iter().map(|dp| dp.id.as_str()).collect();
                        return Err(NoInstance {
                            reason: format!(
                                "strategy '{name}' chose none of the data planes that handle {} ({})",
                                run.describe(),
                                ids.join(", ")
                            ),
                        }
                        .into());
                    }
                }
            }
        };
        let Some(id) = chosen_id else {
            return Err(no_capable_instance(&inner.instances, run).into());
        };
        let Some(dp) = inner.instances.get_mut(&id) else {
            return Err(no_capable_instance(&inner.instances, run).into());
        };
        dp.turn_count += 1;
        dp.last_active_ms = Some(now_ms);
        Ok(Selection {
            instance: dp.clone(),
            strategy: name,
        })
    }
}

/// "no available data plane handles source postgres → destination s3 (2 registered:
/// dp-a lacks source postgres, dp-b is unavailable)".
fn no_capable_instance(
    instances: &BTreeMap<String, DataPlaneInstance>,
    run: &RunRequest,
) -> NoInstance {
    let registered = if instances.is_empty() {
        "none registered".to_string()
    } else {
        let each: Vec<String> = instances
            .values()
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
