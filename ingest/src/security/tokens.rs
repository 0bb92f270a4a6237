//! Bearer tokens: created once, shown once, stored only as a hash.
//!
//! # Why a plain SHA-256 and no slow KDF
//! Passwords need bcrypt/argon2 because people pick them from a small space an attacker can enumerate. Vigil
//! tokens are 256 bits from the operating system's CSPRNG: there is nothing to enumerate, so a leaked
//! `tokens.json` cannot be brute-forced whatever the hash speed, and a salt (which only defeats precomputed
//! tables over a small input space) would add nothing either. An unsalted SHA-256 also lets an operator
//! provision a token without the CLI (`printf %s "$TOKEN" | sha256sum`) and lets `verify` find the entry with
//! one hash and one map lookup on the request path. The lookup is keyed by the hash, so its timing reveals
//! nothing usable about the plaintext; the final comparison is constant-time anyway.
//!
//! # Files
//! `tokens.json` in the data dir holds the tokens the CLI and the first-start bootstrap create. It is written
//! atomically (temp file, fsync, rename) with mode 0600, under an advisory lock so `vigil token create` and a
//! starting server do not lose each other's writes. A running server notices the file changing (checked at
//! most once per `recheck_interval`), so `vigil token revoke` takes effect without a restart. Tokens may also
//! come from the config (`[auth] tokens`) or a separate TOML `token_file` (for secrets mounted by an
//! orchestrator); those are read-only to the CLI.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::file_version::{fingerprint, Fingerprint};
use super::scopes::Scope;
use super::Principal;

/// Every token Vigil generates starts with this, so secret scanners and people can recognise a leaked one.
pub const TOKEN_PREFIX: &str = "vgl_";
/// Longer "tokens" are refused before hashing: no real token is this long and hashing attacker-sized input
/// on every request is wasted work.
const MAX_TOKEN_LEN: usize = 512;
const FILE_VERSION: u32 = 1;
const HASH_SCHEME: &str = "sha256:";

/// Why the token store could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("token store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token store {path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("token file {path} is not valid TOML: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("token {name:?}: hash must be \"sha256:\" followed by 64 hex digits")]
    BadHash { name: String },
    #[error("token name {0:?} must be 1-64 characters of letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("a token needs at least one scope")]
    NoScopes,
    #[error("no active token with id or name {0:?}")]
    NotFound(String),
    #[error("token {0:?} comes from the config or token_file; remove it there")]
    NotInStore(String),
}

/// SHA-256 of a token, the only form in which a token is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(plaintext: &str) -> Self {
        TokenHash(Sha256::digest(plaintext.as_bytes()).into())
    }

    /// Reads the `sha256:<hex>` form used in `tokens.json` and the config.
    pub fn parse(s: &str) -> Option<Self> {
        let hex_part = s.trim().strip_prefix(HASH_SCHEME)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(TokenHash(out))
    }

    fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{HASH_SCHEME}{}", hex::encode(self.0))
    }
}

/// A token provisioned outside the store: `[auth] tokens = [{ name, scopes, hash }]` or a `token_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredToken {
    /// The source name recorded on events sent with this token.
    pub name: String,
    pub scopes: Vec<Scope>,
    /// `sha256:<hex>` of the token, e.g. from `printf %s "$TOKEN" | sha256sum`.
    pub hash: String,
}

/// Where a token is defined; only `Store` tokens can be revoked with the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenOrigin {
    Store,
    Config,
    TokenFile,
}

/// What `vigil token list` shows: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    /// Also the `source` recorded on the events this token sends.
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub origin: TokenOrigin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    created_at: DateTime<Utc>,
    #[serde(default)]
    revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_at: Option<DateTime<Utc>>,
    hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<StoredToken>,
}

impl Default for TokenFile {
    fn default() -> Self {
        TokenFile {
            version: FILE_VERSION,
            tokens: Vec::new(),
        }
    }
}

/// Unknown keys are refused: a file written with `[[token]]` instead of `[[tokens]]` must not load as
/// zero tokens without a word.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExternalTokenFile {
    #[serde(default)]
    tokens: Vec<ConfiguredToken>,
}

