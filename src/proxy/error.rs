//! A failed request, classified once by who failed: the client (4xx), the
//! upstream (502/504) or the store (503). The browser gets a short generic
//! plain-text body; the details go to the log.

use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::body::{BodyError, BoxError, ResponseBody, body_error, full};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("request framing refused: {0}")]
    Framing(#[source] super::framing::Refused),
    #[error("upstream response framing refused: {0}")]
    UpstreamFraming(#[source] super::framing::Refused),
    #[error("request body larger than server.max_body_bytes = {0}")]
    BodyTooLarge(u64),
    #[error("request body stalled: no data for {0:?} (server.body_read_timeout)")]
    BodyTimeout(std::time::Duration),
    #[error("request body malformed or cut: {0}")]
    BodyBroken(String),
    #[error("upstream unreachable: {0}")]
    Upstream(#[source] BoxError),
    #[error("upstream sent a malformed response: {0}")]
    UpstreamMalformed(#[source] BoxError),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// Classifies a failed upstream exchange: the client's body may be what
    /// failed it (408, 413), or a connect that timed out (504).
    pub fn from_client(
        e: hyper_util::client::legacy::Error,
        connect_timeout: std::time::Duration,
    ) -> Error {
        if e.is_connect() {
            return Error::from_connect(e.into(), connect_timeout);
        }
        Error::from_exchange(e.into())
    }

    /// Classifies a failed connect: a timeout is a 504, anything else a 502.
    pub fn from_connect(e: BoxError, connect_timeout: std::time::Duration) -> Error {
        match timed_out(&*e) {
            true => Error::UpstreamTimeout(connect_timeout),
            false => Error::Upstream(e),
        }
    }

    /// Classifies a failed exchange with a connected upstream.
    pub fn from_exchange(e: BoxError) -> Error {
        match body_error(&*e) {
            Some(BodyError::Stalled(d)) => Error::BodyTimeout(d),
            Some(BodyError::TooLarge(max)) => Error::BodyTooLarge(max),
            Some(BodyError::Broken(why)) => Error::BodyBroken(why),
            None if unparsable(&*e) => Error::UpstreamMalformed(e),
            None => Error::Upstream(e),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::Framing(_) | Error::BodyBroken(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Upstream(_) | Error::UpstreamMalformed(_) | Error::UpstreamFraming(_) => {
                StatusCode::BAD_GATEWAY
            }
            Error::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response the browser sees.
    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let text = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let mut rsp = Response::new(full(text));
        *rsp.status_mut() = status;
        let headers = rsp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status.is_client_error() {
            // The request may be half read: the connection cannot be reused.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        rsp
    }
}

/// Whether hyper could not parse the upstream's response (a reachable
/// upstream that spoke broken HTTP, not one that could not be reached).
fn unparsable(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |err| err.source())
        .filter_map(|err| err.downcast_ref::<hyper::Error>())
        .any(|h| h.is_parse() || h.is_parse_status() || h.is_parse_too_large())
}

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || err.to_string().contains("timed out")
        {
            return true;
        }
        current = err.source();
    }
    false
}
