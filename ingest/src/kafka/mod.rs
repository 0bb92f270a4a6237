//! Kafka ingestion: consume what OpenTelemetry Collectors (and producers of Vigil's own JSON records) write
//! to Kafka, as one consumer group shared by every Vigil instance.
//!
//! # Delivery: at least once, effectively once
//! Offsets are stored only after [`EventSink::accept`] returned `Ok` for the batch that contains the message
//! (the events are then in the fsynced write-ahead log) or after the broker acknowledged the message's
//! dead-letter copy, and only stored offsets are committed. A crash or a rebalance therefore replays at most
//! the tail that was durable but not yet committed (at most `commit_interval` of batches) plus the batch
//! in flight. Replayed telemetry keeps its event ids (trace id + span id, a hash of a log record, or a hash
//! of a JSON record), and the store deduplicates by event id, so a replay adds no rows.
//!
//! # Scale-out and partitions
//! Every `vigil serve` with the same `group_id` joins one consumer group, and Kafka splits the partitions
//! of the subscribed topics among them (librdkafka's default `range,roundrobin` assignor; set
//! `partition.assignment.strategy` in `properties` to change it). Which partition a record lands in, and so
//! which instance sees it, is decided by the Collector's Kafka exporter:
//! - with `partition_traces_by_id: true` the message key is the trace id, so all spans of a trace reach one
//!   instance;
//! - with `partition_logs_by_resource_attributes: true` (or `partition_traces_by_resource_attributes`) the
//!   key is a hash of the resource attributes, so everything one service instance (`service.name`,
//!   `host.name`, ...) sends reaches one instance: this is the setting to use when per-entity baselines
//!   should live on one consumer;
//! - with neither the key is empty and librdkafka's producer spreads messages over partitions, so one
//!   entity's events reach every instance and each builds a partial view of it.
//!
//! Keys are opaque to Vigil: it never reads them, it only keeps them on dead letters.
//!
//! # Rebalances
//! Rebalance callbacks run inside the consumer's poll, which this consumer calls only between batches: a
//! rebalance can never interleave with a sink call. When partitions are revoked the consumer commits every
//! stored offset synchronously before giving them up, then drops the messages of the revoked partitions it
//! had read but not yet delivered; the new owner starts from the committed offset and reads them again, so
//! nothing is skipped and nothing durable is delivered twice. If an instance stops polling for longer than
//! `max.poll.interval.ms` (its sink has been refusing work for five minutes by default), librdkafka takes it
//! out of the group and its partitions move to the healthy instances; its uncommitted batch is replayed
//! there and deduplicated by the store.
//!
//! An instance that crashes (no LeaveGroup) keeps its partitions until its session times out; Vigil sets
//! `session.timeout.ms` to 10 s unless `properties` say otherwise. An assignment that stays empty with no
//! rebalance although the subscribed topics have partitions makes the consumer leave and rejoin the group
//! once: some coordinators (tansu 0.6, after a crashed leader expires) form a group without any assignment
//! and never rebalance it again; see `rejoin.rs`.
//!
//! # Backpressure
//! When the sink answers `Overloaded` or `Unavailable`, or the dead-letter topic refuses a poison message's
//! copy, the consumer pauses every assigned partition (no more prefetching), retries with exponential
//! backoff (or the sink's `retry_after`) and resumes after it succeeds. It never reads ahead while a batch is refused, so memory stays bounded by one batch
//! plus librdkafka's prefetch queue (`queued.max.messages.kbytes`); pausing also drops what librdkafka had
//! prefetched for those partitions, and on resume it fetches again from the position after the last message
//! read. `vigil_kafka_paused{topic,partition}` is 1 while a partition is paused. A sink that is merely slow
//! is not paused for: it holds the loop, so at most one batch is in flight and librdkafka's queue stays
//! within its limits.
//!
//! An `Internal` refusal means the pipeline failed on the batch's content (a detector panicked). Waiting
//! would not help, so the batch is delivered again message by message; a message refused twice on its own
//! is dead-lettered with the pipeline's error and the others are stored. Without a dead-letter topic the
//! batch is retried instead (a message taken out would be lost), and the lag grows.

