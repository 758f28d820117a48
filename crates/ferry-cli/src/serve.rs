//! `ferry serve`: the control plane and an embedded data plane in one process.
//!
//! Settings come from a YAML file, then `FERRY_*` environment variables, then flags; each
//! later source overrides the earlier ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ferry_control::dispatch::Dispatcher;
use ferry_control::retry::Backoff;
use ferry_control::secrets::{SecretResolver, SecretsConfig};
use ferry_control::webhook::{WebhookConfig, Webhooks};
use ferry_control::{ControlConfig, Controller, Role};
use ferry_core::{Error, Result};
use ferry_state::control::{PostgresControlStore, SqliteControlStore};
use ferry_state::ControlStore;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where `ferry serve` writes the token it made when none is configured, in its data dir.
pub const TOKEN_FILE: &str = "api-token";

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A YAML settings file (listen, dataDir, store, tokens, webhooks, secrets, …).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080; env FERRY_LISTEN].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Where the embedded store and checkpoints live [default: ~/.local/state/ferry/server;
    /// env FERRY_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// `sqlite` (embedded, the default) or a PostgreSQL URL shared by several servers
    /// [env FERRY_STORE].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Runs executed at once [default: 4; env FERRY_MAX_ACTIVE_RUNS].
    #[arg(long, value_name = "N")]
    max_active_runs: Option<usize>,
    /// `standalone` (execute runs here, the default) or `control` (dispatch them to the
    /// registered data planes) [env FERRY_ROLE].
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// The URL other processes reach this one at, for data plane callbacks
    /// [default: http://LISTEN; env FERRY_ADVERTISE_URL].
    #[arg(long, value_name = "URL")]
    advertise_url: Option<String>,
}

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    /// API bearer tokens as secret references (`env:NAME`, `file:PATH`).
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    webhooks: Vec<WebhookConfig>,
    /// Channels pipelines notify (e-mail, Slack-compatible and plain webhooks).
    #[serde(default)]
    notifications: ferry_control::notify::NotificationsConfig,
    #[serde(default)]
    secrets: SecretsConfig,
    max_active_runs: Option<usize>,
    lease_seconds: Option<u64>,
    retry: Option<RetrySettings>,
    /// `standalone` or `control` (`ferry serve`); `data` (`ferry dataplane`).
    role: Option<String>,
    /// The URL other processes reach this one at.
    advertise_url: Option<String>,
    /// Stable name of this process (the owner of the runs it claims); made once and kept
    /// in the data directory when not set.
    instance_id: Option<String>,
    /// Data planes this control plane knows from its configuration, and the default
    /// selection strategy.
    #[serde(default)]
    selector: ferry_control::selector::SelectorConfig,
    /// `ferry dataplane`: how it registers with its control plane.
    #[serde(default)]
    dataplane: crate::dataplane::DataplaneSettings,
    /// External transfer engines runs may be delegated to (`ferry serve` standalone and
    /// `ferry dataplane`).
    #[serde(default)]
    engines: ferry_control::engines::EnginesConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RetrySettings {
    initial_seconds: Option<f64>,
    max_seconds: Option<f64>,
    factor: Option<f64>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn bad(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid_option(name, reason)
}

impl ServeArgs {
    fn settings(&self) -> Result<Settings> {
        let mut s = match &self.config {
            Some(path) => {
                let shown = format!("--config {}", path.display());
                let text = std::fs::read_to_string(path).map_err(|e| bad(&shown, e))?;
                serde_norway::from_str(&text)
                    .map_err(|e| bad(&shown, ferry_core::error::one_line(&e.to_string())))?
            }
            None => Settings::default(),
        };
        if let Some(v) = env("FERRY_LISTEN") {
            s.listen = Some(v);
        }
        if let Some(v) = env("FERRY_DATA_DIR") {
            s.data_dir = Some(v.into());
        }
        if let Some(v) = env("FERRY_STORE") {
            s.store = Some(v);
        }
        if let Some(v) = env("FERRY_MAX_ACTIVE_RUNS") {
            s.max_active_runs = Some(
                v.parse()
                    .map_err(|_| bad("FERRY_MAX_ACTIVE_RUNS", "not a number"))?,
            );
        }
        if env("FERRY_API_TOKEN").is_some() {
            s.tokens.push("env:FERRY_API_TOKEN".into());
        }
        s.env_overrides()?;
        if let Some(v) = &self.listen {
            s.listen = Some(v.clone());
        }
        if let Some(v) = &self.data_dir {
            s.data_dir = Some(v.clone());
        }
        if let Some(v) = &self.store {
            s.store = Some(v.clone());
        }
        if let Some(v) = self.max_active_runs {
            s.max_active_runs = Some(v);
        }
        if let Some(v) = &self.role {
            s.role = Some(v.clone());
        }
        if let Some(v) = &self.advertise_url {
            s.advertise_url = Some(v.clone());
        }
        Ok(s)
    }
}

impl Settings {
    /// The settings every service process reads from `FERRY_*` variables.
    fn env_overrides(&mut self) -> Result<()> {
        for (name, field) in [
            ("FERRY_ROLE", &mut self.role),
            ("FERRY_ADVERTISE_URL", &mut self.advertise_url),
            ("FERRY_INSTANCE_ID", &mut self.instance_id),
        ] {
            if let Some(v) = env(name) {
                *field = Some(v);
            }
        }
        if let Some(v) = env("FERRY_LEASE_SECONDS") {
            self.lease_seconds = Some(
                v.parse()
                    .map_err(|_| bad("FERRY_LEASE_SECONDS", "not a number"))?,
            );
        }
        self.selector = std::mem::take(&mut self.selector)
            .merge_env(std::env::vars())
            .map_err(|e| bad("FERRY_SELECTOR__…", e))?;
        self.engines = ferry_control::engines::config::merge_env(
            std::mem::take(&mut self.engines),
            std::env::vars(),
        )
        .map_err(|e| bad("FERRY_ENGINES__…", e))?;
        self.dataplane.env_overrides()
    }
}

/// The engines the settings list, checked; a control plane executes nothing, so it has none.
fn engines(
    configs: &ferry_control::engines::EnginesConfig,
    role: Role,
) -> Result<ferry_control::engines::Engines> {
    if configs.is_empty() {
        return Ok(Default::default());
    }
    if role == Role::Control {
        return Err(bad(
            "engines",
            "a control plane executes no runs; give the engines to its data planes",
        ));
    }
    let errors = ferry_control::engines::config::validate(configs);
    if !errors.is_empty() {
        return Err(bad("engines", errors.join("; ")));
    }
    ferry_control::engines::build(configs).map_err(|e| bad("engines", e))
}

/// The server's data directory when none is set.
pub fn default_data_dir() -> PathBuf {
    env("FERRY_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ferry_engine::options::default_state_dir().join("server"))
}

pub async fn serve(args: ServeArgs) -> Result<u8> {
    let settings = args.settings()?;
    let role = match settings.role.as_deref().unwrap_or("standalone") {
        "standalone" => Role::Standalone,
        "control" => Role::Control,
        other => {
            return Err(bad(
                "role",
                format!("'{other}' is not a role of ferry serve; use standalone or control"),
            ))
        }
    };
    run_service(
        settings,
        role,
        "ferry serve",
        DEFAULT_LISTEN,
        default_data_dir(),
    )
    .await
}

/// `ferry dataplane`: a data plane alone, or one of a control plane's.
pub async fn dataplane(args: crate::dataplane::DataplaneArgs) -> Result<u8> {
    let mut settings = ServeArgs {
        config: args.config.clone(),
        listen: args.listen.clone(),
        data_dir: args.data_dir.clone(),
        store: args.store.clone(),
        max_active_runs: None,
        role: None,
        advertise_url: args.advertise_url.clone(),
    }
    .settings()?;
    args.apply(&mut settings.dataplane)?;
    if let Some(id) = &args.id {
        settings.instance_id = Some(id.clone());
    }
    if let Some(n) = settings.dataplane.capacity {
        settings.max_active_runs = Some(n as usize);
    }
    // FERRY_DATA_DIR and --data-dir are in the settings already.
    let data_dir = ferry_engine::options::default_state_dir().join("dataplane");
    run_service(
        settings,
        Role::Data,
        "ferry dataplane",
        crate::dataplane::DEFAULT_LISTEN,
        data_dir,
    )
    .await
}

async fn run_service(
    settings: Settings,
    role: Role,
    program: &str,
    default_listen: &str,
    default_dir: PathBuf,
) -> Result<u8> {
    let listen = settings.listen.as_deref().unwrap_or(default_listen);
    let addr: SocketAddr = listen.parse().map_err(|_| {
        bad(
            "listen",
            format!("'{listen}' is not an address like 127.0.0.1:8080"),
        )
    })?;
    let data_dir = settings.data_dir.clone().unwrap_or(default_dir);
    let shown = data_dir.display().to_string();
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::state(&shown, e))?;

    let store_url = settings.store.as_deref().unwrap_or("sqlite");
    // One process per data directory: a second one would be the same instance and
    // execute the same runs.
    let _lock = lock_data_dir(&data_dir, program)?;
    let store: Arc<dyn ControlStore> = if store_url == "sqlite" {
        Arc::new(SqliteControlStore::open(&data_dir)?)
    } else if store_url.starts_with("postgres://") || store_url.starts_with("postgresql://") {
        Arc::new(PostgresControlStore::connect(store_url).await?)
    } else {
        return Err(bad("store", "use sqlite (embedded) or a postgres:// URL"));
    };

    let tokens = tokens(&settings.tokens, &data_dir)?;
    let webhooks = Webhooks::start(settings.webhooks.clone()).map_err(|e| bad("webhooks", e))?;
    let secrets = SecretResolver::new(settings.secrets.clone()).map_err(|e| bad("secrets", e))?;
    let instance = match &settings.instance_id {
        Some(id) => id.clone(),
        None => instance_id(&data_dir)?,
    };
    let mut config = ControlConfig::new(data_dir.clone(), instance.clone());
    config.role = role;
    if store_url != "sqlite" {
        // Checkpoints go where the runs are, so any process can take a run over.
        config.copy.state_url = Some(store_url.to_string());
    }
    config.peer_token = tokens.first().cloned();
    if let Some(n) = settings.max_active_runs {
        if n == 0 || n > 256 {
            return Err(bad("maxActiveRuns", "must be between 1 and 256"));
        }
        config.max_active_runs = n;
    }
    if let Some(s) = settings.lease_seconds {
        config.lease = Duration::from_secs(s.clamp(2, 3600));
    }
    if let Some(r) = &settings.retry {
        let d = Backoff::default();
        let secs = |v: Option<f64>, default: Duration| {
            v.map_or(default, |s| {
                Duration::from_secs_f64(s.clamp(0.01, 86_400.0))
            })
        };
        config.backoff = Backoff {
            initial: secs(r.initial_seconds, d.initial),
            max: secs(r.max_seconds, d.max),
            factor: r.factor.unwrap_or(d.factor).clamp(1.0, 10.0),
        };
    }
    let advertise = settings
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    config.public_url = Some(advertise.clone());
    if let Ok(v) = std::env::var("FERRY_PULL_TOKEN_SECONDS") {
        let seconds: u64 = v.trim().parse().map_err(|_| {
            bad(
                "FERRY_PULL_TOKEN_SECONDS",
                format!("'{v}' is not a whole number of seconds"),
            )
        })?;
        config.pull_token_ttl = Duration::from_secs(seconds.clamp(1, 7 * 24 * 3600));
    }
    let registry = crate::cluster::registry(
        &settings.selector,
        &store,
        tokens.first().map(String::as_str),
    )
    .await?;
    let engines = engines(&settings.engines, role)?;
    let notifier = ferry_control::notify::Notifier::start(settings.notifications.clone())
        .map_err(|e| bad("notifications", e))?;
    let mut controller = Controller::new(store, config, secrets, webhooks).with_notifier(notifier);
    if !engines.is_empty() {
        controller = controller.with_engines(engines, Default::default());
    }
    if role == Role::Control {
        controller = controller.with_dispatcher(Dispatcher::new(
            registry.clone(),
            &advertise,
            tokens.first().cloned(),
        )?);
    }
    let looping = controller.start();
    let agent = if role == Role::Data && !settings.dataplane.control_planes.is_empty() {
        Some(Arc::new(
            crate::dataplane::Agent::new(
                &settings.dataplane,
                &instance,
                &advertise,
                tokens.first().cloned(),
            )?
            .with_engines(controller.engines().infos()),
        ))
    } else {
        None
    };

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bad("listen", format!("cannot listen on {addr}: {e}")))?;
    let app = crate::cluster::app(controller.clone(), Arc::new(tokens), registry);
    eprintln!(
        "{program}: listening on http://{addr} as {instance}, data in {shown}, store {}",
        if store_url == "sqlite" {
            "sqlite"
        } else {
            "postgres"
        }
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let closing = controller.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
                closing.close_streams();
            })
            .await
    });
    let beats = agent.as_ref().map(|agent| {
        let (agent, controller) = (agent.clone(), controller.clone());
        let every = settings.dataplane.heartbeat();
        tokio::spawn(async move {
            let mut registered = false;
            loop {
                let result = if registered {
                    agent
                        .heartbeat(controller.active_runs(), controller.bytes_per_second())
                        .await
                } else {
                    agent.register().await
                };
                match result {
                    Ok(()) if !registered => {
                        registered = true;
                        eprintln!("ferry dataplane: registered with the control plane");
                    }
                    Ok(()) => {}
                    Err(e) => tracing::warn!("control plane: {e}"),
                }
                tokio::time::sleep(every).await;
            }
        })
    });

    stop_signal().await;
    // A heartbeat says "available": none while draining.
    if let Some(beats) = &beats {
        beats.abort();
    }
    if let Some(agent) = &agent {
        // No new runs; those running finish (or, after the drain time, stop and resume
        // elsewhere from their checkpoints); the registration goes last.
        controller.stop_taking_runs();
        if let Err(e) = agent.drain().await {
            tracing::warn!("control plane: {e}");
        }
        let deadline = tokio::time::Instant::now() + settings.dataplane.drain();
        if controller.active_runs() > 0 {
            eprintln!("{program}: draining {} run(s)", controller.active_runs());
        }
        while controller.active_runs() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("{program}: stopping; running runs resume on the next start");
    controller.shutdown().await;
    looping.abort();
    if let Some(agent) = &agent {
        if let Err(e) = agent.deregister().await {
            tracing::warn!("control plane: {e}");
        }
    }
    let _ = stop_tx.send(());
    server
        .await
        .map_err(|e| Error::Internal(format!("the server stopped: {e}")))?
        .map_err(|e| Error::Internal(format!("the server stopped: {e}")))?;
    Ok(0)
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn lock_data_dir(dir: &Path, program: &str) -> Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::state(path.display(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(bad(
            "data dir",
            format!(
                "{} is in use by another {program}; stop it or give --data-dir",
                dir.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::state(path.display(), e)),
    }
}

/// A name for this server that survives restarts, so it finds its own runs again.
fn instance_id(dir: &Path) -> Result<String> {
    let path = dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let id = format!(
        "{}-{}",
        if host.is_empty() { "ferry" } else { &host },
        &new_token()?[..8]
    );
    std::fs::write(&path, &id).map_err(|e| Error::state(path.display(), e))?;
    Ok(id)
}

/// The configured tokens; when there are none, the one in the data dir (made on first
/// start), so the API is never open.
fn tokens(references: &[String], data_dir: &Path) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    for reference in references {
        let value = ferry_core::secret::resolve_secret(reference)?;
        let value = String::from_utf8(value)
            .map_err(|_| bad("tokens", format!("'{reference}' is not text")))?;
        tokens.push(value.trim().to_string());
    }
    if !tokens.is_empty() {
        return Ok(tokens);
    }
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if !existing.trim().is_empty() {
            eprintln!("ferry serve: API token in {}", path.display());
            return Ok(vec![existing.trim().to_string()]);
        }
    }
    let token = new_token()?;
    write_private(&path, &token)?;
    eprintln!(
        "ferry serve: no tokens configured; made one in {} (ferry transfers reads it from there)",
        path.display()
    );
    Ok(vec![token])
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::Internal(format!("no randomness for a token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::state(path.display(), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::state(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:1111\ndataDir: /from/file\nstore: sqlite\nmaxActiveRuns: 2\n",
        )
        .unwrap();
        let args = |listen: Option<&str>| ServeArgs {
            config: Some(file.clone()),
            listen: listen.map(str::to_string),
            data_dir: None,
            store: None,
            max_active_runs: None,
            role: None,
            advertise_url: None,
        };
        std::env::remove_var("FERRY_LISTEN");
        std::env::remove_var("FERRY_DATA_DIR");
        let s = args(None).settings().unwrap();
        assert_eq!(s.listen.as_deref(), Some("127.0.0.1:1111"));
        assert_eq!(s.max_active_runs, Some(2));

        std::env::set_var("FERRY_LISTEN", "127.0.0.1:2222");
        std::env::set_var("FERRY_DATA_DIR", "/from/env");
        let s = args(None).settings().unwrap();
        assert_eq!(s.listen.as_deref(), Some("127.0.0.1:2222"));
        assert_eq!(s.data_dir, Some(PathBuf::from("/from/env")));

        let s = args(Some("127.0.0.1:3333")).settings().unwrap();
        assert_eq!(s.listen.as_deref(), Some("127.0.0.1:3333"));
        assert_eq!(s.data_dir, Some(PathBuf::from("/from/env")));
        std::env::remove_var("FERRY_LISTEN");
        std::env::remove_var("FERRY_DATA_DIR");

        std::fs::write(&file, "listen: 127.0.0.1:1111\nlistn: typo\n").unwrap();
        let err = args(None).settings().unwrap_err().to_string();
        assert!(err.contains("--config") && err.contains("listn"), "{err}");
    }
}
