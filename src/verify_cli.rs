//! `vigil verify`: checks the tamper-evident audit chain, and hands an auditor a signed chain head
//! (`--export-head`) that they can later check offline against a copy of the chain (`--check-head`),
//! without trusting the machine that keeps it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use vigil_store::audit;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// After a clean verification, sign the chain head with the store's ed25519 key and write it here as
    /// JSON (`-` for stdout). Refused when the chain is not clean.
    #[arg(long, value_name = "FILE")]
    pub export_head: Option<PathBuf>,
    /// Instead of verifying the data directory, check a head exported earlier: its signature, and that the
    /// chain still links intact up to it (so it was neither rewritten nor cut back behind it).
    #[arg(long, value_name = "FILE", conflicts_with = "export_head")]
    pub check_head: Option<PathBuf>,
    /// The chain to check the head against [default: <data dir>/_audit/chain.jsonl].
    #[arg(long, value_name = "FILE", requires = "check_head")]
    pub chain: Option<PathBuf>,
    /// The public key (hex) the auditor trusts; without it any valid signature is accepted.
    #[arg(long, value_name = "HEX", requires = "check_head")]
    pub trusted_key: Option<String>,
}

/// Exits with status 1 when anything changed since it was sealed, or the head does not check.
pub async fn run(config: Config, args: VerifyArgs) -> Result<()> {
    if let Some(head_file) = &args.check_head {
        let signed: audit::SignedHead = serde_json::from_slice(
            &std::fs::read(head_file)
                .with_context(|| format!("reading {}", head_file.display()))?,
        )
        .with_context(|| format!("{} is not an exported chain head", head_file.display()))?;
        let chain_file = args
            .chain
            .clone()
            .unwrap_or_else(|| audit::chain_path(&config.store.data_dir));
        let chain = std::fs::read(&chain_file)
            .with_context(|| format!("reading {}", chain_file.display()))?;
        match audit::verify_signed_head(&signed, &chain, args.trusted_key.as_deref()) {
            Ok(()) => {
                println!(
                    "head seq {} (hash {}) signed at {} by {}: signature valid, chain intact up to it",
                    signed.seq, signed.hash, signed.signed_at, signed.public_key
                );
                return Ok(());
            }
            Err(e) => {
                println!(
                    "head seq {} does not check against {}: {e}",
                    signed.seq,
                    chain_file.display()
                );
                std::process::exit(1);
            }
        }
    }
    let report = audit::verify(&config.store).await?;
    if head_to_stdout(&args) {
        // stdout carries the head alone, so `--export-head - > head.json` reads back with --check-head.
        eprintln!("{report}");
    } else {
        println!("{report}");
    }
    if !report.is_clean() {
        std::process::exit(1);
    }
    if let Some(out) = &args.export_head {
        let head = audit::export_head(&config.store).context("signing the chain head")?;
        let json = serde_json::to_string_pretty(&head)?;
        if head_to_stdout(&args) {
            println!("{json}");
        } else {
            if out.is_dir() {
                bail!("{} is a directory", out.display());
            }
            std::fs::write(out, format!("{json}\n"))
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "signed head seq {} written to {} (public key {})",
                head.seq,
                out.display(),
                head.public_key
            );
        }
    }
    Ok(())
}

fn head_to_stdout(args: &VerifyArgs) -> bool {
    args.export_head
        .as_deref()
        .is_some_and(|out| out.as_os_str() == "-")
}
