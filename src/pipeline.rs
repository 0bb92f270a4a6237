//! The sink the receivers write into: detection, then durable storage, then alert delivery. Events the
//! store already holds are dropped first, so a repeat is neither stored nor detected twice.
//!
//! Detection runs before anything is written so that content is masked before it reaches the disk
//! (`content_capture`), and alerts are written in the same WAL record as the events that raised them, so
//! an acknowledged request never has half its consequences on disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use tokio::sync::{broadcast, Semaphore};
use tracing::Instrument;
use vigil_detect::{alerts_to_batch, Alert, ConversationScans, Detection, DetectionStage};
use vigil_ingest::{Admission, EventSink, SinkError};
use vigil_respond::Responder;
use vigil_store::{Store, Table};

use crate::config::PipelineConfig;
use crate::metrics::{self, Stage};

pub struct Pipeline {
    /// Itself, for the task each batch runs in (see `accept_admitted`).
    me: std::sync::Weak<Pipeline>,
    detection: Arc<DetectionStage>,
    store: Arc<Store>,
    responder: Arc<Responder>,
    admission: Arc<Semaphore>,
    config: PipelineConfig,
    /// Every alert, as it becomes durable (the demo prints them; tests watch them).
    alerts: broadcast::Sender<Alert>,
    /// Set when durable alerts could not be queued for delivery; the window task then hands the stored
    /// alerts the outbox never saw to delivery, as a start does after a crash.
    undelivered: AtomicBool,
}

impl Pipeline {
    pub fn new(
        detection: Arc<DetectionStage>,
        store: Arc<Store>,
        responder: Arc<Responder>,
        config: PipelineConfig,
    ) -> Arc<Self> {
        let (alerts, _) = broadcast::channel(1024);
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            admission: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            detection,
            store,
            responder,
            config,
            alerts,
            undelivered: AtomicBool::new(false),
        })
    }

    /// Whether alerts failed to reach the outbox since the last call (which clears it).
    pub fn take_undelivered(&self) -> bool {
        self.undelivered.swap(false, Ordering::SeqCst)
    }

    /// Sets the mark again when handing the stored alerts to delivery failed too.
    pub fn mark_undelivered(&self) {
        self.undelivered.store(true, Ordering::SeqCst);
    }

    pub fn subscribe_alerts(&self) -> broadcast::Receiver<Alert> {
        self.alerts.subscribe()
    }

    /// Stores alerts that were not raised by a batch (window-based detectors run from `tick`) and hands
    /// them to delivery.
    pub async fn record_alerts(&self, alerts: Vec<Alert>) -> Result<(), vigil_store::StoreError> {
        if alerts.is_empty() {
            return Ok(());
        }
        self.store
            .append(vec![(Table::Alerts, alerts_to_batch(&alerts))])
            .await?;
        self.deliver(alerts).await;
        Ok(())
    }

    /// Hands durable alerts to the delivery outbox (an fsynced embedded-database write, so off the async
    /// threads) and to in-process subscribers.
    async fn deliver(&self, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let responder = self.responder.clone();
        let submitted = tokio::task::spawn_blocking(move || {
            // For the end-to-end test of the retry (`FAILPOINTS=outbox_submit=1*return`). `fail_point!`
            // returns from the function it is in, so it needs a closure of its own.
            #[allow(clippy::redundant_closure_call)]
            let forced = (|| {
                fail::fail_point!("outbox_submit", |_| true);
                false
            })();
            let result = if forced {
                Err("failpoint outbox_submit".to_string())
            } else {
                responder.submit(&alerts).map_err(|e| e.to_string())
            };
            (result, alerts)
        })
        .await;
        let alerts = match submitted {
            Ok((Ok(_), alerts)) => alerts,
            Ok((Err(e), alerts)) => {
                // The alerts are durable in the `alerts` table; the window task hands them to delivery.
                self.mark_undelivered();
                tracing::error!(error = %e, count = alerts.len(), "could not queue alerts for delivery; retrying from the alerts table");
                alerts
            }
            Err(e) => {
                self.mark_undelivered();
                tracing::error!(error = %e, "alert delivery task failed; retrying from the alerts table");
                return;
            }
        };
        for a in alerts {
            let _ = self.alerts.send(a);
        }
    }
}

/// Batches up to this many rows are detected on the async worker that carries the request (about 1 ms of
/// CPU for a 512-event export), larger ones on the blocking pool. A second hand-off per request to the
/// blocking pool, which grew to dozens of threads under load, cost peak RSS (likely the allocator pages each
/// pool thread keeps; decoding there too is not the cost, as normalising inline changed nothing). Detected
/// inline, full-rate `vigil bench ingest` runs peaked at 722-767 MiB against 814-855 MiB (12 s,
/// three alternated runs each) and 847 / 852 MiB against 981 / 919 MiB (45 s), at the same rate and ack
/// latency.
const DETECT_INLINE_ROWS: usize = 2048;

