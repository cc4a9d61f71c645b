//! Bodies that pass through the proxy: streamed frame by frame, never
//! buffered whole, with our headers and `Set-Cookie` removed from trailers
//! (a trailer is just another place a client or upstream could smuggle
//! them), a deadline for each next frame and an optional size cap.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::SET_COOKIE;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::warn;

use super::Label;
use crate::protocol::HeaderPrefix;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body stream was cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("no body data for {0:?}")]
    Stalled(Duration),
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// The sender's own stream broke (bad chunked framing, a cut connection).
    #[error("body stream broken: {0}")]
    Broken(String),
}

/// What a body may do: wait at most `idle` for each frame, carry at most `max` bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub idle: Option<Duration>,
    pub max: Option<u64>,
}

/// A streamed body whose trailers are filtered and whose pace and size are bounded.
pub struct Filtered<B> {
    inner: B,
    prefix: Arc<HeaderPrefix>,
    limits: Limits,
    deadline: Option<Pin<Box<Sleep>>>,
    seen: u64,
    /// Set on an upstream response's body: its failure is logged here,
    /// where the request is known (hyper only ends the connection).
    /// Boxed: a response body is moved through several layers, and most
    /// are never reported.
    response_of: Option<Box<Label>>,
}

impl<B> Filtered<B> {
    pub fn new(inner: B, prefix: Arc<HeaderPrefix>, limits: Limits) -> Self {
        Filtered {
            inner,
            prefix,
            limits,
            // Armed on the first wait: most bodies are complete (or empty)
            // when first polled, and need no timer at all.
            deadline: None,
            seen: 0,
            response_of: None,
        }
    }

    /// Marks this as the upstream's response body to `label`'s request.
    pub(super) fn reporting_as(mut self, label: Label) -> Self {
        self.response_of = Some(Box::new(label));
        self
    }

    /// Logs a response body's failure: the browser gets a cut response.
    fn report(&self, error: &BodyError) {
        if let Some(label) = &self.response_of {
            warn!(method = %label.method, path = %label.uri.path(), %error,
                "upstream response body failed; the browser's response is cut short");
        }
    }
}

impl<B> Body for Filtered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if let Some(idle) = this.limits.idle {
                    let deadline = this
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if deadline.as_mut().poll(cx).is_ready() {
                        let stalled = BodyError::Stalled(idle);
                        this.report(&stalled);
                        return Poll::Ready(Some(Err(stalled.into())));
                    }
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                let broken = BodyError::Broken(e.to_string());
                this.report(&broken);
                return Poll::Ready(Some(Err(broken.into())));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let (Some(deadline), Some(idle)) = (this.deadline.as_mut(), this.limits.idle) {
            deadline.as_mut().reset(Instant::now() + idle);
        }
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if let Some(max) = this.limits.max.filter(|&max| this.seen > max) {
                return Poll::Ready(Some(Err(BodyError::TooLarge(max).into())));
            }
        }
        if let Some(trailers) = frame.trailers_mut() {
            this.prefix.strip(trailers);
            trailers.remove(SET_COOKIE);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `BodyError` somewhere in an error's chain, if any.
pub fn body_error(e: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<BodyError>() {
            return Some(found.clone());
        }
        current = err.source();
    }
    None
}

/// What the proxy sends upstream.
pub type RequestBody = Filtered<Incoming>;

/// What the proxy answers: the upstream's body, or a short one of its own.
pub type ResponseBody = Either<Filtered<Incoming>, Full<Bytes>>;

/// A short body of the proxy's own.
pub fn full(text: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(text.into()))
}
