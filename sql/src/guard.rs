//! The read-only guard for SQL that arrives over the network.
//!
//! DataFusion happily runs `CREATE EXTERNAL TABLE .. LOCATION '/etc/passwd'`, `COPY (..) TO '/tmp/x'` or
//! `SELECT * FROM read_csv('/etc/shadow')`: fine for a local analyst, not for an endpoint anyone with a token
//! can reach. The guard parses the SQL with DataFusion's parser and lets through only what reads Vigil's own
//! tables: queries, `EXPLAIN` of a query, `SHOW`/`DESCRIBE`, and (for pg sessions) `SET` of the few session
//! variables psql and Grafana send plus no-op transaction statements. Everything else is refused with an
//! error that names what was refused. `context::run_query_as` adds DataFusion's own `SQLOptions` check on the
//! plan as a second layer, so a statement the guard misjudges still cannot write or create anything.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    visit_relations, Expr, ObjectName, Query, Select, Set, SetExpr, Statement, TableFactor, Visit,
    Visitor,
};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::QueryError;

/// What was refused, worded for the person who sent the SQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is not allowed: this SQL endpoint is read-only (queries, EXPLAIN and SHOW only)")]
pub struct Refusal {
    /// The refused statement or function, e.g. `CREATE EXTERNAL TABLE` or `function read_csv`.
    pub what: String,
}

impl Refusal {
    fn new(what: impl Into<String>) -> Self {
        Self { what: what.into() }
    }
}

/// Which session statements an interface may pass through besides queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardPolicy {
    /// `SET` of [`SESSION_VARIABLES`] and `SET TIME ZONE`: pg clients send these on connect. They only change
    /// per-connection state in the pg server; over stateless HTTP they would change the shared context, so
    /// HTTP refuses them.
    pub allow_session_settings: bool,
    /// `BEGIN`/`COMMIT`/`ROLLBACK`, which the pg server answers as no-ops (some drivers wrap every query).
    pub allow_transactions: bool,
}

impl GuardPolicy {
    /// Stateless interfaces (HTTP API, CLI): queries only.
    pub const STATELESS: GuardPolicy = GuardPolicy {
        allow_session_settings: false,
        allow_transactions: false,
    };
    /// pg-wire sessions: queries plus harmless per-session statements.
    pub const PG_SESSION: GuardPolicy = GuardPolicy {
        allow_session_settings: true,
        allow_transactions: true,
    };
}

/// Session variables a pg client may `SET`. They are kept per connection by the pg server and never reach
/// DataFusion's shared configuration (`datafusion.*` is refused).
pub const SESSION_VARIABLES: &[&str] = &[
    "datestyle",
    "intervalstyle",
    "bytea_output",
    "application_name",
    "extra_float_digits",
    "search_path",
    "statement_timeout",
    "client_encoding",
    "client_min_messages",
    "standard_conforming_strings",
];

/// Table functions that compute rows instead of reading files. Any other table function is refused, which
/// covers `read_parquet`, `read_csv`, `read_json`, `read_avro` and whatever file readers DataFusion adds later.
const ALLOWED_TABLE_FUNCTIONS: &[&str] = &["range", "generate_series", "unnest"];

/// Parses `sql` with DataFusion's parser (the dialect DataFusion's own `ctx.sql` uses) and checks every
/// statement. Returns how many statements there are. A parse error is [`QueryError::Invalid`]; a refused
/// statement anywhere in a multi-statement string refuses the whole string.
pub fn check_sql(sql: &str, policy: GuardPolicy) -> Result<usize, QueryError> {
    check_nesting(sql, &GenericDialect {})?;
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| QueryError::Invalid(e.strip_backtrace()))?;
    for statement in &statements {
        check_df_statement(statement, policy)?;
    }
    Ok(statements.len())
}

