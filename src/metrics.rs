//! The binary's own metrics and the `/metrics` rendering of the process-wide registry.
//!
//! Latency quantiles come from HdrHistograms (exact quantiles, bounded memory) and are exported as gauges,
//! because Prometheus histograms would force fixed buckets on latencies that span microseconds to seconds.

use std::sync::LazyLock;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prometheus::{
    register_gauge_vec, register_int_counter, Encoder, GaugeVec, IntCounter, TextEncoder,
};

pub static OVERLOAD_REFUSALS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "vigil_pipeline_overload_refusals_total",
        "Requests refused because the pipeline was full"
    )
    .expect("metric registers once")
});

static LATENCY: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "vigil_pipeline_latency_seconds",
        "Latency quantiles since start: ack (request received to durable) and event_to_alert",
        &["stage", "quantile"]
    )
    .expect("metric registers once")
});

struct Recorder {
    ack: Histogram<u64>,
    event_to_alert: Histogram<u64>,
}

static RECORDER: LazyLock<Mutex<Recorder>> = LazyLock::new(|| {
    let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    Mutex::new(Recorder {
        ack: h(),
        event_to_alert: h(),
    })
});

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

pub fn record_ack(d: Duration) {
    let _ = RECORDER.lock().ack.record(micros(d));
}

pub fn record_event_to_alert(d: Duration) {
    let _ = RECORDER.lock().event_to_alert.record(micros(d));
}

/// (p50, p99) in microseconds, for the benchmark and the summary line of the demo.
pub fn quantiles() -> [(&'static str, u64, u64); 2] {
    let r = RECORDER.lock();
    [
        (
            "ack",
            r.ack.value_at_quantile(0.5),
            r.ack.value_at_quantile(0.99),
        ),
        (
            "event_to_alert",
            r.event_to_alert.value_at_quantile(0.5),
            r.event_to_alert.value_at_quantile(0.99),
        ),
    ]
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> String {
    {
        let r = RECORDER.lock();
        for (stage, h) in [("ack", &r.ack), ("event_to_alert", &r.event_to_alert)] {
            for q in [0.5, 0.9, 0.99] {
                LATENCY
                    .with_label_values(&[stage, &q.to_string()])
                    .set(h.value_at_quantile(q) as f64 / 1e6);
            }
        }
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
