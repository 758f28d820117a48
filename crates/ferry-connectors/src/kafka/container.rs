//! The container format of exported events, `ferry-events/1`: one object holds a run of
//! consecutive events of one partition, whole and byte for byte.
//!
//! An object is one zstd stream. Decompressed, it is the 8 bytes `FERRYEV1`, then each
//! event as a length-prefixed record, then an end mark:
//!
//! ```text
//! event   := u32 length-of-the-rest, i64 offset, i64 timestamp (ms), u8 timestamp
//!            type (0 none, 1 create time, 2 log append time), bytes key, bytes value,
//!            u32 header count, header*
//! header  := u32 name length, name (UTF-8), bytes value
//! bytes   := i32 length (-1: null), the bytes
//! end     := u32 0xFFFFFFFF, u64 number of events
//! ```
//!
//! Integers are big-endian. A reader that meets the end of the data before the end mark
//! knows the object was cut short. Objects are named `partition=NNNN/OOOOOOOOOOOOOOOOOOOO.events.zst`
//! after their partition and first offset, zero-padded, so a listing sorts in offset order.

use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"FERRYEV1";
const END: u32 = u32::MAX;
/// The name of the format in manifests.
pub const FORMAT: &str = "ferry-events/1";
/// The end of every object's name.
pub const SUFFIX: &str = ".events.zst";

/// One event as Kafka holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub offset: i64,
    pub timestamp: i64,
    /// 0 none, 1 create time, 2 log append time.
    pub timestamp_type: u8,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Event {
    /// Bytes of key, value and headers: what the event weighs for rolling and progress.
    pub fn weight(&self) -> u64 {
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len) as u64;
        len(&self.key)
            + len(&self.value)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() as u64 + len(v))
                .sum::<u64>()
    }
}

/// The object name of partition `partition`'s run of events starting at `first_offset`.
pub fn object_name(partition: i32, first_offset: i64) -> String {
    format!("partition={partition:04}/{first_offset:020}{SUFFIX}")
}

/// The partition and first offset an object name says, or `None` for another file.
pub fn parse_object_name(key: &str) -> Option<(i32, i64)> {
    let rest = key.rsplit('/').nth(1).zip(key.rsplit('/').next())?;
    let partition = rest.0.strip_prefix("partition=")?.parse().ok()?;
    let offset = rest.1.strip_suffix(SUFFIX)?.parse().ok()?;
    Some((partition, offset))
}

/// Writes events into one object.
pub struct EventWriter<W: Write> {
    out: zstd::stream::write::Encoder<'static, W>,
    events: u64,
    buf: Vec<u8>,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W) -> io::Result<Self> {
        let mut out = zstd::stream::write::Encoder::new(out, 1)?;
        out.write_all(MAGIC)?;
        Ok(Self {
            out,
            events: 0,
            buf: Vec::new(),
        })
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(&event.offset.to_be_bytes());
        b.extend_from_slice(&event.timestamp.to_be_bytes());
        b.push(event.timestamp_type);
        put_bytes(b, event.key.as_deref());
        put_bytes(b, event.value.as_deref());
        b.extend_from_slice(&(event.headers.len() as u32).to_be_bytes());
        for (name, value) in &event.headers {
            b.extend_from_slice(&(name.len() as u32).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
            put_bytes(b, value.as_deref());
        }
        let len = u32::try_from(b.len())
            .ok()
            .filter(|l| *l != END)
            .ok_or_else(|| io::Error::other("an event of 4 GiB or more cannot be exported"))?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(b)?;
        self.events += 1;
        Ok(())
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Writes the end mark and ends the zstd stream; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&END.to_be_bytes())?;
        self.out.write_all(&self.events.to_be_bytes())?;
        self.out.finish()
    }
}

fn put_bytes(b: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v);
        }
    }
}

/// Reads the events of one object, in order; fails on a cut or corrupt object.
pub struct EventReader<R: Read> {
    input: zstd::stream::read::Decoder<'static, io::BufReader<R>>,
    events: u64,
    ended: bool,
}

