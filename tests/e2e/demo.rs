//! The README's first command, as a new user runs it: `vigil demo` starts on its embedded defaults, sends
//! history and live traffic over real OTLP, prints every detector's alerts as they fire, the summary and
//! the example queries, and leaves Parquet a user can query afterwards.

use std::process::Command;
use std::time::Duration;

use crate::harness::free_port;

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_shows_every_detector_firing_and_leaves_queryable_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = || format!("127.0.0.1:{}", free_port());
    let (admin, grpc, http, pg) = (addr(), addr(), addr(), addr());
    let run = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--admin-addr",
                &admin,
                "demo",
                "--otlp-grpc-addr",
                &grpc,
                "--otlp-http-addr",
                &http,
                "--pg-addr",
                &pg,
            ])
            // The behaviour anomaly is injected first and judged when its minute closes.
            .args(["--duration", "70s", "--incident-every", "2"])
            .env_remove("VIGIL_CONFIG")
            .output()
            .expect("run vigil demo")
    });
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the demo stops after --duration")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");

    for line in [
        "Sending 25 minutes of history",
        "Alerts so far by detector:",
        "Try these in another terminal",
        "Done.",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    let alerted: std::collections::BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("ALERT "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    for detector in vigil_detect::config::DETECTORS {
        assert!(
            alerted.contains(detector),
            "no {detector} alert printed; printed {alerted:?}:\n{stdout}"
        );
    }
    // The poisoned search result, read back by the agent's next model call as a `tool` message: indirect,
    // and the agent's, though it arrived inside an ordinary chat prompt.
    assert!(
        stdout.lines().any(|l| l.contains("prompt_injection")
            && l.contains("agent=support-agent")
            && l.contains("Indirect prompt injection in a tool result sent to")),
        "no indirect injection alert for the tool result in a prompt:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("cargo run -q -- sql \"SELECT").count(),
        3,
        "three example queries"
    );

    // What the demo stored is there after it stopped, for `vigil sql --offline` (and DuckDB).
    let sql = |q: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["sql", "--offline", "--format", "csv", q])
            .env_remove("VIGIL_CONFIG")
            .output()
            .expect("vigil sql");
        assert!(
            out.status.success(),
            "{q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let events: i64 = sql("SELECT count(*) FROM events").parse().unwrap();
    let sent: i64 = stdout
        .lines()
        .rev()
        .find_map(|l| {
            l.split("sent ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .expect("a progress line");
    assert!(
        events >= sent && events >= 54_000,
        "{events} events stored, {sent} reported sent"
    );
    let kinds: i64 = sql("SELECT count(DISTINCT kind) FROM events")
        .parse()
        .unwrap();
    assert!(kinds >= 3, "inference, tool and policy events");
    let stored_alerts: i64 = sql("SELECT count(DISTINCT detector) FROM alerts")
        .parse()
        .unwrap();
    assert_eq!(stored_alerts, vigil_detect::config::DETECTORS.len() as i64);

    // The other two output formats of `vigil sql`.
    let format = |f: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "sql",
                "--offline",
                "--format",
                f,
                "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind",
            ])
            .env_remove("VIGIL_CONFIG")
            .output()
            .expect("vigil sql");
        assert!(
            out.status.success(),
            "--format {f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = format("table");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("| kind") && l.contains("| n")),
        "a table header:\n{table}"
    );
    assert!(table.contains("| inference"), "{table}");
    let json = format("json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("--format json is a JSON array ({e}):\n{json}"));
    let inference = rows
        .iter()
        .find(|r| r["kind"] == "inference")
        .unwrap_or_else(|| panic!("{json}"));
    assert!(inference["n"].as_i64().is_some_and(|n| n > 0), "{json}");
}
