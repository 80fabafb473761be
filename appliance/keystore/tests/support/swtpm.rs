//! A software TPM (swtpm) on free loopback ports, for the TPM tests and the TPM bench.
//!
//! Shared by `tests/tpm.rs` and `benches/tpm.rs` through `#[path]`.

// Each includer uses a different part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Silences libtss2's own logging to stderr (it reports every TPM error there, expected ones
/// included). Call before anything touches the TPM stack: tpm2-tss reads the variable once.
pub fn quiet_tss() {
    static ONCE: Once = Once::new();
    // Every test calls this before its first TPM operation, and the `Once` makes the others
    // wait until it is done, so nothing reads the environment while it is being written.
    ONCE.call_once(|| std::env::set_var("TSS2_LOG", "all+none"));
}

/// `tpm2_createprimary` arguments that derive the keystore's storage key into `primary.ctx`:
/// the same template as the keystore's own (`tpm2_createprimary -C o -G ecc256:aes128cfb`,
/// with noDA), so objects the keystore made load under it.
pub const STORAGE_PRIMARY: &[&str] = &[
    "-C",
    "o",
    "-g",
    "sha256",
    "-G",
    "ecc256:aes128cfb",
    "-a",
    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
    "-c",
    "primary.ctx",
];

/// A running swtpm. Killed when dropped.
pub struct Swtpm {
    child: Child,
    port: u16,
    state: PathBuf,
}

/// Two consecutive free loopback ports (swtpm's server and control ports), or `None`.
pub fn free_port_pair() -> Option<u16> {
    let first = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = first.local_addr().ok()?.port();
    let second = TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
    drop((first, second));
    Some(port)
}

impl Swtpm {
    /// Starts a TPM whose state lives in `state` (created if missing; an existing state is the
    /// same TPM again). `None`, with a message, if swtpm is not installed.
    pub fn start(state: &Path) -> Option<Self> {
        quiet_tss();
        if Command::new("swtpm")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            // The test command installs swtpm and sets this: there, a missing swtpm is a
            // failure, not a reason to skip every TPM test.
            if std::env::var_os("MDM_REQUIRE_SWTPM").is_some() {
                panic!(
                    "swtpm is not installed but MDM_REQUIRE_SWTPM is set (scripts/test runs \
                     scripts/install-test-deps, which installs it)"
                );
            }
            eprintln!(
                "swtpm is not installed (scripts/install-test-deps installs it); skipping this \
                 TPM test"
            );
            return None;
        }
        std::fs::create_dir_all(state).unwrap();
        // The ports are free when chosen but may be taken before swtpm binds them: retry.
        for _ in 0..20 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            if let Some(tpm) = Self::spawn(state, port) {
                return Some(tpm);
            }
        }
        panic!(
            "swtpm did not start on any free port pair; see {}",
            log_path(state).display()
        );
    }

    fn spawn(state: &Path, port: u16) -> Option<Self> {
        let log = std::fs::File::create(log_path(state)).unwrap();
        // Through a shell that first closes every descriptor above 2: libtss2 opens its TPM
        // sockets without close-on-exec, so a swtpm started while another test holds a TPM
        // connection would inherit that socket and keep the other test's TPM waiting.
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(
                "for fd in /proc/$$/fd/*; do fd=${fd##*/}; \
                 if [ \"$fd\" -gt 2 ]; then eval \"exec $fd>&-\" 2>/dev/null; fi; done; \
                 exec swtpm \"$@\"",
            )
            .arg("swtpm")
            .args(["socket", "--tpm2"])
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return None; // most likely a port taken meanwhile
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self {
                    child,
                    port,
                    state: state.to_owned(),
                });
            }
            sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The TCTI string for [`mdm_keystore::TpmSealer::open_or_create`] and tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Runs a tpm2-tools command against this TPM in `dir`, then flushes the transient
    /// objects it left loaded: swtpm has no resource manager in front of it, the TPM holds
    /// only three, and the tools keep their objects in context files anyway.
    pub fn tool(&self, dir: &Path, tool: &str, args: &[&str]) -> Output {
        let run = |tool: &str, args: &[&str]| {
            Command::new(tool)
                .arg("-T")
                .arg(self.tcti())
                .args(args)
                .current_dir(dir)
                .env("TSS2_LOG", "all+none")
                .output()
                .unwrap()
        };
        let out = run(tool, args);
        let flushed = run("tpm2_flushcontext", &["-t"]);
        assert!(flushed.status.success(), "{flushed:?}");
        out
    }

    /// [`Self::tool`] that must succeed; its standard output.
    pub fn tool_ok(&self, dir: &Path, tool: &str, args: &[&str]) -> String {
        let out = self.tool(dir, tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Shuts the TPM down the orderly way (as at power-off: swtpm saves its state and exits).
    pub fn stop(mut self) {
        let ctrl = format!("127.0.0.1:{}", self.port + 1);
        let asked = Command::new("swtpm_ioctl")
            .args(["--tcp", &ctrl, "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while asked && Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops this TPM and starts it again on the same state: the same TPM after a reboot.
    pub fn restart(self) -> Self {
        let state = self.state.clone();
        self.stop();
        Self::start(&state).unwrap()
    }
}

fn log_path(state: &Path) -> PathBuf {
    state.with_extension("swtpm.log")
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards the swtpm TCTI's two ports (commands, and control on the next port) to a TPM's,
/// recording every byte both ways. Returns the first of the two proxy ports.
pub fn recording_proxy(upstream: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (command, control) = loop {
        let Some(port) = free_port_pair() else {
            continue;
        };
        if let (Ok(a), Ok(b)) = (
            TcpListener::bind(("127.0.0.1", port)),
            TcpListener::bind(("127.0.0.1", port + 1)),
        ) {
            break (a, b);
        }
    };
    let port = command.local_addr().unwrap().port();
    for (listener, target) in [(command, upstream), (control, upstream + 1)] {
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(("127.0.0.1", target)).unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let record = Arc::clone(&record);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
    }
    (port, seen)
}
