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
        "Latency quantiles since start: ack (request admitted to durable), its parts decode (admitted to \
         normalised; ~0 for Kafka batches, decoded before admission), detect and store (WAL append to \
         fsynced), and event_to_alert (admitted to alert durable)",
        &["stage", "quantile"]
    )
    .expect("metric registers once")
});

/// The stages a request's latency is recorded under: `Ack` is the whole; the next three are its parts, so a
/// slow acknowledgement can be traced to the stage that took the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Ack,
    Decode,
    Detect,
    Store,
    EventToAlert,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Ack,
        Stage::Decode,
        Stage::Detect,
        Stage::Store,
        Stage::EventToAlert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ack => "ack",
            Stage::Decode => "decode",
            Stage::Detect => "detect",
            Stage::Store => "store",
            Stage::EventToAlert => "event_to_alert",
        }
    }
}

static RECORDER: LazyLock<Mutex<[Histogram<u64>; 5]>> = LazyLock::new(|| {
    let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    Mutex::new([h(), h(), h(), h(), h()])
});

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

pub fn record(stage: Stage, d: Duration) {
    let _ = RECORDER.lock()[stage as usize].record(micros(d));
}

/// (p50, p99) in microseconds, for the benchmark and the summary line of the demo.
pub fn quantiles(stage: Stage) -> (u64, u64) {
    let r = RECORDER.lock();
    let h = &r[stage as usize];
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> String {
    {
        let r = RECORDER.lock();
        for stage in Stage::ALL {
            let h = &r[stage as usize];
            for q in [0.5, 0.9, 0.99] {
                LATENCY
                    .with_label_values(&[stage.as_str(), &q.to_string()])
                    .set(h.value_at_quantile(q) as f64 / 1e6);
            }
        }
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each stage keeps its own histogram and is exported under its own label, so a slow acknowledgement
    /// can be traced to decode, detection or the store.
    #[test]
    fn stages_are_recorded_apart_and_exported() {
        record(Stage::Decode, Duration::from_millis(7));
        record(Stage::Store, Duration::from_micros(300));
        let (decode_p50, _) = quantiles(Stage::Decode);
        let (store_p50, _) = quantiles(Stage::Store);
        assert!((6_900..=7_100).contains(&decode_p50), "{decode_p50}");
        assert!((290..=310).contains(&store_p50), "{store_p50}");
        let text = render();
        for stage in Stage::ALL {
            let label = format!("stage=\"{}\"", stage.as_str());
            assert!(
                text.lines()
                    .any(|l| l.starts_with("vigil_pipeline_latency_seconds") && l.contains(&label)),
                "no {label} in /metrics"
            );
        }
    }
}
