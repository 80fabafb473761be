//! The round-trip client, run in worker processes (`mdm-bench worker`, spawned by the
//! coordinating process): each worker owns a share of the enrolled devices and drives their
//! command sessions with a number of concurrent client tasks on a single-threaded runtime.
//!
//! One device session, as a device does it after a push: connect (TLS 1.3, the device's
//! identity certificate as client certificate; a device that connected before resumes its
//! TLS session), `PUT /mdm/connect` with `Idle`, answer each command the server returns with
//! an `Acknowledged` report on the same kept-alive connection, until the server answers with
//! an empty body; then close and take the next device. Every request is timed from sending
//! to the last byte of the answer; connection setup is timed separately.
//!
//! The loop is kept lean so that the client is not what limits the figures: request bodies
//! are formatted from pre-escaped strings, and the command's UUID is cut out of the answer
//! without a plist parser (one is used only if the answer is not the expected XML).
//!
//! Protocol with the coordinator, one line each way: the worker prints `ready` once its
//! devices are loaded; on each `go` line it runs one round over all its devices and prints
//! `result <json>` ([`RoundResult`]); `quit` or end of input ends it.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, HandshakeKind};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::histogram::Histogram;
use crate::identities::IdentityFile;
use crate::{procfs, tls};

/// Content type of command reports.
const REPORT_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm";
/// The path command reports go to (the profile's ServerURL).
const CONNECT_PATH: &str = "/mdm/connect";
/// A session (connect plus all its requests) that takes longer than this is abandoned and
/// counted as failed, so that a stuck server cannot hang the benchmark.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Commands beyond the expected count tolerated before a session is declared runaway.
const EXTRA_COMMANDS: usize = 16;
/// Failure messages kept per round for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// How a worker was started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The identity file.
    pub identities: PathBuf,
    /// This worker's number, from 0.
    pub index: usize,
    /// How many workers share the devices (device `i` belongs to worker `i % workers`).
    pub workers: usize,
    /// Concurrent client tasks in this worker.
    pub concurrency: usize,
    /// Commands each device should receive per round.
    pub commands: usize,
}

/// What one worker measured in one round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundResult {
    /// HTTP requests answered (whatever their status).
    pub requests: u64,
    /// Device sessions whose connection was established.
    pub sessions: u64,
    /// Of those, how many resumed an earlier TLS session (no certificate exchange).
    pub resumed_sessions: u64,
    /// Acknowledged reports the server answered with 200.
    pub acknowledged: u64,
    /// Sessions that ended in an error (connection, status, malformed answer, timeout).
    pub failed_sessions: u64,
    /// Sessions that completed but received a number of commands other than expected.
    pub mismatched_sessions: u64,
    /// CPU time of this worker process during the round, in clock ticks.
    pub cpu_ticks: u64,
    /// Request latency (send to last byte of the answer), µs.
    pub latency: Histogram,
    /// Connection setup (TCP connect + TLS handshake), µs.
    pub connect: Histogram,
    /// A few failure messages.
    pub error_samples: Vec<String>,
}

impl RoundResult {
    /// Adds `other`'s counts and samples to this one.
    pub fn merge(&mut self, other: &RoundResult) {
        self.requests += other.requests;
        self.sessions += other.sessions;
        self.resumed_sessions += other.resumed_sessions;
        self.acknowledged += other.acknowledged;
        self.failed_sessions += other.failed_sessions;
        self.mismatched_sessions += other.mismatched_sessions;
        self.cpu_ticks += other.cpu_ticks;
        self.latency.merge(&other.latency);
        self.connect.merge(&other.connect);
        for e in &other.error_samples {
            self.note_error(e.clone());
        }
    }

    fn note_error(&mut self, e: String) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(e);
        }
    }
}

/// Why one device session failed.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("TCP connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the server's answer carries no readable CommandUUID")]
    NoCommandUuid,
    #[error("the server kept sending commands (more than {0} in one session)")]
    Runaway(usize),
    #[error("the session took longer than {0:?}")]
    Timeout(Duration),
}

