//! A Kafka topic as an address: `kafka://host:9092[,host2:9092]/topic?option=value`.
//!
//! Options (the same names as a manifest's `type: kafka` fields):
//!
//! | option | meaning |
//! |---|---|
//! | `partitions` | `0,2,5`: only these partitions (default: all) |
//! | `startOffset` | `earliest` (default), `latest`, an RFC 3339 time, or `0:100,1:250` per partition |
//! | `endOffset` | `0:500,1:900` per partition (default: the high watermarks when the run starts) |
//! | `groupId` | a consumer group to commit positions to (default: none; ferry keeps them in its checkpoint) |
//! | `securityProtocol` | `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` |
//! | `saslMechanism` | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` |
//! | `user`, `password` | SASL credentials (the password is a secret: masked wherever shown) |
//! | `caFile` | PEM file of the CA that signed the brokers' certificates |
//! | `createTopic` | `true`: a missing destination topic is created with the source's partition count |
//!
//! Read or written as rows (into a table, Parquet, CSV…, or from them):
//!
//! | option | meaning |
//! |---|---|
//! | `valueFormat` | `json` (default), `avro` (Confluent wire format, needs `schemaRegistry`), `string`, `bytes` |
//! | `schemaRegistry` | the registry's URL, e.g. `http://127.0.0.1:8081` (a Confluent-compatible API) |
//! | `metadata` | `true`, or some of `_key,_partition,_offset,_timestamp,_headers`: columns added to each row |
//! | `onError` | a value that does not decode: `fail` (default), `skip`, or `deadLetter` |
//! | `deadLetter` | with `onError=deadLetter`: the topic (same brokers) that receives such events as they were, or a prefix (`s3://…/dead/`, `./dead/`) of events objects |
//! | `keyColumns` | as a destination: the columns whose values make each event's key |
//! | `createSnapshot` | `true`: only each key's last value; keys whose last event is a tombstone left out |

use std::collections::BTreeMap;
use std::fmt;

use crate::redact::MASK;

/// Where a run starts reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    /// Milliseconds since the Unix epoch: the first event at or after this time.
    Time(i64),
    /// Per partition; partitions not named start at the earliest offset.
    Offsets(BTreeMap<i32, i64>),
}

/// How event values become rows and rows become values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValueFormat {
    /// One JSON object per value; its fields are the columns.
    #[default]
    Json,
    /// Avro in the Confluent wire format: magic byte 0, a 4-byte schema id, the datum.
    Avro,
    /// The value as UTF-8 text, in one column `value`.
    String,
    /// The value as it is, in one binary column `value`.
    Bytes,
}

impl ValueFormat {
    pub fn name(self) -> &'static str {
        match self {
            ValueFormat::Json => "json",
            ValueFormat::Avro => "avro",
            ValueFormat::String => "string",
            ValueFormat::Bytes => "bytes",
        }
    }
}

/// What a value that does not decode does to a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// The run fails, naming the partition and offset; nothing after it is committed.
    #[default]
    Fail,
    /// The event is left out and counted.
    Skip,
    /// The event goes, as it was, to the `deadLetter` topic.
    DeadLetter,
}

/// The metadata columns a topic's rows may carry, in their order.
pub const METADATA_COLUMNS: [&str; 5] = ["_key", "_partition", "_offset", "_timestamp", "_headers"];

#[derive(Clone, PartialEq, Eq)]
pub struct KafkaAddress {
    /// `host:port`, at least one.
    pub brokers: Vec<String>,
    pub topic: String,
    pub partitions: Option<Vec<i32>>,
    pub start: StartOffset,
    /// Per partition, the offset to stop before; `None`: the high watermark at the start.
    pub end: Option<BTreeMap<i32, i64>>,
    pub group_id: Option<String>,
    pub security_protocol: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<String>,
    pub create_topic: bool,
    pub value_format: ValueFormat,
    pub schema_registry: Option<String>,
    /// Metadata columns added to each row read, in [`METADATA_COLUMNS`] order.
    pub metadata: Vec<String>,
    pub on_error: OnError,
    pub dead_letter: Option<String>,
    /// As a destination of rows: the columns making each event's key.
    pub key_columns: Vec<String>,
    /// Read as rows: only each key's last value, keys whose last event is a tombstone
    /// left out.
    pub snapshot: bool,
}

