//! Configuration profiles and device groups: uploads validated as Apple profiles, assignment
//! to groups and devices, and the per-device install state kept in sync with MDM commands.
//!
//! The model is desired state. A device should hold every profile assigned to it directly or
//! through a group it belongs to; [`reconcile`] compares that with the device's install
//! states and queues `InstallProfile` / `RemoveProfile` for the difference, writing the
//! commands and the states that wait for them in one transaction. It runs when a device
//! finishes enrolling (so its profiles are part of the baseline that setup release waits
//! for), after every assignment, group or profile change, and periodically (rule-based groups
//! follow facts that change on their own, such as the OS version).
//!
//! Groups and profile records are few (hundreds) and read on every reconcile, so they live in
//! memory ([`Catalog`]), loaded at start and replaced after each committed change. Install
//! states are per device and stay in the store.

pub mod payload;
pub mod reconcile;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::PoisonError;

use serde::{Deserialize, Serialize};

use crate::error::{ServiceError, ServiceResult};
use crate::lifecycle::activity::entry;
use crate::lifecycle::csv::is_serial;
use crate::lifecycle::directory::{summary, DeviceSummary};
use crate::lifecycle::status::DeviceFacts;
use crate::lifecycle::{actor_of, normalize_serial};
use crate::ports::{
    pages, ActivityOutcome, Assignments, GroupKind, GroupRecord, GroupRule, InstallRecord,
    ProfileBatch, ProfileRecord, Store, Timestamp,
};
use crate::MdmService;

/// The keystore purpose of stored profile files.
pub(crate) const FILE_PURPOSE: &str = "profile-file";
/// Largest profile file accepted.
pub const MAX_PROFILE_BYTES: usize = 4 * 1024 * 1024;
/// Most serials one call may add to or remove from a static group, or assign directly.
pub const MAX_SERIALS_PER_CALL: usize = 10_000;
/// Most devices a profile may be assigned to directly (more belong in a group).
pub const MAX_DIRECT_DEVICES: usize = 10_000;
/// How many groups and how many profiles the appliance keeps.
pub const MAX_GROUPS: usize = 1_000;
pub const MAX_PROFILES: usize = 1_000;
/// Static group members read per store call at start-up.
const LOAD_PAGE: usize = 5_000;

/// Groups, static memberships and profile records, in memory.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    pub groups: BTreeMap<String, GroupRecord>,
    /// Static group id → member serials.
    pub members: HashMap<String, BTreeSet<String>>,
    pub profiles: BTreeMap<String, ProfileRecord>,
}

impl Catalog {
    /// Reads everything from the store.
    pub fn load<S: Store>(store: &S) -> ServiceResult<Self> {
        let mut c = Catalog::default();
        for g in store.groups()? {
            c.groups.insert(g.id.clone(), g);
        }
        let mut after: Option<(String, String)> = None;
        loop {
            let page = store.group_members(
                after.as_ref().map(|(g, s)| (g.as_str(), s.as_str())),
                LOAD_PAGE,
            )?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for (g, s) in page {
                c.members.entry(g).or_default().insert(s);
            }
            after = Some(last);
        }
        for p in store.profiles()? {
            c.profiles.insert(p.id.clone(), p);
        }
        Ok(c)
    }

    /// A group by id, or by name ignoring case.
    pub fn group(&self, key: &str) -> Option<&GroupRecord> {
        self.groups.get(key).or_else(|| {
            self.groups
                .values()
                .find(|g| g.name.eq_ignore_ascii_case(key.trim()))
        })
    }

    /// A profile by id, or by name or PayloadIdentifier ignoring case.
    pub fn profile(&self, key: &str) -> Option<&ProfileRecord> {
        let key = key.trim();
        self.profiles.get(key).or_else(|| {
            self.profiles
                .values()
                .find(|p| p.name.eq_ignore_ascii_case(key))
                .or_else(|| self.profiles.values().find(|p| p.identifier == key))
        })
    }

    /// Whether a device belongs to a group.
    pub fn is_member(&self, group: &GroupRecord, f: &DeviceFacts) -> bool {
        match &group.kind {
            GroupKind::Static => self
                .members
                .get(&group.id)
                .is_some_and(|m| m.contains(&f.serial)),
            GroupKind::Rule { rule } => rules::matches(rule, f),
        }
    }

    /// The groups a device belongs to.
    pub fn groups_of(&self, f: &DeviceFacts) -> Vec<&GroupRecord> {
        self.groups
            .values()
            .filter(|g| self.is_member(g, f))
            .collect()
    }

