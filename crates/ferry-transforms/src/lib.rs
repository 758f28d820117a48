//! Governance transformations on Arrow record batches.
//!
//! A [`TransformSpec`] is bound to the schema it will see ([`bind`]); binding is where a
//! missing column, an unknown option or a clause that does not parse is reported, before
//! any data moves. A bound [`Transform`] then maps batches to batches. Column order is
//! preserved and nulls stay null.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferry_core::{Action, Error, Result, TransformSpec};

mod crypt;
mod digest;
mod filter;
mod pushdown;
mod redact;
mod remove;
mod sample;
mod util;

pub use digest::DigestAlgo;
pub use pushdown::{pushdown, Pushdown};

/// A transformation bound to its input schema.
pub trait Transform: Send {
    /// The schema of the batches [`Transform::apply`] returns.
    fn output_schema(&self) -> SchemaRef;

    /// Transforms one batch. A failure here is about the data (a value that cannot be
    /// decrypted, say) and names the transformation.
    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch>;
}

/// Binds `spec` to `input`, validating columns and options against it.
pub fn bind(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    match spec.action {
        Action::RemoveColumn => remove::bind(spec, input),
        Action::Filter => filter::bind(spec, input),
        Action::Sample => sample::bind(spec, input),
        Action::Digest => digest::bind(spec, input),
        Action::Redact => redact::bind(spec, input),
        Action::Encrypt => crypt::bind_encrypt(spec, input),
        Action::Decrypt => crypt::bind_decrypt(spec, input),
    }
}

/// Transformations applied in order, each bound to the output of the one before.
pub struct Chain {
    input: SchemaRef,
    steps: Vec<Box<dyn Transform>>,
}

impl Chain {
    pub fn bind(specs: &[TransformSpec], input: SchemaRef) -> Result<Self> {
        let mut steps: Vec<Box<dyn Transform>> = Vec::with_capacity(specs.len());
        let mut schema = input.clone();
        for spec in specs {
            let step = bind(spec, &schema)?;
            schema = step.output_schema();
            steps.push(step);
        }
        Ok(Self { input, steps })
    }

    pub fn input_schema(&self) -> SchemaRef {
        self.input.clone()
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.steps
            .last()
            .map(|s| s.output_schema())
            .unwrap_or_else(|| self.input.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn apply(&mut self, mut batch: RecordBatch) -> Result<RecordBatch> {
        for step in &mut self.steps {
            batch = step.apply(batch)?;
        }
        Ok(batch)
    }
}

/// Errors from data a transformation could not process.
pub(crate) fn data_error(spec_label: &str, detail: impl std::fmt::Display) -> Error {
    Error::data(format!("transformation {spec_label}"), detail)
}
