//! `[respond]` configuration: destinations, playbooks, grouping, delivery schedule and egress policy.
//!
//! Defaults follow reference.md section 4 (Svix retry schedule, Alertmanager grouping intervals), and every
//! duration is configurable so tests can run the same machinery in milliseconds.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigil_detect::alert::Severity;

use crate::Secret;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespondConfig {
    pub destinations: Vec<DestinationConfig>,
    pub playbooks: Vec<PlaybookConfig>,
    pub grouping: GroupingConfig,
    pub delivery: DeliveryConfig,
    pub egress: EgressConfig,
    /// Where the outbox lives; the binary resolves `None` to a file under its data directory.
    pub outbox_path: Option<PathBuf>,
}

/// Body shape a receiver expects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// OCSF 1.8.0 Detection Finding inside the Standard Webhooks envelope.
    #[default]
    Ocsf,
    /// Prometheus Alertmanager webhook v4 body.
    Alertmanager,
    /// TheHive 5 `POST /api/v1/alert`.
    Thehive,
    /// Splunk SOAR `POST /rest/container`.
    SplunkSoar,
    /// Cortex XSOAR generic webhook integration.
    Xsoar,
    /// Vigil's own alert record in the envelope.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ocsf => "ocsf",
            Format::Alertmanager => "alertmanager",
            Format::Thehive => "thehive",
            Format::SplunkSoar => "splunk_soar",
            Format::Xsoar => "xsoar",
            Format::Json => "json",
        }
    }
}

/// How a request proves who we are to the receiver (separate from the Standard Webhooks signature,
/// which proves the body to the receiver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    Bearer {
        token: Secret,
    },
    Basic {
        username: String,
        password: Secret,
    },
    /// A custom header, e.g. Splunk SOAR's `ph-auth-token`.
    Header {
        name: String,
        value: Secret,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Standard Webhooks secret (`whsec_<base64>`); without it requests carry id and timestamp but no signature.
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Only these detectors (empty: all).
    #[serde(default)]
    pub detectors: Vec<String>,
    /// Never these detectors.
    #[serde(default)]
    pub exclude_detectors: Vec<String>,
}

fn default_min_severity() -> Severity {
    Severity::Informational
}

fn default_playbook_severity() -> Severity {
    Severity::High
}

/// An automated response: when a finding of these detectors reaches `min_severity`, call `url` once with
/// `action` (e.g. `revoke_agent_token`, `quarantine_model_endpoint`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookConfig {
    pub name: String,
    #[serde(default)]
    pub detectors: Vec<String>,
    #[serde(default = "default_playbook_severity")]
    pub min_severity: Severity,
    pub action: String,
    pub url: String,
    #[serde(default)]
    pub auth: Option<Auth>,
    #[serde(default)]
    pub secret: Option<Secret>,
}

/// Alertmanager's grouping knobs, applied per fingerprint (one finding per alert identity).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupingConfig {
    /// Wait before the first notification so a burst lands in one Create.
    #[serde(with = "humantime_serde")]
    pub group_wait: Duration,
    /// Minimum gap between Updates of one finding.
    #[serde(with = "humantime_serde")]
    pub group_interval: Duration,
    /// Re-notify an unchanged, still-firing finding after this long.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// A finding with no new detection for this long is closed (resolved).
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        GroupingConfig {
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(5 * 60),
            repeat_interval: Duration::from_secs(4 * 3600),
            resolve_after: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Delay before retry n (Svix's schedule); a delivery that fails once more after the last step is dead-lettered.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// Each delay is spread by ±this fraction so retries of many deliveries do not arrive together.
    pub jitter: f64,
    /// Longest `Retry-After` we accept from a receiver (longer ones are cut to this).
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Consecutive failures that open a destination's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker rejects attempts before letting one probe through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// How often the delivery loop looks for due work when nothing wakes it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Concurrent requests across all destinations.
    pub max_in_flight: usize,
    /// Concurrent requests to one destination, so that a slow receiver cannot take every slot from the
    /// others.
    pub max_in_flight_per_destination: usize,
    /// Delivered deliveries kept for `alert_deliveries`; beyond it the oldest are pruned.
    pub history_limit: usize,
    /// Dead letters (and deliveries to a destination disabled by 410) kept, with their bodies, for
    /// `vigil alerts replay`; beyond it the oldest are dropped and counted in
    /// `vigil_webhook_dead_letters_dropped_total`, so an endpoint that fails for good cannot fill memory
    /// and disk.
    pub dead_letter_limit: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let s = Duration::from_secs;
        DeliveryConfig {
            timeout: s(15),
            retry_schedule: vec![
                s(5),
                s(5 * 60),
                s(30 * 60),
                s(2 * 3600),
                s(5 * 3600),
                s(10 * 3600),
                s(10 * 3600),
            ],
            jitter: 0.2,
            max_retry_after: s(10 * 3600),
            breaker_failures: 5,
            breaker_cooldown: s(30),
            poll_interval: s(1),
            max_in_flight: 32,
            max_in_flight_per_destination: 8,
            history_limit: 100_000,
            dead_letter_limit: 10_000,
        }
    }
}

/// Where webhooks may go. With both lists empty any address is allowed except loopback, link-local
/// (which includes cloud metadata at 169.254.169.254), unspecified and multicast ones. With either list
/// non-empty only the listed hosts and networks are allowed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Host names or IP literals, e.g. `soar.corp.example`, `127.0.0.1`.
    pub allow_hosts: Vec<String>,
    /// Networks, e.g. `10.20.0.0/16`.
    pub allow_cidrs: Vec<String>,
}

/// humantime for a list of durations (`["5s", "5m"]`).
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| humantime_serde::Serde::from(*d))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v: Vec<humantime_serde::Serde<Duration>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|d| d.into_inner()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config_with_defaults() {
        let cfg: RespondConfig = serde_json::from_value(serde_json::json!({
            "destinations": [
                {"name": "soc", "url": "https://soar.example/hook", "secret": "whsec_abc=",
                 "auth": {"type": "bearer", "token": "t0k"}, "min_severity": "high"},
                {"name": "am", "url": "https://am.example/", "format": "alertmanager",
                 "auth": {"type": "header", "name": "ph-auth-token", "value": "v"}, "detectors": ["shadow_ai"]}
            ],
            "grouping": {"group_wait": "100ms"},
            "delivery": {"retry_schedule": ["10ms", "1s"]},
            "egress": {"allow_hosts": ["127.0.0.1"]}
        }))
        .unwrap();
        assert_eq!(cfg.destinations[0].format, Format::Ocsf);
        assert_eq!(cfg.destinations[0].min_severity, Severity::High);
        assert_eq!(cfg.destinations[1].min_severity, Severity::Informational);
        assert_eq!(cfg.destinations[1].format, Format::Alertmanager);
        assert_eq!(cfg.grouping.group_wait, Duration::from_millis(100));
        assert_eq!(cfg.grouping.resolve_after, Duration::from_secs(900));
        assert_eq!(
            cfg.delivery.retry_schedule,
            vec![Duration::from_millis(10), Duration::from_secs(1)]
        );
        assert_eq!(DeliveryConfig::default().retry_schedule.len(), 7);
        let printed = format!("{cfg:?} {}", serde_json::to_string(&cfg).unwrap());
        assert!(!printed.contains("t0k") && !printed.contains("whsec_abc"));
    }
}
