//! The audit chain end to end: files sealed by flushes, compaction, retention and state writes verify clean;
//! a changed, deleted or added file is named; edited, reordered or removed chain lines are reported; crash
//! leftovers are reconciled on open; a signed head checks offline and fails once the chain is rewritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use vigil_ingest::{EventBatchBuilder, EventKind, EventRow};
use vigil_store::audit::{self, Entry, FileRecord, Finding, HeadError, Op};
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
            model: Some("gpt-4o".into()),
            ..Default::default()
        });
    }
    b.finish()
}

/// Three flushes into three hour partitions and a state table write.
async fn populated(dir: &Path) -> Arc<Store> {
    let store = Store::open(config(dir)).await.unwrap();
    for k in 0..3 {
        store
            .append(vec![(
                Table::Events,
                events(k * 10..k * 10 + 10, T14 + k as i64 * HOUR_US),
            )])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    store
        .put_state(Table::Baselines, events(0..4, T14))
        .await
        .unwrap();
    store
}

fn event_files(store: &Store) -> Vec<String> {
    store
        .snapshot(Table::Events)
        .files
        .into_iter()
        .map(|f| f.path)
        .collect()
}

fn chain_file(dir: &Path) -> PathBuf {
    audit::chain_path(dir)
}

fn entries(dir: &Path) -> Vec<Entry> {
    std::fs::read_to_string(chain_file(dir))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Appends a correctly linked entry, as the store would have just before a crash.
fn append_entry(dir: &Path, op: Op, table: &str, files: Vec<FileRecord>, removed: Vec<String>) {
    append_entry_covering(dir, op, table, files, removed, None)
}

/// [`append_entry`] with the WAL sequence a flush's seal covers.
fn append_entry_covering(
    dir: &Path,
    op: Op,
    table: &str,
    files: Vec<FileRecord>,
    removed: Vec<String>,
    wal_seq: Option<u64>,
) {
    let last = entries(dir).pop().unwrap();
    let mut e = Entry {
        seq: last.seq + 1,
        time: last.time.clone(),
        op,
        table: Some(table.into()),
        files,
        removed,
        wal_seq,
        prev_hash: last.hash.clone(),
        hash: String::new(),
    };
    e.hash = e.compute_hash();
    let mut text = std::fs::read_to_string(chain_file(dir)).unwrap();
    text.push_str(&serde_json::to_string(&e).unwrap());
    text.push('\n');
    std::fs::write(chain_file(dir), text).unwrap();
}

/// Copies the sealed Parquet file `of` next to itself as `<name>.parquet` and seals the copy, as a flush
/// that died before its manifest swap leaves it; returns the copy's path.
fn seal_a_copy(dir: &Path, of: &str, name: &str, wal_seq: Option<u64>) -> String {
    let copy = format!("{}/{name}.parquet", of.rsplit_once('/').unwrap().0);
    std::fs::copy(dir.join(of), dir.join(&copy)).unwrap();
    let sealed = entries(dir)
        .iter()
        .flat_map(|e| e.files.clone())
        .find(|f| f.path == of)
        .unwrap();
    let record = FileRecord {
        path: copy.clone(),
        ..sealed
    };
    append_entry_covering(dir, Op::Seal, "events", vec![record], vec![], wal_seq);
    copy
}

async fn verify(dir: &Path) -> audit::VerifyReport {
    audit::verify(&config(dir)).await.unwrap()
}

#[tokio::test]
async fn a_changed_a_deleted_and_an_added_parquet_file_are_each_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.files_checked, 4,
        "three event files and the state file: {report}"
    );
    assert_eq!(
        report.head.as_ref().map(|h| h.seq),
        Some(entries(dir.path()).len() as u64)
    );

    let files = event_files(&store);
    // One byte flipped in the middle of the first file.
    let changed = dir.path().join(&files[0]);
    let mut bytes = std::fs::read(&changed).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&changed, &bytes).unwrap();
    // The second deleted.
    std::fs::remove_file(dir.path().join(&files[1])).unwrap();
    // A stray file next to the third.
    let stray = format!(
        "{}/0190ffff-stray.parquet",
        files[2].rsplit_once('/').unwrap().0
    );
    std::fs::copy(dir.path().join(&files[2]), dir.path().join(&stray)).unwrap();

    let report = verify(dir.path()).await;
    assert!(!report.is_clean());
    let text = report.to_string();
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Changed { path, .. } if *path == files[0])),
        "{text}"
    );
    let sealed_in = entries(dir.path())
        .iter()
        .find(|e| e.files.iter().any(|f| f.path == files[1]))
        .unwrap()
        .seq;
    assert!(
        report.findings.contains(&Finding::Missing {
            path: files[1].clone(),
            sealed_seq: sealed_in
        }),
        "{text}"
    );
    assert!(
        report.findings.contains(&Finding::Unexpected {
            path: stray.clone()
        }),
        "{text}"
    );
    assert_eq!(report.findings.len(), 3, "{text}");
    // One line per finding naming the file, then the summary.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (word, path) in [
        ("CHANGED", &files[0]),
        ("MISSING", &files[1]),
        ("UNEXPECTED", &stray),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(word) && l.contains(path.as_str())),
            "{word} {path}: {text}"
        );
    }
    assert!(lines[3].ends_with("3 finding(s)"), "{text}");
}

