//! OTLP metrics as Vigil reads them: only how many data points a request carries, since metrics are counted
//! and never stored. `opentelemetry_proto`'s owned types built every point, attribute and exemplar first: a
//! 16 KB gzip body of 16 MiB of empty `resource_metrics` entries (`0a 00`, repeated) became 8 M messages of
//! some 200 bytes each, 1.7 GB. Here a point is a zero-sized message (prost skips its fields by their
//! length, allocating nothing), and every other message kept is a vector or an optional one (at most 32
//! bytes) for at least two encoded bytes: with vector growth, within the 32 bytes per encoded byte the
//! trace and log messages are held to ([`super::budget`]).

use prost::Message;

/// `ExportMetricsServiceRequest` / `MetricsData`: field 1, `resource_metrics`.
#[derive(Clone, PartialEq, Message)]
pub struct MetricsRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceMetrics {
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

/// A metric's data: gauge (5), sum (7), histogram (9), exponential histogram (10) or summary (11), each a
/// message whose field 1 is the repeated data points.
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(oneof = "Data", tags = "5, 7, 9, 10, 11")]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Points),
    #[prost(message, tag = "7")]
    Sum(Points),
    #[prost(message, tag = "9")]
    Histogram(Points),
    #[prost(message, tag = "10")]
    ExponentialHistogram(Points),
    #[prost(message, tag = "11")]
    Summary(Points),
}

#[derive(Clone, PartialEq, Message)]
pub struct Points {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<Point>,
}

/// A data point of any kind, with none of its fields: zero-sized, so a million of them allocate nothing.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct Point {}

impl MetricsRequest {
    /// Data points in the request, over every metric kind.
    pub fn points(&self) -> usize {
        self.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(
                    Data::Gauge(p)
                    | Data::Sum(p)
                    | Data::Histogram(p)
                    | Data::ExponentialHistogram(p)
                    | Data::Summary(p),
                ) => p.data_points.len(),
                None => 0,
            })
            .sum()
    }
}
