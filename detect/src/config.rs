//! Detection configuration: the AI inventory, role policies and detector settings (`[detect]` and
//! `[inventory]` in the config file).
//!
//! Every field has a default so that an empty `[detect]` section gives a working stage; the defaults follow
//! `reference.md` section 3 (robust z 3.5, EWMA lambda 0.25, JS 0.1, normalised Wasserstein 0.1), except
//! PSI: 0.2, the level reference.md calls a major shift, rather than Evidently's 0.1, so that a drift alert
//! is a shift worth a look and not a weekly wobble in a model's finish reasons.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every detector id the stage knows, in the order they are documented.
pub const DETECTORS: [&str; 10] = [
    "sensitive_data",
    "prompt_injection",
    "shadow_ai",
    "tool_overreach",
    "privilege",
    "policy_deny_burst",
    "rate_spike",
    "token_spike",
    "behavior_anomaly",
    "model_drift",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// What of prompt/response text is kept at rest. Default `redacted`.
    pub content_capture: ContentCapture,
    /// Where a user's role comes from (the `user_role` column or the `inventory.users` table).
    pub role_source: RoleSource,
    /// Detector switches: `{ shadow_ai = false }` turns one off; a detector not listed is on. An id that
    /// is not a detector is refused: a typo must not leave on a detector someone meant to turn off.
    #[serde(deserialize_with = "known_detectors")]
    pub enabled: BTreeMap<String, bool>,
    /// Numeric thresholds and windows.
    pub thresholds: Thresholds,
    /// The registry of approved AI assets and role policies. The binary may read it from a top-level
    /// `[inventory]` section and assign it here.
    pub inventory: Inventory,
}

fn known_detectors<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, bool>, D::Error> {
    let enabled = BTreeMap::<String, bool>::deserialize(deserializer)?;
    match enabled.keys().find(|id| !DETECTORS.contains(&id.as_str())) {
        Some(unknown) => Err(serde::de::Error::custom(format!(
            "unknown detector `{unknown}` (known: {})",
            DETECTORS.join(", ")
        ))),
        None => Ok(enabled),
    }
}

impl DetectConfig {
    /// Whether a detector runs. Unknown ids are reported as enabled so a typo never silently disables one.
    pub fn is_enabled(&self, detector: &str) -> bool {
        self.enabled.get(detector).copied().unwrap_or(true)
    }
}

/// How much prompt/response text the stored events keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentCapture {
    /// Text columns are stored as nulls.
    None,
    /// Detected PII and secrets are replaced by `[REDACTED:<kind>]`.
    #[default]
    Redacted,
    /// Text is stored as received (for deployments whose storage is itself a controlled zone).
    Full,
}

/// Where the privilege detector looks up a user's role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleSource {
    /// The event's `user_role` column (set by the sender's identity layer); the `inventory.users` table is
    /// the fallback when the column is null.
    #[default]
    Attribute,
    /// Only the static `inventory.users` table: senders cannot claim a role.
    Table,
}

/// Thresholds. Windows are measured on *event time*, so replayed or simulated traffic behaves like live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Baseline window: per-entity counts are closed and fed to the estimators once per window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Closed windows an entity needs before rate/token spikes may fire (warm-up).
    pub warmup_windows: u64,
    /// EWMA smoothing factor (0.2-0.3 per the literature).
    pub ewma_lambda: f64,
    /// Robust z-score (0.6745 (x - median) / MAD) above which a feature is anomalous.
    pub z_threshold: f64,
    /// Closed windows kept per feature for the median/MAD.
    pub ring_size: usize,
    /// Entities of one kind (users, agents, models, endpoints, tools, ...) with a baseline, a drift track or
    /// an inventory entry. A new one past it is not tracked until idle ones are dropped (on the tick, the
    /// least recently seen first; not warm before warm, unregistered before registered), so ids that change
    /// on every event cannot grow memory without bound.
    pub max_entities: usize,
    /// shadow_ai alerts of their own per `window` (event time). Past it, a new unregistered asset is still
    /// listed in the `inventory` table and counted, and one summary alert per window says how many were
    /// held back: a sender making up model names must not flood the SOAR with one finding each.
    pub shadow_alerts_per_window: usize,
    /// A rate spike also needs the window's count to be at least this multiple of the baseline...
    pub spike_min_ratio: f64,
    /// ...and at least this many requests above it (absolute magnitude, so quiet entities do not page).
    pub rate_min_excess: f64,
    /// The token spike's absolute magnitude: tokens above the baseline within one window.
    pub token_min_excess: f64,
    /// Denials within `deny_burst_window` that make a burst.
    pub deny_burst_count: usize,
    #[serde(with = "humantime_serde")]
    pub deny_burst_window: Duration,
    /// Prompt-injection score (0..1) at or above which an alert is raised.
    pub injection_min_score: f32,
    /// How long (event time) a conversation's last scanned prompt is remembered, so that the history a
    /// chat sends again with each call does not raise its findings again (up to `max_entities`
    /// conversations).
    #[serde(with = "humantime_serde")]
    pub conversation_memory: Duration,
    /// Sensitive-data findings below this confidence are still redacted but do not alert.
    pub sensitive_min_confidence: f32,
    /// Drift: reference window (before the current one) and current window.
    #[serde(with = "humantime_serde")]
    pub drift_reference: Duration,
    #[serde(with = "humantime_serde")]
    pub drift_current: Duration,
    /// Drift is only judged with at least this many samples in each window.
    pub drift_min_reference: usize,
    pub drift_min_current: usize,
    /// Population stability index on categorical distributions: 0.2 (a major shift; Evidently warns at 0.1).
    pub drift_psi: f64,
    /// Jensen-Shannon distance (base 2) on categorical distributions.
    pub drift_js: f64,
    /// Wasserstein-1 distance normalised by the reference standard deviation, on numeric features.
    pub drift_wasserstein: f64,
    /// ...and significant: two-sample KS p-value below this (many evaluations per hour need a small alpha).
    pub drift_ks_p: f64,
    /// Events of a model before a different `response_model` counts as a swap rather than a first sighting.
    pub swap_min_events: u64,
    /// Behaviour model: closed windows needed before the first fit, and new windows between refits.
    pub behavior_min_train: usize,
    pub behavior_refit_every: usize,
    /// Behaviour threshold = this quantile of training distances x `behavior_margin`.
    pub behavior_quantile: f64,
    pub behavior_margin: f64,
    /// Clusters of the k-means behaviour model.
    pub behavior_clusters: usize,
    /// Windows with fewer requests are neither scored nor trained on: per-request means of one or two
    /// requests are noise, not behaviour.
    pub behavior_min_requests: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            warmup_windows: 10,
            ewma_lambda: 0.25,
            z_threshold: 3.5,
            ring_size: 240,
            max_entities: 100_000,
            shadow_alerts_per_window: 20,
            spike_min_ratio: 3.0,
            rate_min_excess: 50.0,
            token_min_excess: 50_000.0,
            deny_burst_count: 5,
            deny_burst_window: Duration::from_secs(60),
            injection_min_score: 0.5,
            conversation_memory: Duration::from_secs(24 * 3600),
            sensitive_min_confidence: 0.5,
            drift_reference: Duration::from_secs(3600),
            drift_current: Duration::from_secs(900),
            drift_min_reference: 1000,
            drift_min_current: 300,
            drift_psi: 0.2,
            drift_js: 0.1,
            drift_wasserstein: 0.1,
            drift_ks_p: 0.001,
            swap_min_events: 100,
            behavior_min_train: 500,
            behavior_refit_every: 2000,
            behavior_quantile: 0.999,
            behavior_margin: 2.0,
            behavior_clusters: 6,
            behavior_min_requests: 3,
        }
    }
}

