//! TLS-terminating listeners for axum (`axum::serve(TlsListener, router)`) and tonic
//! (`serve_with_incoming(listener.incoming())`).
//!
//! Handshakes run in their own tasks with a timeout, and only finished ones reach the server: a client that
//! opens a socket and never speaks, or one that does not trust our certificate, costs one task for a few
//! seconds and never blocks or stops the accept loop. Past [`MAX_PENDING_HANDSHAKES`], a pending handshake is
//! dropped to make room for the newest (the oldest socket that has sent nothing, if there is one), so
//! sockets that never speak cannot make new clients wait.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{register_int_counter_vec, IntCounterVec};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; past it, one is dropped for each new connection: the oldest socket that
/// has sent nothing, else the oldest handshake under way. A real client speaks at once, so idle sockets go
/// first; had new connections waited for a free slot instead, 1,024 idle sockets (no credentials needed)
/// would have kept every new client out for up to the handshake timeout, again and again.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Silent sockets (nothing sent yet) from one source (an IPv4 address, an IPv6 /64) at once; past it, a new
/// connection from that source drops the source's oldest silent one. One address opening sockets as fast as
/// it can then churns its own slots and cannot push out other clients' handshakes. Only silent sockets
/// count: clients behind one NAT or a load balancer that hides their addresses speak at once, so a storm
/// of their reconnections is not mistaken for one client's flood.
pub const MAX_PENDING_PER_SOURCE: usize = 128;
/// Finished handshakes waiting for the server to pick them up.
const READY_QUEUE: usize = 64;

/// Failed TLS handshakes by listener and reason (`error`, `timeout`, `evicted`: dropped as the oldest pending
/// one when [`MAX_PENDING_HANDSHAKES`] were).
pub static HANDSHAKE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by listener",
        &["listener", "reason"]
    )
    .expect("vigil_tls_handshake_failures_total registers once")
});

