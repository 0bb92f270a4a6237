//! The consume loop: read a batch, decode and normalise it, dead-letter what cannot be decoded, hand the
//! events to the sink, and only then store and commit the batch's offsets.
//!
//! Everything happens in one task and in that order, so the offsets stored are always those of durable
//! messages, and rebalance callbacks (which librdkafka runs inside `recv`) never overlap a sink call.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use bytes::Bytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use super::dlq::{self, DeadLetter, DeadLetterProducer};
use super::metrics::{self as kmetrics, PartitionOffsets};
use super::rejoin::{self, EmptyAssignmentWatch, RebalanceOutcome};
use super::{records, KafkaConfig, KafkaError, Signal, TopicConfig, TopicEncoding};
use crate::decode::DecodeError;
use crate::decode::{self, Compression, Encoding, Limits};
use crate::metrics::{self as imetrics, Transport};
use crate::normalize::{self, NormalizeContext, Normalized};
use crate::schema::{col, event_schema, EventBatchBuilder};
use crate::sink::{Admission, EventSink, SinkError};

/// First and longest wait between two attempts at a refused batch.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// librdkafka's `session.timeout.ms` unless `properties` set it: how long a crashed instance (one that
/// could not send LeaveGroup) keeps its partitions before the coordinator hands them to the others.
/// librdkafka's own default is 45 s; Vigil instances are few and long-lived and librdkafka heartbeats from
/// its own thread, however slow the sink, so a short timeout costs no spurious rebalances and a crash
/// stalls its partitions for 10 s instead of 45 s (Kafka's default before 3.0 was also 10 s).
const SESSION_TIMEOUT_MS: &str = "10000";

/// How long a metadata request made to check an empty assignment may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// librdkafka callbacks: commit before giving partitions up, remember what was revoked, report lag.
pub(super) struct Context {
    /// Partitions revoked since the loop last looked; their undelivered messages must be dropped.
    revoked: Mutex<Vec<(String, i32)>>,
    /// What the latest rebalance left, until the loop takes it (see [`rejoin`]).
    rebalance: Mutex<Option<RebalanceOutcome>>,
    /// Wakes the loop out of an idle `recv` after a rebalance, so an empty assignment is timed from then.
    rebalanced: tokio::sync::Notify,
}

impl Context {
    fn new() -> Self {
        Context {
            revoked: Mutex::new(Vec::new()),
            rebalance: Mutex::new(None),
            rebalanced: tokio::sync::Notify::new(),
        }
    }

    fn rebalanced(&self, outcome: RebalanceOutcome) {
        *self
            .rebalance
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.rebalanced.notify_one();
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        kmetrics::set_lag(statistics.topics.iter().flat_map(|(topic, t)| {
            t.partitions.values().map(move |p| PartitionOffsets {
                topic,
                partition: p.partition,
                assigned: p.desired,
                high_watermark: p.hi_offset,
                position: p.app_offset,
                committed: p.committed_offset,
            })
        }));
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        // Every stored offset belongs to a durable batch: commit them while the partitions are still ours, so
        // the next owner starts exactly after what is stored.
        if !consumer.assignment_lost() {
            commit_timed(|| consumer.commit_consumer_state(CommitMode::Sync));
        }
        let revoked = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect::<Vec<_>>();
        tracing::info!(?revoked, "kafka partitions revoked");
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(revoked);
        self.rebalanced(RebalanceOutcome::Revoked);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned = partitions
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect::<Vec<_>>();
            tracing::info!(?assigned, "kafka partitions assigned");
            // The whole assignment, not this callback's list: with cooperative-sticky that is only an increment.
            let empty = consumer
                .assignment()
                .map_or(partitions.count() == 0, |whole| whole.count() == 0);
            self.rebalanced(RebalanceOutcome::Assigned { empty });
        }
    }
}

/// Runs a synchronous commit, timing it; "nothing to commit" is success.
fn commit_timed(commit: impl FnOnce() -> Result<(), RdError>) -> bool {
    let started = Instant::now();
    let result = commit();
    kmetrics::COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) | Err(RdError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => true,
        Err(err) => {
            tracing::warn!(
                "kafka offset commit failed (the uncommitted tail will be replayed): {err}"
            );
            false
        }
    }
}

/// A message read but not yet delivered. Owned, because a batch outlives the `recv` that borrowed it.
struct Pending {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Bytes,
    /// Index of the topic's configuration in `Consumer::topics`.
    route: usize,
}

impl Pending {
    /// This message's copy for the dead-letter topic, its error cut to fit.
    fn dead_letter(&self, error: &str) -> DeadLetter {
        DeadLetter {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.clone(),
            payload: self.payload.to_vec(),
            error: dlq::bounded_error(error),
        }
    }
}

/// What one message turned into.
enum Decoded {
    Events(Normalized),
    Poison(String),
}

