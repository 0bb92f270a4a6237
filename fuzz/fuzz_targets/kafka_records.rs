//! What the Kafka consumer and the OTLP receivers parse that the other targets do not: `vigil_json` records
//! (a Kafka topic of JSON events written by anyone who can produce to it) and OTLP metrics, which Vigil
//! counts rather than stores.
//!
//! Input: one selector byte, then the payload. Bit 0: a `vigil_json` message, or an OTLP metrics body; bit 1:
//! for metrics, protobuf or OTLP/JSON.
//!
//! Properties: no panic on any input; every parsed record has a non-empty `event_id`, carries the consumer's
//! source (never its own claim) and builds into a batch with exactly the event schema, one row per record;
//! parsing is deterministic (the same message gives the same ids, which deduplication relies on).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_ingest::decode::{self, Compression, Encoding, Limits};
use vigil_ingest::kafka::records;
use vigil_ingest::{event_schema, EventBatchBuilder};

const LIMITS: Limits = Limits {
    max_body_bytes: 256 * 1024,
    max_decompressed_bytes: 1024 * 1024,
};

const ORIGIN: records::Origin<'static> = records::Origin {
    topic: "vigil_events",
    partition: 0,
    offset: 42,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        let Ok(rows) = records::parse(payload, ORIGIN, 1_700_000_000_000_000, Some("fuzz")) else {
            return;
        };
        let mut builder = EventBatchBuilder::with_capacity(rows.len());
        for row in &rows {
            assert!(!row.event_id.is_empty(), "a record without an event_id");
            assert_eq!(
                row.source.as_deref(),
                Some("fuzz"),
                "a record named its own source"
            );
            builder.push(row);
        }
        let batch = builder.finish();
        assert_eq!(
            batch.schema(),
            event_schema(),
            "records do not build the event schema"
        );
        assert_eq!(batch.num_rows(), rows.len());
        let again = records::parse(payload, ORIGIN, 1_700_000_000_000_000, Some("fuzz"))
            .expect("parsed once");
        let ids = |rows: &[vigil_ingest::EventRow]| {
            rows.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&rows),
            ids(&again),
            "the same message read again gave other ids"
        );
    } else {
        let encoding = if selector & 2 == 0 {
            Encoding::Protobuf
        } else {
            Encoding::Json
        };
        let body = bytes::Bytes::copy_from_slice(payload);
        let _ = decode::decode_metrics(body, encoding, Compression::None, &LIMITS);
    }
});
