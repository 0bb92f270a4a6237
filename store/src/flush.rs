//! Flush: buffered rows -> hour-partitioned Parquet -> manifest swap -> buffer drop -> WAL segment deletion,
//! in that order, so that at every instant each acknowledged row is durable in the WAL or in a file the
//! manifest lists (and never visible twice).

use crate::audit::{Draft, FileRecord, Op};
use crate::manifest;
use crate::metrics::metrics;
use crate::parquet_writer::write_partitioned;
use crate::{Store, StoreError, StoredFile, Table};

/// Files one flush wrote for a table: the table, its row count, each file with its SHA-256.
type Written = (Table, u64, Vec<(StoredFile, String)>);

impl Store {
    #[tracing::instrument(level = "debug", name = "store.flush", skip_all, fields(rows, files))]
    pub(crate) async fn flush_buffer(&self) -> Result<(), StoreError> {
        let _guard = self.maintenance.lock().await;
        let started = std::time::Instant::now();
        let (seq, parts, mut next) = {
            let st = self.shared.state.lock();
            let parts: Vec<_> = [Table::Events, Table::Alerts]
                .into_iter()
                .map(|t| (t, st.buffer.batches_upto(t, st.last_seq)))
                .filter(|(_, b)| !b.is_empty())
                .collect();
            (st.last_seq, parts, st.manifest.clone())
        };
        if parts.is_empty() {
            return Ok(());
        }
        let mut written = Vec::new();
        for (table, batches) in parts {
            let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            match write_partitioned(&self.objects, table, batches).await {
                Ok(files) => written.push((table, rows, files)),
                Err(e) => {
                    self.delete_written(&written).await;
                    return Err(e);
                }
            }
        }
        // Sealed in the audit chain before they go live; a crash in between leaves them to `open`, which
        // deletes them and records that as `abandon`.
        let drafts = written
            .iter()
            .map(|(table, _, files)| Draft {
                files: files
                    .iter()
                    .map(|(f, sha)| FileRecord::of(f, sha.clone()))
                    .collect(),
                wal_seq: Some(seq),
                ..Draft::new(Op::Seal, Some(*table))
            })
            .collect();
        if let Err(e) = self.audit.append_async(drafts).await {
            self.delete_written(&written).await;
            return Err(e);
        }
        for (table, _, files) in &written {
            next.files_mut(*table)
                .extend(files.iter().map(|(f, _)| f.clone()));
        }
        next.wal_seq = seq;
        // If this fails the files stay: whether the new manifest landed is unknown, and `open` deletes
        // them if it did not. They are not live here either way (the rows stay buffered for the next
        // flush), which the chain records now: once a later flush covers their WAL records, `open` could
        // no longer tell them from files taken out of the manifest.
        if let Err(e) = manifest::save(&self.objects, &next).await {
            let mut abandon = Draft::new(Op::Abandon, None);
            abandon.removed = written
                .iter()
                .flat_map(|(_, _, files)| files.iter().map(|(f, _)| f.path.clone()))
                .collect();
            self.record_abandoned(vec![abandon]).await;
            return Err(e);
        }
        let drained = {
            let mut st = self.shared.state.lock();
            st.manifest = next;
            let drained = st.buffer.drain_upto(seq);
            Store::update_gauges(&st);
            drained
        };
        // Freed here, after the lock that every append takes: a full buffer is hundreds of megabytes.
        drop(drained);
        tracing::Span::current()
            .record(
                "rows",
                written.iter().map(|(_, rows, _)| *rows as i64).sum::<i64>(),
            )
            .record(
                "files",
                written
                    .iter()
                    .map(|(_, _, files)| files.len() as i64)
                    .sum::<i64>(),
            );
        let m = metrics();
        m.flush_seconds.observe(started.elapsed().as_secs_f64());
        for (table, rows, _) in &written {
            m.flushes.with_label_values(&[table.name()]).inc();
            m.rows_flushed
                .with_label_values(&[table.name()])
                .inc_by(*rows);
        }
        drop(_guard);
        self.wal.roll().await?;
        self.wal.delete_covered_blocking(seq).await?;
        Ok(())
    }

    /// Records files sealed but not made live after a failed manifest save (or taken back after one).
    /// If even that append fails, the record is owed and goes ahead of the chain's next append, which
    /// precedes every later manifest save.
    pub(crate) async fn record_abandoned(&self, drafts: Vec<Draft>) {
        if let Err(e) = self.audit.append_or_owe_async(drafts).await {
            tracing::error!(error = %e, "recording files a failed manifest save left out; owed to the next append");
        }
    }

    async fn delete_written(&self, written: &[Written]) {
        for (f, _) in written.iter().flat_map(|(_, _, files)| files) {
            let _ = self.objects.delete(&f.path).await;
        }
    }
}
