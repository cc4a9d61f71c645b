//! PROTOCOL.md section 3: the upstream's operations.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::client::{Conn, request};
use support::{COOKIE, Proxy, Recorded, Response, Upstream, config};

/// An upstream that answers `/op?<header>:<value>&...` with those headers,
/// so each test drives operations from the request line.
fn scripted() -> Upstream {
    Upstream::start(|r: &Recorded| {
        let mut rsp = Response::ok();
        let query = r.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once(':').unwrap();
            rsp = rsp.header(name, &decode(value));
        }
        if r.target.starts_with("/fail") {
            rsp.status = 500;
        }
        rsp
    })
}

/// Minimal percent-decoding for the scripted upstream's query.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn set(key: &str, json: &str) -> String {
    format!("X-Session-Set:{key}={}", encode(json))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn start() -> (Upstream, Proxy) {
    let up = scripted();
    let proxy = Proxy::start(&config(up.addr, ""));
    (up, proxy)
}

#[test]
fn set_stores_any_json_value_and_the_next_request_sees_it() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    let ops = [
        set("name", "\"alice\""),
        set("n", "42"),
        set("l", "[1,2]"),
        set("o", "{\"a\":1}"),
        set("z", "null"),
    ];
    let reply = b.get(&format!("/op?{}", ops.join("&")));
    assert_eq!(reply.status, 200);
    b.get("/");
    assert_eq!(
        up.last().session(),
        json!({"name": "alice", "n": 42, "l": [1, 2], "o": {"a": 1}, "z": null})
    );
}

#[test]
fn session_data_reaches_the_upstream_as_ascii_json() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get(&format!(
        "/op?{}",
        set("s", "\"caf\u{e9} \u{1f600} \\r\\n\\u0000\"")
    ));
    b.get("/");
    let raw = up.last().header("x-session-data").unwrap().to_owned();
    assert!(raw.is_ascii(), "{raw}");
    assert_eq!(raw, r#"{"s":"caf\u00e9 \ud83d\ude00 \r\n\u0000"}"#);
    assert_eq!(up.last().session()["s"], "caf\u{e9} \u{1f600} \r\n\u{0}");
}

#[test]
fn delete_removes_a_key() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get(&format!("/op?{}&{}", set("a", "1"), set("b", "2")));
    b.get("/op?X-Session-Delete:a");
    b.get("/");
    assert_eq!(up.last().session(), json!({"b": 2}));
}

