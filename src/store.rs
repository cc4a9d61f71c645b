//! The session store contract: what every store (memory, disk, Redis)
//! promises, and the errors it may return. The stores themselves live in the
//! submodules; all of them pass the conformance suite in
//! `tests/conformance.rs`.
//!
//! A store knows three states for an id:
//! - *live*: it holds data or a user binding;
//! - *dead*: it held data, or was rotated or flushed, and must never be
//!   accepted again (until its absolute deadline, after which the cookie
//!   itself is refused);
//! - *unknown*: never stored (an empty session costs no storage).
//!
//! Operations on one session are atomic per store: the data a change is
//! applied to is the stored data at that moment, never a stale copy.
//!
//! Stores also keep each session's metadata (creation time, last-seen time,
//! optionally the client address and User-Agent at creation) and an index
//! from user to sessions, kept consistent with expiry, rotation and flush,
//! for "log out everywhere" and the admin API.

pub mod disk;
pub mod memory;
pub mod redis;

use std::future::Future;

use std::sync::Arc;

use http::HeaderValue;

use crate::session::{Changes, Id, Refusal, UserId};

/// What the proxy keeps about a session besides its data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    pub user: Option<UserId>,
    /// When the session was first stored (Unix milliseconds); kept across rotations.
    pub created_ms: u64,
    /// When it was last seen, as precise as the store's touch interval.
    pub last_seen_ms: u64,
    /// The client address at creation, when `session.record_client` is on.
    pub client: Option<Arc<str>>,
    /// The User-Agent at creation, when `session.record_client` is on.
    pub agent: Option<Arc<str>>,
}

/// A live session as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The data as ASCII JSON text, ready to be a header value.
    pub data: HeaderValue,
    pub meta: Meta,
}

/// Where a session is created from; recorded when it is first stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub client: Option<Arc<str>>,
    pub agent: Option<Arc<str>>,
}

/// A session as the admin API lists it: never its id, only its handle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    /// A one-way hash of the id (see `Id::handle`).
    pub handle: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub client: Option<String>,
    pub agent: Option<String>,
}

/// What a store knows about an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Live(Loaded),
    /// Never stored, or emptied: an empty session that is still valid.
    Unknown,
    /// Expired, rotated away or flushed.
    Dead,
}

/// The session a change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub id: Id,
    /// When the id was issued (from its cookie); fixes its absolute deadline.
    pub issued_ms: u64,
}

/// The result of applying a response's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied. `target` is the session now (a new id after Rotate or
    /// Flush); `has_data` is false when nothing is stored for it (no data
    /// and no user); `revoked` counts the user's other sessions ended by
    /// Revoke-Others.
    Applied {
        target: Target,
        has_data: bool,
        revoked: usize,
    },
    /// The session ended while the request was in flight (flushed by a
    /// parallel request, or expired); the changes were dropped.
    Gone,
}

/// A store that could not do its job: the request gets 503.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store full: session.max_sessions = {limit} sessions are stored")]
    Full { limit: usize },
    #[error("session store timed out after {0:?}")]
    Timeout(std::time::Duration),
}

/// Why a change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The operations were refused (logged; the response is still delivered).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed (the browser gets 503).
    #[error(transparent)]
    Store(#[from] Error),
}

/// The contract every session store implements.
pub trait Store: Send + Sync + 'static {
    /// What the store knows about `id`. A live session's idle timer restarts.
    fn load(&self, id: &Id) -> impl Future<Output = Result<Lookup, Error>> + Send;

    /// Applies `changes` atomically to the stored session `target`: Flush,
    /// then Rotate, then the edits in order, then the user binding, all or
    /// nothing; then, if asked, ends the user's other sessions. `origin` is
    /// recorded if this stores the session for the first time.
    fn apply(
        &self,
        target: &Target,
        changes: &Changes,
        origin: &Origin,
    ) -> impl Future<Output = Result<Outcome, ApplyError>> + Send;

    /// The live sessions bound to `user`.
    fn sessions_of(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<SessionInfo>, Error>> + Send;

    /// Ends the sessions of `user` (all but `keep`, if given); returns how many.
    fn revoke_user(
        &self,
        user: &UserId,
        keep: Option<&Id>,
    ) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Ends the session of `user` with this handle; false if there is none.
    fn revoke_handle(
        &self,
        user: &UserId,
        handle: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Removes what has expired; returns how many live sessions expired.
    fn sweep(&self) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Whether the store can serve requests now (readiness).
    fn check(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Live sessions held, for metrics; `None` for a store that does not
    /// count them cheaply (Redis).
    fn count(&self) -> impl Future<Output = Result<Option<usize>, Error>> + Send;
}
