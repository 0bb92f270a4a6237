//! Prompt-injection and jailbreak heuristics (Rebuff / LLM Guard style).

#[derive(Debug, Clone, PartialEq)]
pub struct InjectionFinding {
    /// 0..1; the stage alerts at or above its configured threshold.
    pub score: f32,
    /// Which heuristics fired, e.g. `ignore_instructions`, `role_override`, `invisible_unicode`.
    pub reasons: Vec<&'static str>,
    /// Byte range of the strongest match, for the evidence excerpt.
    pub start: usize,
    pub end: usize,
}

/// Scores text (a prompt, or a tool result fed back to a model) for injection. `None` when nothing fired.
pub fn scan_injection(_text: &str) -> Option<InjectionFinding> {
    None
}
