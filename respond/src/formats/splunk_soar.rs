//! Splunk SOAR container (`POST /rest/container`) with one artifact; `source_data_identifier` is the
//! finding id, which SOAR uses to refuse duplicate containers.

use serde_json::{json, Value};

use super::{describe, tags, RenderContext};
use crate::finding::Finding;
use crate::ocsf::{rfc3339_us, truncate};
use vigil_detect::alert::Severity;

/// SOAR's built-in severities are low, medium and high.
fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Informational | Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High | Severity::Critical => "high",
    }
}

pub(super) fn body(f: &Finding, _ctx: &RenderContext<'_>) -> Value {
    let a = &f.alert;
    json!({
        "name": truncate(&a.title, 512),
        "label": "events",
        "description": describe(f),
        "severity": severity(f.severity),
        "status": "new",
        "source_data_identifier": f.finding_id,
        "start_time": rfc3339_us(f.first_seen_us),
        "tags": tags(f),
        "data": {"fingerprint": f.fingerprint, "count": f.count, "vigil_severity": f.severity.as_str(), "test": f.is_test},
        "artifacts": [{
            "name": format!("{} on {} {}", a.detector, a.entity_type, a.entity_id),
            "label": "event",
            "severity": severity(f.severity),
            "source_data_identifier": format!("{}-artifact", f.finding_id),
            "run_automation": true,
            "cef": {
                "detector": a.detector,
                "entityType": a.entity_type,
                "entityId": a.entity_id,
                "score": a.score,
                "owasp": a.owasp,
                "atlas": a.atlas,
                "evidence": truncate(&a.evidence, 2048),
                "eventIds": f.evidence_event_ids.join(","),
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{finding, render_json};
    use crate::config::Format;
    use crate::finding::Activity;
    use vigil_detect::alert::Severity;

    #[test]
    fn container_fields() {
        let f = finding(Activity::Create, Severity::Critical);
        let v = render_json(Format::SplunkSoar, &f);
        assert_eq!(v["source_data_identifier"], f.finding_id.as_str());
        assert_eq!(v["label"], "events");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["status"], "new");
        assert!(v["name"].as_str().is_some_and(|s| !s.is_empty()));
        let art = &v["artifacts"][0];
        assert_eq!(art["cef"]["entityId"], "u1");
        assert_eq!(art["run_automation"], true);
        assert_eq!(
            render_json(
                Format::SplunkSoar,
                &finding(Activity::Create, Severity::Medium)
            )["severity"],
            "medium"
        );
    }
}
