//! Digest mode (routes with `digest`): events are kept in the store as they arrive, and at
//! each scheduled time one report per group is made from the period's events and queued as
//! an ordinary delivery (retries, reconciliation and `/v1/deliveries` as for any report).
//!
//! Each digest is made once, whichever replica gets there first: the store records
//! (route, scheduled time) in the same transaction that turns the events into deliveries
//! ([`Store::close_digest`]). A relay that was down at the scheduled time makes the digest when
//! it is back, if that is within `grace`; later, the events wait for the next digest. The
//! clock is passed in ([`make_due`]), so tests can stand anywhere in time.
//!
//! [`Store::close_digest`]: crate::store::Store::close_digest

mod schedule;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use schedule::Schedule;

use crate::config::{DigestGroupBy, RouteSettings, Settings};
use crate::mapping::{DigestReport, Mapper, MappingError};
use crate::sources::Event;
use crate::state::AppState;
use crate::store::{DigestEvent, NewDelivery};

/// The schedule of route `name` when it is a digest route with valid settings.
pub fn schedule_of(settings: &Settings, route: &RouteSettings) -> Option<Schedule> {
    Schedule::new(route.digest_settings()?, settings.tz())
}

/// Folds a period's events into one report per group. `last` is the scheduled time of the
/// previous digest; `period_end` the scheduled time of this one.
pub fn build_reports(
    settings: &Settings,
    mapper: &Mapper,
    route_name: &str,
    events: &[DigestEvent],
    last: Option<DateTime<Utc>>,
    period_end: DateTime<Utc>,
) -> Result<Vec<DigestReport>, MappingError> {
    let Some(route) = settings.routes.get(route_name) else {
        return Err(MappingError::UnknownRoute(route_name.to_owned()));
    };
    let Some(digest) = route.digest_settings() else {
        return Err(MappingError::UnknownRoute(format!(
            "{route_name} (not a digest route)"
        )));
    };
    let mut groups: BTreeMap<&str, Vec<(DateTime<Utc>, &Event)>> = BTreeMap::new();
    for e in events {
        groups
            .entry(e.group.as_str())
            .or_default()
            .push((e.received_at, &e.event));
    }
    if groups.is_empty() && digest.send_empty && digest.group_by == DigestGroupBy::Route {
        groups.insert(route_name, Vec::new());
    }
    // The period starts at the previous digest, or at the previous scheduled time.
    let start = last.or_else(|| {
        schedule_of(settings, route)
            .and_then(|s| s.latest_at_or_before(period_end - chrono::Duration::seconds(1)))
    });
    let mut reports = Vec::with_capacity(groups.len());
    for (group, events) in groups {
        if let Some(report) = mapper.digest(route_name, group, &events, start, period_end)? {
            reports.push(report);
        }
    }
    Ok(reports)
}

/// What happened to one route's digest in [`make_due`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Made {
    /// Route name.
    pub route: String,
    /// The scheduled time.
    pub period_end: DateTime<Utc>,
    /// Events folded.
    pub events: u64,
    /// Deliveries queued (one per report).
    pub deliveries: Vec<String>,
}

/// Makes every digest that is due at `now`: for each digest route, the latest scheduled time
/// at or before `now`, if it is at most `grace` ago and no digest was made for it yet (here
/// or by another replica). Returns the digests this call made. A route whose digest cannot
/// be built (its field template fails) is logged and counted, and tried again next time;
/// its events stay stored.
pub async fn make_due(state: &AppState, now: DateTime<Utc>) -> Vec<Made> {
    check(state, now, &mut HashSet::new()).await
}

