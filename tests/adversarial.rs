//! Hostile clients and broken upstreams: request smuggling, spoofed session
//! headers in every form, and upstreams that send garbage.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::client::{Conn, request};
use support::{COOKIE, Proxy, Response, Upstream, config, config_with_upstream};

fn assert_refused_and_closed(proxy: &Proxy, raw: &[u8], what: &str) {
    let mut conn = Conn::open(proxy.addr);
    conn.send(raw);
    let reply = conn
        .read("POST")
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(reply.status, 400, "{what}");
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "{what}: the connection stays open"
    );
}

#[test]
fn smuggling_attempts_get_400_a_closed_connection_and_never_reach_the_upstream() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let attempts: &[(&str, &[u8])] = &[
        ("CL.TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
        ("TE.CL", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ("two Content-Lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("a Content-Length list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        ("chunked, chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ("two TE lines", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("gzip, chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("chunked, gzip", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("xchunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("identity", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nhi"),
        ("obs-fold", b"POST / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
        ("space before the colon", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("two Hosts", b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n"),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("CL.TE after empty lines", b"\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("CL.TE with bare LF", b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n"),
    ];
    for (what, raw) in attempts {
        assert_refused_and_closed(&proxy, raw, what);
    }
    assert_eq!(
        up.count(),
        0,
        "a smuggling attempt reached the upstream: {:?}",
        up.requests()
    );
    assert_eq!(
        proxy.browser().get("/").status,
        200,
        "the proxy keeps serving"
    );
}

#[test]
fn exactly_one_framing_header_is_forwarded() {
    let up = support::upstream::raw(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let proxy = Proxy::start(&config(up.addr, ""));
    Conn::open(proxy.addr).exchange("POST", &request("POST", "/", &[], b"abc"));
    let seen = up.last();
    assert_eq!(seen.all("content-length"), ["3"]);
    assert!(seen.all("transfer-encoding").is_empty());
    let mut conn = Conn::open(proxy.addr);
    conn.send(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    conn.read("POST").unwrap();
    let seen = up.last();
    let framing = seen.all("content-length").len() + seen.all("transfer-encoding").len();
    assert_eq!(framing, 1, "{:?}", seen.headers);
}

#[test]
fn an_upstream_response_with_both_framings_is_a_502_and_its_connection_is_dropped() {
    let up = support::upstream::raw(|r| {
        match r.target.as_str() {
        "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    }
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    // One kept-alive browser connection, so no other browser connection
    // can give an idle upstream connection back in between.
    let mut conn = Conn::open(proxy.addr);
    let mut get = |path: &str| conn.exchange("GET", &request("GET", path, &[], b"")).status;
    assert_eq!(get("/fine"), 200);
    assert_eq!(get("/both"), 502);
    // Whichever upstream connection carried /both is gone: /after needs a new one.
    let before = up.connections.load(Ordering::SeqCst);
    let mut conn = Conn::open(proxy.addr);
    let after = conn
        .exchange("GET", &request("GET", "/after", &[], b""))
        .status;
    assert_eq!(after, 200);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        before + 1,
        "the refused response's connection was not reused"
    );
}

#[test]
fn session_headers_in_request_trailers_never_reach_the_upstream() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Session-Id\r\n\r\n3\r\nabc\r\n0\r\nX-Session-Id: spoof\r\nx_session_data: {}\r\nX-Other: kept\r\n\r\n");
    assert_eq!(conn.read("POST").unwrap().status, 200);
    let seen = up.last();
    assert_eq!(seen.body, b"abc");
    assert!(
        seen.trailers
            .iter()
            .all(|(n, _)| !n.replace('_', "-").starts_with("x-session")),
        "{:?}",
        seen.trailers
    );
    assert_ne!(seen.session_id(), "spoof");
}

#[test]
fn duplicated_and_comma_joined_spoofs_are_all_removed() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(
        up.addr,
        "[server]\ndrop_underscore_headers = false\n",
    ));
    let spoofs = [
        ("X-Session-Data", "{\"admin\":true}"),
        ("X-Session-Data", "{\"admin\":true}"),
        ("X-Session-Id", "a, b"),
        ("X-SESSION-new", "1, 1"),
        ("x_session_data", "{\"admin\":true}"),
        ("Connection", "X-Session-Id, keep-alive"),
    ];
    Conn::open(proxy.addr).exchange("GET", &request("GET", "/", &spoofs, b""));
    let seen = up.last();
    assert_eq!(seen.all("x-session-data"), ["{}"]);
    assert_eq!(seen.all("x-session-id").len(), 1);
    assert!(seen.header("x_session_data").is_none());
}

#[test]
fn session_headers_in_upstream_trailers_and_1xx_responses_never_reach_the_browser() {
    let up = support::upstream::raw(|r| {
        match r.target.as_str() {
        "/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Session-Set\r\n\r\n2\r\nok\r\n0\r\nX-Session-Set: t=1\r\nSet-Cookie: sessionid=forged\r\nX-Fine: 1\r\n\r\n".to_vec(),
        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nX-Session-Set: early=1\r\nX-Session-Flush: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nX-Session-Set: k=1\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    }
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut b = proxy.browser();
    b.get("/set");
    for path in ["/trailers", "/early"] {
        let cookie = format!("{COOKIE}={}", b.cookie.clone().unwrap());
        let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        use std::io::{Read, Write};
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{path}: {text}");
        assert!(!text.contains("x-session"), "{path}: {text}");
        assert!(!text.contains("forged"), "{path}: {text}");
    }
    b.get("/");
    assert_eq!(
        up.last().session(),
        json!({"k": 1}),
        "nothing from trailers or 1xx was applied"
    );
}

#[test]
fn broken_upstream_operations_are_refused_the_response_delivered_the_session_unchanged() {
    let huge = format!("big=\"{}\"", "x".repeat(300_000));
    // More than session.max_operations (256), within the head's line cap
    // (max_operations + 1024).
    let many: String = (0..1200)
        .map(|i| format!("X-Session-Set: k{i}=1\r\n"))
        .collect();
    // Beyond max_operations + 1024 lines the head itself is refused, as
    // nginx refuses a head larger than its buffer.
    let flood: String = (0..5000)
        .map(|i| format!("X-Session-Set: k{i}=1\r\n"))
        .collect();
    let up = support::upstream::raw(move |r| {
        let ops = match r.target.as_str() {
            "/keep" => "X-Session-Set: keep=1\r\n".to_owned(),
            "/huge" => format!("X-Session-Set: {huge}\r\n"),
            "/many" => many.clone(),
            "/flood" => flood.clone(),
            "/latin1" => "X-Session-Set: k=\"\u{e9}\"\r\n".to_owned(),
            _ => String::new(),
        };
        format!("HTTP/1.1 200 OK\r\n{ops}Content-Length: 9\r\n\r\ndelivered").into_bytes()
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut b = proxy.browser();
    b.get("/keep");
    for path in ["/huge", "/many"] {
        let reply = b.get(path);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "delivered"),
            "{path}"
        );
        proxy.wait_for_log(&["WARN", path, "operations rejected"]);
    }
    assert_eq!(b.get("/flood").status, 502);
    proxy.wait_for_log(&["WARN", "/flood", "status=502"]);
    b.get("/");
    assert_eq!(up.last().session(), json!({"keep": 1}));
}

#[test]
fn operations_in_a_head_with_bare_line_feeds_apply_in_the_order_sent() {
    // hyper accepts `\n` line ends from an upstream; the order across the
    // two header names must still hold (in order: a deleted, b set; grouped
    // by name, both would end up set or both gone).
    let up = support::upstream::raw(|r| {
        match r.target.as_str() {
        "/ops" => b"HTTP/1.1 200 OK\nX-Session-Set: a=1\nX-Session-Delete: a\nX-Session-Delete: b\nX-Session-Set: b=2\nContent-Length: 2\n\nok".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    }
    });
    // On a lent upstream connection, and on the shared pool.
    for lines in ["", "paired_connections = 0"] {
        let proxy = Proxy::start(&config_with_upstream(up.addr, lines, ""));
        let mut b = proxy.browser();
        let reply = b.get("/ops");
        assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
        assert!(reply.header("x-session-set").is_none());
        b.get("/");
        assert_eq!(up.last().session(), json!({"b": 2}), "{lines}");
    }
}

#[test]
fn large_upstream_heads_keep_the_operation_order_and_the_head_limit_is_exact() {
    // Three ordered lines across two names, behind a large unrelated
    // header: the capture that orders them must hold the whole head (it
    // once gave up at 512 KiB and fell back to name-grouped order, losing
    // k). Past 4 MiB the head is refused every time (hyper's own check
    // runs before each read, so it let some such heads through).
    let up = support::upstream::raw(|r| {
        let pad = match r.target.as_str() {
            "/large" => 3 << 20,
            "/over" => (4 << 20) + (256 << 10),
            _ => 0,
        };
        let mut head = b"HTTP/1.1 200 OK\r\nX-Session-Set: k=1\r\nX-Session-Delete: k\r\nX-Session-Set: k=2\r\n".to_vec();
        if pad > 0 {
            head.extend_from_slice(format!("X-Pad: {}\r\n", "p".repeat(pad)).as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        head
    });
    // On a lent upstream connection, and on the shared pool.
    for lines in ["", "paired_connections = 0"] {
        let proxy = Proxy::start(&config_with_upstream(up.addr, lines, ""));
        for _ in 0..3 {
            let mut b = proxy.browser();
            let reply = b.get("/large");
            assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
            b.get("/");
            assert_eq!(up.last().session(), json!({"k": 2}), "{lines}");
        }
        for _ in 0..3 {
            assert_eq!(proxy.browser().get("/over").status, 502, "{lines}");
        }
        // hyper or the capture refuses it first, depending on how the reads
        // fall; either way a 502 with a warning.
        proxy.wait_for_log(&["WARN", "/over", "status=502", "malformed response"]);
    }
}

#[test]
fn values_with_cr_lf_nul_and_any_unicode_round_trip_and_the_next_head_stays_valid() {
    let tricky =
        json!("line1\r\nInjected: yes\r\n\r\nGET /evil HTTP/1.1\u{0}\u{7f}\u{2028}é😀\u{10ffff}");
    // Sent as ASCII JSON: every control character and non-ASCII escaped.
    let value = String::from_utf8(sessiongate::session::json::encode_value(&tricky)).unwrap();
    let up = Upstream::start(move |r| {
        if r.target == "/set" {
            Response::ok().header("X-Session-Set", &format!("t={value}"))
        } else {
            Response::ok()
        }
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut b = proxy.browser();
    let reply = b.get("/set");
    assert_eq!(reply.status, 200, "{:?}", reply);
    b.get("/next");
    let seen = up.last();
    assert_eq!(seen.target, "/next");
    assert!(seen.header("injected").is_none());
    assert_eq!(seen.session()["t"], tricky);
    assert!(seen.header("x-session-data").unwrap().is_ascii());
    assert_eq!(up.count(), 2, "no request was smuggled to the upstream");
}

#[test]
fn a_garbled_upstream_response_is_a_502_and_the_proxy_keeps_serving() {
    let up = support::upstream::raw(|r| match r.target.as_str() {
        "/garbage" => b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
        "/bare-cr" => {
            b"HTTP/1.1 200 OK\r\nX-Session-Set: a=\"1\"\rInjected: 1\r\nContent-Length: 2\r\n\r\nok"
                .to_vec()
        }
        // A 101 nobody asked for: not relayed, its operation not applied.
        "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nX-Session-Set: ws=1\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    assert_eq!(proxy.browser().get("/garbage").status, 502);
    proxy.wait_for_log(&["WARN", "status=502", "upstream sent a malformed response"]);
    assert_eq!(proxy.browser().get("/bare-cr").status, 502);
    let mut browser = proxy.browser();
    assert_eq!(browser.get("/fine").status, 200);
    assert!(browser.cookie.is_some(), "a session to apply operations to");
    assert_eq!(browser.get("/switch").status, 502);
    proxy.wait_for_log(&["WARN", "status=502", "101 Switching Protocols"]);
    assert_eq!(browser.get("/fine").status, 200);
    assert_eq!(
        up.last().session(),
        json!({}),
        "the 101's operation was not applied"
    );
}

#[test]
fn malformed_targets_and_hosts_get_400_and_never_reach_the_upstream() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let attempts: &[(&str, &[u8])] = &[
        (
            "authority-form GET",
            b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ),
        ("`*` outside OPTIONS", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "an ftp target",
            b"GET ftp://example.com/a HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ),
        (
            "userinfo in the target",
            b"GET http://u:pw@example.com/a HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ),
        ("a space in Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        (
            "userinfo in Host",
            b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n",
        ),
    ];
    for (what, raw) in attempts {
        assert_refused_and_closed(&proxy, raw, what);
    }
    assert_eq!(up.count(), 0, "reached the upstream: {:?}", up.requests());
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        conn.read("OPTIONS").unwrap().status,
        200,
        "OPTIONS * is proxied"
    );
}
