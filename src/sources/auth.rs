//! Authentication primitives the sources share: constant-time comparison, HMAC-SHA256, header
//! access, bearer and basic credentials. Every check runs over the raw body as received.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Why a webhook failed authentication (the 401 message; never contains the secret).
pub type AuthResult = Result<(), String>;

/// A header's value as text, when present and readable.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A header's value when present, readable and not blank (some senders send empty headers).
pub(crate) fn present<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    header(headers, name).filter(|v| !v.is_empty())
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `hex_signature` (hex, any case) is the HMAC-SHA256 of `message` under `secret`.
pub fn hmac_hex_matches(secret: &Secret, message: &[u8], hex_signature: &str) -> bool {
    let Ok(given) = hex::decode(hex_signature.trim()) else {
        return false;
    };
    ct_eq(&hmac_sha256(secret.expose().as_bytes(), message), &given)
}

/// Whether `b64_signature` is the base64 HMAC-SHA256 of `message` under `secret`.
pub fn hmac_base64_matches(secret: &Secret, message: &[u8], b64_signature: &str) -> bool {
    let Ok(given) = BASE64.decode(b64_signature.trim()) else {
        return false;
    };
    ct_eq(&hmac_sha256(secret.expose().as_bytes(), message), &given)
}

/// `sha256=<hex HMAC-SHA256 of body>`: what GitHub-style senders put in their header (tests
/// and docs use it to sign).
pub fn sign_sha256(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body))
    )
}

/// Base64 encoding (standard alphabet, padded).
pub fn base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Whether the request offers a credential that is computed over the body (an HMAC in a
/// `*signature*` header, Drone's `Digest` and HTTP signature), so that it can only be checked
/// once the body is read. Every source's body signature travels in such a header.
pub fn offers_body_signature(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        name.contains("signature") || name == "digest"
    }) || header(headers, "authorization").is_some_and(|v| {
        v.split_once(' ')
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("signature"))
    })
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header(headers, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The (user, password) of `Authorization: Basic …`.
pub fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = header(headers, "authorization")?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A shared secret presented as `Authorization: Bearer <secret>`, as the password (or
/// `user:password`) of `Authorization: Basic`, or in `X-Relay-Token` — for senders that can
/// only add a fixed header or credentials in the URL (Jenkins, Azure DevOps).
pub fn shared_secret(secret: &Secret, headers: &HeaderMap) -> AuthResult {
    let expected = secret.expose().as_bytes();
    let mut offered = false;
    if let Some(token) = bearer(headers) {
        offered = true;
        if ct_eq(token.as_bytes(), expected) {
            return Ok(());
        }
    }
    if let Some((user, password)) = basic(headers) {
        offered = true;
        if ct_eq(password.as_bytes(), expected)
            || ct_eq(format!("{user}:{password}").as_bytes(), expected)
        {
            return Ok(());
        }
    }
    if let Some(token) = header(headers, "x-relay-token") {
        offered = true;
        if ct_eq(token.as_bytes(), expected) {
            return Ok(());
        }
    }
    if offered {
        Err("wrong secret".to_owned())
    } else {
        Err("missing credentials: send Authorization: Bearer <secret>, Basic auth with the secret as password, or X-Relay-Token".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::headers;

    #[test]
    fn github_published_example() {
        // docs.github.com "Validating webhook deliveries" test values.
        let secret = Secret::new("It's a Secret to Everybody");
        let expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(hmac_hex_matches(&secret, b"Hello, World!", expected));
        assert_eq!(
            sign_sha256("It's a Secret to Everybody", b"Hello, World!"),
            format!("sha256={expected}")
        );
        assert!(!hmac_hex_matches(&secret, b"Hello, World?", expected));
        assert!(!hmac_hex_matches(&secret, b"Hello, World!", "zz"));
    }

    #[test]
    fn body_signatures_are_told_from_header_credentials() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("x-signature-256", "sha256=00")], true),
            (&[("x-hub-signature-256", "sha256=00")], true),
            (&[("x-gitea-signature", "00")], true),
            (&[("circleci-signature", "v1=00")], true),
            (
                &[("x-buildkite-signature", "timestamp=1,signature=00")],
                true,
            ),
            (&[("webhook-signature", "v1,AA==")], true),
            (&[("digest", "SHA-256=AA==")], true),
            (&[("authorization", "Signature keyId=\"x\"")], true),
            (&[("authorization", "Bearer s3cret")], false),
            (&[("authorization", "Basic AA==")], false),
            (&[("x-gitlab-token", "s3cret")], false),
            (&[("x-relay-token", "s3cret")], false),
            (&[("x-buildkite-token", "s3cret")], false),
            (&[], false),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                offers_body_signature(&headers(pairs)),
                *expected,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn shared_secret_forms() {
        let secret = Secret::new("s3cret");
        let basic_pw = format!("Basic {}", base64(b"jenkins:s3cret"));
        let basic_whole = format!("Basic {}", base64(b"ci:s3cret"));
        let basic_wrong = format!("Basic {}", base64(b"jenkins:nope"));
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("authorization", "Bearer s3cret")], true),
            (&[("authorization", "bearer s3cret")], true),
            (&[("authorization", basic_pw.as_str())], true),
            (&[("authorization", basic_whole.as_str())], true),
            (&[("authorization", basic_wrong.as_str())], false),
            (&[("x-relay-token", "s3cret")], true),
            (&[("x-relay-token", "s3cre")], false),
            (&[], false),
        ];
        for (pairs, ok) in cases {
            assert_eq!(
                shared_secret(&secret, &headers(pairs)).is_ok(),
                *ok,
                "{pairs:?}"
            );
        }
    }
}
