//! The stateful half, one row at a time under the state lock: inventory (shadow AI), baselines and
//! bursts, tool overreach (and calls waiting for their agent), drift samples, and what a closed window
//! raises.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::Array;
use foldhash::HashMap;

use super::columns::{actor, flag, get, tokens, vigil_attribute, Cols};
use super::{Runtime, State, DRIFT_CAP, TRAINING_CAP};
use crate::alert::Alert;
use crate::awaiting::Call;
use crate::baseline::{self, ClosedWindow, Entity, EntityBaseline};
use crate::behavior::{BehaviorModel, DIMS};
use crate::drift::DriftTrack;
use crate::findings::AlertDraft;
use crate::inventory::{Access, CompiledInventory, Tracked};
use crate::metrics::metrics;

/// One alert for the unregistered assets a window held back: one finding (a fixed fingerprint) that grows
/// with each window, instead of one per made-up model name.
pub(super) fn shadow_summary(start_us: i64, window_us: i64, held: u64, budget: usize) -> Alert {
    let start = chrono::DateTime::from_timestamp_micros(start_us)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| start_us.to_string());
    AlertDraft {
        detector: "shadow_ai",
        time_us: start_us + window_us,
        entity_type: "inventory",
        entity_id: "unregistered",
        label: "held_back",
        score: held as f64,
        title: format!("{held} more unregistered AI assets first seen"),
        description: format!(
            "In the window from {start}, shadow_ai raised its {budget} alerts of their own and held {held} \
             more back (`shadow_alerts_per_window`). The inventory table lists them: SELECT * FROM \
             inventory WHERE NOT registered ORDER BY first_seen DESC."
        ),
        evidence_event_ids: Vec::new(),
        evidence: format!("held_back={held}"),
        severity: None,
        atlas: None,
    }
    .build()
}

pub(super) fn drift_alert(
    now_us: i64,
    etype: &str,
    id: &str,
    m: &crate::drift::DriftMeasure,
) -> Alert {
    let label = format!("drift:{}", m.feature);
    AlertDraft {
        detector: "model_drift",
        time_us: now_us,
        entity_type: etype,
        entity_id: id,
        label: &label,
        score: m.value,
        title: format!("{} distribution drifted on {etype} {id}", m.feature),
        description: format!(
            "{} of {} between the reference and the current window is {:.3} (threshold {:.3}).",
            m.metric, m.feature, m.value, m.threshold
        ),
        evidence_event_ids: Vec::new(),
        evidence: format!("{}={:.3}", m.metric, m.value),
        severity: None,
        atlas: None,
    }
    .build()
}

/// Trace and span ids longer than this (OTLP's are 32 and 16 hex digits) are not kept waiting.
pub(super) const MAX_ID_LEN: usize = 64;

/// `tool_overreach` for one call of agent `a`: a tool or a data source outside its allowlist.
pub(super) fn overreach(
    inv: &CompiledInventory,
    a: &str,
    tool: Option<&str>,
    data_source: Option<&str>,
    event_id: &str,
    time_us: i64,
    alerts: &mut Vec<Alert>,
) {
    let mut alert = |label: String, title: String, description: String| {
        alerts.push(
            AlertDraft {
                detector: "tool_overreach",
                time_us,
                entity_type: "agent",
                entity_id: a,
                label: &label,
                score: 1.0,
                title,
                description,
                evidence_event_ids: vec![event_id.to_owned()],
                evidence: String::new(),
                severity: None,
                atlas: None,
            }
            .build(),
        )
    };
    if let Some(tl) = tool {
        if inv.agent_may_use_tool(a, tl) == Some(false) {
            alert(
                format!("tool:{tl}"),
                format!("Agent {a} called {tl}, outside its allowlist"),
                format!("Tool {tl} is not in the allowlist of agent {a}."),
            );
        }
    }
    if let Some(d) = data_source {
        if inv.agent_may_use_data_source(a, d) == Some(false) {
            alert(
                format!("data_source:{d}"),
                format!("Agent {a} read {d}, outside its allowlist"),
                format!("Data source {d} is not in the allowlist of agent {a}."),
            );
        }
    }
}

