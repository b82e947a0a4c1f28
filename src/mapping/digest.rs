//! Digests: a period's events of one group folded into one report (routes with `digest`).
//! Pure like the rest of mapping: the caller passes the events, the period and the clock.
//!
//! The report lists one line per pipeline with its latest result, failures first, then the
//! standups merged per person. Every field must fit DingTalk's 1000-character limit: the
//! number of pipeline lines shown is the largest (at most `max_lines`) whose rendering fits,
//! the rest summarised in one line (`…还有 37 条流水线 and 37 more pipelines (all passed)`), and
//! a field that still does not fit loses whole trailing lines, never half of one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::Value;
use serde::Serialize;

use super::vars::{duration_human, local_time, status_icon, status_text};
use super::{DraftContent, MAX_CONTENT_CHARS, ReportDraft, content_len, hard_breaks};
use crate::sources::{Event, Status};

/// Names and one-line descriptions of the variables a digest field template sees.
pub(super) const VARIABLES: &[(&str, &str)] = &[
    ("route", "name of the route"),
    (
        "group",
        "the group this report is for: the author's userid, the project, or the route name",
    ),
    ("group_by", "author, project or route"),
    ("author", "the report's author userid"),
    (
        "date",
        "the day the period ends, YYYY-MM-DD in the digest's time zone",
    ),
    ("timezone", "the digest's IANA time zone"),
    (
        "period_start",
        "start of the period (the previous digest), e.g. 2026-11-24 18:00",
    ),
    ("period_end", "end of the period, e.g. 2026-11-25 18:00"),
    ("events", "number of events folded into this report"),
    ("runs", "number of job results in the period"),
    ("passed", "runs that succeeded"),
    ("failed", "runs that failed"),
    ("cancelled", "runs that were cancelled"),
    ("other", "runs with any other status"),
    (
        "pipelines",
        "the pipelines shown, failures first: each has name, pipeline, job, project, branch, status, status_icon, status_text, url, duration_human, finished_at, actor, commit_short, commit_title, summary, runs (results in the period), failures (failed results in the period)",
    ),
    (
        "failures",
        "the shown pipelines whose latest result is a failure or cancellation",
    ),
    (
        "pipeline_count",
        "number of distinct pipelines in the period",
    ),
    (
        "more",
        "the pipelines not shown: count, passed, failed, cancelled, other",
    ),
    (
        "more_text",
        "one bilingual line summarising the pipelines not shown (empty when all are shown)",
    ),
    (
        "standups",
        "standups merged per person: user, userid, done, todo, blockers (merged lists), notes (latest)",
    ),
];

/// One pipeline's line: its latest result in the period.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PipelineLine {
    name: String,
    pipeline: Option<String>,
    job: Option<String>,
    project: Option<String>,
    branch: Option<String>,
    status: String,
    status_icon: &'static str,
    status_text: String,
    url: Option<minijinja::Value>,
    duration_human: Option<String>,
    finished_at: Option<String>,
    actor: Option<String>,
    commit_short: Option<String>,
    commit_title: Option<String>,
    summary: Option<String>,
    runs: u64,
    failures: u64,
    #[serde(skip)]
    rank: u8,
    #[serde(skip)]
    at: DateTime<Utc>,
}

/// A person's standups of the period, merged.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct MergedStandup {
    user: Option<String>,
    userid: Option<String>,
    done: Vec<String>,
    todo: Vec<String>,
    blockers: Vec<String>,
    notes: Option<String>,
}

/// Counts of pipelines not shown.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct More {
    count: usize,
    passed: usize,
    failed: usize,
    cancelled: usize,
    other: usize,
}

/// Everything about a period's events that does not depend on how many lines are shown.
#[derive(Debug, Clone)]
pub(super) struct Folded {
    pub(super) events: usize,
    runs: u64,
    passed: u64,
    failed: u64,
    cancelled: u64,
    other: u64,
    pipelines: Vec<PipelineLine>,
    standups: Vec<MergedStandup>,
}

/// Where a digest sits: its group, author and period, for the template.
#[derive(Debug, Clone)]
pub struct DigestHeader<'a> {
    /// Route name.
    pub route: &'a str,
    /// Group key.
    pub group: &'a str,
    /// `author`, `project` or `route`.
    pub group_by: &'a str,
    /// The report's author.
    pub author: &'a str,
    /// Start of the period (the previous digest, or the first event).
    pub period_start: DateTime<Utc>,
    /// End of the period (the scheduled time).
    pub period_end: DateTime<Utc>,
    /// The digest's time zone.
    pub tz: Tz,
}

