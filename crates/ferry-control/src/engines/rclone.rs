//! rclone's remote-control daemon (`rclone rcd`) as a transfer engine.
//!
//! A run becomes one asynchronous `sync/copy` (a directory or prefix) or
//! `operations/copyfile` (one object) with a stats group of its own. Stores are given as
//! on-the-fly remotes (JSON objects with the credentials of this run), so nothing is
//! written to rclone's config file. Only `job/status` tells a finished job from a
//! cancelled or failed one: the group's stats of a stopped job read like a complete copy.
//! rclone forgets finished jobs after `--rc-job-expire-duration` and numbers jobs from 1
//! again after a restart, so a job is recognised by its group, never by its id alone.

use std::path::Path;

use async_trait::async_trait;
use ferry_core::DataAddress;
use serde_json::{json, Map, Value};

use super::{Engine, EngineConfig, EngineError, JobRef, JobRequest, JobState};

pub struct Rclone {
    config: EngineConfig,
    client: reqwest::Client,
    base: url::Url,
    user: Option<String>,
    password: Option<String>,
}

impl Rclone {
    pub fn new(config: EngineConfig) -> Result<Self, String> {
        let mut base = url::Url::parse(&config.url)
            .map_err(|e| format!("engine '{}': url '{}': {e}", config.name, config.url))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = super::http_client(&config, 30.0)?;
        let password = config.password()?;
        Ok(Self {
            user: config.user.clone(),
            password,
            config,
            client,
            base,
        })
    }

    fn at(&self) -> String {
        format!("engine {} at {}", self.config.name, self.config.url)
    }

