//! The store's CPU work without its disk, on the calling thread: what `vigil bench stages` times. These run
//! the functions `append`, the WAL writer and a flush run (not copies of them), minus the `write`, `fsync`
//! and upload, so a change to any of them shows in the benchmark.

use arrow::array::RecordBatch;
use sha2::{Digest, Sha256};

use crate::dedupe::DedupeSet;
use crate::parquet_writer::{encode_partitioned, Effort};
use crate::{wal, StoreConfig, StoreError, Table};

/// The per-append state `append` keeps: the recent-id set and the active WAL segment's running SHA-256.
pub struct AppendWork {
    dedupe: DedupeSet,
    segment_hash: Sha256,
}

impl AppendWork {
    pub fn new(config: &StoreConfig) -> Self {
        AppendWork {
            dedupe: DedupeSet::new(config.dedupe_window_rows),
            segment_hash: Sha256::new(),
        }
    }

    /// Drops re-sent rows, encodes the WAL record (Arrow IPC and its CRC) and feeds it to the segment's
    /// SHA-256, as one `append` does. Returns the rows kept: what the write buffer would hold.
    pub fn append(
        &mut self,
        writes: Vec<(Table, RecordBatch)>,
    ) -> Result<Vec<(Table, RecordBatch)>, StoreError> {
        let kept = self.dedupe.filter_writes(writes)?.kept;
        if !kept.is_empty() {
            let body = wal::encode_body(&kept)?;
            self.segment_hash.update(body.bytes());
        }
        Ok(kept)
    }
}

/// Sorts by time, splits by hour, encodes Parquet and hashes each file, as a flush does before it uploads
/// (on two threads for a large hour, as there).
pub fn flush_encode(table: Table, batches: &[RecordBatch]) -> Result<(), StoreError> {
    encode_partitioned(table, batches, Effort::Flush).map(drop)
}
