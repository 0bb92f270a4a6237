//! The inverse of normalisation: encodes [`EventRow`]s as OTLP spans that follow the GenAI semantic
//! conventions (current names). The demo, the benchmark and the end-to-end tests use it to send realistic
//! telemetry over real OTLP, and a round trip through [`crate::normalize`] must give the rows back.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};

use crate::schema::{EventKind, EventRow};

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn hex_bytes(h: &str) -> Vec<u8> {
    hex::decode(h).unwrap_or_default()
}

/// The `gen_ai.input.messages` / `gen_ai.output.messages` JSON for one text message.
fn messages(role: &str, text: &str) -> String {
    serde_json::json!([{ "role": role, "parts": [{ "type": "text", "content": text }] }])
        .to_string()
}

/// One span carrying everything `row` says, named the way GenAI instrumentations name theirs.
pub fn span_for(row: &EventRow) -> Span {
    let mut attrs = Vec::with_capacity(24);
    let kind = row.kind.unwrap_or(EventKind::Inference);
    let operation = row.operation.clone().unwrap_or_else(|| {
        match kind {
            EventKind::Inference => "chat",
            EventKind::Tool => "execute_tool",
            EventKind::Policy => "run_guardrail",
            EventKind::Agent => "invoke_agent",
            EventKind::Endpoint => "endpoint_health",
        }
        .to_string()
    });
    attrs.push(s("gen_ai.operation.name", &operation));
    if kind == EventKind::Endpoint {
        attrs.push(s("vigil.event.kind", "endpoint"));
    }
    let opt = |attrs: &mut Vec<KeyValue>, key: &str, v: &Option<String>| {
        if let Some(v) = v {
            attrs.push(s(key, v));
        }
    };
    opt(&mut attrs, "gen_ai.provider.name", &row.provider);
    opt(&mut attrs, "gen_ai.request.model", &row.model);
    opt(&mut attrs, "gen_ai.response.model", &row.response_model);
    if let Some(ep) = &row.endpoint {
        match ep
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<i64>().ok().map(|p| (h, p)))
        {
            Some((host, port)) => {
                attrs.push(s("server.address", host));
                attrs.push(i("server.port", port));
            }
            None => attrs.push(s("server.address", ep)),
        }
    }
    opt(&mut attrs, "user.id", &row.user_id);
    if let Some(role) = &row.user_role {
        attrs.push(kv(
            "user.roles",
            any_value::Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::StringValue(role.clone())),
                }],
            }),
        ));
    }
    opt(&mut attrs, "department", &row.department);
    opt(&mut attrs, "gen_ai.agent.id", &row.agent_id);
    opt(&mut attrs, "gen_ai.conversation.id", &row.conversation_id);
    if let Some(t) = row.input_tokens {
        attrs.push(i("gen_ai.usage.input_tokens", t));
    }
    if let Some(t) = row.output_tokens {
        attrs.push(i("gen_ai.usage.output_tokens", t));
    }
    if let Some(fr) = &row.finish_reasons {
        let values = fr
            .split(',')
            .map(|r| AnyValue {
                value: Some(any_value::Value::StringValue(r.to_string())),
            })
            .collect();
        attrs.push(kv(
            "gen_ai.response.finish_reasons",
            any_value::Value::ArrayValue(ArrayValue { values }),
        ));
    }
    opt(&mut attrs, "error.type", &row.error_type);
    opt(&mut attrs, "gen_ai.tool.name", &row.tool_name);
    opt(&mut attrs, "gen_ai.data_source.id", &row.data_source);
    opt(
        &mut attrs,
        "gen_ai.guardrail.security.policy.id",
        &row.policy_id,
    );
    opt(&mut attrs, "gen_ai.guardrail.verdict.type", &row.decision);
    opt(
        &mut attrs,
        "gen_ai.guardrail.verdict.reason",
        &row.decision_reason,
    );
    match kind {
        EventKind::Tool => {
            opt(&mut attrs, "gen_ai.tool.call.arguments", &row.prompt_text);
            opt(&mut attrs, "gen_ai.tool.call.result", &row.response_text);
        }
        _ => {
            if let Some(p) = &row.prompt_text {
                attrs.push(s("gen_ai.input.messages", &messages("user", p)));
            }
            if let Some(r) = &row.response_text {
                attrs.push(s("gen_ai.output.messages", &messages("assistant", r)));
            }
        }
    }
    if let Some(extra) = row
        .attributes
        .as_deref()
        .and_then(|a| serde_json::from_str::<BTreeMap<String, serde_json::Value>>(a).ok())
    {
        for (k, v) in extra {
            let value = match v {
                serde_json::Value::String(x) => any_value::Value::StringValue(x),
                serde_json::Value::Bool(b) => any_value::Value::BoolValue(b),
                serde_json::Value::Number(n) if n.is_i64() => {
                    any_value::Value::IntValue(n.as_i64().unwrap_or_default())
                }
                serde_json::Value::Number(n) => {
                    any_value::Value::DoubleValue(n.as_f64().unwrap_or_default())
                }
                other => any_value::Value::StringValue(other.to_string()),
            };
            attrs.push(kv(&k, value));
        }
    }
    let start_ns = (row.time_us as u64).saturating_mul(1000);
    let end_ns = start_ns + (row.latency_ms.unwrap_or(0.0) * 1e6) as u64;
    let name = match (kind, &row.model, &row.tool_name, &row.agent_id) {
        (EventKind::Tool, _, Some(t), _) => format!("execute_tool {t}"),
        (EventKind::Agent, _, _, Some(a)) => format!("invoke_agent {a}"),
        (_, Some(m), _, _) => format!("{operation} {m}"),
        _ => operation.clone(),
    };
    let error = row.status.as_deref() == Some("error");
    Span {
        trace_id: row.trace_id.as_deref().map(hex_bytes).unwrap_or_default(),
        span_id: row.span_id.as_deref().map(hex_bytes).unwrap_or_default(),
        name,
        kind: 3, // CLIENT
        start_time_unix_nano: start_ns,
        end_time_unix_nano: end_ns,
        attributes: attrs,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// One export request for `rows`, one `ResourceSpans` per service (as an SDK batches them).
pub fn traces_request(rows: &[EventRow]) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for row in rows {
        by_service
            .entry(row.service.as_deref().unwrap_or("unknown_service"))
            .or_default()
            .push(span_for(row));
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "vigil.synth".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// Reads event rows back out of a batch of [`crate::event_schema`], so that batches built by other stages'
/// generators can be sent over real OTLP. Rows without trace/span ids get ids derived from their `event_id`
/// (the OTLP round trip then gives them the id `trace_id‖span_id`).
pub fn rows_from_batch(batch: &arrow::array::RecordBatch) -> Vec<EventRow> {
    use crate::schema::col;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

    let text = |name: &str, i: usize| -> Option<String> {
        let c = batch.column_by_name(name)?.as_string_opt::<i32>()?;
        (!c.is_null(i)).then(|| c.value(i).to_string())
    };
    let int = |name: &str, i: usize| -> Option<i64> {
        let c = batch
            .column_by_name(name)?
            .as_primitive_opt::<Int64Type>()?;
        (!c.is_null(i)).then(|| c.value(i))
    };
    let time = batch
        .column_by_name(col::TIME)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned());
    let latency = batch
        .column_by_name(col::LATENCY_MS)
        .and_then(|c| c.as_primitive_opt::<Float64Type>().cloned());
    (0..batch.num_rows())
        .map(|i| {
            let event_id = text(col::EVENT_ID, i).unwrap_or_default();
            let trace_id = text(col::TRACE_ID, i).unwrap_or_else(|| {
                format!("{:032x}", xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()))
            });
            let span_id = text(col::SPAN_ID, i).unwrap_or_else(|| {
                format!("{:016x}", xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()))
            });
            EventRow {
                time_us: time.as_ref().map(|t| t.value(i)).unwrap_or_default(),
                event_id: format!("{trace_id}{span_id}"),
                kind: text(col::KIND, i).and_then(|k| EventKind::parse(&k)),
                service: text(col::SERVICE, i),
                source: text(col::SOURCE, i),
                user_id: text(col::USER_ID, i),
                user_role: text(col::USER_ROLE, i),
                department: text(col::DEPARTMENT, i),
                agent_id: text(col::AGENT_ID, i),
                conversation_id: text(col::CONVERSATION_ID, i),
                trace_id: Some(trace_id),
                span_id: Some(span_id),
                provider: text(col::PROVIDER, i),
                model: text(col::MODEL, i),
                response_model: text(col::RESPONSE_MODEL, i),
                endpoint: text(col::ENDPOINT, i),
                operation: text(col::OPERATION, i),
                input_tokens: int(col::INPUT_TOKENS, i),
                output_tokens: int(col::OUTPUT_TOKENS, i),
                latency_ms: latency
                    .as_ref()
                    .and_then(|l| (!l.is_null(i)).then(|| l.value(i))),
                status: text(col::STATUS, i),
                error_type: text(col::ERROR_TYPE, i),
                finish_reasons: text(col::FINISH_REASONS, i),
                tool_name: text(col::TOOL_NAME, i),
                data_source: text(col::DATA_SOURCE, i),
                policy_id: text(col::POLICY_ID, i),
                decision: text(col::DECISION, i),
                decision_reason: text(col::DECISION_REASON, i),
                prompt_text: text(col::PROMPT_TEXT, i),
                response_text: text(col::RESPONSE_TEXT, i),
                attributes: text(col::ATTRIBUTES, i),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{traces, NormalizeContext};
    use crate::EventBatchBuilder;

    #[test]
    fn rows_survive_batch_and_otlp_round_trips() {
        let row = EventRow {
            time_us: 1_767_225_600_000_000,
            event_id: "x".into(),
            kind: Some(EventKind::Tool),
            service: Some("svc".into()),
            user_id: Some("u@example.com".into()),
            user_role: Some("support".into()),
            agent_id: Some("support-bot".into()),
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            span_id: Some("b7ad6b7169203331".into()),
            tool_name: Some("search_kb".into()),
            data_source: Some("wiki".into()),
            operation: Some("execute_tool".into()),
            latency_ms: Some(12.5),
            status: Some("ok".into()),
            prompt_text: Some("{\"q\":\"vpn\"}".into()),
            response_text: Some("{\"hits\":1}".into()),
            ..Default::default()
        };
        let mut b = EventBatchBuilder::default();
        b.push(&row);
        let back = rows_from_batch(&b.finish());
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[0].event_id,
            "0af7651916cd43dd8448eb211c80319cb7ad6b7169203331"
        );
        let request = crate::wire::convert(&traces_request(&back)).expect("converts");
        let normalized = traces(&request, &NormalizeContext::default());
        let again = rows_from_batch(&normalized.batch);
        assert_eq!(again.len(), 1);
        let (a, b) = (&again[0], &back[0]);
        assert_eq!(
            (a.kind, &a.tool_name, &a.data_source, &a.agent_id),
            (b.kind, &b.tool_name, &b.data_source, &b.agent_id)
        );
        assert_eq!(
            (&a.user_id, &a.user_role, &a.prompt_text, &a.response_text),
            (&b.user_id, &b.user_role, &b.prompt_text, &b.response_text)
        );
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.time_us, b.time_us);
    }
}
