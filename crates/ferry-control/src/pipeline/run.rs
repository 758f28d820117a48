//! A pipeline run as stored, and the decisions about its tasks that need no I/O: which
//! tasks may start, which are skipped, and how the run ends.
//!
//! A run keeps the spec it started with, so a pipeline replaced meanwhile changes its next
//! runs, not this one. Each task moves `Pending` → (`Waiting` while its `waitFor` does not
//! hold) → `Running` (one attempt: a run of a transfer, stored or made for it) →
//! (`Checking`) → `Succeeded`; a failed attempt goes to `Retrying` while retries are left,
//! else to `Failed`. A task whose dependencies ended otherwise than it asked is `Skipped`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::spec::{OnFailure, PipelineSpec, TaskSpec, When};

pub const PENDING: &str = "Pending";
pub const WAITING: &str = "Waiting";
pub const RUNNING: &str = "Running";
pub const CHECKING: &str = "Checking";
pub const RETRYING: &str = "Retrying";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const SKIPPED: &str = "Skipped";
pub const CANCELLED: &str = "Cancelled";

/// One run of a pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRun {
    pub id: String,
    pub pipeline: String,
    /// The pipeline's uid when the run was made.
    pub pipeline_uid: String,
    /// Pending, Running, Succeeded, Failed, Cancelled.
    pub phase: String,
    /// manual, schedule, objectCreated, after.
    pub trigger: String,
    /// Every parameter's value, `trigger.*` included.
    pub params: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub spec: Value,
    /// By task name.
    pub tasks: BTreeMap<String, TaskRun>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The control plane advancing it, and until when its claim holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<i64>,
}

/// One task of a pipeline run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRun {
    pub phase: String,
    /// Attempts started so far.
    pub attempt: u32,
    /// The transfer whose run is the current attempt, and that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// A retry starts no earlier; a waiting condition is next polled then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<i64>,
    /// What the condition last saw (`2 of 3 objects, no _SUCCESS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The last attempt's statistics (records, bytes, outputs, a command's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub stats: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A failure its task expects (`onFailure: handled`): no one is notified and the
    /// pipeline run may still succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handled: bool,
}

impl TaskRun {
    pub fn finished(&self) -> bool {
        [SUCCEEDED, FAILED, SKIPPED, CANCELLED].contains(&self.phase.as_str())
    }

    /// Holds a slot of `maxParallel`: an attempt runs or is checked.
    pub fn busy(&self) -> bool {
        [RUNNING, CHECKING].contains(&self.phase.as_str())
    }
}

impl PipelineRun {
    pub fn finished(&self) -> bool {
        self.finished_at.is_some()
    }

    pub fn spec(&self) -> Option<PipelineSpec> {
        serde_json::from_value(self.spec.clone()).ok()
    }
}

/// What to do with a pending task now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Its dependencies have not all ended.
    Wait,
    /// It may start.
    Start,
    /// It will not run; why.
    Skip(String),
}

/// Whether `task` may start, given how the others stand. `failing` is the task whose
/// failure fails the run (`onFailure: fail`), if any: from then on only tasks on a
/// failure branch (a dependency `when: failed` or `completed`) start.
pub fn next(task: &TaskSpec, tasks: &BTreeMap<String, TaskRun>, failing: Option<&str>) -> Next {
    for dep in &task.depends_on {
        let Some(state) = tasks.get(&dep.task) else {
            return Next::Skip(format!("it depends on unknown task {}", dep.task));
        };
        if !state.finished() {
            return Next::Wait;
        }
    }
    for dep in &task.depends_on {
        let state = &tasks[&dep.task];
        let ok = match dep.when {
            When::Succeeded => state.phase == SUCCEEDED,
            When::Failed => state.phase == FAILED,
            When::Completed => state.phase == SUCCEEDED || state.phase == FAILED,
        };
        if !ok {
            let when = match dep.when {
                When::Succeeded => "succeeded",
                When::Failed => "failed",
                When::Completed => "completed",
            };
            return Next::Skip(format!(
                "it runs when {} {when}, which ended {}",
                dep.task,
                state.phase.to_ascii_lowercase()
            ));
        }
    }
    if let Some(failed) = failing {
        let on_failure_branch = task.depends_on.iter().any(|d| d.when != When::Succeeded);
        if !on_failure_branch {
            return Next::Skip(format!("the run fails: task {failed} failed"));
        }
    }
    Next::Start
}

