//! What a task's `waitFor` (before it runs) and `check` (after) look at. Each evaluation
//! answers whether the condition holds and what it saw, for the task's status and the
//! error when it never holds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ferry_core::{DataAddress, Error};

use super::run::substitute;
use super::spec::{Condition, ObjectsCondition};

/// How long one evaluation may take before it counts as not holding.
const EVALUATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `condition` holds now, and what it saw. `params` fill its placeholders; the
/// text never holds a secret (addresses are shown redacted).
pub async fn evaluate(condition: &Condition, params: &BTreeMap<String, String>) -> (bool, String) {
    let value = substitute(&serde_json::to_value(condition).unwrap_or_default(), params);
    let condition: Condition = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(e) => return (false, format!("invalid condition: {e}")),
    };
    match tokio::time::timeout(EVALUATION_TIMEOUT, check(&condition)).await {
        Ok(Ok(seen)) => seen,
        Ok(Err(e)) => (false, ferry_core::error::one_line(&e.to_string())),
        Err(_) => (
            false,
            format!("no answer within {} s", EVALUATION_TIMEOUT.as_secs()),
        ),
    }
}

async fn check(c: &Condition) -> Result<(bool, String), Error> {
    if let Some(objects) = &c.objects {
        return objects_exist(objects).await;
    }
    if let Some(table) = &c.table {
        let address = DataAddress::parse(table)?;
        let DataAddress::Table(t) = &address else {
            return Err(Error::invalid_option(
                "table",
                format!("{address} is not a table"),
            ));
        };
        return Ok(match ferry_connectors::tables::open_table(t).await {
            Ok(_) => (true, format!("table {address} exists")),
            Err(e) => (false, ferry_core::error::one_line(&e.to_string())),
        });
    }
    if let Some(q) = &c.query {
        let (holds, value) = ferry_engine::count::query_holds(&q.url, &q.sql).await?;
        return Ok((holds, format!("the query returned {value}")));
    }
    if let Some(ends) = &c.row_count {
        let source = DataAddress::parse(&ends.source)?;
        let destination = DataAddress::parse(&ends.destination)?;
        let (a, b) = tokio::try_join!(
            ferry_engine::count::count_rows(&source),
            ferry_engine::count::count_rows(&destination)
        )?;
        let text = format!("{a} rows at {source}, {b} at {destination}");
        return Ok((a == b, text));
    }
    if let Some(ends) = &c.verify {
        let source = DataAddress::parse(&ends.source)?;
        let destination = DataAddress::parse(&ends.destination)?;
        let report =
            ferry_engine::verify(&source, &destination, &ferry_engine::CopyOptions::default())
                .await?;
        let same = report.differences.is_empty();
        let text = match report.differences.first() {
            None => format!("{} objects identical", report.compared),
            Some(first) => format!(
                "{} differences, the first: {}",
                report.differences.len(),
                serde_json::to_string(first).unwrap_or_default()
            ),
        };
        return Ok((same, text));
    }
    Err(Error::invalid_option("condition", "names nothing to check"))
}

/// Objects under an address: how many match the glob, whether the marker is there, and
/// (for local files) whether they are old enough.
async fn objects_exist(o: &ObjectsCondition) -> Result<(bool, String), Error> {
    let address = DataAddress::parse(&o.address)?;
    let source = ferry_connectors::open_source(&address)?;
    let listing = match source.list().await {
        Ok(l) => l,
        Err(Error::NotFound { .. }) => Default::default(),
        Err(e) => return Err(e),
    };
    let glob = match &o.glob {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|e| Error::invalid_option("glob", e.to_string()))?
                .compile_matcher(),
        ),
        None => None,
    };
    let now = SystemTime::now();
    let mut matching = 0u64;
    let mut young = 0u64;
    let mut marker = false;
    for entry in &listing.entries {
        if o.marker.as_deref() == Some(entry.key.as_str()) {
            marker = true;
            continue;
        }
        if glob.as_ref().is_some_and(|g| !g.is_match(&entry.key)) {
            continue;
        }
        if let (Some(min), Some(path)) = (o.min_age_seconds, source.local_path(entry)) {
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if age < Duration::from_secs(min) {
                young += 1;
                continue;
            }
        }
        matching += 1;
    }
    let wanted = o.min_count.unwrap_or(1);
    let mut seen = format!("{matching} of {wanted} objects under {address}");
    if young > 0 {
        seen.push_str(&format!(
            ", {young} younger than {} s",
            o.min_age_seconds.unwrap_or(0)
        ));
    }
    if let Some(m) = &o.marker {
        seen.push_str(if marker { ", " } else { ", no " });
        seen.push_str(m);
    }
    Ok((matching >= wanted && (o.marker.is_none() || marker), seen))
}
