//! Tool calls waiting for their agent's span.
//!
//! OpenTelemetry exports a span when it ends, and an agent's `invoke_agent` span ends after the tool calls
//! it made; in a run longer than one export interval (5 s for the batch span processor) the calls arrive
//! first, without an agent, and `tool_overreach` could not judge them. Ingest marks such a call with the
//! span id where its chain of parents left its export (`vigil.ancestor_span_id`); the stage keeps the call
//! here, and when an agent span with that id arrives in the same trace, judges it by that agent's
//! allowlist. The agent span is remembered too, so a call that arrives after it is judged at once.
//!
//! A span claims its calls once: copies of it (a retry in flight, a log record repeating the span) raise
//! nothing more. When the batch that claimed them fails to be stored, its alerts give the claim back
//! (`unclaim`) so that the retry judges the calls again; calls therefore stay after a claim, and leave by
//! age and by count.

use std::collections::VecDeque;
use std::sync::Arc;

use foldhash::HashMap;

/// How long a call (or an agent span) waits, in event time: longer than almost every agent run.
pub(crate) const MAX_WAIT_US: i64 = 10 * 60 * 1_000_000;

/// Calls and agent spans kept at most (about 25 MiB); past it, the oldest go first, counted in
/// `vigil_detect_calls_unjudged_total` when they were calls nobody claimed.
pub(crate) const MAX_WAITING: usize = 100_000;

/// A tool call or retrieval that names no agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub event_id: String,
    pub time_us: i64,
    pub tool: Option<String>,
    pub data_source: Option<String>,
}

/// (trace id, span id of the agent expected).
type Key = Arc<(String, String)>;

#[derive(Debug, Default)]
struct Waiting {
    calls: VecDeque<Call>,
    /// The agent whose span claimed these calls.
    agent: Option<String>,
}

#[derive(Debug)]
enum Entry {
    Call,
    Agent,
}

/// Calls by the agent span they wait for, and the agent spans seen.
#[derive(Debug, Default)]
pub(crate) struct Awaiting {
    keys: HashMap<Key, Waiting>,
    /// Arrival order, for eviction: (event time, key, what arrived).
    order: VecDeque<(i64, Key, Entry)>,
    /// Held calls by event id: the dedupe of a batch detected again, and the way back from an alert.
    held: HashMap<String, Key>,
}

impl Awaiting {
    /// Keeps `call` until an agent span `span` of `trace` arrives; `now_us` is the event time being
    /// detected. Returns the agent when its span already came: the caller judges the call at once.
    pub fn hold(&mut self, trace: &str, span: &str, call: Call, now_us: i64) -> Option<String> {
        let key: Key = Arc::new((trace.to_owned(), span.to_owned()));
        if let Some(held) = self.held.get(&call.event_id) {
            // The same call again: its batch is being detected again.
            return self.keys.get(held).and_then(|w| w.agent.clone());
        }
        self.make_room(now_us);
        self.order.push_back((now_us, key.clone(), Entry::Call));
        self.held.insert(call.event_id.clone(), key.clone());
        let waiting = self.keys.entry(key).or_default();
        waiting.calls.push_back(call);
        waiting.agent.clone()
    }

    /// Agent `agent`'s span `span` of `trace` arrived: the calls waiting for it, unless a copy of the span
    /// claimed them already (then none).
    pub fn claim(&mut self, trace: &str, span: &str, agent: &str, now_us: i64) -> Vec<Call> {
        let key: Key = Arc::new((trace.to_owned(), span.to_owned()));
        if let Some(waiting) = self.keys.get_mut(&key) {
            if waiting.agent.is_some() {
                return Vec::new();
            }
            waiting.agent = Some(agent.to_owned());
            return waiting.calls.iter().cloned().collect();
        }
        self.make_room(now_us);
        self.order.push_back((now_us, key.clone(), Entry::Agent));
        self.keys.insert(
            key,
            Waiting {
                calls: VecDeque::new(),
                agent: Some(agent.to_owned()),
            },
        );
        Vec::new()
    }

