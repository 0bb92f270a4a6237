//! The columns every AI record fills the same way, whether it came as a span or a log record.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::wire::any_value::Value;
use crate::wire::{AnyValue, KeyValue};
use xxhash_rust::xxh3::Xxh3Default;

use super::attrs::{float, Direction, Lookup, Slot};
use super::classify::Classified;
use super::content::{append_messages_marking, join_indexed, tool_payload};
use super::Row;
use crate::schema::{EventKind, CONTENT_OPERATION};

/// Fills identity, model, usage, tool and guardrail columns from attributes (own first, resource second).
pub(crate) fn fill_common<'a>(row: &mut Row<'a>, look: &mut Lookup<'a, '_>, class: Classified) {
    use Slot::*;
    row.kind = Some(class.kind);
    row.service = look.text(&[ServiceName]);
    row.user_id = look.text(&[UserId, EnduserId]);
    row.user_role = look.text(&[UserRoles, EnduserRole]);
    row.department = look.text(&[
        Department,
        UserDepartment,
        EnduserDepartment,
        ServiceNamespace,
    ]);
    row.agent_id = look.text(&[AgentId, AgentName, OiAgentName]);
    row.conversation_id = look.text(&[ConversationId, SessionId]);
    row.provider = look.text(&[ProviderName, GenAiSystem, LlmProvider, LlmSystem]);
    row.response_model = look.text(&[ResponseModel]);
    row.model = look
        .text(&[RequestModel, LlmModelName])
        .or_else(|| row.response_model.clone());
    row.endpoint = endpoint(look);
    // `content` marks records the normaliser found to be part of another's call (see `logs.rs`); a sender
    // naming its own operation so would hide its calls from the request baselines.
    row.operation = look
        .text(&[OperationName])
        .filter(|op| op != CONTENT_OPERATION)
        .or_else(|| class.operation.map(Cow::Borrowed));
    row.input_tokens = look.int(&[InputTokens, PromptTokens, LlmPromptTokens]);
    row.output_tokens = look.int(&[OutputTokens, CompletionTokens, LlmCompletionTokens]);
    row.error_type = look.text(&[ErrorType]);
    row.finish_reasons = look.text(&[FinishReasons]);
    row.tool_name = look.text(&[ToolName, OiToolName]);
    row.data_source = look.text(&[DataSource]);
    row.policy_id = look.text(&[SecurityPolicyId, GuardrailPolicyId, PolicyId]);
    row.decision = look.text(&[VerdictType, GuardrailDecision]).map(|mut d| {
        if d.bytes().any(|b| b.is_ascii_uppercase()) {
            d.to_mut().make_ascii_lowercase();
        }
        d
    });
    row.decision_reason = look.text(&[VerdictReason]);
    fill_content(row, look, class.kind);
}

/// Latency from attributes, for records without a span's start and end: `gen_ai.client.operation.duration`
/// is in seconds (as the semconv metric of that name), `latency_ms` in milliseconds.
pub(crate) fn attribute_latency_ms(look: &mut Lookup<'_, '_>) -> Option<f64> {
    if let Some(seconds) = look.own.get(Slot::OperationDuration).and_then(float) {
        look.mark_own(Slot::OperationDuration);
        return Some(seconds * 1000.0);
    }
    let ms = look.own.get(Slot::LatencyMs).and_then(float)?;
    look.mark_own(Slot::LatencyMs);
    Some(ms)
}

/// `server.address[:server.port]`, else the host (and explicit port) of `url.full`. `url.full` itself stays
/// in `attributes`: its path says which API was called.
fn endpoint<'a>(look: &mut Lookup<'a, '_>) -> Option<Cow<'a, str>> {
    if let Some(mut address) = look.text(&[Slot::ServerAddress]) {
        if let Some(port) = look.int(&[Slot::ServerPort]) {
            let _ = write!(address.to_mut(), ":{port}");
        }
        return Some(address);
    }
    let url = look
        .own
        .str(Slot::UrlFull)
        .or_else(|| look.res.str(Slot::UrlFull))?;
    let uri: axum::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    Some(Cow::Owned(match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }))
}

/// Prompt and response text from the record's own attributes. For tools they are the call's arguments and
/// result; for everything else the first convention present wins: new-style messages (with system
/// instructions first), flattened OpenLLMetry/OpenInference messages, old `gen_ai.prompt`/`gen_ai.completion`
/// attributes, then OpenInference `input.value`/`output.value`.
fn fill_content<'a>(row: &mut Row<'a>, look: &mut Lookup<'a, '_>, kind: EventKind) {
    use Slot::*;
    if kind == EventKind::Tool {
        row.prompt_text = look
            .own_value(&[ToolCallArguments, InputValue])
            .and_then(tool_payload);
        row.response_text = look
            .own_value(&[ToolCallResult, OutputValue])
            .and_then(tool_payload);
        return;
    }
    let mut prompt = String::new();
    let mut tool = Vec::new();
    for slot in [SystemInstructions, InputMessages] {
        if let Some(v) = look.own_value(&[slot]) {
            append_messages_marking(&mut prompt, v, &mut tool);
        }
    }
    if prompt.is_empty() {
        let own = look.own;
        if let Some(text) = join_indexed(
            &own.indexed,
            Direction::Input,
            &own.tool_messages,
            &mut tool,
        ) {
            prompt = text;
            look.indexed_input_used = true;
        }
    }
    let mut prompt = non_empty(prompt).map(Cow::Owned);
    if prompt.is_none() {
        prompt = look
            .own_value(&[Prompt])
            .and_then(|v| messages_marking(v, &mut tool))
            .map(Cow::Owned);
    }
    if prompt.is_none() {
        prompt = look.own_value(&[InputValue]).and_then(tool_payload);
    }
    row.prompt_text = prompt;
    look.prompt_tool_ranges = tool;

    let mut response = look
        .own_value(&[OutputMessages])
        .and_then(messages)
        .map(Cow::Owned);
    if response.is_none() {
        response = join_indexed(&look.own.indexed, Direction::Output, &[], &mut Vec::new())
            .map(Cow::Owned);
        look.indexed_output_used = response.is_some();
    }
    if response.is_none() {
        response = look
            .own_value(&[Completion])
            .and_then(messages)
            .map(Cow::Owned);
    }
    if response.is_none() {
        response = look.own_value(&[OutputValue]).and_then(tool_payload);
    }
    row.response_text = response;
}

