//! The header protocol with the upstream (PROTOCOL.md sections 2 and 3):
//! which headers are ours, stripping every inbound copy of them, injecting
//! the session, and parsing the upstream's operations.
//!
//! "Ours" means the header name, lower-cased and with `_` read as `-`,
//! equals the prefix or starts with the prefix and `-`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::session::{Changes, Edit, Key, UserId};

/// The configured header prefix (default `X-Session`) and the names built on it.
#[derive(Debug, Clone)]
pub struct HeaderPrefix {
    /// Lower-case, with `-` for `_`.
    normalized: String,
    pub id: HeaderName,
    pub new: HeaderName,
    pub data: HeaderName,
    pub user: HeaderName,
    pub created: HeaderName,
    pub last_seen: HeaderName,
    pub client: HeaderName,
    pub agent: HeaderName,
    pub signature: HeaderName,
}

impl Default for HeaderPrefix {
    fn default() -> Self {
        HeaderPrefix::new("X-Session").expect("the default prefix is valid")
    }
}

/// Header names a prefix must not match (it would strip them): the
/// standard and widespread ones, lower-case.
const STANDARD_NAMES: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-request-headers",
    "access-control-request-method",
    "age",
    "allow",
    "alt-svc",
    "authorization",
    "cache-control",
    "connection",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-security-policy",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "forwarded",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "origin",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "referrer-policy",
    "retry-after",
    "sec-fetch-dest",
    "sec-fetch-mode",
    "sec-fetch-site",
    "sec-websocket-key",
    "sec-websocket-version",
    "server",
    "set-cookie",
    "strict-transport-security",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
    "x-content-type-options",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-frame-options",
    "x-real-ip",
    "x-requested-with",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
];

impl HeaderPrefix {
    pub fn new(prefix: &str) -> Result<HeaderPrefix, String> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !prefix.ends_with(['-', '_']);
        if !valid {
            return Err(format!(
                "`{prefix}`: expected letters, digits, '-' or '_', such as \"X-Session\""
            ));
        }
        let normalized = prefix.to_ascii_lowercase().replace('_', "-");
        // Every header matching the prefix is stripped both ways: one that
        // matches standard headers would eat `Cookie` or `Content-Type`.
        if let Some(taken) = STANDARD_NAMES.iter().find(|n| {
            **n == normalized
                || n.strip_prefix(normalized.as_str())
                    .is_some_and(|r| r.starts_with('-'))
        }) {
            return Err(format!(
                "`{prefix}` would match the standard header `{taken}`, which would be stripped; use a prefix of your own, such as \"X-Session\""
            ));
        }
        let name = |suffix: &str| {
            HeaderName::try_from(format!("{normalized}-{suffix}")).expect("validated above")
        };
        Ok(HeaderPrefix {
            id: name("id"),
            new: name("new"),
            data: name("data"),
            user: name("user"),
            created: name("created"),
            last_seen: name("last-seen"),
            client: name("client"),
            agent: name("agent"),
            signature: name("signature"),
            normalized,
        })
    }

    /// Whether `name` is one of ours, whatever its case or `_`/`-` spelling.
    pub fn matches(&self, name: &str) -> bool {
        let p = self.normalized.as_bytes();
        let n = name.as_bytes();
        if n.len() < p.len() {
            return false;
        }
        let same = n[..p.len()].iter().zip(p).all(|(&a, &b)| normalize(a) == b);
        same && (n.len() == p.len() || matches!(n[p.len()], b'-' | b'_'))
    }

    /// The operation one of our names asks for (`X-Session-Set`: set),
    /// whatever its case or `_`/`-` spelling; `None` for our other names.
    fn operation(&self, name: &str) -> Option<Operation> {
        let suffix = name.as_bytes().get(self.normalized.len() + 1..)?;
        Operation::ALL
            .into_iter()
            .find(|op| spelled_as(suffix, op.suffix()))
    }

    /// Removes every header that is ours.
    pub fn strip(&self, headers: &mut HeaderMap) {
        // HeaderMap has no retain; collect names first (rarely any).
        let ours: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.matches(n.as_str()))
            .cloned()
            .collect();
        for name in ours {
            headers.remove(&name);
        }
    }
}

