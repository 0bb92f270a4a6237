//! End-to-end delivery against a real HTTP receiver on 127.0.0.1.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::*;
use vigil_detect::alert::Severity;
use vigil_respond::*;

/// Outage (500s), crash, receiver gone, crash, receiver back: everything arrives, one webhook id per revision.
#[test]
fn outage_and_crashes_lose_nothing_and_never_mint_a_second_id() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.redb");
    let shared = Shared::default();
    shared.set_status("/", 500);
    let receiver = Receiver::start(&shared, 0);
    let port = receiver.addr.port();
    let config = fast_config(vec![destination(
        "soc",
        receiver.url("/hook"),
        Format::Ocsf,
    )]);

    // Phase 1: receiver answers 500.
    let responder = Responder::open(config.clone(), &outbox).unwrap();
    let run = Running::start(&responder);
    let batch1: Vec<_> = (0..20)
        .map(|i| alert(&format!("fp{i}"), "prompt_injection", Severity::High, i))
        .collect();
    responder.submit(&batch1).unwrap();
    assert!(wait_until(Duration::from_secs(5), || responder
        .deliveries()
        .iter()
        .any(
            |d| d.status == DeliveryStatus::Retrying && d.attempts >= 2
        )));
    run.crash();
    drop(responder);

    // Phase 2: receiver gone; restart on the same outbox, more detections (new findings and growth).
    receiver.stop();
    let responder = Responder::open(config.clone(), &outbox).unwrap();
    assert_eq!(responder.open_findings(), 20, "findings survive the crash");
    let run = Running::start(&responder);
    let batch2: Vec<_> = (10..30)
        .map(|i| {
            alert(
                &format!("fp{i}"),
                "prompt_injection",
                Severity::Critical,
                100 + i,
            )
        })
        .collect();
    responder.submit(&batch2).unwrap();
    assert!(wait_until(Duration::from_secs(5), || responder
        .deliveries()
        .iter()
        .any(|d| d
            .last_error
            .as_deref()
            .is_some_and(|e| !e.contains("HTTP")))));
    std::thread::sleep(Duration::from_millis(300));
    run.crash();
    drop(responder);

    // Phase 3: receiver back and healthy.
    shared.set_status("/", 200);
    let receiver = Receiver::start(&shared, port);
    let responder = Responder::open(config, &outbox).unwrap();
    let run = Running::start(&responder);
    let all_delivered = wait_until(Duration::from_secs(20), || {
        let d = responder.deliveries();
        !d.is_empty() && d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    });
    let deliveries = responder.deliveries();
    assert!(
        all_delivered,
        "{:?}",
        deliveries
            .iter()
            .filter(|d| d.status != DeliveryStatus::Delivered)
            .collect::<Vec<_>>()
    );
    run.crash();
    receiver.stop();

    assert_eq!(
        shared.bad_signatures(),
        0,
        "every request carried a valid signature"
    );
    let seen = shared.seen();
    for (rev, ids) in ids_per_revision(&seen) {
        assert_eq!(ids.len(), 1, "{rev} was sent with {ids:?}");
    }
    // Every fingerprint reached the receiver as a Create; grown findings also as an Update at critical.
    let created: BTreeSet<String> = seen
        .iter()
        .filter(|s| s.body["type"] == "finding.created")
        .map(|s| {
            s.body["data"]["metadata"]["correlation_uid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = (0..30).map(|i| format!("fp{i}")).collect();
    assert_eq!(created, expected);
    let updated_critical: BTreeSet<String> = seen
        .iter()
        .filter(|s| s.body["type"] == "finding.updated" && s.body["data"]["severity_id"] == 5)
        .map(|s| {
            s.body["data"]["metadata"]["correlation_uid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        (10..20).all(|i| updated_critical.contains(&format!("fp{i}"))),
        "{updated_critical:?}"
    );
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer s3cr3t-token")));
    // Every delivery the outbox knows is one the receiver saw under the same id.
    let seen_ids: BTreeSet<&str> = seen.iter().map(|s| s.webhook_id.as_str()).collect();
    assert!(deliveries
        .iter()
        .all(|d| seen_ids.contains(d.webhook_id.as_str())));
    // Each delivery names an alert of its own finding (what joins `alert_deliveries` to `alerts`).
    let own = |d: &DeliveryRecord| {
        d.alert_id
            .as_deref()
            .is_some_and(|a| a.starts_with(&format!("{}-a", d.fingerprint)))
    };
    assert!(
        deliveries.iter().all(own),
        "{:?}",
        deliveries.iter().find(|d| !own(d))
    );
    eprintln!(
        "outage test: {} deliveries, {} requests accepted, {} distinct webhook ids, attempts total {}",
        deliveries.len(),
        seen.len(),
        seen_ids.len(),
        deliveries.iter().map(|d| d.attempts).sum::<u32>()
    );
}

/// 410 disables, 400 dead-letters, 302 is not followed, 429 honours Retry-After; replay resends with the same id.
#[test]
fn status_classification_disable_dead_letter_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.set_status("/gone", 410);
    shared.set_status("/bad", 400);
    shared.set_status("/moved", 302);
    shared.set_status("/slow", 429);
    shared.0.lock().unwrap().retry_after = Some("30".into());
    let receiver = Receiver::start(&shared, 0);
    let config = fast_config(vec![
        destination("gone", receiver.url("/gone"), Format::Ocsf),
        destination("bad", receiver.url("/bad"), Format::Json),
        destination("moved", receiver.url("/moved"), Format::Alertmanager),
        destination("slow", receiver.url("/slow"), Format::Ocsf),
    ]);
    let responder = Responder::open(config.clone(), dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    responder
        .submit(&[
            alert("a", "shadow_ai", Severity::Medium, 0),
            alert("b", "shadow_ai", Severity::Medium, 1),
        ])
        .unwrap();
    let by_dest = |name: &str| {
        responder
            .deliveries()
            .into_iter()
            .filter(|d| d.destination == name)
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(5), || {
        by_dest("gone").len() == 2
            && by_dest("gone")
                .iter()
                .all(|d| d.status == DeliveryStatus::Disabled)
            && by_dest("bad")
                .iter()
                .all(|d| d.status == DeliveryStatus::DeadLetter)
            && by_dest("moved")
                .iter()
                .all(|d| d.status == DeliveryStatus::DeadLetter)
            && by_dest("slow")
                .iter()
                .all(|d| d.status == DeliveryStatus::Retrying)
            && by_dest("slow").len() == 2
    }));
    let gone = by_dest("gone");
    assert!(
        gone.iter().map(|d| d.attempts).sum::<u32>() <= 2,
        "410 stops the destination, not one more call per delivery"
    );
    assert_eq!(responder.disabled_destinations()[0].0, "gone");
    assert_eq!(by_dest("bad")[0].last_status_code, Some(400));
    assert_eq!(by_dest("moved")[0].last_status_code, Some(302));
    for d in by_dest("slow") {
        let wait = d.next_attempt_at_ms.unwrap() - chrono::Utc::now().timestamp_millis();
        assert!(wait > 20_000, "Retry-After: 30 honoured, got {wait} ms");
    }
    assert!(
        shared.seen().iter().all(|s| s.path != "/elsewhere"),
        "redirect not followed"
    );
    assert_eq!(responder.dead_letters().len(), 6);

    // Receivers fixed: replay everything (and the 410 destination comes back).
    for p in ["/gone", "/bad", "/moved"] {
        shared.set_status(p, 200);
    }
    let dead_ids: BTreeSet<String> = responder
        .dead_letters()
        .into_iter()
        .map(|d| d.webhook_id)
        .collect();
    assert_eq!(
        responder
            .replay(&Replay::Ids(vec![by_dest("bad")[0].webhook_id.clone()]))
            .unwrap(),
        1
    );
    assert_eq!(responder.replay(&Replay::All).unwrap(), 5);
    assert!(wait_until(Duration::from_secs(5), || responder
        .dead_letters()
        .is_empty()
        && ["gone", "bad", "moved"].iter().all(|n| by_dest(n)
            .iter()
            .all(|d| d.status == DeliveryStatus::Delivered))));
    let seen_ids: BTreeSet<String> = shared.seen().into_iter().map(|s| s.webhook_id).collect();
    assert!(
        dead_ids.is_subset(&seen_ids),
        "replays keep their webhook ids"
    );
    assert!(responder.disabled_destinations().is_empty());

    let metric = |name: &str, labels: &[(&str, &str)]| -> f64 {
        prometheus::gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    };
    assert!(
        metric(
            "vigil_webhook_deliveries_total",
            &[("destination", "gone"), ("outcome", "disabled")]
        ) >= 1.0
    );
    assert!(
        metric(
            "vigil_webhook_deliveries_total",
            &[("destination", "bad"), ("outcome", "delivered")]
        ) >= 1.0
    );
    assert!(metric("vigil_webhook_attempts_total", &[("destination", "slow")]) >= 2.0);
    assert_eq!(
        metric("vigil_webhook_outbox_pending", &[("destination", "slow")]),
        2.0
    );
    let batch = responder.deliveries_batch();
    assert_eq!(batch.num_rows(), 8);
    for col in [
        "finding_id",
        "fingerprint",
        "destination",
        "revision",
        "activity",
        "attempts",
        "status",
        "last_error",
        "last_status_code",
        "created_at",
        "delivered_at",
        "next_attempt_at",
    ] {
        assert!(batch.column_by_name(col).is_some(), "{col}");
    }
    run.crash();
    receiver.stop();
}

/// The outbox cannot be written (a full disk) while the receiver answers 200: the outcome is not recorded,
/// so the delivery stays due, and it must not be sent again in a tight loop meanwhile. Once the outbox
/// can be written again, it is delivered and recorded.
#[test]
fn a_failed_outbox_write_does_not_resend_in_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.set_status("/hook", 503);
    let (receiver, config) = soc_receiver(&shared, Format::Json);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    responder
        .submit(&[alert("full", "shadow_ai", Severity::High, 0)])
        .unwrap();
    let hits = || {
        shared
            .0
            .lock()
            .unwrap()
            .hits
            .get("/hook")
            .copied()
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(5), || hits() >= 1));
    // Queued and refused at least once; from now on the disk is full and the receiver accepts.
    responder.refuse_outbox_writes(true);
    shared.set_status("/hook", 200);
    std::thread::sleep(Duration::from_millis(300));
    let before = hits();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        hits() <= before + 1,
        "sent again and again: {} more in 1.5 s",
        hits() - before
    );
    responder.refuse_outbox_writes(false);
    assert!(wait_until(Duration::from_secs(15), || responder
        .deliveries()
        .iter()
        .all(|d| d.status == DeliveryStatus::Delivered)));
    run.crash();
    receiver.stop();
}

