//! The binary's own metrics and the `/metrics` rendering of the process-wide registry.
//!
//! Latency quantiles come from HdrHistograms (exact quantiles, bounded memory) and are exported as gauges,
//! because Prometheus histograms would force fixed buckets on latencies that span microseconds to seconds.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

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
        "Latency quantiles over the last 1-2 minutes: ack (request admitted to durable), its parts decode \
         (admitted to normalised; ~0 for Kafka batches, decoded before admission), detect and store (WAL \
         append to fsynced), and event_to_alert (admitted to alert durable)",
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

/// How long a window of the exported quantiles lasts. They cover the current window and the one before
/// it (1-2 minutes), as a Prometheus summary's sliding window does: a slow minute shows on the dashboards
/// and then leaves them, where quantiles since start would hold it for the life of the process.
const WINDOW: Duration = Duration::from_secs(60);

type Stages = [Histogram<u64>; 5];

fn stages() -> Stages {
    let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    [h(), h(), h(), h(), h()]
}

/// Per stage: everything since start (the benchmark's figures) and the two latest windows.
struct Recorder {
    since_start: Stages,
    current: Stages,
    previous: Stages,
    window_started: Instant,
}

impl Recorder {
    fn new(now: Instant) -> Self {
        Recorder {
            since_start: stages(),
            current: stages(),
            previous: stages(),
            window_started: now,
        }
    }

    fn rotate(&mut self, now: Instant) {
        let windows =
            now.saturating_duration_since(self.window_started).as_secs() / WINDOW.as_secs();
        if windows == 0 {
            return;
        }
        if windows == 1 {
            std::mem::swap(&mut self.previous, &mut self.current);
        } else {
            self.previous.iter_mut().for_each(Histogram::reset);
        }
        self.current.iter_mut().for_each(Histogram::reset);
        self.window_started += WINDOW * windows as u32;
    }

    fn record(&mut self, stage: Stage, us: u64, now: Instant) {
        self.rotate(now);
        let _ = self.since_start[stage as usize].record(us);
        let _ = self.current[stage as usize].record(us);
    }

    /// The stage's last 1-2 minutes.
    fn recent(&mut self, stage: Stage, now: Instant) -> Histogram<u64> {
        self.rotate(now);
        let mut h = self.previous[stage as usize].clone();
        let _ = h.add(&self.current[stage as usize]);
        h
    }
}

static RECORDER: LazyLock<Mutex<Recorder>> =
    LazyLock::new(|| Mutex::new(Recorder::new(Instant::now())));

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

pub fn record(stage: Stage, d: Duration) {
    RECORDER.lock().record(stage, micros(d), Instant::now());
}

/// (p50, p99) in microseconds since start, for the benchmark and the summary line of the demo.
pub fn quantiles(stage: Stage) -> (u64, u64) {
    let r = RECORDER.lock();
    let h = &r.since_start[stage as usize];
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> String {
    {
        let mut r = RECORDER.lock();
        let now = Instant::now();
        for stage in Stage::ALL {
            let h = r.recent(stage, now);
            for q in [0.5, 0.9, 0.99] {
                // No requests lately: NaN (Grafana draws a gap), as Prometheus summaries export, not 0 s.
                let value = match h.len() {
                    0 => f64::NAN,
                    _ => h.value_at_quantile(q) as f64 / 1e6,
                };
                LATENCY
                    .with_label_values(&[stage.as_str(), &q.to_string()])
                    .set(value);
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

    /// A slow minute leaves the exported quantiles once two windows have passed; the since-start
    /// figures keep it.
    #[test]
    fn exported_quantiles_cover_the_last_two_windows() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        r.record(Stage::Ack, 900_000, t0);
        let p99 = |h: Histogram<u64>| h.value_at_quantile(0.99);
        assert!(
            p99(r.recent(Stage::Ack, t0 + WINDOW)) > 800_000,
            "still in the previous window"
        );
        r.record(Stage::Ack, 1_000, t0 + WINDOW);
        assert!(
            p99(r.recent(Stage::Ack, t0 + WINDOW * 2)) < 2_000,
            "the slow one left"
        );
        assert_eq!(
            p99(r.recent(Stage::Ack, t0 + WINDOW * 5)),
            0,
            "nothing recent"
        );
        assert!(r.since_start[Stage::Ack as usize].value_at_quantile(0.99) > 800_000);
    }

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
