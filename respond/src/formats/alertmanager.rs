//! Prometheus Alertmanager webhook v4 body, so anything that consumes Alertmanager notifications
//! (Grafana OnCall, PagerDuty bridges, custom receivers) consumes Vigil's findings too.

use serde_json::{json, Map, Value};

use super::RenderContext;
use crate::finding::{Activity, Finding};
use crate::ocsf::{rfc3339_us, truncate};

/// Alertmanager's "zero time" for a firing alert's `endsAt`.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub(super) fn body(f: &Finding, ctx: &RenderContext<'_>) -> Value {
    let a = &f.alert;
    let status = if f.activity == Activity::Close {
        "resolved"
    } else {
        "firing"
    };
    let mut labels = Map::new();
    labels.insert("alertname".into(), a.detector.clone().into());
    labels.insert("detector".into(), a.detector.clone().into());
    labels.insert("severity".into(), f.severity.as_str().into());
    labels.insert("entity_type".into(), a.entity_type.clone().into());
    labels.insert("entity_id".into(), a.entity_id.clone().into());
    if let Some(o) = &a.owasp {
        labels.insert("owasp".into(), o.clone().into());
    }
    if let Some(t) = &a.atlas {
        labels.insert("atlas".into(), t.clone().into());
    }
    if f.is_test {
        labels.insert("test".into(), "true".into());
    }
    let annotations = json!({
        "summary": truncate(&a.title, 1024),
        "description": truncate(&a.description, 4096),
        "evidence": truncate(&a.evidence, 2048),
        "finding_id": f.finding_id,
        "count": f.count.to_string(),
    });
    let ends_at = if f.activity == Activity::Close {
        rfc3339_us(ctx.now_us)
    } else {
        ZERO_TIME.to_string()
    };
    let group_labels = json!({"fingerprint": f.fingerprint});
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{fingerprint=\"{}\"}}", f.fingerprint),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": ctx.destination,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339_us(f.first_seen_us),
            "endsAt": ends_at,
            "generatorURL": "",
            "fingerprint": f.fingerprint,
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
    fn webhook_v4_fields() {
        let v = render_json(
            Format::Alertmanager,
            &finding(Activity::Create, Severity::High),
        );
        for k in [
            "version",
            "groupKey",
            "truncatedAlerts",
            "status",
            "receiver",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "alerts",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["receiver"], "soc");
        let a = &v["alerts"][0];
        for k in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
        ] {
            assert!(a.get(k).is_some(), "alert missing {k}");
        }
        assert_eq!(a["labels"]["alertname"], "prompt_injection");
        assert_eq!(a["labels"]["severity"], "high");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(a["fingerprint"], "fp1");
        assert!(chrono::DateTime::parse_from_rfc3339(a["startsAt"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn close_is_resolved_with_end_time() {
        let v = render_json(
            Format::Alertmanager,
            &finding(Activity::Close, Severity::Low),
        );
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["alerts"][0]["status"], "resolved");
        assert!(
            chrono::DateTime::parse_from_rfc3339(v["alerts"][0]["endsAt"].as_str().unwrap())
                .is_ok()
        );
        assert_ne!(v["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    }
}
