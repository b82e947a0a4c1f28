//! Bitbucket Cloud (`source: bitbucket`): commit-status webhooks (ci-webhooks §9), which is how
//! Bitbucket Pipelines — and any other build tool posting statuses — reports progress.
//!
//! Authentication is `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>` under the
//! webhook's secret. Only `repo:commit_status_created` and `repo:commit_status_updated` make
//! events; every other `X-Event-Key` is ignored. No I/O.

use serde_json::Value;

use super::auth::{self, AuthResult};
use super::json::{self, at, branch_name, first, normalise, text, time};
use super::{Event, JobStatus, Parsed, PayloadError, Phase, Request, Status};
use crate::config::Secret;

/// Shown as the event's `source`.
const SOURCE_NAME: &str = "Bitbucket";

/// The event keys that carry a commit status.
const STATUS_EVENTS: &[&str] = &["repo:commit_status_created", "repo:commit_status_updated"];

/// Checks `X-Hub-Signature` (Bitbucket sends SHA-256 under that name, not SHA-1).
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    let Some(signature) = auth::header(request.headers, "x-hub-signature") else {
        return Err(
            "missing X-Hub-Signature: set a secret on the Bitbucket webhook (the same as the route's)"
                .to_owned(),
        );
    };
    let hex = match signature.split_once('=') {
        Some((algorithm, hex)) if algorithm.eq_ignore_ascii_case("sha256") => hex,
        Some((algorithm, _)) => {
            return Err(format!(
                "X-Hub-Signature uses {algorithm}; only sha256 is accepted"
            ));
        }
        None => signature,
    };
    if auth::hmac_hex_matches(secret, request.body, hex) {
        Ok(())
    } else {
        Err("wrong X-Hub-Signature".to_owned())
    }
}

/// `X-Request-UUID` (kept across Bitbucket's retries), else a key from the body: repository,
/// status key, state and update time (ci-webhooks §13).
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    if let Some(id) = auth::present(request.headers, "x-request-uuid") {
        return Some(id.to_owned());
    }
    let body: Value = serde_json::from_slice(request.body).ok()?;
    let status = at(&body, "/commit_status")?;
    Some(format!(
        "bitbucket:{}:{}:{}:{}",
        text(&body, "/repository/full_name").unwrap_or_default(),
        text(status, "/key").unwrap_or_default(),
        text(status, "/state")?,
        text(status, "/updated_on").unwrap_or_default(),
    ))
}

/// Normalises a commit-status webhook; other event keys are ignored.
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    let event = auth::header(request.headers, "x-event-key");
    if let Some(event) = event
        && !STATUS_EVENTS.contains(&event)
    {
        return Ok(Parsed::Ignored(format!(
            "Bitbucket event {event:?} is not reported (only repo:commit_status_created and repo:commit_status_updated)"
        )));
    }
    let body = json::object(request.body, None)?;
    let status = at(&body, "/commit_status").unwrap_or(&Value::Null);
    if event.is_none() && !status.is_object() {
        return Ok(Parsed::Ignored(
            "no X-Event-Key header and no commit_status: not a Bitbucket commit-status webhook"
                .to_owned(),
        ));
    }
    let (normalised, status_raw, phase) = normalise(text(status, "/state"), state);
    let name = first(status, &["/name", "/key"]);
    let url = text(status, "/url");
    Ok(Parsed::Event(Event::JobStatus(JobStatus {
        job: None,
        run_id: run_number(name.as_deref(), url.as_deref()),
        pipeline: name,
        status: Some(normalised),
        status_raw,
        source: Some(SOURCE_NAME.to_owned()),
        phase: Some(phase),
        project: text(&body, "/repository/full_name"),
        branch: text(status, "/refname").as_deref().and_then(branch_name),
        commit: commit(status),
        commit_message: None,
        url,
        actor: first(
            &body,
            &["/actor/nickname", "/actor/username", "/actor/display_name"],
        ),
        actor_email: None,
        started_at: time(status, "/created_on"),
        // `updated_on` is when the status last changed: the finish only once it is final.
        finished_at: (phase == Phase::Completed)
            .then(|| time(status, "/updated_on"))
            .flatten(),
        duration_secs: None,
        summary: text(status, "/description"),
    })))
}

