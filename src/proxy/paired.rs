//! Upstream connections lent to browser connections, one exchange at a time.
//!
//! hyper-util's pooled client hands every request to a shared pool (a
//! locked map keyed by origin, hashed on every checkout and return) and
//! runs each upstream connection as a task of its own, so a request
//! crosses tasks twice. A browser's HTTP/1 connection sends one request at
//! a time, so for each exchange it borrows an idle upstream connection
//! from a [`Lender`] and drives it from its own task with [`Driven`]: no
//! keyed lookup, no task hop. Once the response has been read to its end
//! the connection goes back to the lender's stack. What cannot borrow
//! (HTTP/2 streams, which run side by side; WebSocket upgrades, which take
//! the connection over; requests beyond the budget) goes through the pooled
//! client.
//!
//! The stack is last in, first out: at a modest request rate a few
//! connections serve every browser and stay warm in the CPU caches, the
//! way nginx's upstream keep-alive does, where one connection per browser
//! connection (this module's first design) spread the same load over as
//! many upstream sockets as browsers. At most `upstream.paired_connections`
//! are open at a time (lent plus idle), and one idle for [`IDLE_RELEASE`]
//! is closed, so a small legacy app is not held to workers nobody uses.
//!
//! hyper has no ready-made client for this (its `conn` API is the part
//! that is left to the caller), hence this module.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

use super::Error;
use super::body::RequestBody;
use super::framing;
use super::head_capture::{CapturingStream, HeadCapture};
use super::settings::Settings;
use crate::lazy_timer::LazyTimer;

type Conn = Connection<TokioIo<CapturingStream>, RequestBody>;

/// An idle upstream connection is closed once it has waited this long
/// (checked every half of it, so it closes within 1.5 times this): a
/// small app's workers must not stay held by connections nobody uses.
pub const IDLE_RELEASE: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open upstream connection.
struct Open {
    /// `None` while a request is in flight on it.
    sender: Option<SendRequest<RequestBody>>,
    conn: Pin<Box<Conn>>,
    capture: HeadCapture,
}

impl Open {
    /// No request in flight and the last response read to its end: hyper's
    /// client wants a new request only once the last exchange is complete
    /// on the wire (which hyper >= 1.12 keeps exact; see Cargo.toml).
    fn is_idle(&self) -> bool {
        self.sender.as_ref().is_some_and(SendRequest::is_ready)
    }

    /// Lets the connection see what happened while nobody drove it (the
    /// upstream closing it, say); false once it has ended.
    fn still_open(&mut self) -> bool {
        // A no-op waker is enough: the borrowing task polls it again, with
        // its own waker, before it waits on anything (see `Driven`).
        let mut cx = Context::from_waker(Waker::noop());
        self.conn.as_mut().poll(&mut cx).is_pending()
    }
}

/// An idle connection waiting on the lender's stack.
struct Parked {
    permit: OwnedSemaphorePermit,
    open: Open,
    since: Instant,
}

/// The connections not lent to anyone, and the budget of them all. One per
/// settings version: a reload retires the old one, which then lends
/// nothing and closes its connections as they come back.
pub struct Lender {
    budget: Arc<Semaphore>,
    idle: Mutex<Stack>,
}

#[derive(Default)]
struct Stack {
    /// Oldest first; lent from the end.
    parked: Vec<Parked>,
    retired: bool,
}

impl Lender {
    pub fn new(max_connections: usize) -> Lender {
        Lender {
            budget: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            idle: Mutex::default(),
        }
    }

    /// The most recently used idle connection that is still open, or a
    /// share of the budget for a new one.
    fn lend(self: &Arc<Self>) -> Option<Borrowed> {
        loop {
            let popped = {
                let mut idle = lock(&self.idle);
                if idle.retired {
                    return None;
                }
                idle.parked.pop()
            };
            let Some(mut parked) = popped else {
                let permit = self.budget.clone().try_acquire_owned().ok()?;
                return Some(Borrowed {
                    lender: self.clone(),
                    permit,
                    open: None,
                });
            };
            if parked.open.still_open() {
                return Some(Borrowed {
                    lender: self.clone(),
                    permit: parked.permit,
                    open: Some(parked.open),
                });
            }
        }
    }

    fn take_back(&self, permit: OwnedSemaphorePermit, open: Open) {
        let parked = Parked {
            permit,
            open,
            since: Instant::now(),
        };
        let refused = {
            let mut idle = lock(&self.idle);
            if idle.retired {
                Some(parked)
            } else {
                idle.parked.push(parked);
                None
            }
        };
        // Closed outside the lock.
        drop(refused);
    }

