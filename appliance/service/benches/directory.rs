//! The device directory alone, without the daemon, TLS or JSON: how long a page of the device
//! list takes at 100,000 devices for each sort and filter the console uses (first page and a
//! page deep behind a cursor), and how long the export of every device takes.
//!
//! ```sh
//! cargo bench -p mdm-service --bench directory
//! cargo bench -p mdm-service --bench directory -- --devices 20000 --iterations 20
//! ```
//!
//! The devices come from a fixed-seed generator (the same fleet on every run and machine): a
//! third pre-enrolled only, some listed by one of two ABM connections in every ABM state, most
//! enrolled (some offline, held in Setup Assistant, enrolling, partially enrolled, checked
//! out, or with a push token Apple rejected), a few enrolled without a serial number. Names,
//! models and last contact times vary so that every sort has long runs of equal values, as in
//! a real fleet. Figures are wall-clock times of one thread, one request at a time.

use std::error::Error;
use std::time::{Duration, Instant};

use mdm_proto::abm::Device;
use mdm_service::lifecycle::csv::{Ownership, Platform};
use mdm_service::lifecycle::directory::{DeviceDirectory, DeviceQuery, SortKey};
use mdm_service::lifecycle::status::{DeviceStatus, Thresholds};
use mdm_service::ports::{
    AbmAssignOutcome, AbmAssignment, AbmDeviceRecord, Channel, DeviceFacts, EnrollmentRecord,
    EnrollmentSource, EnrollmentState, PreenrollRecord, PreenrollSource, PushFailure, PushOutcome,
    Timestamp,
};

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// "Now" for the whole run (2027-01-15): statuses are derived at this time.
const NOW: Timestamp = Timestamp(1_800_000_000_000);
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const PAGE: usize = 50;

const THRESHOLDS: Thresholds = Thresholds {
    offline_after: Duration::from_secs(72 * 3600),
    enrolling_grace: Duration::from_secs(30 * 60),
    awaiting_stuck_after: Duration::from_secs(30 * 60),
};

const FIRST: [&str; 24] = [
    "Ada",
    "Aisha",
    "Alan",
    "Anaïs",
    "Björn",
    "Camila",
    "Chloé",
    "Diego",
    "Elif",
    "Emma",
    "Fatima",
    "Grace",
    "Hiroshi",
    "Ingrid",
    "José",
    "Kwame",
    "Leila",
    "Łukasz",
    "Mei",
    "Noah",
    "Oluwaseun",
    "Priya",
    "Søren",
    "Zoë",
];
const LAST: [&str; 20] = [
    "Andersen",
    "Chen",
    "Dubois",
    "Fernández",
    "García",
    "Hopper",
    "Kowalski",
    "Lovelace",
    "Müller",
    "Nakamura",
    "Nguyen",
    "O'Brien",
    "Okafor",
    "Patel",
    "Rossi",
    "Silva",
    "Svensson",
    "Turing",
    "Van der Berg",
    "Yılmaz",
];
/// (platform, device word, models its enrollments report).
const MODELS: [(Platform, &str, &[&str]); 4] = [
    (
        Platform::Ios,
        "iPhone",
        &[
            "iPhone 14",
            "iPhone 15",
            "iPhone 15 Pro",
            "iPhone 16 Pro Max",
            "iPhone SE (3rd generation)",
        ],
    ),
    (
        Platform::IpadOs,
        "iPad",
        &[
            "iPad (10th generation)",
            "iPad Air (5th generation)",
            "iPad Pro (12.9-inch) (6th generation)",
            "iPad mini (6th generation)",
        ],
    ),
    (
        Platform::MacOs,
        "MacBook",
        &[
            "MacBook Air (M2, 2022)",
            "MacBook Pro (14-inch, 2023)",
            "Mac mini (2023)",
        ],
    ),
    (
        Platform::TvOs,
        "Apple TV",
        &["Apple TV 4K (3rd generation)"],
    ),
];
const SERIAL_ALPHABET: &[u8] = b"0123456789CDFGHJKLMNPQRTVWXY";

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

impl Rng {
    /// A time `lo..hi` milliseconds before [`NOW`].
    fn ago(&mut self, lo: i64, hi: i64) -> Timestamp {
        let span = (hi - lo).max(1) as u64;
        Timestamp(NOW.0 - lo - (self.next() % span) as i64)
    }
}

