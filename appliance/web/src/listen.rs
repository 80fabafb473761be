//! Where the listening sockets come from.
//!
//! In production systemd binds port 443 itself (as PID 1) and passes the socket to the daemon
//! (`LISTEN_FDS`/`LISTEN_PID`, see `sd_listen_fds(3)`), so the daemon runs without
//! `CAP_NET_BIND_SERVICE`. In development, or without a socket unit, the daemon binds the
//! configured addresses itself.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use listenfd::ListenFd;
use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel queues per listener before the accept loop takes them.
/// Devices woken by a push burst connect together; a short queue would drop them.
const BACKLOG: u32 = 1024;

/// How [`take_listeners`] obtained its listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenSource {
    /// Passed in by the service manager (socket activation); the bind addresses were ignored.
    SocketActivation {
        /// Number of sockets passed.
        count: usize,
    },
    /// Bound by this process to the addresses given.
    Bound {
        /// Number of addresses bound.
        count: usize,
    },
}

impl fmt::Display for ListenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SocketActivation { count } => {
                write!(f, "{count} socket(s) passed by the service manager")
            }
            Self::Bound { count } => write!(f, "{count} socket(s) bound by the daemon"),
        }
    }
}

/// Takes the TCP listeners this process should serve on.
///
/// If `LISTEN_FDS` (with a `LISTEN_PID` naming this process, or none) says sockets were
/// passed, every passed socket is taken and must be a TCP listener; `bind` is then ignored.
/// The variables are removed from the environment, so a second call binds `bind` instead.
/// Otherwise each address in `bind` is bound with `SO_REUSEADDR` (a restart does not wait for
/// old connections in TIME_WAIT). Note that on Linux a `[::]` address also accepts IPv4
/// unless `net.ipv6.bindv6only` is set, so listing it together with `0.0.0.0` on the same port
/// fails with "address in use".
///
/// Must be called inside a Tokio runtime; the listeners are non-blocking and registered with
/// it.
pub fn take_listeners(bind: &[SocketAddr]) -> io::Result<(Vec<TcpListener>, ListenSource)> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other(
            "take_listeners must be called from within a Tokio runtime",
        ));
    }

    let mut passed = ListenFd::from_env();
    let count = passed.len();
    if count > 0 {
        let mut listeners = Vec::with_capacity(count);
        for index in 0..count {
            let listener = passed
                .take_tcp_listener(index)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "socket number {index} passed by the service manager is not a TCP \
                             listener: {e}"
                        ),
                    )
                })?
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "socket number {index} passed by the service manager was already taken"
                    ))
                })?;
            listener.set_nonblocking(true)?;
            listeners.push(TcpListener::from_std(listener)?);
        }
        return Ok((listeners, ListenSource::SocketActivation { count }));
    }

    if bind.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no sockets were passed by the service manager and no listen address is configured",
        ));
    }
    let listeners = bind
        .iter()
        .map(|addr| {
            bind_one(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let count = listeners.len();
    Ok((listeners, ListenSource::Bound { count }))
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
