//! What a service process needs to take part in a cluster: the data plane registry and
//! the API over it and the controller.

use std::sync::Arc;

use ferry_api::AppState;
use ferry_control::selector::{
    DataPlaneRegistry, RegistryError, RegistryOptions, RemoteRegistry, SelectorConfig,
};
use ferry_control::Controller;
use ferry_core::{Error, Result};
use ferry_state::ControlStore;

pub type Registry = Arc<dyn DataPlaneRegistry>;

/// The registry the settings describe: in the control store, so every control plane
/// sharing it sees the same data planes and turn counts; in memory when the settings
/// name exactly one data plane (selection is that one, without a store round trip).
/// With `selector.url`, the registry of that control plane, over its API.
pub async fn registry(
    config: &SelectorConfig,
    store: &Arc<dyn ControlStore>,
    token: Option<&str>,
) -> Result<Registry> {
    if let Some(url) = &config.url {
        let remote = RemoteRegistry::new(url, token)
            .map_err(|e| Error::invalid_option("selector.url", e.to_string()))?;
        return Ok(Arc::new(remote));
    }
    let store: Arc<dyn ferry_state::control::dataplanes::DataPlaneStore> = store.clone();
    config
        .registry(Some(store), RegistryOptions::default())
        .await
        .map_err(|e| match e {
            RegistryError::Invalid(fields) => Error::invalid_option(
                "selector",
                fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            other => Error::invalid_option("selector", other.to_string()),
        })
}

pub fn app(controller: Controller, tokens: Arc<Vec<String>>, registry: Registry) -> axum::Router {
    ferry_api::app(AppState {
        controller,
        tokens,
        dataplanes: registry,
    })
}
