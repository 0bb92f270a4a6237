//! `verify`: replays the chain (checking every link), derives which files must exist with which content,
//! hashes what is really there, and reports every difference by file name, and every sealed file the
//! manifest stopped listing. Read-only, so it runs against a
//! stopped store or beside a running server.
//!
//! Beside a running server a change in flight can show for one run: a file written by a flush but not yet
//! recorded (`unexpected`), or a state table recorded but not yet rewritten (`changed`). Run it again; real
//! tampering stays.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use super::chain::{self, ChainState, Expected, StartAdoption};
use super::log::chain_path;
use super::sign::ChainHead;
use crate::object_files::ObjectFiles;
use crate::{StoreConfig, StoreError, Table};

/// One difference between what the chain sealed and what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The file's content is not what was sealed.
    Changed {
        path: String,
        expected_sha256: String,
        actual_sha256: String,
        sealed_seq: u64,
    },
    /// A sealed file that was never removed through the chain is gone.
    Missing { path: String, sealed_seq: u64 },
    /// A data file the chain never sealed.
    Unexpected { path: String },
    /// A sealed file, present and unchanged, that `_manifest.json` no longer lists although no flush or
    /// compaction in progress explains it: queries do not see its rows.
    Unlisted { path: String, sealed_seq: u64 },
    /// A compaction input that `_manifest.json` lists again beside the file that replaced it: queries
    /// count its rows twice.
    Relisted { path: String, replaced_by: String },
    /// The chain itself was edited, cut, reordered or torn at this entry.
    ChainBroken { seq: u64, reason: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Changed { path, expected_sha256, actual_sha256, sealed_seq } => write!(
                f,
                "CHANGED {path}: sha256 is {actual_sha256}, sealed as {expected_sha256} in entry {sealed_seq}"
            ),
            Finding::Missing { path, sealed_seq } => write!(f, "MISSING {path}: sealed in entry {sealed_seq}"),
            Finding::Unexpected { path } => write!(f, "UNEXPECTED {path}: never sealed in the audit chain"),
            Finding::Unlisted { path, sealed_seq } => write!(f, "UNLISTED {path}: sealed in entry {sealed_seq}, but _manifest.json no longer lists it (queries do not see it)"),
            Finding::Relisted { path, replaced_by } => write!(f, "RELISTED {path}: compacted into {replaced_by}, yet _manifest.json lists both (queries count its rows twice)"),
            Finding::ChainBroken { seq, reason } => write!(f, "CHAIN BROKEN at entry {seq}: {reason}"),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Chain breaks first (by entry), then files by path.
    pub findings: Vec<Finding>,
    /// The newest entry of the chain, if any.
    pub head: Option<ChainHead>,
    /// Entries read from the chain.
    pub entries: usize,
    /// Files hashed (Parquet and sealed WAL segments).
    pub files_checked: usize,
    /// Set when the chain began by taking in files already stored. Not a finding (a store older than the
    /// chain starts this way), but a chain that was removed does too, and nothing before that time is
    /// vouched for, so the report says it on every run; a signed head exported earlier tells the two apart.
    pub adopted_at_start: Option<StartAdoption>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    /// One line per finding, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for x in &self.findings {
            writeln!(f, "{x}")?;
        }
        if let Some(a) = &self.adopted_at_start {
            writeln!(
                f,
                "NOTE the chain began at {} by taking in {} file(s) already stored, as they were then: \
                 a store older than its chain, or a chain that was removed; it vouches for them only since then",
                a.time, a.files
            )?;
        }
        let head = match &self.head {
            Some(h) => format!("head entry {} ({})", h.seq, h.hash),
            None => "no entries".to_string(),
        };
        let verdict = if self.is_clean() {
            "clean".to_string()
        } else {
            format!("{} finding(s)", self.findings.len())
        };
        write!(
            f,
            "audit chain: {} entries, {head}; {} files checked; {verdict}",
            self.entries, self.files_checked
        )
    }
}

/// Verifies the store at `config` (Parquet where `object_store_url` says, chain and WAL under `data_dir`).
pub async fn verify(config: &StoreConfig) -> Result<VerifyReport, StoreError> {
    let objects = crate::open::object_files(config)?;
    run(&config.data_dir, &objects).await
}

/// [`verify`] for a store opened with `Store::open_with_object_store`.
pub async fn verify_with_object_store(
    config: &StoreConfig,
    store: Arc<dyn ObjectStore>,
) -> Result<VerifyReport, StoreError> {
    run(
        &config.data_dir,
        &ObjectFiles {
            store,
            local_root: None,
        },
    )
    .await
}

/// Streams an object through SHA-256; `None` if it does not exist.
async fn hash_object(store: &dyn ObjectStore, path: &str) -> Result<Option<String>, StoreError> {
    let got = match store.get(&ObjectPath::from(path)).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut hasher = Sha256::new();
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.try_next().await? {
        hasher.update(&chunk);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

async fn hash_local(path: &Path) -> Result<Option<String>, StoreError> {
    let p = path.to_path_buf();
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<Option<String>> {
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut hasher = Sha256::new();
        std::io::copy(&mut f, &mut hasher)?;
        Ok(Some(hex::encode(hasher.finalize())))
    })
    .await
    .map_err(|e| StoreError::Audit(format!("hash task: {e}")))?;
    res.map_err(|e| StoreError::Audit(format!("read {}: {e}", path.display())))
}

/// `wal/<name>` of every segment file, with its first sequence number.
fn list_wal(data_dir: &Path) -> Result<BTreeMap<u64, String>, StoreError> {
    let dir = data_dir.join("wal");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::Audit(format!("list {}: {e}", dir.display()))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(first) = name
            .strip_suffix(".wal")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.insert(first, format!("wal/{name}"));
        }
    }
    Ok(out)
}

