//! The consumer against librdkafka's in-process mock cluster: real group coordination, offsets and
//! headers, no broker to install. The cluster is not `Send`, so it stays on the test's thread while
//! `run` is spawned on the runtime's workers. Joining a group takes about 3 s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::dlq;
use super::*;
use crate::normalize::{self, NormalizeContext};
use crate::schema::{col, EventKind, EventRow};
use crate::sink::SinkError;

/// Remembers every accepted batch; can refuse (`fail`, `overloaded`), be slow (`delay`) or hang
/// (`hang_after` accepted calls) on demand, and records how much it was handed at once.
#[derive(Default)]
struct TestSink {
    accepted: Mutex<Vec<RecordBatch>>,
    calls: AtomicUsize,
    fail: AtomicBool,
    hang_after: Option<usize>,
    /// While set, every call is refused with `Overloaded` and the refused batch's event ids are kept.
    overloaded: AtomicBool,
    refused: Mutex<Vec<BTreeSet<String>>>,
    /// How long every call takes: a store that falls behind.
    delay: Duration,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    max_rows: AtomicUsize,
    /// For each delivery, how long before it the batch was admitted.
    admitted_before: Mutex<Vec<Duration>>,
    /// A batch with an event of this user is refused with an internal error, as a detector panic is.
    internal_for_user: Option<String>,
    /// Admissions handed out and not yet dropped: pipeline slots the consumer holds.
    admissions: Arc<AtomicUsize>,
    /// Admissions handed out in all.
    admitted: AtomicUsize,
}

/// Gives its slot back to `TestSink::admissions` when the admission holding it is dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl EventSink for TestSink {
    async fn admit(&self) -> Result<crate::sink::Admission, SinkError> {
        self.admitted.fetch_add(1, Ordering::SeqCst);
        self.admissions.fetch_add(1, Ordering::SeqCst);
        Ok(crate::sink::Admission::holding(Slot(
            self.admissions.clone(),
        )))
    }

    async fn accept_admitted(
        &self,
        batch: RecordBatch,
        admission: crate::sink::Admission,
    ) -> Result<(), SinkError> {
        self.admitted_before
            .lock()
            .unwrap()
            .push(admission.admitted().elapsed());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.max_rows.fetch_max(batch.num_rows(), Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let result = self.accept_now(batch).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl TestSink {
    async fn accept_now(&self, batch: RecordBatch) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("test sink is down".into()));
        }
        if let Some(user) = &self.internal_for_user {
            if column(std::slice::from_ref(&batch), col::USER_ID).contains(user) {
                return Err(SinkError::Internal("detection failed on this batch".into()));
            }
        }
        if self.overloaded.load(Ordering::SeqCst) {
            self.refused.lock().unwrap().push(
                column(std::slice::from_ref(&batch), col::EVENT_ID)
                    .into_iter()
                    .collect(),
            );
            return Err(SinkError::Overloaded {
                retry_after: Duration::from_millis(10),
            });
        }
        let hang = {
            let mut accepted = self.accepted.lock().unwrap();
            let hang = self.hang_after.is_some_and(|n| accepted.len() >= n);
            if !hang {
                accepted.push(batch);
            }
            hang
        };
        if hang {
            // A process killed mid-write: this batch never becomes durable.
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

impl TestSink {
    fn event_ids(&self) -> Vec<String> {
        column(&self.accepted.lock().unwrap(), col::EVENT_ID)
    }

    fn unique_ids(&self) -> BTreeSet<String> {
        self.event_ids().into_iter().collect()
    }
}

fn column(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name(name)
                .expect("column")
                .as_string::<i32>()
                .clone();
            (0..c.len()).map(move |i| c.value(i).to_owned())
        })
        .collect()
}

/// One Collector message: a trace export with `spans` GenAI spans, its trace id encoding `message`.
fn otlp_message(message: usize, spans: usize) -> Vec<u8> {
    otlp_request(message, spans).encode_to_vec()
}

/// The export [`otlp_message`] encodes.
fn otlp_request(
    message: usize,
    spans: usize,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let rows: Vec<EventRow> = (0..spans)
        .map(|s| EventRow {
            time_us: 1_700_000_000_000_000 + (message * 100 + s) as i64,
            kind: Some(EventKind::Inference),
            service: Some(format!("svc-{}", message % 3)),
            user_id: Some(format!("user-{message}")),
            trace_id: Some(format!("{message:032x}")),
            span_id: Some(format!("{:016x}", s + 1)),
            provider: Some("openai".into()),
            model: Some("gpt-4o".into()),
            operation: Some("chat".into()),
            input_tokens: Some(10),
            ..Default::default()
        })
        .collect();
    crate::synth::traces_request(&rows)
}

/// The event ids normalisation gives a message's events, computed independently of the consumer.
fn expected_ids(payload: &[u8]) -> Vec<String> {
    let req = crate::decode::decode_traces(
        bytes::Bytes::copy_from_slice(payload),
        crate::decode::Encoding::Protobuf,
        crate::decode::Compression::None,
        &crate::decode::Limits::default(),
    )
    .expect("test message decodes");
    column(
        &[normalize::traces(&req, &NormalizeContext::default()).batch],
        col::EVENT_ID,
    )
}

