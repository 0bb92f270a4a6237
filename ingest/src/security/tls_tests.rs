//! End-to-end TLS tests: real sockets, real handshakes, certificates generated per test.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa,
    Issuer, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::tls::{self, ReloadingCert, TlsConfig, TlsError, CERT_RELOADS};
use super::tls_listener::{TlsConnectInfo, TlsListener, HANDSHAKE_FAILURES};
use super::{grpc_auth, Principal, Scope};

/// A self-signed certificate for `localhost` as (cert PEM, key PEM), key in PKCS#8.
fn self_signed() -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("generate cert");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// Replaces `path` the way cert-manager and certbot do: write elsewhere, rename over.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

struct CertFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn cert_files(cert_pem: &str, key_pem: &str) -> CertFiles {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, cert_pem).expect("write cert");
    std::fs::write(&key, key_pem).expect("write key");
    CertFiles {
        _dir: dir,
        cert,
        key,
    }
}

fn config(files: &CertFiles) -> TlsConfig {
    TlsConfig {
        reload_interval: Duration::ZERO,
        ..TlsConfig::new(&files.cert, &files.key)
    }
}

async fn serve_https(config: &TlsConfig, listener_name: &'static str) -> SocketAddr {
    let acceptor = tls::acceptor(config).expect("acceptor");
    let listener = TlsListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        acceptor,
        listener_name,
    )
    .await
    .expect("bind");
    serve_on(listener)
}

/// Serves a page naming the client's certificates on `listener`.
fn serve_on(listener: TlsListener) -> SocketAddr {
    let addr = listener.local_addr();
    let app = Router::new().route(
        "/",
        get(
            |ConnectInfo(info): ConnectInfo<TlsConnectInfo>| async move {
                format!(
                    "hello, client certs: {}",
                    info.peer_certificates.map_or(0, |c| c.len())
                )
            },
        ),
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsConnectInfo>(),
        )
        .await
    });
    addr
}

