//! The responder: grouping detections into findings, queuing notifications in the outbox, and the
//! delivery loop that sends them with retries, a breaker per destination and Standard Webhooks signatures.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::Client;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use vigil_detect::alert::Alert;

use crate::backoff::next_delay;
use crate::breaker::Breaker;
use crate::config::{Format, RespondConfig};
use crate::delivery::{self, Answer, Outcome, Target};
use crate::egress::{EgressError, EgressPolicy};
use crate::finding::{Activity, Finding};
use crate::formats::{self, RenderContext};
use crate::grouping::GroupState;
use crate::metrics::metrics;
use crate::outbox::{
    Batch, DeliveryRecord, DeliveryStatus, DestinationState, Outbox, OutboxError, ResponseRecord,
};
use crate::playbook::{action_body, destination_matches, playbook_matches};
use crate::signing::{SigningError, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("destination {name:?}: {source}")]
    Egress { name: String, source: EgressError },
    #[error("destination {name:?}: {source}")]
    Signing { name: String, source: SigningError },
    #[error("destination name {0:?} is used twice (playbooks included)")]
    DuplicateName(String),
    #[error("unknown destination {0:?}")]
    UnknownDestination(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("request to {name:?} failed: {error}")]
    Request { name: String, error: String },
}

/// Which dead letters to resend.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    All,
    /// By `webhook_id` or by finding id.
    Ids(Vec<String>),
}

/// A response taken by a playbook, with the state of its action webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseView {
    pub record: ResponseRecord,
    pub status: DeliveryStatus,
    pub completed_at_ms: Option<i64>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
}

struct Endpoint {
    target: Target,
    format: Format,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, GroupState>,
    deliveries: BTreeMap<u64, DeliveryRecord>,
    active: BTreeSet<u64>,
    /// Dead letters and deliveries to a disabled destination, oldest first: what replay can send.
    failed: BTreeSet<u64>,
    /// Superseded Updates, oldest first: the first history pruned.
    superseded: BTreeSet<u64>,
    destinations: HashMap<String, DestinationState>,
    responses: BTreeMap<u64, ResponseRecord>,
    next_seq: u64,
    breakers: HashMap<String, Breaker>,
    in_flight: HashSet<u64>,
    pruned_at_ms: i64,
}

/// How far back `reconcile` looks, and how long submitted alert ids are remembered for it.
pub const RECONCILE_WINDOW_MS: i64 = 24 * 3_600_000;
const PRUNE_EVERY_MS: i64 = 10 * 60_000;
/// How long a delivery waits after its outcome could not be recorded (the outbox could not be written).
const OUTBOX_FAILURE_PAUSE_MS: i64 = 5_000;

impl State {
    fn put(&mut self, d: DeliveryRecord) {
        if d.status.is_active() {
            self.active.insert(d.seq);
        } else {
            self.active.remove(&d.seq);
        }
        if is_failed(d.status) {
            self.failed.insert(d.seq);
        } else {
            self.failed.remove(&d.seq);
        }
        if d.status == DeliveryStatus::Superseded {
            self.superseded.insert(d.seq);
        } else {
            self.superseded.remove(&d.seq);
        }
        self.deliveries.insert(d.seq, d);
    }
    fn remove(&mut self, seq: u64) {
        self.deliveries.remove(&seq);
        self.active.remove(&seq);
        self.failed.remove(&seq);
        self.superseded.remove(&seq);
    }
    fn disabled(&self, name: &str) -> bool {
        self.destinations.get(name).is_some_and(|s| s.disabled)
    }
}

pub struct Responder {
    config: RespondConfig,
    endpoints: HashMap<String, Endpoint>,
    outbox: Outbox,
    state: Mutex<State>,
    client: Client,
    wake: Notify,
}