fn normalize(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        _ => b.to_ascii_lowercase(),
    }
}

/// Whether `text` is `normalized` (lower-case, `-`) in any case or `_`/`-`
/// spelling; compared in place, since every operation header runs through it.
fn spelled_as(text: &[u8], normalized: &str) -> bool {
    text.len() == normalized.len()
        && text
            .iter()
            .zip(normalized.as_bytes())
            .all(|(&a, &b)| normalize(a) == b)
}

/// The operations an upstream response can carry (PROTOCOL.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Set,
    Delete,
    Rotate,
    Flush,
    User,
    RevokeOthers,
}

impl Operation {
    const ALL: [Operation; 6] = [
        Operation::Set,
        Operation::Delete,
        Operation::Rotate,
        Operation::Flush,
        Operation::User,
        Operation::RevokeOthers,
    ];

    /// The name after the prefix and `-`, normalized.
    fn suffix(self) -> &'static str {
        match self {
            Operation::Set => "set",
            Operation::Delete => "delete",
            Operation::Rotate => "rotate",
            Operation::Flush => "flush",
            Operation::User => "user",
            Operation::RevokeOthers => "revoke-others",
        }
    }
}

/// Why an upstream response's operations were all refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("more than session.max_operations = {limit} operation headers")]
    TooMany { limit: usize },
    #[error("{header}: value is not UTF-8 text")]
    NotText { header: &'static str },
    #[error("{header}: expected KEY=JSON")]
    MissingEquals { header: &'static str },
    #[error("{header}: key is not 1-128 characters of A-Z a-z 0-9 _ . : -")]
    BadKey { header: &'static str },
    /// `reason` is serde_json's, which says where and what (a nesting depth
    /// of 128, its recursion limit, reads "recursion limit exceeded").
    #[error("set: value of key `{key}` is not valid JSON: {reason}")]
    BadJson { key: String, reason: String },
    #[error("{header}: expected the value 1")]
    NotOne { header: &'static str },
    #[error("user: expected 1-256 visible ASCII characters")]
    BadUser,
}

/// The upstream's operations, or why they were refused; `Ok` may be empty.
pub type Parsed = Result<Changes, Malformed>;

/// Parses the operations among `lines` (name, value), in the order given,
/// all-or-nothing. Names that are ours but not operations are ignored: an
/// app that echoes request headers back must not break its own operations.
pub fn parse_operations<'a>(
    prefix: &HeaderPrefix,
    lines: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    max_operations: usize,
) -> Parsed {
    let mut changes = Changes::default();
    let mut count = 0usize;
    for (name, value) in lines {
        if !prefix.matches(name) {
            continue;
        }
        let Some(op) = prefix.operation(name) else {
            continue;
        };
        let parsed = match op {
            Operation::Set => parse_set(value).map(|edit| changes.edits.push(edit)),
            Operation::Delete => parse_delete(value).map(|edit| changes.edits.push(edit)),
            Operation::Rotate => expect_one(op, value).map(|()| changes.rotate = true),
            Operation::Flush => expect_one(op, value).map(|()| changes.flush = true),
            Operation::User => parse_user(value).map(|user| changes.user = Some(user)),
            Operation::RevokeOthers => expect_one(op, value).map(|()| changes.revoke_others = true),
        };
        count += 1;
        if count > max_operations {
            return Err(Malformed::TooMany {
                limit: max_operations,
            });
        }
        parsed?;
    }
    Ok(changes)
}

/// Removes every header of ours from an upstream response and parses the
/// operations among them, in `HeaderMap` order (grouped by name). The proxy
/// prefers [`parse_operations`] over the raw head, which keeps the order.
pub fn take_operations(
    prefix: &HeaderPrefix,
    headers: &mut HeaderMap,
    max_operations: usize,
) -> Parsed {
    let parsed = parse_operations(
        prefix,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        max_operations,
    );
    prefix.strip(headers);
    parsed
}

/// `KEY=JSON`; the JSON may be any value and may contain `=`.
fn parse_set(value: &[u8]) -> Result<Edit, Malformed> {
    let header = "set";
    let text = std::str::from_utf8(value).map_err(|_| Malformed::NotText { header })?;
    let (key, json) = text
        .split_once('=')
        .ok_or(Malformed::MissingEquals { header })?;
    let key = Key::parse(key).ok_or(Malformed::BadKey { header })?;
    let json = serde_json::from_str(json).map_err(|e| Malformed::BadJson {
        key: key.as_str().to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Edit::Set(key, json))
}

fn parse_delete(value: &[u8]) -> Result<Edit, Malformed> {
    let header = "delete";
    let text = std::str::from_utf8(value).map_err(|_| Malformed::NotText { header })?;
    Key::parse(text)
        .map(Edit::Delete)
        .ok_or(Malformed::BadKey { header })
}

fn parse_user(value: &[u8]) -> Result<UserId, Malformed> {
    std::str::from_utf8(value)
        .ok()
        .and_then(UserId::parse)
        .ok_or(Malformed::BadUser)
}

fn expect_one(op: Operation, value: &[u8]) -> Result<(), Malformed> {
    (value == b"1").then_some(()).ok_or(Malformed::NotOne {
        header: op.suffix(),
    })
}

/// The session as the upstream is told about it.
pub struct Injected {
    pub id: HeaderValue,
    /// This request started the session.
    pub new: bool,
    pub data: HeaderValue,
    pub user: Option<HeaderValue>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds, when known (a stored session).
    pub last_seen: Option<u64>,
    pub client: Option<HeaderValue>,
    pub agent: Option<HeaderValue>,
}

/// A number as a header value. http's `From<u64>` allocates twice (a
/// 20-byte buffer, then a shared handle for its unused tail); this copies
/// the digits once.
fn number(n: u64) -> HeaderValue {
    HeaderValue::from_str(itoa::Buffer::new().format(n)).expect("digits make a valid header value")
}

/// Adds the session headers for the upstream. Call after [`HeaderPrefix::strip`].
pub fn inject(prefix: &HeaderPrefix, headers: &mut HeaderMap, session: Injected) {
    headers.insert(prefix.id.clone(), session.id);
    if session.new {
        headers.insert(prefix.new.clone(), HeaderValue::from_static("1"));
    }
    headers.insert(prefix.data.clone(), session.data);
    headers.insert(prefix.created.clone(), number(session.created));
    if let Some(seen) = session.last_seen {
        headers.insert(prefix.last_seen.clone(), number(seen));
    }
    for (name, value) in [
        (&prefix.user, session.user),
        (&prefix.client, session.client),
        (&prefix.agent, session.agent),
    ] {
        if let Some(value) = value {
            headers.insert(name.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn p() -> HeaderPrefix {
        HeaderPrefix::default()
    }

    #[test]
    fn matching_ignores_case_and_underscores_but_not_lookalikes() {
        for yes in [
            "x-session",
            "X-SESSION-ID",
            "x_session_data",
            "X_Session-New",
            "x-session-anything",
        ] {
            assert!(p().matches(yes), "{yes}");
        }
        for no in [
            "x-sessions",
            "x-sessionid",
            "x-sess",
            "session",
            "xx-session",
            "",
        ] {
            assert!(!p().matches(no), "{no}");
        }
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(
                HeaderName::try_from(*n).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn operations_parse_in_order_and_are_all_removed() {
        let mut h = headers(&[
            ("x-session-set", "cart=[1,2]"),
            ("x-session-set", "user={\"a\":\"=\"}"),
            ("x-session-delete", "old"),
            ("x_session_rotate", "1"),
            ("x-session-unknown", "whatever"),
            ("content-type", "text/plain"),
        ]);
        let changes = take_operations(&p(), &mut h, 10).unwrap();
        assert!(changes.rotate && !changes.flush);
        assert_eq!(changes.edits.len(), 3);
        assert_eq!(
            changes.edits[1],
            Edit::Set(Key::parse("user").unwrap(), json!({"a": "="}))
        );
        assert_eq!(h.len(), 1);
    }

    /// Raw-head lines keep the upstream's spelling: an operation is found
    /// in any case and `_`/`-` mix, and only by its whole name.
    #[test]
    fn operations_are_named_in_any_spelling_but_whole() {
        let lines = [
            ("X_SESSION_Revoke_Others", "1"),
            ("x-Session-FLUSH", "1"),
            ("X-Session-User", "alice"),
            ("X-Session-Set-Extra", "a=1"),
            ("X-Session-Rotatex", "1"),
            ("X-Session-Rotat", "1"),
            ("X-Session-", "1"),
        ];
        let changes =
            parse_operations(&p(), lines.iter().map(|(n, v)| (*n, v.as_bytes())), 10).unwrap();
        assert!(changes.revoke_others && changes.flush && !changes.rotate);
        assert_eq!(changes.user, UserId::parse("alice"));
        assert!(changes.edits.is_empty());
    }

    #[test]
    fn one_bad_line_refuses_all() {
        let cases: &[(&str, &str, Malformed)] = &[
            (
                "x-session-set",
                "k=notjson",
                Malformed::BadJson {
                    key: "k".into(),
                    reason: "expected ident at line 1 column 2".into(),
                },
            ),
            (
                "x-session-set",
                "bad key=1",
                Malformed::BadKey { header: "set" },
            ),
            (
                "x-session-set",
                "novalue",
                Malformed::MissingEquals { header: "set" },
            ),
            (
                "x-session-delete",
                "a,b",
                Malformed::BadKey { header: "delete" },
            ),
            (
                "x-session-flush",
                "true",
                Malformed::NotOne { header: "flush" },
            ),
        ];
        for (name, value, expected) in cases {
            let mut h = headers(&[("x-session-set", "good=1"), (name, value)]);
            assert_eq!(take_operations(&p(), &mut h, 10).as_ref(), Err(expected));
            assert!(h.is_empty());
        }
    }

    /// The README's nesting limit, exactly: 127 levels pass, 128 do not,
    /// and the log line says why.
    #[test]
    fn values_nested_128_levels_deep_are_refused_with_the_reason() {
        let nested = |depth: usize| format!("k={}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_set(nested(127).as_bytes()).is_ok());
        let err = parse_set(nested(128).as_bytes()).unwrap_err().to_string();
        assert!(err.contains("recursion limit exceeded"), "{err}");
    }

    #[test]
    fn too_many_operations_are_refused() {
        let lines: Vec<(&str, &str)> = (0..11).map(|_| ("x-session-delete", "k")).collect();
        let mut h = headers(&lines);
        assert_eq!(
            take_operations(&p(), &mut h, 10),
            Err(Malformed::TooMany { limit: 10 })
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_valid_keys(
            name in "(x-session-(set|delete|rotate|flush)|x_session_set)",
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.append(HeaderName::try_from(name).unwrap(), value);
            if let Ok(changes) = take_operations(&p(), &mut h, 10) {
                for edit in &changes.edits {
                    let key = match edit { Edit::Set(k, _) | Edit::Delete(k) => k };
                    prop_assert!(Key::parse(key.as_str()).is_some());
                }
            }
            prop_assert!(h.is_empty());
        }

        #[test]
        fn valid_set_lines_are_accepted(key in "[A-Za-z0-9_.:-]{1,128}", n in any::<i64>(), s in ".*") {
            let value = serde_json::to_string(&json!([n, s])).unwrap();
            let header = HeaderValue::from_bytes(format!("{key}={value}").as_bytes());
            prop_assume!(header.is_ok(), "DEL cannot be in a header value");
            let header = header.unwrap();
            let mut h = HeaderMap::new();
            h.append("x-session-set", header);
            let changes = take_operations(&p(), &mut h, 10).unwrap();
            prop_assert_eq!(changes.edits, vec![Edit::Set(Key::parse(&key).unwrap(), json!([n, s]))]);
        }
    }
}
