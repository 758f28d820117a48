//! RemoveColumn: drops the named columns.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, Result, TransformSpec};
use serde::Deserialize;

use crate::util;
use crate::Transform;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {}

struct RemoveColumn {
    keep: Vec<usize>,
    schema: SchemaRef,
}

pub(crate) fn bind(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    let Options {} = util::options(spec)?;
    let drop = util::columns(spec, input)?;
    let keep: Vec<usize> = (0..input.fields().len())
        .filter(|i| !drop.contains(i))
        .collect();
    let schema = Arc::new(
        input
            .project(&keep)
            .map_err(|e| Error::Internal(e.to_string()))?,
    );
    Ok(Box::new(RemoveColumn { keep, schema }))
}

impl Transform for RemoveColumn {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let columns = self.keep.iter().map(|&i| batch.column(i).clone()).collect();
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| Error::Internal(e.to_string()))
    }
}
