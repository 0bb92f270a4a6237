//! Parquet encoding: zstd (level 1 when a flush writes, level 3 when compaction re-encodes), row groups of 128k
//! rows, statistics on, rows sorted by `time` and split into hour partitions, so query engines can prune by
//! file (manifest min/max), by row group and by page. A flush keeps statistics on `time` and the numeric
//! columns only; compaction, where it re-encodes a quiet hour, writes them for the text columns too (a busy
//! hour's files are spliced as they are: `splice`).

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{DataType, SchemaRef, TimestampMicrosecondType};
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

/// How hard zstd works. A flush is on the ingest path, where CPU is throughput; compaction runs in the
/// background and rewrites the same rows once more, so it spends the CPU to make them smaller at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effort {
    Flush,
    Compaction,
}

impl Effort {
    fn zstd_level(self) -> i32 {
        match self {
            Effort::Flush => 1,
            Effort::Compaction => 3,
        }
    }
}

/// Free text and random ids: no query prunes on their min/max or profits from a dictionary, and computing
/// them over 500-byte prompts was measurable CPU on every flush (string compares and hashing).
const UNPRUNABLE: [&str; 6] = [
    "prompt_text",
    "response_text",
    "attributes",
    "event_id",
    "span_id",
    "trace_id",
];

fn props(schema: &SchemaRef, effort: Effort) -> Result<WriterProperties, StoreError> {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(effort.zstd_level())?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page);
    for name in UNPRUNABLE
        .into_iter()
        .filter(|n| schema.index_of(n).is_ok())
    {
        let path = parquet::schema::types::ColumnPath::from(name);
        b = b
            .set_column_statistics_enabled(path.clone(), EnabledStatistics::None)
            .set_column_dictionary_enabled(path, false);
    }
    if effort == Effort::Flush {
        // Min/max of every text value was a fifth of a flush's Parquet encoding (a string compare per value
        // and column), and rows sorted by time leave a text column's page min/max spanning nearly every
        // value, so they prune little; `time` and the numbers keep theirs. Compaction, in the background,
        // writes them all.
        for field in schema.fields() {
            if matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View) {
                let path = parquet::schema::types::ColumnPath::from(field.name().as_str());
                b = b.set_column_statistics_enabled(path, EnabledStatistics::None);
            }
        }
    }
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

/// Hex SHA-256, as the audit chain records files.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Encodes one batch as a Parquet file.
pub(crate) fn encode(batch: &RecordBatch) -> Result<Bytes, StoreError> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(
        &mut out,
        batch.schema(),
        Some(props(&batch.schema(), Effort::Compaction)?),
    )?;
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

/// Rows gathered into one batch at a time while encoding: big enough for good pages, small enough that
/// the copy stays in cache and a flush never holds a second copy of the whole buffer.
const ENCODE_CHUNK_ROWS: usize = 8 * 1024;

/// Sorts by time, splits by hour and encodes: the CPU half of a flush or a compaction (run on a blocking
/// thread). Rows are gathered straight from the input batches in sorted order, a chunk at a time, rather than
/// concatenated, split and sorted as whole copies: those two copies of the write buffer were most of a flush's
/// memory and page faults. The sort is stable, so rows with equal times keep their arrival order.
pub(crate) fn encode_partitioned(
    table: Table,
    batches: &[RecordBatch],
    effort: Effort,
) -> Result<Vec<EncodedFile>, StoreError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let mut order: Vec<(i64, usize, usize)> =
        Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for (b, batch) in batches.iter().enumerate() {
        order.extend(
            times(table, batch)?
                .into_iter()
                .enumerate()
                .map(|(r, t)| (t, b, r)),
        );
    }
    order.sort_by_key(|&(t, _, _)| t);
    let inputs: Vec<&RecordBatch> = batches.iter().collect();
    let mut out = Vec::new();
    let mut rest = order.as_slice();
    while let Some(&(t0, _, _)) = rest.first() {
        let hour = hour_start(t0);
        let n = rest.partition_point(|&(t, _, _)| hour_start(t) == hour);
        let (part, tail) = rest.split_at(n);
        rest = tail;
        let encode = |rows: &[(i64, usize, usize)]| encode_file(table, hour, &inputs, rows, effort);
        if effort == Effort::Flush && part.len() >= 2 * SPLIT_MIN_ROWS {
            // Two halves of the hour, consecutive in time, on two threads.
            let (early, late) = part.split_at(part.len() / 2);
            let (a, b) = std::thread::scope(|s| {
                let late = s.spawn(|| encode(late));
                let early = encode(early);
                (early, late.join())
            });
            out.push(a?);
            out.push(
                b.map_err(|_| StoreError::Manifest("a Parquet encoder thread panicked".into()))??,
            );
        } else {
            out.push(encode(part)?);
        }
    }
    Ok(out)
}