mod consumer;
pub mod dlq;
pub mod metrics;
pub mod records;
mod rejoin;
mod supervise;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::Deserialize;

use crate::sink::EventSink;

/// The `[kafka]` table of the config file. Every field has a default; an empty `brokers` disables Kafka.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`. Empty: Kafka ingestion is off.
    pub brokers: String,
    /// The consumer group every Vigil instance sharing the topics joins.
    pub group_id: String,
    /// What to subscribe to. Defaults to the Collector's `otlp_spans` and `otlp_logs` (protobuf) and
    /// `vigil_events` (JSON records).
    pub topics: Vec<TopicConfig>,
    /// Where undecodable messages go. Empty: they are logged, counted and skipped instead.
    pub dlq_topic: String,
    /// Largest message decoded; larger ones are dead-lettered, as are messages whose events would hold
    /// more than four times it. The Collector's default limit is 1 MB.
    pub max_message_bytes: usize,
    /// Most messages normalised together into one sink call.
    pub batch_max_messages: usize,
    /// Most payload bytes in one batch (it closes at the message that reaches it): with
    /// `batch_max_messages` alone, 500 messages of 4 MiB would be 2 GiB held at once. The events a batch
    /// normalises to are held to the same bound: past it, the batch is delivered in parts (a part of one
    /// message may hold more, up to four times `max_message_bytes`).
    pub batch_max_bytes: usize,
    /// Longest a batch waits for more messages after its first one: the latency paid for larger writes.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Least time between two offset commits (zero: after every batch). A longer interval means fewer
    /// commits and a longer replay after a crash; the replay is deduplicated either way.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Stored in the `source` column of every event consumed (records cannot name their own); unset, that
    /// column is null: Kafka producers are not authenticated by Vigil's tokens.
    pub source_name: Option<String>,
    /// librdkafka properties passed through to the consumer and the dead-letter producer (for example
    /// `security.protocol`, `sasl.mechanisms`, `ssl.ca.location`, `auto.offset.reset`). The properties the
    /// delivery guarantee rests on (`enable.auto.commit`, `enable.auto.offset.store`) cannot be overridden.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            group_id: "vigil".to_owned(),
            topics: vec![
                TopicConfig::named("otlp_spans", TopicEncoding::OtlpProto, Signal::Traces),
                TopicConfig::named("otlp_logs", TopicEncoding::OtlpProto, Signal::Logs),
                TopicConfig::named("vigil_events", TopicEncoding::VigilJson, Signal::Events),
            ],
            dlq_topic: "vigil_dlq".to_owned(),
            max_message_bytes: 4 * 1024 * 1024,
            batch_max_messages: 500,
            batch_max_bytes: 64 * 1024 * 1024,
            batch_max_wait: Duration::from_millis(100),
            commit_interval: Duration::from_secs(1),
            source_name: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Whether Kafka ingestion is configured at all.
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// Checks what serde cannot: one of `name`/`regex` per topic, encodings that fit their signal, and no
    /// topic subscribed twice.
    pub fn validate(&self) -> Result<(), KafkaError> {
        let bad = |msg: String| Err(KafkaError::Config(msg));
        if self.group_id.trim().is_empty() {
            return bad("kafka.group_id must not be empty".into());
        }
        if self.topics.is_empty() {
            return bad("kafka.topics must name at least one topic".into());
        }
        if self.batch_max_messages == 0 || self.max_message_bytes == 0 || self.batch_max_bytes == 0
        {
            return bad(
                "kafka.batch_max_messages, kafka.batch_max_bytes and kafka.max_message_bytes must be positive"
                    .into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for topic in &self.topics {
            let subscription = topic.subscription()?;
            if !seen.insert(subscription.clone()) {
                return bad(format!("kafka topic {subscription:?} is configured twice"));
            }
            let fits = match topic.encoding {
                TopicEncoding::VigilJson => topic.signal == Signal::Events,
                TopicEncoding::OtlpProto | TopicEncoding::OtlpJson => {
                    topic.signal != Signal::Events
                }
            };
            if !fits {
                return bad(format!(
                    "kafka topic {subscription:?}: encoding {:?} does not carry signal {:?} (vigil_json carries \
                     events, otlp_proto/otlp_json carry traces or logs)",
                    topic.encoding, topic.signal
                ));
            }
        }
        if !self.dlq_topic.is_empty() && self.topics.iter().any(|t| t.matches(&self.dlq_topic)) {
            return bad(format!(
                "the dead-letter topic {:?} must not be one of the consumed topics",
                self.dlq_topic
            ));
        }
        Ok(())
    }
}

/// One subscription: a topic name or a regular expression over topic names, and how its messages are
/// encoded.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// An exact topic name.
    #[serde(default)]
    pub name: Option<String>,
    /// A regular expression over topic names (librdkafka's pattern subscription: topics created later that
    /// match are picked up too). A leading `^` is added if missing.
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub encoding: TopicEncoding,
    pub signal: Signal,
}

