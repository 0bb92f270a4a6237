//! TheHive 5 alert (`POST /api/v1/alert`): `sourceRef` is the finding id, so TheHive's own
//! (type, source, sourceRef) uniqueness rejects a duplicate if a retry arrives after a lost answer.

use serde_json::{json, Value};

use super::{describe, tags, RenderContext};
use crate::finding::Finding;
use crate::ocsf::{truncate, us_to_ms};
use vigil_detect::alert::Severity;

/// TheHive severities: 1 low, 2 medium, 3 high, 4 critical.
fn severity(s: Severity) -> u8 {
    match s {
        Severity::Informational | Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

pub(super) fn body(f: &Finding, _ctx: &RenderContext<'_>) -> Value {
    let a = &f.alert;
    let mut observables = vec![json!({
        "dataType": "other",
        "data": format!("{}:{}", a.entity_type, a.entity_id),
        "message": "entity",
        "tags": [format!("entity:{}", a.entity_type)],
    })];
    observables.extend(f.evidence_event_ids.iter().take(20).map(|id| {
        json!({"dataType": "other", "data": id, "message": "Vigil event_id", "tags": ["vigil:event"]})
    }));
    json!({
        "type": if f.is_test { "vigil-test" } else { "vigil-finding" },
        "source": "vigil",
        "sourceRef": f.finding_id,
        "title": truncate(&a.title, 512),
        "description": describe(f),
        "severity": severity(f.severity),
        "date": us_to_ms(f.first_seen_us),
        "tags": tags(f),
        "tlp": 2,
        "pap": 2,
        "observables": observables,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{finding, render_json};
    use crate::config::Format;
    use crate::finding::Activity;
    use vigil_detect::alert::Severity;

    #[test]
    fn alert_create_fields() {
        let f = finding(Activity::Create, Severity::Critical);
        let v = render_json(Format::Thehive, &f);
        for k in ["type", "source", "sourceRef", "title", "description"] {
            assert!(v[k].as_str().is_some_and(|s| !s.is_empty()), "required {k}");
        }
        assert_eq!(v["sourceRef"], f.finding_id.as_str());
        assert_eq!(v["severity"], 4);
        assert_eq!(v["observables"][0]["dataType"], "other");
        assert_eq!(v["observables"][0]["data"], "user:u1");
        assert!(v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "detector:prompt_injection"));
        assert!(v["description"].as_str().unwrap().contains("AML.T0051"));
        assert_eq!(
            render_json(
                Format::Thehive,
                &finding(Activity::Create, Severity::Informational)
            )["severity"],
            1
        );
    }
}
