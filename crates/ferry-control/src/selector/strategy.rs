//! How one data plane is picked among those that can handle a run: the trait, the
//! built-in strategies and the registry that finds a strategy by name.
//!
//! Built-in strategies decide from the instances' own fields (turn count, last active
//! time, load), so their choice stays consistent when those fields live in a shared store.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Mutex;

use rand::rngs::{SmallRng, SysRng};
use rand::{RngExt, SeedableRng};

use super::{DataPlaneInstance, RunRequest};

/// Picks one instance among candidates that can all handle the run.
pub trait SelectionStrategy: Send + Sync {
    /// The name transfers and the configuration use, e.g. `round-robin`.
    fn name(&self) -> &str;

    /// The index in `candidates` of the chosen instance; `None` declines them all.
    /// `candidates` is never empty and is ordered by id.
    fn choose(&self, candidates: &[&DataPlaneInstance], run: &RunRequest) -> Option<usize>;
}

/// A strategy name that no registered strategy has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown selection strategy '{name}'; known: {}", known.join(", "))]
pub struct UnknownStrategy {
    pub name: String,
    pub known: Vec<String>,
}

/// Strategies by name: the built-ins, plus custom ones registered by the embedding program.
pub struct StrategyRegistry {
    strategies: BTreeMap<String, Box<dyn SelectionStrategy>>,
}

impl Default for StrategyRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StrategyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.strategies.keys()).finish()
    }
}

impl StrategyRegistry {
    /// The built-ins: `random`, `round-robin`, `least-recently-used`, `least-loaded`.
    pub fn new() -> Self {
        let mut registry = Self::empty();
        registry.register(Box::new(RandomChoice::new()));
        registry.register(Box::new(RoundRobin));
        registry.register(Box::new(LeastRecentlyUsed));
        registry.register(Box::new(LeastLoaded));
        registry
    }

    /// No strategies at all, for programs that want only their own.
    pub fn empty() -> Self {
        Self {
            strategies: BTreeMap::new(),
        }
    }

    /// Adds a strategy under its name, replacing one of the same name (built-ins included).
    pub fn register(&mut self, strategy: Box<dyn SelectionStrategy>) {
        self.strategies
            .insert(strategy.name().to_string(), strategy);
    }

    pub fn get(&self, name: &str) -> Result<&dyn SelectionStrategy, UnknownStrategy> {
        self.strategies
            .get(name)
            .map(|s| s.as_ref())
            .ok_or_else(|| UnknownStrategy {
                name: name.to_string(),
                known: self.names(),
            })
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.strategies.keys().cloned().collect()
    }
}

/// The candidate that sorts first by `key`; ties go to the lower id.
fn first_by<K>(
    candidates: &[&DataPlaneInstance],
    key: impl Fn(&DataPlaneInstance) -> K,
    cmp: impl Fn(&K, &K) -> Ordering,
) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| cmp(&key(a), &key(b)).then_with(|| a.id.cmp(&b.id)))
        .map(|(i, _)| i)
}

/// Any capable instance, uniformly at random.
pub struct RandomChoice {
    rng: Mutex<SmallRng>,
}

impl RandomChoice {
    pub const NAME: &'static str = "random";

    /// Seeded from the system; from the clock in the unlikely case that is unavailable.
    pub fn new() -> Self {
        let rng = SmallRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| {
            SmallRng::seed_from_u64(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64)
        });
        Self {
            rng: Mutex::new(rng),
        }
    }

    /// A fixed sequence of choices, for tests.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }
}

impl Default for RandomChoice {
    fn default() -> Self {
        Self::new()
    }
}

impl SelectionStrategy for RandomChoice {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, candidates: &[&DataPlaneInstance], _run: &RunRequest) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        Some(rng.random_range(0..candidates.len()))
    }
}

/// The instance with the fewest turns, ties by id: the counts are the instances' own, so
/// several control planes sharing a store take turns together.
pub struct RoundRobin;

impl RoundRobin {
    pub const NAME: &'static str = "round-robin";
}

impl SelectionStrategy for RoundRobin {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, candidates: &[&DataPlaneInstance], _run: &RunRequest) -> Option<usize> {
        first_by(candidates, |dp| dp.turn_count, Ord::cmp)
    }
}

/// The instance idle longest: never active first, then the oldest last active time, then
/// the fewest turns.
pub struct LeastRecentlyUsed;

impl LeastRecentlyUsed {
    pub const NAME: &'static str = "least-recently-used";
}

impl SelectionStrategy for LeastRecentlyUsed {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, candidates: &[&DataPlaneInstance], _run: &RunRequest) -> Option<usize> {
        // `None < Some(_)`: an instance never chosen is the idlest of all.
        first_by(
            candidates,
            |dp| (dp.last_active_ms, dp.turn_count),
            Ord::cmp,
        )
    }
}

