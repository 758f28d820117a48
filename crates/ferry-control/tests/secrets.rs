//! Secret references in manifests, resolved against a real server speaking Vault's HTTP API
//! (OpenBao in dev mode, from `scripts/services up`; needs `FERRY_TEST_VAULT` and
//! `FERRY_TEST_VAULT_TOKEN`: `eval "$(scripts/services env)"`). Without them the Vault tests
//! skip, except under CI where they fail.
//!
//! Two small stand-ins run beside the real server: a request-counting proxy in front of it
//! (to prove each path is read once) and the Kubernetes TokenReview API that Vault's
//! Kubernetes auth method asks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use ferry_control::secrets::{
    redact_manifest, references, KubernetesAuth, SecretResolver, SecretsConfig, VaultConfig,
};
use ferry_core::Error;
use serde_json::{json, Value};

// ---- the test Vault ------------------------------------------------------------------

struct TestVault {
    address: String,
    root_token: String,
    http: reqwest::Client,
}

/// The test Vault, or `None` (after saying why) outside CI when it is not configured.
fn test_vault() -> Option<TestVault> {
    match (
        std::env::var("FERRY_TEST_VAULT"),
        std::env::var("FERRY_TEST_VAULT_TOKEN"),
    ) {
        (Ok(address), Ok(root_token)) => Some(TestVault {
            address: address.trim_end_matches('/').to_string(),
            root_token,
            http: reqwest::Client::new(),
        }),
        _ => {
            let msg = "Vault test service not configured (FERRY_TEST_VAULT / FERRY_TEST_VAULT_TOKEN unset): run `scripts/services up` and `eval \"$(scripts/services env)\"`";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("skipping: {msg}");
            None
        }
    }
}

impl TestVault {
    /// A request as root; panics unless Vault accepts it.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", &self.root_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the test Vault answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Stores `data` at `path` below the KV v2 mount `secret/`.
    async fn put_v2(&self, path: &str, data: Value) {
        let body = json!({ "data": data });
        self.call(
            reqwest::Method::POST,
            &format!("secret/data/{path}"),
            Some(body),
        )
        .await;
    }

    /// Stores `data` at `path` below the KV v1 mount `kv1/` (enabled here if missing, so a
    /// dev server started by other means works too).
    async fn put_v1(&self, path: &str, data: Value) {
        let mounts = self.call(reqwest::Method::GET, "sys/mounts", None).await;
        if mounts["data"].get("kv1/").is_none() {
            let body = json!({ "type": "kv", "options": { "version": "1" } });
            self.http
                .post(format!("{}/v1/sys/mounts/kv1", self.address))
                .header("X-Vault-Token", &self.root_token)
                .json(&body)
                .send()
                .await
                .unwrap();
        }
        self.call(reqwest::Method::POST, &format!("kv1/{path}"), Some(data))
            .await;
    }

    /// A resolver for this Vault with `token` (a reference).
    fn resolver(&self, token: &str) -> SecretResolver {
        resolver_at(&self.address, token, None)
    }
}

fn resolver_at(address: &str, token: &str, kv_version: Option<u8>) -> SecretResolver {
    SecretResolver::new(SecretsConfig {
        vault: Some(VaultConfig {
            address: address.to_string(),
            token: Some(token.to_string()),
            kv_version,
            timeout_ms: Some(5_000),
            ..VaultConfig::default()
        }),
    })
    .unwrap()
}

/// A name no other test or run uses.
fn unique(label: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "ferry-test-{}-{nanos}-{}-{label}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `env:NAME` for a fresh variable holding `value`.
fn env_ref(value: &str) -> String {
    let name = unique("var").to_uppercase().replace('-', "_");
    std::env::set_var(&name, value);
    format!("env:{name}")
}

fn root_ref(vault: &TestVault) -> String {
    env_ref(&vault.root_token)
}

/// The error's text, after checking it is one line without any of `hidden`.
fn shown(err: &Error, hidden: &[&str]) -> String {
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    for secret in hidden {
        assert!(!text.contains(secret), "{text} shows {secret}");
    }
    text
}

fn manifest(source: Value, destination: Value) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1",
        "kind": "BatchTransfer",
        "metadata": { "name": "orders" },
        "spec": { "source": source, "destination": destination },
    })
}

