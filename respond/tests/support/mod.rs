//! A real webhook receiver on 127.0.0.1 (axum) that verifies every Standard Webhooks signature and
//! records what it saw, and helpers to build configs and alerts.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use vigil_detect::alert::{Alert, Severity};
use vigil_respond::signing::SigningKey;
use vigil_respond::*;

pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub webhook_id: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub custom: Option<String>,
}

#[derive(Debug, Default)]
pub struct Inner {
    /// Answer per path prefix (default 200).
    pub status: BTreeMap<String, u16>,
    pub retry_after: Option<String>,
    /// Time taken before answering, per path prefix.
    pub delay: BTreeMap<String, Duration>,
    /// Answers (status, delay) for the next requests to a path, in order, before `status` and `delay`.
    pub script: BTreeMap<String, std::collections::VecDeque<(u16, Duration)>>,
    /// Signed requests per path, whatever the answer.
    pub hits: BTreeMap<String, usize>,
    pub seen: Vec<Seen>,
    pub bad_signatures: usize,
}

#[derive(Clone, Default)]
pub struct Shared(pub Arc<Mutex<Inner>>);

impl Shared {
    pub fn set_status(&self, path: &str, status: u16) {
        self.0
            .lock()
            .unwrap()
            .status
            .insert(path.to_string(), status);
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }
    pub fn bad_signatures(&self) -> usize {
        self.0.lock().unwrap().bad_signatures
    }
}

async fn handle(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = SigningKey::from_secret(SECRET).unwrap();
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let id = h("webhook-id").unwrap_or_default();
    let ts: i64 = h("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let sig = h("webhook-signature").unwrap_or_default();
    let (scripted, delay) = {
        let mut inner = shared.0.lock().unwrap();
        *inner.hits.entry(uri.path().to_string()).or_default() += 1;
        let scripted = inner
            .script
            .get_mut(uri.path())
            .and_then(|answers| answers.pop_front());
        let delay = inner
            .delay
            .iter()
            .filter(|(p, _)| uri.path().starts_with(p.as_str()))
            .map(|(_, d)| *d)
            .next_back();
        (scripted, scripted.map(|(_, d)| d).or(delay))
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let now = chrono::Utc::now().timestamp();
    let mut inner = shared.0.lock().unwrap();
    if !key.verify_fresh(&id, ts, &body, &sig, now, 300) {
        inner.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let path = uri.path().to_string();
    let status = scripted.map(|(s, _)| s).unwrap_or_else(|| {
        inner
            .status
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, s)| *s)
            .next_back()
            .unwrap_or(200)
    });
    if status == 200 {
        inner.seen.push(Seen {
            path: path.clone(),
            webhook_id: id,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            authorization: h("authorization"),
            custom: h("ph-auth-token"),
        });
    }
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        format!("{{\"ok\":{}}}", status == 200),
    )
        .into_response();
    if status == 302 {
        resp.headers_mut()
            .insert("location", "/elsewhere".parse().unwrap());
    }
    if let Some(ra) = inner
        .retry_after
        .clone()
        .filter(|_| status == 429 || status == 503)
    {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    resp
}

/// A receiver on its own runtime, so stopping it closes every connection (the receiver "goes away").
pub struct Receiver {
    rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
}

impl Receiver {
    pub fn start(shared: &Shared, port: u16) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
                }
            }
        });
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver { rt, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stop(self) {
        self.rt.shutdown_background();
    }
}

pub fn alert(fp: &str, detector: &str, severity: Severity, i: usize) -> Alert {
    Alert {
        alert_id: format!("{fp}-a{i}"),
        time_us: chrono::Utc::now().timestamp_micros(),
        detector: detector.into(),
        severity,
        entity_type: "agent".into(),
        entity_id: format!("agent-{fp}"),
        score: 4.2,
        title: format!("{detector} on agent-{fp}"),
        description: "test detection".into(),
        evidence_event_ids: vec![format!("ev-{fp}-{i}")],
        evidence: "token=***".into(),
        owasp: Some("LLM01:2025 Prompt Injection".into()),
        atlas: Some("AML.T0051".into()),
        fingerprint: fp.into(),
    }
}

pub fn destination(name: &str, url: String, format: Format) -> DestinationConfig {
    DestinationConfig {
        name: name.into(),
        url,
        format,
        auth: Some(Auth::Bearer {
            token: Secret::new("s3cr3t-token"),
        }),
        secret: Some(Secret::new(SECRET)),
        min_severity: Severity::Informational,
        detectors: vec![],
        exclude_detectors: vec![],
    }
}

/// A receiver answering as `shared` says, and the fast config of one destination `soc` posting to its
/// `/hook` in `format`.
pub fn soc_receiver(shared: &Shared, format: Format) -> (Receiver, RespondConfig) {
    let receiver = Receiver::start(shared, 0);
    let config = fast_config(vec![destination("soc", receiver.url("/hook"), format)]);
    (receiver, config)
}

/// Millisecond-scale grouping and retries so the whole machinery runs in a test.
pub fn fast_config(destinations: Vec<DestinationConfig>) -> RespondConfig {
    let ms = Duration::from_millis;
    RespondConfig {
        destinations,
        playbooks: vec![],
        grouping: GroupingConfig {
            group_wait: ms(30),
            group_interval: ms(150),
            repeat_interval: Duration::from_secs(3600),
            resolve_after: Duration::from_secs(3600),
        },
        delivery: DeliveryConfig {
            timeout: Duration::from_secs(2),
            retry_schedule: vec![ms(20); 200],
            jitter: 0.2,
            max_retry_after: Duration::from_secs(60),
            breaker_failures: 3,
            breaker_cooldown: ms(60),
            poll_interval: ms(10),
            max_in_flight: 16,
            max_in_flight_per_destination: 16,
            history_limit: 100_000,
            dead_letter_limit: 10_000,
        },
        egress: EgressConfig {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_cidrs: vec![],
        },
        outbox_path: None,
    }
}

/// Runs the delivery loop on its own runtime; `crash()` drops the runtime without any shutdown.
pub struct Running {
    rt: tokio::runtime::Runtime,
}

impl Running {
    pub fn start(responder: &Arc<Responder>) -> Running {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(responder.clone().run(std::future::pending()));
        Running { rt }
    }
    pub fn crash(self) {
        drop(self.rt);
    }
}

/// Polls `f` until true or the timeout.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// (finding uid, revision) -> webhook ids the receiver saw for it, from OCSF bodies.
pub fn ids_per_revision(seen: &[Seen]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in seen {
        if let Some(uid) = s.body["data"]["metadata"]["uid"].as_str() {
            m.entry(format!("{}|{}", s.path, uid))
                .or_default()
                .insert(s.webhook_id.clone());
        }
    }
    m
}
