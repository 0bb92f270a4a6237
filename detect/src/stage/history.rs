//! What each conversation's prompt held when it was last scanned, so old findings are not alerted again.
//!
//! Chat applications and agent loops send the whole conversation with every call (`gen_ai.input.messages`).
//! One injected or sensitive message early on was found again in every later call and raised one alert per
//! turn, for the same old message. Per conversation (`conversation_id`, else the trace), this remembers the
//! length and a keyed hash of the prompt text last scanned, and its injection score. A later prompt that
//! starts with exactly that text has that prefix "already scanned": sensitive findings inside it are not
//! alerted again, and an injection is alerted again only if the prefix did not score, the new part scores
//! on its own, or the whole scores higher than the prefix did (a stronger or an added signal). Only text
//! byte-identical to text already scanned is ever spared; anything else (history trimmed, a system prompt
//! that changed) is judged whole, as before. The hash is keyed with a secret drawn at start, so a sender
//! cannot craft a prompt that passes for another one.
//!
//! Only prompts with findings are remembered: a clean history, judged whole, finds nothing either.
//!
//! Not persisted: after a restart each live conversation alerts once more. Bounded by `max_entities`
//! conversations (the least recently seen forgotten first, as they come) and `conversation_memory` of event
//! time (evicted on the tick). A batch the store refused is taken back (`restore`), so that a next turn is not
//! judged against a scan whose alerts were never kept.

use std::sync::LazyLock;

use foldhash::HashMap;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed, Xxh3};

/// The hashes' key, drawn once per process.
static SEED: LazyLock<u64> = LazyLock::new(rand::random);

fn text_hash(bytes: &[u8]) -> u128 {
    xxh3_128_with_seed(bytes, *SEED)
}

/// A prompt as scanned: its length, the hash of its bytes, and its injection score (0 when nothing fired).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Scanned {
    pub(super) len: usize,
    hash: u128,
    pub(super) injection_score: f32,
}

impl Scanned {
    pub(super) fn of(text: &str, injection_score: f32) -> Self {
        Self {
            len: text.len(),
            hash: text_hash(text.as_bytes()),
            injection_score,
        }
    }

    /// Whether `text` starts with this prompt, byte for byte.
    fn prefixes(&self, text: &str) -> bool {
        text.is_char_boundary(self.len) && text_hash(&text.as_bytes()[..self.len]) == self.hash
    }
}

#[derive(Debug, Clone)]
struct Entry {
    current: Scanned,
    /// What `current` replaced: the baseline of a retry of the event that recorded `current`.
    previous: Option<Scanned>,
    /// Hash of the event id that recorded `current`.
    event: u64,
    last_us: i64,
}

/// One conversation's memory before a batch recorded `recorded` in it.
#[derive(Debug, Clone)]
pub struct Undo {
    key: u128,
    before: Option<Entry>,
    recorded: u64,
}

/// Conversations' last scanned prompts, keyed by a hash of the service and conversation (or trace) id, in
/// two generations: new keys go into `current`, and when it holds half the bound it becomes `previous`
/// (the one before is dropped). Memory stays under the bound between ticks, whatever the rate of new
/// conversations (every request's trace is one), at no cost per lookup beyond a second probe.
#[derive(Default)]
pub(super) struct History {
    current: HashMap<u128, Entry>,
    previous: HashMap<u128, Entry>,
}

/// Which conversation a row's prompt belongs to; `None` without a conversation or trace id.
pub(super) fn key(service: &str, conversation: Option<&str>, trace: Option<&str>) -> Option<u128> {
    let (tag, id) = match (conversation, trace) {
        (Some(c), _) if !c.is_empty() => (b'c', c),
        (_, Some(t)) if !t.is_empty() => (b't', t),
        _ => return None,
    };
    let mut h = Xxh3::with_seed(*SEED);
    h.update(service.as_bytes());
    h.update(&[0, tag]);
    h.update(id.as_bytes());
    Some(h.digest128())
}

pub(super) fn event_hash(event_id: &str) -> u64 {
    xxh3_64_with_seed(event_id.as_bytes(), *SEED)
}

impl History {
    /// The part of `text` an earlier call of the conversation already sent and had scanned. A retry of
    /// the event that recorded the latest prompt is judged against the one before, as the first try was.
    pub(super) fn scanned_prefix(&self, key: u128, event: u64, text: &str) -> Option<Scanned> {
        let entry = self.current.get(&key).or_else(|| self.previous.get(&key))?;
        let baseline = if entry.event == event {
            entry.previous?
        } else {
            entry.current
        };
        baseline.prefixes(text).then_some(baseline)
    }

