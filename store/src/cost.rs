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
    /// SHA-256, as one `append` does. Returns the rows kept (what the write buffer would hold) and the
    /// record's size in bytes.
    pub fn append(
        &mut self,
        writes: Vec<(Table, RecordBatch)>,
    ) -> Result<(Vec<(Table, RecordBatch)>, usize), StoreError> {
        let mut kept = Vec::with_capacity(writes.len());
        for (table, batch) in writes {
            let f = self.dedupe.filter(table, batch)?;
            if f.batch.num_rows() > 0 {
                kept.push((table, f.batch));
            }
        }
        if kept.is_empty() {
            return Ok((kept, 0));
        }
        let body = wal::encode_body(&kept)?;
        self.segment_hash.update(body.bytes());
        Ok((kept, body.bytes().len()))
    }
}

/// Sorts by time, splits by hour, encodes Parquet and hashes each file, as a flush does before it uploads
/// (on two threads for a large hour, as there). Returns the files' total size in bytes.
pub fn flush_encode(table: Table, batches: &[RecordBatch]) -> Result<u64, StoreError> {
    Ok(encode_partitioned(table, batches, Effort::Flush)?
        .iter()
        .map(|f| f.bytes.len() as u64)
        .sum())
}
