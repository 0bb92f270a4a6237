//! Storage: a write-ahead log that makes acknowledged events durable, an in-memory buffer that queries can
//! see, and time-partitioned zstd Parquet written through `object_store` (local directory by default,
//! S3-compatible storage by configuration), with a manifest, compaction and retention.
//!
//! The API in this file is the contract the binary and `vigil-sql` use; see `docs/architecture.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

/// The tables Vigil stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Appended, time-partitioned by the `time` column.
    Events,
    /// Appended, time-partitioned by the `time` column.
    Alerts,
    /// State table: the latest snapshot replaces the previous one.
    Baselines,
    /// State table: the latest snapshot replaces the previous one.
    Inventory,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Events, Table::Alerts, Table::Baselines, Table::Inventory];
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Alerts => "alerts",
            Table::Baselines => "baselines",
            Table::Inventory => "inventory",
        }
    }
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Events => vigil_ingest::event_schema(),
            Table::Alerts => vigil_detect::alert_schema(),
            Table::Baselines => vigil_detect::baseline_schema(),
            Table::Inventory => vigil_detect::inventory_schema(),
        }
    }
}

/// Store configuration (the `[store]` section of the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Local directory for the WAL (always local) and, unless `object_store_url` is set, for Parquet.
    pub data_dir: PathBuf,
    /// `s3://bucket/prefix` to keep Parquet in S3-compatible storage (credentials from the usual AWS_*
    /// environment variables). Empty: Parquet lives under `data_dir`.
    pub object_store_url: Option<String>,
    /// Flush the buffer to Parquet when it holds this many rows...
    pub flush_rows: usize,
    /// ...or this many bytes...
    pub flush_bytes: usize,
    /// ...or when its oldest row is this old.
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    /// Longest time a WAL append waits to share an fsync with concurrent appends (group commit).
    #[serde(with = "humantime_serde")]
    pub group_commit_window: Duration,
    /// Compaction merges a partition's small files into files of about this size.
    pub compaction_target_bytes: u64,
    /// How often the background compaction and retention pass runs.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// Partitions whose hour is older than this are deleted, per table. `None` keeps forever.
    #[serde(with = "humantime_serde")]
    pub events_retention: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub alerts_retention: Option<Duration>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("vigil-data"),
            object_store_url: None,
            flush_rows: 250_000,
            flush_bytes: 128 * 1024 * 1024,
            flush_age: Duration::from_secs(60),
            group_commit_window: Duration::from_millis(2),
            compaction_target_bytes: 256 * 1024 * 1024,
            maintenance_interval: Duration::from_secs(300),
            events_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            alerts_retention: Some(Duration::from_secs(365 * 24 * 3600)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("write-ahead log {path}: {source}")]
    Wal { path: PathBuf, source: std::io::Error },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("store is shut down")]
    Closed,
}

/// One live Parquet file, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Path inside the object store, e.g. `events/date=2026-11-22/hour=14/<uuid>.parquet`.
    pub path: String,
    pub size: u64,
    pub rows: u64,
    /// Min and max of the `time` column, microseconds UTC (0 for state tables).
    pub min_time_us: i64,
    pub max_time_us: i64,
}

/// What a query sees of one table at one instant: the live files plus the rows still buffered in memory.
/// A row is in exactly one of the two.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub table: Table,
    pub schema: SchemaRef,
    pub files: Vec<StoredFile>,
    pub buffered: Vec<RecordBatch>,
}

/// The store. Cheap to share (`Arc<Store>`); every method takes `&self`.
pub struct Store {
    _private: (),
}

impl Store {
    /// Opens (or creates) the store, deletes Parquet files a crash left outside the manifest, and replays the
    /// WAL records the manifest does not cover into the buffer.
    pub async fn open(_config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        todo!()
    }

    /// Appends batches to their tables durably: returns once they are in the WAL and fsynced. Appends from
    /// concurrent callers share fsyncs (group commit). Only for `Events` and `Alerts`.
    pub async fn append(&self, _writes: Vec<(Table, RecordBatch)>) -> Result<(), StoreError> {
        todo!()
    }

    /// Replaces a state table (`Baselines`, `Inventory`) with a new snapshot, atomically.
    pub async fn put_state(&self, _table: Table, _batch: RecordBatch) -> Result<(), StoreError> {
        todo!()
    }

    /// Reads a state table's current snapshot (used to restore baselines and inventory on start).
    pub async fn read_state(&self, _table: Table) -> Result<Vec<RecordBatch>, StoreError> {
        todo!()
    }

    /// A consistent view of a table for one query.
    pub fn snapshot(&self, _table: Table) -> TableSnapshot {
        todo!()
    }

    /// The object store holding the Parquet files, and the URL DataFusion should register it under.
    pub fn object_store(&self) -> (url::Url, Arc<dyn ObjectStore>) {
        todo!()
    }

    /// Writes everything buffered to Parquet now (on shutdown, and in tests).
    pub async fn flush(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// Starts the background tasks: age-based flush, compaction and retention. They stop on `shutdown`.
    pub fn spawn_background(self: &Arc<Self>) {
        todo!()
    }

    /// Flushes and stops the background tasks.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// One compaction pass (merges small files per partition); returns how many files it replaced.
    pub async fn compact(&self) -> Result<usize, StoreError> {
        todo!()
    }

    /// One retention pass; returns how many partitions it deleted.
    pub async fn apply_retention(&self, _now_us: i64) -> Result<usize, StoreError> {
        todo!()
    }
}

#[allow(dead_code)]
fn _object_path(p: &str) -> ObjectPath {
    ObjectPath::from(p)
}
