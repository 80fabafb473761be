//! Challenges, issued certificates, enrollment links, API tokens and settings.

use mdm_service::ports::{
    ApiTokenRecord, ChallengeOutcome, ChallengeRecord, IssuedCertRecord, LinkRecord, StoreError,
    StoreResult, Timestamp,
};
use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

use crate::codec::{dangling, BackendExt};
use crate::records::{all_json, get_json, put_json};
use crate::schema::{
    open, open_read, API_TOKENS, API_TOKEN_HASHES, CHALLENGES, CHALLENGE_EXPIRY, ISSUED_CERTS,
    LINKS, LINK_TOKENS, SETTINGS,
};

pub(crate) fn put_challenge(txn: &WriteTransaction, rec: &ChallengeRecord) -> StoreResult<()> {
    let mut challenges = open(txn, CHALLENGES)?;
    let mut expiry = open(txn, CHALLENGE_EXPIRY)?;
    let sha = rec.challenge_sha256.as_str();
    let what = "cannot index a challenge";
    if let Some(old) = get_json::<ChallengeRecord>(&challenges, sha)? {
        expiry.remove((old.expires_at.0, sha)).backend(what)?;
    }
    put_json(&mut challenges, sha, rec)?;
    expiry.insert((rec.expires_at.0, sha), ()).backend(what)?;
    Ok(())
}

/// A challenge is good until `now` reaches `expires_at`. A used challenge reports
/// `AlreadyUsed` even once expired: a replay is the more useful thing to tell.
pub(crate) fn consume_challenge(
    txn: &WriteTransaction,
    sha: &str,
    now: Timestamp,
    issued: Option<&IssuedCertRecord>,
) -> StoreResult<ChallengeOutcome> {
    let mut challenges = open(txn, CHALLENGES)?;
    let Some(mut rec) = get_json::<ChallengeRecord>(&challenges, sha)? else {
        return Ok(ChallengeOutcome::NotFound);
    };
    if rec.used_at.is_some() {
        return Ok(ChallengeOutcome::AlreadyUsed(rec));
    }
    if now >= rec.expires_at {
        return Ok(ChallengeOutcome::Expired(rec));
    }
    rec.used_at = Some(now);
    put_json(&mut challenges, sha, &rec)?;
    if let Some(issued) = issued {
        record_issued(txn, issued)?;
    }
    Ok(ChallengeOutcome::Accepted(rec))
}

pub(crate) fn challenge(rtx: &ReadTransaction, sha: &str) -> StoreResult<Option<ChallengeRecord>> {
    get_json(&open_read(rtx, CHALLENGES)?, sha)
}

pub(crate) fn record_issued(txn: &WriteTransaction, rec: &IssuedCertRecord) -> StoreResult<()> {
    put_json(&mut open(txn, ISSUED_CERTS)?, &rec.sha256, rec)
}

pub(crate) fn issued(rtx: &ReadTransaction, sha: &str) -> StoreResult<Option<IssuedCertRecord>> {
    get_json(&open_read(rtx, ISSUED_CERTS)?, sha)
}

/// Points `hash` at `id` in a secondary index, refusing to take a hash that another record
/// owns and dropping the entry of the record's previous hash.
fn reindex(
    index: &mut Table<'_, &'static str, &'static str>,
    kind: &str,
    id: &str,
    old_hash: Option<&str>,
    hash: &str,
) -> StoreResult<()> {
    let what = format!("cannot index a {kind}");
    if let Some(owner) = index.get(hash).backend(&what)? {
        if owner.value() != id {
            return Err(StoreError::Conflict(format!(
                "another {kind} ({}) already has this token; issue a new token",
                owner.value()
            )));
        }
    }
    if let Some(old) = old_hash.filter(|old| *old != hash) {
        index.remove(old).backend(&what)?;
    }
    index.insert(hash, id).backend(&what)?;
    Ok(())
}

pub(crate) fn put_link(txn: &WriteTransaction, rec: &LinkRecord) -> StoreResult<()> {
    let mut links = open(txn, LINKS)?;
    let mut tokens = open(txn, LINK_TOKENS)?;
    let old = get_json::<LinkRecord>(&links, &rec.id)?;
    reindex(
        &mut tokens,
        "link",
        &rec.id,
        old.as_ref().map(|o| o.token_sha256.as_str()),
        &rec.token_sha256,
    )?;
    put_json(&mut links, &rec.id, rec)
}

