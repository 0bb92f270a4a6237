//! Who may talk to Vigil, and over what: bearer tokens with scopes, and TLS for every listener.
//!
//! Everything here is transport-agnostic at its core ([`Authenticator`]) with thin adapters per listener
//! kind: an axum layer ([`http_auth`]), a tonic interceptor ([`grpc_auth`]), and TLS acceptors/listeners
//! ([`tls`], [`tls_listener`]). The PostgreSQL listener (`vigil_sql::pg`) takes a `query` token as the
//! password through [`Authenticator::authorize_token`] and re-checks it by hash before each statement. It all lives in the lowest crate so `vigil-sql` and the
//! binary share one implementation.
//!
//! The [`Principal`] an adapter attaches to a request names the authenticated source; the OTLP receivers
//! record it in each event's `source` column, which is what makes "share of telemetry from verified
//! sources" a query.

mod file_version;
pub mod grpc_auth;
pub mod http_auth;
pub mod scopes;
pub mod tls;
pub mod tls_listener;
pub mod tokens;

#[cfg(test)]
mod tls_tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{register_int_counter_vec, IntCounterVec};
use serde::{Deserialize, Serialize};

pub use scopes::Scope;
pub use tls::{TlsConfig, TlsError};
pub use tls_listener::{TlsIncoming, TlsIo, TlsListener};
pub use tokens::{
    ConfiguredToken, StoreOptions, TokenHash, TokenInfo, TokenOrigin, TokenStore, TokenStoreError,
};

/// The file name of the token store inside the data dir.
pub const TOKENS_FILE: &str = "tokens.json";

/// The source recorded for requests when authentication is off (`vigil demo`), so such events are never
/// mistaken for verified ones.
pub const ANONYMOUS_SOURCE: &str = "anonymous";

/// The authenticated sender of a request. Cheap to clone: it is attached to every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `None` for the anonymous principal of an unauthenticated (demo) listener.
    pub token_id: Option<Arc<str>>,
    /// The token's name; what the events' `source` column records.
    pub source: Arc<str>,
    pub scopes: Arc<[Scope]>,
}

impl Principal {
    pub(crate) fn verified(token_id: &str, source: &str, scopes: &[Scope]) -> Self {
        Principal {
            token_id: Some(token_id.into()),
            source: source.into(),
            scopes: scopes.into(),
        }
    }

    /// Everything allowed, nothing verified: what a listener with authentication disabled attaches.
    pub fn anonymous() -> Self {
        Principal {
            token_id: None,
            source: ANONYMOUS_SOURCE.into(),
            scopes: Scope::ALL.as_slice().into(),
        }
    }

    /// Whether this principal presented a valid token.
    pub fn is_verified(&self) -> bool {
        self.token_id.is_some()
    }

    pub fn has(&self, scope: Scope) -> bool {
        scopes::any_grants(&self.scopes, scope)
    }
}

/// Why a request was turned away; the `reason` label of `vigil_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid or revoked token")]
    Invalid,
    #[error("token for source {sender:?} lacks the {required} scope")]
    Forbidden { sender: Arc<str>, required: Scope },
}

impl AuthFailure {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Forbidden { .. } => "forbidden",
        }
    }

    /// 401 for "who are you?", 403 for "I know who you are, and no".
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthFailure::Forbidden { .. })
    }
}

/// Refused requests by listener and reason (`missing`, `invalid`, `forbidden`).
pub static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "vigil_auth_failures_total",
        "Requests refused for a missing, invalid or out-of-scope token",
        &["listener", "reason"]
    )
    .expect("vigil_auth_failures_total registers once")
});

/// Counts a refusal; adapters call this so every listener reports the same way.
pub fn record_failure(listener: &str, failure: &AuthFailure) {
    AUTH_FAILURES
        .with_label_values(&[listener, failure.reason()])
        .inc();
}

