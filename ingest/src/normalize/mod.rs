//! Mapping of OTLP spans and log records that follow the GenAI semantic conventions (old and new names),
//! OpenLLMetry and OpenInference into [`EventRow`](crate::EventRow)s.
//!
//! Every span or log record that is AI activity becomes one event; everything else is counted as skipped.
//! What counts as AI activity and of which kind is decided in `classify` (Langfuse's order); producers
//! without semantic conventions can set the attribute `vigil.event.kind` to `inference`, `tool`, `policy`,
//! `agent` or `endpoint`. Endpoint events are recognised by that attribute, by a span or event name starting
//! with `gen_ai.endpoint.` or equal to `gen_ai.model.version_change`, or by any `gen_ai.endpoint.*` attribute.
//!
//! Columns are read from the record's own attributes first and its resource's second; whatever did not go
//! into a column (resource attributes included) is kept in the `attributes` JSON, plus `otel.scope.name`
//! and, for log records, `event.name`. A record without any time gets the time it was normalised.
//!
//! This is the ingest hot path: one pass over each record's attributes into fixed slots, no regex, no map
//! per record, and resource attributes rendered to JSON once per resource.

mod attrs;
mod classify;
mod content;
mod logs;
mod row;
mod spans;

use std::borrow::Cow;

use arrow::array::RecordBatch;

use crate::schema::{EventBatchBuilder, EventRowOf};
use crate::wire::{LogsRequest, TracesRequest};

/// A row whose text borrows from the request being normalised wherever a column is an attribute as sent.
type Row<'a> = EventRowOf<Cow<'a, str>>;

/// Default for [`NormalizeContext::max_output_bytes`]: four times the default decompressed-body limit.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;

/// Facts about where a request came from that are not in the telemetry itself, and what it may cost.
#[derive(Debug, Clone)]
pub struct NormalizeContext {
    /// The authenticated source that sent the request (token name), stored in the `source` column.
    pub source: Option<String>,
    /// Text the events of one request may hold. A resource's attributes are copied into each of its
    /// events, so a small request (one 8 MiB attribute on a resource of 200,000 tiny spans) would expand
    /// to terabytes; past this, normalisation stops and the request is refused whole.
    pub max_output_bytes: usize,
}

impl Default for NormalizeContext {
    fn default() -> Self {
        NormalizeContext {
            source: None,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// The result of normalising one OTLP request.
#[derive(Debug)]
pub struct Normalized {
    /// Events in [`crate::event_schema`]; may have zero rows.
    pub batch: RecordBatch,
    /// Spans or log records that were not AI activity and were skipped.
    pub skipped: usize,
    /// Normalisation stopped at [`NormalizeContext::max_output_bytes`]: `batch` is incomplete and the
    /// request must be refused.
    pub oversized: bool,
}

/// Normalises every AI span of an OTLP trace export; the span's trace and span ids become the event id, so
/// a re-sent span keeps its id.
pub fn traces(req: &TracesRequest, ctx: &NormalizeContext) -> Normalized {
    let spans: usize = req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    let mut builder = EventBatchBuilder::with_capacity(spans);
    let (skipped, oversized) = spans::normalize(req, ctx, now_us(), &mut builder);
    Normalized {
        batch: builder.finish(),
        skipped,
        oversized,
    }
}

/// Normalises every AI log record (GenAI events, old and new style) of an OTLP logs export; the event id is
/// a hash of the record, so a re-sent record keeps its id.
pub fn logs(req: &LogsRequest, ctx: &NormalizeContext) -> Normalized {
    let records: usize = req
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len())
        .sum();
    let mut builder = EventBatchBuilder::with_capacity(records);
    let (skipped, oversized) = logs::normalize(req, ctx, now_us(), &mut builder);
    Normalized {
        batch: builder.finish(),
        skipped,
        oversized,
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