/// A local address nothing listens on.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

/// Requests seen by the proxy, as `METHOD /path`.
type Seen = Arc<Mutex<Vec<String>>>;

/// A proxy in front of the real Vault that records `METHOD /path` of every request.
async fn counting_proxy(target: &str) -> (String, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = (target.to_string(), seen.clone(), reqwest::Client::new());
    let router =
        Router::new().fallback(
            |State((target, seen, http)): State<(String, Seen, reqwest::Client)>,
             request: Request| async move {
                let (parts, body) = request.into_parts();
                seen.lock()
                    .unwrap()
                    .push(format!("{} {}", parts.method, parts.uri.path()));
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let mut forward =
                    http.request(parts.method.clone(), format!("{target}{}", parts.uri));
                for name in ["x-vault-token", "x-vault-namespace", "content-type"] {
                    if let Some(value) = parts.headers.get(name) {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.body(body).send().await.unwrap();
                let status = answer.status();
                (status, answer.bytes().await.unwrap()).into_response()
            },
        );
    let address = serve(router.with_state(state)).await;
    (format!("http://{address}"), seen)
}

// ---- resolving against Vault ---------------------------------------------------------

#[tokio::test]
async fn vault_path_merges_stored_fields_and_written_fields_win() {
    let Some(vault) = test_vault() else { return };
    let base = unique("merge");
    vault
        .put_v2(
            &format!("{base}/lake"),
            json!({
                "access_key_id": "AKIAMERGE",
                "secret_access_key": "merge-secret-kv2",
                "region": "eu-west-1",
            }),
        )
        .await;
    vault
        .put_v2(
            &format!("{base}/opts"),
            json!({ "session_token": "merge-session-token" }),
        )
        .await;
    let input = manifest(
        json!({ "type": "local", "path": "/tmp/in" }),
        json!({
            "type": "s3",
            "bucket": "lake",
            "vaultPath": format!("secret/{base}/lake"),
            "region": "us-east-1",
            "storeOptions": { "vaultPath": format!("secret/data/{base}/opts"), "retries": "3" },
        }),
    );
    let resolved = vault
        .resolver(&root_ref(&vault))
        .resolve_manifest(&input)
        .await
        .unwrap();
    let destination = &resolved["spec"]["destination"];
    assert_eq!(
        destination,
        &json!({
            "type": "s3",
            "bucket": "lake",
            "access_key_id": "AKIAMERGE",
            "secret_access_key": "merge-secret-kv2",
            "region": "us-east-1",
            "storeOptions": { "session_token": "merge-session-token", "retries": "3" },
        })
    );
    // Merged fields take the place of `vaultPath`.
    let keys: Vec<&str> = destination
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "type",
            "bucket",
            "access_key_id",
            "secret_access_key",
            "region",
            "storeOptions"
        ]
    );
    assert_eq!(resolved["spec"]["source"], input["spec"]["source"]);
}

#[tokio::test]
async fn ref_vault_reads_kv_v2_in_either_spelling_once_per_path() {
    let Some(vault) = test_vault() else { return };
    let base = unique("kv2");
    vault
        .put_v2(
            &format!("{base}/shop"),
            json!({ "password": "kv2-password-1", "user": "app", "port": 5432 }),
        )
        .await;
    let (proxy, seen) = counting_proxy(&vault.address).await;
    let input = manifest(
        json!({
            "type": "postgres",
            "url": "postgres://app@db:5432/shop",
            "table": "orders",
            "password": format!("ref+vault://secret/data/{base}/shop#password"),
            "user": format!("ref+vault://secret/{base}/shop#user"),
            "port": format!("ref+vault://secret/{base}/shop/#port"),
        }),
        json!({ "type": "local", "path": "/tmp/out" }),
    );
    let resolved = resolver_at(&proxy, &root_ref(&vault), None)
        .resolve_manifest(&input)
        .await
        .unwrap();
    let source = &resolved["spec"]["source"];
    assert_eq!(source["password"], "kv2-password-1");
    assert_eq!(source["user"], "app");
    assert_eq!(source["port"], 5432, "non-string values keep their type");

    let seen = seen.lock().unwrap().clone();
    let reads: Vec<&String> = seen
        .iter()
        .filter(|r| r.ends_with(&format!("/v1/secret/data/{base}/shop")))
        .collect();
    assert_eq!(reads.len(), 1, "one read for three references: {seen:?}");
    let lookups = seen
        .iter()
        .filter(|r| r.contains("/sys/internal/ui/mounts/"))
        .count();
    assert_eq!(lookups, 1, "the mount is asked about once: {seen:?}");
}