fn compare(findings: &mut Vec<Finding>, path: &str, expected: &Expected, actual: Option<String>) {
    match actual {
        None => findings.push(Finding::Missing {
            path: path.to_string(),
            sealed_seq: expected.seq,
        }),
        Some(a) if a != expected.sha256 => findings.push(Finding::Changed {
            path: path.to_string(),
            expected_sha256: expected.sha256.clone(),
            actual_sha256: a,
            sealed_seq: expected.seq,
        }),
        Some(_) => {}
    }
}

async fn run(data_dir: &Path, objects: &ObjectFiles) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    // Files first, then the chain: a file sealed in between is then known to the chain.
    let mut stored: BTreeMap<String, Option<String>> = BTreeMap::new();
    for table in Table::ALL {
        for path in objects.list(table.name()).await? {
            let hash = hash_object(objects.store.as_ref(), &path).await?;
            stored.insert(path, hash);
        }
    }
    let wal = list_wal(data_dir)?;

    let chain_file = chain_path(data_dir);
    let bytes = match std::fs::read(&chain_file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(StoreError::Audit(format!(
                "read {}: {e}",
                chain_file.display()
            )))
        }
    };
    let parsed = chain::parse(&bytes);
    report.entries = parsed.entries.len();
    report.head = parsed.entries.last().map(ChainHead::from);
    report.adopted_at_start = chain::adopted_at_start(&parsed.entries);
    report
        .findings
        .extend(parsed.breaks.iter().map(|b| Finding::ChainBroken {
            seq: b.seq,
            reason: b.reason.clone(),
        }));
    if parsed.torn_tail(bytes.len()) {
        report.findings.push(Finding::ChainBroken {
            seq: parsed.entries.last().map_or(1, |e| e.seq + 1),
            reason: "the last line is incomplete (a crash during an append; the next open of the store cuts it)"
                .into(),
        });
    }
    let state = ChainState::replay(&parsed.entries);
    // After the chain, the WAL, then the manifest: a flush seals its files after their records are in the
    // WAL and deletes those records only after it swapped the manifest, so a flush in flight shows as
    // sealed, not yet listed, with its records still seen, which `may_be_unfinished` allows.
    let wal_dir = data_dir.join("wal");
    let wal_records = tokio::task::spawn_blocking(move || crate::wal::seq_range(&wal_dir))
        .await
        .map_err(|e| StoreError::Audit(format!("WAL scan task: {e}")))??;
    let manifest = crate::manifest::load(objects).await?;

    let mut files = Vec::new();
    for (path, actual) in &stored {
        let Some(actual) = actual else { continue }; // deleted since listed
        report.files_checked += 1;
        match state.live.get(path).or_else(|| state.retired.get(path)) {
            // A retired file may wait for its delayed delete, but only unchanged.
            Some(expected) => compare(&mut files, path, expected, Some(actual.clone())),
            None => files.push(Finding::Unexpected { path: path.clone() }),
        }
    }
    for table in crate::Table::ALL {
        for f in manifest.files(table) {
            if state.live.contains_key(&f.path) {
                continue;
            }
            if let Some(replaced_by) = state.relisted_with(&f.path, &manifest) {
                files.push(Finding::Relisted {
                    path: f.path.clone(),
                    replaced_by,
                });
            }
        }
    }
    let wal_paths: BTreeSet<&str> = wal.values().map(String::as_str).collect();
    for (path, expected) in &state.live {
        if path.starts_with("wal/") {
            if !wal_paths.contains(path.as_str()) {
                compare(&mut files, path, expected, None);
            }
        } else if !stored.get(path).is_some_and(Option::is_some) {
            // Sealed after the listing, or really gone: look again.
            let actual = hash_object(objects.store.as_ref(), path).await?;
            report.files_checked += usize::from(actual.is_some());
            compare(&mut files, path, expected, actual);
        } else if !manifest.contains(path)
            && !expected.may_be_unfinished(&manifest, state.wal_evidence(&manifest, wal_records))
        {
            files.push(Finding::Unlisted {
                path: path.clone(),
                sealed_seq: expected.seq,
            });
        }
    }
    let active = wal.keys().next_back().copied();
    for (first, path) in &wal {
        match state.live.get(path).or_else(|| state.retired.get(path)) {
            Some(expected) => {
                let actual = hash_local(&data_dir.join(path)).await?;
                report.files_checked += usize::from(actual.is_some());
                if actual.is_some() || state.live.contains_key(path) {
                    compare(&mut files, path, expected, actual);
                }
            }
            // The segment being written is sealed only when it is closed.
            None if Some(*first) == active => {}
            None => files.push(Finding::Unexpected { path: path.clone() }),
        }
    }
    files.sort_by(|a, b| finding_path(a).cmp(finding_path(b)));
    report.findings.extend(files);
    Ok(report)
}

fn finding_path(f: &Finding) -> &str {
    match f {
        Finding::Changed { path, .. }
        | Finding::Missing { path, .. }
        | Finding::Unexpected { path }
        | Finding::Unlisted { path, .. }
        | Finding::Relisted { path, .. } => path,
        Finding::ChainBroken { .. } => "",
    }
}
