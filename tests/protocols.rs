//! Beyond plain HTTP/1.1: WebSocket upgrades, HTTP/2 (h2c prior knowledge
//! and TLS with ALPN), and skip paths matched on the normalised path.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::client::{Conn, request};
use support::{COOKIE, Proxy, Response, Upstream, config};

#[test]
fn websocket_upgrades_pass_through_both_ways_with_the_session_injected() {
    let up = support::upstream::raw(|r| {
        if r.header("upgrade") == Some("websocket") {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\nX-Session-Set: ws=true\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Session-Id: spoof\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("sec-websocket-accept"),
        "{head}"
    );
    assert!(!head.contains("x-session-"), "{head}");
    assert!(
        head.contains(&format!("set-cookie: {COOKIE}=")),
        "the session travels on the 101: {head}"
    );
    let seen = up.last();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert!(seen.is_new() && seen.session_id() != "spoof");
    // Bytes flow both ways through the tunnel.
    for message in [&b"hello"[..], b"second frame", &[0u8, 255, 10, 13]] {
        stream.write_all(message).unwrap();
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).unwrap();
        assert_eq!(echo, message);
    }
}

#[test]
fn an_h2c_upgrade_is_never_tunnelled() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let reply = Conn::open(proxy.addr).exchange(
        "GET",
        &request(
            "GET",
            "/",
            &[
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ],
            b"",
        ),
    );
    assert_eq!(reply.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
    assert!(seen.header("x-session-id").is_some());
}

/// GET over an HTTP/2 connection on `io`, with one `cookie` field line per
/// entry of `cookies` (as browsers send them over HTTP/2); returns (status,
/// headers, body).
async fn h2_get<T>(io: T, path: &str, cookies: &[&str]) -> (u16, http::HeaderMap, String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://localhost{path}"));
    for line in cookies {
        req = req.header("cookie", *line);
    }
    let rsp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("h2 response");
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn cookie_value(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.strip_prefix(&format!("{COOKIE}="))
                .map(|v| v.split(';').next().unwrap().to_owned())
        })
}

