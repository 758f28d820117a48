//! What the user sees: the progress bar and the summaries, as text or JSON.

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::DataAddress;
use std::io::Write;

use ferry_engine::{CopyReport, FileReport, Progress, RecordReport, RowVerifyReport, VerifyReport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar {
    bar: ProgressBar,
    files_total: AtomicU64,
    files_done: AtomicU64,
    /// Set once a stream's events are planned: the bar counts events, not bytes.
    events: std::sync::atomic::AtomicBool,
    /// Set when stderr is not a terminal: progress is printed as plain lines instead.
    plain: Option<std::sync::mpsc::Sender<()>>,
}

impl Bar {
    /// A bar on the terminal, or, when stderr is not one, a line every `PLAIN_EVERY`.
    pub fn new(on_terminal: bool) -> std::sync::Arc<Self> {
        let target = if on_terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let style = ProgressStyle::with_template(
            "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let this = std::sync::Arc::new(Self {
            bar,
            files_total: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            events: std::sync::atomic::AtomicBool::new(false),
            plain: (!on_terminal).then_some(stop),
        });
        if !on_terminal {
            let watched = std::sync::Arc::downgrade(&this);
            std::thread::spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(PLAIN_EVERY)
                {
                    let Some(bar) = watched.upgrade() else { break };
                    eprintln!("{}", bar.plain_line());
                }
            });
        }
        this
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some(stop) = &self.plain {
            let _ = stop.send(());
        }
    }

    fn plain_line(&self) -> String {
        if self.events.load(Ordering::Relaxed) {
            return format!(
                "ferry: events {} / {}, {:.0}/s, ETA {}s",
                self.bar.position(),
                self.bar.length().unwrap_or(0),
                self.bar.per_sec(),
                self.bar.eta().as_secs(),
            );
        }
        format!(
            "ferry: {} / {}, {}/s, files {}/{}",
            human_bytes(self.bar.position()),
            human_bytes(self.bar.length().unwrap_or(0)),
            human_bytes(self.bar.per_sec() as u64),
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed),
        )
    }

    fn show_files(&self) {
        let done = self.files_done.load(Ordering::Relaxed);
        let total = self.files_total.load(Ordering::Relaxed);
        self.bar.set_message(format!("files {done}/{total}"));
    }
}

const PLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Progress for Bar {
    fn planned(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.show_files();
    }

    fn advanced(&self, bytes: u64) {
        if !self.events.load(Ordering::Relaxed) {
            self.bar.inc(bytes);
        }
    }

    fn events_planned(&self, events: u64) {
        if !self.events.swap(true, Ordering::Relaxed) {
            let style = ProgressStyle::with_template(
                "{bar:30} {human_pos}/{human_len} events {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            self.bar.set_style(style);
            self.bar.set_position(0);
        }
        self.bar.set_length(events);
    }

    fn events_done(&self, events: u64) {
        self.bar.inc(events);
    }

    fn file_finished(&self, _key: &str) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.show_files();
    }
}

/// How a dry run's one JSON line starts; its files follow, then its totals.
const DRY_RUN_JSON_START: &str = r#"{"status":"dry_run","would_copy":["#;

/// A dry run's files, printed as the listing finds them rather than held until the end:
/// `would copy KEY -> DESTINATION (SIZE)` lines, or the start of the one JSON line whose
/// end [`copy_report`] prints.
pub struct DryRun {
    dst: DataAddress,
    json: bool,
    printed: AtomicU64,
}

impl DryRun {
    pub fn new(dst: &DataAddress, json: bool) -> Self {
        Self {
            dst: dst.clone(),
            json,
            printed: AtomicU64::new(0),
        }
    }
}