/// How handing one batch to the sink ended.
enum Delivery {
    Done,
    Stop,
    /// The pipeline failed on this batch's content (an internal error, not overload or an outage).
    Refused(String),
}

/// `shutdown` with memory: once it has fired, every later check sees it without polling it again.
struct Shutdown<F> {
    future: Pin<Box<F>>,
    fired: bool,
}

impl<F: Future<Output = ()>> Shutdown<F> {
    async fn wait(&mut self) {
        if !self.fired {
            self.future.as_mut().await;
            self.fired = true;
        }
    }

    /// Whether shutdown has fired, without waiting for it.
    async fn has_fired(&mut self) -> bool {
        if !self.fired {
            tokio::select! {
                biased;
                _ = self.future.as_mut() => self.fired = true,
                _ = std::future::ready(()) => {}
            }
        }
        self.fired
    }
}

/// Whether to keep consuming after a batch.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Shutdown fired while the batch was being retried: it was not delivered and its offsets not stored.
    Stop,
    /// A bug, not a refusal: stop without storing anything, so a fixed build reads the batch again.
    Fatal(String),
}

pub(super) struct Consumer {
    consumer: Arc<StreamConsumer<Context>>,
    dlq: Option<DeadLetterProducer>,
    sink: Arc<dyn EventSink>,
    topics: Arc<Vec<TopicConfig>>,
    /// What `subscribe` was given, for rejoining the group.
    subscriptions: Vec<String>,
    /// Catches the empty assignment a faulty coordinator hands out (see [`rejoin`]).
    watch: EmptyAssignmentWatch,
    limits: Limits,
    source: Option<String>,
    batch_max_messages: usize,
    batch_max_bytes: usize,
    batch_max_wait: Duration,
    commit_interval: Duration,
    last_commit: Instant,
    /// Offsets stored since the last commit.
    uncommitted: bool,
    /// librdkafka reported the consumer unusable (e.g. fenced by a newer member with the same
    /// `group.instance.id`): `run` returns after the batch in hand, so `supervise` starts a new one.
    fatal: Option<String>,
}

