//! Bytes a reader can read at any offset, and the sequential reader over them.

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

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
pub struct Input(Arc<dyn RandomAccess>);

impl Input {
    pub fn new(access: impl RandomAccess + 'static) -> Self {
        Self(Arc::new(access))
    }

    pub fn len(&self) -> u64 {
        self.0.len()
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
        }
    }
}

/// Reads an [`Input`] front to back, one block at a time.
pub struct Sequential {
    input: Input,
    /// Offset of the end of `buf` in the input.
    pos: u64,
    buf: Bytes,
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
            self.buf = self.input.0.read_at(self.pos, self.input.0.block_size())?;
            self.pos += self.buf.len() as u64;
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
        self.0.len()
    }
}

impl parquet::file::reader::ChunkReader for Input {
    type T = Sequential;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Sequential> {
        Ok(self.sequential(start))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        Ok(self.0.read_at(start, length)?)
    }
}

impl orc_rust::reader::ChunkReader for Input {
    type T = Sequential;

    fn len(&self) -> u64 {
        self.0.len()
    }

    fn get_read(&self, offset: u64) -> io::Result<Sequential> {
        Ok(self.sequential(offset))
    }

    fn get_bytes(&self, offset: u64, length: u64) -> io::Result<Bytes> {
        self.0.read_at(offset, length as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Memory(Bytes);

    impl RandomAccess for Memory {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
            let start = (offset as usize).min(self.0.len());
            let end = (start + len).min(self.0.len());
            Ok(self.0.slice(start..end))
        }
        fn block_size(&self) -> usize {
            3
        }
    }

    #[test]
    fn sequential_reads_across_blocks_and_seeks() {
        let input = Input::new(Memory(Bytes::from_static(b"0123456789")));
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
