//! Copies through the engine against every backend: local disk, S3 (moto), Azurite, and
//! the GCS emulator as a source.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ferry_connectors::testkit::{bytes, gcs_emulator_put, Remote, TRICKY_KEYS};
use ferry_core::DataAddress;
use ferry_engine::{copy, verify, Action, CopyOptions, FileReport, NoProgress, Progress, Status};
use tokio::sync::Notify;

const MIB: usize = 1024 * 1024;

/// A tree with an empty file, tiny files with tricky names, and a file of several parts.
/// Keeps every file a copy reports, in the order they settle.
#[derive(Default)]
struct Reported(std::sync::Mutex<Vec<FileReport>>);

impl Reported {
    fn actions(&self) -> Vec<Action> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.action.clone())
            .collect()
    }
}

impl Progress for Reported {
    fn file_reported(&self, file: &FileReport) {
        self.0.lock().unwrap().push(file.clone());
    }
}

fn make_tree(dir: &Path, big_len: usize) {
    let write = |key: &str, data: &[u8]| {
        let p = dir.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    write("empty", b"");
    for (i, key) in TRICKY_KEYS.iter().enumerate() {
        write(key, &bytes(10 + i * 100, i as u64));
    }
    write("big/parts.bin", &bytes(big_len, 99));
}

fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(root).unwrap().to_path_buf());
                }
            }
        }
        out.sort();
        out
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "file lists differ");
    for rel in la {
        assert_eq!(
            std::fs::read(a.join(&rel)).unwrap(),
            std::fs::read(b.join(&rel)).unwrap(),
            "{} differs",
            rel.display()
        );
    }
}

fn options(state: &Path) -> CopyOptions {
    CopyOptions {
        part_size: 5 * MIB as u64,
        concurrency: 2,
        state_dir: state.to_path_buf(),
        ..CopyOptions::default()
    }
}

fn addr(s: &str) -> DataAddress {
    DataAddress::parse(s).unwrap()
}

