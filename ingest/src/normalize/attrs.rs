//! Attribute lookup in one pass: every key we understand lands in a fixed slot, so that resolving a column
//! is an array index instead of a scan, and the attributes left over can be written as JSON without a map.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::schema::{ANCESTOR_SPAN_ID, PROMPT_TOOL_RESULTS};
use crate::wire::any_value::Value;
use crate::wire::{AnyValue, KeyValue};

/// Attribute keys mapped to columns or used for classification. `slot_of` is the only place that spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Slot {
    VigilKind,
    LangfuseType,
    OiSpanKind,
    OperationName,
    TraceloopKind,
    LlmRequestType,
    EventName,
    ServiceName,
    ServiceNamespace,
    UserId,
    EnduserId,
    UserRoles,
    EnduserRole,
    Department,
    UserDepartment,
    EnduserDepartment,
    AgentId,
    AgentName,
    OiAgentName,
    ConversationId,
    SessionId,
    ProviderName,
    GenAiSystem,
    LlmProvider,
    LlmSystem,
    RequestModel,
    LlmModelName,
    ResponseModel,
    ServerAddress,
    ServerPort,
    UrlFull,
    InputTokens,
    PromptTokens,
    LlmPromptTokens,
    OutputTokens,
    CompletionTokens,
    LlmCompletionTokens,
    OperationDuration,
    LatencyMs,
    ErrorType,
    FinishReasons,
    ToolName,
    OiToolName,
    ToolCallArguments,
    ToolCallResult,
    InputValue,
    OutputValue,
    DataSource,
    SecurityPolicyId,
    GuardrailPolicyId,
    PolicyId,
    VerdictType,
    GuardrailDecision,
    VerdictReason,
    SystemInstructions,
    InputMessages,
    OutputMessages,
    Prompt,
    Completion,
    /// Vigil's own record of which parts of the prompt tools returned: never taken from a sender.
    PromptToolResults,
    /// Vigil's own link from a tool call to the span its agent is expected under: never taken from a sender.
    AncestorSpanId,
    /// Not a key: the number of slots.
    Count,
}

pub(crate) const SLOT_COUNT: usize = Slot::Count as usize;
const _: () = assert!(SLOT_COUNT <= 128, "the used-slot bitset is a u128");

/// Slots that feed a column but stay in `attributes` too, because they carry a fact the column does not
/// (the agent's name when `agent_id` is its id, or a name used only as a fallback id).
const KEEP_IN_ATTRIBUTES: u128 = (1 << Slot::AgentName as u8) | (1 << Slot::OiAgentName as u8);

/// Keys Vigil writes itself: a sender's copy is dropped, so that it cannot make a prompt's injection look as
/// if a tool had returned it, nor put its tool call under another agent's allowlist.
const NEVER_KEPT: u128 = (1 << Slot::PromptToolResults as u8) | (1 << Slot::AncestorSpanId as u8);

