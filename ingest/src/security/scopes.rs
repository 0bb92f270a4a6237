//! What a token may do. Scopes are coarse on purpose: one per kind of listener, so an operator can reason
//! about a leaked token in one sentence ("it can send telemetry, nothing else").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One permission a token carries. `Admin` implies every other scope, so the bootstrap admin token also
/// works for queries and ingest without being listed three times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send telemetry (OTLP gRPC and HTTP).
    Ingest,
    /// Read through the SQL HTTP API and the PostgreSQL listener.
    Query,
    /// Manage Vigil through the admin port.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Query, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token holding `self` may do what `required` protects.
    pub fn grants(self, required: Scope) -> bool {
        self == Scope::Admin || self == required
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of `ingest`, `query`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?} (expected ingest, query or admin)")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ingest" => Ok(Scope::Ingest),
            "query" => Ok(Scope::Query),
            "admin" => Ok(Scope::Admin),
            _ => Err(UnknownScope(s.to_string())),
        }
    }
}

/// Whether any scope in `held` grants `required`.
pub fn any_grants(held: &[Scope], required: Scope) -> bool {
    held.iter().any(|s| s.grants(required))
}

/// Parses a comma-separated scope list as typed on the command line (`--scopes ingest,query`).
pub fn parse_list(s: &str) -> Result<Vec<Scope>, UnknownScope> {
    let mut scopes: Vec<Scope> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(Scope::from_str)
        .collect::<Result<_, _>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// Formats scopes the way [`parse_list`] reads them.
pub fn display_list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_everything_and_others_only_themselves() {
        for required in Scope::ALL {
            assert!(Scope::Admin.grants(required));
        }
        assert!(Scope::Ingest.grants(Scope::Ingest));
        assert!(!Scope::Ingest.grants(Scope::Query));
        assert!(!Scope::Ingest.grants(Scope::Admin));
        assert!(!Scope::Query.grants(Scope::Ingest));
        assert!(!Scope::Query.grants(Scope::Admin));
        assert!(any_grants(&[Scope::Ingest, Scope::Query], Scope::Query));
        assert!(!any_grants(&[], Scope::Query));
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in Scope::ALL {
            assert_eq!(s.to_string().parse::<Scope>(), Ok(s));
        }
        assert_eq!(" Query ".parse::<Scope>(), Ok(Scope::Query));
        assert_eq!("root".parse::<Scope>(), Err(UnknownScope("root".into())));
        let list = parse_list("query,ingest,,query").expect("valid list");
        assert_eq!(list, vec![Scope::Ingest, Scope::Query]);
        assert_eq!(display_list(&list), "ingest,query");
        assert!(parse_list("ingest,write").is_err());
    }

    #[test]
    fn serde_uses_lowercase_names() {
        let json = serde_json::to_string(&[Scope::Ingest, Scope::Admin]).expect("serialise");
        assert_eq!(json, r#"["ingest","admin"]"#);
        let back: Vec<Scope> = serde_json::from_str(r#"["query"]"#).expect("deserialise");
        assert_eq!(back, vec![Scope::Query]);
    }
}
