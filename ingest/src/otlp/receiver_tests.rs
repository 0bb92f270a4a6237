//! The receivers over real sockets with real clients: tonic's OTLP client and reqwest.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use tokio::sync::oneshot;
use tonic::codec::CompressionEncoding;
use tonic::Code;

use super::test_support::*;
use super::{grpc, http, status, Exporter, ReceiverConfig, Security};
use crate::decode::Limits;
use crate::metrics::{BYTES, EVENTS, REJECTED, REQUESTS, SKIPPED};
use crate::normalize::NormalizeContext;
use crate::schema::col;
use crate::security::{Authenticator, AUTH_FAILURES};

/// A running receiver; dropping it shuts the server down.
struct Running {
    addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

fn exporter(sink: &Arc<VecSink>, fake: bool) -> Exporter {
    let exporter = Exporter::new(
        sink.clone(),
        NormalizeContext {
            source: Some("test-source".into()),
            ..NormalizeContext::default()
        },
    );
    if fake {
        exporter.with_normalizers(fake_normalizers())
    } else {
        exporter
    }
}

async fn start_http(sink: &Arc<VecSink>, cfg: ReceiverConfig, fake: bool) -> Running {
    start_http_with(exporter(sink, fake), cfg).await
}

async fn start_http_with(exporter: Exporter, cfg: ReceiverConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let router = http::router_with(exporter, cfg);
    tokio::spawn(http::serve(listener, router, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        _shutdown: tx,
    }
}

async fn start_grpc(sink: &Arc<VecSink>, cfg: ReceiverConfig, fake: bool) -> Running {
    start_grpc_with(exporter(sink, fake), cfg).await
}

async fn start_grpc_with(exporter: Exporter, cfg: ReceiverConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(grpc::serve_with(
        listener,
        exporter,
        cfg,
        Security::open(),
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        addr,
        _shutdown: tx,
    }
}

fn counter(vec: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
    vec.with_label_values(labels).get()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("write to Vec");
    encoder.finish().expect("finish gzip")
}

async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    request.send().await.expect("HTTP request")
}

async fn post_good_protobuf(addr: SocketAddr) {
    let response = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        traces_request(1).encode_to_vec(),
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "a good request after a bad one must succeed"
    );
}

/// Sends a chunked protobuf POST to /v1/traces over a raw socket (reqwest here has no streaming bodies)
/// and returns the response's status code.
async fn post_chunked(addr: SocketAddr, chunks: &[Vec<u8>]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-protobuf\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything; a failed write is then expected.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let head = String::from_utf8_lossy(&response);
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line")
}

/// A span with one attribute of `bytes` characters, to exceed size limits.
fn big_request(bytes: usize) -> ExportTraceServiceRequest {
    let mut req = traces_request(1);
    req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(KeyValue {
            key: "padding".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("a".repeat(bytes))),
            }),
            ..Default::default()
        });
    req
}

#[tokio::test]
async fn http_accepts_protobuf_json_and_compressed_bodies() {
    let sink = VecSink::new();
    let server = start_http(&sink, ReceiverConfig::default(), true).await;
    let ok_before = counter(&REQUESTS, &["http", "traces", "ok"]);
    let bytes_before = counter(&BYTES, &["http"]);
    let events_before = counter(&EVENTS, &["http", "tool"]);
    let skipped_before = counter(&SKIPPED, &["http", "traces"]);

    let proto = traces_request(2).encode_to_vec();
    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        proto.clone(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let body = response.bytes().await.expect("body");
    assert_eq!(
        ExportTraceServiceResponse::decode(body)
            .expect("response decodes")
            .partial_success,
        None
    );

    let json = serde_json::to_vec(&traces_request(2)).expect("json");
    let response = post(
        server.addr,
        "/v1/traces",
        "application/json; charset=utf-8",
        None,
        json,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.expect("body"), "{}");

    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        gzip(&proto),
    )
    .await;
    assert_eq!(response.status(), 200);
    let zstd = zstd::stream::encode_all(&proto[..], 3).expect("zstd");
    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        Some("zstd"),
        zstd,
    )
    .await;
    assert_eq!(response.status(), 200);

    let logs = serde_json::to_vec(&logs_request(3)).expect("json");
    assert_eq!(
        post(
            server.addr,
            "/v1/logs",
            "application/json",
            Some("gzip"),
            gzip(&logs)
        )
        .await
        .status(),
        200
    );
    let metrics = metrics_request(5).encode_to_vec();
    assert_eq!(
        post(
            server.addr,
            "/v1/metrics",
            "application/x-protobuf",
            None,
            metrics
        )
        .await
        .status(),
        200
    );

    assert_eq!(
        sink.rows(),
        4 * 2 + 3,
        "every AI span and log record reached the sink"
    );
    assert!(counter(&REQUESTS, &["http", "traces", "ok"]) - ok_before >= 4);
    assert!(counter(&BYTES, &["http"]) - bytes_before >= 2 * proto.len() as u64);
    assert!(counter(&EVENTS, &["http", "tool"]) - events_before >= 8);
    assert!(
        counter(&SKIPPED, &["http", "traces"]) - skipped_before >= 4,
        "one health span per request"
    );
    assert!(counter(&SKIPPED, &["http", "metrics"]) >= 5);
}

