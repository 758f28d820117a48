//! Kafka topics read as rows, against the real broker and databases `scripts/services`
//! starts: a topic loaded into PostgreSQL and into Parquet files, runs that each add only
//! the events that arrived since the last, a load SIGKILLed at a random point and finished
//! by running the same command again, and values that do not decode.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::kafka::{address, broker, new_topic, read_events, schema_registry, send, Sent};
use common::{copy_in as run, copy_in_ok as run_ok, ferry, start_and_kill};
use ferry_connectors::kafka::rdkafka::consumer::Consumer;
use ferry_connectors::kafka::rdkafka::error::KafkaError;
use ferry_connectors::kafka::rdkafka::message::{Headers, Message};
use ferry_connectors::kafka::rdkafka::{Offset, TopicPartitionList};
use ferry_connectors::kafka::{self};
use ferry_connectors::testkit::{unique_name, TestMysql, TestPostgres};
use serde_json::{json, Value};

/// Orders `from..to` as JSON values spread over `partitions`, keyed by customer; every
/// 25th is a tombstone of its key (no value, so no row).
fn orders(from: u64, to: u64, partitions: i32) -> Vec<Sent> {
    (from..to)
        .map(|i| {
            let key = format!("c{}", i % 17);
            let value = (i % 25 != 24).then(|| {
                json!({"id": i, "customer": key, "amount": i as f64 * 1.25, "paid": i % 3 == 0})
                    .to_string()
                    .into_bytes()
            });
            ((i % partitions as u64) as i32, Some(key), value)
        })
        .collect()
}

/// The ids `orders(from, to, _)` gives rows for.
fn order_ids(from: u64, to: u64) -> BTreeSet<u64> {
    (from..to).filter(|i| i % 25 != 24).collect()
}

