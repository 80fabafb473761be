//! The simulator's in-memory world: organisations, MDM servers, devices and their event
//! logs, profiles, sessions, and the controls that script failures. Everything lives in
//! one [`State`] behind one mutex; operations are cheap enough (a fetch page of 1000
//! devices is a B-tree range walk) that contention does not matter.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::error::AbmSimError;
use super::types::{
    AbmDevice, AssignOutcome, Counters, DeviceChange, DeviceFamily, DeviceView, Endpoint, Fault,
    OAuthCredentials, OpType, ProfileStatus, RequestRecord, ServerId, ServerInfo, ServerSpec,
};

/// Fetch and sync page size when the request gives none.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Largest fetch and sync page; larger requests are clamped to it.
pub(crate) const MAX_LIMIT: usize = 1000;
/// Most serial numbers one assignment (or define, remove, disown) request may carry.
pub(crate) const MAX_DEVICES_PER_REQUEST: usize = 1000;
/// How many request records are kept (oldest dropped first).
const REQUEST_LOG_CAPACITY: usize = 100_000;
/// Event logs are pruned of events older than the cursor lifetime once they grow past
/// this many entries (no cursor young enough to be accepted can point before them).
const EVENT_PRUNE_THRESHOLD: usize = 500_000;

/// A fast, non-cryptographic generator (SplitMix64) for device attributes. Secrets use
/// the system generator instead.
pub(crate) struct FastRng(u64);

impl FastRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        // Modulo bias is irrelevant for picking device colours.
        usize::try_from(self.next_u64() % (n.max(1) as u64)).unwrap_or(0)
    }
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `len` random characters from `alphabet`, from the system generator.
pub(crate) fn random_string(alphabet: &[u8], len: usize) -> Result<String, AbmSimError> {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| AbmSimError::Random)?;
    Ok(bytes
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
        .collect())
}

/// `t` without its fraction of a second: token expiries travel as RFC 3339 seconds.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// Random upper-case hex.
pub(crate) fn random_hex(len: usize) -> Result<String, AbmSimError> {
    random_string(b"0123456789ABCDEF", len)
}

pub(crate) struct Org {
    pub(crate) name: String,
    pub(crate) org_id: String,
    pub(crate) email: String,
    pub(crate) phone: String,
    pub(crate) address: String,
    pub(crate) consumer_key: String,
    pub(crate) consumer_secret: String,
    pub(crate) terms_signed: bool,
}

pub(crate) struct Event {
    pub(crate) serial: String,
    pub(crate) op: OpType,
    pub(crate) date: SystemTime,
    pub(crate) device: Arc<AbmDevice>,
}

pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) uuid: String,
    pub(crate) admin_id: String,
    pub(crate) org: usize,
    pub(crate) access_token: String,
    pub(crate) access_secret: String,
    pub(crate) token_expiry: SystemTime,
    pub(crate) revoked: bool,
    pub(crate) access_denied: bool,
    /// Serial numbers assigned to this server, in the stable order fetch pages use.
    pub(crate) devices: BTreeSet<String>,
    pub(crate) events: VecDeque<Event>,
    /// Sequence number of `events[0]`.
    pub(crate) events_base: u64,
    /// Defined profiles by `profile_uuid`, as posted (without `devices`).
    pub(crate) profiles: HashMap<String, Map<String, Value>>,
}

impl Server {
    /// The sequence number the next event will get: a sync cursor made now starts here.
    pub(crate) fn next_seq(&self) -> u64 {
        self.events_base + self.events.len() as u64
    }
}

pub(crate) struct DeviceEntry {
    pub(crate) server: Option<usize>,
    pub(crate) cooldown_until: Option<SystemTime>,
    pub(crate) data: Arc<AbmDevice>,
}

pub(crate) struct Session {
    pub(crate) server: usize,
    pub(crate) expires: SystemTime,
    pub(crate) calls: u32,
    /// Set once a newer session replaced this one: how many more calls it may make.
    pub(crate) grace_left: Option<u32>,
    /// The server decided to invalidate it: its next use gets 403 FORBIDDEN.
    pub(crate) forbidden: bool,
}

struct FaultRule {
    fault: Fault,
    endpoint: Option<Endpoint>,
    remaining: usize,
}

struct Scripted {
    outcome: AssignOutcome,
    remaining: u32,
    retry_after: Duration,
}

/// The result of an assignment, per serial number, plus the largest `retry_after` of
/// the throttled ones.
pub(crate) struct AssignResult {
    pub(crate) devices: Map<String, Value>,
    pub(crate) retry_after: Option<Duration>,
}

