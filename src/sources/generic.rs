//! The relay's own webhook format (`source: generic`, spec §5): a JSON object whose `type` is
//! `job_status` or `standup`. Every problem names the JSON field at fault; unknown extra fields
//! are ignored, because senders add things. Empty strings count as absent.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

use super::auth::{self, AuthResult};
use super::json::{self, non_empty};
use super::{Event, JobStatus, PayloadError, Phase, Request, Standup, Status};
use crate::config::Secret;

/// Checks the route's secret: `Authorization: Bearer <secret>`, or an HMAC-SHA256 of the raw
/// body in `X-Signature-256: sha256=<hex>`.
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    let bearer = auth::bearer(request.headers);
    let signature = auth::header(request.headers, "x-signature-256");
    if bearer.is_none() && signature.is_none() {
        return Err(
            "missing credentials: send Authorization: Bearer <secret> or X-Signature-256: sha256=<hmac>"
                .to_owned(),
        );
    }
    if bearer.is_some_and(|token| auth::ct_eq(token.as_bytes(), secret.expose().as_bytes())) {
        return Ok(());
    }
    if let Some(signature) = signature {
        let hex = signature.strip_prefix("sha256=").unwrap_or(signature);
        if auth::hmac_hex_matches(secret, request.body, hex) {
            return Ok(());
        }
    }
    Err("wrong secret or signature".to_owned())
}

/// A generic sender may name its delivery with `Idempotency-Key`.
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    auth::header(request.headers, "idempotency-key").map(str::to_owned)
}

/// Parses a generic webhook body into an [`Event`].
pub fn parse(body: &[u8]) -> Result<Event, PayloadError> {
    let value = json::parse(body)?;
    let Value::Object(map) = value else {
        return Err(PayloadError::body(format!(
            "body is not valid JSON: expected an object such as {{\"type\":\"job_status\",…}}, got {}",
            kind_of(&value)
        )));
    };
    let obj = Obj(&map);
    let kind = obj
        .string("type")?
        .ok_or_else(|| PayloadError::field("type", "missing field"))?;
    match kind.as_str() {
        "job_status" => job_status(&obj).map(Event::JobStatus),
        "standup" => standup(&obj).map(Event::Standup),
        other => Err(PayloadError::field(
            "type",
            &format!("unknown type {other:?}; expected job_status or standup"),
        )),
    }
}

fn job_status(obj: &Obj<'_>) -> Result<JobStatus, PayloadError> {
    let job = obj.string("job")?;
    let pipeline = obj.string("pipeline")?;
    if job.is_none() && pipeline.is_none() {
        return Err(PayloadError::field(
            "job",
            "missing field (give job or pipeline)",
        ));
    }
    let status = obj
        .string("status")?
        .ok_or_else(|| PayloadError::field("status", "missing field"))?;
    let phase = match obj.string("phase")?.as_deref() {
        None => None,
        Some("queued") => Some(Phase::Queued),
        Some("in_progress") => Some(Phase::InProgress),
        Some("completed") => Some(Phase::Completed),
        Some(other) => {
            return Err(PayloadError::field(
                "phase",
                &format!("unknown phase {other:?}; expected queued, in_progress or completed"),
            ));
        }
    };
    let branch = obj.string("branch")?.as_deref().and_then(json::branch_name);
    Ok(JobStatus {
        job,
        pipeline,
        status: Some(Status::parse(&status)),
        status_raw: None,
        source: None,
        phase,
        project: obj.string("project")?,
        run_id: obj.string_or_number("run_id")?,
        branch,
        commit: obj.string("commit")?,
        commit_message: obj.string("commit_message")?,
        url: obj.string("url")?,
        actor: obj.string("actor")?,
        actor_email: obj.string("actor_email")?,
        started_at: obj.time("started_at")?,
        finished_at: obj.time("finished_at")?,
        duration_secs: obj.seconds("duration_secs")?,
        summary: obj.string("summary")?,
    })
}