/// The registry of approved AI assets. An empty list for an entity type means "nothing registered yet":
/// shadow_ai only reports an entity type once at least one asset of that type is registered, so a fresh
/// install does not flood.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Inventory {
    pub providers: Vec<Asset>,
    pub models: Vec<Asset>,
    /// Ids are `host` or `host:port` as in the `endpoint` column; a `host` entry covers every port.
    pub endpoints: Vec<Asset>,
    pub agents: Vec<AgentAsset>,
    pub roles: Vec<RolePolicy>,
    /// Static user -> role table.
    pub users: BTreeMap<String, String>,
    pub data_sources: Vec<DataSource>,
}

/// One approved provider, model or endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Asset {
    pub id: String,
    pub owner: String,
    pub purpose: String,
    /// Free text, e.g. `low` | `medium` | `high`.
    pub risk_tier: String,
}

/// An approved agent and what it may touch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentAsset {
    pub id: String,
    pub owner: String,
    pub purpose: String,
    pub risk_tier: String,
    /// Allowlist of tool names; an empty list allows no tool (it is an allowlist).
    pub tools: Vec<String>,
    /// Allowlist of data source ids; an empty list allows none.
    pub data_sources: Vec<String>,
}

/// What a role may use. `"*"` in a list allows everything of that kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolePolicy {
    pub name: String,
    pub models: Vec<String>,
    pub data_classifications: Vec<String>,
}

/// A data source and its classification (e.g. `public`, `internal`, `confidential`, `restricted`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSource {
    pub id: String,
    pub classification: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_config_file_section_with_defaults_filled_in() {
        let cfg: DetectConfig = toml::from_str(
            r#"
            content_capture = "none"
            enabled = { shadow_ai = false }
            [thresholds]
            window = "30s"
            z_threshold = 4.0
            [inventory]
            models = [{ id = "gpt-4o", owner = "platform", purpose = "chat", risk_tier = "medium" }]
            agents = [{ id = "billing-bot", tools = ["lookup_invoice"], data_sources = ["invoices"] }]
            roles = [{ name = "support", models = ["gpt-4o"], data_classifications = ["internal"] }]
            users = { alice = "support" }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.content_capture, ContentCapture::None);
        assert!(!cfg.is_enabled("shadow_ai"));
        assert!(cfg.is_enabled("prompt_injection"));
        let typo = toml::from_str::<DetectConfig>("enabled = { shadow_Ai = false }")
            .expect_err("a detector id that does not exist");
        assert!(
            typo.to_string().contains("unknown detector `shadow_Ai`"),
            "{typo}"
        );
        assert_eq!(cfg.thresholds.window, Duration::from_secs(30));
        assert_eq!(cfg.thresholds.z_threshold, 4.0);
        assert_eq!(cfg.thresholds.ewma_lambda, 0.25);
        assert_eq!(
            cfg.inventory.agents[0].tools,
            vec!["lookup_invoice".to_string()]
        );
        assert_eq!(cfg.inventory.users["alice"], "support");
    }

    #[test]
    fn rejects_unknown_fields() {
        assert!(toml::from_str::<DetectConfig>("z_treshold = 3").is_err());
    }
}