/// How deep SQL may nest its expressions. sqlparser limits the depth of parentheses and subqueries (50), not
/// of operator chains: `1+1+...+1` parses in a loop into a tree as deep as the chain, and DataFusion's planner
/// (naming the column), its physical expressions and every tree's destructor recurse once per level. At
/// 300 levels that overflowed a 2 MiB thread stack in a debug build, and a stack overflow aborts the whole
/// process: ingest, detection and every listener with it. Dashboards' queries stay far below: a
/// long list of alternatives is an `IN (...)` list, which does not nest.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// Keywords that join or wrap an expression inside the parser's operator loop, so each one may add a level.
const OPERATOR_KEYWORDS: &[Keyword] = &[
    Keyword::AND,
    Keyword::OR,
    Keyword::XOR,
    Keyword::NOT,
    Keyword::IS,
    Keyword::IN,
    Keyword::LIKE,
    Keyword::ILIKE,
    Keyword::SIMILAR,
    Keyword::REGEXP,
    Keyword::RLIKE,
    Keyword::BETWEEN,
    Keyword::AT,
    Keyword::COLLATE,
    Keyword::OVERLAPS,
    Keyword::DIV,
    Keyword::OPERATOR,
];

/// Refuses `sql` when its expressions may nest deeper than [`MAX_EXPRESSION_DEPTH`], judged from its tokens
/// (tokenizing does not recurse), before any parser builds a tree that would take the process down.
///
/// The estimate is an upper bound of the parse tree's depth: within each pair of parentheses it counts the
/// operators since the last comma (each can wrap what came before it once more), and adds those of every
/// enclosing pair and one per pair. SQL that does not tokenize does not parse either, and is
/// [`QueryError::Invalid`] here already.
pub fn check_nesting(sql: &str, dialect: &dyn Dialect) -> Result<(), QueryError> {
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize()
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    // Operators counted at each open parenthesis level, innermost last, and their sum plus the levels.
    let mut levels: Vec<usize> = vec![0];
    let mut depth = 0;
    let mut deepest = 0;
    for token in &tokens {
        let top = levels.len() - 1;
        match token {
            Token::LParen => levels.push(0),
            Token::RParen if top > 0 => depth -= levels.pop().unwrap_or(0),
            Token::Comma => depth -= std::mem::take(&mut levels[top]),
            Token::SemiColon => {
                levels = vec![0];
                depth = 0;
            }
            Token::Word(w) if OPERATOR_KEYWORDS.contains(&w.keyword) => {
                levels[top] += 1;
                depth += 1;
            }
            Token::Word(_)
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::Whitespace(_)
            | Token::Period
            | Token::RParen
            | Token::EOF => {}
            t if is_literal(t) => {}
            _ => {
                levels[top] += 1;
                depth += 1;
            }
        }
        deepest = deepest.max(depth + levels.len());
    }
    if deepest > MAX_EXPRESSION_DEPTH {
        return Err(QueryError::TooComplex {
            depth: deepest,
            limit: MAX_EXPRESSION_DEPTH,
        });
    }
    Ok(())
}

/// String literals of every quoting style: values, which never nest.
fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// Checks one statement as DataFusion's parser produced it (with its `CREATE EXTERNAL TABLE`, `COPY` and
/// `EXPLAIN` extensions).
pub fn check_df_statement(statement: &DFStatement, policy: GuardPolicy) -> Result<(), Refusal> {
    match statement {
        DFStatement::Statement(s) => check_statement(s, policy),
        DFStatement::CreateExternalTable(_) => Err(Refusal::new("CREATE EXTERNAL TABLE")),
        DFStatement::CopyTo(_) => Err(Refusal::new("COPY")),
        // EXPLAIN ANALYZE runs its statement, so the inner statement must pass on its own.
        DFStatement::Explain(explain) => {
            check_df_statement(&explain.statement, GuardPolicy::STATELESS)
        }
        DFStatement::Reset(_) => Err(Refusal::new("RESET")),
    }
}

