//! Jenkins, through the Notification plugin (`jenkinsci/notification-plugin`, ci-webhooks.md §3a):
//! one JSON POST per build phase — `QUEUED`, `STARTED`, `COMPLETED`, `FINALIZED` — with snake_case
//! fields and nulls left out. The plugin signs nothing, so the route's secret travels as Basic
//! auth in the endpoint URL (`https://jenkins:<secret>@relay…`), a bearer token or `X-Relay-Token`.
//!
//! `COMPLETED` and `FINALIZED` both end a build; only `FINALIZED` (sent after post-build actions)
//! is reported, so one build makes one completed report. `COMPLETED` is answered as ignored.
//! Older plugin versions send `FINISHED` instead of `FINALIZED`; it is reported the same way.

use chrono::TimeDelta;
use serde_json::Value;

use super::auth::{self, AuthResult};
use super::json::{self, non_empty, remote_branch_name, text};
use super::{Event, JobStatus, Parsed, PayloadError, Phase, Request, Status};
use crate::config::Secret;

/// The name shown as the event's `source`.
const SOURCE: &str = "Jenkins";

/// The answer for a `COMPLETED` notification (the build is reported at `FINALIZED`).
const COMPLETED_IGNORED: &str = "phase COMPLETED: reported at FINALIZED";

/// The shared secret as Basic auth (from `user:secret@` in the endpoint URL), a bearer token,
/// or `X-Relay-Token`: the plugin has no signature of its own.
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    auth::shared_secret(secret, request.headers)
}

/// Normalises a Notification plugin body; `COMPLETED` and unknown phases are ignored.
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    let body = json::object(request.body, Some("the Notification plugin's JSON format"))?;
    let Some(phase_raw) = text(&body, "/build/phase") else {
        return Err(PayloadError::field(
            "build.phase",
            "missing field (send the Notification plugin's JSON format)",
        ));
    };
    let build_status = text(&body, "/build/status");
    let (status, phase) = match phase_raw.to_ascii_uppercase().as_str() {
        "QUEUED" => (Status::Pending, Phase::Queued),
        "STARTED" => (Status::Running, Phase::InProgress),
        "COMPLETED" => return Ok(Parsed::Ignored(COMPLETED_IGNORED.to_owned())),
        // Older plugin versions end a build with FINISHED instead of FINALIZED.
        "FINALIZED" | "FINISHED" => (
            build_status.as_deref().map_or(Status::Unknown, result),
            Phase::Completed,
        ),
        _ => {
            return Ok(Parsed::Ignored(format!(
                "phase {phase_raw}: not a build phase (QUEUED, STARTED, COMPLETED, FINALIZED, FINISHED)"
            )));
        }
    };

    // `build.timestamp` means a different moment in each phase (plugin `JobListener`): when the
    // build left the queue's view (QUEUED), when it started (STARTED), and now (FINALIZED). It is
    // milliseconds since the epoch, or an ISO 8601 string from plugin versions before 1.10.
    let timestamp = json::unix_millis(&body, "/build/timestamp")
        .or_else(|| json::time(&body, "/build/timestamp"));
    let duration_ms = body
        .pointer("/build/duration")
        .and_then(Value::as_u64)
        .filter(|_| phase == Phase::Completed);
    let (started_at, finished_at) = match phase {
        Phase::Queued => (None, None),
        Phase::InProgress => (timestamp, None),
        Phase::Completed => {
            let started = match (timestamp, duration_ms) {
                (Some(end), Some(ms)) => i64::try_from(ms)
                    .ok()
                    .and_then(TimeDelta::try_milliseconds)
                    .and_then(|d| end.checked_sub_signed(d)),
                _ => None,
            };
            (started, timestamp)
        }
    };

    let job = JobStatus {
        job: None,
        pipeline: text(&body, "/name")
            .or_else(|| text(&body, "/display_name"))
            .or_else(|| text(&body, "/url").map(|u| u.trim_matches('/').to_owned()))
            .filter(|p| !p.is_empty()),
        status: Some(status),
        status_raw: Some(build_status.unwrap_or_else(|| phase_raw.clone())),
        source: Some(SOURCE.to_owned()),
        phase: Some(phase),
        project: text(&body, "/build/scm/url")
            .as_deref()
            .and_then(repo_path)
            .or_else(|| text(&body, "/name")),
        run_id: text(&body, "/build/number"),
        branch: text(&body, "/build/scm/branch")
            .as_deref()
            .and_then(remote_branch_name),
        commit: text(&body, "/build/scm/commit"),
        commit_message: None,
        url: text(&body, "/build/full_url").filter(|u| u.contains("://")),
        actor: body
            .pointer("/build/scm/culprits")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find_map(|v| v.as_str().and_then(non_empty))),
        actor_email: None,
        started_at,
        finished_at,
        duration_secs: duration_ms.map(|ms| ms.saturating_add(500) / 1000),
        summary: summary(&body),
    };
    Ok(Parsed::Event(Event::JobStatus(job)))
}

