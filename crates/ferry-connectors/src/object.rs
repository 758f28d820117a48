//! S3-compatible stores, Azure Blob Storage, Google Cloud Storage and plain HTTP(S),
//! through the `object_store` crate. Signing, authentication, retries and backoff are object_store's; this module maps
//! addresses to builders, object_store errors to ferry's, and exposes the low-level
//! multipart API so a later process can finish an upload an earlier one started.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::store::{ListStream, Listing};
use ferry_core::{DataAddress, Entry, Error, PartToken, Result, Sink, Source, UploadId};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutPayload, RetryConfig,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

/// How long a store may stay unreachable before a request fails: a few quick retries with
/// exponential backoff, not object_store's three-minute default.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(30),
    }
}

const CONNECT_TIMEOUT: &str = "5s";
/// Where GCS's APIs are when no endpoint or emulator is named.
const GCS_BASE_URL: &str = "https://storage.googleapis.com";
/// Per request; a 64 MiB part at 1 MB/s still fits.
const REQUEST_TIMEOUT: &str = "120s";

/// How long a request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// A request as a whole is bounded ([`REQUEST_TIMEOUT`]): parts, listings, heads.
    Bounded,
    /// A response is streamed to a reader at its own pace (a pull endpoint's download):
    /// only a stall is bounded, and a whole download is bounded by a day.
    Streamed,
}

