//! `opentelemetry.proto.collector.trace.v1` and `trace.v1`: an export request's spans (a Kafka
//! `TracesData` has the same wire form).

use bytes::{Buf, BufMut, Bytes};
use bytestring::ByteString;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::common::{self, InstrumentationScope, KeyValue, Resource};
use super::field;

#[derive(Clone, PartialEq, prost::Message)]
pub struct TracesRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

/// A span's identity, timing, name, attributes, events and status; ids and name are slices of the body.
#[derive(Clone, PartialEq, Debug)]
pub struct Span {
    pub trace_id: Bytes,
    pub span_id: Bytes,
    /// Links an `execute_tool` span, which carries no agent attributes, to the `invoke_agent` span above it.
    pub parent_span_id: Bytes,
    pub name: ByteString,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<KeyValue>,
    pub events: Vec<span::Event>,
    pub status: Option<Status>,
}

impl Default for Span {
    /// Charged to the decode budget: prost creates each span of a repeated field this way.
    fn default() -> Self {
        super::budget::charge(std::mem::size_of::<Span>());
        Span {
            trace_id: Bytes::new(),
            span_id: Bytes::new(),
            parent_span_id: Bytes::new(),
            name: ByteString::new(),
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            attributes: Vec::new(),
            events: Vec::new(),
            status: None,
        }
    }
}

impl Message for Span {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        field::encode_bytes(1, &self.trace_id, buf);
        field::encode_bytes(2, &self.span_id, buf);
        field::encode_bytes(4, &self.parent_span_id, buf);
        field::encode_str(5, &self.name, buf);
        field::encode_fixed64(7, self.start_time_unix_nano, buf);
        field::encode_fixed64(8, self.end_time_unix_nano, buf);
        encoding::message::encode_repeated(9, &self.attributes, buf);
        encoding::message::encode_repeated(11, &self.events, buf);
        if let Some(status) = &self.status {
            encoding::message::encode(15, status, buf);
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
            1 => encoding::bytes::merge(wire_type, &mut self.trace_id, buf, ctx)
                .map_err(field::at("Span", "trace_id")),
            2 => encoding::bytes::merge(wire_type, &mut self.span_id, buf, ctx)
                .map_err(field::at("Span", "span_id")),
            4 => encoding::bytes::merge(wire_type, &mut self.parent_span_id, buf, ctx)
                .map_err(field::at("Span", "parent_span_id")),
            5 => field::merge_str(wire_type, &mut self.name, buf, ctx)
                .map_err(field::at("Span", "name")),
            7 => encoding::fixed64::merge(wire_type, &mut self.start_time_unix_nano, buf, ctx)
                .map_err(field::at("Span", "start_time_unix_nano")),
            8 => encoding::fixed64::merge(wire_type, &mut self.end_time_unix_nano, buf, ctx)
                .map_err(field::at("Span", "end_time_unix_nano")),
            9 => common::merge_attribute(wire_type, &mut self.attributes, buf, ctx)
                .map_err(field::at("Span", "attributes")),
            11 => encoding::message::merge_repeated(wire_type, &mut self.events, buf, ctx)
                .map_err(field::at("Span", "events")),
            15 => encoding::message::merge(
                wire_type,
                self.status.get_or_insert_with(Status::default),
                buf,
                ctx,
            )
            .map_err(field::at("Span", "status")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        field::bytes_len(1, &self.trace_id)
            + field::bytes_len(2, &self.span_id)
            + field::bytes_len(4, &self.parent_span_id)
            + field::str_len(5, &self.name)
            + field::fixed64_len(7, self.start_time_unix_nano)
            + field::fixed64_len(8, self.end_time_unix_nano)
            + encoding::message::encoded_len_repeated(9, &self.attributes)
            + encoding::message::encoded_len_repeated(11, &self.events)
            + self
                .status
                .as_ref()
                .map_or(0, |s| encoding::message::encoded_len(15, s))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

pub mod span {
    use bytes::{Buf, BufMut};
    use bytestring::ByteString;
    use prost::encoding::{self, DecodeContext, WireType};
    use prost::{DecodeError, Message};

    use super::super::field;
    use super::KeyValue;

    /// A span event: older GenAI instrumentations carry prompt and completion in them.
    #[derive(Clone, PartialEq, Debug)]
    pub struct Event {
        pub name: ByteString,
        pub attributes: Vec<KeyValue>,
    }

    impl Default for Event {
        /// Charged to the decode budget, as a span is.
        fn default() -> Self {
            super::super::budget::charge(std::mem::size_of::<Event>());
            Event {
                name: ByteString::new(),
                attributes: Vec::new(),
            }
        }
    }

    impl Message for Event {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            field::encode_str(2, &self.name, buf);
            encoding::message::encode_repeated(3, &self.attributes, buf);
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            match tag {
                2 => field::merge_str(wire_type, &mut self.name, buf, ctx)
                    .map_err(field::at("Event", "name")),
                3 => encoding::message::merge_repeated(wire_type, &mut self.attributes, buf, ctx)
                    .map_err(field::at("Event", "attributes")),
                _ => encoding::skip_field(wire_type, tag, buf, ctx),
            }
        }

        fn encoded_len(&self) -> usize {
            field::str_len(2, &self.name)
                + encoding::message::encoded_len_repeated(3, &self.attributes)
        }

        fn clear(&mut self) {
            *self = Self::default();
        }
    }
}

/// A span's status; its message is read only when the span failed, so it is an owned copy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
}
