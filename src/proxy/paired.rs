//! An upstream connection paired with one browser connection.
//!
//! hyper-util's pooled client hands every request to a shared pool (a
//! locked map keyed by origin, hashed on every checkout and return) and
//! runs each upstream connection as a task of its own, so a request
//! crosses tasks twice. A browser's HTTP/1 connection sends one request at
//! a time, so it keeps one upstream connection for itself, driven from its
//! own task by [`Driven`]: no pool, no task hop. What cannot use it (HTTP/2
//! streams, which run side by side; WebSocket upgrades, which take the
//! connection over) goes through the pooled client.
//!
//! So that idle browsers do not pin upstream connections (a small legacy
//! app may serve few at once), a connection is paired only once the
//! browser has reused it (its second request, without `Connection:
//! close`), a paired connection is closed after [`IDLE_RELEASE`] unused,
//! and at most `upstream.paired_connections` are paired at a time; the
//! rest use the pool, as every request did before.
//!
//! hyper has no ready-made client for this (its `conn` API is the part
//! that is left to the caller), hence this module.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::debug;

use super::Error;
use super::body::RequestBody;
use super::head_capture::{CapturingStream, HeadCapture};
use super::settings::Settings;

type Conn = Connection<TokioIo<CapturingStream>, RequestBody>;

/// The open upstream connection.
struct Open {
    /// The upstream it goes to: a reload may point the proxy elsewhere.
    origin: Authority,
    /// `None` while a request is in flight on it.
    sender: Option<SendRequest<RequestBody>>,
    conn: Pin<Box<Conn>>,
    capture: HeadCapture,
}

/// A paired connection unused for this long (two checks in a row with no
/// request between them) is closed and its share given back: a browser
/// sends its requests in bursts, and an idle one must not hold an upstream
/// worker of a small app.
pub const IDLE_RELEASE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Slot {
    /// Requests the browser connection has sent that could be paired.
    seen: u32,
    /// A request came since the last idle check.
    active: bool,
    /// A share of `upstream.paired_connections`, held while paired.
    permit: Option<OwnedSemaphorePermit>,
    open: Option<Open>,
}

/// The browser connection's upstream connection, if open.
#[derive(Clone, Default)]
pub struct Paired(Arc<Mutex<Slot>>);

impl Paired {
    fn with<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether this request goes through the paired connection: the
    /// browser has reused its connection, a share of the budget is held (or
    /// free), and no request is in flight on it.
    pub fn claim(&self, budget: &Arc<Semaphore>) -> bool {
        self.with(|slot| {
            slot.seen = slot.seen.saturating_add(1);
            slot.active = true;
            if slot.seen < 2 {
                return false;
            }
            if slot
                .permit
                .as_ref()
                .is_some_and(|p| !Arc::ptr_eq(p.semaphore(), budget))
            {
                // A reload made a new budget: the old share no longer counts.
                slot.close();
            }
            if let Some(open) = &slot.open {
                return open.sender.is_some();
            }
            if slot.permit.is_none() {
                slot.permit = budget.clone().try_acquire_owned().ok();
            }
            slot.permit.is_some()
        })
    }