impl Pace {
    /// `(timeout, read timeout)` as object_store's client settings.
    fn timeouts(self) -> (&'static str, Option<&'static str>) {
        match self {
            Pace::Bounded => (REQUEST_TIMEOUT, None),
            Pace::Streamed => ("24h", Some("60s")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    S3,
    Azure,
    Gcs,
    Http,
}

#[derive(Clone)]
pub struct ObjectBackend {
    address: DataAddress,
    family: Family,
    pub(crate) store: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
    /// GCS: writes go through its JSON API (see [`crate::gcs`]).
    gcs: Option<Arc<crate::gcs::GcsJson>>,
    /// The key or path the address names, without a trailing `/`.
    pub(crate) prefix: String,
    /// Two backends with the same identity can copy between each other server-side.
    identity: String,
}

impl fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectBackend({})", self.address)
    }
}

/// What an S3, Azure or GCS address resolves to once its options are laid over the
/// environment (`AWS_*`, `AZURE_*`, `GOOGLE_*`, `STORAGE_EMULATOR_HOST`), named as
/// object_store names them, for handing the same store to another transfer engine:
/// `endpoint`, `region`, `access_key_id`, `secret_access_key`, `token` for S3;
/// `account_name`, `access_key`, `sas_key`, `endpoint`, `use_emulator` for Azure;
/// `base_url`, `service_account`, `service_account_key`, `application_credentials`,
/// `skip_signature` for GCS. Only the settings that are set are returned.
pub fn resolved_settings(address: &DataAddress) -> Result<BTreeMap<&'static str, String>> {
    let mut out = BTreeMap::new();
    match address {
        DataAddress::S3 { options, .. } => {
            let builder = s3_options(address, AmazonS3Builder::from_env(), options)?;
            for (name, key) in [
                ("endpoint", AmazonS3ConfigKey::Endpoint),
                ("region", AmazonS3ConfigKey::Region),
                ("access_key_id", AmazonS3ConfigKey::AccessKeyId),
                ("secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
                ("token", AmazonS3ConfigKey::Token),
            ] {
                if let Some(v) = builder.get_config_value(&key) {
                    out.insert(name, v);
                }
            }
        }
        DataAddress::Azure { options, .. } => {
            let builder = azure_options(address, MicrosoftAzureBuilder::from_env(), options)?;
            for (name, key) in [
                ("account_name", AzureConfigKey::AccountName),
                ("access_key", AzureConfigKey::AccessKey),
                ("sas_key", AzureConfigKey::SasKey),
                ("endpoint", AzureConfigKey::Endpoint),
                ("use_emulator", AzureConfigKey::UseEmulator),
            ] {
                if let Some(v) = builder.get_config_value(&key) {
                    out.insert(name, v);
                }
            }
        }
        DataAddress::Gcs { options, .. } => {
            let builder = gcs_options(address, GoogleCloudStorageBuilder::from_env(), options)?;
            let builder = gcs_emulator(builder);
            for (name, key) in [
                ("base_url", GoogleConfigKey::BaseUrl),
                ("service_account", GoogleConfigKey::ServiceAccount),
                ("service_account_key", GoogleConfigKey::ServiceAccountKey),
                (
                    "application_credentials",
                    GoogleConfigKey::ApplicationCredentials,
                ),
                ("skip_signature", GoogleConfigKey::SkipSignature),
            ] {
                if let Some(v) = builder.get_config_value(&key) {
                    if name != "skip_signature" || v == "true" {
                        out.insert(name, v);
                    }
                }
            }
        }
        _ => return Err(invalid(address, "not an object store")),
    }
    Ok(out)
}

/// `builder` with the address's S3 options laid over it.
fn s3_options(
    address: &DataAddress,
    mut builder: AmazonS3Builder,
    options: &BTreeMap<String, String>,
) -> Result<AmazonS3Builder> {
    for (name, value) in options {
        let key = AmazonS3ConfigKey::from_str(name).map_err(|_| {
            invalid(
                address,
                format!("unknown S3 option '{name}' (e.g. endpoint, region, access_key_id, skip_signature)"),
            )
        })?;
        builder = builder.with_config(key, value);
    }
    Ok(builder)
}

/// `builder` with the address's Azure options laid over it.
fn azure_options(
    address: &DataAddress,
    mut builder: MicrosoftAzureBuilder,
    options: &BTreeMap<String, String>,
) -> Result<MicrosoftAzureBuilder> {
    for (name, value) in options {
        let key = AzureConfigKey::from_str(name).map_err(|_| {
            invalid(
                address,
                format!("unknown Azure option '{name}' (e.g. account, endpoint, use_emulator, sas_token)"),
            )
        })?;
        builder = builder.with_config(key, value);
    }
    Ok(builder)
}

/// `builder` with the address's GCS options laid over it. `endpoint` is taken as
/// object_store's `base_url`, as S3 and Azure addresses name theirs.
fn gcs_options(
    address: &DataAddress,
    mut builder: GoogleCloudStorageBuilder,
    options: &BTreeMap<String, String>,
) -> Result<GoogleCloudStorageBuilder> {
    for (name, value) in options {
        let key = if name == "endpoint" {
            GoogleConfigKey::BaseUrl
        } else {
            GoogleConfigKey::from_str(name).map_err(|_| {
                invalid(
                    address,
                    format!("unknown GCS option '{name}' (e.g. endpoint, service_account, application_credentials, skip_signature)"),
                )
            })?
        };
        builder = builder.with_config(key, value);
    }
    Ok(builder)
}

/// Points `builder` at the emulator named by `STORAGE_EMULATOR_HOST` (`host:port` or a URL,
/// as Google's own client libraries take it), unless a base URL is already set: requests go
/// there over plain HTTP and unsigned, since an emulator checks no credentials.
fn gcs_emulator(builder: GoogleCloudStorageBuilder) -> GoogleCloudStorageBuilder {
    if builder
        .get_config_value(&GoogleConfigKey::BaseUrl)
        .is_some()
    {
        return builder;
    }
    let Some(host) = std::env::var("STORAGE_EMULATOR_HOST")
        .ok()
        .map(|h| h.trim().trim_end_matches('/').to_string())
        .filter(|h| !h.is_empty())
    else {
        return builder;
    };
    let base = if host.contains("://") {
        host
    } else {
        format!("http://{host}")
    };
    builder.with_base_url(&base).with_skip_signature(true)
}

/// Headers sent with every request to an http(s) source (`ferry copy --header`).
static HTTP_HEADERS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Sets the headers every http(s) source of this process sends, as `Name: value` lines;
/// once, before any source is opened. An invalid one is an error naming it (value hidden).
pub fn set_http_headers(lines: &[String]) -> Result<()> {
    let mut parsed = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            Error::invalid_option(
                "--header",
                format!(
                    "'{}' is not 'Name: value'",
                    line.split(':').next().unwrap_or_default()
                ),
            )
        })?;
        let (name, value) = (name.trim(), value.trim());
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            Error::invalid_option("--header", format!("'{name}' is not a header name"))
        })?;
        HeaderValue::from_str(value).map_err(|_| {
            Error::invalid_option(
                "--header",
                format!("the value of '{name}' is not a valid header value"),
            )
        })?;
        parsed.push((name.to_string(), value.to_string()));
    }
    HTTP_HEADERS
        .set(parsed)
        .map_err(|_| Error::Internal("HTTP headers are set once".into()))
}

