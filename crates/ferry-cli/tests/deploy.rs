//! The Kubernetes manifests in deploy/kubernetes, checked offline against the Kubernetes
//! OpenAPI schemas by `deploy/validate` (strict: unknown fields are errors).

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
        good.contains("  replicas: 1\n"),
        "control-plane.yaml has no `replicas: 1`"
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("control-plane.yaml");
    std::fs::write(&broken, good.replace("  replicas: 1\n", "  replcas: 1\n")).unwrap();
    let (ok, out) = validate(&[&broken]);
    assert!(!ok, "a manifest with `replcas:` passed:\n{out}");
    assert!(
        out.contains("replcas"),
        "the error does not name the field:\n{out}"
    );
}
