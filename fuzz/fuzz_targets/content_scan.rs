//! The content scanners on arbitrary text: prompts, responses and tool arguments come straight from telemetry.
//!
//! Properties: no panic; `scan_sensitive` findings are in bounds, on character boundaries, sorted and
//! non-overlapping (its documented contract, which `redact` relies on); `redact` of those findings keeps every
//! other byte and replaces each finding by its mask; `redact` of arbitrary, hostile findings (out of bounds,
//! overlapping, mid-character) never panics; injection and tool-argument findings are in bounds, with a score
//! in 0..=1.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_detect::content::{
    redact, scan_injection, scan_sensitive, scan_tool_arguments, Finding, FindingKind,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let findings = scan_sensitive(text);
    let mut previous_end = 0;
    for f in &findings {
        assert!(
            f.start < f.end && f.end <= text.len(),
            "finding out of bounds: {f:?} in {} bytes",
            text.len()
        );
        assert!(
            text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
            "finding splits a character: {f:?}"
        );
        assert!(
            f.start >= previous_end,
            "findings overlap or are unsorted: {findings:?}"
        );
        assert!(
            (0.0..=1.0).contains(&f.confidence),
            "confidence out of range: {f:?}"
        );
        previous_end = f.end;
    }

    let redacted = redact(text, &findings);
    let mut expected = String::with_capacity(text.len());
    let mut pos = 0;
    for f in &findings {
        expected.push_str(&text[pos..f.start]);
        expected.push_str(&format!("[REDACTED:{}]", f.kind.as_str()));
        pos = f.end;
    }
    expected.push_str(&text[pos..]);
    assert_eq!(
        redacted, expected,
        "redact did not replace exactly the findings"
    );

    // Findings from elsewhere (a stale offset, another text) must be skipped, not sliced.
    let hostile: Vec<Finding> = data
        .chunks_exact(2)
        .take(8)
        .map(|pair| Finding {
            kind: FindingKind::GenericSecret,
            start: usize::from(pair[0]),
            end: usize::from(pair[1]),
            confidence: 0.5,
        })
        .collect();
    let _ = redact(text, &hostile);

    if let Some(finding) = scan_injection(text) {
        assert!(
            (0.0..=1.0).contains(&finding.score),
            "injection score out of range: {finding:?}"
        );
        assert!(
            finding.start <= finding.end && finding.end <= text.len(),
            "injection range out of bounds: {finding:?}"
        );
        assert!(
            !finding.reasons.is_empty(),
            "an injection finding without a reason"
        );
    }

    if let Some(finding) = scan_tool_arguments(text) {
        assert!(
            finding.start <= finding.end && finding.end <= text.len(),
            "argument range out of bounds: {finding:?}"
        );
        assert!(
            ["sql_injection", "shell_injection", "path_traversal"].contains(&finding.kind),
            "unknown argument finding kind {finding:?}"
        );
    }
});
