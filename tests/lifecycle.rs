//! Operating the proxy: the admin listener, graceful shutdown, SIGHUP
//! reloads, JSON logs, the health subcommand and the deployment examples.

mod support;

use std::time::{Duration, Instant};

use support::client::{Conn, request};
use support::{Proxy, Response, Upstream, config};

#[test]
fn admin_endpoints_answer_on_their_own_listener_only() {
    let up = Upstream::start(|r| match r.target.as_str() {
        "/login" => Response::ok()
            .header("X-Session-Rotate", "1")
            .header("X-Session-Set", "u=1"),
        "/logout" => Response::ok().header("X-Session-Flush", "1"),
        "/bad" => Response::ok().header("X-Session-Set", "nope"),
        _ => Response::ok(),
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut b = proxy.browser();
    for path in ["/", "/login", "/bad", "/logout"] {
        b.get(path);
    }
    let health = support::admin::get(&proxy, "/healthz");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(support::admin::get(&proxy, "/readyz").status, 200);
    let metrics = support::admin::get(&proxy, "/metrics").text();
    for series in [
        "sessiongate_requests_total{class=\"2xx\"} 4",
        "sessiongate_upstream_latency_seconds_count 4",
        "sessiongate_sessions_total{event=\"created\"} 1",
        "sessiongate_sessions_total{event=\"rotated\"} 1",
        "sessiongate_sessions_total{event=\"flushed\"} 1",
        "sessiongate_operations_rejected_total{reason=\"malformed\"} 1",
        "sessiongate_store_errors_total 0",
        "sessiongate_store_latency_seconds_count",
        "sessiongate_sessions_held 0",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
    // The public port proxies /metrics like any other path.
    let before = up.count();
    let reply = proxy.browser().get("/metrics");
    assert_eq!(reply.text(), "ok");
    assert_eq!(up.count(), before + 1);
    assert_eq!(support::admin::get(&proxy, "/nope").status, 404);
}

#[test]
fn the_admin_listener_can_be_turned_off() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(up.addr, "[admin]\nlisten = \"off\"\n"));
    assert_eq!(proxy.admin, None);
    assert_eq!(proxy.browser().get("/").status, 200);
}

fn graceful(signal: &str) {
    let up = Upstream::start(|r| {
        if r.target == "/slow" {
            Response::ok()
                .body("slow done")
                .delay(Duration::from_millis(1500))
        } else {
            Response::ok()
        }
    });
    let mut proxy = Proxy::start(&config(up.addr, ""));
    let addr = proxy.addr;
    let in_flight = std::thread::spawn(move || support::Browser::new(addr).get("/slow"));
    support::poll(Duration::from_secs(5), || (up.count() == 1).then_some(()))
        .expect("the slow request reached the upstream");
    let status = proxy.signal_and_wait(signal);
    let reply = in_flight.join().unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "slow done"),
        "the request in flight completed"
    );
    assert_eq!(status.code(), Some(0));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no new connections after shutdown"
    );
    assert!(proxy.logs().iter().any(|l| l.contains("shutting down")));
}

#[test]
fn sigterm_lets_a_slow_request_in_flight_finish_then_exits_0() {
    graceful("TERM");
}

#[test]
fn sigint_shuts_down_gracefully_too() {
    graceful("INT");
}

