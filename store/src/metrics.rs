//! Prometheus metrics of the store, registered once in the process-wide default registry (several `Store`s
//! in one process, as in tests, share them).

use std::sync::OnceLock;

use prometheus::{
    register_histogram_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_vec_with_registry,
    register_int_gauge_with_registry, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

pub(crate) struct Metrics {
    pub wal_appends: IntCounter,
    pub wal_bytes: IntCounter,
    pub wal_fsync_seconds: Histogram,
    pub flushes: IntCounterVec,
    pub flush_seconds: Histogram,
    pub rows_flushed: IntCounterVec,
    pub files: IntGaugeVec,
    pub bytes: IntGaugeVec,
    pub buffered_rows: IntGaugeVec,
    pub duplicates: IntCounterVec,
    pub compaction_files_merged: IntCounterVec,
    pub compaction_refused_tampered: IntCounter,
    pub retention_partitions_deleted: IntCounterVec,
    pub audit_entries: IntCounter,
    pub audit_seq: IntGauge,
    pub audit_unlisted: IntGauge,
    pub wal_quarantined: IntCounter,
    pub wal_roll_failures: IntCounter,
}

pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let r = prometheus::default_registry();
        // Registration fails only on a name clash inside this process, which is a programming error.
        let m = || -> prometheus::Result<Metrics> {
            Ok(Metrics {
                wal_appends: register_int_counter_with_registry!(
                    "vigil_wal_appends_total",
                    "WAL records appended (one per append call)",
                    r
                )?,
                wal_bytes: register_int_counter_with_registry!(
                    "vigil_wal_bytes_total",
                    "Bytes written to the WAL",
                    r
                )?,
                wal_fsync_seconds: register_histogram_with_registry!(
                    "vigil_wal_fsync_seconds",
                    "Duration of one WAL fsync (shared by a group of appends)",
                    vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0
                    ],
                    r
                )?,
                flushes: register_int_counter_vec_with_registry!(
                    "vigil_store_flushes_total",
                    "Buffer flushes to Parquet that wrote rows of this table",
                    &["table"],
                    r
                )?,
                flush_seconds: register_histogram_with_registry!(
                    "vigil_store_flush_seconds",
                    "Duration of one flush (encode, upload, audit seal, manifest swap). Under sustained load \
                     flushes run back to back and the rows arriving during one are the next one's size, so \
                     this, not store.flush_bytes, sets how much the write buffer holds",
                    vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                    r
                )?,
                rows_flushed: register_int_counter_vec_with_registry!(
                    "vigil_store_rows_flushed_total",
                    "Rows written to Parquet by flushes",
                    &["table"],
                    r
                )?,
                files: register_int_gauge_vec_with_registry!(
                    "vigil_store_files",
                    "Live Parquet files listed in the manifest",
                    &["table"],
                    r
                )?,
                bytes: register_int_gauge_vec_with_registry!(
                    "vigil_store_bytes",
                    "Bytes of live Parquet files listed in the manifest",
                    &["table"],
                    r
                )?,
                buffered_rows: register_int_gauge_vec_with_registry!(
                    "vigil_store_buffered_rows",
                    "Rows acknowledged and held in memory, not yet in Parquet",
                    &["table"],
                    r
                )?,
                duplicates: register_int_counter_vec_with_registry!(
                    "vigil_store_duplicates_total",
                    "Rows dropped by append because their id was stored recently",
                    &["table"],
                    r
                )?,
                compaction_files_merged: register_int_counter_vec_with_registry!(
                    "vigil_compaction_files_merged_total",
                    "Parquet files replaced by compaction, by how: their column chunks spliced as they were \
                     (`splice`) or their rows decoded and encoded again (`encode`)",
                    &["method"],
                    r
                )?,
                compaction_refused_tampered: register_int_counter_with_registry!(
                    "vigil_compaction_refused_tampered_total",
                    "Compactions refused because an input no longer matched its sealed SHA-256",
                    r
                )?,
                retention_partitions_deleted: register_int_counter_vec_with_registry!(
                    "vigil_retention_partitions_deleted_total",
                    "Hour partitions deleted by retention",
                    &["table"],
                    r
                )?,
                audit_entries: register_int_counter_with_registry!(
                    "vigil_audit_chain_entries_total",
                    "Entries appended to the audit hash chain by this process",
                    r
                )?,
                audit_seq: register_int_gauge_with_registry!(
                    "vigil_audit_chain_seq",
                    "Sequence number of the newest audit chain entry",
                    r
                )?,
                wal_quarantined: register_int_counter_with_registry!(
                    "vigil_wal_segments_quarantined_total",
                    "Sealed WAL segments that no longer matched their SHA-256 at start: set aside (*.wal.tampered), not replayed",
                    r
                )?,
                wal_roll_failures: register_int_counter_with_registry!(
                    "vigil_wal_roll_failures_total",
                    "WAL segment rolls that failed (a new segment could not be created); appends go on into the active segment and the roll is retried",
                    r
                )?,
                audit_unlisted: register_int_gauge_with_registry!(
                    "vigil_audit_unlisted_files",
                    "Sealed Parquet files found missing from the manifest at the last start (taken out of it, not by a crash); kept on disk",
                    r
                )?,
            })
        };
        m().expect("vigil-store metrics are registered once per process")
    })
}
