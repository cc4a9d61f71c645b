//! PROTOCOL.md section 1, the browser side, checked against the real binary.

mod support;

use sessiongate::cookie::{SecretKey, Signer};
use sessiongate::session::Id;
use support::client::{Conn, request};
use support::{COOKIE, Proxy, Response, SECRET, Upstream, config};

fn signer(secret: &str) -> Signer {
    Signer::new(SecretKey::new(secret.as_bytes().to_vec()), vec![])
}

fn now_ms() -> u64 {
    sessiongate::session::now_ms()
}

#[test]
fn first_visit_gets_a_signed_cookie_and_a_new_empty_session() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut browser = proxy.browser();
    let reply = browser.get("/");
    assert_eq!(reply.status, 200);
    let value = reply
        .session_cookie_value()
        .expect("eager mode sets the cookie on the first visit");
    let verified = signer(SECRET)
        .verify(&value)
        .expect("the cookie verifies under the configured secret");
    let seen = up.last();
    assert!(seen.is_new());
    assert_eq!(seen.session_id(), verified.id.to_string());
    assert_eq!(seen.header("x-session-data"), Some("{}"));
    // At least 128 bits: our ids are 32 random bytes.
    assert_eq!(Id::parse(seen.session_id()).unwrap().as_bytes().len(), 32);
}

#[test]
fn returning_browser_keeps_its_session_and_is_not_new() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut browser = proxy.browser();
    browser.get("/");
    let first = up.last();
    let reply = browser.get("/again");
    let second = up.last();
    assert_eq!(second.session_id(), first.session_id());
    assert!(!second.is_new());
    assert_eq!(second.header("x-session-new"), None);
    assert!(
        reply.session_cookie().is_none(),
        "an unchanged session is not re-issued"
    );
}

#[test]
fn every_new_session_gets_a_distinct_id() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let ids: std::collections::HashSet<String> = (0..20)
        .map(|_| {
            proxy.browser().get("/");
            up.last().session_id().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 20);
}

#[test]
fn tampered_unknown_key_or_malformed_cookies_start_a_new_session_not_an_error() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut browser = proxy.browser();
    let good = browser.get("/").session_cookie_value().unwrap();
    let good_id = up.last().session_id().to_owned();
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let id = Id::parse(&good_id).unwrap();
    let candidates = [
        String::from_utf8(flipped).unwrap(),
        signer("another-secret-0123456789abcdef-0123456789").sign(&id, now_ms()),
        good.replacen('.', "x", 1),
        "garbage".to_owned(),
        String::new(),
        "..".to_owned(),
        format!("{good}.extra"),
        "é".repeat(50),
    ];
    for bad in candidates {
        let mut b = proxy.browser();
        b.cookie = Some(bad.clone());
        let reply = b.get("/");
        assert_eq!(reply.status, 200, "cookie {bad:?}");
        let seen = up.last();
        assert!(seen.is_new(), "cookie {bad:?} was accepted");
        assert_ne!(seen.session_id(), good_id);
        assert!(
            reply.session_cookie_value().is_some_and(|v| !v.is_empty()),
            "a fresh cookie replaces {bad:?}"
        );
    }
}

#[test]
fn the_first_cookie_that_verifies_is_used_and_the_others_are_ignored() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    let one = proxy.browser().get("/").session_cookie_value().unwrap();
    let one_id = up.last().session_id().to_owned();
    let two = proxy.browser().get("/").session_cookie_value().unwrap();
    let cookie = format!("other=1; {COOKIE}=forged.1.x; {COOKIE}={one}; {COOKIE}={two}");
    let mut conn = Conn::open(proxy.addr);
    let reply = conn.exchange("GET", &request("GET", "/", &[("Cookie", &cookie)], b""));
    assert_eq!(reply.status, 200);
    let seen = up.last();
    assert_eq!(seen.session_id(), one_id);
    assert!(!seen.is_new());
    assert_eq!(
        seen.header("cookie"),
        Some("other=1"),
        "all copies of the session cookie are removed upstream"
    );
}

