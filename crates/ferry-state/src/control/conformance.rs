//! The behaviour every [`ControlStore`] backend must have, as public test functions that
//! each backend's tests call with a fresh, empty store.

use std::collections::BTreeMap;

use serde_json::json;

use super::{ControlStore, NewEvent, RunRecord, TransferFilter, TransferRecord};

/// A transfer record named `name`, generation 1, phase Pending.
pub fn transfer(name: &str, uid: &str) -> TransferRecord {
    TransferRecord {
        name: name.into(),
        uid: uid.into(),
        generation: 1,
        labels: BTreeMap::from([("team".to_string(), "lake".to_string())]),
        manifest: json!({"apiVersion": "ferry.dev/v1", "kind": "BatchTransfer",
                         "metadata": {"name": name}, "spec": {"schedule": "* * * * *"}}),
        phase: "Pending".into(),
        status: json!({"phase": "Pending"}),
        created_at: 1_000,
        updated_at: 1_000,
        next_due: None,
    }
}

/// An unfinished run of `transfer`, created at `created_at`.
pub fn run(id: &str, transfer: &str, created_at: i64) -> RunRecord {
    let of = self::transfer(transfer, "u1");
    RunRecord::pending(id.into(), &of, "schedule", Some(created_at), created_at)
}

/// Runs every check in turn.
pub async fn all(store: &dyn ControlStore) {
    transfers(store).await;
    runs_and_claims(store).await;
    events(store).await;
    deleting_a_transfer_deletes_its_runs_and_events(store).await;
}

pub async fn transfers(store: &dyn ControlStore) {
    let t = transfer("orders", "u1");
    assert!(store.create_transfer(&t).await.unwrap());
    assert!(
        !store
            .create_transfer(&transfer("orders", "u2"))
            .await
            .unwrap(),
        "a taken name is refused"
    );
    assert_eq!(
        store.get_transfer("orders").await.unwrap().as_ref(),
        Some(&t)
    );
    assert_eq!(store.get_transfer("missing").await.unwrap(), None);
    assert!(store
        .create_transfer(&transfer("alpha", "u3"))
        .await
        .unwrap());
    let names = |filter: TransferFilter| async move {
        store
            .list_transfers(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(TransferFilter::default()).await, ["alpha", "orders"]);
    let mut other = transfer("beta", "u4");
    other.labels.insert("tier".into(), "gold".into());
    other.phase = "Running".into();
    assert!(store.create_transfer(&other).await.unwrap());
    let labels = |pairs: &[(&str, &str)]| TransferFilter {
        phase: None,
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    assert_eq!(
        names(labels(&[("team", "lake")])).await,
        ["alpha", "beta", "orders"]
    );
    assert_eq!(
        names(labels(&[("team", "lake"), ("tier", "gold")])).await,
        ["beta"]
    );
    assert!(names(labels(&[("team", "ops")])).await.is_empty());
    assert!(
        names(labels(&[("tier", "lake")])).await.is_empty(),
        "key and value together"
    );
    let running = TransferFilter {
        phase: Some("Running".into()),
        labels: BTreeMap::new(),
    };
    assert_eq!(names(running).await, ["beta"]);
    assert!(store.delete_transfer("beta").await.unwrap());

    let labels = BTreeMap::from([("team".to_string(), "ops".to_string())]);
    let manifest = json!({"spec": {"schedule": "0 * * * *"}});
    let replaced = store
        .replace_manifest("orders", &manifest, &labels, 2_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.generation, 2);
    assert_eq!(replaced.manifest, manifest);
    assert_eq!(replaced.labels, labels);
    assert_eq!(
        replaced.status, t.status,
        "replacing the spec keeps the status"
    );
    assert!(store
        .replace_manifest("missing", &manifest, &labels, 2_000)
        .await
        .unwrap()
        .is_none());

    let status = json!({"phase": "Running", "numRecords": 7});
    assert!(store
        .set_status("orders", "u1", "Running", &status, Some(5_000), 3_000)
        .await
        .unwrap());
    let due = |now: i64| async move {
        store
            .due_transfers(now)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
    };
    assert!(due(4_999).await.is_empty(), "not due before its time");
    assert_eq!(due(5_000).await, ["orders"]);
    assert!(
        !store
            .set_status("orders", "old-uid", "Failed", &status, None, 3_000)
            .await
            .unwrap(),
        "a status for an earlier transfer of the same name is dropped"
    );
    let got = store.get_transfer("orders").await.unwrap().unwrap();
    assert_eq!((got.phase.as_str(), &got.status), ("Running", &status));
    assert_eq!(got.updated_at, 3_000);
    assert_eq!(got.next_due, Some(5_000));
    assert!(
        !store
            .set_status("orders", "u1", "Pending", &json!({}), None, 2_000)
            .await
            .unwrap(),
        "a status computed before the last write is stale and dropped"
    );
    assert_eq!(
        store.get_transfer("orders").await.unwrap().unwrap().phase,
        "Running"
    );
    // Two control planes see the same due time; one fires it.
    assert!(store
        .claim_schedule("orders", "u1", 5_000, Some(8_000), 5_001)
        .await
        .unwrap());
    assert!(!store
        .claim_schedule("orders", "u1", 5_000, Some(8_000), 5_002)
        .await
        .unwrap());
    assert!(due(7_999).await.is_empty());
    assert!(
        !store
            .set_status("orders", "u1", "Running", &status, Some(5_000), 5_000)
            .await
            .unwrap(),
        "a status read before the schedule was claimed does not bring the due time back"
    );
    assert!(store
        .set_status("orders", "u1", "Suspended", &status, None, 5_500)
        .await
        .unwrap());
    assert!(due(i64::MAX).await.is_empty(), "no next time, never due");
    assert_eq!(got.generation, 2);
    for name in ["orders", "alpha"] {
        assert!(store.delete_transfer(name).await.unwrap());
    }
    assert!(!store.delete_transfer("orders").await.unwrap());
}

pub async fn runs_and_claims(store: &dyn ControlStore) {
    let mut first = run("r1", "orders", 10);
    store.put_run(&first).await.unwrap();
    store.put_run(&run("r2", "orders", 20)).await.unwrap();
    store.put_run(&run("r3", "other", 15)).await.unwrap();
    let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_runs("orders").await.unwrap()), ["r2", "r1"]);
    assert_eq!(
        ids(store.unfinished_runs().await.unwrap()),
        ["r1", "r3", "r2"]
    );

    let claimed = store
        .claim_run("r1", "a", 1_000, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.owner.as_deref(), Some("a"));
    assert_eq!(claimed.lease_until, Some(1_000));
    assert!(
        store
            .claim_run("r1", "b", 2_000, 500)
            .await
            .unwrap()
            .is_none(),
        "a live lease keeps others out"
    );
    assert!(store
        .claim_run("r1", "a", 1_500, 500)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.renew_leases("a", 3_000).await.unwrap(), 1);
    assert!(store
        .claim_run("r1", "b", 4_000, 2_999)
        .await
        .unwrap()
        .is_none());
    let taken = store
        .claim_run("r1", "b", 5_000, 3_001)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        taken.owner.as_deref(),
        Some("b"),
        "an ended lease can be taken over"
    );

    // put_run leaves the claim alone.
    first.phase = "Running".into();
    first.stats = json!({"bytes": 5});
    store.put_run(&first).await.unwrap();
    let got = store.get_run("r1").await.unwrap().unwrap();
    assert_eq!(got.owner.as_deref(), Some("b"));
    assert_eq!(got.stats, json!({"bytes": 5}));

    store.release_run("r1", "a").await.unwrap();
    assert_eq!(
        store.get_run("r1").await.unwrap().unwrap().owner.as_deref(),
        Some("b"),
        "only the owner releases"
    );
    store.release_run("r1", "b").await.unwrap();
    assert!(store.get_run("r1").await.unwrap().unwrap().owner.is_none());

    first.finished_at = Some(50);
    first.phase = "Succeeded".into();
    store.put_run(&first).await.unwrap();
    assert!(store.get_run("r1").await.unwrap().unwrap().finished());
    assert!(
        store
            .claim_run("r1", "c", 9_000, 9_000)
            .await
            .unwrap()
            .is_none(),
        "a finished run is never claimed"
    );
    assert_eq!(ids(store.unfinished_runs().await.unwrap()), ["r3", "r2"]);
    store
        .delete_runs(&["r1".into(), "r2".into(), "r3".into()])
        .await
        .unwrap();
    assert!(store.get_run("r2").await.unwrap().is_none());
}

