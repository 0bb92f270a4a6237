//! Alert delivery through the real binary to a real webhook receiver on 127.0.0.1 that checks every
//! Standard Webhooks signature with its own HMAC (not Vigil's signing code) and records every request,
//! answered or not. Vigil is SIGKILLed while deliveries are failing, the receiver goes away and comes
//! back; at the end every alert has arrived and no alert revision was ever sent under two webhook ids.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use vigil_ingest::synth::traces_request;
use vigil_ingest::{EventKind, EventRow};

use crate::harness::{free_port, Vigil};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone)]
struct Request {
    webhook_id: String,
    status: u16,
    body: Value,
}

#[derive(Default)]
struct Log {
    answer: u16,
    requests: Vec<Request>,
    bad_signatures: usize,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Log>>);

impl Shared {
    fn answer(&self, status: u16) {
        self.0.lock().unwrap().answer = status;
    }
    fn requests(&self) -> Vec<Request> {
        self.0.lock().unwrap().requests.clone()
    }
    fn bad_signatures(&self) -> usize {
        self.0.lock().unwrap().bad_signatures
    }
}

/// The Standard Webhooks check, from the spec: HMAC-SHA256 over `id.timestamp.body` with the base64
/// secret after `whsec_`, compared with any `v1,` entry of the space-separated signature header.
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, ts, sigs) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let Ok(ts_secs) = ts.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - ts_secs).abs() > 300 || id.is_empty() {
        return false;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("test secret is base64");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = b64.encode(mac.finalize().into_bytes());
    sigs.split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn handle(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let mut log = shared.0.lock().unwrap();
    if !signature_ok(&headers, &body) {
        log.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature");
    }
    let status = if log.answer == 0 { 200 } else { log.answer };
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    log.requests.push(Request {
        webhook_id,
        status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    (StatusCode::from_u16(status).unwrap(), "{}")
}

/// A receiver on its own runtime: stopping it drops every connection, as a crashed SOAR would.
struct Receiver {
    rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(shared: &Shared, port: u16) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            axum::serve(listener, app).await
        });
        Receiver { rt }
    }
    fn stop(self) {
        self.rt.shutdown_background();
    }
}

