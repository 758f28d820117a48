//! Digest: replaces the values of the named columns with a hash of them.
//!
//! `options.algo` picks the function (default `sha256`):
//!
//! | algo       | output                     |
//! |------------|----------------------------|
//! | `md5`      | Utf8, lowercase hex        |
//! | `sha1`     | Utf8, lowercase hex        |
//! | `sha256`   | Utf8, lowercase hex        |
//! | `sha512`   | Utf8, lowercase hex        |
//! | `crc32`    | UInt32 (IEEE CRC-32, as zlib) |
//! | `xxhash32` | UInt32                     |
//! | `xxhash64` | UInt64                     |
//! | `murmur32` | UInt32 (MurmurHash3 x86_32) |
//!
//! Names are case-insensitive. `options.seed` (default 0) seeds `xxhash32`, `xxhash64` and
//! `murmur32` (0 to 2^32-1 for the 32-bit ones) and is rejected for the others.
//!
//! What is hashed: the UTF-8 bytes of strings (Utf8, LargeUtf8, Utf8View), the bytes of
//! binary values (Binary, LargeBinary, BinaryView, FixedSizeBinary), and for any other
//! type the text arrow's `cast` to Utf8 gives: Int64 `42` hashes like `"42"`, Boolean
//! `true` like `"true"`, Date32 like `"2024-05-01"`. The digested column keeps its name,
//! nullability and metadata; its type becomes the output type. Nulls stay null.
//!
//! This module also holds the small helpers Redact and Encrypt/Decrypt share.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray, UInt32Array, UInt64Array};
use arrow::compute::{can_cast_types, cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::util::display::FormatOptions;
use ferry_core::{Error, Result, TransformSpec};
use serde::Deserialize;

use crate::util;
use crate::Transform;

/// The hash functions Digest offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlgo {
    Md5,
    Sha1,
    Crc32,
    Sha256,
    Sha512,
    Xxhash32,
    Xxhash64,
    Murmur32,
}

impl DigestAlgo {
    pub const ALL: [DigestAlgo; 8] = [
        DigestAlgo::Md5,
        DigestAlgo::Sha1,
        DigestAlgo::Crc32,
        DigestAlgo::Sha256,
        DigestAlgo::Sha512,
        DigestAlgo::Xxhash32,
        DigestAlgo::Xxhash64,
        DigestAlgo::Murmur32,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgo::Md5 => "md5",
            DigestAlgo::Sha1 => "sha1",
            DigestAlgo::Crc32 => "crc32",
            DigestAlgo::Sha256 => "sha256",
            DigestAlgo::Sha512 => "sha512",
            DigestAlgo::Xxhash32 => "xxhash32",
            DigestAlgo::Xxhash64 => "xxhash64",
            DigestAlgo::Murmur32 => "murmur32",
        }
    }

    /// The type of a digested column.
    pub fn output_type(self) -> DataType {
        match self {
            DigestAlgo::Md5 | DigestAlgo::Sha1 | DigestAlgo::Sha256 | DigestAlgo::Sha512 => {
                DataType::Utf8
            }
            DigestAlgo::Crc32 | DigestAlgo::Xxhash32 | DigestAlgo::Murmur32 => DataType::UInt32,
            DigestAlgo::Xxhash64 => DataType::UInt64,
        }
    }

    /// The largest seed the function takes, or `None` when it takes no seed.
    fn max_seed(self) -> Option<u64> {
        match self {
            DigestAlgo::Xxhash32 | DigestAlgo::Murmur32 => Some(u32::MAX.into()),
            DigestAlgo::Xxhash64 => Some(u64::MAX),
            _ => None,
        }
    }

    fn unknown(name: &str) -> String {
        let known: Vec<_> = Self::ALL.iter().map(|a| a.as_str()).collect();
        format!("unknown algo '{name}'; known: {}", known.join(", "))
    }
}

