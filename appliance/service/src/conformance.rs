//! The behaviour every [`Store`] implementation must show, as async test cases that an
//! implementation's own tests run (`mdm-store` runs them against redb in a temporary
//! directory). Enabled by the `conformance` feature; not part of the service at run time.
//!
//! Each case takes a fresh, empty store. A failing case panics with the case name (printed
//! to stderr before it starts) and what differed, like `assert!` in a test.
//!
//! Where the port documentation leaves room, the cases pin the meaning down:
//! - FIFO and "newest first" follow enqueue order, not timestamps or uuids;
//! - a delivery's age (for pruning) counts from when it became final;
//! - a challenge is expired once `now` is past `expires_at`; a used one stays `AlreadyUsed`;
//! - an ABM device is due when `next_assign_at` is at or before `now`;
//! - an [`AbmBatch`](crate::ports::AbmBatch) applies `delete_connection` before its other
//!   writes, so one batch can replace a connection wholesale.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test suite: failing loudly with the offending value is its job"
)]

use std::collections::HashSet;
use std::time::Duration;

use mdm_proto::abm::{Account, Device, Profile};

use crate::lifecycle::csv::{Ownership, Platform};
use crate::ports::{
    AbmAssignOutcome, AbmAssignment, AbmBatch, AbmConnectionRecord, AbmDeviceRecord, AbmEndpoint,
    AbmKeyRecord, AbmProblem, AbmProfileRecord, AbmRuleMatch, AbmRuleRecord, AbmSyncRun,
    AbmSyncState, AbmTokenRecord, ActivityOutcome, ActivityQuery, ApiTokenRecord, Assignments,
    AuthenticateRecord, ChallengeOutcome, ChallengeRecord, Channel, CommandResult, DeliveryPage,
    DeliveryRecord, DeliveryStatus, DeviceFacts, EnrollmentBinding, EnrollmentSource,
    EnrollmentState, GroupKind, GroupRecord, InstallRecord, InstallResult, InstallState,
    IssuedCertRecord, LinkRecord, NewActivity, NewCommand, NextCommand, PreenrollRecord,
    PreenrollSource, ProfileBatch, ProfileRecord, PushRecord, PushTarget, ResultOutcome,
    RetentionPolicy, Role, Store, Timestamp, TokenUpdateRecord, UserChange, UserRecord,
};

/// Runs every case, each on a new store from `make`.
pub async fn run_all<S: Store>(make: impl Fn() -> S) {
    macro_rules! case {
        ($name:ident) => {{
            eprintln!("conformance: {}", stringify!($name));
            let store = make();
            $name(&store).await;
        }};
    }
    case!(enrollment_lifecycle);
    case!(token_update_requires_known_device);
    case!(user_channel_created_by_token_update);
    case!(binding_follows_the_enrollment_record);
    case!(binding_version_moves_with_every_write_of_the_record);
    case!(rebind_identity_moves_device_and_user_channels);
    case!(list_enrollments_pages_in_id_order);
    case!(commands_come_out_in_fifo_order);
    case!(not_now_keeps_command_queued);
    case!(a_result_reports_the_next_command);
    case!(final_statuses_dequeue);
    case!(unknown_command_writes_nothing_but_touches);
    case!(deliveries_page_in_enrollment_order_and_count_by_status);
    case!(authenticate_cancels_queue_of_device_and_user_channels);
    case!(check_out_device_and_user_channels);
    case!(enqueue_refuses_unknown_and_checked_out);
    case!(challenges_are_one_time_and_expire);
    case!(links_usage_limits_expiry_revocation);
    case!(api_tokens_by_hash);
    case!(issued_certificates);
    case!(push_results_and_owed_pushes);
    case!(challenge_and_link_writes_are_paired);
    case!(settings_put_and_atomic_put);
    case!(prune_by_age);
    case!(prune_by_count);
    case!(prune_by_age_and_count_together);
    case!(prune_is_bounded_by_batch_limit);
    case!(prune_removes_expired_challenges);
    case!(delivery_history_newest_first);
    case!(enrollments_by_serial_follow_authenticate);
    case!(abm_batch_is_written_whole);
    case!(abm_replacing_a_device_moves_its_due_entry);
    case!(abm_device_count_counts_distinct_devices);
    case!(abm_devices_by_serial_across_connections);
    case!(abm_delete_connection_removes_everything);
    case!(abm_rules_by_priority_then_name_and_deletions);
    case!(abm_devices_page_by_serial);
    case!(preenroll_records_with_activity);
    case!(activity_log_queries_and_retention);
    case!(set_configured_clears_awaiting);
    case!(profile_batch_writes_records_commands_and_states_together);
    case!(profile_installs_page_within_their_profile);
    case!(profile_batch_skips_states_of_refused_targets);
    case!(install_result_applies_only_to_the_awaited_command);
    case!(deleting_groups_and_profiles_takes_members_and_files);
    case!(user_accounts_page_in_name_order_with_their_activity);
}

const BASE: i64 = 1_700_000_000_000;

/// A fixed point in time, `ms` milliseconds after the suite's epoch.
fn t(ms: i64) -> Timestamp {
    Timestamp(BASE + ms)
}

fn facts(serial: &str) -> DeviceFacts {
    DeviceFacts {
        serial_number: Some(serial.to_owned()),
        model: Some("iPhone15,2".into()),
        os_version: Some("17.4".into()),
        ..DeviceFacts::default()
    }
}

fn auth(id: &str, at: Timestamp) -> AuthenticateRecord {
    AuthenticateRecord {
        id: id.to_owned(),
        identity_sha256: format!("identity-of-{id}"),
        topic: Some("com.apple.mgmt.External.test".into()),
        facts: facts(&format!("SERIAL-{id}")),
        source: Some(EnrollmentSource::Link {
            link_id: "link-1".into(),
        }),
        at,
    }
}