fn link_id_by_token(
    tokens: &impl ReadableTable<&'static str, &'static str>,
    sha: &str,
) -> StoreResult<Option<String>> {
    Ok(tokens
        .get(sha)
        .backend("cannot read the link token index")?
        .map(|g| g.value().to_owned()))
}

pub(crate) fn link_by_token(rtx: &ReadTransaction, sha: &str) -> StoreResult<Option<LinkRecord>> {
    let Some(id) = link_id_by_token(&open_read(rtx, LINK_TOKENS)?, sha)? else {
        return Ok(None);
    };
    let link = get_json(&open_read(rtx, LINKS)?, &id)?;
    link.map(Some)
        .ok_or_else(|| dangling("link_tokens", &sha, "link"))
}

pub(crate) fn link(rtx: &ReadTransaction, id: &str) -> StoreResult<Option<LinkRecord>> {
    get_json(&open_read(rtx, LINKS)?, id)
}

pub(crate) fn list_links(rtx: &ReadTransaction) -> StoreResult<Vec<LinkRecord>> {
    all_json(&open_read(rtx, LINKS)?)
}

pub(crate) fn use_link(
    txn: &WriteTransaction,
    sha: &str,
    now: Timestamp,
    challenge: Option<&ChallengeRecord>,
) -> StoreResult<Option<LinkRecord>> {
    let Some(id) = link_id_by_token(&open(txn, LINK_TOKENS)?, sha)? else {
        return Ok(None);
    };
    let mut links = open(txn, LINKS)?;
    let mut link = get_json::<LinkRecord>(&links, &id)?
        .ok_or_else(|| dangling("link_tokens", &sha, "link"))?;
    let usable = link.revoked_at.is_none()
        && now < link.expires_at
        && link.max_uses.is_none_or(|max| link.uses < max);
    if !usable {
        return Ok(None);
    }
    link.uses = link.uses.saturating_add(1);
    put_json(&mut links, &id, &link)?;
    if let Some(challenge) = challenge {
        put_challenge(txn, challenge)?;
    }
    Ok(Some(link))
}

/// Revoking twice keeps the first revocation time.
pub(crate) fn revoke_link(txn: &WriteTransaction, id: &str, at: Timestamp) -> StoreResult<bool> {
    let mut links = open(txn, LINKS)?;
    let Some(mut link) = get_json::<LinkRecord>(&links, id)? else {
        return Ok(false);
    };
    if link.revoked_at.is_none() {
        link.revoked_at = Some(at);
        put_json(&mut links, id, &link)?;
    }
    Ok(true)
}

pub(crate) fn put_api_token(txn: &WriteTransaction, rec: &ApiTokenRecord) -> StoreResult<()> {
    let mut tokens = open(txn, API_TOKENS)?;
    let mut hashes = open(txn, API_TOKEN_HASHES)?;
    let old = get_json::<ApiTokenRecord>(&tokens, &rec.id)?;
    reindex(
        &mut hashes,
        "API token",
        &rec.id,
        old.as_ref().map(|o| o.token_sha256.as_str()),
        &rec.token_sha256,
    )?;
    put_json(&mut tokens, &rec.id, rec)
}

pub(crate) fn api_token_by_hash(
    rtx: &ReadTransaction,
    sha: &str,
) -> StoreResult<Option<ApiTokenRecord>> {
    let Some(id) = open_read(rtx, API_TOKEN_HASHES)?
        .get(sha)
        .backend("cannot read the API token index")?
        .map(|g| g.value().to_owned())
    else {
        return Ok(None);
    };
    let token = get_json(&open_read(rtx, API_TOKENS)?, &id)?;
    token
        .map(Some)
        .ok_or_else(|| dangling("api_token_hashes", &sha, "API token"))
}

pub(crate) fn list_api_tokens(rtx: &ReadTransaction) -> StoreResult<Vec<ApiTokenRecord>> {
    all_json(&open_read(rtx, API_TOKENS)?)
}

pub(crate) fn setting(rtx: &ReadTransaction, key: &str) -> StoreResult<Option<Vec<u8>>> {
    Ok(open_read(rtx, SETTINGS)?
        .get(key)
        .backend_with(|| format!("cannot read setting `{key}`"))?
        .map(|g| g.value().to_vec()))
}

pub(crate) fn put_settings(
    txn: &WriteTransaction,
    values: &[(String, Vec<u8>)],
) -> StoreResult<()> {
    let mut settings = open(txn, SETTINGS)?;
    for (key, value) in values {
        settings
            .insert(key.as_str(), value.as_slice())
            .backend_with(|| format!("cannot write setting `{key}`"))?;
    }
    Ok(())
}
