//! The dead-letter topic: where a message that cannot be decoded goes, so that one bad producer cannot
//! stop a partition and the bad bytes stay available for whoever fixes the producer.
//!
//! The record keeps the original key and payload (cut, with a header saying so, when they would not fit the
//! topic); headers say where it came from and why it was refused.
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
/// Present (with the original length in bytes) when the key was cut to fit the dead-letter topic.
pub const HEADER_KEY_TRUNCATED: &str = "vigil.dlq.key_truncated_from";

/// Key and payload together are cut to this size: Kafka's default `max.message.bytes` is about 1 MB, and a
/// message that is too large for the dead-letter topic would otherwise block its partition forever.
pub const MAX_DLQ_PAYLOAD: usize = 900 * 1024;
/// Keys are cut to this size first; the payload gets the rest of [`MAX_DLQ_PAYLOAD`].
pub const MAX_DLQ_KEY: usize = 64 * 1024;
/// Errors are cut to this size: a decoding error may quote the producer's bytes (a 700 KB `time` that is
/// not RFC 3339), and it goes into a header and the log.
pub const MAX_DLQ_ERROR: usize = 4 * 1024;

/// One message to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// At most [`MAX_DLQ_ERROR`] bytes (see [`bounded_error`]).
    pub error: String,
}

/// `error`, cut at a character boundary to [`MAX_DLQ_ERROR`] bytes with a note of its full length.
pub fn bounded_error(error: &str) -> String {
    if error.len() <= MAX_DLQ_ERROR {
        return error.to_owned();
    }
    let note = format!("... (cut from {} bytes)", error.len());
    let mut end = MAX_DLQ_ERROR - note.len();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &error[..end])
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
        let key = letter
            .key
            .as_deref()
            .map(|k| &k[..k.len().min(MAX_DLQ_KEY)]);
        let key_truncated = letter
            .key
            .as_ref()
            .filter(|k| k.len() > MAX_DLQ_KEY)
            .map(|k| k.len().to_string());
        let payload_room = MAX_DLQ_PAYLOAD - key.map_or(0, <[u8]>::len);
        let truncated =
            (letter.payload.len() > payload_room).then(|| letter.payload.len().to_string());
        let error = bounded_error(&letter.error);
        let mut headers = OwnedHeaders::new_with_capacity(6)
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
                value: Some(error.as_str()),
            });
        for (name, original) in [
            (HEADER_TRUNCATED, &truncated),
            (HEADER_KEY_TRUNCATED, &key_truncated),
        ] {
            if let Some(original) = original {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(original.as_str()),
                });
            }
        }
        let payload = &letter.payload[..letter.payload.len().min(payload_room)];
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_delivery| ())
            .map_err(|(err, _unsent)| err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary_and_says_so() {
        let short = "otlp_proto: invalid wire type";
        assert_eq!(bounded_error(short), short);
        let long = format!("time: {:?} is not RFC 3339", "é".repeat(400_000));
        let cut = bounded_error(&long);
        assert!(cut.len() <= MAX_DLQ_ERROR, "{}", cut.len());
        assert!(cut.starts_with("time: \"éé"));
        assert!(
            cut.ends_with(&format!("(cut from {} bytes)", long.len())),
            "{cut}"
        );
    }
}
