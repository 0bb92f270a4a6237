//! Per-entity behavioural baselines: event-time windows, their features fed into the estimators at window
//! close, spike thresholds derived at window open, and the `baselines` table (persist and restore).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use foldhash::HashMap;

use crate::behavior::WindowSummary;
use crate::config::Thresholds;
use crate::estimators::{hour_of_week, FeatureStats, Seasonal};

/// Entities with baselines. The discriminant indexes the stage's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    User = 0,
    Agent = 1,
    Model = 2,
    Endpoint = 3,
}

impl Entity {
    pub const ALL: [Entity; 4] = [Entity::User, Entity::Agent, Entity::Model, Entity::Endpoint];
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::User => "user",
            Entity::Agent => "agent",
            Entity::Model => "model",
            Entity::Endpoint => "endpoint",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Features per window, in `FEATURES` order.
pub const FEATURES: [&str; 9] = [
    "request_rate",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "latency_ms",
    "error_rate",
    "deny_rate",
    "distinct_tools",
    "distinct_data_sources",
];
const RATE: usize = 0;
const TOKENS: usize = 3;
/// MAD floors per feature, in the feature's unit.
const MAD_FLOOR: [f64; 9] = [1.0, 100.0, 100.0, 200.0, 10.0, 0.02, 0.02, 0.5, 0.5];

/// Counts of the open window.
#[derive(Debug, Clone, Default)]
pub struct WindowAcc {
    pub requests: u64,
    pub input_tokens: f64,
    pub output_tokens: f64,
    pub latency_sum: f64,
    pub latency_n: u64,
    pub errors: u64,
    pub denies: u64,
    /// xxh3 of tool names / data sources seen in the window (no string copies).
    pub tools: Vec<u64>,
    pub data_sources: Vec<u64>,
    /// Evidence for window-level alerts (one allocation per entity and window).
    pub first_event_id: Option<String>,
}

impl WindowAcc {
    pub fn summary(&self) -> WindowSummary {
        WindowSummary {
            requests: self.requests as f64,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            latency_mean: if self.latency_n > 0 {
                self.latency_sum / self.latency_n as f64
            } else {
                0.0
            },
            errors: self.errors as f64,
            denies: self.denies as f64,
            distinct_tools: self.tools.len() as f64,
            distinct_data_sources: self.data_sources.len() as f64,
        }
    }
    fn values(&self) -> [f64; 9] {
        let s = self.summary();
        let total = (self.requests + self.denies).max(1) as f64;
        [
            s.requests,
            s.input_tokens,
            s.output_tokens,
            s.input_tokens + s.output_tokens,
            s.latency_mean,
            s.errors / (s.requests.max(1.0)),
            s.denies / total,
            s.distinct_tools,
            s.distinct_data_sources,
        ]
    }
}

pub fn add_distinct(set: &mut Vec<u64>, value: &str) {
    let h = xxhash_rust::xxh3::xxh3_64(value.as_bytes());
    if !set.contains(&h) && set.len() < 256 {
        set.push(h);
    }
}

/// What closing a window produced.
pub struct ClosedWindow {
    pub start_us: i64,
    pub summary: WindowSummary,
    /// A spike already fired in this window (such windows stay out of behaviour training).
    pub spiked: bool,
    /// The entity was past warm-up when the window closed.
    pub warm: bool,
    pub first_event_id: Option<String>,
}

/// A count's spike in the open window (requests, tokens): when it alarms, and the episode it belongs to.
#[derive(Debug, Clone, Default)]
pub struct Spike {
    /// The count at which the open window is a spike (infinite before warm-up).
    pub alarm: f64,
    /// The open window crossed `alarm`.
    pub fired: bool,
    /// The level the spike episode under way has reached: 0 outside one. A spike that runs on into the
    /// next window is the same episode and alerts again only once it grows past `spike_min_ratio` times
    /// this (so "just over the alarm, then a thousand times more" is seen).
    pub peak: f64,
    /// An alert was raised in the open window: one per window at most.
    pub alerted: bool,
    /// End and peak of the last closed window that crossed the alarm.
    last: Option<(i64, f64)>,
}

impl Spike {
    /// The open window's count is now `value`: `Some(grew)` when that is an alert, `grew` telling a spike
    /// already under way that grew again from a new one.
    pub fn observe(&mut self, value: f64, growth: f64) -> Option<bool> {
        if value < self.alarm {
            return None;
        }
        self.fired = true;
        if self.alerted || value <= self.peak || value < self.peak * growth {
            return None;
        }
        self.alerted = true;
        Some(self.peak > 0.0)
    }

