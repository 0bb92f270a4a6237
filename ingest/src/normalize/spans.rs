//! Spans -> events: one event per AI span; the span's ids are the event's identity.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::attrs::{hex_id, Attrs, Lookup, ResourceJson};
use super::classify::classify;
use super::row::{attribute_latency_ms, fill_common, fill_status, messages, record_hash};
use super::NormalizeContext;
use crate::schema::{EventBatchBuilder, EventRow};

/// Pushes one row per AI span into `out`; returns how many spans were skipped.
pub(crate) fn normalize(
    req: &ExportTraceServiceRequest,
    ctx: &NormalizeContext,
    now_us: i64,
    out: &mut EventBatchBuilder,
) -> usize {
    let mut skipped = 0;
    for rs in &req.resource_spans {
        let res = rs.resource.as_ref().map_or_else(Attrs::empty, |r| Attrs::collect(&r.attributes));
        let mut res_json: Option<ResourceJson<'_>> = None;
        for ss in &rs.scope_spans {
            let scope_name = ss.scope.as_ref().map_or("", |s| s.name.as_str());
            for span in &ss.spans {
                let own = Attrs::collect(&span.attributes);
                let mut look = Lookup::new(&own, &res);
                let Some(class) = classify(&mut look, &span.name) else {
                    skipped += 1;
                    continue;
                };
                let mut row = EventRow { source: ctx.source.clone(), ..Default::default() };
                fill_common(&mut row, &mut look, class);
                fill_span(&mut row, span, &mut look, now_us);
                let res_json = res_json.get_or_insert_with(|| ResourceJson::new(&res));
                let extra: &[(&str, &str)] =
                    if scope_name.is_empty() { &[] } else { &[("otel.scope.name", scope_name)] };
                row.attributes = look.attributes_json(res_json, extra);
                out.push(&row);
            }
        }
    }
    skipped
}

/// The columns only a span has: ids, timing, status, and content carried in span events.
fn fill_span(row: &mut EventRow, span: &Span, look: &mut Lookup<'_, '_>, now_us: i64) {
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    row.time_us = match (start, end) {
        (0, 0) => now_us,
        (0, t) | (t, _) => nanos_to_micros(t),
    };
    row.latency_ms = if start > 0 && end >= start {
        Some((end - start) as f64 / 1e6)
    } else {
        attribute_latency_ms(look)
    };
    row.trace_id = hex_id(&span.trace_id);
    row.span_id = hex_id(&span.span_id);
    row.event_id = match (&row.trace_id, &row.span_id) {
        (Some(t), Some(s)) => format!("{t}{s}"),
        _ => record_hash(&span.trace_id, &span.span_id, start, &span.name, None, &span.attributes),
    };
    let (failed, message) = match &span.status {
        Some(status) => (status.code == StatusCode::Error as i32, status.message.as_str()),
        None => (false, ""),
    };
    fill_status(row, failed, if failed { message } else { "" });
    if row.prompt_text.is_none() || row.response_text.is_none() {
        fill_from_span_events(row, span);
    }
}

/// Older OpenLLMetry/semconv put content in span events `gen_ai.content.prompt` (attribute `gen_ai.prompt`)
/// and `gen_ai.content.completion` (`gen_ai.completion`); newer ones may attach the
/// `gen_ai.client.inference.operation.details` event to the span instead of emitting a log.
fn fill_from_span_events(row: &mut EventRow, span: &Span) {
    for event in &span.events {
        let (prompt_key, response_key) = match event.name.as_str() {
            "gen_ai.content.prompt" => ("gen_ai.prompt", ""),
            "gen_ai.content.completion" => ("", "gen_ai.completion"),
            "gen_ai.client.inference.operation.details" => ("gen_ai.input.messages", "gen_ai.output.messages"),
            _ => continue,
        };
        for kv in &event.attributes {
            let Some(value) = kv.value.as_ref() else { continue };
            let slot = if kv.key == prompt_key {
                &mut row.prompt_text
            } else if kv.key == response_key {
                &mut row.response_text
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = messages(value);
            }
        }
    }
}

pub(crate) fn nanos_to_micros(nanos: u64) -> i64 {
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}
