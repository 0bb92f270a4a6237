//! Cortex XSOAR generic webhook: `{name, type, severity, occurred, details, rawJson}`, with the OCSF
//! finding as `rawJson` so XSOAR mappers can reach every field.

use serde_json::{json, Value};

use super::{describe, RenderContext};
use crate::finding::Finding;
use crate::ocsf::{detection_finding, rfc3339_us, truncate};
use vigil_detect::alert::Severity;

/// XSOAR severities: 0.5 informational, 1 low, 2 medium, 3 high, 4 critical.
fn severity(s: Severity) -> f64 {
    match s {
        Severity::Informational => 0.5,
        Severity::Low => 1.0,
        Severity::Medium => 2.0,
        Severity::High => 3.0,
        Severity::Critical => 4.0,
    }
}

pub(super) fn body(f: &Finding, ctx: &RenderContext<'_>) -> Value {
    json!({
        "name": truncate(&f.alert.title, 512),
        "type": if f.is_test { "Vigil Test" } else { "Vigil Finding" },
        "severity": severity(f.severity),
        "occurred": rfc3339_us(f.first_seen_us),
        "details": describe(f),
        "rawJson": detection_finding(f, ctx.product_version),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{finding, render_json};
    use crate::config::Format;
    use crate::finding::Activity;
    use vigil_detect::alert::Severity;

    #[test]
    fn generic_webhook_fields() {
        let f = finding(Activity::Create, Severity::High);
        let v = render_json(Format::Xsoar, &f);
        assert!(v["name"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(v["type"], "Vigil Finding");
        assert_eq!(v["severity"], 3.0);
        assert!(chrono::DateTime::parse_from_rfc3339(v["occurred"].as_str().unwrap()).is_ok());
        assert_eq!(v["rawJson"]["class_uid"], 2004);
        assert_eq!(v["rawJson"]["finding_info"]["uid"], f.finding_id.as_str());
    }
}
