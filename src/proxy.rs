//! The proxy service: one request's path from browser to upstream and back.
//!
//! Phases, each a small function below:
//! 1. [`Proxy::resolve`] finds the browser's session (or starts one);
//! 2. [`Proxy::upstream_request`] strips what must not pass, injects the session;
//! 3. [`Proxy::send`] forwards it, with a deadline, on an upstream
//!    connection lent to the browser connection ([`paired`]) or the pooled
//!    client;
//! 4. [`Proxy::respond`] takes the upstream's operations, stores them
//!    before the response head leaves, and sets the cookie and cache headers.
//!
//! Requests under a skip path (`session.skip_paths`) go through 2 and 3
//! without session work; our headers are still stripped both ways.

mod body;
mod caching;
mod error;
mod forwarded;
pub(crate) mod framing;
mod head_capture;
mod hop;
pub(crate) mod paired;
pub mod path;
mod settings;
mod target;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderValue, SET_COOKIE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::capture_connection;
use tracing::{debug, warn};

pub use body::{BoxError, ResponseBody};
use body::{Filtered, Limits, RequestBody};
pub use error::Error;
use head_capture::HeadCapture;
use paired::Paired;
use settings::{Fixed, Settings, UPSTREAM_HEAD_BYTES};

use crate::config::Config;
use crate::cookie::{self, SignedWith};
use crate::metrics::Metrics;
use crate::protocol::{self, HeaderPrefix, Parsed};
use crate::server::deadline::Activity;
use crate::session::{self, CookieAction, CookieFacts, Id, Policy, now_ms};
use crate::store::{ApplyError, Lookup, Meta, Origin, Outcome, Store, Target};

/// Most cookies with the session's name that are checked in one request;
/// each costs an HMAC, and a browser legitimately sends one or two.
const MAX_COOKIE_CANDIDATES: usize = 8;

/// The browser's connection, as the server accepted it.
#[derive(Clone)]
pub struct Downstream {
    pub peer: SocketAddr,
    pub tls: bool,
    pub activity: Activity,
    /// The peer as the forwarding headers name it.
    forwarded_peer: forwarded::Peer,
    /// The upstream connection this browser connection has borrowed (HTTP/1).
    paired: Paired,
}

impl Downstream {
    pub fn new(peer: SocketAddr, tls: bool, activity: Activity) -> Downstream {
        Downstream {
            peer,
            tls,
            activity,
            forwarded_peer: forwarded::Peer::new(peer.ip()),
            paired: Paired::default(),
        }
    }

    /// To be driven with the connection (see [`paired::Driven`]).
    pub(crate) fn paired(&self) -> &Paired {
        &self.paired
    }
}

/// The browser's session as found (or started) for this request.
struct Resolved {
    target: Target,
    /// This request started the session.
    started: bool,
    data: Option<HeaderValue>,
    /// What the store keeps besides the data (for a stored session).
    meta: Option<Meta>,
    /// Recorded if this request's response creates the stored session.
    origin: Origin,
    /// The browser sent some cookie with the session's name.
    sent_cookie: bool,
    found_by: FoundBy,
}

impl Resolved {
    /// The cookie the browser sent, if a cookie for `target` may be it.
    fn resendable(&self, target: Target) -> Option<&str> {
        match &self.found_by {
            FoundBy::Current(kept) if target == self.target => kept.value(),
            _ => None,
        }
    }
}

/// The cookie that named a found session, as a refresh of it needs it.
enum FoundBy {
    /// None: this request started the session.
    Nothing,
    /// A cookie signed with the current secret. A refresh (same id, same
    /// issue time) sends it back as it came instead of signing it again:
    /// the HMAC would come out the same.
    Current(cookie::Kept),
    /// A cookie signed with a previous secret: signed again with the current.
    Previous,
}

/// The session after the upstream's operations.
struct After {
    target: Target,
    has_data: bool,
    changed: bool,
    flushed: bool,
}

