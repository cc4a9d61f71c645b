//! Environment overrides for containers: `SESSIONGATE_<KEY>` for top-level
//! keys and `SESSIONGATE_<SECTION>_<KEY>` for keys in a section, upper-cased
//! (`SESSIONGATE_COOKIE_SAME_SITE` sets `[cookie] same_site`).
//!
//! Overrides are merged into the parsed TOML table before validation, so they
//! go through exactly the checks the file does. A `SESSIONGATE_` variable that
//! names no key is an error, like an unknown key in the file.

use super::Error;

pub const ENV_PREFIX: &str = "SESSIONGATE_";

/// Variables with the prefix that are not config keys.
const RESERVED: &[&str] = &["SESSIONGATE_CONFIG"];

/// The mutually exclusive ways to give the secret.
const SECRET_SOURCES: [&str; 3] = ["value", "env", "file"];

/// How a variable's text becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
    Integer,
    /// Integer seconds, or a duration string such as "90s".
    Duration,
    /// Comma-separated list of strings.
    List,
}

/// Every overridable key: (section, key, kind). Kept beside the raw structs;
/// the test below proves each entry is a key the file format accepts.
const KEYS: &[(&str, &str, Kind)] = &[
    ("", "listen", Kind::Text),
    ("", "upstream", Kind::Text),
    ("", "header_prefix", Kind::Text),
    ("", "trusted_proxies", Kind::List),
    ("upstream", "url", Kind::Text),
    ("upstream", "connect_timeout", Kind::Duration),
    ("upstream", "timeout", Kind::Duration),
    ("upstream", "signing_key", Kind::Text),
    ("upstream", "paired_connections", Kind::Integer),
    ("secret", "value", Kind::Text),
    ("secret", "env", Kind::Text),
    ("secret", "file", Kind::Text),
    ("secret", "previous", Kind::List),
    ("cookie", "name", Kind::Text),
    ("cookie", "path", Kind::Text),
    ("cookie", "domain", Kind::Text),
    ("cookie", "secure", Kind::Bool),
    ("cookie", "http_only", Kind::Bool),
    ("cookie", "same_site", Kind::Text),
    ("cookie", "max_age", Kind::Duration),
    ("cookie", "forward_to_upstream", Kind::Bool),
    ("session", "create", Kind::Text),
    ("session", "idle_timeout", Kind::Duration),
    ("session", "absolute_timeout", Kind::Duration),
    ("session", "max_bytes", Kind::Integer),
    ("session", "max_sessions", Kind::Integer),
    ("session", "max_operations", Kind::Integer),
    ("store", "kind", Kind::Text),
    ("store", "path", Kind::Text),
    ("store", "durability", Kind::Text),
    ("store", "max_file_bytes", Kind::Integer),
    ("store", "cache_bytes", Kind::Integer),
    ("store", "url", Kind::Text),
    ("store", "key_prefix", Kind::Text),
    ("store", "cluster", Kind::Bool),
    ("store", "timeout", Kind::Duration),
    ("store", "touch_interval", Kind::Duration),
    ("session", "skip_paths", Kind::List),
    ("session", "record_client", Kind::Bool),
    ("server", "header_read_timeout", Kind::Duration),
    ("server", "keep_alive_timeout", Kind::Duration),
    ("server", "body_read_timeout", Kind::Duration),
    ("server", "shutdown_grace", Kind::Duration),
    ("server", "max_header_bytes", Kind::Integer),
    ("server", "max_body_bytes", Kind::Integer),
    ("server", "max_connections", Kind::Integer),
    ("server", "drop_underscore_headers", Kind::Bool),
    ("server", "workers", Kind::Integer),
    ("tls", "cert", Kind::Text),
    ("tls", "key", Kind::Text),
    ("admin", "listen", Kind::Text),
    ("admin", "token", Kind::Text),
    ("log", "format", Kind::Text),
];