pub(crate) fn slot_of(key: &str) -> Option<Slot> {
    use Slot::*;
    Some(match key {
        "vigil.event.kind" => VigilKind,
        "langfuse.observation.type" => LangfuseType,
        "openinference.span.kind" => OiSpanKind,
        "gen_ai.operation.name" => OperationName,
        "traceloop.span.kind" => TraceloopKind,
        "llm.request.type" => LlmRequestType,
        "event.name" => EventName,
        "service.name" => ServiceName,
        "service.namespace" => ServiceNamespace,
        "user.id" => UserId,
        "enduser.id" => EnduserId,
        "user.roles" => UserRoles,
        "enduser.role" => EnduserRole,
        "department" => Department,
        "user.department" => UserDepartment,
        "enduser.department" => EnduserDepartment,
        "gen_ai.agent.id" => AgentId,
        "gen_ai.agent.name" => AgentName,
        "agent.name" => OiAgentName,
        "gen_ai.conversation.id" => ConversationId,
        "session.id" => SessionId,
        "gen_ai.provider.name" => ProviderName,
        "gen_ai.system" => GenAiSystem,
        "llm.provider" => LlmProvider,
        "llm.system" => LlmSystem,
        "gen_ai.request.model" => RequestModel,
        "llm.model_name" => LlmModelName,
        "gen_ai.response.model" => ResponseModel,
        "server.address" => ServerAddress,
        "server.port" => ServerPort,
        "url.full" => UrlFull,
        "gen_ai.usage.input_tokens" => InputTokens,
        "gen_ai.usage.prompt_tokens" => PromptTokens,
        "llm.token_count.prompt" => LlmPromptTokens,
        "gen_ai.usage.output_tokens" => OutputTokens,
        "gen_ai.usage.completion_tokens" => CompletionTokens,
        "llm.token_count.completion" => LlmCompletionTokens,
        "gen_ai.client.operation.duration" => OperationDuration,
        "latency_ms" => LatencyMs,
        "error.type" => ErrorType,
        "gen_ai.response.finish_reasons" => FinishReasons,
        "gen_ai.tool.name" => ToolName,
        "tool.name" => OiToolName,
        "gen_ai.tool.call.arguments" => ToolCallArguments,
        "gen_ai.tool.call.result" => ToolCallResult,
        "input.value" => InputValue,
        "output.value" => OutputValue,
        "gen_ai.data_source.id" => DataSource,
        "gen_ai.guardrail.security.policy.id" => SecurityPolicyId,
        "gen_ai.guardrail.policy.id" => GuardrailPolicyId,
        "policy.id" => PolicyId,
        "gen_ai.guardrail.verdict.type" => VerdictType,
        "gen_ai.guardrail.decision" => GuardrailDecision,
        "gen_ai.guardrail.verdict.reason" => VerdictReason,
        "gen_ai.system_instructions" => SystemInstructions,
        "gen_ai.input.messages" => InputMessages,
        "gen_ai.output.messages" => OutputMessages,
        "gen_ai.prompt" => Prompt,
        "gen_ai.completion" => Completion,
        PROMPT_TOOL_RESULTS => PromptToolResults,
        ANCESTOR_SPAN_ID => AncestorSpanId,
        _ => return None,
    })
}

/// Which way an indexed message attribute goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Direction {
    Input,
    Output,
}

/// One flattened message attribute (`gen_ai.prompt.{i}.content`, `llm.input_messages.{i}.message.role`, ...).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexedKey {
    pub direction: Direction,
    pub index: u32,
    /// `content` (true) or `role` (false); other fields (tool calls, ...) are not indexed keys.
    pub is_content: bool,
}

/// Recognises the flattened message attributes of OpenLLMetry (`gen_ai.prompt.{i}.content|role`,
/// `gen_ai.completion.{i}.content|role`) and OpenInference (`llm.{input,output}_messages.{i}.message.content|role`).
pub(crate) fn indexed_of(key: &str) -> Option<IndexedKey> {
    let (direction, rest, field_prefix) = if let Some(rest) = key.strip_prefix("gen_ai.prompt.") {
        (Direction::Input, rest, "")
    } else if let Some(rest) = key.strip_prefix("gen_ai.completion.") {
        (Direction::Output, rest, "")
    } else if let Some(rest) = key.strip_prefix("llm.input_messages.") {
        (Direction::Input, rest, "message.")
    } else if let Some(rest) = key.strip_prefix("llm.output_messages.") {
        (Direction::Output, rest, "message.")
    } else {
        return None;
    };
    let (index, field) = rest.split_once('.')?;
    let index: u32 = index.parse().ok()?;
    let is_content = match field.strip_prefix(field_prefix)? {
        "content" => true,
        "role" => false,
        _ => return None,
    };
    Some(IndexedKey {
        direction,
        index,
        is_content,
    })
}

