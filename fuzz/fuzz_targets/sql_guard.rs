//! The read-only SQL guard on arbitrary text, as the HTTP API (DataFusion's parser, stateless policy) and the
//! pg-wire server (the pg-compatibility parser, session policy) call it.
//!
//! Properties: no panic; and an oracle written independently of the guard's own visitor, from its documented
//! contract: whatever it accepts is only queries, `EXPLAIN` of those, `SHOW`/`DESCRIBE`, and under the pg
//! policy whitelisted `SET`s and transaction no-ops; nothing nested in an accepted statement is a statement
//! that is not a query; no relation it reads is a path; no function it calls is a `read_*` file reader.
//! Also: the count it returns is the number of statements, and what the stateless policy accepts the pg
//! policy accepts too (pg only adds).

#![no_main]

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    visit_expressions, visit_relations, visit_statements, Expr, Statement,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use libfuzzer_sys::fuzz_target;
use vigil_sql::guard::{check_sql, check_statement, GuardPolicy, SESSION_VARIABLES};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };

    let stateless = check_sql(sql, GuardPolicy::STATELESS);
    let pg = check_sql(sql, GuardPolicy::PG_SESSION);
    if let Ok(n) = stateless {
        assert_eq!(
            pg.as_ref().ok(),
            Some(&n),
            "accepted for HTTP but not for pg: {sql:?} -> {pg:?}"
        );
    }
    for (policy, outcome) in [
        (GuardPolicy::STATELESS, stateless),
        (GuardPolicy::PG_SESSION, pg),
    ] {
        let Ok(count) = outcome else { continue };
        let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
            .expect("the guard accepted SQL that does not parse");
        assert_eq!(count, statements.len(), "statement count");
        for statement in &statements {
            if let Err(why) = allowed_df(statement, policy) {
                panic!("guard ({policy:?}) accepted {why}: {statement}");
            }
        }
    }

    // The pg server parses with its own parser and guards each statement.
    if let Ok(statements) = PostgresCompatibilityParser::new().parse(sql) {
        for statement in &statements {
            if check_statement(statement, GuardPolicy::PG_SESSION).is_ok() {
                if let Err(why) = allowed(statement, GuardPolicy::PG_SESSION) {
                    panic!("guard (pg parser) accepted {why}: {statement}");
                }
            }
        }
    }
});

fn allowed_df(statement: &DFStatement, policy: GuardPolicy) -> Result<(), String> {
    match statement {
        DFStatement::Statement(s) => allowed(s, policy),
        // EXPLAIN [ANALYZE] runs or plans its statement: the statement must stand on its own, without pg extras.
        DFStatement::Explain(explain) => allowed_df(&explain.statement, GuardPolicy::STATELESS),
        DFStatement::CreateExternalTable(_) => Err("CREATE EXTERNAL TABLE".into()),
        DFStatement::CopyTo(_) => Err("COPY".into()),
        DFStatement::Reset(_) => Err("RESET".into()),
    }
}

fn allowed(statement: &Statement, policy: GuardPolicy) -> Result<(), String> {
    match statement {
        Statement::Query(_) => {}
        Statement::Explain { statement, .. } => return allowed(statement, GuardPolicy::STATELESS),
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCreate { .. } => {}
        Statement::Set(set) => {
            if !policy.allow_session_settings {
                return Err("SET under a policy without session settings".into());
            }
            let text = set.to_string().to_ascii_lowercase();
            let whitelisted = text.starts_with("set time zone")
                || SESSION_VARIABLES.iter().any(|v| {
                    text.strip_prefix("set ")
                        .map(|rest| {
                            ["session ", "local ", "global "]
                                .iter()
                                .find_map(|scope| rest.strip_prefix(scope))
                                .unwrap_or(rest)
                        })
                        .is_some_and(|rest| {
                            rest.starts_with(v) && !rest[v.len()..].starts_with(['.', '_'])
                        })
                });
            if !whitelisted {
                return Err(format!("a SET that names no whitelisted variable ({text})"));
            }
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => {
            if !policy.allow_transactions {
                return Err("a transaction statement under a policy without them".into());
            }
            return Ok(());
        }
        other => {
            return Err(format!(
                "a statement that is not read-only ({})",
                kind_of(other)
            ))
        }
    }
    nested(statement)
}

/// What is inside an accepted statement: nested statements may only be queries, relations may not be paths,
/// functions may not read files.
fn nested(statement: &Statement) -> Result<(), String> {
    let mut first = true;
    let flow = visit_statements(statement, |s| {
        let top = std::mem::replace(&mut first, false);
        if top || matches!(s, Statement::Query(_)) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(format!("a nested {}", kind_of(s)))
        }
    });
    if let ControlFlow::Break(why) = flow {
        return Err(why);
    }
    if let ControlFlow::Break(name) = visit_relations(statement, |name| {
        let name = name.to_string();
        if name.contains('/') || name.contains('\\') {
            ControlFlow::Break(name)
        } else {
            ControlFlow::Continue(())
        }
    }) {
        return Err(format!("reading the path-like relation {name}"));
    }
    if let ControlFlow::Break(name) = visit_expressions(statement, |expr| match expr {
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let last = name.rsplit('.').next().unwrap_or(&name).trim_matches('"');
            if last.starts_with("read_") {
                ControlFlow::Break(name)
            } else {
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    }) {
        return Err(format!("calling the file reader {name}"));
    }
    Ok(())
}

fn kind_of(statement: &Statement) -> String {
    statement
        .to_string()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
