//! The test Kafka broker `scripts/services` starts, and topics made for one test.

use ferry_connectors::kafka;
use ferry_connectors::testkit::unique_name;
use ferry_core::KafkaAddress;

/// The test broker (`FERRY_TEST_KAFKA`), or `None` outside CI when it is not configured.
pub fn broker() -> Option<String> {
    match std::env::var("FERRY_TEST_KAFKA") {
        Ok(b) => Some(b),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("FERRY_TEST_KAFKA unset: run `scripts/services up` and `eval \"$(scripts/services env)\"`")
        }
        Err(_) => {
            eprintln!("skipping: Kafka test broker not configured (FERRY_TEST_KAFKA unset)");
            None
        }
    }
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
