//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpora (`tests/fuzz_corpora.rs`). Each takes arbitrary
//! bytes, must never panic, and checks the invariant its target guards.
//! Not part of the stable API.

use std::path::Path;
use std::sync::LazyLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use crate::cookie::{SecretKey, Signer};
use crate::protocol::{self, HeaderPrefix};
use crate::session;

static SIGNER: LazyLock<Signer> = LazyLock::new(|| {
    Signer::new(
        SecretKey::new(b"fuzzing-secret-0123456789abcdef-0123456789".to_vec()),
        vec![SecretKey::new(
            b"fuzzing-previous-0123456789abcdef-0123456789".to_vec(),
        )],
    )
});

/// Cookie verification: never panics, and whatever verifies re-signs to
/// exactly the same value (so no two texts name the same signed session).
pub fn cookie(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(v) = SIGNER.verify(text)
        && v.signed_with == crate::cookie::SignedWith::Current
    {
        assert_eq!(
            SIGNER.sign(&v.id, v.issued_ms),
            text,
            "a verified cookie re-signs identically"
        );
    }
}

/// Header lines `name: value`, one per line; invalid ones are skipped.
fn header_lines(data: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    data.split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
            Some((name, value))
        })
        .collect()
}

/// Operation parsing and application: never panics; accepted operations
/// yield a session that encodes to a valid ASCII header value.
pub fn operations(data: &[u8]) {
    let prefix = HeaderPrefix::default();
    let lines = header_lines(data);
    let parsed = protocol::parse_operations(
        &prefix,
        lines.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        64,
    );
    if let Ok(changes) = parsed
        && let Ok(Some(encoded)) = session::next_data(Some(br#"{"a":1}"#), &changes, 1 << 20)
    {
        assert!(encoded.is_ascii());
        assert!(
            HeaderValue::from_bytes(&encoded).is_ok(),
            "the session is a valid header value"
        );
    }
}

/// Inbound header stripping: never panics, and no header of ours, no
/// hop-by-hop header and no session cookie survives it.
pub fn strip(data: &[u8]) {
    let prefix = HeaderPrefix::default();
    let mut headers = HeaderMap::new();
    for (name, value) in header_lines(data) {
        headers.append(name, value);
    }
    crate::proxy::strip_inbound(&mut headers, &prefix, Some("sessionid"), true);
    for name in headers.keys() {
        assert!(!prefix.matches(name.as_str()), "{name} survived stripping");
        assert!(!name.as_str().contains('_'));
        assert!(name != http::header::CONNECTION && name != http::header::TRANSFER_ENCODING);
    }
    assert!(
        crate::cookie::request_values(&headers, "sessionid")
            .next()
            .is_none()
    );
}

/// Config parsing: never panics on any text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Keys that read files are removed: the fuzzer must not make the parser
    // read devices or huge files. Everything else is parsed as given.
    let text = match text.parse::<toml::Table>() {
        Ok(mut table) => {
            if let Some(secret) = table.get_mut("secret").and_then(|s| s.as_table_mut()) {
                secret.remove("file");
            }
            table.remove("tls");
            toml::to_string(&table).unwrap_or_default()
        }
        Err(_) => text.to_owned(),
    };
    let _ = Config::parse(Path::new("fuzz.toml"), &text, std::iter::empty());
}
