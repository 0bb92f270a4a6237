//! `vigil bench`: the end-to-end benchmark. It starts a real server in this process on loopback ports and
//! a temporary data directory, drives it with concurrent OTLP clients (gRPC and HTTP protobuf), and prints
//! the figures the issues ask for. Load generator and server share the machine, as they would in CI.
//!
//! `vigil bench ingest` — sustained events/s with every event durable, ack latency, event-to-alert latency,
//! peak RSS, stored bytes against OTLP/JSON bytes. `vigil bench sql` — dashboard queries over N stored events.
//! `vigil bench stages` — the server's CPU per event, stage by stage, on one thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;
use vigil_ingest::otlp::grpc::RawCodec;
use vigil_ingest::synth::traces_request;
use vigil_ingest::EventRow;

use crate::config::Config;
use crate::demo::traffic::{Incident, Traffic, SUMMARY_RESPONSE};
use crate::{metrics, serve};

mod stages;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// End-to-end ingest: OTLP clients -> detection -> WAL -> Parquet.
    Ingest(IngestArgs),
    /// Typical dashboard queries over many stored events.
    Sql(SqlArgs),
    /// The detection stage alone, on one thread: events/s per core.
    Detect(DetectArgs),
    /// The server's CPU per event, stage by stage, on one thread (no network, no disk).
    Stages(stages::StagesArgs),
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// How long to measure (after a short warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Events per batch (what one OTLP request becomes).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Prompt size in bytes.
    #[arg(long, default_value_t = 500)]
    pub prompt_bytes: usize,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// How long to measure (after a short warm-up).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients; half send gRPC, half HTTP protobuf. By default three per core: enough requests
    /// in flight to keep every core busy while some wait on the WAL's fsync. Past that, more clients add only
    /// queueing: on a 2-core host 8 clients sustained the same rate as 6 (132,300 against 133,900 events/s,
    /// the means of four alternated runs each) with ack p99 61-72 ms instead of 46-52 ms and peak RSS
    /// 890-1,097 MiB instead of 800-856 MiB, as the flushes lost their share of the cores and grew.
    #[arg(long)]
    pub clients: Option<usize>,
    /// Events per request: 512 is what an OpenTelemetry SDK's batch span processor sends at most
    /// (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`), so it is what a busy instrumented service sends.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Target events/s across all clients (0: as fast as the server acknowledges).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Prompt size in bytes.
    #[arg(long, default_value_t = 500)]
    pub prompt_bytes: usize,
    /// The store's write buffer (`store.flush_bytes`), which bounds most of the server's memory.
    #[arg(long)]
    pub flush_bytes: Option<usize>,
    /// Run the store's compaction and retention pass this often during the run (`store.maintenance_interval`,
    /// 5 min by default, which a short run never reaches), so the rate, latencies and peak RSS include a
    /// compaction sharing the cores and memory with ingest, as they do in a long-running server.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub maintenance_interval: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Events to store before querying.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: usize,
    /// Runs per query (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Keep the data directory here instead of a temporary one (re-used when it already holds events).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Ingest(args) => ingest(args).await,
        BenchCommand::Sql(args) => sql(args).await,
        BenchCommand::Detect(args) => tokio::task::spawn_blocking(move || detect(args)).await?,
        BenchCommand::Stages(args) => {
            tokio::task::spawn_blocking(move || stages::stages(args)).await?
        }
    }
}

/// `batch` with its `time` column moved by `by_us`.
fn shift_time(batch: &arrow::array::RecordBatch, by_us: i64) -> Result<arrow::array::RecordBatch> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    let idx = batch.schema().index_of(vigil_ingest::schema::col::TIME)?;
    let time = batch.column(idx).as_primitive::<TimestampMicrosecondType>();
    let shifted = time
        .unary::<_, TimestampMicrosecondType>(|t| t + by_us)
        .with_timezone_opt(time.timezone().map(str::to_string));
    let mut columns = batch.columns().to_vec();
    columns[idx] = std::sync::Arc::new(shifted);
    Ok(arrow::array::RecordBatch::try_new(batch.schema(), columns)?)
}

