//! Decoding OTLP request bodies: protobuf or JSON, optionally gzip/deflate/zstd-compressed, with size caps
//! before and after decompression. Shared by the HTTP receiver and the Kafka consumer.
//!
//! The caps exist because a receiver on a network port must never let one request decide how much memory
//! it uses: the compressed cap is checked before any work, and decompression reads at most one byte past the
//! decompressed cap, so a zip bomb costs the cap and not its inflated size.

use std::io::Read;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Deserialize;

use crate::wire;

/// How the body's bytes encode the OTLP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary protobuf (`application/x-protobuf`, and Kafka's `otlp_proto`).
    Protobuf,
    /// OTLP/JSON (`application/json`, Kafka's `otlp_json`): hex ids, int64 as strings, enums as integers.
    Json,
}

impl Encoding {
    /// The media type the OTLP/HTTP spec uses for this encoding; responses use the request's.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// Recognises an HTTP `Content-Type` value (parameters such as `charset` are ignored).
    pub fn from_content_type(value: &str) -> Option<Self> {
        let media_type = value.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Encoding::Protobuf)
        } else if media_type.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

/// The content coding wrapped around the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// What collectors and SDKs send by default.
    Gzip,
    /// HTTP `deflate`, which is the zlib format (RFC 9110), not raw deflate.
    Deflate,
    Zstd,
}

impl Compression {
    /// Recognises an HTTP `Content-Encoding` value; a missing header or `identity` means none.
    pub fn from_content_encoding(value: Option<&str>) -> Option<Self> {
        let Some(value) = value.map(str::trim) else {
            return Some(Compression::None);
        };
        if value.is_empty() || value.eq_ignore_ascii_case("identity") {
            Some(Compression::None)
        } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Some(Compression::Gzip)
        } else if value.eq_ignore_ascii_case("deflate") {
            Some(Compression::Deflate)
        } else if value.eq_ignore_ascii_case("zstd") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Size caps for one request body. Configurable because the right numbers depend on the senders (a
/// collector batching many services sends far larger requests than one SDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest body accepted as received on the wire (before decompression).
    pub max_body_bytes: usize,
    /// Largest message accepted after decompression; also the gRPC receiver's message-size limit.
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_decompressed_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why a body could not be turned into an OTLP request. Every variant but [`DecodeError::NoRoom`] is the
/// sender's fault and is not worth retrying unchanged.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The receiver's decoding room ran out while this one was decoded ([`wire::budget::with_room`]): too
    /// many at once, not too large. Retry later.
    #[error(
        "the receiver holds as many decoded requests as it may (otlp.max_decoding_bytes); retry later"
    )]
    NoRoom,
    /// This request alone would take more than the receiver's room to decode.
    #[error(
        "the request needs more memory to decode than the receiver has room for (otlp.max_decoding_bytes); send fewer per request"
    )]
    ExceedsRoom,
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot decompress the {compression:?} body: {source}")]
    Decompress {
        compression: Compression,
        source: std::io::Error,
    },
    #[error(
        "the request decodes to more than {limit} bytes of messages (mostly empty or tiny ones); send fewer per request"
    )]
    Expands { limit: usize },
    #[error(
        "the request's events hold more than {limit} bytes of text (a resource's attributes are copied into each of its events); send fewer per request"
    )]
    EventsTooLarge { limit: usize },
    #[error("malformed OTLP protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("malformed OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes an `ExportTraceServiceRequest` (or a Kafka `TracesData`, which has the same wire form). The
/// request's strings are slices of `body` (or of its inflated copy), so the body lives as long as they do.
pub fn decode_traces(
    body: Bytes,
    encoding: Encoding,
    compression: Compression,
    limits: &Limits,
) -> Result<wire::TracesRequest, DecodeError> {
    let message = inflate(body, compression, limits)?;
    match encoding {
        Encoding::Protobuf => within_budget(message, wire::TracesRequest::decode),
        Encoding::Json => from_json::<ExportTraceServiceRequest, _>(&message),
    }
}

