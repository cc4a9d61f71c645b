//! Sessions that know their user, read-only metadata, signed injection and
//! the session admin API, through the real binary on every store.

mod support;

use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::client::{Conn, request};
use support::redis::RedisServer;
use support::{Browser, Proxy, Recorded, Response, Upstream, config, config_with_upstream};

const TOKEN: &str = "admin-token-0123456789abcdef-0123456789abcdef";
const SIGNING_KEY: &str = "signing-key-0123456789abcdef-0123456789abcdef";

/// `/login/<user>` rotates and binds, `/login-only/<user>` also revokes the
/// user's other sessions, `/set/<k>/<v>` sets, `/logout` flushes.
fn app() -> Upstream {
    Upstream::start(|r: &Recorded| {
        let parts: Vec<&str> = r.target.split('/').collect();
        match parts.as_slice() {
            ["", "login", user] => Response::ok()
                .header("X-Session-Rotate", "1")
                .header("X-Session-User", user),
            ["", "login-only", user] => Response::ok()
                .header("X-Session-Rotate", "1")
                .header("X-Session-User", user)
                .header("X-Session-Revoke-Others", "1"),
            ["", "set", k, v] => Response::ok().header("X-Session-Set", &format!("{k}={v}")),
            ["", "logout"] => Response::ok().header("X-Session-Flush", "1"),
            _ => Response::ok(),
        }
    })
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Disk,
    Redis,
}

