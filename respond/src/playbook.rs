//! Which destinations and playbooks a finding goes to, and the body of a playbook action.

use serde_json::{json, Value};
use vigil_detect::alert::Severity;

use crate::config::{DestinationConfig, PlaybookConfig};
use crate::finding::Finding;
use crate::ocsf::{envelope, rfc3339_us};

fn detector_listed(list: &[String], detector: &str) -> bool {
    list.is_empty() || list.iter().any(|d| d == detector)
}

/// A destination's filters: minimum severity, detector allow and deny lists.
pub fn destination_matches(d: &DestinationConfig, detector: &str, severity: Severity) -> bool {
    severity >= d.min_severity
        && detector_listed(&d.detectors, detector)
        && !d.exclude_detectors.iter().any(|x| x == detector)
}

pub fn playbook_matches(p: &PlaybookConfig, detector: &str, severity: Severity) -> bool {
    severity >= p.min_severity && detector_listed(&p.detectors, detector)
}

/// The action webhook (`type: response.requested`): what to do, to which entity, because of which finding.
pub fn action_body(p: &PlaybookConfig, f: &Finding, now_us: i64) -> Vec<u8> {
    let a = &f.alert;
    let data: Value = json!({
        "playbook": p.name,
        "action": p.action,
        "target": {"type": a.entity_type, "id": a.entity_id},
        "finding": {
            "id": f.finding_id,
            "fingerprint": f.fingerprint,
            "detector": a.detector,
            "severity": f.severity.as_str(),
            "title": a.title,
            "count": f.count,
            "first_seen": rfc3339_us(f.first_seen_us),
            "alert_ids": f.alert_ids,
        },
    });
    let mut v = envelope(f.activity, now_us, data);
    v["type"] = Value::from("response.requested");
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Activity;
    use crate::formats::tests::finding;

    fn pb(detectors: &[&str], min: Severity) -> PlaybookConfig {
        PlaybookConfig {
            name: "revoke".into(),
            detectors: detectors.iter().map(|s| s.to_string()).collect(),
            min_severity: min,
            action: "revoke_agent_token".into(),
            url: "http://127.0.0.1/x".into(),
            auth: None,
            secret: None,
        }
    }

    #[test]
    fn matching_by_detector_and_severity() {
        assert!(playbook_matches(
            &pb(&["prompt_injection"], Severity::High),
            "prompt_injection",
            Severity::Critical
        ));
        assert!(!playbook_matches(
            &pb(&["prompt_injection"], Severity::High),
            "prompt_injection",
            Severity::Medium
        ));
        assert!(!playbook_matches(
            &pb(&["shadow_ai"], Severity::Low),
            "prompt_injection",
            Severity::Critical
        ));
        assert!(playbook_matches(
            &pb(&[], Severity::Low),
            "anything",
            Severity::Low
        ));
        let d = DestinationConfig {
            name: "d".into(),
            url: "http://x".into(),
            format: Default::default(),
            auth: None,
            secret: None,
            min_severity: Severity::Medium,
            detectors: vec![],
            exclude_detectors: vec!["shadow_ai".into()],
        };
        assert!(destination_matches(
            &d,
            "prompt_injection",
            Severity::Medium
        ));
        assert!(!destination_matches(&d, "prompt_injection", Severity::Low));
        assert!(!destination_matches(&d, "shadow_ai", Severity::Critical));
    }

    #[test]
    fn action_body_names_action_and_target() {
        let f = finding(Activity::Create, Severity::Critical);
        let v: Value =
            serde_json::from_slice(&action_body(&pb(&[], Severity::High), &f, 0)).unwrap();
        assert_eq!(v["type"], "response.requested");
        assert_eq!(v["data"]["action"], "revoke_agent_token");
        assert_eq!(v["data"]["target"]["id"], "u1");
        assert_eq!(v["data"]["finding"]["id"], f.finding_id.as_str());
    }
}
