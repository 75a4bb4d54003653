//! Pacing a stream's wake-ups of its subscribers, so a busy stream writes to each client once
//! per window rather than once per event.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::Sleep;

/// A stream with this many subscribers or more may hold events for the whole `coalesce`; a
/// smaller one for its share of it. Waking a subscriber costs a task wake and a write to its
/// socket (a few microseconds, most of it in the kernel), so with the default 20 ms a busy
/// stream makes at most about 50,000 client writes per second, however fast its events come.
const COALESCE_FULL_AT: u32 = 1000;

/// The first window after a quiet spell is the full one halved this many times; it doubles
/// each time events are held again right after a held batch went out.
const COALESCE_STEPS: u32 = 2;

/// The longest a stream may wait after waking its subscribers before waking them again: events
/// that arrive sooner are held and go out together, one write per client.
pub(super) fn coalesce_window(coalesce: Option<Duration>, subscribers: usize) -> Duration {
    let Some(limit) = coalesce else {
        return Duration::ZERO;
    };
    let share = u32::try_from(subscribers).map_or(COALESCE_FULL_AT, |n| n.min(COALESCE_FULL_AT));
    limit.saturating_mul(share) / COALESCE_FULL_AT
}

/// Paces the wake-ups of a stream's subscribers. An event that comes a window or more after
/// the last wake-up wakes them at once; one that comes sooner waits for the window's end,
/// with every other event that comes meanwhile. The window starts at a quarter of the full one
/// and doubles, up to the full one, while the stream stays busy (events held again right after
/// a held batch went out); one event that finds the window over starts it afresh. A stream
/// whose events are further apart than the first window is never held.
#[derive(Default)]
pub(super) struct Pacer {
    /// The last wake-up, if any.
    last: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// How many times the window doubled since the stream was last quiet.
    steps: u32,
    /// The last wake-up released held events.
    busy: bool,
}

impl Pacer {
    /// Events were appended: whether to wake the subscribers now (else the timer will). `full`
    /// is the longest window.
    pub(super) fn appended(&mut self, full: Duration) -> bool {
        if self.timer.is_some() {
            return false;
        }
        let now = tokio::time::Instant::now();
        let window = |steps: u32| full / (1 << (COALESCE_STEPS - steps.min(COALESCE_STEPS)));
        match self.last {
            Some(last) if now < last + window(self.steps) => {
                if self.busy {
                    self.steps = (self.steps + 1).min(COALESCE_STEPS);
                }
                self.timer = Some(Box::pin(tokio::time::sleep_until(last + window(self.steps))));
                false
            }
            _ => {
                self.last = Some(now);
                self.steps = 0;
                self.busy = false;
                true
            }
        }
    }

    /// Resolves when held events are due; never while none are held.
    pub(super) async fn due(&mut self) {
        fire(&mut self.timer).await;
        self.timer = None;
        self.last = Some(tokio::time::Instant::now());
        self.busy = true;
    }
}

/// Resolves when the optional timer fires; never when there is none.
pub(super) async fn fire(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_window_grows_with_subscribers_up_to_coalesce() {
        let limit = Some(Duration::from_millis(5));
        assert_eq!(coalesce_window(limit, 1), Duration::from_micros(5));
        assert_eq!(coalesce_window(limit, 200), Duration::from_millis(1));
        assert_eq!(coalesce_window(limit, 1_000), Duration::from_millis(5));
        assert_eq!(coalesce_window(limit, 50_000), Duration::from_millis(5));
        assert_eq!(coalesce_window(None, 50_000), Duration::ZERO);
        assert_eq!(coalesce_window(limit, usize::MAX), Duration::from_millis(5));
        assert_eq!(
            coalesce_window(Some(Duration::from_secs(10)), 300),
            Duration::from_secs(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_wakes_at_once_a_busy_one_once_per_growing_window() {
        let ms = Duration::from_millis;
        let full = ms(20);
        let mut pacer = Pacer::default();
        assert!(pacer.appended(full), "the first event: at once");
        let mut woke = tokio::time::Instant::now();
        tokio::time::advance(ms(1)).await;
        assert!(!pacer.appended(full), "1 ms later: held");
        tokio::time::advance(ms(1)).await;
        assert!(!pacer.appended(full), "held with the one before");
        // Busy: each window ends with events held, and the next one is twice as long, up to
        // the full window.
        for window in [ms(5), ms(10), ms(20), ms(20)] {
            pacer.due().await;
            let now = tokio::time::Instant::now();
            assert_eq!(now - woke, window, "held events go out at the window's end");
            woke = now;
            tokio::time::advance(ms(1)).await;
            assert!(!pacer.appended(full), "busy: held");
        }
        pacer.due().await;
        // Quiet again: an event after the window goes at once, and the window starts afresh.
        tokio::time::advance(ms(25)).await;
        assert!(pacer.appended(full), "quiet again: at once");
        woke = tokio::time::Instant::now();
        tokio::time::advance(ms(1)).await;
        assert!(!pacer.appended(full));
        pacer.due().await;
        assert_eq!(tokio::time::Instant::now() - woke, ms(5));
        tokio::time::advance(ms(6)).await;
        assert!(
            pacer.appended(full),
            "a gap longer than the first window: at once"
        );
        assert!(pacer.appended(Duration::ZERO), "no window: always at once");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_held_means_never_due() {
        let mut pacer = Pacer::default();
        let due = tokio::time::timeout(Duration::from_secs(3600), pacer.due()).await;
        assert!(due.is_err());
    }
}
