//! Files compressed as a whole (`orders.csv.gz`, `events.jsonl.zst`): the format is the
//! inner extension's, and the bytes go through a gzip or zstd stream on the way in and
//! out. Only formats read front to back (CSV, JSON lines, Avro) can be; Parquet and ORC
//! compress inside and need to seek.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_core::{Error, Result};

use crate::format::{Format, FormatOptions};

/// How a whole file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
}

impl Codec {
    /// The codec a file name's last extension stands for (`.gz`, `.gzip`, `.zst`, `.zstd`).
    pub fn from_name(name: &str) -> Option<Codec> {
        let base = name.rsplit('/').next().unwrap_or(name);
        let (_, ext) = base.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "gz" | "gzip" => Some(Codec::Gzip),
            "zst" | "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// `name` without its codec extension, if it has one.
    pub fn strip(name: &str) -> &str {
        match Codec::from_name(name) {
            Some(_) => &name[..name.rfind('.').unwrap_or(name.len())],
            None => name,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Codec::Gzip => "gz",
            Codec::Zstd => "zst",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// What a writer of `format` to `location` compresses with: the location's extension,
    /// else, for CSV and JSON, `compression: gzip | zstd`.
    pub fn for_output(
        format: Format,
        options: &FormatOptions,
        location: &str,
    ) -> Result<Option<Codec>> {
        if let Some(codec) = Codec::from_name(location) {
            return Ok(Some(codec));
        }
        if !matches!(format, Format::Csv | Format::Json) {
            return Ok(None);
        }
        match options
            .compression
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("none") => Ok(None),
            Some("gzip" | "gz") => Ok(Some(Codec::Gzip)),
            Some("zstd" | "zst") => Ok(Some(Codec::Zstd)),
            Some(other) => Err(Error::invalid_option(
                "compression",
                format!("'{other}' for {format}: expected gzip, zstd or none"),
            )),
        }
    }

    /// Refuses a codec around a format that must seek.
    pub(crate) fn check(self, format: Format, location: &str) -> Result<()> {
        if matches!(format, Format::Parquet | Format::Orc) {
            return Err(Error::data(
                location,
                format!(
                    "a {format} file compresses inside (set compression); a {} stream around one \
                     is not read or written",
                    self.name()
                ),
            ));
        }
        Ok(())
    }

    /// The uncompressed bytes of `inner`; a corrupt stream fails with the location and the
    /// compressed byte offset where it was found.
    pub fn decoder(
        self,
        inner: impl Read + Send + 'static,
        location: &str,
    ) -> Box<dyn BufRead + Send> {
        let read = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            inner,
            read: read.clone(),
        };
        let decoded: Box<dyn Read + Send> = match self {
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(counted))),
            Codec::Zstd => match zstd::stream::read::Decoder::new(counted) {
                Ok(d) => Box::new(d),
                Err(e) => Box::new(Failing(Some(e))),
            },
        };
        Box::new(BufReader::with_capacity(
            256 << 10,
            Located {
                inner: decoded,
                read,
                location: location.to_string(),
                codec: self,
            },
        ))
    }

    /// `out` compressed; [`CodecWriter::finish`] writes the stream's end and gives `out`
    /// back. A zstd stream carries a checksum at its end, so a reader finds damaged bytes
    /// (gzip always has its CRC).
    pub fn writer<W: Write>(self, out: W) -> io::Result<CodecWriter<W>> {
        Ok(match self {
            Codec::Gzip => CodecWriter::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Codec::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, 3)?;
                e.include_checksum(true)?;
                CodecWriter::Zstd(e)
            }
        })
    }

    /// `out` compressed, for a format's writer that owns what it writes to;
    /// [`Finish::finish`] writes the stream's end.
    pub(crate) fn encoder(self, out: Box<dyn Write + Send>) -> Result<(Shared, Finish)> {
        let encoder = self
            .writer(out)
            .map_err(|e| Error::Internal(format!("{} encoder: {e}", self.name())))?;
        let shared = Arc::new(Mutex::new(Some(encoder)));
        Ok((Shared(shared.clone()), Finish(shared)))
    }
}

