//! Triggers: new objects under a prefix, and the end of another pipeline's or transfer's
//! run, each starting pipeline runs.
//!
//! What a trigger has already fired for lives in the store (a `trigger` document per
//! pipeline), so an object fires once across restarts and across control planes. A run a
//! trigger makes has an id derived from what fired it (the objects with their versions, or
//! the run that ended): the pipeline's run is created before the watermark moves, and a
//! process that dies in between, or a second control plane doing the same, finds the run
//! there and makes no other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ferry_core::{DataAddress, Result};
use ferry_state::DocumentRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::runner::{create_run, events_key, PipelineDoc, PIPELINE_RUN};
use super::spec::{ObjectCreated, PipelineSpec, When};
use crate::controller::{lock, now_ms, Inner};

pub const TRIGGER: &str = "trigger";
/// How often a prefix is listed unless `pollSeconds` says.
pub const DEFAULT_POLL_SECONDS: u64 = 1;
/// The longest wait between listings of a store that does not answer.
const MAX_BACKOFF_MS: i64 = 300_000;

/// What a pipeline's trigger has fired for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Watermark {
    /// The pipeline's uid: a pipeline made again under the name starts afresh.
    uid: String,
    /// objectCreated: every object seen, with its version (an object written again fires
    /// again). Objects that disappear are forgotten.
    #[serde(default)]
    seen: BTreeMap<String, String>,
    /// after: runs that ended up to this time were looked at.
    #[serde(default)]
    after_ms: i64,
    #[serde(default)]
    after_ids: BTreeSet<String>,
}

/// In memory: when each pipeline's trigger is next looked at, and how many times in a
/// row its store did not answer.
#[derive(Default)]
pub struct Polls {
    next: HashMap<String, (i64, u32)>,
}

/// Looks at the trigger of every pipeline that has one and is due.
pub(crate) async fn poll(inner: &Arc<Inner>, doc: &PipelineDoc, spec: &PipelineSpec) {
    let Some(trigger) = &spec.trigger else {
        return;
    };
    if spec.suspend {
        return;
    }
    let name = doc.name().to_string();
    let now = now_ms();
    let due = lock(&inner.trigger_polls)
        .next
        .get(&name)
        .is_none_or(|(at, _)| *at <= now);
    if !due {
        return;
    }
    let outcome = match (&trigger.object_created, &trigger.after) {
        (Some(o), _) => objects(inner, doc, spec, o).await,
        (None, Some(after)) => match (&after.pipeline, &after.transfer) {
            (Some(p), _) => after_pipeline(inner, doc, spec, p, after.when).await,
            (None, Some(t)) => after_transfer(inner, doc, spec, t, after.when).await,
            _ => Ok(()),
        },
        _ => Ok(()),
    };
    let poll_ms = trigger
        .object_created
        .as_ref()
        .and_then(|o| o.poll_seconds)
        .unwrap_or(DEFAULT_POLL_SECONDS) as i64
        * 1000;
    let failures = {
        let mut polls = lock(&inner.trigger_polls);
        let before = polls.next.get(&name).map_or(0, |(_, f)| *f);
        let failures = if outcome.is_ok() { 0 } else { before + 1 };
        let wait = match failures {
            0 => poll_ms,
            n => (poll_ms << n.min(10)).min(MAX_BACKOFF_MS),
        };
        polls.next.insert(name.clone(), (now + wait, failures));
        failures
    };
    // Said once per streak of failures, not at every try.
    if let (Err(e), 1) = (outcome, failures) {
        inner
            .emit(
                &events_key(&name),
                None,
                "Warning",
                "TriggerFailing",
                format!(
                    "the trigger cannot look at its store; trying again with backoff: {}",
                    ferry_core::error::one_line(&e.to_string())
                ),
                json!({}),
            )
            .await;
    }
}

/// Reads the watermark, or starts one: `fresh` is what it starts with.
async fn watermark(
    inner: &Arc<Inner>,
    doc: &PipelineDoc,
    fresh: impl FnOnce() -> Watermark,
) -> Result<(Watermark, Option<i64>)> {
    let name = doc.name();
    let found = inner.store.get_document(TRIGGER, name).await?;
    if let Some(record) = &found {
        if let Ok(w) = serde_json::from_value::<Watermark>(record.document.clone()) {
            if w.uid == doc.uid {
                return Ok((w, Some(record.version)));
            }
        }
    }
    let mut w = fresh();
    w.uid = doc.uid.clone();
    Ok((w, found.map(|r| r.version)))
}

async fn save(
    inner: &Arc<Inner>,
    name: &str,
    w: &Watermark,
    expected: Option<i64>,
) -> Result<bool> {
    let mut record = DocumentRecord::new(TRIGGER, name, json!(w), now_ms());
    record.parent = Some(name.to_string());
    Ok(inner.store.put_document(&record, expected).await?.is_some())
}

/// A run id made from what fired it.
fn fired_id(pipeline: &str, what: &str) -> String {
    let hash = crate::resource::name_hash(what);
    format!(
        "{}-t{:016x}",
        pipeline.chars().take(40).collect::<String>(),
        hash
    )
}

async fn make_run(
    inner: &Arc<Inner>,
    doc: &PipelineDoc,
    spec: &PipelineSpec,
    trigger: &str,
    params: BTreeMap<String, String>,
    id: String,
) -> Result<()> {
    match create_run(inner, doc, spec, trigger, params, Some(id.clone())).await {
        Ok(_) => Ok(()),
        // Another control plane made it first.
        Err(e) => match inner.store.get_document(PIPELINE_RUN, &id).await? {
            Some(_) => Ok(()),
            None => Err(e),
        },
    }
}

