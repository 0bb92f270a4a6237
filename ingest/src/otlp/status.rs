//! `google.rpc.Status` error bodies, the error format both OTLP transports use.
//!
//! OTLP/HTTP answers a failed protobuf request with a protobuf `Status` and a JSON request with its JSON
//! form; gRPC carries the same message in `grpc-status-details-bin`. A `RetryInfo` detail tells OTLP clients
//! how long to back off (for gRPC, RESOURCE_EXHAUSTED is retried only when it is present). The four messages
//! are tiny and stable, so they are declared here rather than pulling in a crate of Google API types.

use std::time::Duration;

use prost::Message;

use crate::decode::Encoding;

const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn rpc_status(code: tonic::Code, message: &str, retry_after: Option<Duration>) -> RpcStatus {
    let details = retry_after
        .map(|delay| ProtoAny {
            type_url: RETRY_INFO_TYPE_URL.to_owned(),
            value: RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
                }),
            }
            .encode_to_vec(),
        })
        .into_iter()
        .collect();
    RpcStatus {
        code: code as i32,
        message: message.to_owned(),
        details,
    }
}

/// What a refused client is told to wait: `delay` and a random whole number of seconds up to `delay` (at
/// least up to one), so that the clients refused in one overloaded second do not all come back in the same
/// second. Whole seconds, as HTTP's `Retry-After` carries them.
pub(crate) fn spread(delay: Duration) -> Duration {
    let extra = delay.as_secs().max(1);
    delay.saturating_add(Duration::from_secs(rand::random_range(0..=extra)))
}

/// A gRPC status whose details carry `RetryInfo` (the `retry_after`, [`spread`]) when the client should
/// come back later.
pub(crate) fn grpc_status(
    code: tonic::Code,
    message: &str,
    retry_after: Option<Duration>,
) -> tonic::Status {
    let retry_after = retry_after.map(spread);
    match retry_after {
        Some(_) => {
            let details = rpc_status(code, message, retry_after).encode_to_vec();
            tonic::Status::with_details(code, message, details.into())
        }
        None => tonic::Status::new(code, message),
    }
}

/// The body of an OTLP/HTTP error response in the request's encoding.
pub(crate) fn http_body(
    encoding: Encoding,
    code: tonic::Code,
    message: &str,
    retry_after: Option<Duration>,
) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => rpc_status(code, message, retry_after).encode_to_vec(),
        Encoding::Json => {
            // The proto3 JSON mapping: Any carries "@type", Duration is a string of seconds with an "s".
            let details: Vec<serde_json::Value> = retry_after
                .map(|delay| {
                    serde_json::json!({
                        "@type": RETRY_INFO_TYPE_URL,
                        "retryDelay": format!("{}s", delay.as_secs_f64()),
                    })
                })
                .into_iter()
                .collect();
            let mut body = serde_json::json!({ "code": code as i32, "message": message });
            if !details.is_empty() {
                body["details"] = serde_json::Value::Array(details);
            }
            body.to_string().into_bytes()
        }
    }
}

#[cfg(test)]
pub(crate) fn decode_http_body(body: &[u8]) -> Option<(i32, String, Option<Duration>)> {
    let status = RpcStatus::decode(body).ok()?;
    let retry = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE_URL)
        .and_then(|d| RetryInfo::decode(&d.value[..]).ok())
        .and_then(|r| r.retry_delay)
        .map(|d| Duration::new(d.seconds as u64, d.nanos as u32));
    Some((status.code, status.message, retry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_body_round_trips_with_retry_info() {
        let body = http_body(
            Encoding::Protobuf,
            tonic::Code::ResourceExhausted,
            "busy",
            Some(Duration::from_secs(3)),
        );
        let (code, message, retry) = decode_http_body(&body).expect("a google.rpc.Status");
        assert_eq!(code, tonic::Code::ResourceExhausted as i32);
        assert_eq!(message, "busy");
        assert_eq!(retry, Some(Duration::from_secs(3)));
    }

    #[test]
    fn json_body_follows_the_proto3_json_mapping() {
        let body = http_body(
            Encoding::Json,
            tonic::Code::Unavailable,
            "down",
            Some(Duration::from_millis(1500)),
        );
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["code"], 14);
        assert_eq!(value["message"], "down");
        assert_eq!(value["details"][0]["@type"], RETRY_INFO_TYPE_URL);
        assert_eq!(value["details"][0]["retryDelay"], "1.5s");
        let plain = http_body(Encoding::Json, tonic::Code::InvalidArgument, "bad", None);
        let value: serde_json::Value = serde_json::from_slice(&plain).expect("json");
        assert!(value.get("details").is_none());
    }

    #[test]
    fn grpc_status_details_hold_the_encoded_status() {
        let status = grpc_status(
            tonic::Code::ResourceExhausted,
            "busy",
            Some(Duration::from_secs(2)),
        );
        let (code, _, retry) = decode_http_body(status.details()).expect("details decode");
        assert_eq!(code, tonic::Code::ResourceExhausted as i32);
        assert!(
            retry.is_some_and(|r| (2..=4).contains(&r.as_secs()) && r.subsec_nanos() == 0),
            "{retry:?}"
        );
        assert!(grpc_status(tonic::Code::Internal, "x", None)
            .details()
            .is_empty());
    }

    /// Spread over whole seconds from the delay to twice it, and over all of them.
    #[test]
    fn retry_delays_are_spread() {
        let seen: std::collections::BTreeSet<u64> = (0..200)
            .map(|_| spread(Duration::from_secs(3)).as_secs())
            .collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [3, 4, 5, 6]);
        let one: std::collections::BTreeSet<u64> = (0..100)
            .map(|_| spread(Duration::from_secs(1)).as_secs())
            .collect();
        assert_eq!(one.into_iter().collect::<Vec<_>>(), [1, 2]);
    }
}
