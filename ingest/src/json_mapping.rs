//! OTLP/JSON in the forms the generic protobuf JSON mapping allows and `opentelemetry_proto`'s serde types
//! refuse: enum values by name (`"kind":"SPAN_KIND_CLIENT"`) and empty lists written as an empty message
//! (`{"arrayValue":{}}`, which protobuf JSON encoders such as Python's `json_format` produce for a tool
//! called without arguments). OTLP asks senders for integer enums, but a receiver that drops a whole batch
//! over it loses the AI spans next to the one that used a name.
//!
//! Only a body the typed parse refused comes here, so well-formed OTLP/JSON pays nothing.

use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::{Map, Value};

/// Rewrites `value` in place to the forms the typed parse accepts; returns whether anything changed (if
/// nothing did, the typed parse's error stands).
pub fn normalise(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = fix_object(map);
            for v in map.values_mut() {
                changed |= normalise(v);
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| normalise(v) | changed),
        _ => false,
    }
}

fn fix_object(map: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for (key, by_name) in [
        (
            "kind",
            (|s: &str| SpanKind::from_str_name(s).map(|e| e as i32)) as fn(&str) -> Option<i32>,
        ),
        ("code", |s| StatusCode::from_str_name(s).map(|e| e as i32)),
        ("severityNumber", |s| {
            SeverityNumber::from_str_name(s).map(|e| e as i32)
        }),
        ("aggregationTemporality", |s| {
            AggregationTemporality::from_str_name(s).map(|e| e as i32)
        }),
    ] {
        if let Some(Value::String(name)) = map.get(key) {
            if let Some(n) = by_name(name) {
                map.insert(key.to_string(), Value::from(n));
                changed = true;
            }
        }
    }
    for key in ["arrayValue", "kvlistValue"] {
        if let Some(Value::Object(list)) = map.get_mut(key) {
            if !list.contains_key("values") {
                list.insert("values".into(), Value::Array(Vec::new()));
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_become_numbers_and_empty_lists_get_their_values() {
        let mut v: Value = serde_json::from_str(
            r#"{"spans":[{"kind":"SPAN_KIND_CLIENT","status":{"code":"STATUS_CODE_ERROR"},
                "attributes":[{"key":"kind","value":{"kvlistValue":{}}},{"key":"a","value":{"arrayValue":{}}}]}],
                "logRecords":[{"severityNumber":"SEVERITY_NUMBER_WARN"}]}"#,
        )
        .unwrap();
        assert!(normalise(&mut v));
        let span = &v["spans"][0];
        assert_eq!(span["kind"], 3);
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(
            span["attributes"][0]["key"], "kind",
            "a key's value is data, not an enum"
        );
        assert_eq!(
            span["attributes"][0]["value"]["kvlistValue"]["values"],
            Value::Array(vec![])
        );
        assert_eq!(
            span["attributes"][1]["value"]["arrayValue"]["values"],
            Value::Array(vec![])
        );
        assert_eq!(v["logRecords"][0]["severityNumber"], 13);
        // An unknown name is left for the typed parse to refuse.
        let mut v: Value = serde_json::from_str(r#"{"kind":"SPAN_KIND_BOGUS"}"#).unwrap();
        assert!(!normalise(&mut v));
    }
}
