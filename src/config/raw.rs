//! The file format as written by users, and its validation into [`Config`].
//!
//! Every struct refuses unknown keys. Defaults live here, next to the key
//! they belong to, and are repeated in the README's config reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use super::{
    AdminConfig, AdminToken, Config, CookieConfig, CreateMode, Durability, LogFormat,
    MAX_SESSION_BYTES, MIN_SECRET_BYTES, Secrets, ServerConfig, SessionConfig, StoreConfig,
    TlsConfig, UpstreamConfig,
};
use crate::cookie::{SameSite, SecretKey};
use crate::protocol::HeaderPrefix;

/// A duration as users write it: integer seconds, or a string such as
/// `"90s"`, `"30m"`, `"14d"`, `"500ms"`.
#[derive(Debug, Clone, Copy)]
pub struct RawDuration(pub Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Seconds(u64),
            Text(String),
        }
        let accepted =
            "expected integer seconds or a string such as \"90s\", \"30m\", \"14d\", at most 3650d";
        match Form::deserialize(d).map_err(|_| serde::de::Error::custom(accepted))? {
            Form::Seconds(s) => parse_duration(&s.to_string())
                .map(RawDuration)
                .ok_or_else(|| serde::de::Error::custom(format!("{s}: {accepted}"))),
            Form::Text(t) => parse_duration(&t)
                .map(RawDuration)
                .ok_or_else(|| serde::de::Error::custom(format!("`{t}`: {accepted}"))),
        }
    }
}

/// The disk store's read cache: 64 MiB holds about 150,000 sessions of
/// 200 bytes, the working set of a busy site, at a small cost in RSS.
const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Longest accepted duration: deadlines are added to clocks, and ten years
/// is beyond any session or timeout anyone means.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let d = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).ok()?,
    };
    (d <= MAX_DURATION).then_some(d)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    listen: Option<String>,
    upstream: Option<RawUpstream>,
    header_prefix: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    secret: Option<RawSecret>,
    #[serde(default)]
    cookie: RawCookie,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    server: RawServer,
    tls: Option<RawTls>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
}

