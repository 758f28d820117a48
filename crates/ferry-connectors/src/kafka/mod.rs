//! Kafka through librdkafka (the `rdkafka` crate, librdkafka built from its bundled
//! sources): clients configured from a [`KafkaAddress`], the topic's partitions and
//! watermarks, a producer that reports each partition's last delivered offset, and
//! librdkafka's errors turned into ferry's, naming the brokers, topic and partition.
//!
//! The clients are librdkafka's synchronous ones (`BaseConsumer`, `BaseProducer`): ferry
//! drives them from a thread of its own, which also gives backpressure for free.

pub mod chunks;
pub mod container;
pub mod registry;
pub mod rows;
pub mod sink;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use ferry_core::{Error, KafkaAddress, StartOffset};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, TopicPartitionList};

use self::container::Event;

pub use rdkafka;

/// How long metadata and watermark requests may take before the brokers count as
/// unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's settings for `address`: brokers, security, and a client id. A password
/// written `env:NAME` or `file:PATH` is read from there.
pub fn client_config(address: &KafkaAddress) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address.bootstrap())
        .set("client.id", "ferry")
        // A broker that never answers fails the run instead of retrying forever.
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("log_level", "3");
    if let Some(p) = &address.security_protocol {
        config.set("security.protocol", p.to_ascii_lowercase());
    }
    if let Some(m) = &address.sasl_mechanism {
        config.set("sasl.mechanisms", m);
    }
    if let Some(u) = &address.user {
        config.set("sasl.username", u);
    }
    if let Some(p) = &address.password {
        let password = if p.starts_with("env:") || p.starts_with("file:") {
            let bytes = ferry_core::secret::resolve_secret(p)?;
            String::from_utf8(bytes).map_err(|_| {
                Error::invalid_option("password", format!("'{p}' is not UTF-8 text"))
            })?
        } else {
            p.clone()
        };
        config.set("sasl.password", password);
    }
    if let Some(ca) = &address.ca_file {
        config.set("ssl.ca.location", ca);
    }
    Ok(config)
}

/// A consumer that reads partitions it is assigned, from offsets ferry chooses, and
/// commits nothing unless the address names a group. `queued_kib` bounds what librdkafka
/// prefetches.
pub fn consumer(address: &KafkaAddress, queued_kib: usize) -> Result<BaseConsumer, Error> {
    let mut config = client_config(address)?;
    config
        .set("group.id", address.group_id.as_deref().unwrap_or("ferry"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // ferry always says where to read from; events gone from there (retention, a
        // deletion) are an error, never a silent jump to the end of the partition.
        .set("auto.offset.reset", "error")
        .set(
            "queued.max.messages.kbytes",
            queued_kib.max(1024).to_string(),
        )
        .set(
            "fetch.max.bytes",
            (queued_kib.max(4096) * 1024 / 2).to_string(),
        )
        .set("max.partition.fetch.bytes", (4 << 20).to_string())
        // With the prefetch queue full librdkafka waits this long before fetching again
        // (1 s by default): long enough to starve a consumer that drains it quickly.
        .set("fetch.queue.backoff.ms", "10")
        .set("isolation.level", "read_committed");
    config.create().map_err(|e| error(address, None, e))
}

/// The partitions of the address's topic it selects, in order, and how many the topic
/// has; a missing topic or partition is `NotFound`, naming it.
pub fn partitions(
    consumer: &BaseConsumer,
    address: &KafkaAddress,
) -> Result<(Vec<i32>, usize), Error> {
    let all = topic_partitions(consumer, address)?.ok_or_else(|| {
        Error::not_found(format!(
            "topic '{}' at {}",
            address.topic,
            address.bootstrap()
        ))
    })?;
    let count = all.len();
    match &address.partitions {
        None => Ok((all, count)),
        Some(wanted) => {
            for p in wanted {
                if !all.contains(p) {
                    return Err(Error::not_found(format!(
                        "partition {p} of topic '{}' (it has {})",
                        address.topic,
                        all.len()
                    )));
                }
            }
            Ok((wanted.clone(), count))
        }
    }
}

/// The topic's partitions, or `None` when it does not exist.
pub fn topic_partitions(
    client: &impl MetadataSource,
    address: &KafkaAddress,
) -> Result<Option<Vec<i32>>, Error> {
    let metadata = client
        .metadata(&address.topic)
        .map_err(|e| error(address, None, e))?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == address.topic) else {
        return Ok(None);
    };
    if let Some(e) = topic.error() {
        let code = RDKafkaErrorCode::from(e);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Ok(None);
        }
        return Err(error(address, None, KafkaError::MetadataFetch(code)));
    }
    let mut partitions: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    Ok(Some(partitions))
}

