//! A file tree or an object prefix read for serving over HTTP (pull flows): what is at a
//! key (an object, or the tree under a directory), and a range of an object's bytes as a
//! stream read as it is sent, so an object is never held whole in memory.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Component, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::{Bytes, BytesMut};
use ferry_core::{DataAddress, Error, Result};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::object::{ObjectBackend, Pace};

/// Bytes read from a local file at a time.
const FILE_CHUNK: usize = 1024 * 1024;

/// One file or object, relative to the served root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedObject {
    /// Its key relative to the served root, `/`-separated.
    pub key: String,
    pub size: u64,
    /// Milliseconds since the epoch.
    pub last_modified_ms: Option<i64>,
    /// Without quotes.
    pub etag: Option<String>,
}

/// What a key names.
#[derive(Debug)]
pub enum Lookup {
    Object(ServedObject),
    /// A directory or prefix: every object under it, keys relative to it, sorted.
    Tree(Vec<ServedObject>),
}

enum Root {
    Objects {
        backend: Box<ObjectBackend>,
        /// The prefix keys are below ("" for the bucket's root), without a trailing `/`.
        base: String,
    },
    Local {
        /// Canonical.
        root: PathBuf,
    },
}

/// A source a pull flow serves: a directory, a prefix, or a single file or object (then
/// served under its own name).
pub struct Served {
    root: Root,
    /// The only key served when the source is a single file or object.
    only: Option<String>,
    address: DataAddress,
}

/// Splits a served key into its segments, refusing anything that could leave the root.
/// Keys reaching here are already percent-decoded.
pub fn key_segments(key: &str) -> std::result::Result<Vec<&str>, &'static str> {
    if key.starts_with('/') {
        return Err("an absolute path");
    }
    let mut out = Vec::new();
    for segment in key.split('/') {
        match segment {
            "" => continue,
            "." | ".." => return Err("'.' or '..' in the path"),
            s if s.contains('\\') => return Err("a backslash in the path"),
            s if s.chars().any(|c| c.is_control()) => {
                return Err("a control character in the path")
            }
            // `C:` and the like would be roots on other systems.
            s if s.len() == 2 && s.ends_with(':') => return Err("a drive letter in the path"),
            s => out.push(s),
        }
    }
    Ok(out)
}

impl Served {
    /// Opens the source `address` names (a local path, S3 or Azure).
    pub async fn open(address: &DataAddress) -> Result<Self> {
        match address {
            DataAddress::Local { path } => {
                let path = path.clone();
                let canonical = tokio::fs::canonicalize(&path)
                    .await
                    .map_err(|_| Error::not_found(address))?;
                let meta = tokio::fs::metadata(&canonical)
                    .await
                    .map_err(|_| Error::not_found(address))?;
                if meta.is_dir() {
                    return Ok(Self {
                        root: Root::Local { root: canonical },
                        only: None,
                        address: address.clone(),
                    });
                }
                let name = canonical
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| Error::not_found(address))?;
                let parent = canonical
                    .parent()
                    .map(PathBuf::from)
                    .ok_or_else(|| Error::not_found(address))?;
                Ok(Self {
                    root: Root::Local { root: parent },
                    only: Some(name),
                    address: address.clone(),
                })
            }
            DataAddress::S3 { .. } | DataAddress::Azure { .. } | DataAddress::Gcs { .. } => {
                let backend = ObjectBackend::with_pace(address.clone(), Pace::Streamed)?;
                let prefix = backend.prefix.clone();
                if !prefix.is_empty() && !address.names_a_directory() {
                    let path = Path::from(prefix.as_str());
                    match backend.store.head(&path).await {
                        Ok(_) => {
                            let (base, name) = match prefix.rsplit_once('/') {
                                Some((base, name)) => (base.to_string(), name.to_string()),
                                None => (String::new(), prefix.clone()),
                            };
                            return Ok(Self {
                                root: Root::Objects {
                                    backend: Box::new(backend),
                                    base,
                                },
                                only: Some(name),
                                address: address.clone(),
                            });
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(backend.error(&path, e)),
                    }
                }
                Ok(Self {
                    root: Root::Objects {
                        backend: Box::new(backend),
                        base: prefix,
                    },
                    only: None,
                    address: address.clone(),
                })
            }
            other => Err(Error::not_supported(
                other,
                "a pull flow serves files, S3 or Azure objects",
            )),
        }
    }

    pub fn address(&self) -> &DataAddress {
        &self.address
    }