impl Consumer {
    /// Creates the consumer and the dead-letter producer and subscribes; fails on configuration errors that
    /// librdkafka detects up front (it connects lazily, so an unreachable broker is only logged later).
    pub(super) fn start(config: KafkaConfig, sink: Arc<dyn EventSink>) -> Result<Self, KafkaError> {
        let client_error = |context| move |source| KafkaError::Client { context, source };
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &config.brokers);
        let mut consumer_config = client.clone();
        consumer_config
            .set("group.id", &config.group_id)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "5000")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS)
            .set(
                "fetch.message.max.bytes",
                (config.max_message_bytes + 1)
                    .min(1_000_000_000)
                    .to_string(),
            );
        for (key, value) in &config.properties {
            client.set(key, value);
            consumer_config.set(key, value);
        }
        // The delivery guarantee: offsets are stored by this code after the sink said durable, and committed
        // by this code. Set last so that no passthrough property can turn it off.
        consumer_config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer<Context> = consumer_config
            .create_with_context(Context::new())
            .map_err(client_error("consumer creation"))?;
        let subscriptions = config
            .topics
            .iter()
            .map(TopicConfig::subscription)
            .collect::<Result<Vec<_>, _>>()?;
        subscribe(&consumer, &subscriptions)?;
        tracing::info!(brokers = %config.brokers, group = %config.group_id, topics = ?subscriptions, "kafka consumer subscribed");
        let dlq = if config.dlq_topic.is_empty() {
            None
        } else {
            Some(
                DeadLetterProducer::new(&client, config.dlq_topic.clone())
                    .map_err(client_error("dead-letter producer creation"))?,
            )
        };
        Ok(Consumer {
            consumer: Arc::new(consumer),
            dlq,
            sink,
            topics: Arc::new(config.topics),
            subscriptions,
            watch: EmptyAssignmentWatch::new(rejoin::SETTLE),
            // Kafka decompresses record batches itself: a message arrives as the Collector encoded it.
            limits: Limits {
                max_body_bytes: config.max_message_bytes,
                max_decompressed_bytes: config.max_message_bytes,
            },
            source: config.source_name,
            batch_max_messages: config.batch_max_messages,
            batch_max_bytes: config.batch_max_bytes,
            batch_max_wait: config.batch_max_wait,
            commit_interval: config.commit_interval,
            last_commit: Instant::now(),
            uncommitted: false,
            fatal: None,
        })
    }

    pub(super) async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), KafkaError> {
        let mut shutdown = Shutdown {
            future: Box::pin(shutdown),
            fired: false,
        };
        while !shutdown.fired {
            let batch = self.collect(&mut shutdown).await;
            if !batch.is_empty() {
                match self.process(batch, &mut shutdown).await {
                    Flow::Continue => {}
                    Flow::Stop => break,
                    Flow::Fatal(reason) => {
                        tracing::error!("{reason}");
                        return Err(KafkaError::Internal(reason));
                    }
                }
            }
            if let Some(reason) = self.fatal.take() {
                if self.uncommitted {
                    self.commit().await;
                }
                return Err(KafkaError::Internal(reason));
            }
            if self.uncommitted && self.last_commit.elapsed() >= self.commit_interval {
                self.commit().await;
            }
            if self.watch.check_at().is_some_and(|at| at <= Instant::now()) {
                self.check_empty_assignment().await?;
            }
        }
        if self.uncommitted {
            self.commit().await;
        }
        tracing::info!("kafka consumer stopped");
        Ok(())
    }

    /// Reads up to `batch_max_messages` (or until their payloads reach `batch_max_bytes`), waiting at most
    /// `batch_max_wait` after the first. Returns early with what it has when shutdown fires, and empty when
    /// a pending commit falls due while idle.
    async fn collect<F: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Shutdown<F>,
    ) -> Vec<Pending> {
        let mut batch: Vec<Pending> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        while batch.len() < self.batch_max_messages
            && batch.iter().map(|p| p.payload.len()).sum::<usize>() < self.batch_max_bytes
        {
            self.observe_rebalance();
            let wait_until = match deadline {
                Some(deadline) => deadline,
                None if self.uncommitted => tokio::time::Instant::now() + self.commit_interval,
                // Idle with nothing to commit: wake up now and then anyway so the loop stays observable.
                None => tokio::time::Instant::now() + Duration::from_secs(60),
            };
            // Return in time for a pending check of an empty assignment.
            let wait_until = match self.watch.check_at() {
                Some(at) => wait_until.min(tokio::time::Instant::from_std(at)),
                None => wait_until,
            };
            let rebalanced = &self.consumer.context().rebalanced;
            let received = tokio::select! {
                biased;
                _ = shutdown.wait() => return batch,
                // The rebalance callback ran inside the `recv` this drops (no message is lost: one taken off the
                // queue is returned by the same poll); the loop's next turn takes in its outcome.
                _ = rebalanced.notified() => None,
                received = tokio::time::timeout_at(wait_until, self.consumer.recv()) => Some(received),
            };
            // A rebalance ran inside recv: its revoked partitions are no longer ours to deliver. Filter before
            // adding the message just received, which already belongs to the new assignment.
            self.drop_revoked(&mut batch);
            let Some(received) = received else {
                continue;
            };
            match received {
                Err(_elapsed) => return batch,
                Ok(Err(err @ RdError::MessageConsumptionFatal(_))) => {
                    tracing::error!("kafka consumer can no longer consume: {err}");
                    self.fatal = Some(format!("kafka consumer can no longer consume: {err}"));
                    return batch;
                }
                Ok(Err(err)) => tracing::warn!("kafka consumer error: {err}"),
                Ok(Ok(message)) => {
                    let Some(route) = self.topics.iter().position(|t| t.matches(message.topic()))
                    else {
                        tracing::warn!(
                            topic = message.topic(),
                            "message from a topic no subscription matches; skipped"
                        );
                        continue;
                    };
                    batch.push(Pending {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message
                            .payload()
                            .map(Bytes::copy_from_slice)
                            .unwrap_or_default(),
                        route,
                    });
                    deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + self.batch_max_wait);
                }
            }
        }
        batch
    }

    /// Hands the latest rebalance outcome to the empty-assignment watch.
    fn observe_rebalance(&mut self) {
        let outcome = self
            .consumer
            .context()
            .rebalance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(outcome) = outcome {
            self.watch.observe(outcome, Instant::now());
        }
    }

    /// The assignment has been empty since the settle time with no rebalance: if the subscribed topics have
    /// partitions, leave the group and join it again as a new member (see [`rejoin`] for why).
    async fn check_empty_assignment(&mut self) -> Result<(), KafkaError> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let looked = tokio::task::spawn_blocking(move || -> Result<(bool, usize), RdError> {
            if consumer.assignment()?.count() > 0 {
                return Ok((false, 0));
            }
            let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT)?;
            let listed = metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| (t.name(), t.partitions().len()));
            Ok((true, rejoin::subscribed_partitions(listed, &topics)))
        })
        .await;
        let (still_empty, partitions) = match looked {
            Ok(Ok(looked)) => looked,
            Ok(Err(err)) => {
                tracing::warn!(
                    "cannot check the empty kafka assignment, trying again later: {err}"
                );
                self.watch.postpone(Instant::now());
                return Ok(());
            }
            Err(err) => {
                return Err(KafkaError::Internal(format!(
                    "kafka assignment check failed: {err}"
                )))
            }
        };
        if !self.watch.should_rejoin(still_empty, partitions) {
            return Ok(());
        }
        tracing::warn!(
            partitions,
            settle = ?rejoin::SETTLE,
            "kafka assignment stayed empty although the subscribed topics have partitions; leaving and rejoining \
             the group (a coordinator can form a group without its leader's assignment, as tansu does after a \
             crashed leader expires)"
        );
        kmetrics::REJOINS.inc();
        // Unsubscribing leaves the group once the (empty) revocation is done; librdkafka holds the new
        // subscription until then and joins with it as a new member.
        self.consumer.unsubscribe();
        subscribe(&self.consumer, &self.subscriptions)
    }

    fn drop_revoked(&self, batch: &mut Vec<Pending>) {
        let revoked: HashSet<(String, i32)> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if !revoked.is_empty() {
            let before = batch.len();
            batch.retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
            if batch.len() < before {
                tracing::info!(dropped = before - batch.len(), "dropped undelivered messages of revoked partitions; their new owner reads them again");
            }
        }
    }

    /// Delivers one batch, in parts when its events outgrow `batch_max_bytes` once normalised (see
    /// [`decode_part`]): each part's events in one sink call, retried until it succeeds, then its dead
    /// letters; then the part's offsets are stored (see [`Consumer::process_part`]).
    async fn process<F: Future<Output = ()>>(
        &mut self,
        batch: Vec<Pending>,
        shutdown: &mut Shutdown<F>,
    ) -> Flow {
        let mut rest = batch;
        let mut parts = 0u32;
        while !rest.is_empty() {
            if parts > 0 {
                // Later parts: a shutdown need not wait for them (their offsets are not stored, so they are
                // read again), and a long batch commits what it has delivered as it goes.
                if shutdown.has_fired().await {
                    return Flow::Stop;
                }
                if self.uncommitted && self.last_commit.elapsed() >= self.commit_interval {
                    self.commit().await;
                }
            }
            parts += 1;
            // Admitted before decoding, as the OTLP receivers admit a request before its body is decoded:
            // the sink's `decode` stage then measures this part's decoding too (admitted after, it read ~0
            // for every Kafka batch and pulled the stage's quantiles down). A refusal is not final here: the
            // part is decoded anyway (its poison messages go to the DLQ) and `deliver` retries with backoff
            // and pausing.
            let admission = self.sink.admit().await.ok();
            let topics = self.topics.clone();
            let limits = self.limits;
            // A message's events may hold four times what it may inflate to, as an OTLP request's may:
            // this bounds a part made of one message.
            let ctx = NormalizeContext {
                source: self.source.clone(),
                max_output_bytes: self.limits.max_decompressed_bytes.saturating_mul(4),
            };
            let budget = self.batch_max_bytes;
            // Decoding and normalising is milliseconds of CPU: keep it off the I/O threads.
            let decoded = tokio::task::spawn_blocking(move || {
                decode_part(rest, budget, |m| {
                    decode_message(m, &topics[m.route], &limits, &ctx)
                })
            })
            .await;
            let (part, decoded, remaining) = match decoded {
                Ok(result) => result,
                Err(err) => {
                    // The task failed although each message's decoding is contained: nothing stored, the
                    // batch is read again after the restart.
                    return Flow::Fatal(format!("kafka batch normalisation failed: {err}"));
                }
            };
            if !remaining.is_empty() && parts == 1 {
                kmetrics::BATCH_SPLITS.inc();
                tracing::debug!(
                    delivered = part.len(),
                    remaining = remaining.len(),
                    "kafka batch outgrew batch_max_bytes once normalised; delivering it in parts"
                );
            }
            match self.process_part(part, decoded, admission, shutdown).await {
                Flow::Continue => rest = remaining,
                stop => return stop,
            }
        }
        Flow::Continue
    }

    /// Delivers one decoded part of a batch, then its dead letters, and stores its offsets; commits them at
    /// once if it sent dead letters.
    ///
    /// The events go first: while the pipeline refuses them (a store outage), a shutdown or crash leaves
    /// the part to be read again, and had its dead letters gone out before, they would go out again on the
    /// next read. Committing right after a part with dead letters leaves only the moment between their
    /// acknowledgement and that commit for a crash to repeat them. Readers of the dead-letter topic can
    /// still see a message twice (at least once); its `vigil.dlq.*` headers name it.
    async fn process_part<F: Future<Output = ()>>(
        &mut self,
        batch: Vec<Pending>,
        mut decoded: Vec<Decoded>,
        mut admission: Option<Admission>,
        shutdown: &mut Shutdown<F>,
    ) -> Flow {
        let letters: Vec<DeadLetter> = batch
            .iter()
            .zip(&decoded)
            .filter_map(|(m, d)| match d {
                Decoded::Poison(error) => Some(m.dead_letter(error)),
                Decoded::Events(_) => None,
            })
            .collect();

        let events: Vec<&RecordBatch> = decoded
            .iter()
            .filter_map(|d| match d {
                Decoded::Events(n) if n.batch.num_rows() > 0 => Some(&n.batch),
                _ => None,
            })
            .collect();
        // Messages the pipeline could not process on their own, dead-lettered while isolating them.
        let mut isolated = false;
        if !events.is_empty() {
            let combined = match arrow::compute::concat_batches(&event_schema(), events) {
                Ok(combined) => combined,
                Err(err) => {
                    return Flow::Fatal(format!("cannot combine kafka batch events: {err}"))
                }
            };
            let kinds = count_kinds(&combined);
            // Without a dead-letter topic a message taken out would be lost: the batch is retried
            // instead, and the partition's growing lag tells the operator.
            let internal_limit = if self.dlq.is_some() { 1 } else { u32::MAX };
            match self
                .deliver(combined, admission.take(), internal_limit, shutdown)
                .await
            {
                Delivery::Stop => return Flow::Stop,
                Delivery::Done => {
                    for (kind, count) in kinds {
                        imetrics::record_events(Transport::Kafka, &kind, count);
                    }
                }
                Delivery::Refused(err) => {
                    tracing::warn!(
                        messages = batch.len(),
                        "the pipeline refused a kafka batch ({err}); delivering its messages one by one \
                         to dead-letter the one it cannot process"
                    );
                    if self.isolate(&batch, &mut decoded, shutdown).await == Flow::Stop {
                        return Flow::Stop;
                    }
                    isolated = true;
                }
            }
        }

        if !letters.is_empty()
            && self.dead_letter(&letters, &mut admission, shutdown).await == Flow::Stop
        {
            return Flow::Stop;
        }
        self.store_offsets(&batch);
        if !letters.is_empty() || isolated {
            self.commit().await;
        }
        for (m, d) in batch.iter().zip(&decoded) {
            let signal = topic_signal(&self.topics[m.route]);
            imetrics::record_bytes(Transport::Kafka, m.payload.len());
            match d {
                Decoded::Events(n) => {
                    kmetrics::MESSAGES
                        .with_label_values(&[&m.topic, "ok"])
                        .inc();
                    kmetrics::EVENTS
                        .with_label_values(&[&m.topic])
                        .inc_by(n.batch.num_rows() as u64);
                    if let Some(signal) = signal {
                        imetrics::record_skipped(Transport::Kafka, signal, n.skipped);
                    }
                }
                Decoded::Poison(_) => kmetrics::MESSAGES
                    .with_label_values(&[&m.topic, "dlq"])
                    .inc(),
            }
        }
        Flow::Continue
    }

    /// Produces every dead letter and waits for all acknowledgements, retrying until the broker takes them:
    /// committing past a poison message whose copy was lost would lose it.
    ///
    /// Dead letters are retried for as long as the dead-letter topic refuses them: before the first wait,
    /// the batch's `admission` (if any) is given back, as OTLP requests need the pipeline slot, and
    /// `deliver` admits the events again.
    async fn dead_letter<F: Future<Output = ()>>(
        &self,
        letters: &[DeadLetter],
        admission: &mut Option<Admission>,
        shutdown: &mut Shutdown<F>,
    ) -> Flow {
        for letter in letters {
            tracing::warn!(topic = %letter.topic, partition = letter.partition, offset = letter.offset, error = %letter.error, "kafka message dead-lettered");
        }
        let Some(dlq) = &self.dlq else {
            for letter in letters {
                kmetrics::DLQ.with_label_values(&[&letter.topic]).inc();
            }
            return Flow::Continue;
        };
        let mut backoff = BACKOFF_START;
        let mut paused = Paused::default();
        let mut remaining: Vec<&DeadLetter> = letters.iter().collect();
        while !remaining.is_empty() {
            let results = futures::future::join_all(remaining.iter().map(|l| dlq.send(l))).await;
            let mut failed = Vec::new();
            for (letter, result) in remaining.into_iter().zip(results) {
                match result {
                    Ok(()) => kmetrics::DLQ.with_label_values(&[&letter.topic]).inc(),
                    Err(err) => {
                        tracing::warn!(
                            "dead-letter produce failed, retrying in {backoff:?}: {err}"
                        );
                        failed.push(letter);
                    }
                }
            }
            remaining = failed;
            if !remaining.is_empty() {
                admission.take();
                kmetrics::RETRIES.with_label_values(&["dlq"]).inc();
                paused.pause(&self.consumer);
                if self.sleep_or_shutdown(backoff, shutdown).await == Flow::Stop {
                    paused.resume(&self.consumer);
                    return Flow::Stop;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        paused.resume(&self.consumer);
        Flow::Continue
    }

    /// Delivers each message's events on its own after the pipeline refused the batch they formed as
    /// one it cannot process (a detector panicked on it). A message refused again on its own is a poison
    /// message: it is dead-lettered with the pipeline's error, and the others are stored, instead of the
    /// whole batch being retried for ever while the partition's lag grows.
    async fn isolate<F: Future<Output = ()>>(
        &self,
        batch: &[Pending],
        decoded: &mut [Decoded],
        shutdown: &mut Shutdown<F>,
    ) -> Flow {
        for (m, d) in batch.iter().zip(decoded.iter_mut()) {
            let Decoded::Events(n) = d else { continue };
            if n.batch.num_rows() == 0 {
                continue;
            }
            let kinds = count_kinds(&n.batch);
            match self.deliver(n.batch.clone(), None, 2, shutdown).await {
                Delivery::Stop => return Flow::Stop,
                Delivery::Done => {
                    for (kind, count) in kinds {
                        imetrics::record_events(Transport::Kafka, &kind, count);
                    }
                }
                Delivery::Refused(err) => {
                    let error = format!("the pipeline cannot process this message: {err}");
                    if self
                        .dead_letter(&[m.dead_letter(&error)], &mut None, shutdown)
                        .await
                        == Flow::Stop
                    {
                        return Flow::Stop;
                    }
                    *d = Decoded::Poison(error);
                }
            }
        }
        Flow::Continue
    }

    /// Hands the batch to the sink until it is durable, the first time under `admission` when the batch was
    /// admitted before it was decoded. While the sink refuses, the assigned partitions are paused so that
    /// nothing is fetched that could not be delivered anyway. Overload and unavailability are waited out;
    /// after `internal_limit` internal errors (the pipeline failed on this very batch) it gives up with
    /// [`Delivery::Refused`], so that the caller can find the message responsible.
    #[tracing::instrument(level = "debug", name = "kafka.deliver", skip_all, fields(otel.kind = "consumer", events = batch.num_rows() as i64))]
    async fn deliver<F: Future<Output = ()>>(
        &self,
        batch: RecordBatch,
        mut admission: Option<Admission>,
        internal_limit: u32,
        shutdown: &mut Shutdown<F>,
    ) -> Delivery {
        let mut backoff = BACKOFF_START;
        let mut paused = Paused::default();
        let mut internal = 0;
        let delivery = loop {
            let delivered = match admission.take() {
                Some(admission) => self.sink.accept_admitted(batch.clone(), admission).await,
                None => self.sink.accept(batch.clone()).await,
            };
            let err = match delivered {
                Ok(()) => break Delivery::Done,
                Err(err) => err,
            };
            if let SinkError::Internal(message) = &err {
                internal += 1;
                if internal >= internal_limit && !shutdown.fired {
                    break Delivery::Refused(message.clone());
                }
            }
            let (reason, wait) = match &err {
                SinkError::Overloaded { retry_after } => {
                    ("overloaded", (*retry_after).clamp(backoff, BACKOFF_MAX))
                }
                SinkError::Unavailable(_) => ("unavailable", backoff),
                // Retried once more before `internal_limit` gives up on it.
                SinkError::Internal(_) => ("internal", backoff),
            };
            kmetrics::RETRIES.with_label_values(&[reason]).inc();
            tracing::warn!(
                rows = batch.num_rows(),
                "sink refused a kafka batch ({err}); retrying in {wait:?}"
            );
            if shutdown.fired {
                break Delivery::Stop;
            }
            paused.pause(&self.consumer);
            if self.sleep_or_shutdown(wait, shutdown).await == Flow::Stop {
                break Delivery::Stop;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        paused.resume(&self.consumer);
        delivery
    }

    async fn sleep_or_shutdown<F: Future<Output = ()>>(
        &self,
        wait: Duration,
        shutdown: &mut Shutdown<F>,
    ) -> Flow {
        tokio::select! {
            biased;
            _ = shutdown.wait() => Flow::Stop,
            _ = tokio::time::sleep(wait) => Flow::Continue,
        }
    }

    /// Stores, per partition, the offset after the batch's last message: everything before it is durable.
    fn store_offsets(&mut self, batch: &[Pending]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let entry = next
                .entry((m.topic.as_str(), m.partition))
                .or_insert(m.offset + 1);
            *entry = (*entry).max(m.offset + 1);
        }
        let mut tpl = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            if let Err(err) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!("cannot list offset {topic}/{partition}@{offset}: {err}");
            }
        }
        match self.consumer.store_offsets(&tpl) {
            Ok(()) => self.uncommitted = true,
            // The partition moved to another consumer while the batch was retried; it replays from the
            // last commit and the store deduplicates.
            Err(err) => {
                tracing::warn!("cannot store kafka offsets (partition no longer assigned?): {err}")
            }
        }
    }

    async fn commit(&mut self) {
        let consumer = self.consumer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            commit_timed(|| consumer.commit_consumer_state(CommitMode::Sync))
        })
        .await
        .unwrap_or(false);
        self.last_commit = Instant::now();
        // A failed commit is retried at the next interval; the offsets stay stored.
        self.uncommitted = !committed;
    }
}