/// How to open a [`TokenStore`] beyond the path of `tokens.json`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub configured: Vec<ConfiguredToken>,
    pub token_file: Option<PathBuf>,
    /// How often `verify` may stat the files to notice a revocation made by another process.
    pub recheck_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            configured: Vec::new(),
            token_file: None,
            recheck_interval: Duration::from_secs(1),
        }
    }
}

struct ActiveEntry {
    hash: TokenHash,
    principal: Principal,
}

struct State {
    /// `[auth] tokens` of the configuration, as last loaded (replaced on a configuration reload).
    configured: Vec<ConfiguredToken>,
    file: TokenFile,
    file_fp: Option<Fingerprint>,
    external: Vec<ConfiguredToken>,
    external_fp: Option<Fingerprint>,
    index: HashMap<TokenHash, ActiveEntry>,
}

/// The set of valid tokens, shared by every listener of a process (wrap it in an `Arc`).
pub struct TokenStore {
    path: PathBuf,
    options: StoreOptions,
    state: RwLock<State>,
    /// When the store was opened; `last_check_ms` counts from here so it fits an atomic.
    opened: Instant,
    /// Milliseconds after `opened` of the last look at the files. An atomic rather than a lock because
    /// every request on every listener passes here.
    last_check_ms: AtomicU64,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Opens `tokens.json` at `path` (a missing file is an empty store) with no config tokens.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, TokenStoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    pub fn open_with(
        path: impl Into<PathBuf>,
        options: StoreOptions,
    ) -> Result<Self, TokenStoreError> {
        let path = path.into();
        for t in &options.configured {
            validate_configured(t)?;
        }
        let file_fp = fingerprint(&path);
        let file = read_store(&path)?;
        let external_fp = options.token_file.as_deref().and_then(fingerprint);
        let external = match &options.token_file {
            Some(p) => read_external(p)?,
            None => Vec::new(),
        };
        let index = build_index(&file, &options.configured, &external);
        let state = RwLock::new(State {
            configured: options.configured.clone(),
            file,
            file_fp,
            external,
            external_fp,
            index,
        });
        Ok(TokenStore {
            path,
            options,
            state,
            opened: Instant::now(),
            last_check_ms: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The principal a presented token stands for, or `None` if it is unknown or revoked.
    pub fn verify(&self, plaintext: &str) -> Option<Principal> {
        if plaintext.is_empty() || plaintext.len() > MAX_TOKEN_LEN {
            return None;
        }
        self.verify_hash(&TokenHash::of(plaintext))
    }

    /// The principal a token known only by its hash stands for now: how a session that logged in once
    /// (a PostgreSQL connection) learns that its token was revoked or removed since.
    pub fn verify_hash(&self, hash: &TokenHash) -> Option<Principal> {
        self.refresh_if_due();
        let state = self.state.read();
        let entry = state.index.get(hash)?;
        entry.hash.ct_eq(hash).then(|| entry.principal.clone())
    }

    /// Creates a token and returns it in plaintext: the only time it exists outside the client.
    pub fn create(
        &self,
        name: &str,
        scopes: &[Scope],
    ) -> Result<(TokenInfo, String), TokenStoreError> {
        validate_name(name)?;
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(TokenStoreError::NoScopes);
        }
        self.modify_file(|file| Ok(vec![new_token(file, name, &scopes)]))
            .map(|mut created| created.remove(0))
    }

    /// Revokes the token with this id or, failing that, every active store token with this name (so a
    /// rotated source can be cut off in one command). Returns what was revoked.
    pub fn revoke(&self, id_or_name: &str) -> Result<Vec<TokenInfo>, TokenStoreError> {
        let external = {
            let state = self.state.read();
            state
                .configured
                .iter()
                .chain(state.external.iter())
                .any(|t| t.name == id_or_name)
        };
        let now = Utc::now();
        let revoked = self.modify_file(|file| {
            let by_id: Vec<usize> = file
                .tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| t.id == id_or_name && !t.revoked)
                .map(|(i, _)| i)
                .collect();
            let targets = if by_id.is_empty() {
                file.tokens
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.name == id_or_name && !t.revoked)
                    .map(|(i, _)| i)
                    .collect()
            } else {
                by_id
            };
            for &i in &targets {
                file.tokens[i].revoked = true;
                file.tokens[i].revoked_at = Some(now);
            }
            Ok(targets
                .iter()
                .map(|&i| stored_info(&file.tokens[i]))
                .collect::<Vec<_>>())
        })?;
        if revoked.is_empty() {
            return Err(if external {
                TokenStoreError::NotInStore(id_or_name.to_string())
            } else {
                TokenStoreError::NotFound(id_or_name.to_string())
            });
        }
        Ok(revoked)
    }