    /// Closes the connections idle for [`IDLE_RELEASE`] or longer.
    pub fn release_idle(&self) {
        let now = Instant::now();
        let stale: Vec<Parked> = {
            let mut idle = lock(&self.idle);
            let n = idle
                .parked
                .partition_point(|p| now.duration_since(p.since) >= IDLE_RELEASE);
            idle.parked.drain(..n).collect()
        };
        drop(stale);
    }

    /// Replaced by a reload: closes the idle connections now, the lent ones
    /// when they come back.
    pub fn retire(&self) {
        let parked = {
            let mut idle = lock(&self.idle);
            idle.retired = true;
            std::mem::take(&mut idle.parked)
        };
        drop(parked);
    }
}

/// What a browser connection has borrowed: a share of the budget, and the
/// connection once it is open (`None` before, or after it ended).
struct Borrowed {
    lender: Arc<Lender>,
    permit: OwnedSemaphorePermit,
    open: Option<Open>,
}

impl Borrowed {
    /// Gives the connection back if it is idle, or hands itself back if it
    /// is busy. One that ended only gives its share back.
    fn give_back(self) -> Result<(), Borrowed> {
        match self.open {
            Some(open) if open.is_idle() => {
                self.lender.take_back(self.permit, open);
                Ok(())
            }
            None => Ok(()),
            Some(_) => Err(self),
        }
    }
}

#[derive(Default)]
struct Slot {
    borrowed: Option<Borrowed>,
    /// A request is between its claim and its accepted response head.
    reserved: bool,
    /// The upstream timeout of the exchange in flight (see `send_within`).
    timer: Option<LazyTimer>,
}

impl Slot {
    /// Gives an idle borrowed connection back; false if one is busy.
    fn give_back_if_idle(&mut self) -> bool {
        match self.borrowed.take().map(Borrowed::give_back) {
            Some(Err(busy)) => {
                self.borrowed = Some(busy);
                false
            }
            _ => true,
        }
    }
}

/// The upstream connection a browser connection has borrowed, if any.
#[derive(Clone, Default)]
pub struct Paired(Arc<Mutex<Slot>>);

