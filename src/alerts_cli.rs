//! `vigil alerts dead-letters | replay | test`: the operator's side of alert delivery, on the data
//! directory's outbox. The outbox is a single-writer embedded database, so these run while the server is
//! stopped; a replayed delivery is sent by the next `vigil serve`.

use anyhow::{Context, Result};
use clap::Subcommand;
use vigil_respond::{Replay, Responder};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List deliveries that were dead-lettered (4xx, redirects) or whose destination was disabled (410).
    DeadLetters,
    /// Queue dead-lettered deliveries again, keeping their webhook ids (receivers deduplicate on them).
    Replay {
        /// Webhook ids or finding ids; nothing means every dead letter.
        ids: Vec<String>,
    },
    /// Send a clearly marked test finding to a destination and print the receiver's answer.
    Test {
        /// The destination's `name` in `[[respond.destinations]]` (or `playbook:<name>`).
        destination: String,
    },
}

fn open(config: &Config) -> Result<std::sync::Arc<Responder>> {
    let path = config.server.data_dir.join("outbox.redb");
    Responder::open(config.respond.clone(), &path).with_context(|| {
        format!(
            "opening the alert outbox {} (stop `vigil serve` first: it holds the outbox)",
            path.display()
        )
    })
}

pub async fn run(config: Config, command: AlertsCommand) -> Result<()> {
    let responder = open(&config)?;
    match command {
        AlertsCommand::DeadLetters => {
            let letters = responder.dead_letters();
            if letters.is_empty() {
                println!("no dead letters");
            }
            for d in letters {
                println!(
                    "{}  {:<12} {:<10} finding={} rev={} attempts={} status={:?} code={} error={}",
                    d.webhook_id,
                    d.destination,
                    format!("{:?}", d.activity).to_lowercase(),
                    d.finding_id,
                    d.revision,
                    d.attempts,
                    d.status,
                    d.last_status_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.last_error.as_deref().unwrap_or("-"),
                );
            }
        }
        AlertsCommand::Replay { ids } => {
            let which = if ids.is_empty() {
                Replay::All
            } else {
                Replay::Ids(ids)
            };
            let n = responder.replay(&which).context("replaying dead letters")?;
            println!("{n} deliveries queued again; the next `vigil serve` sends them");
        }
        AlertsCommand::Test { destination } => {
            let answer = responder
                .send_test(&destination)
                .await
                .context("sending the test finding")?;
            println!("{destination} answered HTTP {}", answer.status);
            if responder.unsigned_destinations().contains(&destination) {
                println!(
                    "warning: {destination} has no `secret`, so the request was not signed and the \
                     receiver cannot verify it came from Vigil"
                );
            }
            if !answer.body.is_empty() {
                println!("{}", answer.body);
            }
            // A health check in a script must fail when the receiver refuses.
            if !(200..300).contains(&answer.status) {
                anyhow::bail!(
                    "{destination} refused the test finding (HTTP {})",
                    answer.status
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use vigil_respond::{DestinationConfig, Format};

    /// A receiver on 127.0.0.1 that answers every request with `status`.
    async fn receiver(status: StatusCode) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move || async move { status });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    fn config(dir: &tempfile::TempDir, url: String) -> Config {
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        config.respond.destinations = vec![DestinationConfig {
            name: "soar".into(),
            url,
            format: Format::Json,
            auth: None,
            secret: None,
            min_severity: vigil_detect::alert::Severity::Informational,
            detectors: vec![],
            exclude_detectors: vec![],
        }];
        config.respond.egress.allow_hosts = vec!["127.0.0.1".into()];
        config
    }

    #[tokio::test]
    async fn the_test_command_fails_when_the_receiver_refuses() {
        let test = || AlertsCommand::Test {
            destination: "soar".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let ok = config(&dir, receiver(StatusCode::NO_CONTENT).await);
        run(ok, test()).await.expect("a 204 passes");
        let dir = tempfile::tempdir().unwrap();
        let refused = config(&dir, receiver(StatusCode::INTERNAL_SERVER_ERROR).await);
        let err = run(refused, test()).await.expect_err("a 500 fails");
        assert!(err.to_string().contains("HTTP 500"), "{err}");
    }
}
