//! The session store contract: what every store (memory, disk, Redis)
//! promises, and the errors it may return. The stores themselves live in the
//! submodules; all of them pass the conformance suite in
//! `tests/conformance.rs`.
//!
//! A store knows three states for an id:
//! - *live*: it holds data;
//! - *dead*: it held data, or was rotated or flushed, and must never be
//!   accepted again (until its absolute deadline, after which the cookie
//!   itself is refused);
//! - *unknown*: never stored (an empty session costs no storage).
//!
//! Operations on one session are atomic per store: the data a change is
//! applied to is the stored data at that moment, never a stale copy.

pub mod disk;
pub mod memory;
pub mod redis;

use std::future::Future;

use http::HeaderValue;

use crate::session::{Changes, Id, Refusal};

/// What a store knows about an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The session's data as ASCII JSON text, ready to be a header value.
    Live(HeaderValue),
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
    /// Flush); `has_data` is false when the session is empty.
    Applied { target: Target, has_data: bool },
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
    /// then Rotate, then the edits in order, all or nothing.
    fn apply(
        &self,
        target: &Target,
        changes: &Changes,
    ) -> impl Future<Output = Result<Outcome, ApplyError>> + Send;

    /// Removes what has expired; returns how many live sessions expired.
    fn sweep(&self) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Whether the store can serve requests now (readiness).
    fn check(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Live sessions held, for metrics; `None` for a store that does not
    /// count them cheaply (Redis).
    fn count(&self) -> impl Future<Output = Result<Option<usize>, Error>> + Send;
}
