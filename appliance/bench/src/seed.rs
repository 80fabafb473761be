//! Phase 3's shortcut: enrollment rows written straight into a stopped daemon's database.
//!
//! Enrolling 100,000 devices through SCEP would take the better part of an hour on a small
//! machine, and what phase 3 measures is the daemon's memory with that many enrollments on
//! file. The rows are written through the store's own ports (`authenticate` then
//! `token_update`, exactly what an Authenticate and a first TokenUpdate check-in write), so
//! they are enrolled devices as far as the daemon can tell, except that their identity hashes
//! belong to no certificate: they can never connect. Their sealed UnlockToken is absent.

use std::path::Path;
use std::sync::Arc;

use mdm_service::ports::{
    AuthenticateRecord, DeviceFacts, EnrollmentSource, EnrollmentStore, PushTarget, Timestamp,
    TokenUpdateRecord,
};
use mdm_store::{RedbStore, StoreOptions};

use crate::error::BenchError;

/// Concurrent writers: enough for the store's group commit to fill its batches.
const WRITERS: usize = 256;

/// The UDID of seeded row `i`: shaped like an iPhone's, with a recognisable `5EED` marker.
pub fn seeded_udid(i: usize) -> String {
    format!("00008120-5EED{i:012X}")
}

/// The push token of seeded row `i`: 64 hex digits, distinct for every row.
pub fn seeded_token(i: usize) -> String {
    format!("{i:064x}")
}

/// The row number whose push token is `token`, if it is one [`seeded_token`] makes.
pub fn seeded_index(token: &str) -> Option<usize> {
    let (zeros, tail) = token.split_at_checked(48)?;
    if token.len() != 64 || zeros.bytes().any(|b| b != b'0') {
        return None;
    }
    let i = usize::try_from(u64::from_str_radix(tail, 16).ok()?).ok()?;
    // Only the canonical (lowercase, zero-padded) spelling, as seeded.
    (seeded_token(i) == token).then_some(i)
}

/// Writes `count` enrolled-device rows (numbered from 0) into the database at `db`, which no
/// process may have open. `link_id` is recorded as their enrollment source.
pub async fn seed(db: &Path, count: usize, link_id: &str, topic: &str) -> Result<(), BenchError> {
    let store = RedbStore::open(db, StoreOptions::default())?;
    let link_id: Arc<str> = Arc::from(link_id);
    let topic: Arc<str> = Arc::from(topic);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS.min(count.max(1)) {
        let store = store.clone();
        let link_id = Arc::clone(&link_id);
        let topic = Arc::clone(&topic);
        tasks.spawn(async move {
            for i in (w..count).step_by(WRITERS) {
                write_row(&store, i, &link_id, &topic).await?;
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    store.close()?;
    Ok(())
}

async fn write_row(
    store: &RedbStore,
    i: usize,
    link_id: &str,
    topic: &str,
) -> Result<(), BenchError> {
    let id = seeded_udid(i);
    // Not the hash of any certificate: 64 hex digits that say what they are.
    let identity = format!("5eed{i:060x}");
    let at = Timestamp::now();
    store
        .authenticate(AuthenticateRecord {
            id: id.clone(),
            identity_sha256: identity.clone(),
            topic: Some(topic.to_owned()),
            facts: DeviceFacts {
                serial_number: Some(format!("SEED{i:08}")),
                model: Some("iPhone15,2".into()),
                model_name: Some("iPhone".into()),
                product_name: Some("iPhone15,2".into()),
                os_version: Some("17.4".into()),
                build_version: Some("21E219".into()),
                device_name: Some(format!("Seeded iPhone {i}")),
                imei: None,
                meid: None,
            },
            source: Some(EnrollmentSource::Link {
                link_id: link_id.to_owned(),
            }),
            at,
        })
        .await?;
    store
        .token_update(TokenUpdateRecord {
            id: id.clone(),
            device_id: id,
            user_id: None,
            user_short_name: None,
            identity_sha256: identity,
            push: PushTarget {
                token_hex: seeded_token(i),
                push_magic: uuid::Uuid::new_v4().to_string().to_uppercase(),
                topic: topic.to_owned(),
            },
            unlock_token_sealed: None,
            awaiting_configuration: false,
            at,
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdm_service::ports::EnrollmentState;

    #[tokio::test]
    async fn seeded_rows_are_enrolled_devices() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mdm.redb");
        seed(&db, 300, "link-1", "com.apple.mgmt.External.x")
            .await
            .unwrap();
        let store = RedbStore::open(&db, StoreOptions::default()).unwrap();
        assert_eq!(
            mdm_service::ports::EnrollmentStore::count_enrollments(&store).unwrap(),
            300
        );
        let rec = store.enrollment(&seeded_udid(299)).unwrap().unwrap();
        assert_eq!(rec.state, EnrollmentState::Enrolled);
        assert!(rec.identity_sha256.starts_with("5eed"));
        assert_eq!(rec.identity_sha256.len(), 64);
        assert_eq!(
            rec.push.as_ref().unwrap().topic,
            "com.apple.mgmt.External.x"
        );
        assert_eq!(
            rec.source,
            Some(EnrollmentSource::Link {
                link_id: "link-1".into()
            })
        );
        assert_eq!(rec.push.as_ref().unwrap().token_hex, seeded_token(299));
        assert_ne!(seeded_udid(1), seeded_udid(2));
        assert_ne!(seeded_token(1), seeded_token(2));
        assert_eq!(seeded_token(255).len(), 64);
        for i in [0, 1, 255, 299, 50_000, usize::MAX] {
            assert_eq!(seeded_index(&seeded_token(i)), Some(i));
        }
        assert_eq!(seeded_index(&seeded_token(0xab).to_uppercase()), None);
        assert_eq!(seeded_index(&"f".repeat(64)), None);
        assert_eq!(seeded_index("ab"), None);
        assert_eq!(seeded_index(&format!("{}+1", "0".repeat(62))), None);
        assert!(seeded_token(usize::MAX)
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        assert_eq!(seeded_udid(0).len(), 25);
    }
}
