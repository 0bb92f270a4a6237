//! The stateless half: sensitive data, prompt injection and tool-argument injection in prompts and
//! responses, and the text as stored (masked as `content_capture` says). Runs outside the state lock.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use vigil_ingest::schema::col;

use parking_lot::Mutex;

use super::columns::{actor, flag, get, vigil_attribute, Cols};
use super::history::{self, History, Scanned, Undo};
use super::Runtime;
use crate::alert::{Alert, Severity};
use crate::config::ContentCapture;
use crate::content::{self, Finding};
use crate::findings::{snippet, AlertDraft};

/// Sensitive data, prompt injection and tool-argument injection; returns the stored text columns, and
/// the tools' ranges of each masked prompt that has them, moved to index the masked text.
pub(super) fn scan(
    rt: &Runtime,
    c: &Cols,
    history: &Mutex<History>,
    alerts: &mut Vec<Alert>,
    recorded: &mut Vec<Undo>,
) -> (ArrayRef, ArrayRef, Vec<(usize, String)>) {
    let capture = rt.cfg.content_capture;
    let th = &rt.cfg.thresholds;
    let n = c.time.len();
    let mut masked: [Vec<(usize, String)>; 2] = [Vec::new(), Vec::new()];
    let mut moved = Vec::new();
    for i in 0..n {
        let inference = flag(&c.is_inference, i);
        let tool = flag(&c.is_tool, i);
        for (side, arr) in [(0usize, c.prompt), (1, c.response)] {
            let Some(text) = get(arr, i) else { continue };
            let direct = inference && side == 0;
            let indirect = tool && side == 1;
            let injection = (direct || indirect) && rt.on("prompt_injection");
            // Most texts are not scanned for injection, and its triggers are most of the prefilter.
            let hints = if injection {
                content::Hints::of(text)
            } else {
                content::Hints::sensitive_only(text)
            };
            let findings = content::scan_sensitive_with(text, &hints);
            let strong_found = findings
                .iter()
                .any(|f| f.confidence >= th.sensitive_min_confidence);
            let injected = if injection {
                content::scan_injection_with(text, &hints)
                    .filter(|f| f.score >= th.injection_min_score)
            } else {
                None
            };
            // A prompt's conversation, and what of it an earlier call already sent and had scanned. Only
            // prompts with findings are remembered: judged whole, a clean history adds nothing, so the
            // memory holds the conversations that had something to find, and clean prompts cost nothing.
            let conversation = (inference && side == 0 && (strong_found || injected.is_some()))
                .then(|| conversation_of(c, i))
                .flatten();
            let scanned = conversation
                .and_then(|(key, event)| history.lock().scanned_prefix(key, event, text));
            if inference && rt.on("sensitive_data") {
                let covered = scanned.map_or(0, |p| p.len);
                let (strong, repeated): (Vec<&Finding>, Vec<&Finding>) = findings
                    .iter()
                    .filter(|f| f.confidence >= th.sensitive_min_confidence)
                    .partition(|f| f.end > covered);
                if let Some(first) = strong.first() {
                    alerts.push(sensitive_alert(c, i, side, text, &findings, &strong, first));
                } else if !repeated.is_empty() {
                    count_repeated("sensitive_data");
                }
            }
            let mut score = 0.0;
            if injection {
                if let Some(inj) = injected {
                    score = inj.score;
                    // Once the history scored: what the new part says on its own, with its own
                    // evidence, else the whole if it scores higher than the history did (a stronger or
                    // an added signal). `None` as the text: judged on the whole prompt.
                    let raise =
                        match scanned.filter(|p| p.injection_score >= th.injection_min_score) {
                            None => Some((None, inj)),
                            Some(p) => match fresh_part(text, p.len, th) {
                                Some((fresh_text, fresh)) => Some((Some(fresh_text), fresh)),
                                None if inj.score > p.injection_score + 1e-4 => Some((None, inj)),
                                None => {
                                    count_repeated("prompt_injection");
                                    None
                                }
                            },
                        };
                    if let Some((judged, found)) = raise {
                        let tools = if indirect {
                            Vec::new()
                        } else {
                            tool_ranges(c, i, text)
                        };
                        let judged = judged.as_deref().unwrap_or(text);
                        for (channel, f) in injection_channels(indirect, judged, &tools, found, th)
                        {
                            alerts.push(injection_alert(c, i, channel, text, &findings, &f));
                        }
                    }
                }
            }
            if let Some((key, event)) = conversation {
                let time = if c.time.is_valid(i) {
                    c.time.value(i)
                } else {
                    0
                };
                let scanned = Scanned::of(text, score);
                recorded.push(
                    history
                        .lock()
                        .record(key, event, time, scanned, th.max_entities),
                );
            }
            if tool && side == 0 && rt.on("tool_overreach") {
                if let Some(arg) = content::scan_tool_arguments(text) {
                    alerts.push(tool_args_alert(c, i, text, &findings, &arg));
                }
            }
            if capture == ContentCapture::Redacted && !findings.is_empty() {
                if side == 0 {
                    if let Some(r) = moved_tool_ranges(c, i, text, &findings) {
                        moved.push((i, r));
                    }
                }
                masked[side].push((i, content::redact(text, &findings)));
            }
        }
    }
    let [mp, mr] = masked;
    let out = |arr: &StringArray, masked: Vec<(usize, String)>| -> ArrayRef {
        match capture {
            ContentCapture::None => new_null_array(&DataType::Utf8, n),
            _ if masked.is_empty() => Arc::new(arr.clone()),
            _ => with_replaced(arr, masked),
        }
    };
    (out(c.prompt, mp), out(c.response, mr), moved)
}

