//! Idle and absolute expiry: an expired session counts as no cookie at all.
//! These tests wait for real time to pass (short timeouts), polling with
//! deadlines rather than sleeping for synchronisation.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Proxy, Response, Upstream, config};

fn setter() -> Upstream {
    Upstream::start(|r| {
        if r.target == "/set" {
            Response::ok().header("X-Session-Set", "user=\"alice\"")
        } else {
            Response::ok()
        }
    })
}

#[test]
fn an_idle_session_expires_and_its_cookie_starts_a_new_session() {
    idle_expiry("");
}

#[test]
fn an_idle_redis_session_slides_and_expires_with_the_default_touch_interval() {
    // touch_interval (60 s by default) is far longer than the idle timeout:
    // reads must still refresh the session often enough to keep it.
    let redis = support::redis::RedisServer::start();
    idle_expiry(&format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    ));
}

fn idle_expiry(store: &str) {
    let up = setter();
    let proxy = Proxy::start(&config(
        up.addr,
        &format!("[session]\nidle_timeout = \"1s\"\n{store}"),
    ));
    let mut b = proxy.browser();
    b.get("/set");
    let id = up.last().session_id().to_owned();
    // Activity keeps it alive past one idle period.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        b.get("/");
        assert_eq!(up.last().session_id(), id, "an active session stays");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_millis(1300));
    let reply = b.get("/");
    let seen = up.last();
    assert!(seen.is_new(), "the idle session expired");
    assert_ne!(seen.session_id(), id);
    assert_eq!(seen.session(), json!({}));
    assert!(reply.session_cookie_value().is_some_and(|v| !v.is_empty()));
}

#[test]
fn a_session_expires_at_its_absolute_deadline_whatever_its_activity() {
    let up = setter();
    let proxy = Proxy::start(&config(
        up.addr,
        "[session]\nidle_timeout = \"1h\"\nabsolute_timeout = \"2s\"\n",
    ));
    let mut b = proxy.browser();
    b.get("/set");
    let id = up.last().session_id().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        b.get("/");
        if up.last().session_id() != id {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still alive long after its absolute deadline"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(up.last().is_new());
    assert_eq!(up.last().session(), json!({}));
}

#[test]
fn expired_sessions_are_swept_in_the_background() {
    let up = setter();
    let proxy = Proxy::start(&config(up.addr, "[session]\nidle_timeout = \"1s\"\n"));
    for _ in 0..5 {
        proxy.browser().get("/set");
    }
    assert_eq!(support::admin::sessions_held(&proxy), 5);
    let swept = support::poll(Duration::from_secs(5), || {
        (support::admin::sessions_held(&proxy) == 0).then_some(())
    });
    assert!(swept.is_some(), "no request came, yet the store emptied");
    let expired = support::admin::metric(&proxy, "sessiongate_sessions_total{event=\"expired\"}");
    assert_eq!(expired, 5.0);
}