impl Paired {
    fn with<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        f(&mut lock(&self.0))
    }

    /// Whether this request goes through a borrowed connection: the one
    /// still held from the last exchange, an idle one, or a new one within
    /// the budget.
    pub fn claim(&self, lender: &Arc<Lender>) -> bool {
        self.with(|slot| {
            if slot.reserved {
                return false;
            }
            let held = slot
                .borrowed
                .as_ref()
                .is_some_and(|b| Arc::ptr_eq(&b.lender, lender));
            if !held {
                if !slot.give_back_if_idle() {
                    // One lent under older settings is still reading its
                    // response: the pool takes this request.
                    return false;
                }
                slot.borrowed = lender.lend();
            }
            slot.reserved = slot.borrowed.is_some();
            slot.reserved
        })
    }

    /// [`send`](Self::send), given up after `limit` (`None`). The exchanges
    /// of a browser connection come one at a time, so one timer serves them
    /// all, moved lazily, where `tokio::time::timeout` would arm a timer and
    /// drop it again for every request.
    pub async fn send_within(
        &self,
        s: &Settings,
        req: Request<RequestBody>,
        limit: Duration,
    ) -> Option<Result<(Response<Incoming>, HeadCapture), Error>> {
        let deadline = Instant::now() + limit;
        let mut send = std::pin::pin!(self.send(s, req));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = send.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            let expired = self.with(|slot| {
                let timer = slot.timer.get_or_insert_with(|| LazyTimer::new(deadline));
                timer.set(deadline);
                timer.expired(cx)
            });
            if expired {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Sends `req` (only after [`claim`](Self::claim) said yes), opening a
    /// connection first when none was lent, or the lent one closed. The
    /// response comes with the capture of its raw head.
    pub async fn send(
        &self,
        s: &Settings,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, HeadCapture), Error> {
        // Until the response head is here and its framing accepted, a
        // failure (or a timeout dropping this future) leaves the connection
        // in an unknown state: close it.
        let mut guard = InFlight {
            paired: self,
            done: false,
        };
        *req.uri_mut() = origin_form(req.uri());
        let (mut sender, mut capture) = match self.take() {
            Some(lent) => lent,
            None => self.open(s).await?,
        };
        if sender.ready().await.is_err() {
            // Closed by the upstream while idle.
            (sender, capture) = self.open(s).await?;
        }
        let rsp = match sender.try_send_request(req).await {
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
        // The bytes after a response whose framing the proxy refuses
        // cannot be trusted: such a connection is closed here, before any
        // browser connection could borrow it.
        if framing::check_response(rsp.headers()).is_ok() {
            guard.done = true;
            // From its first HTTP/1.0 response on, hyper speaks HTTP/1.0 on a
            // connection, which cannot frame a chunked upload; after a 101
            // (never asked for here: upgrades use the pool) it speaks
            // nothing. Such a connection closes instead of being lent.
            let reusable = rsp.version() != Version::HTTP_10
                && rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
            self.put_back(reusable.then_some(sender));
        }
        Ok((rsp, capture))
    }

    /// Never reuse the connection (its response could not be trusted).
    fn discard(&self) {
        self.with(|slot| *slot = Slot::default());
    }

    fn take(&self) -> Option<(SendRequest<RequestBody>, HeadCapture)> {
        self.with(|slot| {
            let open = slot.borrowed.as_mut()?.open.as_mut()?;
            Some((open.sender.take()?, open.capture.clone()))
        })
    }

    /// The response head is accepted: the connection reads the body, then
    /// goes back to the lender once idle. Without its sender it takes no
    /// more requests: hyper closes it once the response is read.
    fn put_back(&self, sender: Option<SendRequest<RequestBody>>) {
        self.with(|slot| {
            if let Some(open) = slot.borrowed.as_mut().and_then(|b| b.open.as_mut()) {
                open.sender = sender;
            }
            slot.reserved = false;
        });
    }

    /// Connects, and waits until the new connection takes a request. It
    /// replaces the borrowed one, if any, under the same share.
    async fn open(&self, s: &Settings) -> Result<(SendRequest<RequestBody>, HeadCapture), Error> {
        self.with(|slot| {
            if let Some(borrowed) = slot.borrowed.as_mut() {
                borrowed.open = None;
            }
        });
        let target = Uri::builder()
            .scheme(s.upstream.scheme.clone())
            .authority(s.upstream.authority.clone())
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
        let (mut sender, conn) = Builder::new()
            .max_headers(s.upstream_head_lines)
            .max_buf_size(super::settings::UPSTREAM_HEAD_BYTES)
            .handshake(io)
            .await
            .map_err(|e| Error::Upstream(e.into()))?;
        let open = Open {
            sender: None,
            conn: Box::pin(conn),
            capture: capture.clone(),
        };
        self.with(|slot| match slot.borrowed.as_mut() {
            Some(borrowed) => {
                borrowed.open = Some(open);
                Ok(())
            }
            None => Err(Error::Upstream(
                "the borrowed upstream connection was discarded".into(),
            )),
        })?;
        sender
            .ready()
            .await
            .map_err(|e| Error::Upstream(e.into()))?;
        Ok((sender, capture))
    }

    /// Lets the borrowed connection read and write, forgets it once it has
    /// ended, and gives it back once it is idle (its share, if it ended).
    fn drive(&self, cx: &mut Context<'_>) {
        self.with(|slot| {
            let Some(borrowed) = slot.borrowed.as_mut() else {
                return;
            };
            if let Some(open) = borrowed.open.as_mut()
                && let Poll::Ready(ended) = open.conn.as_mut().poll(cx)
            {
                if let Err(e) = ended {
                    debug!(error = %e, "upstream connection ended with an error");
                }
                borrowed.open = None;
            }
            if !slot.reserved {
                slot.give_back_if_idle();
            }
        })
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

/// A browser connection's future, which also drives the upstream
/// connection it has borrowed: both make progress whenever the browser
/// connection's task is polled, and either one's I/O wakes it.
pub struct Driven<F> {
    inner: Pin<Box<F>>,
    paired: Paired,
}

impl<F: Future> Driven<F> {
    pub fn new(inner: F, paired: Paired) -> Driven<F> {
        Driven {
            inner: Box::pin(inner),
            paired,
        }
    }
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Upstream first (a response may have arrived), then the browser
        // side, then upstream again (a request may have been handed over,
        // or the response read to its end).
        this.paired.drive(cx);
        let out = this.inner.as_mut().poll(cx);
        this.paired.drive(cx);
        out
    }
}
