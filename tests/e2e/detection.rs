//! The labelled scenario from `vigil_detect::scenario` (normal traffic with injected incidents of every
//! detector's kind, hard negatives included) sent over real OTLP to the real binary: every incident must
//! produce its detector's alert for the right entity, in the `alerts` table. The same data then feeds
//! every dashboard panel over psql (sending it once keeps the suite's run time down).

use std::time::Duration;

use vigil_detect::scenario::{generate, ScenarioConfig};
use vigil_ingest::synth::{rows_from_batch, traces_request};

use crate::harness::Vigil;

#[tokio::test(flavor = "multi_thread")]
async fn every_injected_incident_raises_its_detectors_alert_for_the_right_entity() {
    let duration = Duration::from_secs(150 * 60);
    let now = chrono::Utc::now().timestamp_micros();
    let sc = generate(&ScenarioConfig {
        start_us: now - duration.as_micros() as i64,
        duration,
        ..Default::default()
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    let mut file = toml::Table::new();
    file.insert("detect".into(), toml::Value::try_from(&sc.config).unwrap());
    let pipeline: toml::Table =
        toml::from_str("tick_interval = \"500ms\"\nstate_interval = \"1s\"").unwrap();
    file.insert("pipeline".into(), toml::Value::Table(pipeline));
    std::fs::write(&config, toml::to_string(&file).unwrap()).unwrap();

    let v = Vigil::start_with(&["--config", config.to_str().unwrap()], &[]).await;
    let mut client = v.grpc_client().await;
    let mut sent = 0usize;
    for (_, batch) in &sc.batches {
        let rows = rows_from_batch(batch);
        sent += rows.len();
        client
            .export(traces_request(&rows))
            .await
            .expect("accepted");
    }
    assert_eq!(v.count("SELECT count(*) FROM events").await, sent as i64);
    // Window detectors run on the server's tick.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let alerts = v
        .query("SELECT detector, entity_type, entity_id FROM alerts")
        .await;
    let fired = |detector: &str, entities: &[(String, String)]| {
        alerts.iter().any(|a| {
            a["detector"] == detector
                && entities
                    .iter()
                    .any(|(t, id)| a["entity_type"] == t.as_str() && a["entity_id"] == id.as_str())
        })
    };
    // Recall per detector through the real binary. The scenario's two and a half hours of event time pass
    // in a minute or so of wall-clock time: window work (idle windows, drift, behaviour refits) follows the
    // stage's event-time watermark, not the wall clock, or each tick would split every entity's window.
    let mut per_detector: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut missed = Vec::new();
    for inc in &sc.incidents {
        let e = per_detector.entry(inc.detector).or_default();
        e.0 += 1;
        if fired(inc.detector, &inc.entities) {
            e.1 += 1;
        } else {
            missed.push(format!("{} on {:?}", inc.detector, inc.entities));
        }
    }
    assert!(
        per_detector.len() >= 9,
        "the scenario covers the detectors: {per_detector:?}"
    );
    for (detector, (incidents, detected)) in &per_detector {
        let recall = *detected as f64 / *incidents as f64;
        eprintln!("{detector:<18} {detected}/{incidents} incidents alerted (recall {recall:.2})");
        assert!(
            recall >= 0.95,
            "{detector}: recall {recall:.2} through the binary; missed:\n{}",
            missed.join("\n")
        );
    }

    // The inventory and baselines tables are persisted every `state_interval`.
    tokio::time::sleep(Duration::from_secs(2)).await;
    crate::dashboards::every_panel_finds_rows_over_pg(&v).await;
    crate::dashboards::the_deepest_allowed_expression_is_answered(&v).await;
}
