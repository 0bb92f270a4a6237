use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as otel;
use opentelemetry_proto::tonic::logs::v1 as otel_logs;
use opentelemetry_proto::tonic::resource::v1::Resource as OtelResource;
use opentelemetry_proto::tonic::trace::v1 as otel_trace;
use prost::Message;

use super::*;

fn s(v: &str) -> otel::AnyValue {
    otel::AnyValue {
        value: Some(otel::any_value::Value::StringValue(v.into())),
    }
}

fn kv(key: &str, value: otel::AnyValue) -> otel::KeyValue {
    otel::KeyValue {
        key: key.into(),
        value: Some(value),
        key_strindex: 0,
    }
}

/// Every kind of value, nested, as attributes.
fn all_values() -> Vec<otel::KeyValue> {
    use otel::any_value::Value as V;
    let v = |value| otel::AnyValue { value: Some(value) };
    vec![
        kv("str", s("héllo")),
        kv("empty", s("")),
        kv("bool", v(V::BoolValue(false))),
        kv("int", v(V::IntValue(-7))),
        kv("double", v(V::DoubleValue(0.0))),
        kv("bytes", v(V::BytesValue(vec![0, 255]))),
        kv("strindex", v(V::StringValueStrindex(3))),
        kv(
            "array",
            v(V::ArrayValue(otel::ArrayValue {
                values: vec![s("a"), v(V::IntValue(1))],
            })),
        ),
        kv(
            "map",
            v(V::KvlistValue(otel::KeyValueList {
                values: vec![
                    kv("inner", s("x")),
                    kv("deeper", v(V::KvlistValue(Default::default()))),
                ],
            })),
        ),
        otel::KeyValue {
            key: "no value".into(),
            value: None,
            key_strindex: 0,
        },
    ]
}

