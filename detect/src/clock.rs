//! The detection stage's event-time clock (a watermark, as in Flink or Beam's idle-source handling).
//!
//! Window work (closing idle entities' windows, drift evaluation) must follow the time of the events,
//! not the wall clock: when a Kafka consumer catches up on an hour of lag, or a collector replays its
//! queue, the events are an hour old, and judging them against the wall clock would close every
//! entity's window after each tick, splitting the windows the baselines and spike detectors count.
//! When traffic stops, the watermark keeps moving at wall-clock speed from the last event, so idle
//! windows still close. Event times ahead of the wall clock (skewed or hostile clients) are clamped,
//! so one event stamped in the year 3000 cannot close every window.

/// How far ahead of the wall clock an event may push the watermark.
pub const MAX_FUTURE_SKEW_US: i64 = 60_000_000;

/// The highest event time seen, and the wall-clock time it was seen at.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventClock {
    seen: Option<(i64, i64)>,
}

impl EventClock {
    /// Records a batch whose latest event time is `max_event_us`, processed at `wall_us`.
    pub fn observe(&mut self, max_event_us: i64, wall_us: i64) {
        let t = max_event_us.min(wall_us + MAX_FUTURE_SKEW_US);
        if self.seen.is_none_or(|(m, _)| t > m) {
            self.seen = Some((t, wall_us));
        }
    }

    /// Event time now: the latest event time plus the wall-clock time since it was seen, never ahead
    /// of the wall clock. Before any event, the wall clock.
    pub fn watermark(&self, wall_us: i64) -> i64 {
        match self.seen {
            None => wall_us,
            Some((m, at)) => m.saturating_add((wall_us - at).max(0)).min(wall_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn follows_replayed_events_not_the_wall_clock() {
        let mut c = EventClock::default();
        let wall = 1_000 * MIN;
        // Replaying traffic from two hours ago: the watermark is the replay position.
        c.observe(wall - 120 * MIN, wall);
        assert_eq!(c.watermark(wall + 1_000_000), wall - 120 * MIN + 1_000_000);
        c.observe(wall - 110 * MIN, wall + 2_000_000);
        assert_eq!(c.watermark(wall + 2_000_000), wall - 110 * MIN);
        // Older events never move it back.
        c.observe(wall - 200 * MIN, wall + 2_000_000);
        assert_eq!(c.watermark(wall + 2_000_000), wall - 110 * MIN);
    }

    #[test]
    fn advances_with_the_wall_clock_when_traffic_stops_but_never_passes_it() {
        let mut c = EventClock::default();
        let wall = 1_000 * MIN;
        assert_eq!(c.watermark(wall), wall, "no events yet: wall clock");
        c.observe(wall - 2_000_000, wall);
        assert_eq!(
            c.watermark(wall + 5 * MIN),
            wall + 5 * MIN - 2_000_000,
            "idle: moves on from the last event"
        );
        // Live traffic a little ahead of this host's clock does not run ahead of the wall clock.
        c.observe(wall + 5 * MIN + 3_000_000, wall + 5 * MIN);
        assert_eq!(c.watermark(wall + 5 * MIN), wall + 5 * MIN);
    }

    #[test]
    fn a_far_future_timestamp_is_clamped() {
        let mut c = EventClock::default();
        let wall = 1_000 * MIN;
        c.observe(i64::MAX, wall);
        assert_eq!(c.watermark(wall), wall);
        // The clamp leaves room for real traffic to take over once the wall clock catches up.
        c.observe(wall + 10 * MIN, wall + 10 * MIN);
        assert_eq!(c.watermark(wall + 11 * MIN), wall + 11 * MIN);
    }
}