/// The rows of the Parquet files under `dir`, read back by ferry into JSON lines.
fn parquet_rows(work: &Path, dir: &str) -> Vec<Value> {
    let jsonl = work.join(format!("{}.jsonl", unique_name("rows")));
    run_ok(
        work,
        &[
            dir,
            jsonl.to_str().unwrap(),
            "--source-format",
            "parquet",
            "--no-resume",
        ],
    );
    std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids_of(rows: &[Value]) -> Vec<u64> {
    let mut ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_topic_loads_into_postgres_and_parquet_and_each_run_adds_only_what_arrived() {
    let (Some(broker), Some(pg)) = (broker(), TestPostgres::get()) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 3);
    send(&broker, &topic, &orders(0, 600, 3));
    let table = unique_name("orders").replace('-', "_");
    let src = format!("kafka://{broker}/{topic}?metadata=_key,_partition,_offset");
    let dst = format!("{}?table={table}&mode=append", pg.url("ferry"));

    let out = run_ok(work.path(), &[&src, &dst]);
    assert!(out.contains("576 rows"), "{out}");
    let ids = |pg: &TestPostgres| -> Vec<u64> {
        pg.sql("ferry", &format!("SELECT id FROM {table} ORDER BY id"))
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    assert_eq!(ids(&pg), order_ids(0, 600).into_iter().collect::<Vec<_>>());
    // Each row says where its event is: partition and offset, and the key it had.
    assert_eq!(
        pg.sql(
            "ferry",
            &format!("SELECT count(DISTINCT (_partition, _offset)), count(*) FILTER (WHERE _key = 'c' || (id % 17)), count(*) FILTER (WHERE _partition <> id % 3) FROM {table}")
        ),
        "576|576|0"
    );
    assert_eq!(
        pg.sql("ferry", &format!("SELECT data_type FROM information_schema.columns WHERE table_name = '{table}' AND column_name IN ('id', 'amount', 'paid', 'customer') ORDER BY column_name")),
        "double precision\ntext\nbigint\nboolean"
    );

    let parquet = work.path().join("lake");
    let lake = format!("{}/", parquet.display());
    run_ok(work.path(), &[&src, &lake, "--dest-format", "parquet"]);
    let first_files: BTreeSet<String> = files_under(&parquet);
    assert_eq!(
        first_files,
        (0..3)
            .map(|p| format!("topic={topic}/partition={p:04}/00000000000000000000.parquet"))
            .collect()
    );
    assert_eq!(
        ids_of(&parquet_rows(work.path(), &lake)),
        order_ids(0, 600).into_iter().collect::<Vec<_>>()
    );

    // Nothing new: nothing is loaded or written.
    let (code, _, err) = run(work.path(), &[&src, &dst]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no events since the last run"), "{err}");
    assert_eq!(ids(&pg).len(), 576);

    // New events: the next runs add exactly those, into new files beside the first.
    send(&broker, &topic, &orders(600, 750, 3));
    run_ok(work.path(), &[&src, &dst]);
    assert_eq!(ids(&pg), order_ids(0, 750).into_iter().collect::<Vec<_>>());
    run_ok(work.path(), &[&src, &lake, "--dest-format", "parquet"]);
    let files = files_under(&parquet);
    assert_eq!(files.len(), 6, "{files:?}");
    assert!(files.is_superset(&first_files));
    assert!(
        files.contains(&format!(
            "topic={topic}/partition=0000/00000000000000000200.parquet"
        )),
        "{files:?}"
    );
    assert_eq!(
        ids_of(&parquet_rows(work.path(), &lake)),
        order_ids(0, 750).into_iter().collect::<Vec<_>>()
    );

    // --no-resume starts again from startOffset: an overwrite reloads the whole topic.
    let whole = format!("{}?table={table}", pg.url("ferry"));
    run_ok(work.path(), &[&src, &whole, "--no-resume"]);
    assert_eq!(ids(&pg).len(), order_ids(0, 750).len());
    pg.sql("ferry", &format!("DROP TABLE {table}"));
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
    common::files_in(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A seed from the clock, printed so a failure can be replayed.
fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("random point: {} of {n}", nanos % n + 1);
    nanos % n + 1
}

#[test]
fn a_load_from_a_topic_killed_at_a_random_point_commits_every_row_once() {
    let (Some(broker), Some(pg)) = (broker(), TestPostgres::get()) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 4);
    send(&broker, &topic, &orders(0, 4000, 4));
    let table = unique_name("orders").replace('-', "_");
    let src = format!("kafka://{broker}/{topic}?metadata=_offset");
    let dst = format!("{}?table={table}&mode=append", pg.url("ferry"));
    let batches = 4000 / 4 / 250 * 4;
    let args = [
        src.as_str(),
        dst.as_str(),
        "--source-option",
        "batchSize=250",
    ];

    // Killed while streaming rows, then again just before its commit.
    let point = format!("pause-after-batches:{}", random_below(batches - 1));
    start_and_kill(
        ferry(&work.path().join("state"), work.path())
            .arg("copy")
            .args(args),
        &point,
    );
    let exists = format!("SELECT count(*) FROM pg_tables WHERE tablename = '{table}'");
    assert_eq!(
        pg.sql("ferry", &exists),
        "0",
        "nothing is committed by a killed load"
    );
    start_and_kill(
        ferry(&work.path().join("state"), work.path())
            .arg("copy")
            .args(args),
        "pause-before-commit:1",
    );
    // Events that arrive meanwhile are for the next run, not this one.
    send(&broker, &topic, &orders(4000, 4100, 4));
    run_ok(work.path(), &args);
    let count = format!("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {table}");
    let expected = order_ids(0, 4000);
    assert_eq!(
        pg.sql("ferry", &count),
        format!("{}|{}|0|3998", expected.len(), expected.len())
    );
    run_ok(work.path(), &args);
    let expected = order_ids(0, 4100);
    assert_eq!(
        pg.sql("ferry", &count),
        format!("{}|{}|0|4098", expected.len(), expected.len())
    );
    pg.sql("ferry", &format!("DROP TABLE {table}"));
}

#[test]
fn a_topic_to_parquet_killed_midway_writes_each_row_once() {
    let Some(broker) = broker() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 3);
    send(&broker, &topic, &orders(0, 3000, 3));
    let src = format!("kafka://{broker}/{topic}");
    let lake = format!("{}/", work.path().join("lake").display());
    let args = [
        src.as_str(),
        lake.as_str(),
        "--dest-format",
        "parquet",
        "--source-option",
        "batchSize=100",
        "--transfers",
        "1",
    ];
    let point = format!("pause-after-batches:{}", random_below(29));
    start_and_kill(
        ferry(&work.path().join("state"), work.path())
            .arg("copy")
            .args(args),
        &point,
    );
    let out = run_ok(work.path(), &args);
    assert!(out.contains("rows"), "{out}");
    assert_eq!(
        ids_of(&parquet_rows(work.path(), &lake)),
        order_ids(0, 3000).into_iter().collect::<Vec<_>>()
    );
}

#[test]
fn values_that_do_not_decode_fail_the_run_or_are_skipped_or_dead_lettered() {
    let (Some(broker), Some(pg)) = (broker(), TestPostgres::get()) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 2);
    let mut events = orders(0, 20, 2);
    // Partition 1 gets, at offsets 10 and 11, text that is not JSON and a JSON array.
    events.push((1, Some("bad".into()), Some(b"{not json".to_vec())));
    events.push((1, Some("list".into()), Some(b"[1, 2]".to_vec())));
    events.extend(orders(20, 30, 2));
    send(&broker, &topic, &events);
    let table = unique_name("orders").replace('-', "_");
    let dst = format!("{}?table={table}&mode=append", pg.url("ferry"));
    let src = format!("kafka://{broker}/{topic}");

    let (code, out, err) = run(work.path(), &[&src, &dst]);
    assert_eq!(code, 1, "{out}{err}");
    let line = err
        .lines()
        .find(|l| l.contains("offset"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!("{topic} partition 1 offset 10: value is not JSON")),
        "{line}"
    );
    let exists = format!("SELECT count(*) FROM pg_tables WHERE tablename = '{table}'");
    assert_eq!(
        pg.sql("ferry", &exists),
        "0",
        "nothing is committed past a failure"
    );

    // Dead letters: the two events go, as they were, to another topic; the rest load.
    let dlq = new_topic(&broker, 1);
    let dead = format!("{src}?onError=deadLetter&deadLetter={dlq}");
    run_ok(work.path(), &[&dead, &dst]);
    assert_eq!(
        pg.sql("ferry", &format!("SELECT count(*) FROM {table}")),
        order_ids(0, 30).len().to_string()
    );
    let letters = read_all(&broker, &dlq);
    assert_eq!(
        letters
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("bad", "{not json"), ("list", "[1, 2]")]
    );
    assert_eq!(
        letters[0].2.get("ferry.source").map(String::as_str),
        Some(format!("kafka://{broker}/{topic} partition 1 offset 10").as_str())
    );
    assert!(
        letters[1].2["ferry.error"].contains("not an object"),
        "{letters:?}"
    );

    // Dead letters to a prefix: the two events in one events object, named by partition
    // and offset, with their headers.
    let table3 = format!("{table}_dlp");
    let prefixed = format!("{src}?onError=deadLetter&deadLetter=./dead/");
    run_ok(
        work.path(),
        &[&prefixed, &format!("{}?table={table3}", pg.url("ferry"))],
    );
    let object = work
        .path()
        .join("dead")
        .join(ferry_connectors::kafka::container::object_name(1, 10));
    let data = std::fs::read(&object).unwrap();
    let mut reader = ferry_connectors::kafka::container::EventReader::new(&data[..]).unwrap();
    let mut letters = Vec::new();
    while let Some(e) = reader.next_event().unwrap() {
        letters.push(e);
    }
    assert_eq!(
        letters
            .iter()
            .map(|e| (e.offset, e.value.clone().unwrap()))
            .collect::<Vec<_>>(),
        [(10, b"{not json".to_vec()), (11, b"[1, 2]".to_vec())]
    );
    assert!(letters[0].headers.iter().any(|(k, _)| k == "ferry.error"));
    pg.sql("ferry", &format!("DROP TABLE {table3}"));

    // Skipping: the same rows load, nothing else is sent anywhere.
    let table2 = format!("{table}_skip");
    let dst2 = format!("{}?table={table2}", pg.url("ferry"));
    run_ok(work.path(), &[&format!("{src}?onError=skip"), &dst2]);
    assert_eq!(
        pg.sql("ferry", &format!("SELECT count(*) FROM {table2}")),
        order_ids(0, 30).len().to_string()
    );
    assert_eq!(read_all(&broker, &dlq).len(), 2);

    // A dead-letter option without its topic is refused, naming the option.
    let (code, _, err) = run(work.path(), &[&format!("{src}?onError=deadLetter"), &dst2]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("deadLetter"), "{err}");
    pg.sql("ferry", &format!("DROP TABLE {table}; DROP TABLE {table2}"));
}