/// Two deliveries in flight to one receiver: the first is answered 410 Gone, the second 503 later. The
/// second waits with the others for a replay instead of calling the gone receiver again.
#[test]
fn a_retry_answered_after_the_destination_was_disabled_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.0.lock().unwrap().script.insert(
        "/going".into(),
        [(410, Duration::ZERO), (503, Duration::from_millis(300))].into(),
    );
    let receiver = Receiver::start(&shared, 0);
    let config = fast_config(vec![destination(
        "going",
        receiver.url("/going"),
        Format::Json,
    )]);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    responder
        .submit(&[
            alert("gone1", "shadow_ai", Severity::High, 0),
            alert("gone2", "shadow_ai", Severity::High, 1),
        ])
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        let d = responder.deliveries();
        d.len() == 2 && d.iter().all(|d| d.status == DeliveryStatus::Disabled)
    }));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        shared.0.lock().unwrap().hits.get("/going").copied(),
        Some(2),
        "nothing was sent after the 410"
    );
    assert!(responder
        .deliveries()
        .iter()
        .all(|d| d.status == DeliveryStatus::Disabled));
    run.crash();
    receiver.stop();
}

/// A receiver that takes seconds to answer holds at most `max_in_flight_per_destination` of the shared
/// slots: a destination queued behind it is served at once.
#[test]
fn a_slow_receiver_cannot_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared
        .0
        .lock()
        .unwrap()
        .delay
        .insert("/slowpoke".into(), Duration::from_millis(1500));
    let receiver = Receiver::start(&shared, 0);
    let mut slowpoke = destination("slowpoke", receiver.url("/slowpoke"), Format::Json);
    slowpoke.detectors = vec!["shadow_ai".into()];
    let mut quick = destination("quick", receiver.url("/quick"), Format::Json);
    quick.detectors = vec!["prompt_injection".into()];
    let mut config = fast_config(vec![slowpoke, quick]);
    config.delivery.max_in_flight = 4;
    config.delivery.max_in_flight_per_destination = 2;
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    let slow: Vec<_> = (0..6)
        .map(|i| alert(&format!("slow{i}"), "shadow_ai", Severity::High, i))
        .collect();
    responder.submit(&slow).unwrap();
    // The slow receiver's deliveries are older: without a cap they would take all four slots.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    responder
        .submit(&[alert("fast", "prompt_injection", Severity::High, 0)])
        .unwrap();
    // The slow answers come 1.5 s after their requests (within the 2 s timeout), 1.3 s from now.
    assert!(
        wait_until(Duration::from_millis(800), || shared
            .seen()
            .iter()
            .any(|s| s.path == "/quick")),
        "the quick destination waited for the slow one"
    );
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert!(
        shared.seen().iter().all(|s| s.path != "/slowpoke"),
        "the slow receiver had not answered yet"
    );
    run.crash();
    receiver.stop();
}

