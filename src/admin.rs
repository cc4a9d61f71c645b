//! The admin listener, on its own address and never on the public port:
//! `GET /healthz` (the process is alive), `GET /readyz` (the store answers;
//! 503 otherwise) and `GET /metrics` (Prometheus text format).
//!
//! With `admin.token` set, the session admin API too (bearer token):
//! - `GET /sessions?user=ID`: the user's sessions (handles and metadata);
//! - `DELETE /sessions?user=ID`: end all of them;
//! - `DELETE /sessions/HANDLE?user=ID`: end one;
//! - `GET /sessions/count`: live sessions held (memory and disk stores).
//!
//! Session ids never appear: a session is named by its handle, a one-way
//! hash of its id.

pub mod client;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::proxy::Proxy;
use crate::session::UserId;
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
    if req.uri().path() == "/sessions" || req.uri().path().starts_with("/sessions/") {
        return sessions(&req, proxy).await;
    }
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

/// The session admin API.
async fn sessions<S: Store>(req: &Request<Incoming>, proxy: &Proxy<S>) -> Response<Full<Bytes>> {
    let Some(token) = proxy.settings().admin_token.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "the session admin API is off (set admin.token)\n",
        );
    };
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let offered = req
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"Bearer "))
        .map_or(&b""[..], |(_, token)| token);
    if !token.matches(offered) {
        let mut rsp = text(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required\n",
        );
        rsp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return rsp;
    }
    let path = req.uri().path();
    let user = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "user")
        .and_then(|(_, v)| UserId::parse(&v));
    let store = proxy.store();
    let result = match (req.method().clone(), path, user) {
        (Method::GET, "/sessions/count", _) => {
            store.count().await.map(|n| json!({ "sessions": n }))
        }
        (Method::GET, "/sessions", Some(user)) => store
            .sessions_of(&user)
            .await
            .map(|list| json!({ "user": user.as_str(), "sessions": list })),
        (Method::DELETE, "/sessions", Some(user)) => store
            .revoke_user(&user, None)
            .await
            .map(|n| json!({ "revoked": n })),
        (Method::DELETE, handle, Some(user)) => match store
            .revoke_handle(&user, &handle["/sessions/".len()..])
            .await
        {
            Ok(false) => return text(StatusCode::NOT_FOUND, "no such session for this user\n"),
            other => other.map(|_| json!({ "revoked": 1 })),
        },
        (Method::GET | Method::DELETE, _, None) => {
            return text(
                StatusCode::BAD_REQUEST,
                "a `user` query parameter is required\n",
            );
        }
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    };
    match result {
        Ok(body) => {
            if req.method() == Method::DELETE {
                let revoked = body["revoked"].as_u64().unwrap_or(0);
                proxy.metrics().session_event("revoked", revoked);
                info!(path, revoked, "sessions revoked through the admin API");
            }
            let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
            rsp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            rsp
        }
        Err(e) => {
            warn!(error = %e, "session admin API: store failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    rsp
}