/// A client that trusts only `trusted_pem` and resolves `localhost` to the test server.
fn client(addr: SocketAddr, trusted_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(trusted_pem.as_bytes()).expect("cert pem"),
        )
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_text(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Result<String> {
    client
        .get(format!("https://localhost:{}/", addr.port()))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

#[tokio::test]
async fn trusting_client_succeeds_untrusting_one_fails_and_server_keeps_serving() {
    let (cert, key) = self_signed();
    let files = cert_files(&cert, &key);
    let addr = serve_https(&config(&files), "tls_test_trust").await;

    assert_eq!(
        get_text(&client(addr, &cert), addr).await.expect("trusted"),
        "hello, client certs: 0"
    );

    let failures_before = HANDSHAKE_FAILURES
        .with_label_values(&["tls_test_trust", "error"])
        .get();
    let (other_cert, _) = self_signed();
    let err = get_text(&client(addr, &other_cert), addr)
        .await
        .expect_err("untrusted certificate must fail");
    assert!(
        err.is_connect(),
        "fails at connect (TLS), not later: {err:?}"
    );
    // Plain HTTP on the TLS port is not served either.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));

    // The server noticed and counted the failed handshakes, and it still serves good clients.
    let counted = tokio::time::timeout(Duration::from_secs(5), async {
        while HANDSHAKE_FAILURES
            .with_label_values(&["tls_test_trust", "error"])
            .get()
            < failures_before + 2
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "failed handshakes are counted");
    assert_eq!(
        get_text(&client(addr, &cert), addr)
            .await
            .expect("still serving"),
        "hello, client certs: 0"
    );
}

/// A page served behind small bounds on pending handshakes (in all, per source); returns its address and
/// the certificate a client must trust.
async fn serve_with_pending(
    name: &'static str,
    max: usize,
    per_source: usize,
) -> (SocketAddr, String) {
    let (cert, key) = self_signed();
    let files = cert_files(&cert, &key);
    let acceptor = tls::acceptor(&config(&files)).expect("acceptor");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let listener =
        TlsListener::with_max_pending(tcp, acceptor, name, max, per_source).expect("listener");
    (serve_on(listener), cert)
}

/// A new client is served at once while every pending-handshake slot is held (here 8): a silent socket is
/// dropped for it, the oldest one, and not the older socket whose handshake is under way. Had the accept
/// loop waited for a free slot, the client would have waited for the handshake timeout (10 s).
#[tokio::test]
async fn idle_sockets_cannot_keep_new_clients_waiting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX: usize = 8;
    let (addr, cert) = serve_with_pending("tls_test_idle", MAX, MAX).await;
    let evicted = || {
        HANDSHAKE_FAILURES
            .with_label_values(&["tls_test_idle", "evicted"])
            .get()
    };
    // The oldest: a client that has begun its handshake (a record header) and stalls.
    let mut speaking = tokio::net::TcpStream::connect(addr).await.expect("connect");
    speaking
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut silent = Vec::new();
    for _ in 1..MAX {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    assert_eq!(
        get_text(&client(addr, &cert), addr)
            .await
            .expect("served beside the held slots"),
        "hello, client certs: 0"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(evicted() >= 1, "a pending handshake was dropped");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), silent[0].read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest silent socket is closed: {closed:?}"
    );
    let open = tokio::time::timeout(Duration::from_millis(300), speaking.read(&mut byte)).await;
    assert!(open.is_err(), "the handshake under way is kept: {open:?}");
}

/// One address opening sockets as fast as it can churns its own pending handshakes only: another client's
/// socket, older than all of them and silent too, is kept (here 8 slots, 4 per address).
#[tokio::test]
async fn one_address_cannot_push_out_other_clients_pending_handshakes() {
    use tokio::io::AsyncReadExt;
    let (addr, cert) = serve_with_pending("tls_test_source", 8, 4).await;
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{ip}:0").parse().expect("addr"))
            .expect("bind loopback alias");
        socket.connect(addr)
    };
    let mut other = from("127.0.0.2").await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut flood = Vec::new();
    for _ in 0..12 {
        flood.push(from("127.0.0.1").await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut byte = [0u8; 1];
    let open = tokio::time::timeout(Duration::from_millis(300), other.read(&mut byte)).await;
    assert!(
        open.is_err(),
        "the other address's socket is kept: {open:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), flood[0].read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the flood's oldest socket is closed: {closed:?}"
    );
    assert!(
        HANDSHAKE_FAILURES
            .with_label_values(&["tls_test_source", "evicted"])
            .get()
            >= 8
    );
    // And a client from the flooding address is still served, at once.
    assert_eq!(
        get_text(&client(addr, &cert), addr).await.expect("served"),
        "hello, client certs: 0"
    );
}

#[tokio::test]
async fn renewed_certificate_is_served_to_new_connections() {
    let (cert_a, key_a) = self_signed();
    let files = cert_files(&cert_a, &key_a);
    let addr = serve_https(&config(&files), "tls_test_reload").await;
    assert!(get_text(&client(addr, &cert_a), addr).await.is_ok());

    let reloads_ok = CERT_RELOADS.with_label_values(&["server_cert", "ok"]).get();
    let (cert_b, key_b) = self_signed();
    // Renewal half done: the new cert is in place but its key is not yet. The old pair keeps being served.
    replace_file(&files.cert, &cert_b);
    assert!(
        get_text(&client(addr, &cert_a), addr).await.is_ok(),
        "mismatched pair keeps the old certificate"
    );
    replace_file(&files.key, &key_b);

    assert!(
        get_text(&client(addr, &cert_b), addr).await.is_ok(),
        "new connections get the renewed certificate"
    );
    assert!(
        get_text(&client(addr, &cert_a), addr).await.is_err(),
        "the old certificate is no longer served"
    );
    assert!(CERT_RELOADS.with_label_values(&["server_cert", "ok"]).get() > reloads_ok);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().expect("client key");
    let client_cert = CertificateParams::new(vec!["collector.example".to_string()])
        .expect("client params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");

    let (server_cert, server_key) = self_signed();
    let files = cert_files(&server_cert, &server_key);
    let ca_file = files.cert.with_file_name("clients-ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
    let config = TlsConfig {
        client_ca_file: Some(ca_file),
        ..config(&files)
    };
    let addr = serve_https(&config, "tls_test_mtls").await;

    assert!(
        get_text(&client(addr, &server_cert), addr).await.is_err(),
        "no client certificate, no connection"
    );

    let identity_pem = format!("{}{}", client_cert.pem(), client_key.serialize_pem());
    let with_identity = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_cert.as_bytes()).expect("pem"))
        .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).expect("identity"))
        .resolve("localhost", addr)
        .build()
        .expect("client");
    assert_eq!(
        get_text(&with_identity, addr).await.expect("mTLS client"),
        "hello, client certs: 1"
    );

    // A certificate from a CA the server does not trust is refused.
    let (rogue_cert, rogue_key) = self_signed();
    let rogue = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_cert.as_bytes()).expect("pem"))
        .identity(
            reqwest::Identity::from_pem(format!("{rogue_cert}{rogue_key}").as_bytes())
                .expect("identity"),
        )
        .resolve("localhost", addr)
        .build()
        .expect("client");
    assert!(get_text(&rogue, addr).await.is_err());
}

