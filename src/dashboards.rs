//! The shipped Grafana dashboards, embedded so that `vigil bench sql` and the tests run exactly the panels'
//! SQL, expanded the way Grafana's PostgreSQL data source expands its macros.

use chrono::{DateTime, Utc};
use regex::Regex;

pub const FILES: [(&str, &str); 3] = [
    (
        "ai-activity",
        include_str!("../dashboards/json/ai-activity.json"),
    ),
    ("security", include_str!("../dashboards/json/security.json")),
    (
        "inventory",
        include_str!("../dashboards/json/inventory.json"),
    ),
];

/// (panel title, raw SQL) of every SQL target of a dashboard.
pub fn sql_panels(json: &str) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(sql) = t["rawSql"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("").to_string(),
                    sql.to_string(),
                ));
            }
        }
    }
    out
}

/// Expands `$__timeFilter`, `$__timeGroupAlias`, `$__timeGroup`, `$__time`, `$__timeFrom` and `$__timeTo` as
/// Grafana's PostgreSQL data source does.
pub fn expand_macros(sql: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let f = from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let t = to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let interval = |s: &str| -> i64 {
        let s = s.trim().trim_matches('\'');
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: i64 = num.parse().unwrap_or(1);
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => 1,
        }
    };
    let filter = Regex::new(r"\$__timeFilter\(([^)]+)\)").expect("valid regex");
    let group_alias = Regex::new(r"\$__timeGroupAlias\(([^,]+),([^)]+)\)").expect("valid regex");
    let group = Regex::new(r"\$__timeGroup\(([^,]+),([^)]+)\)").expect("valid regex");
    let time = Regex::new(r"\$__time\(([^)]+)\)").expect("valid regex");
    let s = filter.replace_all(sql, |c: &regex::Captures| {
        format!("{} BETWEEN '{f}' AND '{t}'", c[1].trim())
    });
    let s = group_alias.replace_all(&s, |c: &regex::Captures| {
        let secs = interval(&c[2]);
        format!(
            "floor(extract(epoch from {})/{secs})*{secs} AS \"time\"",
            c[1].trim()
        )
    });
    let s = group.replace_all(&s, |c: &regex::Captures| {
        let secs = interval(&c[2]);
        format!("floor(extract(epoch from {})/{secs})*{secs}", c[1].trim())
    });
    let s = time.replace_all(&s, |c: &regex::Captures| {
        format!("{} AS \"time\"", c[1].trim())
    });
    s.replace("$__timeFrom()", &format!("'{f}'"))
        .replace("$__timeTo()", &format!("'{t}'"))
}

