//! OCSF 1.8.0 Detection Finding (class 2004) for a [`Finding`], and the Standard Webhooks envelope.
//!
//! Field names follow reference.md section 4; long texts and id lists are cut so a body stays under
//! [`MAX_BODY_BYTES`] whatever a detector put in its alert.

use serde_json::{json, Value};

use crate::finding::{Activity, Finding};

pub const OCSF_VERSION: &str = "1.8.0";
/// Receivers (and queues in front of them) commonly cap webhook bodies; we stay well below.
pub const MAX_BODY_BYTES: usize = 20 * 1024;
const MAX_TEXT: usize = 4096;
const MAX_EVIDENCE: usize = 2048;

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

pub fn us_to_ms(us: i64) -> i64 {
    us.div_euclid(1000)
}

pub fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// OCSF analytic `type_id`: behaviour models first (`behavior_anomaly` is also an "anomaly"), then the
/// statistical detectors that score against baselines; the rest are rules.
fn analytic_type(detector: &str) -> (u8, &'static str) {
    let d = detector.to_ascii_lowercase();
    if d.contains("behavio") {
        (2, "Behavioral")
    } else if ["drift", "anomal", "baseline", "spike", "rate", "volume"]
        .iter()
        .any(|k| d.contains(k))
    {
        (3, "Statistical")
    } else {
        (1, "Rule")
    }
}

fn severity_name(id: u8) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

/// The Detection Finding object (`data` of the envelope; also XSOAR's `rawJson`).
pub fn detection_finding(f: &Finding, product_version: &str) -> Value {
    detection_finding_sized(
        f,
        product_version,
        f.evidence_event_ids.len(),
        MAX_TEXT,
        MAX_EVIDENCE,
    )
}

fn detection_finding_sized(
    f: &Finding,
    product_version: &str,
    events: usize,
    text: usize,
    evidence: usize,
) -> Value {
    let a = &f.alert;
    let sev = f.severity.ocsf_id();
    let (status_id, status) = match f.activity {
        Activity::Close => (4, "Resolved"),
        _ => (1, "New"),
    };
    let (analytic_type_id, analytic_type_name) = analytic_type(&a.detector);
    let confidence_id = if analytic_type_id == 1 { 3 } else { 2 };
    let mut types = vec![Value::from(a.detector.clone())];
    if let Some(o) = &a.owasp {
        types.push(Value::from(o.clone()));
    }
    let related: Vec<Value> = f
        .evidence_event_ids
        .iter()
        .take(events)
        .map(|id| json!({"uid": id}))
        .collect();
    let attacks: Vec<Value> = a
        .atlas
        .iter()
        .map(|t| json!({"technique": {"uid": t}, "version": "ATLAS"}))
        .collect();
    let mut labels = vec![format!("detector:{}", a.detector)];
    if f.is_test {
        labels.push("test".into());
    }
    let mut v = json!({
        "activity_id": f.activity.ocsf_id(),
        "activity_name": f.activity.ocsf_name(),
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 200400 + u32::from(f.activity.ocsf_id()),
        "type_name": format!("Detection Finding: {}", f.activity.ocsf_name()),
        "time": us_to_ms(f.last_seen_us),
        "severity_id": sev,
        "severity": severity_name(sev),
        "status_id": status_id,
        "status": status,
        "is_alert": f.activity == Activity::Create,
        "confidence_id": confidence_id,
        "risk_score": u32::from(sev) * 20,
        "message": truncate(&a.title, text),
        "count": f.count,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Vigil", "vendor_name": "Vigil", "version": product_version},
            "uid": format!("{}:{}", f.finding_id, f.revision),
            "correlation_uid": f.fingerprint,
            "event_code": a.detector,
            "labels": labels,
        },
        "finding_info": {
            "uid": f.finding_id,
            "title": truncate(&a.title, text),
            "desc": truncate(&a.description, text),
            "types": types,
            "analytic": {"uid": a.detector, "name": a.detector, "type_id": analytic_type_id, "type": analytic_type_name},
            "first_seen_time": us_to_ms(f.first_seen_us),
            "last_seen_time": us_to_ms(f.last_seen_us),
            "related_events": related,
            "related_events_count": f.evidence_event_ids.len(),
        },
        "resources": [{"type": a.entity_type, "uid": a.entity_id, "name": a.entity_id}],
        "evidences": [{"data": {"excerpt": truncate(&a.evidence, evidence), "score": a.score, "alert_id": a.alert_id}}],
        "attacks": attacks,
        "unmapped": {"revision": f.revision, "owasp": a.owasp, "alert_ids": f.alert_ids, "test": f.is_test},
    });
    if a.atlas.is_none() {
        if let Some(o) = v.as_object_mut() {
            o.remove("attacks");
        }
    }
    v
}

