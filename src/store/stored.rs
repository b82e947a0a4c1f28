//! The stored form of what waits in the queue — a delivery's draft and a digest event —
//! versioned and independent of the configuration types, so that an upgrade which renames or
//! removes a configuration key never makes queued rows unreadable. Each row carries `"v"`;
//! rows written before versioning (no `"v"`) are read as the same shape. Decoding ignores
//! keys it does not know. A new shape gets a new version number and a conversion from the
//! old one here.

use serde::{Deserialize, Serialize};

use crate::config::{TemplateFieldSettings, TemplateSettings};
use crate::mapping::{DraftContent, ReportDraft};
use crate::sources::Event;

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

/// A digest event as stored (version 1): the event beside its version. Rows written before
/// are the bare event.
#[derive(Serialize)]
struct EventV1<'a> {
    v: u32,
    event: &'a Event,
}

#[derive(Deserialize)]
struct StoredEvent {
    event: Event,
}

/// A digest event as stored.
pub(super) fn encode_event(event: &Event) -> Result<String, serde_json::Error> {
    serde_json::to_string(&EventV1 { v: VERSION, event })
}

/// A stored digest event, of any version this relay knows.
pub(super) fn decode_event(text: &str) -> Result<Event, String> {
    check_version(text)?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if value.get("v").is_some() {
        serde_json::from_value::<StoredEvent>(value)
            .map(|stored| stored.event)
            .map_err(|e| e.to_string())
    } else {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::sources::{JobStatus, Phase, Standup, Status};

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
}
