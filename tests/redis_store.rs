//! The Redis store with real processes: two proxy replicas share one
//! redis-server; Redis dies mid-load and comes back.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::redis::RedisServer;
use support::{Browser, Proxy, Recorded, Response, Upstream, config};

fn scripted() -> Upstream {
    Upstream::start(|r: &Recorded| {
        let parts: Vec<&str> = r.target.split('/').collect();
        match parts.as_slice() {
            ["", "set", key, value] => {
                Response::ok().header("X-Session-Set", &format!("{key}={value}"))
            }
            ["", "login"] => Response::ok()
                .header("X-Session-Rotate", "1")
                .header("X-Session-Set", "user=\"alice\""),
            _ => Response::ok(),
        }
    })
}

fn replica(up: &Upstream, redis: &RedisServer, extra: &str) -> Proxy {
    Proxy::start(&config(
        up.addr,
        &format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\n{extra}",
            redis.url()
        ),
    ))
}

#[test]
fn two_replicas_see_each_others_sessions_and_rotations() {
    let redis = RedisServer::start();
    let up = scripted();
    let (a, b) = (replica(&up, &redis, ""), replica(&up, &redis, ""));
    let mut browser = a.browser();
    browser.get("/set/cart/[1,2]");
    let id = up.last().session_id().to_owned();
    browser.addr = b.addr;
    browser.get("/");
    assert_eq!(up.last().session_id(), id);
    assert_eq!(up.last().session(), json!({"cart": [1, 2]}));
    let before_login = browser.cookie.clone().unwrap();
    browser.get("/login");
    // The rotation on B kills the old id on A at once.
    let mut old = Browser::new(a.addr);
    old.cookie = Some(before_login);
    old.get("/");
    assert!(up.last().is_new());
    assert_eq!(up.last().session(), json!({}));
    browser.addr = a.addr;
    browser.get("/");
    assert_eq!(
        up.last().session(),
        json!({"cart": [1, 2], "user": "alice"})
    );
}

#[test]
fn cookie_less_logouts_and_logins_leave_nothing_in_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start(|r: &Recorded| match r.target.as_str() {
        "/logout" => Response::ok().header("X-Session-Flush", "1"),
        "/rotate" => Response::ok().header("X-Session-Rotate", "1"),
        "/login" => Response::ok()
            .header("X-Session-Rotate", "1")
            .header("X-Session-Set", "user=\"alice\""),
        _ => Response::ok(),
    });
    let proxy = replica(&up, &redis, "");
    // Each of these starts a session nobody holds yet: Flush and Rotate
    // have no id to retire, so no "this id is dead" marker is written.
    for path in ["/logout", "/rotate"] {
        for _ in 0..50 {
            assert_eq!(proxy.browser().get(path).status, 200);
        }
    }
    assert_eq!(redis.dbsize(), 0, "cookie-less Flush/Rotate grew Redis");
    // A first-visit login still stores its session, under the id its
    // cookie names, and a later logout still kills that id.
    let mut browser = proxy.browser();
    browser.get("/login");
    let cookie = browser.cookie.clone().expect("the login sets the cookie");
    assert_eq!(up.last().header("x-session-new"), Some("1"));
    let before_login = up.last().session_id().to_owned();
    browser.get("/");
    assert_eq!(up.last().session(), json!({"user": "alice"}));
    assert_ne!(up.last().session_id(), before_login, "Rotate gave a new id");
    assert!(redis.dbsize() > 0);
    browser.get("/logout");
    let mut old = Browser::new(proxy.addr);
    old.cookie = Some(cookie);
    old.get("/");
    assert!(up.last().is_new(), "the logged-out id no longer works");
}

