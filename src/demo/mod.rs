//! `vigil demo`: Vigil on its embedded defaults, fed with a synthetic company's AI activity over real
//! OTLP (gRPC protobuf and HTTP/JSON), with incidents of every detector's kind, until interrupted.

pub mod generate;
pub mod send;
pub mod traffic;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use vigil_ingest::EventRow;

use crate::config::{Config, ServeArgs};
use crate::serve;
use send::OtlpSender;
use traffic::{Incident, Schedule};

/// The inventory and policies of the demo company (used when no `--config` is given).
pub const DEMO_CONFIG: &str = include_str!("../../demo/vigil-demo.toml");

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Events per second of normal traffic.
    #[arg(long, default_value_t = 60)]
    pub rate: u32,
    /// Minutes of past activity (at the live rate) sent first, so that baselines are warm when live traffic
    /// starts: 10 windows of warm-up, then enough warm windows to train the behaviour model.
    #[arg(long, default_value_t = 25)]
    pub history_minutes: u32,
    /// Seconds between two injected incidents.
    #[arg(long, default_value_t = 6)]
    pub incident_every: u64,
    /// Stop after this long (e.g. `90s`); by default the demo runs until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Random seed of the synthetic company.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The demo runs without authentication, so it refuses to listen anywhere but on loopback: a config file
/// made for a server (`0.0.0.0`) would otherwise open every listener to the network without a token.
pub fn loopback_only(config: &Config) -> Result<()> {
    let listeners = [
        ("otlp.grpc_addr", Some(config.otlp.grpc_addr)),
        ("otlp.http_addr", Some(config.otlp.http_addr)),
        ("server.admin_addr", Some(config.server.admin_addr)),
        ("sql.pg_addr", config.sql.pg_addr),
    ];
    for (name, addr) in listeners {
        if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
            anyhow::bail!(
                "vigil demo runs without authentication, so it listens on loopback only; {name} is \
                 {addr} (run `vigil serve` to listen there)"
            );
        }
    }
    Ok(())
}

