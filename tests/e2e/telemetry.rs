//! Vigil's own traces: with `[telemetry] otlp_endpoint` set, the spans of the request path reach a real
//! OTLP/HTTP receiver, with the configured `service.name`, nested as the request ran.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use vigil_ingest::synth::traces_request;

use crate::harness::Vigil;
use crate::sample_rows;

/// Every export request the receiver decoded.
#[derive(Default)]
struct Received(Mutex<Vec<ExportTraceServiceRequest>>);

/// A stand-in Collector: `POST /v1/traces` with a protobuf body, answered as OTLP/HTTP answers.
async fn receive(State(received): State<Arc<Received>>, body: Bytes) -> impl IntoResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            received.0.lock().push(request);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::new(),
            )
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(AnyValue::IntValue(i)) => Some(*i),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn own_traces_reach_the_configured_otlp_endpoint() {
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let collector = listener.local_addr().expect("receiver address");
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"vigil-e2e\"\n"
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("UTF-8 path").to_owned();
    // A batch delay far beyond the test: every span that arrives was flushed by the shutdown.
    let mut v = Vigil::start_with(
        &["--config", &config],
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    )
    .await;

    let now = chrono::Utc::now().timestamp_micros();
    let resp = v
        .client()
        .post(v.otlp_url("/v1/traces"))
        .bearer_auth(&v.token)
        .header("content-type", "application/x-protobuf")
        .body(traces_request(&sample_rows(1, now)).encode_to_vec())
        .send()
        .await
        .expect("OTLP/HTTP reachable");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    v.grpc_client()
        .await
        .export(traces_request(&sample_rows(2, now)))
        .await
        .expect("gRPC export accepted");
    assert_eq!(v.count("SELECT count(*) FROM events").await, 10);

    // SIGTERM: the server stops (flushing the store), then the tracer provider flushes its queue.
    tokio::task::block_in_place(|| v.stop());

    let requests = received.0.lock().clone();
    assert!(
        !requests.is_empty(),
        "no trace export arrived; vigil's log:\n{}",
        v.log()
    );
    let mut spans: Vec<Span> = Vec::new();
    for resource_spans in requests.iter().flat_map(|r| &r.resource_spans) {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        assert_eq!(
            attr_str(resource, "service.name"),
            Some("vigil-e2e"),
            "resource {resource:?}"
        );
        spans.extend(
            resource_spans
                .scope_spans
                .iter()
                .flat_map(|s| s.spans.iter().cloned()),
        );
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "otlp.export",
        "otlp.decode",
        "otlp.normalize",
        "pipeline.accept",
        "detect.process",
        "store.append",
        "sql.query",
        "store.flush",
    ] {
        assert!(names.contains(&want), "no {want} span among {names:?}");
    }

    let exports: Vec<&Span> = spans.iter().filter(|s| s.name == "otlp.export").collect();
    for transport in ["http", "grpc"] {
        let export = exports
            .iter()
            .find(|s| attr_str(&s.attributes, "transport") == Some(transport))
            .unwrap_or_else(|| panic!("no {transport} otlp.export span among {exports:?}"));
        assert_eq!(attr_str(&export.attributes, "signal"), Some("traces"));
        assert_eq!(
            attr_int(&export.attributes, "events"),
            Some(5),
            "{transport}: events recorded on the request span: {export:?}"
        );
    }

    // Nested as the request ran, across the blocking threads: export > accept > detect, append.
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let parent_name = |s: &Span| {
        by_id
            .get(s.parent_span_id.as_slice())
            .map(|p| p.name.as_str())
    };
    let accepts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "pipeline.accept")
        .collect();
    assert_eq!(accepts.len(), 2, "one pipeline.accept per request");
    for accept in &accepts {
        assert_eq!(parent_name(accept), Some("otlp.export"));
        assert_eq!(attr_int(&accept.attributes, "events"), Some(5));
    }
    for child in ["detect.process", "store.append"] {
        let under_accept = spans
            .iter()
            .filter(|s| s.name == child && parent_name(s) == Some("pipeline.accept"))
            .count();
        assert_eq!(under_accept, 2, "{child} under each pipeline.accept");
    }
    for child in ["otlp.decode", "otlp.normalize"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == child && parent_name(s) == Some("otlp.export")),
            "{child} under otlp.export"
        );
    }
    let query = spans
        .iter()
        .find(|s| s.name == "sql.query")
        .expect("sql.query span");
    assert_eq!(attr_str(&query.attributes, "interface"), Some("http"));
    assert_eq!(attr_str(&query.attributes, "outcome"), Some("ok"));
    let flushed: i64 = spans
        .iter()
        .filter(|s| s.name == "store.flush")
        .filter_map(|s| attr_int(&s.attributes, "rows"))
        .sum();
    assert!(
        flushed >= 10,
        "the flushes wrote the events: {flushed} rows"
    );
    // Only Vigil's own spans: nothing from hyper, tonic, h2 or the exporter.
    let scopes: Vec<&str> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .filter_map(|s| s.scope.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert!(
        scopes.iter().all(|s| *s == "vigil"),
        "instrumentation scopes {scopes:?}"
    );
}
