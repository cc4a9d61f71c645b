//! The session cookie: signing keys, the signed value, reading it from a
//! request's `Cookie` headers, and the `Set-Cookie` builder.
//!
//! A cookie value is `<id>.<issued>.<mac>`: the session id (base64url), the
//! time it was issued (Unix milliseconds, decimal) and an HMAC-SHA256 over
//! both under the current secret (base64url). The issue time travels in the
//! cookie so that an id's absolute lifetime is known even for sessions that
//! were never stored (an empty session costs no storage).
//!
//! This module does not decide when a cookie is set; see `session::cookie_action`.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use sha2::Sha256;

use crate::config::CookieConfig;
use crate::session::{ID_TEXT_LEN, Id};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: a MAC made for a cookie is never valid elsewhere.
const CONTEXT: &[u8] = b"sessiongate cookie v1\0";
/// Encoded length of a 32-byte MAC.
const MAC_TEXT_LEN: usize = 43;
/// Milliseconds since 1970 fit in 16 digits for the next 300 000 years.
const MAX_ISSUED_DIGITS: usize = 16;

/// A secret used to sign cookies. No `Debug`: it must never be printed.
pub struct SecretKey {
    /// The keyed MAC state, computed once; cloned per use.
    mac: HmacSha256,
}

impl SecretKey {
    pub fn new(bytes: Vec<u8>) -> SecretKey {
        let mac = HmacSha256::new_from_slice(&bytes).expect("HMAC accepts keys of any length");
        SecretKey { mac }
    }

    fn mac_for(&self, id_text: &str, issued: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(CONTEXT);
        mac.update(id_text.as_bytes());
        mac.update(b".");
        mac.update(issued.as_bytes());
        mac
    }
}

/// Which secret a cookie was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedWith {
    Current,
    /// A previous secret: the cookie is accepted and re-issued.
    Previous,
}

/// What a verified cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub id: Id,
    /// When the id was issued, Unix milliseconds.
    pub issued_ms: u64,
    pub signed_with: SignedWith,
}

/// The signing and verifying half of the cookie.
pub struct Signer {
    current: SecretKey,
    previous: Vec<SecretKey>,
}

impl Signer {
    pub fn new(current: SecretKey, previous: Vec<SecretKey>) -> Signer {
        Signer { current, previous }
    }

    /// The cookie value for `id` issued at `issued_ms`.
    pub fn sign(&self, id: &Id, issued_ms: u64) -> String {
        // Written into stack buffers, not through `format!`: this runs for
        // every response that changes a session.
        let mut id_buf = [0u8; ID_TEXT_LEN];
        let id_text = id.encode(&mut id_buf);
        let mut issued_buf = itoa::Buffer::new();
        let issued = issued_buf.format(issued_ms);
        let tag = self
            .current
            .mac_for(id_text, issued)
            .finalize()
            .into_bytes();
        let mut value = String::with_capacity(id_text.len() + issued.len() + MAC_TEXT_LEN + 2);
        value.push_str(id_text);
        value.push('.');
        value.push_str(issued);
        value.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut value);
        value
    }

    /// Verifies a cookie value in constant time per key. Anything malformed
    /// is `None`, never a panic: the value comes from the network.
    pub fn verify(&self, value: &str) -> Option<Verified> {
        // The id and the MAC have fixed lengths, so the value is cut at
        // known places rather than searched for dots (on every request).
        let (id_text, rest) = value.split_at_checked(ID_TEXT_LEN)?;
        let tag_start = rest.len().checked_sub(MAC_TEXT_LEN)?;
        let (rest, tag_text) = rest.split_at_checked(tag_start)?;
        let issued = rest.strip_prefix('.')?.strip_suffix('.')?;
        if issued.is_empty()
            || issued.len() > MAX_ISSUED_DIGITS
            || !issued.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let id = Id::parse(id_text)?;
        let issued_ms = issued.parse().ok()?;
        let mut tag = [0u8; 33];
        let n = URL_SAFE_NO_PAD.decode_slice(tag_text, &mut tag).ok()?;
        let tag = &tag[..n];
        let signed_with = if self
            .current
            .mac_for(id_text, issued)
            .verify_slice(tag)
            .is_ok()
        {
            SignedWith::Current
        } else if self
            .previous
            .iter()
            .any(|key| key.mac_for(id_text, issued).verify_slice(tag).is_ok())
        {
            SignedWith::Previous
        } else {
            return None;
        };
        Some(Verified {
            id,
            issued_ms,
            signed_with,
        })
    }
}