/// Checks one sqlparser statement (what the pg server's parser produces).
pub fn check_statement(statement: &Statement, policy: GuardPolicy) -> Result<(), Refusal> {
    match statement {
        Statement::Query(query) => check_query(query),
        Statement::Explain { statement, .. } => check_statement(statement, GuardPolicy::STATELESS),
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
        | Statement::ShowCreate { .. } => check_relations(statement),
        Statement::Set(set) if policy.allow_session_settings => check_set(set),
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
            if policy.allow_transactions =>
        {
            Ok(())
        }
        other => Err(Refusal::new(statement_name(other))),
    }
}

fn check_set(set: &Set) -> Result<(), Refusal> {
    match set {
        Set::SingleAssignment {
            hivevar: false,
            variable,
            values,
            ..
        } => {
            let name = variable.to_string().to_ascii_lowercase();
            if SESSION_VARIABLES.contains(&name.as_str()) {
                for value in values {
                    check_expr_tree(value)?;
                }
                Ok(())
            } else {
                Err(Refusal::new(format!("SET {name}")))
            }
        }
        Set::SetTimeZone { local: false, .. } => Ok(()),
        other => Err(Refusal::new(statement_name(&Statement::Set(other.clone())))),
    }
}

fn check_query(query: &Query) -> Result<(), Refusal> {
    match query.visit(&mut QueryChecker) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(refusal) => Err(refusal),
    }
}

fn check_expr_tree(expr: &Expr) -> Result<(), Refusal> {
    match expr.visit(&mut QueryChecker) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(refusal) => Err(refusal),
    }
}

/// Walks a query for the ways a "query" can still write or read files: data-modifying CTEs (`WITH x AS
/// (INSERT ..)`), `SELECT .. INTO new_table`, file-reading table functions and path-like table names.
struct QueryChecker;

