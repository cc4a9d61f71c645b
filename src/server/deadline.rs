//! Per-connection deadlines that hyper does not keep apart: the time a
//! request head may take once it has started (slowloris), and the time an
//! idle keep-alive connection is kept. hyper's own header timer runs from
//! the moment a connection waits for a head, so it cannot tell the two.
//!
//! [`Deadlines`] wraps a connection's stream and knows, through
//! [`Activity`], whether a request is in flight: then no deadline applies
//! (the body and upstream timeouts do). Otherwise the connection is either
//! idle (keep-alive deadline) or receiving a head (head deadline, from its
//! first byte; a new connection starts there). A passed deadline fails the
//! read, and hyper closes the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use crate::lazy_timer::LazyTimer;
use crate::proxy::framing::Refused;

/// Requests (and upgraded tunnels) in flight on one connection.
#[derive(Clone, Default)]
pub struct Activity(Arc<ActivityState>);

#[derive(Default)]
struct ActivityState {
    in_flight: AtomicUsize,
    /// The connection's reader, woken when the last request ends so that
    /// its idle deadline starts even if it is not polled otherwise.
    reader: Mutex<Option<Waker>>,
    /// The raw-head framing verdict of the request about to be handled
    /// (see `head_tap`); only refusals are kept.
    refused: Mutex<Option<Refused>>,
    /// Part of an HTTP/1 request head has arrived, not its end (see
    /// `head_tap`): a head deadline passing now is a slow client, not an
    /// idle one.
    head_started: AtomicBool,
}

impl Activity {
    /// Marks one request in flight until the guard is dropped.
    pub fn begin(&self) -> Busy {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Takes the framing refusal found in the raw head of the request being
    /// handled, if there was one.
    pub fn take_framing_refusal(&self) -> Option<Refused> {
        self.0
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub(super) fn set_framing(&self, verdict: Result<(), Refused>) {
        if let Err(refused) = verdict {
            *self.0.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(refused);
        }
    }

    pub(super) fn set_head_started(&self, started: bool) {
        self.0.head_started.store(started, Ordering::Release);
    }

    pub(super) fn head_started(&self) -> bool {
        self.0.head_started.load(Ordering::Acquire)
    }

    pub(super) fn busy(&self) -> bool {
        self.0.in_flight.load(Ordering::Acquire) > 0
    }

    fn wake_reader_when_idle(&self, waker: &Waker) {
        let mut reader = self.0.reader.lock().unwrap_or_else(|e| e.into_inner());
        if !reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *reader = Some(waker.clone());
        }
    }
}

/// A request in flight; dropping it ends it.
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let reader = self
                .0
                .0
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(waker) = reader {
                waker.wake();
            }
        }
    }
}

/// An HTTP/1 request head that began but did not end in time: the
/// connection is closed, as nginx does, and the server logs and counts it.
/// A connection that sent nothing, or an HTTP/2 one between requests, ends
/// quietly instead.
#[derive(Debug, thiserror::Error)]
#[error("request head not complete within server.header_read_timeout ({after:?})")]
pub struct SlowHead {
    pub after: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Busy,
}

pub struct Deadlines<T> {
    inner: T,
    activity: Activity,
    phase: Phase,
    /// When the current phase's time is up (unused while busy). Every
    /// request passes through the head and idle phases: the timer is
    /// moved only when a read waits, hence lazy.
    timer: LazyTimer,
    head: Duration,
    keep_alive: Duration,
}

impl<T> Deadlines<T> {
    /// A new connection: its first head must arrive within `head`.
    pub fn new(inner: T, activity: Activity, head: Duration, keep_alive: Duration) -> Self {
        Deadlines {
            inner,
            activity,
            phase: Phase::Head,
            timer: LazyTimer::new(Instant::now() + head),
            head,
            keep_alive,
        }
    }

    /// The stream it wraps, to look at without reading (`peek`).
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn enter(&mut self, phase: Phase) {
        if self.phase == phase {
            return;
        }
        self.phase = phase;
        let limit = match phase {
            Phase::Idle => self.keep_alive,
            Phase::Head => self.head,
            Phase::Busy => return,
        };
        self.timer.set(Instant::now() + limit);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.activity.busy() {
            self.enter(Phase::Busy);
            self.activity.wake_reader_when_idle(cx.waker());
        } else if self.phase == Phase::Busy {
            self.enter(Phase::Idle);
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && self.phase == Phase::Idle {
                    self.enter(Phase::Head);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.phase != Phase::Busy && self.timer.expired(cx) => {
                let error = match self.phase {
                    Phase::Head if self.activity.head_started() => {
                        io::Error::new(io::ErrorKind::TimedOut, SlowHead { after: self.head })
                    }
                    Phase::Head => io::Error::new(io::ErrorKind::TimedOut, "request head timeout"),
                    _ => io::Error::new(io::ErrorKind::TimedOut, "keep-alive idle timeout"),
                };
                Poll::Ready(Err(error))
            }
            other => other,
        }
    }
}

forward_async_write!(Deadlines);
