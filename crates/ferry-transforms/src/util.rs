//! Helpers every transformation uses to read its spec.

use arrow::datatypes::{DataType, Schema};
use ferry_core::{Error, Result, TransformSpec};
use serde::de::DeserializeOwned;

/// Decodes `spec.options` into the action's option struct (which denies unknown fields),
/// so a misspelt key is an error that names the transformation.
pub(crate) fn options<T: DeserializeOwned>(spec: &TransformSpec) -> Result<T> {
    serde_json::from_value(serde_json::Value::Object(spec.options.clone()))
        .map_err(|e| Error::invalid_transform(spec.label(), format!("options: {e}")))
}

/// Resolves `spec.columns` to indices in `schema`; at least one column is required.
pub(crate) fn columns(spec: &TransformSpec, schema: &Schema) -> Result<Vec<usize>> {
    if spec.columns.is_empty() {
        return Err(Error::invalid_transform(
            spec.label(),
            "needs at least one column in 'columns'",
        ));
    }
    spec.columns
        .iter()
        .map(|name| column(spec, schema, name))
        .collect()
}

/// The index of column `name`, or an error listing the columns there are.
pub(crate) fn column(spec: &TransformSpec, schema: &Schema, name: &str) -> Result<usize> {
    schema.index_of(name).map_err(|_| {
        let known: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Error::invalid_transform(
            spec.label(),
            format!(
                "column '{name}' not found; columns are: {}",
                known.join(", ")
            ),
        )
    })
}

/// Rejects options on actions that take none, and columns on actions that take none.
pub(crate) fn no_columns(spec: &TransformSpec) -> Result<()> {
    if spec.columns.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid_transform(
            spec.label(),
            format!("{} takes no 'columns'", spec.action),
        ))
    }
}

pub(crate) fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}