/// The Standard Webhooks payload: `{type, timestamp, data}`.
pub fn envelope(activity: Activity, timestamp_us: i64, data: Value) -> Value {
    json!({"type": activity.event_type(), "timestamp": rfc3339_us(timestamp_us), "data": data})
}

/// The `ocsf` format's body, shrunk (fewer related events, shorter texts) until it fits [`MAX_BODY_BYTES`].
pub fn body(f: &Finding, product_version: &str, now_us: i64) -> Vec<u8> {
    let steps = [
        (usize::MAX, MAX_TEXT, MAX_EVIDENCE),
        (10, 1024, 512),
        (0, 256, 128),
    ];
    let mut out = Vec::new();
    for (events, text, evidence) in steps {
        let data = detection_finding_sized(f, product_version, events, text, evidence);
        out = serde_json::to_vec(&envelope(f.activity, now_us, data)).unwrap_or_default();
        if out.len() < MAX_BODY_BYTES {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grouping::tests::alert;
    use crate::grouping::GroupState;
    use vigil_detect::alert::Severity;

    fn finding(activity: Activity) -> Finding {
        let mut g = GroupState::new(&alert("fp1", Severity::High, 0), 0);
        g.observe(&alert("fp1", Severity::High, 1), 1);
        g.notify(activity, 2)
    }

    #[test]
    fn detection_finding_fields() {
        let f = finding(Activity::Create);
        let body: Value =
            serde_json::from_slice(&body(&f, "0.1.0", 1_700_000_000_000_000)).unwrap();
        assert_eq!(body["type"], "finding.created");
        assert!(body["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20"));
        let d = &body["data"];
        assert_eq!(d["class_uid"], 2004);
        assert_eq!(d["category_uid"], 2);
        assert_eq!(d["type_uid"], 200401);
        assert_eq!(d["activity_id"], 1);
        assert_eq!(d["severity_id"], 4);
        assert_eq!(d["status_id"], 1);
        assert_eq!(d["is_alert"], true);
        assert_eq!(d["metadata"]["version"], "1.8.0");
        assert_eq!(d["metadata"]["product"]["name"], "Vigil");
        assert_eq!(d["finding_info"]["uid"], f.finding_id.as_str());
        assert_eq!(d["finding_info"]["analytic"]["type_id"], 1);
        assert_eq!(d["finding_info"]["first_seen_time"], 1_700_000_000_000i64);
        assert_eq!(d["finding_info"]["related_events"][1]["uid"], "e1");
        assert_eq!(d["attacks"][0]["technique"]["uid"], "AML.T0051");
        assert_eq!(d["resources"][0]["uid"], "u1");
        assert_eq!(d["count"], 2);
    }

    #[test]
    fn analytic_types_by_detector() {
        assert_eq!(analytic_type("behavior_anomaly").0, 2);
        assert_eq!(analytic_type("rate_spike").0, 3);
        assert_eq!(analytic_type("model_drift").0, 3);
        assert_eq!(analytic_type("shadow_ai").0, 1);
    }

    #[test]
    fn close_is_resolved_and_not_an_alert() {
        let d = detection_finding(&finding(Activity::Close), "0.1.0");
        assert_eq!(d["type_uid"], 200403);
        assert_eq!(d["status_id"], 4);
        assert_eq!(d["is_alert"], false);
    }

    #[test]
    fn huge_alert_stays_under_20kb() {
        let mut a = alert("fp", Severity::Critical, 0);
        a.description = "x".repeat(100_000);
        a.evidence = "é".repeat(50_000);
        a.title = "t".repeat(10_000);
        a.evidence_event_ids = (0..5000).map(|i| format!("{i:0>200}")).collect();
        let mut g = GroupState::new(&a, 0);
        let f = g.notify(Activity::Create, 0);
        let b = body(&f, "0.1.0", 0);
        assert!(b.len() < MAX_BODY_BYTES, "{} bytes", b.len());
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["data"]["finding_info"]["related_events_count"], 50);
    }
}