fn unsigned(endpoints: &HashMap<String, Endpoint>) -> Vec<String> {
    let mut names: Vec<String> = endpoints
        .iter()
        .filter(|(_, e)| e.target.key.is_none())
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

/// Playbook actions are queued under this destination name.
pub fn playbook_destination(name: &str) -> String {
    format!("playbook:{name}")
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A fresh Standard Webhooks message id (minted once per delivery, reused by its retries).
fn webhook_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

impl Responder {
    /// Validates destinations against the egress policy and opens (or recovers) the outbox.
    pub fn open(
        config: RespondConfig,
        outbox_path: impl AsRef<Path>,
    ) -> Result<Arc<Responder>, RespondError> {
        let policy =
            Arc::new(
                EgressPolicy::new(&config.egress).map_err(|source| RespondError::Egress {
                    name: "egress".into(),
                    source,
                })?,
            );
        let mut endpoints = HashMap::new();
        let mut add = |name: String, url: &str, auth, secret: &Option<crate::Secret>, format| {
            let url = policy
                .check_url(url)
                .map_err(|source| RespondError::Egress {
                    name: name.clone(),
                    source,
                })?;
            let key = secret
                .as_ref()
                .map(|s| SigningKey::from_secret(s.expose()))
                .transpose()
                .map_err(|source| RespondError::Signing {
                    name: name.clone(),
                    source,
                })?;
            let target = Target {
                name: name.clone(),
                url,
                auth,
                key,
            };
            if endpoints
                .insert(name.clone(), Endpoint { target, format })
                .is_some()
            {
                return Err(RespondError::DuplicateName(name));
            }
            Ok(())
        };
        for d in &config.destinations {
            add(d.name.clone(), &d.url, d.auth.clone(), &d.secret, d.format)?;
        }
        for p in &config.playbooks {
            add(
                playbook_destination(&p.name),
                &p.url,
                p.auth.clone(),
                &p.secret,
                Format::Json,
            )?;
        }
        let client = delivery::client(config.delivery.timeout, policy)
            .map_err(|e| RespondError::Client(delivery::error_chain(&e)))?;
        let (outbox, loaded) = Outbox::open(outbox_path.as_ref())?;
        let mut state = State {
            groups: loaded.groups,
            destinations: loaded.destinations,
            responses: loaded.responses,
            next_seq: loaded.next_seq,
            ..State::default()
        };
        // Deliveries for a destination that is no longer configured cannot be sent: dead-letter them
        // (replayable once it is configured again).
        let orphans: Vec<DeliveryRecord> = loaded
            .deliveries
            .values()
            .filter(|d| d.status.is_active() && !endpoints.contains_key(&d.destination))
            .map(|d| DeliveryRecord {
                status: DeliveryStatus::DeadLetter,
                last_error: Some("destination no longer configured".into()),
                next_attempt_at_ms: None,
                ..d.clone()
            })
            .collect();
        for d in loaded.deliveries.into_values() {
            state.put(d);
        }
        if !orphans.is_empty() {
            outbox.write(|b| orphans.iter().try_for_each(|d| b.put_delivery(d)))?;
            for d in orphans {
                state.put(d);
            }
        }
        for name in unsigned(&endpoints) {
            tracing::warn!(
                destination = %name,
                "no `secret` configured: webhooks to this destination are sent unsigned, so it cannot tell \
                 Vigil's alerts from forged ones"
            );
        }
        let responder = Arc::new(Responder {
            config,
            endpoints,
            outbox,
            state: Mutex::new(state),
            client,
            wake: Notify::new(),
        });
        responder.update_pending_metrics(&responder.lock());
        Ok(responder)
    }

    /// Destinations (and playbooks) without a signing secret: their receivers cannot verify that a
    /// request came from Vigil, so they are warned about at start and listed here for `vigil alerts`.
    pub fn unsigned_destinations(&self) -> Vec<String> {
        unsigned(&self.endpoints)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds detections into their findings and runs matching playbooks; durable (fsynced) on return.
    /// Notifications themselves are queued by the delivery loop when grouping says they are due. An alert
    /// submitted before (a `reconcile` pass that ran between the pipeline's store and this call) is not
    /// folded in again.
    pub fn submit(&self, alerts: &[Alert]) -> Result<(), RespondError> {
        self.submit_inner(alerts).map(|_| ())
    }

    /// Submits the alerts the outbox has never seen, and returns how many that was.
    ///
    /// The pipeline stores an alert (WAL fsync) before it submits it here (outbox commit); a crash
    /// between the two leaves an alert in the `alerts` table that no destination will hear of. At start,
    /// the server hands the recent stored alerts to this method, which submits exactly the missing ones,
    /// checked under the same lock as `submit`, so running it alongside live traffic cannot double one.
    pub fn reconcile(&self, alerts: &[Alert]) -> Result<usize, RespondError> {
        self.submit_inner(alerts)
    }

    /// Folds in the alerts of `alerts` never submitted before; returns how many that was.
    fn submit_inner(&self, alerts: &[Alert]) -> Result<usize, RespondError> {
        if alerts.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut st = self.lock();
        let filtered: Vec<Alert>;
        let missing = self
            .outbox
            .unsubmitted(alerts.iter().map(|a| a.alert_id.as_str()))?;
        let alerts = if missing.len() == alerts.len() {
            alerts
        } else {
            filtered = alerts
                .iter()
                .filter(|a| missing.contains(a.alert_id.as_str()))
                .cloned()
                .collect();
            if filtered.is_empty() {
                return Ok(0);
            }
            &filtered[..]
        };
        let prune = now - st.pruned_at_ms >= PRUNE_EVERY_MS;
        if prune {
            st.pruned_at_ms = now;
        }
        let mut changed: HashMap<String, GroupState> = HashMap::new();
        for a in alerts {
            match changed.get_mut(&a.fingerprint) {
                Some(g) => g.observe(a, now),
                None => {
                    let g = match st.groups.get(&a.fingerprint) {
                        Some(g) => {
                            let mut g = g.clone();
                            g.observe(a, now);
                            g
                        }
                        None => GroupState::new(a, now),
                    };
                    changed.insert(a.fingerprint.clone(), g);
                }
            }
        }
        let mut seq = st.next_seq;
        let mut queued = Vec::new();
        let mut responses = Vec::new();
        // This submission's alerts by fingerprint, in order, to name the alert each playbook answers.
        let mut submitted: HashMap<&str, Vec<&Alert>> = HashMap::new();
        if !self.config.playbooks.is_empty() {
            for a in alerts {
                submitted.entry(a.fingerprint.as_str()).or_default().push(a);
            }
        }
        for g in changed.values_mut() {
            for p in &self.config.playbooks {
                if g.playbooks_fired.contains(&p.name)
                    || !playbook_matches(p, &g.alert.detector, g.severity)
                {
                    continue;
                }
                // The earliest alert of this submission that meets the playbook's conditions, so time to
                // contain is measured from the first qualifying detection; the finding's highest-severity
                // one when none does (a playbook configured after its finding opened).
                let trigger = submitted
                    .get(g.fingerprint.as_str())
                    .and_then(|v| {
                        v.iter()
                            .copied()
                            .find(|a| playbook_matches(p, &a.detector, a.severity))
                    })
                    .map_or_else(|| g.alert.alert_id.clone(), |a| a.alert_id.clone());
                g.playbooks_fired.insert(p.name.clone());
                let mut finding = g.clone().notify(Activity::Create, now);
                finding.revision = 1;
                let body = action_body(p, &finding, now * 1000);
                let destination = playbook_destination(&p.name);
                let mut record =
                    self.new_record(seq, &finding, &destination, Some(p.name.clone()), &st, now);
                record.alert_id = Some(trigger.clone());
                responses.push(ResponseRecord {
                    seq,
                    playbook: p.name.clone(),
                    action: p.action.clone(),
                    finding_id: g.finding_id.clone(),
                    alert_id: trigger,
                    fingerprint: g.fingerprint.clone(),
                    detector: g.alert.detector.clone(),
                    severity: g.severity,
                    entity_type: g.alert.entity_type.clone(),
                    entity_id: g.alert.entity_id.clone(),
                    triggered_at_ms: now,
                    delivery_seq: seq,
                    responded_at_ms: None,
                });
                queued.push((record, body));
                seq += 1;
            }
        }
        let trim = self.prunable(&st, 0, failed_count(&queued));
        self.outbox.write(|b| {
            for g in changed.values() {
                b.put_group(g)?;
            }
            put_queued(b, &queued)?;
            trim.write(b)?;
            for r in &responses {
                b.put_response(r)?;
            }
            for a in alerts {
                b.mark_submitted(&a.alert_id, now)?;
            }
            if prune {
                b.prune_submitted(now - RECONCILE_WINDOW_MS)?;
            }
            b.set_next_seq(seq)
        })?;
        st.groups.extend(changed);
        st.next_seq = seq;
        self.pruned(&mut st, trim);
        let woke = !queued.is_empty();
        for (d, _) in queued {
            st.put(d);
        }
        for r in responses {
            st.responses.insert(r.seq, r);
        }
        if woke {
            self.update_pending_metrics(&st);
            drop(st);
            self.wake.notify_one();
        }
        Ok(alerts.len())
    }

    fn new_record(
        &self,
        seq: u64,
        f: &Finding,
        destination: &str,
        playbook: Option<String>,
        st: &State,
        now: i64,
    ) -> DeliveryRecord {
        let disabled = st.disabled(destination);
        DeliveryRecord {
            seq,
            webhook_id: webhook_id(),
            finding_id: f.finding_id.clone(),
            alert_id: Some(f.alert.alert_id.clone()),
            fingerprint: f.fingerprint.clone(),
            destination: destination.to_string(),
            playbook,
            revision: f.revision,
            activity: f.activity,
            attempts: 0,
            round_attempts: 0,
            status: if disabled {
                DeliveryStatus::Disabled
            } else {
                DeliveryStatus::Pending
            },
            last_error: disabled.then(|| "destination disabled".to_string()),
            last_status_code: None,
            created_at_ms: now,
            delivered_at_ms: None,
            next_attempt_at_ms: (!disabled).then_some(now),
        }
    }

    /// Turns due grouping decisions into queued deliveries (one transaction per call).
    fn tick_grouping(&self, now: i64) -> Result<usize, RespondError> {
        let mut st = self.lock();
        let due: Vec<(String, Activity)> = st
            .groups
            .iter()
            .filter_map(|(fp, g)| g.due(&self.config.grouping, now).map(|a| (fp.clone(), a)))
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let mut seq = st.next_seq;
        let mut queued = Vec::new();
        let mut updated = Vec::new();
        let mut closed = Vec::new();
        for (fp, activity) in due {
            let Some(mut g) = st.groups.get(&fp).cloned() else {
                continue;
            };
            let finding = g.notify(activity, now);
            for d in &self.config.destinations {
                let act = match activity {
                    Activity::Close if g.notified_destinations.contains(&d.name) => Activity::Close,
                    Activity::Close => continue,
                    _ if !destination_matches(d, &finding.alert.detector, finding.severity) => {
                        continue
                    }
                    _ if g.notified_destinations.insert(d.name.clone()) => Activity::Create,
                    other => other,
                };
                if !formats::accepts(d.format, act) {
                    continue;
                }
                let f = Finding {
                    activity: act,
                    ..finding.clone()
                };
                let ctx = RenderContext {
                    destination: &d.name,
                    now_us: now * 1000,
                    product_version: env!("CARGO_PKG_VERSION"),
                };
                let body = formats::render(d.format, &f, &ctx);
                queued.push((self.new_record(seq, &f, &d.name, None, &st, now), body));
                seq += 1;
            }
            if activity == Activity::Close {
                closed.push(fp);
            } else {
                updated.push(g);
            }
        }
        let superseded = superseded_by(&st, &queued);
        let prune = self.prunable_besides(&st, &superseded, failed_count(&queued));
        self.outbox.write(|b| {
            for g in &updated {
                b.put_group(g)?;
            }
            for fp in &closed {
                b.remove_group(fp)?;
            }
            for d in &superseded {
                b.put_delivery(d)?;
                b.remove_body(d.seq)?;
            }
            put_queued(b, &queued)?;
            prune.write(b)?;
            b.set_next_seq(seq)
        })?;
        st.next_seq = seq;
        self.pruned(&mut st, prune);
        for d in superseded {
            metrics()
                .deliveries
                .with_label_values(&[d.destination.as_str(), "superseded"])
                .inc();
            st.put(d);
        }
        for g in updated {
            st.groups.insert(g.fingerprint.clone(), g);
        }
        for fp in closed {
            st.groups.remove(&fp);
        }
        let n = queued.len();
        for (d, _) in queued {
            st.put(d);
        }
        self.update_pending_metrics(&st);
        Ok(n)
    }

    /// Picks deliveries to attempt now: due, not in flight, allowed by the destination's breaker, and the
    /// oldest queued one per (finding, destination) so a receiver never sees an Update before its Create.
    fn take_due(&self, now: i64) -> Vec<u64> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        let mut jobs = Vec::new();
        let limit = self.config.delivery.max_in_flight.max(1);
        let per_destination = self.config.delivery.max_in_flight_per_destination.max(1);
        let mut busy: HashMap<String, usize> = HashMap::new();
        for d in st.in_flight.iter().filter_map(|s| st.deliveries.get(s)) {
            *busy.entry(d.destination.clone()).or_default() += 1;
        }
        let instant = Instant::now();
        for seq in st.active.iter().copied() {
            if st.in_flight.len() >= limit {
                break;
            }
            let Some(d) = st.deliveries.get(&seq) else {
                continue;
            };
            if !blocked.insert((d.finding_id.clone(), d.destination.clone()))
                || st.in_flight.contains(&seq)
            {
                continue;
            }
            if d.next_attempt_at_ms.is_some_and(|t| t > now)
                || !self.endpoints.contains_key(&d.destination)
                || busy.get(&d.destination).copied().unwrap_or(0) >= per_destination
            {
                continue;
            }
            let breaker = st.breakers.entry(d.destination.clone()).or_insert_with(|| {
                Breaker::new(
                    self.config.delivery.breaker_failures,
                    self.config.delivery.breaker_cooldown,
                )
            });
            if !breaker.try_acquire(instant) {
                continue;
            }
            *busy.entry(d.destination.clone()).or_default() += 1;
            st.in_flight.insert(seq);
            jobs.push(seq);
        }
        jobs
    }

    async fn deliver(self: Arc<Self>, seq: u64) {
        let record = self.lock().deliveries.get(&seq).cloned();
        let Some(record) = record else { return };
        let Some(endpoint) = self.endpoints.get(&record.destination) else {
            return;
        };
        let outcome = match self.outbox.body(seq) {
            Ok(Some(body)) => {
                metrics()
                    .attempts
                    .with_label_values(&[record.destination.as_str()])
                    .inc();
                let started = Instant::now();
                let outcome =
                    delivery::attempt(&self.client, &endpoint.target, &record.webhook_id, body)
                        .await;
                metrics().latency.observe(started.elapsed().as_secs_f64());
                outcome
            }
            Ok(None) => Outcome::DeadLetter {
                status: 0,
                error: "body missing from the outbox".into(),
            },
            Err(e) => {
                tracing::warn!(error = %e, seq, "reading a queued body failed; will retry in 5 s");
                let mut st = self.lock();
                st.in_flight.remove(&seq);
                pause(&mut st, seq);
                if let Some(b) = st.breakers.get_mut(&record.destination) {
                    b.on_abandon(Instant::now());
                }
                return;
            }
        };
        if let Err(e) = self.apply(seq, outcome) {
            tracing::error!(error = %e, seq, "recording a delivery outcome failed; the delivery will be retried");
        }
    }

    /// Tests only: makes every outbox write fail (or succeed again), as a full disk would.
    #[doc(hidden)]
    pub fn refuse_outbox_writes(&self, on: bool) {
        self.outbox.refuse_writes(on);
    }

    /// Records an attempt's outcome durably and moves the delivery on.
    fn apply(&self, seq: u64, outcome: Outcome) -> Result<(), RespondError> {
        let now = now_ms();
        let mut st = self.lock();
        st.in_flight.remove(&seq);
        let Some(mut d) = st.deliveries.get(&seq).cloned() else {
            return Ok(());
        };
        let dest = d.destination.clone();
        let breaker = st.breakers.entry(dest.clone()).or_insert_with(|| {
            Breaker::new(
                self.config.delivery.breaker_failures,
                self.config.delivery.breaker_cooldown,
            )
        });
        match &outcome {
            Outcome::Retry { retry_after, .. } => {
                let instant = Instant::now();
                breaker.on_failure(instant);
                if let Some(pause) = retry_after {
                    breaker.hold(instant + (*pause).min(self.config.delivery.max_retry_after));
                }
            }
            _ => breaker.on_success(),
        }
        if !d.status.is_active() {
            return Ok(());
        }
        d.attempts += 1;
        d.round_attempts += 1;
        d.last_status_code = outcome.status().filter(|s| *s != 0);
        let mut others_disabled = Vec::new();
        let mut dest_state = None;
        let mut label = outcome.label();
        match outcome {
            Outcome::Delivered { .. } => {
                d.status = DeliveryStatus::Delivered;
                d.delivered_at_ms = Some(now);
                d.next_attempt_at_ms = None;
                d.last_error = None;
            }
            // In flight when another delivery's 410 disabled the destination: it waits with the others for a
            // replay, rather than calling a receiver that said it is gone.
            Outcome::Retry { error, .. } if st.disabled(&dest) => {
                d.status = DeliveryStatus::Disabled;
                d.next_attempt_at_ms = None;
                d.last_error = Some(format!(
                    "destination disabled (410 Gone); last answer {error}"
                ));
                label = "disabled";
            }
            Outcome::Retry {
                retry_after, error, ..
            } => {
                let c = &self.config.delivery;
                let delay = next_delay(
                    &c.retry_schedule,
                    d.round_attempts,
                    c.jitter,
                    retry_after,
                    c.max_retry_after,
                    &mut rand::rng(),
                );
                d.last_error = Some(error);
                let newer = delay.and_then(|_| newer_waiting_update(&st, &d));
                match delay {
                    // It was in flight when a newer Update of its finding was queued: that one goes
                    // instead.
                    Some(_) if newer.is_some() => {
                        d = superseded(&d, newer.unwrap_or(d.revision));
                        label = "superseded";
                    }
                    Some(delay) => {
                        d.status = DeliveryStatus::Retrying;
                        d.next_attempt_at_ms = Some(now + ms(delay));
                    }
                    None => {
                        d.status = DeliveryStatus::DeadLetter;
                        d.next_attempt_at_ms = None;
                        label = "dead_letter";
                    }
                }
            }
            Outcome::DeadLetter { error, .. } => {
                d.status = DeliveryStatus::DeadLetter;
                d.next_attempt_at_ms = None;
                d.last_error = Some(error);
            }
            Outcome::Disable { error, .. } => {
                d.status = DeliveryStatus::Disabled;
                d.next_attempt_at_ms = None;
                d.last_error = Some(error.clone());
                dest_state = Some(DestinationState {
                    disabled: true,
                    reason: Some(error),
                    since_ms: Some(now),
                });
                for other in st.active.iter().filter_map(|s| st.deliveries.get(s)) {
                    if other.destination == dest
                        && other.seq != seq
                        && !st.in_flight.contains(&other.seq)
                    {
                        others_disabled.push(DeliveryRecord {
                            status: DeliveryStatus::Disabled,
                            next_attempt_at_ms: None,
                            last_error: Some("destination disabled (410 Gone)".into()),
                            ..other.clone()
                        });
                    }
                }
            }
        }
        let prune = self.prunable(
            &st,
            usize::from(matches!(
                d.status,
                DeliveryStatus::Delivered | DeliveryStatus::Superseded
            )),
            usize::from(is_failed(d.status)) + others_disabled.len(),
        );
        // A playbook action accepted: the response is taken now (its delivery record may be pruned later).
        let responded = match st.responses.get(&seq) {
            Some(r) if d.status == DeliveryStatus::Delivered && r.delivery_seq == seq => {
                Some(ResponseRecord {
                    responded_at_ms: Some(now),
                    ..r.clone()
                })
            }
            _ => None,
        };
        let written = self.outbox.write(|b| {
            b.put_delivery(&d)?;
            if let Some(r) = &responded {
                b.put_response(r)?;
            }
            if matches!(
                d.status,
                DeliveryStatus::Delivered | DeliveryStatus::Superseded
            ) {
                b.remove_body(seq)?;
            }
            for o in &others_disabled {
                b.put_delivery(o)?;
            }
            if let Some(s) = &dest_state {
                b.put_destination(&dest, s)?;
            }
            prune.write(b)
        });
        if let Err(e) = written {
            // The record is unchanged and due already: without a pause (set under this lock, before
            // `take_due` can see it out of flight) it would be sent again at once, and after every answer,
            // for as long as the outbox cannot be written (a full disk).
            pause(&mut st, seq);
            return Err(e.into());
        }
        metrics()
            .deliveries
            .with_label_values(&[dest.as_str(), label])
            .inc();
        if let Some(s) = dest_state {
            tracing::warn!(destination = %dest, "destination answered 410 Gone; disabled until replayed or re-enabled");
            st.destinations.insert(dest.clone(), s);
        }
        if let Some(r) = responded {
            st.responses.insert(r.seq, r);
        }
        st.put(d);
        for o in others_disabled {
            st.put(o);
        }
        self.pruned(&mut st, prune);
        self.update_pending_metrics(&st);
        Ok(())
    }

    /// Finished records to drop before `delivered` more delivered and `failed` more failed ones are kept:
    /// the oldest delivered beyond `history_limit`, and the oldest failed beyond `dead_letter_limit`. The two
    /// are bounded apart, so a pile of dead letters never costs the delivered history.
    fn prunable(&self, st: &State, delivered: usize, failed: usize) -> Prune {
        let limits = &self.config.delivery;
        let kept_delivered = st.deliveries.len() - st.active.len() - st.failed.len();
        let excess = (kept_delivered + delivered).saturating_sub(limits.history_limit);
        let delivered = if excess == 0 {
            Vec::new()
        } else {
            // Superseded records first: they were never delivered, and the delivered history is what
            // `alert_deliveries` is read for.
            st.superseded
                .iter()
                .copied()
                .chain(
                    st.deliveries
                        .values()
                        .filter(|d| d.status == DeliveryStatus::Delivered)
                        .map(|d| d.seq),
                )
                .take(excess)
                .collect()
        };
        let excess = (st.failed.len() + failed).saturating_sub(limits.dead_letter_limit);
        let failed = st.failed.iter().take(excess).copied().collect();
        Prune { delivered, failed }
    }

    /// [`Responder::prunable`] for a change that also moves `superseded` (active or held records) into the
    /// history: those held for a replay leave the failed records, and none of them is picked for pruning.
    fn prunable_besides(&self, st: &State, superseded: &[DeliveryRecord], failed: usize) -> Prune {
        let mut prune = self.prunable(st, superseded.len(), 0);
        let moving: HashSet<u64> = superseded.iter().map(|d| d.seq).collect();
        let leaving = st.failed.iter().filter(|s| moving.contains(s)).count();
        let excess = (st.failed.len() - leaving + failed)
            .saturating_sub(self.config.delivery.dead_letter_limit);
        prune.failed = st
            .failed
            .iter()
            .filter(|s| !moving.contains(s))
            .take(excess)
            .copied()
            .collect();
        prune
    }

    /// Drops what [`Responder::prunable`] picked from memory once the outbox no longer has it.
    fn pruned(&self, st: &mut State, prune: Prune) {
        for seq in prune.delivered {
            st.remove(seq);
        }
        if !prune.failed.is_empty() {
            tracing::warn!(
                dropped = prune.failed.len(),
                limit = self.config.delivery.dead_letter_limit,
                "dead letters over respond.delivery.dead_letter_limit: the oldest are dropped and cannot be replayed"
            );
        }
        for seq in prune.failed {
            if let Some(d) = st.deliveries.get(&seq) {
                metrics()
                    .dead_letters_dropped
                    .with_label_values(&[d.destination.as_str()])
                    .inc();
            }
            st.remove(seq);
        }
    }

    fn update_pending_metrics(&self, st: &State) {
        let mut counts: HashMap<&str, i64> =
            self.endpoints.keys().map(|k| (k.as_str(), 0)).collect();
        for d in st.active.iter().filter_map(|s| st.deliveries.get(s)) {
            *counts.entry(d.destination.as_str()).or_default() += 1;
        }
        for (dest, n) in counts {
            metrics().pending.with_label_values(&[dest]).set(n);
        }
    }

    /// The delivery loop. Returns when `shutdown` completes; requests in flight are abandoned and resent
    /// (same `webhook-id`) by the next run, so stopping at any point loses nothing.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let now = now_ms();
            if let Err(e) = self.tick_grouping(now) {
                tracing::error!(error = %e, "queuing due findings failed; retrying on the next tick");
            }
            for seq in self.take_due(now) {
                tasks.spawn(self.clone().deliver(seq));
            }
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.config.delivery.poll_interval) => {}
                _ = self.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.shutdown().await;
        let mut st = self.lock();
        st.in_flight.clear();
        let now = Instant::now();
        for b in st.breakers.values_mut() {
            b.on_abandon(now);
        }
    }

    /// Deliveries that gave up: dead letters and those of disabled destinations (`vigil alerts dead-letters`).
    pub fn dead_letters(&self) -> Vec<DeliveryRecord> {
        self.lock()
            .deliveries
            .values()
            .filter(|d| {
                matches!(
                    d.status,
                    DeliveryStatus::DeadLetter | DeliveryStatus::Disabled
                )
            })
            .cloned()
            .collect()
    }

    /// Every delivery kept (active and history), oldest first.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.lock().deliveries.values().cloned().collect()
    }

    /// Requeues dead letters (`vigil alerts replay`) with their original `webhook-id` and a fresh retry
    /// schedule, re-enabling their destinations. Returns how many were requeued.
    pub fn replay(&self, which: &Replay) -> Result<usize, RespondError> {
        let now = now_ms();
        let mut st = self.lock();
        let picked: Vec<DeliveryRecord> = st
            .deliveries
            .values()
            .filter(|d| {
                matches!(
                    d.status,
                    DeliveryStatus::DeadLetter | DeliveryStatus::Disabled
                )
            })
            .filter(|d| match which {
                Replay::All => true,
                Replay::Ids(ids) => ids.iter().any(|i| *i == d.webhook_id || *i == d.finding_id),
            })
            .map(|d| DeliveryRecord {
                status: DeliveryStatus::Pending,
                round_attempts: 0,
                next_attempt_at_ms: Some(now),
                ..d.clone()
            })
            .collect();
        let enable: BTreeSet<String> = picked
            .iter()
            .map(|d| d.destination.clone())
            .filter(|n| st.disabled(n))
            .collect();
        // A replayed revision must not take the receiver back to an older state. Per (finding,
        // destination): the latest revision delivered, and the latest that is (or is about to be) waiting.
        let key = |d: &DeliveryRecord| (d.finding_id.clone(), d.destination.clone());
        let mut delivered: HashMap<(String, String), (u32, Activity)> = HashMap::new();
        let mut waiting: HashMap<(String, String), u32> = HashMap::new();
        for d in st.deliveries.values().chain(&picked) {
            if d.playbook.is_some() {
                continue;
            }
            if d.status == DeliveryStatus::Delivered {
                let at = delivered.entry(key(d)).or_insert((0, d.activity));
                if d.revision >= at.0 {
                    *at = (d.revision, d.activity);
                }
            } else if d.status.is_active() {
                let at = waiting.entry(key(d)).or_default();
                *at = (*at).max(d.revision);
            }
        }
        let mut refresh: BTreeSet<String> = BTreeSet::new();
        let mut kept = Vec::new();
        let mut replaced = Vec::new();
        for d in picked {
            if d.playbook.is_some() || d.activity == Activity::Close {
                kept.push(d);
                continue;
            }
            let k = key(&d);
            let sent = delivered.get(&k).copied();
            let newer_waiting = waiting.get(&k).copied().unwrap_or(0);
            let newest = sent.map_or(0, |(r, _)| r).max(newer_waiting);
            match d.activity {
                // An Update older than one delivered or waiting: the newer carries everything.
                Activity::Update if newest > d.revision => replaced.push(superseded(&d, newest)),
                // The receiver heard the finding close: a Create now would open it again.
                Activity::Create if sent.is_some_and(|(_, a)| a == Activity::Close) => {
                    replaced.push(superseded(&d, newest))
                }
                // The receiver has a later state than this Create: a fresh Update of the finding follows
                // it, unless a revision newer than the one delivered is already on its way.
                Activity::Create
                    if sent.is_some_and(|(r, _)| r > d.revision && newer_waiting <= r) =>
                {
                    refresh.insert(d.fingerprint.clone());
                    kept.push(d);
                }
                _ => kept.push(d),
            }
        }
        let picked = kept;
        let refreshed: Vec<GroupState> = refresh
            .iter()
            .filter_map(|fp| st.groups.get(fp))
            .map(|g| {
                let mut g = g.clone();
                // Grouping sees the finding as changed since its last notification and queues an Update.
                g.notified_count = 0;
                g
            })
            .collect();
        let prune = self.prunable(&st, replaced.len(), 0);
        let enabled = DestinationState {
            disabled: false,
            reason: None,
            since_ms: Some(now),
        };
        self.outbox.write(|b| {
            for d in &picked {
                b.put_delivery(d)?;
            }
            for d in &replaced {
                b.put_delivery(d)?;
                b.remove_body(d.seq)?;
            }
            for g in &refreshed {
                b.put_group(g)?;
            }
            for n in &enable {
                b.put_destination(n, &enabled)?;
            }
            prune.write(b)
        })?;
        for n in enable {
            st.destinations.insert(n, enabled.clone());
        }
        for g in refreshed {
            st.groups.insert(g.fingerprint.clone(), g);
        }
        self.pruned(&mut st, prune);
        let n = picked.len();
        for d in &replaced {
            metrics()
                .deliveries
                .with_label_values(&[d.destination.as_str(), "superseded"])
                .inc();
        }
        for d in picked.into_iter().chain(replaced) {
            st.put(d);
        }
        self.update_pending_metrics(&st);
        drop(st);
        self.wake.notify_one();
        Ok(n)
    }

    /// Destinations disabled by a 410 answer, with the reason.
    pub fn disabled_destinations(&self) -> Vec<(String, DestinationState)> {
        let st = self.lock();
        let mut v: Vec<_> = st
            .destinations
            .iter()
            .filter(|(_, s)| s.disabled)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Sends a clearly marked test finding to `destination` right away (not through the outbox) and
    /// returns the receiver's answer (`vigil alerts test`).
    pub async fn send_test(&self, destination: &str) -> Result<Answer, RespondError> {
        let endpoint = self
            .endpoints
            .get(destination)
            .ok_or_else(|| RespondError::UnknownDestination(destination.to_string()))?;
        let now_us = now_ms() * 1000;
        let finding = Finding::test(now_us);
        let body = if let Some(p) = self
            .config
            .playbooks
            .iter()
            .find(|p| playbook_destination(&p.name) == destination)
        {
            action_body(p, &finding, now_us)
        } else {
            let ctx = RenderContext {
                destination,
                now_us,
                product_version: env!("CARGO_PKG_VERSION"),
            };
            formats::render(endpoint.format, &finding, &ctx)
        };
        let (answer, _) = delivery::send(&self.client, &endpoint.target, &webhook_id(), body)
            .await
            .map_err(|e| RespondError::Request {
                name: destination.to_string(),
                error: delivery::error_chain(&e),
            })?;
        Ok(answer)
    }

    /// Responses taken by playbooks, oldest first, with the state of each action webhook.
    pub fn responses(&self) -> Vec<ResponseView> {
        let st = self.lock();
        st.responses
            .values()
            .map(|r| {
                let d = st.deliveries.get(&r.delivery_seq);
                ResponseView {
                    record: r.clone(),
                    // A pruned delivery record: accepted actions have their time recorded here; one
                    // without it was pruned as a dead letter, and must not read as taken.
                    status: d
                        .map(|d| d.status)
                        .unwrap_or(if r.responded_at_ms.is_some() {
                            DeliveryStatus::Delivered
                        } else {
                            DeliveryStatus::DeadLetter
                        }),
                    completed_at_ms: r
                        .responded_at_ms
                        .or_else(|| d.and_then(|d| d.delivered_at_ms)),
                    last_status_code: d.and_then(|d| d.last_status_code),
                    last_error: d.and_then(|d| d.last_error.clone()),
                }
            })
            .collect()
    }

    /// Open findings (fingerprints with detections not yet closed).
    pub fn open_findings(&self) -> usize {
        self.lock().groups.len()
    }

    /// `alert_deliveries` as Arrow, for the SQL crate.
    pub fn deliveries_batch(&self) -> arrow::array::RecordBatch {
        crate::table::deliveries_to_batch(&self.deliveries())
    }

    /// The responses taken, one row per alert ([`vigil_detect::alert_response_schema`]), for the SQL
    /// crate to show as columns of `alerts`.
    pub fn alert_responses_batch(&self) -> arrow::array::RecordBatch {
        crate::table::alert_responses_to_batch(&self.responses())
    }
}

