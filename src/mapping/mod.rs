//! Mapping: a pure function from a normalised [`Event`] and a route's configuration to the
//! contents of a DingTalk report ([`ReportDraft`]), or the reason the route ignores the event.
//! No I/O, no clock (the caller passes `now`), no DingTalk knowledge beyond field names.
//!
//! Field templates are minijinja templates over the variables listed by [`variables`]. They are
//! compiled once by [`Mapper::new`] with autoescape off (the output is markdown, not HTML),
//! undefined values rendering empty (chainable), `trim_blocks` and `lstrip_blocks` on (a line
//! holding only a `{% … %}` tag leaves nothing behind) and the trailing newline dropped. Two
//! filters are added: `bullets` (a list → `• a` lines) and `numbered` (`1. a` lines). Every
//! rendered line break is sent as a markdown hard break (two spaces before `\n`), which the
//! DingTalk client shows as a new line.

mod defaults;
mod digest;
mod vars;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use globset::{Glob, GlobSet, GlobSetBuilder};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, DigestGroupBy, RouteSettings, Settings, TemplateSettings};
use crate::sources::{Event, JobStatus, Standup};

pub use digest::{DigestHeader, DigestReport};

/// DingTalk's limit on one content, in characters. The relay counts them as UTF-16 code
/// units ([`content_len`]): DingTalk's Java backend may, and it is never more than the count
/// of code points, so a content within it fits however DingTalk counts.
pub const MAX_CONTENT_CHARS: usize = 1000;

/// The length of a content as the relay counts it against [`MAX_CONTENT_CHARS`]: UTF-16 code
/// units (an emoji outside the BMP counts 2).
pub fn content_len(content: &str) -> usize {
    content.encode_utf16().count()
}

/// The report a delivery will create, before its template is resolved. Stored with the
/// delivery, so it is self-contained: a config change does not alter what was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportDraft {
    /// Name of the app in `dingtalk.apps` that posts it.
    pub app: String,
    /// The template as configured (resolved to id/key/sort at send time).
    pub template: TemplateSettings,
    /// Author userid.
    pub author: String,
    /// Receiver userids.
    pub to_userids: Vec<String>,
    /// Receiver group ids.
    pub to_cids: Vec<String>,
    /// Also send a chat message.
    pub to_chat: bool,
    /// Source tag.
    pub dd_from: String,
    /// Field contents, in template order, each at most [`MAX_CONTENT_CHARS`] characters.
    pub contents: Vec<DraftContent>,
}

impl ReportDraft {
    /// A draft of `route`'s report with these author, receivers and contents.
    fn new(
        route: &RouteSettings,
        author: String,
        to_userids: Vec<String>,
        contents: Vec<DraftContent>,
    ) -> Self {
        Self {
            app: route.app.clone(),
            template: route.template.clone(),
            author,
            to_userids,
            to_cids: route.to_cids.clone(),
            to_chat: route.to_chat,
            dd_from: route.dd_from.clone(),
            contents,
        }
    }
}

/// One filled field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftContent {
    /// Template field name (the content's `key`).
    pub field: String,
    /// Markdown text.
    pub content: String,
}

/// What a route makes of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A report to create. `truncated` names the fields that were cut to the limit.
    Report {
        /// The report.
        draft: ReportDraft,
        /// Fields whose content was cut at [`MAX_CONTENT_CHARS`].
        truncated: Vec<String>,
    },
    /// The route deliberately does not report this event.
    Ignored {
        /// Why, for the webhook answer and the log.
        reason: String,
        /// The bounded kind of `reason`, for the metric.
        kind: IgnoreKind,
    },
}

/// Why an event is not reported, as a bounded label
/// (`dingtalk_relay_webhooks_ignored_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreKind {
    /// The source does not report this event kind (a ping, a build still running, …).
    SourceEvent,
    /// The route's `events`, `statuses` or `branches` leave it out.
    Filtered,
    /// The person it is about has no DingTalk userid in `users`, and the route needs one.
    UnknownActor,
    /// Every field rendered empty.
    Empty,
    /// A userid named in the payload is neither a key nor a value of `users` (no
    /// impersonation).
    UnlistedUserid,
}

impl IgnoreKind {
    /// The metric label (one of [`crate::metrics::IGNORE_REASONS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SourceEvent => "source_event",
            Self::Filtered => "filtered",
            Self::UnknownActor => "unknown_actor",
            Self::Empty => "empty",
            Self::UnlistedUserid => "unlisted_userid",
        }
    }
}

/// What a digest route makes of an event at intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Keep it for the digest of `group`.
    Digest {
        /// The group key (author userid, project, or route name).
        group: String,
    },
    /// The route deliberately does not report this event.
    Ignored {
        /// Why.
        reason: String,
        /// The bounded kind of `reason`, for the metric.
        kind: IgnoreKind,
    },
}