impl Progress for DryRun {
    fn file_reported(&self, f: &FileReport) {
        let to = if f.destination_key.is_empty() {
            self.dst.clone()
        } else {
            self.dst.join(&f.destination_key)
        };
        let mut out = std::io::stdout().lock();
        let first = self.printed.fetch_add(1, Ordering::Relaxed) == 0;
        let _ = if self.json {
            let item =
                serde_json::json!({"key": f.key, "destination": to.to_string(), "size": f.size});
            let open = if first { DRY_RUN_JSON_START } else { "," };
            write!(out, "{open}{item}")
        } else {
            writeln!(
                out,
                "would copy {} -> {to} ({})",
                f.key,
                human_bytes(f.size)
            )
        };
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A partition with nothing to do says so, on stderr, whatever the summary's form.
fn idle(why: Option<&str>) {
    if let Some(why) = why {
        eprintln!("ferry: {why}");
    }
}

pub fn copy_report(report: &CopyReport, src: &DataAddress, dry_run: bool, json: bool) {
    if dry_run {
        // The files were printed as they were listed (see `DryRun`); what is left is the
        // total.
        if json {
            let open = if report.planned == 0 {
                DRY_RUN_JSON_START
            } else {
                ""
            };
            println!(
                r#"{open}],"objects":{},"bytes":{}}}"#,
                report.planned, report.planned_bytes
            );
        } else {
            println!(
                "dry run: {} files, {} from {src}",
                report.planned,
                human_bytes(report.planned_bytes)
            );
        }
        idle(report.idle.as_deref());
        return;
    }
    idle(report.idle.as_deref());
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("ferry: error: cannot encode the summary: {e}"),
        }
        return;
    }
    for f in &report.failures {
        eprintln!(
            "ferry: failed: {}: {}",
            f.key,
            f.error.as_deref().unwrap_or("unknown error")
        );
    }
    let unnamed = report.failed.saturating_sub(report.failures.len() as u64);
    if unnamed > 0 {
        eprintln!("ferry: failed: {unnamed} more files (the first ones are named above)");
    }
    let mut line = format!(
        "{}: {} objects, {} in {:.2}s ({}/s)",
        if report.failed == 0 {
            "copied"
        } else {
            "incomplete"
        },
        report.objects,
        human_bytes(report.bytes),
        report.duration_s,
        human_bytes(report.throughput_bytes_per_s as u64),
    );
    if report.skipped > 0 {
        line.push_str(&format!(", {} already done", report.skipped));
    }
    if report.resumed > 0 {
        line.push_str(&format!(", {} resumed", report.resumed));
    }
    if report.failed > 0 {
        line.push_str(&format!(
            ", {} failed (run the same command again to retry them)",
            report.failed
        ));
    }
    if let Some(c) = &report.checksum {
        line.push_str(&format!(", checksum {c}"));
    }
    match report.verified {
        Some(true) => line.push_str(", verified"),
        Some(false) => line.push_str(", VERIFICATION FAILED"),
        None => {}
    }
    println!("{line}");
}

pub fn verify_report(report: &VerifyReport, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("ferry: error: cannot encode the summary: {e}"),
        }
        return;
    }
    for d in &report.differences {
        println!("{d}");
    }
    println!(
        "{}: compared {} objects ({}), {} differences",
        if report.differences.is_empty() {
            "identical"
        } else {
            "different"
        },
        report.compared,
        human_bytes(report.bytes),
        report.differences.len()
    );
}

/// A row verification: the ranges and keys that differ, then one summary line.
pub fn row_verify_report(report: &RowVerifyReport, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("ferry: error: cannot encode the summary: {e}"),
        }
        return;
    }
    for line in row_verify_lines(report) {
        println!("{line}");
    }
}

fn row_verify_lines(report: &RowVerifyReport) -> Vec<String> {
    let mut lines = Vec::new();
    for c in &report.columns_only_at_source {
        lines.push(format!("column {c}: missing at destination"));
    }
    for c in &report.columns_only_at_destination {
        lines.push(format!("column {c}: only at destination"));
    }
    let first = report.key.first().map_or("key", String::as_str);
    for r in &report.differing_ranges {
        let range = match (r.from, r.to) {
            (Some(from), Some(to)) => format!("{first} {from}..{}", to - 1),
            _ => format!("{first} NULL"),
        };
        lines.push(format!(
            "range {range}: {} rows at source, {} at destination",
            r.source_rows, r.destination_rows
        ));
    }
    for k in &report.keys {
        lines.push(format!("key {}: {}", k.key, k.difference));
    }
    if let Some(note) = &report.unlisted {
        lines.push(format!("({note})"));
    }
    let (s, d) = (&report.source, &report.destination);
    let identical = report.status == ferry_engine::Status::Succeeded;
    let mut summary = format!(
        "{}: {} rows at source, {} at destination",
        if identical { "identical" } else { "different" },
        s.rows,
        d.rows
    );
    if report.key.is_empty() {
        summary.push_str(", no key (one digest)");
    } else if report.range_width.is_some() {
        summary.push_str(&format!(
            ", {} of {} key ranges differ (by {})",
            report.differing_ranges.len(),
            report.ranges,
            report.key.join(", ")
        ));
    } else {
        summary.push_str(&format!(", key {}", report.key.join(", ")));
    }
    if !report.keys.is_empty() {
        summary.push_str(&format!(", {} keys named", report.keys.len()));
    }
    summary.push_str(&format!(
        ", digest {}, {:.2}s",
        &s.digest[..16.min(s.digest.len())],
        report.duration_s
    ));
    lines.push(summary);
    lines
}

