//! Redact: replaces the values of the named columns, keeping nulls null.
//!
//! `options.mode`:
//! - `fixed` (the default): every value becomes `options.value` (default `XXXXXXXXXX`).
//!   On an integer column the value must be a number of the column's type.
//! - `random`: a value of the same length in characters; each digit becomes a random
//!   digit, each uppercase letter a random `A`-`Z`, each other letter (lowercase or
//!   caseless, ASCII or not) a random `a`-`z`, and every other character a random one of
//!   `!#$%&*+-./:;=?@^_~`.
//! - `formatted`: like `random`, but characters that are neither letters nor digits
//!   (punctuation, spaces, symbols) are kept, so `+49 170-1234567` may become
//!   `+31 592-8036214`.
//!
//! Columns must be strings (Utf8, LargeUtf8, Utf8View; the type is kept) or integers
//! (Int8 to UInt64). On integers `random` and `formatted` both draw a number with the same
//! sign and the same count of decimal digits that fits the type. Randomness comes from a
//! generator seeded by the operating system, so redactions cannot be reproduced.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, LargeStringArray, PrimitiveArray, StringArray,
    StringViewArray,
};
use arrow::datatypes::{
    DataType, Int16Type, Int32Type, Int64Type, Int8Type, SchemaRef, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, Result, TransformSpec};
use rand::rngs::{StdRng, SysRng};
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use serde_json::Value;

use crate::digest::{distinct_columns, map_columns};
use crate::util;
use crate::Transform;

const DEFAULT_VALUE: &str = "XXXXXXXXXX";
/// What `random` puts in place of characters that are neither letters nor digits.
const SYMBOLS: &[u8] = b"!#$%&*+-./:;=?@^_~";

#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Fixed,
    Random,
    Formatted,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    mode: Mode,
    value: Option<Value>,
}

/// How one column is redacted.
enum Plan {
    /// Strings: `fixed` writes this text, the other modes ignore it.
    Text(String),
    /// Integers: the range of the type, and for `fixed` the value (checked against it).
    Int { range: (i128, i128), fixed: i128 },
}

struct Redact {
    label: String,
    mode: Mode,
    columns: Vec<usize>,
    plans: Vec<Plan>,
    rng: StdRng,
    schema: SchemaRef,
}

pub(crate) fn bind(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    let Options { mode, value } = util::options(spec)?;
    let invalid = |reason: String| Error::invalid_transform(spec.label(), reason);
    let value = match (mode, value) {
        (Mode::Fixed, None) => DEFAULT_VALUE.to_string(),
        (Mode::Fixed, Some(Value::String(s))) => s,
        (Mode::Fixed, Some(Value::Number(n))) => n.to_string(),
        (Mode::Fixed, Some(_)) => {
            return Err(invalid("options.value must be a string or a number".into()))
        }
        (_, Some(_)) => return Err(invalid("options.value applies only to mode 'fixed'".into())),
        (_, None) => String::new(),
    };
    let columns = distinct_columns(spec, input)?;
    let mut plans = Vec::with_capacity(columns.len());
    for &i in &columns {
        let field = input.field(i);
        let (name, t) = (field.name(), field.data_type());
        let plan = if util::is_string(t) {
            Plan::Text(value.clone())
        } else if let Some(range) = int_range(t) {
            let fixed = if mode == Mode::Fixed {
                value
                    .trim()
                    .parse::<i128>()
                    .ok()
                    .filter(|v| (range.0..=range.1).contains(v))
                    .ok_or_else(|| {
                        invalid(format!(
                            "column '{name}' has type {t}; options.value '{value}' is not a {t} \
                             (set a number for mode 'fixed')"
                        ))
                    })?
            } else {
                0
            };
            Plan::Int { range, fixed }
        } else {
            return Err(invalid(format!(
                "column '{name}' has type {t}; Redact supports strings and integers"
            )));
        };
        plans.push(plan);
    }
    let rng = StdRng::try_from_rng(&mut SysRng)
        .map_err(|e| Error::Internal(format!("cannot seed the random generator: {e}")))?;
    Ok(Box::new(Redact {
        label: spec.label(),
        mode,
        columns,
        plans,
        rng,
        schema: input.clone(),
    }))
}

impl Transform for Redact {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let Self {
            label,
            mode,
            columns,
            plans,
            rng,
            schema,
        } = self;
        let mut plans = plans.iter();
        map_columns(&batch, schema, columns, |i, array| {
            let plan = plans
                .next()
                .ok_or_else(|| Error::Internal("Redact: a column without a plan".into()))?;
            match plan {
                Plan::Text(fixed) => Ok(redact_strings(array, *mode, fixed, rng)),
                Plan::Int { range, fixed } => redact_ints(array, |v| match mode {
                    Mode::Fixed => *fixed,
                    Mode::Random | Mode::Formatted => random_int(v, *range, rng),
                })
                .ok_or_else(|| {
                    let name = schema.field(i).name();
                    crate::data_error(label, format!("column '{name}': cannot redact"))
                }),
            }
        })
    }
}