/// The headers of requests to `url`: those set for the process, and a `token` query
/// parameter as `Authorization: Bearer` (how a pull endpoint's link carries its token),
/// so the token is never part of a request line or a log.
fn http_headers(address: &DataAddress, url: &url::Url) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in HTTP_HEADERS.get().into_iter().flatten() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(address, e))?;
        let mut value = HeaderValue::from_str(value).map_err(|e| invalid(address, e))?;
        value.set_sensitive(true);
        headers.append(name, value);
    }
    if !headers.contains_key(AUTHORIZATION) {
        if let Some((_, token)) = url.query_pairs().find(|(k, _)| k == "token") {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| invalid(address, "the token parameter is not a valid bearer token"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
    }
    Ok(headers)
}

fn invalid(address: &DataAddress, reason: impl fmt::Display) -> Error {
    Error::InvalidAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether gcloud's application default credentials file exists, which object_store reads
/// when no other credentials are given.
fn gcloud_default_credentials() -> bool {
    std::env::var_os("HOME").is_some_and(|home| {
        std::path::Path::new(&home)
            .join(".config/gcloud/application_default_credentials.json")
            .exists()
    })
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

impl ObjectBackend {
    pub fn new(address: DataAddress) -> Result<Self> {
        Self::with_pace(address, Pace::Bounded)
    }

    pub(crate) fn with_pace(address: DataAddress, pace: Pace) -> Result<Self> {
        match &address {
            DataAddress::S3 {
                bucket,
                key,
                options,
            } => {
                let (bucket, key, options) = (bucket.clone(), key.clone(), options.clone());
                Self::s3(address, &bucket, &key, &options, pace)
            }
            DataAddress::Azure {
                container,
                path,
                options,
            } => {
                let (container, path, options) = (container.clone(), path.clone(), options.clone());
                Self::azure(address, &container, &path, &options, pace)
            }
            DataAddress::Gcs {
                bucket,
                key,
                options,
            } => {
                let (bucket, key, options) = (bucket.clone(), key.clone(), options.clone());
                Self::gcs(address, &bucket, &key, &options)
            }
            DataAddress::Http { url } => {
                let url = url.clone();
                Self::http(address, &url)
            }
            DataAddress::Local { .. } | DataAddress::Table(_) | DataAddress::Kafka(_) => {
                Err(Error::Internal(format!("{address} is not an object store")))
            }
        }
    }

    fn s3(
        address: DataAddress,
        bucket: &str,
        key: &str,
        options: &BTreeMap<String, String>,
        pace: Pace,
    ) -> Result<Self> {
        let (timeout, read_timeout) = pace.timeouts();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // No SHA-256 of every payload: TLS or loopback already protects the bytes, and
            // ferry checksums them itself. `?unsigned_payload=false` turns signing back on.
            .with_unsigned_payload(true)
            .with_retry(retry_config())
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                CONNECT_TIMEOUT,
            )
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), timeout);
        if let Some(read_timeout) = read_timeout {
            builder = builder.with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ReadTimeout),
                read_timeout,
            );
        }
        builder = s3_options(&address, builder, options)?;
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        if let Some(endpoint) = &endpoint {
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
        }
        if builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let access_key = builder.get_config_value(&AmazonS3ConfigKey::AccessKeyId);
        let skip_signature = builder
            .get_config_value(&AmazonS3ConfigKey::SkipSignature)
            .is_some_and(|v| v == "true");
        let federated = std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
            || std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
            || std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || env_flag("FERRY_S3_INSTANCE_CREDENTIALS");
        if access_key.is_none() && !skip_signature && !federated {
            // Without this check object_store would ask the instance metadata service,
            // which is slow to fail off the cloud.
            return Err(invalid(
                &address,
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add ?skip_signature=true for a public bucket",
            ));
        }
        let s3 = Arc::new(builder.build().map_err(|e| invalid(&address, e))?);
        let identity = format!(
            "s3|{}|{bucket}|{}",
            endpoint.unwrap_or_default(),
            access_key.unwrap_or_default()
        );
        Ok(Self {
            family: Family::S3,
            store: s3.clone(),
            multipart: Some(s3),
            gcs: None,
            prefix: key.trim_end_matches('/').to_string(),
            identity,
            address,
        })
    }

    fn azure(
        address: DataAddress,
        container: &str,
        path: &str,
        options: &BTreeMap<String, String>,
        pace: Pace,
    ) -> Result<Self> {
        let (timeout, read_timeout) = pace.timeouts();
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .with_retry(retry_config())
            .with_config(
                AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
                CONNECT_TIMEOUT,
            )
            .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), timeout);
        if let Some(read_timeout) = read_timeout {
            builder = builder.with_config(
                AzureConfigKey::Client(ClientConfigKey::ReadTimeout),
                read_timeout,
            );
        }
        builder = azure_options(&address, builder, options)?;
        let get = |k: AzureConfigKey| builder.get_config_value(&k);
        let emulator = get(AzureConfigKey::UseEmulator).is_some_and(|v| v == "true");
        let plain_http = get(AzureConfigKey::Endpoint).is_some_and(|e| e.starts_with("http://"));
        let has_credentials = emulator
            || get(AzureConfigKey::AccessKey).is_some()
            || get(AzureConfigKey::SasKey).is_some()
            || get(AzureConfigKey::Token).is_some()
            || get(AzureConfigKey::ClientSecret).is_some()
            || get(AzureConfigKey::FederatedTokenFile).is_some()
            || get(AzureConfigKey::SkipSignature).is_some_and(|v| v == "true")
            || env_flag("FERRY_AZURE_MANAGED_IDENTITY");
        if !has_credentials {
            return Err(invalid(
                &address,
                "no Azure credentials: set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a SAS token), or AZURE_STORAGE_USE_EMULATOR=true for Azurite",
            ));
        }
        let identity = format!(
            "azure|{}|{}|{container}",
            get(AzureConfigKey::Endpoint).unwrap_or_default(),
            get(AzureConfigKey::AccountName).unwrap_or_default(),
        );
        if emulator || plain_http {
            builder = builder.with_allow_http(true);
        }
        let azure = Arc::new(builder.build().map_err(|e| invalid(&address, e))?);
        Ok(Self {
            family: Family::Azure,
            store: azure.clone(),
            multipart: Some(azure),
            gcs: None,
            prefix: path.trim_end_matches('/').to_string(),
            identity,
            address,
        })
    }

    fn gcs(
        address: DataAddress,
        bucket: &str,
        key: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut builder = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry_config())
            .with_config(
                GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout),
                CONNECT_TIMEOUT,
            )
            .with_config(
                GoogleConfigKey::Client(ClientConfigKey::Timeout),
                REQUEST_TIMEOUT,
            );
        builder = gcs_emulator(gcs_options(&address, builder, options)?);
        let skip_signature = builder
            .get_config_value(&GoogleConfigKey::SkipSignature)
            .is_some_and(|v| v == "true");
        if skip_signature
            && builder
                .get_config_value(&GoogleConfigKey::BearerToken)
                .is_none()
        {
            // object_store 0.14 signs uploads and deletes even when told not to, asking the
            // instance metadata service for a token; a fixed empty one keeps them unsigned.
            builder = builder.with_bearer_token("");
        }
        let get = |k: GoogleConfigKey| builder.get_config_value(&k);
        let base_url = get(GoogleConfigKey::BaseUrl);
        let has_credentials = get(GoogleConfigKey::ServiceAccount).is_some()
            || get(GoogleConfigKey::ServiceAccountKey).is_some()
            || get(GoogleConfigKey::ApplicationCredentials).is_some()
            || get(GoogleConfigKey::BearerToken).is_some()
            || skip_signature
            || gcloud_default_credentials()
            || env_flag("FERRY_GCS_INSTANCE_CREDENTIALS");
        if !has_credentials {
            // Without this check object_store would ask the instance metadata service,
            // which is slow to fail off the cloud.
            return Err(invalid(
                &address,
                "no GCS credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON file, or STORAGE_EMULATOR_HOST for an emulator, or add ?skip_signature=true for a public bucket",
            ));
        }
        if base_url
            .as_deref()
            .is_some_and(|u| u.starts_with("http://"))
        {
            builder =
                builder.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
        }
        let gcs = Arc::new(builder.build().map_err(|e| invalid(&address, e))?);
        let json = crate::gcs::GcsJson::new(
            base_url.as_deref().unwrap_or(GCS_BASE_URL),
            bucket,
            gcs.credentials().clone(),
            (Duration::from_secs(5), Duration::from_secs(120)),
        )?;
        let identity = format!("gcs|{}|{bucket}", base_url.unwrap_or_default());
        Ok(Self {
            family: Family::Gcs,
            store: gcs.clone(),
            multipart: Some(gcs),
            gcs: Some(Arc::new(json)),
            prefix: key.trim_end_matches('/').to_string(),
            identity,
            address,
        })
    }

    fn http(address: DataAddress, url: &url::Url) -> Result<Self> {
        let path = url.path();
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut base = url.clone();
        // object_store adds the object's name as a path segment: a base ending in `/`
        // would ask for `dir//name`.
        base.set_path(if dir.is_empty() { "/" } else { dir });
        base.set_query(None);
        let headers = http_headers(&address, url)?;
        let options = ClientOptions::new()
            .with_config(ClientConfigKey::ConnectTimeout, CONNECT_TIMEOUT)
            .with_config(ClientConfigKey::Timeout, REQUEST_TIMEOUT)
            .with_config(
                ClientConfigKey::AllowHttp,
                (url.scheme() == "http").to_string(),
            )
            .with_default_headers(headers);
        let store = HttpBuilder::new()
            .with_url(base.as_str())
            .with_retry(retry_config())
            .with_client_options(options)
            .build()
            .map_err(|e| invalid(&address, e))?;
        let name = percent_decode(name);
        Ok(Self {
            family: Family::Http,
            store: Arc::new(store),
            multipart: None,
            gcs: None,
            prefix: name,
            identity: format!("http|{base}"),
            address,
        })
    }

    fn path(&self, key: &str) -> Result<Path> {
        let full = match (self.prefix.is_empty(), key.is_empty()) {
            (_, true) => self.prefix.clone(),
            (true, false) => key.to_string(),
            (false, false) => format!("{}/{key}", self.prefix),
        };
        if full.is_empty() {
            return Err(invalid(
                &self.address,
                "names a bucket or container root; add an object key, or end it with '/' to copy into it",
            ));
        }
        Path::parse(&full).map_err(|e| invalid(&self.address, format!("invalid key '{full}': {e}")))
    }

    fn shown(&self, path: &Path) -> String {
        match &self.address {
            DataAddress::S3 { bucket, .. } => format!("s3://{bucket}/{path}"),
            DataAddress::Azure { container, .. } => format!("az://{container}/{path}"),
            DataAddress::Gcs { bucket, .. } => format!("gs://{bucket}/{path}"),
            other => other.to_string(),
        }
    }

    fn multipart(&self) -> Result<&Arc<dyn MultipartStore>> {
        self.multipart
            .as_ref()
            .ok_or_else(|| Error::not_supported(&self.address, "this store is read-only"))
    }

    /// Translates an object_store error into ferry's, naming the object at fault.
    pub(crate) fn error(&self, path: &Path, err: object_store::Error) -> Error {
        use object_store::Error as E;
        let at = self.shown(path);
        let text = err.to_string();
        let detail = concise(&text);
        let code = between(&text, "<Code>", "</Code>").unwrap_or_default();
        if matches!(code, "NoSuchBucket" | "ContainerNotFound") {
            return Error::not_found(format!("{} ({detail})", self.root_shown()));
        }
        let lower = text.to_ascii_lowercase();
        match err {
            E::NotFound { .. } => Error::not_found(at),
            E::Precondition { .. } | E::NotModified { .. } => {
                Error::source_changed(at, "its ETag no longer matches the listing")
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                Error::permission_denied(at, detail)
            }
            E::NotSupported { .. } => Error::not_supported(at, detail),
            _ if lower.contains("403 forbidden")
                || lower.contains("401 unauthorized")
                || matches!(
                    code,
                    "SignatureDoesNotMatch"
                        | "InvalidAccessKeyId"
                        | "AuthorizationFailure"
                        | "AuthenticationFailed"
                        | "AccessDenied"
                ) =>
            {
                Error::permission_denied(at, detail)
            }
            _ if lower.contains("error sending request")
                || lower.contains("connection refused")
                || lower.contains("dns error")
                || lower.contains("timed out") =>
            {
                Error::unreachable(at, detail)
            }
            _ => Error::store(at, detail),
        }
    }

    /// The bucket or container itself, for errors about it.
    fn root_shown(&self) -> String {
        match &self.address {
            DataAddress::S3 { bucket, .. } => format!("s3://{bucket}"),
            DataAddress::Azure { container, .. } => format!("az://{container}"),
            DataAddress::Gcs { bucket, .. } => format!("gs://{bucket}"),
            other => other.to_string(),
        }
    }

    fn entry(&self, key: String, meta: &ObjectMeta) -> Entry {
        Entry {
            key,
            location: meta.location.to_string(),
            size: meta.size,
            version: meta.e_tag.as_deref().map(unquote),
        }
    }

    /// The entry of an object just written, as listings show it.
    async fn written(&self, key: &str, path: &Path) -> Result<Entry> {
        let meta = self
            .store
            .head(path)
            .await
            .map_err(|e| self.error(path, e))?;
        Ok(self.entry(key.to_string(), &meta))
    }

    fn location(&self, entry: &Entry) -> Result<Path> {
        Path::parse(&entry.location)
            .map_err(|e| Error::Internal(format!("bad location {}: {e}", entry.location)))
    }
}

