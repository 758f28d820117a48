//! Archives as one transfer: `--extract` unpacks a tar (plain, gzip, zstd) or a zip into a
//! tree of objects as it reads it, and `--archive KIND` packs a tree into one object as it
//! uploads it.
//!
//! A tar is read front to back, once; a zip through its central directory, in ranged reads
//! (a local file with `pread`), so neither is ever copied whole first. Each member goes
//! through an [`UploadWriter`] (parts of `part-size`, `concurrency` in flight), so memory
//! is bounded whatever the archive's size. Each finished member is recorded in the
//! checkpoint; a re-run skips the members recorded and still at the destination, and
//! discards the upload of the one it was writing.

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::{DataAddress, Entry, Error, Result, Sink, Source};
use ferry_formats::{Codec, Input};
use ferry_state::{FileCheckpoint, StateStore};
use tokio::runtime::Handle;

use crate::options::CopyOptions;
use crate::records::{discard_uploads, join_error, open_input};
use crate::report::{Action, CopyReport, FileReport, Progress};
use crate::upload::{OnStart, UploadWriter};

/// The archive formats ferry reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    TarGz,
    TarZst,
    Zip,
}

impl ArchiveKind {
    /// The kind a file name's extension says (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`,
    /// `.tzst`, `.zip`).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        let ends = |suffixes: &[&str]| suffixes.iter().any(|s| name.ends_with(s));
        if ends(&[".tar.gz", ".tgz", ".tar.gzip"]) {
            Some(Self::TarGz)
        } else if ends(&[".tar.zst", ".tzst", ".tar.zstd"]) {
            Some(Self::TarZst)
        } else if ends(&[".tar"]) {
            Some(Self::Tar)
        } else if ends(&[".zip"]) {
            Some(Self::Zip)
        } else {
            None
        }
    }

    fn codec(self) -> Option<Codec> {
        match self {
            Self::TarGz => Some(Codec::Gzip),
            Self::TarZst => Some(Codec::Zstd),
            Self::Tar | Self::Zip => None,
        }
    }
}

impl std::fmt::Display for ArchiveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tar => "tar",
            Self::TarGz => "tar.gz",
            Self::TarZst => "tar.zst",
            Self::Zip => "zip",
        })
    }
}

impl std::str::FromStr for ArchiveKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::from_name(&format!("x.{}", text.trim().trim_start_matches('.'))).ok_or_else(|| {
            Error::invalid_option(
                "--archive",
                format!("'{text}': expected tar, tar.gz, tar.zst or zip"),
            )
        })
    }
}

/// What a copy does with archives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveAction {
    /// The source is one archive; its members become a tree at the destination.
    Extract,
    /// The source tree becomes one archive at the destination.
    Pack(ArchiveKind),
}

impl std::fmt::Display for ArchiveAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Extract => f.write_str("extract"),
            Self::Pack(kind) => write!(f, "pack {kind}"),
        }
    }
}

/// Runs a copy whose options name an archive action.
pub(crate) async fn copy(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
    action: ArchiveAction,
    progress: Arc<dyn Progress>,
    run_id: String,
) -> Result<CopyReport> {
    match action {
        ArchiveAction::Extract => extract(src, dst, opts, progress, run_id).await,
        ArchiveAction::Pack(kind) => pack(src, dst, opts, kind, progress, run_id).await,
    }
}

/// The destination key of member `name`, or an error when the name could lead outside the
/// destination (absolute, `..`, a drive or backslash trick) or names nothing.
pub fn member_key(name: &[u8]) -> std::result::Result<String, &'static str> {
    let name = std::str::from_utf8(name).map_err(|_| "the name is not UTF-8")?;
    if name.contains('\0') {
        return Err("the name holds a NUL byte");
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err("an absolute path leaves the destination");
    }
    let mut parts = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err("'..' leaves the destination"),
            p if p.len() >= 2 && p.as_bytes()[1] == b':' && parts.is_empty() => {
                return Err("a drive letter leaves the destination")
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("the name is empty");
    }
    Ok(parts.join("/"))
}

