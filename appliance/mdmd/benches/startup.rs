//! Start-up time of the real `mdmd` binary with the TPM keystore on a software TPM (swtpm),
//! from spawning the process to its `READY=1` on a `NOTIFY_SOCKET`, as systemd sees it:
//!
//! - the first start on an empty data directory (key file created and sealed by the TPM; CA,
//!   TLS, SCEP RA and profile signer keys generated and sealed; database created);
//! - warm starts on that directory (TPM opened, data key unsealed, every appliance key
//!   unsealed), each stopped with SIGTERM before the next;
//! - the same two with the software keystore (`--dev`), to show what the TPM adds.
//!
//! The daemon logs JSON to a pipe; its timestamps split each start into phases, and its own
//! `TPM keystore opened ... elapsed_ms` gives the TPM's share. Two more starts run through a
//! proxy in front of swtpm that counts the TPM commands a start sends and the time each one
//! spends in the TPM: on a hardware TPM, slower per command, that count is what matters.
//!
//! Run with `cargo bench -p mdmd --bench startup`: cargo builds the release `mdmd` next to
//! this binary; nothing is built here. Figures are printed, never asserted: the target (ready
//! in under 2 s with a TPM) is reported as met or missed. Skips, with a message, when swtpm is
//! not installed.

// The swtpm support module is shared with the keystore's tests, which stop loudly on failure.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "../../keystore/tests/support/swtpm.rs"]
mod swtpm;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::Value;
use swtpm::Swtpm;

/// Warm starts per keystore.
const WARM_RUNS: usize = 7;
/// The target for a start with a TPM.
const TARGET: Duration = Duration::from_secs(2);
/// A start slower than this is a hung daemon, not a figure.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Where APNs and ABM point: a closed loopback port, so nothing leaves the machine.
const NO_APPLE: &str = "https://127.0.0.1:9";
/// The TLS certificate is issued for the base URL's host: a fixed base URL keeps warm starts
/// from re-issuing it, whatever port each run listens on.
const BASE_URL: &str = "https://127.0.0.1:8443";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("startup bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let Some(bin) = mdmd_binary()? else {
        return Ok(ExitCode::from(2));
    };
    // Declared before the TPM and the daemons so that it is removed after they are gone.
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let Some(tpm) = Swtpm::start(&dir.path().join("tpm-state")) else {
        eprintln!("swtpm is not installed: the start-up bench needs it; skipping");
        return Ok(ExitCode::SUCCESS);
    };
    let tcti = tpm.tcti();
    let config = dir.path().join("mdmd.toml");
    std::fs::write(&config, config_text(&tcti))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let mut bench = Bench {
        bin,
        dir: dir.path().to_owned(),
        config,
        started: 0,
    };

    println!("mdmd start-up to READY=1, TPM keystore on swtpm ({tcti})");
    println!("binary: {}", bench.bin.display());

    let tpm_data = dir.path().join("data-tpm");
    let tpm_first = bench.start(&tpm_data, Keystore::Tpm, None)?;
    let tpm_warm = bench.warm(&tpm_data, Keystore::Tpm)?;
    let soft_data = dir.path().join("data-soft");
    let soft_first = bench.start(&soft_data, Keystore::Software, None)?;
    let soft_warm = bench.warm(&soft_data, Keystore::Software)?;

    // Counted apart, so that the proxy's extra loopback hop stays out of the timed starts.
    let counter = TpmCounter::start(tcti_port(&tcti)?)?;
    let counted_data = dir.path().join("data-counted");
    bench.start(&counted_data, Keystore::Tpm, Some(&counter.tcti()))?;
    let first_commands = counter.take();
    bench.start(&counted_data, Keystore::Tpm, Some(&counter.tcti()))?;
    let warm_commands = counter.take();

    println!();
    print_header();
    print_row(
        "first start, TPM keystore, empty data dir",
        std::slice::from_ref(&tpm_first),
    );
    print_row("warm start, TPM keystore", &tpm_warm);
    print_row(
        "first start, software keystore, empty data dir",
        std::slice::from_ref(&soft_first),
    );
    print_row("warm start, software keystore", &soft_warm);
    println!();
    println!(
        "to keystore: spawn to the daemon's `keystore: ...` line (exec, configuration, logger, \
         and for the TPM the keystore open); TPM open: the daemon's own `TPM keystore opened` \
         elapsed_ms; keystore->CA: database opened, appliance keys unsealed (generated on a \
         first start); CA->READY: service, listeners, READY=1; stop: SIGTERM to exit."
    );
    println!();
    print_commands("TPM commands, first start", &first_commands);
    print_commands("TPM commands, warm start", &warm_commands);
    println!();

    let warm = Stats::of(tpm_warm.iter().map(|s| s.ready).collect());
    let verdict = if warm.max < TARGET && tpm_first.ready < TARGET {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "target: ready in under {} s with a TPM: warm start median {}, max {}; first start {}: {verdict}",
        TARGET.as_secs(),
        ms(warm.median),
        ms(warm.max),
        ms(tpm_first.ready),
    );
    Ok(ExitCode::SUCCESS)
}