impl fmt::Display for DigestAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DigestAlgo {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::invalid_option("digest algo", Self::unknown(s)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    algo: Option<String>,
    seed: Option<u64>,
}

struct Digest {
    label: String,
    algo: DigestAlgo,
    seed: u64,
    columns: Vec<usize>,
    schema: SchemaRef,
}

pub(crate) fn bind(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    let Options { algo, seed } = util::options(spec)?;
    let invalid = |reason: String| Error::invalid_transform(spec.label(), reason);
    let algo = match algo {
        Some(name) => name
            .parse::<DigestAlgo>()
            .map_err(|_| invalid(DigestAlgo::unknown(&name)))?,
        None => DigestAlgo::Sha256,
    };
    let seed = match (seed, algo.max_seed()) {
        (None, _) => 0,
        (Some(seed), Some(max)) if seed <= max => seed,
        (Some(seed), Some(max)) => {
            return Err(invalid(format!(
                "options.seed {seed} is out of range for {algo} (0 to {max})"
            )))
        }
        (Some(_), None) => {
            return Err(invalid(format!(
                "options.seed applies only to xxhash32, xxhash64 and murmur32, not {algo}"
            )))
        }
    };
    let columns = distinct_columns(spec, input)?;
    let mut changed = Vec::with_capacity(columns.len());
    for &i in &columns {
        let field = input.field(i);
        if !ByteColumn::supports(field.data_type()) {
            return Err(invalid(format!(
                "column '{}' has type {}, which Digest cannot read",
                field.name(),
                field.data_type()
            )));
        }
        changed.push((i, field.clone().with_data_type(algo.output_type())));
    }
    Ok(Box::new(Digest {
        label: spec.label(),
        algo,
        seed,
        columns,
        schema: schema_with(input, changed),
    }))
}

impl Transform for Digest {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        map_columns(&batch, &self.schema, &self.columns, |i, array| {
            self.digest(array).map_err(|e| {
                let name = self.schema.field(i).name();
                crate::data_error(&self.label, format!("column '{name}': {e}"))
            })
        })
    }
}

impl Digest {
    fn digest(&self, array: &ArrayRef) -> std::result::Result<ArrayRef, ArrowError> {
        let column = ByteColumn::new(array)?;
        let values = column.values();
        // The seed was range-checked at bind time for the 32-bit functions.
        let seed32 = u32::try_from(self.seed).unwrap_or_default();
        Ok(match self.algo {
            DigestAlgo::Md5 => hex_digests::<md5::Md5>(&values),
            DigestAlgo::Sha1 => hex_digests::<sha1::Sha1>(&values),
            DigestAlgo::Sha256 => hex_digests::<sha2::Sha256>(&values),
            DigestAlgo::Sha512 => hex_digests::<sha2::Sha512>(&values),
            DigestAlgo::Crc32 => Arc::new(
                values
                    .iter()
                    .map(|v| v.map(crc32fast::hash))
                    .collect::<UInt32Array>(),
            ),
            DigestAlgo::Xxhash32 => Arc::new(
                values
                    .iter()
                    .map(|v| v.map(|v| xxhash_rust::xxh32::xxh32(v, seed32)))
                    .collect::<UInt32Array>(),
            ),
            DigestAlgo::Xxhash64 => Arc::new(
                values
                    .iter()
                    .map(|v| v.map(|v| xxhash_rust::xxh64::xxh64(v, self.seed)))
                    .collect::<UInt64Array>(),
            ),
            DigestAlgo::Murmur32 => Arc::new(
                values
                    .iter()
                    .map(|v| {
                        v.map(|mut v| murmur3::murmur3_32(&mut v, seed32))
                            .transpose()
                    })
                    .collect::<std::io::Result<UInt32Array>>()?,
            ),
        })
    }
}

