//! The durable outbox (redb, one file): open findings, queued deliveries with their bodies, destination
//! state and responses taken. Every change is one write transaction, committed with fsync before the
//! caller moves on, so a crash loses nothing that was acknowledged and never mints a second webhook id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::finding::Activity;
use crate::grouping::GroupState;

const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const DESTINATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("destinations");
const RESPONSES: TableDefinition<u64, &[u8]> = TableDefinition::new("responses");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Alert ids already folded into findings, with when (ms): what makes `Responder::reconcile` idempotent.
const SUBMITTED: TableDefinition<&str, i64> = TableDefinition::new("submitted");
const NEXT_SEQ: &str = "next_seq";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Boxed: `redb::Error` is nearly 200 bytes, and every outbox call returns this error type.
    #[error("outbox {path}: {source}")]
    Redb {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("outbox {path}: corrupt record: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Lifecycle of one delivery (the `status` column of `alert_deliveries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Retrying,
    Delivered,
    DeadLetter,
    /// The destination answered 410 Gone (or was disabled before this was sent).
    Disabled,
    /// An Update never sent because a newer Update of the same finding to the same destination was queued
    /// before it could be: the newer one carries the finding's whole state, so a destination that is down
    /// holds one Update per finding, not one per revision.
    Superseded,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeadLetter => "dead_letter",
            DeliveryStatus::Disabled => "disabled",
            DeliveryStatus::Superseded => "superseded",
        }
    }
    /// Still to be attempted by the delivery loop.
    pub fn is_active(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Retrying)
    }
}

/// One notification to one destination (or one playbook action). Its `webhook_id` is minted once, here,
/// and reused by every retry and replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub seq: u64,
    pub webhook_id: String,
    pub finding_id: String,
    /// The alert this notification describes: the finding's latest detection at its highest severity at
    /// this revision (its title, entity and evidence are the body's). A finding folds many alerts; the
    /// others of the revision are listed in the body's `alert_ids`. For a playbook action, the alert the
    /// response answers (`ResponseRecord::alert_id`), so both tables join to the same `alerts` row.
    /// `None` in records from older outboxes.
    #[serde(default)]
    pub alert_id: Option<String>,
    pub fingerprint: String,
    pub destination: String,
    /// Set for playbook actions.
    pub playbook: Option<String>,
    pub revision: u32,
    pub activity: Activity,
    pub attempts: u32,
    /// Attempts since the last (re)queue; the retry schedule counts these.
    pub round_attempts: u32,
    pub status: DeliveryStatus,
    pub last_error: Option<String>,
    pub last_status_code: Option<u16>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub next_attempt_at_ms: Option<i64>,
}

/// A destination turned off by a 410 answer; persisted so a restart does not resume calling it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationState {
    pub disabled: bool,
    pub reason: Option<String>,
    pub since_ms: Option<i64>,
}

/// A playbook action that was triggered (the response taken, and when).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    pub seq: u64,
    pub playbook: String,
    pub action: String,
    pub finding_id: String,
    /// The alert the response answers: the earliest detection of the submission that fired the playbook
    /// which met its conditions (see `Responder::submit`); the `alerts` row the response is shown on.
    /// Empty in records from older outboxes.
    #[serde(default)]
    pub alert_id: String,
    pub fingerprint: String,
    pub detector: String,
    pub severity: vigil_detect::alert::Severity,
    pub entity_type: String,
    pub entity_id: String,
    pub triggered_at_ms: i64,
    /// The delivery carrying the action webhook (its status says whether the action was accepted).
    pub delivery_seq: u64,
    /// When the action webhook accepted the action. Kept here because delivered records are pruned from
    /// the delivery history, and time to contain must outlive them.
    #[serde(default)]
    pub responded_at_ms: Option<i64>,
}

/// Everything in the outbox, read once at open.
#[derive(Debug, Default)]
pub struct Loaded {
    pub groups: HashMap<String, GroupState>,
    pub deliveries: BTreeMap<u64, DeliveryRecord>,
    pub destinations: HashMap<String, DestinationState>,
    pub responses: BTreeMap<u64, ResponseRecord>,
    pub next_seq: u64,
}

pub struct Outbox {
    db: Database,
    path: PathBuf,
    /// Tests only: every write fails, as on a full disk.
    refuse_writes: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish()
    }
}

/// Writes inside one transaction.
pub struct Batch<'a> {
    txn: &'a WriteTransaction,
    path: &'a Path,
}

