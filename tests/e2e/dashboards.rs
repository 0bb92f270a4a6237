//! Every panel of the shipped Grafana dashboards, expanded the way Grafana's PostgreSQL data source
//! expands its macros (`vigil dashboards` prints them), run with psql over the PostgreSQL wire protocol.

use crate::harness::{psql, Vigil};

/// Runs every panel's SQL against the server's data; each must succeed and return at least one row.
pub async fn every_panel_finds_rows_over_pg(v: &Vigil) {
    let out = v.cli(&["dashboards", "--hours", "6"]);
    assert!(
        out.status.success(),
        "vigil dashboards: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let panels: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(
        panels.len() >= 20,
        "the dashboards have their panels: {}",
        panels.len()
    );
    let mut empty = Vec::new();
    for p in &panels {
        let (dashboard, panel, sql) = (
            p["dashboard"].as_str().unwrap(),
            p["panel"].as_str().unwrap(),
            p["sql"].as_str().unwrap(),
        );
        let out = psql(v, "127.0.0.1", &v.token, &[], sql).await;
        assert!(
            out.status.success(),
            "{dashboard} / {panel} failed over pg: {}\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        if rows == 0 {
            empty.push(format!("{dashboard} / {panel}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without rows on the scenario data: {empty:?}"
    );

    // Shadow AI is about AI assets: unregistered users, tools and data sources are not shadow AI.
    let shadow = panels
        .iter()
        .find(|p| p["panel"] == "Unregistered models, endpoints, providers and agents")
        .expect("the shadow AI table");
    let out = psql(
        v,
        "127.0.0.1",
        &v.token,
        &[],
        shadow["sql"].as_str().unwrap(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('|').next())
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    assert!(
        !kinds.is_empty()
            && kinds
                .iter()
                .all(|k| ["provider", "model", "endpoint", "agent"].contains(&k.as_str())),
        "shadow AI table lists {kinds:?}"
    );
    eprintln!(
        "dashboards: {} panels ran over pg, each with rows",
        panels.len()
    );
}

/// The deepest expression the SQL guard lets through is answered by the real binary (its threads' stacks
/// hold a debug build's planner at that depth), one level more is refused over pg, and the server keeps
/// answering: a stack overflow would have aborted the whole process.
pub async fn the_deepest_allowed_expression_is_answered(v: &Vigil) {
    let limit = vigil_sql::guard::MAX_EXPRESSION_DEPTH;
    // One level for the statement, one per operator.
    let deepest = format!("SELECT 1{} AS n", "+1".repeat(limit - 1));
    let rows = v.query(&deepest).await;
    assert_eq!(rows[0]["n"], limit as i64, "{rows:?}");
    let deeper = format!("SELECT 1{} AS n", "+1".repeat(limit));
    let out = psql(v, "127.0.0.1", &v.token, &[], &deeper).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("nests expressions"),
        "{stderr}"
    );
    assert!(v.count("SELECT count(*) FROM events").await > 0);
}
