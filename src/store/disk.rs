//! The disk store: sessions in one SQLite file (WAL mode), so they survive
//! restarts and crashes.
//!
//! One dedicated writer thread owns the only write connection and
//! group-commits: it takes every change waiting in its queue, applies them
//! in one transaction with one fsync, then answers them all. Reads run on
//! tokio's blocking pool with their own connections (WAL readers never wait
//! for the writer). A change is answered only after its commit, so the
//! response head leaves after the change is durable (`immediate`) or at
//! least in the OS (`relaxed`).
//!
//! Each row is a session: live rows hold data; dead rows (`data IS NULL`)
//! are tombstones of rotated, flushed or expired ids, kept until the id's
//! absolute deadline. `expires_ms` is the row's next deadline, indexed, so
//! expiry is one indexed UPDATE and one indexed DELETE.
//!
//! Recently used live sessions are also kept in a read cache bounded in
//! bytes (`store.cache_bytes`); only the writer changes it (see `cache`).
//!
//! An exclusive lock on `<path>.lock` keeps a second process out; a file
//! that fails SQLite's `quick_check`, or is not ours, refuses to open and is
//! never changed.

mod cache;
mod rows;
mod schema;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use rusqlite::Connection;

use super::{ApplyError, Error, Loaded, Lookup, Meta, Origin, Outcome, SessionInfo, Store, Target};
use crate::config::Durability;
use crate::session::{Changes, Id, Policy, UserId, now_ms};
use cache::Cache;
use writer::{Job, Writer};

/// Why the disk store could not open. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "disk store {path}: another process holds {lock}; two sessiongate processes cannot share one file"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("disk store {path}: cannot open: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "disk store {path} is corrupt or not a SQLite database ({reason}); refusing to start, the file was not changed"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "disk store {path} is a SQLite database but not sessiongate's ({reason}); refusing to start, the file was not changed"
    )]
    Foreign { path: PathBuf, reason: String },
}

/// Settings for [`DiskStore::open`].
#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub path: PathBuf,
    pub durability: Durability,
    /// Largest database file, in bytes; beyond it writes fail (503).
    pub max_file_bytes: Option<u64>,
    /// Bytes of live sessions kept in the read cache; 0 turns it off.
    pub cache_bytes: u64,
}

pub struct DiskStore {
    path: PathBuf,
    writer: Writer,
    readers: Arc<Mutex<Vec<Connection>>>,
    cache: Arc<Cache>,
    live: Arc<AtomicUsize>,
    policy: Policy,
    /// Minimum time between two writes of a session's last-seen time.
    touch_ms: u64,
    /// Held for the store's lifetime: the single-process guarantee.
    _lock: File,
}

impl DiskStore {
    /// Opens (or creates) the store file, checking it before any change.
    pub fn open(options: DiskOptions, policy: Policy) -> Result<DiskStore, OpenError> {
        let path = options.path.clone();
        let lock = lock(&path)?;
        let conn = schema::open_checked(&options)?;
        let live = schema::count_live(&conn).map_err(|e| OpenError::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let live = Arc::new(AtomicUsize::new(live));
        let cache = Arc::new(Cache::new(options.cache_bytes));
        let writer = Writer::start(conn, policy, live.clone(), cache.clone(), path.clone());
        Ok(DiskStore {
            path,
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            cache,
            live,
            policy,
            touch_ms: (policy.idle_ms / 10).clamp(1, 60_000),
            _lock: lock,
        })
    }

    async fn revoke(
        &self,
        user: UserId,
        keep: Option<Id>,
        handle: Option<String>,
    ) -> Result<usize, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.send(Job::Revoke {
            user,
            keep,
            handle,
            reply,
        });
        answer
            .await
            .map_err(|_| self.unavailable("the writer thread stopped"))?
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("disk store {}: {e}", self.path.display()))
    }

    /// A stored session, from the cache or the file: live unless expired.
    fn live(&self, id: &Id, issued_ms: u64, data: HeaderValue, meta: Meta) -> Lookup {
        let now = now_ms();
        if self.policy.is_expired(issued_ms, meta.last_seen_ms, now) {
            return Lookup::Dead;
        }
        // Idle time is kept to within `touch_ms`; a lost touch only
        // shortens a session's idle life by that much.
        if now.saturating_sub(meta.last_seen_ms) >= self.touch_ms {
            self.writer.send(Job::Touch { id: *id, now });
        }
        Lookup::Live(Loaded { data, meta })
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => schema::open_reader(&path)?,
            };
            let result = f(&conn);
            readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| self.unavailable(e))?;
        result.map_err(|e| self.unavailable(e))
    }
}