/// Decodes an `ExportLogsServiceRequest` (or a Kafka `LogsData`), as [`decode_traces`] does.
pub fn decode_logs(
    body: Bytes,
    encoding: Encoding,
    compression: Compression,
    limits: &Limits,
) -> Result<wire::LogsRequest, DecodeError> {
    let message = inflate(body, compression, limits)?;
    match encoding {
        Encoding::Protobuf => within_budget(message, wire::LogsRequest::decode),
        Encoding::Json => from_json::<ExportLogsServiceRequest, _>(&message),
    }
}

/// The data points of an `ExportMetricsServiceRequest` (or a Kafka `MetricsData`). Metrics are counted, not
/// stored: protobuf is read into [`wire::metrics`], which keeps nothing but the points' count.
pub fn decode_metrics(
    body: Bytes,
    encoding: Encoding,
    compression: Compression,
    limits: &Limits,
) -> Result<usize, DecodeError> {
    let message = inflate(body, compression, limits)?;
    match encoding {
        Encoding::Protobuf => {
            // Its messages do not charge as they are created (they are derived, and hold nothing but
            // vectors), so the most they can take is reserved up front.
            wire::budget::reserve(message.len().saturating_mul(wire::budget::PER_ENCODED_BYTE))?;
            Ok(wire::metrics::MetricsRequest::decode(message)?.points())
        }
        Encoding::Json => {
            json_within_budget(&message)?;
            let request: ExportMetricsServiceRequest = parse_json(&message)?;
            Ok(metric_points(&request))
        }
    }
}

/// Data points in a decoded metrics request, over every metric kind.
pub fn metric_points(req: &ExportMetricsServiceRequest) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|metric| match &metric.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        })
        .sum()
}

/// Decodes protobuf within the memory budget for its size ([`wire::budget`]).
fn within_budget<W>(
    message: Bytes,
    decode: impl FnOnce(Bytes) -> Result<W, prost::DecodeError>,
) -> Result<W, DecodeError> {
    within_budget_of(message.len(), message, decode)
}

/// [`within_budget`] for a message re-encoded from a body of `len` bytes, held to that body's budget.
fn within_budget_of<W>(
    len: usize,
    message: Bytes,
    decode: impl FnOnce(Bytes) -> Result<W, prost::DecodeError>,
) -> Result<W, DecodeError> {
    match wire::budget::within(len, || decode(message)) {
        Ok(decoded) => decoded.map_err(DecodeError::from),
        Err(wire::budget::Exhausted::Message) => Err(DecodeError::Expands {
            limit: wire::budget::limit(len),
        }),
        Err(wire::budget::Exhausted::Room(no_room)) => Err(no_room.into()),
    }
}

impl From<wire::budget::NoRoom> for DecodeError {
    fn from(no_room: wire::budget::NoRoom) -> Self {
        match no_room {
            wire::budget::NoRoom::Busy => DecodeError::NoRoom,
            wire::budget::NoRoom::Exceeded => DecodeError::ExceedsRoom,
        }
    }
}

/// OTLP/JSON goes through `opentelemetry_proto`'s serde types (hex ids, int64 as strings) and is re-read as
/// the zero-copy types: one more pass, on the encoding that is slow to parse anyway.
fn from_json<Json, W>(message: &[u8]) -> Result<W, DecodeError>
where
    Json: Message + serde::de::DeserializeOwned,
    W: Message + Default,
{
    json_within_budget(message)?;
    let owned: Json = parse_json(message)?;
    let encoded = Bytes::from(owned.encode_to_vec());
    drop(owned);
    // The zero-copy messages charge the receiver's room as they are decoded, within the JSON's budget.
    within_budget_of(message.len(), encoded, W::decode)
}