/// Anything that can fetch metadata: consumers and producers.
pub trait MetadataSource {
    fn metadata(&self, topic: &str) -> Result<rdkafka::metadata::Metadata, KafkaError>;
}

impl MetadataSource for BaseConsumer {
    fn metadata(&self, topic: &str) -> Result<rdkafka::metadata::Metadata, KafkaError> {
        self.fetch_metadata(Some(topic), METADATA_TIMEOUT)
    }
}

impl MetadataSource for BaseProducer<Delivered> {
    fn metadata(&self, topic: &str) -> Result<rdkafka::metadata::Metadata, KafkaError> {
        self.client().fetch_metadata(Some(topic), METADATA_TIMEOUT)
    }
}

/// The low and high watermarks of `partition`: the first offset kept and the one the
/// next event will get.
///
/// A partition between leaders (a topic just created, a broker restarting) answers
/// "not leader" for a moment; ferry asks again for up to [`LEADER_WAIT`] before failing.
pub fn watermarks(
    consumer: &BaseConsumer,
    address: &KafkaAddress,
    partition: i32,
) -> Result<(i64, i64), Error> {
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    loop {
        match consumer.fetch_watermarks(&address.topic, partition, METADATA_TIMEOUT) {
            Ok(marks) => return Ok(marks),
            Err(e) if leader_moving(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(error(address, Some(partition), e)),
        }
    }
}

/// How long a partition may be without a leader before ferry gives up on it.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Whether `e` is one librdkafka recovers from by itself (a broker restarting, a leader
/// moving): a reading loop goes on.
pub fn transient(e: &KafkaError) -> bool {
    leader_moving(e)
        || matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::OperationTimedOut
            )
        )
}

/// Produces `event` (key, value, headers, and its timestamp when it has one) to the
/// address's topic, into `partition` or where the partitioner puts it, waiting while the
/// producer's queue is full. Delivery is reported to the producer's [`Delivered`].
pub fn send_event(
    producer: &BaseProducer<Delivered>,
    address: &KafkaAddress,
    partition: Option<i32>,
    event: &Event,
) -> Result<(), Error> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&address.topic);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(k) = &event.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &event.value {
        record = record.payload(v.as_slice());
    }
    if event.timestamp_type != 0 {
        record = record.timestamp(event.timestamp);
    }
    if let Some(h) = headers_of(event) {
        record = record.headers(h);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => return Err(error(address, partition, e)),
        }
    }
}

/// Whether `e` says a partition's leadership is moving (it settles by itself).
pub fn leader_moving(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}

/// The record time (ms) of the first event at or after `offset` in `partition` and before
/// `end`, read with `consumer` (whose assignment this replaces); `None` when there is none
/// (only transaction markers, or events removed).
pub fn timestamp_at(
    consumer: &BaseConsumer,
    address: &KafkaAddress,
    partition: i32,
    offset: i64,
    end: i64,
) -> Result<Option<i64>, Error> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&address.topic, partition, rdkafka::Offset::Offset(offset))
        .map_err(|e| error(address, Some(partition), e))?;
    consumer
        .assign(&list)
        .map_err(|e| error(address, Some(partition), e))?;
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Ok(m)) if m.partition() != partition || m.offset() < offset => continue,
            Some(Ok(m)) if m.offset() >= end => return Ok(None),
            Some(Ok(m)) => return Ok(Some(event_of(&m).timestamp)),
            // Only this partition's end: one left over from an earlier assignment of a
            // shared consumer says nothing about it.
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(None),
            Some(Err(KafkaError::PartitionEOF(_))) => continue,
            Some(Err(e)) if transient(&e) => continue,
            Some(Err(e)) => return Err(error(address, Some(partition), e)),
        }
    }
    Err(Error::Unreachable {
        address: format!("{} partition {partition}", address.topic_shown()),
        detail: format!("no answer for offset {offset}"),
    })
}

