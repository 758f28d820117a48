//! `ferry transfers …`: a client of a running `ferry serve`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_core::{Error, Result};
use serde_json::Value;

use crate::serve::{default_data_dir, DEFAULT_LISTEN, TOKEN_FILE};

#[derive(Args, Debug)]
pub struct TransfersArgs {
    /// The server [default: $FERRY_SERVER, else http://127.0.0.1:8080].
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// The API token [default: $FERRY_TOKEN, else the token file of a local server's data dir].
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TransfersCommand,
}

#[derive(Subcommand, Debug)]
enum TransfersCommand {
    /// Create a transfer from a manifest, or replace the spec of the one with its name.
    Apply {
        /// The manifest (YAML or JSON).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List transfers.
    List {
        /// Only transfers in this phase (Pending, Running, Succeeded, Failed, …).
        #[arg(long)]
        phase: Option<String>,
        /// Only transfers with this label, key=value. Repeatable.
        #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Transfers asked for at once; the list is read page by page to its end.
        #[arg(long, value_name = "N", default_value_t = 500,
              value_parser = clap::value_parser!(u64).range(1..=10_000))]
        chunk_size: u64,
    },
    /// Show a transfer: spec (secrets redacted) and status.
    Get { name: String },
    /// Stop starting runs of a transfer (a running run finishes).
    Suspend { name: String },
    /// Start scheduling a suspended transfer again.
    Resume { name: String },
    /// Start a run now.
    Run { name: String },
    /// List a transfer's runs, newest first.
    Runs { name: String },
    /// Delete a transfer, its runs and events.
    Delete {
        name: String,
        /// Also remove what its runs wrote at the destination.
        #[arg(long)]
        cleanup: bool,
    },
    /// Show a transfer's events.
    Events {
        name: String,
        /// Keep following new events until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
}

pub(crate) struct Client {
    pub(crate) base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `server` and `token` as given on the command line, else from the environment.
    pub(crate) fn new(server: Option<&str>, token: Option<&str>) -> Result<Self> {
        let base = server
            .map(str::to_string)
            .or_else(|| std::env::var("FERRY_SERVER").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}"));
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Error::invalid_option(
                "--server",
                format!("'{base}': use http://host:port"),
            ));
        }
        let token = token
            .map(str::to_string)
            .or_else(|| std::env::var("FERRY_TOKEN").ok().filter(|s| !s.is_empty()))
            .or_else(|| {
                std::fs::read_to_string(default_data_dir().join(TOKEN_FILE))
                    .ok()
                    .map(|t| t.trim().to_string())
            });
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(Self { base, token, http })
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends and returns the JSON body of a 2xx answer; anything else is an error naming
    /// what the server said.
    /// Sends a request; a server that does not answer is an error, any answer is not.
    pub(crate) async fn open(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        request.send().await.map_err(|e| {
            Error::unreachable(
                &self.base,
                format!("{}; is ferry serve running?", plain(&e)),
            )
        })
    }

    /// The status and JSON body of an answer, whatever its status.
    pub(crate) async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let response = self.open(request).await?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| Error::unreachable(&self.base, plain(&e)))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// The JSON body of a 2xx answer; anything else is an error naming what the server said.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let (client, built) = request.build_split();
        let built = built.map_err(|e| Error::unreachable(&self.base, plain(&e)))?;
        let path = built.url().path().to_string();
        let request = reqwest::RequestBuilder::from_parts(client, built);
        match self.exchange(request).await? {
            (status, body) if (200..300).contains(&status) => Ok(body),
            (status, body) => Err(server_error(&self.base, &path, status, &body)),
        }
    }

    /// Transfer `name` as the server shows it: spec (references as written, inline secrets
    /// masked) and status.
    pub(crate) async fn transfer(&self, name: &str) -> Result<Value> {
        self.send(self.request(reqwest::Method::GET, &format!("/v1/transfers/{name}")))
            .await
    }
}

pub(crate) fn plain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    ferry_core::error::one_line(&text)
}

/// What a refused request was about, from its path: `pipeline` for `/v1/pipelines/…`.
fn subject(path: &str) -> &'static str {
    let collection = path
        .trim_start_matches("/v1/")
        .trim_start_matches('/')
        .split('/')
        .next();
    match collection {
        Some("pipelines") => "pipeline",
        Some("templates") => "template",
        Some("dataplanes") => "data plane",
        Some("dataflows") => "data flow",
        _ => "transfer",
    }
}

