//! Injection payloads in agent tool-call arguments (SQL, shell, path traversal).

#[derive(Debug, Clone, PartialEq)]
pub struct ArgFinding {
    /// `sql_injection` | `shell_injection` | `path_traversal`.
    pub kind: &'static str,
    pub start: usize,
    pub end: usize,
}

pub fn scan_tool_arguments(_args: &str) -> Option<ArgFinding> {
    None
}