    /// The alert about held call `event_id` was lost (its batch was not stored): the next copy of its
    /// agent's span claims the calls again.
    pub fn unclaim(&mut self, event_id: &str) {
        if let Some(waiting) = self.held.get(event_id).and_then(|k| self.keys.get_mut(k)) {
            waiting.agent = None;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    fn make_room(&mut self, now_us: i64) {
        let oldest_kept = now_us.saturating_sub(MAX_WAIT_US);
        while self.order.len() >= MAX_WAITING
            || self.order.front().is_some_and(|(t, _, _)| *t < oldest_kept)
        {
            self.evict_oldest();
        }
    }

    /// Drops what arrived first (each key's calls are in arrival order too).
    fn evict_oldest(&mut self) {
        let Some((_, key, entry)) = self.order.pop_front() else {
            return;
        };
        let Some(waiting) = self.keys.get_mut(&key) else {
            return;
        };
        match entry {
            Entry::Call => {
                if let Some(call) = waiting.calls.pop_front() {
                    self.held.remove(&call.event_id);
                    if waiting.agent.is_none() {
                        crate::metrics::metrics().unjudged.inc();
                    }
                }
            }
            Entry::Agent => waiting.agent = None,
        }
        if waiting.calls.is_empty() && waiting.agent.is_none() {
            self.keys.remove(&key);
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

    fn ids(calls: &[Call]) -> Vec<&str> {
        calls.iter().map(|c| c.event_id.as_str()).collect()
    }

    #[test]
    fn a_span_claims_its_calls_once_and_judges_later_ones_at_once() {
        let mut w = Awaiting::default();
        assert_eq!(w.hold("t1", "a1", call("e1", 10), 10), None);
        assert_eq!(w.hold("t1", "a1", call("e2", 11), 11), None);
        assert_eq!(
            w.hold("t1", "a1", call("e1", 10), 12),
            None,
            "a retried batch"
        );
        assert_eq!(w.hold("t2", "a1", call("e3", 12), 12), None);
        assert_eq!(ids(&w.claim("t1", "a1", "bot", 13)), ["e1", "e2"]);
        assert!(
            w.claim("t1", "a1", "bot", 14).is_empty(),
            "a copy of the span"
        );
        assert_eq!(
            w.hold("t1", "a1", call("e4", 15), 15).as_deref(),
            Some("bot")
        );
        assert!(w.claim("t9", "a9", "bot", 16).is_empty());
        assert_eq!(
            w.hold("t9", "a9", call("e5", 17), 17).as_deref(),
            Some("bot")
        );
        // The claim's alert was not stored: the span's retry claims again.
        w.unclaim("e2");
        assert_eq!(ids(&w.claim("t1", "a1", "bot", 18)), ["e1", "e2", "e4"]);
    }

    #[test]
    fn calls_leave_by_age_and_by_count() {
        let mut w = Awaiting::default();
        w.hold("t", "old", call("e0", 0), 0);
        w.hold("t", "new", call("e1", MAX_WAIT_US + 1), MAX_WAIT_US + 1);
        assert!(
            w.claim("t", "old", "bot", MAX_WAIT_US + 1).is_empty(),
            "waited too long"
        );
        let before = crate::metrics::metrics().unjudged.get();
        for k in 0..MAX_WAITING + 5 {
            let t = MAX_WAIT_US + 2 + k as i64;
            w.hold("t", &format!("s{k}"), call(&format!("c{k}"), t), t);
        }
        assert_eq!(w.len(), MAX_WAITING);
        assert!(crate::metrics::metrics().unjudged.get() >= before + 6);
        let late = MAX_WAIT_US + 10 + MAX_WAITING as i64;
        assert!(w.claim("t", "s0", "bot", late).is_empty());
        assert_eq!(
            ids(&w.claim("t", &format!("s{}", MAX_WAITING + 4), "bot", late)),
            [format!("c{}", MAX_WAITING + 4)]
        );
        assert!(w.held.len() <= MAX_WAITING && w.keys.len() <= MAX_WAITING);
    }
}
