//! The session model: ids, the data and its wire form, expiry rules, the
//! upstream's operations and what they do to a session, and when the
//! browser's cookie changes.
//!
//! Everything here is pure: stores call [`next_data`] under their own
//! per-session atomicity, the proxy calls [`cookie_action`].

pub mod json;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{CreateMode, SessionConfig};

/// Bytes of entropy in a session id (the protocol asks for at least 16).
pub const ID_BYTES: usize = 32;
/// Length of an id's text form (unpadded base64url).
pub const ID_TEXT_LEN: usize = 43;
/// The data of an empty session, as sent upstream.
pub const EMPTY: &[u8] = b"{}";

/// A session id: the store key. Never logged; see [`Id::short`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id([u8; ID_BYTES]);

impl Id {
    /// A fresh id from the thread-local CSPRNG (ChaCha, seeded by the OS).
    pub fn random() -> Id {
        let mut bytes = [0u8; ID_BYTES];
        rand::fill(&mut bytes[..]);
        Id(bytes)
    }

    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> Id {
        Id(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    /// Parses the text form; anything else is `None`.
    pub fn parse(text: &str) -> Option<Id> {
        if text.len() != ID_TEXT_LEN {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES + 1];
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes).ok()?;
        let bytes: [u8; ID_BYTES] = bytes[..n].try_into().ok()?;
        Some(Id(bytes))
    }

    /// A short one-way tag for correlating log lines without revealing the id.
    pub fn short(&self) -> String {
        self.digest_hex(4)
    }

    /// The session's handle in the admin API: a one-way hash of the id
    /// (128 bits, hex), so listing sessions never reveals a usable id.
    pub fn handle(&self) -> String {
        self.digest_hex(16)
    }

    fn digest_hex(&self, bytes: usize) -> String {
        let digest = Sha256::digest(self.0);
        digest[..bytes].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The id's text (as in the cookie), written into `buf`: no `String`.
    pub fn encode<'b>(&self, buf: &'b mut [u8; ID_TEXT_LEN]) -> &'b str {
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, buf)
            .expect("32 bytes encode to 43 characters");
        std::str::from_utf8(&buf[..n]).expect("base64 is ASCII")
    }

    /// The id as a header value, without a `String` on the way.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut buf = [0u8; ID_TEXT_LEN];
        http::HeaderValue::from_str(self.encode(&mut buf))
            .expect("base64url is a valid header value")
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ID_TEXT_LEN];
        f.write_str(self.encode(&mut buf))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The expiry and size rules every store enforces.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub idle_ms: u64,
    pub absolute_ms: u64,
    pub max_bytes: usize,
    pub max_sessions: usize,
}

impl Policy {
    pub fn from_config(session: &SessionConfig) -> Policy {
        Policy {
            idle_ms: ms(session.idle_timeout),
            absolute_ms: ms(session.absolute_timeout),
            max_bytes: session.max_bytes,
            max_sessions: session.max_sessions,
        }
    }

    /// When an id issued at `issued_ms` dies whatever its activity.
    pub fn absolute_deadline(&self, issued_ms: u64) -> u64 {
        issued_ms.saturating_add(self.absolute_ms)
    }

    /// Whether a stored session last seen at `last_seen_ms` is past either deadline.
    pub fn is_expired(&self, issued_ms: u64, last_seen_ms: u64, now: u64) -> bool {
        now >= self.absolute_deadline(issued_ms) || now >= last_seen_ms.saturating_add(self.idle_ms)
    }
}

/// A top-level session key: 1 to 128 of `A-Z a-z 0-9 _ . : -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

pub const MAX_KEY_LEN: usize = 128;