/// No delivery header exists; §13's key is the job name + build number + phase, which each
/// phase of each build sends once.
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    let body: Value = serde_json::from_slice(request.body).ok()?;
    let name = text(&body, "/name")
        .or_else(|| text(&body, "/display_name"))
        .or_else(|| text(&body, "/url"))?;
    let number = text(&body, "/build/number")?;
    let phase = text(&body, "/build/phase")?;
    Some(format!("{name}#{number}:{}", phase.to_ascii_uppercase()))
}

/// Jenkins `Result` names. `FAILED` is not a real value but appears in docs and samples.
fn result(raw: &str) -> Status {
    match raw.trim().to_ascii_uppercase().as_str() {
        "SUCCESS" => Status::Success,
        "FAILURE" | "FAILED" | "UNSTABLE" => Status::Failure,
        "ABORTED" => Status::Cancelled,
        "NOT_BUILT" => Status::Skipped,
        _ => Status::Unknown,
    }
}

/// `build.test_summary` as one line, else the first line of the build notes.
fn summary(body: &Value) -> Option<String> {
    let count = |field: &str| {
        body.pointer(&format!("/build/test_summary/{field}"))
            .and_then(Value::as_u64)
    };
    match (count("total"), count("failed"), count("passed")) {
        (Some(total), Some(failed), _) if failed > 0 => {
            return Some(format!("{failed} of {total} tests failed"));
        }
        (Some(total), _, passed) if total > 0 => {
            let passed = passed.unwrap_or(total);
            let skipped = count("skipped").unwrap_or(0);
            return Some(if skipped > 0 {
                format!("{passed} tests passed, {skipped} skipped")
            } else {
                format!("{passed} tests passed")
            });
        }
        _ => {}
    }
    text(body, "/build/notes").and_then(|n| n.lines().find_map(non_empty))
}