/// One device as the worker drives it.
struct Device {
    udid_xml: String,
    idle: Bytes,
    config: Arc<ClientConfig>,
}

struct Context {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: HeaderValue,
    uri: Uri,
    commands: usize,
    devices: Vec<Device>,
}

impl Context {
    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::PUT;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static(REPORT_CONTENT_TYPE));
        h.insert(USER_AGENT, HeaderValue::from_static("MDM/1.0"));
        req
    }
}

/// Escapes the five XML special characters (UDIDs and UUIDs never contain them; this keeps
/// a malformed one from producing a malformed plist).
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

const PLIST_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
<plist version=\"1.0\">\n<dict>\n";
const PLIST_TAIL: &str = "</dict>\n</plist>\n";

/// The `Idle` report of a device (`udid_xml` already escaped).
fn idle_body(udid_xml: &str) -> Bytes {
    Bytes::from(format!(
        "{PLIST_HEAD}\t<key>Status</key>\n\t<string>Idle</string>\n\
         \t<key>UDID</key>\n\t<string>{udid_xml}</string>\n{PLIST_TAIL}"
    ))
}

/// An `Acknowledged` report for `uuid` (`udid_xml` already escaped).
fn ack_body(udid_xml: &str, uuid: &str) -> Bytes {
    let uuid = xml_escape(uuid);
    Bytes::from(format!(
        "{PLIST_HEAD}\t<key>CommandUUID</key>\n\t<string>{uuid}</string>\n\
         \t<key>Status</key>\n\t<string>Acknowledged</string>\n\
         \t<key>UDID</key>\n\t<string>{udid_xml}</string>\n{PLIST_TAIL}"
    ))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The `CommandUUID` of a command envelope. The server writes XML plists, where the value
/// follows its key as `<string>…</string>`; anything else goes through the plist parser.
fn command_uuid(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"<key>CommandUUID</key>";
    let fast = find(body, KEY, 0).and_then(|k| {
        let rest = body.get(k + KEY.len()..)?;
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let rest = rest.get(start..)?.strip_prefix(b"<string>")?;
        let end = find(rest, b"</string>", 0)?;
        let value = std::str::from_utf8(rest.get(..end)?).ok()?;
        // Entity-free values only; anything fancier is left to the real parser.
        (!value.is_empty() && !value.contains('&')).then(|| value.to_owned())
    });
    fast.or_else(|| {
        plist::from_bytes::<plist::Dictionary>(body)
            .ok()?
            .get("CommandUUID")?
            .as_string()
            .map(str::to_owned)
    })
}

fn body_snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

async fn session(
    ctx: &Context,
    device: &Device,
    stats: &mut RoundResult,
) -> Result<(), SessionError> {
    let started = Instant::now();
    let tcp = TcpStream::connect(ctx.addr)
        .await
        .map_err(SessionError::Connect)?;
    tcp.set_nodelay(true).map_err(SessionError::Connect)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&device.config))
        .connect(ctx.server_name.clone(), tcp)
        .await
        .map_err(SessionError::Tls)?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    // The connection driver ends by itself once `sender` is dropped at the end of the session.
    tokio::spawn(conn);
    stats.connect.record(started.elapsed());
    stats.sessions += 1;
    if resumed {
        stats.resumed_sessions += 1;
    }

    let mut body = device.idle.clone();
    let mut acknowledging = false;
    let mut received = 0usize;
    loop {
        sender.ready().await?;
        let sent = Instant::now();
        let resp = sender.send_request(ctx.request(body)).await?;
        let status = resp.status();
        let answer = resp.into_body().collect().await?.to_bytes();
        stats.latency.record(sent.elapsed());
        stats.requests += 1;
        if status != StatusCode::OK {
            return Err(SessionError::Status {
                status: status.as_u16(),
                body: body_snippet(&answer),
            });
        }
        if acknowledging {
            stats.acknowledged += 1;
        }
        if answer.is_empty() {
            break;
        }
        let uuid = command_uuid(&answer).ok_or(SessionError::NoCommandUuid)?;
        received += 1;
        if received > ctx.commands + EXTRA_COMMANDS {
            return Err(SessionError::Runaway(ctx.commands + EXTRA_COMMANDS));
        }
        body = ack_body(&device.udid_xml, &uuid);
        acknowledging = true;
    }
    if received != ctx.commands {
        stats.mismatched_sessions += 1;
        stats.note_error(format!(
            "device {} received {received} commands, expected {}",
            device.udid_xml, ctx.commands
        ));
    }
    Ok(())
}

