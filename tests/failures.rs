//! PROTOCOL.md section 4: failures get clear answers and the proxy keeps serving.

mod support;

use std::time::{Duration, Instant};

use support::client::{Conn, request};
use support::{Proxy, Response, Upstream, config, config_with_upstream};

/// An address where nothing listens.
fn dead_address() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn assert_plain_short(reply: &support::Reply) {
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        reply.headers
    );
    assert!(reply.body.len() < 100, "short body: {}", reply.text());
}

#[test]
fn an_unreachable_upstream_is_a_502_with_a_short_plain_body_and_the_proxy_keeps_serving() {
    let proxy = Proxy::start(&config(dead_address(), ""));
    for _ in 0..3 {
        let reply = proxy.browser().get("/");
        assert_eq!(reply.status, 502);
        assert_plain_short(&reply);
    }
    proxy.wait_for_log(&["WARN", "status=502", "upstream unreachable"]);
}

#[test]
fn a_slow_upstream_is_a_504_after_the_configured_timeout() {
    let up = Upstream::start(|r| {
        if r.target == "/slow" {
            Response::ok().delay(Duration::from_secs(5))
        } else {
            Response::ok()
        }
    });
    let proxy = Proxy::start(&config_with_upstream(up.addr, "timeout = \"500ms\"", ""));
    let started = Instant::now();
    let reply = proxy.browser().get("/slow");
    assert_eq!(reply.status, 504);
    assert_plain_short(&reply);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.browser().get("/fast").status,
        200,
        "the proxy keeps serving"
    );
}

/// One browser connection's exchanges share one lazily moved timer
/// (`proxy::paired`): a firing meant for an earlier request's deadline
/// must neither cut the next request short nor let it run long.
#[test]
fn each_request_on_a_kept_alive_connection_gets_the_whole_upstream_timeout() {
    let up = Upstream::start(|r| {
        let ms = r.target.strip_prefix("/wait/").and_then(|n| n.parse().ok());
        Response::ok().delay(Duration::from_millis(ms.unwrap_or(0)))
    });
    let proxy = Proxy::start(&config_with_upstream(up.addr, "timeout = \"1s\"", ""));
    let mut conn = Conn::open(proxy.addr);
    assert_eq!(conn.get("/wait/0").status, 200);
    std::thread::sleep(Duration::from_millis(600));
    // Still waiting when the first request's deadline passes.
    assert_eq!(conn.get("/wait/700").status, 200);
    let started = Instant::now();
    assert_eq!(conn.get("/wait/3000").status, 504);
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "the 504 came after {took:?}, not about 1s"
    );
    assert_eq!(
        conn.get("/wait/0").status,
        200,
        "the connection keeps serving"
    );
}

#[test]
fn a_malformed_request_is_a_400_and_others_are_still_served() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"[..],
        b"NOT A REQUEST\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ] {
        let mut conn = Conn::open(proxy.addr);
        conn.send(bad);
        let reply = conn.read("GET").expect("an answer");
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(up.count(), 0, "nothing malformed reached the upstream");
    assert_eq!(proxy.browser().get("/").status, 200);
    // hyper answers these heads before the proxy sees them; they are
    // still counted and logged.
    assert_eq!(
        support::admin::metric(&proxy, "sessiongate_requests_total{class=\"4xx\"}"),
        3.0
    );
    proxy.wait_for_log(&[
        "request head refused before it reached the proxy",
        "invalid",
    ]);
}

#[test]
fn an_oversized_request_head_is_a_431() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let big = "a".repeat(100 * 1024);
    let mut conn = Conn::open(proxy.addr);
    conn.send(&request("GET", "/", &[("X-Big", &big)], b""));
    let reply = conn.read("GET").expect("an answer");
    assert_eq!(reply.status, 431);
    assert_eq!(up.count(), 0);
    assert_eq!(proxy.browser().get("/").status, 200);
    assert_eq!(
        support::admin::metric(&proxy, "sessiongate_requests_total{class=\"4xx\"}"),
        1.0
    );
    proxy.wait_for_log(&[
        "request head refused before it reached the proxy",
        "too large",
    ]);
}

#[test]
fn connect_requests_are_refused() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut conn = Conn::open(proxy.addr);
    let reply = conn.exchange(
        "CONNECT",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert_eq!(reply.status, 405);
    assert_eq!(up.count(), 0);
}

#[test]
fn a_cut_or_stalled_upstream_body_is_logged_with_its_request() {
    use std::io::{Read, Write};
    // Promises 100 bytes, sends 4; then closes (/cut) or goes quiet (/stall).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let n = stream.read(&mut head).unwrap_or(0);
                let stall = String::from_utf8_lossy(&head[..n]).starts_with("GET /stall");
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabcd");
                if stall {
                    std::thread::sleep(Duration::from_secs(5));
                }
            });
        }
    });
    let proxy = Proxy::start_with_env(&config(addr, ""), &[("SESSIONGATE_UPSTREAM_TIMEOUT", "1")]);
    for path in ["/cut", "/stall"] {
        let mut conn = Conn::open(proxy.addr);
        conn.send(&request("GET", path, &[], b""));
        assert!(
            conn.read("GET").is_err(),
            "{path}: the browser's response is cut short"
        );
        proxy.wait_for_log(&[
            "WARN",
            &format!("path={path}"),
            "upstream response body failed",
        ]);
    }
    assert_eq!(
        support::admin::get(&proxy, "/healthz").status,
        200,
        "the proxy keeps serving"
    );
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 section 5.1).
fn hpack_length(mut n: usize) -> Vec<u8> {
    if n < 127 {
        return vec![n as u8];
    }
    let mut out = vec![127];
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
    out
}

/// A header block spread over more CONTINUATION frames than the HTTP/2
/// layer's flood guard allows ends the whole connection with a GOAWAY: the
/// proxy logs it with the peer and keeps serving.
#[test]
fn an_http2_continuation_flood_is_logged_and_the_proxy_keeps_serving() {
    use std::io::{Read, Write};
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    // GET http://x/ (static-table entries), then `x-big` of 1 MiB.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x01, b'x', 0x00, 0x05];
    block.extend(b"x-big");
    block.extend(hpack_length(1 << 20));
    block.extend(vec![b'a'; 1 << 20]);
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(h2_frame(0x4, 0, 0, &[]));
    let mut chunks = block.chunks(16_384).peekable();
    wire.extend(h2_frame(0x1, 0x1, 1, chunks.next().unwrap()));
    while let Some(chunk) = chunks.next() {
        let end_headers = if chunks.peek().is_none() { 0x4 } else { 0 };
        wire.extend(h2_frame(0x9, end_headers, 1, chunk));
    }
    let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The proxy may close while this is still being written.
    let _ = stream.write_all(&wire);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    proxy.wait_for_log(&[
        "WARN",
        "HTTP/2 connection closed for a protocol violation",
        "excessive load",
        "peer=127.0.0.1:",
    ]);
    assert_eq!(up.count(), 0);
    assert_eq!(proxy.browser().get("/").status, 200);
}
