//! The Kubernetes manifests in deploy/kubernetes, and the Jobs `ferry k8s job` prints,
//! checked offline against the Kubernetes OpenAPI schemas by `deploy/validate` (strict:
//! unknown fields are errors).

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validate(files: &[&std::path::Path]) -> (bool, String) {
    let script = repo_root().join("deploy/validate");
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new("bash")
        .arg(&script)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let out = format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), out)
}

#[test]
fn kubernetes_manifests_validate_offline() {
    // Every manifest, and kustomization.yaml listing exactly them.
    let (ok, out) = validate(&[]);
    assert!(ok, "deploy/validate failed:\n{out}");
    for name in [
        "namespace",
        "secret-postgres",
        "secret-credentials",
        "control-plane",
        "data-plane",
    ] {
        assert!(
            out.contains(&format!("{name}.yaml passed")),
            "{name}.yaml not validated:\n{out}"
        );
    }

    // A misspelt field is caught, not ignored.
    let good = std::fs::read_to_string(repo_root().join("deploy/kubernetes/control-plane.yaml"))
        .expect("read control-plane.yaml");
    assert!(
        good.contains("  replicas: 2\n"),
        "control-plane.yaml has no `replicas: 2`"
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("control-plane.yaml");
    std::fs::write(&broken, good.replace("  replicas: 2\n", "  replcas: 2\n")).unwrap();
    let (ok, out) = validate(&[&broken]);
    assert!(!ok, "a manifest with `replcas:` passed:\n{out}");
    assert!(
        out.contains("replcas"),
        "the error does not name the field:\n{out}"
    );
}

/// The documents of a multi-document YAML file.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .filter(|doc: &serde_json::Value| !doc.is_null())
        .collect()
}

#[test]
fn a_generated_indexed_job_validates_and_carries_the_manifest() {
    let example = repo_root().join("examples/manifests/orders-to-lake.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["k8s", "job", "-f"])
        .arg(&example)
        .args(["--partitions", "3"])
        .output()
        .expect("run ferry k8s job");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, &text).unwrap();
    let (ok, validated) = validate(&[&file]);
    assert!(ok, "deploy/validate failed:\n{validated}\n{text}");
    for resource in ["configmap/ferry-orders-to-lake", "job/ferry-orders-to-lake"] {
        assert!(
            validated.contains(&format!("passed for resource {resource}")),
            "{resource} not validated:\n{validated}"
        );
    }

    let docs = documents(&text);
    assert_eq!(docs.len(), 2, "{text}");
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(
        config_map["data"]["transfer.yaml"].as_str(),
        Some(std::fs::read_to_string(&example).unwrap().as_str()),
        "the manifest as written"
    );
    let job = docs.iter().find(|d| d["kind"] == "Job").unwrap();
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 3);
    assert_eq!(spec["parallelism"], 3);
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["run", "/etc/ferry/transfer.yaml", "--partitions", "3"])
    );
    assert_eq!(container["image"], "ghcr.io/ferry/ferry:0.1.0");
    // Credentials by reference, from the Secret the deploy manifests use.
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        "ferry-credentials"
    );
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        config_map["metadata"]["name"]
    );

    // --parallelism and the names are the caller's.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["k8s", "job", "-f"])
        .arg(&example)
        .args([
            "--partitions",
            "4",
            "--parallelism",
            "2",
            "--name",
            "lake-load",
        ])
        .args(["--namespace", "etl", "--image", "registry.example/ferry:1"])
        .output()
        .expect("run ferry k8s job");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let job = docs.iter().find(|d| d["kind"] == "Job").unwrap();
    assert_eq!(job["metadata"]["name"], "lake-load");
    assert_eq!(job["metadata"]["namespace"], "etl");
    assert_eq!(job["spec"]["completions"], 4);
    assert_eq!(job["spec"]["parallelism"], 2);
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/ferry:1"
    );
}
