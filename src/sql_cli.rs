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
}

pub async fn run(config: Config, args: SqlArgs) -> Result<()> {
    let batches = if args.offline {
        query_offline(&config, &args.sql).await?
    } else {
        match query_server(&config, &args.sql).await {
            Ok(b) => b,
            Err(ServerError::Unreachable) => query_offline(&config, &args.sql).await?,
            Err(ServerError::Query(msg)) => bail!("{msg}"),
        }
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&batches)?)?,
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
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

async fn query_server(config: &Config, sql: &str) -> Result<Vec<RecordBatch>, ServerError> {
    let url = format!("http://{}/api/v1/query", config.server.admin_addr);
    let client = reqwest::Client::new();
    let resp = client
        .post(&url)
        .json(&serde_json::json!({ "sql": sql, "format": "arrow" }))
        .send()
        .await
        .map_err(|_| ServerError::Unreachable)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| ServerError::Query(format!("reading the answer: {e}")))?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(ServerError::Query(msg));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .map_err(|e| ServerError::Query(format!("decoding the answer: {e}")))?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| ServerError::Query(format!("decoding the answer: {e}")))
}

async fn query_offline(config: &Config, sql: &str) -> Result<Vec<RecordBatch>> {
    if !config.server.data_dir.exists() {
        return Err(anyhow!(
            "no Vigil answers at {} and there is no data directory {}",
            config.server.admin_addr,
            config.server.data_dir.display()
        ));
    }
    let store = vigil_store::Store::open(config.store.clone()).await.context("opening the data directory")?;
    let limits = crate::serve::sql_limits(config);
    let ctx = crate::serve::sql_context(store.clone(), &limits)?;
    let result = vigil_sql::run_query(&ctx, sql, &limits).await.map_err(|e| anyhow!("{e}"));
    store.shutdown().await.context("closing the store")?;
    result
}