impl Outbox {
    fn redb(&self, e: impl Into<redb::Error>) -> OutboxError {
        OutboxError::Redb {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// Makes every later write fail (or succeed again), as a full disk would: for tests of what a failed
    /// outbox write does to deliveries.
    #[doc(hidden)]
    pub fn refuse_writes(&self, on: bool) {
        self.refuse_writes
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens (creating if needed) the outbox and loads its state.
    pub fn open(path: &Path) -> Result<(Outbox, Loaded), OutboxError> {
        let err = |e: redb::Error| OutboxError::Redb {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(redb::Error::Io(e)))?;
        }
        let db = Database::create(path).map_err(|e| err(e.into()))?;
        let outbox = Outbox {
            db,
            path: path.to_path_buf(),
            refuse_writes: Default::default(),
        };
        // Create every table so readers never meet a missing one.
        outbox.write(|_| Ok(()))?;
        let loaded = outbox.load()?;
        Ok((outbox, loaded))
    }

    fn load(&self) -> Result<Loaded, OutboxError> {
        let txn = self.db.begin_read().map_err(|e| self.redb(e))?;
        let mut out = Loaded::default();
        let t = txn.open_table(GROUPS).map_err(|e| self.redb(e))?;
        for row in t.iter().map_err(|e| self.redb(e))? {
            let (k, v) = row.map_err(|e| self.redb(e))?;
            out.groups
                .insert(k.value().to_string(), decode(&self.path, v.value())?);
        }
        let t = txn.open_table(DELIVERIES).map_err(|e| self.redb(e))?;
        for row in t.iter().map_err(|e| self.redb(e))? {
            let (k, v) = row.map_err(|e| self.redb(e))?;
            out.deliveries
                .insert(k.value(), decode(&self.path, v.value())?);
        }
        let t = txn.open_table(DESTINATIONS).map_err(|e| self.redb(e))?;
        for row in t.iter().map_err(|e| self.redb(e))? {
            let (k, v) = row.map_err(|e| self.redb(e))?;
            out.destinations
                .insert(k.value().to_string(), decode(&self.path, v.value())?);
        }
        let t = txn.open_table(RESPONSES).map_err(|e| self.redb(e))?;
        for row in t.iter().map_err(|e| self.redb(e))? {
            let (k, v) = row.map_err(|e| self.redb(e))?;
            out.responses
                .insert(k.value(), decode(&self.path, v.value())?);
        }
        let t = txn.open_table(META).map_err(|e| self.redb(e))?;
        out.next_seq = t
            .get(NEXT_SEQ)
            .map_err(|e| self.redb(e))?
            .map(|v| v.value())
            .unwrap_or(1);
        Ok(out)
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) before returning.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut Batch<'_>) -> Result<R, OutboxError>,
    ) -> Result<R, OutboxError> {
        if self
            .refuse_writes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(self.redb(redb::Error::Io(std::io::Error::other(
                "writes refused (test hook)",
            ))));
        }
        let txn = self.db.begin_write().map_err(|e| self.redb(e))?;
        let r = {
            // Opening the tables creates them on first use.
            for def in [DELIVERIES, BODIES, RESPONSES] {
                txn.open_table(def).map_err(|e| self.redb(e))?;
            }
            for def in [GROUPS, DESTINATIONS] {
                txn.open_table(def).map_err(|e| self.redb(e))?;
            }
            txn.open_table(META).map_err(|e| self.redb(e))?;
            txn.open_table(SUBMITTED).map_err(|e| self.redb(e))?;
            let mut batch = Batch {
                txn: &txn,
                path: &self.path,
            };
            f(&mut batch)?
        };
        txn.commit().map_err(|e| self.redb(e))?;
        Ok(r)
    }

