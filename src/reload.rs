//! Reloading the detection configuration (AI inventory, role policies, thresholds) and the configuration's
//! tokens without a restart, on SIGHUP or `POST /-/reload` (admin scope), the way Prometheus and
//! Alertmanager reload theirs: a new model approved or an agent's allowlist changed must not cost a
//! restart, nor the baselines' warm-up, and a token removed from `[auth] tokens` must stop working now.
//!
//! Only `[detect]` and `[auth] tokens` take effect at once; listeners, storage and delivery keep what they started with (a
//! reload that changes them says so in the log). A configuration that does not load is refused and the
//! running one stays.

use std::sync::{Arc, LazyLock};

use anyhow::{Context, Result};
use parking_lot::Mutex;
use prometheus::{register_gauge, register_int_counter_vec, Gauge, IntCounterVec};
use vigil_detect::DetectionStage;
use vigil_ingest::security::Authenticator;

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
    /// Whose `[auth] tokens` a reload replaces, so a token removed there stops working at once.
    auth: Arc<Authenticator>,
    running: Mutex<Config>,
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        detection: Arc<DetectionStage>,
        auth: Arc<Authenticator>,
        running: Config,
    ) -> Arc<Reloader> {
        LAST_SUCCESS.set(chrono::Utc::now().timestamp() as f64);
        Arc::new(Reloader {
            source,
            detection,
            auth,
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
        // Held from the read to the last change: two reloads at once (SIGHUP and `POST /-/reload`) must
        // not apply an older read of the file after a newer one, which would bring back a removed token.
        let mut running = self.running.lock();
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
        // Tokens first: a reload whose tokens are invalid changes nothing.
        if let Some(store) = self.auth.store() {
            store
                .set_configured(new.auth.tokens.clone())
                .context("[auth] tokens")?;
        }
        self.detection.reload(new.detect.clone());
        if outside_reloaded(&running) != outside_reloaded(&new) {
            tracing::warn!("the configuration changed outside [detect] and [auth] tokens; those changes take effect at the next restart");
        }
        running.detect = new.detect;
        running.auth.tokens = new.auth.tokens;
        Ok(format!(
            "{summary}; {} configured tokens",
            running.auth.tokens.len()
        ))
    }
}

/// Everything but `[detect]` and `[auth] tokens`, to tell whether a reload changed what only a restart
/// applies.
fn outside_reloaded(config: &Config) -> String {
    let mut c = config.clone();
    c.detect = Default::default();
    c.auth.tokens = Vec::new();
    toml::to_string(&c).unwrap_or_default()
}

/// SIGHUP, listened for from the first moment of `serve`. Without a handler a SIGHUP terminates the process,
/// and one sent while the WAL replays (systemd's `ExecReload`, a configuration-management run) must not.
/// A SIGHUP that arrives before the server is ready is held and applied once it is.
pub struct Sighup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Sighup {
    /// Installs the handler now (inside the runtime).
    pub fn listen() -> Sighup {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
                })
                .ok();
            Sighup { signal }
        }
        #[cfg(not(unix))]
        Sighup {}
    }
}

/// Reloads on every SIGHUP (including any held since [`Sighup::listen`]) until the process ends.
pub fn on_sighup(reloader: Arc<Reloader>, hup: Sighup) {
    #[cfg(unix)]
    if let Some(mut signal) = hup.signal {
        tokio::spawn(async move {
            while signal.recv().await.is_some() {
                // It reads the file and may wait for another reload's lock: not on an async worker.
                let reloader = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (reloader, hup);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use vigil_ingest::security::{ConfiguredToken, Scope, StoreOptions, TokenHash, TokenStore};

    use super::*;

    /// A slow read of the old file must not be applied after a quick read of the new one: the token the
    /// new file removed would work again.
    #[test]
    fn overlapping_reloads_apply_the_newest_read_last() {
        const TOKEN: &str = "operator-chosen-secret-value-with-enough-entropy";
        let dir = tempfile::tempdir().unwrap();
        let store =
            TokenStore::open_with(dir.path().join("tokens.json"), StoreOptions::default()).unwrap();
        let auth = Arc::new(Authenticator::new(store));
        let version = Arc::new(AtomicUsize::new(1));
        let source: ConfigSource = {
            let version = version.clone();
            Arc::new(move || {
                let v = version.load(Ordering::SeqCst);
                let mut config = Config::default();
                if v == 1 {
                    config.auth.tokens = vec![ConfiguredToken {
                        name: "old".into(),
                        scopes: vec![Scope::Ingest],
                        hash: TokenHash::of(TOKEN).to_string(),
                    }];
                    // A slow read: the file changes and another reload starts meanwhile.
                    std::thread::sleep(Duration::from_millis(300));
                }
                Ok(config)
            })
        };
        let detection = DetectionStage::new(Default::default());
        let reloader = Reloader::new(source, detection, auth.clone(), Config::default());
        let first = {
            let reloader = reloader.clone();
            std::thread::spawn(move || reloader.reload())
        };
        std::thread::sleep(Duration::from_millis(100));
        version.store(2, Ordering::SeqCst);
        reloader.reload().unwrap();
        first.join().unwrap().unwrap();
        let store = auth.store().unwrap();
        assert!(
            store.verify(TOKEN).is_none(),
            "the token the newer file removed works again"
        );
    }
}
