//! One copy, from plan to verified result.
//!
//! Files move concurrently (`transfers`); a file larger than the part size moves in parts
//! (`concurrency` at once), each part recorded in the checkpoint once the destination has
//! it, so a restarted copy continues where the last one stopped. Every byte read is paid
//! for in the shared [`Budget`] first, which bounds memory whatever the data's size.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use ferry_connectors::{open_sink, open_source};
use ferry_core::{
    ChecksumAlgo, DataAddress, Digest, Entry, Error, PartToken, Result, Sink, Source,
};
use ferry_state::{FileCheckpoint, StateStore};
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::budget::Budget;
use crate::filter::KeyFilter;
use crate::options::CopyOptions;
use crate::partition::StreamShare;
use crate::report::{Action, CopyReport, FileReport, Progress, Tally};
use crate::verify::read_digest;

/// Copies `src` to `dst`. Errors of single files are in the report (status `failed`);
/// an `Err` means nothing could start (bad address, missing source, unusable state).
pub async fn copy(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<CopyReport> {
    if matches!(src, DataAddress::Kafka(_)) || matches!(dst, DataAddress::Kafka(_)) {
        return crate::events::copy(src, dst, opts, progress, run_id(src, dst, opts)).await;
    }
    if let Some(action) = opts.archive {
        if opts.partition.is_some() {
            return Err(Error::invalid_option(
                "--partition",
                "an archive is read or written by one process",
            ));
        }
        let run_id = run_id(src, dst, opts);
        return crate::archive::copy(src, dst, opts, action, progress, run_id).await;
    }
    let started = Instant::now();
    let (filter, source, sink) = open_ends(src, dst, opts)?;
    let listing = source.list_stream().await?;
    let single = listing.single_object;
    let mut plan = Plan {
        filter,
        share: StreamShare::new(opts.partition, single),
        single,
        into_directory: single && sink.is_directory().await?,
        progress: progress.clone(),
        files: 0,
        bytes: 0,
    };
    let mut entries = listing.entries;
    let mut tally = Tally::new(opts.checksum, single);

    if opts.dry_run {
        while let Some(entry) = entries.next().await {
            let Some((entry, dest_key)) = plan.admit(entry?) else {
                continue;
            };
            let file = FileReport {
                key: entry.key,
                destination_key: dest_key,
                size: entry.size,
                moved: 0,
                action: Action::WouldCopy,
                checksum: None,
                error: None,
            };
            progress.file_reported(&file);
            tally.settle(plan.files - 1, file, None);
        }
        plan.listed_all();
        return Ok(tally.finish(started.elapsed(), false, plan.share.idle()));
    }

    let state = Arc::new(opts.state_store()?);
    let run_id = run_id(src, dst, opts);
    if !opts.resume {
        discard_run(&state, &run_id, sink.as_ref(), |key| plan.dest_key(key)).await?;
    }
    // A run never started has no checkpoint: its files are not looked up batch by batch.
    let resuming = state.run_status(&run_id)?.is_some();
    state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
    let checkpoint = resuming.then_some((state.as_ref(), run_id.as_str()));
    let dest_source = if opts.verify {
        Some(open_source(dst)?)
    } else {
        None
    };
    let run = Arc::new(Run {
        source,
        sink,
        state: state.clone(),
        run_id: run_id.clone(),
        opts: opts.clone(),
        budget: Budget::new(opts.max_buffer),
        progress: progress.clone(),
    });

    // Files start as they are listed, `transfers` at a time, and settle in any order. The
    // listing is read a batch at a time, whose checkpoints are read in one query.
    let mut batches = entries.ready_chunks(CHECKPOINT_BATCH);
    let mut ready: VecDeque<Planned> = VecDeque::new();
    let mut moving = FuturesUnordered::new();
    let mut listed_all = false;
    let mut listing_error = None;
    loop {
        while moving.len() < opts.transfers
            && ready.front().is_some_and(|p| tally.has_room_for(p.place))
        {
            let Some(Planned {
                place,
                entry,
                dest_key,
                checkpoint,
            }) = ready.pop_front()
            else {
                break;
            };
            let run = run.clone();
            let dest_source = dest_source.clone();
            let listed = dest_source.is_some().then(|| entry.clone());
            moving.push(async move {
                let mut file = run.copy_file(entry, dest_key, checkpoint).await;
                let verified = match (dest_source, listed) {
                    (Some(at), Some(listed)) if file.error.is_none() => {
                        Some(run.verify_file(at.as_ref(), &listed, &mut file).await)
                    }
                    _ => None,
                };
                (place, file, verified)
            });
        }
        tokio::select! {
            batch = batches.next(), if !listed_all && ready.len() < CHECKPOINT_BATCH => match batch {
                None => {
                    listed_all = true;
                    plan.listed_all();
                }
                Some(batch) => {
                    if let Err(e) = plan.admit_batch(batch, checkpoint, &mut ready) {
                        // Let the files already moving finish (and be checkpointed), then
                        // fail.
                        listed_all = true;
                        listing_error = Some(e);
                    }
                }
            },
            Some((place, file, verified)) = moving.next(), if !moving.is_empty() => {
                progress.file_reported(&file);
                tally.settle(place, file, verified);
            }
            else => break,
        }
    }
    if let Some(e) = listing_error {
        state.finish_run(&run_id, "failed")?;
        return Err(e);
    }
    let report = tally.finish(started.elapsed(), opts.verify, plan.share.idle());
    state.finish_run(&run_id, crate::report::run_outcome(report.failed))?;
    Ok(report)
}

/// Turns listed entries into the files a run copies: the include/exclude filter, the
/// partition's share, where each goes; tells progress the plan as it grows, a batch ahead
/// of the files that start.
struct Plan {
    filter: KeyFilter,
    share: StreamShare,
    single: bool,
    /// One object copied into an existing directory keeps its name there.
    into_directory: bool,
    progress: Arc<dyn Progress>,
    files: u64,
    bytes: u64,
}

/// A listed file on its way to being copied.
struct Planned {
    /// Its place among the planned files, in listing order.
    place: u64,
    entry: Entry,
    dest_key: String,
    /// What earlier runs did with it.
    checkpoint: Option<FileCheckpoint>,
}

/// How many listed files are planned at once, their checkpoints read in one query.
const CHECKPOINT_BATCH: usize = 256;

impl Plan {
    /// Plans a batch of listed entries into `ready`, with what the checkpoint (the store
    /// and the run, when the run was started before) knows of them.
    fn admit_batch(
        &mut self,
        batch: Vec<Result<Entry>>,
        checkpoint: Option<(&StateStore, &str)>,
        ready: &mut VecDeque<Planned>,
    ) -> Result<()> {
        let mut admitted = Vec::with_capacity(batch.len());
        for entry in batch {
            if let Some((entry, dest_key)) = self.admit(entry?) {
                admitted.push(Planned {
                    place: self.files - 1,
                    entry,
                    dest_key,
                    checkpoint: None,
                });
            }
        }
        let mut known = match checkpoint {
            Some((state, run_id)) => {
                let keys: Vec<String> = admitted.iter().map(|p| p.entry.key.clone()).collect();
                state.files_for(run_id, &keys)?
            }
            None => BTreeMap::new(),
        };
        for mut planned in admitted {
            planned.checkpoint = known.remove(&planned.entry.key);
            ready.push_back(planned);
        }
        // Before any of them starts, so that what is done never exceeds what is planned.
        self.progress.planned(self.files, self.bytes);
        Ok(())
    }

    fn admit(&mut self, entry: Entry) -> Option<(Entry, String)> {
        if !(self.single || self.filter.allows(&entry.key)) || !self.share.keeps(&entry.key) {
            return None;
        }
        self.files += 1;
        self.bytes += entry.size;
        let dest_key = self.dest_key(&entry.key);
        Some((entry, dest_key))
    }

    fn dest_key(&self, key: &str) -> String {
        if self.single && !self.into_directory {
            String::new()
        } else {
            key.to_string()
        }
    }

    fn listed_all(&self) {
        self.progress.planned(self.files, self.bytes);
    }
}

/// What every transfer starts with: validated options, both ends opened, the source listed.
pub(crate) async fn open_and_list(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
) -> Result<(
    KeyFilter,
    Arc<dyn Source>,
    Arc<dyn Sink>,
    ferry_core::Listing,
)> {
    let (filter, source, sink) = open_ends(src, dst, opts)?;
    let listing = source.list().await?;
    Ok((filter, source, sink, listing))
}

/// The include/exclude filter and both ends of a transfer.
type Ends = (KeyFilter, Arc<dyn Source>, Arc<dyn Sink>);

/// Validated options and both ends opened, before anything is listed.
fn open_ends(src: &DataAddress, dst: &DataAddress, opts: &CopyOptions) -> Result<Ends> {
    opts.validate()?;
    let filter = KeyFilter::new(&opts.include, &opts.exclude)?;
    Ok((filter, open_source(src)?, open_sink(dst)?))
}

/// The same copy (same ends, same checksum, same partition) always has the same run id, so
/// re-running a command finds its checkpoint.
fn run_id(src: &DataAddress, dst: &DataAddress, opts: &CopyOptions) -> String {
    let canonical = |a: &DataAddress| match a {
        DataAddress::Local { path } => {
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let mut s = abs.to_string_lossy().into_owned();
            if a.names_a_directory() && !s.ends_with('/') {
                s.push('/');
            }
            s
        }
        // A credential in the query (a pull endpoint's `token`) is not what is copied: a
        // copy resumed with another token, or with it in a header, is the same copy.
        DataAddress::Http { url } => {
            let mut url = url.clone();
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| !ferry_core::redact::is_secret_name(k))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.set_query(None);
            if !kept.is_empty() {
                url.query_pairs_mut().extend_pairs(kept);
            }
            DataAddress::Http { url }.to_string()
        }
        other => other.to_string(),
    };
    let text = format!(
        "{}\n{}\n{}{}",
        canonical(src),
        canonical(dst),
        opts.checksum,
        opts.run_id_suffix()
    );
    ChecksumAlgo::Xxh3.digest(text.as_bytes()).hex()
}

