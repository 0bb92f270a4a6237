//! The bytes of request bodies a receiver holds at once, and (a room of the same kind) of what they inflate
//! and decode into.
//!
//! A request is admitted (and refused with 429 under overload) only after its body has been read, so that
//! the client is not cut off mid-send. Without a bound on the reading itself, a thousand clients sending
//! 4 MiB bodies at once would hold 4 GiB before any admission check ran. Every body is therefore counted
//! against one budget per receiver as its frames arrive (a gRPC message as soon as its prefix declares its
//! length, and again once inflated), and the count is held while the request waits for admission and is
//! decoded, until its bytes are gone. A body that does not fit is still read to its end (up to the size
//! cap), so the client gets its answer, but its bytes are dropped as they arrive; the request is then
//! refused as overloaded, with a Retry-After.
//!
//! The same kind of room bounds what admitted requests inflate and decode into (`max_decoding_bytes`,
//! drawn on through [`crate::wire::budget::with_room`]): up to 32 times a message's size each, which alone
//! would let 64 admitted decodes hold gigabytes between them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::wire::budget::NoRoom;

/// How long a client refused for want of body room is told to wait: bodies in flight are answered within
/// a request's time, well under this.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The room for bodies of one receiver.
#[derive(Clone)]
pub(crate) struct BodyBudget {
    room: Arc<Semaphore>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            room: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }

    /// The budget's size, for the refusal's message.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A new request's share, empty until its body arrives; keep it as long as the body's bytes.
    pub fn charge(&self) -> Charge {
        Charge {
            room: self.room.clone(),
            total: self.bytes,
            state: Arc::new(Mutex::new(Held::default())),
        }
    }
}

/// What one request's body holds of the budget. Cloned into the body it counts and into the work that
/// decodes it; the room is given back when the last clone is dropped, so a request whose client hung up
/// keeps its room while the blocking pool still holds its bytes.
#[derive(Clone)]
pub(crate) struct Charge {
    room: Arc<Semaphore>,
    /// The budget's size: a request holding that much could never be given more.
    total: usize,
    state: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    overflowed: bool,
    /// Bytes received, kept or not.
    seen: usize,
    /// A gRPC message declared a length past the cap: too large whatever the budget holds.
    oversized: bool,
}

impl Charge {
    /// True if part of the body did not fit and was dropped: the request must be refused.
    pub fn overflowed(&self) -> bool {
        self.state.lock().overflowed
    }

    /// Bytes of body received, kept or dropped.
    pub fn seen(&self) -> usize {
        self.state.lock().seen
    }

    /// True if a gRPC message declared more than the message cap: to be refused as too large, not as
    /// overloaded, even when its bytes were dropped for want of room.
    pub fn oversized(&self) -> bool {
        self.state.lock().oversized
    }

    /// `body`, counted against this charge as it is read: every byte as it arrives (`Framing::Bytes`), or
    /// each gRPC message's declared length as soon as its 5-byte prefix is read (`Framing::Grpc`: tonic
    /// reserves that much before the message arrives). `drain` is the most a valid body can be: past the
    /// budget, that much is read (and dropped) before the body is cut short.
    pub fn count<B>(&self, body: B, framing: Framing, drain: usize) -> Counted<B> {
        Counted {
            inner: Box::pin(body),
            charge: self.clone(),
            framing,
            prefix: [0; 5],
            prefix_len: 0,
            message_left: 0,
            drain,
        }
    }

    /// Takes room for `n` more bytes of body; false (and the charge overflowed) if there is none.
    pub fn take(&self, n: usize) -> bool {
        let mut held = self.state.lock();
        if held.overflowed {
            return false;
        }
        if !self.acquire(&mut held, n) {
            held.overflowed = true;
        }
        !held.overflowed
    }

    /// Takes room for `n` more bytes of what a body decodes into. The charge does not overflow when there is
    /// none: the decode fails instead, and says whether waiting would help.
    pub fn take_room(&self, n: usize) -> Result<(), NoRoom> {
        let mut held = self.state.lock();
        let holds = held.permit.as_ref().map_or(0, |p| p.num_permits());
        if holds.saturating_add(n) > self.total {
            return Err(NoRoom::Exceeded);
        }
        match self.acquire(&mut held, n) {
            true => Ok(()),
            false => Err(NoRoom::Busy),
        }
    }

