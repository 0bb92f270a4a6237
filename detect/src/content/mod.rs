//! Content detectors: pure functions over prompt, response and tool-argument text. They hold no state, so
//! the detection stage can call them from any thread.

pub mod injection;
pub mod sensitive;
pub mod tool_args;
pub mod validators;

#[cfg(test)]
mod corpus;

pub use injection::{contains_canary, scan_injection, InjectionFinding};
pub use sensitive::{redact, scan_sensitive, Finding, FindingKind};
pub use tool_args::{scan_tool_arguments, ArgFinding};
