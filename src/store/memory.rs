//! The memory store: a concurrent map from id to session, lost on restart.
//!
//! Reads take no lock beyond the map's shard read lock. Writes to one
//! session are serialised by a striped mutex chosen by the id, so a change is
//! always applied to the current data (no lost updates) and a rotation moves
//! data and retires the old id in one step that no write can slip between.
//! The old id of a rotation keeps a pointer to the new one, so a request that
//! was in flight during the rotation still lands its change in the session.
//!
//! Capacity: when `max_sessions` live sessions are held, a change that would
//! store one more is refused with [`Error::Full`] (503); stored sessions are
//! never evicted to make room, so a flood cannot log users out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use http::HeaderValue;

use super::{ApplyError, Error, Lookup, Outcome, Store, Target};
use crate::session::{Changes, Id, Policy, next_data, now_ms};

/// Stripes of the write lock; a power of two well above the core count.
const STRIPES: usize = 1024;
/// Longest chain of rotations a late write follows.
const MAX_HOPS: usize = 8;

struct Record {
    data: HeaderValue,
    issued_ms: u64,
    last_seen_ms: AtomicU64,
}

enum Entry {
    Live(Record),
    /// Retired until `until_ms`; `successor` is the id it was rotated to.
    Dead {
        until_ms: u64,
        successor: Option<Target>,
    },
}

pub struct MemoryStore {
    map: DashMap<Id, Entry>,
    stripes: Box<[Mutex<()>]>,
    live: AtomicUsize,
    policy: Policy,
}

/// What a write found under its lock.
enum Found {
    Data(Option<HeaderValue>, u64),
    Moved(Target),
    Gone,
}

impl MemoryStore {
    pub fn new(policy: Policy) -> MemoryStore {
        MemoryStore {
            map: DashMap::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            live: AtomicUsize::new(0),
            policy,
        }
    }

    fn stripe(&self, id: &Id) -> &Mutex<()> {
        let b = id.as_bytes();
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        &self.stripes[n % STRIPES]
    }

    fn find(&self, target: &Target, now: u64) -> Found {
        match self.map.get(&target.id).as_deref() {
            None => Found::Data(None, target.issued_ms),
            Some(Entry::Live(r)) if self.expired(r, now) => Found::Gone,
            Some(Entry::Live(r)) => Found::Data(Some(r.data.clone()), r.issued_ms),
            Some(Entry::Dead {
                successor: Some(next),
                ..
            }) => Found::Moved(*next),
            Some(Entry::Dead {
                successor: None, ..
            }) => Found::Gone,
        }
    }

    fn expired(&self, r: &Record, now: u64) -> bool {
        self.policy
            .is_expired(r.issued_ms, r.last_seen_ms.load(Ordering::Relaxed), now)
    }

    /// Inserts `entry`, keeping the live count right; refuses a new live
    /// session when the store is full.
    fn put(&self, id: Id, entry: Entry, adds_live: bool) -> Result<(), Error> {
        if adds_live && self.live.load(Ordering::Relaxed) >= self.policy.max_sessions {
            return Err(Error::Full {
                limit: self.policy.max_sessions,
            });
        }
        let is_live = matches!(entry, Entry::Live(_));
        let was_live = matches!(self.map.insert(id, entry), Some(Entry::Live(_)));
        self.count_change(was_live, is_live);
        Ok(())
    }

    fn remove(&self, id: &Id) {
        let was_live = matches!(self.map.remove(id), Some((_, Entry::Live(_))));
        self.count_change(was_live, false);
    }

    fn count_change(&self, was_live: bool, is_live: bool) {
        match (was_live, is_live) {
            (false, true) => self.live.fetch_add(1, Ordering::Relaxed),
            (true, false) => self.live.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    fn live_entry(data: Vec<u8>, issued_ms: u64, now: u64) -> Entry {
        let data = HeaderValue::from_maybe_shared(bytes::Bytes::from(data))
            .expect("session JSON is ASCII without control characters");
        Entry::Live(Record {
            data,
            issued_ms,
            last_seen_ms: AtomicU64::new(now),
        })
    }

    fn apply_locked(
        &self,
        target: Target,
        changes: &Changes,
        current: Option<HeaderValue>,
        now: u64,
    ) -> Result<Outcome, ApplyError> {
        let had_data = current.is_some();
        let next = next_data(
            current.as_ref().map(HeaderValue::as_bytes),
            changes,
            self.policy.max_bytes,
        )?;
        let has_data = next.is_some();
        if !changes.renews_id() {
            match next {
                Some(data) => self.put(
                    target.id,
                    Self::live_entry(data, target.issued_ms, now),
                    !had_data,
                )?,
                None => self.remove(&target.id),
            }
            return Ok(self.outcome(target, has_data));
        }
        let renewed = Target {
            id: Id::random(),
            issued_ms: now,
        };
        if let Some(data) = next {
            // The old live session turns dead below, so the count only grows
            // when the old id held nothing.
            self.put(
                renewed.id,
                Self::live_entry(data, renewed.issued_ms, now),
                !had_data,
            )?;
        }
        let tombstone = Entry::Dead {
            until_ms: self.policy.absolute_deadline(target.issued_ms),
            successor: (!changes.flush).then_some(renewed),
        };
        self.put(target.id, tombstone, false)?;
        Ok(self.outcome(renewed, has_data))
    }

    fn outcome(&self, target: Target, has_data: bool) -> Outcome {
        Outcome::Applied { target, has_data }
    }
}

impl Store for MemoryStore {
    async fn load(&self, id: &Id) -> Result<Lookup, Error> {
        let now = now_ms();
        Ok(match self.map.get(id).as_deref() {
            None => Lookup::Unknown,
            Some(Entry::Live(r)) if self.expired(r, now) => Lookup::Dead,
            Some(Entry::Live(r)) => {
                r.last_seen_ms.store(now, Ordering::Relaxed);
                Lookup::Live(r.data.clone())
            }
            Some(Entry::Dead { .. }) => Lookup::Dead,
        })
    }

    async fn apply(&self, target: &Target, changes: &Changes) -> Result<Outcome, ApplyError> {
        let now = now_ms();
        let mut target = *target;
        for _ in 0..MAX_HOPS {
            let _guard = self
                .stripe(&target.id)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match self.find(&target, now) {
                Found::Data(current, issued_ms) => {
                    let target = Target {
                        id: target.id,
                        issued_ms,
                    };
                    return self.apply_locked(target, changes, current, now);
                }
                Found::Moved(next) => target = next,
                Found::Gone => return Ok(Outcome::Gone),
            }
        }
        Ok(Outcome::Gone)
    }

    async fn sweep(&self) -> Result<usize, Error> {
        let now = now_ms();
        let mut expired = 0;
        self.map.retain(|_, entry| match entry {
            Entry::Live(r) if self.expired(r, now) => {
                expired += 1;
                *entry = Entry::Dead {
                    until_ms: self.policy.absolute_deadline(r.issued_ms),
                    successor: None,
                };
                true
            }
            Entry::Live(_) => true,
            Entry::Dead { until_ms, .. } => *until_ms > now,
        });
        self.live.fetch_sub(expired, Ordering::Relaxed);
        Ok(expired)
    }

    async fn check(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn count(&self) -> Result<Option<usize>, Error> {
        Ok(Some(self.live.load(Ordering::Relaxed)))
    }
}
