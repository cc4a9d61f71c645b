//! A copy of each HTTP/1 request head as it arrived on the wire, for the
//! framing checks hyper cannot do for us: hyper drops a `Content-Length`
//! that comes with `Transfer-Encoding` before the service sees the request,
//! so a CL.TE or TE.CL message looks clean afterwards.
//!
//! The tap sits above TLS (it sees plaintext) and looks at bytes only
//! while a head is arriving after the connection was idle. A head that
//! arrives in one read is checked in place; one split over reads is copied
//! first. Its blank line may end in `\r\n` or a bare `\n` (hyper accepts
//! both), and empty lines before the request line are skipped, as hyper
//! skips them. The verdict waits in the connection's `Activity` for the
//! proxy. A request pipelined behind another is not copied; the proxy
//! re-frames every body itself, so such a request cannot desynchronise the
//! upstream, it only escapes the stricter refusal.
//!
//! While a head that opens like a request line is being copied, the tap
//! tells `Activity` so, which lets the head deadline tell a slow client
//! from an idle one. A connection that opens with HTTP/2's preface is
//! never tapped again: its frames between requests are no head.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::deadline::Activity;
use crate::proxy::framing::{check_raw_request, head_end};

pub struct HeadTap<T> {
    inner: T,
    activity: Activity,
    /// Copying a head; `None` while a request is in flight or done.
    copy: Option<Vec<u8>>,
    was_busy: bool,
    max: usize,
    /// The connection began with HTTP/2's preface: there are no HTTP/1
    /// heads to copy on it.
    http2: bool,
    /// The copy's first line has arrived (and was looked at).
    line_seen: bool,
}

/// How an HTTP/2 connection begins (RFC 9113 section 3.4); hyper reads
/// it as a head before it hands the connection to its HTTP/2 server.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

impl<T> HeadTap<T> {
    pub fn new(inner: T, activity: Activity, max_head_bytes: usize) -> Self {
        HeadTap {
            inner,
            activity,
            copy: Some(Vec::new()),
            was_busy: false,
            max: max_head_bytes,
            http2: false,
            line_seen: false,
        }
    }

    fn tap(&mut self, bytes: &[u8]) {
        let Some(copy) = self.copy.as_mut() else {
            return;
        };
        // hyper skips empty lines before a request line; so must we, or the
        // first of them would pass for the blank line ending the head.
        let bytes = match copy.is_empty() {
            true => {
                let start = bytes.iter().position(|b| !matches!(b, b'\r' | b'\n'));
                &bytes[start.unwrap_or(bytes.len())..]
            }
            false => bytes,
        };
        if bytes.is_empty() {
            return;
        }
        if copy.is_empty()
            && let Some(end) = head_end(bytes)
        {
            // The common case: the whole head in one read, checked in place.
            self.http2 = bytes.starts_with(HTTP2_PREFACE);
            self.activity.set_framing(check_raw_request(&bytes[..end]));
            self.copy = None;
            return;
        }
        let start = copy.len().saturating_sub(2);
        copy.extend_from_slice(bytes);
        if !self.line_seen {
            self.line_seen = memchr::memchr(b'\n', bytes).is_some();
            let started = match self.line_seen {
                true => is_request_line(copy),
                false => opens_with_a_method(copy),
            };
            self.activity.set_head_started(started);
        }
        if let Some(end) = head_end(&copy[start..]) {
            self.http2 = copy.starts_with(HTTP2_PREFACE);
            let verdict = check_raw_request(&copy[..start + end]);
            self.activity.set_framing(verdict);
            self.done();
        } else if copy.len() > self.max {
            // hyper refuses such a head itself (431), and reports it.
            self.done();
        }
    }

    fn done(&mut self) {
        self.copy = None;
        self.line_seen = false;
        self.activity.set_head_started(false);
    }

    /// The last request ended: the next bytes start a new head.
    fn rearm(&mut self) {
        self.done();
        self.copy = Some(Vec::new());
    }
}

/// Whether `copy`, whose first line is complete, opens with a request line
/// (`METHOD target HTTP/1.x`): only then is a head under way. The rest of
/// a request body that hyper reads after an early answer also arrives
/// while no request is in flight, and must not pass for a slow head.
fn is_request_line(copy: &[u8]) -> bool {
    let line = copy.split(|&b| b == b'\n').next().unwrap_or(copy);
    opens_with_a_method(line) && line.windows(6).any(|w| w == b" HTTP/")
}

/// Whether `copy` starts as a request line would, while that line is still
/// arriving: a method's capitals, then a space or nothing yet. Only the
/// first bytes are looked at, so a trickled line costs no rescans.
fn opens_with_a_method(copy: &[u8]) -> bool {
    const LONGEST: usize = 20;
    let method = copy
        .iter()
        .take(LONGEST + 1)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    (1..=LONGEST).contains(&method) && copy.get(method).is_none_or(|&b| b == b' ')
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadTap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let busy = self.activity.busy();
        if self.was_busy && !busy && !self.http2 {
            self.rearm();
        }
        self.was_busy = busy;
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && self.copy.is_some()
        {
            self.tap(&buf.filled()[before..]);
        }
        polled
    }
}

forward_async_write!(HeadTap);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A tap over an in-memory connection: (the client's end, the tap, its
    /// connection's activity).
    fn tapped() -> (DuplexStream, HeadTap<DuplexStream>, Activity) {
        let (client, server) = tokio::io::duplex(4096);
        let activity = Activity::default();
        (
            client,
            HeadTap::new(server, activity.clone(), 4096),
            activity,
        )
    }

    async fn feed(client: &mut DuplexStream, tap: &mut HeadTap<DuplexStream>, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
        let mut buf = vec![0; bytes.len()];
        tap.read_exact(&mut buf).await.unwrap();
    }

    /// The rest of a request body, read after an early answer, is no head.
    #[tokio::test]
    async fn body_bytes_between_requests_are_no_head() {
        let (mut client, mut tap, activity) = tapped();
        feed(
            &mut client,
            &mut tap,
            b"POST / HTTP/1.1\r\nContent-Length: 22\r\n\r\n",
        )
        .await;
        let answered_early = activity.begin();
        feed(&mut client, &mut tap, b"field=1&").await;
        drop(answered_early);
        feed(&mut client, &mut tap, b"other=2\nmore\n").await;
        assert!(!activity.head_started());
    }

    #[tokio::test]
    async fn a_partial_http1_head_counts_as_started_until_it_ends() {
        let (mut client, mut tap, activity) = tapped();
        feed(&mut client, &mut tap, b"GE").await;
        assert!(activity.head_started(), "a method arriving");
        feed(&mut client, &mut tap, b"T / HTTP/1.1\r\nHost: x\r\n").await;
        assert!(activity.head_started());
        feed(&mut client, &mut tap, b"\r\n").await;
        assert!(!activity.head_started());
    }

    /// HTTP/2 frames between requests are never taken for a head.
    #[tokio::test]
    async fn nothing_after_the_http2_preface_counts_as_a_head() {
        let (mut client, mut tap, activity) = tapped();
        feed(&mut client, &mut tap, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let stream = activity.begin();
        // An empty SETTINGS frame while a stream is open.
        feed(&mut client, &mut tap, b"\0\0\0\x04\0\0\0\0\0").await;
        drop(stream);
        // A PING between requests whose payload reads like a request line.
        feed(&mut client, &mut tap, b"\0\0\x08\x06\0\0\0\0\0").await;
        feed(&mut client, &mut tap, b"G HTTP/\n").await;
        assert!(!activity.head_started());
    }
}