/// The assigned partitions, paused while a batch or its dead letters wait to be retried: nothing is fetched
/// that could not be delivered anyway, and `vigil_kafka_paused` shows the wait.
#[derive(Default)]
struct Paused(Option<TopicPartitionList>);

impl Paused {
    /// Pauses the whole assignment, once.
    fn pause(&mut self, consumer: &StreamConsumer<Context>) {
        if self.0.is_some() {
            return;
        }
        match consumer.assignment() {
            Ok(assignment) => {
                match consumer.pause(&assignment) {
                    Ok(()) => set_paused(&assignment, true),
                    Err(err) => tracing::warn!("cannot pause kafka partitions: {err}"),
                }
                self.0 = Some(assignment);
            }
            Err(err) => tracing::warn!("cannot read the kafka assignment to pause it: {err}"),
        }
    }

    /// Resumes what `pause` paused, if anything.
    fn resume(&mut self, consumer: &StreamConsumer<Context>) {
        if let Some(assignment) = self.0.take() {
            match consumer.resume(&assignment) {
                Ok(()) => set_paused(&assignment, false),
                // The gauge stays at 1: the partitions really are still paused.
                Err(err) => tracing::warn!("cannot resume kafka partitions: {err}"),
            }
        }
    }
}

/// Shows (or removes) the `vigil_kafka_paused` gauge of each listed partition.
fn set_paused(partitions: &TopicPartitionList, paused: bool) {
    for e in partitions.elements() {
        let partition = e.partition().to_string();
        if paused {
            kmetrics::PAUSED
                .with_label_values(&[e.topic(), &partition])
                .set(1);
        } else {
            // Absent rather than 0: partitions that later move to another consumer leave no series behind.
            let _ = kmetrics::PAUSED.remove_label_values(&[e.topic(), &partition]);
        }
    }
}

