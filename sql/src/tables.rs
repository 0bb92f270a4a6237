//! DataFusion tables over the store.
//!
//! A [`StoreTable`] takes a fresh snapshot on every scan, so each query sees the files and buffered rows live
//! at that instant, and a row is counted once whether it is still in memory or already in Parquet. Time
//! filters prune whole files using the manifest's min/max time before any file is opened: Grafana sends a time
//! range with every panel query, and a dashboard over the last hour must not open a month of files.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, DataFusionError, JoinType, Result as DFResult, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::provider_as_source;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, LogicalPlan, LogicalPlanBuilder, Operator,
    TableProviderFilterPushDown, TableType,
};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use object_store::ObjectStoreExt;
use vigil_store::{StoredFile, Table};

use crate::source::SnapshotSource;

/// The column the time-partitioned tables are partitioned and pruned by.
pub const TIME_COLUMN: &str = "time";

/// One store table (`events`, `alerts`, `baselines`, `inventory`) as a DataFusion table.
pub struct StoreTable {
    source: Arc<dyn SnapshotSource>,
    table: Table,
    schema: SchemaRef,
}

impl fmt::Debug for StoreTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTable")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl StoreTable {
    pub fn new(source: Arc<dyn SnapshotSource>, table: Table) -> Self {
        let stored = source.schema(table);
        let schema = match table {
            Table::Events => string_views(&stored),
            Table::Alerts | Table::Baselines | Table::Inventory => stored,
        };
        Self {
            source,
            table,
            schema,
        }
    }

    /// Whether the table's files carry a meaningful time range (state tables record 0..0).
    fn is_time_partitioned(&self) -> bool {
        matches!(self.table, Table::Events | Table::Alerts)
            && self.schema.column_with_name(TIME_COLUMN).is_some()
    }
}

/// Registers the four store tables on `ctx` under their own names; `alerts` is an [`AlertsView`] with no
/// responses until [`register_alert_responses`] gives it some.
pub fn register_store_tables(
    ctx: &SessionContext,
    source: &Arc<dyn SnapshotSource>,
) -> DFResult<()> {
    for table in Table::ALL {
        let stored: Arc<dyn TableProvider> = Arc::new(StoreTable::new(source.clone(), table));
        let provider: Arc<dyn TableProvider> = match table {
            Table::Alerts => {
                let none = Arc::new(LiveTable::new(
                    vigil_detect::alert_response_schema(),
                    Vec::new,
                ));
                Arc::new(AlertsView::new(stored, none)?)
            }
            _ => stored,
        };
        ctx.register_table(table.name(), provider)?;
    }
    Ok(())
}

/// `alerts` as SQL shows it: the stored alerts with the responses taken joined in by `alert_id`
/// (`response_playbook`, `response_action`, `response_status`, `response_requested_at`, `responded_at`;
/// NULL for alerts no playbook answered).
///
/// Stored alerts are append-only Parquet written before any response happens, so responses cannot be
/// stored with them; they come from a live table (the responder's outbox, wired in by the binary) that
/// must hold at most one row per `alert_id`, so the LEFT JOIN never repeats an alert. The view is inlined
/// into every query's plan, so filters on `time` still reach the store scan and prune files.
pub struct AlertsView {
    stored: Arc<dyn TableProvider>,
    view: ViewTable,
}

impl fmt::Debug for AlertsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertsView").finish_non_exhaustive()
    }
}

impl AlertsView {
    const STORED: &'static str = "stored_alerts";
    const RESPONSES: &'static str = "alert_responses";

    /// `stored` LEFT JOIN `responses` ON `alert_id`: every stored column, then every response column but
    /// the key.
    pub fn new(
        stored: Arc<dyn TableProvider>,
        responses: Arc<dyn TableProvider>,
    ) -> DFResult<Self> {
        let key = "alert_id";
        let column = |table: &str, name: &str| Expr::Column(Column::new(Some(table), name));
        let mut exprs: Vec<Expr> = stored
            .schema()
            .fields()
            .iter()
            .map(|f| column(Self::STORED, f.name()))
            .collect();
        let response_fields: Vec<String> = responses
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != key)
            .collect();
        exprs.extend(response_fields.iter().map(|n| column(Self::RESPONSES, n)));
        let right = LogicalPlanBuilder::scan(Self::RESPONSES, provider_as_source(responses), None)?
            .build()?;
        let plan =
            LogicalPlanBuilder::scan(Self::STORED, provider_as_source(stored.clone()), None)?
                .join(
                    right,
                    JoinType::Left,
                    (
                        vec![Column::new(Some(Self::STORED), key)],
                        vec![Column::new(Some(Self::RESPONSES), key)],
                    ),
                    None,
                )?
                .project(exprs)?
                .build()?;
        let definition = format!(
            "SELECT {0}.*, {2} FROM {0} LEFT JOIN {1} USING ({key})",
            Self::STORED,
            Self::RESPONSES,
            response_fields
                .iter()
                .map(|n| format!("{}.{n}", Self::RESPONSES))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Self {
            stored,
            view: ViewTable::new(plan, Some(definition)),
        })
    }
}

