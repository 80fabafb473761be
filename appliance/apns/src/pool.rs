//! The long-lived connections to the push service.
//!
//! Each of `connections` slots holds at most one HTTP/2 connection, opened on demand. A
//! request goes to the slot with the fewest requests assigned (waiting to connect, waiting
//! for a stream, or in flight); on a tie an open connection wins, so a second connection is
//! opened only when the first one is busy. Opening is single-flight per slot:
//! callers that queued behind a failed attempt get its error instead of each dialling again,
//! which keeps an outage from turning into a connect storm of one dial per waiting push.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use rustls::client::ClientConfig;
use tracing::{debug, info};

use crate::connect::{self, ConnShared, ConnectSettings};
use crate::tls;

/// The TLS identity connections are opened with. A new one gets a new generation, and
/// connections of older generations are not used again.
pub(crate) struct TlsIdentity {
    pub(crate) generation: u64,
    pub(crate) config: Arc<ClientConfig>,
}

/// One open connection.
pub(crate) struct Conn {
    pub(crate) id: u64,
    generation: u64,
    sender: SendRequest<Full<Bytes>>,
    pub(crate) shared: Arc<ConnShared>,
}

impl Conn {
    fn usable(&self, generation: u64) -> bool {
        self.generation == generation && !self.sender.is_closed()
    }

    /// A handle to send one request with.
    pub(crate) fn sender(&self) -> SendRequest<Full<Bytes>> {
        self.sender.clone()
    }
}

/// Why no connection could be had. Cloned to every caller that waited for the attempt.
#[derive(Debug, Clone)]
pub(crate) struct ConnectFailure {
    pub(crate) message: String,
    /// Set when the server refused the push certificate during the handshake.
    pub(crate) certificate_refused: Option<String>,
}

/// A connection handed to one request; its slot counts the request as load until dropped.
pub(crate) struct Lease<'a> {
    pub(crate) conn: Arc<Conn>,
    _load: LoadGuard<'a>,
}

struct LoadGuard<'a>(&'a AtomicUsize);

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Arc<Conn>>>,
    /// Requests assigned to this slot and not finished.
    load: AtomicUsize,
    /// Held while opening; remembers the last failure and when it happened.
    connecting: tokio::sync::Mutex<Option<(Instant, ConnectFailure)>>,
}

impl Slot {
    fn live(&self) -> std::sync::MutexGuard<'_, Option<Arc<Conn>>> {
        // An Option swap cannot be left half-done by a panic.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn usable(&self, generation: u64) -> Option<Arc<Conn>> {
        self.live()
            .as_ref()
            .filter(|c| c.usable(generation))
            .map(Arc::clone)
    }
}

pub(crate) struct Pool {
    settings: ConnectSettings,
    stream_cap: usize,
    slots: Vec<Slot>,
    next_id: AtomicU64,
}

impl Pool {
    pub(crate) fn new(settings: ConnectSettings, connections: usize, stream_cap: usize) -> Self {
        Pool {
            settings,
            stream_cap: stream_cap.max(1),
            slots: (0..connections.max(1)).map(|_| Slot::default()).collect(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Connections opened so far (the first has id 1).
    pub(crate) fn opened(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed) - 1
    }

    /// A connection for `identity` on the least busy slot, opening one if needed. The lease
    /// counts as load on that slot until dropped.
    pub(crate) async fn get(&self, identity: &TlsIdentity) -> Result<Lease<'_>, ConnectFailure> {
        let mut best: Option<(&Slot, usize, bool)> = None;
        for slot in &self.slots {
            let load = slot.load.load(Ordering::Acquire);
            let open = slot.usable(identity.generation).is_some();
            let better = match best {
                None => true,
                Some((_, best_load, best_open)) => {
                    load < best_load || (load == best_load && open && !best_open)
                }
            };
            if better {
                best = Some((slot, load, open));
            }
        }
        let Some((slot, _, _)) = best else {
            return Err(ConnectFailure {
                message: "the connection pool has no slots".into(),
                certificate_refused: None,
            });
        };
        slot.load.fetch_add(1, Ordering::AcqRel);
        let load = LoadGuard(&slot.load);
        let conn = match slot.usable(identity.generation) {
            Some(conn) => conn,
            None => self.open_in(slot, identity).await?,
        };
        Ok(Lease { conn, _load: load })
    }

    async fn open_in(
        &self,
        slot: &Slot,
        identity: &TlsIdentity,
    ) -> Result<Arc<Conn>, ConnectFailure> {
        let requested = Instant::now();
        let mut connecting = slot.connecting.lock().await;
        if let Some(conn) = slot.usable(identity.generation) {
            return Ok(conn);
        }
        if let Some((at, failure)) = &*connecting {
            if *at >= requested {
                return Err(failure.clone());
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ConnShared::new(self.stream_cap));
        match connect::open(
            &self.settings,
            Arc::clone(&identity.config),
            Arc::clone(&shared),
            id,
        )
        .await
        {
            Ok(sender) => {
                info!(conn_id = id, target = %self.settings.endpoint.authority(), via_proxy = self.settings.proxy.is_some(), "connected to the push service");
                let conn = Arc::new(Conn {
                    id,
                    generation: identity.generation,
                    sender,
                    shared,
                });
                *slot.live() = Some(Arc::clone(&conn));
                *connecting = None;
                Ok(conn)
            }
            Err(e) => {
                let failure = ConnectFailure {
                    message: e.to_string(),
                    certificate_refused: tls::certificate_refusal(&e),
                };
                debug!(conn_id = id, error = %failure.message, "cannot connect to the push service");
                *connecting = Some((Instant::now(), failure.clone()));
                Err(failure)
            }
        }
    }

    /// Stops handing out `conn`: the next request opens a new connection. Streams already
    /// on it finish there.
    pub(crate) fn retire(&self, conn: &Conn) {
        for slot in &self.slots {
            let mut live = slot.live();
            if live.as_ref().is_some_and(|c| c.id == conn.id) {
                debug!(conn_id = conn.id, "retiring push connection");
                *live = None;
            }
        }
    }

    /// Retires every connection (the identity changed).
    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            *slot.live() = None;
        }
    }
}