/// Takes the exclusive lock beside the store file (released by the kernel
/// if the process dies, so a kill -9 never leaves a stale lock).
fn lock(path: &Path) -> Result<File, OpenError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| OpenError::Unreadable {
            path: path.to_owned(),
            reason: format!("cannot create {}: {e}", lock_path.display()),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked {
            path: path.to_owned(),
            lock: lock_path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::Unreadable {
            path: path.to_owned(),
            reason: format!("cannot lock {}: {e}", lock_path.display()),
        }),
    }
}

impl Store for DiskStore {
    async fn load(&self, id: &Id) -> Result<Lookup, Error> {
        if let Some(entry) = self.cache.get(id) {
            return Ok(self.live(id, entry.issued_ms, entry.data, entry.meta));
        }
        let key = *id;
        let row = self.read(move |conn| rows::read(conn, &key)).await?;
        let Some(row) = row else {
            return Ok(Lookup::Unknown);
        };
        let Some(data) = row.data else {
            return Ok(Lookup::Dead);
        };
        let data = HeaderValue::from_maybe_shared(bytes::Bytes::from(data))
            .map_err(|_| self.unavailable("a stored session is not valid header text"))?;
        let admitted = self.cache.admits(data.len());
        let found = self.live(id, row.issued_ms, data, row.meta);
        if admitted && matches!(found, Lookup::Live(_)) {
            self.writer.send(Job::Warm { id: *id });
        }
        Ok(found)
    }

    async fn apply(
        &self,
        target: &Target,
        changes: &Changes,
        origin: &Origin,
    ) -> Result<Outcome, ApplyError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.send(Job::Apply {
            target: *target,
            changes: changes.clone(),
            origin: origin.clone(),
            reply,
        });
        answer
            .await
            .map_err(|_| ApplyError::Store(self.unavailable("the writer thread stopped")))?
    }

    async fn sessions_of(&self, user: &UserId) -> Result<Vec<SessionInfo>, Error> {
        let owned = user.clone();
        let found = self.read(move |conn| rows::of_user(conn, &owned)).await?;
        let now = now_ms();
        Ok(found
            .into_iter()
            .filter(|(_, row)| !self.policy.is_expired(row.issued_ms, row.last_seen_ms, now))
            .map(|(id, row)| SessionInfo {
                handle: id.handle(),
                created_ms: row.meta.created_ms,
                last_seen_ms: row.meta.last_seen_ms,
                client: row.meta.client.as_deref().map(str::to_owned),
                agent: row.meta.agent.as_deref().map(str::to_owned),
            })
            .collect())
    }

    async fn revoke_user(&self, user: &UserId, keep: Option<&Id>) -> Result<usize, Error> {
        self.revoke(user.clone(), keep.copied(), None).await
    }

    async fn revoke_handle(&self, user: &UserId, handle: &str) -> Result<bool, Error> {
        Ok(self
            .revoke(user.clone(), None, Some(handle.to_owned()))
            .await?
            > 0)
    }

    async fn sweep(&self) -> Result<usize, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.send(Job::Sweep { reply });
        answer
            .await
            .map_err(|_| self.unavailable("the writer thread stopped"))?
    }

    async fn check(&self) -> Result<(), Error> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    async fn count(&self) -> Result<Option<usize>, Error> {
        Ok(Some(self.live.load(Ordering::Relaxed)))
    }
}
