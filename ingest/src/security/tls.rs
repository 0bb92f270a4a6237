//! TLS for every listener: certificates from PEM files, picked up again when the files change, so a
//! cert-manager or certbot renewal needs no restart.
//!
//! The server certificate is served by [`ReloadingCert`], a rustls certificate resolver that re-reads the
//! files (at most once per `reload_interval`, during a handshake) when their modification time, size or
//! inode changes. A reload that fails (say the cert was replaced before its key) keeps the previous
//! certificate and is retried at the next check, so a renewal in progress never breaks handshakes.
//!
//! The crypto provider is `ring`, passed explicitly (no process-wide default), because aws-lc-rs needs cmake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use prometheus::{register_int_counter_vec, IntCounterVec};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

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
    /// PEM CA bundle; when set, clients must present a certificate it issued (mTLS). Read at start.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
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
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Certificate reloads by outcome (`ok`, `error`); a growing `error` count means a renewal is stuck.
pub static CERT_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_tls_cert_reloads_total",
        "Server certificate reloads after the files changed, by outcome",
        &["outcome"]
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
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca_file)? {
                roots.add(cert).map_err(|source| TlsError::ClientCaCert {
                    path: ca_file.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: ca_file.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(resolver);
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

#[derive(Debug)]
struct ReloadState {
    last_check: Instant,
    cert_fp: Option<Fingerprint>,
    key_fp: Option<Fingerprint>,
}

/// Serves the certificate in `cert_file`/`key_file`, reloading it when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    interval: Duration,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    state: Mutex<ReloadState>,
}

impl ReloadingCert {
    /// Loads the files now; an error here (unlike on reload) is fatal, so a bad config fails at start.
    pub fn load(config: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let cert_fp = fingerprint(&config.cert_file);
        let key_fp = fingerprint(&config.key_file);
        let key = load_certified_key(&config.cert_file, &config.key_file, &provider)?;
        Ok(ReloadingCert {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            interval: config.reload_interval,
            provider,
            current: RwLock::new(Arc::new(key)),
            state: Mutex::new(ReloadState {
                last_check: Instant::now(),
                cert_fp,
                key_fp,
            }),
        })
    }

    /// The certificate handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.reload_if_changed();
        self.current.read().clone()
    }

    fn reload_if_changed(&self) {
        let mut state = self.state.lock();
        if state.last_check.elapsed() < self.interval {
            return;
        }
        state.last_check = Instant::now();
        let cert_fp = fingerprint(&self.cert_file);
        let key_fp = fingerprint(&self.key_file);
        if cert_fp == state.cert_fp && key_fp == state.key_fp {
            return;
        }
        match load_certified_key(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                *self.current.write() = Arc::new(key);
                state.cert_fp = cert_fp;
                state.key_fp = key_fp;
                CERT_RELOADS.with_label_values(&["ok"]).inc();
                tracing::info!(cert = %self.cert_file.display(), "reloaded TLS certificate");
            }
            Err(e) => {
                // Fingerprints stay old, so the next check retries (the key may simply not be written yet).
                CERT_RELOADS.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "TLS files changed but could not be loaded; serving the previous certificate");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
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
