//! Drone server-wide webhooks (ci-webhooks.md §5): `X-Drone-Event: build` with
//! `{event, action, repo, build, system}`. Authentication is draft-cavage HTTP Signatures with
//! `hmac-sha256` under `DRONE_WEBHOOK_SECRET`: the `Signature` header signs the listed headers
//! (Drone lists `date digest`), so three checks must all pass — the signature over the signing
//! string, the signed `Date` inside the replay window, and `Digest: SHA-256=<base64>` equal to
//! the SHA-256 of the raw body (the signature covers the Digest header, not the body).
//!
//! `repo` and `user` events are ignored. A build's `created` action is queued; `updated` carries
//! every later status, and only a terminal status completes the build.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::auth::{self, AuthResult};
use super::json::{self, UNKNOWN, branch_name, first, text};
use super::{
    Event, JobStatus, Parsed, PayloadError, Phase, Request, Status, TIMESTAMP_WINDOW_SECS,
};
use crate::config::Secret;

/// The name shown as the event's `source`.
const SOURCE: &str = "Drone";

/// The signature, then the `Date` window, then the body's `Digest`; the first failure is the
/// 401 message.
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    check_signature(secret, request)?;
    check_date(request)?;
    check_digest(request)
}

/// `Signature: keyId="…",algorithm="hmac-sha256",headers="date digest",signature="<base64>"`
/// (or the same parameters after `Authorization: Signature`): the base64 HMAC-SHA256 of the
/// signing string built from the listed headers, which must include `date` and `digest`.
fn check_signature(secret: &Secret, request: &Request<'_>) -> AuthResult {
    let value = auth::present(request.headers, "signature")
        .or_else(|| {
            auth::header(request.headers, "authorization")
                .and_then(|v| v.strip_prefix("Signature "))
        })
        .ok_or_else(|| {
            if request.headers.contains_key("signature") {
                "Signature header is not readable text".to_owned()
            } else {
                "missing Signature header (set DRONE_WEBHOOK_SECRET on the Drone server)".to_owned()
            }
        })?;
    let params = signature_params(value);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(algorithm) = param("algorithm")
        && !algorithm.eq_ignore_ascii_case("hmac-sha256")
    {
        return Err(format!(
            "Signature algorithm {algorithm:?} is not supported (Drone signs with hmac-sha256)"
        ));
    }
    let signature = param("signature")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "Signature header has no signature=\"…\" parameter".to_owned())?;
    // The draft's default list is just `date`, which would leave the body unprotected.
    let names: Vec<String> = param("headers")
        .unwrap_or("date")
        .split_ascii_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    if !names.iter().any(|n| n == "date") || !names.iter().any(|n| n == "digest") {
        return Err("Signature must cover the date and digest headers".to_owned());
    }
    let mut lines = Vec::with_capacity(names.len());
    for name in &names {
        let value = match name.as_str() {
            "(request-target)" => {
                format!("{} {}", request.method.to_ascii_lowercase(), request.target)
            }
            "(created)" | "(expires)" => param(name.trim_matches(['(', ')']))
                .ok_or_else(|| format!("Signature covers {name} but has no such parameter"))?
                .to_owned(),
            _ => {
                let values: Vec<&str> = request
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::trim)
                    .collect();
                if values.is_empty() {
                    return Err(format!(
                        "Signature covers the {name} header, which is missing"
                    ));
                }
                values.join(", ")
            }
        };
        lines.push(format!("{name}: {value}"));
    }
    if auth::hmac_base64_matches(secret, lines.join("\n").as_bytes(), signature) {
        Ok(())
    } else {
        Err("Signature does not match (wrong DRONE_WEBHOOK_SECRET?)".to_owned())
    }
}

/// The signed `Date` (an HTTP date, e.g. `Fri, 12 Nov 2021 23:33:47 GMT`) must be within
/// [`TIMESTAMP_WINDOW_SECS`] of `request.now`, either way.
fn check_date(request: &Request<'_>) -> AuthResult {
    let date =
        auth::header(request.headers, "date").ok_or_else(|| "missing Date header".to_owned())?;
    let sent = DateTime::parse_from_rfc2822(date)
        .map_err(|_| format!("Date header {date:?} is not an HTTP date"))?
        .with_timezone(&Utc);
    let skew = (request.now - sent).num_seconds().saturating_abs();
    if skew > TIMESTAMP_WINDOW_SECS {
        return Err(format!(
            "Date header {date:?} is more than {TIMESTAMP_WINDOW_SECS} s from the relay's clock (replayed or delayed delivery)"
        ));
    }
    Ok(())
}