#[tokio::test]
async fn http_malformed_bodies_are_400_with_a_status_in_the_request_encoding() {
    let sink = VecSink::new();
    let server = start_http(&sink, ReceiverConfig::default(), true).await;
    let before = counter(&REJECTED, &["http", "malformed"]);

    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        vec![0x0a, 0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let (code, message, retry) =
        status::decode_http_body(&response.bytes().await.expect("body")).expect("a Status");
    assert_eq!(code, Code::InvalidArgument as i32);
    assert!(message.contains("malformed OTLP protobuf"), "{message}");
    assert_eq!(retry, None);
    post_good_protobuf(server.addr).await;

    let response = post(
        server.addr,
        "/v1/logs",
        "application/json",
        None,
        b"{\"resourceLogs\": [}".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("JSON status");
    assert_eq!(body["code"], Code::InvalidArgument as i32);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1 column")),
        "{body}"
    );

    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);
    post_good_protobuf(server.addr).await;

    // Well-formed protobuf whose span name is not UTF-8: strings are checked as they are decoded.
    let mut req = traces_request(1);
    req.resource_spans[0].scope_spans[0].spans[0].name = "NOT-UTF8".into();
    let mut body = req.encode_to_vec();
    crate::wire::break_utf8(&mut body, b"NOT-UTF8");
    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        body,
    )
    .await;
    assert_eq!(response.status(), 400);
    let (_, message, _) =
        status::decode_http_body(&response.bytes().await.expect("body")).expect("a Status");
    assert!(message.contains("UTF-8"), "{message}");

    assert!(counter(&REJECTED, &["http", "malformed"]) - before >= 4);
    assert_eq!(sink.rows(), 2, "only the good requests reached the sink");
}

#[tokio::test]
async fn http_oversize_before_and_after_decompression_is_413() {
    let sink = VecSink::new();
    let cfg = ReceiverConfig {
        limits: Limits {
            max_body_bytes: 2048,
            max_decompressed_bytes: 8192,
        },
        ..ReceiverConfig::default()
    };
    let server = start_http(&sink, cfg, true).await;
    let before = counter(&REJECTED, &["http", "too_large"]);

    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        big_request(4096).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 413);
    post_good_protobuf(server.addr).await;

    let inflates = gzip(&big_request(20_000).encode_to_vec());
    assert!(inflates.len() < 2048, "compressed body fits the wire cap");
    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        inflates,
    )
    .await;
    assert_eq!(response.status(), 413);
    let (_, message, _) =
        status::decode_http_body(&response.bytes().await.expect("body")).expect("a Status");
    assert!(message.contains("8192"), "{message}");
    post_good_protobuf(server.addr).await;

    // A body streamed without Content-Length (chunked) is cut off at the cap as well.
    assert_eq!(
        post_chunked(server.addr, &[vec![0u8; 1500], vec![0u8; 1500]]).await,
        413
    );
    post_good_protobuf(server.addr).await;

    assert!(counter(&REJECTED, &["http", "too_large"]) - before >= 3);
}

/// A resource attribute of 256 KiB over 200 AI spans: 270 KB on the wire, 50 MiB once copied into every
/// event. Past four times the decompressed limit the request is refused whole (413), nothing is stored,
/// and the next request goes through.
#[tokio::test]
async fn http_a_request_whose_events_expand_past_the_budget_is_413() {
    let sink = VecSink::new();
    let cfg = ReceiverConfig {
        limits: Limits {
            max_body_bytes: 4 << 20,
            max_decompressed_bytes: 1 << 20,
        },
        ..ReceiverConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stopped) = oneshot::channel::<()>();
    let router = http::router_with(
        Exporter::new(sink.clone(), cfg.normalize_context()),
        cfg.clone(),
    );
    tokio::spawn(http::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    let before = counter(&REJECTED, &["http", "too_large"]);

    let mut req = traces_request(200);
    req.resource_spans[0]
        .resource
        .as_mut()
        .expect("a resource")
        .attributes
        .push(KeyValue {
            key: "k8s.pod.annotation".into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("x".repeat(256 * 1024))),
            }),
            ..Default::default()
        });
    let response = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        req.encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 413);
    let (_, message, _) =
        status::decode_http_body(&response.bytes().await.expect("body")).expect("a Status");
    assert!(message.contains(&(4usize << 20).to_string()), "{message}");
    assert_eq!(sink.rows(), 0, "nothing of it stored");
    assert_eq!(counter(&REJECTED, &["http", "too_large"]) - before, 1);
    post_good_protobuf(addr).await;
    assert!(sink.rows() > 0);
}

#[tokio::test]
async fn http_unsupported_media_types_are_415() {
    let sink = VecSink::new();
    let server = start_http(&sink, ReceiverConfig::default(), true).await;
    let before = counter(&REJECTED, &["http", "unsupported_media_type"]);
    let proto = traces_request(1).encode_to_vec();

    assert_eq!(
        post(server.addr, "/v1/traces", "text/plain", None, proto.clone())
            .await
            .status(),
        415
    );
    post_good_protobuf(server.addr).await;
    assert_eq!(
        post(
            server.addr,
            "/v1/traces",
            "application/x-protobuf",
            Some("br"),
            proto
        )
        .await
        .status(),
        415
    );
    post_good_protobuf(server.addr).await;

    assert!(counter(&REJECTED, &["http", "unsupported_media_type"]) - before >= 2);
}