    /// Whether the window starting at `start` follows one that spiked.
    fn continues(&self, start: i64) -> bool {
        self.last.is_some_and(|(end, _)| end == start)
    }

    fn close(&mut self, end: i64, value: f64) {
        self.last = self.fired.then(|| (end, self.peak.max(value)));
    }

    /// A new window from `start`: the episode's peak carries over only from the window just before.
    fn open(&mut self, start: i64) {
        self.fired = false;
        self.alerted = false;
        self.peak = match self.last {
            Some((end, peak)) if end == start => peak,
            _ => 0.0,
        };
    }
}

/// One entity's baseline and its open window.
#[derive(Debug, Clone, Default)]
pub struct EntityBaseline {
    pub features: [FeatureStats; 9],
    pub seasonal_rate: Seasonal,
    /// Start of the open window; `None` when idle.
    pub window_start: Option<i64>,
    /// Latest event time seen (0 after a restore), for dropping the least recently seen past the cap.
    pub last_seen_us: i64,
    pub acc: WindowAcc,
    /// The request-rate and token spikes of the open window.
    pub rate: Spike,
    pub tokens: Spike,
    /// Consecutive windows that crossed an alarm, and their feature values (start, values). A spike that
    /// lasts `warmup_windows` is a new level, not a spike: those windows become the baseline, so the alarm
    /// follows the entity instead of firing every window for ever.
    spike_streak: u64,
    spike_values: Vec<(i64, [f64; 9])>,
    /// End and distance of the last closed window the behaviour model found unusual: the window right
    /// after it, if unusual too, is the same episode and alerts again only if it is much farther out.
    pub anomaly: Option<(i64, f64)>,
    /// Recent denial times for the burst detector.
    pub denies: VecDeque<i64>,
    pub burst_firing: bool,
}

impl EntityBaseline {
    pub fn is_warm(&self, th: &Thresholds) -> bool {
        self.features[RATE].samples >= th.warmup_windows
    }

    /// Moves the window to the one containing `time_us`, closing the open one if it ended.
    pub fn advance(&mut self, time_us: i64, th: &Thresholds) -> Option<ClosedWindow> {
        let w = window_us(th);
        let start = time_us.div_euclid(w) * w;
        match self.window_start {
            // Late events count in the open window.
            Some(open) if start <= open => None,
            Some(_) => {
                let closed = self.close(th);
                self.open(start, th);
                closed
            }
            None => {
                self.open(start, th);
                None
            }
        }
    }

    /// Closes the open window (feeds the estimators) without opening the next (idle entity).
    pub fn close(&mut self, th: &Thresholds) -> Option<ClosedWindow> {
        let start = self.window_start.take()?;
        let acc = std::mem::take(&mut self.acc);
        let end = start + window_us(th);
        let warm = self.is_warm(th);
        let spiked = self.rate.fired || self.tokens.fired;
        let continues = self.rate.continues(start) || self.tokens.continues(start);
        self.rate.close(end, acc.requests as f64);
        self.tokens.close(end, acc.input_tokens + acc.output_tokens);
        let values = acc.values();
        if !spiked {
            self.spike_streak = 0;
            self.spike_values.clear();
            for (f, x) in self.features.iter_mut().zip(values) {
                f.update(x, th.ewma_lambda, th.ring_size, end);
            }
            self.seasonal_rate
                .update(hour_of_week(start), values[RATE], th.ewma_lambda);
        } else {
            // A window that spiked would poison the baseline it is judged against, unless the spike lasts.
            if !continues {
                self.spike_streak = 0;
                self.spike_values.clear();
            }
            self.spike_streak += 1;
            self.spike_values.push((start, values));
            if self.spike_streak >= th.warmup_windows.max(1) {
                self.spike_streak = 0;
                let shifted = std::mem::take(&mut self.spike_values);
                for (fi, f) in self.features.iter_mut().enumerate() {
                    f.rebase(
                        shifted.iter().map(|(_, v)| v[fi]),
                        th.ewma_lambda,
                        th.ring_size,
                        end,
                    );
                }
                for (s, v) in &shifted {
                    self.seasonal_rate
                        .update(hour_of_week(*s), v[RATE], th.ewma_lambda);
                }
                tracing::debug!(
                    windows = shifted.len(),
                    "a lasting spike became the baseline"
                );
            }
        }
        let mut reuse = acc;
        let first_event_id = reuse.first_event_id.take();
        let summary = reuse.summary();
        reuse.tools.clear();
        reuse.data_sources.clear();
        self.acc = WindowAcc {
            tools: reuse.tools,
            data_sources: reuse.data_sources,
            ..Default::default()
        };
        Some(ClosedWindow {
            start_us: start,
            summary,
            spiked,
            warm,
            first_event_id,
        })
    }