/// Builds one alert for the stateful detectors, where the evidence is the row itself.
#[allow(clippy::too_many_arguments)]
pub(super) fn row_alert(
    c: &Cols,
    i: usize,
    detector: &'static str,
    etype: &str,
    eid: &str,
    label: &str,
    score: f64,
    title: String,
    description: String,
) -> Alert {
    AlertDraft {
        detector,
        time_us: c.time.value(i),
        entity_type: etype,
        entity_id: eid,
        label,
        score,
        title,
        description,
        evidence_event_ids: vec![c.event_id.value(i).to_string()],
        evidence: String::new(),
        severity: None,
        atlas: None,
    }
    .build()
}

/// Once `map` holds nine tenths of `max` entities, drops entities down to eight tenths, in the order of
/// `rank` (smallest first: idle before open, not warm before warm, least recently seen first), so that
/// inserts, which stop at `max`, find room again after a flood of one-off ids.
pub(super) fn evict<V>(
    map: &mut HashMap<String, V>,
    max: usize,
    rank: impl Fn(&V) -> (bool, bool, i64),
) -> usize {
    if map.len() < max.saturating_mul(9) / 10 || map.is_empty() {
        return 0;
    }
    let target = max.saturating_mul(8) / 10;
    let mut ranked: Vec<((bool, bool, i64), String)> =
        map.iter().map(|(id, v)| (rank(v), id.clone())).collect();
    ranked.sort_unstable();
    let n = map.len().saturating_sub(target);
    for (_, id) in ranked.into_iter().take(n) {
        map.remove(&id);
    }
    n
}

pub(super) fn count_evicted(entity: &str, n: usize) {
    if n > 0 {
        metrics()
            .evicted
            .with_label_values(&[entity])
            .inc_by(n as u64);
        tracing::warn!(
            entity,
            dropped = n,
            "detection state over max_entities: the least recently seen entities' baselines are dropped"
        );
    }
}

