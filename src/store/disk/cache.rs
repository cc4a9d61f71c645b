//! The disk store's read cache: recently used live sessions, bounded in
//! bytes, so a returning browser is served without a trip to the blocking
//! pool and SQLite.
//!
//! Only the writer thread changes the cache. It is the only connection that
//! writes the file (and the lock file keeps other processes out), so what it
//! puts in the cache is the committed state, and it updates the cache after
//! each commit *before* answering, so a reply such as "rotated" is never
//! followed by a read of the old state. Readers that miss ask the writer to
//! warm the entry instead of inserting what they read: a reader's row may
//! already be stale when it arrives, the writer's never is.

use http::HeaderValue;
use quick_cache::Weighter;
use quick_cache::sync::Cache as QuickCache;

use super::rows::Row;
use crate::session::Id;
use crate::store::Meta;

/// Bytes counted for an entry besides its data and texts: id, times,
/// allocation headers.
const ENTRY_OVERHEAD: u64 = 256;

/// The heaviest entry is this fraction of the cache: one huge session
/// must not push out thousands, and a read that misses need not ask the
/// writer to warm what would not be kept.
const LARGEST_SHARE: u64 = 256;

/// A live session as stored.
#[derive(Debug, Clone)]
pub struct Cached {
    pub data: HeaderValue,
    pub issued_ms: u64,
    /// `meta.last_seen_ms` is the stored last-seen time.
    pub meta: Meta,
}

impl Cached {
    /// `None` if `data` is not header text (stored JSON always is).
    fn new(mut data: Vec<u8>, issued_ms: u64, meta: Meta) -> Option<Cached> {
        // The encoder grows its buffer by doubling: without this an entry
        // could hold twice the bytes it is weighed at.
        data.shrink_to_fit();
        let data = HeaderValue::from_maybe_shared(bytes::Bytes::from(data)).ok()?;
        Some(Cached {
            data,
            issued_ms,
            meta,
        })
    }

    fn weight(&self) -> u64 {
        let text = |t: Option<&str>| t.map_or(0, str::len) as u64;
        self.data.len() as u64
            + ENTRY_OVERHEAD
            + text(self.meta.user.as_ref().map(|u| u.as_str()))
            + text(self.meta.client.as_deref())
            + text(self.meta.agent.as_deref())
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Id, Cached> for ByBytes {
    fn weight(&self, _id: &Id, entry: &Cached) -> u64 {
        entry.weight()
    }
}

/// The cache; `None` inside when `store.cache_bytes = 0`.
pub struct Cache(Option<QuickCache<Id, Cached, ByBytes>>);

impl Cache {
    pub fn new(bytes: u64) -> Cache {
        if bytes == 0 {
            return Cache(None);
        }
        // The item estimate only sizes the first allocation.
        let items = (bytes / (ENTRY_OVERHEAD * 2)).clamp(16, 1 << 20) as usize;
        Cache(Some(QuickCache::with_weighter(items, bytes, ByBytes)))
    }

    /// Whether a session with this much data would be kept.
    pub fn admits(&self, data_bytes: usize) -> bool {
        self.0.as_ref().is_some_and(|cache| {
            data_bytes as u64 + ENTRY_OVERHEAD <= cache.capacity() / LARGEST_SHARE
        })
    }

    pub fn get(&self, id: &Id) -> Option<Cached> {
        self.0.as_ref()?.get(id)
    }

    /// Writer thread only: `entry` is the committed state of `id`.
    fn put(&self, id: Id, entry: Cached) {
        let Some(cache) = &self.0 else { return };
        if entry.weight() <= cache.capacity() / LARGEST_SHARE {
            cache.insert(id, entry);
        } else {
            cache.remove(&id);
        }
    }

    /// Writer thread only: `row` is the committed state of `id`. Nothing
    /// is converted while the cache is off; a row that is not live, or
    /// (never expected) not header text, leaves no entry behind.
    pub fn put_row(&self, id: Id, row: Row) {
        if self.0.is_none() {
            return;
        }
        match row
            .data
            .and_then(|data| Cached::new(data, row.issued_ms, row.meta))
        {
            Some(entry) => self.put(id, entry),
            None => self.forget(&id),
        }
    }

    /// Writer thread only: `id` is no longer live.
    pub fn forget(&self, id: &Id) {
        if let Some(cache) = &self.0 {
            cache.remove(id);
        }
    }

    /// Whether `id` is cached; unlike `get`, not counted as a use.
    pub fn holds(&self, id: &Id) -> bool {
        self.0.as_ref().is_some_and(|cache| cache.contains_key(id))
    }

    /// Writer thread only: records a touch the writer committed.
    pub fn touched(&self, id: &Id, seen_ms: u64) {
        let Some(cache) = &self.0 else { return };
        if let Some(mut entry) = cache.peek(id)
            && entry.meta.last_seen_ms < seen_ms
        {
            entry.meta.last_seen_ms = seen_ms;
            self.put(*id, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data_bytes: usize, last_seen_ms: u64) -> Cached {
        let text = format!("{{\"k\":\"{}\"}}", "x".repeat(data_bytes));
        Cached {
            data: HeaderValue::from_str(&text).unwrap(),
            issued_ms: 1,
            meta: Meta {
                last_seen_ms,
                ..Meta::default()
            },
        }
    }

    #[test]
    fn holds_no_more_bytes_than_its_bound() {
        let cache = Cache::new(1 << 20);
        let ids: Vec<Id> = (0..2000).map(|_| Id::random()).collect();
        for id in &ids {
            cache.put(*id, entry(1024, 1));
        }
        let held = ids.iter().filter(|id| cache.holds(id)).count() as u64;
        let weight = entry(1024, 1).weight();
        assert!(held > 0 && held * weight <= 1 << 20, "held {held} entries");
    }

    #[test]
    fn zero_bytes_turns_it_off() {
        let cache = Cache::new(0);
        let id = Id::random();
        cache.put(id, entry(10, 1));
        assert!(!cache.admits(10));
        assert!(cache.get(&id).is_none());
    }

    #[test]
    fn an_entry_too_heavy_to_keep_replaces_the_old_one_by_nothing() {
        let cache = Cache::new(256 * 1024);
        let id = Id::random();
        cache.put(id, entry(10, 1));
        assert!(cache.get(&id).is_some());
        assert!(!cache.admits(2048));
        cache.put(id, entry(2048, 2));
        assert!(cache.get(&id).is_none(), "no stale entry left behind");
    }

    #[test]
    fn a_touch_only_moves_last_seen_forward_and_forget_removes() {
        let cache = Cache::new(1 << 20);
        let id = Id::random();
        cache.put(id, entry(10, 100));
        cache.touched(&id, 50);
        assert_eq!(cache.get(&id).unwrap().meta.last_seen_ms, 100);
        cache.touched(&id, 200);
        assert_eq!(cache.get(&id).unwrap().meta.last_seen_ms, 200);
        cache.forget(&id);
        assert!(cache.get(&id).is_none());
        cache.touched(&id, 300);
        assert!(
            cache.get(&id).is_none(),
            "a touch does not bring an id back"
        );
    }
}