/// A client CA that issues client certificates and revokes them.
struct ClientCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClientCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        let pem = params.self_signed(&key).expect("ca cert").pem();
        ClientCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate with serial `serial`, as PEM cert + key.
    fn identity(&self, serial: u64) -> String {
        let key = KeyPair::generate().expect("client key");
        let mut params =
            CertificateParams::new(vec!["collector.example".to_string()]).expect("client params");
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    /// A CRL revoking `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 1, 1),
            next_update: date_time_ymd(2036, 1, 1),
            crl_number: SerialNumber::from(serials.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: date_time_ymd(2026, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("crl")
        .pem()
        .expect("crl pem")
    }
}

/// A client presenting `identity_pem` that trusts `server_pem`.
fn mtls_client(addr: SocketAddr, server_pem: &str, identity_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_pem.as_bytes()).expect("pem"))
        .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).expect("identity"))
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Rotating the client CA and revoking a client certificate take effect on the next handshake; a broken
/// CRL keeps the previous trust rather than locking every client out.
#[tokio::test]
async fn client_ca_rotation_and_revocation_apply_without_restart() {
    let (old_ca, new_ca) = (ClientCa::new("clients 2025"), ClientCa::new("clients 2026"));
    let (server_cert, server_key) = self_signed();
    let files = cert_files(&server_cert, &server_key);
    let ca_file = files.cert.with_file_name("clients-ca.crt");
    let crl_file = files.cert.with_file_name("clients.crl");
    std::fs::write(&ca_file, &old_ca.pem).expect("write ca");
    std::fs::write(&crl_file, old_ca.crl(&[])).expect("write crl");
    let config = TlsConfig {
        client_ca_file: Some(ca_file.clone()),
        client_crl_file: Some(crl_file.clone()),
        ..config(&files)
    };
    let addr = serve_https(&config, "tls_test_client_ca_reload").await;
    // A fresh client (and so connection) each time: a pooled connection was verified at its handshake.
    let accepted = |identity: String| {
        let client = mtls_client(addr, &server_cert, &identity);
        async move { get_text(&client, addr).await.is_ok() }
    };
    assert!(accepted(old_ca.identity(11)).await, "old CA trusted");
    assert!(!accepted(new_ca.identity(21)).await, "new CA not yet");

    let reloads = |outcome| {
        CERT_RELOADS
            .with_label_values(&["client_ca", outcome])
            .get()
    };
    let ok_before = reloads("ok");
    // Rotation: the new CA and its CRL, which revokes serial 22.
    replace_file(&crl_file, &new_ca.crl(&[22]));
    replace_file(&ca_file, &new_ca.pem);
    assert!(
        accepted(new_ca.identity(21)).await,
        "new CA trusted after rotation"
    );
    assert!(reloads("ok") > ok_before);
    assert!(
        !accepted(old_ca.identity(11)).await,
        "old CA no longer trusted"
    );
    assert!(
        !accepted(new_ca.identity(22)).await,
        "revoked client certificate refused"
    );

    // During a rotation the bundle holds both CAs and the CRL covers the new one only: the old CA's
    // clients are not refused for having no CRL.
    replace_file(&ca_file, &format!("{}{}", old_ca.pem, new_ca.pem));
    assert!(
        accepted(old_ca.identity(12)).await,
        "a CA without a CRL still trusted"
    );
    assert!(!accepted(new_ca.identity(22)).await, "still revoked");
    // A CRL file that does not parse is an error, counted; the previous trust stays in force.
    let errors_before = reloads("error");
    replace_file(
        &crl_file,
        "-----BEGIN X509 CRL-----\nnot base64!\n-----END X509 CRL-----\n",
    );
    assert!(accepted(new_ca.identity(23)).await);
    assert!(!accepted(new_ca.identity(22)).await, "still revoked");
    assert!(reloads("error") > errors_before);
}

/// A client that keeps its TLS sessions (as rustls, Java and Go clients do) is refused once its certificate is
/// revoked: a resumed handshake skips the certificate check, so the server must not offer resumption to
/// clients it verifies.
#[tokio::test]
async fn a_revoked_client_cannot_come_back_by_resuming_its_session() {
    let ca = ClientCa::new("clients");
    let (server_cert, server_key) = self_signed();
    let files = cert_files(&server_cert, &server_key);
    let ca_file = files.cert.with_file_name("clients-ca.crt");
    let crl_file = files.cert.with_file_name("clients.crl");
    std::fs::write(&ca_file, &ca.pem).expect("write ca");
    std::fs::write(&crl_file, ca.crl(&[])).expect("write crl");
    let config = TlsConfig {
        client_ca_file: Some(ca_file),
        client_crl_file: Some(crl_file.clone()),
        ..config(&files)
    };
    let addr = serve_https(&config, "tls_test_resumption").await;
    // One client, no pooled connections: every request is a new handshake, offered the client's cached
    // session when the server gave it one.
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_cert.as_bytes()).expect("pem"))
        .identity(reqwest::Identity::from_pem(ca.identity(31).as_bytes()).expect("identity"))
        .resolve("localhost", addr)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for _ in 0..2 {
        assert_eq!(
            get_text(&client, addr)
                .await
                .expect("trusted before revocation"),
            "hello, client certs: 1"
        );
    }
    replace_file(&crl_file, &ca.crl(&[31]));
    assert!(
        get_text(&client, addr).await.is_err(),
        "revoked, yet let in on its cached session"
    );
}