/// `Digest: SHA-256=<base64 of sha256(body)>` (other algorithms in the list are skipped).
fn check_digest(request: &Request<'_>) -> AuthResult {
    let header = auth::header(request.headers, "digest")
        .ok_or_else(|| "missing Digest header".to_owned())?;
    let given = header
        .split(',')
        .filter_map(|entry| entry.trim().split_once('='))
        .find(|(algorithm, _)| algorithm.trim().eq_ignore_ascii_case("sha-256"))
        .map(|(_, value)| value.trim())
        .ok_or_else(|| "Digest header has no SHA-256=<base64> entry".to_owned())?;
    let actual = auth::base64(&Sha256::digest(request.body));
    if auth::ct_eq(actual.as_bytes(), given.as_bytes()) {
        Ok(())
    } else {
        Err("Digest does not match the body (the body was changed after signing)".to_owned())
    }
}

/// The `name="value"` (or bare `name=value`) parameters of a Signature header, names
/// lower-cased.
fn signature_params(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some((name, after)) = rest.split_once('=') else {
            return out;
        };
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        rest = tail;
    }
}

/// Normalises `build` events; `repo`, `user` and unknown events are ignored.
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    let body = json::object(request.body, Some("a Drone webhook event"))?;
    let event = auth::present(request.headers, "x-drone-event")
        .map(str::to_owned)
        .or_else(|| text(&body, "/event"));
    match event.as_deref() {
        Some("build") => {}
        Some(other) => {
            return Ok(Parsed::Ignored(format!(
                "Drone event {other:?}: only build events make reports"
            )));
        }
        None => {
            return Ok(Parsed::Ignored(
                "no X-Drone-Event header: not a Drone webhook event".to_owned(),
            ));
        }
    }
    let raw = text(&body, "/build/status");
    let (status, mut phase) = raw.as_deref().map_or(UNKNOWN, normalise);
    match text(&body, "/action").as_deref() {
        Some("created") => phase = Phase::Queued,
        Some("updated") | None => {}
        Some(other) => {
            return Ok(Parsed::Ignored(format!(
                "Drone build action {other:?}: only created and updated change a build's status"
            )));
        }
    }

    let slug = text(&body, "/repo/slug");
    let number = text(&body, "/build/number");
    let pull_request = text(&body, "/build/event").as_deref() == Some("pull_request");
    let branches: &[&str] = if pull_request {
        &["/build/source", "/build/target", "/build/ref"]
    } else {
        &["/build/target", "/build/source", "/build/ref"]
    };
    let job = JobStatus {
        job: stage_names(&body),
        pipeline: match (&slug, &number) {
            (Some(slug), Some(number)) => Some(format!("{slug} #{number}")),
            _ => text(&body, "/build/title").or_else(|| slug.clone()),
        },
        status: Some(status),
        status_raw: raw,
        source: Some(SOURCE.to_owned()),
        phase: Some(phase),
        project: slug.clone(),
        run_id: number.clone(),
        branch: first(&body, branches).as_deref().and_then(branch_name),
        commit: text(&body, "/build/after"),
        commit_message: text(&body, "/build/message"),
        url: build_url(&body, slug.as_deref(), number.as_deref()),
        actor: first(&body, &["/build/author_login", "/build/sender"]),
        actor_email: text(&body, "/build/author_email"),
        started_at: json::unix_seconds(&body, "/build/started"),
        finished_at: json::unix_seconds(&body, "/build/finished"),
        duration_secs: None,
        summary: failed_steps(&body),
    };
    Ok(Parsed::Event(Event::JobStatus(job)))
}

/// No delivery header exists; §13's key is repo slug + build number + status + `build.updated`.
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    let body: Value = serde_json::from_slice(request.body).ok()?;
    let slug = text(&body, "/repo/slug")?;
    let number = text(&body, "/build/number")?;
    let status = text(&body, "/build/status")?;
    let mut key = format!("{slug}#{number}:{status}");
    if let Some(updated) = text(&body, "/build/updated") {
        key.push(':');
        key.push_str(&updated);
    }
    Some(key)
}