/// Detects one batch, a panic becoming an internal error of this request: a bug in one detector must not
/// drop the client's connection without an answer, nor unwind a Kafka consumer's task.
fn detect_contained(
    detection: &DetectionStage,
    span: &tracing::Span,
    batch: &RecordBatch,
) -> Result<Detection, SinkError> {
    let mut scans = ConversationScans::default();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        span.in_scope(|| {
            // For the end-to-end test of this containment (`FAILPOINTS=detection=panic`).
            fail::fail_point!("detection");
            detection.process_recording(batch, &mut scans)
        })
    }))
    .map(|mut detected| {
        detected.scans = std::mem::take(&mut scans);
        detected
    })
    .map_err(|_| {
        tracing::error!(
            events = batch.num_rows(),
            "detection panicked; the request is refused"
        );
        // The rows before the panic may have marked assets as reported, and conversations as scanned,
        // whose alerts the panic lost.
        detection.rearm_batch(batch);
        detection.forget_scans(&scans);
        SinkError::Internal("detection failed on this batch".into())
    })
}

#[async_trait::async_trait]
impl EventSink for Pipeline {
    /// At most `max_in_flight` requests are decoded, detected and written at once; a request waits up to
    /// `admission_wait` for a slot and is otherwise refused (429 / RESOURCE_EXHAUSTED with Retry-After).
    /// It is refused at once while the store's write buffer is behind its flushes, which bounds memory
    /// when object storage is down.
    async fn admit(&self) -> Result<Admission, SinkError> {
        if self.store.is_behind() {
            metrics::OVERLOAD_REFUSALS.inc();
            return Err(SinkError::Overloaded {
                retry_after: self.config.retry_after,
            });
        }
        match tokio::time::timeout(
            self.config.admission_wait,
            self.admission.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(Admission::holding(permit)),
            _ => {
                metrics::OVERLOAD_REFUSALS.inc();
                Err(SinkError::Overloaded {
                    retry_after: self.config.retry_after,
                })
            }
        }
    }

    /// One span per batch (the request's), with detection as a child on its blocking thread.
    ///
    /// The batch runs in a task of its own, to its end even if the request that brought it goes away (a
    /// client's timeout, a closed connection): detection marks once-per-entity alerts as raised and the
    /// store finishes an append it has started, so the alerts must reach delivery too, or the retry finds
    /// the events stored and raises nothing. The admission goes with the task, so the slot stays taken
    /// while the work runs.
    #[tracing::instrument(level = "debug", name = "pipeline.accept", skip_all, fields(events = batch.num_rows() as i64, alerts))]
    async fn accept_admitted(
        &self,
        batch: RecordBatch,
        admission: Admission,
    ) -> Result<(), SinkError> {
        let Some(this) = self.me.upgrade() else {
            return Err(SinkError::Unavailable("the pipeline is stopping".into()));
        };
        let span = tracing::Span::current();
        tokio::spawn(async move { this.run_batch(batch, admission).await }.instrument(span))
            .await
            .map_err(|e| SinkError::Internal(format!("pipeline task failed: {e}")))?
    }
}