/// Shows the rows `fetch` returns at each query (schema [`vigil_detect::alert_response_schema`], at most
/// one row per `alert_id`) as the response columns of `ctx`'s `alerts`.
pub async fn register_alert_responses(
    ctx: &SessionContext,
    fetch: impl Fn() -> Vec<RecordBatch> + Send + Sync + 'static,
) -> DFResult<()> {
    let name = Table::Alerts.name();
    let current = ctx.table_provider(name).await?;
    let view = current.downcast_ref::<AlertsView>().ok_or_else(|| {
        DataFusionError::Plan(format!(
            "{name} is not the alerts view this crate registers"
        ))
    })?;
    let responses = Arc::new(LiveTable::new(vigil_detect::alert_response_schema(), fetch));
    let replacement = Arc::new(AlertsView::new(view.stored.clone(), responses)?);
    // Registering over an existing name is refused; queries planned in between would not find `alerts`,
    // which is why the server wires this before it serves SQL.
    ctx.deregister_table(name)?;
    ctx.register_table(name, replacement)?;
    Ok(())
}

#[async_trait]
impl TableProvider for AlertsView {
    fn schema(&self) -> SchemaRef {
        self.view.schema()
    }

    /// A base table to catalogs (psql's `\dt`, Grafana's table list, `information_schema`): it is the
    /// `alerts` table users know, and being a view is an implementation detail. Planning inlines it
    /// through [`Self::get_logical_plan`] whatever this says.
    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// What lets the planner inline the view (and push filters through the join into the store scan).
    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.view.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        self.view.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.view.scan(state, projection, filters, limit).await
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter is Inexact: the scan uses time filters to drop files and hands all filters to the Parquet
    /// reader for row-group pruning, but rows of kept files and buffered rows still need the filter applied.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let snapshot = self.source.snapshot(self.table);
        let range = if self.is_time_partitioned() {
            TimeRange::from_filters(filters)
        } else {
            TimeRange::ALL
        };
        let files: Vec<&StoredFile> = snapshot
            .files
            .iter()
            .filter(|f| range.overlaps(f.min_time_us, f.max_time_us))
            .collect();
        tracing::debug!(
            table = self.table.name(),
            files_total = snapshot.files.len(),
            files_scanned = files.len(),
            buffered_batches = snapshot.buffered.len(),
            ?range,
            "planning store scan"
        );

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let mut in_memory = Vec::new();
        if self.is_rewritten_in_place() {
            in_memory = self.read_whole(&files).await?;
        } else if !files.is_empty() {
            inputs.push(self.parquet_scan(state, &files, projection, limit).await?);
        }
        for b in snapshot.buffered.iter().filter(|b| b.num_rows() > 0) {
            in_memory.push(conform(b, &self.schema)?);
        }
        let buffered: Vec<RecordBatch> = in_memory;
        if !buffered.is_empty() {
            let memory =
                MemorySourceConfig::try_new(&[buffered], self.schema.clone(), projection.cloned())?
                    .with_limit(limit);
            inputs.push(datafusion::datasource::source::DataSourceExec::from_data_source(memory));
        }
        if inputs.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(inputs)
    }
}

impl StoreTable {
    /// State tables (`baselines`, `inventory`): one small file each, replaced under the same path by every
    /// write (see `vigil-store`'s `state_table`).
    fn is_rewritten_in_place(&self) -> bool {
        matches!(self.table, Table::Baselines | Table::Inventory)
    }

