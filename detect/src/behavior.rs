//! The multivariate behaviour score: k-means (linfa) fitted on closed per-entity windows, each described by
//! a small feature vector. A window's score is its distance to the nearest centroid in standardised space;
//! the alert threshold is a high quantile of the training distances times a margin. Fitting happens in
//! `tick` (background); `process` only measures distances.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use ndarray::Array2;

/// Features of one closed window, before standardisation.
pub const DIMS: usize = 7;

/// One closed window's counts, turned into the vector the model sees.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowSummary {
    pub requests: f64,
    pub input_tokens: f64,
    pub output_tokens: f64,
    pub latency_mean: f64,
    pub errors: f64,
    pub denies: f64,
    pub distinct_tools: f64,
    pub distinct_data_sources: f64,
}

impl WindowSummary {
    /// Log scales for counts and sizes; error and deny rates smoothed so that one error in two requests
    /// does not look like an outage.
    pub fn vector(&self) -> [f64; DIMS] {
        let n = self.requests.max(1.0);
        [
            (1.0 + self.requests).ln(),
            (1.0 + self.input_tokens / n).ln(),
            (1.0 + self.output_tokens / n).ln(),
            (1.0 + self.latency_mean).ln(),
            4.0 * self.errors / (self.requests + 5.0),
            4.0 * self.denies / (self.requests + self.denies + 5.0),
            (1.0 + self.distinct_tools + self.distinct_data_sources).ln(),
        ]
    }
}

/// A fitted behaviour model.
#[derive(Debug, Clone)]
pub struct BehaviorModel {
    mean: [f64; DIMS],
    scale: [f64; DIMS],
    centroids: Vec<[f64; DIMS]>,
    /// Distances above this are anomalous.
    pub threshold: f64,
    pub trained_on: usize,
}

/// Why a fit did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("behaviour model needs at least {needed} windows, has {have}")]
    TooFewWindows { needed: usize, have: usize },
    #[error("k-means fit failed: {0}")]
    KMeans(String),
}

impl BehaviorModel {
    pub fn fit(
        windows: &[[f64; DIMS]],
        clusters: usize,
        quantile: f64,
        margin: f64,
    ) -> Result<Self, FitError> {
        let k = clusters.max(1);
        if windows.len() < k * 10 {
            return Err(FitError::TooFewWindows {
                needed: k * 10,
                have: windows.len(),
            });
        }
        let n = windows.len() as f64;
        let mut mean = [0.0; DIMS];
        let mut scale = [0.0; DIMS];
        for w in windows {
            for d in 0..DIMS {
                mean[d] += w[d] / n;
            }
        }
        for w in windows {
            for d in 0..DIMS {
                scale[d] += (w[d] - mean[d]).powi(2) / n;
            }
        }
        // A floor per dimension: a feature that never moved in training must not make a tiny change huge.
        for s in scale.iter_mut() {
            *s = s.sqrt().max(0.1);
        }
        let standardised = |w: &[f64; DIMS]| -> [f64; DIMS] {
            std::array::from_fn(|d| (w[d] - mean[d]) / scale[d])
        };
        let data: Vec<f64> = windows.iter().flat_map(standardised).collect();
        let records = Array2::from_shape_vec((windows.len(), DIMS), data)
            .map_err(|e| FitError::KMeans(e.to_string()))?;
        let fitted = KMeans::params(k)
            .n_runs(3)
            .max_n_iterations(100)
            .tolerance(1e-3)
            .fit(&DatasetBase::from(records.clone()))
            .map_err(|e| FitError::KMeans(e.to_string()))?;
        let centroids: Vec<[f64; DIMS]> = fitted
            .centroids()
            .rows()
            .into_iter()
            .map(|r| std::array::from_fn(|d| r[d]))
            .collect();
        let mut model = Self {
            mean,
            scale,
            centroids,
            threshold: f64::INFINITY,
            trained_on: windows.len(),
        };
        let mut dists: Vec<f64> = records
            .rows()
            .into_iter()
            .map(|r| model.nearest(&std::array::from_fn(|d| r[d])))
            .collect();
        dists.sort_by(|a, b| a.total_cmp(b));
        let q = ((dists.len() - 1) as f64 * quantile.clamp(0.0, 1.0)).round() as usize;
        model.threshold = dists[q].max(1.0) * margin;
        Ok(model)
    }

    fn nearest(&self, z: &[f64; DIMS]) -> f64 {
        self.centroids
            .iter()
            .map(|c| c.iter().zip(z).map(|(a, b)| (a - b).powi(2)).sum::<f64>())
            .fold(f64::INFINITY, f64::min)
            .sqrt()
    }

    /// Distance of a window to the nearest centroid (standardised units).
    pub fn distance(&self, w: &[f64; DIMS]) -> f64 {
        let z: [f64; DIMS] = std::array::from_fn(|d| (w[d] - self.mean[d]) / self.scale[d]);
        self.nearest(&z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn normal_window(rng: &mut rand::rngs::StdRng) -> WindowSummary {
        let requests = rng.random_range(5.0..15.0f64).round();
        WindowSummary {
            requests,
            input_tokens: requests * rng.random_range(400.0..700.0),
            output_tokens: requests * rng.random_range(150.0..300.0),
            latency_mean: rng.random_range(600.0..1200.0),
            errors: if rng.random_bool(0.05) { 1.0 } else { 0.0 },
            denies: 0.0,
            distinct_tools: rng.random_range(0.0..3.0f64).floor(),
            distinct_data_sources: 0.0,
        }
    }

    #[test]
    fn flags_an_outage_pattern_but_not_normal_windows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let train: Vec<[f64; DIMS]> = (0..3000)
            .map(|_| normal_window(&mut rng).vector())
            .collect();
        let model = BehaviorModel::fit(&train, 4, 0.999, 1.5).unwrap();
        let normal_max = (0..3000)
            .map(|_| model.distance(&normal_window(&mut rng).vector()))
            .fold(0.0, f64::max);
        assert!(
            normal_max < model.threshold,
            "{normal_max} >= {}",
            model.threshold
        );
        let broken = WindowSummary {
            requests: 10.0,
            input_tokens: 5000.0,
            output_tokens: 0.0,
            latency_mean: 20.0,
            errors: 10.0,
            ..Default::default()
        };
        assert!(model.distance(&broken.vector()) > model.threshold);
    }

    #[test]
    fn refuses_to_fit_on_too_little_data() {
        assert!(matches!(
            BehaviorModel::fit(&[[0.0; DIMS]; 5], 4, 0.999, 1.5),
            Err(FitError::TooFewWindows { .. })
        ));
    }
}
