//! Writing to Google Cloud Storage through its JSON API: whole objects by media upload,
//! large ones as parallel composite uploads.
//!
//! Reads, lists and heads go through object_store like every other object store; writes
//! do not, because object_store uploads through GCS's XML API, which GCS emulators do not
//! take, so that path could never be tested here. A large object is uploaded the way
//! `gcloud storage cp` does with parallel composite uploads: each part becomes a temporary
//! object under `.ferry/uploads/` in the same bucket (any order, several at once, each a
//! durable object a later process can still compose), and completing composes them into
//! the destination (32 sources per request, in rounds for more) and deletes them. Nothing
//! is visible under the destination's key until that last compose; an aborted upload
//! deletes its parts.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{Error, PartToken, Result, UploadId};
use futures::{StreamExt, TryStreamExt};
use object_store::gcp::GcpCredentialProvider;
use serde_json::{json, Value};

/// Where temporary parts live in the bucket.
pub(crate) const UPLOADS_PREFIX: &str = ".ferry/uploads/";
/// Sources one compose request takes at most (GCS's limit).
const COMPOSE_FAN_IN: usize = 32;
/// Deletes of temporary parts in flight at once.
const DELETES_IN_FLIGHT: usize = 16;

/// The JSON API of one bucket.
pub(crate) struct GcsJson {
    client: reqwest::Client,
    /// `https://storage.googleapis.com` or an emulator's URL, no trailing slash.
    base: String,
    bucket: String,
    credentials: GcpCredentialProvider,
}

