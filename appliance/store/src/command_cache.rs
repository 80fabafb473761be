//! Commands as the queue hands them out, kept in memory so that sending one costs no reads.
//!
//! A command sent to many devices (a ProfileList to every device, say) is read once per
//! device: two lookups and a JSON decode each time, for a record that never changes. Only
//! the writer thread fills or empties the cache, so it always agrees with the writes that
//! committed, in order:
//! - `enqueue` puts the new command, replacing whatever an earlier command of the same UUID
//!   left (a UUID is free again once `prune` deleted its command);
//! - the result write reads the next command through it, filling it on a miss;
//! - `prune` forgets every command it deletes, so that gone commands take no room;
//! - resealing clears it, once the payloads are rewrapped.
//!
//! Readers on request workers only look: a reader's snapshot may be older than the cache,
//! and filling from it could bring back a command a later write replaced. A command that is
//! cached but whose write then aborted is never asked for (no delivery names it) and is
//! replaced if its UUID is enqueued again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mdm_service::ports::QueuedCommand;

/// Bytes of payload kept at most. A site's active commands are a few bulk commands and some
/// per-device ones; when they outgrow this the cache starts again empty, which costs reads,
/// never wrong answers.
const MAX_BYTES: usize = 4 << 20;
/// Commands kept at most, whatever their size.
const MAX_ENTRIES: usize = 4096;

/// What a delivery needs of its command.
#[derive(Debug)]
pub(crate) struct CachedCommand {
    pub request_type: String,
    /// As stored: sealed when `sealed`.
    pub payload: Vec<u8>,
    pub sealed: bool,
}

impl CachedCommand {
    pub(crate) fn queued(&self, uuid: &str) -> QueuedCommand {
        QueuedCommand {
            uuid: uuid.to_owned(),
            request_type: self.request_type.clone(),
            payload: self.payload.clone(),
            sealed: self.sealed,
        }
    }
}

#[derive(Default)]
pub(crate) struct CommandCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Arc<CachedCommand>>,
    bytes: usize,
}

impl CommandCache {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panic while holding the lock cannot leave the map inconsistent with `bytes` in a
        // way that matters: the count only decides when to start again.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, uuid: &str) -> Option<Arc<CachedCommand>> {
        self.entries().map.get(uuid).cloned()
    }

    /// Keeps `command` under `uuid`, replacing what was there. Writer thread only.
    pub(crate) fn put(&self, uuid: &str, command: Arc<CachedCommand>) {
        let size = command.payload.len() + command.request_type.len() + uuid.len();
        if size > MAX_BYTES / 8 {
            // One large profile would push out everything else.
            self.forget(uuid);
            return;
        }
        let mut entries = self.entries();
        if entries.bytes + size > MAX_BYTES || entries.map.len() >= MAX_ENTRIES {
            entries.map.clear();
            entries.bytes = 0;
        }
        if let Some(old) = entries.map.insert(uuid.to_owned(), command) {
            entries.bytes -= old.payload.len() + old.request_type.len() + uuid.len();
        }
        entries.bytes += size;
    }

    /// Writer thread only.
    pub(crate) fn forget(&self, uuid: &str) {
        let mut entries = self.entries();
        if let Some(old) = entries.map.remove(uuid) {
            entries.bytes -= old.payload.len() + old.request_type.len() + uuid.len();
        }
    }

    pub(crate) fn clear(&self) {
        let mut entries = self.entries();
        entries.map.clear();
        entries.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(payload_len: usize) -> Arc<CachedCommand> {
        Arc::new(CachedCommand {
            request_type: "ProfileList".into(),
            payload: vec![7; payload_len],
            sealed: false,
        })
    }

    #[test]
    fn put_replaces_and_forget_removes() {
        let cache = CommandCache::default();
        cache.put("a", command(10));
        cache.put("a", command(20));
        assert_eq!(cache.get("a").unwrap().payload.len(), 20);
        assert_eq!(cache.entries().bytes, 20 + "ProfileList".len() + 1);
        cache.forget("a");
        assert!(cache.get("a").is_none());
        assert_eq!(cache.entries().bytes, 0);
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let cache = CommandCache::default();
        // Too large to keep at all.
        cache.put("big", command(MAX_BYTES / 8 + 1));
        assert!(cache.get("big").is_none());
        // Filling past the budget starts again with the newest.
        let each = MAX_BYTES / 10;
        for i in 0..11 {
            cache.put(&format!("c{i}"), command(each));
        }
        assert!(cache.entries().bytes <= MAX_BYTES);
        assert!(cache.get("c10").is_some());
        assert!(cache.get("c0").is_none());
        for i in 0..MAX_ENTRIES + 1 {
            cache.put(&format!("n{i}"), command(1));
        }
        assert!(cache.entries().map.len() <= MAX_ENTRIES);
    }
}
