//! TPM sealer figures on a software TPM: opening the keystore (the TPM commands, once per
//! process start) with and without an existing key file, and sealing and unsealing a 1 KiB
//! secret afterwards (AES-256-GCM in memory, no TPM command). Then held RSA keys: creating,
//! using (PKCS#1 v1.5 decryption and SHA-256 signature) and reading the public key of a key
//! inside the TPM, each use on its own TPM connection, next to the same operations on a
//! sealed-and-loaded key (unsealed, then used by aws-lc in memory).
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

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, Pkcs1PublicEncryptingKey, PublicEncryptingKey};
use mdm_keystore::{HeldKey, KeyResidence, Sealer, TpmSealer};
use swtpm::Swtpm;

const CREATE_RUNS: usize = 10;
const OPEN_RUNS: usize = 30;
const AEAD_RUNS: usize = 20_000;
/// RSA key generation inside swtpm is a prime search: a few tenths of a second each, and
/// widely spread.
const RSA_CREATE_RUNS: usize = 5;
const RSA_USE_RUNS: usize = 20;
const PUBLIC_KEY_RUNS: usize = 2_000;

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

    held_keys(&sealer);
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed()
        })
        .collect()
}

fn held_keys(sealer: &TpmSealer) {
    const PURPOSE: &str = "abm-token-key";
    let mut keys = Vec::new();
    let create = time(RSA_CREATE_RUNS, || {
        keys.push(sealer.create_rsa_key(PURPOSE).unwrap());
    });
    report("held key: create_rsa_key (inside the TPM)", create);
    let resident = keys.pop().unwrap();
    assert_eq!(resident.residence, KeyResidence::Tpm);

    // The same RSA-2048 key kind, sealed-and-loaded, as a key made before the TPM held keys.
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().unwrap();
    let sealed_blob = sealer.seal(PURPOSE, pkcs8.as_ref()).unwrap().to_bytes();
    let sealed = HeldKey {
        public_key_der: sealer.rsa_public_key(PURPOSE, &sealed_blob).unwrap(),
        blob: sealed_blob,
        residence: KeyResidence::Sealed,
    };

    for (kind, key) in [("TPM", &resident), ("sealed", &sealed)] {
        let public = PublicEncryptingKey::from_der(&key.public_key_der).unwrap();
        let public = Pkcs1PublicEncryptingKey::new(public).unwrap();
        let mut block = vec![0u8; public.ciphertext_size()];
        public.encrypt(&[0x42; 32], &mut block).unwrap();
        let decrypt = time(RSA_USE_RUNS, || {
            let plain = sealer.rsa_decrypt(PURPOSE, &key.blob, &block).unwrap();
            assert_eq!(plain.len(), 32);
        });
        report(&format!("held key ({kind}): rsa_decrypt"), decrypt);
        let message = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJtZG0ifQ";
        let sign = time(RSA_USE_RUNS, || {
            sealer.rsa_sign_sha256(PURPOSE, &key.blob, message).unwrap()
        });
        report(&format!("held key ({kind}): rsa_sign_sha256"), sign);
        let public_key = time(PUBLIC_KEY_RUNS, || {
            sealer.rsa_public_key(PURPOSE, &key.blob).unwrap()
        });
        let mut sorted = public_key;
        sorted.sort();
        println!(
            "{:<50} {PUBLIC_KEY_RUNS:>6} runs   median {:>7.2} µs",
            format!("held key ({kind}): rsa_public_key"),
            sorted[sorted.len() / 2].as_secs_f64() * 1e6
        );
    }
}