fn traces() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![otel_trace::ResourceSpans {
            resource: Some(OtelResource {
                attributes: vec![kv("service.name", s("svc"))],
                dropped_attributes_count: 2,
                ..Default::default()
            }),
            scope_spans: vec![otel_trace::ScopeSpans {
                scope: Some(otel::InstrumentationScope {
                    name: "scope".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                spans: vec![otel_trace::Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    parent_span_id: vec![3; 8],
                    name: "chat gpt-4o".into(),
                    kind: 3,
                    start_time_unix_nano: 10,
                    end_time_unix_nano: 20,
                    attributes: all_values(),
                    events: vec![otel_trace::span::Event {
                        time_unix_nano: 15,
                        name: "gen_ai.content.prompt".into(),
                        attributes: vec![kv("gen_ai.prompt", s("hi"))],
                        dropped_attributes_count: 1,
                    }],
                    status: Some(otel_trace::Status {
                        message: "boom".into(),
                        code: 2,
                    }),
                    ..Default::default()
                }],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn logs() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![otel_logs::ResourceLogs {
            resource: None,
            scope_logs: vec![otel_logs::ScopeLogs {
                scope: None,
                log_records: vec![otel_logs::LogRecord {
                    time_unix_nano: 0,
                    observed_time_unix_nano: 99,
                    severity_number: 9,
                    severity_text: "INFO".into(),
                    body: Some(s("body")),
                    attributes: all_values(),
                    flags: 1,
                    trace_id: vec![4; 16],
                    span_id: vec![5; 8],
                    event_name: "gen_ai.user.message".into(),
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The wire form of a message that declares no fields beyond those read: what these types keep.
fn without_unread_fields(mut req: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
    for rs in &mut req.resource_spans {
        rs.schema_url.clear();
        if let Some(r) = &mut rs.resource {
            r.dropped_attributes_count = 0;
        }
        for ss in &mut rs.scope_spans {
            ss.schema_url.clear();
            if let Some(scope) = &mut ss.scope {
                scope.version.clear();
            }
            for span in &mut ss.spans {
                span.kind = 0;
                for event in &mut span.events {
                    event.time_unix_nano = 0;
                    event.dropped_attributes_count = 0;
                }
            }
        }
    }
    req
}

#[test]
fn a_span_decodes_with_every_field_normalisation_reads() {
    let req: TracesRequest = convert(&traces()).expect("decodes");
    let rs = &req.resource_spans[0];
    assert_eq!(
        rs.resource.as_ref().expect("resource").attributes[0].key,
        "service.name"
    );
    let ss = &rs.scope_spans[0];
    assert_eq!(ss.scope.as_ref().expect("scope").name, "scope");
    let span = &ss.spans[0];
    assert_eq!(&span.trace_id[..], &[1; 16]);
    assert_eq!(&span.span_id[..], &[2; 8]);
    assert_eq!(span.name, "chat gpt-4o");
    assert_eq!(
        (span.start_time_unix_nano, span.end_time_unix_nano),
        (10, 20)
    );
    assert_eq!(span.events[0].name, "gen_ai.content.prompt");
    assert_eq!(span.events[0].attributes[0].key, "gen_ai.prompt");
    let status = span.status.as_ref().expect("status");
    assert_eq!((status.message.as_str(), status.code), ("boom", 2));
    use any_value::Value as V;
    let values: Vec<_> = span
        .attributes
        .iter()
        .map(|kv| kv.value.clone().and_then(|v| v.value))
        .collect();
    assert_eq!(values[0], Some(V::StringValue("héllo".into())));
    assert_eq!(
        values[1],
        Some(V::StringValue("".into())),
        "an empty string is still set"
    );
    assert_eq!(
        values[2],
        Some(V::BoolValue(false)),
        "a oneof member at its default is still set"
    );
    assert_eq!(values[3], Some(V::IntValue(-7)));
    assert_eq!(values[4], Some(V::DoubleValue(0.0)));
    assert_eq!(
        values[5],
        Some(V::BytesValue(Bytes::from_static(&[0, 255])))
    );
    assert_eq!(values[6], Some(V::StringValueStrindex(3)));
    let Some(V::KvlistValue(map)) = &values[8] else {
        panic!("map: {:?}", values[8]);
    };
    assert_eq!(map.values[0].key, "inner");
    assert_eq!(values[9], None);
}

#[test]
fn encoding_these_types_gives_back_the_otlp_message_minus_the_fields_not_read() {
    let wire: TracesRequest = convert(&traces()).expect("decodes");
    let bytes = wire.encode_to_vec();
    assert_eq!(bytes.len(), wire.encoded_len());
    let back = ExportTraceServiceRequest::decode(&bytes[..]).expect("otlp decodes it");
    assert_eq!(back, without_unread_fields(traces()));

    let wire: LogsRequest = convert(&logs()).expect("decodes");
    let bytes = wire.encode_to_vec();
    assert_eq!(bytes.len(), wire.encoded_len());
    let back = ExportLogsServiceRequest::decode(&bytes[..]).expect("otlp decodes it");
    let mut expected = logs();
    let record = &mut expected.resource_logs[0].scope_logs[0].log_records[0];
    record.severity_number = 0;
    record.severity_text.clear();
    assert_eq!(record.flags, 1, "the trace flags are read");
    assert_eq!(back, expected);
}

#[test]
fn strings_and_ids_are_slices_of_the_body_not_copies() {
    let body = Bytes::from(traces().encode_to_vec());
    let range = body.as_ptr_range();
    let req = TracesRequest::decode(body.clone()).expect("decodes");
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    for slice in [
        span.name.as_bytes(),
        &span.trace_id,
        span.attributes[0].key.as_bytes(),
    ] {
        assert!(range.contains(&slice.as_ptr()), "{slice:?} was copied");
    }
}

#[test]
fn malformed_utf8_in_any_string_is_a_decode_error() {
    let mut bad = traces();
    let span = &mut bad.resource_spans[0].scope_spans[0].spans[0];
    // Same length as "chat gpt-4o", so the bytes can be swapped in the encoding.
    span.name = "XXXXXXXXXXX".into();
    let mut body = bad.encode_to_vec();
    break_utf8(&mut body, b"XXXXXXXXXXX");
    let err = TracesRequest::decode(Bytes::from(body)).expect_err("not UTF-8");
    assert!(err.to_string().contains("UTF-8"), "{err}");
    assert!(
        err.to_string().contains("Span.name"),
        "the field is named: {err}"
    );
}

#[test]
fn a_value_nested_past_the_recursion_limit_is_refused_not_a_stack_overflow() {
    let mut value = s("leaf");
    for _ in 0..200 {
        value = otel::AnyValue {
            value: Some(otel::any_value::Value::ArrayValue(otel::ArrayValue {
                values: vec![value],
            })),
        };
    }
    let mut req = traces();
    req.resource_spans[0].scope_spans[0].spans[0].attributes = vec![kv("deep", value)];
    let err = convert::<TracesRequest>(&req).expect_err("too deep");
    assert!(err.to_string().contains("recursion"), "{err}");
}

#[test]
fn repeated_array_members_merge_as_prost_does() {
    // Two `array_value` members of one AnyValue: protobuf merges them into one array.
    let one = |v: &str| otel::AnyValue {
        value: Some(otel::any_value::Value::ArrayValue(otel::ArrayValue {
            values: vec![s(v)],
        })),
    };
    let mut body = one("a").encode_to_vec();
    body.extend(one("b").encode_to_vec());
    let ours = AnyValue::decode(Bytes::from(body.clone())).expect("decodes");
    let theirs = otel::AnyValue::decode(&body[..]).expect("decodes");
    assert_eq!(ours, convert::<AnyValue>(&theirs).expect("converts"));
    let Some(any_value::Value::ArrayValue(a)) = ours.value else {
        panic!("array");
    };
    assert_eq!(a.values.len(), 2);
}

#[test]
fn a_malformed_field_that_is_not_read_is_skipped_not_parsed() {
    let mut req = traces();
    req.resource_spans[0].scope_spans[0].schema_url = "NOT-UTF8".into();
    let mut body = req.encode_to_vec();
    break_utf8(&mut body, b"NOT-UTF8");
    assert!(ExportTraceServiceRequest::decode(&body[..]).is_err());
    let ours = TracesRequest::decode(Bytes::from(body)).expect("schema_url is not declared");
    assert_eq!(ours, convert(&traces()).expect("converts"));
}
