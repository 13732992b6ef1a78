//! When to act on a burst of changes: after a short quiet period, but never
//! later than a maximum wait after the first change of the burst. One reload
//! for a burst, and no reload storm.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Coalescer {
    quiet: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Coalescer {
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Coalescer {
            quiet,
            max_wait,
            first: None,
            last: None,
        }
    }

    /// A change arrived at `now`.
    pub fn change(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When to act, if a change is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_wait))
    }

    /// Acted: the burst is over.
    pub fn reset(&mut self) {
        self.first = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_period_after_the_last_change() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_millis(20), Duration::from_millis(200));
        assert_eq!(c.deadline(), None);
        c.change(t0);
        assert_eq!(c.deadline(), Some(t0 + Duration::from_millis(20)));
        c.change(t0 + Duration::from_millis(10));
        assert_eq!(c.deadline(), Some(t0 + Duration::from_millis(30)));
        c.reset();
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn a_steady_stream_of_changes_still_acts_at_the_max_wait() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_millis(20), Duration::from_millis(100));
        for ms in (0..500).step_by(5) {
            c.change(t0 + Duration::from_millis(ms));
            assert!(c.deadline().unwrap() <= t0 + Duration::from_millis(100));
        }
    }
}
