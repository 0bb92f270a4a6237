//! Prometheus metrics for the SQL interfaces, registered in the process-wide default registry.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

/// Queries finished, by interface (`cli`, `http`, `pg`) and outcome (`ok`, `refused`, `invalid`,
/// `too_complex`, `data`, `timeout`, `memory_limit`, `too_many_rows`, `too_many_bytes`, `busy`, `error`): all
/// but `busy` (too many at once, refused before running) and `error` are the client's to fix
/// (`QueryError::outcome`).
pub static QUERIES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "vigil_sql_queries_total",
            "SQL queries finished, by interface and outcome",
        ),
        &["interface", "outcome"],
    ))
});

/// Statements the read-only guard refused, by interface: a rising count means someone probes the endpoint.
pub static REFUSED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "vigil_sql_refused_total",
            "SQL statements refused by the read-only guard",
        ),
        &["interface"],
    ))
});

/// pg queries dropped at their statement timeout while their rows went unread (a client that stopped
/// reading, or a portal left suspended): each is also counted as a `timeout` in `vigil_sql_queries_total`.
pub static PG_RESULTS_RELEASED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new(
        "vigil_sql_pg_results_released_total",
        "pg queries released at their statement timeout with their results unread",
    ))
});

/// Wall time of queries (planning plus execution), by interface.
pub static QUERY_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(HistogramVec::new(
        HistogramOpts::new(
            "vigil_sql_query_seconds",
            "SQL query wall time, planning plus execution",
        )
        .buckets(vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]),
        &["interface"],
    ))
});

fn register<C: prometheus::core::Collector + Clone + 'static>(metric: prometheus::Result<C>) -> C {
    // The names and labels are constants, so construction cannot fail; registration fails only if another
    // copy registered the same name, in which case the unregistered collector still counts correctly.
    let metric = metric.expect("metric definitions are valid");
    let _ = prometheus::default_registry().register(Box::new(metric.clone()));
    metric
}

/// Counts a query refused before it ran (too many at once): its wait is no query's latency.
pub fn record_unrun(interface: &str, outcome: &str) {
    QUERIES_TOTAL.with_label_values(&[interface, outcome]).inc();
}

/// Records one finished query.
pub fn record(interface: &str, outcome: &str, seconds: f64) {
    QUERIES_TOTAL.with_label_values(&[interface, outcome]).inc();
    if outcome == "refused" {
        REFUSED_TOTAL.with_label_values(&[interface]).inc();
    }
    QUERY_SECONDS
        .with_label_values(&[interface])
        .observe(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_count_in_both_counters() {
        let before_q = QUERIES_TOTAL
            .with_label_values(&["test_iface", "refused"])
            .get();
        let before_r = REFUSED_TOTAL.with_label_values(&["test_iface"]).get();
        record("test_iface", "refused", 0.001);
        assert_eq!(
            QUERIES_TOTAL
                .with_label_values(&["test_iface", "refused"])
                .get(),
            before_q + 1
        );
        assert_eq!(
            REFUSED_TOTAL.with_label_values(&["test_iface"]).get(),
            before_r + 1
        );
        let families = prometheus::default_registry().gather();
        assert!(families
            .iter()
            .any(|f| f.name() == "vigil_sql_query_seconds"));
    }
}
