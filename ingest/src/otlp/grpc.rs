//! The OTLP/gRPC receiver: the collector `TraceService`, `LogsService` and `MetricsService`.
//!
//! The services are served with [`RawCodec`], which hands a message over as bytes: the protobuf is parsed
//! by the [`Exporter`] after the sink has admitted the request, on the blocking thread that also normalises
//! it, as the HTTP receiver does. (The generated servers parse with prost on the async worker that polls the
//! connection, before any handler could refuse the request.)
//!
//! tonic still frames, decompresses (gzip, zstd) and size-checks a message before a handler runs, and
//! answers its own failures with gRPC's generic codes: INTERNAL for a body that does not decompress,
//! OUT_OF_RANGE for an oversize one. OTLP clients treat OUT_OF_RANGE as retryable and would resend a request
//! that can never fit, so [`otlp_status_codes`] rewrites those answers to the OTLP meaning
//! (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without retry info, both final) and counts them like the HTTP
//! receiver counts its refusals.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};

use super::body_budget::{self, BodyBudget, Charge, Framing};
use super::{status, Encoded, ExportError, Exporter, ReceiverConfig, Security};
use crate::decode::{Compression, DecodeError, Encoding, Limits};
use crate::metrics::{self, Rejection, Signal, Transport};
use crate::security::grpc_auth::{self, GrpcAuth};
use crate::security::{Authenticator, Principal, Scope, TlsListener};
use crate::sink::{EventSink, SinkError};

/// The label of this listener in `vigil_auth_failures_total` and `vigil_tls_handshake_failures_total`.
pub const LISTENER: &str = "otlp_grpc";

/// Why the gRPC receiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("OTLP gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("OTLP gRPC listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Serves the three OTLP services on an already-bound listener (so tests can bind port 0) until `shutdown`
/// resolves; in-flight requests finish first. Every call needs a token with the `ingest` scope (checked on
/// the metadata, before the message is decompressed or decoded); with `security.tls` the listener speaks
/// only TLS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sink: Arc<dyn EventSink>,
    cfg: ReceiverConfig,
    security: Security,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let exporter = Exporter::new(sink, cfg.normalize_context());
    serve_with(listener, exporter, cfg, security, shutdown).await
}

pub(crate) async fn serve_with(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    cfg: ReceiverConfig,
    security: Security,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let exporter = exporter.with_decoding_room(&cfg);
    let server = tonic::transport::Server::builder()
        .timeout(cfg.request_timeout)
        // An exporter keeps a few requests in flight per connection; unbounded, one connection could open
        // thousands of streams, each holding a message until its end.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(crate::http_server::HTTP2_KEEP_ALIVE))
        .http2_keepalive_timeout(Some(crate::http_server::HTTP2_KEEP_ALIVE_TIMEOUT))
        .add_routes(routes(exporter, cfg, security.auth));
    match security.tls {
        Some(acceptor) => {
            let incoming = TlsListener::new(listener, acceptor, LISTENER)?.incoming();
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        None => {
            server
                .serve_with_incoming_shutdown(
                    // A response is headers, message and trailers in separate writes: with Nagle's
                    // algorithm the last waits for the client's delayed ACK, 40 ms on Linux.
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await?
        }
    }
    Ok(())
}

/// The three services with the token check, behind the status-code rewrite.
fn routes(exporter: Exporter, cfg: ReceiverConfig, auth: Arc<Authenticator>) -> Routes {
    let check: GrpcAuth = grpc_auth::interceptor(auth, Scope::Ingest, LISTENER);
    let bodies = cfg.body_budget();
    let receiver = Arc::new(GrpcReceiver {
        exporter,
        cfg,
        bodies,
    });
    let traces = InterceptedService::new(
        ExportServer::<TraceService>::new(receiver.clone()),
        check.clone(),
    );
    let logs = InterceptedService::new(
        ExportServer::<LogsService>::new(receiver.clone()),
        check.clone(),
    );
    let metrics = InterceptedService::new(ExportServer::<MetricsService>::new(receiver), check);
    let router = Routes::new(traces)
        .add_service(logs)
        .add_service(metrics)
        .into_axum_router()
        .layer(axum::middleware::from_fn(otlp_status_codes));
    Routes::from(router)
}

/// One of the OTLP collector services: its gRPC name (the routing key) and the signal it carries. Each has
/// a single method, `Export`.
trait OtlpService: Send + Sync + 'static {
    const NAME: &'static str;
    const SIGNAL: Signal;
}

struct TraceService;
struct LogsService;
struct MetricsService;

impl OtlpService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const SIGNAL: Signal = Signal::Traces;
}

impl OtlpService for LogsService {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const SIGNAL: Signal = Signal::Logs;
}

impl OtlpService for MetricsService {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const SIGNAL: Signal = Signal::Metrics;
}

