//! Storage: a write-ahead log that makes acknowledged events durable, an in-memory buffer that queries can
//! see, and time-partitioned zstd Parquet written through `object_store` (local directory by default,
//! S3-compatible storage by configuration), with a manifest, compaction and retention.
//! Every sealed file is also recorded in a hash-chained audit log (see [`audit`]) that `verify` checks.
//!
//! The API in this file is the contract the binary and `vigil-sql` use; see `docs/architecture.md`.

pub mod audit;
mod background;
mod buffer;
mod compaction;
pub mod cost;
mod dedupe;
mod dir_lock;
mod flush;
mod in_flight;
mod manifest;
mod metrics;
mod object_files;
mod open;
mod parquet_writer;
mod partition;
mod retention;
mod splice;
mod state_table;
mod wal;
mod writer_claim;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use object_store::ObjectStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::buffer::Buffer;
use crate::dedupe::DedupeSet;
use crate::in_flight::{InFlight, Ticket};
use crate::manifest::Manifest;
use crate::metrics::metrics;
use crate::object_files::ObjectFiles;
use crate::wal::Wal;

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
    pub const ALL: [Table; 4] = [
        Table::Events,
        Table::Alerts,
        Table::Baselines,
        Table::Inventory,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Alerts => "alerts",
            Table::Baselines => "baselines",
            Table::Inventory => "inventory",
        }
    }
    /// Tables that are appended through the WAL and partitioned by hour.
    pub fn is_appended(self) -> bool {
        matches!(self, Table::Events | Table::Alerts)
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
    /// Files replaced by compaction or dropped by retention are deleted this long after they leave the
    /// manifest, so a query still holding an older snapshot can finish reading them (2 × a 60 s query timeout).
    #[serde(with = "humantime_serde")]
    pub compaction_grace: Duration,
    /// How many recent `event_id`s / `alert_id`s `append` remembers to drop re-sent rows (0 disables).
    pub dedupe_window_rows: usize,
    /// A WAL segment is closed and a new one started past this size.
    pub wal_segment_bytes: u64,
    /// The ed25519 key that signs exported audit chain heads (hex seed, created with mode 0600 on first
    /// use). Empty: `<data_dir>/audit_ed25519.key`. Keep it off the data volume to make a forged head harder.
    pub audit_key_path: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("vigil-data"),
            object_store_url: None,
            flush_rows: 250_000,
            // 64 MiB instead of 128 measured the same ingest rate and ack latency with a peak RSS about
            // 100 MiB lower (`vigil bench ingest --flush-bytes`, 45 s and 150 s runs with compaction during
            // them). At 32 MiB requests were refused: a flush (what arrived during the one before, ~60k rows
            // at full rate) stayed under the two-thread split (`SPLIT_MIN_ROWS`), and the buffer reached
            // `BEHIND_FACTOR` times this.
            flush_bytes: 64 * 1024 * 1024,
            flush_age: Duration::from_secs(60),
            group_commit_window: Duration::from_millis(2),
            compaction_target_bytes: 256 * 1024 * 1024,
            maintenance_interval: Duration::from_secs(300),
            events_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            alerts_retention: Some(Duration::from_secs(365 * 24 * 3600)),
            compaction_grace: Duration::from_secs(120),
            dedupe_window_rows: 5_000_000,
            wal_segment_bytes: 64 * 1024 * 1024,
            audit_key_path: None,
        }
    }
}