fn var_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
    } else {
        format!(
            "{ENV_PREFIX}{}_{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }
}

/// Which variable set which key: (`section.key` or `key`, variable name).
pub type Overridden = Vec<(String, String)>;

/// Merges every `SESSIONGATE_*` variable of `vars` into `table`; says
/// which keys they set.
pub fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Overridden, Error> {
    let vars: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    // The variable that holds the secret itself may carry our prefix; it is
    // named by `SESSIONGATE_SECRET_ENV` if that is set, else by the file.
    let secret_var = vars
        .iter()
        .find(|(name, _)| name == "SESSIONGATE_SECRET_ENV")
        .map(|(_, value)| value.trim().to_owned())
        .or_else(|| {
            table
                .get("secret")
                .and_then(|s| s.get("env"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        });
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| !RESERVED.contains(&name.as_str()) && Some(name) != secret_var.as_ref())
        .collect();
    // Deterministic order, so that `upstream` is set before `upstream.*`.
    vars.sort();
    refuse_conflicts(&vars)?;
    let mut overridden = Overridden::new();
    for (var, text) in vars {
        let Some(&(section, key, kind)) = KEYS.iter().find(|(s, k, _)| var_name(s, k) == var)
        else {
            return Err(Error::Env {
                var,
                message: "names no config key (see the README's Environment overrides)".to_owned(),
            });
        };
        let value = to_value(kind, &text).map_err(|message| Error::Env {
            var: var.clone(),
            message,
        })?;
        set(table, section, key, value);
        let path = match section {
            // Over an `[upstream]` table the shorthand set only its url.
            "" if key == "upstream" && table.get(key).is_some_and(toml::Value::is_table) => {
                "upstream.url".to_owned()
            }
            "" => key.to_owned(),
            _ => format!("{section}.{key}"),
        };
        overridden.push((path, var));
    }
    Ok(overridden)
}

/// The variable behind the value a config error names, if one set it: the
/// error's key is the variable's key or a part of it (`upstream.url` for
/// `SESSIONGATE_UPSTREAM`, `secret.previous[1]` for
/// `SESSIONGATE_SECRET_PREVIOUS`).
pub fn source_of<'a>(overridden: &'a Overridden, key: &str) -> Option<&'a str> {
    let within = |path: &str| {
        key == path
            || key
                .strip_prefix(path)
                .is_some_and(|r| r.starts_with(['.', '[']))
    };
    overridden
        .iter()
        .rev()
        .find(|(path, _)| within(path))
        .map(|(_, var)| var.as_str())
}

/// Two variables that set the same thing (the upstream's url, by its
/// shorthand or its key; the secret, by any two of its sources) are an
/// error naming both: otherwise one would win silently by name order.
fn refuse_conflicts(vars: &[(String, String)]) -> Result<(), Error> {
    let groups = [
        (
            vec![var_name("", "upstream"), var_name("upstream", "url")],
            "the upstream's url",
        ),
        (
            SECRET_SOURCES.map(|key| var_name("secret", key)).to_vec(),
            "the secret",
        ),
    ];
    for (group, what) in groups {
        let mut given = vars
            .iter()
            .map(|(name, _)| name)
            .filter(|name| group.contains(name));
        if let (Some(first), Some(second)) = (given.next(), given.next()) {
            return Err(Error::Env {
                var: first.clone(),
                message: format!("{second} is set too; both set {what}: set only one"),
            });
        }
    }
    Ok(())
}

