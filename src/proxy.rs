//! The proxy service: one request's path from browser to upstream and back.
//!
//! Phases, each a small function below:
//! 1. [`Proxy::resolve`] finds the browser's session (or starts one);
//! 2. [`Proxy::upstream_request`] strips what must not pass, injects the session;
//! 3. [`Proxy::send`] forwards it on the pooled client, with a deadline;
//! 4. [`Proxy::respond`] takes the upstream's operations, stores them
//!    before the response head leaves, and sets the cookie and cache headers.

mod body;
mod caching;
mod error;
mod forwarded;
mod head_capture;
mod hop;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HOST, HeaderValue, SET_COOKIE};
use http::request::Parts;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{debug, warn};

pub use body::ResponseBody;
use body::{Filtered, RequestBody};
pub use error::Error;
use head_capture::{CapturingConnector, HeadCapture};

use crate::config::{Config, CreateMode, UpstreamConfig};
use crate::cookie::{self, CookieBuilder, SignedWith, Signer};
use crate::metrics::Metrics;
use crate::protocol::{self, HeaderPrefix, Parsed};
use crate::session::{self, CookieAction, CookieFacts, Id, Policy, now_ms};
use crate::store::{ApplyError, Lookup, Outcome, Store, Target};

/// Most cookies with the session's name that are checked in one request;
/// each costs an HMAC, and a browser legitimately sends one or two.
const MAX_COOKIE_CANDIDATES: usize = 8;

/// The browser's session as found (or started) for this request.
struct Resolved {
    target: Target,
    /// This request started the session.
    started: bool,
    data: Option<HeaderValue>,
    /// The browser sent some cookie with the session's name.
    sent_cookie: bool,
    needs_resign: bool,
}

/// The session after the upstream's operations.
struct After {
    target: Target,
    has_data: bool,
    changed: bool,
    flushed: bool,
}

/// Method and path of a request, for log lines (no query: it may hold secrets).
struct Label {
    method: Method,
    path: String,
}

pub struct Proxy<S> {
    store: S,
    client: Client<CapturingConnector, RequestBody>,
    upstream: UpstreamConfig,
    signer: Signer,
    cookies: CookieBuilder,
    prefix: Arc<HeaderPrefix>,
    policy: Policy,
    create: CreateMode,
    max_operations: usize,
    forward_cookie: bool,
    trusted_proxies: Vec<ipnet::IpNet>,
    metrics: Metrics,
}