impl KafkaAddress {
    /// Parses what follows `kafka://`: the brokers, `/topic`, and `?options`. The error is
    /// the reason only; the caller names the address.
    pub fn parse(rest: &str) -> Result<Self, String> {
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, topic) = location
            .split_once('/')
            .ok_or("missing topic, e.g. kafka://127.0.0.1:9092/orders")?;
        let brokers: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if brokers.is_empty() {
            return Err("missing broker, e.g. kafka://127.0.0.1:9092/orders".into());
        }
        for broker in &brokers {
            let port = broker.rsplit_once(':').map(|(_, p)| p);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(format!(
                    "broker '{broker}' needs a port, e.g. {broker}:9092"
                ));
            }
        }
        let topic = topic.trim_end_matches('/');
        check_topic(topic)?;
        let mut address = KafkaAddress {
            brokers,
            topic: topic.to_string(),
            partitions: None,
            start: StartOffset::Earliest,
            end: None,
            group_id: None,
            security_protocol: None,
            sasl_mechanism: None,
            user: None,
            password: None,
            ca_file: None,
            create_topic: false,
            value_format: ValueFormat::Json,
            schema_registry: None,
            metadata: Vec::new(),
            on_error: OnError::Fail,
            dead_letter: None,
            key_columns: Vec::new(),
            snapshot: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = crate::address::percent_decode(value)
                .ok_or_else(|| format!("option '{name}' is not valid percent-encoded UTF-8"))?;
            address.set(name, &value)?;
        }
        Ok(address)
    }

    /// Sets one option by its manifest name; the error names the option.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let bad = |why: String| format!("option '{name}': {why}");
        match name {
            "partitions" => {
                let list = value
                    .split(',')
                    .map(|p| p.trim().parse::<i32>().ok().filter(|p| *p >= 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(format!("'{value}' is not a list of partition numbers, e.g. 0,1,2")))?;
                self.partitions = Some(list);
            }
            "startOffset" => {
                self.start = match value {
                    "earliest" => StartOffset::Earliest,
                    "latest" => StartOffset::Latest,
                    v if v.contains(':') && v.contains('T') => {
                        let time = chrono_free_rfc3339_millis(v).ok_or_else(|| {
                            bad(format!("'{v}' is not an RFC 3339 time, e.g. 2026-12-03T07:00:00Z"))
                        })?;
                        StartOffset::Time(time)
                    }
                    v => StartOffset::Offsets(per_partition(v).map_err(|_| {
                        bad(format!(
                            "'{v}': expected earliest, latest, an RFC 3339 time or partition:offset pairs (0:100,1:250)"
                        ))
                    })?),
                }
            }
            "endOffset" => self.end = Some(per_partition(value).map_err(bad)?),
            "groupId" => self.group_id = Some(value.to_string()),
            "securityProtocol" => {
                let upper = value.to_ascii_uppercase();
                if !["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"].contains(&upper.as_str()) {
                    return Err(bad(format!(
                        "'{value}': expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
                    )));
                }
                self.security_protocol = Some(upper);
            }
            "saslMechanism" => {
                let upper = value.to_ascii_uppercase();
                if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&upper.as_str()) {
                    return Err(bad(format!(
                        "'{value}': expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    )));
                }
                self.sasl_mechanism = Some(upper);
            }
            "user" => self.user = Some(value.to_string()),
            "password" => self.password = Some(value.to_string()),
            "caFile" => self.ca_file = Some(value.to_string()),
            "createTopic" => {
                self.create_topic = match value {
                    "true" | "" => true,
                    "false" => false,
                    v => return Err(bad(format!("'{v}': expected true or false"))),
                }
            }
            "valueFormat" => {
                self.value_format = match value.to_ascii_lowercase().as_str() {
                    "json" => ValueFormat::Json,
                    "avro" => ValueFormat::Avro,
                    "string" => ValueFormat::String,
                    "bytes" => ValueFormat::Bytes,
                    v => return Err(bad(format!("'{v}': expected json, avro, string or bytes"))),
                }
            }
            "schemaRegistry" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(bad(format!(
                        "'{value}' is not an http(s) URL, e.g. http://127.0.0.1:8081"
                    )));
                }
                self.schema_registry = Some(value.trim_end_matches('/').to_string());
            }
            "metadata" => {
                self.metadata = match value {
                    "true" | "" => METADATA_COLUMNS.iter().map(|c| c.to_string()).collect(),
                    "false" => Vec::new(),
                    list => {
                        let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
                        if let Some(unknown) =
                            wanted.iter().find(|c| !METADATA_COLUMNS.contains(c))
                        {
                            return Err(bad(format!(
                                "unknown column '{unknown}'; expected true or some of {}",
                                METADATA_COLUMNS.join(",")
                            )));
                        }
                        METADATA_COLUMNS
                            .iter()
                            .filter(|c| wanted.contains(c))
                            .map(|c| c.to_string())
                            .collect()
                    }
                }
            }
            "onError" => {
                self.on_error = match value {
                    "fail" => OnError::Fail,
                    "skip" => OnError::Skip,
                    "deadLetter" => OnError::DeadLetter,
                    v => return Err(bad(format!("'{v}': expected fail, skip or deadLetter"))),
                }
            }
            "deadLetter" => {
                if dead_letter_prefix(value) {
                    crate::DataAddress::parse(value).map_err(|e| bad(e.to_string()))?;
                } else {
                    check_topic(value).map_err(|why| {
                        bad(format!("{why}; or a prefix such as s3://bucket/dead/ or ./dead/"))
                    })?;
                }
                self.dead_letter = Some(value.to_string());
            }
            "createSnapshot" => {
                self.snapshot = match value {
                    "true" | "" => true,
                    "false" => false,
                    v => return Err(bad(format!("'{v}': expected true or false"))),
                }
            }
            "keyColumns" => {
                self.key_columns = value
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            other => {
                return Err(format!(
                    "unknown Kafka option '{other}' (e.g. partitions, startOffset, endOffset, groupId, securityProtocol, saslMechanism, user, password, caFile, createTopic, valueFormat, schemaRegistry, metadata, onError, deadLetter, keyColumns, createSnapshot)"
                ))
            }
        }
        Ok(())
    }

    /// Checks options that only make sense together: a registry for Avro, a dead-letter
    /// topic for `onError=deadLetter`. The error names the option at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.value_format == ValueFormat::Avro && self.schema_registry.is_none() {
            return Err((
                "schemaRegistry",
                "required with valueFormat=avro, e.g. schemaRegistry=http://127.0.0.1:8081".into(),
            ));
        }
        if self.on_error == OnError::DeadLetter && self.dead_letter.is_none() {
            return Err((
                "deadLetter",
                "required with onError=deadLetter: the topic that receives events that do not decode".into(),
            ));
        }
        if self.dead_letter.as_deref() == Some(self.topic.as_str()) {
            return Err((
                "deadLetter",
                format!("'{}' is the topic being read", self.topic),
            ));
        }
        Ok(())
    }

    /// The options as set, by manifest name, in a stable order (the password masked when
    /// `masked`).
    fn option_pairs(&self, masked: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(p) = &self.partitions {
            let list: Vec<String> = p.iter().map(i32::to_string).collect();
            out.push(("partitions", list.join(",")));
        }
        match &self.start {
            StartOffset::Earliest => {}
            StartOffset::Latest => out.push(("startOffset", "latest".into())),
            StartOffset::Time(ms) => out.push(("startOffset", format!("{ms}ms"))),
            StartOffset::Offsets(map) => out.push(("startOffset", show_per_partition(map))),
        }
        if let Some(end) = &self.end {
            out.push(("endOffset", show_per_partition(end)));
        }
        let password =
            self.password
                .as_ref()
                .map(|p| if masked { MASK.to_string() } else { p.clone() });
        for (name, value) in [
            ("groupId", &self.group_id),
            ("securityProtocol", &self.security_protocol),
            ("saslMechanism", &self.sasl_mechanism),
            ("user", &self.user),
            ("password", &password),
            ("caFile", &self.ca_file),
        ] {
            if let Some(v) = value {
                out.push((name, v.clone()));
            }
        }
        if self.create_topic {
            out.push(("createTopic", "true".into()));
        }
        if self.value_format != ValueFormat::Json {
            out.push(("valueFormat", self.value_format.name().into()));
        }
        if let Some(r) = &self.schema_registry {
            out.push(("schemaRegistry", r.clone()));
        }
        if !self.metadata.is_empty() {
            out.push(("metadata", self.metadata.join(",")));
        }
        match self.on_error {
            OnError::Fail => {}
            OnError::Skip => out.push(("onError", "skip".into())),
            OnError::DeadLetter => out.push(("onError", "deadLetter".into())),
        }
        if let Some(d) = &self.dead_letter {
            out.push(("deadLetter", d.clone()));
        }
        if !self.key_columns.is_empty() {
            out.push(("keyColumns", self.key_columns.join(",")));
        }
        if self.snapshot {
            out.push(("createSnapshot", "true".into()));
        }
        out
    }

    /// The brokers as librdkafka takes them.
    pub fn bootstrap(&self) -> String {
        self.brokers.join(",")
    }

    /// `kafka://brokers/topic` without options: how messages name the topic.
    pub fn topic_shown(&self) -> String {
        format!("kafka://{}/{}", self.bootstrap(), self.topic)
    }
}