async fn client_task(ctx: Arc<Context>, next: Arc<AtomicUsize>) -> RoundResult {
    let mut stats = RoundResult::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(device) = ctx.devices.get(i) else {
            return stats;
        };
        let outcome = tokio::time::timeout(SESSION_TIMEOUT, session(&ctx, device, &mut stats))
            .await
            .unwrap_or(Err(SessionError::Timeout(SESSION_TIMEOUT)));
        if let Err(e) = outcome {
            stats.failed_sessions += 1;
            stats.note_error(format!("device {}: {e}", device.udid_xml));
        }
    }
}

async fn run_round(ctx: &Arc<Context>, concurrency: usize) -> Result<RoundResult, BenchError> {
    let before = procfs::cpu_ticks(None)?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        tasks.spawn(client_task(Arc::clone(ctx), Arc::clone(&next)));
    }
    let mut total = RoundResult::default();
    while let Some(result) = tasks.join_next().await {
        total.merge(&result?);
    }
    total.cpu_ticks = procfs::cpu_ticks(None)?.own().saturating_sub(before.own());
    Ok(total)
}

fn load(opts: &WorkerOptions) -> Result<Context, BenchError> {
    let file = IdentityFile::read(&opts.identities)?;
    let provider = tls::provider();
    let roots = tls::roots_from_pem(&file.ca_pem)?;
    let mut keys = Vec::with_capacity(file.keys.len());
    for i in 0..file.keys.len() {
        let der = file.key_der(i).ok_or_else(|| BenchError::Identity {
            udid: format!("(key pool entry {i})"),
            reason: "the key is not valid base64".into(),
        })?;
        keys.push(tls::signing_key(&der)?);
    }
    let mut devices = Vec::new();
    for d in file
        .devices
        .iter()
        .skip(opts.index)
        .step_by(opts.workers.max(1))
    {
        let bad = |reason: &str| BenchError::Identity {
            udid: d.udid.clone(),
            reason: reason.to_owned(),
        };
        let cert = d
            .cert_der()
            .ok_or_else(|| bad("the certificate is not valid base64"))?;
        let key = keys
            .get(d.key)
            .cloned()
            .ok_or_else(|| bad("its key index is outside the pool"))?;
        let udid_xml = xml_escape(&d.udid);
        devices.push(Device {
            idle: idle_body(&udid_xml),
            udid_xml,
            config: tls::device_config(&provider, &roots, cert, key)?,
        });
    }
    let host = HeaderValue::from_str(&file.addr.to_string()).map_err(|e| {
        BenchError::Options(format!(
            "daemon address {} is not a valid Host header: {e}",
            file.addr
        ))
    })?;
    Ok(Context {
        addr: file.addr,
        server_name: ServerName::from(file.addr.ip()),
        host,
        uri: Uri::from_static(CONNECT_PATH),
        commands: opts.commands,
        devices,
    })
}

fn say(line: &str) -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(BenchError::io("write to the coordinator"))
}

