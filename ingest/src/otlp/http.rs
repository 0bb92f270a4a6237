//! The OTLP/HTTP receiver: `POST /v1/traces`, `/v1/logs`, `/v1/metrics` with protobuf or JSON bodies.
//!
//! Status codes follow the OTLP/HTTP spec so that stock SDKs and collectors retry exactly what is worth
//! retrying: 400/413/415 are final, 429/503 carry `Retry-After`. Error bodies are a `google.rpc.Status` in the
//! request's encoding.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;

use super::body_budget::{self, BodyBudget, Framing};
use super::{status, Encoded, ExportError, Exporter, ReceiverConfig};
use crate::decode::{Compression, DecodeError, Encoding};
use crate::metrics::{self, Rejection, Signal, Transport};
use crate::security::tls_listener::no_delay;
use crate::security::{http_auth, AuthFailure, Authenticator, Principal, Scope};
use crate::sink::{EventSink, SinkError};

struct HttpState {
    exporter: Exporter,
    cfg: ReceiverConfig,
    bodies: BodyBudget,
}

/// The failure-counter label of this listener (`vigil_auth_failures_total{listener="otlp_http"}`).
pub const LISTENER: &str = "otlp_http";

/// The receiver's routes, ready to be served or merged into a larger router. Every route requires a token
/// with the `ingest` scope (checked before the body is read); `Authenticator::disabled()` admits everyone.
pub fn router(sink: Arc<dyn EventSink>, cfg: ReceiverConfig, auth: Arc<Authenticator>) -> Router {
    let exporter = Exporter::new(sink, cfg.normalize_context());
    router_with(exporter, cfg)
        .route_layer(http_auth::require(auth, Scope::Ingest, LISTENER).rendered_by(auth_refusal))
}

/// A refused token answered as the spec answers every OTLP/HTTP failure: a `google.rpc.Status` in the
/// request's encoding (UNAUTHENTICATED or PERMISSION_DENIED), keeping the 401/403 and its challenge.
fn auth_refusal(headers: &HeaderMap, failure: &AuthFailure) -> Response {
    let mut response = http_auth::rejection(failure);
    let encoding = header_str(headers, header::CONTENT_TYPE)
        .ok()
        .flatten()
        .and_then(Encoding::from_content_type);
    if let Some(encoding) = encoding {
        let code = if failure.is_forbidden() {
            tonic::Code::PermissionDenied
        } else {
            tonic::Code::Unauthenticated
        };
        let body = status::http_body(encoding, code, &failure.to_string(), None);
        *response.body_mut() = axum::body::Body::from(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(encoding.content_type()),
        );
    }
    response
}

pub(crate) fn router_with(exporter: Exporter, cfg: ReceiverConfig) -> Router {
    let body_limit = cfg.limits.max_body_bytes;
    let bodies = cfg.body_budget();
    let state = Arc::new(HttpState {
        exporter: exporter.with_decoding_room(&cfg),
        cfg,
        bodies,
    });
    Router::new()
        .route(
            "/v1/traces",
            post(|State(s): State<Arc<HttpState>>, req: Request| export(s, Signal::Traces, req)),
        )
        .route(
            "/v1/logs",
            post(|State(s): State<Arc<HttpState>>, req: Request| export(s, Signal::Logs, req)),
        )
        .route(
            "/v1/metrics",
            post(|State(s): State<Arc<HttpState>>, req: Request| export(s, Signal::Metrics, req)),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves `router` on an already-bound listener (so tests can bind port 0) until `shutdown` resolves;
/// in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http_server::serve(listener.tap_io(no_delay), router, shutdown).await
}

/// A refused request: its status, the `google.rpc.Status` code in the body, and the metric reason.
struct Refusal {
    status: StatusCode,
    code: tonic::Code,
    reason: Rejection,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(
        status: StatusCode,
        code: tonic::Code,
        reason: Rejection,
        message: impl Into<String>,
    ) -> Self {
        Refusal {
            status,
            code,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    fn from_decode(err: &DecodeError) -> Self {
        match err {
            DecodeError::TooLarge { .. }
            | DecodeError::Expands { .. }
            | DecodeError::EventsTooLarge { .. }
            | DecodeError::ExceedsRoom => Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                tonic::Code::InvalidArgument,
                Rejection::TooLarge,
                err.to_string(),
            ),
            DecodeError::NoRoom => Refusal {
                retry_after: Some(body_budget::RETRY_AFTER),
                ..Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    tonic::Code::ResourceExhausted,
                    Rejection::Overloaded,
                    err.to_string(),
                )
            },
            DecodeError::Decompress { .. } | DecodeError::Protobuf(_) | DecodeError::Json(_) => {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    Rejection::Malformed,
                    err.to_string(),
                )
            }
        }
    }

    fn from_sink(err: &SinkError, cfg: &ReceiverConfig) -> Self {
        let message = err.to_string();
        match err {
            SinkError::Overloaded { retry_after } => Refusal {
                retry_after: Some(*retry_after),
                ..Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    tonic::Code::ResourceExhausted,
                    Rejection::Overloaded,
                    message,
                )
            },
            SinkError::Unavailable(_) => Refusal {
                retry_after: Some(cfg.unavailable_retry_after()),
                ..Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    tonic::Code::Unavailable,
                    Rejection::Unavailable,
                    message,
                )
            },
            SinkError::Internal(_) => Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::Internal,
                Rejection::Internal,
                message,
            ),
        }
    }

    /// The response in the request's encoding; `None` (unknown content type) gets plain text.
    fn into_response(self, encoding: Option<Encoding>) -> Response {
        let retry_after = self.retry_after.map(status::spread);
        let mut response = match encoding {
            Some(encoding) => (
                self.status,
                [(header::CONTENT_TYPE, encoding.content_type())],
                status::http_body(encoding, self.code, &self.message, retry_after),
            )
                .into_response(),
            None => (self.status, self.message).into_response(),
        };
        if let Some(delay) = retry_after {
            // Retry-After is whole seconds; round up so a client never comes back early.
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, ()> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| ()))
        .transpose()
}

