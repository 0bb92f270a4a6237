//! Appends whose ids the dedupe window already remembers but whose WAL record is not yet fsynced.
//!
//! The dedupe window remembers an append's ids before its record reaches the disk, so that two copies of one
//! event arriving together are not both stored. A retry that arrives while its first copy is still in
//! flight finds its ids remembered, but must not be acknowledged yet: the first copy may still fail (disk
//! full, an I/O error), and then nothing of what the retry was acknowledged for is stored. So each append
//! that remembers ids holds a ticket until its record is fsynced or has failed (a failed append forgets its
//! ids first), and an append that dropped rows as duplicates waits for every ticket older than its own look
//! at the window, then checks that the ids it dropped are still remembered from then.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::dedupe::DedupeSet;
use crate::wal::Appended;
use crate::StoreError;

/// Tickets of appends still in flight.
pub(crate) struct InFlight {
    open: Mutex<Tickets>,
    /// The oldest ticket still open (or the next one to be issued, if none is).
    oldest: watch::Sender<u64>,
}

#[derive(Default)]
struct Tickets {
    /// Open tickets, each with the dedupe window's insert number before its append remembered its ids.
    open: BTreeMap<u64, u64>,
    next: u64,
}

impl Tickets {
    fn oldest(&self) -> u64 {
        self.open.keys().next().copied().unwrap_or(self.next)
    }
}

impl InFlight {
    pub fn new() -> Self {
        Self {
            open: Mutex::new(Tickets::default()),
            oldest: watch::Sender::new(0),
        }
    }

    /// The ticket the next append will get; take it under the dedupe lock, with the look at the window.
    pub fn horizon(&self) -> u64 {
        self.open.lock().next
    }

    /// A ticket for an append that has just remembered ids from insert number `mark` on; take it under
    /// the dedupe lock.
    pub fn issue(&self, mark: u64) -> u64 {
        let mut t = self.open.lock();
        let ticket = t.next;
        t.next += 1;
        t.open.insert(ticket, mark);
        ticket
    }

    /// The insert number below which every remembered id belongs to an append that has settled (and so
    /// is durable: a failed append forgets its ids before it settles). `next` is the window's next insert
    /// number; take it under the dedupe lock, as tickets are issued in insert order under it.
    pub fn durable_below(&self, next: u64) -> u64 {
        self.open
            .lock()
            .open
            .values()
            .next()
            .copied()
            .unwrap_or(next)
    }

    fn close(&self, ticket: u64) {
        // Under the lock, so two closes cannot publish their views out of order (the oldest would go back).
        let mut t = self.open.lock();
        t.open.remove(&ticket);
        let oldest = t.oldest();
        self.oldest.send_if_modified(|o| {
            let moved = oldest > *o;
            *o = (*o).max(oldest);
            moved
        });
    }

    /// Resolves once every ticket issued before `horizon` is closed.
    pub async fn settled(&self, horizon: u64) {
        let mut rx = self.oldest.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = rx.wait_for(|oldest| *oldest >= horizon).await;
    }
}

/// One append's ticket and the ids it remembered, until its record is durable or has failed. Dropped
/// unsettled because its caller stopped waiting, it still learns the record's outcome (on a task) before
/// closing the ticket: a waiting retry is never told about a write that had not happened, and a write
/// that did happen is not forgotten (which would store its retry twice).
pub(crate) struct Ticket {
    ticket: u64,
    added: Vec<u64>,
    dedupe: Arc<Mutex<DedupeSet>>,
    in_flight: Arc<InFlight>,
    /// The record while its outcome is awaited.
    submitted: Option<Appended>,
    settled: bool,
}

impl Ticket {
    pub fn new(
        ticket: u64,
        added: Vec<u64>,
        dedupe: Arc<Mutex<DedupeSet>>,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Self {
            ticket,
            added,
            dedupe,
            in_flight,
            submitted: None,
            settled: false,
        }
    }

    /// Awaits the submitted record's outcome and settles the ticket with it.
    pub async fn settle_on(&mut self, submitted: Appended) -> Result<u64, StoreError> {
        let result = self.submitted.insert(submitted).outcome().await;
        self.submitted = None;
        self.settle(result.is_ok());
        result
    }

