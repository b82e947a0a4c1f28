//! The stored form of what waits in the queue — a delivery's draft and a digest event —
//! versioned and independent of the configuration types, so that an upgrade which renames or
//! removes a configuration key never makes queued rows unreadable. Each row carries `"v"`;
//! rows written before versioning (no `"v"`) are read as the same shape. Decoding ignores
//! keys it does not know. A new shape gets a new version number and a conversion from the
//! old one here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{TemplateFieldSettings, TemplateSettings};
use crate::mapping::{DraftContent, ReportDraft};
use crate::sources::{Event, JobStatus, Phase, Standup, Status};

/// The stored form's current version.
const VERSION: u32 = 1;

/// A draft as stored (version 1; also the unversioned form written before).
#[derive(Serialize, Deserialize)]
struct DraftV1 {
    #[serde(default = "current")]
    v: u32,
    app: String,
    template: TemplateV1,
    author: String,
    #[serde(default)]
    to_userids: Vec<String>,
    #[serde(default)]
    to_cids: Vec<String>,
    #[serde(default)]
    to_chat: bool,
    #[serde(default)]
    dd_from: String,
    #[serde(default)]
    contents: Vec<ContentV1>,
}

/// The template part of a stored draft.
#[derive(Serialize, Deserialize)]
struct TemplateV1 {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    fields: Option<Vec<FieldV1>>,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct FieldV1 {
    name: String,
    sort: i64,
    #[serde(rename = "type", default = "text_field")]
    kind: i64,
}

#[derive(Serialize, Deserialize)]
struct ContentV1 {
    field: String,
    content: String,
}

fn current() -> u32 {
    VERSION
}

fn text_field() -> i64 {
    1
}

/// Peeks at a row's version: absent is the unversioned form, read as version 1.
#[derive(Deserialize)]
struct Version {
    #[serde(default = "current")]
    v: u32,
}

fn check_version(text: &str) -> Result<(), String> {
    let Version { v } = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if v > VERSION {
        return Err(format!(
            "stored form version {v} is newer than this relay reads ({VERSION})"
        ));
    }
    Ok(())
}

/// A draft as stored.
pub(super) fn encode_draft(draft: &ReportDraft) -> Result<String, serde_json::Error> {
    let template = &draft.template;
    serde_json::to_string(&DraftV1 {
        v: VERSION,
        app: draft.app.clone(),
        template: TemplateV1 {
            name: template.name.clone(),
            id: template.id.clone(),
            fields: template.fields.as_ref().map(|fields| {
                fields
                    .iter()
                    .map(|f| FieldV1 {
                        name: f.name.clone(),
                        sort: f.sort,
                        kind: f.kind,
                    })
                    .collect()
            }),
            owner: template.owner.clone(),
        },
        author: draft.author.clone(),
        to_userids: draft.to_userids.clone(),
        to_cids: draft.to_cids.clone(),
        to_chat: draft.to_chat,
        dd_from: draft.dd_from.clone(),
        contents: draft
            .contents
            .iter()
            .map(|c| ContentV1 {
                field: c.field.clone(),
                content: c.content.clone(),
            })
            .collect(),
    })
}

/// A stored draft, of any version this relay knows; `Err` says why it cannot be read.
pub(super) fn decode_draft(text: &str) -> Result<ReportDraft, String> {
    check_version(text)?;
    let stored: DraftV1 = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(ReportDraft {
        app: stored.app,
        template: TemplateSettings {
            name: stored.template.name,
            id: stored.template.id,
            fields: stored.template.fields.map(|fields| {
                fields
                    .into_iter()
                    .map(|f| TemplateFieldSettings {
                        name: f.name,
                        sort: f.sort,
                        kind: f.kind,
                    })
                    .collect()
            }),
            owner: stored.template.owner,
        },
        author: stored.author,
        to_userids: stored.to_userids,
        to_cids: stored.to_cids,
        to_chat: stored.to_chat,
        dd_from: stored.dd_from,
        contents: stored
            .contents
            .into_iter()
            .map(|c| DraftContent {
                field: c.field,
                content: c.content,
            })
            .collect(),
    })
}

/// What stands for a draft that cannot be read (its delivery is `failed`, `undecodable: …`).
pub(super) fn undecodable_draft() -> ReportDraft {
    ReportDraft {
        app: String::new(),
        template: TemplateSettings {
            name: None,
            id: None,
            fields: None,
            owner: None,
        },
        author: String::new(),
        to_userids: Vec::new(),
        to_cids: Vec::new(),
        to_chat: false,
        dd_from: String::new(),
        contents: Vec::new(),
    }
}

/// A digest event row as stored (version 1): the event beside its version. Rows written
/// before versioning are the bare event ([`EventV1`] alone).
///
/// Version 1 was first written as the serialised `sources::Event`; [`EventV1`] mirrors that
/// shape field for field and writes the same bytes (pinned by the tests below), so rows of
/// either writer read back, and `sources::Event` may now change without stranding stored
/// events: a change to it needs a change to the conversions here, not to the rows.
#[derive(Serialize, Deserialize)]
struct EventRowV1 {
    #[serde(default = "current")]
    v: u32,
    event: EventV1,
}

/// The event part of a stored digest event. An unknown `type` cannot be read (the row becomes
/// a failed delivery, `undecodable: event: …`).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventV1 {
    JobStatus(JobStatusV1),
    Standup(StandupV1),
}