/// Holds a delivery back for [`OUTBOX_FAILURE_PAUSE_MS`] after the outbox failed it.
fn pause(st: &mut State, seq: u64) {
    if let Some(d) = st.deliveries.get_mut(&seq) {
        d.next_attempt_at_ms = Some(now_ms() + OUTBOX_FAILURE_PAUSE_MS);
    }
}

/// The Updates that `queued` replaces: for each (finding, destination) it queues an Update for, the older
/// Updates still waiting (not in flight: an attempt under way is let finish) or held for a replay because
/// the destination was disabled. Creates, Closes and playbook actions are never replaced, so a receiver
/// still gets a finding's Create before any Update, and each revision it does get is complete.
fn superseded_by(st: &State, queued: &[(DeliveryRecord, Vec<u8>)]) -> Vec<DeliveryRecord> {
    let newer: HashMap<(&str, &str), u32> = queued
        .iter()
        .map(|(d, _)| d)
        .filter(|d| is_replaceable(d))
        .map(|d| ((d.finding_id.as_str(), d.destination.as_str()), d.revision))
        .collect();
    if newer.is_empty() {
        return Vec::new();
    }
    st.active
        .iter()
        .chain(&st.failed)
        .filter(|seq| !st.in_flight.contains(seq))
        .filter_map(|seq| st.deliveries.get(seq))
        .filter(|d| is_replaceable(d))
        .filter_map(|d| {
            let revision = newer.get(&(d.finding_id.as_str(), d.destination.as_str()))?;
            Some(superseded(d, *revision))
        })
        .collect()
}

