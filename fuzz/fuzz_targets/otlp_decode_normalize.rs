//! OTLP request bodies from the network (HTTP receiver, Kafka consumer) through decoding and normalisation.
//!
//! Input: one selector byte, then the body. The selector picks
//! - bit 0: traces or logs;
//! - bit 1: protobuf or OTLP/JSON;
//! - bits 2-3: how the body is wrapped: 0 as is; 1 gzip-compressed here first and decoded as gzip, which must
//!   give exactly what decoding the plain body gives; 2 the raw bytes decoded as gzip, deflate or zstd (bits 4-5)
//!   to fuzz the decompressors with hostile input; 3 as is, under tiny size caps, so the cap paths run too.
//!
//! Properties: no panic; a decoded request normalises into a batch with exactly the event schema, one row per
//! AI record plus the skipped count adding up to every record, a known `kind`, a non-empty `event_id` and an
//! `attributes` value that is a JSON object; and a protobuf body that `opentelemetry_proto`'s owned types decode
//! decodes to the same fields in Vigil's zero-copy messages.

#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use vigil_ingest::decode::{self, Compression, DecodeError, Encoding, Limits};
use vigil_ingest::schema::{col, event_schema, EventKind};
use vigil_ingest::{normalize, wire, NormalizeContext, Normalized};

/// Small enough that a run spends its time decoding, not allocating; the tiny caps are below most seeds.
const LIMITS: Limits = Limits {
    max_body_bytes: 256 * 1024,
    max_decompressed_bytes: 1024 * 1024,
};
const TINY: Limits = Limits {
    max_body_bytes: 512,
    max_decompressed_bytes: 128,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let logs = selector & 1 == 1;
    let encoding = if selector & 2 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let ctx = NormalizeContext {
        source: Some("fuzz".to_owned()),
        ..NormalizeContext::default()
    };
    match (selector >> 2) & 3 {
        0 => {
            run(body, logs, encoding, Compression::None, &LIMITS, &ctx);
            if encoding == Encoding::Protobuf {
                same_as_owned_decoding(body, logs);
            }
        }
        1 => {
            let plain = run(body, logs, encoding, Compression::None, &LIMITS, &ctx);
            let gzipped = run(
                &gzip(body),
                logs,
                encoding,
                Compression::Gzip,
                &LIMITS,
                &ctx,
            );
            // Compression is transport only: the same message either way (unless the gzip wrapper itself
            // pushes the body over the compressed cap, which it cannot at these sizes).
            assert_eq!(plain, gzipped, "gzip changed the decoded request");
        }
        2 => {
            let compression = match (selector >> 4) & 3 {
                0 | 1 => Compression::Gzip,
                2 => Compression::Deflate,
                _ => Compression::Zstd,
            };
            run(body, logs, encoding, compression, &LIMITS, &ctx);
        }
        _ => {
            let outcome = run(body, logs, encoding, Compression::None, &TINY, &ctx);
            if body.len() > TINY.max_decompressed_bytes {
                assert_eq!(
                    outcome,
                    Outcome::TooLarge,
                    "a body over the cap was not refused"
                );
            }
        }
    }
});

/// What one decode did, comparable across compressions. The request is compared through its debug form
/// because OTLP messages carry doubles (NaN != NaN would make equal requests unequal).
#[derive(Debug, PartialEq)]
enum Outcome {
    Decoded(String),
    TooLarge,
    Malformed,
}

