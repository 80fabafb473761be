//! Local user accounts, one JSON record per lowercase username.

use std::ops::Bound;

use mdm_service::ports::{StoreResult, UserChange, UserRecord};
use redb::{ReadTransaction, ReadableTableMetadata, WriteTransaction};

use crate::codec::{decode, BackendExt};
use crate::lifecycle::{append_activity, EncodedActivity};
use crate::records::{get_json, put_json};
use crate::schema::{open, open_read, USERS};

pub(crate) fn user(rtx: &ReadTransaction, username: &str) -> StoreResult<Option<UserRecord>> {
    get_json(&open_read(rtx, USERS)?, username)
}

pub(crate) fn list_users(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<UserRecord>> {
    let table = open_read(rtx, USERS)?;
    let what = "cannot read table `users`";
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for entry in table
        .range::<&str>((lower, Bound::Unbounded))
        .backend(what)?
    {
        if out.len() >= limit {
            break;
        }
        let (k, v) = entry.backend(what)?;
        out.push(decode("users", &k.value(), v.value())?);
    }
    Ok(out)
}

pub(crate) fn count_users(rtx: &ReadTransaction) -> StoreResult<u64> {
    open_read(rtx, USERS)?
        .len()
        .backend("cannot count table `users`")
}

pub(crate) fn write_user(
    txn: &WriteTransaction,
    change: &UserChange,
    activity: &EncodedActivity,
) -> StoreResult<()> {
    let mut users = open(txn, USERS)?;
    match change {
        UserChange::Put(rec) => put_json(&mut users, &rec.username, rec)?,
        UserChange::Delete(name) => {
            users
                .remove(name.as_str())
                .backend(&format!("cannot delete user `{name}`"))?;
        }
    }
    drop(users);
    append_activity(txn, activity)
}
