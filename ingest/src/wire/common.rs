//! `opentelemetry.proto.common.v1` and `resource.v1`: attributes and their values.

use bytes::{Buf, BufMut, Bytes};
use bytestring::ByteString;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::field;

/// One attribute. The key is a slice of the request body.
#[derive(Clone, PartialEq, Debug)]
pub struct KeyValue {
    pub key: ByteString,
    pub value: Option<AnyValue>,
}

impl Default for KeyValue {
    /// Charged to the decode budget ([`super::budget`]): prost creates each attribute this way.
    fn default() -> Self {
        super::budget::charge(std::mem::size_of::<KeyValue>());
        KeyValue {
            key: ByteString::new(),
            value: None,
        }
    }
}

impl Message for KeyValue {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        field::encode_str(1, &self.key, buf);
        if let Some(value) = &self.value {
            encoding::message::encode(2, value, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => field::merge_str(wire_type, &mut self.key, buf, ctx)
                .map_err(field::at("KeyValue", "key")),
            2 => encoding::message::merge(
                wire_type,
                self.value.get_or_insert_with(AnyValue::default),
                buf,
                ctx,
            )
            .map_err(field::at("KeyValue", "value")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        field::str_len(1, &self.key)
            + self
                .value
                .as_ref()
                .map_or(0, |v| encoding::message::encoded_len(2, v))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Attributes reserved for a span or log record on its first one. GenAI spans carry 15 to 25; grown one
/// doubling at a time from empty, the vector was reallocated four times per span and copied every attribute
/// up to three times.
const ATTRIBUTES_HINT: usize = 24;

/// Merges one `attributes` entry of a span or log record.
pub(super) fn merge_attribute(
    wire_type: WireType,
    attributes: &mut Vec<KeyValue>,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    if attributes.capacity() == 0 {
        super::budget::charge(ATTRIBUTES_HINT * std::mem::size_of::<KeyValue>());
        attributes.reserve_exact(ATTRIBUTES_HINT);
    }
    encoding::message::merge_repeated(wire_type, attributes, buf, ctx)
}

/// An attribute value: OTLP's `oneof value`, with strings and bytes as slices of the request body.
#[derive(Clone, PartialEq, Debug)]
pub struct AnyValue {
    pub value: Option<any_value::Value>,
}

impl Default for AnyValue {
    /// Charged to the decode budget: prost creates each element of an array value this way.
    fn default() -> Self {
        super::budget::charge(std::mem::size_of::<AnyValue>());
        AnyValue { value: None }
    }
}

pub mod any_value {
    use bytes::Bytes;
    use bytestring::ByteString;

    /// The same variants, in the same order, as `opentelemetry_proto`'s `any_value::Value`.
    #[derive(Clone, PartialEq, Debug)]
    pub enum Value {
        StringValue(ByteString),
        BoolValue(bool),
        IntValue(i64),
        DoubleValue(f64),
        ArrayValue(super::ArrayValue),
        KvlistValue(super::KeyValueList),
        BytesValue(Bytes),
        StringValueStrindex(i32),
    }
}

impl AnyValue {
    /// Merges oneof member `tag` (1-8).
    fn merge_member(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        use any_value::Value;
        // As prost's derive does for a oneof: a repeated message member merges into the one already there,
        // any other member replaces whatever was set.
        let value = match tag {
            1 => {
                let mut s = ByteString::new();
                field::merge_str(wire_type, &mut s, buf, ctx)?;
                Value::StringValue(s)
            }
            2 => {
                let mut b = false;
                encoding::bool::merge(wire_type, &mut b, buf, ctx)?;
                Value::BoolValue(b)
            }
            3 => {
                let mut i = 0;
                encoding::int64::merge(wire_type, &mut i, buf, ctx)?;
                Value::IntValue(i)
            }
            4 => {
                let mut d = 0.0;
                encoding::double::merge(wire_type, &mut d, buf, ctx)?;
                Value::DoubleValue(d)
            }
            5 => {
                if let Some(Value::ArrayValue(a)) = &mut self.value {
                    return encoding::message::merge(wire_type, a, buf, ctx);
                }
                let mut a = ArrayValue::default();
                encoding::message::merge(wire_type, &mut a, buf, ctx)?;
                Value::ArrayValue(a)
            }
            6 => {
                if let Some(Value::KvlistValue(kvs)) = &mut self.value {
                    return encoding::message::merge(wire_type, kvs, buf, ctx);
                }
                let mut kvs = KeyValueList::default();
                encoding::message::merge(wire_type, &mut kvs, buf, ctx)?;
                Value::KvlistValue(kvs)
            }
            7 => {
                let mut b = Bytes::new();
                encoding::bytes::merge(wire_type, &mut b, buf, ctx)?;
                Value::BytesValue(b)
            }
            8 => {
                let mut i = 0;
                encoding::int32::merge(wire_type, &mut i, buf, ctx)?;
                Value::StringValueStrindex(i)
            }
            _ => return encoding::skip_field(wire_type, tag, buf, ctx),
        };
        self.value = Some(value);
        Ok(())
    }
}

impl Message for AnyValue {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use any_value::Value::*;
        // A oneof member is encoded even when it holds its type's default.
        match &self.value {
            None => {}
            Some(StringValue(s)) => encoding::bytes::encode(1, s.as_bytes(), buf),
            Some(BoolValue(b)) => encoding::bool::encode(2, b, buf),
            Some(IntValue(i)) => encoding::int64::encode(3, i, buf),
            Some(DoubleValue(d)) => encoding::double::encode(4, d, buf),
            Some(ArrayValue(a)) => encoding::message::encode(5, a, buf),
            Some(KvlistValue(kvs)) => encoding::message::encode(6, kvs, buf),
            Some(BytesValue(b)) => encoding::bytes::encode(7, b, buf),
            Some(StringValueStrindex(i)) => encoding::int32::encode(8, i, buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if !(1..=8).contains(&tag) {
            return encoding::skip_field(wire_type, tag, buf, ctx);
        }
        self.merge_member(tag, wire_type, buf, ctx)
            .map_err(field::at("AnyValue", "value"))
    }

    fn encoded_len(&self) -> usize {
        use any_value::Value::*;
        match &self.value {
            None => 0,
            Some(StringValue(s)) => encoding::bytes::encoded_len(1, s.as_bytes()),
            Some(BoolValue(b)) => encoding::bool::encoded_len(2, b),
            Some(IntValue(i)) => encoding::int64::encoded_len(3, i),
            Some(DoubleValue(d)) => encoding::double::encoded_len(4, d),
            Some(ArrayValue(a)) => encoding::message::encoded_len(5, a),
            Some(KvlistValue(kvs)) => encoding::message::encoded_len(6, kvs),
            Some(BytesValue(b)) => encoding::bytes::encoded_len(7, b),
            Some(StringValueStrindex(i)) => encoding::int32::encoded_len(8, i),
        }
    }

    fn clear(&mut self) {
        self.value = None;
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// Only the scope's name is read (into `otel.scope.name`); one per scope, so it is an owned copy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
}