#[test]
fn raw_utf8_in_other_cookies_neither_hides_the_session_nor_leaks_it() {
    let up = Upstream::start(|r| match r.target.as_str() {
        "/login" => Response::ok().header("X-Session-Set", "user=1"),
        _ => Response::ok(),
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let value = proxy
        .browser()
        .get("/login")
        .session_cookie_value()
        .unwrap();
    let id = up.last().session_id().to_owned();
    // As `document.cookie = "name=Jérôme"` leaves it: raw UTF-8 bytes.
    for (cookie, others) in [
        (format!("{COOKIE}={value}; name=Jérôme"), "name=Jérôme"),
        (format!("name=café; {COOKIE}={value}"), "name=café"),
    ] {
        let mut conn = Conn::open(proxy.addr);
        let reply = conn.exchange("GET", &request("GET", "/", &[("Cookie", &cookie)], b""));
        assert_eq!(reply.status, 200);
        assert!(
            reply.session_cookie().is_none(),
            "{cookie:?} keeps its session"
        );
        let seen = up.last();
        assert_eq!(seen.session_id(), id, "{cookie:?}");
        assert!(!seen.is_new());
        assert_eq!(seen.session()["user"], 1);
        assert_eq!(
            seen.header("cookie"),
            Some(others),
            "the other cookies pass byte for byte, the session cookie does not"
        );
    }
}

#[test]
fn host_prefixed_cookie_names_work() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(
        up.addr,
        "[cookie]\nname = \"__Host-sid\"\nsecure = true\n",
    ));
    let mut conn = Conn::open(proxy.addr);
    let reply = conn.exchange("GET", &request("GET", "/", &[], b""));
    let set = reply
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("__Host-sid="))
        .expect("cookie set")
        .to_owned();
    assert!(
        set.contains("Secure") && set.contains("Path=/") && !set.contains("Domain"),
        "{set}"
    );
    let value = set["__Host-sid=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let first = up.last().session_id().to_owned();
    let reply = conn.exchange(
        "GET",
        &request(
            "GET",
            "/",
            &[("Cookie", &format!("__Host-sid={value}"))],
            b"",
        ),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(up.last().session_id(), first);
}

#[test]
fn cookies_signed_with_a_previous_secret_are_accepted_and_reissued_with_the_current_one() {
    let old = "old-secret-0123456789abcdef-0123456789ab";
    let up = Upstream::ok();
    let text = config(up.addr, "").replace(
        &format!("value = \"{SECRET}\""),
        &format!("value = \"{SECRET}\"\nprevious = [\"{old}\"]"),
    );
    let proxy = Proxy::start(&text);
    let id = Id::random();
    let mut browser = proxy.browser();
    browser.cookie = Some(signer(old).sign(&id, now_ms()));
    let reply = browser.get("/");
    let seen = up.last();
    assert_eq!(
        seen.session_id(),
        id.to_string(),
        "the previous secret's cookie is accepted"
    );
    assert!(!seen.is_new());
    let reissued = reply.session_cookie_value().expect("re-issued");
    let verified = signer(SECRET)
        .verify(&reissued)
        .expect("re-issued under the current secret");
    assert_eq!(verified.id, id);
}

#[test]
fn cookie_attributes_have_safe_defaults() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, "[cookie]\n"));
    let reply = proxy.browser().get("/");
    let set = reply.session_cookie().unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Domain") && !set.contains("Max-Age"), "{set}");
}

#[test]
fn cookie_attributes_come_from_config() {
    let up = Upstream::ok();
    let extra = "[cookie]\nname = \"sid\"\npath = \"/app\"\ndomain = \"example.test\"\nsecure = false\nhttp_only = false\nsame_site = \"strict\"\nmax_age = \"2h\"\n";
    let proxy = Proxy::start(&config(up.addr, extra));
    let reply = proxy.browser().get("/app/");
    let set = reply
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("sid="))
        .expect("named cookie")
        .to_owned();
    for attr in [
        "Path=/app",
        "Domain=example.test",
        "SameSite=Strict",
        "Max-Age=7200",
    ] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(
        !set.contains("HttpOnly") && !set.contains("Secure"),
        "{set}"
    );
}

