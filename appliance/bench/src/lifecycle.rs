//! Phase 6 (`--lifecycle-devices N`): the pre-enrollment CSV import and the device list at
//! scale.
//!
//! A daemon of its own (fresh data directory, so that its memory reflects only this phase)
//! gets N generated devices through the admin API as an operator would bring them in: CSV
//! files of at most 50,000 rows, each `POST /api/v1/preenroll/import` timed end to end (request
//! sent to answer read), after a dry run of the first file. The daemon's CPU time and peak
//! memory (`VmHWM`, reset just before the call) are read around each call.
//!
//! A directory of N devices that are all `expected` is not what the list faces in service, so
//! the daemon is then stopped and part of the devices get enrollments written straight into its
//! database (through the store's own ports, as phase 3 does), in the states that make the
//! statuses `enrolled`, `offline`, `awaiting_configuration`, `enrolling`,
//! `partially_enrolled` and `unenrolled`. The restart loads the directory from the store.
//!
//! Then, with one client sending one request at a time (the figure is the server's latency,
//! not a load test), `GET /api/v1/devices`:
//!
//! 1. **Walk**: one query (every device, sorted by name) followed page by page through `next`
//!    to its end; the pages must hold `total` devices, none twice, in order. Cursors from a
//!    quarter, half, three quarters of the way and the last page are kept for the mix.
//! 2. **Mix**: rounds of first pages sorted by every key in both orders, the two pages after
//!    each (through `next`), each status that matches devices, a search that matches a few
//!    percent, a search combined with a status, and the kept deep cursors, until at least the
//!    requested number of requests were made. Every page is checked: at most 50 rows, sorted as
//!    asked (continuing the previous page), every row passing the filter, `total` equal to
//!    what the generated data says, and a deep page equal to what the walk saw there.
//! 3. **Export**: `format=csv` of the whole list once, timed, with its size and peak memory.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mdm_service::lifecycle::status::DeviceStatus;
use mdm_service::ports::{
    AuthenticateRecord, DeviceFacts, EnrollmentSource, EnrollmentStore, PushRecord, PushTarget,
    Timestamp, TokenUpdateRecord,
};
use mdm_store::{RedbStore, StoreOptions};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::admin::{Admin, TOPIC};
use crate::daemon::{self, Daemon, PushService};
use crate::error::BenchError;
use crate::histogram::Histogram;
use crate::procfs::{self, ticks_to_duration};
use crate::report::{
    ExportFigures, ImportCallFigures, LifecycleFigures, ListFigures, ListKindFigures, Percentiles,
    WalkFigures,
};
use crate::{progress, thread_split, tls};

/// Rows per CSV file unless `--lifecycle-file-rows` says otherwise: the size the import's
/// target is set for.
pub const ROWS_PER_FILE: usize = 50_000;
/// The import's own limit of rows per file.
pub const MAX_FILE_ROWS: usize = mdm_service::lifecycle::csv::MAX_ROWS;
/// Device list requests in the mix unless `--lifecycle-requests` says otherwise.
pub const MIN_REQUESTS: usize = 500;
/// Rows per page, the list's default and what the target is set for.
pub const PAGE: usize = 50;
/// Serial numbers carry the device's number in five places of [`SERIAL_ALPHABET`], which is
/// what keeps them unique.
pub const MAX_DEVICES: usize = 28 * 28 * 28 * 28 * 28;
/// Letters and digits of generated serial numbers (Apple's avoid vowels and look-alikes).
const SERIAL_ALPHABET: &[u8; 28] = b"0123456789CDFGHJKLMNPQRTVWXY";
/// The generator's seed: every run generates the same devices.
pub const SEED: u64 = 0x6d64_6d2d_6c69_6665;
/// The search term of the mix: a family name about one device in 33 carries.
pub const SEARCH: &str = "nakamura";
/// How long one import or export may take: far beyond the target, but bounded.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Concurrent seeding writers: enough for the store's group commit to fill its batches.
const WRITERS: usize = 256;
/// Pages followed after each first page of the mix.
const NEXT_PAGES: usize = 2;
/// Problems shown in full; more are counted.
const MAX_PROBLEMS: usize = 20;
/// Bytes per MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// The size of the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Devices generated and imported.
    pub devices: usize,
    /// Rows per CSV file.
    pub rows_per_file: usize,
    /// Device list requests in the mix, at least.
    pub min_requests: usize,
}

/// A small deterministic generator (SplitMix64): the same seed makes the same devices on every
/// machine, so runs compare.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0); the modulo bias is below 2^-40 for the sizes used.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`, which must not be empty.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// One of `items` with the given weights, which must not all be 0.
    fn weighted<'a, T>(&mut self, items: &'a [(T, u64)]) -> &'a T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut at = self.below(total);
        for (item, w) in items {
            if at < *w {
                return item;
            }
            at -= w;
        }
        &items[items.len() - 1].0
    }
}

/// The state a generated device is given before the device list is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Pre-enrolled only.
    Expected,
    /// Enrolled, heard from within two days.
    Enrolled,
    /// Enrolled, pushed, silent for four days or more.
    Offline,
    /// Enrolled in Setup Assistant and held there.
    AwaitingConfiguration,
    /// Authenticate a few minutes ago, no TokenUpdate yet.
    Enrolling,
    /// Authenticate hours ago, never a TokenUpdate.
    PartiallyEnrolled,
    /// Enrolled once, then checked out.
    Unenrolled,
}

/// Shares per thousand devices: most enrolled, a third still expected, a few in each state
/// that needs an admin.
const KINDS: [(Kind, u64); 7] = [
    (Kind::Expected, 350),
    (Kind::Enrolled, 450),
    (Kind::Offline, 60),
    (Kind::AwaitingConfiguration, 30),
    (Kind::Enrolling, 20),
    (Kind::PartiallyEnrolled, 40),
    (Kind::Unenrolled, 50),
];

impl Kind {
    /// The status the daemon must derive for a device of this kind.
    pub fn status(self) -> DeviceStatus {
        match self {
            Kind::Expected => DeviceStatus::Expected,
            Kind::Enrolled => DeviceStatus::Enrolled,
            Kind::Offline => DeviceStatus::Offline,
            Kind::AwaitingConfiguration => DeviceStatus::AwaitingConfiguration,
            Kind::Enrolling => DeviceStatus::Enrolling,
            Kind::PartiallyEnrolled => DeviceStatus::PartiallyEnrolled,
            Kind::Unenrolled => DeviceStatus::Unenrolled,
        }
    }

    /// Whether devices of this kind get an enrollment.
    pub fn enrolls(self) -> bool {
        self != Kind::Expected
    }
}

struct PlatformSpec {
    /// As the CSV file spells it (canonical; [`PLATFORM_VARIANTS`] has other spellings).
    csv: &'static str,
    weight: u64,
    /// The word in device names (`Ada's iPhone`).
    device: &'static str,
    /// (model name, product type) its enrollments report.
    models: &'static [(&'static str, &'static str)],
}

const PLATFORMS: [PlatformSpec; 5] = [
    PlatformSpec {
        csv: "iOS",
        weight: 55,
        device: "iPhone",
        models: &[
            ("iPhone 14", "iPhone14,7"),
            ("iPhone 15", "iPhone15,4"),
            ("iPhone 15 Pro", "iPhone16,1"),
            ("iPhone 16 Pro Max", "iPhone17,2"),
            ("iPhone SE (3rd generation)", "iPhone14,6"),
        ],
    },
    PlatformSpec {
        csv: "iPadOS",
        weight: 20,
        device: "iPad",
        models: &[
            ("iPad (10th generation)", "iPad13,18"),
            ("iPad Air (5th generation)", "iPad13,16"),
            ("iPad Pro (12.9-inch) (6th generation)", "iPad14,5"),
            ("iPad mini (6th generation)", "iPad14,1"),
        ],
    },
    PlatformSpec {
        csv: "macOS",
        weight: 20,
        device: "MacBook",
        models: &[
            ("MacBook Air (M2, 2022)", "Mac14,2"),
            ("MacBook Pro (14-inch, 2023)", "Mac14,9"),
            ("Mac mini (2023)", "Mac14,3"),
            ("iMac (24-inch, 2023)", "Mac15,4"),
        ],
    },
    PlatformSpec {
        csv: "tvOS",
        weight: 4,
        device: "Apple TV",
        models: &[("Apple TV 4K (3rd generation)", "AppleTV14,1")],
    },
    PlatformSpec {
        csv: "visionOS",
        weight: 1,
        device: "Vision Pro",
        models: &[("Apple Vision Pro", "RealityDevice14,1")],
    },
];

/// Other spellings admins write, which the import accepts (one row in twenty uses one).
const PLATFORM_VARIANTS: [&[&str]; 5] = [
    &["ios", "iPhone", "IOS"],
    &["ipados", "iPad"],
    &["macos", "Mac", "OS X"],
    &["tvos", "Apple TV"],
    &["visionos"],
];