/// Method and path of a request, for log lines (no query: it may hold secrets).
#[derive(Clone)]
struct Label {
    method: Method,
    /// Cheap to clone (shared bytes); only the path is ever logged.
    uri: Uri,
}

pub struct Proxy<S> {
    store: S,
    settings: ArcSwap<Settings>,
    fixed: Fixed,
    policy: Policy,
    metrics: Metrics,
}

impl<S: Store> Proxy<S> {
    pub fn new(config: Config, store: S) -> Proxy<S> {
        let fixed = Fixed::of(&config);
        let policy = Policy::from_config(&config.session);
        Proxy {
            store,
            settings: ArcSwap::from_pointee(Settings::new(config)),
            fixed,
            policy,
            metrics: Metrics::new(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The settings in force now (new connections and requests use them).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Applies a reloaded config. Settings that need a restart are not
    /// applied; the error names them and nothing changes.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let changed = self.fixed.changed(&Fixed::of(&config));
        if !changed.is_empty() {
            return Err(format!(
                "{} changed, which needs a restart; the config was not applied",
                changed.join(", ")
            ));
        }
        let old = self.settings.swap(Arc::new(Settings::new(config)));
        old.lender.retire();
        Ok(())
    }

    /// Serves one request; every failure becomes a short error response.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        down: &Downstream,
    ) -> Response<ResponseBody> {
        let settings = self.settings();
        let label = Label {
            method: req.method().clone(),
            uri: req.uri().clone(),
        };
        let rsp = match self.proxy(&settings, req, down, &label).await {
            Ok(rsp) => rsp,
            Err(e) => {
                warn!(method = %label.method, path = %label.uri.path(), status = e.status().as_u16(), error = %e, "request failed");
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
        s: &Settings,
        mut req: Request<Incoming>,
        down: &Downstream,
        label: &Label,
    ) -> Result<Response<ResponseBody>, Error> {
        if req.method() == Method::CONNECT {
            return Err(Error::MethodNotAllowed("CONNECT is not proxied"));
        }
        target::check(req.method(), req.uri())?;
        framing::check_request(req.headers()).map_err(Error::Framing)?;
        if let Some(refused) = down.activity.take_framing_refusal()
            && req.version() <= Version::HTTP_11
        {
            return Err(Error::Framing(refused));
        }
        if let Some(max) = s.server.max_body_bytes
            && content_length(req.headers()).is_some_and(|len| len > max)
        {
            return Err(Error::BodyTooLarge(max));
        }
        let websocket = upgrade::wants_websocket(req.headers());
        let borrow = pairable(&req, websocket);
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // A clone shares the target's bytes: `path` borrows from it while
        // `parts` is rewritten.
        let target = parts.uri.clone();
        let path = path::normalize(target.path())
            .ok_or(Error::BadRequest("malformed percent-encoding in the path"))?;
        let mut session = match path::skips(&path, &s.skip_paths) {
            true => None,
            false => Some(self.resolve(s, &parts.headers).await?),
        };
        self.upstream_request(s, &mut parts, down, session.as_ref(), &path)?;
        if let Some(session) = session.as_mut() {
            session.origin = origin(s, &parts.headers, down);
        }
        if websocket {
            upgrade::restore_headers(&mut parts.headers);
        }
        let limits = Limits {
            idle: Some(s.server.body_read_timeout),
            max: s.server.max_body_bytes,
        };
        let mut req = Request::from_parts(parts, Filtered::new(body, s.prefix.clone(), limits));
        // Claimed right before sending, with nothing in between that could
        // fail or wait: from here `Paired::send` owns the claim (it closes
        // the connection on any failure; `Driven` gives it back once idle).
        let paired = (borrow && down.paired.claim(&s.lender)).then_some(&down.paired);
        let pooled = paired.is_none().then(|| capture_connection(&mut req));
        let (mut rsp, capture) = self.send(s, req, paired).await?;
        let poison = || {
            if let Some(pooled) = &pooled
                && let Some(connected) = pooled.connection_metadata().as_ref()
            {
                connected.poison();
            }
        };
        // `Paired::send` has already kept a borrowed connection from reuse
        // in each of these cases.
        if let Err(refused) = framing::check_response(rsp.headers()) {
            // The bytes after such a response cannot be trusted.
            poison();
            return Err(Error::UpstreamFraming(refused));
        }
        if rsp.status() == StatusCode::SWITCHING_PROTOCOLS && !websocket {
            poison();
            return Err(Error::UpstreamMalformed(
                "101 Switching Protocols to a request that asked for no upgrade".into(),
            ));
        }
        if capture.as_ref().is_some_and(HeadCapture::overflowed) {
            // hyper parsed the whole head, so the connection itself is
            // still in step; only this response is refused.
            return Err(Error::UpstreamMalformed(
                format!("a response head over {UPSTREAM_HEAD_BYTES} bytes").into(),
            ));
        }
        if rsp.version() == Version::HTTP_10 {
            // hyper would speak HTTP/1.0 on it from now on, which cannot
            // frame a chunked upload.
            poison();
        }
        let upstream_upgrade = (websocket && rsp.status() == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut rsp));
        let mut rsp = self.respond(s, rsp, capture, session, label).await?;
        if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
            upgrade::restore_headers(rsp.headers_mut());
            upgrade::tunnel(client, upstream, down.activity.begin());
        }
        Ok(rsp)
    }

    /// Finds the session of the first cookie that verifies and names a
    /// session still alive; otherwise starts a new one.
    async fn resolve(&self, s: &Settings, headers: &HeaderMap) -> Result<Resolved, Error> {
        let now = now_ms();
        let mut sent_cookie = false;
        for sent in cookie::request_values(headers, s.cookies.name()).take(MAX_COOKIE_CANDIDATES) {
            sent_cookie = true;
            let Some(v) = s.signer.verify(sent.value()) else {
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
            let (data, meta) = match lookup? {
                Lookup::Live(loaded) => (Some(loaded.data), Some(loaded.meta)),
                Lookup::Unknown => (None, None),
                Lookup::Dead => continue,
            };
            return Ok(Resolved {
                target: Target {
                    id: v.id,
                    issued_ms: v.issued_ms,
                },
                started: false,
                data,
                meta,
                origin: Origin::default(),
                sent_cookie,
                found_by: match v.signed_with {
                    SignedWith::Current => FoundBy::Current(sent.keep()),
                    SignedWith::Previous => FoundBy::Previous,
                },
            });
        }
        Ok(Resolved {
            target: Target {
                id: Id::random(),
                issued_ms: now,
            },
            started: true,
            data: None,
            meta: None,
            origin: Origin::default(),
            sent_cookie,
            found_by: FoundBy::Nothing,
        })
    }

    /// Turns the browser's request into the upstream's: strip, then inject.
    fn upstream_request(
        &self,
        s: &Settings,
        parts: &mut Parts,
        down: &Downstream,
        session: Option<&Resolved>,
        path: &str,
    ) -> Result<(), Error> {
        let host = target::settle_host(parts, &s.upstream.authority)?;
        let cookie = (!s.forward_cookie).then(|| s.cookies.name());
        strip_inbound(
            &mut parts.headers,
            &s.prefix,
            cookie,
            s.server.drop_underscore_headers,
        );
        if parts.version >= Version::HTTP_2 {
            cookie::join_request_lines(&mut parts.headers);
        }
        let proto = if down.tls { "https" } else { "http" };
        forwarded::set(
            &mut parts.headers,
            &down.forwarded_peer,
            proto,
            host,
            &s.trusted_proxies,
        );
        if let Some(session) = session {
            protocol::inject(&s.prefix, &mut parts.headers, injected(session));
        }
        parts.uri = upstream_uri(s, path, &parts.uri)?;
        parts.version = Version::HTTP_11;
        if let Some(key) = &s.upstream.signing_key {
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let signature = key.sign(
                &s.prefix,
                parts.method.as_str(),
                target,
                &parts.headers,
                now_ms() / 1000,
            );
            parts.headers.insert(s.prefix.signature.clone(), signature);
        }
        Ok(())
    }

    /// Sends on the upstream connection the browser connection borrowed,
    /// if given, else on the pooled client. The response comes with the
    /// capture of its raw head (the pooled client's connector leaves it in
    /// the extensions; a borrowed connection hands it over, which spares
    /// every request the extensions' map).
    async fn send(
        &self,
        s: &Settings,
        req: Request<RequestBody>,
        paired: Option<&Paired>,
    ) -> Result<(Response<Incoming>, Option<HeadCapture>), Error> {
        let timeout = s.upstream.timeout;
        let started = std::time::Instant::now();
        let result = match paired {
            Some(paired) => paired
                .send_within(s, req, timeout)
                .await
                .map(|sent| sent.map(|(rsp, capture)| (rsp, Some(capture)))),
            None => tokio::time::timeout(timeout, async {
                let mut rsp = s
                    .client
                    .request(req)
                    .await
                    .map_err(|e| Error::from_client(e, s.upstream.connect_timeout))?;
                let capture = rsp.extensions_mut().remove::<HeadCapture>();
                Ok((rsp, capture))
            })
            .await
            .ok(),
        };
        let result = result.unwrap_or(Err(Error::UpstreamTimeout(timeout)));
        self.metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Applies the upstream's operations, then sets the cookie and cache headers.
    async fn respond(
        &self,
        s: &Settings,
        rsp: Response<Incoming>,
        capture: Option<HeadCapture>,
        session: Option<Resolved>,
        label: &Label,
    ) -> Result<Response<ResponseBody>, Error> {
        let (mut parts, body) = rsp.into_parts();
        // The proxy answers in its own HTTP version (RFC 9110 section 2.5);
        // hyper still answers an HTTP/1.0 browser in HTTP/1.0.
        parts.version = Version::HTTP_11;
        hop::strip(&mut parts.headers);
        if parts.status == StatusCode::NO_CONTENT {
            // A 204 has no body (RFC 9110 section 15.3.5), whatever length
            // the upstream claims; HTTP/2 resets a stream whose length and
            // body disagree.
            parts.headers.remove(CONTENT_LENGTH);
        }
        strip_trailer_announcements(s, &mut parts.headers);
        // Before any await: a bodiless response leaves a lent connection
        // idle at once, and the next borrower's exchange resets its capture.
        let parsed = take_operations(s, &mut parts.headers, capture);
        remove_session_set_cookies(s, &mut parts.headers);
        if let Some(session) = session {
            let after = self.apply(parsed, parts.status, &session, label).await?;
            self.set_cookie(s, &mut parts.headers, &session, &after);
            caching::vary_on_cookie(&mut parts.headers);
        }
        let limits = Limits {
            idle: Some(s.upstream.timeout),
            max: None,
        };
        let body = Filtered::new(body, s.prefix.clone(), limits).reporting_as(label.clone());
        Ok(Response::from_parts(
            parts,
            http_body_util::Either::Left(body),
        ))
    }

    fn set_cookie(&self, s: &Settings, headers: &mut HeaderMap, session: &Resolved, after: &After) {
        let action = session::cookie_action(CookieFacts {
            mode: s.create,
            had_valid_cookie: !session.started,
            sent_cookie: session.sent_cookie,
            needs_resign: matches!(session.found_by, FoundBy::Previous),
            id: after.target.id,
            issued_ms: after.target.issued_ms,
            has_data: after.has_data,
            changed: after.changed,
            flushed: after.flushed,
        });
        if session.started && (matches!(action, CookieAction::Issue { .. }) || after.has_data) {
            self.metrics.session_event("created", 1);
        }
        let value = match action {
            CookieAction::Keep => return,
            CookieAction::Issue { id, issued_ms } => match session.resendable(after.target) {
                Some(sent) => s.cookies.issue(sent),
                None => s.cookies.issue(&s.signer.sign(&id, issued_ms)),
            },
            CookieAction::Expire => s.cookies.expire(),
        };
        headers.append(SET_COOKIE, value);
        caching::make_private(headers);
    }

    /// Runs the operations through the store, or logs why not.
    async fn apply(
        &self,
        parsed: Parsed,
        status: StatusCode,
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
                warn!(method = %label.method, path = %label.uri.path(), %reason, "upstream session operations rejected");
                self.metrics.rejected("malformed");
                return Ok(unchanged);
            }
        };
        if status.is_server_error() {
            self.metrics.rejected("server_error");
            warn!(method = %label.method, path = %label.uri.path(), status = status.as_u16(),
                "upstream session operations not applied: the response is a server error");
            return Ok(unchanged);
        }
        let flushed = changes.flush;
        // A session this request started has an id nobody holds yet: it
        // gets its new id (Rotate and Flush promise one) without the store
        // marking the old one dead, so cookie-less logouts store nothing.
        let (target, changes) = match session.started && changes.renews_id() {
            true => (
                Target {
                    id: Id::random(),
                    issued_ms: now_ms(),
                },
                changes.without_renewal(),
            ),
            false => (session.target, changes),
        };
        if changes.is_empty() {
            return Ok(After {
                target,
                changed: true,
                flushed,
                ..unchanged
            });
        }
        let started = std::time::Instant::now();
        let applied = self.store.apply(&target, &changes, &session.origin).await;
        self.metrics
            .store_latency
            .observe(started.elapsed().as_secs_f64());
        match applied {
            Ok(Outcome::Applied {
                target,
                has_data,
                revoked,
            }) => {
                if changes.flush {
                    self.metrics.session_event("flushed", 1);
                } else if changes.rotate {
                    self.metrics.session_event("rotated", 1);
                }
                if revoked > 0 {
                    self.metrics.session_event("revoked", revoked as u64);
                    debug!(method = %label.method, path = %label.uri.path(), revoked, "other sessions of the user ended");
                }
                Ok(After {
                    target,
                    has_data,
                    changed: true,
                    flushed,
                })
            }
            Ok(Outcome::Gone) => {
                debug!(method = %label.method, path = %label.uri.path(), session = %session.target.id.short(),
                    "session ended by a parallel request; its operations were dropped");
                Ok(After {
                    flushed: true,
                    has_data: false,
                    changed: true,
                    ..unchanged
                })
            }
            Err(ApplyError::Refused(reason)) => {
                warn!(method = %label.method, path = %label.uri.path(), %reason, "upstream session operations rejected");
                self.metrics.rejected("refused");
                Ok(unchanged)
            }
            Err(ApplyError::Store(e)) => Err(Error::Store(e)),
        }
    }
}

/// Removes from a browser's request everything that must not reach the
/// upstream: hop-by-hop headers, every header of ours in any spelling,
/// underscore headers if asked, and the session cookie if named. Strip,
/// then inject: the proxy adds its own headers after this.
pub fn strip_inbound(
    headers: &mut HeaderMap,
    prefix: &HeaderPrefix,
    session_cookie: Option<&str>,
    drop_underscores: bool,
) {
    hop::strip(headers);
    prefix.strip(headers);
    if drop_underscores {
        drop_underscore_headers(headers);
    }
    if let Some(name) = session_cookie {
        cookie::remove_from_request(headers, name);
    }
}

/// The headers that tell the upstream about `session`.
fn injected(session: &Resolved) -> protocol::Injected {
    let value = |text: &str| HeaderValue::from_bytes(text.as_bytes()).ok();
    let meta = session.meta.as_ref();
    protocol::Injected {
        id: session.target.id.header_value(),
        new: session.started,
        data: session
            .data
            .clone()
            .unwrap_or(HeaderValue::from_static("{}")),
        user: meta
            .and_then(|m| m.user.as_ref())
            .and_then(|u| value(u.as_str())),
        created: meta.map_or(session.target.issued_ms, |m| m.created_ms) / 1000,
        last_seen: meta.map(|m| m.last_seen_ms / 1000),
        client: meta.and_then(|m| m.client.as_deref()).and_then(value),
        agent: meta.and_then(|m| m.agent.as_deref()).and_then(value),
    }
}

/// Where a request comes from, for a session created by it.
fn origin(s: &Settings, headers: &HeaderMap, down: &Downstream) -> Origin {
    if !s.record_client {
        return Origin::default();
    }
    let client = forwarded::client(headers, &s.trusted_proxies)
        .unwrap_or_else(|| down.peer.ip().to_string());
    // Bounded: a User-Agent is recorded, not a novel.
    let agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(256).collect::<String>());
    Origin {
        client: Some(client.into()),
        agent: agent.map(Into::into),
    }
}

