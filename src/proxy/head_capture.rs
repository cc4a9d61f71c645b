//! Capturing the upstream's raw response head, to read operation lines in
//! the order they were sent.
//!
//! The protocol applies `X-Session-Delete` and `X-Session-Set` lines in the
//! order received, but hyper's `HeaderMap` groups values by name and loses
//! the order across names (`Set a`, `Delete a`, `Set a` arrives as two Sets
//! and one Delete). hyper exposes the original order only behind its
//! unstable FFI feature, so this connector keeps a copy of each response
//! head as it is read, and the proxy re-reads the operation lines from it.
//!
//! The client never pipelines: on a connection, a request is written, then
//! its response head is read. So the capture restarts on the first write
//! after reading, and ends at the first final (non-1xx) head's blank line;
//! body bytes are never kept.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest head kept: the limit on upstream heads. hyper checks its own
/// (the same number) only before each read, so a head somewhat larger can
/// still parse there; the capture knows the exact size and such a head is
/// refused by the proxy (see [`HeadCapture::overflowed`]), the same way
/// every time.
const MAX_HEAD: usize = super::settings::UPSTREAM_HEAD_BYTES;

/// Capacity kept between responses; a buffer grown past it by one large
/// head is given back, not held for the connection's life.
const KEPT_CAPACITY: usize = 64 << 10;

#[derive(Default)]
enum State {
    /// A request is being written; the next bytes read start a head.
    #[default]
    Writing,
    /// Reading a head into `buf`.
    Reading,
    /// The final head was captured (or was too large); ignore the body.
    Done,
    /// The final head was a `101`: the connection is a tunnel from now on,
    /// and no byte either way is a head again.
    Upgraded,
}

#[derive(Default)]
struct Capture {
    state: State,
    /// Bytes of the head being read; once `Done`, exactly the final head.
    /// Reused across responses, so a capture costs no allocation.
    buf: Vec<u8>,
    /// Whether `buf` holds a complete final head.
    complete: bool,
    /// Whether the head grew past `MAX_HEAD` before it ended.
    overflowed: bool,
}

impl Capture {
    fn wrote(&mut self) {
        if !matches!(self.state, State::Writing | State::Upgraded) {
            self.state = State::Writing;
            self.buf.clear();
            if self.buf.capacity() > KEPT_CAPACITY {
                self.buf = Vec::new();
            }
            self.complete = false;
            self.overflowed = false;
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Done | State::Upgraded) || bytes.is_empty() {
            return;
        }
        self.state = State::Reading;
        // Only the new bytes (and the three before them, which may start
        // the blank line) are searched: a large head arrives in many reads.
        let mut from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(bytes);
        // A 1xx head may come before the final one, in the same read or not.
        // Lines may end in a bare `\n`, which hyper accepts from an upstream
        // too: looking for `\r\n\r\n` alone would miss such a head and copy
        // the body as if it were one.
        while let Some(end) = super::framing::head_end(&self.buf[from..]).map(|e| from + e) {
            if end > MAX_HEAD {
                return self.overflow();
            }
            if !is_interim(&self.buf[..end]) {
                self.buf.truncate(end);
                self.complete = true;
                self.state = if is_switch(&self.buf) {
                    State::Upgraded
                } else {
                    State::Done
                };
                return;
            }
            self.buf.drain(..end);
            from = 0;
        }
        if self.buf.len() > MAX_HEAD {
            self.overflow();
        }
    }

    fn overflow(&mut self) {
        self.state = State::Done;
        self.buf = Vec::new();
        self.overflowed = true;
    }
}

/// `HTTP/1.1 1xx` other than 101 (which ends the exchange like a final one).
fn is_interim(head: &[u8]) -> bool {
    head.len() > 12 && head[9] == b'1' && !is_switch(head)
}

/// `HTTP/1.1 101`: a WebSocket tunnel follows.
fn is_switch(head: &[u8]) -> bool {
    head.get(9..12) == Some(b"101")
}

/// The capture of one connection, attached to each response read on it.
#[derive(Clone, Default)]
pub struct HeadCapture(Arc<Mutex<Capture>>);

impl HeadCapture {
    fn with<R>(&self, f: impl FnOnce(&mut Capture) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The header lines of the response head just read whose names `keep`
    /// accepts, in order. `None` if the head was not captured (then the
    /// caller falls back to `HeaderMap`).
    pub fn lines(&self, keep: impl Fn(&str) -> bool) -> Option<Vec<(String, Vec<u8>)>> {
        self.with(|c| c.complete.then(|| parse_lines(&c.buf, keep)).flatten())
    }

    /// Whether the response head just read was larger than the upstream
    /// head limit.
    pub fn overflowed(&self) -> bool {
        self.with(|c| c.overflowed)
    }
}

fn parse_lines(head: &[u8], keep: impl Fn(&str) -> bool) -> Option<Vec<(String, Vec<u8>)>> {
    let count = memchr::memchr_iter(b'\n', head).count();
    let mut headers = vec![httparse::EMPTY_HEADER; count];
    let mut rsp = httparse::Response::new(&mut headers);
    match rsp.parse(head) {
        // Only the kept lines are copied: the others would cost two
        // allocations each on every response that carries operations.
        Ok(httparse::Status::Complete(_)) => Some(
            rsp.headers
                .iter()
                .filter(|h| keep(h.name))
                .map(|h| (h.name.to_ascii_lowercase(), h.value.trim_ascii().to_vec()))
                .collect(),
        ),
        _ => None,
    }
}

/// A TCP stream that feeds what it reads into its connection's capture.
pub struct CapturingStream {
    inner: TcpStream,
    capture: HeadCapture,
}

impl CapturingStream {
    pub fn new(inner: TcpStream, capture: HeadCapture) -> CapturingStream {
        CapturingStream { inner, capture }
    }

