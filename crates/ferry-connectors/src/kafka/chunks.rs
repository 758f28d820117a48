//! Events larger than a topic accepts, sent as several chunk records and put together
//! again when read.
//!
//! An event whose key, value and headers weigh more than the topic's maximum message size
//! (its `max.message.bytes`, asked of the broker) goes as consecutive records in the same
//! partition, each with the event's key and timestamp and a slice of its value; the first
//! also carries the event's own headers. Every chunk has these headers:
//!
//! | header | value |
//! |---|---|
//! | `ferry.chunk.id` | the message's id (text; the same for all its chunks) |
//! | `ferry.chunk.index` | 0, 1, … |
//! | `ferry.chunk.count` | how many chunks |
//! | `ferry.chunk.size` | the whole value's bytes |
//! | `ferry.chunk.crc32c` | the whole value's CRC32C, 8 hex digits |
//!
//! A reader holds one incomplete message per partition (its chunks are consecutive: one
//! producer sends them in order) and gives back the event as it was, with the first
//! chunk's offset. A run that ends while a message is incomplete stops before its first
//! chunk, so the next run starts there.

use std::collections::BTreeMap;

use super::container::Event;

pub const ID: &str = "ferry.chunk.id";
pub const INDEX: &str = "ferry.chunk.index";
pub const COUNT: &str = "ferry.chunk.count";
pub const SIZE: &str = "ferry.chunk.size";
pub const CRC: &str = "ferry.chunk.crc32c";

/// What a record carries besides its value: room kept for the record's framing.
const OVERHEAD: usize = 1024;

/// The largest value slice a chunk may carry, for a topic accepting `max_message` bytes.
pub fn slice_size(max_message: usize, event: &Event) -> usize {
    let key = event.key.as_ref().map_or(0, Vec::len);
    let headers: usize = event
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.as_ref().map_or(0, Vec::len) + 16)
        .sum();
    max_message
        .saturating_sub(key + headers + OVERHEAD + 200)
        .max(1024)
}

/// Whether `event` must be sent in chunks to a topic accepting `max_message` bytes.
pub fn too_large(event: &Event, max_message: usize) -> bool {
    event.weight() as usize + OVERHEAD > max_message
}

/// The chunk records of `event`, whose id is `id`.
pub fn split(event: &Event, max_message: usize, id: &str) -> Vec<Event> {
    let value = event.value.as_deref().unwrap_or_default();
    let size = slice_size(max_message, event);
    let count = value.len().div_ceil(size).max(1);
    let crc = format!("{:08x}", crc32c::crc32c(value));
    (0..count)
        .map(|i| {
            let mut headers = if i == 0 {
                event.headers.clone()
            } else {
                Vec::new()
            };
            for (name, v) in [
                (ID, id.to_string()),
                (INDEX, i.to_string()),
                (COUNT, count.to_string()),
                (SIZE, value.len().to_string()),
                (CRC, crc.clone()),
            ] {
                headers.push((name.to_string(), Some(v.into_bytes())));
            }
            let end = ((i + 1) * size).min(value.len());
            Event {
                offset: event.offset,
                timestamp: event.timestamp,
                timestamp_type: event.timestamp_type,
                key: event.key.clone(),
                value: Some(value[i * size..end].to_vec()),
                headers,
            }
        })
        .collect()
}

/// A chunk's place in its message, read from its headers.
struct Chunk {
    id: String,
    index: usize,
    count: usize,
    size: usize,
    crc: String,
}

fn chunk_of(event: &Event) -> Option<Chunk> {
    let header = |name: &str| -> Option<String> {
        let (_, v) = event.headers.iter().find(|(n, _)| n == name)?;
        String::from_utf8(v.clone()?).ok()
    };
    Some(Chunk {
        id: header(ID)?,
        index: header(INDEX)?.parse().ok()?,
        count: header(COUNT)?.parse().ok()?,
        size: header(SIZE)?.parse().ok()?,
        crc: header(CRC)?,
    })
}

/// What one record read means.
pub enum Assembled {
    /// A whole event (as sent, or put together from its chunks).
    Event(Event),
    /// A chunk of a message still incomplete.
    Partial,
    /// A chunk whose message started before the range read (its first chunk is not in
    /// it): left out.
    Orphan,
}

/// Puts chunked messages together, one partition at a time.
#[derive(Default)]
pub struct Assembler {
    /// Per partition: the message being put together and its chunks so far.
    partial: BTreeMap<i32, (Chunk, Event)>,
}

