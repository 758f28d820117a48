//! Service processes (`ferry serve`, `ferry dataplane`) for tests: started on a free port,
//! their stderr followed line by line, spoken to over plain HTTP.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "e2e-token-77c1";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running service process.
pub struct Service {
    pub child: Child,
    pub port: u16,
    /// What it writes on stderr, line by line.
    pub lines: mpsc::Receiver<String>,
}

impl Service {
    /// Starts `cmd` (with `FERRY_API_TOKEN` set) and waits until it listens.
    pub fn start(mut cmd: Command, port: u16) -> Service {
        cmd.env("FERRY_API_TOKEN", TOKEN)
            .env_remove("FERRY_STATE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ferry");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let service = Service { child, port, lines };
        service.wait_line("listening on");
        service
    }

    /// Waits for a stderr line containing `text`; fails on exit or after two minutes.
    pub fn wait_line(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("port {}: never printed '{text}': {e}", self.port),
            }
        }
    }

    /// `METHOD path` with a JSON body, authenticated; the status and the JSON answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        http(self.port, method, path, body)
    }

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        assert!(!self.child.wait().unwrap().success());
    }

    /// SIGTERM, then waits for the exit; true when it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap().success()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with the test token.
pub fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, rest) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let text = if chunked {
        unchunk(rest)
    } else {
        rest.to_string()
    };
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Receives a control plane's callbacks: each request's path and JSON body, in order.
pub struct Callbacks {
    pub port: u16,
    received: mpsc::Receiver<(String, Value)>,
    pub seen: Vec<(String, Value)>,
}

impl Callbacks {
    pub fn start() -> Callbacks {
        Self::failing_first(0)
    }

    /// Answers the first `failures` requests with 503 (not recorded), then 200.
    pub fn failing_first(failures: usize) -> Callbacks {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            let mut left = failures;
            for stream in listener.incoming().map_while(Result::ok) {
                let status = if left > 0 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let Some(request) = read_request(stream, status) else {
                    continue;
                };
                if left > 0 {
                    left -= 1;
                    continue;
                }
                if tx.send(request).is_err() {
                    break;
                }
            }
        });
        Callbacks {
            port,
            received,
            seen: Vec::new(),
        }
    }

    /// Waits until a callback whose path ends with `suffix` arrived; returns its body.
    pub fn wait(&mut self, suffix: &str) -> Value {
        if let Some((_, body)) = self.seen.iter().find(|(p, _)| p.ends_with(suffix)) {
            return body.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (path, body) = self
                .received
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no callback {suffix}: {e}; seen {:?}", self.seen));
            self.seen.push((path.clone(), body.clone()));
            if path.ends_with(suffix) {
                return body;
            }
        }
    }
}

fn read_request(mut stream: TcpStream, status: &str) -> Option<(String, Value)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some((path, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// `count` files of `size` pseudo-random bytes (from `seed`) in `dir`.
pub fn write_files(dir: &std::path::Path, count: u64, size: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        std::fs::write(
            dir.join(format!("part-{i}.bin")),
            ferry_connectors::testkit::bytes(size, seed * 1000 + i),
        )
        .unwrap();
    }
}

/// Every file in directory `a`, and in its subdirectories, is in `b` with the same bytes.
pub fn assert_same_tree(a: &std::path::Path, b: &std::path::Path) {
    let mut names: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "{} is empty", a.display());
    for name in names {
        if a.join(&name).is_dir() {
            assert_same_tree(&a.join(&name), &b.join(&name));
            continue;
        }
        assert!(
            std::fs::read(a.join(&name)).unwrap() == std::fs::read(b.join(&name)).unwrap(),
            "{} differs from {}",
            b.join(&name).display(),
            a.join(&name).display()
        );
    }
}