    /// Records what was scanned; `max` bounds the conversations remembered (both generations together).
    /// Returns what the conversation's memory was before, for [`History::restore`].
    pub(super) fn record(
        &mut self,
        key: u128,
        event: u64,
        time_us: i64,
        scanned: Scanned,
        max: usize,
    ) -> Undo {
        let before = self
            .current
            .remove(&key)
            .or_else(|| self.previous.remove(&key));
        let undo = Undo {
            key,
            before: before.clone(),
            recorded: event,
        };
        let mut entry = before.unwrap_or(Entry {
            current: scanned,
            previous: None,
            event,
            last_us: time_us,
        });
        if entry.event != event {
            entry.previous = Some(entry.current);
            entry.event = event;
        }
        entry.current = scanned;
        entry.last_us = entry.last_us.max(time_us);
        if self.current.len() >= (max / 2).max(1) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, entry);
        undo
    }

    /// Puts a batch's conversations back as they were before it (its store append was refused, and its
    /// alerts with it): its retry, or a next turn if none comes, is judged against what came before. A
    /// conversation that a later batch has recorded since is left as it is. `undo` is in the order the
    /// batch recorded it; the first record of each conversation holds what it was before the batch.
    pub(super) fn restore(&mut self, undo: &[Undo]) {
        let mut seen: Vec<u128> = Vec::new();
        for u in undo {
            if seen.contains(&u.key) {
                continue;
            }
            seen.push(u.key);
            let last = undo
                .iter()
                .rev()
                .find(|v| v.key == u.key)
                .map_or(u.recorded, |v| v.recorded);
            let now = self
                .current
                .get(&u.key)
                .or_else(|| self.previous.get(&u.key));
            if now.is_none_or(|e| e.event != last) {
                continue;
            }
            self.current.remove(&u.key);
            self.previous.remove(&u.key);
            if let Some(before) = &u.before {
                self.current.insert(u.key, before.clone());
            }
        }
    }

    /// Drops conversations idle for `memory_us` of event time.
    pub(super) fn evict_idle(&mut self, now_us: i64, memory_us: i64) {
        let oldest_kept = now_us.saturating_sub(memory_us);
        self.current.retain(|_, e| e.last_us >= oldest_kept);
        self.previous.retain(|_, e| e.last_us >= oldest_kept);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_that_extends_the_last_one_has_it_as_scanned_prefix() {
        let mut h = History::default();
        let k = key("chat", Some("c1"), None).unwrap();
        h.record(k, event_hash("e1"), 10, Scanned::of("sys\nhello", 0.9), 100);
        let p = h
            .scanned_prefix(k, event_hash("e2"), "sys\nhello\nanswer\nmore")
            .expect("prefix");
        assert_eq!((p.len, p.injection_score), (9, 0.9));
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
        h.record(k, event_hash("e1"), 10, Scanned::of("a", 0.0), 100);
        h.record(k, event_hash("e2"), 20, Scanned::of("a\nb", 0.9), 100);
        // e2 again (its alerts were lost with a refused request): against e1's prompt, as the first time.
        assert_eq!(
            h.scanned_prefix(k, event_hash("e2"), "a\nb").unwrap().len,
            1
        );
        h.record(k, event_hash("e2"), 20, Scanned::of("a\nb", 0.9), 100);
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
    fn a_restored_batch_leaves_what_came_before_it() {
        let mut h = History::default();
        let k = key("chat", Some("c1"), None).unwrap();
        h.record(k, event_hash("e1"), 10, Scanned::of("a", 0.0), 100);
        // One batch of two turns.
        let undo = [
            h.record(k, event_hash("e2"), 20, Scanned::of("a\nb", 0.9), 100),
            h.record(k, event_hash("e3"), 30, Scanned::of("a\nb\nc", 0.9), 100),
        ];
        h.restore(&undo);
        let p = h.scanned_prefix(k, event_hash("e4"), "a\nb\nc\nd").unwrap();
        assert_eq!((p.len, p.injection_score), (1, 0.0), "as after e1");
        // A conversation first seen in the batch is forgotten; one recorded since by a later batch stays.
        let other = key("chat", Some("c2"), None).unwrap();
        let undo = [h.record(other, event_hash("f1"), 10, Scanned::of("x", 0.0), 100)];
        h.restore(&undo);
        assert!(h.scanned_prefix(other, event_hash("f2"), "x\ny").is_none());
        let undo = [h.record(other, event_hash("f1"), 10, Scanned::of("x", 0.0), 100)];
        h.record(other, event_hash("f2"), 20, Scanned::of("x\ny", 0.0), 100);
        h.restore(&undo);
        assert_eq!(
            h.scanned_prefix(other, event_hash("f3"), "x\ny\nz")
                .unwrap()
                .len,
            3
        );
    }

    #[test]
    fn memory_stays_bounded_and_recent_conversations_are_kept() {
        let mut h = History::default();
        let k = |i: usize| key("s", Some(&format!("c{i}")), None).unwrap();
        for i in 0..1000 {
            h.record(k(i), event_hash("e"), i as i64, Scanned::of("x", 0.0), 10);
            // Seen again: moved to the current generation, so it outlives the rotation.
            h.record(k(0), event_hash("f"), i as i64, Scanned::of("x", 0.0), 10);
            assert!(h.len() <= 10, "{}", h.len());
        }
        assert!(h.scanned_prefix(k(0), event_hash("g"), "x").is_some());
        assert!(h.scanned_prefix(k(999), event_hash("g"), "x").is_some());
        assert!(h.scanned_prefix(k(500), event_hash("g"), "x").is_none());
        // Idle ones go on the tick.
        h.evict_idle(10_000, 1_000);
        assert_eq!(h.len(), 0);
    }
}
