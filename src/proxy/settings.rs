//! The proxy's reloadable settings: everything a request reads from the
//! config, built once per (re)load and swapped atomically on SIGHUP, so a
//! request sees one consistent version from start to end.
//!
//! What cannot change without a restart (listen addresses, TLS, the store
//! and its expiry policy) is compared on reload and reported, not applied.

use std::sync::Arc;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;

use super::body::RequestBody;
use super::head_capture::CapturingConnector;
use super::paired::Lender;
use crate::config::{AdminToken, Config, CreateMode, ServerConfig, UpstreamConfig};
use crate::cookie::{CookieBuilder, Signer};
use crate::protocol::HeaderPrefix;
use crate::session::Policy;

/// Header lines besides `session.max_operations` that a response head may
/// carry: ordinary headers, and operations beyond the limit, which are
/// refused with a log line while the response is still delivered (PROTOCOL
/// section 3). hyper sets aside a slot per line for every response it
/// parses; in callgrind, room for 1,280 lines (the default) counts the same
/// as room for 384 within run-to-run variation, and 2,048 about 200
/// instructions per request more.
const HEADER_ROOM: usize = 1024;

/// Largest upstream response head: large operation values are refused by
/// session.max_bytes with a log line; only heads beyond this are a parse
/// error (502).
pub const UPSTREAM_HEAD_BYTES: usize = 4 << 20;

pub struct Settings {
    pub client: Client<CapturingConnector, RequestBody>,
    /// The pooled client's connector, for paired connections too (same
    /// resolution, per-address timeouts and IPv6/IPv4 racing).
    pub connector: CapturingConnector,
    /// Most header lines read in an upstream response head.
    pub upstream_head_lines: usize,
    /// Upstream connections lent to browser connections, at most
    /// `upstream.paired_connections` (see `paired`).
    pub lender: Arc<Lender>,
    pub upstream: UpstreamConfig,
    pub signer: Signer,
    pub cookies: CookieBuilder,
    pub prefix: Arc<HeaderPrefix>,
    pub create: CreateMode,
    pub max_operations: usize,
    pub forward_cookie: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub skip_paths: Vec<String>,
    pub record_client: bool,
    pub server: ServerConfig,
    /// The session admin API's token (reloadable).
    pub admin_token: Option<AdminToken>,
}

/// The parts of a config that need a restart to change, each named and in
/// a comparable form.
#[derive(Debug, PartialEq, Eq)]
pub struct Fixed(Vec<(&'static str, String)>);

impl Fixed {
    pub fn of(config: &Config) -> Fixed {
        let policy = Policy::from_config(&config.session);
        Fixed(vec![
            ("listen", format!("{:?}", config.listen)),
            ("server.workers", config.server.workers.to_string()),
            // The accept loop's connection slots are sized when it starts.
            (
                "server.max_connections",
                config.server.max_connections.to_string(),
            ),
            ("admin.listen", format!("{:?}", config.admin.listen)),
            ("[tls]", format!("{:?}", config.tls)),
            ("[store]", format!("{:?}", config.store)),
            ("session.idle_timeout", policy.idle_ms.to_string()),
            ("session.absolute_timeout", policy.absolute_ms.to_string()),
            ("session.max_bytes", policy.max_bytes.to_string()),
            ("session.max_sessions", policy.max_sessions.to_string()),
            ("log.format", format!("{:?}", config.log_format)),
        ])
    }

    /// The names of the parts that differ between `self` and `other`.
    pub fn changed(&self, other: &Fixed) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&other.0)
            .filter(|(a, b)| a != b)
            .map(|((name, _), _)| *name)
            .collect()
    }
}

impl Settings {
    pub fn new(config: Config) -> Settings {
        let upstream_head_lines = config.session.max_operations + HEADER_ROOM;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            // The original Host is forwarded, as most apps build URLs from it.
            .set_host(false)
            .http1_max_headers(upstream_head_lines)
            .http1_max_buf_size(UPSTREAM_HEAD_BYTES)
            .build(CapturingConnector::new(connector.clone()));
        Settings {
            client,
            connector: CapturingConnector::new(connector),
            upstream_head_lines,
            lender: Arc::new(Lender::new(config.upstream.paired_connections)),
            upstream: config.upstream,
            signer: Signer::new(config.secrets.current, config.secrets.previous),
            cookies: CookieBuilder::new(config.cookie.clone()),
            prefix: Arc::new(config.header_prefix),
            create: config.session.create,
            max_operations: config.session.max_operations,
            forward_cookie: config.cookie.forward_to_upstream,
            trusted_proxies: config.trusted_proxies,
            skip_paths: config.session.skip_paths,
            record_client: config.session.record_client,
            server: config.server,
            admin_token: config.admin.token,
        }
    }
}
