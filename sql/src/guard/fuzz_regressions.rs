//! Inputs the `sql_guard` fuzz target (fuzz/fuzz_targets/sql_guard.rs) found, kept as unit tests so they stay
//! fixed without cargo-fuzz.

use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use super::*;

fn refusal(sql: &str, policy: GuardPolicy) -> Option<String> {
    match check_sql(sql, policy) {
        Ok(_) => None,
        Err(QueryError::Refused(r)) => Some(r.what),
        Err(other) => panic!("{sql:?} did not parse: {other}"),
    }
}

#[test]
fn describe_of_a_path_is_refused_like_selecting_from_it() {
    // The query visitor never saw the table name of DESCRIBE, so a path there passed.
    for policy in [GuardPolicy::STATELESS, GuardPolicy::PG_SESSION] {
        assert_eq!(
            refusal(r#"DESCRIBE "/etc/passwd""#, policy).as_deref(),
            Some(r#"reading the path "/etc/passwd""#)
        );
        assert_eq!(
            refusal(r#"EXPLAIN DESCRIBE "C:\secrets""#, policy).as_deref(),
            Some(r#"reading the path "C:\secrets""#)
        );
        assert_eq!(refusal("DESCRIBE events", policy), None);
        assert_eq!(refusal("SHOW COLUMNS FROM events", policy), None);
    }
}

#[test]
fn describe_of_a_path_is_refused_from_the_pg_parser_too() {
    // check_statement is what the pg server calls on its own parser's statements.
    let parsed = DFParser::parse_sql_with_dialect(
        r#"DESCRIBE "s3://bucket/x.parquet""#,
        &PostgreSqlDialect {},
    )
    .expect("parses");
    let Some(DFStatement::Statement(statement)) = parsed.front() else {
        panic!("{parsed:?}")
    };
    let refused =
        check_statement(statement, GuardPolicy::PG_SESSION).expect_err("a path must be refused");
    assert_eq!(refused.what, r#"reading the path "s3://bucket/x.parquet""#);
}
