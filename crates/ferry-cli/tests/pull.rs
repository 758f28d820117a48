//! Pull flows: a `ferry dataplane` serves a flow's source for download with a flow-scoped
//! token; ranges, validators, listings, token expiry, refresh and revocation, path
//! traversal, and a multi-GiB `ferry copy` from the endpoint killed and resumed.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::service::{free_port, Service};
use ferry_connectors::testkit::{bytes, Remote};
use ferry_core::ChecksumAlgo;
use serde_json::{json, Value};

fn dataplane(root: &Path, token_seconds: Option<u64>) -> Service {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["dataplane", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(root.join("dp"))
        .current_dir(root)
        .env_remove("FERRY_CONTROL_PLANE")
        .env_remove("FERRY_FAILPOINT")
        .env_remove("FERRY_ADVERTISE_URL");
    match token_seconds {
        Some(s) => cmd.env("FERRY_PULL_TOKEN_SECONDS", s.to_string()),
        None => cmd.env_remove("FERRY_PULL_TOKEN_SECONDS"),
    };
    Service::start(cmd, port)
}

fn pull_start(process: &str, message: &str, source: &Path) -> Value {
    json!({
        "messageId": message,
        "processId": process,
        "transferType": {"destinationType": "HttpData", "flowType": "PULL"},
        "sourceDataAddress": {"@type": "DataAddress", "type": "file",
                              "endpoint": source.to_str().unwrap()}
    })
}

/// The endpoint and token of a start's or refresh's `dataAddress`.
fn edr(answer: &Value) -> (String, String) {
    let address = &answer["dataAddress"];
    assert_eq!(
        address["endpointType"], "https://w3id.org/idsa/v4.1/HTTP",
        "{answer}"
    );
    let prop = |name: &str| {
        address["endpointProperties"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["value"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} in {answer}"))
    };
    assert_eq!(prop("authType"), "bearer");
    assert!(prop("expiresAt").ends_with('Z'));
    (
        address["endpoint"].as_str().unwrap().to_string(),
        prop("authorization"),
    )
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One request with the target sent exactly as given (no normalisation of `..` or
/// percent-escapes, as a hostile client would send it).
fn raw(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let body = answer[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body,
    }
}

fn path_of(endpoint: &str) -> String {
    let rest = endpoint.strip_prefix("http://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

#[test]
fn a_pull_flow_serves_its_source_with_ranges_to_its_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let source = root.join("in");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(source.join("data.bin"), &data).unwrap();
    std::fs::write(source.join("sub/a.txt"), b"alpha").unwrap();
    std::fs::write(root.join("secret.txt"), b"TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(root.join("secret.txt"), source.join("escape")).unwrap();
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("o.txt"), b"other flow").unwrap();
    let dp = dataplane(root, None);
    let port = dp.port;

    let (status, started) = dp.call(
        "POST",
        "/dataflows/start",
        Some(&pull_start("p-1", "m-1", &source)),
    );
    assert_eq!(
        (status, &started["state"]),
        (200, &json!("STARTED")),
        "{started}"
    );
    let (endpoint, token) = edr(&started);
    assert_eq!(endpoint, format!("http://127.0.0.1:{port}/pull/p-1"));
    assert_eq!(token.len(), 64, "256 bits, hex");
    let base = path_of(&endpoint);
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let (_, other_flow) = dp.call(
        "POST",
        "/dataflows/start",
        Some(&pull_start("p-2", "m-2", &other)),
    );
    let (_, other_token) = edr(&other_flow);

    // A listing of the tree, as JSON; symbolic links are not followed.
    let listing = raw(port, "GET", &format!("{base}/"), &auth);
    assert_eq!(listing.status, 200);
    let objects = listing.json()["objects"].clone();
    let keys: Vec<&str> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["data.bin", "sub/a.txt"]);
    let sub = raw(port, "GET", &format!("{base}/sub"), &auth);
    assert_eq!(sub.json()["objects"][0]["key"], "a.txt", "{}", sub.json());

    // The whole file, with its validators; HEAD sends them without the body.
    let whole = raw(port, "GET", &format!("{base}/data.bin"), &auth);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
    let etag = whole.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"'));
    assert!(whole.header("last-modified").unwrap().ends_with("GMT"));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let head = raw(port, "HEAD", &format!("{base}/data.bin"), &auth);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("300000"));
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert!(head.body.is_empty());
    // The token as a query parameter works too.
    let by_query = raw(port, "GET", &format!("{base}/sub/a.txt?token={token}"), &[]);
    assert_eq!(
        (by_query.status, by_query.body.as_slice()),
        (200, &b"alpha"[..])
    );

    // One range, a suffix, and several as multipart/byteranges.
    let one = raw(
        port,
        "GET",
        &format!("{base}/data.bin"),
        &[auth[0], ("Range", "bytes=1000-1999")],
    );
    assert_eq!(one.status, 206);
    assert_eq!(one.header("content-range"), Some("bytes 1000-1999/300000"));
    assert_eq!(one.body, &data[1000..2000]);
    let suffix = raw(
        port,
        "GET",
        &format!("{base}/data.bin"),
        &[auth[0], ("Range", "bytes=-10")],
    );
    assert_eq!(suffix.body, &data[299_990..]);
    let many = raw(
        port,
        "GET",
        &format!("{base}/data.bin"),
        &[auth[0], ("Range", "bytes=0-9, 200000-200099, 299999-")],
    );
    assert_eq!(many.status, 206);
    let content_type = many.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{content_type}"));
    assert_eq!(
        many.header("content-length").unwrap(),
        many.body.len().to_string()
    );
    let mut parts = Vec::new();
    let delimiter = format!("\r\n--{boundary}");
    let text = many.body.clone();
    let mut at = 0;
    while let Some(found) = find(&text[at..], delimiter.as_bytes()) {
        let start = at + found + delimiter.len();
        if text[start..].starts_with(b"--") {
            break;
        }
        let head_end = start + find(&text[start..], b"\r\n\r\n").unwrap() + 4;
        let next = head_end + find(&text[head_end..], delimiter.as_bytes()).unwrap();
        let head = String::from_utf8_lossy(&text[start..head_end]).into_owned();
        parts.push((head, text[head_end..next].to_vec()));
        at = next;
    }
    assert_eq!(parts.len(), 3);
    assert!(
        parts[1]
            .0
            .contains("Content-Range: bytes 200000-200099/300000"),
        "{}",
        parts[1].0
    );
    assert_eq!(parts[0].1, &data[..10]);
    assert_eq!(parts[1].1, &data[200_000..200_100]);
    assert_eq!(parts[2].1, &data[299_999..]);
    let beyond = raw(
        port,
        "GET",
        &format!("{base}/data.bin"),
        &[auth[0], ("Range", "bytes=400000-")],
    );
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */300000"));

    // If-Range: the range while the validator matches, the whole file once it does not.
    let same = raw(
        port,
        "GET",
        &format!("{base}/data.bin"),
        &[auth[0], ("Range", "bytes=0-0"), ("If-Range", &etag)],
    );
    assert_eq!(same.status, 206);
    let changed = raw(
        port,
        "GET",
        &format!("{base}/data.bin"),
        &[auth[0], ("Range", "bytes=0-0"), ("If-Range", "\"other\"")],
    );
    assert_eq!((changed.status, changed.body.len()), (200, data.len()));

    // Without the flow's own token: 401, and no data.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", &*format!("Bearer {other_token}"))],
        vec![(
            "Authorization",
            &*format!("Bearer {}", common::service::TOKEN),
        )],
    ] {
        let refused = raw(port, "GET", &format!("{base}/data.bin"), &headers);
        assert_eq!(refused.status, 401, "{headers:?}");
        assert!(refused
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
        let message = refused.json()["error"].as_str().unwrap().to_string();
        assert!(
            message.contains("p-1") && !message.contains(&token),
            "{message}"
        );
    }
    let unknown = raw(
        port,
        "GET",
        &format!("/pull/p-3/data.bin?token={token}"),
        &[],
    );
    assert_eq!(unknown.status, 401);

    // Traversal, however encoded, never leaves the flow's source.
    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub/..%2F..%2Fsecret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..%5Csecret.txt",
        "/sub\\..\\..\\secret.txt",
        "//etc/passwd",
        "/%2Fetc%2Fpasswd",
        "/.%2e/secret.txt",
        "/escape",
        "/%00",
    ] {
        let attempt = raw(port, "GET", &format!("{base}{target}"), &auth);
        assert!(
            matches!(attempt.status, 400 | 404),
            "{target}: {} {}",
            attempt.status,
            String::from_utf8_lossy(&attempt.body)
        );
        assert!(
            !String::from_utf8_lossy(&attempt.body).contains("TOP-SECRET"),
            "{target}"
        );
    }

    // Refresh: a new token; the old one keeps working until it expires.
    let (status, refreshed) = dp.call("POST", "/dataflows/p-1/token", None);
    assert_eq!(status, 200, "{refreshed}");
    let (_, fresh) = edr(&refreshed);
    assert_ne!(fresh, token);
    for t in [&token, &fresh] {
        let ok = raw(port, "GET", &format!("{base}/sub/a.txt?token={t}"), &[]);
        assert_eq!(ok.status, 200);
    }
    let (status, _) = dp.call("POST", "/dataflows/nope/token", None);
    assert_eq!(status, 404);
    let (status, _) = raw_api_without_token(port, "/dataflows/p-1/token");
    assert_eq!(
        status, 401,
        "refresh is the control plane's, with the API token"
    );

    // Suspend revokes every token; resume gives a new one; terminate ends serving.
    let (status, suspended) = dp.call("POST", "/dataflows/p-1/suspend", None);
    assert_eq!((status, &suspended["state"]), (200, &json!("SUSPENDED")));
    for t in [&token, &fresh] {
        let revoked = raw(port, "GET", &format!("{base}/sub/a.txt?token={t}"), &[]);
        assert_eq!(revoked.status, 403);
        assert!(revoked.json()["error"]
            .as_str()
            .unwrap()
            .contains("revoked"));
    }
    let (status, _) = dp.call("POST", "/dataflows/p-1/token", None);
    assert_eq!(status, 409);
    let (status, resumed) = dp.call("POST", "/dataflows/p-1/resume", None);
    assert_eq!(
        (status, &resumed["state"]),
        (200, &json!("STARTED")),
        "{resumed}"
    );
    let (_, after_resume) = edr(&resumed);
    assert_eq!(
        raw(
            port,
            "GET",
            &format!("{base}/sub/a.txt?token={after_resume}"),
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        raw(port, "GET", &format!("{base}/sub/a.txt?token={fresh}"), &[]).status,
        403
    );

    let (status, terminated) = dp.call(
        "POST",
        "/dataflows/p-1/terminate",
        Some(&json!({"reason": "contract ended"})),
    );
    assert_eq!((status, &terminated["state"]), (200, &json!("TERMINATED")));
    let after = raw(
        port,
        "GET",
        &format!("{base}/data.bin?token={after_resume}"),
        &[],
    );
    assert_eq!(after.status, 403);
    assert!(after.body.len() < 200);
    let (_, st) = dp.call("GET", "/dataflows/p-1/status", None);
    assert_eq!(st["state"], "TERMINATED", "{st}");
    let (status, _) = dp.call("POST", "/dataflows/p-1/resume", None);
    assert_eq!(status, 409);
    // The other flow is untouched.
    let o = raw(
        port,
        "GET",
        &format!("{}/o.txt?token={other_token}", path_of(&edr(&other_flow).0)),
        &[],
    );
    assert_eq!(o.body, b"other flow");

    // A pull start names a source ferry can serve; a push start may not reuse the id.
    let mut bad = pull_start("p-4", "m-4", &source);
    bad["transferType"]["destinationType"] = json!("AmazonS3");
    let (status, refused) = dp.call("POST", "/dataflows/start", Some(&bad));
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"]
        .as_str()
        .unwrap()
        .contains("transferType.destinationType"));
    let mut push = pull_start("p-2", "m-5", &source);
    push["transferType"] = json!({"destinationType": "file", "flowType": "PUSH"});
    push["dataAddress"] = json!({"type": "file", "endpoint": "out/"});
    let (status, _) = dp.call("POST", "/dataflows/start", Some(&push));
    assert_eq!(status, 409);
}

fn raw_api_without_token(port: u16, path: &str) -> (u16, Vec<u8>) {
    let r = raw(port, "POST", path, &[("Content-Length", "0")]);
    (r.status, r.body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn an_expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::write(root.join("in/a.txt"), b"alpha").unwrap();
    let dp = dataplane(root, Some(2));
    let (_, started) = dp.call(
        "POST",
        "/dataflows/start",
        Some(&pull_start("p-1", "m-1", &root.join("in"))),
    );
    let (endpoint, token) = edr(&started);
    let target = format!("{}/a.txt?token={token}", path_of(&endpoint));
    let fresh = raw(dp.port, "GET", &target, &[]);
    assert_eq!(fresh.status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let expired = raw(dp.port, "GET", &target, &[]);
    assert_eq!(expired.status, 401);
    assert!(expired
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert!(expired.json()["error"]
        .as_str()
        .unwrap()
        .contains("expired"));
    // The control plane refreshes it.
    let (_, refreshed) = dp.call("POST", "/dataflows/p-1/token", None);
    let (_, token) = edr(&refreshed);
    let again = raw(
        dp.port,
        "GET",
        &format!("{}/a.txt?token={token}", path_of(&endpoint)),
        &[],
    );
    assert_eq!(again.body, b"alpha");
}

/// A file of `size` bytes, sparse but for a distinct block every 16 MiB and at the end, so
/// a part written at the wrong offset shows.
fn patterned_file(path: &Path, size: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut offset = 0;
    let mut n = 0u64;
    while offset < size {
        let block: Vec<u8> = (0..4096u64)
            .map(|i| ((i * 31 + n * 17) % 253) as u8 + 1)
            .collect();
        let len = block.len().min((size - offset) as usize);
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&block[..len]).unwrap();
        offset += 16 * 1024 * 1024 + 4093;
        n += 1;
    }
    file.seek(SeekFrom::Start(size - 7)).unwrap();
    file.write_all(b"THE-END").unwrap();
}

fn xxh3(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = ChecksumAlgo::Xxh3.hasher();
    let mut buf = vec![0u8; 8 * 1024 * 1024];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finish().hex()
}

#[test]
fn a_multi_gib_download_from_a_pull_endpoint_is_killed_and_resumed() {
    const SIZE: u64 = 2 * 1024 * 1024 * 1024 + 12_345;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in")).unwrap();
    let big = root.join("in/big.bin");
    patterned_file(&big, SIZE);
    let dp = dataplane(root, None);
    let (_, started) = dp.call(
        "POST",
        "/dataflows/start",
        Some(&pull_start("p-big", "m-1", &big)),
    );
    let (endpoint, token) = edr(&started);
    // A single-file source is served under its own name.
    let url = format!("{endpoint}/big.bin?token={token}");
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let copy = || {
        let mut cmd = common::ferry(&work.join("state"), &work);
        cmd.args([
            "copy",
            &url,
            "out/",
            "--part-size",
            "32MiB",
            "--concurrency",
            "4",
        ]);
        cmd
    };
    // Killed after 20 of its 65 parts (640 MiB), in flight in parallel ranged reads.
    common::start_and_kill(&mut copy(), "pause-after-parts:20");
    assert!(
        !work.join("out/big.bin").exists(),
        "nothing appears before it is complete"
    );
    let summary = common::run_ok(&mut copy());
    assert_eq!(summary["status"], "succeeded", "{summary}");
    let moved = summary["bytes"].as_u64().unwrap();
    assert!(
        moved < SIZE - 500 * 1024 * 1024,
        "the second run moves only what the first did not: {summary}"
    );
    let out = work.join("out/big.bin");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), SIZE);
    assert_eq!(xxh3(&out), xxh3(&big));

    // The same with the token in a header, after a refresh: the checkpoint is the same
    // copy's (the token is not part of its identity), so nothing moves again.
    let (_, refreshed) = dp.call("POST", "/dataflows/p-big/token", None);
    let (_, fresh) = edr(&refreshed);
    let mut cmd = common::ferry(&work.join("state"), &work);
    cmd.args([
        "copy",
        &format!("{endpoint}/big.bin"),
        "out/",
        "--header",
        &format!("Authorization: Bearer {fresh}"),
    ]);
    let again = common::run_ok(&mut cmd);
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["bytes"], 0, "{again}");
}

/// `ferry ARGS` as a client of the service on `port`: exit code, stdout, stderr.
fn client(root: &Path, port: u16, args: &[&str]) -> (i32, String, String) {
    let out = common::ferry(&root.join("state"), root)
        .args(args)
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_TOKEN", common::service::TOKEN)
        .output()
        .expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of the line `name  value` of `ferry pull`'s text output.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[test]
fn ferry_pull_serves_a_directory_from_ferry_serve_until_it_is_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("shared/2026")).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(root.join("shared/2026/data.bin"), &data).unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(root.join("server"))
        .current_dir(root)
        .env_remove("FERRY_FAILPOINT")
        .env_remove("FERRY_PULL_TOKEN_SECONDS");
    let server = Service::start(cmd, port);

    // A relative path is the client's, made absolute.
    let (code, out, err) = client(root, port, &["pull", "start", "shared/", "--id", "ds-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("pull/ds-1 STARTED"), "{out}");
    let endpoint = field(&out, "endpoint");
    assert_eq!(endpoint, format!("http://127.0.0.1:{port}/pull/ds-1/"));
    let token = field(&out, "token");
    assert_eq!(token.len(), 64, "{out}");
    // The default lifetime is 900 s; a second may pass between issuing and printing.
    let left: u64 = field(&out, "expires")
        .rsplit_once("(in ")
        .and_then(|(_, s)| s.strip_suffix(" s)"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no lifetime in {out}"));
    assert!((890..=900).contains(&left), "{out}");
    assert!(
        !server_lines(&server).contains(&token),
        "the token is in no log line"
    );

    // Downloaded with ferry copy, the token in the URL; the listing names the file.
    let listing = raw(port, "GET", &format!("/pull/ds-1/?token={token}"), &[]);
    assert_eq!(listing.json()["objects"][0]["key"], "2026/data.bin");
    let url = format!("{endpoint}2026/data.bin?token={token}");
    let summary = common::run_ok(common::ferry(&root.join("state"), root).args([
        "copy",
        &url,
        "out/",
        "--part-size",
        "1MiB",
    ]));
    assert_eq!(summary["status"], "succeeded", "{summary}");
    assert_eq!(std::fs::read(root.join("out/data.bin")).unwrap(), data);

    // status shows the endpoint, never a token; a new token works beside the first.
    let (code, out, _) = client(root, port, &["pull", "status", "ds-1"]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("pull/ds-1 STARTED\nendpoint  {endpoint}\n"));
    let (code, out, _) = client(root, port, &["pull", "token", "ds-1", "--json"]);
    assert_eq!(code, 0);
    let (_, fresh) = edr(&serde_json::from_str(&out).unwrap());
    assert_ne!(fresh, token);

    // Terminated: refused with 403, and ferry copy fails naming why.
    let (code, out, _) = client(
        root,
        port,
        &["pull", "terminate", "ds-1", "--reason", "contract ended"],
    );
    assert_eq!((code, out.trim()), (0, "pull/ds-1 TERMINATED"));
    for t in [&token, &fresh] {
        let refused = raw(
            port,
            "GET",
            &format!("/pull/ds-1/2026/data.bin?token={t}"),
            &[],
        );
        assert_eq!(refused.status, 403);
    }
    let (code, _, err) = common::copy_in(root, &[&url, "again/"]);
    assert_ne!(code, 0);
    assert!(err.contains("403") || err.contains("revoked"), "{err}");
    assert!(!err.contains(&token), "{err}");
    assert!(!root.join("again/data.bin").exists());

    // Bad input: one line naming what is at fault.
    let (code, _, err) = client(root, port, &["pull", "token", "ds-1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ds-1") && err.contains("Terminated"), "{err}");
    let (code, _, err) = client(root, port, &["pull", "start", "postgres://db/x?table=t"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ferry pull serves"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = client(root, port, &["pull", "status", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("'nope' not found"), "{err}");
}

/// What the service wrote on stderr so far.
fn server_lines(service: &Service) -> String {
    service.lines.try_iter().collect::<Vec<_>>().join("\n")
}

/// A prefix of S3 or Azure objects served by a pull flow made with `ferry pull start`:
/// listing, ranges streamed from the store, validators, and a single object as the source.
fn an_object_prefix_is_served(remote: Remote) {
    let Some(base) = remote.unique("pull") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in/sub")).unwrap();
    let data = bytes(5_000_000, 7);
    std::fs::write(root.join("in/big.bin"), &data).unwrap();
    std::fs::write(root.join("in/sub/a.txt"), b"alpha").unwrap();
    common::copy_in_ok(root, &["in/", &base]);
    let dp = dataplane(root, None);
    let port = dp.port;

    let (code, out, err) = client(root, port, &["pull", "start", &base, "--id", "objects"]);
    assert_eq!(code, 0, "{err}");
    let token = field(&out, "token");
    let auth = format!("Bearer {token}");
    let auth = [("Authorization", auth.as_str())];
    let listing = raw(port, "GET", "/pull/objects/", &auth).json();
    let keys: Vec<&str> = listing["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("{listing}"))
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["big.bin", "sub/a.txt"]);
    assert_eq!(listing["bytes"], 5_000_005);

    let head = raw(port, "HEAD", "/pull/objects/big.bin", &auth);
    assert_eq!(head.header("content-length"), Some("5000000"));
    let etag = head.header("etag").expect("an ETag").to_string();
    let range = raw(
        port,
        "GET",
        "/pull/objects/big.bin",
        &[auth[0], ("Range", "bytes=4000000-"), ("If-Range", &etag)],
    );
    assert_eq!(range.status, 206);
    assert_eq!(range.body, &data[4_000_000..]);
    let two = raw(
        port,
        "GET",
        "/pull/objects/big.bin",
        &[auth[0], ("Range", "bytes=0-99,1000-1099")],
    );
    assert_eq!(two.status, 206);
    assert!(find(&two.body, &data[1000..1100]).is_some());
    let whole = raw(port, "GET", "/pull/objects/big.bin", &auth);
    assert_eq!((whole.status, whole.body == data), (200, true));
    let missing = raw(port, "GET", "/pull/objects/nope.bin", &auth);
    assert_eq!(missing.status, 404);
    let traversal = raw(port, "GET", "/pull/objects/sub/%2e%2e/%2e%2e/x", &auth);
    assert_eq!(traversal.status, 400);

    // One object as the source: served under its own name, nothing else.
    let (code, out, err) = client(
        root,
        port,
        &["pull", "start", &format!("{base}sub/a.txt"), "--id", "one"],
    );
    assert_eq!(code, 0, "{err}");
    let one = field(&out, "token");
    let a = raw(port, "GET", &format!("/pull/one/a.txt?token={one}"), &[]);
    assert_eq!((a.status, a.body.as_slice()), (200, &b"alpha"[..]));
    let other = raw(port, "GET", &format!("/pull/one/big.bin?token={one}"), &[]);
    assert_eq!(other.status, 404);
}

#[test]
fn an_s3_prefix_is_served() {
    an_object_prefix_is_served(Remote::S3);
}

#[test]
fn an_azure_prefix_is_served() {
    an_object_prefix_is_served(Remote::Azure);
}

/// A download costs one request to the store per range asked for, whatever its size (a
/// plain GET for the whole object), streamed as the client reads it.
#[test]
fn an_object_is_read_from_s3_once_per_range_asked_for() {
    let Some(base) = Remote::S3.unique("pull-once") else {
        return;
    };
    let upstream = std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap();
    let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in")).unwrap();
    // Larger than any window a reader might cut a download into.
    let data = bytes(150 * 1024 * 1024, 11);
    std::fs::write(root.join("in/large.bin"), &data).unwrap();
    common::copy_in_ok(root, &["in/large.bin", &base]);
    let proxy = common::proxy::Proxy::start(upstream, |_| None);
    let dp = dataplane(root, None);
    let source = format!("{base}large.bin?endpoint={}", proxy.url());
    let (code, out, err) = client(root, dp.port, &["pull", "start", &source, "--id", "once"]);
    assert_eq!(code, 0, "{err}");
    let token = field(&out, "token");
    let gets = || proxy.count(|s| s.method == "GET" && s.target.contains("large.bin"));

    let whole = raw(
        dp.port,
        "GET",
        &format!("/pull/once/large.bin?token={token}"),
        &[],
    );
    assert_eq!(whole.status, 200);
    assert!(whole.body == data, "the whole object, byte for byte");
    assert_eq!(gets(), 1);
    let range = raw(
        dp.port,
        "GET",
        &format!("/pull/once/large.bin?token={token}"),
        &[("Range", "bytes=1000-140000000")],
    );
    assert_eq!(range.status, 206);
    assert!(range.body == data[1000..=140_000_000]);
    assert_eq!(gets(), 2);
}