    /// Every known token, revoked ones included, config tokens last.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.refresh_if_due();
        let state = self.state.read();
        let mut out: Vec<TokenInfo> = state.file.tokens.iter().map(stored_info).collect();
        out.extend(
            state
                .configured
                .iter()
                .map(|t| external_info(t, TokenOrigin::Config)),
        );
        out.extend(
            state
                .external
                .iter()
                .map(|t| external_info(t, TokenOrigin::TokenFile)),
        );
        out
    }

    /// On a first start (no token anywhere, not even a revoked one) creates an `ingest` and an `admin` token
    /// and returns them so the caller prints them once; afterwards returns `None`. A store whose tokens were
    /// all revoked is not re-bootstrapped: that would undo the operator's revocation.
    pub fn ensure_bootstrap(&self) -> Result<Option<Vec<(TokenInfo, String)>>, TokenStoreError> {
        let has_external = {
            let state = self.state.read();
            !state.configured.is_empty() || !state.external.is_empty()
        };
        if has_external {
            return Ok(None);
        }
        let created = self.modify_file(|file| {
            if !file.tokens.is_empty() {
                return Ok(Vec::new());
            }
            Ok(vec![
                new_token(file, "ingest", &[Scope::Ingest]),
                new_token(file, "admin", &[Scope::Admin]),
            ])
        })?;
        Ok((!created.is_empty()).then_some(created))
    }

    /// Re-reads the files if they changed, at most once per `recheck_interval`.
    fn refresh_if_due(&self) {
        let now_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_check_ms.load(Ordering::Relaxed);
        let interval_ms =
            u64::try_from(self.options.recheck_interval.as_millis()).unwrap_or(u64::MAX);
        let due =
            self.options.recheck_interval.is_zero() || now_ms.saturating_sub(last) >= interval_ms;
        // Only the caller that wins the exchange looks at the files; the others go on with the current set.
        if !due
            || self
                .last_check_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let file_fp = fingerprint(&self.path);
        let external_fp = self.options.token_file.as_deref().and_then(fingerprint);
        {
            let state = self.state.read();
            if state.file_fp == file_fp && state.external_fp == external_fp {
                return;
            }
        }
        if let Err(e) = self.reload() {
            // Keep serving the last good set: a broken hand edit must not lock every client out.
            tracing::warn!(error = %e, "token store changed but could not be re-read; keeping the previous tokens");
        }
    }

    /// Each file is taken on its own: a broken `token_file` must not hold back a revocation written to
    /// `tokens.json`, nor the reverse. A file that does not parse keeps its last good tokens (and is tried
    /// again at the next check); a `token_file` that was deleted takes its tokens with it.
    fn reload(&self) -> Result<(), TokenStoreError> {
        let file_fp = fingerprint(&self.path);
        let file = read_store(&self.path);
        let external_fp = self.options.token_file.as_deref().and_then(fingerprint);
        let external = match (&self.options.token_file, external_fp) {
            (Some(p), Some(_)) => read_external(p),
            (Some(_), None) | (None, _) => Ok(Vec::new()),
        };
        let mut state = self.state.write();
        let mut failed = None;
        match file {
            Ok(file) => {
                state.file = file;
                state.file_fp = file_fp;
            }
            Err(e) => failed = Some(e),
        }
        match external {
            Ok(external) => {
                state.external = external;
                state.external_fp = external_fp;
            }
            Err(e) => failed = failed.or(Some(e)),
        }
        state.index = build_index(&state.file, &state.configured, &state.external);
        failed.map_or(Ok(()), Err)
    }

    /// Replaces the configuration's tokens (a configuration reload): one removed from `[auth] tokens` stops
    /// working at once, without a restart. Nothing changes if any of them is invalid.
    pub fn set_configured(&self, configured: Vec<ConfiguredToken>) -> Result<(), TokenStoreError> {
        for t in &configured {
            validate_configured(t)?;
        }
        let mut state = self.state.write();
        state.configured = configured;
        state.index = build_index(&state.file, &state.configured, &state.external);
        Ok(())
    }

    /// Read-modify-write of `tokens.json` under an exclusive lock, starting from the file as it is on disk
    /// (another process may have changed it), then refreshes the in-memory index.
    fn modify_file<T>(
        &self,
        change: impl FnOnce(&mut TokenFile) -> Result<T, TokenStoreError>,
    ) -> Result<T, TokenStoreError> {
        let io_err = |source| TokenStoreError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let lock_path = sibling(&self.path, ".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err)?;
        lock.lock().map_err(io_err)?;
        let mut file = read_store(&self.path)?;
        let json_err = |source| TokenStoreError::Json {
            path: self.path.clone(),
            source,
        };
        let before = serde_json::to_vec(&file).map_err(json_err)?;
        let out = change(&mut file)?;
        if serde_json::to_vec(&file).map_err(json_err)? != before {
            let pretty = serde_json::to_vec_pretty(&file).map_err(json_err)?;
            write_atomic(&self.path, &pretty).map_err(io_err)?;
        }
        self.reload()?;
        drop(lock);
        Ok(out)
    }
}

