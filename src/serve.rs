//! `vigil serve`: opens the store, restores detection state, binds every listener and runs until a signal.
//!
//! This module only wires components together; each listener's behaviour lives in its crate.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use vigil_detect::DetectionStage;
use vigil_ingest::otlp::Security;
use vigil_ingest::security::{self, scopes, Authenticator, TlsListener, TokenInfo};
use vigil_respond::Responder;
use vigil_store::{Store, Table};

use crate::admin;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::reload::{self, ConfigSource, Reloader};

/// The addresses a running server actually listens on (ports may have been 0 in the config).
#[derive(Debug, Clone)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub pg: Option<SocketAddr>,
}

/// A started server: its components, for callers that drive it in-process (the demo, the benchmark).
pub struct Running {
    pub bound: Bound,
    pub pipeline: Arc<Pipeline>,
    pub store: Arc<Store>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    detection: Arc<DetectionStage>,
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what} (is another Vigil running?)"))
}

/// TLS acceptors for the HTTP/gRPC listeners (ALPN h2, http/1.1) and for the PostgreSQL one (no ALPN).
struct Acceptors {
    http: TlsAcceptor,
    pg: TlsAcceptor,
}

fn tls_acceptors(config: &Config) -> Result<Option<Acceptors>> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let http = security::tls::acceptor(tls).context("loading the TLS certificate")?;
    let pg = security::tls::acceptor_without_alpn(tls).context("loading the TLS certificate")?;
    Ok(Some(Acceptors { http, pg }))
}

/// Opens the token store and, on a first start, creates and prints the bootstrap tokens.
fn authenticator(config: &Config) -> Result<Arc<Authenticator>> {
    let auth = Authenticator::from_config(&config.auth, &config.server.data_dir)
        .context("opening the token store")?;
    match auth.store() {
        Some(store) => {
            if let Some(created) = store
                .ensure_bootstrap()
                .context("creating the first tokens")?
            {
                print_bootstrap(&created, store.path());
            }
        }
        None => tracing::warn!(
            "authentication is disabled: every listener admits anyone, as source \"anonymous\""
        ),
    }
    Ok(Arc::new(auth))
}

/// The only time these tokens exist in plaintext outside the clients: on stdout, once.
fn print_bootstrap(created: &[(TokenInfo, String)], path: &std::path::Path) {
    use std::io::Write;
    let rule = "=".repeat(100);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "Vigil created its first access tokens. STORE THESE NOW, THEY WILL NOT BE SHOWN AGAIN"
    );
    let _ = writeln!(
        out,
        "(only their hashes are kept, in {}):\n",
        path.display()
    );
    for (info, token) in created {
        let _ = writeln!(
            out,
            "  {:<8} scopes={:<8} {}",
            info.name,
            scopes::display_list(&info.scopes),
            token
        );
    }
    let _ = writeln!(
        out,
        "\nSend a token as `Authorization: Bearer <token>` (OpenTelemetry SDKs:"
    );
    let _ = writeln!(out, "OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>); psql takes a query or admin token");
    let _ = writeln!(
        out,
        "as its password. Manage tokens with `vigil token create|list|revoke`."
    );
    let _ = writeln!(out, "{rule}");
    let _ = out.flush();
}

/// Serves an axum router on `listener`, TLS-terminated when an acceptor is given, until `stop`.
async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    name: &'static str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use vigil_ingest::http_server::serve;
    match tls {
        Some(acceptor) => serve(TlsListener::new(listener, acceptor, name)?, router, stop).await,
        None => {
            let listener = listener.tap_io(security::tls_listener::no_delay);
            serve(listener, router, stop).await
        }
    }
}

/// Starts every component and returns once all listeners are bound (the process is then ready).
pub async fn start(config: Config) -> Result<Running> {
    start_with(config, None).await
}

