//! OTLP receivers: gRPC (:4317) and HTTP (:4318).
//!
//! Both transports frame requests differently but share everything after reading the body: [`Exporter`]
//! admits the request, decodes and normalises it, hands the events to the [`EventSink`] and counts what
//! happened, so the two receivers cannot drift apart in what they store or acknowledge. (The Kafka consumer
//! has its own loop: it batches per partition and commits offsets only behind the sink.)

mod body_budget;
pub mod grpc;
pub mod http;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde::Deserialize;

use crate::decode::{self, Compression, DecodeError, Encoding, Limits};
use crate::metrics::{self, Rejection};
pub use crate::metrics::{Signal, Transport};
use crate::normalize::{self, NormalizeContext, Normalized};
use crate::schema::col;
use crate::security::{Authenticator, Principal};
use crate::sink::{EventSink, SinkError};
use crate::wire;

/// Settings shared by the gRPC and HTTP receivers; the binary reads them from the `[otlp]` table of its
/// config file, and every field has a default so an empty table works.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Where the gRPC receiver listens. Loopback by default: exposing a receiver is a deliberate choice.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP receiver listens.
    pub http_addr: SocketAddr,
    /// Body size caps (`[otlp.limits]`).
    pub limits: Limits,
    /// Stored in the `source` column of events whose sender did not authenticate (authentication off, as
    /// in `vigil demo`); an authenticated request records its token's name instead.
    pub source_name: Option<String>,
    /// How long a client is told to wait when the sink is unavailable (the sink's own overload errors carry
    /// their own delay).
    pub unavailable_retry_after_secs: u64,
    /// Bytes of request bodies each receiver holds at once, from their first byte until they are decoded
    /// (never less than one request at the `limits`). Past it, a body is read but not kept, and the request
    /// is refused as overloaded (429 / RESOURCE_EXHAUSTED, Retry-After): this bounds memory when many
    /// clients send at once, before admission can refuse them.
    pub max_buffered_body_bytes: usize,
    /// Bytes each receiver's admitted requests may hold at once in what their bodies inflate and decode
    /// into, until their events are normalised (never less than twice `max_decompressed_bytes`). Each
    /// request is held to 32 times its size on its own; this bounds their sum. Past it the request is refused
    /// as overloaded (429 / RESOURCE_EXHAUSTED, Retry-After), or as too large (413) if it alone would need
    /// more. Real GenAI telemetry decodes into about twice its size.
    pub max_decoding_bytes: usize,
    /// How long a request may take to arrive whole (HTTP: its body; gRPC: the whole call). A sender that
    /// stalls halfway would otherwise hold its share of `max_buffered_body_bytes` for as long as it likes,
    /// and a few such senders shut everyone else out.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 4318)),
            limits: Limits::default(),
            source_name: None,
            unavailable_retry_after_secs: 5,
            max_buffered_body_bytes: 128 * 1024 * 1024,
            max_decoding_bytes: 256 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ReceiverConfig {
    /// The sender's name, and text a request's events may hold: four times what its body may inflate to.
    pub(crate) fn normalize_context(&self) -> NormalizeContext {
        NormalizeContext {
            source: self.source_name.clone(),
            max_output_bytes: self.limits.max_decompressed_bytes.saturating_mul(4),
        }
    }

    fn body_budget(&self) -> body_budget::BodyBudget {
        let largest = self
            .limits
            .max_body_bytes
            .max(self.limits.max_decompressed_bytes);
        // Room for one request at the limits, with its gRPC prefix, whatever the setting.
        body_budget::BodyBudget::new(self.max_buffered_body_bytes.max(largest + 64 * 1024))
    }

    fn decoding_budget(&self) -> body_budget::BodyBudget {
        // Room to inflate one request at the limits (and its buffer's spare capacity), whatever the setting.
        let least = self
            .limits
            .max_decompressed_bytes
            .saturating_mul(2)
            .saturating_add(wire::budget::CHUNK);
        body_budget::BodyBudget::new(self.max_decoding_bytes.max(least))
    }

    fn unavailable_retry_after(&self) -> Duration {
        Duration::from_secs(self.unavailable_retry_after_secs)
    }
}