/// (as written, the ASCII form used in email addresses).
const FIRST_NAMES: [(&str, &str); 40] = [
    ("Ada", "ada"),
    ("Aisha", "aisha"),
    ("Alan", "alan"),
    ("Amara", "amara"),
    ("Anaïs", "anais"),
    ("Björn", "bjorn"),
    ("Camila", "camila"),
    ("Chloé", "chloe"),
    ("Diego", "diego"),
    ("Dmitri", "dmitri"),
    ("Elif", "elif"),
    ("Emma", "emma"),
    ("Fatima", "fatima"),
    ("Freya", "freya"),
    ("Grace", "grace"),
    ("Hiroshi", "hiroshi"),
    ("Ingrid", "ingrid"),
    ("Jonas", "jonas"),
    ("José", "jose"),
    ("Kwame", "kwame"),
    ("Leila", "leila"),
    ("Liam", "liam"),
    ("Lucas", "lucas"),
    ("Łukasz", "lukasz"),
    ("Mateo", "mateo"),
    ("Mei", "mei"),
    ("Nadia", "nadia"),
    ("Noah", "noah"),
    ("Olivia", "olivia"),
    ("Oluwaseun", "oluwaseun"),
    ("Omar", "omar"),
    ("Priya", "priya"),
    ("Rahul", "rahul"),
    ("Siobhán", "siobhan"),
    ("Sofia", "sofia"),
    ("Søren", "soren"),
    ("Tomasz", "tomasz"),
    ("Wei", "wei"),
    ("Yuki", "yuki"),
    ("Zoë", "zoe"),
];

const LAST_NAMES: [(&str, &str); 33] = [
    ("Andersen", "andersen"),
    ("Chen", "chen"),
    ("Costa", "costa"),
    ("Dubois", "dubois"),
    ("Fernández", "fernandez"),
    ("Fischer", "fischer"),
    ("García", "garcia"),
    ("Haddad", "haddad"),
    ("Hopper", "hopper"),
    ("Ivanova", "ivanova"),
    ("Kim", "kim"),
    ("Kowalski", "kowalski"),
    ("Larsen", "larsen"),
    ("Lovelace", "lovelace"),
    ("Mensah", "mensah"),
    ("Moreau", "moreau"),
    ("Müller", "mueller"),
    ("Nakamura", "nakamura"),
    ("Nguyen", "nguyen"),
    ("Novák", "novak"),
    ("O'Brien", "obrien"),
    ("Okafor", "okafor"),
    ("Patel", "patel"),
    ("Rossi", "rossi"),
    ("Schmidt", "schmidt"),
    ("Silva", "silva"),
    ("Smith", "smith"),
    ("Svensson", "svensson"),
    ("Tanaka", "tanaka"),
    ("Turing", "turing"),
    ("Van der Berg", "vanderberg"),
    ("Walsh", "walsh"),
    ("Yılmaz", "yilmaz"),
];

const WORK_DOMAINS: [&str; 4] = [
    "example.com",
    "corp.example.com",
    "eu.example.com",
    "Example.COM",
];
const HOME_DOMAINS: [&str; 3] = ["mail.example.net", "example.org", "post.example.net"];

/// One generated device: a CSV row and what the seeding gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// 12 characters of [`SERIAL_ALPHABET`], unique.
    pub serial: String,
    /// The person's name as written.
    pub name: String,
    /// The address as written (the import lower-cases the domain).
    pub email: String,
    /// As written in the file.
    pub ownership: &'static str,
    /// As written in the file.
    pub platform: &'static str,
    /// A phone number, for some.
    pub mobile: Option<String>,
    /// The device name in the file, for some.
    pub device_name: Option<String>,
    /// The state it is given.
    pub kind: Kind,
    /// The model name its enrollment reports (also for devices that never enroll, unused).
    pub model: &'static str,
    /// The product type its enrollment reports.
    pub product: &'static str,
    /// The device name its enrollment reports: the file's, else "`First`'s `device`".
    pub reported_name: String,
}

/// The enrollment id (UDID) of generated device `i`: shaped like an iPhone's, with a
/// recognisable `1CBE` marker.
pub fn udid(i: usize) -> String {
    format!("00008110-1CBE{i:012X}")
}

fn serial(i: usize, rng: &mut Rng) -> String {
    let mut s = String::with_capacity(12);
    for _ in 0..3 {
        s.push(char::from(*rng.pick(SERIAL_ALPHABET)));
    }
    let mut digits = [0u8; 5];
    let mut n = i;
    for d in digits.iter_mut().rev() {
        *d = SERIAL_ALPHABET[n % SERIAL_ALPHABET.len()];
        n /= SERIAL_ALPHABET.len();
    }
    s.extend(digits.iter().map(|b| char::from(*b)));
    for _ in 0..4 {
        s.push(char::from(*rng.pick(SERIAL_ALPHABET)));
    }
    s
}

fn mobile(rng: &mut Rng) -> String {
    let n = rng.below(10_000);
    let m = rng.below(1_000);
    match rng.below(4) {
        0 => format!("+49 151 {m:03}{n:04}"),
        1 => format!("(555) 010-{n:04}"),
        2 => format!("+1-202-555-{n:04}"),
        _ => format!("07700 900{m:03}"),
    }
}

/// Generates `n` devices (at most [`MAX_DEVICES`]) from `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<Device> {
    let mut rng = Rng::new(seed);
    let platforms: Vec<(usize, u64)> = PLATFORMS
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.weight))
        .collect();
    (0..n.min(MAX_DEVICES))
        .map(|i| {
            let (first, first_ascii) = *rng.pick(&FIRST_NAMES);
            let (last, last_ascii) = *rng.pick(&LAST_NAMES);
            let name = match rng.below(100) {
                0 => format!("{first} {last}, Jr."),
                1..=5 => format!("{first} {}. {last}", char::from(b'A' + rng.below(26) as u8)),
                _ => format!("{first} {last}"),
            };
            let ownership = *rng.weighted(&[
                ("corporate", 66),
                ("Corporate", 2),
                ("company", 2),
                ("personal", 18),
                ("BYOD", 2),
                ("selectuser", 8),
                ("Select User", 2),
            ]);
            let personal = matches!(ownership, "personal" | "BYOD");
            let email = if personal {
                format!(
                    "{first_ascii}{last_ascii}{}@{}",
                    rng.below(100),
                    rng.pick(&HOME_DOMAINS)
                )
            } else {
                format!("{first_ascii}.{last_ascii}@{}", rng.pick(&WORK_DOMAINS))
            };
            let p = *rng.weighted(&platforms);
            let spec = &PLATFORMS[p];
            let platform = if rng.chance(5) {
                *rng.pick(PLATFORM_VARIANTS[p])
            } else {
                spec.csv
            };
            let (model, product) = *rng.pick(spec.models);
            let mobile = rng.chance(40).then(|| mobile(&mut rng));
            let own = format!("{first}'s {}", spec.device);
            let device_name = match rng.below(100) {
                0..=2 => Some(format!(
                    "Lab {}, bench {}",
                    rng.below(40) + 1,
                    rng.below(12) + 1
                )),
                3..=59 if spec.csv == "tvOS" => {
                    Some(format!("Meeting Room {}", rng.below(300) + 1))
                }
                3..=59 => Some(own.clone()),
                _ => None,
            };
            let kind = *rng.weighted(&KINDS);
            Device {
                serial: serial(i, &mut rng),
                name,
                email,
                ownership,
                platform,
                mobile,
                reported_name: device_name.clone().unwrap_or(own),
                device_name,
                kind,
                model,
                product,
            }
        })
        .collect()
}

/// The header of the generated files, in the column names of the brief an admin gets.
pub const CSV_HEADER: &str = "name,email,ownership,serial number,platform,mobile,device name\r\n";

fn push_field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

/// The devices as CSV files of at most `per_file` rows (CRLF line ends, as spreadsheets write
/// them; fields quoted where they hold a comma or a quote).
pub fn csv_files(devices: &[Device], per_file: usize) -> Vec<Vec<u8>> {
    devices
        .chunks(per_file.max(1))
        .map(|chunk| {
            let mut out = String::with_capacity(CSV_HEADER.len() + chunk.len() * 112);
            out.push_str(CSV_HEADER);
            for d in chunk {
                let fields = [
                    d.name.as_str(),
                    d.email.as_str(),
                    d.ownership,
                    d.serial.as_str(),
                    d.platform,
                    d.mobile.as_deref().unwrap_or(""),
                    d.device_name.as_deref().unwrap_or(""),
                ];
                for (k, f) in fields.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    push_field(&mut out, f);
                }
                out.push_str("\r\n");
            }
            out.into_bytes()
        })
        .collect()
}

/// How many devices must be in each status once the seeded enrollments are loaded (every
/// status, zeros included, by API name).
pub fn expected_counts(devices: &[Device]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = DeviceStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for d in devices {
        *out.entry(d.kind.status().as_str().to_owned()).or_default() += 1;
    }
    out
}

/// ASCII case-insensitive substring test; `needle` is lower-case ASCII (as the list's search
/// compares).
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// Whether the list's search for `needle` matches device `i` once seeded: serial number,
/// pre-enrollment name, email and device name, and for an enrolled device its enrollment id,
/// reported device name and model.
pub fn search_matches(i: usize, d: &Device, needle: &str) -> bool {
    let hit = |s: &str| contains_ci(s, needle);
    // The import lower-cases the email's domain; for an ASCII needle that changes nothing.
    let mut fields = vec![d.serial.as_str(), d.name.as_str(), d.email.as_str()];
    fields.extend(d.device_name.as_deref());
    if fields.into_iter().any(hit) {
        return true;
    }
    d.kind.enrolls() && (hit(&udid(i)) || hit(&d.reported_name) || hit(d.model))
}