/// Drone's build (and stage/step) statuses, `drone-go` `drone/const.go`.
fn normalise(raw: &str) -> (Status, Phase) {
    match raw.trim().to_ascii_lowercase().as_str() {
        "pending" | "waiting_on_dependencies" | "blocked" => (Status::Pending, Phase::Queued),
        "running" => (Status::Running, Phase::InProgress),
        "success" => (Status::Success, Phase::Completed),
        "failure" | "error" | "declined" => (Status::Failure, Phase::Completed),
        "killed" => (Status::Cancelled, Phase::Completed),
        "skipped" => (Status::Skipped, Phase::Completed),
        _ => UNKNOWN,
    }
}

/// The Drone build page: `system.link/<slug>/<number>` (`build.link` is normally the SCM
/// commit or compare page, used only when it is the build page itself).
fn build_url(body: &Value, slug: Option<&str>, number: Option<&str>) -> Option<String> {
    let (slug, number) = (slug?, number?);
    let server = text(body, "/system/link").or_else(|| {
        let host = text(body, "/system/host")?;
        let proto = text(body, "/system/proto").unwrap_or_else(|| "https".to_owned());
        Some(format!("{proto}://{host}"))
    });
    match server {
        Some(server) => Some(format!("{}/{slug}/{number}", server.trim_end_matches('/'))),
        None => text(body, "/build/link").filter(|link| {
            link.trim_end_matches('/')
                .ends_with(&format!("/{slug}/{number}"))
        }),
    }
}

