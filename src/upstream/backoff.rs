//! How long to wait before asking an upstream again.

use std::time::Duration;

/// Exponential backoff with jitter: each delay is drawn from the upper half of the current
/// step, which doubles from `initial` up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Steps from `initial` up to `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// Back to the first step: the upstream proved it works.
    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }

    /// New limits (a reload), keeping the current step within them.
    pub(crate) fn limits(&mut self, initial: Duration, max: Duration) {
        self.initial = initial;
        self.max = max;
        self.current = self.current.clamp(initial, max.max(initial));
    }

    /// The next delay; the step after it doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.current;
        // Saturating: a `reconnect_max` near `Duration::MAX` must not overflow when doubled.
        self.current = self.current.saturating_mul(2).min(self.max);
        let delay = (step / 2).saturating_add(step.mul_f64(fastrand::f64() / 2.0));
        // Whole milliseconds: plenty of precision, and readable in the logs.
        Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_max_within_the_upper_half_of_each_step() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(400));
        for step in [100, 200, 400, 400, 400] {
            let delay = backoff.next_delay();
            assert!(
                delay >= ms(step / 2) && delay <= ms(step),
                "{delay:?} for step {step}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }

    #[test]
    fn a_huge_max_does_not_overflow() {
        let mut backoff = Backoff::new(Duration::MAX / 3, Duration::MAX);
        for _ in 0..4 {
            assert!(backoff.next_delay() >= Duration::from_millis(1));
        }
    }
}
