//! The one Arrow schema every AI event is normalised into.
//!
//! Every later stage (detection, storage, SQL, dashboards) reads these columns by name, so the names are the
//! contract of the whole pipeline: change them only with a migration. Text columns are plain `Utf8` (not
//! dictionaries) so that the Parquet files stay readable by DuckDB/Spark and the PostgreSQL wire protocol
//! maps every column to a native type.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column names, so that no stage spells them by hand.
pub mod col {
    pub const TIME: &str = "time";
    pub const EVENT_ID: &str = "event_id";
    pub const KIND: &str = "kind";
    pub const SERVICE: &str = "service";
    pub const SOURCE: &str = "source";
    pub const USER_ID: &str = "user_id";
    pub const USER_ROLE: &str = "user_role";
    pub const DEPARTMENT: &str = "department";
    pub const AGENT_ID: &str = "agent_id";
    pub const CONVERSATION_ID: &str = "conversation_id";
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PROVIDER: &str = "provider";
    pub const MODEL: &str = "model";
    pub const RESPONSE_MODEL: &str = "response_model";
    pub const ENDPOINT: &str = "endpoint";
    pub const OPERATION: &str = "operation";
    pub const INPUT_TOKENS: &str = "input_tokens";
    pub const OUTPUT_TOKENS: &str = "output_tokens";
    pub const LATENCY_MS: &str = "latency_ms";
    pub const STATUS: &str = "status";
    pub const ERROR_TYPE: &str = "error_type";
    pub const FINISH_REASONS: &str = "finish_reasons";
    pub const TOOL_NAME: &str = "tool_name";
    pub const DATA_SOURCE: &str = "data_source";
    pub const POLICY_ID: &str = "policy_id";
    pub const DECISION: &str = "decision";
    pub const DECISION_REASON: &str = "decision_reason";
    pub const PROMPT_TEXT: &str = "prompt_text";
    pub const RESPONSE_TEXT: &str = "response_text";
    pub const ATTRIBUTES: &str = "attributes";
}

/// The `operation` of a record that carries part of an operation's content (an old-style message event,
/// or a `gen_ai.client.inference.operation.details` event of a span) rather than the operation itself:
/// the span is the request, so baselines do not count these as requests, tokens or latency again.
pub const CONTENT_OPERATION: &str = "content";

/// Where in `prompt_text` tools' results are, as byte ranges `start..end` (end exclusive) joined by commas,
/// in the `attributes` JSON: detection reads it to tell an injection planted in a tool's data (indirect)
/// from one the caller wrote, and it answers "how much of what our models read came from tools" in SQL.
/// Ingest writes offsets into the prompt as received; where detection masks sensitive data in the prompt
/// (`content_capture = "redacted"`), it moves them so that the stored ranges index the stored text.
pub const PROMPT_TOOL_RESULTS: &str = "vigil.prompt.tool_results";

/// For a tool call or retrieval that names no agent and whose agent span was not in its export: the span id
/// (hex) where its chain of parents left the export, in the `attributes` JSON. OpenTelemetry exports a span
/// when it ends, so an agent run longer than one export interval sends its tool calls before its own
/// `invoke_agent` span; detection holds such calls and judges them by the agent's allowlist when that span
/// arrives.
pub const ANCESTOR_SPAN_ID: &str = "vigil.ancestor_span_id";

/// What an event is. Stored as its lowercase name in the `kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An LLM call (chat, completion, embeddings, ...).
    Inference,
    /// An agent's tool execution.
    Tool,
    /// A guardrail or gateway decision (allow/deny/modify/...).
    Policy,
    /// An agent invocation or creation.
    Agent,
    /// Model-endpoint lifecycle or health (e.g. a model version change, a health probe).
    Endpoint,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Inference => "inference",
            EventKind::Tool => "tool",
            EventKind::Policy => "policy",
            EventKind::Agent => "agent",
            EventKind::Endpoint => "endpoint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "inference" => EventKind::Inference,
            "tool" => EventKind::Tool,
            "policy" => EventKind::Policy,
            "agent" => EventKind::Agent,
            "endpoint" => EventKind::Endpoint,
            _ => return None,
        })
    }
}

/// The Arrow schema of the `events` table. Built once; cheap to clone.
pub fn event_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new(
                    col::TIME,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                utf8(col::EVENT_ID, false),
                utf8(col::KIND, false),
                utf8(col::SERVICE, true),
                utf8(col::SOURCE, true),
                utf8(col::USER_ID, true),
                utf8(col::USER_ROLE, true),
                utf8(col::DEPARTMENT, true),
                utf8(col::AGENT_ID, true),
                utf8(col::CONVERSATION_ID, true),
                utf8(col::TRACE_ID, true),
                utf8(col::SPAN_ID, true),
                utf8(col::PROVIDER, true),
                utf8(col::MODEL, true),
                utf8(col::RESPONSE_MODEL, true),
                utf8(col::ENDPOINT, true),
                utf8(col::OPERATION, true),
                Field::new(col::INPUT_TOKENS, DataType::Int64, true),
                Field::new(col::OUTPUT_TOKENS, DataType::Int64, true),
                Field::new(col::LATENCY_MS, DataType::Float64, true),
                utf8(col::STATUS, true),
                utf8(col::ERROR_TYPE, true),
                utf8(col::FINISH_REASONS, true),
                utf8(col::TOOL_NAME, true),
                utf8(col::DATA_SOURCE, true),
                utf8(col::POLICY_ID, true),
                utf8(col::DECISION, true),
                utf8(col::DECISION_REASON, true),
                utf8(col::PROMPT_TEXT, true),
                utf8(col::RESPONSE_TEXT, true),
                utf8(col::ATTRIBUTES, true),
            ]))
        })
        .clone()
}