impl TopicConfig {
    pub fn named(name: &str, encoding: TopicEncoding, signal: Signal) -> Self {
        TopicConfig {
            name: Some(name.to_owned()),
            regex: None,
            encoding,
            signal,
        }
    }

    /// The string handed to librdkafka's subscribe: the name, or the pattern starting with `^`.
    pub fn subscription(&self) -> Result<String, KafkaError> {
        match (&self.name, &self.regex) {
            (Some(name), None) if !name.is_empty() && !name.starts_with('^') => Ok(name.clone()),
            (None, Some(regex)) if !regex.is_empty() => {
                let pattern = if regex.starts_with('^') {
                    regex.clone()
                } else {
                    format!("^{regex}")
                };
                regex::Regex::new(&pattern).map_err(|err| {
                    KafkaError::Config(format!("kafka topic regex {regex:?}: {err}"))
                })?;
                Ok(pattern)
            }
            _ => Err(KafkaError::Config(
                "each kafka topic needs exactly one of `name` (not starting with ^) or `regex`"
                    .into(),
            )),
        }
    }

    /// Whether a message from `topic` belongs to this subscription.
    pub fn matches(&self, topic: &str) -> bool {
        match (&self.name, self.subscription()) {
            (Some(name), _) => name == topic,
            (None, Ok(pattern)) => regex::Regex::new(&pattern).is_ok_and(|re| re.is_match(topic)),
            (None, Err(_)) => false,
        }
    }
}

/// How a topic's message values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicEncoding {
    /// The Collector's default: a protobuf `TracesData` / `LogsData`.
    #[default]
    OtlpProto,
    /// The Collector's `otlp_json`: OTLP/JSON of the same messages.
    OtlpJson,
    /// Vigil's own JSON event records (see [`records`]).
    VigilJson,
}

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Traces,
    Logs,
    Events,
}

impl Signal {
    fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Events => "events",
        }
    }
}

