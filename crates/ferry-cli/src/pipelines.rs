//! `ferry pipelines …`: pipelines of a running `ferry serve` (or control plane).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ferry_core::{Error, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{follow_events, print_json, print_table, server_error, text, Client};

#[derive(Args, Debug)]
pub struct PipelinesArgs {
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
    command: PipelinesCommand,
}

#[derive(Subcommand, Debug)]
enum PipelinesCommand {
    /// Create a pipeline from a manifest (kind: Pipeline), or replace the spec of the one
    /// with its name (runs under way keep the spec they started with).
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List pipelines.
    List,
    /// Show a pipeline: spec (secrets redacted) and status.
    Get { name: String },
    /// Start a run now; with --wait, follow its events until it ends (exit 1 if it fails).
    Run {
        name: String,
        /// A parameter, name=value. Repeatable.
        #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    /// List a pipeline's runs, newest first; with a run id, its tasks.
    Runs { name: String, run: Option<String> },
    /// Show a pipeline's events.
    Events {
        name: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop firing its schedule and triggers (runs under way go on).
    Suspend { name: String },
    /// Fire its schedule and triggers again.
    Resume { name: String },
    /// Delete a pipeline: its unfinished runs are cancelled, its runs removed.
    Delete { name: String },
}

pub async fn pipelines(args: PipelinesArgs) -> Result<u8> {
    let client = Client::new(args.server.as_deref(), args.token.as_deref())?;
    let json = args.json;
    let base = "/v1/pipelines";
    match &args.command {
        PipelinesCommand::Apply { file } => apply(&client, base, "pipeline", file, json).await?,
        PipelinesCommand::List => {
            let body = client.send(client.request(Method::GET, base)).await?;
            if json {
                print_json(&body);
                return Ok(0);
            }
            let rows = body
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let s = &p["status"];
                    vec![
                        text(&p["metadata"]["name"]),
                        text(&s["phase"]),
                        text(&p["spec"]["schedule"]),
                        p["spec"]["tasks"]
                            .as_array()
                            .map_or(0, Vec::len)
                            .to_string(),
                        text(&s["lastRun"]["phase"]),
                        text(&s["lastRun"]["finishedAt"]),
                        s["activeRuns"].as_array().map_or(0, Vec::len).to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME", "PHASE", "SCHEDULE", "TASKS", "LAST RUN", "FINISHED", "ACTIVE",
                ],
                rows,
            );
        }
        PipelinesCommand::Get { name } => {
            let body = client
                .send(client.request(Method::GET, &format!("{base}/{name}")))
                .await?;
            if json {
                print_json(&body);
            } else {
                print!("{}", serde_norway::to_string(&body).unwrap_or_default());
            }
        }
        PipelinesCommand::Run { name, params, wait } => {
            let mut given = serde_json::Map::new();
            for pair in params {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    Error::invalid_option(format!("--param {pair}"), "expected NAME=VALUE")
                })?;
                given.insert(k.trim().to_string(), json!(v));
            }
            let body = client
                .send(
                    client
                        .request(Method::POST, &format!("{base}/{name}/run"))
                        .json(&json!({"params": given})),
                )
                .await?;
            let id = text(&body["id"]);
            if json && !wait {
                print_json(&body);
            } else {
                println!("pipelinerun/{id} started");
            }
            if *wait {
                let path = format!("{base}/{name}/events");
                let mine = |e: &Value| e["run"].as_str() == Some(id.as_str());
                follow_events(&client, &path, true, json, mine, |e| {
                    mine(e)
                        && matches!(
                            e["reason"].as_str(),
                            Some("PipelineSucceeded" | "PipelineFailed")
                        )
                })
                .await?;
                let run = client
                    .send(client.request(Method::GET, &format!("{base}/{name}/runs/{id}")))
                    .await?;
                if !json {
                    print_tasks(&run);
                }
                if run["phase"] != "Succeeded" {
                    return Ok(1);
                }
            }
        }
        PipelinesCommand::Runs { name, run } => {
            let path = match run {
                Some(id) => format!("{base}/{name}/runs/{id}"),
                None => format!("{base}/{name}/runs"),
            };
            let body = client.send(client.request(Method::GET, &path)).await?;
            if json {
                print_json(&body);
            } else if run.is_some() {
                print_tasks(&body);
            } else {
                print_runs(&body);
            }
        }
        PipelinesCommand::Events { name, follow } => {
            let path = format!("{base}/{name}/events");
            follow_events(&client, &path, *follow, json, |_| true, |_| false).await?;
        }
        PipelinesCommand::Suspend { name } | PipelinesCommand::Resume { name } => {
            let action = match args.command {
                PipelinesCommand::Suspend { .. } => "suspend",
                _ => "resume",
            };
            let body = client
                .send(client.request(Method::POST, &format!("{base}/{name}/{action}")))
                .await?;
            if json {
                print_json(&body);
            } else {
                println!("pipeline/{name} {action}d");
            }
        }
        PipelinesCommand::Delete { name } => delete(&client, base, "pipeline", name).await?,
    }
    Ok(0)
}

