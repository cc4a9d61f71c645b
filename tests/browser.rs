//! A real browser end to end: headless Chromium, driven by playwright-core
//! (tests/browser/e2e.mjs), opens the bundled demo through the proxy, logs
//! in, reloads, sees the session, logs out. Needs Debian's `chromium`,
//! Node.js and `npm ci` in tests/browser (bash .ci/run installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::poll;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo example binary, built on demand.
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let demo = profile_dir.join("examples").join("demo");
    if !demo.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "--example", "demo"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success(), "cargo build --example demo failed");
    }
    demo
}

#[test]
fn a_real_browser_logs_in_reloads_and_logs_out_through_the_demo() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` (bash .ci/run does) to install playwright-core"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "install Chromium: apt-get install -y chromium (bash .ci/run does)"
    );

    let (proxy_port, app_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("demo.toml");
    let demo_config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"))
            .unwrap()
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy_port}"))
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{app_port}"))
            .replace("127.0.0.1:9090", "off");
    std::fs::write(&config, demo_config).unwrap();
    let mut demo = Command::new(demo_binary())
        .env("DEMO_CONFIG", &config)
        .env("DEMO_APP", format!("127.0.0.1:{app_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = poll(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", proxy_port))
            .ok()
            .map(|_| ())
    });
    assert!(up.is_some(), "the demo did not start");

    let out = Command::new("node")
        .arg(browser_dir.join("e2e.mjs"))
        .arg(format!("http://127.0.0.1:{proxy_port}/"))
        .current_dir(&browser_dir)
        .output()
        .expect("node (apt-get install -y nodejs)");
    let _ = demo.kill();
    let _ = demo.wait();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("browser e2e: ok"), "{report}");
}
