//! Parquet encoding: zstd level 3, row groups of 128k rows, statistics on, rows sorted by `time` and split
//! into hour partitions, so query engines can prune by file (manifest min/max), by row group and by page.

use std::collections::BTreeMap;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::object_files::ObjectFiles;
use crate::partition::{hour_start, new_file_path};
use crate::{StoreError, StoredFile, Table};

pub(crate) const TIME: &str = "time";
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;

fn props(schema: &SchemaRef) -> Result<WriterProperties, StoreError> {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page);
    if let Ok(idx) = schema.index_of(TIME) {
        b = b.set_sorting_columns(Some(vec![SortingColumn {
            column_idx: idx as i32,
            descending: false,
            nulls_first: false,
        }]));
    }
    Ok(b.build())
}

fn times(table: Table, batch: &RecordBatch) -> Result<Vec<i64>, StoreError> {
    let col = batch
        .column_by_name(TIME)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| StoreError::InvalidBatch {
            table: table.name(),
            reason: "no `time` column of type Timestamp(Microsecond)".into(),
        })?;
    Ok(col.values().to_vec())
}

/// Sorts a batch by `time` (stable, so rows with equal times keep their arrival order).
pub(crate) fn sort_by_time(table: Table, batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    times(table, batch)?; // validates the column
    let col = batch.column_by_name(TIME).expect("validated above");
    let idx = sort_to_indices(col, None, None)?;
    Ok(take_record_batch(batch, &idx)?)
}

/// Splits rows by hour partition; each part keeps the input's row order.
pub(crate) fn split_by_hour(
    table: Table,
    batch: &RecordBatch,
) -> Result<Vec<(i64, RecordBatch)>, StoreError> {
    let ts = times(table, batch)?;
    let mut hours: BTreeMap<i64, ()> = BTreeMap::new();
    for t in &ts {
        hours.insert(hour_start(*t), ());
    }
    if hours.len() == 1 {
        return Ok(hours.into_keys().map(|h| (h, batch.clone())).collect());
    }
    hours
        .into_keys()
        .map(|h| {
            let mask: BooleanArray = ts.iter().map(|t| Some(hour_start(*t) == h)).collect();
            Ok((h, filter_record_batch(batch, &mask)?))
        })
        .collect()
}

/// Hex SHA-256, as the audit chain records files.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Encodes one batch as a Parquet file.
pub(crate) fn encode(batch: &RecordBatch) -> Result<Bytes, StoreError> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props(&batch.schema())?))?;
    w.write(batch)?;
    w.close()?;
    Ok(Bytes::from(out))
}

/// An encoded file for one hour partition of a table, ready to upload.
pub(crate) struct EncodedFile {
    pub path: String,
    pub bytes: Bytes,
    /// Hex SHA-256 of `bytes`, for the audit chain (computed here, on the blocking thread).
    pub sha256: String,
    pub rows: u64,
    pub min_time_us: i64,
    pub max_time_us: i64,
}

/// Concatenates, splits by hour, sorts each part by time and encodes it: the CPU half of a flush or a
/// compaction (run on a blocking thread).
pub(crate) fn encode_partitioned(
    table: Table,
    batches: &[RecordBatch],
) -> Result<Vec<EncodedFile>, StoreError> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let all = concat_batches(&first.schema(), batches)?;
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (hour, part) in split_by_hour(table, &all)? {
        let sorted = sort_by_time(table, &part)?;
        let ts = times(table, &sorted)?;
        let bytes = encode(&sorted)?;
        out.push(EncodedFile {
            path: new_file_path(table, hour),
            sha256: sha256_hex(&bytes),
            bytes,
            rows: sorted.num_rows() as u64,
            min_time_us: ts.first().copied().unwrap_or_default(),
            max_time_us: ts.last().copied().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Encodes and uploads; each file comes with its SHA-256. On error, files already uploaded are deleted
/// (best effort; `open` removes any that remain because they are not in the manifest).
pub(crate) async fn write_partitioned(
    objects: &ObjectFiles,
    table: Table,
    batches: Vec<RecordBatch>,
) -> Result<Vec<(StoredFile, String)>, StoreError> {
    let encoded = tokio::task::spawn_blocking(move || encode_partitioned(table, &batches))
        .await
        .map_err(|e| StoreError::Manifest(format!("encode task: {e}")))??;
    let mut stored = Vec::with_capacity(encoded.len());
    for f in encoded {
        match objects.put_durable(&f.path, f.bytes).await {
            Ok(size) => stored.push((
                StoredFile {
                    path: f.path,
                    size,
                    rows: f.rows,
                    min_time_us: f.min_time_us,
                    max_time_us: f.max_time_us,
                },
                f.sha256,
            )),
            Err(e) => {
                for (s, _) in &stored {
                    let _ = objects.delete(&s.path).await;
                }
                return Err(e);
            }
        }
    }
    Ok(stored)
}

/// Decodes a whole Parquet file, optionally only some top-level columns.
pub(crate) fn decode(
    bytes: Bytes,
    columns: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, StoreError> {
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    if let Some(cols) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), cols.iter().copied());
        builder = builder.with_projection(mask);
    }
    let reader = builder.with_batch_size(64 * 1024).build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn batch(times: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                TIME,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("n", DataType::Int64, false),
        ]));
        let t = TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC");
        let n = Int64Array::from((0..times.len() as i64).collect::<Vec<_>>());
        RecordBatch::try_new(schema, vec![Arc::new(t), Arc::new(n)]).unwrap()
    }

    #[test]
    fn splits_by_hour_sorts_and_round_trips() {
        let h = crate::partition::HOUR_US;
        let b1 = batch(&[h * 10 + 5, h * 11 + 1, h * 10 + 1]);
        let b2 = batch(&[h * 10 + 3]);
        let files = encode_partitioned(Table::Events, &[b1, b2]).unwrap();
        assert_eq!(files.len(), 2);
        let f = &files[0];
        assert!(
            f.path.starts_with("events/date=1970-01-01/hour=10/"),
            "{}",
            f.path
        );
        assert_eq!(
            (f.rows, f.min_time_us, f.max_time_us),
            (3, h * 10 + 1, h * 10 + 5)
        );
        let back = decode(f.bytes.clone(), None).unwrap();
        let t = back[0].column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            t.values().to_vec(),
            vec![h * 10 + 1, h * 10 + 3, h * 10 + 5]
        );
        assert_eq!(files[1].rows, 1);
        // Written with zstd and the sort order declared.
        let meta = ParquetRecordBatchReaderBuilder::try_new(f.bytes.clone())
            .unwrap()
            .metadata()
            .clone();
        let rg = meta.row_group(0);
        assert!(matches!(rg.column(0).compression(), Compression::ZSTD(_)));
        assert!(rg.column(0).statistics().is_some());
        assert_eq!(rg.sorting_columns().map(|s| s[0].column_idx), Some(0));
        // Projection reads only the asked-for column.
        assert_eq!(
            decode(f.bytes.clone(), Some(&["n"])).unwrap()[0].num_columns(),
            1
        );
    }

    #[test]
    fn missing_time_column_is_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        assert!(matches!(
            encode_partitioned(Table::Events, &[b]),
            Err(StoreError::InvalidBatch { .. })
        ));
    }
}
