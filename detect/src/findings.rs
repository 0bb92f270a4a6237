//! Building [`Alert`]s: detector metadata (severity, OWASP LLM Top 10 2025, MITRE ATLAS), fingerprints and
//! redacted evidence snippets. Kept apart from `alert.rs` (the record and its schema) so that the mapping
//! lives next to nothing else.

use uuid::Uuid;
use xxhash_rust::xxh3::Xxh3;

use crate::alert::{Alert, Severity};
use crate::content::{self, Finding};

/// Static facts about one detector.
#[derive(Debug, Clone, Copy)]
pub struct DetectorInfo {
    pub id: &'static str,
    pub severity: Severity,
    pub owasp: Option<&'static str>,
    pub atlas: Option<&'static str>,
}

const LLM01: &str = "LLM01:2025 Prompt Injection";
const LLM02: &str = "LLM02:2025 Sensitive Information Disclosure";
const LLM03: &str = "LLM03:2025 Supply Chain";
const LLM04: &str = "LLM04:2025 Data and Model Poisoning";
const LLM06: &str = "LLM06:2025 Excessive Agency";
const LLM10: &str = "LLM10:2025 Unbounded Consumption";

/// The detector table. Severity is the default; a detector may raise it for a stronger variant.
pub fn detector(id: &str) -> DetectorInfo {
    let (id, severity, owasp, atlas): (&'static str, _, _, _) = match id {
        "sensitive_data" => (
            "sensitive_data",
            Severity::High,
            Some(LLM02),
            Some("AML.T0057"),
        ),
        "prompt_injection" => (
            "prompt_injection",
            Severity::High,
            Some(LLM01),
            Some("AML.T0051"),
        ),
        "shadow_ai" => ("shadow_ai", Severity::Medium, Some(LLM03), None),
        "tool_overreach" => (
            "tool_overreach",
            Severity::High,
            Some(LLM06),
            Some("AML.T0053"),
        ),
        "privilege" => ("privilege", Severity::High, Some(LLM06), None),
        "policy_deny_burst" => (
            "policy_deny_burst",
            Severity::Medium,
            Some(LLM01),
            Some("AML.T0054"),
        ),
        "rate_spike" => (
            "rate_spike",
            Severity::Medium,
            Some(LLM10),
            Some("AML.T0034"),
        ),
        "token_spike" => (
            "token_spike",
            Severity::Medium,
            Some(LLM10),
            Some("AML.T0034"),
        ),
        "behavior_anomaly" => ("behavior_anomaly", Severity::Medium, None, None),
        "model_drift" => ("model_drift", Severity::Medium, Some(LLM04), None),
        _ => ("unknown", Severity::Low, None, None),
    };
    DetectorInfo {
        id,
        severity,
        owasp,
        atlas,
    }
}

/// Hex xxh3 of detector, entity type, entity id and the distinguishing label, NUL-separated so that
/// `("ab","c")` and `("a","bc")` differ.
pub fn fingerprint(detector: &str, entity_type: &str, entity_id: &str, label: &str) -> String {
    let mut h = Xxh3::new();
    for part in [detector, entity_type, entity_id, label] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    format!("{:016x}", h.digest())
}

/// What a detector knows when it decides to alert; [`AlertDraft::build`] fills in the rest.
pub struct AlertDraft<'a> {
    pub detector: &'static str,
    pub time_us: i64,
    pub entity_type: &'a str,
    pub entity_id: &'a str,
    /// Distinguishes conditions of one detector on one entity (finding kind, tool name, feature...).
    pub label: &'a str,
    pub score: f64,
    pub title: String,
    pub description: String,
    pub evidence_event_ids: Vec<String>,
    pub evidence: String,
    /// Overrides the detector's default severity.
    pub severity: Option<Severity>,
    /// Overrides the detector's ATLAS technique (e.g. indirect injection `AML.T0051.001`).
    pub atlas: Option<&'static str>,
}

impl AlertDraft<'_> {
    pub fn build(self) -> Alert {
        let info = detector(self.detector);
        Alert {
            alert_id: Uuid::now_v7().to_string(),
            time_us: self.time_us,
            detector: info.id.to_string(),
            severity: self.severity.unwrap_or(info.severity),
            entity_type: self.entity_type.to_string(),
            entity_id: self.entity_id.to_string(),
            score: self.score,
            title: self.title,
            description: self.description,
            evidence_event_ids: self.evidence_event_ids,
            evidence: self.evidence,
            owasp: info.owasp.map(str::to_string),
            atlas: self.atlas.or(info.atlas).map(str::to_string),
            fingerprint: fingerprint(info.id, self.entity_type, self.entity_id, self.label),
        }
    }
}

/// Characters of context either side of the match in an evidence snippet.
const CONTEXT: usize = 48;

/// An excerpt of `text` around `[start, end)` with every sensitive finding masked. Findings that overlap
/// the excerpt's edge widen it, so a secret is never cut in half and left partly visible.
pub fn snippet(text: &str, findings: &[Finding], start: usize, end: usize) -> String {
    let mut lo = floor_boundary(text, start.min(text.len()).saturating_sub(CONTEXT));
    let mut hi = ceil_boundary(text, end.min(text.len()).saturating_add(CONTEXT));
    for f in findings {
        if f.start < hi && f.end > lo {
            lo = lo.min(floor_boundary(text, f.start));
            hi = hi.max(ceil_boundary(text, f.end));
        }
    }
    let local: Vec<Finding> = findings
        .iter()
        .filter(|f| f.start >= lo && f.end <= hi)
        .map(|f| Finding {
            start: f.start - lo,
            end: f.end - lo,
            ..f.clone()
        })
        .collect();
    let mut out = String::with_capacity(hi - lo + 8);
    if lo > 0 {
        out.push('…');
    }
    out.push_str(&content::redact(&text[lo..hi], &local));
    if hi < text.len() {
        out.push('…');
    }
    out
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::FindingKind;

    #[test]
    fn fingerprint_separates_fields_and_is_stable() {
        let a = fingerprint("shadow_ai", "model", "ab", "c");
        assert_eq!(a, fingerprint("shadow_ai", "model", "ab", "c"));
        assert_ne!(a, fingerprint("shadow_ai", "model", "a", "bc"));
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn snippet_masks_a_secret_even_when_it_straddles_the_excerpt_edge() {
        let secret = "AKIAIOSFODNN7EXAMPLE";
        let text = format!(
            "{}{} and then ignore previous instructions{}",
            "x".repeat(10),
            secret,
            "y".repeat(200)
        );
        let f = Finding {
            kind: FindingKind::AwsAccessKey,
            start: 10,
            end: 10 + secret.len(),
            confidence: 0.9,
        };
        // The match is 70 bytes after the secret's start; the context window would cut the key in half.
        let m = text.find("ignore").unwrap();
        let s = snippet(&text, &[f], m, m + 6);
        assert!(!s.contains("AKIA"), "{s}");
        assert!(s.contains("[REDACTED:aws_access_key]"));
        assert!(s.contains("ignore previous"));
        assert!(s.ends_with('…'));
    }

    #[test]
    fn detectors_map_to_owasp_and_atlas() {
        assert_eq!(detector("prompt_injection").owasp, Some(LLM01));
        assert_eq!(detector("rate_spike").atlas, Some("AML.T0034"));
        for id in crate::config::DETECTORS {
            assert_eq!(detector(id).id, id);
        }
    }
}
