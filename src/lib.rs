//! sessiongate: a reverse proxy that gives server-side sessions to web apps
//! that have none.
//!
//! # A request's path through the modules
//! 1. [`server`] accepts the connection and hands each request to [`proxy`].
//! 2. [`proxy`] reads the session cookie ([`cookie`]: verify the HMAC), asks
//!    the [`store`] for the session, strips every inbound header of ours and
//!    injects the session ([`protocol`]), and forwards the request upstream
//!    (HTTP/1.1 on an upstream connection lent for the exchange, see
//!    `proxy::paired`; otherwise on a shared pool).
//! 3. On the way back, [`protocol`] parses the upstream's operations,
//!    [`session`] defines what they do, the [`store`] applies them
//!    atomically, and [`proxy`] sets the cookie and cache headers before the
//!    response head leaves.
//!
//! # Lexicon
//! - *session*: a browser's session (never a TCP connection: that is a *connection*).
//! - *downstream*: the browser side; *upstream*: the app behind the proxy.
//! - *id*: a session's store key; the *cookie* carries it signed, with its issue time.
//! - *operation*: an upstream response header that changes the session
//!   (`X-Session-Set`, `-Delete`, `-Rotate`, `-Flush`).
//! - *dead* id: expired, rotated away or flushed; never accepted again.
//! - *paired* connection: an upstream connection lent to one browser
//!   connection while it has an exchange on it, driven by that connection's
//!   task.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod cookie;
#[doc(hidden)]
pub mod fuzzing;
pub mod lazy_timer;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod session;
pub mod signature;
pub mod store;

pub use config::Config;
pub use server::{run, serve};
