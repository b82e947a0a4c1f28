//! The variables a field template sees: their documented list and how they are computed from an
//! event. Absent values are left out of the context, so they are undefined in the template and
//! `{% if branch %}` works.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::Value;

use crate::sources::{JobStatus, Standup, Status};

/// Names and one-line descriptions of every template variable.
pub(super) const VARIABLES: &[(&str, &str)] = &[
    ("event_type", "\"job_status\" or \"standup\""),
    ("route", "name of the route (routes.<name>)"),
    (
        "date",
        "the day in the configured time zone, YYYY-MM-DD (standup: the given date, else today)",
    ),
    (
        "timezone",
        "the configured IANA time zone, e.g. Asia/Shanghai",
    ),
    (
        "status",
        "job_status: status name (success, failure, cancelled, running, pending, skipped, unknown, or the value as sent)",
    ),
    (
        "status_icon",
        "job_status: ✅ success, ❌ failure, 🚫 cancelled, 🔄 running, ⏳ pending, ⏭️ skipped, ❔ other",
    ),
    (
        "status_text",
        "job_status: bilingual status, e.g. \"成功 success\"; other values as sent",
    ),
    (
        "status_raw",
        "job_status: the status exactly as the CI system named it (e.g. timed_out), when known",
    ),
    (
        "source",
        "job_status: the CI system, e.g. GitHub Actions (absent for generic webhooks)",
    ),
    ("phase", "job_status: queued, in_progress or completed"),
    ("job", "job_status: job name"),
    (
        "pipeline",
        "job_status: pipeline or workflow name, else the job name",
    ),
    (
        "project",
        "job_status: project or repository, e.g. acme/api",
    ),
    ("run_id", "job_status: the CI system's run id"),
    ("branch", "job_status: branch or tag, without refs/heads/"),
    ("commit", "job_status: commit SHA"),
    (
        "commit_short",
        "job_status: first 7 characters of the commit SHA",
    ),
    ("commit_message", "job_status: commit message"),
    (
        "commit_title",
        "job_status: first line of the commit message",
    ),
    ("url", "job_status: link to the run"),
    ("actor", "job_status: CI login of who triggered the run"),
    ("actor_email", "job_status: e-mail of who triggered the run"),
    (
        "actor_userid",
        "job_status: DingTalk userid of the actor, from users (by login, else e-mail)",
    ),
    (
        "started_at",
        "job_status: start time in the configured time zone, e.g. 2026-11-24 16:00:00",
    ),
    (
        "finished_at",
        "job_status: finish time in the configured time zone, e.g. 2026-11-24 16:03:12",
    ),
    (
        "duration_secs",
        "job_status: run time in seconds (given, or finished_at - started_at)",
    ),
    (
        "duration_human",
        "job_status: run time such as 45s, 3m12s, 1h02m",
    ),
    (
        "summary",
        "job_status: one-line summary, e.g. 418 tests passed",
    ),
    ("user", "standup: the person's login as sent"),
    (
        "userid",
        "standup: the person's DingTalk userid (as sent, else from users)",
    ),
    (
        "done",
        "standup: list of done items (use {{ done | bullets }})",
    ),
    ("todo", "standup: list of planned items"),
    ("blockers", "standup: list of blockers"),
    ("notes", "standup: free text"),
];

/// A template context: variable name → value, absent values left out.
pub(super) type Context = BTreeMap<&'static str, Value>;

/// What is common to every event.
fn base(event_type: &'static str, route: &str, tz: Tz) -> Context {
    let mut ctx = Context::new();
    ctx.insert("event_type", Value::from(event_type));
    ctx.insert("route", Value::from(route));
    ctx.insert("timezone", Value::from(tz.name()));
    ctx
}

fn put(ctx: &mut Context, name: &'static str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        ctx.insert(name, value.into());
    }
}

