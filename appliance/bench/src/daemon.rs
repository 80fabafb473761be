//! The daemon under test: `mdmd serve --dev` as a child process on 127.0.0.1, so that its CPU
//! time and memory are its own and can be read from `/proc`.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::procfs::{self, CpuTicks, Memory};

/// How long the daemon may take to start (first start generates the CA and keys).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd daemon may take to drain and close its database.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Daemon::settle`] waits for a quiet spell at most, and the spell it looks for:
/// a step in which the daemon used at most `QUIET_TICKS` clock ticks (a tenth of a core at
/// the usual 100 ticks per second).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE_STEP: Duration = Duration::from_millis(200);
const QUIET_TICKS: u64 = 2;

/// What [`Daemon::settle`] waited for.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// Wall time until the daemon was quiet (or the timeout).
    pub wall: Duration,
    /// The daemon's CPU meanwhile, in clock ticks.
    pub server_ticks: u64,
    /// False if the timeout came first.
    pub quiet: bool,
}

/// The `mdmd` binary next to this executable (`target/release/` when built by scripts/bench).
pub fn binary_next_to_self() -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::io("locate this executable"))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(dir.join("mdmd"))
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the daemon binds it right after).
pub fn free_loopback_addr() -> Result<SocketAddr, BenchError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("find a free loopback port"))?;
    listener
        .local_addr()
        .map_err(BenchError::io("find a free loopback port"))
}

/// Where the daemon sends its pushes. Never Apple's service: a benchmark must not wake real
/// devices or spend the push certificate's reputation, so only loopback URLs are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushService {
    /// A closed loopback port: every push fails at once (phases 1 to 3, which measure device
    /// traffic, not pushing).
    Unreachable,
    /// An APNs simulator on loopback.
    Simulator {
        /// Its base URL, `https://127.0.0.1:PORT` or `https://[::1]:PORT`.
        url: String,
        /// PEM file of the CA its TLS certificate chains to.
        ca_file: PathBuf,
    },
}

/// The closed port [`PushService::Unreachable`] points at (TCP port 9, "discard", is not
/// served on any machine this runs on; a refused connection fails fast).
const UNREACHABLE_PUSH_URL: &str = "https://127.0.0.1:9";

impl PushService {
    /// The `mdmd serve` arguments that select this push service. Fails for a URL that is not
    /// on the loopback interface.
    pub fn args(&self) -> Result<Vec<std::ffi::OsString>, BenchError> {
        match self {
            PushService::Unreachable => Ok(vec!["--apns-url".into(), UNREACHABLE_PUSH_URL.into()]),
            PushService::Simulator { url, ca_file } => {
                let rest = url.strip_prefix("https://").unwrap_or_default();
                let loopback = ["127.0.0.1:", "[::1]:"].iter().any(|host| {
                    rest.strip_prefix(host).is_some_and(|port| {
                        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                    })
                });
                if !loopback {
                    return Err(BenchError::Options(format!(
                        "the push service for a benchmark must be a simulator on loopback \
                         (https://127.0.0.1:PORT), not {url}"
                    )));
                }
                Ok(vec![
                    "--apns-url".into(),
                    url.into(),
                    "--apns-ca".into(),
                    ca_file.into(),
                ])
            }
        }
    }
}

/// A running `mdmd` child process.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Where it sends pushes.
    pub push: PushService,
}

impl Daemon {
    /// Starts `binary serve --dev` on `data_dir` and `addr`, logging to `log` (appended),
    /// pushing to `push`, and waits until it listens.
    pub fn start(
        binary: &Path,
        data_dir: &Path,
        addr: SocketAddr,
        log: &Path,
        push: &PushService,
    ) -> Result<Daemon, BenchError> {
        let push_args = push.args()?;
        if !binary.is_file() {
            return Err(BenchError::DaemonMissing(binary.to_path_buf()));
        }
        let ready_file = data_dir.join(mdmd::LISTEN_ADDR_FILE);
        // A restart finds the previous run's file; only a fresh one means "ready".
        match std::fs::remove_file(&ready_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BenchError::io(format!("remove {}", ready_file.display()))(
                    e,
                ))
            }
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(BenchError::io(format!("open {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(BenchError::io(format!("open {}", log.display())))?;
        let child = Command::new(binary)
            .args(["serve", "--dev", "--log-format", "text"])
            .args(push_args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            // As systemd/mdmd.service runs it.
            .env("MALLOC_ARENA_MAX", "2")
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .env("MALLOC_TRIM_THRESHOLD_", "131072")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(BenchError::io(format!("start {}", binary.display())))?;
        let mut daemon = Daemon {
            pid: child.id(),
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            push: push.clone(),
        };
        daemon.wait_ready(&ready_file)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, ready_file: &Path) -> Result<(), BenchError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            if ready_file.exists() && TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::DaemonStart {
                    reason: format!("not listening on {} after {START_TIMEOUT:?}", self.addr),
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon if it still runs (see [`Daemon::stop`]) and starts `binary` again on
    /// the same data directory, address, log and push service.
    pub fn restart(&mut self, binary: &Path) -> Result<(), BenchError> {
        self.stop()?;
        *self = Daemon::start(binary, &self.data_dir, self.addr, &self.log, &self.push)?;
        Ok(())
    }

    /// Fails if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::DaemonExited {
                status: status.to_string(),
                log: self.log.clone(),
            }),
            Err(e) => Err(BenchError::io("check on the daemon process")(e)),
        }
    }

