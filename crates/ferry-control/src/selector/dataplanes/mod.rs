//! The data plane registry the control plane selects with, whether it is embedded or
//! remote: one trait, [`DataPlaneRegistry`], and three implementations.
//!
//! - [`InMemoryRegistry`]: this process's [`Selector`]; registrations end with it.
//! - [`StoreRegistry`]: the control store's registrations, shared by every control plane
//!   on the same database; a selection locks them, so turn counts stay consistent.
//! - [`RemoteRegistry`]: a control plane's `/v1/dataplanes` API over HTTP.
//!
//! [`SelectorConfig::registry`](super::SelectorConfig::registry) picks one from the
//! configuration.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::registry::{NoInstance, Selection};
use super::strategy::{RoundRobin, StrategyRegistry, UnknownStrategy};
use super::{DataPlaneInstance, InstanceState, Load, RunRequest, DEFAULT_HEARTBEAT_TIMEOUT};
use crate::resource::FieldError;

pub mod conformance;
mod memory;
mod remote;
mod store;

pub use memory::InMemoryRegistry;
pub use remote::RemoteRegistry;
pub use store::StoreRegistry;

/// Registers, finds and selects data planes.
///
/// Every implementation validates what it is given the same way, sees an instance whose
/// heartbeat is older than the timeout as unavailable (in `get` and `list` too), and
/// counts the turn of the instance a selection returns.
#[async_trait]
pub trait DataPlaneRegistry: Send + Sync {
    /// Registers the instance after [`DataPlaneInstance::validate`], or replaces the one
    /// with its id, keeping that one's turn count and last active time.
    async fn add(&self, instance: DataPlaneInstance) -> Result<Registered, RegistryError>;
    /// Removes the instance and returns it; with `registration`, only if it is the one
    /// registered under that nonce.
    async fn remove(
        &self,
        id: &str,
        registration: Option<&str>,
    ) -> Result<Option<DataPlaneInstance>, RegistryError>;
    async fn get(&self, id: &str) -> Result<Option<DataPlaneInstance>, RegistryError>;
    /// Every instance, by id.
    async fn list(&self) -> Result<Vec<DataPlaneInstance>, RegistryError>;
    /// Chooses the instance for the run with the named strategy (the default when `None`),
    /// counts its turn and marks it active now.
    async fn select(
        &self,
        run: &RunRequest,
        strategy: Option<&str>,
    ) -> Result<Selection, RegistryError>;
    /// Selects for several runs at once, in order, each choice counted before the next
    /// (under one lock where the registry can). One result per run.
    async fn select_many(
        &self,
        runs: &[(RunRequest, Option<String>)],
    ) -> Vec<Result<Selection, RegistryError>> {
        let mut selections = Vec::with_capacity(runs.len());
        for (run, strategy) in runs {
            selections.push(self.select(run, strategy.as_deref()).await);
        }
        selections
    }
    /// Records a heartbeat with the load the instance reports and makes it available;
    /// `None` when it is not registered (it should register again).
    async fn heartbeat(
        &self,
        id: &str,
        load: Load,
    ) -> Result<Option<DataPlaneInstance>, RegistryError>;
    /// `None` when the instance is not registered.
    async fn set_state(
        &self,
        id: &str,
        state: InstanceState,
    ) -> Result<Option<DataPlaneInstance>, RegistryError>;
}

/// What [`DataPlaneRegistry::add`] stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub instance: DataPlaneInstance,
    /// True when it replaced a registration of the same id.
    pub replaced: bool,
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The instance, load or request is invalid; every invalid field is named.
    #[error("invalid data plane request: {}", describe_fields(.0))]
    Invalid(Vec<FieldError>),
    /// No registered instance can take the run; the reason says what each one lacks.
    #[error(transparent)]
    NoInstance(#[from] NoInstance),
    #[error(transparent)]
    UnknownStrategy(#[from] UnknownStrategy),
    /// The control store failed.
    #[error("data plane registry: {0}")]
    Store(#[from] ferry_core::Error),
    /// The remote registry failed or answered something unexpected; one line, without
    /// credentials.
    #[error("data plane registry at {url}: {detail}")]
    Remote { url: String, detail: String },
}

/// `url: 'x' is not a URL; allowedSourceTypes[0]: unknown store type 'mongo'`.
fn describe_fields(errors: &[FieldError]) -> String {
    let each: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    each.join("; ")
}

/// How a registry selects and when a silent data plane stops counting.
pub struct RegistryOptions {
    /// The strategies runs may name; custom ones are registered here, next to the
    /// built-ins.
    pub strategies: StrategyRegistry,
    /// The strategy for runs that name none.
    pub default_strategy: String,
    /// An instance whose last heartbeat is older than this counts as unavailable.
    pub heartbeat_timeout: Duration,
    /// Data planes register themselves in the control store (through the API), so the
    /// store is the registry even when the configuration names a single data plane.
    pub registrations: bool,
}

impl Default for RegistryOptions {
    /// The built-in strategies, round-robin by default, a 15 s heartbeat timeout, and
    /// registrations off.
    fn default() -> Self {
        Self {
            strategies: StrategyRegistry::new(),
            default_strategy: RoundRobin::NAME.to_string(),
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            registrations: false,
        }
    }
}

/// The time registries read, in Unix milliseconds; replaceable in tests.
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub(crate) fn system_clock() -> Clock {
    Arc::new(crate::controller::now_ms)
}

fn check_load(load: &Load) -> Result<(), RegistryError> {
    let errors = load.validate();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RegistryError::Invalid(errors))
    }
}
