//! Vigil's own traces: the `tracing` spans on the request path (OTLP export, normalise, detect, WAL append,
//! flush, SQL query), exported with OpenTelemetry over OTLP/HTTP when `[telemetry] otlp_endpoint` is set.
//!
//! Without an endpoint the subscriber is exactly the plain stderr logger, and the spans (all at DEBUG, so
//! the default `info` log filter is unchanged) are disabled at their call sites and cost nothing.
//!
//! With one, a second layer hands Vigil's own spans to the SDK's batch span processor. That processor runs
//! on a thread of its own and drives the exporter with a plain `block_on`, so the HTTP client must not need
//! to be polled inside a tokio runtime: [`TokioHttpClient`] spawns each send onto the server's runtime and
//! waits for it from there. That keeps one HTTP stack (the reqwest 0.12 with rustls Vigil already has; the
//! exporter's bundled client would be reqwest 0.13) and needs no async runtime inside the SDK.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

/// How long one export may take, and how long the final flush at shutdown may hold up the exit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// An OTLP export response is a few bytes; more than this is not an OTLP endpoint.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Holds the tracer provider; dropping it flushes the spans still queued and stops the exporter, so
/// `vigil serve` keeps it alive until the server has stopped (store flushed) and returns.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The flush blocks until the processor's thread has exported, and each export runs on the tokio
        // runtime: on a multi-thread runtime, hand this worker's other tasks away while waiting.
        let shutdown = move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        let result = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(shutdown),
            _ => shutdown(),
        };
        if let Err(e) = result {
            eprintln!("vigil: flushing its own traces at exit failed: {e}");
        }
    }
}

/// Installs the global subscriber: logs to stderr filtered by `log` (or `RUST_LOG`), plus, when
/// `config.otlp_endpoint` is set, the OpenTelemetry layer. Must run inside the tokio runtime that will
/// carry the exports.
pub fn init(log: &str, config: &TelemetryConfig) -> Result<Telemetry> {
    let Some(endpoint) = config
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    else {
        init_logging(log);
        return Ok(Telemetry { provider: None });
    };
    let filter = log_filter(log);
    let provider = provider(endpoint, config)?;
    let tracer = provider.tracer("vigil");
    let logs = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(stderr_is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(exported));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    tracing::info!(endpoint = %traces_url(endpoint), service = %config.service_name, "exporting Vigil's own traces");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The plain stderr logger, filtered by `log` (or `RUST_LOG`): every command's, and `serve`'s without export.
pub fn init_logging(log: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter(log))
        .with_target(false)
        .with_ansi(stderr_is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn log_filter(log: &str) -> EnvFilter {
    EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(log))
}

/// What the OpenTelemetry layer sees: Vigil's own spans (DEBUG and up), and its INFO-and-up events as span
/// events. Never the dependencies' (hyper, h2, reqwest, the exporter itself): their spans would be noise,
/// and the exporter's would trace the export of traces.
fn exported(meta: &Metadata<'_>) -> bool {
    exported_parts(meta.target(), *meta.level(), meta.is_span())
}

fn exported_parts(target: &str, level: Level, is_span: bool) -> bool {
    let ours = target == "vigil" || target.starts_with("vigil::") || target.starts_with("vigil_");
    // Level order: ERROR < WARN < INFO < DEBUG < TRACE ("<=" means "at least as severe").
    ours && if is_span {
        level <= Level::DEBUG
    } else {
        level <= Level::INFO
    }
}

fn provider(endpoint: &str, config: &TelemetryConfig) -> Result<SdkTracerProvider> {
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        bail!(
            "telemetry.sample_ratio must be between 0.0 and 1.0, not {}",
            config.sample_ratio
        );
    }
    let url = traces_url(endpoint);
    url::Url::parse(&url)
        .with_context(|| format!("telemetry.otlp_endpoint {endpoint:?} is not a URL"))?;
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .context("building the OTLP trace client")?;
    let runtime =
        tokio::runtime::Handle::try_current().context("trace export needs the tokio runtime")?;
    // `OTEL_EXPORTER_OTLP_HEADERS` (e.g. a Collector's token) is read by the exporter itself, `OTEL_BSP_*`
    // by the batch processor; the endpoint is only ever this one (see `TelemetryConfig::otlp_endpoint`).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(TokioHttpClient { client, runtime })
        .build()
        .context("building the OTLP trace exporter")?;
    let sampler = if config.sample_ratio >= 1.0 {
        Sampler::AlwaysOn
    } else {
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)))
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

/// `base` with the OTLP/HTTP traces path, as the OTLP specification builds it from a base endpoint.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// reqwest's async client, driven on the server's tokio runtime whatever thread the exporter calls from.
#[derive(Debug)]
struct TokioHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for TokioHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let send = async move {
            let mut response = client.execute(request).await?;
            let mut body = Vec::new();
            // The endpoint is configured, but its answer is still network input: bounded, never trusted.
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(format!("OTLP response over {MAX_RESPONSE_BYTES} bytes").into());
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = Response::builder()
                .status(response.status())
                .body(Bytes::from(body))?;
            *answer.headers_mut() = std::mem::take(response.headers_mut());
            Ok::<_, HttpError>(answer)
        };
        self.runtime.spawn(send).await?
    }
}

/// Colours only for a person at a terminal: a log file or journald gets plain text that grep and awk read.
fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }

    #[test]
    fn only_vigils_own_spans_and_events_are_exported() {
        assert!(exported_parts(
            "vigil_ingest::otlp::http",
            Level::DEBUG,
            true
        ));
        assert!(exported_parts("vigil::pipeline", Level::DEBUG, true));
        assert!(exported_parts("vigil", Level::INFO, true));
        assert!(!exported_parts("vigil_store::wal", Level::TRACE, true));
        assert!(exported_parts("vigil_store", Level::WARN, false));
        assert!(!exported_parts("vigil_store", Level::DEBUG, false));
        assert!(!exported_parts("hyper::proto", Level::DEBUG, true));
        assert!(!exported_parts("opentelemetry_sdk", Level::ERROR, false));
        assert!(!exported_parts("vigilant", Level::INFO, true));
    }

    #[test]
    fn a_bad_ratio_or_url_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let bad_ratio = TelemetryConfig {
            sample_ratio: 1.5,
            ..Default::default()
        };
        assert!(provider("http://c:4318", &bad_ratio).is_err());
        assert!(provider("not a url", &TelemetryConfig::default()).is_err());
    }
}
