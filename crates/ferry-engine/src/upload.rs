//! Writing a stream of bytes of unknown length to a sink: parts are uploaded as they fill,
//! a few at a time, and the object appears only when the writer commits.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_core::{Entry, Error, PartToken, Result, Sink, UploadId};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// A `Write` that uploads what it is given in parts, keeping a few parts in flight, and
/// makes the object visible only on [`UploadWriter::commit`]. Dropped uncommitted, it
/// aborts the upload. Cloned handles share one upload (a format writer owns one, the
/// caller keeps another to commit).
#[derive(Clone)]
pub(crate) struct UploadWriter(Arc<Mutex<Upload>>);

/// Told the id of the upload once it is created, so that a checkpoint can find and abort
/// it after a crash.
pub(crate) type OnStart = Box<dyn Fn(&UploadId) -> Result<()> + Send>;

struct Upload {
    on_start: Option<OnStart>,
    sink: Arc<dyn Sink>,
    key: String,
    handle: Handle,
    part_size: usize,
    concurrency: usize,
    buf: Vec<u8>,
    id: Option<UploadId>,
    offset: u64,
    in_flight: VecDeque<JoinHandle<Result<PartToken>>>,
    parts: Vec<PartToken>,
    /// The first store error, kept whole so the user sees it rather than an io wrapper.
    error: Option<Error>,
    committed: bool,
}

impl UploadWriter {
    pub(crate) fn new(
        sink: Arc<dyn Sink>,
        key: &str,
        handle: Handle,
        part_size: usize,
        concurrency: usize,
        on_start: Option<OnStart>,
    ) -> Self {
        let part_size = part_size.max(sink.min_part_size() as usize).max(1 << 20);
        Self(Arc::new(Mutex::new(Upload {
            on_start,
            sink,
            key: key.to_string(),
            handle,
            part_size,
            concurrency: concurrency.max(1),
            buf: Vec::new(),
            id: None,
            offset: 0,
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            error: None,
            committed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Upload> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's own error when the upload failed, else `other`.
    pub(crate) fn error_or(&self, other: Error) -> Error {
        self.lock().error.take().unwrap_or(other)
    }

    pub(crate) fn commit(&self) -> Result<Entry> {
        self.lock().commit()
    }
}

impl Write for UploadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut up = self.lock();
        up.buf.extend_from_slice(data);
        if up.buf.len() >= up.part_size {
            let capacity = up.part_size;
            let part = std::mem::replace(&mut up.buf, Vec::with_capacity(capacity));
            if let Err(e) = up.send(part.into()) {
                let shown = e.to_string();
                up.error.get_or_insert(e);
                return Err(io::Error::other(shown));
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload {
    fn send(&mut self, data: Bytes) -> Result<()> {
        if self.id.is_none() {
            let id = self.handle.block_on(self.sink.create_upload(&self.key))?;
            self.id = Some(id.clone());
            if let Some(on_start) = &self.on_start {
                on_start(&id)?;
            }
        }
        if self.in_flight.len() >= self.concurrency {
            self.wait_oldest()?;
        }
        let (sink, key, id) = (
            self.sink.clone(),
            self.key.clone(),
            self.id.clone().unwrap_or_default(),
        );
        let (index, offset, len) = (
            self.parts.len() + self.in_flight.len(),
            self.offset,
            data.len(),
        );
        self.offset += len as u64;
        self.in_flight.push_back(
            self.handle
                .spawn(async move { sink.put_part(&key, &id, index, offset, data).await }),
        );
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        if let Some(task) = self.in_flight.pop_front() {
            let token = self
                .handle
                .block_on(task)
                .map_err(|e| Error::Internal(format!("an upload task stopped: {e}")))??;
            self.parts.push(token);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<Entry> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let rest = std::mem::take(&mut self.buf);
        let entry = if self.id.is_none() {
            self.handle
                .block_on(self.sink.put(&self.key, Bytes::from(rest)))?
        } else {
            if !rest.is_empty() {
                self.send(rest.into())?;
            }
            while !self.in_flight.is_empty() {
                self.wait_oldest()?;
            }
            let id = self.id.clone().unwrap_or_default();
            let parts = std::mem::take(&mut self.parts);
            self.handle
                .block_on(self.sink.complete_upload(&self.key, &id, parts))?
        };
        self.committed = true;
        Ok(entry)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for task in self.in_flight.drain(..) {
            task.abort();
        }
        if let Some(id) = self.id.take() {
            if let Err(e) = self.handle.block_on(self.sink.abort_upload(&self.key, &id)) {
                tracing::warn!(key = %self.key, error = %e, "could not abort an unfinished upload");
            }
        }
    }
}
