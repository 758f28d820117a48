//! Encrypt and Decrypt: AES-256 authenticated encryption of column values.
//!
//! Options (both actions):
//! - `keyRef` (required): where the key lives, `env:NAME` or `file:PATH`. The key is 32
//!   bytes, written as 64 hex characters, as standard base64, or as the raw bytes.
//! - `deterministic` (default `false`): `false` encrypts each value with AES-256-GCM under
//!   a fresh random 96-bit nonce, so equal values give different ciphertexts. `true` uses
//!   AES-256-GCM-SIV with a fixed all-zero nonce, so equal values give equal ciphertexts:
//!   this reveals which values are equal, by design, so encrypted columns can still be
//!   joined and grouped on.
//! - `type` (Decrypt only): the type to restore, a DataType string such as `Int64`.
//!
//! Encrypt reads strings as their UTF-8 bytes, binary values as their bytes, and other
//! types as the text arrow's `cast` to Utf8 gives. Each value becomes standard base64 of
//! `nonce (12 bytes) || ciphertext || tag (16 bytes)` (the nonce is all zeros in
//! deterministic mode). The column becomes Utf8, keeps its name and nullability, and its
//! field metadata records `ferry.encrypted.type` (the original type) and
//! `ferry.encrypted.mode` (`gcm` or `gcm-siv`).
//!
//! Decrypt restores the type in `options.type`, else the one `ferry.encrypted.type`
//! records, else leaves Utf8; it drops the `ferry.encrypted.*` metadata. A value that
//! does not decrypt is an error naming the column and the row (counted from 1 across the
//! stream).

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::Aes256Gcm;
use aes_gcm_siv::Aes256GcmSiv;
use arrow::array::{ArrayRef, BinaryArray, StringArray};
use arrow::compute::{can_cast_types, cast_with_options};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_core::secret::resolve_secret;
use ferry_core::{Error, Result, TransformSpec};
use rand::rngs::SysRng;
use rand::TryRng;
use serde::Deserialize;

use crate::digest::{
    distinct_columns, is_binary, map_columns, schema_with, strict_cast, ByteColumn,
};
use crate::util;
use crate::Transform;