/// [`make_due`], skipping (and adding to) the digests `handled` already.
async fn check(
    state: &AppState,
    now: DateTime<Utc>,
    handled: &mut HashSet<(String, DateTime<Utc>)>,
) -> Vec<Made> {
    let runtime = state.runtime.load_full();
    let settings = &runtime.settings;
    let mut made = Vec::new();
    for (name, route) in &settings.routes {
        let (Some(digest), Some(schedule)) =
            (route.digest_settings(), schedule_of(settings, route))
        else {
            continue;
        };
        let Some(period_end) = schedule.latest_at_or_before(now) else {
            continue;
        };
        let key = (name.clone(), period_end);
        if handled.contains(&key) {
            continue;
        }
        let late = (now - period_end).to_std().unwrap_or_default();
        if late > digest.grace {
            if missed(state, name, period_end).await {
                tracing::warn!(route = %name, %period_end, grace = %humantime::format_duration(digest.grace), "digest missed (the relay was down); its events go into the next one");
            } else {
                tracing::debug!(route = %name, %period_end, "scheduled time passed before the route had a digest or events; nothing missed");
            }
            handled.insert(key);
            continue;
        }
        let build = |events: &[DigestEvent], last: Option<DateTime<Utc>>| {
            let reports = build_reports(settings, &runtime.mapper, name, events, last, period_end)
                .map_err(|e| e.to_string())?;
            let queued_at = Utc::now();
            Ok(reports
                .into_iter()
                .map(|report| NewDelivery {
                    id: uuid::Uuid::now_v7().to_string(),
                    route: name.clone(),
                    dedup_key: format!("{name}:digest:{}:{}", period_end.timestamp(), report.group),
                    body_key: None,
                    draft: report.draft,
                    received_at: queued_at,
                })
                .collect())
        };
        match state
            .store
            .close_digest(name, period_end, Utc::now(), &build)
            .await
        {
            Ok(Some(closed)) => {
                handled.insert(key);
                let reports = closed.deliveries.len() as u64;
                let outcome = if reports == 0 { "empty" } else { "made" };
                tracing::info!(route = %name, %period_end, events = closed.events, reports, "digest made");
                let m = &state.metrics;
                m.digests.with_label_values(&[name, outcome]).inc();
                m.digest_events_folded
                    .with_label_values(&[name])
                    .inc_by(closed.events);
                m.digest_reports_saved
                    .with_label_values(&[name])
                    .inc_by(closed.events.saturating_sub(reports));
                if reports > 0 {
                    state.delivery.wake();
                }
                made.push(Made {
                    route: name.clone(),
                    period_end,
                    events: closed.events,
                    deliveries: closed.deliveries,
                });
            }
            Ok(None) => {
                handled.insert(key);
            }
            Err(e) => {
                tracing::error!(route = %name, %period_end, error = %e, "making the digest failed; its events are kept");
                state
                    .metrics
                    .digests
                    .with_label_values(&[name, "error"])
                    .inc();
            }
        }
    }
    made
}

/// Whether the digest of `route` at `period_end`, too late to send now, was really missed:
/// not made already (by another replica), and the route had a digest before or events from
/// before that time. A brand-new install (or a route just added) has neither, so its first
/// start after a scheduled time is not "the relay was down". A store error counts as missed.
pub async fn missed(state: &AppState, route: &str, period_end: DateTime<Utc>) -> bool {
    match state.store.last_digest(route).await {
        Ok(Some(last)) => return last < period_end,
        Ok(None) => {}
        Err(_) => return true,
    }
    match state.store.digest_events(route).await {
        Ok(events) => events.iter().any(|e| e.received_at < period_end),
        Err(_) => true,
    }
}

/// Longest sleep between two checks, so that a configuration reload or a clock step is
/// noticed.
const CHECK_AT_LEAST_EVERY: Duration = Duration::from_secs(60);

/// Makes digests as they fall due, until `cancel` fires.
pub async fn run(state: AppState, cancel: CancellationToken) {
    // (route, scheduled time) already handled by this process: skips asking the store again.
    let mut handled: HashSet<(String, DateTime<Utc>)> = HashSet::new();
    loop {
        let now = Utc::now();
        check(&state, now, &mut handled).await;
        handled.retain(|(_, at)| now - *at < chrono::Duration::days(8));
        let settings = state.settings();
        let next = settings
            .routes
            .values()
            .filter_map(|route| schedule_of(&settings, route)?.next_after(now))
            .min();
        let wait = next
            .and_then(|next| (next - Utc::now()).to_std().ok())
            .unwrap_or(CHECK_AT_LEAST_EVERY)
            .min(CHECK_AT_LEAST_EVERY);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// An event as a digest route keeps it: every text cut to what a digest can ever show (a
/// report content holds at most [`MAX_CONTENT_CHARS`] characters, so no value shows more),
/// and at most as many list items, so one route's large payloads (200 KB commit messages)
/// cannot fill the store.
///
/// [`MAX_CONTENT_CHARS`]: crate::mapping::MAX_CONTENT_CHARS
pub fn keepable(event: Event) -> Event {
    use crate::mapping::MAX_CONTENT_CHARS as MAX;
    fn cut(text: &mut String) {
        if let Some((at, _)) = text.char_indices().nth(MAX) {
            text.truncate(at);
        }
    }
    fn cut_opt(text: &mut Option<String>) {
        if let Some(text) = text {
            cut(text);
        }
    }
    fn cut_list(items: &mut Vec<String>) {
        items.truncate(MAX);
        items.iter_mut().for_each(cut);
    }
    match event {
        Event::JobStatus(mut job) => {
            for text in [
                &mut job.job,
                &mut job.pipeline,
                &mut job.status_raw,
                &mut job.source,
                &mut job.project,
                &mut job.run_id,
                &mut job.branch,
                &mut job.commit,
                &mut job.commit_message,
                &mut job.url,
                &mut job.actor,
                &mut job.actor_email,
                &mut job.summary,
            ] {
                cut_opt(text);
            }
            if let Some(crate::sources::Status::Other(text)) = &mut job.status {
                cut(text);
            }
            Event::JobStatus(job)
        }
        Event::Standup(mut standup) => {
            for text in [
                &mut standup.user,
                &mut standup.userid,
                &mut standup.date,
                &mut standup.notes,
            ] {
                cut_opt(text);
            }
            for list in [&mut standup.done, &mut standup.todo, &mut standup.blockers] {
                cut_list(list);
            }
            Event::Standup(standup)
        }
    }
}
