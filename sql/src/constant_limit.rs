//! A cap on the size of the constants a plan carries once DataFusion has simplified it.
//!
//! `kind || repeat('x', 100000000)` is a short query: `repeat` runs once, when the plan is simplified (and
//! reserves its 100 MB from the pool while it runs, see `bounded_functions`), and leaves a 100 MB constant
//! in the plan. Then `||` copies that constant into every row of every batch, 800 GB for one batch of
//! 8,192 rows, in memory that no pool accounts for: DataFusion counts what its operators hold, not the
//! values expressions return. No dashboard needs a constant of more than a few kilobytes, so a plan holding
//! a larger one is refused before it runs, as a query over the memory limit is (HTTP 400, SQLSTATE 53200).
//!
//! The rule runs last in each optimizer pass, after constant folding, and DataFusion's
//! `skip_failed_rules` is off (the SQL guard refuses `SET datafusion.*`), so its error fails the query.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The smallest cap, whatever the memory limit: longer than any literal a person types or pastes into a
/// query (a known jailbreak prompt to search for), and 128 MiB for a batch of 8,192 copies.
const MIN_CONSTANT_BYTES: usize = 16 << 10;

/// Refuses plans with a constant larger than `max_bytes`.
#[derive(Debug)]
pub(crate) struct LimitConstants {
    max_bytes: usize,
}

impl LimitConstants {
    /// A cap under which one batch's copies of a constant (one per row) take at most an eighth of the
    /// query memory limit: 16 KiB with the defaults (1 GiB, batches of 8,192 rows).
    pub(crate) fn for_limits(memory_limit_bytes: usize, batch_size: usize) -> Self {
        let max_bytes = (memory_limit_bytes / batch_size.max(1) / 8).max(MIN_CONSTANT_BYTES);
        Self { max_bytes }
    }

    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn check(&self, plan: &LogicalPlan) -> Result<()> {
        let mut largest = None;
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::Literal(value, _) = e {
                        let size = value.size();
                        if size > self.max_bytes {
                            largest = Some(size);
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        match largest {
            None => Ok(()),
            Some(size) => Err(DataFusionError::ResourcesExhausted(format!(
                "the query computes a constant of {size} bytes, more than the {} bytes a constant may \
                 hold: every row of a batch could carry a copy of it",
                self.max_bytes
            ))),
        }
    }
}

impl OptimizerRule for LimitConstants {
    fn name(&self) -> &str {
        "vigil_limit_constants"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        self.check(&plan)?;
        Ok(Transformed::no(plan))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::context::{run_query, session_context, QueryLimits};
    use crate::error::QueryError;
    use crate::test_support::TestSource;

    fn limits() -> QueryLimits {
        QueryLimits {
            memory_limit_bytes: 256 << 20,
            ..QueryLimits::default()
        }
    }

    #[test]
    fn the_cap_follows_the_memory_limit_and_the_batch_size() {
        assert_eq!(
            LimitConstants::for_limits(1 << 30, 8192).max_bytes,
            16 << 10
        );
        assert_eq!(LimitConstants::for_limits(1 << 30, 0).max_bytes, 128 << 20);
        assert_eq!(
            LimitConstants::for_limits(1 << 20, 8192).max_bytes,
            MIN_CONSTANT_BYTES
        );
    }

    /// Each would copy a constant of 4 MB (or 1 MB) into every row of a batch; the folded functions
    /// themselves pass the pool (256 MiB), so only the cap on the constant refuses them.
    #[tokio::test]
    async fn large_computed_constants_are_refused_before_they_run() {
        let dir = tempfile::tempdir().unwrap();
        let limits = limits();
        let source = TestSource::with_hours(dir.path(), &[(0, 4)], 3);
        let ctx = session_context(Arc::new(source), limits.clone()).expect("context");
        for sql in [
            "SELECT length(kind || repeat('x', 4000000)) FROM events",
            "SELECT count(*) FROM events WHERE prompt_text = lpad('a', 1000000, 'b')",
            "SELECT length(k) FROM (SELECT kind || repeat('y', 4000000) AS k FROM events) WHERE k <> ''",
            "SELECT count(*) FROM events WHERE EXISTS (SELECT 1 WHERE repeat('z', 4000000) <> kind)",
            "SELECT * FROM (VALUES (repeat('v', 4000000))) AS t(v)",
        ] {
            match run_query(&ctx, sql, &limits).await {
                // The constant, or (when folding refused to build it) the value at run time.
                Err(QueryError::ResourcesExhausted(message)) => assert!(
                    message.contains("a constant of") || message.contains("built a value of"),
                    "{sql}: {message}"
                ),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn ordinary_constants_and_large_values_from_rows_are_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let limits = limits();
        let source = TestSource::with_hours(dir.path(), &[(0, 4)], 3);
        let ctx = session_context(Arc::new(source), limits.clone()).expect("context");
        let batches = run_query(
            &ctx,
            "SELECT max(length(kind || repeat('x', 3000))) AS a, \
             max(length(repeat(kind, 1000))) AS b, count(*) FILTER (WHERE kind IN ('llm', 'tool')) AS c \
             FROM events",
            &limits,
        )
        .await
        .expect("ordinary constants run");
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        // Kinds are 3 to 11 bytes long: 3,003 or more, and 3,000 or more.
        assert!(text.contains("| 30"), "{text}");
        assert!(!text.contains("| 0 "), "{text}");
    }
}
