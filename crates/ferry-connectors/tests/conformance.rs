//! The backend conformance suite against each real backend: local disk, S3 (moto), Azurite.

use ferry_connectors::testkit::{conformance, Remote};
use ferry_connectors::{open_sink, open_source};
use ferry_core::DataAddress;

async fn run(address: &str) {
    let address = DataAddress::parse(address).unwrap();
    let sink = open_sink(&address).unwrap();
    let source = open_source(&address).unwrap();
    conformance(&address, sink.as_ref(), source.as_ref()).await;
}

#[tokio::test]
async fn local_disk_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run(&format!("{}/", dir.path().display())).await;
    // No temporary files are left behind by completed or aborted uploads.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("ferry-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn s3_conforms() {
    if let Some(base) = Remote::S3.unique("conformance") {
        run(&base).await;
    }
}

#[tokio::test]
async fn azure_conforms() {
    if let Some(base) = Remote::Azure.unique("conformance") {
        run(&base).await;
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
