//! Who serves a browser connection, and how it stops at shutdown.
//!
//! A connection whose first bytes cannot begin HTTP/2's preface is served
//! by hyper's HTTP/1 directly. Only one that may be HTTP/2 (prior
//! knowledge, or `h2` chosen by ALPN over TLS) goes through hyper-util's
//! detection, which reads the first 24 bytes on their own: hyper then
//! parses them as a partial head and scans the head again once the rest is
//! read, and every poll of the connection goes through one more wrapper
//! (callgrind: about 5,900 instructions per new connection of one request
//! and 1,500 per kept-alive request).
//!
//! hyper-util's graceful shutdown is sealed to hyper-util's own connection
//! types, and hyper's upgradeable HTTP/1 connection is not one of them, so
//! the signal is a `CancellationToken` and each connection is told to
//! finish here, as hyper-util does it: requests in flight complete, an
//! idle keep-alive connection closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use hyper::body::{Body, Incoming};
use hyper::service::HttpService;
use hyper_util::server::conn::auto;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::proxy::BoxError;

/// What every HTTP/2 connection opens with (RFC 9113 section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection whose first bytes are `first` may be HTTP/2: they
/// agree with the preface as far as both go. An HTTP/1 request line
/// differs by its first or second byte (`PUT`, `POST`, `PATCH` share only
/// the `P`).
pub fn may_be_http2(first: &[u8]) -> bool {
    let n = first.len().min(HTTP2_PREFACE.len());
    first[..n] == HTTP2_PREFACE[..n]
}

/// A connection that can be told to finish: answer what is in flight,
/// take no new request, close.
pub trait Finish {
    fn finish(self: Pin<&mut Self>);
}

// The bounds are those of hyper's and hyper-util's own `graceful_shutdown`.
impl<I, S, B> Finish for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E, B> Finish for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

pin_project_lite::pin_project! {
    /// Runs a connection to its end. Once `stop` is cancelled it tells it
    /// to [`Finish`] and runs it on until the requests in flight are
    /// answered. A future of its own rather than an `async fn`: the
    /// compiler cannot prove an `async fn` generic over hyper's connection
    /// (whose service futures borrow) `Send` for every lifetime.
    pub struct UntilStopped<F> {
        #[pin]
        conn: F,
        #[pin]
        stop: WaitForCancellationFutureOwned,
        // Set once `stop` has been polled.
        signal: Option<Arc<Signal>>,
        finishing: bool,
    }
}

/// The waker `stop` is polled with: it notes that `stop` woke the task.
/// So `stop` is polled again only then, not on each of the several polls
/// a request takes (a cancellation check locks two mutexes: about 1,100
/// instructions per request, callgrind).
struct Signal {
    woken: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wake_by_ref();
    }
}

pub fn until_stopped<F: Future + Finish>(conn: F, stop: CancellationToken) -> UntilStopped<F> {
    UntilStopped {
        conn,
        stop: stop.cancelled_owned(),
        signal: None,
        finishing: false,
    }
}

impl<F: Future + Finish> Future for UntilStopped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        if !*this.finishing && stopped(this.stop, this.signal, cx) {
            *this.finishing = true;
            this.conn.as_mut().finish();
        }
        this.conn.poll(cx)
    }
}

/// Whether `stop` has fired; polls it only the first time and when it
/// has woken the task since.
fn stopped(
    stop: Pin<&mut WaitForCancellationFutureOwned>,
    signal: &mut Option<Arc<Signal>>,
    cx: &mut Context<'_>,
) -> bool {
    let signal = match signal {
        Some(signal) if signal.woken.swap(false, Ordering::AcqRel) => signal,
        Some(signal) => {
            let mut task = signal.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.will_wake(cx.waker()) {
                task.clone_from(cx.waker());
            }
            return false;
        }
        None => signal.insert(Arc::new(Signal {
            woken: AtomicBool::new(false),
            task: Mutex::new(cx.waker().clone()),
        })),
    };
    let waker = Waker::from(signal.clone());
    stop.poll(&mut Context::from_waker(&waker)).is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_agrees_with_the_preface_may_be_http2() {
        assert!(may_be_http2(HTTP2_PREFACE));
        assert!(may_be_http2(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"
        ));
        assert!(may_be_http2(b"P"), "too short to tell");
        assert!(may_be_http2(b"PRI * HT"));
        for http1 in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /login HTTP/1.1\r\n",
            b"PUT /x HTTP/1.1\r\n",
            b"PATCH /x HTTP/1.1\r\n",
            b"PRI / HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ] {
            assert!(!may_be_http2(http1), "{:?}", String::from_utf8_lossy(http1));
        }
    }

    /// A stand-in connection: ends once told to finish, or at once if
    /// `done`.
    struct Conn {
        done: bool,
        told: Arc<AtomicBool>,
    }

    impl Future for Conn {
        type Output = bool;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
            match self.done || self.told.load(Ordering::SeqCst) {
                true => Poll::Ready(self.told.load(Ordering::SeqCst)),
                false => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        }
    }

    impl Finish for Conn {
        fn finish(self: Pin<&mut Self>) {
            self.told.store(true, Ordering::SeqCst);
        }
    }

    /// A connection that ends on its own is not told to finish; one still
    /// running when the token is cancelled is, and is then run to its end.
    #[tokio::test]
    async fn a_running_connection_is_told_to_finish_and_run_on() {
        let stop = CancellationToken::new();
        let told = Arc::new(AtomicBool::new(false));
        let conn = |done| Conn {
            done,
            told: told.clone(),
        };
        assert!(!until_stopped(conn(true), stop.clone()).await);
        let cancel = stop.clone();
        tokio::spawn(async move { cancel.cancel() });
        assert!(until_stopped(conn(false), stop).await, "told to finish");
    }
}
