//! The test Kafka broker `scripts/services` starts, and topics made for one test.

use ferry_connectors::kafka;
use ferry_connectors::testkit::unique_name;
use ferry_core::KafkaAddress;

/// The test broker (`FERRY_TEST_KAFKA`), or `None` outside CI when it is not configured.
pub fn broker() -> Option<String> {
    ferry_connectors::testkit::kafka_broker()
}

pub fn address(broker: &str, topic: &str) -> KafkaAddress {
    KafkaAddress::parse(&format!("{broker}/{topic}")).unwrap()
}

/// A new topic of `partitions` partitions, named for this test.
pub fn new_topic(broker: &str, partitions: i32) -> String {
    let topic = unique_name("t").replace(['-'], "_");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(kafka::create_topic(&address(broker, &topic), partitions))
        .unwrap();
    topic
}

/// The test schema registry's URL (`FERRY_TEST_SCHEMA_REGISTRY`, a Confluent-compatible
/// API), or `None` outside CI when it is not configured.
pub fn schema_registry() -> Option<String> {
    match std::env::var("FERRY_TEST_SCHEMA_REGISTRY") {
        Ok(r) => Some(r),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("FERRY_TEST_SCHEMA_REGISTRY unset: run `scripts/services up` and `eval \"$(scripts/services env)\"`")
        }
        Err(_) => {
            eprintln!(
                "skipping: schema registry not configured (FERRY_TEST_SCHEMA_REGISTRY unset)"
            );
            None
        }
    }
}

/// An event as read back: partition, key, value.
pub type ReadEvent = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every event of the topic, each partition in offset order.
pub fn read_events(broker: &str, topic: &str) -> Vec<ReadEvent> {
    use ferry_connectors::kafka::rdkafka::consumer::Consumer;
    use ferry_connectors::kafka::rdkafka::error::KafkaError;
    use ferry_connectors::kafka::rdkafka::message::Message;
    use ferry_connectors::kafka::rdkafka::{Offset, TopicPartitionList};
    let a = address(broker, topic);
    let consumer = kafka::consumer(&a, 1024).unwrap();
    let (partitions, _) = kafka::partitions(&consumer, &a).unwrap();
    let mut list = TopicPartitionList::new();
    let mut expected = 0;
    for p in partitions {
        let (low, high) = kafka::watermarks(&consumer, &a, p).unwrap();
        expected += high - low;
        list.add_partition_offset(topic, p, Offset::Offset(low))
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    while (out.len() as i64) < expected {
        match consumer.poll(std::time::Duration::from_secs(10)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => panic!("{e}"),
            None => panic!("no event within 10 s"),
        }
    }
    out
}

/// A Kafka broker of one test's own (one KRaft node on free ports, its data in `dir`),
/// from the jars `scripts/services` cached (`FERRY_TEST_KAFKA_LIBS`), so a test may kill
/// and restart it without disturbing others.
pub struct PrivateBroker {
    libs: String,
    props: std::path::PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateBroker {
    /// Formats its storage and starts it; `None` outside CI without the jars.
    pub fn start(dir: &std::path::Path) -> Option<PrivateBroker> {
        let libs = match std::env::var("FERRY_TEST_KAFKA_LIBS") {
            Ok(l) => l,
            Err(_) if std::env::var_os("CI").is_some() => panic!("FERRY_TEST_KAFKA_LIBS unset"),
            Err(_) => return None,
        };
        let (port, controller) = (super::service::free_port(), super::service::free_port());
        let props = dir.join("server.properties");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\nnode.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={}\nnum.partitions=1\nauto.create.topics.enable=false\n\
                 offsets.topic.replication.factor=1\noffsets.topic.num.partitions=1\n\
                 transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let format = std::process::Command::new("java")
            .args([
                "-Xmx256m",
                "-cp",
                &format!("{libs}/*"),
                "kafka.tools.StorageTool",
            ])
            .args(["format", "-t", "ferry-private-test-01", "-c"])
            .arg(&props)
            .output()
            .expect("run java");
        assert!(
            format.status.success(),
            "formatting a private broker: {}",
            String::from_utf8_lossy(&format.stderr)
        );
        let mut broker = PrivateBroker {
            libs,
            props,
            port,
            child: None,
        };
        broker.restart();
        Some(broker)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again) and waits until it answers metadata requests.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.props.with_file_name("broker.log")).unwrap();
        let child = std::process::Command::new("java")
            .args(["-Xms64m", "-Xmx384m", "-XX:TieredStopAtLevel=1", "-cp"])
            .arg(format!("{}/*", self.libs))
            .arg("kafka.Kafka")
            .arg(&self.props)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a private broker");
        self.child = Some(child);
        let consumer = kafka::consumer(&address(&self.address(), "probe"), 1024).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        use ferry_connectors::kafka::rdkafka::consumer::Consumer;
        while consumer
            .fetch_metadata(None, std::time::Duration::from_secs(2))
            .map_or(true, |m| m.brokers().is_empty())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the private broker never answered"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new topic of 3 partitions holding `count` JSON rows (`id`, `customer`) that ferry
/// itself produced from a file under `root`, keyed by customer.
pub fn topic_of_rows(root: &std::path::Path, broker: &str, count: usize) -> String {
    let topic = new_topic(broker, 3);
    produce_rows(root, broker, &topic, 0, count);
    topic
}

/// Produces rows `from..to` (`id`, `customer`) into `topic` with ferry, keyed by customer.
pub fn produce_rows(root: &std::path::Path, broker: &str, topic: &str, from: usize, to: usize) {
    let rows: String = (from..to)
        .map(|i| format!("{{\"id\": {i}, \"customer\": \"c{}\"}}\n", i % 11))
        .collect();
    std::fs::write(root.join("rows.jsonl"), rows).unwrap();
    super::copy_in_ok(
        root,
        &[
            "rows.jsonl",
            &format!("kafka://{broker}/{topic}?keyColumns=customer"),
        ],
    );
}

/// An event to send: partition, key, value.
pub type Sent = (i32, Option<String>, Option<Vec<u8>>);

/// Sends events, waiting until all are delivered.
pub fn send(broker: &str, topic: &str, events: &[Sent]) {
    let timed: Vec<(Sent, Option<i64>)> = events.iter().map(|e| (e.clone(), None)).collect();
    send_timed(broker, topic, &timed);
}

/// Sends events with their record times (ms; `None`: now), waiting until all are
/// delivered.
pub fn send_timed(broker: &str, topic: &str, events: &[(Sent, Option<i64>)]) {
    use ferry_connectors::kafka::rdkafka::error::KafkaError;
    use ferry_connectors::kafka::rdkafka::producer::{BaseRecord, Producer};
    let a = address(broker, topic);
    let producer = kafka::producer(&a).unwrap();
    for ((p, key, value), at) in events {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(*p);
        if let Some(k) = key {
            record = record.key(k.as_bytes());
        }
        if let Some(v) = value {
            record = record.payload(v.as_slice());
        }
        if let Some(ms) = at {
            record = record.timestamp(*ms);
        }
        while let Err((e, back)) = producer.send(record) {
            assert!(matches!(e, KafkaError::MessageProduction(_)), "{e}");
            record = back;
            producer.poll(std::time::Duration::from_millis(20));
        }
    }
    producer.flush(std::time::Duration::from_secs(30)).unwrap();
    assert!(producer.context().error(&a).is_none());
}
