//! Notifications: messages about pipeline runs, sent to the channels the server's settings
//! name, as each pipeline's `notify` rules ask.
//!
//! ```yaml
//! notifications:
//!   publicUrl: https://ferry.example.com      # links in messages
//!   repeatSeconds: 3600                       # identical failures notify once per hour
//!   channels:
//!   - {name: ops-mail, email: {server: "smtp://mail.example.com:587", from: ferry@example.com,
//!      to: [ops@example.com], username: ferry, password: env:SMTP_PASSWORD}}
//!   - {name: team-chat, slack: {url: env:SLACK_WEBHOOK_URL}}
//!   - {name: ops-hook, webhook: {url: "https://hooks.example.com/ferry", token: env:HOOK_TOKEN}}
//! ```
//!
//! Channels: e-mail over SMTP (STARTTLS unless `tls: none`; `tls: wrapper` for port 465;
//! `caFile` to trust a private CA), a Slack-compatible incoming webhook (a formatted message),
//! and a plain webhook (the message as JSON). Sending never blocks a run: each channel has
//! its own queue and task, retries with backoff, and counts what it sent, gave up and
//! dropped, for the metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::controller::now_ms;
use crate::retry::Backoff;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotificationsConfig {
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// The server's URL as people reach it, for links in messages.
    pub public_url: Option<String>,
    /// The same failure (pipeline, task, reason, error) notifies once in this many
    /// seconds (default 3600).
    pub repeat_seconds: Option<u64>,
    /// Attempts per message (default 5) and the first wait between them in seconds
    /// (default 1, doubling).
    pub attempts: Option<u32>,
    pub retry_seconds: Option<f64>,
}

/// One channel: a name and exactly one of `email`, `slack`, `webhook`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChannelConfig {
    pub name: String,
    pub email: Option<EmailConfig>,
    pub slack: Option<HookConfig>,
    pub webhook: Option<HookConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmailConfig {
    /// `smtp://host[:port]` (port 587 unless given).
    pub server: String,
    /// `starttls` (default: required), `wrapper` (TLS from the first byte, port 465), or
    /// `none` (plain text: loopback relays only).
    pub tls: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<String>,
    pub username: Option<String>,
    /// A secret reference (`env:NAME`, `file:PATH`).
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HookConfig {
    /// The URL, or a secret reference to it (`env:NAME`): incoming-webhook URLs are
    /// secrets.
    pub url: String,
    /// A secret reference whose value is sent as a bearer token.
    pub token: Option<String>,
}

/// What a notification says.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub pipeline: String,
    pub run: String,
    pub task: Option<String>,
    pub reason: String,
    pub severity: String,
    pub message: String,
    pub error: Option<String>,
    pub link: Option<String>,
}

impl Note {
    fn subject(&self) -> String {
        match &self.task {
            Some(task) => format!("[ferry] {} {}: task {task}", self.reason, self.pipeline),
            None => format!("[ferry] {} {}", self.reason, self.pipeline),
        }
    }

    fn text(&self) -> String {
        let mut text = format!(
            "{}\n\nPipeline: {}\nRun: {}\n",
            self.message, self.pipeline, self.run
        );
        if let Some(task) = &self.task {
            text.push_str(&format!("Task: {task}\n"));
        }
        if let Some(error) = &self.error {
            text.push_str(&format!("Error: {error}\n"));
        }
        if let Some(link) = &self.link {
            text.push_str(&format!("\n{link}\n"));
        }
        text
    }
}

/// What each channel did, for the metrics.
#[derive(Default)]
pub struct ChannelCounts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub suppressed: AtomicU64,
}

struct Channel {
    queue: mpsc::Sender<Note>,
    counts: Arc<ChannelCounts>,
}

/// The running channels.
pub struct Notifier {
    channels: HashMap<String, Channel>,
    public_url: Option<String>,
    repeat_ms: i64,
    /// When each (channel, pipeline, task, reason, error) last notified.
    recent: Mutex<HashMap<String, i64>>,
}

enum Sender {
    Email(Box<Email>),
    Slack(Hook),
    Webhook(Hook),
}

struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

