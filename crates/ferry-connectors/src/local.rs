//! Local disks: listing by walking the tree, ranged reads with `pread`, uploads into a
//! hidden temporary file beside the target that is renamed into place when complete, and
//! part copies through the kernel (`copy_file_range`, which reflinks where the filesystem
//! can).

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ferry_core::store::{ListStream, Listing};
use ferry_core::{DataAddress, Entry, Error, PartToken, Result, Sink, Source, UploadId};

/// Marks ferry's temporary files; listings skip them.
const PARTIAL_SUFFIX: &str = ".ferry-partial";

#[derive(Debug)]
pub struct LocalStore {
    address: DataAddress,
    root: PathBuf,
    /// Flush file data to disk before renaming into place. Off by default, like `cp` and
    /// rclone: renames survive a killed process either way; only a power loss needs it.
    fsync: bool,
}

impl LocalStore {
    pub fn new(address: DataAddress) -> Result<Self> {
        let DataAddress::Local { path } = &address else {
            return Err(Error::Internal(format!("{address} is not a local path")));
        };
        let root = path.clone();
        let fsync = std::env::var("FERRY_FSYNC").is_ok_and(|v| v == "1" || v == "true");
        Ok(Self {
            address,
            root,
            fsync,
        })
    }

    fn target(&self, key: &str) -> PathBuf {
        if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }

    fn shown(&self, path: &Path) -> String {
        path.display().to_string()
    }

    fn temp_path(&self, key: &str, upload: &str) -> Result<PathBuf> {
        let target = self.target(key);
        let name = target
            .file_name()
            .ok_or_else(|| Error::store(self.shown(&target), "destination has no file name"))?;
        let temp = format!(".{}.{upload}{PARTIAL_SUFFIX}", name.to_string_lossy());
        Ok(target.with_file_name(temp))
    }

    fn prepare_parent(&self, target: &Path) -> Result<()> {
        if target.is_dir() {
            return Err(Error::store(
                self.shown(target),
                "is a directory; name a file, or end the destination with '/' to copy into it",
            ));
        }
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| Error::io(self.shown(parent), &e))?;
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// What changes when a file's content may have changed.
fn version_of(meta: &fs::Metadata) -> Option<String> {
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("{}.{:09}", mtime.as_secs(), mtime.subsec_nanos()))
}

fn entry_for(key: String, path: &Path, meta: &fs::Metadata) -> Entry {
    Entry {
        key,
        location: path.to_string_lossy().into_owned(),
        size: meta.len(),
        version: version_of(meta),
    }
}

/// How many listed entries wait between the walk and its reader.
const LIST_CHANNEL: usize = 1024;

