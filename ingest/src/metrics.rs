//! Ingest metrics, registered in the process-wide Prometheus registry.
//!
//! They answer the operator's first questions about a receiver: is telemetry arriving, how much of it is AI
//! activity, and who is being turned away and why.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};

/// How a request reached Vigil; the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
    Kafka,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Kafka => "kafka",
        }
    }
}

/// Which OTLP signal a request carries; the `signal` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// Why a request was refused; the `reason` label, and the `outcome` of a refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    /// The body did not arrive within `request_timeout` (a stalled or very slow sender).
    Timeout,
    TooLarge,
    UnsupportedMediaType,
    Overloaded,
    Unavailable,
    Internal,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Timeout => "timeout",
            Rejection::TooLarge => "too_large",
            Rejection::UnsupportedMediaType => "unsupported_media_type",
            Rejection::Overloaded => "overloaded",
            Rejection::Unavailable => "unavailable",
            Rejection::Internal => "internal",
        }
    }
}

/// Export requests by transport, signal and outcome (`ok` or a [`Rejection`] reason).
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_ingest_requests_total",
        "OTLP export requests received, by outcome (ok or the rejection reason)",
        &["transport", "signal", "outcome"]
    )
    .expect("vigil_ingest_requests_total registers once")
});

/// Events handed to the sink and acknowledged, by event kind.
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_ingest_events_total",
        "AI events accepted by the sink, by event kind",
        &["transport", "kind"]
    )
    .expect("vigil_ingest_events_total registers once")
});

/// Records received that produce no event: spans and log records that are not AI activity, and every
/// metric data point (metrics are accepted for compatibility but not stored).
pub static SKIPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_ingest_skipped_total",
        "Spans, log records and metric data points received that are not stored as AI events",
        &["transport", "signal"]
    )
    .expect("vigil_ingest_skipped_total registers once")
});

/// Refused requests by reason.
pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_ingest_rejected_total",
        "OTLP export requests refused, by reason",
        &["transport", "reason"]
    )
    .expect("vigil_ingest_rejected_total registers once")
});

/// Request bytes received. HTTP counts the body as sent (compressed if it was); gRPC counts the decoded
/// message's encoded size, because tonic decompresses before the handler sees it.
pub static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_ingest_bytes_total",
        "OTLP request bytes received",
        &["transport"]
    )
    .expect("vigil_ingest_bytes_total registers once")
});

/// Counts a request whose events (if any) the sink accepted.
pub fn record_ok(transport: Transport, signal: Signal) {
    REQUESTS
        .with_label_values(&[transport.as_str(), signal.as_str(), "ok"])
        .inc();
}

/// Counts and logs a refused request. The log line is the operator's way to find the sender and the cause.
pub fn record_rejection(
    transport: Transport,
    signal: Signal,
    reason: Rejection,
    detail: &dyn std::fmt::Display,
) {
    REQUESTS
        .with_label_values(&[transport.as_str(), signal.as_str(), reason.as_str()])
        .inc();
    REJECTED
        .with_label_values(&[transport.as_str(), reason.as_str()])
        .inc();
    tracing::warn!(
        transport = transport.as_str(),
        signal = signal.as_str(),
        reason = reason.as_str(),
        "rejected OTLP export: {detail}"
    );
}

/// Counts bytes received.
pub fn record_bytes(transport: Transport, bytes: usize) {
    BYTES
        .with_label_values(&[transport.as_str()])
        .inc_by(bytes as u64);
}

/// Counts records that produced no event.
pub fn record_skipped(transport: Transport, signal: Signal, count: usize) {
    if count > 0 {
        SKIPPED
            .with_label_values(&[transport.as_str(), signal.as_str()])
            .inc_by(count as u64);
    }
}

/// Counts accepted events of one kind.
pub fn record_events(transport: Transport, kind: &str, count: usize) {
    if count > 0 {
        EVENTS
            .with_label_values(&[transport.as_str(), kind])
            .inc_by(count as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_in_the_default_registry() {
        record_rejection(
            Transport::Kafka,
            Signal::Logs,
            Rejection::Malformed,
            &"test",
        );
        record_bytes(Transport::Kafka, 10);
        let families = prometheus::gather();
        for name in [
            "vigil_ingest_requests_total",
            "vigil_ingest_rejected_total",
            "vigil_ingest_bytes_total",
        ] {
            assert!(
                families.iter().any(|f| f.name() == name),
                "{name} not registered"
            );
        }
        assert!(REJECTED.with_label_values(&["kafka", "malformed"]).get() >= 1);
        assert!(
            REQUESTS
                .with_label_values(&["kafka", "logs", "malformed"])
                .get()
                >= 1
        );
    }
}