fn hex_digests<D: sha2::Digest>(values: &[Option<&[u8]>]) -> ArrayRef {
    Arc::new(
        values
            .iter()
            .map(|v| v.map(|v| hex(&D::digest(v))))
            .collect::<StringArray>(),
    )
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

// ---- Shared by Digest, Redact and Encrypt/Decrypt ----

/// Casts that fail on a value they cannot convert instead of turning it into null.
pub(crate) fn strict_cast() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        format_options: FormatOptions::new(),
    }
}

/// A column read as bytes: strings give their UTF-8 bytes, binary values their bytes, and
/// any other type the text arrow's `cast` to Utf8 gives.
pub(crate) struct ByteColumn(ArrayRef);

impl ByteColumn {
    /// Whether values of type `t` can be read as bytes.
    pub(crate) fn supports(t: &DataType) -> bool {
        is_bytes(t) || can_cast_types(t, &DataType::Utf8)
    }

    pub(crate) fn new(array: &ArrayRef) -> std::result::Result<Self, ArrowError> {
        if is_bytes(array.data_type()) {
            Ok(Self(array.clone()))
        } else {
            cast_with_options(array, &DataType::Utf8, &strict_cast()).map(Self)
        }
    }

    /// One entry per row; `None` for nulls.
    pub(crate) fn values(&self) -> Vec<Option<&[u8]>> {
        let a = &self.0;
        match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().iter().map(as_bytes).collect(),
            DataType::LargeUtf8 => a.as_string::<i64>().iter().map(as_bytes).collect(),
            DataType::Utf8View => a.as_string_view().iter().map(as_bytes).collect(),
            DataType::Binary => a.as_binary::<i32>().iter().collect(),
            DataType::LargeBinary => a.as_binary::<i64>().iter().collect(),
            DataType::BinaryView => a.as_binary_view().iter().collect(),
            DataType::FixedSizeBinary(_) => a.as_fixed_size_binary().iter().collect(),
            other => unreachable!("ByteColumn::new keeps only strings and binary, got {other}"),
        }
    }
}

fn as_bytes(v: Option<&str>) -> Option<&[u8]> {
    v.map(str::as_bytes)
}

pub(crate) fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

fn is_bytes(t: &DataType) -> bool {
    util::is_string(t) || is_binary(t)
}

/// [`util::columns`], rejecting a column named twice (it would be transformed twice).
pub(crate) fn distinct_columns(spec: &TransformSpec, schema: &Schema) -> Result<Vec<usize>> {
    let columns = util::columns(spec, schema)?;
    for (n, i) in columns.iter().enumerate() {
        if columns[..n].contains(i) {
            return Err(Error::invalid_transform(
                spec.label(),
                format!("column '{}' is listed twice", spec.columns[n]),
            ));
        }
    }
    Ok(columns)
}