/// Why mapping failed (a route or template problem, not the payload's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// No such route.
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    /// A field template failed at render time.
    #[error("routes.{route}.fields.{field}: {message}")]
    Render {
        /// Route name.
        route: String,
        /// Field name.
        field: String,
        /// The template engine's message.
        message: String,
    },
    /// A field template used up its rendering budget (`fuel`) on this event: the payload is
    /// too much for the template (a loop over a long list), not a broken template.
    #[error("routes.{route}.fields.{field}: rendering ran out of fuel on this payload")]
    OutOfFuel {
        /// Route name.
        route: String,
        /// Field name.
        field: String,
    },
}

/// The visible marker that ends a content cut at [`MAX_CONTENT_CHARS`]; it counts toward the
/// limit.
pub const TRUNCATION_MARKER: &str = "…（内容过长，已截断 / truncated）";

/// The value of `author` (and of a `to_userids` entry) that stands for the event's person.
const ACTOR: &str = "actor";

/// Every route's compiled templates and branch globs, and the user table, ready to map events.
/// Built once from the settings; [`Mapper::map`] is pure and cheap.
#[derive(Debug)]
pub struct Mapper {
    env: Environment<'static>,
    routes: BTreeMap<String, CompiledRoute>,
    /// `users`, keyed by lower-cased login or e-mail.
    users: HashMap<String, String>,
    tz: Tz,
    /// (field, template name) of the built-in job_status templates, in the standard order.
    builtin_job_status: Vec<(String, String)>,
    /// (field, template name) of the built-in standup templates, in the standard order.
    builtin_standup: Vec<(String, String)>,
    /// Digest templates (built-in and the `fields` of digest routes): digests loop over a
    /// period's events, so they get more fuel than per-event templates.
    digest_env: Environment<'static>,
    /// (field, template name) of the built-in digest templates, in the standard order.
    builtin_digest: Vec<(String, String)>,
}

#[derive(Debug)]
struct CompiledRoute {
    settings: RouteSettings,
    /// `branches` compiled; `None` when the route does not filter on branches.
    branches: Option<GlobSet>,
    /// (field, template name) of the route's own `fields`; `None` for the built-in templates.
    fields: Option<Vec<(String, String)>>,
}

impl Mapper {
    /// Compiles every route's field templates (or the built-in ones) and branch globs. Issues
    /// name the key path, e.g. `routes.ci.fields.今日完成工作: syntax error: …`.
    pub fn new(settings: &Settings) -> Result<Self, Vec<ConfigIssue>> {
        let mut env = environment();
        let mut issues = Vec::new();
        let builtin_job_status =
            add_builtins(&mut env, "job_status", defaults::JOB_STATUS, &mut issues);
        let builtin_standup = add_builtins(&mut env, "standup", defaults::STANDUP, &mut issues);
        let mut digest_env = environment();
        digest_env.set_fuel(Some(DIGEST_RENDER_FUEL));
        let builtin_digest = add_builtins(&mut digest_env, "digest", defaults::DIGEST, &mut issues);

        let mut routes = BTreeMap::new();
        for (route, rs) in &settings.routes {
            let branches = compile_branches(route, &rs.branches, &mut issues);
            let fields = rs.fields.as_ref().map(|fields| {
                let mut compiled = Vec::with_capacity(fields.len());
                let target = if rs.digest.is_some() {
                    &mut digest_env
                } else {
                    &mut env
                };
                let documented = if rs.digest.is_some() {
                    digest_variables()
                } else {
                    variables()
                };
                for (field, source) in fields {
                    let name = format!("routes.{route}.fields.{field}");
                    match target.add_template_owned(name.clone(), source.clone()) {
                        Ok(()) => {
                            issues.extend(unknown_variables(target, &name, documented));
                            compiled.push((field.clone(), name));
                        }
                        Err(e) => issues.push(ConfigIssue {
                            path: name,
                            message: describe(&e),
                        }),
                    }
                }
                compiled
            });
            routes.insert(
                route.clone(),
                CompiledRoute {
                    settings: rs.clone(),
                    branches,
                    fields,
                },
            );
        }
        let mapper = Self {
            env,
            routes,
            users: settings
                .users
                .iter()
                .map(|(login, userid)| (login.trim().to_lowercase(), userid.trim().to_owned()))
                .collect(),
            tz: settings.tz(),
            builtin_job_status,
            builtin_standup,
            digest_env,
            builtin_digest,
        };
        issues.extend(mapper.dry_run());
        if issues.is_empty() {
            Ok(mapper)
        } else {
            Err(issues)
        }
    }

