//! The `vigil` binary: parses the command line and wires the components together.

mod admin;
mod alerts_cli;
mod allocator;
mod bench;
mod config;
mod dashboards;
mod demo;
mod metrics;
mod pipeline;
mod reload;
mod serve;
mod sql_cli;
mod telemetry;
mod token_cli;
mod verify_cli;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use config::{CommonArgs, Config, ServeArgs};

/// Zero Trust streaming analytics for AI activity: OTLP in, detections, Parquet, SQL out.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline: OTLP receivers, detection, storage, SQL and admin listeners.
    Serve(ServeArgs),
    /// Run Vigil on its embedded defaults and feed it realistic synthetic AI activity over real OTLP.
    Demo(demo::DemoArgs),
    /// Send the demo company's synthetic AI activity to an OTLP endpoint (a Collector or a Vigil).
    Generate(demo::generate::GenerateArgs),
    /// Run a SQL query against a running Vigil (or, if none runs, the data directory) and print the result.
    Sql(sql_cli::SqlArgs),
    /// Benchmarks: end-to-end ingest, and dashboard SQL over many events.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print the effective configuration (defaults, file and overrides merged) as TOML.
    Config(ServeArgs),
    /// Manage the API tokens in the data directory (works while a server runs).
    #[command(subcommand)]
    Token(token_cli::TokenCommand),
    /// Dead letters, replay and test sends of alert delivery (on the data directory's outbox).
    #[command(subcommand)]
    Alerts(alerts_cli::AlertsCommand),
    /// Check the tamper-evident audit chain of the stored files; exits non-zero if anything changed.
    Verify(verify_cli::VerifyArgs),
    /// Print every shipped Grafana panel's SQL with the macros expanded for the last HOURS (JSON lines).
    Dashboards {
        #[arg(long, default_value_t = 24)]
        hours: i64,
    },
}

fn init_tracing(filter: &str) {
    telemetry::init_logging(filter);
}

fn main() -> Result<()> {
    allocator::keep_freed_memory();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Query planning recurses once per level of an expression (the guard lets 256 through), and a debug
        // build's frames are large: 8 MiB instead of 2 keeps a stack overflow, which aborts the process, out
        // of reach. Only the pages a thread touches are committed.
        .thread_stack_size(8 << 20)
        .build()
        .context("starting the async runtime")?
        .block_on(run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&cli.common, Some(&args))?;
            // Lives to the end of this arm: dropping it flushes Vigil's own queued spans after the server stopped.
            let _telemetry = telemetry::init(&config.server.log, &config.telemetry)?;
            // Crash-injection points for the end-to-end tests (`FAILPOINTS=name=return`); compiled to
            // nothing unless the `fail` crate's `failpoints` feature is on, which only test builds turn on.
            let _failpoints = fail::FailScenario::setup();
            let common = cli.common.clone();
            let source: reload::ConfigSource =
                std::sync::Arc::new(move || Config::load(&common, Some(&args)));
            serve::run(config, source).await
        }
        Command::Demo(args) => {
            let mut config = Config::load(&cli.common, Some(&args.serve))?;
            // The demo is a local walkthrough: no tokens to copy around, so nothing but loopback.
            config.auth.enabled = false;
            demo::loopback_only(&config)?;
            init_tracing(cli.common.log.as_deref().unwrap_or("warn"));
            demo::run(config, args).await
        }
        Command::Generate(args) => {
            init_tracing(cli.common.log.as_deref().unwrap_or("warn"));
            demo::generate::run(args).await
        }
        Command::Sql(args) => {
            let config = Config::load(&cli.common, None)?;
            init_tracing(cli.common.log.as_deref().unwrap_or("warn"));
            sql_cli::run(config, args).await
        }
        Command::Bench(command) => {
            init_tracing(cli.common.log.as_deref().unwrap_or("warn"));
            bench::run(command).await
        }
        Command::Token(command) => {
            let config = Config::load(&cli.common, None)?;
            init_tracing(cli.common.log.as_deref().unwrap_or("warn"));
            token_cli::run(&config, command)
        }
        Command::Alerts(command) => {
            let config = Config::load(&cli.common, None)?;
            init_tracing(cli.common.log.as_deref().unwrap_or("warn"));
            alerts_cli::run(config, command).await
        }
        Command::Verify(args) => {
            let config = Config::load(&cli.common, None)?;
            init_tracing(cli.common.log.as_deref().unwrap_or("warn"));
            verify_cli::run(config, args).await
        }
        Command::Dashboards { hours } => {
            dashboards::print_queries(hours);
            Ok(())
        }
        Command::Config(args) => {
            let config = Config::load(&cli.common, Some(&args))?;
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }
    }
}
