//! The file through which the coordinating process hands enrolled device identities to its
//! worker processes: where the daemon is, the CA to trust, the key pool and, per device, its
//! UDID, certificate and pool key. It holds private keys, so it is created `0600` inside the
//! run's private temporary directory.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::enroll::EnrolledDevice;
use crate::error::BenchError;

/// One device as a worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// UDID (the enrollment id).
    pub udid: String,
    /// Base64 DER identity certificate.
    pub cert: String,
    /// Index into [`IdentityFile::keys`].
    pub key: usize,
}

/// Everything a worker needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityFile {
    /// The daemon's address.
    pub addr: SocketAddr,
    /// The appliance CA (PEM) that the daemon's TLS certificate chains to.
    pub ca_pem: String,
    /// Base64 PKCS#8 private keys (the pool).
    pub keys: Vec<String>,
    /// The devices.
    pub devices: Vec<DeviceIdentity>,
}

impl IdentityFile {
    /// Builds the file contents.
    pub fn new(
        addr: SocketAddr,
        ca_pem: &str,
        keys_pkcs8: &[&[u8]],
        devices: &[EnrolledDevice],
    ) -> Self {
        IdentityFile {
            addr,
            ca_pem: ca_pem.to_owned(),
            keys: keys_pkcs8.iter().map(|k| B64.encode(k)).collect(),
            devices: devices
                .iter()
                .map(|d| DeviceIdentity {
                    udid: d.udid.clone(),
                    cert: B64.encode(&d.cert_der),
                    key: d.key_index,
                })
                .collect(),
        }
    }

    /// Writes it to `path` (mode 0600, must not exist yet).
    pub fn write(&self, path: &Path) -> Result<(), BenchError> {
        let what = || format!("write {}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(BenchError::io(what()))?;
        let bytes = serde_json::to_vec(self)?;
        f.write_all(&bytes).map_err(BenchError::io(what()))?;
        Ok(())
    }

    /// Reads it from `path`.
    pub fn read(path: &Path) -> Result<IdentityFile, BenchError> {
        let bytes =
            std::fs::read(path).map_err(BenchError::io(format!("read {}", path.display())))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// A key of the pool, decoded.
    pub fn key_der(&self, index: usize) -> Option<Vec<u8>> {
        self.keys.get(index).and_then(|k| B64.decode(k).ok())
    }
}

impl DeviceIdentity {
    /// The certificate, decoded.
    pub fn cert_der(&self) -> Option<Vec<u8>> {
        B64.decode(&self.cert).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.json");
        let devices = vec![
            EnrolledDevice {
                udid: "00008120-0000000000000001".into(),
                cert_der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
                key_index: 1,
            },
            EnrolledDevice {
                udid: "00008120-0000000000000002".into(),
                cert_der: vec![0x30, 0x00],
                key_index: 0,
            },
        ];
        let file = IdentityFile::new(
            "127.0.0.1:8443".parse().unwrap(),
            "-----BEGIN CERTIFICATE-----\n...",
            &[b"key-zero".as_slice(), b"key-one".as_slice()],
            &devices,
        );
        file.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = IdentityFile::read(&path).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.key_der(1).unwrap(), b"key-one");
        assert!(back.key_der(2).is_none());
        assert_eq!(back.devices[0].cert_der().unwrap(), devices[0].cert_der);
        // Never overwrites: a second run must not reuse a stale file.
        assert!(file.write(&path).is_err());
    }
}
