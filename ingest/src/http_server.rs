//! Serving an axum router on a listener (plain TCP or [`crate::security::TlsListener`]) with the limits a
//! server facing the network needs and `axum::serve` leaves out: `axum::serve` gives hyper no timer, so
//! hyper's header-read timeout is never enforced, and a client that sends headers a byte at a time (or half a
//! request and then nothing) holds its connection, its buffer and a file descriptor for as long as it likes,
//! before any token is looked at. Here every HTTP/1 connection must deliver a request's headers within
//! [`HEADER_READ_TIMEOUT`], HTTP/2 connections are pinged and closed when the peer stops answering, and
//! shutdown is graceful as with `axum::serve(..).with_graceful_shutdown(..)`: the listener closes, requests in
//! flight finish.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

/// How long a client may take to send a request's headers (hyper counts from the first byte of the request).
/// SDKs and collectors send them in one write; ten seconds is slack for a slow link.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle HTTP/2 connection is pinged.
pub const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a ping's answer may take before the connection is closed.
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the open connections' requests.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|request: Request<Incoming>| request.map(Body::new)),
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Router::new().route("/", get(|| async { "hi" })),
            async {
                let _ = stopped.await;
            },
        ));

        // A well-behaved client is answered.
        let mut ok = tokio::net::TcpStream::connect(addr).await.expect("connect");
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hi"), "{answer}");

        // Half a request, then silence: the server closes the connection at the header timeout.
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .expect("write");
        let started = Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(10),
            slow.read_to_end(&mut buf),
        )
        .await
        .expect("closed by the server, not left open");
        assert!(read.is_ok() || buf.is_empty(), "{read:?}");
        assert!(started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1));

        let _ = stop.send(());
        server.await.expect("server task").expect("served");
    }
}
