//! `opentelemetry.proto.collector.logs.v1` and `logs.v1`: an export request's log records (a Kafka
//! `LogsData` has the same wire form).

use bytes::{Buf, BufMut, Bytes};
use bytestring::ByteString;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::common::{self, AnyValue, InstrumentationScope, KeyValue, Resource};
use super::field;

#[derive(Clone, PartialEq, prost::Message)]
pub struct LogsRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeLogs {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

/// A log record's timing, body, attributes, ids and event name (severity is not read).
#[derive(Clone, PartialEq, Debug)]
pub struct LogRecord {
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub body: Option<AnyValue>,
    pub attributes: Vec<KeyValue>,
    pub trace_id: Bytes,
    pub span_id: Bytes,
    pub event_name: ByteString,
    /// W3C trace flags of the record's span context; bit 0 = sampled (the span itself is exported).
    pub flags: u32,
}

impl Default for LogRecord {
    /// Charged to the decode budget, as a span is.
    fn default() -> Self {
        super::budget::charge(std::mem::size_of::<LogRecord>());
        LogRecord {
            time_unix_nano: 0,
            observed_time_unix_nano: 0,
            body: None,
            attributes: Vec::new(),
            trace_id: Bytes::new(),
            span_id: Bytes::new(),
            event_name: ByteString::new(),
            flags: 0,
        }
    }
}

impl Message for LogRecord {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        field::encode_fixed64(1, self.time_unix_nano, buf);
        if let Some(body) = &self.body {
            encoding::message::encode(5, body, buf);
        }
        encoding::message::encode_repeated(6, &self.attributes, buf);
        if self.flags != 0 {
            encoding::fixed32::encode(8, &self.flags, buf);
        }
        field::encode_bytes(9, &self.trace_id, buf);
        field::encode_bytes(10, &self.span_id, buf);
        field::encode_fixed64(11, self.observed_time_unix_nano, buf);
        field::encode_str(12, &self.event_name, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::fixed64::merge(wire_type, &mut self.time_unix_nano, buf, ctx)
                .map_err(field::at("LogRecord", "time_unix_nano")),
            5 => encoding::message::merge(
                wire_type,
                self.body.get_or_insert_with(AnyValue::default),
                buf,
                ctx,
            )
            .map_err(field::at("LogRecord", "body")),
            6 => common::merge_attribute(wire_type, &mut self.attributes, buf, ctx)
                .map_err(field::at("LogRecord", "attributes")),
            8 => encoding::fixed32::merge(wire_type, &mut self.flags, buf, ctx)
                .map_err(field::at("LogRecord", "flags")),
            9 => encoding::bytes::merge(wire_type, &mut self.trace_id, buf, ctx)
                .map_err(field::at("LogRecord", "trace_id")),
            10 => encoding::bytes::merge(wire_type, &mut self.span_id, buf, ctx)
                .map_err(field::at("LogRecord", "span_id")),
            11 => encoding::fixed64::merge(wire_type, &mut self.observed_time_unix_nano, buf, ctx)
                .map_err(field::at("LogRecord", "observed_time_unix_nano")),
            12 => field::merge_str(wire_type, &mut self.event_name, buf, ctx)
                .map_err(field::at("LogRecord", "event_name")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        field::fixed64_len(1, self.time_unix_nano)
            + self
                .body
                .as_ref()
                .map_or(0, |b| encoding::message::encoded_len(5, b))
            + encoding::message::encoded_len_repeated(6, &self.attributes)
            + if self.flags != 0 {
                encoding::fixed32::encoded_len(8, &self.flags)
            } else {
                0
            }
            + field::bytes_len(9, &self.trace_id)
            + field::bytes_len(10, &self.span_id)
            + field::fixed64_len(11, self.observed_time_unix_nano)
            + field::str_len(12, &self.event_name)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}