async fn round_trip(remote: &str) {
    let work = tempfile::tempdir().unwrap();
    let (src, back, state) = (
        work.path().join("src"),
        work.path().join("back"),
        work.path().join("state"),
    );
    make_tree(&src, 12 * MIB + 123);
    let opts = options(&state);

    let up = copy(
        &addr(&format!("{}/", src.display())),
        &addr(remote),
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(up.status, Status::Succeeded, "{:?}", up.error);
    assert_eq!(up.objects, 6);
    assert_eq!(up.bytes, tree_size(&src));

    let down = copy(
        &addr(remote),
        &addr(&format!("{}/", back.display())),
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(down.status, Status::Succeeded, "{:?}", down.error);
    assert_same_tree(&src, &back);
    // Both directions computed the same checksum over the same tree.
    assert_eq!(up.checksum, down.checksum);
    assert!(up.checksum.as_deref().unwrap().starts_with("crc32c:"));

    let report = verify(&addr(&format!("{}/", src.display())), &addr(remote), &opts)
        .await
        .unwrap();
    assert_eq!(report.differences, vec![], "verify after copy");
    assert_eq!(report.compared, 6);

    // Running the same copy again finds everything done.
    let again = copy(
        &addr(&format!("{}/", src.display())),
        &addr(remote),
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!((again.skipped, again.objects, again.bytes), (6, 0, 0));
}

fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        total += if p.is_dir() {
            tree_size(&p)
        } else {
            p.metadata().unwrap().len()
        };
    }
    total
}

#[tokio::test]
async fn local_round_trip() {
    let dst = tempfile::tempdir().unwrap();
    round_trip(&format!("{}/", dst.path().display())).await;
}

#[tokio::test]
async fn s3_round_trip() {
    if let Some(base) = Remote::S3.unique("round-trip") {
        round_trip(&base).await;
    }
}

#[tokio::test]
async fn azure_round_trip() {
    if let Some(base) = Remote::Azure.unique("round-trip") {
        round_trip(&base).await;
    }
}

#[tokio::test]
async fn gcs_round_trip() {
    if let Some(base) = Remote::Gcs.unique("round-trip-up") {
        round_trip(&base).await;
    }
}

/// Every file under `dir`, as a key relative to it and its content.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((key, std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// GCS as a source: a tree put into the emulator (through its JSON API, since it refuses
/// the XML uploads object_store makes) copies down whole, with ranged parallel reads of
/// the large file, verifies against the original, and a second copy finds it all done.
#[tokio::test]
async fn gcs_source_round_trip() {
    let Some(base) = Remote::Gcs.unique("round-trip") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (src, back, state) = (
        work.path().join("src"),
        work.path().join("back"),
        work.path().join("state"),
    );
    make_tree(&src, 12 * MIB + 123);
    let remote = addr(&base);
    for (key, data) in files(&src) {
        gcs_emulator_put(&remote, &key, data.into()).await;
    }
    let opts = options(&state);
    let back_addr = addr(&format!("{}/", back.display()));

    let down = copy(&remote, &back_addr, &opts, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(down.status, Status::Succeeded, "{:?}", down.error);
    assert_eq!((down.objects, down.bytes), (6, tree_size(&src)));
    assert_same_tree(&src, &back);

    let report = verify(&addr(&format!("{}/", src.display())), &remote, &opts)
        .await
        .unwrap();
    assert_eq!(report.differences, vec![], "verify against the original");
    assert_eq!(report.compared, 6);

    let again = copy(&remote, &back_addr, &opts, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!((again.skipped, again.objects, again.bytes), (6, 0, 0));
}

/// Signals once `threshold` bytes have been recorded as moved.
struct InterruptAfter {
    threshold: u64,
    seen: AtomicU64,
    fired: AtomicBool,
    notify: Notify,
}

impl Progress for InterruptAfter {
    fn advanced(&self, bytes: u64) {
        let seen = self.seen.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if seen >= self.threshold && !self.fired.swap(true, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// A copy dropped after its first part (as when the process dies) continues from its
/// completed parts on the next run, and the result is complete and identical.
async fn resume_after_interruption(dst: &str) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big.bin");
    let data = bytes(4 * 5 * MIB + 4321, 5);
    std::fs::write(&src, &data).unwrap();
    let opts = CopyOptions {
        concurrency: 1,
        ..options(&work.path().join("state"))
    };
    let (src_addr, dst_addr) = (addr(&src.display().to_string()), addr(dst));

    let watcher = Arc::new(InterruptAfter {
        threshold: 1,
        seen: AtomicU64::new(0),
        fired: AtomicBool::new(false),
        notify: Notify::new(),
    });
    let first = copy(&src_addr, &dst_addr, &opts, watcher.clone());
    tokio::select! {
        result = first => panic!("the copy finished before it was interrupted: {result:?}"),
        _ = watcher.notify.notified() => {}
    }
    // Nothing is visible at the destination while the upload is unfinished.
    let source_of_dst = ferry_connectors::open_source(&dst_addr).unwrap();
    assert!(
        source_of_dst.list().await.is_err(),
        "a partial object is visible at {dst}"
    );

    let reported = Arc::new(Reported::default());
    let second = copy(&src_addr, &dst_addr, &opts, reported.clone())
        .await
        .unwrap();
    assert_eq!(second.status, Status::Succeeded, "{:?}", second.error);
    assert_eq!(reported.actions(), [Action::Resumed]);
    assert_eq!(second.resumed, 1);
    assert!(
        second.bytes < data.len() as u64 && second.bytes > 0,
        "resumed run moved {} of {} bytes",
        second.bytes,
        data.len()
    );
    let listing = source_of_dst.list().await.unwrap();
    let entry = &listing.entries[0];
    assert_eq!(entry.size, data.len() as u64);
    let back = source_of_dst.read(entry, 0..entry.size).await.unwrap();
    assert!(back[..] == data[..], "content differs after resume");
    // The checksum covers the parts of both runs.
    assert_eq!(
        second.checksum.as_deref(),
        Some(
            ferry_core::ChecksumAlgo::Crc32c
                .digest(&data)
                .to_string()
                .as_str()
        )
    );
}

#[tokio::test]
async fn local_resume_after_interruption() {
    let dst = tempfile::tempdir().unwrap();
    let target = dst.path().join("out/big.bin");
    resume_after_interruption(&target.display().to_string()).await;
    // The hidden partial file was renamed into place: nothing else is left.
    let names: Vec<_> = std::fs::read_dir(dst.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("big.bin")]);
}

#[tokio::test]
async fn s3_resume_after_interruption() {
    if let Some(base) = Remote::S3.unique("resume") {
        resume_after_interruption(&format!("{base}big.bin")).await;
    }
}

#[tokio::test]
async fn azure_resume_after_interruption() {
    if let Some(base) = Remote::Azure.unique("resume") {
        resume_after_interruption(&format!("{base}big.bin")).await;
    }
}

/// Appends to the source file as soon as the first part has been sent.
struct ChangeSource {
    path: std::path::PathBuf,
    done: AtomicBool,
}

impl Progress for ChangeSource {
    fn advanced(&self, _bytes: u64) {
        if !self.done.swap(true, Ordering::SeqCst) {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .unwrap();
            f.write_all(b"late bytes").unwrap();
        }
    }
}

async fn source_changing_during_copy(dst: &str) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("growing.bin");
    std::fs::write(&src, bytes(3 * 5 * MIB, 8)).unwrap();
    let opts = CopyOptions {
        concurrency: 1,
        ..options(&work.path().join("state"))
    };
    let dst_addr = addr(dst);
    let watcher = Arc::new(ChangeSource {
        path: src.clone(),
        done: AtomicBool::new(false),
    });
    let report = copy(&addr(&src.display().to_string()), &dst_addr, &opts, watcher)
        .await
        .unwrap();
    assert_eq!(report.status, Status::Failed);
    let error = report.error.unwrap();
    assert!(
        error.contains("source changed") && error.contains("growing.bin"),
        "{error}"
    );
    assert!(
        ferry_connectors::open_source(&dst_addr)
            .unwrap()
            .list()
            .await
            .is_err(),
        "nothing may appear at the destination"
    );
    // Running it again copies the new version.
    let again = copy(
        &addr(&src.display().to_string()),
        &dst_addr,
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(again.status, Status::Succeeded, "{:?}", again.error);
    assert_eq!(again.bytes, 3 * 5 * MIB as u64 + 10);
}

#[tokio::test]
async fn local_source_changing_during_copy_is_reported() {
    let dst = tempfile::tempdir().unwrap();
    source_changing_during_copy(&dst.path().join("copy.bin").display().to_string()).await;
}

#[tokio::test]
async fn s3_source_changing_during_copy_is_reported() {
    if let Some(base) = Remote::S3.unique("changing") {
        source_changing_during_copy(&format!("{base}copy.bin")).await;
    }
}

#[tokio::test]
async fn a_changed_source_file_is_copied_again_and_replaces_the_old_one() {
    let work = tempfile::tempdir().unwrap();
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"version one").unwrap();
    std::fs::write(src.join("b.txt"), b"unchanged").unwrap();
    let opts = options(&work.path().join("state"));
    let (s, d) = (
        addr(&format!("{}/", src.display())),
        addr(&format!("{}/", dst.display())),
    );
    copy(&s, &d, &opts, Arc::new(NoProgress)).await.unwrap();
    std::fs::write(src.join("a.txt"), b"version two, longer").unwrap();
    let report = copy(&s, &d, &opts, Arc::new(NoProgress)).await.unwrap();
    assert_eq!((report.objects, report.skipped), (1, 1));
    assert_eq!(
        std::fs::read(dst.join("a.txt")).unwrap(),
        b"version two, longer"
    );
    // A file deleted at the destination is not trusted to the checkpoint: it is copied again.
    std::fs::remove_file(dst.join("b.txt")).unwrap();
    let report = copy(&s, &d, &opts, Arc::new(NoProgress)).await.unwrap();
    assert_eq!((report.objects, report.skipped), (1, 1));
    assert_eq!(std::fs::read(dst.join("b.txt")).unwrap(), b"unchanged");
}

#[tokio::test]
async fn include_exclude_and_dry_run() {
    let work = tempfile::tempdir().unwrap();
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    make_tree(&src, 1000);
    let s = addr(&format!("{}/", src.display()));
    let d = addr(&format!("{}/", dst.display()));
    let opts = CopyOptions {
        include: vec!["*.txt".into(), "big/**".into()],
        exclude: vec!["plain.txt".into()],
        dry_run: true,
        ..options(&work.path().join("state"))
    };
    let reported = Arc::new(Reported::default());
    let plan = copy(&s, &d, &opts, reported.clone()).await.unwrap();
    let files = reported.0.lock().unwrap().clone();
    let keys: Vec<_> = files.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, vec!["big/parts.bin", "naïve ü/日本語.txt"]);
    assert_eq!(plan.planned, 2);
    assert!(files.iter().all(|f| f.action == Action::WouldCopy));
    assert!(!dst.exists(), "a dry run wrote to the destination");
    assert!(
        !work.path().join("state").exists(),
        "a dry run wrote a checkpoint"
    );

    let report = copy(
        &s,
        &d,
        &CopyOptions {
            dry_run: false,
            ..opts
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(report.objects, 2);
    assert!(dst.join("naïve ü/日本語.txt").exists() && !dst.join("plain.txt").exists());
}

#[tokio::test]
async fn one_file_goes_into_an_existing_directory_or_to_the_named_path() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("report.csv");
    std::fs::write(&src, b"a,b\n1,2\n").unwrap();
    let into = work.path().join("into");
    std::fs::create_dir(&into).unwrap();
    let opts = options(&work.path().join("state"));
    let s = addr(&src.display().to_string());
    copy(
        &s,
        &addr(&into.display().to_string()),
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(into.join("report.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    let named = work.path().join("renamed.csv");
    copy(
        &s,
        &addr(&named.display().to_string()),
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&named).unwrap(), b"a,b\n1,2\n");
}

#[tokio::test]
async fn sha256_and_xxh3_give_whole_file_digests_across_parts() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f.bin");
    let data = bytes(3 * 64 * 1024 + 5, 3);
    std::fs::write(&src, &data).unwrap();
    for algo in [
        ferry_core::ChecksumAlgo::Sha256,
        ferry_core::ChecksumAlgo::Xxh3,
    ] {
        let opts = CopyOptions {
            part_size: 64 * 1024,
            checksum: algo,
            verify: true,
            ..options(&work.path().join("state"))
        };
        let dst = work.path().join(format!("out-{algo}.bin"));
        let report = copy(
            &addr(&src.display().to_string()),
            &addr(&dst.display().to_string()),
            &opts,
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
        assert_eq!(report.checksum, Some(algo.digest(&data).to_string()));
        assert_eq!(report.verified, Some(true));
    }
}

#[tokio::test]
async fn verify_lists_every_difference() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    for (dir, files) in [
        (
            &a,
            [
                ("same", "x"),
                ("size", "1"),
                ("content", "AAAA"),
                ("only-a", "1"),
            ],
        ),
        (
            &b,
            [
                ("same", "x"),
                ("size", "22"),
                ("content", "BBBB"),
                ("only-b", "1"),
            ],
        ),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        for (name, body) in files {
            std::fs::write(dir.join(name), body).unwrap();
        }
    }
    let report = verify(
        &addr(&format!("{}/", a.display())),
        &addr(&format!("{}/", b.display())),
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    let shown: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown.len(), 4, "{shown:?}");
    assert!(shown
        .iter()
        .any(|d| d.starts_with("checksum differs: content")));
    assert!(shown.iter().any(|d| d == "missing at destination: only-a"));
    assert!(shown.iter().any(|d| d == "only at destination: only-b"));
    assert!(shown
        .iter()
        .any(|d| d == "size differs: size (source 1, destination 2)"));
    assert_eq!(report.status, Status::Failed);
}

#[tokio::test]
async fn s3_to_s3_in_one_bucket_copies_server_side() {
    let Some(base) = Remote::S3.unique("server-side") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (src, back) = (work.path().join("src"), work.path().join("back"));
    make_tree(&src, 6 * MIB);
    let opts = options(&work.path().join("state"));
    let (a, b) = (format!("{base}a/"), format!("{base}b/"));
    copy(
        &addr(&format!("{}/", src.display())),
        &addr(&a),
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    let reported = Arc::new(Reported::default());
    let report = copy(&addr(&a), &addr(&b), &opts, reported.clone())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Succeeded, "{:?}", report.error);
    let actions = reported.actions();
    assert!(
        !actions.is_empty() && actions.iter().all(|a| *a == Action::ServerSideCopied),
        "{actions:?}"
    );
    copy(
        &addr(&b),
        &addr(&format!("{}/", back.display())),
        &opts,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_same_tree(&src, &back);
}

/// A plain web server (Python's http.server, which ignores Range headers) as a source.
#[tokio::test]
async fn http_source_single_file() {
    use std::io::BufRead;
    let work = tempfile::tempdir().unwrap();
    let served = work.path().join("www");
    std::fs::create_dir(&served).unwrap();
    let data = bytes(300_000, 4);
    std::fs::write(served.join("data file.bin"), &data).unwrap();
    let mut server = std::process::Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&served)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    // It announces "Serving HTTP on 127.0.0.1 port N (...)" once it listens.
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .split(" port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected announcement: {line}"));
    let dst = work.path().join("got.bin");
    let report = copy(
        &addr(&format!("http://127.0.0.1:{port}/data%20file.bin")),
        &addr(&dst.display().to_string()),
        &CopyOptions {
            part_size: 1024 * 1024,
            ..options(&work.path().join("state"))
        },
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    server.kill().unwrap();
    let _ = server.wait();
    assert_eq!(report.status, Status::Succeeded, "{:?}", report.error);
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

/// Watches a copy's progress: what is done must never exceed what is planned so far.
#[derive(Default)]
struct Bounded {
    planned_files: AtomicU64,
    planned: AtomicU64,
    done: AtomicU64,
    overrun: AtomicBool,
}

impl Progress for Bounded {
    fn planned(&self, files: u64, bytes: u64) {
        self.planned_files.store(files, Ordering::SeqCst);
        self.planned.store(bytes, Ordering::SeqCst);
    }

    fn advanced(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if done > self.planned.load(Ordering::SeqCst) {
            self.overrun.store(true, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn a_tree_listed_as_it_is_copied_never_shows_more_done_than_planned() {
    let work = tempfile::tempdir().unwrap();
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    // More files than one batch of the listing, in several directories.
    for i in 0..700 {
        let dir = src.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:03}")), bytes(1000 + i, i as u64)).unwrap();
    }
    let total: u64 = (0..700u64).map(|i| 1000 + i).sum();
    let opts = CopyOptions {
        transfers: 3,
        ..options(&work.path().join("state"))
    };
    let seen = Arc::new(Bounded::default());
    let report = copy(
        &addr(&format!("{}/", src.display())),
        &addr(&format!("{}/", dst.display())),
        &opts,
        seen.clone(),
    )
    .await
    .unwrap();
    assert_eq!(report.status, Status::Succeeded, "{:?}", report.error);
    assert_eq!((report.objects, report.bytes), (700, total));
    assert!(
        !seen.overrun.load(Ordering::SeqCst),
        "progress passed the plan"
    );
    assert_eq!(seen.planned_files.load(Ordering::SeqCst), 700);
    assert_eq!(seen.planned.load(Ordering::SeqCst), total);
    assert_eq!(seen.done.load(Ordering::SeqCst), total);
    assert_same_tree(&src, &dst);
}
