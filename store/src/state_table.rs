//! State tables (`baselines`, `inventory`): one Parquet file per table, `<table>/state.parquet`, replaced
//! whole by each `put_state` (an atomic put) and then listed in the manifest. A query holding the previous
//! snapshot sees the new file's contents: the SQL layer reads state files whole with one GET (never by
//! ranges placed by the snapshot's size), and state tables are small.

use crate::audit::{Draft, FileRecord, Op};
use crate::manifest;
use crate::parquet_writer;
use crate::{Store, StoreError, StoredFile, Table};

fn state_path(table: Table) -> String {
    format!("{}/state.parquet", table.name())
}

impl Store {
    pub(crate) async fn write_state(
        &self,
        table: Table,
        batch: arrow::array::RecordBatch,
    ) -> Result<(), StoreError> {
        if table.is_appended() {
            return Err(StoreError::InvalidBatch {
                table: table.name(),
                reason: "appended tables are written with append, not put_state".into(),
            });
        }
        let schema = batch.schema();
        let rows = batch.num_rows() as u64;
        let (bytes, sha256) = tokio::task::spawn_blocking(move || {
            parquet_writer::encode(&batch).map(|b| {
                let sha = parquet_writer::sha256_hex(&b);
                (b, sha)
            })
        })
        .await
        .map_err(|e| StoreError::Manifest(format!("encode task: {e}")))??;
        let file = StoredFile {
            path: state_path(table),
            size: bytes.len() as u64,
            rows,
            min_time_us: 0,
            max_time_us: 0,
        };
        let _guard = self.maintenance.lock().await;
        // Recorded before the rewrite in place; if the rewrite does not happen, `open` restores the previous
        // record when it finds the previous content.
        let previous = self.audit.state().live.get(&file.path).map(|e| FileRecord {
            path: file.path.clone(),
            sha256: e.sha256.clone(),
            size: e.size,
            rows: e.rows,
        });
        let draft = Draft {
            files: vec![FileRecord::of(&file, sha256)],
            ..Draft::new(Op::State, Some(table))
        };
        self.audit.append_async(vec![draft]).await?;
        let path = file.path.clone();
        if let Err(e) = self.objects.put_durable(&file.path, bytes).await {
            // The file was most likely not replaced: record the previous content again, so that a second
            // failed write (an outage lasting two persists) does not leave the chain two records ahead,
            // past what `open` can restore. If the put did land after all, `open` finds this rewrite's
            // content as the previous record and restores it.
            match previous {
                Some(previous) => {
                    let restore = Draft {
                        files: vec![previous],
                        ..Draft::new(Op::State, Some(table))
                    };
                    if let Err(a) = self.audit.append_or_owe_async(vec![restore]).await {
                        tracing::warn!(error = %a, "recording the unchanged state file in the audit chain failed; owed to the next append");
                    }
                }
                None => self.abandon_first_state(&path).await,
            }
            return Err(e);
        }
        let mut next = self.shared.state.lock().manifest.clone();
        let listed = next.contains(&path);
        *next.files_mut(table) = vec![file];
        if let Err(e) = manifest::save(&self.objects, &next).await {
            if !listed {
                self.abandon_first_state(&path).await;
            }
            return Err(e);
        }
        let mut st = self.shared.state.lock();
        st.manifest = next;
        st.state_schemas.insert(table, schema);
        Store::update_gauges(&st);
        Ok(())
    }

    /// A state file's first write that did not become live: recorded as abandoned, so that the next write
    /// counts as the first again. A later write can no longer be cut short before the manifest lists the
    /// file, so a state file sealed twice and missing from the manifest is reported; without this record,
    /// an outage during the very first write would have made the next one look like a removal.
    async fn abandon_first_state(&self, path: &str) {
        let mut abandon = Draft::new(Op::Abandon, None);
        abandon.removed = vec![path.to_string()];
        self.record_abandoned(vec![abandon]).await;
    }

    pub(crate) async fn load_state(
        &self,
        table: Table,
    ) -> Result<Vec<arrow::array::RecordBatch>, StoreError> {
        let files = self.shared.state.lock().manifest.files(table).to_vec();
        let mut out = Vec::new();
        for f in files {
            let bytes = self.objects.get(&f.path).await?;
            out.extend(parquet_writer::decode(bytes, None)?);
        }
        Ok(out)
    }
}