    /// Reads files whole, each with one GET, which returns one version of the file. A Parquet scan reads the
    /// footer and the pages with separate range requests placed by the snapshot's file size, and a state
    /// table rewritten between the snapshot and those reads failed the query ("Invalid page header"). The
    /// query then sees the newer state, which is what a state table is for.
    async fn read_whole(&self, files: &[&StoredFile]) -> DFResult<Vec<RecordBatch>> {
        let (_, store) = self.source.object_store();
        let mut out = Vec::new();
        for f in files {
            let path = object_store::path::Path::from(f.path.as_str());
            let bytes = store
                .get(&path)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .bytes()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
            for batch in reader {
                out.push(by_name(&batch?, &self.schema)?);
            }
        }
        Ok(out)
    }

    /// A Parquet scan over exactly `files`, spread over up to `target_partitions` groups of similar size.
    async fn parquet_scan(
        &self,
        state: &dyn Session,
        files: &[&StoredFile],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let (url, store) = self.source.object_store();
        let store_url = ObjectStoreUrl::parse(format!("{}://{}", url.scheme(), url.authority()))?;
        let runtime = state.runtime_env();
        if runtime.object_store(&store_url).is_err() {
            runtime.register_object_store(&url, store);
        }

        let groups = balance_groups(
            files,
            state.config_options().execution.target_partitions.max(1),
        );
        let config = FileScanConfigBuilder::new(
            store_url,
            Arc::new(ParquetSource::new(self.schema.clone())),
        )
        .with_file_groups(groups)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
        ParquetFormat::default()
            .with_options(state.table_options().parquet.clone())
            .create_physical_plan(state, config)
            .await
    }
}

/// Puts each file into the group with the fewest bytes so far, largest files first.
fn balance_groups(files: &[&StoredFile], max_groups: usize) -> Vec<FileGroup> {
    let n = max_groups.min(files.len()).max(1);
    let mut sorted: Vec<&StoredFile> = files.to_vec();
    sorted.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for file in sorted {
        if let Some(group) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            group.0 += file.size;
            group
                .1
                .push(PartitionedFile::new(file.path.clone(), file.size));
        }
    }
    groups
        .into_iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(_, f)| FileGroup::new(f))
        .collect()
}

/// `schema` with its top-level `Utf8` columns as `Utf8View`.
///
/// `events` is read this way: the Parquet reader then makes each string a 16-byte view into the page (or
/// the column's dictionary) instead of copying it into one contiguous buffer, and filters and group keys
/// move views rather than bytes. Those copies were the largest part of the dashboards' event queries
/// (`vigil bench sql`). SQL sees the same strings; `Utf8View` is DataFusion's own default for Parquet.
fn string_views(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<arrow::datatypes::FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View)),
            _ => f.clone(),
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// Gives a buffered batch the table's schema object (same columns; metadata may differ). String columns are
/// cast to views where the table reads them as views (`events`); any other difference is an error.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> DFResult<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| match (c.data_type(), f.data_type()) {
            (DataType::Utf8, DataType::Utf8View) => arrow::compute::cast(c, f.data_type()),
            _ => Ok(c.clone()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| {
        DataFusionError::Execution(format!(
            "buffered batch does not match the table schema: {e}"
        ))
    })
}

/// The table's columns, taken from a decoded file by name (a file written with an older column order still
/// reads).
fn by_name(batch: &RecordBatch, schema: &SchemaRef) -> DFResult<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            batch.column_by_name(f.name()).cloned().ok_or_else(|| {
                DataFusionError::Execution(format!("stored file has no column {}", f.name()))
            })
        })
        .collect::<DFResult<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| {
        DataFusionError::Execution(format!("stored file does not match the table schema: {e}"))
    })
}

