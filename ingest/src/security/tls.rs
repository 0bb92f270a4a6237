//! TLS for every listener: certificates from PEM files, picked up again when the files change, so a
//! cert-manager or certbot renewal needs no restart.
//!
//! The server certificate is served by [`ReloadingCert`], a rustls certificate resolver that re-reads the
//! files (at most once per `reload_interval`, during a handshake) when their modification time, size or
//! inode changes. A reload that fails (say the cert was replaced before its key) keeps the previous
//! certificate and is retried at the next check, so a renewal in progress never breaks handshakes.
//!
//! Client certificates (mTLS) are checked by [`ReloadingClientVerifier`] the same way: the client CA bundle and
//! the optional CRL file are re-read when they change, so rotating the CA or revoking a leaked client
//! certificate takes effect on the next handshake, without a restart. Listeners that verify clients offer no
//! session resumption, which would skip the check.
//!
//! The crypto provider is `ring`, passed explicitly (no process-wide default), because aws-lc-rs needs cmake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prometheus::{register_int_counter_vec, IntCounterVec};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

use super::file_version::{fingerprint, Fingerprint};

/// ALPN for HTTP listeners: h2 first, because gRPC clients insist on negotiating it.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// `[tls]` (or `[<listener>.tls]`) in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it issued (mTLS). Re-read on change.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// PEM certificate revocation lists for `client_ca_file`: a revoked client certificate is refused at
    /// the handshake (certificates of a CA without a CRL here are not checked). Re-read on change, so
    /// revoking a leaked certificate needs no restart.
    #[serde(default)]
    pub client_crl_file: Option<PathBuf>,
    /// How often a handshake may look at the files for a renewed certificate.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(1)
}

impl TlsConfig {
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            client_crl_file: None,
            reload_interval: default_reload_interval(),
        }
    }
}

/// Why TLS could not be set up; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS file {path} contains no certificate")]
    NoCertificates { path: PathBuf },
    #[error("TLS key {path} is not a usable RSA, ECDSA or Ed25519 key: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS key {key} does not match the certificate in {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("client CA file {path}: {source}")]
    ClientCa {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("client CA file {path}: {source}")]
    ClientCaCert {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client CRL file {path}: {source}")]
    ClientCrl {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "client_crl_file {0} is set without client_ca_file; revocation needs the CA it applies to"
    )]
    CrlWithoutCa(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Reloads after TLS files changed, by what was reloaded (`server_cert`, `client_ca`) and outcome (`ok`,
/// `error`); a growing `error` count means a renewal or a CA rotation is stuck half-way.
pub static CERT_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_tls_cert_reloads_total",
        "TLS file reloads after the files changed, by what was reloaded and outcome",
        &["kind", "outcome"]
    )
    .expect("vigil_tls_cert_reloads_total registers once")
});

/// The `ring` provider every Vigil TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A `rustls::ServerConfig` for `config` with the given ALPN protocols (empty for the PostgreSQL listener,
/// whose clients negotiate TLS in-protocol).
pub fn server_config(config: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let resolver = Arc::new(ReloadingCert::load(config, provider.clone())?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            builder.with_client_cert_verifier(Arc::new(ReloadingClientVerifier::load(
                ca_file,
                config.client_crl_file.as_deref(),
                config.reload_interval,
                provider,
            )?))
        }
        None => match &config.client_crl_file {
            Some(crl_file) => return Err(TlsError::CrlWithoutCa(crl_file.clone())),
            None => builder.with_no_client_auth(),
        },
    };
    let mut server = builder.with_cert_resolver(resolver);
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if config.client_ca_file.is_some() {
        // A resumed handshake carries the client certificate of the session it resumes and skips the
        // verifier, and each resumption hands out fresh tickets: a client keeping its session would outlive
        // a revocation or a CA rotation indefinitely. Verified clients do a full handshake every time.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
    }
    Ok(Arc::new(server))
}

/// A TLS acceptor for an HTTP or gRPC listener (ALPN h2 and http/1.1).
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    server_config(config, HTTP_ALPN).map(TlsAcceptor::from)
}

/// A TLS acceptor without ALPN, for the PostgreSQL listener (pgwire takes a `tokio_rustls::TlsAcceptor`).
pub fn acceptor_without_alpn(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    server_config(config, &[]).map(TlsAcceptor::from)
}

/// Files watched for a change, looked at no more often than `interval`.
#[derive(Debug)]
struct FileWatch {
    paths: Vec<PathBuf>,
    interval: Duration,
    /// Last look, and the fingerprints of the files last loaded successfully.
    state: Mutex<(Instant, Vec<Option<Fingerprint>>)>,
}