    /// What `key` names: an object, or the tree below a directory (`""` is the root).
    pub async fn lookup(&self, key: &str) -> Result<Lookup> {
        let segments = key_segments(key)
            .map_err(|why| Error::invalid_option("path", format!("'{key}': {why}")))?;
        let key = segments.join("/");
        if let Some(only) = &self.only {
            if key.is_empty() {
                return Ok(Lookup::Tree(vec![self.head(only).await?]));
            }
            if &key != only {
                return Err(Error::not_found(format!("{}/{key}", self.address)));
            }
            return Ok(Lookup::Object(self.head(only).await?));
        }
        match &self.root {
            Root::Local { .. } => {
                let path = self.local_path(&key).await?;
                let meta = tokio::fs::metadata(&path)
                    .await
                    .map_err(|_| Error::not_found(format!("{}/{key}", self.address)))?;
                if meta.is_dir() {
                    let root = path.clone();
                    let entries = tokio::task::spawn_blocking(move || walk(&root))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    return Ok(Lookup::Tree(entries));
                }
                Ok(Lookup::Object(file_object(key, &meta)))
            }
            Root::Objects { backend, base } => {
                if !key.is_empty() {
                    let path = object_path(base, &key);
                    match backend.store.head(&path).await {
                        Ok(meta) => return Ok(Lookup::Object(object(key, &meta))),
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(backend.error(&path, e)),
                    }
                }
                let dir = if key.is_empty() {
                    base.clone()
                } else if base.is_empty() {
                    key.clone()
                } else {
                    format!("{base}/{key}")
                };
                let prefix = (!dir.is_empty()).then(|| Path::from(dir.as_str()));
                let strip = if dir.is_empty() {
                    String::new()
                } else {
                    format!("{dir}/")
                };
                let metas: Vec<object_store::ObjectMeta> = backend
                    .store
                    .list(prefix.as_ref())
                    .try_collect()
                    .await
                    .map_err(|e| backend.error(&prefix.clone().unwrap_or_default(), e))?;
                if metas.is_empty() && !key.is_empty() {
                    return Err(Error::not_found(format!("{}/{key}", self.address)));
                }
                let mut entries: Vec<ServedObject> = metas
                    .iter()
                    .map(|m| {
                        let full = m.location.as_ref();
                        object(full.strip_prefix(&strip).unwrap_or(full).to_string(), m)
                    })
                    .collect();
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(Lookup::Tree(entries))
            }
        }
    }

    async fn head(&self, key: &str) -> Result<ServedObject> {
        match &self.root {
            Root::Local { .. } => {
                let path = self.local_path(key).await?;
                let meta = tokio::fs::metadata(&path)
                    .await
                    .map_err(|_| Error::not_found(format!("{}/{key}", self.address)))?;
                Ok(file_object(key.to_string(), &meta))
            }
            Root::Objects { backend, base } => {
                let path = object_path(base, key);
                let meta = backend
                    .store
                    .head(&path)
                    .await
                    .map_err(|e| backend.error(&path, e))?;
                Ok(object(key.to_string(), &meta))
            }
        }
    }

    /// The local path of `key`, which must stay below the root once symbolic links are
    /// followed.
    async fn local_path(&self, key: &str) -> Result<PathBuf> {
        let Root::Local { root } = &self.root else {
            return Err(Error::Internal("not a local root".into()));
        };
        let mut path = root.clone();
        for segment in key_segments(key)
            .map_err(|why| Error::invalid_option("path", format!("'{key}': {why}")))?
        {
            path.push(segment);
        }
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
        {
            return Err(Error::invalid_option(
                "path",
                format!("'{key}': not below the root"),
            ));
        }
        let missing = || Error::not_found(format!("{}/{key}", self.address));
        let canonical = tokio::fs::canonicalize(&path)
            .await
            .map_err(|_| missing())?;
        if !canonical.starts_with(root) {
            // A symbolic link out of the tree: as if it were not there.
            return Err(missing());
        }
        Ok(canonical)
    }