/// A receiver that answers 429 with `Retry-After: 30` gets nothing more for 30 s, also not the
/// deliveries queued behind the one it answered; another destination is not held up.
#[test]
fn retry_after_holds_the_whole_destination() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.set_status("/limited", 429);
    shared.0.lock().unwrap().retry_after = Some("30".into());
    let receiver = Receiver::start(&shared, 0);
    let config = fast_config(vec![
        destination("limited", receiver.url("/limited"), Format::Json),
        destination("open", receiver.url("/open"), Format::Json),
    ]);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    let attempts = |name: &str| {
        responder
            .deliveries()
            .iter()
            .filter(|d| d.destination == name)
            .map(|d| d.attempts)
            .sum::<u32>()
    };
    responder
        .submit(&[alert("held1", "shadow_ai", Severity::High, 0)])
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || attempts("limited")
        == 1
        && shared.seen().len() == 1));
    responder
        .submit(&[alert("held2", "shadow_ai", Severity::High, 1)])
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || shared.seen().len() == 2));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        attempts("limited"),
        1,
        "the second delivery waited out the receiver's Retry-After"
    );
    run.crash();
    receiver.stop();
}

/// An endpoint that refuses everything for good: its dead letters stop at `dead_letter_limit` (the oldest
/// go, bodies and all, counted), and they never push the delivered history of another endpoint out.
#[test]
fn dead_letters_are_bounded_apart_from_the_delivered_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.redb");
    let shared = Shared::default();
    shared.set_status("/refusing", 400);
    let receiver = Receiver::start(&shared, 0);
    // Names of their own: the counters are shared by every test in this binary.
    let mut config = fast_config(vec![
        destination("fine", receiver.url("/fine"), Format::Json),
        destination("refusing", receiver.url("/refusing"), Format::Json),
    ]);
    config.delivery.history_limit = 5;
    config.delivery.dead_letter_limit = 3;
    let counter = |name: &str, labels: &[&str]| {
        prometheus::gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| {
                labels
                    .iter()
                    .all(|v| m.get_label().iter().any(|l| l.value() == *v))
            })
            .map(|m| m.get_counter().get_value())
            .sum::<f64>()
    };
    let dropped = || counter("vigil_webhook_dead_letters_dropped_total", &["refusing"]);
    let refused = || {
        counter(
            "vigil_webhook_deliveries_total",
            &["refusing", "dead_letter"],
        )
    };
    let (dropped_before, refused_before) = (dropped(), refused());
    let responder = Responder::open(config.clone(), path.clone()).unwrap();
    let run = Running::start(&responder);
    let alerts: Vec<_> = (0..8)
        .map(|i| alert(&format!("bounded{i}"), "shadow_ai", Severity::High, i))
        .collect();
    responder.submit(&alerts).unwrap();
    let count = |name: &str, status: DeliveryStatus| {
        responder
            .deliveries()
            .iter()
            .filter(|d| d.destination == name && d.status == status)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || refused() - refused_before
            == 8.0
            && shared.seen().len() == 8
            && responder.deliveries().iter().all(|d| !d.status.is_active())),
        "{:?}",
        responder.deliveries()
    );
    let dead: Vec<String> = responder
        .dead_letters()
        .into_iter()
        .map(|d| d.webhook_id)
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert_eq!(dropped() - dropped_before, 5.0);
    assert_eq!(
        count("fine", DeliveryStatus::Delivered),
        5,
        "dead letters cost no delivered history"
    );
    run.crash();
    drop(responder);

    // The outbox agrees after a restart, and what is kept still replays, bodies and all.
    shared.set_status("/refusing", 200);
    let responder = Responder::open(config, path).unwrap();
    let kept: Vec<String> = responder
        .dead_letters()
        .into_iter()
        .map(|d| d.webhook_id)
        .collect();
    assert_eq!(kept, dead);
    let run = Running::start(&responder);
    assert_eq!(responder.replay(&Replay::All).unwrap(), 3);
    assert!(wait_until(Duration::from_secs(10), || shared
        .seen()
        .iter()
        .filter(|s| s.path == "/refusing")
        .count()
        == 3));
    let replayed: BTreeSet<String> = shared
        .seen()
        .into_iter()
        .filter(|s| s.path == "/refusing")
        .map(|s| s.webhook_id)
        .collect();
    assert_eq!(replayed, dead.into_iter().collect());
    run.crash();
    receiver.stop();
}