/// A stored job status. Every field may be absent (a later release that drops one still
/// reads), and keys it does not know are ignored (one that adds or renames one too). Status
/// and phase are kept as their names, so a status this relay does not know stays verbatim.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct JobStatusV1 {
    job: Option<String>,
    pipeline: Option<String>,
    status: Option<String>,
    status_raw: Option<String>,
    source: Option<String>,
    phase: Option<String>,
    project: Option<String>,
    run_id: Option<String>,
    branch: Option<String>,
    commit: Option<String>,
    commit_message: Option<String>,
    url: Option<String>,
    actor: Option<String>,
    actor_email: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    duration_secs: Option<u64>,
    summary: Option<String>,
}

/// A stored standup; as [`JobStatusV1`], absent fields are empty and unknown keys ignored.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct StandupV1 {
    user: Option<String>,
    userid: Option<String>,
    date: Option<String>,
    done: Vec<String>,
    todo: Vec<String>,
    blockers: Vec<String>,
    notes: Option<String>,
}

impl From<&Event> for EventV1 {
    fn from(event: &Event) -> Self {
        match event {
            Event::JobStatus(job) => Self::JobStatus(JobStatusV1 {
                job: job.job.clone(),
                pipeline: job.pipeline.clone(),
                status: job.status.as_ref().map(|s| s.as_str().to_owned()),
                status_raw: job.status_raw.clone(),
                source: job.source.clone(),
                phase: job.phase.map(|p| p.as_str().to_owned()),
                project: job.project.clone(),
                run_id: job.run_id.clone(),
                branch: job.branch.clone(),
                commit: job.commit.clone(),
                commit_message: job.commit_message.clone(),
                url: job.url.clone(),
                actor: job.actor.clone(),
                actor_email: job.actor_email.clone(),
                started_at: job.started_at,
                finished_at: job.finished_at,
                duration_secs: job.duration_secs,
                summary: job.summary.clone(),
            }),
            Event::Standup(standup) => Self::Standup(StandupV1 {
                user: standup.user.clone(),
                userid: standup.userid.clone(),
                date: standup.date.clone(),
                done: standup.done.clone(),
                todo: standup.todo.clone(),
                blockers: standup.blockers.clone(),
                notes: standup.notes.clone(),
            }),
        }
    }
}

impl TryFrom<EventV1> for Event {
    /// Why the stored event cannot be read.
    type Error = String;

    fn try_from(stored: EventV1) -> Result<Self, String> {
        Ok(match stored {
            EventV1::JobStatus(job) => Event::JobStatus(JobStatus {
                job: job.job,
                pipeline: job.pipeline,
                status: job.status.as_deref().map(Status::parse),
                status_raw: job.status_raw,
                source: job.source,
                phase: job.phase.as_deref().map(phase).transpose()?,
                project: job.project,
                run_id: job.run_id,
                branch: job.branch,
                commit: job.commit,
                commit_message: job.commit_message,
                url: job.url,
                actor: job.actor,
                actor_email: job.actor_email,
                started_at: job.started_at,
                finished_at: job.finished_at,
                duration_secs: job.duration_secs,
                summary: job.summary,
            }),
            EventV1::Standup(standup) => Event::Standup(Standup {
                user: standup.user,
                userid: standup.userid,
                date: standup.date,
                done: standup.done,
                todo: standup.todo,
                blockers: standup.blockers,
                notes: standup.notes,
            }),
        })
    }
}

/// A stored phase name. One this relay does not know is refused rather than guessed: the
/// phase decides what a digest reports.
fn phase(name: &str) -> Result<Phase, String> {
    [Phase::Queued, Phase::InProgress, Phase::Completed]
        .into_iter()
        .find(|p| p.as_str() == name)
        .ok_or_else(|| format!("phase {name:?} is not one this relay knows"))
}

/// A digest event as stored.
pub(super) fn encode_event(event: &Event) -> Result<String, serde_json::Error> {
    serde_json::to_string(&EventRowV1 {
        v: VERSION,
        event: EventV1::from(event),
    })
}