/// A flush encodes an hour holding at least twice this many rows as two files on two threads. Under full
/// load a single encoder thread got one share of the two cores among every request's thread, fell behind
/// ingest and left the write buffer to grow until requests were refused; two keep up, so intake slows
/// instead. Compaction merges the halves later (it always writes one file).
const SPLIT_MIN_ROWS: usize = 32 * 1024;

/// Encodes `rows` (time-sorted `(time, batch, row)` of one hour) as one file.
fn encode_file(
    table: Table,
    hour: i64,
    inputs: &[&RecordBatch],
    rows: &[(i64, usize, usize)],
    effort: Effort,
) -> Result<EncodedFile, StoreError> {
    let (Some(&(t0, _, _)), Some(first)) = (rows.first(), inputs.first()) else {
        return Err(StoreError::Manifest("no rows to encode".into()));
    };
    let schema = first.schema();
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, schema.clone(), Some(props(&schema, effort)?))?;
    let mut indices = Vec::with_capacity(ENCODE_CHUNK_ROWS);
    for chunk in rows.chunks(ENCODE_CHUNK_ROWS) {
        indices.clear();
        indices.extend(chunk.iter().map(|&(_, b, r)| (b, r)));
        w.write(&interleave_record_batch(inputs, &indices)?)?;
    }
    w.close()?;
    let bytes = Bytes::from(bytes);
    Ok(EncodedFile {
        path: new_file_path(table, hour),
        sha256: sha256_hex(&bytes),
        bytes,
        rows: rows.len() as u64,
        min_time_us: t0,
        max_time_us: rows.last().map(|&(t, _, _)| t).unwrap_or(t0),
    })
}

