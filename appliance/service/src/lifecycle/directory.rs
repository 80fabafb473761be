//! The device directory: every device the appliance knows of, keyed by serial number, joining
//! its pre-enrollment record, ABM records and enrollment in memory.
//!
//! The store holds the facts; the directory is built from it at start-up and kept current by
//! the service's write paths, which hand it each record after its write committed. It exists
//! so that the device list can filter on a derived, time-dependent status and sort on any
//! column at 100,000 devices without a table scan per request.
//!
//! Each device has a compact row, computed when its facts change, in one dense array: its
//! status as a [`StatusSchedule`] (a request derives each status with one comparison, for
//! any `now` and thresholds), its last contact, its ABM connections as bits, and its name and
//! model as ranks in a collation of the distinct lower-cased texts, so that every sort
//! compares numbers. A page is one pass over the rows that keeps only the best `limit + 1`
//! after the cursor (a partial selection, not a sort) and counts the matches; the unfiltered
//! list by serial number walks the key order from the cursor and stops after one page.
//!
//! What it cannot do yet: a search is still a substring scan of every device's search text
//! (one buffer, a few milliseconds per 100,000 devices; no index), and an export orders all
//! matching devices at once (it keeps their keys, and builds the rows in chunks).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Deref, DerefMut};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use base64::Engine as _;
use memchr::memmem::Finder;
use serde::Serialize;

use super::status::{
    explain, schedule, status, AbmFacts, AssignmentFacts, Clock, DeviceFacts, DeviceStatus,
    EnrollmentFacts, Explanation, StatusSchedule, Thresholds,
};
use crate::error::{ServiceError, ServiceResult};
use crate::ports::{
    pages, AbmDeviceRecord, Channel, EnrollmentRecord, EnrollmentSource, PreenrollRecord,
    PushOutcome, Store, Timestamp,
};

/// How many records the start-up load reads per store call.
const LOAD_PAGE: usize = 2000;
/// How many devices an export turns into rows per hold of the lock: short enough that
/// check-ins waiting to write are not held up, long enough that locking costs nothing.
const EXPORT_CHUNK: usize = 1000;
/// Bytes of a serial number a row holds inline (Apple's have 10 or 12).
const PREFIX: usize = 16;
/// The connection bit standing for every connection past the first 63 (rare enough that
/// those devices are checked against their facts).
const CONN_BEYOND: u64 = 1 << 63;
/// Separates the fields of a search text; a search for it falls back to the facts.
const FIELD_SEP: char = '\0';
/// A row's text id before it has one.
const NO_TEXT: u32 = u32::MAX;

#[derive(Default)]
struct State {
    /// Serial number (or, for a device that reported none, its enrollment id) → slot in
    /// `rows`, `search` and `facts`.
    keys: BTreeMap<String, usize>,
    /// By slot: what a list request reads. Dense (a removal moves the last slot into the
    /// hole), so that a request is one pass over contiguous memory.
    rows: Vec<Row>,
    /// By slot: the searchable fields, ASCII-lower-cased, each once, separated by
    /// [`FIELD_SEP`].
    search: SearchTexts,
    /// By slot: the facts, read for the rows of a page.
    facts: Vec<DeviceFacts>,
    /// The lower-cased names and models rows sort by.
    names: Collation,
    models: Collation,
    /// Device-channel enrollment id → key in `keys`.
    by_enrollment: HashMap<String, String>,
    /// ABM connection names in the order first seen; bit `i` of [`Row::connections`] is
    /// `connections[i]`. Names are never forgotten, so bits keep their meaning.
    connections: Vec<String>,
}

/// A device as a list request reads it (64 bytes); computed from its facts when they change.
#[derive(Debug, Clone, Copy)]
struct Row {
    /// The key's first [`PREFIX`] bytes and length (see [`TextKey`]).
    serial_prefix: u128,
    serial_len: u32,
    /// Ranks of the lower-cased name and model in [`State::names`] and [`State::models`],
    /// and their ids there.
    name: u32,
    model: u32,
    name_id: u32,
    model_id: u32,
    /// Last contact of the enrollment; `i64::MIN` for devices never enrolled.
    last_seen: i64,
    /// The status schedule, flattened: `to` once `since` is older than the threshold
    /// `clock` names, `initial` before (see [`Clocks`]).
    since: i64,
    clock: u8,
    initial: u8,
    to: u8,
    /// ABM connections that list (or listed) the device, as bits of [`State::connections`].
    connections: u64,
}

impl Row {
    /// A new device's row until its facts are indexed.
    fn blank(key: &str) -> Self {
        let serial = TextKey::of(key);
        Row {
            serial_prefix: serial.prefix,
            serial_len: serial.len,
            name: 0,
            model: 0,
            name_id: NO_TEXT,
            model_id: NO_TEXT,
            last_seen: i64::MIN,
            since: 0,
            clock: 0,
            initial: 0,
            to: 0,
            connections: 0,
        }
    }

    fn serial(&self) -> TextKey {
        TextKey {
            prefix: self.serial_prefix,
            len: self.serial_len,
        }
    }

    /// The parts of the row check-ins and pushes change: last contact and status schedule.
    fn set_times(&mut self, f: &DeviceFacts) {
        let StatusSchedule { initial, change } = schedule(f);
        self.last_seen = f.enrollment.as_ref().map_or(i64::MIN, |e| e.last_seen_at.0);
        self.initial = rank(initial);
        self.to = change.map_or(self.initial, |c| rank(c.to));
        self.since = change.map_or(0, |c| c.since.0);
        self.clock = clock_index(change.map(|c| c.after));
    }
}

/// A text's first [`PREFIX`] bytes as a big-endian number (zero-padded), and its length.
///
/// Comparing two keys orders the texts as `str` does, without reading them, unless both are
/// longer than the prefix and share it: when the prefixes differ, the first differing byte
/// decides (a text that ended earlier has a 0 there and is a prefix of the other); when they
/// are equal and one text fits in the prefix, that one is a prefix of the other, so the
/// lengths decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TextKey {
    prefix: u128,
    len: u32,
}

impl TextKey {
    fn of(s: &str) -> Self {
        let mut bytes = [0u8; PREFIX];
        for (b, c) in bytes.iter_mut().zip(s.bytes()) {
            *b = c;
        }
        TextKey {
            prefix: u128::from_be_bytes(bytes),
            len: u32::try_from(s.len()).unwrap_or(u32::MAX),
        }
    }

    /// Orders the texts of `self` and `other`; `a` and `b` give the whole texts, read only
    /// when the keys cannot decide.
    fn cmp_texts<'t>(
        self,
        other: TextKey,
        a: impl FnOnce() -> &'t str,
        b: impl FnOnce() -> &'t str,
    ) -> Ordering {
        self.prefix.cmp(&other.prefix).then_with(|| {
            if self.len.min(other.len) as usize <= PREFIX {
                self.len.cmp(&other.len)
            } else {
                a().cmp(b())
            }
        })
    }
}

/// The distinct texts of one sort column (lower-cased names, or models) with their order, so
/// that rows sort by numbers. Each text has a rank, odd, ordered as the texts are; the even
/// numbers between stand for texts no device has (a cursor's, after its device changed).
///
/// Ranks are recomputed after a write that added a text (one pass over the texts and one
/// over the rows, a few milliseconds at 100,000 devices); a write that only reuses texts, as
/// check-ins and most updates do, costs a lookup.
#[derive(Default)]
struct Collation {
    ids: BTreeMap<Arc<str>, u32>,
    /// By id: the text (empty once free), how many rows use it, its rank.
    texts: Vec<Arc<str>>,
    refs: Vec<u32>,
    ranks: Vec<u32>,
    free: Vec<u32>,
    /// A text was added since the ranks were computed.
    stale: bool,
}

impl Collation {
    fn shrink_to_fit(&mut self) {
        self.texts.shrink_to_fit();
        self.refs.shrink_to_fit();
        self.ranks.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(|t| &**t)
    }

    fn rank(&self, id: u32) -> u32 {
        self.ranks.get(id as usize).copied().unwrap_or(0)
    }

    /// The id of `text` for a row that had `old`: the same when the text did not change.
    fn replace(&mut self, old: u32, text: &str) -> u32 {
        if self.text(old) == Some(text) && old != NO_TEXT {
            return old;
        }
        let id = self.intern(text);
        self.release(old);
        id
    }

    fn intern(&mut self, text: &str) -> u32 {
        if let Some(id) = self.ids.get(text).copied() {
            if let Some(r) = self.refs.get_mut(id as usize) {
                *r += 1;
            }
            return id;
        }
        let text: Arc<str> = Arc::from(text);
        let id = match self.free.pop() {
            Some(id) => {
                if let (Some(t), Some(r)) = (
                    self.texts.get_mut(id as usize),
                    self.refs.get_mut(id as usize),
                ) {
                    *t = Arc::clone(&text);
                    *r = 1;
                }
                id
            }
            None => {
                self.texts.push(Arc::clone(&text));
                self.refs.push(1);
                self.ranks.push(0);
                u32::try_from(self.texts.len() - 1).unwrap_or(NO_TEXT)
            }
        };
        self.ids.insert(text, id);
        self.stale = true;
        id
    }

    fn release(&mut self, id: u32) {
        let Some(r) = self.refs.get_mut(id as usize) else {
            return;
        };
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        if let Some(t) = self.texts.get_mut(id as usize) {
            let text = std::mem::replace(t, Arc::from(""));
            self.ids.remove(&text);
            self.free.push(id);
        }
        // A gap in the ranks keeps the others in order: nothing to recompute.
    }

    /// Recomputes the ranks if a text was added; whether they changed.
    fn settle(&mut self) -> bool {
        if !std::mem::take(&mut self.stale) {
            return false;
        }
        let mut next = 1u32;
        for id in self.ids.values() {
            if let Some(r) = self.ranks.get_mut(*id as usize) {
                *r = next;
            }
            next = next.saturating_add(2);
        }
        true
    }