/// What a generated device is given.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Expected,
    AbmOnly,
    Enrolled,
    Offline,
    Awaiting,
    Enrolling,
    Partial,
    PushInvalid,
    Unenrolled,
}

/// Shares per thousand.
const KINDS: [(Kind, usize); 9] = [
    (Kind::Expected, 300),
    (Kind::AbmOnly, 100),
    (Kind::Enrolled, 400),
    (Kind::Offline, 60),
    (Kind::Awaiting, 30),
    (Kind::Enrolling, 20),
    (Kind::Partial, 35),
    (Kind::PushInvalid, 5),
    (Kind::Unenrolled, 50),
];

fn kind(rng: &mut Rng) -> Kind {
    let mut at = rng.below(1000);
    for (k, share) in KINDS {
        if at < share {
            return k;
        }
        at -= share;
    }
    Kind::Enrolled
}

fn serial(i: usize, rng: &mut Rng) -> String {
    let mut s: Vec<u8> = (0..3).map(|_| *rng.pick(SERIAL_ALPHABET)).collect();
    let mut digits = [0u8; 5];
    let mut n = i;
    for d in digits.iter_mut().rev() {
        *d = SERIAL_ALPHABET[n % SERIAL_ALPHABET.len()];
        n /= SERIAL_ALPHABET.len();
    }
    s.extend_from_slice(&digits);
    s.extend((0..4).map(|_| *rng.pick(SERIAL_ALPHABET)));
    String::from_utf8_lossy(&s).into_owned()
}

fn abm_record(serial: &str, connection: &str, model: &str, rng: &mut Rng) -> AbmDeviceRecord {
    let mut device = Device {
        serial_number: serial.to_owned(),
        model: model.to_owned(),
        os: "iOS".into(),
        device_family: "iPhone".into(),
        profile_status: "empty".into(),
        ..Device::default()
    };
    let mut assignment = None;
    let mut removed_at = None;
    let mut next_assign_at = None;
    let outcome = |o| AbmAssignment {
        profile_id: "staff".into(),
        profile_uuid: "8F2E".into(),
        outcome: o,
        at: NOW.minus(Duration::from_secs(3600)),
        reason: None,
        failures: 1,
    };
    match rng.below(10) {
        0..=1 => {}
        2 => next_assign_at = Some(NOW.plus(Duration::from_secs(60))),
        3..=4 => device.profile_status = "assigned".into(),
        5 => {
            device.profile_status = "pushed".into();
            device.profile_push_time = "2027-01-15T07:50:00Z".into();
        }
        6 => {
            device.profile_status = "pushed".into();
            device.profile_push_time = "2027-01-10T08:00:00Z".into();
        }
        7 => assignment = Some(outcome(AbmAssignOutcome::Failed)),
        8 => assignment = Some(outcome(AbmAssignOutcome::NotAccessible)),
        _ => removed_at = Some(rng.ago(DAY, 30 * DAY)),
    }
    AbmDeviceRecord {
        connection: connection.to_owned(),
        serial: serial.to_owned(),
        device,
        first_seen_at: rng.ago(30 * DAY, 90 * DAY),
        updated_at: rng.ago(0, 30 * DAY),
        removed_at,
        seen_generation: 1,
        assignment,
        next_assign_at,
    }
}