    /// Renders every route's own templates against a sample of each event type and reports the
    /// mistakes that fail whatever the event (an unknown filter, test or function).
    fn dry_run(&self) -> Vec<ConfigIssue> {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let job = JobStatus {
            job: Some("build".to_owned()),
            pipeline: Some("CI".to_owned()),
            status: Some(crate::sources::Status::Failure),
            project: Some("acme/api".to_owned()),
            run_id: Some("1".to_owned()),
            branch: Some("main".to_owned()),
            commit: Some("0123456789abcdef".to_owned()),
            commit_message: Some("Sample\n\nbody".to_owned()),
            url: Some("https://ci.example.com/runs/1".to_owned()),
            actor: Some("octocat".to_owned()),
            actor_email: Some("octocat@example.com".to_owned()),
            started_at: Some(now),
            finished_at: Some(now),
            duration_secs: Some(1),
            summary: Some("sample".to_owned()),
            ..JobStatus::default()
        };
        let standup = Standup {
            user: Some("octocat".to_owned()),
            userid: Some("dd_sample".to_owned()),
            date: Some("1970-01-01".to_owned()),
            done: vec!["a".to_owned()],
            todo: vec!["b".to_owned()],
            blockers: vec!["c".to_owned()],
            notes: Some("d".to_owned()),
        };
        let mut issues = Vec::new();
        for (route, compiled) in &self.routes {
            let Some(fields) = &compiled.fields else {
                continue;
            };
            let (env, contexts) = if compiled.settings.digest.is_some() {
                let events = [
                    (now, Event::JobStatus(job.clone())),
                    (now, Event::Standup(standup.clone())),
                ];
                let refs: Vec<(DateTime<Utc>, &Event)> =
                    events.iter().map(|(t, e)| (*t, e)).collect();
                let folded = digest::fold(&refs, self.tz, |_| None);
                let header = DigestHeader {
                    route,
                    group: "dd_sample",
                    group_by: "author",
                    author: "dd_sample",
                    period_start: now,
                    period_end: now,
                    tz: self.tz,
                };
                (&self.digest_env, vec![digest::context(&header, &folded, 1)])
            } else {
                (
                    &self.env,
                    vec![
                        Value::from_serialize(vars::job_status(
                            route,
                            &job,
                            Some("dd_sample"),
                            self.tz,
                            now,
                        )),
                        Value::from_serialize(vars::standup(
                            route,
                            &standup,
                            Some("dd_sample"),
                            self.tz,
                            now,
                        )),
                    ],
                )
            };
            for (_, name) in fields {
                let Ok(template) = env.get_template(name) else {
                    continue;
                };
                let found = contexts.iter().find_map(|ctx| {
                    template.render(ctx).err().filter(|e| {
                        matches!(
                            e.kind(),
                            minijinja::ErrorKind::UnknownFilter
                                | minijinja::ErrorKind::UnknownTest
                                | minijinja::ErrorKind::UnknownFunction
                        )
                    })
                });
                if let Some(e) = found {
                    issues.push(ConfigIssue {
                        path: name.clone(),
                        message: describe(&e),
                    });
                }
            }
        }
        issues
    }

    /// What `route` makes of `event` at time `now`.
    pub fn map(
        &self,
        route: &str,
        event: &Event,
        now: DateTime<Utc>,
    ) -> Result<Mapped, MappingError> {
        let compiled = self.compiled(route)?;
        let rs = &compiled.settings;

        if let Event::JobStatus(job) = event
            && let Some(reason) = filter(route, compiled, job)
        {
            return Ok(Mapped::Ignored {
                reason,
                kind: IgnoreKind::Filtered,
            });
        }
        if let Some(reason) = self.refused_identity(event) {
            return Ok(Mapped::Ignored {
                reason,
                kind: IgnoreKind::UnlistedUserid,
            });
        }
        // Who the event is about, how to say it when they have no userid, and the context.
        let (person, unmapped) = self.person(event);
        let (ctx, builtins) = match event {
            Event::JobStatus(job) => (
                vars::job_status(route, job, person, self.tz, now),
                &self.builtin_job_status,
            ),
            Event::Standup(standup) => (
                vars::standup(route, standup, person, self.tz, now),
                &self.builtin_standup,
            ),
        };

        let author = if rs.author == ACTOR {
            match person {
                Some(userid) => userid.to_owned(),
                None => {
                    return Ok(Mapped::Ignored {
                        reason: format!("{unmapped} (needed by routes.{route}.author: actor)"),
                        kind: IgnoreKind::UnknownActor,
                    });
                }
            }
        } else {
            rs.author.clone()
        };

        let to_userids = self.receivers(rs, person);

        let fields = self.ordered_fields(rs, compiled.fields.as_ref().unwrap_or(builtins));
        // Converted once for all fields: rendering a map converts it to template values on
        // every render.
        let ctx = Value::from_serialize(&ctx);
        let mut contents = Vec::with_capacity(fields.len());
        let mut truncated = Vec::new();
        for (field, text) in render_fields(&self.env, route, &fields, &ctx)? {
            let (content, cut) = truncate(&text);
            if cut {
                truncated.push(field.clone());
            }
            contents.push(DraftContent { field, content });
        }
        if contents.is_empty() {
            return Ok(Mapped::Ignored {
                reason: "every field rendered empty".to_owned(),
                kind: IgnoreKind::Empty,
            });
        }
        Ok(Mapped::Report {
            draft: ReportDraft::new(rs, author, to_userids, contents),
            truncated,
        })
    }