#[tokio::test]
async fn http_sink_refusals_are_retryable_with_retry_after() {
    let sink = VecSink::new();
    let cfg = ReceiverConfig {
        unavailable_retry_after_secs: 11,
        ..ReceiverConfig::default()
    };
    let server = start_http(&sink, cfg, true).await;
    let before = counter(&REJECTED, &["http", "overloaded"]);
    let proto = traces_request(1).encode_to_vec();

    sink.set_mode(SinkMode::Overloaded);
    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        proto.clone(),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_retry_after(&response, 7);
    let (code, _, retry) =
        status::decode_http_body(&response.bytes().await.expect("body")).expect("a Status");
    assert_eq!(code, Code::ResourceExhausted as i32);
    assert_spread(retry, 7);

    sink.set_mode(SinkMode::Unavailable);
    let json = serde_json::to_vec(&traces_request(1)).expect("json");
    let response = post(server.addr, "/v1/traces", "application/json", None, json).await;
    assert_eq!(response.status(), 503);
    assert_retry_after(&response, 11);

    sink.set_mode(SinkMode::Accept);
    post_good_protobuf(server.addr).await;
    assert_eq!(sink.rows(), 1);
    assert!(counter(&REJECTED, &["http", "overloaded"]) - before >= 1);
    assert!(counter(&REJECTED, &["http", "unavailable"]) >= 1);
}

#[tokio::test]
async fn grpc_accepts_gzip_and_zstd_from_the_otlp_client() {
    let sink = VecSink::new();
    let server = start_grpc(&sink, ReceiverConfig::default(), true).await;
    let ok_before = counter(&REQUESTS, &["grpc", "traces", "ok"]);
    let endpoint = format!("http://{}", server.addr);

    let mut traces = TraceServiceClient::connect(endpoint.clone())
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip);
    let response = traces
        .export(traces_request(3))
        .await
        .expect("gzip export")
        .into_inner();
    assert_eq!(
        response.partial_success, None,
        "skipped non-AI spans are not rejections"
    );
    let mut traces = traces.send_compressed(CompressionEncoding::Zstd);
    traces.export(traces_request(2)).await.expect("zstd export");

    let mut logs = LogsServiceClient::connect(endpoint.clone())
        .await
        .expect("connect");
    logs.export(logs_request(4)).await.expect("logs export");
    let mut metrics = MetricsServiceClient::connect(endpoint)
        .await
        .expect("connect");
    metrics
        .export(metrics_request(6))
        .await
        .expect("metrics export");

    assert_eq!(sink.rows(), 3 + 2 + 4);
    assert!(counter(&REQUESTS, &["grpc", "traces", "ok"]) - ok_before >= 2);
    assert!(counter(&EVENTS, &["grpc", "policy"]) >= 4);
    assert!(counter(&SKIPPED, &["grpc", "metrics"]) >= 6);
    assert!(counter(&BYTES, &["grpc"]) > 0);
}

/// A message that is not an `ExportTraceServiceRequest`: field 1 holds a truncated varint.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "1")]
    junk: Vec<u8>,
}

#[tokio::test]
async fn grpc_malformed_protobuf_is_invalid_argument() {
    let sink = VecSink::new();
    let server = start_grpc(&sink, ReceiverConfig::default(), true).await;
    let before = counter(&REJECTED, &["grpc", "malformed"]);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.expect("ready");
    let path = axum::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let codec = tonic_prost::ProstCodec::<Garbage, ExportTraceServiceResponse>::default();
    let status = client
        .unary(
            tonic::Request::new(Garbage {
                junk: vec![0x0a, 0xff, 0xff, 0xff],
            }),
            path,
            codec,
        )
        .await
        .expect_err("garbage must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(counter(&REJECTED, &["grpc", "malformed"]) > before);

    let mut traces = TraceServiceClient::new(channel);
    traces
        .export(traces_request(1))
        .await
        .expect("a good request after a bad one");
    assert_eq!(sink.rows(), 1);
}

/// Under overload a request is refused before its body is parsed: garbage then gets the retryable overload
/// answer, not the malformed one, on both transports.
#[tokio::test]
async fn refusal_at_admission_comes_before_decoding() {
    let sink = VecSink::new();
    let grpc_server = start_grpc(&sink, ReceiverConfig::default(), true).await;
    let http_server = start_http(&sink, ReceiverConfig::default(), true).await;
    let overloaded = |t: &str| counter(&REJECTED, &[t, "overloaded"]);
    let malformed = |t: &str| counter(&REJECTED, &[t, "malformed"]);
    let (grpc_before, http_before) = (overloaded("grpc"), overloaded("http"));
    sink.set_mode(SinkMode::Full);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", grpc_server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<Garbage, ExportTraceServiceResponse>::default();
    let garbage = Garbage {
        junk: vec![0x0a, 0xff, 0xff, 0xff],
    };
    let status = client
        .unary(
            tonic::Request::new(garbage.clone()),
            path_of_traces(),
            codec,
        )
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (_, _, retry) = status::decode_http_body(status.details()).expect("RetryInfo");
    assert_spread(retry, 3);

    let response = post(
        http_server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        garbage.encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_retry_after(&response, 3);
    assert!(overloaded("grpc") > grpc_before);
    assert!(overloaded("http") > http_before);

    // Once there is room, the same garbage is what it is.
    sink.set_mode(SinkMode::Accept);
    let grpc_malformed = malformed("grpc");
    client.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<Garbage, ExportTraceServiceResponse>::default();
    let status = client
        .unary(tonic::Request::new(garbage), path_of_traces(), codec)
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(malformed("grpc") > grpc_malformed);
    assert_eq!(sink.rows(), 0);
}

/// A method the collector services do not have is UNIMPLEMENTED, as with the generated servers.
#[tokio::test]
async fn grpc_unknown_methods_are_unimplemented() {
    let sink = VecSink::new();
    let server = start_grpc(&sink, ReceiverConfig::default(), true).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let path = axum::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Import",
    );
    let codec =
        tonic_prost::ProstCodec::<ExportTraceServiceRequest, ExportTraceServiceResponse>::default();
    let status = client
        .unary(tonic::Request::new(traces_request(1)), path, codec)
        .await
        .expect_err("no such method");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(sink.rows(), 0);
}

fn path_of_traces() -> axum::http::uri::PathAndQuery {
    axum::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    )
}