/// The demo company's traffic (with its inventory and role policies, and an incident every 20 batches),
/// normalised from OTLP exactly as the receivers do, then `DetectionStage::process` in a loop on this one
/// thread: content scanning, inventory, role policies, baselines, bursts and drift samples per event.
fn detect(args: DetectArgs) -> Result<()> {
    let demo: Config = toml::from_str(crate::demo::DEMO_CONFIG)
        .context("parsing the embedded demo configuration")?;
    let stage = vigil_detect::DetectionStage::new(demo.detect.clone());
    let mut traffic = Traffic::new(11);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
    let start = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    let ctx = vigil_ingest::NormalizeContext::default();
    let mut batches = Vec::new();
    let mut prompt_bytes = 0usize;
    let mut prompts = 0usize;
    for k in 0..200usize {
        let t = start + k as i64 * 1_000_000;
        let mut rows = traffic.normal(t, args.batch);
        if k % 20 == 0 {
            let extra = traffic.incident(t, Incident::ALL[(k / 20) % Incident::ALL.len()]);
            rows.truncate(args.batch.saturating_sub(extra.len()));
            rows.extend(extra);
        }
        pad_prompts(&mut rows, args.prompt_bytes, &mut rng);
        for r in &rows {
            if let Some(p) = &r.prompt_text {
                prompt_bytes += p.len();
                prompts += 1;
            }
        }
        let request = vigil_ingest::wire::convert(&traces_request(&rows))?;
        batches.push(vigil_ingest::normalize::traces(&request, &ctx).batch);
    }
    println!(
        "vigil bench detect: {} batches of {} events, {:.0}-byte prompts on {:.0} % of events, one thread, {} s",
        batches.len(),
        args.batch,
        prompt_bytes as f64 / prompts.max(1) as f64,
        100.0 * prompts as f64 / (batches.len() * args.batch) as f64,
        args.duration.as_secs()
    );
    let warmup = Instant::now();
    for b in batches.iter().take(20) {
        stage.process(b);
    }
    let warm = warmup.elapsed();
    let (mut events, mut alerts) = (0usize, 0usize);
    let mut busy = Duration::ZERO;
    let span_us = batches.len() as i64 * 1_000_000;
    'outer: for pass in 0i64.. {
        for b in &batches {
            // Each pass moves on in time, so baselines and windows see time advance as in production.
            let b = shift_time(b, pass * span_us)?;
            let t = Instant::now();
            let d = stage.process(&b);
            busy += t.elapsed();
            events += b.num_rows();
            alerts += d.alerts.len();
            if busy >= args.duration {
                break 'outer;
            }
        }
    }
    let elapsed = busy.as_secs_f64();
    let (p50, p99) = stage.latency_quantiles();
    println!("machine:              {}", machine());
    println!(
        "warm-up:              20 batches in {:.2} s",
        warm.as_secs_f64()
    );
    println!("detection stage:      {:.0} events/s on one core ({events} events in {elapsed:.1} s, {alerts} alerts)", events as f64 / elapsed);
    println!(
        "per-batch latency:    p50 {:.1} ms, p99 {:.1} ms",
        p50 as f64 / 1e3,
        p99 as f64 / 1e3
    );
    Ok(())
}

/// The load generator's ingest token (only its hash is in the server's configuration).
const BENCH_TOKEN: &str = "vigil-bench-ingest-token";