#[tokio::test]
async fn sealed_wal_segments_are_hashed_and_the_active_one_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        wal_segment_bytes: 1,
        ..config(dir.path())
    }; // every append closes a segment
    let store = Store::open(cfg).await.unwrap();
    for k in 0..3 {
        store
            .append(vec![(Table::Events, events(k * 10..k * 10 + 10, T14))])
            .await
            .unwrap();
    }
    assert_eq!(store.wal_segments(), 3);
    let sealed: Vec<Entry> = entries(dir.path())
        .into_iter()
        .filter(|e| e.op == Op::SealWal)
        .collect();
    assert_eq!(sealed.len(), 2, "the active segment is not sealed yet");
    assert!(verify(dir.path()).await.is_clean());

    let first = dir.path().join(&sealed[0].files[0].path);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[20] ^= 0x80;
    std::fs::write(&first, &bytes).unwrap();
    let report = verify(dir.path()).await;
    assert!(
        matches!(report.findings.as_slice(), [Finding::Changed { path, .. }] if *path == sealed[0].files[0].path),
        "{report}"
    );
    std::fs::write(&first, {
        bytes[20] ^= 0x80;
        &bytes
    })
    .unwrap();

    // A flush retires the covered segments before deleting them.
    store.flush().await.unwrap();
    assert_eq!(
        entries(dir.path())
            .iter()
            .filter(|e| e.op == Op::RetireWal)
            .count(),
        1
    );
    assert!(verify(dir.path()).await.is_clean());
    // After a restart the segment that was active is sealed from disk.
    store
        .append(vec![(Table::Events, events(40..45, T14))])
        .await
        .unwrap();
    drop(store);
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(entries(dir.path())
        .last()
        .is_some_and(|e| e.op == Op::SealWal));
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    drop(store);
}

/// A sealed WAL segment changed while the store was stopped fails its CRC at the changed record. Replay used
/// to take that for a crash's torn tail: it cut the segment there (losing every acknowledged record after
/// it) and, once nothing uncovered was left, deleted it and recorded the deletion, so the change vanished.
/// A crash tears only the unsealed segment: a sealed one that fails its hash is set aside unread and named.
#[tokio::test]
async fn a_sealed_wal_segment_changed_while_stopped_is_set_aside_not_replayed_or_cut() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        wal_segment_bytes: 1,
        ..config(dir.path())
    }; // every append closes a segment
    let store = Store::open(cfg.clone()).await.unwrap();
    for k in 0..3 {
        store
            .append(vec![(Table::Events, events(k * 10..k * 10 + 10, T14))])
            .await
            .unwrap();
    }
    let sealed: Vec<Entry> = entries(dir.path())
        .into_iter()
        .filter(|e| e.op == Op::SealWal)
        .collect();
    drop(store);
    let segment = sealed[0].files[0].path.clone();
    let first = dir.path().join(&segment);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[20] ^= 0x80;
    std::fs::write(&first, &bytes).unwrap();

    let store = Store::open(cfg).await.unwrap();
    let aside = dir.path().join(format!("{segment}.tampered"));
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "kept as it was found"
    );
    assert!(!first.exists());
    assert_eq!(
        store.snapshot(Table::Events).row_count(),
        20,
        "its records are not trusted"
    );
    assert!(
        entries(dir.path())
            .iter()
            .all(|e| !e.removed.contains(&segment)),
        "not retired"
    );
    let report = verify(dir.path()).await;
    assert!(
        matches!(report.findings.as_slice(), [Finding::Missing { path, .. }] if *path == segment),
        "{report}"
    );
    // Numbering goes on above the set-aside records: no new segment takes its name.
    for k in 3..6 {
        store
            .append(vec![(Table::Events, events(k * 10..k * 10 + 10, T14))])
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    let report = verify(dir.path()).await;
    assert!(
        matches!(report.findings.as_slice(), [Finding::Missing { path, .. }] if *path == segment),
        "{report}"
    );
    assert_eq!(store.snapshot(Table::Events).row_count(), 50);
}

