//! Detection: the AI inventory, per-entity behavioural baselines, drift and anomaly scoring on Arrow record
//! batches, deterministic AI security detectors, content redaction, and the alert record.
//!
//! The API in this file is the contract the binary and the store use; see `docs/architecture.md`.

pub mod alert;
pub mod config;
pub mod content;
pub mod behavior;
pub mod drift;
pub mod estimators;
pub mod findings;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use alert::{alert_schema, alerts_to_batch, Alert, Severity};
pub use config::DetectConfig;

/// The `baselines` table: one row per (entity, feature).
pub fn baseline_schema() -> SchemaRef {
    todo!()
}

/// The `inventory` table: everything Vigil has seen, registered or not.
pub fn inventory_schema() -> SchemaRef {
    todo!()
}

/// What detection made of one batch.
#[derive(Debug)]
pub struct Detection {
    /// The events to store: the input with `prompt_text`/`response_text` masked per `content_capture`.
    pub events: RecordBatch,
    /// Alerts raised by this batch (possibly none).
    pub alerts: Vec<Alert>,
}

/// The detection stage. Shared by all receivers (`Arc<DetectionStage>`); `process` takes `&self` and is
/// safe to call concurrently.
pub struct DetectionStage {
    _private: (),
}

impl DetectionStage {
    pub fn new(_config: DetectConfig) -> Arc<Self> {
        todo!()
    }

    /// Runs the detectors and baselines on a batch of events (schema `vigil_ingest::event_schema()`).
    pub fn process(&self, _batch: &RecordBatch) -> Detection {
        todo!()
    }

    /// Replaces the inventory and policies (config reload), keeping baselines.
    pub fn reload(&self, _config: DetectConfig) {
        todo!()
    }

    /// Current baselines, to persist with `Store::put_state(Table::Baselines, ..)`.
    pub fn baselines_batch(&self) -> RecordBatch {
        todo!()
    }

    /// Current inventory, to persist with `Store::put_state(Table::Inventory, ..)`.
    pub fn inventory_batch(&self) -> RecordBatch {
        todo!()
    }

    /// Restores state persisted by `baselines_batch`/`inventory_batch` (after a restart: no new warm-up).
    pub fn restore(&self, _baselines: &[RecordBatch], _inventory: &[RecordBatch]) {
        todo!()
    }

    /// Time-window work that is not triggered by one batch: drift checks, model refits, condition-cleared
    /// bookkeeping. The binary calls it every few seconds from a background task, never on the hot path.
    pub fn tick(&self, _now_us: i64) -> Vec<Alert> {
        todo!()
    }
}