#[tokio::test]
async fn grpc_oversize_messages_are_final_resource_exhausted() {
    let sink = VecSink::new();
    let cfg = ReceiverConfig {
        limits: Limits {
            max_body_bytes: 2048,
            max_decompressed_bytes: 4096,
        },
        ..ReceiverConfig::default()
    };
    let server = start_grpc(&sink, cfg, true).await;
    let before = counter(&REJECTED, &["grpc", "too_large"]);
    let mut client = TraceServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");

    // Over the limit on the wire: tonic says OUT_OF_RANGE, which OTLP clients would retry forever.
    let status = client
        .export(big_request(10_000))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.details().is_empty(),
        "no RetryInfo: the request can never fit"
    );
    client
        .export(traces_request(1))
        .await
        .expect("a good request after a bad one");

    // Small on the wire, too large once inflated.
    let mut gzip_client = client.clone().send_compressed(CompressionEncoding::Gzip);
    let status = gzip_client
        .export(big_request(10_000))
        .await
        .expect_err("too large inflated");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    gzip_client
        .export(traces_request(1))
        .await
        .expect("a good request after a bad one");

    assert!(counter(&REJECTED, &["grpc", "too_large"]) - before >= 2);
    assert_eq!(sink.rows(), 2);
}

#[tokio::test]
async fn grpc_sink_refusals_map_to_retryable_codes_with_retry_info() {
    let sink = VecSink::new();
    let server = start_grpc(&sink, ReceiverConfig::default(), true).await;
    let before = counter(&REJECTED, &["grpc", "overloaded"]);
    let mut client = TraceServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");

    sink.set_mode(SinkMode::Overloaded);
    let status = client
        .export(traces_request(1))
        .await
        .expect_err("overloaded");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let (_, _, retry) =
        status::decode_http_body(status.details()).expect("RetryInfo in the details");
    assert_spread(retry, 7);

    sink.set_mode(SinkMode::Unavailable);
    let status = client
        .export(traces_request(1))
        .await
        .expect_err("unavailable");
    assert_eq!(status.code(), Code::Unavailable);

    sink.set_mode(SinkMode::Accept);
    client.export(traces_request(1)).await.expect("recovers");
    assert_eq!(sink.rows(), 1);
    assert!(counter(&REJECTED, &["grpc", "overloaded"]) - before >= 1);
    assert!(counter(&REJECTED, &["grpc", "unavailable"]) >= 1);
}

/// Receivers that buffer at most 100,000 + 64 Ki bytes of bodies (the least there is room for): one
/// request of 90 KB waits for admission, holding its body, so a second cannot be read in.
fn small_body_budget() -> ReceiverConfig {
    ReceiverConfig {
        limits: Limits {
            max_body_bytes: 100_000,
            max_decompressed_bytes: 100_000,
        },
        max_buffered_body_bytes: 0,
        ..ReceiverConfig::default()
    }
}