impl Key {
    pub fn parse(text: &str) -> Option<Key> {
        let ok = (1..=MAX_KEY_LEN).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        ok.then(|| Key(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user id bound to a session: 1 to 256 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(Arc<str>);

pub const MAX_USER_LEN: usize = 256;

impl UserId {
    pub fn parse(text: &str) -> Option<UserId> {
        let ok =
            (1..=MAX_USER_LEN).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| UserId(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One key-level edit, in the order the upstream sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    Set(Key, Value),
    Delete(Key),
}

/// The validated operations of one upstream response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub flush: bool,
    pub rotate: bool,
    pub edits: Vec<Edit>,
    /// Bind the session to this user (after Flush, Rotate and the edits).
    pub user: Option<UserId>,
    /// End every other session of the session's user.
    pub revoke_others: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.flush
            && !self.rotate
            && self.edits.is_empty()
            && self.user.is_none()
            && !self.revoke_others
    }

    /// The user the session is bound to after these changes.
    pub fn user_after(&self, current: Option<&UserId>) -> Option<UserId> {
        match (&self.user, self.flush) {
            (Some(user), _) => Some(user.clone()),
            (None, true) => None,
            (None, false) => current.cloned(),
        }
    }

    /// Whether the session gets a new id (Flush and Rotate both retire the old one).
    pub fn renews_id(&self) -> bool {
        self.flush || self.rotate
    }

    /// These changes without Flush and Rotate, for a session the same
    /// request started: it holds nothing to clear and its id reached no one,
    /// so the caller picks the new id itself and the store marks nothing
    /// dead (a cookie-less flood of logouts must not grow the store).
    pub fn without_renewal(self) -> Changes {
        Changes {
            flush: false,
            rotate: false,
            ..self
        }
    }

    /// Applies Flush, then the edits in order (Rotate does not touch data).
    pub fn apply_to(&self, mut map: Map<String, Value>) -> Map<String, Value> {
        if self.flush {
            map.clear();
        }
        for edit in &self.edits {
            match edit {
                Edit::Set(k, v) => {
                    map.insert(k.0.clone(), v.clone());
                }
                Edit::Delete(k) => {
                    map.remove(&k.0);
                }
            }
        }
        map
    }
}

/// Why a store did not apply a response's operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the session would be {size} bytes, over session.max_bytes = {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("stored data is not a JSON object (was the store edited by hand?)")]
    Corrupt,
}

/// The session's next encoded data after `changes`, or `None` when it is
/// empty (empty sessions are not stored). All-or-nothing: on a refusal the
/// caller keeps the current data.
pub fn next_data(
    current: Option<&[u8]>,
    changes: &Changes,
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, Refusal> {
    let map = match current {
        Some(bytes) if !changes.flush => json::decode(bytes).map_err(|_| Refusal::Corrupt)?,
        _ => Map::new(),
    };
    let map = changes.apply_to(map);
    if map.is_empty() {
        return Ok(None);
    }
    let encoded = json::encode(&map);
    if encoded.len() > max_bytes {
        return Err(Refusal::TooLarge {
            size: encoded.len(),
            limit: max_bytes,
        });
    }
    Ok(Some(encoded))
}

/// What the browser's cookie should become after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieAction {
    Keep,
    /// Send a cookie for this id (new, rotated, re-signed or refreshed).
    Issue {
        id: Id,
        issued_ms: u64,
    },
    /// Tell the browser to forget its cookie.
    Expire,
}

/// The facts [`cookie_action`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct CookieFacts {
    pub mode: CreateMode,
    /// The browser sent a cookie for the session it keeps using.
    pub had_valid_cookie: bool,
    /// The browser sent some cookie with the session's name (maybe invalid).
    pub sent_cookie: bool,
    /// The valid cookie was signed with a previous secret.
    pub needs_resign: bool,
    /// The session as it stands after this response.
    pub id: Id,
    pub issued_ms: u64,
    pub has_data: bool,
    /// Operations were applied (the data or the id changed).
    pub changed: bool,
    pub flushed: bool,
}

/// Decides the `Set-Cookie` for the session after a response.
///
/// Eager sessions always hold a cookie; lazy ones only while they hold data
/// (Django's behaviour: an emptied lazy session loses its cookie). A changed
/// session is re-issued so `Max-Age` slides like Django's on modification.
pub fn cookie_action(f: CookieFacts) -> CookieAction {
    let issue = CookieAction::Issue {
        id: f.id,
        issued_ms: f.issued_ms,
    };
    let wanted = f.has_data || (f.mode == CreateMode::Eager && !f.flushed);
    if !wanted {
        return if f.sent_cookie {
            CookieAction::Expire
        } else {
            CookieAction::Keep
        };
    }
    if !f.had_valid_cookie || f.needs_resign || f.changed {
        issue
    } else {
        CookieAction::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn id_text_round_trips_and_rejects_other_lengths() {
        let id = Id::random();
        let text = id.to_string();
        assert_eq!(text.len(), ID_TEXT_LEN);
        assert_eq!(Id::parse(&text), Some(id));
        assert_eq!(Id::parse(&text[1..]), None);
        assert_eq!(Id::parse(&format!("{text}A")), None);
        assert_eq!(Id::parse(&"!".repeat(ID_TEXT_LEN)), None);
        assert_ne!(Id::random(), Id::random());
    }

    #[test]
    fn keys_follow_the_protocol_alphabet() {
        assert!(Key::parse("user.id:2-x_Y").is_some());
        assert!(Key::parse(&"k".repeat(128)).is_some());
        for bad in ["", "a b", "a,b", "é", "a=b", &"k".repeat(129)] {
            assert!(Key::parse(bad).is_none(), "{bad:?}");
        }
    }

    fn key(k: &str) -> Key {
        Key::parse(k).unwrap()
    }

    #[test]
    fn flush_then_edits_in_order_and_empty_is_none() {
        let changes = Changes {
            edits: vec![
                Edit::Set(key("a"), json!(1)),
                Edit::Set(key("a"), json!(2)),
                Edit::Delete(key("b")),
            ],
            ..Changes::default()
        };
        let next = next_data(Some(br#"{"b":true,"c":"x"}"#), &changes, 100)
            .unwrap()
            .unwrap();
        assert_eq!(next, br#"{"a":2,"c":"x"}"#);
        let flush = Changes {
            flush: true,
            ..Changes::default()
        };
        assert_eq!(next_data(Some(br#"{"b":1}"#), &flush, 100).unwrap(), None);
    }

    #[test]
    fn over_the_limit_is_refused() {
        let changes = Changes {
            edits: vec![Edit::Set(key("a"), json!("0123456789"))],
            ..Changes::default()
        };
        assert_eq!(
            next_data(None, &changes, 10),
            Err(Refusal::TooLarge {
                size: 18,
                limit: 10
            })
        );
    }

    fn facts() -> CookieFacts {
        CookieFacts {
            mode: CreateMode::Eager,
            had_valid_cookie: true,
            sent_cookie: true,
            needs_resign: false,
            id: Id::from_bytes([1; 32]),
            issued_ms: 5,
            has_data: false,
            changed: false,
            flushed: false,
        }
    }

    #[test]
    fn cookie_rules() {
        let issue = CookieAction::Issue {
            id: facts().id,
            issued_ms: 5,
        };
        // A returning eager browser keeps its cookie; a new one gets one.
        assert_eq!(cookie_action(facts()), CookieAction::Keep);
        assert_eq!(
            cookie_action(CookieFacts {
                had_valid_cookie: false,
                sent_cookie: false,
                ..facts()
            }),
            issue
        );
        // Lazy: no cookie until there is data; emptied sessions lose it.
        let lazy = CookieFacts {
            mode: CreateMode::Lazy,
            ..facts()
        };
        assert_eq!(
            cookie_action(CookieFacts {
                had_valid_cookie: false,
                sent_cookie: false,
                ..lazy
            }),
            CookieAction::Keep
        );
        assert_eq!(
            cookie_action(CookieFacts {
                had_valid_cookie: false,
                has_data: true,
                changed: true,
                ..lazy
            }),
            issue
        );
        assert_eq!(
            cookie_action(CookieFacts {
                changed: true,
                ..lazy
            }),
            CookieAction::Expire
        );
        // Flush without new data expires, even in eager mode.
        assert_eq!(
            cookie_action(CookieFacts {
                flushed: true,
                changed: true,
                ..facts()
            }),
            CookieAction::Expire
        );
        assert_eq!(
            cookie_action(CookieFacts {
                flushed: true,
                changed: true,
                has_data: true,
                ..facts()
            }),
            issue
        );
        // Previous secret: re-signed.
        assert_eq!(
            cookie_action(CookieFacts {
                needs_resign: true,
                ..facts()
            }),
            issue
        );
    }
}