fn push(id: &str) -> PushTarget {
    PushTarget {
        token_hex: format!("{:0>64}", hex_of(id)),
        push_magic: format!("magic-{id}"),
        topic: "com.apple.mgmt.External.test".into(),
    }
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn token(id: &str, at: Timestamp) -> TokenUpdateRecord {
    let (device_id, user_id) = match id.split_once(':') {
        Some((device, user)) => (device.to_owned(), Some(user.to_owned())),
        None => (id.to_owned(), None),
    };
    TokenUpdateRecord {
        id: id.to_owned(),
        identity_sha256: format!("identity-of-{device_id}"),
        device_id,
        user_short_name: user_id.as_ref().map(|u| format!("short-{u}")),
        user_id,
        push: push(id),
        unlock_token_sealed: None,
        awaiting_configuration: false,
        at,
    }
}

/// Authenticate + TokenUpdate: an enrolled device (or user channel, for `UDID:user`).
async fn enrolled<S: Store>(store: &S, id: &str, at: Timestamp) {
    if !id.contains(':') {
        store
            .authenticate(auth(id, at))
            .await
            .expect("authenticate");
    }
    let outcome = store
        .token_update(token(id, at))
        .await
        .expect("token_update");
    assert!(
        outcome.is_some(),
        "token_update for {id} found no device channel"
    );
}

fn cmd(uuid: &str, at: Timestamp) -> NewCommand {
    NewCommand {
        uuid: uuid.to_owned(),
        request_type: format!("Request-{uuid}"),
        payload: format!(
            "<plist><dict><key>CommandUUID</key><string>{uuid}</string></dict></plist>"
        )
        .into_bytes(),
        // Both kinds are stored the same way; the flag must survive the round trip.
        sealed: uuid.ends_with('c'),
        created_at: at,
        created_by: "conformance".into(),
    }
}

async fn queue<S: Store>(store: &S, uuid: &str, targets: &[&str], at: Timestamp) {
    let targets: Vec<String> = targets.iter().map(|s| (*s).to_owned()).collect();
    let outcome = store
        .enqueue(cmd(uuid, at), targets.clone())
        .await
        .expect("enqueue");
    assert_eq!(outcome.queued, targets, "enqueue {uuid}: queued");
    assert!(
        outcome.refused.is_empty(),
        "enqueue {uuid}: refused {:?}",
        outcome.refused
    );
}

fn report(uuid: &str, status: DeliveryStatus, at: Timestamp) -> CommandResult {
    CommandResult {
        uuid: uuid.to_owned(),
        status,
        raw: format!("report {uuid} {status:?}").into_bytes(),
        error_chain_json: (status == DeliveryStatus::Error)
            .then(|| r#"[{"ErrorCode":12021,"ErrorDomain":"MCMDMErrorDomain"}]"#.to_owned()),
        at,
        touch: true,
        skip_next: HashSet::new(),
    }
}

async fn answer<S: Store>(store: &S, id: &str, uuid: &str, status: DeliveryStatus, at: Timestamp) {
    recorded(store, id, report(uuid, status, at)).await;
}

/// Records `result`, which must be for a queued command, and checks the next command the
/// write reports against `next_command` read just after it. Returns what the write reported.
async fn recorded<S: Store>(store: &S, id: &str, result: CommandResult) -> NextCommand {
    let (uuid, status, skip) = (result.uuid.clone(), result.status, result.skip_next.clone());
    let outcome = store
        .record_result(id, result)
        .await
        .expect("record_result");
    let ResultOutcome::Recorded { request_type, next } = outcome else {
        panic!("{status:?} from {id} for {uuid}: {outcome:?}");
    };
    assert_eq!(
        request_type,
        format!("Request-{uuid}"),
        "{status:?} from {id} for {uuid}"
    );
    let read = store.next_command(id, &skip).expect("next_command");
    match &next {
        NextCommand::Queued(cmd) => assert_eq!(Some(cmd), read.as_ref(), "next after {uuid}"),
        NextCommand::Empty => assert_eq!(None, read, "next after {uuid}"),
        NextCommand::Unread => {}
    }
    next
}

fn next<S: Store>(store: &S, id: &str, skip: &[&str]) -> Option<String> {
    let skip: HashSet<String> = skip.iter().map(|s| (*s).to_owned()).collect();
    store
        .next_command(id, &skip)
        .expect("next_command")
        .map(|c| c.uuid)
}

fn delivery<S: Store>(store: &S, uuid: &str, id: &str) -> DeliveryRecord {
    store
        .deliveries(uuid, None, usize::MAX)
        .expect("deliveries")
        .into_iter()
        .find(|d| d.enrollment_id == id)
        .unwrap_or_else(|| panic!("no delivery of {uuid} to {id}"))
}

fn ids(records: &[crate::ports::EnrollmentRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn uuids(records: &[DeliveryRecord]) -> Vec<&str> {
    records.iter().map(|r| r.command_uuid.as_str()).collect()
}

fn policy(max_age: Duration, max_finished: usize, batch_limit: usize) -> RetentionPolicy {
    RetentionPolicy {
        max_age,
        max_finished_per_enrollment: max_finished,
        batch_limit,
    }
}

fn challenge(sha: &str, expires_at: Timestamp) -> ChallengeRecord {
    ChallengeRecord {
        challenge_sha256: sha.to_owned(),
        profile_uuid: format!("profile-{sha}"),
        source: EnrollmentSource::Ade {
            udid: "UDID-ADE".into(),
            serial: "SERIAL-ADE".into(),
            user: None,
        },
        created_at: t(0),
        expires_at,
        used_at: None,
    }
}

/// Authenticate, TokenUpdate (activation, then a refresh), bootstrap token, touch, and a
/// re-authentication that starts the enrollment over.
pub async fn enrollment_lifecycle<S: Store>(store: &S) {
    assert_eq!(store.count_enrollments().unwrap(), 0);
    assert!(store.enrollment("D1").unwrap().is_none());

    store.authenticate(auth("D1", t(0))).await.unwrap();
    let e = store
        .enrollment("D1")
        .unwrap()
        .expect("authenticated enrollment");
    assert_eq!(e.id, "D1");
    assert_eq!(e.device_id, "D1");
    assert_eq!(e.channel, Channel::Device);
    assert_eq!(e.state, EnrollmentState::Authenticated);
    assert_eq!(e.identity_sha256, "identity-of-D1");
    assert_eq!(e.topic.as_deref(), Some("com.apple.mgmt.External.test"));
    assert_eq!(e.facts, facts("SERIAL-D1"));
    assert_eq!(
        e.source,
        Some(EnrollmentSource::Link {
            link_id: "link-1".into()
        })
    );
    assert_eq!(e.push, None);
    assert_eq!(e.authenticated_at, t(0));
    assert_eq!(e.last_seen_at, t(0));
    assert_eq!(e.enrolled_at, None);

    let mut first = token("D1", t(10));
    first.unlock_token_sealed = Some(b"sealed-unlock".to_vec());
    first.awaiting_configuration = true;
    let outcome = store
        .token_update(first)
        .await
        .unwrap()
        .expect("known device");
    assert!(outcome.activated, "the first TokenUpdate activates");
    let e = store.enrollment("D1").unwrap().unwrap();
    assert_eq!(e.state, EnrollmentState::Enrolled);
    assert_eq!(e.push, Some(push("D1")));
    assert_eq!(
        e.unlock_token_sealed.as_deref(),
        Some(b"sealed-unlock".as_slice())
    );
    assert!(e.awaiting_configuration);
    assert_eq!(e.enrolled_at, Some(t(10)));
    assert_eq!(e.token_updated_at, Some(t(10)));
    assert_eq!(e.last_seen_at, t(10));

    let outcome = store
        .token_update(token("D1", t(20)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !outcome.activated,
        "a later TokenUpdate does not activate again"
    );
    let e = store.enrollment("D1").unwrap().unwrap();
    assert_eq!(
        e.unlock_token_sealed.as_deref(),
        Some(b"sealed-unlock".as_slice()),
        "a TokenUpdate without UnlockToken keeps the stored one"
    );
    assert!(!e.awaiting_configuration);
    assert_eq!(e.enrolled_at, Some(t(10)));
    assert_eq!(e.token_updated_at, Some(t(20)));

    assert!(store
        .set_bootstrap_token("D1", Some(b"sealed-bootstrap".to_vec()), t(30))
        .await
        .unwrap());
    assert!(!store
        .set_bootstrap_token("NOPE", Some(vec![1]), t(30))
        .await
        .unwrap());
    let e = store.enrollment("D1").unwrap().unwrap();
    assert_eq!(
        e.bootstrap_token_sealed.as_deref(),
        Some(b"sealed-bootstrap".as_slice())
    );

    store.touch("D1", t(40)).await.unwrap();
    store.touch("NOPE", t(40)).await.unwrap();
    assert_eq!(store.enrollment("D1").unwrap().unwrap().last_seen_at, t(40));
    assert!(
        store.enrollment("NOPE").unwrap().is_none(),
        "touch creates nothing"
    );

    store.authenticate(auth("D1", t(50))).await.unwrap();
    let e = store.enrollment("D1").unwrap().unwrap();
    assert_eq!(e.state, EnrollmentState::Authenticated);
    assert_eq!(e.authenticated_at, t(50));
    assert_eq!(e.push, None, "re-authentication is a new enrollment");
    assert_eq!(e.unlock_token_sealed, None);
    assert_eq!(e.bootstrap_token_sealed, None);
    assert_eq!(e.enrolled_at, None);
    assert_eq!(store.count_enrollments().unwrap(), 1);
}

/// A TokenUpdate for a device (or a user on a device) that never authenticated is refused.
pub async fn token_update_requires_known_device<S: Store>(store: &S) {
    assert_eq!(
        store.token_update(token("GHOST", t(0))).await.unwrap(),
        None
    );
    assert_eq!(
        store.token_update(token("GHOST:user", t(0))).await.unwrap(),
        None
    );
    assert!(store.enrollment("GHOST").unwrap().is_none());
    assert!(store.enrollment("GHOST:user").unwrap().is_none());
    assert_eq!(store.count_enrollments().unwrap(), 0);
}

/// A user-channel TokenUpdate creates the channel from its device channel.
pub async fn user_channel_created_by_token_update<S: Store>(store: &S) {
    enrolled(store, "D2", t(0)).await;
    let outcome = store
        .token_update(token("D2:U1", t(5)))
        .await
        .unwrap()
        .expect("device known");
    assert!(outcome.activated);
    let device = store.enrollment("D2").unwrap().unwrap();
    let user = store
        .enrollment("D2:U1")
        .unwrap()
        .expect("user channel created");
    assert_eq!(user.channel, Channel::User);
    assert_eq!(user.device_id, "D2");
    assert_eq!(user.user_id.as_deref(), Some("U1"));
    assert_eq!(user.user_short_name.as_deref(), Some("short-U1"));
    assert_eq!(user.state, EnrollmentState::Enrolled);
    assert_eq!(user.identity_sha256, device.identity_sha256);
    assert_eq!(user.topic, device.topic);
    assert_eq!(user.facts, device.facts);
    assert_eq!(user.source, device.source);
    assert_eq!(user.push, Some(push("D2:U1")));
    assert_eq!(
        device.push,
        Some(push("D2")),
        "the device's push target is its own"
    );

    let again = store
        .token_update(token("D2:U1", t(6)))
        .await
        .unwrap()
        .unwrap();
    assert!(!again.activated);
    assert_eq!(
        ids(&store.list_enrollments(None, 10).unwrap()),
        ["D2", "D2:U1"]
    );
}

/// The binding read on every device request holds what the full record holds, through each
/// write that changes one of its fields.
pub async fn binding_follows_the_enrollment_record<S: Store>(store: &S) {
    fn same<S: Store>(store: &S, id: &str) -> EnrollmentBinding {
        let rec = store.enrollment(id).unwrap().expect("enrollment");
        let binding = store.enrollment_binding(id).unwrap().expect("binding");
        assert_eq!(binding, EnrollmentBinding::from(&rec), "binding of {id}");
        binding
    }
    assert_eq!(store.enrollment_binding("D7").unwrap(), None);

    store.authenticate(auth("D7", t(0))).await.unwrap();
    let b = same(store, "D7");
    assert_eq!(b.state, EnrollmentState::Authenticated);
    assert_eq!(b.identity_sha256, "identity-of-D7");

    let mut first = token("D7", t(5));
    first.awaiting_configuration = true;
    store.token_update(first).await.unwrap().unwrap();
    assert!(same(store, "D7").awaiting_configuration);
    store
        .token_update(token("D7:U1", t(6)))
        .await
        .unwrap()
        .unwrap();
    let user = same(store, "D7:U1");
    assert_eq!(
        (user.channel, user.device_id.as_str()),
        (Channel::User, "D7")
    );

    assert!(store.set_configured("D7", t(7)).await.unwrap());
    assert!(!same(store, "D7").awaiting_configuration);
    store.touch("D7", t(90_000)).await.unwrap();
    assert_eq!(same(store, "D7").last_seen_at, t(90_000));
    assert!(store
        .rebind_identity("D7", "identity-of-D7", "renewed", t(90_001))
        .await
        .unwrap());
    assert_eq!(same(store, "D7:U1").identity_sha256, "renewed");
    store.check_out("D7", t(90_002)).await.unwrap();
    assert_eq!(same(store, "D7").state, EnrollmentState::CheckedOut);
    assert_eq!(same(store, "D7:U1").state, EnrollmentState::CheckedOut);
}

/// Every kind of write to an enrollment record moves its binding version by the time the
/// write returns, for each record written (a device's user channels too). A connection that
/// keeps a binding relies on this to notice a check-out or a new identity.
pub async fn binding_version_moves_with_every_write_of_the_record<S: Store>(store: &S) {
    /// Runs `write` and asserts that the versions of `ids` all moved.
    async fn moves<S: Store, F: std::future::Future<Output = ()>>(
        store: &S,
        what: &str,
        ids: &[&str],
        write: F,
    ) {
        let before: Vec<u64> = ids.iter().map(|id| store.binding_version(id)).collect();
        write.await;
        for (id, before) in ids.iter().zip(before) {
            assert_ne!(
                store.binding_version(id),
                before,
                "{what}: the binding version of {id} did not move"
            );
        }
    }

    moves(store, "Authenticate", &["V1"], async {
        store.authenticate(auth("V1", t(0))).await.unwrap();
    })
    .await;
    moves(store, "TokenUpdate", &["V1"], async {
        let mut first = token("V1", t(1));
        first.awaiting_configuration = true;
        store.token_update(first).await.unwrap().unwrap();
    })
    .await;
    moves(store, "a user channel's TokenUpdate", &["V1:U1"], async {
        store
            .token_update(token("V1:U1", t(2)))
            .await
            .unwrap()
            .unwrap();
    })
    .await;
    moves(store, "DeviceConfigured", &["V1"], async {
        assert!(store.set_configured("V1", t(3)).await.unwrap());
    })
    .await;
    moves(store, "a bootstrap token", &["V1"], async {
        assert!(store
            .set_bootstrap_token("V1", Some(b"sealed".to_vec()), t(4))
            .await
            .unwrap());
    })
    .await;
    moves(store, "a push result", &["V1"], async {
        store
            .record_pushes(vec![("V1".into(), PushRecord::Sent { at: t(5) })])
            .await
            .unwrap();
    })
    .await;
    moves(store, "a last-seen time", &["V1"], async {
        store.touch("V1", t(60_000)).await.unwrap();
    })
    .await;
    queue(store, "bv-1", &["V1"], t(60_001)).await;
    moves(
        store,
        "a result that moves the last-seen time",
        &["V1"],
        async {
            answer(
                store,
                "V1",
                "bv-1",
                DeliveryStatus::Acknowledged,
                t(120_000),
            )
            .await;
        },
    )
    .await;
    moves(store, "a renewed identity", &["V1", "V1:U1"], async {
        assert!(store
            .rebind_identity("V1", "identity-of-V1", "renewed", t(120_001))
            .await
            .unwrap());
    })
    .await;
    moves(store, "CheckOut", &["V1", "V1:U1"], async {
        assert!(store.check_out("V1", t(120_002)).await.unwrap());
    })
    .await;
}

/// A renewed identity moves the device and its user channels, only from the bound hash.
pub async fn rebind_identity_moves_device_and_user_channels<S: Store>(store: &S) {
    enrolled(store, "D9", t(0)).await;
    store
        .token_update(token("D9:U1", t(1)))
        .await
        .unwrap()
        .unwrap();
    let old = store.enrollment("D9").unwrap().unwrap().identity_sha256;
    assert!(!store
        .rebind_identity("D9", "not-the-bound-hash", "new", t(2))
        .await
        .unwrap());
    assert_eq!(
        store.enrollment("D9").unwrap().unwrap().identity_sha256,
        old
    );
    assert!(!store
        .rebind_identity("nobody", &old, "new", t(2))
        .await
        .unwrap());
    assert!(store
        .rebind_identity("D9", &old, "new", t(3))
        .await
        .unwrap());
    assert_eq!(
        store.enrollment("D9").unwrap().unwrap().identity_sha256,
        "new"
    );
    assert_eq!(
        store.enrollment("D9:U1").unwrap().unwrap().identity_sha256,
        "new"
    );
    assert!(
        !store
            .rebind_identity("D9", &old, "newer", t(4))
            .await
            .unwrap(),
        "only from the bound hash"
    );
}

/// Id order, user channels right after their device, `after` exclusive, `limit` respected.
pub async fn list_enrollments_pages_in_id_order<S: Store>(store: &S) {
    for id in ["C", "A", "B"] {
        enrolled(store, id, t(0)).await;
    }
    enrolled(store, "B:u1", t(1)).await;
    assert_eq!(store.count_enrollments().unwrap(), 4);
    assert_eq!(
        ids(&store.list_enrollments(None, 10).unwrap()),
        ["A", "B", "B:u1", "C"]
    );
    assert_eq!(ids(&store.list_enrollments(None, 2).unwrap()), ["A", "B"]);
    assert_eq!(
        ids(&store.list_enrollments(Some("B"), 2).unwrap()),
        ["B:u1", "C"]
    );
    assert!(store.list_enrollments(Some("C"), 2).unwrap().is_empty());
    assert!(store.list_enrollments(None, 0).unwrap().is_empty());
}

/// Commands come out in the order they were queued (not by uuid), each exactly as stored.
pub async fn commands_come_out_in_fifo_order<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    let order = ["cmd-c", "cmd-b", "cmd-a"];
    for (i, uuid) in (1..).zip(order) {
        queue(store, uuid, &["D"], t(i)).await;
    }
    assert_eq!(store.queued_count("D").unwrap(), 3);
    let first = store
        .next_command("D", &HashSet::new())
        .unwrap()
        .expect("a queued command");
    let expected = cmd("cmd-c", t(1));
    assert_eq!(first.uuid, expected.uuid);
    assert_eq!(first.request_type, expected.request_type);
    assert_eq!(first.payload, expected.payload);
    assert!(first.sealed && expected.sealed);
    let record = store.command("cmd-c").unwrap().expect("command stored");
    assert_eq!(record.uuid, expected.uuid);
    assert_eq!(record.request_type, expected.request_type);
    assert_eq!(record.payload, expected.payload);
    assert!(record.sealed);
    assert_eq!(record.created_at, expected.created_at);
    assert_eq!(record.created_by, expected.created_by);
    assert!(store.command("cmd-zzz").unwrap().is_none());

    for (i, uuid) in (10..).zip(order) {
        assert_eq!(next(store, "D", &[]).as_deref(), Some(uuid));
        answer(store, "D", uuid, DeliveryStatus::Acknowledged, t(i)).await;
    }
    assert_eq!(next(store, "D", &[]), None);
    assert_eq!(store.queued_count("D").unwrap(), 0);
}

/// NotNow keeps the command queued (the connection skips it); a final answer later removes it.
pub async fn not_now_keeps_command_queued<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    queue(store, "c1", &["D"], t(1)).await;
    queue(store, "c2", &["D"], t(2)).await;
    assert_eq!(next(store, "D", &[]).as_deref(), Some("c1"));
    answer(store, "D", "c1", DeliveryStatus::NotNow, t(3)).await;
    assert_eq!(store.queued_count("D").unwrap(), 2);
    let d = delivery(store, "c1", "D");
    assert_eq!(d.status, DeliveryStatus::NotNow);
    assert_eq!(d.updated_at, t(3));
    assert_eq!(d.result, None, "NotNow is not a final report");
    assert_eq!(next(store, "D", &["c1"]).as_deref(), Some("c2"));
    assert_eq!(
        next(store, "D", &[]).as_deref(),
        Some("c1"),
        "still the oldest"
    );
    assert_eq!(next(store, "D", &["c1", "c2"]), None);

    answer(store, "D", "c1", DeliveryStatus::Acknowledged, t(4)).await;
    assert_eq!(store.queued_count("D").unwrap(), 1);
    assert_eq!(next(store, "D", &[]).as_deref(), Some("c2"));
    assert_eq!(
        delivery(store, "c1", "D").status,
        DeliveryStatus::Acknowledged
    );
}

fn skipping(result: CommandResult, skip: &[&str]) -> CommandResult {
    CommandResult {
        skip_next: skip.iter().map(|s| (*s).to_owned()).collect(),
        ..result
    }
}

/// The next command a result's write reports is the one `next_command` reads after it, with
/// the same skip set, whatever the result's place in the queue; a UUID enqueued again after
/// its command was pruned comes with its new payload.
pub async fn a_result_reports_the_next_command<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    enrolled(store, "E", t(0)).await;
    for (i, uuid) in (1..).zip(["c1", "c2", "c3"]) {
        queue(store, uuid, &["D", "E"], t(i)).await;
    }
    let not_now = report("c1", DeliveryStatus::NotNow, t(10));
    let next = recorded(store, "D", skipping(not_now, &["c1"])).await;
    let NextCommand::Queued(c2) = next else {
        panic!("after c1: {next:?}");
    };
    let expected = cmd("c2", t(2));
    assert_eq!(
        (c2.uuid.as_str(), &c2.request_type, &c2.payload, c2.sealed),
        (
            "c2",
            &expected.request_type,
            &expected.payload,
            expected.sealed
        )
    );
    let ack = |uuid: &str, at| report(uuid, DeliveryStatus::Acknowledged, t(at));
    let next = recorded(store, "D", skipping(ack("c2", 11), &["c1"])).await;
    assert!(
        matches!(&next, NextCommand::Queued(c) if c.uuid == "c3"),
        "{next:?}"
    );
    let next = recorded(store, "D", skipping(ack("c3", 12), &["c1"])).await;
    assert_eq!(next, NextCommand::Empty);
    // Without the skip, a command answered NotNow is its own next.
    let next = recorded(store, "D", report("c1", DeliveryStatus::NotNow, t(13))).await;
    assert!(
        matches!(&next, NextCommand::Queued(c) if c.uuid == "c1"),
        "{next:?}"
    );
    assert_eq!(
        recorded(store, "D", ack("c1", 14)).await,
        NextCommand::Empty
    );
    // The other enrollment's queue is its own.
    let next = recorded(store, "E", ack("c2", 15)).await;
    assert!(
        matches!(&next, NextCommand::Queued(c) if c.uuid == "c1"),
        "{next:?}"
    );

    // A result far down a long queue (after many commands answered NotNow) is found all the
    // same.
    let held: Vec<String> = (0..80).map(|i| format!("h{i:02}")).collect();
    for (i, uuid) in (100..).zip(&held) {
        queue(store, uuid, &["D"], t(i)).await;
    }
    let skip: Vec<&str> = held[..75].iter().map(String::as_str).collect();
    recorded(store, "D", skipping(ack("h75", 300), &skip)).await;
    assert_eq!(
        delivery(store, "h75", "D").status,
        DeliveryStatus::Acknowledged
    );
    assert_eq!(store.queued_count("D").unwrap(), 79);

    // Prune c3 (finished everywhere), then enqueue its UUID again with another payload.
    recorded(store, "E", ack("c3", 16)).await;
    store
        .prune(policy(Duration::from_secs(1), 1000, 100), t(100_000))
        .await
        .unwrap();
    assert!(store.command("c3").unwrap().is_none());
    queue(store, "c4", &["E"], t(100_001)).await;
    let again = NewCommand {
        payload: b"<plist><dict><key>CommandUUID</key><string>c3</string><key>Again</key><true/></dict></plist>".to_vec(),
        ..cmd("c3", t(100_002))
    };
    store
        .enqueue(again.clone(), vec!["E".into()])
        .await
        .unwrap();
    recorded(store, "E", ack("c1", 100_003)).await;
    let next = recorded(store, "E", ack("c4", 100_004)).await;
    let NextCommand::Queued(c3) = next else {
        panic!("after c4: {next:?}");
    };
    assert_eq!(c3.payload, again.payload);
    assert_eq!(
        store
            .next_command("E", &HashSet::new())
            .unwrap()
            .unwrap()
            .payload,
        again.payload
    );
}

/// Acknowledged, Error and CommandFormatError all finish the delivery and keep the report.
pub async fn final_statuses_dequeue<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    let cases = [
        ("c-ack", DeliveryStatus::Acknowledged),
        ("c-err", DeliveryStatus::Error),
        ("c-fmt", DeliveryStatus::CommandFormatError),
    ];
    for (i, (uuid, _)) in (1..).zip(cases) {
        queue(store, uuid, &["D"], t(i)).await;
    }
    for (i, (uuid, status)) in (10..).zip(cases) {
        answer(store, "D", uuid, status, t(i)).await;
    }
    assert_eq!(store.queued_count("D").unwrap(), 0);
    assert_eq!(next(store, "D", &[]), None);
    for (i, (uuid, status)) in (1..).zip(cases) {
        let d = delivery(store, uuid, "D");
        let sent = report(uuid, status, t(i + 9));
        assert_eq!(d.status, status);
        assert_eq!(d.request_type, format!("Request-{uuid}"));
        assert_eq!(d.queued_at, t(i));
        assert_eq!(d.updated_at, t(i + 9));
        assert_eq!(d.result.as_deref(), Some(sent.raw.as_slice()));
        assert_eq!(d.error_chain_json, sent.error_chain_json);
    }
}

/// A report for a command not queued for that enrollment changes nothing but `last_seen_at`.
pub async fn unknown_command_writes_nothing_but_touches<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    enrolled(store, "E", t(0)).await;
    queue(store, "c1", &["D"], t(1)).await;

    let outcome = store
        .record_result(
            "D",
            report("never-queued", DeliveryStatus::Acknowledged, t(5)),
        )
        .await
        .unwrap();
    assert_eq!(outcome, ResultOutcome::UnknownCommand);
    assert_eq!(store.enrollment("D").unwrap().unwrap().last_seen_at, t(5));
    assert!(store
        .deliveries("never-queued", None, usize::MAX)
        .unwrap()
        .is_empty());
    assert!(store.command("never-queued").unwrap().is_none());

    let outcome = store
        .record_result("E", report("c1", DeliveryStatus::Acknowledged, t(6)))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ResultOutcome::UnknownCommand,
        "c1 was not queued for E"
    );
    let all = store.deliveries("c1", None, usize::MAX).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, DeliveryStatus::Queued);

    answer(store, "D", "c1", DeliveryStatus::Acknowledged, t(7)).await;
    let outcome = store
        .record_result("D", report("c1", DeliveryStatus::Error, t(8)))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ResultOutcome::UnknownCommand,
        "c1 is already finished"
    );
    let d = delivery(store, "c1", "D");
    assert_eq!(d.status, DeliveryStatus::Acknowledged);
    assert_eq!(d.updated_at, t(7));
    assert_eq!(
        d.result.as_deref(),
        Some(
            report("c1", DeliveryStatus::Acknowledged, t(7))
                .raw
                .as_slice()
        )
    );
    assert_eq!(store.enrollment("D").unwrap().unwrap().last_seen_at, t(8));

    // Without `touch` the report is recorded and the last-seen time stays.
    queue(store, "c2", &["D"], t(9)).await;
    let quiet = CommandResult {
        touch: false,
        ..report("c2", DeliveryStatus::Acknowledged, t(10))
    };
    recorded(store, "D", quiet).await;
    assert_eq!(
        delivery(store, "c2", "D").status,
        DeliveryStatus::Acknowledged
    );
    assert_eq!(store.enrollment("D").unwrap().unwrap().last_seen_at, t(8));
}

