//! Azure DevOps service hooks (`source: azure-devops`, ci-webhooks §8): `build.complete`, and the
//! YAML pipelines' run, stage and job state-changed events.
//!
//! Azure DevOps signs nothing: the route's secret is a shared secret the subscription sends as
//! the Basic auth password, as `Authorization: Bearer …` or in an `X-Relay-Token` custom header.
//! The event is named by the body's `eventType`; other events, and the sample deliveries of the
//! subscription dialog's "Test" button, are ignored. No I/O.

use serde_json::Value;

use super::auth::{self, AuthResult};
use super::json::{self, at, branch_name, first, normalise, text, time};
use super::{Event, JobStatus, Parsed, PayloadError, Request, Status};
use crate::config::Secret;

/// Shown as the event's `source`.
const SOURCE_NAME: &str = "Azure Pipelines";

/// No real subscription or event has the nil UUID; test deliveries of an unsaved one do.
const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// The shared secret as Basic auth password, Bearer token or `X-Relay-Token`.
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    auth::shared_secret(secret, request.headers)
}

/// The body's event `id`, with `notificationId` when present (both are kept when Azure DevOps
/// retries a notification).
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    let body: Value = serde_json::from_slice(request.body).ok()?;
    let id = text(&body, "/id")?;
    Some(match text(&body, "/notificationId") {
        Some(notification) => format!("{id}:{notification}"),
        None => id,
    })
}

/// Normalises a build or pipeline-run event; other event types and test deliveries are ignored.
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    let body = json::object(request.body, None)?;
    let Some(event_type) = text(&body, "/eventType") else {
        return Ok(Parsed::Ignored(
            "no eventType: not an Azure DevOps service-hook notification".to_owned(),
        ));
    };
    // Microsoft's sample payloads (what the "Test" button sends under a saved subscription)
    // are reported like real ones: they cannot be told from a real delivery for sure, and an
    // operator testing a route expects to see a report. Only the nil ids of an unsaved
    // subscription's test are ignored.
    if is_test_delivery(&body) {
        return Ok(Parsed::Ignored(format!(
            "Azure DevOps test notification ({event_type} from an unsaved subscription)"
        )));
    }
    let resource = at(&body, "/resource").unwrap_or(&Value::Null);
    let job = match event_type.as_str() {
        "build.complete" => build(resource),
        "ms.vss-pipelines.run-state-changed-event" => pipeline_run(resource, None),
        "ms.vss-pipelines.stage-state-changed-event" => pipeline_run(resource, Some("/stage")),
        "ms.vss-pipelines.job-state-changed-event" => pipeline_run(resource, Some("/job")),
        other => {
            return Ok(Parsed::Ignored(format!(
                "Azure DevOps event {other:?} is not reported (only build.complete and the ms.vss-pipelines run, stage and job state changes)"
            )));
        }
    };
    Ok(Parsed::Event(Event::JobStatus(job)))
}

fn is_test_delivery(body: &Value) -> bool {
    let id = text(body, "/id");
    let subscription = text(body, "/subscriptionId");
    id.as_deref().is_some_and(|id| id == NIL_UUID) || subscription.as_deref() == Some(NIL_UUID)
}

/// The first of `fields` (JSON pointers) that has a value other than `none` (Azure's "not set").
fn raw_state(subject: &Value, fields: &[&str]) -> Option<String> {
    fields
        .iter()
        .find_map(|field| text(subject, field).filter(|v| !v.eq_ignore_ascii_case("none")))
}