/// [`start`], with a way to re-read the configuration for `POST /-/reload` and SIGHUP.
pub async fn start_with(config: Config, source: Option<ConfigSource>) -> Result<Running> {
    // Before anything slow (the WAL replay): a SIGHUP must not kill a server that is still starting.
    let sighup = source.is_some().then(reload::Sighup::listen);
    std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
        format!(
            "creating data directory {}",
            config.server.data_dir.display()
        )
    })?;
    let tls = tls_acceptors(&config)?;
    let auth = authenticator(&config)?;
    // Exported as 0 from the start, so `increase()` sees the first refusals.
    LazyLock::force(&crate::metrics::OVERLOAD_REFUSALS);

    tracing::info!(data_dir = %config.store.data_dir.display(), "opening the store");
    // For the end-to-end test of signals during start-up (`FAILPOINTS=store_open=sleep(3000)`).
    fail::fail_point!("store_open");
    let store = Store::open(config.store.clone())
        .await
        .context("opening the store")?;
    store.spawn_background();

    let detection = DetectionStage::new(config.detect.clone());
    let baselines = store
        .read_state(Table::Baselines)
        .await
        .context("reading persisted baselines")?;
    let inventory = store
        .read_state(Table::Inventory)
        .await
        .context("reading the persisted inventory")?;
    detection.restore(&baselines, &inventory);

    let responder = Responder::open(
        config.respond.clone(),
        config.server.data_dir.join("outbox.redb"),
    )
    .context("opening the alert outbox")?;
    let pipeline = Pipeline::new(
        detection.clone(),
        store.clone(),
        responder.clone(),
        config.pipeline.clone(),
    );
    let reloader =
        source.map(|source| Reloader::new(source, detection.clone(), auth.clone(), config.clone()));
    let limits = sql_limits(&config);
    let ctx = sql_context(store.clone(), &limits)?;
    reconcile_alerts(&ctx, &responder)
        .await
        .context("handing stored alerts to delivery")?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks = Vec::new();

    let grpc = bind(config.otlp.grpc_addr, "OTLP gRPC").await?;
    let http = bind(config.otlp.http_addr, "OTLP/HTTP").await?;
    let admin_listener = bind(config.server.admin_addr, "the admin API").await?;
    let bound_pg = match config.sql.pg_addr {
        Some(addr) => Some(bind(addr, "the PostgreSQL listener").await?),
        None => None,
    };
    let bound = Bound {
        grpc: grpc.local_addr()?,
        http: http.local_addr()?,
        admin: admin_listener.local_addr()?,
        pg: bound_pg.as_ref().map(|l| l.local_addr()).transpose()?,
    };

    let http_tls = tls.as_ref().map(|t| t.http.clone());
    let sink: Arc<dyn vigil_ingest::EventSink> = pipeline.clone();
    {
        let (sink, cfg, stop) = (
            sink.clone(),
            config.otlp.clone(),
            stopped(shutdown_rx.clone()),
        );
        let security = Security {
            auth: auth.clone(),
            tls: http_tls.clone(),
        };
        tasks.push(tokio::spawn(async move {
            if let Err(e) = vigil_ingest::otlp::grpc::serve(grpc, sink, cfg, security, stop).await {
                tracing::error!(error = %e, "OTLP gRPC receiver stopped");
            }
        }));
    }
    {
        let router =
            vigil_ingest::otlp::http::router(sink.clone(), config.otlp.clone(), auth.clone());
        let (stop, tls) = (stopped(shutdown_rx.clone()), http_tls.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                serve_http(http, tls, router, vigil_ingest::otlp::http::LISTENER, stop).await
            {
                tracing::error!(error = %e, "OTLP/HTTP receiver stopped");
            }
        }));
    }

    {
        let responder = responder.clone();
        vigil_sql::register_live_table(
            &ctx,
            "alert_deliveries",
            vigil_respond::deliveries_schema(),
            move || vec![responder.deliveries_batch()],
        )
        .context("registering alert_deliveries")?;
    }
    {
        // The responses playbooks took, as columns of `alerts` (time to contain = responded_at - time).
        let responder = responder.clone();
        vigil_sql::register_alert_responses(&ctx, move || vec![responder.alert_responses_batch()])
            .await
            .context("joining playbook responses into alerts")?;
    }
    {
        let state = vigil_sql::http_api::ApiState::new(
            ctx.clone(),
            limits.clone(),
            config.sql.max_concurrent_http_queries,
        );
        let router = admin::router(state, auth.clone(), reloader.clone());
        let (stop, tls) = (stopped(shutdown_rx.clone()), http_tls.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                serve_http(admin_listener, tls, router, admin::METRICS_LISTENER, stop).await
            {
                tracing::error!(error = %e, "admin API stopped");
            }
        }));
    }
    if let Some(listener) = bound_pg {
        let password = vigil_sql::pg::TokenPassword { auth: auth.clone() };
        let mut server =
            vigil_sql::pg::PgServer::new(ctx.clone(), Arc::new(password), limits.clone())
                .context("setting up the PostgreSQL listener")?;
        if let Some(tls) = &tls {
            server = server.with_tls(tls.pg.clone());
        }
        let stop = stopped(shutdown_rx.clone());
        tasks.push(tokio::spawn(server.serve(listener, stop)));
    }

    if config.kafka.enabled() {
        let kafka = &config.kafka;
        let started = vigil_ingest::kafka::start(kafka.clone(), sink.clone())
            .context("starting the Kafka consumer")?;
        tracing::info!(brokers = %kafka.brokers, group = %kafka.group_id, "consuming from Kafka");
        let stop = stopped(shutdown_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = started.run(stop).await {
                tracing::error!(error = %e, "Kafka consumer stopped");
            }
        }));
    }
    {
        let (responder, stop) = (responder.clone(), stopped(shutdown_rx.clone()));
        tasks.push(tokio::spawn(async move { responder.run(stop).await }));
    }
    tasks.push(tokio::spawn(window_tasks(
        pipeline.clone(),
        ctx.clone(),
        responder.clone(),
        detection.clone(),
        store.clone(),
        config.clone(),
        shutdown_rx.clone(),
    )));

    tracing::info!(
        grpc = %bound.grpc, http = %bound.http, admin = %bound.admin, pg = ?bound.pg,
        data_dir = %config.server.data_dir.display(), auth = auth.is_enabled(), tls = tls.is_some(), "vigil is ready"
    );
    if let (Some(reloader), Some(sighup)) = (reloader, sighup) {
        reload::on_sighup(reloader, sighup);
    }
    admin::set_ready(true);
    Ok(Running {
        bound,
        pipeline,
        store,
        shutdown,
        tasks,
        detection,
    })
}