fn redact_strings(array: &ArrayRef, mode: Mode, fixed: &str, rng: &mut StdRng) -> ArrayRef {
    let mut redact = |v: Option<&str>| {
        v.map(|v| match mode {
            Mode::Fixed => fixed.to_string(),
            Mode::Random | Mode::Formatted => redact_text(v, mode, rng),
        })
    };
    match array.data_type() {
        DataType::LargeUtf8 => Arc::new(
            array
                .as_string::<i64>()
                .iter()
                .map(&mut redact)
                .collect::<LargeStringArray>(),
        ),
        DataType::Utf8View => Arc::new(
            array
                .as_string_view()
                .iter()
                .map(&mut redact)
                .collect::<StringViewArray>(),
        ),
        _ => Arc::new(
            array
                .as_string::<i32>()
                .iter()
                .map(&mut redact)
                .collect::<StringArray>(),
        ),
    }
}

/// `text` with each character replaced by a random one of its class (see the module doc).
fn redact_text(text: &str, mode: Mode, rng: &mut StdRng) -> String {
    let mut pick = |set: &[u8]| char::from(set[rng.random_range(0..set.len())]);
    text.chars()
        .map(|c| {
            if c.is_numeric() {
                pick(b"0123456789")
            } else if c.is_uppercase() {
                pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            } else if c.is_alphabetic() {
                pick(b"abcdefghijklmnopqrstuvwxyz")
            } else if mode == Mode::Formatted {
                c
            } else {
                pick(SYMBOLS)
            }
        })
        .collect()
}

/// The smallest and largest value of an integer type.
fn int_range(t: &DataType) -> Option<(i128, i128)> {
    Some(match t {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, u64::MAX.into()),
        _ => return None,
    })
}

/// A random number with the sign and decimal digit count of `v`, within `(min, max)`.
fn random_int(v: i128, (min, max): (i128, i128), rng: &mut StdRng) -> i128 {
    let digits = v.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1);
    let low = if digits == 1 {
        0
    } else {
        10i128.pow(digits - 1)
    };
    let high = 10i128.pow(digits) - 1;
    // `v` itself lies in each range, so neither is empty.
    if v < 0 {
        -rng.random_range(low.max(1)..=high.min(-min))
    } else {
        rng.random_range(low..=high.min(max))
    }
}

