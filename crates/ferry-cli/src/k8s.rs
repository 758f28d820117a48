//! `ferry k8s job`: a transfer as a Kubernetes Indexed Job, one partition per pod.
//!
//! The output is a ConfigMap holding the transfer's manifest and a Job whose pods each run
//! `ferry run /etc/ferry/transfer.yaml --partitions N`; Kubernetes gives every pod its
//! index in `JOB_COMPLETION_INDEX`, which is the partition it runs. Credentials reach the
//! pods from a Secret, by reference: the manifest never holds a secret's value.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_core::{Error, Result};
use ferry_engine::manifest::Manifest;
use serde_json::{json, Map, Value};

use crate::client::Client;

/// The image the manifests in deploy/kubernetes run.
pub const DEFAULT_IMAGE: &str = "ghcr.io/ferry/ferry:0.1.0";
/// The namespace of deploy/kubernetes.
const DEFAULT_NAMESPACE: &str = "ferry";
/// The Secret of deploy/kubernetes whose keys are the credentials transfers read
/// (`AWS_ACCESS_KEY_ID`, `PGPASSWORD`, the variables `env:NAME` references name).
pub const CREDENTIALS_SECRET: &str = "ferry-credentials";
/// Where each pod finds the manifest.
const MANIFEST_DIR: &str = "/etc/ferry";
const MANIFEST_FILE: &str = "transfer.yaml";
/// Retries of one partition before it counts as failed.
const RETRIES_PER_PARTITION: u32 = 3;

#[derive(Args, Debug)]
pub struct K8sArgs {
    #[command(subcommand)]
    command: K8sCommand,
}

#[derive(Subcommand, Debug)]
enum K8sCommand {
    /// Print an Indexed Job (and a ConfigMap holding the manifest) that runs a transfer
    /// in N pods, each pod one partition; apply it with `kubectl apply -f -`.
    Job(JobArgs),
}

