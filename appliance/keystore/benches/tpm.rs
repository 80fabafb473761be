//! TPM sealer figures on a software TPM: opening the keystore (the TPM commands, once per
//! process start) with and without an existing key file, and sealing and unsealing a 1 KiB
//! secret afterwards (AES-256-GCM in memory, no TPM command).
//!
//! Run with `cargo bench -p mdm-keystore`; swtpm runs in a temporary directory on free
//! loopback ports. A real TPM on an LPC/SPI bus is slower per command than swtpm; the figures
//! show how many commands each step costs and the in-memory cost, not what a given chip does.
//! Figures are printed, not asserted.

// Benchmark code: a failure should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/swtpm.rs"]
mod swtpm;

use std::time::{Duration, Instant};

use mdm_keystore::{Sealer, TpmSealer};
use swtpm::Swtpm;

const CREATE_RUNS: usize = 10;
const OPEN_RUNS: usize = 30;
const AEAD_RUNS: usize = 20_000;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{what:<50} {:>6} runs   median {:>9}   min {:>9}   max {:>9}",
        times.len(),
        ms(median),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tpm) = Swtpm::start(&dir.path().join("tpm-state")) else {
        return;
    };
    let tcti = tpm.tcti();
    println!("TPM keystore on swtpm ({tcti})");

    let mut create = Vec::new();
    for i in 0..CREATE_RUNS {
        let path = dir.path().join(format!("new-{i}.key"));
        let started = Instant::now();
        let sealer = TpmSealer::open_or_create(&tcti, &path).unwrap();
        create.push(started.elapsed());
        drop(sealer);
    }
    report("open, new key file (seal a new data key)", create);

    let path = dir.path().join("new-0.key");
    let mut open = Vec::new();
    for _ in 0..OPEN_RUNS {
        let started = Instant::now();
        let sealer = TpmSealer::open_or_create(&tcti, &path).unwrap();
        open.push(started.elapsed());
        drop(sealer);
    }
    report("open, existing key file (unseal the data key)", open);

    let sealer = TpmSealer::open_or_create(&tcti, &path).unwrap();
    let secret = vec![0x5a_u8; 1024];
    let started = Instant::now();
    let mut blobs = Vec::with_capacity(AEAD_RUNS);
    for _ in 0..AEAD_RUNS {
        blobs.push(sealer.seal("bench-secret", &secret).unwrap());
    }
    let seal = started.elapsed();
    let started = Instant::now();
    for blob in &blobs {
        assert_eq!(
            sealer.unseal("bench-secret", blob).unwrap().len(),
            secret.len()
        );
    }
    let unseal = started.elapsed();
    for (what, total) in [("seal 1 KiB", seal), ("unseal 1 KiB", unseal)] {
        println!(
            "{what:<50} {AEAD_RUNS:>6} runs   mean {:>7.2} µs",
            total.as_secs_f64() * 1e6 / AEAD_RUNS as f64
        );
    }
}