pub async fn run(mut config: Config, args: DemoArgs) -> Result<()> {
    let demo: Config =
        toml::from_str(DEMO_CONFIG).context("parsing the embedded demo configuration")?;
    let inv = &config.detect.inventory;
    if inv.models.is_empty()
        && inv.providers.is_empty()
        && inv.endpoints.is_empty()
        && inv.agents.is_empty()
    {
        config.detect = demo.detect;
    }
    if args.serve.flush_age.is_none() {
        config.store.flush_age = Duration::from_secs(10);
    }
    // The demo sends its own traffic: joining a production consumer group would take partitions (and
    // their messages) from the real consumers.
    if config.kafka.enabled() {
        println!(
            "note: the demo does not consume from Kafka ({} ignored)",
            config.kafka.brokers
        );
        config.kafka.brokers.clear();
    }
    let running = serve::start(config.clone()).await?;
    let b = running.bound.clone();
    println!("Vigil demo: data in {}/", config.server.data_dir.display());
    println!(
        "  OTLP gRPC  {}   OTLP/HTTP  http://{}/v1/traces",
        b.grpc, b.http
    );
    println!(
        "  admin      http://{}/metrics   query API  POST http://{}/api/v1/query",
        b.admin, b.admin
    );
    if let Some(pg) = b.pg {
        println!("  PostgreSQL psql -h {} -p {} -U vigil", pg.ip(), pg.port());
    }

    let mut alerts = running.pipeline.subscribe_alerts();
    let by_detector = std::sync::Arc::new(parking_lot::Mutex::new(BTreeMap::<String, u64>::new()));
    let counts = by_detector.clone();
    let printer = tokio::spawn(async move {
        loop {
            let a = match alerts.recv().await {
                Ok(a) => a,
                // A burst overran the channel: skip what was missed and go on printing.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    println!("  ... {missed} alerts not shown");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            *counts.lock().entry(a.detector.clone()).or_default() += 1;
            println!(
                "  ALERT {:<8} {:<18} {}={}  {}",
                a.severity.as_str(),
                a.detector,
                a.entity_type,
                a.entity_id,
                a.title
            );
        }
    });

    let mut sender = OtlpSender::connect(
        &format!("http://{}", b.grpc),
        Some(&format!("http://{}", b.http)),
        None,
    )
    .await?;
    let http = reqwest::Client::new();
    let mut schedule = Schedule::new(args.seed, Duration::from_secs(args.incident_every));
    let mut sent = 0u64;

    // 1. History: the past minutes at the live rate, sent as fast as Vigil takes them.
    let now_us = chrono::Utc::now().timestamp_micros();
    print!("Sending {} minutes of history", args.history_minutes);
    for second in (1..=i64::from(args.history_minutes) * 60).rev() {
        let rows = schedule
            .traffic
            .normal(now_us - second * 1_000_000, args.rate as usize);
        sender.grpc(&rows).await.context("sending history")?;
        sent += rows.len() as u64;
        if second % 60 == 0 {
            print!(".");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
    }
    println!(" {sent} events.");
    println!(
        "Live traffic: {} events/s over OTLP gRPC and HTTP/JSON, an incident every {} s.",
        args.rate, args.incident_every
    );

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shown_queries = false;
    let stop = serve::wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let (rows, incident): (Vec<EventRow>, _) = schedule.second(now_us, args.rate as usize);
        if let Some(kind) = incident {
            println!("  inject {kind:?}");
        }
        // Most traffic over gRPC/protobuf; a slice over HTTP/JSON, as a second SDK would send it.
        let split = rows.len() * 4 / 5;
        let (g, h) = rows.split_at(split);
        sender.grpc(g).await?;
        sender.http_json(h).await?;
        sent += rows.len() as u64;

        let secs = started.elapsed().as_secs();
        if secs > 0 && secs.is_multiple_of(5) {
            let stored = count(&http, &b, "SELECT count(*) AS n FROM events")
                .await
                .unwrap_or(-1);
            let alerts: u64 = by_detector.lock().values().sum();
            println!("[{secs:>4}s] sent {sent} events, {stored} stored, {alerts} alerts");
        }
        if !shown_queries
            && started.elapsed()
                >= Duration::from_secs(args.incident_every * Incident::ALL.len() as u64 + 2)
        {
            shown_queries = true;
            summary(&by_detector.lock());
        }
    }
    if !shown_queries {
        summary(&by_detector.lock());
    }
    printer.abort();
    println!("Stopping: flushing to Parquet...");
    running.stop().await?;
    println!("Done. Query the data offline with: vigil sql --offline \"SELECT kind, count(*) FROM events GROUP BY kind\"");
    Ok(())
}

async fn count(http: &reqwest::Client, b: &serve::Bound, sql: &str) -> Result<i64> {
    let v: serde_json::Value = http
        .post(format!("http://{}/api/v1/query", b.admin))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await?
        .json()
        .await?;
    v["rows"][0]["n"].as_i64().context("no count in the answer")
}

fn summary(by_detector: &BTreeMap<String, u64>) {
    println!();
    println!("Alerts so far by detector:");
    for (d, n) in by_detector {
        println!("  {d:<20} {n}");
    }
    println!();
    println!("Try these in another terminal while the demo runs:");
    println!("  cargo run -q -- sql \"SELECT department, model, count(*) AS calls, sum(input_tokens + output_tokens) AS tokens FROM events WHERE kind = 'inference' GROUP BY 1, 2 ORDER BY tokens DESC LIMIT 10\"");
    println!("  cargo run -q -- sql \"SELECT time, detector, severity, entity_id, title FROM alerts ORDER BY time DESC LIMIT 10\"");
    println!("  cargo run -q -- sql \"SELECT entity_type, entity_id, registered, event_count FROM inventory WHERE NOT registered AND entity_type IN ('provider', 'model', 'endpoint', 'agent')\"");
    println!(
        "  psql -h 127.0.0.1 -p 5433 -U vigil -c 'SELECT kind, count(*) FROM events GROUP BY kind'"
    );
    println!("Press Ctrl-C to stop.");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unauthenticated_demo_listens_on_loopback_only() {
        let config = Config::default();
        loopback_only(&config).expect("the defaults are loopback");
        let mut exposed = config.clone();
        exposed.otlp.grpc_addr = "0.0.0.0:4317".parse().unwrap();
        let err = loopback_only(&exposed).expect_err("0.0.0.0 without tokens");
        assert!(err.to_string().contains("otlp.grpc_addr"), "{err}");
        let mut exposed = config;
        exposed.sql.pg_addr = Some("[::]:5433".parse().unwrap());
        assert!(loopback_only(&exposed).is_err());
    }
}
