//! When an empty assignment is a coordinator's mistake rather than a share of the partitions, and the
//! consumer should leave and rejoin the group to get a real one.
//!
//! # Why this exists
//! A group coordinator is supposed to complete a generation only with the assignment its leader computed.
//! tansu 0.6 (`coordinator/group/administrator.rs`) does not always: when a member is killed (SIGKILL, OOM,
//! power loss) it stays the group's leader until its session times out, and a restarted instance joins as a
//! follower of that dead leader. The dead leader's expiry is noticed on the next JoinGroup or SyncGroup; it
//! is almost always the follower's SyncGroup (tansu holds every follower JoinGroup for 3 s, and the SyncGroup
//! follows it at once), and tansu then accepts that follower's SyncGroup, which carries no assignments, as the
//! leader's: the group becomes stable with nothing assigned to anyone. Heartbeats succeed from then on, so
//! no rebalance ever repairs it, and the restarted instance idles forever with `assigned=[]`.
//!
//! A consumer cannot see who led a generation, and tansu's ListGroups does not list groups, so the group's
//! size is not known either. What it can see is that its whole assignment stayed empty, with no rebalance
//! since, although the subscribed topics have partitions. It then leaves the group and joins again as a new
//! member: tansu drops the departed (bogus) leader, the rejoining member becomes leader and assigns every
//! partition. A correct coordinator never gets here unless the group has more members than partitions;
//! such an idle member probes once and then trusts the empty assignment until it has held a partition again,
//! so the cost is one extra rebalance of the group per idle spell.

use std::time::{Duration, Instant};

use super::TopicConfig;

/// How long an empty assignment must stand, with no rebalance, before it is checked. Long enough for the
/// second round of a cooperative rebalance, which assigns partitions taken from other members, to arrive.
pub(super) const SETTLE: Duration = Duration::from_secs(5);

/// What the last rebalance callback left this consumer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RebalanceOutcome {
    /// Partitions were revoked: an assignment follows.
    Revoked,
    /// Partitions were assigned; `empty` is whether the whole assignment (not just the increment) is empty.
    Assigned { empty: bool },
}

/// Watches the assignment for an empty one that does not go away.
#[derive(Debug)]
pub(super) struct EmptyAssignmentWatch {
    settle: Duration,
    /// When the assignment last became empty, if it still is and has not been probed yet.
    empty_since: Option<Instant>,
    /// Whether this consumer left and rejoined since it last held a partition.
    probed: bool,
}

impl EmptyAssignmentWatch {
    pub(super) fn new(settle: Duration) -> Self {
        EmptyAssignmentWatch {
            settle,
            empty_since: None,
            probed: false,
        }
    }

    /// Takes in a rebalance callback's outcome.
    pub(super) fn observe(&mut self, outcome: RebalanceOutcome, now: Instant) {
        match outcome {
            RebalanceOutcome::Revoked => self.empty_since = None,
            RebalanceOutcome::Assigned { empty: false } => {
                self.empty_since = None;
                self.probed = false;
            }
            RebalanceOutcome::Assigned { empty: true } => {
                self.empty_since = (!self.probed).then_some(now);
            }
        }
    }

    /// When the empty assignment is due for a check, if one is pending.
    pub(super) fn check_at(&self) -> Option<Instant> {
        self.empty_since.map(|since| since + self.settle)
    }

    /// Decides at a due check: `still_empty` is the assignment now, `partitions` the number of partitions of
    /// the subscribed topics. True means leave and rejoin the group now; it is said once per idle spell.
    pub(super) fn should_rejoin(&mut self, still_empty: bool, partitions: usize) -> bool {
        self.empty_since = None;
        if !still_empty {
            self.probed = false;
            return false;
        }
        if partitions == 0 {
            // Nothing to assign yet: empty is right. A topic created later triggers a rebalance anyway.
            return false;
        }
        self.probed = true;
        true
    }

    /// The check could not be made (metadata unavailable): try again after another settle period.
    pub(super) fn postpone(&mut self, now: Instant) {
        if !self.probed {
            self.empty_since = Some(now);
        }
    }
}