/// Bitbucket's four commit-status states.
fn state(raw: &str) -> Option<Status> {
    Some(match raw.to_ascii_uppercase().as_str() {
        "SUCCESSFUL" => Status::Success,
        "FAILED" => Status::Failure,
        "INPROGRESS" => Status::Running,
        "STOPPED" => Status::Cancelled,
        _ => return None,
    })
}

/// `commit_status.commit.hash`, else the last segment of the commit link.
fn commit(status: &Value) -> Option<String> {
    text(status, "/commit/hash").or_else(|| {
        let href = text(status, "/links/commit/href")?;
        let sha = href.trim_end_matches('/').rsplit('/').next()?;
        (sha.len() >= 7 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_owned())
    })
}

/// The Pipelines run number, from a name like `Pipeline #42 for main` or a results link
/// ending `…/results/42`.
fn run_number(name: Option<&str>, url: Option<&str>) -> Option<String> {
    let digits_after = |s: &str, marker: &str| {
        let (_, rest) = s.split_once(marker)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!digits.is_empty()).then_some(digits)
    };
    name.and_then(|n| digits_after(n, "Pipeline #"))
        .or_else(|| url.and_then(|u| digits_after(u, "/results/")))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::sources::testing::{self, headers, hmac_hex, request, utc};

    const CREATED_JSON: &str = testing::corpus!("bitbucket", "repo-commit-status-created.json");
    const UPDATED_JSON: &str = testing::corpus!("bitbucket", "repo-commit-status-updated.json");

    const UPDATED: &[(&str, &str)] = &[
        ("x-event-key", "repo:commit_status_updated"),
        ("x-request-uuid", "3f9c2d1e-5b7a-4c8e-9f0a-1b2c3d4e5f60"),
        ("x-attempt-number", "1"),
        ("user-agent", "Bitbucket-Webhooks/2.0"),
        ("content-type", "application/json"),
    ];
    const CREATED: &[(&str, &str)] = &[
        ("x-event-key", "repo:commit_status_created"),
        ("x-request-uuid", "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"),
        ("content-type", "application/json"),
    ];

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("time")
    }

    fn parse_with(pairs: &[(&str, &str)], body: &str) -> Parsed {
        let headers = headers(pairs);
        parse(&request(&headers, body.as_bytes(), now())).unwrap_or_else(|e| panic!("{e}"))
    }

    fn job_status(pairs: &[(&str, &str)], body: &str) -> JobStatus {
        match parse_with(pairs, body) {
            Parsed::Event(Event::JobStatus(j)) => j,
            other => panic!("not a job_status: {other:?}"),
        }
    }

    #[test]
    fn corpus_payloads_are_normalised() {
        // (headers, body, status, raw, phase, finished, summary)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static str,
            Status,
            &'static str,
            Phase,
            Option<DateTime<Utc>>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                CREATED,
                CREATED_JSON,
                Status::Running,
                "INPROGRESS",
                Phase::InProgress,
                None,
                "Build started",
            ),
            (
                UPDATED,
                UPDATED_JSON,
                Status::Success,
                "SUCCESSFUL",
                Phase::Completed,
                utc("2015-11-20T08:01:16.433108Z"),
                "All tests passed",
            ),
        ];
        for (pairs, body, status, raw, phase, finished, summary) in cases {
            let j = job_status(pairs, body);
            assert_eq!(j.status, Some(status), "{raw}");
            assert_eq!(j.status_raw.as_deref(), Some(raw));
            assert_eq!(j.phase, Some(phase), "{raw}");
            assert_eq!(j.source.as_deref(), Some("Bitbucket"));
            assert_eq!(j.pipeline.as_deref(), Some("Unit Tests (Python)"));
            assert_eq!(j.job, None);
            assert_eq!(j.project.as_deref(), Some("team_name/repo_name"));
            assert_eq!(j.branch, None, "the samples have no refname");
            assert_eq!(
                j.commit.as_deref(),
                Some("9fec847784abb10b2fa567ee63b85bd238955d0e"),
                "from the commit link"
            );
            assert_eq!(j.actor.as_deref(), Some("emmap1"));
            assert_eq!(j.run_id, None);
            assert_eq!(j.started_at, utc("2015-11-19T20:37:35.547563Z"));
            assert_eq!(j.finished_at, finished, "only once final: {raw}");
            assert_eq!(j.summary.as_deref(), Some(summary));
        }
        let j = job_status(UPDATED, UPDATED_JSON);
        assert_eq!(
            j.url.as_deref(),
            Some("https://my-build-tool.com/builds/MY-PROJECT/BUILD-792")
        );
        assert_eq!(j.duration_secs(), Some(41_020));
    }

    #[test]
    fn states_and_pipelines_details() {
        let cases: &[(&str, Status, Phase)] = &[
            ("SUCCESSFUL", Status::Success, Phase::Completed),
            ("FAILED", Status::Failure, Phase::Completed),
            ("INPROGRESS", Status::Running, Phase::InProgress),
            ("STOPPED", Status::Cancelled, Phase::Completed),
            ("PAUSED", Status::Unknown, Phase::Completed),
        ];
        for (raw, expected, phase) in cases {
            let body = format!(
                r#"{{"commit_status":{{"state":"{raw}","key":"k","name":"Pipeline #42 for feat/x",
                "refname":"feat/x","commit":{{"hash":"abc1234"}},
                "url":"https://bitbucket.org/ws/repo/addon/pipelines/home#!/results/42"}},
                "actor":{{"display_name":"Emma"}}}}"#
            );
            let j = job_status(UPDATED, &body);
            assert_eq!(j.status.as_ref(), Some(expected), "{raw}");
            assert_eq!(j.status_raw.as_deref(), Some(*raw));
            assert_eq!(j.phase, Some(*phase), "{raw}");
            assert_eq!(j.run_id.as_deref(), Some("42"));
            assert_eq!(j.branch.as_deref(), Some("feat/x"));
            assert_eq!(j.commit.as_deref(), Some("abc1234"));
            assert_eq!(j.actor.as_deref(), Some("Emma"), "display name last");
        }
        let j = job_status(
            UPDATED,
            r#"{"commit_status":{"state":"FAILED","key":"build-7","name":"",
            "url":"https://ci/x/results/7/"}}"#,
        );
        assert_eq!(
            j.pipeline.as_deref(),
            Some("build-7"),
            "empty name: the key"
        );
        assert_eq!(j.run_id.as_deref(), Some("7"));
    }

    #[test]
    fn non_ascii_and_long_texts_are_kept() {
        let long = "单元测试全部通过 ✅ ".repeat(400);
        let body = serde_json::json!({
            "commit_status": {"state": "SUCCESSFUL", "name": "构建 🚀", "description": long},
            "actor": {"nickname": "小明"},
        })
        .to_string();
        let j = job_status(UPDATED, &body);
        assert_eq!(j.pipeline.as_deref(), Some("构建 🚀"));
        assert_eq!(j.summary.as_deref(), Some(long.trim()));
        assert_eq!(j.actor.as_deref(), Some("小明"));
    }

    #[test]
    fn missing_and_wrong_typed_fields_are_absent() {
        for body in [
            r#"{}"#,
            r#"{"commit_status":{"state":7,"name":[],"created_on":"soon","links":{"commit":{"href":"x/zz"}}},
            "repository":"r","actor":null}"#,
        ] {
            let j = job_status(UPDATED, body);
            assert_eq!(j.status, Some(Status::Unknown), "{body}");
            assert_eq!(j.status_raw.as_deref(), body.contains(":7").then_some("7"));
            assert_eq!(j.phase, Some(Phase::Completed));
            assert_eq!((j.pipeline, j.project, j.commit), (None, None, None));
            assert_eq!((j.actor, j.started_at), (None, None));
        }
    }

    #[test]
    fn other_events_are_ignored() {
        for key in [
            "repo:push",
            "diagnostics:ping",
            "pullrequest:created",
            "brand:new",
        ] {
            match parse_with(&[("x-event-key", key)], "not json") {
                Parsed::Ignored(reason) => assert!(reason.contains(key), "{reason}"),
                other => panic!("{key}: {other:?}"),
            }
        }
        match parse_with(&[], r#"{"push":{}}"#) {
            Parsed::Ignored(reason) => assert!(reason.contains("no X-Event-Key"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Without the header, a body that is a commit status is still read.
        let j = job_status(
            &[],
            r#"{"commit_status":{"state":"SUCCESSFUL","name":"CI"}}"#,
        );
        assert_eq!(j.status, Some(Status::Success));
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_rejected() {
        for body in ["nope", "[]", "", "null"] {
            let headers = headers(UPDATED);
            let err = parse(&request(&headers, body.as_bytes(), now())).expect_err(body);
            assert_eq!(err.field, None);
            assert!(err.message.starts_with("body is not valid JSON: "), "{err}");
        }
    }

    #[test]
    fn signature_is_an_hmac_of_the_body() {
        let body = r#"{"commit_status":{"state":"FAILED","name":"构建 🚀"}}"#.as_bytes();
        // Computed independently (Python hmac) for this body and secret…
        let hex = "1d3a598a00e4e878a8876c5495aaefbdb9efe164b6888ed06a76ef021f52ccfb";
        // …and again here with the hmac crate directly.
        assert_eq!(hmac_hex("bb-secret", body), hex);
        let check = |pairs: &[(&str, &str)], body: &[u8]| {
            let headers = headers(pairs);
            verify(&Secret::new("bb-secret"), &request(&headers, body, now()))
        };
        let signed = format!("sha256={hex}");
        assert_eq!(auth::sign_sha256("bb-secret", body), signed);
        assert_eq!(check(&[("x-hub-signature", &signed)], body), Ok(()));
        assert_eq!(
            check(&[("x-hub-signature", &signed.to_uppercase())], body),
            Ok(())
        );
        assert_eq!(check(&[("x-hub-signature", hex)], body), Ok(()), "bare hex");
        let wrong = Err("wrong X-Hub-Signature".to_owned());
        let tampered = [body, b" "].concat();
        assert_eq!(check(&[("x-hub-signature", &signed)], &tampered), wrong);
        assert_eq!(check(&[("x-hub-signature", "sha256=zz")], body), wrong);
        let other_key = auth::sign_sha256("other", body);
        assert_eq!(check(&[("x-hub-signature", &other_key)], body), wrong);
        let sha1 = check(&[("x-hub-signature", "sha1=abcd")], body).unwrap_err();
        assert!(sha1.contains("only sha256"), "{sha1}");
        let missing = check(&[("x-hub-signature-256", &signed)], body).unwrap_err();
        assert!(missing.starts_with("missing X-Hub-Signature"), "{missing}");
        assert!(!missing.contains("bb-secret"));
    }

    #[test]
    fn delivery_ids() {
        let id = |pairs: &[(&str, &str)], body: &[u8]| {
            let headers = headers(pairs);
            delivery_id(&request(&headers, body, now()))
        };
        let body =
            br#"{"repository":{"full_name":"t/r"},"commit_status":{"key":"k","state":"FAILED",
            "updated_on":"2015-11-20T08:01:16.433108+00:00"}}"#;
        assert_eq!(
            id(&[("x-request-uuid", "req-1")], body).as_deref(),
            Some("req-1")
        );
        assert_eq!(
            id(&[], body).as_deref(),
            Some("bitbucket:t/r:k:FAILED:2015-11-20T08:01:16.433108+00:00")
        );
        assert_eq!(id(&[], b"{}"), None);
        assert_eq!(id(&[], b"[]"), None);
    }
}