fn enrollment(
    serial: Option<&str>,
    udid: &str,
    model: &str,
    device_name: &str,
    k: Kind,
    rng: &mut Rng,
) -> EnrollmentRecord {
    let authenticated_at = match k {
        Kind::Enrolling => rng.ago(MINUTE, 10 * MINUTE),
        Kind::Partial => rng.ago(HOUR, 72 * HOUR),
        _ => rng.ago(30 * DAY, 400 * DAY),
    };
    let enrolled = !matches!(k, Kind::Enrolling | Kind::Partial);
    let last_seen_at = match k {
        Kind::Offline => rng.ago(4 * DAY, 9 * DAY),
        Kind::Enrolling | Kind::Partial => authenticated_at,
        _ => rng.ago(0, 2 * DAY),
    };
    EnrollmentRecord {
        id: udid.to_owned(),
        device_id: udid.to_owned(),
        user_id: None,
        user_short_name: None,
        channel: Channel::Device,
        state: match k {
            Kind::Enrolling | Kind::Partial => EnrollmentState::Authenticated,
            Kind::Unenrolled => EnrollmentState::CheckedOut,
            _ => EnrollmentState::Enrolled,
        },
        identity_sha256: String::new(),
        topic: None,
        facts: DeviceFacts {
            serial_number: serial.map(str::to_owned),
            model_name: Some(model.to_owned()),
            os_version: Some("18.2".into()),
            device_name: Some(device_name.to_owned()),
            ..DeviceFacts::default()
        },
        source: match serial {
            Some(s) if rng.below(2) == 0 => Some(EnrollmentSource::Ade {
                udid: udid.to_owned(),
                serial: s.to_owned(),
                user: None,
            }),
            _ => Some(EnrollmentSource::Link {
                link_id: "link".into(),
            }),
        },
        push: None,
        unlock_token_sealed: None,
        bootstrap_token_sealed: None,
        awaiting_configuration: k == Kind::Awaiting,
        authenticated_at,
        enrolled_at: enrolled.then(|| authenticated_at.plus(Duration::from_secs(40))),
        token_updated_at: enrolled.then(|| authenticated_at.plus(Duration::from_secs(40))),
        checked_out_at: (k == Kind::Unenrolled).then(|| rng.ago(0, 20 * DAY)),
        last_seen_at,
        last_push_at: match k {
            Kind::Offline => Some(last_seen_at.plus(Duration::from_secs(3600))),
            Kind::Enrolled if rng.below(3) == 0 => {
                Some(last_seen_at.minus(Duration::from_secs(60)))
            }
            _ => None,
        },
        push_invalid: (k == Kind::PushInvalid).then(|| PushFailure {
            reason: "Unregistered".into(),
            at: rng.ago(0, 5 * DAY),
        }),
    }
}

/// Builds the fleet into a directory through its write paths.
fn build(n: usize) -> DeviceDirectory {
    let dir = DeviceDirectory::default();
    let mut rng = Rng(0x6469_7265_6374_6f72);
    let mut preenrolled = Vec::new();
    let mut abm = Vec::new();
    let mut enrollments = Vec::new();
    for i in 0..n {
        let k = kind(&mut rng);
        let serial = serial(i, &mut rng);
        let first = *rng.pick(&FIRST);
        let last = *rng.pick(&LAST);
        let (platform, word, models) = rng.pick(&MODELS);
        let model = *rng.pick(models);
        let device_name = format!("{first}'s {word}");
        // ABM-only devices are pre-enrolled when the connection adds them so, half the time.
        let preenroll = k != Kind::AbmOnly || rng.below(2) == 0;
        if preenroll {
            preenrolled.push(PreenrollRecord {
                serial: serial.clone(),
                name: (k != Kind::AbmOnly).then(|| format!("{first} {last}")),
                email: (k != Kind::AbmOnly).then(|| {
                    format!(
                        "{}.{}@example.com",
                        first.to_lowercase(),
                        last.to_lowercase()
                    )
                }),
                ownership: Some(Ownership::Corporate),
                platform: Some(*platform),
                mobile: None,
                device_name: (rng.below(10) < 6).then(|| device_name.clone()),
                source: PreenrollSource::Csv,
                created_at: rng.ago(100 * DAY, 400 * DAY),
                updated_at: rng.ago(0, 100 * DAY),
                updated_by: "admin".into(),
            });
        }
        // ABM lists every ABM-only device and a quarter of the others.
        if k == Kind::AbmOnly || rng.below(4) == 0 {
            let conn = if rng.below(3) == 0 { "south" } else { "north" };
            abm.push(abm_record(&serial, conn, model, &mut rng));
        }
        if !matches!(k, Kind::Expected | Kind::AbmOnly) {
            let udid = format!("00008110-1CBE{i:012X}");
            // One enrollment in a hundred reported no serial number: keyed by its UDID.
            let reported = (rng.below(100) != 0).then_some(serial.as_str());
            enrollments.push(enrollment(
                reported,
                &udid,
                model,
                &device_name,
                k,
                &mut rng,
            ));
        }
    }
    for chunk in preenrolled.chunks(2000) {
        dir.put_preenrolled(chunk.to_vec());
    }
    for chunk in abm.chunks(1000) {
        dir.put_abm(chunk);
    }
    for e in &enrollments {
        dir.put_enrollment(e);
    }
    dir
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A named query of the bench.
struct Case {
    name: String,
    query: DeviceQuery,
}

fn sort_name(s: SortKey) -> &'static str {
    match s {
        SortKey::Serial => "serial",
        SortKey::Status => "status",
        SortKey::LastSeen => "last_seen",
        SortKey::Name => "name",
        SortKey::Model => "model",
    }
}

