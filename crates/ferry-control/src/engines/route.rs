//! Which transfer service executes a run: this data plane, or one of its engines.
//!
//! The rules run in order and the first that decides wins:
//! 1. capability: only engines that handle the source and destination types, can do the
//!    run as asked (no transformation, no format change) and have a free slot are
//!    candidates; none, and the run stays here;
//! 2. the request: `spec.execution.engine` (`inProcess` or an engine's name) and
//!    `prefer` (`latency` keeps the run here, `throughput` delegates it);
//! 3. custom rules ([`RoutingRule`]), in the order they were added;
//! 4. size: the source's estimated bytes against an engine's `delegateAboveBytes`;
//! 5. load: a busy data plane delegates to an engine with `delegateWhenBusy`.
//!
//! Otherwise the run stays here. The decision carries its reason, for the run's status and
//! its `RunRouted` event.

use std::future::Future;
use std::sync::Arc;

use ferry_core::DataAddress;
use serde::{Deserialize, Serialize};

use super::config::{canonical, supported, Side};
use super::{Engines, Registered};

/// What a transfer asks of routing (`spec.execution`, or a signaling message's
/// `ferry.execution.*` properties).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRequest {
    /// `auto` (or unset), `inProcess`, or an engine's name.
    pub engine: Option<String>,
    pub prefer: Option<Prefer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Prefer {
    Latency,
    Throughput,
}

impl ExecutionRequest {
    /// The request in a manifest's `spec.execution`, which validation has checked.
    pub fn of_spec(spec: &serde_json::Value) -> Self {
        serde_json::from_value(spec["execution"].clone()).unwrap_or_default()
    }

    /// The engine named, if it is not `auto` or `inProcess`.
    pub fn named(&self) -> Option<&str> {
        self.engine
            .as_deref()
            .filter(|e| !e.eq_ignore_ascii_case("auto") && !e.eq_ignore_ascii_case("inProcess"))
    }

    fn in_process(&self) -> bool {
        self.engine
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("inProcess"))
    }
}

/// What routing sees of a run and of this data plane.
pub struct RouteInput<'a> {
    pub source: &'a DataAddress,
    pub destination: &'a DataAddress,
    /// The run converts formats or applies transformations (the record path).
    pub records: bool,
    pub request: &'a ExecutionRequest,
    /// Runs this data plane executes itself now, this one excluded.
    pub in_process_runs: usize,
    /// Runs it executes at once.
    pub capacity: usize,
    /// What it moves now.
    pub bytes_per_second: f64,
}

/// Where a run goes, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The engine's name, or `inProcess`.
    pub engine: String,
    /// The rule that decided: capability, request, size, load, default, or a custom
    /// rule's name.
    pub rule: String,
    pub reason: String,
    /// The source's estimated size, when routing asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_bytes: Option<u64>,
}

pub const IN_PROCESS: &str = "inProcess";

impl Decision {
    pub fn in_process(rule: &str, reason: impl Into<String>) -> Self {
        Self {
            engine: IN_PROCESS.into(),
            rule: rule.into(),
            reason: reason.into(),
            estimated_bytes: None,
        }
    }

    pub fn delegated(&self) -> bool {
        self.engine != IN_PROCESS
    }
}

/// A routing rule written in Rust, consulted after the request and before size.
pub trait RoutingRule: Send + Sync {
    fn name(&self) -> &str;
    /// `Some` decides; `None` leaves the run to the next rule. `candidates` are the
    /// engines that can do the run.
    fn decide(&self, input: &RouteInput<'_>, candidates: &[Arc<Registered>]) -> Option<Decision>;
}

/// Why `engine` cannot move from a store of type `source` to one of type `destination`.
pub fn unable_types(engine: &Registered, source: &str, destination: &str) -> Option<String> {
    let c = engine.engine.config();
    for (side, kind, allowed) in [
        (Side::Source, source, &c.source_types),
        (Side::Destination, destination, &c.destination_types),
    ] {
        let kind = canonical(kind);
        let allowed_here = allowed.is_empty() || allowed.iter().any(|t| canonical(t) == kind);
        if !allowed_here || !supported(c.kind, side).contains(&kind.as_str()) {
            return Some(format!(
                "engine {} does not take {kind} as a {}",
                c.name,
                side.as_str()
            ));
        }
    }
    None
}

/// Why `engine` cannot do the run, if it cannot.
pub fn unable(engine: &Registered, input: &RouteInput<'_>) -> Option<String> {
    let c = engine.engine.config();
    if let Some(why) = unable_types(engine, input.source.kind(), input.destination.kind()) {
        return Some(why);
    }
    if input.records {
        return Some(format!(
            "engine {} copies bytes as they are; the run converts formats or transforms records",
            c.name
        ));
    }
    None
}

/// Routing rules: the built-in ones around any custom ones.
#[derive(Clone, Default)]
pub struct Router {
    custom: Vec<Arc<dyn RoutingRule>>,
}

impl Router {
    pub fn with_rule(mut self, rule: Arc<dyn RoutingRule>) -> Self {
        self.custom.push(rule);
        self
    }

