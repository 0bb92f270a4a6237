//! `vigil generate`: the demo company's traffic sent to any OTLP endpoint (a Collector, another Vigil),
//! e.g. the traffic service of the compose stack.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::send::OtlpSender;
use super::traffic::Schedule;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// OTLP gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    pub endpoint: String,
    /// Events per second.
    #[arg(long, default_value_t = 60)]
    pub rate: u32,
    /// Seconds between two injected incidents (0: none).
    #[arg(long, default_value_t = 30)]
    pub incident_every: u64,
    /// Stop after this long (e.g. `10m`); by default runs until interrupted.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Bearer token with the `ingest` scope, for a Vigil that requires one (env VIGIL_TOKEN).
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub async fn run(args: GenerateArgs) -> Result<()> {
    // The endpoint may still be starting (compose): retry the connection for a while.
    let mut sender = None;
    for _ in 0..60 {
        match OtlpSender::connect(&args.endpoint, None, args.token.as_deref()).await {
            Ok(s) => {
                sender = Some(s);
                break;
            }
            Err(e) => {
                eprintln!("waiting for {}: {e:#}", args.endpoint);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    let Some(mut sender) = sender else {
        anyhow::bail!("no OTLP endpoint at {}", args.endpoint)
    };
    let mut schedule = Schedule::new(args.seed, Duration::from_secs(args.incident_every));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0u64;
    loop {
        tick.tick().await;
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let (rows, _) = schedule.second(now_us, args.rate as usize);
        match sender.grpc(&rows).await {
            Ok(()) => sent += rows.len() as u64,
            Err(e) => eprintln!("send failed (will go on): {e:#}"),
        }
        if started.elapsed().as_secs().is_multiple_of(30) {
            eprintln!("sent {sent} events");
        }
    }
    eprintln!("sent {sent} events");
    Ok(())
}