/// The build's pipelines (`build.stages[].name`), joined.
fn stage_names(body: &Value) -> Option<String> {
    let stages = body.pointer("/build/stages")?.as_array()?;
    let names: Vec<&str> = stages
        .iter()
        .filter_map(|s| s.get("name")?.as_str())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// `failed: <stage> › <step>, …` for stages or steps that failed or errored.
fn failed_steps(body: &Value) -> Option<String> {
    let failed = |v: &Value| {
        v.get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| matches!(s, "failure" | "error"))
    };
    let name = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .trim()
            .to_owned()
    };
    let mut out = Vec::new();
    for stage in body.pointer("/build/stages")?.as_array()? {
        let steps: Vec<String> = stage
            .get("steps")
            .and_then(Value::as_array)
            .map(|steps| {
                steps
                    .iter()
                    .filter(|s| failed(s))
                    .map(|s| format!("{} › {}", name(stage), name(s)))
                    .collect()
            })
            .unwrap_or_default();
        if !steps.is_empty() {
            out.extend(steps);
        } else if failed(stage) {
            out.push(name(stage));
        }
    }
    (!out.is_empty()).then(|| format!("failed: {}", out.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{self, hmac_base64};
    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    const SECRET: &str = "webhook-secret";

    /// Diesel-Net/drone-discord captures (MIT, Drone 2.4.0): body + the original headers.
    const CORPUS: &[(&str, &str, &str)] = &[
        (
            "build_created",
            testing::corpus!("drone", "build_created.json"),
            testing::corpus!("drone", "build_created.headers.txt"),
        ),
        (
            "build_updated",
            testing::corpus!("drone", "build_updated.json"),
            testing::corpus!("drone", "build_updated.headers.txt"),
        ),
        (
            "build_success",
            testing::corpus!("drone", "build_success.json"),
            testing::corpus!("drone", "build_success.headers.txt"),
        ),
        (
            "build_failure",
            testing::corpus!("drone", "build_failure.json"),
            testing::corpus!("drone", "build_failure.headers.txt"),
        ),
        (
            "build_killed",
            testing::corpus!("drone", "build_killed.json"),
            testing::corpus!("drone", "build_killed.headers.txt"),
        ),
    ];

    /// The captures record no request target, and their Signature does not cover
    /// `(request-target)`, so any target verifies; this is the route a relay would use.
    const TARGET: &str = "/v1/hooks/drone";

    fn captured_headers(text: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (name, value) = line.split_once(':').unwrap();
            map.append(
                HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
        map.insert("content-type", HeaderValue::from_static("application/json"));
        map
    }

    fn captured_date(headers: &HeaderMap) -> DateTime<Utc> {
        let date = headers.get("date").unwrap().to_str().unwrap();
        DateTime::parse_from_rfc2822(date)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A delivery to [`TARGET`] (what a signed `(request-target)` covers).
    fn request<'a>(headers: &'a HeaderMap, body: &'a str, now: DateTime<Utc>) -> Request<'a> {
        Request {
            target: TARGET,
            ..testing::request(headers, body, now)
        }
    }

    fn digest_of(body: &str) -> String {
        format!(
            "SHA-256={}",
            STANDARD.encode(Sha256::digest(body.as_bytes()))
        )
    }

    #[test]
    fn corpus_signatures_verify_but_stale_digests_are_rejected() {
        let secret = Secret::new(SECRET);
        for (name, body, headers) in CORPUS {
            let h = captured_headers(headers);
            let now = captured_date(&h);
            let req = request(&h, body, now);
            // The signature arithmetic over "date: …\ndigest: …" holds, independently checked…
            let signing = format!(
                "date: {}\ndigest: {}",
                h["date"].to_str().unwrap(),
                h["digest"].to_str().unwrap()
            );
            assert!(
                h["signature"].to_str().unwrap().contains(&format!(
                    "signature=\"{}\"",
                    hmac_base64(SECRET, signing.as_bytes())
                )),
                "{name}"
            );
            assert_eq!(check_signature(&secret, &req), Ok(()), "{name}");
            assert_eq!(check_date(&req), Ok(()), "{name}");
            // …but the JSON was edited after capture, so the Digest no longer matches.
            let err = verify(&secret, &req).expect_err(name);
            assert!(
                err.starts_with("Digest does not match the body"),
                "{name}: {err}"
            );
            // Recomputing the Digest does not help: the Digest header is what was signed.
            let mut fixed = h.clone();
            fixed.insert("digest", HeaderValue::from_str(&digest_of(body)).unwrap());
            let err = verify(&secret, &request(&fixed, body, now)).expect_err(name);
            assert!(err.starts_with("Signature does not match"), "{name}: {err}");
            // A wrong secret fails on the signature itself.
            let err = verify(&Secret::new("other"), &req).expect_err(name);
            assert!(err.starts_with("Signature does not match"), "{name}: {err}");
            // Outside the window (a day later) the Date is refused.
            let late = request(&h, body, now + chrono::TimeDelta::days(1));
            assert!(
                check_date(&late).unwrap_err().contains("more than 300 s"),
                "{name}"
            );
        }
    }

    #[test]
    fn corpus_payloads_normalise() {
        // (capture, status, status_raw, phase, finished)
        let cases: &[(&str, Status, &str, Phase, Option<i64>)] = &[
            (
                "build_created",
                Status::Pending,
                "pending",
                Phase::Queued,
                None,
            ),
            (
                "build_updated",
                Status::Running,
                "running",
                Phase::InProgress,
                None,
            ),
            (
                "build_success",
                Status::Success,
                "success",
                Phase::Completed,
                Some(1_636_759_700),
            ),
            (
                "build_failure",
                Status::Failure,
                "failure",
                Phase::Completed,
                Some(1_636_759_700),
            ),
            (
                "build_killed",
                Status::Cancelled,
                "killed",
                Phase::Completed,
                Some(1_636_759_700),
            ),
        ];
        for (name, status, raw, phase, finished) in cases {
            let (_, body, headers) = CORPUS.iter().find(|(n, ..)| n == name).unwrap();
            let h = captured_headers(headers);
            let j = match parse(&request(&h, body, captured_date(&h))) {
                Ok(Parsed::Event(Event::JobStatus(j))) => j,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(j.status.as_ref(), Some(status), "{name}");
            assert_eq!(j.status_raw.as_deref(), Some(*raw), "{name}");
            assert_eq!(j.phase, Some(*phase), "{name}");
            assert_eq!(j.source.as_deref(), Some("Drone"));
            assert_eq!(
                j.pipeline.as_deref(),
                Some("Diesel-Net/plex #189"),
                "{name}"
            );
            assert_eq!(j.project.as_deref(), Some("Diesel-Net/plex"));
            assert_eq!(j.run_id.as_deref(), Some("189"));
            assert_eq!(j.branch.as_deref(), Some("stable"));
            assert_eq!(
                j.commit.as_deref(),
                Some("cd82028ba955cbd0cbe580dfbc0065d0b499a501")
            );
            assert_eq!(
                j.commit_message.as_deref(),
                Some(
                    "Merge pull request #7 from Diesel-Net/development\n\nchange requirements filename"
                )
            );
            assert_eq!(
                j.url.as_deref(),
                Some("https://drone.kiwi-labs.net/Diesel-Net/plex/189")
            );
            assert_eq!(j.actor.as_deref(), Some("anon"));
            assert_eq!(j.actor_email.as_deref(), Some("anon@something.nothing"));
            let started = (*name != "build_created").then_some(1_636_759_631);
            assert_eq!(j.started_at.map(|t| t.timestamp()), started, "{name}");
            assert_eq!(j.finished_at.map(|t| t.timestamp()), *finished, "{name}");
            if *name != "build_created" {
                assert_eq!(j.job.as_deref(), Some("daily updates pipeline"), "{name}");
            }
            // The stage statuses in the captures are stale ("running"), so no failed steps.
            assert_eq!(j.summary, None, "{name}");
        }
        let (_, success, _) = CORPUS[2];
        let h = HeaderMap::new();
        let j = match parse(&request(&h, success, Utc::now())) {
            Ok(Parsed::Event(Event::JobStatus(j))) => j,
            other => panic!("{other:?}"),
        };
        assert_eq!(j.duration_secs(), Some(69));
    }

    /// A delivery signed here, the way Drone's server does it, over `names`.
    fn signed(body: &str, names: &str, date: &str, target: &str) -> HeaderMap {
        let digest = digest_of(body);
        let mut lines = Vec::new();
        for name in names.split(' ') {
            lines.push(match name {
                "(request-target)" => format!("(request-target): post {target}"),
                "date" => format!("date: {date}"),
                "digest" => format!("digest: {digest}"),
                "content-type" => "content-type: application/json".to_owned(),
                other => panic!("{other}"),
            });
        }
        let signature = hmac_base64(SECRET, lines.join("\n").as_bytes());
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-drone-event", HeaderValue::from_static("build"));
        h.insert("date", HeaderValue::from_str(date).unwrap());
        h.insert("digest", HeaderValue::from_str(&digest).unwrap());
        h.insert(
            "signature",
            HeaderValue::from_str(&format!(
                r#"keyId="hmac-key",algorithm="hmac-sha256",signature="{signature}",headers="{names}""#
            ))
            .unwrap(),
        );
        h
    }

    #[test]
    fn fresh_deliveries_verify() {
        let secret = Secret::new(SECRET);
        let body = CORPUS[2].1;
        let now = DateTime::parse_from_rfc2822("Tue, 24 Nov 2026 08:00:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        let date = "Tue, 24 Nov 2026 08:00:00 GMT";
        type Mutate = fn(&mut HeaderMap);
        // (label, signed headers, date, target signed, body sent, mutate, Ok or error prefix)
        let cases: Vec<(&str, &str, &str, &str, String, Mutate, Result<(), &str>)> = vec![
            (
                "date digest",
                "date digest",
                date,
                TARGET,
                body.to_owned(),
                |_| {},
                Ok(()),
            ),
            (
                "with (request-target)",
                "(request-target) date digest",
                date,
                TARGET,
                body.to_owned(),
                |_| {},
                Ok(()),
            ),
            (
                "drone-go plugin style list",
                "content-type date digest",
                date,
                TARGET,
                body.to_owned(),
                |_| {},
                Ok(()),
            ),
            (
                "4 minutes early",
                "date digest",
                "Tue, 24 Nov 2026 07:56:00 GMT",
                TARGET,
                body.to_owned(),
                |_| {},
                Ok(()),
            ),
            (
                "6 minutes late",
                "date digest",
                "Tue, 24 Nov 2026 08:06:00 GMT",
                TARGET,
                body.to_owned(),
                |_| {},
                Err("Date header"),
            ),
            (
                "stale by an hour",
                "date digest",
                "Tue, 24 Nov 2026 07:00:00 GMT",
                TARGET,
                body.to_owned(),
                |_| {},
                Err("Date header"),
            ),
            (
                "other target",
                "(request-target) date digest",
                date,
                "/v1/hooks/other",
                body.to_owned(),
                |_| {},
                Err("Signature does not match"),
            ),
            (
                "body changed",
                "date digest",
                date,
                TARGET,
                body.replace("success", "failure"),
                |_| {},
                Err("Digest does not match the body"),
            ),
            (
                "digest only of a different body",
                "date digest",
                date,
                TARGET,
                body.to_owned(),
                |h| {
                    h.insert("digest", HeaderValue::from_static("SHA-256=AAAA"));
                },
                Err("Signature does not match"),
            ),
            (
                "list without digest",
                "date",
                date,
                TARGET,
                body.to_owned(),
                |_| {},
                Err("Signature must cover the date and digest"),
            ),
            (
                "missing Signature",
                "date digest",
                date,
                TARGET,
                body.to_owned(),
                |h| {
                    h.remove("signature");
                },
                Err("missing Signature header"),
            ),
            (
                "RSA algorithm",
                "date digest",
                date,
                TARGET,
                body.to_owned(),
                |h| {
                    let v = h["signature"]
                        .to_str()
                        .unwrap()
                        .replace("hmac-sha256", "rsa-sha256");
                    h.insert("signature", HeaderValue::from_str(&v).unwrap());
                },
                Err("Signature algorithm \"rsa-sha256\""),
            ),
            (
                "unparseable Date",
                "date digest",
                "yesterday",
                TARGET,
                body.to_owned(),
                |_| {},
                Err("Date header \"yesterday\" is not an HTTP date"),
            ),
        ];
        for (label, names, date, target, sent, mutate, want) in cases {
            // Sign what Drone would have sent (the original body), then send `sent`.
            let mut h = signed(body, names, date, target);
            mutate(&mut h);
            let result = verify(&secret, &request(&h, &sent, now));
            match want {
                Ok(()) => assert_eq!(result, Ok(()), "{label}"),
                Err(prefix) => {
                    let err = result.expect_err(label);
                    assert!(err.starts_with(prefix), "{label}: {err}");
                    assert!(!err.contains(SECRET), "{label}");
                }
            }
        }
        // A Digest list with several algorithms uses the SHA-256 entry.
        let mut h = signed(body, "date digest", date, TARGET);
        let list = format!("SHA-512=abc, {}", h["digest"].to_str().unwrap());
        h.insert("digest", HeaderValue::from_str(&list).unwrap());
        assert_eq!(check_digest(&request(&h, body, now)), Ok(()));
    }

    #[test]
    fn signature_parameters_parse() {
        let params = signature_params(
            r#"keyId="hmac-key", algorithm="hmac-sha256",signature="a,b=",headers="date digest",x=1"#,
        );
        let want: Vec<(String, String)> = [
            ("keyid", "hmac-key"),
            ("algorithm", "hmac-sha256"),
            ("signature", "a,b="),
            ("headers", "date digest"),
            ("x", "1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(params, want);
        for junk in [
            "",
            "=",
            "\"",
            "a=\"unterminated",
            ",,,",
            "signature",
            "é=ü,\u{1F525}",
        ] {
            let _ = signature_params(junk);
        }
        // A listed header that cannot exist (or is absent) fails cleanly.
        let mut h = HeaderMap::new();
        h.insert(
            "date",
            HeaderValue::from_static("Fri, 12 Nov 2021 23:33:47 GMT"),
        );
        h.insert("digest", HeaderValue::from_static("SHA-256=x"));
        for list in [
            "date digest a:b",
            "date digest x-missing",
            "date digest (created)",
        ] {
            let value = format!(r#"algorithm="hmac-sha256",headers="{list}",signature="AAAA""#);
            h.insert("signature", HeaderValue::from_str(&value).unwrap());
            let err = check_signature(&Secret::new(SECRET), &request(&h, "{}", Utc::now()))
                .expect_err(list);
            assert!(err.starts_with("Signature covers"), "{list}: {err}");
        }
        let bytes = HeaderValue::from_bytes("headers=\"ü\"".as_bytes()).unwrap();
        h.insert("signature", bytes);
        let err = check_signature(&Secret::new(SECRET), &request(&h, "{}", Utc::now()));
        assert_eq!(err, Err("Signature header is not readable text".to_owned()));
    }

    #[test]
    fn statuses_and_actions() {
        let base = CORPUS[2].1;
        // (action, status, normalised, phase)
        let cases: &[(&str, &str, Status, Phase)] = &[
            ("created", "pending", Status::Pending, Phase::Queued),
            ("updated", "pending", Status::Pending, Phase::Queued),
            (
                "updated",
                "waiting_on_dependencies",
                Status::Pending,
                Phase::Queued,
            ),
            ("updated", "blocked", Status::Pending, Phase::Queued),
            ("updated", "running", Status::Running, Phase::InProgress),
            ("updated", "success", Status::Success, Phase::Completed),
            ("updated", "failure", Status::Failure, Phase::Completed),
            ("updated", "error", Status::Failure, Phase::Completed),
            ("updated", "declined", Status::Failure, Phase::Completed),
            ("updated", "killed", Status::Cancelled, Phase::Completed),
            ("updated", "skipped", Status::Skipped, Phase::Completed),
            ("updated", "exploded", Status::Unknown, Phase::Completed),
            ("created", "success", Status::Success, Phase::Queued),
        ];
        let h = HeaderMap::new();
        for (action, raw, status, phase) in cases {
            let body = base
                .replace(
                    r#""action": "updated""#,
                    &format!(r#""action": "{action}""#),
                )
                .replace(r#""status": "success""#, &format!(r#""status": "{raw}""#));
            let j = match parse(&request(&h, &body, Utc::now())) {
                Ok(Parsed::Event(Event::JobStatus(j))) => j,
                other => panic!("{action} {raw}: {other:?}"),
            };
            assert_eq!(j.status.as_ref(), Some(status), "{action} {raw}");
            assert_eq!(j.phase, Some(*phase), "{action} {raw}");
            assert_eq!(j.status_raw.as_deref(), Some(*raw));
        }
    }

    #[test]
    fn lenient_variants() {
        let base = CORPUS[3].1;
        let long = "修复：登录失败 🔥 ".repeat(2000);
        type Case = (&'static str, String, fn(&JobStatus) -> bool);
        let cases: Vec<Case> = vec![
            (
                "no system block: the commit link is not the build page",
                r#"{"event":"build","action":"updated","repo":{"slug":"a/b"},
                "build":{"number":3,"status":"success","link":"https://github.com/a/b/commit/1"}}"#
                    .to_owned(),
                |j| j.url.is_none() && j.pipeline.as_deref() == Some("a/b #3"),
            ),
            (
                "build.link that is the build page",
                r#"{"event":"build","action":"updated","repo":{"slug":"a/b"},
                "build":{"number":3,"status":"success","link":"https://drone.example.com/a/b/3"}}"#
                    .to_owned(),
                |j| j.url.as_deref() == Some("https://drone.example.com/a/b/3"),
            ),
            (
                "system host and proto only",
                r#"{"event":"build","repo":{"slug":"a/b"},"system":{"proto":"http","host":"ci:8080"},
                "build":{"number":3,"status":"running"}}"#
                    .to_owned(),
                |j| j.url.as_deref() == Some("http://ci:8080/a/b/3"),
            ),
            (
                "no slug: the build title",
                r#"{"event":"build","build":{"number":3,"title":"Fix 登录","status":"success"}}"#
                    .to_owned(),
                |j| j.pipeline.as_deref() == Some("Fix 登录") && j.project.is_none(),
            ),
            (
                "pull request: the head branch",
                r#"{"event":"build","repo":{"slug":"a/b"},"build":{"number":3,"status":"success",
                "event":"pull_request","source":"feature/x","target":"main","ref":"refs/pull/7/head"}}"#
                    .to_owned(),
                |j| j.branch.as_deref() == Some("feature/x"),
            ),
            (
                "sender when there is no author login",
                r#"{"event":"build","repo":{"slug":"a/b"},"build":{"number":3,"status":"success",
                "sender":"octocat","author_login":""}}"#
                    .to_owned(),
                |j| j.actor.as_deref() == Some("octocat"),
            ),
            (
                "failed steps become the summary",
                r#"{"event":"build","repo":{"slug":"a/b"},"build":{"number":3,"status":"failure",
                "stages":[{"name":"default","status":"failure","steps":[{"name":"clone","status":"success"},
                {"name":"test","status":"failure"}]},{"name":"lint","status":"error"}]}}"#
                    .to_owned(),
                |j| {
                    j.summary.as_deref() == Some("failed: default › test, lint")
                        && j.job.as_deref() == Some("default, lint")
                }
            ),
            (
                "wrong-typed optional fields are absent",
                base.replace(r#""started": 1636759631,"#, r#""started": "soon","#)
                    .replace(r#""after": "cd82028ba955cbd0cbe580dfbc0065d0b499a501""#, r#""after": 7"#)
                    .replace(r#""stages": ["#, r#""stages_gone": ["#),
                |j| j.started_at.is_none() && j.commit.as_deref() == Some("7") && j.job.is_none(),
            ),
            (
                "long Chinese and emoji commit message",
                base.replace(
                    "Merge pull request #7 from Diesel-Net/development\\n\\nchange requirements filename",
                    &long,
                ),
                |j| j.commit_message.as_deref().is_some_and(|m| m.starts_with("修复") && m.chars().count() > 19_000),
            ),
        ];
        let h = captured_headers(CORPUS[3].2);
        for (label, body, check) in cases {
            let j = match parse(&request(&h, &body, Utc::now())) {
                Ok(Parsed::Event(Event::JobStatus(j))) => j,
                other => panic!("{label}: {:.600}", format!("{other:?}")),
            };
            assert!(check(&j), "{label}: {:.600}", format!("{j:?}"));
        }
    }

    #[test]
    fn ignored_and_rejected() {
        // (X-Drone-Event, body, reason contains)
        let cases: &[(Option<&str>, &str, &str)] = &[
            (
                Some("repo"),
                r#"{"event":"repo","action":"enabled","repo":{"slug":"a/b"}}"#,
                "\"repo\"",
            ),
            (
                Some("user"),
                r#"{"event":"user","action":"created","user":{"login":"x"}}"#,
                "\"user\"",
            ),
            (Some("cron"), r#"{"event":"cron"}"#, "only build events"),
            (None, r#"{"event":"repo"}"#, "\"repo\""),
            (
                None,
                r#"{"build":{"status":"success"}}"#,
                "no X-Drone-Event header",
            ),
            (
                Some("build"),
                r#"{"event":"build","action":"deleted","build":{"status":"success"}}"#,
                "action \"deleted\"",
            ),
        ];
        for (event, body, contains) in cases {
            let mut h = HeaderMap::new();
            if let Some(e) = event {
                h.insert("x-drone-event", HeaderValue::from_str(e).unwrap());
            }
            match parse(&request(&h, body, Utc::now())) {
                Ok(Parsed::Ignored(reason)) => assert!(reason.contains(contains), "{reason}"),
                other => panic!("{event:?} {body}: {other:?}"),
            }
        }
        let h = captured_headers(CORPUS[0].2);
        for body in ["", "{", "[]", "42", "<xml/>"] {
            let err = parse(&request(&h, body, Utc::now())).expect_err(body);
            assert!(err.field.is_none() && err.message.starts_with("body is not valid JSON"));
        }
    }

    #[test]
    fn delivery_ids() {
        let h = HeaderMap::new();
        let ids: Vec<Option<String>> = CORPUS
            .iter()
            .map(|(_, body, _)| delivery_id(&request(&h, body, Utc::now())))
            .collect();
        assert_eq!(
            ids,
            [
                "Diesel-Net/plex#189:pending:1636759631",
                "Diesel-Net/plex#189:running:1636759631",
                "Diesel-Net/plex#189:success:1636759631",
                "Diesel-Net/plex#189:failure:1636759631",
                "Diesel-Net/plex#189:killed:1636759631",
            ]
            .map(|s| Some(s.to_owned()))
        );
        assert_eq!(
            delivery_id(&request(
                &h,
                r#"{"repo":{"slug":"a/b"},"build":{"number":1}}"#,
                Utc::now()
            )),
            None
        );
        assert_eq!(delivery_id(&request(&h, "x", Utc::now())), None);
    }
}
