//! Events deleted from a partition while a run reads it (retention, `DeleteRecords`) are
//! an error naming the topic, partition and offset, never a silent jump to the end of
//! the partition that would leave a file short of rows.
//!
//! Needs `FERRY_TEST_KAFKA`: `eval "$(scripts/services env)"`.

use std::time::Duration;

use ferry_connectors::kafka;
use ferry_connectors::kafka::rdkafka::admin::{AdminClient, AdminOptions};
use ferry_connectors::kafka::rdkafka::client::DefaultClientContext;
use ferry_connectors::kafka::rdkafka::producer::{BaseRecord, Producer};
use ferry_connectors::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use ferry_connectors::kafka::rows::{Range, TopicScan};
use ferry_connectors::testkit::{kafka_broker, unique_name};
use ferry_connectors::TableScan;
use ferry_core::KafkaAddress;

#[test]
fn events_deleted_before_they_are_read_fail_the_read_naming_partition_and_offset() {
    let Some(broker) = kafka_broker() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let topic = unique_name("gone").replace('-', "_");
    let address = KafkaAddress::parse(&format!("{broker}/{topic}?valueFormat=string")).unwrap();
    runtime.block_on(kafka::create_topic(&address, 1)).unwrap();
    let producer = kafka::producer(&address).unwrap();
    for i in 0..100 {
        let value = format!("event {i}");
        producer
            .send(BaseRecord::<[u8], [u8]>::to(&topic).payload(value.as_bytes()))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    assert!(producer.context().error(&address).is_none());

    // The first 40 go, as retention would remove them, after the run planned 0..100.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap();
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(&topic, 0, Offset::Offset(40))
        .unwrap();
    let deleted = runtime
        .block_on(admin.delete_records(&before, &AdminOptions::new()))
        .unwrap();
    assert_eq!(
        deleted.find_partition(&topic, 0).unwrap().offset(),
        Offset::Offset(40)
    );

    let result: Result<usize, String> = runtime.block_on(async {
        let scan = TopicScan::open(
            &address,
            vec![Range {
                partition: 0,
                start: 0,
                end: 100,
            }],
            None,
            0,
        )
        .map_err(|e| e.to_string())?;
        let mut batches = scan.read(0, 1000);
        let mut rows = 0;
        while let Some(batch) = batches.recv().await {
            rows += batch.map_err(|e| e.to_string())?.num_rows();
        }
        Ok(rows)
    });
    let err = result.expect_err("a read that lost 40 events must fail");
    assert!(
        err.contains("partition 0 offset 0") && err.contains("no longer keeps"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
