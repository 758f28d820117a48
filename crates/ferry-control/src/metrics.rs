//! Counters the control plane keeps, written in Prometheus' text format for `/metrics`.
//!
//! A handful of fixed series do not need a metrics library: atomics, and histograms of
//! run durations and of dispatch times with fixed buckets.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds of the run-duration buckets, in seconds.
const DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Upper bounds of the dispatch-time buckets, in seconds.
const DISPATCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub struct Metrics {
    runs_started: AtomicU64,
    /// Finished runs by phase.
    runs_finished: Mutex<BTreeMap<String, u64>>,
    retries: AtomicU64,
    bytes: AtomicU64,
    records: AtomicU64,
    durations: Mutex<Histogram>,
    /// From a run's claim by the dispatcher to a data plane chosen, and to its answer.
    selections: Mutex<Histogram>,
    dispatches: Mutex<Histogram>,
    events: AtomicU64,
    /// Routing decisions by (engine or inProcess, rule).
    routed: Mutex<BTreeMap<(String, String), u64>>,
    /// Streams this process runs: lag in events by (transfer, partition), and in seconds
    /// by transfer.
    stream_lag: Mutex<BTreeMap<String, StreamLag>>,
}

/// A stream's lag: events behind per partition, and seconds since it was caught up.
type StreamLag = (Vec<(i32, i64)>, f64);

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Mutex<Self> {
        Mutex::new(Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        })
    }

    fn observe(&mut self, value: f64) {
        for (i, bound) in self.bounds.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    /// The series' lines: cumulative buckets, sum and count.
    fn lines(&self) -> Vec<(String, String)> {
        let mut lines: Vec<(String, String)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, n)| (format!("_bucket{{le=\"{bound}\"}}"), n.to_string()))
            .collect();
        lines.push(("_bucket{le=\"+Inf\"}".into(), self.count.to_string()));
        lines.push(("_sum".into(), self.sum.to_string()));
        lines.push(("_count".into(), self.count.to_string()));
        lines
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            runs_started: AtomicU64::default(),
            runs_finished: Mutex::default(),
            retries: AtomicU64::default(),
            bytes: AtomicU64::default(),
            records: AtomicU64::default(),
            durations: Histogram::new(DURATION_BUCKETS),
            selections: Histogram::new(DISPATCH_BUCKETS),
            dispatches: Histogram::new(DISPATCH_BUCKETS),
            events: AtomicU64::default(),
            routed: Mutex::default(),
            stream_lag: Mutex::default(),
        }
    }
}

/// Numbers read from elsewhere when the metrics are written.
pub struct Snapshot {
    pub transfers_by_phase: BTreeMap<&'static str, u64>,
    pub active_runs: u64,
    pub webhook_delivered: u64,
    pub webhook_failed: u64,
    pub webhook_dropped: u64,
    /// Runs each engine executes now, by engine name.
    pub delegated_runs: Vec<(String, u64)>,
}

