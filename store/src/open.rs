//! Opening the store: choose the object store, load the manifest, remove crash leftovers, replay the WAL,
//! rebuild the dedupe window, start the WAL writer.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use parking_lot::Mutex;

use crate::audit::{self, AuditLog};
use crate::buffer::Buffer;
use crate::dedupe::{id_column, DedupeSet};
use crate::manifest::{self, Manifest};
use crate::metrics::metrics;
use crate::object_files::ObjectFiles;
use crate::parquet_writer;
use crate::wal::{self, Entries, Wal, WalOptions};
use crate::{Shared, State, Store, StoreConfig, StoreError, Table, OBJECT_STORE_URL};

fn validate(config: &StoreConfig) -> Result<(), StoreError> {
    let bad = |m: &str| Err(StoreError::Config(m.to_string()));
    if config.flush_rows == 0 || config.flush_bytes == 0 {
        return bad("flush_rows and flush_bytes must be positive");
    }
    if config.wal_segment_bytes == 0 {
        return bad("wal_segment_bytes must be positive");
    }
    if config.maintenance_interval.is_zero() {
        return bad("maintenance_interval must be positive");
    }
    Ok(())
}

pub(crate) fn object_files(config: &StoreConfig) -> Result<ObjectFiles, StoreError> {
    match config.object_store_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) if url.starts_with("s3://") => {
            let parsed = url::Url::parse(url)
                .map_err(|e| StoreError::Config(format!("object_store_url {url}: {e}")))?;
            let s3 = AmazonS3Builder::from_env().with_url(url).build()?;
            let prefix = parsed.path().trim_matches('/').to_string();
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            };
            Ok(ObjectFiles {
                store,
                local_root: None,
            })
        }
        Some(url) => Err(StoreError::Config(format!(
            "object_store_url {url}: only s3:// URLs are supported"
        ))),
        None => {
            let root = std::fs::canonicalize(&config.data_dir).map_err(|e| {
                StoreError::Config(format!("data_dir {}: {e}", config.data_dir.display()))
            })?;
            let store = LocalFileSystem::new_with_prefix(&root)?;
            Ok(ObjectFiles {
                store: Arc::new(store),
                local_root: Some(root),
            })
        }
    }
}

/// Sealed Parquet files the manifest does not list although no crash can explain it: the manifest has
/// moved past the flush that sealed them (and the WAL no longer holds their rows), or past the compaction
/// (its inputs are gone too). Someone took them out of the manifest while the store was stopped. They are
/// evidence: kept on disk and live in the chain, so `verify` names them, instead of being deleted as crash
/// leftovers and recorded as abandoned, which would make the removal look legitimate.
fn unlisted_files(
    audit: &AuditLog,
    manifest: &Manifest,
    wal_records: Option<(u64, u64)>,
) -> BTreeSet<String> {
    let state = audit.state();
    let wal_records = state.wal_evidence(manifest, wal_records);
    let unlisted: BTreeSet<String> = state
        .live
        .iter()
        .filter(|(path, sealed)| {
            !path.starts_with("wal/")
                && !manifest.contains(path)
                && !sealed.may_be_unfinished(manifest, wal_records)
        })
        .map(|(path, _)| path.clone())
        .collect();
    for path in &unlisted {
        tracing::error!(%path, "a sealed file is missing from the manifest and no crash explains it; kept on disk, `vigil verify` reports it");
    }
    metrics().audit_unlisted.set(unlisted.len() as i64);
    unlisted
}