/// Concurrent requests one gRPC connection may have open (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// The server of one [`OtlpService`], in place of the generated `*ServiceServer` (see the module docs).
struct ExportServer<S> {
    receiver: Arc<GrpcReceiver>,
    service: PhantomData<fn() -> S>,
}

impl<S> ExportServer<S> {
    fn new(receiver: Arc<GrpcReceiver>) -> Self {
        ExportServer {
            receiver,
            service: PhantomData,
        }
    }
}

impl<S> Clone for ExportServer<S> {
    fn clone(&self) -> Self {
        ExportServer::new(self.receiver.clone())
    }
}

impl<S: OtlpService> NamedService for ExportServer<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for ExportServer<S>
where
    S: OtlpService,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let receiver = self.receiver.clone();
        Box::pin(async move {
            let method = request
                .uri()
                .path()
                .strip_prefix('/')
                .and_then(|path| path.strip_prefix(S::NAME))
                .and_then(|rest| rest.strip_prefix('/'));
            if method != Some("Export") {
                return Ok(unimplemented());
            }
            let max = receiver.cfg.limits.max_decompressed_bytes;
            // Held until the message is decoded (the decoding task takes a clone): its bytes live that long.
            let charge = receiver.bodies.charge();
            let compressed = request
                .headers()
                .get("grpc-encoding")
                .is_some_and(|e| e != "identity");
            let codec = ChargingCodec {
                inflated: compressed.then(|| charge.clone()),
            };
            let mut grpc = tonic::server::Grpc::new(codec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            let mut request = request.map(|body| charge.count(body, Framing::Grpc, max + 5));
            request.extensions_mut().insert(charge.clone());
            let export = Export::<S> {
                receiver: receiver.clone(),
                service: PhantomData,
            };
            let response = grpc.unary(export, request).await;
            if charge.overflowed() && charge.oversized() {
                // Its bytes were dropped for want of room, but it is over the cap anyway: retrying
                // would not help.
                let message = format!("the message exceeds the limit of {max} bytes");
                metrics::record_rejection(
                    Transport::Grpc,
                    S::SIGNAL,
                    Rejection::TooLarge,
                    &message,
                );
                let status =
                    status::grpc_status(Code::ResourceExhausted, &message, None::<Duration>);
                return Ok(status.into_http());
            }
            if charge.overflowed() {
                // tonic saw the message cut short (its bytes were dropped); the client is told why.
                let message = format!(
                    "the receiver holds {} bytes of request bodies already (max_buffered_body_bytes)",
                    receiver.bodies.bytes()
                );
                metrics::record_rejection(
                    Transport::Grpc,
                    S::SIGNAL,
                    Rejection::Overloaded,
                    &message,
                );
                let status = status::grpc_status(
                    Code::ResourceExhausted,
                    &message,
                    Some(body_budget::RETRY_AFTER),
                );
                return Ok(status.into_http());
            }
            Ok(response)
        })
    }
}

/// The answer to a method the collector services do not have, as the generated servers give it.
fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::default());
    let headers = response.headers_mut();
    headers.insert(Status::GRPC_STATUS, (Code::Unimplemented as i32).into());
    headers.insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

/// The `Export` method of one service, called by tonic with the message's bytes.
struct Export<S> {
    receiver: Arc<GrpcReceiver>,
    service: PhantomData<fn() -> S>,
}

impl<S: OtlpService> UnaryService<Bytes> for Export<S> {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let receiver = self.receiver.clone();
        Box::pin(async move {
            let sender = request.extensions().get::<Principal>().cloned();
            let charge = request.extensions().get::<Charge>().cloned();
            let message = request.into_inner();
            receiver.export(S::SIGNAL, message, sender, charge).await?;
            Ok(tonic::Response::new(EMPTY_RESPONSE))
        })
    }
}

/// Every `Export*ServiceResponse` without `partial_success` (skipped non-AI records are not rejections)
/// encodes to no bytes at all.
const EMPTY_RESPONSE: Bytes = Bytes::new();

/// A codec that passes messages through as bytes: requests are decoded by the exporter, responses are
/// encoded by the handler. Public so a client that holds encoded requests (the bench) sends them as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// The server's codec: [`RawCodec`], and for a compressed message, room in the body budget for the buffer
/// tonic inflated it into, taken the moment tonic hands it over. tonic inflates a message as soon as its bytes
/// are in but calls the service only once the stream ends; charged there, a sender that leaves its stream
/// open held the inflated buffer (up to `max_decompressed_bytes` per stream) uncounted. Refused here, the
/// request is answered RESOURCE_EXHAUSTED by the server, which sees the charge overflowed.
#[derive(Clone)]
struct ChargingCodec {
    inflated: Option<Charge>,
}

impl Codec for ChargingCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = ChargingCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> ChargingCodec {
        self.clone()
    }
}