    /// Closes the ticket; a record that was not stored forgets its ids first, so that its retry is stored.
    pub fn settle(&mut self, stored: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if !stored {
            self.dedupe.lock().forget(&self.added);
        }
        self.in_flight.close(self.ticket);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Some(mut submitted) = self.submitted.take() else {
            // The append failed before its record reached the writer thread.
            self.settle(false);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.settle(false);
            return;
        };
        let mut rest = Ticket::new(
            self.ticket,
            std::mem::take(&mut self.added),
            self.dedupe.clone(),
            self.in_flight.clone(),
        );
        self.settled = true;
        runtime.spawn(async move {
            let stored = submitted.outcome().await.is_ok();
            rest.settle(stored);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use arrow::array::RecordBatch;
    use vigil_ingest::{EventBatchBuilder, EventKind, EventRow};

    use crate::{Store, StoreConfig, StoreError, Table};

    fn events(ids: std::ops::Range<usize>) -> Vec<(Table, RecordBatch)> {
        let mut b = EventBatchBuilder::with_capacity(ids.len());
        for i in ids {
            b.push(&EventRow {
                time_us: 1_795_356_000_000_000 + i as i64,
                event_id: format!("e{i}"),
                kind: Some(EventKind::Inference),
                ..Default::default()
            });
        }
        vec![(Table::Events, b.finish())]
    }

    /// A store whose WAL writer waits 300 ms for a group while a reservation is held, and rolls to a new
    /// segment before every group.
    async fn store(dir: &Path) -> std::sync::Arc<Store> {
        Store::open(StoreConfig {
            data_dir: dir.to_path_buf(),
            flush_rows: 1_000_000,
            flush_age: Duration::from_secs(3600),
            group_commit_window: Duration::from_millis(300),
            wal_segment_bytes: 1,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    /// Sends events 100..110 twice: the first copy is held in the WAL writer's group-commit window (a
    /// reservation nobody submits), and the retry arrives meanwhile. Returns both tasks, the retry
    /// checked to be still waiting while the first copy is.
    async fn original_and_retry(
        store: &std::sync::Arc<Store>,
        before_release: impl FnOnce(&tokio::task::JoinHandle<Result<(), StoreError>>),
    ) -> (
        tokio::task::JoinHandle<Result<(), StoreError>>,
        tokio::task::JoinHandle<Result<(), StoreError>>,
    ) {
        store.append(events(0..10)).await.unwrap();
        let hold = store.wal.reserve();
        let s = store.clone();
        let original = tokio::spawn(async move { s.append(events(100..110)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = store.clone();
        let retry = tokio::spawn(async move { s.append(events(100..110)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !retry.is_finished(),
            "the retry was answered while its first copy was not yet durable"
        );
        before_release(&original);
        drop(hold);
        (original, retry)
    }

    #[tokio::test]
    async fn a_retry_is_acknowledged_once_its_first_copy_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let (original, retry) = original_and_retry(&store, |_| {}).await;
        original.await.unwrap().unwrap();
        retry.await.unwrap().unwrap();
        assert_eq!(store.snapshot(Table::Events).row_count(), 20);
    }

    #[tokio::test]
    async fn a_retry_fails_when_its_first_copy_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        // The writer rolls to a new segment before the held group, in a directory that is gone: the
        // group's write fails.
        let (original, retry) = original_and_retry(&store, |_| {
            std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        })
        .await;
        assert!(original.await.unwrap().is_err());
        let err = retry.await.unwrap().unwrap_err();
        assert!(
            matches!(err, StoreError::EarlierCopyFailed { rows: 10 }),
            "{err}"
        );
        assert_eq!(store.snapshot(Table::Events).row_count(), 10);
    }

    /// The first copy's caller stops waiting (a client that hung up): its write still decides the retry.
    #[tokio::test]
    async fn a_retry_of_a_cancelled_append_follows_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let (original, retry) = original_and_retry(&store, |original| original.abort()).await;
        assert!(original.await.unwrap_err().is_cancelled());
        retry.await.unwrap().unwrap();
        assert_eq!(store.snapshot(Table::Events).row_count(), 20);
        // Stored once: a third copy is dropped at once.
        store.append(events(100..110)).await.unwrap();
        assert_eq!(store.snapshot(Table::Events).row_count(), 20);
    }

    fn ids(batch: &RecordBatch) -> Vec<String> {
        use arrow::array::AsArray;
        batch
            .column_by_name("event_id")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect()
    }

    /// What the pipeline drops before detection: only rows a settled append stored. Rows whose first copy
    /// is still waiting for its fsync stay, so `append` can still refuse them if that copy fails.
    #[tokio::test]
    async fn only_durably_stored_rows_are_dropped_before_detection() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        store.append(events(0..10)).await.unwrap();
        let hold = store.wal.reserve();
        let s = store.clone();
        let in_flight = tokio::spawn(async move { s.append(events(100..110)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;

        let offered = |r: std::ops::Range<usize>| events(r).pop().unwrap().1;
        let (kept, dropped) = store
            .without_stored(Table::Events, offered(5..105))
            .unwrap();
        assert_eq!(dropped, 5, "0..10 are stored; 100..110 are not durable yet");
        let kept = ids(&kept);
        assert_eq!(kept.first().map(String::as_str), Some("e10"));
        assert!(kept.contains(&"e100".to_string()) && kept.contains(&"e104".to_string()));

        drop(hold);
        in_flight.await.unwrap().unwrap();
        let (kept, dropped) = store
            .without_stored(Table::Events, offered(95..115))
            .unwrap();
        assert_eq!(dropped, 10, "now 100..110 are durable");
        assert_eq!(ids(&kept).len(), 10);
        let (kept, dropped) = store
            .without_stored(Table::Events, offered(200..210))
            .unwrap();
        assert_eq!((kept.num_rows(), dropped), (10, 0));
        assert_eq!(
            store.snapshot(Table::Events).row_count(),
            20,
            "nothing stored by a look"
        );
    }
}