/// The attributes of one span, log record or resource, sorted into slots.
#[derive(Debug)]
pub(crate) struct Attrs<'a> {
    kvs: &'a [KeyValue],
    slots: [Option<&'a AnyValue>; SLOT_COUNT],
    /// Flattened message contents `(direction, index, content)`; empty (no allocation) for most spans.
    pub indexed: Vec<(Direction, u32, &'a AnyValue)>,
    /// The flattened messages whose role is `tool`, sorted.
    pub tool_messages: Vec<(Direction, u32)>,
    /// Some key starts with `gen_ai.guardrail.`.
    pub has_guardrail: bool,
    /// Some key starts with `gen_ai.endpoint.`.
    pub has_endpoint: bool,
}

impl<'a> Attrs<'a> {
    pub fn empty() -> Self {
        Self::collect(&[])
    }

    pub fn collect(kvs: &'a [KeyValue]) -> Self {
        let mut this = Attrs {
            kvs,
            slots: [None; SLOT_COUNT],
            indexed: Vec::new(),
            tool_messages: Vec::new(),
            has_guardrail: false,
            has_endpoint: false,
        };
        for kv in kvs {
            let Some(value) = kv.value.as_ref() else {
                continue;
            };
            let key: &str = &kv.key;
            if let Some(slot) = slot_of(key) {
                // The first occurrence of a duplicated key wins.
                this.slots[slot as usize].get_or_insert(value);
            } else if let Some(ix) = indexed_of(key) {
                if ix.is_content {
                    this.indexed.push((ix.direction, ix.index, value));
                } else if text(value).is_some_and(|role| super::content::is_tool_role(&role)) {
                    this.tool_messages.push((ix.direction, ix.index));
                }
            }
            if key.starts_with("gen_ai.") {
                this.has_guardrail |= key.starts_with("gen_ai.guardrail.");
                this.has_endpoint |= key.starts_with("gen_ai.endpoint.");
            }
        }
        this.indexed.sort_by_key(|&(_, index, _)| index);
        // Looked up once per indexed message: sorted, so a hostile span's many roles cost a log each.
        this.tool_messages.sort_unstable();
        this
    }

    pub fn get(&self, slot: Slot) -> Option<&'a AnyValue> {
        self.slots[slot as usize].filter(|v| !is_empty(v))
    }

    pub fn has(&self, slot: Slot) -> bool {
        self.get(slot).is_some()
    }

    pub fn str(&self, slot: Slot) -> Option<&'a str> {
        match self.get(slot)?.value.as_ref()? {
            Value::StringValue(s) => Some(&**s),
            _ => None,
        }
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.kvs.iter().any(|kv| kv.key == key)
    }
}

fn is_empty(v: &AnyValue) -> bool {
    match &v.value {
        None => true,
        Some(Value::StringValue(s)) => s.is_empty(),
        Some(Value::ArrayValue(a)) => a.values.is_empty(),
        _ => false,
    }
}

/// Resolves columns from a record's own attributes first and its resource's second, remembering which
/// slots were used so that they are left out of the `attributes` JSON.
pub(crate) struct Lookup<'a, 'r> {
    pub own: &'r Attrs<'a>,
    pub res: &'r Attrs<'a>,
    own_used: u128,
    res_used: u128,
    /// Flattened message contents of these directions went into a column.
    pub indexed_input_used: bool,
    pub indexed_output_used: bool,
    /// The parts of the row's `prompt_text` that tools returned, written as [`PROMPT_TOOL_RESULTS`].
    pub prompt_tool_ranges: super::content::ToolRanges,
    /// Written as [`ANCESTOR_SPAN_ID`].
    pub ancestor_span_id: Option<String>,
}

impl<'a, 'r> Lookup<'a, 'r> {
    pub fn new(own: &'r Attrs<'a>, res: &'r Attrs<'a>) -> Self {
        Self {
            own,
            res,
            own_used: 0,
            res_used: 0,
            indexed_input_used: false,
            indexed_output_used: false,
            prompt_tool_ranges: Vec::new(),
            ancestor_span_id: None,
        }
    }

