//! A fault-injecting HTTP proxy in front of a real server: it forwards each request
//! unchanged, except those a rule answers itself (a completion the server "already
//! dropped"), and counts the requests it saw by kind.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A request as the proxy saw it: its method and target (path and query).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
}

/// What a rule answers instead of the server: status line and body.
pub struct Answer {
    pub status: &'static str,
    pub body: String,
}

type Rule = dyn Fn(&Seen) -> Option<Answer> + Send + Sync;

pub struct Proxy {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub fn start(
        upstream: &str,
        rule: impl Fn(&Seen) -> Option<Answer> + Send + Sync + 'static,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rule: Arc<Rule> = Arc::new(rule);
        let upstream = upstream.to_string();
        {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let (seen, rule, upstream) = (seen.clone(), rule.clone(), upstream.clone());
                    thread::spawn(move || serve(client, &upstream, rule.as_ref(), &seen));
                }
            });
        }
        Proxy { port, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests seen so far that `matches` selects.
    pub fn seen(&self, matches: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| matches(s)).cloned().collect()
    }

    pub fn count(&self, matches: impl Fn(&Seen) -> bool) -> usize {
        self.seen(matches).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves one client connection: one request after another, each answered by the rule or
/// forwarded over a fresh upstream connection.
fn serve(mut client: TcpStream, upstream: &str, rule: &Rule, seen: &Mutex<Vec<Seen>>) {
    let mut buffered = Vec::new();
    loop {
        let Some((head, body)) = read_request(&mut client, &mut buffered) else {
            return;
        };
        let request_line = head.lines().next().unwrap_or_default().to_string();
        let mut words = request_line.split_whitespace();
        let request = Seen {
            method: words.next().unwrap_or_default().to_string(),
            target: words.next().unwrap_or_default().to_string(),
        };
        seen.lock().unwrap().push(request.clone());
        let response = match rule(&request) {
            Some(answer) => format!(
                "HTTP/1.1 {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{}",
                answer.status,
                answer.body.len(),
                answer.body
            )
            .into_bytes(),
            None => match forward(upstream, &head, &body) {
                Some(response) => response,
                None => return,
            },
        };
        if client.write_all(&response).is_err() {
            return;
        }
    }
}

/// Reads one request (head and a Content-Length body) from the client.
fn read_request(client: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = find(buffered, b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buffered.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
    let length = content_length(&head);
    while buffered.len() < head_end + length {
        let n = client.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buffered.extend_from_slice(&chunk[..n]);
    }
    let body = buffered[head_end..head_end + length].to_vec();
    buffered.drain(..head_end + length);
    Some((head, body))
}

/// Sends the request upstream with `Connection: close` and returns the whole response.
fn forward(upstream: &str, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(upstream).ok()?;
    let mut lines: Vec<&str> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let head = format!("{}\r\n\r\n", lines.join("\r\n"));
    server.write_all(head.as_bytes()).ok()?;
    server.write_all(body).ok()?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).ok()?;
    let _ = server.shutdown(Shutdown::Both);
    // The response may say keep-alive; the client reads it by its length either way.
    Some(response)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
