//! Is a span or log record AI activity, and of which kind?
//!
//! The order follows Langfuse, so that a record two conventions describe gets the same kind here as there:
//! 1. `vigil.event.kind` = inference|tool|policy|agent|endpoint (for producers without semconv; always wins);
//! 2. endpoint events: a name starting with `gen_ai.endpoint.`, the name `gen_ai.model.version_change`, or any
//!    `gen_ai.endpoint.*` attribute;
//! 3. Langfuse's own type `langfuse.observation.type` (generation|embedding, tool, agent, guardrail);
//! 4. `openinference.span.kind` (LLM|EMBEDDING -> inference, TOOL -> tool, AGENT -> agent, CHAIN with agent
//!    attributes -> agent, GUARDRAIL -> policy);
//! 5. `gen_ai.operation.name` (chat|text_completion|generate_content|embeddings|retrieval -> inference,
//!    execute_tool -> tool, create_agent|invoke_agent|invoke_workflow -> agent, run_guardrail|apply_guardrail
//!    -> policy);
//! 6. OpenLLMetry `traceloop.span.kind` (agent|workflow -> agent, tool -> tool) and `llm.request.type`
//!    (-> inference);
//! 7. tool attributes (`gen_ai.tool.name`, `tool.name`) -> tool;
//! 8. guardrail attributes (`gen_ai.guardrail.*`) or a name starting with `run_guardrail`/`gen_ai.run_guardrail`
//!    -> policy;
//! 9. any model attribute (`gen_ai.request.model`, `gen_ai.response.model`, `llm.model_name`) -> inference.
//!
//! Only the record's own attributes classify it: a resource attribute would turn every span of a service
//! (HTTP handlers included) into AI activity. A value a rule does not know falls through to the next rule.

use super::attrs::{Lookup, Slot};
use crate::schema::EventKind;

/// The kind of an AI record and the operation its classifying attribute implies (used when
/// `gen_ai.operation.name` is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Classified {
    pub kind: EventKind,
    pub operation: Option<&'static str>,
}

impl Classified {
    pub fn new(kind: EventKind) -> Self {
        let operation = match kind {
            EventKind::Tool => Some("execute_tool"),
            EventKind::Agent => Some("invoke_agent"),
            EventKind::Policy => Some("run_guardrail"),
            EventKind::Inference | EventKind::Endpoint => None,
        };
        Self { kind, operation }
    }

    fn inference(operation: Option<&'static str>) -> Self {
        Self {
            kind: EventKind::Inference,
            operation,
        }
    }
}

/// Rule 1: the producer said what it sends.
pub(crate) fn explicit(look: &mut Lookup<'_, '_>) -> Option<Classified> {
    let value = look.own.str(Slot::VigilKind)?.trim();
    let kind = EventKind::parse(value).or_else(|| EventKind::parse(&value.to_ascii_lowercase()))?;
    look.mark_own(Slot::VigilKind);
    Some(Classified::new(kind))
}

/// Whether a span name or log event name announces a model-endpoint event.
pub(crate) fn is_endpoint_name(name: &str) -> bool {
    name.starts_with("gen_ai.endpoint.") || name == "gen_ai.model.version_change"
}

/// All rules in order; `name` is the span name or the log record's event name. `None`: not AI activity.
pub(crate) fn classify(look: &mut Lookup<'_, '_>, name: &str) -> Option<Classified> {
    if let Some(c) = explicit(look) {
        return Some(c);
    }
    let own = look.own;
    if is_endpoint_name(name) || own.has_endpoint {
        return Some(Classified::new(EventKind::Endpoint));
    }
    if let Some(c) = own.str(Slot::LangfuseType).and_then(langfuse_type) {
        return Some(c);
    }
    if let Some(kind) = own.str(Slot::OiSpanKind) {
        let has_agent =
            own.has(Slot::AgentId) || own.has(Slot::AgentName) || own.has(Slot::OiAgentName);
        if let Some(c) = openinference_kind(kind, has_agent) {
            return Some(c);
        }
    }
    if let Some(c) = own.str(Slot::OperationName).and_then(operation_kind) {
        return Some(c);
    }
    if let Some(c) = own.str(Slot::TraceloopKind).and_then(traceloop_kind) {
        return Some(c);
    }
    if let Some(request_type) = own.str(Slot::LlmRequestType) {
        return Some(Classified::inference(match request_type {
            "chat" => Some("chat"),
            "completion" => Some("text_completion"),
            "embedding" => Some("embeddings"),
            "rerank" => Some("rerank"),
            _ => None,
        }));
    }
    if own.has(Slot::ToolName) || own.has(Slot::OiToolName) {
        return Some(Classified::new(EventKind::Tool));
    }
    if own.has_guardrail
        || name.starts_with("run_guardrail")
        || name.starts_with("gen_ai.run_guardrail")
    {
        return Some(Classified::new(EventKind::Policy));
    }
    if own.has(Slot::RequestModel) || own.has(Slot::ResponseModel) || own.has(Slot::LlmModelName) {
        return Some(Classified::inference(None));
    }
    None
}

