//! Bringing the chain in line with what `open` finds after a crash. The chain is written before each change
//! is made live, so a crash can leave it one step ahead of the manifest: files sealed but never made live
//! (deleted by `open`, recorded as `abandon`), files retired but still live (taken back as `adopt` with the
//! hash they were sealed with), a state table recorded as rewritten but not rewritten (its previous record
//! restored), WAL segments deleted by replay (`retire_wal`) or closed by the crash (`seal_wal`, hashed from
//! disk). Nothing the chain never sealed is taken in, except the whole store on the chain's first use, and
//! sealed files no crash can have left out of the manifest are not abandoned (see `open::unlisted_files`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::chain::{FileRecord, Op};
use super::log::{AuditLog, Draft};
use crate::manifest::Manifest;
use crate::object_files::ObjectFiles;
use crate::wal::{chain_name, Segment};
use crate::{StoreError, Table};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) async fn reconcile(
    log: &Arc<AuditLog>,
    objects: &ObjectFiles,
    manifest: &Manifest,
    unlisted: &BTreeSet<String>,
    wal_removed: &[PathBuf],
    wal_kept: &[Segment],
) -> Result<(), StoreError> {
    let state = log.state();
    let genesis = log.is_empty();
    let mut drafts = Vec::new();

    let mut abandon = Draft::new(Op::Abandon, None);
    abandon.removed = state
        .live
        .keys()
        .filter(|p| !p.starts_with("wal/") && !manifest.contains(p) && !unlisted.contains(*p))
        .cloned()
        .collect();
    if !abandon.removed.is_empty() {
        tracing::warn!(
            files = abandon.removed.len(),
            "audit chain: sealed files never made live are abandoned"
        );
    }
    drafts.push(abandon);

    for table in Table::ALL {
        let mut adopt = Draft::new(Op::Adopt, Some(table));
        let mut restore = Draft::new(Op::State, Some(table));
        for f in manifest.files(table) {
            match (state.live.get(&f.path), state.retired.get(&f.path)) {
                (Some(live), _) => {
                    // Only a file rewritten in place can differ from its record after a crash.
                    let Some(prev) = state.previous.get(&f.path) else {
                        continue;
                    };
                    let bytes = objects.get(&f.path).await?;
                    let disk = sha256_hex(&bytes);
                    if disk != live.sha256 && disk == prev.sha256 {
                        restore.files.push(FileRecord {
                            path: f.path.clone(),
                            sha256: disk,
                            size: prev.size,
                            rows: prev.rows,
                        });
                    }
                }
                (None, Some(_)) if state.relisted_with(&f.path, manifest).is_some() => {
                    tracing::error!(path = %f.path, "the manifest lists a compaction input beside the file that replaced it; not adopted, verify reports it");
                }
                (None, Some(retired)) => adopt.files.push(FileRecord {
                    path: f.path.clone(),
                    sha256: retired.sha256.clone(),
                    size: retired.size,
                    rows: retired.rows,
                }),
                (None, None) if genesis => {
                    let bytes = objects.get(&f.path).await?;
                    adopt.files.push(FileRecord {
                        path: f.path.clone(),
                        sha256: sha256_hex(&bytes),
                        size: bytes.len() as u64,
                        rows: f.rows,
                    });
                }
                (None, None) => {
                    tracing::error!(path = %f.path, "the manifest lists a file the audit chain never sealed; verify reports it");
                }
            }
        }
        if genesis && !adopt.files.is_empty() {
            tracing::warn!(
                table = table.name(),
                files = adopt.files.len(),
                "audit chain: the chain is new but the store already holds files; they are taken in as they \
                 are now, so changes made to them before now cannot be detected (if _audit/chain.jsonl was \
                 removed, restore it from a backup)"
            );
        }
        drafts.extend([adopt, restore]);
    }

    let mut retire = Draft::new(Op::RetireWal, None);
    retire.removed = wal_removed
        .iter()
        .map(|p| chain_name(p))
        .filter(|p| state.live.contains_key(p))
        .collect();
    drafts.push(retire);
    let mut seal = Draft::new(Op::SealWal, None);
    for seg in wal_kept {
        let name = chain_name(&seg.path);
        if state.live.contains_key(&name) || state.retired.contains_key(&name) {
            continue;
        }
        let bytes = read_local(&seg.path).await?;
        seal.files.push(FileRecord {
            path: name,
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            rows: seg.records,
        });
    }
    drafts.push(seal);
    log.append_async(drafts).await
}

async fn read_local(path: &Path) -> Result<Vec<u8>, StoreError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::read(&p))
        .await
        .map_err(|e| StoreError::Audit(format!("read task: {e}")))?
        .map_err(|e| StoreError::Audit(format!("read {}: {e}", path.display())))
}