const TYPE_KEY: &str = "ferry.encrypted.type";
const MODE_KEY: &str = "ferry.encrypted.mode";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EncryptOptions {
    key_ref: Option<String>,
    #[serde(default)]
    deterministic: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DecryptOptions {
    key_ref: Option<String>,
    #[serde(default)]
    deterministic: bool,
    #[serde(rename = "type")]
    restore: Option<String>,
}

enum Cipher {
    Gcm(Box<Aes256Gcm>),
    GcmSiv(Box<Aes256GcmSiv>),
}

impl Cipher {
    fn bind(spec: &TransformSpec, key_ref: Option<String>, deterministic: bool) -> Result<Self> {
        let invalid = |reason: String| Error::invalid_transform(spec.label(), reason);
        let reference = key_ref.ok_or_else(|| {
            invalid("needs options.keyRef (env:NAME or file:PATH) naming a 32-byte key".into())
        })?;
        let material = resolve_secret(&reference).map_err(|e| invalid(format!("keyRef: {e}")))?;
        let key = decode_key(&material).ok_or_else(|| {
            invalid(format!(
                "the key '{reference}' names must be 32 bytes, written as 64 hex characters, \
                 standard base64 or raw bytes; it has {} bytes",
                material.len()
            ))
        })?;
        Ok(if deterministic {
            Cipher::GcmSiv(Box::new(Aes256GcmSiv::new(&key.into())))
        } else {
            Cipher::Gcm(Box::new(Aes256Gcm::new(&key.into())))
        })
    }

    fn mode(&self) -> &'static str {
        match self {
            Cipher::Gcm(_) => "gcm",
            Cipher::GcmSiv(_) => "gcm-siv",
        }
    }

    /// `nonce || ciphertext || tag`.
    fn seal(&self, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Option<Vec<u8>> {
        let sealed = match self {
            Cipher::Gcm(c) => c.encrypt(&nonce.into(), plaintext),
            Cipher::GcmSiv(c) => c.encrypt(&nonce.into(), plaintext),
        };
        let sealed = sealed.ok()?;
        Some([&nonce[..], &sealed].concat())
    }

    /// The plaintext of a value [`Cipher::seal`] made and base64 encoded, if it authenticates.
    fn open(&self, text: &[u8]) -> Option<Vec<u8>> {
        let sealed = STANDARD.decode(text).ok()?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        match self {
            Cipher::Gcm(c) => c.decrypt(&nonce.into(), body),
            Cipher::GcmSiv(c) => c.decrypt(&nonce.into(), body),
        }
        .ok()
    }
}

/// 64 hex characters, standard base64 of 32 bytes, or 32 raw bytes.
fn decode_key(material: &[u8]) -> Option<[u8; 32]> {
    let text = material.trim_ascii();
    if text.len() == 64 {
        if let Some(key) = decode_hex(text) {
            return Some(key);
        }
    }
    if let Some(key) = STANDARD
        .decode(text)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
    {
        return Some(key);
    }
    material.try_into().ok()
}

fn decode_hex(text: &[u8]) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

struct Encrypt {
    label: String,
    cipher: Cipher,
    columns: Vec<usize>,
    schema: SchemaRef,
}

pub(crate) fn bind_encrypt(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    let EncryptOptions {
        key_ref,
        deterministic,
    } = util::options(spec)?;
    let columns = distinct_columns(spec, input)?;
    let cipher = Cipher::bind(spec, key_ref, deterministic)?;
    let mut changed = Vec::with_capacity(columns.len());
    for &i in &columns {
        let field = input.field(i);
        let t = field.data_type();
        if !ByteColumn::supports(t) {
            return Err(Error::invalid_transform(
                spec.label(),
                format!(
                    "column '{}' has type {t}, which Encrypt cannot read",
                    field.name()
                ),
            ));
        }
        let mut metadata = field.metadata().clone();
        metadata.insert(TYPE_KEY.into(), t.to_string());
        metadata.insert(MODE_KEY.into(), cipher.mode().into());
        changed.push((
            i,
            Field::new(field.name(), DataType::Utf8, field.is_nullable()).with_metadata(metadata),
        ));
    }
    Ok(Box::new(Encrypt {
        label: spec.label(),
        cipher,
        columns,
        schema: schema_with(input, changed),
    }))
}

impl Transform for Encrypt {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        map_columns(&batch, &self.schema, &self.columns, |i, array| {
            let name = self.schema.field(i).name();
            let fail = |detail: String| {
                crate::data_error(&self.label, format!("column '{name}': {detail}"))
            };
            let column = ByteColumn::new(array).map_err(|e| fail(e.to_string()))?;
            let values = column.values();
            let mut nonces = vec![0u8; NONCE_LEN * values.len()];
            if let Cipher::Gcm(_) = self.cipher {
                SysRng.try_fill_bytes(&mut nonces).map_err(|e| {
                    Error::Internal(format!("cannot read the system random generator: {e}"))
                })?;
            }
            let encrypted = values
                .iter()
                .zip(nonces.chunks_exact(NONCE_LEN))
                .map(|(value, nonce)| {
                    let Some(value) = value else { return Ok(None) };
                    let nonce = <[u8; NONCE_LEN]>::try_from(nonce)
                        .map_err(|_| Error::Internal("nonce of the wrong length".into()))?;
                    let sealed = self
                        .cipher
                        .seal(nonce, value)
                        .ok_or_else(|| fail("value too long to encrypt".into()))?;
                    Ok(Some(STANDARD.encode(sealed)))
                })
                .collect::<Result<StringArray>>()?;
            Ok(Arc::new(encrypted) as ArrayRef)
        })
    }
}

struct Decrypt {
    label: String,
    cipher: Cipher,
    columns: Vec<usize>,
    schema: SchemaRef,
    /// Rows of earlier batches, so errors can give the row in the stream.
    rows_before: usize,
}