pub(super) fn stateful_row(
    rt: &Runtime,
    models: &[Option<Arc<BehaviorModel>>; 2],
    st: &mut State,
    c: &Cols,
    i: usize,
    latest_us: i64,
    alerts: &mut Vec<Alert>,
) {
    let t = c.time.value(i).min(latest_us);
    let inv = &rt.inv;
    let th = &rt.cfg.thresholds;
    let (user, agent, model, endpoint) = (
        get(c.user, i),
        get(c.agent, i),
        get(c.model, i),
        get(c.endpoint, i),
    );
    let (tool, ds) = (get(c.tool, i), get(c.data_source, i));
    let (inference, is_tool, policy, deny) = (
        flag(&c.is_inference, i),
        flag(&c.is_tool, i),
        flag(&c.is_policy, i),
        flag(&c.is_deny, i),
    );
    let content = flag(&c.is_content, i);

    // Inventory and shadow AI (once per entity).
    let shadow_on = rt.on("shadow_ai");
    for (tr, v) in [
        (Tracked::Provider, get(c.provider, i)),
        (Tracked::Model, model),
        (Tracked::Endpoint, endpoint),
        (Tracked::Agent, agent),
    ] {
        let Some(id) = v else { continue };
        let Some(seen) = st.seen.observe_within(tr, id, t, th.max_entities) else {
            metrics().untracked.with_label_values(&[tr.as_str()]).inc();
            continue;
        };
        if shadow_on && !seen.shadow_alerted && inv.has_registry(tr) && !inv.is_registered(tr, id) {
            seen.shadow_alerted = true;
            let window = t.div_euclid(baseline::window_us(th));
            if !st.shadow_budget.admit(window, th.shadow_alerts_per_window) {
                metrics().suppressed.with_label_values(&["shadow_ai"]).inc();
                continue;
            }
            let (et, who) = actor(c, i);
            alerts.push(row_alert(
                c,
                i,
                "shadow_ai",
                tr.as_str(),
                id,
                "unregistered",
                1.0,
                format!("Unregistered AI {} {id}", tr.as_str()),
                format!(
                    "{et} {who} used {} {id}, which is not in the AI inventory.",
                    tr.as_str()
                ),
            ));
        }
    }
    for (tr, v) in [
        (Tracked::User, user),
        (Tracked::Tool, tool),
        (Tracked::DataSource, ds),
    ] {
        if let Some(id) = v {
            if st.seen.observe_within(tr, id, t, th.max_entities).is_none() {
                metrics().untracked.with_label_values(&[tr.as_str()]).inc();
            }
        }
    }

    // Agent allowlists.
    let (tool, event_id, time_us) = (
        tool.filter(|_| is_tool),
        c.event_id.value(i),
        c.time.value(i),
    );
    if let Some(a) = agent.filter(|_| rt.on("tool_overreach")) {
        overreach(inv, a, tool, ds, event_id, time_us, alerts);
    }
    // Calls exported before their agent's span, and the agent spans that claim them.
    let waits = agent.is_none() && (tool.is_some() || ds.is_some());
    if (waits || agent.is_some() && flag(&c.is_agent, i)) && rt.on("tool_overreach") {
        let trace = get(c.trace, i).filter(|id| id.len() <= MAX_ID_LEN);
        match (trace, agent) {
            (Some(trace), None) => {
                if let Some(ancestor) =
                    vigil_attribute(c, i, vigil_ingest::schema::ANCESTOR_SPAN_ID)
                        .filter(|id| id.len() <= MAX_ID_LEN)
                {
                    let call = Call {
                        event_id: event_id.to_owned(),
                        time_us,
                        tool: tool.map(str::to_owned),
                        data_source: ds.map(str::to_owned),
                    };
                    if let Some(a) = st.awaiting.hold(trace, &ancestor, call, t) {
                        overreach(inv, &a, tool, ds, event_id, time_us, alerts);
                    }
                }
            }
            (Some(trace), Some(a)) => {
                if let Some(span) = get(c.span, i).filter(|id| id.len() <= MAX_ID_LEN) {
                    for call in st.awaiting.claim(trace, span, a, t) {
                        let (tool, ds) = (call.tool.as_deref(), call.data_source.as_deref());
                        overreach(inv, a, tool, ds, &call.event_id, call.time_us, alerts);
                    }
                }
            }
            (None, _) => {}
        }
    }

    // Role policies. Only registered models are judged here: unregistered ones are shadow_ai's.
    if let (Some(u), true) = (user, rt.on("privilege")) {
        if let Some(role) = inv.role_of(u, get(c.role, i)) {
            if let Some(m) = model.filter(|m| inference && inv.is_registered(Tracked::Model, m)) {
                if matches!(inv.role_may_use_model(role, m), Access::Denied) {
                    let label = format!("model:{m}");
                    alerts.push(row_alert(
                        c,
                        i,
                        "privilege",
                        "user",
                        u,
                        &label,
                        1.0,
                        format!("User {u} used {m}, not allowed for role {role}"),
                        format!("Role {role} may not use model {m}."),
                    ));
                }
            }
            if let Some(d) = ds {
                if let (Access::Denied, Some(class)) = inv.role_may_read(role, d) {
                    let label = format!("data:{class}");
                    alerts.push(row_alert(
                        c,
                        i,
                        "privilege",
                        "user",
                        u,
                        &label,
                        1.0,
                        format!("User {u} reached {class} data ({d})"),
                        format!("Role {role} may not use {class} data; {d} is {class}."),
                    ));
                }
            }
        }
    }

    // Baselines, spikes, bursts.
    for (e, v) in [
        (Entity::User, user),
        (Entity::Agent, agent),
        (Entity::Model, model),
        (Entity::Endpoint, endpoint),
    ] {
        let Some(id) = v else { continue };
        let map = &mut st.baselines[e as usize];
        if !map.contains_key(id) {
            if map.len() >= th.max_entities {
                crate::metrics::metrics()
                    .untracked
                    .with_label_values(&[e.as_str()])
                    .inc();
                continue;
            }
            map.insert(id.to_string(), EntityBaseline::default());
        }
        let b = map.get_mut(id).expect("inserted above");
        b.last_seen_us = b.last_seen_us.max(t);
        let closed = b.advance(t, th);
        if b.acc.first_event_id.is_none() {
            b.acc.first_event_id = Some(c.event_id.value(i).to_string());
        }
        let acc = &mut b.acc;
        if !policy && !content {
            acc.requests += 1;
            acc.input_tokens += tokens(c.input_tokens, i);
            acc.output_tokens += tokens(c.output_tokens, i);
            // A negative latency (a clock-skewed span, a bad attribute) would make the behaviour
            // vector's log NaN and poison the shared model's training set.
            if c.latency.is_valid(i) && c.latency.value(i).is_finite() && c.latency.value(i) >= 0.0
            {
                acc.latency_sum += c.latency.value(i);
                acc.latency_n += 1;
            }
            if flag(&c.is_error, i) {
                acc.errors += 1;
            }
        }
        if deny {
            acc.denies += 1;
        }
        if let Some(tl) = tool {
            baseline::add_distinct(&mut acc.tools, tl);
        }
        if let Some(d) = ds {
            baseline::add_distinct(&mut acc.data_sources, d);
        }
        let requests = acc.requests as f64;
        let tokens = acc.input_tokens + acc.output_tokens;
        // Once per episode (a spike that runs on into the next window is the same spike), and again in a
        // later window that grows past spike_min_ratio times the level the episode reached; at most once a
        // window.
        let growth = th.spike_min_ratio.max(1.0);
        // (feature, count, detector, label, what spiked, its unit, decimals of the median)
        let spikes = [
            (
                baseline::RATE_FEATURE,
                requests,
                "rate_spike",
                "request_rate",
                "Request rate",
                "requests",
                1,
            ),
            (
                baseline::TOKEN_FEATURE,
                tokens,
                "token_spike",
                "total_tokens",
                "Token consumption",
                "tokens",
                0,
            ),
        ];
        for (feature, value, detector, label, what, unit, decimals) in spikes {
            if !rt.on(detector) {
                continue;
            }
            let Some(grew) = b.spike_mut(feature).observe(value, growth) else {
                continue;
            };
            let z = b.z(feature, value);
            let median = b.features[feature].median;
            let grew = if grew {
                " The spike under way grew again."
            } else {
                ""
            };
            let title = format!("{what} spike on {} {id}", e.as_str());
            let description = format!("{value} {unit} in the current window against a baseline median of {median:.decimals$} (robust z {z:.1}).{grew}");
            alerts.push(row_alert(
                c,
                i,
                detector,
                e.as_str(),
                id,
                label,
                z,
                title,
                description,
            ));
        }
        if deny && matches!(e, Entity::User | Entity::Agent) && rt.on("policy_deny_burst") {
            let win = th.deny_burst_window.as_micros() as i64;
            b.denies.push_back(t);
            while b.denies.front().is_some_and(|&d| d <= t - win) {
                b.denies.pop_front();
            }
            while b.denies.len() > th.deny_burst_count.max(1) * 4 {
                b.denies.pop_front();
            }
            if b.denies.len() >= th.deny_burst_count.max(1) {
                if !b.burst_firing {
                    b.burst_firing = true;
                    let n = b.denies.len();
                    alerts.push(row_alert(
                        c,
                        i,
                        "policy_deny_burst",
                        e.as_str(),
                        id,
                        "deny_burst",
                        n as f64,
                        format!("Burst of policy denials for {} {id}", e.as_str()),
                        format!(
                            "{n} denials within {}.",
                            humantime::format_duration(th.deny_burst_window)
                        ),
                    ));
                }
            } else {
                b.burst_firing = false;
            }
        }
        if let Some(cw) = closed {
            on_window_closed(
                rt,
                models,
                &mut st.training,
                &mut st.new_since_fit,
                e,
                id,
                cw,
                &mut b.anomaly,
                alerts,
            );
        }
    }

    // Drift samples and silent model swaps (from the call itself, not its message events).
    if inference && !content {
        let cat = st.categories.id(get(c.finish, i)
            .and_then(|f| f.split(',').next())
            .unwrap_or("none"));
        // Failed calls have no answer to measure: their sizes and latencies would make one user's outage
        // look like the model drifting (error rates are the baselines' business).
        let ok = !flag(&c.is_error, i);
        // Negative sizes and latencies are bad telemetry, not behaviour: missing, like a failed call's.
        let out = if ok && c.output_tokens.is_valid(i) && c.output_tokens.value(i) >= 0 {
            c.output_tokens.value(i) as f64
        } else {
            f64::NAN
        };
        let lat = if ok && c.latency.is_valid(i) && c.latency.value(i) >= 0.0 {
            c.latency.value(i)
        } else {
            f64::NAN
        };
        for (k, v) in [(0usize, model), (1, endpoint)] {
            let Some(id) = v else { continue };
            let map = &mut st.drift[k];
            if !map.contains_key(id) {
                if map.len() >= th.max_entities {
                    continue;
                }
                map.insert(id.to_string(), DriftTrack::default());
            }
            let track = map.get_mut(id).expect("inserted above");
            // Samples are pruned by time only when drift is evaluated: with the detector off they would
            // pile up to DRIFT_CAP for every model and endpoint.
            if rt.on("model_drift") {
                track.push(t, cat, out, lat, DRIFT_CAP);
            }
            if k == 0 {
                if let Some(rm) = get(c.response_model, i) {
                    if track.observe_response_model(rm, th.swap_min_events) && rt.on("model_drift")
                    {
                        let label = format!("response_model:{rm}");
                        let before = track.response_models.first().cloned().unwrap_or_default();
                        alerts.push(row_alert(c, i, "model_drift", "model", id, &label, 1.0,
                            format!("Model {id} now answers as {rm}"),
                            format!("Requests for {id} were answered by {before}; now {rm} answers (a silent model version swap).")));
                        if let Some(a) = alerts.last_mut() {
                            a.owasp = Some("LLM03:2025 Supply Chain".into());
                        }
                    }
                }
            }
        }
    }
}

