//! The backend conformance suite against each real backend: local disk, S3 (moto), Azurite,
//! and the GCS emulator (fake-gcs-server).

use ferry_connectors::testkit::{conformance, gcs_temporary_parts, Remote};
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

/// GCS through the emulator (fake-gcs-server): ferry writes through the JSON API (media
/// uploads, composite uploads for parts), reads through object_store.
#[tokio::test]
async fn gcs_conforms() {
    let Some(base) = Remote::Gcs.unique("conformance") else {
        return;
    };
    run(&base).await;
    // The temporary parts of the completed and the aborted upload are gone.
    let address = DataAddress::parse(&base).unwrap();
    for key in ["multi/big.bin", "multi/aborted.bin"] {
        let left = gcs_temporary_parts(&address, key).await;
        assert!(left.is_empty(), "{key}: {left:?}");
    }
}

/// More parts than one compose request takes (32): composed in rounds, in part order
/// whatever order they were written in, and nothing temporary left.
#[tokio::test]
async fn gcs_composes_many_parts_in_order() {
    use futures::StreamExt;
    let Some(base) = Remote::Gcs.unique("compose") else {
        return;
    };
    let address = DataAddress::parse(&base).unwrap();
    let sink = open_sink(&address).unwrap();
    let source = open_source(&address).unwrap();
    let parts: Vec<Vec<u8>> = (0..70u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
    let upload = sink.create_upload("many.bin").await.unwrap();
    let mut offsets = Vec::new();
    let mut offset = 0u64;
    for p in &parts {
        offsets.push(offset);
        offset += p.len() as u64;
    }
    // Written eight at a time, last first.
    let mut tokens: Vec<(usize, ferry_core::PartToken)> =
        futures::stream::iter((0..parts.len()).rev())
            .map(|i| {
                let (sink, upload, data, at) = (&sink, &upload, parts[i].clone(), offsets[i]);
                async move {
                    let t = sink
                        .put_part("many.bin", upload, i, at, data.into())
                        .await
                        .unwrap();
                    (i, t)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
    tokens.sort_by_key(|(i, _)| *i);
    assert!(sink.head("many.bin").await.unwrap().is_none());
    let done = sink
        .complete_upload(
            "many.bin",
            &upload,
            tokens.into_iter().map(|(_, t)| t).collect(),
        )
        .await
        .unwrap();
    assert_eq!(done.size, offset);
    let entry = sink.head("many.bin").await.unwrap().unwrap();
    let read = source.read(&entry, 0..entry.size).await.unwrap();
    assert!(read.to_vec() == parts.concat(), "composed out of order");
    let left = gcs_temporary_parts(&address, "many.bin").await;
    assert!(left.is_empty(), "{left:?}");
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
