//! A control plane's dispatch of runs to remote data planes.
//!
//! Each tick, every run that waits to execute and that no data plane holds is given to
//! one: the selector picks a data plane that can handle it, the control plane claims the
//! run in the shared store in that data plane's name (so no other control plane sends it
//! elsewhere, and the claim ends with the lease if the data plane never takes it), then
//! sends it a Dataplane Signaling `start`. A data plane that cannot be reached is marked
//! unavailable and the run goes to another on the next tick. A data plane that dies
//! mid-run stops renewing its lease; when the lease ends, the run is dispatched again and
//! resumes from its checkpoint wherever it lands.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::{Error, Result};
use ferry_state::{RunRecord, TransferRecord};

use serde_json::{json, Value};

use crate::controller::{lock, now_ms, Inner, SUSPENDED};
use crate::selector::{DataPlaneRegistry, InstanceState, RegistryError, RunRequest};

/// Runs handed to data planes at once in one pass.
const DISPATCH_CONCURRENCY: usize = 8;

/// A claimed run, its transfer, when its dispatch began, and its hand-over slot.
type Claimed = (
    RunRecord,
    TransferRecord,
    Instant,
    tokio::sync::OwnedSemaphorePermit,
);

/// Chooses a data plane for each run waiting to execute and tells it to start.
pub struct Dispatcher {
    registry: Arc<dyn DataPlaneRegistry>,
    client: reqwest::Client,
    token: Option<String>,
    /// Where data planes report back: `{advertised URL}/v1/signaling`.
    callback_address: String,
    /// Runs already told that no data plane is available, so the event is written once.
    waiting: Mutex<HashSet<String>>,
}

