//! `vigil sql "SELECT ..."`: asks the running server (which also sees rows not yet flushed to Parquet);
//! when no server answers, opens the data directory itself.

use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};

use crate::config::Config;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query (DataFusion SQL; tables: events, alerts, baselines, inventory, alert_deliveries).
    pub sql: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Query the data directory directly, without asking a running server.
    #[arg(long)]
    pub offline: bool,
    /// A token with the `query` scope for the running server.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate(s) to trust for the server's TLS certificate (implies https); without it, a
    /// `[tls]` config trusts its own `cert_file` (a self-signed certificate or a chain ending in the CA).
    #[arg(long, env = "VIGIL_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

pub async fn run(config: Config, args: SqlArgs) -> Result<()> {
    let batches = if args.offline {
        query_offline(&config, &args.sql).await?
    } else {
        match query_server(&config, &args, args.token.as_deref()).await {
            Ok(b) => b,
            Err(ServerError::Unreachable) => query_offline(&config, &args.sql).await?,
            Err(ServerError::Query(msg)) => bail!("{msg}"),
        }
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(&batches)?
        )?,
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for b in &batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?;
            writeln!(out)?;
        }
    }
    Ok(())
}

enum ServerError {
    Unreachable,
    Query(String),
}

/// A client for the admin port: over TLS when `--tls-ca` is given or the config has `[tls]`, trusting that
/// file in addition to the usual roots (so a private CA works without installing it system-wide).
fn client(
    config: &Config,
    tls_ca: Option<&std::path::Path>,
) -> Result<(reqwest::Client, &'static str), ServerError> {
    let Some(trusted) = tls_ca.or(config.tls.as_ref().map(|t| t.cert_file.as_path())) else {
        return Ok((reqwest::Client::new(), "http"));
    };
    let pem = std::fs::read(trusted).map_err(|e| {
        ServerError::Query(format!(
            "reading the TLS certificate {}: {e}",
            trusted.display()
        ))
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| ServerError::Query(format!("TLS certificate {}: {e}", trusted.display())))?;
    let builder = certs
        .into_iter()
        .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c));
    let client = builder
        .build()
        .map_err(|e| ServerError::Query(format!("setting up TLS: {e}")))?;
    Ok((client, "https"))
}

async fn query_server(
    config: &Config,
    args: &SqlArgs,
    token: Option<&str>,
) -> Result<Vec<RecordBatch>, ServerError> {
    let sql = args.sql.as_str();
    let (client, scheme) = client(config, args.tls_ca.as_deref())?;
    let url = format!("{scheme}://{}/api/v1/query", config.server.admin_addr);
    let mut request = client
        .post(&url)
        .json(&serde_json::json!({ "sql": sql, "format": "arrow" }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.map_err(|e| {
        // Only "nobody listens here" on this machine (loopback, or 0.0.0.0 as a server's own config says)
        // means "no server: read the directory". A TLS
        // failure, a reset or a remote server that is down must not turn into an answer from a local
        // (maybe stale) data directory.
        let ip = config.server.admin_addr.ip();
        if connection_refused(&e) && (ip.is_loopback() || ip.is_unspecified()) {
            ServerError::Unreachable
        } else {
            ServerError::Query(format!(
                "asking the server at {url}: {}",
                vigil_respond::delivery::error_chain(&e)
            ))
        }
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ServerError::Query(format!("reading the answer: {e}")))?;
    if status == reqwest::StatusCode::UNAUTHORIZED && token.is_none() {
        return Err(ServerError::Query(
            "the server requires a token: pass --token or set VIGIL_TOKEN".into(),
        ));
    }
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(ServerError::Query(msg));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .map_err(|e| ServerError::Query(format!("decoding the answer: {e}")))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Query(format!("decoding the answer: {e}")))
}

fn connection_refused(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

async fn query_offline(config: &Config, sql: &str) -> Result<Vec<RecordBatch>> {
    if !config.store.data_dir.exists() {
        return Err(anyhow!(
            "no Vigil answers at {} and there is no data directory {}",
            config.server.admin_addr,
            config.store.data_dir.display()
        ));
    }
    let store = vigil_store::Store::open(config.store.clone())
        .await
        .context("opening the data directory")?;
    let limits = crate::serve::sql_limits(config);
    let ctx = crate::serve::sql_context(store.clone(), &limits)?;
    let result = vigil_sql::run_query(&ctx, sql, &limits)
        .await
        .map_err(|e| anyhow!("{e}"));
    store.shutdown().await.context("closing the store")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SqlArgs {
        SqlArgs {
            sql: "SELECT count(*) FROM events".into(),
            format: Format::Csv,
            offline: false,
            token: None,
            tls_ca: None,
        }
    }

    #[tokio::test]
    async fn only_a_refused_connection_falls_back_to_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        config.store.data_dir = dir.path().to_path_buf();

        // Nobody listens: the directory answers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.server.admin_addr = closed.local_addr().unwrap();
        drop(closed);
        run(config.clone(), args())
            .await
            .expect("the offline answer");
        // The same through a server's own config, which listens on 0.0.0.0.
        let mut unspecified = config.clone();
        unspecified
            .server
            .admin_addr
            .set_ip(std::net::Ipv4Addr::UNSPECIFIED.into());
        run(unspecified, args())
            .await
            .expect("the offline answer for 0.0.0.0");

        // Something listens but the exchange fails (it hangs up at once, as a TLS port does to plain
        // HTTP): an error, not an answer from the local directory.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        config.server.admin_addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let err = run(config, args()).await.expect_err("no fallback");
        assert!(err.to_string().contains("asking the server"), "{err}");
    }
}