/// `upstream = "http://host:port"` or an `[upstream]` table.
enum RawUpstream {
    Url(String),
    Table(RawUpstreamTable),
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum reports any
/// error inside the table as "matched no variant" at `upstream`, hiding
/// which key (`upstream.timeout`) was wrong and why.
impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RawUpstream;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL such as \"http://127.0.0.1:3000\", or an [upstream] table")
            }

            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream::Url(url.to_owned()))
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<RawUpstream, M::Error> {
                let table = RawUpstreamTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawUpstream::Table(table))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTable {
    url: Option<String>,
    connect_timeout: Option<RawDuration>,
    timeout: Option<RawDuration>,
    signing_key: Option<String>,
    paired_connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    value: Option<String>,
    env: Option<String>,
    file: Option<String>,
    #[serde(default)]
    previous: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    name: Option<String>,
    path: Option<String>,
    domain: Option<String>,
    secure: Option<bool>,
    http_only: Option<bool>,
    same_site: Option<String>,
    max_age: Option<RawDuration>,
    forward_to_upstream: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSession {
    create: Option<String>,
    idle_timeout: Option<RawDuration>,
    absolute_timeout: Option<RawDuration>,
    max_bytes: Option<usize>,
    max_sessions: Option<usize>,
    max_operations: Option<usize>,
    skip_paths: Option<Vec<String>>,
    record_client: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    header_read_timeout: Option<RawDuration>,
    keep_alive_timeout: Option<RawDuration>,
    body_read_timeout: Option<RawDuration>,
    shutdown_grace: Option<RawDuration>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    max_connections: Option<usize>,
    drop_underscore_headers: Option<bool>,
    workers: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    path: Option<String>,
    durability: Option<String>,
    max_file_bytes: Option<u64>,
    cache_bytes: Option<u64>,
    url: Option<String>,
    key_prefix: Option<String>,
    cluster: Option<bool>,
    timeout: Option<RawDuration>,
    touch_interval: Option<RawDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

/// A problem with one key: its dotted name and what is wrong.
pub type KeyError = (String, String);

fn key_error(key: &str, message: impl Into<String>) -> KeyError {
    (key.to_owned(), message.into())
}

impl RawConfig {
    pub fn from_table(table: toml::Table) -> Result<RawConfig, KeyError> {
        serde_path_to_error::deserialize(table).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_owned()
            } else {
                key
            };
            (key, e.into_inner().message().to_owned())
        })
    }

    /// The checked config, or the key that is wrong and why.
    pub fn validate(self, source: &Path) -> Result<Config, KeyError> {
        let listen = parse_address("listen", self.listen.as_deref().unwrap_or("127.0.0.1:8080"))?;
        let upstream = validate_upstream(self.upstream)?;
        let header_prefix = match self.header_prefix.as_deref() {
            None => HeaderPrefix::default(),
            Some(p) => HeaderPrefix::new(p).map_err(|m| key_error("header_prefix", m))?,
        };
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|t| {
                parse_net(t).ok_or_else(|| {
                    key_error(
                        "trusted_proxies",
                        format!("`{t}` is not an IP address or CIDR range such as \"10.0.0.0/8\""),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let log_format = match self.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(key_error(
                    "log.format",
                    format!("`{other}`: expected \"text\" or \"json\""),
                ));
            }
        };
        let secret = self.secret.ok_or_else(|| {
            key_error(
                "secret",
                "missing: set one of secret.value, secret.env or secret.file (at least 32 bytes)",
            )
        })?;
        Ok(Config {
            source: source.to_owned(),
            listen,
            upstream,
            header_prefix,
            trusted_proxies,
            secrets: validate_secret(secret)?,
            cookie: validate_cookie(self.cookie)?,
            session: validate_session(self.session)?,
            store: validate_store(self.store)?,
            server: validate_server(self.server)?,
            tls: self.tls.map(validate_tls).transpose()?,
            admin: validate_admin(self.admin)?,
            log_format,
        })
        .and_then(|config| {
            if config
                .admin
                .listen
                .is_some_and(|a| a == config.listen && a.port() != 0)
            {
                return Err(key_error(
                    "admin.listen",
                    format!(
                        "{} is also `listen`; the admin listener needs its own address",
                        config.listen
                    ),
                ));
            }
            Ok(config)
        })
    }
}

fn validate_admin(raw: RawAdmin) -> Result<AdminConfig, KeyError> {
    let listen = match raw.listen.as_deref().unwrap_or("127.0.0.1:9090") {
        "off" => None,
        text => Some(parse_address("admin.listen", text)?),
    };
    let token = match raw.token.filter(|t| !t.is_empty()) {
        None => None,
        Some(t) if t.len() < MIN_SECRET_BYTES => {
            return Err(key_error(
                "admin.token",
                format!(
                    "{} bytes; at least {MIN_SECRET_BYTES} are required (try `openssl rand -hex 32`)",
                    t.len()
                ),
            ));
        }
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(key_error(
                "admin.token",
                "must be visible ASCII (it travels in an Authorization header)",
            ));
        }
        Some(t) => Some(AdminToken::new(t)),
    };
    Ok(AdminConfig { listen, token })
}

fn parse_address(key: &str, text: &str) -> Result<SocketAddr, KeyError> {
    text.parse().map_err(|_| {
        key_error(
            key,
            format!("`{text}` is not an address such as \"127.0.0.1:8080\" or \"[::]:8080\""),
        )
    })
}

fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn validate_upstream(raw: Option<RawUpstream>) -> Result<UpstreamConfig, KeyError> {
    let table = match raw {
        None => {
            return Err(key_error(
                "upstream",
                "missing: the app's address, such as \"http://127.0.0.1:3000\"",
            ));
        }
        Some(RawUpstream::Url(url)) => RawUpstreamTable {
            url: Some(url),
            connect_timeout: None,
            timeout: None,
            signing_key: None,
            paired_connections: None,
        },
        Some(RawUpstream::Table(t)) => t,
    };
    let url = table.url.ok_or_else(|| {
        key_error(
            "upstream.url",
            "missing: the app's address, such as \"http://127.0.0.1:3000\"",
        )
    })?;
    let accepted =
        "expected an http URL with host and port and no path, such as \"http://127.0.0.1:3000\"";
    let uri: Uri = url
        .parse()
        .map_err(|_| key_error("upstream.url", format!("`{url}`: {accepted}")))?;
    let scheme = uri.scheme().cloned();
    if scheme.as_ref() != Some(&http::uri::Scheme::HTTP) {
        return Err(key_error(
            "upstream.url",
            format!("`{url}`: only http:// upstreams are supported; {accepted}"),
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| key_error("upstream.url", format!("`{url}`: {accepted}")))?;
    // `Uri` takes any digits as a port, and an empty host.
    let port = authority
        .as_str()
        .rsplit_once(':')
        .map(|(_, port)| port)
        .filter(|port| !port.contains(']'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !matches!(uri.path(), "" | "/")
        || uri.query().is_some()
        || authority.as_str().contains('@')
        || authority.host().is_empty()
        || !port_ok
    {
        return Err(key_error("upstream.url", format!("`{url}`: {accepted}")));
    }
    let connect_timeout = positive(
        "upstream.connect_timeout",
        table.connect_timeout,
        Duration::from_secs(5),
    )?;
    let timeout = positive("upstream.timeout", table.timeout, Duration::from_secs(60))?;
    let signing_key = match table.signing_key {
        None => None,
        Some(key) if key.len() < MIN_SECRET_BYTES => {
            return Err(key_error(
                "upstream.signing_key",
                format!(
                    "{} bytes; at least {MIN_SECRET_BYTES} are required",
                    key.len()
                ),
            ));
        }
        Some(key) => Some(crate::signature::SigningKey::new(key.as_bytes())),
    };
    Ok(UpstreamConfig {
        scheme: http::uri::Scheme::HTTP,
        authority,
        connect_timeout,
        timeout,
        signing_key,
        paired_connections: table.paired_connections.unwrap_or(1024),
    })
}

fn positive(
    key: &str,
    value: Option<RawDuration>,
    default: Duration,
) -> Result<Duration, KeyError> {
    match value {
        None => Ok(default),
        Some(RawDuration(d)) if d.is_zero() => Err(key_error(key, "must be greater than zero")),
        Some(RawDuration(d)) => Ok(d),
    }
}

fn validate_secret(raw: RawSecret) -> Result<Secrets, KeyError> {
    let (current, source) = match (raw.value, raw.env, raw.file) {
        (Some(value), None, None) => (value, "secret.value"),
        (None, Some(var), None) => {
            let value = std::env::var(&var).map_err(|_| {
                key_error(
                    "secret.env",
                    format!("environment variable `{var}` is not set or not UTF-8"),
                )
            })?;
            (value, "secret.env")
        }
        (None, None, Some(file)) => {
            let value = std::fs::read_to_string(&file)
                .map_err(|e| key_error("secret.file", format!("cannot read `{file}`: {e}")))?
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            (value, "secret.file")
        }
        (None, None, None) => {
            return Err(key_error(
                "secret",
                "set one of secret.value, secret.env or secret.file",
            ));
        }
        _ => {
            return Err(key_error(
                "secret",
                "set only one of secret.value, secret.env or secret.file",
            ));
        }
    };
    let current = secret_key(source, current)?;
    let previous = raw
        .previous
        .into_iter()
        .enumerate()
        .map(|(i, s)| secret_key(&format!("secret.previous[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Secrets { current, previous })
}

fn secret_key(key: &str, value: String) -> Result<SecretKey, KeyError> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(key_error(
            key,
            format!(
                "secret is {} bytes; at least {MIN_SECRET_BYTES} are required (try `openssl rand -base64 48`)",
                value.len()
            ),
        ));
    }
    Ok(SecretKey::new(value.into_bytes()))
}

fn validate_cookie(raw: RawCookie) -> Result<CookieConfig, KeyError> {
    let name = raw.name.unwrap_or_else(|| "sessionid".to_owned());
    if name.is_empty() || !name.bytes().all(is_cookie_token_byte) {
        return Err(key_error(
            "cookie.name",
            format!("`{name}` is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"),
        ));
    }
    let path = raw.path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
        return Err(key_error(
            "cookie.path",
            format!("`{path}`: expected a path starting with / and without ';'"),
        ));
    }
    let domain = raw.domain.filter(|d| !d.is_empty());
    if let Some(d) = &domain
        && !d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(key_error(
            "cookie.domain",
            format!("`{d}` is not a domain name"),
        ));
    }
    let secure = raw.secure.unwrap_or(true);
    let same_site = match raw
        .same_site
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("lax") => SameSite::Lax,
        Some("strict") => SameSite::Strict,
        Some("none") => SameSite::None,
        Some(other) => {
            return Err(key_error(
                "cookie.same_site",
                format!("`{other}`: expected \"lax\", \"strict\" or \"none\""),
            ));
        }
    };
    if same_site == SameSite::None && !secure {
        return Err(key_error(
            "cookie.same_site",
            "\"none\" requires cookie.secure = true (browsers drop such cookies otherwise)",
        ));
    }
    // RFC 6265bis cookie prefixes: browsers silently drop cookies that break
    // these rules, so catch them here where the message can say why.
    if name.starts_with("__Secure-") && !secure {
        return Err(key_error(
            "cookie.name",
            "a `__Secure-` cookie requires cookie.secure = true",
        ));
    }
    if name.starts_with("__Host-") && (!secure || path != "/" || domain.is_some()) {
        return Err(key_error(
            "cookie.name",
            "a `__Host-` cookie requires cookie.secure = true, cookie.path = \"/\" and no cookie.domain",
        ));
    }
    Ok(CookieConfig {
        name,
        path,
        domain,
        secure,
        http_only: raw.http_only.unwrap_or(true),
        same_site,
        max_age: match raw.max_age {
            Some(RawDuration(d)) if d.is_zero() => {
                return Err(key_error(
                    "cookie.max_age",
                    "0 would make browsers drop the cookie at once; leave it out for a cookie that lasts the browser session",
                ));
            }
            max_age => max_age.map(|d| d.0),
        },
        forward_to_upstream: raw.forward_to_upstream.unwrap_or(false),
    })
}

/// RFC 6265 `token` characters.
fn is_cookie_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn validate_session(raw: RawSession) -> Result<SessionConfig, KeyError> {
    let create = match raw.create.as_deref() {
        None | Some("eager") => CreateMode::Eager,
        Some("lazy") => CreateMode::Lazy,
        Some(other) => {
            return Err(key_error(
                "session.create",
                format!("`{other}`: expected \"eager\" or \"lazy\""),
            ));
        }
    };
    let idle_timeout = positive(
        "session.idle_timeout",
        raw.idle_timeout,
        Duration::from_secs(24 * 3600),
    )?;
    let absolute_timeout = positive(
        "session.absolute_timeout",
        raw.absolute_timeout,
        Duration::from_secs(14 * 24 * 3600),
    )?;
    let max_bytes = raw.max_bytes.unwrap_or(4096);
    if !(2..=MAX_SESSION_BYTES).contains(&max_bytes) {
        return Err(key_error(
            "session.max_bytes",
            format!("{max_bytes}: expected 2 to {MAX_SESSION_BYTES}"),
        ));
    }
    let max_sessions = raw.max_sessions.unwrap_or(1_000_000);
    if max_sessions == 0 {
        return Err(key_error("session.max_sessions", "must be at least 1"));
    }
    let max_operations = raw.max_operations.unwrap_or(256);
    if max_operations == 0 {
        return Err(key_error("session.max_operations", "must be at least 1"));
    }
    Ok(SessionConfig {
        create,
        idle_timeout,
        absolute_timeout,
        max_bytes,
        max_sessions,
        max_operations,
        skip_paths: validate_skip_paths(raw.skip_paths.unwrap_or_default())?,
        record_client: raw.record_client.unwrap_or(false),
    })
}

fn validate_skip_paths(paths: Vec<String>) -> Result<Vec<String>, KeyError> {
    for p in &paths {
        let normal = crate::proxy::path::normalize(p);
        if !p.starts_with('/') || normal.as_deref() != Some(p) {
            return Err(key_error(
                "session.skip_paths",
                format!(
                    "`{p}`: expected a normalised path prefix starting with /, such as \"/static/\""
                ),
            ));
        }
    }
    Ok(paths)
}

fn validate_server(raw: RawServer) -> Result<ServerConfig, KeyError> {
    let max_header_bytes = raw.max_header_bytes.unwrap_or(64 * 1024);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        return Err(key_error(
            "server.max_header_bytes",
            format!("{max_header_bytes}: expected 8192 to 1048576 (hyper needs at least 8192)"),
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        return Err(key_error("server.max_connections", "must be at least 1"));
    }
    Ok(ServerConfig {
        header_read_timeout: positive(
            "server.header_read_timeout",
            raw.header_read_timeout,
            Duration::from_secs(15),
        )?,
        keep_alive_timeout: positive(
            "server.keep_alive_timeout",
            raw.keep_alive_timeout,
            Duration::from_secs(75),
        )?,
        body_read_timeout: positive(
            "server.body_read_timeout",
            raw.body_read_timeout,
            Duration::from_secs(60),
        )?,
        shutdown_grace: raw.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        max_header_bytes,
        max_body_bytes: raw.max_body_bytes,
        max_connections,
        drop_underscore_headers: raw.drop_underscore_headers.unwrap_or(true),
        workers: match raw.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n @ 1..=1024) => n,
            Some(n) => {
                return Err(key_error(
                    "server.workers",
                    format!("{n}: expected 1 to 1024"),
                ));
            }
        },
    })
}

fn validate_tls(raw: RawTls) -> Result<TlsConfig, KeyError> {
    let file = |key: &str, value: Option<String>| {
        let path = value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| key_error(key, "missing: a PEM file path"))?;
        std::fs::metadata(&path)
            .map_err(|e| key_error(key, format!("cannot read `{path}`: {e}")))
            .map(|_| PathBuf::from(path))
    };
    Ok(TlsConfig {
        cert: file("tls.cert", raw.cert)?,
        key: file("tls.key", raw.key)?,
    })
}