pub(crate) fn bind_decrypt(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    let DecryptOptions {
        key_ref,
        deterministic,
        restore,
    } = util::options(spec)?;
    let invalid = |reason: String| Error::invalid_transform(spec.label(), reason);
    let columns = distinct_columns(spec, input)?;
    let cipher = Cipher::bind(spec, key_ref, deterministic)?;
    let mut changed = Vec::with_capacity(columns.len());
    for &i in &columns {
        let field = input.field(i);
        let name = field.name();
        if !util::is_string(field.data_type()) {
            return Err(invalid(format!(
                "column '{name}' has type {}; Decrypt reads the base64 text Encrypt writes",
                field.data_type()
            )));
        }
        let metadata = field.metadata();
        if let Some(mode) = metadata.get(MODE_KEY) {
            if mode != cipher.mode() {
                return Err(invalid(format!(
                    "column '{name}' was encrypted in mode {mode}; set options.deterministic \
                     to {}",
                    mode == "gcm-siv"
                )));
            }
        }
        let target = match restore
            .as_deref()
            .or(metadata.get(TYPE_KEY).map(String::as_str))
        {
            None => DataType::Utf8,
            Some(text) => text.parse::<DataType>().map_err(|e| {
                invalid(format!(
                    "column '{name}': cannot restore type '{text}': {e}"
                ))
            })?,
        };
        let via = if is_binary(&target) {
            DataType::Binary
        } else {
            DataType::Utf8
        };
        if !can_cast_types(&via, &target) {
            return Err(invalid(format!(
                "column '{name}': cannot restore type {target} from decrypted values"
            )));
        }
        let metadata: HashMap<String, String> = metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("ferry.encrypted."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        changed.push((
            i,
            Field::new(name, target, field.is_nullable()).with_metadata(metadata),
        ));
    }
    Ok(Box::new(Decrypt {
        label: spec.label(),
        cipher,
        columns,
        schema: schema_with(input, changed),
        rows_before: 0,
    }))
}

impl Transform for Decrypt {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let out = map_columns(&batch, &self.schema, &self.columns, |i, array| {
            self.decrypt(i, array)
        })?;
        self.rows_before += batch.num_rows();
        Ok(out)
    }
}

impl Decrypt {
    fn decrypt(&self, i: usize, array: &ArrayRef) -> Result<ArrayRef> {
        let field = self.schema.field(i);
        let (name, target) = (field.name(), field.data_type());
        // `row` is the index in this batch; errors give the row in the stream, from 1.
        let fail = |row: Option<usize>, detail: &str| {
            let at = row.map_or(String::new(), |r| {
                format!(" row {}", self.rows_before + r + 1)
            });
            crate::data_error(&self.label, format!("column '{name}'{at}: {detail}"))
        };
        let column = ByteColumn::new(array).map_err(|e| fail(None, &e.to_string()))?;
        let plain = column
            .values()
            .iter()
            .enumerate()
            .map(|(row, text)| {
                text.map(|text| {
                    self.cipher.open(text).ok_or_else(|| {
                        fail(Some(row), "cannot decrypt (wrong key or damaged value)")
                    })
                })
                .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let restored: ArrayRef = if is_binary(target) {
            Arc::new(BinaryArray::from_iter(plain))
        } else {
            let text = plain
                .into_iter()
                .enumerate()
                .map(|(row, v)| {
                    v.map(|v| {
                        String::from_utf8(v).map_err(|_| {
                            let detail = "the decrypted value is not UTF-8 text; \
                                          set options.type to Binary";
                            fail(Some(row), detail)
                        })
                    })
                    .transpose()
                })
                .collect::<Result<StringArray>>()?;
            Arc::new(text)
        };
        if restored.data_type() == target {
            return Ok(restored);
        }
        cast_with_options(&restored, target, &strict_cast())
            .map_err(|e| fail(None, &format!("cannot restore type {target}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Date32Array, Int64Array};
    use arrow::datatypes::Int64Type;
    use ferry_core::Action;
    use serde_json::{json, Value};

    use crate::digest::tests::{batch, spec};

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    /// A keyRef to `key`, in an environment variable only this test uses.
    fn key_ref(test: &str, key: &str) -> String {
        let name = format!("FERRY_TEST_CRYPT_KEY_{test}_{}", std::process::id());
        std::env::set_var(&name, key);
        format!("env:{name}")
    }

    fn options(key_ref: &str, deterministic: bool) -> Value {
        json!({ "keyRef": key_ref, "deterministic": deterministic })
    }

    fn mixed_batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "name",
                Arc::new(StringArray::from(vec![
                    Some("ada"),
                    None,
                    Some("ada"),
                    Some(""),
                ])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(1), Some(-2), None, Some(1)])),
            ),
            ("keep", Arc::new(Date32Array::from(vec![1, 2, 3, 4]))),
        ])
        .unwrap()
    }