/// Everything one extraction's blocking thread needs.
struct Extraction {
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    archive: Entry,
    /// The archive's address, for errors.
    shown: String,
    kind: ArchiveKind,
    state: Option<Arc<StateStore>>,
    run_id: String,
    checkpoints: std::collections::BTreeMap<String, FileCheckpoint>,
    /// Whether an earlier run of this extraction may have left unrecorded uploads.
    earlier: bool,
    opts: CopyOptions,
    handle: Handle,
    progress: Arc<dyn Progress>,
}

async fn extract(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
    run_id: String,
) -> Result<CopyReport> {
    let started = Instant::now();
    let (_, source, sink, listing) = crate::copy::open_and_list(src, dst, opts).await?;
    let archive = match listing.entries.as_slice() {
        [one] if listing.single_object => one.clone(),
        _ => {
            return Err(Error::invalid_option(
                "--extract",
                format!("{src} is a directory or prefix; name one archive"),
            ))
        }
    };
    let shown = src.to_string();
    let kind = ArchiveKind::from_name(src.path_text().trim_end_matches('/')).ok_or_else(|| {
        Error::invalid_option(
            "--extract",
            format!(
                "{shown}: the name does not say the archive's kind (.tar, .tar.gz, .tgz, .tar.zst, .tzst or .zip)"
            ),
        )
    })?;
    let (state, checkpoints, earlier) = if opts.dry_run {
        (None, Default::default(), false)
    } else {
        let state = Arc::new(opts.state_store()?);
        let earlier = state.run_status(&run_id)?.is_some();
        discard_uploads(&state, &run_id, sink.as_ref()).await?;
        if !opts.resume {
            state.forget_run(&run_id)?;
        }
        state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
        let checkpoints = state.files(&run_id)?;
        (Some(state), checkpoints, earlier)
    };
    progress.planned(0, archive.size);
    let observer = progress.clone();
    let job = Extraction {
        source,
        sink,
        archive,
        shown,
        kind,
        state: state.clone(),
        run_id: run_id.clone(),
        checkpoints,
        earlier,
        opts: opts.clone(),
        handle: Handle::current(),
        progress,
    };
    let files = tokio::task::spawn_blocking(move || job.run())
        .await
        .map_err(join_error)??;
    let report = CopyReport::new(
        files,
        opts.checksum,
        started.elapsed(),
        false,
        observer.as_ref(),
    );
    if let Some(state) = state {
        state.finish_run(&run_id, crate::report::run_outcome(report.failed))?;
    }
    Ok(report)
}

impl Extraction {
    fn run(&self) -> Result<Vec<FileReport>> {
        let input = open_input(
            &self.source,
            &self.archive,
            &self.handle,
            Some(self.progress.clone()),
        );
        let files = match self.kind {
            ArchiveKind::Zip => self.unzip(&input)?,
            _ => self.untar(&input)?,
        };
        if self.source.local_path(&self.archive).is_some() {
            self.handle
                .block_on(self.source.check_unchanged(&self.archive))?;
        }
        Ok(files)
    }

    fn corrupt(&self, at: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
        Error::data(&self.shown, format!("{at}: {e}"))
    }

    fn refused(&self, name: &[u8], why: &str) -> Error {
        Error::data(
            &self.shown,
            format!(
                "member '{}' refused: {why}; nothing was written for it",
                String::from_utf8_lossy(name)
            ),
        )
    }