impl<S: Store> Proxy<S> {
    pub fn new(config: Config, store: S) -> Proxy<S> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            // The original Host is forwarded, as most apps build URLs from it.
            .set_host(false)
            // An upstream may send many operation headers; refusing them is
            // our job (with a log line), not a parse error's (a 502).
            .http1_max_headers(8192)
            .build(CapturingConnector::new(connector));
        Proxy {
            store,
            client,
            upstream: config.upstream,
            signer: Signer::new(config.secrets.current, config.secrets.previous),
            cookies: CookieBuilder::new(config.cookie.clone()),
            prefix: Arc::new(config.header_prefix),
            policy: Policy::from_config(&config.session),
            create: config.session.create,
            max_operations: config.session.max_operations,
            forward_cookie: config.cookie.forward_to_upstream,
            trusted_proxies: config.trusted_proxies,
            metrics: Metrics::new(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves one request; every failure becomes a short error response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let label = Label {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
        };
        let rsp = match self.proxy(req, peer, &label).await {
            Ok(rsp) => rsp,
            Err(e) => {
                warn!(method = %label.method, path = %label.path, status = e.status().as_u16(), error = %e, "request failed");
                if let Error::Store(_) = e {
                    self.metrics.store_errors.inc();
                }
                e.into_response()
            }
        };
        self.metrics.response(rsp.status());
        rsp
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        label: &Label,
    ) -> Result<Response<ResponseBody>, Error> {
        let (mut parts, body) = req.into_parts();
        if parts.method == Method::CONNECT {
            return Err(Error::MethodNotAllowed("CONNECT is not proxied"));
        }
        let session = self.resolve(&parts.headers).await?;
        self.upstream_request(&mut parts, peer, &session)?;
        let req = Request::from_parts(parts, Filtered::new(body, self.prefix.clone()));
        let rsp = self.send(req).await?;
        self.respond(rsp, session, label).await
    }

    /// Finds the session of the first cookie that verifies and names a
    /// session still alive; otherwise starts a new one.
    async fn resolve(&self, headers: &http::HeaderMap) -> Result<Resolved, Error> {
        let now = now_ms();
        let mut sent_cookie = false;
        for value in
            cookie::request_values(headers, self.cookies.name()).take(MAX_COOKIE_CANDIDATES)
        {
            sent_cookie = true;
            let Some(v) = self.signer.verify(value) else {
                continue;
            };
            if now >= self.policy.absolute_deadline(v.issued_ms) {
                continue;
            }
            let started = std::time::Instant::now();
            let lookup = self.store.load(&v.id).await;
            self.metrics
                .store_latency
                .observe(started.elapsed().as_secs_f64());
            let data = match lookup? {
                Lookup::Live(data) => Some(data),
                Lookup::Unknown => None,
                Lookup::Dead => continue,
            };
            return Ok(Resolved {
                target: Target {
                    id: v.id,
                    issued_ms: v.issued_ms,
                },
                started: false,
                data,
                sent_cookie,
                needs_resign: v.signed_with == SignedWith::Previous,
            });
        }
        Ok(Resolved {
            target: Target {
                id: Id::random(),
                issued_ms: now,
            },
            started: true,
            data: None,
            sent_cookie,
            needs_resign: false,
        })
    }

    /// Turns the browser's request into the upstream's: strip, then inject.
    fn upstream_request(
        &self,
        parts: &mut Parts,
        peer: SocketAddr,
        session: &Resolved,
    ) -> Result<(), Error> {
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::try_from(a.as_str()).ok());
        hop::strip(&mut parts.headers);
        self.prefix.strip(&mut parts.headers);
        if !self.forward_cookie {
            cookie::remove_from_request(&mut parts.headers, self.cookies.name());
        }
        forwarded::set(
            &mut parts.headers,
            peer.ip(),
            "http",
            host.clone(),
            &self.trusted_proxies,
        );
        if !parts.headers.contains_key(HOST) {
            // HTTP/2 carries the host in the URI; HTTP/1.1 upstreams need the header.
            let host = host.ok_or(Error::BadRequest("no Host"))?;
            parts.headers.insert(HOST, host);
        }
        let id = HeaderValue::try_from(session.target.id.to_string()).expect("ids are base64url");
        let data = session
            .data
            .clone()
            .unwrap_or(HeaderValue::from_static("{}"));
        protocol::inject(&self.prefix, &mut parts.headers, id, session.started, data);
        parts.uri = self.upstream_uri(&parts.uri)?;
        parts.version = Version::HTTP_11;
        Ok(())
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, Error> {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if !path.starts_with('/') {
            return Err(Error::BadRequest("request target is not a path"));
        }
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| Error::BadRequest("request target is not a valid path"))
    }