/// The `SameSite` cookie attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// The values of every cookie named `name` in the request's `Cookie`
/// headers, in order. Several may be present (a sibling subdomain's
/// cookie, an old path). Read as bytes: browsers send raw UTF-8 in other
/// cookies (`document.cookie = "n=José"`), and one such byte must not hide
/// the session cookie beside it. A value that is not UTF-8 cannot be one we
/// signed; it is yielded empty, so it still counts as sent and never verifies.
pub fn request_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = Sent<'a>> + 'a {
    headers.get_all(COOKIE).iter().flat_map(move |header| {
        pairs(header.as_bytes()).filter_map(move |pair| {
            let (n, v) = split_pair(pair)?;
            (n == name.as_bytes()).then(|| Sent {
                header,
                value: unquote(std::str::from_utf8(v).unwrap_or("")),
            })
        })
    })
}

/// A session cookie value as the browser sent it, in its `Cookie` header.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    header: &'a HeaderValue,
    value: &'a str,
}

impl<'a> Sent<'a> {
    pub fn value(&self) -> &'a str {
        self.value
    }

    /// The value kept past the request, without copying it: a
    /// reference-counted clone of its header and where it lies there.
    pub fn keep(&self) -> Kept {
        // `value` is a slice of the header's bytes, or a static "" for a
        // value that is not UTF-8; `Kept::value` checks the range anyway.
        let start =
            (self.value.as_ptr() as usize).wrapping_sub(self.header.as_bytes().as_ptr() as usize);
        Kept {
            header: self.header.clone(),
            start,
            len: self.value.len(),
        }
    }
}

/// A cookie value kept from a request (see [`Sent::keep`]).
#[derive(Debug, Clone)]
pub struct Kept {
    header: HeaderValue,
    start: usize,
    len: usize,
}

impl Kept {
    /// The value, if it is not empty.
    pub fn value(&self) -> Option<&str> {
        let end = self.start.checked_add(self.len)?;
        let bytes = self.header.as_bytes().get(self.start..end)?;
        std::str::from_utf8(bytes).ok().filter(|v| !v.is_empty())
    }
}

/// The `;`-separated pairs of one `Cookie` header value, trimmed. Split
/// with memchr: this runs on every request, over cookies of any length.
fn pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let (pair, after) = match memchr::memchr(b';', text) {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        rest = after;
        Some(pair.trim_ascii())
    })
}

/// A pair's name and value, both trimmed; `None` without an `=`.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = memchr::memchr(b'=', pair)?;
    Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Removes every cookie named `name` from the `Cookie` headers, leaving the
