//! Compaction by splicing: the inputs' encoded column chunks are copied into one file as they are, with
//! their statistics and page indexes, instead of decoded and encoded again.
//!
//! Re-encoding a busy hour cost 6.9 µs of CPU per event (`vigil bench ingest` prints it), more than half
//! of what ingesting the event cost, for 5 % fewer bytes at rest: at a sustained rate the background
//! compaction would have taken a third of the cores. Splicing costs the copy and the hashes. It keeps the
//! flush's row groups, so it is only used when they are big enough that a query does not care
//! ([`MIN_MEAN_ROWS`] on average per file: a busy hour's short last flush stays a small row group); files of
//! a quiet hour are re-encoded, which is cheap there and makes one well-packed file. Inputs are read,
//! appended and uploaded one at a time, so a compaction holds one input twice (read, and copied into the
//! output) and a few upload parts, not the group and its output (re-encoding holds every input decoded).
//!
//! What a spliced file keeps from its flushes: zstd level 1, no statistics on text columns, and time order
//! within each row group (declared per row group, as Parquet does), not across row groups where flushes
//! overlap in time (late events). No reader here relies on more: no file sort order is declared to
//! DataFusion.

use std::sync::Arc;

use bytes::Bytes;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::StoreError;

/// Inputs whose row groups hold fewer rows than this on average are re-encoded instead: a file of many
/// small row groups costs every query a footer entry and a page read per group and column.
pub(crate) const MIN_MEAN_ROWS: u64 = 16 * 1024;

/// One input, its footer read with the page indexes.
pub(crate) struct Input {
    bytes: Bytes,
    meta: ParquetMetaData,
}

impl Input {
    pub(crate) fn read(bytes: Bytes) -> Result<Self, StoreError> {
        let meta = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .parse_and_finish(&bytes)?;
        Ok(Input { bytes, meta })
    }

    pub(crate) fn rows(&self) -> u64 {
        self.meta.file_metadata().num_rows().max(0) as u64
    }
}

/// Whether a group of `files` holding `rows` is busy enough to splice, judged from the manifest before
/// any file is read: a flush writes row groups of up to 128k rows, so a file's row groups are small only
/// when the file is.
pub(crate) fn worth_splicing(rows: u64, files: usize) -> bool {
    files > 0 && rows / files as u64 >= MIN_MEAN_ROWS
}

/// Builds the spliced file one input at a time; the caller uploads what each input added
/// ([`Splicer::take_written`]), so a compaction holds one input and a few upload parts rather than the group
/// and its output.
pub(crate) struct Splicer {
    writer: SerializedFileWriter<Vec<u8>>,
    first: ParquetMetaData,
    rows: u64,
}

impl Splicer {
    /// A file with `first`'s schema, key-value metadata (the Arrow schema, which carries the time zone) and
    /// sort order.
    pub(crate) fn new(first: &Input) -> Result<Self, StoreError> {
        let file_meta = first.meta.file_metadata();
        let sorting = first
            .meta
            .row_groups()
            .first()
            .and_then(|rg| rg.sorting_columns().cloned());
        let props = WriterProperties::builder()
            .set_key_value_metadata(file_meta.key_value_metadata().cloned())
            .set_sorting_columns(sorting)
            .build();
        let writer = SerializedFileWriter::new(
            Vec::new(),
            file_meta.schema_descr().root_schema_ptr(),
            Arc::new(props),
        )?;
        Ok(Splicer {
            writer,
            first: first.meta.clone(),
            rows: 0,
        })
    }

    /// Appends every row group of `input`, in order, with its statistics and page indexes. Returns false,
    /// appending nothing, when `input`'s schema or key-value metadata differ from the first input's (files
    /// written before and after an upgrade), or one has an offset index and the other not (the footer
    /// writer needs all or none): the group must be re-encoded.
    pub(crate) fn push(&mut self, input: &Input) -> Result<bool, StoreError> {
        let (a, b) = (input.meta.file_metadata(), self.first.file_metadata());
        if a.schema_descr() != b.schema_descr()
            || a.key_value_metadata() != b.key_value_metadata()
            || input.meta.offset_index().is_some() != self.first.offset_index().is_some()
        {
            return Ok(false);
        }
        let column_indexes = input.meta.column_index();
        let offset_indexes = input.meta.offset_index();
        for (g, rg) in input.meta.row_groups().iter().enumerate() {
            let mut group = self.writer.next_row_group()?;
            for (c, column) in rg.columns().iter().enumerate() {
                group.append_column(
                    &input.bytes,
                    ColumnCloseResult {
                        bytes_written: column.compressed_size().max(0) as u64,
                        rows_written: rg.num_rows().max(0) as u64,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: column_indexes
                            .and_then(|ci| ci.get(g))
                            .and_then(|row| row.get(c))
                            .cloned(),
                        offset_index: offset_indexes
                            .and_then(|oi| oi.get(g))
                            .and_then(|row| row.get(c))
                            .cloned(),
                    },
                )?;
            }
            group.close()?;
        }
        self.rows += input.rows();
        Ok(true)
    }