/// Submits stored alerts from the last day that the outbox never saw: those raised just before a crash,
/// after their WAL write and before their outbox commit, or whose outbox write failed while running. Alert ids are UUID v7, so "from the last day" is
/// a string bound on `alert_id`, whatever the alerts' event times.
async fn reconcile_alerts(
    ctx: &datafusion::prelude::SessionContext,
    responder: &Responder,
) -> Result<()> {
    let since_ms = chrono::Utc::now().timestamp_millis() - vigil_respond::RECONCILE_WINDOW_MS;
    let bound = uuid_v7_prefix(since_ms);
    let sql = format!("SELECT * FROM alerts WHERE alert_id >= '{bound}'");
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut alerts = Vec::new();
    for b in &batches {
        alerts.extend(vigil_detect::alerts_from_batch(b)?);
    }
    let submitted = responder.reconcile(&alerts)?;
    if submitted > 0 {
        tracing::warn!(
            submitted,
            checked = alerts.len(),
            "stored alerts that had not reached the outbox were queued for delivery"
        );
    }
    Ok(())
}

/// The first characters of every UUID v7 minted at or after `ms` (its 48-bit millisecond timestamp).
fn uuid_v7_prefix(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

pub fn sql_limits(config: &Config) -> vigil_sql::QueryLimits {
    vigil_sql::QueryLimits {
        timeout: config.sql.statement_timeout,
        memory_limit_bytes: config.sql.query_memory_bytes,
        ..Default::default()
    }
}

/// The DataFusion context every SQL interface of this process shares.
pub fn sql_context(
    store: Arc<Store>,
    limits: &vigil_sql::QueryLimits,
) -> Result<Arc<datafusion::prelude::SessionContext>> {
    let source: Arc<dyn vigil_sql::SnapshotSource> = store;
    Ok(Arc::new(
        vigil_sql::session_context(source, limits.clone()).context("setting up SQL")?,
    ))
}

/// Window-based detection and state persistence, off the request path.
async fn window_tasks(
    pipeline: Arc<Pipeline>,
    ctx: Arc<datafusion::prelude::SessionContext>,
    responder: Arc<Responder>,
    detection: Arc<DetectionStage>,
    store: Arc<Store>,
    config: Config,
    stop: watch::Receiver<bool>,
) {
    let stopped = async move {
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(config.pipeline.tick_interval);
    let mut persist = tokio::time::interval(config.pipeline.state_interval);
    persist.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {
                let d = detection.clone();
                let alerts = tokio::task::spawn_blocking(move || {
                    let now_us = d.watermark(chrono::Utc::now().timestamp_micros());
                    d.tick(now_us)
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "window detection failed; it runs again on the next tick");
                    Vec::new()
                });
                if let Err(e) = pipeline.record_alerts(alerts).await {
                    tracing::error!(error = %e, "could not store window alerts");
                }
                if pipeline.take_undelivered() {
                    if let Err(e) = reconcile_alerts(&ctx, &responder).await {
                        pipeline.mark_undelivered();
                        tracing::error!(error = %e, "could not hand stored alerts to delivery; retrying on the next tick");
                    }
                }
            }
            _ = persist.tick() => {
                if let Err(e) = persist_state(&detection, &store).await {
                    tracing::warn!(error = %e, "could not persist detection state");
                }
            }
        }
    }
}

