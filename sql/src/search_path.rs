//! Grafana's PostgreSQL data source lists tables, and a table's columns, only in the schemas on the
//! session's `search_path`, read by a subquery over `current_setting('search_path')`. DataFusion has no
//! `current_setting`, and datafusion-postgres answers that subquery with `''` (no schema at all), so
//! Grafana's table dropdown stayed empty. Vigil's tables all live in one schema, `public`, which is also
//! PostgreSQL's default search path: the subquery is answered with it, before any other parsing.

use std::borrow::Cow;
use std::sync::LazyLock;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

/// The subquery as Grafana sends it (whitespace aside).
const SEARCH_PATH_SUBQUERY: &str = r#"SELECT
    CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
  FROM
    generate_series(
      array_lower(string_to_array(current_setting('search_path'),','),1),
      array_upper(string_to_array(current_setting('search_path'),','),1)
    ) as i,
    string_to_array(current_setting('search_path'),',') s"#;

/// The subquery's tokens without whitespace, tokenized once.
static PATTERN: LazyLock<Option<Vec<Token>>> = LazyLock::new(|| significant(SEARCH_PATH_SUBQUERY));

/// The schema every Vigil table is in.
const SCHEMA: &str = "public";

/// `sql` with each search-path subquery replaced by `'public'`; borrowed when there is none. The rest of the
/// text is kept byte for byte (spliced by the tokens' positions, not printed back from tokens, which would
/// undo the doubling of quotes inside literals).
pub(crate) fn answer_search_path(sql: &str) -> Cow<'_, str> {
    if !sql.contains("current_setting") {
        return Cow::Borrowed(sql);
    }
    let Some(pattern) = PATTERN.as_deref() else {
        return Cow::Borrowed(sql);
    };
    let Ok(located) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return Cow::Borrowed(sql);
    };
    let tokens: Vec<Token> = located.iter().map(|t| t.token.clone()).collect();
    let lines = line_starts(sql);
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut i = 0;
    while i < tokens.len() {
        let Some(end) = match_at(&tokens, i, pattern) else {
            i += 1;
            continue;
        };
        let from = byte_offset(sql, &lines, located[i].span.start);
        let to = byte_offset(sql, &lines, located[end - 1].span.end);
        out.push_str(&sql[copied..from]);
        out.push('\'');
        out.push_str(SCHEMA);
        out.push('\'');
        copied = to;
        i = end;
    }
    if copied == 0 {
        return Cow::Borrowed(sql);
    }
    out.push_str(&sql[copied..]);
    Cow::Owned(out)
}

/// Where each line of `sql` starts, in bytes: the tokenizer's locations are lines and characters.
fn line_starts(sql: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// The byte offset of a tokenizer location (1-based line, 1-based column in characters).
fn byte_offset(sql: &str, lines: &[usize], at: Location) -> usize {
    let Some(&start) = (at.line as usize).checked_sub(1).and_then(|l| lines.get(l)) else {
        return sql.len();
    };
    sql[start..]
        .char_indices()
        .nth((at.column as usize).saturating_sub(1))
        .map_or(sql.len(), |(b, _)| start + b)
}

/// The tokens of `sql` that are not whitespace.
fn significant(sql: &str) -> Option<Vec<Token>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    Some(
        tokens
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect(),
    )
}

/// Where the match of `pattern` starting at `tokens[start]` ends (whitespace between tokens skipped).
fn match_at(tokens: &[Token], start: usize, pattern: &[Token]) -> Option<usize> {
    let mut at = start;
    for (k, want) in pattern.iter().enumerate() {
        if k > 0 {
            while matches!(tokens.get(at), Some(Token::Whitespace(_))) {
                at += 1;
            }
        }
        if !same(tokens.get(at)?, want) {
            return None;
        }
        at += 1;
    }
    Some(at)
}

/// Keywords and identifiers compare without regard to case, as SQL reads them.
fn same(a: &Token, b: &Token) -> bool {
    match (a, b) {
        (Token::Word(a), Token::Word(b)) => {
            a.quote_style == b.quote_style
                && if a.quote_style.is_some() {
                    a.value == b.value
                } else {
                    a.value.eq_ignore_ascii_case(&b.value)
                }
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafanas_subquery_becomes_the_one_schema_and_the_rest_is_kept() {
        let sql = format!(
            "select quote_ident(table_name) as \"table\" from information_schema.tables\n  where quote_ident(table_schema) not in ('pg_catalog')\n  and quote_ident(table_schema) IN (\n {} \n )",
            SEARCH_PATH_SUBQUERY.replace("SELECT", "select").replace('\n', "\n      ")
        );
        let out = answer_search_path(&sql);
        assert_eq!(
            out,
            "select quote_ident(table_name) as \"table\" from information_schema.tables\n  where quote_ident(table_schema) not in ('pg_catalog')\n  and quote_ident(table_schema) IN (\n 'public' \n )"
        );
    }

    /// The text around the subquery is kept as sent: quotes doubled inside literals and quoted identifiers,
    /// comments, case and other characters.
    #[test]
    fn the_rest_of_the_query_is_kept_byte_for_byte() {
        let before = "SELECT 'it''s', \"a\"\"b\", 'é' -- note\nFROM t WHERE table_name = 'x'' OR table_name <> ''' AND s IN (";
        let after = ") AND c = 'o''k'";
        for subquery in [
            SEARCH_PATH_SUBQUERY.to_owned(),
            SEARCH_PATH_SUBQUERY.replace('\n', " "),
        ] {
            let sql = format!("{before}{subquery}{after} OR d IN ({subquery})");
            assert_eq!(
                answer_search_path(&sql),
                format!("{before}'public'{after} OR d IN ('public')")
            );
        }
    }

    #[test]
    fn other_sql_is_left_alone() {
        for sql in [
            "SELECT count(*) FROM events",
            "SELECT current_setting('search_path')",
            "SELECT 'current_setting' AS x",
        ] {
            assert!(matches!(answer_search_path(sql), Cow::Borrowed(_)), "{sql}");
        }
    }
}