fn new_token(file: &mut TokenFile, name: &str, scopes: &[Scope]) -> (TokenInfo, String) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let plaintext = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let id = loop {
        let mut raw = [0u8; 6];
        rand::rng().fill_bytes(&mut raw);
        let id = format!("tok_{}", hex::encode(raw));
        if !file.tokens.iter().any(|t| t.id == id) {
            break id;
        }
    };
    let stored = StoredToken {
        id,
        name: name.to_string(),
        scopes: scopes.to_vec(),
        created_at: Utc::now(),
        revoked: false,
        revoked_at: None,
        hash: TokenHash::of(&plaintext).to_string(),
    };
    let info = stored_info(&stored);
    file.tokens.push(stored);
    (info, plaintext)
}

fn stored_info(t: &StoredToken) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        scopes: t.scopes.clone(),
        created_at: Some(t.created_at),
        revoked: t.revoked,
        origin: TokenOrigin::Store,
    }
}

fn external_id(t: &ConfiguredToken) -> String {
    // The hash prefix identifies the entry in logs without revealing anything usable.
    let short = TokenHash::parse(&t.hash)
        .map(|h| hex::encode(&h.0[..4]))
        .unwrap_or_default();
    format!("cfg_{short}")
}

fn external_info(t: &ConfiguredToken, origin: TokenOrigin) -> TokenInfo {
    TokenInfo {
        id: external_id(t),
        name: t.name.clone(),
        scopes: t.scopes.clone(),
        created_at: None,
        revoked: false,
        origin,
    }
}

fn validate_name(name: &str) -> Result<(), TokenStoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TokenStoreError::BadName(name.to_string()))
    }
}

fn validate_configured(t: &ConfiguredToken) -> Result<(), TokenStoreError> {
    validate_name(&t.name)?;
    if t.scopes.is_empty() {
        return Err(TokenStoreError::NoScopes);
    }
    TokenHash::parse(&t.hash)
        .map(|_| ())
        .ok_or_else(|| TokenStoreError::BadHash {
            name: t.name.clone(),
        })
}