    /// Decides where the run goes. `size` estimates the source's bytes; it is asked only
    /// when an engine's `delegateAboveBytes` needs it. A request naming an engine that
    /// cannot do the run is an error naming the field.
    pub async fn route<F, Fut>(
        &self,
        engines: &Engines,
        input: &RouteInput<'_>,
        size: F,
    ) -> Result<Decision, RouteError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, ferry_core::Error>>,
    {
        // 1. Capability.
        let mut why_not = Vec::new();
        let mut candidates = Vec::new();
        for e in engines.all() {
            match unable(e, input) {
                Some(why) => why_not.push(why),
                None => candidates.push(e.clone()),
            }
        }
        if let Some(name) = input.request.named() {
            let Some(engine) = engines.get(name) else {
                let known: Vec<&str> = engines.all().iter().map(|e| e.name()).collect();
                return Err(RouteError::Request(format!(
                    "spec.execution.engine: no engine named '{name}' on this data plane (engines: {})",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                )));
            };
            if let Some(why) = unable(engine, input) {
                return Err(RouteError::Request(format!("spec.execution.engine: {why}")));
            }
            return Ok(Decision {
                engine: name.to_string(),
                rule: "request".into(),
                reason: format!("spec.execution.engine names {name}"),
                estimated_bytes: None,
            });
        }
        if engines.is_empty() {
            return Ok(Decision::in_process(
                "capability",
                "this data plane has no engines",
            ));
        }
        if candidates.is_empty() {
            return Ok(Decision::in_process("capability", why_not.join("; ")));
        }
        let free: Vec<Arc<Registered>> = candidates
            .iter()
            .filter(|e| e.active() < e.engine.config().max_concurrent_runs())
            .cloned()
            .collect();
        // 2. The request.
        if input.request.in_process() {
            return Ok(Decision::in_process(
                "request",
                "spec.execution.engine is inProcess",
            ));
        }
        match input.request.prefer {
            Some(Prefer::Latency) => {
                return Ok(Decision::in_process(
                    "request",
                    "prefer: latency keeps the run in-process",
                ))
            }
            Some(Prefer::Throughput) => {
                if let Some(e) = free.first() {
                    return Ok(Decision {
                        engine: e.name().to_string(),
                        rule: "request".into(),
                        reason: format!("prefer: throughput delegates to {}", e.name()),
                        estimated_bytes: None,
                    });
                }
            }
            None => {}
        }
        if free.is_empty() {
            return Ok(Decision::in_process(
                "capability",
                "every engine that can do the run is at its maxConcurrentRuns",
            ));
        }
        // 3. Custom rules.
        for rule in &self.custom {
            if let Some(decision) = rule.decide(input, &free) {
                return Ok(decision);
            }
        }
        // 4. Size.
        let mut reasons = Vec::new();
        let mut estimated = None;
        let sized: Vec<&Arc<Registered>> = free
            .iter()
            .filter(|e| e.engine.config().delegate_above_bytes.is_some())
            .collect();
        if !sized.is_empty() {
            let bytes = size().await.map_err(RouteError::Source)?;
            estimated = Some(bytes);
            for e in &sized {
                let above = e.engine.config().delegate_above_bytes.unwrap_or(u64::MAX);
                if bytes >= above {
                    return Ok(Decision {
                        engine: e.name().to_string(),
                        rule: "size".into(),
                        reason: format!(
                            "{} estimated ≥ delegateAboveBytes {} of {}",
                            human_bytes(bytes),
                            human_bytes(above),
                            e.name()
                        ),
                        estimated_bytes: Some(bytes),
                    });
                }
            }
            let smallest = sized
                .iter()
                .filter_map(|e| e.engine.config().delegate_above_bytes)
                .min()
                .unwrap_or(u64::MAX);
            reasons.push(format!(
                "{} estimated < delegateAboveBytes {}",
                human_bytes(bytes),
                human_bytes(smallest)
            ));
        }
        // 5. Load.
        let full = input.in_process_runs + 1 >= input.capacity.max(1);
        for e in free.iter().filter(|e| e.engine.config().delegate_when_busy) {
            let c = e.engine.config();
            let fast = c
                .busy_above_bytes_per_second
                .is_some_and(|limit| input.bytes_per_second >= limit);
            if full || fast {
                let why = if full {
                    format!(
                        "the data plane is busy ({} of {} runs in-process)",
                        input.in_process_runs, input.capacity
                    )
                } else {
                    format!(
                        "the data plane is busy ({}/s ≥ busyAboveBytesPerSecond)",
                        human_bytes(input.bytes_per_second as u64)
                    )
                };
                return Ok(Decision {
                    engine: e.name().to_string(),
                    rule: "load".into(),
                    reason: format!("{why}; delegated to {}", e.name()),
                    estimated_bytes: estimated,
                });
            }
        }
        if free.iter().any(|e| e.engine.config().delegate_when_busy) {
            reasons.push("the data plane is not busy".into());
        }
        if reasons.is_empty() {
            reasons.push("no rule delegates it".into());
        }
        let mut d = Decision::in_process("default", reasons.join("; "));
        d.estimated_bytes = estimated;
        Ok(d)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The request cannot be honoured; the text names the field.
    #[error("{0}")]
    Request(String),
    /// The source could not be sized (missing, unreadable): as an in-process run would
    /// report it.
    #[error(transparent)]
    Source(ferry_core::Error),
}

/// `12.4 GiB`, `1 GiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::{Engine, EngineConfig, EngineError, JobRef, JobRequest, JobState};
    use async_trait::async_trait;

