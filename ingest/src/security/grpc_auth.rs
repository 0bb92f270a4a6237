//! Bearer-token checks for gRPC services (OTLP gRPC) as a tonic interceptor: it runs on the request
//! metadata before the message is decoded or decompressed, so an unauthenticated client cannot make Vigil
//! spend work on its payload.
//!
//! Wiring: `TraceServiceServer::with_interceptor(service, grpc_auth::interceptor(auth, Scope::Ingest,
//! "otlp_grpc"))`; the service reads `request.extensions().get::<Principal>()`.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::{record_failure, AuthFailure, Authenticator, Scope};

/// A tonic interceptor requiring `scope`; see the module docs.
pub fn interceptor(auth: Arc<Authenticator>, scope: Scope, listener: &'static str) -> GrpcAuth {
    GrpcAuth {
        auth,
        scope,
        listener,
    }
}

/// See [`interceptor`].
#[derive(Debug, Clone)]
pub struct GrpcAuth {
    auth: Arc<Authenticator>,
    scope: Scope,
    listener: &'static str,
}

impl Interceptor for GrpcAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // gRPC metadata keys are lowercase; a non-ASCII value cannot be a token.
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        match self.auth.authorize_header(header, self.scope) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(failure) => {
                record_failure(self.listener, &failure);
                tracing::debug!(
                    listener = self.listener,
                    reason = failure.reason(),
                    "gRPC request refused"
                );
                Err(status(&failure))
            }
        }
    }
}

/// UNAUTHENTICATED for a missing or bad token, PERMISSION_DENIED for one lacking the scope.
pub fn status(failure: &AuthFailure) -> Status {
    if failure.is_forbidden() {
        Status::permission_denied(failure.to_string())
    } else {
        Status::unauthenticated(failure.to_string())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use tonic::metadata::MetadataValue;
    use tonic::{Code, Response};

    use super::*;
    use crate::security::{Principal, AUTH_FAILURES};

    /// Echoes the caller's source in `partial_success.error_message`, so the test sees what the service saw.
    struct EchoSource;

    #[tonic::async_trait]
    impl TraceService for EchoSource {
        async fn export(
            &self,
            request: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            let source = request
                .extensions()
                .get::<Principal>()
                .map(|p| p.source.to_string())
                .unwrap_or_default();
            Ok(Response::new(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: 0,
                    error_message: source,
                }),
            }))
        }
    }

    fn with_token(token: Option<&str>) -> Request<ExportTraceServiceRequest> {
        let mut request = Request::new(ExportTraceServiceRequest::default());
        if let Some(token) = token {
            let value: MetadataValue<_> =
                format!("Bearer {token}").parse().expect("ascii metadata");
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    #[tokio::test]
    async fn no_wrong_out_of_scope_and_valid_tokens_over_real_grpc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, ingest, query) = crate::security::test_authenticator(&dir, "sdk-app");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::with_interceptor(
            EchoSource,
            interceptor(auth, Scope::Ingest, "grpc_test"),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream_of(listener)),
        );
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let counted = |reason: &str| {
            AUTH_FAILURES
                .with_label_values(&["grpc_test", reason])
                .get()
        };
        let (missing, invalid, forbidden) =
            (counted("missing"), counted("invalid"), counted("forbidden"));

        let err = client.export(with_token(None)).await.expect_err("no token");
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = client
            .export(with_token(Some("vgl_wrong")))
            .await
            .expect_err("wrong token");
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = client
            .export(with_token(Some(&query)))
            .await
            .expect_err("out of scope");
        assert_eq!(err.code(), Code::PermissionDenied);
        let ok = client
            .export(with_token(Some(&ingest)))
            .await
            .expect("valid token");
        let seen = ok.into_inner().partial_success.map(|p| p.error_message);
        assert_eq!(
            seen.as_deref(),
            Some("sdk-app"),
            "service sees the principal"
        );

        assert_eq!(counted("missing"), missing + 1);
        assert_eq!(counted("invalid"), invalid + 1);
        assert_eq!(counted("forbidden"), forbidden + 1);
    }

    fn tokio_stream_of(
        listener: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        })
    }
}