#[tokio::test]
async fn http_bodies_past_the_buffer_budget_are_read_then_refused_with_retry_after() {
    let sink = VecSink::new();
    let server = start_http(&sink, small_body_budget(), true).await;
    let before = counter(&REJECTED, &["http", "overloaded"]);
    let body = big_request(90_000).encode_to_vec();
    sink.hold();
    let first = tokio::spawn(post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        body.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the first request waits for admission"
    );

    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        post(
            server.addr,
            "/v1/traces",
            "application/x-protobuf",
            None,
            body.clone(),
        ),
    )
    .await
    .expect("the second request is answered while the first waits");
    assert_eq!(refused.status(), 429);
    assert_retry_after(&refused, 1);
    let (code, message, _) =
        status::decode_http_body(&refused.bytes().await.expect("body")).expect("a Status body");
    assert_eq!(code, Code::ResourceExhausted as i32);
    assert!(message.contains("max_buffered_body_bytes"), "{message}");
    assert!(counter(&REJECTED, &["http", "overloaded"]) - before >= 1);
    // Dropped bytes are still counted against the size cap: past it, retrying cannot help.
    let chunks = vec![vec![b'x'; 20_000]; 10];
    let status = tokio::time::timeout(Duration::from_secs(5), post_chunked(server.addr, &chunks))
        .await
        .expect("an oversized body is not drained forever");
    assert_eq!(status, 413);

    sink.release();
    assert_eq!(first.await.expect("first request").status(), 200);
    // The room is back once the first request is answered.
    let again = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        body,
    )
    .await;
    assert_eq!(again.status(), 200);
    assert_eq!(sink.rows(), 2);
}