/// Who may send to a receiver, and over what: the token check every request passes and, when set, the TLS
/// acceptor connections are terminated with. The binary builds one from `[auth]` and `[tls]`.
#[derive(Clone)]
pub struct Security {
    pub auth: Arc<Authenticator>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Security {
    /// No tokens, no TLS: for `vigil demo` and tests. Events are then recorded as the anonymous source.
    pub fn open() -> Self {
        Security {
            auth: Arc::new(Authenticator::disabled()),
            tls: None,
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("auth", &self.auth)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A decoded OTLP export request of any signal.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportRequest {
    Traces(wire::TracesRequest),
    Logs(wire::LogsRequest),
    Metrics(ExportMetricsServiceRequest),
    /// A metrics body read from the wire: only its data points are counted (see `wire::metrics`).
    MetricPoints(usize),
}

impl ExportRequest {
    pub fn signal(&self) -> Signal {
        match self {
            ExportRequest::Traces(_) => Signal::Traces,
            ExportRequest::Logs(_) => Signal::Logs,
            ExportRequest::Metrics(_) | ExportRequest::MetricPoints(_) => Signal::Metrics,
        }
    }
}

/// A request body as received. [`Exporter::export_encoded`] decodes it in the same blocking task that
/// normalises it: one hand-off to the blocking pool per request instead of two, and no protobuf parsing on
/// the async workers that poll every connection.
pub(crate) struct Encoded {
    pub signal: Signal,
    pub body: bytes::Bytes,
    pub encoding: Encoding,
    pub compression: Compression,
    pub limits: Limits,
    /// The receiver's room for this body, held by the blocking task that decodes it, so that a client that
    /// hangs up does not free it while the bytes are still in use.
    pub hold: Option<body_budget::Charge>,
}

impl Encoded {
    fn decode(&self) -> Result<ExportRequest, DecodeError> {
        let (body, encoding, compression, limits) = (
            self.body.clone(),
            self.encoding,
            self.compression,
            &self.limits,
        );
        Ok(match self.signal {
            Signal::Traces => {
                ExportRequest::Traces(decode::decode_traces(body, encoding, compression, limits)?)
            }
            Signal::Logs => {
                ExportRequest::Logs(decode::decode_logs(body, encoding, compression, limits)?)
            }
            Signal::Metrics => ExportRequest::MetricPoints(decode::decode_metrics(
                body,
                encoding,
                compression,
                limits,
            )?),
        })
    }
}

/// What the exporter is handed: a request a transport decoded itself (Kafka), or one it left encoded.
enum Input {
    Decoded(ExportRequest),
    Encoded(Encoded),
}

impl Input {
    fn signal(&self) -> Signal {
        match self {
            Input::Decoded(request) => request.signal(),
            Input::Encoded(encoded) => encoded.signal,
        }
    }

    fn decode(self) -> Result<ExportRequest, DecodeError> {
        match self {
            Input::Decoded(request) => Ok(request),
            Input::Encoded(encoded) => encoded.decode(),
        }
    }
}

/// Why [`Exporter::export_encoded`] refused a request: the sender's bytes, or the sink. Each receiver maps
/// both to its own status codes; the exporter has counted either already.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl ExportError {
    fn rejection(&self) -> Rejection {
        match self {
            ExportError::Decode(
                DecodeError::TooLarge { .. }
                | DecodeError::Expands { .. }
                | DecodeError::EventsTooLarge { .. }
                | DecodeError::ExceedsRoom,
            ) => Rejection::TooLarge,
            ExportError::Decode(DecodeError::NoRoom) => Rejection::Overloaded,
            ExportError::Decode(_) => Rejection::Malformed,
            ExportError::Sink(err) => rejection_of(err),
        }
    }
}

/// What one accepted request amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSummary {
    /// Events the sink made durable.
    pub events: usize,
    /// Records that produced no event (non-AI spans and logs, metric data points).
    pub skipped: usize,
}

/// The normalisation functions, replaceable in tests so that the receivers' contract (status codes, the
/// sink call, metrics) is tested independently of what normalisation extracts.
#[derive(Clone, Copy)]
pub(crate) struct Normalizers {
    pub traces: fn(&wire::TracesRequest, &NormalizeContext) -> Normalized,
    pub logs: fn(&wire::LogsRequest, &NormalizeContext) -> Normalized,
}

impl Default for Normalizers {
    fn default() -> Self {
        Normalizers {
            traces: normalize::traces,
            logs: normalize::logs,
        }
    }
}

/// Decode, normalise and deliver: the one path every transport takes once a request is admitted.
#[derive(Clone)]
pub struct Exporter {
    sink: Arc<dyn EventSink>,
    ctx: NormalizeContext,
    normalizers: Normalizers,
    /// What the bodies it is handed may inflate and decode into, together (`max_decoding_bytes`); none on
    /// an exporter that is only handed decoded requests.
    decoding: Option<body_budget::BodyBudget>,
}

impl Exporter {
    pub fn new(sink: Arc<dyn EventSink>, ctx: NormalizeContext) -> Self {
        Exporter {
            sink,
            ctx,
            normalizers: Normalizers::default(),
            decoding: None,
        }
    }

    /// The receivers' exporters decode within `cfg`'s `max_decoding_bytes`.
    pub(crate) fn with_decoding_room(mut self, cfg: &ReceiverConfig) -> Self {
        self.decoding = Some(cfg.decoding_budget());
        self
    }

    #[cfg(test)]
    pub(crate) fn with_normalizers(mut self, normalizers: Normalizers) -> Self {
        self.normalizers = normalizers;
        self
    }

    /// Normalises `request` and returns once the sink has made its events durable; only then may the caller
    /// acknowledge the sender. Counts the request as ok or rejected either way.
    pub async fn export(
        &self,
        transport: Transport,
        request: ExportRequest,
    ) -> Result<ExportSummary, SinkError> {
        self.export_from(transport, request, None).await
    }

    /// [`Exporter::export`] for a request whose sender the listener authenticated: a verified principal's
    /// token name becomes the events' `source`, which is what makes "telemetry from verified sources" a query.
    pub async fn export_from(
        &self,
        transport: Transport,
        request: ExportRequest,
        sender: Option<&Principal>,
    ) -> Result<ExportSummary, SinkError> {
        match self
            .export_input(transport, Input::Decoded(request), sender)
            .await
        {
            Ok(summary) => Ok(summary),
            Err(ExportError::Sink(err)) => Err(err),
            // Unreachable: a decoded request is not decoded again.
            Err(ExportError::Decode(err)) => Err(SinkError::Internal(err.to_string())),
        }
    }

    /// [`Exporter::export_from`] for a body not yet decoded. The sink admits the request before it is
    /// decoded, so a refusal under overload costs no CPU; a body that does not decode is counted as the
    /// sender's fault.
    pub(crate) async fn export_encoded(
        &self,
        transport: Transport,
        encoded: Encoded,
        sender: Option<&Principal>,
    ) -> Result<ExportSummary, ExportError> {
        self.export_input(transport, Input::Encoded(encoded), sender)
            .await
    }

    async fn export_input(
        &self,
        transport: Transport,
        input: Input,
        sender: Option<&Principal>,
    ) -> Result<ExportSummary, ExportError> {
        let signal = input.signal();
        let ctx = self.context_for(sender);
        let result = self.deliver(transport, input, ctx).await;
        match &result {
            Ok(summary) => {
                metrics::record_ok(transport, signal);
                // As i64: the OpenTelemetry layer records unsigned integers as strings.
                tracing::Span::current()
                    .record("events", summary.events as i64)
                    .record("skipped", summary.skipped as i64);
            }
            Err(err) => {
                metrics::record_rejection(transport, signal, err.rejection(), err);
                record_rejection_in_span(err.rejection());
            }
        }
        result
    }

    /// The verified sender's name; otherwise the configured fallback, and failing that the anonymous
    /// principal's name, so an unverified event is never mistaken for a verified one.
    fn context_for(&self, sender: Option<&Principal>) -> NormalizeContext {
        let mut ctx = self.ctx.clone();
        match sender {
            Some(p) if p.is_verified() => ctx.source = Some(p.source.to_string()),
            Some(p) if ctx.source.is_none() => ctx.source = Some(p.source.to_string()),
            _ => {}
        }
        ctx
    }

    async fn deliver(
        &self,
        transport: Transport,
        mut input: Input,
        ctx: NormalizeContext,
    ) -> Result<ExportSummary, ExportError> {
        let signal = input.signal();
        let hold = match &mut input {
            Input::Encoded(encoded) => encoded.hold.take(),
            Input::Decoded(_) => None,
        };
        let admission = self.sink.admit().await?;
        // This request's share of the decoding room: taken as it inflates and decodes, given back when the
        // blocking task below ends (its events normalised, the decoded messages gone).
        let decoding = match (&input, &self.decoding) {
            (Input::Encoded(_), Some(room)) => Some(room.charge()),
            _ => None,
        };
        let normalizers = self.normalizers;
        let decode_span = match &input {
            Input::Encoded(e) => tracing::debug_span!(
                "otlp.decode",
                encoding = ?e.encoding,
                compression = ?e.compression
            ),
            Input::Decoded(_) => tracing::Span::none(),
        };
        let span = tracing::debug_span!("otlp.normalize", events = tracing::field::Empty);
        // Inflating, parsing and normalising a large request is CPU work measured in milliseconds; keep it
        // off the I/O threads.
        let (normalized, admission) = tokio::task::spawn_blocking(move || {
            // The admission goes with the work and comes back with its result. A client that hangs up
            // drops this request's future, not the decode running here: had the slot stayed with the
            // future, clients cancelling their requests could keep any number of decodes running at once.
            let admission = admission;
            // Until the decoded request, whose strings are slices of the body, is normalised.
            let _hold = hold;
            let normalized = (|| -> Result<Normalized, DecodeError> {
                let request = decode_span.in_scope(|| match &decoding {
                    Some(charge) => {
                        let charge = charge.clone();
                        wire::budget::with_room(move |n| charge.take_room(n), || input.decode())
                    }
                    None => input.decode(),
                })?;
                let span = span.entered();
                let normalized = match request {
                    ExportRequest::Traces(req) => (normalizers.traces)(&req, &ctx),
                    ExportRequest::Logs(req) => (normalizers.logs)(&req, &ctx),
                    ExportRequest::Metrics(req) => Normalized {
                        batch: RecordBatch::new_empty(crate::event_schema()),
                        skipped: decode::metric_points(&req),
                        oversized: false,
                    },
                    ExportRequest::MetricPoints(points) => Normalized {
                        batch: RecordBatch::new_empty(crate::event_schema()),
                        skipped: points,
                        oversized: false,
                    },
                };
                if normalized.oversized {
                    return Err(DecodeError::EventsTooLarge {
                        limit: ctx.max_output_bytes,
                    });
                }
                span.record("events", normalized.batch.num_rows() as i64);
                Ok(normalized)
            })();
            (normalized, admission)
        })
        .await
        .map_err(|err| {
            SinkError::Internal(format!(
                "normalisation of {} failed: {err}",
                signal.as_str()
            ))
        })?;
        let Normalized { batch, skipped, .. } = normalized?;
        metrics::record_skipped(transport, signal, skipped);
        let events = batch.num_rows();
        if events == 0 {
            return Ok(ExportSummary { events, skipped });
        }
        let kinds = count_kinds(&batch);
        self.sink.accept_admitted(batch, admission).await?;
        for (kind, count) in kinds {
            metrics::record_events(transport, &kind, count);
        }
        Ok(ExportSummary { events, skipped })
    }
}

/// Marks the current request span (`otlp.export`) as failed, with the reason; a no-op outside one.
pub(crate) fn record_rejection_in_span(reason: Rejection) {
    tracing::Span::current()
        .record("otel.status_code", "error")
        .record("rejection", reason.as_str());
}

fn rejection_of(err: &SinkError) -> Rejection {
    match err {
        SinkError::Overloaded { .. } => Rejection::Overloaded,
        SinkError::Unavailable(_) => Rejection::Unavailable,
        SinkError::Internal(_) => Rejection::Internal,
    }
}

/// Rows per value of the `kind` column, for `vigil_ingest_events_total`.
fn count_kinds(batch: &RecordBatch) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let Some(kinds) = batch
        .column_by_name(col::KIND)
        .and_then(|c| c.as_string_opt::<i32>())
    else {
        return vec![("unknown".to_owned(), batch.num_rows())];
    };
    for kind in kinds.iter() {
        let kind = kind.unwrap_or("unknown");
        match counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind.to_owned(), 1)),
        }
    }
    counts
}