fn standup(obj: &Obj<'_>) -> Result<Standup, PayloadError> {
    let user = obj.string("user")?;
    let userid = obj.string("userid")?;
    if user.is_none() && userid.is_none() {
        return Err(PayloadError::field(
            "user",
            "missing field (give user or userid)",
        ));
    }
    let date = obj.string("date")?;
    if let Some(d) = &date {
        let valid = d.len() == 10 && NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok();
        if !valid {
            return Err(PayloadError::field(
                "date",
                "not a YYYY-MM-DD date (e.g. 2026-11-24)",
            ));
        }
    }
    let standup = Standup {
        user,
        userid,
        date,
        done: obj.strings("done")?,
        todo: obj.strings("todo")?,
        blockers: obj.strings("blockers")?,
        notes: obj.string("notes")?,
    };
    if standup.done.is_empty()
        && standup.todo.is_empty()
        && standup.blockers.is_empty()
        && standup.notes.is_none()
    {
        return Err(PayloadError::field(
            "done",
            "give at least one of done, todo, blockers, notes",
        ));
    }
    Ok(standup)
}

/// The body object, with typed accessors that name the field in every error.
struct Obj<'a>(&'a Map<String, Value>);

impl Obj<'_> {
    /// The field's value, with `null` treated as absent.
    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    /// An optional string; empty (or blank) strings are absent. Values are trimmed.
    fn string(&self, field: &str) -> Result<Option<String>, PayloadError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(non_empty(s)),
            Some(_) => Err(PayloadError::field(field, "must be a string")),
        }
    }

    /// An optional string that may also be sent as a number (ids).
    fn string_or_number(&self, field: &str) -> Result<Option<String>, PayloadError> {
        match self.get(field) {
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::String(_)) | None => self.string(field),
            Some(_) => Err(PayloadError::field(field, "must be a string or a number")),
        }
    }

    /// An optional RFC 3339 time.
    fn time(&self, field: &str) -> Result<Option<DateTime<Utc>>, PayloadError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => json::rfc3339(s).map(Some).ok_or_else(|| {
                PayloadError::field(field, "not an RFC 3339 time (e.g. 2026-11-24T08:03:12Z)")
            }),
            Some(_) => Err(PayloadError::field(
                field,
                "must be a string holding an RFC 3339 time",
            )),
        }
    }

    /// An optional non-negative number of seconds; fractions are rounded.
    fn seconds(&self, field: &str) -> Result<Option<u64>, PayloadError> {
        match self.get(field) {
            None => Ok(None),
            Some(value) => json::whole_seconds(value).map(Some).ok_or_else(|| {
                PayloadError::field(field, "must be a non-negative number of seconds")
            }),
        }
    }

    /// An optional list of strings; one string is a one-item list, empty items are dropped.
    fn strings(&self, field: &str) -> Result<Vec<String>, PayloadError> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(non_empty(s).into_iter().collect()),
            Some(Value::Array(items)) if items.len() > MAX_LIST_ITEMS => Err(PayloadError::field(
                field,
                &format!(
                    "at most {MAX_LIST_ITEMS} items (got {}); a report field holds 1000 characters",
                    items.len()
                ),
            )),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.extend(non_empty(s)),
                        Value::Null => {}
                        _ => {
                            return Err(PayloadError::field(
                                &format!("{field}[{i}]"),
                                "must be a string",
                            ));
                        }
                    }
                }
                Ok(out)
            }
            Some(_) => Err(PayloadError::field(
                field,
                "must be a list of strings (or one string)",
            )),
        }
    }
}

