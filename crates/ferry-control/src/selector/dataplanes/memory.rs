//! [`DataPlaneRegistry`] over this process's [`Selector`].

use async_trait::async_trait;

use super::{
    check_load, system_clock, Clock, DataPlaneRegistry, Registered, RegistryError, RegistryOptions,
};
use crate::selector::registry::{SelectError, Selection, Selector};
use crate::selector::strategy::UnknownStrategy;
use crate::selector::{DataPlaneInstance, InstanceState, Load, RunRequest};

/// Registrations in memory: for a single control plane, or one that needs no shared state.
pub struct InMemoryRegistry {
    selector: Selector,
    clock: Clock,
}

impl Default for InMemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryRegistry {
    /// No instances, the built-in strategies, round-robin by default.
    pub fn new() -> Self {
        Self::from_selector(Selector::new())
    }

    /// No instances; strategies and heartbeat timeout from `options`.
    pub fn with_options(options: RegistryOptions) -> Result<Self, UnknownStrategy> {
        let selector = Selector::with_strategies(options.strategies, &options.default_strategy)?;
        selector.set_heartbeat_timeout(options.heartbeat_timeout);
        Ok(Self::from_selector(selector))
    }

    /// The instances and strategies `selector` has.
    pub fn from_selector(selector: Selector) -> Self {
        Self {
            selector,
            clock: system_clock(),
        }
    }

    /// Reads the time (Unix milliseconds) from `clock`, for tests and replays.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// The instance as selection sees it now.
    fn seen(&self, instance: DataPlaneInstance) -> DataPlaneInstance {
        instance.as_of((self.clock)(), self.selector.heartbeat_timeout())
    }
}

#[async_trait]
impl DataPlaneRegistry for InMemoryRegistry {
    async fn add(&self, instance: DataPlaneInstance) -> Result<Registered, RegistryError> {
        let (instance, replaced) = self
            .selector
            .put(instance)
            .map_err(RegistryError::Invalid)?;
        Ok(Registered {
            instance: self.seen(instance),
            replaced,
        })
    }

    async fn remove(
        &self,
        id: &str,
        registration: Option<&str>,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        Ok(self.selector.deregister(id, registration))
    }

    async fn get(&self, id: &str) -> Result<Option<DataPlaneInstance>, RegistryError> {
        Ok(self.selector.get_at(id, (self.clock)()))
    }

    async fn list(&self) -> Result<Vec<DataPlaneInstance>, RegistryError> {
        Ok(self.selector.list_at((self.clock)()))
    }

    async fn select(
        &self,
        run: &RunRequest,
        strategy: Option<&str>,
    ) -> Result<Selection, RegistryError> {
        self.selector
            .select_at(run, strategy, (self.clock)())
            .map_err(|e| match e {
                SelectError::UnknownStrategy(e) => e.into(),
                SelectError::NoInstance(e) => e.into(),
            })
    }

    async fn heartbeat(
        &self,
        id: &str,
        load: Load,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        check_load(&load)?;
        let now = (self.clock)();
        Ok(self
            .selector
            .heartbeat_at(id, load, now)
            .map(|dp| self.seen(dp)))
    }

    async fn set_state(
        &self,
        id: &str,
        state: InstanceState,
    ) -> Result<Option<DataPlaneInstance>, RegistryError> {
        Ok(self.selector.set_state(id, state).map(|dp| self.seen(dp)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use super::super::conformance;
    use super::*;

    #[tokio::test]
    async fn conforms() {
        conformance::all(&InMemoryRegistry::new()).await;
    }

    #[tokio::test]
    async fn heartbeats_expire() {
        let now = Arc::new(AtomicI64::new(0));
        let clock = Arc::clone(&now);
        let registry = InMemoryRegistry::with_options(RegistryOptions::default())
            .unwrap()
            .with_clock(move || clock.load(Ordering::Relaxed));
        conformance::heartbeats_expire(&registry, &|t| now.store(t, Ordering::Relaxed)).await;
    }
}