    /// Where `text` sorts among the ranks: its own rank, or the even number just after the
    /// text before it.
    fn position(&self, text: &str) -> u32 {
        match self.ids.get(text) {
            Some(id) => self.rank(*id),
            None => self
                .ids
                .range::<str, _>((Bound::Unbounded, Bound::Excluded(text)))
                .next_back()
                .map_or(0, |(_, id)| self.rank(*id) + 1),
        }
    }
}

/// Every device's search text in one buffer, so that a search is one sequential scan with
/// one searcher rather than a lookup per device.
///
/// A text that changes is appended anew and its old copy left as garbage; the buffer is
/// rewritten without garbage once garbage is most of it.
#[derive(Debug, Default)]
struct SearchTexts {
    /// Texts, each followed by [`FIELD_SEP`] (so that no match spans two devices).
    buf: String,
    /// By slot: where its text starts in `buf` and its length; [`NO_SPAN`] before it has one.
    spans: Vec<(usize, usize)>,
    /// (start, slot) of the texts appended, in `buf` order; an entry is current when its
    /// slot's span still starts there.
    owners: Vec<(usize, usize)>,
    /// Bytes of `buf` no slot points at.
    garbage: usize,
}

/// A span for no text.
const NO_SPAN: (usize, usize) = (usize::MAX, 0);
/// Below this, garbage is left alone.
const SEARCH_COMPACT_MIN: usize = 1 << 16;

impl SearchTexts {
    fn shrink_to_fit(&mut self) {
        self.buf.shrink_to_fit();
        self.spans.shrink_to_fit();
        self.owners.shrink_to_fit();
    }

    fn text(&self, slot: usize) -> &str {
        self.spans
            .get(slot)
            .and_then(|(start, len)| self.buf.get(*start..start.saturating_add(*len)))
            .unwrap_or_default()
    }

    /// A new slot, at the end.
    fn push(&mut self) {
        self.spans.push(NO_SPAN);
    }

    fn set(&mut self, slot: usize, text: &str) {
        if slot >= self.spans.len() || self.text(slot) == text {
            return;
        }
        self.drop_text(slot);
        let start = self.buf.len();
        self.buf.push_str(text);
        self.buf.push(FIELD_SEP);
        if let Some(span) = self.spans.get_mut(slot) {
            *span = (start, text.len());
        }
        self.owners.push((start, slot));
        if self.garbage >= SEARCH_COMPACT_MIN && self.garbage > self.buf.len() / 2 {
            self.compact();
        }
    }

    /// Counts a slot's text as garbage.
    fn drop_text(&mut self, slot: usize) {
        if let Some(span) = self.spans.get_mut(slot) {
            if *span != NO_SPAN {
                self.garbage += span.1 + FIELD_SEP.len_utf8();
            }
            *span = NO_SPAN;
        }
    }

    /// Mirrors `swap_remove(slot)` of the other by-slot arrays.
    fn swap_remove(&mut self, slot: usize) {
        if slot >= self.spans.len() {
            return;
        }
        self.drop_text(slot);
        self.spans.swap_remove(slot);
        let Some(&(start, _)) = self.spans.get(slot) else {
            return;
        };
        // The last slot moved here: its owner entry must say so.
        if let Ok(i) = self.owners.binary_search_by_key(&start, |(s, _)| *s) {
            if let Some(owner) = self.owners.get_mut(i) {
                owner.1 = slot;
            }
        }
    }

    fn compact(&mut self) {
        let live: usize = self
            .spans
            .iter()
            .filter(|s| **s != NO_SPAN)
            .map(|(_, len)| len + FIELD_SEP.len_utf8())
            .sum();
        let mut buf = String::with_capacity(live);
        let mut owners = Vec::with_capacity(self.spans.len());
        for (slot, span) in self.spans.iter_mut().enumerate() {
            if *span == NO_SPAN {
                continue;
            }
            let text = self
                .buf
                .get(span.0..span.0.saturating_add(span.1))
                .unwrap_or_default();
            let start = buf.len();
            buf.push_str(text);
            buf.push(FIELD_SEP);
            *span = (start, text.len());
            owners.push((start, slot));
        }
        self.buf = buf;
        self.owners = owners;
        self.garbage = 0;
    }

    /// A bit per slot: whether its text contains the finder's needle (which holds no
    /// [`FIELD_SEP`]).
    fn matches(&self, finder: &Finder<'_>) -> Vec<u64> {
        let mut hits = vec![0u64; self.spans.len().div_ceil(64)];
        let hay = self.buf.as_bytes();
        let mut pos = 0;
        let mut owner = 0;
        while let Some(found) = hay.get(pos..).and_then(|h| finder.find(h)) {
            let at = pos + found;
            // The last text that starts at or before the match.
            while self.owners.get(owner + 1).is_some_and(|(s, _)| *s <= at) {
                owner += 1;
            }
            pos = at + 1;
            let Some(&(start, slot)) = self.owners.get(owner) else {
                continue;
            };
            let Some(&(span_start, len)) = self.spans.get(slot) else {
                continue;
            };
            // Not in garbage: the slot's current text, and the match inside it.
            if span_start == start && at < start + len {
                if let Some(word) = hits.get_mut(slot / 64) {
                    *word |= 1 << (slot % 64);
                }
                // Once is enough: on to the next text.
                pos = start + len + FIELD_SEP.len_utf8();
            }
        }
        hits
    }
}

/// A status's place in the "sort by status" order ([`DeviceStatus::ALL`]).
fn rank(s: DeviceStatus) -> u8 {
    DeviceStatus::ALL
        .iter()
        .position(|x| *x == s)
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(u8::MAX)
}

fn clock_index(c: Option<Clock>) -> u8 {
    match c {
        None => 0,
        Some(Clock::EnrollingGrace) => 1,
        Some(Clock::OfflineAfter) => 2,
    }
}

/// One request's `now` minus each threshold, by [`Row::clock`]: a row's status has changed
/// when its `since` is below its entry (the comparison [`StatusSchedule::at`] makes).
#[derive(Debug, Clone, Copy)]
struct Clocks([i64; 3]);

impl Clocks {
    fn new(now: Timestamp, th: &Thresholds) -> Self {
        let cut = |c| now.minus(th.of(c)).0;
        // Nothing is below i64::MIN: a row without a change keeps its initial status.
        Clocks([
            i64::MIN,
            cut(Clock::EnrollingGrace),
            cut(Clock::OfflineAfter),
        ])
    }

    /// The row's status rank.
    fn rank(&self, r: &Row) -> u8 {
        let cut = self
            .0
            .get(usize::from(r.clock))
            .copied()
            .unwrap_or(i64::MIN);
        if r.since < cut {
            r.to
        } else {
            r.initial
        }
    }
}

/// The name the list sorts by.
fn name_text(f: &DeviceFacts) -> String {
    f.preenroll
        .as_ref()
        .and_then(|p| p.name.as_deref())
        .unwrap_or_default()
        .to_lowercase()
}

/// The model the list sorts by.
fn model_text(f: &DeviceFacts) -> String {
    model(f).unwrap_or_default().to_lowercase()
}

