//! Groups, configuration profiles and per-device install states.
//!
//! A change to any of them is one [`ProfileBatch`]: records, the commands that bring devices in
//! line, the install states waiting for those commands and the activity all commit together,
//! so a crash never leaves a command queued without the state that explains it (or the
//! reverse).

use std::collections::{HashMap, HashSet};
use std::ops::Bound;

use mdm_service::ports::{
    EnqueueOutcome, GroupRecord, InstallRecord, InstallResult, NewCommand, ProfileBatch,
    ProfileRecord, StoreResult,
};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use crate::codec::{decode, encode, prefix_page, successor, BackendExt};
use crate::command_cache::CommandCache;
use crate::lifecycle::{append_activity, EncodedActivity};
use crate::records::all_json;
use crate::schema::{
    open, open_read, GROUPS, GROUP_MEMBERS, INSTALLS, INSTALLS_BY_PROFILE, PROFILES, PROFILE_FILES,
};

pub(crate) fn groups(rtx: &ReadTransaction) -> StoreResult<Vec<GroupRecord>> {
    all_json(&open_read(rtx, GROUPS)?)
}

pub(crate) fn group_members(
    rtx: &ReadTransaction,
    after: Option<(&str, &str)>,
    limit: usize,
) -> StoreResult<Vec<(String, String)>> {
    let table = open_read(rtx, GROUP_MEMBERS)?;
    let what = "cannot read table `group_members`";
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for entry in table
        .range::<(&str, &str)>((lower, Bound::Unbounded))
        .backend(what)?
    {
        if out.len() >= limit {
            break;
        }
        let (k, _) = entry.backend(what)?;
        let (group, serial) = k.value();
        out.push((group.to_owned(), serial.to_owned()));
    }
    Ok(out)
}

pub(crate) fn profiles(rtx: &ReadTransaction) -> StoreResult<Vec<ProfileRecord>> {
    all_json(&open_read(rtx, PROFILES)?)
}

pub(crate) fn profile_file(rtx: &ReadTransaction, id: &str) -> StoreResult<Option<Vec<u8>>> {
    Ok(open_read(rtx, PROFILE_FILES)?
        .get(id)
        .backend_with(|| format!("cannot read the file of profile `{id}`"))?
        .map(|g| g.value().to_vec()))
}

pub(crate) fn device_installs(
    rtx: &ReadTransaction,
    serial: &str,
) -> StoreResult<Vec<InstallRecord>> {
    let table = open_read(rtx, INSTALLS)?;
    let what = "cannot read table `installs`";
    let mut out = Vec::new();
    for entry in table.range::<(&str, &str)>((serial, "")..).backend(what)? {
        let (k, v) = entry.backend(what)?;
        let (s, p) = k.value();
        if s != serial {
            break;
        }
        out.push(decode("installs", &format!("{s}/{p}"), v.value())?);
    }
    Ok(out)
}

