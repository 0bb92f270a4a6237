//! Prompt and response text out of the many shapes producers send: new-style message arrays (a JSON string or
//! an OTLP array of key-value lists), OpenLLMetry / OpenInference flattened messages, and plain strings.
//!
//! Content capture is opt-in at the source, so this only runs on records that carry content; it may allocate.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use serde_json::Value as Json;

use super::attrs::{text, Direction};

/// Appends the text of a message list (`gen_ai.input.messages`, `gen_ai.output.messages`,
/// `gen_ai.system_instructions`, old `gen_ai.prompt`) to `out`, one piece per line.
///
/// A string that is not JSON is taken as the text itself (some producers send plain text).
pub(crate) fn append_messages(out: &mut String, v: &AnyValue) {
    match v.value.as_ref() {
        Some(Value::StringValue(s)) => {
            let before = out.len();
            if let Ok(json @ (Json::Array(_) | Json::Object(_))) = serde_json::from_str::<Json>(s) {
                append_json_messages(out, &json);
            }
            // Not JSON, or JSON without any message text in it: the string is the text.
            if out.len() == before {
                push_line(out, s);
            }
        }
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => {
            append_json_messages(out, &to_json(v))
        }
        _ => {
            if let Some(t) = text(v) {
                push_line(out, &t);
            }
        }
    }
}

/// Text of a message, a part, or a list of either (`{role, parts:[{type:"text",content}]}`, `{role, content}`,
/// `{type:"text", content}`, `{type:"tool_call_response", response}`). Tool-call requests and media are left
/// out: they are not text a person or a model wrote.
fn append_json_messages(out: &mut String, json: &Json) {
    match json {
        Json::String(s) => push_line(out, s),
        Json::Array(items) => items
            .iter()
            .for_each(|item| append_json_messages(out, item)),
        Json::Object(map) => {
            if let Some(parts) = map.get("parts") {
                append_json_messages(out, parts);
                return;
            }
            match map.get("type").and_then(Json::as_str) {
                Some("text") | None => {}
                Some("tool_call_response") => {
                    if let Some(response) = map.get("response") {
                        append_scalar(out, response);
                    }
                    return;
                }
                Some(_) => return,
            }
            if let Some(content) = map.get("content").or_else(|| map.get("text")) {
                match content {
                    Json::Array(_) | Json::Object(_) => append_json_messages(out, content),
                    other => append_scalar(out, other),
                }
            }
        }
        _ => {}
    }
}

fn append_scalar(out: &mut String, v: &Json) {
    match v {
        Json::Null => {}
        Json::String(s) => push_line(out, s),
        other => push_line(out, &other.to_string()),
    }
}

fn push_line(out: &mut String, s: &str) {
    if s.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(s);
}

/// An OTLP value as a `serde_json::Value` (for walking message structures).
pub(crate) fn to_json(v: &AnyValue) -> Json {
    match v.value.as_ref() {
        None | Some(Value::StringValueStrindex(_)) => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number)
        }
        Some(Value::BytesValue(b)) => Json::String(hex::encode(b)),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.iter().map(to_json).collect()),
        Some(Value::KvlistValue(kvs)) => Json::Object(
            kvs.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(Json::Null, to_json),
                    )
                })
                .collect(),
        ),
    }
}

/// Joins flattened message contents of one direction (already sorted by index), one per line.
pub(crate) fn join_indexed(
    indexed: &[(Direction, u32, &AnyValue)],
    direction: Direction,
) -> Option<String> {
    let mut out = String::new();
    for (_, _, v) in indexed.iter().filter(|(d, _, _)| *d == direction) {
        append_messages(&mut out, v);
    }
    (!out.is_empty()).then_some(out)
}

/// A tool call's arguments or result: strings as they are, structured values as JSON.
pub(crate) fn tool_payload(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        Value::StringValue(s) if !s.is_empty() => Some(s.clone()),
        Value::StringValue(_) => None,
        Value::ArrayValue(_) | Value::KvlistValue(_) => {
            let mut out = String::new();
            super::attrs::write_json(&mut out, v);
            Some(out)
        }
        _ => text(v).map(|t| t.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::attrs::test_values::*;
    use super::*;

    #[test]
    fn new_style_messages_as_json_string_keep_text_and_tool_results_only() {
        let v = s(
            r#"[{"role":"system","parts":[{"type":"text","content":"Be brief."}]},
            {"role":"user","parts":[{"type":"text","content":"Weather in Paris?"}]},
            {"role":"assistant","parts":[{"type":"tool_call","id":"c1","name":"weather","arguments":{"city":"Paris"}}]},
            {"role":"tool","parts":[{"type":"tool_call_response","id":"c1","response":"rainy, 57F"}]}]"#,
        );
        let mut out = String::new();
        append_messages(&mut out, &v);
        assert_eq!(out, "Be brief.\nWeather in Paris?\nrainy, 57F");
    }

    #[test]
    fn new_style_messages_as_otlp_array_and_plain_strings() {
        let v = arr(vec![map(vec![
            kv("role", s("assistant")),
            kv(
                "parts",
                arr(vec![map(vec![
                    kv("type", s("text")),
                    kv("content", s("It rains.")),
                ])]),
            ),
            kv("finish_reason", s("stop")),
        ])]);
        let mut out = String::new();
        append_messages(&mut out, &v);
        append_messages(&mut out, &s("not json at all"));
        append_messages(&mut out, &s(r#"[{"role":"user","content":"old shape"}]"#));
        assert_eq!(out, "It rains.\nnot json at all\nold shape");
    }
}
