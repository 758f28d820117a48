//! Checksums computed in the same pass as the copy.
//!
//! CRC32C is the default: it runs at memory speed with SSE4.2, and per-part values combine
//! into the whole-object value, so parts can be hashed in parallel and a resumed upload
//! keeps the digests of its completed parts. xxh3 and SHA-256 are computed in order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::Error;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgo {
    #[default]
    Crc32c,
    Xxh3,
    Sha256,
}

impl ChecksumAlgo {
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32c => "crc32c",
            Self::Xxh3 => "xxh3",
            Self::Sha256 => "sha256",
        }
    }

    /// True when digests of consecutive parts combine into the digest of the whole.
    pub fn combinable(self) -> bool {
        self == Self::Crc32c
    }

    pub fn hasher(self) -> Hasher {
        Hasher(match self {
            Self::Crc32c => Inner::Crc32c(0),
            Self::Xxh3 => Inner::Xxh3(Box::default()),
            Self::Sha256 => Inner::Sha256(Box::default()),
        })
    }

    /// Digest of one buffer.
    pub fn digest(self, data: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for ChecksumAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChecksumAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "crc32c" => Ok(Self::Crc32c),
            "xxh3" | "xxh3_64" => Ok(Self::Xxh3),
            "sha256" | "sha-256" => Ok(Self::Sha256),
            other => Err(Error::invalid_option(
                "--checksum",
                format!("unknown algorithm '{other}': expected crc32c, xxh3 or sha256"),
            )),
        }
    }
}

enum Inner {
    Crc32c(u32),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3Default>),
    Sha256(Box<sha2::Sha256>),
}

/// Incremental hasher for one [`ChecksumAlgo`].
pub struct Hasher(Inner);

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            Inner::Xxh3(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self.0 {
            Inner::Crc32c(crc) => Digest::new(ChecksumAlgo::Crc32c, crc.to_be_bytes().to_vec()),
            Inner::Xxh3(h) => Digest::new(ChecksumAlgo::Xxh3, h.digest().to_be_bytes().to_vec()),
            Inner::Sha256(h) => Digest::new(ChecksumAlgo::Sha256, h.finalize().to_vec()),
        }
    }
}

/// A checksum value, shown as `algo:hex` (e.g. `crc32c:e3069283`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algo: ChecksumAlgo,
    bytes: Vec<u8>,
}

impl Digest {
    pub fn new(algo: ChecksumAlgo, bytes: Vec<u8>) -> Self {
        Self { algo, bytes }
    }

    pub fn algo(&self) -> ChecksumAlgo {
        self.algo
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The digest of `self`'s bytes followed by `next`'s `next_len` bytes, where the
    /// algorithm allows it (CRC32C).
    pub fn combine(&self, next: &Digest, next_len: u64) -> Option<Digest> {
        if self.algo != ChecksumAlgo::Crc32c || next.algo != ChecksumAlgo::Crc32c {
            return None;
        }
        let a = u32::from_be_bytes(self.bytes.as_slice().try_into().ok()?);
        let b = u32::from_be_bytes(next.bytes.as_slice().try_into().ok()?);
        let combined = crc32c::crc32c_combine(a, b, usize::try_from(next_len).ok()?);
        Some(Digest::new(
            ChecksumAlgo::Crc32c,
            combined.to_be_bytes().to_vec(),
        ))
    }

    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Internal(format!("malformed digest '{s}'"));
        let (algo, hex) = s.split_once(':').ok_or_else(bad)?;
        let algo: ChecksumAlgo = algo.parse()?;
        if hex.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        Ok(Digest::new(algo, bytes))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // CRC-32C check value from RFC 3720 (iSCSI), appendix B.4: 32 bytes of zeros.
        assert_eq!(
            ChecksumAlgo::Crc32c.digest(&[0u8; 32]).to_string(),
            "crc32c:8a9136aa"
        );
        // The standard CRC check input "123456789".
        assert_eq!(
            ChecksumAlgo::Crc32c.digest(b"123456789").to_string(),
            "crc32c:e3069283"
        );
        assert_eq!(
            ChecksumAlgo::Sha256.digest(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // XXH3-64 of empty input, seed 0.
        assert_eq!(ChecksumAlgo::Xxh3.digest(b"").hex(), "2d06800538d394c2");
    }

    #[test]
    fn crc32c_parts_combine_into_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = ChecksumAlgo::Crc32c.digest(&data);
        let (a, b) = data.split_at(33_333);
        let combined = ChecksumAlgo::Crc32c
            .digest(a)
            .combine(&ChecksumAlgo::Crc32c.digest(b), b.len() as u64)
            .unwrap();
        assert_eq!(whole, combined);
        assert!(ChecksumAlgo::Sha256
            .digest(a)
            .combine(&ChecksumAlgo::Sha256.digest(b), 1)
            .is_none());
    }

    #[test]
    fn digests_round_trip_through_text() {
        let d = ChecksumAlgo::Sha256.digest(b"ferry");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("md5:00".parse::<Digest>().is_err());
    }
}
