//! The configuration file (`--config vigil.toml`) and the command-line/environment overrides.
//!
//! Precedence, highest first: command-line flag, `VIGIL_*` environment variable (clap reads both), the
//! TOML file, the built-in default. Every key is documented in `vigil.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use vigil_ingest::security::{AuthConfig, TlsConfig};

/// Everything Vigil can be configured with, one section per component.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    /// Bearer tokens for every listener; on by default, off only in `vigil demo` or with `--no-auth`.
    pub auth: AuthConfig,
    /// When set, every listener (OTLP gRPC and HTTP, admin, PostgreSQL) speaks TLS only.
    pub tls: Option<TlsConfig>,
    pub otlp: vigil_ingest::otlp::ReceiverConfig,
    pub store: vigil_store::StoreConfig,
    pub pipeline: PipelineConfig,
    pub detect: vigil_detect::DetectConfig,
    pub sql: SqlConfig,
    pub respond: vigil_respond::RespondConfig,
    pub kafka: vigil_ingest::kafka::KafkaConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the WAL, the Parquet files, the alert outbox and the state live.
    pub data_dir: PathBuf,
    /// Admin HTTP: /healthz, /readyz, /metrics, /api/v1/query.
    pub admin_addr: SocketAddr,
    /// `tracing` filter, e.g. `info` or `vigil=debug,info`.
    pub log: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("vigil-data"),
            admin_addr: "127.0.0.1:9464".parse().expect("valid literal address"),
            log: "info".into(),
        }
    }
}

/// Vigil's own traces (how it handles requests, not the telemetry it receives), exported over OTLP/HTTP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL of a Collector or tracing backend, e.g. `http://collector:4318`; `/v1/traces` is
    /// appended unless the URL already ends with it. Unset: nothing is exported. Deliberately not taken from
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the shells and containers that run Vigil often set that to Vigil itself
    /// (for the applications it watches), and Vigil would then trace its own ingest of its own traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of traces kept, 0.0 to 1.0 (by trace id, so a trace is kept or dropped whole).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "vigil".into(),
            sample_ratio: 1.0,
        }
    }
}

/// How the pipeline protects itself from more load than it can make durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Requests being detected and written at once; beyond this, requests wait up to `admission_wait`.
    pub max_in_flight: usize,
    /// How long a request may wait for a slot before it is refused with 429 / RESOURCE_EXHAUSTED.
    #[serde(with = "humantime_serde")]
    pub admission_wait: Duration,
    /// The `Retry-After` sent with an overload refusal.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// How often baselines and the inventory are written to the store (they are also written on shutdown).
    #[serde(with = "humantime_serde")]
    pub state_interval: Duration,
    /// How often window-based detection (drift, refits, resolutions) runs.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            admission_wait: Duration::from_millis(500),
            retry_after: Duration::from_secs(1),
            state_interval: Duration::from_secs(30),
            tick_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// PostgreSQL wire protocol listener (psql, Grafana); the password is a token with the `query` scope.
    pub pg_addr: Option<SocketAddr>,
    /// Longest a query may run before it is cancelled.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Memory the running queries together may hold (one pool, so also what a single query may use) before
    /// a query fails with a clear error: a bound for the server rather than a quota per client.
    pub query_memory_bytes: usize,
    /// Answers the HTTP query API builds and sends at once; more wait up to `statement_timeout`, then get 429 with
    /// Retry-After. Each may hold `max_result_bytes` (64 MiB) of rows and twice that of text outside the
    /// query memory pool, so this bounds that memory. (pg streams its answers; `max_connections` bounds it.)
    pub max_concurrent_http_queries: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            pg_addr: Some("127.0.0.1:5433".parse().expect("valid literal address")),
            statement_timeout: Duration::from_secs(30),
            query_memory_bytes: 1 << 30,
            max_concurrent_http_queries: 4,
        }
    }
}

/// Flags shared by every command that runs or reads Vigil; each can also come from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// TOML configuration file (every key is documented in vigil.example.toml).
    #[arg(long, env = "VIGIL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (WAL, Parquet, outbox) [default: vigil-data].
    #[arg(long, env = "VIGIL_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Admin HTTP address (/healthz, /metrics, /api/v1/query) [default: 127.0.0.1:9464].
    #[arg(long, env = "VIGIL_ADMIN_ADDR", global = true)]
    pub admin_addr: Option<SocketAddr>,
    /// Log filter [default: info].
    #[arg(long, env = "VIGIL_LOG", global = true)]
    pub log: Option<String>,
}