/// The worker process's main loop (see the module documentation for the line protocol).
pub fn main(opts: &WorkerOptions) -> Result<(), BenchError> {
    let ctx = Arc::new(load(opts)?);
    // One thread per worker process: the coordinator starts one worker per core it wants
    // loaded, and a single-threaded runtime spends nothing on work stealing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("start the async runtime"))?;
    say("ready")?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(BenchError::io("read from the coordinator"))?;
        match line.trim() {
            "go" => {
                let result = rt.block_on(run_round(&ctx, opts.concurrency))?;
                say(&format!("result {}", serde_json::to_string(&result)?))?;
            }
            "quit" => break,
            other => {
                return Err(BenchError::Worker {
                    index: opts.index,
                    reason: format!("unexpected instruction {other:?}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_plists_a_device_sends() {
        let udid = xml_escape("00008120-001A2B3C4D5E6F70");
        let idle: plist::Dictionary = plist::from_bytes(&idle_body(&udid)).unwrap();
        assert_eq!(idle.len(), 2);
        assert_eq!(idle.get("Status").unwrap().as_string(), Some("Idle"));
        assert_eq!(
            idle.get("UDID").unwrap().as_string(),
            Some("00008120-001A2B3C4D5E6F70")
        );
        let uuid = "0F6D4A1C-2B3E-4F50-8A9B-C0D1E2F30415";
        let ack: plist::Dictionary = plist::from_bytes(&ack_body(&udid, uuid)).unwrap();
        assert_eq!(ack.len(), 3);
        assert_eq!(ack.get("Status").unwrap().as_string(), Some("Acknowledged"));
        assert_eq!(ack.get("CommandUUID").unwrap().as_string(), Some(uuid));
        // Escaping keeps odd identifiers well-formed.
        let odd = ack_body(&xml_escape("a<b&c"), "x\"y");
        let odd: plist::Dictionary = plist::from_bytes(&odd).unwrap();
        assert_eq!(odd.get("UDID").unwrap().as_string(), Some("a<b&c"));
        assert_eq!(odd.get("CommandUUID").unwrap().as_string(), Some("x\"y"));
    }

    fn envelope(uuid: &str, binary: bool) -> Vec<u8> {
        let mut command = plist::Dictionary::new();
        command.insert("RequestType".into(), "ProfileList".into());
        let mut top = plist::Dictionary::new();
        top.insert("Command".into(), plist::Value::Dictionary(command));
        top.insert("CommandUUID".into(), uuid.into());
        let mut out = Vec::new();
        if binary {
            plist::to_writer_binary(&mut out, &top).unwrap();
        } else {
            plist::to_writer_xml(&mut out, &top).unwrap();
        }
        out
    }

    #[test]
    fn command_uuid_from_xml_binary_and_garbage() {
        let uuid = "6B1E2C3D-4F50-4A6B-9C7D-8E9FA0B1C2D3";
        assert_eq!(command_uuid(&envelope(uuid, false)).as_deref(), Some(uuid));
        assert_eq!(command_uuid(&envelope(uuid, true)).as_deref(), Some(uuid));
        // Entities in the value take the parser path and come out decoded.
        assert_eq!(
            command_uuid(&envelope("a&b", false)).as_deref(),
            Some("a&b")
        );
        assert_eq!(command_uuid(b""), None);
        assert_eq!(command_uuid(b"<html>proxy error</html>"), None);
        assert_eq!(
            command_uuid(b"<key>CommandUUID</key><integer>1</integer>"),
            None
        );
    }

    #[test]
    fn round_results_merge() {
        let mut a = RoundResult {
            requests: 10,
            sessions: 2,
            error_samples: vec!["one".into()],
            ..Default::default()
        };
        a.latency.record_micros(100);
        let mut b = RoundResult {
            requests: 5,
            sessions: 1,
            resumed_sessions: 1,
            cpu_ticks: 7,
            error_samples: (0..10).map(|i| format!("e{i}")).collect(),
            ..Default::default()
        };
        b.latency.record_micros(300);
        let json = serde_json::to_string(&b).unwrap();
        let b: RoundResult = serde_json::from_str(&json).unwrap();
        a.merge(&b);
        assert_eq!(
            (a.requests, a.sessions, a.resumed_sessions, a.cpu_ticks),
            (15, 3, 1, 7)
        );
        assert_eq!(a.latency.count(), 2);
        assert_eq!(a.latency.max_micros(), 300);
        assert_eq!(a.error_samples.len(), MAX_ERROR_SAMPLES);
    }
}
