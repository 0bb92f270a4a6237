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

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
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

/// A bounded set of recent id hashes with FIFO eviction.
///
/// The hashes sit once, in insertion order, in a ring; an open-addressing table of `u32` slots points into
/// it. A `HashSet<u64>` beside a `VecDeque<u64>` held every hash twice: 112 MiB for the default 5,000,000
/// ids (hashbrown's 8 M buckets of 9 bytes, and the deque), against 72 MiB here (the ring's 40 MiB and
/// 8 M slots of 4 bytes), and the set's last doubling briefly held both its tables. That memory is resident
/// for as long as the server runs, and the write buffer's peak comes on top of it.
///
/// A slot holds a ring position (plus one, so 0 is empty) in its low bits and, in the bits the position
/// does not need, the hash's top bits as a fingerprint, so a probe past other ids rarely reads the ring.
pub(crate) struct DedupeSet {
    /// `ring[seq % capacity]` is the hash inserted `seq`-th; it grows to `capacity` and then wraps.
    ring: Vec<u64>,
    /// Linear probing from a hash's low bits; a power of two long, at most 70 % full.
    slots: Vec<u32>,
    /// Inserts so far: the next insert's ring position is `next % capacity`.
    next: u64,
    /// Ids remembered (slots in use): ring entries whose id was forgotten have no slot.
    len: usize,
    capacity: usize,
    /// Bits of a slot that hold the position.
    pos_bits: u32,
}

/// The outcome of filtering one batch.
pub(crate) struct Filtered {
    /// The batch without its duplicates (possibly empty).
    pub batch: RecordBatch,
    /// Hashes this call added; forgotten again if the append fails, so the retry is not dropped.
    pub added: Vec<u64>,
    pub duplicates: usize,
    /// Hashes of the rows dropped.
    pub dropped: Vec<u64>,
}

/// One append's writes without their duplicates.
pub(crate) struct FilteredWrites {
    /// The batches that still have rows.
    pub kept: Vec<(Table, RecordBatch)>,
    /// Hashes this call added; forgotten again if the append fails.
    pub added: Vec<u64>,
    /// Rows dropped, for each table that had any.
    pub duplicates: Vec<(Table, usize)>,
    /// The hashes of dropped rows that an earlier append remembered. That append may still be waiting
    /// for its fsync, or may yet fail: see [`DedupeSet::remembered_before`].
    pub earlier: Vec<u64>,
    /// Inserts before this call: whatever was remembered at a smaller insert number came from an earlier
    /// append.
    pub mark: u64,
}

/// The batch's id column, `None` for a table that is not deduplicated.
fn ids_of(table: Table, batch: &RecordBatch) -> Result<Option<&StringArray>, StoreError> {
    let Some(col) = id_column(table) else {
        return Ok(None);
    };
    batch
        .column_by_name(col)
        .and_then(|c| c.as_string_opt::<i32>())
        .map(Some)
        .ok_or_else(|| StoreError::InvalidBatch {
            table: table.name(),
            reason: format!("no Utf8 column `{col}`"),
        })
}

fn key(table: Table, id: &str) -> u64 {
    // Seeding by table keeps an event and an alert that happen to share an id apart.
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), table as u64)
}

/// Slots a new table starts with; it doubles as ids arrive.
const FIRST_SLOTS: usize = 1 << 10;

