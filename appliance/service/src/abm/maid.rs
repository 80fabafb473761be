//! The `com.apple.maid` token: Apple's `GetToken` check-in for access management of Managed
//! Apple Accounts (Apple: Device Management, "Get Token", "Support access management for
//! Managed Apple Accounts").
//!
//! When a Managed Apple Account signs in on an enrolled device, the Apple Identity Service has
//! the device ask its MDM server for a token, and checks with it that the account belongs to
//! the organisation of the MDM server that manages the device. The token is a JWT (RFC 7519),
//! signed RS256 with the private key whose public key was uploaded to that MDM server in Apple
//! Business Manager: here, the *current* key of an ABM connection. Claims:
//!
//! - `iss`: the MDM server's `server_uuid`, as `GET /account` returned it;
//! - `iat`: when the token was made (NumericDate, seconds); Apple limits its validity by it;
//! - `jti`: a random UUID; Apple accepts each token once;
//! - `service_type`: `com.apple.maid`.
//!
//! Which connection: the one that lists the device's serial number now, as ABM reported it
//! (not released from it). A device moved from one MDM server to another that are both
//! connected here can be listed by both until the old one syncs: the one Apple assigned it to
//! last wins (`device_assigned_date`), then the one whose record was updated last, then the
//! first by name. How the device enrolled does not matter: what Apple checks is the MDM
//! server the device is assigned to.
//!
//! Between uploading a new public key to ABM (`mdmctl abm public-key NAME --new`) and
//! uploading the token made for it, ABM already holds the new public key while the token
//! is signed with the current one: Apple refuses those tokens until the new token is
//! uploaded, which makes the new key current.

use std::sync::Arc;

use base64::Engine as _;
use mdm_keystore::{KeyResidence, KeystoreError, Sealer};
use tracing::{info, warn};

use super::{key_failure, KEY_PURPOSE};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{AbmConnectionRecord, AbmDeviceRecord, EnrollmentSource, Store, Timestamp};
use crate::{TokenFuture, TokenProvider};

/// The `TokenServiceType` this provider answers.
pub const MAID_SERVICE_TYPE: &str = "com.apple.maid";

/// The JOSE header of every token: RS256, a JWT.
const HEADER: &str = r#"{"alg":"RS256","typ":"JWT"}"#;

/// Answers `GetToken` for `com.apple.maid` (register it under [`MAID_SERVICE_TYPE`]).
pub struct MaidTokenProvider<S> {
    store: S,
    sealer: Arc<dyn Sealer>,
}

impl<S: Store> MaidTokenProvider<S> {
    /// A provider reading enrollments and ABM connections from `store` and signing with keys
    /// `sealer` holds.
    pub fn new(store: S, sealer: Arc<dyn Sealer>) -> Self {
        MaidTokenProvider { store, sealer }
    }

