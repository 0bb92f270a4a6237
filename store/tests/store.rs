//! End-to-end behaviour of the store on a temporary directory: durability across simulated crashes,
//! exactly-once visibility, dedupe, compaction under concurrent reads, retention, state tables.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use vigil_ingest::{EventBatchBuilder, EventKind, EventRow};
use vigil_store::{Store, StoreConfig, Table};

const HOUR_US: i64 = 3_600_000_000;
/// 2026-11-22T14:00:00Z
const T14: i64 = 1_795_356_000_000_000;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        flush_rows: 1_000_000,
        flush_age: Duration::from_secs(3600),
        compaction_grace: Duration::ZERO,
        ..Default::default()
    }
}

fn events(ids: std::ops::Range<usize>, time_us: i64) -> RecordBatch {
    let mut b = EventBatchBuilder::with_capacity(ids.len());
    for i in ids {
        b.push(&EventRow {
            time_us: time_us + i as i64,
            event_id: format!("e{i}"),
            kind: Some(EventKind::Inference),
            user_id: Some(format!("user{}", i % 7)),
            model: Some("gpt-4o".into()),
            prompt_text: Some("p".repeat(300)),
            ..Default::default()
        });
    }
    b.finish()
}

/// Appends events `ids` at `time_us` and flushes them into a file of their own.
async fn flushed(store: &Store, ids: std::ops::Range<usize>, time_us: i64) {
    store
        .append(vec![(Table::Events, events(ids, time_us))])
        .await
        .unwrap();
    store.flush().await.unwrap();
}

/// Appends `appends` batches of 10 events (ids `e0`, `e1`, ...), one WAL record each.
async fn append_tens(store: &Store, appends: usize) {
    for k in 0..appends {
        store
            .append(vec![(Table::Events, events(k * 10..k * 10 + 10, T14))])
            .await
            .unwrap();
    }
}

/// A stored file's bytes, read through the store's object store.
async fn file_bytes(store: &Store, path: &str) -> Bytes {
    let (_, os) = store.object_store();
    os.get(&ObjectPath::from(path))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

/// Every `event_id` a query would see: the files are really read through the object store.
async fn visible_ids(store: &Store, table: Table) -> Vec<String> {
    let col = if table == Table::Events {
        "event_id"
    } else {
        "alert_id"
    };
    let snap = store.snapshot(table);
    let mut batches = snap.buffered.clone();
    for f in &snap.files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file_bytes(store, &f.path).await)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(col)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_exactly(ids: Vec<String>, expected: usize) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates visible");
    assert_eq!(ids.len(), expected);
}

#[tokio::test]
async fn append_is_visible_in_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store
        .append(vec![(Table::Events, events(0..10, T14))])
        .await
        .unwrap();
    let snap = store.snapshot(Table::Events);
    assert_eq!((snap.files.len(), snap.row_count()), (0, 10));
    assert_eq!(snap.schema, vigil_ingest::event_schema());
    assert!(dir.path().join("wal").read_dir().unwrap().count() >= 1);
}

#[tokio::test]
async fn crash_without_flush_replays_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(config(dir.path())).await.unwrap();
        append_tens(&store, 3).await;
        // Dropped without flush or shutdown: what `kill -9` leaves.
    }
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_exactly(visible_ids(&store, Table::Events).await, 30);
    store.flush().await.unwrap();
    assert_eq!(store.snapshot(Table::Events).buffered.len(), 0);
    drop(store);
    let store = Store::open(config(dir.path())).await.unwrap();
    let snap = store.snapshot(Table::Events);
    assert!(
        snap.buffered.is_empty(),
        "records covered by the manifest must not be replayed"
    );
    assert_exactly(visible_ids(&store, Table::Events).await, 30);
}

#[tokio::test]
async fn flush_then_crash_keeps_files_and_later_rows_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(config(dir.path())).await.unwrap();
        store
            .append(vec![(Table::Events, events(0..20, T14))])
            .await
            .unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store.wal_segments(),
            1,
            "covered segments are deleted after the manifest swap"
        );
        store
            .append(vec![(Table::Events, events(20..25, T14))])
            .await
            .unwrap();
    }
    let store = Store::open(config(dir.path())).await.unwrap();
    let snap = store.snapshot(Table::Events);
    assert_eq!(snap.files.iter().map(|f| f.rows).sum::<u64>(), 20);
    assert_eq!(snap.buffered.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    assert_exactly(visible_ids(&store, Table::Events).await, 25);
}