/// Writes the enrollments of the devices whose kind enrolls into the database at `db`, which
/// no process may have open. Times are relative to `now` and far from the status thresholds
/// (30 minutes to enroll, 72 hours to go offline), so statuses do not change while the list is
/// measured. Returns how many enrollments were written.
pub async fn seed(db: &Path, devices: &[Device], now: Timestamp) -> Result<usize, BenchError> {
    let store = RedbStore::open(db, StoreOptions::default())?;
    let devices: Arc<[Device]> = devices.into();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS.min(devices.len().max(1)) {
        let store = store.clone();
        let devices = Arc::clone(&devices);
        tasks.spawn(async move {
            let mut written = 0usize;
            for i in (w..devices.len()).step_by(WRITERS) {
                if write_enrollment(&store, i, &devices[i], now).await? {
                    written += 1;
                }
            }
            Ok::<usize, BenchError>(written)
        });
    }
    let mut written = 0;
    while let Some(r) = tasks.join_next().await {
        written += r??;
    }
    store.close()?;
    Ok(written)
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

async fn write_enrollment(
    store: &RedbStore,
    i: usize,
    d: &Device,
    now: Timestamp,
) -> Result<bool, BenchError> {
    if !d.kind.enrolls() {
        return Ok(false);
    }
    let mut rng = Rng::new(SEED ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    // Whole seconds between `lo` and `hi` ago.
    let mut ago = |lo: u64, hi: u64| now.minus(Duration::from_secs(lo + rng.below(hi - lo + 1)));
    let (enrolled_at, seen_at, pushed_at, checked_out_at, token_update) = match d.kind {
        Kind::Expected => return Ok(false),
        Kind::Enrolled => (
            ago(2 * DAY, 180 * DAY),
            Some(ago(MINUTE, 47 * HOUR)),
            None,
            None,
            true,
        ),
        Kind::Offline => (
            ago(10 * DAY, 180 * DAY),
            Some(ago(4 * DAY, 9 * DAY)),
            Some(ago(HOUR, 3 * DAY)),
            None,
            true,
        ),
        Kind::AwaitingConfiguration => (ago(MINUTE, 20 * MINUTE), None, None, None, true),
        Kind::Enrolling => (ago(0, 5 * MINUTE), None, None, None, false),
        Kind::PartiallyEnrolled => (ago(HOUR, 72 * HOUR), None, None, None, false),
        Kind::Unenrolled => (
            ago(30 * DAY, 365 * DAY),
            None,
            None,
            Some(ago(DAY, 25 * DAY)),
            true,
        ),
    };
    let id = udid(i);
    // Not the hash of any certificate: 64 hex digits that say what they are.
    let identity = format!("1cbe{i:060x}");
    store
        .authenticate(AuthenticateRecord {
            id: id.clone(),
            identity_sha256: identity.clone(),
            topic: Some(TOPIC.to_owned()),
            facts: DeviceFacts {
                serial_number: Some(d.serial.clone()),
                model: Some(d.product.to_owned()),
                model_name: Some(d.model.to_owned()),
                product_name: Some(d.product.to_owned()),
                os_version: Some("17.4".into()),
                build_version: Some("21E219".into()),
                device_name: Some(d.reported_name.clone()),
                imei: None,
                meid: None,
            },
            source: Some(EnrollmentSource::Link {
                link_id: "mdm-bench".into(),
            }),
            at: enrolled_at,
        })
        .await?;
    if token_update {
        store
            .token_update(TokenUpdateRecord {
                id: id.clone(),
                device_id: id.clone(),
                user_id: None,
                user_short_name: None,
                identity_sha256: identity,
                push: PushTarget {
                    token_hex: format!("1cbe{i:060x}"),
                    push_magic: uuid::Uuid::new_v4().to_string().to_uppercase(),
                    topic: TOPIC.to_owned(),
                },
                unlock_token_sealed: None,
                awaiting_configuration: d.kind == Kind::AwaitingConfiguration,
                at: enrolled_at,
            })
            .await?;
    }
    if let Some(at) = seen_at {
        store.touch(&id, at).await?;
    }
    if let Some(at) = pushed_at {
        store
            .record_pushes(vec![(id.clone(), PushRecord::Sent { at })])
            .await?;
    }
    if let Some(at) = checked_out_at {
        store.check_out(&id, at).await?;
    }
    Ok(true)
}

/// What the list is sorted on (the API's `sort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Serial number.
    Serial,
    /// Status, most in need of an admin first.
    Status,
    /// Last contact.
    LastSeen,
    /// The pre-enrollment name.
    Name,
    /// The model.
    Model,
}

impl Sort {
    /// Every key.
    pub const ALL: [Sort; 5] = [
        Sort::Serial,
        Sort::Status,
        Sort::LastSeen,
        Sort::Name,
        Sort::Model,
    ];

    /// Its place in [`Sort::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Serial => "serial",
            Sort::Status => "status",
            Sort::LastSeen => "last_seen",
            Sort::Name => "name",
            Sort::Model => "model",
        }
    }
}

/// One device list query (without its cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Statuses to keep (empty: all).
    pub statuses: Vec<DeviceStatus>,
    /// Search term, lower-case ASCII.
    pub search: Option<String>,
    /// Sort key.
    pub sort: Sort,
    /// Descending order.
    pub descending: bool,
}

impl ListQuery {
    /// Every device, sorted.
    pub fn all(sort: Sort, descending: bool) -> Self {
        ListQuery {
            statuses: Vec::new(),
            search: None,
            sort,
            descending,
        }
    }

    /// The request path, with `after` when given.
    pub fn path(&self, after: Option<&str>) -> String {
        let mut p = format!(
            "/api/v1/devices?limit={PAGE}&sort={}&order={}",
            self.sort.as_str(),
            if self.descending { "desc" } else { "asc" }
        );
        if !self.statuses.is_empty() {
            let names: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
            p.push_str("&status=");
            p.push_str(&names.join(","));
        }
        if let Some(s) = &self.search {
            p.push_str("&search=");
            p.push_str(&mdm_sim::http::percent_encode(s));
        }
        if let Some(a) = after {
            p.push_str("&after=");
            p.push_str(&mdm_sim::http::percent_encode(a));
        }
        p
    }

    /// How many generated devices the query matches.
    pub fn expected_total(&self, devices: &[Device]) -> usize {
        devices
            .iter()
            .enumerate()
            .filter(|(_, d)| self.statuses.is_empty() || self.statuses.contains(&d.kind.status()))
            .filter(|(i, d)| {
                self.search
                    .as_deref()
                    .is_none_or(|s| search_matches(*i, d, s))
            })
            .count()
    }
}

/// The fields of a list row the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Serial number (the directory key).
    pub serial: String,
    /// Status name.
    pub status: String,
    /// Pre-enrollment name.
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Device name shown.
    pub device_name: Option<String>,
    /// Enrollment id.
    pub enrollment_id: Option<String>,
    /// Last contact, milliseconds since the epoch.
    pub last_seen: Option<i64>,
}

/// A page of the list as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Its rows.
    pub items: Vec<Row>,
    /// The cursor of the next page.
    pub next: Option<String>,
    /// Matches over all pages.
    pub total: u64,
}

/// Reads a page of `GET /api/v1/devices`.
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = v["items"].as_array().ok_or("no items array")?;
    let text = |x: &Value, k: &str| x[k].as_str().map(str::to_owned);
    let mut rows = Vec::with_capacity(items.len());
    for it in items {
        let last_seen = match it["last_seen_at"].as_str() {
            None => None,
            Some(t) => Some(
                Timestamp::parse_rfc3339(t)
                    .ok_or_else(|| format!("last_seen_at {t:?} is not RFC 3339"))?
                    .0,
            ),
        };
        rows.push(Row {
            serial: text(it, "serial").ok_or("a row has no serial")?,
            status: text(it, "status").ok_or("a row has no status")?,
            name: text(it, "name"),
            email: text(it, "email"),
            model: text(it, "model"),
            device_name: text(it, "device_name"),
            enrollment_id: text(it, "enrollment_id"),
            last_seen,
        });
    }
    Ok(Page {
        items: rows,
        next: text(&v, "next"),
        total: v["total"].as_u64().ok_or("no total")?,
    })
}

/// What the list orders by before the serial number, as the daemon computes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SortVal {
    Int(i64),
    Text(String),
}

fn sort_val(sort: Sort, r: &Row) -> SortVal {
    match sort {
        Sort::Serial => SortVal::Int(0),
        Sort::Status => SortVal::Int(
            DeviceStatus::ALL
                .iter()
                .position(|s| s.as_str() == r.status)
                .map_or(-1, |p| p as i64),
        ),
        Sort::LastSeen => SortVal::Int(r.last_seen.unwrap_or(i64::MIN)),
        Sort::Name => SortVal::Text(r.name.as_deref().unwrap_or_default().to_lowercase()),
        Sort::Model => SortVal::Text(r.model.as_deref().unwrap_or_default().to_lowercase()),
    }
}