/// A gzip or zstd stream written into `W`.
pub enum CodecWriter<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> CodecWriter<W> {
    /// Writes the stream's end; the writer it wrote into.
    pub fn finish(self) -> io::Result<W> {
        match self {
            CodecWriter::Gzip(e) => e.finish(),
            CodecWriter::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for CodecWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CodecWriter::Gzip(e) => e.write(buf),
            CodecWriter::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            CodecWriter::Gzip(e) => e.flush(),
            CodecWriter::Zstd(e) => e.flush(),
        }
    }
}

/// A reader that counts the bytes read through it into `read`, for errors that name an
/// offset (the compressed bytes of a file, an archive's bytes).
pub struct Counted<R> {
    pub inner: R,
    pub read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

struct Failing(Option<io::Error>);

impl Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self.0.take().unwrap_or_else(|| io::Error::other("failed")))
    }
}

/// Names the file and the offset in a decoder's errors.
struct Located {
    inner: Box<dyn Read + Send>,
    read: Arc<AtomicU64>,
    location: String,
    codec: Codec,
}

impl Read for Located {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: corrupt {} stream near compressed byte {}: {e}",
                    self.location,
                    self.codec.name(),
                    self.read.load(Ordering::Relaxed)
                ),
            )
        })
    }
}

type Encoder = CodecWriter<Box<dyn Write + Send>>;

/// The writer a format writes into: the encoder, shared with its [`Finish`].
pub(crate) struct Shared(Arc<Mutex<Option<Encoder>>>);

/// Ends the compressed stream once the format's writer is done.
pub(crate) struct Finish(Arc<Mutex<Option<Encoder>>>);

fn closed() -> io::Error {
    io::Error::other("the compressed stream was already finished")
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => e.write(buf),
            None => Err(closed()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => e.flush(),
            None => Ok(()),
        }
    }
}

impl Finish {
    pub(crate) fn finish(self, location: &str) -> Result<()> {
        let encoder = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let fail = |e: io::Error| Error::data(location, format!("compressing: {e}"));
        let mut out = encoder
            .ok_or_else(closed)
            .and_then(CodecWriter::finish)
            .map_err(fail)?;
        out.flush().map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_the_codec_and_the_format_inside() {
        assert_eq!(Codec::from_name("in/orders.csv.gz"), Some(Codec::Gzip));
        assert_eq!(Codec::from_name("e.JSONL.ZST"), Some(Codec::Zstd));
        assert_eq!(Codec::from_name("orders.csv"), None);
        assert_eq!(Codec::strip("in/orders.csv.gz"), "in/orders.csv");
        assert_eq!(Format::from_name("in/orders.csv.gz"), Some(Format::Csv));
        assert_eq!(Format::from_name("e.ndjson.zst"), Some(Format::Json));
        assert_eq!(
            Format::Parquet.rename("in/orders.csv.gz"),
            "in/orders.parquet"
        );
    }

    #[test]
    fn a_stream_round_trips_and_a_corrupt_one_names_where() {
        for codec in [Codec::Gzip, Codec::Zstd] {
            let sink = Arc::new(Mutex::new(Vec::new()));
            struct To(Arc<Mutex<Vec<u8>>>);
            impl Write for To {
                fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                    self.0.lock().unwrap().extend_from_slice(b);
                    Ok(b.len())
                }
                fn flush(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            let (mut w, finish) = codec.encoder(Box::new(To(sink.clone()))).unwrap();
            let text = "id,name\n".to_string() + &"1,alpha\n".repeat(10_000);
            w.write_all(text.as_bytes()).unwrap();
            finish.finish("t").unwrap();
            let packed = sink.lock().unwrap().clone();
            assert!(packed.len() < text.len() / 10);
            let mut back = String::new();
            codec
                .decoder(io::Cursor::new(packed.clone()), "t")
                .read_to_string(&mut back)
                .unwrap();
            assert_eq!(back, text);

            let mut broken = packed;
            let middle = broken.len() / 2;
            for b in &mut broken[middle..middle + 8] {
                *b ^= 0x5a;
            }
            let err = codec
                .decoder(io::Cursor::new(broken), "in/t.csv.x")
                .read_to_string(&mut String::new())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!(
                    "in/t.csv.x: corrupt {} stream near compressed byte ",
                    codec.name()
                )),
                "{err}"
            );
        }
    }
}
