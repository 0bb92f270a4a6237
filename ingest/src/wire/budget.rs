//! How much memory decoding takes. Protobuf is dense where structs are not: an empty span is two bytes on the
//! wire and some two hundred in memory, and a span's first attribute reserves room for two dozen. So a gzipped
//! body of a few kilobytes, well inside the size caps, could decode into gigabytes of empty messages.
//! Decoding therefore runs within a budget proportional to the message's size; the message types charge it
//! as decoding creates them ([`charge`], from their `Default`, which is what prost calls for each element of
//! a repeated field), and a request that overdraws it is refused as too large.
//!
//! That bounds one request; a receiver decoding many at once also bounds their sum. Its decodes run with
//! the receiver's decoding room ([`with_room`], `otlp.max_decoding_bytes`), from which
//! decoding takes [`CHUNK`] bytes at a time as it charges, and inflating and JSON parsing take what they
//! will hold before they run ([`reserve`]). Running out of room is not the sender's fault: the request is
//! refused as overloaded, to be sent again later.
//!
//! prost's decoding has no hook that can fail at those points, so running out unwinds (with a private payload
//! and without the panic hook) to [`within`], which turns it into an error. Outside [`within`] the budget is
//! unlimited: building messages in code and tests charges nothing that matters.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Bytes of decoded messages allowed per byte of the encoded message. Real telemetry needs 2-20: GenAI spans
/// of a kilobyte take about twice their size, small spans with a few attributes up to twenty times (the room
/// reserved for attributes). Empty and near-empty messages need up to several hundred.
pub const PER_ENCODED_BYTE: usize = 32;

/// Allowed on top, so that small requests never come near the limit.
const BASE: usize = 1 << 20;

/// Bytes taken from a receiver's room at once: a few dozen takes for a request of 512 GenAI spans, each a
/// lock; what a request took and did not use goes back with the rest of its room.
pub const CHUNK: usize = 64 * 1024;

/// The room installed by [`with_room`]: how to take more of it, and what was taken and not yet charged.
struct Room {
    take: Box<dyn Fn(usize) -> Result<(), NoRoom>>,
    spare: usize,
}

thread_local! {
    /// What may be charged before [`refill`] has to look: the lesser of the message's budget and the room
    /// in hand, as the last refill left them. The one cell the hot path of [`charge`] touches.
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// `LEFT` as the last refill set it: the difference is what was charged since.
    static GRANTED: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The message's budget, as of the last refill.
    static MESSAGE: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Inside [`within`], the room taken and not yet charged as of the last refill (unlimited without a
    /// room); outside, unlimited.
    static SPARE: Cell<usize> = const { Cell::new(usize::MAX) };
    static ROOM: RefCell<Option<Room>> = const { RefCell::new(None) };
}

/// Why decoding stopped: the unwinding payload, which never leaves [`within`], and its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exhausted {
    /// The message overdrew its own budget: it is too large for its size.
    Message,
    /// The receiver's room ran out.
    Room(NoRoom),
}

/// Why the receiver's room has nothing more for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// Other requests hold it: too many are being decoded at once.
    Busy,
    /// This request alone would take more than the whole room.
    Exceeded,
}

/// Takes `bytes` from the budget of the decoding under way on this thread. Called for every span,
/// attribute and value, so it touches one thread-local cell and leaves the rest to [`refill`].
pub(crate) fn charge(bytes: usize) {
    LEFT.with(|left| match left.get().checked_sub(bytes) {
        Some(rest) => left.set(rest),
        None => refill(bytes),
    })
}

/// `charge` past what [`LEFT`] allowed: settles what was charged since the last refill against the
/// message's budget and the room in hand, takes more room if that is what ran out, and grants anew; or
/// unwinds to [`within`] if the message or the room has no more.
#[cold]
#[inline(never)]
fn refill(bytes: usize) {
    let used = GRANTED.get() - LEFT.get();
    let message = MESSAGE.get() - used;
    let mut spare = SPARE.get() - used;
    let settle = |message: usize, spare: usize, grant: usize| {
        MESSAGE.set(message);
        SPARE.set(spare);
        GRANTED.set(grant);
        LEFT.set(grant);
    };
    let Some(message) = message.checked_sub(bytes) else {
        settle(0, spare, 0);
        resume_unwind(Box::new(Exhausted::Message));
    };
    if spare < bytes {
        let need = bytes - spare;
        match ROOM.with_borrow(|room| room.as_ref().map_or(Ok(need), |r| r.take_up_to(need))) {
            Ok(taken) => spare += taken,
            Err(no_room) => {
                settle(message, spare, 0);
                resume_unwind(Box::new(Exhausted::Room(no_room)));
            }
        }
    }
    let spare = spare - bytes;
    settle(message, spare, message.min(spare));
}