fn subscribe(
    consumer: &StreamConsumer<Context>,
    subscriptions: &[String],
) -> Result<(), KafkaError> {
    let subscriptions: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    consumer
        .subscribe(&subscriptions)
        .map_err(|source| KafkaError::Client {
            context: "subscribe",
            source,
        })
}

fn topic_signal(topic: &TopicConfig) -> Option<imetrics::Signal> {
    match topic.signal {
        Signal::Traces => Some(imetrics::Signal::Traces),
        Signal::Logs => Some(imetrics::Signal::Logs),
        Signal::Events => None,
    }
}

/// A message whose decoding panics is a poison message like any other: dead-lettered, not a reason to stop
/// the consumer (which would meet it again at the same offset after every restart).
fn contained(decode: impl FnOnce() -> Decoded) -> Decoded {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Decoded::Poison(format!("decoding panicked (a bug in Vigil): {what}"))
    })
}

/// Decodes the messages of `batch` in order while the events decoded so far fit in `budget` bytes of memory,
/// and returns the messages decoded, what they turned into, and the messages left for the next part.
///
/// `collect` bounds a batch by its payload bytes, but a message's events can be far larger than the message
/// (resource attributes are copied into each event): without this, anyone who can write to a topic could make
/// one batch, and its combined copy, too large for memory, and the same batch would be read again after the
/// crash. The message whose events would not fit is dropped and decoded again as the next part's first (a
/// split costs one message's decoding twice); a part always takes at least one message, which is itself
/// bounded by the per-message output limit. So a part holds at most `budget`, or one message's events when
/// that alone is larger (and, while delivered, their combined copy).
fn decode_part(
    mut batch: Vec<Pending>,
    budget: usize,
    decode: impl Fn(&Pending) -> Decoded,
) -> (Vec<Pending>, Vec<Decoded>, Vec<Pending>) {
    let mut decoded = Vec::new();
    let mut held = 0usize;
    for m in &batch {
        let d = contained(|| decode(m));
        let size = match &d {
            Decoded::Events(n) => n.batch.get_array_memory_size(),
            Decoded::Poison(_) => 0,
        };
        if !decoded.is_empty() && held.saturating_add(size) > budget {
            break;
        }
        held = held.saturating_add(size);
        decoded.push(d);
    }
    let remaining = batch.split_off(decoded.len());
    (batch, decoded, remaining)
}