    fn acquire(&self, held: &mut Held, n: usize) -> bool {
        let Some(more) = u32::try_from(n)
            .ok()
            .and_then(|n| self.room.clone().try_acquire_many_owned(n).ok())
        else {
            return false;
        };
        match held.permit.as_mut() {
            Some(permit) => permit.merge(more),
            None => held.permit = Some(more),
        }
        true
    }

    fn saw(&self, n: usize) {
        let mut held = self.state.lock();
        held.seen = held.seen.saturating_add(n);
    }
}

/// How a body's bytes become memory on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Buffered as they arrive (an HTTP body).
    Bytes,
    /// Length-prefixed gRPC messages.
    Grpc,
}

/// A request body whose data is charged as it arrives; past the budget it is dropped (read, but not
/// kept), and the charge records it.
pub(crate) struct Counted<B> {
    inner: Pin<Box<B>>,
    charge: Charge,
    framing: Framing,
    /// The gRPC message prefix read so far (flag, then the length, big-endian).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current gRPC message still to come (charged already).
    message_left: usize,
    drain: usize,
}

impl<B> Counted<B> {
    /// The bytes of `data` to charge: all of them for a plain body; for gRPC, each message's prefix and
    /// declared length as the prefix completes.
    fn due(&mut self, data: &[u8]) -> usize {
        if self.framing == Framing::Bytes {
            return data.len();
        }
        let (mut due, mut rest) = (0usize, data);
        while !rest.is_empty() {
            if self.message_left > 0 {
                let n = self.message_left.min(rest.len());
                self.message_left -= n;
                rest = &rest[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(rest.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&rest[..n]);
            self.prefix_len += n;
            rest = &rest[n..];
            if self.prefix_len == 5 {
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                // A length over the message cap is refused by tonic as soon as it reads it.
                if len.saturating_add(5) > self.drain {
                    self.charge.state.lock().oversized = true;
                }
                due = due.saturating_add(5 + len.min(self.drain));
                self.message_left = len;
                self.prefix_len = 0;
            }
        }
        due
    }
}

impl<B> Body for Counted<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.charge.overflowed() && self.charge.seen() > self.drain {
            // Refused already, and past what a valid request could be: stop reading it.
            return Poll::Ready(None);
        }
        let frame = ready!(self.inner.as_mut().poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            // Without a copy when the body's data is `Bytes` already (hyper's, axum's).
            let frame = frame?.map_data(|mut data| data.copy_to_bytes(data.remaining()));
            let Some(data) = frame.data_ref() else {
                return Ok(frame);
            };
            self.charge.saw(data.len());
            let due = self.due(data);
            Ok(
                if due > 0 && !self.charge.take(due) || self.charge.overflowed() {
                    Frame::data(Bytes::new())
                } else {
                    frame
                },
            )
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counted bytes of `chunks` sent through a gRPC-framed body (without polling a real body).
    fn grpc_due(chunks: &[&[u8]]) -> usize {
        let charge = BodyBudget::new(1 << 20).charge();
        let mut counted = charge.count((), Framing::Grpc, 1 << 20);
        chunks.iter().map(|c| counted.due(c)).sum()
    }

    #[test]
    fn grpc_messages_are_charged_their_declared_length_as_soon_as_their_prefix_is_read() {
        // A prefix claiming 1,000 bytes, split across chunks, and nothing after it: charged 1,005 at once.
        assert_eq!(grpc_due(&[&[0, 0, 0], &[3, 232]]), 1005);
        // Two whole messages in one chunk: their bytes are not charged again.
        let mut two = vec![0, 0, 0, 0, 2, 7, 7, 1, 0, 0, 0, 1, 9];
        assert_eq!(grpc_due(&[&two]), 7 + 6);
        two.truncate(6);
        assert_eq!(grpc_due(&[&two[..3], &two[3..]]), 7);
    }

    #[test]
    fn a_charge_holds_its_room_until_dropped_and_overflows_past_the_budget() {
        let budget = BodyBudget::new(100);
        let first = budget.charge();
        assert!(first.take(60) && first.take(30));
        let second = budget.charge();
        assert!(!second.take(20), "90 of 100 bytes are held");
        assert!(second.overflowed() && !second.take(1));
        assert!(!first.overflowed());
        drop(first);
        let third = budget.charge();
        assert!(third.take(100));
    }
}
