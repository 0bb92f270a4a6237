//! Tried as a new user would: the OpenTelemetry Python SDK's stock exporters point at Vigil, and DuckDB
//! reads the Parquet directory Vigil wrote.

use std::process::Command;

use crate::harness::{checkout_file, Vigil};

/// The Python packages are installed by `.ci/run`; outside CI a machine without them skips with a notice.
pub(crate) fn python_has(modules: &[&str]) -> bool {
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join(";");
    let ok = Command::new("python3")
        .arg("-c")
        .arg(&code)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the Python packages: {modules:?} (see .ci/run)"
        );
        eprintln!("SKIPPED: python3 lacks {modules:?}; run .ci/run or pip install -r tests/requirements.txt");
    }
    ok
}

/// Runs one of the Python scripts in `tests/`; its failure (a failed export, a failed query) fails the test.
fn run_python<A: AsRef<std::ffi::OsStr>>(
    script: &str,
    args: &[A],
    envs: &[(&str, &str)],
) -> std::process::Output {
    let out = Command::new("python3")
        .arg(checkout_file(script))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs one of the SDK scripts with the server's ingest token.
fn send_with_sdk(v: &Vigil, script: &str, args: &[String]) -> std::process::Output {
    run_python(script, args, &[("VIGIL_TOKEN", &v.token)])
}

#[tokio::test(flavor = "multi_thread")]
async fn otel_python_sdk_spans_land_and_duckdb_counts_the_same_rows() {
    if !python_has(&[
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.grpc",
        "duckdb",
    ]) {
        return;
    }
    let mut v = Vigil::start().await;
    send_with_sdk(
        &v,
        "tests/otel_sdk_send.py",
        &[
            format!("http://{}", v.grpc),
            format!("http://{}/v1/traces", v.http),
            "25".into(),
        ],
    );

    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE service = 'sdk-grpc'")
            .await,
        25
    );
    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE service = 'sdk-http'")
            .await,
        25
    );
    assert_eq!(v.count("SELECT count(*) FROM events WHERE model = 'gpt-4o' AND endpoint = 'api.openai.com:443'").await, 50);
    let total = v.count("SELECT count(*) FROM events").await;

    // A clean stop flushes everything to Parquet; DuckDB then reads the same rows from the directory alone.
    v.stop();
    let duck = run_python("tests/duckdb_count.py", &[v.data_dir()], &[]);
    let counted: i64 = String::from_utf8_lossy(&duck.stdout)
        .trim()
        .parse()
        .expect("a count");
    assert_eq!(
        counted, total,
        "DuckDB over the Parquet directory counts what SQL counted"
    );
}

/// The SDK exports each span as it ends, so an agent's tool calls arrive before its `invoke_agent` span and
/// without naming it; the call outside the agent's allowlist still raises `tool_overreach` for the agent
/// once its span arrives, and the call inside raises nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_calls_exported_before_its_span_are_judged_by_its_allowlist() {
    if !python_has(&[
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.grpc",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        r#"
[[detect.inventory.agents]]
id = "support-agent"
tools = ["search_kb"]
"#,
    )
    .unwrap();
    let v = Vigil::start_with(&["--config", config.to_str().unwrap()], &[]).await;
    let out = send_with_sdk(
        &v,
        "tests/otel_sdk_agent.py",
        &[format!("http://{}", v.grpc)],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3 exports",
        "one export per span, the agent's last"
    );
    let calls = v
        .query("SELECT tool_name, agent_id FROM events WHERE kind = 'tool' ORDER BY tool_name")
        .await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls.iter().all(|c| c["agent_id"].is_null()),
        "the calls came before their agent: {calls:?}"
    );
    let alerts = v
        .query(
            "SELECT detector, entity_type, entity_id, title FROM alerts \
             WHERE detector = 'tool_overreach'",
        )
        .await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["entity_id"], "support-agent");
    assert_eq!(
        alerts[0]["title"],
        "Agent support-agent called export_all_customers, outside its allowlist"
    );
}
