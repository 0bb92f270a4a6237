//! The detection stage: one pass over each Arrow batch. Content scanning (the expensive, stateless part)
//! runs outside any lock; the stateful part (inventory, baselines, bursts, drift samples) takes one mutex
//! per batch, not per row. Time-window work (idle windows, drift, model refits) happens in `tick`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, RecordBatch, StringArray};
use foldhash::HashMap;
use hdrhistogram::Histogram;
use parking_lot::{Mutex, RwLock};
use vigil_ingest::schema::col;

use crate::alert::Alert;
use crate::awaiting::Awaiting;
use crate::baseline::{self, Entity, EntityBaseline};
use crate::behavior::{BehaviorModel, DIMS};
use crate::clock::EventClock;
use crate::config::{ContentCapture, DetectConfig};
use crate::drift::{Categories, DriftLimits, DriftTrack};
use crate::inventory::{CompiledInventory, SeenTracker, Tracked};
use crate::metrics::metrics;
use crate::Detection;

mod columns;
mod history;
mod stateful;
#[cfg(test)]
mod tests;
mod text;

use columns::*;
use stateful::*;
use text::*;

/// Training windows kept per behaviour model.
const TRAINING_CAP: usize = 20_000;
/// Drift samples kept per model/endpoint.
const DRIFT_CAP: usize = 100_000;

struct Runtime {
    cfg: DetectConfig,
    inv: CompiledInventory,
}

impl Runtime {
    fn new(cfg: DetectConfig) -> Self {
        let inv = CompiledInventory::new(cfg.inventory.clone(), cfg.role_source);
        Self { cfg, inv }
    }
    fn on(&self, detector: &str) -> bool {
        self.cfg.is_enabled(detector)
    }
}

#[derive(Default)]
struct State {
    baselines: [HashMap<String, EntityBaseline>; 4],
    seen: SeenTracker,
    /// Model, endpoint.
    drift: [HashMap<String, DriftTrack>; 2],
    categories: Categories,
    /// Closed windows of users and agents, for the behaviour models.
    training: [VecDeque<[f64; DIMS]>; 2],
    new_since_fit: [usize; 2],
    clock: EventClock,
    shadow_budget: AlertBudget,
    /// Tool calls whose agent span has not arrived yet (not part of the saved state: a restart forgets them).
    awaiting: Awaiting,
}

/// A detector's alerts of their own per event-time window; past the budget they are counted, and the
/// tick raises one summary alert for each window that held some back.
#[derive(Default)]
struct AlertBudget {
    window: i64,
    raised: usize,
    held: u64,
    /// Windows that ended with alerts held back, not yet summarised: (window index, how many).
    unreported: Vec<(i64, u64)>,
}

impl AlertBudget {
    /// Whether one more alert may be raised in `window` (an index of `window_us` periods).
    fn admit(&mut self, window: i64, max: usize) -> bool {
        if window > self.window {
            if self.held > 0 {
                self.unreported.push((self.window, self.held));
            }
            (self.window, self.raised, self.held) = (window, 0, 0);
        }
        if self.raised < max {
            self.raised += 1;
            true
        } else {
            self.held += 1;
            false
        }
    }

    /// The windows before `now_window` that held alerts back, once each.
    fn take_ended(&mut self, now_window: i64) -> Vec<(i64, u64)> {
        if now_window > self.window && self.held > 0 {
            self.unreported.push((self.window, self.held));
            self.held = 0;
        }
        std::mem::take(&mut self.unreported)
    }
}

/// What a batch recorded in the conversations' memory, to take back if the batch is refused
/// ([`DetectionStage::forget_scans`]).
#[derive(Debug, Default)]
pub struct ConversationScans(Vec<history::Undo>);

/// See the crate docs and `lib.rs` for the contract.
pub struct DetectionStage {
    runtime: RwLock<Arc<Runtime>>,
    state: Mutex<State>,
    /// Conversations' last scanned prompts; a lock of its own, taken briefly per prompt while content
    /// scanning runs outside the state lock.
    history: Mutex<history::History>,
    /// User, agent.
    behavior: RwLock<[Option<Arc<BehaviorModel>>; 2]>,
    latency_us: Mutex<Histogram<u64>>,
}