/// The task whose failure fails the whole run now, if any.
pub fn failing<'a>(spec: &'a PipelineSpec, tasks: &BTreeMap<String, TaskRun>) -> Option<&'a str> {
    spec.tasks
        .iter()
        .find(|t| {
            t.on_failure == OnFailure::Fail && tasks.get(&t.name).is_some_and(|s| s.phase == FAILED)
        })
        .map(|t| t.name.as_str())
}

/// How the run ends once every task has: Succeeded unless a task failed without being
/// handled; the error names the failed tasks.
pub fn outcome(tasks: &BTreeMap<String, TaskRun>) -> (&'static str, Option<String>) {
    let failed: Vec<String> = tasks
        .iter()
        .filter(|(_, t)| t.phase == FAILED && !t.handled)
        .map(|(name, t)| match &t.error {
            Some(e) => format!("{name}: {e}"),
            None => name.clone(),
        })
        .collect();
    if failed.is_empty() {
        (SUCCEEDED, None)
    } else {
        (FAILED, Some(failed.join("; ")))
    }
}

/// The delay before retry `attempt` (1 for the first retry): the task's backoff doubling
/// each time, at most an hour.
pub fn backoff_ms(base_seconds: u64, attempt: u32) -> i64 {
    let factor = 1u64 << attempt.saturating_sub(1).min(12);
    (base_seconds.saturating_mul(factor).min(3600) * 1000) as i64
}

/// `${params.x}` and `${trigger.y}` replaced by their values in every string of `value`;
/// other placeholders are left as they are, and a value is never substituted again.
pub fn substitute(value: &Value, params: &BTreeMap<String, String>) -> Value {
    fill(value, &|used: &str| match used.strip_prefix("params.") {
        Some(name) => params.get(name),
        None if used.starts_with("trigger.") => params.get(used),
        None => None,
    })
}

/// Every `${name}` in the strings of `value` for which `with` has a value replaced by it,
/// in one pass.
pub fn fill<'a>(value: &Value, with: &impl Fn(&str) -> Option<&'a String>) -> Value {
    match value {
        Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let Some(len) = rest[start + 2..].find('}') else {
                    break;
                };
                let name = &rest[start + 2..start + 2 + len];
                out.push_str(&rest[..start]);
                match with(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 3 + len]),
                }
                rest = &rest[start + 3 + len..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, with)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, with)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The name of the transfer a task of a run executes as: `<run>-<task>`, or, when that is