#[test]
fn requests_still_running_after_the_grace_period_are_cut() {
    let up = Upstream::start(|_| Response::ok().delay(Duration::from_secs(20)));
    let mut proxy = Proxy::start(&config(up.addr, "[server]\nshutdown_grace = \"500ms\"\n"));
    let addr = proxy.addr;
    std::thread::spawn(move || support::Browser::new(addr).get("/"));
    support::poll(Duration::from_secs(5), || (up.count() == 1).then_some(())).unwrap();
    let started = Instant::now();
    assert_eq!(proxy.signal_and_wait("TERM").code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    proxy.wait_for_log(&["WARN", "shutdown_grace"]);
}

#[test]
fn sighup_reloads_the_config_without_dropping_connections_and_refuses_bad_files() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(
        up.addr,
        "[cookie]\nsecure = false\nname = \"first\"\n",
    ));
    let mut conn = Conn::open(proxy.addr);
    let reply = conn.exchange("GET", &request("GET", "/", &[], b""));
    assert!(sets_cookie(&reply, "first"), "{:?}", reply.headers);

    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        text.replace("name = \"first\"", "name = \"second\""),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log(&["config reloaded"]);
    // The connection opened before the reload still serves, with the new settings.
    let reply = conn.exchange("GET", &request("GET", "/", &[], b""));
    assert!(sets_cookie(&reply, "second"), "{:?}", reply.headers);

    // A broken file is refused with a log line; the running config stays.
    std::fs::write(&proxy.config_path, "this is [not toml").unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log(&["WARN", "reload refused", "not valid TOML"]);
    let reply = conn.exchange("GET", &request("GET", "/", &[], b""));
    assert!(sets_cookie(&reply, "second"), "{:?}", reply.headers);

    // So is a change that needs a restart.
    let with_listen = text
        .replace("name = \"first\"", "name = \"third\"")
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1);
    std::fs::write(&proxy.config_path, with_listen).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log(&[
        "WARN",
        "reload refused",
        "listen changed, which needs a restart",
    ]);
    let reply = conn.exchange("GET", &request("GET", "/", &[], b""));
    assert!(sets_cookie(&reply, "second"), "{:?}", reply.headers);

    // Turning the admin API on by adding a token is not a restart matter.
    let with_token = text
        .replace("name = \"first\"", "name = \"fourth\"")
        .replace(
            "[admin]\n",
            "[admin]\ntoken = \"admin-token-0123456789abcdef0123456789\"\n",
        );
    assert_ne!(
        with_token,
        text.replace("first", "fourth"),
        "the token was added"
    );
    std::fs::write(&proxy.config_path, with_token).unwrap();
    proxy.signal("HUP");
    let applied = support::poll(std::time::Duration::from_secs(10), || {
        let reply = conn.exchange("GET", &request("GET", "/", &[], b""));
        sets_cookie(&reply, "fourth").then_some(())
    });
    assert!(
        applied.is_some(),
        "the reload with a new admin token applied"
    );
}

/// Whether `reply` sets a cookie named `name`.
fn sets_cookie(reply: &support::Reply, name: &str) -> bool {
    reply
        .all("set-cookie")
        .iter()
        .any(|c| c.starts_with(&format!("{name}=")))
}

#[test]
fn json_logs_for_collectors() {
    let up = Upstream::start(|_| Response::ok().header("X-Session-Set", "bad"));
    let proxy = Proxy::start(&config(up.addr, "[log]\nformat = \"json\"\n"));
    proxy.browser().get("/x");
    let line = proxy.wait_for_log(&["operations rejected"]);
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["level"], "WARN");
    assert_eq!(json["fields"]["path"], "/x");
    for line in proxy.logs() {
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
}

#[test]
fn the_health_subcommand_asks_the_running_proxy() {
    let up = Upstream::ok();
    let dir = tempfile::tempdir().unwrap();
    // A fixed admin port, as the container health check reads it from the config.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = config(
        up.addr,
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let health = || {
        std::process::Command::new(support::binary())
            .args(["health", "--config"])
            .arg(&path)
            .env_remove("SESSIONGATE_CONFIG")
            .output()
            .unwrap()
    };
    let down = health();
    assert!(!down.status.success(), "nothing is running yet");
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach"));
    let _proxy = Proxy::start(&text);
    assert!(health().status.success());
}

#[test]
fn the_compose_example_sets_only_real_config_keys() {
    let compose = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/docker-compose.yml"
    ))
    .unwrap();
    let vars: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("SESSIONGATE_"))
        .map(|(k, v)| {
            let v = v.trim_matches('"');
            let v = if v.starts_with("${") {
                support::SECRET
            } else {
                v
            };
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(vars.len() >= 5, "{vars:?}");
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, err) = support::check_file(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/sessiongate.toml"
        )),
        &env,
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_reload_to_another_upstream_moves_kept_alive_browser_connections_there() {
    let (first, second) = (Upstream::ok(), Upstream::ok());
    let proxy = Proxy::start(&config(first.addr, ""));
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..2 {
        assert_eq!(
            conn.exchange("GET", &request("GET", "/", &[], b"")).status,
            200
        );
    }
    assert_eq!(first.count(), 2);
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        text.replace(&first.addr.to_string(), &second.addr.to_string()),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log(&["config reloaded"]);
    // The upstream connection this browser connection last borrowed (and
    // the first upstream's idle ones) belong to the old settings.
    for _ in 0..2 {
        assert_eq!(
            conn.exchange("GET", &request("GET", "/", &[], b"")).status,
            200
        );
    }
    assert_eq!((first.count(), second.count()), (2, 2));
}
