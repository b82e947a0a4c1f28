//! Sources: turning one CI system's webhook (headers + raw body) into the relay's normalised
//! [`Event`]. One file per CI system. Parsing only: no I/O, no DingTalk knowledge.

pub mod generic;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