/// 10,000 identical detections on one entity: one finding, a bounded number of updates, one close.
#[test]
fn burst_becomes_one_finding_with_bounded_updates() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    let (receiver, mut config) = soc_receiver(&shared, Format::Ocsf);
    // Long enough that a slow submit on a loaded machine (debug build, parallel tests) is not a quiet period
    // that closes the finding mid-burst.
    config.grouping.resolve_after = Duration::from_secs(2);
    let group_interval = config.grouping.group_interval;
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    let started = std::time::Instant::now();
    for chunk in 0..100 {
        let batch: Vec<_> = (0..100)
            .map(|i| alert("burst", "prompt_injection", Severity::High, chunk * 100 + i))
            .collect();
        responder.submit(&batch).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let burst = started.elapsed();
    assert!(wait_until(Duration::from_secs(20), || shared
        .seen()
        .iter()
        .any(|s| s.body["type"] == "finding.closed")));
    run.crash();
    receiver.stop();
    let seen = shared.seen();
    let finding_ids: BTreeSet<&str> = seen
        .iter()
        .map(|s| s.body["data"]["finding_info"]["uid"].as_str().unwrap())
        .collect();
    assert_eq!(finding_ids.len(), 1);
    let count = |t: &str| seen.iter().filter(|s| s.body["type"] == t).count();
    assert_eq!(count("finding.created"), 1);
    assert_eq!(count("finding.closed"), 1);
    let max_updates = (burst.as_millis() / group_interval.as_millis()) as usize + 2;
    assert!(
        count("finding.updated") <= max_updates,
        "{} updates for a {burst:?} burst",
        count("finding.updated")
    );
    let last = seen
        .iter()
        .rev()
        .find(|s| s.body["type"] != "finding.closed")
        .unwrap();
    let closed = seen
        .iter()
        .find(|s| s.body["type"] == "finding.closed")
        .unwrap();
    assert_eq!(closed.body["data"]["count"], 10_000);
    assert_eq!(closed.body["data"]["status_id"], 4);
    assert!(last.body["data"]["count"].as_u64().unwrap() <= 10_000);
    eprintln!(
        "burst of 10000 in {burst:?}: 1 create, {} updates, 1 close",
        count("finding.updated")
    );
}