    fn open(&mut self, start: i64, th: &Thresholds) {
        self.window_start = Some(start);
        self.rate.open(start);
        self.tokens.open(start);
        if !self.is_warm(th) {
            self.rate.alarm = f64::INFINITY;
            self.tokens.alarm = f64::INFINITY;
            return;
        }
        let seasonal = self.seasonal_rate.expected(hour_of_week(start), 2);
        self.rate.alarm = alarm(
            &self.features[RATE],
            seasonal,
            MAD_FLOOR[RATE],
            th.rate_min_excess,
            th,
        );
        self.tokens.alarm = alarm(
            &self.features[TOKENS],
            None,
            MAD_FLOOR[TOKENS],
            th.token_min_excess,
            th,
        );
    }

    /// The spike of feature [`RATE_FEATURE`] or [`TOKEN_FEATURE`].
    pub fn spike_mut(&mut self, feature: usize) -> &mut Spike {
        debug_assert!(
            feature == RATE || feature == TOKENS,
            "no spike for feature {feature}"
        );
        if feature == TOKENS {
            &mut self.tokens
        } else {
            &mut self.rate
        }
    }

    /// Robust z of the open window's value of a feature against the baseline.
    pub fn z(&self, feature: usize, x: f64) -> f64 {
        let f = &self.features[feature];
        crate::estimators::robust_z(
            x,
            f.median,
            f.mad.max(0.05 * f.median.abs()),
            MAD_FLOOR[feature],
        )
    }
}

/// The level at which a window count is a spike: above the robust-z limit, a multiple of the baseline, and
/// an absolute excess, whichever is highest (so that quiet, flat entities do not page on small wiggles).
fn alarm(
    f: &FeatureStats,
    seasonal: Option<f64>,
    floor: f64,
    min_excess: f64,
    th: &Thresholds,
) -> f64 {
    let center = seasonal.map_or(f.median, |s| s.max(f.median));
    let mad = f.mad.max(0.05 * center.abs()).max(floor);
    let z_level = center + th.z_threshold * mad / 0.6745;
    z_level
        .max(center * th.spike_min_ratio)
        .max(center + min_excess)
}

pub fn window_us(th: &Thresholds) -> i64 {
    (th.window.as_micros() as i64).max(1_000_000)
}

pub const RATE_FEATURE: usize = RATE;
pub const TOKEN_FEATURE: usize = TOKENS;

/// The `baselines` table: one row per (entity, feature).
pub fn baseline_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("entity_type", DataType::Utf8, false),
                Field::new("entity_id", DataType::Utf8, false),
                Field::new("feature", DataType::Utf8, false),
                Field::new("ewma", DataType::Float64, false),
                Field::new("ewma_var", DataType::Float64, false),
                Field::new("median", DataType::Float64, false),
                Field::new("mad", DataType::Float64, false),
                Field::new("samples", DataType::Int64, false),
                // JSON {"mean":[168],"n":[168]} on request_rate rows, null elsewhere.
                Field::new("hour_of_week", DataType::Utf8, true),
                // JSON array of the recent window values behind median/MAD (so a restart keeps them).
                Field::new("recent", DataType::Utf8, false),
                Field::new(
                    "updated_at",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
            ]))
        })
        .clone()
}