#[tokio::test]
async fn parquet_left_by_a_crash_before_the_manifest_swap_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let orphan = dir
        .path()
        .join("events/date=2026-11-22/hour=14/0190c0de-orphan.parquet");
    {
        let store = Store::open(config(dir.path())).await.unwrap();
        let batch = events(0..10, T14);
        store
            .append(vec![(Table::Events, batch.clone())])
            .await
            .unwrap();
        // The flush wrote its file, then the process died before `_manifest.json` was replaced.
        std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&orphan).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(!orphan.exists());
    assert_exactly(visible_ids(&store, Table::Events).await, 10);
}

#[tokio::test]
async fn torn_wal_tail_keeps_earlier_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(config(dir.path())).await.unwrap();
        store
            .append(vec![(Table::Events, events(0..10, T14))])
            .await
            .unwrap();
        store
            .append(vec![(Table::Events, events(10..20, T14))])
            .await
            .unwrap();
        store
            .append(vec![(Table::Events, events(20..30, T14))])
            .await
            .unwrap();
    }
    let segment = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let ids = visible_ids(&store, Table::Events).await;
    assert_exactly(ids.clone(), 20);
    assert!(!ids.contains(&"e25".to_string()));
    // The store goes on: the torn record's rows can be sent again (the dedupe window never saw them).
    store
        .append(vec![(Table::Events, events(20..30, T14))])
        .await
        .unwrap();
    drop(store);
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_exactly(visible_ids(&store, Table::Events).await, 30);
}

#[tokio::test]
async fn resent_rows_are_dropped_within_the_window_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store
        .append(vec![(Table::Events, events(0..10, T14))])
        .await
        .unwrap();
    store
        .append(vec![(Table::Events, events(5..15, T14))])
        .await
        .unwrap();
    assert_exactly(visible_ids(&store, Table::Events).await, 15);
    drop(store);
    // Rebuilt from the replayed WAL.
    let store = Store::open(config(dir.path())).await.unwrap();
    store
        .append(vec![(Table::Events, events(0..15, T14))])
        .await
        .unwrap();
    assert_exactly(visible_ids(&store, Table::Events).await, 15);
    store.flush().await.unwrap();
    drop(store);
    // Rebuilt from the Parquet files.
    let store = Store::open(config(dir.path())).await.unwrap();
    store
        .append(vec![(Table::Events, events(10..20, T14))])
        .await
        .unwrap();
    assert_exactly(visible_ids(&store, Table::Events).await, 20);
}

#[tokio::test]
async fn alerts_are_stored_and_deduplicated_by_alert_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let alert = |id: &str| vigil_detect::Alert {
        alert_id: id.into(),
        time_us: T14 + 5,
        detector: "prompt_injection".into(),
        severity: vigil_detect::Severity::High,
        entity_type: "user".into(),
        entity_id: "alice".into(),
        score: 3.0,
        title: "t".into(),
        description: "d".into(),
        evidence_event_ids: vec!["e1".into()],
        evidence: "x".into(),
        owasp: None,
        atlas: None,
        fingerprint: "f".into(),
    };
    let batch = vigil_detect::alerts_to_batch(&[alert("a1"), alert("a2")]);
    store
        .append(vec![
            (Table::Events, events(0..3, T14)),
            (Table::Alerts, batch.clone()),
        ])
        .await
        .unwrap();
    store.append(vec![(Table::Alerts, batch)]).await.unwrap();
    store.flush().await.unwrap();
    assert_exactly(visible_ids(&store, Table::Alerts).await, 2);
    let files = store.snapshot(Table::Alerts).files;
    assert!(
        files[0].path.starts_with("alerts/date=2026-11-22/hour=14/"),
        "{}",
        files[0].path
    );
    // State tables cannot be appended, and a batch of the wrong shape is refused.
    assert!(store
        .append(vec![(Table::Baselines, events(0..1, T14))])
        .await
        .is_err());
    assert!(store
        .append(vec![(Table::Alerts, events(0..1, T14))])
        .await
        .is_err());
}