pub(crate) fn server_error(base: &str, path: &str, status: u16, body: &Value) -> Error {
    let message = body["error"].as_str().unwrap_or("no message").to_string();
    let details: Vec<String> = body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            format!(
                "{}: {}",
                d["field"].as_str().unwrap_or(""),
                d["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    let text = if details.is_empty() {
        message
    } else {
        format!("{message}: {}", details.join("; "))
    };
    match status {
        401 => Error::permission_denied(base, format!("{text} (give --token or FERRY_TOKEN)")),
        404 => Error::Store {
            address: base.to_string(),
            detail: text,
        },
        400 | 409 | 422 => Error::invalid_option(subject(path), text),
        _ => Error::store(base, format!("HTTP {status}: {text}")),
    }
}

pub async fn transfers(args: TransfersArgs) -> Result<u8> {
    use reqwest::Method;
    let client = Client::new(args.server.as_deref(), args.token.as_deref())?;
    let json = args.json;
    match &args.command {
        TransfersCommand::Apply { file } => {
            let shown = format!("-f {}", file.display());
            let text =
                std::fs::read_to_string(file).map_err(|e| Error::invalid_option(&shown, e))?;
            let manifest: Value = serde_norway::from_str(&text).map_err(|e| {
                Error::invalid_option(&shown, ferry_core::error::one_line(&e.to_string()))
            })?;
            let name = manifest["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let post = client
                .request(Method::POST, "/v1/transfers")
                .json(&manifest);
            let (verb, body) = match client.exchange(post).await? {
                (409, _) if !name.is_empty() => {
                    let put = client
                        .request(Method::PUT, &format!("/v1/transfers/{name}"))
                        .json(&manifest);
                    ("configured", client.send(put).await?)
                }
                (status, body) if (200..300).contains(&status) => ("created", body),
                (status, body) => {
                    return Err(server_error(&client.base, "/v1/transfers", status, &body))
                }
            };
            if json {
                print_json(&body);
            } else {
                println!(
                    "transfer/{} {verb}",
                    body["metadata"]["name"].as_str().unwrap_or(&name)
                );
            }
        }
        TransfersCommand::List {
            phase,
            labels,
            chunk_size,
        } => {
            let mut query = Vec::new();
            if let Some(p) = phase {
                query.push(("phase", p.clone()));
            }
            if !labels.is_empty() {
                query.push(("labelSelector", labels.join(",")));
            }
            query.push(("limit", chunk_size.to_string()));
            list_transfers(&client, query, json).await?;
        }
        TransfersCommand::Get { name } => {
            let body = client.transfer(name).await?;
            if json {
                print_json(&body);
            } else {
                print!("{}", serde_norway::to_string(&body).unwrap_or_default());
            }
        }
        TransfersCommand::Suspend { name } | TransfersCommand::Resume { name } => {
            let (action, done) = if matches!(args.command, TransfersCommand::Suspend { .. }) {
                ("suspend", "suspended")
            } else {
                ("resume", "resumed")
            };
            let body = client
                .send(client.request(Method::POST, &format!("/v1/transfers/{name}/{action}")))
                .await?;
            if json {
                print_json(&body);
            } else {
                println!("transfer/{name} {done}");
            }
        }
        TransfersCommand::Run { name } => {
            let body = client
                .send(client.request(Method::POST, &format!("/v1/transfers/{name}/run")))
                .await?;
            if json {
                print_json(&body);
            } else {
                println!("run/{} started", body["id"].as_str().unwrap_or("?"));
            }
        }
        TransfersCommand::Runs { name } => {
            let body = client
                .send(client.request(Method::GET, &format!("/v1/transfers/{name}/runs")))
                .await?;
            if json {
                print_json(&body);
            } else {
                print_runs(&body);
            }
        }
        TransfersCommand::Delete { name, cleanup } => {
            let body = client
                .send(
                    client
                        .request(Method::DELETE, &format!("/v1/transfers/{name}"))
                        .query(&[("cleanup", cleanup.to_string())]),
                )
                .await?;
            if json {
                print_json(&body);
            } else {
                let removed = body["removed"].as_array().map_or(0, Vec::len);
                if *cleanup {
                    println!(
                        "transfer/{name} deleted; {removed} outputs removed at the destination"
                    );
                } else {
                    println!("transfer/{name} deleted");
                }
            }
        }
        TransfersCommand::Events { name, follow } => {
            follow_events(
                &client,
                &format!("/v1/transfers/{name}/events"),
                *follow,
                json,
                |_| true,
                |_| false,
            )
            .await?;
        }
    }
    Ok(0)
}

/// Prints the events at `path`; with `follow`, keeps printing new ones until `last` says
/// one is the last (or the server closes).
pub(crate) async fn follow_events(
    client: &Client,
    path: &str,
    follow: bool,
    json: bool,
    keep: impl Fn(&Value) -> bool,
    last: impl Fn(&Value) -> bool,
) -> Result<()> {
    if !follow {
        let body = client
            .send(client.request(reqwest::Method::GET, path))
            .await?;
        if json {
            print_json(&body);
        } else {
            for e in body.as_array().into_iter().flatten() {
                print_event(e);
            }
        }
        return Ok(());
    }
    let mut response = client
        .open(
            client
                .request(reqwest::Method::GET, path)
                .query(&[("follow", "true")]),
        )
        .await?;
    let status = response.status().as_u16();
    if status != 200 {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        return Err(server_error(&client.base, path, status, &body));
    }
    let mut pending = String::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::unreachable(&client.base, plain(&e)))?
    {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                        continue;
                    };
                    if !keep(&event) {
                        continue;
                    }
                    if json {
                        println!("{event}");
                    } else {
                        print_event(&event);
                    }
                    if last(&event) {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    print_rows(header, rows, &mut Vec::new());
}

/// Rows under the header (printed when `widths` is empty, as for a first page), each
/// column as wide as its widest cell so far.
fn print_rows(header: &[&str], rows: Vec<Vec<String>>, widths: &mut Vec<usize>) {
    let first = widths.is_empty();
    if first {
        widths.extend(header.iter().map(|h| h.len()));
    }
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    if first {
        line(header.iter().map(|h| h.to_string()).collect());
    }
    for row in rows {
        line(row);
    }
}

/// Transfers a page at a time: what the server holds is never all in memory here.
async fn list_transfers(client: &Client, mut query: Vec<(&str, String)>, json: bool) -> Result<()> {
    use std::io::Write;
    let (mut widths, mut listed) = (Vec::new(), 0usize);
    if json {
        print!("[");
    }
    loop {
        let request = client
            .request(reqwest::Method::GET, "/v1/transfers")
            .query(&query);
        let response = client.open(request).await?;
        let status = response.status().as_u16();
        let next = response
            .headers()
            .get("ferry-continue")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response
            .text()
            .await
            .map_err(|e| Error::unreachable(&client.base, plain(&e)))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !(200..300).contains(&status) {
            return Err(server_error(&client.base, "/v1/transfers", status, &body));
        }
        let page = body.as_array().cloned().unwrap_or_default();
        if json {
            for t in &page {
                print!("{}\n  {t}", if listed == 0 { "" } else { "," });
                listed += 1;
            }
        } else if !page.is_empty() || widths.is_empty() {
            print_rows(TRANSFER_COLUMNS, transfer_rows(&page), &mut widths);
        }
        let _ = std::io::stdout().flush();
        match next {
            Some(token) => {
                query.retain(|(k, _)| *k != "continue");
                query.push(("continue", token));
            }
            None => break,
        }
    }
    if json {
        println!("{}]", if listed == 0 { "" } else { "\n" });
    }
    Ok(())
}

const TRANSFER_COLUMNS: &[&str] = &[
    "NAME",
    "PHASE",
    "SCHEDULE",
    "LAST SUCCESS",
    "RECORDS",
    "BYTES",
    "ACTIVE RUN",
];

fn transfer_rows(transfers: &[Value]) -> Vec<Vec<String>> {
    transfers
        .iter()
        .map(|t| {
            let s = &t["status"];
            vec![
                text(&t["metadata"]["name"]),
                text(&s["phase"]),
                text(&t["spec"]["schedule"]),
                text(&s["lastSuccessTime"]),
                text(&s["numRecords"]),
                text(&s["bytes"]),
                text(&s["activeRun"]),
            ]
        })
        .collect()
}

fn print_runs(body: &Value) {
    let rows = body
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let progress = r["stats"]["progress"]["fraction"]
                .as_f64()
                .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0));
            // Which transfer service executes it: this process, or an engine (and its job).
            let execution = &r["stats"]["execution"];
            let engine = match (
                execution["engine"].as_str(),
                execution["job"]["id"].as_str(),
            ) {
                (Some(engine), Some(job)) => format!("{engine} (job {job})"),
                (Some(engine), None) => engine.to_string(),
                _ => "-".into(),
            };
            vec![
                text(&r["id"]),
                text(&r["phase"]),
                text(&r["trigger"]),
                text(&r["attempt"]),
                engine,
                text(&r["startedAt"]),
                text(&r["finishedAt"]),
                text(&r["stats"]["numRecords"]),
                text(&r["stats"]["bytes"]),
                progress,
                text(&r["error"]),
            ]
        })
        .collect();
    print_table(
        &[
            "RUN", "PHASE", "TRIGGER", "ATTEMPT", "ENGINE", "STARTED", "FINISHED", "RECORDS",
            "BYTES", "PROGRESS", "ERROR",
        ],
        rows,
    );
}

pub(crate) fn print_event(e: &Value) {
    println!(
        "{}  {:<7}  {:<15}  {}",
        text(&e["time"]),
        text(&e["type"]),
        text(&e["reason"]),
        text(&e["message"])
    );
}