#[test]
fn responses_vary_on_cookie_added_to_the_upstreams_vary() {
    let up = Upstream::start(|_| Response::ok().header("Vary", "Accept-Encoding"));
    let proxy = Proxy::start(&config(up.addr, ""));
    let reply = proxy.browser().get("/");
    let vary = reply.all("vary").join(", ").to_ascii_lowercase();
    assert!(
        vary.contains("accept-encoding") && vary.contains("cookie"),
        "{vary}"
    );
}

#[test]
fn a_response_carrying_the_session_cookie_is_never_shared_cacheable() {
    let up = Upstream::start(|r| match r.target.as_str() {
        // A quoted "private" names a header; it does not make the response private.
        "/quoted" => Response::ok().header(
            "Cache-Control",
            "public, max-age=60, no-cache=\"X-Foo, private, X-Bar\"",
        ),
        _ => Response::ok().header("Cache-Control", "public, max-age=600, s-maxage=600"),
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let reply = proxy.browser().get("/");
    assert!(reply.session_cookie().is_some());
    let cc = reply.all("cache-control").join(", ").to_ascii_lowercase();
    assert!(cc.contains("private"), "{cc}");
    assert!(!cc.contains("public") && !cc.contains("s-maxage"), "{cc}");
    let reply = proxy.browser().get("/quoted");
    assert!(reply.session_cookie().is_some());
    assert_eq!(
        reply.all("cache-control"),
        ["max-age=60, no-cache=\"X-Foo, private, X-Bar\", private"]
    );
}

#[test]
fn lazy_sessions_get_a_cookie_only_once_something_is_stored() {
    let up = Upstream::start(|r| {
        if r.target == "/login" {
            Response::ok().header("X-Session-Set", "user=\"alice\"")
        } else {
            Response::ok()
        }
    });
    let proxy = Proxy::start(&config(up.addr, "[session]\ncreate = \"lazy\"\n"));
    let mut browser = proxy.browser();
    let reply = browser.get("/");
    assert!(
        reply.session_cookie().is_none(),
        "lazy: no cookie for an empty session"
    );
    assert!(up.last().is_new());
    browser.get("/");
    assert!(
        up.last().is_new(),
        "without a cookie every request starts over"
    );
    let reply = browser.get("/login");
    assert!(reply.session_cookie_value().is_some_and(|v| !v.is_empty()));
    browser.get("/");
    assert!(!up.last().is_new());
    assert_eq!(up.last().session()["user"], "alice");
}

#[test]
fn cookie_less_flood_costs_no_storage() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, ""));
    for _ in 0..300 {
        assert_eq!(proxy.browser().get("/").status, 200);
    }
    assert_eq!(support::admin::sessions_held(&proxy), 0);
    // Nor a flood of logouts: Flush of a session the request itself started
    // retires nothing and is not counted as a session flushed.
    let logout = Upstream::start(|_| Response::ok().header("X-Session-Flush", "1"));
    let flood = Proxy::start(&config(logout.addr, ""));
    for _ in 0..100 {
        assert_eq!(flood.browser().get("/logout").status, 200);
    }
    let flushed = "sessiongate_sessions_total{event=\"flushed\"}";
    assert_eq!(support::admin::metric(&flood, flushed), 0.0);
    // A session that stores something is counted: the gauge is live.
    let up2 = Upstream::start(|_| Response::ok().header("X-Session-Set", "k=1"));
    let proxy2 = Proxy::start(&config(up2.addr, ""));
    proxy2.browser().get("/");
    assert_eq!(support::admin::sessions_held(&proxy2), 1);
}