/// `build.complete`: the Build REST resource (current and XAML-era shapes). The subscription
/// sends it in full only with "Resource details to send: All".
fn build(resource: &Value) -> JobStatus {
    let (status, status_raw, phase) =
        normalise(raw_state(resource, &["/result", "/status"]), state);
    // XAML-era builds name branch and commit only in `sourceGetVersion`: `LG:refs/heads/x:<sha>`.
    let (legacy_ref, legacy_sha) = text(resource, "/sourceGetVersion")
        .and_then(|v| {
            let (git_ref, sha) = v.strip_prefix("LG:")?.rsplit_once(':')?;
            Some((git_ref.to_owned(), sha.to_owned()))
        })
        .unzip();
    let requested_for = at(resource, "/requestedFor").or_else(|| {
        at(resource, "/requests")?
            .as_array()?
            .first()
            .and_then(|r| at(r, "/requestedFor"))
    });
    let (actor, actor_email) = person(requested_for);
    JobStatus {
        job: None,
        pipeline: text(resource, "/definition/name"),
        status: Some(status),
        status_raw,
        source: Some(SOURCE_NAME.to_owned()),
        phase: Some(phase),
        project: first(
            resource,
            &[
                "/project/name",
                "/definition/project/name",
                "/repository/name",
            ],
        ),
        run_id: first(resource, &["/buildNumber", "/id"]),
        branch: text(resource, "/sourceBranch")
            .or(legacy_ref)
            .as_deref()
            .and_then(branch_name),
        commit: text(resource, "/sourceVersion").or(legacy_sha),
        commit_message: None,
        url: first(resource, &["/_links/web/href", "/url"]),
        actor,
        actor_email,
        started_at: time(resource, "/startTime"),
        finished_at: time(resource, "/finishTime"),
        duration_secs: None,
        summary: None,
    }
}

/// The YAML pipelines' state-changed events: the run itself, or one of its stages or jobs
/// (`part`, a JSON pointer such as `/stage`), with the run and pipeline for context.
fn pipeline_run(resource: &Value, part: Option<&str>) -> JobStatus {
    let run = at(resource, "/run").unwrap_or(&Value::Null);
    let subject = match part {
        Some(part) => at(resource, part).unwrap_or(&Value::Null),
        None => run,
    };
    let (status, status_raw, phase) = normalise(raw_state(subject, &["/result", "/state"]), state);
    let this_repo = at(run, "/resources/repositories/self").unwrap_or(&Value::Null);
    let (started, finished) = match part {
        None => ("/createdDate", "/finishedDate"),
        Some(_) => ("/startTime", "/finishTime"),
    };
    JobStatus {
        job: part.and_then(|_| first(subject, &["/displayName", "/name"])),
        pipeline: text(resource, "/pipeline/name").or_else(|| text(run, "/pipeline/name")),
        status: Some(status),
        status_raw,
        source: Some(SOURCE_NAME.to_owned()),
        phase: Some(phase),
        project: first(resource, &["/project/name", "/repository/name"]),
        run_id: first(run, &["/name", "/id"]),
        branch: text(this_repo, "/refName").as_deref().and_then(branch_name),
        commit: text(this_repo, "/version"),
        commit_message: None,
        url: text(subject, "/_links/web/href").or_else(|| text(run, "/_links/web/href")),
        actor: None,
        actor_email: None,
        started_at: time(subject, started),
        finished_at: time(subject, finished),
        duration_secs: None,
        summary: None,
    }
}

/// An identity's (actor, e-mail). `uniqueName` is the sign-in name: an e-mail/UPN on Azure
/// DevOps Services (then the display name is the actor and `users` can match the e-mail), a
/// `DOMAIN\user` login on Azure DevOps Server (then it is the actor).
fn person(identity: Option<&Value>) -> (Option<String>, Option<String>) {
    let Some(identity) = identity else {
        return (None, None);
    };
    let display = text(identity, "/displayName");
    match text(identity, "/uniqueName") {
        Some(email) if email.contains('@') => {
            (display.or_else(|| Some(email.clone())), Some(email))
        }
        Some(login) => (Some(login), None),
        None => (display, None),
    }
}

