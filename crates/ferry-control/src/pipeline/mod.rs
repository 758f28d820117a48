//! Pipelines: a graph of tasks (transfers, commands, templates) with pre- and
//! post-conditions, triggers and notification rules.
//!
//! Built so far: the resource's shape and its validation ([`spec`]), which lists every
//! problem of a manifest at once. Storage, the API, the task runner and triggers follow.

pub mod spec;

pub use spec::{validate_pipeline, PipelineManifest, PipelineSpec, TaskKind};