/// Deletes Parquet files under the tables' prefixes that the manifest does not list: a crash between
/// writing them and swapping the manifest, or during a delayed delete. `keep` are not crash leftovers.
async fn remove_orphans(
    objects: &ObjectFiles,
    manifest: &Manifest,
    keep: &BTreeSet<String>,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    for table in Table::ALL {
        removed += objects.remove_local_staging_leftovers(table.name());
        for path in objects.list(table.name()).await? {
            if !manifest.contains(&path) && !keep.contains(&path) {
                tracing::info!(%path, "deleting Parquet file not in the manifest (crash leftover)");
                objects.delete(&path).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// A state file is overwritten in place before the manifest swap; after a crash in between, the manifest's
/// size and row count are refreshed from the file itself. Also learns the state tables' schemas.
async fn refresh_state_files(
    objects: &ObjectFiles,
    manifest: &mut Manifest,
) -> Result<HashMap<Table, arrow::datatypes::SchemaRef>, StoreError> {
    let mut schemas = HashMap::new();
    for table in [Table::Baselines, Table::Inventory] {
        for f in manifest.files_mut(table).iter_mut() {
            let bytes = objects.get(&f.path).await?;
            f.size = bytes.len() as u64;
            let builder =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?;
            f.rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
            schemas.insert(table, builder.schema().clone());
        }
    }
    Ok(schemas)
}

/// Newest files first, only the id column, until the window is full; then the replayed WAL on top.
async fn rebuild_dedupe(
    objects: &ObjectFiles,
    manifest: &Manifest,
    replayed: &[(u64, Entries)],
    window: usize,
) -> Result<DedupeSet, StoreError> {
    let mut set = DedupeSet::new(window);
    if window == 0 {
        return Ok(set);
    }
    let wal_rows: usize = replayed
        .iter()
        .flat_map(|(_, e)| e.iter())
        .map(|(_, b)| b.num_rows())
        .sum();
    for table in [Table::Events, Table::Alerts] {
        let Some(col) = id_column(table) else {
            continue;
        };
        let mut files: Vec<_> = manifest.files(table).to_vec();
        files.sort_by_key(|f| std::cmp::Reverse(f.max_time_us));
        let mut picked = Vec::new();
        let mut rows = wal_rows;
        for f in files {
            if rows >= window {
                break;
            }
            rows += f.rows as usize;
            picked.push(f);
        }
        // Oldest first, so FIFO eviction drops the oldest ids if the window overflows.
        for f in picked.iter().rev() {
            let bytes = objects.get(&f.path).await?;
            let batches =
                tokio::task::spawn_blocking(move || parquet_writer::decode(bytes, Some(&[col])))
                    .await
                    .map_err(|e| StoreError::Manifest(format!("decode task: {e}")))??;
            for b in &batches {
                set.remember(table, b);
            }
        }
    }
    for (_, entries) in replayed {
        for (table, batch) in entries {
            set.remember(*table, batch);
        }
    }
    Ok(set)
}

pub(crate) async fn open(
    config: StoreConfig,
    store: Option<Arc<dyn ObjectStore>>,
) -> Result<Arc<Store>, StoreError> {
    validate(&config)?;
    let wal_dir = config.data_dir.join("wal");
    std::fs::create_dir_all(&wal_dir).map_err(|source| StoreError::Wal {
        path: wal_dir.clone(),
        source,
    })?;
    // Before anything is read: another process's WAL, chain and manifest are not ours to replay or repair.
    let dir_lock = crate::dir_lock::acquire(&config.data_dir)?;
    let objects = Arc::new(match store {
        Some(store) => ObjectFiles {
            store,
            local_root: None,
        },
        None => object_files(&config)?,
    });
    // Before the manifest is read or orphans deleted: another store's files are not ours to judge.
    crate::writer_claim::claim(&objects, &config.data_dir).await?;
    let mut manifest = manifest::load(&objects).await?;
    let data_dir = config.data_dir.clone();
    let audit = Arc::new(
        tokio::task::spawn_blocking(move || AuditLog::open(&data_dir))
            .await
            .map_err(|e| StoreError::Audit(format!("open task: {e}")))??,
    );
    let sealed: HashMap<String, wal::SealedSegment> = audit
        .state()
        .live
        .into_iter()
        .filter(|(path, _)| path.starts_with("wal/"))
        .map(|(path, x)| {
            let seal = wal::SealedSegment {
                sha256: x.sha256,
                records: x.rows,
            };
            (path, seal)
        })
        .collect();
    let dir = wal_dir.clone();
    let after = manifest.wal_seq;
    let replay = tokio::task::spawn_blocking(move || wal::replay(&dir, after, &sealed))
        .await
        .map_err(|e| StoreError::Manifest(format!("replay task: {e}")))??;
    metrics()
        .wal_quarantined
        .inc_by(replay.quarantined.len() as u64);
    let wal_records = replay.min_seq.map(|lowest| (lowest, replay.max_seq));
    let unlisted = unlisted_files(&audit, &manifest, wal_records);
    let orphans = remove_orphans(&objects, &manifest, &unlisted).await?;
    let state_schemas = refresh_state_files(&objects, &mut manifest).await?;
    let dedupe = rebuild_dedupe(
        &objects,
        &manifest,
        &replay.records,
        config.dedupe_window_rows,
    )
    .await?;
    audit::reconcile(
        &audit,
        &objects,
        &manifest,
        &unlisted,
        &replay.removed,
        &replay.segments,
    )
    .await?;

    let mut buffer = Buffer::default();
    let replayed_rows: usize = replay
        .records
        .iter()
        .flat_map(|(_, e)| e.iter())
        .map(|(_, b)| b.num_rows())
        .sum();
    for (seq, entries) in replay.records {
        for (table, batch) in entries {
            buffer.push(seq, table, batch);
        }
    }
    tracing::info!(
        wal_seq = manifest.wal_seq,
        replayed_rows,
        truncated_bytes = replay.truncated_bytes,
        orphans,
        dedupe_ids = dedupe.len(),
        "store opened"
    );
    let state = State {
        manifest,
        buffer,
        last_seq: replay.max_seq,
        state_schemas,
    };
    Store::update_gauges(&state);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        flush_wanted: tokio::sync::Notify::new(),
        flush_rows: config.flush_rows,
        flush_bytes: config.flush_bytes,
        flush_age: config.flush_age,
    });
    let for_commit = shared.clone();
    let commit = Box::new(move |records: Vec<(u64, Entries)>| {
        let mut st = for_commit.state.lock();
        for (seq, entries) in records {
            for (table, batch) in entries {
                st.buffer.push(seq, table, batch);
            }
            st.last_seq = seq;
        }
        let m = crate::metrics::metrics();
        for t in [Table::Events, Table::Alerts] {
            m.buffered_rows
                .with_label_values(&[t.name()])
                .set(st.buffer.rows(t) as i64);
        }
        let full = st.buffer.total_rows() >= for_commit.flush_rows
            || st.buffer.total_bytes() >= for_commit.flush_bytes;
        drop(st);
        if full {
            for_commit.flush_wanted.notify_one();
        }
    });
    let wal = Wal::start(
        WalOptions {
            dir: wal_dir,
            next_seq: replay.max_seq.max(replay.quarantined_max_seq) + 1,
            segment_bytes: config.wal_segment_bytes,
            group_commit_window: config.group_commit_window,
            sealed: replay.segments,
            audit: Some(audit.clone()),
        },
        commit,
    )?;
    let url = url::Url::parse(OBJECT_STORE_URL).map_err(|e| StoreError::Config(e.to_string()))?;
    let (stop, _) = tokio::sync::watch::channel(false);
    Ok(Arc::new(Store {
        config,
        objects,
        url,
        shared,
        wal,
        audit,
        dedupe: Arc::new(Mutex::new(dedupe)),
        in_flight: Arc::new(crate::in_flight::InFlight::new()),
        maintenance: tokio::sync::Mutex::new(()),
        pending_deletes: Mutex::new(Vec::new()),
        tasks: Mutex::new(Vec::new()),
        stop,
        closed: AtomicBool::new(false),
        background: AtomicBool::new(false),
        _dir_lock: dir_lock,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Draft, FileRecord, Op};
    use crate::StoredFile;

    fn seal(log: &AuditLog, path: &str, wal_seq: u64) {
        let draft = Draft {
            files: vec![FileRecord {
                path: path.into(),
                sha256: "ab".into(),
                size: 1,
                rows: 1,
            }],
            wal_seq: Some(wal_seq),
            ..Draft::new(Op::Seal, Some(Table::Events))
        };
        log.append(vec![draft]).unwrap();
    }

    /// Flushes up to WAL positions 10 and 20; the WAL holds records 15 to 30 (a segment that also held
    /// records of the second flush). A manifest at 10 that does not list the second flush's file is a flush
    /// cut short by a crash, its rows still in the WAL. A manifest set by hand to 14, a position no flush
    /// recorded, would make the file look the same while records 11 to 14 exist only in it.
    #[test]
    fn a_manifest_position_no_flush_recorded_explains_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        seal(&log, "events/a.parquet", 10);
        seal(&log, "events/b.parquet", 20);
        let mut manifest = Manifest::default();
        manifest.files_mut(Table::Events).push(StoredFile {
            path: "events/a.parquet".into(),
            size: 1,
            rows: 1,
            min_time_us: 0,
            max_time_us: 0,
        });
        let wal = Some((11, 30));
        manifest.wal_seq = 10;
        assert!(
            unlisted_files(&log, &manifest, wal).is_empty(),
            "a crash explains it"
        );
        manifest.wal_seq = 14;
        let wal = Some((15, 30));
        assert_eq!(
            unlisted_files(&log, &manifest, wal)
                .into_iter()
                .collect::<Vec<_>>(),
            ["events/b.parquet"],
            "no crash leaves a manifest at 14"
        );
    }
}