fn bench_config(data_dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.data_dir = data_dir.to_path_buf();
    c.store.data_dir = data_dir.to_path_buf();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal");
    c.server.admin_addr = any;
    c.otlp.grpc_addr = any;
    c.otlp.http_addr = any;
    c.sql.pg_addr = None;
    // Secure by default, as in production: every request carries a token that is checked.
    c.auth.tokens = vec![vigil_ingest::security::ConfiguredToken {
        name: "bench".into(),
        scopes: vec![vigil_ingest::security::Scope::Ingest],
        hash: vigil_ingest::security::tokens::TokenHash::of(BENCH_TOKEN).to_string(),
    }];
    c.pipeline.max_in_flight = 256;
    c.pipeline.admission_wait = Duration::from_secs(5);
    c
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU time this process has used (user + system), in seconds, from `/proc/self/stat` (Linux reports it in
/// USER_HZ ticks, 100 per second on every architecture Linux exposes to user space).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces: state is the first,
            // utime the 12th and stime the 13th.
            let rest = s.rsplit_once(')')?.1;
            let mut f = rest.split_whitespace().skip(11);
            let user: u64 = f.next()?.parse().ok()?;
            let system: u64 = f.next()?.parse().ok()?;
            Some((user + system) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// Pads every prompt to `bytes` with words drawn at random, so no two prompts are alike: a padding that
/// repeated would let zstd store prompts for nearly nothing and flatter the bytes-per-event figure.
fn pad_prompts(rows: &mut [EventRow], bytes: usize, rng: &mut impl rand::Rng) {
    pad_prompts_with(rows, bytes, |p, len| p.push_str(&random_words(len, rng)));
}

/// Pads every prompt to exactly `bytes` (cutting longer ones) with what `pad` appends: at least the length
/// it is asked for.
fn pad_prompts_with(rows: &mut [EventRow], bytes: usize, mut pad: impl FnMut(&mut String, usize)) {
    for p in rows.iter_mut().filter_map(|r| r.prompt_text.as_mut()) {
        if p.len() < bytes {
            let missing = bytes - p.len();
            pad(p, missing);
        }
        let mut cut = bytes.max(1).min(p.len());
        while !p.is_char_boundary(cut) {
            cut -= 1;
        }
        p.truncate(cut);
    }
}

/// At least `len` bytes of prose: a space and a word drawn at random from a few office-work words, and
/// now and then a number, over and over. ASCII letters, digits and spaces only, so it is the same bytes
/// inside a JSON string as outside one.
fn random_words(len: usize, rng: &mut impl rand::Rng) -> String {
    const WORDS: &[&str] = &[
        "please",
        "summarise",
        "the",
        "quarterly",
        "report",
        "for",
        "our",
        "customer",
        "accounts",
        "and",
        "list",
        "every",
        "risk",
        "you",
        "find",
        "in",
        "contract",
        "draft",
        "attached",
        "below",
        "with",
        "clause",
        "numbers",
        "explain",
        "why",
        "deployment",
        "failed",
        "after",
        "migration",
        "to",
        "new",
        "cluster",
        "region",
        "write",
        "a",
        "polite",
        "reply",
        "about",
        "refund",
        "delay",
        "order",
        "invoice",
        "ticket",
        "escalation",
        "policy",
        "compare",
        "pricing",
        "tiers",
        "against",
        "competitor",
        "offer",
        "translate",
        "this",
        "paragraph",
        "into",
        "german",
        "french",
        "spanish",
        "review",
        "pull",
        "request",
        "test",
        "coverage",
        "latency",
        "regression",
        "dashboard",
        "metrics",
        "budget",
        "forecast",
        "hiring",
        "plan",
        "onboarding",
        "checklist",
        "security",
        "incident",
        "timeline",
        "root",
        "cause",
        "action",
        "items",
        "meeting",
        "notes",
        "from",
        "yesterday",
        "product",
        "roadmap",
        "feature",
        "request",
        "bug",
        "stack",
        "trace",
        "error",
        "message",
        "database",
        "query",
        "index",
        "slow",
        "cache",
        "memory",
        "leak",
        "service",
        "api",
        "endpoint",
        "schema",
        "change",
        "backfill",
        "customer",
        "churn",
        "survey",
        "results",
        "marketing",
        "campaign",
        "email",
        "subject",
        "line",
        "tone",
        "shorter",
        "clearer",
        "bullet",
        "points",
        "table",
        "columns",
        "owner",
        "deadline",
        "status",
        "blocked",
    ];
    let mut text = String::with_capacity(len + 16);
    while text.len() < len {
        text.push(' ');
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        if rng.random_bool(0.08) {
            text.push_str(&format!(" {}", rng.random_range(1..100_000u32)));
        }
    }
    text
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The `authorization` value the gRPC clients send (parsed once, not per request).
fn grpc_authorization() -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {BENCH_TOKEN}")
        .parse()
        .context("the bench token is ASCII")
}

/// One export over gRPC with the bench token; true when the server acknowledged it.
async fn grpc_export(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    authorization: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    body: Vec<u8>,
) -> bool {
    if grpc.ready().await.is_err() {
        return false;
    }
    let mut request = tonic::Request::new(bytes::Bytes::from(body));
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
    // Pre-encoded requests go out as they are, through the receiver's own pass-through codec: the clients then
    // cost what a real exporter's transport costs, not a decode and re-encode of every request.
    grpc.unary(request, path, RawCodec).await.is_ok()
}

/// Detectors that alert when a window closes; event-to-alert leaves them out.
const WINDOW_DETECTORS: [&str; 2] = ["behavior_anomaly", "model_drift"];

/// The request counter in an OTLP span's event id (trace id hex + span id hex, the span id being
/// `counter << 20 | span` as [`Template::unique`] writes it).
fn request_counter(event_id: &str) -> Option<u64> {
    let span = event_id.get(event_id.len().checked_sub(16)?..)?;
    u64::from_str_radix(span, 16).ok().map(|id| id >> 20)
}

/// Pre-encoded requests, so the clients measure the server rather than their own encoding.
struct Workload {
    requests: Vec<Template>,
    /// Prose that each sent request's prompt padding is cut from, in turn.
    text: Vec<u8>,
    events_per_request: usize,
    json_bytes_per_event: f64,
    /// When the templates' times were taken: a send moves them on by the time since.
    created: Instant,
}

/// The prose prompt padding is cut from: enough for about seventy requests of 512 events before a piece
/// comes round again, far more than one Parquet page (zstd's window there) holds.
const PADDING_TEXT_BYTES: usize = 16 << 20;

/// The byte that marks prompt padding in a template (JSON and protobuf carry it as it is, and no prompt of
/// the demo's holds it).
const PADDING_MARK: u8 = b'~';

/// The shortest run of [`PADDING_MARK`] taken for padding.
const MIN_PADDING_RUN: usize = 8;

fn workload(batch: usize, prompt_bytes: usize, distinct: usize) -> Workload {
    let mut traffic = Traffic::new(7);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let now = chrono::Utc::now().timestamp_micros();
    let mut requests = Vec::with_capacity(distinct);
    let mut json_bytes = 0usize;
    let mut events = 0usize;
    for k in 0..distinct {
        let mut rows = traffic.normal(now + k as i64 * 1000, batch);
        // About one incident per 20 requests, so the event-to-alert path is exercised.
        if k % 20 == 0 {
            let kind = Incident::ALL[(k / 20) % 4];
            let extra = traffic.incident(now, kind);
            rows.truncate(batch.saturating_sub(extra.len()));
            rows.extend(extra);
        }
        // Marked here, filled with fresh prose at each send: prompts to `prompt_bytes`, and the normal
        // chats' answer at its own length (one string for every answer would compress to nothing).
        pad_prompts_with(&mut rows, prompt_bytes, |p, len| {
            p.extend(std::iter::repeat_n(char::from(PADDING_MARK), len))
        });
        for r in rows.iter_mut() {
            if let Some(answer) = r.response_text.as_mut().filter(|a| *a == SUMMARY_RESPONSE) {
                *answer = char::from(PADDING_MARK).to_string().repeat(answer.len());
            }
        }
        let req = traces_request(&rows);
        json_bytes += serde_json::to_vec(&req).map(|v| v.len()).unwrap_or(0);
        events += rows.len();
        requests.push(Template::new(req));
    }
    Workload {
        requests,
        text: random_words(PADDING_TEXT_BYTES, &mut rng).into_bytes(),
        events_per_request: batch,
        json_bytes_per_event: json_bytes as f64 / events.max(1) as f64,
        created: Instant::now(),
    }
}

impl Workload {
    /// Request `counter`: a template with trace and span ids, times and prose of its own.
    fn request(&self, counter: u64) -> Vec<u8> {
        let since_ns = self.created.elapsed().as_nanos() as u64;
        self.requests[counter as usize % self.requests.len()].unique(counter, &self.text, since_ns)
    }
}

/// An encoded request, where its span ids sit and where its prompt padding sits, so each send is one copy
/// plus fresh ids and fresh prose. Before, the 64 templates went out with the same prompts over and over:
/// a flush that sorted by time put the copies side by side, and zstd stored them for nearly nothing.
struct Template {
    bytes: Vec<u8>,
    span_ids_at: Vec<usize>,
    /// Where each span's trace id sits (spans of one trace share it, and keep sharing it).
    trace_ids_at: Vec<usize>,
    /// Where each span's start and end times sit (fixed64, little-endian), with their template values.
    times_at: Vec<(usize, u64)>,
    /// (offset, length) of each run of padding.
    padding_at: Vec<(usize, usize)>,
    padding_bytes: usize,
}

impl Template {
    /// Encodes `req` with marker span ids and finds them in the bytes. A marker starts with 0xF5, which no
    /// UTF-8 string holds, and each is found as a whole `span_id` field (tag 2, length 8), in span order.
    fn new(mut req: ExportTraceServiceRequest) -> Template {
        let marker = |j: u32| {
            let mut m = [0xF5, 0xA5, 0xF5, 0xA5, 0, 0, 0, 0];
            m[4..].copy_from_slice(&j.to_be_bytes());
            m
        };
        let mut spans = 0u32;
        let mut times = Vec::new();
        for span in req
            .resource_spans
            .iter_mut()
            .flat_map(|rs| &mut rs.scope_spans)
            .flat_map(|ss| &mut ss.spans)
        {
            span.span_id = marker(spans).to_vec();
            times.push((span.start_time_unix_nano, span.end_time_unix_nano));
            spans += 1;
        }
        let bytes = req.encode_to_vec();
        let mut span_ids_at = Vec::with_capacity(spans as usize);
        let mut trace_ids_at = Vec::with_capacity(spans as usize);
        let mut times_at = Vec::with_capacity(2 * spans as usize);
        let find = |from: usize, field: &[u8]| {
            bytes[from..]
                .windows(field.len())
                .position(|w| w == field)
                .map(|p| from + p)
        };
        let mut from = 0;
        for j in 0..spans {
            let mut field = vec![0x12, 0x08];
            field.extend_from_slice(&marker(j));
            let at = find(from, &field)
                .map(|p| p + 2)
                .expect("every marker span id is in the encoding, in order");
            span_ids_at.push(at);
            // prost writes a span's fields in field order: trace_id (1, 16 bytes) just before span_id (2).
            if at >= 20 && bytes[at - 20..at - 18] == [0x0a, 0x10] {
                trace_ids_at.push(at - 18);
            }
            from = at + 8;
            // start_time_unix_nano (7) and end_time_unix_nano (8), fixed64, after the name and kind.
            let (start, end) = times[j as usize];
            for (tag, value) in [(0x39u8, start), (0x41u8, end)] {
                let mut field = vec![tag];
                field.extend_from_slice(&value.to_le_bytes());
                if let Some(p) = find(from, &field).filter(|_| value != 0) {
                    times_at.push((p + 1, value));
                    from = p + 9;
                }
            }
        }
        let mut padding_at = Vec::new();
        let mut at = 0;
        while let Some(start) = bytes[at..].iter().position(|&b| b == PADDING_MARK) {
            let start = at + start;
            let len = bytes[start..]
                .iter()
                .position(|&b| b != PADDING_MARK)
                .unwrap_or(bytes.len() - start);
            // A length, an id or a timestamp may hold the byte too, but not eight times in a row; the few
            // prompts padded by less keep their marks.
            if len >= MIN_PADDING_RUN {
                padding_at.push((start, len));
            }
            at = start + len;
        }
        let padding_bytes = padding_at.iter().map(|&(_, len)| len).sum();
        Template {
            bytes,
            span_ids_at,
            trace_ids_at,
            times_at,
            padding_at,
            padding_bytes,
        }
    }

    /// The request with span ids unique to `counter` (one id space per request), trace ids of its own,
    /// times `since_ns` later than the template's, and its prose cut from `text`, the next piece along
    /// for each request. Sent as they were, the templates' copies carried the same times, traces and
    /// prose: a flush sorted by time put them side by side and zstd stored them for nearly nothing.
    fn unique(&self, counter: u64, text: &[u8], since_ns: u64) -> Vec<u8> {
        let mut body = self.bytes.clone();
        let mut n = counter << 20;
        for &at in &self.span_ids_at {
            n += 1;
            body[at..at + 8].copy_from_slice(&n.to_be_bytes());
        }
        let mix = counter.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
        for &at in &self.trace_ids_at {
            for (b, m) in body[at..at + 8].iter_mut().zip(mix) {
                *b ^= m;
            }
        }
        for &(at, value) in &self.times_at {
            body[at..at + 8].copy_from_slice(&value.wrapping_add(since_ns).to_le_bytes());
        }
        let mut from = (counter as usize).wrapping_mul(self.padding_bytes) % text.len().max(1);
        for &(at, len) in &self.padding_at {
            if from + len > text.len() {
                from = 0;
            }
            body[at..at + len].copy_from_slice(&text[from..from + len]);
            from += len;
        }
        body
    }
}

async fn ingest(args: IngestArgs) -> Result<()> {
    let client_count = args
        .clients
        .unwrap_or_else(|| 3 * std::thread::available_parallelism().map_or(1, |n| n.get()));
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let mut config = bench_config(dir.path());
    if let Some(bytes) = args.flush_bytes {
        config.store.flush_bytes = bytes;
    }
    println!("store write buffer: {} MiB", config.store.flush_bytes >> 20);
    if let Some(every) = args.maintenance_interval {
        config.store.maintenance_interval = every;
        println!("compaction: every {every:?} during the run");
    }
    println!(
        "pipeline: max_in_flight {}, admission_wait {:?} (defaults {} and {:?}: more clients queue here)",
        config.pipeline.max_in_flight,
        config.pipeline.admission_wait,
        crate::config::PipelineConfig::default().max_in_flight,
        crate::config::PipelineConfig::default().admission_wait
    );
    let running = serve::start(config).await?;
    let b = running.bound.clone();
    println!(
        "vigil bench ingest: {} clients, {} events/request, ~{}-byte prompts, {} s",
        client_count,
        args.batch,
        args.prompt_bytes,
        args.duration.as_secs()
    );
    let work = Arc::new(workload(args.batch, args.prompt_bytes, 64));
    println!(
        "workload: OTLP/JSON would be {:.0} bytes/event",
        work.json_bytes_per_event
    );

    let acked = Arc::new(AtomicU64::new(0));
    // Every acknowledged event, warm-up included: what the store must hold at the end.
    let acked_total = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let counter = Arc::new(AtomicU64::new(1));
    let per_client_interval = if args.rate > 0 {
        Some(Duration::from_secs_f64(
            args.batch as f64 * client_count as f64 / args.rate as f64,
        ))
    } else {
        None
    };
    let authorization = grpc_authorization()?;
    // When each request was sent (scheduled, in a paced run), by its counter: an alert's evidence event id
    // ends with a span id that holds the counter, so event-to-alert is measured from the client's send.
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let event_to_alert = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let alert_watch = {
        let mut alerts = running.pipeline.subscribe_alerts();
        let (sent_at, event_to_alert, measuring) =
            (sent_at.clone(), event_to_alert.clone(), measuring.clone());
        tokio::spawn(async move {
            loop {
                let alert = match alerts.recv().await {
                    Ok(alert) => alert,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                let now = Instant::now();
                // Window detectors alert when a window closes, seconds after its first event: not the
                // latency of an event's own detection.
                if !measuring.load(Ordering::Relaxed)
                    || WINDOW_DETECTORS.contains(&alert.detector.as_str())
                {
                    continue;
                }
                let sent = alert
                    .evidence_event_ids
                    .iter()
                    .filter_map(|id| request_counter(id))
                    .filter_map(|counter| sent_at.lock().get(&counter).copied())
                    .min();
                if let Some(sent) = sent {
                    let us = now.saturating_duration_since(sent).as_micros() as u64;
                    let _ = event_to_alert.lock().record(us.max(1));
                }
            }
        })
    };
    let mut clients = Vec::new();
    for c in 0..client_count {
        let (work, acked, acked_total, refused, measuring, stop, latency, counter, sent_at) = (
            work.clone(),
            acked.clone(),
            acked_total.clone(),
            refused.clone(),
            measuring.clone(),
            stop.clone(),
            latency.clone(),
            counter.clone(),
            sent_at.clone(),
        );
        let grpc_addr = format!("http://{}", b.grpc);
        let http_url = format!("http://{}/v1/traces", b.http);
        let authorization = authorization.clone();
        clients.push(tokio::spawn(async move {
            let use_grpc = c % 2 == 0;
            let mut grpc = match use_grpc {
                true => tonic::transport::Channel::from_shared(grpc_addr)
                    .ok()
                    .map(|e| tonic::client::Grpc::new(e.connect_lazy())),
                false => None,
            };
            let http = reqwest::Client::new();
            // Paced clients start out of phase, as independent senders are: in phase, every client's request
            // would land at once and the figure would measure the burst's queue, not the server.
            let mut next = Instant::now()
                + per_client_interval.map_or(Duration::ZERO, |iv| {
                    iv.mul_f64(c as f64 / client_count as f64)
                });
            while !stop.load(Ordering::Relaxed) {
                if let Some(iv) = per_client_interval {
                    next += iv;
                    tokio::time::sleep_until(next.into()).await;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let body = work.request(n);
                // A paced request is timed from when it was due: a server that stalls delays the sends
                // behind it, and that wait is latency too (no coordinated omission).
                let t = match per_client_interval {
                    Some(_) => next,
                    None => Instant::now(),
                };
                // Sent while measuring: the warm-up's alerts are not the run's.
                if measuring.load(Ordering::Relaxed) {
                    sent_at.lock().insert(n, t);
                }
                let ok = match grpc.as_mut() {
                    Some(g) => grpc_export(g, &authorization, body).await,
                    None => http
                        .post(&http_url)
                        .bearer_auth(BENCH_TOKEN)
                        .header("content-type", "application/x-protobuf")
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success()),
                };
                if ok {
                    acked_total.fetch_add(work.events_per_request as u64, Ordering::Relaxed);
                }
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        acked.fetch_add(work.events_per_request as u64, Ordering::Relaxed);
                        let _ = latency
                            .lock()
                            .record((t.elapsed().as_micros() as u64).max(1));
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let events = acked.load(Ordering::Relaxed);
    let h = latency.lock().clone();
    let e2a = event_to_alert.lock().clone();
    alert_watch.abort();

    // Everything acknowledged is durable; flush to Parquet to measure what it costs at rest.
    let store = running.store.clone();
    running.stop().await?;
    // After the stop, so the high-water mark includes the last flush.
    let rss = peak_rss();
    let files = store.snapshot(vigil_store::Table::Events).files;
    let stored_events: u64 = files.iter().map(|f| f.rows).sum();
    let stored_bytes: u64 = files.iter().map(|f| f.size).sum();
    let bytes_per_event = stored_bytes as f64 / stored_events.max(1) as f64;

    println!();
    println!("machine:              {}", machine());
    println!("sustained:            {:.0} events/s ({} events acknowledged in {:.1} s, {} requests refused)", events as f64 / elapsed, events, elapsed, refused.load(Ordering::Relaxed));
    println!(
        "ack latency:          p50 {:.1} ms, p99 {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3
    );
    // Where the server spent it (admission to durable, warm-up included): the stage to work on next.
    let ms = |us: u64| us as f64 / 1e3;
    let parts: Vec<String> = [
        metrics::Stage::Decode,
        metrics::Stage::Detect,
        metrics::Stage::Store,
    ]
    .into_iter()
    .map(|stage| {
        let (p50, p99) = metrics::quantiles(stage);
        format!("{} {:.1}/{:.1}", stage.as_str(), ms(p50), ms(p99))
    })
    .collect();
    let (ack_p50, ack_p99) = metrics::quantiles(metrics::Stage::Ack);
    println!(
        "  in the server:      p50/p99 ms: ack {:.1}/{:.1} = {}",
        ms(ack_p50),
        ms(ack_p99),
        parts.join(" + ")
    );
    let (e2a_p50, e2a_p99) = metrics::quantiles(metrics::Stage::EventToAlert);
    println!(
        "event-to-alert:       p50 {:.1} ms, p99 {:.1} ms, from the client's send to the alert queued for \
         delivery ({} per-event alerts; in the server, from admission: p50 {:.1}, p99 {:.1} ms)",
        e2a.value_at_quantile(0.5) as f64 / 1e3,
        e2a.value_at_quantile(0.99) as f64 / 1e3,
        e2a.len(),
        ms(e2a_p50),
        ms(e2a_p99)
    );
    // CPU per event is what an event costs whether or not the run kept every core busy (so 2 cores / cost is
    // this machine's ceiling), and cores busy says whether the run was bound by CPU or by waiting. On a shared
    // host it still moves with the host's speed: compare runs taken together.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "cpu:                  {:.1} µs/event (server and load generator; {:.2} of {cores} cores busy)",
        cpu * 1e6 / events.max(1) as f64,
        cpu / elapsed
    );
    println!(
        "peak RSS:             {:.0} MiB (server and load generator: one process)",
        rss as f64 / (1024.0 * 1024.0)
    );
    println!("stored:               {:.1} bytes/event in Parquet vs {:.0} bytes/event as OTLP/JSON ({:.1} %)", bytes_per_event, work.json_bytes_per_event, 100.0 * bytes_per_event / work.json_bytes_per_event);
    let flushes = Flushes::gathered();
    println!(
        "flushes:              {} of {:.0} events, {:.2} s each (means, warm-up and the last flush included)",
        flushes.count,
        flushes.event_rows as f64 / flushes.count.max(1) as f64,
        flushes.seconds / flushes.count.max(1) as f64
    );
    compaction_line(
        &store,
        events as f64 / elapsed,
        cpu * 1e6 / events.max(1) as f64,
        work.json_bytes_per_event,
    )
    .await?;
    let acknowledged = acked_total.load(Ordering::Relaxed);
    let verdict = if stored_events == acknowledged {
        "every acknowledged event stored"
    } else {
        "MISMATCH"
    };
    println!("durable:              {stored_events} events stored of {acknowledged} acknowledged (warm-up included): {verdict}");
    if stored_events != acknowledged {
        anyhow::bail!("{acknowledged} events were acknowledged but {stored_events} are stored");
    }
    Ok(())
}

/// Compaction merges every flushed file once more (spliced in a busy hour, re-encoded in a quiet one), in the
/// background, every `maintenance_interval`: a 12 s run never reaches it, but a user running at the
/// sustained rate pays it on the same cores. So the run ends with one pass over what it stored, and prints
/// what it cost per event, the size at rest after it, and the rate the run's cores would carry if they paid
/// for it too. `run_us` is the run's CPU per event.
async fn compaction_line(
    store: &vigil_store::Store,
    rate: f64,
    run_us: f64,
    json_bytes_per_event: f64,
) -> Result<()> {
    let files_before = store.snapshot(vigil_store::Table::Events).files.len();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    store
        .compact()
        .await
        .context("compacting the run's files")?;
    let cpu = cpu_seconds() - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    let files = store.snapshot(vigil_store::Table::Events).files;
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    let per_event_us = cpu * 1e6 / rows.max(1) as f64;
    let bytes_per_event = bytes as f64 / rows.max(1) as f64;
    println!(
        "compaction:           {files_before} files -> {} in {wall:.1} s, {per_event_us:.1} µs/event of CPU; at rest \
         {bytes_per_event:.1} bytes/event ({:.1} %); the run's rate with it paid on the same cores: {:.0} events/s",
        files.len(),
        100.0 * bytes_per_event / json_bytes_per_event,
        rate * run_us / (run_us + per_event_us)
    );
    Ok(())
}

/// The store's flushes as its Prometheus metrics count them. Under full load flushes run back to back and the
/// events arriving during one make the next one, so their length, more than `store.flush_bytes`, says how
/// much the write buffer holds: the line that explains the peak RSS.
struct Flushes {
    count: u64,
    seconds: f64,
    event_rows: u64,
}

impl Flushes {
    fn gathered() -> Self {
        let mut f = Flushes {
            count: 0,
            seconds: 0.0,
            event_rows: 0,
        };
        for family in prometheus::gather() {
            for m in family.get_metric() {
                match family.name() {
                    "vigil_store_flush_seconds" => {
                        f.count += m.get_histogram().get_sample_count();
                        f.seconds += m.get_histogram().get_sample_sum();
                    }
                    "vigil_store_rows_flushed_total"
                        if m.get_label().iter().any(|l| l.value() == "events") =>
                    {
                        f.event_rows += m.get_counter().get_value() as u64;
                    }
                    _ => {}
                }
            }
        }
        f
    }
}

/// "N cores, <CPU model>": the line every figure is printed under, since figures mean nothing without it.
fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {}", cpu_model())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The dashboards' queries, with Grafana's macros expanded over the last 24 hours.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::hours(24);
    for file in crate::dashboards::FILES {
        for (title, sql) in crate::dashboards::sql_panels(file.1) {
            out.push((
                format!("{} / {}", file.0, title),
                crate::dashboards::expand_macros(&sql, from, to),
            ));
        }
    }
    out
}

async fn sql(args: SqlArgs) -> Result<()> {
    use arrow::array::AsArray;
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let mut config = bench_config(&dir);
    config.store.flush_rows = 1_000_000;
    let store = vigil_store::Store::open(config.store.clone()).await?;
    let have: u64 = store
        .snapshot(vigil_store::Table::Events)
        .files
        .iter()
        .map(|f| f.rows)
        .sum();
    if (have as usize) < args.events {
        println!(
            "storing {} events through the detection stage...",
            args.events - have as usize
        );
        let started = Instant::now();
        // Through detection as in production, so the alerts, baselines and inventory panels have data too.
        let demo: Config = toml::from_str(crate::demo::DEMO_CONFIG)
            .context("parsing the embedded demo configuration")?;
        let stage = vigil_detect::DetectionStage::new(demo.detect.clone());
        let mut traffic = Traffic::new(11);
        let now = chrono::Utc::now().timestamp_micros();
        let span_us = 24 * 3600 * 1_000_000i64;
        let chunk = 50_000;
        let mut done = have as usize;
        while done < args.events {
            let n = chunk.min(args.events - done);
            let t = now - span_us + (done as i64 * span_us / args.events as i64);
            let mut rows = traffic.normal(t, n);
            let k = done / chunk;
            if k.is_multiple_of(2) {
                rows.extend(traffic.incident(t, Incident::ALL[(k / 2) % Incident::ALL.len()]));
            }
            let mut builder = vigil_ingest::EventBatchBuilder::with_capacity(rows.len());
            for r in &rows {
                builder.push(r);
            }
            let d = stage.process(&builder.finish());
            let mut tables = vec![(vigil_store::Table::Events, d.events)];
            if !d.alerts.is_empty() {
                tables.push((
                    vigil_store::Table::Alerts,
                    vigil_detect::alerts_to_batch(&d.alerts),
                ));
            }
            store.append(tables).await?;
            done += n;
        }
        let window_alerts = stage.tick(now);
        if !window_alerts.is_empty() {
            store
                .append(vec![(
                    vigil_store::Table::Alerts,
                    vigil_detect::alerts_to_batch(&window_alerts),
                )])
                .await?;
        }
        store
            .put_state(vigil_store::Table::Baselines, stage.baselines_batch())
            .await?;
        store
            .put_state(vigil_store::Table::Inventory, stage.inventory_batch())
            .await?;
        store.flush().await?;
        store.compact().await?;
        println!("stored in {:.0} s", started.elapsed().as_secs_f64());
    }
    // The server's own limits (statement timeout, query memory): a panel the server would cancel
    // fails here too instead of getting a time.
    let limits = serve::sql_limits(&Config::default());
    let ctx = serve::sql_context(store.clone(), &limits)?;
    let alerts: u64 = store
        .snapshot(vigil_store::Table::Alerts)
        .files
        .iter()
        .map(|f| f.rows)
        .sum();
    // The panels look at the last 24 hours: a re-used directory from an earlier day holds events they
    // would all skip, and their times would mean nothing.
    let to = chrono::Utc::now();
    let in_window = crate::dashboards::expand_macros(
        "SELECT count(*) AS n FROM events WHERE $__timeFilter(time)",
        to - chrono::Duration::hours(24),
        to,
    );
    let counted = vigil_sql::run_query(&ctx, &in_window, &limits)
        .await
        .map_err(|e| anyhow::anyhow!("counting the events in the window: {e}"))?;
    let in_window: i64 = counted
        .first()
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
        })
        .map(|c| c.value(0))
        .unwrap_or(0);
    if in_window == 0 {
        anyhow::bail!(
            "none of the stored events is in the dashboards' last 24 hours; use a fresh --data-dir"
        );
    }
    println!(
        "{} dashboard queries over {in_window} events of the last 24 h and {alerts} alerts, median of {} runs \
         (server limits: {:?} per statement, {} MiB per query):",
        dashboard_queries().len(),
        args.runs,
        limits.timeout,
        limits.memory_limit_bytes >> 20
    );
    let mut medians = Vec::new();
    for (name, sql) in dashboard_queries() {
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let t = Instant::now();
            vigil_sql::run_query(&ctx, &sql, &limits)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        medians.push(median);
        println!("  {median:>7.3} s  {name}");
    }
    medians.sort_by(|a, b| a.total_cmp(b));
    println!(
        "median of medians: {:.3} s; slowest: {:.3} s",
        medians[medians.len() / 2],
        medians.last().copied().unwrap_or(0.0)
    );
    store.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    /// The prompts of request `counter`, as the server normalises them.
    fn prompts(work: &Workload, counter: u64) -> Vec<String> {
        let body = bytes::Bytes::from(work.request(counter));
        let request = vigil_ingest::decode::decode_traces(
            body,
            vigil_ingest::decode::Encoding::Protobuf,
            vigil_ingest::decode::Compression::None,
            &vigil_ingest::decode::Limits::default(),
        )
        .expect("a bench request decodes");
        let batch = vigil_ingest::normalize::traces(&request, &Default::default()).batch;
        let col = batch
            .column_by_name(vigil_ingest::schema::col::PROMPT_TEXT)
            .expect("prompt column");
        col.as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect()
    }

    /// The event ids the server derives from a sent request's spans lead back to the request: what
    /// event-to-alert is measured from.
    #[test]
    fn event_ids_of_a_sent_request_name_its_counter() {
        let work = workload(16, 100, 2);
        let body = work.request(12_345);
        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let spans: Vec<_> = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        assert!(spans.len() >= 16);
        for span in spans {
            let event_id = format!(
                "{}{}",
                hex::encode(&span.trace_id),
                hex::encode(&span.span_id)
            );
            assert_eq!(request_counter(&event_id), Some(12_345));
        }
        assert_eq!(request_counter("short"), None);
    }

    fn spans_of(body: &[u8]) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        ExportTraceServiceRequest::decode(body)
            .unwrap()
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    #[test]
    fn every_send_of_a_template_has_traces_and_times_of_its_own() {
        let work = workload(64, 500, 2);
        let template = &work.requests[1];
        let (a, b) = (
            spans_of(&template.unique(1, &work.text, 0)),
            spans_of(&template.unique(3, &work.text, 5_000_000_000)),
        );
        assert_eq!(template.trace_ids_at.len(), a.len(), "every trace id found");
        assert_eq!(template.times_at.len(), 2 * a.len(), "every time found");
        for (x, y) in a.iter().zip(&b) {
            assert_ne!(x.trace_id, y.trace_id);
            assert_eq!(
                y.start_time_unix_nano - x.start_time_unix_nano,
                5_000_000_000
            );
            assert_eq!(y.end_time_unix_nano - x.end_time_unix_nano, 5_000_000_000);
        }
        // Spans that shared a trace in the template still share one.
        let shared = |spans: &[opentelemetry_proto::tonic::trace::v1::Span]| {
            spans
                .iter()
                .map(|s| s.trace_id.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        assert_eq!(shared(&a), shared(&b));
        let answers = |spans: &[opentelemetry_proto::tonic::trace::v1::Span]| -> Vec<String> {
            spans
                .iter()
                .flat_map(|s| &s.attributes)
                .filter(|kv| kv.key.contains("completion") || kv.key.contains("output"))
                .map(|kv| format!("{:?}", kv.value))
                .collect()
        };
        assert!(answers(&a).len() > 20, "the chats' answers");
        assert!(
            !answers(&a).iter().any(|v| v.contains(SUMMARY_RESPONSE)),
            "the fixed answer went out as it is"
        );
    }

    #[test]
    fn every_send_of_a_template_carries_prompts_of_its_own() {
        let work = workload(64, 500, 2);
        // Requests 1 and 3 are the same template.
        let (a, b) = (prompts(&work, 1), prompts(&work, 3));
        assert_eq!(a.len(), b.len());
        assert!(a.len() > 20, "{}", a.len());
        let padded = a.iter().filter(|p| p.len() == 500).count();
        assert!(padded > 20, "{padded} prompts of 500 bytes");
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(
            same < a.len() / 10,
            "{same} of {} prompts repeated",
            a.len()
        );
        let marked = a.iter().filter(|p| p.contains("~~~~~~~~")).count();
        assert_eq!(marked, 0, "padding marks reached the wire");
    }
}
