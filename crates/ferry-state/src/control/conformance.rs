//! The behaviour every [`ControlStore`] backend must have, as public test functions that
//! each backend's tests call with a fresh, empty store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::dataplanes::{DataPlaneRecord, DataPlaneStore, AVAILABLE};
use super::documents::{DocumentRecord, DocumentStore};
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
    dataplanes(store).await;
    documents(store).await;
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
        ..TransferFilter::default()
    };
    assert_eq!(
        names(labels(&[("team", "lake")])).await,
        ["alpha", "beta", "orders"]
    );
    // Pages by name, byte-wise: a limit, then the rest after the last name seen.
    let page = |after: Option<&str>, limit| TransferFilter {
        after: after.map(str::to_string),
        limit: Some(limit),
        ..labels(&[("team", "lake")])
    };
    assert_eq!(names(page(None, 2)).await, ["alpha", "beta"]);
    assert_eq!(names(page(Some("beta"), 2)).await, ["orders"]);
    assert!(names(page(Some("orders"), 2)).await.is_empty());
    assert_eq!(names(page(Some("B"), 1)).await, ["alpha"], "byte order");
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
        ..TransferFilter::default()
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
    // b hands its claim to c; a, holding nothing, cannot.
    assert!(!store.hand_over_run("r1", "a", "c", 6_000).await.unwrap());
    assert!(store.hand_over_run("r1", "b", "c", 6_000).await.unwrap());
    let got = store.get_run("r1").await.unwrap().unwrap();
    assert_eq!(
        (got.owner.as_deref(), got.lease_until),
        (Some("c"), Some(6_000))
    );
    assert!(store
        .claim_run("r1", "b", 7_000, 5_500)
        .await
        .unwrap()
        .is_none());
    assert!(store.hand_over_run("r1", "c", "b", 5_000).await.unwrap());

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

    // Several at once keep their order, and their seqs follow the ones before.
    let batch: Vec<NewEvent> = (0..5)
        .map(|i| NewEvent {
            run: (i % 2 == 0).then(|| format!("r{i}")),
            ..event("batch", &format!("Step{i}"))
        })
        .collect();
    let appended = store.append_events(&batch).await.unwrap();
    assert_eq!(appended.len(), 5);
    assert!(appended[0].seq > b.seq);
    assert!(appended.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.list_events("batch", 0, 100).await.unwrap(), appended);
    assert_eq!(
        appended.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        batch
    );
    assert!(store.append_events(&[]).await.unwrap().is_empty());
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

/// A data plane registration with no history, its document naming its URL.
pub fn dataplane(id: &str) -> DataPlaneRecord {
    DataPlaneRecord {
        id: id.into(),
        registration: None,
        document: json!({"url": format!("http://{id}:8081"), "labels": {"region": "eu"}}),
        state: AVAILABLE.into(),
        turn_count: 0,
        last_active_ms: None,
        heartbeat_ms: None,
        load: None,
    }
}

