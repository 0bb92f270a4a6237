//! The one DataFusion context every interface queries, and the one way to run a query on it.
//!
//! Limits live here rather than in each server so the CLI, the HTTP API and the pg server cannot drift: the
//! memory pool caps what all concurrent queries together may hold (spilling is off, so a query over the cap
//! fails instead of filling the disk), and the statement timeout covers planning and execution.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use crate::constant_limit::LimitConstants;
use crate::error::QueryError;
use crate::guard::{self, GuardPolicy};
use crate::metrics;
use crate::source::SnapshotSource;
use crate::tables::register_store_tables;

/// Limits applied to every query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryLimits {
    /// Planning plus execution; the query is cancelled after this.
    pub timeout: Duration,
    /// Memory all running queries together may hold for sorts, joins and aggregations.
    pub memory_limit_bytes: usize,
    /// Rows per Arrow batch inside the engine.
    pub batch_size: usize,
    /// Largest answer a collected query (CLI, HTTP) may return; streamed pg answers are not capped.
    pub max_result_rows: usize,
    /// ... and its size in memory: the collected batches are outside the query memory pool, and 100,000 rows
    /// of 100 KB each would be 10 GB before the JSON encoder copied them twice more.
    pub max_result_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory_limit_bytes: 1 << 30,
            batch_size: 8192,
            max_result_rows: 100_000,
            max_result_bytes: 64 << 20,
        }
    }
}

/// Which interface a query came through, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Cli,
    Http,
    Pg,
}

impl Interface {
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Cli => "cli",
            Interface::Http => "http",
            Interface::Pg => "pg",
        }
    }
}

/// A context with the store tables registered, the store's object store registered under its URL, the
/// memory limit set, spilling disabled, and the values functions and constants build bounded
/// (`bounded_functions`, `constant_limit`).
pub fn session_context(
    source: Arc<dyn SnapshotSource>,
    limits: QueryLimits,
) -> Result<SessionContext, DataFusionError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_limit_bytes, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let config = SessionConfig::new()
        .with_batch_size(limits.batch_size.max(1))
        .with_information_schema(true);
    let pool = runtime.memory_pool.clone();
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // One bound for constants and for the values functions build: either could be copied into every row.
    let constants = LimitConstants::for_limits(limits.memory_limit_bytes, limits.batch_size);
    crate::bounded_functions::register(&ctx, &pool, constants.max_bytes())?;
    let ctx = crate::bounded_functions::plan_extract_wrapped(ctx)?;
    ctx.add_optimizer_rule(Arc::new(constants));
    let (url, store) = source.object_store();
    ctx.register_object_store(&url, store);
    register_store_tables(&ctx, &source)?;
    Ok(ctx)
}

/// The second layer behind the guard: DataFusion itself refuses to plan DDL, DML and statements.
pub fn read_only_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A collected answer. The schema is kept apart from the batches because an empty answer has no batch to
/// carry it, and clients still need the columns.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryOutput {
    pub fn row_count(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Runs one read-only query from the local CLI; see [`run_query_as`].
pub async fn run_query(
    ctx: &SessionContext,
    sql: &str,
    limits: &QueryLimits,
) -> Result<Vec<RecordBatch>, QueryError> {
    run_query_as(ctx, sql, limits, Interface::Cli)
        .await
        .map(|out| out.batches)
}

/// Runs one read-only query: guard, plan with [`read_only_options`], execute, collect at most
/// `max_result_rows` rows, all within `timeout`. Records the outcome in the metrics under `interface`.
/// The span carries no SQL text: queries can hold user data, and traces leave the host.
#[tracing::instrument(
    level = "debug",
    name = "sql.query",
    skip_all,
    fields(interface = interface.as_str(), outcome, rows, otel.status_code)
)]
pub async fn run_query_as(
    ctx: &SessionContext,
    sql: &str,
    limits: &QueryLimits,
    interface: Interface,
) -> Result<QueryOutput, QueryError> {
    let started = Instant::now();
    let result = run_guarded(ctx, sql, limits).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    let span = tracing::Span::current();
    span.record("outcome", outcome);
    match &result {
        Ok(out) => span.record("rows", out.row_count() as i64),
        Err(_) => span.record("otel.status_code", "error"),
    };
    metrics::record(interface.as_str(), outcome, started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::debug!(interface = interface.as_str(), error = %e, "query failed");
    }
    result
}