/// Row `i`'s conversation (else trace) and event, as `History` keys them.
fn conversation_of(c: &Cols, i: usize) -> Option<(u128, u64)> {
    let key = history::key(
        get(c.service, i).unwrap_or(""),
        get(c.conversation, i),
        get(c.trace, i),
    )?;
    Some((key, history::event_hash(get(c.event_id, i).unwrap_or(""))))
}

/// The text after the first `len` bytes (what an earlier call sent), the rest blanked so offsets still
/// point into `text`, and its injection finding if it scores alone.
fn fresh_part(
    text: &str,
    len: usize,
    th: &crate::config::Thresholds,
) -> Option<(String, content::InjectionFinding)> {
    let (fresh, _) = split_by_origin(text, std::slice::from_ref(&(0..len)));
    let found = content::scan_injection(&fresh).filter(|f| f.score >= th.injection_min_score)?;
    Some((fresh, found))
}

fn count_repeated(detector: &str) {
    crate::metrics::metrics()
        .repeated
        .with_label_values(&[detector])
        .inc();
}

pub(super) fn kinds_label(findings: &[&Finding]) -> String {
    let mut k: Vec<&str> = findings.iter().map(|f| f.kind.as_str()).collect();
    k.sort_unstable();
    k.dedup();
    k.join(",")
}

/// The batch as stored: text columns as `content_capture` keeps them, attributes masked when given.
pub(super) fn replace_text(
    batch: &RecordBatch,
    prompt: ArrayRef,
    response: ArrayRef,
    attributes: Option<ArrayRef>,
) -> RecordBatch {
    let schema = batch.schema();
    let mut columns = batch.columns().to_vec();
    let replaced = [
        (col::PROMPT_TEXT, Some(prompt)),
        (col::RESPONSE_TEXT, Some(response)),
        (col::ATTRIBUTES, attributes),
    ];
    for (name, arr) in replaced {
        if let (Ok(idx), Some(arr)) = (schema.index_of(name), arr) {
            columns[idx] = arr;
        }
    }
    // The replacements are Utf8 columns of the batch's length, so this holds; if it ever did not, the request
    // fails (and the sender retries) rather than the unmasked text being stored.
    RecordBatch::try_new(schema, columns).expect("masked columns have the batch's type and length")
}

/// PII and secrets masked inside the attributes JSON, the same way as in the text columns, and the tools'
/// ranges of a masked prompt (`moved`, ascending rows) replaced by ones that index it as stored; `None` when
/// nothing changed (the common case costs one scan and no copy). A value that would no longer be valid JSON
/// after masking is replaced whole: losing an attribute is better than storing the secret.
pub(super) fn mask_attributes(a: &StringArray, moved: Vec<(usize, String)>) -> Option<ArrayRef> {
    let mut masked: Vec<(usize, String)> = Vec::new();
    let mut moved = moved.into_iter().peekable();
    for i in 0..a.len() {
        let ranges = moved.next_if(|(r, _)| *r == i).map(|(_, r)| r);
        let Some(text) = get(a, i) else { continue };
        let findings = content::scan_sensitive(text);
        if findings.is_empty() && ranges.is_none() {
            continue;
        }
        let redacted = content::redact(text, &findings);
        let json = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&redacted);
        let redacted = match (json, ranges) {
            (Ok(mut json), Some(ranges)) => {
                json.insert(
                    vigil_ingest::schema::PROMPT_TOOL_RESULTS.to_string(),
                    serde_json::Value::String(ranges),
                );
                serde_json::Value::Object(json).to_string()
            }
            (Ok(_), None) => redacted,
            (Err(_), _) if findings.is_empty() => continue,
            (Err(_), _) => {
                r#"{"vigil.redacted":"attributes held sensitive data that could not be masked in place"}"#.to_string()
            }
        };
        masked.push((i, redacted));
    }
    (!masked.is_empty()).then(|| with_replaced(a, masked))
}

