//! `ferry pull …`: serve a dataset for download from a running `ferry serve` or `ferry
//! dataplane`, a client of its Dataplane Signaling API (a start with `flowType: PULL`).
//! What it prints of a start or a token is the endpoint data reference itself: the only
//! place a pull token is shown.

use clap::{Args, Subcommand};
use ferry_core::{DataAddress, Error, Result};
use serde_json::{json, Value};

use crate::client::{print_json, text, Client};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The server or data plane [default: $FERRY_SERVER, else http://127.0.0.1:8080].
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// The API token [default: $FERRY_TOKEN, else the token file of a local server's data dir].
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: PullCommand,
}

#[derive(Subcommand, Debug)]
enum PullCommand {
    /// Serve SOURCE for download: prints the endpoint and a token for it.
    ///
    /// SOURCE is a directory or file on the server's machine (a relative path is made
    /// absolute here), s3://bucket/prefix/ or az://container/path, read with the server's
    /// credentials. Consumers download with `curl -H 'Authorization: Bearer TOKEN'
    /// ENDPOINT/FILE` (ranges, resumable) or `ferry copy 'ENDPOINT/FILE?token=TOKEN' DEST`.
    Start {
        source: String,
        /// The flow's id [default: pull-<random>].
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// A new token for a flow; earlier ones stay valid until they expire.
    Token { id: String },
    /// A flow's state and endpoint.
    Status { id: String },
    /// Stop serving for now: every token is refused until `resume`.
    Suspend {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Serve again after `suspend`, with a new token.
    Resume { id: String },
    /// Stop serving for good: every token is refused from now on.
    Terminate {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

/// SOURCE as a Dataplane Signaling `DataAddress`.
fn source_address(source: &str) -> Result<Value> {
    let address = DataAddress::parse(source)?;
    let options = |options: &std::collections::BTreeMap<String, String>| {
        Value::Object(
            options
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    };
    Ok(match &address {
        DataAddress::Local { path } => {
            let absolute = std::path::absolute(path).map_err(|e| Error::InvalidAddress {
                address: source.to_string(),
                reason: e.to_string(),
            })?;
            json!({"type": "file", "path": absolute.to_string_lossy()})
        }
        DataAddress::S3 {
            bucket,
            key,
            options: o,
        } => json!({"type": "s3", "bucket": bucket, "key": key, "storeOptions": options(o)}),
        DataAddress::Azure {
            container,
            path,
            options: o,
        } => json!({"type": "azure", "container": container, "path": path,
                    "storeOptions": options(o)}),
        other => {
            return Err(Error::InvalidAddress {
                address: other.to_string(),
                reason: "ferry pull serves a directory or file, an S3 prefix or object, or an \
                         Azure path"
                    .into(),
            })
        }
    })
}

/// A new flow id: the time and the process id, unique enough for one person's shell.
fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    format!("pull-{:012x}", mixed & 0xffff_ffff_ffff)
}

/// The endpoint, token and expiry of an answer's `dataAddress`, one per line, so a script
/// can pick them (`awk '/^token/ {print $2}'`).
fn print_reference(answer: &Value) {
    let address = &answer["dataAddress"];
    let prop = |name: &str| {
        address["endpointProperties"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .map(|p| text(&p["value"]))
            .unwrap_or_else(|| "-".into())
    };
    let endpoint = text(&address["endpoint"]);
    println!("endpoint  {endpoint}/");
    println!("token     {}", prop("authorization"));
    println!(
        "expires   {} (in {} s)",
        prop("expiresAt"),
        prop("expiresIn")
    );
}

pub async fn pull(args: PullArgs) -> Result<u8> {
    use reqwest::Method;
    let client = Client::new(args.server.as_deref(), args.token.as_deref())?;
    let post = |path: String, body: Value| client.request(Method::POST, &path).json(&body);
    let (body, reference) = match &args.command {
        PullCommand::Start { source, id } => {
            let id = id.clone().unwrap_or_else(new_id);
            let message = json!({
                "messageId": format!("{id}-start"),
                "processId": id,
                "transferType": {"destinationType": "HttpData", "flowType": "PULL"},
                "sourceDataAddress": source_address(source)?,
            });
            let body = client
                .send(post("/dataflows/start".into(), message))
                .await?;
            (body, true)
        }
        PullCommand::Token { id } => {
            let body = client
                .send(post(format!("/dataflows/{id}/token"), json!({})))
                .await?;
            (body, true)
        }
        PullCommand::Status { id } => {
            let body = client
                .send(client.request(Method::GET, &format!("/dataflows/{id}/status")))
                .await?;
            (body, false)
        }
        PullCommand::Suspend { id, reason } | PullCommand::Terminate { id, reason } => {
            let action = if matches!(args.command, PullCommand::Suspend { .. }) {
                "suspend"
            } else {
                "terminate"
            };
            let body = client
                .send(post(
                    format!("/dataflows/{id}/{action}"),
                    json!({"reason": reason}),
                ))
                .await?;
            (body, false)
        }
        PullCommand::Resume { id } => {
            let body = client
                .send(post(format!("/dataflows/{id}/resume"), json!({})))
                .await?;
            (body, true)
        }
    };
    if args.json {
        print_json(&body);
        return Ok(0);
    }
    let id = body["processId"]
        .as_str()
        .or(body["dataflowId"].as_str())
        .unwrap_or("?");
    println!("pull/{id} {}", text(&body["state"]));
    if reference && !body["dataAddress"].is_null() {
        print_reference(&body);
    } else if let Some(endpoint) = body["endpoint"].as_str() {
        println!("endpoint  {endpoint}/");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_become_signaling_addresses() {
        let local = source_address("data/in/").unwrap();
        assert_eq!(local["type"], "file");
        assert!(local["path"].as_str().unwrap().starts_with('/'));
        let s3 = source_address("s3://lake/shared/?endpoint=http://127.0.0.1:9000").unwrap();
        assert_eq!(
            s3,
            json!({"type": "s3", "bucket": "lake", "key": "shared/",
                   "storeOptions": {"endpoint": "http://127.0.0.1:9000"}})
        );
        let refused = source_address("postgres://db/x?table=t").unwrap_err();
        assert!(
            refused.to_string().contains("ferry pull serves"),
            "{refused}"
        );
        assert!(new_id().starts_with("pull-"));
    }
}