#[cfg(test)]
mod receiver_tests;
#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn config_defaults_and_overrides_from_toml() {
        let cfg: ReceiverConfig = serde_json::from_str("{}").expect("empty config");
        assert_eq!(cfg, ReceiverConfig::default());
        assert_eq!(cfg.grpc_addr.port(), 4317);
        assert_eq!(cfg.http_addr.port(), 4318);
        let cfg: ReceiverConfig = serde_json::from_str(
            r#"{"http_addr":"0.0.0.0:9318","limits":{"max_body_bytes":1024},"source_name":"edge"}"#,
        )
        .expect("partial config");
        assert_eq!(cfg.http_addr.port(), 9318);
        assert_eq!(cfg.limits.max_body_bytes, 1024);
        assert_eq!(
            cfg.limits.max_decompressed_bytes,
            Limits::default().max_decompressed_bytes
        );
        assert_eq!(cfg.source_name.as_deref(), Some("edge"));
        assert!(
            serde_json::from_str::<ReceiverConfig>(r#"{"grpc_adr":"1.2.3.4:1"}"#).is_err(),
            "typos are errors"
        );
    }

    #[tokio::test]
    async fn exporter_delivers_rows_and_counts_kinds_and_skips() {
        let sink = VecSink::new();
        let exporter = Exporter::new(sink.clone(), NormalizeContext::default())
            .with_normalizers(fake_normalizers());
        let before = metrics::EVENTS.with_label_values(&["kafka", "tool"]).get();
        let summary = exporter
            .export(
                Transport::Kafka,
                ExportRequest::Traces(wire::convert(&traces_request(3)).expect("converts")),
            )
            .await
            .expect("ok");
        assert_eq!(
            summary,
            ExportSummary {
                events: 3,
                skipped: 1
            }
        );
        assert_eq!(sink.rows(), 3);
        assert_eq!(
            metrics::EVENTS.with_label_values(&["kafka", "tool"]).get() - before,
            3
        );
    }

    #[tokio::test]
    async fn metrics_are_counted_not_stored() {
        let sink = VecSink::new();
        let exporter = Exporter::new(sink.clone(), NormalizeContext::default());
        let summary = exporter
            .export(Transport::Kafka, ExportRequest::Metrics(metrics_request(4)))
            .await
            .expect("ok");
        assert_eq!(
            summary,
            ExportSummary {
                events: 0,
                skipped: 4
            }
        );
        assert_eq!(sink.rows(), 0);
    }

    /// A client that hangs up while its request is being decoded drops the request's future, not the
    /// blocking decode: the admission slot must stay taken until that decode is over, or cancelled
    /// requests would let any number of decodes (and their memory) run at once.
    #[tokio::test]
    async fn a_cancelled_request_keeps_its_admission_until_its_decode_ends() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Condvar, Mutex};

        use crate::sink::Admission;

        /// Opened by the test; the normaliser waits for it.
        static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
        static ENTERED: AtomicBool = AtomicBool::new(false);
        fn gated(req: &wire::TracesRequest, ctx: &NormalizeContext) -> Normalized {
            ENTERED.store(true, Ordering::SeqCst);
            let (open, cv) = &GATE;
            let mut open = open.lock().expect("gate");
            while !*open {
                open = cv.wait(open).expect("gate");
            }
            (fake_normalizers().traces)(req, ctx)
        }

        /// Counts the admissions alive.
        struct CountingSink(Arc<AtomicUsize>);
        struct Slot(Arc<AtomicUsize>);
        impl Drop for Slot {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        #[async_trait::async_trait]
        impl EventSink for CountingSink {
            async fn admit(&self) -> Result<Admission, SinkError> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(Admission::holding(Slot(self.0.clone())))
            }
            async fn accept_admitted(
                &self,
                _batch: RecordBatch,
                _admission: Admission,
            ) -> Result<(), SinkError> {
                Ok(())
            }
        }

        /// Opens the gate however the test ends: a decode left waiting would keep the runtime from
        /// shutting down, and a failing test would hang instead of failing.
        struct OpenOnDrop;
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                *GATE.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
                GATE.1.notify_all();
            }
        }

        let live = Arc::new(AtomicUsize::new(0));
        let opener = OpenOnDrop;
        let exporter = Arc::new(
            Exporter::new(
                Arc::new(CountingSink(live.clone())),
                NormalizeContext::default(),
            )
            .with_normalizers(Normalizers {
                traces: gated,
                ..fake_normalizers()
            }),
        );
        let request = wire::convert(&traces_request(3)).expect("converts");
        let call = tokio::spawn({
            let exporter = exporter.clone();
            async move {
                exporter
                    .export(Transport::Http, ExportRequest::Traces(request))
                    .await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ENTERED.load(Ordering::SeqCst) {
            assert!(
                !call.is_finished() && std::time::Instant::now() < deadline,
                "the request reaches its normaliser"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        call.abort();
        assert!(call.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(
            live.load(Ordering::SeqCst),
            1,
            "the slot is held while the decode runs"
        );

        drop(opener);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while live.load(Ordering::SeqCst) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the slot is freed once the decode ends"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_failing_normaliser_is_an_internal_error_not_a_crash() {
        fn panics(_: &wire::TracesRequest, _: &NormalizeContext) -> Normalized {
            panic!("bug in normalisation")
        }
        let exporter = Exporter::new(VecSink::new(), NormalizeContext::default()).with_normalizers(
            Normalizers {
                traces: panics,
                ..fake_normalizers()
            },
        );
        let err = exporter
            .export(
                Transport::Kafka,
                ExportRequest::Traces(wire::convert(&traces_request(1)).expect("converts")),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::Internal(_)), "{err}");
    }
}
