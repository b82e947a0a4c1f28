//! The lenient JSON and time helpers the sources share: parsing the body into a JSON object
//! (the one 400 a vendor payload can cause), reading values at JSON pointers, times in the
//! formats CI systems send, branch names, seconds and status tables.
//!
//! Vendor payloads are read leniently: a missing field, `null`, a blank string, a field of an
//! unexpected type or an unparseable time all count as absent, never as an error.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::{PayloadError, Phase, Status};

// === the body ===

/// Parses the body as JSON; invalid JSON is a 400 for the body as a whole.
pub(super) fn parse(body: &[u8]) -> Result<Value, PayloadError> {
    serde_json::from_slice(body)
        .map_err(|e| PayloadError::body(format!("body is not valid JSON: {e}")))
}

/// Parses a body that must be a JSON object; anything else is a 400 for the body as a whole.
/// `what`, when given, says in the message what the object should be (e.g. `a Drone webhook
/// event`).
pub(super) fn object(body: &[u8], what: Option<&str>) -> Result<Value, PayloadError> {
    let value = parse(body)?;
    if value.is_object() {
        return Ok(value);
    }
    Err(PayloadError::body(match what {
        Some(what) => format!("body is not valid JSON: expected an object ({what})"),
        None => "body is not valid JSON: expected an object".to_owned(),
    }))
}

// === values ===

/// The value at JSON `pointer` (e.g. `/build/state`); `null` is absent.
pub(super) fn at<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    value.pointer(pointer).filter(|v| !v.is_null())
}

/// `s` trimmed; blank is absent.
pub(super) fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The JSON string at `pointer`, trimmed; absent, blank and every other type (numbers too)
/// are `None`. For names and URLs that a number must not stand in for.
pub(super) fn string(value: &Value, pointer: &str) -> Option<String> {
    non_empty(value.pointer(pointer)?.as_str()?)
}

/// The string (trimmed) or number at `pointer`, as text: ids and numbers are often sent as
/// either. Absent, blank and other types are `None`.
pub(super) fn text(value: &Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        Value::String(s) => non_empty(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The [`text`] at the first of `pointers` that has one.
pub(super) fn first(value: &Value, pointers: &[&str]) -> Option<String> {
    pointers.iter().find_map(|pointer| text(value, pointer))
}

// === times ===

/// An RFC 3339 time (any offset), in UTC.
pub(super) fn rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A time as RFC 3339, as GitLab's `2016-08-12 15:23:28 UTC` (fractions allowed) or as
/// `2016-08-12 15:23:28 +0800`. Unparseable is `None`, and so is anything at or before the
/// Unix epoch: Go's and .NET's zero time (`0001-01-01T00:00:00Z`) and the epoch itself are how
/// senders say a time is not set.
pub(super) fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    let parsed = rfc3339(raw)
        .or_else(|| {
            let naive = raw.strip_suffix("UTC")?.trim_end();
            NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            DateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f %z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })?;
    after_epoch(parsed)
}

/// The time ([`parse_time`]) in the JSON string at `pointer`; numbers are not times here.
pub(super) fn time(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    parse_time(value.pointer(pointer)?.as_str()?)
}

/// The [`time`] at the first of `pointers` that holds one.
pub(super) fn first_time(value: &Value, pointers: &[&str]) -> Option<DateTime<Utc>> {
    pointers.iter().find_map(|pointer| time(value, pointer))
}

/// A whole number of Unix seconds at `pointer`; `0` (and less) means "not yet".
pub(super) fn unix_seconds(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    after_epoch(DateTime::from_timestamp(
        value.pointer(pointer)?.as_i64()?,
        0,
    )?)
}

/// A whole number of Unix milliseconds at `pointer`; the epoch (and before) means "not set".
pub(super) fn unix_millis(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    after_epoch(DateTime::from_timestamp_millis(
        value.pointer(pointer)?.as_i64()?,
    )?)
}

/// `time`, unless it is within the Unix epoch's first second or before it (how senders say a
/// time is not set).
fn after_epoch(time: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (time.timestamp() > 0).then_some(time)
}

// === numbers, branches, statuses ===

/// A non-negative number of seconds (fractions rounded); anything else is `None`.
pub(super) fn whole_seconds(value: &Value) -> Option<u64> {
    if let Some(secs) = value.as_u64() {
        return Some(secs);
    }
    let n = value.as_f64()?;
    // The range check keeps the cast exact (no saturation, no NaN).
    (n.is_finite() && n >= 0.0 && n < u64::MAX as f64).then(|| n.round() as u64)
}

/// The [`whole_seconds`] at `pointer`.
pub(super) fn seconds(value: &Value, pointer: &str) -> Option<u64> {
    whole_seconds(at(value, pointer)?)
}

/// A branch without `refs/heads/` (tags and other refs are kept whole); blank, or
/// `refs/heads/` alone, is `None`.
pub(super) fn branch_name(git_ref: &str) -> Option<String> {
    let git_ref = git_ref.trim();
    non_empty(git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref))
}

/// The [`branch_name`] in the JSON string at `pointer`.
pub(super) fn branch(value: &Value, pointer: &str) -> Option<String> {
    branch_name(&string(value, pointer)?)
}