/// Where partition `p` ends for a run: the address's `endOffset`, at most its high
/// watermark `high`.
pub fn end_offset(address: &KafkaAddress, p: i32, high: i64) -> i64 {
    address
        .end
        .as_ref()
        .and_then(|e| e.get(&p))
        .map_or(high, |e| (*e).min(high))
}

/// `start`, or the low watermark `low` when retention already removed the events before
/// `start` (which the log says).
pub fn kept_start(p: i32, start: i64, low: i64) -> i64 {
    if start < low {
        tracing::warn!(
            partition = p,
            from = start,
            kept_from = low,
            "events before the low watermark are gone (retention)"
        );
    }
    start.max(low)
}

/// Where each partition starts, per the address's `startOffset` (`low` and `high` are
/// each partition's watermarks).
pub fn start_offsets(
    consumer: &BaseConsumer,
    address: &KafkaAddress,
    marks: &BTreeMap<i32, (i64, i64)>,
) -> Result<BTreeMap<i32, i64>, Error> {
    Ok(match &address.start {
        StartOffset::Earliest => marks.iter().map(|(p, (low, _))| (*p, *low)).collect(),
        StartOffset::Latest => marks.iter().map(|(p, (_, high))| (*p, *high)).collect(),
        StartOffset::Offsets(map) => marks
            .iter()
            .map(|(p, (low, _))| (*p, map.get(p).copied().unwrap_or(*low).max(*low)))
            .collect(),
        StartOffset::Time(ms) => {
            let mut list = TopicPartitionList::new();
            for p in marks.keys() {
                list.add_partition_offset(&address.topic, *p, rdkafka::Offset::Offset(*ms))
                    .map_err(|e| error(address, Some(*p), e))?;
            }
            let found = consumer
                .offsets_for_times(list, METADATA_TIMEOUT)
                .map_err(|e| error(address, None, e))?;
            marks
                .iter()
                .map(|(p, (_, high))| {
                    let offset = found
                        .find_partition(&address.topic, *p)
                        .and_then(|e| match e.offset() {
                            rdkafka::Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        // No event at or after the time: nothing to read there.
                        .unwrap_or(*high);
                    (*p, offset)
                })
                .collect()
        }
    })
}

/// The event a consumer received, owned.
pub fn event_of(message: &BorrowedMessage<'_>) -> Event {
    let (timestamp_type, timestamp) = match message.timestamp() {
        Timestamp::NotAvailable => (0, -1),
        Timestamp::CreateTime(t) => (1, t),
        Timestamp::LogAppendTime(t) => (2, t),
    };
    Event {
        offset: message.offset(),
        timestamp,
        timestamp_type,
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers: message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// An event's headers as a producer sends them.
pub fn headers_of(event: &Event) -> Option<OwnedHeaders> {
    if event.headers.is_empty() {
        return None;
    }
    let mut headers = OwnedHeaders::new_with_capacity(event.headers.len());
    for (key, value) in &event.headers {
        headers = headers.insert(rdkafka::message::Header {
            key,
            value: value.as_deref(),
        });
    }
    Some(headers)
}

/// A producer's delivery reports: each partition's last delivered offset, and the first
/// error (which stops the import: nothing after it is recorded).
#[derive(Default)]
pub struct Delivered {
    state: Mutex<DeliveredState>,
}

#[derive(Default)]
struct DeliveredState {
    last: BTreeMap<i32, i64>,
    error: Option<(i32, KafkaError)>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(message) => {
                let last = state.last.entry(message.partition()).or_insert(-1);
                *last = (*last).max(message.offset());
            }
            Err((e, message)) => {
                state.error.get_or_insert((message.partition(), e.clone()));
            }
        }
    }
}

impl Delivered {
    /// The last offset delivered to `partition`, if any.
    pub fn last(&self, partition: i32) -> Option<i64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last.get(&partition).copied()
    }

    /// The first delivery error, as ferry's error.
    pub fn error(&self, address: &KafkaAddress) -> Option<Error> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .error
            .as_ref()
            .map(|(p, e)| error(address, Some(*p), e.clone()))
    }
}

