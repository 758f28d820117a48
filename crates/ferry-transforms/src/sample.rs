//! Sample: keeps a deterministic pseudo-random fraction of the rows.
//!
//! `options.fraction` (required, in (0, 1]) is the share of rows to keep and
//! `options.seed` (an unsigned integer, default 0) picks which. Rows are numbered from 0
//! across every batch this instance sees; row `i` is kept when
//! `xxh3_64_with_seed(i as 8 little-endian bytes, seed) >> 11`, divided by 2^53 (a number
//! in [0, 1)), is below `fraction`. So the same seed over the same input keeps the same
//! rows however the input is split into batches.

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, Result, TransformSpec};
use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::util;
use crate::Transform;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    fraction: Option<f64>,
    #[serde(default)]
    seed: u64,
}

struct Sample {
    fraction: f64,
    seed: u64,
    next_row: u64,
    schema: SchemaRef,
}

pub(crate) fn bind(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    util::no_columns(spec)?;
    let Options { fraction, seed } = util::options(spec)?;
    let fraction = fraction.ok_or_else(|| {
        Error::invalid_transform(spec.label(), "needs options.fraction, a number in (0, 1]")
    })?;
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::invalid_transform(
            spec.label(),
            format!("options.fraction must be in (0, 1], got {fraction}"),
        ));
    }
    Ok(Box::new(Sample {
        fraction,
        seed,
        next_row: 0,
        schema: input.clone(),
    }))
}

/// Whether row `row` of the stream is kept.
fn keep(seed: u64, row: u64, fraction: f64) -> bool {
    const SCALE: f64 = (1u64 << 53) as f64;
    let unit = (xxh3_64_with_seed(&row.to_le_bytes(), seed) >> 11) as f64 / SCALE;
    unit < fraction
}

impl Transform for Sample {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let first = self.next_row;
        let rows = batch.num_rows() as u64;
        self.next_row += rows;
        let mask: Vec<bool> = (first..first + rows)
            .map(|row| keep(self.seed, row, self.fraction))
            .collect();
        if mask.iter().all(|&k| k) {
            return Ok(batch);
        }
        filter_record_batch(&batch, &BooleanArray::from(mask))
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, AsArray, Int64Array};
    use arrow::datatypes::Int64Type;
    use ferry_core::Action;
    use serde_json::{json, Value};

    use super::xxh3_64_with_seed;
    use crate::digest::tests::{batch, spec};

    /// The values of column 0 that survive, feeding `0..total` in batches of `size`.
    fn kept(options: Value, total: i64, size: i64) -> Vec<i64> {
        let s = spec(Action::Sample, &[], options);
        let schema = batch("id", Arc::new(Int64Array::from(Vec::<i64>::new()))).schema();
        let mut t = crate::bind(&s, &schema).unwrap();
        let mut out = Vec::new();
        for start in (0..total).step_by(size as usize) {
            let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(
                start..(start + size).min(total),
            ));
            let b = t.apply(batch("id", ids)).unwrap();
            assert_eq!(b.schema(), t.output_schema());
            out.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
        }
        out
    }

    #[test]
    fn keeps_about_the_fraction_deterministically() {
        let a = kept(json!({"fraction": 0.3, "seed": 7}), 20_000, 20_000);
        assert!((5_600..6_400).contains(&a.len()), "{}", a.len());
        // The same rows however the input is batched.
        assert_eq!(a, kept(json!({"fraction": 0.3, "seed": 7}), 20_000, 333));
        // Another seed picks other rows.
        assert_ne!(a, kept(json!({"fraction": 0.3, "seed": 8}), 20_000, 20_000));
        // The default seed is 0.
        assert_eq!(
            kept(json!({"fraction": 0.3}), 1_000, 100),
            kept(json!({"fraction": 0.3, "seed": 0}), 1_000, 1_000)
        );
    }

    #[test]
    fn follows_the_documented_formula() {
        // With fraction 0.5 a row is kept exactly when the hash's top bit is clear.
        let expected: Vec<i64> = (0..2_000i64)
            .filter(|&i| xxh3_64_with_seed(&(i as u64).to_le_bytes(), 42) < 1 << 63)
            .collect();
        assert_eq!(
            kept(json!({"fraction": 0.5, "seed": 42}), 2_000, 250),
            expected
        );
    }

    #[test]
    fn fraction_one_keeps_everything() {
        let all = kept(json!({"fraction": 1}), 1_000, 128);
        assert_eq!(all, (0..1_000).collect::<Vec<_>>());
    }

    #[test]
    fn rejects_bad_fractions_and_columns() {
        let schema = batch("id", Arc::new(Int64Array::from(vec![1]))).schema();
        for (options, columns, expect) in [
            (json!({}), &[][..], "needs options.fraction"),
            (json!({"fraction": 0}), &[], "must be in (0, 1], got 0"),
            (
                json!({"fraction": -0.5}),
                &[],
                "must be in (0, 1], got -0.5",
            ),
            (json!({"fraction": 1.5}), &[], "must be in (0, 1], got 1.5"),
            (json!({"fraction": "half"}), &[], "options:"),
            (
                json!({"fraction": 0.5, "seeds": 1}),
                &[],
                "unknown field `seeds`",
            ),
            (json!({"fraction": 0.5}), &["id"], "takes no 'columns'"),
        ] {
            let s = spec(Action::Sample, columns, options);
            let err = crate::bind(&s, &schema).err().expect("bind should fail");
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(expect), "{err}");
            assert!(
                err.to_string().starts_with("transformation Sample:"),
                "{err}"
            );
        }
    }
}
