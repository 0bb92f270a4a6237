//! Alertmanager-style grouping per fingerprint: when a finding is created, updated, re-sent or closed.
//!
//! Pure state and clock arithmetic (milliseconds passed in), so the rules are tested without waiting.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigil_detect::alert::{Alert, Severity};

use crate::config::GroupingConfig;
use crate::finding::{Activity, Finding, MAX_IDS};

/// Everything remembered about one open finding (persisted in the outbox so restarts keep the finding id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    pub finding_id: String,
    pub fingerprint: String,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub count: u64,
    pub severity: Severity,
    pub alert: Alert,
    pub alert_ids: Vec<String>,
    pub evidence_event_ids: Vec<String>,
    /// Wall clock of the first and latest detection (drive group_wait and resolve_after).
    pub opened_ms: i64,
    pub last_detection_ms: i64,
    /// Wall clock, count and severity of the last notification.
    pub notified_ms: Option<i64>,
    pub notified_count: u64,
    pub notified_severity: Option<Severity>,
    pub revision: u32,
    /// Destinations that got this finding's Create (so they get Updates and the Close, and others a Create).
    pub notified_destinations: BTreeSet<String>,
    /// Playbooks already run for this finding.
    pub playbooks_fired: BTreeSet<String>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn push_capped(v: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if v.len() >= MAX_IDS {
            return;
        }
        if !v.contains(&item) {
            v.push(item);
        }
    }
}

impl GroupState {
    pub fn new(alert: &Alert, now_ms: i64) -> GroupState {
        let mut g = GroupState {
            finding_id: uuid::Uuid::now_v7().to_string(),
            fingerprint: alert.fingerprint.clone(),
            first_seen_us: alert.time_us,
            last_seen_us: alert.time_us,
            count: 0,
            severity: alert.severity,
            alert: alert.clone(),
            alert_ids: vec![],
            evidence_event_ids: vec![],
            opened_ms: now_ms,
            last_detection_ms: now_ms,
            notified_ms: None,
            notified_count: 0,
            notified_severity: None,
            revision: 0,
            notified_destinations: BTreeSet::new(),
            playbooks_fired: BTreeSet::new(),
        };
        g.observe(alert, now_ms);
        g
    }

    /// Folds one more detection of this fingerprint in.
    pub fn observe(&mut self, alert: &Alert, now_ms: i64) {
        self.count += 1;
        self.first_seen_us = self.first_seen_us.min(alert.time_us);
        self.last_seen_us = self.last_seen_us.max(alert.time_us);
        self.last_detection_ms = self.last_detection_ms.max(now_ms);
        if alert.severity >= self.severity {
            self.severity = alert.severity;
            self.alert = alert.clone();
        }
        push_capped(&mut self.alert_ids, [alert.alert_id.clone()]);
        push_capped(
            &mut self.evidence_event_ids,
            alert.evidence_event_ids.iter().cloned(),
        );
    }

    /// The notification due at `now_ms`, if any. Create waits group_wait; Updates need a change (more
    /// detections or a higher severity) and group_interval since the last one, or repeat_interval without
    /// change; Close comes when no detection arrived for resolve_after.
    pub fn due(&self, cfg: &GroupingConfig, now_ms: i64) -> Option<Activity> {
        let Some(notified) = self.notified_ms else {
            return (now_ms >= self.opened_ms.saturating_add(ms(cfg.group_wait)))
                .then_some(Activity::Create);
        };
        if now_ms >= self.last_detection_ms.saturating_add(ms(cfg.resolve_after)) {
            return Some(Activity::Close);
        }
        let changed =
            self.count > self.notified_count || Some(self.severity) > self.notified_severity;
        if changed && now_ms >= notified.saturating_add(ms(cfg.group_interval)) {
            return Some(Activity::Update);
        }
        if now_ms >= notified.saturating_add(ms(cfg.repeat_interval)) {
            return Some(Activity::Update);
        }
        None
    }