#[tokio::test]
async fn ref_vault_reads_kv_v1_detected_or_configured() {
    let Some(vault) = test_vault() else { return };
    let base = unique("kv1");
    vault
        .put_v1(
            &format!("{base}/app"),
            json!({ "password": "kv1-password-1" }),
        )
        .await;
    let input = manifest(
        json!({ "type": "mysql", "url": "mysql://app@db/shop", "table": "t",
                "password": format!("ref+vault://kv1/{base}/app#password") }),
        json!({ "type": "local", "path": "/tmp/out" }),
    );
    for kv_version in [None, Some(1)] {
        let resolved = resolver_at(&vault.address, &root_ref(&vault), kv_version)
            .resolve_manifest(&input)
            .await
            .unwrap();
        assert_eq!(
            resolved["spec"]["source"]["password"], "kv1-password-1",
            "kvVersion {kv_version:?}"
        );
    }
}

// ---- env and file --------------------------------------------------------------------

#[tokio::test]
async fn env_and_file_references_and_untouched_connector_references() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db-password");
    std::fs::write(&file, "file-secret-1\n").unwrap();
    // The same file by a path relative to the working directory.
    let cwd = std::env::current_dir().unwrap();
    let relative = format!(
        "{}{}",
        "../".repeat(cwd.components().count() - 1),
        file.display().to_string().trim_start_matches('/')
    );
    let env = env_ref("env-secret-1");
    let env_name = env.trim_start_matches("env:");
    let input = json!({
        "spec": {
            "source": { "password": format!("ref+file://{}", file.display()) },
            "destination": {
                "password": format!("ref+env://{env_name}"),
                "token": format!("ref+file://{relative}"),
                "storeOptions": { "account_key": "env:AZURE_KEY_FOR_THE_CONNECTOR" },
            },
            "transformation": [{ "action": "Encrypt", "options": { "keyRef": "file:/keys/k" } }],
        }
    });
    let resolved = SecretResolver::new(SecretsConfig::default())
        .unwrap()
        .resolve_manifest(&input)
        .await
        .unwrap();
    assert_eq!(resolved["spec"]["source"]["password"], "file-secret-1");
    assert_eq!(resolved["spec"]["destination"]["password"], "env-secret-1");
    assert_eq!(resolved["spec"]["destination"]["token"], "file-secret-1");
    // `env:`/`file:` credentials are the connectors' to read.
    assert_eq!(
        resolved["spec"]["destination"]["storeOptions"],
        input["spec"]["destination"]["storeOptions"]
    );
    assert_eq!(
        resolved["spec"]["transformation"],
        input["spec"]["transformation"]
    );
}

// ---- failures ------------------------------------------------------------------------