/// A command's deliveries come in pages in enrollment-id order, each with its report; the
/// counts cover every delivery whatever the page.
pub async fn deliveries_page_in_enrollment_order_and_count_by_status<S: Store>(store: &S) {
    for id in ["D3", "D1", "D5", "D2", "D4"] {
        enrolled(store, id, t(0)).await;
    }
    queue(store, "c1", &["D3", "D1", "D5", "D2", "D4"], t(1)).await;
    answer(store, "D2", "c1", DeliveryStatus::Acknowledged, t(2)).await;
    answer(store, "D4", "c1", DeliveryStatus::Error, t(3)).await;
    answer(store, "D5", "c1", DeliveryStatus::NotNow, t(4)).await;

    let ids = |page: &[DeliveryRecord]| -> Vec<String> {
        page.iter().map(|d| d.enrollment_id.clone()).collect()
    };
    let first = store.deliveries("c1", None, 2).unwrap();
    assert_eq!(ids(&first), ["D1", "D2"]);
    assert_eq!(
        first[1].result.as_deref(),
        Some(
            report("c1", DeliveryStatus::Acknowledged, t(2))
                .raw
                .as_slice()
        )
    );
    let second = store.deliveries("c1", Some("D2"), 2).unwrap();
    assert_eq!(ids(&second), ["D3", "D4"]);
    assert_eq!(second[1].status, DeliveryStatus::Error);
    let last = store.deliveries("c1", Some("D4"), 2).unwrap();
    assert_eq!(ids(&last), ["D5"]);
    assert_eq!(last[0].result, None, "NotNow keeps no report");
    assert!(store.deliveries("c1", Some("D5"), 2).unwrap().is_empty());
    assert!(store.deliveries("c1", None, 0).unwrap().is_empty());

    let page = store.delivery_page("c1", Some("D2"), 2).unwrap();
    assert_eq!(
        page.deliveries, second,
        "the page is the one `deliveries` returns"
    );
    let mut counts = page.counts;
    counts.sort_by_key(|(status, _)| format!("{status:?}"));
    assert_eq!(
        counts,
        [
            (DeliveryStatus::Acknowledged, 1),
            (DeliveryStatus::Error, 1),
            (DeliveryStatus::NotNow, 1),
            (DeliveryStatus::Queued, 2),
        ]
    );
    assert_eq!(
        store.delivery_page("never-queued", None, 10).unwrap(),
        DeliveryPage {
            deliveries: Vec::new(),
            counts: Vec::new()
        }
    );
}

/// Re-authentication cancels what was queued for the device and its user channels only
/// (`DEV10` merely shares a prefix with `DEV1`).
pub async fn authenticate_cancels_queue_of_device_and_user_channels<S: Store>(store: &S) {
    for id in ["DEV1", "DEV10", "DEV2"] {
        enrolled(store, id, t(0)).await;
    }
    enrolled(store, "DEV1:U1", t(0)).await;
    queue(store, "c1", &["DEV1", "DEV1:U1", "DEV10", "DEV2"], t(1)).await;
    queue(store, "c2", &["DEV1"], t(2)).await;
    answer(store, "DEV1", "c2", DeliveryStatus::NotNow, t(3)).await;

    store.authenticate(auth("DEV1", t(100))).await.unwrap();
    assert_eq!(store.queued_count("DEV1").unwrap(), 0);
    assert_eq!(store.queued_count("DEV1:U1").unwrap(), 0);
    assert_eq!(store.queued_count("DEV10").unwrap(), 1);
    assert_eq!(store.queued_count("DEV2").unwrap(), 1);
    assert_eq!(next(store, "DEV1", &[]), None);
    assert_eq!(next(store, "DEV1:U1", &[]), None);
    for (uuid, id) in [("c1", "DEV1"), ("c1", "DEV1:U1"), ("c2", "DEV1")] {
        let d = delivery(store, uuid, id);
        assert_eq!(d.status, DeliveryStatus::Canceled, "{uuid} for {id}");
        assert_eq!(d.updated_at, t(100));
    }
    assert_eq!(
        delivery(store, "c1", "DEV10").status,
        DeliveryStatus::Queued
    );
    assert_eq!(delivery(store, "c1", "DEV2").status, DeliveryStatus::Queued);
    let late = store
        .record_result("DEV1", report("c1", DeliveryStatus::Acknowledged, t(101)))
        .await
        .unwrap();
    assert_eq!(
        late,
        ResultOutcome::UnknownCommand,
        "a canceled command is finished"
    );
}

