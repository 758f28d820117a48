//! Kafka topics exported to files and objects and imported back, against the real broker
//! `scripts/services` starts: exact round trips, SIGKILLed exports and imports finished by
//! running the same command again, and the errors a user meets.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::kafka::{address, broker, new_topic};
use common::{copy_in as copy, copy_in_ok as copy_ok, ferry, start_and_kill};
use ferry_connectors::kafka::container::{Event, EventReader};
use ferry_connectors::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use ferry_connectors::kafka::rdkafka::error::KafkaError;
use ferry_connectors::kafka::rdkafka::producer::{BaseRecord, Producer};
use ferry_connectors::kafka::rdkafka::{Offset, TopicPartitionList};
use ferry_connectors::kafka::{self};
use ferry_connectors::testkit::Remote;

/// `count` events spread over `partitions` by key: null keys, empty values, tombstones,
/// headers with null values, binary bytes and explicit timestamps among them.
fn produce(broker: &str, topic: &str, partitions: i32, count: usize) {
    let a = address(broker, topic);
    let producer = kafka::producer(&a).unwrap();
    for i in 0..count {
        let key = format!("key-{}", i % 37).into_bytes();
        let value: Vec<u8> = (0..(i % 300)).map(|b| (b * 7 + i) as u8).collect();
        let event = Event {
            offset: 0,
            timestamp: 1_700_000_000_000 + i as i64,
            timestamp_type: 1,
            key: (i % 11 != 0).then_some(key),
            value: (i % 13 != 0).then_some(value),
            headers: (0..(i % 3))
                .map(|h| (format!("h{h}"), (h != 1).then(|| vec![h as u8; i % 5])))
                .collect(),
        };
        let headers = kafka::headers_of(&event);
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition((i % partitions as usize) as i32)
            .timestamp(event.timestamp);
        if let Some(k) = &event.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &event.value {
            record = record.payload(v.as_slice());
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        while let Err((e, back)) = producer.send(record) {
            assert!(matches!(e, KafkaError::MessageProduction(_)), "{e}");
            record = back;
            producer.poll(Duration::from_millis(20));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    assert!(producer.context().error(&a).is_none());
}

/// Every event of the topic, per partition, in order (offsets included).
fn read_topic(broker: &str, topic: &str) -> BTreeMap<i32, Vec<Event>> {
    let a = address(broker, topic);
    let consumer: BaseConsumer = kafka::consumer(&a, 4096).unwrap();
    let (partitions, _) = kafka::partitions(&consumer, &a).unwrap();
    let mut list = TopicPartitionList::new();
    let mut open = std::collections::BTreeSet::new();
    let mut out: BTreeMap<i32, Vec<Event>> = BTreeMap::new();
    for p in &partitions {
        let (low, high) = kafka::watermarks(&consumer, &a, *p).unwrap();
        out.insert(*p, Vec::new());
        if high > low {
            list.add_partition_offset(topic, *p, Offset::Offset(low))
                .unwrap();
            open.insert(*p);
        }
    }
    consumer.assign(&list).unwrap();
    while !open.is_empty() {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => out
                .get_mut(&ferry_connectors::kafka::rdkafka::message::Message::partition(&m))
                .unwrap()
                .push(kafka::event_of(&m)),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("{e}"),
            None => panic!("no event within 10 s"),
        }
    }
    out
}

/// The same events, offsets aside (an import assigns its own).
fn same_events(a: &BTreeMap<i32, Vec<Event>>, b: &BTreeMap<i32, Vec<Event>>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (p, events) in a {
        let other = &b[p];
        assert_eq!(
            events.len(),
            other.len(),
            "partition {p}: event counts differ"
        );
        for (x, y) in events.iter().zip(other) {
            let strip = |e: &Event| Event {
                offset: 0,
                ..e.clone()
            };
            assert_eq!(strip(x), strip(y), "partition {p}, offset {}", x.offset);
        }
    }
}

/// The events in an export's objects under `dir`, per partition, in name order.
fn read_export(dir: &Path) -> BTreeMap<i32, Vec<Event>> {
    let mut out: BTreeMap<i32, Vec<Event>> = BTreeMap::new();
    let mut parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    parts.sort();
    for part in parts {
        let p: i32 = part.file_name().unwrap().to_str().unwrap()["partition=".len()..]
            .parse()
            .unwrap();
        let mut objects: Vec<_> = std::fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        objects.sort();
        for object in objects {
            let name = object.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.ends_with(".events.zst"), "a stray file: {name}");
            let data = std::fs::read(&object).unwrap();
            let mut reader = EventReader::new(&data[..]).unwrap();
            while let Some(e) = reader.next_event().unwrap() {
                out.entry(p).or_default().push(e);
            }
        }
    }
    out
}

#[test]
fn a_topic_round_trips_exactly_through_a_directory_s3_and_azure() {
    let Some(broker) = broker() else { return };
    let topic = new_topic(&broker, 3);
    produce(&broker, &topic, 3, 900);
    let original = read_topic(&broker, &topic);
    let work = tempfile::tempdir().unwrap();
    let from = format!("kafka://{broker}/{topic}");

    copy_ok(work.path(), &[&from, "backup/"]);
    let exported = read_export(&work.path().join("backup"));
    for (p, events) in &original {
        // Offsets too: the export keeps each event's own.
        assert!(exported[p] == *events, "partition {p} exported differently");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("backup/_manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        (manifest["partitions"].as_u64(), manifest["events"].as_u64()),
        (Some(3), Some(900))
    );

    let restored = format!("{topic}_restored");
    let into = format!("kafka://{broker}/{restored}?createTopic=true");
    copy_ok(work.path(), &["backup/", &into]);
    same_events(&original, &read_topic(&broker, &restored));
    // Run again: nothing is sent twice.
    let out = copy_ok(work.path(), &["backup/", &into]);
    assert!(out.contains("3 already done"), "{out}");
    same_events(&original, &read_topic(&broker, &restored));

    for (remote, name) in [(Remote::S3, "s3"), (Remote::Azure, "azure")] {
        let Some(prefix) = remote.unique("kafka") else {
            continue;
        };
        copy_ok(work.path(), &[&from, &prefix]);
        let again = format!("{topic}_from_{name}");
        copy_ok(
            work.path(),
            &[
                &prefix,
                &format!("kafka://{broker}/{again}?createTopic=true"),
            ],
        );
        same_events(&original, &read_topic(&broker, &again));
    }
}

#[test]
fn a_killed_export_finishes_without_duplicates_or_gaps() {
    let Some(broker) = broker() else { return };
    let topic = new_topic(&broker, 3);
    produce(&broker, &topic, 3, 1500);
    let original = read_topic(&broker, &topic);
    let work = tempfile::tempdir().unwrap();
    let from = format!("kafka://{broker}/{topic}");
    let args = ["copy", "--object-size", "4KiB", from.as_str(), "backup/"];
    start_and_kill(
        ferry(&work.path().join("state"), work.path()).args(args),
        "pause-after-files:5",
    );
    let out = copy_ok(work.path(), &args[1..]);
    assert!(out.contains("already done"), "{out}");
    let exported = read_export(&work.path().join("backup"));
    for (p, events) in &original {
        assert!(
            exported[p] == *events,
            "partition {p}: events missing or repeated after the resume"
        );
    }
}

/// Killed mid-object, after events reached the broker that the checkpoint does not know
/// of, and killed between objects: the same command finishes with every event once.
#[test]
fn a_killed_import_finishes_exactly_once() {
    let Some(broker) = broker() else { return };
    let topic = new_topic(&broker, 2);
    produce(&broker, &topic, 2, 1200);
    let original = read_topic(&broker, &topic);
    let work = tempfile::tempdir().unwrap();
    copy_ok(
        work.path(),
        &[
            "--object-size",
            "16KiB",
            &format!("kafka://{broker}/{topic}"),
            "backup/",
        ],
    );

    for failpoint in ["pause-after-events:350", "pause-after-files:2"] {
        let target = format!("{topic}_{}", failpoint.split([':', '-']).nth(2).unwrap());
        let into = format!("kafka://{broker}/{target}?createTopic=true");
        let state = work.path().join(format!("state-{target}"));
        let args = ["copy", "backup/", into.as_str()];
        start_and_kill(ferry(&state, work.path()).args(args), failpoint);
        let landed: usize = read_topic(&broker, &target).values().map(Vec::len).sum();
        assert!(
            landed > 0 && landed < 1200,
            "{failpoint}: {landed} events before the kill"
        );
        let out = ferry(&state, work.path()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        same_events(&original, &read_topic(&broker, &target));
    }
}

#[test]
fn errors_name_the_topic_or_the_broker() {
    let Some(broker) = broker() else { return };
    let work = tempfile::tempdir().unwrap();
    let one_line = |(code, _, err): (i32, String, String), needle: &str| {
        assert_ne!(code, 0);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("ferry: error: ") && lines[0].contains(needle),
            "'{needle}' not in {err}"
        );
    };
    one_line(
        copy(
            work.path(),
            &[&format!("kafka://{broker}/no_such_topic_here"), "out/"],
        ),
        "topic 'no_such_topic_here'",
    );
    one_line(
        copy(work.path(), &["kafka://127.0.0.1:1/orders", "out/"]),
        "127.0.0.1:1",
    );

    let topic = new_topic(&broker, 1);
    produce(&broker, &topic, 1, 10);
    copy_ok(
        work.path(),
        &[&format!("kafka://{broker}/{topic}"), "backup/"],
    );
    one_line(
        copy(
            work.path(),
            &["backup/", &format!("kafka://{broker}/{topic}_missing")],
        ),
        "createTopic=true",
    );
    let (_, _, err) = copy(
        work.path(),
        &["kafka://127.0.0.1:1/orders?password=hunter2", "out/"],
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// With `groupId`, each finished object's position is committed to that group; without it
/// ferry commits nothing anywhere.
#[test]
fn an_export_with_a_group_commits_its_positions() {
    let Some(broker) = broker() else { return };
    let topic = new_topic(&broker, 2);
    produce(&broker, &topic, 2, 100);
    let work = tempfile::tempdir().unwrap();
    let group = format!("{topic}_group");
    copy_ok(
        work.path(),
        &[
            &format!("kafka://{broker}/{topic}?groupId={group}"),
            "backup/",
        ],
    );
    let committed = |group: &str| {
        let a =
            ferry_core::KafkaAddress::parse(&format!("{broker}/{topic}?groupId={group}")).unwrap();
        let consumer = kafka::consumer(&a, 1024).unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..2 {
            list.add_partition(&topic, p);
        }
        let found = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap();
        (0..2)
            .map(|p| found.find_partition(&topic, p).unwrap().offset())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        committed(&group),
        vec![Offset::Offset(50), Offset::Offset(50)]
    );
    assert_eq!(committed("ferry"), vec![Offset::Invalid, Offset::Invalid]);
}

/// Text of `len` bytes that tells where in it a byte is (so a reordered or lost chunk
/// shows).
fn text_value(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i / 1000 + seed) % 26) as u8)
        .collect()
}

#[test]
fn events_of_5_and_50_mib_go_in_chunks_and_come_back_whole_even_after_a_kill() {
    let Some(broker) = broker() else { return };
    let work = tempfile::tempdir().unwrap();
    // An export made by hand: small events around one of 5 MiB and one of 50 MiB, with
    // keys, headers and timestamps.
    let sizes = [100, 5 << 20, 200, 50 << 20, 300];
    let events: Vec<Event> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| Event {
            offset: i as i64,
            timestamp: 1_700_000_000_000 + i as i64,
            timestamp_type: 1,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(text_value(len, i)),
            headers: vec![("trace".into(), Some(format!("t{i}").into_bytes()))],
        })
        .collect();
    let object = work
        .path()
        .join("backup")
        .join(ferry_connectors::kafka::container::object_name(0, 0));
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    let file = std::fs::File::create(object).unwrap();
    let mut writer = ferry_connectors::kafka::container::EventWriter::new(file).unwrap();
    for e in &events {
        writer.write(e).unwrap();
    }
    writer.finish().unwrap();

    // The broker takes 1 MiB messages: 6 chunks for 5 MiB, 51 for 50 MiB, 60 records in
    // all. The import is killed in the middle of the 50 MiB event's chunks, then re-run.
    let target = format!("{}_chunks", new_topic(&broker, 1));
    let into = format!("kafka://{broker}/{target}?createTopic=true");
    let state = work.path().join("state");
    start_and_kill(
        ferry(&state, work.path()).args(["copy", "backup/", &into]),
        "pause-after-events:30",
    );
    let out = ferry(&state, work.path())
        .args(["copy", "backup/", &into])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = read_topic(&broker, &target);
    let records = &records[&0];
    assert_eq!(records.len(), 60, "every chunk once");
    assert!(records
        .iter()
        .all(|r| r.value.as_ref().map_or(0, Vec::len) <= 1 << 20));

    // Exported back, the events are whole again, as they were.
    copy_ok(
        work.path(),
        &[&format!("kafka://{broker}/{target}"), "again/"],
    );
    let back = read_export(&work.path().join("again"));
    assert_eq!(back[&0].len(), 5);
    for (x, y) in events.iter().zip(&back[&0]) {
        assert_eq!(
            Event {
                offset: 0,
                ..x.clone()
            },
            Event {
                offset: 0,
                ..y.clone()
            },
            "event {}",
            x.offset
        );
    }
    // The same as rows: five values of the sizes sent, each at its first chunk's offset.
    let out = copy_ok(
        work.path(),
        &[
            &format!("kafka://{broker}/{target}?valueFormat=string&metadata=_offset"),
            "rows.jsonl",
        ],
    );
    assert!(out.contains("5 rows"), "{out}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(work.path().join("rows.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offsets: Vec<i64> = rows
        .iter()
        .map(|r| r["_offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 7, 8, 59]);
    for (row, e) in rows.iter().zip(&events) {
        assert_eq!(
            row["value"].as_str().unwrap().as_bytes(),
            e.value.as_deref().unwrap()
        );
    }
}

#[test]
fn sasl_credentials_from_a_secret_reference_work_and_wrong_ones_are_one_line() {
    let Some(broker) = broker() else { return };
    let (Ok(sasl), Ok(password)) = (
        std::env::var("FERRY_TEST_KAFKA_SASL"),
        std::env::var("FERRY_TEST_KAFKA_SASL_PASSWORD"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "FERRY_TEST_KAFKA_SASL unset"
        );
        return;
    };
    let topic = new_topic(&broker, 2);
    produce(&broker, &topic, 2, 300);
    let original = read_topic(&broker, &topic);
    let work = tempfile::tempdir().unwrap();
    let through = |secret: &str, dir: &str| {
        ferry(&work.path().join("state"), work.path())
            .args([
                "copy",
                &format!("kafka://{sasl}/{topic}?securityProtocol=SASL_PLAINTEXT&saslMechanism=PLAIN&user=ferry&password=env:KAFKA_PASSWORD"),
                dir,
            ])
            .env("KAFKA_PASSWORD", secret)
            .output()
            .unwrap()
    };
    let out = through(&password, "good/");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same_events(&original, &read_export(&work.path().join("good")));

    let out = through("not-the-password", "bad/");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&topic) && err.to_lowercase().contains("authentication"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(!work.path().join("bad").exists());
}

#[test]
fn an_export_goes_on_when_its_broker_is_killed_and_restarted_midway() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut private) = common::kafka::PrivateBroker::start(dir.path()) else {
        eprintln!("skipping: FERRY_TEST_KAFKA_LIBS unset");
        return;
    };
    let broker = private.address();
    let topic = new_topic(&broker, 3);
    // 96 MiB: three times what the export prefetches, so most of it is fetched after the
    // restart.
    let a = address(&broker, &topic);
    let producer = kafka::producer(&a).unwrap();
    for i in 0..4800usize {
        let value = vec![(i % 251) as u8; 20 << 10];
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic)
            .partition((i % 3) as i32)
            .payload(&value[..]);
        while let Err((e, back)) = producer.send(record) {
            assert!(matches!(e, KafkaError::MessageProduction(_)), "{e}");
            record = back;
            producer.poll(Duration::from_millis(20));
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    drop(producer);
    let original = read_topic(&broker, &topic);

    // The export stops after its second object and waits; meanwhile its broker is killed
    // and started again; then the export goes on through librdkafka's reconnection.
    let mut child = ferry(&dir.path().join("state"), dir.path())
        .args([
            "copy",
            "--object-size",
            "64KiB",
            &format!("kafka://{broker}/{topic}"),
            "out/",
        ])
        .env("FERRY_FAILPOINT", "wait-after-objects:2")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("failpoint reached") {
        line.clear();
        assert_ne!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap(),
            0,
            "ferry ended before the failpoint"
        );
    }
    private.kill();
    private.restart();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go on\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest}");
    same_events(&original, &read_export(&dir.path().join("out")));
}
