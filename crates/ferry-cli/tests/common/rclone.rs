//! `rclone rcd` for tests: the shared one `scripts/services` starts, or one of a test's own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::service::free_port;

/// The shared `rclone rcd` of `scripts/services`: URL, user, password.
pub fn shared_rcd() -> Option<(String, String, String)> {
    match std::env::var("FERRY_TEST_RCLONE") {
        Ok(url) => Some((
            url,
            std::env::var("FERRY_TEST_RCLONE_USER").unwrap(),
            std::env::var("FERRY_TEST_RCLONE_PASSWORD").unwrap(),
        )),
        Err(_) => {
            let msg = "rclone rcd not configured (FERRY_TEST_RCLONE unset): run `scripts/services up` and `eval \"$(scripts/services env)\"`";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("skipping: {msg}");
            None
        }
    }
}

pub const PRIVATE_USER: &str = "ferry";
pub const PRIVATE_PASSWORD: &str = "rcd-secret-5c1e";

/// An `rclone rcd` of the test's own, slowed down to `bwlimit` so that a run is still
/// going when the test acts on it.
pub struct Rcd {
    child: Child,
    port: u16,
}

impl Rcd {
    pub fn start_with(dir: &Path, bwlimit: &str, args: &[&str]) -> Rcd {
        let port = free_port();
        std::fs::write(dir.join("rclone.conf"), "").unwrap();
        let child = Command::new("rclone")
            .args(["rcd", "--rc-addr", &format!("127.0.0.1:{port}")])
            .args(["--rc-user", PRIVATE_USER, "--rc-pass", PRIVATE_PASSWORD])
            .arg("--config")
            .arg(dir.join("rclone.conf"))
            .args(["--bwlimit", bwlimit])
            .args(args)
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rclone (scripts/services installs it)");
        let rcd = Rcd { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rclone rcd never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        rcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn call(&self, method: &str, body: Value) -> Value {
        rc_call(self.port, PRIVATE_USER, PRIVATE_PASSWORD, method, &body)
    }

    /// rclone's own account of a job.
    pub fn job(&self, id: &str) -> Value {
        self.call("job/status", json!({"jobid": id.parse::<i64>().unwrap()}))
    }

    /// The jobs rclone knows whose group is one of `run`'s.
    pub fn jobs_of(&self, run: &str) -> Vec<Value> {
        let ids = self.call("job/list", json!({}));
        ids["jobids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| self.call("job/status", json!({"jobid": id})))
            .filter(|s| {
                s["group"]
                    .as_str()
                    .is_some_and(|g| g.starts_with(&format!("ferry/{run}/")))
            })
            .collect()
    }
}

impl Drop for Rcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call of rclone's remote-control API on 127.0.0.1:`port`.
pub fn rc_call(port: u16, user: &str, password: &str, method: &str, body: &Value) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to rcd");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let body = body.to_string();
    write!(
        stream,
        "POST /{method} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (_, rest) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(rest).unwrap_or(Value::Null)
}