    struct Fake(EngineConfig);

    #[async_trait]
    impl Engine for Fake {
        fn config(&self) -> &EngineConfig {
            &self.0
        }
        async fn submit(&self, _: &JobRequest) -> Result<JobRef, EngineError> {
            unreachable!()
        }
        async fn find(&self, _: &str) -> Result<Option<JobRef>, EngineError> {
            unreachable!()
        }
        async fn poll(&self, _: &JobRef) -> Result<JobState, EngineError> {
            unreachable!()
        }
        async fn stop(&self, _: &JobRef) -> Result<(), EngineError> {
            unreachable!()
        }
    }

    fn engines(yaml: &str) -> Engines {
        let configs: Vec<EngineConfig> = serde_norway::from_str(yaml).unwrap();
        Engines::new(
            configs
                .into_iter()
                .map(|c| Arc::new(Fake(c)) as Arc<dyn Engine>)
                .collect(),
        )
    }

    struct Case {
        src: DataAddress,
        dst: DataAddress,
        request: ExecutionRequest,
        records: bool,
        in_process_runs: usize,
    }

    fn case(src: &str, dst: &str) -> Case {
        Case {
            src: DataAddress::parse(src).unwrap(),
            dst: DataAddress::parse(dst).unwrap(),
            request: ExecutionRequest::default(),
            records: false,
            in_process_runs: 0,
        }
    }

    async fn route(engines: &Engines, c: &Case, bytes: u64) -> Result<Decision, RouteError> {
        let input = RouteInput {
            source: &c.src,
            destination: &c.dst,
            records: c.records,
            request: &c.request,
            in_process_runs: c.in_process_runs,
            capacity: 4,
            bytes_per_second: 0.0,
        };
        Router::default()
            .route(engines, &input, || async move { Ok(bytes) })
            .await
    }