struct Hook {
    url: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Notifier {
    /// Checks every channel (secrets resolved now, so a missing one stops the start) and
    /// starts one sending task each. Errors name `notifications.channels[i]`.
    pub fn start(config: NotificationsConfig) -> Result<Notifier, String> {
        let backoff = Backoff {
            initial: Duration::from_secs_f64(
                config.retry_seconds.unwrap_or(1.0).clamp(0.01, 600.0),
            ),
            max: Duration::from_secs(60),
            factor: 2.0,
        };
        let attempts = config.attempts.unwrap_or(5).clamp(1, 100);
        let mut channels = HashMap::new();
        for (i, c) in config.channels.iter().enumerate() {
            let at = format!("notifications.channels[{i}]");
            if crate::resource::check_name(&c.name).is_err() {
                return Err(format!("{at}.name: a lower-case name such as ops-mail"));
            }
            if channels.contains_key(&c.name) {
                return Err(format!("{at}.name: channel {} is named twice", c.name));
            }
            let sender = sender(&at, c)?;
            let (queue, notes) = mpsc::channel(256);
            let counts = Arc::new(ChannelCounts::default());
            tokio::spawn(deliver(
                c.name.clone(),
                sender,
                notes,
                counts.clone(),
                backoff,
                attempts.max(1),
            ));
            channels.insert(c.name.clone(), Channel { queue, counts });
        }
        Ok(Notifier {
            channels,
            public_url: config
                .public_url
                .map(|u| u.trim_end_matches('/').to_string()),
            repeat_ms: config.repeat_seconds.unwrap_or(3600) as i64 * 1000,
            recent: Mutex::new(HashMap::new()),
        })
    }

    pub fn has(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    pub fn link(&self, pipeline: &str, run: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{u}/v1/pipelines/{pipeline}/runs/{run}"))
    }

    /// Queues `note` for `channel`, unless the same failure went there lately; never
    /// waits (a full queue drops it, counted).
    pub fn send(&self, channel: &str, note: Note) {
        let Some(c) = self.channels.get(channel) else {
            return;
        };
        if note.severity == "Warning" {
            let key = format!(
                "{channel}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
                note.pipeline,
                note.task.as_deref().unwrap_or(""),
                note.reason,
                note.error.as_deref().unwrap_or("")
            );
            let now = now_ms();
            let mut recent = crate::controller::lock(&self.recent);
            recent.retain(|_, t| now - *t < self.repeat_ms);
            if recent.contains_key(&key) {
                c.counts.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            recent.insert(key, now);
        }
        if c.queue.try_send(note).is_err() {
            c.counts.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel, "notification dropped: the channel's queue is full");
        }
    }

    /// Per channel: sent, failed (given up), dropped, suppressed (repeats).
    pub fn counts(&self) -> Vec<(String, [u64; 4])> {
        let mut all: Vec<(String, [u64; 4])> = self
            .channels
            .iter()
            .map(|(name, c)| {
                let n = &c.counts;
                (
                    name.clone(),
                    [
                        n.sent.load(Ordering::Relaxed),
                        n.failed.load(Ordering::Relaxed),
                        n.dropped.load(Ordering::Relaxed),
                        n.suppressed.load(Ordering::Relaxed),
                    ],
                )
            })
            .collect();
        all.sort();
        all
    }
}

fn secret(at: &str, reference: &str) -> Result<String, String> {
    if !(reference.starts_with("env:") || reference.starts_with("file:")) {
        return Ok(reference.to_string());
    }
    let bytes = ferry_core::secret::resolve_secret(reference).map_err(|e| format!("{at}: {e}"))?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("{at}: the secret is not UTF-8 text"))
}

fn sender(at: &str, c: &ChannelConfig) -> Result<Sender, String> {
    let given = [c.email.is_some(), c.slack.is_some(), c.webhook.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(format!("{at}: exactly one of email, slack or webhook"));
    }
    let hook = |h: &HookConfig, field: &str| -> Result<Hook, String> {
        let url = secret(&format!("{at}.{field}.url"), &h.url)?;
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| format!("{at}.{field}.url: not a valid URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{at}.{field}.url: expected an http or https URL"));
        }
        let token = h
            .token
            .as_deref()
            .map(|t| secret(&format!("{at}.{field}.token"), t))
            .transpose()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("{at}: no HTTP client: {e}"))?;
        Ok(Hook { url, token, client })
    };
    if let Some(h) = &c.slack {
        return Ok(Sender::Slack(hook(h, "slack")?));
    }
    if let Some(h) = &c.webhook {
        return Ok(Sender::Webhook(hook(h, "webhook")?));
    }
    let e = c.email.as_ref().expect("one is given");
    let at = format!("{at}.email");
    let url = reqwest::Url::parse(&e.server)
        .ok()
        .filter(|u| u.scheme() == "smtp" && u.host_str().is_some())
        .ok_or_else(|| format!("{at}.server: expected smtp://host[:port]"))?;
    let host = url.host_str().unwrap_or_default().to_string();
    let mut tls = TlsParameters::builder(host.clone());
    if let Some(path) = &e.ca_file {
        let pem = std::fs::read(path).map_err(|err| format!("{at}.caFile: {path}: {err}"))?;
        let cert =
            Certificate::from_pem(&pem).map_err(|err| format!("{at}.caFile: {path}: {err}"))?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = || {
        tls.clone()
            .build_rustls()
            .map_err(|err| format!("{at}: TLS: {err}"))
    };
    let (mode, default_port) = match e.tls.as_deref().unwrap_or("starttls") {
        "starttls" => (Tls::Required(tls()?), 587),
        "wrapper" => (Tls::Wrapper(tls()?), 465),
        "none" => (Tls::None, 25),
        other => {
            return Err(format!(
                "{at}.tls: '{other}' is not starttls, wrapper or none"
            ))
        }
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(url.port().unwrap_or(default_port))
        .tls(mode)
        .timeout(Some(Duration::from_secs(20)));
    if let Some(user) = &e.username {
        let password = match &e.password {
            Some(p) => secret(&format!("{at}.password"), p)?,
            None => return Err(format!("{at}.password: required with a username")),
        };
        transport = transport.credentials(Credentials::new(user.clone(), password));
    }
    let mailbox = |field: &str, text: &str| {
        text.parse::<Mailbox>()
            .map_err(|err| format!("{at}.{field}: '{text}': {err}"))
    };
    if e.to.is_empty() {
        return Err(format!("{at}.to: at least one address"));
    }
    Ok(Sender::Email(Box::new(Email {
        transport: transport.build(),
        from: mailbox("from", &e.from)?,
        to: e
            .to
            .iter()
            .map(|t| mailbox("to", t))
            .collect::<Result<_, _>>()?,
    })))
}

async fn deliver(
    name: String,
    sender: Sender,
    mut notes: mpsc::Receiver<Note>,
    counts: Arc<ChannelCounts>,
    backoff: Backoff,
    attempts: u32,
) {
    while let Some(note) = notes.recv().await {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match send_one(&sender, &note).await {
                Ok(()) => {
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if attempt >= attempts => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(channel = %name, "notification given up after {attempt} attempts: {e}");
                    break;
                }
                Err(e) => {
                    tracing::debug!(channel = %name, "notification attempt {attempt} failed: {e}");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
            }
        }
    }
}

async fn send_one(sender: &Sender, note: &Note) -> Result<(), String> {
    match sender {
        Sender::Email(email) => {
            let Email {
                transport,
                from,
                to,
            } = email.as_ref();
            let mut mail = Mail::builder().from(from.clone()).subject(note.subject());
            for t in to {
                mail = mail.to(t.clone());
            }
            let mail = mail
                .header(ContentType::TEXT_PLAIN)
                .body(note.text())
                .map_err(|e| e.to_string())?;
            transport
                .send(mail)
                .await
                .map(|_| ())
                .map_err(|e| ferry_core::error::one_line(&e.to_string()))
        }
        Sender::Slack(hook) => {
            let mut fields = vec![
                json!({"type": "mrkdwn", "text": format!("*Pipeline*\n{}", note.pipeline)}),
                json!({"type": "mrkdwn", "text": format!("*Run*\n{}", note.run)}),
            ];
            if let Some(task) = &note.task {
                fields.push(json!({"type": "mrkdwn", "text": format!("*Task*\n{task}")}));
            }
            let mut blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": note.subject()}}),
                json!({"type": "section", "text": {"type": "mrkdwn", "text": note.message}, "fields": fields}),
            ];
            if let Some(error) = &note.error {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Error*\n```{error}```")}}));
            }
            if let Some(link) = &note.link {
                blocks.push(json!({"type": "actions", "elements": [
                    {"type": "button", "text": {"type": "plain_text", "text": "Open the run"}, "url": link}]}));
            }
            post(hook, &json!({"text": note.subject(), "blocks": blocks})).await
        }
        Sender::Webhook(hook) => post(hook, &json!(note)).await,
    }
}

async fn post(hook: &Hook, body: &serde_json::Value) -> Result<(), String> {
    let mut request = hook.client.post(&hook.url).json(body);
    if let Some(token) = &hook.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| ferry_core::error::one_line(&e.without_url().to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status().as_u16()))
    }
}
