//! Sinks, normalisers and requests shared by the receiver tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::Normalizers;
use crate::normalize::{NormalizeContext, Normalized};
use crate::schema::{EventBatchBuilder, EventKind, EventRow};
use crate::sink::{EventSink, SinkError};
use crate::wire;

/// What the test sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    Accept,
    Overloaded,
    Unavailable,
    /// Refuses at admission, before a receiver decodes the request.
    Full,
}

/// Keeps every accepted batch; can be switched to refuse, or held so that requests wait for admission.
pub struct VecSink {
    batches: Mutex<Vec<RecordBatch>>,
    mode: Mutex<SinkMode>,
    /// True while requests wait for admission.
    held: tokio::sync::watch::Sender<bool>,
}

impl VecSink {
    pub fn new() -> Arc<Self> {
        Arc::new(VecSink {
            batches: Mutex::new(Vec::new()),
            mode: Mutex::new(SinkMode::Accept),
            held: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Requests that ask for admission from now on wait there (holding their bodies) until
    /// [`VecSink::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }

    pub fn set_mode(&self, mode: SinkMode) {
        *self.mode.lock().expect("mode lock") = mode;
    }

    pub fn rows(&self) -> usize {
        self.batches
            .lock()
            .expect("batches lock")
            .iter()
            .map(RecordBatch::num_rows)
            .sum()
    }

    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches.lock().expect("batches lock").clone()
    }
}

#[async_trait::async_trait]
impl EventSink for VecSink {
    async fn admit(&self) -> Result<crate::sink::Admission, SinkError> {
        let _ = self.held.subscribe().wait_for(|held| !*held).await;
        match *self.mode.lock().expect("mode lock") {
            SinkMode::Full => Err(SinkError::Overloaded {
                retry_after: Duration::from_secs(3),
            }),
            _ => Ok(crate::sink::Admission::unlimited()),
        }
    }

    async fn accept_admitted(
        &self,
        batch: RecordBatch,
        _admission: crate::sink::Admission,
    ) -> Result<(), SinkError> {
        let mode = *self.mode.lock().expect("mode lock");
        match mode {
            SinkMode::Accept => {
                self.batches.lock().expect("batches lock").push(batch);
                Ok(())
            }
            SinkMode::Overloaded => Err(SinkError::Overloaded {
                retry_after: Duration::from_secs(7),
            }),
            SinkMode::Unavailable => Err(SinkError::Unavailable("store offline".into())),
            SinkMode::Full => Err(SinkError::Internal("admitted while full".into())),
        }
    }
}

/// One `tool` event per span, except spans named `GET ...`, which count as skipped non-AI spans.
pub fn fake_normalizers() -> Normalizers {
    fn traces(req: &wire::TracesRequest, ctx: &NormalizeContext) -> Normalized {
        let spans = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans);
        let mut builder = EventBatchBuilder::default();
        let mut skipped = 0;
        for span in spans {
            if span.name.starts_with("GET ") {
                skipped += 1;
                continue;
            }
            builder.push(&EventRow {
                time_us: 1,
                event_id: hex::encode(&span.span_id),
                kind: Some(EventKind::Tool),
                source: ctx.source.clone(),
                tool_name: Some(span.name.to_string()),
                ..Default::default()
            });
        }
        Normalized {
            batch: builder.finish(),
            skipped,
            oversized: false,
        }
    }
    fn logs(req: &wire::LogsRequest, ctx: &NormalizeContext) -> Normalized {
        let records = req
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records);
        let mut builder = EventBatchBuilder::default();
        for (i, _) in records.enumerate() {
            builder.push(&EventRow {
                time_us: 1,
                event_id: format!("log-{i}"),
                kind: Some(EventKind::Policy),
                source: ctx.source.clone(),
                ..Default::default()
            });
        }
        Normalized {
            batch: builder.finish(),
            skipped: 0,
            oversized: false,
        }
    }
    Normalizers { traces, logs }
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// `ai_spans` GenAI chat spans (conventional attributes, so real normalisation keeps them) plus one plain
/// HTTP span that is not AI activity.
pub fn traces_request(ai_spans: usize) -> ExportTraceServiceRequest {
    let start = 1_763_000_000_000_000_000u64;
    let mut spans: Vec<Span> = (0..ai_spans)
        .map(|i| Span {
            trace_id: [7u8; 16].to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: "chat gpt-4o".into(),
            kind: 3,
            start_time_unix_nano: start + i as u64 * 1_000_000,
            end_time_unix_nano: start + i as u64 * 1_000_000 + 250_000_000,
            attributes: vec![
                string_attr("gen_ai.operation.name", "chat"),
                string_attr("gen_ai.provider.name", "openai"),
                string_attr("gen_ai.request.model", "gpt-4o"),
                int_attr("gen_ai.usage.input_tokens", 12),
                int_attr("gen_ai.usage.output_tokens", 34),
            ],
            ..Default::default()
        })
        .collect();
    spans.push(Span {
        trace_id: [7u8; 16].to_vec(),
        span_id: [9u8; 8].to_vec(),
        name: "GET /health".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000,
        attributes: vec![string_attr("http.request.method", "GET")],
        ..Default::default()
    });
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attr("service.name", "chatbot")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `records` log records.
pub fn logs_request(records: usize) -> ExportLogsServiceRequest {
    let log_records = (0..records)
        .map(|i| LogRecord {
            time_unix_nano: 1_763_000_000_000_000_000 + i as u64,
            event_name: "gen_ai.guardrail.security.finding".into(),
            attributes: vec![string_attr("gen_ai.guardrail.verdict.type", "deny")],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string_attr("service.name", "gateway")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One gauge with `points` data points.
pub fn metrics_request(points: usize) -> ExportMetricsServiceRequest {
    let data_points = (0..points).map(|_| NumberDataPoint::default()).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "gen_ai.client.token.usage".into(),
                    data: Some(metric::Data::Gauge(Gauge { data_points })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