    /// The first present slot among `slots` in the record's own attributes, else in the resource's.
    pub fn value(&mut self, slots: &[Slot]) -> Option<&'a AnyValue> {
        self.own_value(slots).or_else(|| {
            let (slot, v) = slots
                .iter()
                .find_map(|&s| self.res.get(s).map(|v| (s, v)))?;
            self.res_used |= 1 << slot as u8;
            Some(v)
        })
    }

    /// Like [`Lookup::value`] but never falls back to the resource (content, classification).
    pub fn own_value(&mut self, slots: &[Slot]) -> Option<&'a AnyValue> {
        let (slot, v) = slots
            .iter()
            .find_map(|&s| self.own.get(s).map(|v| (s, v)))?;
        self.own_used |= 1 << slot as u8;
        Some(v)
    }

    /// The first of `slots` present as text, borrowed from the request when it is a string.
    pub fn text(&mut self, slots: &[Slot]) -> Option<Cow<'a, str>> {
        self.value(slots).and_then(text)
    }

    pub fn int(&mut self, slots: &[Slot]) -> Option<i64> {
        // Only consume an attribute that really held a number.
        let own = slots
            .iter()
            .find_map(|&s| self.own.get(s).and_then(int).map(|n| (s, n)));
        if let Some((s, n)) = own {
            self.own_used |= 1 << s as u8;
            return Some(n);
        }
        let (s, n) = slots
            .iter()
            .find_map(|&s| self.res.get(s).and_then(int).map(|n| (s, n)))?;
        self.res_used |= 1 << s as u8;
        Some(n)
    }

    pub fn mark_own(&mut self, slot: Slot) {
        self.own_used |= 1 << slot as u8;
    }

    fn own_consumed(&self, key: &str) -> bool {
        if let Some(slot) = slot_of(key) {
            let bit = 1u128 << slot as u8;
            return NEVER_KEPT & bit != 0
                || self.own_used & bit != 0 && KEEP_IN_ATTRIBUTES & bit == 0;
        }
        match indexed_of(key) {
            Some(ix) => match ix.direction {
                Direction::Input => self.indexed_input_used,
                Direction::Output => self.indexed_output_used,
            },
            None => false,
        }
    }

    fn res_consumed(&self, slot: Slot) -> bool {
        let bit = 1u128 << slot as u8;
        NEVER_KEPT & bit != 0 || self.res_used & bit != 0 && KEEP_IN_ATTRIBUTES & bit == 0
    }

    /// The `attributes` column: every own and resource attribute that did not go into a column, as one
    /// compact JSON object (own attributes win over a resource attribute of the same key). `None` when empty.
    pub fn attributes_json(
        &self,
        resource: &ResourceJson<'a>,
        extra: &[(&str, &str)],
    ) -> Option<String> {
        self.attributes_json_with(resource, extra, &[])
    }

    /// [`Lookup::attributes_json`] plus `carried`: attributes of a span event that belong to the span (a
    /// guardrail finding's risk category and score), kept where the record's own keys do not hide them.
    pub fn attributes_json_with(
        &self,
        resource: &ResourceJson<'a>,
        extra: &[(&str, &str)],
        carried: &[&KeyValue],
    ) -> Option<String> {
        // A record's own key shadows the same key from the resource. Looking each one up by a scan of the
        // record's attributes is quadratic: a body of 50,000 attributes on each side took seconds per record.
        let own_keys: Option<std::collections::HashSet<&str>> =
            (self.own.kvs.len() > 16).then(|| self.own.kvs.iter().map(|kv| &*kv.key).collect());
        let own_has = |key: &str| match &own_keys {
            Some(keys) => keys.contains(key),
            None => self.own.has_key(key),
        };
        let mut out = JsonObject::default();
        if !self.prompt_tool_ranges.is_empty() {
            out.key(PROMPT_TOOL_RESULTS);
            let mut ranges = String::new();
            for r in &self.prompt_tool_ranges {
                if !ranges.is_empty() {
                    ranges.push(',');
                }
                let _ = write!(ranges, "{}..{}", r.start, r.end);
            }
            push_json_str(&mut out.buf, &ranges);
        }
        if let Some(id) = &self.ancestor_span_id {
            out.key(ANCESTOR_SPAN_ID);
            push_json_str(&mut out.buf, id);
        }
        for &(k, v) in extra {
            if !own_has(k) {
                out.key(k);
                push_json_str(&mut out.buf, v);
            }
        }
        for kv in self.own.kvs {
            let Some(value) = kv.value.as_ref() else {
                continue;
            };
            if self.own_consumed(&kv.key) {
                continue;
            }
            out.key(&kv.key);
            write_json(&mut out.buf, value);
        }
        for kv in carried {
            let Some(value) = kv.value.as_ref() else {
                continue;
            };
            if !own_has(&kv.key) {
                out.key(&kv.key);
                write_json(&mut out.buf, value);
            }
        }
        // What the record's own events carried is the record's, and hides the resource's too.
        let carried_has = |key: &str| carried.iter().any(|kv| &*kv.key == key);
        for (key, rendered) in &resource.unknown {
            if !own_has(key) && !carried_has(key) {
                out.key(key);
                out.buf.push_str(rendered);
            }
        }
        for kv in self.res.kvs {
            let Some(slot) = slot_of(&kv.key) else {
                continue;
            };
            let Some(value) = kv.value.as_ref() else {
                continue;
            };
            if self.res_consumed(slot) || own_has(&kv.key) || carried_has(&kv.key) {
                continue;
            }
            out.key(&kv.key);
            write_json(&mut out.buf, value);
        }
        out.finish()
    }
}

