//! The sessions table, row by row: reading a session, applying one
//! response's changes inside the writer's transaction, and ending sessions.
//! Live rows hold data (and maybe a user); dead rows (`data IS NULL`) are
//! tombstones, never bound to a user.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use crate::session::{Changes, EMPTY, Id, Policy, UserId, next_data};
use crate::store::{ApplyError, Error, Meta, Origin, Outcome, Target};

/// Longest chain of rotations a late write follows.
const MAX_HOPS: usize = 8;

/// A session row as stored.
pub struct Row {
    /// `None` for a dead id.
    pub data: Option<Vec<u8>>,
    pub issued_ms: u64,
    pub last_seen_ms: u64,
    pub successor: Option<Target>,
    pub meta: Meta,
}

const COLUMNS: &str =
    "data, issued_ms, last_seen_ms, successor, successor_issued, user, created_ms, client, agent";

fn id_from(bytes: Option<Vec<u8>>) -> Option<Id> {
    <[u8; 32]>::try_from(bytes?.as_slice())
        .ok()
        .map(Id::from_bytes)
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let issued_ms = r.get::<_, i64>(1)? as u64;
    let successor = id_from(r.get(3)?)
        .zip(r.get::<_, Option<i64>>(4)?)
        .map(|(id, issued)| Target {
            id,
            issued_ms: issued as u64,
        });
    let last_seen_ms = r.get::<_, i64>(2)? as u64;
    Ok(Row {
        data: r.get(0)?,
        issued_ms,
        last_seen_ms,
        successor,
        meta: Meta {
            user: r
                .get::<_, Option<String>>(5)?
                .as_deref()
                .and_then(UserId::parse),
            created_ms: r.get::<_, Option<i64>>(6)?.map_or(issued_ms, |c| c as u64),
            last_seen_ms,
            client: r.get::<_, Option<String>>(7)?.map(Arc::from),
            agent: r.get::<_, Option<String>>(8)?.map(Arc::from),
        },
    })
}

pub fn read(conn: &Connection, id: &Id) -> rusqlite::Result<Option<Row>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"))?;
    stmt.query_row(params![id.as_bytes().as_slice()], row_from)
        .optional()
}

