//! Event delivery to webhooks, kept off the transfer path: `send` only enqueues, and each
//! webhook has its own task, queue and retries, so a slow or dead endpoint delays nobody.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::retry::Backoff;

/// One webhook as configured: where events go and which of them.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// An http or https URL; each event is POSTed to it as JSON.
    pub url: String,
    /// Event reasons to deliver; empty delivers all.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// A secret reference (`env:NAME`, `file:PATH`) whose value is sent as a bearer token.
    pub token: Option<String>,
    /// Per-request timeout in milliseconds (default 10 s).
    pub timeout_ms: Option<u64>,
}

/// How deliveries are paced; the defaults suit a service, tests shrink them.
#[derive(Clone, Debug)]
pub struct DeliveryOptions {
    /// Wait between attempts at one event.
    pub backoff: Backoff,
    /// Attempts per event before it is given up (at least 1).
    pub attempts: u32,
    /// Events each webhook may hold; more are dropped rather than wait.
    pub queue: usize,
    /// Request timeout for webhooks without `timeoutMs`.
    pub timeout: Duration,
}

impl Default for DeliveryOptions {
    /// 5 attempts over about 15 s, 1024 queued events, 10 s per request.
    fn default() -> Self {
        DeliveryOptions {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(30),
                factor: 2.0,
            },
            attempts: 5,
            queue: 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A warning about a full queue is logged for the first dropped event and then once per
/// this many, so a dead webhook cannot flood the log.
const DROP_WARN_EVERY: u64 = 1000;

/// The running webhooks. Dropping it lets each task finish its queue in the background;
/// [`Webhooks::shutdown`] waits for that.
pub struct Webhooks {
    hooks: Vec<Hook>,
    counters: Arc<Counters>,
    closing: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The caller's side of one webhook.
struct Hook {
    label: String,
    reasons: Vec<String>,
    queue: mpsc::Sender<Arc<[u8]>>,
    dropped: AtomicU64,
}

/// The delivery task's side of one webhook.
struct Target {
    label: String,
    url: Url,
    token: Option<String>,
    timeout: Duration,
    client: Client,
    options: DeliveryOptions,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Webhooks {
    /// Checks `configs` and starts one delivery task per webhook with the default
    /// [`DeliveryOptions`]. Must run inside a tokio runtime. Errors name `webhooks[i]`.
    pub fn start(configs: Vec<WebhookConfig>) -> Result<Webhooks, String> {
        Self::start_with(configs, DeliveryOptions::default())
    }

    /// [`Webhooks::start`] with explicit delivery options.
    pub fn start_with(
        configs: Vec<WebhookConfig>,
        options: DeliveryOptions,
    ) -> Result<Webhooks, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "webhooks: must be started inside the tokio runtime".to_string())?;
        let mut checked = Vec::with_capacity(configs.len());
        for (i, config) in configs.into_iter().enumerate() {
            checked.push(check(i, config)?);
        }
        let client = Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            // A redirected POST turns into a GET; a moved webhook is a failure to fix.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("webhooks: cannot create an HTTP client: {e}"))?;
        let counters = Arc::new(Counters::default());
        let (closing, _) = watch::channel(false);
        let mut hooks = Vec::with_capacity(checked.len());
        let mut tasks = Vec::with_capacity(checked.len());
        for (label, url, config) in checked {
            let (queue, events) = mpsc::channel(options.queue.max(1));
            let target = Target {
                label: label.clone(),
                url,
                token: config.token,
                timeout: config
                    .timeout_ms
                    .map_or(options.timeout, Duration::from_millis),
                client: client.clone(),
                options: options.clone(),
                counters: counters.clone(),
            };
            tasks.push(runtime.spawn(target.run(events, closing.subscribe())));
            hooks.push(Hook {
                label,
                reasons: config.reasons,
                queue,
                dropped: AtomicU64::new(0),
            });
        }
        Ok(Webhooks {
            hooks,
            counters,
            closing,
            tasks: Mutex::new(tasks),
        })
    }

    /// Queues `event` for every webhook that wants `reason`, without waiting: a full queue
    /// drops the event (counted in [`Webhooks::dropped`]) rather than slow the caller.
    pub fn send(&self, event: &serde_json::Value, reason: &str) {
        let mut body: Option<Arc<[u8]>> = None;
        for hook in &self.hooks {
            if !hook.reasons.is_empty() && !hook.reasons.iter().any(|r| r == reason) {
                continue;
            }
            let body = match &body {
                Some(b) => b.clone(),
                None => match serde_json::to_vec(event) {
                    Ok(bytes) => body.insert(Arc::from(bytes)).clone(),
                    Err(e) => {
                        tracing::warn!(reason, error = %e, "webhook event is not JSON; not sent");
                        return;
                    }
                },
            };
            if let Err(e) = hook.queue.try_send(body) {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                let n = hook.dropped.fetch_add(1, Ordering::Relaxed);
                if n % DROP_WARN_EVERY == 0 {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "its queue is full",
                        mpsc::error::TrySendError::Closed(_) => "it has stopped",
                    };
                    tracing::warn!(
                        webhook = %hook.label,
                        dropped = n + 1,
                        "webhook event dropped because {why}"
                    );
                }
            }
        }
    }

    /// Events a webhook accepted (a 2xx answer).
    pub fn delivered(&self) -> u64 {
        self.counters.delivered.load(Ordering::Relaxed)
    }

    /// Events given up after every attempt failed.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Events never attempted because a queue was full or stopped.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Stops taking events and gives the queued ones up to `grace` to be delivered (or
    /// given up), then stops the tasks. True when every queue finished in time; events
    /// sent afterwards count as dropped.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.closing.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let finished = tokio::time::timeout(grace, futures::future::join_all(tasks))
            .await
            .is_ok();
        if !finished {
            aborts.iter().for_each(|a| a.abort());
        }
        finished
    }
}