    async fn issue(&self, enrollment_id: &str) -> ServiceResult<Vec<u8>> {
        let serial = self.serial_of(enrollment_id)?;
        let records = self.store.abm_devices_by_serial(&serial)?;
        let device = assigned_record(&records).ok_or_else(|| {
            ServiceError::forbidden(
                "MAID_DEVICE_NOT_IN_ABM",
                format!(
                    "no com.apple.maid token for {enrollment_id}: its serial number {serial} is \
                     not listed by any Apple Business Manager connection of this appliance, \
                     and the token must be signed with the key of the MDM server the device is \
                     assigned to in ABM. Assign the device to an MDM server connected here, \
                     then sync it (`mdmctl abm sync NAME`)"
                ),
            )
        })?;
        let connection = device.connection.clone();
        let rec = self.store.abm_connection(&connection)?.ok_or_else(|| {
            ServiceError::forbidden(
                "MAID_DEVICE_NOT_IN_ABM",
                format!(
                    "no com.apple.maid token for {enrollment_id}: the ABM connection \
                     {connection:?} that listed serial number {serial} no longer exists"
                ),
            )
        })?;
        let (key_blob, server_uuid) = signing_material(&rec).inspect_err(|e| {
            warn!(enrollment = %enrollment_id, connection = %connection, code = e.code, "com.apple.maid token refused: {}", e.message);
        })?;

        let jti = uuid::Uuid::new_v4().to_string();
        let issued_at = Timestamp::now().0.div_euclid(1000);
        let sealer = Arc::clone(&self.sealer);
        let blob = key_blob.clone();
        let claims_jti = jti.clone();
        // The TPM signs (slowly, on a real one): off the async threads.
        let jwt = tokio::task::spawn_blocking(move || {
            maid_jwt(sealer.as_ref(), &blob, &server_uuid, issued_at, &claims_jti)
        })
        .await
        .map_err(|e| ServiceError::internal("MAID_TOKEN_FAILED", e.to_string()))?
        .map_err(|e| {
            let err = key_failure(&connection, &e);
            warn!(enrollment = %enrollment_id, connection = %connection, code = err.code, "com.apple.maid token not signed: {}", err.message);
            err
        })?;
        info!(
            enrollment = %enrollment_id,
            connection = %connection,
            jti = %jti,
            key_storage = KeyResidence::of_blob(&key_blob).as_str(),
            "com.apple.maid token issued"
        );
        Ok(jwt.into_bytes())
    }

    /// The serial number of the device an enrollment (device or user channel) belongs to.
    fn serial_of(&self, enrollment_id: &str) -> ServiceResult<String> {
        let not_found = || {
            ServiceError::not_found(
                "ENROLLMENT_NOT_FOUND",
                format!("there is no enrollment {enrollment_id}"),
            )
        };
        let enrollment = self
            .store
            .enrollment(enrollment_id)?
            .ok_or_else(not_found)?;
        let device = if enrollment.device_id == enrollment.id {
            enrollment
        } else {
            self.store
                .enrollment(&enrollment.device_id)?
                .ok_or_else(not_found)?
        };
        let serial = match &device.source {
            Some(EnrollmentSource::Ade { serial, .. }) if !serial.is_empty() => {
                Some(serial.clone())
            }
            _ => device.facts.serial_number.clone().filter(|s| !s.is_empty()),
        };
        serial.ok_or_else(|| {
            ServiceError::forbidden(
                "MAID_DEVICE_NOT_IN_ABM",
                format!(
                    "no com.apple.maid token for {enrollment_id}: the device has not reported \
                     its serial number, so its Apple Business Manager connection is unknown; \
                     it reports it in its next DeviceInformation answer"
                ),
            )
        })
    }
}

impl<S: Store> TokenProvider for MaidTokenProvider<S> {
    fn token<'a>(
        &'a self,
        enrollment_id: &'a str,
        _parameters: Option<&'a plist::Dictionary>,
    ) -> TokenFuture<'a> {
        Box::pin(self.issue(enrollment_id))
    }
}

/// The record of the connection a device is assigned to now, among the records of its serial
/// number in every connection (see the module documentation for the rule).
pub fn assigned_record(records: &[AbmDeviceRecord]) -> Option<&AbmDeviceRecord> {
    records
        .iter()
        .filter(|r| r.removed_at.is_none())
        .max_by(|a, b| {
            let assigned =
                |r: &AbmDeviceRecord| Timestamp::parse_rfc3339(&r.device.device_assigned_date);
            assigned(a)
                .cmp(&assigned(b))
                .then(a.updated_at.cmp(&b.updated_at))
                // The first name wins a tie: it must compare greatest.
                .then_with(|| b.connection.cmp(&a.connection))
        })
}