/// Walks the tree below `dir` depth first and hands every file to `emit`, in key order:
/// siblings are visited by name, a directory as if its name ended in `/`, so that every
/// key below it falls where its first byte puts it. Memory is one directory's names per
/// level. Stops early, with `Ok(false)`, once `emit` says so.
fn walk(root: &Path, dir: &Path, emit: &mut dyn FnMut(Entry) -> bool) -> Result<bool> {
    let read = fs::read_dir(dir).map_err(|e| Error::io(dir.display(), &e))?;
    let mut children = Vec::new();
    for item in read {
        let item = item.map_err(|e| Error::io(dir.display(), &e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.ends_with(PARTIAL_SUFFIX) {
            continue;
        }
        let path = item.path();
        let file_type = item
            .file_type()
            .map_err(|e| Error::io(path.display(), &e))?;
        let order = if file_type.is_dir() {
            format!("{name}/")
        } else {
            name
        };
        children.push((order, path, file_type));
    }
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, path, file_type) in children {
        if file_type.is_dir() {
            if !walk(root, &path, emit)? {
                return Ok(false);
            }
            continue;
        }
        // Follow links to files; skip links to directories (they could form cycles).
        let meta = fs::metadata(&path).map_err(|e| Error::io(path.display(), &e))?;
        if !meta.is_file() {
            if file_type.is_symlink() && meta.is_dir() {
                tracing::warn!(path = %path.display(), "skipping a link to a directory");
            }
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if !emit(entry_for(key, &path, &meta)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn unchanged(entry: &Entry) -> Result<()> {
    let path = Path::new(&entry.location);
    let meta = fs::metadata(path).map_err(|e| Error::io(path.display(), &e))?;
    if meta.len() != entry.size {
        return Err(Error::source_changed(
            path.display(),
            format!("size was {} and is now {}", entry.size, meta.len()),
        ));
    }
    if version_of(&meta) != entry.version {
        return Err(Error::source_changed(
            path.display(),
            "modification time changed",
        ));
    }
    Ok(())
}

#[async_trait]
impl Source for LocalStore {
    fn address(&self) -> &DataAddress {
        &self.address
    }

    async fn list(&self) -> Result<Listing> {
        self.list_stream().await?.collect().await
    }

    async fn list_stream(&self) -> Result<ListStream> {
        let root = self.root.clone();
        let meta = {
            let root = root.clone();
            blocking(move || fs::metadata(&root).map_err(|e| Error::io(root.display(), &e))).await?
        };
        if meta.is_file() {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(ListStream::from_listing(Listing {
                single_object: true,
                entries: vec![entry_for(name, &root, &meta)],
            }));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Entry>>(LIST_CHANNEL);
        tokio::task::spawn_blocking(move || {
            let mut emit = |entry| tx.blocking_send(Ok(entry)).is_ok();
            if let Err(e) = walk(&root, &root, &mut emit) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let entries = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(ListStream {
            single_object: false,
            entries: Box::pin(entries),
        })
    }

    async fn read(&self, entry: &Entry, range: Range<u64>) -> Result<Bytes> {
        let entry = entry.clone();
        blocking(move || {
            let path = Path::new(&entry.location);
            let file = File::open(path).map_err(|e| Error::io(path.display(), &e))?;
            let len = usize::try_from(range.end - range.start)
                .map_err(|_| Error::Internal("range too large".into()))?;
            let mut buf = BytesMut::zeroed(len);
            file.read_exact_at(&mut buf, range.start).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    Error::source_changed(path.display(), "file is shorter than when listed")
                } else {
                    Error::io(path.display(), &e)
                }
            })?;
            Ok(buf.freeze())
        })
        .await
    }

    fn local_path(&self, entry: &Entry) -> Option<PathBuf> {
        Some(PathBuf::from(&entry.location))
    }

    async fn check_unchanged(&self, entry: &Entry) -> Result<()> {
        let entry = entry.clone();
        blocking(move || unchanged(&entry)).await
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

fn new_upload_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seq = UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}-{:x}-{seq:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

#[async_trait]
impl Sink for LocalStore {
    fn address(&self) -> &DataAddress {
        &self.address
    }

    async fn is_directory(&self) -> Result<bool> {
        Ok(self.address.names_a_directory() || self.root.is_dir())
    }

    async fn head(&self, key: &str) -> Result<Option<Entry>> {
        let path = self.target(key);
        let key = key.to_string();
        blocking(move || match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(entry_for(key, &path, &meta))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path.display(), &e)),
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<Entry> {
        let target = self.target(key);
        self.prepare_parent(&target)?;
        let temp = self.temp_path(key, &new_upload_id())?;
        let key = key.to_string();
        blocking(move || {
            let written = fs::write(&temp, &data)
                .and_then(|()| fs::rename(&temp, &target))
                .map_err(|e| Error::io(target.display(), &e));
            if written.is_err() {
                let _ = fs::remove_file(&temp);
            }
            written?;
            let meta = fs::metadata(&target).map_err(|e| Error::io(target.display(), &e))?;
            Ok(entry_for(key, &target, &meta))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.target(key);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path.display(), &e)),
        })
        .await
    }

    async fn create_upload(&self, key: &str) -> Result<UploadId> {
        let target = self.target(key);
        self.prepare_parent(&target)?;
        let id = new_upload_id();
        let temp = self.temp_path(key, &id)?;
        blocking(move || {
            File::create(&temp).map_err(|e| Error::io(temp.display(), &e))?;
            Ok(id)
        })
        .await
    }

    async fn put_part(
        &self,
        key: &str,
        upload: &UploadId,
        index: usize,
        offset: u64,
        data: Bytes,
    ) -> Result<PartToken> {
        let temp = self.temp_path(key, upload)?;
        blocking(move || {
            let file = open_partial(&temp)?;
            file.write_all_at(&data, offset)
                .map_err(|e| Error::io(temp.display(), &e))?;
            Ok(PartToken(index.to_string()))
        })
        .await
    }

    async fn copy_part_from_file(
        &self,
        key: &str,
        upload: &UploadId,
        index: usize,
        src: &Path,
        range: Range<u64>,
    ) -> Result<Option<PartToken>> {
        let temp = self.temp_path(key, upload)?;
        let src = src.to_path_buf();
        blocking(move || {
            let input = File::open(&src).map_err(|e| Error::io(src.display(), &e))?;
            let output = open_partial(&temp)?;
            kernel_copy::copy_range(&input, &output, range.start, range.end - range.start)
                .map_err(|e| Error::io(temp.display(), &e))?;
            Ok(Some(PartToken(index.to_string())))
        })
        .await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload: &UploadId,
        _parts: Vec<PartToken>,
    ) -> Result<Entry> {
        let temp = self.temp_path(key, upload)?;
        let target = self.target(key);
        let key = key.to_string();
        let fsync = self.fsync;
        blocking(move || {
            // A missing partial file means the upload is gone (completed by an earlier
            // process, or removed): NotFound, so the engine checks the destination.
            let file = match OpenOptions::new().write(true).open(&temp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::not_found(target.display()))
                }
                other => other.map_err(|e| Error::io(temp.display(), &e))?,
            };
            if fsync {
                file.sync_data()
                    .map_err(|e| Error::io(temp.display(), &e))?;
            }
            fs::rename(&temp, &target).map_err(|e| Error::io(target.display(), &e))?;
            let meta = fs::metadata(&target).map_err(|e| Error::io(target.display(), &e))?;
            Ok(entry_for(key, &target, &meta))
        })
        .await
    }

    /// Removes the partial files of `keys`, one directory listing per directory.
    async fn discard_unrecorded(&self, keys: &[String]) -> Result<()> {
        let mut by_dir: std::collections::BTreeMap<PathBuf, Vec<String>> = Default::default();
        for key in keys {
            let target = self.target(key);
            if let (Some(dir), Some(name)) = (target.parent(), target.file_name()) {
                by_dir
                    .entry(dir.to_path_buf())
                    .or_default()
                    .push(format!(".{}.", name.to_string_lossy()));
            }
        }
        blocking(move || {
            for (dir, prefixes) in by_dir {
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.map_while(std::result::Result::ok) {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.ends_with(PARTIAL_SUFFIX)
                        && prefixes.iter().any(|p| name.starts_with(p.as_str()))
                    {
                        let path = entry.path();
                        match fs::remove_file(&path) {
                            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                                return Err(Error::io(path.display(), &e))
                            }
                            _ => {}
                        }
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn abort_upload(&self, key: &str, upload: &UploadId) -> Result<()> {
        let temp = self.temp_path(key, upload)?;
        blocking(move || match fs::remove_file(&temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(temp.display(), &e)),
            _ => Ok(()),
        })
        .await
    }
}

/// Checksums a byte range of a local file. The buffer is small enough to stay in the CPU's
/// cache, so the copy out of the page cache and the checksum both run at cache speed.
pub fn checksum_range(
    path: &Path,
    range: Range<u64>,
    algo: ferry_core::ChecksumAlgo,
) -> Result<ferry_core::Digest> {
    let file = File::open(path).map_err(|e| Error::io(path.display(), &e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut hasher = algo.hasher();
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::source_changed(path.display(), "file is shorter than when listed")
            } else {
                Error::io(path.display(), &e)
            }
        })?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher.finish())
}

fn open_partial(temp: &Path) -> Result<File> {
    OpenOptions::new().write(true).open(temp).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::store(
                temp.display(),
                "the partial file of this upload is gone; it will restart",
            )
        } else {
            Error::io(temp.display(), &e)
        }
    })
}

/// The one place ferry calls the kernel's copy directly.
#[allow(unsafe_code)]
mod kernel_copy {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    /// Copies `len` bytes from `input` at `offset` to `output` at the same offset.
    pub fn copy_range(input: &File, output: &File, offset: u64, len: u64) -> io::Result<()> {
        let mut off_in = offset as libc::loff_t;
        let mut off_out = offset as libc::loff_t;
        let mut left = len;
        while left > 0 {
            let chunk = left.min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the duration of the call, and the offset
            // pointers refer to live locals; the kernel reads and updates only those.
            let n = unsafe {
                libc::copy_file_range(
                    input.as_raw_fd(),
                    &mut off_in,
                    output.as_raw_fd(),
                    &mut off_out,
                    chunk,
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                return match err.raw_os_error() {
                    // Not supported between these files: copy through user space instead.
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                        copy_through_buffer(input, output, off_in as u64, left)
                    }
                    _ => Err(err),
                };
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source file is shorter than when listed",
                ));
            }
            left -= n as u64;
        }
        Ok(())
    }

    fn copy_through_buffer(
        input: &File,
        output: &File,
        mut offset: u64,
        mut left: u64,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; (1 << 20).min(left as usize)];
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            input.read_exact_at(&mut buf[..n], offset)?;
            output.write_all_at(&buf[..n], offset)?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(())
    }
}
