//! The behaviour every [`DataPlaneRegistry`] must have, as public test functions that each
//! implementation's tests call with a fresh, empty registry using the default options.

use super::{DataPlaneRegistry, RegistryError};
use crate::selector::{DataPlaneInstance, InstanceState, Load, RunRequest};

/// An instance with no restrictions at `http://<id>:8081`.
pub fn instance(id: &str) -> DataPlaneInstance {
    DataPlaneInstance::new(id, format!("http://{id}:8081"))
}

fn ids(instances: &[DataPlaneInstance]) -> Vec<&str> {
    instances.iter().map(|dp| dp.id.as_str()).collect()
}

fn fields(e: &RegistryError) -> Vec<&str> {
    match e {
        RegistryError::Invalid(errors) => errors.iter().map(|e| e.field.as_str()).collect(),
        other => panic!("expected invalid fields, got {other}"),
    }
}

/// Runs every check in turn.
pub async fn all(registry: &dyn DataPlaneRegistry) {
    registrations(registry).await;
    selections(registry).await;
    heartbeats_and_states(registry).await;
    deregistrations(registry).await;
}

pub async fn registrations(registry: &dyn DataPlaneRegistry) {
    let mut a = instance("dp-a");
    a.allowed_source_types = vec!["PostgreSQL".into(), "file".into()];
    let added = registry.add(a).await.unwrap();
    assert!(!added.replaced);
    assert_eq!(
        added.instance.allowed_source_types,
        ["postgres", "file"],
        "types are stored in canonical form"
    );
    let mut b = instance("dp-b");
    b.labels.insert("region".into(), "eu".into());
    b.properties
        .insert("zone".into(), serde_json::json!("eu-west-1a"));
    assert!(!registry.add(b.clone()).await.unwrap().replaced);
    assert_eq!(registry.get("dp-b").await.unwrap(), Some(b));
    assert_eq!(registry.get("dp-z").await.unwrap(), None);

    let mut bad = instance("dp-x");
    bad.url = "dp-x:8081".into();
    bad.allowed_source_types = vec!["mongo".into()];
    let err = registry.add(bad).await.unwrap_err();
    assert_eq!(fields(&err), ["url", "allowedSourceTypes[0]"], "{err}");
    assert_eq!(ids(&registry.list().await.unwrap()), ["dp-a", "dp-b"]);
}

pub async fn selections(registry: &dyn DataPlaneRegistry) {
    registry.add(instance("dp-c")).await.unwrap();
    let any = RunRequest::new("file", "s3");
    let mut order = Vec::new();
    for _ in 0..6 {
        let chosen = registry.select(&any, None).await.unwrap();
        assert_eq!(chosen.strategy, "round-robin");
        order.push(chosen.instance.id);
    }
    assert_eq!(order, ["dp-a", "dp-b", "dp-c", "dp-a", "dp-b", "dp-c"]);
    let listed = registry.list().await.unwrap();
    assert!(listed.iter().all(|dp| dp.turn_count == 2), "{listed:?}");
    assert!(listed.iter().all(|dp| dp.last_active_ms.is_some()));

    // Registering again replaces what it handles and keeps the history.
    let mut again = instance("dp-a");
    again.registration = Some("n1".into());
    let replaced = registry.add(again).await.unwrap();
    assert!(replaced.replaced);
    assert_eq!(replaced.instance.turn_count, 2);
    assert_eq!(replaced.instance.registration.as_deref(), Some("n1"));

    let eu = RunRequest::new("file", "s3").with_label("region", "eu");
    let chosen = registry
        .select(&eu, Some("least-recently-used"))
        .await
        .unwrap();
    assert_eq!(
        (chosen.instance.id.as_str(), chosen.strategy.as_str()),
        ("dp-b", "least-recently-used")
    );
    assert_eq!(chosen.instance.turn_count, 3);

    let mysql = RunRequest::new("mysql", "s3").with_label("region", "us");
    let err = registry.select(&mysql, None).await.unwrap_err();
    let RegistryError::NoInstance(none) = &err else {
        panic!("expected no instance, got {err}");
    };
    assert_eq!(
        none.reason,
        "no available data plane handles source mysql → destination s3 with labels region=us \
         (3 registered: dp-a lacks label region=us, \
         dp-b lacks label region=us, dp-c lacks label region=us)"
    );
    let err = registry.select(&any, Some("fastest")).await.unwrap_err();
    let RegistryError::UnknownStrategy(unknown) = &err else {
        panic!("expected an unknown strategy, got {err}");
    };
    assert_eq!(unknown.name, "fastest");
    assert!(
        unknown.known.contains(&"round-robin".to_string()),
        "{unknown:?}"
    );
    let turns: Vec<u64> = registry
        .list()
        .await
        .unwrap()
        .iter()
        .map(|dp| dp.turn_count)
        .collect();
    assert_eq!(turns, [2, 3, 2], "failed selections take no turn");

    // Several at once: in order, each counted before the next, failures for their run only.
    let batch = [
        (any.clone(), None),
        (mysql.clone(), None),
        (any.clone(), Some("fastest".to_string())),
        (any.clone(), None),
        (any.clone(), None),
    ];
    let results = registry.select_many(&batch).await;
    assert_eq!(results.len(), 5);
    assert!(matches!(results[1], Err(RegistryError::NoInstance(_))));
    assert!(matches!(results[2], Err(RegistryError::UnknownStrategy(_))));
    for i in [0, 3, 4] {
        let chosen = results[i].as_ref().unwrap();
        assert_eq!(chosen.strategy, "round-robin");
    }
    let turns: Vec<u64> = registry
        .list()
        .await
        .unwrap()
        .iter()
        .map(|dp| dp.turn_count)
        .collect();
    assert_eq!(
        turns.iter().sum::<u64>(),
        10,
        "one turn per pick: {turns:?}"
    );
    assert!(turns.iter().max().unwrap() - turns.iter().min().unwrap() <= 2);
}