impl Room {
    /// Takes a chunk of the room for `need` bytes, or just `need` if a chunk is more than is left: what was
    /// taken.
    fn take_up_to(&self, need: usize) -> Result<usize, NoRoom> {
        let chunk = need.max(CHUNK);
        match (self.take)(chunk) {
            Ok(()) => Ok(chunk),
            Err(_) if chunk > need => (self.take)(need).map(|()| need),
            Err(no_room) => Err(no_room),
        }
    }
}

/// Takes `bytes` of the installed room for memory about to be held outside [`within`] (an inflated body, a
/// parsed JSON tree). Always there without a room.
pub(crate) fn reserve(bytes: usize) -> Result<(), NoRoom> {
    ROOM.with_borrow_mut(|room| {
        let Some(room) = room else { return Ok(()) };
        if let Some(rest) = room.spare.checked_sub(bytes) {
            room.spare = rest;
            return Ok(());
        }
        let need = bytes - room.spare;
        let taken = room.take_up_to(need)?;
        room.spare = room.spare + taken - bytes;
        Ok(())
    })
}

/// Runs `f` with `take` as the room its decodes draw on: `take(n)` takes `n` bytes more, or says why it
/// cannot. What is taken stays taken; the caller gives it back when the decoded messages are gone.
pub(crate) fn with_room<T>(
    take: impl Fn(usize) -> Result<(), NoRoom> + 'static,
    f: impl FnOnce() -> T,
) -> T {
    /// Puts back the room that was installed before, also when `f` panics.
    struct Restore(Option<Room>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ROOM.set(self.0.take());
        }
    }
    let _restore = Restore(ROOM.replace(Some(Room {
        take: Box::new(take),
        spare: 0,
    })));
    f()
}

/// The budget for a message of `encoded_bytes`.
pub fn limit(encoded_bytes: usize) -> usize {
    encoded_bytes
        .saturating_mul(PER_ENCODED_BYTE)
        .saturating_add(BASE)
}

/// Runs `decode` (of a message of `encoded_bytes`) within its budget and the installed room; whatever was
/// decoded is dropped if either ran out.
pub(crate) fn within<T>(encoded_bytes: usize, decode: impl FnOnce() -> T) -> Result<T, Exhausted> {
    let spare = ROOM.with_borrow(|room| room.as_ref().map_or(usize::MAX, |room| room.spare));
    let message = limit(encoded_bytes);
    let grant = message.min(spare);
    let outer = (
        LEFT.replace(grant),
        GRANTED.replace(grant),
        MESSAGE.replace(message),
        SPARE.replace(spare),
    );
    let result = catch_unwind(AssertUnwindSafe(decode));
    let spare = SPARE.get() - (GRANTED.get() - LEFT.get());
    LEFT.set(outer.0);
    GRANTED.set(outer.1);
    MESSAGE.set(outer.2);
    SPARE.set(outer.3);
    ROOM.with_borrow_mut(|room| {
        if let Some(room) = room {
            room.spare = spare;
        }
    });
    match result {
        Ok(decoded) => Ok(decoded),
        Err(payload) => match payload.downcast::<Exhausted>() {
            Ok(exhausted) => Err(*exhausted),
            Err(payload) => resume_unwind(payload),
        },
    }
}

