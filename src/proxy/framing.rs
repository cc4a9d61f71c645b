//! Message framing checks against request smuggling (RFC 9112 section 6).
//!
//! hyper parses framing strictly in most cases, but it accepts some
//! requests that a proxy must refuse because the next hop could read them
//! differently: both `Transfer-Encoding` and `Content-Length`, repeated or
//! stacked `chunked`, codings other than `chunked`, and several `Host`
//! headers (RFC 9112 section 3.2). Such requests get 400 and the connection
//! is closed; nothing reaches the upstream. Upstream responses with both
//! framing headers are refused (502) and their connection is not reused.

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};

/// Why a message's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("both Transfer-Encoding and Content-Length")]
    Conflicting,
    #[error("Transfer-Encoding other than a single `chunked`")]
    Coding,
    #[error("more than one Host header")]
    Hosts,
    #[error("more than one Content-Length")]
    Lengths,
}

/// Checks a request's framing headers.
pub fn check_request(headers: &HeaderMap) -> Result<(), Refused> {
    if headers.get_all(HOST).iter().count() > 1 {
        return Err(Refused::Hosts);
    }
    // Over HTTP/1 hyper keeps one of repeated equal lengths (RFC 9110
    // section 8.6 allows that); HTTP/2 passes them all, and one framing
    // header is what goes upstream.
    if headers.get_all(CONTENT_LENGTH).iter().count() > 1 {
        return Err(Refused::Lengths);
    }
    check_message(headers)
}

/// Where a message head ends: just past its blank line, which may end in
/// `\r\n` or, as httparse and hyper accept, a bare `\n`.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', bytes).find_map(|i| match &bytes[i + 1..] {
        [b'\n', ..] => Some(i + 2),
        [b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

/// Checks the framing headers of a request head as it arrived on the wire
/// (hyper hides a `Content-Length` sent with `Transfer-Encoding`). A head
/// that does not parse here is left to hyper, which parsed it already.
pub fn check_raw_request(head: &[u8]) -> Result<(), Refused> {
    // Most heads have no Transfer-Encoding at all: skip the parse.
    if !has_line_starting_with(head, b"transfer-encoding") {
        return Ok(());
    }
    let count = memchr::memchr_iter(b'\n', head).count().max(1);
    let mut parsed = vec![httparse::EMPTY_HEADER; count];
    let mut req = httparse::Request::new(&mut parsed);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Ok(());
    }
    let has = |name: &str| {
        req.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    if has("transfer-encoding") && has("content-length") {
        return Err(Refused::Conflicting);
    }
    Ok(())
}

/// Whether a line after the first begins with `name`, in any case. A header
/// name always begins a line (hyper refuses a folded one), and looking only
/// there skips the many `t`s of a cookie that a search of the whole head
/// for "transfer-encoding" would stop at.
fn has_line_starting_with(head: &[u8], name: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| {
        head.get(i + 1..i + 1 + name.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(name))
    })
}

/// Checks a response's framing headers.
pub fn check_response(headers: &HeaderMap) -> Result<(), Refused> {
    check_message(headers)
}

fn check_message(headers: &HeaderMap) -> Result<(), Refused> {
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return Ok(());
    };
    if headers.contains_key(CONTENT_LENGTH) {
        return Err(Refused::Conflicting);
    }
    let single_chunked = first
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    if !single_chunked || codings.next().is_some() {
        return Err(Refused::Coding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_raw_head_reveals_what_hyper_hides() {
        let cl_te = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check_raw_request(cl_te), Err(Refused::Conflicting));
        assert_eq!(
            check_raw_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(())
        );
        assert_eq!(check_raw_request(b"PRI * HTTP/2.0\r\n\r\n"), Ok(()));
        let any_case =
            b"POST / HTTP/1.1\r\nContent-Length: 6\r\ntRaNsFeR-eNcOdInG: chunked\r\n\r\n";
        assert_eq!(check_raw_request(any_case), Err(Refused::Conflicting));
        // Only a header's name counts, not the words in a value.
        let in_a_value =
            b"POST / HTTP/1.1\r\nX-Note: transfer-encoding: chunked\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(check_raw_request(in_a_value), Ok(()));
        let bare_lf =
            b"POST / HTTP/1.1\nHost: a\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        let end = head_end(bare_lf).unwrap();
        assert_eq!(&bare_lf[end..], b"0\r\n\r\n");
        assert_eq!(
            check_raw_request(&bare_lf[..end]),
            Err(Refused::Conflicting)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nx"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn only_one_plain_framing_is_accepted() {
        assert_eq!(
            check_request(&headers(&[("host", "a"), ("content-length", "3")])),
            Ok(())
        );
        assert_eq!(
            check_request(&headers(&[("transfer-encoding", "Chunked ")])),
            Ok(())
        );
        let refused = [
            (
                vec![("transfer-encoding", "chunked"), ("content-length", "3")],
                Refused::Conflicting,
            ),
            (
                vec![("transfer-encoding", "chunked, chunked")],
                Refused::Coding,
            ),
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Refused::Coding,
            ),
            (
                vec![("transfer-encoding", "gzip, chunked")],
                Refused::Coding,
            ),
            (vec![("transfer-encoding", "identity")], Refused::Coding),
            (vec![("host", "a"), ("host", "b")], Refused::Hosts),
        ];
        for (lines, why) in refused {
            assert_eq!(check_request(&headers(&lines)), Err(why), "{lines:?}");
        }
    }
}
