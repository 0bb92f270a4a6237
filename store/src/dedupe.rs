//! Recent-id deduplication for appends.
//!
//! Kafka consumers replay from their last committed offset after a restart and OTLP clients retry requests
//! whose acknowledgement they did not see, so the same event reaches `append` more than once. Every event
//! and alert carries a stable id derived from the telemetry (`event_id`, `alert_id`); the store remembers
//! the xxh3-64 hashes of the last `dedupe_window_rows` ids it stored and drops rows whose id it has seen.
//!
//! This is "effectively once" *within the window*: a duplicate arriving after more than
//! `dedupe_window_rows` newer rows is stored again, and two different ids colliding in 64 bits (odds about
//! n²/2⁶⁵, ~7e-7 for 5M ids) would drop a genuine row. The set is rebuilt on open from the replayed WAL and
//! the newest Parquet files, so a restart does not open a hole.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;

use crate::{StoreError, Table};

/// The column holding a table's row identity, for the tables that are deduplicated.
pub(crate) fn id_column(table: Table) -> Option<&'static str> {
    match table {
        Table::Events => Some("event_id"),
        Table::Alerts => Some("alert_id"),
        Table::Baselines | Table::Inventory => None,
    }
}

/// The keys are already xxh3 hashes: hashing them again would only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A bounded set of recent id hashes with FIFO eviction.
pub(crate) struct DedupeSet {
    set: HashSet<u64, BuildHasherDefault<IdentityHasher>>,
    order: VecDeque<u64>,
    capacity: usize,
}

/// The outcome of filtering one batch.
pub(crate) struct Filtered {
    /// The batch without its duplicates (possibly empty).
    pub batch: RecordBatch,
    /// Hashes this call added; forgotten again if the append fails, so the retry is not dropped.
    pub added: Vec<u64>,
    pub duplicates: usize,
}

/// One append's writes without their duplicates.
pub(crate) struct FilteredWrites {
    /// The batches that still have rows.
    pub kept: Vec<(Table, RecordBatch)>,
    /// Hashes this call added; forgotten again if the append fails.
    pub added: Vec<u64>,
    /// Rows dropped, for each table that had any.
    pub duplicates: Vec<(Table, usize)>,
}

fn key(table: Table, id: &str) -> u64 {
    // Seeding by table keeps an event and an alert that happen to share an id apart.
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), table as u64)
}