pub async fn dataplanes(store: &dyn DataPlaneStore) {
    let ids = |records: Vec<DataPlaneRecord>| records.into_iter().map(|d| d.id).collect::<Vec<_>>();
    for id in ["dp-b", "dp-a", "dp-c"] {
        let (stored, replaced) = store.put_dataplane(&dataplane(id)).await.unwrap();
        assert!(!replaced, "{id} is new");
        assert_eq!(stored, dataplane(id));
    }
    assert_eq!(
        ids(store.list_dataplanes().await.unwrap()),
        ["dp-a", "dp-b", "dp-c"]
    );
    assert_eq!(
        store.get_dataplane("dp-a").await.unwrap(),
        Some(dataplane("dp-a"))
    );
    assert_eq!(store.get_dataplane("dp-z").await.unwrap(), None);

    // The chooser sees every registration by id, and its choice takes the turn.
    let mut seen = Vec::new();
    let chosen = store
        .select_dataplane(500, &mut |records| {
            seen = records.iter().map(|d| d.id.clone()).collect();
            records.iter().position(|d| d.id == "dp-b")
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, ["dp-a", "dp-b", "dp-c"]);
    assert_eq!((chosen.id.as_str(), chosen.turn_count), ("dp-b", 1));
    assert_eq!(chosen.last_active_ms, Some(500));
    for declined in [None, Some(3)] {
        let none = store
            .select_dataplane(600, &mut |_| declined)
            .await
            .unwrap();
        assert!(none.is_none(), "choosing {declined:?} takes no turn");
    }
    assert_eq!(store.get_dataplane("dp-b").await.unwrap(), Some(chosen));

    // Registering again replaces the document and keeps the history.
    let mut again = dataplane("dp-b");
    again.registration = Some("n2".into());
    again.document = json!({"url": "http://dp-b-2:8081"});
    again.turn_count = 0;
    again.heartbeat_ms = Some(550);
    let (stored, replaced) = store.put_dataplane(&again).await.unwrap();
    assert!(replaced);
    assert_eq!(stored.document, again.document);
    assert_eq!(stored.registration.as_deref(), Some("n2"));
    assert_eq!(stored.heartbeat_ms, Some(550));
    assert_eq!((stored.turn_count, stored.last_active_ms), (1, Some(500)));

    // State and heartbeats.
    let drained = store
        .set_dataplane_state("dp-a", "Unavailable")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(drained.state, "Unavailable");
    assert!(store
        .set_dataplane_state("dp-z", "Unavailable")
        .await
        .unwrap()
        .is_none());
    let load = json!({"activeRuns": 2, "capacity": 4});
    let beat = store
        .heartbeat_dataplane("dp-a", &load, 700)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        beat.state, AVAILABLE,
        "a heartbeat makes it available again"
    );
    assert_eq!(
        (beat.heartbeat_ms, beat.load.as_ref()),
        (Some(700), Some(&load))
    );
    assert_eq!(store.get_dataplane("dp-a").await.unwrap(), Some(beat));
    assert!(store
        .heartbeat_dataplane("dp-z", &load, 700)
        .await
        .unwrap()
        .is_none());

    // A deregistration naming an older registration leaves the newer one.
    assert!(store
        .delete_dataplane("dp-b", Some("n1"))
        .await
        .unwrap()
        .is_none());
    assert!(
        store
            .delete_dataplane("dp-a", Some("n1"))
            .await
            .unwrap()
            .is_none(),
        "a registration without a nonce is not one that names it"
    );
    let gone = store
        .delete_dataplane("dp-b", Some("n2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.id, "dp-b");
    assert!(store
        .delete_dataplane("dp-a", None)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .delete_dataplane("dp-a", None)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .delete_dataplane("dp-c", None)
        .await
        .unwrap()
        .is_some());
    assert!(store.list_dataplanes().await.unwrap().is_empty());
    assert!(store
        .select_dataplane(800, &mut |_| Some(0))
        .await
        .unwrap()
        .is_none());
}

/// Two handles on one store (two processes, as far as the store can tell) select
/// concurrently with a fewest-turns chooser: no turn is lost or counted twice, and no
/// chooser ever sees counts more than one apart.
pub async fn shared_round_robin(a: Arc<dyn DataPlaneStore>, b: Arc<dyn DataPlaneStore>) {
    for id in ["dp-a", "dp-b", "dp-c"] {
        a.put_dataplane(&dataplane(id)).await.unwrap();
    }
    let spreads = Arc::new(Mutex::new(Vec::new()));
    let selections: Vec<_> = (0..60)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let spreads = Arc::clone(&spreads);
            tokio::spawn(async move {
                let chosen = store
                    .select_dataplane(i, &mut |records| {
                        let turns = records.iter().map(|d| d.turn_count);
                        let spread = turns.clone().max()? - turns.min()?;
                        spreads.lock().unwrap().push(spread);
                        (0..records.len()).min_by_key(|i| records[*i].turn_count)
                    })
                    .await
                    .unwrap()
                    .unwrap();
                (chosen.id, chosen.turn_count)
            })
        })
        .collect();
    let mut taken = Vec::new();
    for selection in selections {
        taken.push(selection.await.unwrap());
    }
    taken.sort();
    let expected: Vec<(String, i64)> = ["dp-a", "dp-b", "dp-c"]
        .iter()
        .flat_map(|id| (1..=20).map(move |turn| (id.to_string(), turn)))
        .collect();
    assert_eq!(
        taken, expected,
        "each turn of each data plane taken exactly once"
    );
    let spreads = spreads.lock().unwrap().clone();
    assert_eq!(spreads.len(), 60);
    assert!(spreads.iter().all(|s| *s <= 1), "{spreads:?}");
    let turns: Vec<i64> = b
        .list_dataplanes()
        .await
        .unwrap()
        .iter()
        .map(|d| d.turn_count)
        .collect();
    assert_eq!(turns, [20, 20, 20]);

    // Batches of selections under one lock: each pick sees the turns the earlier ones took.
    let spreads = Arc::new(Mutex::new(Vec::new()));
    let batches: Vec<_> = (0..10)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let spreads = Arc::clone(&spreads);
            tokio::spawn(async move {
                store
                    .select_dataplanes(1000 + i, 6, &mut |_, records| {
                        let turns = records.iter().map(|d| d.turn_count);
                        let spread = turns.clone().max()? - turns.min()?;
                        spreads.lock().unwrap().push(spread);
                        (0..records.len()).min_by_key(|i| records[*i].turn_count)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for batch in batches {
        let picks = batch.await.unwrap();
        let mut ids: Vec<String> = picks.into_iter().map(|p| p.unwrap().id).collect();
        ids.sort();
        assert_eq!(ids, ["dp-a", "dp-a", "dp-b", "dp-b", "dp-c", "dp-c"]);
    }
    assert!(spreads.lock().unwrap().iter().all(|s| *s <= 1));
    let turns: Vec<i64> = a
        .list_dataplanes()
        .await
        .unwrap()
        .iter()
        .map(|d| d.turn_count)
        .collect();
    assert_eq!(turns, [40, 40, 40]);
    let none = b
        .select_dataplanes(2000, 3, &mut |i, _| (i == 1).then_some(7))
        .await
        .unwrap();
    assert_eq!(none, [None, None, None], "an index past the end picks none");
}

/// Versioned documents: create once, write only over the version read, list by parent and
/// activity, delete one or a parent's.
pub async fn documents(store: &dyn DocumentStore) {
    let mut pipeline = DocumentRecord::new("pipeline", "daily", json!({"spec": 1}), 10);
    assert_eq!(store.put_document(&pipeline, None).await.unwrap(), Some(1));
    // A second create of the same name changes nothing.
    pipeline.document = json!({"spec": 2});
    assert_eq!(store.put_document(&pipeline, None).await.unwrap(), None);
    let got = store
        .get_document("pipeline", "daily")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.version, got.document.clone()), (1, json!({"spec": 1})));
    // A write over the version read succeeds once; a second writer that read it too loses.
    assert_eq!(
        store.put_document(&pipeline, Some(1)).await.unwrap(),
        Some(2)
    );
    assert_eq!(store.put_document(&pipeline, Some(1)).await.unwrap(), None);
    let got = store
        .get_document("pipeline", "daily")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.version, got.document), (2, json!({"spec": 2})));
    // The same name under another kind is another document.
    assert!(store
        .get_document("pipeline-run", "daily")
        .await
        .unwrap()
        .is_none());

    for (name, parent, active) in [
        ("daily-2", "daily", false),
        ("daily-1", "daily", true),
        ("dailyx-1", "dailyx", true),
    ] {
        let mut run = DocumentRecord::new("pipeline-run", name, json!({"n": name}), 20);
        run.parent = Some(parent.into());
        run.active = active;
        assert_eq!(store.put_document(&run, None).await.unwrap(), Some(1));
    }
    let names = |docs: Vec<DocumentRecord>| docs.into_iter().map(|d| d.name).collect::<Vec<_>>();
    assert_eq!(
        names(
            store
                .list_documents("pipeline-run", Some("daily"), false)
                .await
                .unwrap()
        ),
        ["daily-1", "daily-2"]
    );
    assert_eq!(
        names(
            store
                .list_documents("pipeline-run", None, true)
                .await
                .unwrap()
        ),
        ["daily-1", "dailyx-1"]
    );
    // Finishing a run takes it off the active list.
    let mut done = store
        .get_document("pipeline-run", "daily-1")
        .await
        .unwrap()
        .unwrap();
    done.active = false;
    assert_eq!(store.put_document(&done, Some(1)).await.unwrap(), Some(2));
    assert_eq!(
        names(
            store
                .list_documents("pipeline-run", None, true)
                .await
                .unwrap()
        ),
        ["dailyx-1"]
    );
    assert_eq!(
        store
            .delete_documents("pipeline-run", "daily")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        names(
            store
                .list_documents("pipeline-run", None, false)
                .await
                .unwrap()
        ),
        ["dailyx-1"]
    );
    assert!(store.delete_document("pipeline", "daily").await.unwrap());
    assert!(!store.delete_document("pipeline", "daily").await.unwrap());
}