    /// Records that `activity` is being notified now and returns what to send.
    pub fn notify(&mut self, activity: Activity, now_ms: i64) -> Finding {
        self.revision += 1;
        self.notified_ms = Some(now_ms);
        self.notified_count = self.count;
        self.notified_severity = Some(self.severity);
        Finding {
            finding_id: self.finding_id.clone(),
            fingerprint: self.fingerprint.clone(),
            revision: self.revision,
            activity,
            severity: self.severity,
            count: self.count,
            first_seen_us: self.first_seen_us,
            last_seen_us: self.last_seen_us,
            alert: self.alert.clone(),
            alert_ids: self.alert_ids.clone(),
            evidence_event_ids: self.evidence_event_ids.clone(),
            is_test: false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn alert(fp: &str, sev: Severity, i: u64) -> Alert {
        Alert {
            alert_id: format!("a{i}"),
            time_us: 1_700_000_000_000_000 + i as i64,
            detector: "prompt_injection".into(),
            severity: sev,
            entity_type: "user".into(),
            entity_id: "u1".into(),
            score: 3.0,
            title: "Prompt injection".into(),
            description: "ignore previous instructions".into(),
            evidence_event_ids: vec![format!("e{i}")],
            evidence: "ignore previous ***".into(),
            owasp: Some("LLM01:2025 Prompt Injection".into()),
            atlas: Some("AML.T0051".into()),
            fingerprint: fp.into(),
        }
    }

    fn cfg() -> GroupingConfig {
        GroupingConfig {
            group_wait: Duration::from_millis(30),
            group_interval: Duration::from_millis(300),
            repeat_interval: Duration::from_millis(4000),
            resolve_after: Duration::from_millis(900),
        }
    }

    #[test]
    fn create_waits_then_updates_only_on_change_and_interval() {
        let c = cfg();
        let mut g = GroupState::new(&alert("f", Severity::Medium, 0), 0);
        assert_eq!(g.due(&c, 29), None);
        assert_eq!(g.due(&c, 30), Some(Activity::Create));
        let f = g.notify(Activity::Create, 30);
        assert_eq!((f.revision, f.count), (1, 1));
        assert_eq!(g.due(&c, 400), None, "nothing changed");
        g.observe(&alert("f", Severity::Medium, 1), 100);
        assert_eq!(g.due(&c, 329), None, "group_interval not over");
        assert_eq!(g.due(&c, 330), Some(Activity::Update));
        let f = g.notify(Activity::Update, 330);
        assert_eq!((f.revision, f.count), (2, 2));
        g.observe(&alert("f", Severity::Critical, 2), 400);
        assert_eq!(g.severity, Severity::Critical);
        assert_eq!(g.due(&c, 630), Some(Activity::Update));
    }

    #[test]
    fn closes_after_quiet_period_and_repeats_when_unchanged() {
        let c = GroupingConfig {
            resolve_after: Duration::from_millis(10_000),
            ..cfg()
        };
        let mut g = GroupState::new(&alert("f", Severity::High, 0), 0);
        g.notify(Activity::Create, 30);
        g.observe(&alert("f", Severity::High, 1), 3000);
        g.notify(Activity::Update, 3000);
        assert_eq!(g.due(&c, 6999), None);
        assert_eq!(g.due(&c, 7000), Some(Activity::Update), "repeat_interval");
        assert_eq!(g.due(&c, 13_000), Some(Activity::Close));
    }

    #[test]
    fn burst_folds_into_capped_ids_and_exact_count() {
        let mut g = GroupState::new(&alert("f", Severity::Low, 0), 0);
        for i in 1..10_000 {
            g.observe(&alert("f", Severity::Low, i), 1);
        }
        assert_eq!(g.count, 10_000);
        assert_eq!(g.alert_ids.len(), MAX_IDS);
        assert_eq!(g.evidence_event_ids.len(), MAX_IDS);
        assert_eq!(
            g.alert.alert_id, "a9999",
            "latest detection represents the finding"
        );
    }
}
