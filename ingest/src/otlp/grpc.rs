//! The OTLP/gRPC receiver: the collector `TraceService`, `LogsService` and `MetricsService`.
//!
//! tonic decodes and decompresses (gzip, zstd) before a handler runs and answers its own failures with gRPC's
//! generic codes: INTERNAL for an unparsable message, OUT_OF_RANGE for an oversize one. OTLP clients treat
//! OUT_OF_RANGE as retryable and would resend a request that can never fit, so [`otlp_status_codes`] rewrites
//! those answers to the OTLP meaning (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without retry info, both final)
//! and counts them like the HTTP receiver counts its refusals.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};

use super::{status, ExportRequest, Exporter, ReceiverConfig, Security};
use crate::metrics::{self, Rejection, Signal, Transport};
use crate::normalize::NormalizeContext;
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
    let exporter = Exporter::new(
        sink,
        NormalizeContext {
            source: cfg.source_name.clone(),
        },
    );
    serve_with(listener, exporter, cfg, security, shutdown).await
}

pub(crate) async fn serve_with(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    cfg: ReceiverConfig,
    security: Security,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let server =
        tonic::transport::Server::builder().add_routes(routes(exporter, cfg, security.auth));
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

/// The three services with their compression and size settings and the token check, behind the
/// status-code rewrite.
fn routes(exporter: Exporter, cfg: ReceiverConfig, auth: Arc<Authenticator>) -> Routes {
    let max = cfg.limits.max_decompressed_bytes;
    let check: GrpcAuth = grpc_auth::interceptor(auth, Scope::Ingest, LISTENER);
    let receiver = Arc::new(GrpcReceiver { exporter, cfg });
    let traces = TraceServiceServer::from_arc(receiver.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max);
    let logs = LogsServiceServer::from_arc(receiver.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max);
    let metrics = MetricsServiceServer::from_arc(receiver)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max);
    let traces = InterceptedService::new(traces, check.clone());
    let logs = InterceptedService::new(logs, check.clone());
    let metrics = InterceptedService::new(metrics, check);
    let router = Routes::new(traces)
        .add_service(logs)
        .add_service(metrics)
        .into_axum_router()
        .layer(axum::middleware::from_fn(otlp_status_codes));
    Routes::from(router)
}

struct GrpcReceiver {
    exporter: Exporter,
    cfg: ReceiverConfig,
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
            signal = request.signal().as_str(),
            bytes = encoded_len as i64,
            events = tracing::field::Empty,
            skipped = tracing::field::Empty,
            rejection = tracing::field::Empty,
        )
    )]
    async fn export(
        &self,
        request: ExportRequest,
        encoded_len: usize,
        sender: Option<Principal>,
    ) -> Result<(), Status> {
        metrics::record_bytes(Transport::Grpc, encoded_len);
        self.exporter
            .export_from(Transport::Grpc, request, sender.as_ref())
            .await
            .map(|_| ())
            .map_err(|err| self.status(&err))
    }

    fn status(&self, err: &SinkError) -> Status {
        let message = err.to_string();
        match err {
            SinkError::Overloaded { retry_after } => {
                status::grpc_status(Code::ResourceExhausted, &message, Some(*retry_after))
            }
            SinkError::Unavailable(_) => status::grpc_status(
                Code::Unavailable,
                &message,
                Some(self.cfg.unavailable_retry_after()),
            ),
            SinkError::Internal(_) => status::grpc_status(Code::Internal, &message, None),
        }
    }
}

#[async_trait::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        let sender = request.extensions().get::<Principal>().cloned();
        let request = request.into_inner();
        let len = request.encoded_len();
        GrpcReceiver::export(self, ExportRequest::Traces(request), len, sender).await?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[async_trait::async_trait]
impl LogsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        let sender = request.extensions().get::<Principal>().cloned();
        let request = request.into_inner();
        let len = request.encoded_len();
        GrpcReceiver::export(self, ExportRequest::Logs(request), len, sender).await?;
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

#[async_trait::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        let sender = request.extensions().get::<Principal>().cloned();
        let request = request.into_inner();
        let len = request.encoded_len();
        GrpcReceiver::export(self, ExportRequest::Metrics(request), len, sender).await?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
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
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Some((Code::InvalidArgument, Rejection::Malformed))
        }
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
