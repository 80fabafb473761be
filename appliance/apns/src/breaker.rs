//! The circuit breaker: after `failure_threshold` call-level failures in a row, pushes fail
//! fast for `open_for`; then one probe push decides whether to close again.
//!
//! Failing fast matters because a push batch can hold tens of thousands of devices: without
//! it, an APNs outage costs every one of them the full retry schedule.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use mdm_service::ports::{CircuitState, Timestamp};
use tracing::{info, warn};

use crate::config::BreakerPolicy;

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        since: Timestamp,
        retry_at: Timestamp,
        until: Instant,
        last_error: String,
    },
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
}

/// Permission to make one call. Report how it went with one of the consuming methods;
/// dropping an unreported probe (a cancelled push) lets the next push probe instead.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Ticket<'_> {
    /// Whether this call is the half-open probe.
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    /// The push service answered normally (including "this token is dead").
    pub(crate) fn success(mut self) {
        self.settled = true;
        self.breaker.on_success(self.probe);
    }

    /// The service, the connection or the certificate failed.
    pub(crate) fn failure(mut self, reason: &str) {
        self.settled = true;
        self.breaker.on_failure(self.probe, reason);
    }

    /// The outcome says nothing about the service's health (a 429 for one device, a
    /// request this client got wrong).
    pub(crate) fn neutral(mut self) {
        self.settled = true;
        if self.probe {
            self.breaker.release_probe();
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.release_probe();
        }
    }
}

impl Breaker {
    pub(crate) fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy: BreakerPolicy {
                failure_threshold: policy.failure_threshold.max(1),
                open_for: policy.open_for,
            },
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a call through, or says why not.
    pub(crate) fn admit(&self) -> Result<Ticket<'_>, String> {
        let mut state = self.lock();
        let probe = match &mut *state {
            State::Closed { .. } => false,
            State::Open {
                until,
                retry_at,
                last_error,
                ..
            } => {
                if Instant::now() < *until {
                    return Err(format!(
                        "circuit open after repeated failures, next attempt at {} ms since the epoch; last error: {last_error}",
                        retry_at.0
                    ));
                }
                info!("push circuit half-open: letting one probe through");
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing } => {
                if *probing {
                    return Err(
                        "circuit half-open: waiting for the probe push before sending more"
                            .to_string(),
                    );
                }
                *probing = true;
                true
            }
        };
        Ok(Ticket {
            breaker: self,
            probe,
            settled: false,
        })
    }

    /// Why a call admitted earlier should not retry now, if it should not.
    pub(crate) fn blocks_retry(&self, ticket: &Ticket<'_>) -> Option<String> {
        if ticket.probe {
            return None;
        }
        match &*self.lock() {
            State::Closed { .. } => None,
            State::Open { last_error, .. } => Some(format!(
                "circuit opened while retrying; last error: {last_error}"
            )),
            State::HalfOpen { .. } => {
                Some("circuit half-open: retries wait for the probe push".to_string())
            }
        }
    }

    fn on_success(&self, probe: bool) {
        let mut state = self.lock();
        match &mut *state {
            State::Closed { failures } => *failures = 0,
            State::HalfOpen { .. } => {
                info!(probe, "push circuit closed: the push service answers again");
                *state = State::Closed { failures: 0 };
            }
            // A call admitted before the circuit opened; the probe decides.
            State::Open { .. } => {}
        }
    }

    fn on_failure(&self, probe: bool, reason: &str) {
        let mut state = self.lock();
        let open = match &mut *state {
            State::Closed { failures } => {
                *failures += 1;
                *failures >= self.policy.failure_threshold
            }
            State::HalfOpen { .. } => probe,
            State::Open { last_error, .. } => {
                *last_error = reason.to_string();
                false
            }
        };
        if open {
            let since = Timestamp::now();
            let retry_at = since.plus(self.policy.open_for);
            warn!(
                reason,
                open_for_ms = self.policy.open_for.as_millis() as u64,
                "push circuit open: pushes fail fast until the push service recovers"
            );
            *state = State::Open {
                since,
                retry_at,
                until: Instant::now() + self.policy.open_for,
                last_error: reason.to_string(),
            };
        }
    }

    fn release_probe(&self) {
        if let State::HalfOpen { probing } = &mut *self.lock() {
            *probing = false;
        }
    }

    /// Back to closed: a new identity deserves a fresh start.
    pub(crate) fn reset(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    pub(crate) fn circuit(&self) -> CircuitState {
        match &*self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open {
                since,
                retry_at,
                last_error,
                ..
            } => CircuitState::Open {
                since: *since,
                retry_at: *retry_at,
                last_error: last_error.clone(),
            },
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(threshold: u32, open_ms: u64) -> Breaker {
        Breaker::new(BreakerPolicy {
            failure_threshold: threshold,
            open_for: Duration::from_millis(open_ms),
        })
    }

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let b = breaker(3, 60_000);
        b.admit().unwrap().failure("500");
        b.admit().unwrap().failure("500");
        b.admit().unwrap().success();
        b.admit().unwrap().failure("500");
        b.admit().unwrap().failure("500");
        assert_eq!(b.circuit(), CircuitState::Closed);
        b.admit().unwrap().neutral();
        b.admit().unwrap().failure("503 Shutdown");
        match b.circuit() {
            CircuitState::Open {
                last_error,
                since,
                retry_at,
            } => {
                assert_eq!(last_error, "503 Shutdown");
                assert!(retry_at.0 - since.0 >= 60_000);
            }
            other => panic!("expected open, got {other:?}"),
        }
        let refused = b.admit().unwrap_err();
        assert!(refused.contains("circuit open"), "{refused}");
        assert!(refused.contains("503 Shutdown"), "{refused}");
    }

    #[test]
    fn half_open_admits_one_probe_and_closes_on_success() {
        let b = breaker(1, 0);
        b.admit().unwrap().failure("boom");
        let probe = b.admit().unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.circuit(), CircuitState::HalfOpen);
        assert!(b.admit().unwrap_err().contains("half-open"));
        probe.success();
        assert_eq!(b.circuit(), CircuitState::Closed);
        assert!(!b.admit().unwrap().is_probe());
    }

    #[test]
    fn failed_probe_reopens_and_dropped_probe_frees_the_slot() {
        let b = breaker(1, 0);
        b.admit().unwrap().failure("boom");
        b.admit().unwrap().failure("again");
        assert!(matches!(b.circuit(), CircuitState::Open { .. }));
        // open_for is zero: the next admission is a probe; dropping it unreported lets the
        // next one probe.
        drop(b.admit().unwrap());
        assert_eq!(b.circuit(), CircuitState::HalfOpen);
        let probe = b.admit().unwrap();
        assert!(probe.is_probe());
        probe.neutral();
        assert!(b.admit().unwrap().is_probe());
    }

    #[test]
    fn retries_stop_when_the_circuit_opens() {
        let b = breaker(1, 60_000);
        let running = b.admit().unwrap();
        assert!(b.blocks_retry(&running).is_none());
        b.admit().unwrap().failure("down");
        assert!(b.blocks_retry(&running).unwrap().contains("down"));
        b.reset();
        assert!(b.blocks_retry(&running).is_none());
        assert_eq!(b.circuit(), CircuitState::Closed);
    }
}
