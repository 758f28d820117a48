//! Comparing two trees without copying: `ferry verify SRC DST`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ferry_connectors::open_source;
use ferry_core::{ChecksumAlgo, DataAddress, Digest, Entry, Error, Result, Source};
use futures::{StreamExt, TryStreamExt};

use crate::budget::Budget;
use crate::options::CopyOptions;
use crate::report::{Difference, Status, VerifyReport};

/// Reads a whole object in `chunk`-sized ranges, holding at most one chunk, and digests it.
pub async fn read_digest(
    source: &dyn Source,
    entry: &Entry,
    algo: ChecksumAlgo,
    chunk: u64,
    budget: &Budget,
) -> Result<Digest> {
    let mut hasher = algo.hasher();
    let mut at = 0;
    while at < entry.size {
        let end = (at + chunk).min(entry.size);
        let _permit = budget.acquire(end - at).await;
        let data = source.read(entry, at..end).await?;
        hasher.update(&data);
        at = end;
    }
    Ok(hasher.finish())
}

/// Lists both sides and compares them: presence, size, then checksums of same-size pairs.
pub async fn verify(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
) -> Result<VerifyReport> {
    opts.validate()?;
    let started = Instant::now();
    let source = open_source(src)?;
    let dest = open_source(dst)?;
    let listing = source.list().await?;
    let dest_listing = match dest.list().await {
        Ok(l) => l,
        Err(Error::NotFound { .. }) => Default::default(),
        Err(e) => return Err(e),
    };
    let key_of = |single: bool, e: &Entry| if single { String::new() } else { e.key.clone() };
    let src_map: BTreeMap<String, Entry> = listing
        .entries
        .iter()
        .map(|e| (key_of(listing.single_object, e), e.clone()))
        .collect();
    let mut dst_map: BTreeMap<String, Entry> = dest_listing
        .entries
        .iter()
        .map(|e| (key_of(dest_listing.single_object, e), e.clone()))
        .collect();
    // One file against a directory: compare with the file of the same name inside it.
    if listing.single_object && !dest_listing.single_object {
        if let Some(e) = listing.entries.first() {
            if let Some(found) = dst_map.remove(&e.key) {
                dst_map = BTreeMap::from([(String::new(), found)]);
            }
        }
    }

    let mut differences = Vec::new();
    let mut pairs = Vec::new();
    for (key, s) in &src_map {
        let shown = if key.is_empty() {
            s.key.clone()
        } else {
            key.clone()
        };
        match dst_map.get(key) {
            None => differences.push(Difference::MissingAtDestination { key: shown }),
            Some(d) if d.size != s.size => differences.push(Difference::SizeDiffers {
                key: shown,
                source: s.size,
                destination: d.size,
            }),
            Some(d) => pairs.push((shown, s.clone(), d.clone())),
        }
    }
    if !listing.single_object {
        for key in dst_map.keys().filter(|k| !src_map.contains_key(*k)) {
            differences.push(Difference::OnlyAtDestination { key: key.clone() });
        }
    }

    let budget = Budget::new(opts.max_buffer);
    let algo = opts.checksum;
    let bytes: u64 = pairs.iter().map(|(_, s, _)| s.size).sum();
    let compared = pairs.len() as u64;
    let (source, dest): (Arc<dyn Source>, Arc<dyn Source>) = (source, dest);
    let checked: Vec<Option<Difference>> =
        futures::stream::iter(pairs.into_iter().map(|(key, s, d)| {
            let (source, dest, budget) = (source.clone(), dest.clone(), budget.clone());
            async move {
                let (a, b) = futures::try_join!(
                    read_digest(source.as_ref(), &s, algo, opts.part_size, &budget),
                    read_digest(dest.as_ref(), &d, algo, opts.part_size, &budget),
                )?;
                Ok::<_, Error>((a != b).then(|| Difference::ChecksumDiffers {
                    key,
                    source: a.to_string(),
                    destination: b.to_string(),
                }))
            }
        }))
        .buffer_unordered(opts.transfers)
        .try_collect()
        .await?;
    differences.extend(checked.into_iter().flatten());
    differences.sort_by_key(|d| d.to_string());
    Ok(VerifyReport {
        status: if differences.is_empty() {
            Status::Succeeded
        } else {
            Status::Failed
        },
        compared,
        bytes,
        differences,
        duration_s: started.elapsed().as_secs_f64(),
    })
}
