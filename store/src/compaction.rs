//! Compaction: many small files per hour partition (one per flush) become one, so queries open fewer files.
//! A busy hour's files are spliced (their column chunks copied, see `splice`); a quiet hour's are re-encoded.
//! The merged file is written first, then the manifest swaps inputs for output atomically; the inputs are
//! deleted only after `compaction_grace`, because a query may hold a snapshot that still lists them.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::audit::{Draft, FileRecord, Op};
use crate::manifest;
use crate::metrics::metrics;
use crate::object_files::Upload;
use crate::parquet_writer::{self, EncodedFile};
use crate::partition::{dir_of, hour_of_path, new_file_path};
use crate::splice;
use crate::{Store, StoreError, StoredFile, Table};

/// Groups of files to merge: per partition, files smaller than half the target, in time order, packed
/// greedily into groups of at most `target_bytes`; only groups of two or more files.
pub(crate) fn plan(files: &[StoredFile], target_bytes: u64) -> Vec<Vec<StoredFile>> {
    let mut by_dir: BTreeMap<&str, Vec<&StoredFile>> = BTreeMap::new();
    for f in files {
        if f.size < target_bytes / 2 {
            if let Some(dir) = dir_of(&f.path) {
                by_dir.entry(dir).or_default().push(f);
            }
        }
    }
    let mut groups = Vec::new();
    for (_, mut fs) in by_dir {
        fs.sort_by_key(|f| (f.min_time_us, f.path.clone()));
        let mut group: Vec<StoredFile> = Vec::new();
        let mut size = 0;
        for f in fs {
            if !group.is_empty() && size + f.size > target_bytes {
                if group.len() >= 2 {
                    groups.push(std::mem::take(&mut group));
                }
                group.clear();
                size = 0;
            }
            size += f.size;
            group.push(f.clone());
        }
        if group.len() >= 2 {
            groups.push(group);
        }
    }
    groups
}

