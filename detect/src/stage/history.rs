//! What each conversation's prompt held when it was last scanned, so old findings are not alerted again.
//!
//! Chat applications and agent loops send the whole conversation with every call (`gen_ai.input.messages`).
//! One injected or sensitive message early on was found again in every later call and raised one alert per
//! turn, for the same old message. Per conversation (`conversation_id`, else the trace), this remembers the
//! length and hash of the prompt text last scanned and whether it scored as an injection. A later prompt
//! that starts with exactly that text has that prefix "already scanned": sensitive findings inside it are
//! not alerted again, and an injection is alerted again only if the prefix did not score, or the new part
//! scores on its own. Only text byte-identical to text already scanned is ever spared; anything else
//! (history trimmed, a system prompt that changed) is judged whole, as before.
//!
//! Not persisted: after a restart each live conversation alerts once more. Bounded by
//! `max_entities` conversations and `conversation_memory` of event time, evicted on the tick.

use foldhash::HashMap;
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

/// A prompt as scanned: its length, the hash of its bytes, and whether it scored as an injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scanned {
    pub(super) len: usize,
    hash: u64,
    pub(super) injection: bool,
}

impl Scanned {
    pub(super) fn of(text: &str, injection: bool) -> Self {
        Self {
            len: text.len(),
            hash: xxh3_64(text.as_bytes()),
            injection,
        }
    }

    /// Whether `text` starts with this prompt, byte for byte.
    fn prefixes(&self, text: &str) -> bool {
        text.is_char_boundary(self.len) && xxh3_64(&text.as_bytes()[..self.len]) == self.hash
    }
}

struct Entry {
    current: Scanned,
    /// What `current` replaced: the baseline of a retry of the event that recorded `current`.
    previous: Option<Scanned>,
    /// Hash of the event id that recorded `current`.
    event: u64,
    last_us: i64,
}

/// Conversations' last scanned prompts, keyed by a hash of the service and conversation (or trace) id.
#[derive(Default)]
pub(super) struct History {
    map: HashMap<u128, Entry>,
}

/// Which conversation a row's prompt belongs to; `None` without a conversation or trace id.
pub(super) fn key(service: &str, conversation: Option<&str>, trace: Option<&str>) -> Option<u128> {
    let (tag, id) = match (conversation, trace) {
        (Some(c), _) if !c.is_empty() => (b'c', c),
        (_, Some(t)) if !t.is_empty() => (b't', t),
        _ => return None,
    };
    let mut h = Xxh3Default::new();
    h.update(service.as_bytes());
    h.update(&[0, tag]);
    h.update(id.as_bytes());
    Some(h.digest128())
}

pub(super) fn event_hash(event_id: &str) -> u64 {
    xxh3_64(event_id.as_bytes())
}

impl History {
    /// The part of `text` an earlier call of the conversation already sent and had scanned. A retry of
    /// the event that recorded the latest prompt is judged against the one before, as the first try was.
    pub(super) fn scanned_prefix(&self, key: u128, event: u64, text: &str) -> Option<Scanned> {
        let entry = self.map.get(&key)?;
        let baseline = if entry.event == event {
            entry.previous?
        } else {
            entry.current
        };
        baseline.prefixes(text).then_some(baseline)
    }

    pub(super) fn record(&mut self, key: u128, event: u64, time_us: i64, scanned: Scanned) {
        match self.map.get_mut(&key) {
            Some(entry) => {
                if entry.event != event {
                    entry.previous = Some(entry.current);
                    entry.event = event;
                }
                entry.current = scanned;
                entry.last_us = entry.last_us.max(time_us);
            }
            None => {
                self.map.insert(
                    key,
                    Entry {
                        current: scanned,
                        previous: None,
                        event,
                        last_us: time_us,
                    },
                );
            }
        }
    }

    /// Drops conversations idle for `memory_us` of event time, then the least recently seen past `max`;
    /// returns how many were dropped past `max` (the idle ones are routine).
    pub(super) fn evict(&mut self, now_us: i64, memory_us: i64, max: usize) -> usize {
        let oldest_kept = now_us.saturating_sub(memory_us);
        self.map.retain(|_, e| e.last_us >= oldest_kept);
        let before = self.map.len();
        if self.map.len() > max {
            let mut times: Vec<i64> = self.map.values().map(|e| e.last_us).collect();
            let cut = times.len() - max;
            let (_, nth, _) = times.select_nth_unstable(cut - 1);
            let nth = *nth;
            let mut to_drop = cut;
            self.map.retain(|_, e| {
                if to_drop > 0 && e.last_us <= nth {
                    to_drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
        before - self.map.len()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_that_extends_the_last_one_has_it_as_scanned_prefix() {
        let mut h = History::default();
        let k = key("chat", Some("c1"), None).unwrap();
        h.record(k, event_hash("e1"), 10, Scanned::of("sys\nhello", true));
        let p = h
            .scanned_prefix(k, event_hash("e2"), "sys\nhello\nanswer\nmore")
            .expect("prefix");
        assert_eq!((p.len, p.injection), (9, true));
        // Not byte for byte the same start: judged whole.
        assert!(h
            .scanned_prefix(k, event_hash("e2"), "sys\nHello\nanswer")
            .is_none());
        assert!(h.scanned_prefix(k, event_hash("e2"), "sys\nhel").is_none());
        // Another conversation, or another service with the same conversation id.
        let other = key("other", Some("c1"), None).unwrap();
        assert!(h
            .scanned_prefix(other, event_hash("e2"), "sys\nhello\nx")
            .is_none());
        assert_ne!(key("chat", Some("t1"), None), key("chat", None, Some("t1")));
        assert!(key("chat", Some(""), None).is_none());
    }

    #[test]
    fn a_retried_event_is_judged_against_what_came_before_it() {
        let mut h = History::default();
        let k = key("chat", Some("c1"), None).unwrap();
        h.record(k, event_hash("e1"), 10, Scanned::of("a", false));
        h.record(k, event_hash("e2"), 20, Scanned::of("a\nb", true));
        // e2 again (its alerts were lost with a refused request): against e1's prompt, as the first time.
        assert_eq!(
            h.scanned_prefix(k, event_hash("e2"), "a\nb").unwrap().len,
            1
        );
        h.record(k, event_hash("e2"), 20, Scanned::of("a\nb", true));
        assert_eq!(
            h.scanned_prefix(k, event_hash("e2"), "a\nb").unwrap().len,
            1
        );
        assert_eq!(
            h.scanned_prefix(k, event_hash("e3"), "a\nb\nc")
                .unwrap()
                .len,
            3
        );
    }

    #[test]
    fn eviction_drops_idle_then_least_recently_seen() {
        let mut h = History::default();
        for i in 0..10 {
            let k = key("s", Some(&format!("c{i}")), None).unwrap();
            h.record(k, event_hash("e"), i * 100, Scanned::of("x", false));
        }
        // Idle before 200: c0 and c1.
        assert_eq!(h.evict(1000, 800, 100), 0);
        assert_eq!(h.len(), 8);
        assert_eq!(h.evict(1000, 800, 5), 3);
        assert_eq!(h.len(), 5);
        let newest = key("s", Some("c9"), None).unwrap();
        assert!(h.scanned_prefix(newest, event_hash("f"), "x").is_some());
        let dropped = key("s", Some("c4"), None).unwrap();
        assert!(h.scanned_prefix(dropped, event_hash("f"), "x").is_none());
    }
}