    /// Rows appended so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// The bytes of the file written since the last call, for the caller to upload: the file is never held
    /// whole. Taking them out of the buffer is safe: the writer counts offsets itself.
    pub(crate) fn take_written(&mut self) -> Result<Vec<u8>, StoreError> {
        self.writer
            .flush()
            .map_err(parquet::errors::ParquetError::from)?;
        Ok(std::mem::take(self.writer.inner_mut()))
    }

    /// Writes the footer; returns the bytes not yet taken.
    pub(crate) fn finish(self) -> Result<Vec<u8>, StoreError> {
        Ok(self.writer.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parquet_writer::{decode, encode_partitioned, Effort};
    use crate::Table;
    use arrow::array::{AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMicrosecondType};

    const HOUR: i64 = 3_600_000_000 * 490_000;

    fn flushed(first: i64, rows: i64, extra: bool) -> Input {
        let mut fields = vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("n", DataType::Int64, false),
        ];
        let times: Vec<i64> = (first..first + rows).map(|i| HOUR + i * 10).collect();
        let mut columns: Vec<arrow::array::ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
            Arc::new(Int64Array::from((first..first + rows).collect::<Vec<_>>())),
        ];
        if extra {
            fields.push(Field::new("m", DataType::Int64, true));
            columns.push(Arc::new(Int64Array::from(vec![1; rows as usize])));
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let mut files = encode_partitioned(Table::Events, &[batch], Effort::Flush).unwrap();
        assert_eq!(files.len(), 1);
        Input::read(files.remove(0).bytes).unwrap()
    }

    /// Splices as compaction does, taking the written bytes after each input.
    fn spliced(inputs: &[Input]) -> Option<Bytes> {
        let mut splicer = Splicer::new(&inputs[0]).unwrap();
        let mut out = Vec::new();
        for input in inputs {
            if !splicer.push(input).unwrap() {
                return None;
            }
            let taken = splicer.take_written().unwrap();
            assert!(
                !taken.is_empty(),
                "an input's chunks are handed out as it is appended"
            );
            out.extend(taken);
        }
        assert_eq!(splicer.rows(), inputs.iter().map(Input::rows).sum::<u64>());
        out.extend(splicer.finish().unwrap());
        Some(Bytes::from(out))
    }

    #[test]
    fn spliced_files_read_back_as_their_rows_in_order_with_their_indexes() {
        let rows = MIN_MEAN_ROWS as i64 + 100;
        let inputs = [flushed(0, rows, false), flushed(rows, rows, false)];
        let out = spliced(&inputs).unwrap();

        let back = decode(out.clone(), None).unwrap();
        // The Arrow schema travels with the chunks: the time zone is still UTC.
        assert_eq!(
            back[0].schema().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let n: Vec<i64> = back
            .iter()
            .flat_map(|b| {
                let n = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
                n.values().to_vec()
            })
            .collect();
        assert_eq!(n, (0..2 * rows).collect::<Vec<_>>());
        let times = back.iter().flat_map(|b| {
            let t = b.column(0).as_primitive::<TimestampMicrosecondType>();
            t.values().to_vec()
        });
        assert!(times.is_sorted());

        let spliced = Input::read(out).unwrap();
        assert_eq!(spliced.rows(), 2 * rows as u64);
        assert_eq!(
            spliced.meta.num_row_groups(),
            2,
            "each input's row group, as it was"
        );
        for rg in spliced.meta.row_groups() {
            assert_eq!(rg.sorting_columns().map(|s| s[0].column_idx), Some(0));
            assert!(rg.column(0).statistics().is_some(), "time statistics kept");
        }
        // The page index still points at the copied pages: a time-filtered read prunes by it.
        let offsets = spliced.meta.offset_index().expect("offset index kept");
        let first_page = offsets[1][0].page_locations()[0].offset;
        assert_eq!(
            first_page,
            spliced.meta.row_group(1).column(0).data_page_offset(),
            "the second group's page locations are moved with its chunks"
        );
        assert!(spliced.meta.column_index().is_some(), "column index kept");
    }

    /// A file whose footer has no offset index (an older or foreign writer) beside ones that have it: the
    /// footer writer would panic on the mix, so the group is re-encoded instead.
    #[test]
    fn a_file_without_an_offset_index_is_not_spliced_with_files_that_have_one() {
        let rows = MIN_MEAN_ROWS as i64;
        let with = flushed(0, rows, false);
        let back = decode(with.bytes.clone(), None).unwrap();
        let mut bytes = Vec::new();
        let props = WriterProperties::builder()
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, back[0].schema(), Some(props))
            .unwrap();
        for b in &back {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        let without = Input::read(Bytes::from(bytes)).unwrap();
        assert!(without.meta.offset_index().is_none());
        assert!(with.meta.offset_index().is_some());
        assert!(spliced(&[flushed(0, rows, false), without]).is_none());
    }

    #[test]
    fn quiet_groups_and_differing_schemas_are_not_spliced() {
        let rows = MIN_MEAN_ROWS;
        assert!(worth_splicing(2 * rows, 2));
        assert!(!worth_splicing(2 * rows - 1, 2));
        assert!(!worth_splicing(0, 0));
        let rows = rows as i64;
        assert!(spliced(&[flushed(0, rows, false), flushed(rows, rows, true)]).is_none());
        assert!(spliced(&[flushed(0, rows, true), flushed(rows, rows, true)]).is_some());
    }
}
