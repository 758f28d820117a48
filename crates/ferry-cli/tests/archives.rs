//! `ferry copy --extract` and `--archive` as a user runs them: tar, tar.gz, tar.zst and zip
//! between local disks and S3, a real SIGKILL in the middle of an extraction, and archives
//! that try to write outside the destination.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{copy_in, copy_in_ok, ferry, files_in, start_and_kill};
use ferry_connectors::testkit::{bytes, Remote};

/// Members of the test archives: name and content, a few MiB in all, one of them larger
/// than a part so that it is uploaded in parts.
fn members() -> Vec<(String, Vec<u8>)> {
    vec![
        ("a.txt".into(), b"first member\n".to_vec()),
        ("dir/b.bin".into(), bytes(200 << 10, 1)),
        ("dir/empty".into(), Vec::new()),
        ("dir/sub/big.bin".into(), bytes(6 << 20, 2)),
        ("z.bin".into(), bytes(100 << 10, 3)),
    ]
}

fn tar_bytes(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    tar.append_data(&mut dir, "dir/", std::io::empty()).unwrap();
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap()
}

/// A tar member whose name is written as is, bypassing the checks of the tar crate.
fn raw_member(name: &[u8], kind: tar::EntryType, data: &[u8], link: Option<&str>) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    if let Some(link) = link {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn compress(kind: &str, tar: Vec<u8>) -> Vec<u8> {
    match kind {
        "tar" => tar,
        "tar.gz" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        }
        "tar.zst" => zstd::encode_all(tar.as_slice(), 3).unwrap(),
        other => panic!("{other}"),
    }
}

