//! Mapping of OTLP spans and log records that follow the GenAI semantic conventions (old and new names),
//! OpenLLMetry and OpenInference into [`EventRow`]s.

use arrow::array::RecordBatch;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Facts about where a request came from that are not in the telemetry itself.
#[derive(Debug, Clone, Default)]
pub struct NormalizeContext {
    /// The authenticated source that sent the request (token name), stored in the `source` column.
    pub source: Option<String>,
}

/// The result of normalising one OTLP request.
#[derive(Debug)]
pub struct Normalized {
    /// Events in [`crate::event_schema`]; may have zero rows.
    pub batch: RecordBatch,
    /// Spans or log records that were not AI activity and were skipped.
    pub skipped: usize,
}

pub fn traces(_req: &ExportTraceServiceRequest, _ctx: &NormalizeContext) -> Normalized {
    todo!("normalisation of spans")
}

pub fn logs(_req: &ExportLogsServiceRequest, _ctx: &NormalizeContext) -> Normalized {
    todo!("normalisation of log records")
}