/// A gRPC client, and its first request of 90 KB (most of [`small_body_budget`]) held waiting for admission
/// until `sink.release()`.
async fn hold_most_of_the_budget(
    sink: &Arc<VecSink>,
    server: &Running,
) -> (
    TraceServiceClient<tonic::transport::Channel>,
    tokio::task::JoinHandle<Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>>,
) {
    let client = TraceServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    sink.hold();
    let mut first_client = client.clone();
    let first = tokio::spawn(async move { first_client.export(big_request(90_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the first request waits for admission"
    );
    (client, first)
}

#[tokio::test]
async fn grpc_messages_past_the_buffer_budget_are_resource_exhausted_with_retry_info() {
    let sink = VecSink::new();
    let server = start_grpc(&sink, small_body_budget(), true).await;
    let before = counter(&REJECTED, &["grpc", "overloaded"]);
    let (client, first) = hold_most_of_the_budget(&sink, &server).await;

    let status = tokio::time::timeout(
        Duration::from_secs(5),
        client.clone().export(big_request(90_000)),
    )
    .await
    .expect("the second request is answered while the first waits")
    .expect_err("no room for a second body");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (_, _, retry) =
        status::decode_http_body(status.details()).expect("RetryInfo in the details");
    assert_spread(retry, 1);
    assert!(counter(&REJECTED, &["grpc", "overloaded"]) - before >= 1);
    // Over the message cap as well: too large, whatever the budget holds, so not to be retried.
    let status = client
        .clone()
        .export(big_request(150_000))
        .await
        .expect_err("over the cap");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.details().is_empty(), "not to be retried: {status:?}");
    // Small on the wire, but tonic inflates it into a buffer of its own: that needs room too.
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .clone()
            .send_compressed(CompressionEncoding::Gzip)
            .export(big_request(90_000)),
    )
    .await
    .expect("the compressed request is answered while the first waits")
    .expect_err("no room for the inflated message");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    sink.release();
    first.await.expect("first task").expect("first request");
    client
        .clone()
        .export(big_request(90_000))
        .await
        .expect("room again once the first is answered");
    assert_eq!(sink.rows(), 2);
}

/// `spans` empty spans: two bytes each on the wire, a decoded `Span` each in memory (the densest
/// protobuf there is, within the per-message decode budget up to about 4,000 in one request).
fn empty_spans(spans: usize) -> ExportTraceServiceRequest {
    let mut req = traces_request(1);
    req.resource_spans[0].scope_spans[0].spans = vec![Default::default(); spans];
    req
}

/// Empty spans that decode into about 100 KB.
fn spans_of_100_kb() -> ExportTraceServiceRequest {
    empty_spans(100_000 / std::mem::size_of::<crate::wire::Span>())
}

/// Held by a test while requests named [`HOLD`] are normalised: they wait there, holding the room their
/// decode took.
static NORMALISING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
const HOLD: &str = "hold-in-normalisation";

/// The fake normalisers, except that a request whose first span is named [`HOLD`] waits for
/// [`NORMALISING`] first.
fn holding_normalizers() -> super::Normalizers {
    fn traces(
        req: &crate::wire::TracesRequest,
        ctx: &NormalizeContext,
    ) -> crate::normalize::Normalized {
        let first = req
            .resource_spans
            .first()
            .and_then(|r| r.scope_spans.first());
        if first
            .and_then(|s| s.spans.first())
            .is_some_and(|s| &*s.name == HOLD)
        {
            drop(NORMALISING.blocking_read());
        }
        (fake_normalizers().traces)(req, ctx)
    }
    super::Normalizers {
        traces,
        ..fake_normalizers()
    }
}

/// Receivers whose decoding room is the least there is: twice the 100,000-byte message limit and a chunk,
/// 265,536 bytes.
fn small_decoding_room() -> ReceiverConfig {
    ReceiverConfig {
        max_decoding_bytes: 0,
        ..small_body_budget()
    }
}

/// About 200 KB of decoded spans that wait in normalisation while the test holds [`NORMALISING`].
fn held_spans() -> ExportTraceServiceRequest {
    let mut req = empty_spans(200_000 / std::mem::size_of::<crate::wire::Span>());
    req.resource_spans[0].scope_spans[0].spans[0].name = HOLD.into();
    req
}

/// The decodes of admitted requests share one room: without it, 64 admitted requests of 16 MiB, each
/// within its own decode budget of 32 times its size, could hold 32 GiB between them. A decode that finds
/// the room held by others is refused as overloaded (to be retried); one that would need more than the
/// whole room is refused as too large (not to be).
#[tokio::test]
async fn http_decodes_share_the_decoding_room() {
    let sink = VecSink::new();
    let exporter = exporter(&sink, true).with_normalizers(holding_normalizers());
    let server = start_http_with(exporter, small_decoding_room()).await;
    let before = counter(&REJECTED, &["http", "overloaded"]);
    let post_body = |body: Vec<u8>, encoding: Option<&'static str>| {
        post(
            server.addr,
            "/v1/traces",
            "application/x-protobuf",
            encoding,
            body,
        )
    };
    let normalising = NORMALISING.write().await;
    let first = tokio::spawn(post_body(held_spans().encode_to_vec(), None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the first request waits in normalisation"
    );

    let spans = spans_of_100_kb();
    let refused = post_body(spans.encode_to_vec(), None).await;
    assert_eq!(refused.status(), 429);
    assert_retry_after(&refused, 1);
    let (code, message, _) =
        status::decode_http_body(&refused.bytes().await.expect("body")).expect("a Status body");
    assert_eq!(code, Code::ResourceExhausted as i32);
    assert!(message.contains("max_decoding_bytes"), "{message}");
    assert!(counter(&REJECTED, &["http", "overloaded"]) > before);
    // Small on the wire, but inflating it takes room too.
    let inflating = post_body(gzip(&big_request(90_000).encode_to_vec()), Some("gzip")).await;
    assert_eq!(inflating.status(), 429);

    drop(normalising);
    assert_eq!(first.await.expect("first request").status(), 200);
    let again = post_body(spans.encode_to_vec(), None).await;
    assert_eq!(again.status(), 200, "room once the first is gone");
    let too_many = post_body(empty_spans(3_000).encode_to_vec(), None).await;
    assert_eq!(too_many.status(), 413, "more than the whole room");
    assert!(too_many
        .text()
        .await
        .expect("body")
        .contains("send fewer per request"));
}

#[tokio::test]
async fn grpc_decodes_share_the_decoding_room() {
    let sink = VecSink::new();
    let exporter = exporter(&sink, true).with_normalizers(holding_normalizers());
    let server = start_grpc_with(exporter, small_decoding_room()).await;
    let client = TraceServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    let normalising = NORMALISING.write().await;
    let mut first_client = client.clone();
    let first = tokio::spawn(async move { first_client.export(held_spans()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the first request waits in normalisation"
    );

    let status = client
        .clone()
        .export(spans_of_100_kb())
        .await
        .expect_err("no room to decode beside the first request");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_decoding_bytes"),
        "{status:?}"
    );
    let (_, _, retry) =
        status::decode_http_body(status.details()).expect("RetryInfo in the details");
    assert_spread(retry, 1);

    drop(normalising);
    first.await.expect("first task").expect("first request");
    client
        .clone()
        .export(spans_of_100_kb())
        .await
        .expect("room once the first is gone");
    let status = client
        .clone()
        .export(empty_spans(3_000))
        .await
        .expect_err("more than the whole room");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("send fewer"), "{status:?}");
    assert!(status.details().is_empty(), "not to be retried: {status:?}");
}

/// A compressed message is charged its inflated size as soon as tonic inflates it, not when the request's
/// stream ends: a sender that inflates a small message and leaves the stream open held the inflated buffer
/// without it counting, and a thousand such streams on one connection held gigabytes.
#[tokio::test]
async fn grpc_an_inflated_message_is_charged_before_its_stream_ends() {
    let sink = VecSink::new();
    let server = start_grpc(&sink, small_body_budget(), true).await;
    let (_client, first) = hold_most_of_the_budget(&sink, &server).await;

    // A raw HTTP/2 stream: one gzip message (a few hundred bytes on the wire), and no end of stream.
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = ::http::Request::post(format!(
        "http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("grpc-encoding", "gzip")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let (response, mut stream) = h2.send_request(request, false).expect("send headers");
    let compressed = gzip(&big_request(90_000).encode_to_vec());
    let mut frame = vec![1u8];
    frame.extend((compressed.len() as u32).to_be_bytes());
    frame.extend(&compressed);
    stream
        .send_data(frame.into(), false)
        .expect("send the message");
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("refused while the stream is still open")
        .expect("a response");
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("8"),
        "RESOURCE_EXHAUSTED: {:?}",
        response.headers()
    );

    sink.release();
    first.await.expect("first task").expect("first request");
}

/// A sender that stops halfway through its body is answered 408 once `request_timeout` has passed, and the
/// share of the body budget it held is free again.
#[tokio::test]
async fn http_a_body_that_stalls_is_408_and_gives_its_budget_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = VecSink::new();
    let cfg = ReceiverConfig {
        request_timeout: Duration::from_millis(300),
        ..small_body_budget()
    };
    let server = start_http(&sink, cfg, true).await;
    let mut stalled = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\n\
         content-length: 100000\r\n\r\n",
        server.addr
    );
    stalled.write_all(head.as_bytes()).await.expect("head");
    stalled
        .write_all(&[0u8; 50_000])
        .await
        .expect("half a body");
    let mut response = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut response))
        .await
        .expect("answered before the client gives up")
        .expect("read");
    let status_line = String::from_utf8_lossy(&response[..n]).to_string();
    assert!(status_line.starts_with("HTTP/1.1 408"), "{status_line}");
    let timeouts = crate::metrics::REJECTED
        .with_label_values(&["http", "timeout"])
        .get();
    assert!(timeouts >= 1, "counted as a timeout, not as malformed");
    // 90 KB fits only if the stalled 100 KB no longer counts (the budget is one 100 KB body plus 64 KiB).
    let response = post(
        server.addr,
        "/v1/traces",
        "application/x-protobuf",
        None,
        big_request(90_000).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
    drop(stalled);
}