fn to_value(kind: Kind, text: &str) -> Result<toml::Value, String> {
    let text = text.trim();
    Ok(match kind {
        Kind::Text => toml::Value::String(text.to_owned()),
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("`{text}`: expected true or false")),
        },
        Kind::Integer => toml::Value::Integer(
            text.parse()
                .map_err(|_| format!("`{text}`: expected a non-negative integer"))?,
        ),
        Kind::Duration => match text.parse::<i64>() {
            Ok(seconds) => toml::Value::Integer(seconds),
            Err(_) => toml::Value::String(text.to_owned()),
        },
        Kind::List => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    if section.is_empty() {
        match table.get_mut(key) {
            // `SESSIONGATE_UPSTREAM` over an `[upstream]` table replaces its
            // url only: the file's timeouts and signing key still hold.
            Some(toml::Value::Table(upstream)) if key == "upstream" => {
                upstream.insert("url".to_owned(), value);
            }
            _ => {
                table.insert(key.to_owned(), value);
            }
        }
        return;
    }
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    // `upstream = "http://..."` is shorthand for `[upstream] url = ...`.
    if let toml::Value::String(url) = entry {
        let mut expanded = toml::Table::new();
        expanded.insert("url".to_owned(), toml::Value::String(std::mem::take(url)));
        *entry = toml::Value::Table(expanded);
    }
    if let toml::Value::Table(table) = entry {
        // A secret from the environment replaces the file's source of it.
        if section == "secret" && SECRET_SOURCES.contains(&key) {
            table.retain(|k, _| !SECRET_SOURCES.contains(&k));
        }
        table.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = r#"
        upstream = "http://127.0.0.1:3000"
        [secret]
        value = "0123456789abcdef0123456789abcdef"
    "#;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, Error> {
        parse_text(BASE, vars)
    }

    fn parse_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, Error> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse(Path::new("t.toml"), text, vars)
    }

    /// The message of the error `text` and `vars` give.
    fn error_of(text: &str, vars: &[(&str, &str)]) -> String {
        parse_text(text, vars).unwrap_err().to_string()
    }

    #[test]
    fn every_listed_key_is_accepted_by_the_file_format() {
        for &(section, key, kind) in KEYS {
            let sample = match kind {
                Kind::Text => "x",
                Kind::Bool => "true",
                Kind::Integer => "7",
                Kind::Duration => "90s",
                Kind::List => "a,b",
            };
            let mut table: toml::Table = BASE.parse().unwrap();
            set(&mut table, section, key, to_value(kind, sample).unwrap());
            if let Err((k, m)) = super::super::raw::RawConfig::from_table(table) {
                panic!(
                    "{}: rejected by the file format at {k}: {m}",
                    var_name(section, key)
                );
            }
        }
    }

    #[test]
    fn overrides_replace_file_values_and_expand_the_upstream_shorthand() {
        let config = parse(&[
            ("SESSIONGATE_LISTEN", "0.0.0.0:9000"),
            ("SESSIONGATE_UPSTREAM_TIMEOUT", "3s"),
            ("SESSIONGATE_COOKIE_SECURE", "false"),
            ("SESSIONGATE_SESSION_MAX_BYTES", "100"),
            ("SESSIONGATE_CONFIG", "/ignored.toml"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.upstream.authority.as_str(), "127.0.0.1:3000");
        assert_eq!(config.upstream.timeout.as_secs(), 3);
        assert!(!config.cookie.secure);
        assert_eq!(config.session.max_bytes, 100);
    }

    #[test]
    fn a_secret_from_the_environment_replaces_the_files_secret_source() {
        let text = "upstream = \"http://127.0.0.1:3000\"\n[secret]\nenv = \"UNSET_VARIABLE_XYZ\"\n";
        assert!(
            parse_text(
                text,
                &[(
                    "SESSIONGATE_SECRET_VALUE",
                    "0123456789abcdef0123456789abcdef"
                )]
            )
            .is_ok()
        );
    }

    #[test]
    fn two_variables_that_set_the_same_thing_are_refused_naming_both() {
        let secret = "0123456789abcdef0123456789abcdef";
        for pair in [
            [
                ("SESSIONGATE_UPSTREAM", "http://127.0.0.1:4000"),
                ("SESSIONGATE_UPSTREAM_URL", "http://127.0.0.1:5000"),
            ],
            [
                ("SESSIONGATE_SECRET_VALUE", secret),
                ("SESSIONGATE_SECRET_FILE", "/no/such/file"),
            ],
            [
                ("SESSIONGATE_SECRET_ENV", "SOME_VARIABLE"),
                ("SESSIONGATE_SECRET_VALUE", secret),
            ],
        ] {
            let err = parse(&pair).unwrap_err().to_string();
            assert!(
                err.contains(pair[0].0) && err.contains(pair[1].0) && err.contains("only one"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_upstream_shorthand_over_an_upstream_table_replaces_only_its_url() {
        let text = "[upstream]\nurl = \"http://127.0.0.1:3000\"\ntimeout = \"1s\"\n\
                    [secret]\nvalue = \"0123456789abcdef0123456789abcdef\"\n";
        let config =
            parse_text(text, &[("SESSIONGATE_UPSTREAM", "http://127.0.0.1:4000")]).unwrap();
        assert_eq!(config.upstream.authority.as_str(), "127.0.0.1:4000");
        assert_eq!(config.upstream.timeout.as_secs(), 1);
    }

    #[test]
    fn a_wrong_value_from_a_variable_is_blamed_on_the_variable() {
        for (var, value) in [
            ("SESSIONGATE_LISTEN", "127.0.0.1:99999"),
            ("SESSIONGATE_SECRET_VALUE", "short"),
            ("SESSIONGATE_SESSION_MAX_BYTES", "-1"),
            ("SESSIONGATE_UPSTREAM_URL", "ftp://x"),
        ] {
            let err = parse(&[(var, value)]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("environment variable {var}")),
                "{err}"
            );
        }
        // A wrong value in the file is still the file's, even beside a
        // variable of the same section.
        let text = "upstream = \"http://127.0.0.1:3000\"\n[secret]\nvalue = \"short\"\n";
        let err = error_of(
            text,
            &[(
                "SESSIONGATE_SECRET_PREVIOUS",
                "0123456789abcdef0123456789abcdef",
            )],
        );
        assert!(
            err.starts_with("config file t.toml: key `secret.value`"),
            "{err}"
        );
        let text = "[upstream]\nurl = \"http://127.0.0.1:3000\"\ntimeout = \"bogus\"\n\
                    [secret]\nvalue = \"0123456789abcdef0123456789abcdef\"\n";
        let err = error_of(text, &[("SESSIONGATE_UPSTREAM", "http://127.0.0.1:4000")]);
        assert!(
            err.starts_with("config file t.toml: key `upstream.timeout`"),
            "{err}"
        );
        let text = "upstream = \"http://127.0.0.1:3000\"\nlisten = \"nope\"\n\
                    [secret]\nvalue = \"0123456789abcdef0123456789abcdef\"\n";
        let err = error_of(text, &[("SESSIONGATE_COOKIE_SECURE", "false")]);
        assert!(err.starts_with("config file t.toml: key `listen`"), "{err}");
    }

    #[test]
    fn unknown_variable_is_an_error_naming_it() {
        let err = parse(&[("SESSIONGATE_COOKIE_NMAE", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SESSIONGATE_COOKIE_NMAE"), "{err}");
    }

    #[test]
    fn bad_value_is_an_error_naming_the_variable() {
        let err = parse(&[("SESSIONGATE_COOKIE_SECURE", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SESSIONGATE_COOKIE_SECURE") && err.contains("true or false"),
            "{err}"
        );
    }
}