impl Assembler {
    /// Takes the next record of `partition` (at `offset`); the error says what is wrong
    /// with the chunks.
    pub fn push(&mut self, partition: i32, event: Event) -> Result<Assembled, String> {
        let Some(chunk) = chunk_of(&event) else {
            if self.partial.contains_key(&partition) {
                return Err(format!(
                    "an event at offset {} interrupts a message sent in chunks",
                    event.offset
                ));
            }
            return Ok(Assembled::Event(event));
        };
        match self.partial.remove(&partition) {
            None if chunk.index != 0 => Ok(Assembled::Orphan),
            None => {
                let mut first = event;
                first
                    .headers
                    .retain(|(n, _)| !n.starts_with("ferry.chunk."));
                let mut value = first.value.take().unwrap_or_default();
                value.reserve(chunk.size.saturating_sub(value.len()));
                first.value = Some(value);
                self.next(partition, chunk, first)
            }
            Some((open, mut whole)) => {
                if chunk.id != open.id || chunk.index != open.index + 1 {
                    return Err(format!(
                        "chunk {} of message '{}' at offset {} follows chunk {} of message '{}'",
                        chunk.index, chunk.id, event.offset, open.index, open.id
                    ));
                }
                if let (Some(all), Some(part)) = (whole.value.as_mut(), event.value.as_ref()) {
                    all.extend_from_slice(part);
                }
                let Chunk { index, .. } = chunk;
                self.next(partition, Chunk { index, ..open }, whole)
            }
        }
    }

    fn next(&mut self, partition: i32, chunk: Chunk, whole: Event) -> Result<Assembled, String> {
        let got = whole.value.as_ref().map_or(0, Vec::len);
        if chunk.index + 1 < chunk.count {
            if got > chunk.size {
                return Err(format!(
                    "message '{}' is longer than its {} bytes",
                    chunk.id, chunk.size
                ));
            }
            self.partial.insert(partition, (chunk, whole));
            return Ok(Assembled::Partial);
        }
        let crc = format!(
            "{:08x}",
            crc32c::crc32c(whole.value.as_deref().unwrap_or_default())
        );
        if got != chunk.size || crc != chunk.crc {
            return Err(format!(
                "message '{}' put together from {} chunks has {got} bytes and CRC32C {crc}, not {} and {}",
                chunk.id, chunk.count, chunk.size, chunk.crc
            ));
        }
        Ok(Assembled::Event(whole))
    }

    /// The offset of the first chunk of `partition`'s incomplete message, if any: where
    /// the next run must start.
    pub fn incomplete(&self, partition: i32) -> Option<i64> {
        self.partial.get(&partition).map(|(_, e)| e.offset)
    }

    /// Forgets `partition`'s incomplete message.
    pub fn drop_partial(&mut self, partition: i32) {
        self.partial.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(len: usize) -> Event {
        Event {
            offset: 40,
            timestamp: 1_700_000_000_000,
            timestamp_type: 1,
            key: Some(b"k".to_vec()),
            value: Some((0..len).map(|i| (i * 31 % 251) as u8).collect()),
            headers: vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)],
        }
    }

    #[test]
    fn a_large_event_splits_and_comes_back_whole() {
        let big = event(5 * 1024 * 1024 + 17);
        assert!(too_large(&big, 1_048_588));
        assert!(!too_large(&event(1000), 1_048_588));
        let chunks = split(&big, 1_048_588, "0:40");
        assert_eq!(chunks.len(), 6);
        assert!(chunks.iter().all(|c| c.weight() as usize <= 1_048_588));
        let mut assembler = Assembler::default();
        let mut out = None;
        for (i, mut c) in chunks.into_iter().enumerate() {
            c.offset = 100 + i as i64;
            match assembler.push(3, c).unwrap() {
                Assembled::Event(e) => out = Some(e),
                Assembled::Partial => assert_eq!(assembler.incomplete(3), Some(100)),
                Assembled::Orphan => panic!("orphan"),
            }
        }
        let out = out.unwrap();
        assert_eq!(out.offset, 100);
        assert_eq!(Event { offset: 40, ..out }, big);
        assert_eq!(assembler.incomplete(3), None);
    }

    #[test]
    fn orphans_interruptions_and_damage_are_told() {
        let chunks = split(&event(3000), 2048, "m");
        assert!(chunks.len() > 1);
        let mut a = Assembler::default();
        assert!(matches!(
            a.push(0, chunks[1].clone()),
            Ok(Assembled::Orphan)
        ));
        assert!(matches!(
            a.push(0, chunks[0].clone()),
            Ok(Assembled::Partial)
        ));
        let err = a.push(0, event(10)).err().unwrap();
        assert!(err.contains("interrupts"), "{err}");
        let mut a = Assembler::default();
        let mut damaged = chunks.clone();
        if let Some(v) = damaged.last_mut().and_then(|c| c.value.as_mut()) {
            v[0] ^= 1;
        }
        let mut last = None;
        for c in damaged {
            last = Some(a.push(0, c));
        }
        let err = last.unwrap().err().unwrap();
        assert!(err.contains("CRC32C"), "{err}");
    }
}
