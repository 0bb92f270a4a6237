//! Retry delays: the configured schedule (Svix's by default) with jitter, stretched by `Retry-After`.

use std::time::Duration;

use rand::Rng;

/// Delay before the next attempt after `failed_attempts` failures in this round, or `None` when the
/// schedule is exhausted (the delivery becomes a dead letter). `retry_after` from the receiver wins when it
/// is longer, capped at `max_retry_after` so a bogus header cannot park a delivery forever.
pub fn next_delay(
    schedule: &[Duration],
    failed_attempts: u32,
    jitter: f64,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let idx = usize::try_from(failed_attempts.checked_sub(1)?).ok()?;
    let base = *schedule.get(idx)?;
    let j = jitter.clamp(0.0, 1.0);
    let factor = if j > 0.0 {
        rng.random_range(1.0 - j..=1.0 + j)
    } else {
        1.0
    };
    let delay = base.mul_f64(factor);
    Some(match retry_after {
        Some(ra) => delay.max(ra.min(max_retry_after)),
        None => delay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_schedule_with_bounded_jitter_then_stops() {
        let s = |x| Duration::from_secs(x);
        let schedule = [s(5), s(300), s(1800)];
        let mut rng = rand::rng();
        for _ in 0..200 {
            let d = next_delay(&schedule, 2, 0.2, None, s(3600), &mut rng).unwrap();
            assert!(d >= s(240) && d <= s(360), "{d:?}");
        }
        assert_eq!(
            next_delay(&schedule, 1, 0.0, None, s(3600), &mut rng),
            Some(s(5))
        );
        assert_eq!(next_delay(&schedule, 4, 0.2, None, s(3600), &mut rng), None);
        assert_eq!(next_delay(&schedule, 0, 0.2, None, s(3600), &mut rng), None);
    }

    #[test]
    fn retry_after_lengthens_but_is_capped() {
        let s = |x| Duration::from_secs(x);
        let schedule = [s(5), s(60)];
        let mut rng = rand::rng();
        assert_eq!(
            next_delay(&schedule, 1, 0.0, Some(s(30)), s(60), &mut rng),
            Some(s(30))
        );
        assert_eq!(
            next_delay(&schedule, 1, 0.0, Some(s(1)), s(60), &mut rng),
            Some(s(5))
        );
        assert_eq!(
            next_delay(&schedule, 1, 0.0, Some(s(86_400)), s(60), &mut rng),
            Some(s(60))
        );
    }
}