async fn objects(
    inner: &Arc<Inner>,
    doc: &PipelineDoc,
    spec: &PipelineSpec,
    o: &ObjectCreated,
) -> Result<()> {
    let address = DataAddress::parse(&o.address)?;
    let source = ferry_connectors::open_source(&address)?;
    let listing = match source.list().await {
        Ok(l) => l,
        Err(ferry_core::Error::NotFound { .. }) => Default::default(),
        Err(e) => return Err(e),
    };
    let glob = o
        .glob
        .as_deref()
        .and_then(|g| globset::Glob::new(g).ok())
        .map(|g| g.compile_matcher());
    let listed: BTreeMap<String, (String, u64)> = listing
        .entries
        .iter()
        .filter(|e| glob.as_ref().is_none_or(|g| g.is_match(&e.key)))
        .map(|e| {
            (
                e.key.clone(),
                (e.version.clone().unwrap_or_default(), e.size),
            )
        })
        .collect();
    let include = o.include_existing;
    let (mut w, expected) = watermark(inner, doc, || Watermark {
        // Objects already there when the trigger starts do not fire unless asked.
        seen: if include {
            BTreeMap::new()
        } else {
            listed
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect()
        },
        ..Watermark::default()
    })
    .await?;
    let new: Vec<(&String, &(String, u64))> = listed
        .iter()
        .filter(|(k, (v, _))| w.seen.get(*k) != Some(v))
        .collect();
    let batch = o.batch.unwrap_or(1).max(1) as usize;
    let name = doc.name();
    for group in new.chunks(batch) {
        let keys: Vec<&str> = group.iter().map(|(k, _)| k.as_str()).collect();
        let what: String = group
            .iter()
            .map(|(k, (v, _))| format!("{k}@{v};"))
            .collect();
        let (first, (_, size)) = group[0];
        let params = BTreeMap::from([
            ("trigger.object.key".to_string(), first.clone()),
            (
                "trigger.object.address".to_string(),
                address.join(first).to_string(),
            ),
            ("trigger.object.size".to_string(), size.to_string()),
            ("trigger.objects".to_string(), keys.join(",")),
        ]);
        make_run(
            inner,
            doc,
            spec,
            "objectCreated",
            params,
            fired_id(name, &what),
        )
        .await?;
    }
    let before = w.seen.clone();
    w.seen = listed
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    if expected.is_none() || w.seen != before {
        // A lost race means another control plane moved it; the runs are the same ones.
        save(inner, name, &w, expected).await?;
    }
    Ok(())
}

fn matches(when: When, phase: &str) -> bool {
    match when {
        When::Succeeded => phase == "Succeeded",
        When::Failed => phase != "Succeeded",
        When::Completed => true,
    }
}

/// Fires for runs that ended after the watermark; returns the runs to make.
async fn after_runs(
    inner: &Arc<Inner>,
    doc: &PipelineDoc,
    spec: &PipelineSpec,
    ended: Vec<(String, i64, String)>,
    when: When,
    kind: &str,
    of: &str,
) -> Result<()> {
    let now = now_ms();
    let (mut w, expected) = watermark(inner, doc, || Watermark {
        after_ms: now,
        ..Watermark::default()
    })
    .await?;
    let name = doc.name();
    let mut newest = w.after_ms;
    let mut ids_at_newest = w.after_ids.clone();
    for (id, finished, phase) in ended {
        if finished < w.after_ms || (finished == w.after_ms && w.after_ids.contains(&id)) {
            continue;
        }
        if matches(when, &phase) {
            let params = BTreeMap::from([
                (format!("trigger.{kind}"), of.to_string()),
                ("trigger.run".to_string(), id.clone()),
                ("trigger.phase".to_string(), phase.clone()),
            ]);
            make_run(inner, doc, spec, "after", params, fired_id(name, &id)).await?;
        }
        match finished.cmp(&newest) {
            std::cmp::Ordering::Greater => {
                newest = finished;
                ids_at_newest = BTreeSet::from([id]);
            }
            std::cmp::Ordering::Equal => {
                ids_at_newest.insert(id);
            }
            std::cmp::Ordering::Less => {}
        }
    }
    if expected.is_none() || newest != w.after_ms || ids_at_newest != w.after_ids {
        w.after_ms = newest;
        w.after_ids = ids_at_newest;
        save(inner, name, &w, expected).await?;
    }
    Ok(())
}

async fn after_pipeline(
    inner: &Arc<Inner>,
    doc: &PipelineDoc,
    spec: &PipelineSpec,
    source: &str,
    when: When,
) -> Result<()> {
    let ended = super::runner::runs_of(inner, source)
        .await?
        .into_iter()
        .filter_map(|r| Some((r.id, r.finished_at?, r.phase)))
        .collect();
    after_runs(inner, doc, spec, ended, when, "pipeline", source).await
}

async fn after_transfer(
    inner: &Arc<Inner>,
    doc: &PipelineDoc,
    spec: &PipelineSpec,
    source: &str,
    when: When,
) -> Result<()> {
    let ended = inner
        .store
        .list_runs(source)
        .await?
        .into_iter()
        .filter_map(|r| Some((r.id.clone(), r.finished_at?, r.phase.clone())))
        .collect();
    after_runs(inner, doc, spec, ended, when, "transfer", source).await
}
