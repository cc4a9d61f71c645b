//! Logs: a start-up summary, a warning per rejected operation, and never a
//! cookie value, session id or secret.

mod support;

use support::{Proxy, Response, SECRET, Upstream, config};

#[test]
fn no_cookie_session_id_or_secret_ever_reaches_the_log() {
    let up = Upstream::start(|r| match r.target.as_str() {
        "/set" => Response::ok().header("X-Session-Set", "k=1"),
        "/bad" => Response::ok().header("X-Session-Set", "k=bad"),
        "/rotate" => Response::ok().header("X-Session-Rotate", "1"),
        "/flush" => Response::ok().header("X-Session-Flush", "1"),
        _ => Response::status(500).header("X-Session-Set", "k=2"),
    });
    let proxy = Proxy::start(&config(up.addr, ""));
    let mut b = proxy.browser();
    let mut secrets = vec![SECRET.to_owned()];
    for path in ["/set", "/bad", "/rotate", "/fail", "/flush", "/set"] {
        b.get(path);
        secrets.push(up.last().session_id().to_owned());
        if let Some(c) = &b.cookie {
            secrets.push(c.clone());
        }
    }
    let mut tampered = b.clone();
    tampered.cookie = Some("forged.123.value".to_owned());
    tampered.get("/");
    proxy.wait_for_log(&["operations rejected", "/bad"]);
    let logs = proxy.logs().join("\n");
    assert!(logs.contains("sessiongate listening"), "start-up summary");
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "the log contains a secret value: {s}\n{logs}"
        );
    }
    assert!(!logs.contains("forged.123.value"));
}
