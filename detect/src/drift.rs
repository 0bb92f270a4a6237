//! Distribution drift per model and per endpoint: a reference window against the current window.
//! Categorical features (finish reasons, which include refusals and tool calls) use PSI and the
//! Jensen-Shannon distance; numeric ones (output tokens, latency) the Wasserstein-1 distance normalised by
//! the reference standard deviation. Defaults follow Evidently (reference.md section 3).

use std::collections::VecDeque;

use foldhash::HashMap;

/// Probability given to an empty bin so that logarithms stay finite.
const EPSILON: f64 = 0.0001;

/// Population stability index between two count vectors over the same categories.
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    let (r, c) = (normalise(reference), normalise(current));
    r.iter()
        .zip(&c)
        .map(|(&p, &q)| (q - p) * (q / p).ln())
        .sum()
}

/// Jensen-Shannon distance (square root of the divergence, base 2, so in 0..1).
pub fn js_distance(reference: &[f64], current: &[f64]) -> f64 {
    let (r, c) = (normalise(reference), normalise(current));
    let kl =
        |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(&x, &y)| x * (x / y).log2()).sum() };
    let m: Vec<f64> = r.iter().zip(&c).map(|(a, b)| (a + b) / 2.0).collect();
    (0.5 * kl(&r, &m) + 0.5 * kl(&c, &m)).max(0.0).sqrt()
}

fn normalise(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .map(|&x| {
            if total > 0.0 {
                (x / total).max(EPSILON)
            } else {
                EPSILON
            }
        })
        .collect()
}