/// A histogram's sample count and sum, across every store in this process (they share the registry).
fn histogram_totals(name: &str) -> (u64, f64) {
    prometheus::gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_histogram()))
        .fold((0, 0.0), |(count, sum), h| {
            (count + h.get_sample_count(), sum + h.get_sample_sum())
        })
}

#[tokio::test]
async fn flush_writes_hive_partitions_sorted_with_time_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    // Two hours, out of order.
    store
        .append(vec![(Table::Events, events(0..5, T14 + HOUR_US))])
        .await
        .unwrap();
    store
        .append(vec![(Table::Events, events(5..10, T14))])
        .await
        .unwrap();
    let (timed_before, _) = histogram_totals("vigil_store_flush_seconds");
    store.flush().await.unwrap();
    // Other tests in this process flush too, so only "at least one more" is certain.
    assert!(
        histogram_totals("vigil_store_flush_seconds").0 > timed_before,
        "the flush was not timed"
    );
    let mut files = store.snapshot(Table::Events).files;
    files.sort_by_key(|f| f.min_time_us);
    assert_eq!(files.len(), 2);
    assert!(
        files[0].path.starts_with("events/date=2026-11-22/hour=14/"),
        "{}",
        files[0].path
    );
    assert!(
        files[1].path.starts_with("events/date=2026-11-22/hour=15/"),
        "{}",
        files[1].path
    );
    assert_eq!(
        (files[0].min_time_us, files[0].max_time_us),
        (T14 + 5, T14 + 9)
    );
    assert!(dir.path().join(&files[0].path).exists());
    assert!(dir.path().join("_manifest.json").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["tables"]["events"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_small_files_while_readers_see_constant_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        compaction_grace: Duration::from_millis(1500),
        ..config(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    for k in 0..8 {
        flushed(&store, k * 50..k * 50 + 50, T14).await;
    }
    for k in 8..11 {
        flushed(&store, k * 50..k * 50 + 50, T14 + 2 * HOUR_US).await;
    }
    let before = store.snapshot(Table::Events).files;
    assert_eq!(before.len(), 11);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                assert_exactly(visible_ids(&store, Table::Events).await, 550);
                reads += 1;
            }
            reads
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.compact().await.unwrap(), 11);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    assert!(reader.await.unwrap() > 1);

    let after = store.snapshot(Table::Events).files;
    assert_eq!(after.len(), 2, "one file per partition");
    assert_exactly(visible_ids(&store, Table::Events).await, 550);
    // Replaced files outlive the grace period only.
    assert!(before.iter().all(|f| dir.path().join(&f.path).exists()));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(store.compact().await.unwrap(), 0);
    assert!(before.iter().all(|f| !dir.path().join(&f.path).exists()));
    drop(store);
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_exactly(visible_ids(&store, Table::Events).await, 550);
}

/// A busy hour's flushes hold row groups of tens of thousands of rows: compaction splices them into one
/// file as they are (their rows are not decoded and encoded again), and the file reads back whole, in time
/// order, sealed in the chain. A quiet hour's small flushes are re-encoded into one row group.
#[tokio::test]
async fn busy_hours_are_compacted_by_splicing_and_quiet_ones_by_encoding() {
    splices_busy_hours(None).await;
}

/// The same through a remote object store, where the spliced file is a multipart upload.
#[tokio::test]
async fn busy_hours_are_spliced_into_a_remote_object_store() {
    splices_busy_hours(Some(Arc::new(object_store::memory::InMemory::new()))).await;
}