/// A gRPC call that does not finish within `request_timeout` is ended by the server, whatever it waits on.
#[tokio::test]
async fn grpc_a_call_past_the_request_timeout_is_ended() {
    let sink = VecSink::new();
    let cfg = ReceiverConfig {
        request_timeout: Duration::from_millis(300),
        ..ReceiverConfig::default()
    };
    let server = start_grpc(&sink, cfg, true).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    sink.hold();
    let status = tokio::time::timeout(Duration::from_secs(5), client.export(traces_request(1)))
        .await
        .expect("the server ends the call")
        .expect_err("not answered in time");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    sink.release();
}

/// With the real normalisation: GenAI spans become `inference` rows stamped with the configured source, the
/// plain HTTP span is skipped, over both transports.
#[tokio::test]
async fn end_to_end_rows_arrive_from_both_transports() {
    let sink = VecSink::new();
    let http_server = start_http(&sink, ReceiverConfig::default(), false).await;
    let grpc_server = start_grpc(&sink, ReceiverConfig::default(), false).await;
    let skipped_before = counter(&SKIPPED, &["http", "traces"]);

    let json = serde_json::to_vec(&traces_request(2)).expect("json");
    assert_eq!(
        post(
            http_server.addr,
            "/v1/traces",
            "application/json",
            None,
            json
        )
        .await
        .status(),
        200
    );
    let mut client = TraceServiceClient::connect(format!("http://{}", grpc_server.addr))
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip);
    client.export(traces_request(3)).await.expect("gRPC export");

    assert_eq!(sink.rows(), 5);
    for batch in sink.batches() {
        let kinds = batch
            .column_by_name(col::KIND)
            .expect("kind")
            .as_string::<i32>();
        let sources = batch
            .column_by_name(col::SOURCE)
            .expect("source")
            .as_string::<i32>();
        let models = batch
            .column_by_name(col::MODEL)
            .expect("model")
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            assert_eq!(kinds.value(row), "inference");
            assert_eq!(sources.value(row), "test-source");
            assert_eq!(models.value(row), "gpt-4o");
        }
    }
    assert!(
        counter(&SKIPPED, &["http", "traces"]) > skipped_before,
        "the health-check span was skipped"
    );
}

/// A token store with an `ingest` token for "collector-eu" and a `query` token, as (authenticator, ingest,
/// query); the dir must outlive the store.
fn authenticator(dir: &tempfile::TempDir) -> (Arc<Authenticator>, String, String) {
    crate::security::test_authenticator(dir, "collector-eu")
}

fn sources(sink: &VecSink) -> Vec<String> {
    sink.batches()
        .iter()
        .flat_map(|b| {
            let col = b
                .column_by_name(col::SOURCE)
                .expect("source")
                .as_string::<i32>()
                .clone();
            (0..b.num_rows()).map(move |i| col.value(i).to_string())
        })
        .collect()
}