/// Partitions of the topics (name, partition count, as the broker's metadata lists them) that one of the
/// subscriptions matches: what an assignor would have to hand out.
pub(super) fn subscribed_partitions<'a>(
    topics: impl IntoIterator<Item = (&'a str, usize)>,
    subscriptions: &[TopicConfig],
) -> usize {
    topics
        .into_iter()
        .filter(|(name, _)| subscriptions.iter().any(|s| s.matches(name)))
        .map(|(_, partitions)| partitions)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::{Signal, TopicEncoding};
    use super::*;

    #[test]
    fn subscribed_partitions_count_only_matching_topics() {
        let subscriptions = [
            TopicConfig::named("otlp_spans", TopicEncoding::OtlpProto, Signal::Traces),
            TopicConfig {
                name: None,
                regex: Some("tenant-.*".into()),
                encoding: TopicEncoding::OtlpJson,
                signal: Signal::Logs,
            },
        ];
        let topics = [
            ("otlp_spans", 4),
            ("vigil_dlq", 1),
            ("tenant-a", 2),
            ("other", 8),
        ];
        assert_eq!(subscribed_partitions(topics, &subscriptions), 6);
        assert_eq!(subscribed_partitions([("vigil_dlq", 1)], &subscriptions), 0);
    }

    const ASSIGNED_NOTHING: RebalanceOutcome = RebalanceOutcome::Assigned { empty: true };
    const ASSIGNED_SOME: RebalanceOutcome = RebalanceOutcome::Assigned { empty: false };

    #[test]
    fn an_empty_assignment_is_checked_after_the_settle_time_and_rejoined_once() {
        let t0 = Instant::now();
        let mut watch = EmptyAssignmentWatch::new(SETTLE);
        assert_eq!(watch.check_at(), None);
        watch.observe(ASSIGNED_NOTHING, t0);
        assert_eq!(watch.check_at(), Some(t0 + SETTLE));
        assert!(
            watch.should_rejoin(true, 4),
            "empty although 4 partitions exist"
        );
        assert_eq!(watch.check_at(), None, "checked: nothing pending");
        // The rejoin brings an empty assignment again: a correct coordinator meant it (more members than
        // partitions), so it is trusted.
        watch.observe(RebalanceOutcome::Revoked, t0);
        watch.observe(ASSIGNED_NOTHING, t0 + Duration::from_secs(10));
        assert_eq!(
            watch.check_at(),
            None,
            "second empty assignment in one idle spell is trusted"
        );
    }

    #[test]
    fn holding_partitions_again_re_arms_the_probe() {
        let t0 = Instant::now();
        let mut watch = EmptyAssignmentWatch::new(SETTLE);
        watch.observe(ASSIGNED_NOTHING, t0);
        assert!(watch.should_rejoin(true, 4));
        watch.observe(ASSIGNED_SOME, t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(60);
        watch.observe(ASSIGNED_NOTHING, t1);
        assert_eq!(watch.check_at(), Some(t1 + SETTLE));
    }

    #[test]
    fn a_rebalance_or_a_filled_assignment_cancels_the_check() {
        let t0 = Instant::now();
        let mut watch = EmptyAssignmentWatch::new(SETTLE);
        watch.observe(ASSIGNED_NOTHING, t0);
        watch.observe(RebalanceOutcome::Revoked, t0 + Duration::from_secs(1));
        assert_eq!(
            watch.check_at(),
            None,
            "a rebalance is under way; its assignment decides"
        );
        watch.observe(ASSIGNED_NOTHING, t0 + Duration::from_secs(2));
        assert!(
            !watch.should_rejoin(false, 4),
            "partitions arrived before the check (cooperative round 2)"
        );
        watch.observe(ASSIGNED_NOTHING, t0 + Duration::from_secs(3));
        assert_eq!(
            watch.check_at(),
            Some(t0 + Duration::from_secs(3) + SETTLE),
            "not counted as a probe"
        );
    }

    #[test]
    fn no_rejoin_when_the_subscribed_topics_have_no_partitions() {
        let t0 = Instant::now();
        let mut watch = EmptyAssignmentWatch::new(SETTLE);
        watch.observe(ASSIGNED_NOTHING, t0);
        assert!(!watch.should_rejoin(true, 0));
        assert_eq!(watch.check_at(), None);
        watch.observe(ASSIGNED_NOTHING, t0 + Duration::from_secs(30));
        assert!(
            watch.should_rejoin(true, 1),
            "the probe was not spent on the partition-less topics"
        );
    }

    #[test]
    fn a_failed_check_is_retried_after_another_settle_period() {
        let t0 = Instant::now();
        let mut watch = EmptyAssignmentWatch::new(SETTLE);
        watch.observe(ASSIGNED_NOTHING, t0);
        let t1 = t0 + SETTLE;
        watch.postpone(t1);
        assert_eq!(watch.check_at(), Some(t1 + SETTLE));
    }
}
