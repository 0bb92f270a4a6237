//! The append-only writer of `_audit/chain.jsonl`. Entries are appended and fsynced before the change they
//! record is made live (manifest swap, file deletion), so the chain is never behind the data; `open`
//! reconciles the other direction (recorded but never made live) with `abandon`/`adopt` entries.
//!
//! The file is always local (`<data_dir>/_audit/`), also when Parquet lives in S3: appending to an object
//! would mean rewriting it, and the WAL next to it is local anyway.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::chain::{self, ChainState, Entry, FileRecord, Op, GENESIS_PREV_HASH};
use crate::metrics::metrics;
use crate::{StoreError, Table};

pub(crate) const AUDIT_DIR: &str = "_audit";
pub(crate) const CHAIN_FILE: &str = "chain.jsonl";

/// `<data_dir>/_audit/chain.jsonl`.
pub fn chain_path(data_dir: &Path) -> PathBuf {
    data_dir.join(AUDIT_DIR).join(CHAIN_FILE)
}

/// An entry before it is numbered and linked.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub op: Op,
    pub table: Option<Table>,
    pub files: Vec<FileRecord>,
    pub removed: Vec<String>,
    /// See [`super::Entry::wal_seq`].
    pub wal_seq: Option<u64>,
}

impl Draft {
    pub fn new(op: Op, table: Option<Table>) -> Draft {
        Draft {
            op,
            table,
            files: Vec::new(),
            removed: Vec::new(),
            wal_seq: None,
        }
    }
}

struct Inner {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    prev_hash: String,
    state: ChainState,
    /// Set when a failed append could not be cut back off the file: appending more would bury a torn line.
    failed: Option<String>,
    /// Records of what a failed change left behind (`abandon`, `adopt`) whose own append failed: written
    /// ahead of the next append, so no later change made live gets ahead of them in the chain.
    owed: Vec<Draft>,
    /// Tests: fail the next write as a full disk would.
    #[cfg(test)]
    fail_next_write: bool,
}

impl Inner {
    /// What the chain says, owed records included: they go ahead of the next append, so what the store
    /// decides now (a state file's previous content, the hashes retention takes files back with, the
    /// files compaction may merge) must already see them.
    fn view(&self) -> std::borrow::Cow<'_, ChainState> {
        if self.owed.is_empty() {
            return std::borrow::Cow::Borrowed(&self.state);
        }
        let mut state = self.state.clone();
        for d in &self.owed {
            state.apply(&Entry {
                seq: self.next_seq,
                time: String::new(),
                op: d.op,
                table: d.table.map(|t| t.name().to_string()),
                files: d.files.clone(),
                removed: d.removed.clone(),
                wal_seq: d.wal_seq,
                prev_hash: String::new(),
                hash: String::new(),
            });
        }
        std::borrow::Cow::Owned(state)
    }
}

pub(crate) struct AuditLog {
    inner: Mutex<Inner>,
}

