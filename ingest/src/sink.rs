//! The boundary between receivers and the rest of the pipeline.

use std::time::Duration;

use arrow::array::RecordBatch;

/// Where receivers send normalised events.
///
/// `accept` resolves only once the events are durable (written to the write-ahead log and fsynced), so a
/// receiver that acknowledges after it returns `Ok` never loses an acknowledged event. The binary implements
/// this by running detection and then the store; tests implement it with a channel.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn accept(&self, batch: RecordBatch) -> Result<(), SinkError>;
}

/// Why a sink refused a batch. Each maps onto the OTLP retry semantics: overload and unavailability are
/// retryable (HTTP 429/503, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE), an internal error is not.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("overloaded, retry after {retry_after:?}")]
    Overloaded { retry_after: Duration },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}
