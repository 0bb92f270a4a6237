//! `vigil bench stages` on a fixed number of requests: every stage reports a cost, the stages add up to the
//! total, and every measured event is counted (the figure a performance change is judged by must not be
//! made of a stage that silently stopped running).

use std::process::Command;

/// `name   1.23 µs/event   4.5 %` -> 1.23.
fn cost(out: &str, name: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{out}"));
    line[name.len() + line.find(name).unwrap_or(0)..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure on `{line}`"))
}

#[test]
fn bench_stages_times_every_stage_of_a_fixed_workload() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["bench", "stages", "--requests", "30", "--batch", "64"])
        .env_remove("VIGIL_CONFIG")
        .output()
        .expect("run vigil bench stages");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("measured:             1920 events"),
        "30 requests of 64 events:\n{text}"
    );
    let stages = [
        "protobuf decode",
        "normalise",
        "detect",
        "dedupe + WAL record",
    ];
    let mut sum = 0.0;
    for name in stages {
        let c = cost(&text, name);
        assert!(c > 0.0, "{name} cost nothing:\n{text}");
        sum += c;
    }
    // The last flush runs after the loop and is counted; at 10 ms of CPU-clock resolution it may read 0.
    let flush = cost(&text, "flush (sort + Parquet)");
    assert!(flush >= 0.0);
    let total = cost(&text, "total");
    assert!(
        (sum + flush - total).abs() < 0.02 * total + 0.01,
        "stages {sum} + {flush} vs total {total}:\n{text}"
    );
}
