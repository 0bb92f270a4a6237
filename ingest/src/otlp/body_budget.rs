//! The bytes of request bodies a receiver holds at once.
//!
//! A request is admitted (and refused with 429 under overload) only after its body has been read, so that
//! the client is not cut off mid-send. Without a bound on the reading itself, a thousand clients sending
//! 4 MiB bodies at once would hold 4 GiB before any admission check ran. Every body is therefore counted
//! against one budget per receiver as its frames arrive, and the count is held until the request has been
//! answered. A body that does not fit is still read to its end, so the client gets its answer, but its
//! bytes are dropped as they arrive; the request is then refused as overloaded, with a Retry-After.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

    /// A new request's share, empty until its body arrives; keep it until the request is answered.
    pub fn charge(&self) -> Charge {
        Charge {
            room: self.room.clone(),
            state: Arc::new(Mutex::new(Held::default())),
        }
    }
}

/// What one request's body holds of the budget. Cloned into the body it counts; the room is given back
/// when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Charge {
    room: Arc<Semaphore>,
    state: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    overflowed: bool,
}

impl Charge {
    /// True if part of the body did not fit and was dropped: the request must be refused.
    pub fn overflowed(&self) -> bool {
        self.state.lock().overflowed
    }

    /// `body`, counted against this charge as it is read.
    pub fn count<B>(&self, body: B) -> Counted<B> {
        Counted {
            inner: Box::pin(body),
            charge: self.clone(),
        }
    }

    /// Takes room for `n` more bytes; false (and the charge overflowed) if there is none.
    fn take(&self, n: usize) -> bool {
        let mut held = self.state.lock();
        if held.overflowed {
            return false;
        }
        let taken = u32::try_from(n)
            .ok()
            .and_then(|n| self.room.clone().try_acquire_many_owned(n).ok());
        match (taken, held.permit.as_mut()) {
            (Some(more), Some(permit)) => permit.merge(more),
            (Some(more), None) => held.permit = Some(more),
            (None, _) => held.overflowed = true,
        }
        !held.overflowed
    }
}

/// A request body whose data frames are charged as they arrive; past the budget they are dropped (read,
/// but not kept), and the charge records it.
pub(crate) struct Counted<B> {
    inner: Pin<Box<B>>,
    charge: Charge,
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
        let frame = ready!(self.inner.as_mut().poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            // Without a copy when the body's data is `Bytes` already (hyper's, axum's).
            let frame = frame?.map_data(|mut data| data.copy_to_bytes(data.remaining()));
            Ok(match frame.data_ref() {
                Some(data) if !self.charge.take(data.len()) => Frame::data(Bytes::new()),
                _ => frame,
            })
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