impl StoreConfig {
    /// The retention of a table, if it has one.
    pub fn retention(&self, table: Table) -> Option<Duration> {
        match table {
            Table::Events => self.events_retention,
            Table::Alerts => self.alerts_retention,
            Table::Baselines | Table::Inventory => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("write-ahead log {path}: {source}")]
    Wal {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// The audit chain (`_audit/chain.jsonl`) or its signing key could not be read or written.
    #[error("audit chain: {0}")]
    Audit(String),
    #[error("store is shut down")]
    Closed,
    /// Another process has the data directory open (see the `dir_lock` module).
    #[error("data directory {path} is in use by {holder}: one Vigil process per data directory (query a running server with `vigil sql`, not `--offline`)")]
    Locked { path: PathBuf, holder: String },
    /// Another store (another data directory) writes to this object-store prefix (see the `writer_claim`
    /// module).
    #[error("the object store prefix is claimed by {holder}: one writer per prefix; give this store a prefix of its own, or delete _writer.json from the bucket if that store is gone for good")]
    PrefixClaimed { holder: String },
    /// Rows of a retried append were dropped as duplicates of a copy still in flight, and that copy was
    /// then not stored: retrying stores them.
    #[error("{rows} rows repeat events whose first copy failed to be stored; retry")]
    EarlierCopyFailed { rows: usize },
    /// A batch handed to `append`/`put_state` that the table cannot take (wrong table kind or schema).
    #[error("invalid batch for table {table}: {reason}")]
    InvalidBatch { table: &'static str, reason: String },
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

impl TableSnapshot {
    /// Rows in the snapshot, from the manifest's counts and the buffered batches (no file is read).
    pub fn row_count(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum::<u64>()
            + self
                .buffered
                .iter()
                .map(|b| b.num_rows() as u64)
                .sum::<u64>()
    }
}

/// The manifest and the buffer live under one lock, so a flush that moves rows from one to the other is a
/// single swap and a snapshot sees each row exactly once.
pub(crate) struct State {
    pub manifest: Manifest,
    pub buffer: Buffer,
    /// Highest WAL sequence whose rows are in the buffer or in the manifest's files.
    pub last_seq: u64,
    /// Schemas of the state tables as last written (their canonical schema lives in `vigil-detect`).
    pub state_schemas: HashMap<Table, SchemaRef>,
}

/// What the WAL writer thread shares with the store.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub flush_wanted: tokio::sync::Notify,
    pub flush_rows: usize,
    pub flush_bytes: usize,
    pub flush_age: Duration,
}

/// How many flushes' worth of rows the buffer may hold before the store says it is behind (see
/// [`Store::is_behind`]). One flush in progress plus what arrives meanwhile is normal, about two.
const BEHIND_FACTOR: usize = 4;

impl Shared {
    fn is_behind(&self) -> bool {
        let st = self.state.lock();
        st.buffer.total_bytes() >= BEHIND_FACTOR.saturating_mul(self.flush_bytes)
            || st.buffer.total_rows() >= BEHIND_FACTOR.saturating_mul(self.flush_rows)
    }

    pub fn should_flush(&self) -> bool {
        let st = self.state.lock();
        let b = &st.buffer;
        b.total_rows() >= self.flush_rows
            || b.total_bytes() >= self.flush_bytes
            || b.oldest().is_some_and(|t| t.elapsed() >= self.flush_age)
    }
}

/// The store. Cheap to share (`Arc<Store>`); every method takes `&self`.
pub struct Store {
    config: StoreConfig,
    objects: Arc<ObjectFiles>,
    url: url::Url,
    shared: Arc<Shared>,
    wal: Wal,
    /// The hash chain every sealed file and every removal is recorded in before it becomes live.
    audit: Arc<AuditLog>,
    dedupe: Arc<Mutex<DedupeSet>>,
    /// Appends whose ids `dedupe` remembers before their record is durable.
    in_flight: Arc<InFlight>,
    /// Serialises manifest changes (flush, compaction swap, retention, state writes).
    maintenance: tokio::sync::Mutex<()>,
    /// Files out of the manifest, deleted once their grace period has passed.
    pending_deletes: Mutex<Vec<(Instant, String)>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
    closed: AtomicBool,
    background: AtomicBool,
    /// Keeps other processes out of `data_dir` while this store is open.
    _dir_lock: dir_lock::DirLock,
}

/// The URL under which [`Store::object_store`] should be registered with DataFusion; `StoredFile::path`
/// is relative to it, whether the files are local or in S3.
pub const OBJECT_STORE_URL: &str = "vigil://store/";

impl Store {
    /// Opens (or creates) the store, deletes Parquet files a crash left outside the manifest, and replays the
    /// WAL records the manifest does not cover into the buffer.
    pub async fn open(config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        open::open(config, None).await
    }

    /// Opens the store with Parquet and the manifest in a given object store instead of the one
    /// `object_store_url` names (the WAL stays under `data_dir/wal`). For remote stores built by the caller
    /// and for tests with `object_store::memory::InMemory`; puts are trusted to be durable once acknowledged.
    pub async fn open_with_object_store(
        config: StoreConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<Store>, StoreError> {
        open::open(config, Some(store)).await
    }

    /// `batch` without the rows a settled earlier append already stored durably (same id, within the
    /// dedupe window), and how many were dropped (counted as duplicates). The pipeline calls this before
    /// detection, so that a retried request or a re-read Kafka message neither raises its alerts a second
    /// time nor counts twice in the baselines. Rows whose first copy is still in flight are kept: `append`
    /// decides about them once that copy is durable or has failed.
    pub fn without_stored(
        &self,
        table: Table,
        batch: RecordBatch,
    ) -> Result<(RecordBatch, usize), StoreError> {
        let dropped = {
            let dedupe = self.dedupe.lock();
            let below = self.in_flight.durable_below(dedupe.next_insert());
            dedupe.drop_remembered(table, &batch, below)?
        };
        Ok(match dropped {
            Some((kept, n)) => {
                metrics()
                    .duplicates
                    .with_label_values(&[table.name()])
                    .inc_by(n as u64);
                (kept, n)
            }
            None => (batch, 0),
        })
    }

    /// Appends batches to their tables durably: returns once they are in the WAL and fsynced. Appends from
    /// concurrent callers share fsyncs (group commit). Only for `Events` and `Alerts`.
    ///
    /// Rows whose `event_id` / `alert_id` was stored within the last `dedupe_window_rows` rows are dropped
    /// (see the `dedupe` module): a retried request is acknowledged without being stored twice, and not
    /// before the copy it repeats is durable (see the `in_flight` module).
    #[tracing::instrument(
        level = "debug",
        name = "store.append",
        skip_all,
        fields(rows = writes.iter().map(|(_, b)| b.num_rows() as i64).sum::<i64>())
    )]
    pub async fn append(&self, writes: Vec<(Table, RecordBatch)>) -> Result<(), StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        for (table, batch) in &writes {
            check_schema(*table, batch)?;
        }
        let reservation = self.wal.reserve();
        let (filtered, horizon, ticket) = {
            let mut dedupe = self.dedupe.lock();
            let filtered = dedupe.filter_writes(writes)?;
            // Both under the dedupe lock: every append that remembered an id this one dropped holds a
            // ticket below the horizon.
            let horizon = self.in_flight.horizon();
            let ticket = (!filtered.added.is_empty()).then(|| self.in_flight.issue(filtered.mark));
            (filtered, horizon, ticket)
        };
        for (table, n) in &filtered.duplicates {
            metrics()
                .duplicates
                .with_label_values(&[table.name()])
                .inc_by(*n as u64);
        }
        let mut ticket = ticket.map(|t| {
            Ticket::new(
                t,
                filtered.added,
                self.dedupe.clone(),
                self.in_flight.clone(),
            )
        });
        if filtered.kept.is_empty() {
            // Nothing to write: a reservation left armed would make the WAL writer wait for it.
            drop(reservation);
        } else {
            let submitted = wal::encode_body(&filtered.kept)
                .and_then(|body| self.wal.submit(reservation, body, filtered.kept));
            match (submitted, ticket.as_mut()) {
                (Ok(submitted), Some(ticket)) => ticket.settle_on(submitted).await?,
                (Ok(mut submitted), None) => submitted.outcome().await?,
                (Err(e), _) => return Err(e),
            };
        }
        if !filtered.earlier.is_empty() {
            // Rows dropped because an earlier append holds their ids: acknowledged only once that append's
            // record is durable, and not at all if it failed.
            self.in_flight.settled(horizon).await;
            let dedupe = self.dedupe.lock();
            let lost = filtered
                .earlier
                .iter()
                .filter(|&&k| !dedupe.remembered_before(k, filtered.mark))
                .count();
            if lost > 0 {
                return Err(StoreError::EarlierCopyFailed { rows: lost });
            }
        }
        if !self.background.load(Ordering::SeqCst) && self.shared.should_flush() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Replaces a state table (`Baselines`, `Inventory`) with a new snapshot, atomically.
    pub async fn put_state(&self, table: Table, batch: RecordBatch) -> Result<(), StoreError> {
        self.write_state(table, batch).await
    }

    /// Reads a state table's current snapshot (used to restore baselines and inventory on start).
    pub async fn read_state(&self, table: Table) -> Result<Vec<RecordBatch>, StoreError> {
        self.load_state(table).await
    }

    /// A consistent view of a table for one query.
    pub fn snapshot(&self, table: Table) -> TableSnapshot {
        let (files, buffered, schema) = {
            let st = self.shared.state.lock();
            (
                st.manifest.files(table).to_vec(),
                st.buffer.batches(table),
                st.state_schemas.get(&table).cloned(),
            )
        };
        TableSnapshot {
            table,
            schema: schema.unwrap_or_else(|| table.schema()),
            files,
            buffered,
        }
    }

    /// The object store holding the Parquet files, and the URL DataFusion should register it under
    /// ([`OBJECT_STORE_URL`]; file paths in snapshots are relative to it).
    pub fn object_store(&self) -> (url::Url, Arc<dyn ObjectStore>) {
        (self.url.clone(), self.objects.store.clone())
    }

    /// Writes everything buffered to Parquet now (on shutdown, and in tests).
    /// True while the write buffer holds several flushes' worth of rows: flushes are failing (object storage
    /// unreachable, disk full) or falling behind ingest. The buffer is memory, so the pipeline refuses new
    /// work (429 / RESOURCE_EXHAUSTED, Kafka pauses) until a flush catches up, instead of growing without
    /// bound; the WAL keeps every acknowledged row either way.
    pub fn is_behind(&self) -> bool {
        self.shared.is_behind()
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_buffer().await
    }

    /// Starts the background tasks: age-based flush, compaction and retention. They stop on `shutdown`.
    pub fn spawn_background(self: &Arc<Self>) {
        background::spawn(self)
    }

    /// Flushes and stops the background tasks.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        self.flush().await?;
        self.wal.close();
        Ok(())
    }

    /// One compaction pass (merges small files per partition); returns how many files it replaced.
    pub async fn compact(&self) -> Result<usize, StoreError> {
        let n = self.compact_pass().await;
        self.delete_due().await;
        n
    }

    /// One retention pass; returns how many partitions it deleted.
    pub async fn apply_retention(&self, now_us: i64) -> Result<usize, StoreError> {
        let n = self.retention_pass(now_us).await?;
        self.delete_due().await;
        Ok(n)
    }

    /// WAL segment files currently kept (diagnostics and tests).
    pub fn wal_segments(&self) -> usize {
        self.wal.segment_count()
    }

    /// WAL fsyncs so far; with concurrent appenders it stays below the number of appends (group commit).
    pub fn wal_fsyncs(&self) -> u64 {
        self.wal.fsync_count()
    }

    /// Queues files that just left the manifest for deletion after the grace period.
    pub(crate) fn schedule_delete(&self, paths: impl IntoIterator<Item = String>) {
        let due = Instant::now() + self.config.compaction_grace;
        self.pending_deletes
            .lock()
            .extend(paths.into_iter().map(|p| (due, p)));
    }

    /// Deletes the queued files whose grace period has passed. Failures are retried on the next pass; a
    /// file still left at a restart is not in the manifest and goes with the crash leftovers.
    pub(crate) async fn delete_due(&self) {
        let now = Instant::now();
        let due: Vec<String> = {
            let mut pending = self.pending_deletes.lock();
            let (due, keep): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(t, _)| *t <= now);
            *pending = keep;
            due.into_iter().map(|(_, p)| p).collect()
        };
        for path in due {
            if let Err(e) = self.objects.delete(&path).await {
                tracing::warn!(%path, error = %e, "deleting a replaced Parquet file failed; will retry");
                self.pending_deletes.lock().push((now, path));
            }
        }
    }