/// The tools' ranges of prompt `text` (row `i`) as they fall in its masked text, when it has any.
pub(super) fn moved_tool_ranges(
    c: &Cols,
    i: usize,
    text: &str,
    findings: &[Finding],
) -> Option<String> {
    let ranges = tool_ranges(c, i, text);
    if ranges.is_empty() {
        return None;
    }
    let moved: Vec<String> = ranges
        .iter()
        .map(|r| {
            let start = content::redacted_offset(text, findings, r.start, false);
            let end = content::redacted_offset(text, findings, r.end, true);
            format!("{start}..{end}")
        })
        .collect();
    Some(moved.join(","))
}

/// `arr` with the values at the given rows (ascending) replaced.
pub(super) fn with_replaced(arr: &StringArray, replaced: Vec<(usize, String)>) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(arr.len(), arr.values().len());
    let mut next = replaced.into_iter().peekable();
    for i in 0..arr.len() {
        if next.peek().is_some_and(|(r, _)| *r == i) {
            let (_, text) = next.next().expect("peeked");
            b.append_value(text);
        } else if arr.is_null(i) {
            b.append_null();
        } else {
            b.append_value(arr.value(i));
        }
    }
    Arc::new(b.finish())
}

pub(super) fn sensitive_alert(
    c: &Cols,
    i: usize,
    side: usize,
    text: &str,
    all: &[Finding],
    strong: &[&Finding],
    first: &Finding,
) -> Alert {
    let (etype, eid) = actor(c, i);
    let kinds = kinds_label(strong);
    let secret = strong.iter().any(|f| f.kind.is_secret());
    let model = get(c.model, i).unwrap_or("a model");
    let (title, desc, severity) = if side == 0 {
        (
            format!("Sensitive data sent to {model}"),
            format!("A prompt from {etype} {eid} to {model} contains {kinds}: data left the organisation."),
            if secret { Severity::High } else { Severity::Medium },
        )
    } else {
        (
            format!("Sensitive data in a response from {model}"),
            format!("A response from {model} to {etype} {eid} contains {kinds}: the model leaked it back."),
            Severity::High,
        )
    };
    let label = format!("{}:{kinds}", if side == 0 { "prompt" } else { "response" });
    AlertDraft {
        detector: "sensitive_data",
        time_us: c.time.value(i),
        entity_type: etype,
        entity_id: eid,
        label: &label,
        score: strong.len() as f64,
        title,
        description: desc,
        evidence_event_ids: vec![c.event_id.value(i).to_string()],
        evidence: snippet(text, all, first.start, first.end),
        severity: Some(severity),
        atlas: None,
    }
    .build()
}

/// How an injection reached the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    /// In what the caller sent.
    Direct,
    /// In a tool call's result, as the tool span recorded it.
    ToolCall,
    /// In a tool's result that an agent passed to its model, inside an inference's prompt.
    ToolResultInPrompt,
}

/// What tools returned inside row `i`'s prompt `text`, as ingest recorded it in `vigil.prompt.tool_results`
/// (ranges that do not fit the text are left out). Read only for a prompt that scored as an injection, so
/// the JSON is parsed rarely.
pub(super) fn tool_ranges(c: &Cols, i: usize, text: &str) -> Vec<Range<usize>> {
    let Some(ranges) = vigil_attribute(c, i, vigil_ingest::schema::PROMPT_TOOL_RESULTS) else {
        return Vec::new();
    };
    let mut out: Vec<Range<usize>> = ranges
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once("..")?;
            Some(a.parse::<usize>().ok()?..b.parse::<usize>().ok()?)
        })
        .filter(|r| {
            r.start < r.end
                && r.end <= text.len()
                && text.is_char_boundary(r.start)
                && text.is_char_boundary(r.end)
        })
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

/// The prompt as two texts of its length: the caller's part (tools' results blanked) and the tools' part
/// (the rest blanked), so that each is scored on its own and a finding's offsets still point into `text`.
pub(super) fn split_by_origin(text: &str, tools: &[Range<usize>]) -> (String, String) {
    let (mut caller, mut tool) = (
        String::with_capacity(text.len()),
        String::with_capacity(text.len()),
    );
    let blank = |s: &mut String, n: usize| s.extend(std::iter::repeat_n(' ', n));
    let mut at = 0;
    for r in tools {
        let start = r.start.max(at);
        if start >= r.end {
            continue;
        }
        caller.push_str(&text[at..start]);
        blank(&mut tool, start - at);
        blank(&mut caller, r.end - start);
        tool.push_str(&text[start..r.end]);
        at = r.end;
    }
    caller.push_str(&text[at..]);
    blank(&mut tool, text.len() - at);
    (caller, tool)
}