/// An inclusive range of `time` values, in microseconds, that a query can match; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange { lo: None, hi: None };

    /// The range implied by the conjunction of `filters`. Filters it does not understand leave the range as
    /// it is, so the result always contains every matching row (it may contain more).
    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut range = TimeRange::ALL;
        for filter in filters {
            range.narrow(filter);
        }
        range
    }

    /// Whether a file with these min/max times can hold rows in the range.
    pub fn overlaps(&self, min_us: i64, max_us: i64) -> bool {
        self.lo.is_none_or(|lo| max_us >= lo) && self.hi.is_none_or(|hi| min_us <= hi)
    }

    fn raise_lo(&mut self, v: i64) {
        self.lo = Some(self.lo.map_or(v, |lo| lo.max(v)));
    }

    fn lower_hi(&mut self, v: i64) {
        self.hi = Some(self.hi.map_or(v, |hi| hi.min(v)));
    }

    fn narrow(&mut self, expr: &Expr) {
        match expr {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                self.narrow(left);
                self.narrow(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                // Normalise to `time <op> literal`.
                let (op, lit) = if is_time_column(left) {
                    (*op, right.as_ref())
                } else if is_time_column(right) {
                    match op.swap() {
                        Some(swapped) => (swapped, left.as_ref()),
                        None => return,
                    }
                } else {
                    return;
                };
                let Some(v) = literal_bounds(lit) else { return };
                // Rows hold whole microseconds, so strict bounds move by one and fractional ones round inwards.
                match op {
                    Operator::Gt => self.raise_lo(v.floor.saturating_add(1)),
                    Operator::GtEq => self.raise_lo(v.ceil),
                    Operator::Lt => self.lower_hi(v.ceil.saturating_sub(1)),
                    Operator::LtEq => self.lower_hi(v.floor),
                    Operator::Eq => {
                        self.raise_lo(v.ceil);
                        self.lower_hi(v.floor);
                    }
                    _ => {}
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_time_column(expr) => {
                if let Some(v) = literal_bounds(low) {
                    self.raise_lo(v.ceil);
                }
                if let Some(v) = literal_bounds(high) {
                    self.lower_hi(v.floor);
                }
            }
            _ => {}
        }
    }
}

/// `time`, possibly cast to a timestamp type at least as fine as its microseconds (type coercion casts the
/// column when a literal has nanoseconds); such casts keep every instant apart, so bounds on the cast
/// still bound the column. A cast to seconds or milliseconds does not: `CAST(time AS TIMESTAMP(0)) = '..:05'`
/// holds for rows at 5.1 s and 5.9 s too, which a bound of exactly 5 s would prune.
fn is_time_column(expr: &Expr) -> bool {
    let keeps_micros = |t: &DataType| {
        matches!(
            t,
            DataType::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, _)
        )
    };
    match expr {
        Expr::Column(c) => c.name == TIME_COLUMN,
        Expr::Cast(c) => keeps_micros(c.field.data_type()) && is_time_column(&c.expr),
        Expr::TryCast(c) => keeps_micros(c.field.data_type()) && is_time_column(&c.expr),
        _ => false,
    }
}

/// A literal instant as the whole microseconds around it (equal when it is a whole microsecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Micros {
    floor: i64,
    ceil: i64,
}

impl Micros {
    fn exact(v: i64) -> Self {
        Self { floor: v, ceil: v }
    }

    fn from_nanos(ns: i64) -> Self {
        let floor = ns.div_euclid(1_000);
        Self {
            floor,
            ceil: floor + i64::from(ns.rem_euclid(1_000) != 0),
        }
    }
}

/// A timestamp-like literal in microseconds since the epoch. Strings are parsed the way a cast would parse
/// them (RFC 3339 as Grafana sends, or `YYYY-MM-DD HH:MM:SS`, UTC when no offset is given).
fn literal_bounds(expr: &Expr) -> Option<Micros> {
    match expr {
        Expr::Literal(value, _) => match value {
            ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000).map(Micros::exact),
            ScalarValue::TimestampMillisecond(Some(v), _) => {
                v.checked_mul(1_000).map(Micros::exact)
            }
            ScalarValue::TimestampMicrosecond(Some(v), _) => Some(Micros::exact(*v)),
            ScalarValue::TimestampNanosecond(Some(v), _) => Some(Micros::from_nanos(*v)),
            ScalarValue::Date32(Some(days)) => i64::from(*days)
                .checked_mul(86_400_000_000)
                .map(Micros::exact),
            ScalarValue::Date64(Some(ms)) => ms.checked_mul(1_000).map(Micros::exact),
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => {
                string_to_timestamp_nanos(s).ok().map(Micros::from_nanos)
            }
            _ => None,
        },
        // An unfolded `CAST('2026-..' AS TIMESTAMP)`.
        Expr::Cast(c)
            if matches!(
                c.field.data_type(),
                DataType::Timestamp(_, _) | DataType::Date32
            ) =>
        {
            literal_bounds(&c.expr)
        }
        _ => None,
    }
}

/// A table whose rows come from a closure at each scan: for small live state kept outside the store (e.g.
/// `alert_deliveries`), so it can be joined with the store tables without being persisted first.
pub struct LiveTable {
    schema: SchemaRef,
    fetch: Arc<dyn Fn() -> Vec<RecordBatch> + Send + Sync>,
}

impl fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl LiveTable {
    pub fn new(
        schema: SchemaRef,
        fetch: impl Fn() -> Vec<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        Self {
            schema,
            fetch: Arc::new(fetch),
        }
    }
}