const SORTS: [SortKey; 5] = [
    SortKey::Serial,
    SortKey::Status,
    SortKey::LastSeen,
    SortKey::Name,
    SortKey::Model,
];

/// Every sort in both orders unfiltered; every filter in every sort.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for sort in SORTS {
        for descending in [false, true] {
            out.push(Case {
                name: format!(
                    "all {} {}",
                    sort_name(sort),
                    if descending { "desc" } else { "asc" }
                ),
                query: DeviceQuery {
                    sort,
                    descending,
                    limit: PAGE,
                    ..DeviceQuery::default()
                },
            });
        }
    }
    let filter =
        |statuses: &[DeviceStatus], search: Option<&str>, connection: Option<&str>| DeviceQuery {
            statuses: statuses.to_vec(),
            search: search.map(str::to_owned),
            connection: connection.map(str::to_owned),
            limit: PAGE,
            ..DeviceQuery::default()
        };
    let filters = [
        (
            "status=offline",
            filter(&[DeviceStatus::Offline], None, None),
        ),
        (
            "status=enrolled",
            filter(&[DeviceStatus::Enrolled], None, None),
        ),
        (
            "status=partial,failed",
            filter(
                &[
                    DeviceStatus::PartiallyEnrolled,
                    DeviceStatus::AssignmentFailed,
                ],
                None,
                None,
            ),
        ),
        ("search=nakamura", filter(&[], Some("nakamura"), None)),
        (
            "search=nakamura+enrolled",
            filter(&[DeviceStatus::Enrolled], Some("nakamura"), None),
        ),
        ("search=ipad", filter(&[], Some("iPad"), None)),
        ("connection=north", filter(&[], None, Some("north"))),
    ];
    for (name, query) in filters {
        for sort in SORTS {
            out.push(Case {
                name: format!("{name} {}", sort_name(sort)),
                query: DeviceQuery {
                    sort,
                    ..query.clone()
                },
            });
        }
    }
    out
}

/// The cursor about half way through a query's results, reached in pages of 1000.
fn halfway_cursor(dir: &DeviceDirectory, q: &DeviceQuery) -> BenchResult<Option<String>> {
    let mut q = DeviceQuery {
        limit: 1000,
        after: None,
        ..q.clone()
    };
    let first = dir.list(&q, NOW, &THRESHOLDS)?;
    let mut seen = first.items.len();
    let mut next = first.next;
    while seen < first.total / 2 {
        let Some(n) = next else { break };
        q.after = Some(n);
        let page = dir.list(&q, NOW, &THRESHOLDS)?;
        seen += page.items.len();
        next = page.next;
    }
    Ok(next)
}

#[derive(Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
    max: f64,
}

fn figures(mut ms: Vec<f64>) -> Figures {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Figures {
        p50: at(0.5),
        p99: at(0.99),
        max: ms[ms.len() - 1],
    }
}

fn time_list(
    dir: &DeviceDirectory,
    q: &DeviceQuery,
    iterations: usize,
) -> BenchResult<(Figures, usize, Vec<f64>)> {
    let mut ms = Vec::with_capacity(iterations);
    let mut total = 0;
    for _ in 0..iterations {
        let t = Instant::now();
        let page = dir.list(q, NOW, &THRESHOLDS)?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        total = page.total;
        std::hint::black_box(page);
    }
    Ok((figures(ms.clone()), total, ms))
}

/// Every device in the list's order, as the CSV export reads them.
fn export_all(dir: &DeviceDirectory) -> BenchResult<usize> {
    let rows = dir.export(&DeviceQuery::default(), NOW, &THRESHOLDS)?;
    Ok(rows.map(std::hint::black_box).count())
}

struct Args {
    devices: usize,
    iterations: usize,
    filter: Option<String>,
}

fn args() -> BenchResult<Args> {
    let mut out = Args {
        devices: 100_000,
        iterations: 50,
        filter: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--devices" => out.devices = it.next().ok_or("--devices needs a number")?.parse()?,
            "--iterations" => {
                out.iterations = it.next().ok_or("--iterations needs a number")?.parse()?;
            }
            "--only" => out.filter = it.next(),
            // `cargo bench` passes `--bench`; other harness flags do not apply.
            _ => {}
        }
    }
    out.iterations = out.iterations.max(1);
    Ok(out)
}