    /// Which of `ids` were never submitted (a read transaction: sees every committed write).
    pub fn unsubmitted<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashSet<&'a str>, OutboxError> {
        let txn = self.db.begin_read().map_err(|e| self.redb(e))?;
        let t = txn.open_table(SUBMITTED).map_err(|e| self.redb(e))?;
        let mut out = HashSet::new();
        for id in ids {
            if t.get(id).map_err(|e| self.redb(e))?.is_none() {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// The rendered body of a queued delivery.
    pub fn body(&self, seq: u64) -> Result<Option<Vec<u8>>, OutboxError> {
        let txn = self.db.begin_read().map_err(|e| self.redb(e))?;
        let t = txn.open_table(BODIES).map_err(|e| self.redb(e))?;
        Ok(t.get(seq)
            .map_err(|e| self.redb(e))?
            .map(|v| v.value().to_vec()))
    }
}

fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, OutboxError> {
    serde_json::from_slice(bytes).map_err(|source| OutboxError::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl Batch<'_> {
    fn redb(&self, e: impl Into<redb::Error>) -> OutboxError {
        OutboxError::Redb {
            path: self.path.to_path_buf(),
            source: Box::new(e.into()),
        }
    }

    fn encode<T: Serialize>(&self, v: &T) -> Result<Vec<u8>, OutboxError> {
        serde_json::to_vec(v).map_err(|source| OutboxError::Json {
            path: self.path.to_path_buf(),
            source,
        })
    }

    pub fn put_group(&mut self, g: &GroupState) -> Result<(), OutboxError> {
        let bytes = self.encode(g)?;
        let mut t = self.txn.open_table(GROUPS).map_err(|e| self.redb(e))?;
        t.insert(g.fingerprint.as_str(), bytes.as_slice())
            .map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn remove_group(&mut self, fingerprint: &str) -> Result<(), OutboxError> {
        let mut t = self.txn.open_table(GROUPS).map_err(|e| self.redb(e))?;
        t.remove(fingerprint).map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn put_delivery(&mut self, d: &DeliveryRecord) -> Result<(), OutboxError> {
        let bytes = self.encode(d)?;
        let mut t = self.txn.open_table(DELIVERIES).map_err(|e| self.redb(e))?;
        t.insert(d.seq, bytes.as_slice())
            .map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn remove_delivery(&mut self, seq: u64) -> Result<(), OutboxError> {
        let mut t = self.txn.open_table(DELIVERIES).map_err(|e| self.redb(e))?;
        t.remove(seq).map_err(|e| self.redb(e))?;
        self.remove_body(seq)
    }

    pub fn put_body(&mut self, seq: u64, body: &[u8]) -> Result<(), OutboxError> {
        let mut t = self.txn.open_table(BODIES).map_err(|e| self.redb(e))?;
        t.insert(seq, body).map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn remove_body(&mut self, seq: u64) -> Result<(), OutboxError> {
        let mut t = self.txn.open_table(BODIES).map_err(|e| self.redb(e))?;
        t.remove(seq).map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn put_destination(&mut self, name: &str, s: &DestinationState) -> Result<(), OutboxError> {
        let bytes = self.encode(s)?;
        let mut t = self
            .txn
            .open_table(DESTINATIONS)
            .map_err(|e| self.redb(e))?;
        t.insert(name, bytes.as_slice()).map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn put_response(&mut self, r: &ResponseRecord) -> Result<(), OutboxError> {
        let bytes = self.encode(r)?;
        let mut t = self.txn.open_table(RESPONSES).map_err(|e| self.redb(e))?;
        t.insert(r.seq, bytes.as_slice())
            .map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn mark_submitted(&mut self, alert_id: &str, at_ms: i64) -> Result<(), OutboxError> {
        let mut t = self.txn.open_table(SUBMITTED).map_err(|e| self.redb(e))?;
        t.insert(alert_id, at_ms).map_err(|e| self.redb(e))?;
        Ok(())
    }

    /// Forgets submitted alert ids older than `before_ms` (older alerts are beyond reconciliation).
    pub fn prune_submitted(&mut self, before_ms: i64) -> Result<(), OutboxError> {
        let mut t = self.txn.open_table(SUBMITTED).map_err(|e| self.redb(e))?;
        t.retain(|_, at| at >= before_ms)
            .map_err(|e| self.redb(e))?;
        Ok(())
    }

    pub fn set_next_seq(&mut self, next: u64) -> Result<(), OutboxError> {
        let mut t = self.txn.open_table(META).map_err(|e| self.redb(e))?;
        t.insert(NEXT_SEQ, next).map_err(|e| self.redb(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grouping::tests::alert;
    use vigil_detect::alert::Severity;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/outbox.redb");
        let g = GroupState::new(&alert("fp", Severity::High, 0), 5);
        let d = DeliveryRecord {
            seq: 7,
            webhook_id: "msg_1".into(),
            finding_id: g.finding_id.clone(),
            alert_id: Some(g.alert.alert_id.clone()),
            fingerprint: "fp".into(),
            destination: "soc".into(),
            playbook: None,
            revision: 1,
            activity: Activity::Create,
            attempts: 0,
            round_attempts: 0,
            status: DeliveryStatus::Pending,
            last_error: None,
            last_status_code: None,
            created_at_ms: 5,
            delivered_at_ms: None,
            next_attempt_at_ms: Some(5),
        };
        {
            let (outbox, loaded) = Outbox::open(&path).unwrap();
            assert_eq!(loaded.next_seq, 1);
            outbox
                .write(|b| {
                    b.put_group(&g)?;
                    b.put_delivery(&d)?;
                    b.put_body(7, b"{\"x\":1}")?;
                    b.set_next_seq(8)
                })
                .unwrap();
        }
        let (outbox, loaded) = Outbox::open(&path).unwrap();
        assert_eq!(loaded.groups["fp"], g);
        assert_eq!(loaded.deliveries[&7], d);
        assert_eq!(loaded.next_seq, 8);
        assert_eq!(outbox.body(7).unwrap().unwrap(), b"{\"x\":1}");
        outbox.write(|b| b.remove_delivery(7)).unwrap();
        assert!(outbox.body(7).unwrap().is_none());
    }
}