    fn bind_apply(action: Action, options: Value, b: RecordBatch) -> Result<RecordBatch> {
        let s = spec(action, &["name", "n"], options);
        let mut t = crate::bind(&s, &b.schema())?;
        let out = t.apply(b)?;
        assert_eq!(out.schema(), t.output_schema());
        Ok(out)
    }

    #[test]
    fn round_trips_strings_and_integers_in_both_modes() {
        let key = key_ref("round_trip", HEX_KEY);
        for deterministic in [false, true] {
            let input = mixed_batch();
            let enc =
                bind_apply(Action::Encrypt, options(&key, deterministic), input.clone()).unwrap();
            let schema = enc.schema();
            for (i, original) in [(0, "Utf8"), (1, "Int64")] {
                let f = schema.field(i);
                assert_eq!(f.data_type(), &DataType::Utf8);
                assert_eq!(f.metadata()[TYPE_KEY], original);
                let mode = if deterministic { "gcm-siv" } else { "gcm" };
                assert_eq!(f.metadata()[MODE_KEY], mode);
            }
            let names = enc.column(0).as_string::<i32>();
            assert!(names.is_null(1));
            assert_ne!(names.value(0), "ada");
            assert_eq!(names.value(0) == names.value(2), deterministic);
            let ns = enc.column(1).as_string::<i32>();
            assert_eq!(ns.value(0) == ns.value(3), deterministic);

            let dec = bind_apply(Action::Decrypt, options(&key, deterministic), enc).unwrap();
            assert_eq!(dec.columns(), input.columns());
            assert_eq!(dec.schema(), input.schema());
        }
    }

    #[test]
    fn decrypt_without_metadata_gives_text_or_the_type_asked_for() {
        let key = key_ref("no_metadata", HEX_KEY);
        let enc = bind_apply(Action::Encrypt, options(&key, false), mixed_batch()).unwrap();
        // A file format that drops field metadata.
        let bare = RecordBatch::try_from_iter(
            enc.schema()
                .fields()
                .iter()
                .zip(enc.columns())
                .map(|(f, c)| (f.name().clone(), c.clone())),
        )
        .unwrap();
        let dec = bind_apply(Action::Decrypt, options(&key, false), bare.clone()).unwrap();
        assert_eq!(
            dec.column(1).as_ref(),
            &StringArray::from(vec![Some("1"), Some("-2"), None, Some("1")])
        );
        let s = spec(
            Action::Decrypt,
            &["n"],
            json!({"keyRef": key, "type": "Int64"}),
        );
        let mut t = crate::bind(&s, &bare.schema()).unwrap();
        let dec = t.apply(bare).unwrap();
        assert_eq!(dec.column(1).as_primitive::<Int64Type>().value(1), -2);
    }

    #[test]
    fn binary_round_trips_as_binary() {
        let key = key_ref("binary", HEX_KEY);
        let bytes: &[u8] = &[0, 159, 146, 150, 255];
        let b = batch("b", Arc::new(BinaryArray::from(vec![Some(bytes), None])));
        let enc_spec = spec(Action::Encrypt, &["b"], options(&key, false));
        let mut enc = crate::bind(&enc_spec, &b.schema()).unwrap();
        let encrypted = enc.apply(b.clone()).unwrap();
        let dec_spec = spec(Action::Decrypt, &["b"], options(&key, false));
        let mut dec = crate::bind(&dec_spec, &encrypted.schema()).unwrap();
        assert_eq!(dec.apply(encrypted.clone()).unwrap().column(0), b.column(0));

        // Without the recorded type the bytes would have to be text.
        let bare = batch("b", encrypted.column(0).clone());
        let mut dec = crate::bind(&dec_spec, &bare.schema()).unwrap();
        let err = dec.apply(bare).unwrap_err();
        assert!(
            err.to_string()
                .contains("column 'b' row 1: the decrypted value is not UTF-8 text"),
            "{err}"
        );
    }