/// `[auth]` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Off only for `vigil demo`; every other mode requires tokens.
    pub enabled: bool,
    /// Tokens provisioned without the CLI, by hash.
    pub tokens: Vec<ConfiguredToken>,
    /// A TOML file with `[[tokens]]` entries like `tokens`, re-read when it changes.
    pub token_file: Option<PathBuf>,
    /// How often a running server looks for revocations made by `vigil token revoke`.
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            tokens: Vec::new(),
            token_file: None,
            recheck_interval: Duration::from_secs(1),
        }
    }
}

/// The one authentication decision point, shared (as `Arc<Authenticator>`) by every listener.
#[derive(Debug)]
pub struct Authenticator {
    store: Option<TokenStore>,
}

impl Authenticator {
    /// Requires tokens from `store`.
    pub fn new(store: TokenStore) -> Self {
        Authenticator { store: Some(store) }
    }

    /// Lets everyone in as [`Principal::anonymous`]; for `vigil demo` only.
    pub fn disabled() -> Self {
        Authenticator { store: None }
    }

    /// Builds the authenticator the config asks for, with the store at `<data_dir>/tokens.json`.
    pub fn from_config(config: &AuthConfig, data_dir: &Path) -> Result<Self, TokenStoreError> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        Ok(Self::new(TokenStore::open_with(
            data_dir.join(TOKENS_FILE),
            store_options(config),
        )?))
    }

    pub fn is_enabled(&self) -> bool {
        self.store.is_some()
    }

    /// The token store, for bootstrap and the CLI; `None` when authentication is disabled.
    pub fn store(&self) -> Option<&TokenStore> {
        self.store.as_ref()
    }

    /// Checks a presented token (already stripped of any `Bearer ` scheme) against `required`.
    pub fn authorize_token(
        &self,
        token: Option<&str>,
        required: Scope,
    ) -> Result<Principal, AuthFailure> {
        let Some(store) = &self.store else {
            return Ok(Principal::anonymous());
        };
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let principal = store.verify(token).ok_or(AuthFailure::Invalid)?;
        in_scope(principal, required)
    }

    /// Checks a token by its hash, as a long-lived session re-checks the token it logged in with, so
    /// that revoking or removing a token (or its scope) also ends the sessions it opened.
    pub fn authorize_hash(
        &self,
        hash: &TokenHash,
        required: Scope,
    ) -> Result<Principal, AuthFailure> {
        let Some(store) = &self.store else {
            return Ok(Principal::anonymous());
        };
        let principal = store.verify_hash(hash).ok_or(AuthFailure::Invalid)?;
        in_scope(principal, required)
    }

    /// Checks an `Authorization` header value (`Bearer <token>`, scheme case-insensitive).
    pub fn authorize_header(
        &self,
        header: Option<&str>,
        required: Scope,
    ) -> Result<Principal, AuthFailure> {
        if !self.is_enabled() {
            return Ok(Principal::anonymous());
        }
        let Some(header) = header else {
            return Err(AuthFailure::Missing);
        };
        let token = bearer_token(header).ok_or(AuthFailure::Invalid)?;
        self.authorize_token(Some(token), required)
    }
}

fn in_scope(principal: Principal, required: Scope) -> Result<Principal, AuthFailure> {
    if principal.has(required) {
        Ok(principal)
    } else {
        Err(AuthFailure::Forbidden {
            sender: principal.source,
            required,
        })
    }
}

/// Translates `[auth]` into the token store's options.
pub fn store_options(config: &AuthConfig) -> StoreOptions {
    StoreOptions {
        configured: config.tokens.clone(),
        token_file: config.token_file.clone(),
        recheck_interval: config.recheck_interval,
    }
}