/// While a destination is down a finding keeps growing, and each revision queues an Update. An Update
/// still waiting when a newer one is queued is superseded (never sent): the destination holds the Create and
/// one Update per finding, not one per revision, and once it is back it gets the Create and the finding's
/// latest state.
#[test]
fn a_destination_that_is_down_holds_one_update_per_finding() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.set_status("/", 503);
    let (receiver, config) = soc_receiver(&shared, Format::Ocsf);
    let group_interval = config.grouping.group_interval;
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    let mut submitted = 0;
    for round in 0..12 {
        let batch: Vec<_> = (0..5)
            .map(|i| alert("grows", "prompt_injection", Severity::High, round * 5 + i))
            .collect();
        responder.submit(&batch).unwrap();
        submitted += batch.len();
        std::thread::sleep(group_interval + Duration::from_millis(50));
    }
    let deliveries = responder.deliveries();
    let with = |status: DeliveryStatus| deliveries.iter().filter(|d| d.status == status).count();
    let waiting = deliveries.iter().filter(|d| d.status.is_active()).count();
    assert!(
        waiting <= 3,
        "{waiting} deliveries wait for one finding: {:?}",
        deliveries
            .iter()
            .map(|d| (d.revision, d.activity, d.status))
            .collect::<Vec<_>>()
    );
    let superseded = with(DeliveryStatus::Superseded);
    assert!(
        superseded >= 5,
        "{superseded} of {} Updates superseded",
        deliveries.len() - 1
    );
    assert!(deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Superseded)
        .all(|d| d.activity == Activity::Update));

    shared.set_status("/", 200);
    assert!(wait_until(Duration::from_secs(10), || responder
        .deliveries()
        .iter()
        .all(|d| !d.status.is_active())));
    run.crash();
    receiver.stop();
    let seen = shared.seen();
    let count = |t: &str| seen.iter().filter(|s| s.body["type"] == t).count();
    assert_eq!(count("finding.created"), 1);
    assert!(
        count("finding.updated") <= 2,
        "{} updates sent",
        count("finding.updated")
    );
    let last = seen.last().expect("something was delivered");
    assert_eq!(
        last.body["data"]["count"], submitted,
        "the latest state arrives"
    );
    let superseded_ids: BTreeSet<String> = responder
        .deliveries()
        .into_iter()
        .filter(|d| d.status == DeliveryStatus::Superseded)
        .map(|d| d.webhook_id)
        .collect();
    assert!(
        seen.iter().all(|s| !superseded_ids.contains(&s.webhook_id)),
        "a superseded Update is never sent"
    );
}

