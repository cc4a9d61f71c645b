//! A connection's first read, made as large as hyper's own.
//!
//! hyper-util's server tells HTTP/2 with prior knowledge from HTTP/1 by
//! reading the first 24 bytes alone (the length of HTTP/2's preface). On
//! its own that costs every new connection one more `recvfrom`, and the
//! head tap below saw its first head in two pieces, which it must copy
//! before it can check them. This reader answers a first read smaller than
//! [`FIRST_READ`] from one read of that size, and the reads after it from
//! what is left, then gets out of the way. The buffer lives only until it
//! is drained, normally by hyper's next read of the same request head.
//!
//! hyper-util offers no way to hand its sniff bytes already read, and its
//! graceful shutdown covers only its own connection types, so wrapping the
//! stream is the way to keep both.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// hyper's first read buffer of an HTTP/1 connection.
pub const FIRST_READ: usize = 8 * 1024;

pub struct ReadAhead<T> {
    inner: T,
    state: State,
}

enum State {
    /// Nothing read yet.
    First,
    /// Read ahead, from `at` on not yet handed out.
    Ahead { bytes: Vec<u8>, at: usize },
    /// Every read goes straight to the stream.
    Through,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        ReadAhead {
            inner,
            state: State::First,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.state {
            State::Through => Pin::new(&mut this.inner).poll_read(cx, buf),
            State::First if buf.remaining() >= FIRST_READ => {
                this.state = State::Through;
                Pin::new(&mut this.inner).poll_read(cx, buf)
            }
            State::First => {
                // Allocated for each attempt and dropped if nothing has
                // arrived: a connection that sends nothing holds no buffer,
                // as before. tokio's `read_buf` reads into the spare
                // capacity without zeroing it (this crate forbids the unsafe
                // code that takes); polled once, it reads nothing until ready.
                let mut bytes = Vec::with_capacity(FIRST_READ);
                let read = std::pin::pin!(this.inner.read_buf(&mut bytes));
                std::task::ready!(read.poll(cx))?;
                this.state = State::Ahead { bytes, at: 0 };
                this.hand_out(buf);
                Poll::Ready(Ok(()))
            }
            State::Ahead { .. } => {
                this.hand_out(buf);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<T> ReadAhead<T> {
    /// Copies what fits of the bytes read ahead; once they are all handed
    /// out, reads go to the stream. An empty first read (the peer closed)
    /// hands out nothing, which reads as end of stream.
    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) {
        let State::Ahead { bytes, at } = &mut self.state else {
            return;
        };
        let n = buf.remaining().min(bytes.len() - *at);
        buf.put_slice(&bytes[*at..*at + n]);
        *at += n;
        if *at == bytes.len() {
            self.state = State::Through;
        }
    }
}

forward_async_write!(ReadAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The first small read takes all that has arrived in one read; the
    /// next reads get the rest in order, then the stream's new bytes.
    #[tokio::test]
    async fn a_small_first_read_fills_the_buffer_and_the_rest_follows() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let head = b"GET /a HTTP/1.1\r\nHost: example\r\nCookie: a=b\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut reader = ReadAhead::new(server);
        let mut first = [0u8; 24];
        let n = reader.read(&mut first).await.unwrap();
        assert_eq!(&first[..n], &head[..24]);
        assert!(
            matches!(&reader.state, State::Ahead { bytes, .. } if bytes.len() == head.len()),
            "one read took the whole head"
        );
        let mut rest = vec![0u8; 4096];
        let n = reader.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], &head[24..]);
        assert!(matches!(reader.state, State::Through));
        client.write_all(b"next").await.unwrap();
        let n = reader.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"next");
    }

    /// Reads smaller than what is left are answered in pieces, in order.
    #[tokio::test]
    async fn bytes_read_ahead_are_handed_out_in_order_in_small_pieces() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..=255u8).cycle().take(FIRST_READ + 500).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut reader = ReadAhead::new(server);
        let mut got = Vec::new();
        let mut piece = [0u8; 7];
        loop {
            let n = reader.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, sent);
    }

    /// A peer that closes before sending anything reads as end of stream.
    #[tokio::test]
    async fn a_peer_closing_at_once_reads_as_end_of_stream() {
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let mut reader = ReadAhead::new(server);
        let mut first = [0u8; 24];
        assert_eq!(reader.read(&mut first).await.unwrap(), 0);
    }

    /// A first read as large as the buffer goes straight to the stream.
    #[tokio::test]
    async fn a_large_first_read_is_not_copied() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"hello").await.unwrap();
        let mut reader = ReadAhead::new(server);
        let mut big = vec![0u8; FIRST_READ];
        let n = reader.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"hello");
        assert!(matches!(reader.state, State::Through));
    }
}