fn audit_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Audit(format!("{what} {}: {e}", path.display()))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl AuditLog {
    /// Opens (or creates) the chain, cutting off a line torn by a crash during an append. A chain that was
    /// tampered with is not refused: the store keeps running and appending, and `verify` reports the break.
    pub fn open(data_dir: &Path) -> Result<AuditLog, StoreError> {
        let dir = data_dir.join(AUDIT_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| audit_err(&dir, "create", e))?;
        let path = dir.join(CHAIN_FILE);
        let existed = path.exists();
        let bytes = if existed {
            std::fs::read(&path).map_err(|e| audit_err(&path, "read", e))?
        } else {
            Vec::new()
        };
        let parsed = chain::parse(&bytes);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| audit_err(&path, "open", e))?;
        if parsed.torn_tail(bytes.len()) {
            tracing::warn!(chain = %path.display(), bytes = bytes.len() - parsed.complete_len, "cutting a torn audit chain line");
            file.set_len(parsed.complete_len as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| audit_err(&path, "truncate torn line of", e))?;
        }
        if !existed {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| audit_err(&dir, "fsync", e))?;
        }
        for b in &parsed.breaks {
            tracing::error!(chain = %path.display(), seq = b.seq, reason = %b.reason, "audit chain is broken");
        }
        let (next_seq, prev_hash) = match parsed.entries.last() {
            Some(e) => (e.seq + 1, e.hash.clone()),
            None => (1, GENESIS_PREV_HASH.to_string()),
        };
        let state = ChainState::replay(&parsed.entries);
        metrics().audit_seq.set(next_seq as i64 - 1);
        Ok(AuditLog {
            inner: Mutex::new(Inner {
                path,
                file,
                len: parsed.complete_len as u64,
                next_seq,
                prev_hash,
                state,
                failed: None,
                owed: Vec::new(),
                #[cfg(test)]
                fail_next_write: false,
            }),
        })
    }

    /// Numbers, links, appends and fsyncs the drafts (one write, one fsync), then applies them to the
    /// in-memory state. On failure nothing is applied and the file is cut back to where it was. Drafts
    /// owed by an earlier [`AuditLog::append_or_owe_async`] go first.
    pub fn append(&self, drafts: Vec<Draft>) -> Result<(), StoreError> {
        self.append_inner(drafts, false)
    }

    fn append_inner(&self, drafts: Vec<Draft>, owe: bool) -> Result<(), StoreError> {
        let mut drafts: Vec<Draft> = drafts
            .into_iter()
            .filter(|d| !d.files.is_empty() || !d.removed.is_empty())
            .collect();
        if drafts.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        let owed_before = inner.owed.len();
        if !inner.owed.is_empty() {
            let mut all = std::mem::take(&mut inner.owed);
            all.append(&mut drafts);
            drafts = all;
        }
        let result = Self::write_locked(&mut inner, drafts.clone());
        match &result {
            Ok(()) => {}
            Err(_) if owe => inner.owed = drafts,
            Err(_) => {
                drafts.truncate(owed_before);
                inner.owed = drafts;
            }
        }
        result
    }

    fn write_locked(inner: &mut Inner, drafts: Vec<Draft>) -> Result<(), StoreError> {
        if let Some(msg) = &inner.failed {
            return Err(StoreError::Audit(msg.clone()));
        }
        let time = now_rfc3339();
        let mut entries = Vec::with_capacity(drafts.len());
        let mut buf = Vec::new();
        let (mut seq, mut prev) = (inner.next_seq, inner.prev_hash.clone());
        for d in drafts {
            let mut e = Entry {
                seq,
                time: time.clone(),
                op: d.op,
                table: d.table.map(|t| t.name().to_string()),
                files: d.files,
                removed: d.removed,
                wal_seq: d.wal_seq,
                prev_hash: prev,
                hash: String::new(),
            };
            e.hash = e.compute_hash();
            serde_json::to_writer(&mut buf, &e)
                .map_err(|err| audit_err(&inner.path, "serialize entry for", err))?;
            buf.push(b'\n');
            seq += 1;
            prev = e.hash.clone();
            entries.push(e);
        }
        #[cfg(test)]
        if std::mem::take(&mut inner.fail_next_write) {
            return Err(audit_err(&inner.path, "append to", "no space left (test)"));
        }
        let written = inner
            .file
            .write_all(&buf)
            .and_then(|_| inner.file.sync_data());
        if let Err(e) = written {
            let len = inner.len;
            let err = audit_err(&inner.path, "append to", &e);
            if let Err(cut) = inner.file.set_len(len).and_then(|_| inner.file.sync_data()) {
                inner.failed = Some(format!(
                    "{err}; cutting it back failed too ({cut}): no more appends"
                ));
            }
            return Err(err);
        }
        inner.len += buf.len() as u64;
        inner.next_seq = seq;
        inner.prev_hash = prev;
        for e in &entries {
            inner.state.apply(e);
        }
        let m = metrics();
        m.audit_entries.inc_by(entries.len() as u64);
        m.audit_seq.set(seq as i64 - 1);
        Ok(())
    }

    /// [`AuditLog::append_async`] for the record of what a failed change left behind: if it cannot be
    /// written now, it is owed, and written ahead of the next append. Without that, a transient failure (a
    /// full disk) lost the `abandon` of a flush whose manifest save failed; once a later flush had covered
    /// its WAL records, `open` and `verify` took the leftover for a file taken out of the manifest.
    pub async fn append_or_owe_async(
        self: &std::sync::Arc<Self>,
        drafts: Vec<Draft>,
    ) -> Result<(), StoreError> {
        self.append_blocking(drafts, true).await
    }

    /// [`AuditLog::append`] on a blocking thread, for async callers.
    pub async fn append_async(
        self: &std::sync::Arc<Self>,
        drafts: Vec<Draft>,
    ) -> Result<(), StoreError> {
        self.append_blocking(drafts, false).await
    }

    async fn append_blocking(
        self: &std::sync::Arc<Self>,
        drafts: Vec<Draft>,
        owe: bool,
    ) -> Result<(), StoreError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append_inner(drafts, owe))
            .await
            .map_err(|e| StoreError::Audit(format!("audit append task: {e}")))?
    }

    /// A copy of what the chain says exists now.
    pub fn state(&self) -> ChainState {
        self.inner.lock().view().into_owned()
    }

    /// Whether a path is sealed and not removed.
    pub fn is_live(&self, path: &str) -> bool {
        self.sealed_sha256(path).is_some()
    }

    /// The SHA-256 a live file was sealed with, if the chain has it live. Asked once per file by
    /// retention and compaction, so owed records are looked through (the latest first) rather than
    /// applied to a copy of the whole state.
    pub fn sealed_sha256(&self, path: &str) -> Option<String> {
        let inner = self.inner.lock();
        for d in inner.owed.iter().rev() {
            if let Some(f) = d.files.iter().find(|f| f.path == path) {
                return Some(f.sha256.clone());
            }
            if d.removed.iter().any(|r| r == path) {
                return None;
            }
        }
        inner.state.live.get(path).map(|x| x.sha256.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().next_seq == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(op: Op, path: &str, removed: &[&str]) -> Draft {
        Draft {
            op,
            table: Some(Table::Events),
            files: if path.is_empty() {
                vec![]
            } else {
                vec![FileRecord {
                    path: path.into(),
                    sha256: "ab".into(),
                    size: 2,
                    rows: 1,
                }]
            },
            removed: removed.iter().map(|s| s.to_string()).collect(),
            wal_seq: None,
        }
    }

    #[test]
    fn appends_link_across_reopen_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        assert!(log.is_empty());
        log.append(vec![draft(Op::Seal, "a", &[]), draft(Op::Seal, "b", &[])])
            .unwrap();
        log.append(vec![draft(Op::Seal, "", &[])]).unwrap(); // nothing recorded: skipped
        drop(log);
        let path = chain_path(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"time\"").unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(vec![draft(Op::Retain, "", &["a"])]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let p = chain::parse(&bytes);
        assert!(
            p.breaks.is_empty() && !p.torn_tail(bytes.len()),
            "{:?}",
            p.breaks
        );
        assert_eq!(
            p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(!log.is_live("a") && log.is_live("b"));
        assert_eq!(log.state().retired["a"].seq, 1);
    }

    /// A transient failure of the `abandon` append no longer loses it: it is written ahead of the next
    /// append, in order, and applied then.
    #[test]
    fn an_owed_record_is_written_ahead_of_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(vec![draft(Op::Seal, "a", &[])]).unwrap();
        log.inner.lock().fail_next_write = true;
        assert!(log
            .append_inner(vec![draft(Op::Abandon, "", &["a"])], true)
            .is_err());
        assert!(!log.is_live("a"), "what the store decides sees it already");
        assert!(log.state().retired.contains_key("a"));
        // A plain append that fails keeps what was owed, and owes nothing of its own.
        log.inner.lock().fail_next_write = true;
        assert!(log.append(vec![draft(Op::Seal, "c", &[])]).is_err());
        log.append(vec![draft(Op::Seal, "b", &[])]).unwrap();
        assert!(!log.is_live("a") && log.is_live("b") && !log.is_live("c"));
        let bytes = std::fs::read(chain_path(dir.path())).unwrap();
        let p = chain::parse(&bytes);
        assert!(p.breaks.is_empty(), "{:?}", p.breaks);
        let ops: Vec<(u64, Op)> = p.entries.iter().map(|e| (e.seq, e.op)).collect();
        assert_eq!(ops, [(1, Op::Seal), (2, Op::Abandon), (3, Op::Seal)]);
        log.append(vec![draft(Op::Seal, "d", &[])]).unwrap();
        let p = chain::parse(&std::fs::read(chain_path(dir.path())).unwrap());
        assert_eq!(p.entries.len(), 4, "owed once, not twice");
    }
}