impl FileWatch {
    fn new(paths: Vec<PathBuf>, interval: Duration) -> Self {
        let fps = paths.iter().map(|p| fingerprint(p)).collect();
        FileWatch {
            paths,
            interval,
            state: Mutex::new((Instant::now(), fps)),
        }
    }

    /// Calls `reload` when a file changed since the last successful reload, at most once per interval.
    /// A failed reload keeps the old fingerprints, so the next look retries (a renewal may be half-written).
    fn reload_if_changed(&self, kind: &str, reload: impl FnOnce() -> Result<(), TlsError>) {
        let mut state = self.state.lock();
        if state.0.elapsed() < self.interval {
            return;
        }
        state.0 = Instant::now();
        let fps: Vec<_> = self.paths.iter().map(|p| fingerprint(p)).collect();
        if fps == state.1 {
            return;
        }
        match reload() {
            Ok(()) => {
                state.1 = fps;
                CERT_RELOADS.with_label_values(&[kind, "ok"]).inc();
                tracing::info!(kind, file = %self.paths[0].display(), "reloaded TLS files");
            }
            Err(e) => {
                CERT_RELOADS.with_label_values(&[kind, "error"]).inc();
                tracing::warn!(kind, error = %e, "TLS files changed but could not be loaded; keeping the previous ones");
            }
        }
    }
}

/// Serves the certificate in `cert_file`/`key_file`, reloading it when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    watch: FileWatch,
}

impl ReloadingCert {
    /// Loads the files now; an error here (unlike on reload) is fatal, so a bad config fails at start.
    pub fn load(config: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let watch = FileWatch::new(
            vec![config.cert_file.clone(), config.key_file.clone()],
            config.reload_interval,
        );
        let key = load_certified_key(&config.cert_file, &config.key_file, &provider)?;
        Ok(ReloadingCert {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
            watch,
        })
    }

    /// The certificate handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.watch.reload_if_changed("server_cert", || {
            let key = load_certified_key(&self.cert_file, &self.key_file, &self.provider)?;
            *self.current.write() = Arc::new(key);
            Ok(())
        });
        self.current.read().clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Verifies client certificates against the CA bundle (and CRLs) in files, rebuilding the webpki verifier
/// when the files change.
///
/// It sends no CA names in the CertificateRequest (an empty hint list: "send your certificate if you have
/// one"), because hints borrowed from a verifier that a reload may replace cannot outlive the borrow. Clients
/// configured with one certificate (the OpenTelemetry SDKs, the Collector, libpq) send it either way.
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    ca_file: PathBuf,
    crl_file: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    watch: FileWatch,
}

impl ReloadingClientVerifier {
    /// Loads the files now; an error here (unlike on reload) is fatal, so a bad config fails at start.
    pub fn load(
        ca_file: &Path,
        crl_file: Option<&Path>,
        interval: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let paths = std::iter::once(ca_file)
            .chain(crl_file)
            .map(Path::to_path_buf)
            .collect();
        let watch = FileWatch::new(paths, interval);
        let verifier = client_verifier(ca_file, crl_file, &provider)?;
        Ok(ReloadingClientVerifier {
            ca_file: ca_file.to_path_buf(),
            crl_file: crl_file.map(Path::to_path_buf),
            provider,
            current: RwLock::new(verifier),
            watch,
        })
    }

    /// The verifier handshakes use now.
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().clone()
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.watch.reload_if_changed("client_ca", || {
            let verifier =
                client_verifier(&self.ca_file, self.crl_file.as_deref(), &self.provider)?;
            *self.current.write() = verifier;
            Ok(())
        });
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

fn client_verifier(
    ca_file: &Path,
    crl_file: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert).map_err(|source| TlsError::ClientCaCert {
            path: ca_file.to_path_buf(),
            source,
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl_file) = crl_file {
        let crls = CertificateRevocationListDer::pem_file_iter(crl_file)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::ClientCrl {
                path: crl_file.to_path_buf(),
                source,
            })?;
        // The CRLs say which certificates are revoked; a certificate whose issuer has no CRL in the file
        // (an intermediate, the other CA of a rotation bundle) is not refused for that. Only the client's
        // own certificate is looked up.
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    builder.build().map_err(|source| TlsError::ClientCa {
        path: ca_file.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Pem {
        path: key_file.to_path_buf(),
        source,
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: key_file.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|source| TlsError::KeyMismatch {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
            source,
        })?;
    Ok(certified)
}
