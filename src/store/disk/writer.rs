//! The disk store's writer thread: the only connection that writes, and
//! the group commit. Every job waiting in the queue joins one transaction
//! (one fsync); all are answered after the commit. If the batch fails (a
//! full disk, an I/O error), each change is retried alone so that only the
//! ones that really fail get an error.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;
use tracing::warn;

use crate::session::{Changes, Id, Policy, next_data, now_ms};
use crate::store::{ApplyError, Error, Outcome, Target};

/// Most jobs in one transaction; bounds the latency a batch adds.
const MAX_BATCH: usize = 512;
/// Longest chain of rotations a late write follows.
const MAX_HOPS: usize = 8;

pub enum Job {
    Apply {
        target: Target,
        changes: Changes,
        reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    },
    /// Refresh a live session's last-seen time; nobody waits for it.
    Touch { id: Id, now: u64 },
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
        path: PathBuf,
    ) -> Writer {
        let (tx, rx) = mpsc::channel();
        let state = State {
            conn,
            policy,
            live,
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
    path: PathBuf,
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
        for job in batch {
            match job {
                Job::Apply {
                    target,
                    changes,
                    reply,
                } => applies.push((target, changes, reply)),
                Job::Touch { id, now } => touches.push((id, now)),
                Job::Sweep { reply } => {
                    let _ = reply.send(self.sweep());
                }
            }
        }
        if applies.is_empty() && touches.is_empty() {
            return;
        }
        let jobs: Vec<(Target, Changes)> =
            applies.iter().map(|(t, c, _)| (*t, c.clone())).collect();
        match self.transaction(&jobs, &touches) {
            Ok(results) => {
                for ((_, _, reply), (result, delta)) in applies.into_iter().zip(results) {
                    self.answer(Pending {
                        reply,
                        result,
                        live_delta: delta,
                    });
                }
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, changes = jobs.len(), "disk store: batch commit failed; retrying each change alone");
                for (target, changes, reply) in applies {
                    let pending = match self.transaction(&[(target, changes)], &[]) {
                        Ok(mut results) => {
                            let (result, delta) = results.pop().expect("one result per job");
                            Pending {
                                reply,
                                result,
                                live_delta: delta,
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
    #[allow(clippy::type_complexity)]
    fn transaction(
        &mut self,
        jobs: &[(Target, Changes)],
        touches: &[(Id, u64)],
    ) -> rusqlite::Result<Vec<(Result<Outcome, ApplyError>, isize)>> {
        let policy = self.policy;
        let live = self.live.load(Ordering::Relaxed);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut delta = 0isize;
        let mut results = Vec::with_capacity(jobs.len());
        for (target, changes) in jobs {
            let capacity = policy.max_sessions as isize - live as isize - delta;
            let (result, d) = apply_one(&tx, *target, changes, &policy, now, capacity)?;
            delta += d;
            results.push((result, d));
        }
        for (id, seen) in touches {
            tx.prepare_cached(
                "UPDATE sessions SET last_seen_ms = ?2, expires_ms = min(?2 + ?3, issued_ms + ?4) WHERE id = ?1 AND data IS NOT NULL AND last_seen_ms < ?2",
            )?
            .execute(params![id.as_bytes().as_slice(), *seen as i64, policy.idle_ms as i64, policy.absolute_ms as i64])?;
        }
        tx.commit()?;
        Ok(results)
    }

    fn sweep(&mut self) -> Result<usize, Error> {
        let result = (|| -> rusqlite::Result<usize> {
            let now = now_ms() as i64;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expired = tx.execute(
                "UPDATE sessions SET data = NULL, successor = NULL, successor_issued = NULL, expires_ms = issued_ms + ?2 \
                 WHERE data IS NOT NULL AND expires_ms <= ?1",
                params![now, self.policy.absolute_ms as i64],
            )?;
            tx.execute(
                "DELETE FROM sessions WHERE data IS NULL AND expires_ms <= ?1",
                params![now],
            )?;
            tx.commit()?;
            // Give freed pages back to the file system: churn must not grow the file.
            self.conn.execute_batch("PRAGMA incremental_vacuum")?;
            Ok(expired)
        })();
        let expired = result.map_err(|e| self.unavailable(e))?;
        self.live.fetch_sub(
            expired.min(self.live.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(expired)
    }
}

/// What a write finds for an id.
enum Found {
    Data(Option<Vec<u8>>, u64),
    Moved(Target),
    Gone,
}

fn find(tx: &Connection, t: &Target, policy: &Policy, now: u64) -> rusqlite::Result<Found> {
    let mut stmt = tx.prepare_cached("SELECT data, issued_ms, last_seen_ms, successor, successor_issued FROM sessions WHERE id = ?1")?;
    let row = stmt
        .query_row(params![t.id.as_bytes().as_slice()], |r| {
            Ok((
                r.get::<_, Option<Vec<u8>>>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    Ok(match row {
        None => Found::Data(None, t.issued_ms),
        Some((Some(_), issued, seen, _, _)) if policy.is_expired(issued, seen, now) => Found::Gone,
        Some((Some(data), issued, _, _, _)) => Found::Data(Some(data), issued),
        Some((None, _, _, Some(next), Some(next_issued))) => {
            match <[u8; 32]>::try_from(next.as_slice()) {
                Ok(bytes) => Found::Moved(Target {
                    id: Id::from_bytes(bytes),
                    issued_ms: next_issued as u64,
                }),
                Err(_) => Found::Gone,
            }
        }
        Some((None, ..)) => Found::Gone,
    })
}

/// One change: the logical result and the change in live sessions.
/// `capacity` is how many more live sessions fit.
fn apply_one(
    tx: &Connection,
    target: Target,
    changes: &Changes,
    policy: &Policy,
    now: u64,
    capacity: isize,
) -> rusqlite::Result<(Result<Outcome, ApplyError>, isize)> {
    let mut t = target;
    for _ in 0..MAX_HOPS {
        match find(tx, &t, policy, now)? {
            Found::Data(current, issued_ms) => {
                let t = Target {
                    id: t.id,
                    issued_ms,
                };
                return write(tx, t, current, changes, policy, now, capacity);
            }
            Found::Moved(next) => t = next,
            Found::Gone => return Ok((Ok(Outcome::Gone), 0)),
        }
    }
    Ok((Ok(Outcome::Gone), 0))
}

fn write(
    tx: &Connection,
    target: Target,
    current: Option<Vec<u8>>,
    changes: &Changes,
    policy: &Policy,
    now: u64,
    capacity: isize,
) -> rusqlite::Result<(Result<Outcome, ApplyError>, isize)> {
    let had = current.is_some();
    let next = match next_data(current.as_deref(), changes, policy.max_bytes) {
        Ok(next) => next,
        Err(refusal) => return Ok((Err(refusal.into()), 0)),
    };
    if next.is_some() && !had && capacity <= 0 {
        return Ok((
            Err(Error::Full {
                limit: policy.max_sessions,
            }
            .into()),
            0,
        ));
    }
    let delta = next.is_some() as isize - had as isize;
    let renewed = changes.renews_id().then(|| Target {
        id: Id::random(),
        issued_ms: now,
    });
    let session = renewed.unwrap_or(target);
    match &next {
        Some(data) => put_live(tx, &session, data, policy, now)?,
        None if renewed.is_none() => {
            tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                .execute(params![target.id.as_bytes().as_slice()])?;
        }
        None => {}
    }
    if let Some(renewed) = renewed {
        let successor = (!changes.flush).then_some(renewed);
        put_dead(tx, &target, successor, policy)?;
    }
    let has_data = next.is_some();
    Ok((
        Ok(Outcome::Applied {
            target: session,
            has_data,
        }),
        delta,
    ))
}

fn put_live(
    tx: &Connection,
    t: &Target,
    data: &[u8],
    policy: &Policy,
    now: u64,
) -> rusqlite::Result<()> {
    let expires = now
        .saturating_add(policy.idle_ms)
        .min(policy.absolute_deadline(t.issued_ms));
    tx.prepare_cached(
        "INSERT OR REPLACE INTO sessions (id, data, issued_ms, last_seen_ms, expires_ms, successor, successor_issued) \
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL)",
    )?
    .execute(params![t.id.as_bytes().as_slice(), data, t.issued_ms as i64, now as i64, expires as i64])?;
    Ok(())
}

fn put_dead(
    tx: &Connection,
    t: &Target,
    successor: Option<Target>,
    policy: &Policy,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO sessions (id, data, issued_ms, last_seen_ms, expires_ms, successor, successor_issued) \
         VALUES (?1, NULL, ?2, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        t.id.as_bytes().as_slice(),
        t.issued_ms as i64,
        policy.absolute_deadline(t.issued_ms) as i64,
        successor.map(|s| s.id.as_bytes().to_vec()),
        successor.map(|s| s.issued_ms as i64),
    ])?;
    Ok(())
}
