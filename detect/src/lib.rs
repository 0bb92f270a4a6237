//! Detection: the AI inventory, per-entity behavioural baselines, drift and anomaly scoring on Arrow record
//! batches, deterministic AI security detectors, content redaction, and the alert record.
//!
//! The API in this file is the contract the binary and the store use; see `docs/architecture.md`.

pub mod alert;
mod awaiting;
pub mod baseline;
pub mod behavior;
pub mod clock;
pub mod config;
pub mod content;
pub mod drift;
pub mod estimators;
pub mod findings;
pub mod inventory;
pub mod metrics;
pub mod scenario;
mod stage;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use alert::{
    alert_response_schema, alert_schema, alerts_from_batch, alerts_to_batch, Alert, Severity,
};
pub use config::DetectConfig;
/// The detection stage. Shared by all receivers (`Arc<DetectionStage>`); `process` takes `&self` and is
/// safe to call concurrently.
pub use stage::{ConversationScans, DetectionStage};

/// The `baselines` table: one row per (entity, feature).
pub fn baseline_schema() -> SchemaRef {
    baseline::baseline_schema()
}

/// The `inventory` table: everything Vigil has seen, registered or not.
pub fn inventory_schema() -> SchemaRef {
    inventory::inventory_schema()
}

/// What detection made of one batch.
#[derive(Debug)]
pub struct Detection {
    /// The events to store: the input with `prompt_text`/`response_text` masked per `content_capture`.
    pub events: RecordBatch,
    /// Alerts raised by this batch (possibly none).
    pub alerts: Vec<Alert>,
    /// What the batch recorded of its conversations, for `DetectionStage::forget_scans` if it is refused.
    pub scans: ConversationScans,
}