    fn untar(&self, input: &Input) -> Result<Vec<FileReport>> {
        let read = Arc::new(AtomicU64::new(0));
        let raw = ferry_formats::Counted {
            inner: input.sequential(0),
            read: read.clone(),
        };
        let stream: Box<dyn BufRead + Send> = match self.kind.codec() {
            Some(codec) => codec.decoder(raw, &self.shown),
            None => Box::new(io::BufReader::with_capacity(256 << 10, raw)),
        };
        let mut tar = tar::Archive::new(stream);
        let at = |last: &Option<String>| {
            let offset = read.load(Ordering::Relaxed);
            match last {
                Some(name) => format!("after member '{name}', near archive byte {offset}"),
                None => format!("near archive byte {offset}"),
            }
        };
        let entries = tar.entries().map_err(|e| self.corrupt(at(&None), e))?;
        let mut files = Vec::new();
        let mut last: Option<String> = None;
        for member in entries {
            let mut member = member.map_err(|e| self.corrupt(at(&last), strip_location(&e)))?;
            let name = member.path_bytes().into_owned();
            let kind = member.header().entry_type();
            if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            }
            if kind.is_symlink() || kind.is_hard_link() {
                return Err(self.refused(&name, "links are not extracted"));
            }
            if !kind.is_file() {
                return Err(self.refused(&name, "not a regular file"));
            }
            let key = member_key(&name).map_err(|why| self.refused(&name, why))?;
            let size = member.size();
            let offset = member.raw_header_position();
            let report = self.member(&key, size, &mut member).map_err(|e| match e {
                MemberError::Read(e) => self.corrupt(
                    format!("member '{key}' (header at byte {offset} of the tar stream)"),
                    strip_location(&e),
                ),
                MemberError::Other(e) => e,
            })?;
            files.push(report);
            last = Some(key);
        }
        // gzip and zstd check their stream at its very end, after the tar's last block.
        let mut stream = tar.into_inner();
        if let Err(e) = io::copy(&mut stream, &mut io::sink()) {
            self.forget_written(&files)?;
            return Err(self.corrupt(
                at(&last),
                format!(
                    "{}; the members this run wrote were not recorded as done",
                    strip_location(&e)
                ),
            ));
        }
        Ok(files)
    }

    /// Members written from a stream that failed its end check may hold damaged bytes: a
    /// re-run writes them again.
    fn forget_written(&self, files: &[FileReport]) -> Result<()> {
        if let Some(state) = &self.state {
            for f in files.iter().filter(|f| f.action == Action::Copied) {
                state.forget_file(&self.run_id, &f.key)?;
            }
        }
        Ok(())
    }

    fn unzip(&self, input: &Input) -> Result<Vec<FileReport>> {
        let mut zip = zip::ZipArchive::new(input.sequential(0))
            .map_err(|e| self.corrupt("reading the central directory", e))?;
        let mut files = Vec::new();
        for index in 0..zip.len() {
            let name = match zip.name_for_index(index) {
                Some(Ok(name)) => name.as_bytes().to_vec(),
                _ => Vec::new(),
            };
            let shown = String::from_utf8_lossy(&name).into_owned();
            let mut member = zip
                .by_index(index)
                .map_err(|e| self.corrupt(format!("member '{shown}'"), e))?;
            if member.is_dir() {
                continue;
            }
            if member.is_symlink() {
                return Err(self.refused(&name, "links are not extracted"));
            }
            let key = member_key(&name).map_err(|why| self.refused(&name, why))?;
            let size = member.size();
            let offset = member.header_start();
            let report = self.member(&key, size, &mut member).map_err(|e| match e {
                MemberError::Read(e) => self.corrupt(
                    format!("member '{key}' (local header at archive byte {offset})"),
                    e,
                ),
                MemberError::Other(e) => e,
            })?;
            files.push(report);
        }
        Ok(files)
    }

    /// Writes one member (or skips it when an earlier run finished it), reading exactly
    /// `size` bytes from `data`.
    fn member(
        &self,
        key: &str,
        size: u64,
        data: &mut dyn Read,
    ) -> std::result::Result<FileReport, MemberError> {
        let report = |action, moved, checksum| FileReport {
            key: key.to_string(),
            destination_key: key.to_string(),
            size,
            moved,
            action,
            checksum,
            error: None,
        };
        if self.opts.dry_run {
            return Ok(report(Action::WouldCopy, 0, None));
        }
        let version = self.archive.version.as_deref();
        if let Some(c) = self
            .checkpoints
            .get(key)
            .filter(|c| c.done && c.source_size == size && c.source_version.as_deref() == version)
        {
            let at_dest = self.handle.block_on(self.sink.head(key))?;
            if at_dest.is_some_and(|d| {
                d.size == size && (c.dest_version.is_none() || d.version == c.dest_version)
            }) {
                self.progress.file_finished(key);
                return Ok(report(Action::Skipped, 0, c.checksum.clone()));
            }
        }
        if self.earlier {
            // A run killed between starting this member's upload and recording it.
            self.handle
                .block_on(self.sink.discard_unrecorded(&[key.to_string()]))?;
        }
        let started = Arc::new(AtomicBool::new(false));
        let on_start: OnStart = {
            let (state, run_id, key) = (self.state.clone(), self.run_id.clone(), key.to_string());
            let (version, part_size, started) = (
                self.archive.version.clone(),
                self.opts.part_size,
                started.clone(),
            );
            Box::new(move |upload_id| {
                started.store(true, Ordering::Relaxed);
                match &state {
                    Some(state) => state.begin_upload(
                        &run_id,
                        &key,
                        size,
                        version.as_deref(),
                        upload_id,
                        part_size,
                    ),
                    None => Ok(()),
                }
            })
        };
        let mut upload = UploadWriter::new(
            self.sink.clone(),
            key,
            self.handle.clone(),
            self.opts.part_size as usize,
            self.opts.concurrency,
            Some(on_start),
        );
        let mut hasher = self.opts.checksum.hasher();
        let mut buf = vec![0u8; 256 << 10];
        let mut copied = 0u64;
        let mut paused = false;
        while copied < size {
            let want = buf.len().min((size - copied) as usize);
            let n = data.read(&mut buf[..want]).map_err(MemberError::Read)?;
            if n == 0 {
                return Err(MemberError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the archive ends inside it, after {copied} of {size} bytes"),
                )));
            }
            hasher.update(&buf[..n]);
            upload
                .write_all(&buf[..n])
                .map_err(|e| MemberError::Other(upload.error_or(Error::store(key, e))))?;
            copied += n as u64;
            if !paused && started.load(Ordering::Relaxed) {
                paused = true;
                self.handle.block_on(crate::failpoint::part_recorded());
            }
        }
        // The member's own end: a zip's CRC check runs when its reader reaches the end.
        if data.read(&mut buf[..1]).map_err(MemberError::Read)? != 0 {
            return Err(MemberError::Read(io::Error::other(format!(
                "holds more than the {size} bytes its header says"
            ))));
        }
        let written = upload.commit()?;
        if written.size != size {
            return Err(MemberError::Other(Error::store(
                self.sink.address().join(key),
                format!(
                    "destination holds {} bytes after the write, expected {size}",
                    written.size
                ),
            )));
        }
        let digest = hasher.finish();
        if let Some(state) = &self.state {
            state.file_done(
                &self.run_id,
                key,
                size,
                version,
                Some(&digest.to_string()),
                written.version.as_deref(),
            )?;
        }
        self.progress.file_finished(key);
        self.handle.block_on(crate::failpoint::file_recorded());
        Ok(report(Action::Copied, size, Some(digest.to_string())))
    }
}

