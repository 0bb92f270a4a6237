//! Per-destination circuit breaker: after repeated failures stop hammering a receiver that is down and
//! let a single probe through once the cooldown is over; and a receiver's `Retry-After` holds every
//! delivery to it, not only the one it answered.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// A probe is in flight; everything else waits for its answer.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    consecutive_failures: u32,
    threshold: u32,
    cooldown: Duration,
    /// No attempt before this: the receiver asked for a pause (`Retry-After`).
    hold_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            threshold: threshold.max(1),
            cooldown,
            hold_until: None,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether an attempt may start now; moving from Open to HalfOpen hands out exactly one probe.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if self.hold_until.is_some_and(|until| now < until) {
            return false;
        }
        match self.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => false,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } => false,
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = BreakerState::Closed;
        self.hold_until = None;
    }

    /// The receiver answered `Retry-After`: it is rate-limiting or down for a while, so the deliveries
    /// queued behind this one wait too, instead of each spending a retry on the same answer.
    pub fn hold(&mut self, until: Instant) {
        self.hold_until = Some(self.hold_until.map_or(until, |u| u.max(until)));
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.state == BreakerState::HalfOpen || self.consecutive_failures >= self.threshold {
            self.state = BreakerState::Open {
                until: now + self.cooldown,
            };
        }
    }

    /// An attempt that was allowed but ended without an answer about the receiver (e.g. aborted):
    /// give the probe slot back.
    pub fn on_abandon(&mut self, now: Instant) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open { until: now };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_once_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(b.try_acquire(t0));
            b.on_failure(t0);
        }
        assert!(b.try_acquire(t0));
        b.on_failure(t0);
        assert!(!b.try_acquire(t0 + Duration::from_secs(9)));
        assert!(
            b.try_acquire(t0 + Duration::from_secs(10)),
            "probe after cooldown"
        );
        assert!(
            !b.try_acquire(t0 + Duration::from_secs(10)),
            "only one probe"
        );
        b.on_failure(t0 + Duration::from_secs(10));
        assert!(
            !b.try_acquire(t0 + Duration::from_secs(15)),
            "failed probe reopens"
        );
        assert!(b.try_acquire(t0 + Duration::from_secs(20)));
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn retry_after_holds_the_destination_until_it_passes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, Duration::from_secs(1));
        b.on_failure(t0);
        b.hold(t0 + Duration::from_secs(30));
        b.hold(t0 + Duration::from_secs(10));
        assert_eq!(b.state(), BreakerState::Closed, "one failure opens nothing");
        assert!(
            !b.try_acquire(t0 + Duration::from_secs(29)),
            "the longer hold wins"
        );
        assert!(b.try_acquire(t0 + Duration::from_secs(30)));
        b.hold(t0 + Duration::from_secs(60));
        b.on_success();
        assert!(
            b.try_acquire(t0 + Duration::from_secs(31)),
            "an answer in the meantime ends the hold"
        );
    }
}