/// A TCP listener whose connections come out TLS-terminated. Dropping it stops accepting.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<TlsIo>,
    local_addr: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp`; `listener` labels the handshake-failure counter. Needs a Tokio runtime.
    pub fn new(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        listener: &'static str,
    ) -> io::Result<Self> {
        Self::with_max_pending(
            tcp,
            acceptor,
            listener,
            MAX_PENDING_HANDSHAKES,
            MAX_PENDING_PER_SOURCE,
        )
    }

    /// [`TlsListener::new`] with other bounds on pending handshakes, in all and per source (tests use
    /// small ones).
    pub(crate) fn with_max_pending(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        listener: &'static str,
        max_pending: usize,
        max_per_source: usize,
    ) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let pending = Pending::new(max_pending, max_per_source);
        let accept_task = tokio::spawn(accept_loop(tcp, acceptor, tx, listener, pending));
        Ok(TlsListener {
            ready,
            local_addr,
            accept_task,
        })
    }

    /// Binds `addr` and starts accepting.
    pub async fn bind(
        addr: SocketAddr,
        acceptor: TlsAcceptor,
        listener: &'static str,
    ) -> io::Result<Self> {
        Self::new(TcpListener::bind(addr).await?, acceptor, listener)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections as a stream, for tonic's `Server::serve_with_incoming`.
    pub fn incoming(self) -> TlsIncoming {
        TlsIncoming { listener: self }
    }

    async fn next(&mut self) -> Option<TlsIo> {
        self.ready.recv().await
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<TlsIo>,
    listener: &'static str,
    mut pending: Pending,
) {
    loop {
        let (mut stream, remote_addr) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning (as axum does).
                tracing::warn!(listener, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        no_delay(&mut stream);
        let source = source_of(remote_addr.ip());
        if pending.make_room(source) {
            HANDSHAKE_FAILURES
                .with_label_values(&[listener, "evicted"])
                .inc();
            tracing::debug!(
                listener,
                "dropped a pending TLS handshake for a new connection"
            );
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let stage = Arc::new(AtomicU8::new(SILENT));
        let at = stage.clone();
        let task = tokio::spawn(async move {
            let local_addr = stream.local_addr().ok();
            let handshake = async {
                // Whether the client has said anything decides which pending handshake goes first.
                // (`readable` is no proof: a fresh socket may report it with nothing to read.)
                let _ = stream.peek(&mut [0u8; 1]).await;
                at.store(SPOKE, Ordering::Relaxed);
                acceptor.accept(stream).await
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => {
                    at.store(DONE, Ordering::Relaxed);
                    let peer_certificates = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|certs| Arc::new(certs.to_vec()));
                    let info = TlsConnectInfo {
                        local_addr,
                        remote_addr,
                        peer_certificates,
                    };
                    // A closed queue means the listener was dropped; the connection just goes away.
                    let _ = ready.send(TlsIo { stream: tls, info }).await;
                }
                Ok(Err(e)) => {
                    HANDSHAKE_FAILURES
                        .with_label_values(&[listener, "error"])
                        .inc();
                    tracing::debug!(listener, %remote_addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    HANDSHAKE_FAILURES
                        .with_label_values(&[listener, "timeout"])
                        .inc();
                    tracing::debug!(listener, %remote_addr, "TLS handshake timed out");
                }
            }
        });
        pending.tasks.push_back(Handshake {
            task,
            stage,
            source,
        });
    }
}

/// The source a connection counts against: an IPv4 address (also mapped into IPv6), or an IPv6 /64, the
/// smallest network one host is usually given.
fn source_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) | (1 << 127),
        },
    }
}

/// Where a pending handshake is: its socket has sent nothing, its handshake is under way, or it is done and
/// waits for the server to take the connection.
const SILENT: u8 = 0;
const SPOKE: u8 = 1;
const DONE: u8 = 2;

struct Handshake {
    task: JoinHandle<()>,
    stage: Arc<AtomicU8>,
    source: u128,
}

/// The handshake tasks of one listener with their stages, oldest first; finished ones are forgotten lazily.
struct Pending {
    tasks: VecDeque<Handshake>,
    max: usize,
    max_per_source: usize,
}

impl Pending {
    fn new(max: usize, max_per_source: usize) -> Self {
        Pending {
            tasks: VecDeque::new(),
            max: max.max(1),
            max_per_source: max_per_source.max(1),
        }
    }

    /// Makes room for one more handshake from `source`: true if a pending one had to be dropped for it.
    /// The source's oldest silent one if it holds `max_per_source` silent ones, else anyone's once `max`
    /// are pending; the oldest
    /// silent one if any, else the oldest under way, and a finished one (its connection not yet taken by
    /// the server) only if nothing else is pending.
    fn make_room(&mut self, source: u128) -> bool {
        while self.tasks.front().is_some_and(|h| h.task.is_finished()) {
            self.tasks.pop_front();
        }
        let silent_from = |tasks: &VecDeque<Handshake>| {
            tasks
                .iter()
                .filter(|h| h.source == source && h.stage.load(Ordering::Relaxed) == SILENT)
                .count()
        };
        if self.tasks.len() < self.max && silent_from(&self.tasks) < self.max_per_source {
            return false;
        }
        self.tasks.retain(|h| !h.task.is_finished());
        let own = silent_from(&self.tasks);
        if self.tasks.len() < self.max && own < self.max_per_source {
            return false;
        }
        // Past the source's own bound, only its own silent sockets may go.
        let spared = |h: &Handshake| own >= self.max_per_source && h.source != source;
        let victim = [SILENT, SPOKE, DONE]
            .into_iter()
            .find_map(|wanted| {
                self.tasks
                    .iter()
                    .position(|h| !spared(h) && h.stage.load(Ordering::Relaxed) == wanted)
            })
            .unwrap_or(0);
        // Aborting drops the task's socket: the client sees its connection closed.
        self.tasks
            .remove(victim)
            .inspect(|h| h.task.abort())
            .is_some()
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(io) => {
                let addr = io.info.remote_addr;
                (io, addr)
            }
            // Only if the accept task died (it does not return while we hold the receiver): serve nothing
            // rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// [`TlsListener`] as a `Stream` of connections for tonic.
#[derive(Debug)]
pub struct TlsIncoming {
    listener: TlsListener,
}

impl TlsIncoming {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr
    }
}

impl futures::Stream for TlsIncoming {
    type Item = io::Result<TlsIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener.ready.poll_recv(cx).map(|io| io.map(Ok))
    }
}

/// Who is on the other end of a TLS connection. With mTLS, `peer_certificates` holds the client's verified
/// chain, leaf first.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: SocketAddr,
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A server-side TLS connection; what [`TlsListener`] and [`TlsIncoming`] yield.
#[derive(Debug)]
pub struct TlsIo {
    stream: TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl TlsIo {
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// The negotiated ALPN protocol, e.g. `h2`.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// tonic puts this in every request's extensions (`request.extensions().get::<TlsConnectInfo>()`).
impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// Lets axum handlers take `ConnectInfo<TlsConnectInfo>` when served with
/// `into_make_service_with_connect_info::<TlsConnectInfo>()`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsConnectInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.io().info.clone()
    }
}

/// Turns Nagle's algorithm off on an accepted connection; every listener does this, plain or TLS. A response
/// goes out in several writes (head, body chunks, trailers), and with Nagle the last can wait for the
/// client's delayed ACK, 40 ms on Linux. gRPC-Go and Go's HTTP servers set it on every connection.
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(source: u128, stage: u8) -> Handshake {
        Handshake {
            task: tokio::spawn(std::future::pending::<()>()),
            stage: Arc::new(AtomicU8::new(stage)),
            source,
        }
    }

    /// Only a source's silent sockets count toward its own bound; speaking ones (clients behind one NAT)
    /// wait for the overall one.
    #[tokio::test]
    async fn a_sources_bound_counts_its_silent_sockets_only() {
        let mut pending = Pending::new(8, 2);
        for _ in 0..4 {
            pending.tasks.push_back(handshake(1, SPOKE));
        }
        pending.tasks.push_back(handshake(2, SILENT));
        assert!(!pending.make_room(1), "speaking sockets do not count");
        pending.tasks.push_back(handshake(1, SILENT));
        pending.tasks.push_back(handshake(1, SILENT));
        assert!(pending.make_room(1), "two silent ones from source 1");
        assert_eq!(pending.tasks.len(), 6);
        let silent_of_1 = pending
            .tasks
            .iter()
            .filter(|h| h.source == 1 && h.stage.load(Ordering::Relaxed) == SILENT)
            .count();
        assert_eq!(silent_of_1, 1, "its own oldest silent one went");
        assert!(
            pending.tasks.iter().any(|h| h.source == 2),
            "the other source's silent socket stays"
        );
        for h in &pending.tasks {
            h.task.abort();
        }
    }
}