async fn run_guarded(
    ctx: &SessionContext,
    sql: &str,
    limits: &QueryLimits,
) -> Result<QueryOutput, QueryError> {
    guard::check_sql(sql, GuardPolicy::STATELESS)?;
    let work = async {
        let df = ctx.sql_with_options(sql, read_only_options()).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        let batches =
            collect_at_most(stream, limits.max_result_rows, limits.max_result_bytes).await?;
        Ok(QueryOutput { schema, batches })
    };
    tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| QueryError::Timeout(limits.timeout))?
}

async fn collect_at_most(
    mut stream: SendableRecordBatchStream,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Vec<RecordBatch>, QueryError> {
    let mut batches = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows();
        if rows > max_rows {
            return Err(QueryError::TooManyRows(max_rows));
        }
        bytes += batch_bytes(&batch);
        if bytes > max_bytes {
            return Err(QueryError::TooManyBytes(max_bytes));
        }
        batches.push(batch);
    }
    Ok(batches)
}

/// The bytes a batch's rows take (a slice of a larger batch counts only its rows).
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            let data = c.to_data();
            data.get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
                + view_payload_bytes(&data)
        })
        .sum()
}

/// The string bytes of a `Utf8View`/`BinaryView` slice, which arrow's slice size leaves out (it counts the
/// 16-byte views, not the buffers they point into): without them `SELECT prompt_text FROM events` of
/// 20 KB prompts passed the byte limit at 16 bytes a row. Values of up to 12 bytes live in the view itself.
/// Nested columns (`array_agg(prompt_text)`, structs) are walked for their view children too.
fn view_payload_bytes(data: &arrow::array::ArrayData) -> usize {
    use arrow::datatypes::DataType;
    let children: usize = data.child_data().iter().map(view_payload_bytes).sum();
    if !matches!(data.data_type(), DataType::Utf8View | DataType::BinaryView) {
        return children;
    }
    let views = &data.buffer::<u128>(0)[..data.len()];
    children
        + views
            .iter()
            .map(|v| *v as u32 as usize)
            .filter(|&len| len > 12)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DataErrorKind;
    use crate::test_support::{self, TestSource};
    use arrow::array::Int64Array;

    /// `events` is read with Utf8View text columns: their string bytes count against the result limit.
    #[test]
    fn view_strings_count_their_bytes_not_only_their_views() {
        use arrow::array::{ArrayRef, StringViewArray};
        let long = "x".repeat(20_000);
        let array: ArrayRef = Arc::new(StringViewArray::from_iter_values((0..100).map(|k| {
            if k % 2 == 0 {
                long.as_str()
            } else {
                "short"
            }
        })));
        let batch = RecordBatch::try_from_iter([("prompt_text", array)]).unwrap();
        let bytes = batch_bytes(&batch);
        assert!(bytes >= 50 * 20_000, "{bytes}");
        // Inside a list (array_agg) too.
        let list = arrow::array::ListArray::new(
            Arc::new(arrow::datatypes::Field::new_list_field(
                arrow::datatypes::DataType::Utf8View,
                false,
            )),
            arrow::buffer::OffsetBuffer::from_lengths([100]),
            batch.column(0).clone(),
            None,
        );
        let nested = RecordBatch::try_from_iter([("prompts", Arc::new(list) as ArrayRef)]).unwrap();
        assert!(batch_bytes(&nested) >= 50 * 20_000);
        // A slice counts its own rows only.
        let slice = batch.slice(0, 2);
        let bytes = batch_bytes(&slice);
        assert!((20_000..100_000).contains(&bytes), "{bytes}");
    }

    fn count(batches: &[RecordBatch]) -> i64 {
        let col = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("count is Int64");
        col.value(0)
    }

    #[tokio::test]
    async fn counts_files_and_buffered_rows() {
        let dir = tempfile::tempdir().unwrap();
        let source = TestSource::with_hours(dir.path(), &[(0, 10), (1, 20), (2, 30)], 7);
        let ctx = session_context(Arc::new(source), QueryLimits::default()).unwrap();
        let batches = run_query(&ctx, "SELECT count(*) FROM events", &QueryLimits::default())
            .await
            .unwrap();
        assert_eq!(count(&batches), 10 + 20 + 30 + 7);
    }

    /// A value the query cannot handle is the client's error, whether found while planning (constant folding)
    /// or while running.
    #[tokio::test]
    async fn bad_values_are_the_clients_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_context(
            Arc::new(TestSource::with_hours(dir.path(), &[(0, 4)], 1)),
            QueryLimits::default(),
        )
        .unwrap();
        for (sql, want) in [
            ("SELECT 1/0", DataErrorKind::DivisionByZero),
            (
                "SELECT input_tokens / (input_tokens - input_tokens) FROM events",
                DataErrorKind::DivisionByZero,
            ),
            ("SELECT CAST('abc' AS INT)", DataErrorKind::InvalidText),
            (
                "SELECT CAST(kind AS INT) FROM events",
                DataErrorKind::InvalidText,
            ),
            ("SELECT to_timestamp('nope')", DataErrorKind::InvalidText),
        ] {
            match run_query(&ctx, sql, &QueryLimits::default()).await {
                Err(e @ QueryError::Data { kind, .. }) => {
                    assert_eq!(kind, want, "{sql}");
                    assert!(e.is_client_error());
                    assert_eq!(e.outcome(), "data");
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn refused_statements_never_reach_datafusion() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_context(
            Arc::new(TestSource::with_hours(dir.path(), &[], 1)),
            QueryLimits::default(),
        )
        .unwrap();
        let target = dir.path().join("copied");
        let sql = format!("COPY (SELECT 1) TO '{}'", target.display());
        let err = run_query(&ctx, &sql, &QueryLimits::default())
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Refused(_)), "{err}");
        assert!(err.to_string().contains("COPY is not allowed"), "{err}");
        assert!(!target.exists());

        let err = run_query(
            &ctx,
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            &QueryLimits::default(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("CREATE EXTERNAL TABLE is not allowed"),
            "{err}"
        );
        assert!(ctx.table_exist("x").is_ok_and(|exists| !exists));

        let err = run_query(&ctx, "DROP TABLE events", &QueryLimits::default())
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Refused(_)), "{err}");
        assert!(ctx.table_exist("events").unwrap());
    }

    #[tokio::test]
    async fn datafusion_refuses_statements_the_guard_lets_through() {
        // Second layer: even if the guard allowed it, the plan-level options refuse DDL.
        let ctx = SessionContext::new();
        let err = ctx
            .sql_with_options("CREATE TABLE t AS SELECT 1", read_only_options())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("DDL not supported"), "{err}");
        assert!(ctx.table_exist("t").is_ok_and(|exists| !exists));
    }

    #[tokio::test]
    async fn runaway_cross_join_hits_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueryLimits {
            timeout: Duration::from_millis(500),
            ..QueryLimits::default()
        };
        let ctx = session_context(
            Arc::new(TestSource::with_hours(dir.path(), &[], 1)),
            limits.clone(),
        )
        .unwrap();
        let started = Instant::now();
        let err = run_query(
            &ctx,
            "SELECT count(*) FROM range(100000000) a, range(100000000) b",
            &limits,
        )
        .await
        .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, QueryError::Timeout(_)), "{err}");
        assert!(err.to_string().contains("statement timeout"), "{err}");
        assert!(
            took < Duration::from_secs(5),
            "the timeout took {took:?} to fire"
        );
    }

    #[tokio::test]
    async fn memory_hungry_sort_hits_the_memory_limit() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueryLimits {
            memory_limit_bytes: 16 << 20,
            ..QueryLimits::default()
        };
        let ctx = session_context(
            Arc::new(TestSource::with_hours(dir.path(), &[], 1)),
            limits.clone(),
        )
        .unwrap();
        let err = run_query(
            &ctx,
            "SELECT value FROM range(20000000) ORDER BY value DESC LIMIT 5 OFFSET 10000000",
            &limits,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, QueryError::ResourcesExhausted(_)), "{err}");
    }

    #[tokio::test]
    async fn large_answers_are_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueryLimits {
            max_result_rows: 100,
            ..QueryLimits::default()
        };
        let ctx = session_context(
            Arc::new(TestSource::with_hours(dir.path(), &[], 1)),
            limits.clone(),
        )
        .unwrap();
        let err = run_query(&ctx, "SELECT value FROM range(1000)", &limits)
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::TooManyRows(100)), "{err}");
        let small = QueryLimits {
            max_result_bytes: 1 << 20,
            ..limits.clone()
        };
        // 100 rows of 16 KB: few rows, but 1.6 MB.
        let sql = "SELECT repeat('x', 16000) FROM range(100)";
        let err = run_query(&ctx, sql, &small).await.unwrap_err();
        assert!(matches!(err, QueryError::TooManyBytes(_)), "{err}");
        assert!(err.to_string().contains("1048576"), "{err}");
        let ok = run_query(&ctx, "SELECT value FROM range(100)", &limits)
            .await
            .unwrap();
        assert_eq!(test_support::total_rows(&ok), 100);
    }
}
