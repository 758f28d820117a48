//! Load for a running `ferry serve`: requests at a fixed rate, GETs and POSTs mixed, and
//! the latency percentiles, as JSON on stdout.
//!
//! ```text
//! cargo run --release -p ferry-api --example load -- \
//!     --url http://127.0.0.1:8080 --token T --rate 500 --seconds 30 --post-share 0.2
//! ```
//!
//! The load is open: request i is due at start + i/rate whatever happened before, and its
//! latency counts from when it was due, so a server that stalls cannot hide the queue it
//! caused (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Settings {
    url: String,
    token: String,
    rate: f64,
    seconds: f64,
    post_share: f64,
    warmup: f64,
}

fn settings() -> Settings {
    let mut s = Settings {
        url: "http://127.0.0.1:8080".into(),
        token: std::env::var("FERRY_TOKEN").unwrap_or_default(),
        rate: 500.0,
        seconds: 30.0,
        post_share: 0.2,
        warmup: 3.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            panic!("flags come in pairs: --name value")
        };
        let number = || value.parse::<f64>().expect("a number");
        match flag.as_str() {
            "--url" => s.url = value.clone(),
            "--token" => s.token = value.clone(),
            "--rate" => s.rate = number(),
            "--seconds" => s.seconds = number(),
            "--post-share" => s.post_share = number(),
            "--warmup" => s.warmup = number(),
            other => panic!("unknown flag {other}"),
        }
    }
    s
}

#[derive(Clone, Copy)]
enum Kind {
    List,
    Get,
    Runs,
    Create,
}

#[tokio::main]
async fn main() {
    let s = Arc::new(settings());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let base = s.url.trim_end_matches('/').to_string();
    let tag = format!("{:x}", std::process::id());

    // Something to GET: a few transfers that never run during the test.
    for i in 0..10 {
        let r = client
            .post(format!("{base}/v1/transfers"))
            .bearer_auth(&s.token)
            .json(&manifest(&format!("seed-{tag}-{i}"), "seed"))
            .send()
            .await
            .expect("the server answers");
        assert!(r.status().is_success(), "seeding failed: {}", r.status());
    }

    let total = ((s.warmup + s.seconds) * s.rate) as u64;
    let warmup = (s.warmup * s.rate) as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Kind, Duration, bool)>();
    let start = Instant::now() + Duration::from_millis(100);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / s.rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, base, tx, s, tag) = (
            client.clone(),
            base.clone(),
            tx.clone(),
            s.clone(),
            tag.clone(),
        );
        tokio::spawn(async move {
            // A fixed pattern spreads POSTs evenly: post_share of every 100 requests.
            let kind = if ((i % 100) as f64) < s.post_share * 100.0 {
                Kind::Create
            } else {
                [Kind::List, Kind::Get, Kind::Runs][(i % 3) as usize]
            };
            let seed = format!("seed-{tag}-{}", i % 10);
            let request = match kind {
                Kind::List => client.get(format!("{base}/v1/transfers?labelSelector=load%3Dseed")),
                Kind::Get => client.get(format!("{base}/v1/transfers/{seed}")),
                Kind::Runs => client.get(format!("{base}/v1/transfers/{seed}/runs")),
                Kind::Create => client
                    .post(format!("{base}/v1/transfers"))
                    .json(&manifest(&format!("load-{tag}-{i}"), "created")),
            };
            let ok = match request.bearer_auth(&s.token).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let _ = tx.send((i, kind, due.elapsed(), ok));
        });
    }
    drop(tx);
    let mut all = Vec::new();
    let mut by_kind: [Vec<Duration>; 4] = Default::default();
    let mut errors = 0u64;
    while let Some((i, kind, latency, ok)) = rx.recv().await {
        if i < warmup {
            continue;
        }
        if !ok {
            errors += 1;
        }
        all.push(latency);
        by_kind[kind as usize].push(latency);
    }
    let elapsed = start.elapsed().as_secs_f64() - s.warmup;
    let summary = |mut v: Vec<Duration>| {
        v.sort();
        let pct = |p: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
            v[i].as_secs_f64() * 1000.0
        };
        json!({"requests": v.len(), "p50_ms": pct(50.0), "p90_ms": pct(90.0),
               "p99_ms": pct(99.0), "max_ms": pct(100.0)})
    };
    let [list, get, runs, create] = by_kind;
    let report = json!({
        "target_rate": s.rate,
        "achieved_rate": all.len() as f64 / elapsed,
        "seconds": s.seconds,
        "errors": errors,
        "all": summary(all),
        "list": summary(list),
        "get": summary(get),
        "runs": summary(runs),
        "create": summary(create),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

/// A transfer that is stored but not run during the test (its schedule is once a year).
fn manifest(name: &str, kind: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1",
        "kind": "BatchTransfer",
        "metadata": {"name": name, "labels": {"load": kind}},
        "spec": {
            "source": {"type": "file", "path": "in/orders.csv", "format": "csv"},
            "destination": {"type": "s3", "bucket": "lake", "key": "orders/", "format": "parquet"},
            "schedule": "0 0 1 1 *"
        }
    })
}
