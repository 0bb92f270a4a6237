//! End-to-end tests: the real `vigil` binary, real clients, loopback only.
//!
//! One integration-test binary (modules below) so the workspace links one test executable.

mod auth;
mod bench;
mod dashboards;
mod demo;
mod detection;
mod harness;
mod ingest;
mod kafka;
mod overload;
mod python_sdk;
mod soar;
mod state;
mod telemetry;
mod verify;

use vigil_ingest::{EventKind, EventRow};

/// A realistic event of each kind, with every column the normaliser maps filled in.
pub fn sample_rows(prefix: u32, time_us: i64) -> Vec<EventRow> {
    let ids = |n: u32| {
        (
            format!("{prefix:08x}{n:024x}"),
            format!("{:016x}", (u64::from(prefix) << 16) + u64::from(n)),
        )
    };
    let base = |n: u32, kind: EventKind| {
        let (trace_id, span_id) = ids(n);
        EventRow {
            time_us: time_us + i64::from(n),
            event_id: format!("{trace_id}{span_id}"),
            kind: Some(kind),
            service: Some("e2e-copilot".into()),
            user_id: Some(format!("user{prefix}@example.com")),
            user_role: Some("engineer".into()),
            department: Some("engineering".into()),
            conversation_id: Some("conv-1".into()),
            trace_id: Some(trace_id),
            span_id: Some(span_id),
            status: Some("ok".into()),
            ..Default::default()
        }
    };
    let mut inference = base(1, EventKind::Inference);
    inference.operation = Some("chat".into());
    inference.provider = Some("openai".into());
    inference.model = Some("gpt-4o".into());
    inference.response_model = Some("gpt-4o-2024-08-06".into());
    inference.endpoint = Some("api.openai.com:443".into());
    inference.input_tokens = Some(321);
    inference.output_tokens = Some(123);
    inference.latency_ms = Some(850.0);
    inference.finish_reasons = Some("stop".into());
    inference.prompt_text =
        Some("Summarise the release notes for version 2.3 in three bullet points.".into());
    inference.response_text = Some("Faster queries, smaller files, and a new dashboard.".into());

    let mut tool = base(2, EventKind::Tool);
    tool.operation = Some("execute_tool".into());
    tool.agent_id = Some("support-agent".into());
    tool.tool_name = Some("search_kb".into());
    tool.data_source = Some("kb".into());
    tool.latency_ms = Some(42.0);
    tool.prompt_text = Some("{\"query\":\"reset password\"}".into());
    tool.response_text = Some("{\"hits\":2}".into());

    let mut policy = base(3, EventKind::Policy);
    policy.operation = Some("run_guardrail".into());
    policy.policy_id = Some("topic-guard".into());
    policy.decision = Some("deny".into());
    policy.decision_reason = Some("blocked topic".into());

    let mut agent = base(4, EventKind::Agent);
    agent.operation = Some("invoke_agent".into());
    agent.agent_id = Some("support-agent".into());
    agent.latency_ms = Some(1500.0);

    let mut error = base(5, EventKind::Inference);
    error.operation = Some("chat".into());
    error.provider = Some("anthropic".into());
    error.model = Some("claude-sonnet-4".into());
    error.endpoint = Some("api.anthropic.com:443".into());
    error.status = Some("error".into());
    error.error_type = Some("rate_limit_exceeded".into());
    error.latency_ms = Some(12.0);

    vec![inference, tool, policy, agent, error]
}
