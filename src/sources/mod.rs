//! Sources: turning one CI system's webhook (headers + raw body) into the relay's normalised
//! [`Event`] — authentication exactly as the sender does it, normalisation, lifecycle (what is
//! ignored), and the sender's delivery id for dedup. One file per CI system, each with the same
//! three functions (`verify`, `parse`, `delivery_id`); [`verify`], [`parse`] and
//! [`delivery_id`] dispatch on the route's [`SourceKind`]. No I/O, no DingTalk knowledge.

pub mod auth;
pub mod azure_devops;
pub mod bitbucket;
pub mod buildkite;
pub mod circleci;
pub mod drone;
pub mod generic;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod jenkins;
mod json;
#[cfg(test)]
mod testing;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Secret, SourceKind};

/// A webhook as received: what every source's functions read.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The raw body, exactly as received (signatures are over these bytes).
    pub body: &'a [u8],
    /// The request target as received, e.g. `/v1/hooks/ci` (HTTP-signature schemes sign it).
    pub target: &'a str,
    /// The request method, lower-case (e.g. `post`).
    pub method: &'a str,
    /// When it arrived (timestamp windows are checked against it).
    pub now: DateTime<Utc>,
}

/// What a source makes of a webhook it accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A job status or standup to report (the route's filters still apply).
    Event(Event),
    /// A valid webhook that never makes a report (ping, test delivery, unrelated event kind),
    /// with the reason for the `200 ignored` answer.
    Ignored(String),
}

/// The sources this build can take webhooks from.
pub const IMPLEMENTED: &[SourceKind] = &[
    SourceKind::Generic,
    SourceKind::Github,
    SourceKind::Gitlab,
    SourceKind::Gitea,
    SourceKind::Forgejo,
    SourceKind::Jenkins,
    SourceKind::Circleci,
    SourceKind::Buildkite,
    SourceKind::Drone,
    SourceKind::AzureDevops,
    SourceKind::Bitbucket,
];

/// How far a signed timestamp may be from the relay's clock (replay protection).
pub const TIMESTAMP_WINDOW_SECS: i64 = 300;

/// Checks the webhook's authentication the way `kind`'s sender does it. `Err` is the 401
/// message (it never contains the secret).
pub fn verify(kind: SourceKind, secret: &Secret, request: &Request<'_>) -> auth::AuthResult {
    match kind {
        SourceKind::Generic => generic::verify(secret, request),
        SourceKind::Github => github::verify(secret, request),
        SourceKind::Gitlab => gitlab::verify(secret, request),
        SourceKind::Gitea => gitea::verify(secret, request, gitea::Flavor::Gitea),
        SourceKind::Forgejo => gitea::verify(secret, request, gitea::Flavor::Forgejo),
        SourceKind::Jenkins => jenkins::verify(secret, request),
        SourceKind::Circleci => circleci::verify(secret, request),
        SourceKind::Buildkite => buildkite::verify(secret, request),
        SourceKind::Drone => drone::verify(secret, request),
        SourceKind::AzureDevops => azure_devops::verify(secret, request),
        SourceKind::Bitbucket => bitbucket::verify(secret, request),
    }
}

/// Normalises the webhook, or says why it is ignored. `Err` is a 400 naming the field.
pub fn parse(kind: SourceKind, request: &Request<'_>) -> Result<Parsed, PayloadError> {
    match kind {
        SourceKind::Generic => generic::parse(request.body).map(Parsed::Event),
        SourceKind::Github => github::parse(request),
        SourceKind::Gitlab => gitlab::parse(request),
        SourceKind::Gitea => gitea::parse(request, gitea::Flavor::Gitea),
        SourceKind::Forgejo => gitea::parse(request, gitea::Flavor::Forgejo),
        SourceKind::Jenkins => jenkins::parse(request),
        SourceKind::Circleci => circleci::parse(request),
        SourceKind::Buildkite => buildkite::parse(request),
        SourceKind::Drone => drone::parse(request),
        SourceKind::AzureDevops => azure_devops::parse(request),
        SourceKind::Bitbucket => bitbucket::parse(request),
    }
}

/// The sender's own id for this delivery (stable across its redeliveries), for dedup; `None`
/// means dedup falls back to a hash of route + body.
pub fn delivery_id(kind: SourceKind, request: &Request<'_>) -> Option<String> {
    let id = match kind {
        SourceKind::Generic => generic::delivery_id(request),
        SourceKind::Github => github::delivery_id(request),
        SourceKind::Gitlab => gitlab::delivery_id(request),
        SourceKind::Gitea => gitea::delivery_id(request, gitea::Flavor::Gitea),
        SourceKind::Forgejo => gitea::delivery_id(request, gitea::Flavor::Forgejo),
        SourceKind::Jenkins => jenkins::delivery_id(request),
        SourceKind::Circleci => circleci::delivery_id(request),
        SourceKind::Buildkite => buildkite::delivery_id(request),
        SourceKind::Drone => drone::delivery_id(request),
        SourceKind::AzureDevops => azure_devops::delivery_id(request),
        SourceKind::Bitbucket => bitbucket::delivery_id(request),
    }?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// A normalised webhook: what every source is turned into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A CI job or pipeline changed state.
    JobStatus(JobStatus),
    /// A person's daily standup.
    Standup(Standup),
}