/// Forgets the checkpoint of a finished copy or record transfer, so that a service running
/// the same transfer again and again does not keep every run's progress forever.
pub fn forget_checkpoint(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &crate::RecordOptions,
    opts: &CopyOptions,
) -> Result<()> {
    let state = opts.state_store()?;
    state.forget_run(&run_id(src, dst, opts))?;
    state.forget_run(&crate::records::run_id(src, dst, rec, opts))
}

/// `--no-resume`: abort the uploads an earlier run left open and forget its progress.
async fn discard_run(
    state: &StateStore,
    run_id: &str,
    sink: &dyn Sink,
    dest_key: impl Fn(&str) -> String,
) -> Result<()> {
    for (key, file) in state.uploading(run_id)? {
        if let Some(upload) = file.upload {
            if let Err(e) = sink.abort_upload(&dest_key(&key), &upload.upload_id).await {
                tracing::warn!(%key, error = %e, "could not abort an earlier upload");
            }
        }
    }
    state.forget_run(run_id)
}

struct Run {
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    state: Arc<StateStore>,
    run_id: String,
    opts: CopyOptions,
    budget: Budget,
    progress: Arc<dyn Progress>,
}

/// How one file ended.
struct Done {
    action: Action,
    checksum: Option<String>,
    moved: u64,
}