impl Metrics {
    pub fn run_started(&self) {
        self.runs_started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// A run ended in `phase` after `seconds`, having moved `bytes` and `records`.
    pub fn run_finished(&self, phase: &str, seconds: f64, bytes: u64, records: u64) {
        *lock(&self.runs_finished)
            .entry(phase.to_string())
            .or_default() += 1;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        lock(&self.durations).observe(seconds);
    }

    /// A run was handed to a data plane: `select` seconds after the dispatcher claimed it
    /// a data plane was chosen, `total` seconds after, the data plane answered.
    pub fn dispatched(&self, select: f64, total: f64) {
        lock(&self.selections).observe(select);
        lock(&self.dispatches).observe(total);
    }

    /// A run was routed to `engine` (or `inProcess`) by `rule`.
    pub fn routed(&self, engine: &str, rule: &str) {
        *lock(&self.routed)
            .entry((engine.to_string(), rule.to_string()))
            .or_default() += 1;
    }

    /// Where a stream this process runs stands: events behind per partition, and seconds
    /// since it last had nothing left to read.
    pub fn stream_lag(&self, transfer: &str, partitions: Vec<(i32, i64)>, seconds: f64) {
        lock(&self.stream_lag).insert(transfer.to_string(), (partitions, seconds));
    }

    /// A stream stopped running here (suspended, deleted, handed over, failed).
    pub fn stream_ended(&self, transfer: &str) {
        lock(&self.stream_lag).remove(transfer);
    }

    /// Bytes and records of an attempt that failed still moved.
    pub fn moved(&self, bytes: u64, records: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
    }

    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::new();
        let mut series = |name: &str, kind: &str, help: &str, values: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        series(
            "ferry_transfers",
            "gauge",
            "Transfers by phase.",
            snap.transfers_by_phase
                .iter()
                .map(|(phase, n)| (format!("{{phase=\"{phase}\"}}"), n.to_string()))
                .collect(),
        );
        series(
            "ferry_runs_active",
            "gauge",
            "Runs executing in this process.",
            vec![(String::new(), snap.active_runs.to_string())],
        );
        series(
            "ferry_delegated_runs_active",
            "gauge",
            "Runs an external engine executes for this process now.",
            snap.delegated_runs
                .iter()
                .map(|(engine, n)| (format!("{{engine=\"{engine}\"}}"), n.to_string()))
                .collect(),
        );
        {
            let lags = lock(&self.stream_lag);
            series(
                "ferry_stream_lag_events",
                "gauge",
                "Events of a stream's topic partition not yet committed at its destination.",
                lags.iter()
                    .flat_map(|(transfer, (partitions, _))| {
                        partitions.iter().map(move |(p, lag)| {
                            (
                                format!("{{transfer=\"{transfer}\",partition=\"{p}\"}}"),
                                lag.to_string(),
                            )
                        })
                    })
                    .collect(),
            );
            series(
                "ferry_stream_lag_seconds",
                "gauge",
                "Seconds since a stream last had nothing left to read (0 when caught up).",
                lags.iter()
                    .map(|(transfer, (_, seconds))| {
                        (
                            format!("{{transfer=\"{transfer}\"}}"),
                            format!("{seconds:.3}"),
                        )
                    })
                    .collect(),
            );
        }
        series(
            "ferry_runs_routed_total",
            "counter",
            "Routing decisions, by transfer service (an engine or inProcess) and deciding rule.",
            lock(&self.routed)
                .iter()
                .map(|((engine, rule), n)| {
                    (
                        format!("{{engine=\"{engine}\",rule=\"{rule}\"}}"),
                        n.to_string(),
                    )
                })
                .collect(),
        );
        series(
            "ferry_runs_started_total",
            "counter",
            "Run attempts started.",
            vec![(String::new(), load(&self.runs_started))],
        );
        series(
            "ferry_runs_finished_total",
            "counter",
            "Runs finished, by phase.",
            lock(&self.runs_finished)
                .iter()
                .map(|(phase, n)| (format!("{{phase=\"{phase}\"}}"), n.to_string()))
                .collect(),
        );
        series(
            "ferry_run_retries_total",
            "counter",
            "Failed attempts scheduled to be tried again.",
            vec![(String::new(), load(&self.retries))],
        );
        series(
            "ferry_bytes_moved_total",
            "counter",
            "Bytes moved by runs.",
            vec![(String::new(), load(&self.bytes))],
        );
        series(
            "ferry_records_moved_total",
            "counter",
            "Records written by runs.",
            vec![(String::new(), load(&self.records))],
        );
        series(
            "ferry_events_total",
            "counter",
            "Events recorded.",
            vec![(String::new(), load(&self.events))],
        );
        series(
            "ferry_webhook_deliveries_total",
            "counter",
            "Webhook deliveries, by outcome.",
            vec![
                (
                    "{outcome=\"delivered\"}".into(),
                    snap.webhook_delivered.to_string(),
                ),
                (
                    "{outcome=\"failed\"}".into(),
                    snap.webhook_failed.to_string(),
                ),
                (
                    "{outcome=\"dropped\"}".into(),
                    snap.webhook_dropped.to_string(),
                ),
            ],
        );
        series(
            "ferry_run_duration_seconds",
            "histogram",
            "How long finished runs took.",
            lock(&self.durations).lines(),
        );
        series(
            "ferry_dispatch_selection_seconds",
            "histogram",
            "From the dispatcher's claim of a run to a data plane chosen for it.",
            lock(&self.selections).lines(),
        );
        series(
            "ferry_dispatch_seconds",
            "histogram",
            "From the dispatcher's claim of a run to the chosen data plane's answer.",
            lock(&self.dispatches).lines(),
        );
        out
    }
}

fn load(n: &AtomicU64) -> String {
    n.load(Ordering::Relaxed).to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_every_series() {
        let m = Metrics::default();
        m.run_started();
        m.run_finished("Succeeded", 2.0, 100, 10);
        m.run_finished("Failed", 0.05, 1, 0);
        m.routed("rclone-eu", "size");
        m.stream_lag("orders-lake", vec![(0, 12), (1, 0)], 2.5);
        m.dispatched(0.002, 0.004);
        m.dispatched(0.02, 0.2);
        let text = m.render(&Snapshot {
            transfers_by_phase: BTreeMap::from([("Running", 2), ("Succeeded", 1)]),
            active_runs: 2,
            webhook_delivered: 3,
            webhook_failed: 0,
            webhook_dropped: 0,
            delegated_runs: vec![("rclone-eu".into(), 1)],
        });
        for line in [
            "ferry_transfers{phase=\"Running\"} 2",
            "ferry_runs_finished_total{phase=\"Failed\"} 1",
            "ferry_bytes_moved_total 101",
            "ferry_run_duration_seconds_bucket{le=\"0.1\"} 1",
            "ferry_run_duration_seconds_bucket{le=\"5\"} 2",
            "ferry_run_duration_seconds_bucket{le=\"+Inf\"} 2",
            "ferry_run_duration_seconds_count 2",
            "ferry_dispatch_selection_seconds_bucket{le=\"0.0025\"} 1",
            "ferry_dispatch_selection_seconds_bucket{le=\"0.025\"} 2",
            "ferry_dispatch_seconds_bucket{le=\"0.005\"} 1",
            "ferry_dispatch_seconds_bucket{le=\"0.1\"} 1",
            "ferry_dispatch_seconds_bucket{le=\"0.25\"} 2",
            "ferry_dispatch_seconds_count 2",
            "ferry_webhook_deliveries_total{outcome=\"delivered\"} 3",
            "ferry_delegated_runs_active{engine=\"rclone-eu\"} 1",
            "ferry_runs_routed_total{engine=\"rclone-eu\",rule=\"size\"} 1",
            "ferry_stream_lag_events{transfer=\"orders-lake\",partition=\"0\"} 12",
            "ferry_stream_lag_events{transfer=\"orders-lake\",partition=\"1\"} 0",
            "ferry_stream_lag_seconds{transfer=\"orders-lake\"} 2.500",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