    /// The profiles a device should hold, by id.
    pub fn desired(&self, f: &DeviceFacts) -> Vec<&ProfileRecord> {
        let mut member_of: HashMap<&str, bool> = HashMap::new();
        self.profiles
            .values()
            .filter(|p| {
                // Kept sorted by `change_assignments`.
                p.assignments.devices.binary_search(&f.serial).is_ok()
                    || p.assignments.groups.iter().any(|gid| {
                        *member_of.entry(gid.as_str()).or_insert_with(|| {
                            self.groups.get(gid).is_some_and(|g| self.is_member(g, f))
                        })
                    })
            })
            .collect()
    }

    /// Profiles that name a group in their assignments.
    pub fn profiles_assigning(&self, group_id: &str) -> Vec<&ProfileRecord> {
        self.profiles
            .values()
            .filter(|p| p.assignments.groups.iter().any(|g| g == group_id))
            .collect()
    }
}

/// A group as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// `static` or `rule`.
    pub kind: &'static str,
    pub rule: Option<GroupRule>,
    /// Devices in it now (for a static group: serials added, known or not).
    pub members: usize,
    /// Profiles assigned to it: (id, name).
    pub profiles: Vec<NamedRef>,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::ser")]
    pub created_at: Timestamp,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::ser")]
    pub updated_at: Timestamp,
    pub updated_by: String,
}

/// A reference to another object by id and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedRef {
    pub id: String,
    pub name: String,
}

/// What an admin sends to create a group: no rule makes a static group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub rule: Option<GroupRule>,
    /// Initial members of a static group.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A change to a group; absent fields stay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    pub name: Option<String>,
    /// `""` clears it.
    pub description: Option<String>,
    pub rule: Option<GroupRule>,
}

/// A device in a group listing; `device` is absent for a static member the appliance has not
/// heard of yet.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub serial: String,
    pub device: Option<DeviceSummary>,
}

/// A page of group members, in serial order.
#[derive(Debug, Clone, Serialize)]
pub struct MemberPage {
    pub items: Vec<MemberView>,
    pub next: Option<String>,
    pub total: usize,
}

/// What a membership change did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MembersChanged {
    pub added: usize,
    pub removed: usize,
    /// Serials already in (for adds) or not in (for removes) the group.
    pub unchanged: usize,
    pub reconcile: reconcile::ReconcileStats,
}

/// A profile as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileView {
    pub id: String,
    pub name: String,
    pub identifier: String,
    pub sha256: String,
    pub size: u64,
    /// What validation found: payloads, signer, scope, warnings.
    pub summary: serde_json::Value,
    pub groups: Vec<NamedRef>,
    pub devices: Vec<String>,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::ser")]
    pub created_at: Timestamp,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::ser")]
    pub updated_at: Timestamp,
    pub updated_by: String,
}

/// Where profiles go: group ids or names, and serial numbers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentChange {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub devices: Vec<String>,
}

/// One device's state for one profile, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstallView {
    pub serial: String,
    pub profile_id: String,
    pub profile_name: Option<String>,
    pub identifier: String,
    /// `installing`, `installed`, `failed`, `removing`.
    pub state: &'static str,
    /// True when the installed version is the profile's current one.
    pub current: bool,
    pub error: Option<String>,
    pub command_uuid: Option<String>,
    pub enrollment_id: String,
    #[serde(serialize_with = "crate::lifecycle::rfc3339::ser")]
    pub updated_at: Timestamp,
}

/// A page of a profile's install states.
#[derive(Debug, Clone, Serialize)]
pub struct InstallPage {
    pub items: Vec<InstallView>,
    pub next: Option<String>,
}

fn invalid(code: &'static str, msg: impl Into<String>) -> ServiceError {
    ServiceError::bad_request(code, msg)
}

/// Trims a name; errors name the field.
fn check_name(field: &str, v: &str) -> ServiceResult<String> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > 100 || v.chars().any(char::is_control) {
        return Err(invalid(
            "NAME_INVALID",
            format!("{field}: give a name of 1 to 100 characters without control characters"),
        ));
    }
    Ok(v.to_string())
}