/// The resource attributes that never map to a column, rendered to JSON once per resource instead of once
/// per span.
#[derive(Debug, Default)]
pub(crate) struct ResourceJson<'a> {
    unknown: Vec<(&'a str, String)>,
}

impl<'a> ResourceJson<'a> {
    pub fn new(attrs: &Attrs<'a>) -> Self {
        let unknown = attrs
            .kvs
            .iter()
            .filter(|kv| slot_of(&kv.key).is_none())
            .filter_map(|kv| {
                let mut s = String::new();
                write_json(&mut s, kv.value.as_ref()?);
                Some((&*kv.key, s))
            })
            .collect();
        Self { unknown }
    }
}

#[derive(Default)]
struct JsonObject {
    buf: String,
}

impl JsonObject {
    fn key(&mut self, key: &str) {
        self.buf.push(if self.buf.is_empty() { '{' } else { ',' });
        push_json_str(&mut self.buf, key);
        self.buf.push(':');
    }

    fn finish(mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        self.buf.push('}');
        Some(self.buf)
    }
}

/// A scalar attribute as text; arrays become comma-joined, maps and bytes become JSON. `None` for empty.
pub(crate) fn text(v: &AnyValue) -> Option<Cow<'_, str>> {
    Some(match v.value.as_ref()? {
        Value::StringValue(s) if s.is_empty() => return None,
        Value::StringValue(s) => Cow::Borrowed(&**s),
        Value::BoolValue(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::IntValue(i) => Cow::Owned(i.to_string()),
        Value::DoubleValue(d) => Cow::Owned(d.to_string()),
        Value::ArrayValue(a) => {
            let mut out = String::new();
            for item in &a.values {
                if let Some(t) = text(item) {
                    if !out.is_empty() {
                        out.push(',');
                    }
                    out.push_str(&t);
                }
            }
            if out.is_empty() {
                return None;
            }
            Cow::Owned(out)
        }
        Value::KvlistValue(_) | Value::BytesValue(_) => {
            let mut out = String::new();
            write_json(&mut out, v);
            Cow::Owned(out)
        }
        Value::StringValueStrindex(_) => return None,
    })
}