    /// `https://127.0.0.1:PORT`, the base URL `--dev` derives from the listen address.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The first admin API token, written by the daemon on first start.
    pub fn admin_token(&self) -> Result<String, BenchError> {
        let path = self.data_dir.join(mdmd::ADMIN_TOKEN_FILE);
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(BenchError::io(format!("read {}", path.display())))
    }

    /// The daemon's CPU time so far.
    pub fn cpu(&self) -> Result<CpuTicks, BenchError> {
        procfs::cpu_ticks(Some(self.pid))
    }

    /// Waits until the daemon is quiet, so that work an admin call left running in the
    /// background (queueing a command pushes every target) is not counted in what comes
    /// next.
    pub fn settle(&mut self) -> Result<Settled, BenchError> {
        let started = Instant::now();
        let first = self.cpu()?.own();
        let mut last = first;
        loop {
            std::thread::sleep(SETTLE_STEP);
            self.check_alive()?;
            let now = self.cpu()?.own();
            let quiet = now.saturating_sub(last) <= QUIET_TICKS;
            last = now;
            if quiet || started.elapsed() >= SETTLE_TIMEOUT {
                return Ok(Settled {
                    wall: started.elapsed(),
                    server_ticks: now.saturating_sub(first),
                    quiet,
                });
            }
        }
    }

    /// The daemon's memory now.
    pub fn memory(&self) -> Result<Memory, BenchError> {
        procfs::memory(Some(self.pid))
    }

    /// The size of its database file, MiB.
    pub fn database_mib(&self) -> Result<f64, BenchError> {
        let path = self.data_dir.join(mdmd::DB_FILE);
        let meta =
            std::fs::metadata(&path).map_err(BenchError::io(format!("stat {}", path.display())))?;
        Ok(meta.len() as f64 / (1024.0 * 1024.0))
    }

    /// Stops the daemon as systemd would (SIGTERM, then wait for it to drain and close its
    /// database), falling back to SIGKILL after a timeout. Stopping a stopped daemon does
    /// nothing.
    pub fn stop(&mut self) -> Result<(), BenchError> {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return Ok(());
        }
        // std can only send SIGKILL. The shell's `kill` builtin sends SIGTERM without unsafe
        // FFI here, and `sh` exists even where procps' kill(1) is not installed.
        let termed = Command::new("sh")
            .args(["-c", "kill -TERM \"$0\"", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => return Err(BenchError::io("wait for the daemon to stop")(e)),
                }
            }
        }
        self.child
            .kill()
            .map_err(BenchError::io("kill the daemon"))?;
        self.child
            .wait()
            .map_err(BenchError::io("wait for the daemon to stop"))?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only reached when a run fails midway: do not leave a daemon behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_only_ever_go_to_loopback() {
        let args = |push: PushService| {
            push.args().map(|a| {
                a.into_iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            args(PushService::Unreachable).unwrap(),
            ["--apns-url", "https://127.0.0.1:9"]
        );
        let sim = |url: &str| PushService::Simulator {
            url: url.into(),
            ca_file: PathBuf::from("/tmp/ca.pem"),
        };
        assert_eq!(
            args(sim("https://127.0.0.1:41234")).unwrap(),
            [
                "--apns-url",
                "https://127.0.0.1:41234",
                "--apns-ca",
                "/tmp/ca.pem"
            ]
        );
        assert!(args(sim("https://[::1]:8443")).is_ok());
        for refused in [
            "https://api.push.apple.com",
            "https://api.push.apple.com:443",
            "https://127.0.0.1.example.com:443",
            "https://127.0.0.1:443/3/device",
            "https://127.0.0.1:",
            "https://127.0.0.2:443",
            "http://127.0.0.1:443",
            "127.0.0.1:443",
        ] {
            assert!(
                matches!(args(sim(refused)), Err(BenchError::Options(_))),
                "{refused} was accepted"
            );
        }
    }
}