/// Every event of a one-partition topic: key, value, headers (as text).
fn read_all(broker: &str, topic: &str) -> Vec<(String, String, BTreeMap<String, String>)> {
    let a = address(broker, topic);
    let consumer = kafka::consumer(&a, 1024).unwrap();
    let (_, high) = kafka::watermarks(&consumer, &a, 0).unwrap();
    let mut out = Vec::new();
    if high == 0 {
        return out;
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&list).unwrap();
    while (out.len() as i64) < high {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                let text =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), text(h.value)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((text(m.key()), text(m.payload()), headers));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => panic!("{e}"),
            None => panic!("no event within 10 s"),
        }
    }
    out
}

#[test]
fn values_read_as_text_with_every_metadata_column_into_one_csv_file() {
    let Some(broker) = broker() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 2);
    send(
        &broker,
        &topic,
        &[
            (0, Some("a".into()), Some(b"first".to_vec())),
            (1, None, Some(b"second, with a comma".to_vec())),
            (0, Some("a".into()), None),
        ],
    );
    let src = format!("kafka://{broker}/{topic}?valueFormat=string&metadata=true");
    let csv = work.path().join("events.csv");
    run_ok(work.path(), &[&src, csv.to_str().unwrap()]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.remove(0),
        "value,_key,_partition,_offset,_timestamp,_headers"
    );
    assert_eq!(lines.len(), 3, "{text}");
    for expected in [
        "first,a,0,0,",
        // A tombstone's value is null.
        ",a,0,1,",
        "\"second, with a comma\",,1,0,",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "{expected} in {text}"
        );
    }
}