/// Wasserstein-1 distance between two samples divided by the reference's standard deviation.
/// Both slices are sorted in place.
///
/// Values beyond ten interquartile ranges outside the reference's quartiles are taken at that fence: one
/// telemetry value of 9e18 tokens or 1e300 ms would otherwise blow up the reference's deviation and hide
/// every real shift for a whole reference window (or, in the current window, fake one). Real shifts stay
/// well inside the fences.
pub fn wasserstein_normalised(reference: &mut [f64], current: &mut [f64]) -> f64 {
    if reference.is_empty() || current.is_empty() {
        return 0.0;
    }
    reference.sort_by(|a, b| a.total_cmp(b));
    current.sort_by(|a, b| a.total_cmp(b));
    let (lo, hi) = fences(reference);
    let fenced = |x: f64| if x.is_nan() { hi } else { x.clamp(lo, hi) };
    let n = reference.len() as f64;
    let mean = reference.iter().map(|&x| fenced(x)).sum::<f64>() / n;
    let std = (reference
        .iter()
        .map(|&x| (fenced(x) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    // Integrate |F_r - F_c| over the merged support. Fencing keeps both samples sorted.
    let (mut i, mut j) = (0usize, 0usize);
    let (nr, nc) = (reference.len(), current.len());
    let mut prev = fenced(reference[0]).min(fenced(current[0]));
    let mut area = 0.0;
    while i < nr || j < nc {
        let next = match (reference.get(i), current.get(j)) {
            (Some(&a), Some(&b)) => fenced(a).min(fenced(b)),
            (Some(&a), None) => fenced(a),
            (None, Some(&b)) => fenced(b),
            (None, None) => break,
        };
        area += (i as f64 / nr as f64 - j as f64 / nc as f64).abs() * (next - prev);
        prev = next;
        while i < nr && fenced(reference[i]) <= next {
            i += 1;
        }
        while j < nc && fenced(current[j]) <= next {
            j += 1;
        }
    }
    area / std.max(1e-9)
}

/// `[q1 - 10 IQR, q3 + 10 IQR]` of a sorted sample; with no spread, ten times the median's size around it.
fn fences(sorted: &[f64]) -> (f64, f64) {
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (q1, median, q3) = (at(0.25), at(0.5), at(0.75));
    let width = if q3 - q1 > 0.0 && (q3 - q1).is_finite() {
        10.0 * (q3 - q1)
    } else {
        10.0 * median.abs().max(1.0)
    };
    (q1 - width, q3 + width)
}

/// Two-sample Kolmogorov-Smirnov: the statistic D and its asymptotic p-value. Both slices must be sorted.
pub fn ks_test(reference: &[f64], current: &[f64]) -> (f64, f64) {
    let (nr, nc) = (reference.len(), current.len());
    if nr == 0 || nc == 0 {
        return (0.0, 1.0);
    }
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < nr && j < nc {
        let x = reference[i].min(current[j]);
        while i < nr && reference[i] <= x {
            i += 1;
        }
        while j < nc && current[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / nr as f64 - j as f64 / nc as f64).abs());
    }
    let en = ((nr * nc) as f64 / (nr + nc) as f64).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    if lambda < 0.3 {
        // The series converges badly near 0, where the tail probability is 1 to 5 decimals.
        return (d, 1.0);
    }
    // Kolmogorov distribution tail: 2 sum (-1)^(k-1) exp(-2 k^2 lambda^2).
    let mut p = 0.0;
    for k in 1..=100 {
        let term = 2.0 * (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        p += if k % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (d, p.clamp(0.0, 1.0))
}

/// One observation kept for drift.
#[derive(Debug, Clone, Copy)]
struct Sample {
    time_us: i64,
    category: u32,
    output_tokens: f64,
    latency_ms: f64,
}

/// Samples of one model or endpoint over reference + current windows, and the swap tracker.
#[derive(Debug, Default)]
pub struct DriftTrack {
    samples: VecDeque<Sample>,
    /// Every `response_model` this model has answered as, and the events counted (swap detection).
    pub response_models: Vec<String>,
    pub events: u64,
    /// Features currently in the drifted state (to alert once per episode, not on every tick).
    pub firing: HashMap<&'static str, bool>,
}

/// Interns category strings (finish reasons) to small ids shared across all tracks.
#[derive(Debug, Default)]
pub struct Categories {
    ids: HashMap<String, u32>,
}

/// Distinct finish reasons kept apart; later ones share one category. Every drift evaluation allocates per
/// category and track, and the values come from telemetry.
pub const MAX_CATEGORIES: usize = 256;

impl Categories {
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        if self.ids.len() >= MAX_CATEGORIES - 1 {
            return self.other();
        }
        let id = self.ids.len() as u32;
        self.ids.insert(s.to_string(), id);
        id
    }

    fn other(&mut self) -> u32 {
        const OTHER: &str = "\u{0}other";
        if let Some(&id) = self.ids.get(OTHER) {
            return id;
        }
        let id = self.ids.len() as u32;
        self.ids.insert(OTHER.to_string(), id);
        id
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Drift of one feature in one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftMeasure {
    pub feature: &'static str,
    pub metric: &'static str,
    pub value: f64,
    pub threshold: f64,
}

/// Thresholds and windows for [`DriftTrack::evaluate`].
#[derive(Debug, Clone, Copy)]
pub struct DriftLimits {
    pub reference_us: i64,
    pub current_us: i64,
    pub min_reference: usize,
    pub min_current: usize,
    pub psi: f64,
    pub js: f64,
    pub wasserstein: f64,
    /// A numeric drift must also be significant (KS p-value below this): with a few hundred samples the
    /// Wasserstein distance alone wanders past 0.1 by chance.
    pub ks_p: f64,
    /// Bound on stored samples per track (memory cap; oldest dropped first).
    pub max_samples: usize,
}

impl DriftTrack {
    /// Records the model that answered; `true` when it is a new version after `min_events` events with
    /// others (a silent model swap), `false` for the first sighting and for known versions.
    /// The latest sample's event time (0 with none), for dropping the least recently seen track.
    pub fn last_seen_us(&self) -> i64 {
        self.samples.back().map_or(0, |s| s.time_us)
    }

    pub fn observe_response_model(&mut self, response_model: &str, min_events: u64) -> bool {
        self.events += 1;
        if self.response_models.iter().any(|m| m == response_model) {
            return false;
        }
        let swap = !self.response_models.is_empty() && self.events > min_events;
        // Remembered either way, the oldest making room: a model that went through 64 versions over the
        // months must not raise an alert on every later event of the 65th.
        if self.response_models.len() >= 64 {
            self.response_models.remove(0);
        }
        self.response_models.push(response_model.to_string());
        swap
    }

    /// Samples kept (for tests and diagnostics).
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    pub fn push(
        &mut self,
        time_us: i64,
        category: u32,
        output_tokens: f64,
        latency_ms: f64,
        max: usize,
    ) {
        self.samples.push_back(Sample {
            time_us,
            category,
            output_tokens,
            latency_ms,
        });
        while self.samples.len() > max {
            self.samples.pop_front();
        }
    }

    /// Measures every feature; returns the ones over their threshold. `None` when there is not enough data.
    pub fn evaluate(
        &mut self,
        now_us: i64,
        n_categories: usize,
        lim: &DriftLimits,
    ) -> Option<Vec<DriftMeasure>> {
        let cur_start = now_us - lim.current_us;
        let ref_start = cur_start - lim.reference_us;
        while self.samples.front().is_some_and(|s| s.time_us < ref_start) {
            self.samples.pop_front();
        }
        let (mut rc, mut cc) = (
            vec![0.0; n_categories.max(1)],
            vec![0.0; n_categories.max(1)],
        );
        let (mut r_out, mut c_out, mut r_lat, mut c_lat) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in &self.samples {
            if s.time_us > now_us {
                continue;
            }
            let current = s.time_us >= cur_start;
            let (counts, out, lat) = if current {
                (&mut cc, &mut c_out, &mut c_lat)
            } else {
                (&mut rc, &mut r_out, &mut r_lat)
            };
            if let Some(c) = counts.get_mut(s.category as usize) {
                *c += 1.0;
            }
            if s.output_tokens.is_finite() {
                out.push(s.output_tokens);
            }
            if s.latency_ms.is_finite() {
                lat.push(s.latency_ms);
            }
        }
        let (nr, nc) = (
            rc.iter().sum::<f64>() as usize,
            cc.iter().sum::<f64>() as usize,
        );
        if nr < lim.min_reference || nc < lim.min_current {
            return None;
        }
        let mut out = Vec::new();
        let mut check = |feature, metric, value: f64, threshold| {
            if value >= threshold {
                out.push(DriftMeasure {
                    feature,
                    metric,
                    value,
                    threshold,
                });
            }
        };
        check("finish_reasons", "psi", psi(&rc, &cc), lim.psi);
        check(
            "finish_reasons",
            "jensen_shannon",
            js_distance(&rc, &cc),
            lim.js,
        );
        for (feature, r, c) in [
            ("output_tokens", &mut r_out, &mut c_out),
            ("latency_ms", &mut r_lat, &mut c_lat),
        ] {
            if r.len() >= lim.min_reference && c.len() >= lim.min_current {
                let w = wasserstein_normalised(r, c);
                if ks_test(r, c).1 < lim.ks_p {
                    check(feature, "wasserstein", w, lim.wasserstein);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_past_the_cap_share_one_category() {
        let mut c = Categories::default();
        let ids: Vec<u32> = (0..1000).map(|i| c.id(&format!("reason-{i}"))).collect();
        assert_eq!(c.len(), MAX_CATEGORIES);
        assert_eq!(ids[MAX_CATEGORIES + 10], ids[999]);
        assert_eq!(c.id("reason-3"), 3, "the early ones keep theirs");
    }

    #[test]
    fn a_model_past_its_sixty_fourth_version_alerts_once_per_new_version() {
        let mut track = DriftTrack::default();
        for v in 0..64 {
            track.observe_response_model(&format!("m-v{v}"), 0);
        }
        assert!(
            track.observe_response_model("m-v64", 0),
            "a new version is a swap"
        );
        assert!(
            !track.observe_response_model("m-v64", 0),
            "and known from then on"
        );
        assert!(!track.observe_response_model("m-v63", 0));
        assert_eq!(track.response_models.len(), 64);
    }

    #[test]
    fn psi_and_js_are_zero_for_equal_distributions_and_grow_with_shift() {
        let a = [800.0, 150.0, 50.0];
        assert!(psi(&a, &a).abs() < 1e-12);
        assert!(js_distance(&a, &a) < 1e-9);
        let b = [400.0, 100.0, 500.0];
        assert!(psi(&a, &b) > 0.2);
        assert!(js_distance(&a, &b) > 0.1);
        assert!(js_distance(&a, &b) <= 1.0);
    }

    #[test]
    fn wasserstein_of_a_shift_is_the_shift_over_std() {
        let mut r: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let mut c: Vec<f64> = (0..1000).map(|i| i as f64 + 100.0).collect();
        let std = 288.675; // of 0..999
        let w = wasserstein_normalised(&mut r, &mut c);
        assert!((w - 100.0 / std).abs() < 0.01, "{w}");
        let mut c2: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        assert!(wasserstein_normalised(&mut r, &mut c2) < 1e-9);
    }

    #[test]
    fn one_absurd_value_neither_hides_a_shift_nor_fakes_one() {
        let latencies = |shift: f64| -> Vec<f64> {
            (0..1000)
                .map(|i| 800.0 + (i % 100) as f64 + shift)
                .collect()
        };
        let mut r = latencies(0.0);
        r[17] = 1e300;
        let mut c = latencies(200.0);
        let w = wasserstein_normalised(&mut r, &mut c);
        assert!(w > 1.0, "a 200 ms shift over a spread of ~29 ms: {w}");
        let mut r = latencies(0.0);
        let mut c = latencies(0.0);
        c[3] = f64::INFINITY;
        c[4] = 9e18;
        let w = wasserstein_normalised(&mut r, &mut c);
        assert!(w < 0.1, "two absurd values in 1000 are no drift: {w}");
    }

    #[test]
    fn ks_separates_shifted_samples_from_resampled_ones() {
        let r: Vec<f64> = (0..1000).map(|i| (i % 100) as f64).collect();
        let same: Vec<f64> = (0..300).map(|i| ((i * 7) % 100) as f64).collect();
        let mut same_sorted = same.clone();
        same_sorted.sort_by(|a, b| a.total_cmp(b));
        let mut r_sorted = r.clone();
        r_sorted.sort_by(|a, b| a.total_cmp(b));
        let (d, p) = ks_test(&r_sorted, &same_sorted);
        assert!(d < 0.05 && p > 0.5, "{d} {p}");
        let shifted: Vec<f64> = same_sorted.iter().map(|x| x + 30.0).collect();
        let (d, p) = ks_test(&r_sorted, &shifted);
        assert!(d > 0.25 && p < 1e-6, "{d} {p}");
    }

    #[test]
    fn a_new_response_model_after_warm_up_is_a_swap() {
        let mut t = DriftTrack::default();
        assert!(!t.observe_response_model("gpt-4o-2024-08-06", 3));
        for _ in 0..5 {
            assert!(!t.observe_response_model("gpt-4o-2024-08-06", 3));
        }
        assert!(t.observe_response_model("gpt-4o-2025-01-01", 3));
        assert!(
            !t.observe_response_model("gpt-4o-2025-01-01", 3),
            "reported once"
        );
        assert!(
            !t.observe_response_model("gpt-4o-2024-08-06", 3),
            "known version"
        );
    }

    #[test]
    fn evaluate_needs_enough_samples_and_reports_the_drifted_feature() {
        let lim = DriftLimits {
            reference_us: 1000,
            current_us: 100,
            min_reference: 50,
            min_current: 20,
            psi: 0.2,
            js: 0.1,
            wasserstein: 0.1,
            ks_p: 0.001,
            max_samples: 10_000,
        };
        let mut small = DriftTrack::default();
        for i in 850..900 {
            small.push(i, 0, 100.0, 50.0, 10_000);
        }
        assert!(
            small.evaluate(900, 1, &lim).is_none(),
            "too little reference data"
        );
        let mut t = DriftTrack::default();
        for i in 0..900 {
            t.push(i, 0, 100.0 + (i % 10) as f64, 50.0 + (i % 7) as f64, 10_000);
        }
        assert_eq!(
            t.evaluate(900, 1, &lim),
            Some(vec![]),
            "same distribution: no drift"
        );
        for i in 900..1000 {
            t.push(i, 0, 300.0 + (i % 10) as f64, 50.0 + (i % 7) as f64, 10_000);
        }
        let found = t.evaluate(1000, 1, &lim).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].feature, "output_tokens");
    }
}