/// CheckOut of a device checks out its user channels and cancels their queues; CheckOut of a
/// user channel leaves its device alone.
pub async fn check_out_device_and_user_channels<S: Store>(store: &S) {
    for id in ["D", "D:U", "E", "E:U"] {
        enrolled(store, id, t(0)).await;
    }
    queue(store, "c1", &["D", "D:U", "E", "E:U"], t(1)).await;

    assert!(store.check_out("D", t(50)).await.unwrap());
    for id in ["D", "D:U"] {
        let e = store.enrollment(id).unwrap().unwrap();
        assert_eq!(e.state, EnrollmentState::CheckedOut, "{id}");
        assert_eq!(e.checked_out_at, Some(t(50)), "{id}");
        assert_eq!(store.queued_count(id).unwrap(), 0, "{id}");
        assert_eq!(
            delivery(store, "c1", id).status,
            DeliveryStatus::Canceled,
            "{id}"
        );
    }
    assert!(!store.check_out("UNKNOWN", t(50)).await.unwrap());

    assert!(store.check_out("E:U", t(60)).await.unwrap());
    assert_eq!(
        store.enrollment("E").unwrap().unwrap().state,
        EnrollmentState::Enrolled
    );
    assert_eq!(
        store.enrollment("E:U").unwrap().unwrap().state,
        EnrollmentState::CheckedOut
    );
    assert_eq!(store.queued_count("E").unwrap(), 1);
    assert_eq!(store.queued_count("E:U").unwrap(), 0);

    let outcome = store
        .enqueue(cmd("c2", t(70)), vec!["D".into(), "D:U".into()])
        .await
        .unwrap();
    assert!(outcome.queued.is_empty());
    assert_eq!(outcome.refused, ["D", "D:U"]);
    assert!(store.command("c2").unwrap().is_none());

    store.authenticate(auth("D", t(80))).await.unwrap();
    queue(store, "c3", &["D"], t(81)).await;
}

/// Unknown and checked-out targets are refused; an enqueue nobody accepts stores nothing.
pub async fn enqueue_refuses_unknown_and_checked_out<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    store.authenticate(auth("A", t(0))).await.unwrap();
    enrolled(store, "X", t(0)).await;
    assert!(store.check_out("X", t(1)).await.unwrap());

    let outcome = store
        .enqueue(
            cmd("c1", t(2)),
            vec!["D".into(), "UNKNOWN".into(), "A".into(), "X".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.queued,
        ["D", "A"],
        "authenticated-only enrollments accept commands"
    );
    assert_eq!(outcome.refused, ["UNKNOWN", "X"]);
    assert_eq!(store.deliveries("c1", None, usize::MAX).unwrap().len(), 2);

    let outcome = store
        .enqueue(cmd("c2", t(3)), vec!["UNKNOWN".into()])
        .await
        .unwrap();
    assert!(outcome.queued.is_empty());
    assert_eq!(outcome.refused, ["UNKNOWN"]);
    assert!(store.command("c2").unwrap().is_none());
    assert!(store.deliveries("c2", None, usize::MAX).unwrap().is_empty());

    let outcome = store.enqueue(cmd("c3", t(4)), Vec::new()).await.unwrap();
    assert!(outcome.queued.is_empty() && outcome.refused.is_empty());
    assert!(store.command("c3").unwrap().is_none());
}

pub async fn challenges_are_one_time_and_expire<S: Store>(store: &S) {
    store.put_challenge(challenge("ch1", t(100))).await.unwrap();
    let accepted = match store.consume_challenge("ch1", t(10), None).await.unwrap() {
        ChallengeOutcome::Accepted(rec) => rec,
        other => panic!("first use: {other:?}"),
    };
    assert_eq!(accepted.used_at, Some(t(10)));
    assert_eq!(accepted.profile_uuid, "profile-ch1");
    match store.consume_challenge("ch1", t(20), None).await.unwrap() {
        ChallengeOutcome::AlreadyUsed(rec) => assert_eq!(rec.used_at, Some(t(10))),
        other => panic!("second use: {other:?}"),
    }
    assert_eq!(
        store
            .consume_challenge("missing", t(20), None)
            .await
            .unwrap(),
        ChallengeOutcome::NotFound
    );

    store.put_challenge(challenge("ch2", t(100))).await.unwrap();
    for at in [t(150), t(160)] {
        match store.consume_challenge("ch2", at, None).await.unwrap() {
            ChallengeOutcome::Expired(rec) => assert_eq!(rec.used_at, None),
            other => panic!("expired challenge: {other:?}"),
        }
    }
}

fn link(id: &str, expires_at: Timestamp, max_uses: Option<u64>) -> LinkRecord {
    LinkRecord {
        id: id.to_owned(),
        token_sha256: format!("token-of-{id}"),
        label: format!("label {id}"),
        created_at: t(0),
        expires_at,
        revoked_at: None,
        uses: 0,
        max_uses,
        created_by: "admin".into(),
    }
}

pub async fn links_usage_limits_expiry_revocation<S: Store>(store: &S) {
    let l1 = link("L1", t(1000), Some(2));
    store.put_link(l1.clone()).await.unwrap();
    assert_eq!(store.link("L1").unwrap(), Some(l1.clone()));
    assert_eq!(
        store.link_by_token("token-of-L1").unwrap(),
        Some(l1.clone())
    );
    assert_eq!(store.link_by_token("token-of-nobody").unwrap(), None);

    let used = store
        .use_link("token-of-L1", t(10), None)
        .await
        .unwrap()
        .expect("usable");
    assert_eq!(used.uses, 1);
    let used = store
        .use_link("token-of-L1", t(11), None)
        .await
        .unwrap()
        .expect("usable");
    assert_eq!(used.uses, 2);
    assert_eq!(
        store.use_link("token-of-L1", t(12), None).await.unwrap(),
        None,
        "max_uses reached"
    );
    assert_eq!(store.link("L1").unwrap().unwrap().uses, 2);

    store.put_link(link("L2", t(100), None)).await.unwrap();
    assert!(store
        .use_link("token-of-L2", t(50), None)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.use_link("token-of-L2", t(150), None).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(store.link("L2").unwrap().unwrap().uses, 1);

    store.put_link(link("L3", t(1000), None)).await.unwrap();
    assert!(store.revoke_link("L3", t(5)).await.unwrap());
    assert!(!store.revoke_link("NOPE", t(5)).await.unwrap());
    assert_eq!(
        store.use_link("token-of-L3", t(6), None).await.unwrap(),
        None,
        "revoked"
    );
    assert_eq!(store.link("L3").unwrap().unwrap().revoked_at, Some(t(5)));
    assert_eq!(
        store.use_link("token-of-nobody", t(6), None).await.unwrap(),
        None
    );

    let mut relabeled = l1.clone();
    relabeled.label = "renamed".into();
    relabeled.uses = 2;
    store.put_link(relabeled.clone()).await.unwrap();
    assert_eq!(store.link_by_token("token-of-L1").unwrap(), Some(relabeled));

    let mut all: Vec<String> = store
        .list_links()
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    all.sort();
    assert_eq!(all, ["L1", "L2", "L3"]);
}

pub async fn api_tokens_by_hash<S: Store>(store: &S) {
    let admin = ApiTokenRecord {
        id: "T1".into(),
        name: "automation".into(),
        role: Role::Admin,
        token_sha256: "hash-1".into(),
        created_at: t(0),
        revoked_at: None,
    };
    let auditor = ApiTokenRecord {
        id: "T2".into(),
        name: "audit".into(),
        role: Role::Auditor,
        token_sha256: "hash-2".into(),
        created_at: t(1),
        revoked_at: None,
    };
    store.put_api_token(admin.clone()).await.unwrap();
    store.put_api_token(auditor.clone()).await.unwrap();
    assert_eq!(
        store.api_token_by_hash("hash-1").unwrap(),
        Some(admin.clone())
    );
    assert_eq!(
        store.api_token_by_hash("hash-2").unwrap(),
        Some(auditor.clone())
    );
    assert_eq!(store.api_token_by_hash("hash-3").unwrap(), None);

    let mut revoked = admin;
    revoked.revoked_at = Some(t(10));
    store.put_api_token(revoked.clone()).await.unwrap();
    assert_eq!(
        store.api_token_by_hash("hash-1").unwrap(),
        Some(revoked.clone())
    );
    let mut all = store.list_api_tokens().unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(all, [revoked, auditor]);
}

/// A served profile's challenge is stored with the link use that paid for it, and a consumed
/// challenge records the certificate it bought, each in one transaction and only on success.
pub async fn challenge_and_link_writes_are_paired<S: Store>(store: &S) {
    let issued = |sha: &str| IssuedCertRecord {
        sha256: sha.into(),
        serial_hex: "01".into(),
        subject: "CN=x".into(),
        not_before: t(0),
        not_after: t(1_000_000),
        issued_at: t(0),
        renewed_from: None,
        source: None,
    };
    store.put_link(link("LP", t(100), Some(1))).await.unwrap();
    let served = store
        .use_link("token-of-LP", t(10), Some(challenge("for-LP", t(100))))
        .await
        .unwrap();
    assert!(served.is_some());
    assert!(
        store.challenge("for-LP").unwrap().is_some(),
        "stored with the use"
    );
    let refused = store
        .use_link("token-of-LP", t(11), Some(challenge("second", t(100))))
        .await
        .unwrap();
    assert_eq!(refused, None, "used up");
    assert_eq!(
        store.challenge("second").unwrap(),
        None,
        "nothing written for a refused use"
    );

    match store
        .consume_challenge("for-LP", t(20), Some(issued("paid")))
        .await
        .unwrap()
    {
        ChallengeOutcome::Accepted(_) => {}
        other => panic!("{other:?}"),
    }
    assert!(store.issued("paid").unwrap().is_some());
    match store
        .consume_challenge("for-LP", t(21), Some(issued("replayed")))
        .await
        .unwrap()
    {
        ChallengeOutcome::AlreadyUsed(_) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.issued("replayed").unwrap(),
        None,
        "a replay buys nothing"
    );
    assert!(matches!(
        store
            .consume_challenge("missing", t(21), Some(issued("nothing")))
            .await
            .unwrap(),
        ChallengeOutcome::NotFound
    ));
    assert_eq!(store.issued("nothing").unwrap(), None);
}

/// Push outcomes land on the enrollment; a TokenUpdate clears an invalid token; the
/// enrollments owed a push are those with queued commands, listed once each, in id order.
pub async fn push_results_and_owed_pushes<S: Store>(store: &S) {
    for id in ["PA", "PB", "PC"] {
        enrolled(store, id, t(0)).await;
    }
    store
        .record_pushes(vec![
            ("PA".into(), PushRecord::Sent { at: t(5) }),
            (
                "PB".into(),
                PushRecord::Invalid {
                    reason: "Unregistered".into(),
                    at: t(6),
                },
            ),
            ("nobody".into(), PushRecord::Sent { at: t(6) }),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.enrollment("PA").unwrap().unwrap().last_push_at,
        Some(t(5))
    );
    let pb = store.enrollment("PB").unwrap().unwrap();
    assert_eq!(
        pb.push_invalid.map(|f| f.reason),
        Some("Unregistered".to_string())
    );
    store
        .token_update(token("PB", t(7)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.enrollment("PB").unwrap().unwrap().push_invalid,
        None,
        "new token"
    );

    assert!(store.enrollments_with_queued(None, 10).unwrap().is_empty());
    store
        .enqueue(cmd("q1", t(8)), vec!["PC".into(), "PA".into()])
        .await
        .unwrap();
    store
        .enqueue(cmd("q2", t(9)), vec!["PA".into()])
        .await
        .unwrap();
    assert_eq!(
        store.enrollments_with_queued(None, 10).unwrap(),
        ["PA", "PC"]
    );
    assert_eq!(store.enrollments_with_queued(None, 1).unwrap(), ["PA"]);
    assert_eq!(
        store.enrollments_with_queued(Some("PA"), 10).unwrap(),
        ["PC"]
    );
    let done = CommandResult {
        uuid: "q1".into(),
        status: DeliveryStatus::Acknowledged,
        raw: Vec::new(),
        error_chain_json: None,
        at: t(10),
        touch: true,
        skip_next: HashSet::new(),
    };
    store.record_result("PC", done).await.unwrap();
    assert_eq!(store.enrollments_with_queued(None, 10).unwrap(), ["PA"]);
}

pub async fn issued_certificates<S: Store>(store: &S) {
    let rec = IssuedCertRecord {
        sha256: "cert-sha".into(),
        serial_hex: "0a1b2c".into(),
        subject: "CN=UDID-1".into(),
        not_before: t(0),
        not_after: t(1_000_000),
        issued_at: t(0),
        renewed_from: Some("older-cert-sha".into()),
        source: Some(EnrollmentSource::Link {
            link_id: "L1".into(),
        }),
    };
    store.record_issued(rec.clone()).await.unwrap();
    assert_eq!(store.issued("cert-sha").unwrap(), Some(rec));
    assert_eq!(store.issued("other").unwrap(), None);
}

pub async fn settings_put_and_atomic_put<S: Store>(store: &S) {
    assert_eq!(store.setting("topic").unwrap(), None);
    store
        .put_setting("topic", b"com.apple.mgmt.External.a".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.setting("topic").unwrap().as_deref(),
        Some(b"com.apple.mgmt.External.a".as_slice())
    );
    store
        .put_setting("topic", b"com.apple.mgmt.External.b".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.setting("topic").unwrap().as_deref(),
        Some(b"com.apple.mgmt.External.b".as_slice())
    );
    store
        .put_settings(vec![
            ("ca.cert".into(), b"certificate".to_vec()),
            ("ca.key.sealed".into(), b"sealed key".to_vec()),
            ("empty".into(), Vec::new()),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.setting("ca.cert").unwrap().as_deref(),
        Some(b"certificate".as_slice())
    );
    assert_eq!(
        store.setting("ca.key.sealed").unwrap().as_deref(),
        Some(b"sealed key".as_slice())
    );
    assert_eq!(store.setting("empty").unwrap(), Some(Vec::new()));
    assert_eq!(
        store.setting("topic").unwrap().as_deref(),
        Some(b"com.apple.mgmt.External.b".as_slice())
    );
}

/// Finished deliveries older than `max_age` (counted from when they finished) go, and with
/// them commands that have no delivery left; queued ones never do.
pub async fn prune_by_age<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    enrolled(store, "E", t(0)).await;
    queue(store, "c-old", &["D"], t(0)).await;
    queue(store, "c-shared", &["D", "E"], t(0)).await;
    queue(store, "c-recent", &["D"], t(0)).await;
    queue(store, "c-queued", &["D"], t(0)).await;
    answer(store, "D", "c-old", DeliveryStatus::Acknowledged, t(10)).await;
    answer(store, "D", "c-shared", DeliveryStatus::Error, t(20)).await;
    answer(
        store,
        "D",
        "c-recent",
        DeliveryStatus::Acknowledged,
        t(9_000),
    )
    .await;

    let stats = store
        .prune(policy(Duration::from_secs(5), 1000, 100), t(10_000))
        .await
        .unwrap();
    assert_eq!(stats.deliveries_removed, 2);
    assert_eq!(stats.commands_removed, 1);
    assert!(!stats.more);
    assert!(store.command("c-old").unwrap().is_none());
    assert!(store
        .deliveries("c-old", None, usize::MAX)
        .unwrap()
        .is_empty());
    assert!(
        store.command("c-shared").unwrap().is_some(),
        "E still has it queued"
    );
    let shared = store.deliveries("c-shared", None, usize::MAX).unwrap();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].enrollment_id, "E");
    assert_eq!(
        uuids(&store.enrollment_deliveries("D", 10).unwrap()),
        ["c-queued", "c-recent"]
    );
    assert_eq!(next(store, "D", &[]).as_deref(), Some("c-queued"));

    let again = store
        .prune(policy(Duration::from_secs(5), 1000, 100), t(10_000))
        .await
        .unwrap();
    assert_eq!(again.deliveries_removed + again.commands_removed, 0);
}

/// At most `max_finished_per_enrollment` finished deliveries stay per enrollment, oldest go;
/// a delivery still queued (here one the device answered NotNow, older than all the others)
/// neither counts nor goes.
pub async fn prune_by_count<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    enrolled(store, "E", t(0)).await;
    queue(store, "c0-held", &["D"], t(0)).await;
    answer(store, "D", "c0-held", DeliveryStatus::NotNow, t(50)).await;
    for i in 1..=5 {
        let uuid = format!("c{i}");
        queue(store, &uuid, &["D"], t(i)).await;
        answer(store, "D", &uuid, DeliveryStatus::Acknowledged, t(100 + i)).await;
    }
    queue(store, "c-queued", &["D"], t(6)).await;
    queue(store, "c-e", &["E"], t(7)).await;
    answer(store, "E", "c-e", DeliveryStatus::Acknowledged, t(107)).await;

    let year = Duration::from_secs(365 * 24 * 3600);
    let stats = store.prune(policy(year, 2, 100), t(1000)).await.unwrap();
    assert_eq!(stats.deliveries_removed, 3);
    assert_eq!(stats.commands_removed, 3);
    assert!(!stats.more);
    assert_eq!(
        uuids(&store.enrollment_deliveries("D", 10).unwrap()),
        ["c-queued", "c5", "c4", "c0-held"]
    );
    assert_eq!(
        uuids(&store.enrollment_deliveries("E", 10).unwrap()),
        ["c-e"]
    );
    for gone in ["c1", "c2", "c3"] {
        assert!(store.command(gone).unwrap().is_none(), "{gone}");
    }
    let again = store.prune(policy(year, 2, 100), t(1000)).await.unwrap();
    assert_eq!(again.deliveries_removed, 0);
}