impl std::fmt::Debug for GcsJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsJson")
            .field("base", &self.base)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl GcsJson {
    pub(crate) fn new(
        base: &str,
        bucket: &str,
        credentials: GcpCredentialProvider,
        timeouts: (Duration, Duration),
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.0)
            .timeout(timeouts.1)
            .build()
            .map_err(|e| Error::Internal(format!("no HTTP client for GCS: {e}")))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            credentials,
        })
    }

    fn shown(&self, name: &str) -> String {
        format!("gs://{}/{name}", self.bucket)
    }

    /// `base` + the given path segments, each percent-encoded (a `/` in an object name
    /// included).
    fn url(&self, segments: &[&str]) -> Result<url::Url> {
        let mut url = url::Url::parse(&self.base)
            .map_err(|e| Error::invalid_option("endpoint", format!("{}: {e}", self.base)))?;
        url.path_segments_mut()
            .map_err(|_| Error::invalid_option("endpoint", &self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn object_url(&self, name: &str, tail: Option<&str>) -> Result<url::Url> {
        let mut segments = vec!["storage", "v1", "b", &self.bucket, "o", name];
        segments.extend(tail);
        self.url(&segments)
    }

    async fn send(&self, name: &str, request: reqwest::RequestBuilder) -> Result<Value> {
        let at = self.shown(name);
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| Error::permission_denied(&at, e))?;
        let request = if credential.bearer.is_empty() {
            request
        } else {
            request.bearer_auth(&credential.bearer)
        };
        let answer = request.send().await.map_err(|e| {
            let shown = ferry_core::error::one_line(&e.to_string());
            if e.is_connect() || e.is_timeout() {
                Error::unreachable(&at, shown)
            } else {
                Error::store(&at, shown)
            }
        })?;
        let status = answer.status();
        let body = answer.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
        let reason = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        let detail = format!("{status}: {reason}");
        Err(match status.as_u16() {
            404 => Error::not_found(at),
            401 | 403 => Error::permission_denied(at, detail),
            412 => Error::source_changed(at, "its generation no longer matches"),
            _ => Error::store(at, detail),
        })
    }

    /// Writes a whole object in one request; the object resource GCS answers with.
    pub(crate) async fn put(&self, name: &str, data: Bytes) -> Result<Value> {
        let mut url = self.url(&["upload", "storage", "v1", "b", &self.bucket, "o"])?;
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", name);
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data);
        self.send(name, request).await
    }

    /// Removes an object; true when there was one.
    pub(crate) async fn delete(&self, name: &str) -> Result<bool> {
        let request = self.client.delete(self.object_url(name, None)?);
        match self.send(name, request).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A new upload to `name`: nothing is sent until its first part.
    pub(crate) fn create_upload(&self) -> UploadId {
        // Random per process (RandomState's keys) and per call (the clock).
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        format!("{:016x}", h.finish())
    }

    /// The folder of an upload's temporary objects: under one folder per destination,
    /// named by a stable digest of the destination's name.
    fn upload_folder(name: &str, upload: &UploadId) -> String {
        format!("{}{upload}/", destination_folder(name))
    }

    /// Stores part `index` as a temporary object; its token is `name#generation`, so
    /// completion composes exactly what was written.
    pub(crate) async fn put_part(
        &self,
        name: &str,
        upload: &UploadId,
        index: usize,
        data: Bytes,
    ) -> Result<PartToken> {
        let part = format!("{}{index:05}", Self::upload_folder(name, upload));
        let object = self.put(&part, data).await.map_err(|e| {
            // Errors name the destination, not the temporary object.
            rename(e, &self.shown(&part), &self.shown(name))
        })?;
        let made = generation(&object).map(|g| g.to_string());
        Ok(PartToken(format!("{part}#{}", made.unwrap_or_default())))
    }

    /// Composes the parts, in order, into `name`, then deletes them.
    pub(crate) async fn complete_upload(
        &self,
        name: &str,
        upload: &UploadId,
        parts: Vec<PartToken>,
    ) -> Result<()> {
        let folder = Self::upload_folder(name, upload);
        let mut sources: Vec<(String, Option<i64>)> = Vec::with_capacity(parts.len());
        for p in &parts {
            let (object, generation) = p.0.rsplit_once('#').unwrap_or((p.0.as_str(), ""));
            if !object.starts_with(&folder) {
                return Err(Error::store(
                    self.shown(name),
                    format!("part {object} is not of upload {upload}"),
                ));
            }
            sources.push((object.to_string(), generation.parse().ok()));
        }
        if sources.is_empty() {
            return self.put(name, Bytes::new()).await.map(|_| ());
        }
        let written: Vec<String> = sources.iter().map(|(o, _)| o.clone()).collect();
        let mut intermediate = Vec::new();
        let mut round = 0;
        while sources.len() > COMPOSE_FAN_IN {
            let mut next = Vec::new();
            for (i, group) in sources.chunks(COMPOSE_FAN_IN).enumerate() {
                let into = format!("{folder}c{round}-{i:05}");
                let object = self
                    .compose(&into, group)
                    .await
                    .map_err(|e| rename(e, &self.shown(&into), &self.shown(name)))?;
                next.push((into.clone(), generation(&object)));
                intermediate.push(into);
            }
            sources = next;
            round += 1;
        }
        self.compose(name, &sources).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::store(
                self.shown(name),
                format!(
                    "upload {upload} has no parts left to compose (aborted or already completed)"
                ),
            ),
            e => e,
        })?;
        self.delete_all(written.into_iter().chain(intermediate).collect())
            .await
    }

    async fn compose(&self, into: &str, sources: &[(String, Option<i64>)]) -> Result<Value> {
        let sources: Vec<Value> = sources
            .iter()
            .map(|(object, generation)| match generation {
                Some(g) => json!({"name": object, "generation": g.to_string(),
                                  "objectPreconditions": {"ifGenerationMatch": g.to_string()}}),
                None => json!({"name": object}),
            })
            .collect();
        let body = json!({
            "sourceObjects": sources,
            "destination": {"contentType": "application/octet-stream"},
        });
        let request = self
            .client
            .post(self.object_url(into, Some("compose"))?)
            .json(&body);
        self.send(into, request).await
    }

    async fn delete_all(&self, names: Vec<String>) -> Result<()> {
        futures::stream::iter(names)
            .map(|n| async move { self.delete(&n).await.map(|_| ()) })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// Every object whose name starts with `prefix`, page by page.
    async fn names_under(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = self.url(&["storage", "v1", "b", &self.bucket, "o"])?;
            url.query_pairs_mut()
                .append_pair("prefix", prefix)
                .append_pair("fields", "items(name),nextPageToken");
            if let Some(t) = &token {
                url.query_pairs_mut().append_pair("pageToken", t);
            }
            let page = self.send(prefix, self.client.get(url)).await?;
            if let Some(items) = page["items"].as_array() {
                names.extend(
                    items
                        .iter()
                        .filter_map(|i| i["name"].as_str().map(str::to_string)),
                );
            }
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
    }

    /// Deletes the parts an upload stored.
    pub(crate) async fn abort_upload(&self, name: &str, upload: &UploadId) -> Result<()> {
        let parts = self.names_under(&Self::upload_folder(name, upload)).await?;
        self.delete_all(parts).await
    }

    /// Deletes the parts of every upload to `name` (a killed run left them unrecorded).
    pub(crate) async fn discard_uploads_to(&self, name: &str) -> Result<()> {
        let parts = self.names_under(&destination_folder(name)).await?;
        self.delete_all(parts).await
    }
}

/// `.ferry/uploads/<md5 of the destination's name>/`.
pub(crate) fn destination_folder(name: &str) -> String {
    use md5::{Digest as _, Md5};
    let digest = Md5::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{UPLOADS_PREFIX}{hex}/")
}

fn generation(object: &Value) -> Option<i64> {
    object["generation"].as_str().and_then(|g| g.parse().ok())
}

/// The same error, naming `to` where it named `from`.
fn rename(e: Error, from: &str, to: &str) -> Error {
    match e {
        Error::Store { address, detail } if address == from => Error::Store {
            address: to.to_string(),
            detail: format!("{detail} (writing the temporary part {from})"),
        },
        Error::NotFound { .. } => Error::store(to, format!("the temporary part {from} is gone")),
        e => e,
    }
}