/// The other ways an Update becomes stale: one in flight when a newer one is queued is superseded when its
/// attempt fails (not retried ahead of the newer); with the destination disabled (410), the Updates held for
/// a replay supersede each other, so a replay sends only the latest; and a replay does not send a dead
/// letter older than a revision already delivered.
#[test]
fn in_flight_disabled_and_replayed_updates_are_superseded_by_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.0.lock().unwrap().script.insert(
        "/hook".into(),
        [
            (200, Duration::ZERO),
            (503, Duration::from_millis(800)),
            (410, Duration::ZERO),
        ]
        .into(),
    );
    let (receiver, config) = soc_receiver(&shared, Format::Ocsf);
    let pause = config.grouping.group_interval + Duration::from_millis(50);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    let mut submitted = 0;
    let mut grow = |round: usize| {
        let batch: Vec<_> = (0..3)
            .map(|i| alert("stale", "prompt_injection", Severity::High, round * 3 + i))
            .collect();
        responder.submit(&batch).unwrap();
        submitted += batch.len();
    };
    let revision = |rev: u32| {
        responder
            .deliveries()
            .into_iter()
            .find(|d| d.revision == rev)
    };
    grow(0);
    assert!(wait_until(Duration::from_secs(5), || !shared
        .seen()
        .is_empty()));
    std::thread::sleep(pause);
    grow(1); // revision 2: in flight for 800 ms, then 503
    assert!(wait_until(Duration::from_secs(5), || revision(2).is_some()));
    std::thread::sleep(pause);
    grow(2); // revision 3, queued while 2 is in flight
    assert!(wait_until(Duration::from_secs(5), || revision(2)
        .is_some_and(|d| d.status == DeliveryStatus::Superseded)));
    let second = revision(2).unwrap();
    assert!(
        second
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("503")),
        "the last answer stays in the error: {:?}",
        second.last_error
    );
    // Revision 3 is answered 410: the destination is disabled, and later revisions are held for a replay.
    assert!(wait_until(Duration::from_secs(5), || revision(3)
        .is_some_and(|d| d.status == DeliveryStatus::Disabled)));
    std::thread::sleep(pause);
    grow(3); // revision 4, held
    assert!(wait_until(Duration::from_secs(5), || revision(4).is_some()));
    std::thread::sleep(pause);
    grow(4); // revision 5, held; supersedes 4
    assert!(wait_until(Duration::from_secs(5), || revision(5).is_some()));
    for rev in [3, 4] {
        assert_eq!(
            revision(rev).unwrap().status,
            DeliveryStatus::Superseded,
            "revision {rev}"
        );
    }
    assert_eq!(revision(5).unwrap().status, DeliveryStatus::Disabled);
    assert_eq!(
        responder.replay(&Replay::All).unwrap(),
        1,
        "only the latest"
    );
    assert!(wait_until(Duration::from_secs(10), || revision(5)
        .is_some_and(|d| d.status == DeliveryStatus::Delivered)));

    // A dead letter older than a delivered revision is not sent back by a replay.
    shared
        .0
        .lock()
        .unwrap()
        .script
        .insert("/hook".into(), [(400, Duration::ZERO)].into());
    std::thread::sleep(pause);
    grow(5); // revision 6: dead-lettered by its 400
    assert!(wait_until(Duration::from_secs(5), || revision(6)
        .is_some_and(|d| d.status == DeliveryStatus::DeadLetter)));
    std::thread::sleep(pause);
    grow(6); // revision 7: delivered
    assert!(wait_until(Duration::from_secs(5), || revision(7)
        .is_some_and(|d| d.status == DeliveryStatus::Delivered)));
    assert_eq!(responder.replay(&Replay::All).unwrap(), 0);
    assert_eq!(revision(6).unwrap().status, DeliveryStatus::Superseded);
    std::thread::sleep(Duration::from_millis(200));
    run.crash();
    receiver.stop();
    let seen = shared.seen();
    let types: Vec<(&str, u64)> = seen
        .iter()
        .map(|s| {
            (
                s.body["type"].as_str().unwrap_or(""),
                s.body["data"]["unmapped"]["revision"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![
            ("finding.created", 1),
            ("finding.updated", 5),
            ("finding.updated", 7)
        ],
        "the receiver gets the Create and then the latest state only, in order"
    );
    assert_eq!(seen[2].body["data"]["count"], submitted);
}

/// Superseding a held Update moves it out of the dead letters: at `dead_letter_limit` the newer one takes
/// its place, and no other dead letter (here the finding's Create) is dropped to make room.
#[test]
fn superseding_a_held_update_drops_no_dead_letter_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.set_status("/", 410);
    let (receiver, mut config) = soc_receiver(&shared, Format::Ocsf);
    config.delivery.dead_letter_limit = 2;
    let pause = config.grouping.group_interval + Duration::from_millis(50);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    let revision = |rev: u32| {
        responder
            .deliveries()
            .into_iter()
            .find(|d| d.revision == rev)
    };
    for round in 0..3 {
        let batch: Vec<_> = (0..2)
            .map(|i| alert("held", "prompt_injection", Severity::High, round * 2 + i))
            .collect();
        responder.submit(&batch).unwrap();
        let rev = round as u32 + 1;
        assert!(wait_until(Duration::from_secs(5), || revision(rev)
            .is_some_and(|d| d.status == DeliveryStatus::Disabled)));
        std::thread::sleep(pause);
    }
    run.crash();
    receiver.stop();
    let held: Vec<(u32, Activity)> = responder
        .dead_letters()
        .iter()
        .map(|d| (d.revision, d.activity))
        .collect();
    assert_eq!(
        held,
        vec![(1, Activity::Create), (3, Activity::Update)],
        "the Create is kept; revision 2 is superseded, not counted"
    );
    assert_eq!(revision(2).unwrap().status, DeliveryStatus::Superseded);
}

/// A Create that was dead-lettered while a later Update of its finding got through: replayed, it would take
/// the receiver back to the finding's first state, so a fresh Update of the latest state follows it.
#[test]
fn a_replayed_create_is_followed_by_the_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared
        .0
        .lock()
        .unwrap()
        .script
        .insert("/hook".into(), [(400, Duration::ZERO)].into());
    let (receiver, config) = soc_receiver(&shared, Format::Ocsf);
    let pause = config.grouping.group_interval + Duration::from_millis(50);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    let alerts: Vec<_> = (0..4)
        .map(|i| alert("late", "prompt_injection", Severity::High, i))
        .collect();
    responder.submit(&alerts[..2]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || responder
        .deliveries()
        .iter()
        .any(|d| d.status == DeliveryStatus::DeadLetter)));
    std::thread::sleep(pause);
    responder.submit(&alerts[2..]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !shared
        .seen()
        .is_empty()));
    assert_eq!(responder.replay(&Replay::All).unwrap(), 1);
    assert!(wait_until(Duration::from_secs(5), || shared.seen().len() >= 3));
    std::thread::sleep(Duration::from_millis(200));
    run.crash();
    receiver.stop();
    let seen = shared.seen();
    let order: Vec<(&str, u64, u64)> = seen
        .iter()
        .map(|s| {
            (
                s.body["type"].as_str().unwrap_or(""),
                s.body["data"]["unmapped"]["revision"].as_u64().unwrap_or(0),
                s.body["data"]["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("finding.updated", 2, 4),
            ("finding.created", 1, 2),
            ("finding.updated", 3, 4)
        ],
        "the receiver ends on the latest state"
    );
}

/// Playbooks fire once per finding, signed, and are recorded as responses.
#[test]
fn playbook_runs_once_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    let receiver = Receiver::start(&shared, 0);
    let mut config = fast_config(vec![]);
    config.playbooks.push(PlaybookConfig {
        name: "revoke".into(),
        detectors: vec!["tool_abuse".into()],
        min_severity: Severity::High,
        action: "revoke_agent_token".into(),
        url: receiver.url("/actions/revoke"),
        auth: Some(Auth::Header {
            name: "ph-auth-token".into(),
            value: Secret::new("pb-token"),
        }),
        secret: Some(Secret::new(SECRET)),
    });
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    responder
        .submit(&[alert("x", "tool_abuse", Severity::Medium, 0)])
        .unwrap();
    responder
        .submit(&[
            alert("x", "tool_abuse", Severity::Critical, 1),
            alert("x", "tool_abuse", Severity::Critical, 2),
        ])
        .unwrap();
    responder
        .submit(&[alert("y", "other", Severity::Critical, 3)])
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || responder
        .responses()
        .iter()
        .all(|r| r.status == DeliveryStatus::Delivered)
        && !responder.responses().is_empty()));
    std::thread::sleep(Duration::from_millis(100));
    run.crash();
    receiver.stop();
    let responses = responder.responses();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].record.action, "revoke_agent_token");
    assert_eq!(responses[0].record.entity_id, "agent-x");
    // The response answers the first alert that met the playbook's conditions (the medium one did not).
    assert_eq!(responses[0].record.alert_id, "x-a1");
    assert!(responses[0].completed_at_ms.is_some());
    assert_eq!(
        responses[0].record.responded_at_ms, responses[0].completed_at_ms,
        "kept beyond the delivery record"
    );
    let playbook_delivery = responder
        .deliveries()
        .into_iter()
        .find(|d| d.playbook.is_some())
        .unwrap();
    assert_eq!(
        playbook_delivery.alert_id.as_deref(),
        Some("x-a1"),
        "the delivery names the alert the response answers"
    );
    let seen = shared.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["type"], "response.requested");
    assert_eq!(seen[0].body["data"]["target"]["id"], "agent-x");
    assert_eq!(seen[0].custom.as_deref(), Some("pb-token"));
    assert_eq!(shared.bad_signatures(), 0);
    // The responses, one row per alert as `alerts` shows them, survive a restart.
    let config = fast_config(vec![]);
    drop(responder);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let batch = responder.alert_responses_batch();
    assert_eq!(batch.schema(), vigil_detect::alert_response_schema());
    let rows = response_rows(&batch);
    let responded_us = responses[0].completed_at_ms.unwrap() * 1000;
    let expected = (
        "x-a1".to_string(),
        "revoke".to_string(),
        "revoke_agent_token".to_string(),
        "delivered".to_string(),
        Some(responded_us),
    );
    assert_eq!(rows, vec![expected]);
}