pub async fn heartbeats_and_states(registry: &dyn DataPlaneRegistry) {
    let load = |active_runs| Load {
        active_runs,
        bytes_per_second: 1e6,
        capacity: Some(4),
    };
    let drained = registry
        .set_state("dp-a", InstanceState::Unavailable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(drained.state, InstanceState::Unavailable);
    assert!(registry
        .set_state("dp-z", InstanceState::Unavailable)
        .await
        .unwrap()
        .is_none());
    let any = RunRequest::new("file", "s3");
    for _ in 0..4 {
        let chosen = registry.select(&any, None).await.unwrap();
        assert_ne!(
            chosen.instance.id, "dp-a",
            "an unavailable instance is skipped"
        );
    }

    let beat = registry.heartbeat("dp-a", load(3)).await.unwrap().unwrap();
    assert_eq!(
        beat.state,
        InstanceState::Available,
        "a heartbeat makes it available"
    );
    assert_eq!(beat.load, Some(load(3)));
    assert!(beat.last_heartbeat_ms.is_some());
    registry.heartbeat("dp-b", load(1)).await.unwrap().unwrap();
    registry.heartbeat("dp-c", load(2)).await.unwrap().unwrap();
    let chosen = registry.select(&any, Some("least-loaded")).await.unwrap();
    assert_eq!(chosen.instance.id, "dp-b");
    assert!(registry.heartbeat("dp-z", load(0)).await.unwrap().is_none());

    let mut negative = load(0);
    negative.bytes_per_second = -1.0;
    let err = registry.heartbeat("dp-a", negative).await.unwrap_err();
    assert_eq!(fields(&err), ["bytesPerSecond"], "{err}");
}

pub async fn deregistrations(registry: &dyn DataPlaneRegistry) {
    // dp-a was registered again under n1: an older process's deregistration keeps it.
    assert!(registry.remove("dp-a", Some("n0")).await.unwrap().is_none());
    assert!(registry.get("dp-a").await.unwrap().is_some());
    let removed = registry.remove("dp-a", Some("n1")).await.unwrap().unwrap();
    assert_eq!(removed.id, "dp-a");
    assert!(registry.remove("dp-b", None).await.unwrap().is_some());
    assert!(registry.remove("dp-b", None).await.unwrap().is_none());
    assert_eq!(ids(&registry.list().await.unwrap()), ["dp-c"]);
    assert!(registry.remove("dp-c", None).await.unwrap().is_some());
    let err = registry
        .select(&RunRequest::new("file", "s3"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().ends_with("(none registered)"), "{err}");
}

/// With a 15 s heartbeat timeout and a clock that `set_now` moves: an instance whose last
/// heartbeat is older counts as unavailable, in selections and listings alike, until it
/// reports again; one that never sent a heartbeat is never expired.
pub async fn heartbeats_expire(registry: &dyn DataPlaneRegistry, set_now: &dyn Fn(i64)) {
    let any = RunRequest::new("file", "s3");
    set_now(1_000);
    registry.add(instance("dp-a")).await.unwrap();
    registry.add(instance("dp-b")).await.unwrap();
    let beat = |active_runs| Load {
        active_runs,
        bytes_per_second: 0.0,
        capacity: None,
    };
    registry.heartbeat("dp-a", beat(0)).await.unwrap().unwrap();
    set_now(16_000);
    let a = registry.get("dp-a").await.unwrap().unwrap();
    assert_eq!(a.state, InstanceState::Available, "15 s is not yet too old");
    assert_eq!(a.last_heartbeat_ms, Some(1_000));

    set_now(16_001);
    let a = registry.get("dp-a").await.unwrap().unwrap();
    assert_eq!(a.state, InstanceState::Unavailable);
    let states: Vec<InstanceState> = registry
        .list()
        .await
        .unwrap()
        .iter()
        .map(|dp| dp.state)
        .collect();
    assert_eq!(
        states,
        [InstanceState::Unavailable, InstanceState::Available]
    );
    for _ in 0..3 {
        let chosen = registry.select(&any, None).await.unwrap();
        assert_eq!(chosen.instance.id, "dp-b", "an expired instance is skipped");
    }
    registry
        .set_state("dp-b", InstanceState::Unavailable)
        .await
        .unwrap();
    let err = registry.select(&any, None).await.unwrap_err();
    assert!(err.to_string().contains("dp-a is unavailable"), "{err}");

    let back = registry.heartbeat("dp-a", beat(1)).await.unwrap().unwrap();
    assert_eq!(back.state, InstanceState::Available);
    assert_eq!(back.last_heartbeat_ms, Some(16_001));
    assert_eq!(
        registry.select(&any, None).await.unwrap().instance.id,
        "dp-a"
    );
    for id in ["dp-a", "dp-b"] {
        registry.remove(id, None).await.unwrap();
    }
}