fn validate_store(raw: RawStore) -> Result<StoreConfig, KeyError> {
    let kind = raw.kind.clone().unwrap_or_else(|| "memory".to_owned());
    let only_for = |key: &str, set: bool, kinds: &str| -> Result<(), KeyError> {
        if set {
            return Err(key_error(
                key,
                format!("is only used with store.kind = {kinds}, not \"{kind}\""),
            ));
        }
        Ok(())
    };
    if kind != "disk" {
        only_for("store.path", raw.path.is_some(), "\"disk\"")?;
        only_for("store.durability", raw.durability.is_some(), "\"disk\"")?;
        only_for(
            "store.max_file_bytes",
            raw.max_file_bytes.is_some(),
            "\"disk\"",
        )?;
        only_for("store.cache_bytes", raw.cache_bytes.is_some(), "\"disk\"")?;
    }
    if kind != "redis" {
        only_for("store.url", raw.url.is_some(), "\"redis\"")?;
        only_for("store.key_prefix", raw.key_prefix.is_some(), "\"redis\"")?;
        only_for("store.cluster", raw.cluster.is_some(), "\"redis\"")?;
        only_for("store.timeout", raw.timeout.is_some(), "\"redis\"")?;
        only_for(
            "store.touch_interval",
            raw.touch_interval.is_some(),
            "\"redis\"",
        )?;
    }
    match kind.as_str() {
        "memory" => Ok(StoreConfig::Memory),
        "disk" => validate_disk(raw),
        "redis" => validate_redis(raw),
        other => Err(key_error(
            "store.kind",
            format!("`{other}`: expected \"memory\", \"disk\" or \"redis\""),
        )),
    }
}

