//! Limits the streams open on one connection to what both sides allow.
//!
//! The server announces `SETTINGS_MAX_CONCURRENT_STREAMS` after the handshake and may change
//! it at any time; the HTTP/2 library would queue requests above it internally, and that
//! waiting would count against the request timeout. Waiting here instead keeps the timeout
//! about the server's answer, and tells the pool how busy each connection is.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct StreamGate {
    in_flight: AtomicUsize,
    /// This client's own cap.
    cap: usize,
    /// The server's latest `SETTINGS_MAX_CONCURRENT_STREAMS`.
    server_limit: AtomicUsize,
    closed: AtomicBool,
    notify: Notify,
}

/// One open stream; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct StreamPermit<'a> {
    gate: &'a StreamGate,
}

impl Drop for StreamPermit<'_> {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.gate.notify.notify_one();
    }
}

impl StreamGate {
    /// A gate for at most `cap` streams, admitting one until the connection reports the
    /// server's limit.
    pub(crate) fn new(cap: usize) -> Self {
        StreamGate {
            in_flight: AtomicUsize::new(0),
            cap: cap.max(1),
            server_limit: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    fn limit(&self) -> usize {
        // A server limit of 0 means "no new streams for now" (RFC 9113 §6.5.2); waiting
        // for it to rise is right, and a closing connection wakes everyone anyway.
        self.cap.min(self.server_limit.load(Ordering::Acquire))
    }

    /// The streams currently open through this gate.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Records the server's current limit, waking waiters when it grew.
    pub(crate) fn set_server_limit(&self, limit: usize) {
        let old = self.server_limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            self.notify.notify_waiters();
        }
    }

    /// The connection is gone: everyone waiting gets `None` and picks another connection.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Waits for a free stream slot; `None` once the connection has closed.
    pub(crate) async fn acquire(&self) -> Option<StreamPermit<'_>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before checking, so a release between the check and the await
            // is not missed.
            notified.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            let current = self.in_flight.load(Ordering::Acquire);
            if current < self.limit() {
                if self
                    .in_flight
                    .compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Some(StreamPermit { gate: self });
                }
                continue;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn admits_up_to_the_smaller_limit_and_wakes_on_release() {
        let gate = Arc::new(StreamGate::new(3));
        gate.set_server_limit(2);
        let a = gate.acquire().await.unwrap();
        let _b = gate.acquire().await.unwrap();
        assert_eq!(gate.in_flight(), 2);
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.acquire().await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a third stream must wait");
        drop(a);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap());
    }

    #[tokio::test]
    async fn one_stream_until_the_server_limit_is_known() {
        let gate = Arc::new(StreamGate::new(100));
        let _a = gate.acquire().await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(50), gate.acquire()).await;
        assert!(
            second.is_err(),
            "a second stream must wait for the server's SETTINGS"
        );
        gate.set_server_limit(500);
        let _b = gate.acquire().await.unwrap();
        assert_eq!(gate.in_flight(), 2);
    }

    #[tokio::test]
    async fn raising_the_server_limit_wakes_waiters() {
        let gate = Arc::new(StreamGate::new(10));
        gate.set_server_limit(1);
        let _a = gate.acquire().await.unwrap();
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.acquire().await.map(|_| ()).is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        gate.set_server_limit(5);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap());
    }

    #[tokio::test]
    async fn closing_releases_waiters_empty_handed() {
        let gate = Arc::new(StreamGate::new(1));
        gate.set_server_limit(usize::MAX);
        let _a = gate.acquire().await.unwrap();
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.acquire().await.is_none() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.close();
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap());
    }
}