/// Flags of the commands that run the server.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// OTLP gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "VIGIL_OTLP_GRPC_ADDR")]
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318].
    #[arg(long, env = "VIGIL_OTLP_HTTP_ADDR")]
    pub otlp_http_addr: Option<SocketAddr>,
    /// PostgreSQL wire listen address [default: 127.0.0.1:5433].
    #[arg(long, env = "VIGIL_PG_ADDR")]
    pub pg_addr: Option<SocketAddr>,
    /// Serve without authentication (every request is anonymous); for local experiments only.
    #[arg(long, env = "VIGIL_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_auth: bool,
    /// PEM certificate chain: every listener serves TLS with it (reloaded when the file changes).
    #[arg(long, env = "VIGIL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "VIGIL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Flush the write buffer to Parquet when its oldest row is this old (e.g. `10s`).
    #[arg(long, env = "VIGIL_FLUSH_AGE", value_parser = humantime::parse_duration)]
    pub flush_age: Option<Duration>,
    /// Kafka bootstrap servers (`host:port,...`): consume the Collector's OTLP topics as consumer group `vigil`.
    #[arg(long, env = "VIGIL_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka consumer group.
    #[arg(long, env = "VIGIL_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
    /// Export Vigil's own traces to this OTLP/HTTP endpoint (e.g. `http://collector:4318`).
    #[arg(long, env = "VIGIL_TELEMETRY_ENDPOINT")]
    pub telemetry_endpoint: Option<String>,
}

impl Config {
    /// Reads the file (if any) and applies the overrides.
    pub fn load(common: &CommonArgs, serve: Option<&ServeArgs>) -> Result<Config> {
        let mut config = match &common.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &common.data_dir {
            config.server.data_dir = dir.clone();
        }
        if let Some(addr) = common.admin_addr {
            config.server.admin_addr = addr;
        }
        if let Some(log) = &common.log {
            config.server.log = log.clone();
        }
        if let Some(serve) = serve {
            if let Some(a) = serve.otlp_grpc_addr {
                config.otlp.grpc_addr = a;
            }
            if let Some(a) = serve.otlp_http_addr {
                config.otlp.http_addr = a;
            }
            if let Some(a) = serve.pg_addr {
                config.sql.pg_addr = Some(a);
            }
            if serve.no_auth {
                config.auth.enabled = false;
            }
            if let (Some(cert), Some(key)) = (&serve.tls_cert, &serve.tls_key) {
                // Keep the file's client CA and reload interval; the flags name only the pair.
                let mut tls = config
                    .tls
                    .take()
                    .unwrap_or_else(|| TlsConfig::new(cert, key));
                tls.cert_file = cert.clone();
                tls.key_file = key.clone();
                config.tls = Some(tls);
            }
            if let Some(age) = serve.flush_age {
                config.store.flush_age = age;
            }
            if let Some(b) = &serve.kafka_brokers {
                config.kafka.brokers = b.clone();
            }
            if let Some(g) = &serve.kafka_group {
                config.kafka.group_id = g.clone();
            }
            if let Some(e) = &serve.telemetry_endpoint {
                config.telemetry.otlp_endpoint = Some(e.clone());
            }
        }
        // One data directory for every component unless the file set the store's explicitly.
        if config.store.data_dir == vigil_store::StoreConfig::default().data_dir {
            config.store.data_dir = config.server.data_dir.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// The configuration as `vigil config` prints it: librdkafka properties that hold credentials
    /// (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...) shown as `***`, as
    /// webhook secrets already are.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for (key, value) in shown.kafka.properties.iter_mut() {
            let key = key.to_ascii_lowercase();
            if ["password", "secret", "credential", "token"]
                .iter()
                .any(|word| key.contains(word))
                || key.ends_with(".key.pem")
            {
                *value = "***".into();
            }
        }
        shown
    }