fn validate_disk(raw: RawStore) -> Result<StoreConfig, KeyError> {
    let path = raw.path.filter(|p| !p.is_empty()).ok_or_else(|| {
        key_error(
            "store.path",
            "missing: the database file, such as \"/var/lib/sessiongate/sessions.db\"",
        )
    })?;
    let durability = match raw.durability.as_deref().unwrap_or("immediate") {
        "immediate" => Durability::Immediate,
        "relaxed" => Durability::Relaxed,
        other => {
            return Err(key_error(
                "store.durability",
                format!("`{other}`: expected \"immediate\" or \"relaxed\""),
            ));
        }
    };
    if raw.max_file_bytes.is_some_and(|m| m < 64 * 1024) {
        return Err(key_error("store.max_file_bytes", "must be at least 65536"));
    }
    Ok(StoreConfig::Disk {
        path: path.into(),
        durability,
        max_file_bytes: raw.max_file_bytes,
        cache_bytes: raw.cache_bytes.unwrap_or(DEFAULT_CACHE_BYTES),
    })
}

fn validate_redis(raw: RawStore) -> Result<StoreConfig, KeyError> {
    let accepted =
        "expected a URL such as \"redis://127.0.0.1:6379/0\" or \"rediss://user:pass@host:6380\"";
    let url = raw
        .url
        .ok_or_else(|| key_error("store.url", format!("missing: {accepted}")))?;
    if !(url.starts_with("redis://") || url.starts_with("rediss://"))
        || redis::Client::open(url.as_str()).is_err()
    {
        // The URL may hold a password: never echo it.
        return Err(key_error(
            "store.url",
            format!("not a valid Redis URL; {accepted}"),
        ));
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "sessiongate:".to_owned());
    if key_prefix.contains(['{', '}']) {
        return Err(key_error(
            "store.key_prefix",
            "must not contain { or } (they choose the Cluster hash slot)",
        ));
    }
    Ok(StoreConfig::Redis {
        url,
        key_prefix,
        cluster: raw.cluster.unwrap_or(false),
        timeout: positive("store.timeout", raw.timeout, Duration::from_secs(2))?,
        touch_interval: positive(
            "store.touch_interval",
            raw.touch_interval,
            Duration::from_secs(60),
        )?,
    })
}
