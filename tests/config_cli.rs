//! `sessiongate check` and start-up with broken configs: clear messages that
//! name the key and what is accepted, exit status 64, nothing bound.

mod support;

use support::{SECRET, check};

const GOOD: &str = r#"
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:3000"
[secret]
value = "test-secret-0123456789abcdef-0123456789"
"#;

#[test]
fn a_valid_config_passes_check() {
    let (code, err) = check(GOOD, &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_shipped_example_configs_pass_check() {
    for file in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, err) = support::check_file(&path, &[("SESSIONGATE_SECRET_VALUE", SECRET)]);
            assert_eq!(code, 0, "{}: {err}", path.display());
        }
    }
}

/// The README's configuration table and config/sessiongate.toml list the
/// same keys: the file claims to show every key, set or commented out.
#[test]
fn the_complete_example_config_shows_every_key_of_the_readme_table() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/config/sessiongate.toml")).unwrap();
    let table = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("### Environment overrides").next())
        .unwrap();
    let mut keys = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap();
        let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        // `secret.value` / `.env` / `.file` and `tls.cert`, `tls.key`.
        let section = names[0].split_once('.').map(|(s, _)| s);
        for name in &names {
            match (section, name.strip_prefix('.')) {
                (Some(section), Some(key)) => keys.push(format!("{section}.{key}")),
                _ => keys.push((*name).to_owned()),
            }
        }
    }
    assert!(keys.len() > 50, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| !shows_key(&example, key))
        .collect();
    assert!(
        missing.is_empty(),
        "config/sessiongate.toml lacks {missing:?}"
    );
}

/// Whether `text` sets `key` (`section.name` or a top-level name), or shows
/// it commented out, in its section.
fn shows_key(text: &str, key: &str) -> bool {
    let (section, name) = key.split_once('.').unwrap_or(("", key));
    let mut current = "";
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header;
        } else if current == section && line.split_once('=').is_some_and(|(k, _)| k.trim() == name)
        {
            return true;
        }
    }
    // The short form of a table key, `upstream = "http://..."`.
    section.is_empty() && text.contains(&format!("`{name} = "))
}

/// Each (extra TOML after `GOOD`, parts of the expected message) is refused.
fn assert_each_refused(cases: &[(&str, &[&str])]) {
    for (extra, expect) in cases {
        assert_refused(&format!("{GOOD}\n{extra}"), &[], expect);
    }
}

fn assert_refused(text: &str, env: &[(&str, &str)], expect: &[&str]) {
    let (code, err) = check(text, env);
    assert_eq!(code, 64, "accepted: {text}");
    for part in expect {
        assert!(err.contains(part), "message {err:?} lacks {part:?}");
    }
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    assert_refused(
        &format!("{GOOD}\n[cookie]\nnmae = \"x\"\n"),
        &[],
        &["cookie.nmae", "unknown field", "`name`"],
    );
    assert_refused(&format!("lisen = \"x\"\n{GOOD}"), &[], &["lisen"]);
}

#[test]
fn short_secrets_are_refused_at_start_up() {
    let text = GOOD.replace("test-secret-0123456789abcdef-0123456789", "too-short");
    assert_refused(&text, &[], &["secret", "at least 32"]);
}