#[test]
fn delete_and_set_lines_apply_in_the_order_received_across_header_names() {
    // A raw upstream, so the header order on the wire is exactly this.
    let up = support::upstream::raw(|r| {
        let ops = match r.target.as_str() {
            "/set-delete" => {
                "X-Session-Set: a=1\r\nX-Session-Delete: a\r\nX-Session-Set: a=2\r\nX-Session-Set: b=1\r\n"
            }
            "/delete-set" => "X-Session-Delete: b\r\nX-Session-Set: b=3\r\nX-Session-Delete: b\r\n",
            // One name in two spellings: the lines keep their order too.
            "/set-set" => "X-Session-Set: c=1\r\nx-session-set: c=2\r\nX-SESSION-SET: c=3\r\n",
            _ => "",
        };
        format!("HTTP/1.1 200 OK\r\n{ops}Content-Length: 2\r\n\r\nok").into_bytes()
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut b = proxy.browser();
    // Grouped by name (as hyper's HeaderMap holds them) these would give
    // {"b":1} and {"b":3}: only the wire order gives these results.
    b.get("/set-delete");
    b.get("/");
    assert_eq!(up.last().session(), json!({"a": 2, "b": 1}));
    b.get("/delete-set");
    b.get("/");
    assert_eq!(up.last().session(), json!({"a": 2}));
    b.get("/set-set");
    b.get("/");
    assert_eq!(up.last().session(), json!({"a": 2, "c": 3}));
}

#[test]
fn rotate_gives_a_new_id_keeps_the_data_and_the_old_id_is_dead_at_once() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get(&format!("/op?{}", set("cart", "[1]")));
    let old_cookie = b.cookie.clone().unwrap();
    let old_id = up.last().session_id().to_owned();
    let reply = b.get(&format!(
        "/op?X-Session-Rotate:1&{}",
        set("user", "\"alice\"")
    ));
    let new_cookie = reply
        .session_cookie_value()
        .expect("rotate sets a new cookie");
    assert_ne!(new_cookie, old_cookie);
    b.get("/");
    let seen = up.last();
    assert_ne!(seen.session_id(), old_id);
    assert!(!seen.is_new());
    assert_eq!(seen.session(), json!({"cart": [1], "user": "alice"}));
    // The old cookie now counts as no cookie at all.
    let mut thief = proxy.browser();
    thief.cookie = Some(old_cookie);
    let reply = thief.get("/");
    let seen = up.last();
    assert!(seen.is_new());
    assert_ne!(seen.session_id(), old_id);
    assert_eq!(seen.session(), json!({}));
    assert!(reply.session_cookie_value().is_some_and(|v| !v.is_empty()));
}

#[test]
fn rotating_an_empty_session_also_kills_its_old_id() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get("/");
    let old_cookie = b.cookie.clone().unwrap();
    let old_id = up.last().session_id().to_owned();
    b.get("/op?X-Session-Rotate:1");
    assert_ne!(b.cookie.clone().unwrap(), old_cookie);
    let mut thief = proxy.browser();
    thief.cookie = Some(old_cookie);
    thief.get("/");
    assert!(up.last().is_new());
    assert_ne!(up.last().session_id(), old_id);
}

#[test]
fn flush_destroys_the_session_expires_the_cookie_and_kills_the_old_id() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get(&format!("/op?{}", set("user", "\"alice\"")));
    let old_cookie = b.cookie.clone().unwrap();
    let reply = b.get("/op?X-Session-Flush:1");
    let expired = reply
        .session_cookie()
        .expect("flush expires the cookie")
        .to_ascii_lowercase();
    assert!(expired.contains("max-age=0"), "{expired}");
    assert!(b.cookie.is_none());
    let mut replay = proxy.browser();
    replay.cookie = Some(old_cookie);
    replay.get("/");
    assert!(up.last().is_new());
    assert_eq!(up.last().session(), json!({}));
}

#[test]
fn flush_with_set_starts_a_new_session_holding_only_the_new_keys() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get(&format!("/op?{}", set("old", "1")));
    let old_id = up.last().session_id().to_owned();
    // Flush comes first whatever the header order.
    let reply = b.get(&format!("/op?{}&X-Session-Flush:1", set("new", "2")));
    assert!(reply.session_cookie_value().is_some_and(|v| !v.is_empty()));
    b.get("/");
    assert_ne!(up.last().session_id(), old_id);
    assert_eq!(up.last().session(), json!({"new": 2}));
}

#[test]
fn a_malformed_line_rejects_every_operation_of_the_response_which_is_still_delivered() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get(&format!("/op?{}", set("keep", "1")));
    for bad in [
        format!("{}&{}", set("a", "1"), set("b", "not-json")),
        format!("{}&X-Session-Delete:bad%20key", set("a", "1")),
        format!("{}&X-Session-Rotate:yes", set("a", "1")),
        format!("{}&{}", set("a", "1"), set(&"k".repeat(129), "1")),
    ] {
        let reply = b.get(&format!("/bad?{bad}"));
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "ok"),
            "the response is delivered"
        );
        assert!(reply.session_cookie().is_none());
    }
    b.get("/");
    assert_eq!(up.last().session(), json!({"keep": 1}));
    let line = proxy.wait_for_log(&["WARN", "operations rejected", "/bad"]);
    assert!(
        line.contains("not valid JSON") || line.contains("key"),
        "{line}"
    );
    assert_eq!(
        support::admin::metric(
            &proxy,
            "sessiongate_operations_rejected_total{reason=\"malformed\"}"
        ),
        4.0
    );
}