/// others byte for byte as they were; a header left empty is dropped.
pub fn remove_from_request(headers: &mut HeaderMap, name: &str) {
    let is_ours = |pair: &[u8]| split_pair(pair).map_or(pair, |(n, _)| n) == name.as_bytes();
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|v| pairs(v.as_bytes()).any(is_ours))
    {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            let others: Vec<&[u8]> = pairs(value.as_bytes())
                .filter(|p| !p.is_empty() && !is_ours(p))
                .collect();
            (!others.is_empty()).then(|| joined(&others))
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

/// Folds several `Cookie` lines into one, as RFC 9113 section 8.2.3 asks
/// of a request passed from HTTP/2 (where browsers split cookies into
/// lines) to HTTP/1.1, whose servers read a single line.
pub fn join_request_lines(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let lines: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
        .collect();
    let value = joined(&lines);
    headers.insert(COOKIE, value);
}

/// `parts` joined with `; `: pieces of valid header values, so valid too.
fn joined(parts: &[&[u8]]) -> HeaderValue {
    HeaderValue::from_bytes(&parts.join(&b"; "[..]))
        .expect("pieces of valid header values joined with \"; \" are valid")
}

/// The cookie name of a `Set-Cookie` header value, if it has one.
pub fn set_cookie_name(value: &HeaderValue) -> Option<&str> {
    let text = std::str::from_utf8(value.as_bytes()).ok()?;
    let pair = text.split(';').next()?;
    Some(pair.split_once('=')?.0.trim())
}

/// Builds the session's `Set-Cookie` header values from the config.
#[derive(Debug, Clone)]
pub struct CookieBuilder {
    config: CookieConfig,
    /// What comes before and after the value in an issuing `Set-Cookie`,
    /// rendered once by the `cookie` crate: the attributes never change,
    /// and rendering them per response cost about 4,000 instructions.
    around_value: (String, String),
}

impl CookieBuilder {
    pub fn new(config: CookieConfig) -> CookieBuilder {
        let mut builder = CookieBuilder {
            config,
            around_value: Default::default(),
        };
        let template = builder.issuing(String::new()).to_string();
        let split = template
            .find(';')
            .expect("a session cookie always has attributes (Path, SameSite)");
        builder.around_value = (template[..split].to_owned(), template[split..].to_owned());
        builder
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// `Set-Cookie` that gives the browser this value (a signed value:
    /// base64url, digits and dots, nothing to quote).
    pub fn issue(&self, value: &str) -> HeaderValue {
        let (before, after) = &self.around_value;
        let mut text = String::with_capacity(before.len() + value.len() + after.len());
        for part in [before, value, after] {
            text.push_str(part);
        }
        HeaderValue::try_from(text)
            .expect("config validation admits only header-safe cookie names, paths and domains")
    }

    fn issuing(&self, value: String) -> ::cookie::Cookie<'static> {
        let mut cookie = self.base(value);
        if let Some(max_age) = self.config.max_age {
            cookie.set_max_age(to_time(max_age));
        }
        cookie
    }

    /// `Set-Cookie` that makes the browser forget the session cookie.
    pub fn expire(&self) -> HeaderValue {
        let mut cookie = self.base(String::new());
        cookie.make_removal();
        header_value(cookie)
    }

    fn base(&self, value: String) -> ::cookie::Cookie<'static> {
        let c = &self.config;
        let mut cookie = ::cookie::Cookie::new(c.name.clone(), value);
        cookie.set_path(c.path.clone());
        if let Some(domain) = &c.domain {
            cookie.set_domain(domain.clone());
        }
        cookie.set_secure(c.secure);
        cookie.set_http_only(c.http_only);
        cookie.set_same_site(match c.same_site {
            SameSite::Strict => ::cookie::SameSite::Strict,
            SameSite::Lax => ::cookie::SameSite::Lax,
            SameSite::None => ::cookie::SameSite::None,
        });
        cookie
    }
}