impl DetectionStage {
    pub fn new(config: DetectConfig) -> Arc<Self> {
        metrics();
        Arc::new(Self {
            runtime: RwLock::new(Arc::new(Runtime::new(config))),
            state: Mutex::new(State::default()),
            history: Mutex::new(history::History::default()),
            behavior: RwLock::new([None, None]),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
        })
    }

    pub fn process(&self, batch: &RecordBatch) -> Detection {
        let mut scans = ConversationScans::default();
        let mut detection = self.process_recording(batch, &mut scans);
        detection.scans = scans;
        detection
    }

    /// [`DetectionStage::process`], recording in `scans` what the batch records of its conversations as
    /// it goes (the returned `scans` is empty): if a detector panics part-way, the caller still holds
    /// what was recorded, for [`DetectionStage::forget_scans`].
    pub fn process_recording(
        &self,
        batch: &RecordBatch,
        scans: &mut ConversationScans,
    ) -> Detection {
        let started = Instant::now();
        let rt = self.runtime.read().clone();
        let cols = match Cols::new(batch) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "batch does not have the event schema; stored without detection");
                return Detection {
                    events: batch.clone(),
                    alerts: Vec::new(),
                    scans: ConversationScans::default(),
                };
            }
        };
        let mut alerts = Vec::new();
        let (prompt, response, moved) =
            text::scan(&rt, &cols, &self.history, &mut alerts, &mut scans.0);
        let attributes = match (rt.cfg.content_capture, cols.attributes) {
            (ContentCapture::Full, _) | (_, None) => None,
            (_, Some(a)) => mask_attributes(a, moved),
        };
        let models = self.behavior.read().clone();
        {
            let wall_us = chrono::Utc::now().timestamp_micros();
            // Event times ahead of this are a skewed or hostile client's: counted as happening now (plus
            // the skew the watermark allows), so one span dated 2500 cannot open an entity's window in 2500.
            let latest_us = wall_us.saturating_add(crate::clock::MAX_FUTURE_SKEW_US);
            let mut st = self.state.lock();
            for i in 0..batch.num_rows() {
                stateful_row(&rt, &models, &mut st, &cols, i, latest_us, &mut alerts);
            }
            if let Some(max) = arrow::compute::max(cols.time) {
                st.clock.observe(max, wall_us);
            }
        }
        let events = replace_text(batch, prompt, response, attributes);
        self.finish(batch.num_rows(), started, &alerts);
        Detection {
            events,
            alerts,
            scans: ConversationScans::default(),
        }
    }

    fn finish(&self, rows: usize, started: Instant, alerts: &[Alert]) {
        let elapsed = started.elapsed();
        let m = metrics();
        m.events.inc_by(rows as u64);
        m.batch_seconds.observe(elapsed.as_secs_f64());
        for a in alerts {
            m.alerts
                .with_label_values(&[a.detector.as_str(), a.severity.as_str()])
                .inc();
        }
        let _ = self
            .latency_us
            .lock()
            .record((elapsed.as_micros() as u64).max(1));
    }

    /// Per-batch processing time quantiles (p50, p99) in µs since start: with per-event detectors
    /// alerting inside `process`, this bounds the event-to-alert latency added by detection.
    pub fn latency_quantiles(&self) -> (u64, u64) {
        let h = self.latency_us.lock();
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    }

    pub fn reload(&self, config: DetectConfig) {
        *self.runtime.write() = Arc::new(Runtime::new(config));
    }

    pub fn baselines_batch(&self) -> RecordBatch {
        baseline::to_batch(&self.state.lock().baselines)
    }

    pub fn inventory_batch(&self) -> RecordBatch {
        let rt = self.runtime.read().clone();
        self.state.lock().seen.to_batch(&rt.inv)
    }

    pub fn restore(&self, baselines: &[RecordBatch], inventory: &[RecordBatch]) {
        let rt = self.runtime.read().clone();
        let mut st = self.state.lock();
        let b: usize = baselines
            .iter()
            .map(|b| baseline::restore(&mut st.baselines, b, &rt.cfg.thresholds))
            .sum();
        let i: usize = inventory.iter().map(|b| st.seen.restore(b)).sum();
        tracing::info!(
            baseline_rows = b,
            inventory_rows = i,
            "detection state restored"
        );
    }

    /// Takes back the once-per-entity marks of `alerts` that could not be stored: the request is refused,
    /// and its retry must raise them again. Without this, a shadow AI model whose first alert met a store
    /// failure was marked as reported (and persisted so) without any alert on record.
    pub fn rearm(&self, alerts: &[Alert]) {
        let mut st = self.state.lock();
        // A lost judgement of calls that waited for their agent: the retry's agent span claims them again.
        for a in alerts.iter().filter(|a| a.detector == "tool_overreach") {
            for id in &a.evidence_event_ids {
                st.awaiting.unclaim(id);
            }
        }
        for a in alerts.iter().filter(|a| a.detector == "shadow_ai") {
            let seen =
                Tracked::parse(&a.entity_type).and_then(|t| st.seen.get_mut(t, &a.entity_id));
            if let Some(seen) = seen {
                seen.shadow_alerted = false;
            }
        }
    }

    /// Takes back what a batch recorded of its conversations: the batch was refused (its alerts lost
    /// with it), and its retry, or a next turn if no retry comes, must be judged against what was scanned
    /// before it, or the findings in it would never be alerted.
    pub fn forget_scans(&self, scans: &ConversationScans) {
        self.history.lock().restore(&scans.0);
    }

    /// After detection failed part-way through `batch` (a detector panicked): the rows before the failure
    /// may have marked unregistered assets as reported, and their alerts are lost with the panic. Every
    /// unregistered asset the batch names is re-armed, so the batch's retry (or, for Kafka, its messages
    /// one by one) reports them. An asset reported before may be reported again: one more detection of
    /// the same finding, where not re-arming could lose the only one.
    pub fn rearm_batch(&self, batch: &RecordBatch) {
        let rt = self.runtime.read().clone();
        let mut st = self.state.lock();
        for (tracked, name) in [
            (Tracked::Provider, col::PROVIDER),
            (Tracked::Model, col::MODEL),
            (Tracked::Endpoint, col::ENDPOINT),
            (Tracked::Agent, col::AGENT_ID),
        ] {
            let Some(ids) = batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            else {
                continue;
            };
            for id in ids.iter().flatten() {
                if rt.inv.is_registered(tracked, id) {
                    continue;
                }
                if let Some(seen) = st.seen.get_mut(tracked, id) {
                    seen.shadow_alerted = false;
                }
            }
        }
    }

    /// Event time at wall-clock time `wall_us` (see `clock`): what `tick` should be given by a server,
    /// so that replayed or lagging traffic is windowed by its own time.
    pub fn watermark(&self, wall_us: i64) -> i64 {
        self.state.lock().clock.watermark(wall_us)
    }

    /// Window work at event time `now_us`: closes idle windows, evaluates drift, refits behaviour models.
    pub fn tick(&self, now_us: i64) -> Vec<Alert> {
        let rt = self.runtime.read().clone();
        let th = &rt.cfg.thresholds;
        let models = self.behavior.read().clone();
        let mut alerts = Vec::new();
        let mut to_fit: Vec<(usize, Vec<[f64; DIMS]>)> = Vec::new();
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            // Idle entities: close windows that ended more than a window ago (late events had their chance).
            let w = baseline::window_us(th);
            for (window, held) in st.shadow_budget.take_ended(now_us.div_euclid(w)) {
                alerts.push(shadow_summary(
                    window * w,
                    w,
                    held,
                    th.shadow_alerts_per_window,
                ));
            }
            for e in Entity::ALL {
                let mut closed = Vec::new();
                for (id, b) in st.baselines[e as usize].iter_mut() {
                    if b.window_start.is_some_and(|s| s + 2 * w <= now_us) {
                        if let Some(cw) = b.close(th) {
                            closed.push((id.clone(), cw));
                        }
                    }
                }
                for (id, cw) in closed {
                    let Some(b) = st.baselines[e as usize].get_mut(&id) else {
                        continue;
                    };
                    on_window_closed(
                        &rt,
                        &models,
                        &mut st.training,
                        &mut st.new_since_fit,
                        e,
                        &id,
                        cw,
                        &mut b.anomaly,
                        &mut alerts,
                    );
                }
            }
            for e in Entity::ALL {
                let map = &mut st.baselines[e as usize];
                let dropped = evict(map, th.max_entities, |b| {
                    (b.window_start.is_some(), b.is_warm(th), b.last_seen_us)
                });
                count_evicted(e.as_str(), dropped);
            }
            for (k, etype) in [(0usize, "model"), (1, "endpoint")] {
                let dropped = evict(&mut st.drift[k], th.max_entities, |d| {
                    (false, false, d.last_seen_us())
                });
                count_evicted(etype, dropped);
            }
            for (tracked, dropped) in st.seen.evict(th.max_entities, &rt.inv) {
                count_evicted(tracked.as_str(), dropped);
            }
            let memory_us = i64::try_from(th.conversation_memory.as_micros()).unwrap_or(i64::MAX);
            self.history.lock().evict_idle(now_us, memory_us);
            if rt.on("model_drift") {
                let lim = DriftLimits {
                    reference_us: th.drift_reference.as_micros() as i64,
                    current_us: th.drift_current.as_micros() as i64,
                    min_reference: th.drift_min_reference,
                    min_current: th.drift_min_current,
                    psi: th.drift_psi,
                    js: th.drift_js,
                    wasserstein: th.drift_wasserstein,
                    ks_p: th.drift_ks_p,
                    max_samples: DRIFT_CAP,
                };
                let ncat = st.categories.len();
                for (k, etype) in [(0usize, "model"), (1, "endpoint")] {
                    for (id, track) in st.drift[k].iter_mut() {
                        let Some(found) = track.evaluate(now_us, ncat, &lim) else {
                            continue;
                        };
                        let mut firing_now: Vec<&'static str> = Vec::new();
                        for m in &found {
                            if firing_now.contains(&m.feature) {
                                continue;
                            }
                            firing_now.push(m.feature);
                            if track.firing.insert(m.feature, true) != Some(true) {
                                alerts.push(drift_alert(now_us, etype, id, m));
                            }
                        }
                        track.firing.retain(|f, _| firing_now.contains(f));
                    }
                }
            }
            for (k, model) in models.iter().enumerate() {
                let enough = st.training[k].len() >= th.behavior_min_train;
                let due = model.is_none() || st.new_since_fit[k] >= th.behavior_refit_every;
                if enough && due {
                    st.new_since_fit[k] = 0;
                    to_fit.push((k, st.training[k].iter().copied().collect()));
                }
            }
        }
        // The fit runs without the state lock: `process` keeps going meanwhile.
        for (k, data) in to_fit {
            match BehaviorModel::fit(
                &data,
                th.behavior_clusters,
                th.behavior_quantile,
                th.behavior_margin,
            ) {
                Ok(m) => {
                    tracing::debug!(
                        model = k,
                        windows = m.trained_on,
                        threshold = m.threshold,
                        "behaviour model refitted"
                    );
                    self.behavior.write()[k] = Some(Arc::new(m));
                }
                Err(e) => tracing::warn!(error = %e, "behaviour model not refitted"),
            }
        }
        let m = metrics();
        for a in &alerts {
            m.alerts
                .with_label_values(&[a.detector.as_str(), a.severity.as_str()])
                .inc();
        }
        alerts
    }

    /// Whether a behaviour model is fitted for users (index 0) or agents (1); for tests and status pages.
    pub fn behavior_ready(&self) -> [bool; 2] {
        let m = self.behavior.read();
        [m[0].is_some(), m[1].is_some()]
    }
}