    async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, Error> {
        let timeout = self.upstream.timeout;
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(Error::UpstreamTimeout(timeout)),
            Ok(Err(e)) => Err(Error::Upstream(e)),
            Ok(Ok(rsp)) => Ok(rsp),
        };
        self.metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Applies the upstream's operations, then sets the cookie and cache headers.
    async fn respond(
        &self,
        rsp: Response<Incoming>,
        session: Resolved,
        label: &Label,
    ) -> Result<Response<ResponseBody>, Error> {
        let (mut parts, body) = rsp.into_parts();
        hop::strip(&mut parts.headers);
        let capture = parts.extensions.get::<HeadCapture>().cloned();
        let parsed = self.take_operations(&mut parts.headers, capture);
        self.remove_session_set_cookies(&mut parts.headers);
        let after = self.apply(parsed, parts.status, &session, label).await?;
        let action = session::cookie_action(CookieFacts {
            mode: self.create,
            had_valid_cookie: !session.started,
            sent_cookie: session.sent_cookie,
            needs_resign: session.needs_resign,
            id: after.target.id,
            issued_ms: after.target.issued_ms,
            has_data: after.has_data,
            changed: after.changed,
            flushed: after.flushed,
        });
        if session.started && (matches!(action, CookieAction::Issue { .. }) || after.has_data) {
            self.metrics.session_event("created", 1);
        }
        let set_cookie = match action {
            CookieAction::Keep => None,
            CookieAction::Issue { id, issued_ms } => {
                Some(self.cookies.issue(self.signer.sign(&id, issued_ms)))
            }
            CookieAction::Expire => Some(self.cookies.expire()),
        };
        if let Some(value) = set_cookie {
            parts.headers.append(SET_COOKIE, value);
            caching::make_private(&mut parts.headers);
        }
        caching::vary_on_cookie(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            http_body_util::Either::Left(Filtered::new(body, self.prefix.clone())),
        ))
    }

    /// Runs the operations through the store, or logs why not.
    async fn apply(
        &self,
        parsed: Parsed,
        status: http::StatusCode,
        session: &Resolved,
        label: &Label,
    ) -> Result<After, Error> {
        let unchanged = After {
            target: session.target,
            has_data: session.data.is_some(),
            changed: false,
            flushed: false,
        };
        let changes = match parsed {
            Ok(changes) if changes.is_empty() => return Ok(unchanged),
            Ok(changes) => changes,
            Err(reason) => {
                warn!(method = %label.method, path = %label.path, %reason, "upstream session operations rejected");
                self.metrics.rejected("malformed");
                return Ok(unchanged);
            }
        };
        if status.is_server_error() {
            self.metrics.rejected("server_error");
            warn!(method = %label.method, path = %label.path, status = status.as_u16(),
                "upstream session operations not applied: the response is a server error");
            return Ok(unchanged);
        }
        let started = std::time::Instant::now();
        let applied = self.store.apply(&session.target, &changes).await;
        self.metrics
            .store_latency
            .observe(started.elapsed().as_secs_f64());
        match applied {
            Ok(Outcome::Applied { target, has_data }) => {
                if changes.flush {
                    self.metrics.session_event("flushed", 1);
                } else if changes.rotate {
                    self.metrics.session_event("rotated", 1);
                }
                Ok(After {
                    target,
                    has_data,
                    changed: true,
                    flushed: changes.flush,
                })
            }
            Ok(Outcome::Gone) => {
                debug!(method = %label.method, path = %label.path, session = %session.target.id.short(),
                    "session ended by a parallel request; its operations were dropped");
                Ok(After {
                    flushed: true,
                    has_data: false,
                    changed: true,
                    ..unchanged
                })
            }
            Err(ApplyError::Refused(reason)) => {
                warn!(method = %label.method, path = %label.path, %reason, "upstream session operations rejected");
                self.metrics.rejected("refused");
                Ok(unchanged)
            }
            Err(ApplyError::Store(e)) => Err(Error::Store(e)),
        }
    }

    /// Removes our headers from the response and parses the operations among
    /// them, in the order the upstream sent them when the raw head is known.
    fn take_operations(
        &self,
        headers: &mut http::HeaderMap,
        capture: Option<HeadCapture>,
    ) -> Parsed {
        if !headers.keys().any(|n| self.prefix.matches(n.as_str())) {
            return Ok(Default::default());
        }
        match capture.as_ref().and_then(HeadCapture::lines) {
            Some(lines) => {
                let ordered = lines.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
                let parsed = protocol::parse_operations(&self.prefix, ordered, self.max_operations);
                self.prefix.strip(headers);
                parsed
            }
            None => protocol::take_operations(&self.prefix, headers, self.max_operations),
        }
    }

    /// The upstream may not set the session cookie itself.
    fn remove_session_set_cookies(&self, headers: &mut http::HeaderMap) {
        let name = self.cookies.name();
        if !headers
            .get_all(SET_COOKIE)
            .iter()
            .any(|v| cookie::set_cookie_name(v) == Some(name))
        {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|v| cookie::set_cookie_name(v) != Some(name))
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for v in kept {
            headers.append(SET_COOKIE, v);
        }
    }
}