/// Fast grouping and retries, one OCSF destination, and an inventory where only gpt-4o is approved, so
/// each `rogue-N` model raises one shadow-AI alert (one finding per model).
fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let retries: Vec<String> = (0..400).map(|_| "\"100ms\"".to_string()).collect();
    let text = format!(
        r#"
[detect]
[[detect.inventory.providers]]
id = "openai"
[[detect.inventory.models]]
id = "gpt-4o"

[respond]
[[respond.destinations]]
name = "soc"
url = "http://127.0.0.1:{port}/hooks/vigil"
format = "ocsf"
secret = "{SECRET}"

[respond.grouping]
group_wait = "50ms"
group_interval = "200ms"
repeat_interval = "1h"
resolve_after = "1h"

[respond.delivery]
timeout = "2s"
retry_schedule = [{}]
jitter = 0.1
breaker_failures = 3
breaker_cooldown = "200ms"
poll_interval = "50ms"

[respond.egress]
allow_hosts = ["127.0.0.1"]
"#,
        retries.join(", ")
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rogue_calls(models: std::ops::Range<u32>) -> Vec<EventRow> {
    let now = chrono::Utc::now().timestamp_micros();
    models
        .map(|i| EventRow {
            time_us: now + i64::from(i),
            event_id: format!("soar-{i}-{now}"),
            kind: Some(EventKind::Inference),
            service: Some("e2e-soar".into()),
            user_id: Some("analyst@example.com".into()),
            operation: Some("chat".into()),
            provider: Some("openai".into()),
            model: Some(format!("rogue-{i}")),
            trace_id: Some(format!("{:032x}", 0xabc0_0000u64 + u64::from(i))),
            span_id: Some(format!("{:016x}", 0xabc0_0000u64 + u64::from(i))),
            status: Some("ok".into()),
            ..Default::default()
        })
        .collect()
}

async fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// Models whose finding reached the receiver as a Create that it accepted.
fn delivered_models(requests: &[Request]) -> BTreeSet<String> {
    requests
        .iter()
        .filter(|r| r.status == 200 && r.body["type"] == "finding.created")
        .filter_map(|r| {
            r.body["data"]["resources"][0]["name"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_outage_and_sigkills_lose_no_alert_and_never_mint_a_second_webhook_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shared = Shared::default();
    shared.answer(500);
    let receiver = Receiver::start(&shared, port);
    let config = config(dir.path(), port);
    let mut v = Vigil::start_with(&["--config", config.to_str().unwrap()], &[]).await;

    // Phase 1: the receiver answers 500; ten alerts are raised and retried.
    let mut client = v.grpc_client().await;
    client
        .export(traces_request(&rogue_calls(0..10)))
        .await
        .expect("accepted");
    assert!(
        wait_for(Duration::from_secs(20), || shared
            .requests()
            .iter()
            .filter(|r| r.status == 500)
            .count()
            >= 20)
        .await,
        "deliveries are attempted and retried; log:\n{}",
        v.log()
    );
    v.kill9();

    // Phase 2: the receiver is gone; Vigil restarts, raises ten more, and cannot connect.
    receiver.stop();
    v.restart().await;
    let mut client = v.grpc_client().await;
    client
        .export(traces_request(&rogue_calls(10..20)))
        .await
        .expect("accepted");
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = "SELECT count(*) FROM alert_deliveries WHERE status = 'retrying' AND last_error NOT LIKE '%HTTP%'";
    while v.count(refused).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        v.count(refused).await > 0,
        "deliveries fail to connect while the receiver is gone"
    );
    v.kill9();

    // Phase 3: the receiver is back and healthy; Vigil restarts and drains its outbox.
    shared.answer(200);
    let receiver = Receiver::start(&shared, port);
    v.restart().await;
    let expected: BTreeSet<String> = (0..20).map(|i| format!("rogue-{i}")).collect();
    let all = wait_for(Duration::from_secs(30), || {
        delivered_models(&shared.requests()) == expected
    })
    .await;
    let requests = shared.requests();
    assert!(
        all,
        "delivered {:?}; log:\n{}",
        delivered_models(&requests),
        v.log()
    );
    assert_eq!(
        v.count("SELECT count(*) FROM alerts WHERE detector = 'shadow_ai'")
            .await,
        20
    );
    let pending = v
        .count("SELECT count(*) FROM alert_deliveries WHERE status <> 'delivered'")
        .await;
    assert_eq!(pending, 0, "every delivery ends delivered");
    receiver.stop();

    assert_eq!(
        shared.bad_signatures(),
        0,
        "every request carried a valid signature"
    );
    // One webhook id per (finding, revision), over every attempt: failed, refused-then-retried, delivered.
    let mut ids: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in &requests {
        let finding = r.body["data"]["finding_info"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let revision = r.body["data"]["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ids.entry((finding, revision))
            .or_default()
            .insert(r.webhook_id.clone());
    }
    for (key, seen) in &ids {
        assert_eq!(seen.len(), 1, "{key:?} was sent under {seen:?}");
    }
    let failed = requests.iter().filter(|r| r.status == 500).count();
    eprintln!(
        "soar e2e: {} requests ({failed} answered 500), {} revisions, 20 alerts delivered",
        requests.len(),
        ids.len()
    );
}

/// A crash after the alerts are durable in the WAL but before the outbox has them: the restarted server
/// finds them in the `alerts` table and delivers them.
#[tokio::test(flavor = "multi_thread")]
async fn alerts_stored_just_before_a_crash_are_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shared = Shared::default();
    let receiver = Receiver::start(&shared, port);
    let config = config(dir.path(), port);
    let mut v = Vigil::start_with(
        &["--config", config.to_str().unwrap()],
        &[("FAILPOINTS", "alerts_stored_before_outbox=return")],
    )
    .await;
    let mut client = v.grpc_client().await;
    // The process aborts after the WAL fsync, before answering: the export fails.
    assert!(
        client
            .export(traces_request(&rogue_calls(0..3)))
            .await
            .is_err(),
        "the failpoint aborted the server"
    );
    v.kill9();
    assert!(
        shared.requests().is_empty(),
        "nothing was delivered before the crash"
    );

    v.envs.retain(|(k, _)| k != "FAILPOINTS");
    v.restart().await;
    let expected: BTreeSet<String> = (0..3).map(|i| format!("rogue-{i}")).collect();
    let all = wait_for(Duration::from_secs(20), || {
        delivered_models(&shared.requests()) == expected
    })
    .await;
    assert!(
        all,
        "delivered {:?}; log:\n{}",
        delivered_models(&shared.requests()),
        v.log()
    );
    // A second restart finds nothing missing: no second finding. (A delivery the kill interrupted before
    // its outcome was committed is resent under the same webhook id, which receivers deduplicate on.)
    v.kill9();
    v.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests = shared.requests();
    let creates: Vec<&Request> = requests
        .iter()
        .filter(|r| r.body["type"] == "finding.created")
        .collect();
    let findings: BTreeSet<&str> = creates
        .iter()
        .filter_map(|r| r.body["data"]["finding_info"]["uid"].as_str())
        .collect();
    let ids: BTreeSet<&str> = creates.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(
        (findings.len(), ids.len()),
        (3, 3),
        "one finding and one webhook id per alert: {creates:?}"
    );
    receiver.stop();
}

/// The outbox refuses one write of alerts that are already durable: the running server (no restart)
/// hands them to delivery from the `alerts` table on its next window tick.
#[tokio::test(flavor = "multi_thread")]
async fn alerts_the_outbox_refused_once_are_delivered_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shared = Shared::default();
    let receiver = Receiver::start(&shared, port);
    let config = config(dir.path(), port);
    let v = Vigil::start_with(
        &["--config", config.to_str().unwrap()],
        &[("FAILPOINTS", "outbox_submit=1*return")],
    )
    .await;
    let mut client = v.grpc_client().await;
    client
        .export(traces_request(&rogue_calls(0..3)))
        .await
        .expect("the events are stored and acknowledged");
    let expected: BTreeSet<String> = (0..3).map(|i| format!("rogue-{i}")).collect();
    let all = wait_for(Duration::from_secs(30), || {
        delivered_models(&shared.requests()) == expected
    })
    .await;
    assert!(
        all,
        "delivered {:?}; log:\n{}",
        delivered_models(&shared.requests()),
        v.log()
    );
    assert!(
        v.log().contains("could not queue alerts for delivery"),
        "the first write really failed; log:\n{}",
        v.log()
    );
    receiver.stop();
}

/// A playbook's action webhook, once the receiver accepted it, shows on the alert it answered in SQL: the
/// response taken and when, so `responded_at - time` (time to contain) is measurable, across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn playbook_response_is_recorded_on_its_alert() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shared = Shared::default();
    let receiver = Receiver::start(&shared, port);
    let config = config(dir.path(), port);
    let playbook = format!(
        r#"
[[respond.playbooks]]
name = "revoke"
detectors = ["shadow_ai"]
min_severity = "informational"
action = "revoke_agent_token"
url = "http://127.0.0.1:{port}/actions/revoke"
secret = "{SECRET}"
"#
    );
    let text = std::fs::read_to_string(&config).unwrap() + &playbook;
    std::fs::write(&config, text).unwrap();
    let mut v = Vigil::start_with(&["--config", config.to_str().unwrap()], &[]).await;
    let mut client = v.grpc_client().await;
    client
        .export(traces_request(&rogue_calls(0..2)))
        .await
        .expect("accepted");

    let actions = || -> BTreeSet<String> {
        shared
            .requests()
            .iter()
            .filter(|r| r.status == 200 && r.body["type"] == "response.requested")
            .filter_map(|r| {
                r.body["data"]["finding"]["alert_ids"][0]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(20), || actions().len() == 2).await,
        "two actions sent; log:\n{}",
        v.log()
    );
    let answered = actions();
    let done = "SELECT count(*) FROM alerts WHERE response_status = 'delivered' AND responded_at IS NOT NULL";
    let deadline = Instant::now() + Duration::from_secs(10);
    while v.count(done).await < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for round in ["before", "after"] {
        let rows = v
            .query(
                "SELECT alert_id, response_action, response_status, \
                 extract(epoch from responded_at - time) AS contain_s FROM alerts \
                 WHERE detector = 'shadow_ai' AND response_action IS NOT NULL ORDER BY alert_id",
            )
            .await;
        let ids: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r["alert_id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            ids, answered,
            "{round} a restart, the answered alerts carry the response: {rows:?}"
        );
        for r in &rows {
            assert_eq!(r["response_action"], "revoke_agent_token", "{r}");
            assert_eq!(r["response_status"], "delivered", "{r}");
            let contain_s = r["contain_s"]
                .as_f64()
                .unwrap_or_else(|| panic!("time to contain in {r}"));
            assert!(
                (0.0..60.0).contains(&contain_s),
                "contained {contain_s} s after detection: {r}"
            );
        }
        assert_eq!(
            v.count("SELECT count(*) FROM alerts WHERE detector = 'shadow_ai'")
                .await,
            2,
            "no alert row repeated"
        );
        let joined = "SELECT count(*) FROM alert_deliveries d JOIN alerts a ON a.alert_id = d.alert_id WHERE d.playbook = 'revoke'";
        assert_eq!(
            v.count(joined).await,
            2,
            "playbook deliveries join their alerts"
        );
        if round == "before" {
            v.kill9();
            v.restart().await;
        }
    }
    assert_eq!(shared.bad_signatures(), 0);
    receiver.stop();
}