/// One span per request (never per record): Vigil's own traces show where a request's time went.
#[tracing::instrument(
    level = "debug",
    name = "otlp.export",
    skip_all,
    fields(
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        transport = "http",
        signal = signal.as_str(),
        bytes = tracing::field::Empty,
        events = tracing::field::Empty,
        skipped = tracing::field::Empty,
        rejection = tracing::field::Empty,
    )
)]
async fn export(state: Arc<HttpState>, signal: Signal, req: Request) -> Response {
    let sender = req.extensions().get::<Principal>().cloned();
    let headers = req.headers();
    let encoding = header_str(headers, header::CONTENT_TYPE)
        .ok()
        .flatten()
        .and_then(Encoding::from_content_type);
    let Some(encoding) = encoding else {
        let refusal = Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            Rejection::UnsupportedMediaType,
            "Content-Type must be application/x-protobuf or application/json",
        );
        return refuse(signal, refusal, None);
    };
    let compression = header_str(headers, header::CONTENT_ENCODING)
        .ok()
        .and_then(Compression::from_content_encoding);
    let Some(compression) = compression else {
        let refusal = Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            Rejection::UnsupportedMediaType,
            "Content-Encoding must be gzip, deflate, zstd or identity",
        );
        return refuse(signal, refusal, Some(encoding));
    };

    // Held until the body is decoded (it moves into the decoding task): its bytes live that long.
    let charge = state.bodies.charge();
    let max_body = state.cfg.limits.max_body_bytes;
    let req = req.map(|body| axum::body::Body::new(charge.count(body, Framing::Bytes, max_body)));
    let body = match tokio::time::timeout(state.cfg.request_timeout, Bytes::from_request(req, &()))
        .await
    {
        Err(_elapsed) => {
            let refusal = Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                tonic::Code::DeadlineExceeded,
                Rejection::Timeout,
                format!(
                    "the request body did not arrive within {:?}",
                    state.cfg.request_timeout
                ),
            );
            return refuse(signal, refusal, Some(encoding));
        }
        Ok(Ok(body)) => body,
        Ok(Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)))) => {
            let err = DecodeError::TooLarge {
                limit: state.cfg.limits.max_body_bytes,
            };
            return refuse(signal, Refusal::from_decode(&err), Some(encoding));
        }
        Ok(Err(err)) => {
            let refusal = Refusal::new(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                Rejection::Malformed,
                format!("cannot read the request body: {err}"),
            );
            return refuse(signal, refusal, Some(encoding));
        }
    };
    if charge.overflowed() && charge.seen() > max_body {
        // Past the size cap as well: retrying would not help.
        let err = DecodeError::TooLarge { limit: max_body };
        return refuse(signal, Refusal::from_decode(&err), Some(encoding));
    }
    if charge.overflowed() {
        let refusal = Refusal {
            retry_after: Some(body_budget::RETRY_AFTER),
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
                Rejection::Overloaded,
                format!(
                    "the receiver holds {} bytes of request bodies already (max_buffered_body_bytes)",
                    state.bodies.bytes()
                ),
            )
        };
        return refuse(signal, refusal, Some(encoding));
    }
    metrics::record_bytes(Transport::Http, body.len());
    tracing::Span::current().record("bytes", body.len() as i64);
    // The exporter admits the request before decoding it, so a refusal under overload costs no CPU; and
    // only after the body has been read, so the client is not cut off mid-send and sees its 429.
    let encoded = Encoded {
        signal,
        body,
        encoding,
        compression,
        limits: state.cfg.limits,
        hold: Some(charge),
    };
    match state
        .exporter
        .export_encoded(Transport::Http, encoded, sender.as_ref())
        .await
    {
        // The exporter has counted the outcome already.
        Ok(_) => success(encoding),
        Err(ExportError::Decode(err)) => Refusal::from_decode(&err).into_response(Some(encoding)),
        Err(ExportError::Sink(err)) => {
            Refusal::from_sink(&err, &state.cfg).into_response(Some(encoding))
        }
    }
}

fn refuse(signal: Signal, refusal: Refusal, encoding: Option<Encoding>) -> Response {
    metrics::record_rejection(Transport::Http, signal, refusal.reason, &refusal.message);
    super::record_rejection_in_span(refusal.reason);
    refusal.into_response(encoding)
}

/// An `Export*ServiceResponse` without `partial_success` (skipped non-AI records are not rejections). All
/// three signals' responses encode identically when empty: no bytes in protobuf, `{}` in JSON.
fn success(encoding: Encoding) -> Response {
    let body: &'static [u8] = match encoding {
        Encoding::Protobuf => b"",
        Encoding::Json => b"{}",
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}