async fn persist_state(detection: &DetectionStage, store: &Store) -> Result<()> {
    fail::fail_point!("persist_state", |_| Err(anyhow::anyhow!(
        "persist_state failpoint"
    )));
    store
        .put_state(Table::Baselines, detection.baselines_batch())
        .await
        .context("writing baselines")?;
    store
        .put_state(Table::Inventory, detection.inventory_batch())
        .await
        .context("writing the inventory")?;
    Ok(())
}

impl Running {
    /// Stops the listeners, persists detection state and flushes the store. The listeners get 10 s
    /// together (not each), so the whole stop fits a container's grace period; the store is flushed
    /// even when the state cannot be saved.
    pub async fn stop(self) -> Result<()> {
        admin::set_ready(false);
        let _ = self.shutdown.send(true);
        let tasks = futures::future::join_all(self.tasks);
        if tokio::time::timeout(Duration::from_secs(10), tasks)
            .await
            .is_err()
        {
            tracing::warn!("listeners still busy after 10 s; stopping anyway");
        }
        let persisted = persist_state(&self.detection, &self.store).await;
        self.store.shutdown().await.context("flushing the store")?;
        persisted
    }
}

/// Runs until SIGINT or SIGTERM; SIGHUP reloads the detection configuration from `source`.
pub async fn run(config: Config, source: ConfigSource) -> Result<()> {
    let running = start_with(config, Some(source)).await?;
    wait_for_signal().await;
    tracing::info!("shutting down (a second SIGINT or SIGTERM exits at once)");
    // Tokio keeps its handler installed, so without this a second Ctrl-C would be swallowed while a
    // stop hangs. Exiting here loses no acknowledged event: the WAL replays it at the next start.
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without finishing the stop");
        std::process::exit(130);
    });
    running.stop().await
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on `dir`, without authentication, on free loopback ports and no PostgreSQL listener.
    fn local_config(dir: &std::path::Path) -> Config {
        let mut config = Config::default();
        config.server.data_dir = dir.to_path_buf();
        config.store.data_dir = dir.to_path_buf();
        config.auth.enabled = false;
        let any = "127.0.0.1:0".parse().unwrap();
        (config.otlp.grpc_addr, config.otlp.http_addr) = (any, any);
        config.server.admin_addr = any;
        config.sql.pg_addr = None;
        config
    }

    /// A Kafka consumer that cannot start (here a misspelt librdkafka property) fails the start, instead
    /// of a background task while the server reports ready with Kafka ingestion off.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_kafka_consumer_that_cannot_start_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = local_config(dir.path());
        config.kafka.brokers = "127.0.0.1:1".into();
        config
            .kafka
            .properties
            .insert("session.timeout.msec".into(), "6000".into());
        let err = match start(config).await {
            Ok(_) => panic!("started with a broken Kafka configuration"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("Kafka"), "{err}");
        assert!(err.contains("session.timeout.msec"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_state_save_still_flushes_the_store_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = local_config(dir.path());
        config.store.flush_age = Duration::from_secs(3600);
        let running = start(config).await.unwrap();
        let mut sender = crate::demo::send::OtlpSender::connect(
            &format!("http://{}", running.bound.grpc),
            None,
            None,
        )
        .await
        .unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        let rows = crate::demo::traffic::Traffic::new(7).normal(now, 50);
        sender.grpc(&rows).await.unwrap();

        fail::cfg("persist_state", "return").unwrap();
        let store = running.store.clone();
        let stopped = running.stop().await;
        fail::remove("persist_state");
        assert!(stopped.is_err(), "the failed save is reported");
        let flushed: u64 = store
            .snapshot(Table::Events)
            .files
            .iter()
            .map(|f| f.rows)
            .sum();
        assert_eq!(flushed, 50, "the store was flushed all the same");
    }

    #[test]
    fn the_v7_prefix_bounds_ids_minted_from_that_millisecond_on() {
        let ms: i64 = 1_767_225_600_123;
        let ts = |ms: i64| {
            uuid::Timestamp::from_unix(
                uuid::NoContext,
                (ms / 1000) as u64,
                ((ms % 1000) * 1_000_000) as u32,
            )
        };
        let bound = uuid_v7_prefix(ms);
        assert!(uuid::Uuid::new_v7(ts(ms)).to_string() >= bound);
        assert!(uuid::Uuid::new_v7(ts(ms + 1)).to_string() >= bound);
        assert!(uuid::Uuid::new_v7(ts(ms - 1)).to_string() < bound);
        assert!(uuid::Uuid::new_v7(ts(ms + 86_400_000)).to_string() >= bound);
    }
}