    /// The DingTalk userid of the person an event is about (a job's actor by login, else
    /// e-mail; a standup's userid, else its user), and how to say that it has none.
    fn person<'a>(&'a self, event: &'a Event) -> (Option<&'a str>, String) {
        match event {
            Event::JobStatus(job) => {
                let actor = job.actor.as_deref();
                let email = job.actor_email.as_deref();
                let person = actor
                    .and_then(|a| self.known_identity(a))
                    .or_else(|| email.and_then(|e| self.known_identity(e)));
                let unmapped = match (actor, email) {
                    (Some(a), Some(e)) => {
                        format!("actor {a:?} ({e}) has no DingTalk userid in users")
                    }
                    (Some(a), None) => format!("actor {a:?} has no DingTalk userid in users"),
                    (None, Some(e)) => format!("actor {e:?} has no DingTalk userid in users"),
                    (None, None) => "the event names no actor".to_owned(),
                };
                (person, unmapped)
            }
            Event::Standup(standup) => {
                // A claimed userid that `users` does not know never gets here (see
                // `refused_identity`).
                let person = standup
                    .userid
                    .as_deref()
                    .and_then(|u| self.known_identity(u))
                    .or_else(|| standup.user.as_deref().and_then(|u| self.known_identity(u)));
                let unmapped = match standup.user.as_deref() {
                    Some(u) => format!("user {u:?} has no DingTalk userid in users"),
                    None => "the standup names no user".to_owned(),
                };
                (person, unmapped)
            }
        }
    }

    /// What digest route `route` makes of `event` at intake: the route's filters apply, and
    /// the event is kept for the digest of its group, or ignored with the reason.
    pub fn admit(&self, route: &str, event: &Event) -> Result<Admitted, MappingError> {
        let compiled = self.compiled(route)?;
        let rs = &compiled.settings;
        if let Event::JobStatus(job) = event
            && let Some(reason) = filter(route, compiled, job)
        {
            return Ok(Admitted::Ignored {
                reason,
                kind: IgnoreKind::Filtered,
            });
        }
        if let Some(reason) = self.refused_identity(event) {
            return Ok(Admitted::Ignored {
                reason,
                kind: IgnoreKind::UnlistedUserid,
            });
        }
        let group_by = rs.digest_settings().map(|d| d.group_by).unwrap_or_default();
        let group = match group_by {
            DigestGroupBy::Route => route.to_owned(),
            DigestGroupBy::Project => match event {
                Event::JobStatus(job) => job.project.clone().unwrap_or_default(),
                // A standup belongs to no project: it goes into the report without one.
                Event::Standup(_) => String::new(),
            },
            DigestGroupBy::Author if rs.author != ACTOR => rs.author.clone(),
            DigestGroupBy::Author => match self.person(event) {
                (Some(userid), _) => userid.to_owned(),
                (None, unmapped) => {
                    return Ok(Admitted::Ignored {
                        reason: format!("{unmapped} (needed by routes.{route}.author: actor)"),
                        kind: IgnoreKind::UnknownActor,
                    });
                }
            },
        };
        Ok(Admitted::Digest { group })
    }

    /// The digest report of one group: `events` (received at, event) of the period folded
    /// into the route's digest fields. `None` when every field renders empty.
    pub fn digest(
        &self,
        route: &str,
        group: &str,
        events: &[(DateTime<Utc>, &Event)],
        period_start: Option<DateTime<Utc>>,
        period_end: DateTime<Utc>,
    ) -> Result<Option<DigestReport>, MappingError> {
        let compiled = self.compiled(route)?;
        let rs = &compiled.settings;
        let Some(settings) = rs.digest_settings() else {
            return Err(MappingError::UnknownRoute(format!(
                "{route} (not a digest route)"
            )));
        };
        let tz = settings.tz(self.tz).unwrap_or(self.tz);
        let author = if settings.group_by == DigestGroupBy::Author && rs.author == ACTOR {
            group.to_owned()
        } else {
            rs.author.clone()
        };
        let to_userids = self.receivers(rs, Some(&author));
        let folded = digest::fold(events, tz, |login| self.userid(login));
        let earliest = events.iter().map(|(t, _)| *t).min();
        let period_start = match (period_start, earliest) {
            (Some(start), Some(first)) => start.min(first),
            (Some(start), None) => start,
            (None, Some(first)) => first,
            (None, None) => period_end,
        };
        let header = DigestHeader {
            route,
            group,
            group_by: settings.group_by.as_str(),
            author: &author,
            period_start,
            period_end,
            tz,
        };
        // A quota digest (`on_quota_low: digest`) has the route's event templates in `fields`,
        // so it is rendered with the built-in digest templates.
        let digest_fields = match &compiled.fields {
            Some(fields) if rs.digest.is_some() => fields,
            _ => &self.builtin_digest,
        };
        let fields = self.ordered_fields(rs, digest_fields);
        let render = |shown: usize| -> Result<Vec<DraftContent>, MappingError> {
            let ctx = digest::context(&header, &folded, shown);
            Ok(render_fields(&self.digest_env, route, &fields, &ctx)?
                .into_iter()
                .map(|(field, content)| DraftContent { field, content })
                .collect())
        };
        // The most pipeline lines (up to max_lines) whose rendering fits every field; fewer
        // lines never make a field longer, so a binary search finds it.
        let most = settings.max_lines.min(folded.pipelines_len());
        let mut contents = render(most)?;
        let mut shown = most;
        if !digest::fits(&contents) {
            let (mut low, mut high) = (0, most);
            let mut best = None;
            while low < high {
                let mid = (low + high) / 2;
                let attempt = render(mid)?;
                if digest::fits(&attempt) {
                    best = Some((mid, attempt));
                    low = mid + 1;
                } else {
                    high = mid;
                }
            }
            (shown, contents) = match best {
                Some(found) => found,
                None => (0, render(0)?),
            };
        }
        let mut cut = Vec::new();
        for content in &mut contents {
            let (text, was_cut) = digest::fit_lines(&content.content);
            if was_cut {
                content.content = text;
                cut.push(content.field.clone());
            }
        }
        if contents.is_empty() {
            return Ok(None);
        }
        Ok(Some(DigestReport {
            group: group.to_owned(),
            draft: ReportDraft::new(rs, author, to_userids, contents),
            events: folded.events,
            summarised: folded.pipelines_len() - shown.min(folded.pipelines_len()),
            cut,
        }))
    }

    /// A route's (field, template name) pairs in the template's field order when it is given
    /// by id.
    fn ordered_fields(
        &self,
        rs: &RouteSettings,
        fields: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut fields = fields.to_vec();
        if let Some(template_fields) = &rs.template.fields {
            fields.sort_by_key(|(field, _)| {
                template_fields
                    .iter()
                    .find(|f| &f.name == field)
                    .map_or(i64::MAX, |f| f.sort)
            });
        }
        fields
    }

    /// A route's compiled settings.
    fn compiled(&self, route: &str) -> Result<&CompiledRoute, MappingError> {
        self.routes
            .get(route)
            .ok_or_else(|| MappingError::UnknownRoute(route.to_owned()))
    }

    /// A route's receivers as userids, each once: entries that are keys of `users` are
    /// mapped, and `actor` stands for `actor` (left out when `None`).
    fn receivers(&self, rs: &RouteSettings, actor: Option<&str>) -> Vec<String> {
        let mut to_userids: Vec<String> = Vec::with_capacity(rs.to_userids.len());
        for entry in &rs.to_userids {
            let userid = if entry == ACTOR {
                match actor {
                    Some(userid) => userid,
                    None => continue,
                }
            } else {
                self.userid(entry).unwrap_or(entry)
            };
            if !to_userids.iter().any(|u| u == userid) {
                to_userids.push(userid.to_owned());
            }
        }
        to_userids
    }

    /// Why an event is refused for the identity it claims: a standup's `userid` is used as
    /// the report's author and receiver, so one that is neither a key nor a value of `users`
    /// would let a sender write or address a report as anyone.
    fn refused_identity(&self, event: &Event) -> Option<String> {
        match event {
            Event::Standup(standup) => standup
                .userid
                .as_deref()
                .filter(|claimed| self.known_identity(claimed).is_none())
                .map(|claimed| {
                    format!(
                        "userid {claimed:?} is neither a key nor a value of users; only people listed there can be named"
                    )
                }),
            Event::JobStatus(_) => None,
        }
    }

    /// The DingTalk userid an event's identity stands for: the value of `users` under it (a
    /// login or e-mail, case-insensitive), or the identity itself when it is one of the
    /// values. Anything else is no one.
    fn known_identity(&self, identity: &str) -> Option<&str> {
        self.userid(identity).or_else(|| {
            let identity = identity.trim();
            self.users
                .values()
                .find(|userid| userid.as_str() == identity)
                .map(String::as_str)
        })
    }

    /// The DingTalk userid of a CI login or e-mail (case-insensitive), from `users`.
    fn userid(&self, login: &str) -> Option<&str> {
        self.users
            .get(&login.trim().to_lowercase())
            .map(String::as_str)
    }
}

