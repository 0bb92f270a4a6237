//! Signing the chain head, so an auditor holding an exported head can later prove that the chain was not
//! rewritten or cut back behind it, without trusting the machine that keeps it.
//!
//! The signature is ed25519 (RFC 8032, as `ed25519-dalek` and OpenSSL implement it) over these exact bytes,
//! UTF-8, every line ending in `\n`:
//!
//! ```text
//! vigil-audit-head/v1
//! seq=<head entry seq, decimal>
//! hash=<head entry hash, 64 lowercase hex>
//! time=<head entry time, as in the chain>
//! signed_at=<signing time, RFC 3339 UTC>
//! ```
//!
//! `public_key` is the 32-byte ed25519 key and `signature` the 64-byte signature, both lowercase hex.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::chain::{self, Entry};
use crate::{StoreConfig, StoreError};

/// Default key file name inside `data_dir`.
pub const KEY_FILE: &str = "audit_ed25519.key";

/// The newest entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
    /// The entry's own time.
    pub time: String,
}

impl From<&Entry> for ChainHead {
    fn from(e: &Entry) -> Self {
        ChainHead {
            seq: e.seq,
            hash: e.hash.clone(),
            time: e.time.clone(),
        }
    }
}

/// A chain head signed with the store's key: what `vigil verify --export-head` hands to an auditor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub seq: u64,
    pub hash: String,
    pub time: String,
    pub signed_at: String,
    pub public_key: String,
    pub signature: String,
}

/// Why a signed head does not vouch for a chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("public key is not a valid ed25519 key: {0}")]
    BadKey(String),
    #[error("signature does not verify under the head's public key")]
    BadSignature,
    #[error("head is signed by {got}, not by the trusted key {trusted}")]
    UntrustedKey { got: String, trusted: String },
    #[error("chain is broken at entry {seq}: {reason}")]
    ChainBroken { seq: u64, reason: String },
    #[error("chain has no entry {seq} (it was cut back below the signed head)")]
    NotInChain { seq: u64 },
    #[error("chain entry {seq} is not the one that was signed (hash {found}, signed {signed})")]
    HashMismatch {
        seq: u64,
        found: String,
        signed: String,
    },
}

/// The exact bytes that are signed (see the module docs).
pub fn signed_message(seq: u64, hash: &str, time: &str, signed_at: &str) -> Vec<u8> {
    format!("vigil-audit-head/v1\nseq={seq}\nhash={hash}\ntime={time}\nsigned_at={signed_at}\n")
        .into_bytes()
}

/// Signs a head now.
pub fn sign_head(head: &ChainHead, key: &SigningKey) -> SignedHead {
    let signed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let sig = key.sign(&signed_message(
        head.seq, &head.hash, &head.time, &signed_at,
    ));
    SignedHead {
        seq: head.seq,
        hash: head.hash.clone(),
        time: head.time.clone(),
        signed_at,
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(sig.to_bytes()),
    }
}

/// Checks, offline, that `signed` is a valid signature (by `trusted_public_key` when given, hex) and that
/// `chain_jsonl` (the bytes of `_audit/chain.jsonl`) links intact from its first entry up to the signed one,
/// which carries the signed hash. Entries after the head are not judged here (`verify` does that).
pub fn verify_signed_head(
    signed: &SignedHead,
    chain_jsonl: &[u8],
    trusted_public_key: Option<&str>,
) -> Result<(), HeadError> {
    if let Some(trusted) = trusted_public_key {
        if !trusted.eq_ignore_ascii_case(&signed.public_key) {
            return Err(HeadError::UntrustedKey {
                got: signed.public_key.clone(),
                trusted: trusted.to_string(),
            });
        }
    }
    let key_bytes: [u8; 32] = hex::decode(&signed.public_key)
        .map_err(|e| HeadError::BadKey(e.to_string()))?
        .try_into()
        .map_err(|_| HeadError::BadKey("not 32 bytes".into()))?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|e| HeadError::BadKey(e.to_string()))?;
    let sig_bytes: [u8; 64] = hex::decode(&signed.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(HeadError::BadSignature)?;
    let msg = signed_message(signed.seq, &signed.hash, &signed.time, &signed.signed_at);
    key.verify_strict(&msg, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| HeadError::BadSignature)?;

    let parsed = chain::parse(chain_jsonl);
    if let Some(b) = parsed.breaks.iter().find(|b| b.seq <= signed.seq) {
        return Err(HeadError::ChainBroken {
            seq: b.seq,
            reason: b.reason.clone(),
        });
    }
    let entry = parsed
        .entries
        .iter()
        .find(|e| e.seq == signed.seq)
        .ok_or(HeadError::NotInChain { seq: signed.seq })?;
    if entry.hash != signed.hash || entry.time != signed.time {
        return Err(HeadError::HashMismatch {
            seq: signed.seq,
            found: entry.hash.clone(),
            signed: signed.hash.clone(),
        });
    }
    Ok(())
}

/// Where the signing key lives: `audit_key_path`, or `<data_dir>/audit_ed25519.key`.
pub fn key_path(config: &StoreConfig) -> PathBuf {
    config
        .audit_key_path
        .clone()
        .unwrap_or_else(|| config.data_dir.join(KEY_FILE))
}

/// Loads the signing key (the 32-byte seed as hex), creating it with mode 0600 from the OS's randomness on
/// first use.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, StoreError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Audit(format!("{what} {}: {e}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed: [u8; 32] = hex::decode(text.trim())
                .map_err(|e| err("key file", &e))?
                .try_into()
                .map_err(|_| err("key file", &"is not a 32-byte hex seed"))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::TryRngCore;
            let mut seed = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut seed)
                .map_err(|e| err("random seed for", &e))?;
            write_private(path, format!("{}\n", hex::encode(seed)).as_bytes())
                .map_err(|e| err("create", &e))?;
            tracing::info!(key = %path.display(), "created the audit chain signing key");
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) => Err(err("read", &e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> ChainHead {
        ChainHead {
            seq: 7,
            hash: "ab".repeat(32),
            time: "2026-11-22T14:00:00.000000Z".into(),
        }
    }

    #[test]
    fn signature_covers_every_member_and_checks_with_openssl_style_bytes() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let s = sign_head(&head(), &key);
        // The documented bytes verify with the plain key, independent of this module's helper.
        let msg = format!(
            "vigil-audit-head/v1\nseq=7\nhash={}\ntime={}\nsigned_at={}\n",
            s.hash, s.time, s.signed_at
        );
        let sig = Signature::from_bytes(&hex::decode(&s.signature).unwrap().try_into().unwrap());
        assert!(key
            .verifying_key()
            .verify_strict(msg.as_bytes(), &sig)
            .is_ok());
        for tamper in [
            |h: &mut SignedHead| h.seq += 1,
            |h: &mut SignedHead| h.hash = "cd".repeat(32),
            |h: &mut SignedHead| h.time = "2026-11-23T00:00:00Z".into(),
            |h: &mut SignedHead| h.signed_at = "2030-01-01T00:00:00Z".into(),
        ] {
            let mut t = s.clone();
            tamper(&mut t);
            assert_eq!(
                verify_signed_head(&t, b"", None),
                Err(HeadError::BadSignature)
            );
        }
        let other = hex::encode(
            SigningKey::from_bytes(&[8u8; 32])
                .verifying_key()
                .as_bytes(),
        );
        assert!(matches!(
            verify_signed_head(&s, b"", Some(&other)),
            Err(HeadError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn key_is_created_private_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(&path, "zz").unwrap();
        assert!(load_or_create_key(&path).is_err());
    }
}