/// Registers a [`LiveTable`] under `name`.
pub fn register_live_table(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    fetch: impl Fn() -> Vec<RecordBatch> + Send + Sync + 'static,
) -> DFResult<()> {
    ctx.register_table(name, Arc::new(LiveTable::new(schema, fetch)))?;
    Ok(())
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batches: Vec<RecordBatch> = (self.fetch)()
            .iter()
            .map(|b| conform(b, &self.schema))
            .collect::<DFResult<_>>()?;
        let memory =
            MemorySourceConfig::try_new(&[batches], self.schema.clone(), projection.cloned())?
                .with_limit(limit);
        Ok(datafusion::datasource::source::DataSourceExec::from_data_source(memory))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{run_query, session_context, QueryLimits};
    use crate::test_support::{self, TestSource, BASE_US, HOUR_US};
    use arrow::array::Int64Array;
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::logical_expr::{col, lit};
    use datafusion::physical_plan::collect;

    /// The Parquet files a physical plan will open.
    fn planned_files(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
        let mut files = Vec::new();
        if let Some(exec) = (plan.as_ref() as &dyn std::any::Any).downcast_ref::<DataSourceExec>() {
            if let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>() {
                for group in &config.file_groups {
                    files.extend(group.iter().map(|f| f.object_meta.location.to_string()));
                }
            }
        }
        for child in plan.children() {
            files.extend(planned_files(child));
        }
        files.sort();
        files
    }

    fn source(dir: &std::path::Path) -> Arc<dyn SnapshotSource> {
        // Hours 0..4, 10 rows each, plus 5 buffered rows in hour 4.
        Arc::new(TestSource::with_hours(
            dir,
            &[(0, 10), (1, 10), (2, 10), (3, 10)],
            5,
        ))
    }

    async fn count_and_files(ctx: &SessionContext, sql: &str) -> (i64, Vec<String>) {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let files = planned_files(&plan);
        let batches = collect(plan, ctx.task_ctx()).await.unwrap();
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        (n, files)
    }

    #[test]
    fn time_range_from_filters() {
        let t = |us: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(us),
                Some("UTC".into()),
            ))
        };
        let ns = |ns: i64| lit(ScalarValue::TimestampNanosecond(Some(ns), None));
        let range = |filters: &[Expr]| TimeRange::from_filters(filters);
        assert_eq!(
            range(&[col("time").gt_eq(t(100)), col("time").lt(t(200))]),
            TimeRange {
                lo: Some(100),
                hi: Some(199)
            }
        );
        assert_eq!(
            range(&[col("time").gt(t(100)), col("time").lt_eq(t(200))]),
            TimeRange {
                lo: Some(101),
                hi: Some(200)
            }
        );
        // Literal on the left; fractional microseconds round inwards.
        assert_eq!(
            range(&[ns(300_500).gt(col("time")), ns(100_500).lt_eq(col("time"))]),
            TimeRange {
                lo: Some(101),
                hi: Some(300)
            }
        );
        assert_eq!(
            range(&[col("time").gt(ns(100_500)), col("time").lt_eq(ns(300_500))]),
            TimeRange {
                lo: Some(101),
                hi: Some(300)
            }
        );
        assert_eq!(
            range(&[col("time").eq(t(7))]),
            TimeRange {
                lo: Some(7),
                hi: Some(7)
            }
        );
        // Conjunctions inside one filter, and the tighter of two bounds wins.
        assert_eq!(
            range(&[col("time")
                .gt_eq(t(10))
                .and(col("time").gt_eq(t(50)))
                .and(col("time").lt(t(90)))]),
            TimeRange {
                lo: Some(50),
                hi: Some(89)
            }
        );
        // Grafana's string literals, BETWEEN (inclusive).
        assert_eq!(
            range(&[col("time").between(lit("2026-01-01T00:00:00Z"), lit("2026-01-01T01:00:00Z"))]),
            TimeRange {
                lo: Some(BASE_US),
                hi: Some(BASE_US + HOUR_US)
            }
        );
        // A cast that keeps every microsecond bounds the column; one to seconds does not.
        let cast_to = |unit: TimeUnit| {
            Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(col("time")),
                DataType::Timestamp(unit, None),
            ))
        };
        assert_eq!(
            range(&[cast_to(TimeUnit::Nanosecond).gt_eq(ns(100_000))]),
            TimeRange {
                lo: Some(100),
                hi: None
            }
        );
        assert_eq!(
            range(
                &[cast_to(TimeUnit::Second).eq(lit(ScalarValue::TimestampSecond(Some(5), None)))]
            ),
            TimeRange::ALL
        );
        // OR, NOT BETWEEN and other columns do not narrow.
        let all = range(&[
            col("time").gt(t(5)).or(col("time").lt(t(1))),
            col("time").not_between(t(1), t(2)),
            col("kind").eq(lit("tool")),
        ]);
        assert_eq!(all, TimeRange::ALL);
        assert!(all.overlaps(i64::MIN, i64::MIN));
        let r = TimeRange {
            lo: Some(10),
            hi: Some(20),
        };
        assert!(
            r.overlaps(0, 10) && r.overlaps(20, 30) && r.overlaps(12, 13) && r.overlaps(0, 100)
        );
        assert!(!r.overlaps(0, 9) && !r.overlaps(21, 30));
    }

    #[tokio::test]
    async fn files_and_buffered_rows_are_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_context(source(dir.path()), QueryLimits::default()).unwrap();
        let (n, files) = count_and_files(&ctx, "SELECT count(*) FROM events").await;
        assert_eq!(n, 45);
        assert_eq!(files.len(), 4);
        let batches = run_query(
            &ctx,
            "SELECT count(DISTINCT event_id) FROM events",
            &QueryLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            45
        );
    }

    #[tokio::test]
    async fn time_filters_open_only_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_context(source(dir.path()), QueryLimits::default()).unwrap();

        // Hour 1 only (a file's rows span its first 10 seconds).
        let (n, files) = count_and_files(
            &ctx,
            "SELECT count(*) FROM events WHERE time >= '2026-01-01T01:00:00Z' AND time < '2026-01-01T02:00:00Z'",
        )
        .await;
        assert_eq!(n, 10);
        assert_eq!(files, vec!["events/date=2026-01-01/hour=01/1.parquet"]);

        // Grafana's $__timeFilter: BETWEEN with RFC 3339 strings, hours 2 and 3 plus the buffer in hour 4.
        let (n, files) = count_and_files(
            &ctx,
            "SELECT count(*) FROM events WHERE time BETWEEN '2026-01-01T02:00:00Z' AND '2026-01-01T04:30:00Z'",
        )
        .await;
        assert_eq!(n, 25);
        assert_eq!(
            files,
            vec![
                "events/date=2026-01-01/hour=02/2.parquet",
                "events/date=2026-01-01/hour=03/3.parquet"
            ]
        );

        // A typed literal and a range past every file: nothing opened, buffered rows still seen.
        let (n, files) = count_and_files(
            &ctx,
            "SELECT count(*) FROM events WHERE time > TIMESTAMP '2026-01-01 04:00:00'",
        )
        .await;
        assert_eq!(
            n, 4,
            "buffered rows after 04:00:00 (the first is at exactly 04:00:00)"
        );
        assert!(files.is_empty(), "{files:?}");

        // EXPLAIN ANALYZE shows the same: one file scanned.
        let batches = run_query(
            &ctx,
            "EXPLAIN ANALYZE SELECT count(*) FROM events WHERE time >= '2026-01-01T03:00:00Z' AND time < '2026-01-01T04:00:00Z'",
            &QueryLimits::default(),
        )
        .await
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("hour=03/3.parquet"), "{text}");
        assert!(
            !text.contains("hour=02/2.parquet") && !text.contains("hour=00/0.parquet"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn grafana_macro_expanded_query() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_context(source(dir.path()), QueryLimits::default()).unwrap();
        let sql = "SELECT floor(extract(epoch from time)/300)*300 AS \"time\", count(*) AS events \
                   FROM events WHERE time BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T01:59:59Z' \
                   GROUP BY 1 ORDER BY 1";
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        assert_eq!(planned_files(&plan).len(), 2);
        let batches = run_query(&ctx, sql, &QueryLimits::default()).await.unwrap();
        assert_eq!(
            test_support::total_rows(&batches),
            2,
            "one 5-minute bucket per hour"
        );
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let base_s = BASE_US / 1_000_000;
        assert!(
            text.contains(&base_s.to_string()) && text.contains(&(base_s + 3600).to_string()),
            "{text}"
        );
        assert!(text.contains("| 10 "), "{text}");
    }

    #[tokio::test]
    async fn state_tables_ignore_time_pruning_and_projection_works() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = TestSource::with_hours(dir.path(), &[], 0);
        let schema = src.schema(Table::Baselines);
        src.add_file(
            Table::Baselines,
            "baselines/state.parquet",
            &test_support::state_batch(schema.clone()),
        );
        src.add_buffered(Table::Baselines, test_support::state_batch(schema));
        let ctx = session_context(Arc::new(src), QueryLimits::default()).unwrap();
        let batches = run_query(
            &ctx,
            "SELECT entity, sum(value) AS v FROM baselines GROUP BY entity ORDER BY entity",
            &QueryLimits::default(),
        )
        .await
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(
            text.contains("| alice  | 2.0 |") && text.contains("| bob    | 4.0 |"),
            "{text}"
        );
        // An empty table plans and answers zero rows.
        let batches = run_query(&ctx, "SELECT count(*) FROM alerts", &QueryLimits::default())
            .await
            .unwrap();
        assert_eq!(
            batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            0
        );
    }

    /// A state file replaced after the query's snapshot (so the snapshot's size is stale) reads as its new
    /// content; a Parquet scan placed by the stale size failed with "Invalid page header".
    #[tokio::test]
    async fn a_state_file_rewritten_after_the_snapshot_reads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = TestSource::with_hours(dir.path(), &[], 0);
        let schema = src.schema(Table::Baselines);
        src.add_file(
            Table::Baselines,
            "baselines/state.parquet",
            &test_support::state_batch(schema.clone()),
        );
        let names: Vec<String> = (0..500).map(|i| format!("entity-{i}")).collect();
        let newer = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::StringArray::from(names)),
                Arc::new(arrow::array::Float64Array::from(vec![1.0; 500])),
            ],
        )
        .unwrap();
        // The rewrite: same path, other size; `src` still lists the old size.
        TestSource::with_hours(dir.path(), &[], 0).add_file(
            Table::Baselines,
            "baselines/state.parquet",
            &newer,
        );
        let ctx = session_context(Arc::new(src), QueryLimits::default()).unwrap();
        let batches = run_query(
            &ctx,
            "SELECT count(*), sum(value) FROM baselines",
            &QueryLimits::default(),
        )
        .await
        .unwrap();
        let count = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(count, 500);
    }

    fn alert(id: &str, time_us: i64) -> vigil_detect::Alert {
        vigil_detect::Alert {
            alert_id: id.into(),
            time_us,
            detector: "tool_abuse".into(),
            severity: vigil_detect::Severity::High,
            entity_type: "agent".into(),
            entity_id: "agent-1".into(),
            score: 1.0,
            title: "t".into(),
            description: "d".into(),
            evidence_event_ids: vec!["e1".into()],
            evidence: String::new(),
            owasp: None,
            atlas: None,
            fingerprint: format!("fp-{id}"),
        }
    }

    /// One response row in `alert_response_schema()`.
    fn response(alert_id: &str, requested_us: i64, responded_us: Option<i64>) -> RecordBatch {
        use arrow::array::{StringArray, TimestampMicrosecondArray};
        let ts = |v: Option<i64>| {
            Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"))
        };
        RecordBatch::try_new(
            vigil_detect::alert_response_schema(),
            vec![
                Arc::new(StringArray::from(vec![alert_id])),
                Arc::new(StringArray::from(vec!["revoke"])),
                Arc::new(StringArray::from(vec!["revoke_agent_token"])),
                Arc::new(StringArray::from(vec![if responded_us.is_some() {
                    "delivered"
                } else {
                    "retrying"
                }])),
                ts(Some(requested_us)),
                ts(responded_us),
            ],
        )
        .unwrap()
    }

    /// Stored alerts in hours 0 and 1 (two each) and one buffered in hour 2.
    fn alerts_source(dir: &std::path::Path) -> TestSource {
        let mut src = TestSource::with_hours(dir, &[], 0);
        let at = |h: i64, s: i64| BASE_US + h * HOUR_US + s * 1_000_000;
        let file = |ids: &[(&str, i64)]| {
            vigil_detect::alerts_to_batch(
                &ids.iter().map(|(id, t)| alert(id, *t)).collect::<Vec<_>>(),
            )
        };
        src.add_file(
            Table::Alerts,
            "alerts/date=2026-01-01/hour=00/0.parquet",
            &file(&[("a0", at(0, 1)), ("a1", at(0, 2))]),
        );
        src.add_file(
            Table::Alerts,
            "alerts/date=2026-01-01/hour=01/1.parquet",
            &file(&[("b0", at(1, 1)), ("b1", at(1, 2))]),
        );
        src.add_buffered(Table::Alerts, file(&[("c0", at(2, 1))]));
        src
    }

    #[tokio::test]
    async fn alerts_show_the_response_taken_and_keep_time_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let ctx =
            session_context(Arc::new(alerts_source(dir.path())), QueryLimits::default()).unwrap();
        let limits = QueryLimits::default();
        let text = |b: &[RecordBatch]| {
            arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
        };

        // Without a responder the columns exist and are NULL.
        let b = run_query(
            &ctx,
            "SELECT count(*) FROM alerts WHERE response_action IS NULL AND responded_at IS NULL",
            &limits,
        )
        .await
        .unwrap();
        assert_eq!(
            b[0].column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            5
        );

        // b0 was contained 90 s after it was raised; b1's action is still being retried.
        let b0_us = BASE_US + HOUR_US + 1_000_000;
        let rows = Arc::new(std::sync::Mutex::new(vec![response(
            "b0",
            b0_us + 1_000_000,
            Some(b0_us + 90_000_000),
        )]));
        let shared = rows.clone();
        register_alert_responses(&ctx, move || shared.lock().unwrap().clone())
            .await
            .unwrap();
        rows.lock().unwrap().push(response("b1", b0_us, None));
        let b = run_query(
            &ctx,
            "SELECT alert_id, response_action, response_status, extract(epoch from responded_at - time) AS contain_s \
             FROM alerts WHERE response_action IS NOT NULL ORDER BY alert_id",
            &limits,
        )
        .await
        .unwrap();
        let t = text(&b);
        assert!(
            t.contains("| b0       | revoke_agent_token | delivered       | 90.0      |"),
            "{t}"
        );
        assert!(
            t.contains("| b1       | revoke_agent_token | retrying        |           |"),
            "{t}"
        );
        assert_eq!(test_support::total_rows(&b), 2, "{t}");
        let b = run_query(&ctx, "SELECT count(*) FROM alerts", &limits)
            .await
            .unwrap();
        assert_eq!(
            b[0].column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            5,
            "the join repeats no alert"
        );

        // A time filter on the view still reaches the store scan: hour 1's file only.
        let (n, files) = count_and_files(
            &ctx,
            "SELECT count(*) FROM alerts WHERE time >= '2026-01-01T01:00:00Z' AND time < '2026-01-01T02:00:00Z' \
             AND response_status = 'delivered'",
        )
        .await;
        assert_eq!(n, 1);
        assert_eq!(files, vec!["alerts/date=2026-01-01/hour=01/1.parquet"]);
        let b = run_query(
            &ctx,
            "EXPLAIN ANALYZE SELECT alert_id, responded_at FROM alerts WHERE time BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-01T00:59:59Z'",
            &limits,
        )
        .await
        .unwrap();
        let t = text(&b);
        assert!(
            t.contains("hour=00/0.parquet") && !t.contains("hour=01/1.parquet"),
            "{t}"
        );

        // The stored columns still read back as alerts (what the server's reconciliation does).
        let b = run_query(&ctx, "SELECT * FROM alerts ORDER BY alert_id", &limits)
            .await
            .unwrap();
        let back: Vec<vigil_detect::Alert> = b
            .iter()
            .flat_map(|b| vigil_detect::alerts_from_batch(b).unwrap())
            .collect();
        assert_eq!(
            back.iter().map(|a| a.alert_id.as_str()).collect::<Vec<_>>(),
            ["a0", "a1", "b0", "b1", "c0"]
        );
        assert_eq!(back[2], alert("b0", b0_us));
    }

    #[tokio::test]
    async fn live_tables_show_current_rows() {
        let dir = tempfile::tempdir().unwrap();
        let src = TestSource::with_hours(dir.path(), &[], 0);
        let schema = src.schema(Table::Inventory);
        let rows = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ctx = session_context(Arc::new(src), QueryLimits::default()).unwrap();
        let shared = rows.clone();
        register_live_table(&ctx, "alert_deliveries", schema.clone(), move || {
            shared.lock().unwrap().clone()
        })
        .unwrap();
        let count = |ctx: SessionContext| async move {
            let b = run_query(
                &ctx,
                "SELECT count(*) FROM alert_deliveries",
                &QueryLimits::default(),
            )
            .await
            .unwrap();
            b[0].column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
        };
        assert_eq!(count(ctx.clone()).await, 0);
        rows.lock().unwrap().push(test_support::state_batch(schema));
        assert_eq!(count(ctx.clone()).await, 2);
    }
}
