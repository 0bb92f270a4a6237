//! Content detectors: pure functions over prompt, response and tool-argument text. They hold no state, so
//! the detection stage can call them from any thread.

pub mod injection;
pub mod prefilter;
pub mod sensitive;
pub mod tool_args;
pub mod validators;

#[cfg(test)]
mod corpus;

pub use injection::{contains_canary, scan_injection, scan_injection_with, InjectionFinding};
pub use prefilter::Hints;
pub use sensitive::{
    redact, redacted_offset, scan_sensitive, scan_sensitive_with, Finding, FindingKind,
};
pub use tool_args::{scan_tool_arguments, ArgFinding};
