//! Bearer-token checks for the HTTP listeners (OTLP/HTTP, the SQL API, the admin port), as a tower layer
//! so it wraps an axum `Router` or a single route with one call and refuses requests before their body is
//! read.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use futures::future::{self, Either, Ready};
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use tower::{Layer, Service};

use super::{record_failure, AuthFailure, Authenticator, Principal, Scope};

/// Requires a token with `scope` on every request through the wrapped service, and attaches the
/// [`Principal`] to the request's extensions. `listener` labels the failure counter (`otlp_http`,
/// `query_http`, `admin`, ...).
pub fn require(
    auth: Arc<Authenticator>,
    scope: Scope,
    listener: &'static str,
) -> RequireScopeLayer {
    RequireScopeLayer {
        auth,
        scope,
        listener,
        render: rejection_for,
    }
}

/// Answers a refused request. It sees the request's headers because some protocols answer in the
/// request's own encoding (OTLP/HTTP sends a `google.rpc.Status` as protobuf or JSON).
pub type Render = fn(&HeaderMap, &AuthFailure) -> Response;

/// See [`require`].
#[derive(Debug, Clone)]
pub struct RequireScopeLayer {
    auth: Arc<Authenticator>,
    scope: Scope,
    listener: &'static str,
    render: Render,
}

impl RequireScopeLayer {
    /// Refusals are answered by `render` instead of plain text; status and challenge are its to keep.
    pub fn rendered_by(mut self, render: Render) -> Self {
        self.render = render;
        self
    }
}

fn rejection_for(_headers: &HeaderMap, failure: &AuthFailure) -> Response {
    rejection(failure)
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireScopeLayer`] produces.
#[derive(Debug, Clone)]
pub struct RequireScope<S> {
    inner: S,
    layer: RequireScopeLayer,
}

impl<S, B> Service<Request<B>> for RequireScope<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        match self.layer.auth.authorize_header(header, self.layer.scope) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Either::Right(self.inner.call(req))
            }
            Err(failure) => {
                record_failure(self.layer.listener, &failure);
                tracing::debug!(
                    listener = self.layer.listener,
                    reason = failure.reason(),
                    "request refused"
                );
                let response = (self.layer.render)(req.headers(), &failure);
                Either::Left(future::ready(Ok(response)))
            }
        }
    }
}

/// 401 with a `WWW-Authenticate` challenge (RFC 6750 §3) or 403 naming the missing scope.
pub fn rejection(failure: &AuthFailure) -> Response {
    let (status, challenge) = match failure {
        AuthFailure::Missing => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="vigil""#.to_string(),
        ),
        AuthFailure::Invalid => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="vigil", error="invalid_token""#.to_string(),
        ),
        AuthFailure::Forbidden { required, .. } => (
            StatusCode::FORBIDDEN,
            format!(r#"Bearer realm="vigil", error="insufficient_scope", scope="{required}""#),
        ),
    };
    let mut response = (status, failure.to_string()).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        headers.insert(WWW_AUTHENTICATE, value);
    }
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Lets a handler behind [`require`] take the caller as an argument. A handler that is not behind the
/// layer gets a 500: that is a wiring bug, not a client error.
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "authentication layer is not installed on this route",
            )
                .into_response()
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;

    use super::*;
    use crate::security::AUTH_FAILURES;

    struct Fixture {
        _dir: tempfile::TempDir,
        base: String,
        ingest: String,
        query: String,
    }

    async fn serve() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, ingest, query) = crate::security::test_authenticator(&dir, "collector");
        let app = Router::new()
            .route(
                "/v1/traces",
                get(|p: Principal| async move { p.source.to_string() }),
            )
            .layer(require(auth, Scope::Ingest, "http_test"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fixture {
            _dir: dir,
            base,
            ingest,
            query,
        }
    }

    fn failures(reason: &str) -> u64 {
        AUTH_FAILURES
            .with_label_values(&["http_test", reason])
            .get()
    }

    #[tokio::test]
    async fn no_wrong_out_of_scope_and_valid_tokens() {
        let f = serve().await;
        let client = reqwest::Client::new();
        let url = format!("{}/v1/traces", f.base);
        let (missing, invalid, forbidden) = (
            failures("missing"),
            failures("invalid"),
            failures("forbidden"),
        );

        let r = client.get(&url).send().await.expect("request");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], r#"Bearer realm="vigil""#);

        let r = client
            .get(&url)
            .bearer_auth("vgl_not_a_token")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 401);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .contains("invalid_token"));

        let r = client
            .get(&url)
            .bearer_auth(&f.query)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 403);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .contains(r#"scope="ingest""#));

        let r = client
            .get(&url)
            .bearer_auth(&f.ingest)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.text().await.expect("body"),
            "collector",
            "handler sees the principal's source"
        );

        assert_eq!(failures("missing"), missing + 1);
        assert_eq!(failures("invalid"), invalid + 1);
        assert_eq!(failures("forbidden"), forbidden + 1);
    }

    #[tokio::test]
    async fn disabled_auth_passes_anonymous_principal() {
        let app = Router::new()
            .route(
                "/",
                get(|p: Principal| async move { format!("{}:{}", p.source, p.is_verified()) }),
            )
            .layer(require(
                Arc::new(Authenticator::disabled()),
                Scope::Admin,
                "http_test",
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let r = reqwest::get(&url).await.expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "anonymous:false");
    }
}