pub async fn events(store: &dyn ControlStore) {
    let event = |transfer: &str, reason: &str| NewEvent {
        transfer: transfer.into(),
        run: Some("r1".into()),
        time: 7,
        severity: "Normal".into(),
        reason: reason.into(),
        message: format!("{reason} happened"),
        data: json!({"records": 3}),
    };
    let a = store
        .append_event(&event("orders", "RunStarted"))
        .await
        .unwrap();
    store
        .append_event(&event("other", "RunStarted"))
        .await
        .unwrap();
    let b = store
        .append_event(&event("orders", "RunSucceeded"))
        .await
        .unwrap();
    assert!(b.seq > a.seq);
    let all = store.list_events("orders", 0, 100).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], a);
    assert_eq!(all[1].event, event("orders", "RunSucceeded"));
    let after = store.list_events("orders", a.seq, 100).await.unwrap();
    assert_eq!(after, vec![b.clone()]);
    assert_eq!(store.list_events("orders", 0, 1).await.unwrap(), vec![a]);
}

pub async fn deleting_a_transfer_deletes_its_runs_and_events(store: &dyn ControlStore) {
    assert!(store
        .create_transfer(&transfer("gone", "u9"))
        .await
        .unwrap());
    store.put_run(&run("g1", "gone", 1)).await.unwrap();
    store
        .append_event(&NewEvent {
            transfer: "gone".into(),
            run: None,
            time: 1,
            severity: "Normal".into(),
            reason: "Created".into(),
            message: "created".into(),
            data: json!(null),
        })
        .await
        .unwrap();
    assert!(store.delete_transfer("gone").await.unwrap());
    assert!(store.get_run("g1").await.unwrap().is_none());
    assert!(store.list_events("gone", 0, 10).await.unwrap().is_empty());
}