    /// Sends `req` (only after [`claim`](Self::claim) said yes),
    /// opening the connection first when there is none, or it closed, or
    /// it goes to another upstream since a reload.
    pub async fn send(
        &self,
        s: &Settings,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, Error> {
        // Until the response head is here, a failure (or a timeout dropping
        // this future) leaves the connection in an unknown state: close it.
        let mut guard = InFlight {
            paired: self,
            done: false,
        };
        *req.uri_mut() = origin_form(req.uri());
        let (mut sender, mut capture) = match self.take(&s.upstream.authority) {
            Some(idle) => idle,
            None => self.open(s).await?,
        };
        if sender.ready().await.is_err() {
            // Closed by the upstream while idle.
            (sender, capture) = self.open(s).await?;
        }
        let mut rsp = match sender.try_send_request(req).await {
            Ok(rsp) => rsp,
            Err(mut e) => match e.take_message() {
                // Never written: the connection closed under it; one retry
                // on a fresh one, as the pooled client does.
                Some(req) => {
                    (sender, capture) = self.open(s).await?;
                    sender
                        .send_request(req)
                        .await
                        .map_err(|e| Error::from_exchange(e.into()))?
                }
                None => return Err(Error::from_exchange(e.into_error().into())),
            },
        };
        guard.done = true;
        self.put_back(sender);
        rsp.extensions_mut().insert(capture);
        Ok(rsp)
    }

    /// Closes the connection if no request came since the last check and
    /// none is under way; says whether a connection is still open.
    fn release_if_idle(&self) -> bool {
        self.with(|slot| {
            let active = std::mem::take(&mut slot.active);
            let Some(open) = &slot.open else {
                return false;
            };
            // Ready: no request in flight and its response body fully read.
            let idle = open.sender.as_ref().is_some_and(SendRequest::is_ready);
            if !active && idle {
                slot.close();
            }
            slot.open.is_some()
        })
    }

    /// Never reuse the connection (its response could not be trusted).
    pub fn discard(&self) {
        self.with(Slot::close);
    }

    fn take(&self, origin: &Authority) -> Option<(SendRequest<RequestBody>, HeadCapture)> {
        self.with(|slot| {
            let open = slot.open.as_mut()?;
            if open.origin != *origin {
                slot.open = None;
                return None;
            }
            let sender = open.sender.take()?;
            Some((sender, open.capture.clone()))
        })
    }

    fn put_back(&self, sender: SendRequest<RequestBody>) {
        self.with(|slot| {
            if let Some(open) = slot.open.as_mut() {
                open.sender = Some(sender);
            }
        });
    }

    /// Connects, and waits until the new connection takes a request.
    async fn open(&self, s: &Settings) -> Result<(SendRequest<RequestBody>, HeadCapture), Error> {
        self.with(|slot| slot.open = None);
        let origin = s.upstream.authority.clone();
        let target = Uri::builder()
            .scheme(s.upstream.scheme.clone())
            .authority(origin.clone())
            .path_and_query("/")
            .build()
            .expect("built from a validated upstream URL");
        let connect_error = |e| Error::from_connect(e, s.upstream.connect_timeout);
        let mut connector = s.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(connect_error)?;
        let io = connector.call(target).await.map_err(connect_error)?;
        let capture = io.inner().capture().clone();
        let (sender, conn) = Builder::new()
            .max_headers(s.upstream_head_lines)
            .max_buf_size(super::settings::UPSTREAM_HEAD_BYTES)
            .handshake(io)
            .await
            .map_err(|e| Error::Upstream(e.into()))?;
        self.with(|slot| {
            slot.open = Some(Open {
                origin,
                sender: None,
                conn: Box::pin(conn),
                capture: capture.clone(),
            })
        });
        let mut sender = sender;
        sender
            .ready()
            .await
            .map_err(|e| Error::Upstream(e.into()))?;
        Ok((sender, capture))
    }

    /// Lets the connection read and write; forgets it once it has ended.
    /// Says whether one is open.
    fn poll_connection(&self, cx: &mut Context<'_>) -> bool {
        self.with(|slot| {
            let Some(open) = slot.open.as_mut() else {
                return false;
            };
            if let Poll::Ready(ended) = open.conn.as_mut().poll(cx) {
                if let Err(e) = ended {
                    debug!(error = %e, "upstream connection ended with an error");
                }
                // The share is kept: the browser is likely to send more.
                slot.open = None;
            }
            slot.open.is_some()
        })
    }
}

impl Slot {
    /// Closes the connection and gives its share of the budget back.
    fn close(&mut self) {
        self.open = None;
        self.permit = None;
    }
}

/// Closes the connection unless the exchange reached its response head.
struct InFlight<'a> {
    paired: &'a Paired,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.paired.discard();
        }
    }
}

/// hyper writes the target as given: an HTTP/1 origin server wants the
/// path and query only.
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()))
}

/// A browser connection's future, which also drives its paired upstream
/// connection: both make progress whenever the browser connection's task
/// is polled, and either one's I/O wakes it.
pub struct Driven<F> {
    inner: Pin<Box<F>>,
    paired: Paired,
    /// Armed while a paired connection is open (see [`IDLE_RELEASE`]).
    idle_check: Option<Pin<Box<Sleep>>>,
}

impl<F: Future> Driven<F> {
    pub fn new(inner: F, paired: Paired) -> Driven<F> {
        Driven {
            inner: Box::pin(inner),
            paired,
            idle_check: None,
        }
    }

    fn poll_idle_check(&mut self, cx: &mut Context<'_>, open: bool) {
        if !open {
            self.idle_check = None;
            return;
        }
        match &mut self.idle_check {
            None => {
                let mut check = Box::pin(tokio::time::sleep(IDLE_RELEASE));
                // Registers the waker; the timer wakes the task when due.
                let _ = check.as_mut().poll(cx);
                self.idle_check = Some(check);
            }
            Some(check) if !check.is_elapsed() => {}
            Some(check) => {
                if self.paired.release_if_idle() {
                    check.as_mut().reset(Instant::now() + IDLE_RELEASE);
                    let _ = check.as_mut().poll(cx);
                } else {
                    self.idle_check = None;
                }
            }
        }
    }
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Upstream first (a response may have arrived), then the browser
        // side, then upstream again (a request may have been handed over).
        this.paired.poll_connection(cx);
        let out = this.inner.as_mut().poll(cx);
        if out.is_pending() {
            let open = this.paired.poll_connection(cx);
            this.poll_idle_check(cx, open);
        }
        out
    }
}