#[tokio::test]
async fn vault_failures_name_reference_and_location_without_secrets() {
    let Some(vault) = test_vault() else { return };
    let base = unique("fail");
    vault
        .put_v2(
            &format!("{base}/shop"),
            json!({ "password": "fail-secret-1" }),
        )
        .await;
    let root = root_ref(&vault);
    let hidden = ["fail-secret-1", vault.root_token.as_str()];
    let with = |password: String| {
        manifest(
            json!({ "type": "postgres", "url": "postgres://app@db/shop", "table": "t", "password": password }),
            json!({ "type": "local", "path": "/tmp/out" }),
        )
    };

    // A key the secret does not have.
    let reference = format!("ref+vault://secret/data/{base}/shop#nope");
    let err = vault
        .resolver(&root)
        .resolve_manifest(&with(reference.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
    assert_eq!(
        shown(&err, &hidden),
        format!(
            "invalid secret {reference} at spec.source.password: key 'nope' not found at secret/data/{base}/shop"
        )
    );

    // A path where nothing is stored.
    let reference = format!("ref+vault://secret/{base}/missing#password");
    let err = vault
        .resolver(&root)
        .resolve_manifest(&with(reference.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
    let text = shown(&err, &hidden);
    assert!(
        text.starts_with(&format!(
            "invalid secret {reference} at spec.source.password: "
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("nothing stored at secret/data/{base}/missing")),
        "{text}"
    );

    // A vaultPath where nothing is stored.
    let input = manifest(
        json!({ "type": "local", "path": "/tmp/in" }),
        json!({ "type": "s3", "bucket": "b", "vaultPath": format!("secret/{base}/gone") }),
    );
    let err = vault
        .resolver(&root)
        .resolve_manifest(&input)
        .await
        .unwrap_err();
    let text = shown(&err, &hidden);
    assert!(
        text.starts_with(&format!(
            "invalid secret vaultPath secret/{base}/gone at spec.destination.vaultPath: nothing stored"
        )),
        "{text}"
    );

    // A token Vault does not know.
    let wrong = "s.ferry-wrong-token-4711";
    let reference = format!("ref+vault://secret/data/{base}/shop#password");
    let err = vault
        .resolver(&env_ref(wrong))
        .resolve_manifest(&with(reference.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
    let text = shown(&err, &[hidden[0], hidden[1], wrong]);
    assert!(
        text.starts_with(&format!(
            "invalid secret {reference} at spec.source.password: permission denied"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_vault_is_worth_retrying() {
    let reference = "ref+vault://secret/data/shop#password";
    let input = json!({ "spec": { "source": { "password": reference } } });
    let err = resolver_at(&closed_address(), &env_ref("s.some-token-0815"), None)
        .resolve_manifest(&input)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let text = shown(&err, &["s.some-token-0815"]);
    assert!(
        text.starts_with(&format!("secret {reference} at spec.source.password: store unreachable: Vault at http://127.0.0.1:")),
        "{text}"
    );
}

#[tokio::test]
async fn unresolvable_references_fail_before_anything_is_read() {
    let resolver = resolver_at(&closed_address(), &env_ref("x-token"), None);
    let cases = [
        (json!({ "a": ["ref+vault://secret/x"] }), "ref+vault://secret/x at a[0]: names no key"),
        (json!({ "a": { "b": "ref+sops://x#y" } }), "ref+sops://x#y at a.b: unknown kind of reference"),
        (json!({ "vaultPath": 3 }), "vaultPath at vaultPath: must be a string"),
        (
            json!({ "p": "ref+env://FERRY_TEST_SURELY_UNSET_VAR" }),
            "ref+env://FERRY_TEST_SURELY_UNSET_VAR at p: environment variable FERRY_TEST_SURELY_UNSET_VAR is not set",
        ),
        (
            json!({ "p": "ref+file:///nonexistent/ferry/secret" }),
            "ref+file:///nonexistent/ferry/secret at p: cannot read /nonexistent/ferry/secret",
        ),
    ];
    for (input, expected) in cases {
        let err = resolver.resolve_manifest(&input).await.unwrap_err();
        assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
        let text = shown(&err, &[]);
        assert!(
            text.starts_with(&format!("invalid secret {expected}")),
            "{text}"
        );
    }
}

/// The process environment is shared, so everything that reads `VAULT_ADDR` and
/// `VAULT_TOKEN` runs in this one test.
#[tokio::test]
async fn vault_addr_and_token_from_the_environment() {
    let saved: Vec<(&str, Option<String>)> = ["VAULT_ADDR", "VAULT_TOKEN"]
        .into_iter()
        .map(|v| (v, std::env::var(v).ok()))
        .collect();
    std::env::remove_var("VAULT_ADDR");
    std::env::remove_var("VAULT_TOKEN");

    let input = json!({ "spec": { "source": { "password": "ref+vault://secret/x#password" } } });
    let err = SecretResolver::new(SecretsConfig::default())
        .unwrap()
        .resolve_manifest(&input)
        .await
        .unwrap_err();
    assert_eq!(
        shown(&err, &[]),
        "invalid secret ref+vault://secret/x#password at spec.source.password: no Vault is configured (set secrets.vault.address or VAULT_ADDR)"
    );

    if let Some(vault) = test_vault() {
        let base = unique("env");
        vault
            .put_v2(
                &format!("{base}/app"),
                json!({ "password": "env-vault-secret" }),
            )
            .await;
        std::env::set_var("VAULT_ADDR", &vault.address);
        let input = json!({ "password": format!("ref+vault://secret/{base}/app#password") });
        let resolver = SecretResolver::new(SecretsConfig::default()).unwrap();
        let err = resolver.resolve_manifest(&input).await.unwrap_err();
        assert!(shown(&err, &[]).contains("no Vault token"), "{err}");
        std::env::set_var("VAULT_TOKEN", &vault.root_token);
        let resolved = resolver.resolve_manifest(&input).await.unwrap();
        assert_eq!(resolved["password"], "env-vault-secret");
    }

    for (name, value) in saved {
        match value {
            Some(v) => std::env::set_var(name, v),
            None => std::env::remove_var(name),
        }
    }
}

// ---- Kubernetes auth -----------------------------------------------------------------

/// Vault's Kubernetes auth method insists on a CA for the Kubernetes API even when it is
/// reached over plain HTTP, as the stand-in here is. This one signs nothing.
const UNUSED_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBsDCCAVWgAwIBAgIUQXN9PkXGzqT4oXoOE419hcA5+18wCgYIKoZIzj0EAwIw
LDEqMCgGA1UEAwwhZmVycnkgdGVzdCBrdWJlcm5ldGVzIENBICh1bnVzZWQpMCAX
DTI2MTEyMjAxMDYyOVoYDzIxMjYxMDI5MDEwNjI5WjAsMSowKAYDVQQDDCFmZXJy
eSB0ZXN0IGt1YmVybmV0ZXMgQ0EgKHVudXNlZCkwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQJl2Yv+ZgGmil0RA3lsf4mPkqlKsrorOmPjZzQhrpXx5vhllpe0dqi
G5N/gd1sBT0UTmTGeDDOYFY0aZjLzCrCo1MwUTAdBgNVHQ4EFgQUjPcFkUFIofRh
eSvPygHWexNtMEkwHwYDVR0jBBgwFoAUjPcFkUFIofRheSvPygHWexNtMEkwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA8HMNS/fz3/RoWxStjf8i
91J+VqWn7qDdPvrvqreMbh4CIQCrVBgotOAszMepYVshvklL1nr6PvKVwE7DRp6t
wxUBYA==
-----END CERTIFICATE-----
";

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A service account token as Kubernetes issues them. Vault reads its claims; the
/// signature is checked by the TokenReview API (the stand-in below), not by Vault.
fn service_account_jwt(namespace: &str, name: &str, uid: &str) -> String {
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let claims = json!({
        "iss": "kubernetes/serviceaccount",
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
    });
    format!(
        "{}.{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes()),
        base64url(b"signature checked by the TokenReview API")
    )
}

/// The Kubernetes TokenReview API: accepts exactly `jwt`, counts the reviews.
async fn token_review_api(
    jwt: String,
    namespace: &str,
    name: &str,
    uid: &str,
) -> (String, Arc<AtomicUsize>) {
    let reviews = Arc::new(AtomicUsize::new(0));
    let user = json!({
        "username": format!("system:serviceaccount:{namespace}:{name}"),
        "uid": uid,
        "groups": ["system:serviceaccounts"],
    });
    let state = (jwt, user, reviews.clone());
    let router = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(
                |State((jwt, user, reviews)): State<(String, Value, Arc<AtomicUsize>)>,
                 Json(review): Json<Value>| async move {
                    reviews.fetch_add(1, Ordering::SeqCst);
                    let status = if review["spec"]["token"] == jwt.as_str() {
                        json!({ "authenticated": true, "user": user })
                    } else {
                        json!({ "authenticated": false, "error": "invalid token" })
                    };
                    (
                        axum::http::StatusCode::CREATED,
                        Json(json!({
                            "apiVersion": "authentication.k8s.io/v1",
                            "kind": "TokenReview",
                            "status": status,
                        })),
                    )
                },
            ),
        )
        .with_state(state);
    (format!("http://{}", serve(router).await), reviews)
}

#[tokio::test]
async fn kubernetes_login_is_cached_and_its_failures_are_clear() {
    let Some(vault) = test_vault() else { return };
    let base = unique("k8s");
    let (namespace, account, uid) = ("ferry", "runner", "3c6a1f0e-ferry-test");
    let jwt = service_account_jwt(namespace, account, uid);
    let (kubernetes_api, reviews) = token_review_api(jwt.clone(), namespace, account, uid).await;

    // An auth mount, policy and role of this test's own.
    let mount = unique("kubernetes");
    vault
        .call(
            reqwest::Method::POST,
            &format!("sys/auth/{mount}"),
            Some(json!({ "type": "kubernetes" })),
        )
        .await;
    vault
        .call(
            reqwest::Method::POST,
            &format!("auth/{mount}/config"),
            Some(json!({
                "kubernetes_host": kubernetes_api,
                "kubernetes_ca_cert": UNUSED_CA,
                "disable_local_ca_jwt": true,
            })),
        )
        .await;
    let policy = format!("path \"secret/data/{base}/*\" {{ capabilities = [\"read\"] }}");
    vault
        .call(
            reqwest::Method::POST,
            &format!("sys/policies/acl/{base}"),
            Some(json!({ "policy": policy })),
        )
        .await;
    vault
        .call(
            reqwest::Method::POST,
            &format!("auth/{mount}/role/transfers"),
            Some(json!({
                "bound_service_account_names": [account],
                "bound_service_account_namespaces": [namespace],
                "token_policies": [base.clone()],
                "token_ttl": "1h",
            })),
        )
        .await;
    vault
        .put_v2(
            &format!("{base}/shop"),
            json!({ "password": "k8s-secret-1" }),
        )
        .await;
    vault
        .put_v2(
            &format!("{base}-elsewhere/shop"),
            json!({ "password": "k8s-secret-2" }),
        )
        .await;

    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, format!("{jwt}\n")).unwrap();
    let resolver_for = |role: &str| {
        SecretResolver::new(SecretsConfig {
            vault: Some(VaultConfig {
                address: vault.address.clone(),
                kubernetes: Some(KubernetesAuth {
                    role: role.to_string(),
                    mount_path: Some(mount.clone()),
                    token_path: Some(token_path.display().to_string()),
                }),
                ..VaultConfig::default()
            }),
        })
        .unwrap()
    };

    let resolver = resolver_for("transfers");
    let input = json!({ "password": format!("ref+vault://secret/{base}/shop#password") });
    for _ in 0..3 {
        let resolved = resolver.resolve_manifest(&input).await.unwrap();
        assert_eq!(resolved["password"], "k8s-secret-1");
    }
    assert_eq!(
        reviews.load(Ordering::SeqCst),
        1,
        "one login for three runs"
    );
    assert!(!format!("{resolver:?}").contains("s."), "{resolver:?}");

    // The policy does not reach this path.
    let reference = format!("ref+vault://secret/{base}-elsewhere/shop#password");
    let err = resolver
        .resolve_manifest(&json!({ "password": reference }))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
    let text = shown(&err, &["k8s-secret-2", &jwt]);
    assert!(
        text.starts_with(&format!(
            "invalid secret {reference} at password: permission denied"
        )),
        "{text}"
    );

    // A role Vault does not have.
    let err = resolver_for("nobody")
        .resolve_manifest(&input)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
    let text = shown(&err, &["k8s-secret-1", &jwt]);
    assert!(
        text.contains(&format!(
            "Kubernetes login to Vault at auth/{mount}/login as role 'nobody' failed"
        )),
        "{text}"
    );

    vault
        .call(reqwest::Method::DELETE, &format!("sys/auth/{mount}"), None)
        .await;
}

// ---- configuration -------------------------------------------------------------------

#[test]
fn configuration_is_camel_case_strict_and_holds_no_token() {
    let config: SecretsConfig = serde_json::from_value(json!({
        "vault": {
            "address": "http://127.0.0.1:8200",
            "kubernetes": { "role": "ferry", "mountPath": "k8s", "tokenPath": "/t" },
            "kvVersion": 2,
            "namespace": "team",
            "timeoutMs": 2000,
        }
    }))
    .unwrap();
    assert_eq!(config.vault.as_ref().unwrap().kv_version, Some(2));
    assert!(SecretResolver::new(config).is_ok());

    let unknown = serde_json::from_value::<SecretsConfig>(
        json!({ "vault": { "address": "x", "tokn": "env:T" } }),
    );
    assert!(unknown.is_err());

    let with = |vault: VaultConfig| SecretResolver::new(SecretsConfig { vault: Some(vault) });
    let base = VaultConfig {
        address: "http://127.0.0.1:8200".into(),
        ..VaultConfig::default()
    };
    let err = with(VaultConfig {
        token: Some("hvs.inline-token-value".into()),
        ..base.clone()
    })
    .unwrap_err();
    let text = shown(&err, &["hvs.inline-token-value"]);
    assert!(text.contains("secrets.vault.token"), "{text}");
    assert!(with(VaultConfig {
        kv_version: Some(3),
        ..base.clone()
    })
    .is_err());
    assert!(with(VaultConfig {
        address: "127.0.0.1:8200".into(),
        ..base.clone()
    })
    .is_err());
    assert!(with(VaultConfig {
        token: Some("env:T".into()),
        kubernetes: Some(KubernetesAuth {
            role: "r".into(),
            ..KubernetesAuth::default()
        }),
        ..base
    })
    .is_err());
}

// ---- what API responses show ---------------------------------------------------------

fn shop_manifest() -> Value {
    json!({
        "apiVersion": "ferry.dev/v1",
        "kind": "BatchTransfer",
        "metadata": { "name": "orders", "labels": { "team": "shop" } },
        "spec": {
            "source": {
                "type": "postgres",
                "url": "postgres://app:inline-url-pw@db:5432/shop?sslmode=require",
                "table": "orders",
                "password": "ref+vault://secret/data/shop#password",
            },
            "destination": {
                "type": "s3",
                "bucket": "lake",
                "key": "orders/",
                "endpoint": "http://minio:9000/?X-Amz-Signature=inline-signature",
                "format": "parquet",
                "vaultPath": "secret/lake-creds",
                "storeOptions": {
                    "secret_access_key": "inline-store-secret",
                    "access_key_id": "AKIAVISIBLE",
                    "session_token": "env:AWS_SESSION_TOKEN",
                    "key": "inline-store-key",
                    "sas_key": "file:/run/sas",
                },
            },
            "transformation": [
                { "action": "Encrypt", "columns": ["email"], "options": { "keyRef": "file:/keys/email" } },
                { "action": "Filter", "options": { "token": 12345, "credentials": { "user": "u", "pass": "inline-nested" } } },
            ],
        }
    })
}

#[test]
fn redaction_hides_inline_secrets_and_keeps_references() {
    let input = shop_manifest();
    let shown = redact_manifest(&input);
    let source = &shown["spec"]["source"];
    assert_eq!(
        source["url"],
        "postgres://app:***@db:5432/shop?sslmode=require"
    );
    assert_eq!(source["password"], "ref+vault://secret/data/shop#password");
    let destination = &shown["spec"]["destination"];
    assert_eq!(
        destination["key"], "orders/",
        "an object key is not a credential"
    );
    assert_eq!(destination["vaultPath"], "secret/lake-creds");
    assert_eq!(
        destination["endpoint"],
        "http://minio:9000/?X-Amz-Signature=***"
    );
    assert_eq!(
        destination["storeOptions"],
        json!({
            "secret_access_key": "***",
            "access_key_id": "AKIAVISIBLE",
            "session_token": "env:AWS_SESSION_TOKEN",
            "key": "***",
            "sas_key": "file:/run/sas",
        })
    );
    let transformation = &shown["spec"]["transformation"];
    assert_eq!(transformation[0], input["spec"]["transformation"][0]);
    assert_eq!(transformation[1]["options"]["token"], "***");
    assert_eq!(
        transformation[1]["options"]["credentials"],
        json!({ "user": "***", "pass": "***" })
    );
    assert_eq!(shown["metadata"], input["metadata"]);

    let text = shown.to_string();
    for secret in [
        "inline-url-pw",
        "inline-signature",
        "inline-store-secret",
        "inline-store-key",
        "inline-nested",
        "12345",
    ] {
        assert!(!text.contains(secret), "{secret} shown in {text}");
    }
}

#[test]
fn references_are_listed_once_each_in_order() {
    assert_eq!(
        references(&shop_manifest()),
        [
            "ref+vault://secret/data/shop#password",
            "ref+vault://secret/lake-creds",
            "env:AWS_SESSION_TOKEN",
            "file:/run/sas",
            "file:/keys/email",
        ]
    );
    let repeated =
        json!({ "a": "ref+env://X", "b": ["ref+env://X", "ref+file:///s"], "password": "plain" });
    assert_eq!(references(&repeated), ["ref+env://X", "ref+file:///s"]);
}

// ---- the property that matters -------------------------------------------------------

#[tokio::test]
async fn resolved_secrets_never_reach_the_input_or_what_is_shown() {
    let Some(vault) = test_vault() else { return };
    let base = unique("leak");
    let (pw, key, file_secret, env_secret) = (
        "leak-pg-password-77",
        "leak-aws-secret-88",
        "leak-file-secret-99",
        "leak-env-secret-66",
    );
    vault
        .put_v2(&format!("{base}/shop"), json!({ "password": pw }))
        .await;
    vault
        .put_v2(
            &format!("{base}/lake"),
            json!({ "access_key_id": "AKIALEAK", "secret_access_key": key }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, file_secret).unwrap();
    let env = env_ref(env_secret);

    let input = manifest(
        json!({
            "type": "postgres",
            "url": "postgres://app@db:5432/shop",
            "table": "orders",
            "password": format!("ref+vault://secret/data/{base}/shop#password"),
        }),
        json!({
            "type": "s3",
            "bucket": "lake",
            "key": "orders/",
            "vaultPath": format!("secret/{base}/lake"),
            "storeOptions": {
                "session_token": format!("ref+file://{}", file.display()),
                "sse_kms_secret": format!("ref+env://{}", env.trim_start_matches("env:")),
            },
        }),
    );
    let before = input.to_string();
    let resolved = vault
        .resolver(&root_ref(&vault))
        .resolve_manifest(&input)
        .await
        .unwrap();
    assert_eq!(input.to_string(), before, "the input is untouched");
    let text = resolved.to_string();
    for secret in [pw, key, file_secret, env_secret] {
        assert!(text.contains(secret), "{secret} was resolved");
    }

    for (what, shown) in [
        ("input", input.to_string()),
        ("redacted input", redact_manifest(&input).to_string()),
        (
            "redacted resolved copy",
            redact_manifest(&resolved).to_string(),
        ),
        ("references", format!("{:?}", references(&input))),
    ] {
        for secret in [pw, key, file_secret, env_secret, vault.root_token.as_str()] {
            assert!(!shown.contains(secret), "{what} shows {secret}: {shown}");
        }
    }
}