#[test]
fn forty_eight_parallel_writes_spread_over_two_replicas_are_all_kept() {
    let redis = RedisServer::start();
    let up = scripted();
    let (a, b) = (replica(&up, &redis, ""), replica(&up, &redis, ""));
    let mut browser = a.browser();
    browser.get("/");
    let browser = Arc::new(browser);
    let threads: Vec<_> = (0..48)
        .map(|i| {
            let mut mine = (*browser).clone();
            mine.addr = if i % 2 == 0 { a.addr } else { b.addr };
            std::thread::spawn(move || mine.get(&format!("/set/k{i}/{i}")).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let mut check = (*browser).clone();
    check.get("/");
    let session = up.last().session();
    assert_eq!(session.as_object().unwrap().len(), 48, "{session}");
}

#[test]
fn a_redis_outage_gives_503_within_the_timeout_and_the_proxy_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let up = scripted();
    let proxy = replica(&up, &redis, "timeout = \"1s\"\n");
    let mut browser = proxy.browser();
    browser.get("/set/k/1");
    assert_eq!(support::admin::get(&proxy, "/readyz").status, 200);

    // Kill Redis under a parallel load: every request still gets an answer,
    // 200 before the kill or 503 after, never a hang past the timeout.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|i| {
            let (mut b, stop) = (browser.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = vec![];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = Instant::now();
                    let status = b.get(&format!("/set/t{i}/1")).status;
                    seen.push((status, started.elapsed()));
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen: Vec<(u16, Duration)> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(seen.iter().all(|(s, _)| *s == 200 || *s == 503), "{seen:?}");
    assert!(seen.iter().any(|(s, _)| *s == 503), "the outage was seen");
    assert!(
        seen.iter().all(|(_, d)| *d < Duration::from_secs(3)),
        "a request hung: {seen:?}"
    );
    let served_before = up.count();
    let started = Instant::now();
    assert_eq!(browser.get("/set/k/2").status, 503);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        up.count(),
        served_before,
        "no request reached the upstream without its session"
    );
    assert_eq!(support::admin::get(&proxy, "/readyz").status, 503);
    proxy.wait_for_log(&["WARN", "status=503"]);

    redis.restart();
    let recovered = support::poll(Duration::from_secs(15), || {
        (browser.get("/set/k/3").status == 200).then_some(())
    });
    assert!(
        recovered.is_some(),
        "the proxy did not recover after Redis came back"
    );
    assert_eq!(support::admin::get(&proxy, "/readyz").status, 200);
    browser.get("/");
    assert_eq!(up.last().session()["k"], json!(3));
}

#[test]
fn the_proxy_starts_while_redis_is_down_and_serves_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let up = scripted();
    let proxy = replica(&up, &redis, "timeout = \"500ms\"\n");
    assert_eq!(support::admin::get(&proxy, "/readyz").status, 503);
    redis.restart();
    let ready = support::poll(Duration::from_secs(15), || {
        (support::admin::get(&proxy, "/readyz").status == 200).then_some(())
    });
    assert!(ready.is_some());
    let mut b = proxy.browser();
    b.get("/set/k/1");
    b.get("/");
    assert_eq!(up.last().session(), json!({"k": 1}));
}

#[test]
fn redis_cluster_keeps_sessions_rotations_and_parallel_writes_across_slots() {
    let cluster = support::redis::RedisCluster::start();
    let up = scripted();
    let extra = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ncluster = true\n",
        cluster.url()
    );
    let (a, b) = (
        Proxy::start(&config(up.addr, &extra)),
        Proxy::start(&config(up.addr, &extra)),
    );
    // Many sessions, so that they land on every master.
    let mut browsers: Vec<Browser> = (0..30).map(|_| a.browser()).collect();
    for (i, br) in browsers.iter_mut().enumerate() {
        assert_eq!(br.get(&format!("/set/n/{i}")).status, 200);
    }
    for (i, br) in browsers.iter_mut().enumerate() {
        br.addr = b.addr;
        let before = br.cookie.clone();
        assert_eq!(br.get("/login").status, 200, "rotation in the cluster");
        assert_ne!(br.cookie, before);
        br.get("/");
        assert_eq!(up.last().session(), json!({"n": i, "user": "alice"}));
    }
    let shared = Arc::new(browsers.pop().unwrap());
    let threads: Vec<_> = (0..48)
        .map(|i| {
            let mut mine = (*shared).clone();
            mine.addr = if i % 2 == 0 { a.addr } else { b.addr };
            std::thread::spawn(move || mine.get(&format!("/set/k{i}/{i}")).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let mut check = (*shared).clone();
    check.get("/");
    assert_eq!(up.last().session().as_object().unwrap().len(), 50);
}

#[test]
fn a_rediss_url_speaks_tls_and_a_failed_handshake_is_a_503_not_a_crash() {
    // A plain redis-server cannot complete a TLS handshake: every call fails.
    let redis = RedisServer::start();
    let up = scripted();
    let url = redis.url().replace("redis://", "rediss://");
    let proxy = Proxy::start(&config(
        up.addr,
        &format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\ntimeout = \"1s\"\n"),
    ));
    let mut b = proxy.browser();
    assert_eq!(b.get("/set/k/1").status, 503);
    assert_eq!(support::admin::get(&proxy, "/readyz").status, 503);
    assert_eq!(
        b.get("/").status,
        200,
        "requests that need no store still pass"
    );
}

#[test]
fn the_first_request_after_a_redis_restart_is_served() {
    let mut redis = RedisServer::start_durable();
    let up = scripted();
    let proxy = replica(&up, &redis, "");
    let mut browser = proxy.browser();
    assert_eq!(browser.get("/set/k/1").status, 200);
    // Restarted while the proxy was idle: its connection is dead but it
    // does not know yet. The first call meets that and goes again.
    redis.kill();
    redis.restart();
    assert_eq!(browser.get("/set/j/2").status, 200);
    browser.get("/");
    assert_eq!(up.last().session(), json!({"k": 1, "j": 2}));
    assert_eq!(support::admin::get(&proxy, "/readyz").status, 200);
}