async fn splices_busy_hours(remote: Option<Arc<dyn object_store::ObjectStore>>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let store = match &remote {
        Some(r) => Store::open_with_object_store(cfg.clone(), r.clone())
            .await
            .unwrap(),
        None => Store::open(cfg.clone()).await.unwrap(),
    };
    let busy = 20_000;
    for k in 0..3 {
        flushed(&store, k * busy..(k + 1) * busy, T14).await;
    }
    for k in 0..3 {
        let first = 100_000 + k * 10;
        flushed(&store, first..first + 10, T14 + HOUR_US).await;
    }
    assert_eq!(store.compact().await.unwrap(), 6);
    assert_exactly(visible_ids(&store, Table::Events).await, 3 * busy + 30);

    let mut groups = Vec::new();
    for f in store.snapshot(Table::Events).files {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(file_bytes(&store, &f.path).await).unwrap();
        groups.push((f.min_time_us, reader.metadata().num_row_groups(), f.rows));
        let times: Vec<i64> = reader
            .build()
            .unwrap()
            .flat_map(|b| {
                b.unwrap()
                    .column(0)
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert!(times.is_sorted());
        assert_eq!(
            (times[0], times[times.len() - 1]),
            (f.min_time_us, f.max_time_us)
        );
    }
    groups.sort();
    assert_eq!(
        groups,
        vec![(T14, 3, 3 * busy as u64), (T14 + HOUR_US + 100_000, 1, 30)],
        "the busy hour keeps its three flushes' row groups, the quiet one is packed into one"
    );
    let report = match remote {
        Some(r) => vigil_store::audit::verify_with_object_store(&cfg, r)
            .await
            .unwrap(),
        None => vigil_store::audit::verify(&cfg).await.unwrap(),
    };
    assert!(report.is_clean(), "{report}");
}

/// A spliced file of several upload parts (8 MiB each) is whole: every row reads back, in a local
/// directory (a staging file written part by part) and in a remote store (a multipart upload).
#[tokio::test]
async fn a_spliced_file_of_several_upload_parts_reads_back_whole() {
    for remote in [
        None,
        Some(Arc::new(object_store::memory::InMemory::new()) as Arc<dyn object_store::ObjectStore>),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = match &remote {
            Some(r) => Store::open_with_object_store(config(dir.path()), r.clone())
                .await
                .unwrap(),
            None => Store::open(config(dir.path())).await.unwrap(),
        };
        // Prompts of random hex: zstd cannot shrink them below half, so 60,000 rows make ~14 MiB.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let rows = 20_000;
        for k in 0..3 {
            let mut b = EventBatchBuilder::with_capacity(rows);
            for i in k * rows..(k + 1) * rows {
                let prompt: String = (0..25)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        format!("{seed:016x}")
                    })
                    .collect();
                b.push(&EventRow {
                    time_us: T14 + i as i64,
                    event_id: format!("e{i}"),
                    kind: Some(EventKind::Inference),
                    prompt_text: Some(prompt),
                    ..Default::default()
                });
            }
            store
                .append(vec![(Table::Events, b.finish())])
                .await
                .unwrap();
            store.flush().await.unwrap();
        }
        assert_eq!(store.compact().await.unwrap(), 3);
        let files = store.snapshot(Table::Events).files;
        assert_eq!(files.len(), 1);
        assert!(
            files[0].size > 8 << 20,
            "more than one upload part: {} bytes",
            files[0].size
        );
        assert_exactly(visible_ids(&store, Table::Events).await, 3 * rows);
    }
}

#[tokio::test]
async fn retention_removes_old_partitions_from_disk_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let now = T14 + 40 * 24 * HOUR_US;
    store
        .append(vec![(Table::Events, events(0..10, T14))])
        .await
        .unwrap(); // 40 days old
    store
        .append(vec![(Table::Events, events(10..20, now - HOUR_US))])
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert!(dir.path().join("events/date=2026-11-22/hour=14").exists());
    assert_eq!(store.apply_retention(now).await.unwrap(), 1);
    let ids = visible_ids(&store, Table::Events).await;
    assert_exactly(ids.clone(), 10);
    assert!(ids.contains(&"e15".to_string()));
    assert!(
        !dir.path().join("events/date=2026-11-22").exists(),
        "empty partition directories are removed"
    );
    assert!(dir.path().join("events").exists());
    assert_eq!(store.apply_retention(now).await.unwrap(), 0);
}