impl DedupeSet {
    /// A window of `capacity` ids (at most `u32::MAX - 1`: a slot addresses the ring in 32 bits).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(u32::MAX as usize - 1);
        Self {
            ring: Vec::new(),
            slots: vec![0; FIRST_SLOTS],
            next: 0,
            len: 0,
            capacity,
            pos_bits: u32::BITS - (capacity.max(1) as u32).leading_zeros(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The top bits of a hash, in the slot bits above the position (none once the window needs all 32).
    fn fingerprint(&self, k: u64) -> u32 {
        match u32::BITS - self.pos_bits {
            0 => 0,
            bits => ((k >> (u64::BITS - bits)) as u32) << self.pos_bits,
        }
    }

    fn position(&self, slot: u32) -> usize {
        ((u64::from(slot) & ((1u64 << self.pos_bits) - 1)) - 1) as usize
    }

    fn home(&self, k: u64) -> usize {
        k as usize & self.mask()
    }

    /// The first slot of the probe run from `k`'s home that `hit` accepts.
    fn probe(&self, k: u64, hit: impl Fn(u32) -> bool) -> Option<usize> {
        let mut i = self.home(k);
        while self.slots[i] != 0 {
            if hit(self.slots[i]) {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
        None
    }

    /// The slot index holding `k`, if remembered.
    fn find(&self, k: u64) -> Option<usize> {
        let fp = self.fingerprint(k);
        let fp_mask = !((1u64 << self.pos_bits) - 1) as u32;
        self.probe(k, |v| v & fp_mask == fp && self.ring[self.position(v)] == k)
    }

    /// Empties slot `i`, moving later slots of the same probe run back so that every id stays reachable
    /// from its home slot without tombstones.
    fn remove_at(&mut self, i: usize) {
        let mask = self.mask();
        let (mut hole, mut j) = (i, i);
        loop {
            j = (j + 1) & mask;
            let v = self.slots[j];
            if v == 0 {
                break;
            }
            let home = self.home(self.ring[self.position(v)]);
            // It may fill the hole if its home is not between the hole and it (cyclically).
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = v;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }

    /// Puts a slot value for the hash `k` in the first free slot of its probe run.
    fn place(&mut self, k: u64, v: u32) {
        let mut i = self.home(k);
        while self.slots[i] != 0 {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = v;
    }

    fn grow_slots(&mut self) {
        let doubled = vec![0; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        for v in old.into_iter().filter(|&v| v != 0) {
            let k = self.ring[self.position(v)];
            self.place(k, v);
        }
    }

    /// The insert number (`next` when it was inserted) of the remembered hash `k`.
    fn insert_number(&self, k: u64) -> Option<u64> {
        let pos = self.position(self.slots[self.find(k)?]) as u64;
        // The newest insert at this ring position: the ring holds the last `capacity` inserts.
        let last = self.next.checked_sub(1)?;
        Some(last - (last - pos) % self.capacity as u64)
    }

    /// True if `k` is remembered from an insert made before `mark`: the append that stored it has not
    /// since failed (a failed append forgets its hashes), and no later append added it again.
    pub fn remembered_before(&self, k: u64, mark: u64) -> bool {
        self.insert_number(k).is_some_and(|n| n < mark)
    }

    /// Remembers a hash; returns false if it was already there. A window of 0 remembers nothing, so every
    /// id is new (deduplication off).
    fn insert(&mut self, k: u64) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if self.find(k).is_some() {
            return false;
        }
        let pos = (self.next % self.capacity as u64) as usize;
        if pos < self.ring.len() {
            // The oldest goes before the newest comes; its slot is gone already if it was forgotten.
            if let Some(i) = self.probe(self.ring[pos], |v| self.position(v) == pos) {
                self.remove_at(i);
            }
            self.ring[pos] = k;
        } else {
            if self.ring.len() == self.ring.capacity() {
                // Doubling, but never past the window: 5,000,000 ids take 40 MiB, not the 64 MiB of the
                // next power of two (and the memory the allocator keeps from the copy before).
                let room = self
                    .ring
                    .len()
                    .max(1024)
                    .min(self.capacity - self.ring.len());
                self.ring.reserve_exact(room);
            }
            self.ring.push(k);
        }
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow_slots();
        }
        self.place(k, self.fingerprint(k) | (pos as u32 + 1));
        self.len += 1;
        self.next += 1;
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
        for &k in added {
            if let Some(i) = self.find(k) {
                self.remove_at(i);
            }
        }
        // Their ring entries stay, without a slot: evicting them later removes nothing.
    }

    /// [`DedupeSet::filter`] over the writes of one append. On error nothing this call added stays
    /// remembered, so the append's retry is not taken for a duplicate.
    pub fn filter_writes(
        &mut self,
        writes: Vec<(Table, RecordBatch)>,
    ) -> Result<FilteredWrites, StoreError> {
        let mark = self.next;
        let mut out = FilteredWrites {
            kept: Vec::with_capacity(writes.len()),
            added: Vec::new(),
            duplicates: Vec::new(),
            earlier: Vec::new(),
            mark,
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
                // A row repeated within this append has its first copy here; the others wait on another.
                out.earlier.extend(
                    f.dropped
                        .iter()
                        .filter(|&&k| self.insert_number(k).is_some_and(|n| n < mark)),
                );
            }
            out.added.extend(f.added);
            if f.batch.num_rows() > 0 {
                out.kept.push((table, f.batch));
            }
        }
        Ok(out)
    }

    /// The next insert number: every id remembered so far was inserted below it.
    pub fn next_insert(&self) -> u64 {
        self.next
    }

    /// The rows of `batch` whose id was remembered below insert number `below`, dropped; nothing is
    /// remembered. `None` when no row is dropped.
    pub fn drop_remembered(
        &self,
        table: Table,
        batch: &RecordBatch,
        below: u64,
    ) -> Result<Option<(RecordBatch, usize)>, StoreError> {
        if self.len == 0 {
            return Ok(None);
        }
        let Some(ids) = ids_of(table, batch)? else {
            return Ok(None);
        };
        let keep: BooleanArray = (0..ids.len())
            .map(|i| {
                Some(ids.is_null(i) || !self.remembered_before(key(table, ids.value(i)), below))
            })
            .collect();
        let dropped = keep.false_count();
        if dropped == 0 {
            return Ok(None);
        }
        Ok(Some((filter_record_batch(batch, &keep)?, dropped)))
    }

    /// Drops the rows whose id was seen (including earlier in the same batch) and remembers the others.
    pub fn filter(&mut self, table: Table, batch: RecordBatch) -> Result<Filtered, StoreError> {
        let Some(ids) = ids_of(table, &batch)? else {
            return Ok(Filtered {
                batch,
                added: Vec::new(),
                duplicates: 0,
                dropped: Vec::new(),
            });
        };
        let mut added = Vec::with_capacity(ids.len());
        let mut dropped = Vec::new();
        let mut keep = Vec::with_capacity(ids.len());
        for i in 0..ids.len() {
            // A row without an id cannot be matched; keep it.
            let fresh = ids.is_null(i) || {
                let k = key(table, ids.value(i));
                let fresh = self.insert(k);
                if fresh {
                    added.push(k);
                } else {
                    dropped.push(k);
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
            dropped,
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

    /// A window of 1.5 M ids: the ring stops at the window rather than at the next power of two.
    #[test]
    fn the_ring_grows_to_the_window_and_no_further() {
        let window = 1_500_000;
        let mut d = DedupeSet::new(window);
        for k in 0..2 * window as u64 {
            assert!(d.insert(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        assert_eq!(d.len(), window);
        assert!(
            d.ring.capacity() < window + window / 16,
            "{}",
            d.ring.capacity()
        );
        // 1.5 M ids at most 70 % full: 4 M slots of 4 bytes.
        assert_eq!(d.slots.len(), 1 << 22);
        // The window is still the newest ids: the oldest kept is the one `window` back.
        let k = |n: u64| n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        assert!(!d.insert(k(2 * window as u64 - 1)));
        assert!(!d.insert(k(window as u64)));
        assert!(d.insert(k(window as u64 - 1)));
    }

    /// Random inserts, repeats and forgets against the obvious model (a set beside a FIFO queue), over
    /// windows small enough that slots collide, wrap and shift back on every run.
    #[test]
    fn agrees_with_a_set_and_a_queue() {
        use rand::{Rng, SeedableRng};
        use std::collections::{HashMap, HashSet, VecDeque};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for window in [1, 2, 3, 7, 100, 1000, 5000] {
            let mut d = DedupeSet::new(window);
            let mut set = HashSet::new();
            let mut order = VecDeque::new();
            // How many queue entries each id has (a forgotten and re-added id has two).
            let mut queued: HashMap<u64, usize> = HashMap::new();
            for _ in 0..20 * window + 2000 {
                // Few distinct keys, so repeats and re-adds after eviction are common; some share low bits.
                let k: u64 = match rng.random_range(0..3) {
                    0 => rng.random_range(0..(3 * window as u64)),
                    1 => rng.random_range(0..(3 * window as u64)) << 40,
                    _ => rng.random(),
                };
                if rng.random_bool(0.05) {
                    d.forget(&[k]);
                    set.remove(&k);
                    // The model keeps a forgotten id's place in the queue, as the ring does.
                    continue;
                }
                let fresh = !set.contains(&k);
                assert_eq!(d.insert(k), fresh, "window {window}, key {k}");
                if fresh {
                    if order.len() == window {
                        let old = order.pop_front().expect("full");
                        let n = queued.get_mut(&old).expect("queued");
                        *n -= 1;
                        // Only if this queue entry is the id's current one (it may be a forgotten one).
                        if *n == 0 {
                            queued.remove(&old);
                            set.remove(&old);
                        }
                    }
                    order.push_back(k);
                    *queued.entry(k).or_default() += 1;
                    set.insert(k);
                }
                assert_eq!(d.len(), set.len());
            }
            for k in &set {
                assert!(d.find(*k).is_some());
            }
        }
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
    fn a_window_of_zero_keeps_every_row() {
        let mut d = DedupeSet::new(0);
        for _ in 0..2 {
            let f = d.filter(Table::Events, ids(&["a", "a"])).unwrap();
            assert_eq!((f.batch.num_rows(), f.duplicates), (2, 0));
        }
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
