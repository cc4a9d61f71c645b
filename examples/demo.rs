//! The bundled demo: a tiny app with no session code of its own, behind
//! sessiongate. `cargo run --example demo`, then open http://127.0.0.1:8080.
//!
//! The app only reads `X-Session-Data` and answers with `X-Session-*`
//! headers: it counts visits (Set), logs in (Rotate + Set) and out (Flush).
//! Set `DEMO_CONFIG` to use another config file, `DEMO_APP` for the app's
//! address (it must match the config's `upstream`).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config_path = std::env::var("DEMO_CONFIG")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml").to_owned());
    let config = sessiongate::Config::load(config_path.as_ref())?;
    let app: SocketAddr = std::env::var("DEMO_APP")
        .unwrap_or_else(|_| "127.0.0.1:8081".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(app).await?;
    tokio::spawn(serve_app(listener));
    println!(
        "demo: open http://{} in a browser (app on {app}); Ctrl-C stops",
        config.listen
    );
    sessiongate::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

async fn serve_app(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(app))
                .await;
        });
    }
}

/// The whole app: three routes, no session code.
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let session: Map<String, Value> = req
        .headers()
        .get("x-session-data")
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
        .unwrap_or_default();
    let id = req
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let new = req.headers().contains_key("x-session-new");
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(match (method.as_str(), path.as_str()) {
        ("GET", "/") => page(&session, &id, new),
        ("POST", "/login") => {
            let user = form_value(&body, "user").unwrap_or_default();
            let user = if user.trim().is_empty() {
                "guest".to_owned()
            } else {
                user.trim().to_owned()
            };
            redirect()
                .header("X-Session-Rotate", "1")
                .header("X-Session-Set", format!("user={}", Value::String(user)))
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        ("POST", "/logout") => redirect()
            .header("X-Session-Flush", "1")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n")))
            .unwrap(),
    })
}

fn redirect() -> hyper::http::response::Builder {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("Location", "/")
}

fn page(session: &Map<String, Value>, id: &str, new: bool) -> Response<Full<Bytes>> {
    let visits = session.get("visits").and_then(Value::as_u64).unwrap_or(0) + 1;
    let user = session.get("user").and_then(Value::as_str);
    let account = match user {
        Some(user) => format!(
            "<p id=\"user\">Logged in as <b>{}</b>.</p><form method=\"post\" action=\"/logout\"><button id=\"logout\">Log out</button></form>",
            escape(user)
        ),
        None => "<p id=\"user\">Not logged in.</p><form method=\"post\" action=\"/login\"><input name=\"user\" id=\"name\" placeholder=\"your name\"> <button id=\"login\">Log in</button></form>".to_owned(),
    };
    let data = escape(&serde_json::to_string_pretty(session).unwrap_or_default());
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sessiongate demo</title></head><body>\
         <h1>sessiongate demo</h1>\
         <p>This app has no session code: sessiongate hands it the session in headers.</p>\
         <p id=\"visits\">Visits in this session: <b>{visits}</b></p>{account}\
         <h2>The session as the app sees it</h2><p>Id (first 8 characters): <code>{}</code>{}</p>\
         <pre id=\"data\">{data}</pre></body></html>",
        escape(&id.chars().take(8).collect::<String>()),
        if new { " (new)" } else { "" },
    );
    Response::builder()
        .header("Content-Type", "text/html; charset=utf-8")
        .header("X-Session-Set", format!("visits={visits}"))
        .body(Full::new(Bytes::from(html)))
        .unwrap()
}

fn form_value(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(&v.replace('+', " ")))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