/// Parses OTLP/JSON into `opentelemetry_proto`'s types; a body they refuse is tried once more with enum
/// names and empty lists in the protobuf JSON mapping's other forms ([`json_mapping`]).
fn parse_json<Json: serde::de::DeserializeOwned>(message: &[u8]) -> Result<Json, DecodeError> {
    let refused = match serde_json::from_slice(message) {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    // Only for the two refusals the rewrite can mend: a `Value` tree takes several times the memory the
    // decode budget allows the typed parse, not to be spent on a body that is simply malformed.
    let text = refused.to_string();
    if !(text.contains("expected i32") || text.contains("missing field `values`")) {
        return Err(refused.into());
    }
    // A `Value` object costs some 600 bytes, more than twice what the budget counts per container.
    let tree = json_containers(message).saturating_mul(4 * JSON_CONTAINER_BYTES);
    if tree > wire::budget::limit(message.len()) {
        return Err(refused.into());
    }
    wire::budget::reserve(tree)?;
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(message) else {
        return Err(refused.into());
    };
    if !crate::json_mapping::normalise(&mut value) {
        return Err(refused.into());
    }
    serde_json::from_value(value).map_err(|_| refused.into())
}

/// What one JSON object or array is counted as: about what the largest parsed message takes (a span some
/// 250 bytes). The smallest real ones (`{"intValue":5},` is 15 bytes, an attribute `{"key":"a","value":
/// {"boolValue":true}}` two in 38) stay within the protobuf budget of 32 bytes per byte, and an empty
/// `{},` (3 bytes) does not.
const JSON_CONTAINER_BYTES: usize = 256;

/// Refuses OTLP/JSON that would parse into more memory than the protobuf budget ([`wire::budget`]) allows
/// its size: `{},` is three bytes and a span, so a gzipped body of kilobytes could parse into gigabytes.
/// serde has no allocation hook, so the bound is counted before parsing, from the objects and arrays
/// outside strings (braces inside a prompt cost nothing). The bound is on the body's total, so dense spots
/// among ordinary telemetry pass.
///
/// The same count takes the parse's share of the receiver's room ([`wire::budget::reserve`]), with twice
/// the text on top: the parsed strings and the protobuf they are re-encoded to (whose decoded messages
/// charge the room as they are made).
fn json_within_budget(message: &[u8]) -> Result<(), DecodeError> {
    let limit = wire::budget::limit(message.len());
    let parsed = json_containers(message).saturating_mul(JSON_CONTAINER_BYTES);
    if parsed > limit {
        return Err(DecodeError::Expands { limit });
    }
    wire::budget::reserve(parsed.saturating_add(message.len().saturating_mul(2)))?;
    Ok(())
}

/// Objects and arrays in a JSON text, not counting brackets inside strings.
fn json_containers(text: &[u8]) -> usize {
    let (mut containers, mut in_string, mut escaped) = (0, false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'{' || b == b'[' {
            containers += 1;
        }
    }
    containers
}

/// The message's bytes after the size caps and decompression: `body` itself when it is not compressed.
fn inflate(body: Bytes, compression: Compression, limits: &Limits) -> Result<Bytes, DecodeError> {
    if body.len() > limits.max_body_bytes {
        return Err(DecodeError::TooLarge {
            limit: limits.max_body_bytes,
        });
    }
    let inflated = match compression {
        Compression::None => {
            if body.len() > limits.max_decompressed_bytes {
                return Err(DecodeError::TooLarge {
                    limit: limits.max_decompressed_bytes,
                });
            }
            return Ok(body);
        }
        Compression::Gzip => {
            // Every member: a gzip body may be several members one after another (RFC 1952 §2.2), as
            // Go's reader and the Collector accept; the plain decoder stopped after the first.
            read_capped(
                flate2::read::MultiGzDecoder::new(&body[..]),
                compression,
                limits,
            )?
        }
        Compression::Deflate => read_capped(
            flate2::read::ZlibDecoder::new(&body[..]),
            compression,
            limits,
        )?,
        Compression::Zstd => {
            let decompress = |source| DecodeError::Decompress {
                compression,
                source,
            };
            let mut decoder = zstd::stream::read::Decoder::new(&body[..]).map_err(decompress)?;
            // A frame may ask for a window of up to 128 MiB, allocated before any byte comes out and
            // outside the room: inflating a message needs none larger than the largest message allowed.
            decoder
                .window_log_max(window_log(limits.max_decompressed_bytes))
                .map_err(decompress)?;
            read_capped(decoder, compression, limits)?
        }
    };
    Ok(Bytes::from(inflated))
}

/// The zstd window (a power of two) that covers `bytes`, within zstd's bounds.
fn window_log(bytes: usize) -> u32 {
    (usize::BITS - bytes.saturating_sub(1).leading_zeros()).clamp(10, 30)
}

/// Inflates at most `max_decompressed_bytes + 1` bytes: one byte past the cap proves the body is too large
/// without inflating the rest of it.
fn read_capped(
    reader: impl Read,
    compression: Compression,
    limits: &Limits,
) -> Result<Vec<u8>, DecodeError> {
    let limit = limits.max_decompressed_bytes;
    let mut out = Vec::new();
    Reserving(reader.take(limit as u64 + 1))
        .read_to_end(&mut out)
        .map_err(|source| {
            match source
                .get_ref()
                .and_then(|e| e.downcast_ref::<Unreserved>())
            {
                Some(Unreserved(no_room)) => DecodeError::from(*no_room),
                None => DecodeError::Decompress {
                    compression,
                    source,
                },
            }
        })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

/// A reader whose bytes take their room as they are inflated ([`wire::budget::reserve`]): many bodies
/// inflating at once must not hold more than the receiver's room between them.
struct Reserving<R>(R);

/// The error [`Reserving`] reads with when the room ran out.
#[derive(Debug, thiserror::Error)]
#[error("no room for the inflated body")]
struct Unreserved(wire::budget::NoRoom);

impl<R: Read> Read for Reserving<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        // Twice: the buffer grows by doubling, and the inflated body keeps its spare capacity.
        wire::budget::reserve(n.saturating_mul(2))
            .map_err(|e| std::io::Error::other(Unreserved(e)))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    #[test]
    fn a_gzip_body_of_two_members_decodes_whole() {
        let (a, b) = (
            sample_traces().encode_to_vec(),
            sample_traces().encode_to_vec(),
        );
        let mut body = gzip(&a);
        body.extend(gzip(&b));
        let inflated = inflate(Bytes::from(body), Compression::Gzip, &Limits::default()).unwrap();
        assert_eq!(inflated.len(), a.len() + b.len());
        // Protobuf concatenation merges: both requests' resource spans arrive.
        let req = decode_traces(
            inflated,
            Encoding::Protobuf,
            Compression::None,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(req.resource_spans.len(), 2);
    }

    #[test]
    fn metric_points_are_counted_over_every_kind_without_keeping_them() {
        use opentelemetry_proto::tonic::metrics::v1::{
            metric::Data, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
            HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
            Summary, SummaryDataPoint,
        };
        let attr = KeyValue {
            key: "gen_ai.request.model".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("gpt-4o".into())),
            }),
            ..Default::default()
        };
        let number = || NumberDataPoint {
            attributes: vec![attr.clone()],
            ..Default::default()
        };
        let metric = |data: Data| Metric {
            name: "m".into(),
            data: Some(data),
            ..Default::default()
        };
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(Data::Gauge(Gauge {
                            data_points: vec![number(), number()],
                        })),
                        metric(Data::Sum(Sum {
                            data_points: vec![number()],
                            ..Default::default()
                        })),
                        metric(Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                bucket_counts: vec![1, 2, 3],
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                        metric(Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![ExponentialHistogramDataPoint::default(); 3],
                            ..Default::default()
                        })),
                        metric(Data::Summary(Summary {
                            data_points: vec![SummaryDataPoint::default()],
                        })),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(metric_points(&req), 8);
        let limits = Limits::default();
        let body = Bytes::from(req.encode_to_vec());
        assert_eq!(
            decode_metrics(body, Encoding::Protobuf, Compression::None, &limits).unwrap(),
            8
        );
        let json = Bytes::from(serde_json::to_vec(&req).unwrap());
        assert_eq!(
            decode_metrics(json, Encoding::Json, Compression::None, &limits).unwrap(),
            8
        );
        // Empty `resource_metrics` entries, the cheapest messages to send: counted, nothing kept per entry
        // but a vector.
        let empties = Bytes::from([0x0a, 0x00].repeat(512 * 1024));
        assert_eq!(
            decode_metrics(empties, Encoding::Protobuf, Compression::None, &limits).unwrap(),
            0
        );
        assert!(decode_metrics(
            Bytes::from_static(&[0x0a, 0x05, 0x12]),
            Encoding::Protobuf,
            Compression::None,
            &limits
        )
        .is_err());
    }

    fn sample_traces() -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: (1..=16).collect(),
            span_id: (1..=8).collect(),
            name: "chat gpt-4o".into(),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_001_000_000_000,
            attributes: vec![KeyValue {
                key: "gen_ai.usage.input_tokens".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(42)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource::default()),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("write to Vec");
        encoder.finish().expect("finish gzip")
    }

    /// A length-delimited protobuf field, written by hand.
    fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// Empty spans are two bytes on the wire and a couple of hundred in memory; a span's first attribute
    /// reserves room for two dozen. A gzipped body of a few kilobytes, inside every size cap, is refused
    /// before it expands into hundreds of megabytes; spans of a real shape still decode.
    #[test]
    fn a_body_of_empty_messages_is_refused_before_it_expands() {
        let limits = Limits::default();
        for (what, span) in [
            ("empty spans", &[0x12u8, 0x00][..]),
            (
                "spans of one empty attribute",
                &[0x12, 0x02, 0x4a, 0x00][..],
            ),
        ] {
            let spans = span.repeat(1_000_000);
            let request = field(1, &field(2, &spans));
            let body = gzip(&request);
            assert!(body.len() < 64 * 1024 && request.len() <= limits.max_decompressed_bytes);
            let err = decode_traces(
                Bytes::from(body),
                Encoding::Protobuf,
                Compression::Gzip,
                &limits,
            )
            .unwrap_err();
            assert!(matches!(err, DecodeError::Expands { .. }), "{what}: {err}");
        }
        let mut many = sample_traces();
        let span = many.resource_spans[0].scope_spans[0].spans[0].clone();
        many.resource_spans[0].scope_spans[0].spans = vec![span; 20_000];
        let decoded = decode_traces(
            Bytes::from(many.encode_to_vec()),
            Encoding::Protobuf,
            Compression::None,
            &limits,
        )
        .expect("small real spans fit the budget");
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 20_000);
    }

    #[test]
    fn json_of_empty_objects_is_refused_before_it_is_parsed() {
        let limits = Limits::default();
        let spans = "{},".repeat(1_000_000);
        let json = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}{{}}]}}]}}]}}"#,
            spans
        );
        let body = gzip(json.as_bytes());
        assert!(body.len() < 64 * 1024 && json.len() <= limits.max_decompressed_bytes);
        let err = decode_traces(
            Bytes::from(body),
            Encoding::Json,
            Compression::Gzip,
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Expands { .. }), "{err}");
        let metrics = format!(r#"{{"resourceMetrics":[{}{{}}]}}"#, spans);
        let err = decode_metrics(
            Bytes::from(metrics),
            Encoding::Json,
            Compression::None,
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Expands { .. }), "{err}");

        // Real spans of a few attributes fit, even with a prompt of nothing but brackets.
        let mut many = sample_traces();
        let mut span = many.resource_spans[0].scope_spans[0].spans[0].clone();
        span.attributes.push(KeyValue {
            key: "gen_ai.prompt".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("{[\\\"".repeat(200))),
            }),
            ..Default::default()
        });
        many.resource_spans[0].scope_spans[0].spans = vec![span; 2_000];
        let json = serde_json::to_vec(&many).expect("serialise");
        let decoded = decode_traces(
            Bytes::from(json),
            Encoding::Json,
            Compression::None,
            &limits,
        )
        .expect("real spans fit the budget");
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 2_000);
    }

    #[test]
    fn otlp_json_hex_ids_string_int64_and_integer_enums() {
        // The three OTLP/JSON traps: hex (not base64) ids, int64 as JSON strings, enums as integers.
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"scope":{"name":"s"},
            "spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
            "name":"chat gpt-4o","kind":3,"startTimeUnixNano":"1700000000000000000",
            "endTimeUnixNano":"1700000001000000000","status":{"code":2},
            "attributes":[{"key":"gen_ai.usage.input_tokens","value":{"intValue":"42"}}]}]}]}]}"#;
        let req = decode_traces(
            Bytes::from_static(json),
            Encoding::Json,
            Compression::None,
            &Limits::default(),
        )
        .expect("valid OTLP/JSON");
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id[..], (1..=16).collect::<Vec<u8>>());
        assert_eq!(span.span_id[..], (1..=8).collect::<Vec<u8>>());
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(
            span.attributes[0]
                .value
                .as_ref()
                .and_then(|v| v.value.clone()),
            Some(wire::any_value::Value::IntValue(42))
        );
    }

    /// Enum names and `{}` for an empty list are valid protobuf JSON; the batch is read, not refused.
    #[test]
    fn otlp_json_with_enum_names_and_empty_lists() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10",
            "spanId":"0102030405060708","name":"execute_tool search","kind":"SPAN_KIND_INTERNAL",
            "startTimeUnixNano":"1700000000000000000","status":{"code":"STATUS_CODE_ERROR"},
            "attributes":[{"key":"gen_ai.tool.call.arguments","value":{"kvlistValue":{}}},
                          {"key":"tags","value":{"arrayValue":{}}}]}]}]}]}"#;
        let req = decode_traces(
            Bytes::from_static(json),
            Encoding::Json,
            Compression::None,
            &Limits::default(),
        )
        .expect("protobuf JSON mapping forms are accepted");
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(&span.name[..], "execute_tool search");
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(span.attributes.len(), 2);
        // Still refused, with the typed parse's message: an unknown enum name.
        let bad = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SPAN_KIND_BOGUS"}]}]}]}"#;
        let err = decode_traces(
            Bytes::from_static(bad),
            Encoding::Json,
            Compression::None,
            &Limits::default(),
        )
        .expect_err("an unknown enum name");
        assert!(err.to_string().contains("malformed OTLP/JSON"), "{err}");
    }

    #[test]
    fn protobuf_and_json_of_the_same_request_decode_equal() {
        let req = sample_traces();
        let expected: wire::TracesRequest = wire::convert(&req).expect("converts");
        let json = Bytes::from(serde_json::to_vec(&req).expect("serialise"));
        let proto = Bytes::from(req.encode_to_vec());
        let limits = Limits::default();
        assert_eq!(
            decode_traces(proto, Encoding::Protobuf, Compression::None, &limits).expect("proto"),
            expected
        );
        assert_eq!(
            decode_traces(json, Encoding::Json, Compression::None, &limits).expect("json"),
            expected
        );
    }

    #[test]
    fn gzip_deflate_and_zstd_bodies_decode() {
        let req: wire::TracesRequest = wire::convert(&sample_traces()).expect("converts");
        let proto = sample_traces().encode_to_vec();
        let limits = Limits::default();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&proto).expect("write");
        let zlib = zlib.finish().expect("finish zlib");
        let zstd = zstd::stream::encode_all(&proto[..], 3).expect("zstd");
        for (body, compression) in [
            (gzip(&proto), Compression::Gzip),
            (zlib, Compression::Deflate),
            (zstd, Compression::Zstd),
        ] {
            let decoded = decode_traces(body.into(), Encoding::Protobuf, compression, &limits)
                .expect("compressed body");
            assert_eq!(decoded, req, "{compression:?}");
        }
    }

    #[test]
    fn body_over_the_compressed_cap_is_too_large() {
        let limits = Limits {
            max_body_bytes: 10,
            max_decompressed_bytes: 100,
        };
        let err = decode_logs(
            Bytes::from_static(&[0u8; 11]),
            Encoding::Protobuf,
            Compression::None,
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { limit: 10 }), "{err}");
    }

    #[test]
    fn zip_bomb_stops_at_the_decompressed_cap() {
        // 64 MiB of zeros compress to about 64 KiB; only cap + 1 bytes may be inflated.
        let bomb = {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..64 {
                encoder.write_all(&chunk).expect("write");
            }
            encoder.finish().expect("finish")
        };
        let limits = Limits {
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: 1 << 20,
        };
        assert!(bomb.len() < limits.max_body_bytes);
        let err = decode_metrics(bomb.into(), Encoding::Protobuf, Compression::Gzip, &limits)
            .unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge { limit } if limit == 1 << 20),
            "{err}"
        );
    }

    #[test]
    fn malformed_bodies_say_what_was_wrong() {
        let limits = Limits::default();
        let err = decode_traces(
            Bytes::from_static(&[0x0a, 0xff, 0xff]),
            Encoding::Protobuf,
            Compression::None,
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Protobuf(_)), "{err}");

        let err = decode_traces(
            Bytes::from_static(b"{\n \"resourceSpans\": [}"),
            Encoding::Json,
            Compression::None,
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Json(_)), "{err}");
        assert!(
            err.to_string().contains("line 2"),
            "position missing: {err}"
        );

        let err = decode_traces(
            Bytes::from_static(b"not gzip"),
            Encoding::Protobuf,
            Compression::Gzip,
            &limits,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Decompress {
                    compression: Compression::Gzip,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn content_headers_are_recognised() {
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type("Application/X-Protobuf"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
        assert_eq!(
            Compression::from_content_encoding(None),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::from_content_encoding(Some("gzip")),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_content_encoding(Some("br")), None);
    }

    /// Runs `decode` with a room of `bytes`: what it returned, and what it took of the room.
    fn with_room_of<T>(bytes: usize, decode: impl FnOnce() -> T) -> (T, usize) {
        let (taken, take) = wire::budget::test_room(bytes);
        let out = wire::budget::with_room(take, decode);
        (out, taken.get())
    }

    /// Every way a body becomes memory draws on the receiver's room: protobuf traces and logs as their
    /// messages are made, metrics up front, JSON by its objects and text (and the messages it is re-read
    /// as), and inflating by its output.
    #[test]
    fn every_decode_path_takes_its_memory_from_the_room() {
        let limits = Limits::default();
        let traces = sample_traces();
        let mut many = traces.clone();
        many.resource_spans = vec![traces.resource_spans[0].clone(); 2_000];
        let proto = many.encode_to_vec();
        let json = serde_json::to_vec(&many).expect("json");
        let metrics = [0x0a, 0x00].repeat(50_000);
        type Decode<'a> = Box<dyn Fn() -> Result<(), DecodeError> + 'a>;
        let paths: [(&str, Decode); 4] = [
            (
                "protobuf",
                Box::new(|| {
                    decode_traces(
                        proto.clone().into(),
                        Encoding::Protobuf,
                        Compression::None,
                        &limits,
                    )
                    .map(drop)
                }),
            ),
            (
                "json",
                Box::new(|| {
                    decode_traces(
                        json.clone().into(),
                        Encoding::Json,
                        Compression::None,
                        &limits,
                    )
                    .map(drop)
                }),
            ),
            (
                "metrics",
                Box::new(|| {
                    decode_metrics(
                        metrics.clone().into(),
                        Encoding::Protobuf,
                        Compression::None,
                        &limits,
                    )
                    .map(drop)
                }),
            ),
            (
                "gzip",
                Box::new(|| {
                    let body = gzip(&vec![0u8; 1 << 20]);
                    inflate(body.into(), Compression::Gzip, &limits).map(drop)
                }),
            ),
        ];
        for (name, decode) in paths {
            let (fits, taken) = with_room_of(usize::MAX, &decode);
            fits.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(taken > 64 * 1024, "{name} took {taken} bytes of the room");
            let (refused, _) = with_room_of(taken / 2, &decode);
            assert!(
                matches!(refused, Err(DecodeError::NoRoom)),
                "{name} in half the room: {refused:?}"
            );
        }
    }
}
