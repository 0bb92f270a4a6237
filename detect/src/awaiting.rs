//! Tool calls waiting for their agent's span.
//!
//! OpenTelemetry exports a span when it ends, and an agent's `invoke_agent` span ends after the tool calls
//! it made; in a run longer than one export interval (5 s for the batch span processor) the calls arrive
//! first, without an agent, and `tool_overreach` could not judge them. Ingest marks such a call with the
//! span id where its chain of parents left its export (`vigil.ancestor_span_id`); the stage keeps the call
//! here, and when an agent span with that id arrives in the same trace, judges it by that agent's
//! allowlist.
//!
//! Calls are kept, not taken, when their agent arrives: a batch whose storing fails is detected again on
//! the retry and must find them again. They leave by age and by count.

use std::collections::VecDeque;

use foldhash::HashMap;

/// How long a call waits for its agent, in event time: longer than any agent run worth judging.
pub(crate) const MAX_WAIT_US: i64 = 30 * 60 * 1_000_000;

/// Calls kept at most; past it, the oldest go first (a flood of calls whose agent never comes must not
/// grow the detection state without bound).
pub(crate) const MAX_WAITING: usize = 20_000;

/// A tool call or retrieval that names no agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub event_id: String,
    pub time_us: i64,
    pub tool: Option<String>,
    pub data_source: Option<String>,
}

/// Calls by (trace id, the span id their agent is expected at).
#[derive(Debug, Default)]
pub(crate) struct Awaiting {
    calls: HashMap<(String, String), Vec<Call>>,
    /// Arrival order, for eviction: (event time, key).
    order: VecDeque<(i64, (String, String))>,
}

impl Awaiting {
    /// Keeps `call` until an agent span `span` of `trace` arrives; `now_us` is the event time being detected.
    pub fn hold(&mut self, trace: &str, span: &str, call: Call, now_us: i64) {
        self.expire(now_us);
        while self.order.len() >= MAX_WAITING {
            self.evict_oldest();
        }
        let key = (trace.to_owned(), span.to_owned());
        let calls = self.calls.entry(key.clone()).or_default();
        if calls.iter().any(|c| c.event_id == call.event_id) {
            return;
        }
        self.order.push_back((call.time_us, key));
        calls.push(call);
    }

    /// The calls waiting for the agent span `span` of `trace`.
    pub fn under(&self, trace: &str, span: &str) -> &[Call] {
        self.calls
            .get(&(trace.to_owned(), span.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    fn expire(&mut self, now_us: i64) {
        while self
            .order
            .front()
            .is_some_and(|(t, _)| *t < now_us.saturating_sub(MAX_WAIT_US))
        {
            self.evict_oldest();
        }
    }

    /// Drops the call that arrived first (each key's calls are in arrival order too).
    fn evict_oldest(&mut self) {
        let Some((_, key)) = self.order.pop_front() else {
            return;
        };
        if let Some(calls) = self.calls.get_mut(&key) {
            calls.remove(0);
            if calls.is_empty() {
                self.calls.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, t: i64) -> Call {
        Call {
            event_id: id.into(),
            time_us: t,
            tool: Some("export_all".into()),
            data_source: None,
        }
    }

    #[test]
    fn calls_wait_by_trace_and_span_and_are_kept_when_claimed() {
        let mut w = Awaiting::default();
        w.hold("t1", "a1", call("e1", 10), 10);
        w.hold("t1", "a1", call("e2", 11), 11);
        w.hold("t1", "a1", call("e1", 10), 12); // a retried batch
        w.hold("t2", "a1", call("e3", 12), 12);
        assert_eq!(w.under("t1", "a1").len(), 2);
        assert_eq!(w.under("t1", "a1").len(), 2, "still there for a retry");
        assert_eq!(w.under("t2", "a1")[0].event_id, "e3");
        assert!(w.under("t1", "zz").is_empty());
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn calls_leave_by_age_and_by_count() {
        let mut w = Awaiting::default();
        w.hold("t", "old", call("e0", 0), 0);
        w.hold("t", "new", call("e1", MAX_WAIT_US + 1), MAX_WAIT_US + 1);
        assert!(w.under("t", "old").is_empty(), "waited too long");
        for k in 0..MAX_WAITING + 5 {
            let t = MAX_WAIT_US + 2 + k as i64;
            w.hold("t", &format!("s{k}"), call(&format!("c{k}"), t), t);
        }
        assert_eq!(w.len(), MAX_WAITING);
        assert!(w.under("t", "new").is_empty() && w.under("t", "s0").is_empty());
        assert_eq!(w.under("t", &format!("s{}", MAX_WAITING + 4)).len(), 1);
    }
}
