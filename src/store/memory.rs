//! The memory store: a concurrent map from id to session, lost on restart.
//!
//! Reads take no lock beyond the map's shard read lock. Writes to one
//! session are serialised by a striped mutex chosen by the id, so a change is
//! always applied to the current data (no lost updates) and a rotation moves
//! data and retires the old id in one step that no write can slip between.
//! The old id of a rotation keeps a pointer to the new one, so a request that
//! was in flight during the rotation still lands its change in the session.
//!
//! A second map indexes sessions by user. It is updated under the session's
//! stripe lock, and never held while a stripe or a session shard is taken,
//! so the two maps cannot deadlock.
//!
//! Capacity: when `max_sessions` live sessions are held, a change that would
//! store one more is refused with [`Error::Full`] (503); stored sessions are
//! never evicted to make room, so a flood cannot log users out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use http::HeaderValue;

use super::{ApplyError, Error, Loaded, Lookup, Meta, Origin, Outcome, SessionInfo, Store, Target};
use crate::session::{Changes, EMPTY, Id, Policy, UserId, next_data, now_ms};

/// Stripes of the write lock; a power of two well above the core count.
const STRIPES: usize = 1024;
/// Longest chain of rotations a late write follows.
const MAX_HOPS: usize = 8;

/// What rarely changes about a session, shared by every read.
struct Fixed {
    user: Option<UserId>,
    created_ms: u64,
    client: Option<Arc<str>>,
    agent: Option<Arc<str>>,
}

struct Record {
    data: HeaderValue,
    issued_ms: u64,
    last_seen_ms: AtomicU64,
    fixed: Arc<Fixed>,
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
    users: DashMap<UserId, HashSet<Id>>,
    stripes: Box<[Mutex<()>]>,
    live: AtomicUsize,
    policy: Policy,
}

/// What a write found under its lock.
enum Found {
    Current(Option<(HeaderValue, Arc<Fixed>)>, u64),
    Moved(Target),
    Gone,
}

impl MemoryStore {
    pub fn new(policy: Policy) -> MemoryStore {
        MemoryStore {
            map: DashMap::new(),
            users: DashMap::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            live: AtomicUsize::new(0),
            policy,
        }
    }