#[test]
fn rows_go_to_a_topic_as_json_keyed_by_a_column_and_a_rerun_sends_nothing_again() {
    let Some(broker) = broker() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 3);
    let mut csv = String::from("id,customer,amount\n");
    for i in 0..60 {
        csv.push_str(&format!("{i},c{},{}.5\n", i % 7, i * 3));
    }
    std::fs::write(work.path().join("orders.csv"), &csv).unwrap();
    let dst = format!("kafka://{broker}/{topic}?keyColumns=customer");
    let out = run_ok(work.path(), &["orders.csv", &dst]);
    assert!(out.contains("60 rows"), "{out}");

    let events = read_events(&broker, &topic);
    assert_eq!(events.len(), 60);
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut ids = Vec::new();
    for (p, key, value) in &events {
        let key = String::from_utf8(key.clone().unwrap()).unwrap();
        let row: Value = serde_json::from_slice(value.as_ref().unwrap()).unwrap();
        let id = row["id"].as_u64().unwrap();
        assert_eq!(
            row,
            json!({"id": id, "customer": format!("c{}", id % 7), "amount": id as f64 * 3.0 + 0.5})
        );
        assert_eq!(key, format!("c{}", id % 7));
        // A key's events stay in one partition, in the file's order.
        assert_eq!(*partition_of.entry(key).or_insert(*p), *p);
        ids.push(id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..60).collect::<Vec<_>>());

    // The same files again: already sent, nothing produced twice.
    let out = run_ok(work.path(), &["orders.csv", &dst]);
    assert!(out.contains("already done"), "{out}");
    assert_eq!(read_events(&broker, &topic).len(), 60);

    // A key column that is not there is refused before anything is sent.
    let (code, _, err) = run(
        work.path(),
        &[
            "orders.csv",
            &format!("kafka://{broker}/{topic}?keyColumns=client"),
            "--no-resume",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no column 'client'"), "{err}");
    assert_eq!(read_events(&broker, &topic).len(), 60);
}

#[test]
fn avro_rows_round_trip_through_the_schema_registry_and_compatible_versions_read_as_one() {
    let (Some(broker), Some(registry)) = (broker(), schema_registry()) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = unique_name("avro").replace('-', "_");
    let dst = format!(
        "kafka://{broker}/{topic}?valueFormat=avro&schemaRegistry={registry}&createTopic=true"
    );
    let mut v1 = String::from("order_id,customer,amount\n");
    for i in 0..20 {
        v1.push_str(&format!("{i},c{i},{i}.25\n"));
    }
    std::fs::write(work.path().join("v1.csv"), v1).unwrap();
    std::fs::write(
        work.path().join("v2.csv"),
        "order_id,customer,amount,note\n100,c1,1.5,first\n101,c2,2.5,\n",
    )
    .unwrap();
    run_ok(work.path(), &["v1.csv", &dst]);
    run_ok(work.path(), &["v2.csv", &dst]);

    // Values are in the registry's wire format: 0, the schema id, the datum; the ids are
    // those of the subject's versions.
    let events = read_events(&broker, &topic);
    let ids: BTreeSet<u32> = events
        .iter()
        .map(|(_, _, v)| {
            let v = v.as_ref().unwrap();
            assert_eq!(v[0], 0);
            u32::from_be_bytes([v[1], v[2], v[3], v[4]])
        })
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = ferry_connectors::kafka::registry::Registry::new(
        &address(
            &broker,
            &format!("{topic}?valueFormat=avro&schemaRegistry={registry}"),
        ),
        runtime.handle().clone(),
    )
    .unwrap();
    let (latest, schema) = client.latest(&format!("{topic}-value")).unwrap().unwrap();
    assert_eq!(ids.last(), Some(&latest));
    assert!(
        schema.json_string.contains("\"note\""),
        "{}",
        schema.json_string
    );

    // Both versions read into the latest one's columns.
    let src = format!("kafka://{broker}/{topic}?valueFormat=avro&schemaRegistry={registry}");
    run_ok(work.path(), &[&src, "back.jsonl"]);
    let rows: Vec<Value> = std::fs::read_to_string(work.path().join("back.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 22);
    assert_eq!(
        rows[0],
        json!({"order_id": 0, "customer": "c0", "amount": 0.25})
    );
    assert_eq!(
        rows[20],
        json!({"order_id": 100, "customer": "c1", "amount": 1.5, "note": "first"})
    );

    // A version the earlier ones do not resolve to (a number become text) fails the read,
    // naming the first event that cannot be read.
    std::fs::write(work.path().join("v3.csv"), "order_id,customer\nA-1,c1\n").unwrap();
    run_ok(work.path(), &["v3.csv", &dst]);
    let (code, out, err) = run(work.path(), &[&src, "again.jsonl"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{topic} partition 0 offset 0: schema id")),
        "{err}"
    );
    assert!(!work.path().join("again.jsonl").exists());

    // A registry that does not answer: one line naming it.
    let down =
        format!("kafka://{broker}/{topic}?valueFormat=avro&schemaRegistry=http://127.0.0.1:1");
    let (code, _, err) = run(work.path(), &[&down, "down.jsonl"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("schema registry http://127.0.0.1:1"), "{err}");
}

#[test]
fn a_row_larger_than_the_topic_allows_goes_in_chunks_and_reads_back_whole() {
    let Some(broker) = broker() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 1);
    let blob: String = (0..5 << 20)
        .map(|i| (b'a' + (i / 999 % 26) as u8) as char)
        .collect();
    let lines = [
        json!({"id": 1, "blob": "small"}),
        json!({"id": 2, "blob": blob}),
        json!({"id": 3, "blob": "small again"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(work.path().join("rows.jsonl"), text).unwrap();
    run_ok(
        work.path(),
        &[
            "rows.jsonl",
            &format!("kafka://{broker}/{topic}?keyColumns=id"),
        ],
    );
    let events = read_events(&broker, &topic);
    assert_eq!(events.len(), 2 + 6, "the 5 MiB row in 6 chunks");
    assert!(events
        .iter()
        .all(|(_, _, v)| v.as_ref().map_or(0, Vec::len) <= 1 << 20));

    run_ok(
        work.path(),
        &[&format!("kafka://{broker}/{topic}"), "back.jsonl"],
    );
    let back: Vec<Value> = std::fs::read_to_string(work.path().join("back.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, lines);
}

#[test]
fn a_snapshot_keeps_each_keys_last_value_and_drops_keys_whose_last_event_is_a_tombstone() {
    let Some(broker) = broker() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 2);
    // 50 keys each updated 20 times; every 7th key ends with a tombstone; 5 events without
    // a key.
    let mut events: Vec<Sent> = Vec::new();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..20u64 {
        for k in 0..50u64 {
            let key = format!("k{k}");
            let version = round * 100 + k;
            let p = (k % 2) as i32;
            if round == 19 && k % 7 == 0 {
                events.push((p, Some(key.clone()), None));
                expected.remove(&key);
            } else {
                let value = json!({"key": key, "version": version})
                    .to_string()
                    .into_bytes();
                events.push((p, Some(key.clone()), Some(value)));
                expected.insert(key, version);
            }
        }
    }
    for i in 0..5u64 {
        let value = json!({"key": null, "version": 9000 + i})
            .to_string()
            .into_bytes();
        events.push(((i % 2) as i32, None, Some(value)));
    }
    send(&broker, &topic, &events);

    let src = format!("kafka://{broker}/{topic}?createSnapshot=true");
    let out = run_ok(
        work.path(),
        &[&src, "snapshot.jsonl", "--source-option", "batchSize=64"],
    );
    let rows: Vec<Value> = std::fs::read_to_string(work.path().join("snapshot.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(out.contains(&format!("{} rows", rows.len())), "{out}");
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let mut unkeyed = Vec::new();
    for row in &rows {
        let version = row["version"].as_u64().unwrap();
        match row["key"].as_str() {
            Some(k) => assert!(got.insert(k.to_string(), version).is_none(), "{k} twice"),
            None => unkeyed.push(version),
        }
    }
    assert_eq!(got, expected);
    unkeyed.sort_unstable();
    assert_eq!(unkeyed, [9000, 9001, 9002, 9003, 9004]);
    // The index it spilled to disk is gone.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("ferry-snapshot-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Keyed events into an `upsert` table are changes: each key's last value is its row, a
/// tombstone deletes it (and a later value brings it back), also when a key changes many
/// times within one load, and each run applies only what arrived since the last.
#[test]
fn keyed_changes_keep_an_upsert_table_equal_to_the_topic_in_postgres_mariadb_and_sqlite() {
    let (Some(broker), Some(pg), Some(my)) = (broker(), TestPostgres::get(), TestMysql::get())
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 3);
    // Rounds of 40 keys: values, tombstones of every 6th key in odd rounds, and keys
    // brought back in the next round.
    let round = |r: u64, expected: &mut BTreeMap<String, u64>| -> Vec<Sent> {
        (0..40u64)
            .map(|k| {
                let key = format!("k{k}");
                let p = (k % 3) as i32;
                if r % 2 == 1 && k % 6 == r % 6 {
                    expected.remove(&key);
                    return (p, Some(key), None);
                }
                let version = r * 100 + k;
                expected.insert(key.clone(), version);
                let value = json!({"key": key, "version": version, "note": format!("r{r}")});
                (p, Some(key), Some(value.to_string().into_bytes()))
            })
            .collect()
    };
    let mut expected = BTreeMap::new();
    let first: Vec<Sent> = (0..8).flat_map(|r| round(r, &mut expected)).collect();
    send(&broker, &topic, &first);

    let table = unique_name("changes").replace('-', "_");
    let src = format!("kafka://{broker}/{topic}");
    let pg_dst = format!(
        "{}?table={table}&mode=upsert&keyColumns=key",
        pg.url("ferry")
    );
    let sqlite = work.path().join("changes.db");
    let lite_dst = format!(
        "sqlite://{}?table=changes&mode=upsert&keyColumns=key",
        sqlite.display()
    );
    let pg_rows = |pg: &TestPostgres| -> BTreeMap<String, u64> {
        pg.sql("ferry", &format!("SELECT key, version FROM {table}"))
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('|').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    };
    let my_dst = format!(
        "{}?table={table}&mode=upsert&keyColumns=key",
        my.url("ferry")
    );
    let my_rows = |my: &TestMysql| -> BTreeMap<String, u64> {
        my.sql("ferry", &format!("SELECT \"key\", version FROM {table}"))
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('\t').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    };
    let lite_rows = || -> BTreeMap<String, u64> {
        let c = ferry_connectors::sqlite::rusqlite::Connection::open(&sqlite).unwrap();
        let mut s = c.prepare("SELECT key, version FROM changes").unwrap();
        let rows = s
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .unwrap();
        rows.map(|r| r.unwrap()).collect()
    };
    // Small batches: a key's changes spread over batches and streams of one load.
    for dst in [&pg_dst, &my_dst, &lite_dst] {
        run_ok(work.path(), &[&src, dst, "--source-option", "batchSize=16"]);
    }
    assert_eq!(pg_rows(&pg), expected);
    assert_eq!(my_rows(&my), expected);
    assert_eq!(lite_rows(), expected);

    let more: Vec<Sent> = (8..13).flat_map(|r| round(r, &mut expected)).collect();
    send(&broker, &topic, &more);
    for dst in [&pg_dst, &my_dst, &lite_dst] {
        run_ok(work.path(), &[&src, dst, "--source-option", "batchSize=16"]);
    }
    assert_eq!(pg_rows(&pg), expected);
    assert_eq!(my_rows(&my), expected);
    assert_eq!(lite_rows(), expected);
    // The table has the values' columns and the key as its primary key, nothing of ferry's.
    assert_eq!(
        pg.sql("ferry", &format!("SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = '{table}'")),
        "key,note,version"
    );
    assert_eq!(
        my.sql("ferry", &format!("SELECT group_concat(COLUMN_NAME ORDER BY COLUMN_NAME) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'ferry' AND TABLE_NAME = '{table}'")),
        "key,note,version"
    );
    pg.sql("ferry", &format!("DROP TABLE {table}"));
    my.sql("ferry", &format!("DROP TABLE {table}"));
}

/// Each file under `dir` (relative name) and the ids of its rows, read back by ferry.
fn ids_per_file(work: &Path, dir: &Path) -> BTreeMap<String, Vec<u64>> {
    common::files_in(dir)
        .iter()
        .map(|path| {
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, ids_of(&parquet_rows(work, path.to_str().unwrap())))
        })
        .collect()
}

/// A JSON order `id` at record time `at` in `partition`.
fn timed(partition: i32, id: u64, at: i64) -> (Sent, Option<i64>) {
    let value = json!({"id": id, "pad": "x".repeat(40)}).to_string();
    (
        (partition, Some(format!("k{id}")), Some(value.into_bytes())),
        Some(at),
    )
}

/// 2026-01-01T00:00:00Z in ms.
const NEW_YEAR: i64 = 1_767_225_600_000;
const HOUR: i64 = 3_600_000;

#[test]
fn a_topic_into_a_directory_is_cut_into_files_by_count_record_time_and_size() {
    let Some(broker) = broker() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, 2);
    // Partition 0: 100 events in each of three hours; partition 1: 50 in the first.
    let mut events: Vec<_> = (0..300)
        .map(|i| {
            timed(
                0,
                i,
                NEW_YEAR + (i as i64 / 100) * HOUR + (i as i64 % 100) * 1000,
            )
        })
        .collect();
    events.extend((300..350).map(|i| timed(1, i, NEW_YEAR + (i as i64 - 300) * 1000)));
    common::kafka::send_timed(&broker, &topic, &events);
    let src = format!("kafka://{broker}/{topic}");
    let lake = work.path().join("lake");
    let dir = format!("{}/", lake.display());
    let args = [
        src.as_str(),
        dir.as_str(),
        "--dest-format",
        "parquet",
        "--flush-size",
        "60",
        "--path-format",
        "dt=%Y-%m-%d/hour=%H",
    ];
    run_ok(work.path(), &args);
    // At most 60 events per file, a file never spans two hours, and each file is named
    // by its partition and first offset under the hour of its events.
    let file = |hour: u32, p: u32, offset: u64| {
        format!("topic={topic}/dt=2026-01-01/hour={hour:02}/partition={p:04}/{offset:020}.parquet")
    };
    let range = |from: u64, to: u64| (from..to).collect::<Vec<u64>>();
    let expected: BTreeMap<String, Vec<u64>> = [
        (file(0, 0, 0), range(0, 60)),
        (file(0, 0, 60), range(60, 100)),
        (file(1, 0, 100), range(100, 160)),
        (file(1, 0, 160), range(160, 200)),
        (file(2, 0, 200), range(200, 260)),
        (file(2, 0, 260), range(260, 300)),
        (file(0, 1, 0), range(300, 350)),
    ]
    .into_iter()
    .collect();
    assert_eq!(ids_per_file(work.path(), &lake), expected);

    // A run after more events arrived adds their files only; the same command cuts the
    // same files (nothing is written again).
    common::kafka::send_timed(
        &broker,
        &topic,
        &(350..360)
            .map(|i| timed(0, i, NEW_YEAR + 2 * HOUR + 3_000_000))
            .collect::<Vec<_>>(),
    );
    run_ok(work.path(), &args);
    let mut more = expected.clone();
    more.insert(file(2, 0, 300), range(350, 360));
    assert_eq!(ids_per_file(work.path(), &lake), more);

    // By size: a file closes before its events' keys and values pass 1 KiB, and by
    // record time: one file per 10 minutes.
    let sized = work.path().join("sized");
    let sized_dir = format!("{}/", sized.display());
    let out = run_ok(
        work.path(),
        &[
            src.as_str(),
            sized_dir.as_str(),
            "--dest-format",
            "parquet",
            "--max-file-size",
            "1KiB",
            "--rotate-interval",
            "600",
        ],
    );
    let files = ids_per_file(work.path(), &sized);
    let size = |id: u64| {
        let (_, key, value) = timed(0, id, 0).0;
        (key.unwrap().len() + value.unwrap().len()) as u64
    };
    let window = |id: u64| match id {
        0..300 => (id / 100) * 6 + (id % 100) / 600,
        300..350 => 0,
        _ => 2 * 6 + 5,
    };
    let mut all = Vec::new();
    for (name, ids) in &files {
        let bytes: u64 = ids.iter().map(|i| size(*i)).sum();
        assert!(bytes <= 1024, "{name}: {bytes} bytes of events");
        assert!(
            ids.iter().all(|i| window(*i) == window(ids[0])),
            "{name} spans two 10-minute windows: {ids:?}"
        );
        all.extend(ids.iter().copied());
    }
    all.sort_unstable();
    assert_eq!(all, range(0, 360), "{out}");
    // Full files: the next event would not have fitted.
    let full = files
        .values()
        .filter(|ids| ids.iter().map(|i| size(*i)).sum::<u64>() + size(0) > 1024)
        .count();
    assert!(full * 2 >= files.len(), "{files:?}");

    // Settings that cut files need a directory of a named format.
    let (code, _, err) = run(
        work.path(),
        &[src.as_str(), dir.as_str(), "--flush-size", "10"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--flush-size") && err.contains("format"),
        "{err}"
    );
    let (code, _, err) = run(
        work.path(),
        &[
            src.as_str(),
            dir.as_str(),
            "--dest-format",
            "parquet",
            "--path-format",
            "dt=%Y-%Q",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--path-format") && err.contains("%Q"), "{err}");
}

#[test]
fn a_new_field_stops_a_load_before_it_unless_the_table_may_add_its_column() {
    let (Some(broker), Some(pg), Some(my)) = (broker(), TestPostgres::get(), TestMysql::get())
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let event = |i: u64, extra: &[&str]| -> Sent {
        let mut v = json!({"id": i, "name": format!("n{i}")});
        for field in extra {
            v[*field] = json!(format!("{field}{i}"));
        }
        (0, None, Some(v.to_string().into_bytes()))
    };
    let table = unique_name("evolving").replace('-', "_");
    type Sql<'a> = Box<dyn Fn(&str) -> String + 'a>;
    let servers: [(String, Sql); 2] = [
        (pg.url("ferry"), Box::new(|sql: &str| pg.sql("ferry", sql))),
        (my.url("ferry"), Box::new(|sql: &str| my.sql("ferry", sql))),
    ];
    for (url, sql) in servers {
        let topic = new_topic(&broker, 1);
        let src = format!("kafka://{broker}/{topic}");
        let dst = format!("{url}?table={table}&mode=append");
        send(
            &broker,
            &topic,
            &(0..6).map(|i| event(i, &[])).collect::<Vec<_>>(),
        );
        run_ok(work.path(), &[&src, &dst]);
        // Events with a field the table lacks: the load stops, naming it; nothing changes.
        send(
            &broker,
            &topic,
            &(6..10).map(|i| event(i, &["email"])).collect::<Vec<_>>(),
        );
        let (code, out, err) = run(work.path(), &[&src, &dst]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains("'email'") && err.contains("schemaEvolution: addColumns"),
            "{err}"
        );
        // … and where the events with it start.
        assert!(err.contains("partition 0 offset 6"), "{err}");
        assert_eq!(sql(&format!("SELECT count(*) FROM {table}")), "6");
        // Allowed to add nullable columns, the interrupted run is finished.
        let more: Vec<Sent> = (10..14)
            .map(|i| {
                event(
                    i,
                    if i < 12 {
                        &["email"]
                    } else {
                        &["email", "phone"]
                    },
                )
            })
            .collect();
        send(&broker, &topic, &more);
        let evolving = format!("{dst}&schemaEvolution=addColumns");
        let args = [&src, &evolving, "--source-option", "inferRows=2"];
        run_ok(work.path(), &args);
        assert_eq!(
            sql(&format!("SELECT count(*), count(email) FROM {table}")).replace('\t', "|"),
            "10|4"
        );
        // A field that appears after the values the columns were inferred from ends a run
        // before it; the next run of the same command adds its column.
        run_ok(work.path(), &args);
        assert_eq!(
            sql(&format!(
                "SELECT count(*), count(DISTINCT id), count(email), count(phone) FROM {table}"
            ))
            .replace('\t', "|"),
            "14|14|8|2"
        );
        sql(&format!("DROP TABLE {table}"));
    }
}