/// Rows for every entity with at least one closed window.
pub fn to_batch(maps: &[HashMap<String, EntityBaseline>; 4]) -> RecordBatch {
    let mut rows: Vec<(Entity, &String, &EntityBaseline)> = Vec::new();
    for e in Entity::ALL {
        let mut v: Vec<_> = maps[e as usize]
            .iter()
            .filter(|(_, b)| b.features[RATE].samples > 0)
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        rows.extend(v.into_iter().map(|(id, b)| (e, id, b)));
    }
    let n = rows.len() * FEATURES.len();
    let mut et = StringBuilder::with_capacity(n, n * 8);
    let mut id = StringBuilder::with_capacity(n, n * 16);
    let mut feat = StringBuilder::with_capacity(n, n * 12);
    let mut f64s: Vec<Float64Builder> = (0..4).map(|_| Float64Builder::with_capacity(n)).collect();
    let mut samples = Int64Builder::with_capacity(n);
    let mut how = StringBuilder::with_capacity(n, rows.len() * 2048);
    let mut recent = StringBuilder::with_capacity(n, n * 256);
    let mut updated = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for (e, eid, b) in rows {
        for (fi, f) in b.features.iter().enumerate() {
            et.append_value(e.as_str());
            id.append_value(eid);
            feat.append_value(FEATURES[fi]);
            for (builder, v) in f64s.iter_mut().zip([f.ewma, f.ewma_var, f.median, f.mad]) {
                builder.append_value(v);
            }
            samples.append_value(f.samples as i64);
            if fi == RATE {
                how.append_value(serde_json::to_string(&b.seasonal_rate).unwrap_or_default());
            } else {
                how.append_null();
            }
            let r: Vec<f64> = f.recent.iter().copied().collect();
            recent.append_value(serde_json::to_string(&r).unwrap_or_else(|_| "[]".into()));
            updated.append_value(f.updated_at);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(et.finish()),
        Arc::new(id.finish()),
        Arc::new(feat.finish()),
    ];
    cols.extend(f64s.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.push(Arc::new(samples.finish()));
    cols.push(Arc::new(how.finish()));
    cols.push(Arc::new(recent.finish()));
    cols.push(Arc::new(updated.finish()));
    RecordBatch::try_new(baseline_schema(), cols).expect("baseline columns match the schema")
}

/// Rebuilds baselines from `baselines` rows; returns the number of rows used. Rows that do not parse are
/// skipped with a warning: an old state file must not stop the stage.
pub fn restore(
    maps: &mut [HashMap<String, EntityBaseline>; 4],
    batch: &RecordBatch,
    th: &Thresholds,
) -> usize {
    let col = |n: &str| batch.column_by_name(n);
    let (
        Some(et),
        Some(id),
        Some(feat),
        Some(ewma),
        Some(var),
        Some(samples),
        Some(recent),
        Some(updated),
    ) = (
        col("entity_type").and_then(|c| c.as_string_opt::<i32>()),
        col("entity_id").and_then(|c| c.as_string_opt::<i32>()),
        col("feature").and_then(|c| c.as_string_opt::<i32>()),
        col("ewma").and_then(|c| c.as_primitive_opt::<Float64Type>()),
        col("ewma_var").and_then(|c| c.as_primitive_opt::<Float64Type>()),
        col("samples").and_then(|c| c.as_primitive_opt::<Int64Type>()),
        col("recent").and_then(|c| c.as_string_opt::<i32>()),
        col("updated_at").and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>()),
    )
    else {
        tracing::warn!("baselines state has an unexpected schema; ignored");
        return 0;
    };
    let how = col("hour_of_week").and_then(|c| c.as_string_opt::<i32>());
    let mut used = 0;
    for i in 0..batch.num_rows() {
        let Some(e) = Entity::parse(et.value(i)) else {
            continue;
        };
        let Some(fi) = FEATURES.iter().position(|f| *f == feat.value(i)) else {
            continue;
        };
        let Ok(values) = serde_json::from_str::<Vec<f64>>(recent.value(i)) else {
            tracing::warn!(entity = id.value(i), "unparsable baseline ring; skipped");
            continue;
        };
        let b = maps[e as usize].entry(id.value(i).to_string()).or_default();
        let f = &mut b.features[fi];
        f.ewma = ewma.value(i);
        f.ewma_var = var.value(i);
        f.samples = samples.value(i).max(0) as u64;
        f.recent = values
            .into_iter()
            .rev()
            .take(th.ring_size.max(1))
            .rev()
            .collect();
        f.updated_at = updated.value(i);
        f.refresh_robust();
        if fi == RATE {
            if let Some(s) = how
                .filter(|h| h.is_valid(i))
                .and_then(|h| serde_json::from_str::<Seasonal>(h.value(i)).ok())
            {
                if s.is_valid() {
                    b.seasonal_rate = s;
                }
            }
        }
        used += 1;
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th() -> Thresholds {
        Thresholds::default()
    }

    fn feed(b: &mut EntityBaseline, windows: i64, per_window: u64, th: &Thresholds) {
        let w = window_us(th);
        for k in 0..windows {
            b.advance(k * w, th);
            b.acc.requests += per_window;
            b.acc.input_tokens += per_window as f64 * 500.0;
        }
        b.advance(windows * w, th);
    }

    #[test]
    fn no_alarm_before_warm_up_then_a_robust_threshold() {
        let th = th();
        let mut b = EntityBaseline::default();
        feed(&mut b, 5, 10, &th);
        assert!(b.rate.alarm.is_infinite(), "warm-up not done");
        let mut b = EntityBaseline::default();
        feed(&mut b, 20, 10, &th);
        assert!(b.is_warm(&th));
        assert_eq!(b.features[RATE].median, 10.0);
        // max(center*3 = 30, center+50 = 60, z-level) = 60
        assert_eq!(b.rate.alarm, 60.0);
        assert!(b.tokens.alarm >= 5000.0 + 50_000.0);
    }

    #[test]
    fn a_spike_alerts_once_a_window_and_again_only_when_its_episode_grows() {
        let mut s = Spike {
            alarm: 10.0,
            ..Default::default()
        };
        assert_eq!(s.observe(9.0, 2.0), None);
        assert!(!s.fired);
        assert_eq!(s.observe(12.0, 2.0), Some(false), "a new spike");
        assert_eq!(s.observe(50.0, 2.0), None, "one alert a window");
        s.close(60, 50.0);
        // The next window continues the episode: it alerts only past twice the peak it reached.
        s.open(60);
        assert!(s.continues(60));
        assert_eq!(s.observe(90.0, 2.0), None);
        assert!(s.fired);
        assert_eq!(s.observe(101.0, 2.0), Some(true), "the spike grew again");
        s.close(120, 101.0);
        // After a window without a spike, the episode is over.
        s.open(180);
        assert!(!s.continues(180));
        assert_eq!(s.observe(12.0, 2.0), Some(false));
    }

    #[test]
    fn spiked_windows_do_not_feed_the_baseline() {
        let th = th();
        let mut b = EntityBaseline::default();
        feed(&mut b, 20, 10, &th);
        let before = b.features[RATE].clone();
        b.acc.requests = 500;
        b.rate.fired = true;
        let closed = b.close(&th).unwrap();
        assert!(closed.spiked && closed.warm);
        assert_eq!(b.features[RATE], before);
    }

    #[test]
    fn baselines_survive_a_restart() {
        let th = th();
        let mut maps: [HashMap<String, EntityBaseline>; 4] = Default::default();
        feed(maps[0].entry("alice".into()).or_default(), 30, 12, &th);
        let batch = to_batch(&maps);
        assert_eq!(batch.num_rows(), FEATURES.len());
        let mut restored: [HashMap<String, EntityBaseline>; 4] = Default::default();
        assert_eq!(restore(&mut restored, &batch, &th), FEATURES.len());
        let (a, r) = (&maps[0]["alice"], &restored[0]["alice"]);
        for fi in 0..FEATURES.len() {
            assert_eq!(a.features[fi].median, r.features[fi].median);
            assert_eq!(a.features[fi].samples, r.features[fi].samples);
            assert_eq!(a.features[fi].ewma, r.features[fi].ewma);
        }
        assert_eq!(a.seasonal_rate, r.seasonal_rate);
        assert!(r.is_warm(&th), "no new warm-up after a restart");
    }
}
