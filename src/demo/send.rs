//! Sends synthetic event rows to an OTLP endpoint the way SDKs do: gRPC protobuf, or HTTP with JSON.

use anyhow::{ensure, Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::transport::Channel;
use vigil_ingest::synth::traces_request;
use vigil_ingest::EventRow;

pub struct OtlpSender {
    grpc: TraceServiceClient<Channel>,
    http: Option<(reqwest::Client, String)>,
}

impl OtlpSender {
    /// `grpc_endpoint` like `http://127.0.0.1:4317`; `http_endpoint` like `http://127.0.0.1:4318` (optional).
    pub async fn connect(grpc_endpoint: &str, http_endpoint: Option<&str>) -> Result<Self> {
        let grpc = TraceServiceClient::connect(grpc_endpoint.to_string())
            .await
            .with_context(|| format!("connecting to OTLP gRPC at {grpc_endpoint}"))?;
        let http = http_endpoint.map(|e| (reqwest::Client::new(), format!("{}/v1/traces", e.trim_end_matches('/'))));
        Ok(Self { grpc, http })
    }

    pub async fn grpc(&mut self, rows: &[EventRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.grpc.export(traces_request(rows)).await.context("OTLP gRPC export")?;
        Ok(())
    }

    /// OTLP/HTTP with a JSON body, as a second kind of SDK would send; falls back to gRPC without an HTTP endpoint.
    pub async fn http_json(&mut self, rows: &[EventRow]) -> Result<()> {
        let Some((client, url)) = &self.http else {
            return self.grpc(rows).await;
        };
        if rows.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&traces_request(rows))?;
        let resp = client.post(url).header("content-type", "application/json").body(body).send().await?;
        ensure!(resp.status().is_success(), "OTLP/HTTP answered {}", resp.status());
        Ok(())
    }
}