/// Scores a closed user/agent window with the behaviour model, or keeps it for training. Unusual windows
/// in a row are one episode (`anomaly`) and alert once, and again only when a window lies twice as far
/// out as the episode's farthest: an entity whose normal is unlike everyone else's would otherwise page
/// every window.
#[allow(clippy::too_many_arguments)]
pub(super) fn on_window_closed(
    rt: &Runtime,
    models: &[Option<Arc<BehaviorModel>>; 2],
    training: &mut [VecDeque<[f64; DIMS]>; 2],
    new_since_fit: &mut [usize; 2],
    e: Entity,
    id: &str,
    cw: ClosedWindow,
    anomaly: &mut Option<(i64, f64)>,
    alerts: &mut Vec<Alert>,
) {
    let k = match e {
        Entity::User => 0,
        Entity::Agent => 1,
        _ => return,
    };
    if cw.spiked || cw.summary.requests < rt.cfg.thresholds.behavior_min_requests as f64 {
        return;
    }
    let v = cw.summary.vector();
    if let Some(m) = &models[k] {
        let d = m.distance(&v);
        if d > m.threshold && cw.warm && rt.on("behavior_anomaly") {
            let s = &cw.summary;
            let end = cw.start_us + baseline::window_us(&rt.cfg.thresholds);
            let peak = match *anomaly {
                Some((prev_end, peak)) if prev_end == cw.start_us => peak,
                _ => 0.0,
            };
            *anomaly = Some((end, peak.max(d)));
            if peak > 0.0 && d < 2.0 * peak {
                return;
            }
            alerts.push(
                AlertDraft {
                    detector: "behavior_anomaly",
                    time_us: end,
                    entity_type: e.as_str(),
                    entity_id: id,
                    label: "window",
                    score: d / m.threshold,
                    title: format!("Unusual behaviour of {} {id}", e.as_str()),
                    description: format!(
                        "Window distance {d:.2} to the nearest behaviour cluster exceeds {:.2}: {} requests, {:.0} errors, \
                         {:.0} denials, mean latency {:.0} ms, {:.0} output tokens, {} tools.",
                        m.threshold, s.requests, s.errors, s.denies, s.latency_mean, s.output_tokens, s.distinct_tools
                    ),
                    evidence_event_ids: cw.first_event_id.clone().into_iter().collect(),
                    evidence: String::new(),
                    severity: None,
                    atlas: None,
                }
                .build(),
            );
            return;
        }
    }
    // Only entities past their warm-up teach the model what normal is: identities minted for the purpose
    // would otherwise train it to accept their behaviour before any of their windows is scored.
    if !cw.warm {
        return;
    }
    training[k].push_back(v);
    while training[k].len() > TRAINING_CAP {
        training[k].pop_front();
    }
    new_since_fit[k] += 1;
}