#[derive(Args, Debug)]
struct JobArgs {
    /// The name of a transfer on a running `ferry serve` (or give -f FILE).
    #[arg(
        value_name = "TRANSFER",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    transfer: Option<String>,
    /// A transfer manifest (YAML), instead of a transfer on a server.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// How many pods share the transfer, each running one partition of it.
    #[arg(long, value_name = "N")]
    partitions: u32,
    /// How many pods run at once [default: N].
    #[arg(long, value_name = "P")]
    parallelism: Option<u32>,
    /// The ferry image the pods run.
    #[arg(long, default_value = DEFAULT_IMAGE, value_name = "IMAGE")]
    image: String,
    /// The namespace of the Job and the ConfigMap.
    #[arg(long, default_value = DEFAULT_NAMESPACE, value_name = "NAMESPACE")]
    namespace: String,
    /// The Job's and the ConfigMap's name [default: ferry-<transfer name>].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A Secret whose keys become the pods' environment (credentials). Repeatable
    /// [default: ferry-credentials, if it exists].
    #[arg(long = "secret", value_name = "SECRET")]
    secrets: Vec<String>,
    /// The server holding TRANSFER [default: $FERRY_SERVER, else http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The API token [default: $FERRY_TOKEN, else the token file of a local server's data dir].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

pub async fn k8s(args: K8sArgs) -> Result<u8> {
    match args.command {
        K8sCommand::Job(job) => {
            print!("{}", job_yaml(&job).await?);
            Ok(0)
        }
    }
}

/// The transfer to run: its name and the manifest text the pods read.
struct Transfer {
    name: String,
    manifest: String,
}

async fn job_yaml(args: &JobArgs) -> Result<String> {
    if args.partitions == 0 {
        return Err(Error::invalid_option("--partitions", "must be at least 1"));
    }
    let parallelism = args.parallelism.unwrap_or(args.partitions);
    if parallelism == 0 || parallelism > args.partitions {
        return Err(Error::invalid_option(
            "--parallelism",
            format!("must be between 1 and --partitions ({})", args.partitions),
        ));
    }
    let transfer = match (&args.file, &args.transfer) {
        (Some(file), _) => from_file(file)?,
        (None, Some(name)) => {
            let client = Client::new(args.server.as_deref(), args.token.as_deref())?;
            from_server(name, client.transfer(name).await?)?
        }
        (None, None) => return Err(Error::invalid_option("TRANSFER", "give a name or -f FILE")),
    };
    let name = match &args.name {
        Some(name) => {
            check_name(name).map_err(|reason| Error::invalid_option("--name", reason))?;
            name.clone()
        }
        None => default_name(&transfer.name),
    };
    let secrets: Vec<Value> = if args.secrets.is_empty() {
        // Optional: a transfer that needs no credentials runs without the Secret.
        vec![json!({"secretRef": {"name": CREDENTIALS_SECRET, "optional": true}})]
    } else {
        args.secrets
            .iter()
            .map(|s| json!({"secretRef": {"name": s}}))
            .collect()
    };
    let labels = json!({
        "app.kubernetes.io/name": "ferry",
        "app.kubernetes.io/component": "batch-transfer",
        "app.kubernetes.io/part-of": "ferry",
        "app.kubernetes.io/instance": name,
    });
    let metadata = json!({
        "name": name,
        "namespace": args.namespace,
        "labels": labels,
        "annotations": {"ferry.dev/transfer": transfer.name},
    });
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {MANIFEST_FILE: transfer.manifest},
    });
    let n = args.partitions;
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": parallelism,
            // Each partition is retried on its own; a bad manifest or setting (exit code 2)
            // fails the same way in every pod, so it ends the Job at once.
            "backoffLimitPerIndex": RETRIES_PER_PARTITION,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": "ferry", "operator": "In", "values": [2]},
            }]},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "ferry",
                        "image": args.image,
                        "imagePullPolicy": "IfNotPresent",
                        // The partition comes from JOB_COMPLETION_INDEX, set by Kubernetes.
                        "args": ["run", format!("{MANIFEST_DIR}/{MANIFEST_FILE}"), "--partitions", n.to_string()],
                        "env": [{"name": "FERRY_STATE_DIR", "value": "/var/lib/ferry/state"}],
                        "envFrom": secrets,
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "256Mi"},
                            "limits": {"cpu": "2", "memory": "2Gi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": true},
                            {"name": "data", "mountPath": "/var/lib/ferry"},
                        ],
                    }],
                    "volumes": [
                        {"name": "manifest", "configMap": {"name": name}},
                        // Checkpoints while the pod lives; a retried pod starts its partition afresh.
                        {"name": "data", "emptyDir": {}},
                    ],
                },
            },
        },
    });
    let header = format!(
        "# Transfer {} in {n} partitions: kubectl apply -f this file\n",
        transfer.name
    );
    Ok(format!(
        "{header}---\n{}---\n{}",
        yaml(&config_map)?,
        yaml(&job)?
    ))
}

fn yaml(value: &Value) -> Result<String> {
    serde_norway::to_string(value).map_err(|e| Error::Internal(format!("YAML output: {e}")))
}