/// Deliveries removed for their age count toward the per-enrollment limit: nothing more goes
/// once the enrollment is within it.
pub async fn prune_by_age_and_count_together<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    for (i, finished) in [(1, t(10)), (2, t(20)), (3, t(9_000)), (4, t(9_100))] {
        let uuid = format!("c{i}");
        queue(store, &uuid, &["D"], t(i)).await;
        answer(store, "D", &uuid, DeliveryStatus::Acknowledged, finished).await;
    }
    let stats = store
        .prune(policy(Duration::from_secs(5), 3, 100), t(10_000))
        .await
        .unwrap();
    assert_eq!(stats.deliveries_removed, 2, "{stats:?}");
    assert_eq!(
        uuids(&store.enrollment_deliveries("D", 10).unwrap()),
        ["c4", "c3"]
    );
}

/// One call removes at most `batch_limit` deliveries and challenges and says whether more
/// remain; repeated calls finish the job.
pub async fn prune_is_bounded_by_batch_limit<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    for i in 1..=5 {
        let uuid = format!("c{i}");
        queue(store, &uuid, &["D"], t(i)).await;
        answer(store, "D", &uuid, DeliveryStatus::Acknowledged, t(10 + i)).await;
    }
    store.put_challenge(challenge("x1", t(20))).await.unwrap();
    store.put_challenge(challenge("x2", t(21))).await.unwrap();

    let rules = policy(Duration::from_secs(1), 1000, 3);
    let now = t(100_000);
    let (mut deliveries, mut challenges, mut commands) = (0, 0, 0);
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls <= 10, "prune never reported completion");
        let stats = store.prune(rules, now).await.unwrap();
        assert!(
            stats.deliveries_removed + stats.challenges_removed <= 3,
            "call {calls} exceeded the batch limit: {stats:?}"
        );
        if calls == 1 {
            assert!(stats.more, "7 items cannot fit a batch of 3");
        }
        deliveries += stats.deliveries_removed;
        challenges += stats.challenges_removed;
        commands += stats.commands_removed;
        if !stats.more {
            break;
        }
    }
    assert!(calls >= 3);
    assert_eq!((deliveries, challenges, commands), (5, 2, 5));
    assert!(store.enrollment_deliveries("D", 10).unwrap().is_empty());
}

/// Expired challenges are pruned; live ones stay usable.
pub async fn prune_removes_expired_challenges<S: Store>(store: &S) {
    store
        .put_challenge(challenge("expired", t(100)))
        .await
        .unwrap();
    store
        .put_challenge(challenge("live", t(10_000)))
        .await
        .unwrap();
    let stats = store
        .prune(policy(Duration::from_secs(3600), 1000, 100), t(5_000))
        .await
        .unwrap();
    assert_eq!(stats.challenges_removed, 1);
    assert_eq!(
        store
            .consume_challenge("expired", t(5_000), None)
            .await
            .unwrap(),
        ChallengeOutcome::NotFound
    );
    assert!(matches!(
        store
            .consume_challenge("live", t(5_000), None)
            .await
            .unwrap(),
        ChallengeOutcome::Accepted(_)
    ));
}

/// An enrollment's deliveries newest (last queued) first, whatever their state; a command's
/// deliveries cover every target.
pub async fn delivery_history_newest_first<S: Store>(store: &S) {
    enrolled(store, "D", t(0)).await;
    enrolled(store, "E", t(0)).await;
    for i in 1..=4 {
        queue(store, &format!("c{i}"), &["D"], t(i)).await;
    }
    answer(store, "D", "c1", DeliveryStatus::Acknowledged, t(10)).await;
    answer(store, "D", "c2", DeliveryStatus::NotNow, t(11)).await;

    let history = store.enrollment_deliveries("D", 10).unwrap();
    assert_eq!(uuids(&history), ["c4", "c3", "c2", "c1"]);
    let statuses: Vec<DeliveryStatus> = history.iter().map(|d| d.status).collect();
    assert_eq!(
        statuses,
        [
            DeliveryStatus::Queued,
            DeliveryStatus::Queued,
            DeliveryStatus::NotNow,
            DeliveryStatus::Acknowledged
        ]
    );
    assert_eq!(
        uuids(&store.enrollment_deliveries("D", 2).unwrap()),
        ["c4", "c3"]
    );
    assert!(store.enrollment_deliveries("D", 0).unwrap().is_empty());
    assert!(store
        .enrollment_deliveries("NOBODY", 10)
        .unwrap()
        .is_empty());

    queue(store, "c5", &["D", "E"], t(20)).await;
    let mut targets: Vec<String> = store
        .deliveries("c5", None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|d| d.enrollment_id)
        .collect();
    targets.sort();
    assert_eq!(targets, ["D", "E"]);
    assert_eq!(
        uuids(&store.enrollment_deliveries("E", 10).unwrap()),
        ["c5"]
    );
    assert_eq!(uuids(&store.enrollment_deliveries("D", 1).unwrap()), ["c5"]);
}

fn with_serial(id: &str, serial: Option<&str>, at: Timestamp) -> AuthenticateRecord {
    let mut rec = auth(id, at);
    rec.facts.serial_number = serial.map(str::to_owned);
    rec
}

