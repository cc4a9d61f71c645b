//! The disk store's writer thread: the only connection that writes, and
//! the group commit. Every job waiting in the queue joins one transaction
//! (one fsync); all are answered after the commit. If the batch fails (a
//! full disk, an I/O error), each change is retried alone so that only the
//! ones that really fail get an error. After each commit, and before any
//! answer, the writer brings the read cache up to date (see `cache`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;
use tracing::warn;

use super::cache::Cache;
use super::rows::{self, CacheEffect};
use crate::session::{Changes, Id, Policy, UserId, now_ms};
use crate::store::{ApplyError, Error, Origin, Outcome, Target};

/// Most jobs in one transaction; bounds the latency a batch adds.
const MAX_BATCH: usize = 512;

pub enum Job {
    Apply {
        target: Target,
        changes: Changes,
        origin: Origin,
        reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    },
    /// End sessions of a user: all but `keep`, or the one with `handle`.
    Revoke {
        user: UserId,
        keep: Option<Id>,
        handle: Option<String>,
        reply: oneshot::Sender<Result<usize, Error>>,
    },
    /// Refresh a live session's last-seen time; nobody waits for it.
    Touch { id: Id, now: u64 },
    /// A read missed the cache: load the session into it; nobody waits.
    Warm { id: Id },
    Sweep {
        reply: oneshot::Sender<Result<usize, Error>>,
    },
}

pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(
        conn: Connection,
        policy: Policy,
        live: Arc<AtomicUsize>,
        cache: Arc<Cache>,
        path: PathBuf,
    ) -> Writer {
        let (tx, rx) = mpsc::channel();
        let state = State {
            conn,
            policy,
            live,
            cache,
            path,
        };
        let thread = std::thread::Builder::new()
            .name("sessiongate-disk-writer".to_owned())
            .spawn(move || state.run(rx))
            .expect("the writer thread starts");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues a job. If the thread is gone, the job's reply channel closes
    /// and the caller sees an error.
    pub fn send(&self, job: Job) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }
}

impl Drop for Writer {
    /// Finishes the queued jobs, then closes the database cleanly.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    conn: Connection,
    policy: Policy,
    live: Arc<AtomicUsize>,
    cache: Arc<Cache>,
    path: PathBuf,
}

/// An Apply job taken apart: the change and where its answer goes.
type ApplyJob = (
    Target,
    Changes,
    Origin,
    oneshot::Sender<Result<Outcome, ApplyError>>,
);

/// What one transaction committed: each job's result, and the touches
/// that changed a live row.
struct Committed {
    applied: Vec<rows::Applied>,
    touched: Vec<(Id, u64)>,
}