    /// Publishes the file gauges and buffered-row gauges from the current state.
    pub(crate) fn update_gauges(state: &State) {
        let m = metrics();
        for t in Table::ALL {
            let files = state.manifest.files(t);
            m.files
                .with_label_values(&[t.name()])
                .set(files.len() as i64);
            m.bytes
                .with_label_values(&[t.name()])
                .set(files.iter().map(|f| f.size as i64).sum());
            if t.is_appended() {
                m.buffered_rows
                    .with_label_values(&[t.name()])
                    .set(state.buffer.rows(t) as i64);
            }
        }
    }
}

/// Appends must match the table's schema (names and types), or Parquet files of one table would disagree.
fn check_schema(table: Table, batch: &RecordBatch) -> Result<(), StoreError> {
    if !table.is_appended() {
        return Err(StoreError::InvalidBatch {
            table: table.name(),
            reason: "state tables are written with put_state, not append".into(),
        });
    }
    let expected = table.schema();
    let got = batch.schema();
    let same = expected.fields().len() == got.fields().len()
        && expected
            .fields()
            .iter()
            .zip(got.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if same {
        Ok(())
    } else {
        Err(StoreError::InvalidBatch {
            table: table.name(),
            reason: format!("schema {got:?} is not {expected:?}"),
        })
    }
}