/// A branch as a Git client names it after a fetch: `origin/main`, `refs/remotes/origin/main`
/// or `refs/heads/main` → `main` (Jenkins' SCM branch). Only for senders that name remote
/// branches: elsewhere `origin/` may be part of a real branch name.
pub(super) fn remote_branch_name(raw: &str) -> Option<String> {
    let b = raw.trim();
    let b = b.strip_prefix("refs/remotes/").unwrap_or(b);
    branch_name(b.strip_prefix("origin/").unwrap_or(b))
}

/// What a missing or unrecognised status is: `unknown`, and completed (so it is reported).
pub(super) const UNKNOWN: (Status, Phase) = (Status::Unknown, Phase::Completed);

/// (status, status_raw, phase) for the sender's raw status through its table `known`: the raw
/// value is always kept; values the table does not know are `unknown`, as is a missing status,
/// and the phase follows the status.
pub(super) fn normalise(
    raw: Option<String>,
    known: fn(&str) -> Option<Status>,
) -> (Status, Option<String>, Phase) {
    let status = raw.as_deref().and_then(known).unwrap_or(Status::Unknown);
    let phase = status.phase();
    (status, raw, phase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::utc;

    #[test]
    fn text_string_and_at() {
        let v = serde_json::json!({
            "s": "  x  ", "blank": " ", "n": 42, "f": 1.5, "b": true, "null": null,
            "o": {"k": ["a"]}
        });
        assert_eq!(text(&v, "/s").as_deref(), Some("x"));
        assert_eq!(text(&v, "/n").as_deref(), Some("42"));
        assert_eq!(text(&v, "/f").as_deref(), Some("1.5"));
        assert_eq!(string(&v, "/s").as_deref(), Some("x"));
        assert_eq!(string(&v, "/n"), None);
        for absent in ["/blank", "/b", "/null", "/o", "/o/k", "/missing"] {
            assert_eq!(text(&v, absent), None, "{absent}");
            assert_eq!(string(&v, absent), None, "{absent}");
        }
        assert_eq!(
            first(&v, &["/blank", "/null", "/n", "/s"]).as_deref(),
            Some("42")
        );
        assert!(at(&v, "/null").is_none());
        assert!(at(&v, "/o/k").is_some_and(Value::is_array));
    }

    #[test]
    fn times() {
        let v = serde_json::json!({
            "z": "2026-11-24T08:00:00Z",
            "offset": "2026-11-24T16:00:00+08:00",
            "gitlab": "2026-11-24 08:00:00 UTC",
            "gitlab_fraction": "2026-11-24 08:00:00.000 UTC",
            "gitlab_offset": "2026-11-24 16:00:00 +0800",
            "go_zero": "0001-01-01T00:00:00Z",
            "epoch": "1970-01-01T08:00:00+08:00",
            "junk": "soon",
            "number": 1_700_000_000
        });
        let eight = utc("2026-11-24T08:00:00Z");
        for set in [
            "/z",
            "/offset",
            "/gitlab",
            "/gitlab_fraction",
            "/gitlab_offset",
        ] {
            assert_eq!(time(&v, set), eight, "{set}");
        }
        for unset in ["/go_zero", "/epoch", "/junk", "/number", "/missing"] {
            assert_eq!(time(&v, unset), None, "{unset}");
        }
        assert_eq!(first_time(&v, &["/junk", "/z"]), eight);
        let unix = serde_json::json!({"s": 1_700_000_000, "ms": 1_700_000_000_123_i64, "zero": 0});
        assert_eq!(unix_seconds(&unix, "/s"), utc("2023-11-14T22:13:20Z"));
        assert_eq!(unix_millis(&unix, "/ms"), utc("2023-11-14T22:13:20.123Z"));
        assert_eq!(unix_seconds(&unix, "/zero"), None);
        assert_eq!(unix_millis(&unix, "/zero"), None);
    }

    #[test]
    fn branches_and_seconds() {
        assert_eq!(branch_name("refs/heads/feat/x").as_deref(), Some("feat/x"));
        assert_eq!(branch_name("refs/tags/v1").as_deref(), Some("refs/tags/v1"));
        assert_eq!(branch_name("origin/main").as_deref(), Some("origin/main"));
        assert_eq!(branch_name("refs/heads/"), None);
        assert_eq!(
            remote_branch_name("refs/remotes/origin/release/1.2").as_deref(),
            Some("release/1.2")
        );
        assert_eq!(remote_branch_name("origin/"), None);
        let v = serde_json::json!({"i": 63, "f": 49.5, "neg": -1, "s": "63", "big": 1e300});
        assert_eq!(seconds(&v, "/i"), Some(63));
        assert_eq!(seconds(&v, "/f"), Some(50));
        for absent in ["/neg", "/s", "/big", "/missing"] {
            assert_eq!(seconds(&v, absent), None, "{absent}");
        }
    }

    #[test]
    fn bodies_that_are_not_objects() {
        assert!(object(br#"{"a":1}"#, None).is_ok());
        let err = object(b"[]", None).unwrap_err();
        assert_eq!(err.message, "body is not valid JSON: expected an object");
        let err = object(b"[]", Some("a Drone webhook event")).unwrap_err();
        assert_eq!(
            err.message,
            "body is not valid JSON: expected an object (a Drone webhook event)"
        );
        let err = object(b"{", None).unwrap_err();
        assert!(err.message.starts_with("body is not valid JSON: "), "{err}");
        assert_eq!(err.field, None);
    }
}
