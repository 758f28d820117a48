//! A control plane's dispatch of runs to remote data planes.

use std::sync::Arc;

use ferry_state::RunRecord;

use crate::controller::Inner;

/// Chooses a data plane for each run waiting to execute and tells it to start.
pub struct Dispatcher {}

impl Dispatcher {
    pub(crate) async fn dispatch(&self, _inner: &Arc<Inner>, _runs: Vec<RunRecord>, _now: i64) {}
}
