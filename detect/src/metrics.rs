//! Detection metrics in the process-wide Prometheus registry, and an HDR histogram of batch latency the
//! binary can read without scraping itself.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

pub struct Metrics {
    pub alerts: IntCounterVec,
    pub events: IntCounter,
    pub batch_seconds: Histogram,
    /// Events of an entity that got no baseline because `max_entities` of its kind were tracked.
    pub untracked: IntCounterVec,
    /// Entities dropped past `max_entities`, least recently seen first.
    pub evicted: IntCounterVec,
    /// Alerts folded into a summary because their detector's budget for the window was spent.
    pub suppressed: IntCounterVec,
    pub repeated: IntCounterVec,
    /// Tool calls dropped while waiting for their agent's span (`awaiting`), never judged.
    pub unjudged: IntCounter,
}

/// Registered once per process (several stages in one test process share them).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let alerts = IntCounterVec::new(
            Opts::new("vigil_alerts_total", "Alerts raised by the detection stage"),
            &["detector", "severity"],
        )
        .expect("valid metric");
        let events = IntCounter::new(
            "vigil_detect_events_total",
            "Events through the detection stage",
        )
        .expect("valid metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "vigil_detect_batch_seconds",
                "Time to process one batch in the detection stage",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        let untracked = IntCounterVec::new(
            Opts::new(
                "vigil_detect_untracked_total",
                "Events of an entity left without a baseline because max_entities of its kind were tracked",
            ),
            &["entity"],
        )
        .expect("valid metric");
        let evicted = IntCounterVec::new(
            Opts::new(
                "vigil_detect_evicted_total",
                "Entities whose baseline or drift track was dropped past max_entities, least recently seen first",
            ),
            &["entity"],
        )
        .expect("valid metric");
        let suppressed = IntCounterVec::new(
            Opts::new(
                "vigil_detect_alerts_suppressed_total",
                "Alerts folded into one summary alert because the detector's budget for the window was spent",
            ),
            &["detector"],
        )
        .expect("valid metric");
        let repeated = IntCounterVec::new(
            Opts::new(
                "vigil_detect_findings_repeated_total",
                "Findings not alerted again: in the part of a conversation's prompt that an earlier call sent and had scanned",
            ),
            &["detector"],
        )
        .expect("valid metric");
        let unjudged = IntCounter::new(
            "vigil_detect_calls_unjudged_total",
            "Tool calls without an agent dropped, past the age or count limit, before their agent's span arrived",
        )
        .expect("valid metric");
        let r = prometheus::default_registry();
        for c in [
            Box::new(alerts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(untracked.clone()),
            Box::new(evicted.clone()),
            Box::new(suppressed.clone()),
            Box::new(repeated.clone()),
            Box::new(unjudged.clone()),
        ] {
            if let Err(e) = r.register(c) {
                tracing::warn!(error = %e, "detection metric not registered");
            }
        }
        Metrics {
            alerts,
            events,
            batch_seconds,
            untracked,
            evicted,
            suppressed,
            repeated,
            unjudged,
        }
    })
}
