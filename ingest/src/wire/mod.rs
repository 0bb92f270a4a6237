//! The OTLP trace and log messages as normalisation reads them, decoded without copying: every string and
//! byte field is a slice of the request body ([`Bytes`], and [`ByteString`] for strings, which is checked to
//! be UTF-8 as it is decoded, so malformed text in a field Vigil reads is still a decode error).
//!
//! Why not `opentelemetry_proto`'s types: they own a `String` per attribute key and value, and allocating and
//! copying those was half of decoding's cost on the ingest hot path. These messages are wire-compatible with
//! the OTLP protos and declare only the fields normalisation reads. prost skips the others by their length
//! without parsing them, so a malformed field Vigil does not read (a link, `schema_url`, `severity_text`) no
//! longer fails the request: nothing of it would have been stored. Messages with a string read per span or
//! per attribute implement [`prost::Message`] by hand (prost's derive has no zero-copy string); the rest use
//! the derive, and the scope name and status message, one per scope or per failed span, stay owned
//! `String`s. They decode; encoding exists for round-trip tests and for completeness of the trait.
//!
//! OTLP/JSON and tests still build `opentelemetry_proto` messages; [`convert`] re-encodes one into these.

pub mod budget;
mod common;
mod field;
mod logs;
pub mod metrics;
mod trace;

pub use bytestring::ByteString;
pub use common::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, Resource,
};
pub use logs::{LogRecord, LogsRequest, ResourceLogs, ScopeLogs};
pub use trace::{span, ResourceSpans, ScopeSpans, Span, Status, TracesRequest};

use bytes::Bytes;
use prost::Message;

/// Re-reads a message of another crate's types (`opentelemetry_proto`'s, from OTLP/JSON or a test) as these
/// types. Fails only where decoding its encoding would: nesting deeper than prost's recursion limit.
pub fn convert<W: Message + Default>(message: &impl Message) -> Result<W, prost::DecodeError> {
    W::decode(Bytes::from(message.encode_to_vec()))
}

/// Overwrites the first byte of `marker` in an encoded message with 0xff, which never occurs in UTF-8: how a
/// test makes well-formed protobuf whose string field is not text.
#[cfg(test)]
pub(crate) fn break_utf8(body: &mut [u8], marker: &[u8]) {
    let at = body
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the marker is in the encoded message");
    body[at] = 0xff;
}

#[cfg(test)]
mod tests;