/// An Update of a finding (not a playbook action) that is waiting to be sent, or held for a replay.
fn is_replaceable(d: &DeliveryRecord) -> bool {
    d.activity == Activity::Update
        && d.playbook.is_none()
        && (d.status.is_active() || d.status == DeliveryStatus::Disabled)
}

/// `d` marked as replaced by `revision`; the last answer it got, if any, stays in its error.
fn superseded(d: &DeliveryRecord, revision: u32) -> DeliveryRecord {
    let mut error = format!("superseded by revision {revision} before it was delivered");
    if let Some(last) = &d.last_error {
        error.push_str(&format!("; last error: {last}"));
    }
    DeliveryRecord {
        status: DeliveryStatus::Superseded,
        next_attempt_at_ms: None,
        last_error: Some(error),
        ..d.clone()
    }
}

/// The revision of an Update waiting to be sent after `d` to the same destination, which makes a retry of
/// `d` (an Update that was in flight when it was queued) pointless.
fn newer_waiting_update(st: &State, d: &DeliveryRecord) -> Option<u32> {
    if d.activity != Activity::Update || d.playbook.is_some() {
        return None;
    }
    st.active
        .range(d.seq + 1..)
        .filter_map(|seq| st.deliveries.get(seq))
        .filter(|e| {
            e.activity == Activity::Update
                && e.playbook.is_none()
                && e.finding_id == d.finding_id
                && e.destination == d.destination
        })
        .map(|e| e.revision)
        .max()
}

fn is_failed(status: DeliveryStatus) -> bool {
    matches!(
        status,
        DeliveryStatus::DeadLetter | DeliveryStatus::Disabled
    )
}

fn failed_count(queued: &[(DeliveryRecord, Vec<u8>)]) -> usize {
    queued.iter().filter(|(d, _)| is_failed(d.status)).count()
}

/// Finished records picked by [`Responder::prunable`].
struct Prune {
    delivered: Vec<u64>,
    failed: Vec<u64>,
}

impl Prune {
    fn write(&self, b: &mut Batch<'_>) -> Result<(), OutboxError> {
        for &seq in &self.delivered {
            b.remove_delivery(seq)?;
        }
        // A dead letter keeps its body for replay.
        for &seq in &self.failed {
            b.remove_delivery(seq)?;
            b.remove_body(seq)?;
        }
        Ok(())
    }
}

fn put_queued(b: &mut Batch<'_>, queued: &[(DeliveryRecord, Vec<u8>)]) -> Result<(), OutboxError> {
    for (d, body) in queued {
        b.put_delivery(d)?;
        if d.status.is_active() || d.status == DeliveryStatus::Disabled {
            b.put_body(d.seq, body)?;
        }
    }
    Ok(())
}