/// Names and one-line descriptions of the variables a field template sees, for docs and
/// `check-config`.
pub fn variables() -> &'static [(&'static str, &'static str)] {
    vars::VARIABLES
}

/// Names and one-line descriptions of the variables a digest route's field template sees.
pub fn digest_variables() -> &'static [(&'static str, &'static str)] {
    digest::VARIABLES
}

/// Cuts `content` to at most [`MAX_CONTENT_CHARS`] UTF-16 code units, ending with the
/// visible [`TRUNCATION_MARKER`] that counts toward the limit. The cut falls on a grapheme
/// cluster boundary (never inside an emoji sequence, a flag or before a combining mark) and
/// never inside a markdown link or image (`[text](url)`, `![alt](url)`): such a link is
/// dropped whole. Returns (text, was_cut).
pub fn truncate(content: &str) -> (String, bool) {
    use unicode_segmentation::UnicodeSegmentation;
    if content_len(content) <= MAX_CONTENT_CHARS {
        return (content.to_owned(), false);
    }
    let budget = MAX_CONTENT_CHARS - content_len(TRUNCATION_MARKER);
    let mut end = 0;
    let mut used = 0;
    for (at, grapheme) in content.grapheme_indices(true) {
        let units = content_len(grapheme);
        if used + units > budget {
            break;
        }
        used += units;
        end = at + grapheme.len();
    }
    if let Some(start) = markdown_links(content)
        .into_iter()
        .find(|&(start, stop)| start < end && end < stop)
        .map(|(start, _)| start)
    {
        end = start;
    }
    let mut out = content[..end].trim_end().to_owned();
    out.push_str(TRUNCATION_MARKER);
    (out, true)
}