/// Who an injection found in `text` came through. A prompt that carries tools' results is scored again in
/// two parts, the caller's and the tools', so that a user's own attack is not passed off as a tool's by a
/// poisoned result earlier in the conversation, nor the other way round; each part that scores alerts.
/// When only the two together score, the part holding the strongest signal decides.
pub(super) fn injection_channels(
    tool_call: bool,
    text: &str,
    tools: &[Range<usize>],
    whole: content::InjectionFinding,
    th: &crate::config::Thresholds,
) -> Vec<(Channel, content::InjectionFinding)> {
    if tool_call {
        return vec![(Channel::ToolCall, whole)];
    }
    if tools.is_empty() {
        return vec![(Channel::Direct, whole)];
    }
    let (caller, tool) = split_by_origin(text, tools);
    let found = |t: &str| content::scan_injection(t).filter(|f| f.score >= th.injection_min_score);
    let parts: Vec<_> = [
        (Channel::Direct, found(&caller)),
        (Channel::ToolResultInPrompt, found(&tool)),
    ]
    .into_iter()
    .filter_map(|(channel, f)| Some((channel, f?)))
    .collect();
    if !parts.is_empty() {
        return parts;
    }
    let strongest_in_tools = tools
        .iter()
        .any(|r| whole.start < r.end && r.start < whole.end);
    let channel = if strongest_in_tools {
        Channel::ToolResultInPrompt
    } else {
        Channel::Direct
    };
    vec![(channel, whole)]
}

pub(super) fn injection_alert(
    c: &Cols,
    i: usize,
    channel: Channel,
    text: &str,
    all: &[Finding],
    f: &content::InjectionFinding,
) -> Alert {
    // The caller of an indirect injection is its victim: the agent that read the tool's data is the
    // entity to contain.
    let (etype, eid) = if channel == Channel::Direct {
        actor(c, i)
    } else {
        get(c.agent, i)
            .map(|a| ("agent", a))
            .unwrap_or_else(|| actor(c, i))
    };
    let reasons = f.reasons.join(",");
    let (title, label, atlas) = match channel {
        Channel::ToolCall => {
            let tool = get(c.tool, i).unwrap_or("a tool");
            (
                format!("Indirect prompt injection in the result of {tool}"),
                "indirect",
                "AML.T0051.001",
            )
        }
        Channel::ToolResultInPrompt => {
            let model = get(c.model, i).unwrap_or("a model");
            (
                format!("Indirect prompt injection in a tool result sent to {model}"),
                "indirect",
                "AML.T0051.001",
            )
        }
        Channel::Direct => (
            "Prompt injection attempt".to_string(),
            "direct",
            "AML.T0051.000",
        ),
    };
    AlertDraft {
        detector: "prompt_injection",
        time_us: c.time.value(i),
        entity_type: etype,
        entity_id: eid,
        label,
        score: f.score as f64,
        title,
        description: format!("Heuristics fired: {reasons} (score {:.2}).", f.score),
        evidence_event_ids: vec![c.event_id.value(i).to_string()],
        evidence: snippet(text, all, f.start, f.end),
        severity: Some(if f.score >= 0.8 {
            Severity::High
        } else {
            Severity::Medium
        }),
        atlas: Some(atlas),
    }
    .build()
}

pub(super) fn tool_args_alert(
    c: &Cols,
    i: usize,
    text: &str,
    all: &[Finding],
    f: &content::ArgFinding,
) -> Alert {
    let (etype, eid) = get(c.agent, i)
        .map(|a| ("agent", a))
        .unwrap_or_else(|| actor(c, i));
    let tool = get(c.tool, i).unwrap_or("a tool");
    let label = format!("args:{}", f.kind);
    AlertDraft {
        detector: "tool_overreach",
        time_us: c.time.value(i),
        entity_type: etype,
        entity_id: eid,
        label: &label,
        score: 1.0,
        title: format!("{} payload in the arguments of {tool}", f.kind),
        description: format!(
            "The arguments {etype} {eid} passed to {tool} carry a {} payload.",
            f.kind
        ),
        evidence_event_ids: vec![c.event_id.value(i).to_string()],
        evidence: snippet(text, all, f.start, f.end),
        severity: Some(Severity::Critical),
        atlas: None,
    }
    .build()
}
