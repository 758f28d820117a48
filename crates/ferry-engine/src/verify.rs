//! Comparing two trees without copying: `ferry verify SRC DST`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ferry_connectors::open_source;
use ferry_core::{
    ChecksumAlgo, DataAddress, Digest, Entry, Error, ListStream, Listing, Result, Source,
};
use futures::stream::BoxStream;
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

/// A key found on one side or both, and what each side lists under it.
enum Side {
    Source(String),
    Destination(String),
    Both(String, Entry, Entry),
}

/// What one key's comparison found.
enum Checked {
    Differs(Difference),
    /// Both sides have it with the same size, and were read (`difference` if they differ).
    Compared {
        size: u64,
        difference: Option<Difference>,
    },
}

/// Lists both sides and compares them: presence, size, then checksums of same-size pairs.
/// Two trees are compared as their listings stream in key order, in memory that does not
/// grow with the number of files (only with the differences found).
pub async fn verify(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
) -> Result<VerifyReport> {
    opts.validate()?;
    let started = Instant::now();
    let source = open_source(src)?;
    let dest = open_source(dst)?;
    let listing = source.list_stream().await?;
    let dest_listing = match dest.list_stream().await {
        Ok(l) => l,
        Err(Error::NotFound { .. }) => ListStream::from_listing(Listing::default()),
        Err(e) => return Err(e),
    };
    let sides: BoxStream<'static, Result<Side>> =
        if listing.single_object || dest_listing.single_object {
            let sides = one_object(listing.collect().await?, dest_listing.collect().await?);
            futures::stream::iter(sides.into_iter().map(Ok)).boxed()
        } else {
            merge(listing.entries, dest_listing.entries)
        };

    let budget = Budget::new(opts.max_buffer);
    let algo = opts.checksum;
    let (source, dest): (Arc<dyn Source>, Arc<dyn Source>) = (source, dest);
    let mut checked = sides
        .map(|side| {
            let (source, dest, budget) = (source.clone(), dest.clone(), budget.clone());
            async move {
                let (key, s, d) = match side? {
                    Side::Source(key) => {
                        return Ok(Checked::Differs(Difference::MissingAtDestination { key }))
                    }
                    Side::Destination(key) => {
                        return Ok(Checked::Differs(Difference::OnlyAtDestination { key }))
                    }
                    Side::Both(key, s, d) if s.size != d.size => {
                        return Ok(Checked::Differs(Difference::SizeDiffers {
                            key,
                            source: s.size,
                            destination: d.size,
                        }))
                    }
                    Side::Both(key, s, d) => (key, s, d),
                };
                let (a, b) = futures::try_join!(
                    read_digest(source.as_ref(), &s, algo, opts.part_size, &budget),
                    read_digest(dest.as_ref(), &d, algo, opts.part_size, &budget),
                )?;
                Ok::<_, Error>(Checked::Compared {
                    size: s.size,
                    difference: (a != b).then(|| Difference::ChecksumDiffers {
                        key,
                        source: a.to_string(),
                        destination: b.to_string(),
                    }),
                })
            }
        })
        .buffer_unordered(opts.transfers);
    let mut differences = Vec::new();
    let (mut compared, mut bytes) = (0, 0);
    while let Some(result) = checked.try_next().await? {
        match result {
            Checked::Differs(d) => differences.push(d),
            Checked::Compared { size, difference } => {
                compared += 1;
                bytes += size;
                differences.extend(difference);
            }
        }
    }
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

/// Two listings in key order walked side by side.
fn merge(
    source: BoxStream<'static, Result<Entry>>,
    dest: BoxStream<'static, Result<Entry>>,
) -> BoxStream<'static, Result<Side>> {
    futures::stream::unfold(
        (source.peekable(), dest.peekable()),
        |(mut a, mut b)| async move {
            let order = match (Pin::new(&mut a).peek().await, Pin::new(&mut b).peek().await) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => Ordering::Less,
                (_, Some(Err(_))) | (None, Some(Ok(_))) => Ordering::Greater,
                (Some(Ok(x)), Some(Ok(y))) => x.key.cmp(&y.key),
            };
            let side = match order {
                Ordering::Less => a.next().await?.map(|e| Side::Source(e.key)),
                Ordering::Greater => b.next().await?.map(|e| Side::Destination(e.key)),
                Ordering::Equal => match (a.next().await?, b.next().await?) {
                    (Ok(s), Ok(d)) => Ok(Side::Both(s.key.clone(), s, d)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                },
            };
            Some((side, (a, b)))
        },
    )
    .boxed()
}

/// The sides when one end names a single object. One file against a directory is compared
/// with the file of the same name inside it.
fn one_object(listing: Listing, dest_listing: Listing) -> Vec<Side> {
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
    if listing.single_object && !dest_listing.single_object {
        if let Some(e) = listing.entries.first() {
            if let Some(found) = dst_map.remove(&e.key) {
                dst_map = BTreeMap::from([(String::new(), found)]);
            }
        }
    }
    let mut sides = Vec::new();
    for (key, s) in &src_map {
        let shown = if key.is_empty() {
            s.key.clone()
        } else {
            key.clone()
        };
        match dst_map.get(key) {
            None => sides.push(Side::Source(shown)),
            Some(d) => sides.push(Side::Both(shown, s.clone(), d.clone())),
        }
    }
    if !listing.single_object {
        for key in dst_map.keys().filter(|k| !src_map.contains_key(*k)) {
            sides.push(Side::Destination(key.clone()));
        }
    }
    sides
}