/// Ranks a status for ordering: failures first, then cancellations, other non-successes, and
/// successes last.
fn rank(status: &Status) -> u8 {
    match status {
        Status::Failure => 0,
        Status::Cancelled => 1,
        Status::Success => 3,
        _ => 2,
    }
}

fn push_unique(list: &mut Vec<String>, items: &[String]) {
    for item in items {
        let item = item.trim();
        if !item.is_empty() && !list.iter().any(|i| i == item) {
            list.push(item.to_owned());
        }
    }
}

/// Folds events (in any order; they are sorted by time here) into counts, pipeline lines and
/// merged standups. `userid` maps a login to a DingTalk userid.
pub(super) fn fold<'a>(
    events: &[(DateTime<Utc>, &Event)],
    tz: Tz,
    userid: impl Fn(&str) -> Option<&'a str>,
) -> Folded {
    let mut sorted: Vec<&(DateTime<Utc>, &Event)> = events.iter().collect();
    sorted.sort_by_key(|(at, _)| *at);
    let mut folded = Folded {
        events: events.len(),
        runs: 0,
        passed: 0,
        failed: 0,
        cancelled: 0,
        other: 0,
        pipelines: Vec::new(),
        standups: Vec::new(),
    };
    let mut pipelines: BTreeMap<(String, String, String, String), PipelineLine> = BTreeMap::new();
    let mut standups: BTreeMap<String, MergedStandup> = BTreeMap::new();
    for (received_at, event) in sorted {
        match event {
            Event::JobStatus(job) => {
                let status = job.status();
                folded.runs += 1;
                match status {
                    Status::Success => folded.passed += 1,
                    Status::Failure => folded.failed += 1,
                    Status::Cancelled => folded.cancelled += 1,
                    _ => folded.other += 1,
                }
                let pipeline = job.pipeline.clone().or_else(|| job.job.clone());
                let name = match (&pipeline, &job.job) {
                    (Some(p), Some(j)) if p != j => format!("{p} / {j}"),
                    (Some(p), _) => p.clone(),
                    (None, _) => job.run_id.clone().unwrap_or_else(|| "run".to_owned()),
                };
                let key = (
                    job.project.clone().unwrap_or_default(),
                    pipeline.clone().unwrap_or_default(),
                    job.job.clone().unwrap_or_default(),
                    job.branch.clone().unwrap_or_default(),
                );
                let previous = pipelines.get(&key).map_or((0, 0), |p| (p.runs, p.failures));
                let mut text = status_text(&status);
                if let Some(raw) = job.status_raw.as_deref()
                    && !raw.eq_ignore_ascii_case(status.as_str())
                {
                    text = format!("{text} ({raw})");
                }
                let at = job.finished_at.unwrap_or(*received_at);
                pipelines.insert(
                    key,
                    PipelineLine {
                        name,
                        pipeline,
                        job: job.job.clone(),
                        project: job.project.clone(),
                        branch: job.branch.clone(),
                        status: status.as_str().to_owned(),
                        status_icon: status_icon(&status),
                        status_text: text,
                        url: job.url.as_deref().and_then(super::checked_url),
                        duration_human: job.duration_secs().map(duration_human),
                        finished_at: job.finished_at.map(|t| local_time(t, tz)),
                        actor: job.actor.clone().or_else(|| job.actor_email.clone()),
                        commit_short: job.commit.as_ref().map(|c| c.chars().take(7).collect()),
                        commit_title: job.commit_message.as_deref().and_then(|m| {
                            m.lines()
                                .map(str::trim)
                                .find(|l| !l.is_empty())
                                .map(str::to_owned)
                        }),
                        summary: job.summary.clone(),
                        runs: previous.0 + 1,
                        failures: previous.1 + u64::from(status == Status::Failure),
                        rank: rank(&status),
                        at,
                    },
                );
            }
            Event::Standup(standup) => {
                let id = standup
                    .userid
                    .clone()
                    .or_else(|| standup.user.as_deref().and_then(&userid).map(str::to_owned));
                let key = id
                    .clone()
                    .or_else(|| standup.user.clone())
                    .unwrap_or_default();
                let merged = standups.entry(key).or_default();
                if merged.user.is_none() {
                    merged.user.clone_from(&standup.user);
                }
                if merged.userid.is_none() {
                    merged.userid = id;
                }
                push_unique(&mut merged.done, &standup.done);
                push_unique(&mut merged.todo, &standup.todo);
                push_unique(&mut merged.blockers, &standup.blockers);
                if let Some(notes) = standup.notes.as_deref().filter(|n| !n.trim().is_empty()) {
                    merged.notes = Some(notes.trim().to_owned());
                }
            }
        }
    }
    let mut lines: Vec<PipelineLine> = pipelines.into_values().collect();
    lines.sort_by(|a, b| a.rank.cmp(&b.rank).then(b.at.cmp(&a.at)));
    folded.pipelines = lines;
    folded.standups = standups.into_values().collect();
    folded
}

