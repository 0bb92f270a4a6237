//! Streaming estimators for per-entity baselines: EWMA mean/variance, a bounded ring of recent window
//! values for the robust median/MAD, and 168 hour-of-week EWMA buckets for seasonal rates.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Robust z-score of `x` against a median/MAD, with a floor on the MAD so that a perfectly flat history
/// (MAD 0) does not turn every wiggle into infinity.
pub fn robust_z(x: f64, median: f64, mad: f64, mad_floor: f64) -> f64 {
    0.6745 * (x - median) / mad.max(mad_floor).max(f64::EPSILON)
}

/// One feature of one entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureStats {
    pub ewma: f64,
    pub ewma_var: f64,
    /// Closed windows seen (not capped by the ring).
    pub samples: u64,
    /// Recent window values, oldest first, for the median/MAD.
    pub recent: VecDeque<f64>,
    /// Cached from `recent` at each update, so that scoring does not sort.
    pub median: f64,
    pub mad: f64,
    /// Event time (µs) of the last update.
    pub updated_at: i64,
}

impl FeatureStats {
    pub fn update(&mut self, x: f64, lambda: f64, ring: usize, at_us: i64) {
        if self.samples == 0 {
            self.ewma = x;
            self.ewma_var = 0.0;
        } else {
            let d = x - self.ewma;
            self.ewma += lambda * d;
            self.ewma_var = (1.0 - lambda) * (self.ewma_var + lambda * d * d);
        }
        self.samples += 1;
        self.recent.push_back(x);
        while self.recent.len() > ring.max(1) {
            self.recent.pop_front();
        }
        self.refresh_robust();
        self.updated_at = at_us;
    }

    /// Starts over from `values` (a level shift: the old level no longer describes the entity), keeping
    /// the count of windows seen.
    pub fn rebase(
        &mut self,
        values: impl IntoIterator<Item = f64>,
        lambda: f64,
        ring: usize,
        at_us: i64,
    ) {
        let samples = self.samples;
        *self = FeatureStats::default();
        for x in values {
            self.update(x, lambda, ring, at_us);
        }
        self.samples += samples;
    }

    /// Recomputes median and MAD from the ring (after an update or a restore).
    pub fn refresh_robust(&mut self) {
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        self.median = median_in_place(&mut v);
        for x in v.iter_mut() {
            *x = (*x - self.median).abs();
        }
        self.mad = median_in_place(&mut v);
    }
}

/// Median of a slice (reordered). 0 for an empty slice.
pub fn median_in_place(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Hour-of-week buckets (Monday 00:00 UTC = 0) of an EWMA, for features with a weekly rhythm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seasonal {
    pub mean: Vec<f64>,
    pub n: Vec<u32>,
}

impl Default for Seasonal {
    fn default() -> Self {
        Self {
            mean: vec![0.0; 168],
            n: vec![0; 168],
        }
    }
}

impl Seasonal {
    pub fn update(&mut self, hour_of_week: usize, x: f64, lambda: f64) {
        let h = hour_of_week % 168;
        if self.n[h] == 0 {
            self.mean[h] = x;
        } else {
            self.mean[h] += lambda * (x - self.mean[h]);
        }
        self.n[h] = self.n[h].saturating_add(1);
    }

    /// The bucket's level once it has a few samples.
    pub fn expected(&self, hour_of_week: usize, min_n: u32) -> Option<f64> {
        let h = hour_of_week % 168;
        (self.n[h] >= min_n).then_some(self.mean[h])
    }

    /// A restored value is only trusted when it has the right shape.
    pub fn is_valid(&self) -> bool {
        self.mean.len() == 168 && self.n.len() == 168
    }
}

/// Hour of week (Monday 00:00 UTC = 0) of a µs timestamp. 1970-01-01 was a Thursday.
pub fn hour_of_week(time_us: i64) -> usize {
    let hours = time_us.div_euclid(3_600_000_000);
    ((hours + 72).rem_euclid(168)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad_follow_the_ring() {
        let mut f = FeatureStats::default();
        for x in [10.0, 12.0, 11.0, 9.0, 100.0] {
            f.update(x, 0.25, 4, 0);
        }
        // Ring keeps 12, 11, 9, 100: median 11.5; deviations 0.5, 0.5, 2.5, 88.5 -> MAD 1.5.
        assert_eq!(f.samples, 5);
        assert_eq!(f.median, 11.5);
        assert_eq!(f.mad, 1.5);
        assert!(f.ewma > 10.0 && f.ewma < 100.0);
        assert!(f.ewma_var > 0.0);
    }

    #[test]
    fn robust_z_uses_the_mad_floor() {
        assert!((robust_z(13.5, 10.0, 0.0, 1.0) - 0.6745 * 3.5).abs() < 1e-9);
        assert!(robust_z(10.0, 10.0, 0.0, 0.0).abs() < 1e-9);
    }

    #[test]
    fn hour_of_week_starts_on_monday() {
        // 2024-01-01 was a Monday.
        let monday = 1_704_067_200_000_000i64;
        assert_eq!(hour_of_week(monday), 0);
        assert_eq!(hour_of_week(monday + 25 * 3_600_000_000), 25);
        assert_eq!(hour_of_week(monday - 3_600_000_000), 167);
    }

    #[test]
    fn seasonal_buckets_are_independent() {
        let mut s = Seasonal::default();
        s.update(9, 100.0, 0.25);
        s.update(9, 100.0, 0.25);
        s.update(3, 5.0, 0.25);
        assert_eq!(s.expected(9, 2), Some(100.0));
        assert_eq!(s.expected(3, 2), None);
    }
}
