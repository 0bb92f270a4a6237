//! Field codecs for the hand-written messages: a `string` field as a [`ByteString`] slice of the body (prost has
//! no zero-copy string), proto3's omission of empty `string`, `bytes` and zero `fixed64` fields when encoding, and the field
//! path prost's derive adds to a decode error.

use bytes::{Buf, BufMut, Bytes};
use bytestring::ByteString;
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// Decodes a `string` field as a slice of `buf` (zero-copy when `buf` is a [`Bytes`]), refusing bytes that
/// are not UTF-8 as prost's own `String` decoding does.
pub(super) fn merge_str(
    wire_type: WireType,
    value: &mut ByteString,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    let mut raw = Bytes::new();
    encoding::bytes::merge(wire_type, &mut raw, buf, ctx)?;
    *value = ByteString::try_from(raw).map_err(|_| not_utf8())?;
    Ok(())
}

/// prost offers no other way to build its error from outside; the message is the one prost uses itself.
#[allow(deprecated)]
fn not_utf8() -> DecodeError {
    DecodeError::new("invalid string value: data is not UTF-8 encoded")
}

/// Encodes a proto3 `string` field (omitted when empty): on the wire it is a `bytes` field.
pub(super) fn encode_str(tag: u32, value: &ByteString, buf: &mut impl BufMut) {
    encode_bytes(tag, value.as_bytes(), buf);
}

pub(super) fn str_len(tag: u32, value: &ByteString) -> usize {
    bytes_len(tag, value.as_bytes())
}

/// Encodes a proto3 `bytes` field (omitted when empty).
pub(super) fn encode_bytes(tag: u32, value: &Bytes, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encoding::bytes::encode(tag, value, buf);
    }
}

pub(super) fn bytes_len(tag: u32, value: &Bytes) -> usize {
    if value.is_empty() {
        0
    } else {
        encoding::bytes::encoded_len(tag, value)
    }
}

/// Encodes a proto3 `fixed64` field (omitted when zero): the OTLP timestamps.
pub(super) fn encode_fixed64(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encoding::fixed64::encode(tag, &value, buf);
    }
}

pub(super) fn fixed64_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        encoding::fixed64::encoded_len(tag, &value)
    }
}

/// Adds `message.field` to a decode error's path, as prost's derive does, so that a 400 names the field
/// (`Span.name: invalid string value ...`).
pub(super) fn at(
    message: &'static str,
    field: &'static str,
) -> impl FnOnce(DecodeError) -> DecodeError {
    move |mut err| {
        err.push(message, field);
        err
    }
}
