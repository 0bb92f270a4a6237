//! `vigil bench stages`: what one event costs in each stage of the server, on one thread, without the network
//! or the disk. `bench ingest` measures the whole (and its `cpu:` line includes HTTP/2, gRPC, the async
//! runtime and the load generator), but its figure moves ±15 % with a shared host and cannot say where the
//! time went. Here the same pre-encoded requests go through the same functions the server calls, in the same
//! order (protobuf decode, normalisation, detection, dedupe + WAL record + its SHA-256, and the flush's sort
//! and Parquet encode), each timed on its own, so a change to one stage shows as a change to its line.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use clap::Args;
use vigil_ingest::decode::{decode_traces, Compression, Encoding};
use vigil_store::cost::{flush_encode, AppendWork};
use vigil_store::Table;

use super::{bench_config, cpu_seconds, machine, workload};

#[derive(Debug, Args)]
pub struct StagesArgs {
    /// How long to measure (after a short warm-up), summed over the stages.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Events per request, as in `bench ingest`.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Prompt size in bytes.
    #[arg(long, default_value_t = 500)]
    pub prompt_bytes: usize,
    /// Measure exactly this many requests instead of a duration: the same work every run, so instruction
    /// counts (`valgrind --tool=callgrind`) compare two builds without the host's noise.
    #[arg(long)]
    pub requests: Option<usize>,
}

const NAMES: [&str; 5] = [
    "protobuf decode",
    "normalise",
    "detect",
    "dedupe + WAL record",
    "flush (sort + Parquet)",
];

/// The write buffer between flushes, as the store holds it.
#[derive(Default)]
struct Buffered {
    events: Vec<RecordBatch>,
    alerts: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

impl Buffered {
    fn push(&mut self, kept: Vec<(Table, RecordBatch)>) {
        for (table, batch) in kept {
            self.rows += batch.num_rows();
            self.bytes += batch.get_array_memory_size();
            match table {
                Table::Alerts => self.alerts.push(batch),
                _ => self.events.push(batch),
            }
        }
    }

    /// Encodes what is buffered as a flush does and empties the buffer. Returns the CPU seconds it took: a
    /// large hour is encoded on two threads, so wall time would undercount it.
    fn flush(&mut self) -> Result<f64> {
        let before = cpu_seconds();
        flush_encode(Table::Events, &self.events)?;
        flush_encode(Table::Alerts, &self.alerts)?;
        *self = Buffered::default();
        Ok(cpu_seconds() - before)
    }
}

pub(super) fn stages(args: StagesArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let config = bench_config(dir.path());
    let work = workload(args.batch, args.prompt_bytes, 64);
    let detection = vigil_detect::DetectionStage::new(config.detect.clone());
    let ctx = vigil_ingest::NormalizeContext {
        source: Some("bench".into()),
        ..Default::default()
    };
    let mut append = AppendWork::new(&config.store);
    let mut buffered = Buffered::default();
    let span = match args.requests {
        Some(n) => format!("{n} requests"),
        None => format!("{} s", args.duration.as_secs()),
    };
    println!(
        "vigil bench stages: {} events/request, ~{}-byte prompts, one thread, {span}; flush every {} rows or {} MiB",
        args.batch,
        args.prompt_bytes,
        config.store.flush_rows,
        config.store.flush_bytes >> 20
    );

    let mut spent = [0f64; NAMES.len()];
    let mut events = 0u64;
    let mut alerts = 0usize;
    let mut counter = 1u64;
    let warm_up = 20;
    let mut measuring = false;
    let mut k = 0usize;
    let done = |k: usize, spent: &[f64]| match args.requests {
        Some(n) => k >= warm_up + n,
        None => spent.iter().sum::<f64>() >= args.duration.as_secs_f64(),
    };
    while !done(k, &spent) {
        if k == warm_up {
            // The warm-up's buffer is flushed unmeasured, so every measured flush holds measured rows only.
            buffered.flush()?;
            measuring = true;
        }
        let body = bytes::Bytes::from(work.request(counter));
        counter += 1;
        k += 1;
        let mut lap = [0f64; NAMES.len()];
        let t0 = Instant::now();
        let request = decode_traces(
            body,
            Encoding::Protobuf,
            Compression::None,
            &config.otlp.limits,
        )?;
        let t1 = Instant::now();
        let normalized = vigil_ingest::normalize::traces(&request, &ctx);
        drop(request);
        let t2 = Instant::now();
        let detected = detection.process(&normalized.batch);
        let mut writes = vec![(Table::Events, detected.events)];
        if !detected.alerts.is_empty() {
            writes.push((
                Table::Alerts,
                vigil_detect::alerts_to_batch(&detected.alerts),
            ));
        }
        let t3 = Instant::now();
        let kept = append.append(writes)?;
        let t4 = Instant::now();
        lap[0] = (t1 - t0).as_secs_f64();
        lap[1] = (t2 - t1).as_secs_f64();
        lap[2] = (t3 - t2).as_secs_f64();
        lap[3] = (t4 - t3).as_secs_f64();
        buffered.push(kept);
        if buffered.rows >= config.store.flush_rows || buffered.bytes >= config.store.flush_bytes {
            lap[4] = buffered.flush()?;
        }
        if measuring {
            for (s, l) in spent.iter_mut().zip(lap) {
                *s += l;
            }
            events += normalized.batch.num_rows() as u64;
            alerts += detected.alerts.len();
        }
    }
    let pending = buffered.rows;
    spent[4] += buffered.flush()?;

    let total: f64 = spent.iter().sum();
    let us = |s: f64| s * 1e6 / events.max(1) as f64;
    println!("machine:              {}", machine());
    println!(
        "measured:             {events} events ({alerts} alerts; the last flush held {pending} rows)"
    );
    for (name, s) in NAMES.iter().zip(spent) {
        println!(
            "  {name:<22} {:>6.2} µs/event  {:>5.1} %",
            us(s),
            100.0 * s / total
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  {:<22} {:>6.2} µs/event: {cores} cores at this cost carry at most {:.0} events/s before any transport",
        "total",
        us(total),
        cores as f64 * 1e6 / us(total)
    );
    println!(
        "(`bench ingest`'s cpu line minus this total is HTTP/2, gRPC, the async runtime and the load generator)"
    );
    Ok(())
}