impl DedupeSet {
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::with_capacity_and_hasher(capacity.min(1 << 20), Default::default()),
            order: VecDeque::with_capacity(capacity.min(1 << 20)),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Remembers a hash; returns false if it was already there.
    fn insert(&mut self, k: u64) -> bool {
        if self.capacity == 0 || !self.set.insert(k) {
            return false;
        }
        // The oldest goes before the newest comes, so a full window never needs room for one more.
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => self.set.remove(&old),
                None => break,
            };
        }
        if self.order.len() == self.order.capacity() {
            // Doubling, but never past the window: 5,000,000 ids take 40 MiB, not the 64 MiB of the next
            // power of two (and the memory the allocator keeps from the copy before).
            let room = self
                .order
                .len()
                .max(1)
                .min(self.capacity - self.order.len());
            self.order.reserve_exact(room);
        }
        self.order.push_back(k);
        true
    }

    /// Remembers every id of a batch already stored (rebuild on open). Ids are not checked.
    pub fn remember(&mut self, table: Table, batch: &RecordBatch) {
        let Some(col) = id_column(table) else { return };
        let Some(ids) = batch
            .column_by_name(col)
            .and_then(|c| c.as_string_opt::<i32>())
        else {
            return;
        };
        for id in ids.iter().flatten() {
            self.insert(key(table, id));
        }
    }

    /// Forgets hashes added by an append that then failed.
    pub fn forget(&mut self, added: &[u64]) {
        for k in added {
            self.set.remove(k);
        }
        // Their `order` entries stay; evicting them later removes nothing or, at worst, a re-added id early.
    }

    /// [`DedupeSet::filter`] over the writes of one append. On error nothing this call added stays
    /// remembered, so the append's retry is not taken for a duplicate.
    pub fn filter_writes(
        &mut self,
        writes: Vec<(Table, RecordBatch)>,
    ) -> Result<FilteredWrites, StoreError> {
        let mut out = FilteredWrites {
            kept: Vec::with_capacity(writes.len()),
            added: Vec::new(),
            duplicates: Vec::new(),
        };
        for (table, batch) in writes {
            let f = match self.filter(table, batch) {
                Ok(f) => f,
                Err(e) => {
                    self.forget(&out.added);
                    return Err(e);
                }
            };
            if f.duplicates > 0 {
                out.duplicates.push((table, f.duplicates));
            }
            out.added.extend(f.added);
            if f.batch.num_rows() > 0 {
                out.kept.push((table, f.batch));
            }
        }
        Ok(out)
    }

    /// Drops the rows whose id was seen (including earlier in the same batch) and remembers the others.
    pub fn filter(&mut self, table: Table, batch: RecordBatch) -> Result<Filtered, StoreError> {
        let Some(col) = id_column(table) else {
            return Ok(Filtered {
                batch,
                added: Vec::new(),
                duplicates: 0,
            });
        };
        let ids = batch
            .column_by_name(col)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| StoreError::InvalidBatch {
                table: table.name(),
                reason: format!("no Utf8 column `{col}`"),
            })?;
        let mut added = Vec::with_capacity(ids.len());
        let mut keep = Vec::with_capacity(ids.len());
        for i in 0..ids.len() {
            // A row without an id cannot be matched; keep it.
            let fresh = ids.is_null(i) || {
                let k = key(table, ids.value(i));
                let fresh = self.insert(k);
                if fresh {
                    added.push(k);
                }
                fresh
            };
            keep.push(fresh);
        }
        let duplicates = keep.iter().filter(|k| !**k).count();
        let batch = if duplicates == 0 {
            batch
        } else {
            filter_record_batch(&batch, &BooleanArray::from(keep))?
        };
        Ok(Filtered {
            batch,
            added,
            duplicates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    fn ids(v: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "event_id",
            DataType::Utf8,
            false,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(v.to_vec()))]).unwrap()
    }

    /// A window of 1.5 M ids past the initial 1 M-id allocation: doubling would have taken 2 M slots.
    #[test]
    fn the_eviction_order_grows_to_the_window_and_no_further() {
        let window = 1_500_000;
        let mut d = DedupeSet::new(window);
        for k in 0..2 * window as u64 {
            assert!(d.insert(k));
        }
        assert_eq!(d.len(), window);
        assert!(
            d.order.capacity() < window + window / 16,
            "{}",
            d.order.capacity()
        );
        // The window is still the newest ids: the oldest kept is the one `window` back.
        assert!(!d.insert(2 * window as u64 - 1));
        assert!(d.insert(window as u64 - 1));
    }

    #[test]
    fn drops_ids_seen_before_and_within_the_batch() {
        let mut d = DedupeSet::new(100);
        let f = d.filter(Table::Events, ids(&["a", "b", "a"])).unwrap();
        assert_eq!((f.batch.num_rows(), f.duplicates, f.added.len()), (2, 1, 2));
        let f = d.filter(Table::Events, ids(&["b", "c"])).unwrap();
        assert_eq!((f.batch.num_rows(), f.duplicates), (1, 1));
        let kept = f.batch.column(0).as_string::<i32>().value(0).to_string();
        assert_eq!(kept, "c");
        // Same id in another table is a different row.
        let schema = Arc::new(Schema::new(vec![Field::new(
            "alert_id",
            DataType::Utf8,
            false,
        )]));
        let alerts =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
        assert_eq!(d.filter(Table::Alerts, alerts).unwrap().duplicates, 0);
    }

    #[test]
    fn evicts_oldest_beyond_the_window_and_forgets_failed_appends() {
        let mut d = DedupeSet::new(2);
        d.filter(Table::Events, ids(&["a", "b", "c"])).unwrap();
        assert_eq!(d.len(), 2);
        // "a" was evicted, so it is accepted again; "c" is still remembered.
        assert_eq!(d.filter(Table::Events, ids(&["a"])).unwrap().duplicates, 0);
        assert_eq!(d.filter(Table::Events, ids(&["a"])).unwrap().duplicates, 1);
        let f = d.filter(Table::Events, ids(&["z"])).unwrap();
        d.forget(&f.added);
        assert_eq!(d.filter(Table::Events, ids(&["z"])).unwrap().duplicates, 0);
    }
}