/// A proxy with the admin token, on a store of `kind` (the guard keeps Redis alive).
fn proxy(up: &Upstream, kind: Kind, extra: &str) -> (Option<RedisServer>, Proxy) {
    let (redis, store) = match kind {
        Kind::Memory => (None, String::new()),
        Kind::Disk => {
            let dir = tempfile::tempdir().unwrap().keep();
            (
                None,
                format!(
                    "[store]\nkind = \"disk\"\npath = \"{}\"\n",
                    dir.join("s.db").display()
                ),
            )
        }
        Kind::Redis => {
            let redis = RedisServer::start();
            let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
            (Some(redis), store)
        }
    };
    let text = config(
        up.addr,
        &format!("{extra}{store}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
    );
    (redis, Proxy::start(&text))
}

fn admin(proxy: &Proxy, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Connection", "close")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let reply =
        Conn::open(proxy.admin.unwrap()).exchange(method, &request(method, path, &headers, b""));
    (
        reply.status,
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    )
}

fn logged_in(proxy: &Proxy, user: &str) -> Browser {
    let mut b = proxy.browser();
    b.get(&format!("/login/{user}"));
    b
}

fn user_binding_and_revoke_others(kind: Kind) {
    let up = app();
    let (_redis, proxy) = proxy(&up, kind, "");
    let mut phone = logged_in(&proxy, "alice");
    let mut laptop = logged_in(&proxy, "alice");
    let mut bob = logged_in(&proxy, "bob");
    phone.get("/set/cart/[1]");
    phone.get("/");
    assert_eq!(
        up.last().header("x-session-user"),
        Some("alice"),
        "{kind:?}: the bound user is injected"
    );
    // The user can't be forged by a browser.
    let cookie = format!("sessionid={}", bob.cookie.clone().unwrap());
    Conn::open(proxy.addr).exchange(
        "GET",
        &request(
            "GET",
            "/",
            &[("Cookie", &cookie), ("X-Session-User", "alice")],
            b"",
        ),
    );
    assert_eq!(up.last().header("x-session-user"), Some("bob"));
    // Log out other devices from a third one.
    let mut tablet = proxy.browser();
    let reply = tablet.get("/login-only/alice");
    assert!(
        reply
            .headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-session")),
        "{kind:?}: nothing leaks"
    );
    for (name, browser) in [("phone", &mut phone), ("laptop", &mut laptop)] {
        browser.get("/");
        let seen = up.last();
        assert!(seen.is_new(), "{kind:?}: the {name} session was ended");
        assert_eq!(seen.header("x-session-user"), None);
        assert_eq!(seen.session(), json!({}));
    }
    tablet.get("/");
    assert_eq!(up.last().header("x-session-user"), Some("alice"));
    bob.get("/");
    assert_eq!(
        up.last().header("x-session-user"),
        Some("bob"),
        "{kind:?}: other users are untouched"
    );
    // Flush removes the binding.
    tablet.get("/logout");
    tablet.get("/");
    assert_eq!(up.last().header("x-session-user"), None);
    let (_, listed) = admin(&proxy, "GET", "/sessions?user=alice", Some(TOKEN));
    assert_eq!(listed["sessions"], json!([]), "{kind:?}");
}

#[test]
fn memory_store_binds_users_and_revokes_other_sessions() {
    user_binding_and_revoke_others(Kind::Memory);
}

#[test]
fn disk_store_binds_users_and_revokes_other_sessions() {
    user_binding_and_revoke_others(Kind::Disk);
}

#[test]
fn redis_store_binds_users_and_revokes_other_sessions() {
    user_binding_and_revoke_others(Kind::Redis);
}

fn admin_api(kind: Kind) {
    let up = app();
    let (_redis, proxy) = proxy(&up, kind, "");
    let mut first = logged_in(&proxy, "alice");
    let mut second = logged_in(&proxy, "alice");
    let _bob = logged_in(&proxy, "bob");
    second.get("/");
    let second_id = up.last().session_id().to_owned();

    assert_eq!(admin(&proxy, "GET", "/sessions?user=alice", None).0, 401);
    assert_eq!(
        admin(
            &proxy,
            "GET",
            "/sessions?user=alice",
            Some("wrong-token-0123456789abcdef-0123456789")
        )
        .0,
        401
    );
    assert_eq!(
        admin(&proxy, "GET", "/sessions", Some(TOKEN)).0,
        400,
        "user is required"
    );

    // The scheme is case-insensitive.
    let lower = format!("bearer {TOKEN}");
    let headers = [("Connection", "close"), ("Authorization", lower.as_str())];
    let reply = Conn::open(proxy.admin.unwrap()).exchange(
        "GET",
        &request("GET", "/sessions?user=alice", &headers, b""),
    );
    assert_eq!(reply.status, 200, "a lower-case `bearer`");

    let (status, listed) = admin(&proxy, "GET", "/sessions?user=alice", Some(TOKEN));
    assert_eq!(status, 200, "{kind:?}");
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{kind:?}: {listed}");
    assert!(
        !listed.to_string().contains(&second_id),
        "ids never leave the proxy"
    );
    assert!(sessions.iter().all(
        |s| s["created_ms"].as_u64().unwrap() > 0 && s["handle"].as_str().unwrap().len() == 32
    ));
    let second_handle = sessiongate::session::Id::parse(&second_id)
        .unwrap()
        .handle();
    assert!(sessions.iter().any(|s| s["handle"] == second_handle));

    let (status, body) = admin(
        &proxy,
        "DELETE",
        &format!("/sessions/{second_handle}?user=alice"),
        Some(TOKEN),
    );
    assert_eq!((status, body), (200, json!({"revoked": 1})));
    assert_eq!(
        admin(
            &proxy,
            "DELETE",
            &format!("/sessions/{second_handle}?user=alice"),
            Some(TOKEN)
        )
        .0,
        404
    );
    second.get("/");
    assert!(
        up.last().is_new(),
        "{kind:?}: the revoked session is gone at once"
    );
    first.get("/");
    assert!(!up.last().is_new());

    let (status, body) = admin(&proxy, "DELETE", "/sessions?user=alice", Some(TOKEN));
    assert_eq!((status, body), (200, json!({"revoked": 1})));
    first.get("/");
    assert!(up.last().is_new(), "{kind:?}");
    let (status, count) = admin(&proxy, "GET", "/sessions/count", Some(TOKEN));
    assert_eq!(status, 200);
    match kind {
        Kind::Redis => assert_eq!(count, json!({"sessions": null})),
        _ => assert_eq!(count, json!({"sessions": 1}), "{kind:?}: bob's"),
    }
    proxy.wait_for_log(&["sessions revoked through the admin API"]);
    let revoked = support::admin::metric(&proxy, "sessiongate_sessions_total{event=\"revoked\"}");
    assert_eq!(revoked, 2.0, "{kind:?}: both admin revocations are counted");
}

#[test]
fn the_admin_api_works_on_the_memory_store() {
    admin_api(Kind::Memory);
}

#[test]
fn the_admin_api_works_on_the_disk_store() {
    admin_api(Kind::Disk);
}

#[test]
fn the_admin_api_works_on_the_redis_store() {
    admin_api(Kind::Redis);
}

/// Last-seen is the previous visit's time on every store, also once the
/// absolute deadline is nearer than the idle timeout (Redis once derived it
/// from the TTL, which that deadline caps: it read an hour early here).
fn last_seen_near_the_absolute_deadline(kind: Kind) {
    let up = app();
    let session = "[session]\nidle_timeout = \"1h\"\nabsolute_timeout = \"30s\"\n";
    let (_redis, proxy) = proxy(&up, kind, session);
    let before = sessiongate::session::now_ms();
    let mut b = logged_in(&proxy, "alice");
    b.get("/");
    let injected: u64 = up
        .last()
        .header("x-session-last-seen")
        .expect("a stored session has a last-seen time")
        .parse()
        .unwrap();
    let after = sessiongate::session::now_ms();
    assert!(
        (before / 1000..=after / 1000).contains(&injected),
        "{kind:?}: last seen {injected}, expected between {} and {}",
        before / 1000,
        after / 1000
    );
    let (status, listed) = admin(&proxy, "GET", "/sessions?user=alice", Some(TOKEN));
    assert_eq!(status, 200);
    let listed_ms = listed["sessions"][0]["last_seen_ms"].as_u64().unwrap();
    assert!(
        (before..=sessiongate::session::now_ms()).contains(&listed_ms),
        "{kind:?}: admin API's last_seen_ms {listed_ms}, the session was seen after {before}"
    );
}

#[test]
fn last_seen_near_the_absolute_deadline_on_the_memory_store() {
    last_seen_near_the_absolute_deadline(Kind::Memory);
}

#[test]
fn last_seen_near_the_absolute_deadline_on_the_disk_store() {
    last_seen_near_the_absolute_deadline(Kind::Disk);
}

#[test]
fn last_seen_near_the_absolute_deadline_on_the_redis_store() {
    last_seen_near_the_absolute_deadline(Kind::Redis);
}

#[test]
fn the_admin_api_is_off_without_a_token() {
    let up = app();
    let proxy = Proxy::start(&config(up.addr, ""));
    assert_eq!(
        support::admin::get(&proxy, "/sessions?user=alice").status,
        404
    );
    let (code, err) = support::check(
        &config(
            up.addr,
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"short\"\n",
        ),
        &[],
    );
    assert_eq!(code, 64);
    assert!(err.contains("admin.token"), "{err}");
}

#[test]
fn the_sessions_subcommand_calls_the_admin_api() {
    let up = app();
    let (_guard, proxy) = proxy(&up, Kind::Memory, "");
    // The CLI reads the admin address from the config: give it the real one.
    let text = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .replace(
            "127.0.0.1:0\"\ntoken",
            &format!("{}\"\ntoken", proxy.admin.unwrap()),
        );
    let cli_config = proxy.dir.path().join("cli.toml");
    std::fs::write(&cli_config, text).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(support::binary())
            .args(args)
            .arg("--config")
            .arg(&cli_config)
            .env_remove("SESSIONGATE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    logged_in(&proxy, "alice");
    logged_in(&proxy, "alice");
    let (ok, out, err) = run(&["sessions", "list", "--user", "alice"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2);
    let handle = listed["sessions"][0]["handle"].as_str().unwrap().to_owned();
    let (ok, out, _) = run(&[
        "sessions",
        "revoke",
        "--user",
        "alice",
        "--session",
        &handle,
    ]);
    assert!(ok && out.contains("\"revoked\":1"), "{out}");
    let (ok, out, _) = run(&["sessions", "count"]);
    assert!(ok && out.contains("\"sessions\":1"), "{out}");
    let (ok, out, _) = run(&["sessions", "revoke", "--user", "alice"]);
    assert!(ok && out.contains("\"revoked\":1"), "{out}");
    let (ok, _, err) = run(&[
        "sessions",
        "revoke",
        "--user",
        "alice",
        "--session",
        &handle,
    ]);
    assert!(!ok && err.contains("404"), "{err}");
}

#[test]
fn metadata_is_injected_read_only() {
    let up = app();
    let proxy = Proxy::start(&config(up.addr, "[session]\nrecord_client = true\n"));
    let mut b = proxy.browser();
    let before = sessiongate::session::now_ms() / 1000;
    Conn::open(proxy.addr).exchange(
        "GET",
        &request(
            "GET",
            "/",
            &[("X-Session-Created", "1"), ("X-Session-Agent", "spoof")],
            b"",
        ),
    );
    let first = up.last();
    assert!(
        first
            .header("x-session-created")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= before
    );
    assert_eq!(
        first.header("x-session-agent"),
        None,
        "spoofed metadata is stripped"
    );
    let cookie_reply = b.request(
        "GET",
        "/set/k/1",
        &[("User-Agent", "Browser/1.0 (test)")],
        b"",
    );
    assert_eq!(cookie_reply.status, 200);
    b.request("GET", "/", &[("User-Agent", "Other/2.0")], b"");
    let seen = up.last();
    let created: u64 = seen.header("x-session-created").unwrap().parse().unwrap();
    let last_seen: u64 = seen.header("x-session-last-seen").unwrap().parse().unwrap();
    assert!(
        created >= before && last_seen >= created,
        "{created} {last_seen}"
    );
    assert_eq!(seen.header("x-session-client"), Some("127.0.0.1"));
    assert_eq!(
        seen.header("x-session-agent"),
        Some("Browser/1.0 (test)"),
        "recorded at creation, not updated"
    );
    // The login keeps the creation time.
    b.get("/login/alice");
    b.get("/");
    assert_eq!(
        up.last()
            .header("x-session-created")
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        created
    );
}

/// The code block after `marker` in the README.
fn readme_snippet(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme.find(marker).expect("marker")..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// The CGI environment an upstream would see for `r`.
fn cgi_env(r: &Recorded) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(n, v)| {
            (
                format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_")),
                v.clone(),
            )
        })
        .collect();
    env.push(("REQUEST_METHOD".into(), r.method.clone()));
    env.push(("REQUEST_URI".into(), r.target.clone()));
    env
}

fn python_verifies(r: &Recorded, key: &str) -> bool {
    let program = format!(
        "{}\nimport json, sys\nenviron = json.load(sys.stdin)\nprint('ok' if from_sessiongate(environ, {key:?}.encode()) else 'refused')\n",
        readme_snippet("<!-- verifier:python -->")
    );
    let env: serde_json::Map<String, Value> = cgi_env(r)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        Value::Object(env).to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

fn php_verifies(r: &Recorded, key: &str) -> bool {
    let program = format!(
        "{}\necho from_sessiongate(getenv('SIGNING_KEY')) ? 'ok' : 'refused';",
        readme_snippet("<!-- verifier:php -->")
    );
    let out = Command::new("php")
        .arg("-r")
        .arg(program)
        .env_clear()
        .env("SIGNING_KEY", key)
        .envs(cgi_env(r))
        .output()
        .expect("php (apt-get install -y php-cli; bash .ci/run does)");
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

fn shell_verifies(r: &Recorded, key: &str) -> bool {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{}\necho verified",
            readme_snippet("<!-- verifier:shell -->")
        ))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("SIGNING_KEY", key)
        .envs(cgi_env(r))
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).contains("verified")
}

#[test]
fn injected_headers_are_signed_and_the_readme_verifiers_accept_only_genuine_requests() {
    let up = app();
    let signing = format!("signing_key = \"{SIGNING_KEY}\"");
    let proxy = Proxy::start(&config_with_upstream(up.addr, &signing, ""));
    let mut b = proxy.browser();
    b.get("/set/k/\"v\"");
    // A value ending in `=` (base64 padding) must survive the shell's parsing.
    b.get("/login/dXNlcjE=");
    b.get("/page?x=1&y=%2F");
    let genuine = up.last();
    assert!(
        genuine
            .header("x-session-signature")
            .unwrap()
            .starts_with("t=")
    );
    assert!(
        python_verifies(&genuine, SIGNING_KEY),
        "the Python verifier accepts a signed request"
    );
    assert!(
        shell_verifies(&genuine, SIGNING_KEY),
        "the shell verifier accepts a signed request"
    );
    // Tampering with any injected header, the path, or the key is caught.
    let mut forged = genuine.clone();
    for (n, v) in forged.headers.iter_mut() {
        if n == "x-session-user" {
            *v = "mallory".to_owned();
        }
    }
    let mut moved = genuine.clone();
    moved.target = "/admin".to_owned();
    let mut unsigned = genuine.clone();
    unsigned.headers.retain(|(n, _)| n != "x-session-signature");
    for (what, r, key) in [
        ("forged user", &forged, SIGNING_KEY),
        ("other path", &moved, SIGNING_KEY),
        ("no signature", &unsigned, SIGNING_KEY),
        (
            "wrong key",
            &genuine,
            "another-key-0123456789abcdef-0123456789ab",
        ),
    ] {
        assert!(!python_verifies(r, key), "python accepted {what}");
        assert!(!shell_verifies(r, key), "shell accepted {what}");
        assert!(!php_verifies(r, key), "php accepted {what}");
    }
    // A signature sent by the browser is stripped and replaced by the real one.
    let spoof = Conn::open(proxy.addr).exchange(
        "GET",
        &request("GET", "/", &[("X-Session-Signature", "t=1,v1=00")], b""),
    );
    assert_eq!(spoof.status, 200);
    assert!(
        python_verifies(&up.last(), SIGNING_KEY),
        "a browser's own signature header is replaced"
    );
}

#[test]
fn the_recorded_client_is_the_rightmost_address_no_trusted_proxy_vouches_for() {
    let up = app();
    for (trusted, client) in [
        // The browser wrote 6.6.6.6 itself; 127.0.0.1 (trusted) says 10.0.0.5.
        (r#"["127.0.0.1"]"#, "10.0.0.5"),
        (r#"["127.0.0.1", "10.0.0.0/8"]"#, "6.6.6.6"),
    ] {
        let extra = format!("trusted_proxies = {trusted}\n[session]\nrecord_client = true\n");
        let proxy = Proxy::start(&config(up.addr, &extra));
        let mut b = Browser::new(proxy.addr);
        b.request(
            "GET",
            "/set/k/1",
            &[("X-Forwarded-For", "6.6.6.6, 10.0.0.5")],
            b"",
        );
        b.get("/");
        assert_eq!(
            up.last().header("x-session-client"),
            Some(client),
            "{trusted}"
        );
    }
}
