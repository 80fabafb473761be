//! Runs each connection's sync at its interval and its assignment retries when they fall due,
//! and warns (once per change) about tokens that need an admin.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::connections::TokenState;
use super::AbmService;
use crate::ports::{AbmConnectionRecord, AbmConnector, Store, Timestamp};

/// The scheduler looks again at least this often (token expiry warnings, clock changes).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// After a failed sync the next attempt comes this soon, or at the interval if shorter.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// When a connection's next automatic sync is due; `None` when automatic sync is off.
pub fn next_sync_at(rec: &AbmConnectionRecord) -> Option<Timestamp> {
    if rec.token.is_none() || rec.sync.interval_seconds == 0 {
        return None;
    }
    let interval = Duration::from_secs(rec.sync.interval_seconds);
    let Some(last) = &rec.sync.last_run else {
        return Some(Timestamp(0));
    };
    let ended = last.finished_at.unwrap_or(last.started_at);
    let wait = if last.error.is_some() {
        interval.min(RETRY_AFTER_FAILURE)
    } else {
        interval
    };
    Some(ended.plus(wait))
}

/// Runs until `stop` turns true.
pub async fn run_abm_scheduler<S: Store, C: AbmConnector>(
    service: AbmService<S, C>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported: HashMap<String, TokenState> = HashMap::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let now = Timestamp::now();
        let mut wake_at = now.plus(MAX_SLEEP);
        let connections = match service.connections() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot list ABM connections");
                Vec::new()
            }
        };
        for rec in connections {
            let status = service.status_of(&rec);
            let before = reported.insert(rec.name.clone(), status.state);
            if before != Some(status.state) {
                if status.state.needs_attention() {
                    warn!(
                        connection = %rec.name,
                        state = status.state.as_str(),
                        reason = %status.reason,
                        action = status.action.as_deref().unwrap_or(""),
                        "ABM connection needs attention"
                    );
                } else if before.is_some() {
                    info!(connection = %rec.name, state = status.state.as_str(), "ABM connection is active again");
                }
            }
            if rec.token.is_none() || service.is_busy(&rec.name) {
                continue;
            }
            let sync_due = next_sync_at(&rec);
            let assign_due = match service.store().abm_next_due(&rec.name) {
                Ok(t) => t,
                Err(e) => {
                    warn!(connection = %rec.name, error = %e, "cannot read due assignments");
                    None
                }
            };
            if sync_due.is_some_and(|t| t <= now) {
                let svc = service.clone();
                let name = rec.name.clone();
                tokio::spawn(async move {
                    // Failures are recorded on the connection and logged by the sync itself.
                    let _ = svc.sync_now(&name, false).await;
                    svc.wake_scheduler();
                });
                continue;
            }
            if assign_due.is_some_and(|t| t <= now) {
                let svc = service.clone();
                let name = rec.name.clone();
                tokio::spawn(async move {
                    if let Err(e) = svc.assign_due(&name).await {
                        warn!(connection = %name, error = %e, "ABM assignment job failed");
                    }
                    svc.wake_scheduler();
                });
                continue;
            }
            for t in [sync_due, assign_due].into_iter().flatten() {
                if t < wake_at {
                    wake_at = t;
                }
            }
        }
        let sleep = Duration::from_millis(
            u64::try_from(wake_at.0.saturating_sub(Timestamp::now().0)).unwrap_or(0),
        )
        .max(Duration::from_millis(50));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = service.inner.wake.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{AbmProblem, AbmSyncRun, AbmSyncState, AbmTokenRecord};

    fn rec(interval: u64) -> AbmConnectionRecord {
        AbmConnectionRecord {
            token: Some(AbmTokenRecord {
                consumer_key: "CK".into(),
                credentials_sealed: vec![],
                expires_at: Timestamp(i64::MAX),
                uploaded_at: Timestamp(0),
                generation: 1,
            }),
            sync: AbmSyncState {
                interval_seconds: interval,
                ..AbmSyncState::default()
            },
            ..crate::abm::test_connection("c")
        }
    }

    fn run(finished: i64, failed: bool) -> AbmSyncRun {
        AbmSyncRun {
            started_at: Timestamp(finished - 10),
            finished_at: Some(Timestamp(finished)),
            full: false,
            pages: 1,
            added: 0,
            modified: 0,
            deleted: 0,
            error: failed.then(|| AbmProblem {
                code: "ABM_UNREACHABLE".into(),
                message: "x".into(),
                since: Timestamp(finished),
                last_at: Timestamp(finished),
            }),
        }
    }

    #[test]
    fn sync_times() {
        assert_eq!(next_sync_at(&rec(0)), None);
        let mut r = rec(3600);
        assert_eq!(next_sync_at(&r), Some(Timestamp(0)));
        r.sync.last_run = Some(run(1_000, false));
        assert_eq!(next_sync_at(&r), Some(Timestamp(3_601_000)));
        r.sync.last_run = Some(run(1_000, true));
        assert_eq!(next_sync_at(&r), Some(Timestamp(301_000)));
        r.token = None;
        assert_eq!(next_sync_at(&r), None);
    }
}