/// too long for a name, its start and a hash of the whole.
pub fn task_transfer_name(run: &str, task: &str) -> String {
    let whole = format!("{run}-{task}");
    if whole.len() <= 63 {
        return whole;
    }
    let hash = crate::resource::name_hash(&whole);
    let head: String = whole.chars().take(46).collect();
    format!("{}-{:016x}", head.trim_end_matches('-'), hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spec::Dependency;

    fn task(name: &str, deps: &[(&str, When)]) -> TaskSpec {
        serde_json::from_value::<TaskSpec>(serde_json::json!({
            "name": name, "transferRef": "t"
        }))
        .map(|mut t| {
            t.depends_on = deps
                .iter()
                .map(|(d, w)| Dependency {
                    task: d.to_string(),
                    when: *w,
                })
                .collect();
            t
        })
        .unwrap()
    }

    fn states(list: &[(&str, &str)]) -> BTreeMap<String, TaskRun> {
        list.iter()
            .map(|(n, p)| {
                (
                    n.to_string(),
                    TaskRun {
                        phase: p.to_string(),
                        ..TaskRun::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_task_waits_for_every_dependency_then_starts_or_is_skipped_by_its_when() {
        let load = task(
            "report",
            &[("load", When::Succeeded), ("check", When::Succeeded)],
        );
        let s = states(&[("load", SUCCEEDED), ("check", RUNNING)]);
        assert_eq!(next(&load, &s, None), Next::Wait);
        let s = states(&[("load", SUCCEEDED), ("check", SUCCEEDED)]);
        assert_eq!(next(&load, &s, None), Next::Start);
        let s = states(&[("load", SUCCEEDED), ("check", FAILED)]);
        assert_eq!(
            next(&load, &s, None),
            Next::Skip("it runs when check succeeded, which ended failed".into())
        );
        // A failure branch runs on failure only; completed runs either way.
        let cleanup = task("cleanup", &[("load", When::Failed)]);
        let always = task("always", &[("load", When::Completed)]);
        let s = states(&[("load", FAILED)]);
        assert_eq!(next(&cleanup, &s, Some("load")), Next::Start);
        assert_eq!(next(&always, &s, Some("load")), Next::Start);
        let s = states(&[("load", SUCCEEDED)]);
        assert!(matches!(next(&cleanup, &s, None), Next::Skip(_)));
        assert_eq!(next(&always, &s, None), Next::Start);
        // A skipped dependency skips what needs it to succeed.
        let s = states(&[("load", SKIPPED), ("check", SUCCEEDED)]);
        assert!(matches!(next(&load_like("x"), &s, None), Next::Skip(_)));
    }

    fn load_like(name: &str) -> TaskSpec {
        task(name, &[("load", When::Succeeded)])
    }

    #[test]
    fn once_a_failure_fails_the_run_only_failure_branches_start() {
        let independent = task("other", &[]);
        assert_eq!(
            next(&independent, &states(&[]), Some("load")),
            Next::Skip("the run fails: task load failed".into())
        );
        let spec: PipelineSpec = serde_json::from_value(serde_json::json!({"tasks": [
            {"name": "load", "transferRef": "a"},
            {"name": "side", "transferRef": "b", "onFailure": "continue"},
            {"name": "probe", "transferRef": "c", "onFailure": "handled"}
        ]}))
        .unwrap();
        // continue and handled failures do not stop the others.
        let s = states(&[("load", SUCCEEDED), ("side", FAILED), ("probe", FAILED)]);
        assert_eq!(failing(&spec, &s), None);
        let s = states(&[("load", FAILED)]);
        assert_eq!(failing(&spec, &s), Some("load"));
    }

    #[test]
    fn a_run_succeeds_unless_a_failure_was_not_handled() {
        let mut s = states(&[("a", SUCCEEDED), ("b", SKIPPED), ("c", FAILED)]);
        s.get_mut("c").unwrap().handled = true;
        assert_eq!(outcome(&s), (SUCCEEDED, None));
        s.get_mut("c").unwrap().handled = false;
        s.get_mut("c").unwrap().error = Some("command exited with code 3".into());
        assert_eq!(
            outcome(&s),
            (FAILED, Some("c: command exited with code 3".into()))
        );
    }

    #[test]
    fn parameters_and_trigger_values_are_substituted_in_every_string() {
        let params = BTreeMap::from([
            ("date".to_string(), "2026-12-04".to_string()),
            ("trigger.object.key".to_string(), "in/a.csv".to_string()),
        ]);
        let spec = serde_json::json!({"path": "/lake/${params.date}/", "argv": ["x", "${trigger.object.key}"], "n": 3});
        assert_eq!(
            substitute(&spec, &params),
            serde_json::json!({"path": "/lake/2026-12-04/", "argv": ["x", "in/a.csv"], "n": 3})
        );
    }

    #[test]
    fn task_transfer_names_are_valid_names_and_distinct() {
        assert_eq!(task_transfer_name("daily-19a", "load"), "daily-19a-load");
        let long = "a-very-long-pipeline-name-for-orders-19ad2f3b2c1e4a7f";
        let a = task_transfer_name(long, "load-the-orders-into-postgres");
        let b = task_transfer_name(long, "load-the-orders-into-mariadb");
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert!(crate::resource::check_name(&a).is_ok(), "{a}");
        assert_eq!(backoff_ms(10, 1), 10_000);
        assert_eq!(backoff_ms(10, 3), 40_000);
        assert_eq!(backoff_ms(10, 40), 3_600_000);
    }
}
