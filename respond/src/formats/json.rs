//! Vigil's own alert record (the `alerts` table row) plus finding metadata, in the Standard Webhooks
//! envelope, for receivers written against Vigil itself.

use serde_json::{json, Value};

use super::RenderContext;
use crate::finding::Finding;
use crate::ocsf::{envelope, rfc3339_us};

pub(super) fn body(f: &Finding, ctx: &RenderContext<'_>) -> Value {
    let data = json!({
        "finding": {
            "id": f.finding_id,
            "fingerprint": f.fingerprint,
            "revision": f.revision,
            "activity": f.activity.as_str(),
            "severity": f.severity.as_str(),
            "count": f.count,
            "first_seen": rfc3339_us(f.first_seen_us),
            "last_seen": rfc3339_us(f.last_seen_us),
            "alert_ids": f.alert_ids,
            "test": f.is_test,
        },
        "alert": f.alert,
    });
    envelope(f.activity, ctx.now_us, data)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{finding, render_json};
    use crate::config::Format;
    use crate::finding::Activity;
    use vigil_detect::alert::{Alert, Severity};

    #[test]
    fn carries_the_alert_record() {
        let f = finding(Activity::Update, Severity::Medium);
        let v = render_json(Format::Json, &f);
        assert_eq!(v["type"], "finding.updated");
        let alert: Alert = serde_json::from_value(v["data"]["alert"].clone()).unwrap();
        assert_eq!(alert, f.alert);
        assert_eq!(v["data"]["finding"]["revision"], 1);
        assert_eq!(v["data"]["finding"]["count"], 2);
    }
}