#[tokio::test]
async fn edited_reordered_and_removed_chain_lines_break_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let _store = populated(dir.path()).await;
    let original = std::fs::read_to_string(chain_file(dir.path())).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 4);
    let broken_at = |text: String| {
        let dir = dir.path().to_path_buf();
        async move {
            std::fs::write(chain_file(&dir), text).unwrap();
            let r = verify(&dir).await;
            r.findings
                .iter()
                .filter_map(|f| {
                    if let Finding::ChainBroken { seq, .. } = f {
                        Some(*seq)
                    } else {
                        None
                    }
                })
                .collect::<Vec<u64>>()
        }
    };
    // A sealed hash edited to match a forged file.
    let edited = original.replacen(&entries(dir.path())[1].files[0].sha256, &"0".repeat(64), 1);
    assert_eq!(broken_at(edited).await, vec![2]);
    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let seqs = broken_at(swapped.join("\n") + "\n").await;
    assert!(seqs.contains(&2) && seqs.contains(&3), "{seqs:?}");
    // A line removed.
    let mut removed = lines.clone();
    removed.remove(1);
    assert_eq!(broken_at(removed.join("\n") + "\n").await.first(), Some(&3));
    // Restored: clean again.
    assert!(broken_at(original).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_retention_append_to_the_chain_and_it_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        compaction_grace: Duration::from_secs(3600),
        ..config(dir.path())
    };
    let store = Store::open(cfg.clone()).await.unwrap();
    let now = T14 + 40 * 24 * HOUR_US;
    for k in 0..4 {
        store
            .append(vec![(
                Table::Events,
                events(k * 10..k * 10 + 10, now - HOUR_US),
            )])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    store
        .append(vec![(Table::Events, events(100..110, T14))])
        .await
        .unwrap(); // 40 days old
    store.flush().await.unwrap();
    let before = entries(dir.path()).len();

    assert_eq!(store.compact().await.unwrap(), 4);
    // The inputs wait for their grace period on disk: retired, unchanged, not reported.
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(store.apply_retention(now).await.unwrap(), 1);
    assert!(verify(dir.path()).await.is_clean());

    let chain = entries(dir.path());
    assert_eq!(
        chain.len(),
        before + 2,
        "one compact and one retain entry appended"
    );
    assert_eq!(
        (
            chain[before].op,
            chain[before].removed.len(),
            chain[before].files.len()
        ),
        (Op::Compact, 4, 1)
    );
    assert_eq!(
        (chain[before + 1].op, chain[before + 1].removed.len()),
        (Op::Retain, 1)
    );
    assert!(
        chain[..before]
            .iter()
            .zip(entries(dir.path()))
            .all(|(a, b)| *a == b),
        "history is never rewritten"
    );

    // A retired file that lingers must still be unchanged.
    let retired = &chain[before].removed[0];
    std::fs::write(dir.path().join(retired), b"rewritten").unwrap();
    assert!(
        matches!(verify(dir.path()).await.findings.as_slice(), [Finding::Changed { path, .. }] if path == retired)
    );
    drop(store);
    // Reopen: the lingering inputs are deleted as leftovers (already retired: nothing to record).
    let store = Store::open(cfg).await.unwrap();
    assert!(!dir.path().join(retired).exists());
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.files_checked, 1);
    drop(store);
}

