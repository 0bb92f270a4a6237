//! The SQL layer over the real `vigil_store::Store`: rows appended through the WAL are queryable whether
//! still buffered or flushed to hour-partitioned Parquet, exactly once, and time filters prune by the
//! manifest's min/max time.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use vigil_ingest::{EventBatchBuilder, EventKind, EventRow};
use vigil_sql::{run_query, session_context, QueryLimits, SnapshotSource};
use vigil_store::{Store, StoreConfig, Table};

/// 2026-01-01T00:00:00Z.
const BASE_US: i64 = 1_767_225_600_000_000;
const HOUR_US: i64 = 3_600_000_000;

fn events(start_us: i64, rows: usize, prefix: &str) -> RecordBatch {
    let mut b = EventBatchBuilder::with_capacity(rows);
    for i in 0..rows {
        b.push(&EventRow {
            time_us: start_us + i as i64 * 1_000_000,
            event_id: format!("{prefix}-{i}"),
            kind: Some(EventKind::Inference),
            user_id: Some(format!("user{}", i % 2)),
            ..Default::default()
        });
    }
    b.finish()
}

async fn count(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = run_query(ctx, sql, &QueryLimits::default())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("count is Int64")
        .value(0)
}

/// How many Parquet files the plan opens, from the scan's display (`file_groups={N groups: [[a, b], [c]]}`).
fn parquet_files(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let text = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    text.matches(".parquet").count()
}

#[tokio::test]
async fn buffered_and_flushed_rows_are_counted_once_and_pruned_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let store = Store::open(config).await.unwrap();

    // Three hours flushed to Parquet, then a fourth hour left in the buffer.
    for hour in 0..3 {
        store
            .append(vec![(
                Table::Events,
                events(BASE_US + hour * HOUR_US, 20, &format!("h{hour}")),
            )])
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    store
        .append(vec![(
            Table::Events,
            events(BASE_US + 3 * HOUR_US, 7, "h3"),
        )])
        .await
        .unwrap();

    let snapshot = store.snapshot(Table::Events);
    assert!(
        snapshot.files.len() >= 3,
        "one file per hour partition at least: {:?}",
        snapshot.files
    );
    assert_eq!(
        snapshot
            .buffered
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        7
    );

    let source: Arc<dyn SnapshotSource> = store.clone();
    let ctx = session_context(source, QueryLimits::default()).unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM events").await, 67);
    assert_eq!(
        count(&ctx, "SELECT count(DISTINCT event_id) FROM events").await,
        67
    );

    let sql = "SELECT count(*) FROM events WHERE time BETWEEN '2026-01-01T01:00:00Z' AND '2026-01-01T01:59:59Z'";
    assert_eq!(count(&ctx, sql).await, 20);
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let all = ctx
        .sql("SELECT count(*) FROM events")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    assert_eq!(parquet_files(&plan), 1, "only hour 1's file is opened");
    assert!(parquet_files(&all) >= 3);

    // A later flush moves the buffered hour to Parquet; the count does not change.
    store.flush().await.unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM events").await, 67);
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) FROM events WHERE time >= '2026-01-01T03:00:00Z'"
        )
        .await,
        7
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn state_tables_from_the_real_store_are_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let store = Store::open(config).await.unwrap();
    let source: Arc<dyn SnapshotSource> = store.clone();
    let ctx = session_context(source, QueryLimits::default()).unwrap();
    for table in ["alerts", "baselines", "inventory"] {
        assert_eq!(
            count(&ctx, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    store.shutdown().await.unwrap();
}