/// The fields a search looks in, one string (see [`State::search`]).
fn search_text(f: &DeviceFacts) -> String {
    let mut fields: Vec<&str> = vec![&f.serial];
    if let Some(p) = &f.preenroll {
        fields.extend(
            [&p.name, &p.email, &p.device_name]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    if let Some(e) = &f.enrollment {
        fields.push(&e.id);
        fields.extend(
            [&e.device_name, &e.model]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    }
    fields.extend(f.abm.iter().map(|a| a.model.as_str()));
    let mut text = String::new();
    for (i, field) in fields.iter().enumerate() {
        // An empty field matches only the empty search, which matches every device anyway.
        if field.is_empty() || fields[..i].iter().any(|g| g.eq_ignore_ascii_case(field)) {
            continue;
        }
        if !text.is_empty() {
            text.push(FIELD_SEP);
        }
        text.push_str(field);
    }
    text.make_ascii_lowercase();
    text
}

/// Bits of the ABM connections that list (or listed) the device, interning new names.
fn connection_bits(f: &DeviceFacts, connections: &mut Vec<String>) -> u64 {
    let mut bits = 0u64;
    for a in &f.abm {
        let id = match connections.iter().position(|c| *c == a.connection) {
            Some(id) => id,
            None => {
                connections.push(a.connection.clone());
                connections.len() - 1
            }
        };
        bits |= if id < 63 { 1 << id } else { CONN_BEYOND };
    }
    bits
}

impl State {
    /// Gives back what the vectors reserved beyond their length: after the start-up load
    /// they hold every device, and doubling growth may have left up to half of them spare.
    fn shrink_to_fit(&mut self) {
        self.rows.shrink_to_fit();
        self.facts.shrink_to_fit();
        self.search.shrink_to_fit();
        self.names.shrink_to_fit();
        self.models.shrink_to_fit();
        self.by_enrollment.shrink_to_fit();
    }

    /// See [`DeviceDirectory::resolve`].
    fn resolve(&self, key: &str) -> Option<String> {
        if self.keys.contains_key(key) {
            return Some(key.to_string());
        }
        let upper = key.to_ascii_uppercase();
        if self.keys.contains_key(&upper) {
            return Some(upper);
        }
        self.by_enrollment.get(key).cloned()
    }

    fn facts_of(&self, key: &str) -> Option<&DeviceFacts> {
        self.facts.get(*self.keys.get(key)?)
    }

    /// The slot of `key`, added (with no facts yet) if new. The caller fills the facts and
    /// calls [`State::reindex`].
    fn slot_or_insert(&mut self, key: &str) -> usize {
        if let Some(slot) = self.keys.get(key) {
            return *slot;
        }
        let slot = self.facts.len();
        self.facts.push(DeviceFacts {
            serial: key.to_owned(),
            ..DeviceFacts::default()
        });
        self.rows.push(Row::blank(key));
        self.search.push();
        self.keys.insert(key.to_owned(), slot);
        slot
    }

    /// Recomputes a device's row after its facts changed. The ranks of texts it adds are
    /// set when the write ends ([`Writing`]).
    fn reindex(&mut self, slot: usize) {
        let (Some(f), Some(row)) = (self.facts.get(slot), self.rows.get_mut(slot)) else {
            return;
        };
        row.name_id = self.names.replace(row.name_id, &name_text(f));
        row.model_id = self.models.replace(row.model_id, &model_text(f));
        row.name = self.names.rank(row.name_id);
        row.model = self.models.rank(row.model_id);
        row.connections = connection_bits(f, &mut self.connections);
        row.set_times(f);
        self.search.set(slot, &search_text(f));
    }

    /// Forgets a device; the last slot moves into its place.
    fn remove(&mut self, key: &str) {
        let Some(slot) = self.keys.remove(key) else {
            return;
        };
        if slot >= self.facts.len() {
            return;
        }
        let row = self.rows.swap_remove(slot);
        self.names.release(row.name_id);
        self.models.release(row.model_id);
        self.search.swap_remove(slot);
        self.facts.swap_remove(slot);
        if let Some(moved) = self.facts.get(slot) {
            if let Some(s) = self.keys.get_mut(&moved.serial) {
                *s = slot;
            }
        }
    }

    /// Brings the rows' text ranks up to date after texts were added.
    fn settle(&mut self) {
        let names = self.names.settle();
        let models = self.models.settle();
        if names || models {
            for row in &mut self.rows {
                row.name = self.names.rank(row.name_id);
                row.model = self.models.rank(row.model_id);
            }
        }
    }

    /// The slot of a device-channel enrollment, if it still speaks for its device.
    fn enrollment_slot(&self, enrollment_id: &str) -> Option<usize> {
        let key = self.by_enrollment.get(enrollment_id)?;
        let slot = *self.keys.get(key)?;
        self.facts
            .get(slot)?
            .enrollment
            .as_ref()
            .filter(|e| e.id == enrollment_id)
            .map(|_| slot)
    }

    /// Changes an enrollment's facts with `change`, then the row's times.
    fn with_enrollment(&mut self, enrollment_id: &str, change: impl FnOnce(&mut EnrollmentFacts)) {
        let Some(slot) = self.enrollment_slot(enrollment_id) else {
            return;
        };
        let (Some(facts), Some(row)) = (self.facts.get_mut(slot), self.rows.get_mut(slot)) else {
            return;
        };
        if let Some(e) = facts.enrollment.as_mut() {
            change(e);
        }
        row.set_times(facts);
    }
}

/// The directory's state held for writing; settles the text ranks when dropped, so that no
/// write path can leave rows with ranks of texts it added.
struct Writing<'a>(RwLockWriteGuard<'a, State>);

impl Deref for Writing<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

impl DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.settle();
    }
}

/// See the module documentation. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct DeviceDirectory {
    state: RwLock<State>,
}

impl std::fmt::Debug for DeviceDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceDirectory")
            .field("devices", &self.read().keys.len())
            .finish()
    }
}

/// ABM facts taken from records about to be written, applied once the write committed (so the
/// records themselves can move into the write without a copy).
#[derive(Debug, Default)]
pub struct AbmUpdate(Vec<(String, AbmFacts)>);

impl AbmUpdate {
    /// The facts of `recs`.
    pub fn of(recs: &[AbmDeviceRecord]) -> Self {
        AbmUpdate(
            recs.iter()
                .map(|r| (r.serial.clone(), abm_facts(r)))
                .collect(),
        )
    }
}

/// Which column the list is sorted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Serial,
    /// Most in need of an admin first (see [`DeviceStatus`]).
    Status,
    LastSeen,
    Name,
    Model,
}

impl SortKey {
    /// Parses the API's names: `serial`, `status`, `last_seen`, `name`, `model`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "serial" => SortKey::Serial,
            "status" => SortKey::Status,
            "last_seen" => SortKey::LastSeen,
            "name" => SortKey::Name,
            "model" => SortKey::Model,
            _ => return None,
        })
    }
}

/// A device list request.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    /// Any of these statuses (empty: all).
    pub statuses: Vec<DeviceStatus>,
    /// Case-insensitive substring of serial, name, email, device name, model or enrollment id.
    pub search: Option<String>,
    /// Only devices an ABM connection of this name lists.
    pub connection: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    /// The previous page's `next`.
    pub after: Option<String>,
    pub limit: usize,
}

/// One row of the device list.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub serial: String,
    pub enrollment_id: Option<String>,
    #[serde(flatten)]
    pub explanation: Explanation,
    pub name: Option<String>,
    pub email: Option<String>,
    pub ownership: Option<&'static str>,
    pub platform: Option<&'static str>,
    pub model: Option<String>,
    pub os_version: Option<String>,
    pub device_name: Option<String>,
    pub abm_connection: Option<String>,
    pub profile_status: Option<String>,
    pub preenrolled: bool,
    #[serde(serialize_with = "super::rfc3339::opt")]
    pub last_seen_at: Option<Timestamp>,
    #[serde(serialize_with = "super::rfc3339::opt")]
    pub enrolled_at: Option<Timestamp>,
}

/// A page of the device list.
#[derive(Debug, Clone, Serialize)]
pub struct DevicePage {
    pub items: Vec<DeviceSummary>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
    /// How many devices match the filters (all pages).
    pub total: usize,
}

/// Counts by status, for dashboards.
pub type StatusCounts = BTreeMap<&'static str, usize>;

/// A sort value: what the list orders by before the serial number. It is what a cursor
/// carries (with the serial number), so that the next page starts right after the last row
/// whatever changed in between.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum SortVal {
    Int(i64),
    Text(String),
}

fn sort_val(key: SortKey, f: &DeviceFacts, st: DeviceStatus) -> SortVal {
    match key {
        SortKey::Serial => SortVal::Int(0),
        SortKey::Status => SortVal::Int(i64::from(rank(st))),
        SortKey::LastSeen => {
            SortVal::Int(f.enrollment.as_ref().map_or(i64::MIN, |e| e.last_seen_at.0))
        }
        SortKey::Name => SortVal::Text(name_text(f)),
        SortKey::Model => SortVal::Text(model_text(f)),
    }
}

fn model(f: &DeviceFacts) -> Option<String> {
    f.enrollment
        .as_ref()
        .and_then(|e| e.model.clone())
        .or_else(|| f.current_abm().map(|a| a.model.clone()))
        .filter(|m| !m.is_empty())
}