/// Why the Kafka consumer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid kafka configuration: {0}")]
    Config(String),
    #[error("kafka consumer stopped: {0}")]
    Internal(String),
    #[error("kafka {context}: {source}")]
    Client {
        context: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Consumes the configured topics into `sink` until `shutdown` resolves, then finishes the batch in hand,
/// commits and returns. A consumer that stops on an error is started again (see `kafka::supervise`). With
/// Kafka disabled (empty `brokers`) it just waits for `shutdown`, so the binary can treat every component
/// alike.
pub async fn run(
    config: KafkaConfig,
    sink: Arc<dyn EventSink>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KafkaError> {
    if !config.enabled() {
        shutdown.await;
        return Ok(());
    }
    start(config, sink)?.run(shutdown).await
}

/// Validates the configuration and creates the first consumer now, so that one that cannot start at all
/// (a typo in a librdkafka property, a bad topic pattern) fails the server's start instead of a
/// background task while the server reports ready.
pub fn start(config: KafkaConfig, sink: Arc<dyn EventSink>) -> Result<Started, KafkaError> {
    config.validate()?;
    let first = consumer::Consumer::start(config.clone(), sink.clone())?;
    Ok(Started {
        config,
        sink,
        first,
    })
}

/// A Kafka consumer that started; [`Started::run`] consumes until shutdown.
pub struct Started {
    config: KafkaConfig,
    sink: Arc<dyn EventSink>,
    first: consumer::Consumer,
}

impl Started {
    /// Consumes until `shutdown` resolves, starting the consumer again after an error.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), KafkaError> {
        let Started {
            config,
            sink,
            first,
        } = self;
        let mut first = Some(first);
        let shutdown = Box::pin(shutdown).shared();
        supervise::supervise(shutdown, supervise::BACKOFF_START, move |stop| {
            let ready = first.take();
            let (config, sink) = (config.clone(), sink.clone());
            async move {
                let consumer = match ready {
                    Some(consumer) => consumer,
                    None => consumer::Consumer::start(config, sink)?,
                };
                consumer.run(stop).await
            }
        })
        .await
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn defaults_subscribe_to_the_collector_topics_and_vigil_events() {
        let cfg: KafkaConfig = serde_json::from_str("{}").expect("empty table");
        assert_eq!(cfg, KafkaConfig::default());
        assert!(!cfg.enabled());
        let subs: Vec<String> = cfg
            .topics
            .iter()
            .map(|t| t.subscription().unwrap())
            .collect();
        assert_eq!(subs, ["otlp_spans", "otlp_logs", "vigil_events"]);
        assert_eq!(cfg.dlq_topic, "vigil_dlq");
        assert_eq!(cfg.group_id, "vigil");
        cfg.validate().expect("defaults are valid");
    }

    #[test]
    fn topics_by_regex_with_encodings_and_durations() {
        let cfg: KafkaConfig = serde_json::from_value(serde_json::json!({
            "brokers": "k1:9092",
            "topics": [
                {"regex": "tenant-.*-spans", "signal": "traces"},
                {"name": "logs_json", "encoding": "otlp_json", "signal": "logs"}
            ],
            "batch_max_wait": "250ms",
            "properties": {"security.protocol": "sasl_ssl"}
        }))
        .expect("valid config");
        cfg.validate().expect("valid");
        assert!(cfg.enabled());
        assert_eq!(cfg.topics[0].subscription().unwrap(), "^tenant-.*-spans");
        assert_eq!(cfg.topics[0].encoding, TopicEncoding::OtlpProto);
        assert!(cfg.topics[0].matches("tenant-a-spans"));
        assert!(!cfg.topics[0].matches("other"));
        assert_eq!(cfg.topics[1].encoding, TopicEncoding::OtlpJson);
        assert_eq!(cfg.batch_max_wait, Duration::from_millis(250));
        assert_eq!(cfg.properties["security.protocol"], "sasl_ssl");
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(
            serde_json::from_str::<KafkaConfig>(r#"{"broker":"x"}"#).is_err(),
            "typos are errors"
        );
        let both = KafkaConfig {
            topics: vec![TopicConfig {
                regex: Some("a.*".into()),
                ..TopicConfig::named("a", TopicEncoding::OtlpProto, Signal::Traces)
            }],
            ..KafkaConfig::default()
        };
        assert!(matches!(both.validate(), Err(KafkaError::Config(_))));
        let mismatched = KafkaConfig {
            topics: vec![TopicConfig::named(
                "a",
                TopicEncoding::VigilJson,
                Signal::Traces,
            )],
            ..KafkaConfig::default()
        };
        assert!(matches!(mismatched.validate(), Err(KafkaError::Config(_))));
        let dlq_consumed = KafkaConfig {
            dlq_topic: "otlp_spans".into(),
            ..KafkaConfig::default()
        };
        assert!(matches!(
            dlq_consumed.validate(),
            Err(KafkaError::Config(_))
        ));
        let bad_regex = KafkaConfig {
            topics: vec![TopicConfig {
                name: None,
                regex: Some("(".into()),
                encoding: TopicEncoding::OtlpProto,
                signal: Signal::Logs,
            }],
            ..KafkaConfig::default()
        };
        assert!(matches!(bad_regex.validate(), Err(KafkaError::Config(_))));
    }
}