/// Whether `b` rightly follows `a` in the query's order (strictly: serial numbers break ties).
pub fn follows(q: &ListQuery, a: &Row, b: &Row) -> bool {
    let o = (sort_val(q.sort, a), &a.serial).cmp(&(sort_val(q.sort, b), &b.serial));
    if q.descending {
        o.is_gt()
    } else {
        o.is_lt()
    }
}

/// Every problem with `page` of query `q`: more than [`PAGE`] rows (or fewer before the last
/// page), rows out of order (also against `prev`, the last row of the page before), rows that
/// do not pass the filters, a `total` other than `expected_total`.
pub fn check_page(
    q: &ListQuery,
    page: &Page,
    prev: Option<&Row>,
    expected_total: usize,
) -> Vec<String> {
    let what = q.path(None);
    let mut out = Vec::new();
    if page.items.len() > PAGE || (page.next.is_some() && page.items.len() != PAGE) {
        out.push(format!(
            "{what}: a page of {} rows{}",
            page.items.len(),
            if page.next.is_some() {
                " with a next page"
            } else {
                ""
            }
        ));
    }
    if page.total != expected_total as u64 {
        out.push(format!(
            "{what}: total {} where the generated devices make {expected_total}",
            page.total
        ));
    }
    let mut last = prev;
    for r in &page.items {
        if let Some(p) = last {
            if !follows(q, p, r) {
                out.push(format!(
                    "{what}: {} comes after {} out of {} order",
                    r.serial,
                    p.serial,
                    q.sort.as_str()
                ));
            }
        }
        last = Some(r);
        if !q.statuses.is_empty() && !q.statuses.iter().any(|s| s.as_str() == r.status) {
            out.push(format!(
                "{what}: {} has status {} outside the filter",
                r.serial, r.status
            ));
        }
        if let Some(s) = &q.search {
            let fields = [
                Some(&r.serial),
                r.name.as_ref(),
                r.email.as_ref(),
                r.model.as_ref(),
                r.device_name.as_ref(),
                r.enrollment_id.as_ref(),
            ];
            if !fields.into_iter().flatten().any(|f| contains_ci(f, s)) {
                out.push(format!("{what}: {} does not contain {s:?}", r.serial));
            }
        }
    }
    out
}

/// Failed checks, the first [`MAX_PROBLEMS`] in full.
#[derive(Debug, Default)]
pub struct Problems {
    shown: Vec<String>,
    more: usize,
}

impl Problems {
    /// Adds one.
    pub fn push(&mut self, p: String) {
        if self.shown.len() < MAX_PROBLEMS {
            self.shown.push(p);
        } else {
            self.more += 1;
        }
    }

    /// Adds several.
    pub fn extend(&mut self, ps: impl IntoIterator<Item = String>) {
        for p in ps {
            self.push(p);
        }
    }

    /// Whether none was added.
    pub fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }

    /// The messages, with a last line counting those left out.
    pub fn into_vec(mut self) -> Vec<String> {
        if self.more > 0 {
            self.shown
                .push(format!("... and {} more problems", self.more));
        }
        self.shown
    }
}

/// Where the phase's daemon is and how to reach it.
pub struct Target<'a> {
    /// An admin session with a timeout of at least [`CALL_TIMEOUT`].
    pub admin: &'a Admin,
    /// The process serving it (the daemon, or this process for an embedded one).
    pub pid: u32,
    /// Its address, for the streamed export.
    pub addr: std::net::SocketAddr,
    /// The CA its TLS certificate chains to.
    pub ca_pem: &'a str,
    /// An admin token.
    pub token: &'a str,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// A count of an import answer; `u64::MAX` when it is missing, which no check accepts.
fn answer_count(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(u64::MAX)
}

/// One timed import of `body` (`rows` rows, file number `file`), checked against its answer.
fn timed_import(
    rt: &Runtime,
    target: &Target<'_>,
    file: usize,
    body: &[u8],
    rows: usize,
    dry_run: bool,
    problems: &mut Problems,
) -> Result<ImportCallFigures, BenchError> {
    let pid = target.pid;
    let tps = procfs::clock_ticks_per_second();
    let rss_before = procfs::memory(Some(pid))?.rss;
    let peak_reset = procfs::reset_peak_rss(Some(pid)).is_ok();
    let server_before = procfs::cpu_ticks(Some(pid))?.own();
    let threads_before = procfs::thread_ticks(pid)?;
    let bench_before = procfs::cpu_ticks(None)?.own();
    let query = if dry_run { "dry_run=true" } else { "" };
    // The copy the request takes is made before the clock starts.
    let sent = body.to_vec();
    let started = Instant::now();
    let answer = rt.block_on(target.admin.preenroll_import(sent, query));
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let answer = answer?;
    let server_ticks = procfs::cpu_ticks(Some(pid))?
        .own()
        .saturating_sub(server_before);
    let threads_after = procfs::thread_ticks(pid)?;
    let bench_ticks = procfs::cpu_ticks(None)?.own().saturating_sub(bench_before);
    let memory = procfs::memory(Some(pid))?;
    let seconds = |t: u64| ticks_to_duration(t, tps).as_secs_f64();

    let label = if dry_run {
        format!("dry run of file {file}")
    } else {
        format!("import of file {file}")
    };
    let rows64 = rows as u64;
    for (field, want) in [
        ("total_rows", rows64),
        ("valid_rows", rows64),
        ("new", rows64),
        ("replaced", 0),
        ("skipped", 0),
    ] {
        let got = answer_count(&answer, field);
        if got != want {
            problems.push(format!("{label}: {field} is {got}, not {want}"));
        }
    }
    for list in ["errors", "duplicates"] {
        let n = answer[list].as_array().map_or(usize::MAX, Vec::len);
        if n != 0 {
            problems.push(format!("{label}: {n} {list} in the answer"));
        }
    }
    if answer["written"] != Value::Bool(!dry_run) || answer["dry_run"] != Value::Bool(dry_run) {
        problems.push(format!(
            "{label}: the answer says dry_run {} and written {}",
            answer["dry_run"], answer["written"]
        ));
    }
    Ok(ImportCallFigures {
        file,
        dry_run,
        rows,
        bytes: body.len(),
        wall_seconds: wall,
        rows_per_second: rows as f64 / wall,
        server_cpu_seconds: seconds(server_ticks),
        server_cores: seconds(server_ticks) / wall,
        server_threads: thread_split(&threads_before, &threads_after, tps, wall),
        bench_cores: seconds(bench_ticks) / wall,
        rss_before_mib: mib(rss_before),
        rss_after_mib: mib(memory.rss),
        peak_rss_mib: mib(memory.peak_rss),
        peak_reset,
        new: answer_count(&answer, "new"),
        valid_rows: answer_count(&answer, "valid_rows"),
    })
}

/// What the import part measured.
pub struct Imports {
    /// The dry run of the first file.
    pub dry_run: ImportCallFigures,
    /// Every file's import.
    pub imports: Vec<ImportCallFigures>,
}

/// `GET /api/v1/devices/counts`, checked against `want`.
fn check_counts(
    rt: &Runtime,
    admin: &Admin,
    want: &BTreeMap<String, usize>,
    when: &str,
    problems: &mut Problems,
) -> Result<BTreeMap<String, usize>, BenchError> {
    let v = rt.block_on(admin.get_json("/api/v1/devices/counts"))?;
    let got: BTreeMap<String, usize> = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0) as usize))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default();
    let want_nonzero: BTreeMap<String, usize> = want
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    if got != want_nonzero {
        problems.push(format!(
            "{when}: the status counts are {got:?}, not {want_nonzero:?}"
        ));
    }
    Ok(got)
}

/// The dry run of the first file, then every file's import; afterwards every device must be
/// `expected`.
pub fn import_phase(
    rt: &Runtime,
    target: &Target<'_>,
    devices: &[Device],
    files: &[Vec<u8>],
    rows_per_file: usize,
    problems: &mut Problems,
) -> Result<Imports, BenchError> {
    let rows_of = |k: usize| {
        devices
            .len()
            .saturating_sub(k * rows_per_file)
            .min(rows_per_file)
    };
    let first = files.first().map(Vec::as_slice).unwrap_or_default();
    progress(&format!(
        "  dry run of file 1 ({} rows, {:.1} MiB)",
        rows_of(0),
        mib(first.len() as u64)
    ));
    let dry_run = timed_import(rt, target, 1, first, rows_of(0), true, problems)?;
    let mut imports = Vec::with_capacity(files.len());
    for (k, body) in files.iter().enumerate() {
        progress(&format!(
            "  import of file {} of {} ({} rows, {:.1} MiB)",
            k + 1,
            files.len(),
            rows_of(k),
            mib(body.len() as u64)
        ));
        imports.push(timed_import(
            rt,
            target,
            k + 1,
            body,
            rows_of(k),
            false,
            problems,
        )?);
    }
    let all_expected: BTreeMap<String, usize> =
        [(DeviceStatus::Expected.as_str().to_owned(), devices.len())].into();
    check_counts(
        rt,
        target.admin,
        &all_expected,
        "after the imports",
        problems,
    )?;
    Ok(Imports { dry_run, imports })
}

/// Latency, rows and server CPU of a set of requests.
#[derive(Debug, Default)]
struct Tally {
    latency: Histogram,
    rows: u64,
    server_ticks: u64,
}