/// A stored digest event, of any version this relay knows; `Err` says why it cannot be read.
pub(super) fn decode_event(text: &str) -> Result<Event, String> {
    check_version(text)?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let stored = if value.get("v").is_some() {
        serde_json::from_value::<EventRowV1>(value).map(|row| row.event)
    } else {
        serde_json::from_value::<EventV1>(value)
    }
    .map_err(|e| e.to_string())?;
    Event::try_from(stored)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// A job status with every field set.
    fn full_job() -> Event {
        Event::JobStatus(JobStatus {
            job: Some("test".into()),
            pipeline: Some("ci".into()),
            status: Some(Status::Other("timed_out".into())),
            status_raw: Some("timed_out".into()),
            source: Some("GitHub Actions".into()),
            phase: Some(Phase::Completed),
            project: Some("acme/api".into()),
            run_id: Some("42".into()),
            branch: Some("main".into()),
            commit: Some("abc123".into()),
            commit_message: Some("fix: it".into()),
            url: Some("https://ci.example/42".into()),
            actor: Some("octocat".into()),
            actor_email: Some("octocat@example.com".into()),
            started_at: Some(Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap()),
            finished_at: Some(Utc.with_ymd_and_hms(2026, 12, 4, 9, 5, 30).unwrap()),
            duration_secs: Some(330),
            summary: Some("418 tests passed".into()),
        })
    }

    fn full_standup() -> Event {
        Event::Standup(Standup {
            user: Some("octocat".into()),
            userid: Some("user01".into()),
            date: Some("2026-12-04".into()),
            done: vec!["a".into(), "b".into()],
            todo: vec!["c".into()],
            blockers: vec!["d".into()],
            notes: Some("n".into()),
        })
    }

    /// What the version 1 wrapper (the serialised `sources::Event` beside `"v": 1`) wrote for
    /// [`full_job`] and [`full_standup`], byte for byte.
    const V1_JOB: &str = r#"{"v":1,"event":{"type":"job_status","job":"test","pipeline":"ci","status":"timed_out","status_raw":"timed_out","source":"GitHub Actions","phase":"completed","project":"acme/api","run_id":"42","branch":"main","commit":"abc123","commit_message":"fix: it","url":"https://ci.example/42","actor":"octocat","actor_email":"octocat@example.com","started_at":"2026-12-04T09:00:00Z","finished_at":"2026-12-04T09:05:30Z","duration_secs":330,"summary":"418 tests passed"}}"#;
    const V1_STANDUP: &str = r#"{"v":1,"event":{"type":"standup","user":"octocat","userid":"user01","date":"2026-12-04","done":["a","b"],"todo":["c"],"blockers":["d"],"notes":"n"}}"#;

    #[test]
    fn events_are_encoded_exactly_as_the_version_1_wrapper_wrote_them() {
        assert_eq!(encode_event(&full_job()).unwrap(), V1_JOB);
        assert_eq!(encode_event(&full_standup()).unwrap(), V1_STANDUP);
    }

    #[test]
    fn version_1_and_unversioned_events_read_back_whole() {
        assert_eq!(decode_event(V1_JOB).unwrap(), full_job());
        assert_eq!(decode_event(V1_STANDUP).unwrap(), full_standup());
        let bare = |wrapped: &str| {
            let value: serde_json::Value = serde_json::from_str(wrapped).unwrap();
            value["event"].to_string()
        };
        assert_eq!(decode_event(&bare(V1_JOB)).unwrap(), full_job());
        assert_eq!(decode_event(&bare(V1_STANDUP)).unwrap(), full_standup());
    }

    #[test]
    fn events_with_unknown_renamed_or_missing_keys_still_read() {
        // `pipeline` renamed to `workflow` and `colour` added by a later release; the standup
        // lacks the lists the sources type requires.
        let job = decode_event(
            r#"{"v":1,"event":{"type":"job_status","workflow":"ci","colour":"red","status":"failure","started_at":"2026-12-04T09:00:00Z"}}"#,
        )
        .unwrap();
        let Event::JobStatus(job) = job else {
            panic!("not a job status: {job:?}");
        };
        assert_eq!(job.pipeline, None);
        assert_eq!(job.status, Some(Status::Failure));
        assert_eq!(
            job.started_at,
            Some(Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap())
        );
        let standup = decode_event(r#"{"type":"standup","user":"octocat","mood":3}"#).unwrap();
        assert_eq!(
            standup,
            Event::Standup(Standup {
                user: Some("octocat".into()),
                ..Standup::default()
            })
        );
    }

    #[test]
    fn unreadable_events_say_why() {
        let reason = |text: &str| decode_event(text).unwrap_err();
        assert!(
            reason(r#"{"v":1,"event":{"type":"deploy"}}"#).contains("deploy"),
            "an unknown kind"
        );
        assert!(
            reason(r#"{"v":1,"event":{"type":"job_status","phase":"paused"}}"#)
                .contains("phase \"paused\""),
            "an unknown phase"
        );
        assert!(
            reason(r#"{"v":2,"event":{"type":"standup"}}"#).contains("version 2 is newer"),
            "a newer version"
        );
        assert!(!reason("not json").is_empty());
        assert!(!reason(r#"{"v":1}"#).is_empty(), "no event");
    }
}