/// Why a member failed: its bytes could not be read from the archive (corrupt, truncated),
/// or something else (the destination, the checkpoint).
enum MemberError {
    Read(io::Error),
    Other(Error),
}

impl From<Error> for MemberError {
    fn from(e: Error) -> Self {
        Self::Other(e)
    }
}

/// A decoder's error names the archive already; the caller names it once.
fn strip_location(e: &io::Error) -> String {
    let text = e.to_string();
    match text.split_once(": corrupt ") {
        Some((_, rest)) => format!("corrupt {rest}"),
        None => text,
    }
}

async fn pack(
    src: &DataAddress,
    dst: &DataAddress,
    opts: &CopyOptions,
    kind: ArchiveKind,
    progress: Arc<dyn Progress>,
    run_id: String,
) -> Result<CopyReport> {
    let started = Instant::now();
    let (filter, source, sink, listing) = crate::copy::open_and_list(src, dst, opts).await?;
    if dst.names_a_directory() || sink.is_directory().await? {
        return Err(Error::invalid_option(
            "--archive",
            format!("{dst} is a directory or prefix; name the archive, e.g. …/drop.{kind}"),
        ));
    }
    let mut members: Vec<Entry> = listing
        .entries
        .into_iter()
        .filter(|e| listing.single_object || filter.allows(&e.key))
        .map(|mut e| {
            if listing.single_object {
                e.key = src
                    .path_text()
                    .rsplit('/')
                    .next()
                    .unwrap_or("file")
                    .to_string();
            }
            e
        })
        .collect();
    members.sort_by(|a, b| a.key.cmp(&b.key));
    let total: u64 = members.iter().map(|e| e.size).sum();
    let report_of = |action, moved, checksum| FileReport {
        key: dst.to_string(),
        destination_key: String::new(),
        size: moved,
        moved,
        action,
        checksum,
        error: None,
    };
    if opts.dry_run {
        let files = members
            .into_iter()
            .map(|e| FileReport {
                destination_key: String::new(),
                moved: 0,
                action: Action::WouldCopy,
                checksum: None,
                error: None,
                size: e.size,
                key: e.key,
            })
            .collect();
        return Ok(CopyReport::new(
            files,
            opts.checksum,
            started.elapsed(),
            false,
            progress.as_ref(),
        ));
    }
    let state = Arc::new(opts.state_store()?);
    // A killed pack leaves an upload that no one will complete: discard it, start over.
    discard_uploads(&state, &run_id, sink.as_ref()).await?;
    state.forget_run(&run_id)?;
    state.start_run(&run_id, &src.to_string(), &dst.to_string())?;
    progress.planned(members.len() as u64, total);
    let observer = progress.clone();
    let job = Packing {
        source,
        sink,
        members,
        kind,
        state: state.clone(),
        run_id: run_id.clone(),
        opts: opts.clone(),
        handle: Handle::current(),
        progress,
    };
    let (size, digest) = tokio::task::spawn_blocking(move || job.run())
        .await
        .map_err(join_error)??;
    let report = CopyReport::new(
        vec![report_of(Action::Copied, size, Some(digest))],
        opts.checksum,
        started.elapsed(),
        true,
        observer.as_ref(),
    );
    state.finish_run(&run_id, crate::report::run_outcome(report.failed))?;
    Ok(report)
}