/// The current key's blob and the `server_uuid` of a connection, or why it cannot sign.
fn signing_material(rec: &AbmConnectionRecord) -> ServiceResult<(Vec<u8>, String)> {
    let name = &rec.name;
    let (Some(key), Some(_)) = (&rec.current_key, &rec.token) else {
        return Err(ServiceError::conflict(
            "MAID_CONNECTION_NOT_READY",
            format!(
                "no com.apple.maid token: ABM connection {name:?}, which lists the device, has \
                 no server token yet, so its key is not the one registered in Apple Business \
                 Manager. Upload the MDM server's token with `mdmctl abm token upload {name} \
                 FILE.p7m`"
            ),
        ));
    };
    let server_uuid = rec
        .account
        .as_ref()
        .map(|a| a.server_uuid.trim())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ServiceError::conflict(
                "MAID_CONNECTION_NOT_READY",
                format!(
                    "no com.apple.maid token: the MDM server identifier (server_uuid) of ABM \
                     connection {name:?} is not known yet, because Apple could not be asked \
                     for the account details; run `mdmctl abm sync {name}` once Apple \
                     Business Manager can be reached"
                ),
            )
        })?;
    Ok((key.key_sealed.clone(), server_uuid.to_string()))
}

/// A signed `com.apple.maid` JWT: header, claims and an RS256 signature made by the keystore
/// with the held key `key_blob` (purpose `abm-key`).
pub fn maid_jwt(
    sealer: &dyn Sealer,
    key_blob: &[u8],
    server_uuid: &str,
    issued_at: i64,
    jti: &str,
) -> Result<String, KeystoreError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::json!({
        "iss": server_uuid,
        "iat": issued_at,
        "jti": jti,
        "service_type": MAID_SERVICE_TYPE,
    });
    let signing_input = format!("{}.{}", b64.encode(HEADER), b64.encode(claims.to_string()));
    let signature = sealer.rsa_sign_sha256(KEY_PURPOSE, key_blob, signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64.encode(signature)))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    use mdm_keystore::SoftSealer;
    use mdm_proto::abm::{Account, Device};
    use serde_json::Value;

    use super::*;
    use crate::ports::{AbmKeyRecord, AbmTokenRecord};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let mut rnd = [0u8; 8];
            aws_lc_rs::rand::fill(&mut rnd).unwrap();
            let path = std::env::temp_dir().join(format!("abm-maid-{}", hex::encode(rnd)));
            std::fs::create_dir(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The RSAPublicKey inside a DER SubjectPublicKeyInfo of an RSA key: the BIT STRING that
    /// ends it (2048-bit keys: a long-form length), after its unused-bits byte.
    fn rsa_public_key(spki: &[u8]) -> &[u8] {
        let pos = spki.windows(2).rposition(|w| w == [0x03, 0x82]).unwrap();
        &spki[pos + 5..]
    }

    fn part(jwt: &str, i: usize) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        b64.decode(jwt.split('.').nth(i).unwrap()).unwrap()
    }

    #[test]
    fn the_jwt_has_apples_claims_and_verifies_with_the_public_key() {
        let dir = TempDir::new();
        let sealer = SoftSealer::open_or_create(&dir.0.join("master.key")).unwrap();
        let held = sealer.create_rsa_key(KEY_PURPOSE).unwrap();
        let jwt = maid_jwt(
            &sealer,
            &held.blob,
            "7C5C1A2E-0D4B-4E7F-9E8A-3B1D2C4F5A6B",
            1_700_000_000,
            "2f1e0d7c-1111-4222-8333-944455556666",
        )
        .unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        assert!(!jwt.contains('='), "base64url without padding");

        let header: Value = serde_json::from_slice(&part(&jwt, 0)).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        let claims: Value = serde_json::from_slice(&part(&jwt, 1)).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "7C5C1A2E-0D4B-4E7F-9E8A-3B1D2C4F5A6B",
                "iat": 1_700_000_000,
                "jti": "2f1e0d7c-1111-4222-8333-944455556666",
                "service_type": "com.apple.maid",
            })
        );

        let (input, _) = jwt.rsplit_once('.').unwrap();
        let key = UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            rsa_public_key(&held.public_key_der),
        );
        key.verify(input.as_bytes(), &part(&jwt, 2)).unwrap();
        // Another payload does not verify with that signature.
        assert!(key
            .verify(format!("{input}x").as_bytes(), &part(&jwt, 2))
            .is_err());

        // A blob held for another purpose is refused by the keystore, not signed with.
        let other = sealer.create_rsa_key("other-key").unwrap();
        let err = maid_jwt(&sealer, &other.blob, "u", 1, "j").unwrap_err();
        assert!(matches!(err, KeystoreError::WrongPurpose { .. }), "{err}");
    }

    fn device(connection: &str, assigned: &str, updated: i64) -> AbmDeviceRecord {
        AbmDeviceRecord {
            connection: connection.into(),
            serial: "C02XK1ABCDEF".into(),
            device: Device {
                serial_number: "C02XK1ABCDEF".into(),
                device_assigned_date: assigned.into(),
                ..Device::default()
            },
            first_seen_at: Timestamp(0),
            updated_at: Timestamp(updated),
            removed_at: None,
            seen_generation: 1,
            assignment: None,
            next_assign_at: None,
        }
    }

    #[test]
    fn the_device_belongs_to_the_server_it_was_assigned_to_last() {
        assert!(assigned_record(&[]).is_none());

        let north = device("north", "2024-01-10T08:00:00Z", 50);
        let south = device("south", "2024-03-02T09:30:00Z", 10);
        let picked = |rs: &[AbmDeviceRecord]| assigned_record(rs).map(|r| r.connection.clone());
        assert_eq!(
            picked(&[north.clone(), south.clone()]).as_deref(),
            Some("south")
        );
        assert_eq!(
            picked(&[south.clone(), north.clone()]).as_deref(),
            Some("south")
        );

        // Released from the newer server: the other one still lists it.
        let mut released = south.clone();
        released.removed_at = Some(Timestamp(60));
        assert_eq!(
            picked(&[north.clone(), released.clone()]).as_deref(),
            Some("north")
        );
        let mut gone = north.clone();
        gone.removed_at = Some(Timestamp(70));
        assert!(assigned_record(&[gone, released]).is_none());

        // Without assignment dates: the record updated last, then the first name.
        let a = device("a", "", 5);
        let b = device("b", "", 9);
        assert_eq!(picked(&[a.clone(), b.clone()]).as_deref(), Some("b"));
        let b = device("b", "", 5);
        assert_eq!(picked(&[b.clone(), a.clone()]).as_deref(), Some("a"));
        assert_eq!(picked(&[a, b]).as_deref(), Some("a"));
    }

    fn connection() -> AbmConnectionRecord {
        crate::abm::test_connection("north")
    }

    #[test]
    fn a_connection_signs_only_with_a_token_and_its_server_uuid() {
        let mut rec = connection();
        rec.staged_key = Some(AbmKeyRecord {
            cert_der: vec![1],
            key_sealed: b"staged".to_vec(),
            created_at: Timestamp(0),
        });
        let err = signing_material(&rec).unwrap_err();
        assert_eq!(err.code, "MAID_CONNECTION_NOT_READY");
        assert!(
            err.message.contains("mdmctl abm token upload north"),
            "{err}"
        );

        rec.current_key = Some(AbmKeyRecord {
            cert_der: vec![2],
            key_sealed: b"current".to_vec(),
            created_at: Timestamp(0),
        });
        rec.token = Some(AbmTokenRecord {
            consumer_key: "CK_1".into(),
            credentials_sealed: vec![],
            expires_at: Timestamp(i64::MAX),
            uploaded_at: Timestamp(0),
            generation: 1,
        });
        let err = signing_material(&rec).unwrap_err();
        assert_eq!(err.code, "MAID_CONNECTION_NOT_READY");
        assert!(err.message.contains("mdmctl abm sync north"), "{err}");

        rec.account = Some(Account {
            server_uuid: "UUID-1".into(),
            ..Account::default()
        });
        let (blob, uuid) = signing_material(&rec).unwrap();
        // The current key signs, never the staged one.
        assert_eq!(blob, b"current");
        assert_eq!(uuid, "UUID-1");
    }
}
