//! The disk store's file: opening it safely, checking it, and its schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{DiskOptions, OpenError};
use crate::config::Durability;

/// Marks the file as sessiongate's ("SGAT").
const APPLICATION_ID: i64 = 0x5347_4154;
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE sessions (
    id               BLOB PRIMARY KEY,
    data             BLOB,              -- ASCII JSON; NULL for a dead id
    issued_ms        INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL,
    expires_ms       INTEGER NOT NULL,  -- next deadline: expiry if live, removal if dead
    successor        BLOB,              -- dead by rotation: where the session went
    successor_issued INTEGER,
    user             TEXT,              -- bound user (live rows only)
    created_ms       INTEGER,
    client           TEXT,
    agent            TEXT
) WITHOUT ROWID;
CREATE INDEX sessions_expires ON sessions (expires_ms);
CREATE INDEX sessions_user ON sessions (user) WHERE user IS NOT NULL;
";

/// Version 1 (before users and metadata) to 2.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE sessions ADD COLUMN user TEXT;
ALTER TABLE sessions ADD COLUMN created_ms INTEGER;
ALTER TABLE sessions ADD COLUMN client TEXT;
ALTER TABLE sessions ADD COLUMN agent TEXT;
CREATE INDEX sessions_user ON sessions (user) WHERE user IS NOT NULL;
PRAGMA user_version = 2;
";

/// Opens the writer's connection: checks an existing file before changing
/// anything, creates a new one, and sets WAL and the durability.
pub fn open_checked(options: &DiskOptions) -> Result<Connection, OpenError> {
    let path = &options.path;
    let exists = path.exists();
    let unreadable = |e: &dyn std::fmt::Display| OpenError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| unreadable(&e))?;
    // SQLite quietly opens a write-protected file read-only; every session
    // write would then fail (503) while the proxy looked healthy.
    if conn.is_readonly("main").map_err(|e| unreadable(&e))? {
        return Err(unreadable(
            &"the file is read-only for this user; sessiongate must be able to write it",
        ));
    }
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| unreadable(&e))?;
    if exists {
        check_existing(&conn, path)?;
    } else {
        create(&conn).map_err(|e| unreadable(&e))?;
    }
    configure(&conn, options).map_err(|e| unreadable(&e))?;
    Ok(conn)
}

/// Read-only checks; nothing is written to a file that fails them.
fn check_existing(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if verdict != "ok" {
        return Err(corrupt(format!("quick_check: {verdict}")));
    }
    let foreign = |reason: String| OpenError::Foreign {
        path: path.to_owned(),
        reason,
    };
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if app == 0 && version == 0 && tables == 0 {
        // An empty file (created but never initialised): make it ours.
        return create(conn).map_err(|e| corrupt(e.to_string()));
    }
    if app != APPLICATION_ID {
        return Err(foreign(format!("application_id is {app:#x}")));
    }
    match version {
        SCHEMA_VERSION => Ok(()),
        // Checked and ours: upgrading it in place is safe.
        1 => conn
            .execute_batch(MIGRATE_1_TO_2)
            .map_err(|e| corrupt(format!("upgrade from schema version 1 failed: {e}"))),
        _ => Err(foreign(format!(
            "schema version {version}, this sessiongate reads versions 1 and {SCHEMA_VERSION}"
        ))),
    }
}

fn create(conn: &Connection) -> rusqlite::Result<()> {
    // auto_vacuum must be chosen before the first table exists.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

fn configure(conn: &Connection, options: &DiskOptions) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    // FULL: the WAL is fsynced at every commit (group commit shares it).
    // NORMAL: fsynced at checkpoints only; a crash of the process loses
    // nothing, a power loss may lose the last commits.
    let synchronous = match options.durability {
        Durability::Immediate => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    if let Some(max) = options.max_file_bytes {
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (max / page.max(1) as u64).max(1);
        let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get(0)
        })?;
    }
    Ok(())
}

/// A connection for reads on the blocking pool.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

pub fn count_live(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row(
        "SELECT count(*) FROM sessions WHERE data IS NOT NULL",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
}