    /// Values that parse but cannot run: refused at start rather than failing a background task later.
    fn validate(&self) -> Result<()> {
        for (name, interval) in [
            ("pipeline.tick_interval", self.pipeline.tick_interval),
            ("pipeline.state_interval", self.pipeline.state_interval),
        ] {
            if interval.is_zero() {
                anyhow::bail!("{name} must be longer than 0s");
            }
        }
        // A query reads the files of the snapshot it started with, and compaction and retention delete the
        // files they replace `compaction_grace` after those leave the manifest: a query allowed to run
        // longer could find its files gone half-way.
        if self.store.compaction_grace < self.sql.statement_timeout {
            anyhow::bail!(
                "store.compaction_grace ({}) must be at least sql.statement_timeout ({}): a query may read \
                 files for that long after compaction or retention replaced them",
                humantime::format_duration(self.store.compaction_grace),
                humantime::format_duration(self.sql.statement_timeout)
            );
        }
        Ok(())
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_timeout_longer_than_the_compaction_grace_is_refused() {
        let mut config = Config::default();
        assert!(config.validate().is_ok(), "the defaults hold together");
        config.sql.statement_timeout = Duration::from_secs(600);
        let e = config
            .validate()
            .expect_err("a 10 min query against a 2 min grace");
        assert!(
            e.to_string().contains(
                "store.compaction_grace (2m) must be at least sql.statement_timeout (10m)"
            ),
            "{e}"
        );
        config.store.compaction_grace = Duration::from_secs(600);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn example_config_parses_and_matches_the_defaults_it_documents() {
        let text = include_str!("../vigil.example.toml");
        let parsed: Config = toml::from_str(text).expect("vigil.example.toml parses");
        assert_eq!(parsed.server.admin_addr, ServerConfig::default().admin_addr);
        assert_eq!(parsed.otlp.grpc_addr, Config::default().otlp.grpc_addr);
        assert_eq!(parsed.auth, AuthConfig::default());
        assert_eq!(parsed.tls, None);
        let store = vigil_store::StoreConfig::default();
        assert_eq!(
            (parsed.store.flush_rows, parsed.store.flush_bytes),
            (store.flush_rows, store.flush_bytes),
            "the write buffer's documented size"
        );
        assert_eq!(
            parsed.telemetry.otlp_endpoint, None,
            "no export unless configured"
        );
        assert_eq!(
            parsed.telemetry.service_name,
            TelemetryConfig::default().service_name
        );
        assert_eq!(
            parsed.telemetry.sample_ratio,
            TelemetryConfig::default().sample_ratio
        );
    }

    #[test]
    fn printed_configs_hide_kafka_credentials() {
        let mut config = Config::default();
        for (k, v) in [
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "hunter3"),
            ("sasl.oauthbearer.client.secret", "hunter4"),
            ("security.protocol", "SASL_SSL"),
        ] {
            config.kafka.properties.insert(k.into(), v.into());
        }
        let text = toml::to_string_pretty(&config.redacted()).unwrap();
        assert!(!text.contains("hunter"), "{text}");
        assert!(text.contains("SASL_SSL"), "{text}");
    }

    #[test]
    fn zero_intervals_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(&file, "[pipeline]\ntick_interval = \"0s\"\n").unwrap();
        let common = CommonArgs {
            config: Some(file),
            ..Default::default()
        };
        let err = Config::load(&common, None).expect_err("a zero tick interval");
        assert!(err.to_string().contains("pipeline.tick_interval"), "{err}");
    }

    #[test]
    fn telemetry_endpoint_comes_from_the_file_or_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(
            &file,
            "[telemetry]\notlp_endpoint = \"http://file:4318\"\nsample_ratio = 0.25\n",
        )
        .unwrap();
        let common = CommonArgs {
            config: Some(file),
            ..Default::default()
        };
        let c = Config::load(&common, Some(&ServeArgs::default())).unwrap();
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://file:4318")
        );
        assert_eq!(c.telemetry.sample_ratio, 0.25);
        let serve = ServeArgs {
            telemetry_endpoint: Some("http://flag:4318".into()),
            ..Default::default()
        };
        let c = Config::load(&common, Some(&serve)).unwrap();
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://flag:4318")
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(
            &file,
            "[server]\ndata_dir = \"/from/file\"\nadmin_addr = \"127.0.0.1:1000\"\n",
        )
        .unwrap();
        let common = CommonArgs {
            config: Some(file),
            admin_addr: Some("127.0.0.1:2000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(&common, None).unwrap();
        assert_eq!(c.server.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.store.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.server.admin_addr.port(), 2000);
    }

    #[test]
    fn auth_is_on_by_default_and_flags_turn_it_off_and_tls_on() {
        let c = Config::load(&CommonArgs::default(), Some(&ServeArgs::default())).unwrap();
        assert!(c.auth.enabled, "secure by default");
        assert!(c.tls.is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(
            &file,
            "[tls]\ncert_file = \"/file/cert.pem\"\nkey_file = \"/file/key.pem\"\nclient_ca_file = \"/file/ca.pem\"\n",
        )
        .unwrap();
        let common = CommonArgs {
            config: Some(file),
            ..Default::default()
        };
        let serve = ServeArgs {
            no_auth: true,
            tls_cert: Some("/flag/cert.pem".into()),
            tls_key: Some("/flag/key.pem".into()),
            ..Default::default()
        };
        let c = Config::load(&common, Some(&serve)).unwrap();
        assert!(!c.auth.enabled);
        let tls = c.tls.expect("tls from file and flags");
        assert_eq!(tls.cert_file, PathBuf::from("/flag/cert.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/flag/key.pem"));
        assert_eq!(
            tls.client_ca_file,
            Some(PathBuf::from("/file/ca.pem")),
            "the file's mTLS setting stays"
        );
    }

    #[test]
    fn no_auth_is_a_flag_and_tls_needs_both_files() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            serve: ServeArgs,
        }
        assert!(!T::try_parse_from(["t"]).unwrap().serve.no_auth);
        assert!(T::try_parse_from(["t", "--no-auth"]).unwrap().serve.no_auth);
        assert!(
            T::try_parse_from(["t", "--tls-cert", "c.pem"]).is_err(),
            "cert without key is refused"
        );
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let c = Config {
            tls: Some(TlsConfig::new("/c.pem", "/k.pem")),
            ..Config::default()
        };
        let text = toml::to_string_pretty(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.auth, c.auth);
        assert_eq!(back.tls, c.tls);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[server]\nadmin_adr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("admin_adr"), "{err}");
    }
}
