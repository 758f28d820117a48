//! `ferry serve`: the control plane and an embedded data plane in one process.
//!
//! Settings come from a YAML file, then `FERRY_*` environment variables, then flags; each
//! later source overrides the earlier ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ferry_api::AppState;
use ferry_control::retry::Backoff;
use ferry_control::secrets::{SecretResolver, SecretsConfig};
use ferry_control::webhook::{WebhookConfig, Webhooks};
use ferry_control::{ControlConfig, Controller};
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
    #[serde(default)]
    secrets: SecretsConfig,
    max_active_runs: Option<usize>,
    lease_seconds: Option<u64>,
    retry: Option<RetrySettings>,
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
        Ok(s)
    }
}

/// The server's data directory when none is set.
pub fn default_data_dir() -> PathBuf {
    env("FERRY_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ferry_engine::options::default_state_dir().join("server"))
}

pub async fn serve(args: ServeArgs) -> Result<u8> {
    let settings = args.settings()?;
    let listen = settings.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let addr: SocketAddr = listen.parse().map_err(|_| {
        bad(
            "listen",
            format!("'{listen}' is not an address like 127.0.0.1:8080"),
        )
    })?;
    let data_dir = settings.data_dir.clone().unwrap_or_else(default_data_dir);
    let shown = data_dir.display().to_string();
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::state(&shown, e))?;

    let store_url = settings.store.as_deref().unwrap_or("sqlite");
    // One server per embedded store: a second one would execute the same runs.
    let _lock = if store_url == "sqlite" {
        Some(lock_data_dir(&data_dir)?)
    } else {
        None
    };
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
    let mut config = ControlConfig::new(data_dir.clone(), instance_id(&data_dir)?);
    if let Some(n) = settings.max_active_runs {
        if n == 0 || n > 256 {
            return Err(bad("maxActiveRuns", "must be between 1 and 256"));
        }
        config.max_active_runs = n;
    }
    if let Some(s) = settings.lease_seconds {
        config.lease = Duration::from_secs(s.clamp(5, 3600));
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
    let controller = Controller::new(store, config, secrets, webhooks);
    let looping = controller.start();

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bad("listen", format!("cannot listen on {addr}: {e}")))?;
    let app = ferry_api::app(AppState {
        controller: controller.clone(),
        tokens: Arc::new(tokens),
        dataplanes: Arc::new(ferry_control::selector::InMemoryRegistry::new()),
    });
    eprintln!(
        "ferry serve: listening on http://{addr}, data in {shown}, store {}",
        if store_url == "sqlite" {
            "sqlite"
        } else {
            "postgres"
        }
    );
    let closing = controller.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop_signal().await;
            closing.close_streams();
        })
        .await
        .map_err(|e| Error::Internal(format!("the server stopped: {e}")))?;
    eprintln!("ferry serve: stopping; running runs resume on the next start");
    controller.shutdown().await;
    looping.abort();
    Ok(0)
}

async fn stop_signal() {
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

fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
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
                "{} is in use by another ferry serve; stop it or give --data-dir",
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