/// The manifest cannot be saved once, during a retention pass and during a compaction: the files stay
/// live and the chain takes them back, so the next passes succeed and `verify` stays clean (they were left
/// retired in the chain, and every later compaction refused them as never sealed).
#[tokio::test]
async fn a_failed_manifest_save_leaves_the_chain_able_to_compact_and_retain() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let now = T14 + 40 * 24 * HOUR_US;
    for k in 0..3 {
        store
            .append(vec![(
                Table::Events,
                events(k * 10..k * 10 + 10, now - HOUR_US),
            )])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    for k in 0..2 {
        // 40 days old.
        store
            .append(vec![(
                Table::Events,
                events(100 + k * 10..110 + k * 10, T14),
            )])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    // The local manifest is written to a temp file and renamed: a directory in its place fails the save.
    let blocker = dir.path().join("_manifest.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(store.apply_retention(now).await.is_err());
    let compacts = |dir: &Path| entries(dir).iter().filter(|e| e.op == Op::Compact).count();
    let before = compacts(dir.path());
    assert!(store.compact().await.is_err());
    assert_eq!(
        compacts(dir.path()),
        before + 1,
        "the pass stopped at the first group the manifest could not take (two groups were due)"
    );
    assert_eq!(
        event_files(&store).len(),
        5,
        "nothing changed in the manifest"
    );
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");

    std::fs::remove_dir(&blocker).unwrap();
    // The old partition's two files are merged too: the failed retention left them sealed.
    assert_eq!(store.compact().await.unwrap(), 5);
    assert_eq!(store.apply_retention(now).await.unwrap(), 1);
    assert_eq!(event_files(&store).len(), 1);
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    drop(store);
}

/// Two sealed files of one partition swapped: each is still valid Parquet with the same row count, so only
/// the hashes tell. Compaction must refuse to merge them (a merged file is sealed afresh and would launder
/// the change), leave both in place and the chain as it was, so `verify` still names them.
#[tokio::test]
async fn compaction_refuses_inputs_changed_since_they_were_sealed() {
    refuses_changed_inputs(10).await;
}

/// The same with a busy hour's files, which compaction splices instead of re-encoding.
#[tokio::test]
async fn compaction_refuses_changed_inputs_it_would_splice() {
    refuses_changed_inputs(16 * 1024).await;
}

async fn refuses_changed_inputs(rows_per_file: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let hour = |files: Vec<String>, h: &str| -> Vec<String> {
        files.into_iter().filter(|f| f.contains(h)).collect()
    };
    // Two files in hour 14 and two in hour 15: the refused group must not hold up the other one.
    for k in 0..4 {
        let t = T14 + (k / 2) as i64 * HOUR_US;
        store
            .append(vec![(
                Table::Events,
                events(k * rows_per_file..(k + 1) * rows_per_file, t),
            )])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let files = hour(event_files(&store), "hour=14");
    assert_eq!(files.len(), 2);
    assert_eq!(hour(event_files(&store), "hour=15").len(), 2);
    let (a, b) = (dir.path().join(&files[0]), dir.path().join(&files[1]));
    let (bytes_a, bytes_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, &bytes_b).unwrap();
    std::fs::write(&b, &bytes_a).unwrap();
    let before = entries(dir.path()).len();

    let err = store.compact().await.unwrap_err().to_string();
    assert!(err.contains("not the file the audit chain sealed"), "{err}");
    let on_disk: Vec<_> = std::fs::read_dir(a.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        on_disk.len(),
        2,
        "no output or staging file left: {on_disk:?}"
    );
    assert_eq!(
        hour(event_files(&store), "hour=14"),
        files,
        "the inputs stay live"
    );
    let other = hour(event_files(&store), "hour=15");
    assert_eq!(other.len(), 1, "the other hour was still compacted");
    // Spliced files keep their inputs' row groups; re-encoded ones are packed into one.
    let merged = std::fs::read(dir.path().join(&other[0])).unwrap();
    let groups = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&Bytes::from(merged))
        .unwrap()
        .num_row_groups();
    let spliced = rows_per_file >= 16 * 1024;
    assert_eq!(groups, if spliced { 2 } else { 1 });
    assert_eq!(
        entries(dir.path()).len(),
        before + 1,
        "only the other hour's compaction appended to the chain"
    );
    let report = verify(dir.path()).await;
    let changed: Vec<_> = report
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Changed { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(changed.len(), 2, "{report}");
    drop(store);
}

#[tokio::test]
async fn crash_leftovers_are_reconciled_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let files = event_files(&store);
    let chain = entries(dir.path());
    drop(store);

    // 1. A flush sealed a file, then died before the manifest swap.
    let orphan = seal_a_copy(dir.path(), &files[0], "0190aaaa-orphan", None);
    // 2. Retention recorded its removal, then died before the manifest swap.
    append_entry(
        dir.path(),
        Op::Retain,
        "events",
        vec![],
        vec![files[1].clone()],
    );
    // 3. A state write was recorded, then died before rewriting the file.
    let state = chain
        .iter()
        .rev()
        .flat_map(|e| &e.files)
        .find(|f| f.path == "baselines/state.parquet")
        .unwrap();
    append_entry(
        dir.path(),
        Op::State,
        "baselines",
        vec![FileRecord {
            sha256: "ab".repeat(32),
            ..state.clone()
        }],
        vec![],
    );
    // Before the restart verify sees the file sealed and the state file changed, nothing else.
    let report = verify(dir.path()).await;
    assert!(
        matches!(report.findings.as_slice(), [Finding::Changed { path, .. }] if path == "baselines/state.parquet"),
        "{report}"
    );

    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(!dir.path().join(&orphan).exists(), "the orphan is deleted");
    assert!(
        event_files(&store).contains(&files[1]),
        "the manifest still has the file retention did not drop"
    );
    let after = entries(dir.path());
    let tail: Vec<Op> = after[chain.len() + 3..].iter().map(|e| e.op).collect();
    assert_eq!(tail, vec![Op::Abandon, Op::Adopt, Op::State], "{after:#?}");
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    // Nothing more to reconcile on the next open.
    drop(store);
    let _store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(entries(dir.path()).len(), after.len());
}

fn manifest_wal_seq(dir: &Path) -> u64 {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("_manifest.json")).unwrap()).unwrap();
    m["wal_seq"].as_u64().unwrap()
}