struct Packing {
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    members: Vec<Entry>,
    kind: ArchiveKind,
    state: Arc<StateStore>,
    run_id: String,
    opts: CopyOptions,
    handle: Handle,
    progress: Arc<dyn Progress>,
}

/// What the archive is written into: the upload, hashed on the way.
struct Hashed {
    upload: UploadWriter,
    hasher: ferry_core::checksum::Hasher,
    written: u64,
}

impl Write for Hashed {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.upload.write(data)?;
        self.hasher.update(&data[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Packing {
    fn run(self) -> Result<(u64, String)> {
        let on_start: OnStart = {
            let (state, run_id, part_size) =
                (self.state.clone(), self.run_id.clone(), self.opts.part_size);
            Box::new(move |upload_id| {
                state.begin_upload(&run_id, "", 0, None, upload_id, part_size)
            })
        };
        let upload = UploadWriter::new(
            self.sink.clone(),
            "",
            self.handle.clone(),
            self.opts.part_size as usize,
            self.opts.concurrency,
            Some(on_start),
        );
        let out = Hashed {
            upload: upload.clone(),
            hasher: self.opts.checksum.hasher(),
            written: 0,
        };
        let shown = self.sink.address().to_string();
        let fail = |e: io::Error| upload.error_or(Error::store(&shown, e));
        let out = match (self.kind, self.kind.codec()) {
            (ArchiveKind::Zip, _) => self.zip(out)?,
            (_, None) => self.tar(out)?,
            (_, Some(codec)) => {
                let packed = codec.writer(out).map_err(fail)?;
                self.tar(packed)?.finish().map_err(fail)?
            }
        };
        let written = upload.commit()?;
        if written.size != out.written {
            return Err(Error::store(
                &shown,
                format!(
                    "destination holds {} bytes after the write, expected {}",
                    written.size, out.written
                ),
            ));
        }
        let digest = out.hasher.finish().to_string();
        self.state.file_done(
            &self.run_id,
            "",
            out.written,
            None,
            Some(&digest),
            written.version.as_deref(),
        )?;
        Ok((out.written, digest))
    }

    /// Reads a member whole, failing when it is shorter than listed.
    fn reader(&self, entry: &Entry) -> impl Read {
        Exact {
            inner: open_input(
                &self.source,
                entry,
                &self.handle,
                Some(self.progress.clone()),
            )
            .sequential(0)
            .take(entry.size),
            left: entry.size,
        }
    }

    fn member_error(&self, entry: &Entry, e: io::Error) -> Error {
        let location = crate::records::location(&self.source, entry);
        match e.into_inner() {
            Some(inner) => match inner.downcast::<Error>() {
                Ok(e) => *e,
                Err(other) => Error::data(location, other),
            },
            None => Error::data(location, "read failed"),
        }
    }

    fn tar<W: Write>(&self, out: W) -> Result<W> {
        let mut tar = tar::Builder::new(out);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for entry in &self.members {
            let mut header = tar::Header::new_gnu();
            header.set_size(entry.size);
            header.set_mode(0o644);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, &entry.key, self.reader(entry))
                .map_err(|e| self.member_error(entry, e))?;
            self.handle.block_on(self.source.check_unchanged(entry))?;
            self.progress.file_finished(&entry.key);
        }
        tar.into_inner()
            .map_err(|e| Error::store(self.sink.address(), e))
    }

    fn zip<W: Write>(&self, out: W) -> Result<W> {
        let mut zip = zip::ZipWriter::new_stream(out);
        let shown = self.sink.address().to_string();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        for entry in &self.members {
            zip.start_file(entry.key.as_str(), options)
                .map_err(|e| Error::store(&shown, e))?;
            io::copy(&mut self.reader(entry), &mut zip).map_err(|e| self.member_error(entry, e))?;
            self.handle.block_on(self.source.check_unchanged(entry))?;
            self.progress.file_finished(&entry.key);
        }
        let out = zip.finish().map_err(|e| Error::store(&shown, e))?;
        Ok(out.into_inner())
    }
}

/// A reader of exactly `left` more bytes: ending early is an error, not a short member.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("ended {} bytes before its listed size", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_that_leave_the_destination_are_refused() {
        assert_eq!(member_key(b"a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(member_key(b"./a//./b.txt").unwrap(), "a/b.txt");
        for bad in [
            &b"../evil"[..],
            b"a/../../evil",
            b"/etc/passwd",
            b"\\evil",
            b"a\\..\\..\\evil",
            b"C:/evil",
            b"",
            b"./",
            b"a\0b",
            b"\xff",
        ] {
            assert!(member_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kinds_come_from_names_and_flags() {
        assert_eq!(
            ArchiveKind::from_name("in/drop.TAR.ZST"),
            Some(ArchiveKind::TarZst)
        );
        assert_eq!(ArchiveKind::from_name("drop.tgz"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::from_name("drop.tar"), Some(ArchiveKind::Tar));
        assert_eq!(ArchiveKind::from_name("drop.zip"), Some(ArchiveKind::Zip));
        assert_eq!(ArchiveKind::from_name("drop.csv.gz"), None);
        assert_eq!(
            "tar.zst".parse::<ArchiveKind>().unwrap(),
            ArchiveKind::TarZst
        );
        assert!("rar".parse::<ArchiveKind>().is_err());
    }
}