/// Decodes and normalises one message; any error makes it a poison message.
fn decode_message(
    m: &Pending,
    topic: &TopicConfig,
    limits: &Limits,
    ctx: &NormalizeContext,
) -> Decoded {
    let encoding = match topic.encoding {
        TopicEncoding::OtlpProto => Encoding::Protobuf,
        TopicEncoding::OtlpJson => Encoding::Json,
        TopicEncoding::VigilJson => {
            if m.payload.len() > limits.max_body_bytes {
                return Decoded::Poison(format!(
                    "message exceeds the limit of {} bytes",
                    limits.max_body_bytes
                ));
            }
            let now = chrono::Utc::now().timestamp_micros();
            let origin = records::Origin {
                topic: &m.topic,
                partition: m.partition,
                offset: m.offset,
            };
            return match records::parse(&m.payload, origin, now, ctx.source.as_deref()) {
                Ok(rows) => {
                    let mut builder = EventBatchBuilder::with_capacity(rows.len());
                    rows.iter().for_each(|row| builder.push(row));
                    Decoded::Events(Normalized {
                        batch: builder.finish(),
                        skipped: 0,
                        oversized: false,
                    })
                }
                Err(err) => Decoded::Poison(format!(
                    "invalid vigil_json {}: {err}",
                    topic.signal.as_str()
                )),
            };
        }
    };
    let result = match topic.signal {
        Signal::Traces => {
            decode::decode_traces(m.payload.clone(), encoding, Compression::None, limits)
                .map(|req| normalize::traces(&req, ctx))
        }
        Signal::Logs => decode::decode_logs(m.payload.clone(), encoding, Compression::None, limits)
            .map(|req| normalize::logs(&req, ctx)),
        Signal::Events => {
            return Decoded::Poison("OTLP encodings carry traces or logs, not events".into());
        }
    };
    match result {
        Ok(normalized) if normalized.oversized => Decoded::Poison(
            DecodeError::EventsTooLarge {
                limit: ctx.max_output_bytes,
            }
            .to_string(),
        ),
        Ok(normalized) => Decoded::Events(normalized),
        Err(err) => Decoded::Poison(format!(
            "invalid {} {}: {err}",
            encoding_name(topic.encoding),
            topic.signal.as_str()
        )),
    }
}