/// Taking a file out of `_manifest.json` while the store is stopped hides its rows from every query. No
/// crash explains it (the manifest covers the flush that sealed it), so `open` keeps the file instead of
/// deleting it and recording it as abandoned (which would make the removal look legitimate), and
/// `verify` names it, before the restart and after.
#[tokio::test]
async fn a_file_taken_out_of_the_manifest_is_kept_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let files = event_files(&store);
    drop(store);
    let path = dir.path().join("_manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["tables"]["events"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["path"] != files[0].as_str());
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let unlisted = |report: &audit::VerifyReport| {
        report
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Unlisted { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let report = verify(dir.path()).await;
    assert_eq!(unlisted(&report), vec![files[0].clone()], "{report}");
    assert!(report.to_string().contains("UNLISTED"), "{report}");

    let chain_len = entries(dir.path()).len();
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(dir.path().join(&files[0]).exists(), "the evidence is kept");
    assert!(
        entries(dir.path())[chain_len..]
            .iter()
            .all(|e| !e.removed.contains(&files[0])),
        "not recorded as abandoned"
    );
    let report = verify(dir.path()).await;
    assert_eq!(unlisted(&report), vec![files[0].clone()], "{report}");
    assert_eq!(report.findings.len(), 1, "{report}");
    drop(store);
}

/// A flush that sealed its files and died before the manifest swap: its rows are still in the WAL, so the
/// files are a crash's leftovers, deleted and recorded as abandoned. The same seal covering WAL records
/// that are no longer there is not: its rows exist nowhere else, and the file is kept.
#[tokio::test]
async fn a_seal_is_a_crash_leftover_only_while_the_wal_holds_its_rows() {
    for wal_holds_the_rows in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let files = event_files(&store);
        // Acknowledged, not flushed: the WAL holds one record past the manifest.
        store
            .append(vec![(Table::Events, events(100..110, T14))])
            .await
            .unwrap();
        drop(store);
        let covered = manifest_wal_seq(dir.path()) + if wal_holds_the_rows { 1 } else { 2 };
        let orphan = seal_a_copy(dir.path(), &files[0], "0190bbbb-orphan", Some(covered));

        let before = entries(dir.path()).len();
        let store = Store::open(config(dir.path())).await.unwrap();
        let added = entries(dir.path())[before..].to_vec();
        let abandoned = added
            .iter()
            .any(|e| e.op == Op::Abandon && e.removed == vec![orphan.clone()]);
        if wal_holds_the_rows {
            assert!(
                !dir.path().join(&orphan).exists(),
                "the leftover is deleted"
            );
            assert!(abandoned, "{added:#?}");
            let report = verify(dir.path()).await;
            assert!(report.is_clean(), "{report}");
        } else {
            assert!(dir.path().join(&orphan).exists(), "kept");
            assert!(!abandoned, "{added:#?}");
            let report = verify(dir.path()).await;
            assert!(
                matches!(report.findings.as_slice(), [Finding::Unlisted { path, .. }] if *path == orphan),
                "{report}"
            );
        }
        // The unflushed record was replayed either way.
        assert_eq!(store.snapshot(Table::Events).row_count(), 40);
    }
}

/// `_manifest.json` put back to an earlier copy while the store is stopped (an edit, a backup restore, a
/// stale replica): the flushes it forgot were sealed and their WAL records retired since, so their rows
/// exist only in those files. `open` keeps them (it used to delete them as crash leftovers and record
/// them as abandoned), and `verify` names them.
#[tokio::test]
async fn a_rolled_back_manifest_does_not_delete_the_flushes_it_forgot() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        wal_segment_bytes: 1, // a segment per record, so flushes retire the records they cover
        ..config(dir.path())
    };
    let store = Store::open(config.clone()).await.unwrap();
    let manifest = dir.path().join("_manifest.json");
    let mut old_manifest = Vec::new();
    for k in 0..3 {
        store
            .append(vec![(Table::Events, events(k * 10..k * 10 + 10, T14))])
            .await
            .unwrap();
        store.flush().await.unwrap();
        if k == 0 {
            old_manifest = std::fs::read(&manifest).unwrap();
        }
    }
    // Acknowledged, not flushed: the WAL holds records, only not those of the forgotten flushes.
    store
        .append(vec![(Table::Events, events(100..110, T14))])
        .await
        .unwrap();
    let forgotten: Vec<String> = event_files(&store)[1..].to_vec();
    assert_eq!(forgotten.len(), 2);
    drop(store);
    std::fs::write(&manifest, &old_manifest).unwrap();

    let unlisted = |report: &audit::VerifyReport| {
        let mut paths: Vec<String> = report
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Unlisted { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        paths.sort();
        paths
    };
    let mut want = forgotten.clone();
    want.sort();
    assert_eq!(unlisted(&verify(dir.path()).await), want);
    let before = entries(dir.path()).len();
    let store = Store::open(config).await.unwrap();
    for f in &forgotten {
        assert!(dir.path().join(f).exists(), "{f} kept");
    }
    assert!(
        entries(dir.path())[before..]
            .iter()
            .all(|e| e.op != Op::Abandon),
        "not recorded as abandoned"
    );
    assert_eq!(unlisted(&verify(dir.path()).await), want);
    drop(store);
}