fn serial_ids<S: Store>(store: &S, serial: &str) -> Vec<String> {
    store
        .enrollments_by_serial(serial)
        .expect("enrollments_by_serial")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Device channels by reported serial number: several ids may share one (a wiped device
/// enrolled again), user channels are not listed, and a re-authentication with another
/// serial (or none) moves the enrollment.
pub async fn enrollments_by_serial_follow_authenticate<S: Store>(store: &S) {
    assert!(store.enrollments_by_serial("SN-1").unwrap().is_empty());
    store
        .authenticate(with_serial("D2", Some("SN-1"), t(0)))
        .await
        .unwrap();
    store
        .authenticate(with_serial("D1", Some("SN-1"), t(1)))
        .await
        .unwrap();
    store
        .authenticate(with_serial("D3", Some("SN-2"), t(2)))
        .await
        .unwrap();
    store
        .authenticate(with_serial("D4", None, t(3)))
        .await
        .unwrap();
    store
        .token_update(token("D1", t(4)))
        .await
        .unwrap()
        .unwrap();
    store
        .token_update(token("D1:user", t(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .enrollment("D1:user")
            .unwrap()
            .unwrap()
            .facts
            .serial_number
            .as_deref(),
        Some("SN-1"),
        "the user channel carries its device's facts"
    );

    assert_eq!(
        serial_ids(store, "SN-1"),
        ["D1", "D2"],
        "device channels, by id"
    );
    assert_eq!(serial_ids(store, "SN-2"), ["D3"]);
    assert!(serial_ids(store, "SN-").is_empty(), "no prefix matches");
    assert!(serial_ids(store, "SN-10").is_empty());
    let d1 = store.enrollments_by_serial("SN-1").unwrap().remove(0);
    assert_eq!(
        Some(d1),
        store.enrollment("D1").unwrap(),
        "the full, current record"
    );

    store
        .authenticate(with_serial("D2", Some("SN-2"), t(10)))
        .await
        .unwrap();
    assert_eq!(serial_ids(store, "SN-1"), ["D1"], "moved away");
    assert_eq!(serial_ids(store, "SN-2"), ["D2", "D3"], "moved here");

    store
        .authenticate(with_serial("D1", Some("SN-1"), t(11)))
        .await
        .unwrap();
    assert!(store.check_out("D1", t(12)).await.unwrap());
    let listed = store.enrollments_by_serial("SN-1").unwrap();
    assert_eq!(listed.len(), 1, "the same serial again is listed once");
    assert_eq!(listed[0].state, EnrollmentState::CheckedOut);

    store
        .authenticate(with_serial("D3", None, t(13)))
        .await
        .unwrap();
    assert_eq!(serial_ids(store, "SN-2"), ["D2"], "no serial, no entry");
    store
        .authenticate(with_serial("D4", Some("SN-4"), t(14)))
        .await
        .unwrap();
    assert_eq!(serial_ids(store, "SN-4"), ["D4"]);
}

fn abm_connection(name: &str) -> AbmConnectionRecord {
    let key = |n: u8| AbmKeyRecord {
        cert_der: vec![0x30, 0x82, n, 0x00, 0xff],
        key_sealed: format!("sealed-key-{n}").into_bytes(),
        created_at: t(i64::from(n)),
    };
    AbmConnectionRecord {
        name: name.to_owned(),
        created_at: t(0),
        endpoint: AbmEndpoint {
            base_url: format!("https://abm.example.test/{name}"),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n...".into()),
        },
        staged_key: Some(key(2)),
        current_key: Some(key(1)),
        token: Some(AbmTokenRecord {
            consumer_key: format!("CK_{name}"),
            credentials_sealed: vec![1, 2, 3, 250],
            expires_at: t(365 * 86_400_000),
            uploaded_at: t(3),
            generation: 1,
        }),
        account: Some(Account {
            server_name: format!("MDM server {name}"),
            server_uuid: "5ba2a4c4-0000-4000-8000-000000000001".into(),
            org_name: "Example School".into(),
            ..Account::default()
        }),
        problem: Some(AbmProblem {
            code: "ABM_THROTTLED".into(),
            message: "Apple is throttling requests".into(),
            since: t(4),
            last_at: t(5),
        }),
        last_ok_at: Some(t(6)),
        sync: AbmSyncState {
            interval_seconds: 3600,
            cursor: Some(format!("cursor-{name}-1")),
            fetching: true,
            generation: 1,
            last_full_at: None,
            last_run: Some(AbmSyncRun {
                started_at: t(7),
                finished_at: Some(t(8)),
                full: true,
                pages: 2,
                added: 3,
                modified: 0,
                deleted: 0,
                error: None,
            }),
        },
        default_profile: Some("default".into()),
    }
}

fn abm_device(connection: &str, serial: &str, due: Option<Timestamp>) -> AbmDeviceRecord {
    AbmDeviceRecord {
        connection: connection.to_owned(),
        serial: serial.to_owned(),
        device: Device {
            serial_number: serial.to_owned(),
            model: "iPad Air (5th generation)".into(),
            description: "IPAD AIR WI-FI 64GB".into(),
            color: "BLUE".into(),
            os: "iOS".into(),
            device_family: "iPad".into(),
            profile_status: "empty".into(),
            device_assigned_date: "2024-05-01T10:00:00Z".into(),
            device_assigned_by: "admin@example.test".into(),
            op_type: "added".into(),
            op_date: "2024-05-01T10:00:00Z".into(),
            ..Device::default()
        },
        first_seen_at: t(0),
        updated_at: t(0),
        removed_at: None,
        seen_generation: 1,
        assignment: None,
        next_assign_at: due,
    }
}

fn abm_profile(connection: &str, name: &str) -> AbmProfileRecord {
    AbmProfileRecord {
        name: name.to_owned(),
        connection: connection.to_owned(),
        profile: Profile {
            profile_name: format!("Profile {name}"),
            url: Some("https://mdm.example.test/enroll/ade".into()),
            is_supervised: Some(true),
            await_device_configured: Some(true),
            anchor_certs: vec!["MIIB".into()],
            skip_setup_items: vec!["Siri".into(), "Privacy".into()],
            ..Profile::default()
        },
        apple_uuid: None,
        defined_at: None,
        authentication: crate::ports::EnrollmentAuth::Local,
        updated_at: t(0),
    }
}

fn abm_rule(connection: &str, name: &str, priority: i32) -> AbmRuleRecord {
    AbmRuleRecord {
        connection: connection.to_owned(),
        name: name.to_owned(),
        priority,
        matcher: AbmRuleMatch {
            serials: vec!["S-RULE".into()],
            device_family: Some("iPad".into()),
            model: Some("air".into()),
            os: None,
        },
        profile: "default".into(),
        created_at: t(0),
    }
}

fn abm_serials(devices: &[AbmDeviceRecord]) -> Vec<&str> {
    devices.iter().map(|d| d.serial.as_str()).collect()
}

async fn abm_put_devices<S: Store>(store: &S, devices: Vec<AbmDeviceRecord>) {
    store
        .abm_write(AbmBatch {
            devices,
            ..AbmBatch::default()
        })
        .await
        .expect("abm_write of devices");
}

fn abm_due<S: Store>(store: &S, connection: &str, now: Timestamp, limit: usize) -> Vec<String> {
    store
        .abm_devices_due(connection, now, limit)
        .expect("abm_devices_due")
        .into_iter()
        .map(|d| d.serial)
        .collect()
}

/// Everything of a batch is visible once its write completes, exactly as written; a later
/// batch replaces records by key.
pub async fn abm_batch_is_written_whole<S: Store>(store: &S) {
    assert!(store.abm_connections().unwrap().is_empty());
    assert!(store.abm_connection("school").unwrap().is_none());
    assert_eq!(store.abm_device_count("school").unwrap(), 0);
    assert_eq!(store.abm_next_due("school").unwrap(), None);
    assert!(store.abm_devices("school", None, 10).unwrap().is_empty());

    let connection = abm_connection("school");
    let mut assigned = abm_device("school", "S-2", Some(t(50)));
    assigned.assignment = Some(AbmAssignment {
        profile_id: "default".into(),
        profile_uuid: "A1B2C3".into(),
        outcome: AbmAssignOutcome::Throttled,
        at: t(40),
        reason: Some("Apple is throttling assignments".into()),
        failures: 2,
    });
    assigned.removed_at = Some(t(45));
    let devices = vec![
        abm_device("school", "S-1", None),
        assigned,
        abm_device("school", "S-3", Some(t(60))),
    ];
    let profiles = vec![
        abm_profile("school", "staff"),
        abm_profile("school", "default"),
    ];
    let rules = vec![
        abm_rule("school", "ipads", 10),
        abm_rule("school", "macs", 20),
    ];
    store
        .abm_write(AbmBatch {
            connection: Some(connection.clone()),
            devices: devices.clone(),
            profiles: profiles.clone(),
            rules: rules.clone(),
            ..AbmBatch::default()
        })
        .await
        .unwrap();

    assert_eq!(
        store.abm_connection("school").unwrap(),
        Some(connection.clone())
    );
    assert_eq!(
        store.abm_connections().unwrap(),
        std::slice::from_ref(&connection)
    );
    for d in &devices {
        assert_eq!(
            store.abm_device("school", &d.serial).unwrap().as_ref(),
            Some(d),
            "device {}",
            d.serial
        );
    }
    assert_eq!(store.abm_devices("school", None, 10).unwrap(), devices);
    assert_eq!(store.abm_device_count("school").unwrap(), 3);
    assert_eq!(store.abm_next_due("school").unwrap(), Some(t(50)));
    assert_eq!(abm_due(store, "school", t(100), 10), ["S-2", "S-3"]);
    assert_eq!(
        store.abm_profiles("school").unwrap(),
        [profiles[1].clone(), profiles[0].clone()],
        "profiles by name"
    );
    assert_eq!(
        store.abm_profile("school", "staff").unwrap(),
        Some(profiles[0].clone())
    );
    assert_eq!(store.abm_rules("school").unwrap(), rules);
    assert!(store.abm_device("school", "S-9").unwrap().is_none());
    assert!(store.abm_profile("school", "nope").unwrap().is_none());
    assert!(store.abm_device("other", "S-1").unwrap().is_none());

    // A sync page: the new cursor and the devices it brought, together.
    let mut next = connection.clone();
    next.sync.cursor = Some("cursor-school-2".into());
    next.sync.fetching = false;
    next.problem = None;
    let mut modified = abm_device("school", "S-1", Some(t(70)));
    modified.device.op_type = "modified".into();
    modified.updated_at = t(65);
    store
        .abm_write(AbmBatch {
            connection: Some(next.clone()),
            devices: vec![modified.clone(), abm_device("school", "S-4", None)],
            ..AbmBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(store.abm_connection("school").unwrap(), Some(next));
    assert_eq!(store.abm_device("school", "S-1").unwrap(), Some(modified));
    assert_eq!(store.abm_device_count("school").unwrap(), 4);
    assert_eq!(
        abm_serials(&store.abm_devices("school", None, 10).unwrap()),
        ["S-1", "S-2", "S-3", "S-4"]
    );
    assert_eq!(abm_due(store, "school", t(100), 10), ["S-2", "S-3", "S-1"]);
    assert_eq!(store.abm_profiles("school").unwrap().len(), 2, "untouched");
}

/// The due list follows `next_assign_at` through every replacement: earliest first, due at
/// `now` inclusive, each device once, none without `next_assign_at`, per connection.
pub async fn abm_replacing_a_device_moves_its_due_entry<S: Store>(store: &S) {
    abm_put_devices(
        store,
        vec![
            abm_device("c", "A", Some(t(300))),
            abm_device("c", "B", Some(t(100))),
            abm_device("c", "C", None),
            abm_device("c", "D", Some(t(200))),
            // A connection whose name extends "c": its devices are not "c"'s.
            abm_device("c2", "E", Some(t(50))),
        ],
    )
    .await;
    assert_eq!(store.abm_next_due("c").unwrap(), Some(t(100)));
    assert_eq!(abm_due(store, "c", t(99), 10), Vec::<String>::new());
    assert_eq!(
        abm_due(store, "c", t(200), 10),
        ["B", "D"],
        "at `now` is due"
    );
    assert_eq!(abm_due(store, "c", t(1_000), 2), ["B", "D"], "limit");
    assert_eq!(abm_due(store, "c", t(1_000), 10), ["B", "D", "A"]);
    assert!(abm_due(store, "c", t(1_000), 0).is_empty());

    abm_put_devices(store, vec![abm_device("c", "A", Some(t(50)))]).await;
    assert_eq!(store.abm_next_due("c").unwrap(), Some(t(50)));
    assert_eq!(abm_due(store, "c", t(60), 10), ["A"]);
    assert_eq!(
        abm_due(store, "c", t(1_000), 10),
        ["A", "B", "D"],
        "the old entry of A is gone"
    );

    abm_put_devices(store, vec![abm_device("c", "B", None)]).await;
    assert_eq!(abm_due(store, "c", t(1_000), 10), ["A", "D"]);
    abm_put_devices(store, vec![abm_device("c", "C", Some(t(150)))]).await;
    assert_eq!(abm_due(store, "c", t(1_000), 10), ["A", "C", "D"]);

    // Same time, new content: listed once, with the new content.
    let mut again = abm_device("c", "A", Some(t(50)));
    again.seen_generation = 7;
    abm_put_devices(store, vec![again.clone()]).await;
    let due = store.abm_devices_due("c", t(1_000), 10).unwrap();
    assert_eq!(abm_serials(&due), ["A", "C", "D"]);
    assert_eq!(due[0], again);
    assert_eq!(
        abm_due(store, "c", Timestamp(i64::MAX), 10),
        ["A", "C", "D"],
        "the end of time"
    );

    abm_put_devices(
        store,
        vec![
            abm_device("c", "A", None),
            abm_device("c", "C", None),
            abm_device("c", "D", None),
        ],
    )
    .await;
    assert_eq!(store.abm_next_due("c").unwrap(), None);
    assert!(abm_due(store, "c", Timestamp(i64::MAX), 10).is_empty());
    assert_eq!(store.abm_device_count("c").unwrap(), 4);
    assert_eq!(store.abm_next_due("c2").unwrap(), Some(t(50)));
    assert_eq!(abm_due(store, "c2", t(50), 10), ["E"]);
}

/// The count is of distinct serials per connection: replacing a device or listing it twice in
/// one batch (Apple's pages can) does not count it twice; the later record wins.
pub async fn abm_device_count_counts_distinct_devices<S: Store>(store: &S) {
    let mut later = abm_device("c", "S1", Some(t(5)));
    later.device.op_type = "modified".into();
    abm_put_devices(
        store,
        vec![
            abm_device("c", "S1", Some(t(1))),
            abm_device("c", "S2", None),
            later.clone(),
        ],
    )
    .await;
    assert_eq!(store.abm_device_count("c").unwrap(), 2);
    assert_eq!(store.abm_device("c", "S1").unwrap(), Some(later));
    assert_eq!(abm_due(store, "c", t(10), 10), ["S1"]);
    assert_eq!(store.abm_next_due("c").unwrap(), Some(t(5)));

    abm_put_devices(
        store,
        vec![
            abm_device("c", "S2", Some(t(2))),
            abm_device("c", "S3", None),
            abm_device("d", "S1", None),
        ],
    )
    .await;
    assert_eq!(store.abm_device_count("c").unwrap(), 3);
    assert_eq!(store.abm_device_count("d").unwrap(), 1);
    assert_eq!(store.abm_device_count("nobody").unwrap(), 0);
    let mut removed = abm_device("c", "S3", None);
    removed.removed_at = Some(t(20));
    abm_put_devices(store, vec![removed]).await;
    assert_eq!(
        store.abm_device_count("c").unwrap(),
        3,
        "a device ABM deleted keeps its record"
    );
}

/// One serial number in several connections (a device moved between MDM servers).
pub async fn abm_devices_by_serial_across_connections<S: Store>(store: &S) {
    abm_put_devices(
        store,
        vec![
            abm_device("west", "X", Some(t(1))),
            abm_device("east", "X", None),
            abm_device("east", "Y", None),
            abm_device("west", "X1", None),
        ],
    )
    .await;
    let mut found = store.abm_devices_by_serial("X").unwrap();
    found.sort_by(|a, b| a.connection.cmp(&b.connection));
    assert_eq!(
        found,
        [
            abm_device("east", "X", None),
            abm_device("west", "X", Some(t(1)))
        ]
    );
    assert_eq!(
        store.abm_devices_by_serial("Y").unwrap(),
        [abm_device("east", "Y", None)]
    );
    assert!(store.abm_devices_by_serial("Z").unwrap().is_empty());
    assert!(store.abm_devices_by_serial("").unwrap().is_empty());

    // Replacing keeps one entry per connection.
    abm_put_devices(store, vec![abm_device("east", "X", Some(t(9)))]).await;
    assert_eq!(store.abm_devices_by_serial("X").unwrap().len(), 2);
}

/// Deleting a connection removes it with its devices, their index entries and count, its
/// profiles and rules, and nothing of any other connection.
pub async fn abm_delete_connection_removes_everything<S: Store>(store: &S) {
    for name in ["a", "a2"] {
        store
            .abm_write(AbmBatch {
                connection: Some(abm_connection(name)),
                devices: vec![
                    abm_device(name, "SHARED", Some(t(10))),
                    abm_device(name, &format!("OWN-{name}"), Some(t(20))),
                    abm_device(name, &format!("IDLE-{name}"), None),
                ],
                profiles: vec![abm_profile(name, "default")],
                rules: vec![abm_rule(name, "ipads", 1)],
                ..AbmBatch::default()
            })
            .await
            .unwrap();
    }
    store
        .abm_write(AbmBatch {
            delete_connection: Some("a".into()),
            ..AbmBatch::default()
        })
        .await
        .unwrap();

    assert!(store.abm_connection("a").unwrap().is_none());
    assert_eq!(store.abm_connections().unwrap(), [abm_connection("a2")]);
    assert!(store.abm_devices("a", None, 10).unwrap().is_empty());
    assert!(store.abm_device("a", "SHARED").unwrap().is_none());
    assert_eq!(store.abm_device_count("a").unwrap(), 0);
    assert_eq!(store.abm_next_due("a").unwrap(), None);
    assert!(abm_due(store, "a", Timestamp(i64::MAX), 10).is_empty());
    assert!(store.abm_devices_by_serial("OWN-a").unwrap().is_empty());
    assert_eq!(
        store.abm_devices_by_serial("SHARED").unwrap(),
        [abm_device("a2", "SHARED", Some(t(10)))]
    );
    assert!(store.abm_profiles("a").unwrap().is_empty());
    assert!(store.abm_profile("a", "default").unwrap().is_none());
    assert!(store.abm_rules("a").unwrap().is_empty());

    assert_eq!(store.abm_device_count("a2").unwrap(), 3);
    assert_eq!(abm_due(store, "a2", t(100), 10), ["SHARED", "OWN-a2"]);
    assert_eq!(
        store.abm_profiles("a2").unwrap(),
        [abm_profile("a2", "default")]
    );
    assert_eq!(store.abm_rules("a2").unwrap(), [abm_rule("a2", "ipads", 1)]);

    // Created again under the same name: it starts empty.
    store
        .abm_write(AbmBatch {
            connection: Some(abm_connection("a")),
            devices: vec![abm_device("a", "NEW", None)],
            ..AbmBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(store.abm_device_count("a").unwrap(), 1);
    assert!(store.abm_profiles("a").unwrap().is_empty());

    // Deletion comes first in a batch: this replaces "a2" with a fresh connection.
    let mut fresh = abm_connection("a2");
    fresh.sync = AbmSyncState::default();
    store
        .abm_write(AbmBatch {
            delete_connection: Some("a2".into()),
            connection: Some(fresh.clone()),
            devices: vec![abm_device("a2", "FRESH", None)],
            ..AbmBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(store.abm_connection("a2").unwrap(), Some(fresh));
    assert_eq!(
        abm_serials(&store.abm_devices("a2", None, 10).unwrap()),
        ["FRESH"]
    );
    assert_eq!(store.abm_device_count("a2").unwrap(), 1);
    assert!(store.abm_devices_by_serial("SHARED").unwrap().is_empty());
    assert!(store.abm_rules("a2").unwrap().is_empty());

    store
        .abm_write(AbmBatch {
            delete_connection: Some("never-existed".into()),
            ..AbmBatch::default()
        })
        .await
        .expect("deleting an unknown connection is not an error");
    assert_eq!(store.abm_connections().unwrap().len(), 2);
}

/// Rules come by priority (lowest first, negative allowed), then name; profiles by name.
/// Deletions remove one record of one connection.
pub async fn abm_rules_by_priority_then_name_and_deletions<S: Store>(store: &S) {
    let rule_names = |store: &S| -> Vec<String> {
        store
            .abm_rules("c")
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect()
    };
    store
        .abm_write(AbmBatch {
            rules: vec![
                abm_rule("c", "zeta", 1),
                abm_rule("c", "alpha", 5),
                abm_rule("c", "beta", 1),
                abm_rule("c", "gamma", -3),
                abm_rule("c2", "aaa", -10),
            ],
            profiles: vec![
                abm_profile("c", "p2"),
                abm_profile("c", "p1"),
                abm_profile("c2", "p1"),
            ],
            ..AbmBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(rule_names(store), ["gamma", "beta", "zeta", "alpha"]);

    store
        .abm_write(AbmBatch {
            rules: vec![abm_rule("c", "alpha", 0)],
            delete_rules: vec![("c".into(), "beta".into()), ("c".into(), "nope".into())],
            delete_profiles: vec![("c".into(), "p1".into())],
            ..AbmBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(rule_names(store), ["gamma", "alpha", "zeta"]);
    assert_eq!(store.abm_rules("c2").unwrap(), [abm_rule("c2", "aaa", -10)]);
    assert!(store.abm_profile("c", "p1").unwrap().is_none());
    assert_eq!(store.abm_profiles("c").unwrap(), [abm_profile("c", "p2")]);
    assert_eq!(store.abm_profiles("c2").unwrap(), [abm_profile("c2", "p1")]);
}

/// Devices page by serial number: `after` is exclusive and need not exist, `limit` holds, and
/// no other connection's devices appear.
pub async fn abm_devices_page_by_serial<S: Store>(store: &S) {
    let mut devices: Vec<AbmDeviceRecord> = ["S3", "S1", "S5", "S2", "S4"]
        .iter()
        .map(|s| abm_device("c", s, None))
        .collect();
    devices.push(abm_device("c2", "S0", None));
    devices.push(abm_device("b", "S9", None));
    abm_put_devices(store, devices).await;
    let page = |after: Option<&str>, limit: usize| -> Vec<String> {
        store
            .abm_devices("c", after, limit)
            .unwrap()
            .into_iter()
            .map(|d| d.serial)
            .collect()
    };
    assert_eq!(page(None, 2), ["S1", "S2"]);
    assert_eq!(page(Some("S2"), 2), ["S3", "S4"]);
    assert_eq!(page(Some("S4"), 2), ["S5"]);
    assert!(page(Some("S5"), 2).is_empty());
    assert_eq!(page(Some("S2a"), 10), ["S3", "S4", "S5"]);
    assert_eq!(page(Some(""), 10), ["S1", "S2", "S3", "S4", "S5"]);
    assert!(page(None, 0).is_empty());
    assert_eq!(page(None, 100).len(), 5);
    assert!(store.abm_devices("nobody", None, 10).unwrap().is_empty());
    assert_eq!(
        abm_serials(&store.abm_devices("c2", None, 10).unwrap()),
        ["S0"]
    );
}

fn preenroll(serial: &str, name: &str, at: Timestamp) -> PreenrollRecord {
    PreenrollRecord {
        serial: serial.into(),
        name: Some(name.into()),
        email: Some(format!("{name}@example.org")),
        ownership: Some(Ownership::Corporate),
        platform: Some(Platform::IpadOs),
        mobile: None,
        device_name: None,
        source: PreenrollSource::Csv,
        created_at: at,
        updated_at: at,
        updated_by: "admin".into(),
    }
}

fn activity_entry(at: i64, actor: &str, kind: &str, targets: &[&str]) -> NewActivity {
    NewActivity {
        at: Timestamp(at),
        actor: actor.into(),
        kind: kind.into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        outcome: ActivityOutcome::Ok,
        summary: format!("{kind} by {actor}"),
        detail: Some(serde_json::json!({"n": at})),
    }
}

/// Records and their activity commit together; deletes and replacements apply; pages go by
/// serial number.
pub async fn preenroll_records_with_activity<S: Store>(store: &S) {
    let t = Timestamp(1_000);
    let recs = vec![
        preenroll("C3", "carol", t),
        preenroll("A1", "alice", t),
        preenroll("B2", "bob", t),
    ];
    store
        .write_preenrolled(
            recs,
            Vec::new(),
            vec![activity_entry(
                1_000,
                "token:admin",
                "preenroll.import",
                &["A1", "B2", "C3"],
            )],
        )
        .await
        .unwrap();
    assert_eq!(store.count_preenrolled().unwrap(), 3);
    assert_eq!(
        store.preenrolled("B2").unwrap().unwrap().name.as_deref(),
        Some("bob")
    );
    let page = store.list_preenrolled(None, 2).unwrap();
    assert_eq!(
        page.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(),
        ["A1", "B2"]
    );
    let rest = store.list_preenrolled(Some("B2"), 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].serial, "C3");
    let q = ActivityQuery {
        target: Some("B2".into()),
        limit: 10,
        ..ActivityQuery::default()
    };
    let (hits, next) = store.activity(&q, 1000).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].entry.kind, "preenroll.import");
    assert_eq!(next, None);

    store
        .write_preenrolled(
            vec![preenroll("A1", "alicia", Timestamp(2_000))],
            vec!["C3".into(), "ZZ-missing".into()],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(store.count_preenrolled().unwrap(), 2);
    assert!(store.preenrolled("C3").unwrap().is_none());
    assert_eq!(
        store.preenrolled("A1").unwrap().unwrap().name.as_deref(),
        Some("alicia")
    );

    // An ABM batch carries pre-enrollment records in the same transaction.
    store
        .abm_write(AbmBatch {
            preenrolled: vec![PreenrollRecord {
                source: PreenrollSource::Abm {
                    connection: "north".into(),
                },
                ..preenroll("D4", "dave", t)
            }],
            ..AbmBatch::default()
        })
        .await
        .unwrap();
    assert!(matches!(
        store.preenrolled("D4").unwrap().unwrap().source,
        PreenrollSource::Abm { .. }
    ));
}

/// Newest first; filters by target, actor, kind prefix and time; cursors continue where a
/// page or a bounded scan stopped; pruning removes old entries and their index entries.
pub async fn activity_log_queries_and_retention<S: Store>(store: &S) {
    let mut batch = Vec::new();
    for i in 0..30i64 {
        let kind = if i % 3 == 0 {
            "enrollment.enrolled"
        } else {
            "command.queued"
        };
        let actor = if i % 2 == 0 { "device" } else { "token:ops" };
        let target = format!("S{}", i % 5);
        batch.push(activity_entry(
            10_000 + i * 1000,
            actor,
            kind,
            &[&target, "shared"],
        ));
    }
    // Two appends: numbering continues across them.
    let second = batch.split_off(20);
    store.append_activity(batch).await.unwrap();
    store.append_activity(second).await.unwrap();

    let all = |q: ActivityQuery| store.activity(&q, 10_000).unwrap();
    let (page, next) = all(ActivityQuery {
        limit: 10,
        ..ActivityQuery::default()
    });
    assert_eq!(page.len(), 10);
    assert!(page.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    assert_eq!(page[0].entry.at, Timestamp(10_000 + 29 * 1000));
    let (page2, _) = all(ActivityQuery {
        limit: 10,
        before_seq: next,
        ..ActivityQuery::default()
    });
    assert_eq!(page2.len(), 10);
    assert!(page2[0].seq < page[9].seq);

    let (by_target, _) = all(ActivityQuery {
        target: Some("S1".into()),
        limit: 100,
        ..ActivityQuery::default()
    });
    assert_eq!(by_target.len(), 6);
    assert!(by_target
        .iter()
        .all(|r| r.entry.targets.contains(&"S1".to_string())));

    let (by_kind, _) = all(ActivityQuery {
        kind: Some("enrollment".into()),
        actor: Some("device".into()),
        limit: 100,
        ..ActivityQuery::default()
    });
    // i % 3 == 0 and i even: 0, 6, 12, 18, 24.
    assert_eq!(by_kind.len(), 5);
    let (none, _) = all(ActivityQuery {
        kind: Some("enroll".into()),
        limit: 100,
        ..ActivityQuery::default()
    });
    assert!(
        none.is_empty(),
        "a kind filter matches whole dotted parts only"
    );

    let (window, _) = all(ActivityQuery {
        since: Some(Timestamp(20_000)),
        until: Some(Timestamp(25_000)),
        limit: 100,
        ..ActivityQuery::default()
    });
    assert_eq!(window.len(), 5);

    // A bounded scan hands out where to go on.
    let (few, resume) = store
        .activity(
            &ActivityQuery {
                actor: Some("nobody".into()),
                limit: 10,
                ..ActivityQuery::default()
            },
            7,
        )
        .unwrap();
    assert!(few.is_empty());
    assert!(resume.is_some(), "the scan stopped early and says where");

    let gone = store.prune_activity(Timestamp(20_000), 1000).await.unwrap();
    assert_eq!(gone, 10);
    let (left, _) = all(ActivityQuery {
        limit: 100,
        ..ActivityQuery::default()
    });
    assert_eq!(left.len(), 20);
    let (shared, _) = all(ActivityQuery {
        target: Some("shared".into()),
        limit: 100,
        ..ActivityQuery::default()
    });
    assert_eq!(
        shared.len(),
        20,
        "pruned entries leave the target index too"
    );
    assert_eq!(
        store.prune_activity(Timestamp(100_000), 5).await.unwrap(),
        5
    );
}

/// DeviceConfigured acknowledged: the enrollment leaves Setup Assistant.
pub async fn set_configured_clears_awaiting<S: Store>(store: &S) {
    let t = Timestamp(5_000);
    enrolled(store, "UDID-W", t).await;
    store
        .token_update(TokenUpdateRecord {
            id: "UDID-W".into(),
            device_id: "UDID-W".into(),
            user_id: None,
            user_short_name: None,
            identity_sha256: "aa".repeat(32),
            push: PushTarget {
                token_hex: "00".into(),
                push_magic: "m".into(),
                topic: "com.apple.mgmt.x".into(),
            },
            unlock_token_sealed: None,
            awaiting_configuration: true,
            at: t,
        })
        .await
        .unwrap();
    assert!(
        store
            .enrollment("UDID-W")
            .unwrap()
            .unwrap()
            .awaiting_configuration
    );
    assert!(store
        .set_configured("UDID-W", Timestamp(6_000))
        .await
        .unwrap());
    let rec = store.enrollment("UDID-W").unwrap().unwrap();
    assert!(!rec.awaiting_configuration);
    assert_eq!(rec.last_seen_at, Timestamp(6_000));
    assert!(!store.set_configured("UDID-NONE", t).await.unwrap());
}

fn group(id: &str, name: &str) -> GroupRecord {
    GroupRecord {
        id: id.into(),
        name: name.into(),
        description: None,
        kind: GroupKind::Static,
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
        updated_by: "conformance".into(),
    }
}

fn profile_rec(id: &str, identifier: &str) -> ProfileRecord {
    ProfileRecord {
        id: id.into(),
        name: format!("name of {id}"),
        identifier: identifier.into(),
        sha256: "ab".repeat(32),
        size: 10,
        summary: serde_json::json!({"identifier": identifier}),
        assignments: Assignments {
            groups: vec!["G1".into()],
            devices: vec!["SERIAL0001".into()],
        },
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
        updated_by: "conformance".into(),
    }
}

fn install(serial: &str, profile: &str, enrollment: &str, state: InstallState) -> InstallRecord {
    InstallRecord {
        serial: serial.into(),
        profile_id: profile.into(),
        identifier: format!("org.example.{profile}"),
        sha256: "ab".repeat(32),
        enrollment_id: enrollment.into(),
        state,
        updated_at: Timestamp(7),
    }
}

fn installing(uuid: &str) -> InstallState {
    InstallState::Installing {
        command_uuid: uuid.into(),
    }
}

/// A profile's installs are listed in serial order, a page at a time, and never run into the
/// installs of the profile whose id follows (`P10` after `P1`).
pub async fn profile_installs_page_within_their_profile<S: Store>(store: &S) {
    let installed = || InstallState::Installed;
    let batch = ProfileBatch {
        put_profiles: vec![
            (profile_rec("P1", "org.example.P1"), Some(b"one".to_vec())),
            (profile_rec("P10", "org.example.P10"), Some(b"ten".to_vec())),
        ],
        put_installs: vec![
            install("SERIAL0003", "P1", "UDID-3", installed()),
            install("SERIAL0001", "P1", "UDID-1", installed()),
            install("SERIAL0002", "P10", "UDID-2", installed()),
        ],
        ..ProfileBatch::default()
    };
    store.profile_write(batch).await.unwrap();
    let serials =
        |page: Vec<InstallRecord>| -> Vec<String> { page.into_iter().map(|r| r.serial).collect() };
    assert_eq!(
        serials(store.profile_installs("P1", None, 10).unwrap()),
        ["SERIAL0001", "SERIAL0003"]
    );
    assert_eq!(
        serials(store.profile_installs("P1", None, 1).unwrap()),
        ["SERIAL0001"]
    );
    assert!(store
        .profile_installs("P1", Some("SERIAL0003"), 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        serials(store.profile_installs("P10", None, 10).unwrap()),
        ["SERIAL0002"]
    );
}

/// Groups, members, a profile with its file, a command, install states and activity, in one
/// batch: all readable afterwards, the command queued, and a failing batch leaves nothing.
pub async fn profile_batch_writes_records_commands_and_states_together<S: Store>(store: &S) {
    enrolled(store, "UDID-P", Timestamp(5)).await;
    let batch = ProfileBatch {
        put_groups: vec![group("G1", "Pilot"), group("G2", "Other")],
        add_members: vec![
            ("G1".into(), "SERIAL0001".into()),
            ("G1".into(), "SERIAL0002".into()),
            ("G2".into(), "SERIAL0001".into()),
        ],
        put_profiles: vec![(
            profile_rec("P1", "org.example.P1"),
            Some(b"sealed".to_vec()),
        )],
        commands: vec![(cmd("pc1", Timestamp(6)), vec!["UDID-P".into()])],
        put_installs: vec![install("SERIAL0001", "P1", "UDID-P", installing("pc1"))],
        activity: vec![NewActivity {
            at: Timestamp(6),
            actor: "system".into(),
            kind: "profile.install_queued".into(),
            targets: vec!["P1".into()],
            outcome: ActivityOutcome::Ok,
            summary: "queued".into(),
            detail: None,
        }],
        ..ProfileBatch::default()
    };
    let outcomes = store.profile_write(batch).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].queued, vec!["UDID-P".to_string()]);
    let groups = store.groups().unwrap();
    assert_eq!(
        groups.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        ["G1", "G2"]
    );
    let members = store.group_members(None, 100).unwrap();
    assert_eq!(members.len(), 3);
    let after = store
        .group_members(Some(("G1", "SERIAL0002")), 100)
        .unwrap();
    assert_eq!(after, vec![("G2".to_string(), "SERIAL0001".to_string())]);
    assert_eq!(
        store.profiles().unwrap(),
        vec![profile_rec("P1", "org.example.P1")]
    );
    assert_eq!(store.profile_file("P1").unwrap(), Some(b"sealed".to_vec()));
    assert_eq!(
        store.device_installs("SERIAL0001").unwrap(),
        vec![install("SERIAL0001", "P1", "UDID-P", installing("pc1"))]
    );
    assert_eq!(store.profile_installs("P1", None, 10).unwrap().len(), 1);
    assert!(store
        .profile_installs("P1", Some("SERIAL0001"), 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .next_command("UDID-P", &HashSet::new())
            .unwrap()
            .unwrap()
            .uuid,
        "pc1"
    );
    let (log, _) = store
        .activity(
            &ActivityQuery {
                target: Some("P1".into()),
                limit: 10,
                ..ActivityQuery::default()
            },
            100,
        )
        .unwrap();
    assert_eq!(log.len(), 1);

    // A command UUID that exists already fails the batch: none of it is written.
    let batch = ProfileBatch {
        put_groups: vec![group("G3", "Late")],
        commands: vec![(cmd("pc1", Timestamp(8)), vec!["UDID-P".into()])],
        put_installs: vec![install("SERIAL0002", "P1", "UDID-P", installing("pc1"))],
        ..ProfileBatch::default()
    };
    assert!(store.profile_write(batch).await.is_err());
    assert_eq!(store.groups().unwrap().len(), 2);
    assert!(store.device_installs("SERIAL0002").unwrap().is_empty());
}

/// A target that cannot take the command (checked out) gets no install state waiting for it.
pub async fn profile_batch_skips_states_of_refused_targets<S: Store>(store: &S) {
    enrolled(store, "UDID-Q", Timestamp(5)).await;
    enrolled(store, "UDID-R", Timestamp(5)).await;
    store.check_out("UDID-R", Timestamp(6)).await.unwrap();
    let batch = ProfileBatch {
        commands: vec![(
            cmd("pq1", Timestamp(7)),
            vec!["UDID-Q".into(), "UDID-R".into()],
        )],
        put_installs: vec![
            install("SERIALQQQ1", "P1", "UDID-Q", installing("pq1")),
            install("SERIALRRR1", "P1", "UDID-R", installing("pq1")),
            install("SERIALRRR1", "P2", "UDID-R", InstallState::Installed),
        ],
        ..ProfileBatch::default()
    };
    let outcomes = store.profile_write(batch).await.unwrap();
    assert_eq!(outcomes[0].refused, vec!["UDID-R".to_string()]);
    assert_eq!(store.device_installs("SERIALQQQ1").unwrap().len(), 1);
    // Only the state that waited for the refused command is dropped.
    let r = store.device_installs("SERIALRRR1").unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].profile_id, "P2");
}

/// A device's answer moves the state on only while the state waits for that command.
pub async fn install_result_applies_only_to_the_awaited_command<S: Store>(store: &S) {
    let batch = ProfileBatch {
        put_installs: vec![
            install("SERIALIR01", "P1", "E", installing("c-new")),
            install(
                "SERIALIR01",
                "P2",
                "E",
                InstallState::Removing {
                    command_uuid: "c-rm".into(),
                },
            ),
        ],
        ..ProfileBatch::default()
    };
    store.profile_write(batch).await.unwrap();
    let answer = |profile: &str, uuid: &str, next: Option<InstallRecord>| InstallResult {
        serial: "SERIALIR01".into(),
        profile_id: profile.into(),
        command_uuid: uuid.into(),
        next,
        activity: vec![NewActivity {
            at: Timestamp(9),
            actor: "device".into(),
            kind: "profile.installed".into(),
            targets: vec!["SERIALIR01-LOG".into()],
            outcome: ActivityOutcome::Ok,
            summary: "answer".into(),
            detail: None,
        }],
    };
    let installed = install("SERIALIR01", "P1", "E", InstallState::Installed);
    // A stale answer (an older command) changes nothing and logs nothing.
    assert!(!store
        .install_result(answer("P1", "c-old", Some(installed.clone())))
        .await
        .unwrap());
    assert!(store
        .install_result(answer("P1", "c-new", Some(installed.clone())))
        .await
        .unwrap());
    // The removal finishes: the state goes, from both listings.
    assert!(store
        .install_result(answer("P2", "c-rm", None))
        .await
        .unwrap());
    assert_eq!(
        store.device_installs("SERIALIR01").unwrap(),
        vec![installed]
    );
    assert!(store.profile_installs("P2", None, 10).unwrap().is_empty());
    // Answering again is stale now.
    assert!(!store
        .install_result(answer("P2", "c-rm", None))
        .await
        .unwrap());
    let (log, _) = store
        .activity(
            &ActivityQuery {
                target: Some("SERIALIR01-LOG".into()),
                limit: 10,
                ..ActivityQuery::default()
            },
            100,
        )
        .unwrap();
    assert_eq!(log.len(), 2);
}

/// Deleting a group deletes its members; deleting a profile deletes its file.
pub async fn deleting_groups_and_profiles_takes_members_and_files<S: Store>(store: &S) {
    let batch = ProfileBatch {
        put_groups: vec![group("GA", "A"), group("GB", "B")],
        add_members: vec![
            ("GA".into(), "SERIALGA01".into()),
            ("GA".into(), "SERIALGA02".into()),
            ("GB".into(), "SERIALGA01".into()),
        ],
        put_profiles: vec![(profile_rec("PX", "org.example.PX"), Some(b"f".to_vec()))],
        ..ProfileBatch::default()
    };
    store.profile_write(batch).await.unwrap();
    let batch = ProfileBatch {
        delete_groups: vec!["GA".into()],
        remove_members: vec![("GB".into(), "SERIALGA01".into())],
        delete_profiles: vec!["PX".into()],
        ..ProfileBatch::default()
    };
    store.profile_write(batch).await.unwrap();
    assert_eq!(store.groups().unwrap(), vec![group("GB", "B")]);
    assert!(store.group_members(None, 10).unwrap().is_empty());
    assert!(store.profiles().unwrap().is_empty());
    assert_eq!(store.profile_file("PX").unwrap(), None);
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        username: name.to_owned(),
        full_name: format!("Full {name}"),
        email: Some(format!("{name}@example.org")),
        source: Default::default(),
        password_sealed: Some(vec![1, 2, 3, 0, 255]),
        disabled: false,
        failed_sign_ins: 0,
        locked_until: None,
        last_sign_in_at: None,
        created_at: t(1),
        updated_at: t(1),
        created_by: "admin".into(),
    }
}

pub async fn user_accounts_page_in_name_order_with_their_activity<S: Store>(store: &S) {
    for name in ["carol", "alice", "bob"] {
        store
            .write_user(
                UserChange::Put(user(name)),
                vec![activity_entry(2, "token:admin", "user.created", &[name])],
            )
            .await
            .unwrap();
    }
    assert_eq!(store.count_users().unwrap(), 3);
    let names = |v: Vec<UserRecord>| v.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(names(store.list_users(None, 2).unwrap()), ["alice", "bob"]);
    assert_eq!(names(store.list_users(Some("bob"), 2).unwrap()), ["carol"]);
    assert!(store.list_users(Some("carol"), 2).unwrap().is_empty());
    // A replacement keeps everything it carries, sealed bytes included.
    let mut alice = user("alice");
    alice.failed_sign_ins = 4;
    alice.locked_until = Some(t(99));
    store
        .write_user(UserChange::Put(alice.clone()), Vec::new())
        .await
        .unwrap();
    assert_eq!(store.user("alice").unwrap(), Some(alice));
    store
        .write_user(
            UserChange::Delete("bob".into()),
            vec![activity_entry(3, "token:admin", "user.deleted", &["bob"])],
        )
        .await
        .unwrap();
    assert_eq!(store.user("bob").unwrap(), None);
    assert_eq!(store.count_users().unwrap(), 2);
    // Deleting what is not there is no error.
    store
        .write_user(UserChange::Delete("nobody".into()), Vec::new())
        .await
        .unwrap();
    let q = ActivityQuery {
        kind: Some("user".into()),
        limit: 10,
        ..ActivityQuery::default()
    };
    let (hits, _) = store.activity(&q, 100).unwrap();
    assert_eq!(hits.len(), 4, "every write's entries commit with it");
}