/// The instance with the lowest reported load: active runs per capacity, then throughput;
/// instances that never reported load come last.
pub struct LeastLoaded;

impl LeastLoaded {
    pub const NAME: &'static str = "least-loaded";
}

impl SelectionStrategy for LeastLoaded {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, candidates: &[&DataPlaneInstance], _run: &RunRequest) -> Option<usize> {
        first_by(
            candidates,
            |dp| {
                (
                    dp.load.as_ref().map(|l| (l.ratio(), l.throughput())),
                    dp.turn_count,
                )
            },
            |(a, turns_a), (b, turns_b)| {
                let by_load = match (a, b) {
                    (Some((ra, ta)), Some((rb, tb))) => ra.total_cmp(rb).then(ta.total_cmp(tb)),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                };
                by_load.then(turns_a.cmp(turns_b))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Load;

    fn dp(id: &str) -> DataPlaneInstance {
        DataPlaneInstance::new(id, format!("http://{id}"))
    }

    fn run() -> RunRequest {
        RunRequest::new("file", "s3")
    }

    #[test]
    fn round_robin_takes_the_fewest_turns_then_the_lowest_id() {
        let mut a = dp("dp-a");
        let mut b = dp("dp-b");
        let c = dp("dp-c");
        a.turn_count = 2;
        b.turn_count = 1;
        assert_eq!(RoundRobin.choose(&[&a, &b, &c], &run()), Some(2));
        b.turn_count = 0;
        assert_eq!(RoundRobin.choose(&[&a, &b, &c], &run()), Some(1));
        a.turn_count = 0;
        assert_eq!(RoundRobin.choose(&[&a, &b, &c], &run()), Some(0));
    }

    #[test]
    fn least_recently_used_takes_the_idlest() {
        let mut a = dp("dp-a");
        let mut b = dp("dp-b");
        let mut c = dp("dp-c");
        a.last_active_ms = Some(300);
        b.last_active_ms = Some(100);
        c.last_active_ms = Some(200);
        assert_eq!(LeastRecentlyUsed.choose(&[&a, &b, &c], &run()), Some(1));
        c.last_active_ms = None;
        assert_eq!(LeastRecentlyUsed.choose(&[&a, &b, &c], &run()), Some(2));
    }

    #[test]
    fn least_loaded_compares_ratio_then_throughput_and_puts_unknown_last() {
        let load = |active_runs, bytes_per_second, capacity| Load {
            active_runs,
            bytes_per_second,
            capacity,
        };
        let mut a = dp("dp-a");
        let mut b = dp("dp-b");
        let mut c = dp("dp-c");
        a.load = Some(load(4, 10.0, Some(8))); // 0.5
        b.load = Some(load(1, 10.0, Some(4))); // 0.25
        assert_eq!(LeastLoaded.choose(&[&a, &b, &c], &run()), Some(1));
        a.load = Some(load(1, 5.0, Some(4))); // 0.25, less throughput
        assert_eq!(LeastLoaded.choose(&[&a, &b, &c], &run()), Some(0));
        a.load = Some(load(0, 0.0, Some(0))); // capacity 0: full
        b.load = Some(load(3, 0.0, None)); // 3 runs, capacity unknown
        assert_eq!(LeastLoaded.choose(&[&a, &b, &c], &run()), Some(1));
        a.load = None;
        b.load = None;
        c.load = Some(load(9, 1e9, Some(10)));
        assert_eq!(LeastLoaded.choose(&[&a, &b, &c], &run()), Some(2));
    }

    #[test]
    fn random_spreads_over_every_candidate() {
        let (a, b, c) = (dp("dp-a"), dp("dp-b"), dp("dp-c"));
        let random = RandomChoice::new();
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[random.choose(&[&a, &b, &c], &run()).unwrap()] += 1;
        }
        // Each expects 1000; below 800 happens with negligible probability.
        assert!(counts.iter().all(|n| *n > 800), "{counts:?}");
        assert_eq!(random.choose(&[], &run()), None);
    }

    #[test]
    fn the_registry_finds_built_ins_and_custom_strategies_by_name() {
        struct Last;
        impl SelectionStrategy for Last {
            fn name(&self) -> &str {
                "last"
            }
            fn choose(&self, candidates: &[&DataPlaneInstance], _: &RunRequest) -> Option<usize> {
                candidates.len().checked_sub(1)
            }
        }
        let mut registry = StrategyRegistry::new();
        assert_eq!(
            registry.names(),
            vec![
                "least-loaded",
                "least-recently-used",
                "random",
                "round-robin"
            ]
        );
        registry.register(Box::new(Last));
        let (a, b) = (dp("dp-a"), dp("dp-b"));
        assert_eq!(
            registry.get("last").unwrap().choose(&[&a, &b], &run()),
            Some(1)
        );

        let err = registry.get("fastest").err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown selection strategy 'fastest'; known: last, least-loaded, least-recently-used, random, round-robin"
        );
    }
}
