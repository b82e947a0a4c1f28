//! Inbound authentication: checks a webhook's secret over the raw body, in constant time.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Checks a generic route's secret: `Authorization: Bearer <secret>`, or an HMAC-SHA256 of
/// the raw body in `X-Signature-256: sha256=<hex>`. Err says what was missing or wrong.
pub fn generic(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let bearer = header(headers, "authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    });
    let signature = header(headers, "x-signature-256");
    if bearer.is_none() && signature.is_none() {
        return Err(
            "missing credentials: send Authorization: Bearer <secret> or X-Signature-256: sha256=<hmac>"
                .to_owned(),
        );
    }
    if let Some(token) = bearer
        && bool::from(token.trim().as_bytes().ct_eq(secret.expose().as_bytes()))
    {
        return Ok(());
    }
    if let Some(signature) = signature
        && hmac_sha256_matches(secret, body, signature)
    {
        return Ok(());
    }
    Err("wrong secret or signature".to_owned())
}

/// Whether `signature` (`sha256=<hex>` or bare hex) is the HMAC-SHA256 of `body` under `secret`.
pub fn hmac_sha256_matches(secret: &Secret, body: &[u8], signature: &str) -> bool {
    let hex_part = signature.trim();
    let hex_part = hex_part.strip_prefix("sha256=").unwrap_or(hex_part);
    let Ok(expected) = hex::decode(hex_part) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The HMAC-SHA256 of `body` as `sha256=<hex>` (what senders compute; used by tests and docs).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_and_hmac() {
        let secret = Secret::new("s3cret");
        let body = br#"{"type":"standup"}"#;
        let cases: Vec<(Vec<(&str, String)>, bool)> = vec![
            (vec![], false),
            (vec![("authorization", "Bearer s3cret".to_owned())], true),
            (vec![("authorization", "Bearer s3cre".to_owned())], false),
            (vec![("authorization", "Basic s3cret".to_owned())], false),
            (vec![("x-signature-256", sign("s3cret", body))], true),
            (vec![("x-signature-256", sign("other", body))], false),
            (vec![("x-signature-256", "sha256=zz".to_owned())], false),
            (
                vec![
                    ("authorization", "Bearer nope".to_owned()),
                    ("x-signature-256", sign("s3cret", body)),
                ],
                true,
            ),
        ];
        for (headers, ok) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in &headers {
                map.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(generic(&secret, &map, body).is_ok(), ok, "{headers:?}");
        }
    }
}