fn run(
    body: &[u8],
    logs: bool,
    encoding: Encoding,
    compression: Compression,
    limits: &Limits,
    ctx: &NormalizeContext,
) -> Outcome {
    let decoded = if logs {
        decode::decode_logs(
            bytes::Bytes::copy_from_slice(body),
            encoding,
            compression,
            limits,
        )
        .map(|req| {
            let records = req
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum();
            let normalized = normalize::logs(&req, ctx);
            check_batch(&normalized.batch, normalized.skipped, records);
            debug_rows(&normalized);
            format!("{req:?}")
        })
    } else {
        decode::decode_traces(
            bytes::Bytes::copy_from_slice(body),
            encoding,
            compression,
            limits,
        )
        .map(|req| {
            let spans = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            let normalized = normalize::traces(&req, ctx);
            check_batch(&normalized.batch, normalized.skipped, spans);
            debug_rows(&normalized);
            format!("{req:?}")
        })
    };
    if debug_enabled() {
        match &decoded {
            Ok(_) => eprintln!("{encoding:?} {compression:?} logs={logs}: decoded"),
            Err(e) => eprintln!("{encoding:?} {compression:?} logs={logs}: {e}"),
        }
    }
    match decoded {
        Ok(debug) => Outcome::Decoded(debug),
        Err(DecodeError::TooLarge { .. }) => Outcome::TooLarge,
        Err(_) => Outcome::Malformed,
    }
}

/// Whatever `opentelemetry_proto`'s owned types decode, the zero-copy messages Vigil decodes into
/// (`vigil_ingest::wire`) decode too, to the same fields. (They may also take more: they skip the fields
/// normalisation does not read without parsing them.)
fn same_as_owned_decoding(body: &[u8], logs: bool) {
    fn check<Owned: Message + Default, Ours: Message + Default + std::fmt::Debug>(body: &[u8]) {
        let Ok(owned) = Owned::decode(body) else {
            return;
        };
        let ours = Ours::decode(bytes::Bytes::copy_from_slice(body))
            .expect("the zero-copy decoder refused a body prost's owned types decode");
        let expected: Ours = wire::convert(&owned).expect("an owned message converts");
        assert_eq!(
            format!("{ours:?}"),
            format!("{expected:?}"),
            "the two decoders disagree"
        );
    }
    if logs {
        check::<ExportLogsServiceRequest, wire::LogsRequest>(body);
    } else {
        check::<ExportTraceServiceRequest, wire::TracesRequest>(body);
    }
}

fn check_batch(batch: &RecordBatch, skipped: usize, records: usize) {
    assert_eq!(
        batch.schema(),
        event_schema(),
        "normalised batch does not have the event schema"
    );
    assert_eq!(
        batch.num_rows() + skipped,
        records,
        "rows + skipped must account for every record"
    );
    let kinds = batch
        .column_by_name(col::KIND)
        .expect("kind column")
        .as_string::<i32>();
    let ids = batch
        .column_by_name(col::EVENT_ID)
        .expect("event_id column")
        .as_string::<i32>();
    let attributes = batch
        .column_by_name(col::ATTRIBUTES)
        .expect("attributes column")
        .as_string::<i32>();
    for row in 0..batch.num_rows() {
        assert!(
            EventKind::parse(kinds.value(row)).is_some(),
            "unknown kind {:?}",
            kinds.value(row)
        );
        assert!(!ids.value(row).is_empty(), "empty event_id in row {row}");
        if attributes.is_valid(row) {
            let json: serde_json::Value = serde_json::from_str(attributes.value(row))
                .expect("attributes column holds invalid JSON");
            assert!(json.is_object(), "attributes is not a JSON object: {json}");
        }
    }
}

/// `VIGIL_FUZZ_DEBUG=1` prints what each input decoded and normalised to: for checking seeds and for reading
/// a minimised crash. Looked up once, not per execution.
fn debug_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("VIGIL_FUZZ_DEBUG").is_some())
}

fn debug_rows(normalized: &Normalized) {
    if debug_enabled() {
        let kinds = normalized
            .batch
            .column_by_name(col::KIND)
            .map(|c| c.as_string::<i32>().iter().flatten().collect::<Vec<_>>());
        eprintln!(
            "  {} rows {kinds:?}, {} skipped",
            normalized.batch.num_rows(),
            normalized.skipped
        );
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(bytes)
        .expect("gzip into a Vec cannot fail");
    encoder.finish().expect("gzip into a Vec cannot fail")
}