fn setter() -> Upstream {
    Upstream::start(|r| {
        if r.target == "/set" {
            Response::ok().header("X-Session-Set", "via=\"h2\"")
        } else {
            Response::ok()
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_has_the_same_session_semantics() {
    let up = setter();
    let proxy = Proxy::start(&config(up.addr, ""));
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (status, headers, _) = h2_get(tcp, "/set", &[]).await;
    assert_eq!(status, 200);
    let cookie = cookie_value(&headers).expect("a session cookie over h2");
    assert!(
        headers
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().contains("Cookie"))
    );
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let ours = format!("{COOKIE}={cookie}");
    let (status, _, _) = h2_get(tcp, "/", &["a=1", &ours, "b=2"]).await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.session(), json!({"via": "h2"}));
    assert_eq!(
        seen.all("cookie"),
        ["a=1; b=2"],
        "HTTP/2 cookie lines reach the HTTP/1.1 upstream as one (RFC 9113 8.2.3)"
    );
    assert_eq!(
        seen.header("host"),
        Some("localhost"),
        "the :authority becomes Host upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_claiming_a_length_reaches_http2_clients_cleanly() {
    // The length of a 204 is dropped: HTTP/2 resets a stream whose
    // content-length its (absent) body does not match, while the session
    // change was already applied.
    let up = support::upstream::raw(|r| match r.target.as_str() {
        "/nothing" => {
            b"HTTP/1.1 204 No Content\r\nX-Session-Set: b=2\r\nContent-Length: 3\r\n\r\nabc"
                .to_vec()
        }
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (status, headers, body) = h2_get(tcp, "/nothing", &[]).await;
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(headers.get("content-length"), None);
    assert!(cookie_value(&headers).is_some(), "the session was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_length_over_http2_is_refused() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post("http://localhost/")
        .header("content-length", "3")
        .header("content-length", "3")
        .body(http_body_util::Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let rsp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(rsp.status(), 400);
    assert_eq!(up.count(), 0, "nothing reached the upstream");
}

/// A proxy with TLS on its port, under a fresh self-signed certificate for
/// `localhost`; the directory holds the PEM files.
fn tls_proxy(
    up: &Upstream,
) -> (
    Proxy,
    rcgen::CertifiedKey<rcgen::KeyPair>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let extra = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[cookie]\nsecure = true\n",
        cert_path.display(),
        key_path.display()
    );
    (Proxy::start(&config(up.addr, &extra)), certified, dir)
}

/// As nginx does, plain HTTP on the TLS port gets a 400 that says why, a
/// warning and a count; a client speaking neither gets a logged handshake
/// failure; the port keeps serving.
#[test]
fn plain_http_on_the_tls_port_gets_a_400_saying_so() {
    use std::io::{Read, Write};
    let up = Upstream::ok();
    let (proxy, _certified, _dir) = tls_proxy(&up);
    for _ in 0..2 {
        let reply = Conn::open(proxy.addr).exchange("GET", &request("GET", "/", &[], b""));
        assert_eq!(reply.status, 400);
        assert!(reply.text().contains("HTTPS"), "{}", reply.text());
    }
    proxy.wait_for_log(&["WARN", "plain HTTP sent to the TLS port", "peer=127.0.0.1:"]);
    assert_eq!(
        support::admin::metric(&proxy, "sessiongate_requests_total{class=\"4xx\"}"),
        2.0
    );
    let mut junk = std::net::TcpStream::connect(proxy.addr).unwrap();
    junk.write_all(&[0x80, 0x01, 0x02, 0x03, 0x04]).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = junk.read_to_end(&mut Vec::new());
    proxy.wait_for_log(&["INFO", "TLS handshake failed", "peer=127.0.0.1:"]);
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_http2_by_alpn_and_says_https_upstream() {
    let up = setter();
    let (proxy, certified, _dir) = tls_proxy(&up);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let connect = |alpn: &'static [u8]| {
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let addr = proxy.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .expect("TLS handshake")
        }
    };
    let tls = connect(b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, headers, _) = h2_get(tls, "/set", &[]).await;
    assert_eq!(status, 200);
    let cookie = cookie_value(&headers).unwrap();
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));

    let tls = connect(b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "localhost")
        .header("cookie", format!("{COOKIE}={cookie}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    assert_eq!(up.last().session(), json!({"via": "h2"}));
}

#[test]
fn skip_paths_get_no_session_work_but_still_lose_spoofed_headers() {
    let up = Upstream::start(|_| {
        Response::ok()
            .header("X-Session-Set", "k=1")
            .header("Set-Cookie", &format!("{COOKIE}=forged"))
    });
    let proxy = Proxy::start(&config(up.addr, "[session]\nskip_paths = [\"/static/\"]\n"));
    let reply = Conn::open(proxy.addr).exchange(
        "GET",
        &request("GET", "/static/app.js", &[("X-Session-Id", "spoof")], b""),
    );
    assert_eq!(reply.status, 200);
    assert!(reply.session_cookie().is_none(), "{:?}", reply.headers);
    assert!(reply.all("vary").is_empty());
    assert!(
        reply
            .headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-session"))
    );
    let seen = up.last();
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-session")),
        "{:?}",
        seen.headers
    );
    assert_eq!(
        support::admin::sessions_held(&proxy),
        0,
        "the static response's Set was not applied"
    );
}

#[test]
fn skip_paths_match_the_normalised_path_that_is_forwarded() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, "[session]\nskip_paths = [\"/static/\"]\n"));
    for (sneaky, forwarded) in [
        ("/static/../admin", "/admin"),
        ("/static/%2e%2e/admin", "/admin"),
        ("/static/./../admin?x=1", "/admin?x=1"),
        ("/static/%2E%2E/admin?", "/admin?"),
    ] {
        let reply = Conn::open(proxy.addr).exchange("GET", &request("GET", sneaky, &[], b""));
        assert_eq!(reply.status, 200, "{sneaky}");
        let seen = up.last();
        assert_eq!(seen.target, forwarded, "{sneaky}");
        assert!(
            seen.header("x-session-id").is_some(),
            "{sneaky} skipped the session"
        );
    }
    // A normal path goes as it came, query and all.
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/static/a.js?v=2&x", &[], b""));
    let seen = up.last();
    assert_eq!(seen.target, "/static/a.js?v=2&x");
    assert!(seen.header("x-session-id").is_none(), "a skip path skips");
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/static/..%2Fadmin", &[], b""));
    assert!(
        up.last().header("x-session-id").is_some(),
        "an encoded slash never skips"
    );
    let reply = Conn::open(proxy.addr).exchange("GET", &request("GET", "/bad%zz", &[], b""));
    assert_eq!(reply.status, 400);
}

/// A new connection's first head is taken in one read, whole. hyper-util's
/// HTTP version sniff reads 24 bytes; answered from one full-size read
/// (server/read_ahead.rs), they no longer cost every connection a read of
/// their own. Watched with strace: the first head must appear whole in one
/// `recvfrom`.
#[test]
fn a_new_connections_first_head_is_taken_in_one_read() {
    let up = Upstream::start(|_| Response::ok());
    let proxy = Proxy::start(&config(up.addr, ""));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("reads.strace");
    let log_path = log.to_str().unwrap();
    let mut strace = support::attach_strace(
        proxy.pid(),
        &["-s", "256", "-e", "trace=read,recvfrom", "-o", log_path],
    );
    let head =
        |i: usize| format!("GET /first-read-{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for i in 0..3 {
        let mut tcp = std::net::TcpStream::connect(proxy.addr).unwrap();
        tcp.write_all(head(i).as_bytes()).unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    // SIGTERM, so that strace writes out what it has.
    support::send_signal(strace.id(), "TERM");
    strace.wait().unwrap();
    let trace = std::fs::read_to_string(&log).unwrap();
    for i in 0..3 {
        let whole = head(i).replace("\r\n", "\\r\\n");
        assert!(
            trace.lines().any(|l| l.contains(&format!("\"{whole}\""))),
            "head {i} was not read whole in one read:\n{trace}"
        );
    }
}