#[tokio::test]
async fn state_tables_are_replaced_whole_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(store.read_state(Table::Inventory).await.unwrap().is_empty());
    store
        .put_state(Table::Baselines, events(0..5, T14))
        .await
        .unwrap();
    store
        .put_state(Table::Baselines, events(0..3, T14))
        .await
        .unwrap();
    let snap = store.snapshot(Table::Baselines);
    assert_eq!(snap.files.len(), 1);
    assert_eq!(
        (snap.files[0].path.as_str(), snap.files[0].rows),
        ("baselines/state.parquet", 3)
    );
    assert_eq!(
        snap.schema,
        vigil_ingest::event_schema(),
        "the batch's own schema"
    );
    drop(store);
    let store = Store::open(config(dir.path())).await.unwrap();
    let back = store.read_state(Table::Baselines).await.unwrap();
    assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    assert!(store
        .put_state(Table::Events, events(0..1, T14))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_flushes_by_age_and_shutdown_stops_appends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        flush_age: Duration::from_millis(300),
        ..config(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    store.spawn_background();
    store
        .append(vec![(Table::Events, events(0..10, T14))])
        .await
        .unwrap();
    let mut flushed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !store.snapshot(Table::Events).files.is_empty() {
            flushed = true;
            break;
        }
    }
    assert!(flushed, "the age-based flush did not run");
    store
        .append(vec![(Table::Events, events(10..12, T14))])
        .await
        .unwrap();
    store.shutdown().await.unwrap();
    assert!(
        store.snapshot(Table::Events).buffered.is_empty(),
        "shutdown flushes"
    );
    assert!(matches!(
        store
            .append(vec![(Table::Events, events(20..21, T14))])
            .await,
        Err(vigil_store::StoreError::Closed)
    ));
}

#[tokio::test]
async fn flush_by_row_count_without_background() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        flush_rows: 25,
        ..config(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    store
        .append(vec![(Table::Events, events(0..20, T14))])
        .await
        .unwrap();
    assert!(store.snapshot(Table::Events).files.is_empty());
    store
        .append(vec![(Table::Events, events(20..30, T14))])
        .await
        .unwrap();
    let snap = store.snapshot(Table::Events);
    assert_eq!((snap.files.len(), snap.buffered.len()), (1, 0));
}

/// Two stores (two data directories) on one remote prefix: the second would rewrite the manifest and
/// delete the first's new files as orphans, so it is refused; the first's own restart is not.
#[tokio::test]
async fn a_second_store_on_one_remote_prefix_is_refused() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let remote: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let first = Store::open_with_object_store(config(first_dir.path()), remote.clone())
        .await
        .unwrap();
    first
        .append(vec![(Table::Events, events(0..10, T14))])
        .await
        .unwrap();
    first.flush().await.unwrap();

    let err = Store::open_with_object_store(config(second_dir.path()), remote.clone())
        .await
        .err()
        .expect("the second store is refused");
    let msg = err.to_string();
    assert!(
        matches!(err, vigil_store::StoreError::PrefixClaimed { .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&first_dir.path().display().to_string()),
        "names the holder: {msg}"
    );
    assert_exactly(visible_ids(&first, Table::Events).await, 10);

    drop(first);
    let first = Store::open_with_object_store(config(first_dir.path()), remote.clone())
        .await
        .expect("a restart takes its own claim back");
    assert_exactly(visible_ids(&first, Table::Events).await, 10);
    drop(first);

    // The operator retires the first store for good: the second may take over.
    remote
        .delete(&ObjectPath::from("_writer.json"))
        .await
        .unwrap();
    let second = Store::open_with_object_store(config(second_dir.path()), remote.clone())
        .await
        .unwrap();
    assert_exactly(visible_ids(&second, Table::Events).await, 10);
}