/// One normalised event before it joins a batch.
///
/// Only normalisation builds these (one per span or log record); every later stage works on
/// [`RecordBatch`]es. `event_id` is derived from the telemetry's own identity (trace id + span id, or a hash
/// of the log record) so that a replayed or re-sent record gets the same id and can be deduplicated.
///
/// Owned text: what generators, tests and the Kafka JSON records build.
pub type EventRow = EventRowOf<String>;

/// [`EventRow`] over any text type. Normalisation borrows columns straight from the decoded request
/// (`EventRowOf<Cow<str>>`): copying each attribute into an owned `String` first, only for the batch builder
/// to copy it again, cost an allocation and a copy per column of every event on the ingest path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventRowOf<S> {
    /// Microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    pub event_id: S,
    pub kind: Option<EventKind>,
    pub service: Option<S>,
    pub source: Option<S>,
    pub user_id: Option<S>,
    pub user_role: Option<S>,
    pub department: Option<S>,
    pub agent_id: Option<S>,
    pub conversation_id: Option<S>,
    /// 32 lowercase hex characters.
    pub trace_id: Option<S>,
    /// 16 lowercase hex characters.
    pub span_id: Option<S>,
    pub provider: Option<S>,
    /// The requested model (`gen_ai.request.model`).
    pub model: Option<S>,
    /// The model that actually answered (`gen_ai.response.model`): a change here is a silent version swap.
    pub response_model: Option<S>,
    /// `server.address[:server.port]` of the model endpoint.
    pub endpoint: Option<S>,
    pub operation: Option<S>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub latency_ms: Option<f64>,
    /// `ok` or `error`.
    pub status: Option<S>,
    pub error_type: Option<S>,
    /// Comma-separated `gen_ai.response.finish_reasons`.
    pub finish_reasons: Option<S>,
    pub tool_name: Option<S>,
    pub data_source: Option<S>,
    pub policy_id: Option<S>,
    /// Guardrail verdict: allow | deny | modify | warn | escalate | audit.
    pub decision: Option<S>,
    pub decision_reason: Option<S>,
    /// Text sent to the model (inference) or the tool call's arguments (tool).
    pub prompt_text: Option<S>,
    /// Text the model answered (inference) or the tool call's result (tool).
    pub response_text: Option<S>,
    /// Every attribute not mapped to a column, as a JSON object string.
    pub attributes: Option<S>,
}

/// Accumulates [`EventRow`]s column by column into a [`RecordBatch`] of [`event_schema`].
pub struct EventBatchBuilder {
    time: TimestampMicrosecondBuilder,
    strings: Vec<StringBuilder>,
    input_tokens: Int64Builder,
    output_tokens: Int64Builder,
    latency_ms: Float64Builder,
    len: usize,
}

/// The Utf8 columns in schema order, as accessors on a row. Keeps the builder and the schema in one place.
const STRING_COLUMNS_BEFORE_NUMBERS: usize = 16; // event_id .. operation
const STRING_COLUMNS_AFTER_NUMBERS: usize = 11; // status .. attributes

impl Default for EventBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

const STRING_COLUMNS: usize = STRING_COLUMNS_BEFORE_NUMBERS + STRING_COLUMNS_AFTER_NUMBERS;

/// Bytes per row each string column held in the batches built so far (a running average). Sizing a new
/// builder from it means a 500-byte prompt column is allocated once instead of doubled five times from a
/// guess (each doubling a copy and fresh pages), and the finished arrays do not carry up to twice their size
/// into the write buffer.
const MAX_RESERVED_COLUMN_BYTES: usize = 8 * 1024 * 1024;

/// Bytes to reserve for a column of `rows` rows at `per_row` bytes each, with a little headroom so a typical
/// batch does not grow at its last rows. Capped: the average follows what came before (one request of
/// 15 MB prompts made it 15 MB), and `rows` counts every span, AI or not; reserving their product aborted
/// the process. A column grows past the cap if it must.
fn reserved_bytes(rows: usize, per_row: usize) -> usize {
    rows.saturating_mul(per_row.saturating_add(per_row / 8))
        .min(MAX_RESERVED_COLUMN_BYTES)
}

static BYTES_PER_ROW: [AtomicUsize; STRING_COLUMNS] =
    [const { AtomicUsize::new(16) }; STRING_COLUMNS];