/// Validates `webhooks[i]`, returning its log label and URL.
fn check(i: usize, config: WebhookConfig) -> Result<(String, Url, WebhookConfig), String> {
    let name = format!("webhooks[{i}]");
    // The URL is never echoed: webhook URLs often carry their own secret.
    let url =
        Url::parse(config.url.trim()).map_err(|e| format!("{name}.url: not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{name}.url: expected an http or https URL, not {}:",
            url.scheme()
        ));
    }
    if config.timeout_ms == Some(0) {
        return Err(format!("{name}.timeoutMs: must be at least 1"));
    }
    if let Some(reference) = &config.token {
        // Resolved now so a missing secret stops the start, and again per event so a
        // rotated secret is picked up.
        bearer(reference).map_err(|e| format!("{name}.token: {e}"))?;
    }
    let label = format!("{name} ({})", url.host_str().unwrap_or("?"));
    Ok((label, url, config))
}

/// The `Authorization` header for the secret `reference` names.
fn bearer(reference: &str) -> Result<HeaderValue, String> {
    let secret = ferry_core::secret::resolve_secret(reference).map_err(|e| e.to_string())?;
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(&secret);
    let mut header = HeaderValue::from_bytes(&value)
        .map_err(|_| format!("the secret '{reference}' names is not a valid header value"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// A request error with its causes, on one line and without the URL (it may hold a secret).
pub(crate) fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Target {
    /// Delivers queued events one at a time, in order, until the queue closes. The token is
    /// resolved per event (a small, local read) so a rotated secret takes effect.
    async fn run(self, mut events: mpsc::Receiver<Arc<[u8]>>, mut closing: watch::Receiver<bool>) {
        let mut closed = false;
        loop {
            let event = tokio::select! {
                biased;
                event = events.recv() => event,
                // Also when `Webhooks` is gone: either way, finish what is queued.
                _ = closing.changed(), if !closed => {
                    closed = true;
                    events.close();
                    continue;
                }
            };
            match event {
                Some(body) => self.deliver(&body).await,
                None => break,
            }
        }
    }

    async fn deliver(&self, body: &[u8]) {
        let attempts = self.options.attempts.max(1);
        let auth = match self.token.as_deref().map(bearer).transpose() {
            Ok(auth) => auth,
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(webhook = %self.label, error = %e, "webhook event not sent");
                return;
            }
        };
        let build = || {
            let mut request = self
                .client
                .post(self.url.clone())
                .timeout(self.timeout)
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
            if let Some(auth) = &auth {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            request
        };
        match post_with_retries(build, attempts, &self.options.backoff, false, &self.label).await {
            Ok(()) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    webhook = %self.label,
                    attempts,
                    %error,
                    "webhook event given up"
                );
            }
        }
    }
}

/// Sends the request `build` makes until it succeeds, at most `attempts` times (at least
/// once), waiting `backoff` between tries. With `refusal_is_final`, an answer the receiver
/// will give again (a 4xx other than 429) ends it at once. The error is one line, without
/// the URL.
pub(crate) async fn post_with_retries(
    build: impl Fn() -> reqwest::RequestBuilder,
    attempts: u32,
    backoff: &Backoff,
    refusal_is_final: bool,
    label: &str,
) -> Result<(), String> {
    let attempts = attempts.max(1);
    for attempt in 1..=attempts {
        let error = match build().send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                let error = format!("HTTP status {status}");
                if refusal_is_final && status.is_client_error() && status.as_u16() != 429 {
                    return Err(error);
                }
                error
            }
            Err(e) => describe(e),
        };
        if attempt == attempts {
            return Err(error);
        }
        let wait = backoff.delay(attempt);
        tracing::debug!(target = %label, attempt, %error, ?wait, "delivery failed; retrying");
        tokio::time::sleep(wait).await;
    }
    Err("no attempt made".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, HeaderName, StatusCode};
    use serde_json::{json, Value};
    use tokio::time::timeout;

    use super::*;

    /// The longest any test waits for something that should happen at once.
    const WAIT: Duration = Duration::from_secs(10);

    /// A request as the test server saw it.
    #[derive(Debug)]
    struct Seen {
        auth: Option<String>,
        content_type: Option<String>,
        body: Value,
    }

    /// How the test server answers.
    #[derive(Clone, Copy)]
    enum Answer {
        /// These statuses for the first requests, then 200.
        Statuses(&'static [u16]),
        /// Never.
        Hang,
    }

    struct Server {
        answer: Answer,
        requests: AtomicUsize,
        seen: mpsc::UnboundedSender<Seen>,
    }

    async fn handle(
        State(server): State<Arc<Server>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let n = server.requests.fetch_add(1, Ordering::SeqCst);
        let header = |name: HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let _ = server.seen.send(Seen {
            auth: header(AUTHORIZATION),
            content_type: header(CONTENT_TYPE),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        match server.answer {
            Answer::Statuses(list) => {
                StatusCode::from_u16(list.get(n).copied().unwrap_or(200)).unwrap()
            }
            Answer::Hang => {
                std::future::pending::<()>().await;
                StatusCode::OK
            }
        }
    }

    /// A webhook receiver on a free local port: its URL and the requests it sees.
    async fn serve(answer: Answer) -> (String, mpsc::UnboundedReceiver<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, requests) = mpsc::unbounded_channel();
        let server = Arc::new(Server {
            answer,
            requests: AtomicUsize::new(0),
            seen,
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(server);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), requests)
    }

    async fn next(requests: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        timeout(WAIT, requests.recv())
            .await
            .expect("a request in time")
            .expect("the server runs")
    }

    fn hook(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.to_string(),
            reasons: Vec::new(),
            token: None,
            timeout_ms: None,
        }
    }

    fn quick() -> DeliveryOptions {
        DeliveryOptions {
            backoff: Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
                factor: 2.0,
            },
            ..DeliveryOptions::default()
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_with_the_token() {
        let (url, mut requests) = serve(Answer::Statuses(&[])).await;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "s3cr3t\n").unwrap();
        let config = WebhookConfig {
            token: Some(format!("file:{}", token_file.display())),
            ..hook(&url)
        };
        let hooks = Webhooks::start_with(vec![config], quick()).unwrap();

        for seq in 0..50 {
            hooks.send(&json!({ "seq": seq }), "RunSucceeded");
        }
        for seq in 0..50 {
            let seen = next(&mut requests).await;
            assert_eq!(seen.body, json!({ "seq": seq }));
            assert_eq!(seen.auth.as_deref(), Some("Bearer s3cr3t"));
            assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        }
        assert!(hooks.shutdown(WAIT).await);
        assert_eq!(
            (hooks.delivered(), hooks.failed(), hooks.dropped()),
            (50, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_failed_delivery_is_retried() {
        let (url, mut requests) = serve(Answer::Statuses(&[500, 503])).await;
        let hooks = Webhooks::start_with(vec![hook(&url)], quick()).unwrap();

        hooks.send(&json!({ "run": 7 }), "RunFailed");
        for _ in 0..3 {
            assert_eq!(next(&mut requests).await.body, json!({ "run": 7 }));
        }
        assert!(hooks.shutdown(WAIT).await);
        assert_eq!((hooks.delivered(), hooks.failed()), (1, 0));
        assert!(requests.try_recv().is_err(), "no request after success");
    }

    #[tokio::test]
    async fn an_event_is_given_up_after_the_last_attempt() {
        let (url, mut requests) = serve(Answer::Statuses(&[500; 10])).await;
        let options = DeliveryOptions {
            attempts: 3,
            ..quick()
        };
        let hooks = Webhooks::start_with(vec![hook(&url)], options).unwrap();

        hooks.send(&json!({ "run": 1 }), "RunFailed");
        for _ in 0..3 {
            next(&mut requests).await;
        }
        assert!(hooks.shutdown(WAIT).await);
        assert_eq!((hooks.delivered(), hooks.failed()), (0, 1));
        assert!(requests.try_recv().is_err(), "no fourth attempt");
    }

    #[tokio::test]
    async fn a_dead_webhook_never_blocks_the_caller() {
        // A port that was free a moment ago refuses connections.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let hooks = Webhooks::start(vec![hook(&format!("http://{addr}/hook"))]).unwrap();

        let started = Instant::now();
        for seq in 0..10_000 {
            hooks.send(&json!({ "seq": seq }), "RunSucceeded");
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "10,000 sends took {took:?}");
        // The queue holds 1024; the rest could not wait.
        assert!(hooks.dropped() >= 10_000 - 1025, "{}", hooks.dropped());
        // The grace period bounds shutdown even while an event is being retried.
        assert!(!hooks.shutdown(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_hung_webhook_does_not_delay_another() {
        let (hung_url, mut hung) = serve(Answer::Hang).await;
        let (url, mut requests) = serve(Answer::Statuses(&[])).await;
        let hooks = Webhooks::start_with(vec![hook(&hung_url), hook(&url)], quick()).unwrap();

        for seq in 0..3 {
            hooks.send(&json!({ "seq": seq }), "RunSucceeded");
        }
        assert_eq!(next(&mut hung).await.body, json!({ "seq": 0 }));
        for seq in 0..3 {
            assert_eq!(next(&mut requests).await.body, json!({ "seq": seq }));
        }
        assert!(
            hung.try_recv().is_err(),
            "the hung webhook is still on its first event"
        );
    }

    #[tokio::test]
    async fn reasons_select_events() {
        let (failures_url, mut failures) = serve(Answer::Statuses(&[])).await;
        let (all_url, mut all) = serve(Answer::Statuses(&[])).await;
        let failures_only = WebhookConfig {
            reasons: vec!["RunFailed".to_string()],
            ..hook(&failures_url)
        };
        let hooks = Webhooks::start_with(vec![failures_only, hook(&all_url)], quick()).unwrap();

        hooks.send(&json!({ "reason": "RunStarted" }), "RunStarted");
        hooks.send(&json!({ "reason": "RunFailed" }), "RunFailed");
        hooks.send(&json!({ "reason": "RunSucceeded" }), "RunSucceeded");
        // Deliveries are in order, so a RunStarted sent to it would have come first.
        assert_eq!(
            next(&mut failures).await.body,
            json!({ "reason": "RunFailed" })
        );
        for reason in ["RunStarted", "RunFailed", "RunSucceeded"] {
            assert_eq!(next(&mut all).await.body, json!({ "reason": reason }));
        }
        assert!(hooks.shutdown(WAIT).await);
        assert!(failures.try_recv().is_err());
        assert_eq!(hooks.delivered(), 4);
    }

    #[tokio::test]
    async fn bad_settings_are_refused_by_name() {
        let start = |configs: Vec<WebhookConfig>| match Webhooks::start(configs) {
            Ok(_) => panic!("started"),
            Err(e) => e,
        };
        let good = hook("https://hooks.example.com/a");

        let e = start(vec![good.clone(), hook("ftp://example.com/SECRET")]);
        assert!(e.starts_with("webhooks[1].url: "), "{e}");
        assert!(e.contains("http or https") && !e.contains("SECRET"), "{e}");
        let e = start(vec![hook("hooks.example.com/SECRET")]);
        assert!(e.starts_with("webhooks[0].url: not a valid URL"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");

        let e = start(vec![WebhookConfig {
            timeout_ms: Some(0),
            ..good.clone()
        }]);
        assert!(e.starts_with("webhooks[0].timeoutMs"), "{e}");

        let e = start(vec![WebhookConfig {
            token: Some("env:FERRY_TEST_SURELY_UNSET_WEBHOOK_TOKEN".to_string()),
            ..good.clone()
        }]);
        assert!(e.starts_with("webhooks[0].token: "), "{e}");
        assert!(e.contains("is not set"), "{e}");

        assert!(Webhooks::start(vec![good]).is_ok());
        assert!(Webhooks::start(Vec::new()).is_ok());
    }

    #[test]
    fn start_needs_a_runtime() {
        let e = Webhooks::start(Vec::new()).err().unwrap();
        assert!(e.contains("tokio runtime"), "{e}");
    }

    #[test]
    fn config_fields_are_camel_case_and_checked() {
        let config: WebhookConfig = serde_json::from_value(json!({
            "url": "https://hooks.example.com/a",
            "reasons": ["RunFailed"],
            "token": "env:HOOK_TOKEN",
            "timeoutMs": 2500
        }))
        .unwrap();
        assert_eq!(config.timeout_ms, Some(2500));
        assert_eq!(config.reasons, ["RunFailed"]);
        let minimal: WebhookConfig =
            serde_json::from_value(json!({ "url": "https://hooks.example.com/a" })).unwrap();
        assert!(minimal.reasons.is_empty() && minimal.token.is_none());

        let e = serde_json::from_value::<WebhookConfig>(json!({
            "url": "https://hooks.example.com/a",
            "retries": 3
        }))
        .unwrap_err();
        assert!(e.to_string().contains("retries"), "{e}");
    }
}