/// A change computed inside a transaction, answered after its commit.
struct Pending {
    reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    result: Result<Outcome, ApplyError>,
    live_delta: isize,
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            warn!(path = %self.path.display(), error = %e, "disk store: final checkpoint failed");
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("disk store {}: {e}", self.path.display()))
    }

    fn commit_batch(&mut self, batch: Vec<Job>) {
        let mut applies = Vec::new();
        let mut touches = Vec::new();
        let mut warms = Vec::new();
        for job in batch {
            match job {
                Job::Apply {
                    target,
                    changes,
                    origin,
                    reply,
                } => applies.push((target, changes, origin, reply)),
                Job::Revoke {
                    user,
                    keep,
                    handle,
                    reply,
                } => {
                    let _ = reply.send(self.revoke(&user, keep.as_ref(), handle.as_deref()));
                }
                Job::Touch { id, now } => touches.push((id, now)),
                Job::Warm { id } => warms.push(id),
                Job::Sweep { reply } => {
                    let _ = reply.send(self.sweep());
                }
            }
        }
        if !(applies.is_empty() && touches.is_empty()) {
            self.commit_changes(applies, &touches);
        }
        // After the changes: a warm loads the state they left.
        for id in warms {
            self.warm(&id);
        }
    }

    fn commit_changes(&mut self, applies: Vec<ApplyJob>, touches: &[(Id, u64)]) {
        let jobs: Vec<(Target, &Changes, &Origin)> =
            applies.iter().map(|(t, c, o, _)| (*t, c, o)).collect();
        let batch = self.transaction(&jobs, touches);
        drop(jobs);
        match batch {
            Ok(Committed {
                applied: mut results,
                touched,
            }) => {
                for applied in &mut results {
                    self.learn(std::mem::take(&mut applied.cache));
                }
                // Only touches the file took: a touch that arrives after
                // the sweep ended its session must not revive the entry.
                for (id, seen) in touched {
                    self.cache.touched(&id, seen);
                }
                for ((.., reply), applied) in applies.into_iter().zip(results) {
                    self.answer(Pending {
                        reply,
                        result: applied.outcome,
                        live_delta: applied.live_delta,
                    });
                }
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, changes = applies.len(), "disk store: batch commit failed; retrying each change alone");
                for (target, changes, origin, reply) in applies {
                    let pending = match self.transaction(&[(target, &changes, &origin)], &[]) {
                        Ok(mut committed) => {
                            let applied = committed.applied.pop().expect("one result per job");
                            self.learn(applied.cache);
                            Pending {
                                reply,
                                result: applied.outcome,
                                live_delta: applied.live_delta,
                            }
                        }
                        Err(e) => Pending {
                            reply,
                            result: Err(ApplyError::Store(self.unavailable(e))),
                            live_delta: 0,
                        },
                    };
                    self.answer(pending);
                }
            }
        }
    }

    /// Brings the read cache up to date with one committed change.
    fn learn(&self, effect: CacheEffect) {
        if let Some(id) = effect.ended {
            self.cache.forget(&id);
        }
        if let Some((id, row)) = effect.stored {
            self.cache.put_row(id, row);
        }
        for id in &effect.others_ended {
            self.cache.forget(id);
        }
    }

    /// Loads a live session into the read cache; a failure only costs the
    /// next read a trip to the file.
    fn warm(&self, id: &Id) {
        if self.cache.holds(id) {
            return;
        }
        match rows::read(&self.conn, id) {
            Ok(Some(row)) => self.cache.put_row(*id, row),
            Ok(None) => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "disk store: could not load a session into the read cache");
            }
        }
    }

    fn answer(&self, pending: Pending) {
        if pending.live_delta >= 0 {
            self.live
                .fetch_add(pending.live_delta as usize, Ordering::Relaxed);
        } else {
            self.live
                .fetch_sub(pending.live_delta.unsigned_abs(), Ordering::Relaxed);
        }
        let _ = pending.reply.send(pending.result);
    }

    /// Applies the jobs and touches in one transaction; nothing is kept if
    /// any statement or the commit fails.
    fn transaction(
        &mut self,
        jobs: &[(Target, &Changes, &Origin)],
        touches: &[(Id, u64)],
    ) -> rusqlite::Result<Committed> {
        let policy = self.policy;
        let live = self.live.load(Ordering::Relaxed);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut delta = 0isize;
        let mut results = Vec::with_capacity(jobs.len());
        for (target, changes, origin) in jobs {
            let capacity = policy.max_sessions as isize - live as isize - delta;
            let applied = rows::apply(&tx, *target, changes, origin, &policy, now, capacity)?;
            delta += applied.live_delta;
            results.push(applied);
        }
        let mut touched = Vec::with_capacity(touches.len());
        for (id, seen) in touches {
            let n = tx.prepare_cached(
                "UPDATE sessions SET last_seen_ms = ?2, expires_ms = min(?2 + ?3, issued_ms + ?4) WHERE id = ?1 AND data IS NOT NULL AND last_seen_ms < ?2",
            )?
            .execute(params![id.as_bytes().as_slice(), *seen as i64, policy.idle_ms as i64, policy.absolute_ms as i64])?;
            if n > 0 {
                touched.push((*id, *seen));
            }
        }
        tx.commit()?;
        Ok(Committed {
            applied: results,
            touched,
        })
    }

    fn sweep(&mut self) -> Result<usize, Error> {
        let policy = self.policy;
        let result = (|| -> rusqlite::Result<Vec<Id>> {
            let now = now_ms();
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expired = rows::expire(&tx, now, &policy)?;
            tx.execute(
                "DELETE FROM sessions WHERE data IS NULL AND expires_ms <= ?1",
                params![now as i64],
            )?;
            tx.commit()?;
            Ok(expired)
        })();
        let expired = result.map_err(|e| self.unavailable(e))?;
        for id in &expired {
            self.cache.forget(id);
        }
        // Give freed pages back to the file system: churn must not grow the file.
        if let Err(e) = self.conn.execute_batch("PRAGMA incremental_vacuum") {
            warn!(path = %self.path.display(), error = %e, "disk store: could not return freed pages");
        }
        let expired = expired.len();
        self.live.fetch_sub(
            expired.min(self.live.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(expired)
    }

    /// Ends sessions of `user` in one transaction; returns how many.
    fn revoke(
        &mut self,
        user: &UserId,
        keep: Option<&Id>,
        handle: Option<&str>,
    ) -> Result<usize, Error> {
        let policy = self.policy;
        let result = (|| -> rusqlite::Result<Vec<Id>> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ended = match handle {
                None => rows::revoke_user(&tx, user, keep, &policy)?,
                Some(handle) => match rows::of_user(&tx, user)?
                    .into_iter()
                    .find(|(id, _)| id.handle() == handle)
                {
                    Some((id, _)) if rows::kill(&tx, &id, user, &policy)? => vec![id],
                    _ => Vec::new(),
                },
            };
            tx.commit()?;
            Ok(ended)
        })();
        let ended = result.map_err(|e| self.unavailable(e))?;
        for id in &ended {
            self.cache.forget(id);
        }
        let n = ended.len();
        self.live
            .fetch_sub(n.min(self.live.load(Ordering::Relaxed)), Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::session::{Edit, Key};
    use crate::store::disk::{DiskOptions, schema};

    fn state(dir: &std::path::Path, policy: Policy) -> State {
        let options = DiskOptions {
            path: dir.join("sessions.db"),
            durability: Durability::Relaxed,
            max_file_bytes: None,
            cache_bytes: 1 << 20,
        };
        State {
            conn: schema::open_checked(&options).unwrap(),
            policy,
            live: Arc::new(AtomicUsize::new(0)),
            cache: Arc::new(Cache::new(options.cache_bytes)),
            path: options.path,
        }
    }

    /// Sessions that go idle within a test: after 50 ms.
    fn short_idle() -> Policy {
        Policy {
            idle_ms: 50,
            absolute_ms: 3_600_000,
            max_bytes: 4096,
            max_sessions: 100,
        }
    }

    /// A read just before the idle deadline queues a touch; if the sweep
    /// ends the session first (both in one batch), the touch finds a
    /// tombstone and must not make the cached entry live again.
    #[test]
    fn a_touch_behind_the_sweep_does_not_revive_the_cached_session() {
        let dir = tempfile::tempdir().unwrap();
        let policy = short_idle();
        let mut state = state(dir.path(), policy);
        let target = Target {
            id: Id::random(),
            issued_ms: now_ms(),
        };
        let changes = Changes {
            edits: vec![Edit::Set(Key::parse("a").unwrap(), 1.into())],
            ..Changes::default()
        };
        let (reply, _answer) = oneshot::channel();
        state.commit_batch(vec![Job::Apply {
            target,
            changes,
            origin: Origin::default(),
            reply,
        }]);
        assert!(state.cache.holds(&target.id), "a write fills the cache");
        std::thread::sleep(std::time::Duration::from_millis(80));
        let (reply, _answer) = oneshot::channel();
        state.commit_batch(vec![
            Job::Touch {
                id: target.id,
                now: now_ms(),
            },
            Job::Sweep { reply },
        ]);
        let cached_live = state
            .cache
            .get(&target.id)
            .is_some_and(|e| !policy.is_expired(e.issued_ms, e.meta.last_seen_ms, now_ms()));
        assert!(!cached_live, "the file says ended, so must the cache");
    }

    /// A tombstone keeps no record of where its session came from.
    #[test]
    fn ending_a_session_forgets_its_client_and_agent() {
        let dir = tempfile::tempdir().unwrap();
        let policy = short_idle();
        let mut state = state(dir.path(), policy);
        let user = crate::session::UserId::parse("alice").unwrap();
        let origin = Origin {
            client: Some("203.0.113.9".into()),
            agent: Some("Browser/1.0".into()),
        };
        let (expiring, revoked) = (Id::random(), Id::random());
        for (id, bind) in [(expiring, None), (revoked, Some(user.clone()))] {
            let (reply, _answer) = oneshot::channel();
            let changes = Changes {
                edits: vec![Edit::Set(Key::parse("a").unwrap(), 1.into())],
                user: bind,
                ..Changes::default()
            };
            let target = Target {
                id,
                issued_ms: now_ms(),
            };
            state.commit_batch(vec![Job::Apply {
                target,
                changes,
                origin: origin.clone(),
                reply,
            }]);
        }
        rows::revoke_user(&state.conn, &user, None, &policy).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(80));
        let (reply, _answer) = oneshot::channel();
        state.commit_batch(vec![Job::Sweep { reply }]);
        for id in [expiring, revoked] {
            let (data, client, agent): (Option<Vec<u8>>, Option<String>, Option<String>) = state
                .conn
                .query_row(
                    "SELECT data, client, agent FROM sessions WHERE id = ?1",
                    [id.as_bytes().as_slice()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!((data, client, agent), (None, None, None));
        }
    }
}