/// A room of `bytes` for tests, and what has been taken of it.
#[cfg(test)]
pub(crate) fn test_room(
    bytes: usize,
) -> (
    std::rc::Rc<Cell<usize>>,
    impl Fn(usize) -> Result<(), NoRoom>,
) {
    let taken = std::rc::Rc::new(Cell::new(0usize));
    let counter = taken.clone();
    let take = move |n: usize| {
        let after = counter.get().saturating_add(n);
        if after > bytes {
            return Err(NoRoom::Busy);
        }
        counter.set(after);
        Ok(())
    };
    (taken, take)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::wire::{ScopeSpans, Span, TracesRequest};

    /// `spans` empty spans, encoded: two bytes each on the wire, a `Span` each in memory.
    fn empty_spans(spans: usize) -> Bytes {
        let request = TracesRequest {
            resource_spans: vec![crate::wire::ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![Span::default(); spans],
                }],
            }],
        };
        Bytes::from(request.encode_to_vec())
    }

    #[test]
    fn decoding_takes_the_room_in_chunks_as_it_charges() {
        let body = empty_spans(2_000);
        let charged = 2_000 * std::mem::size_of::<Span>();
        let (taken, take) = test_room(usize::MAX);
        let decoded = with_room(take, || within(body.len(), || TracesRequest::decode(body)));
        let spans = decoded.expect("within budget").expect("decodes");
        assert_eq!(spans.resource_spans[0].scope_spans[0].spans.len(), 2_000);
        let taken = taken.get();
        assert!(
            taken >= charged && taken < charged + CHUNK,
            "{taken} for {charged} charged"
        );
        assert_eq!(taken % CHUNK, 0, "taken a chunk at a time");
    }

    #[test]
    fn a_decode_past_the_room_stops_and_what_it_took_stays_taken() {
        let body = empty_spans(2_000);
        let (taken, take) = test_room(3 * CHUNK);
        let decoded = with_room(take, || within(body.len(), || TracesRequest::decode(body)));
        assert_eq!(decoded, Err(Exhausted::Room(NoRoom::Busy)));
        // The caller gives it back with the request's other bytes.
        assert_eq!(taken.get(), 3 * CHUNK);
        // The room is gone with `with_room`: the same decode, outside it, takes nothing and succeeds.
        let body = empty_spans(2_000);
        assert!(within(body.len(), || TracesRequest::decode(body)).is_ok());
    }

    #[test]
    fn reserving_draws_on_what_decoding_left_over() {
        let (taken, take) = test_room(2 * CHUNK);
        with_room(take, || {
            assert_eq!(reserve(10), Ok(()));
            assert_eq!(
                taken.get(),
                CHUNK,
                "a whole chunk, of which 10 bytes are used"
            );
            let body = empty_spans(10);
            within(body.len(), || TracesRequest::decode(body))
                .expect("within budget")
                .expect("decodes");
            assert_eq!(taken.get(), CHUNK, "the decode fitted in the chunk's rest");
            assert_eq!(reserve(2 * CHUNK), Err(NoRoom::Busy));
        });
        // Without a room, nothing is counted.
        assert_eq!(reserve(usize::MAX), Ok(()));
    }

    #[test]
    fn messages_built_outside_a_decode_take_no_room() {
        let (taken, take) = test_room(0);
        with_room(take, || {
            let request = empty_spans(100);
            let decoded = TracesRequest::decode(request).expect("decodes");
            assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 100);
        });
        assert_eq!(taken.get(), 0);
    }

    /// The message's own budget (32 bytes per encoded byte, plus 1 MiB) holds whether or not a room is
    /// installed, and whichever of the two runs out first.
    #[test]
    fn a_message_over_its_own_budget_is_refused_with_or_without_a_room() {
        // 300,000 empty spans: 600 KB on the wire, some 70 MB as spans, over 32 x 600 KB + 1 MiB.
        let body = empty_spans(300_000);
        let over = || within(body.len(), || TracesRequest::decode(body.clone())).map(drop);
        assert_eq!(over(), Err(Exhausted::Message));
        let (taken, take) = test_room(usize::MAX);
        assert_eq!(with_room(take, over), Err(Exhausted::Message));
        assert!(taken.get() <= limit(body.len()) + CHUNK, "{}", taken.get());
        // Within its budget, a message decodes with a room as without.
        let fits = empty_spans(1_000);
        let (_, take) = test_room(usize::MAX);
        let decoded = with_room(take, || {
            within(fits.len(), || TracesRequest::decode(fits.clone()))
        });
        assert_eq!(
            decoded
                .expect("within budget")
                .expect("decodes")
                .resource_spans[0]
                .scope_spans[0]
                .spans
                .len(),
            1_000
        );
    }
}