#[test]
fn bad_values_name_the_key_and_what_is_accepted() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[session]\nidle_timeout = \"soon\"\n",
            &["session.idle_timeout", "90s"],
        ),
        (
            "[session]\ncreate = \"sometimes\"\n",
            &["session.create", "eager", "lazy"],
        ),
        ("[session]\nmax_bytes = 0\n", &["session.max_bytes"]),
        (
            "[cookie]\nsame_site = \"loose\"\n",
            &["cookie.same_site", "strict"],
        ),
        (
            "[cookie]\nname = \"__Host-x\"\nsecure = false\n",
            &["cookie.name", "__Host-"],
        ),
        ("[store]\nkind = \"floppy\"\n", &["store.kind", "memory"]),
        (
            "[store]\ncache_bytes = 1024\n",
            &["store.cache_bytes", "only used with store.kind = \"disk\""],
        ),
        ("[log]\nformat = \"xml\"\n", &["log.format", "json"]),
        ("[admin]\nlisten = \"nowhere\"\n", &["admin.listen"]),
        (
            "[cookie]\nmax_age = 0\n",
            &["cookie.max_age", "browser session"],
        ),
    ];
    assert_each_refused(cases);
    assert_refused(
        &GOOD.replace("http://127.0.0.1:3000", "ftp://x"),
        &[],
        &["upstream.url", "http://"],
    );
    assert_refused(&GOOD.replace("127.0.0.1:0", "localhost"), &[], &["listen"]);
    assert_refused(
        &GOOD.replace("\"http://127.0.0.1:3000\"", "3000"),
        &[],
        &["upstream", "a URL such as"],
    );
    for (prefix, taken) in [("Cookie", "`cookie`"), ("Content", "`content-")] {
        let text = format!("header_prefix = \"{prefix}\"\n{GOOD}");
        assert_refused(&text, &[], &["header_prefix", taken]);
    }
    for bad in [
        "http://127.0.0.1:99999",
        "http://:3000",
        "http://127.0.0.1:0",
    ] {
        assert_refused(
            &GOOD.replace("http://127.0.0.1:3000", bad),
            &[],
            &["upstream.url", bad],
        );
    }
    assert_refused(
        &(GOOD.replace("127.0.0.1:0", "127.0.0.1:8080") + "[admin]\nlisten = \"127.0.0.1:8080\"\n"),
        &[],
        &["admin.listen", "its own address"],
    );
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let (code, err) = check(&format!("{GOOD}\n[cookie\n"), &[]);
    assert_eq!(code, 64);
    assert!(err.contains("c.toml") && err.contains("line"), "{err}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (code, err) =
        support::check_file(std::path::Path::new("/nonexistent/sessiongate.toml"), &[]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/sessiongate.toml"), "{err}");
}

#[test]
fn environment_variables_override_the_file_and_are_validated() {
    let without_secret = "upstream = \"http://127.0.0.1:3000\"\n";
    let (code, err) = check(without_secret, &[("SESSIONGATE_SECRET_VALUE", SECRET)]);
    assert_eq!(code, 0, "{err}");
    assert_refused(
        GOOD,
        &[("SESSIONGATE_SESSION_CREATE", "never")],
        &["session.create"],
    );
    assert_refused(
        GOOD,
        &[("SESSIONGATE_STORE_CACHE_BYTES", "lots")],
        &["SESSIONGATE_STORE_CACHE_BYTES"],
    );
    assert_refused(
        GOOD,
        &[("SESSIONGATE_COOKIE_NMAE", "x")],
        &["SESSIONGATE_COOKIE_NMAE"],
    );
}

#[test]
fn the_proxy_refuses_to_start_on_a_bad_config_with_status_64() {
    let out = std::process::Command::new(support::binary())
        .args(["--config", "/nonexistent.toml"])
        .env_remove("SESSIONGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn check_refuses_what_start_up_would_refuse() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[tls]\ncert = \"/etc/passwd\"\nkey = \"/etc/passwd\"\n",
            &["tls.cert", "/etc/passwd"],
        ),
        (
            "[store]\nkind = \"disk\"\npath = \"/nonexistent-dir/sessions.db\"\n",
            &["store.path", "/nonexistent-dir", "does not exist"],
        ),
        (
            "[store]\nkind = \"disk\"\npath = \"/tmp\"\n",
            &["store.path", "/tmp is a directory"],
        ),
        // Root's permission bits do not stop it; /proc takes no new files.
        (
            "[store]\nkind = \"disk\"\npath = \"/proc/sessions.db\"\n",
            &["store.path", "cannot create files in the directory /proc"],
        ),
    ];
    assert_each_refused(cases);
}

/// Start-up's own refusals name the config file, like the file's errors do.
#[test]
fn checks_beyond_the_file_name_the_file_too() {
    let (code, err) = check(
        &format!("{GOOD}\n[store]\nkind = \"disk\"\npath = \"/nonexistent-dir/s.db\"\n"),
        &[],
    );
    assert_eq!(code, 64);
    assert!(err.starts_with("sessiongate: config file "), "{err}");
    assert!(err.contains(".toml: store.path"), "{err}");
}

/// A directory that takes files passes, and the probe leaves nothing behind.
#[test]
fn a_writable_disk_store_directory_passes_check_and_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let (code, err) = check(
        &format!(
            "{GOOD}\n[store]\nkind = \"disk\"\npath = \"{}\"\n",
            path.display()
        ),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The variable `SESSIONGATE_SECRET_ENV` names holds the secret, not a
/// key, even when it carries the prefix or is a key's own name.
#[test]
fn a_secret_variable_named_from_the_environment_is_no_config_key() {
    let text = "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:3000\"\n";
    for holder in ["SESSIONGATE_KEY", "SESSIONGATE_SECRET_VALUE"] {
        let (code, err) = check(
            text,
            &[("SESSIONGATE_SECRET_ENV", holder), (holder, SECRET)],
        );
        assert_eq!(code, 0, "{holder}: {err}");
    }
}
