//! Exponential backoff with full jitter, bounded by attempts and total waiting.

use std::time::Duration;

use mdm_service::ports::AbmError;
use tracing::debug;

use crate::config::RetryPolicy;

/// The retry state of one call.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    /// Attempts made so far, the one that just failed included.
    attempts: u32,
    waited: Duration,
}

impl Backoff {
    /// The state once the first attempt is under way.
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            attempts: 1,
            waited: Duration::ZERO,
        }
    }

    /// The delay before the next attempt, or `None` when no attempt is left: the attempts
    /// are used up, or the delay would take the total waiting past its bound. `retry_after`
    /// (from Apple) replaces the computed delay.
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts.max(1) {
            return None;
        }
        let delay = retry_after.unwrap_or_else(|| full_jitter(&self.policy, self.attempts));
        let total = self.waited.checked_add(delay)?;
        if total > self.policy.max_total_wait {
            return None;
        }
        self.waited = total;
        self.attempts += 1;
        Some(delay)
    }

    /// Waits before the next attempt, or gives `error` back when no attempt is left.
    pub(crate) async fn pause(
        &mut self,
        error: AbmError,
        retry_after: Option<Duration>,
    ) -> Result<(), AbmError> {
        match self.next_delay(retry_after) {
            Some(delay) => {
                debug!(
                    attempt = self.attempts,
                    delay_ms = delay.as_millis(),
                    code = error.code(),
                    "ABM call failed; retrying"
                );
                tokio::time::sleep(delay).await;
                Ok(())
            }
            None => Err(error),
        }
    }
}

/// A random delay between zero and `min(base * 2^(retry-1), max)` for retry number `retry`
/// (1-based).
fn full_jitter(policy: &RetryPolicy, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let cap = policy
        .base_delay
        .checked_mul(factor)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay);
    let mut bytes = [0u8; 8];
    // Without randomness the delay is just not jittered; that is no reason to fail a call.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return cap;
    }
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    cap.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_total_wait: Duration::from_secs(3600),
        }
    }

    #[test]
    fn jitter_stays_under_the_exponential_cap() {
        let p = policy();
        for _ in 0..200 {
            assert!(full_jitter(&p, 1) <= Duration::from_millis(100));
            assert!(full_jitter(&p, 3) <= Duration::from_millis(400));
            assert!(full_jitter(&p, 9) <= Duration::from_millis(1000));
            assert!(full_jitter(&p, 200) <= Duration::from_millis(1000));
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| full_jitter(&p, 5)).collect();
        assert!(samples.len() > 1, "the delay is random");
    }

    #[test]
    fn attempts_are_bounded() {
        let mut b = Backoff::new(RetryPolicy {
            max_attempts: 3,
            ..policy()
        });
        assert!(b.next_delay(None).is_some());
        assert!(b.next_delay(None).is_some());
        assert_eq!(b.next_delay(None), None);
        assert_eq!(b.next_delay(Some(Duration::ZERO)), None);

        let mut once = Backoff::new(RetryPolicy {
            max_attempts: 0,
            ..policy()
        });
        assert_eq!(
            once.next_delay(None),
            None,
            "at least one attempt, no retry"
        );
    }

    #[test]
    fn total_waiting_is_bounded_and_retry_after_wins() {
        let mut b = Backoff::new(RetryPolicy {
            max_total_wait: Duration::from_secs(10),
            ..policy()
        });
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(4))),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(6))),
            Some(Duration::from_secs(6))
        );
        // 10 s waited: even a zero Retry-After is fine, anything more is not.
        assert_eq!(b.next_delay(Some(Duration::ZERO)), Some(Duration::ZERO));
        assert_eq!(b.next_delay(Some(Duration::from_secs(1))), None);

        let mut b = Backoff::new(RetryPolicy {
            max_total_wait: Duration::from_secs(10),
            ..policy()
        });
        assert_eq!(b.next_delay(Some(Duration::from_secs(3600))), None);
    }
}