fn zip_bytes(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, (name, data)) in members.iter().enumerate() {
        // Every other member stored, the rest deflated.
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Asserts that `dir` holds exactly `members`, byte for byte.
fn assert_tree(dir: &Path, members: &[(String, Vec<u8>)]) {
    let found: Vec<PathBuf> = files_in(dir);
    let mut expected: Vec<PathBuf> = members.iter().map(|(n, _)| dir.join(n)).collect();
    expected.sort();
    assert_eq!(found, expected, "files under {}", dir.display());
    for (name, data) in members {
        let got = std::fs::read(dir.join(name)).unwrap();
        assert!(
            got == *data,
            "{name} differs ({} vs {} bytes)",
            got.len(),
            data.len()
        );
    }
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn assert_one_line_error(code: i32, stderr: &str, needles: &[&str]) {
    assert_ne!(code, 0, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "'{needle}' not in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn tar_family_extracts_into_a_local_tree() {
    let work = tempfile::tempdir().unwrap();
    let members = members();
    for kind in ["tar", "tar.gz", "tar.zst"] {
        let archive = work.path().join(format!("drop.{kind}"));
        std::fs::write(&archive, compress(kind, tar_bytes(&members))).unwrap();
        let out = work.path().join(format!("out-{kind}"));
        let report = json(&copy_in_ok(
            work.path(),
            &[
                archive.to_str().unwrap(),
                &format!("{}/", out.display()),
                "--extract",
                "--json",
            ],
        ));
        assert_eq!(report["status"], "succeeded", "{report}");
        assert_eq!(report["objects"], members.len() as u64, "{report}");
        assert_tree(&out, &members);
    }
}

#[test]
fn tar_zst_extracts_to_s3_and_reads_back() {
    let Some(base) = Remote::S3.unique("extract") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let members = members();
    let archive = work.path().join("drop.tar.zst");
    std::fs::write(&archive, compress("tar.zst", tar_bytes(&members))).unwrap();
    copy_in_ok(
        work.path(),
        &[archive.to_str().unwrap(), &base, "--extract"],
    );
    let back = work.path().join("back");
    copy_in_ok(work.path(), &[&base, &format!("{}/", back.display())]);
    assert_tree(&back, &members);
}

/// Extracts to `destination`, SIGKILLs ferry while the large member is half uploaded,
/// and checks the rerun skips the members already there and rewrites the rest.
fn killed_extraction_resumes(work: &Path, destination: &str) -> serde_json::Value {
    let members = members();
    let archive = work.join("drop.tar.gz");
    std::fs::write(&archive, compress("tar.gz", tar_bytes(&members))).unwrap();
    let args = [
        "copy",
        archive.to_str().unwrap(),
        destination,
        "--extract",
        "--part-size",
        "1MiB",
    ];
    // The first member uploaded in parts is dir/sub/big.bin, the fourth.
    start_and_kill(
        ferry(&work.join("state"), work).args(args),
        "pause-after-parts:1",
    );
    let (code, out, err) = copy_in(work, &[&args[1..], &["--json"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let report = json(&out);
    assert_eq!(report["status"], "succeeded", "{report}");
    // a.txt, dir/b.bin and dir/empty were finished before the kill.
    assert_eq!(report["skipped"], 3, "{report}");
    assert_eq!(report["objects"], 2, "{report}");
    report
}

#[test]
fn killed_local_extraction_resumes_by_member() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let members = members();
    let archive = work.path().join("drop.tar.gz");
    std::fs::write(&archive, compress("tar.gz", tar_bytes(&members))).unwrap();
    let dest = format!("{}/", out.display());
    let args = [
        "copy",
        archive.to_str().unwrap(),
        dest.as_str(),
        "--extract",
        "--part-size",
        "1MiB",
    ];
    start_and_kill(
        ferry(&work.path().join("state"), work.path()).args(args),
        "pause-after-parts:1",
    );
    // Killed inside the large member: the three before it are there, it is not.
    let before: Vec<(String, u64, i64)> = ["a.txt", "dir/b.bin", "dir/empty"]
        .iter()
        .map(|n| {
            let m = std::fs::metadata(out.join(n)).unwrap();
            (n.to_string(), m.ino(), m.mtime_nsec())
        })
        .collect();
    assert!(!out.join("dir/sub/big.bin").exists());
    assert!(!out.join("z.bin").exists());

    killed_extraction_resumes_after_kill(work.path(), &args);
    assert_tree(&out, &members);
    for (name, ino, mtime) in before {
        let m = std::fs::metadata(out.join(&name)).unwrap();
        assert_eq!(
            (m.ino(), m.mtime_nsec()),
            (ino, mtime),
            "{name} was rewritten"
        );
    }
}

fn killed_extraction_resumes_after_kill(work: &Path, args: &[&str]) {
    let (code, out, err) = copy_in(work, &[&args[1..], &["--json"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let report = json(&out);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["skipped"], 3, "{report}");
    assert_eq!(report["objects"], 2, "{report}");
}

#[test]
fn killed_s3_extraction_resumes_by_member() {
    let Some(base) = Remote::S3.unique("killed-extract") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    killed_extraction_resumes(work.path(), &base);
    let back = work.path().join("back");
    copy_in_ok(work.path(), &[&base, &format!("{}/", back.display())]);
    assert_tree(&back, &members());
}

#[test]
fn members_that_leave_the_destination_are_refused() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            raw_member(b"../evil.txt", tar::EntryType::Regular, b"evil", None),
            "../evil.txt",
        ),
        (
            "absolute",
            raw_member(
                b"/tmp/ferry-evil.txt",
                tar::EntryType::Regular,
                b"evil",
                None,
            ),
            "/tmp/ferry-evil.txt",
        ),
        (
            "symlink",
            raw_member(b"link", tar::EntryType::Symlink, b"", Some("/etc")),
            "link",
        ),
        (
            "hardlink",
            raw_member(b"hard", tar::EntryType::Link, b"", Some("/etc/passwd")),
            "hard",
        ),
    ];
    for (label, evil, shown) in cases {
        let work = tempfile::tempdir().unwrap();
        let mut tar = raw_member(b"ok.txt", tar::EntryType::Regular, b"fine", None);
        tar.extend(evil);
        tar.extend([0u8; 1024]);
        let archive = work.path().join("evil.tar");
        std::fs::write(&archive, &tar).unwrap();
        let out = work.path().join("out");
        let (code, _, err) = extract(work.path(), &archive, &out);
        assert_one_line_error(code, &err, &["evil.tar", &format!("'{shown}'"), "refused"]);
        assert!(!work.path().join("evil.txt").exists(), "{label}");
        assert!(!Path::new("/tmp/ferry-evil.txt").exists(), "{label}");
        // Only the harmless member before it was written.
        assert_eq!(files_in(&out), vec![out.join("ok.txt")], "{label}");
    }
}

#[test]
fn a_corrupt_archive_names_the_archive_and_the_member() {
    let work = tempfile::tempdir().unwrap();
    let members = members();
    let whole = compress("tar.zst", tar_bytes(&members));
    // Cut inside dir/sub/big.bin: compressed random bytes are about as long as the bytes.
    let archive = work.path().join("cut.tar.zst");
    std::fs::write(&archive, &whole[..whole.len() - (1 << 20)]).unwrap();
    let out = work.path().join("out");
    let (code, _, err) = extract(work.path(), &archive, &out);
    assert_one_line_error(code, &err, &["cut.tar.zst", "dir/sub/big.bin"]);
    // The members before it are whole; the damaged one is not there, not even in part.
    assert_tree(&out, &members[..3]);

    // Flipped bytes inside a deflate-coded member: the same, with the compressed offset.
    let lines: Vec<u8> = (0..200_000)
        .flat_map(|i| format!("line {i} of the log\n").into_bytes())
        .collect();
    let text = vec![
        ("a.txt".to_string(), b"first\n".to_vec()),
        ("log.txt".to_string(), lines),
    ];
    let mut gz = compress("tar.gz", tar_bytes(&text));
    let middle = gz.len() / 2;
    for b in &mut gz[middle..middle + 64] {
        *b ^= 0x5a;
    }
    let archive = work.path().join("flipped.tgz");
    std::fs::write(&archive, &gz).unwrap();
    let out = work.path().join("out-gz");
    let (code, _, err) = extract(work.path(), &archive, &out);
    assert_one_line_error(
        code,
        &err,
        &["flipped.tgz", "member 'log.txt'", "compressed byte"],
    );
    // The damage may show only at the stream's end check, after log.txt was written: then
    // it is not recorded as done, and a re-run writes it again.
    if out.join("log.txt").exists() {
        let (code, out_json, _) = copy_in(
            work.path(),
            &[
                archive.to_str().unwrap(),
                out.to_str().unwrap(),
                "--extract",
                "--json",
            ],
        );
        assert_ne!(code, 0);
        assert!(!out_json.contains("\"skipped\":2"), "{out_json}");
    }
}

#[test]
fn zip_extracts_from_local_and_from_s3() {
    let work = tempfile::tempdir().unwrap();
    let members = members();
    let archive = work.path().join("drop.zip");
    std::fs::write(&archive, zip_bytes(&members)).unwrap();
    let out = work.path().join("out");
    extract_ok(work.path(), &archive, &out);
    assert_tree(&out, &members);

    let Some(base) = Remote::S3.unique("zip") else {
        return;
    };
    let remote = format!("{base}drop.zip");
    copy_in_ok(work.path(), &[archive.to_str().unwrap(), &remote]);
    let from_s3 = work.path().join("from-s3");
    copy_in_ok(
        work.path(),
        &[&remote, from_s3.to_str().unwrap(), "--extract"],
    );
    assert_tree(&from_s3, &members);
}

#[test]
fn zip_members_that_leave_the_destination_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let evil = vec![
        ("ok.txt".to_string(), b"fine".to_vec()),
        ("../evil.txt".to_string(), b"evil".to_vec()),
    ];
    let archive = work.path().join("evil.zip");
    std::fs::write(&archive, zip_bytes(&evil)).unwrap();
    let out = work.path().join("out");
    let (code, _, err) = extract(work.path(), &archive, &out);
    assert_one_line_error(code, &err, &["evil.zip", "'../evil.txt'", "refused"]);
    assert!(!work.path().join("evil.txt").exists());
}

#[test]
fn a_tree_packs_into_one_tar_zst_on_s3_and_extracts_back() {
    let Some(base) = Remote::S3.unique("pack") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let members = members();
    let tree = work.path().join("tree");
    for (name, data) in &members {
        std::fs::create_dir_all(tree.join(name).parent().unwrap()).unwrap();
        std::fs::write(tree.join(name), data).unwrap();
    }
    let remote = format!("{base}drop.tar.zst");
    copy_in_ok(
        work.path(),
        &[
            &format!("{}/", tree.display()),
            &remote,
            "--archive",
            "tar.zst",
            "--part-size",
            "1MiB",
        ],
    );
    // Read back with the tar and zstd crates, not with ferry.
    let local = work.path().join("drop.tar.zst");
    copy_in_ok(work.path(), &[&remote, local.to_str().unwrap()]);
    let unpacked = work.path().join("unpacked");
    tar::Archive::new(zstd::Decoder::new(std::fs::File::open(&local).unwrap()).unwrap())
        .unpack(&unpacked)
        .unwrap();
    assert_tree(&unpacked, &members);
    // And with ferry, straight from S3.
    let out = work.path().join("out");
    copy_in_ok(work.path(), &[&remote, out.to_str().unwrap(), "--extract"]);
    assert_tree(&out, &members);
}

#[test]
fn a_tree_packs_into_a_zip() {
    let work = tempfile::tempdir().unwrap();
    let members = members();
    let tree = work.path().join("tree");
    for (name, data) in &members {
        std::fs::create_dir_all(tree.join(name).parent().unwrap()).unwrap();
        std::fs::write(tree.join(name), data).unwrap();
    }
    let archive = work.path().join("drop.zip");
    copy_in_ok(
        work.path(),
        &[
            &format!("{}/", tree.display()),
            archive.to_str().unwrap(),
            "--archive",
            "zip",
        ],
    );
    let unpacked = work.path().join("unpacked");
    zip::ZipArchive::new(std::fs::File::open(&archive).unwrap())
        .unwrap()
        .extract(&unpacked)
        .unwrap();
    assert_tree(&unpacked, &members);
}

#[test]
fn a_manifest_extracts_with_archive_extract() {
    let work = tempfile::tempdir().unwrap();
    let members = members();
    std::fs::write(
        work.path().join("drop.tar.zst"),
        compress("tar.zst", tar_bytes(&members)),
    )
    .unwrap();
    std::fs::write(
        work.path().join("drop.yaml"),
        "apiVersion: ferry.dev/v1\nkind: BatchTransfer\nmetadata: {name: drop}\nspec:\n  source: {type: file, path: drop.tar.zst, archive: extract}\n  destination: {type: file, path: out/}\n",
    )
    .unwrap();
    let out = ferry(&work.path().join("state"), work.path())
        .args(["run", "drop.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_tree(&work.path().join("out"), &members);
}

/// `ferry copy ARCHIVE OUT --extract` run in `work`.
fn extract(work: &Path, archive: &Path, out: &Path) -> (i32, String, String) {
    copy_in(work, &[path(archive), path(out), "--extract"])
}

/// The same, which must succeed; its stdout.
fn extract_ok(work: &Path, archive: &Path, out: &Path) -> String {
    copy_in_ok(work, &[path(archive), path(out), "--extract"])
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