/// An idempotent producer (`acks=all`, in order, no duplicates on its retries) that
/// reports deliveries to [`Delivered`]. `max_message_bytes` is the largest request it may
/// send.
pub fn producer(address: &KafkaAddress) -> Result<BaseProducer<Delivered>, Error> {
    let mut config = client_config(address)?;
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Keyed events go where Kafka's Java clients would send them.
        .set("partitioner", "murmur2_random")
        // Messages up to MAX_MESSAGE, not librdkafka's 1 MB: a topic that allows larger
        // ones gets them whole (larger still go in chunks).
        .set("message.max.bytes", (MAX_MESSAGE + (64 << 10)).to_string())
        .set("linger.ms", "10")
        .set("batch.size", (1024 * 1024).to_string())
        .set("queue.buffering.max.kbytes", (64 * 1024).to_string())
        .set("message.timeout.ms", "120000");
    config
        .create_with_context(Delivered::default())
        .map_err(|e| error(address, None, e))
}

/// Creates the address's topic with `partitions` partitions (replication: the broker's
/// default).
pub async fn create_topic(address: &KafkaAddress, partitions: i32) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = client_config(address)?
        .create()
        .map_err(|e| error(address, None, e))?;
    let topic = NewTopic::new(&address.topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|e| error(address, None, e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(error(address, None, KafkaError::AdminOp(code)));
            }
        }
    }
    Ok(())
}

/// The largest message ferry's producer sends whole, whatever a topic allows.
pub const MAX_MESSAGE: usize = 16 << 20;

/// The largest message ferry sends to the address's topic: what the topic accepts (its
/// `max.message.bytes`, the broker's `message.max.bytes` unless the topic sets its own,
/// asked of the broker), at most [`MAX_MESSAGE`].
pub async fn max_message_bytes(address: &KafkaAddress) -> Result<usize, Error> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = client_config(address)?
        .create()
        .map_err(|e| error(address, None, e))?;
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    // A topic created a moment ago may be unknown to the broker's configuration for a
    // while after its metadata shows it.
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    loop {
        let results = admin
            .describe_configs([&ResourceSpecifier::Topic(&address.topic)], &options)
            .await
            .map_err(|e| error(address, None, e))?;
        for result in results {
            match result {
                Ok(resource) => {
                    if let Some(value) = resource
                        .get("max.message.bytes")
                        .and_then(|entry| entry.value.as_deref())
                        .and_then(|v| v.parse::<usize>().ok())
                    {
                        return Ok(value.min(MAX_MESSAGE));
                    }
                }
                Err(code) => {
                    let settling = matches!(
                        code,
                        RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::NotController
                            | RDKafkaErrorCode::LeaderNotAvailable
                    );
                    if !settling || std::time::Instant::now() >= deadline {
                        return Err(error(address, None, KafkaError::AdminOp(code)));
                    }
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::store(
                address.topic_shown(),
                "the broker did not say the topic's max.message.bytes",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// librdkafka's error as ferry's, naming the brokers, the topic and the partition.
pub fn error(address: &KafkaAddress, partition: Option<i32>, e: KafkaError) -> Error {
    let at = match partition {
        Some(p) => format!("{} partition {p}", address.topic_shown()),
        None => address.topic_shown(),
    };
    let code = e.rdkafka_error_code();
    use RDKafkaErrorCode as C;
    match code {
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            Error::not_found(at)
        }
        Some(
            C::SaslAuthenticationFailed
            | C::Authentication
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed,
        ) => Error::permission_denied(at, describe(&e)),
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::OperationTimedOut | C::Resolve) => {
            // librdkafka reports refused SASL credentials as a connection that failed.
            let refused = match (&address.sasl_mechanism, &address.user) {
                (Some(m), Some(u)) => format!(", or they refused {m} authentication as '{u}'"),
                (Some(m), None) => format!(", or they refused {m} authentication"),
                _ => String::new(),
            };
            Error::store(
                at,
                format!(
                    "no broker answered at {}{refused} ({})",
                    address.bootstrap(),
                    describe(&e)
                ),
            )
        }
        Some(C::AutoOffsetReset | C::OffsetOutOfRange) => Error::data(at, GONE),
        _ => Error::store(at, describe(&e)),
    }
}

/// Why a read stops where the events it was to read are gone.
pub const GONE: &str = "the broker no longer keeps the events from here (retention or a deletion \
    removed them while this run read them); run again to go on from the first offset still kept";

/// Whether `e` says the offset being read is no longer kept (`auto.offset.reset=error`).
pub fn gone(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
    )
}

/// librdkafka's message without the Rust enum's wrapping.
fn describe(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => code.to_string(),
        None => e.to_string(),
    }
}
