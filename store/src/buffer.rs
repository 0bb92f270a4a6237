//! Rows that are durable in the WAL but not yet in Parquet, per table, tagged with their WAL sequence so a
//! flush can remove exactly what it wrote.

use std::time::Instant;

use arrow::array::RecordBatch;

use crate::Table;

#[derive(Default)]
struct TableBuffer {
    batches: Vec<(u64, RecordBatch)>,
    rows: usize,
    bytes: usize,
}

/// The in-memory buffer of the appended tables (`Events`, `Alerts`).
#[derive(Default)]
pub(crate) struct Buffer {
    events: TableBuffer,
    alerts: TableBuffer,
    /// When the oldest buffered row arrived; drives age-based flushes.
    oldest: Option<Instant>,
}

impl Buffer {
    fn table(&self, t: Table) -> Option<&TableBuffer> {
        match t {
            Table::Events => Some(&self.events),
            Table::Alerts => Some(&self.alerts),
            _ => None,
        }
    }

    fn table_mut(&mut self, t: Table) -> Option<&mut TableBuffer> {
        match t {
            Table::Events => Some(&mut self.events),
            Table::Alerts => Some(&mut self.alerts),
            _ => None,
        }
    }

    /// Adds a batch appended under WAL sequence `seq`. Sequences must arrive in increasing order.
    pub fn push(&mut self, seq: u64, table: Table, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let Some(tb) = self.table_mut(table) else {
            return;
        };
        tb.rows += batch.num_rows();
        tb.bytes += batch.get_array_memory_size();
        tb.batches.push((seq, batch));
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// The batches a query sees (cheap: batches share their buffers).
    pub fn batches(&self, table: Table) -> Vec<RecordBatch> {
        self.table(table)
            .map(|tb| tb.batches.iter().map(|(_, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    /// The batches with sequence `<= seq`.
    pub fn batches_upto(&self, table: Table, seq: u64) -> Vec<RecordBatch> {
        self.table(table)
            .map(|tb| {
                tb.batches
                    .iter()
                    .filter(|(s, _)| *s <= seq)
                    .map(|(_, b)| b.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the batches with sequence `<= seq` (they are now in Parquet files listed in the manifest) and
    /// hands them back, so the caller frees their memory (hundreds of megabytes after a full buffer) outside
    /// the lock the request path takes.
    #[must_use = "dropping the drained batches here frees them under the caller's lock"]
    pub fn drain_upto(&mut self, seq: u64) -> Vec<RecordBatch> {
        let mut drained = Vec::new();
        for tb in [&mut self.events, &mut self.alerts] {
            let (gone, kept) = std::mem::take(&mut tb.batches)
                .into_iter()
                .partition::<Vec<_>, _>(|(s, _)| *s <= seq);
            tb.batches = kept;
            drained.extend(gone.into_iter().map(|(_, b)| b));
            tb.rows = tb.batches.iter().map(|(_, b)| b.num_rows()).sum();
            tb.bytes = tb
                .batches
                .iter()
                .map(|(_, b)| b.get_array_memory_size())
                .sum();
        }
        // What is left arrived after the flush started; counting its age from now is close enough.
        self.oldest = (self.total_rows() > 0).then(Instant::now);
        drained
    }

    pub fn rows(&self, table: Table) -> usize {
        self.table(table).map(|tb| tb.rows).unwrap_or(0)
    }

    pub fn total_rows(&self) -> usize {
        self.events.rows + self.alerts.rows
    }

    pub fn total_bytes(&self) -> usize {
        self.events.bytes + self.alerts.bytes
    }

    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from((0..n).collect::<Vec<_>>()))],
        )
        .unwrap()
    }

    #[test]
    fn drain_removes_only_flushed_sequences() {
        let mut b = Buffer::default();
        b.push(1, Table::Events, batch(2));
        b.push(2, Table::Alerts, batch(1));
        b.push(3, Table::Events, batch(5));
        b.push(4, Table::Baselines, batch(5)); // state tables are never buffered
        assert_eq!(
            (b.rows(Table::Events), b.rows(Table::Alerts), b.total_rows()),
            (7, 1, 8)
        );
        assert_eq!(b.batches_upto(Table::Events, 2).len(), 1);
        assert_eq!(b.drain_upto(2).len(), 2); // events at 1, alerts at 2
        assert_eq!((b.rows(Table::Events), b.rows(Table::Alerts)), (5, 0));
        assert!(b.oldest().is_some());
        assert_eq!(b.drain_upto(3).len(), 1);
        assert_eq!(b.total_rows(), 0);
        assert!(b.oldest().is_none() && b.total_bytes() == 0);
    }
}