/// Upper-cases serials and checks their shape; the error names the first bad one.
fn check_serials(field: &str, serials: &[String]) -> ServiceResult<Vec<String>> {
    if serials.len() > MAX_SERIALS_PER_CALL {
        return Err(invalid(
            "TOO_MANY_SERIALS",
            format!("{field}: at most {MAX_SERIALS_PER_CALL} serial numbers per request"),
        ));
    }
    let mut out = Vec::with_capacity(serials.len());
    let mut seen = HashSet::new();
    for (i, s) in serials.iter().enumerate() {
        let n = normalize_serial(s);
        if !is_serial(&n) {
            return Err(invalid(
                "SERIAL_INVALID",
                format!(
                    "{field}[{i}]: `{}` is not a serial number (8 to 16 letters and digits)",
                    s.trim()
                ),
            ));
        }
        if seen.insert(n.clone()) {
            out.push(n);
        }
    }
    Ok(out)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

impl<S: Store> MdmService<S> {
    /// A snapshot of groups and profiles.
    pub fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.inner
            .catalog
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A group's members now, in serial order: the serials listed for a static group, the
    /// devices matching the rule of a rule-based one.
    fn member_serials(&self, c: &Catalog, g: &GroupRecord) -> Vec<String> {
        match &g.kind {
            GroupKind::Static => c
                .members
                .get(&g.id)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default(),
            GroupKind::Rule { rule } => self.devices().keys_matching(|f| rules::matches(rule, f)),
        }
    }

    fn group_view(&self, c: &Catalog, g: &GroupRecord) -> GroupView {
        let (kind, rule) = match &g.kind {
            GroupKind::Static => ("static", None),
            GroupKind::Rule { rule } => ("rule", Some(rule.clone())),
        };
        let members = match &g.kind {
            // Counted without copying the serials.
            GroupKind::Static => c.members.get(&g.id).map_or(0, BTreeSet::len),
            GroupKind::Rule { .. } => self.member_serials(c, g).len(),
        };
        GroupView {
            id: g.id.clone(),
            name: g.name.clone(),
            description: g.description.clone(),
            kind,
            rule,
            members,
            profiles: c
                .profiles_assigning(&g.id)
                .into_iter()
                .map(|p| NamedRef {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
                .collect(),
            created_at: g.created_at,
            updated_at: g.updated_at,
            updated_by: g.updated_by.clone(),
        }
    }

    fn find_group(&self, key: &str) -> ServiceResult<GroupRecord> {
        self.catalog().group(key).cloned().ok_or_else(|| {
            ServiceError::not_found(
                "GROUP_NOT_FOUND",
                format!("no group has the id or name `{key}`"),
            )
        })
    }

    fn find_profile(&self, key: &str) -> ServiceResult<ProfileRecord> {
        self.catalog().profile(key).cloned().ok_or_else(|| {
            ServiceError::not_found(
                "PROFILE_NOT_FOUND",
                format!("no profile has the id, name or identifier `{key}`"),
            )
        })
    }

    /// Every group.
    pub fn list_groups(&self) -> Vec<GroupView> {
        let c = self.catalog();
        c.groups.values().map(|g| self.group_view(&c, g)).collect()
    }

    /// One group by id or name.
    pub fn group(&self, key: &str) -> ServiceResult<GroupView> {
        let g = self.find_group(key)?;
        let c = self.catalog();
        Ok(self.group_view(&c, &g))
    }

    /// Creates a group.
    pub async fn create_group(&self, new: NewGroup, by: &str) -> ServiceResult<GroupView> {
        let _guard = self.inner.profile_lock.lock().await;
        let name = check_name("name", &new.name)?;
        let members = check_serials("members", &new.members)?;
        let kind = match new.rule {
            Some(rule) => {
                rules::validate(&rule)?;
                if !members.is_empty() {
                    return Err(invalid(
                        "GROUP_RULE_HAS_MEMBERS",
                        "members: a rule-based group's members follow from its rule; leave members out or drop the rule",
                    ));
                }
                GroupKind::Rule { rule }
            }
            None => GroupKind::Static,
        };
        {
            let c = self.catalog();
            if c.groups.len() >= MAX_GROUPS {
                return Err(ServiceError::conflict(
                    "TOO_MANY_GROUPS",
                    format!(
                        "the appliance keeps at most {MAX_GROUPS} groups; delete unused ones first"
                    ),
                ));
            }
            if c.groups
                .values()
                .any(|g| g.name.eq_ignore_ascii_case(&name))
            {
                return Err(ServiceError::conflict(
                    "GROUP_NAME_TAKEN",
                    format!("name: a group called `{name}` already exists"),
                ));
            }
        }
        let now = Timestamp::now();
        let rec = GroupRecord {
            id: new_id("grp"),
            name,
            description: new
                .description
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty()),
            kind,
            created_at: now,
            updated_at: now,
            updated_by: by.to_string(),
        };
        let batch = ProfileBatch {
            put_groups: vec![rec.clone()],
            add_members: members
                .iter()
                .map(|s| (rec.id.clone(), s.clone()))
                .collect(),
            activity: vec![entry(
                &actor_of(by),
                "group.created",
                vec![rec.id.clone()],
                ActivityOutcome::Ok,
                format!(
                    "group `{}` created ({} members given)",
                    rec.name,
                    members.len()
                ),
                Some(serde_json::json!({"kind": rec.kind, "members": members.len()})),
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        {
            let mut c = self.catalog_mut();
            if !members.is_empty() {
                c.members.entry(rec.id.clone()).or_default().extend(members);
            }
            c.groups.insert(rec.id.clone(), rec.clone());
        }
        // A new group has no profiles yet: nothing to reconcile.
        let c = self.catalog();
        Ok(self.group_view(&c, &rec))
    }

    /// Renames a group, changes its description or its rule.
    pub async fn update_group(
        &self,
        key: &str,
        patch: GroupPatch,
        by: &str,
    ) -> ServiceResult<GroupView> {
        let guard = self.inner.profile_lock.lock().await;
        let mut rec = self.find_group(key)?;
        let before = rec.clone();
        if let Some(name) = &patch.name {
            let name = check_name("name", name)?;
            let taken = self
                .catalog()
                .groups
                .values()
                .any(|g| g.id != rec.id && g.name.eq_ignore_ascii_case(&name));
            if taken {
                return Err(ServiceError::conflict(
                    "GROUP_NAME_TAKEN",
                    format!("name: a group called `{name}` already exists"),
                ));
            }
            rec.name = name;
        }
        if let Some(d) = &patch.description {
            rec.description = Some(d.trim().to_string()).filter(|d| !d.is_empty());
        }
        let rule_changed = if let Some(rule) = patch.rule {
            rules::validate(&rule)?;
            match &rec.kind {
                GroupKind::Static => {
                    return Err(ServiceError::conflict(
                        "GROUP_KIND_FIXED",
                        "rule: this is a static group; create a rule-based group instead",
                    ))
                }
                GroupKind::Rule { rule: old } => {
                    let changed = *old != rule;
                    rec.kind = GroupKind::Rule { rule };
                    changed
                }
            }
        } else {
            false
        };
        if rec == before {
            let c = self.catalog();
            return Ok(self.group_view(&c, &rec));
        }
        rec.updated_at = Timestamp::now();
        rec.updated_by = by.to_string();
        let batch = ProfileBatch {
            put_groups: vec![rec.clone()],
            activity: vec![entry(
                &actor_of(by),
                "group.updated",
                vec![rec.id.clone()],
                ActivityOutcome::Ok,
                format!("group `{}` changed", rec.name),
                Some(serde_json::json!({"before": before, "after": rec})),
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        self.catalog_mut()
            .groups
            .insert(rec.id.clone(), rec.clone());
        if rule_changed && !self.catalog().profiles_assigning(&rec.id).is_empty() {
            // Members came and went: every enrolled device may have gained or lost profiles.
            self.reconcile_locked(&guard, self.devices().enrolled_serials(), by)
                .await?;
        }
        let c = self.catalog();
        Ok(self.group_view(&c, &rec))
    }

    /// Deletes a group no profile is assigned to.
    pub async fn delete_group(&self, key: &str, by: &str) -> ServiceResult<()> {
        let _guard = self.inner.profile_lock.lock().await;
        let rec = self.find_group(key)?;
        let users: Vec<String> = self
            .catalog()
            .profiles_assigning(&rec.id)
            .iter()
            .map(|p| p.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::conflict(
                "GROUP_IN_USE",
                format!(
                    "group `{}` is assigned to profiles {}; unassign it from them first",
                    rec.name,
                    users.join(", ")
                ),
            ));
        }
        let batch = ProfileBatch {
            delete_groups: vec![rec.id.clone()],
            activity: vec![entry(
                &actor_of(by),
                "group.deleted",
                vec![rec.id.clone()],
                ActivityOutcome::Ok,
                format!("group `{}` deleted", rec.name),
                None,
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        let mut c = self.catalog_mut();
        c.groups.remove(&rec.id);
        c.members.remove(&rec.id);
        Ok(())
    }

    /// A page of a group's members in serial order, after the serial `after`.
    pub fn group_members(
        &self,
        key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<MemberPage> {
        let g = self.find_group(key)?;
        let limit = limit.clamp(1, 1000);
        let serials = self.member_serials(&self.catalog(), &g);
        let total = serials.len();
        let start = after.map_or(0, |a| serials.partition_point(|s| s.as_str() <= a));
        let now = Timestamp::now();
        let th = self.thresholds();
        let items: Vec<MemberView> = serials
            .iter()
            .skip(start)
            .take(limit)
            .map(|s| MemberView {
                serial: s.clone(),
                device: self.devices().get(s).map(|f| summary(&f, now, &th)),
            })
            .collect();
        let next = (start + items.len() < total)
            .then(|| items.last().map(|m| m.serial.clone()))
            .flatten();
        Ok(MemberPage { items, next, total })
    }

    /// Adds serials to and removes serials from a static group.
    pub async fn change_group_members(
        &self,
        key: &str,
        add: &[String],
        remove: &[String],
        by: &str,
    ) -> ServiceResult<MembersChanged> {
        let guard = self.inner.profile_lock.lock().await;
        let g = self.find_group(key)?;
        if !matches!(g.kind, GroupKind::Static) {
            return Err(ServiceError::conflict(
                "GROUP_IS_RULE_BASED",
                format!(
                    "group `{}` takes its members from its rule; change the rule instead",
                    g.name
                ),
            ));
        }
        let add = check_serials("add", add)?;
        let remove = check_serials("remove", remove)?;
        if let Some(s) = add.iter().find(|s| remove.contains(s)) {
            return Err(invalid(
                "SERIAL_IN_BOTH",
                format!("{s} is both in add and in remove; send it in one of them"),
            ));
        }
        let current = self
            .catalog()
            .members
            .get(&g.id)
            .cloned()
            .unwrap_or_default();
        let added: Vec<String> = add
            .iter()
            .filter(|s| !current.contains(*s))
            .cloned()
            .collect();
        let removed: Vec<String> = remove
            .iter()
            .filter(|s| current.contains(*s))
            .cloned()
            .collect();
        let mut out = MembersChanged {
            added: added.len(),
            removed: removed.len(),
            unchanged: add.len() + remove.len() - added.len() - removed.len(),
            ..MembersChanged::default()
        };
        if added.is_empty() && removed.is_empty() {
            return Ok(out);
        }
        let sample: Vec<String> = added.iter().chain(&removed).take(10).cloned().collect();
        let batch = ProfileBatch {
            add_members: added.iter().map(|s| (g.id.clone(), s.clone())).collect(),
            remove_members: removed.iter().map(|s| (g.id.clone(), s.clone())).collect(),
            activity: vec![entry(
                &actor_of(by),
                "group.members_changed",
                std::iter::once(g.id.clone()).chain(sample).collect(),
                ActivityOutcome::Ok,
                format!(
                    "group `{}`: {} added, {} removed",
                    g.name,
                    added.len(),
                    removed.len()
                ),
                Some(serde_json::json!({"added": added.len(), "removed": removed.len()})),
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        {
            let mut c = self.catalog_mut();
            let m = c.members.entry(g.id.clone()).or_default();
            m.extend(added.iter().cloned());
            for s in &removed {
                m.remove(s);
            }
        }
        if !self.catalog().profiles_assigning(&g.id).is_empty() {
            let affected: Vec<String> = added.into_iter().chain(removed).collect();
            out.reconcile = self.reconcile_locked(&guard, affected, by).await?;
        }
        Ok(out)
    }

    fn profile_view(&self, c: &Catalog, p: &ProfileRecord) -> ProfileView {
        ProfileView {
            id: p.id.clone(),
            name: p.name.clone(),
            identifier: p.identifier.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
            summary: p.summary.clone(),
            groups: p
                .assignments
                .groups
                .iter()
                .map(|g| NamedRef {
                    id: g.clone(),
                    name: c.groups.get(g).map(|r| r.name.clone()).unwrap_or_default(),
                })
                .collect(),
            devices: p.assignments.devices.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
            updated_by: p.updated_by.clone(),
        }
    }

    /// Every profile.
    pub fn list_profiles(&self) -> Vec<ProfileView> {
        let c = self.catalog();
        c.profiles
            .values()
            .map(|p| self.profile_view(&c, p))
            .collect()
    }

    /// One profile by id, name or identifier.
    pub fn profile(&self, key: &str) -> ServiceResult<ProfileView> {
        let p = self.find_profile(key)?;
        let c = self.catalog();
        Ok(self.profile_view(&c, &p))
    }

    /// The uploaded file of a profile, as uploaded, and a file name for it.
    pub fn profile_file(&self, key: &str) -> ServiceResult<(Vec<u8>, String)> {
        let p = self.find_profile(key)?;
        let sealed = self.store().profile_file(&p.id)?.ok_or_else(|| {
            ServiceError::internal(
                "PROFILE_FILE_MISSING",
                format!(
                    "the file of profile `{}` is missing from the database",
                    p.name
                ),
            )
        })?;
        let file = self.unseal(FILE_PURPOSE, &sealed)?;
        let safe: String = p
            .identifier
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok((file.to_vec(), format!("{safe}.mobileconfig")))
    }

    /// Checks an upload; the error names the field.
    fn parse_upload(&self, bytes: &[u8]) -> ServiceResult<payload::ParsedProfile> {
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(ServiceError::new(
                crate::error::ErrorKind::TooLarge,
                "PROFILE_TOO_LARGE",
                format!("profiles are limited to {MAX_PROFILE_BYTES} bytes"),
            ));
        }
        let parsed =
            payload::parse(bytes).map_err(|e| invalid("PROFILE_INVALID", e.to_string()))?;
        if parsed.identifier == crate::enroll::PROFILE_IDENTIFIER {
            return Err(invalid(
                "PROFILE_INVALID",
                format!(
                    "PayloadIdentifier: `{}` is the appliance's own enrollment profile; installing another profile under it would replace the MDM profile. Give the profile its own identifier",
                    parsed.identifier
                ),
            ));
        }
        Ok(parsed)
    }

    /// Stores a new profile (not assigned anywhere yet).
    pub async fn upload_profile(
        &self,
        name: Option<&str>,
        bytes: &[u8],
        by: &str,
    ) -> ServiceResult<ProfileView> {
        let _guard = self.inner.profile_lock.lock().await;
        let parsed = self.parse_upload(bytes)?;
        let name = check_name(
            "name",
            name.or(parsed.display_name.as_deref())
                .unwrap_or(&parsed.identifier),
        )?;
        {
            let c = self.catalog();
            if c.profiles.len() >= MAX_PROFILES {
                return Err(ServiceError::conflict(
                    "TOO_MANY_PROFILES",
                    format!("the appliance keeps at most {MAX_PROFILES} profiles; delete unused ones first"),
                ));
            }
            if let Some(p) = c
                .profiles
                .values()
                .find(|p| p.identifier == parsed.identifier)
            {
                return Err(ServiceError::conflict(
                    "PROFILE_IDENTIFIER_TAKEN",
                    format!(
                        "PayloadIdentifier: profile `{}` already has the identifier `{}`; a device holds one profile per identifier. Replace that profile's file instead",
                        p.name, parsed.identifier
                    ),
                ));
            }
            if c.profiles
                .values()
                .any(|p| p.name.eq_ignore_ascii_case(&name))
            {
                return Err(ServiceError::conflict(
                    "PROFILE_NAME_TAKEN",
                    format!("name: a profile called `{name}` already exists; choose another name"),
                ));
            }
        }
        let now = Timestamp::now();
        let rec = ProfileRecord {
            id: new_id("prf"),
            name,
            identifier: parsed.identifier.clone(),
            sha256: crate::sha256_hex(bytes),
            size: bytes.len() as u64,
            summary: serde_json::to_value(&parsed).unwrap_or_default(),
            assignments: Assignments::default(),
            created_at: now,
            updated_at: now,
            updated_by: by.to_string(),
        };
        let sealed = self.seal(FILE_PURPOSE, bytes)?;
        let batch = ProfileBatch {
            put_profiles: vec![(rec.clone(), Some(sealed))],
            activity: vec![entry(
                &actor_of(by),
                "profile.uploaded",
                vec![rec.id.clone()],
                ActivityOutcome::Ok,
                format!("profile `{}` ({}) uploaded", rec.name, rec.identifier),
                Some(
                    serde_json::json!({"sha256": rec.sha256, "size": rec.size, "signed": parsed.signer.is_some()}),
                ),
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        self.catalog_mut()
            .profiles
            .insert(rec.id.clone(), rec.clone());
        let c = self.catalog();
        Ok(self.profile_view(&c, &rec))
    }

    /// Replaces a profile's file (same identifier); devices holding it get the new version.
    pub async fn replace_profile(
        &self,
        key: &str,
        bytes: &[u8],
        by: &str,
    ) -> ServiceResult<ProfileView> {
        let guard = self.inner.profile_lock.lock().await;
        let mut rec = self.find_profile(key)?;
        let parsed = self.parse_upload(bytes)?;
        if parsed.identifier != rec.identifier {
            return Err(ServiceError::conflict(
                "PROFILE_IDENTIFIER_CHANGED",
                format!(
                    "PayloadIdentifier: the new file has `{}` but profile `{}` is `{}`; upload a file with a different identifier as a new profile",
                    parsed.identifier, rec.name, rec.identifier
                ),
            ));
        }
        let sha = crate::sha256_hex(bytes);
        if sha == rec.sha256 {
            let c = self.catalog();
            return Ok(self.profile_view(&c, &rec));
        }
        let old_sha = std::mem::replace(&mut rec.sha256, sha);
        rec.size = bytes.len() as u64;
        rec.summary = serde_json::to_value(&parsed).unwrap_or_default();
        rec.updated_at = Timestamp::now();
        rec.updated_by = by.to_string();
        let sealed = self.seal(FILE_PURPOSE, bytes)?;
        let batch = ProfileBatch {
            put_profiles: vec![(rec.clone(), Some(sealed))],
            activity: vec![entry(
                &actor_of(by),
                "profile.replaced",
                vec![rec.id.clone()],
                ActivityOutcome::Ok,
                format!("profile `{}` given a new file", rec.name),
                Some(serde_json::json!({"old_sha256": old_sha, "sha256": rec.sha256})),
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        self.catalog_mut()
            .profiles
            .insert(rec.id.clone(), rec.clone());
        let affected = self.profile_serials(&rec.id)?;
        self.reconcile_locked(&guard, affected, by).await?;
        let c = self.catalog();
        Ok(self.profile_view(&c, &rec))
    }

    /// Deletes a profile; devices holding it get RemoveProfile.
    pub async fn delete_profile(
        &self,
        key: &str,
        by: &str,
    ) -> ServiceResult<reconcile::ReconcileStats> {
        let guard = self.inner.profile_lock.lock().await;
        let rec = self.find_profile(key)?;
        let affected = self.profile_serials(&rec.id)?;
        let batch = ProfileBatch {
            delete_profiles: vec![rec.id.clone()],
            activity: vec![entry(
                &actor_of(by),
                "profile.deleted",
                vec![rec.id.clone()],
                ActivityOutcome::Ok,
                format!("profile `{}` ({}) deleted", rec.name, rec.identifier),
                None,
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        self.catalog_mut().profiles.remove(&rec.id);
        self.reconcile_locked(&guard, affected, by).await
    }

    /// Every install state of a profile, by serial.
    fn profile_states(&self, profile_id: &str) -> ServiceResult<Vec<InstallRecord>> {
        let mut out = Vec::new();
        for page in pages(
            |after| self.store().profile_installs(profile_id, after, LOAD_PAGE),
            |r: &InstallRecord| r.serial.as_str(),
        ) {
            out.extend(page?);
        }
        Ok(out)
    }

    /// Serials with an install state for a profile.
    fn profile_serials(&self, profile_id: &str) -> ServiceResult<Vec<String>> {
        Ok(self
            .profile_states(profile_id)?
            .into_iter()
            .map(|r| r.serial)
            .collect())
    }

    /// Assigns a profile to more groups and devices (`assign`), or takes assignments away.
    pub async fn change_assignments(
        &self,
        key: &str,
        change: &AssignmentChange,
        assign: bool,
        by: &str,
    ) -> ServiceResult<(ProfileView, reconcile::ReconcileStats)> {
        let guard = self.inner.profile_lock.lock().await;
        let mut rec = self.find_profile(key)?;
        let serials = check_serials("devices", &change.devices)?;
        let mut group_ids = Vec::new();
        for (i, g) in change.groups.iter().enumerate() {
            let found = self.catalog().group(g).map(|r| r.id.clone());
            match found {
                Some(id) => group_ids.push(id),
                None => {
                    return Err(ServiceError::not_found(
                        "GROUP_NOT_FOUND",
                        format!("groups[{i}]: no group has the id or name `{g}`"),
                    ))
                }
            }
        }
        if serials.is_empty() && group_ids.is_empty() {
            return Err(invalid(
                "ASSIGNMENT_EMPTY",
                "name at least one group (groups) or serial number (devices)",
            ));
        }
        let before = rec.assignments.clone();
        let a = &mut rec.assignments;
        if assign {
            for g in &group_ids {
                if !a.groups.contains(g) {
                    a.groups.push(g.clone());
                }
            }
            let mut all: BTreeSet<String> = a.devices.drain(..).collect();
            all.extend(serials.iter().cloned());
            a.devices = all.into_iter().collect();
            if a.devices.len() > MAX_DIRECT_DEVICES {
                return Err(invalid(
                    "TOO_MANY_SERIALS",
                    format!("devices: a profile can be assigned to at most {MAX_DIRECT_DEVICES} devices directly; put them in a group"),
                ));
            }
        } else {
            a.groups.retain(|g| !group_ids.contains(g));
            let gone: HashSet<&String> = serials.iter().collect();
            a.devices.retain(|s| !gone.contains(s));
        }
        a.devices.sort();
        if rec.assignments == before {
            let c = self.catalog();
            return Ok((
                self.profile_view(&c, &rec),
                reconcile::ReconcileStats::default(),
            ));
        }
        rec.updated_at = Timestamp::now();
        rec.updated_by = by.to_string();
        let (kind, verb) = if assign {
            ("profile.assigned", "assigned to")
        } else {
            ("profile.unassigned", "unassigned from")
        };
        let batch = ProfileBatch {
            put_profiles: vec![(rec.clone(), None)],
            activity: vec![entry(
                &actor_of(by),
                kind,
                std::iter::once(rec.id.clone())
                    .chain(group_ids.iter().cloned())
                    .chain(serials.iter().take(10).cloned())
                    .collect(),
                ActivityOutcome::Ok,
                format!(
                    "profile `{}` {verb} {} groups and {} devices",
                    rec.name,
                    group_ids.len(),
                    serials.len()
                ),
                Some(serde_json::json!({"groups": group_ids, "devices": serials.len()})),
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        self.catalog_mut()
            .profiles
            .insert(rec.id.clone(), rec.clone());
        // Devices that may gain or lose it: the serials named and the groups' members (and,
        // on unassign, any device holding it, in case it was reachable some other way).
        let mut affected: BTreeSet<String> = serials.into_iter().collect();
        {
            let c = self.catalog();
            for g in group_ids.iter().filter_map(|gid| c.groups.get(gid)) {
                affected.extend(self.member_serials(&c, g));
            }
        }
        if !assign {
            affected.extend(self.profile_serials(&rec.id)?);
        }
        let stats = self.reconcile_locked(&guard, affected, by).await?;
        let c = self.catalog();
        Ok((self.profile_view(&c, &rec), stats))
    }

    /// A page of one profile's install states by serial.
    pub fn profile_installs(
        &self,
        key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ServiceResult<InstallPage> {
        let p = self.find_profile(key)?;
        let limit = limit.clamp(1, 1000);
        let (recs, next) = crate::ports::keyset_page(
            self.store().profile_installs(&p.id, after, limit + 1)?,
            limit,
            |r| &r.serial,
        );
        let c = self.catalog();
        Ok(InstallPage {
            items: recs.iter().map(|r| install_view(&c, r)).collect(),
            next,
        })
    }

    /// One device's profiles: what it should hold and where each install is.
    pub fn device_profiles(&self, f: &DeviceFacts) -> ServiceResult<serde_json::Value> {
        let installs = self.store().device_installs(&f.serial)?;
        let c = self.catalog();
        let desired: Vec<serde_json::Value> = c
            .desired(f)
            .into_iter()
            .map(|p| serde_json::json!({"id": p.id, "name": p.name, "identifier": p.identifier}))
            .collect();
        let groups: Vec<NamedRef> = c
            .groups_of(f)
            .into_iter()
            .map(|g| NamedRef {
                id: g.id.clone(),
                name: g.name.clone(),
            })
            .collect();
        Ok(serde_json::json!({
            "groups": groups,
            "assigned": desired,
            "installs": installs.iter().map(|r| install_view(&c, r)).collect::<Vec<_>>(),
        }))
    }

    /// Clears failed install states of a profile and tries those devices again.
    pub async fn retry_profile(
        &self,
        key: &str,
        by: &str,
    ) -> ServiceResult<reconcile::ReconcileStats> {
        let guard = self.inner.profile_lock.lock().await;
        let p = self.find_profile(key)?;
        let failed: Vec<String> = self
            .profile_states(&p.id)?
            .into_iter()
            .filter(|r| matches!(r.state, crate::ports::InstallState::Failed { .. }))
            .map(|r| r.serial)
            .collect();
        if failed.is_empty() {
            return Ok(reconcile::ReconcileStats::default());
        }
        let batch = ProfileBatch {
            delete_installs: failed.iter().map(|s| (s.clone(), p.id.clone())).collect(),
            activity: vec![entry(
                &actor_of(by),
                "profile.retry",
                std::iter::once(p.id.clone())
                    .chain(failed.iter().take(10).cloned())
                    .collect(),
                ActivityOutcome::Ok,
                format!(
                    "install of profile `{}` retried on {} devices",
                    p.name,
                    failed.len()
                ),
                None,
            )],
            ..ProfileBatch::default()
        };
        self.store().profile_write(batch).await?;
        self.reconcile_locked(&guard, failed, by).await
    }
}

fn install_view(c: &Catalog, r: &InstallRecord) -> InstallView {
    let p = c.profiles.get(&r.profile_id);
    let (error, command_uuid) = match &r.state {
        crate::ports::InstallState::Failed { error } => (Some(error.clone()), None),
        s => (None, s.command_uuid().map(str::to_string)),
    };
    InstallView {
        serial: r.serial.clone(),
        profile_id: r.profile_id.clone(),
        profile_name: p.map(|p| p.name.clone()),
        identifier: r.identifier.clone(),
        state: r.state.as_str(),
        current: p.is_some_and(|p| p.sha256 == r.sha256),
        error,
        command_uuid,
        enrollment_id: r.enrollment_id.clone(),
        updated_at: r.updated_at,
    }
}