pub fn record_report(
    report: &RecordReport,
    dry_run: bool,
    json: bool,
    verification: Option<&RowVerifyReport>,
) {
    idle(report.idle.as_deref());
    if json {
        let mut value = serde_json::to_value(report).unwrap_or_default();
        if let (Some(v), Some(map)) = (verification, value.as_object_mut()) {
            map.insert(
                "verification".into(),
                serde_json::to_value(v).unwrap_or_default(),
            );
        }
        match serde_json::to_string(&value) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("ferry: error: cannot encode the summary: {e}"),
        }
        return;
    }
    let (src, dst) = (&report.source, &report.destination);
    if dry_run {
        for o in &report.outputs {
            let to = if o.key.is_empty() {
                dst.address.clone()
            } else {
                format!("{}/{}", dst.address.trim_end_matches('/'), o.key)
            };
            println!("would write {to} from {}", o.inputs.join(", "));
        }
        println!(
            "dry run: {} files ({}) -> {} outputs ({}), {} transformations",
            src.files,
            src.format,
            report.outputs.len(),
            dst.format,
            report.transformations.len()
        );
        return;
    }
    for o in report.outputs.iter().filter(|o| o.error.is_some()) {
        eprintln!(
            "ferry: failed: {}: {}",
            if o.key.is_empty() {
                &dst.address
            } else {
                &o.key
            },
            o.error.as_deref().unwrap_or("unknown error")
        );
    }
    // A table's size is what the catalog estimates, and unknown for a query or a load.
    let shape = |format: &str, bytes: u64| match (format, bytes) {
        ("table", 0) => "table".to_string(),
        ("table", n) => format!("table, ~{}", human_bytes(n)),
        (f, n) => format!("{f}, {}", human_bytes(n)),
    };
    let unit = if dst.format == "table" {
        "table"
    } else {
        "file"
    };
    let mut line = format!(
        "{}: {} rows ({}) -> {} rows ({}) in {} {unit}{}, {:.2}s ({:.0} rows/s)",
        if report.failed == 0 {
            "converted"
        } else {
            "incomplete"
        },
        src.rows,
        match src.events {
            Some(events) => format!(
                "{}, {events} events, {}",
                src.format,
                human_bytes(src.bytes)
            ),
            None => shape(&src.format, src.bytes),
        },
        dst.rows,
        shape(&dst.format, dst.bytes),
        report.objects,
        if report.objects == 1 { "" } else { "s" },
        report.duration_s,
        report.rows_per_s,
    );
    if report.skipped > 0 {
        line.push_str(&format!(", {} already done", report.skipped));
        // One reason says why; many would drown the line (they are in --json).
        let mut reasons = report.outputs.iter().filter(|o| o.skipped);
        if let (Some(reason), None) = (
            reasons.next().and_then(|o| o.reason.as_ref()),
            reasons.next(),
        ) {
            line.push_str(&format!(": {reason}"));
        }
    }
    if report.failed > 0 {
        line.push_str(&format!(
            ", {} failed (run the same command again to retry them)",
            report.failed
        ));
    }
    for o in report.outputs.iter().filter(|o| !o.skipped) {
        if let Some(reason) = &o.reason {
            eprintln!("ferry: {reason}");
        }
    }
    println!("{line}");
    if let Some(v) = verification {
        for line in row_verify_lines(v) {
            println!("verify: {line}");
        }
    }
}