/// `vigil dashboards`: prints every shipped panel's SQL with the macros expanded for the last `hours`, one
/// JSON object per line (`{"dashboard", "panel", "sql"}`), to debug a panel in psql or to test them all.
pub fn print_queries(hours: i64) {
    let to = Utc::now();
    let from = to - chrono::Duration::hours(hours);
    for (name, json) in FILES {
        for (panel, sql) in sql_panels(json) {
            let line = serde_json::json!({ "dashboard": name, "panel": panel, "sql": expand_macros(&sql, from, to) });
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard that reads Vigil's Prometheus metrics rather than its SQL.
    const PROMETHEUS_FILE: (&str, &str) = (
        "pipeline-health",
        include_str!("../dashboards/json/pipeline-health.json"),
    );

    /// The data sources Grafana is provisioned with.
    const PROVISIONED: &str = include_str!("../dashboards/provisioning/datasources/vigil.yaml");

    #[test]
    fn macros_expand_like_grafana() {
        let from = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let to = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let out = expand_macros(
            "SELECT $__timeGroupAlias(time, '5m'), count(*) FROM events WHERE $__timeFilter(time)",
            from,
            to,
        );
        assert_eq!(
            out,
            "SELECT floor(extract(epoch from time)/300)*300 AS \"time\", count(*) FROM events WHERE time BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00Z'"
        );
    }

    /// Grafana expands provisioning values with Go's `os.ExpandEnv`: `${NAME}` and `$NAME` only, so
    /// `${NAME:-default}` reads a variable literally named `NAME:-default` and expands to nothing. Every
    /// variable must be a plain name that the compose stack sets for Grafana.
    #[test]
    fn provisioning_variables_are_plain_names_that_compose_sets() {
        const COMPOSE: &str = include_str!("../compose/docker-compose.yml");
        let grafana = COMPOSE
            .split("\n  grafana:")
            .nth(1)
            .expect("a grafana service in compose");
        let variable = Regex::new(r"\$\{([^}]*)\}").unwrap();
        let plain = Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").unwrap();
        let values: Vec<&str> = PROVISIONED
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .collect();
        let names: Vec<&str> = values
            .iter()
            .flat_map(|v| variable.captures_iter(v))
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        assert!(names.len() >= 3, "{names:?}");
        for name in names {
            assert!(
                plain.is_match(name),
                "`${{{name}}}` is not a variable name os.ExpandEnv understands"
            );
            assert!(
                grafana.contains(&format!("\n      {name}: ")),
                "compose does not set {name} for Grafana"
            );
        }
    }

    /// Every panel of every shipped dashboard, the Prometheus one included, is what Grafana needs to draw
    /// it: a type, a place on the grid, a provisioned data source, and a query for that data source.
    #[test]
    fn every_panel_has_a_type_a_place_and_a_query_for_a_provisioned_data_source() {
        let uid = Regex::new(r"(?m)^\s*uid:\s*(\S+)").unwrap();
        let provisioned: Vec<String> = uid
            .captures_iter(PROVISIONED)
            .map(|c| c[1].to_string())
            .collect();
        assert_eq!(provisioned, ["vigil-pg", "vigil-prom"]);
        for (name, json) in FILES.into_iter().chain([PROMETHEUS_FILE]) {
            let v: serde_json::Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                v["schemaVersion"].as_u64().unwrap_or(0) >= 39,
                "{name}: schemaVersion"
            );
            let panels = v["panels"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: panels"));
            assert!(panels.len() >= 4, "{name}: {} panels", panels.len());
            for p in panels {
                let title = p["title"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: a panel without a title"));
                assert!(p["type"].is_string(), "{name} / {title}: type");
                for k in ["x", "y", "w", "h"] {
                    assert!(p["gridPos"][k].is_u64(), "{name} / {title}: gridPos.{k}");
                }
                let ds = p["datasource"]["uid"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name} / {title}: datasource uid"));
                assert!(
                    provisioned.iter().any(|u| u == ds),
                    "{name} / {title}: data source {ds} is not provisioned"
                );
                let targets = p["targets"].as_array().filter(|t| !t.is_empty());
                let targets = targets.unwrap_or_else(|| panic!("{name} / {title}: no query"));
                for t in targets {
                    let query = if ds == "vigil-pg" {
                        &t["rawSql"]
                    } else {
                        &t["expr"]
                    };
                    assert!(
                        query.as_str().is_some_and(|q| !q.trim().is_empty()),
                        "{name} / {title}: empty query for {ds}"
                    );
                }
            }
        }
    }

    /// A Prometheus panel naming a metric Vigil does not export would stay empty forever: every `vigil_*`
    /// name in a panel's expression must be registered somewhere in the workspace's code.
    #[test]
    fn prometheus_panels_name_metrics_vigil_registers() {
        // Looked up at run time: `env!` would name whichever checkout first built a shared target dir.
        let root = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()),
        );
        let mut code = String::new();
        let mut dirs = vec![
            root.join("src"),
            root.join("ingest/src"),
            root.join("detect/src"),
            root.join("store/src"),
        ];
        dirs.extend([root.join("sql/src"), root.join("respond/src")]);
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    code.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let metric = Regex::new(r"vigil_[a-z0-9_]+").unwrap();
        let mut used = std::collections::BTreeSet::new();
        for (name, json) in FILES.into_iter().chain([PROMETHEUS_FILE]) {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            for p in v["panels"].as_array().into_iter().flatten() {
                for t in p["targets"].as_array().into_iter().flatten() {
                    for m in metric.find_iter(t["expr"].as_str().unwrap_or("")) {
                        used.insert((name, m.as_str().to_string()));
                    }
                }
            }
        }
        assert!(used.len() >= 8, "{used:?}");
        for (dashboard, m) in used {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s))
                .unwrap_or(&m);
            assert!(
                code.contains(&format!("\"{base}\"")),
                "{dashboard}: {m} is not a metric Vigil registers"
            );
        }
    }

    #[test]
    fn every_dashboard_is_valid_and_has_sql_panels_without_unexpanded_macros() {
        let now = Utc::now();
        for (name, json) in FILES {
            let v: serde_json::Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                v["uid"].is_string() && v["title"].is_string(),
                "{name}: uid and title"
            );
            assert!(
                v["schemaVersion"].as_u64().unwrap_or(0) >= 39,
                "{name}: schemaVersion"
            );
            let panels = sql_panels(json);
            assert!(panels.len() >= 4, "{name}: has SQL panels");
            for (title, sql) in panels {
                assert!(
                    !expand_macros(&sql, now, now).contains("$__"),
                    "{name} / {title}: unexpanded macro"
                );
            }
        }
    }
}
