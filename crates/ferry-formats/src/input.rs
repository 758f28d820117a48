//! Bytes a reader can read at any offset, and the sequential reader over them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Bytes readable at any offset: a local file, or an object read in ranged requests.
pub trait RandomAccess: Send + Sync {
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads exactly `len` bytes at `offset` (fewer only at the end).
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;

    /// How many bytes a sequential reader should ask for at once.
    fn block_size(&self) -> usize {
        1 << 20
    }

    /// How many blocks of [`RandomAccess::block_size`] to keep for small reads (page
    /// headers, footers), where each read is a request to a remote store. 0: none.
    fn cached_blocks(&self) -> usize {
        0
    }
}

/// A local file as [`RandomAccess`].
pub struct FileAccess {
    file: File,
    len: u64,
}

impl FileAccess {
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

impl RandomAccess for FileAccess {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let len = len.min(self.len.saturating_sub(offset) as usize);
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf.into())
    }
}

/// One input file or object, shared by every reader of it.
#[derive(Clone)]
pub struct Input {
    access: Arc<dyn RandomAccess>,
    cache: Option<Arc<BlockCache>>,
}

/// The most recently used aligned blocks of a remote input, so that the many small reads
/// of a footer-indexed format (a page header, then the page) cost one request per block.
struct BlockCache {
    block: usize,
    capacity: usize,
    blocks: Mutex<VecDeque<(u64, Bytes)>>,
}

impl Input {
    pub fn new(access: impl RandomAccess + 'static) -> Self {
        let capacity = access.cached_blocks();
        let cache = (capacity > 0).then(|| {
            Arc::new(BlockCache {
                block: access.block_size().max(1),
                capacity,
                blocks: Mutex::new(VecDeque::new()),
            })
        });
        Self {
            access: Arc::new(access),
            cache,
        }
    }

    pub fn len(&self) -> u64 {
        self.access.len()
    }

    /// Reads `len` bytes at `offset` (fewer only at the end), through the block cache when
    /// there is one and the read is smaller than a block.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let Some(cache) = self.cache.as_ref().filter(|c| len < c.block) else {
            return self.access.read_at(offset, len);
        };
        let block = cache.block as u64;
        let start = offset - offset % block;
        if offset + len as u64 > start + block {
            // Straddles two blocks: rare enough to read directly.
            return self.access.read_at(offset, len);
        }
        let data = self.block_at(cache, start)?;
        let from = ((offset - start) as usize).min(data.len());
        let to = (from + len).min(data.len());
        Ok(data.slice(from..to))
    }

    fn block_at(&self, cache: &BlockCache, start: u64) -> io::Result<Bytes> {
        let lock = || cache.blocks.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut blocks = lock();
            if let Some(i) = blocks.iter().position(|(s, _)| *s == start) {
                let hit = blocks.remove(i).expect("position is in range");
                blocks.push_back(hit.clone());
                return Ok(hit.1);
            }
        }
        let data = self.access.read_at(start, cache.block)?;
        let mut blocks = lock();
        blocks.push_back((start, data.clone()));
        while blocks.len() > cache.capacity {
            blocks.pop_front();
        }
        Ok(data)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffered reader from `start` to the end.
    pub fn sequential(&self, start: u64) -> Sequential {
        Sequential {
            input: self.clone(),
            pos: start,
            buf: Bytes::new(),
            next: FIRST_READ,
        }
    }
}

/// A sequential reader's first read. Parquet opens one for every page header it reads, so
/// the first read is small; later ones double up to the input's block size.
const FIRST_READ: usize = 16 << 10;

/// Reads an [`Input`] front to back, in reads that grow to one block.
pub struct Sequential {
    input: Input,
    /// Offset of the end of `buf` in the input.
    pos: u64,
    buf: Bytes,
    /// The size of the next read.
    next: usize,
}

impl Read for Sequential {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Sequential {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.buf.is_empty() && self.pos < self.input.len() {
            self.buf = self.input.read_at(self.pos, self.next)?;
            self.pos += self.buf.len() as u64;
            self.next = (self.next * 2).min(self.input.access.block_size().max(FIRST_READ));
        }
        Ok(&self.buf)
    }

    fn consume(&mut self, amount: usize) {
        let _ = self.buf.split_to(amount.min(self.buf.len()));
    }
}

impl Seek for Sequential {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let current = self.pos - self.buf.len() as u64;
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::Current(d) => current as i128 + d as i128,
            SeekFrom::End(d) => self.input.len() as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        let target = target as u64;
        if target != current {
            self.pos = target;
            self.buf = Bytes::new();
        }
        Ok(target)
    }
}

impl parquet::file::reader::Length for Input {
    fn len(&self) -> u64 {
        self.access.len()
    }
}

impl parquet::file::reader::ChunkReader for Input {
    type T = Sequential;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Sequential> {
        Ok(self.sequential(start))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        Ok(self.read_at(start, length)?)
    }
}

impl orc_rust::reader::ChunkReader for Input {
    type T = Sequential;

    fn len(&self) -> u64 {
        self.access.len()
    }

    fn get_read(&self, offset: u64) -> io::Result<Sequential> {
        Ok(self.sequential(offset))
    }

    fn get_bytes(&self, offset: u64, length: u64) -> io::Result<Bytes> {
        self.read_at(offset, length as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Memory {
        data: Bytes,
        cached: usize,
        reads: Arc<AtomicUsize>,
    }

    impl RandomAccess for Memory {
        fn len(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let start = (offset as usize).min(self.data.len());
            let end = (start + len).min(self.data.len());
            Ok(self.data.slice(start..end))
        }
        fn block_size(&self) -> usize {
            3
        }
        fn cached_blocks(&self) -> usize {
            self.cached
        }
    }

    fn memory(text: &'static [u8], cached: usize) -> (Input, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let access = Memory {
            data: Bytes::from_static(text),
            cached,
            reads: reads.clone(),
        };
        (Input::new(access), reads)
    }

    #[test]
    fn small_reads_of_a_remote_input_share_cached_blocks() {
        let (input, reads) = memory(b"0123456789", 2);
        assert_eq!(&input.read_at(0, 1).unwrap()[..], b"0");
        assert_eq!(&input.read_at(1, 2).unwrap()[..], b"12");
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one block for both");
        assert_eq!(&input.read_at(2, 2).unwrap()[..], b"23", "straddles blocks");
        assert_eq!(&input.read_at(9, 2).unwrap()[..], b"9", "the end is short");
        assert_eq!(&input.read_at(4, 1).unwrap()[..], b"4");
        let before = reads.load(Ordering::Relaxed);
        // Blocks 1 (3..6) and 3 (9..) are cached, block 0 was evicted.
        assert_eq!(&input.read_at(5, 1).unwrap()[..], b"5");
        assert_eq!(reads.load(Ordering::Relaxed), before);
        assert_eq!(&input.read_at(0, 1).unwrap()[..], b"0");
        assert_eq!(reads.load(Ordering::Relaxed), before + 1);
    }

    #[test]
    fn sequential_reads_across_blocks_and_seeks() {
        let (input, _) = memory(b"0123456789", 0);
        let mut all = String::new();
        input.sequential(2).read_to_string(&mut all).unwrap();
        assert_eq!(all, "23456789");

        let mut r = input.sequential(0);
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        assert_eq!(r.stream_position().unwrap(), 2);
        r.seek(SeekFrom::End(-3)).unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "789");
        r.rewind().unwrap();
        r.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"01");
    }
}