/// Most items a standup list (`done`, `todo`, `blockers`) may have: more could never fit in
/// a report field, and a route template looping over them would only burn its fuel.
pub const MAX_LIST_ITEMS: usize = 100;

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Event {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn job(body: &str) -> JobStatus {
        match ok(body) {
            Event::JobStatus(j) => j,
            other => panic!("{body}: not a job_status: {other:?}"),
        }
    }

    fn standup(body: &str) -> Standup {
        match ok(body) {
            Event::Standup(s) => s,
            other => panic!("{body}: not a standup: {other:?}"),
        }
    }

    #[test]
    fn spec_job_status_example_parses() {
        let j = job(
            r#"{"type":"job_status","job":"build","status":"success","project":"acme/api","pipeline":"CI",
            "run_id":"812","branch":"main","commit":"9f2c1e7","commit_message":"Fix flaky test",
            "url":"https://ci.example.com/runs/812","actor":"octocat","started_at":"2026-11-24T08:00:00Z",
            "finished_at":"2026-11-24T08:03:12Z","duration_secs":192,"summary":"418 tests passed"}"#,
        );
        assert_eq!(j.job.as_deref(), Some("build"));
        assert_eq!(j.pipeline.as_deref(), Some("CI"));
        assert_eq!(j.status, Some(Status::Success));
        assert_eq!(j.phase(), Phase::Completed);
        assert_eq!(j.run_id.as_deref(), Some("812"));
        assert_eq!(j.branch.as_deref(), Some("main"));
        assert_eq!(j.actor.as_deref(), Some("octocat"));
        assert_eq!(j.duration_secs, Some(192));
        assert_eq!(
            j.finished_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-24T08:03:12+00:00")
        );
        assert_eq!(j.summary.as_deref(), Some("418 tests passed"));
    }

    #[test]
    fn spec_standup_example_parses() {
        let s = standup(
            r#"{"type":"standup","user":"octocat","date":"2026-11-24","done":["Shipped retries"],
            "todo":["Write docs"],"blockers":[],"notes":"Out Friday"}"#,
        );
        assert_eq!(s.user.as_deref(), Some("octocat"));
        assert_eq!(s.date.as_deref(), Some("2026-11-24"));
        assert_eq!(s.done, vec!["Shipped retries"]);
        assert_eq!(s.todo, vec!["Write docs"]);
        assert!(s.blockers.is_empty());
        assert_eq!(s.notes.as_deref(), Some("Out Friday"));
    }

    #[test]
    fn job_status_lenient_values() {
        type Case = (&'static str, &'static str, fn(&JobStatus) -> bool);
        let cases: &[Case] = &[
            (
                "unknown status kept",
                r#"{"type":"job_status","job":"b","status":"Flaky"}"#,
                |j| j.status == Some(Status::Other("Flaky".to_owned())),
            ),
            (
                "status case-insensitive",
                r#"{"type":"job_status","job":"b","status":"FAILURE"}"#,
                |j| j.status == Some(Status::Failure),
            ),
            (
                "pipeline alone is enough",
                r#"{"type":"job_status","pipeline":"CI","status":"success"}"#,
                |j| j.job.is_none() && j.pipeline.as_deref() == Some("CI"),
            ),
            (
                "numeric run_id",
                r#"{"type":"job_status","job":"b","status":"success","run_id":812}"#,
                |j| j.run_id.as_deref() == Some("812"),
            ),
            (
                "refs/heads/ stripped",
                r#"{"type":"job_status","job":"b","status":"success","branch":"refs/heads/feat/x"}"#,
                |j| j.branch.as_deref() == Some("feat/x"),
            ),
            (
                "tags kept as they are",
                r#"{"type":"job_status","job":"b","status":"success","branch":"refs/tags/v1"}"#,
                |j| j.branch.as_deref() == Some("refs/tags/v1"),
            ),
            (
                "float duration rounded",
                r#"{"type":"job_status","job":"b","status":"success","duration_secs":12.6}"#,
                |j| j.duration_secs == Some(13),
            ),
            (
                "empty strings are absent",
                r#"{"type":"job_status","job":"b","pipeline":"","status":"success","branch":"","started_at":""}"#,
                |j| j.pipeline.is_none() && j.branch.is_none() && j.started_at.is_none(),
            ),
            (
                "nulls are absent",
                r#"{"type":"job_status","job":"b","status":"success","url":null,"duration_secs":null}"#,
                |j| j.url.is_none() && j.duration_secs.is_none(),
            ),
            (
                "explicit phase",
                r#"{"type":"job_status","job":"b","status":"success","phase":"in_progress"}"#,
                |j| j.phase() == Phase::InProgress,
            ),
            (
                "offset times normalised to UTC",
                r#"{"type":"job_status","job":"b","status":"success","started_at":"2026-11-24T16:00:00+08:00"}"#,
                |j| {
                    j.started_at.map(|t| t.to_rfc3339()).as_deref()
                        == Some("2026-11-24T08:00:00+00:00")
                },
            ),
            (
                "unknown fields ignored",
                r#"{"type":"job_status","job":"b","status":"success","extra":{"deep":[1,2]},"n":1}"#,
                |j| j.job.as_deref() == Some("b"),
            ),
        ];
        for (label, body, check) in cases {
            let j = job(body);
            assert!(check(&j), "{label}: {j:?}");
        }
    }

    #[test]
    fn standup_lenient_values() {
        type Case = (&'static str, &'static str, fn(&Standup) -> bool);
        let cases: &[Case] = &[
            (
                "single string is a one-item list",
                r#"{"type":"standup","userid":"dd1","todo":"Write docs"}"#,
                |s| s.todo == vec!["Write docs"] && s.userid.as_deref() == Some("dd1"),
            ),
            (
                "empty items dropped",
                r#"{"type":"standup","user":"u","done":["", "a", "  "]}"#,
                |s| s.done == vec!["a"],
            ),
            (
                "notes alone",
                r#"{"type":"standup","user":"u","notes":"Out Friday","done":[]}"#,
                |s| s.notes.as_deref() == Some("Out Friday"),
            ),
            (
                "blockers alone",
                r#"{"type":"standup","user":"u","blockers":["VPN down"]}"#,
                |s| s.blockers == vec!["VPN down"],
            ),
        ];
        for (label, body, check) in cases {
            let s = standup(body);
            assert!(check(&s), "{label}: {s:?}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        // (body, expected field, expected message)
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                r#"{"job":"b","status":"success"}"#,
                Some("type"),
                "type: missing field",
            ),
            (
                r#"{"type":"","job":"b"}"#,
                Some("type"),
                "type: missing field",
            ),
            (r#"{"type":3}"#, Some("type"), "type: must be a string"),
            (
                r#"{"type":"deploy"}"#,
                Some("type"),
                r#"type: unknown type "deploy"; expected job_status or standup"#,
            ),
            (
                r#"{"type":"job_status","status":"success"}"#,
                Some("job"),
                "job: missing field (give job or pipeline)",
            ),
            (
                r#"{"type":"job_status","job":"b"}"#,
                Some("status"),
                "status: missing field",
            ),
            (
                r#"{"type":"job_status","job":"b","status":""}"#,
                Some("status"),
                "status: missing field",
            ),
            (
                r#"{"type":"job_status","job":"b","status":1}"#,
                Some("status"),
                "status: must be a string",
            ),
            (
                r#"{"type":"job_status","job":["b"],"status":"success"}"#,
                Some("job"),
                "job: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","branch":7}"#,
                Some("branch"),
                "branch: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","project":{}}"#,
                Some("project"),
                "project: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","commit":true}"#,
                Some("commit"),
                "commit: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","commit_message":1}"#,
                Some("commit_message"),
                "commit_message: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","url":1}"#,
                Some("url"),
                "url: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","actor":1}"#,
                Some("actor"),
                "actor: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","actor_email":1}"#,
                Some("actor_email"),
                "actor_email: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","summary":[]}"#,
                Some("summary"),
                "summary: must be a string",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","run_id":[1]}"#,
                Some("run_id"),
                "run_id: must be a string or a number",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","started_at":"yesterday"}"#,
                Some("started_at"),
                "started_at: not an RFC 3339 time (e.g. 2026-11-24T08:03:12Z)",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","finished_at":"2026-11-24 08:00"}"#,
                Some("finished_at"),
                "finished_at: not an RFC 3339 time (e.g. 2026-11-24T08:03:12Z)",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","finished_at":1700000000}"#,
                Some("finished_at"),
                "finished_at: must be a string holding an RFC 3339 time",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","duration_secs":-1}"#,
                Some("duration_secs"),
                "duration_secs: must be a non-negative number of seconds",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","duration_secs":"192"}"#,
                Some("duration_secs"),
                "duration_secs: must be a non-negative number of seconds",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","duration_secs":1e300}"#,
                Some("duration_secs"),
                "duration_secs: must be a non-negative number of seconds",
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","phase":"done"}"#,
                Some("phase"),
                r#"phase: unknown phase "done"; expected queued, in_progress or completed"#,
            ),
            (
                r#"{"type":"job_status","job":"b","status":"success","phase":2}"#,
                Some("phase"),
                "phase: must be a string",
            ),
            (
                r#"{"type":"standup","done":["a"]}"#,
                Some("user"),
                "user: missing field (give user or userid)",
            ),
            (
                r#"{"type":"standup","user":1,"done":["a"]}"#,
                Some("user"),
                "user: must be a string",
            ),
            (
                r#"{"type":"standup","user":"u","userid":false,"done":["a"]}"#,
                Some("userid"),
                "userid: must be a string",
            ),
            (
                r#"{"type":"standup","user":"u"}"#,
                Some("done"),
                "done: give at least one of done, todo, blockers, notes",
            ),
            (
                r#"{"type":"standup","user":"u","done":[""],"notes":""}"#,
                Some("done"),
                "done: give at least one of done, todo, blockers, notes",
            ),
            (
                r#"{"type":"standup","user":"u","done":["a","b",3]}"#,
                Some("done[2]"),
                "done[2]: must be a string",
            ),
            (
                r#"{"type":"standup","user":"u","todo":[["x"]]}"#,
                Some("todo[0]"),
                "todo[0]: must be a string",
            ),
            (
                r#"{"type":"standup","user":"u","blockers":{"a":1}}"#,
                Some("blockers"),
                "blockers: must be a list of strings (or one string)",
            ),
            (
                r#"{"type":"standup","user":"u","done":["a"],"notes":["n"]}"#,
                Some("notes"),
                "notes: must be a string",
            ),
            (
                r#"{"type":"standup","user":"u","done":["a"],"date":"24/11/2026"}"#,
                Some("date"),
                "date: not a YYYY-MM-DD date (e.g. 2026-11-24)",
            ),
            (
                r#"{"type":"standup","user":"u","done":["a"],"date":"2026-02-30"}"#,
                Some("date"),
                "date: not a YYYY-MM-DD date (e.g. 2026-11-24)",
            ),
            (
                r#"{"type":"standup","user":"u","done":["a"],"date":"2026-1-5"}"#,
                Some("date"),
                "date: not a YYYY-MM-DD date (e.g. 2026-11-24)",
            ),
            (
                r#"{"type":"standup","user":"u","done":["a"],"date":20261124}"#,
                Some("date"),
                "date: must be a string",
            ),
        ];
        for (body, field, message) in cases {
            let err = parse(body.as_bytes()).expect_err(body);
            assert_eq!(err.field.as_deref(), *field, "{body}: {err}");
            assert_eq!(err.message, *message, "{body}");
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects() {
        let nested = format!("{}{}", "[".repeat(50), "]".repeat(50));
        let nested_obj = format!(
            "{}1{}",
            r#"{"type":"job_status","x":"#.repeat(50),
            "}".repeat(50)
        );
        let deep = "[".repeat(5000);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("truncated", br#"{"type":"job_status""#.to_vec()),
            ("trailing junk", br#"{"type":"standup"} x"#.to_vec()),
            ("array", b"[1,2]".to_vec()),
            ("string", br#""job_status""#.to_vec()),
            ("null", b"null".to_vec()),
            ("non-UTF-8", vec![0xff, 0xfe, b'{', 0x80, b'}']),
            (
                "non-UTF-8 inside a string",
                [
                    &br#"{"type":"job_status","job":""#[..],
                    &[0xc3, 0x28],
                    &br#""}"#[..],
                ]
                .concat(),
            ),
            ("50-level nested junk", nested.into_bytes()),
            ("very deep junk", deep.into_bytes()),
        ];
        for (label, body) in cases {
            let err = parse(&body).expect_err(label);
            assert!(err.field.is_none(), "{label}: {err:?}");
            assert!(
                err.message.starts_with("body is not valid JSON: "),
                "{label}: {err}"
            );
        }
        // A 50-level nested object is valid JSON: it fails on its (outer) fields, not by panicking.
        let err = parse(nested_obj.as_bytes()).expect_err("nested object");
        assert_eq!(err.field.as_deref(), Some("job"), "{err}");
    }
}