/// Build `result`/`status` and pipelines `result`/`state` values (case-insensitive).
fn state(raw: &str) -> Option<Status> {
    Some(match raw.to_ascii_lowercase().as_str() {
        "succeeded" => Status::Success,
        // Some tasks failed with "continue on error": a warning, reported as a failure.
        "failed" | "partiallysucceeded" => Status::Failure,
        // `rejected`: a stage whose approval was refused; `stopped`: the XAML-era cancel.
        "canceled" | "cancelled" | "rejected" | "stopped" => Status::Cancelled,
        "skipped" => Status::Skipped,
        "inprogress" | "running" | "canceling" | "cancelling" => Status::Running,
        "notstarted" | "waiting" | "postponed" | "queued" => Status::Pending,
        // `completed` without a result, and anything new: unknown.
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::sources::Phase;
    use crate::sources::testing::{self, headers, request, utc};

    /// Microsoft's XAML-era `build.complete` sample: what the "Test" button sends.
    const BUILD_COMPLETE_JSON: &str = testing::corpus!("azuredevops", "build.complete.json");

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("time")
    }

    /// What a subscription sends: Basic auth with the secret, JSON.
    fn delivery_headers() -> Vec<(&'static str, String)> {
        vec![
            (
                "authorization",
                format!("Basic {}", auth::base64(b"relay:s3cret")),
            ),
            ("content-type", "application/json; charset=utf-8".to_owned()),
        ]
    }

    fn parse_body(body: &str) -> Result<Parsed, PayloadError> {
        let pairs = delivery_headers();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let headers = headers(&pairs);
        parse(&request(&headers, body.as_bytes(), now()))
    }

    fn job_status(body: &str) -> JobStatus {
        match parse_body(body).unwrap_or_else(|e| panic!("{e}")) {
            Parsed::Event(Event::JobStatus(j)) => j,
            other => panic!("not a job_status: {other:?}"),
        }
    }

    /// The corpus sample as a real subscription delivers it: its own event id and envelope.
    fn delivered(sample: &str) -> String {
        let mut value: Value = serde_json::from_str(sample).expect("sample");
        value["id"] = "5f1c1b62-8e0f-4c1e-9d55-3f3f0b1b2a10".into();
        value["subscriptionId"] = "9857e11c-bc4d-4853-809c-90b618e4e72a".into();
        value["notificationId"] = 15.into();
        value.to_string()
    }

    #[test]
    fn corpus_build_complete_is_normalised() {
        let j = job_status(&delivered(BUILD_COMPLETE_JSON));
        assert_eq!(j.pipeline.as_deref(), Some("ConsumerAddressModule"));
        assert_eq!(j.job, None);
        assert_eq!(j.status, Some(Status::Success));
        assert_eq!(j.status_raw.as_deref(), Some("succeeded"));
        assert_eq!(j.phase, Some(Phase::Completed));
        assert_eq!(j.source.as_deref(), Some("Azure Pipelines"));
        assert_eq!(
            j.run_id.as_deref(),
            Some("ConsumerAddressModule_20150407.1")
        );
        assert_eq!(j.project, None, "the XAML sample names no project");
        assert_eq!(j.branch.as_deref(), Some("master"), "from sourceGetVersion");
        assert_eq!(
            j.commit.as_deref(),
            Some("600c52d2d5b655caa111abfd863e5a9bd304bb0e")
        );
        assert_eq!(
            j.url.as_deref(),
            Some(
                "https://dev.azure.com/fabrikam-fiber-inc/DefaultCollection/71777fbc-1cf2-4bd1-9540-128c1c71f766/_apis/build-release/Builds/2"
            ),
            "no web link in this sample: the REST one"
        );
        assert_eq!(j.actor.as_deref(), Some("Normal Paulk"));
        assert_eq!(
            j.actor_email.as_deref(),
            Some("fabrikamfiber16@hotmail.com")
        );
        assert_eq!(j.started_at, utc("2015-04-07T18:04:06.83Z"));
        assert_eq!(j.finished_at, utc("2015-04-07T18:06:10.69Z"));
        assert_eq!(j.duration_secs, None);
        assert_eq!(j.duration_secs(), Some(123), "computed, whole seconds");
    }

    #[test]
    fn corpus_sample_is_reported() {
        match parse_body(BUILD_COMPLETE_JSON).expect("parses") {
            Parsed::Event(Event::JobStatus(j)) => {
                assert_eq!(j.phase, Some(Phase::Completed));
                assert!(j.status.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    const CURRENT_BUILD: &str = r#"{"subscriptionId":"4f6e6328-0251-4814-a009-c01dfa368e3f",
        "notificationId":7,"id":"8c0b6c8e-3f43-4a43-9f42-8d1f2a5e7c11","eventType":"build.complete",
        "resource":{"_links":{"web":{"href":"https://dev.azure.com/org/proj/_build/results?buildId=2727068"}},
          "id":2727068,"buildNumber":"20221202.1","status":"completed","result":"RESULT",
          "startTime":"2022-12-02T12:18:56.6205723Z","finishTime":"2022-12-02T12:21:08.520904Z",
          "url":"https://dev.azure.com/org/proj/_apis/build/Builds/2727068",
          "definition":{"id":4658,"name":"MainRepo CI"},"project":{"name":"FabrikamFiberChat"},
          "sourceBranch":"refs/heads/main","sourceVersion":"6e12f6141917f66a2964af55952ee33914d2d91f",
          "requestedFor":{"displayName":"Jack Fabrikam","uniqueName":"jack@fabrikam.example"},
          "repository":{"name":"MainRepo"}}}"#;

    #[test]
    fn current_build_complete_shape() {
        let j = job_status(&CURRENT_BUILD.replace("RESULT", "succeeded"));
        assert_eq!(j.pipeline.as_deref(), Some("MainRepo CI"));
        assert_eq!(j.run_id.as_deref(), Some("20221202.1"));
        assert_eq!(j.project.as_deref(), Some("FabrikamFiberChat"));
        assert_eq!(j.branch.as_deref(), Some("main"));
        assert_eq!(
            j.commit.as_deref(),
            Some("6e12f6141917f66a2964af55952ee33914d2d91f")
        );
        assert_eq!(
            j.url.as_deref(),
            Some("https://dev.azure.com/org/proj/_build/results?buildId=2727068"),
            "the web link, not the REST one"
        );
        assert_eq!(j.actor.as_deref(), Some("Jack Fabrikam"));
        assert_eq!(j.actor_email.as_deref(), Some("jack@fabrikam.example"));
        assert_eq!(j.duration_secs(), Some(131), "whole seconds");
    }

    #[test]
    fn results_and_statuses() {
        // (resource.result, status, status_raw)
        let cases: &[(&str, Status, &str)] = &[
            ("succeeded", Status::Success, "succeeded"),
            ("failed", Status::Failure, "failed"),
            ("partiallySucceeded", Status::Failure, "partiallySucceeded"),
            ("canceled", Status::Cancelled, "canceled"),
            // No result yet: the status decides.
            ("none", Status::Unknown, "completed"),
            ("brandNew", Status::Unknown, "brandNew"),
        ];
        for (result, expected, raw) in cases {
            let j = job_status(&CURRENT_BUILD.replace("RESULT", result));
            assert_eq!(j.status.as_ref(), Some(expected), "{result}");
            assert_eq!(j.status_raw.as_deref(), Some(*raw), "{result}");
            assert_eq!(j.phase, Some(Phase::Completed), "{result}");
        }
        for (raw, expected, phase) in [
            ("inProgress", Status::Running, Phase::InProgress),
            ("cancelling", Status::Running, Phase::InProgress),
            ("notStarted", Status::Pending, Phase::Queued),
            ("postponed", Status::Pending, Phase::Queued),
            ("stopped", Status::Cancelled, Phase::Completed),
            ("rejected", Status::Cancelled, Phase::Completed),
            ("skipped", Status::Skipped, Phase::Completed),
        ] {
            let (status, kept, got_phase) = normalise(Some(raw.to_owned()), state);
            assert_eq!(status, expected, "{raw}");
            assert_eq!(kept.as_deref(), Some(raw));
            assert_eq!(got_phase, phase, "{raw}");
        }
    }

    #[test]
    fn domain_logins_are_the_actor_and_non_ascii_is_kept() {
        let body = CURRENT_BUILD
            .replace("RESULT", "failed")
            .replace("jack@fabrikam.example", r"FABRIKAM\\jack")
            .replace("MainRepo CI", "主干构建 🚀");
        let j = job_status(&body);
        assert_eq!(j.actor.as_deref(), Some(r"FABRIKAM\jack"));
        assert_eq!(j.actor_email, None);
        assert_eq!(j.pipeline.as_deref(), Some("主干构建 🚀"));
    }

    #[test]
    fn minimal_resource_details_degrade_gracefully() {
        // "Resource details to send: Minimal" leaves only id and url.
        let j = job_status(
            r#"{"id":"6a","eventType":"build.complete","resource":{"id":2,"url":"https://x/_apis/build/Builds/2"}}"#,
        );
        assert_eq!(j.status, Some(Status::Unknown));
        assert_eq!(j.status_raw, None);
        assert_eq!(j.phase, Some(Phase::Completed));
        assert_eq!(j.run_id.as_deref(), Some("2"));
        assert_eq!(j.pipeline, None);
        // None at all, or of the wrong types.
        for body in [
            r#"{"id":"6b","eventType":"build.complete"}"#,
            r#"{"id":"6c","eventType":"build.complete","resource":{"result":5,"definition":"d",
              "startTime":"later","requestedFor":"me","sourceBranch":[]}}"#,
        ] {
            let j = job_status(body);
            assert_eq!(j.status, Some(Status::Unknown), "{body}");
            assert_eq!((j.pipeline, j.actor, j.branch), (None, None, None));
            assert_eq!(j.started_at, None);
        }
    }

    #[test]
    fn run_state_changed() {
        let body = r#"{"id":"1f5a3b8c-0d2e-4f60-9a7b-6c5d4e3f2a1b","notificationId":3,
            "eventType":"ms.vss-pipelines.run-state-changed-event",
            "resource":{"run":{"_links":{"web":{"href":"https://dev.azure.com/org/p/_build/results?buildId=11"}},
              "pipeline":{"id":1,"name":"Pipeline-Name"},"state":"completed","result":"failed",
              "createdDate":"2024-07-17T21:34:22.338Z","finishedDate":"2024-07-17T21:45:22.338Z",
              "id":11,"name":"20240717.3",
              "resources":{"repositories":{"self":{"refName":"refs/heads/release/1","version":"abc1234def"}}}}}}"#;
        let j = job_status(body);
        assert_eq!(j.pipeline.as_deref(), Some("Pipeline-Name"));
        assert_eq!(j.job, None);
        assert_eq!(j.status, Some(Status::Failure));
        assert_eq!(j.status_raw.as_deref(), Some("failed"));
        assert_eq!(j.run_id.as_deref(), Some("20240717.3"));
        assert_eq!(j.branch.as_deref(), Some("release/1"));
        assert_eq!(j.commit.as_deref(), Some("abc1234def"));
        assert_eq!(
            j.url.as_deref(),
            Some("https://dev.azure.com/org/p/_build/results?buildId=11")
        );
        assert_eq!(j.started_at, utc("2024-07-17T21:34:22.338Z"));
        assert_eq!(j.duration_secs(), Some(660));

        let running = r#"{"id":"x","eventType":"ms.vss-pipelines.run-state-changed-event",
            "resource":{"run":{"state":"inProgress","pipeline":{"name":"P"},"id":12}}}"#;
        let j = job_status(running);
        assert_eq!(j.status, Some(Status::Running));
        assert_eq!(j.status_raw.as_deref(), Some("inProgress"));
        assert_eq!(j.phase, Some(Phase::InProgress));
        assert_eq!(j.run_id.as_deref(), Some("12"));
    }

    #[test]
    fn stage_and_job_state_changed() {
        let stage = r#"{"id":"2b","eventType":"ms.vss-pipelines.stage-state-changed-event",
            "resource":{"stage":{"_links":{"web":{"href":"https://dev.azure.com/o/p/_build/results?buildId=2"}},
              "name":"__default","displayName":"Build","state":"completed","result":"rejected"},
              "run":{"pipeline":{"name":"TEST-CI"},"state":"completed","result":"succeeded","id":2,"name":"2"},
              "pipeline":{"name":"TEST-CI"}}}"#;
        let j = job_status(stage);
        assert_eq!(j.job.as_deref(), Some("Build"));
        assert_eq!(j.pipeline.as_deref(), Some("TEST-CI"));
        assert_eq!(j.status, Some(Status::Cancelled));
        assert_eq!(j.status_raw.as_deref(), Some("rejected"));
        assert_eq!(j.run_id.as_deref(), Some("2"));
        assert_eq!(
            j.url.as_deref(),
            Some("https://dev.azure.com/o/p/_build/results?buildId=2")
        );

        let job = r#"{"id":"3c","eventType":"ms.vss-pipelines.job-state-changed-event",
            "resource":{"job":{"name":"Compile","state":"completed","result":"succeeded",
              "startTime":"2024-11-21T16:40:00Z","finishTime":"2024-11-21T16:42:52.7761408Z"},
              "run":{"pipeline":{"name":"TEST-CI"},"id":5,"name":"20241121.5"}}}"#;
        let j = job_status(job);
        assert_eq!(j.job.as_deref(), Some("Compile"));
        assert_eq!(j.pipeline.as_deref(), Some("TEST-CI"), "from the run");
        assert_eq!(j.status, Some(Status::Success));
        assert_eq!(j.duration_secs(), Some(172));

        let waiting = r#"{"id":"3d","eventType":"ms.vss-pipelines.stage-state-changed-event",
            "resource":{"stage":{"name":"Deploy","state":"waiting"}}}"#;
        let j = job_status(waiting);
        assert_eq!(j.status, Some(Status::Pending));
        assert_eq!(j.phase, Some(Phase::Queued));
        assert_eq!(j.job.as_deref(), Some("Deploy"));
    }

    #[test]
    fn ignored_events_and_test_deliveries() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"id":"9","eventType":"git.push","resource":{}}"#,
                "git.push",
            ),
            (
                r#"{"id":"9","eventType":"ms.vss-release.deployment-completed-event"}"#,
                "not reported",
            ),
            (r#"{"id":"9","resource":{}}"#, "no eventType"),
            (
                r#"{"subscriptionId":"00000000-0000-0000-0000-000000000000","id":"9","eventType":"build.complete"}"#,
                "test notification",
            ),
        ];
        for (body, expected) in cases {
            match parse_body(body).expect("parses") {
                Parsed::Ignored(reason) => assert!(reason.contains(expected), "{reason}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_rejected() {
        for body in ["<xml/>", "[]", "", "42"] {
            let err = parse_body(body).expect_err(body);
            assert_eq!(err.field, None);
            assert!(err.message.starts_with("body is not valid JSON: "), "{err}");
        }
    }

    #[test]
    fn shared_secret_auth() {
        let check = |pairs: &[(&str, &str)]| {
            let headers = headers(pairs);
            verify(&Secret::new("s3cret"), &request(&headers, b"{}", now()))
        };
        let basic = format!("Basic {}", auth::base64(b"azure:s3cret"));
        let wrong_basic = format!("Basic {}", auth::base64(b"azure:nope"));
        assert_eq!(check(&[("authorization", &basic)]), Ok(()));
        assert_eq!(check(&[("authorization", "Bearer s3cret")]), Ok(()));
        assert_eq!(check(&[("x-relay-token", "s3cret")]), Ok(()));
        assert_eq!(
            check(&[("authorization", &wrong_basic)]),
            Err("wrong secret".to_owned())
        );
        assert!(check(&[("x-relay-token", "nope")]).is_err());
        let missing = check(&[]).unwrap_err();
        assert!(missing.starts_with("missing credentials"), "{missing}");
        assert!(!missing.contains("s3cret"));
    }

    #[test]
    fn delivery_ids() {
        let id = |body: &str| {
            let headers = headers(&[]);
            delivery_id(&request(&headers, body.as_bytes(), now()))
        };
        assert_eq!(
            id(r#"{"id":"4a5d","notificationId":286}"#).as_deref(),
            Some("4a5d:286")
        );
        assert_eq!(id(r#"{"id":"4a5d"}"#).as_deref(), Some("4a5d"));
        assert_eq!(id(r#"{"notificationId":1}"#), None);
        assert_eq!(id("nope"), None);
    }
}