pub(crate) fn messages(v: &AnyValue) -> Option<String> {
    messages_marking(v, &mut Vec::new())
}

/// [`messages`] of a prompt, marking in `tool` what tools returned.
pub(crate) fn messages_marking(
    v: &AnyValue,
    tool: &mut super::content::ToolRanges,
) -> Option<String> {
    let mut out = String::new();
    append_messages_marking(&mut out, v, tool);
    non_empty(out)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `ok`, or `error` when the record failed; the error type falls back to `fallback_error` (a span's status
/// message).
pub(crate) fn fill_status<'a>(row: &mut Row<'a>, failed: bool, fallback_error: &'a str) {
    let failed = failed || row.error_type.is_some();
    if failed && row.error_type.is_none() && !fallback_error.is_empty() {
        row.error_type = Some(Cow::Borrowed(fallback_error));
    }
    row.status = Some(Cow::Borrowed(if failed { "error" } else { "ok" }));
}

/// A stable id for a record without a (trace id, span id) identity: 32 hex characters of xxh3-128 over
/// everything that makes the record what it is, so that a re-sent record gets the same id.
pub(crate) fn record_hash(
    trace_id: &[u8],
    span_id: &[u8],
    time_unix_nano: u64,
    name: &str,
    body: Option<&AnyValue>,
    attributes: &[KeyValue],
) -> String {
    let mut h = Xxh3Default::new();
    hash_bytes(&mut h, trace_id);
    hash_bytes(&mut h, span_id);
    h.update(&time_unix_nano.to_le_bytes());
    hash_bytes(&mut h, name.as_bytes());
    match body {
        Some(v) => hash_value(&mut h, v),
        None => h.update(&[0]),
    }
    hash_kvs(&mut h, attributes);
    format!("{:032x}", h.digest128())
}

fn hash_bytes(h: &mut Xxh3Default, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

fn hash_kvs(h: &mut Xxh3Default, kvs: &[KeyValue]) {
    h.update(&(kvs.len() as u64).to_le_bytes());
    for kv in kvs {
        hash_bytes(h, kv.key.as_bytes());
        match &kv.value {
            Some(v) => hash_value(h, v),
            None => h.update(&[0]),
        }
    }
}

/// Hashes a value with a type tag and length prefixes, so that different structures never collide by
/// concatenation (`["ab"]` vs `["a","b"]`).
fn hash_value(h: &mut Xxh3Default, v: &AnyValue) {
    match &v.value {
        None => h.update(&[0]),
        Some(Value::StringValue(s)) => {
            h.update(&[1]);
            hash_bytes(h, s.as_bytes());
        }
        Some(Value::BoolValue(b)) => h.update(&[2, u8::from(*b)]),
        Some(Value::IntValue(i)) => {
            h.update(&[3]);
            h.update(&i.to_le_bytes());
        }
        Some(Value::DoubleValue(d)) => {
            h.update(&[4]);
            h.update(&d.to_bits().to_le_bytes());
        }
        Some(Value::ArrayValue(a)) => {
            h.update(&[5]);
            h.update(&(a.values.len() as u64).to_le_bytes());
            a.values.iter().for_each(|item| hash_value(h, item));
        }
        Some(Value::KvlistValue(kvs)) => {
            h.update(&[6]);
            hash_kvs(h, &kvs.values);
        }
        Some(Value::BytesValue(b)) => {
            h.update(&[7]);
            hash_bytes(h, b);
        }
        Some(Value::StringValueStrindex(i)) => {
            h.update(&[8]);
            h.update(&i.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::attrs::test_values::*;
    use super::*;

    #[test]
    fn record_hash_is_stable_and_sensitive_to_structure() {
        let attrs = vec![kv("a", arr(vec![s("ab")]))];
        let id = record_hash(&[1; 16], &[2; 8], 5, "ev", Some(&s("body")), &attrs);
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(
            id,
            record_hash(&[1; 16], &[2; 8], 5, "ev", Some(&s("body")), &attrs)
        );
        let split = vec![kv("a", arr(vec![s("a"), s("b")]))];
        assert_ne!(
            id,
            record_hash(&[1; 16], &[2; 8], 5, "ev", Some(&s("body")), &split)
        );
        assert_ne!(
            id,
            record_hash(&[1; 16], &[2; 8], 6, "ev", Some(&s("body")), &attrs)
        );
        assert_ne!(
            id,
            record_hash(&[1; 16], &[2; 8], 5, "ev", Some(&s("other")), &attrs)
        );
    }
}
