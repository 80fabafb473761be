//! Local user accounts, one JSON record per lowercase username.

use mdm_service::ports::{StoreResult, UserChange, UserRecord};
use redb::{ReadTransaction, ReadableTableMetadata, WriteTransaction};

use crate::codec::BackendExt;
use crate::lifecycle::{append_activity, EncodedActivity};
use crate::records::{get_json, page_json, put_json};
use crate::schema::{open, open_read, USERS};

pub(crate) fn user(rtx: &ReadTransaction, username: &str) -> StoreResult<Option<UserRecord>> {
    get_json(&open_read(rtx, USERS)?, username)
}

pub(crate) fn list_users(
    rtx: &ReadTransaction,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<UserRecord>> {
    page_json(&open_read(rtx, USERS)?, after, limit)
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
                .backend_with(|| format!("cannot delete user `{name}`"))?;
        }
    }
    drop(users);
    append_activity(txn, activity)
}
