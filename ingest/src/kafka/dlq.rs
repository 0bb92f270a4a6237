//! The dead-letter topic: where a message that cannot be decoded goes, so that one bad producer cannot
//! stop a partition and the bad bytes stay available for whoever fixes the producer.
//!
//! The record keeps the original key and payload; headers say where it came from and why it was refused.
//! The consumer commits past a poison message only after the broker acknowledged its dead-letter copy.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// Header naming the topic the message was read from.
pub const HEADER_TOPIC: &str = "vigil.dlq.topic";
/// Header with the source partition, in decimal.
pub const HEADER_PARTITION: &str = "vigil.dlq.partition";
/// Header with the source offset, in decimal.
pub const HEADER_OFFSET: &str = "vigil.dlq.offset";
/// Header with the decoding error, as the operator would read it in a log.
pub const HEADER_ERROR: &str = "vigil.dlq.error";
/// Present (with the original length in bytes) when the payload was cut to fit the dead-letter topic.
pub const HEADER_TRUNCATED: &str = "vigil.dlq.truncated_from";

/// Payloads are cut to this size: Kafka's default `max.message.bytes` is about 1 MB, and a message that is
/// too large for the dead-letter topic would otherwise block its partition forever.
pub const MAX_DLQ_PAYLOAD: usize = 900 * 1024;

/// One message to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: String,
}

/// Produces dead letters and waits for the broker's acknowledgement.
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterProducer {
    /// `client` carries the brokers and the security properties shared with the consumer.
    pub fn new(client: &ClientConfig, topic: String) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = client.clone();
        // Every in-sync replica must have it before the source offset may be committed past it.
        config.set("acks", "all").set("linger.ms", "5");
        Ok(DeadLetterProducer {
            producer: config.create()?,
            topic,
        })
    }

    /// Resolves once the broker acknowledged the record.
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), rdkafka::error::KafkaError> {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let truncated =
            (letter.payload.len() > MAX_DLQ_PAYLOAD).then(|| letter.payload.len().to_string());
        let mut headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: HEADER_TOPIC,
                value: Some(letter.topic.as_str()),
            })
            .insert(Header {
                key: HEADER_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: HEADER_OFFSET,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: HEADER_ERROR,
                value: Some(letter.error.as_str()),
            });
        if let Some(original) = &truncated {
            headers = headers.insert(Header {
                key: HEADER_TRUNCATED,
                value: Some(original.as_str()),
            });
        }
        let payload = &letter.payload[..letter.payload.len().min(MAX_DLQ_PAYLOAD)];
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_delivery| ())
            .map_err(|(err, _unsent)| err)
    }
}
