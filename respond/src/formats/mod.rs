//! Body per receiving product. Bodies are rendered once, when a notification is queued, so every retry of
//! one `webhook-id` carries the same bytes.

mod alertmanager;
mod json;
mod splunk_soar;
mod thehive;
mod xsoar;

use crate::config::Format;
use crate::finding::{Activity, Finding};

/// What a body may mention besides the finding.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    /// Destination name (Alertmanager's `receiver`).
    pub destination: &'a str,
    /// Time of rendering, microseconds UTC (envelope timestamps).
    pub now_us: i64,
    /// Vigil's version for `metadata.product.version`.
    pub product_version: &'a str,
}

/// Whether a format has a meaning for this activity. TheHive, Splunk SOAR and XSOAR create a ticket per
/// POST and reject or duplicate a second one for the same reference, so they only get the Create.
pub fn accepts(format: Format, activity: Activity) -> bool {
    match format {
        Format::Ocsf | Format::Alertmanager | Format::Json => true,
        Format::Thehive | Format::SplunkSoar | Format::Xsoar => activity == Activity::Create,
    }
}

pub fn render(format: Format, f: &Finding, ctx: &RenderContext<'_>) -> Vec<u8> {
    let encode = |f: &Finding| {
        let value = match format {
            Format::Ocsf => return crate::ocsf::body(f, ctx.product_version, ctx.now_us),
            Format::Alertmanager => alertmanager::body(f, ctx),
            Format::Thehive => thehive::body(f, ctx),
            Format::SplunkSoar => splunk_soar::body(f, ctx),
            Format::Xsoar => xsoar::body(f, ctx),
            Format::Json => json::body(f, ctx),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    };
    // Shrunk (fewer ids, shorter texts, a shorter entity id) until it fits: receivers cap their bodies
    // (reference.md: keep a body under 20 KB), and a 413 would dead-letter the alert. The OCSF body
    // shrinks its own texts first, but not the entity id it repeats.
    let mut out = encode(f);
    for (ids, text) in [(10, 1024), (0, 256)] {
        if out.len() < crate::ocsf::MAX_BODY_BYTES {
            break;
        }
        out = encode(&shrunk(f, ids, text));
    }
    out
}

/// `f` with at most `ids` ids per list and its free texts cut to `text` bytes.
fn shrunk(f: &Finding, ids: usize, text: usize) -> Finding {
    use crate::ocsf::truncate;
    let mut f = f.clone();
    f.alert_ids.truncate(ids);
    f.evidence_event_ids.truncate(ids);
    let a = &mut f.alert;
    a.evidence_event_ids.truncate(ids);
    for field in [
        &mut a.title,
        &mut a.description,
        &mut a.evidence,
        &mut a.entity_id,
    ] {
        *field = truncate(field, text);
    }
    f
}

/// Human-readable summary used by the ticketing formats' description fields.
pub(crate) fn describe(f: &Finding) -> String {
    let a = &f.alert;
    let mut s = format!(
        "{}\n\nDetector: {}\nEntity: {} {}\nSeverity: {}\nDetections: {}\nFirst seen: {}\nLast seen: {}\nFingerprint: {}",
        crate::ocsf::truncate(&a.description, 4096),
        a.detector,
        a.entity_type,
        a.entity_id,
        f.severity.as_str(),
        f.count,
        crate::ocsf::rfc3339_us(f.first_seen_us),
        crate::ocsf::rfc3339_us(f.last_seen_us),
        f.fingerprint,
    );
    if let Some(o) = &a.owasp {
        s.push_str(&format!("\nOWASP: {o}"));
    }
    if let Some(t) = &a.atlas {
        s.push_str(&format!("\nMITRE ATLAS: {t}"));
    }
    if !a.evidence.is_empty() {
        s.push_str(&format!(
            "\n\nEvidence (masked): {}",
            crate::ocsf::truncate(&a.evidence, 2048)
        ));
    }
    s
}

/// Tags shared by the ticketing formats.
pub(crate) fn tags(f: &Finding) -> Vec<String> {
    let a = &f.alert;
    let mut t = vec![
        "vigil".to_string(),
        format!("detector:{}", a.detector),
        format!("{}:{}", a.entity_type, a.entity_id),
    ];
    t.extend(a.owasp.iter().map(|o| format!("owasp:{o}")));
    t.extend(a.atlas.iter().map(|x| format!("atlas:{x}")));
    if f.is_test {
        t.push("test".into());
    }
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::grouping::tests::alert;
    use crate::grouping::GroupState;
    use vigil_detect::alert::Severity;

    pub fn finding(activity: Activity, severity: Severity) -> Finding {
        let mut g = GroupState::new(&alert("fp1", severity, 0), 0);
        g.observe(&alert("fp1", severity, 1), 1);
        g.notify(activity, 2)
    }

    pub fn ctx() -> RenderContext<'static> {
        RenderContext {
            destination: "soc",
            now_us: 1_700_000_000_000_000,
            product_version: "0.1.0",
        }
    }

    pub fn render_json(format: Format, f: &Finding) -> serde_json::Value {
        serde_json::from_slice(&render(format, f, &ctx())).unwrap()
    }

    #[test]
    fn every_format_keeps_a_huge_alert_under_20kb() {
        let mut a = alert("fp", Severity::Critical, 0);
        a.description = "x".repeat(100_000);
        a.evidence = "é".repeat(50_000);
        a.title = "t".repeat(10_000);
        a.entity_id = "u".repeat(10_000);
        a.evidence_event_ids = (0..5000).map(|i| format!("{i:0>200}")).collect();
        let f = GroupState::new(&a, 0).notify(Activity::Create, 0);
        for format in [
            Format::Ocsf,
            Format::Alertmanager,
            Format::Thehive,
            Format::SplunkSoar,
            Format::Xsoar,
            Format::Json,
        ] {
            let body = render(format, &f, &ctx());
            assert!(
                body.len() < crate::ocsf::MAX_BODY_BYTES,
                "{format:?}: {} bytes",
                body.len()
            );
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
        // An ordinary alert is not cut.
        let ordinary = finding(Activity::Create, Severity::High);
        let v = render_json(Format::Xsoar, &ordinary);
        assert_eq!(
            v["rawJson"]["finding_info"]["title"],
            ordinary.alert.title.as_str()
        );
    }

    #[test]
    fn ticketing_formats_take_only_create() {
        assert!(accepts(Format::Thehive, Activity::Create));
        assert!(!accepts(Format::Thehive, Activity::Update));
        assert!(!accepts(Format::SplunkSoar, Activity::Close));
        assert!(accepts(Format::Alertmanager, Activity::Close));
        assert!(accepts(Format::Ocsf, Activity::Update));
    }
}
