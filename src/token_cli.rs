//! `vigil token create|list|revoke`: manages the token store in the data directory. Works while a server
//! runs: the server notices the file changing, so a revocation takes effect within `auth.recheck_interval`.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vigil_ingest::security::{
    scopes, store_options, Scope, StoreOptions, TokenInfo, TokenOrigin, TokenStore, TOKENS_FILE,
};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored). Scripts: `TOKEN=$(vigil token create ...)`.
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List(ListArgs),
    /// Revoke the token with this id, or every active token with this name.
    Revoke {
        /// A token id (`tok_...`) or name.
        id_or_name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The source name recorded on events sent with this token (letters, digits, '.', '_', '-').
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes: ingest, query, admin (admin implies the others).
    #[arg(long, alias = "scopes", value_delimiter = ',', required = true, value_parser = parse_scope)]
    pub scope: Vec<Scope>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_scope(s: &str) -> Result<Scope, scopes::UnknownScope> {
    s.parse()
}

/// The store a server with this config uses, whether or not authentication is enabled in it. A `token_file`
/// that cannot be read (a mounted secret half-written, a typo in it) does not stop the command: an operator
/// revoking a leaked token in `tokens.json` must not be held up by another file. The store is then opened
/// without it; the second value says why, for the command to warn.
fn open_despite_token_file(config: &Config) -> Result<(TokenStore, Option<String>)> {
    let path = config.server.data_dir.join(TOKENS_FILE);
    let options = store_options(&config.auth);
    let opened = TokenStore::open_with(&path, options.clone());
    match (opened, &options.token_file) {
        (Ok(store), _) => Ok((store, None)),
        (Err(e), Some(token_file)) => {
            let without = StoreOptions {
                token_file: None,
                ..options.clone()
            };
            let store = TokenStore::open_with(&path, without)
                .with_context(|| format!("opening {}", path.display()))?;
            Ok((
                store,
                Some(format!(
                    "the token_file {} was not read ({e}): its tokens are left out",
                    token_file.display()
                )),
            ))
        }
        (Err(e), None) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

pub fn run(config: &Config, command: TokenCommand) -> Result<()> {
    let (store, skipped) = open_despite_token_file(config)?;
    if let Some(why) = &skipped {
        eprintln!("warning: {why}");
    }
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Create(args) => {
            let (info, token) = store
                .create(&args.name, &args.scope)
                .context("creating the token")?;
            // The token alone on stdout, so it can be captured; the rest on stderr.
            writeln!(out, "{token}")?;
            eprintln!(
                "created {} (name {}, scopes {}); store it now, it will not be shown again",
                info.id,
                info.name,
                scopes::display_list(&info.scopes)
            );
        }
        TokenCommand::List(args) => {
            let tokens = store.list();
            if args.json {
                serde_json::to_writer_pretty(&mut out, &tokens)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", table(&tokens))?;
            }
        }
        TokenCommand::Revoke { id_or_name } => {
            for info in store.revoke(&id_or_name).context("revoking")? {
                writeln!(out, "revoked {} ({})", info.id, info.name)?;
            }
            // Revoking a source by name must cut it off: a config token of that name still works.
            let left = store
                .list()
                .into_iter()
                .filter(|t| t.name == id_or_name && t.origin != TokenOrigin::Store)
                .count();
            if left > 0 {
                anyhow::bail!(
                    "{left} token(s) named {id_or_name:?} from [auth] tokens or the token_file still \
                     work: remove them there"
                );
            }
            if skipped.is_some() {
                eprintln!(
                    "warning: a token named {id_or_name:?} in the unread token_file would still work"
                );
            }
        }
    }
    Ok(())
}

fn table(tokens: &[TokenInfo]) -> String {
    let mut s = format!(
        "{:<18} {:<24} {:<20} {:<20} {:<8} {}\n",
        "ID", "NAME", "SCOPES", "CREATED", "REVOKED", "ORIGIN"
    );
    for t in tokens {
        let created = t
            .created_at
            .map(|c| c.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let origin = serde_json::to_value(t.origin)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<18} {:<24} {:<20} {:<20} {:<8} {}\n",
            t.id,
            t.name,
            scopes::display_list(&t.scopes),
            created,
            if t.revoked { "yes" } else { "no" },
            origin
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_ingest::security::{ConfiguredToken, TokenHash};

    fn open(config: &Config) -> Result<TokenStore> {
        Ok(open_despite_token_file(config)?.0)
    }

    #[test]
    fn create_list_revoke_on_the_data_dir_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        let store = open(&config).unwrap();
        let (info, token) = store.create("ci", &[Scope::Ingest, Scope::Query]).unwrap();
        let listed = table(&open(&config).unwrap().list());
        assert!(
            listed.contains(&info.id) && listed.contains("ingest,query") && listed.contains(" no "),
            "{listed}"
        );
        assert!(!listed.contains(&token), "the secret is never listed");
        run(
            &config,
            TokenCommand::Revoke {
                id_or_name: "ci".into(),
            },
        )
        .unwrap();
        assert!(open(&config).unwrap().verify(&token).is_none());
        assert!(
            run(
                &config,
                TokenCommand::Revoke {
                    id_or_name: "ci".into()
                }
            )
            .is_err(),
            "nothing left to revoke"
        );
        // A store token and a config token of one name: the store one is revoked, and the command
        // fails because the name still gets in.
        let config_token = "operator-chosen-secret-value-with-enough-entropy";
        config.auth.tokens = vec![ConfiguredToken {
            name: "grafana".into(),
            scopes: vec![Scope::Query],
            hash: TokenHash::of(config_token).to_string(),
        }];
        let (_, stored) = open(&config)
            .unwrap()
            .create("grafana", &[Scope::Query])
            .unwrap();
        let err = run(
            &config,
            TokenCommand::Revoke {
                id_or_name: "grafana".into(),
            },
        )
        .expect_err("a config token of that name still works");
        assert!(err.to_string().contains("still"), "{err}");
        assert!(open(&config).unwrap().verify(&stored).is_none());

        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            create: CreateArgs,
        }
        let parsed = T::try_parse_from([
            "t",
            "--name",
            "x",
            "--scope",
            "query,ingest",
            "--scope",
            "admin",
        ])
        .unwrap();
        assert_eq!(
            parsed.create.scope,
            [Scope::Query, Scope::Ingest, Scope::Admin]
        );
        assert!(T::try_parse_from(["t", "--name", "x", "--scope", "root"]).is_err());
        assert!(
            T::try_parse_from(["t", "--name", "x"]).is_err(),
            "a token needs a scope"
        );
    }

    /// A broken `token_file` does not stop a revocation in `tokens.json` (nor a list or a create); only a
    /// broken `tokens.json` does.
    #[test]
    fn a_broken_token_file_does_not_stop_revoking_a_stored_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        let (_, leaked) = open(&config)
            .unwrap()
            .create("laptop", &[Scope::Ingest])
            .unwrap();
        let token_file = dir.path().join("mounted-tokens.toml");
        std::fs::write(&token_file, "tokens = [ { name = \"half-written\"").unwrap();
        config.auth.token_file = Some(token_file);
        assert!(
            TokenStore::open_with(
                config.server.data_dir.join(TOKENS_FILE),
                store_options(&config.auth)
            )
            .is_err(),
            "the server refuses to start on it"
        );
        run(
            &config,
            TokenCommand::Revoke {
                id_or_name: "laptop".into(),
            },
        )
        .expect("revoked despite the token_file");
        assert!(open(&config).unwrap().verify(&leaked).is_none());
        assert!(run(&config, TokenCommand::List(ListArgs { json: true })).is_ok());

        std::fs::write(dir.path().join(TOKENS_FILE), "{ not json").unwrap();
        assert!(
            run(&config, TokenCommand::List(ListArgs { json: true })).is_err(),
            "a broken tokens.json is still an error"
        );
    }
}
