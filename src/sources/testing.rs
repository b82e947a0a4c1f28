//! Helpers for the sources' tests: header maps, requests, times, independent HMACs and the
//! shared corpus of captured payloads.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Request;

/// A header map from name/value pairs (a repeated name keeps every value, in order).
pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

/// A POST of `body` (text or bytes) to `/v1/hooks/ci`, arriving at `now`.
pub(super) fn request<'a, B>(headers: &'a HeaderMap, body: &'a B, now: DateTime<Utc>) -> Request<'a>
where
    B: AsRef<[u8]> + ?Sized,
{
    Request {
        headers,
        body: body.as_ref(),
        target: "/v1/hooks/ci",
        method: "post",
        now,
    }
}

/// An RFC 3339 time, as the parsers return it (panics on a malformed test time).
pub(super) fn utc(rfc3339: &str) -> Option<DateTime<Utc>> {
    Some(
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test time")
            .with_timezone(&Utc),
    )
}

/// HMAC-SHA256 of `message` under `key`, computed with the `hmac` crate directly
/// (independently of `auth`), as lower-case hex.
pub(super) fn hmac_hex(key: &str, message: &[u8]) -> String {
    hex::encode(hmac(key, message))
}

/// The same HMAC-SHA256 as [`hmac_hex`], as standard padded base64.
pub(super) fn hmac_base64(key: &str, message: &[u8]) -> String {
    BASE64.encode(hmac(key, message))
}

fn hmac(key: &str, message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The text of a captured payload, `corpus!("gitlab", "job.json")`
/// (`tests/fixtures/<source>/<file>` in this repository, built into the test binary).
macro_rules! corpus {
    ($source:literal, $file:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $source,
            "/",
            $file
        ))
    };
}
pub(super) use corpus;