/// Whether a request may borrow an upstream connection for its browser
/// connection's task to drive (see [`paired`]): HTTP/1.1 (HTTP/2 streams
/// run side by side) and no upgrade (it takes the connection over).
fn pairable(req: &Request<Incoming>, websocket: bool) -> bool {
    req.version() == Version::HTTP_11 && !websocket
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// nginx's default: header names with `_` are ambiguous with `-` for many
/// apps (CGI maps both to `HTTP_X_Y`), so a client could shadow a header.
fn drop_underscore_headers(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The upstream's URI for a request to `path` (normalised) with the query
/// of `browser`'s URI.
fn upstream_uri(s: &Settings, path: &str, browser: &Uri) -> Result<Uri, Error> {
    fn invalid(_: impl std::error::Error) -> Error {
        Error::BadRequest("request target is not a valid path")
    }
    let path_and_query = match (browser.path_and_query(), browser.query()) {
        // Unchanged by normalisation (most are): its bytes are shared, not copied.
        (Some(pq), _) if pq.path() == path => pq.clone(),
        (_, Some(q)) => PathAndQuery::try_from(format!("{path}?{q}")).map_err(invalid)?,
        (_, None) => PathAndQuery::try_from(path).map_err(invalid)?,
    };
    Uri::builder()
        .scheme(s.upstream.scheme.clone())
        .authority(s.upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(invalid)
}

/// Removes our headers from the response and parses the operations among
/// them, in the order the upstream sent them when the raw head is known.
fn take_operations(s: &Settings, headers: &mut HeaderMap, capture: Option<HeadCapture>) -> Parsed {
    let mut ours = headers.keys().filter(|n| s.prefix.matches(n.as_str()));
    if ours.next().is_none() {
        return Ok(Default::default());
    }
    // Under one name, HeaderMap keeps the lines in order: the raw head is
    // parsed again only to order lines of different names.
    let one_name = ours.next().is_none();
    match capture
        .filter(|_| !one_name)
        .as_ref()
        .and_then(|c| c.lines(|n| s.prefix.matches(n)))
    {
        Some(lines) => {
            let ordered = lines.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
            let parsed = protocol::parse_operations(&s.prefix, ordered, s.max_operations);
            s.prefix.strip(headers);
            parsed
        }
        None => protocol::take_operations(&s.prefix, headers, s.max_operations),
    }
}

/// `Trailer` announces trailer fields; ours and `Set-Cookie` are removed
/// from trailers, so they are removed from the announcement too.
fn strip_trailer_announcements(s: &Settings, headers: &mut HeaderMap) {
    let Some(value) = headers
        .get(http::header::TRAILER)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !s.prefix.matches(n) && !n.eq_ignore_ascii_case("set-cookie"))
        .collect();
    match HeaderValue::try_from(kept.join(", ")) {
        Ok(v) if !kept.is_empty() => headers.insert(http::header::TRAILER, v),
        _ => headers.remove(http::header::TRAILER),
    };
}

/// The upstream may not set the session cookie itself.
fn remove_session_set_cookies(s: &Settings, headers: &mut HeaderMap) {
    let name = s.cookies.name();
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