/// One Collector message on `otlp_logs`: a LogsData batch of `records` GenAI guardrail events whose times
/// encode `message`, so every message's events have their own ids.
fn otlp_logs_message(
    message: usize,
    records: usize,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    let mut req = crate::otlp::test_support::logs_request(records);
    for (i, record) in req
        .resource_logs
        .iter_mut()
        .flat_map(|rl| &mut rl.scope_logs)
        .flat_map(|sl| &mut sl.log_records)
        .enumerate()
    {
        record.time_unix_nano = 1_763_000_000_000_000_000 + (message * 1_000 + i) as u64;
    }
    req
}

/// The event ids normalisation gives a logs message's events.
fn expected_log_ids(
    req: &opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
) -> Vec<String> {
    column(
        &[normalize::logs(
            &crate::wire::convert(req).expect("converts"),
            &NormalizeContext::default(),
        )
        .batch],
        col::EVENT_ID,
    )
}

/// The value of gauge `name` for one partition as the default registry exposes it (what `/metrics`
/// shows); `None` while the series does not exist.
fn gathered_gauge(name: &str, topic: &str, partition: i32) -> Option<f64> {
    let partition = partition.to_string();
    prometheus::gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .find(|m| {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_owned())
            };
            label("topic").as_deref() == Some(topic)
                && label("partition") == Some(partition.clone())
        })
        .map(|m| m.get_gauge().get_value())
}

/// Samples of `vigil_kafka_commit_seconds` as the default registry exposes them.
fn gathered_commit_samples() -> u64 {
    prometheus::gather()
        .iter()
        .filter(|family| family.name() == "vigil_kafka_commit_seconds")
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

fn config(brokers: &str, group: &str) -> KafkaConfig {
    config_on(brokers, group, "otlp_spans")
}

/// [`config`] reading OTLP protobuf spans from `spans_topic`: a topic of its own keeps a test's
/// process-wide per-topic metrics apart from the other tests'.
fn config_on(brokers: &str, group: &str, spans_topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_owned(),
        group_id: group.to_owned(),
        topics: vec![TopicConfig::named(
            spans_topic,
            TopicEncoding::OtlpProto,
            Signal::Traces,
        )],
        batch_max_messages: 4,
        batch_max_wait: Duration::from_millis(50),
        commit_interval: Duration::ZERO,
        properties: BTreeMap::from([("session.timeout.ms".to_owned(), "6000".to_owned())]),
        ..KafkaConfig::default()
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "5000000")
        .create()
        .expect("producer")
}

async fn produce(producer: &FutureProducer, topic: &str, partition: i32, payload: &[u8]) {
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .expect("produce to the mock cluster");
}

/// A running consumer and the means to stop it.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), KafkaError>>,
}

fn start(config: KafkaConfig, sink: Arc<TestSink>) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, sink, async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("consumer stops within 30 s")
            .expect("consumer task")
            .expect("consumer ends without error");
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The group's committed offset per partition, as a new member would start from it.
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Offset> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed.elements().iter().map(|e| e.offset()).collect()
}

/// The first message of partition 0 of `topic`, read without joining a group.
fn first_message(brokers: &str, topic: &str) -> rdkafka::message::OwnedMessage {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "vigil-test-reader")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    reader.assign(&tpl).expect("assign");
    match reader.poll(Duration::from_secs(10)) {
        Some(Ok(message)) => message.detach(),
        Some(Err(err)) => panic!("reading {topic}: {err}"),
        None => panic!("nothing in {topic} within 10 s"),
    }
}

fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> String {
    message
        .headers()
        .and_then(|headers| headers.iter().find(|h| h.key == name).and_then(|h| h.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| panic!("header {name} missing"))
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_otlp_and_json_topics_arrives_once_and_is_committed() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_spans", 2, 1).unwrap();
    mock.create_topic("otlp_json", 1, 1).unwrap();
    mock.create_topic("vigil_events", 1, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);

    let mut expected = BTreeSet::new();
    for m in 0..10 {
        let payload = otlp_message(m, 3);
        expected.extend(expected_ids(&payload));
        produce(&producer, "otlp_spans", (m % 2) as i32, &payload).await;
    }
    // The Collector's otlp_json encoding of the same kind of batch.
    let json_payload = {
        let proto = otlp_message(100, 2);
        expected.extend(expected_ids(&proto));
        let req = <opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as prost::Message>::decode(&proto[..])
        .unwrap();
        serde_json::to_vec(&req).unwrap()
    };
    produce(&producer, "otlp_json", 0, &json_payload).await;
    // Vigil's own records: an object and an array.
    produce(
        &producer,
        "vigil_events",
        0,
        br#"{"event_id":"j1","kind":"tool","tool_name":"search","time":"2026-01-01T00:00:00Z"}"#,
    )
    .await;
    produce(
        &producer,
        "vigil_events",
        0,
        br#"[{"event_id":"j2","time":1700000000000000},{"event_id":"j3","kind":"policy"}]"#,
    )
    .await;
    expected.extend(["j1", "j2", "j3"].map(String::from));
    // A message of a large batch, past the Collector's 1 MB default (and librdkafka's 1,000,000-byte
    // `message.max.bytes`): the consumer must fetch and decode it whole.
    let large = otlp_message(200, 6000);
    assert!(
        large.len() >= 1_048_576,
        "large message is only {} bytes",
        large.len()
    );
    expected.extend(expected_ids(&large));
    produce(&producer, "otlp_spans", 0, &large).await;

    let sink = Arc::new(TestSink::default());
    let mut cfg = config(&brokers, "all-events");
    cfg.topics.push(TopicConfig::named(
        "otlp_json",
        TopicEncoding::OtlpJson,
        Signal::Traces,
    ));
    cfg.topics.push(TopicConfig::named(
        "vigil_events",
        TopicEncoding::VigilJson,
        Signal::Events,
    ));
    let events_before = metrics::EVENTS.with_label_values(&["vigil_events"]).get();
    let running = start(cfg, sink.clone());
    wait_until("every event", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;

    assert_eq!(sink.unique_ids(), expected);
    assert_eq!(
        sink.event_ids().len(),
        expected.len(),
        "no event delivered twice"
    );
    assert_eq!(
        committed(&brokers, "all-events", "otlp_spans", 2),
        vec![Offset::Offset(6), Offset::Offset(5)]
    );
    assert_eq!(
        committed(&brokers, "all-events", "vigil_events", 1),
        vec![Offset::Offset(2)]
    );
    assert_eq!(
        committed(&brokers, "all-events", "otlp_json", 1),
        vec![Offset::Offset(1)]
    );
    assert!(metrics::EVENTS.with_label_values(&["vigil_events"]).get() - events_before >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_goes_to_the_dead_letter_topic_with_headers_and_consumption_continues() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_spans", 1, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let good = [otlp_message(1, 2), otlp_message(3, 2)];
    let poison: &[u8] = &[0x0a, 0xff, 0xff, 0x01];
    produce(&producer, "otlp_spans", 0, &good[0]).await;
    produce(&producer, "otlp_spans", 0, poison).await;
    produce(&producer, "otlp_spans", 0, &good[1]).await;
    let expected: BTreeSet<String> = good.iter().flat_map(|g| expected_ids(g)).collect();

    let dlq_before = metrics::DLQ.with_label_values(&["otlp_spans"]).get();
    let sink = Arc::new(TestSink::default());
    let running = start(config(&brokers, "poison"), sink.clone());
    wait_until("the good messages", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;
    assert_eq!(
        sink.unique_ids(),
        expected,
        "messages after the poison one are consumed"
    );
    assert_eq!(
        committed(&brokers, "poison", "otlp_spans", 1),
        vec![Offset::Offset(3)],
        "committed past the poison message"
    );
    assert_eq!(
        metrics::DLQ.with_label_values(&["otlp_spans"]).get() - dlq_before,
        1
    );

    let letter = first_message(&brokers, "vigil_dlq");
    assert_eq!(
        letter.payload(),
        Some(poison),
        "the original bytes are kept"
    );
    let header = |name: &str| header(&letter, name);
    assert_eq!(header(dlq::HEADER_TOPIC), "otlp_spans");
    assert_eq!(header(dlq::HEADER_PARTITION), "0");
    assert_eq!(header(dlq::HEADER_OFFSET), "1");
    assert!(
        header(dlq::HEADER_ERROR).contains("otlp_proto"),
        "error says what failed: {}",
        header(dlq::HEADER_ERROR)
    );
}

/// A part whose events the pipeline refuses (a store outage) when the consumer stops: its poison message
/// was not dead-lettered yet, so the next run, reading the part again, sends one dead letter in all
/// (it used to go out before the events, and again on every read of the part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_read_again_after_a_stop_dead_letters_its_poison_once() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("again_spans", 1, 1).unwrap();
    mock.create_topic("again_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    produce(&producer, "again_spans", 0, &[0x0a, 0xff, 0xff, 0x01]).await;
    let good = otlp_message(7, 2);
    produce(&producer, "again_spans", 0, &good).await;
    let mut cfg = config_on(&brokers, "again", "again_spans");
    cfg.dlq_topic = "again_dlq".into();

    let down = Arc::new(TestSink::default());
    down.fail.store(true, Ordering::SeqCst);
    let running = start(cfg.clone(), down.clone());
    wait_until("the refused delivery", WAIT, || {
        down.calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    running.stop().await;

    let sink = Arc::new(TestSink::default());
    let running = start(cfg, sink.clone());
    wait_until("the commit past both", WAIT, || {
        committed(&brokers, "again", "again_spans", 1) == vec![Offset::Offset(2)]
    })
    .await;
    running.stop().await;
    assert_eq!(
        sink.unique_ids(),
        expected_ids(&good).into_iter().collect::<BTreeSet<_>>()
    );
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("watermark reader");
    let watermarks = reader
        .fetch_watermarks("again_dlq", 0, Duration::from_secs(10))
        .expect("dead-letter watermarks");
    assert_eq!(watermarks, (0, 1), "one dead letter");
}

/// A message that the pipeline fails on (a detector panics on its content) is found by delivering the
/// refused batch message by message, and dead-lettered; the messages around it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_pipeline_fails_on_is_dead_lettered_and_the_rest_stored() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("refused_spans", 1, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let messages = [otlp_message(1, 2), otlp_message(2, 2), otlp_message(3, 2)];
    for m in &messages {
        produce(&producer, "refused_spans", 0, m).await;
    }
    let expected: BTreeSet<String> = [&messages[0], &messages[2]]
        .iter()
        .flat_map(|g| expected_ids(g))
        .collect();

    let sink = Arc::new(TestSink {
        internal_for_user: Some("user-2".into()),
        ..TestSink::default()
    });
    let cfg = config_on(&brokers, "refused", "refused_spans");
    let running = start(cfg, sink.clone());
    wait_until("the other messages", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    wait_until("the commit past the refused message", WAIT, || {
        committed(&brokers, "refused", "refused_spans", 1) == vec![Offset::Offset(3)]
    })
    .await;
    running.stop().await;
    assert_eq!(sink.unique_ids(), expected);
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("watermark reader");
    let watermarks = reader
        .fetch_watermarks("vigil_dlq", 0, Duration::from_secs(10))
        .expect("dead-letter watermarks");
    assert_eq!(watermarks, (0, 1), "one dead letter");
    let letter = first_message(&brokers, "vigil_dlq");
    assert_eq!(letter.payload(), Some(&messages[1][..]));
    assert_eq!(header(&letter, dlq::HEADER_OFFSET), "1");
    let error = header(&letter, dlq::HEADER_ERROR);
    assert!(error.contains("cannot process"), "{error}");
}

/// Without a dead-letter topic, a message the pipeline fails on is not skipped: it would be lost. The
/// consumer retries, and never commits past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_a_refused_message_is_never_committed_past() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("held_spans", 1, 1).unwrap();
    let producer = producer(&brokers);
    for m in [otlp_message(2, 2), otlp_message(3, 2)] {
        produce(&producer, "held_spans", 0, &m).await;
    }
    let sink = Arc::new(TestSink {
        internal_for_user: Some("user-2".into()),
        ..TestSink::default()
    });
    let mut cfg = config_on(&brokers, "held", "held_spans");
    cfg.dlq_topic = String::new();
    let running = start(cfg, sink.clone());
    wait_until("retries of the refused batch", WAIT, || {
        sink.calls.load(Ordering::SeqCst) >= 3
    })
    .await;
    running.stop().await;
    assert!(
        sink.unique_ids().is_empty(),
        "nothing past the refused message"
    );
    assert!(
        !matches!(
            committed(&brokers, "held", "held_spans", 1)[..],
            [Offset::Offset(n)] if n > 0
        ),
        "committed past the refused message"
    );
}

/// A dead letter that quotes a huge field in its error, with a huge key: the copy is cut to fit the
/// dead-letter topic (librdkafka refuses a record over 1,000,000 bytes), so the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsized_dead_letter_is_cut_to_fit_and_consumption_continues() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("vigil_events", 1, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let key = vec![b'k'; 200 * 1024];
    let poison = format!(
        r#"{{"event_id":"big","kind":"tool","time":"{}"}}"#,
        "x".repeat(870 * 1024)
    );
    producer
        .send(
            FutureRecord::to("vigil_events")
                .partition(0)
                .key(&key[..])
                .payload(poison.as_bytes()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(err, _)| err)
        .expect("produce the poison message");
    produce(
        &producer,
        "vigil_events",
        0,
        br#"{"event_id":"after","kind":"tool","tool_name":"search"}"#,
    )
    .await;

    let mut cfg = config(&brokers, "outsized");
    cfg.topics = vec![TopicConfig::named(
        "vigil_events",
        TopicEncoding::VigilJson,
        Signal::Events,
    )];
    let sink = Arc::new(TestSink::default());
    let running = start(cfg, sink.clone());
    wait_until("the message after the poison one", WAIT, || {
        sink.unique_ids().contains("after")
    })
    .await;
    running.stop().await;
    assert_eq!(
        committed(&brokers, "outsized", "vigil_events", 1),
        vec![Offset::Offset(2)],
        "committed past the poison message"
    );

    let letter = first_message(&brokers, "vigil_dlq");
    let error = header(&letter, dlq::HEADER_ERROR);
    assert!(error.len() <= dlq::MAX_DLQ_ERROR, "{} bytes", error.len());
    assert!(
        error.contains("time"),
        "the error still names the column: {error}"
    );
    assert_eq!(
        header(&letter, dlq::HEADER_KEY_TRUNCATED),
        key.len().to_string()
    );
    assert_eq!(
        header(&letter, dlq::HEADER_TRUNCATED),
        poison.len().to_string()
    );
    let (kept_key, kept_payload) = (letter.key().unwrap(), letter.payload().unwrap());
    assert_eq!(kept_key, &key[..dlq::MAX_DLQ_KEY]);
    assert_eq!(kept_key.len() + kept_payload.len(), dlq::MAX_DLQ_PAYLOAD);
    assert_eq!(kept_payload, &poison.as_bytes()[..kept_payload.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_admitted_before_it_is_decoded_so_the_decode_stage_measures_it() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_spans", 1, 1).unwrap();
    let producer = producer(&brokers);
    let payload = otlp_message(0, 3000);
    // What decoding and normalising this message costs here, measured the way the consumer does it.
    let started = Instant::now();
    let expected = expected_ids(&payload);
    let decode = started.elapsed();
    produce(&producer, "otlp_spans", 0, &payload).await;

    let sink = Arc::new(TestSink::default());
    let running = start(config(&brokers, "admitted"), sink.clone());
    wait_until("the message's events", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;
    let before = sink.admitted_before.lock().unwrap().clone();
    assert_eq!(before.len(), 1, "one delivery");
    // Admitted after decoding, the admission would be microseconds old when the batch arrived.
    assert!(
        before[0] >= decode / 4,
        "admitted {:?} before delivery; decoding alone takes {decode:?}",
        before[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_sink_means_nothing_committed_then_everything_delivered_once() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_spans", 1, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let mut expected = BTreeSet::new();
    for m in 0..6 {
        let payload = otlp_message(m, 2);
        expected.extend(expected_ids(&payload));
        produce(&producer, "otlp_spans", 0, &payload).await;
    }

    let sink = Arc::new(TestSink::default());
    sink.fail.store(true, Ordering::SeqCst);
    let retries_before = metrics::RETRIES.with_label_values(&["unavailable"]).get();
    let running = start(config(&brokers, "unavailable"), sink.clone());
    wait_until("two refused attempts", WAIT, || {
        sink.calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(
        committed(&brokers, "unavailable", "otlp_spans", 1),
        vec![Offset::Invalid],
        "nothing committed while refused"
    );
    assert!(metrics::RETRIES.with_label_values(&["unavailable"]).get() - retries_before >= 2);
    sink.fail.store(false, Ordering::SeqCst);
    wait_until("every event after recovery", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;

    assert_eq!(sink.unique_ids(), expected);
    assert_eq!(
        sink.event_ids().len(),
        expected.len(),
        "the refused batch is delivered exactly once"
    );
    assert_eq!(
        committed(&brokers, "unavailable", "otlp_spans", 1),
        vec![Offset::Offset(6)]
    );
}

/// A batch closes when its payloads reach `batch_max_bytes`, however many messages it may still take and
/// however long it may still wait: the bytes a batch holds are bounded, not only its message count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_closes_at_its_byte_budget() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_spans", 1, 1).unwrap();
    let producer = producer(&brokers);
    let mut expected = BTreeSet::new();
    let mut largest = 0;
    for m in 0..12 {
        let payload = otlp_message(m, 1);
        largest = largest.max(payload.len());
        expected.extend(expected_ids(&payload));
        produce(&producer, "otlp_spans", 0, &payload).await;
    }
    let mut cfg = config(&brokers, "bytes");
    cfg.batch_max_messages = 100;
    cfg.batch_max_wait = Duration::from_secs(1);
    cfg.batch_max_bytes = 2 * largest + 1;
    let sink = Arc::new(TestSink::default());
    let running = start(cfg, sink.clone());
    wait_until("every event", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;
    assert_eq!(sink.unique_ids(), expected);
    let most = sink.max_rows.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&most),
        "a batch carried {most} single-span messages past a budget of two and a bit"
    );
}

/// A message whose resource carries a large attribute normalises to many times its size (the attribute is
/// copied into each of its events). A batch of such messages is delivered in parts that each hold about
/// `batch_max_bytes` of events, not in one call holding them all; each part is committed before the next
/// is delivered, and across a crash every event arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_events_outgrow_its_byte_budget_is_delivered_in_parts() {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("expanding_spans", 1, 1).unwrap();
    let producer = producer(&brokers);
    const MESSAGES: usize = 12;
    const SPANS: usize = 20;
    let mut expected = BTreeSet::new();
    let mut payload_bytes = 0;
    for m in 0..MESSAGES {
        let mut req = otlp_request(m, SPANS);
        let notes = format!("{m} {}", "deployment notes ".repeat(1200));
        for rs in &mut req.resource_spans {
            rs.resource
                .get_or_insert_with(Default::default)
                .attributes
                .push(KeyValue {
                    key: "deployment.notes".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(notes.clone())),
                    }),
                    ..Default::default()
                });
        }
        let payload = req.encode_to_vec();
        payload_bytes += payload.len();
        expected.extend(expected_ids(&payload));
        produce(&producer, "expanding_spans", 0, &payload).await;
    }
    let budget = 1024 * 1024;
    assert!(
        payload_bytes < budget,
        "the payloads ({payload_bytes} bytes) fit one batch, so only their events can split it"
    );
    let mut cfg = config_on(&brokers, "expanding", "expanding_spans");
    cfg.batch_max_messages = 100;
    cfg.batch_max_wait = Duration::from_secs(1);
    cfg.batch_max_bytes = budget;
    let splits_before = metrics::BATCH_SPLITS.get();

    // First life: the first part becomes durable and is committed; the second hangs in the sink and the
    // process dies.
    let first = Arc::new(TestSink {
        hang_after: Some(1),
        ..TestSink::default()
    });
    let running = start(cfg.clone(), first.clone());
    wait_until("the second part in flight", WAIT, || {
        first.calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    running.task.abort();
    let _ = running.task.await;
    let delivered = first.event_ids().len();
    assert!(
        (1..=4 * SPANS).contains(&delivered),
        "the first part carried {delivered} events of ~20 KiB each against a budget of 1 MiB"
    );
    assert_eq!(delivered % SPANS, 0, "parts are whole messages");
    assert!(
        metrics::BATCH_SPLITS.get() > splits_before,
        "the split is counted"
    );
    assert_eq!(
        committed(&brokers, "expanding", "expanding_spans", 1),
        vec![Offset::Offset((delivered / SPANS) as i64)],
        "the first part's offsets are stored before the second is delivered"
    );

    // Second life: the rest, from the committed offset, in parts of the same bound.
    let second = Arc::new(TestSink::default());
    let running = start(cfg, second.clone());
    wait_until("every event", WAIT, || {
        first.unique_ids().len() + second.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;
    let (a, b) = (first.unique_ids(), second.unique_ids());
    assert!(a.is_disjoint(&b), "a committed part is not read again");
    assert_eq!(a.union(&b).cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(second.event_ids().len(), b.len(), "no event twice");
    let most = second.max_rows.load(Ordering::SeqCst);
    assert!(
        most <= 4 * SPANS,
        "one sink call carried {most} events of ~20 KiB each past a budget of 1 MiB"
    );
    assert_eq!(
        committed(&brokers, "expanding", "expanding_spans", 1),
        vec![Offset::Offset(MESSAGES as i64)]
    );
}

/// While the dead-letter topic refuses a poison message's copy, the consumer retries it without holding a
/// pipeline slot (OTLP requests need them); once the topic takes it, the batch's events are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_retries_do_not_hold_a_pipeline_slot() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("held_spans", 1, 1).unwrap();
    mock.create_topic("held_dlq", 1, 1).unwrap();
    mock.topic_error(
        "held_dlq",
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .unwrap();
    let producer = producer(&brokers);
    produce(&producer, "held_spans", 0, b"\x0a\xff\xff not protobuf").await;
    let good = otlp_message(1, 2);
    produce(&producer, "held_spans", 0, &good).await;
    let mut cfg = config_on(&brokers, "held", "held_spans");
    cfg.dlq_topic = "held_dlq".into();
    let sink = Arc::new(TestSink::default());
    let running = start(cfg, sink.clone());
    wait_until("the batch admitted", WAIT, || {
        sink.admitted.load(Ordering::SeqCst) >= 1
    })
    .await;
    // The dead letter fails at once (the topic's metadata answers not authorised) and is retried after
    // 0.1, 0.2, 0.4 s...: two retries counted after the admission means the first wait has begun.
    let retries = || metrics::RETRIES.with_label_values(&["dlq"]).get();
    let before = retries();
    wait_until("dead-letter retries", WAIT, || retries() >= before + 2).await;
    assert_eq!(
        committed(&brokers, "held", "held_spans", 1),
        vec![Offset::Invalid],
        "nothing committed while the dead letter waits"
    );
    assert_eq!(
        sink.admissions.load(Ordering::SeqCst),
        0,
        "no pipeline slot held while the dead letter is retried"
    );
    let paused = || gathered_gauge("vigil_kafka_paused", "held_spans", 0);
    assert_eq!(
        paused(),
        Some(1.0),
        "nothing is fetched while the dead letter waits"
    );
    mock.topic_error(
        "held_dlq",
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
    )
    .unwrap();
    wait_until("the commit once the dead letter was taken", WAIT, || {
        committed(&brokers, "held", "held_spans", 1) == vec![Offset::Offset(2)]
    })
    .await;
    assert_eq!(paused(), None, "resumed once the dead letter was taken");
    running.stop().await;
    assert_eq!(
        sink.unique_ids(),
        expected_ids(&good).into_iter().collect::<BTreeSet<_>>()
    );
    let letter = first_message(&brokers, "held_dlq");
    assert_eq!(header(&letter, dlq::HEADER_OFFSET), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_crash_resumes_from_the_committed_offset_without_gap_or_replay() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_spans", 1, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let mut expected = BTreeSet::new();
    for m in 0..12 {
        let payload = otlp_message(m, 1);
        expected.extend(expected_ids(&payload));
        produce(&producer, "otlp_spans", 0, &payload).await;
    }

    // First life: two batches become durable, the third hangs inside the sink, then the process dies.
    let mut cfg = config(&brokers, "restart");
    cfg.batch_max_messages = 3;
    let first = Arc::new(TestSink {
        hang_after: Some(2),
        ..TestSink::default()
    });
    let running = start(cfg.clone(), first.clone());
    wait_until("a write in flight", WAIT, || {
        first.calls.load(Ordering::SeqCst) >= 3
    })
    .await;
    running.task.abort();
    let _ = running.task.await;
    assert_eq!(
        first.unique_ids().len(),
        6,
        "two batches of three single-span messages"
    );

    let second = Arc::new(TestSink::default());
    let running = start(cfg, second.clone());
    wait_until("the rest", WAIT, || {
        first.unique_ids().len() + second.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;

    let (a, b) = (first.unique_ids(), second.unique_ids());
    assert!(
        a.is_disjoint(&b),
        "committed batches are not replayed: {:?}",
        a.intersection(&b).collect::<Vec<_>>()
    );
    assert_eq!(
        a.union(&b).cloned().collect::<BTreeSet<_>>(),
        expected,
        "no gap"
    );
    assert_eq!(
        committed(&brokers, "restart", "otlp_spans", 1),
        vec![Offset::Offset(12)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_one_group_split_the_partitions_and_see_every_message_once() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_spans", 4, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let (a, b) = (Arc::new(TestSink::default()), Arc::new(TestSink::default()));
    let running_a = start(config(&brokers, "pair"), a.clone());
    let running_b = start(config(&brokers, "pair"), b.clone());
    // Let both join before producing, so that no rebalance moves a partition while it is consumed.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let mut expected = BTreeSet::new();
    let mut partition_of = BTreeMap::new();
    for m in 0..40 {
        let payload = otlp_message(m, 1);
        for id in expected_ids(&payload) {
            partition_of.insert(id.clone(), m % 4);
            expected.insert(id);
        }
        produce(&producer, "otlp_spans", (m % 4) as i32, &payload).await;
    }
    wait_until("every message", WAIT, || {
        a.unique_ids().len() + b.unique_ids().len() >= expected.len()
    })
    .await;
    running_a.stop().await;
    running_b.stop().await;

    let (ids_a, ids_b) = (a.unique_ids(), b.unique_ids());
    assert!(ids_a.is_disjoint(&ids_b), "a message was consumed by both");
    assert_eq!(
        ids_a.union(&ids_b).cloned().collect::<BTreeSet<_>>(),
        expected
    );
    let partitions = |sink: &TestSink| -> BTreeSet<usize> {
        sink.unique_ids()
            .iter()
            .map(|id| partition_of[id])
            .collect()
    };
    let (pa, pb) = (partitions(&a), partitions(&b));
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "both consumers got partitions: {pa:?} {pb:?}"
    );
    assert!(pa.is_disjoint(&pb), "partitions are split: {pa:?} {pb:?}");
    assert_eq!(
        committed(&brokers, "pair", "otlp_spans", 4),
        vec![Offset::Offset(10); 4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_events_from_otlp_logs_in_proto_and_json_arrive_once_and_lag_and_commit_latency_are_reported(
) {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("otlp_logs", 1, 1).unwrap();
    mock.create_topic("otlp_logs_json", 1, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let mut expected = BTreeSet::new();
    for m in 0..5 {
        let req = otlp_logs_message(m, 3);
        expected.extend(expected_log_ids(&req));
        produce(&producer, "otlp_logs", 0, &req.encode_to_vec()).await;
    }
    // The Collector's otlp_json encoding of LogsData.
    for m in 5..7 {
        let req = otlp_logs_message(m, 2);
        expected.extend(expected_log_ids(&req));
        produce(
            &producer,
            "otlp_logs_json",
            0,
            &serde_json::to_vec(&req).unwrap(),
        )
        .await;
    }
    assert_eq!(
        expected.len(),
        5 * 3 + 2 * 2,
        "every log record is an AI event with its own id"
    );

    let sink = Arc::new(TestSink::default());
    let mut cfg = config(&brokers, "logs");
    cfg.topics = vec![
        TopicConfig::named("otlp_logs", TopicEncoding::OtlpProto, Signal::Logs),
        TopicConfig::named("otlp_logs_json", TopicEncoding::OtlpJson, Signal::Logs),
    ];
    // Lag comes from librdkafka's statistics: report them often enough for the test to see them.
    cfg.properties
        .insert("statistics.interval.ms".into(), "100".into());
    let (events_before, commits_before) = (
        metrics::EVENTS.with_label_values(&["otlp_logs"]).get(),
        gathered_commit_samples(),
    );
    let running = start(cfg, sink.clone());
    wait_until("every log event", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    // Consumed to the end: each partition's lag gauge exists and is zero. (Other tests' consumers in this
    // process reset the gauges on their own statistics, so wait for one of ours.)
    wait_until("zero lag on both topics", WAIT, || {
        gathered_gauge("vigil_kafka_lag", "otlp_logs", 0) == Some(0.0)
            && gathered_gauge("vigil_kafka_lag", "otlp_logs_json", 0) == Some(0.0)
    })
    .await;
    running.stop().await;

    assert_eq!(sink.unique_ids(), expected);
    assert_eq!(
        sink.event_ids().len(),
        expected.len(),
        "no log event delivered twice"
    );
    let kinds: BTreeSet<String> = column(&sink.accepted.lock().unwrap(), col::KIND)
        .into_iter()
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["policy".to_owned()]),
        "guardrail findings are policy events"
    );
    assert_eq!(
        committed(&brokers, "logs", "otlp_logs", 1),
        vec![Offset::Offset(5)]
    );
    assert_eq!(
        committed(&brokers, "logs", "otlp_logs_json", 1),
        vec![Offset::Offset(2)]
    );
    assert_eq!(
        metrics::EVENTS.with_label_values(&["otlp_logs"]).get() - events_before,
        15
    );
    assert!(
        gathered_commit_samples() > commits_before,
        "commit latency histogram has no new samples"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_sink_pauses_the_partitions_without_reading_ahead_then_resumes_and_delivers_everything_once(
) {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    mock.create_topic("bp_spans", 2, 1).unwrap();
    mock.create_topic("vigil_dlq", 1, 1).unwrap();
    let producer = producer(&brokers);
    let mut expected = BTreeSet::new();
    for m in 0..12 {
        let payload = otlp_message(m, 1);
        expected.extend(expected_ids(&payload));
        produce(&producer, "bp_spans", (m % 2) as i32, &payload).await;
    }

    // A store that is slow, and refuses everything (overloaded) at first.
    let sink = Arc::new(TestSink {
        delay: Duration::from_millis(20),
        ..TestSink::default()
    });
    sink.overloaded.store(true, Ordering::SeqCst);
    let mut cfg = config_on(&brokers, "backpressure", "bp_spans");
    cfg.properties
        .insert("statistics.interval.ms".into(), "100".into());
    let retries_before = metrics::RETRIES.with_label_values(&["overloaded"]).get();
    let running = start(cfg.clone(), sink.clone());
    wait_until("three refused attempts", WAIT, || {
        sink.refused.lock().unwrap().len() >= 3
    })
    .await;
    let paused = |partition| gathered_gauge("vigil_kafka_paused", "bp_spans", partition);
    assert_eq!(
        (paused(0), paused(1)),
        (Some(1.0), Some(1.0)),
        "every assigned partition is paused while the sink refuses"
    );

    // Messages written while paused must be fetched after the resume.
    for m in 12..18 {
        let payload = otlp_message(m, 1);
        expected.extend(expected_ids(&payload));
        produce(&producer, "bp_spans", (m % 2) as i32, &payload).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        // No reading ahead: every attempt is the same batch of at most batch_max_messages messages.
        let refused = sink.refused.lock().unwrap();
        assert!(
            !refused[0].is_empty() && refused[0].len() <= cfg.batch_max_messages,
            "refused batch: {:?}",
            refused[0]
        );
        assert!(
            refused.iter().all(|ids| *ids == refused[0]),
            "the consumer read on while refused: {refused:?}"
        );
    }
    assert!(sink.accepted.lock().unwrap().is_empty());
    assert_eq!(
        committed(&brokers, "backpressure", "bp_spans", 2),
        vec![Offset::Invalid; 2],
        "nothing committed while refused"
    );

    sink.overloaded.store(false, Ordering::SeqCst);
    wait_until("every event after the sink recovered", WAIT, || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    assert_eq!((paused(0), paused(1)), (None, None), "partitions resumed");
    wait_until("zero lag on both partitions", WAIT, || {
        gathered_gauge("vigil_kafka_lag", "bp_spans", 0) == Some(0.0)
            && gathered_gauge("vigil_kafka_lag", "bp_spans", 1) == Some(0.0)
    })
    .await;
    running.stop().await;

    assert_eq!(sink.unique_ids(), expected);
    assert_eq!(
        sink.event_ids().len(),
        expected.len(),
        "every message stored exactly once across pause and resume"
    );
    assert_eq!(
        committed(&brokers, "backpressure", "bp_spans", 2),
        vec![Offset::Offset(9); 2]
    );
    assert_eq!(
        sink.max_in_flight.load(Ordering::SeqCst),
        1,
        "one sink call at a time, however slow"
    );
    assert!(
        sink.max_rows.load(Ordering::SeqCst) <= cfg.batch_max_messages,
        "a call carried more than one batch"
    );
    assert!(metrics::RETRIES.with_label_values(&["overloaded"]).get() - retries_before >= 3);
}

/// The same consumer against a real broker (tansu, Kafka, Redpanda): `VIGIL_TEST_KAFKA_BROKERS=host:port
/// cargo test -p vigil-ingest kafka -- --ignored`. Creates its own topics through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker in VIGIL_TEST_KAFKA_BROKERS"]
async fn real_broker_delivers_dead_letters_and_commits() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = std::env::var("VIGIL_TEST_KAFKA_BROKERS").expect("VIGIL_TEST_KAFKA_BROKERS");
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (spans, dlq_topic, group) = (
        format!("vt_spans_{run_id}"),
        format!("vt_dlq_{run_id}"),
        format!("vt_{run_id}"),
    );
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin");
    let created = admin
        .create_topics(
            &[
                NewTopic::new(&spans, 2, TopicReplication::Fixed(1)),
                NewTopic::new(&dlq_topic, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer = producer(&brokers);
    let mut expected = BTreeSet::new();
    for m in 0..20 {
        let payload = otlp_message(m, 3);
        expected.extend(expected_ids(&payload));
        produce(&producer, &spans, (m % 2) as i32, &payload).await;
        if m == 10 {
            produce(&producer, &spans, 0, b"\x0a\xff\xff\x01").await;
        }
    }
    let sink = Arc::new(TestSink::default());
    let mut cfg = config_on(&brokers, &group, &spans);
    cfg.dlq_topic = dlq_topic.clone();
    let running = start(cfg, sink.clone());
    wait_until("every event", Duration::from_secs(60), || {
        sink.unique_ids().len() >= expected.len()
    })
    .await;
    running.stop().await;
    assert_eq!(sink.unique_ids(), expected);
    assert_eq!(sink.event_ids().len(), expected.len());
    assert_eq!(
        committed(&brokers, &group, &spans, 2),
        vec![Offset::Offset(11), Offset::Offset(10)]
    );
    let letter = first_message(&brokers, &dlq_topic);
    assert_eq!(header(&letter, dlq::HEADER_TOPIC), spans);
    assert_eq!(header(&letter, dlq::HEADER_OFFSET), "6");
}