impl Decoder for ChargingCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        if let Some(charge) = &self.inflated {
            if !charge.take(src.remaining()) {
                return Err(Status::resource_exhausted(
                    "no room for the inflated message",
                ));
            }
        }
        RawCodec.decode(src)
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    /// Without a copy: tonic's buffer hands over the message's bytes.
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

struct GrpcReceiver {
    exporter: Exporter,
    cfg: ReceiverConfig,
    bodies: BodyBudget,
}

impl GrpcReceiver {
    /// One span per request (never per record): Vigil's own traces show where a request's time went.
    #[tracing::instrument(
        level = "debug",
        name = "otlp.export",
        skip_all,
        fields(
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            transport = "grpc",
            signal = signal.as_str(),
            bytes = body.len() as i64,
            events = tracing::field::Empty,
            skipped = tracing::field::Empty,
            rejection = tracing::field::Empty,
        )
    )]
    async fn export(
        &self,
        signal: Signal,
        body: Bytes,
        sender: Option<Principal>,
        hold: Option<Charge>,
    ) -> Result<(), Status> {
        metrics::record_bytes(Transport::Grpc, body.len());
        // tonic has inflated the message and held it to the size limit already.
        let max = self.cfg.limits.max_decompressed_bytes;
        let encoded = Encoded {
            signal,
            body,
            encoding: Encoding::Protobuf,
            compression: Compression::None,
            limits: Limits {
                max_body_bytes: max,
                max_decompressed_bytes: max,
            },
            hold,
        };
        self.exporter
            .export_encoded(Transport::Grpc, encoded, sender.as_ref())
            .await
            .map(|_| ())
            .map_err(|err| self.status(&err))
    }

    fn status(&self, err: &ExportError) -> Status {
        let message = err.to_string();
        match err {
            ExportError::Decode(
                DecodeError::TooLarge { .. }
                | DecodeError::Expands { .. }
                | DecodeError::EventsTooLarge { .. }
                | DecodeError::ExceedsRoom,
            ) => status::grpc_status(Code::ResourceExhausted, &message, None::<Duration>),
            ExportError::Decode(DecodeError::NoRoom) => status::grpc_status(
                Code::ResourceExhausted,
                &message,
                Some(body_budget::RETRY_AFTER),
            ),
            ExportError::Decode(_) => {
                status::grpc_status(Code::InvalidArgument, &message, None::<Duration>)
            }
            ExportError::Sink(SinkError::Overloaded { retry_after }) => {
                status::grpc_status(Code::ResourceExhausted, &message, Some(*retry_after))
            }
            ExportError::Sink(SinkError::Unavailable(_)) => status::grpc_status(
                Code::Unavailable,
                &message,
                Some(self.cfg.unavailable_retry_after()),
            ),
            ExportError::Sink(SinkError::Internal(_)) => {
                status::grpc_status(Code::Internal, &message, None)
            }
        }
    }
}

fn signal_of_path(path: &str) -> Option<Signal> {
    if path.starts_with("/opentelemetry.proto.collector.trace.v1.TraceService/") {
        Some(Signal::Traces)
    } else if path.starts_with("/opentelemetry.proto.collector.logs.v1.LogsService/") {
        Some(Signal::Logs)
    } else if path.starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/") {
        Some(Signal::Metrics)
    } else {
        None
    }
}

/// Rewrites and counts the refusals tonic makes before a handler runs. They arrive as trailers-only
/// responses (the status in the headers); the handlers' own refusals pass through untouched because their
/// messages differ from tonic's.
async fn otlp_status_codes(request: Request, next: Next) -> Response {
    let signal = signal_of_path(request.uri().path());
    let mut response = next.run(request).await;
    let (Some(signal), Some(status)) = (signal, Status::from_header_map(response.headers())) else {
        return response;
    };
    let Some((code, reason)) = classify_codec_refusal(&status) else {
        return response;
    };
    metrics::record_rejection(Transport::Grpc, signal, reason, &status.message());
    if code != status.code() {
        let rewritten = status::grpc_status(code, status.message(), None::<Duration>);
        let headers = response.headers_mut();
        headers.remove("grpc-status-details-bin");
        if let Err(err) = rewritten.add_header(headers) {
            tracing::warn!("cannot rewrite the gRPC status: {err}");
        }
    }
    response
}

/// The OTLP code and metric reason for a refusal made by tonic's decoder, recognised by its message; `None`
/// for anything else.
fn classify_codec_refusal(status: &Status) -> Option<(Code, Rejection)> {
    let message = status.message();
    match status.code() {
        Code::Internal if message.starts_with("Error decompressing") => {
            Some((Code::InvalidArgument, Rejection::Malformed))
        }
        Code::OutOfRange if message.contains("message length too large") => {
            Some((Code::ResourceExhausted, Rejection::TooLarge))
        }
        Code::ResourceExhausted if message.starts_with("Error decompressing: size limit") => {
            Some((Code::ResourceExhausted, Rejection::TooLarge))
        }
        _ => None,
    }
}
