//! How much memory decoding one request may take. Protobuf is dense where structs are not: an empty span is two
//! bytes on the wire and some two hundred in memory, and a span's first attribute reserves room for two dozen.
//! So a gzipped body of a few kilobytes, well inside the size caps, could decode into gigabytes of empty
//! messages. Decoding therefore runs within a budget proportional to the message's size; the message types
//! charge it as decoding creates them ([`charge`], from their `Default`, which is what prost calls for each
//! element of a repeated field), and a request that overdraws it is refused as too large.
//!
//! prost's decoding has no hook that can fail at those points, so running out unwinds (with a private payload
//! and without the panic hook) to [`within`], which turns it into `None`. Outside [`within`] the budget is
//! unlimited: building messages in code and tests charges nothing that matters.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Bytes of decoded messages allowed per byte of the encoded message. Real telemetry needs 2-20: GenAI spans
/// of a kilobyte take about twice their size, small spans with a few attributes up to twenty times (the room
/// reserved for attributes). Empty and near-empty messages need up to several hundred.
pub const PER_ENCODED_BYTE: usize = 32;

/// Allowed on top, so that small requests never come near the limit.
const BASE: usize = 1 << 20;

thread_local! {
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The unwinding payload when the budget runs out; it never leaves [`within`].
struct Exhausted;

/// Takes `bytes` from the budget of the decoding under way on this thread.
pub(crate) fn charge(bytes: usize) {
    LEFT.with(|left| match left.get().checked_sub(bytes) {
        Some(rest) => left.set(rest),
        None => resume_unwind(Box::new(Exhausted)),
    })
}

/// The budget for a message of `encoded_bytes`.
pub fn limit(encoded_bytes: usize) -> usize {
    encoded_bytes
        .saturating_mul(PER_ENCODED_BYTE)
        .saturating_add(BASE)
}

/// Runs `decode` (of a message of `encoded_bytes`) within its budget: `None` if it ran out, and whatever was
/// decoded so far is dropped.
pub(crate) fn within<T>(encoded_bytes: usize, decode: impl FnOnce() -> T) -> Option<T> {
    let outer = LEFT.replace(limit(encoded_bytes));
    let result = catch_unwind(AssertUnwindSafe(decode));
    LEFT.set(outer);
    match result {
        Ok(decoded) => Some(decoded),
        Err(payload) if payload.is::<Exhausted>() => None,
        Err(payload) => resume_unwind(payload),
    }
}