/// Encodes and uploads; each file comes with its SHA-256. On error, files already uploaded are deleted
/// (best effort; `open` removes any that remain because they are not in the manifest).
pub(crate) async fn write_partitioned(
    objects: &ObjectFiles,
    table: Table,
    batches: Vec<RecordBatch>,
) -> Result<Vec<(StoredFile, String)>, StoreError> {
    let encoded =
        tokio::task::spawn_blocking(move || encode_partitioned(table, &batches, Effort::Flush))
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
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    /// The `time` column as the event and alert schemas declare it.
    fn time_field() -> Field {
        Field::new(
            TIME,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    }

    fn batch(times: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            time_field(),
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
        let files = encode_partitioned(Table::Events, &[b1, b2], Effort::Flush).unwrap();
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

    /// More rows than one gathered chunk, from several batches, many sharing a time: the file is sorted by
    /// time and rows with equal times keep their arrival order (batch, then row).
    #[test]
    fn sort_is_stable_across_batches_and_chunks() {
        let h = crate::partition::HOUR_US;
        let rows = ENCODE_CHUNK_ROWS + 1000;
        let times: Vec<i64> = (0..rows as i64)
            .map(|i| h * 10 + (rows as i64 - i) / 7)
            .collect();
        let (b1, b2) = (batch(&times), batch(&times));
        let files = encode_partitioned(Table::Events, &[b1, b2], Effort::Flush).unwrap();
        assert_eq!(files.len(), 1);
        let back = decode(files[0].bytes.clone(), None).unwrap();
        let got: Vec<(i64, i64)> = back
            .iter()
            .flat_map(|b| {
                let t = b
                    .column(0)
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec();
                let n = b
                    .column(1)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec();
                t.into_iter().zip(n)
            })
            .collect();
        assert_eq!(got.len(), 2 * rows);
        let mut want: Vec<(i64, usize, i64)> = (0..2)
            .flat_map(|b| {
                times
                    .iter()
                    .enumerate()
                    .map(move |(r, &t)| (t, b, r as i64))
            })
            .collect();
        want.sort_by_key(|&(t, _, _)| t); // stable: batch then row within equal times
        assert_eq!(
            got,
            want.iter().map(|&(t, _, n)| (t, n)).collect::<Vec<_>>()
        );
        assert_eq!(
            (files[0].min_time_us, files[0].max_time_us),
            (want[0].0, want[want.len() - 1].0)
        );
    }

    /// A big hour is flushed as two files encoded in parallel: consecutive halves in time, each sorted, all
    /// rows once. Compaction of the same rows writes one file.
    #[test]
    fn a_big_flushed_hour_is_two_time_ordered_halves_and_compaction_one_file() {
        let h = crate::partition::HOUR_US;
        let rows = 2 * SPLIT_MIN_ROWS + 3;
        let times: Vec<i64> = (0..rows as i64)
            .map(|i| h * 10 + (i * 7919) % 1_000_000)
            .collect();
        let files = encode_partitioned(Table::Events, &[batch(&times)], Effort::Flush).unwrap();
        assert_eq!(files.len(), 2);
        let mut all = Vec::new();
        for f in &files {
            assert!(
                f.path.starts_with("events/date=1970-01-01/hour=10/"),
                "{}",
                f.path
            );
            let t: Vec<i64> = decode(f.bytes.clone(), None)
                .unwrap()
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_primitive::<TimestampMicrosecondType>()
                        .values()
                        .to_vec()
                })
                .collect();
            assert!(t.is_sorted(), "a half is not sorted");
            assert_eq!((t[0], t[t.len() - 1]), (f.min_time_us, f.max_time_us));
            assert_eq!(t.len() as u64, f.rows);
            all.extend(t);
        }
        assert_ne!(files[0].path, files[1].path);
        assert!(files[0].max_time_us <= files[1].min_time_us);
        let mut want = times.clone();
        want.sort();
        assert_eq!(all, want);
        let compacted =
            encode_partitioned(Table::Events, &[batch(&times)], Effort::Compaction).unwrap();
        assert_eq!(compacted.len(), 1);
        assert_eq!(compacted[0].rows, rows as u64);
    }

    #[test]
    fn missing_time_column_is_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        assert!(matches!(
            encode_partitioned(Table::Events, &[b], Effort::Flush),
            Err(StoreError::InvalidBatch { .. })
        ));
    }

    #[test]
    fn a_flush_skips_text_statistics_and_compaction_writes_them() {
        let schema = Arc::new(Schema::new(vec![
            time_field(),
            Field::new("model", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2]).with_timezone("UTC")),
                Arc::new(arrow::array::StringArray::from(vec!["gpt-4o", "claude"])),
                Arc::new(Int64Array::from(vec![7, 9])),
            ],
        )
        .unwrap();
        let stats = |bytes: Bytes| {
            let meta = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .metadata()
                .clone();
            let rg = meta.row_group(0);
            (0..3)
                .map(|c| rg.column(c).statistics().is_some())
                .collect::<Vec<_>>()
        };
        let flushed = encode_partitioned(Table::Events, std::slice::from_ref(&b), Effort::Flush)
            .unwrap()
            .remove(0);
        assert_eq!(stats(flushed.bytes), [true, false, true]);
        assert_eq!(stats(encode(&b).unwrap()), [true, true, true]);
    }
}