/// One part on its way from the source to the destination.
struct Staged {
    index: usize,
    range: Range<u64>,
    /// The bytes, unless the part is already at the destination or copied by the kernel.
    data: Option<Bytes>,
    /// Set when an earlier run already uploaded this part.
    done: Option<PartToken>,
    digest: Option<Digest>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Run {
    async fn copy_file(
        &self,
        entry: Entry,
        dest_key: String,
        checkpoint: Option<FileCheckpoint>,
    ) -> FileReport {
        let outcome = self.try_copy_file(&entry, &dest_key, checkpoint).await;
        self.progress.file_finished(&entry.key);
        let (action, checksum, moved, error) = match outcome {
            Ok(Done {
                action,
                checksum,
                moved,
            }) => (action, checksum, moved, None),
            Err(e) => {
                tracing::debug!(key = %entry.key, error = %e, "file failed");
                (Action::Failed, None, 0, Some(e.to_string()))
            }
        };
        FileReport {
            key: entry.key,
            destination_key: dest_key,
            size: entry.size,
            moved,
            action,
            checksum,
            error,
        }
    }

    async fn try_copy_file(
        &self,
        entry: &Entry,
        dest_key: &str,
        checkpoint: Option<FileCheckpoint>,
    ) -> Result<Done> {
        let unchanged_source = checkpoint
            .as_ref()
            .is_some_and(|c| c.source_size == entry.size && c.source_version == entry.version);
        if let Some(c) = checkpoint.as_ref().filter(|c| c.done && unchanged_source) {
            if let Some(at_dest) = self.sink.head(dest_key).await? {
                let same_version = c.dest_version.is_none() || at_dest.version == c.dest_version;
                if at_dest.size == entry.size && same_version {
                    self.progress.advanced(entry.size);
                    return Ok(Done {
                        action: Action::Skipped,
                        checksum: c.checksum.clone(),
                        moved: 0,
                    });
                }
            }
        }

        if let Some(written) = self
            .sink
            .copy_from(self.source.as_ref(), entry, dest_key)
            .await?
        {
            self.record_done(entry, &written, None)?;
            self.progress.advanced(entry.size);
            return Ok(Done {
                action: Action::ServerSideCopied,
                checksum: None,
                moved: entry.size,
            });
        }

        if entry.size <= self.opts.part_size {
            let digest = self.copy_whole(entry, dest_key).await?;
            return Ok(Done {
                action: Action::Copied,
                checksum: Some(digest.to_string()),
                moved: entry.size,
            });
        }

        let resumable = checkpoint
            .and_then(|c| c.upload.map(|u| (u, unchanged_source)))
            .and_then(|(u, unchanged)| {
                if unchanged {
                    Some(u)
                } else {
                    // The source changed since that upload started: it is worthless now.
                    let sink = self.sink.clone();
                    let key = dest_key.to_string();
                    tokio::spawn(async move { sink.abort_upload(&key, &u.upload_id).await });
                    None
                }
            });
        let resumed = resumable.is_some();
        match self.copy_parts(entry, dest_key, resumable).await {
            Ok((digest, moved)) => Ok(Done {
                action: if resumed {
                    Action::Resumed
                } else {
                    Action::Copied
                },
                checksum: Some(digest.to_string()),
                moved,
            }),
            // The earlier upload is gone (expired, aborted, its partial file removed): start over.
            Err(Error::NotFound { .. }) if resumed => {
                self.state.forget_file(&self.run_id, &entry.key)?;
                let (digest, moved) = self.copy_parts(entry, dest_key, None).await?;
                Ok(Done {
                    action: Action::Copied,
                    checksum: Some(digest.to_string()),
                    moved,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Checks what the destination reports and records the file as done.
    fn record_done(&self, entry: &Entry, written: &Entry, digest: Option<&Digest>) -> Result<()> {
        self.expect_size(entry, written)?;
        self.state.file_done(
            &self.run_id,
            &entry.key,
            entry.size,
            entry.version.as_deref(),
            digest.map(|d| d.to_string()).as_deref(),
            written.version.as_deref(),
        )
    }

    fn expect_size(&self, entry: &Entry, written: &Entry) -> Result<()> {
        if written.size != entry.size {
            return Err(Error::store(
                self.sink.address().join(&written.key),
                format!(
                    "destination holds {} bytes after the write, expected {}",
                    written.size, entry.size
                ),
            ));
        }
        Ok(())
    }

    async fn copy_whole(&self, entry: &Entry, dest_key: &str) -> Result<Digest> {
        let _permit = self.budget.acquire(entry.size).await;
        let data = if entry.size == 0 {
            Bytes::new()
        } else {
            self.source.read(entry, 0..entry.size).await?
        };
        // Object stores guard the read with If-Match; a local file is checked afterwards.
        if self.source.local_path(entry).is_some() {
            self.source.check_unchanged(entry).await?;
        }
        let digest = self.opts.checksum.digest(&data);
        let written = self.sink.put(dest_key, data).await?;
        self.record_done(entry, &written, Some(&digest))?;
        self.progress.advanced(entry.size);
        crate::failpoint::file_recorded().await;
        Ok(digest)
    }

    fn part_size_for(&self, size: u64) -> u64 {
        let max_parts = self.sink.max_parts().max(1) as u64;
        self.opts
            .part_size
            .max(self.sink.min_part_size())
            .max(size.div_ceil(max_parts))
    }

    async fn copy_parts(
        &self,
        entry: &Entry,
        dest_key: &str,
        resumable: Option<ferry_state::UploadCheckpoint>,
    ) -> Result<(Digest, u64)> {
        let algo = self.opts.checksum;
        // Local to local: the kernel copies, ferry only reads to checksum (CRC32C combines
        // per part, so no ordering is needed).
        let kernel_source = match self.sink.address() {
            DataAddress::Local { .. } if algo.combinable() => self.source.local_path(entry),
            _ => None,
        };
        let (upload_id, part_size, done) = match resumable {
            Some(u) => (u.upload_id, u.part_size, u.parts),
            None => {
                let part_size = self.part_size_for(entry.size);
                let id = self.sink.create_upload(dest_key).await?;
                self.state.begin_upload(
                    &self.run_id,
                    &entry.key,
                    entry.size,
                    entry.version.as_deref(),
                    &id,
                    part_size,
                )?;
                (id, part_size, BTreeMap::new())
            }
        };
        let ranges: Vec<Range<u64>> = (0..entry.size.div_ceil(part_size))
            .map(|i| i * part_size..((i + 1) * part_size).min(entry.size))
            .collect();
        // Writes into one local file serialize on its inode lock, so parallel kernel copies
        // only spin on it; checksumming of later parts still overlaps the copy.
        let upload_concurrency = if kernel_source.is_some() {
            1
        } else {
            self.opts.concurrency
        };
        let hasher = Mutex::new(algo.hasher());
        let done = &done;
        let kernel_source = &kernel_source;

        let parts: Vec<(usize, PartToken, Option<Digest>, u64)> =
            futures::stream::iter(ranges.iter().cloned().enumerate())
                .map(|(index, range)| {
                    self.stage_part(
                        entry,
                        index,
                        range,
                        done.get(&index),
                        kernel_source.as_deref(),
                    )
                })
                .buffered(self.opts.concurrency)
                .map_ok(|staged| {
                    // Whole-object digests of non-combinable algorithms see the parts in order.
                    if !algo.combinable() {
                        if let Some(data) = &staged.data {
                            hasher
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .update(data);
                        }
                    }
                    self.upload_part(
                        entry,
                        dest_key,
                        &upload_id,
                        staged,
                        kernel_source.as_deref(),
                    )
                })
                .try_buffer_unordered(upload_concurrency)
                .try_collect()
                .await?;

        let mut parts = parts;
        parts.sort_by_key(|p| p.0);
        let moved: u64 = parts
            .iter()
            .filter(|p| !done.contains_key(&p.0))
            .map(|p| p.3)
            .sum();
        let digest = if algo.combinable() {
            let mut acc: Option<Digest> = None;
            for (_, _, digest, len) in &parts {
                let d = digest
                    .clone()
                    .ok_or_else(|| Error::Internal("a part has no checksum".into()))?;
                acc = Some(match acc {
                    None => d,
                    Some(prev) => prev
                        .combine(&d, *len)
                        .ok_or_else(|| Error::Internal("checksums do not combine".into()))?,
                });
            }
            acc.unwrap_or_else(|| algo.digest(&[]))
        } else {
            hasher
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .finish()
        };

        if let Err(e) = self.source.check_unchanged(entry).await {
            if matches!(e, Error::SourceChanged { .. }) {
                let _ = self.sink.abort_upload(dest_key, &upload_id).await;
                self.state.forget_file(&self.run_id, &entry.key)?;
            }
            return Err(e);
        }
        let tokens: Vec<PartToken> = parts.into_iter().map(|p| p.1).collect();
        let written = match self
            .sink
            .complete_upload(dest_key, &upload_id, tokens.clone())
            .await
        {
            Ok(written) => written,
            Err(e) => {
                self.completed_anyway(entry, dest_key, &upload_id, &tokens, &digest, e)
                    .await?
            }
        };
        crate::failpoint::upload_completed().await;
        self.record_done(entry, &written, Some(&digest))?;
        Ok((digest, moved))
    }

    /// After a completion failed: the object, when an earlier completion of the same
    /// upload arrived anyway (a process killed after sending it, a response lost and the
    /// retry refused because the upload is gone), otherwise an error. A `NotFound` (the
    /// upload is gone and its object is not there) makes a resumed file start again. After
    /// another error the store may still be assembling the object: it gets a few seconds,
    /// then one more completion, whose outcome stands (its `NotFound` restarts the file too).
    async fn completed_anyway(
        &self,
        entry: &Entry,
        dest_key: &str,
        upload_id: &str,
        parts: &[PartToken],
        digest: &Digest,
        error: Error,
    ) -> Result<Entry> {
        let gone = matches!(error, Error::NotFound { .. });
        let waits: &[u64] = if gone { &[0] } else { &[0, 1, 2, 4] };
        for &secs in waits {
            tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
            if let Some(found) = self
                .holds_completion(entry, dest_key, parts, digest)
                .await?
            {
                tracing::info!(
                    key = %entry.key,
                    error = %error,
                    "the completion failed, but the destination holds the completed object"
                );
                return Ok(found);
            }
        }
        if gone {
            return Err(error);
        }
        tracing::debug!(key = %entry.key, %error, "completing the upload once more");
        self.sink
            .complete_upload(dest_key, &upload_id.to_string(), parts.to_vec())
            .await
    }

    /// The object at `dest_key` when it is what completing an upload of `parts` makes:
    /// judged from its metadata where the store can tell (S3's multipart ETag), otherwise
    /// by reading it back and comparing checksums.
    async fn holds_completion(
        &self,
        entry: &Entry,
        dest_key: &str,
        parts: &[PartToken],
        digest: &Digest,
    ) -> Result<Option<Entry>> {
        let Some(found) = self.sink.head(dest_key).await? else {
            return Ok(None);
        };
        if found.size != entry.size {
            return Ok(None);
        }
        match self.sink.is_completion_of(&found, parts) {
            Some(same) => Ok(same.then_some(found)),
            None => {
                let dest = open_source(self.sink.address())?;
                let algo = self.opts.checksum;
                let at_dest = read_digest(
                    dest.as_ref(),
                    &found,
                    algo,
                    self.opts.part_size,
                    &self.budget,
                )
                .await?;
                Ok((at_dest == *digest).then_some(found))
            }
        }
    }

    /// Reads (or, for the kernel path, checksums) one part.
    async fn stage_part(
        &self,
        entry: &Entry,
        index: usize,
        range: Range<u64>,
        done: Option<&(PartToken, Option<String>)>,
        kernel_source: Option<&Path>,
    ) -> Result<Staged> {
        let algo = self.opts.checksum;
        let len = range.end - range.start;
        if let Some((token, digest)) = done {
            let digest = digest.as_deref().map(str::parse::<Digest>).transpose()?;
            if algo.combinable() && digest.is_some() {
                return Ok(Staged {
                    index,
                    range,
                    data: None,
                    done: Some(token.clone()),
                    digest,
                    _permit: None,
                });
            }
            // The digest needs this part's bytes again, though the destination has them.
            let permit = self.budget.acquire(len).await;
            let data = self.source.read(entry, range.clone()).await?;
            let digest = algo.combinable().then(|| algo.digest(&data));
            return Ok(Staged {
                index,
                range,
                data: Some(data),
                done: Some(token.clone()),
                digest,
                _permit: Some(permit),
            });
        }
        if let Some(path) = kernel_source {
            let digest = hash_file_range(path.to_path_buf(), range.clone(), algo).await?;
            return Ok(Staged {
                index,
                range,
                data: None,
                done: None,
                digest: Some(digest),
                _permit: None,
            });
        }
        let permit = self.budget.acquire(len).await;
        let data = self.source.read(entry, range.clone()).await?;
        let digest = algo.combinable().then(|| algo.digest(&data));
        Ok(Staged {
            index,
            range,
            data: Some(data),
            done: None,
            digest,
            _permit: Some(permit),
        })
    }

    /// Sends one staged part to the destination and records it in the checkpoint.
    async fn upload_part(
        &self,
        entry: &Entry,
        dest_key: &str,
        upload_id: &str,
        staged: Staged,
        kernel_source: Option<&Path>,
    ) -> Result<(usize, PartToken, Option<Digest>, u64)> {
        let len = staged.range.end - staged.range.start;
        if let Some(token) = staged.done {
            return Ok((staged.index, token, staged.digest, len));
        }
        let upload_id = upload_id.to_string();
        let token = match (staged.data, kernel_source) {
            (Some(data), _) => {
                self.sink
                    .put_part(dest_key, &upload_id, staged.index, staged.range.start, data)
                    .await?
            }
            (None, Some(path)) => self
                .sink
                .copy_part_from_file(
                    dest_key,
                    &upload_id,
                    staged.index,
                    path,
                    staged.range.clone(),
                )
                .await?
                .ok_or_else(|| Error::Internal("the destination cannot copy from a file".into()))?,
            (None, None) => return Err(Error::Internal("a part has no data".into())),
        };
        drop(staged._permit);
        self.state.part_done(
            &self.run_id,
            &entry.key,
            staged.index,
            &token,
            staged.digest.as_ref().map(|d| d.to_string()).as_deref(),
        )?;
        self.progress.advanced(len);
        crate::failpoint::part_recorded().await;
        Ok((staged.index, token, staged.digest, len))
    }

    /// `--verify`: re-reads the file at the destination and compares its checksum with the
    /// one computed while copying (or, for a server-side copy, with the source's). A file
    /// that does not match gets its error; the answer says whether it matched.
    async fn verify_file(&self, at: &dyn Source, listed: &Entry, file: &mut FileReport) -> bool {
        match self.check_copy(at, listed, file).await {
            Ok(None) => true,
            Ok(Some(why)) => {
                file.error = Some(why);
                false
            }
            Err(e) => {
                file.error = Some(format!("verify: {}: {e}", file.key));
                false
            }
        }
    }

    async fn check_copy(
        &self,
        at: &dyn Source,
        listed: &Entry,
        file: &mut FileReport,
    ) -> Result<Option<String>> {
        let algo = self.opts.checksum;
        let Some(dest_entry) = self.sink.head(&file.destination_key).await? else {
            return Ok(Some(format!(
                "verify: {} is missing at the destination",
                file.key
            )));
        };
        let expected = match &file.checksum {
            Some(c) => c.clone(),
            None => {
                let d = read_digest(
                    self.source.as_ref(),
                    listed,
                    algo,
                    self.opts.part_size,
                    &self.budget,
                )
                .await?
                .to_string();
                file.checksum = Some(d.clone());
                d
            }
        };
        let actual = read_digest(at, &dest_entry, algo, self.opts.part_size, &self.budget)
            .await?
            .to_string();
        Ok((actual != expected).then(|| {
            format!(
                "verify: {} has checksum {actual} at the destination, expected {expected}",
                file.key
            )
        }))
    }
}

/// Checksums a byte range of a local file off the async workers.
async fn hash_file_range(path: PathBuf, range: Range<u64>, algo: ChecksumAlgo) -> Result<Digest> {
    tokio::task::spawn_blocking(move || ferry_connectors::local::checksum_range(&path, range, algo))
        .await
        .map_err(|e| Error::Internal(format!("checksum task failed: {e}")))?
}
