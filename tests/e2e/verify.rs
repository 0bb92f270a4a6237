//! `vigil verify` as an auditor runs it: clean store exits 0; a changed, a deleted and an inserted Parquet
//! file are each named and the exit status is 1; a signed head exported earlier checks offline against
//! the chain, and stops checking once the chain is rewritten behind it.

use std::path::{Path, PathBuf};

use crate::harness::Vigil;
use crate::sample_rows;

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_each_tampered_file_and_a_signed_head_checks_offline() {
    let mut v = Vigil::start().await;
    let mut client = v.grpc_client().await;
    let now = chrono::Utc::now().timestamp_micros();
    // Two hours, so two sealed events files.
    for (k, hours_ago) in [(1u32, 3i64), (2, 1)] {
        let rows = sample_rows(k, now - hours_ago * 3_600_000_000);
        client
            .export(vigil_ingest::synth::traces_request(&rows))
            .await
            .expect("accepted");
    }
    v.stop(); // flushes: the files are sealed in the chain

    let clean = v.cli(&["verify"]);
    assert!(
        clean.status.success(),
        "a clean store verifies: {}",
        text(&clean)
    );
    assert!(text(&clean).contains("; clean"), "{}", text(&clean));

    let head = v.data_dir().with_extension("head.json");
    let export = v.cli(&["verify", "--export-head", head.to_str().unwrap()]);
    assert!(export.status.success(), "{}", text(&export));
    let signed: serde_json::Value = serde_json::from_slice(&std::fs::read(&head).unwrap()).unwrap();
    let key = signed["public_key"]
        .as_str()
        .expect("a public key")
        .to_string();
    assert_eq!(
        signed["signature"].as_str().map(str::len),
        Some(128),
        "{signed}"
    );
    let piped = v.cli(&["verify", "--export-head", "-"]);
    assert!(piped.status.success(), "{}", text(&piped));
    let piped: serde_json::Value =
        serde_json::from_slice(&piped.stdout).expect("stdout holds the head alone");
    assert_eq!(piped["public_key"], signed["public_key"]);
    let check = v.cli(&[
        "verify",
        "--check-head",
        head.to_str().unwrap(),
        "--trusted-key",
        &key,
    ]);
    assert!(check.status.success(), "{}", text(&check));
    let wrong_key = "00".repeat(32);
    let untrusted = v.cli(&[
        "verify",
        "--check-head",
        head.to_str().unwrap(),
        "--trusted-key",
        &wrong_key,
    ]);
    assert_eq!(untrusted.status.code(), Some(1), "{}", text(&untrusted));

    let events = parquet_files(&v.data_dir().join("events"));
    assert_eq!(events.len(), 2, "{events:?}");
    let mut bytes = std::fs::read(&events[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&events[0], bytes).unwrap();
    let inserted = events[1].with_file_name("inserted.parquet");
    std::fs::copy(&events[1], &inserted).unwrap();
    std::fs::remove_file(&events[1]).unwrap();

    let tampered = v.cli(&["verify"]);
    assert_eq!(
        tampered.status.code(),
        Some(1),
        "tampering exits 1: {}",
        text(&tampered)
    );
    let report = text(&tampered);
    let name = |p: &Path| {
        p.strip_prefix(v.data_dir())
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    for (verdict, path) in [
        ("CHANGED", &events[0]),
        ("MISSING", &events[1]),
        ("UNEXPECTED", &inserted),
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(verdict) && l.contains(&name(path))),
            "{verdict} {} not reported:\n{report}",
            name(path)
        );
    }
    let refused = v.cli(&["verify", "--export-head", "-"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "no head is signed over a tampered store"
    );

    // Rewriting the chain to hide the change (the sealed hash replaced by the file's new one) breaks the
    // chain, and with it the exported head.
    let changed = report
        .lines()
        .find(|l| l.starts_with("CHANGED"))
        .expect("a CHANGED line");
    let hash_after = |label: &str| {
        changed
            .split(label)
            .nth(1)
            .and_then(|r| r.split([',', ' ']).next())
            .unwrap()
            .to_string()
    };
    let (actual, sealed) = (hash_after("sha256 is "), hash_after("sealed as "));
    let chain = v.data_dir().join("_audit/chain.jsonl");
    let original = std::fs::read_to_string(&chain).unwrap();
    assert!(
        original.contains(&sealed),
        "the sealed hash {sealed} is in the chain"
    );
    std::fs::write(&chain, original.replace(&sealed, &actual)).unwrap();
    let rewritten = v.cli(&["verify"]);
    assert_eq!(rewritten.status.code(), Some(1));
    assert!(
        text(&rewritten).contains("CHAIN BROKEN"),
        "{}",
        text(&rewritten)
    );
    let broken = v.cli(&["verify", "--check-head", head.to_str().unwrap()]);
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    assert!(
        text(&broken).contains("does not check"),
        "{}",
        text(&broken)
    );
}

/// The chain, the WAL and the manifest have one writer: a second process opening the data directory (here
/// `vigil sql --offline` beside the server) is refused with the server's pid, and gets in once it stopped.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_data_directory_is_refused_while_the_server_runs() {
    let mut v = Vigil::start().await;
    let server_pid = v.child.as_ref().expect("running").id();
    let query = [
        "sql",
        "--offline",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM events",
    ];
    let out = v.cli(&query);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("in use by process {server_pid}")),
        "{}",
        text(&out)
    );
    // The server is none the worse: it still answers.
    assert_eq!(v.count("SELECT count(*) FROM events").await, 0);
    v.stop();
    let out = v.cli(&query);
    assert!(out.status.success(), "{}", text(&out));
}