    #[test]
    fn wrong_key_or_damage_fails_naming_column_and_row() {
        let key = key_ref("wrong_a", HEX_KEY);
        let other = key_ref("wrong_b", &"ab".repeat(32));
        let enc = bind_apply(Action::Encrypt, options(&key, false), mixed_batch()).unwrap();
        let s = spec(Action::Decrypt, &["name"], options(&other, false));
        let mut t = crate::bind(&s, &enc.schema()).unwrap();
        let err = t.apply(enc.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "transformation Decrypt: column 'name' row 1: cannot decrypt (wrong key or damaged value)"
        );

        // Rows are counted across batches; a value that is not base64 is damage too.
        let s = spec(Action::Decrypt, &["name"], options(&key, false));
        let mut t = crate::bind(&s, &enc.schema()).unwrap();
        t.apply(enc.clone()).unwrap();
        let mut names: Vec<Option<String>> = enc
            .column(0)
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(String::from))
            .collect();
        names[2] = Some("not base64!".into());
        let damaged = RecordBatch::try_new(
            enc.schema(),
            vec![
                Arc::new(StringArray::from(names)),
                enc.column(1).clone(),
                enc.column(2).clone(),
            ],
        )
        .unwrap();
        let err = t.apply(damaged).unwrap_err();
        assert!(err.to_string().contains("column 'name' row 7:"), "{err}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn mode_mismatch_is_a_config_error() {
        let key = key_ref("mode", HEX_KEY);
        let enc = bind_apply(Action::Encrypt, options(&key, true), mixed_batch()).unwrap();
        let s = spec(Action::Decrypt, &["name"], options(&key, false));
        let err = crate::bind(&s, &enc.schema()).err().unwrap();
        assert!(
            err.to_string()
                .contains("set options.deterministic to true"),
            "{err}"
        );
    }

    #[test]
    fn keys_from_files_in_base64_and_raw() {
        let dir = std::env::temp_dir();
        let raw = [7u8; 32];
        for (suffix, contents) in [
            ("b64", format!("{}\n", STANDARD.encode(raw)).into_bytes()),
            ("raw", raw.to_vec()),
        ] {
            let path = dir.join(format!("ferry-crypt-key-{}-{suffix}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            let key = format!("file:{}", path.display());
            let enc = bind_apply(Action::Encrypt, options(&key, true), mixed_batch()).unwrap();
            // Both spellings name the same key.
            let hex = key_ref(&format!("file_{suffix}"), &"07".repeat(32));
            let dec = bind_apply(Action::Decrypt, options(&hex, true), enc).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(dec.columns(), mixed_batch().columns());
        }
    }

    #[test]
    fn bad_keys_and_options_are_config_errors() {
        let schema = mixed_batch().schema();
        let bind_err = |options: Value| {
            let s = spec(Action::Encrypt, &["name"], options);
            let err = crate::bind(&s, &schema).err().expect("bind should fail");
            assert_eq!(err.exit_code(), 2);
            err.to_string()
        };
        let short = key_ref("short", "0011223344");
        let e = bind_err(json!({ "keyRef": short }));
        assert!(
            e.contains("must be 32 bytes") && e.contains("has 10 bytes"),
            "{e}"
        );
        assert!(!e.contains("0011223344"), "key shown: {e}");
        let e = bind_err(json!({}));
        assert!(e.contains("needs options.keyRef"), "{e}");
        let e = bind_err(json!({"keyRef": "env:FERRY_TEST_CRYPT_SURELY_UNSET"}));
        assert!(
            e.contains("FERRY_TEST_CRYPT_SURELY_UNSET is not set"),
            "{e}"
        );
        let e = bind_err(json!({"keyRef": short, "type": "Int64"}));
        assert!(e.contains("unknown field `type`"), "{e}");

        let key = key_ref("bad_options", HEX_KEY);
        let s = spec(Action::Decrypt, &["n"], json!({ "keyRef": key }));
        let err = crate::bind(&s, &schema).err().unwrap();
        assert!(
            err.to_string().contains("column 'n' has type Int64"),
            "{err}"
        );
        let s = spec(
            Action::Decrypt,
            &["name"],
            json!({ "keyRef": key, "type": "Int65" }),
        );
        let err = crate::bind(&s, &schema).err().unwrap();
        assert!(
            err.to_string().contains("cannot restore type 'Int65'"),
            "{err}"
        );
    }

    #[test]
    fn recorded_types_parse_back() {
        for t in [
            DataType::Int64,
            DataType::Float64,
            DataType::Boolean,
            DataType::Date32,
            DataType::Decimal128(10, 2),
            DataType::LargeUtf8,
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
        ] {
            assert_eq!(t.to_string().parse::<DataType>().unwrap(), t, "{t}");
        }
    }
}