/// Refusals happen before the body is read and are counted; an accepted request records the token's name
/// as the events' `source` (not the configured fallback).
#[tokio::test]
async fn http_requires_an_ingest_token_and_records_its_name_as_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, ingest, query) = authenticator(&dir);
    let sink = VecSink::new();
    let cfg = ReceiverConfig {
        source_name: Some("fallback".into()),
        ..ReceiverConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_tx, rx) = oneshot::channel::<()>();
    tokio::spawn(http::serve(
        listener,
        http::router(sink.clone(), cfg, auth),
        async move {
            let _ = rx.await;
        },
    ));
    let failures = |reason: &str| counter(&AUTH_FAILURES, &[http::LISTENER, reason]);
    let before = (
        failures("missing"),
        failures("invalid"),
        failures("forbidden"),
    );
    let post = |token: Option<String>, content_type: &'static str, body: Vec<u8>| {
        let mut request = reqwest::Client::new()
            .post(format!("http://{addr}/v1/traces"))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("HTTP request") }
    };
    let proto = traces_request(2).encode_to_vec();
    let send = |token: Option<String>| {
        let response = post(token, "application/x-protobuf", proto.clone());
        async move { response.await.status().as_u16() }
    };
    assert_eq!(send(None).await, 401);
    assert_eq!(send(Some("vgl_wrong".into())).await, 401);
    assert_eq!(send(Some(query.clone())).await, 403);

    // Refusals are a google.rpc.Status in the request's encoding, as every OTLP/HTTP failure is.
    let refusal = |token: Option<String>, content_type: &'static str, body: Vec<u8>| {
        let response = post(token, content_type, body);
        async move {
            let response = response.await;
            let content_type = response.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .to_string();
            let challenge = response.headers().contains_key("www-authenticate");
            (
                content_type,
                challenge,
                response.bytes().await.expect("body"),
            )
        }
    };
    let (content_type, challenge, body) =
        refusal(None, "application/x-protobuf", proto.clone()).await;
    assert_eq!(
        (content_type.as_str(), challenge),
        ("application/x-protobuf", true)
    );
    let (code, _, _) = status::decode_http_body(&body).expect("a Status");
    assert_eq!(code, tonic::Code::Unauthenticated as i32);
    let (_, _, body) = refusal(Some(query.clone()), "application/x-protobuf", proto.clone()).await;
    let (code, message, _) = status::decode_http_body(&body).expect("a Status");
    assert_eq!(code, tonic::Code::PermissionDenied as i32);
    assert!(message.contains("ingest"), "{message}");
    let (content_type, _, body) = refusal(Some(query), "application/json", b"{}".to_vec()).await;
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON Status");
    assert_eq!(json["code"], tonic::Code::PermissionDenied as i32);
    assert_eq!(sink.rows(), 0, "refused requests store nothing");
    assert_eq!(send(Some(ingest)).await, 200);
    assert_eq!(sources(&sink), ["collector-eu", "collector-eu"]);
    assert_eq!(
        (
            failures("missing"),
            failures("invalid"),
            failures("forbidden")
        ),
        (before.0 + 2, before.1 + 1, before.2 + 3)
    );
}

#[tokio::test]
async fn grpc_requires_an_ingest_token_and_records_its_name_as_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, ingest, query) = authenticator(&dir);
    let sink = VecSink::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_tx, rx) = oneshot::channel::<()>();
    let security = Security { auth, tls: None };
    tokio::spawn(grpc::serve(
        listener,
        sink.clone(),
        ReceiverConfig::default(),
        security,
        async move {
            let _ = rx.await;
        },
    ));
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let failures = |reason: &str| counter(&AUTH_FAILURES, &[grpc::LISTENER, reason]);
    let before = (
        failures("missing"),
        failures("invalid"),
        failures("forbidden"),
    );
    let with = |token: Option<&str>| {
        let mut request = tonic::Request::new(traces_request(3));
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        request
    };
    assert_eq!(
        client
            .export(with(None))
            .await
            .expect_err("no token")
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        client
            .export(with(Some("vgl_wrong")))
            .await
            .expect_err("wrong")
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        client
            .export(with(Some(&query)))
            .await
            .expect_err("out of scope")
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(sink.rows(), 0);
    client
        .export(with(Some(&ingest)))
        .await
        .expect("valid token");
    assert_eq!(sources(&sink), ["collector-eu"; 3]);
    assert_eq!(
        (
            failures("missing"),
            failures("invalid"),
            failures("forbidden")
        ),
        (before.0 + 1, before.1 + 1, before.2 + 1)
    );
}

/// With authentication off (the demo) events carry the configured fallback, or `anonymous` without one.
#[tokio::test]
async fn unauthenticated_senders_get_the_fallback_or_anonymous_source() {
    for (fallback, expected) in [
        (Some("edge"), "edge"),
        (None, crate::security::ANONYMOUS_SOURCE),
    ] {
        let sink = VecSink::new();
        let cfg = ReceiverConfig {
            source_name: fallback.map(str::to_owned),
            ..ReceiverConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_tx, rx) = oneshot::channel::<()>();
        let router = http::router(sink.clone(), cfg, Security::open().auth);
        tokio::spawn(http::serve(listener, router, async move {
            let _ = rx.await;
        }));
        let json = serde_json::to_vec(&traces_request(1)).expect("json");
        assert_eq!(
            post(addr, "/v1/traces", "application/json", None, json)
                .await
                .status(),
            200
        );
        assert_eq!(sources(&sink), [expected]);
    }
}

/// The listeners turn Nagle's algorithm off on every accepted connection (`tls_listener::no_delay`, and
/// tonic's `with_nodelay` for gRPC); with it on, small response writes can wait for a delayed ACK.
#[tokio::test]
async fn accepted_connections_have_nagle_off() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut accepted, _) = listener.accept().await.unwrap();
    assert!(!accepted.nodelay().unwrap(), "sockets start with Nagle on");
    crate::security::tls_listener::no_delay(&mut accepted);
    assert!(accepted.nodelay().unwrap());
    drop(client);
}

/// A `Retry-After` header of whole seconds between `base` and twice it (see `status::spread`).
fn assert_retry_after(response: &reqwest::Response, base: u64) {
    let secs: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!(
        (base..=2 * base.max(1)).contains(&secs),
        "Retry-After {secs}, base {base}"
    );
}

/// A RetryInfo delay of whole seconds between `base` and twice it.
fn assert_spread(retry: Option<Duration>, base: u64) {
    let retry = retry.expect("a retry delay");
    assert!(
        retry.subsec_nanos() == 0 && (base..=2 * base.max(1)).contains(&retry.as_secs()),
        "retry delay {retry:?}, base {base}"
    );
}