/// A manifest file, checked as `ferry run` will check it, and kept as written.
fn from_file(file: &std::path::Path) -> Result<Transfer> {
    let shown = format!("-f {}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| Error::invalid_option(&shown, e))?;
    let manifest = Manifest::parse(&text).map_err(|e| match e {
        Error::InvalidOption { reason, .. } => Error::invalid_option(&shown, reason),
        other => other,
    })?;
    let value: Value =
        serde_norway::from_str(&text).map_err(|e| Error::invalid_option(&shown, e))?;
    only_pod_references(&value, &shown)?;
    Ok(Transfer {
        name: manifest.metadata.name,
        manifest: text,
    })
}

/// A transfer as the server shows it, turned back into the manifest it was made from.
fn from_server(name: &str, view: Value) -> Result<Transfer> {
    let shown = format!("transfer {name}");
    if let Some(at) = masked(&view["spec"], "spec") {
        return Err(Error::invalid_option(
            &shown,
            format!(
                "{at} holds a secret written into the manifest, which the server does not give out; \
                 write it as a reference (env:NAME) to a key of Secret {CREDENTIALS_SECRET}"
            ),
        ));
    }
    let mut metadata = Map::new();
    for key in ["name", "labels", "annotations"] {
        if let Some(v) = view["metadata"].get(key).filter(|v| !v.is_null()) {
            metadata.insert(key.into(), v.clone());
        }
    }
    let manifest = json!({
        "apiVersion": view["apiVersion"],
        "kind": view["kind"],
        "metadata": metadata,
        "spec": view["spec"],
    });
    only_pod_references(&manifest, &shown)?;
    Manifest::from_json(manifest.clone()).map_err(|e| match e {
        Error::InvalidOption { reason, .. } => Error::invalid_option(&shown, reason),
        other => other,
    })?;
    Ok(Transfer {
        name: name.to_string(),
        manifest: yaml(&manifest)?,
    })
}

/// A pod runs `ferry run`, which reads `env:`/`file:` references; Vault and `ref+`
/// references are resolved by `ferry serve` alone.
fn only_pod_references(manifest: &Value, shown: &str) -> Result<()> {
    let references = ferry_control::secrets::references(manifest);
    match references.iter().find(|r| r.starts_with("ref+")) {
        Some(reference) => Err(Error::invalid_option(
            shown,
            format!(
                "'{reference}' is resolved by ferry serve, not by the Job's `ferry run`; \
                 put the secret in Secret {CREDENTIALS_SECRET} and refer to it as env:NAME"
            ),
        )),
        None => Ok(()),
    }
}

/// Where in `value` (at `at`) the server put a mask instead of a secret, if anywhere.
fn masked(value: &Value, at: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains(ferry_core::redact::MASK) => Some(at.to_string()),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| masked(v, &format!("{at}.{k}"))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| masked(v, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Job names are DNS labels; pods add `-<index>-<suffix>` to them.
fn check_name(name: &str) -> std::result::Result<(), String> {
    ferry_control::resource::check_dns_label(name, MAX_NAME)
}

/// Room for the index and the random suffix Kubernetes appends to pod names.
const MAX_NAME: usize = 52;

/// `ferry-<transfer>`, made a valid name whatever the transfer's name is.
fn default_name(transfer: &str) -> String {
    let mut name: String = format!("ferry-{transfer}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    name.truncate(MAX_NAME);
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_dns_labels() {
        assert_eq!(default_name("orders-to-lake"), "ferry-orders-to-lake");
        assert_eq!(default_name("Orders_2026.v1"), "ferry-orders-2026-v1");
        let long = default_name(&"x".repeat(100));
        assert!(check_name(&long).is_ok(), "{long}");
        assert!(check_name("Bad_Name").is_err());
    }

    #[test]
    fn masked_secrets_are_found_with_their_place() {
        let spec = json!({"source": {"type": "postgres", "url": "postgres://app:***@db/shop"}});
        assert_eq!(masked(&spec, "spec").as_deref(), Some("spec.source.url"));
        let spec = json!({"source": {"type": "postgres", "password": "env:PGPASSWORD"}});
        assert_eq!(masked(&spec, "spec"), None);
    }

    #[test]
    fn vault_references_are_refused_and_env_references_kept() {
        let manifest =
            json!({"spec": {"source": {"password": "ref+vault://secret/shop#password"}}});
        let e = only_pod_references(&manifest, "transfer shop").unwrap_err();
        assert!(
            e.to_string().contains("ref+vault://secret/shop#password"),
            "{e}"
        );
        let manifest = json!({"spec": {"source": {"password": "env:PGPASSWORD"}}});
        assert!(only_pod_references(&manifest, "transfer shop").is_ok());
    }
}