/// The live rows bound to `user`, with their ids.
pub fn of_user(conn: &Connection, user: &UserId) -> rusqlite::Result<Vec<(Id, Row)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, id FROM sessions WHERE user = ?1 AND data IS NOT NULL"
    ))?;
    let rows = stmt.query_map(params![user.as_str()], |r| {
        Ok((id_from(r.get(9)?), row_from(r)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        if let (Some(id), row) = row? {
            out.push((id, row));
        }
    }
    Ok(out)
}

/// The result of one change, answered after its commit.
pub struct Applied {
    pub outcome: Result<Outcome, ApplyError>,
    /// Change in the number of live rows.
    pub live_delta: isize,
    /// What the read cache learns once the change is committed.
    pub cache: CacheEffect,
}

/// How one change moved sessions in or out of the live state.
#[derive(Default)]
pub struct CacheEffect {
    /// The session as now stored.
    pub stored: Option<(Id, Row)>,
    /// An id that stopped being live (rotated, flushed, emptied).
    pub ended: Option<Id>,
    /// Other sessions of the user ended (Revoke-Others).
    pub others_ended: Vec<Id>,
}

impl Applied {
    /// A change that wrote nothing (refused, or its session is gone).
    fn logical(outcome: Result<Outcome, ApplyError>) -> Applied {
        Applied {
            outcome,
            live_delta: 0,
            cache: CacheEffect::default(),
        }
    }
}

/// One response's changes. `capacity` is how many more live rows fit.
pub fn apply(
    tx: &Connection,
    target: Target,
    changes: &Changes,
    origin: &Origin,
    policy: &Policy,
    now: u64,
    capacity: isize,
) -> rusqlite::Result<Applied> {
    let mut t = target;
    for _ in 0..MAX_HOPS {
        match read(tx, &t.id)? {
            None => return write(tx, t, None, changes, origin, policy, now, capacity),
            Some(row)
                if row.data.is_some()
                    && policy.is_expired(row.issued_ms, row.last_seen_ms, now) =>
            {
                return Ok(Applied::logical(Ok(Outcome::Gone)));
            }
            Some(row) if row.data.is_some() => {
                let t = Target {
                    id: t.id,
                    issued_ms: row.issued_ms,
                };
                return write(tx, t, Some(row), changes, origin, policy, now, capacity);
            }
            Some(Row {
                successor: Some(next),
                ..
            }) => t = next,
            Some(_) => return Ok(Applied::logical(Ok(Outcome::Gone))),
        }
    }
    Ok(Applied::logical(Ok(Outcome::Gone)))
}

#[allow(clippy::too_many_arguments)]
fn write(
    tx: &Connection,
    target: Target,
    current: Option<Row>,
    changes: &Changes,
    origin: &Origin,
    policy: &Policy,
    now: u64,
    capacity: isize,
) -> rusqlite::Result<Applied> {
    let had = current.is_some();
    let data = current.as_ref().and_then(|r| r.data.as_deref());
    let next = match next_data(data, changes, policy.max_bytes) {
        Ok(next) => next,
        Err(refusal) => return Ok(Applied::logical(Err(refusal.into()))),
    };
    let user = changes.user_after(current.as_ref().and_then(|r| r.meta.user.as_ref()));
    let stored = next.is_some() || user.is_some();
    if stored && !had && capacity <= 0 {
        return Ok(Applied::logical(Err(Error::Full {
            limit: policy.max_sessions,
        }
        .into())));
    }
    // After Flush the session is a new one: new creation time and origin.
    let meta = match current.filter(|_| !changes.flush) {
        Some(row) => Meta {
            user: user.clone(),
            ..row.meta
        },
        None => Meta {
            user: user.clone(),
            created_ms: if changes.flush { now } else { target.issued_ms },
            last_seen_ms: now,
            client: origin.client.clone(),
            agent: origin.agent.clone(),
        },
    };
    let renewed = changes.renews_id().then(|| Target {
        id: Id::random(),
        issued_ms: now,
    });
    let session = renewed.unwrap_or(target);
    let mut cache = CacheEffect::default();
    if stored {
        let data = next.unwrap_or_else(|| EMPTY.to_vec());
        put_live(tx, &session, &data, &meta, policy, now)?;
        let row = Row {
            data: Some(data),
            issued_ms: session.issued_ms,
            last_seen_ms: now,
            successor: None,
            meta: Meta {
                last_seen_ms: now,
                ..meta
            },
        };
        cache.stored = Some((session.id, row));
    } else if renewed.is_none() {
        tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
            .execute(params![target.id.as_bytes().as_slice()])?;
    }
    if renewed.is_some() {
        put_dead(tx, &target, (!changes.flush).then_some(session), policy)?;
    }
    if renewed.is_some() || !stored {
        cache.ended = Some(target.id);
    }
    let mut live_delta = stored as isize - had as isize;
    let mut revoked = 0;
    if changes.revoke_others
        && let Some(user) = &user
    {
        cache.others_ended = revoke_user(tx, user, Some(&session.id), policy)?;
        revoked = cache.others_ended.len();
        live_delta -= revoked as isize;
    }
    let outcome = Outcome::Applied {
        target: session,
        has_data: stored,
        revoked,
    };
    Ok(Applied {
        outcome: Ok(outcome),
        live_delta,
        cache,
    })
}

fn put_live(
    tx: &Connection,
    t: &Target,
    data: &[u8],
    meta: &Meta,
    policy: &Policy,
    now: u64,
) -> rusqlite::Result<()> {
    let expires = now
        .saturating_add(policy.idle_ms)
        .min(policy.absolute_deadline(t.issued_ms));
    tx.prepare_cached(
        "INSERT OR REPLACE INTO sessions (id, data, issued_ms, last_seen_ms, expires_ms, successor, successor_issued, user, created_ms, client, agent) \
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        t.id.as_bytes().as_slice(),
        data,
        t.issued_ms as i64,
        now as i64,
        expires as i64,
        meta.user.as_ref().map(UserId::as_str),
        meta.created_ms as i64,
        meta.client.as_deref(),
        meta.agent.as_deref(),
    ])?;
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

/// What ending a live row writes: a tombstone until the id's absolute
/// deadline (`?3`), bound to nobody, pointing nowhere, and no longer
/// recording where the session came from.
const END: &str = "data = NULL, user = NULL, successor = NULL, successor_issued = NULL, \
                   client = NULL, agent = NULL, expires_ms = issued_ms + ?3";

/// Turns the live sessions of `user` (but `keep`) into tombstones;
/// returns their ids (for the read cache).
pub fn revoke_user(
    tx: &Connection,
    user: &UserId,
    keep: Option<&Id>,
    policy: &Policy,
) -> rusqlite::Result<Vec<Id>> {
    let keep = keep.map(|id| id.as_bytes().to_vec()).unwrap_or_default();
    let mut stmt = tx.prepare_cached(&format!(
        "UPDATE sessions SET {END} WHERE user = ?1 AND data IS NOT NULL AND id != ?2 RETURNING id"
    ))?;
    ids(stmt.query(params![user.as_str(), keep, policy.absolute_ms as i64])?)
}

/// Turns the live sessions past their deadline into tombstones; returns
/// their ids (for the read cache).
pub fn expire(tx: &Connection, now: u64, policy: &Policy) -> rusqlite::Result<Vec<Id>> {
    let mut stmt = tx.prepare_cached(
        "UPDATE sessions SET data = NULL, user = NULL, successor = NULL, successor_issued = NULL, \
         client = NULL, agent = NULL, expires_ms = issued_ms + ?2 \
         WHERE data IS NOT NULL AND expires_ms <= ?1 RETURNING id",
    )?;
    ids(stmt.query(params![now as i64, policy.absolute_ms as i64])?)
}

/// The ids a `RETURNING id` statement gave back.
fn ids(mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<Vec<Id>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        // Every id column holds 32 bytes; a row that does not is skipped.
        if let Some(id) = id_from(row.get(0)?) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Turns one live session of `user` into a tombstone.
pub fn kill(tx: &Connection, id: &Id, user: &UserId, policy: &Policy) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached(&format!(
            "UPDATE sessions SET {END} WHERE id = ?1 AND user = ?2 AND data IS NOT NULL"
        ))?
        .execute(params![
            id.as_bytes().as_slice(),
            user.as_str(),
            policy.absolute_ms as i64
        ])?;
    Ok(n > 0)
}
