//! The configuration: one TOML file, overridable by `SESSIONGATE_*`
//! environment variables, turned into a validated, typed [`Config`].
//!
//! The file format lives in private `Raw*` structs (serde, unknown keys
//! refused); [`Config`] holds only values that were checked, so the rest of
//! the crate never re-validates. Errors name the file, the key and what would
//! be accepted. Environment overrides are in [`env`].

mod env;
mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;

use crate::cookie::{SameSite, SecretKey};
use crate::protocol::HeaderPrefix;

pub use env::ENV_PREFIX;

/// Shortest accepted secret: HMAC-SHA256 keys below the hash's output size
/// weaken the signature, so they are refused rather than warned about.
pub const MIN_SECRET_BYTES: usize = 32;

/// Largest accepted `session.max_bytes`: the session travels as one request
/// header, and most upstream servers refuse header lines far below this.
pub const MAX_SESSION_BYTES: usize = 1024 * 1024;

/// A configuration error, with enough context for the user to fix the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// Where the upstream app is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub scheme: Scheme,
    pub authority: Authority,
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response head (-> 504).
    pub timeout: Duration,
    /// Signs the injected headers (`X-Session-Signature`) when set.
    pub signing_key: Option<crate::signature::SigningKey>,
    /// Most upstream connections lent to browser connections, in use plus
    /// idle (0: none; see `proxy::paired`).
    pub paired_connections: usize,
}

/// The signing secrets: the current one signs, all verify.
pub struct Secrets {
    pub current: SecretKey,
    pub previous: Vec<SecretKey>,
}

impl std::fmt::Debug for Secrets {
    // Secrets never reach a log, not even through `{:?}` of the whole config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets {{ current: <redacted>, previous: {} }}",
            self.previous.len()
        )
    }
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    pub max_age: Option<Duration>,
    /// Whether the session cookie is also sent to the upstream (off by default).
    pub forward_to_upstream: bool,
}

/// When a browser without a session gets its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// First visit: the cookie is set at once.
    Eager,
    /// Django's behaviour: the cookie is set once the upstream stores something.
    Lazy,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub create: CreateMode,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub max_bytes: usize,
    pub max_sessions: usize,
    /// Upper bound on operation headers in one upstream response.
    pub max_operations: usize,
    /// Path prefixes proxied without session work (static files).
    pub skip_paths: Vec<String>,
    /// Record the client address and User-Agent when a session is created.
    pub record_client: bool,
}

/// When a disk store change counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsynced before the response head leaves (SQLite `synchronous=FULL`).
    Immediate,
    /// Written to the OS before the response head leaves, fsynced at
    /// checkpoints (`synchronous=NORMAL`): a process crash loses nothing, a
    /// power loss or kernel crash may lose the last changes.
    Relaxed,
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Memory,
    Disk {
        path: PathBuf,
        durability: Durability,
        max_file_bytes: Option<u64>,
        /// Bytes of live sessions kept in memory for reads; 0 turns it off.
        cache_bytes: u64,
    },
    Redis {
        url: String,
        key_prefix: String,
        cluster: bool,
        timeout: Duration,
        touch_interval: Duration,
    },
}

impl StoreConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Memory => "memory",
            StoreConfig::Disk { .. } => "disk",
            StoreConfig::Redis { .. } => "redis",
        }
    }
}

/// Connection handling: timeouts and limits for browsers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// From a connection's first byte of a request head to its end (slowloris).
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub keep_alive_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// How long requests in flight may finish after SIGTERM or SIGINT.
    pub shutdown_grace: Duration,
    /// Largest request head (-> 431).
    pub max_header_bytes: usize,
    /// Largest request body (-> 413); `None` for no limit.
    pub max_body_bytes: Option<u64>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Drop request headers with `_` in their name (nginx's default).
    pub drop_underscore_headers: bool,
    /// Runtime worker threads (the binary's tokio runtime).
    pub workers: usize,
}

/// TLS for browsers (HTTP/1.1 and HTTP/2 by ALPN).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The admin listener (health, readiness, metrics).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `listen = "off"`.
    pub listen: Option<SocketAddr>,
    /// Bearer token of the session admin API; `None` turns the API off.
    pub token: Option<AdminToken>,
}

/// The admin API's bearer token. No `Debug` output of the value.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: String) -> AdminToken {
        AdminToken(token)
    }

    /// Compares in constant time, the length included: both sides are
    /// hashed first, so an early exit on a length mismatch tells nothing.
    pub fn matches(&self, offered: &[u8]) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let ours = sha2::Sha256::digest(self.0.as_bytes());
        let theirs = sha2::Sha256::digest(offered);
        ours.as_slice().ct_eq(theirs.as_slice()).into()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from, for messages and reloads.
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub upstream: UpstreamConfig,
    pub header_prefix: HeaderPrefix,
    /// Peers whose `X-Forwarded-*` headers are kept and extended.
    pub trusted_proxies: Vec<IpNet>,
    pub secrets: Secrets,
    pub cookie: CookieConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub admin: AdminConfig,
    pub log_format: LogFormat,
}

impl Config {
    /// Reads, overrides from the process environment, and validates.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, std::env::vars())
    }

    /// Parses `text` (named `path` in messages) with the given environment.
    pub fn parse(
        path: &Path,
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Error> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Syntax {
            path: path.to_owned(),
            message: syntax_message(text, &e),
        })?;
        let overridden = env::apply_overrides(&mut table, vars)?;
        // A wrong value is blamed on where it came from: the file or a variable.
        let blame = |(key, message): raw::KeyError| match env::source_of(&overridden, &key) {
            Some(var) => Error::Env {
                var: var.to_owned(),
                message: format!("key `{key}`: {message}"),
            },
            None => Error::Key {
                path: path.to_owned(),
                key,
                message,
            },
        };
        raw::RawConfig::from_table(table)
            .map_err(blame)?
            .validate(path)
            .map_err(blame)
    }
}

/// toml's own rendering of a syntax error is a snippet with a caret over
/// several lines, which splits a log line (a refused SIGHUP reload); this
/// is one line: the position, then toml's message.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(start) = e.span().map(|span| span.start.min(text.len())) else {
        return message;
    };
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_is_one_line_with_its_position() {
        let text = "upstream = \"http://127.0.0.1:3000\"\nlisten = \n";
        let err = Config::parse(Path::new("t.toml"), text, std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with("config file t.toml is not valid TOML: line 2, column 10: "),
            "{err}"
        );
    }
}
