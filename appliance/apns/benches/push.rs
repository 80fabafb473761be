//! Push throughput and memory against an in-process APNs stand-in (TLS 1.3 with a client
//! certificate, HTTP/2, 127.0.0.1).
//!
//! `cargo bench -p mdm-apns`. Client and server share the machine's cores, so the figures
//! are a lower bound of what the client alone can do; compare them across commits on the
//! same machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use mdm_apns::{ApnsConfig, ApnsPusher, ApnsRoots};
use mdm_service::ports::{PushMessage, PushOutcome, PushProvider};
use support::{message, ApnsServer, Pki};

const TOPIC: &str = "com.apple.mgmt.External.6f1a9a5c-0000-4000-8000-000000000001";
/// What APNs advertises to certificate-authenticated providers.
const SERVER_STREAMS: u32 = 1000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn batch(n: usize) -> Vec<PushMessage> {
    (0..n).map(|i| message(i, TOPIC)).collect()
}

async fn pusher(server: &ApnsServer, pki: &Pki, connections: usize) -> ApnsPusher {
    let pusher = ApnsPusher::new(ApnsConfig {
        base_url: server.base_url(),
        roots: ApnsRoots::PemFile(pki.roots_pem()),
        connections,
        ..ApnsConfig::default()
    })
    .unwrap();
    pusher.set_identity(Some(pki.identity(TOPIC))).unwrap();
    // Warm up: connections open, TLS done, allocator settled.
    let warm = pusher.push(batch(2000)).await;
    assert!(warm.iter().all(|o| matches!(o, PushOutcome::Sent { .. })));
    pusher
}

async fn timed(pusher: &ApnsPusher, n: usize) -> Duration {
    let messages = batch(n);
    let start = Instant::now();
    let outcomes = pusher.push(messages).await;
    let elapsed = start.elapsed();
    let sent = outcomes
        .iter()
        .filter(|o| matches!(o, PushOutcome::Sent { .. }))
        .count();
    assert_eq!(sent, n, "every push must be accepted");
    elapsed
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let at_start = rss_kib();
    runtime.block_on(async {
        let pki = Pki::new();
        let server = ApnsServer::start(&pki, SERVER_STREAMS, false).await;
        println!(
            "mdm-apns push benchmark: in-process APNs stand-in, {} worker threads, server max streams {SERVER_STREAMS}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );

        for connections in [1, 4] {
            let pusher = pusher(&server, &pki, connections).await;
            let n = 20_000;
            let mut best = Duration::MAX;
            for _ in 0..3 {
                best = best.min(timed(&pusher, n).await);
            }
            println!(
                "  {connections} connection(s): {n} pushes in {:>7.1} ms = {:>8.0} pushes/s (best of 3; {} connections opened)",
                best.as_secs_f64() * 1e3,
                n as f64 / best.as_secs_f64(),
                pusher.connections_opened()
            );
        }

        let pusher = pusher(&server, &pki, 1).await;
        let elapsed = timed(&pusher, 50_000).await;
        println!(
            "  50,000 pushes over 1 connection: {:.1} ms ({:.0} pushes/s)",
            elapsed.as_secs_f64() * 1e3,
            50_000.0 / elapsed.as_secs_f64()
        );

        let before = rss_kib();
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(timed(&pusher, 50_000).await);
        }
        let after = rss_kib();
        println!(
            "  RSS at start: {at_start} KiB; before 5 fan-outs of 50,000: {before} KiB; after: {after} KiB (change {:+} KiB); fan-out times: {}",
            after as i64 - before as i64,
            times
                .iter()
                .map(|t| format!("{:.0} ms", t.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        );
    });
}