#[test]
fn loads_sec1_ec_and_pkcs1_rsa_keys_and_refuses_mismatched_or_missing_files() {
    // Looked up at run time: `env!` would name whichever checkout first built a shared target dir.
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let testdata = Path::new(&root).join("src/security/testdata");
    for (cert, key) in [("ec.crt", "ec-sec1.key"), ("rsa.crt", "rsa-pkcs1.key")] {
        let config = TlsConfig::new(testdata.join(cert), testdata.join(key));
        ReloadingCert::load(&config, tls::provider())
            .unwrap_or_else(|e| panic!("{key} loads: {e}"));
    }
    let mismatched = TlsConfig::new(testdata.join("ec.crt"), testdata.join("rsa-pkcs1.key"));
    assert!(matches!(
        ReloadingCert::load(&mismatched, tls::provider()),
        Err(TlsError::KeyMismatch { .. })
    ));
    let missing = TlsConfig::new(testdata.join("nope.crt"), testdata.join("ec-sec1.key"));
    let Err(err) = tls::acceptor(&missing) else {
        panic!("a missing cert file must be an error")
    };
    assert!(err.to_string().contains("nope.crt"), "{err}");
    let key_as_cert = TlsConfig::new(testdata.join("ec-sec1.key"), testdata.join("ec-sec1.key"));
    assert!(matches!(
        tls::acceptor(&key_as_cert),
        Err(TlsError::NoCertificates { .. })
    ));
}

#[test]
fn config_reads_from_toml_with_default_reload_interval() {
    let config: TlsConfig =
        toml::from_str("cert_file = \"/etc/vigil/tls.crt\"\nkey_file = \"/etc/vigil/tls.key\"\n")
            .expect("parse");
    assert_eq!(config.reload_interval, Duration::from_secs(1));
    assert_eq!(config.client_ca_file, None);
    assert!(
        toml::from_str::<TlsConfig>("cert_file = \"a\"\nkey_file = \"b\"\ncert = \"typo\"\n")
            .is_err()
    );
}

/// Connects tonic to the test server over TLS (ALPN h2) with our own rustls client config.
#[derive(Clone)]
struct TlsConnect {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tower::Service<http::Uri> for TlsConnect {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

fn grpc_client_config(trusted_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trusted_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

struct EchoSource;

#[tonic::async_trait]
impl TraceService for EchoSource {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let source = request
            .extensions()
            .get::<Principal>()
            .map(|p| p.source.to_string())
            .unwrap_or_default();
        let tls = request.extensions().get::<TlsConnectInfo>().is_some();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 0,
                error_message: format!("{source} tls={tls}"),
            }),
        }))
    }
}

#[tokio::test]
async fn grpc_over_tls_with_tokens() {
    let (cert, key) = self_signed();
    let files = cert_files(&cert, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, token, _) = super::test_authenticator(&dir, "sdk");

    let acceptor = tls::acceptor(&config(&files)).expect("acceptor");
    let listener = TlsListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        acceptor,
        "tls_test_grpc",
    )
    .await
    .expect("bind");
    let addr = listener.local_addr();
    let service = TraceServiceServer::with_interceptor(
        EchoSource,
        grpc_auth::interceptor(auth, Scope::Ingest, "tls_test_grpc"),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(listener.incoming()),
    );

    let endpoint = tonic::transport::Endpoint::from_static("http://localhost");
    let channel = endpoint
        .connect_with_connector(TlsConnect {
            addr,
            config: grpc_client_config(&cert),
        })
        .await
        .expect("TLS + h2 connect");
    let mut client = TraceServiceClient::new(channel);

    let err = client
        .export(ExportTraceServiceRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let mut request = tonic::Request::new(ExportTraceServiceRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let response = client
        .export(request)
        .await
        .expect("authorised export over TLS");
    let echoed = response
        .into_inner()
        .partial_success
        .map(|p| p.error_message);
    assert_eq!(echoed.as_deref(), Some("sdk tls=true"));

    let (other, _) = self_signed();
    let untrusted = endpoint
        .connect_with_connector(TlsConnect {
            addr,
            config: grpc_client_config(&other),
        })
        .await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the server certificate cannot connect"
    );
}
