//! Reloading the detection configuration (AI inventory, role policies, thresholds) without a restart, on
//! SIGHUP or `POST /-/reload` (admin scope), the way Prometheus and Alertmanager reload theirs: a new model
//! approved or an agent's allowlist changed must not cost a restart, nor the baselines' warm-up.
//!
//! Only `[detect]` takes effect at once; listeners, storage and delivery keep what they started with (a
//! reload that changes them says so in the log). A configuration that does not load is refused and the
//! running one stays.

use std::sync::{Arc, LazyLock};

use anyhow::{Context, Result};
use parking_lot::Mutex;
use prometheus::{register_gauge, register_int_counter_vec, Gauge, IntCounterVec};
use vigil_detect::DetectionStage;

use crate::config::Config;

/// Re-reads the configuration the way the process first read it (file, environment, flags).
pub type ConfigSource = Arc<dyn Fn() -> Result<Config> + Send + Sync>;

static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_config_reloads_total",
        "Configuration reloads by result (success, failure)",
        &["result"]
    )
    .expect("metric registers once")
});

static LAST_SUCCESS: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "vigil_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded"
    )
    .expect("metric registers once")
});

pub struct Reloader {
    source: ConfigSource,
    detection: Arc<DetectionStage>,
    running: Mutex<Config>,
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        detection: Arc<DetectionStage>,
        running: Config,
    ) -> Arc<Reloader> {
        LAST_SUCCESS.set(chrono::Utc::now().timestamp() as f64);
        Arc::new(Reloader {
            source,
            detection,
            running: Mutex::new(running),
        })
    }

    /// Loads the configuration again and hands its `[detect]` section to the detection stage.
    pub fn reload(&self) -> Result<String> {
        match self.try_reload() {
            Ok(summary) => {
                RELOADS.with_label_values(&["success"]).inc();
                LAST_SUCCESS.set(chrono::Utc::now().timestamp() as f64);
                tracing::info!(%summary, "configuration reloaded");
                Ok(summary)
            }
            Err(e) => {
                RELOADS.with_label_values(&["failure"]).inc();
                tracing::error!(
                    error = format!("{e:#}"),
                    "configuration reload refused; the running configuration stays"
                );
                Err(e)
            }
        }
    }

    fn try_reload(&self) -> Result<String> {
        let new = (self.source)().context("loading the configuration")?;
        let inv = &new.detect.inventory;
        let summary = format!(
            "inventory: {} providers, {} models, {} endpoints, {} agents, {} role policies",
            inv.providers.len(),
            inv.models.len(),
            inv.endpoints.len(),
            inv.agents.len(),
            inv.roles.len()
        );
        self.detection.reload(new.detect.clone());
        let mut running = self.running.lock();
        if outside_detect(&running) != outside_detect(&new) {
            tracing::warn!("the configuration changed outside [detect]; those changes take effect at the next restart");
        }
        running.detect = new.detect;
        Ok(summary)
    }
}

/// Everything but `[detect]`, to tell whether a reload changed what only a restart applies.
fn outside_detect(config: &Config) -> String {
    let mut c = config.clone();
    c.detect = Default::default();
    toml::to_string(&c).unwrap_or_default()
}

/// Reloads on every SIGHUP until the process ends.
pub fn on_sighup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let _ = reloader.reload();
        }
    });
}