fn encoding_name(encoding: TopicEncoding) -> &'static str {
    match encoding {
        TopicEncoding::OtlpProto => "otlp_proto",
        TopicEncoding::OtlpJson => "otlp_json",
        TopicEncoding::VigilJson => "vigil_json",
    }
}

/// Rows per value of the `kind` column, for `vigil_ingest_events_total`.
fn count_kinds(batch: &RecordBatch) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    match batch
        .column_by_name(col::KIND)
        .and_then(|c| c.as_string_opt::<i32>())
    {
        Some(kinds) => kinds
            .iter()
            .for_each(|k| *counts.entry(k.unwrap_or("unknown").to_owned()).or_default() += 1),
        None => {
            counts.insert("unknown".to_owned(), batch.num_rows());
        }
    }
    counts.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(offset: i64) -> Pending {
        Pending {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: Bytes::new(),
            route: 0,
        }
    }

    /// Parts stop before the message whose events would not fit, unless it is the first.
    #[test]
    fn a_part_holds_at_most_its_budget_or_one_message() {
        let mut b = EventBatchBuilder::with_capacity(100);
        for i in 0..100 {
            b.push(&crate::schema::EventRow {
                event_id: format!("e{i}"),
                ..Default::default()
            });
        }
        let one = b.finish();
        let size = one.get_array_memory_size();
        let events = |_: &Pending| {
            Decoded::Events(Normalized {
                batch: one.clone(),
                skipped: 0,
                oversized: false,
            })
        };
        let batch = || (0..6).map(pending).collect::<Vec<_>>();
        let (part, decoded, rest) = decode_part(batch(), size * 5 / 2, events);
        assert_eq!((part.len(), decoded.len(), rest.len()), (2, 2, 4));
        assert_eq!(rest[0].offset, 2, "the message that did not fit comes next");
        let (part, _, rest) = decode_part(batch(), size / 2, events);
        assert_eq!(
            (part.len(), rest.len()),
            (1, 5),
            "one message, however large"
        );
        // Poison messages hold nothing.
        let mixed = |m: &Pending| {
            if m.offset % 2 == 1 {
                Decoded::Poison("bad".into())
            } else {
                events(m)
            }
        };
        let (part, _, _) = decode_part(batch(), size * 2, mixed);
        assert_eq!(part.len(), 4);
    }

    #[test]
    fn a_panic_while_decoding_makes_a_poison_message() {
        let poison = contained(|| panic!("index out of bounds in message 7"));
        assert!(
            matches!(&poison, Decoded::Poison(e) if e.contains("index out of bounds in message 7")),
            "the panic's message is the dead letter's error"
        );
        let owned = contained(|| panic!("{} bytes", 12));
        assert!(matches!(&owned, Decoded::Poison(e) if e.ends_with("12 bytes")));
        let fine = contained(|| Decoded::Poison("not protobuf".into()));
        assert!(matches!(&fine, Decoded::Poison(e) if e == "not protobuf"));
    }
}
