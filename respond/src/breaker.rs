//! Per-destination circuit breaker: after repeated failures stop hammering a receiver that is down and
//! let a single probe through once the cooldown is over.

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
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether an attempt may start now; moving from Open to HalfOpen hands out exactly one probe.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
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
}
