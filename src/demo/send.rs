//! Sends synthetic event rows to an OTLP endpoint the way SDKs do: gRPC protobuf, or HTTP with JSON.

use anyhow::{ensure, Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::transport::Channel;
use vigil_ingest::synth::traces_request;
use vigil_ingest::EventRow;

pub struct OtlpSender {
    grpc: TraceServiceClient<Channel>,
    http: Option<(reqwest::Client, String)>,
    /// `Bearer <token>` for a Vigil that requires authentication.
    authorization: Option<String>,
}

impl OtlpSender {
    /// `grpc_endpoint` like `http://127.0.0.1:4317`; `http_endpoint` like `http://127.0.0.1:4318` (optional).
    pub async fn connect(
        grpc_endpoint: &str,
        http_endpoint: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self> {
        let grpc = TraceServiceClient::connect(grpc_endpoint.to_string())
            .await
            .with_context(|| format!("connecting to OTLP gRPC at {grpc_endpoint}"))?;
        let http = http_endpoint.map(|e| {
            (
                reqwest::Client::new(),
                format!("{}/v1/traces", e.trim_end_matches('/')),
            )
        });
        Ok(Self {
            grpc,
            http,
            authorization: token.map(|t| format!("Bearer {t}")),
        })
    }

    pub async fn grpc(&mut self, rows: &[EventRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut request = tonic::Request::new(traces_request(rows));
        if let Some(auth) = &self.authorization {
            request.metadata_mut().insert(
                "authorization",
                auth.parse().context("the token is not valid header text")?,
            );
        }
        self.grpc
            .export(request)
            .await
            .context("OTLP gRPC export")?;
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
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = &self.authorization {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await?;
        ensure!(
            resp.status().is_success(),
            "OTLP/HTTP answered {}",
            resp.status()
        );
        Ok(())
    }
}