/// Byte ranges of the markdown links and images of `text`: from `[` (or `![`) to the `)`
/// that closes the URL, on one line.
fn markdown_links(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut links = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'[' {
            i += 1;
            continue;
        }
        let start = if i > 0 && bytes[i - 1] == b'!' {
            i - 1
        } else {
            i
        };
        let line_end = text[i..].find('\n').map_or(text.len(), |n| i + n);
        let Some(close) = text[i..line_end].find("](").map(|n| i + n) else {
            i += 1;
            continue;
        };
        // The URL may hold balanced parentheses (e.g. wiki links).
        let mut depth = 0usize;
        let mut stop = None;
        for (offset, b) in bytes[close + 2..line_end].iter().enumerate() {
            match b {
                b'(' => depth += 1,
                b')' if depth == 0 => {
                    stop = Some(close + 2 + offset + 1);
                    break;
                }
                b')' => depth -= 1,
                _ => {}
            }
        }
        match stop {
            Some(stop) => {
                links.push((start, stop));
                i = stop;
            }
            None => i += 1,
        }
    }
    links
}

/// Why a job_status event does not pass the route's filters, if it does not.
fn filter(route: &str, compiled: &CompiledRoute, job: &JobStatus) -> Option<String> {
    let rs = &compiled.settings;
    let phase = job.phase().as_str();
    if !rs.events.iter().any(|e| e == phase) {
        return Some(format!("phase {phase} is not in routes.{route}.events"));
    }
    let status = job.status();
    let raw = job.status_raw.as_deref().unwrap_or("none").to_lowercase();
    let listed = |wanted: &str| {
        rs.statuses
            .iter()
            .any(|s| s.trim().to_lowercase() == wanted.to_lowercase())
    };
    // A native sender's status the relay does not know is no finished run to report,
    // unless the route asks for it.
    if let Some(source) = job.source.as_deref()
        && status == crate::sources::Status::Unknown
        && !listed("unknown")
    {
        return Some(format!(
            "status {raw:?} from {source} is not one the relay knows; list unknown in routes.{route}.statuses to report it"
        ));
    }
    let status = status.as_str();
    if !rs.statuses.is_empty() && !listed(status) && !listed(&raw) {
        return Some(format!(
            "status {status:?} is not in routes.{route}.statuses"
        ));
    }
    if let Some(globs) = &compiled.branches {
        match job.branch.as_deref() {
            None => {
                return Some(format!(
                    "the event has no branch, and routes.{route}.branches only lets matching branches through"
                ));
            }
            Some(branch) if !globs.is_match(branch) => {
                return Some(format!(
                    "branch {branch:?} does not match routes.{route}.branches"
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// Renders each (field, template name) of `fields` in `env` against `ctx`, as markdown with
/// hard breaks; fields that render empty are left out.
fn render_fields<S: Serialize>(
    env: &Environment<'static>,
    route: &str,
    fields: &[(String, String)],
    ctx: &S,
) -> Result<Vec<(String, String)>, MappingError> {
    let mut rendered = Vec::with_capacity(fields.len());
    for (field, name) in fields {
        let text = env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| match e.kind() {
                minijinja::ErrorKind::OutOfFuel => MappingError::OutOfFuel {
                    route: route.to_owned(),
                    field: field.clone(),
                },
                _ => MappingError::Render {
                    route: route.to_owned(),
                    field: field.clone(),
                    message: describe(&e),
                },
            })?;
        let text = hard_breaks(text.trim());
        if !text.is_empty() {
            rendered.push((field.clone(), text));
        }
    }
    Ok(rendered)
}

/// The variables template `name` reads that are not in `documented` (nor globals of `env`):
/// one issue each, naming the variable as written (`workflow_run.name`) and the closest
/// documented name. Such a variable is always empty, so the field silently loses it.
fn unknown_variables(
    env: &Environment<'static>,
    name: &str,
    documented: &[(&str, &str)],
) -> Vec<ConfigIssue> {
    let Ok(template) = env.get_template(name) else {
        return Vec::new();
    };
    let globals: Vec<&str> = env.globals().map(|(n, _)| n).collect();
    let mut used: Vec<String> = template.undeclared_variables(true).into_iter().collect();
    used.sort();
    used.into_iter()
        .filter(|variable| {
            let top = variable.split('.').next().unwrap_or(variable);
            !documented.iter().any(|(d, _)| *d == top) && !globals.contains(&top)
        })
        .map(|variable| {
            let top = variable.split('.').next().unwrap_or(&variable);
            let closest = suggest(top, documented.iter().map(|(d, _)| *d));
            ConfigIssue {
                path: name.to_owned(),
                message: format!(
                    "unknown variable `{variable}`: it is not one of the documented variables, so it would always be empty{}",
                    closest
                        .map(|c| format!(" (closest documented variable: `{c}`)"))
                        .unwrap_or_default()
                ),
            }
        })
        .collect()
}

/// Names CI payloads use for what a documented variable holds, for the suggestion.
const PAYLOAD_NAMES: &[(&str, &str)] = &[
    ("workflow_run", "pipeline"),
    ("workflow", "pipeline"),
    ("workflow_job", "job"),
    ("build", "pipeline"),
    ("sha", "commit"),
    ("head_sha", "commit"),
    ("ref", "branch"),
    ("head_branch", "branch"),
    ("repository", "project"),
    ("repo", "project"),
    ("conclusion", "status"),
    ("result", "status"),
    ("html_url", "url"),
    ("sender", "actor"),
    ("author", "actor"),
    ("message", "commit_message"),
];

/// The candidate closest to `word`: what a CI payload name means ([`PAYLOAD_NAMES`]), else a
/// candidate that `word` starts with (`commit` for `commit_sha`), else the smallest edit
/// distance.
fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&'a str> = candidates.collect();
    if let Some((_, meant)) = PAYLOAD_NAMES.iter().find(|(payload, _)| *payload == word)
        && let Some(c) = candidates.iter().find(|c| *c == meant)
    {
        return Some(c);
    }
    candidates
        .into_iter()
        .map(|c| {
            let prefix = word.starts_with(c) || c.starts_with(word);
            (!prefix, crate::config::edit_distance(word, c), c)
        })
        .min()
        .map(|(_, _, c)| c)
}

/// Adds one event type's built-in templates; returns their (field, template name).
fn add_builtins(
    env: &mut Environment<'static>,
    kind: &str,
    set: [(&'static str, &'static str); 3],
    issues: &mut Vec<ConfigIssue>,
) -> Vec<(String, String)> {
    let mut names = Vec::with_capacity(set.len());
    for (field, source) in set {
        let name = format!("builtin.{kind}.{field}");
        if let Err(e) = env.add_template_owned(name.clone(), source) {
            issues.push(ConfigIssue {
                path: name.clone(),
                message: describe(&e),
            });
        }
        names.push((field.to_owned(), name));
    }
    names
}

/// Compiles a route's `branches`; `None` when the list is empty or a glob is invalid (reported).
fn compile_branches(
    route: &str,
    branches: &[String],
    issues: &mut Vec<ConfigIssue>,
) -> Option<GlobSet> {
    if branches.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    let mut ok = true;
    for (i, glob) in branches.iter().enumerate() {
        match Glob::new(glob) {
            Ok(g) => {
                builder.add(g);
            }
            Err(e) => {
                ok = false;
                // Same wording as the configuration check, so the two can be deduplicated.
                issues.push(ConfigIssue {
                    path: format!("routes.{route}.branches[{i}]"),
                    message: format!("{glob:?} is not a valid glob: {e}"),
                });
            }
        }
    }
    if !ok {
        return None;
    }
    match builder.build() {
        Ok(set) => Some(set),
        Err(e) => {
            issues.push(ConfigIssue {
                path: format!("routes.{route}.branches"),
                message: e.to_string(),
            });
            None
        }
    }
}

/// Instructions one render may execute (a normal field template needs a few hundred).
const RENDER_FUEL: u64 = 100_000;
/// Instructions one digest render may execute: it loops over up to `max_lines` (at most
/// 1000) pipelines and every standup of a period.
const DIGEST_RENDER_FUEL: u64 = 5_000_000;

/// The template environment every field template is compiled in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Every value printed from an event is escaped for DingTalk markdown, in built-in and
    // route templates alike; `| safe` opts a value out.
    env.set_auto_escape_callback(|_| AutoEscape::Custom(MARKDOWN));
    env.set_formatter(markdown_formatter);
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_keep_trailing_newline(false);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // A field template comes from configuration; bound its work so a runaway loop fails the
    // render instead of stalling a request.
    env.set_fuel(Some(RENDER_FUEL));
    env.add_filter("bullets", bullets);
    env.add_filter("numbered", numbered);
    env
}

/// The items of a list (or of one string), as trimmed, non-empty strings.
fn items(value: &Value) -> Vec<String> {
    if value.is_undefined() || value.is_none() {
        return Vec::new();
    }
    if let Some(s) = value.as_str() {
        return s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
    }
    match value.kind() {
        minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Iterable => value
            .try_iter()
            .map(|iter| {
                iter.map(|item| item.to_string().trim().to_owned())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![value.to_string()],
    }
}

/// Filter `bullets`: a list as `• item` lines (DingTalk eats `- ` bullets), each item
/// escaped like any value.
fn bullets(value: Value) -> Value {
    Value::from_safe_string(
        items(&value)
            .iter()
            .map(|item| format!("• {}", escape_markdown(item)))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Filter `numbered`: a list as `1. item` lines, each item escaped like any value.
fn numbered(value: Value) -> Value {
    Value::from_safe_string(
        items(&value)
            .iter()
            .enumerate()
            .map(|(i, item)| format!("{}. {}", i + 1, escape_markdown(item)))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The name of the relay's auto-escape mode.
const MARKDOWN: &str = "markdown";

/// Prints a value into a template: escaped for markdown by [`escape_markdown`] unless it is
/// marked safe (`| safe`, the relay's own filters, checked URLs); undefined and none print
/// nothing.
fn markdown_formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if value.is_undefined() || value.is_none() {
        return Ok(());
    }
    if value.is_safe() || state.auto_escape() != AutoEscape::Custom(MARKDOWN) {
        return write!(out, "{value}").map_err(minijinja::Error::from);
    }
    let text = match value.as_str() {
        Some(text) => escape_markdown(text),
        None => escape_markdown(&value.to_string()),
    };
    out.write_str(&text).map_err(minijinja::Error::from)
}

/// `text` as inert DingTalk markdown: its line breaks are folded into ` ⏎ ` (so it cannot
/// start a line of its own: no heading, list, quote or forged status line), the characters
/// that make emphasis, code, links, images, HTML and tables are backslash-escaped, a start
/// that would make a block (`#`, `>`, `- `, `1. `) is escaped, and `://` is broken with a
/// zero-width space so that the reader's client does not turn it into a link.
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut lines = text
        .split(['\n', '\r', '\u{2028}', '\u{2029}', '\u{85}'])
        .filter(|l| !l.trim().is_empty())
        .peekable();
    let mut first = true;
    while let Some(piece) = lines.next() {
        // Only the start of the value can be at the start of a line; a later line of it
        // follows a fold mark.
        let line = if first { piece } else { piece.trim_start() };
        let line = if lines.peek().is_some() {
            line.trim_end()
        } else {
            line
        };
        first = false;
        // A value (or a line of it) at the start of a template line must not open a block.
        // (`>` and `*` are escaped wherever they are, below.)
        let opens_block = match line.trim_start().chars().next() {
            Some('#' | '=') => true,
            Some('-' | '+') => {
                let rest = &line.trim_start()[1..];
                rest.is_empty() || rest.starts_with(' ')
            }
            Some(c) if c.is_ascii_digit() => {
                let rest = line
                    .trim_start()
                    .trim_start_matches(|c: char| c.is_ascii_digit());
                rest.starts_with(". ") || rest.starts_with(") ")
            }
            _ => false,
        };
        let indent = line.len() - line.trim_start().len();
        out.push_str(&line[..indent]);
        let line = &line[indent..];
        if opens_block && !line.starts_with(|c: char| c.is_ascii_digit()) {
            out.push('\\');
        }
        for (i, c) in line.char_indices() {
            match c {
                // Inside a word `_` is plain text (snake_case); at its edges it emphasises.
                '_' if line[..i]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_alphanumeric)
                    && line[i + 1..]
                        .chars()
                        .next()
                        .is_some_and(char::is_alphanumeric) =>
                {
                    out.push('_');
                }
                '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' => {
                    out.push('\\');
                    out.push(c);
                }
                '.' | ')' if opens_block && line[..i].chars().all(|c| c.is_ascii_digit()) => {
                    out.push('\\');
                    out.push(c);
                }
                ':' if line[i..].starts_with("://") => out.push_str(":\u{200b}"),
                c if c.is_control() => out.push(' '),
                c => out.push(c),
            }
        }
        if lines.peek().is_some() {
            out.push_str(" ⏎ ");
        }
    }
    out
}

/// `url` as a link target the templates may print as it is: only `http` and `https`
/// URLs, normalised, with the characters that could end markdown link syntax
/// percent-encoded. Anything else is not a URL to show.
pub fn checked_url(url: &str) -> Option<Value> {
    let parsed = reqwest::Url::parse(url.trim()).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return None;
    }
    let mut safe = String::with_capacity(parsed.as_str().len());
    for c in parsed.as_str().chars() {
        match c {
            '(' => safe.push_str("%28"),
            ')' => safe.push_str("%29"),
            '[' => safe.push_str("%5B"),
            ']' => safe.push_str("%5D"),
            '*' => safe.push_str("%2A"),
            '<' => safe.push_str("%3C"),
            '>' => safe.push_str("%3E"),
            '`' => safe.push_str("%60"),
            '|' => safe.push_str("%7C"),
            '\\' => safe.push_str("%5C"),
            c => safe.push(c),
        }
    }
    Some(Value::from_safe_string(safe))
}

/// Makes every line break between two lines of text a markdown hard break (two spaces before
/// `\n`), drops trailing blanks of lines and keeps at most one blank line in a row.
fn hard_breaks(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut lines = text.lines().map(str::trim_end).peekable();
    let mut previous_blank = false;
    while let Some(line) = lines.next() {
        let blank = line.is_empty();
        if blank && previous_blank {
            continue;
        }
        previous_blank = blank;
        out.push_str(line);
        if let Some(next) = lines.peek() {
            if !blank && !next.is_empty() {
                out.push_str("  ");
            }
            out.push('\n');
        }
    }
    out
}

/// A template error in one line: kind, detail, line, and any cause.
fn describe(e: &minijinja::Error) -> String {
    let mut message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        message = format!("{message} (line {line})");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests;