    fn stripe(&self, id: &Id) -> std::sync::MutexGuard<'_, ()> {
        let b = id.as_bytes();
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        self.stripes[n % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, target: &Target, now: u64) -> Found {
        match self.map.get(&target.id).as_deref() {
            None => Found::Current(None, target.issued_ms),
            Some(Entry::Live(r)) if self.expired(r, now) => Found::Gone,
            Some(Entry::Live(r)) => {
                Found::Current(Some((r.data.clone(), r.fixed.clone())), r.issued_ms)
            }
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

    /// Inserts `entry`, keeping the live count and the user index right;
    /// refuses a new live session when the store is full.
    fn put(&self, id: Id, entry: Entry, adds_live: bool) -> Result<(), Error> {
        if adds_live && self.live.load(Ordering::Relaxed) >= self.policy.max_sessions {
            return Err(Error::Full {
                limit: self.policy.max_sessions,
            });
        }
        let user = match &entry {
            Entry::Live(r) => r.fixed.user.clone(),
            Entry::Dead { .. } => None,
        };
        let is_live = matches!(entry, Entry::Live(_));
        let old = self.map.insert(id, entry);
        self.forget(&id, old.as_ref());
        if let Some(user) = user {
            self.users.entry(user).or_default().insert(id);
        }
        self.count_change(matches!(old, Some(Entry::Live(_))), is_live);
        Ok(())
    }

    fn remove(&self, id: &Id) {
        let old = self.map.remove(id).map(|(_, e)| e);
        self.forget(id, old.as_ref());
        self.count_change(matches!(old, Some(Entry::Live(_))), false);
    }

    /// Drops a replaced entry's place in the user index.
    fn forget(&self, id: &Id, old: Option<&Entry>) {
        if let Some(Entry::Live(r)) = old
            && let Some(user) = &r.fixed.user
        {
            self.users.remove_if_mut(user, |_, ids| {
                ids.remove(id);
                ids.is_empty()
            });
        }
    }

    fn count_change(&self, was_live: bool, is_live: bool) {
        match (was_live, is_live) {
            (false, true) => self.live.fetch_add(1, Ordering::Relaxed),
            (true, false) => self.live.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    fn apply_locked(
        &self,
        target: Target,
        changes: &Changes,
        current: Option<(HeaderValue, Arc<Fixed>)>,
        origin: &Origin,
        now: u64,
    ) -> Result<(Target, bool, Option<UserId>), ApplyError> {
        let had = current.is_some();
        let (data, fixed) = current.unzip();
        let next = next_data(
            data.as_ref().map(HeaderValue::as_bytes),
            changes,
            self.policy.max_bytes,
        )?;
        let user = changes.user_after(fixed.as_ref().and_then(|f| f.user.as_ref()));
        // After Flush the session is a new one: new creation time and origin.
        let fixed = if changes.flush { None } else { fixed };
        let fixed = match fixed {
            Some(f) if f.user == user => f,
            Some(f) => Arc::new(Fixed {
                user: user.clone(),
                created_ms: f.created_ms,
                client: f.client.clone(),
                agent: f.agent.clone(),
            }),
            None if changes.flush => Arc::new(Fixed {
                user: user.clone(),
                created_ms: now,
                client: origin.client.clone(),
                agent: origin.agent.clone(),
            }),
            None => Arc::new(Fixed {
                user: user.clone(),
                created_ms: target.issued_ms,
                client: origin.client.clone(),
                agent: origin.agent.clone(),
            }),
        };
        let stored = next.is_some() || user.is_some();
        let record = |issued_ms| {
            // Copied into an allocation of its own size, not moved: the
            // encoder's buffer grows by doubling, and every stored session
            // would keep that slack (a million sessions of 210 bytes took
            // 559 MiB instead of 520 in `cargo bench --bench proxy`).
            let data = bytes::Bytes::copy_from_slice(next.as_deref().unwrap_or(EMPTY));
            Entry::Live(Record {
                data: HeaderValue::from_maybe_shared(data)
                    .expect("session JSON is ASCII without control characters"),
                issued_ms,
                last_seen_ms: AtomicU64::new(now),
                fixed: fixed.clone(),
            })
        };
        if !changes.renews_id() {
            match stored {
                true => self.put(target.id, record(target.issued_ms), !had)?,
                false => self.remove(&target.id),
            }
            return Ok((target, stored, user));
        }
        let renewed = Target {
            id: Id::random(),
            issued_ms: now,
        };
        if stored {
            // The old live session turns dead below, so the count only grows
            // when the old id held nothing.
            self.put(renewed.id, record(renewed.issued_ms), !had)?;
        }
        let tombstone = Entry::Dead {
            until_ms: self.policy.absolute_deadline(target.issued_ms),
            successor: (!changes.flush).then_some(renewed),
        };
        self.put(target.id, tombstone, false)?;
        Ok((renewed, stored, user))
    }

    /// Kills one live session of `user` (under its stripe lock).
    fn kill(&self, id: &Id, user: &UserId) -> bool {
        let _guard = self.stripe(id);
        let until_ms = match self.map.get(id).as_deref() {
            Some(Entry::Live(r)) if r.fixed.user.as_ref() == Some(user) => {
                self.policy.absolute_deadline(r.issued_ms)
            }
            _ => return false,
        };
        self.put(
            *id,
            Entry::Dead {
                until_ms,
                successor: None,
            },
            false,
        )
        .is_ok()
    }

    fn ids_of(&self, user: &UserId) -> Vec<Id> {
        self.users
            .get(user)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Store for MemoryStore {
    async fn load(&self, id: &Id) -> Result<Lookup, Error> {
        let now = now_ms();
        Ok(match self.map.get(id).as_deref() {
            None => Lookup::Unknown,
            Some(Entry::Live(r)) if self.expired(r, now) => Lookup::Dead,
            Some(Entry::Live(r)) => {
                let last_seen_ms = r.last_seen_ms.swap(now, Ordering::Relaxed);
                Lookup::Live(Loaded {
                    data: r.data.clone(),
                    meta: Meta {
                        user: r.fixed.user.clone(),
                        created_ms: r.fixed.created_ms,
                        last_seen_ms,
                        client: r.fixed.client.clone(),
                        agent: r.fixed.agent.clone(),
                    },
                })
            }
            Some(Entry::Dead { .. }) => Lookup::Dead,
        })
    }

    async fn apply(
        &self,
        target: &Target,
        changes: &Changes,
        origin: &Origin,
    ) -> Result<Outcome, ApplyError> {
        let now = now_ms();
        let mut target = *target;
        for _ in 0..MAX_HOPS {
            let applied = {
                let _guard = self.stripe(&target.id);
                match self.find(&target, now) {
                    Found::Current(current, issued_ms) => {
                        let target = Target {
                            id: target.id,
                            issued_ms,
                        };
                        self.apply_locked(target, changes, current, origin, now)?
                    }
                    Found::Moved(next) => {
                        target = next;
                        continue;
                    }
                    Found::Gone => return Ok(Outcome::Gone),
                }
            };
            let (target, has_data, user) = applied;
            // Other sessions are ended after this one's lock is released.
            let revoked = match (changes.revoke_others, &user) {
                (true, Some(user)) => self.revoke_user(user, Some(&target.id)).await?,
                _ => 0,
            };
            return Ok(Outcome::Applied {
                target,
                has_data,
                revoked,
            });
        }
        Ok(Outcome::Gone)
    }

    async fn sessions_of(&self, user: &UserId) -> Result<Vec<SessionInfo>, Error> {
        let now = now_ms();
        Ok(self
            .ids_of(user)
            .into_iter()
            .filter_map(|id| match self.map.get(&id).as_deref() {
                Some(Entry::Live(r)) if !self.expired(r, now) => Some(SessionInfo {
                    handle: id.handle(),
                    created_ms: r.fixed.created_ms,
                    last_seen_ms: r.last_seen_ms.load(Ordering::Relaxed),
                    client: r.fixed.client.as_deref().map(str::to_owned),
                    agent: r.fixed.agent.as_deref().map(str::to_owned),
                }),
                _ => None,
            })
            .collect())
    }

    async fn revoke_user(&self, user: &UserId, keep: Option<&Id>) -> Result<usize, Error> {
        Ok(self
            .ids_of(user)
            .iter()
            .filter(|id| Some(*id) != keep)
            .filter(|id| self.kill(id, user))
            .count())
    }

    async fn revoke_handle(&self, user: &UserId, handle: &str) -> Result<bool, Error> {
        Ok(self
            .ids_of(user)
            .iter()
            .find(|id| id.handle() == handle)
            .is_some_and(|id| self.kill(id, user)))
    }

    async fn sweep(&self) -> Result<usize, Error> {
        let now = now_ms();
        let mut expired = Vec::new();
        self.map.retain(|id, entry| match entry {
            Entry::Live(r) if self.expired(r, now) => {
                expired.push((*id, r.fixed.user.clone()));
                *entry = Entry::Dead {
                    until_ms: self.policy.absolute_deadline(r.issued_ms),
                    successor: None,
                };
                true
            }
            Entry::Live(_) => true,
            Entry::Dead { until_ms, .. } => *until_ms > now,
        });
        // The index is updated after the map's shards are released.
        for (id, user) in &expired {
            if let Some(user) = user {
                self.users.remove_if_mut(user, |_, ids| {
                    ids.remove(id);
                    ids.is_empty()
                });
            }
        }
        self.live.fetch_sub(expired.len(), Ordering::Relaxed);
        Ok(expired.len())
    }

    async fn check(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn count(&self) -> Result<Option<usize>, Error> {
        Ok(Some(self.live.load(Ordering::Relaxed)))
    }
}