/// The repository path of a Git remote: `https://host/owner/repo.git` and `git@host:owner/repo`
/// → `owner/repo` (deeper paths such as GitLab subgroups are kept whole).
fn repo_path(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => {
            let (host, path) = url.split_once(':')?;
            if host.contains('/') {
                return None;
            }
            path
        }
    };
    let path = path.trim_matches('/');
    path.contains('/').then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{headers, request};
    use axum::http::HeaderMap;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use chrono::{DateTime, Utc};

    // Our own fixtures, derived from the plugin's model classes (`JobState`, `BuildState`,
    // `ScmState`, `TestState`) and `Phase.buildJobState`: Gson with snake_case names and null
    // fields left out, so `status` is absent until the build has a result.
    const QUEUED: &str = r#"{"name":"asgard","display_name":"Asgard","url":"job/asgard/",
        "build":{"full_url":"http://jenkins.example.com/job/asgard/18/","number":18,"queue_id":42,
        "timestamp":1700000000000,"phase":"QUEUED","url":"job/asgard/18/","duration":0,
        "scm":{"url":"https://github.com/acme/asgard.git","branch":"origin/main",
        "commit":"c6d86dc6a1b2c3d4e5f60718293a4b5c6d7e8f90","changes":[],"culprits":[]},
        "log":"","artifacts":{}}}"#;
    const STARTED: &str = r#"{"name":"asgard","display_name":"Asgard","url":"job/asgard/",
        "build":{"full_url":"http://jenkins.example.com/job/asgard/18/","number":18,"queue_id":42,
        "timestamp":1700000005000,"phase":"STARTED","url":"job/asgard/18/","duration":0,
        "scm":{"url":"https://github.com/acme/asgard.git","branch":"origin/main",
        "commit":"c6d86dc6a1b2c3d4e5f60718293a4b5c6d7e8f90","changes":[],"culprits":[]},
        "log":"","artifacts":{}}}"#;
    const COMPLETED: &str = r#"{"name":"asgard","display_name":"Asgard","url":"job/asgard/",
        "build":{"full_url":"http://jenkins.example.com/job/asgard/18/","number":18,"queue_id":42,
        "timestamp":1700000070432,"phase":"COMPLETED","status":"FAILURE","url":"job/asgard/18/",
        "duration":65432,"scm":{"url":"https://github.com/acme/asgard.git","branch":"origin/main",
        "commit":"c6d86dc6a1b2c3d4e5f60718293a4b5c6d7e8f90","changes":["src/lib.rs"],
        "culprits":["alice"]},"log":"","notes":"nightly","artifacts":{},
        "test_summary":{"total":420,"failed":3,"passed":412,"skipped":5,
        "failed_tests":["a.b.C.test1","a.b.C.test2","a.b.D.test3"]}}}"#;
    const FINALIZED: &str = r#"{"name":"asgard","display_name":"Asgard","url":"job/asgard/",
        "build":{"full_url":"http://jenkins.example.com/job/asgard/18/","number":18,"queue_id":42,
        "timestamp":1700000071000,"phase":"FINALIZED","status":"FAILURE","url":"job/asgard/18/",
        "duration":65432,"scm":{"url":"https://github.com/acme/asgard.git","branch":"origin/main",
        "commit":"c6d86dc6a1b2c3d4e5f60718293a4b5c6d7e8f90","changes":["src/lib.rs"],
        "culprits":["alice"]},"log":"","notes":"nightly","artifacts":{},
        "test_summary":{"total":420,"failed":3,"passed":412,"skipped":5,
        "failed_tests":["a.b.C.test1","a.b.C.test2","a.b.D.test3"]}}}"#;

    fn plugin_headers() -> HeaderMap {
        let basic = format!("Basic {}", STANDARD.encode("jenkins:s3cret"));
        headers(&[
            ("content-type", "application/json;charset=UTF-8"),
            ("authorization", &basic),
        ])
    }

    fn job(body: &str) -> JobStatus {
        let h = plugin_headers();
        match parse(&request(&h, body, Utc::now())) {
            Ok(Parsed::Event(Event::JobStatus(j))) => j,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn ignored(body: &str) -> String {
        let h = plugin_headers();
        match parse(&request(&h, body, Utc::now())) {
            Ok(Parsed::Ignored(reason)) => reason,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn at(ms: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(ms)
    }

    #[test]
    fn four_phases_make_one_completed_report() {
        // (fixture, status, status_raw, phase, started ms, finished ms, duration)
        let cases: &[(
            &str,
            Status,
            &str,
            Phase,
            Option<i64>,
            Option<i64>,
            Option<u64>,
        )] = &[
            (
                QUEUED,
                Status::Pending,
                "QUEUED",
                Phase::Queued,
                None,
                None,
                None,
            ),
            (
                STARTED,
                Status::Running,
                "STARTED",
                Phase::InProgress,
                Some(1_700_000_005_000),
                None,
                None,
            ),
            (
                FINALIZED,
                Status::Failure,
                "FAILURE",
                Phase::Completed,
                Some(1_700_000_071_000 - 65_432),
                Some(1_700_000_071_000),
                Some(65),
            ),
        ];
        for (body, status, raw, phase, started, finished, duration) in cases {
            let j = job(body);
            assert_eq!(j.status.as_ref(), Some(status), "{raw}");
            assert_eq!(j.status_raw.as_deref(), Some(*raw));
            assert_eq!(j.phase, Some(*phase), "{raw}");
            assert_eq!(j.source.as_deref(), Some("Jenkins"));
            assert_eq!(j.pipeline.as_deref(), Some("asgard"));
            assert_eq!(j.job, None);
            assert_eq!(j.project.as_deref(), Some("acme/asgard"));
            assert_eq!(j.run_id.as_deref(), Some("18"));
            assert_eq!(j.branch.as_deref(), Some("main"));
            assert_eq!(
                j.commit.as_deref(),
                Some("c6d86dc6a1b2c3d4e5f60718293a4b5c6d7e8f90")
            );
            assert_eq!(
                j.url.as_deref(),
                Some("http://jenkins.example.com/job/asgard/18/")
            );
            assert_eq!(j.started_at, started.and_then(at), "{raw}");
            assert_eq!(j.finished_at, finished.and_then(at), "{raw}");
            assert_eq!(j.duration_secs, *duration, "{raw}");
        }
        let done = job(FINALIZED);
        assert_eq!(done.actor.as_deref(), Some("alice"));
        assert_eq!(done.summary.as_deref(), Some("3 of 420 tests failed"));
        assert_eq!(ignored(COMPLETED), "phase COMPLETED: reported at FINALIZED");
    }

    #[test]
    fn results_normalise() {
        // (build.status, normalised)
        let cases: &[(&str, Status)] = &[
            ("SUCCESS", Status::Success),
            ("FAILURE", Status::Failure),
            ("UNSTABLE", Status::Failure),
            ("FAILED", Status::Failure),
            ("ABORTED", Status::Cancelled),
            ("NOT_BUILT", Status::Skipped),
            ("success", Status::Success),
            ("FLAKY", Status::Unknown),
        ];
        for (raw, want) in cases {
            let body = FINALIZED.replace(r#""status":"FAILURE""#, &format!(r#""status":"{raw}""#));
            let j = job(&body);
            assert_eq!(j.status.as_ref(), Some(want), "{raw}");
            assert_eq!(j.status_raw.as_deref(), Some(*raw));
            assert_eq!(j.phase, Some(Phase::Completed), "{raw}");
        }
    }

    #[test]
    fn finished_from_older_plugins_is_the_one_completed_report() {
        let finished = FINALIZED.replace(r#""phase":"FINALIZED""#, r#""phase":"FINISHED""#);
        assert_ne!(finished, FINALIZED, "the fixture names its phase");
        let j = job(&finished);
        assert_eq!(j.phase, Some(Phase::Completed));
        assert_eq!(j.status, Some(Status::Failure));
    }

    #[test]
    fn lenient_variants() {
        type Case = (&'static str, &'static str, fn(&JobStatus) -> bool);
        let cases: &[Case] = &[
            (
                "minimal body",
                r#"{"name":"app","build":{"number":7,"phase":"FINALIZED","status":"SUCCESS"}}"#,
                |j| {
                    j.pipeline.as_deref() == Some("app")
                        && j.project.as_deref() == Some("app")
                        && j.url.is_none()
                        && j.branch.is_none()
                        && j.duration_secs.is_none()
                        && j.summary.is_none()
                        && j.status == Some(Status::Success)
                },
            ),
            (
                "finalized without a result",
                r#"{"name":"app","build":{"number":7,"phase":"FINALIZED"}}"#,
                |j| {
                    j.status == Some(Status::Unknown)
                        && j.status_raw.as_deref() == Some("FINALIZED")
                        && j.phase == Some(Phase::Completed)
                },
            ),
            (
                "empty name falls back to display_name",
                r#"{"name":"","display_name":"发布 🚀","build":{"number":1,"phase":"STARTED"}}"#,
                |j| j.pipeline.as_deref() == Some("发布 🚀"),
            ),
            (
                "no names falls back to the job url",
                r#"{"url":"job/folder/job/app/","build":{"number":1,"phase":"QUEUED"}}"#,
                |j| j.pipeline.as_deref() == Some("job/folder/job/app"),
            ),
            (
                "relative build url is not a link",
                r#"{"name":"a","build":{"number":1,"phase":"STARTED","url":"job/a/1/"}}"#,
                |j| j.url.is_none(),
            ),
            (
                "refs/heads/ and scp-style remote",
                r#"{"name":"a","build":{"number":1,"phase":"STARTED","scm":{
                "url":"git@gitlab.example.com:group/sub/app.git","branch":"refs/heads/feat/x"}}}"#,
                |j| {
                    j.branch.as_deref() == Some("feat/x")
                        && j.project.as_deref() == Some("group/sub/app")
                },
            ),
            (
                "refs/remotes/origin/ stripped",
                r#"{"name":"a","build":{"number":1,"phase":"STARTED","scm":{"branch":"refs/remotes/origin/release/1.2"}}}"#,
                |j| j.branch.as_deref() == Some("release/1.2"),
            ),
            (
                "wrong-typed optional fields are absent",
                r#"{"name":"a","build":{"number":1,"phase":"FINALIZED","status":"SUCCESS",
                "full_url":5,"duration":"long","timestamp":true,"scm":"git","test_summary":[]}}"#,
                |j| {
                    j.url.is_none()
                        && j.duration_secs.is_none()
                        && j.finished_at.is_none()
                        && j.project.as_deref() == Some("a")
                },
            ),
            (
                "old plugins send an ISO timestamp",
                r#"{"name":"a","build":{"number":1,"phase":"STARTED","timestamp":"2016-04-25T13:14:15.1+00:00"}}"#,
                |j| j.started_at.map(|t| t.timestamp()) == Some(1_461_590_055),
            ),
            (
                "all tests passed",
                r#"{"name":"a","build":{"number":1,"phase":"FINALIZED","status":"SUCCESS",
                "test_summary":{"total":418,"failed":0,"passed":418,"skipped":0}}}"#,
                |j| j.summary.as_deref() == Some("418 tests passed"),
            ),
            (
                "long non-ASCII notes become the summary's first line",
                r#"{"name":"a","build":{"number":1,"phase":"FINALIZED","status":"SUCCESS",
                "notes":"\n夜间构建 ✅ 完成\n第二行"}}"#,
                |j| j.summary.as_deref() == Some("夜间构建 ✅ 完成"),
            ),
        ];
        for (label, body, check) in cases {
            let j = job(body);
            assert!(check(&j), "{label}: {:.600}", format!("{j:?}"));
        }
        let long = "构建说明🚀".repeat(2000);
        let body = format!(
            r#"{{"name":"a","build":{{"number":1,"phase":"FINALIZED","status":"SUCCESS","notes":"{long}"}}}}"#
        );
        assert_eq!(job(&body).summary.as_deref(), Some(long.as_str()));
    }

    #[test]
    fn ignored_and_rejected_bodies() {
        assert_eq!(
            ignored(r#"{"name":"a","build":{"number":1,"phase":"NONE"}}"#),
            "phase NONE: not a build phase (QUEUED, STARTED, COMPLETED, FINALIZED, FINISHED)"
        );
        assert_eq!(
            ignored(r#"{"name":"a","build":{"number":1,"phase":"completed","status":"SUCCESS"}}"#),
            COMPLETED_IGNORED
        );
        let h = plugin_headers();
        let err = parse(&request(
            &h,
            r#"{"name":"a","build":{"number":1}}"#,
            Utc::now(),
        ))
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("build.phase"));
        for body in ["", "<job><name>a</name></job>", "[1]", "null", "{\"name\":"] {
            let err = parse(&request(&h, body, Utc::now())).expect_err(body);
            assert!(err.field.is_none(), "{body}: {err:?}");
            assert!(
                err.message.starts_with("body is not valid JSON"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn delivery_ids_are_per_phase() {
        let h = plugin_headers();
        let ids: Vec<_> = [QUEUED, STARTED, COMPLETED, FINALIZED]
            .iter()
            .map(|b| delivery_id(&request(&h, b, Utc::now())))
            .collect();
        assert_eq!(
            ids,
            [
                Some("asgard#18:QUEUED".to_owned()),
                Some("asgard#18:STARTED".to_owned()),
                Some("asgard#18:COMPLETED".to_owned()),
                Some("asgard#18:FINALIZED".to_owned()),
            ]
        );
        assert_eq!(
            delivery_id(&request(&h, r#"{"name":"a"}"#, Utc::now())),
            None
        );
        assert_eq!(delivery_id(&request(&h, "not json", Utc::now())), None);
    }

    #[test]
    fn auth_is_the_shared_secret() {
        let secret = Secret::new("s3cret");
        let basic = |creds: &str| format!("Basic {}", STANDARD.encode(creds));
        // (headers, accepted)
        let cases: Vec<(Vec<(&str, String)>, bool)> = vec![
            // https://jenkins:s3cret@relay.example.com/v1/hooks/jenkins
            (vec![("authorization", basic("jenkins:s3cret"))], true),
            (vec![("authorization", "Bearer s3cret".to_owned())], true),
            (vec![("x-relay-token", "s3cret".to_owned())], true),
            (vec![("authorization", basic("jenkins:wrong"))], false),
            (vec![("x-relay-token", "s3cret ".to_owned() + "x")], false),
            (vec![], false),
        ];
        for (pairs, ok) in cases {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let h = headers(&pairs);
            let result = verify(&secret, &request(&h, FINALIZED, Utc::now()));
            assert_eq!(result.is_ok(), ok, "{pairs:?}: {result:?}");
            if let Err(message) = result {
                assert!(!message.contains("s3cret"), "{message}");
            }
        }
    }
}
