//! Ingest: OTLP receivers (gRPC and HTTP, protobuf and JSON) and the normalisation of OpenTelemetry GenAI
//! telemetry into Vigil's Arrow event schema.
//!
//! This crate knows nothing of detection or storage: receivers hand normalised batches to an [`EventSink`]
//! and acknowledge the client only when the sink says the events are durable.

pub mod decode;
pub mod http_server;
mod json_mapping;
pub mod kafka;
pub mod metrics;
pub mod normalize;
pub mod otlp;
pub mod schema;
pub mod security;
pub mod sink;
pub mod synth;
pub mod wire;

pub use normalize::{NormalizeContext, Normalized};
pub use schema::{event_schema, EventBatchBuilder, EventKind, EventRow, EventRowOf};
pub use sink::{Admission, EventSink, SinkError};