/// A playbook action the receiver refused stays refused once its dead letter is pruned from the history:
/// it used to read as delivered, a containment that never ran reported as taken.
#[test]
fn a_refused_action_is_not_reported_taken_after_its_record_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.set_status("/actions/revoke", 400);
    shared.set_status("/soc", 400);
    let receiver = Receiver::start(&shared, 0);
    let mut config = fast_config(vec![destination("soc", receiver.url("/soc"), Format::Json)]);
    config.delivery.dead_letter_limit = 1;
    config.playbooks.push(PlaybookConfig {
        name: "revoke".into(),
        detectors: vec!["tool_abuse".into()],
        min_severity: Severity::High,
        action: "revoke_agent_token".into(),
        url: receiver.url("/actions/revoke"),
        auth: None,
        secret: Some(Secret::new(SECRET)),
    });
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let run = Running::start(&responder);
    responder
        .submit(&[alert("x", "tool_abuse", Severity::Critical, 0)])
        .unwrap();
    let playbook_record = || {
        responder
            .deliveries()
            .into_iter()
            .find(|d| d.playbook.is_some())
    };
    assert!(wait_until(Duration::from_secs(5), || playbook_record()
        .is_some_and(|d| d.status == DeliveryStatus::DeadLetter)));
    // Newer dead letters push the playbook's out of the history (limit 1).
    for k in 1..4 {
        responder
            .submit(&[alert(&format!("y{k}"), "other", Severity::High, k)])
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || playbook_record().is_none()));
    let responses = responder.responses();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, DeliveryStatus::DeadLetter);
    assert_eq!(responses[0].completed_at_ms, None);
    run.crash();
    receiver.stop();
}

/// (alert_id, playbook, action, status, responded_at µs) per row of an `alert_response_schema()` batch.
fn response_rows(
    batch: &arrow::array::RecordBatch,
) -> Vec<(String, String, String, String, Option<i64>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    let text = |name: &str, row: usize| {
        batch
            .column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .value(row)
            .to_string()
    };
    let responded = batch
        .column_by_name("responded_at")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    (0..batch.num_rows())
        .map(|r| {
            let at = responded.is_valid(r).then(|| responded.value(r));
            (
                text("alert_id", r),
                text("response_playbook", r),
                text("response_action", r),
                text("response_status", r),
                at,
            )
        })
        .collect()
}

/// Several playbooks answering one alert fold into one row; an unfinished action keeps `responded_at` NULL.
#[test]
fn responses_fold_to_one_row_per_alert() {
    use vigil_respond::{alert_responses_to_batch, ResponseRecord, ResponseView};
    let view =
        |seq: u64, playbook: &str, alert: &str, status: DeliveryStatus, done: Option<i64>| {
            ResponseView {
                record: ResponseRecord {
                    seq,
                    playbook: playbook.into(),
                    action: format!("{playbook}_action"),
                    finding_id: "f".into(),
                    alert_id: alert.into(),
                    fingerprint: "fp".into(),
                    detector: "tool_abuse".into(),
                    severity: Severity::Critical,
                    entity_type: "agent".into(),
                    entity_id: "a".into(),
                    triggered_at_ms: 1_000 + seq as i64,
                    delivery_seq: seq,
                    responded_at_ms: done,
                },
                status,
                completed_at_ms: done,
                last_status_code: None,
                last_error: None,
            }
        };
    let batch = alert_responses_to_batch(&[
        view(1, "revoke", "a1", DeliveryStatus::Delivered, Some(5_000)),
        view(2, "quarantine", "a1", DeliveryStatus::Retrying, None),
        view(3, "revoke", "a2", DeliveryStatus::Delivered, Some(7_000)),
        view(
            4,
            "quarantine",
            "a2",
            DeliveryStatus::Delivered,
            Some(9_000),
        ),
        view(5, "revoke", "", DeliveryStatus::Delivered, Some(9_000)),
    ]);
    let s = |v: &str| v.to_string();
    assert_eq!(
        response_rows(&batch),
        vec![
            (
                s("a1"),
                s("revoke,quarantine"),
                s("revoke_action,quarantine_action"),
                s("retrying"),
                None
            ),
            (
                s("a2"),
                s("revoke,quarantine"),
                s("revoke_action,quarantine_action"),
                s("delivered"),
                Some(9_000_000)
            ),
        ]
    );
    use arrow::array::AsArray;
    let requested = batch
        .column_by_name("response_requested_at")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(
        (requested.value(0), requested.value(1)),
        (1_001_000, 1_003_000)
    );
}