/// An integer attribute; numeric strings (OTLP/JSON writes int64 as strings) and whole doubles count.
pub(crate) fn int(v: &AnyValue) -> Option<i64> {
    match v.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.is_finite() && d.fract() == 0.0 => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn float(v: &AnyValue) -> Option<f64> {
    match v.value.as_ref()? {
        Value::IntValue(i) => Some(*i as f64),
        Value::DoubleValue(d) if d.is_finite() => Some(*d),
        Value::StringValue(s) => s.trim().parse().ok().filter(|d: &f64| d.is_finite()),
        _ => None,
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends an OTLP value as JSON: ints and doubles as numbers (non-finite doubles as null), bytes as a hex
/// string, arrays and key-value lists as arrays and objects.
pub(crate) fn write_json(out: &mut String, v: &AnyValue) {
    match &v.value {
        None | Some(Value::StringValueStrindex(_)) => out.push_str("null"),
        Some(Value::StringValue(s)) => push_json_str(out, s),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::DoubleValue(d)) if d.is_finite() => {
            let _ = write!(out, "{d}");
        }
        Some(Value::DoubleValue(_)) => out.push_str("null"),
        Some(Value::BytesValue(b)) => {
            out.push('"');
            out.push_str(&hex::encode(b));
            out.push('"');
        }
        Some(Value::ArrayValue(a)) => {
            out.push('[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Some(Value::KvlistValue(kvs)) => {
            out.push('{');
            let mut first = true;
            for kv in &kvs.values {
                if !first {
                    out.push(',');
                }
                first = false;
                push_json_str(out, &kv.key);
                out.push(':');
                match &kv.value {
                    Some(v) => write_json(out, v),
                    None => out.push_str("null"),
                }
            }
            out.push('}');
        }
    }
}

/// Lowercase hex of an OTLP trace or span id; `None` for an absent or all-zero (invalid) id.
pub(crate) fn hex_id(bytes: &[u8]) -> Option<String> {
    if bytes.iter().all(|&b| b == 0) {
        return None;
    }
    Some(to_hex(bytes))
}

/// Lowercase hex, as `hex::encode` writes it, through its table-driven `encode_to_slice`: `hex::encode`
/// collects chars one at a time, and two ids per span made that measurable at full ingest rate.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    match hex::encode_to_slice(bytes, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => hex::encode(bytes),
    }
}

#[cfg(test)]
pub(crate) mod test_values {
    //! Builders for OTLP values in tests.
    use super::*;
    use crate::wire::{ArrayValue, KeyValueList};

    pub fn s(v: &str) -> AnyValue {
        AnyValue {
            value: Some(Value::StringValue(v.into())),
        }
    }
    pub fn i(v: i64) -> AnyValue {
        AnyValue {
            value: Some(Value::IntValue(v)),
        }
    }
    pub fn d(v: f64) -> AnyValue {
        AnyValue {
            value: Some(Value::DoubleValue(v)),
        }
    }
    pub fn arr(values: Vec<AnyValue>) -> AnyValue {
        AnyValue {
            value: Some(Value::ArrayValue(ArrayValue { values })),
        }
    }
    pub fn map(values: Vec<KeyValue>) -> AnyValue {
        AnyValue {
            value: Some(Value::KvlistValue(KeyValueList { values })),
        }
    }
    pub fn kv(key: &str, value: AnyValue) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_values::*;
    use super::*;

    #[test]
    fn ids_are_lowercase_hex_and_all_zero_ids_are_absent() {
        let id = [0x00, 0xab, 0x7f, 0xff, 0x10, 0x02, 0xc3, 0x9e];
        assert_eq!(hex_id(&id).as_deref(), Some(hex::encode(id).as_str()));
        assert_eq!(hex_id(&id).as_deref(), Some("00ab7fff1002c39e"));
        assert_eq!(hex_id(&[0; 16]), None);
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn values_render_as_compact_json_with_escapes() {
        let v = map(vec![
            kv("s", s("a\"b\\c\n\u{1}é")),
            kv("n", i(-3)),
            kv("f", d(0.5)),
            kv("nan", d(f64::NAN)),
            kv("list", arr(vec![s("x"), i(2)])),
            kv(
                "bytes",
                AnyValue {
                    value: Some(Value::BytesValue(bytes::Bytes::from_static(&[0xab, 0x01]))),
                },
            ),
        ]);
        let mut out = String::new();
        write_json(&mut out, &v);
        assert_eq!(
            out,
            r#"{"s":"a\"b\\c\n\u0001é","n":-3,"f":0.5,"nan":null,"list":["x",2],"bytes":"ab01"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed["s"], "a\"b\\c\n\u{1}é");
    }

    #[test]
    fn indexed_message_keys_of_both_conventions_are_recognised() {
        let ix = indexed_of("gen_ai.prompt.12.content").expect("openllmetry prompt");
        assert_eq!(
            (ix.direction, ix.index, ix.is_content),
            (Direction::Input, 12, true)
        );
        let ix = indexed_of("llm.output_messages.0.message.role").expect("openinference output");
        assert_eq!(
            (ix.direction, ix.index, ix.is_content),
            (Direction::Output, 0, false)
        );
        assert!(indexed_of("gen_ai.completion.0.finish_reason").is_none());
        assert!(indexed_of("llm.input_messages.0.content").is_none());
        assert!(indexed_of("gen_ai.prompt").is_none());
    }

    #[test]
    fn lookup_prefers_own_attributes_then_resource_and_leaves_unused_ones_in_json() {
        let own_kvs = vec![
            kv("enduser.id", s("bob")),
            kv("custom", i(1)),
            kv("host.name", s("span-host")),
        ];
        let res_kvs = vec![
            kv("user.id", s("alice")),
            kv("host.name", s("res-host")),
            kv("service.name", s("svc")),
        ];
        let own = Attrs::collect(&own_kvs);
        let res = Attrs::collect(&res_kvs);
        let res_json = ResourceJson::new(&res);
        let mut look = Lookup::new(&own, &res);
        assert_eq!(
            look.text(&[Slot::UserId, Slot::EnduserId]).as_deref(),
            Some("bob")
        );
        let json = look.attributes_json(&res_json, &[]).expect("non-empty");
        // The resource user.id was not used, so it stays; the span's host.name hides the resource's.
        assert_eq!(
            json,
            r#"{"custom":1,"host.name":"span-host","user.id":"alice","service.name":"svc"}"#
        );
    }
}