#[tokio::test]
async fn remote_object_store_keeps_files_and_manifest_there() {
    let dir = tempfile::tempdir().unwrap();
    let remote: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    {
        let store = Store::open_with_object_store(config(dir.path()), remote.clone())
            .await
            .unwrap();
        store
            .append(vec![(Table::Events, events(0..10, T14))])
            .await
            .unwrap();
        store.flush().await.unwrap();
        store
            .append(vec![(Table::Events, events(10..15, T14))])
            .await
            .unwrap();
        // An upload that lost the race with a crash.
        remote
            .put(
                &ObjectPath::from("events/date=2026-11-22/hour=14/orphan.parquet"),
                Bytes::from_static(b"x").into(),
            )
            .await
            .unwrap();
    }
    assert!(
        !dir.path().join("events").exists(),
        "no Parquet on the local disk"
    );
    assert!(remote
        .head(&ObjectPath::from("_manifest.json"))
        .await
        .is_ok());
    let store = Store::open_with_object_store(config(dir.path()), remote.clone())
        .await
        .unwrap();
    assert!(remote
        .head(&ObjectPath::from(
            "events/date=2026-11-22/hour=14/orphan.parquet"
        ))
        .await
        .is_err());
    assert_exactly(visible_ids(&store, Table::Events).await, 15);
    assert_eq!(
        store.object_store().0.as_str(),
        vigil_store::OBJECT_STORE_URL
    );
}

/// Group-commit throughput: 8 concurrent callers appending batches of ~500-byte events.
/// `cargo test -p vigil-store --test store -- --ignored --nocapture append_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn append_throughput() {
    let dir = tempfile::tempdir().unwrap();
    // No flush during the run: this measures the acknowledged-append path (WAL + group commit + buffer).
    let cfg = StoreConfig {
        flush_bytes: usize::MAX,
        ..config(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    // VIGIL_BENCH_EVENTS_PER_APPEND sets the request size (default 100 events); 200k events in total.
    let per_call: usize = std::env::var("VIGIL_BENCH_EVENTS_PER_APPEND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .max(1);
    let (callers, calls) = (8usize, 25_000 / per_call);
    // Batches are built before the clock starts: this measures the store, not the test's row builder.
    let work: Vec<Vec<RecordBatch>> = (0..callers)
        .map(|c| {
            (0..calls)
                .map(|k| {
                    let first = (c * calls + k) * per_call;
                    events(first..first + per_call, T14)
                })
                .collect()
        })
        .collect();
    let event_bytes = work[0][0].get_array_memory_size() / per_call;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|batches| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in batches {
                    store.append(vec![(Table::Events, b)]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let total = callers * calls * per_call;
    println!(
        "append_throughput: {total} events (~{event_bytes} B in memory each) in {secs:.2}s = {:.0} events/s; \
         {} appends from {callers} callers, {per_call} events/append, {} fsyncs",
        total as f64 / secs,
        callers * calls,
        store.wal_fsyncs()
    );
    let (_, fsync_secs) = histogram_totals("vigil_wal_fsync_seconds");
    let encode_started = std::time::Instant::now();
    let sample = events(0..per_call, T14);
    for _ in 0..100 {
        let mut w =
            arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &sample.schema()).unwrap();
        w.write(&sample).unwrap();
        std::hint::black_box(w);
    }
    println!(
        "append_throughput: fsync time {fsync_secs:.2}s in total; IPC encoding of one {per_call}-event batch {:.2} ms",
        encode_started.elapsed().as_secs_f64() * 10.0
    );
    assert_eq!(store.snapshot(Table::Events).row_count(), total as u64);
}

/// Flushes that fail (here the `events` directory is a file, as a full or broken disk would fail them) leave
/// rows in the buffer; past four flushes' worth the store reports itself behind, which the pipeline turns
/// into refusals, and it recovers once a flush succeeds again. Every appended row is still stored once.
#[tokio::test]
async fn failing_flushes_make_the_store_behind_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        flush_rows: 10,
        ..config(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    let events_dir = dir.path().join("events");
    let _ = std::fs::remove_dir_all(&events_dir);
    std::fs::write(&events_dir, b"not a directory").unwrap();
    store.spawn_background();
    append_tens(&store, 5).await;
    assert!(
        store.is_behind(),
        "50 buffered rows with flush_rows = 10 and every flush failing"
    );
    assert!(store.snapshot(Table::Events).files.is_empty());

    std::fs::remove_file(&events_dir).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.is_behind() || !store.snapshot(Table::Events).buffered.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background flush did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.snapshot(Table::Events).row_count(), 50);
}