fn encode_cursor(val: &SortVal, serial: &str) -> String {
    let json = serde_json::json!([val, serial]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(s: &str) -> ServiceResult<(SortVal, String)> {
    let bad = || {
        ServiceError::bad_request(
            "INVALID_CURSOR",
            "`after` is not a cursor this list handed out; start again from the first page",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// Where a cursor's sort value falls among the rows' numeric sort values.
#[derive(Debug, Clone, Copy)]
enum CursorVal {
    At(i64),
    /// Below every row's value (a number where the rows sort by text: `SortVal` orders
    /// numbers first).
    BelowAll,
    /// Above every row's value (a text where the rows sort by number).
    AboveAll,
}

/// A decoded `after`, placed among the rows: the last row of the previous page.
#[derive(Debug)]
struct Cursor {
    val: CursorVal,
    serial: String,
    serial_key: TextKey,
}

impl Cursor {
    fn place(st: &State, sort: SortKey, (val, serial): (SortVal, String)) -> Self {
        let val = match (sort, &val) {
            (SortKey::Name, SortVal::Text(t)) => CursorVal::At(i64::from(st.names.position(t))),
            (SortKey::Model, SortVal::Text(t)) => CursorVal::At(i64::from(st.models.position(t))),
            (SortKey::Name | SortKey::Model, SortVal::Int(_)) => CursorVal::BelowAll,
            (_, SortVal::Text(_)) => CursorVal::AboveAll,
            (_, SortVal::Int(v)) => CursorVal::At(*v),
        };
        Cursor {
            val,
            serial_key: TextKey::of(&serial),
            serial,
        }
    }
}

fn matches_search(f: &DeviceFacts, needle: &str) -> bool {
    let hit = |s: &str| contains_ci(s, needle);
    if hit(&f.serial) {
        return true;
    }
    if let Some(p) = &f.preenroll {
        if [&p.name, &p.email, &p.device_name]
            .into_iter()
            .flatten()
            .any(|s| hit(s))
        {
            return true;
        }
    }
    if let Some(e) = &f.enrollment {
        if hit(&e.id)
            || [&e.device_name, &e.model]
                .into_iter()
                .flatten()
                .any(|s| hit(s))
        {
            return true;
        }
    }
    f.abm.iter().any(|a| hit(&a.model))
}

/// ASCII case-insensitive substring test without allocating; `needle` is lower-case.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    h.windows(n.len())
        .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// How a query's ABM connection filter reads rows.
#[derive(Debug, Clone)]
enum ConnectionFilter {
    Any,
    /// No device was ever listed by it.
    Unknown,
    Bit(u64),
    /// Past the first 63 connections: the bit says "maybe", the facts decide.
    Beyond(String),
}

/// How a query's search reads devices.
#[derive(Debug, Clone)]
enum SearchFilter {
    Any,
    /// In the search texts, with a searcher built once per query; `hits` has a bit per
    /// slot from one scan of them all, for a pass over every row.
    Text {
        finder: Box<Finder<'static>>,
        hits: Option<Vec<u64>>,
    },
    /// A search for [`FIELD_SEP`] itself: field by field in the facts.
    Facts(String),
}

/// A query's filters, resolved against the directory.
#[derive(Debug, Clone)]
struct Filter {
    /// Bit per status rank; 0 for every status.
    statuses: u16,
    connection: ConnectionFilter,
    search: SearchFilter,
}

impl Filter {
    fn new(st: &State, q: &DeviceQuery) -> Self {
        let statuses = q.statuses.iter().fold(0u16, |m, s| {
            m | 1u16.checked_shl(u32::from(rank(*s))).unwrap_or(0)
        });
        let connection = match &q.connection {
            None => ConnectionFilter::Any,
            Some(c) => match st.connections.iter().position(|x| x == c) {
                None => ConnectionFilter::Unknown,
                Some(id) if id < 63 => ConnectionFilter::Bit(1 << id),
                Some(_) => ConnectionFilter::Beyond(c.clone()),
            },
        };
        let needle = q.search.as_ref().map(|s| s.trim().to_ascii_lowercase());
        let search = match needle {
            // The empty search matches every device.
            None => SearchFilter::Any,
            Some(n) if n.is_empty() => SearchFilter::Any,
            Some(n) if n.contains(FIELD_SEP) => SearchFilter::Facts(n),
            Some(n) => {
                let finder = Box::new(Finder::new(n.as_bytes()).into_owned());
                let hits = Some(st.search.matches(&finder));
                SearchFilter::Text { finder, hits }
            }
        };
        Filter {
            statuses,
            connection,
            search,
        }
    }

    /// Drops the per-slot search results, which hold only until the directory changes.
    fn forget_hits(&mut self) {
        if let SearchFilter::Text { hits, .. } = &mut self.search {
            *hits = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.statuses == 0
            && matches!(self.connection, ConnectionFilter::Any)
            && matches!(self.search, SearchFilter::Any)
    }

    /// Whether the device in `slot`, whose row is `row`, passes.
    fn passes(&self, st: &State, slot: usize, row: &Row, clocks: &Clocks) -> bool {
        if self.statuses != 0
            && self.statuses & 1u16.checked_shl(u32::from(clocks.rank(row))).unwrap_or(0) == 0
        {
            return false;
        }
        let listed = match &self.connection {
            ConnectionFilter::Any => true,
            ConnectionFilter::Unknown => false,
            ConnectionFilter::Bit(b) => row.connections & b != 0,
            ConnectionFilter::Beyond(name) => {
                row.connections & CONN_BEYOND != 0
                    && st
                        .facts
                        .get(slot)
                        .is_some_and(|f| f.abm.iter().any(|a| a.connection == *name))
            }
        };
        listed
            && match &self.search {
                SearchFilter::Any => true,
                SearchFilter::Text {
                    hits: Some(hits), ..
                } => hits
                    .get(slot / 64)
                    .is_some_and(|w| w & (1 << (slot % 64)) != 0),
                SearchFilter::Text { finder, hits: None } => {
                    finder.find(st.search.text(slot).as_bytes()).is_some()
                }
                SearchFilter::Facts(n) => st.facts.get(slot).is_some_and(|f| matches_search(f, n)),
            }
    }
}

/// A query's order over slots: sort value, then serial number; reversed when descending.
struct Order<'s> {
    st: &'s State,
    sort: SortKey,
    descending: bool,
    clocks: Clocks,
}

impl<'s> Order<'s> {
    /// The row's sort value as a number: the text columns by rank.
    fn val(&self, r: &Row) -> i64 {
        match self.sort {
            SortKey::Serial => 0,
            SortKey::Status => i64::from(self.clocks.rank(r)),
            SortKey::LastSeen => r.last_seen,
            SortKey::Name => i64::from(r.name),
            SortKey::Model => i64::from(r.model),
        }
    }

    fn dir(&self, o: Ordering) -> Ordering {
        if self.descending {
            o.reverse()
        } else {
            o
        }
    }

    /// Orders the serial numbers of a row and another; the whole texts are read only for
    /// keys longer than [`PREFIX`] that share it.
    fn cmp_serial<'t>(&self, a: usize, b: TextKey, b_text: impl FnOnce() -> &'t str) -> Ordering
    where
        's: 't,
    {
        let st = self.st;
        let ra = st.rows.get(a).map(Row::serial).unwrap_or_default();
        ra.cmp_texts(
            b,
            || st.facts.get(a).map_or("", |f| f.serial.as_str()),
            b_text,
        )
    }

    fn cmp(&self, a: usize, b: usize) -> Ordering {
        let st = self.st;
        let (Some(ra), Some(rb)) = (st.rows.get(a), st.rows.get(b)) else {
            return Ordering::Equal;
        };
        let by_val = self.val(ra).cmp(&self.val(rb));
        self.dir(by_val.then_with(|| {
            self.cmp_serial(a, rb.serial(), || {
                st.facts.get(b).map_or("", |f| f.serial.as_str())
            })
        }))
    }

    /// How a row compares with the cursor (`Greater`: it comes after it).
    fn cmp_cursor(&self, a: usize, c: &Cursor) -> Ordering {
        let Some(r) = self.st.rows.get(a) else {
            return Ordering::Less;
        };
        let by_val = match c.val {
            CursorVal::At(v) => self.val(r).cmp(&v),
            CursorVal::BelowAll => Ordering::Greater,
            CursorVal::AboveAll => Ordering::Less,
        };
        self.dir(by_val.then_with(|| self.cmp_serial(a, c.serial_key, || &c.serial)))
    }

    /// The slots of matching devices after the cursor, in order: all of them, or the first
    /// `keep`. Also how many devices match, before or after the cursor.
    fn select(
        &self,
        filter: &Filter,
        cursor: Option<&Cursor>,
        keep: Option<usize>,
    ) -> (Vec<usize>, usize) {
        let mut total = 0usize;
        let mut picked: Vec<usize> = Vec::new();
        // Once `picked` was cut down to `keep`, its last (worst) slot: a row not better
        // cannot make the page.
        let mut worst: Option<usize> = None;
        let keep = keep.map(|k| k.max(1));
        let cap = keep.map(|k| (2 * k).max(k + 256));
        for (slot, row) in self.st.rows.iter().enumerate() {
            if !filter.passes(self.st, slot, row, &self.clocks) {
                continue;
            }
            total += 1;
            if cursor.is_some_and(|c| self.cmp_cursor(slot, c) != Ordering::Greater) {
                continue;
            }
            if worst.is_some_and(|w| self.cmp(slot, w) != Ordering::Less) {
                continue;
            }
            picked.push(slot);
            if let (Some(k), Some(cap)) = (keep, cap) {
                if picked.len() >= cap {
                    picked.select_nth_unstable_by(k - 1, |a, b| self.cmp(*a, *b));
                    picked.truncate(k);
                    worst = picked.last().copied();
                }
            }
        }
        picked.sort_unstable_by(|a, b| self.cmp(*a, *b));
        if let Some(k) = keep {
            picked.truncate(k);
        }
        (picked, total)
    }
}

/// The first `keep` slots in serial order after the cursor's serial number: the unfiltered
/// list by serial number reads only its page.
fn serial_walk(st: &State, after: Option<&str>, descending: bool, keep: usize) -> Vec<usize> {
    let range = match (after, descending) {
        (None, _) => (Bound::Unbounded, Bound::Unbounded),
        (Some(a), false) => (Bound::Excluded(a), Bound::Unbounded),
        (Some(a), true) => (Bound::Unbounded, Bound::Excluded(a)),
    };
    let walk = st.keys.range::<str, _>(range);
    let slots = |(_, slot): (&String, &usize)| *slot;
    if descending {
        walk.rev().take(keep).map(slots).collect()
    } else {
        walk.take(keep).map(slots).collect()
    }
}

impl DeviceDirectory {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves facts that are each whole (every update is
        // one assignment followed by its row), so the data stays usable.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> Writing<'_> {
        Writing(self.state.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Builds the directory from everything stored.
    pub fn load<S: Store>(store: &S) -> ServiceResult<Self> {
        let dir = DeviceDirectory::default();
        let preenrolled = pages(
            |after| store.list_preenrolled(after, LOAD_PAGE),
            |r: &PreenrollRecord| r.serial.as_str(),
        );
        for page in preenrolled {
            dir.put_preenrolled(page?);
        }
        for conn in store.abm_connections()? {
            let devices = pages(
                |after| store.abm_devices(&conn.name, after, LOAD_PAGE),
                |r: &AbmDeviceRecord| r.serial.as_str(),
            );
            for page in devices {
                dir.put_abm(&page?);
            }
        }
        let enrollments = pages(
            |after| store.list_enrollments(after, LOAD_PAGE),
            |r: &EnrollmentRecord| r.id.as_str(),
        );
        for page in enrollments {
            for rec in &page? {
                dir.put_enrollment(rec);
            }
        }
        dir.write().shrink_to_fit();
        Ok(dir)
    }

    /// How many devices the directory holds.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether the directory holds no device.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records (or replaces) pre-enrollment records.
    pub fn put_preenrolled(&self, recs: Vec<PreenrollRecord>) {
        let mut st = self.write();
        for rec in recs {
            let slot = st.slot_or_insert(&rec.serial);
            if let Some(f) = st.facts.get_mut(slot) {
                f.preenroll = Some(Box::new(rec));
            }
            st.reindex(slot);
        }
    }

    /// Forgets pre-enrollment records (the device stays if something else knows it).
    pub fn remove_preenrolled(&self, serials: &[String]) {
        let mut st = self.write();
        for s in serials {
            let Some(slot) = st.keys.get(s).copied() else {
                continue;
            };
            let Some(f) = st.facts.get_mut(slot) else {
                continue;
            };
            f.preenroll = None;
            if f.abm.is_empty() && f.enrollment.is_none() {
                st.remove(s);
            } else {
                st.reindex(slot);
            }
        }
    }

    /// Records ABM device records after their write committed.
    pub fn put_abm(&self, recs: &[AbmDeviceRecord]) {
        self.apply_abm(AbmUpdate::of(recs));
    }

    /// Applies an [`AbmUpdate`] prepared before its records were written.
    pub fn apply_abm(&self, update: AbmUpdate) {
        let mut st = self.write();
        for (serial, facts) in update.0 {
            let slot = st.slot_or_insert(&serial);
            let Some(device) = st.facts.get_mut(slot) else {
                continue;
            };
            let abm = &mut device.abm;
            match abm.iter_mut().find(|a| a.connection == facts.connection) {
                Some(a) => *a = facts,
                None => {
                    // A bare push would reserve room for four records (over a kilobyte), and
                    // nearly every device is listed by one connection: at 100,000 devices
                    // that slack was 80 MB.
                    abm.reserve_exact(1);
                    abm.push(facts);
                }
            }
            st.reindex(slot);
        }
    }

    /// Forgets every ABM record of a deleted connection.
    pub fn remove_abm_connection(&self, connection: &str) {
        let mut st = self.write();
        let mut gone = Vec::new();
        for slot in 0..st.facts.len() {
            let Some(f) = st.facts.get_mut(slot) else {
                continue;
            };
            if !f.abm.iter().any(|a| a.connection == connection) {
                continue;
            }
            f.abm.retain(|a| a.connection != connection);
            if f.abm.is_empty() && f.enrollment.is_none() && f.preenroll.is_none() {
                gone.push(f.serial.clone());
            } else {
                st.reindex(slot);
            }
        }
        // Removals move slots: only once the pass over them is done.
        for key in gone {
            st.remove(&key);
        }
    }

    /// Records a device-channel enrollment after its write committed (user channels are
    /// ignored: they belong to their device's record).
    pub fn put_enrollment(&self, rec: &EnrollmentRecord) {
        if rec.channel != Channel::Device {
            return;
        }
        let key = enrollment_key(rec);
        let facts = enrollment_facts(rec);
        let mut st = self.write();
        let slot = st.slot_or_insert(&key);
        if let Some(device) = st.facts.get_mut(slot) {
            // Of two enrollments for one serial (a device re-enrolled under another id), the
            // newer speaks for it.
            let replace = device.enrollment.as_ref().is_none_or(|old| {
                old.id == facts.id || old.authenticated_at <= facts.authenticated_at
            });
            if replace {
                device.enrollment = Some(Box::new(facts));
            }
        }
        st.reindex(slot);
        st.by_enrollment.insert(rec.id.clone(), key);
    }

    /// The device was heard from.
    pub fn touch(&self, enrollment_id: &str, at: Timestamp) {
        self.write().with_enrollment(enrollment_id, |e| {
            if at > e.last_seen_at {
                e.last_seen_at = at;
            }
        });
    }

    /// Push outcomes after their write committed (one lock for a whole fan-out): accepted
    /// pushes set `last_push_at`, tokens Apple called invalid set `push_invalid`.
    pub fn pushes_recorded(&self, outcomes: &[(String, Option<PushOutcome>)], at: Timestamp) {
        let mut st = self.write();
        for (id, outcome) in outcomes {
            match outcome {
                Some(PushOutcome::Sent { .. }) => {
                    st.with_enrollment(id, |e| e.last_push_at = Some(at));
                }
                Some(PushOutcome::InvalidToken { reason, .. }) => {
                    st.with_enrollment(id, |e| e.push_invalid = Some((reason.clone(), at)));
                }
                _ => {}
            }
        }
    }

    /// The serial number (directory key) of an enrollment's device.
    pub fn key_of(&self, enrollment_id: &str) -> Option<String> {
        let device_id = enrollment_id.split(':').next().unwrap_or(enrollment_id);
        self.read().by_enrollment.get(device_id).cloned()
    }

    /// Whether the serial number has a pre-enrollment record.
    pub fn is_preenrolled(&self, serial: &str) -> bool {
        self.read()
            .facts_of(serial)
            .is_some_and(|f| f.preenroll.is_some())
    }

    /// (serial, connection) of every device an ABM connection still lists that has no
    /// pre-enrollment record.
    pub fn abm_without_preenroll(&self) -> Vec<(String, String)> {
        let st = self.read();
        st.keys
            .values()
            .filter_map(|slot| st.facts.get(*slot))
            .filter(|f| f.preenroll.is_none())
            .filter_map(|f| {
                let a = f.current_abm().filter(|a| a.removed_at.is_none())?;
                Some((f.serial.clone(), a.connection.clone()))
            })
            .collect()
    }

    /// One device's facts, by serial number or enrollment id.
    pub fn get(&self, key: &str) -> Option<DeviceFacts> {
        let st = self.read();
        let key = st.resolve(key)?;
        st.facts_of(&key).cloned()
    }

    /// The directory key (serial number) of a serial number in any case or an enrollment id.
    pub fn resolve(&self, key: &str) -> Option<String> {
        self.read().resolve(key)
    }

    /// How many devices are in each status now.
    pub fn counts(&self, now: Timestamp, th: &Thresholds) -> StatusCounts {
        let st = self.read();
        let clocks = Clocks::new(now, th);
        let mut by_rank = [0usize; DeviceStatus::ALL.len()];
        for row in &st.rows {
            if let Some(n) = by_rank.get_mut(usize::from(clocks.rank(row))) {
                *n += 1;
            }
        }
        DeviceStatus::ALL
            .iter()
            .zip(by_rank)
            .map(|(s, n)| (s.as_str(), n))
            .collect()
    }

    /// Keys of the devices whose facts pass `pred`, in key order.
    pub fn keys_matching(&self, pred: impl Fn(&DeviceFacts) -> bool) -> Vec<String> {
        let st = self.read();
        st.keys
            .iter()
            .filter(|(_, slot)| st.facts.get(**slot).is_some_and(&pred))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys of the devices with an enrolled device channel, in key order.
    pub fn enrolled_serials(&self) -> Vec<String> {
        self.keys_matching(|f| {
            f.enrollment
                .as_ref()
                .is_some_and(|e| e.state == crate::ports::EnrollmentState::Enrolled)
        })
    }

    /// A page of the device list: the devices passing the filters, ordered by the sort value
    /// then the serial number (both reversed when descending), after `q.after`.
    pub fn list(
        &self,
        q: &DeviceQuery,
        now: Timestamp,
        th: &Thresholds,
    ) -> ServiceResult<DevicePage> {
        let limit = q.limit.clamp(1, 1000);
        let after = q.after.as_deref().map(decode_cursor).transpose()?;
        let st = self.read();
        let cursor = after.map(|a| Cursor::place(&st, q.sort, a));
        let filter = Filter::new(&st, q);
        let order = Order {
            st: &st,
            sort: q.sort,
            descending: q.descending,
            clocks: Clocks::new(now, th),
        };
        let by_serial = q.sort == SortKey::Serial
            && filter.is_empty()
            && cursor
                .as_ref()
                .is_none_or(|c| matches!(c.val, CursorVal::At(0)));
        let (mut picked, total) = if by_serial {
            let after = cursor.as_ref().map(|c| c.serial.as_str());
            let page = serial_walk(&st, after, q.descending, limit + 1);
            (page, st.keys.len())
        } else {
            order.select(&filter, cursor.as_ref(), Some(limit + 1))
        };
        let more = picked.len() > limit;
        picked.truncate(limit);
        let facts: Vec<&DeviceFacts> = picked
            .iter()
            .filter_map(|slot| st.facts.get(*slot))
            .collect();
        let next = match facts.last() {
            Some(f) if more => Some(encode_cursor(
                &sort_val(q.sort, f, status(f, now, th)),
                &f.serial,
            )),
            _ => None,
        };
        let items = facts.iter().map(|f| summary(f, now, th)).collect();
        Ok(DevicePage { items, next, total })
    }

    /// Every device the query matches after `q.after` (`q.limit` does not apply), in the
    /// list's order, in one pass: for exports.
    ///
    /// The order is decided once, under the lock; the rows are then built a thousand at a
    /// time, each chunk under the lock again, from the facts as they are then, so that
    /// a large export does not hold up check-ins. A device removed meanwhile, or whose facts
    /// no longer pass the filters, is left out; one whose sort value changed keeps its place.
    pub fn export(
        &self,
        q: &DeviceQuery,
        now: Timestamp,
        th: &Thresholds,
    ) -> ServiceResult<DeviceExport<'_>> {
        let after = q.after.as_deref().map(decode_cursor).transpose()?;
        let st = self.read();
        let cursor = after.map(|a| Cursor::place(&st, q.sort, a));
        let mut filter = Filter::new(&st, q);
        let order = Order {
            st: &st,
            sort: q.sort,
            descending: q.descending,
            clocks: Clocks::new(now, th),
        };
        let (slots, _) = order.select(&filter, cursor.as_ref(), None);
        // Chunks check devices one by one, against the search texts as they are then.
        filter.forget_hits();
        let keys: Vec<Box<str>> = slots
            .iter()
            .filter_map(|slot| st.facts.get(*slot))
            .map(|f| f.serial.as_str().into())
            .collect();
        Ok(DeviceExport {
            dir: self,
            keys: keys.into_iter(),
            filter,
            now,
            th: *th,
            ready: Vec::new().into_iter(),
        })
    }
}

/// The rows of [`DeviceDirectory::export`], in order.
pub struct DeviceExport<'a> {
    dir: &'a DeviceDirectory,
    /// Keys still to build, in order.
    keys: std::vec::IntoIter<Box<str>>,
    filter: Filter,
    now: Timestamp,
    th: Thresholds,
    /// Built and not yet taken.
    ready: std::vec::IntoIter<DeviceSummary>,
}

impl std::fmt::Debug for DeviceExport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceExport")
            .field("remaining", &(self.keys.len() + self.ready.len()))
            .finish()
    }
}

impl Iterator for DeviceExport<'_> {
    type Item = DeviceSummary;

    fn next(&mut self) -> Option<DeviceSummary> {
        loop {
            if let Some(row) = self.ready.next() {
                return Some(row);
            }
            if self.keys.len() == 0 {
                return None;
            }
            let st = self.dir.read();
            let clocks = Clocks::new(self.now, &self.th);
            let (filter, now, th) = (&self.filter, self.now, &self.th);
            let chunk: Vec<DeviceSummary> = self
                .keys
                .by_ref()
                .take(EXPORT_CHUNK)
                .filter_map(|key| {
                    let slot = *st.keys.get(&*key)?;
                    let row = st.rows.get(slot)?;
                    if !filter.passes(&st, slot, row, &clocks) {
                        return None;
                    }
                    st.facts.get(slot).map(|f| summary(f, now, th))
                })
                .collect();
            self.ready = chunk.into_iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.ready.len(), Some(self.ready.len() + self.keys.len()))
    }
}

/// The list row for a device.
pub fn summary(f: &DeviceFacts, now: Timestamp, th: &Thresholds) -> DeviceSummary {
    let p = f.preenroll.as_ref();
    let e = f.enrollment.as_ref();
    let a = f.current_abm();
    DeviceSummary {
        serial: f.serial.clone(),
        enrollment_id: e.map(|e| e.id.clone()),
        explanation: explain(f, now, th),
        name: p.and_then(|p| p.name.clone()),
        email: p.and_then(|p| p.email.clone()),
        ownership: p.and_then(|p| p.ownership.as_ref()).map(|o| o.as_str()),
        platform: p.and_then(|p| p.platform.as_ref()).map(|o| o.as_str()),
        model: model(f),
        os_version: e.and_then(|e| e.os_version.clone()),
        device_name: e
            .and_then(|e| e.device_name.clone())
            .or_else(|| p.and_then(|p| p.device_name.clone())),
        abm_connection: a.map(|a| a.connection.clone()),
        profile_status: a.map(|a| a.profile_status.clone()),
        preenrolled: p.is_some(),
        last_seen_at: e.map(|e| e.last_seen_at),
        enrolled_at: e.and_then(|e| e.enrolled_at),
    }
}

/// The directory key of an enrollment: its serial number, or its id when it reported none.
fn enrollment_key(rec: &EnrollmentRecord) -> String {
    let serial = match &rec.source {
        Some(EnrollmentSource::Ade { serial, .. }) if !serial.is_empty() => Some(serial.as_str()),
        _ => rec.facts.serial_number.as_deref().filter(|s| !s.is_empty()),
    };
    serial.map_or_else(|| rec.device_id.clone(), str::to_ascii_uppercase)
}

fn enrollment_facts(rec: &EnrollmentRecord) -> EnrollmentFacts {
    EnrollmentFacts {
        id: rec.id.clone(),
        state: rec.state,
        ade: matches!(rec.source, Some(EnrollmentSource::Ade { .. })),
        awaiting_configuration: rec.awaiting_configuration,
        model: rec
            .facts
            .model_name
            .clone()
            .or_else(|| rec.facts.product_name.clone())
            .or_else(|| rec.facts.model.clone()),
        os_version: rec.facts.os_version.clone(),
        device_name: rec.facts.device_name.clone(),
        authenticated_at: rec.authenticated_at,
        enrolled_at: rec.enrolled_at,
        token_updated_at: rec.token_updated_at,
        checked_out_at: rec.checked_out_at,
        last_seen_at: rec.last_seen_at,
        last_push_at: rec.last_push_at,
        push_invalid: rec.push_invalid.as_ref().map(|p| (p.reason.clone(), p.at)),
    }
}

fn abm_facts(rec: &AbmDeviceRecord) -> AbmFacts {
    AbmFacts {
        connection: rec.connection.clone(),
        model: rec.device.model.clone(),
        device_family: rec.device.device_family.clone(),
        os: rec.device.os.clone(),
        profile_status: rec.device.profile_status.clone(),
        profile_uuid: rec.device.profile_uuid.clone(),
        // Empty (never pushed) and unparsable both mean "not known".
        pushed_at: Timestamp::parse_rfc3339(&rec.device.profile_push_time),
        assignment: rec.assignment.as_ref().map(|a| AssignmentFacts {
            profile: a.profile_id.clone(),
            outcome: a.outcome,
            at: a.at,
            reason: a.reason.clone(),
            failures: a.failures,
        }),
        next_assign_at: rec.next_assign_at,
        removed_at: rec.removed_at,
        first_seen_at: rec.first_seen_at,
        updated_at: rec.updated_at,
    }
}

#[cfg(test)]
#[path = "../../benches/support/rng.rs"]
mod test_rng;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;
    use crate::lifecycle::csv::{Ownership, Platform};
    use crate::ports::{
        AbmAssignOutcome, AbmAssignment, EnrollmentState, PreenrollSource, PushFailure,
    };

    const NOW: Timestamp = Timestamp(1_800_000_000_000);
    const MIN: i64 = 60_000;
    const TH: Thresholds = Thresholds {
        offline_after: Duration::from_secs(72 * 3600),
        enrolling_grace: Duration::from_secs(30 * 60),
        awaiting_stuck_after: Duration::from_secs(30 * 60),
    };
    /// Times the statuses of the fleet change between.
    const NOWS: [Timestamp; 4] = [
        NOW,
        Timestamp(NOW.0 + 20 * MIN),
        Timestamp(NOW.0 + 2 * 24 * 60 * MIN),
        Timestamp(NOW.0 + 5 * 24 * 60 * MIN),
    ];

    use super::test_rng::Rng;

    impl Rng {
        /// Minutes from NOW, between `lo` and `hi`.
        fn around(&mut self, lo: i64, hi: i64) -> Timestamp {
            Timestamp(NOW.0 + (lo + self.below((hi - lo) as usize + 1) as i64) * MIN)
        }
    }

    /// Equal names, names longer than a row's prefix that share it, letters whose lower case
    /// is longer or depends on the word (İ, final Σ), and none at all.
    const NAMES: [Option<&str>; 14] = [
        Some("Ada Lovelace"),
        Some("ada lovelace"),
        Some("Zoë Nakamura"),
        Some("Łukasz Kowalski"),
        Some("Oluwaseun Van der Berg"),
        Some("Oluwaseun Van der Berg-Smith"),
        Some("İlker Yılmaz"),
        Some("ΟΔΥΣΣΕΑΣ"),
        Some("Émile"),
        Some("alan turing"),
        Some(""),
        Some("Grace Hopper"),
        None,
        None,
    ];
    const MODELS: [&str; 7] = [
        "iPhone 15",
        "iPhone 15 Pro",
        "iPad Pro (12.9-inch) (6th generation)",
        "iPad Pro (12.9-inch) (5th generation)",
        "MacBook Air (M2, 2022)",
        "Apple TV",
        "",
    ];
    const CONNECTIONS: [&str; 3] = ["north", "south", "east"];

    fn preenroll(serial: &str, name: Option<&str>, device_name: Option<&str>) -> PreenrollRecord {
        PreenrollRecord {
            serial: serial.to_owned(),
            name: name.map(str::to_owned),
            email: name.map(|n| format!("{}@example.com", n.replace(' ', "."))),
            ownership: Some(Ownership::Corporate),
            platform: Some(Platform::Ios),
            mobile: None,
            device_name: device_name.map(str::to_owned),
            source: PreenrollSource::Csv,
            created_at: Timestamp(NOW.0 - 100 * MIN),
            updated_at: Timestamp(NOW.0 - 100 * MIN),
            updated_by: "admin".into(),
        }
    }

    fn abm_record(serial: &str, connection: &str, model: &str, rng: &mut Rng) -> AbmDeviceRecord {
        let mut device = mdm_proto::abm::Device {
            serial_number: serial.to_owned(),
            model: model.to_owned(),
            profile_status: "empty".into(),
            ..Default::default()
        };
        let mut assignment = None;
        let mut removed_at = None;
        let outcome = |o| AbmAssignment {
            profile_id: "staff".into(),
            profile_uuid: "P1".into(),
            outcome: o,
            at: NOW,
            reason: None,
            failures: 1,
        };
        match rng.below(7) {
            0 => {}
            1 => device.profile_status = "assigned".into(),
            2 => {
                device.profile_status = "pushed".into();
                // Fetched around the grace period before one of the `NOWS`.
                let t = rng.around(-45, 0);
                device.profile_push_time = t.to_rfc3339();
            }
            3 => assignment = Some(outcome(AbmAssignOutcome::Throttled)),
            4 => assignment = Some(outcome(AbmAssignOutcome::NotAccessible)),
            5 => removed_at = Some(rng.around(-1000, -10)),
            _ => device.profile_status = "pushed".into(),
        }
        AbmDeviceRecord {
            connection: connection.to_owned(),
            serial: serial.to_owned(),
            device,
            first_seen_at: rng.around(-5000, -1000),
            updated_at: rng.around(-1000, 0),
            removed_at,
            seen_generation: 1,
            assignment,
            next_assign_at: None,
        }
    }

    fn enrollment(id: &str, serial: Option<&str>, model: &str, rng: &mut Rng) -> EnrollmentRecord {
        let state = *rng.pick(&[
            EnrollmentState::Enrolled,
            EnrollmentState::Enrolled,
            EnrollmentState::Authenticated,
            EnrollmentState::CheckedOut,
        ]);
        // Near the thresholds of `NOWS`, so that statuses change between them.
        let authenticated_at = rng.around(-40, 0);
        let last_seen_at = rng.around(-5 * 24 * 60, 0);
        let pushed = rng.below(2) == 0;
        EnrollmentRecord {
            id: id.to_owned(),
            device_id: id.to_owned(),
            user_id: None,
            user_short_name: None,
            channel: Channel::Device,
            state,
            identity_sha256: String::new(),
            topic: None,
            facts: crate::ports::DeviceFacts {
                serial_number: serial.map(str::to_owned),
                model_name: (!model.is_empty()).then(|| model.to_owned()),
                device_name: Some(format!("Device {}", rng.below(50))),
                ..Default::default()
            },
            source: serial.map(|s| EnrollmentSource::Ade {
                udid: id.to_owned(),
                serial: s.to_owned(),
                user: None,
            }),
            push: None,
            unlock_token_sealed: None,
            bootstrap_token_sealed: None,
            awaiting_configuration: rng.below(10) == 0,
            authenticated_at,
            enrolled_at: Some(authenticated_at),
            token_updated_at: Some(authenticated_at),
            checked_out_at: None,
            last_seen_at,
            last_push_at: pushed.then(|| Timestamp(last_seen_at.0 + MIN)),
            push_invalid: (rng.below(20) == 0).then(|| PushFailure {
                reason: "Unregistered".into(),
                at: NOW,
            }),
        }
    }

    fn serial(i: usize, rng: &mut Rng) -> String {
        const ALPHABET: &[u8] = b"CDFGHJKLMNPQRTVWXY0123456789";
        let mut s: String = (0..8).map(|_| char::from(*rng.pick(ALPHABET))).collect();
        s.push_str(&format!("{i:04}"));
        // Some shorter ones, some sharing all of a row's prefix.
        match i % 17 {
            0 => s.truncate(3),
            1 => s = format!("C02LONGSERIALPREFIX{i:03}"),
            _ => {}
        }
        s
    }

    /// A few hundred devices in every state: pre-enrolled only, ABM (several connections,
    /// some removed), enrolled in every state, some without a serial number (keyed by UDID).
    fn fleet(n: usize, seed: u64) -> DeviceDirectory {
        let dir = DeviceDirectory::default();
        let mut rng = Rng(seed);
        let mut pre = Vec::new();
        for i in 0..n {
            let serial = serial(i, &mut rng);
            let model = *rng.pick(&MODELS);
            if rng.below(4) != 0 {
                let device_name = (rng.below(2) == 0).then_some("Lab iPad");
                pre.push(preenroll(&serial, *rng.pick(&NAMES), device_name));
            }
            if rng.below(3) == 0 {
                let conn = *rng.pick(&CONNECTIONS);
                dir.put_abm(&[abm_record(&serial, conn, model, &mut rng)]);
                if rng.below(4) == 0 {
                    let other = *rng.pick(&CONNECTIONS);
                    dir.put_abm(&[abm_record(&serial, other, model, &mut rng)]);
                }
            }
            if rng.below(2) == 0 {
                let id = format!("00008110-1CBE{i:012X}");
                let reported = (rng.below(8) != 0).then_some(serial.as_str());
                dir.put_enrollment(&enrollment(&id, reported, model, &mut rng));
            }
        }
        dir.put_preenrolled(pre);
        dir
    }

    /// The list as it was specified before rows existed: every device's facts, filtered,
    /// sorted by (sort value, serial), reversed when descending, after the cursor.
    fn reference(dir: &DeviceDirectory, q: &DeviceQuery, now: Timestamp) -> (Vec<String>, usize) {
        let needle = q.search.as_ref().map(|s| s.trim().to_ascii_lowercase());
        let mut all: Vec<(SortVal, String)> = dir
            .keys_matching(|_| true)
            .iter()
            .filter_map(|k| dir.get(k))
            .filter(|f| {
                q.connection
                    .as_ref()
                    .is_none_or(|c| f.abm.iter().any(|a| &a.connection == c))
            })
            .filter(|f| needle.as_ref().is_none_or(|n| matches_search(f, n)))
            .filter_map(|f| {
                let s = status(&f, now, &TH);
                (q.statuses.is_empty() || q.statuses.contains(&s))
                    .then(|| (sort_val(q.sort, &f, s), f.serial.clone()))
            })
            .collect();
        let total = all.len();
        let order = |a: &(SortVal, String), b: &(SortVal, String)| {
            let o = a.cmp(b);
            if q.descending {
                o.reverse()
            } else {
                o
            }
        };
        all.sort_by(order);
        if let Some(after) = &q.after {
            let c = decode_cursor(after).unwrap();
            all.retain(|item| order(item, &c) == Ordering::Greater);
        }
        (all.into_iter().map(|(_, s)| s).collect(), total)
    }

    /// Every page of a query through `next`: the serials in order, checking each page.
    fn walk(dir: &DeviceDirectory, q: &DeviceQuery, now: Timestamp, total: usize) -> Vec<String> {
        let mut q = q.clone();
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let page = dir.list(&q, now, &TH).unwrap();
            assert_eq!(page.total, total, "{q:?}");
            assert!(page.items.len() <= q.limit.max(1));
            if page.next.is_some() {
                assert_eq!(
                    page.items.len(),
                    q.limit.max(1),
                    "a page before the last is full"
                );
            }
            out.extend(page.items.into_iter().map(|d| d.serial));
            match page.next {
                Some(n) => q.after = Some(n),
                None => return out,
            }
        }
        panic!("the walk did not end");
    }

    const SORTS: [SortKey; 5] = [
        SortKey::Serial,
        SortKey::Status,
        SortKey::LastSeen,
        SortKey::Name,
        SortKey::Model,
    ];

    fn filters() -> Vec<DeviceQuery> {
        let q = |statuses: Vec<DeviceStatus>, search: Option<&str>, connection: Option<&str>| {
            DeviceQuery {
                statuses,
                search: search.map(str::to_owned),
                connection: connection.map(str::to_owned),
                ..DeviceQuery::default()
            }
        };
        vec![
            q(vec![], None, None),
            q(vec![DeviceStatus::Offline], None, None),
            q(
                vec![DeviceStatus::Enrolling, DeviceStatus::PartiallyEnrolled],
                None,
                None,
            ),
            q(
                vec![DeviceStatus::Assigned, DeviceStatus::Expected],
                None,
                None,
            ),
            q(vec![], Some(" ADA "), None),
            q(vec![], Some("zoë"), None),
            q(vec![], Some("ipad pro"), None),
            q(vec![], Some("1cbe0000000000"), None),
            q(vec![], Some("   "), None),
            q(vec![], Some("a\0b"), None),
            q(vec![], None, Some("north")),
            q(vec![], None, Some("nowhere")),
            q(
                vec![DeviceStatus::Enrolled, DeviceStatus::Offline],
                Some("device 1"),
                Some("south"),
            ),
        ]
    }

    #[test]
    fn every_sort_filter_and_page_size_matches_the_reference() {
        let dir = fleet(400, 7);
        let mut rng = Rng(99);
        let mut checked = 0;
        for now in NOWS {
            for base in filters() {
                for sort in SORTS {
                    for descending in [false, true] {
                        let limit = *rng.pick(&[1, 3, 7, 13, 50, 1000]);
                        let q = DeviceQuery {
                            sort,
                            descending,
                            limit,
                            ..base.clone()
                        };
                        let (want, total) = reference(&dir, &q, now);
                        let got = walk(&dir, &q, now, total);
                        assert_eq!(got, want, "{q:?} at {now:?}");
                        checked += got.len();
                    }
                }
            }
        }
        assert!(
            checked > 10_000,
            "the fleet exercised the list: {checked} rows"
        );
    }

    #[test]
    fn a_device_keeps_room_for_the_connections_that_list_it_and_no_more() {
        let dir = DeviceDirectory::default();
        let mut rng = Rng(5);
        let room = |dir: &DeviceDirectory| {
            let st = dir.read();
            let slot = st.keys.get("S1").copied().unwrap();
            st.facts.get(slot).map(|f| (f.abm.len(), f.abm.capacity()))
        };
        dir.put_abm(&[abm_record("S1", "north", "iPhone", &mut rng)]);
        assert_eq!(room(&dir), Some((1, 1)));
        dir.put_abm(&[abm_record("S1", "north", "iPad", &mut rng)]);
        assert_eq!(room(&dir), Some((1, 1)), "a record replaced in place");
        dir.put_abm(&[abm_record("S1", "south", "iPad", &mut rng)]);
        assert_eq!(room(&dir), Some((2, 2)));
    }

    #[test]
    fn statuses_change_between_the_times_and_counts_follow() {
        let dir = fleet(400, 7);
        let mut seen = HashSet::new();
        for now in NOWS {
            let counts = dir.counts(now, &TH);
            let mut want: StatusCounts =
                DeviceStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
            for key in dir.keys_matching(|_| true) {
                let f = dir.get(&key).unwrap();
                *want.entry(status(&f, now, &TH).as_str()).or_default() += 1;
            }
            assert_eq!(counts, want, "at {now:?}");
            seen.insert(counts);
        }
        // The fleet is built around the thresholds: the times must not all look the same.
        assert_eq!(seen.len(), NOWS.len());
    }

    #[test]
    fn a_cursor_of_another_sort_orders_as_its_value_does() {
        let dir = fleet(200, 3);
        for (from, to) in [
            (SortKey::Name, SortKey::Status),
            (SortKey::Status, SortKey::Model),
            (SortKey::LastSeen, SortKey::Serial),
            (SortKey::Name, SortKey::Serial),
            (SortKey::Model, SortKey::Name),
        ] {
            for descending in [false, true] {
                let first = DeviceQuery {
                    sort: from,
                    limit: 17,
                    ..DeviceQuery::default()
                };
                let after = dir.list(&first, NOW, &TH).unwrap().next;
                assert!(after.is_some());
                let q = DeviceQuery {
                    sort: to,
                    descending,
                    limit: 9,
                    after,
                    ..DeviceQuery::default()
                };
                let (want, _) = reference(&dir, &q, NOW);
                let page = dir.list(&q, NOW, &TH).unwrap();
                let got: Vec<String> = page.items.into_iter().map(|d| d.serial).collect();
                assert_eq!(got, want.into_iter().take(9).collect::<Vec<_>>(), "{q:?}");
            }
        }
    }

    #[test]
    fn invalid_cursors_are_refused() {
        let dir = fleet(20, 1);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for after in [
            "not a cursor!".to_owned(),
            b64("{}"),
            b64("[1]"),
            b64(r#"[1, 2]"#),
            b64(r#"[null, "A"]"#),
        ] {
            for sort in [SortKey::Serial, SortKey::Name] {
                let q = DeviceQuery {
                    sort,
                    after: Some(after.clone()),
                    limit: 10,
                    ..DeviceQuery::default()
                };
                let err = dir.list(&q, NOW, &TH).unwrap_err();
                assert_eq!(err.code, "INVALID_CURSOR", "{after}");
                assert_eq!(
                    dir.export(&q, NOW, &TH).map(|_| ()).unwrap_err().code,
                    "INVALID_CURSOR"
                );
            }
        }
    }

    /// Devices change between pages: every device that did not change is listed exactly
    /// once, in order; none is listed twice.
    #[test]
    fn pages_survive_changes_between_them() {
        for sort in SORTS {
            for descending in [false, true] {
                let dir = fleet(300, 11);
                let mut rng = Rng(5 + sort as u64);
                let mut q = DeviceQuery {
                    sort,
                    descending,
                    limit: 11,
                    ..DeviceQuery::default()
                };
                let (before, _) = reference(&dir, &q, NOW);
                let mut changed: HashSet<String> = HashSet::new();
                let mut got = Vec::new();
                let mut added = 0;
                loop {
                    let page = dir.list(&q, NOW, &TH).unwrap();
                    got.extend(page.items.into_iter().map(|d| d.serial));
                    let Some(next) = page.next else { break };
                    q.after = Some(next);
                    // Between pages: renames (new and existing texts), check-ins, a removal,
                    // a new device, and a new model.
                    let keys = dir.keys_matching(|_| true);
                    let key = rng.pick(&keys).clone();
                    let f = dir.get(&key).unwrap();
                    match rng.below(5) {
                        0 => {
                            let name = format!("Renamed {}", rng.below(1000));
                            let name = if rng.below(2) == 0 {
                                name
                            } else {
                                "Grace Hopper".into()
                            };
                            dir.put_preenrolled(vec![preenroll(&key, Some(&name), None)]);
                        }
                        1 => match &f.enrollment {
                            Some(e) => dir.touch(&e.id, Timestamp(NOW.0 + rng.below(1000) as i64)),
                            None => continue,
                        },
                        2 => dir.remove_preenrolled(std::slice::from_ref(&key)),
                        3 => {
                            let serial = format!("NEW{added:05}");
                            added += 1;
                            dir.put_preenrolled(vec![preenroll(&serial, *rng.pick(&NAMES), None)]);
                            changed.insert(serial);
                            continue;
                        }
                        _ => {
                            let model = format!("Model {}", rng.below(1000));
                            dir.put_abm(&[abm_record(&key, "north", &model, &mut rng)]);
                        }
                    }
                    changed.insert(key);
                }
                let mut seen = HashSet::new();
                for s in &got {
                    assert!(
                        seen.insert(s.clone()) || changed.contains(s),
                        "{s} listed twice"
                    );
                }
                let unchanged = |v: &[String]| -> Vec<String> {
                    v.iter()
                        .filter(|s| !changed.contains(*s))
                        .cloned()
                        .collect()
                };
                assert_eq!(
                    unchanged(&got),
                    unchanged(&before),
                    "{sort:?} desc={descending}"
                );
                assert!(changed.len() > 10);
            }
        }
    }

    #[test]
    fn export_is_the_whole_list_in_one_pass() {
        let dir = fleet(500, 21);
        for base in filters() {
            for sort in SORTS {
                for descending in [false, true] {
                    let q = DeviceQuery {
                        sort,
                        descending,
                        limit: 1,
                        ..base.clone()
                    };
                    let (want, _) = reference(&dir, &q, NOW);
                    let got: Vec<String> = dir
                        .export(&q, NOW, &TH)
                        .unwrap()
                        .map(|d| d.serial)
                        .collect();
                    assert_eq!(got, want, "{q:?}");
                }
            }
        }
        // From a cursor, and with the rows as the list shows them.
        let q = DeviceQuery {
            sort: SortKey::Name,
            limit: 100,
            ..DeviceQuery::default()
        };
        let page = dir.list(&q, NOW, &TH).unwrap();
        let rest = DeviceQuery {
            after: page.next.clone(),
            ..q.clone()
        };
        let (want, _) = reference(&dir, &rest, NOW);
        let got: Vec<DeviceSummary> = dir.export(&rest, NOW, &TH).unwrap().collect();
        assert_eq!(
            got.iter().map(|d| &d.serial).collect::<Vec<_>>(),
            want.iter().collect::<Vec<_>>()
        );
        let first = dir.export(&q, NOW, &TH).unwrap().next().unwrap();
        assert_eq!(
            serde_json::to_value(&first).unwrap(),
            serde_json::to_value(&page.items[0]).unwrap()
        );
    }

    #[test]
    fn export_builds_rows_from_the_facts_of_the_moment() {
        let dir = fleet(4 * EXPORT_CHUNK, 4);
        let q = DeviceQuery {
            statuses: vec![DeviceStatus::Expected],
            ..DeviceQuery::default()
        };
        let (want, _) = reference(&dir, &q, NOW);
        let mut rows = dir.export(&q, NOW, &TH).unwrap();
        let first = rows.next().unwrap();
        // A device of a later chunk stops matching, another one is removed.
        assert!(want.len() > EXPORT_CHUNK + 10, "{}", want.len());
        let (late, gone) = (&want[EXPORT_CHUNK + 1], &want[want.len() - 3]);
        dir.put_enrollment(&enrollment(
            "LATE-UDID",
            Some(late),
            "iPhone 15",
            &mut Rng(1),
        ));
        dir.remove_preenrolled(std::slice::from_ref(gone));
        let got: Vec<String> = std::iter::once(first)
            .chain(rows)
            .map(|d| d.serial)
            .collect();
        let expected: Vec<String> = want
            .iter()
            .filter(|s| *s != late && *s != gone)
            .cloned()
            .collect();
        // `late` was expected only if its enrollment did not make it something else.
        let late_now = dir.get(late).map(|f| status(&f, NOW, &TH));
        assert_ne!(late_now, Some(DeviceStatus::Expected));
        assert_eq!(got, expected);
    }

    #[test]
    fn search_texts_stay_right_through_rewrites_and_removals() {
        let dir = fleet(300, 13);
        let mut rng = Rng(77);
        for round in 0..6 {
            let keys = dir.keys_matching(|_| true);
            let recs: Vec<PreenrollRecord> = keys
                .iter()
                .map(|k| {
                    let mut r = preenroll(k, *rng.pick(&NAMES), Some("Lab iPad"));
                    r.email = Some(format!("round{round}.{}@example.com", rng.below(100)));
                    r
                })
                .collect();
            dir.put_preenrolled(recs);
            let gone: Vec<String> = keys.iter().step_by(7).cloned().collect();
            dir.remove_preenrolled(&gone);
            for search in ["round", "ada", "lab ipad", "1cbe", "@example.com", "zzz"] {
                let q = DeviceQuery {
                    search: Some(search.into()),
                    limit: 1000,
                    ..DeviceQuery::default()
                };
                let (want, total) = reference(&dir, &q, NOW);
                assert_eq!(
                    walk(&dir, &q, NOW, total),
                    want,
                    "{search} in round {round}"
                );
            }
        }
        // The rewrites left far more garbage than the buffer may keep: it was compacted.
        let st = dir.read();
        assert!(
            st.search.garbage <= st.search.buf.len() / 2 || st.search.garbage < SEARCH_COMPACT_MIN
        );
        assert!(st.search.buf.len() < 3 * SEARCH_COMPACT_MIN);
    }

    #[test]
    fn connections_past_the_bits_fall_back_to_the_facts() {
        let dir = DeviceDirectory::default();
        let mut rng = Rng(8);
        for i in 0..300 {
            let conn = format!("c{}", i % 70);
            dir.put_abm(&[abm_record(&format!("S{i:04}"), &conn, "iPhone", &mut rng)]);
        }
        for conn in ["c0", "c62", "c63", "c64", "c69", "c70"] {
            let q = DeviceQuery {
                connection: Some(conn.into()),
                sort: SortKey::Status,
                limit: 3,
                ..DeviceQuery::default()
            };
            let (want, total) = reference(&dir, &q, NOW);
            assert_eq!(walk(&dir, &q, NOW, total), want, "{conn}");
            let listed = (0..300).filter(|i| format!("c{}", i % 70) == conn).count();
            assert_eq!(total, listed, "{conn}");
        }
        // A deleted connection forgets its devices.
        dir.remove_abm_connection("c1");
        assert!(dir.get("S0001").is_none());
        let q = DeviceQuery {
            sort: SortKey::Model,
            limit: 1000,
            ..DeviceQuery::default()
        };
        let (want, total) = reference(&dir, &q, NOW);
        assert_eq!(walk(&dir, &q, NOW, total), want);
    }

    #[test]
    fn a_row_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Row>(), 64);
    }

    #[test]
    fn texts_leave_the_collation_with_their_last_device() {
        let dir = DeviceDirectory::default();
        dir.put_preenrolled(vec![
            preenroll("A", Some("Only Once"), None),
            preenroll("B", Some("Twice"), None),
            preenroll("C", Some("twice"), None),
        ]);
        dir.put_preenrolled(vec![preenroll("A", Some("Twice"), None)]);
        {
            let st = dir.read();
            assert!(!st.names.ids.contains_key("only once"));
            assert_eq!(st.names.ids.len(), 1);
            let id = st.names.ids["twice"];
            assert_eq!(st.names.refs[id as usize], 3);
        }
        dir.remove_preenrolled(&["A".into(), "B".into(), "C".into()]);
        let st = dir.read();
        assert!(st.names.ids.is_empty() && st.rows.is_empty() && st.keys.is_empty());
    }
}