    const ONE: &str = "[{name: rclone-eu, type: rclone, url: 'http://h', delegateAboveBytes: 1073741824, delegateWhenBusy: true}]";

    #[tokio::test]
    async fn size_delegates_large_runs_and_keeps_small_ones() {
        let e = engines(ONE);
        let c = case("/data/in/", "s3://b/out/");
        let d = route(&e, &c, 13_314_398_618).await.unwrap();
        assert_eq!(d.engine, "rclone-eu");
        assert_eq!(d.rule, "size");
        assert_eq!(
            d.reason,
            "12.4 GiB estimated ≥ delegateAboveBytes 1 GiB of rclone-eu"
        );
        let d = route(&e, &c, 3 << 20).await.unwrap();
        assert_eq!(d.engine, IN_PROCESS);
        assert_eq!(
            d.reason,
            "3 MiB estimated < delegateAboveBytes 1 GiB; the data plane is not busy"
        );
    }

    #[tokio::test]
    async fn capability_then_request_then_load() {
        let e = engines(ONE);
        let mut c = case("/data/in/", "kafka://127.0.0.1:9092/t");
        let d = route(&e, &c, u64::MAX).await.unwrap();
        assert_eq!(
            (d.engine.as_str(), d.rule.as_str()),
            (IN_PROCESS, "capability")
        );
        assert!(
            d.reason.contains("does not take kafka as a destination"),
            "{d:?}"
        );

        c = case("/data/in/", "/data/out/");
        c.records = true;
        assert_eq!(route(&e, &c, u64::MAX).await.unwrap().rule, "capability");

        c.records = false;
        c.request.prefer = Some(Prefer::Latency);
        let d = route(&e, &c, u64::MAX).await.unwrap();
        assert_eq!(
            (d.engine.as_str(), d.rule.as_str()),
            (IN_PROCESS, "request")
        );

        c.request = ExecutionRequest {
            engine: Some("rclone-eu".into()),
            prefer: None,
        };
        let d = route(&e, &c, 1).await.unwrap();
        assert_eq!(
            (d.engine.as_str(), d.rule.as_str()),
            ("rclone-eu", "request")
        );

        c.request = ExecutionRequest {
            engine: Some("adf".into()),
            prefer: None,
        };
        let err = route(&e, &c, 1).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.execution.engine: no engine named 'adf' on this data plane (engines: rclone-eu)"
        );

        c.request = ExecutionRequest::default();
        c.in_process_runs = 3;
        let d = route(&e, &c, 1).await.unwrap();
        assert_eq!((d.engine.as_str(), d.rule.as_str()), ("rclone-eu", "load"));
        assert!(
            d.reason
                .starts_with("the data plane is busy (3 of 4 runs in-process)"),
            "{d:?}"
        );
    }

    #[tokio::test]
    async fn a_named_engine_that_cannot_do_the_run_is_refused() {
        let e = engines(ONE);
        let mut c = case("/data/in/", "kafka://127.0.0.1:9092/t");
        c.request.engine = Some("rclone-eu".into());
        let err = route(&e, &c, 1).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.execution.engine: engine rclone-eu does not take kafka as a destination"
        );
    }

    #[tokio::test]
    async fn a_custom_rule_decides_before_size() {
        struct Nights;
        impl RoutingRule for Nights {
            fn name(&self) -> &str {
                "nights"
            }
            fn decide(&self, _: &RouteInput<'_>, c: &[Arc<Registered>]) -> Option<Decision> {
                Some(Decision {
                    engine: c[0].name().into(),
                    rule: "nights".into(),
                    reason: "batch window".into(),
                    estimated_bytes: None,
                })
            }
        }
        let e = engines(ONE);
        let c = case("/data/in/", "/data/out/");
        let input = RouteInput {
            source: &c.src,
            destination: &c.dst,
            records: false,
            request: &c.request,
            in_process_runs: 0,
            capacity: 4,
            bytes_per_second: 0.0,
        };
        let router = Router::default().with_rule(Arc::new(Nights));
        let d = router
            .route(&e, &input, || async { panic!("size is not asked") })
            .await
            .unwrap();
        assert_eq!(
            (d.engine.as_str(), d.rule.as_str()),
            ("rclone-eu", "nights")
        );
    }
}
