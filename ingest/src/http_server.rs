//! Serving an axum router on a listener (plain TCP or [`crate::security::TlsListener`]) with the limits a
//! server facing the network needs and `axum::serve` leaves out: `axum::serve` gives hyper no timer, so
//! hyper's header-read timeout is never enforced, and a client that sends headers a byte at a time (or half a
//! request and then nothing) holds its connection, its buffer and a file descriptor for as long as it likes,
//! before any token is looked at. Here every HTTP/1 connection must deliver a request's headers within
//! [`HEADER_READ_TIMEOUT`], HTTP/2 connections are pinged and closed when the peer stops answering, a
//! connection whose writes make no progress for [`WRITE_STALL_TIMEOUT`] (a client that stopped reading) is
//! closed, and shutdown is graceful as with `axum::serve(..).with_graceful_shutdown(..)`: the listener
//! closes, requests in flight finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;

/// How long a client may take to send a request's headers (hyper counts from the first byte of the request).
/// SDKs and collectors send them in one write; ten seconds is slack for a slow link.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle HTTP/2 connection is pinged.
pub const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a ping's answer may take before the connection is closed.
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection's writes may make no progress before it is closed. A client that stops reading
/// (or a laptop that sleeps mid-download) otherwise holds its response for as long as TCP retries, some
/// fifteen minutes: an answer of the query API holds one of its few slots until it is sent.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the open connections' requests.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
{
    serve_stalling(listener, router, shutdown, WRITE_STALL_TIMEOUT).await
}

async fn serve_stalling<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    write_stall: Duration,
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
            .serve_connection_with_upgrades(TokioIo::new(WriteStall::new(io, write_stall)), service)
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

/// A connection whose writes fail once they have made no progress for a while.
struct WriteStall<IO> {
    io: IO,
    timeout: Duration,
    /// Armed when a write first waits, disarmed when one goes through.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> WriteStall<IO> {
    fn new(io: IO, timeout: Duration) -> Self {
        WriteStall {
            io,
            timeout,
            stalled: None,
        }
    }

    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteStall<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteStall<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
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

    /// A client that asks for 64 MB and reads none of it is disconnected once the server's writes have
    /// waited for the stall timeout; without it, the response (and whatever it holds) waited for as long as
    /// the client kept the connection.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        const SIZE: usize = 64 << 20;
        let router = Router::new().route("/", get(|| async { vec![b'x'; SIZE] }));
        let server = tokio::spawn(serve_stalling(
            listener,
            router,
            std::future::pending(),
            Duration::from_millis(300),
        ));
        let mut reader = tokio::net::TcpStream::connect(addr).await.expect("connect");
        reader
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        // Socket buffers take a few megabytes; the server then waits, and gives up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got))
            .await
            .expect("the connection ends");
        assert!(got.len() < SIZE, "cut short: {} bytes, {read:?}", got.len());
        server.abort();
    }
}