/// The ETag S3 gives an object completed from parts with these ETags: the MD5 of their
/// binary MD5s, a dash, the part count. `None` when a part's ETag is not an MD5 (SSE-KMS,
/// or a store that does not follow S3 here).
fn s3_multipart_etag(parts: &[PartToken]) -> Option<String> {
    use md5::{Digest as _, Md5};
    let mut md5 = Md5::new();
    for part in parts {
        let hex = unquote(&part.0);
        if hex.len() != 32 {
            return None;
        }
        for i in (0..32).step_by(2) {
            md5.update([u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()?]);
        }
    }
    let digest = md5.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{hex}-{}", parts.len()))
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// object_store's messages carry the request, the retry bookkeeping and the raw response
/// body; a user needs the status, the service's error code and message, and the retries.
fn concise(text: &str) -> String {
    let mut parts = Vec::new();
    if let Some(status) = between(text, "status code: ", ":") {
        parts.push(status.trim().to_string());
    }
    match (
        between(text, "<Code>", "</Code>"),
        between(text, "<Message>", "</Message>"),
    ) {
        (Some(code), Some(message)) => {
            let message = message.split("RequestId:").next().unwrap_or(message);
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            parts.push(format!("{code}: {message}"));
        }
        (Some(code), None) => parts.push(code.to_string()),
        _ => {}
    }
    if parts.is_empty() {
        let cause = text.rsplit(" - ").next().unwrap_or(text);
        parts.push(cause.trim().to_string());
    }
    if let Some(retries) = between(text, "after ", " retries") {
        parts.push(format!("after {retries} retries"));
    }
    parts.join(", ")
}

/// Stores quote ETags in some answers and not in others (Azure listings); compare them bare.
fn unquote(etag: &str) -> String {
    etag.trim_start_matches("W/").trim_matches('"').to_string()
}

fn percent_decode(s: &str) -> String {
    DataAddress::parse(&format!("s3://x/{s}"))
        .ok()
        .and_then(|a| match a {
            DataAddress::S3 { key, .. } => Some(key),
            _ => None,
        })
        .unwrap_or_else(|| s.to_string())
}

#[async_trait]
impl Source for ObjectBackend {
    fn address(&self) -> &DataAddress {
        &self.address
    }

    async fn list(&self) -> Result<Listing> {
        self.list_stream().await?.collect().await
    }

    async fn list_stream(&self) -> Result<ListStream> {
        if !self.prefix.is_empty() && !self.address.names_a_directory() {
            let path = self.path("")?;
            match self.store.head(&path).await {
                Ok(meta) => {
                    let name = self
                        .prefix
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    return Ok(ListStream::from_listing(Listing {
                        single_object: true,
                        entries: vec![self.entry(name, &meta)],
                    }));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(&path, e)),
            }
        }
        if self.family == Family::Http {
            return Err(Error::not_found(&self.address));
        }
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(self.path("")?)
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        // The store pages through the prefix (1,000 keys a request on S3) in key order;
        // entries are made as pages arrive, never all at once.
        let this = Arc::new(self.clone());
        let at = prefix.clone().unwrap_or_default();
        let mut entries = self
            .store
            .list(prefix.as_ref())
            .map(move |item| match item {
                Ok(meta) => {
                    let full = meta.location.as_ref();
                    let key = full.strip_prefix(&strip).unwrap_or(full).to_string();
                    Ok(this.entry(key, &meta))
                }
                Err(e) => Err(this.error(&at, e)),
            })
            .peekable();
        if Pin::new(&mut entries).peek().await.is_none() && !self.prefix.is_empty() {
            return Err(Error::not_found(&self.address));
        }
        Ok(ListStream {
            single_object: false,
            entries: entries.boxed(),
        })
    }

    async fn read(&self, entry: &Entry, range: Range<u64>) -> Result<Bytes> {
        let path = self.location(entry)?;
        // A whole-object read needs no Range header, which some web servers do not honour.
        let whole = range.start == 0 && range.end == entry.size;
        let options = GetOptions {
            range: (!whole).then_some(GetRange::Bounded(range)),
            // Plain web servers rarely honour If-Match; the size check below still applies.
            if_match: entry
                .version
                .clone()
                .filter(|_| self.family != Family::Http),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| self.error(&path, e))?;
        if result.meta.size != entry.size {
            return Err(Error::source_changed(
                self.shown(&path),
                format!("size was {} and is now {}", entry.size, result.meta.size),
            ));
        }
        result.bytes().await.map_err(|e| self.error(&path, e))
    }

    async fn check_unchanged(&self, entry: &Entry) -> Result<()> {
        let path = self.location(entry)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| self.error(&path, e))?;
        let version = meta.e_tag.as_deref().map(unquote);
        if meta.size != entry.size || (entry.version.is_some() && version != entry.version) {
            return Err(Error::source_changed(
                self.shown(&path),
                "size or ETag changed since it was listed",
            ));
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[async_trait]
impl Sink for ObjectBackend {
    fn address(&self) -> &DataAddress {
        &self.address
    }

    /// Object stores have no directories: a destination ending in `/` (or a bare bucket)
    /// is a prefix to copy into, anything else names the object itself.
    async fn is_directory(&self) -> Result<bool> {
        Ok(self.address.names_a_directory())
    }

    async fn head(&self, key: &str) -> Result<Option<Entry>> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(self.entry(key.to_string(), &meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&path, e)),
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<Entry> {
        let path = self.path(key)?;
        if let Some(gcs) = &self.gcs {
            gcs.put(path.as_ref(), data).await?;
            return self.written(key, &path).await;
        }
        let size = data.len() as u64;
        let result = self
            .store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(|e| self.error(&path, e))?;
        Ok(Entry {
            key: key.to_string(),
            location: path.to_string(),
            size,
            version: result.e_tag.as_deref().map(unquote),
        })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        if let Some(gcs) = &self.gcs {
            return gcs.delete(path.as_ref()).await;
        }
        match self.store.delete(&path).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(&path, e)),
        }
    }

    async fn create_upload(&self, key: &str) -> Result<UploadId> {
        let path = self.path(key)?;
        if let Some(gcs) = &self.gcs {
            return Ok(gcs.create_upload());
        }
        self.multipart()?
            .create_multipart(&path)
            .await
            .map_err(|e| self.error(&path, e))
    }

    async fn put_part(
        &self,
        key: &str,
        upload: &UploadId,
        index: usize,
        _offset: u64,
        data: Bytes,
    ) -> Result<PartToken> {
        let path = self.path(key)?;
        if let Some(gcs) = &self.gcs {
            return gcs.put_part(path.as_ref(), upload, index, data).await;
        }
        let part = self
            .multipart()?
            .put_part(&path, upload, index, PutPayload::from_bytes(data))
            .await
            .map_err(|e| self.error(&path, e))?;
        Ok(PartToken(part.content_id))
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload: &UploadId,
        parts: Vec<PartToken>,
    ) -> Result<Entry> {
        let path = self.path(key)?;
        if let Some(gcs) = &self.gcs {
            gcs.complete_upload(path.as_ref(), upload, parts).await?;
            return self.written(key, &path).await;
        }
        let parts = parts
            .into_iter()
            .map(|p| PartId { content_id: p.0 })
            .collect();
        self.multipart()?
            .complete_multipart(&path, upload, parts)
            .await
            .map_err(|e| self.error(&path, e))?;
        self.written(key, &path).await
    }

    fn is_completion_of(&self, found: &Entry, parts: &[PartToken]) -> Option<bool> {
        if self.family != Family::S3 {
            return None;
        }
        let expected = s3_multipart_etag(parts)?;
        let version = found.version.as_deref()?;
        if version == expected {
            return Some(true);
        }
        // Another multipart object: conclusive. A plain ETag may be an encrypted object's.
        version.contains('-').then_some(false)
    }

    async fn abort_upload(&self, key: &str, upload: &UploadId) -> Result<()> {
        let path = self.path(key)?;
        if let Some(gcs) = &self.gcs {
            return gcs.abort_upload(path.as_ref(), upload).await;
        }
        match self.multipart()?.abort_multipart(&path, upload).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&path, e)),
        }
    }

    /// GCS: the temporary parts of uploads to `keys` a killed run left unrecorded.
    async fn discard_unrecorded(&self, keys: &[String]) -> Result<()> {
        let Some(gcs) = &self.gcs else {
            return Ok(());
        };
        for key in keys {
            gcs.discard_uploads_to(self.path(key)?.as_ref()).await?;
        }
        Ok(())
    }

    async fn copy_from(
        &self,
        source: &dyn Source,
        entry: &Entry,
        key: &str,
    ) -> Result<Option<Entry>> {
        // S3 CopyObject handles up to 5 GiB; larger objects stream through ferry.
        const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
        let Some(other) = source.as_any().downcast_ref::<ObjectBackend>() else {
            return Ok(None);
        };
        if self.family != Family::S3
            || other.identity != self.identity
            || entry.size > MAX_SINGLE_COPY
        {
            return Ok(None);
        }
        let from = other.location(entry)?;
        let to = self.path(key)?;
        self.store
            .copy(&from, &to)
            .await
            .map_err(|e| self.error(&to, e))?;
        let meta = self.store.head(&to).await.map_err(|e| self.error(&to, e))?;
        Ok(Some(self.entry(key.to_string(), &meta)))
    }

    /// GCS's composite uploads take parts of any size; S3's limits keep requests few.
    fn min_part_size(&self) -> u64 {
        match self.family {
            Family::S3 | Family::Gcs => 5 * 1024 * 1024,
            _ => 1,
        }
    }

    fn max_parts(&self) -> usize {
        match self.family {
            Family::S3 | Family::Gcs => 10_000,
            Family::Azure => 50_000,
            Family::Http => 1,
        }
    }
}
