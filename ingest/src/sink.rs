//! The boundary between receivers and the rest of the pipeline.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

/// Where receivers send normalised events.
///
/// `accept` resolves only once the events are durable (written to the write-ahead log and fsynced), so a
/// receiver that acknowledges after it returns `Ok` never loses an acknowledged event. The binary implements
/// this by running detection and then the store; tests implement it with a channel.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Reserves room for one request before a receiver spends CPU decoding and normalising it. Under
    /// overload the refusal then costs almost nothing, so the requests that are admitted keep the
    /// throughput; refusing after decoding would let refused work crowd out admitted work.
    async fn admit(&self) -> Result<Admission, SinkError> {
        Ok(Admission::unlimited())
    }

    /// Admits (as `admit`) and delivers.
    async fn accept(&self, batch: RecordBatch) -> Result<(), SinkError> {
        let admission = self.admit().await?;
        self.accept_admitted(batch, admission).await
    }

    /// Delivers a batch whose request already holds an admission (released when this returns).
    async fn accept_admitted(
        &self,
        batch: RecordBatch,
        admission: Admission,
    ) -> Result<(), SinkError>;
}

/// A slot in a sink's admission limit; dropping it frees the slot.
///
/// It remembers when it was granted, so a sink can tell how long the receiver spent decoding and
/// normalising the request (the part of the acknowledgement latency the sink does not see otherwise).
pub struct Admission {
    slot: Option<Box<dyn Send + Sync>>,
    admitted: Instant,
}

impl Admission {
    /// For sinks without a limit.
    pub fn unlimited() -> Self {
        Admission {
            slot: None,
            admitted: Instant::now(),
        }
    }

    /// Holds `slot` (e.g. a semaphore permit) until the admission is dropped.
    pub fn holding(slot: impl Send + Sync + 'static) -> Self {
        Admission {
            slot: Some(Box::new(slot)),
            admitted: Instant::now(),
        }
    }

    /// When the request was admitted: before its body was decoded.
    pub fn admitted(&self) -> Instant {
        self.admitted
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.slot.is_some() {
            "Admission(slot)"
        } else {
            "Admission(unlimited)"
        })
    }
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