/// The release `mdmd` cargo builds for this bench: in the target directory this executable's
/// directory (`target/release/deps`) sits in. `None`, with how to build it, when missing.
fn mdmd_binary() -> anyhow::Result<Option<PathBuf>> {
    let exe = std::env::current_exe().context("cannot find this bench's executable")?;
    let Some(profile_dir) = exe.parent().and_then(Path::parent) else {
        bail!("{} has no target directory above it", exe.display());
    };
    let bin = profile_dir.join("mdmd");
    if bin.is_file() {
        return Ok(Some(bin));
    }
    eprintln!(
        "{} is missing: run this bench with `cargo bench -p mdmd --bench startup` (cargo builds \
         the daemon for it), or build it with `cargo build --release -p mdmd`",
        bin.display()
    );
    Ok(None)
}

fn config_text(tcti: &str) -> String {
    // The TPM keystore is the configuration's; `--dev` switches a run to the software one and
    // leaves everything else as it is.
    format!(
        "version = 1\n\
         [server]\n\
         base_url = \"{BASE_URL}\"\n\
         [keystore]\n\
         backend = \"tpm\"\n\
         tcti = \"{tcti}\"\n\
         [log]\n\
         format = \"json\"\n\
         level = \"info\"\n\
         [apns]\n\
         url = \"{NO_APPLE}\"\n\
         [abm]\n\
         url = \"{NO_APPLE}\"\n"
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keystore {
    Tpm,
    Software,
}

struct Bench {
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    /// Starts so far: each gets its own notify socket, so no message of a previous daemon
    /// (its STOPPING=1) is read as this one's.
    started: usize,
}

/// One start, spawn to exit.
struct Start {
    /// Spawn to READY=1.
    ready: Duration,
    /// SIGTERM to exit.
    stop: Duration,
    /// Spawn to the daemon's `keystore: ...` line.
    to_keystore: Option<Duration>,
    /// The daemon's `TPM keystore opened` elapsed_ms.
    tpm_open: Option<Duration>,
    /// Spawn to the daemon's `appliance CA loaded` line.
    to_ca: Option<Duration>,
}

/// A daemon that is killed if the bench stops before it does.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Bench {
    fn warm(&mut self, data_dir: &Path, keystore: Keystore) -> anyhow::Result<Vec<Start>> {
        (0..WARM_RUNS)
            .map(|_| self.start(data_dir, keystore, None))
            .collect()
    }

    /// Starts the daemon on `data_dir`, waits for READY=1, stops it with SIGTERM and waits for
    /// it to exit.
    fn start(
        &mut self,
        data_dir: &Path,
        keystore: Keystore,
        tcti: Option<&str>,
    ) -> anyhow::Result<Start> {
        self.started += 1;
        let sock_path = self.dir.join(format!("notify-{}.sock", self.started));
        let sock = UnixDatagram::bind(&sock_path)
            .with_context(|| format!("cannot bind {}", sock_path.display()))?;
        // Short, so that a daemon dying before READY=1 is noticed at once.
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let port = free_port()?;

        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        if keystore == Keystore::Software {
            cmd.arg("--dev");
        }
        if let Some(tcti) = tcti {
            cmd.arg("--tcti").arg(tcti);
        }
        cmd.env("NOTIFY_SOCKET", &sock_path)
            // The log filter is the configuration's, whatever this shell has set.
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            // libtss2 would print expected TPM errors to stderr, between the JSON lines.
            .env("TSS2_LOG", "all+none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());

        let spawned_at = SystemTime::now();
        let spawned = Instant::now();
        let mut daemon = Daemon(
            cmd.spawn()
                .with_context(|| format!("cannot start {}", self.bin.display()))?,
        );
        let log = read_lines(&mut daemon.0)?;

        let ready = loop {
            let mut buf = [0u8; 1024];
            match sock.recv(&mut buf) {
                Ok(n) => {
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1")
                    {
                        break spawned.elapsed();
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading the notify socket"),
            }
            if let Some(status) = daemon.0.try_wait()? {
                bail!(
                    "mdmd exited before READY=1 ({status}); its log:\n{}",
                    tail(log)
                );
            }
            if spawned.elapsed() > READY_TIMEOUT {
                drop(daemon);
                bail!(
                    "mdmd was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    tail(log)
                );
            }
        };

        let stopping = Instant::now();
        let signalled = Command::new("kill")
            .args(["-TERM", &daemon.0.id().to_string()])
            .status()
            .context("cannot run kill")?;
        if !signalled.success() {
            bail!("kill -TERM {} failed", daemon.0.id());
        }
        let status = loop {
            if let Some(status) = daemon.0.try_wait()? {
                break status;
            }
            if stopping.elapsed() > STOP_TIMEOUT {
                drop(daemon);
                bail!(
                    "mdmd did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                    tail(log)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let stop = stopping.elapsed();
        let lines = log
            .join()
            .map_err(|_| anyhow::anyhow!("the log reader failed"))?;
        if !status.success() {
            bail!(
                "mdmd exited with {status} after SIGTERM; its log:\n{}",
                lines.join("\n")
            );
        }
        let _ = std::fs::remove_file(&sock_path);
        Ok(phases(&lines, spawned_at, ready, stop))
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Collects the daemon's stderr lines until it closes them (at exit).
fn read_lines(child: &mut Child) -> anyhow::Result<JoinHandle<Vec<String>>> {
    let Some(stderr) = child.stderr.take() else {
        bail!("the daemon's stderr is not piped");
    };
    Ok(std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect()
    }))
}

/// The last lines of a daemon's log, for an error message. The daemon has exited or been
/// killed by then, so the reader ends.
fn tail(log: JoinHandle<Vec<String>>) -> String {
    let lines = log.join().unwrap_or_default();
    let from = lines.len().saturating_sub(30);
    lines[from..].join("\n")
}

/// Splits a start by the daemon's own log timestamps (wall clock, like `spawned_at`, so they
/// compare without a pipe or a reader thread in between).
fn phases(lines: &[String], spawned_at: SystemTime, ready: Duration, stop: Duration) -> Start {
    let mut start = Start {
        ready,
        stop,
        to_keystore: None,
        tpm_open: None,
        to_ca: None,
    };
    for line in lines {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &entry["fields"];
        let message = fields["message"].as_str().unwrap_or_default();
        let at = entry["timestamp"]
            .as_str()
            .and_then(|t| since(spawned_at, t));
        if message == "TPM keystore opened" {
            // Logged as a number or, for a u128, as its decimal text.
            let elapsed = match &fields["elapsed_ms"] {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            };
            start.tpm_open = elapsed.map(Duration::from_millis);
        } else if entry["target"] == "mdmd" && message.starts_with("keystore:") {
            start.to_keystore = start.to_keystore.or(at);
        } else if message == "appliance CA loaded" {
            start.to_ca = start.to_ca.or(at);
        }
    }
    start
}

/// How long after `spawned_at` an RFC 3339 UTC timestamp (`2026-11-22T02:53:37.655816Z`, as
/// tracing writes them) is. Only the time of day is read: the two are milliseconds apart.
fn since(spawned_at: SystemTime, timestamp: &str) -> Option<Duration> {
    const DAY: f64 = 86_400.0;
    let time = timestamp.split_once('T')?.1.strip_suffix('Z')?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    let logged = h * 3600.0 + m * 60.0 + s;
    let spawned = spawned_at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() % DAY;
    // A start that crosses midnight UTC.
    let offset = (logged - spawned + DAY + DAY / 2.0) % DAY - DAY / 2.0;
    Duration::try_from_secs_f64(offset).ok()
}

struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut times: Vec<Duration>) -> Self {
        times.sort();
        Stats {
            median: times.get(times.len() / 2).copied().unwrap_or_default(),
            min: times.first().copied().unwrap_or_default(),
            max: times.last().copied().unwrap_or_default(),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The median of a phase over the starts that logged it, or `-`.
fn median_of(starts: &[Start], phase: impl Fn(&Start) -> Option<Duration>) -> String {
    let times: Vec<Duration> = starts.iter().filter_map(phase).collect();
    if times.is_empty() {
        return "-".into();
    }
    ms(Stats::of(times).median)
}

fn print_header() {
    println!(
        "{:<48} {:>4} {:>10} {:>10} {:>10} | {:>11} {:>9} {:>13} {:>10} {:>9}",
        "spawn to READY=1",
        "runs",
        "median",
        "min",
        "max",
        "to keystore",
        "TPM open",
        "keystore->CA",
        "CA->READY",
        "stop",
    );
}

fn print_row(what: &str, starts: &[Start]) {
    let total = Stats::of(starts.iter().map(|s| s.ready).collect());
    println!(
        "{what:<48} {:>4} {:>10} {:>10} {:>10} | {:>11} {:>9} {:>13} {:>10} {:>9}",
        starts.len(),
        ms(total.median),
        ms(total.min),
        ms(total.max),
        median_of(starts, |s| s.to_keystore),
        median_of(starts, |s| s.tpm_open),
        median_of(starts, |s| s.to_ca?.checked_sub(s.to_keystore?)),
        median_of(starts, |s| s.ready.checked_sub(s.to_ca?)),
        median_of(starts, |s| Some(s.stop)),
    );
}

fn print_commands(what: &str, counts: &Counts) {
    let slowest = match counts.slowest {
        Some((code, d)) => format!(", slowest {} {}", command_name(code), ms(d)),
        None => String::new(),
    };
    println!(
        "{what}: {} ({} answering in swtpm{slowest}; {} command connection(s), {} control)",
        counts.sequence.len(),
        ms(counts.busy),
        counts.connections,
        counts.control_connections,
    );
    // In the order sent, repeats folded: `FlushContext x3`.
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for &code in &counts.sequence {
        match runs.last_mut() {
            Some((last, n)) if *last == code => *n += 1,
            _ => runs.push((code, 1)),
        }
    }
    let names: Vec<String> = runs
        .iter()
        .map(|&(code, n)| match n {
            1 => command_name(code),
            n => format!("{} x{n}", command_name(code)),
        })
        .collect();
    println!("    {}", names.join(", "));
    if let Some(problem) = &counts.problem {
        println!("    (count incomplete: {problem})");
    }
}

/// TPM 2.0 command codes (TPM 2.0 Library, Part 2, TPM_CC), those a start may send.
fn command_name(code: u32) -> String {
    let name = match code {
        0x120 => "EvictControl",
        0x131 => "CreatePrimary",
        0x143 => "SelfTest",
        0x144 => "Startup",
        0x153 => "Create",
        0x157 => "Load",
        0x159 => "RSA_Decrypt",
        0x15d => "Sign",
        0x15e => "Unseal",
        0x161 => "ContextLoad",
        0x162 => "ContextSave",
        0x165 => "FlushContext",
        0x167 => "LoadExternal",
        0x173 => "ReadPublic",
        0x176 => "StartAuthSession",
        0x17a => "GetCapability",
        0x17b => "GetRandom",
        0x17e => "PCR_Read",
        0x17f => "PolicyPCR",
        0x18a => "TestParms",
        0x191 => "CreateLoaded",
        _ => return format!("{code:#x}"),
    };
    name.to_string()
}

#[derive(Default)]
struct Counts {
    /// Connections to the command port.
    connections: usize,
    /// Connections to the control port.
    control_connections: usize,
    /// Command codes in the order they were sent.
    sequence: Vec<u32>,
    /// Sum over commands of the time from the command's last byte sent to swtpm to its
    /// response's last byte received: swtpm's work plus a loopback round trip each.
    busy: Duration,
    slowest: Option<(u32, Duration)>,
    /// Why the count may be short (a stream that did not parse as TPM commands).
    problem: Option<String>,
}

/// A proxy in front of swtpm's two ports (TPM commands, and control on the next port) that
/// counts the TPM commands passing through it and times each one's round trip. A TPM answers
/// one command at a time per connection, so the command stream is read as command, response,
/// command, ... in one thread per connection.
struct TpmCounter {
    port: u16,
    counts: Arc<Mutex<Counts>>,
}

impl TpmCounter {
    fn start(upstream: u16) -> anyhow::Result<Self> {
        let (commands, control) = (0..20)
            .find_map(|_| {
                let port = swtpm::free_port_pair()?;
                Some((
                    TcpListener::bind(("127.0.0.1", port)).ok()?,
                    TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?,
                ))
            })
            .context("no two consecutive free loopback ports for the TPM proxy")?;
        let port = commands.local_addr()?.port();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let shared = Arc::clone(&counts);
        // The accepting threads live as long as the bench: they hold no process.
        std::thread::spawn(move || {
            for client in commands.incoming().map_while(Result::ok) {
                let counts = Arc::clone(&shared);
                std::thread::spawn(move || {
                    if let Err(e) = relay_commands(client, upstream, &counts) {
                        if let Ok(mut c) = counts.lock() {
                            c.problem.get_or_insert(format!("{e:#}"));
                        }
                    }
                });
            }
        });
        let shared = Arc::clone(&counts);
        std::thread::spawn(move || {
            for client in control.incoming().map_while(Result::ok) {
                if let Ok(mut c) = shared.lock() {
                    c.control_connections += 1;
                }
                std::thread::spawn(move || relay_raw(client, upstream + 1));
            }
        });
        Ok(TpmCounter { port, counts })
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The counts so far, starting again from zero.
    fn take(&self) -> Counts {
        self.counts
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

/// The TPM command port of an swtpm TCTI string (`swtpm:host=...,port=P`).
fn tcti_port(tcti: &str) -> anyhow::Result<u16> {
    tcti.rsplit_once("port=")
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("no port in the TCTI {tcti}"))
}

/// Reads one TPM command or response: a 10-byte header (tag, total size, code) and the rest.
/// `None` at a clean end of stream.
fn read_message(from: &mut TcpStream) -> anyhow::Result<Option<(u32, Vec<u8>)>> {
    let mut header = [0u8; 10];
    match from.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    let code = u32::from_be_bytes([header[6], header[7], header[8], header[9]]);
    let size = usize::try_from(size)?;
    // TPM 2.0 messages are at most a few KiB; anything else is not a TPM stream.
    if !(10..=64 * 1024).contains(&size) {
        bail!("a TPM message header gives a size of {size} bytes");
    }
    let mut message = header.to_vec();
    message.resize(size, 0);
    from.read_exact(&mut message[10..])?;
    Ok(Some((code, message)))
}

fn relay_commands(
    mut client: TcpStream,
    upstream: u16,
    counts: &Mutex<Counts>,
) -> anyhow::Result<()> {
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    if let Ok(mut c) = counts.lock() {
        c.connections += 1;
    }
    while let Some((code, command)) = read_message(&mut client)? {
        server.write_all(&command)?;
        let sent = Instant::now();
        let Some((_, response)) = read_message(&mut server)? else {
            bail!(
                "swtpm closed the connection before answering {}",
                command_name(code)
            );
        };
        let busy = sent.elapsed();
        if let Ok(mut c) = counts.lock() {
            c.sequence.push(code);
            c.busy += busy;
            if c.slowest.is_none_or(|(_, d)| busy > d) {
                c.slowest = Some((code, busy));
            }
        }
        client.write_all(&response)?;
    }
    let _ = server.shutdown(Shutdown::Write);
    Ok(())
}

fn relay_raw(client: TcpStream, upstream: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || copy(client_in, server));
    copy(server_in, client);
    let _ = up.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
