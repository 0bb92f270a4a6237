//! Retention: whole hour partitions older than a table's retention leave the manifest, then the disk
//! (after the same grace period as compaction, for queries holding an older snapshot). Partition
//! directories left empty are removed on local disk.

use std::collections::BTreeSet;

use crate::audit::{Draft, FileRecord, Op};
use crate::manifest;
use crate::metrics::metrics;
use crate::partition::{dir_of, hour_of_path, HOUR_US};
use crate::{Store, StoreError, StoredFile, Table};

/// Files whose partition hour ended at or before `cutoff_us`. A path without a partition falls back to the
/// file's newest row.
pub(crate) fn expired(files: &[StoredFile], cutoff_us: i64) -> Vec<StoredFile> {
    files
        .iter()
        .filter(|f| {
            let end = hour_of_path(&f.path)
                .map(|h| h + HOUR_US)
                .unwrap_or(f.max_time_us.saturating_add(1));
            end <= cutoff_us
        })
        .cloned()
        .collect()
}

impl Store {
    pub(crate) async fn retention_pass(&self, now_us: i64) -> Result<usize, StoreError> {
        let _guard = self.maintenance.lock().await;
        let mut next = self.shared.state.lock().manifest.clone();
        let mut dropped: Vec<(Table, Vec<StoredFile>)> = Vec::new();
        for table in [Table::Events, Table::Alerts] {
            let Some(keep) = self.config.retention(table) else {
                continue;
            };
            let keep_us = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
            let gone = expired(next.files(table), now_us.saturating_sub(keep_us));
            if gone.is_empty() {
                continue;
            }
            next.files_mut(table)
                .retain(|f| !gone.iter().any(|g| g.path == f.path));
            dropped.push((table, gone));
        }
        if dropped.is_empty() {
            return Ok(0);
        }
        let drafts = dropped
            .iter()
            .map(|(table, files)| Draft {
                removed: files.iter().map(|f| f.path.clone()).collect(),
                ..Draft::new(Op::Retain, Some(*table))
            })
            .collect();
        // The hashes the dropped files were sealed with, to take them back if the manifest keeps them.
        let sealed: Vec<(Table, Vec<FileRecord>)> = dropped
            .iter()
            .map(|(table, files)| {
                let records = files
                    .iter()
                    .filter_map(|f| {
                        self.audit
                            .sealed_sha256(&f.path)
                            .map(|sha256| FileRecord::of(f, sha256))
                    })
                    .collect();
                (*table, records)
            })
            .collect();
        self.audit.append_async(drafts).await?;
        if let Err(e) = manifest::save(&self.objects, &next).await {
            // The files stay live; the chain retired them, so take them back, or compaction would refuse
            // them as never sealed and verify would name them.
            let adopt = sealed
                .into_iter()
                .map(|(table, files)| Draft {
                    files,
                    ..Draft::new(Op::Adopt, Some(table))
                })
                .collect();
            self.record_abandoned(adopt).await;
            return Err(e);
        }
        {
            let mut st = self.shared.state.lock();
            st.manifest = next;
            Store::update_gauges(&st);
        }
        drop(_guard);
        let mut partitions = 0;
        for (table, files) in dropped {
            let dirs: BTreeSet<&str> = files.iter().filter_map(|f| dir_of(&f.path)).collect();
            partitions += dirs.len();
            metrics()
                .retention_partitions_deleted
                .with_label_values(&[table.name()])
                .inc_by(dirs.len() as u64);
            tracing::info!(
                table = table.name(),
                partitions = dirs.len(),
                files = files.len(),
                "retention"
            );
            self.schedule_delete(files.into_iter().map(|f| f.path));
        }
        Ok(partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_wholly_before_the_cutoff_expire() {
        let f = |hour: u32| StoredFile {
            path: format!("events/date=2026-11-22/hour={hour:02}/x.parquet"),
            size: 1,
            rows: 1,
            min_time_us: 0,
            max_time_us: 0,
        };
        let h14 = hour_of_path(&f(14).path).unwrap();
        let files = vec![f(13), f(14), f(15)];
        // Cutoff in the middle of hour 14: only hour 13 has ended.
        let gone = expired(&files, h14 + HOUR_US / 2);
        assert_eq!(gone, vec![f(13)]);
        assert_eq!(expired(&files, h14 + HOUR_US).len(), 2);
    }
}