/// `vigil alerts test`: a marked finding, the receiver's answer returned.
#[test]
fn send_test_returns_the_receivers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Shared::default();
    shared.set_status("/broken", 503);
    let receiver = Receiver::start(&shared, 0);
    let config = fast_config(vec![
        destination("soc", receiver.url("/hook"), Format::Thehive),
        destination("broken", receiver.url("/broken"), Format::Ocsf),
    ]);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(responder.send_test("soc")).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "{\"ok\":true}");
    let seen = shared.seen();
    assert_eq!(seen[0].body["type"], "vigil-test");
    assert!(seen[0].body["title"]
        .as_str()
        .unwrap()
        .starts_with("[TEST]"));
    assert_eq!(
        rt.block_on(responder.send_test("broken")).unwrap().status,
        503
    );
    assert!(matches!(
        rt.block_on(responder.send_test("nope")),
        Err(RespondError::UnknownDestination(_))
    ));
    assert!(responder.deliveries().is_empty(), "tests bypass the outbox");
    receiver.stop();
}

/// Metadata and link-local addresses are refused, and errors never carry secrets.
#[test]
fn egress_policy_refuses_metadata_and_keeps_secrets_out_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(vec![destination(
        "meta",
        "http://169.254.169.254/latest".into(),
        Format::Ocsf,
    )]);
    config.egress.allow_hosts.clear();
    let err = Responder::open(config.clone(), dir.path().join("o.redb")).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("egress policy denies 169.254.169.254"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t-token") && !text.contains("C2FVsBQ"));
    config.destinations[0].url = "http://127.0.0.1:1/x".into();
    assert!(
        Responder::open(config.clone(), dir.path().join("o.redb")).is_err(),
        "loopback needs listing"
    );
    config.egress.allow_hosts = vec!["127.0.0.1".into()];
    let r = Responder::open(config, dir.path().join("o.redb")).unwrap();
    assert!(!format!("{r:?}").contains("s3cr3t"));
}

/// Alerts stored but never submitted (a crash between the WAL fsync and the outbox commit) are submitted
/// once by `reconcile`, across restarts, and alerts already submitted are never counted again.
#[test]
fn reconcile_submits_exactly_the_alerts_the_outbox_never_saw() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.redb");
    let shared = Shared::default();
    let (receiver, config) = soc_receiver(&shared, Format::Ocsf);
    let stored: Vec<_> = (0..10)
        .map(|i| alert(&format!("fp{i}"), "shadow_ai", Severity::High, i))
        .collect();

    let responder = Responder::open(config.clone(), &outbox).unwrap();
    responder.submit(&stored[..6]).unwrap();
    drop(responder);

    // Restart: the store holds all ten; the outbox saw six.
    let responder = Responder::open(config.clone(), &outbox).unwrap();
    assert_eq!(responder.reconcile(&stored).unwrap(), 4);
    assert_eq!(
        responder.reconcile(&stored).unwrap(),
        0,
        "a second pass finds nothing missing"
    );
    // A reconcile pass can run between the pipeline's store and its submit of the same alert: the live
    // submit then finds it submitted already.
    responder.submit(&stored[8..]).unwrap();
    drop(responder);
    let responder = Responder::open(config, &outbox).unwrap();
    assert_eq!(
        responder.reconcile(&stored).unwrap(),
        0,
        "remembered across restarts"
    );
    assert_eq!(responder.open_findings(), 10);

    let run = Running::start(&responder);
    assert!(wait_until(Duration::from_secs(10), || {
        let d = responder.deliveries();
        d.len() == 10 && d.iter().all(|d| d.status == DeliveryStatus::Delivered)
    }));
    run.crash();
    receiver.stop();
    // One finding each, each counted once.
    let seen = shared.seen();
    let created: Vec<_> = seen
        .iter()
        .filter(|s| s.body["type"] == "finding.created")
        .collect();
    assert_eq!(created.len(), 10);
    assert!(
        created.iter().all(|s| s.body["data"]["count"] == 1),
        "no alert folded in twice"
    );
}

/// A destination without a secret sends unsigned webhooks; it is named so the start-up warning and
/// `vigil alerts test` can say so.
#[test]
fn destinations_without_a_secret_are_named_as_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = destination("plain", "http://127.0.0.1:9/hook".into(), Format::Json);
    plain.secret = None;
    let signed = destination("signed", "http://127.0.0.1:9/hook".into(), Format::Json);
    let config = fast_config(vec![signed, plain]);
    let responder = Responder::open(config, dir.path().join("o.redb")).unwrap();
    assert_eq!(responder.unsigned_destinations(), ["plain"]);
}
