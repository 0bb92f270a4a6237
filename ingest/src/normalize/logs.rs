//! Log records (OpenTelemetry events) -> events.
//!
//! Accepted, by event name (`LogRecord.event_name`, else the `event.name` attribute):
//! - `gen_ai.client.inference.operation.details`: the attributes of an inference span -> inference;
//! - `gen_ai.system.message`, `gen_ai.user.message`, `gen_ai.tool.message` (body `{content, ...}`) -> an
//!   inference event whose `prompt_text` is the content; `gen_ai.assistant.message` and `gen_ai.choice`
//!   (body `{index, finish_reason, message:{role, content}}`) -> one whose `response_text` is the content;
//! - `gen_ai.guardrail.security.finding` -> policy;
//! - `gen_ai.model.version_change` and `gen_ai.endpoint.*` -> endpoint;
//! - anything else is classified by its attributes like a span (see `classify`), or skipped.
//!
//! `vigil.event.kind` on the record always decides the kind. A log record has no identity of its own, so
//! its `event_id` is a hash of its content; the event name is kept in `attributes` as `event.name`.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use super::attrs::{hex_id, text, Attrs, Lookup, ResourceJson, Slot};
use super::classify::{classify, explicit, is_endpoint_name, Classified};
use super::row::{attribute_latency_ms, fill_common, fill_status, messages, record_hash};
use super::spans::nanos_to_micros;
use super::NormalizeContext;
use crate::schema::{EventBatchBuilder, EventKind, EventRow};

/// What an event name says about where its content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Old-style message event whose body content is input to the model.
    PromptMessage,
    /// Old-style `gen_ai.assistant.message`: body content is the model's output.
    AssistantMessage,
    /// Old-style `gen_ai.choice`: body `message.content` is the model's output.
    Choice,
    /// Everything is in the attributes.
    Attributes,
}

fn shape_of(event_name: &str) -> (Shape, Option<EventKind>) {
    match event_name {
        "gen_ai.system.message" | "gen_ai.user.message" | "gen_ai.tool.message" => {
            (Shape::PromptMessage, Some(EventKind::Inference))
        }
        "gen_ai.assistant.message" => (Shape::AssistantMessage, Some(EventKind::Inference)),
        "gen_ai.choice" => (Shape::Choice, Some(EventKind::Inference)),
        "gen_ai.client.inference.operation.details" => (Shape::Attributes, Some(EventKind::Inference)),
        "gen_ai.guardrail.security.finding" => (Shape::Attributes, Some(EventKind::Policy)),
        name if is_endpoint_name(name) => (Shape::Attributes, Some(EventKind::Endpoint)),
        _ => (Shape::Attributes, None),
    }
}

/// Pushes one row per AI log record into `out`; returns how many records were skipped.
pub(crate) fn normalize(
    req: &ExportLogsServiceRequest,
    ctx: &NormalizeContext,
    now_us: i64,
    out: &mut EventBatchBuilder,
) -> usize {
    let mut skipped = 0;
    for rl in &req.resource_logs {
        let res = rl.resource.as_ref().map_or_else(Attrs::empty, |r| Attrs::collect(&r.attributes));
        let mut res_json: Option<ResourceJson<'_>> = None;
        for sl in &rl.scope_logs {
            let scope_name = sl.scope.as_ref().map_or("", |s| s.name.as_str());
            for record in &sl.log_records {
                let own = Attrs::collect(&record.attributes);
                let event_name = if record.event_name.is_empty() {
                    own.str(Slot::EventName).unwrap_or("")
                } else {
                    record.event_name.as_str()
                };
                let mut look = Lookup::new(&own, &res);
                let (shape, named_kind) = shape_of(event_name);
                let class = explicit(&mut look)
                    .or_else(|| named_kind.map(Classified::new))
                    .or_else(|| classify(&mut look, event_name));
                let Some(class) = class else {
                    skipped += 1;
                    continue;
                };
                let mut row = EventRow { source: ctx.source.clone(), ..Default::default() };
                fill_common(&mut row, &mut look, class);
                fill_record(&mut row, record, event_name, &mut look, now_us);
                if let Some(body) = &record.body {
                    fill_from_body(&mut row, shape, body);
                }
                let res_json = res_json.get_or_insert_with(|| ResourceJson::new(&res));
                let mut extra: [(&str, &str); 2] = [("", ""); 2];
                let mut n = 0;
                if !record.event_name.is_empty() {
                    extra[n] = ("event.name", record.event_name.as_str());
                    n += 1;
                }
                if !scope_name.is_empty() {
                    extra[n] = ("otel.scope.name", scope_name);
                    n += 1;
                }
                row.attributes = look.attributes_json(res_json, &extra[..n]);
                out.push(&row);
            }
        }
    }
    skipped
}

fn fill_record(row: &mut EventRow, record: &LogRecord, event_name: &str, look: &mut Lookup<'_, '_>, now_us: i64) {
    let time = if record.time_unix_nano != 0 { record.time_unix_nano } else { record.observed_time_unix_nano };
    row.time_us = if time == 0 { now_us } else { nanos_to_micros(time) };
    row.latency_ms = attribute_latency_ms(look);
    row.trace_id = hex_id(&record.trace_id);
    row.span_id = hex_id(&record.span_id);
    row.event_id = record_hash(
        &record.trace_id,
        &record.span_id,
        time,
        event_name,
        record.body.as_ref(),
        &record.attributes,
    );
    fill_status(row, false, "");
}

/// Content of old-style message events: the body is `{content, role, ...}` (or `{message:{content}}` for a
/// choice), or a bare string.
fn fill_from_body(row: &mut EventRow, shape: Shape, body: &AnyValue) {
    let (content, finish_reason) = match shape {
        Shape::Attributes => return,
        Shape::PromptMessage | Shape::AssistantMessage => (field(body, "content"), None),
        Shape::Choice => {
            let content = field(body, "message").and_then(|m| field(m, "content")).or_else(|| field(body, "content"));
            (content, field(body, "finish_reason"))
        }
    };
    let content = match (&body.value, content) {
        (Some(Value::StringValue(_)), _) => Some(body),
        (_, content) => content,
    };
    let text = content.and_then(|c| match &c.value {
        // Plain content is the text itself, even if it happens to look like JSON.
        Some(Value::StringValue(s)) => (!s.is_empty()).then(|| s.clone()),
        _ => messages(c),
    });
    let slot = if shape == Shape::PromptMessage { &mut row.prompt_text } else { &mut row.response_text };
    if slot.is_none() {
        *slot = text;
    }
    if row.finish_reasons.is_none() {
        row.finish_reasons = finish_reason.and_then(text_of);
    }
}

fn text_of(v: &AnyValue) -> Option<String> {
    text(v).map(|t| t.into_owned())
}

fn field<'a>(v: &'a AnyValue, key: &str) -> Option<&'a AnyValue> {
    match &v.value {
        Some(Value::KvlistValue(kvs)) => kvs.values.iter().find(|kv| kv.key == key)?.value.as_ref(),
        _ => None,
    }
}
