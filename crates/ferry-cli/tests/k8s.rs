//! `ferry k8s job TRANSFER`: the Job of a transfer held by a running `ferry serve`.
//! (deploy.rs validates the Jobs against the Kubernetes schemas.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const TOKEN: &str = "k8s-job-token-5e1";

/// `ferry serve` on a free port, stopped when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(root: &Path) -> Served {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(root.join("data"))
            .env("FERRY_API_TOKEN", TOKEN)
            .env("FERRY_STATE_DIR", root.join("state"))
            .env_remove("FERRY_FAILPOINT")
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("listening on"));
        assert!(listening, "ferry serve stopped before listening");
        // Keep reading, so that the server never writes into a full or closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Served {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn ferry(&self, root: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("FERRY_SERVER", &self.url)
            .env("FERRY_TOKEN", TOKEN)
            .current_dir(root)
            .output()
            .expect("run ferry")
    }

    /// Creates the transfer `manifest` describes.
    fn apply(&self, root: &Path, name: &str, manifest: &str) {
        let file = root.join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        let out = self.ferry(root, &["transfers", "apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A suspended transfer (it never runs here) with `destination` as written.
fn transfer(name: &str, destination: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1\nkind: BatchTransfer\nmetadata: {{name: {name}, labels: {{team: lake}}}}\nspec:\n  source: {{type: postgres, url: \"postgres://app@db:5432/shop\", table: orders, password: env:SHOP_PASSWORD}}\n  destination: {destination}\n  suspend: true\n"
    )
}

fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

#[test]
fn a_transfer_on_the_server_becomes_a_job_with_its_manifest_and_references_only() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let server = Served::start(root);
    server.apply(
        root,
        "orders",
        &transfer(
            "orders",
            "{type: s3, bucket: lake, key: orders/, format: parquet}",
        ),
    );

    let out = server.ferry(root, &["k8s", "job", "orders", "--partitions", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let manifest: Value =
        serde_norway::from_str(config_map["data"]["transfer.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(manifest["kind"], "BatchTransfer");
    assert_eq!(manifest["metadata"]["name"], "orders");
    assert_eq!(manifest["metadata"]["labels"]["team"], "lake");
    assert_eq!(manifest["spec"]["destination"]["bucket"], "lake");
    // The reference stays a reference: the pod reads SHOP_PASSWORD from its Secret.
    assert_eq!(manifest["spec"]["source"]["password"], "env:SHOP_PASSWORD");
    assert!(manifest.get("status").is_none());
    let job = docs.iter().find(|d| d["kind"] == "Job").unwrap();
    assert_eq!(job["metadata"]["name"], "ferry-orders");
    assert_eq!(job["spec"]["completions"], 2);

    // A secret written into the manifest is masked by the server: no Job can be made of it.
    server.apply(
        root,
        "inline",
        &transfer(
            "inline",
            "{type: s3, bucket: lake, key: orders/, storeOptions: {secret_access_key: abc123}}",
        ),
    );
    let out = server.ferry(root, &["k8s", "job", "inline", "--partitions", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("spec.destination.storeOptions.secret_access_key"),
        "{stderr}"
    );
    assert!(!stderr.contains("abc123"), "{stderr}");
    assert!(out.stdout.is_empty());

    // A transfer that is not there.
    let out = server.ferry(root, &["k8s", "job", "nope", "--partitions", "2"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn vault_references_and_bad_counts_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let file = root.join("vault.yaml");
    std::fs::write(
        &file,
        transfer("vault", "{type: file, path: out/}")
            .replace("env:SHOP_PASSWORD", "\"ref+vault://secret/shop#password\""),
    )
    .unwrap();
    let job = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["k8s", "job", "-f"])
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let out = job(&["--partitions", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ref+vault://secret/shop#password"),
        "{stderr}"
    );
    assert!(stderr.contains("env:NAME"), "{stderr}");

    std::fs::write(&file, transfer("plain", "{type: file, path: out/}")).unwrap();
    for (args, needle) in [
        (&["--partitions", "0"][..], "--partitions"),
        (
            &["--partitions", "2", "--parallelism", "3"][..],
            "--parallelism",
        ),
        (&["--partitions", "2", "--name", "Not_A_Name"][..], "--name"),
    ] {
        let out = job(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