/// The state file cannot be replaced twice in a row (an outage over two persists): the chain must still
/// describe the file on disk, before a restart and after (it used to report it CHANGED until the next
/// successful write, since `open` restores only one record back).
#[tokio::test]
async fn failed_state_writes_leave_the_chain_describing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let state = dir.path().join("baselines/state.parquet");
    let aside = dir.path().join("state.parquet.aside");
    std::fs::rename(&state, &aside).unwrap();
    std::fs::create_dir(&state).unwrap(); // a put cannot rename its file over a directory
    for k in 0..2 {
        let batch = events(10 + k * 10..14 + k * 10, T14);
        assert!(store.put_state(Table::Baselines, batch).await.is_err());
    }
    std::fs::remove_dir(&state).unwrap();
    std::fs::rename(&aside, &state).unwrap();
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    drop(store);
    let _store = Store::open(config(dir.path())).await.unwrap();
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
}

/// Compaction inputs put back into `_manifest.json` beside their output (while they wait out their grace
/// period on disk): queries would count their rows twice. No crash lists both, so `open` does not adopt
/// them as crash leftovers and `verify` names each.
#[tokio::test]
async fn compaction_inputs_listed_again_beside_their_output_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        compaction_grace: Duration::from_secs(3600),
        ..config(dir.path())
    };
    let store = Store::open(cfg.clone()).await.unwrap();
    for k in 0..2 {
        store
            .append(vec![(Table::Events, events(k * 10..k * 10 + 10, T14))])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let path = dir.path().join("_manifest.json");
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap() };
    let inputs = read()["tables"]["events"].as_array().unwrap().clone();
    assert_eq!(store.compact().await.unwrap(), 2);
    drop(store);
    let mut m = read();
    m["tables"]["events"]
        .as_array_mut()
        .unwrap()
        .extend(inputs.iter().cloned());
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();

    let relisted = |report: &audit::VerifyReport| {
        report
            .findings
            .iter()
            .filter(|f| matches!(f, Finding::Relisted { .. }))
            .count()
    };
    let report = verify(dir.path()).await;
    assert_eq!(relisted(&report), 2, "{report}");
    assert!(report.to_string().contains("RELISTED"), "{report}");
    let before = entries(dir.path()).len();
    let store = Store::open(cfg).await.unwrap();
    assert!(
        entries(dir.path())[before..]
            .iter()
            .all(|e| e.op != Op::Adopt || e.files.is_empty()),
        "not adopted"
    );
    assert_eq!(relisted(&verify(dir.path()).await), 2);
    drop(store);
}

#[tokio::test]
async fn a_store_older_than_the_chain_is_adopted_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    drop(store);
    let report = verify(dir.path()).await;
    assert_eq!(
        report.adopted_at_start, None,
        "a chain begun with its store adopts nothing"
    );
    assert!(!report.to_string().contains("began at"), "{report}");
    std::fs::remove_dir_all(dir.path().join("_audit")).unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let chain = entries(dir.path());
    assert!(chain.iter().all(|e| e.op == Op::Adopt));
    assert_eq!(chain.iter().map(|e| e.files.len()).sum::<usize>(), 4);
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    // Clean, but never silent: the start is named on every run, also after later flushes.
    let adopted = report
        .adopted_at_start
        .as_ref()
        .expect("the adoption is reported");
    assert_eq!(
        (adopted.files, adopted.time.as_str()),
        (4, chain[0].time.as_str())
    );
    assert!(report.to_string().contains("began at"), "{report}");
    store
        .append(vec![(Table::Events, events(100..110, T14))])
        .await
        .unwrap();
    store.flush().await.unwrap();
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.adopted_at_start.map(|a| a.files), Some(4));
    drop(store);
    // Later, a file the chain never sealed is not adopted, even when a manifest lists it.
    std::fs::remove_dir_all(dir.path().join("_audit")).unwrap();
    std::fs::create_dir_all(dir.path().join("_audit")).unwrap();
    append_entry_first(dir.path());
    let _store = Store::open(config(dir.path())).await.unwrap();
    let report = verify(dir.path()).await;
    assert_eq!(
        report
            .findings
            .iter()
            .filter(|f| matches!(f, Finding::Unexpected { .. }))
            .count(),
        5,
        "{report}"
    );
}