impl EventBatchBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        let strings = BYTES_PER_ROW
            .iter()
            .map(|per_row| {
                StringBuilder::with_capacity(
                    rows,
                    reserved_bytes(rows, per_row.load(Ordering::Relaxed)),
                )
            })
            .collect();
        Self {
            time: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            strings,
            input_tokens: Int64Builder::with_capacity(rows),
            output_tokens: Int64Builder::with_capacity(rows),
            latency_ms: Float64Builder::with_capacity(rows),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push<S: AsRef<str>>(&mut self, row: &EventRowOf<S>) {
        fn text<S: AsRef<str>>(v: &Option<S>) -> Option<&str> {
            v.as_ref().map(AsRef::as_ref)
        }
        self.time.append_value(row.time_us);
        let kind = row.kind.map(EventKind::as_str);
        let before: [Option<&str>; STRING_COLUMNS_BEFORE_NUMBERS] = [
            Some(row.event_id.as_ref()),
            Some(kind.unwrap_or("inference")),
            text(&row.service),
            text(&row.source),
            text(&row.user_id),
            text(&row.user_role),
            text(&row.department),
            text(&row.agent_id),
            text(&row.conversation_id),
            text(&row.trace_id),
            text(&row.span_id),
            text(&row.provider),
            text(&row.model),
            text(&row.response_model),
            text(&row.endpoint),
            text(&row.operation),
        ];
        let after: [Option<&str>; STRING_COLUMNS_AFTER_NUMBERS] = [
            text(&row.status),
            text(&row.error_type),
            text(&row.finish_reasons),
            text(&row.tool_name),
            text(&row.data_source),
            text(&row.policy_id),
            text(&row.decision),
            text(&row.decision_reason),
            text(&row.prompt_text),
            text(&row.response_text),
            text(&row.attributes),
        ];
        for (builder, value) in self.strings.iter_mut().zip(before.into_iter().chain(after)) {
            builder.append_option(value);
        }
        self.input_tokens.append_option(row.input_tokens);
        self.output_tokens.append_option(row.output_tokens);
        self.latency_ms.append_option(row.latency_ms);
        self.len += 1;
    }

    /// Bytes of text in the rows pushed so far: what a request's events cost before they are a batch.
    pub fn value_bytes(&self) -> usize {
        self.strings.iter().map(|b| b.values_slice().len()).sum()
    }

    /// Builds the batch and resets the builder for reuse.
    pub fn finish(&mut self) -> RecordBatch {
        if self.len > 0 {
            for (per_row, b) in BYTES_PER_ROW.iter().zip(&self.strings) {
                let now = b.values_slice().len().div_ceil(self.len).max(1);
                let seen = per_row.load(Ordering::Relaxed);
                per_row.store((seen * 3 + now).div_ceil(4), Ordering::Relaxed);
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(31);
        columns.push(Arc::new(self.time.finish()));
        let (before, after) = self.strings.split_at_mut(STRING_COLUMNS_BEFORE_NUMBERS);
        columns.extend(before.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.input_tokens.finish()));
        columns.push(Arc::new(self.output_tokens.finish()));
        columns.push(Arc::new(self.latency_ms.finish()));
        columns.extend(after.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        self.len = 0;
        RecordBatch::try_new(event_schema(), columns)
            .expect("builder columns match the event schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_reserves_its_average_with_headroom_but_never_gigabytes() {
        assert_eq!(reserved_bytes(512, 16), 512 * 18);
        assert_eq!(
            reserved_bytes(10_000, 15_000_000),
            MAX_RESERVED_COLUMN_BYTES
        );
        assert_eq!(
            reserved_bytes(usize::MAX, usize::MAX),
            MAX_RESERVED_COLUMN_BYTES
        );
    }
    use arrow::array::{Array, AsArray};

    #[test]
    fn builder_round_trips_every_column_in_schema_order() {
        let row = EventRow {
            time_us: 1_700_000_000_000_000,
            event_id: "e1".into(),
            kind: Some(EventKind::Tool),
            service: Some("svc".into()),
            user_id: Some("alice".into()),
            model: Some("gpt-4o".into()),
            operation: Some("execute_tool".into()),
            input_tokens: Some(12),
            latency_ms: Some(3.5),
            status: Some("ok".into()),
            attributes: Some("{}".into()),
            ..Default::default()
        };
        let mut b = EventBatchBuilder::default();
        b.push(&row);
        b.push(&EventRow {
            event_id: "e2".into(),
            ..Default::default()
        });
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), event_schema());
        let s = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        assert_eq!(s(col::KIND).value(0), "tool");
        assert_eq!(s(col::USER_ID).value(0), "alice");
        assert_eq!(s(col::MODEL).value(0), "gpt-4o");
        assert_eq!(s(col::OPERATION).value(0), "execute_tool");
        assert_eq!(s(col::STATUS).value(0), "ok");
        assert_eq!(s(col::ATTRIBUTES).value(0), "{}");
        assert!(s(col::USER_ID).is_null(1));
        let tokens = batch.column_by_name(col::INPUT_TOKENS).unwrap();
        assert_eq!(
            tokens
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            12
        );
        // The builder is reusable after finish().
        assert_eq!(b.len(), 0);
    }
}