/// Sends one list request and returns its page, recording the latency (request sent to body
/// read, before parsing) in `tally` and `overall`, and the daemon's CPU around it in `tally`.
fn fetch(
    rt: &Runtime,
    target: &Target<'_>,
    path: &str,
    tallies: &mut [&mut Tally],
) -> Result<Page, BenchError> {
    let before = procfs::cpu_ticks(Some(target.pid))?.own();
    let started = Instant::now();
    let body = rt.block_on(target.admin.get_bytes(path));
    let elapsed = started.elapsed();
    let after = procfs::cpu_ticks(Some(target.pid))?.own();
    let body = body?;
    let page = parse_page(&body).map_err(|reason| BenchError::ApiAnswer {
        path: path.to_owned(),
        reason,
    })?;
    for t in tallies.iter_mut() {
        t.latency.record(elapsed);
        t.server_ticks += after.saturating_sub(before);
        t.rows += page.items.len() as u64;
    }
    Ok(page)
}

fn cpu_ms_per_request(t: &Tally, tps: u64) -> f64 {
    ticks_to_duration(t.server_ticks, tps).as_secs_f64() * 1000.0 / t.latency.count().max(1) as f64
}

/// A cursor kept from the walk, with the serials the walk saw on the page it opens.
struct Deep {
    fraction: &'static str,
    after: String,
    serials: Vec<String>,
}