impl<R: Read> EventReader<R> {
    pub fn new(input: R) -> io::Result<Self> {
        let mut input = zstd::stream::read::Decoder::new(input)?;
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| corrupt("too short to be an events object"))?;
        if &magic != MAGIC {
            return Err(corrupt("not an events object (no FERRYEV1 mark)"));
        }
        Ok(Self {
            input,
            events: 0,
            ended: false,
        })
    }

    /// The next event, or `None` after the end mark.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        if self.ended {
            return Ok(None);
        }
        let len = read_u32(&mut self.input).map_err(|_| corrupt("cut short: no end mark"))?;
        if len == END {
            let mut count = [0u8; 8];
            self.input.read_exact(&mut count)?;
            if u64::from_be_bytes(count) != self.events {
                return Err(corrupt(
                    "the end mark counts other events than the object holds",
                ));
            }
            self.ended = true;
            return Ok(None);
        }
        let mut body = vec![0u8; len as usize];
        self.input
            .read_exact(&mut body)
            .map_err(|_| corrupt("cut short inside an event"))?;
        let mut at = Cursor(&body);
        let event = Event {
            offset: at.i64()?,
            timestamp: at.i64()?,
            timestamp_type: at.u8()?,
            key: at.bytes()?,
            value: at.bytes()?,
            headers: {
                let n = at.u32()?;
                let mut headers = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    let len = at.u32()? as usize;
                    let name = String::from_utf8(at.take(len)?.to_vec())
                        .map_err(|_| corrupt("a header name is not UTF-8"))?;
                    headers.push((name, at.bytes()?));
                }
                headers
            },
        };
        if !at.0.is_empty() {
            return Err(corrupt("an event's length does not match its fields"));
        }
        self.events += 1;
        Ok(Some(event))
    }
}

fn corrupt(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("an event's fields run past its length"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn i64(&mut self) -> io::Result<i64> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn bytes(&mut self) -> io::Result<Option<Vec<u8>>> {
        let len = i32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default());
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(self.take(len as usize)?.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: i64) -> Event {
        Event {
            offset: 100 + i,
            timestamp: 1_700_000_000_000 + i,
            timestamp_type: 1,
            key: (i % 3 != 0).then(|| format!("k{i}").into_bytes()),
            value: (i % 5 != 0).then(|| vec![i as u8; i as usize * 7]),
            headers: (0..(i % 3))
                .map(|h| (format!("h{h}"), (h != 1).then(|| vec![h as u8; 3])))
                .collect(),
        }
    }

    #[test]
    fn events_round_trip_whole() {
        let events: Vec<Event> = (0..200).map(sample).collect();
        let mut w = EventWriter::new(Vec::new()).unwrap();
        for e in &events {
            w.write(e).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = EventReader::new(&bytes[..]).unwrap();
        let mut back = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            back.push(e);
        }
        assert_eq!(back, events);
    }

    #[test]
    fn a_cut_object_is_an_error_not_fewer_events() {
        let mut w = EventWriter::new(Vec::new()).unwrap();
        for i in 0..50 {
            w.write(&sample(i)).unwrap();
        }
        let bytes = w.finish().unwrap();
        // Re-compress a cut decompressed stream: a valid zstd stream without the end mark.
        let plain = zstd::stream::decode_all(&bytes[..]).unwrap();
        let cut = zstd::stream::encode_all(&plain[..plain.len() - 20], 1).unwrap();
        let mut r = EventReader::new(&cut[..]).unwrap();
        let err = loop {
            match r.next_event() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a cut object read as complete"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn names_sort_in_offset_order_and_parse_back() {
        assert_eq!(
            object_name(3, 1_200_000),
            "partition=0003/00000000000001200000.events.zst"
        );
        assert_eq!(
            parse_object_name("backup/partition=0003/00000000000001200000.events.zst"),
            Some((3, 1_200_000))
        );
        assert_eq!(parse_object_name("partition=0003/_manifest.json"), None);
        assert!(object_name(1, 99) < object_name(1, 100));
    }
}
