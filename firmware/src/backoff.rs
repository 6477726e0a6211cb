//! Exponential back-off between reconnect attempts, forgiven only by a connection that lasted.

use std::time::{Duration, Instant};

/// How long a (re)opened output or connection must keep working before its back-off starts over
/// from the first step. An open that succeeds and fails again at once (a reader that never reads,
/// a broker that drops the session after accepting it) keeps growing its wait instead of
/// retrying every second forever.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The wait before the next attempt: doubles with every failure up to a maximum, and returns to
/// the first step only after a connection stayed up for [`HEALTHY_AFTER`].
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    healthy_after: Duration,
    next: Duration,
    up_since: Option<Instant>,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`, forgiven after [`HEALTHY_AFTER`] of health.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self::forgiving_after(first, max, HEALTHY_AFTER)
    }

    /// Like [`Backoff::new`] with another healthy period (tests use a short one).
    pub fn forgiving_after(first: Duration, max: Duration, healthy_after: Duration) -> Self {
        Self {
            first,
            max,
            healthy_after,
            next: first,
            up_since: None,
        }
    }

    /// Records that an attempt succeeded: the connection is up from now.
    pub fn connected(&mut self) {
        self.up_since = Some(Instant::now());
    }

    /// Records a failure (of an attempt or of a connection) and returns how long to wait before
    /// the next attempt.
    pub fn failed(&mut self) -> Duration {
        if self.up_since.take().is_some_and(|t| t.elapsed() >= self.healthy_after) {
            self.next = self.first;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_connection_that_fails_at_once_keeps_growing_the_wait() {
        let mut b = Backoff::new(S, 8 * S);
        let mut waits = Vec::new();
        for _ in 0..5 {
            b.connected();
            waits.push(b.failed().as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 8]);
    }

    #[test]
    fn a_connection_that_lasted_starts_the_wait_over() {
        let mut b = Backoff::forgiving_after(S, 8 * S, Duration::from_millis(30));
        assert_eq!((b.failed(), b.failed(), b.failed()), (S, 2 * S, 4 * S));
        b.connected();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.failed(), S, "healthy long enough: forgiven");
        assert_eq!(b.failed(), 2 * S, "failed attempts without a connection grow the wait");
    }
}
