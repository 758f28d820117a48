//! Parquet encoded on several threads: the columns of each row group are spread over a few
//! workers, which is where a Parquet writer spends its time (dictionaries, compression).
//!
//! The file is the one `ArrowWriter` would write (same schema conversion, same embedded
//! Arrow schema, same properties); only the encoding runs in parallel. Memory is what one
//! row group's encoded pages take, plus a few batches in the workers' bounded queues.

use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::thread::JoinHandle;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, Result};
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn,
    ArrowRowGroupWriterFactory,
};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::write::{BatchWriter, Output, ROW_GROUP_BYTES};

type Chunks = std::result::Result<Vec<(usize, ArrowColumnChunk)>, ParquetError>;

enum Task {
    /// The column writers of a new row group, with their leaf indices.
    Start(Vec<(usize, ArrowColumnWriter)>),
    Leaf(usize, ArrowLeafColumn),
    /// Finish the row group and send back its encoded column chunks.
    Close(Sender<Chunks>),
}

struct Worker {
    tasks: SyncSender<Task>,
    thread: JoinHandle<()>,
}

impl Worker {
    fn spawn() -> Self {
        let (tasks, queue) = sync_channel::<Task>(8);
        let thread = std::thread::spawn(move || {
            let mut writers: Vec<(usize, ArrowColumnWriter)> = Vec::new();
            let mut failed: Option<ParquetError> = None;
            for task in queue {
                match task {
                    Task::Start(new) => {
                        writers = new;
                        failed = None;
                    }
                    Task::Leaf(index, leaf) => {
                        if failed.is_some() {
                            continue;
                        }
                        if let Some((_, writer)) = writers.iter_mut().find(|(i, _)| *i == index) {
                            if let Err(e) = writer.write(&leaf) {
                                failed = Some(e);
                            }
                        }
                    }
                    Task::Close(reply) => {
                        let done = std::mem::take(&mut writers);
                        let result = match failed.take() {
                            Some(e) => Err(e),
                            None => done
                                .into_iter()
                                .map(|(i, w)| w.close().map(|chunk| (i, chunk)))
                                .collect(),
                        };
                        let _ = reply.send(result);
                    }
                }
            }
        });
        Self { tasks, thread }
    }
}

pub(crate) struct ParallelParquet {
    file: SerializedFileWriter<Output>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    workers: Vec<Worker>,
    row_groups: usize,
    /// Rows sent to the open row group; `None` when none is open.
    rows_in_group: Option<usize>,
    /// Arrow memory of the batches sent to the open row group, a bound on what its
    /// encoders hold.
    bytes_in_group: usize,
    max_rows: usize,
    location: String,
}

impl ParallelParquet {
    pub(crate) fn new(
        out: Output,
        schema: SchemaRef,
        props: WriterProperties,
        max_rows: usize,
        threads: usize,
        location: &str,
    ) -> Result<Self> {
        let fail = |e: ParquetError| Error::data(location, e);
        let (file, factory) = ArrowWriter::try_new(out, schema.clone(), Some(props))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(fail)?;
        Ok(Self {
            file,
            factory,
            schema,
            workers: (0..threads.max(1)).map(|_| Worker::spawn()).collect(),
            row_groups: 0,
            rows_in_group: None,
            bytes_in_group: 0,
            max_rows: max_rows.max(1),
            location: location.to_string(),
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> Error {
        Error::data(&self.location, e)
    }

    fn send(&self, worker: usize, task: Task) -> Result<()> {
        self.workers[worker]
            .tasks
            .send(task)
            .map_err(|_| Error::Internal("a Parquet encoding thread stopped".into()))
    }

    fn start_group(&mut self) -> Result<()> {
        let writers = self
            .factory
            .create_column_writers(self.row_groups)
            .map_err(|e| self.fail(e))?;
        let n = self.workers.len();
        let mut shares: Vec<Vec<(usize, ArrowColumnWriter)>> = (0..n).map(|_| Vec::new()).collect();
        for (i, writer) in writers.into_iter().enumerate() {
            shares[i % n].push((i, writer));
        }
        for (worker, share) in shares.into_iter().enumerate() {
            self.send(worker, Task::Start(share))?;
        }
        self.rows_in_group = Some(0);
        Ok(())
    }

    fn close_group(&mut self) -> Result<()> {
        let (reply, replies) = channel();
        for worker in 0..self.workers.len() {
            self.send(worker, Task::Close(reply.clone()))?;
        }
        drop(reply);
        let mut chunks = Vec::new();
        for result in replies.iter().take(self.workers.len()) {
            chunks.extend(result.map_err(|e| self.fail(e))?);
        }
        chunks.sort_by_key(|(i, _)| *i);
        let location = self.location.clone();
        let fail = |e: ParquetError| Error::data(&location, e);
        let mut group = self.file.next_row_group().map_err(fail)?;
        for (_, chunk) in chunks {
            chunk.append_to_row_group(&mut group).map_err(fail)?;
        }
        group.close().map_err(fail)?;
        self.row_groups += 1;
        self.rows_in_group = None;
        self.bytes_in_group = 0;
        Ok(())
    }
}

impl BatchWriter for ParallelParquet {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let in_group = match self.rows_in_group {
                Some(rows) => rows,
                None => {
                    self.start_group()?;
                    0
                }
            };
            let take = (batch.num_rows() - offset).min(self.max_rows - in_group);
            let part = batch.slice(offset, take);
            let mut leaf_index = 0;
            for (field, column) in self.schema.fields().iter().zip(part.columns()) {
                for leaf in compute_leaves(field, column).map_err(|e| self.fail(e))? {
                    self.send(
                        leaf_index % self.workers.len(),
                        Task::Leaf(leaf_index, leaf),
                    )?;
                    leaf_index += 1;
                }
            }
            offset += take;
            self.rows_in_group = Some(in_group + take);
            self.bytes_in_group += part.get_array_memory_size();
            if in_group + take == self.max_rows || self.bytes_in_group >= ROW_GROUP_BYTES {
                self.close_group()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.rows_in_group.is_some() {
            self.close_group()?;
        }
        for worker in std::mem::take(&mut self.workers) {
            drop(worker.tasks);
            let _ = worker.thread.join();
        }
        let location = self.location.clone();
        let mut out = self
            .file
            .into_inner()
            .map_err(|e| Error::data(&location, e))?;
        std::io::Write::flush(&mut out).map_err(|e| Error::io(&location, &e))
    }
}