/// The walk: `q` followed through `next` to its end.
fn walk(
    rt: &Runtime,
    target: &Target<'_>,
    devices: &[Device],
    q: &ListQuery,
    problems: &mut Problems,
) -> Result<(WalkFigures, Vec<Deep>), BenchError> {
    let tps = procfs::clock_ticks_per_second();
    let expected = q.expected_total(devices);
    let pages_expected = expected.div_ceil(PAGE).max(1);
    // Page indices (from 0) whose cursors the mix reuses.
    let marks: [(usize, &'static str); 4] = [
        (pages_expected / 4, "1/4"),
        (pages_expected / 2, "1/2"),
        (pages_expected * 3 / 4, "3/4"),
        (pages_expected - 1, "last"),
    ];
    let mut deep: Vec<Deep> = Vec::new();
    let mut tally = Tally::default();
    let mut seen: HashSet<String> = HashSet::with_capacity(expected);
    let mut duplicates = 0u64;
    let mut after: Option<String> = None;
    let mut prev: Option<Row> = None;
    let mut pages = 0usize;
    let mut total: u64;
    let started = Instant::now();
    loop {
        let page = fetch(rt, target, &q.path(after.as_deref()), &mut [&mut tally])?;
        problems.extend(check_page(q, &page, prev.as_ref(), expected));
        for (mark, fraction) in marks {
            if mark == pages && pages > 0 && !deep.iter().any(|d| d.fraction == fraction) {
                if let Some(a) = &after {
                    deep.push(Deep {
                        fraction,
                        after: a.clone(),
                        serials: page.items.iter().map(|r| r.serial.clone()).collect(),
                    });
                }
            }
        }
        for r in &page.items {
            if !seen.insert(r.serial.clone()) {
                duplicates += 1;
            }
        }
        total = page.total;
        prev = page.items.last().cloned().or(prev);
        pages += 1;
        match page.next {
            Some(n) if pages <= pages_expected + 1 => after = Some(n),
            Some(_) => {
                problems.push(format!(
                    "{}: still a next page after {pages} pages for {expected} devices",
                    q.path(None)
                ));
                break;
            }
            None => break,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let rows = tally.rows;
    if rows != expected as u64 || duplicates > 0 {
        problems.push(format!(
            "{}: the walk read {rows} rows ({duplicates} twice, {} distinct) for {expected} devices",
            q.path(None),
            seen.len()
        ));
    }
    Ok((
        WalkFigures {
            query: q.path(None),
            pages: pages as u64,
            rows,
            distinct: seen.len() as u64,
            total,
            duplicates,
            wall_seconds: wall,
            latency_ms: Percentiles::from(&tally.latency),
            server_cpu_ms_per_request: cpu_ms_per_request(&tally, tps),
        },
        deep,
    ))
}

/// The tallies of the mix, one per kind of request.
#[derive(Debug, Default)]
struct Mix {
    first: Tally,
    next: Tally,
    status: Tally,
    search: Tally,
    deep: Tally,
    /// By sort key, in [`Sort::ALL`] order, whatever the kind.
    by_sort: [Tally; 5],
    overall: Tally,
}

impl Mix {
    /// The tallies a request of `kind` sorted by `sort` counts in.
    fn tallies(&mut self, kind: RequestKind, sort: Sort) -> [&mut Tally; 3] {
        let tally = match kind {
            RequestKind::First => &mut self.first,
            RequestKind::Next => &mut self.next,
            RequestKind::Status => &mut self.status,
            RequestKind::Search => &mut self.search,
            RequestKind::Deep => &mut self.deep,
        };
        [tally, &mut self.by_sort[sort.index()], &mut self.overall]
    }

    /// (key, description, tally) in report order.
    fn kinds(&self) -> [(&'static str, &'static str, &Tally); 5] {
        [
            (
                "first_page",
                "first page of all devices, each sort key and order",
                &self.first,
            ),
            (
                "next_page",
                "pages 2 and 3 of a query, through next",
                &self.next,
            ),
            (
                "status",
                "first page of one status, sort varied by round",
                &self.status,
            ),
            (
                "search",
                "search for a family name, alone and with a status",
                &self.search,
            ),
            (
                "deep_cursor",
                "the walk's cursors at 1/4, 1/2, 3/4 and its last page",
                &self.deep,
            ),
        ]
    }
}

/// The kinds of request of the mix, as [`Mix::kinds`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    First,
    Next,
    Status,
    Search,
    Deep,
}

/// Runs `q`'s first page, then up to `follow` pages through `next`, checking each.
#[allow(clippy::too_many_arguments)]
fn query_pages(
    rt: &Runtime,
    target: &Target<'_>,
    devices: &[Device],
    q: &ListQuery,
    kind: RequestKind,
    follow: usize,
    mix: &mut Mix,
    problems: &mut Problems,
) -> Result<(), BenchError> {
    let expected = q.expected_total(devices);
    let page = fetch(rt, target, &q.path(None), &mut mix.tallies(kind, q.sort))?;
    problems.extend(check_page(q, &page, None, expected));
    let mut prev = page.items.last().cloned();
    let mut after = page.next;
    for _ in 0..follow {
        let Some(a) = after.take() else { break };
        let page = fetch(
            rt,
            target,
            &q.path(Some(&a)),
            &mut mix.tallies(RequestKind::Next, q.sort),
        )?;
        problems.extend(check_page(q, &page, prev.as_ref(), expected));
        prev = page.items.last().cloned().or(prev);
        after = page.next;
    }
    Ok(())
}

/// One round of the mix (see the module documentation); `round` varies sorts and orders.
#[allow(clippy::too_many_arguments)]
fn mix_round(
    rt: &Runtime,
    target: &Target<'_>,
    devices: &[Device],
    statuses: &[DeviceStatus],
    deep: &[Deep],
    round: usize,
    mix: &mut Mix,
    problems: &mut Problems,
) -> Result<(), BenchError> {
    for sort in Sort::ALL {
        // Rounds alternate which order comes first.
        for descending in [!round.is_multiple_of(2), round.is_multiple_of(2)] {
            let q = ListQuery::all(sort, descending);
            query_pages(
                rt,
                target,
                devices,
                &q,
                RequestKind::First,
                NEXT_PAGES,
                mix,
                problems,
            )?;
        }
    }
    for (k, st) in statuses.iter().enumerate() {
        let q = ListQuery {
            statuses: vec![*st],
            search: None,
            sort: Sort::ALL[(round + k) % Sort::ALL.len()],
            descending: (round + k) % 2 == 1,
        };
        query_pages(
            rt,
            target,
            devices,
            &q,
            RequestKind::Status,
            1,
            mix,
            problems,
        )?;
    }
    let searched = ListQuery {
        statuses: Vec::new(),
        search: Some(SEARCH.to_owned()),
        sort: Sort::Name,
        descending: round % 2 == 1,
    };
    query_pages(
        rt,
        target,
        devices,
        &searched,
        RequestKind::Search,
        1,
        mix,
        problems,
    )?;
    let combined = ListQuery {
        statuses: vec![DeviceStatus::Enrolled],
        search: Some(SEARCH.to_owned()),
        sort: Sort::LastSeen,
        descending: true,
    };
    query_pages(
        rt,
        target,
        devices,
        &combined,
        RequestKind::Search,
        0,
        mix,
        problems,
    )?;
    let walk_query = walk_query();
    let expected = walk_query.expected_total(devices);
    for d in deep {
        let page = fetch(
            rt,
            target,
            &walk_query.path(Some(&d.after)),
            &mut mix.tallies(RequestKind::Deep, walk_query.sort),
        )?;
        // The row before the page is the cursor's, which only the walk saw: it also saw
        // what the page must hold.
        problems.extend(check_page(&walk_query, &page, None, expected));
        if page.items.iter().map(|r| &r.serial).ne(d.serials.iter()) {
            problems.push(format!(
                "{}: the page at cursor {} differs from the one the walk read there",
                walk_query.path(None),
                d.fraction
            ));
        }
    }
    Ok(())
}

/// The query the walk follows to its end and the deep cursors come from.
pub fn walk_query() -> ListQuery {
    ListQuery::all(Sort::Name, false)
}

/// The walk, the mix and the export, after the restart on the seeded database.
pub fn list_phase(
    rt: &Runtime,
    target: &Target<'_>,
    devices: &[Device],
    min_requests: usize,
    problems: &mut Problems,
) -> Result<(WalkFigures, ListFigures, ExportFigures), BenchError> {
    let tps = procfs::clock_ticks_per_second();
    let walk_query = walk_query();
    progress(&format!("  walking {} page by page", walk_query.path(None)));
    let (walk_figures, deep) = walk(rt, target, devices, &walk_query, problems)?;

    let counts = expected_counts(devices);
    let statuses: Vec<DeviceStatus> = DeviceStatus::ALL
        .into_iter()
        .filter(|s| counts.get(s.as_str()).is_some_and(|n| *n > 0))
        .collect();
    progress(&format!(
        "  mix of at least {min_requests} list requests ({} statuses with devices)",
        statuses.len()
    ));
    let mut mix = Mix::default();
    let server_before = procfs::cpu_ticks(Some(target.pid))?.own();
    let started = Instant::now();
    let mut rounds = 0usize;
    while mix.overall.latency.count() < min_requests as u64 {
        mix_round(
            rt, target, devices, &statuses, &deep, rounds, &mut mix, problems,
        )?;
        rounds += 1;
    }
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let server_ticks = procfs::cpu_ticks(Some(target.pid))?
        .own()
        .saturating_sub(server_before);
    let server_seconds = ticks_to_duration(server_ticks, tps).as_secs_f64();
    let requests = mix.overall.latency.count();
    let figures = |kind: &str, description: String, t: &Tally| ListKindFigures {
        kind: kind.to_owned(),
        description,
        requests: t.latency.count(),
        rows: t.rows,
        latency_ms: Percentiles::from(&t.latency),
        server_cpu_ms_per_request: cpu_ms_per_request(t, tps),
    };
    let kinds = mix
        .kinds()
        .into_iter()
        .filter(|(_, _, t)| t.latency.count() > 0)
        .map(|(kind, description, t)| figures(kind, description.to_owned(), t))
        .collect();
    let by_sort = Sort::ALL
        .into_iter()
        .zip(&mix.by_sort)
        .filter(|(_, t)| t.latency.count() > 0)
        .map(|(sort, t)| {
            figures(
                sort.as_str(),
                format!("every request sorted by {}", sort.as_str()),
                t,
            )
        })
        .collect();
    let list = ListFigures {
        requests,
        rounds: rounds as u64,
        rows: mix.kinds().iter().map(|(_, _, t)| t.rows).sum(),
        wall_seconds: wall,
        latency_ms: Percentiles::from(&mix.overall.latency),
        server_cpu_ms_per_request: server_seconds * 1000.0 / requests.max(1) as f64,
        server_cores: server_seconds / wall,
        kinds,
        by_sort,
        rss_after_mib: mib(procfs::memory(Some(target.pid))?.rss),
    };

    progress("  CSV export of the whole list");
    let export = export(rt, target, devices.len(), problems)?;
    Ok((walk_figures, list, export))
}

/// `GET /api/v1/devices?format=csv` once, timed, with the daemon's CPU and peak memory.
fn export(
    rt: &Runtime,
    target: &Target<'_>,
    devices: usize,
    problems: &mut Problems,
) -> Result<ExportFigures, BenchError> {
    let pid = target.pid;
    let tps = procfs::clock_ticks_per_second();
    let rss_before = procfs::memory(Some(pid))?.rss;
    let peak_reset = procfs::reset_peak_rss(Some(pid)).is_ok();
    let server_before = procfs::cpu_ticks(Some(pid))?.own();
    let path = "/api/v1/devices?format=csv";
    // Streamed and counted as it arrives: the answer outgrows the admin client's body limit.
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut head = Vec::new();
    let mut last = 0u8;
    let started = Instant::now();
    let streamed = rt.block_on(tls::get_streamed(
        target.addr,
        target.ca_pem,
        target.token,
        path,
        |data| {
            bytes += data.len() as u64;
            if head.len() < 64 {
                head.extend(data.iter().take(64 - head.len()));
            }
            for &b in data {
                if b == b'\n' && last == b'\r' {
                    lines += 1;
                }
                last = b;
            }
        },
    ));
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    streamed?;
    let server_ticks = procfs::cpu_ticks(Some(pid))?
        .own()
        .saturating_sub(server_before);
    let memory = procfs::memory(Some(pid))?;
    // No generated field holds a line break, so records are lines.
    let rows = lines.saturating_sub(1);
    if rows != devices as u64 {
        problems.push(format!("{path}: {rows} rows for {devices} devices"));
    }
    if !head.starts_with(b"serial_number,status,") {
        problems.push(format!("{path}: the export does not start with its header"));
    }
    Ok(ExportFigures {
        wall_seconds: wall,
        bytes,
        rows,
        server_cpu_seconds: ticks_to_duration(server_ticks, tps).as_secs_f64(),
        rss_before_mib: mib(rss_before),
        peak_rss_mib: mib(memory.peak_rss),
        peak_reset,
    })
}

/// Now, rounded down to a whole second: seeded times are whole seconds, so that the order the
/// list shows can be checked from its RFC 3339 times exactly.
pub fn whole_second_now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp(now.0 - now.0.rem_euclid(1000))
}

/// Runs phase 6: generates the devices, starts a daemon of its own (`binary`, data in `dir`),
/// imports, seeds, restarts and measures the list.
pub fn run(
    rt: &Runtime,
    plan: &Plan,
    binary: &Path,
    dir: &Path,
) -> Result<LifecycleFigures, BenchError> {
    let started = Instant::now();
    let devices = generate(plan.devices, SEED);
    let files = csv_files(&devices, plan.rows_per_file);
    let generate_seconds = started.elapsed().as_secs_f64();

    let data_dir = dir.join("lifecycle-data");
    let log = dir.join("lifecycle-mdmd.log");
    let addr = daemon::free_loopback_addr()?;
    progress(&format!(
        "phase 6: device lifecycle; starting another daemon on {addr}; {} devices in {} CSV files",
        devices.len(),
        files.len()
    ));
    let mut daemon = Daemon::start(binary, &data_dir, addr, &log, &PushService::Unreachable)?;
    let ca_pem = rt.block_on(tls::fetch_ca_pem(addr))?;
    let token = daemon.admin_token()?;
    let admin = Admin::new(&ca_pem, &daemon.base_url(), &token)?.with_timeout(CALL_TIMEOUT);
    let mut problems = Problems::default();
    let imports = import_phase(
        rt,
        &Target {
            admin: &admin,
            pid: daemon.pid,
            addr,
            ca_pem: &ca_pem,
            token: &token,
        },
        &devices,
        &files,
        plan.rows_per_file,
        &mut problems,
    )?;
    daemon.check_alive()?;
    let rss_after_imports_mib = mib(daemon.memory()?.rss);
    let database_mib_after_imports = daemon.database_mib()?;

    progress("  stopping the daemon and seeding enrollments");
    daemon.stop()?;
    let seeded_at = Instant::now();
    let seeded = rt.block_on(seed(
        &data_dir.join(mdmd::DB_FILE),
        &devices,
        whole_second_now(),
    ))?;
    let seed_seconds = seeded_at.elapsed().as_secs_f64();
    progress(&format!(
        "  {seeded} enrollments seeded in {seed_seconds:.1} s; restarting the daemon"
    ));
    let restarted = Instant::now();
    daemon.restart(binary)?;
    let restart_seconds = restarted.elapsed().as_secs_f64();
    let rss_after_restart_mib = mib(daemon.memory()?.rss);
    let admin = Admin::new(&ca_pem, &daemon.base_url(), &token)?.with_timeout(CALL_TIMEOUT);
    let target = Target {
        admin: &admin,
        pid: daemon.pid,
        addr,
        ca_pem: &ca_pem,
        token: &token,
    };
    let want = expected_counts(&devices);
    let status_counts = check_counts(rt, &admin, &want, "after the restart", &mut problems)?;
    let (walk, list, export) = list_phase(rt, &target, &devices, plan.min_requests, &mut problems)?;
    daemon.check_alive()?;
    let database_mib = daemon.database_mib()?;
    daemon.stop()?;
    Ok(LifecycleFigures {
        devices: devices.len(),
        rows_per_file: plan.rows_per_file,
        generate_seconds,
        dry_run: imports.dry_run,
        imports: imports.imports,
        rss_after_imports_mib,
        database_mib_after_imports,
        seeded_enrollments: seeded,
        seed_seconds,
        restart_seconds,
        rss_after_restart_mib,
        database_mib,
        status_counts,
        search: SEARCH.to_owned(),
        search_matches: ListQuery {
            statuses: Vec::new(),
            search: Some(SEARCH.to_owned()),
            sort: Sort::Serial,
            descending: false,
        }
        .expected_total(&devices),
        walk,
        list,
        export,
        problems: problems.into_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdm_service::lifecycle::csv::{parse, Ownership, Platform};

    #[test]
    fn generated_files_import_cleanly_with_the_appliance_parser() {
        let devices = generate(3_000, SEED);
        assert_eq!(
            devices,
            generate(3_000, SEED),
            "the same seed makes the same devices"
        );
        assert_ne!(devices, generate(3_000, SEED + 1));
        let serials: HashSet<&str> = devices.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials.len(), 3_000, "serial numbers are unique");

        let files = csv_files(&devices, 1_000);
        assert_eq!(files.len(), 3);
        let mut parsed_rows = Vec::new();
        for f in &files {
            assert!(f.starts_with(CSV_HEADER.as_bytes()));
            let p = parse(f).unwrap();
            assert!(
                p.errors.is_empty(),
                "{:?}",
                &p.errors[..p.errors.len().min(3)]
            );
            assert!(p.ignored_columns.is_empty());
            assert_eq!((p.total_rows, p.rows.len()), (1_000, 1_000));
            parsed_rows.extend(p.rows);
        }
        for (d, r) in devices.iter().zip(&parsed_rows) {
            assert_eq!(r.serial_number, d.serial);
            assert_eq!(r.name, d.name);
            assert_eq!(r.mobile, d.mobile);
            assert_eq!(r.device_name, d.device_name);
            assert_eq!(r.email.to_lowercase(), d.email.to_lowercase());
        }
        // Names with a comma, spellings the import normalises, and non-ASCII survive.
        let jr = devices
            .iter()
            .position(|d| d.name.ends_with(", Jr."))
            .unwrap();
        assert_eq!(parsed_rows[jr].name, devices[jr].name);
        assert!(devices.iter().any(|d| d
            .device_name
            .as_deref()
            .is_some_and(|n| n.contains(", bench"))));
        assert!(devices.iter().any(|d| !d.name.is_ascii()));
        assert!(devices.iter().any(|d| d.ownership == "BYOD"));
        assert!(parsed_rows
            .iter()
            .any(|r| r.ownership == Ownership::SelectUser));
        for platform in [
            Platform::Ios,
            Platform::IpadOs,
            Platform::MacOs,
            Platform::TvOs,
            Platform::VisionOs,
        ] {
            assert!(
                parsed_rows.iter().any(|r| r.platform == platform),
                "{platform:?}"
            );
        }

        // Every kind is there, roughly in its share; the search finds a few percent.
        let counts = expected_counts(&devices);
        assert_eq!(counts.values().sum::<usize>(), 3_000);
        for (kind, share) in KINDS {
            let n = counts[kind.status().as_str()];
            let want = share as usize * 3;
            assert!(n * 2 > want && n < want * 2, "{kind:?}: {n} of 3000");
        }
        let hits = (0..devices.len())
            .filter(|&i| search_matches(i, &devices[i], SEARCH))
            .count();
        assert!((45..=150).contains(&hits), "{hits} search matches");
        // A 50,000-row file stays well under the API's body limits.
        let big = csv_files(&generate(ROWS_PER_FILE, SEED), ROWS_PER_FILE);
        assert_eq!(big.len(), 1);
        assert!(big[0].len() < 8 << 20, "{} bytes", big[0].len());
    }

    #[test]
    fn the_generator_and_search_helpers() {
        let mut rng = Rng::new(7);
        assert_eq!(rng.below(0), 0);
        assert!((0..1_000).all(|_| rng.below(10) < 10));
        let picks: HashSet<u64> = (0..200).map(|_| rng.below(4)).collect();
        assert_eq!(picks.len(), 4);
        assert!(contains_ci("Kenji NAKAMURA", "nakamura"));
        assert!(!contains_ci("Nakamur", "nakamura"));
        assert!(contains_ci("x", ""));
        let mut r = Rng::new(1);
        assert_eq!(serial(0, &mut r).len(), 12);
        assert_ne!(serial(1, &mut Rng::new(1)), serial(2, &mut Rng::new(1)));
        assert_eq!(udid(255), "00008110-1CBE0000000000FF");
        assert_eq!(whole_second_now().0 % 1000, 0);
        let mut out = String::new();
        push_field(&mut out, "say \"hi\", then");
        assert_eq!(out, "\"say \"\"hi\"\", then\"");
    }

    fn row(serial: &str, status: &str, name: Option<&str>, last_seen: Option<i64>) -> Row {
        Row {
            serial: serial.into(),
            status: status.into(),
            name: name.map(str::to_owned),
            email: None,
            model: None,
            device_name: None,
            enrollment_id: None,
            last_seen,
        }
    }

    fn page(items: Vec<Row>, next: bool, total: u64) -> Page {
        Page {
            items,
            next: next.then(|| "c".to_owned()),
            total,
        }
    }

    #[test]
    fn page_checks_catch_order_filter_size_and_total() {
        let by_name = ListQuery::all(Sort::Name, false);
        let ok = page(
            vec![
                row("B1", "enrolled", Some("ada"), None),
                row("A1", "enrolled", Some("Zoë"), None),
                row("A2", "enrolled", Some("zoë"), None),
            ],
            false,
            3,
        );
        assert!(check_page(&by_name, &ok, None, 3).is_empty());
        // The same rows in descending order are wrong, right when asked for.
        let desc = ListQuery::all(Sort::Name, true);
        assert_eq!(check_page(&desc, &ok, None, 3).len(), 2);
        let mut reversed = ok.clone();
        reversed.items.reverse();
        assert!(check_page(&desc, &reversed, None, 3).is_empty());
        // Against the previous page's last row.
        let prev = row("Z9", "enrolled", Some("zzz"), None);
        let problems = check_page(&by_name, &ok, Some(&prev), 3);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("B1 comes after Z9"), "{problems:?}");
        // Total.
        assert!(check_page(&by_name, &ok, None, 4)[0].contains("total 3"));
        // A short page that claims a next one; an oversized page.
        assert_eq!(
            check_page(&by_name, &page(ok.items.clone(), true, 3), None, 3).len(),
            1
        );
        let many: Vec<Row> = (0..51)
            .map(|i| row(&format!("S{i:03}"), "expected", None, None))
            .collect();
        let big = check_page(
            &ListQuery::all(Sort::Serial, false),
            &page(many, false, 51),
            None,
            51,
        );
        assert_eq!(big.len(), 1, "{big:?}");
        // Status filter and its order (most in need of an admin first).
        let offline = ListQuery {
            statuses: vec![DeviceStatus::Offline],
            search: None,
            sort: Sort::Status,
            descending: false,
        };
        let mixed = page(
            vec![
                row("A", "offline", None, None),
                row("B", "enrolled", None, None),
            ],
            false,
            2,
        );
        let problems = check_page(&offline, &mixed, None, 2);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("B has status enrolled"),
            "{problems:?}"
        );
        let by_status = ListQuery::all(Sort::Status, false);
        let wrong = page(
            vec![
                row("A", "enrolled", None, None),
                row("B", "offline", None, None),
            ],
            false,
            2,
        );
        assert_eq!(check_page(&by_status, &wrong, None, 2).len(), 1);
        // Last seen: devices never seen sort first, ties by serial.
        let seen = ListQuery::all(Sort::LastSeen, false);
        let rows = page(
            vec![
                row("C", "expected", None, None),
                row("D", "expected", None, None),
                row("A", "enrolled", None, Some(5)),
                row("B", "enrolled", None, Some(5)),
                row("0", "enrolled", None, Some(9)),
            ],
            false,
            5,
        );
        assert!(check_page(&seen, &rows, None, 5).is_empty());
        // Search: every row must hold the term somewhere.
        let search = ListQuery {
            statuses: Vec::new(),
            search: Some("nakamura".into()),
            sort: Sort::Serial,
            descending: false,
        };
        let mut hit = row("A", "expected", Some("Kenji Nakamura"), None);
        let miss = row("B", "expected", Some("Ada Lovelace"), None);
        assert_eq!(
            check_page(&search, &page(vec![hit.clone(), miss], false, 2), None, 2).len(),
            1
        );
        hit.name = None;
        hit.enrollment_id = Some("x-NAKAMURA".into());
        assert!(check_page(&search, &page(vec![hit], false, 1), None, 1).is_empty());
    }

    #[test]
    fn pages_parse_and_paths_are_encoded() {
        let body = br#"{"items":[{"serial":"ABC","status":"enrolled","name":"Ada","email":null,
            "model":"iPhone 15","device_name":null,"enrollment_id":"U1",
            "last_seen_at":"2026-11-21T10:00:00.250Z"}],"next":"eyJ9","total":7}"#;
        let p = parse_page(body).unwrap();
        assert_eq!(p.total, 7);
        assert_eq!(p.next.as_deref(), Some("eyJ9"));
        assert_eq!(p.items[0].serial, "ABC");
        assert_eq!(p.items[0].last_seen.unwrap() % 1000, 250);
        assert!(parse_page(b"{}").is_err());
        assert!(parse_page(br#"{"items":[{"status":"x"}],"total":1}"#).is_err());
        let q = ListQuery {
            statuses: vec![DeviceStatus::Offline, DeviceStatus::Enrolled],
            search: Some("o'brien x".into()),
            sort: Sort::LastSeen,
            descending: true,
        };
        assert_eq!(
            q.path(Some("a+b")),
            "/api/v1/devices?limit=50&sort=last_seen&order=desc&status=offline,enrolled\
             &search=o%27brien%20x&after=a%2Bb"
        );
    }

    #[test]
    fn problems_are_capped() {
        let mut p = Problems::default();
        assert!(p.is_empty());
        p.extend((0..MAX_PROBLEMS + 5).map(|i| format!("p{i}")));
        let v = p.into_vec();
        assert_eq!(v.len(), MAX_PROBLEMS + 1);
        assert_eq!(v[MAX_PROBLEMS], "... and 5 more problems");
    }

    fn import_figures(rows: usize, wall: f64) -> ImportCallFigures {
        ImportCallFigures {
            file: 1,
            dry_run: false,
            rows,
            bytes: 1 << 20,
            wall_seconds: wall,
            rows_per_second: rows as f64 / wall,
            server_cpu_seconds: wall,
            server_cores: 1.0,
            server_threads: Vec::new(),
            bench_cores: 0.1,
            rss_before_mib: 10.0,
            rss_after_mib: 20.0,
            peak_rss_mib: 30.0,
            peak_reset: true,
            new: rows as u64,
            valid_rows: rows as u64,
        }
    }

    /// The whole phase against an embedded daemon: import, seed, restart, walk, mix, export;
    /// every check passes and the figures add up.
    #[test]
    fn the_phase_imports_lists_and_exports_a_small_fleet() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let addr = daemon::free_loopback_addr().unwrap();
        let data = dir.path().join("data");
        let mut cfg = mdmd::Config::development(addr, data.clone());
        // Never Apple's services from a test.
        cfg.apns.url = "https://127.0.0.1:9".into();
        cfg.abm.url = "https://127.0.0.1:9".into();
        let running = rt.block_on(mdmd::start(cfg.clone())).unwrap();
        let token = std::fs::read_to_string(data.join(mdmd::ADMIN_TOKEN_FILE)).unwrap();
        let base = format!("https://{addr}");
        let admin = Admin::new(&running.ca_pem, &base, token.trim())
            .unwrap()
            .with_timeout(Duration::from_secs(120));
        let target = Target {
            admin: &admin,
            pid: std::process::id(),
            addr,
            ca_pem: &running.ca_pem,
            token: token.trim(),
        };
        let devices = generate(1_500, SEED);
        let files = csv_files(&devices, 600);
        let mut problems = Problems::default();
        let imports = import_phase(&rt, &target, &devices, &files, 600, &mut problems).unwrap();
        assert!(problems.is_empty(), "{:?}", problems.into_vec());
        assert!(imports.dry_run.dry_run);
        assert_eq!((imports.dry_run.rows, imports.dry_run.new), (600, 600));
        let rows: Vec<usize> = imports.imports.iter().map(|i| i.rows).collect();
        assert_eq!(rows, [600, 600, 300]);
        assert!(imports
            .imports
            .iter()
            .all(|i| i.new == i.rows as u64 && i.peak_reset));
        assert_eq!(imports.imports[2].bytes, files[2].len());

        // The same file again is refused (its serials are pre-enrolled): a failed run.
        let again = rt.block_on(admin.preenroll_import(files[0].clone(), ""));
        assert!(
            matches!(again, Err(BenchError::Api { status: 409, .. })),
            "{again:?}"
        );

        rt.block_on(running.stop()).unwrap();
        // The embedded daemon's last store handles can outlive `stop` by a moment (a child
        // process, as the benchmark runs, releases its lock when it exits).
        let mut attempts = 0;
        let seeded = loop {
            match rt.block_on(seed(
                &data.join(mdmd::DB_FILE),
                &devices,
                whole_second_now(),
            )) {
                Err(BenchError::Store(e))
                    if attempts < 50 && e.to_string().contains("already open") =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(seeded, devices.iter().filter(|d| d.kind.enrolls()).count());
        let running = rt.block_on(mdmd::start(cfg)).unwrap();
        let admin = Admin::new(&running.ca_pem, &base, token.trim())
            .unwrap()
            .with_timeout(Duration::from_secs(120));
        let target = Target {
            admin: &admin,
            pid: std::process::id(),
            addr,
            ca_pem: &running.ca_pem,
            token: token.trim(),
        };
        let want = expected_counts(&devices);
        let counts = check_counts(&rt, &admin, &want, "after the restart", &mut problems).unwrap();
        assert_eq!(counts.len(), 7, "{counts:?}");
        let (walk, list, export) = list_phase(&rt, &target, &devices, 60, &mut problems).unwrap();
        assert!(problems.is_empty(), "{:?}", problems.into_vec());

        assert_eq!((walk.pages, walk.rows, walk.distinct), (30, 1_500, 1_500));
        assert_eq!((walk.total, walk.duplicates), (1_500, 0));
        assert_eq!(walk.query, "/api/v1/devices?limit=50&sort=name&order=asc");
        // A round: 10 first pages and the 2 after each; each status and the page after it
        // when it has one; the search, the page after it if any, and the search with a
        // status; 4 deep cursors.
        let with_next = |n: usize| usize::from(n > PAGE) as u64;
        let status_next: u64 = want.values().map(|n| with_next(*n)).sum();
        let search_total = ListQuery {
            statuses: Vec::new(),
            search: Some(SEARCH.into()),
            sort: Sort::Name,
            descending: false,
        }
        .expected_total(&devices);
        let next_per_round = 20 + status_next + with_next(search_total);
        let per_round = 10 + 7 + 2 + 4 + next_per_round;
        assert_eq!(list.rounds, 60u64.div_ceil(per_round));
        assert_eq!(list.requests, list.rounds * per_round);
        let kinds: Vec<(&str, u64)> = list
            .kinds
            .iter()
            .map(|k| (k.kind.as_str(), k.requests))
            .collect();
        let r = list.rounds;
        assert_eq!(
            kinds,
            [
                ("first_page", 10 * r),
                ("next_page", next_per_round * r),
                ("status", 7 * r),
                ("search", 2 * r),
                ("deep_cursor", 4 * r)
            ]
        );
        assert_eq!(list.rows, list.kinds.iter().map(|k| k.rows).sum::<u64>());
        let sorts: Vec<&str> = list.by_sort.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(sorts, ["serial", "status", "last_seen", "name", "model"]);
        assert_eq!(
            list.by_sort.iter().map(|k| k.requests).sum::<u64>(),
            list.requests
        );
        assert!(list.latency_ms.p99 > 0.0 && list.latency_ms.max >= list.latency_ms.p99);
        assert_eq!(export.rows, 1_500);
        assert!(export.bytes > 1_500 * 50);

        // The report shows the figures beside their targets with a verdict.
        let figures = LifecycleFigures {
            devices: devices.len(),
            rows_per_file: 600,
            generate_seconds: 0.1,
            dry_run: imports.dry_run,
            imports: imports.imports,
            rss_after_imports_mib: 1.0,
            database_mib_after_imports: 1.0,
            seeded_enrollments: seeded,
            seed_seconds: 0.5,
            restart_seconds: 0.5,
            rss_after_restart_mib: 1.0,
            database_mib: 1.0,
            status_counts: counts,
            search: SEARCH.into(),
            search_matches: 40,
            walk,
            list,
            export,
            problems: Vec::new(),
        };
        assert!(!figures.failed());
        let mut text = String::new();
        crate::report::lifecycle_section(&mut text, &figures);
        crate::report::lifecycle_targets(&mut text, &figures);
        for needle in [
            "device lifecycle: 1500 devices imported from 3 CSV files of at most 600 rows",
            "dry run of file 1",
            "import of file 3",
            "30 pages, 1500 rows, 1500 distinct, 0 duplicates, total 1500",
            "mix: ",
            "first_page (",
            "deep_cursor (",
            "sort=last_seen (",
            "1500 rows",
            "target < 20 ms at 100k",
            "(the target is for another)",
            "CSV import, 600 rows (slowest)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let json = serde_json::to_value(&figures).unwrap();
        assert_eq!(json["walk"]["rows"], 1_500);
        assert_eq!(json["list"]["kinds"][4]["kind"], "deep_cursor");

        rt.block_on(running.stop()).unwrap();
    }

    #[test]
    fn verdicts_and_the_slowest_full_file() {
        let mut text = String::new();
        let mut f = import_figures(50_000, 4.0);
        f.file = 2;
        let imports = vec![import_figures(50_000, 3.0), f, import_figures(10, 9.0)];
        let slowest = crate::report::slowest_import(&imports, 50_000).unwrap();
        assert_eq!(slowest.file, 2);
        // No file of the full size: the slowest of all.
        let slowest_any = crate::report::slowest_import(&imports, 20_000).unwrap();
        assert_eq!(slowest_any.rows, 10);
        assert!(crate::report::slowest_import(&[], 1).is_none());
        crate::report::lifecycle_verdict_line(&mut text, slowest);
        assert!(text.contains("4.00 s"), "{text}");
        assert!(text.contains("target < 10 s for 50,000: met"), "{text}");
        let mut text = String::new();
        crate::report::lifecycle_verdict_line(&mut text, &import_figures(50_000, 12.5));
        assert!(text.contains("MISSED"), "{text}");
    }
}
