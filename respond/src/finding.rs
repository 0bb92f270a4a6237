//! A finding: one alert identity (fingerprint) as receivers see it, at one revision.
//!
//! Detections of the same fingerprint fold into one finding, so receivers get a Create, a few Updates and a
//! Close instead of one ticket per detection.

use serde::{Deserialize, Serialize};
use vigil_detect::alert::{Alert, Severity};

/// OCSF `activity_id` of a Detection Finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Create,
    Update,
    Close,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Create => "create",
            Activity::Update => "update",
            Activity::Close => "close",
        }
    }
    pub fn ocsf_id(self) -> u8 {
        match self {
            Activity::Create => 1,
            Activity::Update => 2,
            Activity::Close => 3,
        }
    }
    pub fn ocsf_name(self) -> &'static str {
        match self {
            Activity::Create => "Create",
            Activity::Update => "Update",
            Activity::Close => "Close",
        }
    }
    /// The Standard Webhooks envelope `type`.
    pub fn event_type(self) -> &'static str {
        match self {
            Activity::Create => "finding.created",
            Activity::Update => "finding.updated",
            Activity::Close => "finding.closed",
        }
    }
}

/// How many alert and event ids a finding carries (the body must stay small; counts stay exact).
pub const MAX_IDS: usize = 50;

/// What one notification says about a finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub finding_id: String,
    pub fingerprint: String,
    pub revision: u32,
    pub activity: Activity,
    /// Highest severity seen for the fingerprint.
    pub severity: Severity,
    /// Detections folded into this finding.
    pub count: u64,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// The latest detection at the highest severity: titles, entity and evidence come from it.
    pub alert: Alert,
    /// First [`MAX_IDS`] alert ids.
    pub alert_ids: Vec<String>,
    /// First [`MAX_IDS`] evidence event ids across the folded detections.
    pub evidence_event_ids: Vec<String>,
    /// `vigil alerts test`: receivers should be able to tell it apart.
    #[serde(default)]
    pub is_test: bool,
}

impl Finding {
    /// A clearly marked synthetic finding for `vigil alerts test`.
    pub fn test(now_us: i64) -> Finding {
        let id = uuid::Uuid::now_v7().to_string();
        let alert = Alert {
            alert_id: id.clone(),
            time_us: now_us,
            detector: "vigil_test".into(),
            severity: Severity::Informational,
            entity_type: "service".into(),
            entity_id: "vigil".into(),
            score: 0.0,
            title: "[TEST] Vigil test finding".into(),
            description:
                "This is a test notification sent by `vigil alerts test`. No action is needed."
                    .into(),
            evidence_event_ids: vec![],
            evidence: String::new(),
            owasp: None,
            atlas: None,
            fingerprint: format!("test-{id}"),
        };
        Finding {
            finding_id: id.clone(),
            fingerprint: alert.fingerprint.clone(),
            revision: 1,
            activity: Activity::Create,
            severity: Severity::Informational,
            count: 1,
            first_seen_us: now_us,
            last_seen_us: now_us,
            alert_ids: vec![id],
            evidence_event_ids: vec![],
            alert,
            is_test: true,
        }
    }
}