/// The context of a job_status event.
pub(super) fn job_status(
    route: &str,
    job: &JobStatus,
    actor_userid: Option<&str>,
    tz: Tz,
    now: DateTime<Utc>,
) -> Context {
    let mut ctx = base("job_status", route, tz);
    let status = job.status();
    ctx.insert("status", Value::from(status.as_str()));
    ctx.insert("status_icon", Value::from(status_icon(&status)));
    let mut text = status_text(&status);
    if let Some(raw) = job.status_raw.as_deref()
        && !raw.eq_ignore_ascii_case(status.as_str())
    {
        text = format!("{text} ({raw})");
    }
    ctx.insert("status_text", Value::from(text));
    put(&mut ctx, "status_raw", job.status_raw.as_deref());
    put(&mut ctx, "source", job.source.as_deref());
    ctx.insert("phase", Value::from(job.phase().as_str()));
    ctx.insert("date", Value::from(today(tz, now)));
    put(&mut ctx, "job", job.job.as_deref());
    put(
        &mut ctx,
        "pipeline",
        job.pipeline.as_deref().or(job.job.as_deref()),
    );
    put(&mut ctx, "project", job.project.as_deref());
    put(&mut ctx, "run_id", job.run_id.as_deref());
    put(&mut ctx, "branch", job.branch.as_deref());
    put(&mut ctx, "commit", job.commit.as_deref());
    put(
        &mut ctx,
        "commit_short",
        job.commit
            .as_deref()
            .map(|c| c.chars().take(7).collect::<String>()),
    );
    put(&mut ctx, "commit_message", job.commit_message.as_deref());
    put(
        &mut ctx,
        "commit_title",
        job.commit_message
            .as_deref()
            .and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty())),
    );
    // Links are made only from http(s) URLs (see `checked_url`); any other value is left out.
    put(
        &mut ctx,
        "url",
        job.url.as_deref().and_then(super::checked_url),
    );
    put(&mut ctx, "actor", job.actor.as_deref());
    put(&mut ctx, "actor_email", job.actor_email.as_deref());
    put(&mut ctx, "actor_userid", actor_userid);
    put(
        &mut ctx,
        "started_at",
        job.started_at.map(|t| local_time(t, tz)),
    );
    put(
        &mut ctx,
        "finished_at",
        job.finished_at.map(|t| local_time(t, tz)),
    );
    let duration = job.duration_secs();
    put(&mut ctx, "duration_secs", duration);
    put(&mut ctx, "duration_human", duration.map(duration_human));
    put(&mut ctx, "summary", job.summary.as_deref());
    ctx
}

/// The context of a standup event.
pub(super) fn standup(
    route: &str,
    standup: &Standup,
    userid: Option<&str>,
    tz: Tz,
    now: DateTime<Utc>,
) -> Context {
    let mut ctx = base("standup", route, tz);
    put(&mut ctx, "user", standup.user.as_deref());
    put(&mut ctx, "userid", userid);
    ctx.insert(
        "date",
        Value::from(standup.date.clone().unwrap_or_else(|| today(tz, now))),
    );
    ctx.insert("done", Value::from(standup.done.clone()));
    ctx.insert("todo", Value::from(standup.todo.clone()));
    ctx.insert("blockers", Value::from(standup.blockers.clone()));
    put(&mut ctx, "notes", standup.notes.as_deref());
    ctx
}

/// The icon shown before a status.
pub(super) fn status_icon(status: &Status) -> &'static str {
    match status {
        Status::Success => "✅",
        Status::Failure => "❌",
        Status::Cancelled => "🚫",
        Status::Running => "🔄",
        Status::Pending => "⏳",
        Status::Skipped => "⏭️",
        Status::Unknown | Status::Other(_) => "❔",
    }
}

/// The status in Chinese and English; values outside the known list as they came.
pub(super) fn status_text(status: &Status) -> String {
    match status {
        Status::Success => "成功 success".to_owned(),
        Status::Failure => "失败 failure".to_owned(),
        Status::Cancelled => "已取消 cancelled".to_owned(),
        Status::Running => "运行中 running".to_owned(),
        Status::Pending => "排队中 pending".to_owned(),
        Status::Skipped => "已跳过 skipped".to_owned(),
        Status::Unknown => "未知 unknown".to_owned(),
        Status::Other(raw) => raw.clone(),
    }
}

/// A duration such as `45s`, `3m12s` or `1h02m`.
pub(super) fn duration_human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// A time in the configured zone, as `2026-11-24 16:03:12`.
pub(super) fn local_time(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Today in the configured zone, as `YYYY-MM-DD`.
pub(super) fn today(tz: Tz, now: DateTime<Utc>) -> String {
    now.with_timezone(&tz).format("%Y-%m-%d").to_string()
}
