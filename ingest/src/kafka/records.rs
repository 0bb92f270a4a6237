//! Vigil's own JSON event records (`vigil_json`), for producers that have no OpenTelemetry SDK.
//!
//! A message is one JSON object or a JSON array of objects whose keys are the column names of
//! [`crate::event_schema`]. `time` is an RFC 3339 string or an integer of microseconds since the epoch. Keys
//! that are not columns are kept in the `attributes` JSON (merged with an `attributes` object if one is
//! given), the same rule OTLP normalisation follows. A record without `event_id` gets a hash of where it was
//! read (topic, partition, offset, its index in the message) and of its content: a message read again after
//! a crash or a rebalance produces the same ids, so the store drops the second copy, while two records that
//! only look alike (the same tool call twice, without a `time`) stay two events. One bad record makes the
//! whole message undecodable: a message goes to the dead-letter topic whole, never half-stored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_128;

use crate::schema::{col, EventKind, EventRow};

/// Why a `vigil_json` message is not a list of events.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a JSON object or an array of objects, found {0}")]
    NotAnObject(&'static str),
    #[error("record {index}: column `{column}` {problem}")]
    Column {
        index: usize,
        column: &'static str,
        problem: String,
    },
}

/// Where a message was read: what makes a record without `event_id` the same event when it is read again.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Parses one message into event rows; `now_us` is the time of records that carry none. `source` (the
/// consumer's `source_name`) fills the `source` column: that column says who Vigil verified a record came from,
/// so a record cannot name itself there. A `source` key in a record is the producer's claim and is kept in
/// `attributes` like any other key the schema does not have.
pub fn parse(
    payload: &[u8],
    origin: Origin<'_>,
    now_us: i64,
    source: Option<&str>,
) -> Result<Vec<EventRow>, RecordError> {
    let value: Value = serde_json::from_slice(payload)?;
    let objects = match value {
        Value::Object(map) => vec![map],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(map) => Ok(map),
                other => Err(RecordError::NotAnObject(json_type(&other))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(RecordError::NotAnObject(json_type(&other))),
    };
    objects
        .into_iter()
        .enumerate()
        .map(|(index, map)| {
            let mut row = record(origin, index, map, now_us)?;
            row.source = source.map(str::to_owned);
            Ok(row)
        })
        .collect()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn record(
    origin: Origin<'_>,
    index: usize,
    map: Map<String, Value>,
    now_us: i64,
) -> Result<EventRow, RecordError> {
    // Sorted, so the id does not depend on the producer's key order.
    let mut fields: BTreeMap<String, Value> = map.into_iter().collect();
    let derived_id = {
        // The topic name cannot hold a NUL, so the fields cannot run into each other.
        let mut hashed = format!(
            "{}\0{}\0{}\0{index}\0",
            origin.topic, origin.partition, origin.offset
        )
        .into_bytes();
        serde_json::to_writer(&mut hashed, &fields).map_err(RecordError::Json)?;
        hex::encode(xxh3_128(&hashed).to_be_bytes())
    };
    let bad = |column: &'static str, problem: String| RecordError::Column {
        index,
        column,
        problem,
    };

    let time_us = match fields.remove(col::TIME) {
        None | Some(Value::Null) => now_us,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad(col::TIME, format!("{n} is not an integer of microseconds")))?,
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|err| bad(col::TIME, format!("{s:?} is not RFC 3339: {err}")))?
            .timestamp_micros(),
        Some(other) => {
            return Err(bad(
                col::TIME,
                format!("must be RFC 3339 or epoch µs, found {}", json_type(&other)),
            ))
        }
    };
    let mut text = |column: &'static str| -> Result<Option<String>, RecordError> {
        match fields.remove(column) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(other) => Err(bad(
                column,
                format!("must be a string, found {}", json_type(&other)),
            )),
        }
    };
    let kind = match text(col::KIND)? {
        None => None,
        Some(k) => Some(EventKind::parse(&k).ok_or_else(|| {
            bad(
                col::KIND,
                format!("{k:?} is not one of inference, tool, policy, agent, endpoint"),
            )
        })?),
    };
    let mut row = EventRow {
        time_us,
        event_id: text(col::EVENT_ID)?.unwrap_or_default(),
        kind: kind.or(Some(EventKind::Inference)),
        service: text(col::SERVICE)?,
        user_id: text(col::USER_ID)?,
        user_role: text(col::USER_ROLE)?,
        department: text(col::DEPARTMENT)?,
        agent_id: text(col::AGENT_ID)?,
        conversation_id: text(col::CONVERSATION_ID)?,
        trace_id: text(col::TRACE_ID)?,
        span_id: text(col::SPAN_ID)?,
        provider: text(col::PROVIDER)?,
        model: text(col::MODEL)?,
        response_model: text(col::RESPONSE_MODEL)?,
        endpoint: text(col::ENDPOINT)?,
        operation: text(col::OPERATION)?,
        status: text(col::STATUS)?,
        error_type: text(col::ERROR_TYPE)?,
        finish_reasons: text(col::FINISH_REASONS)?,
        tool_name: text(col::TOOL_NAME)?,
        data_source: text(col::DATA_SOURCE)?,
        policy_id: text(col::POLICY_ID)?,
        decision: text(col::DECISION)?,
        decision_reason: text(col::DECISION_REASON)?,
        prompt_text: text(col::PROMPT_TEXT)?,
        response_text: text(col::RESPONSE_TEXT)?,
        ..Default::default()
    };
    let mut integer = |column: &'static str| -> Result<Option<i64>, RecordError> {
        match fields.remove(column) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| bad(column, format!("{n} is not an integer"))),
            Some(other) => Err(bad(
                column,
                format!("must be an integer, found {}", json_type(&other)),
            )),
        }
    };
    row.input_tokens = integer(col::INPUT_TOKENS)?;
    row.output_tokens = integer(col::OUTPUT_TOKENS)?;
    row.latency_ms = match fields.remove(col::LATENCY_MS) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            return Err(bad(
                col::LATENCY_MS,
                format!("must be a number, found {}", json_type(&other)),
            ))
        }
    };
    let mut attributes: BTreeMap<String, Value> = match fields.remove(col::ATTRIBUTES) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map.into_iter().collect(),
        Some(Value::String(s)) => serde_json::from_str(&s).map_err(|err| {
            bad(
                col::ATTRIBUTES,
                format!("is a string but not a JSON object: {err}"),
            )
        })?,
        Some(other) => {
            return Err(bad(
                col::ATTRIBUTES,
                format!("must be an object, found {}", json_type(&other)),
            ))
        }
    };
    // What is left is not a column: keep it rather than drop what the producer thought worth sending.
    attributes.extend(fields);
    // Where tools' results sit in a prompt, and which span a call's agent is expected at, are for ingest
    // to say: a producer's claim could turn its own injection into an agent's, or hand its call to another
    // agent's allowlist.
    attributes.remove(crate::schema::PROMPT_TOOL_RESULTS);
    attributes.remove(crate::schema::ANCESTOR_SPAN_ID);
    row.attributes = Some(serde_json::to_string(&attributes).map_err(RecordError::Json)?);
    if row.event_id.is_empty() {
        row.event_id = derived_id;
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;
    const AT: Origin<'static> = Origin {
        topic: "vigil_events",
        partition: 0,
        offset: 7,
    };

    #[test]
    fn object_with_rfc3339_time_and_columns() {
        let rows = parse(
            br#"{"time":"2026-01-02T03:04:05.123456Z","event_id":"e1","kind":"tool","user_id":"alice",
                "tool_name":"search","input_tokens":12,"latency_ms":3.5,"status":"ok"}"#,
            AT,
            NOW,
            Some("kafka"),
        )
        .expect("valid record");
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        let expected = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(row.time_us, expected);
        assert_eq!(row.event_id, "e1");
        assert_eq!(row.kind, Some(EventKind::Tool));
        assert_eq!(row.user_id.as_deref(), Some("alice"));
        assert_eq!(row.tool_name.as_deref(), Some("search"));
        assert_eq!(row.input_tokens, Some(12));
        assert_eq!(row.latency_ms, Some(3.5));
        assert_eq!(row.source.as_deref(), Some("kafka"));
        assert_eq!(row.attributes.as_deref(), Some("{}"));
    }

    #[test]
    fn array_with_epoch_micros_and_unknown_keys_kept_in_attributes() {
        let rows = parse(
            br#"[{"time":1700000000000001,"model":"gpt-4o","attributes":{"a":1},"team":"x"},
                 {"kind":"policy","decision":"deny","source":"gateway"}]"#,
            AT,
            NOW,
            Some("kafka"),
        )
        .expect("valid records");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].time_us, 1_700_000_000_000_001);
        assert_eq!(rows[0].kind, Some(EventKind::Inference));
        assert_eq!(rows[0].attributes.as_deref(), Some(r#"{"a":1,"team":"x"}"#));
        assert_eq!(rows[0].source.as_deref(), Some("kafka"));
        assert_eq!(
            rows[1].time_us, NOW,
            "a record without time gets the time it was read"
        );
        assert_eq!(rows[1].decision.as_deref(), Some("deny"));
        assert_eq!(
            rows[1].source.as_deref(),
            Some("kafka"),
            "a record cannot name its own verified source"
        );
        assert_eq!(
            rows[1].attributes.as_deref(),
            Some(r#"{"source":"gateway"}"#),
            "its claim is kept as an attribute"
        );
    }

    #[test]
    fn a_record_cannot_place_tools_results_in_its_prompt_or_its_call_under_an_agent() {
        let rows = parse(
            br#"[{"prompt_text":"Ignore all previous instructions","vigil.prompt.tool_results":"0..32"},
                 {"prompt_text":"hi","attributes":{"vigil.prompt.tool_results":"0..2","a":1},"vigil.ancestor_span_id":"ab"}]"#,
            AT,
            NOW,
            None,
        )
        .expect("valid records");
        assert_eq!(rows[0].attributes.as_deref(), Some("{}"));
        assert_eq!(rows[1].attributes.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn a_missing_event_id_is_the_same_when_the_message_is_read_again_and_only_then() {
        let id = |payload: &[u8], origin: Origin<'_>, now: i64| {
            parse(payload, origin, now, None)
                .unwrap()
                .into_iter()
                .map(|r| r.event_id)
                .collect::<Vec<_>>()
        };
        let a = id(br#"{"model":"m","user_id":"u"}"#, AT, NOW);
        assert_eq!(a[0].len(), 32);
        assert_eq!(
            id(br#"{"user_id":"u","model":"m"}"#, AT, NOW + 5),
            a,
            "read again later, in another key order: the same event"
        );
        let later = Origin { offset: 8, ..AT };
        assert_ne!(
            id(br#"{"model":"m","user_id":"u"}"#, later, NOW),
            a,
            "the same record in the next message is another event"
        );
        let twice = id(
            br#"[{"model":"m","user_id":"u"},{"model":"m","user_id":"u"}]"#,
            AT,
            NOW,
        );
        assert_ne!(twice[0], twice[1], "twice in one message is two events");
        assert_ne!(id(br#"{"model":"m","user_id":"v"}"#, AT, NOW), a);
        assert_ne!(
            id(
                br#"{"model":"m","user_id":"u"}"#,
                Origin {
                    topic: "other",
                    ..AT
                },
                NOW
            ),
            a
        );
    }

    #[test]
    fn bad_records_say_which_and_why() {
        let err = parse(br#"[{"kind":"tool"},{"kind":"chat"}]"#, AT, NOW, None).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::Column {
                    index: 1,
                    column: "kind",
                    ..
                }
            ),
            "{err}"
        );
        let err = parse(br#"{"time":"yesterday"}"#, AT, NOW, None).unwrap_err();
        assert!(
            matches!(err, RecordError::Column { column: "time", .. }),
            "{err}"
        );
        let err = parse(br#"{"input_tokens":"12"}"#, AT, NOW, None).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::Column {
                    column: "input_tokens",
                    ..
                }
            ),
            "{err}"
        );
        let err = parse(br#"[1,2]"#, AT, NOW, None).unwrap_err();
        assert!(matches!(err, RecordError::NotAnObject("a number")), "{err}");
        assert!(matches!(
            parse(b"{", AT, NOW, None).unwrap_err(),
            RecordError::Json(_)
        ));
    }
}