impl Folded {
    /// Number of distinct pipelines.
    pub(super) fn pipelines_len(&self) -> usize {
        self.pipelines.len()
    }
}

/// The template context with the first `shown` pipelines listed.
pub(super) fn context(header: &DigestHeader<'_>, folded: &Folded, shown: usize) -> Value {
    let shown = shown.min(folded.pipelines.len());
    let pipelines = &folded.pipelines[..shown];
    let mut more = More::default();
    for p in &folded.pipelines[shown..] {
        more.count += 1;
        match p.rank {
            0 => more.failed += 1,
            1 => more.cancelled += 1,
            3 => more.passed += 1,
            _ => more.other += 1,
        }
    }
    let failures: Vec<&PipelineLine> = pipelines.iter().filter(|p| p.rank <= 1).collect();
    let minute = |t: DateTime<Utc>| {
        t.with_timezone(&header.tz)
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    minijinja::context! {
        route => header.route,
        group => header.group,
        group_by => header.group_by,
        author => header.author,
        date => header.period_end.with_timezone(&header.tz).format("%Y-%m-%d").to_string(),
        timezone => header.tz.name(),
        period_start => minute(header.period_start),
        period_end => minute(header.period_end),
        events => folded.events,
        runs => folded.runs,
        passed => folded.passed,
        failed => folded.failed,
        cancelled => folded.cancelled,
        other => folded.other,
        pipelines => Value::from_serialize(pipelines),
        failures => Value::from_serialize(&failures),
        pipeline_count => folded.pipelines.len(),
        more => Value::from_serialize(more),
        more_text => more_text(&more),
        standups => Value::from_serialize(&folded.standups),
    }
}

/// The line summarising pipelines not shown, e.g. `…还有 37 条流水线 and 37 more pipelines
/// (all passed)`; empty when none is hidden.
fn more_text(more: &More) -> String {
    if more.count == 0 {
        return String::new();
    }
    let n = more.count;
    let detail = if more.passed == n {
        "all passed".to_owned()
    } else {
        let mut parts = Vec::new();
        for (count, word) in [
            (more.failed, "failed"),
            (more.cancelled, "cancelled"),
            (more.other, "other"),
            (more.passed, "passed"),
        ] {
            if count > 0 {
                parts.push(format!("{count} {word}"));
            }
        }
        parts.join(", ")
    };
    let noun = if n == 1 { "pipeline" } else { "pipelines" };
    format!("…还有 {n} 条流水线 and {n} more {noun} ({detail})")
}

/// Whether every rendered field fits the limit.
pub(super) fn fits(contents: &[DraftContent]) -> bool {
    contents
        .iter()
        .all(|c| content_len(&c.content) <= MAX_CONTENT_CHARS)
}

/// The last resort for a field that is too long even with no pipeline listed (long
/// standups): whole trailing lines are dropped and replaced by one line saying how many.
/// Returns (text, was_cut).
pub(super) fn fit_lines(text: &str) -> (String, bool) {
    if content_len(text) <= MAX_CONTENT_CHARS {
        return (text.to_owned(), false);
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = lines.len();
    loop {
        let dropped = lines.len() - kept;
        let marker = format!("…还有 {dropped} 行 and {dropped} more lines");
        let body = lines[..kept].join("\n");
        let candidate = if body.trim().is_empty() {
            marker
        } else {
            hard_breaks(&format!("{}\n{marker}", body.trim_end()))
        };
        if content_len(&candidate) <= MAX_CONTENT_CHARS {
            return (candidate, true);
        }
        if kept == 0 {
            // A single line longer than the limit with nothing else: only the marker remains.
            return (
                format!("…还有 {} 行 and {} more lines", lines.len(), lines.len()),
                true,
            );
        }
        kept -= 1;
    }
}

/// A digest ready to store: the report and how many events it folds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestReport {
    /// The group it is for.
    pub group: String,
    /// The report.
    pub draft: ReportDraft,
    /// Events folded into it.
    pub events: usize,
    /// Pipelines that did not fit and were summarised.
    pub summarised: usize,
    /// Fields that lost whole lines to fit the limit.
    pub cut: Vec<String>,
}