impl Visitor for QueryChecker {
    type Break = Refusal;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Refusal> {
        // The only statements nested in a query are data-modifying ones (pg's `WITH .. AS (DELETE ..)`).
        match statement {
            Statement::Query(_) => ControlFlow::Continue(()),
            other => ControlFlow::Break(Refusal::new(statement_name(other))),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Refusal> {
        match query.body.as_ref() {
            SetExpr::Insert(_) => ControlFlow::Break(Refusal::new("INSERT")),
            SetExpr::Update(_) => ControlFlow::Break(Refusal::new("UPDATE")),
            SetExpr::Delete(_) => ControlFlow::Break(Refusal::new("DELETE")),
            SetExpr::Merge(_) => ControlFlow::Break(Refusal::new("MERGE")),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Refusal> {
        if select.into.is_some() {
            return ControlFlow::Break(Refusal::new("SELECT INTO"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Refusal> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => check_table_function(name),
            TableFactor::TableFunction { expr, .. } => match expr {
                Expr::Function(f) => check_table_function(&f.name),
                other => ControlFlow::Break(Refusal::new(format!("table function {other}"))),
            },
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Refusal> {
        path_like_relation(relation)
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Refusal> {
        if let Expr::Function(f) = expr {
            let name = last_part(&f.name);
            if name.starts_with("read_") {
                return ControlFlow::Break(Refusal::new(format!("function {name}")));
            }
        }
        ControlFlow::Continue(())
    }
}

/// With DataFusion's dynamic file catalog a quoted path is a table; refuse anything that looks like one.
fn path_like_relation(relation: &ObjectName) -> ControlFlow<Refusal> {
    let name = relation.to_string();
    if name.contains('/') || name.contains('\\') || name.contains("://") {
        return ControlFlow::Break(Refusal::new(format!("reading the path {name}")));
    }
    ControlFlow::Continue(())
}

/// `DESCRIBE` and `SHOW` statements name tables without being queries, so the query visitor never sees them;
/// they get the same path check, so the guard does not rely on the dynamic file catalog staying off (found by
/// the `sql_guard` fuzz target).
fn check_relations(statement: &Statement) -> Result<(), Refusal> {
    match visit_relations(statement, path_like_relation) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(refusal) => Err(refusal),
    }
}

fn check_table_function(name: &ObjectName) -> ControlFlow<Refusal> {
    let function = last_part(name);
    if ALLOWED_TABLE_FUNCTIONS.contains(&function.as_str()) {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(Refusal::new(format!("table function {function}")))
    }
}

fn last_part(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map(|ident| ident.value.to_ascii_lowercase())
        .unwrap_or_else(|| name.to_string().to_ascii_lowercase())
}

/// The leading keywords of a statement (`CREATE TABLE`, `INSERT INTO`, `DROP VIEW`, ...), for error messages.
/// sqlparser prints keywords in upper case, which is what separates them from the names that follow.
fn statement_name(statement: &Statement) -> String {
    let text = statement.to_string();
    let keywords: Vec<&str> = text
        .split_whitespace()
        .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .take(3)
        .collect();
    if keywords.is_empty() {
        text.split_whitespace()
            .next()
            .unwrap_or("statement")
            .to_string()
    } else {
        keywords.join(" ")
    }
}

#[cfg(test)]
mod fuzz_regressions;

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match check_sql(sql, GuardPolicy::STATELESS) {
            Err(QueryError::Refused(r)) => r.what,
            other => panic!("expected {sql:?} to be refused, got {other:?}"),
        }
    }

    #[test]
    fn allows_queries_explain_and_show() {
        for sql in [
            "SELECT count(*) FROM events",
            "WITH t AS (SELECT * FROM events) SELECT kind, count(*) FROM t GROUP BY kind",
            "SELECT floor(extract(epoch from time)/300)*300 AS \"time\", count(*) FROM events \
             WHERE time BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00Z' GROUP BY 1 ORDER BY 1",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT count(*) FROM events",
            "SHOW TABLES",
            "SHOW COLUMNS FROM events",
            "SELECT * FROM range(10)",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT 1; SELECT 2",
        ] {
            check_sql(sql, GuardPolicy::STATELESS).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn refuses_external_tables_copy_and_ddl() {
        assert_eq!(
            refused("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'"),
            "CREATE EXTERNAL TABLE"
        );
        assert_eq!(refused("COPY (SELECT 1) TO '/tmp/x'"), "COPY");
        assert_eq!(refused("COPY events TO '/tmp/x' STORED AS PARQUET"), "COPY");
        assert_eq!(refused("CREATE TABLE t AS SELECT 1"), "CREATE TABLE");
        assert_eq!(refused("CREATE VIEW v AS SELECT 1"), "CREATE VIEW");
        assert_eq!(refused("DROP TABLE events"), "DROP TABLE");
        assert_eq!(
            refused("INSERT INTO events SELECT * FROM events"),
            "INSERT INTO"
        );
        assert_eq!(refused("DELETE FROM events"), "DELETE FROM");
        assert_eq!(refused("SET datafusion.execution.batch_size = 1"), "SET");
        assert_eq!(refused("RESET datafusion.execution.batch_size"), "RESET");
        assert_eq!(refused("SELECT 1 INTO t2"), "SELECT INTO");
    }

    #[test]
    fn refuses_explain_analyze_of_a_write() {
        assert_eq!(
            refused("EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/x'"),
            "COPY"
        );
        assert_eq!(
            refused("EXPLAIN ANALYZE INSERT INTO events SELECT * FROM events"),
            "INSERT INTO"
        );
    }

    #[test]
    fn refuses_file_reading_functions() {
        assert_eq!(
            refused("SELECT * FROM read_parquet('/etc/x.parquet')"),
            "table function read_parquet"
        );
        assert_eq!(
            refused("SELECT * FROM read_csv('/etc/passwd')"),
            "table function read_csv"
        );
        assert_eq!(
            refused("SELECT count(*) FROM (SELECT * FROM read_json('/x.json')) t"),
            "table function read_json"
        );
        assert_eq!(
            refused("SELECT * FROM '/etc/passwd'"),
            "reading the path '/etc/passwd'"
        );
        assert_eq!(
            refused("SELECT read_file('/etc/passwd')"),
            "function read_file"
        );
    }

    #[test]
    fn one_refused_statement_refuses_the_batch() {
        assert_eq!(
            refused("SELECT 1; DROP TABLE events; SELECT 2"),
            "DROP TABLE"
        );
    }

    #[test]
    fn pg_sessions_may_set_whitelisted_variables_only() {
        let pg = GuardPolicy::PG_SESSION;
        for sql in [
            "SET datestyle = 'ISO, MDY'",
            "SET extra_float_digits = 3",
            "SET TIME ZONE 'UTC'",
            "BEGIN",
            "COMMIT",
        ] {
            check_sql(sql, pg).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        match check_sql("SET datafusion.runtime.memory_limit = '100G'", pg) {
            Err(QueryError::Refused(r)) => {
                assert_eq!(r.what, "SET datafusion.runtime.memory_limit")
            }
            other => panic!("{other:?}"),
        }
        // Stateless interfaces refuse SET entirely.
        assert!(matches!(
            check_sql("SET datestyle = 'ISO'", GuardPolicy::STATELESS),
            Err(QueryError::Refused(_))
        ));
    }

    /// A chain of operators deep enough to overflow a stack (it aborted the test binary before the check) is
    /// refused before parsing; dashboards' kind of SQL, long `IN` lists and many shallow expressions pass.
    #[test]
    fn deeply_nested_expressions_are_refused_before_parsing() {
        use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
        for sql in [
            format!("SELECT 1{}", "+1".repeat(300_000)),
            format!(
                "SELECT * FROM events WHERE a = 1{}",
                " OR a = 1".repeat(300)
            ),
            format!("SELECT x{}", "::int".repeat(MAX_EXPRESSION_DEPTH)),
            // Twenty parentheses, each holding a chain of fifteen: 320 levels.
            format!(
                "SELECT {}1{}",
                format!("1{} + (", " + 1".repeat(14)).repeat(20),
                ")".repeat(20)
            ),
        ] {
            for dialect in [&GenericDialect {} as &dyn Dialect, &PostgreSqlDialect {}] {
                match check_nesting(&sql, dialect) {
                    Err(QueryError::TooComplex { depth, limit }) => {
                        assert!(depth > limit && limit == MAX_EXPRESSION_DEPTH)
                    }
                    other => panic!("{}...: {other:?}", &sql[..60]),
                }
            }
            assert!(matches!(
                check_sql(&sql, GuardPolicy::STATELESS),
                Err(QueryError::TooComplex { .. })
            ));
        }
        let ok = [
            format!("SELECT 1{}", "+1".repeat(MAX_EXPRESSION_DEPTH - 2)),
            format!(
                "SELECT * FROM events WHERE user_id IN ({})",
                vec!["'u'"; 10_000].join(", ")
            ),
            format!(
                "SELECT {} FROM events",
                vec!["sum(input_tokens + output_tokens) * 2 AS t"; 500].join(", ")
            ),
            "SELECT date_bin(INTERVAL '1 minute', time) AS time, count(*) FROM events \
             WHERE time >= now() - INTERVAL '1 hour' AND kind = 'inference' AND NOT (status = 'ok') \
             GROUP BY 1 ORDER BY 1; SELECT 1"
                .to_owned(),
        ];
        for sql in ok {
            check_nesting(&sql, &GenericDialect {}).unwrap_or_else(|e| panic!("{e}"));
            check_sql(&sql, GuardPolicy::STATELESS).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn parse_errors_are_invalid_not_refused() {
        assert!(matches!(
            check_sql("SELEC 1", GuardPolicy::STATELESS),
            Err(QueryError::Invalid(_))
        ));
    }
}