/// Maps each non-null value of an integer column; `None` if the column is not an integer
/// one or `f` leaves the type's range (neither happens: bind checks both).
fn redact_ints(array: &ArrayRef, f: impl FnMut(i128) -> i128) -> Option<ArrayRef> {
    fn map<T>(array: &ArrayRef, mut f: impl FnMut(i128) -> i128) -> Option<ArrayRef>
    where
        T: ArrowPrimitiveType,
        T::Native: Into<i128> + TryFrom<i128>,
    {
        let out = array
            .as_primitive_opt::<T>()?
            .iter()
            .map(|v| v.map(|v| T::Native::try_from(f(v.into()))).transpose())
            .collect::<Result<PrimitiveArray<T>, _>>()
            .ok()?;
        Some(Arc::new(out))
    }
    match array.data_type() {
        DataType::Int8 => map::<Int8Type>(array, f),
        DataType::Int16 => map::<Int16Type>(array, f),
        DataType::Int32 => map::<Int32Type>(array, f),
        DataType::Int64 => map::<Int64Type>(array, f),
        DataType::UInt8 => map::<UInt8Type>(array, f),
        DataType::UInt16 => map::<UInt16Type>(array, f),
        DataType::UInt32 => map::<UInt32Type>(array, f),
        DataType::UInt64 => map::<UInt64Type>(array, f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int8Array, UInt64Array};
    use ferry_core::Action;
    use serde_json::json;

    use crate::digest::tests::{batch, run, spec};

    fn redact(options: Value, array: ArrayRef) -> Result<ArrayRef> {
        let s = spec(Action::Redact, &["v"], options);
        Ok(run(&s, batch("v", array))?.column(0).clone())
    }

    fn strings(options: Value, values: Vec<Option<&str>>) -> Vec<Option<String>> {
        let out = redact(options, Arc::new(StringArray::from(values))).unwrap();
        out.as_string::<i32>()
            .iter()
            .map(|v| v.map(String::from))
            .collect()
    }

    /// The character class `formatted` keeps: 'd'igit, 'U'pper, 'l'ower or the char.
    fn shape(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '0'..='9' => 'd',
                'A'..='Z' => 'U',
                'a'..='z' => 'l',
                c => c,
            })
            .collect()
    }

    #[test]
    fn fixed_is_the_default_and_nulls_stay_null() {
        let out = strings(json!({}), vec![Some("alice@example.com"), None, Some("")]);
        assert_eq!(
            out,
            [Some("XXXXXXXXXX".into()), None, Some("XXXXXXXXXX".into())]
        );
        let out = strings(json!({"mode": "fixed", "value": "***"}), vec![Some("x")]);
        assert_eq!(out, [Some("***".into())]);
        // Flag form turns `value=0` into a number; it is text for a string column.
        let out = strings(json!({"value": 0}), vec![Some("x")]);
        assert_eq!(out, [Some("0".into())]);
    }

    #[test]
    fn formatted_keeps_the_shape() {
        let input = "+49 170-1234567";
        let outs: Vec<String> = (0..20)
            .map(|_| strings(json!({"mode": "formatted"}), vec![Some(input)]))
            .map(|v| v[0].clone().unwrap())
            .collect();
        for out in &outs {
            assert_eq!(shape(out), "+dd ddd-ddddddd", "{out}");
        }
        assert!(outs.iter().any(|o| o != input), "never changed: {outs:?}");

        let out = strings(
            json!({"mode": "formatted"}),
            vec![Some("Jürgen Ö. 7"), None],
        );
        let first = out[0].as_deref().unwrap();
        assert_eq!(shape(first), "Ulllll U. d", "{first}");
        assert_eq!(out[1], None);
    }

    #[test]
    fn random_keeps_length_and_letter_and_digit_classes() {
        let input = "Ab9 z-Ä!";
        for _ in 0..20 {
            let out = strings(json!({"mode": "random"}), vec![Some(input)]);
            let out = out[0].as_deref().unwrap();
            assert_eq!(out.chars().count(), input.chars().count());
            let shape = shape(out);
            assert_eq!(&shape[..3], "Uld", "{out}");
            assert_eq!(&shape[4..5], "l", "{out}");
            assert_eq!(&shape[6..7], "U", "{out}");
            for i in [3, 5, 7] {
                let c = out.as_bytes()[i];
                assert!(SYMBOLS.contains(&c), "{out}");
            }
        }
    }

    #[test]
    fn other_string_types_keep_their_type() {
        let out = redact(
            json!({"mode": "formatted"}),
            Arc::new(LargeStringArray::from(vec![Some("a1"), None])),
        )
        .unwrap();
        assert_eq!(out.data_type(), &DataType::LargeUtf8);
        assert_eq!(shape(out.as_string::<i64>().value(0)), "ld");
        assert!(out.is_null(1));
    }

    #[test]
    fn integers_keep_sign_and_digit_count_within_the_type() {
        let input = vec![Some(-128i8), Some(127), Some(-5), Some(0), Some(42), None];
        for _ in 0..50 {
            let out = redact(
                json!({"mode": "random"}),
                Arc::new(Int8Array::from(input.clone())),
            )
            .unwrap();
            let out = out.as_primitive::<Int8Type>();
            assert_eq!(out.len(), input.len());
            for (got, want) in out.iter().zip(&input) {
                match (got, want) {
                    (Some(g), Some(w)) => {
                        assert_eq!(g.signum() < 0, *w < 0, "{g} for {w}");
                        assert_eq!(
                            g.unsigned_abs().to_string().len(),
                            w.unsigned_abs().to_string().len(),
                            "{g} for {w}"
                        );
                    }
                    (None, None) => {}
                    other => panic!("nullness changed: {other:?}"),
                }
            }
        }
        let out = redact(
            json!({"mode": "formatted"}),
            Arc::new(UInt64Array::from(vec![u64::MAX])),
        )
        .unwrap();
        assert_eq!(
            out.as_primitive::<UInt64Type>().value(0).to_string().len(),
            20
        );
    }

    #[test]
    fn fixed_integers_need_a_value_of_the_type() {
        let out = redact(
            json!({"value": -1}),
            Arc::new(Int8Array::from(vec![Some(5), None])),
        )
        .unwrap();
        assert_eq!(out.as_ref(), &Int8Array::from(vec![Some(-1), None]));

        for value in [json!("XXXXXXXXXX"), json!(300), json!(1.5)] {
            let err = redact(
                json!({ "value": value }),
                Arc::new(Int8Array::from(vec![1])),
            )
            .unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(
                err.to_string().contains("column 'v' has type Int8"),
                "{err}"
            );
        }
        let err = redact(json!({}), Arc::new(Int8Array::from(vec![1]))).unwrap_err();
        assert!(err.to_string().contains("set a number"), "{err}");
    }

    #[test]
    fn bad_options_and_types_are_config_errors() {
        let err = redact(json!({}), Arc::new(Date32Array::from(vec![1]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "transformation Redact: column 'v' has type Date32; Redact supports strings and integers"
        );
        let text = || Arc::new(StringArray::from(vec!["a"])) as ArrayRef;
        let err = redact(json!({"mode": "scramble"}), text()).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("unknown variant `scramble`"), "{shown}");
        assert!(shown.contains("`fixed`, `random`, `formatted`"), "{shown}");
        let err = redact(json!({"mode": "random", "value": "x"}), text()).unwrap_err();
        assert!(err.to_string().contains("only to mode 'fixed'"), "{err}");
        let err = redact(json!({"value": ["x"]}), text()).unwrap_err();
        assert!(err.to_string().contains("string or a number"), "{err}");
    }
}
