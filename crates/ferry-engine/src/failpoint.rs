//! A test hook for crash tests: `FERRY_FAILPOINT=pause-after-parts:N` (or `…-files:N`)
//! makes the process announce on stderr that it reached the point, then hang, so a test
//! can SIGKILL it at a known place instead of guessing with timers. `wait-after-batches:N`
//! announces, then waits for a line on stdin, so a test can break something (a database
//! connection) and let the run go on. `pause-once-after-files:N` hangs only the Nth file,
//! once, so a run that is stopped and started again in the same process finishes. Unset,
//! each costs a relaxed atomic increment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static PARTS: AtomicU64 = AtomicU64::new(0);
static FILES: AtomicU64 = AtomicU64::new(0);
static BATCHES: AtomicU64 = AtomicU64::new(0);

pub const REACHED: &str = "ferry: failpoint reached";

fn setting() -> &'static Option<(String, u64)> {
    static SETTING: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SETTING.get_or_init(|| {
        let value = std::env::var("FERRY_FAILPOINT").ok()?;
        let (name, n) = value.split_once(':')?;
        Some((name.to_string(), n.parse().ok()?))
    })
}

fn reached(name: &str, counter: &AtomicU64) -> bool {
    counts(name, counter, |count, n| count >= n)
}

/// Counts one more pass and says (announcing it) when the failpoint `name` is set and
/// `hits(count, N)` holds.
fn counts(name: &str, counter: &AtomicU64, hits: impl Fn(u64, u64) -> bool) -> bool {
    let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
    match setting() {
        Some((wanted, n)) if wanted == name && hits(count, *n) => {
            eprintln!("{REACHED}: {name}:{n}");
            true
        }
        _ => false,
    }
}

async fn hit(name: &str, counter: &AtomicU64) {
    if reached(name, counter) {
        futures::future::pending::<()>().await;
    }
}

/// Called on the record path after a batch went to the output's writer (blocking thread).
pub fn batch_written() {
    if reached("pause-after-batches", &BATCHES) {
        loop {
            std::thread::park();
        }
    }
    if reached("wait-after-batches", &WAITS) {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
}

static WAITS: AtomicU64 = AtomicU64::new(0);

static OBJECTS: AtomicU64 = AtomicU64::new(0);

/// Called on a Kafka export after an object is recorded (blocking thread): at
/// `wait-after-objects:N` it announces, then waits for a line on stdin, so a test can
/// restart the broker and let the export go on.
pub fn object_exported() {
    if counts("wait-after-objects", &OBJECTS, |count, n| count == n) {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
}

/// Called after a part is durably recorded in the checkpoint.
pub async fn part_recorded() {
    hit("pause-after-parts", &PARTS).await;
}

/// Called after a whole file is durably recorded in the checkpoint.
pub async fn file_recorded() {
    hit("pause-after-files", &FILES).await;
    // Only the Nth file's task pauses, once per process: the run cannot finish until it is
    // stopped (suspended, interrupted), and when it starts again nothing pauses.
    if counts("pause-once-after-files", &ONCE_FILES, |count, n| count == n) {
        futures::future::pending::<()>().await;
    }
}

static ONCE_FILES: AtomicU64 = AtomicU64::new(0);

static COMPLETIONS: AtomicU64 = AtomicU64::new(0);

/// Called when an upload in parts was completed at the destination, before the checkpoint
/// records the file as done.
pub async fn upload_completed() {
    hit("pause-after-complete", &COMPLETIONS).await;
}

static COMMITS: AtomicU64 = AtomicU64::new(0);

/// Called when a table load has staged every row and is about to commit it.
pub async fn before_commit() {
    hit("pause-before-commit", &COMMITS).await;
}

static EVENTS: AtomicU64 = AtomicU64::new(0);

/// Called on a Kafka import after each event is handed to the producer (blocking thread).
/// At `pause-after-events:N` it runs `flush` first, so the events before the point have
/// reached the broker but the checkpoint does not know it, then announces and hangs.
pub fn event_sent(flush: impl FnOnce()) {
    let count = EVENTS.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some((name, n)) = setting() {
        if name == "pause-after-events" && count == *n {
            flush();
            eprintln!("{REACHED}: {name}:{n}");
            loop {
                std::thread::park();
            }
        }
    }
}

static DECISIONS: AtomicU64 = AtomicU64::new(0);

/// Called when a pipeline pass has stored the attempts it starts, before their events,
/// transfers and runs are written.
pub async fn attempts_decided() {
    hit("pause-after-attempts-decided", &DECISIONS).await;
}