/// Creates or replaces the resource in `file` (YAML or JSON) under `base`.
async fn apply(client: &Client, base: &str, what: &str, file: &Path, json: bool) -> Result<()> {
    let shown = format!("-f {}", file.display());
    let content = std::fs::read_to_string(file).map_err(|e| Error::invalid_option(&shown, e))?;
    let manifest: Value = serde_norway::from_str(&content)
        .map_err(|e| Error::invalid_option(&shown, ferry_core::error::one_line(&e.to_string())))?;
    let post = client.request(Method::POST, base).json(&manifest);
    let (status, body) = client.exchange(post).await?;
    if !(200..300).contains(&status) {
        return Err(server_error(&client.base, base, status, &body));
    }
    if json {
        print_json(&body);
    } else {
        let verb = if status == 201 {
            "created"
        } else {
            "configured"
        };
        println!("{what}/{} {verb}", text(&body["metadata"]["name"]));
    }
    Ok(())
}

async fn delete(client: &Client, base: &str, what: &str, name: &str) -> Result<()> {
    let (status, body) = client
        .exchange(client.request(Method::DELETE, &format!("{base}/{name}")))
        .await?;
    if !(200..300).contains(&status) {
        return Err(server_error(&client.base, base, status, &body));
    }
    println!("{what}/{name} deleted");
    Ok(())
}

#[derive(Args, Debug)]
pub struct TemplatesArgs {
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
    command: TemplatesCommand,
}

#[derive(Subcommand, Debug)]
enum TemplatesCommand {
    /// Register a task template from a manifest (kind: TaskTemplate), or replace the one
    /// with its name (refused when a pipeline using it would no longer fit).
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List the built-in and registered templates.
    List,
    /// Show a template: parameters, what it runs, the pipelines using it.
    Get { name: String },
    /// Delete a registered template no pipeline uses.
    Delete { name: String },
}

pub async fn templates(args: TemplatesArgs) -> Result<u8> {
    let client = Client::new(args.server.as_deref(), args.token.as_deref())?;
    let base = "/v1/templates";
    match &args.command {
        TemplatesCommand::Apply { file } => {
            apply(&client, base, "template", file, args.json).await?
        }
        TemplatesCommand::List => {
            let body = client.send(client.request(Method::GET, base)).await?;
            if args.json {
                print_json(&body);
                return Ok(0);
            }
            let rows = body
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let params = t["spec"]["params"].as_object();
                    let shown: Vec<String> = params
                        .into_iter()
                        .flatten()
                        .map(|(name, p)| match p["default"].as_str() {
                            Some(d) => format!("{name}={d}"),
                            None => name.clone(),
                        })
                        .collect();
                    let runs = match (&t["spec"]["transfer"], &t["spec"]["command"]) {
                        (Value::Null, Value::Null) => "-",
                        (Value::Null, _) => "command",
                        _ => "transfer",
                    };
                    vec![
                        text(&t["metadata"]["name"]),
                        if t["status"]["builtIn"] == true {
                            "built in"
                        } else {
                            "registered"
                        }
                        .to_string(),
                        runs.to_string(),
                        shown.join(" "),
                        t["status"]["usedBy"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(text)
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            print_table(&["NAME", "KIND", "RUNS", "PARAMS", "USED BY"], rows);
        }
        TemplatesCommand::Get { name } => {
            let body = client
                .send(client.request(Method::GET, &format!("{base}/{name}")))
                .await?;
            if args.json {
                print_json(&body);
            } else {
                print!("{}", serde_norway::to_string(&body).unwrap_or_default());
            }
        }
        TemplatesCommand::Delete { name } => delete(&client, base, "template", name).await?,
    }
    Ok(0)
}

fn print_runs(body: &Value) {
    let rows = body
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let tasks = r["tasks"].as_array().cloned().unwrap_or_default();
            let done = tasks.iter().filter(|t| t["phase"] == "Succeeded").count();
            vec![
                text(&r["id"]),
                text(&r["phase"]),
                text(&r["trigger"]),
                text(&r["startedAt"]),
                text(&r["finishedAt"]),
                format!("{done}/{}", tasks.len()),
                text(&r["error"]),
            ]
        })
        .collect();
    print_table(
        &[
            "RUN",
            "PHASE",
            "TRIGGER",
            "STARTED",
            "FINISHED",
            "SUCCEEDED",
            "ERROR",
        ],
        rows,
    );
}

fn print_tasks(run: &Value) {
    println!(
        "run {}: {}{}",
        text(&run["id"]),
        text(&run["phase"]),
        run["error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    let rows = run["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let progress = t["progress"]["fraction"]
                .as_f64()
                .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0));
            let note = t["error"]
                .as_str()
                .or(t["condition"].as_str())
                .unwrap_or("-")
                .to_string();
            vec![
                text(&t["name"]),
                text(&t["phase"]),
                text(&t["attempt"]),
                progress,
                text(&t["stats"]["numRecords"]),
                text(&t["stats"]["bytes"]),
                note,
            ]
        })
        .collect();
    print_table(
        &[
            "TASK", "PHASE", "ATTEMPT", "PROGRESS", "RECORDS", "BYTES", "NOTE",
        ],
        rows,
    );
}
