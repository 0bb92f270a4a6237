//! The batch's columns, downcast once, and the readers every detector shares.

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::kernels::cmp::eq;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use vigil_ingest::schema::col;

/// The batch's columns, downcast once.
pub(super) struct Cols<'a> {
    pub(super) time: &'a arrow::array::PrimitiveArray<TimestampMicrosecondType>,
    pub(super) event_id: &'a StringArray,
    pub(super) service: &'a StringArray,
    pub(super) user: &'a StringArray,
    pub(super) role: &'a StringArray,
    pub(super) agent: &'a StringArray,
    pub(super) provider: &'a StringArray,
    pub(super) model: &'a StringArray,
    pub(super) response_model: &'a StringArray,
    pub(super) endpoint: &'a StringArray,
    pub(super) input_tokens: &'a Int64Array,
    pub(super) output_tokens: &'a Int64Array,
    pub(super) latency: &'a Float64Array,
    pub(super) finish: &'a StringArray,
    pub(super) tool: &'a StringArray,
    pub(super) data_source: &'a StringArray,
    pub(super) trace: &'a StringArray,
    pub(super) conversation: &'a StringArray,
    pub(super) span: &'a StringArray,
    pub(super) prompt: &'a StringArray,
    pub(super) response: &'a StringArray,
    /// Unmapped attributes as JSON: content from producers the normaliser does not know lands here.
    pub(super) attributes: Option<&'a StringArray>,
    pub(super) is_inference: BooleanArray,
    /// Content of an operation its span records (message events): not a request of its own.
    pub(super) is_content: BooleanArray,
    pub(super) is_tool: BooleanArray,
    pub(super) is_agent: BooleanArray,
    pub(super) is_policy: BooleanArray,
    pub(super) is_deny: BooleanArray,
    pub(super) is_error: BooleanArray,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ColumnError {
    #[error("column {0} missing or of the wrong type")]
    Missing(&'static str),
    #[error("comparing column {0}: {1}")]
    Compare(&'static str, arrow::error::ArrowError),
}

impl<'a> Cols<'a> {
    pub(super) fn new(b: &'a RecordBatch) -> Result<Self, ColumnError> {
        let s = |n: &'static str| {
            b.column_by_name(n)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or(ColumnError::Missing(n))
        };
        // Vectorised flags with arrow's comparison kernels; nulls compare as null (treated as false).
        let is = |n: &'static str, v: &str| -> Result<BooleanArray, ColumnError> {
            eq(s(n)?, &StringArray::new_scalar(v)).map_err(|e| ColumnError::Compare(n, e))
        };
        Ok(Self {
            time: b
                .column_by_name(col::TIME)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
                .ok_or(ColumnError::Missing(col::TIME))?,
            event_id: s(col::EVENT_ID)?,
            service: s(col::SERVICE)?,
            user: s(col::USER_ID)?,
            role: s(col::USER_ROLE)?,
            agent: s(col::AGENT_ID)?,
            provider: s(col::PROVIDER)?,
            model: s(col::MODEL)?,
            response_model: s(col::RESPONSE_MODEL)?,
            endpoint: s(col::ENDPOINT)?,
            input_tokens: b
                .column_by_name(col::INPUT_TOKENS)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or(ColumnError::Missing(col::INPUT_TOKENS))?,
            output_tokens: b
                .column_by_name(col::OUTPUT_TOKENS)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or(ColumnError::Missing(col::OUTPUT_TOKENS))?,
            latency: b
                .column_by_name(col::LATENCY_MS)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or(ColumnError::Missing(col::LATENCY_MS))?,
            finish: s(col::FINISH_REASONS)?,
            tool: s(col::TOOL_NAME)?,
            data_source: s(col::DATA_SOURCE)?,
            trace: s(col::TRACE_ID)?,
            conversation: s(col::CONVERSATION_ID)?,
            span: s(col::SPAN_ID)?,
            prompt: s(col::PROMPT_TEXT)?,
            response: s(col::RESPONSE_TEXT)?,
            attributes: s(col::ATTRIBUTES).ok(),
            is_inference: is(col::KIND, "inference")?,
            is_content: is(col::OPERATION, vigil_ingest::schema::CONTENT_OPERATION)?,
            is_tool: is(col::KIND, "tool")?,
            is_agent: is(col::KIND, "agent")?,
            is_policy: is(col::KIND, "policy")?,
            is_deny: is(col::DECISION, "deny")?,
            is_error: is(col::STATUS, "error")?,
        })
    }
}

pub(super) fn get(a: &StringArray, i: usize) -> Option<&str> {
    if a.is_null(i) {
        return None;
    }
    Some(a.value(i)).filter(|v| !v.is_empty())
}

pub(super) fn flag(a: &BooleanArray, i: usize) -> bool {
    a.is_valid(i) && a.value(i)
}

/// A token count as a cost: a missing or negative count adds nothing.
pub(super) fn tokens(a: &Int64Array, i: usize) -> f64 {
    if a.is_valid(i) {
        a.value(i).max(0) as f64
    } else {
        0.0
    }
}

/// Who did it: the user, else the agent, else the service.
pub(super) fn actor<'a>(c: &'a Cols, i: usize) -> (&'static str, &'a str) {
    if let Some(u) = get(c.user, i) {
        ("user", u)
    } else if let Some(a) = get(c.agent, i) {
        ("agent", a)
    } else {
        ("service", get(c.service, i).unwrap_or("unknown"))
    }
}

/// A text attribute that ingest wrote for detection into row `i`'s `attributes` JSON (a sender's own copy
/// is dropped there); the JSON is parsed only when it names the key.
pub(super) fn vigil_attribute(c: &Cols, i: usize, key: &str) -> Option<String> {
    let attributes = c.attributes.and_then(|a| get(a, i))?;
    if !attributes.contains(key) {
        return None;
    }
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(attributes).ok()?;
    match json.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}