fn langfuse_type(t: &str) -> Option<Classified> {
    let is = |name: &str| t.eq_ignore_ascii_case(name);
    Some(if is("generation") {
        Classified::inference(None)
    } else if is("embedding") {
        Classified::inference(Some("embeddings"))
    } else if is("tool") {
        Classified::new(EventKind::Tool)
    } else if is("agent") {
        Classified::new(EventKind::Agent)
    } else if is("guardrail") {
        Classified::new(EventKind::Policy)
    } else {
        return None;
    })
}

fn openinference_kind(kind: &str, has_agent_attributes: bool) -> Option<Classified> {
    Some(match kind {
        "LLM" => Classified::inference(Some("chat")),
        "EMBEDDING" => Classified::inference(Some("embeddings")),
        "TOOL" => Classified::new(EventKind::Tool),
        "AGENT" => Classified::new(EventKind::Agent),
        "CHAIN" if has_agent_attributes => Classified::new(EventKind::Agent),
        "GUARDRAIL" => Classified::new(EventKind::Policy),
        _ => return None,
    })
}

fn operation_kind(op: &str) -> Option<Classified> {
    Some(match op {
        "chat" | "text_completion" | "generate_content" | "embeddings" | "retrieval" => {
            Classified::inference(None)
        }
        "execute_tool" => Classified::new(EventKind::Tool),
        "create_agent" | "invoke_agent" | "invoke_workflow" => Classified::new(EventKind::Agent),
        "run_guardrail" | "apply_guardrail" => Classified::new(EventKind::Policy),
        _ => return None,
    })
}

fn traceloop_kind(kind: &str) -> Option<Classified> {
    Some(match kind {
        "agent" | "workflow" => Classified::new(EventKind::Agent),
        "tool" => Classified::new(EventKind::Tool),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::attrs::test_values::*;
    use super::super::attrs::Attrs;
    use super::*;
    use crate::wire::KeyValue;

    fn kind_of(kvs: Vec<KeyValue>, name: &str) -> Option<EventKind> {
        let own = Attrs::collect(&kvs);
        let res = Attrs::empty();
        classify(&mut Lookup::new(&own, &res), name).map(|c| c.kind)
    }

    #[test]
    fn rules_apply_in_langfuse_order() {
        // An explicit kind beats everything, even in another case.
        let k = kind_of(
            vec![
                kv("vigil.event.kind", s("Endpoint")),
                kv("gen_ai.request.model", s("m")),
            ],
            "x",
        );
        assert_eq!(k, Some(EventKind::Endpoint));
        // openinference.span.kind beats gen_ai.operation.name.
        let k = kind_of(
            vec![
                kv("openinference.span.kind", s("TOOL")),
                kv("gen_ai.operation.name", s("chat")),
            ],
            "",
        );
        assert_eq!(k, Some(EventKind::Tool));
        // A CHAIN without agent attributes falls through to the next rules.
        let k = kind_of(
            vec![
                kv("openinference.span.kind", s("CHAIN")),
                kv("llm.model_name", s("m")),
            ],
            "",
        );
        assert_eq!(k, Some(EventKind::Inference));
        let k = kind_of(
            vec![
                kv("openinference.span.kind", s("CHAIN")),
                kv("agent.name", s("a")),
            ],
            "",
        );
        assert_eq!(k, Some(EventKind::Agent));
        // Tool attributes beat the model attribute.
        let k = kind_of(
            vec![
                kv("gen_ai.request.model", s("m")),
                kv("gen_ai.tool.name", s("t")),
            ],
            "",
        );
        assert_eq!(k, Some(EventKind::Tool));
        let k = kind_of(
            vec![kv("gen_ai.guardrail.verdict.type", s("deny"))],
            "guard",
        );
        assert_eq!(k, Some(EventKind::Policy));
        assert_eq!(
            kind_of(vec![], "gen_ai.endpoint.health"),
            Some(EventKind::Endpoint)
        );
        assert_eq!(
            kind_of(vec![kv("traceloop.span.kind", s("workflow"))], ""),
            Some(EventKind::Agent)
        );
        assert_eq!(
            kind_of(vec![kv("http.request.method", s("GET"))], "GET /"),
            None
        );
        assert_eq!(
            kind_of(vec![kv("gen_ai.operation.name", s("something_new"))], ""),
            None
        );
    }
}