pub(crate) fn profile_installs(
    rtx: &ReadTransaction,
    profile_id: &str,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<InstallRecord>> {
    let index = open_read(rtx, INSTALLS_BY_PROFILE)?;
    let records = open_read(rtx, INSTALLS)?;
    let what = "cannot read table `installs_by_profile`";
    let end = successor(profile_id);
    let mut out = Vec::new();
    for entry in index
        .range::<(&str, &str)>(prefix_page(profile_id, after, &end))
        .backend(what)?
        .take(limit)
    {
        let (k, _) = entry.backend(what)?;
        let (p, serial) = k.value();
        let key = format!("{serial}/{p}");
        let rec = records
            .get((serial, p))
            .backend("cannot read table `installs`")?
            .ok_or_else(|| {
                mdm_service::ports::StoreError::Corrupt(format!(
                    "table `installs_by_profile` names `{key}`, which `installs` does not hold"
                ))
            })?;
        out.push(decode("installs", &key, rec.value())?);
    }
    Ok(out)
}

/// A batch encoded on the caller's task.
pub(crate) struct EncodedBatch {
    groups: Vec<(String, Vec<u8>)>,
    delete_groups: Vec<String>,
    add_members: Vec<(String, String)>,
    remove_members: Vec<(String, String)>,
    profiles: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
    delete_profiles: Vec<String>,
    commands: Vec<(NewCommand, Vec<String>)>,
    installs: Vec<(InstallRecord, Vec<u8>)>,
    delete_installs: Vec<(String, String)>,
    activity: EncodedActivity,
}

impl EncodedBatch {
    pub(crate) fn encode(b: ProfileBatch) -> StoreResult<Self> {
        let mut groups = Vec::with_capacity(b.put_groups.len());
        for g in b.put_groups {
            let json = encode("groups", &g.id, &g)?;
            groups.push((g.id, json));
        }
        let mut profiles = Vec::with_capacity(b.put_profiles.len());
        for (p, file) in b.put_profiles {
            let json = encode("profiles", &p.id, &p)?;
            profiles.push((p.id, json, file));
        }
        let mut installs = Vec::with_capacity(b.put_installs.len());
        for i in b.put_installs {
            let json = encode("installs", &format!("{}/{}", i.serial, i.profile_id), &i)?;
            installs.push((i, json));
        }
        Ok(EncodedBatch {
            groups,
            delete_groups: b.delete_groups,
            add_members: b.add_members,
            remove_members: b.remove_members,
            profiles,
            delete_profiles: b.delete_profiles,
            commands: b.commands,
            installs,
            delete_installs: b.delete_installs,
            activity: EncodedActivity::new(b.activity),
        })
    }
}

pub(crate) fn write(
    txn: &WriteTransaction,
    cache: &CommandCache,
    b: &EncodedBatch,
) -> StoreResult<Vec<EnqueueOutcome>> {
    {
        let mut groups = open(txn, GROUPS)?;
        for (id, json) in &b.groups {
            groups
                .insert(id.as_str(), json.as_slice())
                .backend_with(|| format!("cannot write group `{id}`"))?;
        }
        for id in &b.delete_groups {
            groups
                .remove(id.as_str())
                .backend_with(|| format!("cannot delete group `{id}`"))?;
        }
    }
    {
        let mut members = open(txn, GROUP_MEMBERS)?;
        let what = "cannot write table `group_members`";
        for id in &b.delete_groups {
            let mut serials = Vec::new();
            for entry in members
                .range::<(&str, &str)>((id.as_str(), "")..)
                .backend(what)?
            {
                let (k, _) = entry.backend(what)?;
                let (g, s) = k.value();
                if g != id {
                    break;
                }
                serials.push(s.to_owned());
            }
            for s in &serials {
                members.remove((id.as_str(), s.as_str())).backend(what)?;
            }
        }
        for (g, s) in &b.add_members {
            members.insert((g.as_str(), s.as_str()), ()).backend(what)?;
        }
        for (g, s) in &b.remove_members {
            members.remove((g.as_str(), s.as_str())).backend(what)?;
        }
    }
    {
        let mut profiles = open(txn, PROFILES)?;
        let mut files = open(txn, PROFILE_FILES)?;
        for (id, json, file) in &b.profiles {
            profiles
                .insert(id.as_str(), json.as_slice())
                .backend_with(|| format!("cannot write profile `{id}`"))?;
            if let Some(file) = file {
                files
                    .insert(id.as_str(), file.as_slice())
                    .backend_with(|| format!("cannot write the file of profile `{id}`"))?;
            }
        }
        for id in &b.delete_profiles {
            profiles
                .remove(id.as_str())
                .backend_with(|| format!("cannot delete profile `{id}`"))?;
            files
                .remove(id.as_str())
                .backend_with(|| format!("cannot delete the file of profile `{id}`"))?;
        }
    }
    let mut outcomes = Vec::with_capacity(b.commands.len());
    // (command, enrollment) pairs that were not queued: their install states are not written.
    let mut refused: HashMap<&str, HashSet<String>> = HashMap::new();
    for (cmd, targets) in &b.commands {
        let outcome = crate::commands::enqueue(txn, cache, cmd, targets)?;
        if !outcome.refused.is_empty() {
            refused.insert(&cmd.uuid, outcome.refused.iter().cloned().collect());
        }
        outcomes.push(outcome);
    }
    {
        let mut installs = open(txn, INSTALLS)?;
        let mut by_profile = open(txn, INSTALLS_BY_PROFILE)?;
        let what = "cannot write table `installs`";
        for (s, p) in &b.delete_installs {
            installs.remove((s.as_str(), p.as_str())).backend(what)?;
            by_profile.remove((p.as_str(), s.as_str())).backend(what)?;
        }
        for (rec, json) in &b.installs {
            if let Some(uuid) = rec.state.command_uuid() {
                if refused
                    .get(uuid)
                    .is_some_and(|ids| ids.contains(&rec.enrollment_id))
                {
                    continue;
                }
            }
            let key = (rec.serial.as_str(), rec.profile_id.as_str());
            installs.insert(key, json.as_slice()).backend(what)?;
            by_profile
                .insert((rec.profile_id.as_str(), rec.serial.as_str()), ())
                .backend(what)?;
        }
    }
    append_activity(txn, &b.activity)?;
    Ok(outcomes)
}

/// A device's answer, encoded on the caller's task.
pub(crate) struct EncodedResult {
    serial: String,
    profile_id: String,
    command_uuid: String,
    next: Option<Vec<u8>>,
    activity: EncodedActivity,
}

impl EncodedResult {
    pub(crate) fn encode(r: InstallResult) -> StoreResult<Self> {
        let key = format!("{}/{}", r.serial, r.profile_id);
        let next = r
            .next
            .as_ref()
            .map(|n| encode("installs", &key, n))
            .transpose()?;
        Ok(EncodedResult {
            serial: r.serial,
            profile_id: r.profile_id,
            command_uuid: r.command_uuid,
            next,
            activity: EncodedActivity::new(r.activity),
        })
    }
}

pub(crate) fn install_result(txn: &WriteTransaction, r: &EncodedResult) -> StoreResult<bool> {
    let mut installs = open(txn, INSTALLS)?;
    let key = (r.serial.as_str(), r.profile_id.as_str());
    let what = "cannot read table `installs`";
    let current: Option<InstallRecord> = match installs.get(key).backend(what)? {
        Some(g) => Some(decode(
            "installs",
            &format!("{}/{}", r.serial, r.profile_id),
            g.value(),
        )?),
        None => None,
    };
    let waiting = current
        .as_ref()
        .and_then(|c| c.state.command_uuid())
        .is_some_and(|u| u == r.command_uuid);
    if !waiting {
        return Ok(false);
    }
    let what = "cannot write table `installs`";
    match &r.next {
        Some(json) => {
            installs.insert(key, json.as_slice()).backend(what)?;
        }
        None => {
            installs.remove(key).backend(what)?;
            open(txn, INSTALLS_BY_PROFILE)?
                .remove((r.profile_id.as_str(), r.serial.as_str()))
                .backend(what)?;
        }
    }
    drop(installs);
    append_activity(txn, &r.activity)?;
    Ok(true)
}
