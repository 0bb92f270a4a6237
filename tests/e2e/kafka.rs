//! Kafka ingestion against a real broker: `tests/kafka_e2e.sh` drives the tansu broker, the Python
//! confluent-kafka producer and this build's `vigil` binary (a kill mid-stream, a restart, a poison message,
//! two instances in one consumer group). It is a shell script because it starts, kills and restarts whole
//! processes; this test makes it part of `cargo test`, so the README's test command covers it.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::checkout_file;
use crate::python_sdk::python_has;

/// `$TANSU_BIN`, else where `tests/install_tansu.sh` (run by `.ci/run`) installs it.
fn tansu() -> Option<PathBuf> {
    let path = std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vigil-tools/bin/tansu"))
        })?;
    if path.is_file() {
        return Some(path);
    }
    // Installing builds it (about 10 minutes): too long to do unasked inside a test.
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have the tansu broker at {} (see .ci/run)",
        path.display()
    );
    eprintln!(
        "SKIPPED: no tansu broker at {}; run .ci/run or bash tests/install_tansu.sh once to install it",
        path.display()
    );
    None
}

#[test]
fn kafka_ingest_survives_a_kill_dead_letters_poison_and_splits_a_consumer_group() {
    if !python_has(&["confluent_kafka", "opentelemetry.proto"]) {
        return;
    }
    let Some(tansu) = tansu() else {
        return;
    };
    let out = Command::new("bash")
        .arg(checkout_file("tests/kafka_e2e.sh"))
        .env("VIGIL_BIN", env!("CARGO_BIN_EXE_vigil"))
        .env("TANSU_BIN", &tansu)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && summary.ends_with(" passed, 0 failed"),
        "kafka_e2e.sh failed ({}): {summary}\n{stderr}",
        out.status
    );
    // The script's checks, counted: a script that stopped early, or lost a check, does not pass.
    let passed: usize = summary
        .trim_start_matches("kafka_e2e: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 10,
        "only {passed} checks passed: {summary}\n{stderr}"
    );
}