impl Dispatcher {
    /// `advertised` is the URL data planes reach this control plane at; `token` is what
    /// it presents to them.
    pub fn new(
        registry: Arc<dyn DataPlaneRegistry>,
        advertised: &str,
        token: Option<String>,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| Error::Internal(format!("no HTTP client: {e}")))?;
        Ok(Self {
            registry,
            client,
            token,
            callback_address: format!("{}/v1/signaling", advertised.trim_end_matches('/')),
            waiting: Mutex::new(HashSet::new()),
        })
    }

    pub fn registry(&self) -> &Arc<dyn DataPlaneRegistry> {
        &self.registry
    }

    pub(crate) async fn dispatch(&self, inner: &Arc<Inner>, runs: Vec<RunRecord>, now: i64) {
        use futures::StreamExt;
        let waiting: Vec<RunRecord> = runs
            .into_iter()
            .filter(|run| {
                let held = run.owner.is_some() && run.lease_until.is_some_and(|t| t > now);
                !(held || run.phase == SUSPENDED || run.not_before.is_some_and(|t| t > now))
            })
            .collect();
        if waiting.is_empty() || inner.stopping() {
            return;
        }
        // Pipelined: each run is claimed, then the runs claimed by then are selected
        // together (one lock of the registrations for all of them), and each is handed to
        // its data plane as soon as it is selected, while later runs are still claimed.
        // A run never waits for a whole batch, so its dispatch time is its own.
        // A run is claimed only when it can be handed over at once: at most
        // DISPATCH_CONCURRENCY runs are between their claim and their data plane's answer,
        // so none waits, claimed, for a slot (its dispatch time would count the wait).
        let slots = Arc::new(tokio::sync::Semaphore::new(DISPATCH_CONCURRENCY));
        let (claimed_tx, mut claimed_rx) = tokio::sync::mpsc::channel(DISPATCH_CONCURRENCY);
        let claiming = async move {
            let mut claims = futures::stream::iter(waiting)
                .map(|run| {
                    let slots = slots.clone();
                    async move {
                        let slot = slots.acquire_owned().await.ok()?;
                        let (run, record, started) = self.claim_one(inner, run).await?;
                        Some((run, record, started, slot))
                    }
                })
                .buffer_unordered(DISPATCH_CONCURRENCY);
            while let Some(claimed) = claims.next().await {
                if let Some(claimed) = claimed {
                    if claimed_tx.send(claimed).await.is_err() {
                        break;
                    }
                }
            }
        };
        let handing = async {
            let mut handing = futures::stream::FuturesUnordered::new();
            let mut ready = Vec::with_capacity(DISPATCH_CONCURRENCY);
            let mut open = true;
            while open || !handing.is_empty() {
                tokio::select! {
                    n = claimed_rx.recv_many(&mut ready, DISPATCH_CONCURRENCY), if open => {
                        if n == 0 {
                            open = false;
                            continue;
                        }
                        let claimed: Vec<Claimed> = std::mem::take(&mut ready);
                        let requests: Vec<(RunRequest, Option<String>)> = claimed
                            .iter()
                            .map(|(_, record, _, _)| run_request(record))
                            .collect();
                        let selections = self.registry.select_many(&requests).await;
                        let selected = Instant::now();
                        for (((run, _, started, slot), (request, _)), selection) in
                            claimed.into_iter().zip(requests).zip(selections)
                        {
                            handing.push(self.hand_over_one(
                                inner,
                                run,
                                request,
                                selection,
                                (started, selected.duration_since(started)),
                                slot,
                            ));
                        }
                    }
                    Some(()) = handing.next(), if !handing.is_empty() => {}
                }
            }
        };
        tokio::join!(claiming, handing);
    }

    async fn claim_one(
        &self,
        inner: &Arc<Inner>,
        run: RunRecord,
    ) -> Option<(RunRecord, TransferRecord, Instant)> {
        match self.claim(inner, &run).await {
            Ok(Some((record, started))) => Some((run, record, started)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("run {}: dispatch: {e}", run.id);
                None
            }
        }
    }

    async fn hand_over_one(
        &self,
        inner: &Arc<Inner>,
        run: RunRecord,
        request: RunRequest,
        selection: std::result::Result<crate::selector::Selection, RegistryError>,
        times: (Instant, Duration),
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        if let Err(e) = self
            .hand_over(inner, &run, &request, selection, times)
            .await
        {
            tracing::warn!("run {}: dispatch: {e}", run.id);
        }
    }

    /// Claims the run in this control plane's name while it chooses, so that of several
    /// control planes one dispatches it; its transfer and when the dispatch began, or
    /// `None` when it is not to be dispatched now.
    async fn claim(
        &self,
        inner: &Arc<Inner>,
        run: &RunRecord,
    ) -> Result<Option<(TransferRecord, Instant)>> {
        let Some(record) = inner.store.get_transfer(&run.transfer).await? else {
            return Ok(None);
        };
        let started = Instant::now();
        let now = now_ms();
        let lease_until = now + inner.config.lease.as_millis() as i64;
        let choosing = self.choosing(inner);
        let Some(claimed) = inner
            .store
            .claim_run(&run.id, &choosing, lease_until, now)
            .await?
        else {
            return Ok(None);
        };
        if claimed.phase == SUSPENDED || claimed.finished() {
            inner.store.release_run(&run.id, &choosing).await?;
            return Ok(None);
        }
        Ok(Some((record, started)))
    }

    fn choosing(&self, inner: &Inner) -> String {
        format!("dispatch/{}", inner.config.instance)
    }

    /// Gives a claimed run to the data plane selected for it (and tells it to start), or
    /// says why none takes it.
    async fn hand_over(
        &self,
        inner: &Arc<Inner>,
        run: &RunRecord,
        request: &RunRequest,
        selection: std::result::Result<crate::selector::Selection, RegistryError>,
        (started, selected): (Instant, Duration),
    ) -> Result<()> {
        let choosing = self.choosing(inner);
        let now = now_ms();
        let lease_until = now + inner.config.lease.as_millis() as i64;
        let selection = match selection {
            Ok(selection) => selection,
            Err(e) => {
                inner.store.release_run(&run.id, &choosing).await?;
                return match e {
                    RegistryError::NoInstance(none) => {
                        self.no_data_plane(inner, run, request, &none.reason).await
                    }
                    RegistryError::UnknownStrategy(e) => {
                        self.fail(inner, run, &format!("spec.dataPlane.strategy: {e}"))
                            .await
                    }
                    e => Err(Error::Internal(e.to_string())),
                };
            }
        };
        let dp = selection.instance;
        // The data plane's own claim then holds at once.
        if !inner
            .store
            .hand_over_run(&run.id, &choosing, &dp.id, lease_until)
            .await?
        {
            return Ok(());
        }
        let message = json!({
            "messageId": format!("{}-{}-{now:x}", run.id, run.attempt),
            "processId": run.id,
            "participantId": inner.config.instance,
            "counterPartyId": dp.id,
            "dataspaceContext": "ferry",
            "agreementId": run.transfer,
            "datasetId": run.transfer,
            "callbackAddress": self.callback_address,
            "transferType": {"destinationType": request.destination_type, "flowType": "PUSH"},
        });
        let url = format!("{}/dataflows/start", dp.url.trim_end_matches('/'));
        let mut post = self.client.post(&url).json(&message);
        if let Some(token) = &self.token {
            post = post.bearer_auth(token);
        }
        let answer = post.send().await;
        let total = started.elapsed();
        let refused = match answer {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => {
                let status = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                Some(format!(
                    "data plane '{}' refused the run ({status}): {}",
                    dp.id,
                    body["error"].as_str().unwrap_or("no reason given")
                ))
            }
            Err(e) => {
                // Unreachable: no more runs for it until it says it is back.
                let _ = self
                    .registry
                    .set_state(&dp.id, InstanceState::Unavailable)
                    .await;
                Some(format!(
                    "data plane '{}' at {} is unreachable, marked unavailable: {}",
                    dp.id,
                    dp.url,
                    ferry_core::error::one_line(&e.to_string())
                ))
            }
        };
        if let Some(why) = refused {
            inner.store.release_run(&run.id, &dp.id).await?;
            inner
                .emit(
                    &run.transfer,
                    Some(&run.id),
                    "Warning",
                    "DispatchFailed",
                    format!("run {}: {why}; it goes to another data plane", run.id),
                    json!({"dataPlane": dp.id}),
                )
                .await;
            return Ok(());
        }
        lock(&self.waiting).remove(&run.id);
        inner.dispatched(selected.as_secs_f64(), total.as_secs_f64());
        inner
            .emit(
                &run.transfer,
                Some(&run.id),
                "Normal",
                "RunDispatched",
                format!(
                    "run {} sent to data plane '{}' ({})",
                    run.id, dp.id, selection.strategy
                ),
                json!({"dataPlane": dp.id, "strategy": selection.strategy,
                       "selectMs": selected.as_secs_f64() * 1000.0,
                       "dispatchMs": total.as_secs_f64() * 1000.0}),
            )
            .await;
        Ok(())
    }

    /// No data plane takes the run now. If some registered one could handle it once it is
    /// back, the run waits; if none could, it fails with the reason.
    async fn no_data_plane(
        &self,
        inner: &Arc<Inner>,
        run: &RunRecord,
        request: &RunRequest,
        reason: &str,
    ) -> Result<()> {
        let registered = self
            .registry
            .list()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let could = registered.iter().any(|dp| {
            let mut available = dp.clone();
            available.state = InstanceState::Available;
            available.can_handle(request)
        });
        if !could {
            return self.fail(inner, run, reason).await;
        }
        if lock(&self.waiting).insert(run.id.clone()) {
            inner
                .emit(
                    &run.transfer,
                    Some(&run.id),
                    "Warning",
                    "NoDataPlaneAvailable",
                    format!("run {} waits for a data plane: {reason}", run.id),
                    json!({}),
                )
                .await;
        }
        Ok(())
    }

    /// Ends a run that no data plane can ever execute as it stands.
    async fn fail(&self, inner: &Arc<Inner>, run: &RunRecord, reason: &str) -> Result<()> {
        let mut run = run.clone();
        run.phase = "ConfigurationError".into();
        run.finished_at = Some(now_ms());
        run.error = Some(reason.to_string());
        inner.store.put_run(&run).await?;
        lock(&self.waiting).remove(&run.id);
        inner
            .emit(
                &run.transfer,
                Some(&run.id),
                "Warning",
                "RunFailed",
                format!("run {} failed (ConfigurationError): {reason}", run.id),
                json!({"phase": "ConfigurationError", "error": reason}),
            )
            .await;
        inner.refresh_status(&run.transfer).await
    }
}

/// What a transfer's runs need from a data plane, and the strategy it asks for.
pub fn run_request(record: &TransferRecord) -> (RunRequest, Option<String>) {
    let spec = &record.manifest["spec"];
    let command = record.manifest["kind"] == "Command";
    let kind = |side: &str| {
        if command {
            return "command".to_string();
        }
        spec[side]["type"]
            .as_str()
            .map(|t| crate::selector::canonical_type(t).unwrap_or(t).to_string())
            .unwrap_or_default()
    };
    let mut request = RunRequest::new(kind("source"), kind("destination"));
    if let Some(labels) = spec["dataPlane"]["labels"].as_object() {
        for (k, v) in labels {
            if let Some(v) = v.as_str() {
                request = request.with_label(k.clone(), v);
            }
        }
    }
    request.transfer = Some(record.name.clone());
    request.engine = crate::engines::route::ExecutionRequest::of_spec(spec)
        .named()
        .map(str::to_string);
    let strategy = spec["dataPlane"]["strategy"].as_str().map(str::to_string);
    (request, strategy)
}
