//! A failed request, classified once by who failed: the client (4xx), the
//! upstream (502/504) or the store (503). The browser gets a short generic
//! plain-text body; the details go to the log.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::body::{ResponseBody, full};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("upstream unreachable: {0}")]
    Upstream(#[source] hyper_util::client::legacy::Error),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
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
        rsp
    }
}