/// Lifecycle phase of a job_status event; routes choose which phases make reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting to run.
    Queued,
    /// Running.
    InProgress,
    /// Finished (whatever the result).
    Completed,
}

impl Phase {
    /// The name used in `routes.*.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
        }
    }
}

/// A job status, normalised. Values outside the known list are kept as [`Status::Other`] and
/// shown as they came, never rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Status {
    /// Passed.
    Success,
    /// Failed.
    Failure,
    /// Cancelled or aborted.
    Cancelled,
    /// Running now.
    Running,
    /// Queued, waiting.
    Pending,
    /// Skipped.
    Skipped,
    /// The sender said it does not know.
    Unknown,
    /// A value outside the list above, kept verbatim.
    Other(String),
}

impl Status {
    /// Parses a status name (case-insensitive); anything unknown becomes [`Status::Other`].
    pub fn parse(raw: &str) -> Self {
        match raw.trim().to_ascii_lowercase().as_str() {
            "success" => Self::Success,
            "failure" => Self::Failure,
            "cancelled" => Self::Cancelled,
            "running" => Self::Running,
            "pending" => Self::Pending,
            "skipped" => Self::Skipped,
            "unknown" => Self::Unknown,
            _ => Self::Other(raw.trim().to_owned()),
        }
    }

    /// The status name as shown and as matched by `routes.*.statuses`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
            Self::Running => "running",
            Self::Pending => "pending",
            Self::Skipped => "skipped",
            Self::Unknown => "unknown",
            Self::Other(raw) => raw,
        }
    }

    /// The lifecycle phase this status belongs to.
    pub fn phase(&self) -> Phase {
        match self {
            Self::Running => Phase::InProgress,
            Self::Pending => Phase::Queued,
            _ => Phase::Completed,
        }
    }
}

impl From<String> for Status {
    fn from(raw: String) -> Self {
        Self::parse(&raw)
    }
}

impl From<Status> for String {
    fn from(status: Status) -> Self {
        status.as_str().to_owned()
    }
}

/// A CI job or pipeline result.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job name (one step of a pipeline).
    pub job: Option<String>,
    /// Pipeline or workflow name.
    pub pipeline: Option<String>,
    /// Normalised status.
    pub status: Option<Status>,
    /// The status exactly as the sender named it (e.g. GitHub `timed_out`), when it differs
    /// from or refines the normalised one; shown next to `unknown`.
    pub status_raw: Option<String>,
    /// The CI system's display name, e.g. `GitHub Actions` (absent for generic webhooks).
    pub source: Option<String>,
    /// Lifecycle phase (derived from the status unless the source says otherwise).
    pub phase: Option<Phase>,
    /// Project or repository, e.g. `acme/api`.
    pub project: Option<String>,
    /// The CI system's run id.
    pub run_id: Option<String>,
    /// Branch (or tag) name, without `refs/heads/`.
    pub branch: Option<String>,
    /// Commit SHA.
    pub commit: Option<String>,
    /// First line(s) of the commit message.
    pub commit_message: Option<String>,
    /// Link to the run.
    pub url: Option<String>,
    /// Who triggered the run (CI login).
    pub actor: Option<String>,
    /// The actor's e-mail, when known.
    pub actor_email: Option<String>,
    /// When the run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the run finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// How long it ran, in seconds.
    pub duration_secs: Option<u64>,
    /// One-line summary (e.g. "418 tests passed").
    pub summary: Option<String>,
}

impl JobStatus {
    /// The status, or `unknown` when the source gave none.
    pub fn status(&self) -> Status {
        self.status.clone().unwrap_or(Status::Unknown)
    }

    /// The phase: the source's, else derived from the status.
    pub fn phase(&self) -> Phase {
        self.phase.unwrap_or_else(|| self.status().phase())
    }

    /// The duration: given, or finished − started.
    pub fn duration_secs(&self) -> Option<u64> {
        self.duration_secs
            .or_else(|| match (self.started_at, self.finished_at) {
                (Some(s), Some(f)) if f >= s => u64::try_from((f - s).num_seconds()).ok(),
                _ => None,
            })
    }
}

/// A standup update.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Standup {
    /// The person's CI/chat login (mapped through `users`).
    pub user: Option<String>,
    /// The person's DingTalk userid, when the sender knows it.
    pub userid: Option<String>,
    /// The day the standup is for (`YYYY-MM-DD`).
    pub date: Option<String>,
    /// Done items.
    pub done: Vec<String>,
    /// Planned items.
    pub todo: Vec<String>,
    /// Blockers.
    pub blockers: Vec<String>,
    /// Free text.
    pub notes: Option<String>,
}

/// Why a webhook body is not a valid event; `field` names the JSON field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PayloadError {
    /// The field at fault (dotted path), when one is.
    pub field: Option<String>,
    /// What is wrong, starting with the field name.
    pub message: String,
}

impl PayloadError {
    /// An error about `field`.
    pub fn field(field: &str, problem: &str) -> Self {
        Self {
            field: Some(field.to_owned()),
            message: format!("{field}: {problem}"),
        }
    }

    /// An error about the body as a whole.
    pub fn body(problem: impl Into<String>) -> Self {
        Self {
            field: None,
            message: problem.into(),
        }
    }
}