    /// One call of the remote-control API.
    async fn call(&self, method: &str, body: Value) -> Result<Value, EngineError> {
        let url = self
            .base
            .join(method)
            .map_err(|e| EngineError::Refused(format!("{}: {method}: {e}", self.at())))?;
        let mut request = self.client.post(url).json(&body);
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.as_deref());
        }
        let response = request
            .send()
            .await
            .map_err(|e| super::unreachable(&self.at(), e))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(EngineError::Unauthorized(format!(
                "{} refused ferry's credentials ({}); check the engine's user and password",
                self.at(),
                status.as_u16()
            )));
        }
        let text = response.text().await.map_err(|e| {
            EngineError::Unreachable(format!(
                "{}: {method}: {}",
                self.at(),
                crate::webhook::describe(e)
            ))
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(200).collect());
            let detail = ferry_core::error::one_line(&detail);
            if status.is_server_error() && detail.contains("job not found") {
                return Err(EngineError::Refused("job not found".into()));
            }
            return Err(EngineError::Refused(format!(
                "{}: {method} answered {}: {detail}",
                self.at(),
                status.as_u16()
            )));
        }
        Ok(value)
    }

    async fn status(&self, id: &str) -> Result<Option<Value>, EngineError> {
        let Ok(jobid) = id.parse::<i64>() else {
            return Ok(None);
        };
        match self.call("job/status", json!({"jobid": jobid})).await {
            Ok(v) => Ok(Some(v)),
            Err(EngineError::Refused(d)) if d == "job not found" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A store as an rclone on-the-fly remote: a JSON object with `type`, `_root` and the
/// backend's options.
pub fn remote(address: &DataAddress, root: &str) -> Result<Value, String> {
    let mut fs = Map::new();
    match address {
        DataAddress::Local { .. } => {
            fs.insert("type".into(), json!("local"));
        }
        DataAddress::S3 { bucket, .. } => {
            let settings =
                ferry_connectors::object::resolved_settings(address).map_err(|e| e.to_string())?;
            fs.insert("type".into(), json!("s3"));
            fs.insert("provider".into(), json!("Other"));
            let keyed = settings.contains_key("access_key_id");
            fs.insert("env_auth".into(), json!((!keyed).to_string()));
            for (ours, theirs) in [
                ("access_key_id", "access_key_id"),
                ("secret_access_key", "secret_access_key"),
                ("token", "session_token"),
                ("endpoint", "endpoint"),
                ("region", "region"),
            ] {
                if let Some(v) = settings.get(ours) {
                    fs.insert(theirs.into(), json!(v));
                }
            }
            if !fs.contains_key("region") {
                fs.insert("region".into(), json!("us-east-1"));
            }
            let root = format!("{bucket}/{root}");
            fs.insert("_root".into(), json!(root.trim_end_matches('/')));
            return Ok(Value::Object(fs));
        }
        DataAddress::Azure { container, .. } => {
            let settings =
                ferry_connectors::object::resolved_settings(address).map_err(|e| e.to_string())?;
            fs.insert("type".into(), json!("azureblob"));
            let emulator = settings.get("use_emulator").is_some_and(|v| v == "true")
                || settings.get("endpoint").is_some_and(|e| {
                    e.starts_with("http://127.0.0.1:10000")
                        || e.starts_with("http://localhost:10000")
                });
            if emulator {
                // rclone 1.60 builds the emulator's URL from `endpoint`, which must then be
                // the whole URL of the emulated account.
                let endpoint = settings.get("endpoint").cloned().unwrap_or_else(|| {
                    let base = std::env::var("AZURITE_BLOB_STORAGE_URL")
                        .unwrap_or_else(|_| "http://127.0.0.1:10000".into());
                    format!("{}/devstoreaccount1", base.trim_end_matches('/'))
                });
                fs.insert("use_emulator".into(), json!("true"));
                fs.insert("endpoint".into(), json!(endpoint));
            } else {
                for (ours, theirs) in [
                    ("account_name", "account"),
                    ("access_key", "key"),
                    ("endpoint", "endpoint"),
                ] {
                    if let Some(v) = settings.get(ours) {
                        fs.insert(theirs.into(), json!(v));
                    }
                }
                if let (Some(sas), Some(account)) =
                    (settings.get("sas_key"), settings.get("account_name"))
                {
                    let sas = sas.trim_start_matches('?');
                    fs.insert(
                        "sas_url".into(),
                        json!(format!(
                            "https://{account}.blob.core.windows.net/{container}?{sas}"
                        )),
                    );
                }
            }
            let root = format!("{container}/{root}");
            fs.insert("_root".into(), json!(root.trim_end_matches('/')));
            return Ok(Value::Object(fs));
        }
        other => return Err(format!("rclone cannot move {} stores", other.kind())),
    }
    fs.insert("_root".into(), json!(root));
    Ok(Value::Object(fs))
}

/// The address's path within its store: a local path, or an object key / blob path.
fn path_of(address: &DataAddress) -> String {
    match address {
        DataAddress::Local { path } => path.display().to_string(),
        DataAddress::S3 { key, .. } => key.clone(),
        DataAddress::Azure { path, .. } => path.clone(),
        _ => String::new(),
    }
}

/// `dir/name` → (`dir`, `name`); a name alone → (`""`, `name`).
fn split(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".into(), name.into()),
        Some((dir, name)) => (dir.into(), name.into()),
        None => (String::new(), trimmed.into()),
    }
}

/// The body of the call that starts `job`.
pub fn copy_call(job: &JobRequest) -> Result<(&'static str, Value), String> {
    let src_path = path_of(&job.source);
    let dst_path = path_of(&job.destination);
    let mut body = if job.single_object {
        let (src_dir, name) = split(&src_path);
        let into_dir = job.destination.names_a_directory()
            || matches!(&job.destination, DataAddress::Local { path } if Path::new(path).is_dir());
        let (dst_dir, dst_name) = if into_dir {
            (dst_path.trim_end_matches('/').to_string(), name.clone())
        } else {
            split(&dst_path)
        };
        json!({
            "srcFs": remote(&job.source, &src_dir)?,
            "srcRemote": name,
            "dstFs": remote(&job.destination, &dst_dir)?,
            "dstRemote": dst_name,
        })
    } else {
        json!({
            "srcFs": remote(&job.source, &src_path)?,
            "dstFs": remote(&job.destination, &dst_path)?,
        })
    };
    body["_async"] = json!(true);
    body["_group"] = json!(job.group);
    let method = if job.single_object {
        "operations/copyfile"
    } else {
        "sync/copy"
    };
    Ok((method, body))
}

#[async_trait]
impl Engine for Rclone {
    fn config(&self) -> &EngineConfig {
        &self.config
    }

    async fn submit(&self, job: &JobRequest) -> Result<JobRef, EngineError> {
        let (method, body) = copy_call(job).map_err(EngineError::Refused)?;
        let answer = self.call(method, body).await?;
        let id = answer["jobid"].as_i64().ok_or_else(|| {
            EngineError::Refused(format!("{}: {method} gave no job id", self.at()))
        })?;
        Ok(JobRef {
            id: id.to_string(),
            group: job.group.clone(),
        })
    }

    async fn find(&self, group: &str) -> Result<Option<JobRef>, EngineError> {
        let listed = self.call("job/list", json!({})).await?;
        let mut ids: Vec<i64> = listed["jobids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        // Newest first: a run's job is recent, and every call (this one included) makes
        // a job of its own in rclone 1.60's list.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            if let Some(status) = self.status(&id.to_string()).await? {
                if status["group"].as_str() == Some(group) {
                    return Ok(Some(JobRef {
                        id: id.to_string(),
                        group: group.to_string(),
                    }));
                }
            }
        }
        Ok(None)
    }

    async fn poll(&self, job: &JobRef) -> Result<JobState, EngineError> {
        let Some(status) = self.status(&job.id).await? else {
            return Ok(JobState {
                gone: true,
                ..JobState::default()
            });
        };
        // Another job under the same id: rclone restarted and numbers jobs from 1 again.
        if status["group"].as_str() != Some(job.group.as_str()) {
            return Ok(JobState {
                gone: true,
                ..JobState::default()
            });
        }
        let stats = self.call("core/stats", json!({"group": job.group})).await?;
        let number = |v: &Value| {
            v.as_u64()
                .or_else(|| v.as_f64().map(|f| f as u64))
                .unwrap_or(0)
        };
        let error = status["error"].as_str().filter(|e| !e.is_empty());
        Ok(JobState {
            finished: status["finished"].as_bool().unwrap_or(false),
            success: status["success"].as_bool().unwrap_or(false),
            error: error.map(ferry_core::error::one_line),
            bytes: number(&stats["bytes"]),
            total_bytes: number(&stats["totalBytes"]),
            files: number(&stats["transfers"]),
            total_files: number(&stats["totalTransfers"]),
            gone: false,
        })
    }

    async fn stop(&self, job: &JobRef) -> Result<(), EngineError> {
        let Ok(jobid) = job.id.parse::<i64>() else {
            return Ok(());
        };
        match self.call("job/stop", json!({"jobid": jobid})).await {
            Ok(_) => Ok(()),
            Err(EngineError::Refused(d)) if d == "job not found" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_file_is_copied_by_name_into_a_directory_or_to_a_name() {
        let job = |src: &str, dst: &str| JobRequest {
            source: DataAddress::parse(src).unwrap(),
            destination: DataAddress::parse(dst).unwrap(),
            single_object: true,
            group: "ferry/r1".into(),
            estimated_bytes: None,
        };
        let (method, body) = copy_call(&job("/data/in/a.bin", "/data/out/")).unwrap();
        assert_eq!(method, "operations/copyfile");
        assert_eq!(body["srcFs"]["_root"], "/data/in");
        assert_eq!(body["srcRemote"], "a.bin");
        assert_eq!(body["dstFs"]["_root"], "/data/out");
        assert_eq!(body["dstRemote"], "a.bin");
        assert_eq!(body["_group"], "ferry/r1");
        let (_, body) = copy_call(&job("/data/in/a.bin", "/data/out/b.bin")).unwrap();
        assert_eq!(body["dstFs"]["_root"], "/data/out");
        assert_eq!(body["dstRemote"], "b.bin");
    }

    #[test]
    fn a_tree_is_one_sync_copy_and_kafka_is_refused() {
        let job = JobRequest {
            source: DataAddress::parse("/data/in/").unwrap(),
            destination: DataAddress::parse("/data/out/").unwrap(),
            single_object: false,
            group: "g".into(),
            estimated_bytes: None,
        };
        let (method, body) = copy_call(&job).unwrap();
        assert_eq!(method, "sync/copy");
        assert_eq!(
            body["srcFs"],
            json!({"type": "local", "_root": "/data/in/"})
        );
        assert_eq!(body["_async"], true);
        let kafka = JobRequest {
            destination: DataAddress::parse("kafka://127.0.0.1:9092/t").unwrap(),
            ..job
        };
        assert!(copy_call(&kafka).unwrap_err().contains("cannot move kafka"));
    }
}
