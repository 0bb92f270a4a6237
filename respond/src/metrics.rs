//! Prometheus metrics for webhook delivery, in the process-wide default registry (served at `/metrics`).

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};

pub struct Metrics {
    /// Finished deliveries by outcome (`delivered`, `dead_letter`, `disabled`, `superseded`) and retries
    /// (`retry`).
    pub deliveries: IntCounterVec,
    pub attempts: IntCounterVec,
    pub pending: IntGaugeVec,
    pub latency: Histogram,
    /// Dead letters dropped beyond `dead_letter_limit`: alerts that will not be replayed.
    pub dead_letters_dropped: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // Already registered (a second Responder in one process, e.g. tests): keep counting in ours.
    let _ = prometheus::register(Box::new(c.clone()));
    c
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        deliveries: register(
            IntCounterVec::new(
                Opts::new(
                    "vigil_webhook_deliveries_total",
                    "Webhook delivery outcomes per destination",
                ),
                &["destination", "outcome"],
            )
            .expect("valid metric"),
        ),
        attempts: register(
            IntCounterVec::new(
                Opts::new(
                    "vigil_webhook_attempts_total",
                    "Webhook HTTP attempts per destination",
                ),
                &["destination"],
            )
            .expect("valid metric"),
        ),
        pending: register(
            IntGaugeVec::new(
                Opts::new(
                    "vigil_webhook_outbox_pending",
                    "Deliveries waiting in the outbox per destination",
                ),
                &["destination"],
            )
            .expect("valid metric"),
        ),
        dead_letters_dropped: register(
            IntCounterVec::new(
                Opts::new(
                    "vigil_webhook_dead_letters_dropped_total",
                    "Dead letters dropped, oldest first, beyond respond.delivery.dead_letter_limit",
                ),
                &["destination"],
            )
            .expect("valid metric"),
        ),
        latency: register(
            Histogram::with_opts(
                HistogramOpts::new(
                    "vigil_webhook_latency_seconds",
                    "Webhook HTTP attempt latency",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )
            .expect("valid metric"),
        ),
    })
}