fn to_time(d: Duration) -> ::cookie::time::Duration {
    ::cookie::time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn header_value(cookie: ::cookie::Cookie<'_>) -> HeaderValue {
    HeaderValue::try_from(cookie.to_string())
        .expect("config validation admits only header-safe cookie names, paths and domains")
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer {{ previous: {} }}", self.previous.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(
            SecretKey::new(b"0123456789abcdef0123456789abcdef".to_vec()),
            vec![],
        )
    }

    fn fixed_id() -> Id {
        Id::from_bytes([7u8; 32])
    }

    /// The pre-rendered `Set-Cookie` is exactly what the `cookie` crate
    /// renders, for every combination of attributes.
    #[test]
    fn issued_cookies_match_the_cookie_crates_rendering() {
        let value = signer().sign(&fixed_id(), 1_700_000_000_000);
        for same_site in [SameSite::Strict, SameSite::Lax, SameSite::None] {
            for (domain, max_age) in [
                (None, None),
                (
                    Some("example.com".to_owned()),
                    Some(Duration::from_secs(1209600)),
                ),
            ] {
                let config = CookieConfig {
                    name: "__Host-sid".to_owned(),
                    path: "/app".to_owned(),
                    domain,
                    secure: same_site == SameSite::None,
                    http_only: same_site != SameSite::Strict,
                    same_site,
                    max_age,
                    forward_to_upstream: false,
                };
                let builder = CookieBuilder::new(config);
                let expected = builder.issuing(value.clone()).to_string();
                assert_eq!(builder.issue(&value).to_str().unwrap(), expected);
            }
        }
    }

    #[test]
    fn known_answer_vector() {
        // Computed independently with Python:
        // hmac.new(b"0123456789abcdef0123456789abcdef",
        //          b"sessiongate cookie v1\0" + id + b".1700000000000", sha256)
        let value = signer().sign(&fixed_id(), 1_700_000_000_000);
        assert_eq!(
            value,
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc.1700000000000.KxkC--eJwjY_tYckF_go6JBraO2kiE-JjMVhahT89YU"
        );
    }

    #[test]
    fn signed_value_verifies_and_any_change_does_not() {
        let s = signer();
        let value = s.sign(&fixed_id(), 42);
        let verified = s.verify(&value).unwrap();
        assert_eq!((verified.id, verified.issued_ms), (fixed_id(), 42));
        assert_eq!(verified.signed_with, SignedWith::Current);
        for i in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            if let Ok(changed) = String::from_utf8(bytes) {
                assert!(
                    s.verify(&changed).is_none(),
                    "accepted a change at byte {i}: {changed}"
                );
            }
        }
        assert!(s.verify(&format!("{value}.")).is_none());
        assert!(s.verify("").is_none());
        assert!(s.verify("..").is_none());
        // Cut in the wrong places: dots moved, dropped or added; the MAC
        // or the id a character short or long; a character that is not ASCII.
        let (id_text, rest) = value.split_once('.').unwrap();
        let (issued, tag) = rest.split_once('.').unwrap();
        for bad in [
            format!("{id_text}{issued}.{tag}"),
            format!("{id_text}.{issued}{tag}"),
            format!("{id_text}..{issued}.{tag}"),
            format!("{id_text}.{issued}..{tag}"),
            format!("{id_text}..{tag}"),
            format!("{id_text}.{issued}.{}", &tag[1..]),
            format!("{id_text}.{issued}.{tag}A"),
            format!("{}.{issued}.{tag}", &id_text[1..]),
            format!("{id_text}A.{issued}.{tag}"),
            format!("{id_text}.{issued}é.{tag}"),
            format!("{id_text}.é.{tag}"),
        ] {
            assert!(s.verify(&bad).is_none(), "accepted {bad}");
        }
    }

    #[test]
    fn previous_secret_verifies_as_previous() {
        let old = signer();
        let new = Signer::new(
            SecretKey::new(b"another secret that is 32 bytes long!".to_vec()),
            vec![SecretKey::new(b"0123456789abcdef0123456789abcdef".to_vec())],
        );
        let verified = new.verify(&old.sign(&fixed_id(), 1)).unwrap();
        assert_eq!(verified.signed_with, SignedWith::Previous);
    }

    #[test]
    fn request_values_finds_every_copy_and_removal_keeps_the_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; sessionid=x; b=\"2\""),
        );
        headers.append(COOKIE, HeaderValue::from_static("sessionid=\"y\""));
        let values: Vec<_> = request_values(&headers, "sessionid")
            .map(|s| s.value())
            .collect();
        assert_eq!(values, ["x", "y"]);
        let kept: Vec<_> = request_values(&headers, "sessionid")
            .map(|s| s.keep())
            .collect();
        let kept: Vec<_> = kept.iter().map(|k| k.value()).collect();
        assert_eq!(kept, [Some("x"), Some("y")]);
        // Not UTF-8: yielded empty, and nothing to send back.
        let mut odd = HeaderMap::new();
        odd.append(COOKIE, HeaderValue::from_bytes(b"sessionid=\xff").unwrap());
        let sent = request_values(&odd, "sessionid").next().unwrap();
        assert_eq!((sent.value(), sent.keep().value()), ("", None));
        remove_from_request(&mut headers, "sessionid");
        let left: Vec<_> = headers.get_all(COOKIE).iter().collect();
        assert_eq!(left, [HeaderValue::from_static("a=1; b=\"2\"")]);
    }
}
