//! The shipped Grafana dashboards, embedded so that `vigil bench sql` and the tests run exactly the panels'
//! SQL, expanded the way Grafana's PostgreSQL data source expands its macros.

use chrono::{DateTime, Utc};
use regex::Regex;

pub const FILES: [(&str, &str); 3] = [
    ("ai-activity", include_str!("../dashboards/json/ai-activity.json")),
    ("security", include_str!("../dashboards/json/security.json")),
    ("inventory", include_str!("../dashboards/json/inventory.json")),
];

/// (panel title, raw SQL) of every SQL target of a dashboard.
pub fn sql_panels(json: &str) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(sql) = t["rawSql"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_string(), sql.to_string()));
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
    let s = filter.replace_all(sql, |c: &regex::Captures| format!("{} BETWEEN '{f}' AND '{t}'", c[1].trim()));
    let s = group_alias.replace_all(&s, |c: &regex::Captures| {
        let secs = interval(&c[2]);
        format!("floor(extract(epoch from {})/{secs})*{secs} AS \"time\"", c[1].trim())
    });
    let s = group.replace_all(&s, |c: &regex::Captures| {
        let secs = interval(&c[2]);
        format!("floor(extract(epoch from {})/{secs})*{secs}", c[1].trim())
    });
    let s = time.replace_all(&s, |c: &regex::Captures| format!("{} AS \"time\"", c[1].trim()));
    s.replace("$__timeFrom()", &format!("'{f}'")).replace("$__timeTo()", &format!("'{t}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_expand_like_grafana() {
        let from = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let to = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z").unwrap().with_timezone(&Utc);
        let out = expand_macros("SELECT $__timeGroupAlias(time, '5m'), count(*) FROM events WHERE $__timeFilter(time)", from, to);
        assert_eq!(
            out,
            "SELECT floor(extract(epoch from time)/300)*300 AS \"time\", count(*) FROM events WHERE time BETWEEN '2026-01-01T00:00:00Z' AND '2026-01-02T00:00:00Z'"
        );
    }

    #[test]
    fn every_dashboard_is_valid_and_has_sql_panels_without_unexpanded_macros() {
        let now = Utc::now();
        for (name, json) in FILES {
            let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(v["uid"].is_string() && v["title"].is_string(), "{name}: uid and title");
            assert!(v["schemaVersion"].as_u64().unwrap_or(0) >= 39, "{name}: schemaVersion");
            let panels = sql_panels(json);
            assert!(panels.len() >= 4, "{name}: has SQL panels");
            for (title, sql) in panels {
                assert!(!expand_macros(&sql, now, now).contains("$__"), "{name} / {title}: unexpanded macro");
            }
        }
    }
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
