//! A snapshot source for tests: real zstd Parquet files written with `ArrowWriter` into a temporary
//! directory, laid out like the store (`events/date=../hour=../N.parquet`), plus in-memory buffered batches.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use vigil_ingest::{EventBatchBuilder, EventKind, EventRow};
use vigil_store::{StoredFile, Table, TableSnapshot};

use crate::source::SnapshotSource;

/// 2026-01-01T00:00:00Z in microseconds.
pub const BASE_US: i64 = 1_767_225_600_000_000;
pub const HOUR_US: i64 = 3_600_000_000;

pub struct TestSource {
    root: PathBuf,
    files: HashMap<Table, Vec<StoredFile>>,
    buffered: HashMap<Table, Vec<RecordBatch>>,
}

impl TestSource {
    /// `events` with one file per `(hour, rows)` entry (rows spread over that hour after `BASE_US`) and
    /// `buffered` rows in memory in the hour after the last file.
    pub fn with_hours(root: &Path, hours: &[(i64, usize)], buffered: usize) -> Self {
        let mut source = TestSource {
            root: root.to_path_buf(),
            files: HashMap::new(),
            buffered: HashMap::new(),
        };
        for (i, &(hour, rows)) in hours.iter().enumerate() {
            let batch = events(BASE_US + hour * HOUR_US, rows, &format!("f{i}"));
            source.add_file(
                Table::Events,
                &format!("events/date=2026-01-01/hour={hour:02}/{i}.parquet"),
                &batch,
            );
        }
        let next_hour = hours.iter().map(|(h, _)| h + 1).max().unwrap_or(0);
        if buffered > 0 {
            source.add_buffered(
                Table::Events,
                events(BASE_US + next_hour * HOUR_US, buffered, "mem"),
            );
        }
        source
    }

    /// Writes `batch` as a zstd Parquet file at `rel` and lists it with its real min/max time.
    pub fn add_file(&mut self, table: Table, rel: &str, batch: &RecordBatch) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().expect("relative path has a parent")).unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .build();
        let mut writer =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), Some(props))
                .unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
        let (min_time_us, max_time_us) = time_bounds(batch);
        self.files.entry(table).or_default().push(StoredFile {
            path: rel.to_string(),
            size: std::fs::metadata(&path).unwrap().len(),
            rows: batch.num_rows() as u64,
            min_time_us,
            max_time_us,
        });
    }

    pub fn add_buffered(&mut self, table: Table, batch: RecordBatch) {
        self.buffered.entry(table).or_default().push(batch);
    }
}

impl SnapshotSource for TestSource {
    fn snapshot(&self, table: Table) -> TableSnapshot {
        TableSnapshot {
            table,
            schema: self.schema(table),
            files: self.files.get(&table).cloned().unwrap_or_default(),
            buffered: self.buffered.get(&table).cloned().unwrap_or_default(),
        }
    }

    fn object_store(&self) -> (url::Url, Arc<dyn ObjectStore>) {
        let store = LocalFileSystem::new_with_prefix(&self.root).expect("test root exists");
        (
            url::Url::parse("file:///").expect("valid url"),
            Arc::new(store),
        )
    }

    fn schema(&self, table: Table) -> SchemaRef {
        match table {
            Table::Events | Table::Alerts => table.schema(),
            // Stand-ins until the detection crate defines these schemas.
            Table::Baselines | Table::Inventory => Arc::new(Schema::new(vec![
                Field::new("entity", DataType::Utf8, false),
                Field::new("value", DataType::Float64, true),
            ])),
        }
    }
}

/// `rows` events starting at `start_us`, one second apart, alternating kinds and users.
pub fn events(start_us: i64, rows: usize, id_prefix: &str) -> RecordBatch {
    let mut builder = EventBatchBuilder::with_capacity(rows);
    for i in 0..rows {
        builder.push(&EventRow {
            time_us: start_us + i as i64 * 1_000_000,
            event_id: format!("{id_prefix}-{i}"),
            kind: Some(if i % 2 == 0 {
                EventKind::Inference
            } else {
                EventKind::Tool
            }),
            user_id: Some(format!("user{}", i % 3)),
            model: Some("gpt-4o".into()),
            input_tokens: Some(10 + i as i64),
            latency_ms: Some(1.5),
            ..Default::default()
        });
    }
    builder.finish()
}

/// A two-row batch for the stand-in state table schema.
pub fn state_batch(schema: SchemaRef) -> RecordBatch {
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["alice", "bob"])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
        ],
    )
    .unwrap()
}

fn time_bounds(batch: &RecordBatch) -> (i64, i64) {
    let Some(col) = batch.column_by_name("time") else {
        return (0, 0);
    };
    let times = col
        .as_any()
        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
        .expect("time is a microsecond timestamp");
    let min = arrow::compute::min(times).unwrap_or(0);
    let max = arrow::compute::max(times).unwrap_or(0);
    (min, max)
}

pub fn total_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}
