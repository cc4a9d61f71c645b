//! Bodies that pass through the proxy: streamed frame by frame, never
//! buffered whole, with our headers and `Set-Cookie` removed from trailers
//! (a trailer is just another place a client or upstream could smuggle them).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::SET_COOKIE;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::protocol::HeaderPrefix;

/// A streamed body whose trailers are filtered.
pub struct Filtered<B> {
    inner: B,
    prefix: Arc<HeaderPrefix>,
}

impl<B> Filtered<B> {
    pub fn new(inner: B, prefix: Arc<HeaderPrefix>) -> Self {
        Filtered { inner, prefix }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Filtered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(mut frame))) = polled {
            if let Some(trailers) = frame.trailers_mut() {
                self.prefix.strip(trailers);
                trailers.remove(SET_COOKIE);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the proxy sends upstream.
pub type RequestBody = Filtered<Incoming>;

/// What the proxy answers: the upstream's body, or a short one of its own.
pub type ResponseBody = Either<Filtered<Incoming>, Full<Bytes>>;

/// A short body of the proxy's own.
pub fn full(text: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(text.into()))
}