#[test]
fn a_session_over_its_size_limit_is_refused_whole() {
    let up = scripted();
    let proxy = Proxy::start(&config(up.addr, "[session]\nmax_bytes = 64\n"));
    let mut b = proxy.browser();
    b.get(&format!("/op?{}", set("a", "1")));
    let big = format!("\"{}\"", "x".repeat(80));
    let reply = b.get(&format!("/big?{}&{}", set("b", "2"), set("c", &big)));
    assert_eq!(reply.status, 200);
    b.get("/");
    assert_eq!(up.last().session(), json!({"a": 1}));
    proxy.wait_for_log(&["WARN", "/big", "max_bytes"]);
}

#[test]
fn operations_of_a_server_error_response_are_not_applied() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    let reply = b.get(&format!("/fail?{}", set("half", "1")));
    assert_eq!(reply.status, 500, "the 5xx passes through");
    assert_eq!(reply.text(), "ok");
    b.get("/");
    assert_eq!(up.last().session(), json!({}));
    proxy.wait_for_log(&["WARN", "/fail", "server error"]);
}

#[test]
fn operation_headers_and_the_upstreams_session_set_cookie_never_reach_the_browser() {
    let up = Upstream::start(|_| {
        Response::ok()
            .header("X-Session-Set", "a=1")
            .header("x_session_delete", "b")
            .header("X-Session-Other", "x")
            .header("Set-Cookie", &format!("{COOKIE}=forged; Path=/"))
            .header("Set-Cookie", "theme=dark; Path=/")
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let reply = proxy.browser().get("/");
    assert!(
        reply
            .headers
            .iter()
            .all(|(n, _)| !n.replace('_', "-").starts_with("x-session")),
        "{:?}",
        reply.headers
    );
    let cookies = reply.all("set-cookie");
    assert!(cookies.contains(&"theme=dark; Path=/"));
    assert!(!cookies.iter().any(|c| c.contains("forged")));
    assert_eq!(
        cookies
            .iter()
            .filter(|c| c.starts_with(&format!("{COOKIE}=")))
            .count(),
        1,
        "only the proxy's own"
    );
}

#[test]
fn sixty_four_parallel_requests_of_one_browser_each_setting_a_key_are_all_kept() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get("/");
    let browser = Arc::new(b);
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let mut b = (*browser).clone();
            std::thread::spawn(move || {
                b.get(&format!("/op?{}", set(&format!("k{i}"), &i.to_string())))
                    .status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let mut b = (*browser).clone();
    b.get("/");
    let session = up.last().session();
    let map = session.as_object().unwrap();
    assert_eq!(map.len(), 64, "lost updates: {session}");
    for i in 0..64 {
        assert_eq!(map[&format!("k{i}")], json!(i));
    }
}

#[test]
fn a_change_is_stored_before_the_response_head_reaches_the_browser() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    // On one keep-alive connection, the next request must already see it.
    let cookie = format!("{COOKIE}={}", b.get("/").session_cookie_value().unwrap());
    let mut conn = Conn::open(proxy.addr);
    for i in 0..20 {
        conn.exchange(
            "GET",
            &request(
                "GET",
                &format!("/op?{}", set("n", &i.to_string())),
                &[("Cookie", &cookie)],
                b"",
            ),
        );
        conn.exchange("GET", &request("GET", "/", &[("Cookie", &cookie)], b""));
        assert_eq!(up.last().session()["n"], json!(i));
    }
}

#[test]
fn deleting_every_key_frees_the_storage_and_keeps_the_eager_session() {
    let (up, proxy) = start();
    let mut b = proxy.browser();
    b.get(&format!("/op?{}", set("a", "1")));
    let id = up.last().session_id().to_owned();
    assert_eq!(support::admin::sessions_held(&proxy), 1);
    b.get("/op?X-Session-Delete:a");
    assert_eq!(support::admin::sessions_held(&proxy), 0);
    b.get("/");
    assert_eq!(up.last().session_id(), id);
    assert!(!up.last().is_new());
}