    pub fn capture(&self) -> &HeadCapture {
        &self.capture
    }
}

impl AsyncRead for CapturingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            self.capture.with(|c| c.read(new));
        }
        polled
    }
}

impl AsyncWrite for CapturingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.capture.with(Capture::wrote);
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.capture.with(Capture::wrote);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection for CapturingStream {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.capture.clone())
    }
}

/// hyper-util's `HttpConnector`, handing out capturing streams.
#[derive(Clone)]
pub struct CapturingConnector {
    inner: HttpConnector,
}

impl CapturingConnector {
    pub fn new(inner: HttpConnector) -> Self {
        CapturingConnector { inner }
    }
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<TokioIo<CapturingStream>, Box<dyn std::error::Error + Send + Sync>>,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for CapturingConnector {
    type Response = TokioIo<CapturingStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(TokioIo::new(CapturingStream::new(
                tcp,
                HeadCapture::default(),
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_final_head_after_interim_ones_and_restarts_on_write() {
        let capture = HeadCapture::default();
        capture.with(|c| {
            c.wrote();
            c.read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Session-Set: a=1\r\n");
            c.read(b"x-session-delete: a\r\nX-Session-Set: a=2\r\n\r\nbody bytes");
        });
        assert_only_kept_lines_return(&capture);
        let lines = capture.lines(|_| true).unwrap();
        let names: Vec<_> = lines
            .iter()
            .map(|(n, v)| format!("{n}:{}", String::from_utf8_lossy(v)))
            .collect();
        assert_eq!(
            names,
            [
                "x-session-set:a=1",
                "x-session-delete:a",
                "x-session-set:a=2"
            ]
        );
        capture.with(|c| c.read(b"HTTP/1.1 200 OK\r\nX-Session-Set: body=1\r\n\r\n"));
        assert_eq!(
            capture.lines(|_| true).unwrap().len(),
            3,
            "body bytes are never taken for a head"
        );
        capture.with(|c| {
            c.wrote();
            c.read(b"HTTP/1.1 204 No Content\r\n\r\n");
        });
        assert!(capture.lines(|_| true).unwrap().is_empty());
    }

    #[test]
    fn a_head_with_bare_line_feeds_is_captured_without_its_body() {
        let capture = HeadCapture::default();
        capture.with(|c| {
            c.wrote();
            c.read(b"HTTP/1.1 200 OK\nX-Session-Delete: a\nX-Session-Set: a=1\n\nbody");
        });
        let lines = capture.lines(|_| true).unwrap();
        assert_eq!(
            lines,
            [
                ("x-session-delete".to_owned(), b"a".to_vec()),
                ("x-session-set".to_owned(), b"a=1".to_vec())
            ]
        );
        assert!(!capture.with(|c| c.buf.ends_with(b"body")));
    }

    #[test]
    fn a_head_over_the_limit_overflows_however_it_is_split() {
        let mut head = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        head.resize(head.len() + MAX_HEAD, b'p');
        head.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
        for size in [4096, 65536, head.len()] {
            let capture = HeadCapture::default();
            for chunk in head.chunks(size) {
                capture.with(|c| c.read(chunk));
            }
            assert!(capture.overflowed(), "read {size} bytes at a time");
            assert!(capture.lines(|_| true).is_none());
        }
        let capture = HeadCapture::default();
        capture.with(|c| c.read(&head[head.len() - 60..]));
        assert!(!capture.overflowed());
    }

    #[test]
    fn a_tunnel_after_101_is_never_captured() {
        let capture = HeadCapture::default();
        capture.with(|c| {
            c.wrote();
            c.read(b"HTTP/1.1 101 Switching Protocols\r\nX-Session-Set: a=1\r\n\r\n");
        });
        assert_eq!(capture.lines(|_| true).unwrap().len(), 1);
        for _ in 0..3 {
            capture.with(|c| {
                c.wrote();
                c.read(&[b'x'; 1000]);
            });
        }
        assert!(capture.with(|c| c.buf.len() < 100 && matches!(c.state, State::Upgraded)));
    }

    /// Only the lines the caller keeps are returned, still in order.
    fn assert_only_kept_lines_return(capture: &HeadCapture) {
        let kept = capture
            .lines(|n| n.eq_ignore_ascii_case("x-session-set"))
            .unwrap();
        let values: Vec<&[u8]> = kept.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(values, [b"a=1".as_slice(), b"a=2".as_slice()]);
    }
}