impl Pipeline {
    async fn run_batch(&self, batch: RecordBatch, admission: Admission) -> Result<(), SinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let admitted = admission.admitted();
        let received = Instant::now();
        metrics::record(Stage::Decode, received - admitted);
        // A retried request or a re-read Kafka message repeats events already stored: detected again, they
        // would raise their alerts twice and count twice in the baselines.
        let (batch, _repeated) = self
            .store
            .without_stored(Table::Events, batch)
            .map_err(|e| SinkError::Unavailable(format!("store: {e}")))?;
        if batch.num_rows() == 0 {
            metrics::record(Stage::Ack, admitted.elapsed());
            return Ok(());
        }
        let span = tracing::debug_span!("detect.process", events = batch.num_rows() as i64);
        let detected = if batch.num_rows() <= DETECT_INLINE_ROWS {
            detect_contained(&self.detection, &span, &batch)?
        } else {
            let detection = self.detection.clone();
            tokio::task::spawn_blocking(move || detect_contained(&detection, &span, &batch))
                .await
                .map_err(|e| SinkError::Internal(format!("detection task failed: {e}")))??
        };
        let detected_at = Instant::now();
        metrics::record(Stage::Detect, detected_at - received);
        tracing::Span::current().record("alerts", detected.alerts.len() as i64);
        let mut writes = vec![(Table::Events, detected.events)];
        if !detected.alerts.is_empty() {
            writes.push((Table::Alerts, alerts_to_batch(&detected.alerts)));
        }
        if let Err(e) = self.store.append(writes).await {
            // Refused, so the client retries: its once-per-entity alerts must be raised again then.
            self.detection.rearm(&detected.alerts);
            self.detection.forget_scans(&detected.scans);
            return Err(SinkError::Unavailable(format!("store: {e}")));
        }
        metrics::record(Stage::Store, detected_at.elapsed());
        // The window `reconcile_alerts` closes at start: alerts durable in the WAL, not yet in the outbox.
        fail::fail_point!(
            "alerts_stored_before_outbox",
            !detected.alerts.is_empty(),
            |_| std::process::abort()
        );
        if !detected.alerts.is_empty() {
            metrics::record(Stage::EventToAlert, admitted.elapsed());
            self.deliver(detected.alerts).await;
        }
        metrics::record(Stage::Ack, admitted.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vigil_detect::config::{Asset, DetectConfig};
    use vigil_ingest::{EventBatchBuilder, EventKind, EventRow};
    use vigil_store::StoreConfig;

    use super::*;

    /// A registry with gpt-4o only, so that another model is shadow AI.
    fn gpt4o_registered() -> DetectConfig {
        let mut cfg = DetectConfig::default();
        cfg.inventory.models = vec![Asset {
            id: "gpt-4o".into(),
            ..Default::default()
        }];
        cfg
    }

    /// One call of an unregistered model: a shadow_ai alert.
    fn unregistered_model_call() -> RecordBatch {
        let mut events = EventBatchBuilder::default();
        events.push(&EventRow {
            time_us: chrono::Utc::now().timestamp_micros(),
            event_id: "e1".into(),
            kind: Some(EventKind::Inference),
            user_id: Some("alice".into()),
            model: Some("deepseek-chat".into()),
            ..Default::default()
        });
        events.finish()
    }

    /// The client gives up on its request (a timeout, a closed connection) while the events are being
    /// written: the write completes, so the alert it detected must still reach delivery.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_given_up_still_delivers_its_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = gpt4o_registered();
        let store = Store::open(StoreConfig {
            data_dir: dir.path().join("data"),
            ..StoreConfig::default()
        })
        .await
        .unwrap();
        let responder =
            Responder::open(Default::default(), dir.path().join("outbox.redb")).unwrap();
        let pipeline = Pipeline::new(
            DetectionStage::new(cfg),
            store,
            responder,
            PipelineConfig::default(),
        );
        let mut alerts = pipeline.subscribe_alerts();
        // Polled once, then dropped: the request's future goes away while the append waits for its fsync.
        let given_up = tokio::time::timeout(
            std::time::Duration::ZERO,
            pipeline.accept(unregistered_model_call()),
        )
        .await;
        assert!(
            given_up.is_err(),
            "the request was still running when dropped"
        );
        let alert = tokio::time::timeout(std::time::Duration::from_secs(5), alerts.recv())
            .await
            .expect("the alert reaches delivery")
            .expect("an alert");
        assert_eq!(alert.entity_id, "deepseek-chat");
    }

    /// A request refused because its write failed is retried by its client: the retry must raise the
    /// once-per-entity alert the failed attempt detected and could not store.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_alert_whose_write_failed_is_raised_by_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = gpt4o_registered();
        let detection = DetectionStage::new(cfg);
        let store = |name: &str| {
            Store::open(StoreConfig {
                data_dir: dir.path().join(name),
                ..StoreConfig::default()
            })
        };
        let responder =
            Responder::open(Default::default(), dir.path().join("outbox.redb")).unwrap();
        let batch = unregistered_model_call();

        let closed = store("closed").await.unwrap();
        closed.shutdown().await.unwrap();
        let refused = Pipeline::new(
            detection.clone(),
            closed,
            responder.clone(),
            PipelineConfig::default(),
        );
        assert!(refused.accept(batch.clone()).await.is_err());

        let live = store("live").await.unwrap();
        let retried = Pipeline::new(detection, live, responder, PipelineConfig::default());
        let mut alerts = retried.subscribe_alerts();
        retried.accept(batch).await.unwrap();
        let alert = alerts.try_recv().expect("the retry raises the alert");
        assert_eq!(
            (alert.detector.as_str(), alert.entity_id.as_str()),
            ("shadow_ai", "deepseek-chat")
        );
    }
}