impl Store {
    /// Merges every group it can. A group whose inputs cannot be merged (a tampered or unreadable file) is
    /// logged and the pass goes on, so one bad file does not stop compaction everywhere; the first such
    /// error is returned. A failure to write the output, the chain or the manifest ends the pass: it would
    /// fail the same way for every group, each leaving an abandoned file and chain entries behind.
    pub(crate) async fn compact_pass(&self) -> Result<usize, StoreError> {
        let mut replaced = 0;
        let mut first_error = None;
        for table in [Table::Events, Table::Alerts] {
            let files = self.shared.state.lock().manifest.files(table).to_vec();
            for group in plan(&files, self.config.compaction_target_bytes) {
                let first = group.first().map(|f| f.path.clone()).unwrap_or_default();
                match self.merge(table, group).await {
                    Ok(n) => replaced += n,
                    Err(MergeError::Inputs(e)) => {
                        tracing::error!(table = table.name(), group = %first, error = %e, "compacting a group failed; the other groups go on");
                        first_error.get_or_insert(e);
                    }
                    Err(MergeError::Commit(e)) => return Err(e),
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(replaced),
        }
    }

    /// Merges one group; returns how many files it replaced (0 if the group changed under it).
    async fn merge(&self, table: Table, group: Vec<StoredFile>) -> Result<usize, MergeError> {
        let Some(hour) = group.first().and_then(|f| hour_of_path(&f.path)) else {
            return Ok(0);
        };
        let mut inputs = Vec::with_capacity(group.len());
        let mut sealed_inputs = Vec::with_capacity(group.len());
        for f in &group {
            let sealed = self.audit.sealed_sha256(&f.path);
            if let Some(sha256) = &sealed {
                sealed_inputs.push(FileRecord::of(f, sha256.clone()));
            }
            inputs.push((f.path.clone(), sealed));
        }
        let expected_rows: u64 = group.iter().map(|f| f.rows).sum();
        let path = new_file_path(table, hour);
        let spliced = if splice::worth_splicing(expected_rows, group.len()) {
            self.splice_group(&path, &inputs).await?
        } else {
            None
        };
        let (written, method) = match spliced {
            Some(written) => (written, Method::Splice),
            None => {
                let f = self
                    .reencode_group(table, inputs)
                    .await
                    .map_err(MergeError::Inputs)?;
                let size = self
                    .objects
                    .put_durable(&path, f.bytes)
                    .await
                    .map_err(MergeError::Commit)?;
                (
                    Written {
                        size,
                        sha256: f.sha256,
                        rows: f.rows,
                    },
                    Method::Encode,
                )
            }
        };
        let out = StoredFile {
            path,
            size: written.size,
            rows: written.rows,
            min_time_us: group.iter().map(|f| f.min_time_us).min().unwrap_or(0),
            max_time_us: group.iter().map(|f| f.max_time_us).max().unwrap_or(0),
        };
        if out.rows != expected_rows {
            let _ = self.objects.delete(&out.path).await;
            return Err(MergeError::Inputs(StoreError::Manifest(format!(
                "compaction read {} rows where the manifest lists {expected_rows}",
                out.rows
            ))));
        }
        self.commit_group(table, group, out, written.sha256, sealed_inputs, method)
            .await
            .map_err(MergeError::Commit)
    }

    /// Splices the inputs into `path` one at a time: each is read, checked against the chain, appended, and
    /// what it added uploaded before the next is read. `None` (nothing written) when an input cannot join
    /// the first (another schema or key-value metadata, or no offset index where the first has one, or the
    /// reverse): the group is re-encoded instead.
    async fn splice_group(
        &self,
        path: &str,
        inputs: &[(String, Option<String>)],
    ) -> Result<Option<Written>, MergeError> {
        let mut upload = self
            .objects
            .upload(path)
            .await
            .map_err(MergeError::Commit)?;
        match self.splice_into(&mut upload, inputs).await {
            Ok(Some((sha256, rows))) => {
                let size = upload.finish().await.map_err(MergeError::Commit)?;
                Ok(Some(Written { size, sha256, rows }))
            }
            Ok(None) => {
                upload.abort().await;
                Ok(None)
            }
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    async fn splice_into(
        &self,
        upload: &mut Upload,
        inputs: &[(String, Option<String>)],
    ) -> Result<Option<(String, u64)>, MergeError> {
        let mut state: Option<(splice::Splicer, Sha256)> = None;
        for (path, sealed) in inputs {
            let bytes = self.objects.get(path).await.map_err(MergeError::Inputs)?;
            let (path, sealed) = (path.clone(), sealed.clone());
            let (next, taken) = blocking(move || {
                check_sealed(&path, sealed.as_deref(), &bytes)?;
                let input = splice::Input::read(bytes)?;
                let (mut splicer, mut sha) = match state {
                    Some(s) => s,
                    None => (splice::Splicer::new(&input)?, Sha256::new()),
                };
                if !splicer.push(&input)? {
                    return Ok((None, Vec::new()));
                }
                let taken = splicer.take_written()?;
                sha.update(&taken);
                Ok((Some((splicer, sha)), taken))
            })
            .await
            .map_err(MergeError::Inputs)?;
            let Some(next) = next else {
                return Ok(None);
            };
            state = Some(next);
            upload.write(taken).await.map_err(MergeError::Commit)?;
        }
        let Some((splicer, mut sha)) = state else {
            return Ok(None);
        };
        let rows = splicer.rows();
        // Writing the footer depends on what the inputs held, not on the store: a failure here (even a
        // panic in the writer) leaves this group and lets the pass go on.
        let (tail, sha256) = blocking(move || {
            let tail = splicer.finish()?;
            sha.update(&tail);
            Ok((tail, hex::encode(sha.finalize())))
        })
        .await
        .map_err(MergeError::Inputs)?;
        upload.write(tail).await.map_err(MergeError::Commit)?;
        Ok(Some((sha256, rows)))
    }

    /// Decodes every input and encodes their rows again, sorted by time, as one file.
    async fn reencode_group(
        &self,
        table: Table,
        inputs: Vec<(String, Option<String>)>,
    ) -> Result<EncodedFile, StoreError> {
        let mut fetched = Vec::with_capacity(inputs.len());
        for (path, sealed) in inputs {
            let bytes = self.objects.get(&path).await?;
            fetched.push((path, sealed, bytes));
        }
        blocking(move || {
            let mut all = Vec::new();
            for (path, sealed, bytes) in fetched {
                check_sealed(&path, sealed.as_deref(), &bytes)?;
                all.extend(parquet_writer::decode(bytes, None)?);
            }
            let mut files = parquet_writer::encode_partitioned(
                table,
                &all,
                parquet_writer::Effort::Compaction,
            )?;
            match (files.pop(), files.is_empty()) {
                (Some(f), true) => Ok(f),
                _ => Err(StoreError::Manifest(
                    "compaction input spans more than one hour partition".into(),
                )),
            }
        })
        .await
    }

    /// Makes the written merged file live in place of the group: chain entry, then manifest.
    async fn commit_group(
        &self,
        table: Table,
        group: Vec<StoredFile>,
        out: StoredFile,
        sha256: String,
        sealed_inputs: Vec<FileRecord>,
        method: Method,
    ) -> Result<usize, StoreError> {
        let _guard = self.maintenance.lock().await;
        let mut next = self.shared.state.lock().manifest.clone();
        let live = next.files_mut(table);
        // Retention may have dropped an input meanwhile: then this output would resurrect rows.
        if !group.iter().all(|g| live.iter().any(|f| f.path == g.path)) {
            drop(_guard);
            self.objects.delete(&out.path).await?;
            return Ok(0);
        }
        live.retain(|f| !group.iter().any(|g| g.path == f.path));
        live.push(out.clone());
        let draft = Draft {
            files: vec![FileRecord::of(&out, sha256)],
            removed: group.iter().map(|f| f.path.clone()).collect(),
            ..Draft::new(Op::Compact, Some(table))
        };
        if let Err(e) = self.audit.append_async(vec![draft]).await {
            drop(_guard);
            let _ = self.objects.delete(&out.path).await;
            return Err(e);
        }
        if let Err(e) = manifest::save(&self.objects, &next).await {
            // As in a flush: the output is not live here, whatever the disk says, and the inputs stay. The
            // chain retired them with the `compact` entry: take them back with the hashes they were sealed
            // with, or the next pass would refuse them as never sealed (and stop compacting), and verify
            // would name them.
            let mut abandon = Draft::new(Op::Abandon, Some(table));
            abandon.removed = vec![out.path.clone()];
            let adopt = Draft {
                files: sealed_inputs,
                ..Draft::new(Op::Adopt, Some(table))
            };
            self.record_abandoned(vec![abandon, adopt]).await;
            return Err(e);
        }
        {
            let mut st = self.shared.state.lock();
            st.manifest = next;
            Store::update_gauges(&st);
        }
        drop(_guard);
        let n = group.len();
        metrics()
            .compaction_files_merged
            .with_label_values(&[method.as_str()])
            .inc_by(n as u64);
        self.schedule_delete(group.into_iter().map(|f| f.path));
        Ok(n)
    }
}

/// The merged file, durable under its path but not yet live.
struct Written {
    size: u64,
    sha256: String,
    rows: u64,
}

/// The output is sealed afresh and the inputs retired: merging a file changed since it was sealed would
/// launder the change into a file the chain vouches for.
fn check_sealed(path: &str, sealed: Option<&str>, bytes: &[u8]) -> Result<(), StoreError> {
    let found = parquet_writer::sha256_hex(bytes);
    if sealed == Some(found.as_str()) {
        return Ok(());
    }
    metrics().compaction_refused_tampered.inc();
    Err(StoreError::Audit(format!(
        "compaction refused: {path} is not the file the audit chain sealed (SHA-256 {found}, sealed {}); \
         run `vigil verify`",
        sealed.unwrap_or("never")
    )))
}

/// Runs CPU work (hashing, splicing, encoding) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Manifest(format!("compaction task: {e}")))?
}

/// How a group was merged (see `splice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Splice,
    Encode,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Splice => "splice",
            Method::Encode => "encode",
        }
    }
}

/// Why a group was not merged: its inputs (the pass goes on) or the store (the pass stops).
enum MergeError {
    Inputs(StoreError),
    Commit(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &str, name: &str, size: u64, t: i64) -> StoredFile {
        StoredFile {
            path: format!("{dir}/{name}.parquet"),
            size,
            rows: 1,
            min_time_us: t,
            max_time_us: t,
        }
    }

    #[test]
    fn plans_small_files_per_partition_within_the_target() {
        let a = "events/date=2026-11-22/hour=14";
        let b = "events/date=2026-11-22/hour=15";
        let files = vec![
            file(a, "1", 10, 3),
            file(a, "2", 10, 1),
            file(a, "3", 10, 2),
            file(a, "big", 60, 0), // over half the target: left alone
            file(b, "1", 10, 0),   // alone in its partition: nothing to merge
        ];
        let groups = plan(&files, 25);
        // 10 + 10 fit in 25, the third starts a new group of one, which is not merged.
        assert_eq!(groups.len(), 1);
        let names: Vec<_> = groups[0]
            .iter()
            .map(|f| f.path.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["2.parquet", "3.parquet"]);
        assert_eq!(plan(&files, 110)[0].len(), 3);
    }
}
