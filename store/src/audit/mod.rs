//! Tamper-evident storage ("immutable logs for audits"): every sealed Parquet file and WAL segment is
//! recorded with its SHA-256 in a hash-chained, append-only log, `<data_dir>/_audit/chain.jsonl`.
//! Compaction, retention and WAL deletion append entries instead of rewriting history, so `verify` can
//! name every file changed, removed or added since it was sealed, and every chain entry edited, removed or
//! reordered. The chain head can be signed (ed25519) and exported, so an auditor can later check offline
//! that the chain was not rewritten behind it.
//!
//! Entry format and hashing: see [`Entry`]. Signed bytes: see [`signed_message`].

mod chain;
mod log;
mod reconcile;
mod sign;
mod verify;

pub use chain::{Entry, FileRecord, Op, StartAdoption, GENESIS_PREV_HASH};
/// The ed25519 key types `sign_head` takes, re-exported so callers need not depend on `ed25519-dalek`.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use log::chain_path;
pub use sign::{
    key_path, load_or_create_key, sign_head, signed_message, verify_signed_head, ChainHead,
    HeadError, SignedHead, KEY_FILE,
};
pub use verify::{verify, verify_with_object_store, Finding, VerifyReport};

pub(crate) use log::{AuditLog, Draft};
pub(crate) use reconcile::reconcile;

use crate::{StoreConfig, StoreError};

/// Signs the current chain head with the store's key (created on first use, see [`key_path`]) for export
/// to an auditor. Refuses a chain that is broken up to its head: signing it would vouch for the tampering.
pub fn export_head(config: &StoreConfig) -> Result<SignedHead, StoreError> {
    let path = chain_path(&config.data_dir);
    let bytes = std::fs::read(&path)
        .map_err(|e| StoreError::Audit(format!("read {}: {e}", path.display())))?;
    let parsed = chain::parse(&bytes);
    if let Some(b) = parsed.breaks.first() {
        return Err(StoreError::Audit(format!(
            "chain is broken at entry {}: {}; run verify",
            b.seq, b.reason
        )));
    }
    let head = parsed
        .entries
        .last()
        .map(ChainHead::from)
        .ok_or_else(|| StoreError::Audit(format!("{} has no entries yet", path.display())))?;
    let key = load_or_create_key(&key_path(config))?;
    Ok(sign_head(&head, &key))
}
