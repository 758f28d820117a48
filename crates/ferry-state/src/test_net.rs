//! Network stand-ins for the stores' tests: a proxy that goes silent, and a server that
//! does not speak TLS. Threads of their own, so sync and async tests use them alike.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The test PostgreSQL server's URL parts: user, `host:port` and database.
pub(crate) fn parts(url: &str) -> (String, String, String) {
    let config: tokio_postgres::Config = url.parse().expect("FERRY_TEST_POSTGRES parses");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test server is on TCP, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or_default().to_string();
    let db = config.get_dbname().unwrap_or(&user).to_string();
    (user, format!("{host}:{port}"), db)
}

/// A TCP proxy on loopback to `upstream` that forwards both ways until [`Self::silence`]:
/// then it keeps every connection open but drops what it reads, as a hung server would.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    flowing: Arc<AtomicBool>,
}

impl Proxy {
    pub(crate) fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let flowing = Arc::new(AtomicBool::new(true));
        let upstream = upstream.to_string();
        let on = Arc::clone(&flowing);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let on = Arc::clone(&on);
                    std::thread::spawn(move || pump(from, to, &on));
                }
            }
        });
        Self { port, flowing }
    }

    /// From now on nothing goes through, and nothing is closed.
    pub(crate) fn silence(&self) {
        self.flowing.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, flowing: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) if flowing.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

/// A server on loopback that answers PostgreSQL's request for TLS with "no"; returns its
/// port.
pub(crate) fn plain_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = [0u8; 8];
                if stream.read_exact(&mut request).is_ok() {
                    let _ = stream.write_all(b"N");
                    let _ = std::io::copy(&mut stream, &mut std::io::sink());
                }
            });
        }
    });
    port
}

/// The test CA's certificate file (`FERRY_TEST_POSTGRES_CA`, set by `scripts/services`).
pub(crate) fn ca() -> String {
    std::env::var("FERRY_TEST_POSTGRES_CA")
        .expect("scripts/services env sets FERRY_TEST_POSTGRES_CA")
}
