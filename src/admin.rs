//! The admin listener, on its own address and never on the public port:
//! `GET /healthz` (the process is alive), `GET /readyz` (the store answers;
//! 503 otherwise) and `GET /metrics` (Prometheus text format).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::proxy::Proxy;
use crate::store::Store;

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoints until the task is dropped.
pub async fn serve<S: Store>(listener: TcpListener, proxy: Arc<Proxy<S>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(route(req, &proxy).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn route<S: Store>(req: Request<Incoming>, proxy: &Proxy<S>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match proxy.store().check().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(e) => {
                warn!(error = %e, "not ready");
                text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
        },
        "/metrics" => {
            let metrics = proxy.metrics();
            match proxy.store().count().await {
                Ok(Some(n)) => {
                    metrics
                        .sessions_held
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Ok(None) => {}
                Err(e) => debug!(error = %e, "session count unavailable for metrics"),
            }
            let mut rsp = Response::new(Full::new(Bytes::from(metrics.encode())));
            rsp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS));
            rsp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    rsp
}