/// A chain whose only entry seals an unrelated file.
fn append_entry_first(dir: &Path) {
    let mut e = Entry {
        seq: 1,
        time: "2026-11-22T14:00:00.000000Z".into(),
        op: Op::Seal,
        table: Some("alerts".into()),
        files: vec![],
        removed: vec!["alerts/none.parquet".into()],
        wal_seq: None,
        prev_hash: audit::GENESIS_PREV_HASH.into(),
        hash: String::new(),
    };
    e.hash = e.compute_hash();
    std::fs::write(chain_file(dir), serde_json::to_string(&e).unwrap() + "\n").unwrap();
}

#[tokio::test]
async fn the_signed_head_checks_offline_and_fails_once_the_chain_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let cfg = config(dir.path());
    let head = audit::export_head(&cfg).unwrap();
    let key = std::fs::metadata(dir.path().join(audit::KEY_FILE)).unwrap();
    assert!(key.is_file());
    let chain = std::fs::read(chain_file(dir.path())).unwrap();
    let trusted = head.public_key.clone();
    assert_eq!(
        audit::verify_signed_head(&head, &chain, Some(&trusted)),
        Ok(())
    );
    // Exported as JSON and read back by the auditor.
    let json = serde_json::to_string(&head).unwrap();
    let back: audit::SignedHead = serde_json::from_str(&json).unwrap();
    assert_eq!(
        audit::export_head(&cfg).unwrap().public_key,
        trusted,
        "the key is reused"
    );

    // The chain grows: the old head still vouches for its prefix.
    store
        .append(vec![(Table::Events, events(50..60, T14))])
        .await
        .unwrap();
    store.flush().await.unwrap();
    let grown = std::fs::read(chain_file(dir.path())).unwrap();
    assert_eq!(
        audit::verify_signed_head(&back, &grown, Some(&trusted)),
        Ok(())
    );

    // Cut back below the head.
    let text = String::from_utf8(grown.clone()).unwrap();
    let cut: String = text
        .lines()
        .take(head.seq as usize - 1)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        audit::verify_signed_head(&back, cut.as_bytes(), None),
        Err(HeadError::NotInChain { seq: head.seq })
    );
    // An entry edited in place.
    let edited = text.replacen("\"op\":\"seal\"", "\"op\":\"adopt\"", 1);
    assert!(matches!(
        audit::verify_signed_head(&back, edited.as_bytes(), None),
        Err(HeadError::ChainBroken { seq: 1, .. })
    ));
    // The whole chain rewritten consistently (every hash recomputed): links hold, the signed hash does not.
    let mut prev = audit::GENESIS_PREV_HASH.to_string();
    let mut rewritten = String::new();
    for line in text.lines() {
        let mut e: Entry = serde_json::from_str(line).unwrap();
        if e.seq == 1 {
            e.files[0].sha256 = "f".repeat(64);
        }
        e.prev_hash = prev;
        e.hash = e.compute_hash();
        prev = e.hash.clone();
        rewritten.push_str(&(serde_json::to_string(&e).unwrap() + "\n"));
    }
    assert!(matches!(
        audit::verify_signed_head(&back, rewritten.as_bytes(), None),
        Err(HeadError::HashMismatch { .. })
    ));
    // A forged signature.
    let mut forged = back.clone();
    forged.seq += 1;
    assert_eq!(
        audit::verify_signed_head(&forged, &grown, None),
        Err(HeadError::BadSignature)
    );
    // A broken chain is not signed.
    std::fs::write(chain_file(dir.path()), edited).unwrap();
    assert!(audit::export_head(&cfg).is_err());
}