/// A device on a page, with its `op_type` and `op_date` on sync pages.
pub(crate) type PageEntry = (Arc<AbmDevice>, Option<(OpType, SystemTime)>);

/// A fetch page or sync page, before it is turned into JSON.
pub(crate) struct Page {
    pub(crate) devices: Vec<PageEntry>,
    pub(crate) more_to_follow: bool,
}

pub(crate) struct State {
    clock_offset: Duration,
    pub(crate) orgs: Vec<Org>,
    pub(crate) servers: Vec<Server>,
    pub(crate) devices: HashMap<String, DeviceEntry>,
    cooldowns: BTreeSet<(SystemTime, String)>,
    /// Current access tokens to their server.
    pub(crate) tokens: HashMap<String, usize>,
    pub(crate) sessions: HashMap<String, Session>,
    /// `consumer_key \0 token \0 nonce` to the timestamp it came with.
    pub(crate) nonces: HashMap<String, i64>,
    faults: Vec<FaultRule>,
    pub(crate) delay: Duration,
    scripted: HashMap<String, VecDeque<Scripted>>,
    pub(crate) counters: Counters,
    log: VecDeque<RequestRecord>,
    rng: FastRng,
}

impl State {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            clock_offset: Duration::ZERO,
            orgs: Vec::new(),
            servers: Vec::new(),
            devices: HashMap::new(),
            cooldowns: BTreeSet::new(),
            tokens: HashMap::new(),
            sessions: HashMap::new(),
            nonces: HashMap::new(),
            faults: Vec::new(),
            delay: Duration::ZERO,
            scripted: HashMap::new(),
            counters: Counters::default(),
            log: VecDeque::new(),
            rng: FastRng::new(seed),
        }
    }

    /// The simulated time: the real wall clock moved forward by every
    /// [`Self::advance`] so far.
    pub(crate) fn now(&self) -> SystemTime {
        SystemTime::now() + self.clock_offset
    }

    pub(crate) fn advance(&mut self, by: Duration) {
        self.clock_offset += by;
        let now = self.now();
        self.settle(now);
    }

    /// Ends cool-downs that are over: the device reappears in sync as `modified`, dated
    /// when its cool-down ended. Called before every operation, so events stay in
    /// `op_date` order.
    pub(crate) fn settle(&mut self, now: SystemTime) {
        while let Some((until, serial)) = self.cooldowns.first().cloned() {
            if until > now {
                break;
            }
            self.cooldowns.remove(&(until, serial.clone()));
            let Some(entry) = self.devices.get_mut(&serial) else {
                continue;
            };
            if entry.cooldown_until != Some(until) {
                continue;
            }
            entry.cooldown_until = None;
            if let Some(server) = entry.server {
                let device = entry.data.clone();
                self.push_event(server, &serial, OpType::Modified, until, device, now);
            }
        }
    }

    fn push_event(
        &mut self,
        server: usize,
        serial: &str,
        op: OpType,
        date: SystemTime,
        device: Arc<AbmDevice>,
        now: SystemTime,
    ) {
        let Some(s) = self.servers.get_mut(server) else {
            return;
        };
        s.events.push_back(Event {
            serial: serial.to_owned(),
            op,
            date,
            device,
        });
        if s.events.len() > EVENT_PRUNE_THRESHOLD {
            let horizon = now
                .checked_sub(super::CURSOR_LIFETIME)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            while s.events.front().is_some_and(|e| e.date < horizon) {
                s.events.pop_front();
                s.events_base += 1;
            }
        }
    }

    // Organisations and servers.

    fn org_for(&mut self, name: &str) -> Result<usize, AbmSimError> {
        if let Some(i) = self.orgs.iter().position(|o| o.name == name) {
            return Ok(i);
        }
        self.new_org(name)
    }

    fn new_org(&mut self, name: &str) -> Result<usize, AbmSimError> {
        let number = self.orgs.len() + 1;
        let domain: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        let domain = if domain.is_empty() {
            format!("org{number}")
        } else {
            domain
        };
        self.orgs.push(Org {
            name: name.to_owned(),
            org_id: format!("{}", 1_000_000 + number * 7919),
            email: format!("it@{domain}.example"),
            phone: format!("+1 408 555 {:04}", 100 + number),
            address: format!("{number} Infinite Loop, Cupertino CA 95014, US"),
            consumer_key: format!("CK_{}", random_hex(48)?),
            consumer_secret: format!("CS_{}", random_hex(40)?),
            terms_signed: true,
        });
        Ok(self.orgs.len() - 1)
    }

    pub(crate) fn add_server(
        &mut self,
        spec: &ServerSpec,
        token_lifetime: Duration,
    ) -> Result<ServerId, AbmSimError> {
        let org = self.org_for(&spec.org)?;
        let index = self.servers.len();
        let access_token = format!("AT_{}", random_string(ALPHANUMERIC, 40)?);
        let now = self.now();
        self.servers.push(Server {
            name: spec.name.clone(),
            uuid: uuid::Uuid::new_v4().to_string().to_uppercase(),
            admin_id: format!(
                "admin@{}",
                self.orgs[org].email.split('@').nth(1).unwrap_or("example")
            ),
            org,
            access_token: access_token.clone(),
            access_secret: format!("AS_{}", random_hex(40)?),
            token_expiry: whole_seconds(now + token_lifetime),
            revoked: false,
            access_denied: false,
            devices: BTreeSet::new(),
            events: VecDeque::new(),
            events_base: 0,
            profiles: HashMap::new(),
        });
        self.tokens.insert(access_token, index);
        Ok(ServerId(index))
    }

    pub(crate) fn server_index(&self, id: ServerId) -> Result<usize, AbmSimError> {
        if id.0 < self.servers.len() {
            Ok(id.0)
        } else {
            Err(AbmSimError::UnknownServer(id.to_string()))
        }
    }

    /// A server by index, uuid or name (the control API's way of naming one).
    pub(crate) fn find_server(&self, name: &str) -> Result<ServerId, AbmSimError> {
        if let Ok(i) = name.parse::<usize>() {
            return self.server_index(ServerId(i)).map(ServerId);
        }
        self.servers
            .iter()
            .position(|s| s.uuid.eq_ignore_ascii_case(name) || s.name == name)
            .map(ServerId)
            .ok_or_else(|| AbmSimError::UnknownServer(name.to_owned()))
    }

    pub(crate) fn server_infos(&self) -> Vec<ServerInfo> {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| ServerInfo {
                id: ServerId(i),
                name: s.name.clone(),
                uuid: s.uuid.clone(),
                org_name: self.orgs[s.org].name.clone(),
                consumer_key: self.orgs[s.org].consumer_key.clone(),
                devices: s.devices.len(),
                profiles: s.profiles.len(),
            })
            .collect()
    }

    pub(crate) fn credentials(&self, id: ServerId) -> Result<OAuthCredentials, AbmSimError> {
        let s = &self.servers[self.server_index(id)?];
        let org = &self.orgs[s.org];
        Ok(OAuthCredentials {
            consumer_key: org.consumer_key.clone(),
            consumer_secret: org.consumer_secret.clone(),
            access_token: s.access_token.clone(),
            access_secret: s.access_secret.clone(),
            access_token_expiry: s.token_expiry,
        })
    }

    /// What downloading a new server token in ABM does: a new access token and secret
    /// (the old token is refused from now on), optionally under a new organisation
    /// (new consumer key).
    pub(crate) fn rotate_token(
        &mut self,
        id: ServerId,
        new_org: bool,
        token_lifetime: Duration,
    ) -> Result<OAuthCredentials, AbmSimError> {
        let index = self.server_index(id)?;
        if new_org {
            let name = format!("{} (new account)", self.orgs[self.servers[index].org].name);
            let org = self.new_org(&name)?;
            self.servers[index].org = org;
        }
        let access_token = format!("AT_{}", random_string(ALPHANUMERIC, 40)?);
        let access_secret = format!("AS_{}", random_hex(40)?);
        let now = self.now();
        let server = &mut self.servers[index];
        self.tokens.remove(&server.access_token);
        server.access_token = access_token.clone();
        server.access_secret = access_secret;
        server.token_expiry = whole_seconds(now + token_lifetime);
        server.revoked = false;
        self.tokens.insert(access_token, index);
        self.credentials(id)
    }

    pub(crate) fn revoke_token(&mut self, id: ServerId) -> Result<(), AbmSimError> {
        let index = self.server_index(id)?;
        self.servers[index].revoked = true;
        self.sessions.retain(|_, s| s.server != index);
        Ok(())
    }

    pub(crate) fn invalidate_sessions(&mut self, id: ServerId) -> Result<usize, AbmSimError> {
        let index = self.server_index(id)?;
        let mut n = 0;
        for session in self.sessions.values_mut().filter(|s| s.server == index) {
            session.forbidden = true;
            n += 1;
        }
        Ok(n)
    }

    pub(crate) fn set_terms_signed(
        &mut self,
        id: ServerId,
        signed: bool,
    ) -> Result<(), AbmSimError> {
        let index = self.server_index(id)?;
        let org = self.servers[index].org;
        self.orgs[org].terms_signed = signed;
        Ok(())
    }

    pub(crate) fn set_access_denied(
        &mut self,
        id: ServerId,
        denied: bool,
    ) -> Result<(), AbmSimError> {
        let index = self.server_index(id)?;
        self.servers[index].access_denied = denied;
        Ok(())
    }

    // Devices.

    fn generate_device(&mut self, now: SystemTime, assigned_by: &str) -> AbmDevice {
        // (family, model, description stem, colours), roughly an enterprise fleet's mix.
        const IPHONES: &[(&str, &str, &[&str])] = &[
            ("iPhone 15", "IPHONE 15", &["BLACK", "BLUE", "PINK"]),
            (
                "iPhone 15 Pro",
                "IPHONE 15 PRO",
                &["BLACK TITANIUM", "NATURAL TITANIUM"],
            ),
            ("iPhone 14", "IPHONE 14", &["MIDNIGHT", "STARLIGHT"]),
            (
                "iPhone SE (3rd generation)",
                "IPHONE SE",
                &["MIDNIGHT", "RED"],
            ),
        ];
        const IPADS: &[(&str, &str, &[&str])] = &[
            ("iPad (10th generation)", "IPAD WI-FI", &["SILVER", "BLUE"]),
            (
                "iPad Air (5th generation)",
                "IPAD AIR WI-FI",
                &["SPACE GRAY", "STARLIGHT"],
            ),
            (
                "iPad Pro (11-inch) (4th generation)",
                "IPAD PRO 11 WI-FI",
                &["SPACE GRAY", "SILVER"],
            ),
        ];
        const MACS: &[(&str, &str, &[&str])] = &[
            (
                "MacBook Air (13-inch, M2, 2022)",
                "MBA 13.6 M2 8C CPU/8C GPU/8GB/256GB",
                &["MIDNIGHT", "SILVER"],
            ),
            (
                "MacBook Pro (14-inch, M3, 2023)",
                "MBP 14 M3 8C CPU/10C GPU/16GB/512GB",
                &["SPACE GRAY", "SILVER"],
            ),
            (
                "Mac mini (2023)",
                "MAC MINI M2 8C CPU/10C GPU/8GB/256GB",
                &["SILVER"],
            ),
        ];
        const TVS: &[(&str, &str, &[&str])] = &[(
            "Apple TV 4K (3rd generation)",
            "APPLE TV 4K WI-FI",
            &["BLACK"],
        )];
        const CAPACITIES: &[&str] = &["64GB", "128GB", "256GB"];

        let roll = self.rng.below(100);
        let (family, table) = match roll {
            0..=44 => (DeviceFamily::IPhone, IPHONES),
            45..=69 => (DeviceFamily::IPad, IPADS),
            70..=94 => (DeviceFamily::Mac, MACS),
            _ => (DeviceFamily::AppleTv, TVS),
        };
        let (model, stem, colours) = table[self.rng.below(table.len())];
        let color = colours[self.rng.below(colours.len())];
        let description = match family {
            DeviceFamily::Mac => format!("{stem}-USA"),
            _ => format!(
                "{stem} {color} {}-USA",
                CAPACITIES[self.rng.below(CAPACITIES.len())]
            ),
        };
        let asset_tag =
            (self.rng.below(5) == 0).then(|| format!("AT-{:06}", self.rng.below(1_000_000)));
        let serial = loop {
            let candidate: String = (0..12)
                .map(|_| char::from(ALPHANUMERIC[self.rng.below(ALPHANUMERIC.len())]))
                .collect();
            if !self.devices.contains_key(&candidate) {
                break candidate;
            }
        };
        AbmDevice {
            serial_number: serial,
            model: model.to_owned(),
            description,
            color: color.to_owned(),
            asset_tag,
            os: family.os().to_owned(),
            device_family: family.as_str().to_owned(),
            profile_status: ProfileStatus::Empty,
            profile_uuid: None,
            profile_assign_time: None,
            profile_push_time: None,
            device_assigned_date: now,
            device_assigned_by: assigned_by.to_owned(),
        }
    }

    pub(crate) fn add_devices(
        &mut self,
        id: ServerId,
        n: usize,
    ) -> Result<Vec<String>, AbmSimError> {
        let index = self.server_index(id)?;
        let now = self.now();
        self.settle(now);
        let assigned_by = self.orgs[self.servers[index].org].email.clone();
        let mut serials = Vec::with_capacity(n);
        for _ in 0..n {
            let device = Arc::new(self.generate_device(now, &assigned_by));
            let serial = device.serial_number.clone();
            self.servers[index].devices.insert(serial.clone());
            self.devices.insert(
                serial.clone(),
                DeviceEntry {
                    server: Some(index),
                    cooldown_until: None,
                    data: device.clone(),
                },
            );
            self.push_event(index, &serial, OpType::Added, now, device, now);
            serials.push(serial);
        }
        Ok(serials)
    }

    pub(crate) fn device_view(&self, serial: &str) -> Option<DeviceView> {
        let entry = self.devices.get(serial)?;
        Some(DeviceView {
            server: entry.server.map(ServerId),
            cooldown_until: entry.cooldown_until,
            device: (*entry.data).clone(),
        })
    }

    /// Applies `change` to a device's record; logs `modified` on its server.
    fn update_device(
        &mut self,
        serial: &str,
        now: SystemTime,
        change: impl FnOnce(&mut AbmDevice),
    ) -> Result<(), AbmSimError> {
        let entry = self
            .devices
            .get_mut(serial)
            .ok_or_else(|| AbmSimError::UnknownDevice(serial.to_owned()))?;
        change(Arc::make_mut(&mut entry.data));
        if let Some(server) = entry.server {
            let data = entry.data.clone();
            self.push_event(server, serial, OpType::Modified, now, data, now);
        }
        Ok(())
    }

    pub(crate) fn modify_device(
        &mut self,
        serial: &str,
        change: &DeviceChange,
    ) -> Result<(), AbmSimError> {
        let now = self.now();
        self.settle(now);
        self.update_device(serial, now, |d| {
            let set = |field: &mut String, value: &Option<String>| {
                if let Some(v) = value {
                    field.clone_from(v);
                }
            };
            set(&mut d.model, &change.model);
            set(&mut d.description, &change.description);
            set(&mut d.color, &change.color);
            set(&mut d.os, &change.os);
            set(&mut d.device_family, &change.device_family);
            if let Some(tag) = &change.asset_tag {
                d.asset_tag = (!tag.is_empty()).then(|| tag.clone());
            }
        })
    }

    /// Releases a device from its server (`deleted` there); it stays known to ABM.
    pub(crate) fn delete_device(&mut self, serial: &str) -> Result<(), AbmSimError> {
        let now = self.now();
        self.settle(now);
        self.detach(serial, now)?;
        Ok(())
    }

    fn detach(&mut self, serial: &str, now: SystemTime) -> Result<Option<usize>, AbmSimError> {
        let entry = self
            .devices
            .get_mut(serial)
            .ok_or_else(|| AbmSimError::UnknownDevice(serial.to_owned()))?;
        let Some(server) = entry.server.take() else {
            return Ok(None);
        };
        let data = entry.data.clone();
        self.servers[server].devices.remove(serial);
        self.push_event(server, serial, OpType::Deleted, now, data, now);
        Ok(Some(server))
    }

    /// Moves a device to another MDM server: `deleted` on the old one, `modified` with
    /// profile_status `removed` on the new one (how ABM reports a reassignment).
    pub(crate) fn move_device(&mut self, serial: &str, to: ServerId) -> Result<(), AbmSimError> {
        let target = self.server_index(to)?;
        let now = self.now();
        self.settle(now);
        // Moving a device to the server it is on is reported like any reassignment.
        let previous = self.detach(serial, now)?;
        let assigned_by = self.orgs[self.servers[target].org].email.clone();
        let entry = self
            .devices
            .get_mut(serial)
            .ok_or_else(|| AbmSimError::UnknownDevice(serial.to_owned()))?;
        let d = Arc::make_mut(&mut entry.data);
        d.profile_status = ProfileStatus::Removed;
        d.profile_uuid = None;
        d.profile_assign_time = None;
        d.profile_push_time = None;
        d.device_assigned_date = now;
        d.device_assigned_by = assigned_by;
        entry.server = Some(target);
        let data = entry.data.clone();
        self.servers[target].devices.insert(serial.to_owned());
        let op = if previous.is_some() {
            OpType::Modified
        } else {
            OpType::Added
        };
        self.push_event(target, serial, op, now, data, now);
        Ok(())
    }

    pub(crate) fn set_cooldown(
        &mut self,
        serial: &str,
        duration: Duration,
    ) -> Result<SystemTime, AbmSimError> {
        let now = self.now();
        self.settle(now);
        let entry = self
            .devices
            .get_mut(serial)
            .ok_or_else(|| AbmSimError::UnknownDevice(serial.to_owned()))?;
        let until = now + duration;
        entry.cooldown_until = Some(until);
        self.cooldowns.insert((until, serial.to_owned()));
        Ok(until)
    }

    fn visible(&self, serial: &str, now: SystemTime) -> bool {
        self.devices
            .get(serial)
            .is_none_or(|e| e.cooldown_until.is_none_or(|until| until <= now))
    }

    // Faults and scripts.

    pub(crate) fn inject_fault(&mut self, fault: Fault, count: usize, endpoint: Option<Endpoint>) {
        if count > 0 {
            self.faults.push(FaultRule {
                fault,
                endpoint,
                remaining: count,
            });
        }
    }

    pub(crate) fn clear_faults(&mut self) {
        self.faults.clear();
        self.scripted.clear();
        self.delay = Duration::ZERO;
    }

    /// The fault to answer `endpoint` with, if one is queued for it (first match wins).
    pub(crate) fn take_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|r| r.endpoint.is_none_or(|e| e == endpoint))?;
        let rule = &mut self.faults[i];
        rule.remaining -= 1;
        let fault = rule.fault;
        if rule.remaining == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }

    pub(crate) fn script_outcome(
        &mut self,
        serial: &str,
        outcome: AssignOutcome,
        times: u32,
        retry_after: Duration,
    ) {
        if times == 0 {
            return;
        }
        self.scripted
            .entry(serial.to_owned())
            .or_default()
            .push_back(Scripted {
                outcome,
                remaining: times,
                retry_after,
            });
    }

    fn take_scripted(&mut self, serial: &str) -> Option<(AssignOutcome, Duration)> {
        let queue = self.scripted.get_mut(serial)?;
        let first = queue.front_mut()?;
        let result = (first.outcome, first.retry_after);
        first.remaining -= 1;
        if first.remaining == 0 {
            queue.pop_front();
        }
        if queue.is_empty() {
            self.scripted.remove(serial);
        }
        Some(result)
    }

    // Records.

    pub(crate) fn record(&mut self, record: RequestRecord) {
        if let Some(endpoint) = record.endpoint {
            *self.counters.requests.entry(endpoint).or_insert(0) += 1;
        }
        if self.log.len() == REQUEST_LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(record);
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.log.iter().cloned().collect()
    }

    pub(crate) fn clear_requests(&mut self) {
        self.log.clear();
    }

    // What the API endpoints do.

    /// One fetch page: devices of `server` after `after` in serial order, skipping those
    /// in cool-down.
    pub(crate) fn fetch_page(
        &self,
        server: usize,
        after: Option<&str>,
        limit: usize,
        now: SystemTime,
    ) -> Page {
        let s = &self.servers[server];
        let lower = match after {
            Some(serial) => Bound::Excluded(serial),
            None => Bound::Unbounded,
        };
        let mut devices = Vec::with_capacity(limit.min(s.devices.len()));
        let mut more_to_follow = false;
        for serial in s.devices.range::<str, _>((lower, Bound::Unbounded)) {
            let Some(entry) = self.devices.get(serial.as_str()) else {
                continue;
            };
            if entry.cooldown_until.is_some_and(|until| until > now) {
                continue;
            }
            if devices.len() == limit {
                more_to_follow = true;
                break;
            }
            devices.push((entry.data.clone(), None));
        }
        Page {
            devices,
            more_to_follow,
        }
    }

    /// One sync page: the events of `server` from sequence number `from`, skipping
    /// those of devices in cool-down (a cursor that passes them while the device is
    /// hidden never sees them). Returns the page and the position after it.
    pub(crate) fn sync_page(
        &self,
        server: usize,
        from: u64,
        limit: usize,
        now: SystemTime,
    ) -> (Page, u64) {
        let s = &self.servers[server];
        let start = from.max(s.events_base);
        let skip = usize::try_from(start - s.events_base).unwrap_or(usize::MAX);
        let mut devices = Vec::new();
        let mut position = s.next_seq();
        let mut more_to_follow = false;
        for (offset, event) in s.events.iter().enumerate().skip(skip) {
            if !self.visible(&event.serial, now) {
                continue;
            }
            if devices.len() == limit {
                more_to_follow = true;
                position = s.events_base + offset as u64;
                break;
            }
            devices.push((event.device.clone(), Some((event.op, event.date))));
        }
        (
            Page {
                devices,
                more_to_follow,
            },
            position,
        )
    }

    /// The records of `serials` that are assigned to `server` (`None`: not accessible).
    pub(crate) fn device_details(
        &self,
        server: usize,
        serials: &[String],
    ) -> Vec<(String, Option<Arc<AbmDevice>>)> {
        serials
            .iter()
            .map(|serial| {
                let found = self
                    .devices
                    .get(serial)
                    .filter(|e| e.server == Some(server))
                    .map(|e| e.data.clone());
                (serial.clone(), found)
            })
            .collect()
    }

    pub(crate) fn define_profile(
        &mut self,
        server: usize,
        mut profile: Map<String, Value>,
    ) -> Result<String, AbmSimError> {
        profile.remove("devices");
        profile.remove("profile_uuid");
        let uuid = random_hex(32)?;
        self.servers[server].profiles.insert(uuid.clone(), profile);
        Ok(uuid)
    }

    pub(crate) fn profile_json(&self, server: usize, uuid: &str) -> Option<Map<String, Value>> {
        let mut profile = self.servers[server].profiles.get(uuid)?.clone();
        profile.insert("profile_uuid".into(), uuid.into());
        Some(profile)
    }

    pub(crate) fn assign(
        &mut self,
        server: usize,
        profile_uuid: &str,
        serials: &[String],
        protocol_version: u32,
    ) -> AssignResult {
        let now = self.now();
        let mut devices = Map::new();
        let mut retry_after: Option<Duration> = None;
        for serial in serials {
            let status = match self.take_scripted(serial) {
                // Per-device throttling arrived with protocol version 9; older
                // clients are told the assignment failed.
                Some((AssignOutcome::Throttled, _)) if protocol_version < 9 => "FAILED",
                Some((AssignOutcome::Throttled, after)) => {
                    retry_after = Some(retry_after.map_or(after, |r| r.max(after)));
                    "THROTTLED"
                }
                Some((outcome, _)) => outcome.as_str(),
                None if self
                    .devices
                    .get(serial)
                    .is_some_and(|e| e.server == Some(server)) =>
                {
                    let uuid = profile_uuid.to_owned();
                    let result = self.update_device(serial, now, |d| {
                        d.profile_status = ProfileStatus::Assigned;
                        d.profile_uuid = Some(uuid);
                        d.profile_assign_time = Some(now);
                        d.profile_push_time = None;
                    });
                    if result.is_ok() {
                        "SUCCESS"
                    } else {
                        "NOT_ACCESSIBLE"
                    }
                }
                None => "NOT_ACCESSIBLE",
            };
            devices.insert(serial.clone(), status.into());
        }
        AssignResult {
            devices,
            retry_after,
        }
    }

    pub(crate) fn remove_profile(
        &mut self,
        server: usize,
        serials: &[String],
    ) -> Map<String, Value> {
        let now = self.now();
        let mut out = Map::new();
        for serial in serials {
            let on_server = self
                .devices
                .get(serial)
                .is_some_and(|e| e.server == Some(server));
            let status = if on_server
                && self
                    .update_device(serial, now, |d| {
                        d.profile_status = ProfileStatus::Removed;
                        d.profile_uuid = None;
                        d.profile_assign_time = None;
                        d.profile_push_time = None;
                    })
                    .is_ok()
            {
                "SUCCESS"
            } else {
                "NOT_ACCESSIBLE"
            };
            out.insert(serial.clone(), status.into());
        }
        out
    }

    /// Disowning removes the device from ABM for good: `deleted`, then forgotten.
    pub(crate) fn disown(&mut self, server: usize, serials: &[String]) -> Map<String, Value> {
        let now = self.now();
        let mut out = Map::new();
        for serial in serials {
            let on_server = self
                .devices
                .get(serial)
                .is_some_and(|e| e.server == Some(server));
            let status = if on_server && self.detach(serial, now).is_ok() {
                self.devices.remove(serial);
                "SUCCESS"
            } else {
                "NOT_ACCESSIBLE"
            };
            out.insert(serial.clone(), status.into());
        }
        out
    }

    /// Setup Assistant's question to ABM: which profile does this device get?
    pub(crate) fn activation(&mut self, serial: &str) -> Option<Value> {
        let now = self.now();
        self.settle(now);
        let entry = self.devices.get(serial)?;
        let server = entry.server?;
        if !matches!(
            entry.data.profile_status,
            ProfileStatus::Assigned | ProfileStatus::Pushed
        ) {
            return None;
        }
        let uuid = entry.data.profile_uuid.clone()?;
        let profile = self.profile_json(server, &uuid)?;
        self.update_device(serial, now, |d| {
            d.profile_status = ProfileStatus::Pushed;
            d.profile_push_time = Some(now);
        })
        .ok()?;
        Some(Value::Object(profile))
    }

    pub(crate) fn largest_batch(&mut self, n: usize) {
        self.counters.largest_assign_batch = self.counters.largest_assign_batch.max(n);
    }

    pub(crate) fn server_profiles(&self, server: usize) -> BTreeMap<String, Map<String, Value>> {
        self.servers[server]
            .profiles
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_server() -> (State, ServerId) {
        let mut state = State::new(7);
        let id = state
            .add_server(&ServerSpec::new("S", "Org"), Duration::from_secs(3600))
            .unwrap();
        (state, id)
    }

    #[test]
    fn generated_devices_are_unique_and_consistent() {
        let (mut state, id) = state_with_server();
        let serials = state.add_devices(id, 2000).unwrap();
        let unique: BTreeSet<_> = serials.iter().collect();
        assert_eq!(unique.len(), 2000);
        let mut families = BTreeSet::new();
        for serial in &serials {
            assert_eq!(serial.len(), 12);
            assert!(serial
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
            let d = state.device_view(serial).unwrap().device;
            let expected_os = match d.device_family.as_str() {
                "iPhone" | "iPad" => "iOS",
                "Mac" => "OSX",
                "AppleTV" => "tvOS",
                other => panic!("unexpected family {other}"),
            };
            assert_eq!(d.os, expected_os);
            assert_eq!(d.profile_status, ProfileStatus::Empty);
            families.insert(d.device_family.clone());
        }
        assert_eq!(
            families.len(),
            4,
            "all four families appear in 2000 devices"
        );
    }

    #[test]
    fn fetch_pages_in_serial_order_and_skip_cooldown() {
        let (mut state, id) = state_with_server();
        let mut serials = state.add_devices(id, 25).unwrap();
        serials.sort();
        state
            .set_cooldown(&serials[3], Duration::from_secs(60))
            .unwrap();
        let now = state.now();
        let first = state.fetch_page(0, None, 10, now);
        assert!(first.more_to_follow);
        let got: Vec<_> = first
            .devices
            .iter()
            .map(|(d, _)| d.serial_number.clone())
            .collect();
        let expected: Vec<_> = serials
            .iter()
            .filter(|s| *s != &serials[3])
            .cloned()
            .collect();
        assert_eq!(got, expected[..10].to_vec());
        let last = state.fetch_page(0, Some(&got[9]), 100, now);
        assert!(!last.more_to_follow);
        let rest: Vec<_> = last
            .devices
            .iter()
            .map(|(d, _)| d.serial_number.clone())
            .collect();
        assert_eq!(rest, expected[10..].to_vec());

        // The cool-down ends: the device reappears as modified.
        let position = state.servers[0].next_seq();
        state.advance(Duration::from_secs(61));
        let (page, _) = state.sync_page(0, position, 100, state.now());
        assert_eq!(page.devices.len(), 1);
        assert_eq!(page.devices[0].0.serial_number, serials[3]);
        assert_eq!(page.devices[0].1.unwrap().0, OpType::Modified);
    }

    #[test]
    fn scripted_outcomes_are_consumed_in_order() {
        let (mut state, id) = state_with_server();
        let serial = state.add_devices(id, 1).unwrap().remove(0);
        state.script_outcome(
            &serial,
            AssignOutcome::Throttled,
            1,
            Duration::from_secs(90),
        );
        state.script_outcome(&serial, AssignOutcome::Failed, 1, Duration::ZERO);
        let serials = vec![serial.clone()];
        let r = state.assign(0, "P", &serials, 10);
        assert_eq!(r.devices[&serial], "THROTTLED");
        assert_eq!(r.retry_after, Some(Duration::from_secs(90)));
        assert_eq!(
            state.assign(0, "P", &serials, 10).devices[&serial],
            "FAILED"
        );
        assert_eq!(
            state.assign(0, "P", &serials, 10).devices[&serial],
            "SUCCESS"
        );
        state.script_outcome(&serial, AssignOutcome::Throttled, 1, Duration::from_secs(5));
        assert_eq!(state.assign(0, "P", &serials, 8).devices[&serial], "FAILED");
        let d = state.device_view(&serial).unwrap().device;
        assert_eq!(d.profile_status, ProfileStatus::Assigned);
        assert_eq!(d.profile_uuid.as_deref(), Some("P"));
    }
}