fn read_store(path: &Path) -> Result<TokenFile, TokenStoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
        Err(source) => {
            return Err(TokenStoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: TokenFile =
        serde_json::from_slice(&bytes).map_err(|source| TokenStoreError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    for t in &file.tokens {
        if TokenHash::parse(&t.hash).is_none() {
            return Err(TokenStoreError::BadHash {
                name: t.name.clone(),
            });
        }
    }
    Ok(file)
}

fn read_external(path: &Path) -> Result<Vec<ConfiguredToken>, TokenStoreError> {
    let text = fs::read_to_string(path).map_err(|source| TokenStoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed: ExternalTokenFile =
        toml::from_str(&text).map_err(|source| TokenStoreError::Toml {
            path: path.to_path_buf(),
            source,
        })?;
    for t in &parsed.tokens {
        validate_configured(t)?;
    }
    Ok(parsed.tokens)
}

fn build_index(
    file: &TokenFile,
    configured: &[ConfiguredToken],
    external: &[ConfiguredToken],
) -> HashMap<TokenHash, ActiveEntry> {
    let mut index = HashMap::new();
    for t in file.tokens.iter().filter(|t| !t.revoked) {
        if let Some(hash) = TokenHash::parse(&t.hash) {
            let principal = Principal::verified(&t.id, &t.name, &t.scopes);
            index.insert(hash, ActiveEntry { hash, principal });
        }
    }
    for t in configured.iter().chain(external) {
        if let Some(hash) = TokenHash::parse(&t.hash) {
            let principal = Principal::verified(&external_id(t), &t.name, &t.scopes);
            index.insert(hash, ActiveEntry { hash, principal });
        }
    }
    index
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "tokens.json".into());
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to a temp file beside `path` (mode 0600: it holds hashes only, but there is no reason for
/// anyone else to read them), fsyncs it, renames it over `path` and fsyncs the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_in(dir: &tempfile::TempDir) -> TokenStore {
        let options = StoreOptions {
            recheck_interval: Duration::ZERO,
            ..StoreOptions::default()
        };
        TokenStore::open_with(dir.path().join("tokens.json"), options).expect("open store")
    }

    #[test]
    fn created_token_verifies_with_its_name_and_scopes_and_wrong_ones_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(&dir);
        let (info, token) = store
            .create("collector-eu", &[Scope::Ingest])
            .expect("create");
        assert!(token.starts_with(TOKEN_PREFIX));
        // 32 random bytes in unpadded base64url.
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 43);
        let principal = store.verify(&token).expect("valid token verifies");
        assert_eq!(&*principal.source, "collector-eu");
        assert_eq!(principal.token_id.as_deref(), Some(info.id.as_str()));
        assert!(principal.has(Scope::Ingest));
        assert!(!principal.has(Scope::Query));

        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(store.verify(&wrong).is_none());
        assert!(store.verify("").is_none());
        assert!(store.verify(&"x".repeat(10_000)).is_none());

        let (_, second) = store
            .create("collector-eu", &[Scope::Ingest])
            .expect("create");
        assert_ne!(token, second, "tokens are random");
    }

    #[test]
    fn only_hashes_reach_the_disk_with_owner_only_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(&dir);
        let (_, token) = store
            .create("app", &[Scope::Ingest, Scope::Query])
            .expect("create");
        let on_disk = fs::read_to_string(store.path()).expect("read tokens.json");
        assert!(!on_disk.contains(&token));
        assert!(!on_disk.contains(token.trim_start_matches(TOKEN_PREFIX)));
        assert!(on_disk.contains(&TokenHash::of(&token).to_string()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.path())
                .expect("stat")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
        // A fresh process (new store on the same file) accepts the token.
        let reopened = TokenStore::open(store.path()).expect("reopen");
        assert_eq!(
            &*reopened
                .verify(&token)
                .expect("verifies after reopen")
                .source,
            "app"
        );
    }

    #[test]
    fn revocation_by_another_process_takes_effect_without_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = store_in(&dir);
        let (info, token) = server.create("agent", &[Scope::Ingest]).expect("create");
        assert!(server.verify(&token).is_some());

        // `vigil token revoke` is a separate process with its own store object on the same file.
        let cli = TokenStore::open(server.path()).expect("cli opens store");
        let revoked = cli.revoke(&info.id).expect("revoke by id");
        assert_eq!(revoked.len(), 1);
        assert!(revoked[0].revoked);

        assert!(
            server.verify(&token).is_none(),
            "server sees the revocation on its next check"
        );
        assert!(server.list().iter().any(|t| t.id == info.id && t.revoked));
        assert!(matches!(
            cli.revoke(&info.id),
            Err(TokenStoreError::NotFound(_))
        ));
    }

    #[test]
    fn revoke_by_name_cuts_off_every_active_token_of_that_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(&dir);
        let (_, a) = store.create("rotating", &[Scope::Ingest]).expect("create");
        let (_, b) = store.create("rotating", &[Scope::Ingest]).expect("create");
        let (_, other) = store.create("other", &[Scope::Ingest]).expect("create");
        assert_eq!(store.revoke("rotating").expect("revoke by name").len(), 2);
        assert!(store.verify(&a).is_none());
        assert!(store.verify(&b).is_none());
        assert!(store.verify(&other).is_some());
    }

    #[test]
    fn bootstrap_creates_ingest_and_admin_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(&dir);
        let created = store
            .ensure_bootstrap()
            .expect("bootstrap")
            .expect("first start creates tokens");
        let names: Vec<&str> = created.iter().map(|(i, _)| i.name.as_str()).collect();
        assert_eq!(names, ["ingest", "admin"]);
        let ingest = store.verify(&created[0].1).expect("ingest token works");
        assert!(ingest.has(Scope::Ingest) && !ingest.has(Scope::Query));
        let admin = store.verify(&created[1].1).expect("admin token works");
        assert!(admin.has(Scope::Ingest) && admin.has(Scope::Query) && admin.has(Scope::Admin));

        assert!(store.ensure_bootstrap().expect("second start").is_none());
        // Even after everything is revoked, a restart must not mint fresh tokens behind the operator's back.
        store.revoke("ingest").expect("revoke");
        store.revoke("admin").expect("revoke");
        let restarted = store_in(&dir);
        assert!(restarted.ensure_bootstrap().expect("restart").is_none());
        assert!(restarted.verify(&created[1].1).is_none());
    }

    /// A `token_file` holding one `ingest` token named "k8s-collector", as a mounted secret would; returns its
    /// path and the token.
    fn mounted_token_file(dir: &tempfile::TempDir) -> (PathBuf, &'static str) {
        let token_file = dir.path().join("extra-tokens.toml");
        let file_token = "vgl_from_a_mounted_secret_0123456789";
        fs::write(
            &token_file,
            format!(
                "[[tokens]]\nname = \"k8s-collector\"\nscopes = [\"ingest\"]\nhash = \"{}\"\n",
                TokenHash::of(file_token)
            ),
        )
        .expect("write token file");
        (token_file, file_token)
    }

    #[test]
    fn replaced_config_tokens_take_effect_at_once_and_an_invalid_set_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let token = "operator-chosen-secret-value-with-enough-entropy";
        let configured = ConfiguredToken {
            name: "edge".into(),
            scopes: vec![Scope::Ingest],
            hash: TokenHash::of(token).to_string(),
        };
        let options = StoreOptions {
            configured: vec![configured.clone()],
            ..StoreOptions::default()
        };
        let store = TokenStore::open_with(dir.path().join("tokens.json"), options).unwrap();
        assert!(store.verify(token).is_some());
        let broken = ConfiguredToken {
            hash: "sha256:nothex".into(),
            ..configured
        };
        assert!(store.set_configured(vec![broken]).is_err());
        assert!(
            store.verify(token).is_some(),
            "a refused set changes nothing"
        );
        store.set_configured(Vec::new()).unwrap();
        assert!(store.verify(token).is_none());
        assert!(store.list().is_empty());
    }

    #[test]
    fn config_and_token_file_tokens_verify_and_suppress_bootstrap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (token_file, file_token) = mounted_token_file(&dir);
        let config_token = "operator-chosen-secret-value-with-enough-entropy";
        let options = StoreOptions {
            configured: vec![ConfiguredToken {
                name: "grafana".into(),
                scopes: vec![Scope::Query],
                hash: TokenHash::of(config_token).to_string(),
            }],
            token_file: Some(token_file.clone()),
            recheck_interval: Duration::ZERO,
        };
        let store = TokenStore::open_with(dir.path().join("tokens.json"), options).expect("open");
        assert_eq!(
            &*store.verify(config_token).expect("config token").source,
            "grafana"
        );
        assert_eq!(
            &*store.verify(file_token).expect("token_file token").source,
            "k8s-collector"
        );
        assert!(store.ensure_bootstrap().expect("bootstrap").is_none());
        assert!(matches!(
            store.revoke("grafana"),
            Err(TokenStoreError::NotInStore(_))
        ));
        let origins: Vec<TokenOrigin> = store.list().iter().map(|t| t.origin).collect();
        assert_eq!(origins, [TokenOrigin::Config, TokenOrigin::TokenFile]);

        // Emptying the mounted file removes its token without a restart.
        fs::write(&token_file, "tokens = []\n").expect("rewrite token file");
        assert!(store.verify(file_token).is_none());
    }

    #[test]
    fn a_token_file_with_unknown_keys_is_refused_rather_than_read_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (token_file, _) = mounted_token_file(&dir);
        let text = fs::read_to_string(&token_file).unwrap();
        fs::write(&token_file, text.replace("[[tokens]]", "[[token]]")).unwrap();
        let options = StoreOptions {
            token_file: Some(token_file),
            ..StoreOptions::default()
        };
        assert!(TokenStore::open_with(dir.path().join("tokens.json"), options).is_err());
    }

    /// A running server re-reads both files; a broken `token_file` (a half-written secret mount) must not
    /// hold back a revocation made in `tokens.json` by `vigil token revoke`, and a deleted one drops its tokens.
    #[test]
    fn a_broken_token_file_does_not_hold_back_a_revocation_and_a_deleted_one_drops_its_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (token_file, file_token) = mounted_token_file(&dir);
        let path = dir.path().join("tokens.json");
        let server = TokenStore::open_with(
            path.clone(),
            StoreOptions {
                configured: Vec::new(),
                token_file: Some(token_file.clone()),
                recheck_interval: Duration::ZERO,
            },
        )
        .expect("open");
        let (_, secret) = server.create("ci", &[Scope::Ingest]).expect("create");
        assert!(server.verify(&secret).is_some());

        fs::write(&token_file, "tokens = [ not toml").expect("break token file");
        // The CLI, another process, revokes in tokens.json.
        let cli = TokenStore::open_with(
            path,
            StoreOptions {
                configured: Vec::new(),
                token_file: None,
                recheck_interval: Duration::ZERO,
            },
        )
        .expect("open as the CLI");
        cli.revoke("ci").expect("revoke");
        assert!(server.verify(&secret).is_none(), "revocation applied");
        assert!(
            server.verify(file_token).is_some(),
            "the token_file's last good tokens are kept"
        );

        fs::remove_file(&token_file).expect("delete token file");
        assert!(server.verify(file_token).is_none(), "deleted with its file");
    }

    #[test]
    fn malformed_inputs_are_refused_with_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(&dir);
        assert!(matches!(
            store.create("", &[Scope::Ingest]),
            Err(TokenStoreError::BadName(_))
        ));
        assert!(matches!(
            store.create("has space", &[Scope::Ingest]),
            Err(TokenStoreError::BadName(_))
        ));
        assert!(matches!(
            store.create("ok", &[]),
            Err(TokenStoreError::NoScopes)
        ));
        let bad = StoreOptions {
            configured: vec![ConfiguredToken {
                name: "x".into(),
                scopes: vec![Scope::Query],
                hash: "md5:abc".into(),
            }],
            ..StoreOptions::default()
        };
        assert!(matches!(
            TokenStore::open_with(dir.path().join("t.json"), bad),
            Err(TokenStoreError::BadHash { .. })
        ));
        fs::write(dir.path().join("broken.json"), "{not json").expect("write");
        let err =
            TokenStore::open(dir.path().join("broken.json")).expect_err("broken file is an error");
        assert!(err.to_string().contains("broken.json"), "{err}");
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(&dir);
        let (_, token) = store.create("app", &[Scope::Ingest]).expect("create");
        fs::write(store.path(), "{oops").expect("corrupt");
        assert!(store.verify(&token).is_some());
    }

    #[test]
    fn hash_parse_round_trips() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "SHA-256 of \"abc\" (FIPS 180-2 test vector), as `sha256sum` prints it"
        );
        assert_eq!(TokenHash::parse(&h.to_string()), Some(h));
        assert_eq!(TokenHash::parse("sha256:zz"), None);
        assert_eq!(TokenHash::parse("ba7816bf"), None);
    }
}