#[tokio::test]
async fn remote_object_store_files_are_verified_there() {
    let dir = tempfile::tempdir().unwrap();
    let remote: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let store = Store::open_with_object_store(config(dir.path()), remote.clone())
        .await
        .unwrap();
    store
        .append(vec![(Table::Events, events(0..10, T14))])
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert!(
        dir.path().join("_audit/chain.jsonl").exists(),
        "the chain stays local"
    );
    let report = audit::verify_with_object_store(&config(dir.path()), remote.clone())
        .await
        .unwrap();
    assert!(report.is_clean() && report.files_checked == 1, "{report}");
    let path = event_files(&store)[0].clone();
    remote
        .put(
            &ObjectPath::from(path.as_str()),
            Bytes::from_static(b"replaced").into(),
        )
        .await
        .unwrap();
    remote
        .put(
            &ObjectPath::from("alerts/date=2026-11-22/hour=14/x.parquet"),
            Bytes::from_static(b"x").into(),
        )
        .await
        .unwrap();
    let report = audit::verify_with_object_store(&config(dir.path()), remote)
        .await
        .unwrap();
    assert_eq!(report.findings.len(), 2, "{report}");
    assert!(
        matches!(&report.findings[0], Finding::Unexpected { path } if path.starts_with("alerts/")),
        "{report}"
    );
    assert!(
        matches!(&report.findings[1], Finding::Changed { path: p, .. } if *p == path),
        "{report}"
    );
}

/// A retention pass whose manifest save reported a failure that had in fact landed (a rename whose
/// directory fsync failed; an S3 PUT whose answer was lost), then a crash: the manifest no longer lists the
/// expired file that the chain took back. Retention had let it go, so it is a leftover, not a removal:
/// `verify` stays clean and `open` deletes it.
#[tokio::test]
async fn an_expired_file_taken_back_after_a_save_that_landed_is_a_leftover() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let now = T14 + 40 * 24 * HOUR_US;
    store
        .append(vec![(Table::Events, events(0..10, now - HOUR_US))])
        .await
        .unwrap();
    store.flush().await.unwrap();
    store
        .append(vec![(Table::Events, events(100..110, T14))])
        .await
        .unwrap(); // 40 days old
    store.flush().await.unwrap();
    let files = event_files(&store);
    let old = files
        .iter()
        .find(|p| p.contains("date=2026-11-22/"))
        .cloned()
        .unwrap();
    let blocker = dir.path().join("_manifest.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(store.apply_retention(now).await.is_err());
    drop(store);
    std::fs::remove_dir(&blocker).unwrap();
    // What the save that landed wrote.
    let path = dir.path().join("_manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["tables"]["events"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["path"] != old.as_str());
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();

    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(!dir.path().join(&old).exists(), "deleted as a leftover");
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    drop(store);
}

/// A state table's file taken out of `_manifest.json` after its second write: only a first write can be
/// cut short before the manifest lists the file, so this is a removal. `verify` names it and `open`
/// keeps it (it used to delete it and record it as abandoned, and `verify` stayed clean).
#[tokio::test]
async fn a_state_file_taken_out_of_the_manifest_after_its_first_write_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    store
        .put_state(Table::Baselines, events(0..6, T14))
        .await
        .unwrap();
    drop(store);
    let path = dir.path().join("_manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["tables"]["baselines"].as_array_mut().unwrap().clear();
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let state = "baselines/state.parquet";
    let named = |report: &audit::VerifyReport| {
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Unlisted { path, .. } if path == state))
    };
    let report = verify(dir.path()).await;
    assert!(named(&report), "{report}");
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(dir.path().join(state).exists(), "the evidence is kept");
    let report = verify(dir.path()).await;
    assert!(named(&report), "{report}");
    drop(store);
}

/// A state table's first write fails (the file cannot be put), and the next write's process dies between
/// sealing the file and listing it: still a first write's leftover, not a removal. The failed write is
/// recorded as abandoned, so the next one counts as the first again.
#[tokio::test]
async fn a_state_file_whose_first_write_failed_is_a_leftover_after_the_next_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let state = dir.path().join("baselines/state.parquet");
    std::fs::create_dir_all(&state).unwrap(); // a put cannot rename its file over a directory
    assert!(store
        .put_state(Table::Baselines, events(0..4, T14))
        .await
        .is_err());
    drop(store);
    std::fs::remove_dir(&state).unwrap();
    // The next write, cut short after its seal: the file is there, the manifest does not list it.
    std::fs::write(&state, b"PAR1 not listed yet").unwrap();
    let bytes = std::fs::read(&state).unwrap();
    let record = FileRecord {
        path: "baselines/state.parquet".into(),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        size: bytes.len() as u64,
        rows: 4,
    };
    append_entry(dir.path(), Op::State, "baselines", vec![record], vec![]);
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(!state.exists(), "deleted as a leftover");
    let report = verify(dir.path()).await;
    assert!(report.is_clean(), "{report}");
    drop(store);
}