fn main() -> BenchResult<()> {
    let args = args()?;
    let t = Instant::now();
    let dir = build(args.devices);
    println!(
        "directory: {} devices built through the write paths in {:.2} s; process RSS {:.1} MiB",
        dir.len(),
        t.elapsed().as_secs_f64(),
        rss_mib(),
    );
    let counts = dir.counts(NOW, &THRESHOLDS);
    let shown: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!("statuses: {}", shown.join(", "));
    println!(
        "{} iterations per query, pages of {PAGE}; times in ms\n",
        args.iterations
    );
    println!(
        "{:<36} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7}",
        "query", "total", "p50", "p99", "max", "deep50", "deep99", "max"
    );
    let mut all = Vec::new();
    let mut worst: Option<(String, f64)> = None;
    for case in cases() {
        if args
            .filter
            .as_ref()
            .is_some_and(|f| !case.name.contains(f.as_str()))
        {
            continue;
        }
        let (first, total, mut ms) = time_list(&dir, &case.query, args.iterations)?;
        all.append(&mut ms);
        let deep = match halfway_cursor(&dir, &case.query)? {
            Some(cursor) => {
                let q = DeviceQuery {
                    after: Some(cursor),
                    ..case.query.clone()
                };
                let (f, _, mut ms) = time_list(&dir, &q, args.iterations)?;
                all.append(&mut ms);
                Some(f)
            }
            None => None,
        };
        let deep_text = deep.map_or_else(
            || format!("{:>7} {:>7} {:>7}", "-", "-", "-"),
            |d| format!("{:>7.2} {:>7.2} {:>7.2}", d.p50, d.p99, d.max),
        );
        println!(
            "{:<36} {:>7} | {:>7.2} {:>7.2} {:>7.2} | {deep_text}",
            case.name, total, first.p50, first.p99, first.max
        );
        let p99 = deep.map_or(first.p99, |d| d.p99.max(first.p99));
        if worst.as_ref().is_none_or(|(_, w)| p99 > *w) {
            worst = Some((case.name.clone(), p99));
        }
    }
    if !all.is_empty() {
        let f = figures(all);
        println!(
            "\nevery page above: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            f.p50, f.p99, f.max
        );
    }
    if let Some((name, p99)) = worst {
        println!("slowest query: {name} (p99 {p99:.2} ms)");
    }

    let mut export_ms = Vec::new();
    let mut rows = 0;
    for _ in 0..3 {
        let t = Instant::now();
        rows = export_all(&dir)?;
        export_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let best = export_ms.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "export of every device ({rows} rows, summaries built, no CSV): best of 3 {best:.1} ms, median {:.1} ms",
        figures(export_ms).p50
    );

    // The hottest write path: every check-in touches its device.
    let ids = dir.keys_matching(|f| f.enrollment.is_some());
    let ids: Vec<String> = ids
        .iter()
        .filter_map(|k| dir.get(k).and_then(|f| f.enrollment.map(|e| e.id)))
        .collect();
    let t = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        dir.touch(id, Timestamp(NOW.0 - 1000 + (i % 1000) as i64));
    }
    println!(
        "touch (a check-in): {:.2} µs each over {} enrollments",
        t.elapsed().as_secs_f64() * 1e6 / ids.len().max(1) as f64,
        ids.len()
    );
    let outcomes: Vec<(String, Option<PushOutcome>)> = ids
        .iter()
        .take(10_000)
        .map(|id| (id.clone(), Some(PushOutcome::Sent { apns_id: None })))
        .collect();
    let t = Instant::now();
    dir.pushes_recorded(&outcomes, NOW);
    println!(
        "pushes_recorded of {} outcomes: {:.2} ms",
        outcomes.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );

    // Writes that bring names no device had: the sort ranks are recomputed once per call.
    let keys = dir.keys_matching(|f| f.preenroll.is_some());
    for n in [1, 1000] {
        let recs: Vec<PreenrollRecord> = keys
            .iter()
            .take(n)
            .filter_map(|k| dir.get(k).and_then(|f| f.preenroll).map(|r| *r))
            .enumerate()
            .map(|(i, mut r)| {
                r.name = Some(format!("Renamed Person {n} {i}"));
                r
            })
            .collect();
        let t = Instant::now();
        dir.put_preenrolled(recs);
        println!(
            "put_preenrolled of {n} record(s) with new names: {:.2} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }

    let t = Instant::now();
    for _ in 0..20 {
        std::hint::black_box(dir.counts(NOW, &THRESHOLDS));
    }
    println!(
        "status counts: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
    Ok(())
}
