//! Pipelines: a graph of tasks (transfers, commands, templates) with pre- and
//! post-conditions, triggers and notification rules.
//!
//! - [`spec`]: the resource's shape and its validation, which lists every problem of a
//!   manifest at once;
//! - [`run`]: a pipeline run as stored, and the decisions about its tasks that need no I/O;
//! - [`runner`]: the loop that starts runs (schedules, manual runs) and advances them:
//!   each task attempt is a run of a transfer (a stored one, one made from the task's
//!   inline spec, or a `kind: Command` for a command), so the control loop dispatches it
//!   to a data plane, retries and resumes it like any run;
//! - [`conditions`]: what `waitFor` and `check` look at;
//! - [`templates`]: the built-in task templates and registered ones (`kind: TaskTemplate`),
//!   and [`template_api`] what the API does with them;
//! - [`triggers`]: new objects under a prefix, and the end of another run.

pub mod api;
pub mod conditions;
pub mod run;
pub mod runner;
pub mod spec;
pub mod template_api;
pub mod templates;
pub mod triggers;

pub use api::{PipelineRunView, PipelineStatus, PipelineView, TaskRunView};
pub use run::{PipelineRun, TaskRun};
pub use spec::{validate_pipeline, PipelineManifest, PipelineSpec, TaskKind};
pub use template_api::{TemplateStatus, TemplateView};