/// Shows the address with the password masked.
impl fmt::Display for KafkaAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.topic_shown())?;
        for (i, (name, value)) in self.option_pairs(true).iter().enumerate() {
            write!(f, "{}{name}={value}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl fmt::Debug for KafkaAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaAddress({self})")
    }
}

/// Whether a `deadLetter` value names a prefix (an address or a path) rather than a topic.
pub fn dead_letter_prefix(value: &str) -> bool {
    value.contains("://") || value.contains('/') || value.starts_with('.')
}

/// Kafka's rule: 1 to 249 characters of ASCII letters, digits, `.`, `_` and `-`.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("missing topic, e.g. kafka://127.0.0.1:9092/orders".into());
    }
    let valid = topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(format!(
            "topic '{topic}' may hold only up to 249 letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// `0:100,1:250` → {0: 100, 1: 250}.
fn per_partition(value: &str) -> Result<BTreeMap<i32, i64>, String> {
    let mut out = BTreeMap::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item
            .split_once(':')
            .and_then(|(p, o)| Some((p.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?)))
            .filter(|(p, o)| *p >= 0 && *o >= 0);
        let Some((partition, offset)) = parsed else {
            return Err(format!(
                "'{item}' is not partition:offset, e.g. 0:100,1:250"
            ));
        };
        out.insert(partition, offset);
    }
    if out.is_empty() {
        return Err(format!(
            "'{value}' names no partition:offset, e.g. 0:100,1:250"
        ));
    }
    Ok(out)
}

fn show_per_partition(map: &BTreeMap<i32, i64>) -> String {
    let items: Vec<String> = map.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    items.join(",")
}

/// `2026-12-03T07:00:00Z` or with an offset `+01:00`, fractions of a second allowed →
/// milliseconds since the epoch. ferry-core keeps no date crate; this is all it needs.
fn chrono_free_rfc3339_millis(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(['T', 't'])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (clock, offset_minutes) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, mi) = zone[1..].split_once(':')?;
        (
            clock,
            sign * (h.parse::<i64>().ok()? * 60 + mi.parse::<i64>().ok()?),
        )
    };
    let mut c = clock.split(':');
    let (h, mi): (i64, i64) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let seconds = c.next()?;
    let (s, frac) = seconds.split_once('.').unwrap_or((seconds, ""));
    let s: i64 = s.parse().ok()?;
    let millis: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) - offset_minutes * 60) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_topic_and_options() {
        let a = KafkaAddress::parse(
            "b1:9092,b2:9093/orders?partitions=0,2&startOffset=0:10,2:20&groupId=g&password=s%3Dcret",
        )
        .unwrap();
        assert_eq!(a.brokers, vec!["b1:9092", "b2:9093"]);
        assert_eq!(a.topic, "orders");
        assert_eq!(a.partitions, Some(vec![0, 2]));
        assert_eq!(
            a.start,
            StartOffset::Offsets([(0, 10), (2, 20)].into_iter().collect())
        );
        assert_eq!(a.password.as_deref(), Some("s=cret"));
        let shown = a.to_string();
        assert!(
            shown.contains("password=***") || !shown.contains("s=cret"),
            "{shown}"
        );
        assert!(!shown.contains("cret"), "{shown}");
    }

    #[test]
    fn times_and_errors() {
        let a = KafkaAddress::parse("h:1/t?startOffset=2026-12-03T07:00:00.5Z").unwrap();
        assert_eq!(a.start, StartOffset::Time(1_796_281_200_500));
        let a = KafkaAddress::parse("h:1/t?startOffset=1970-01-01T01:00:00+01:00").unwrap();
        assert_eq!(a.start, StartOffset::Time(0));
        for (bad, says) in [
            ("h:1/", "missing topic"),
            ("h/t", "needs a port"),
            ("h:1/a b", "may hold only"),
            ("h:1/t?partitions=x", "option 'partitions'"),
            ("h:1/t?startOffset=0-5", "option 'startOffset'"),
            ("h:1/t?securityProtocol=TLS", "option 'securityProtocol'"),
            ("h:1/t?colour=red", "unknown Kafka option 'colour'"),
        ] {
            let e = KafkaAddress::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn row_options_and_their_errors() {
        let a = KafkaAddress::parse(
            "h:1/t?valueFormat=avro&schemaRegistry=http://r:8081/&metadata=_offset,_key&onError=skip",
        )
        .unwrap();
        assert_eq!(a.value_format, ValueFormat::Avro);
        assert_eq!(a.schema_registry.as_deref(), Some("http://r:8081"));
        assert_eq!(a.metadata, ["_key", "_offset"]);
        assert_eq!(a.on_error, OnError::Skip);
        assert!(a.check().is_ok());
        let shown = a.to_string();
        assert_eq!(KafkaAddress::parse(&shown["kafka://".len()..]).unwrap(), a);
        for (query, named) in [
            ("valueFormat=xml", "valueFormat"),
            ("metadata=_key,_size", "_size"),
            ("onError=ignore", "onError"),
            ("schemaRegistry=r:8081", "schemaRegistry"),
            ("deadLetter=bad%20topic", "deadLetter"),
            ("deadLetter=ftp://x/dead/", "deadLetter"),
        ] {
            let err = KafkaAddress::parse(&format!("h:1/t?{query}")).unwrap_err();
            assert!(err.contains(named), "{query}: {err}");
        }
        let needs = |query: &str| {
            KafkaAddress::parse(&format!("h:1/t?{query}"))
                .unwrap()
                .check()
                .unwrap_err()
                .0
        };
        assert_eq!(needs("valueFormat=avro"), "schemaRegistry");
        assert_eq!(needs("onError=deadLetter"), "deadLetter");
        assert_eq!(needs("onError=deadLetter&deadLetter=t"), "deadLetter");
    }
}
