//! The byte-path traits: a [`Source`] lists objects and reads byte ranges, a [`Sink`]
//! writes objects whole or in parts and makes them visible only when complete.
//!
//! Upload ids and part tokens are plain strings so that a checkpoint can persist them and
//! a later process can finish an upload that an earlier one started.

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::{DataAddress, Result};

/// One file or object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Name relative to the listed address, `/`-separated; what the destination is named.
    pub key: String,
    /// Where the store finds it (full path or object key); opaque outside the store.
    pub location: String,
    pub size: u64,
    /// Changes whenever the content may have changed: an ETag, or a file's mtime.
    pub version: Option<String>,
}

/// What a [`Source`] found at its address.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// True when the address named one object rather than a directory or prefix.
    pub single_object: bool,
    pub entries: Vec<Entry>,
}

/// What a [`Source`] finds at its address, as it finds it: entries arrive in key order
/// (byte order of `key`), a page at a time, so a caller can plan and copy ten million
/// objects without holding them all.
pub struct ListStream {
    /// True when the address named one object rather than a directory or prefix.
    pub single_object: bool,
    pub entries: BoxStream<'static, Result<Entry>>,
}

impl ListStream {
    /// A listing already in memory, as a stream.
    pub fn from_listing(listing: Listing) -> Self {
        Self {
            single_object: listing.single_object,
            entries: futures::stream::iter(listing.entries.into_iter().map(Ok)).boxed(),
        }
    }

    /// Collects the whole listing (for callers that need every entry at once).
    pub async fn collect(self) -> Result<Listing> {
        Ok(Listing {
            single_object: self.single_object,
            entries: self.entries.try_collect().await?,
        })
    }
}

impl fmt::Debug for ListStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListStream")
            .field("single_object", &self.single_object)
            .finish_non_exhaustive()
    }
}

pub type UploadId = String;

/// Returned by a part upload; handed back, in part order, to complete the upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartToken(pub String);

#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    fn address(&self) -> &DataAddress;

    /// Lists the object the address names, or every object below it (recursively).
    /// A missing address is [`crate::Error::NotFound`].
    async fn list(&self) -> Result<Listing>;

    /// The same entries as [`Source::list`], in key order, as the store pages through
    /// them; a missing address is an error before the first entry. Stores that can page
    /// override it; the default lists everything first.
    async fn list_stream(&self) -> Result<ListStream> {
        Ok(ListStream::from_listing(self.list().await?))
    }

    /// Reads `range` of `entry`; fails with [`crate::Error::SourceChanged`] when the
    /// object no longer matches the listed size or version.
    async fn read(&self, entry: &Entry, range: Range<u64>) -> Result<Bytes>;

    /// The file behind `entry` when it is on a local disk (enables kernel copies).
    fn local_path(&self, _entry: &Entry) -> Option<PathBuf> {
        None
    }

    /// Checks that `entry` is unchanged since it was listed.
    async fn check_unchanged(&self, entry: &Entry) -> Result<()>;

    fn as_any(&self) -> &dyn Any;
}

#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    fn address(&self) -> &DataAddress;

    /// True when the address is an existing directory, container or prefix root that a
    /// single copied object should be placed inside rather than replace.
    async fn is_directory(&self) -> Result<bool>;

    /// The object stored at `key` (relative to the address; `""` is the address itself).
    async fn head(&self, key: &str) -> Result<Option<Entry>>;

    /// Writes a whole object at once; it becomes visible only when complete.
    async fn put(&self, key: &str, data: Bytes) -> Result<Entry>;

    /// Removes the object at `key`; true when there was one.
    async fn delete(&self, key: &str) -> Result<bool> {
        let _ = key;
        Err(crate::Error::not_supported(
            self.address(),
            "removing what was written",
        ))
    }

    /// Starts an upload in parts; nothing is visible under `key` until it is completed.
    async fn create_upload(&self, key: &str) -> Result<UploadId>;

    /// Writes part `index`, which starts at byte `offset` of the object.
    async fn put_part(
        &self,
        key: &str,
        upload: &UploadId,
        index: usize,
        offset: u64,
        data: Bytes,
    ) -> Result<PartToken>;

    /// Copies `range` of the local file `src` into part `index` without passing the bytes
    /// through user space, where the sink can. `None`: not supported, use [`Sink::put_part`].
    async fn copy_part_from_file(
        &self,
        _key: &str,
        _upload: &UploadId,
        _index: usize,
        _src: &std::path::Path,
        _range: Range<u64>,
    ) -> Result<Option<PartToken>> {
        Ok(None)
    }

    /// Makes the object visible, assembled from `parts` in order.
    async fn complete_upload(
        &self,
        key: &str,
        upload: &UploadId,
        parts: Vec<PartToken>,
    ) -> Result<Entry>;

    /// Whether `found`, the object now at the upload's key, is what completing an upload
    /// of `parts` made, judged from its metadata alone (S3: the multipart ETag derived from
    /// the parts' ETags). `None`: the metadata cannot tell; compare the bytes.
    fn is_completion_of(&self, found: &Entry, parts: &[PartToken]) -> Option<bool> {
        let _ = (found, parts);
        None
    }

    /// Discards an upload and whatever parts it holds.
    async fn abort_upload(&self, key: &str, upload: &UploadId) -> Result<()>;

    /// Discards uploads to `keys` that no checkpoint knows of: a process killed between
    /// starting an upload and recording it leaves one. Only for keys no one else writes.
    /// Stores whose unrecorded uploads are invisible (and expire) do nothing.
    async fn discard_unrecorded(&self, _keys: &[String]) -> Result<()> {
        Ok(())
    }

    /// Copies `entry` from `source` to `key` inside the store, when both are the same store.
    /// `None`: not possible here, stream the bytes instead.
    async fn copy_from(
        &self,
        _source: &dyn Source,
        _entry: &Entry,
        _key: &str,
    ) -> Result<Option<Entry>> {
        Ok(None)
    }

    /// The smallest part the store accepts (all but the last part).
    fn min_part_size(&self) -> u64 {
        1
    }

    /// The most parts one upload may have.
    fn max_parts(&self) -> usize {
        usize::MAX
    }
}