/// The token of a `Bearer` authorization value (RFC 6750 §2.1; the scheme is case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// A token store in `dir` that re-reads its file on every check (so a test sees a revoke at once), with an
/// `ingest` token named `ingest_source` and a `query` token named "grafana": (authenticator, ingest token,
/// query token). The dir must outlive the store.
#[cfg(test)]
pub(crate) fn test_authenticator(
    dir: &tempfile::TempDir,
    ingest_source: &str,
) -> (Arc<Authenticator>, String, String) {
    let options = StoreOptions {
        recheck_interval: Duration::ZERO,
        ..StoreOptions::default()
    };
    let store = TokenStore::open_with(dir.path().join(TOKENS_FILE), options).expect("open store");
    let (_, ingest) = store
        .create(ingest_source, &[Scope::Ingest])
        .expect("create");
    let (_, query) = store.create("grafana", &[Scope::Query]).expect("create");
    (Arc::new(Authenticator::new(store)), ingest, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(dir: &tempfile::TempDir) -> (Arc<Authenticator>, String, String) {
        test_authenticator(dir, "collector")
    }

    #[test]
    fn header_checks_distinguish_missing_invalid_forbidden_and_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, ingest, _) = authenticator(&dir);
        assert_eq!(
            auth.authorize_header(None, Scope::Ingest),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            auth.authorize_header(Some("Bearer vgl_nope"), Scope::Ingest),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            auth.authorize_header(Some(&format!("Basic {ingest}")), Scope::Ingest),
            Err(AuthFailure::Invalid)
        );
        let forbidden = auth
            .authorize_header(Some(&format!("Bearer {ingest}")), Scope::Query)
            .expect_err("out of scope");
        assert!(forbidden.is_forbidden());
        assert_eq!(forbidden.reason(), "forbidden");
        let ok = auth
            .authorize_header(Some(&format!("bearer  {ingest} ")), Scope::Ingest)
            .expect("valid");
        assert_eq!(&*ok.source, "collector");
        assert!(ok.is_verified());
    }

    #[test]
    fn a_token_known_by_its_hash_is_checked_as_it_is_now() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, ingest, query) = authenticator(&dir);
        let (ingest, query) = (TokenHash::of(&ingest), TokenHash::of(&query));
        let ok = auth.authorize_hash(&query, Scope::Query).expect("valid");
        assert_eq!(&*ok.source, "grafana");
        assert!(auth
            .authorize_hash(&ingest, Scope::Query)
            .expect_err("out of scope")
            .is_forbidden());
        auth.store()
            .expect("store")
            .revoke("grafana")
            .expect("revoke");
        assert_eq!(
            auth.authorize_hash(&query, Scope::Query),
            Err(AuthFailure::Invalid)
        );
    }

    #[test]
    fn disabled_authenticator_admits_anonymous_unverified_principal() {
        let auth = Authenticator::disabled();
        let p = auth
            .authorize_header(None, Scope::Admin)
            .expect("demo mode admits");
        assert!(!p.is_verified());
        assert_eq!(&*p.source, ANONYMOUS_SOURCE);
        assert!(auth.authorize_token(Some("anything"), Scope::Query).is_ok());
    }

    #[test]
    fn config_parses_with_defaults_and_builds_the_store_in_the_data_dir() {
        let config: AuthConfig = toml::from_str(
            r#"
            tokens = [{ name = "ci", scopes = ["ingest"], hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" }]
            recheck_interval = "5s"
            "#,
        )
        .expect("parse [auth]");
        assert!(config.enabled);
        assert_eq!(config.recheck_interval, Duration::from_secs(5));
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = Authenticator::from_config(&config, dir.path()).expect("build");
        assert_eq!(
            auth.authorize_token(Some("abc"), Scope::Ingest)
                .map(|p| p.source),
            Ok("ci".into())
        );
        assert_eq!(
            auth.store().map(|s| s.path().to_path_buf()),
            Some(dir.path().join(TOKENS_FILE))
        );
        let off = AuthConfig {
            enabled: false,
            ..AuthConfig::default()
        };
        assert!(!Authenticator::from_config(&off, dir.path())
            .expect("build")
            .is_enabled());
    }

    #[test]
    fn failures_are_counted_by_listener_and_reason() {
        let before = AUTH_FAILURES
            .with_label_values(&["unit_test", "invalid"])
            .get();
        record_failure("unit_test", &AuthFailure::Invalid);
        assert_eq!(
            AUTH_FAILURES
                .with_label_values(&["unit_test", "invalid"])
                .get(),
            before + 1
        );
    }
}
