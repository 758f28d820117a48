//! What a service process needs to take part in a cluster: the data plane registry, the
//! dispatcher of a control plane, and the API over both.

use std::sync::Arc;

use ferry_api::AppState;
use ferry_control::dispatch::Dispatcher;
use ferry_control::selector::SelectorConfig;
use ferry_control::Controller;
use ferry_core::Result;
use ferry_state::ControlStore;

pub type Registry = ();

pub async fn registry(_config: &SelectorConfig, _store: &Arc<dyn ControlStore>) -> Result<Registry> {
    Ok(())
}

pub fn dispatcher(
    _registry: Registry,
    _config: &SelectorConfig,
    _advertise: &str,
    _token: Option<String>,
) -> Result<Dispatcher> {
    Ok(Dispatcher {})
}

pub fn app(controller: Controller, tokens: Arc<Vec<String>>, _registry: Registry) -> axum::Router {
    ferry_api::app(AppState { controller, tokens })
}
