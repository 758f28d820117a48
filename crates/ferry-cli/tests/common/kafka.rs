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