    /// `object`'s bytes in `range`, read as they are sent. A version other than the one
    /// looked up ends the stream with an error.
    pub async fn read(
        &self,
        object: &ServedObject,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        match &self.root {
            Root::Local { .. } => {
                let path = self.local_path(&object.key).await?;
                let shown = format!("{}/{}", self.address, object.key);
                let mut file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| Error::store(&shown, e))?;
                file.seek(SeekFrom::Start(range.start))
                    .await
                    .map_err(|e| Error::store(&shown, e))?;
                let left = range.end - range.start;
                let stream =
                    stream::try_unfold((file, left, shown), |(mut file, left, shown)| async move {
                        if left == 0 {
                            return Ok(None);
                        }
                        let want = left.min(FILE_CHUNK as u64) as usize;
                        let mut buf = BytesMut::zeroed(want);
                        let mut filled = 0;
                        while filled < want {
                            let n = file
                                .read(&mut buf[filled..])
                                .await
                                .map_err(|e| Error::store(&shown, e))?;
                            if n == 0 {
                                return Err(Error::source_changed(
                                    &shown,
                                    "the file became shorter",
                                ));
                            }
                            filled += n;
                        }
                        Ok(Some((buf.freeze(), (file, left - want as u64, shown))))
                    });
                Ok(stream.boxed())
            }
            Root::Objects { backend, base } => {
                // One request per range asked for, streamed as the reader takes it (a stall,
                // not a slow reader, ends it): a whole object is one plain GET, which every
                // store serves best, and a download costs one request, not one per window.
                let whole = range.start == 0 && range.end == object.size;
                let options = GetOptions {
                    range: (!whole).then(|| GetRange::Bounded(range.clone())),
                    if_match: object.etag.clone(),
                    ..Default::default()
                };
                let path = object_path(base, &object.key);
                let errors = ObjectErrors {
                    backend_shown: format!("{}/{}", self.address, object.key),
                };
                let result = backend
                    .store
                    .get_opts(&path, options)
                    .await
                    .map_err(|e| errors.map(e))?;
                if result.range != range {
                    return Err(Error::source_changed(
                        &errors.backend_shown,
                        "the store answered another range than the one asked for",
                    ));
                }
                Ok(result.into_stream().map_err(move |e| errors.map(e)).boxed())
            }
        }
    }
}

/// Errors of a read in progress, which outlives the backend.
#[derive(Clone)]
struct ObjectErrors {
    backend_shown: String,
}

impl ObjectErrors {
    fn map(&self, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::not_found(&self.backend_shown),
            object_store::Error::Precondition { .. } => {
                Error::source_changed(&self.backend_shown, "its ETag changed during the read")
            }
            other => Error::store(&self.backend_shown, other),
        }
    }
}

fn object_path(base: &str, key: &str) -> Path {
    if base.is_empty() {
        Path::from(key)
    } else {
        Path::from(format!("{base}/{key}"))
    }
}

fn object(key: String, meta: &object_store::ObjectMeta) -> ServedObject {
    ServedObject {
        key,
        size: meta.size,
        last_modified_ms: Some(meta.last_modified.timestamp_millis()),
        etag: meta
            .e_tag
            .as_deref()
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string()),
    }
}

fn file_object(key: String, meta: &std::fs::Metadata) -> ServedObject {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    ServedObject {
        key,
        size: meta.len(),
        last_modified_ms: modified.map(|d| d.as_millis() as i64),
        // Size and modification time: what changes when the file does.
        etag: modified.map(|d| format!("{:x}-{:x}", meta.len(), d.as_nanos())),
    }
}

/// Every regular file below `root`, keys relative to it; symbolic links are not followed.
fn walk(root: &std::path::Path) -> Vec<ServedObject> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = format!("{prefix}{name}");
            if kind.is_dir() {
                dirs.push((entry.path(), format!("{key}/")));
            } else if kind.is_file() {
                if let Ok(meta) = entry.metadata() {
                    out.push(file_object(key, &meta));
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_leave_the_root() {
        assert_eq!(key_segments("a/b.bin").unwrap(), ["a", "b.bin"]);
        assert_eq!(key_segments("a//b/").unwrap(), ["a", "b"]);
        assert!(key_segments("").unwrap().is_empty());
        for bad in [
            "../x",
            "a/../../x",
            "..",
            "./a",
            "/etc/passwd",
            "a\\..\\x",
            "C:",
            "a/\u{0}",
        ] {
            assert!(key_segments(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_local_tree_is_looked_up_and_read_in_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("in/sub")).unwrap();
        std::fs::write(dir.path().join("in/a.txt"), b"hello world").unwrap();
        std::fs::write(dir.path().join("in/sub/b.txt"), b"b").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"no").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), dir.path().join("in/link"))
            .unwrap();
        let served =
            Served::open(&DataAddress::parse(dir.path().join("in").to_str().unwrap()).unwrap())
                .await
                .unwrap();
        let Lookup::Tree(all) = served.lookup("").await.unwrap() else {
            panic!("a tree")
        };
        let keys: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a.txt", "sub/b.txt"]);
        let Lookup::Object(a) = served.lookup("a.txt").await.unwrap() else {
            panic!("an object")
        };
        let bytes: Vec<Bytes> = served
            .read(&a, 6..11)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(bytes.concat(), b"world");
        assert!(matches!(
            served.lookup("link").await,
            Err(Error::NotFound { .. })
        ));
        assert!(served.lookup("../secret.txt").await.is_err());
    }
}