/// `input` with the fields at the given indices replaced.
pub(crate) fn schema_with(input: &Schema, changed: Vec<(usize, Field)>) -> SchemaRef {
    let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
    for (i, field) in changed {
        fields[i] = Arc::new(field);
    }
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

/// `batch` under `schema`, with each column at `columns` replaced by `f(index, column)`.
pub(crate) fn map_columns(
    batch: &RecordBatch,
    schema: &SchemaRef,
    columns: &[usize],
    mut f: impl FnMut(usize, &ArrayRef) -> Result<ArrayRef>,
) -> Result<RecordBatch> {
    let mut arrays = batch.columns().to_vec();
    for &i in columns {
        let slot = arrays
            .get_mut(i)
            .ok_or_else(|| Error::Internal(format!("batch has no column {i}")))?;
        *slot = f(i, slot)?;
    }
    RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| Error::Internal(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::array::{BinaryArray, Int64Array, LargeStringArray};
    use ferry_core::Action;
    use serde_json::{json, Value};

    /// A spec as a manifest would give it.
    pub(crate) fn spec(action: Action, columns: &[&str], options: Value) -> TransformSpec {
        TransformSpec {
            name: None,
            action,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            options: options.as_object().cloned().unwrap_or_default(),
        }
    }

    /// A one-column batch.
    pub(crate) fn batch(name: &str, array: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([(name, array)]).unwrap()
    }

    /// Binds `spec` to `batch`'s schema and applies it, checking the output schema.
    pub(crate) fn run(spec: &TransformSpec, batch: RecordBatch) -> Result<RecordBatch> {
        let mut t = crate::bind(spec, &batch.schema())?;
        let out = t.apply(batch)?;
        assert_eq!(out.schema(), t.output_schema());
        Ok(out)
    }

    fn digest_str(algo: &str, seed: Option<u64>, input: &str) -> ArrayRef {
        let mut options = json!({ "algo": algo });
        if let Some(seed) = seed {
            options["seed"] = json!(seed);
        }
        let s = spec(Action::Digest, &["v"], options);
        let b = batch("v", Arc::new(StringArray::from(vec![input])));
        run(&s, b).unwrap().column(0).clone()
    }

    fn hex_of(algo: &str, input: &str) -> String {
        digest_str(algo, None, input)
            .as_string::<i32>()
            .value(0)
            .to_string()
    }

    fn u32_of(algo: &str, seed: Option<u64>, input: &str) -> u32 {
        let a = digest_str(algo, seed, input);
        a.as_primitive::<arrow::datatypes::UInt32Type>().value(0)
    }

    fn u64_of(algo: &str, seed: Option<u64>, input: &str) -> u64 {
        let a = digest_str(algo, seed, input);
        a.as_primitive::<arrow::datatypes::UInt64Type>().value(0)
    }

    #[test]
    fn md5_known_answers() {
        // RFC 1321, appendix A.5 (test suite).
        assert_eq!(hex_of("md5", ""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex_of("md5", "abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex_of("md5", "message digest"),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
    }

    #[test]
    fn sha_known_answers() {
        // FIPS 180-2, appendix A/B/C examples (one-block message "abc").
        assert_eq!(
            hex_of("sha1", "abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex_of("sha256", "abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex_of("SHA512", "abc"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        // FIPS 180-2, multi-block message.
        assert_eq!(
            hex_of(
                "sha256",
                "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            ),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn crc32_known_answer() {
        // The CRC-32/ISO-HDLC (zlib) check value, Greg Cook's CRC catalogue (reveng).
        assert_eq!(u32_of("crc32", None, "123456789"), 0xCBF4_3926);
        assert_eq!(u32_of("crc32", None, ""), 0);
    }

    #[test]
    fn xxhash_known_answers() {
        // xxHash's own sanity vectors (cli/xsum_sanity_check.c): empty input, seed 0 and
        // seed PRIME32 = 2654435761.
        assert_eq!(u32_of("xxhash32", None, ""), 0x02CC_5D05);
        assert_eq!(u32_of("xxhash32", Some(2_654_435_761), ""), 0x36B7_8AE7);
        assert_eq!(u64_of("xxhash64", Some(0), ""), 0xEF46_DB37_51D8_E999);
        assert_eq!(
            u64_of("xxhash64", Some(2_654_435_761), ""),
            0xAC75_FDA2_929B_17EF
        );
        // "abc", seed 0, as published alongside the reference implementation's tests.
        assert_eq!(u32_of("xxhash32", None, "abc"), 0x32D1_53FF);
        assert_eq!(u64_of("xxhash64", None, "abc"), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn murmur32_known_answers() {
        // MurmurHash3_x86_32 vectors derived from SMHasher (Ian Boyd, "MurmurHash3 test
        // vectors", stackoverflow.com/a/31929528), also in Python mmh3's test suite.
        assert_eq!(u32_of("murmur32", None, ""), 0);
        assert_eq!(u32_of("murmur32", Some(1), ""), 0x514E_28B7);
        assert_eq!(u32_of("murmur32", Some(0xffff_ffff), ""), 0x81F1_6F39);
        assert_eq!(u32_of("murmur32", None, "abc"), 0xB3DD_93FA);
        assert_eq!(u32_of("murmur32", Some(0x9747_b28c), "aaaa"), 0x5A97_808A);
        assert_eq!(
            u32_of(
                "murmur32",
                Some(0x9747_b28c),
                "The quick brown fox jumps over the lazy dog"
            ),
            0x2FA8_26CD
        );
    }

    #[test]
    fn nulls_stay_null_and_fields_keep_name_and_nullability() {
        let s = spec(Action::Digest, &["v"], json!({"algo": "md5"}));
        let b = batch(
            "v",
            Arc::new(LargeStringArray::from(vec![Some("abc"), None])),
        );
        let out = run(&s, b).unwrap();
        let field = out.schema().field(0).clone();
        assert_eq!(
            (
                field.name().as_str(),
                field.data_type(),
                field.is_nullable()
            ),
            ("v", &DataType::Utf8, true)
        );
        let v = out.column(0).as_string::<i32>();
        assert_eq!(v.value(0), "900150983cd24fb0d6963f7d28e17f72");
        assert!(v.is_null(1));
    }

    #[test]
    fn other_types_hash_their_text_and_binary_its_bytes() {
        let s = spec(Action::Digest, &["n", "b"], json!({"algo": "crc32"}));
        let b = RecordBatch::try_from_iter([
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(42), None])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(BinaryArray::from(vec![Some(&b"123456789"[..]), None])),
            ),
            ("keep", Arc::new(Int64Array::from(vec![1, 2]))),
        ])
        .unwrap();
        let out = run(&s, b).unwrap();
        let n = out.column(0).as_primitive::<arrow::datatypes::UInt32Type>();
        assert_eq!(n.value(0), crc32fast::hash(b"42"));
        assert!(n.is_null(1));
        let bin = out.column(1).as_primitive::<arrow::datatypes::UInt32Type>();
        assert_eq!(bin.value(0), 0xCBF4_3926);
        assert_eq!(out.schema().field(2).name(), "keep");
        assert_eq!(out.column(2).as_ref(), &Int64Array::from(vec![1, 2]));
    }

    #[test]
    fn default_algo_is_sha256() {
        let s = spec(Action::Digest, &["v"], json!({}));
        let b = batch("v", Arc::new(StringArray::from(vec!["abc"])));
        let out = run(&s, b).unwrap();
        assert!(out
            .column(0)
            .as_string::<i32>()
            .value(0)
            .starts_with("ba7816bf"));
    }

    #[test]
    fn bad_options_are_config_errors() {
        let schema = batch("v", Arc::new(StringArray::from(vec!["a"]))).schema();
        let err = |options: Value, columns: &[&str]| {
            let s = spec(Action::Digest, columns, options);
            let e = crate::bind(&s, &schema).err().expect("bind should fail");
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        };
        let e = err(json!({"algo": "sha3"}), &["v"]);
        assert!(
            e.contains("unknown algo 'sha3'") && e.contains("murmur32"),
            "{e}"
        );
        let e = err(json!({"algo": "sha256", "seed": 1}), &["v"]);
        assert!(e.contains("seed applies only to"), "{e}");
        let e = err(json!({"algo": "xxhash32", "seed": 1u64 << 32}), &["v"]);
        assert!(e.contains("out of range"), "{e}");
        let e = err(json!({"algo": "md5", "salt": "x"}), &["v"]);
        assert!(e.contains("unknown field `salt`"), "{e}");
        let e = err(json!({}), &["w"]);
        assert!(e.contains("column 'w' not found"), "{e}");
        let e = err(json!({}), &["v", "v"]);
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn algo_names_round_trip() {
        for algo in DigestAlgo::ALL {
            assert_eq!(algo.as_str().parse::<DigestAlgo>().unwrap(), algo);
        }
        assert!("crc64".parse::<DigestAlgo>().is_err());
    }
}
