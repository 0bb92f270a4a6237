//! Detection state outlives the configuration file and the process: the AI inventory reloads on SIGHUP
//! and on `POST /-/reload` without a restart, a broken file is refused while the running configuration
//! stays, and a restart keeps the baselines (no new warm-up) and the inventory.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{StartOptions, Vigil};
use crate::sample_rows;

const MINUTE_US: i64 = 60_000_000;

fn config_text(models: &[(&str, &str)]) -> String {
    let mut s =
        String::from("[pipeline]\ntick_interval = \"300ms\"\nstate_interval = \"500ms\"\n\n");
    for (id, owner) in models {
        s.push_str(&format!(
            "[[detect.inventory.models]]\nid = \"{id}\"\nowner = \"{owner}\"\npurpose = \"chat\"\nrisk_tier = \"medium\"\n\n"
        ));
    }
    s
}

/// Polls `sql` until `done` holds for its rows (the state tables are persisted every `state_interval`).
async fn until(v: &Vigil, sql: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = v.query(sql).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in 20 s; last rows {rows:?}; log:\n{}",
            v.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn model_row<'a>(rows: &'a [Value], id: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["entity_type"] == "model" && r["entity_id"] == id)
}

fn reloads(metrics: &str, result: &str) -> u64 {
    let prefix = format!("vigil_config_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_reloads_without_a_restart_and_state_survives_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, config_text(&[("gpt-4o", "platform-team")])).unwrap();
    let mut v = Vigil::start_with(&["--config", config.to_str().unwrap()], &[]).await;

    // Fifteen minutes of event time, so windows close and baselines gather samples. The sample rows use
    // gpt-4o (registered) and claude-sonnet-4 (not yet).
    let mut client = v.grpc_client().await;
    let now = chrono::Utc::now().timestamp_micros();
    for k in 0..15u32 {
        let rows = sample_rows(100 + k, now - i64::from(15 - k) * MINUTE_US);
        client
            .export(vigil_ingest::synth::traces_request(&rows))
            .await
            .expect("accepted");
    }
    let shadow = "SELECT count(*) FROM alerts WHERE detector = 'shadow_ai' AND entity_id = 'claude-sonnet-4'";
    assert_eq!(
        v.count(shadow).await,
        1,
        "the unregistered model is shadow AI"
    );
    let inventory = "SELECT entity_type, entity_id, registered, owner, event_count FROM inventory";
    until(
        &v,
        inventory,
        "claude-sonnet-4 tracked as unregistered",
        |rows| {
            model_row(rows, "claude-sonnet-4")
                .is_some_and(|r| r["registered"] == false && r["event_count"] == 15)
        },
    )
    .await;

    // The security team approves the model: edit the file, SIGHUP, no restart.
    std::fs::write(
        &config,
        config_text(&[
            ("gpt-4o", "platform-team"),
            ("claude-sonnet-4", "docs-team"),
        ]),
    )
    .unwrap();
    v.sighup();
    until(
        &v,
        inventory,
        "claude-sonnet-4 registered after SIGHUP",
        |rows| {
            model_row(rows, "claude-sonnet-4")
                .is_some_and(|r| r["registered"] == true && r["owner"] == "docs-team")
        },
    )
    .await;
    assert!(
        v.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "SIGHUP does not stop the server"
    );

    // A broken file is refused with a reason; the running inventory stays.
    std::fs::write(&config, "[[detect.inventory.models]]\nid = \n").unwrap();
    let url = v.admin_url("/-/reload");
    let resp = v
        .client()
        .post(&url)
        .bearer_auth(&v.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let reason = resp.text().await.unwrap();
    assert!(reason.contains("running configuration stays"), "{reason}");
    assert_eq!(
        v.client().post(&url).send().await.unwrap().status(),
        401,
        "reloading needs a token"
    );
    let query_only = v.create_token("reader", "query").await;
    assert_eq!(
        v.client()
            .post(&url)
            .bearer_auth(&query_only)
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "and the admin scope"
    );
    let metrics = v.metrics().await;
    assert_eq!(reloads(&metrics, "failure"), 1, "{metrics}");
    assert_eq!(reloads(&metrics, "success"), 1);

    // A later model that is not in the reloaded inventory is still shadow AI, and the approved one is not.
    std::fs::write(
        &config,
        config_text(&[
            ("gpt-4o", "platform-team"),
            ("claude-sonnet-4", "docs-team"),
        ]),
    )
    .unwrap();
    let resp = v
        .client()
        .post(&url)
        .bearer_auth(&v.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let mut rows = sample_rows(200, now);
    rows[0].model = Some("mystery-llm".into());
    client
        .export(vigil_ingest::synth::traces_request(&rows))
        .await
        .expect("accepted");
    assert_eq!(v.count("SELECT count(*) FROM alerts WHERE detector = 'shadow_ai' AND entity_id = 'mystery-llm'").await, 1);
    assert_eq!(
        v.count(shadow).await,
        1,
        "no second alert for the approved model"
    );

    // Restart: baselines keep their samples (no new warm-up), the inventory keeps its counts.
    let baselines =
        "SELECT entity_type, entity_id, feature, samples FROM baselines ORDER BY 1, 2, 3";
    let before = until(&v, baselines, "closed windows in the baselines", |rows| {
        rows.iter()
            .any(|r| r["samples"].as_i64().unwrap_or(0) >= 10)
    })
    .await;
    let inventory_before = until(&v, inventory, "mystery-llm in the inventory", |rows| {
        model_row(rows, "mystery-llm").is_some()
    })
    .await;
    v.stop();
    v.restart().await;
    let after = v.query(baselines).await;
    let key = |r: &Value| {
        (
            r["entity_type"].to_string(),
            r["entity_id"].to_string(),
            r["feature"].to_string(),
        )
    };
    for b in &before {
        // A window may still close between the query and the stop, so "at least as many samples".
        let a = after
            .iter()
            .find(|a| key(a) == key(b))
            .unwrap_or_else(|| panic!("{b} lost in the restart"));
        assert!(
            a["samples"].as_i64() >= b["samples"].as_i64(),
            "{b} came back as {a}: a new warm-up"
        );
    }
    let inventory_after = v.query(inventory).await;
    for id in ["gpt-4o", "claude-sonnet-4", "mystery-llm"] {
        assert_eq!(
            model_row(&inventory_after, id),
            model_row(&inventory_before, id),
            "{id} after the restart"
        );
    }
    assert_eq!(
        v.count(shadow).await,
        1,
        "the restart does not re-alert known models"
    );
}

/// A SIGHUP while the server is still starting (held here before the store opens, where a long WAL replay
/// would be) does not kill it; the reload is applied once the server is ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_during_start_up_is_applied_once_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, config_text(&[("gpt-4o", "platform-team")])).unwrap();
    let mut v = Vigil::start_opts(StartOptions {
        args: &["--config", config.to_str().unwrap()],
        envs: &[("FAILPOINTS", "store_open=sleep(3000)")],
        unready: true,
        ..Default::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !v.log().contains("opening the store") {
        assert!(
            Instant::now() < deadline,
            "never reached the store; log:\n{}",
            v.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    v.sighup();
    v.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while reloads(&v.metrics().await, "success") == 0 {
        assert!(
            Instant::now() < deadline,
            "the held SIGHUP was not applied; log:\n{}",
            v.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    v.stop();
}
