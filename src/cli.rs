//! The `check-config` and `render` commands: the same validation, parsing and mapping the
//! server uses, run once from files, printing instead of sending.

use std::path::Path;

use anyhow::{Context, anyhow};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::config::{ConfigError, Mode, Settings};
use crate::dingtalk::{self, DingTalkClient};
use crate::inbound::webhook::{Prepared, prepare};
use crate::mapping::{Mapper, ReportDraft};
use crate::metrics::Metrics;
use crate::sandbox::{FakeDingTalk, FakeOptions};
use crate::startup::template_problems;
use crate::store::DigestEvent;

/// Loads and validates the configuration for `mode`, with the mapper's template checks.
/// Every problem is listed, each naming its key path.
pub fn load_checked(file: Option<&Path>, mode: Mode) -> Result<(Settings, Mapper), ConfigError> {
    let settings = Settings::load(file)?;
    check_loaded(settings, mode)
}

/// [`load_checked`] for settings already loaded (and, for the sandbox, pointed at it first, as
/// `serve --sandbox` does before it validates).
fn check_loaded(settings: Settings, mode: Mode) -> Result<(Settings, Mapper), ConfigError> {
    let mut issues = settings.issues(mode);
    match Mapper::new(&settings) {
        Ok(mapper) if issues.is_empty() => return Ok((settings, mapper)),
        Ok(_) => {}
        Err(more) => {
            for issue in more {
                if !issues.contains(&issue) {
                    issues.push(issue);
                }
            }
        }
    }
    Err(ConfigError::Invalid(issues))
}

/// `check-config`: validates everything. With `online`, also fetches a token for every app a
/// route uses and resolves each route's template against DingTalk, failing (naming the app or
/// route) when DingTalk is unreachable or refuses. With `sandbox`, checks exactly what
/// `serve --sandbox` checks, templates against the sandbox's 日报 included. Returns the
/// summary to print.
pub async fn check_config(
    file: Option<&Path>,
    online: bool,
    sandbox: bool,
) -> anyhow::Result<String> {
    let mode = if sandbox {
        Mode::Sandbox
    } else {
        Mode::Production
    };
    let as_problems = |e: ConfigError| match e {
        ConfigError::Invalid(issues) => Problems {
            headline: "configuration is invalid".to_owned(),
            lines: issues.iter().map(ToString::to_string).collect(),
        },
        other => Problems {
            headline: other.to_string(),
            lines: Vec::new(),
        },
    };
    let mut settings = Settings::load(file).map_err(as_problems)?;
    let mut checked: Vec<String> = Vec::new();
    // The stand-in lives until the end of the check.
    let mut _sandbox = None;
    if sandbox {
        // As `serve --sandbox`: pointed at the stand-in first, then validated.
        let options = FakeOptions::default();
        let (fake, base_url) = FakeDingTalk::spawn(options.clone())
            .await
            .context("starting the sandbox DingTalk")?;
        crate::startup::use_sandbox(&mut settings, &base_url, &options);
        _sandbox = Some(fake);
    }
    let (settings, _) = check_loaded(settings, mode).map_err(as_problems)?;
    if sandbox {
        let client =
            DingTalkClient::new(&settings.dingtalk, Metrics::new()).map_err(|e| anyhow!("{e}"))?;
        Problems::check(
            "templates do not fit the configuration",
            template_problems(&settings, &client, false).await,
        )?;
        checked.push("templates checked against the sandbox's 日报".to_owned());
    }
    if online && !sandbox {
        let client =
            DingTalkClient::new(&settings.dingtalk, Metrics::new()).map_err(|e| anyhow!("{e}"))?;
        let mut problems = credential_problems(&settings, &client).await;
        problems.extend(template_problems(&settings, &client, true).await);
        Problems::check("DingTalk check failed", problems)?;
        let apps: std::collections::BTreeSet<&str> =
            settings.routes.values().map(|r| r.app.as_str()).collect();
        let by_id = settings
            .routes
            .values()
            .filter(|r| dingtalk::template_from_config(&r.template).is_some())
            .count();
        // Say exactly what was asked of DingTalk: templates given by id need no lookup.
        checked.push(format!(
            "tokens of {} app(s) and {} template(s) checked against DingTalk{}",
            apps.len(),
            settings.routes.len() - by_id,
            if by_id > 0 {
                format!(" ({by_id} given by id, checked offline)")
            } else {
                String::new()
            }
        ));
    }
    let warnings: String = settings
        .warnings()
        .iter()
        .map(|w| format!("\nwarning: {w}"))
        .collect();
    Ok(format!(
        "configuration is valid: {} route(s), {} app(s){}{warnings}",
        settings.routes.len(),
        settings.dingtalk.apps.len(),
        checked.iter().map(|c| format!(", {c}")).collect::<String>()
    ))
}

/// How long `check-config --online` waits for one token.
const TOKEN_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A check that found problems: a headline and one line per problem (`check-config` prints
/// each on its own line).
#[derive(Debug)]
pub struct Problems {
    /// What failed.
    pub headline: String,
    /// Each problem, naming its key path.
    pub lines: Vec<String>,
}

impl Problems {
    fn check(headline: &str, lines: Vec<String>) -> Result<(), Self> {
        if lines.is_empty() {
            Ok(())
        } else {
            Err(Self {
                headline: headline.to_owned(),
                lines,
            })
        }
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.headline)?;
        if !self.lines.is_empty() {
            write!(f, ": {}", self.lines.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Fetches a token for every app a route uses; each failure names the app and why.
async fn credential_problems(settings: &Settings, client: &DingTalkClient) -> Vec<String> {
    let apps: std::collections::BTreeSet<&str> =
        settings.routes.values().map(|r| r.app.as_str()).collect();
    let mut problems = Vec::new();
    for app in apps {
        match tokio::time::timeout(TOKEN_CHECK_TIMEOUT, client.warm_token(app)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("dingtalk.apps.{app}: no access_token: {e}")),
            Err(_) => problems.push(format!(
                "dingtalk.apps.{app}: DingTalk did not answer gettoken within {}s",
                TOKEN_CHECK_TIMEOUT.as_secs()
            )),
        }
    }
    problems
}

/// `check-config --print`: the effective configuration (built-in defaults, then the file(s),
/// then the environment) as JSON, which is YAML too. Secrets show as `[redacted]`, and so does
/// a password in `store.url`.
pub fn effective_config(file: Option<&Path>) -> Result<String, ConfigError> {
    let settings = Settings::load(file)?;
    let mut value = serde_json::to_value(&settings)
        .map_err(|e| ConfigError::Load(format!("cannot print the configuration: {e}")))?;
    if let Some(url) = value.pointer_mut("/store/url")
        && let Some(text) = url.as_str()
    {
        *url = Value::String(redact_url_password(text));
    }
    serde_json::to_string_pretty(&value)
        .map_err(|e| ConfigError::Load(format!("cannot print the configuration: {e}")))
}

/// `scheme://user:password@host…` with the password replaced by `[redacted]`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:[redacted]@{host}{tail}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

/// What `render` found.
#[derive(Debug)]
pub enum Rendered {
    /// The `{"create_report_param":…}` the webhook would produce.
    Report(Value),
    /// The route would answer 200 ignored.
    Ignored(String),
    /// The webhook would be rejected: status and error body.
    Rejected(u16, Value),
    /// A digest route would keep the event for the digest of this group (`render --digest`
    /// shows the digest).
    KeptForDigest(String),
    /// `--digest`: the reports the given webhooks would make if the digest were due now.
    Digest(Value),
}

/// `render`: what a webhook would become. Offline, a named template's `template_id` and
/// `sort`s are shown as placeholders; `online` resolves them (fetching a token). With
/// `digest`, every body is one webhook of a digest route's period (in order) and the result
/// is the digest made from them as if it were due now.
pub async fn render(
    file: Option<&Path>,
    route: &str,
    bodies: &[Vec<u8>],
    headers: &[String],
    online: bool,
    digest: bool,
) -> anyhow::Result<Rendered> {
    let mode = if online {
        Mode::Production
    } else {
        Mode::Offline
    };
    let (settings, mapper) = load_checked(file, mode)?;
    if bodies.len() != 1 && !digest {
        return Err(anyhow!(
            "{} bodies given: several webhooks make a digest (add --digest)",
            bodies.len()
        ));
    }
    if digest
        && settings
            .routes
            .get(route)
            .is_none_or(|r| r.digest.is_none())
    {
        return Err(anyhow!("--digest: routes.{route} has no digest settings"));
    }
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("-H {h:?}: expected 'Name: value'"))?;
        let name = HeaderName::try_from(name.trim())
            .with_context(|| format!("-H {h:?}: bad header name"))?;
        let value = HeaderValue::try_from(value.trim())
            .with_context(|| format!("-H {h:?}: bad header value"))?;
        map.append(name, value);
    }
    let now = chrono::Utc::now();
    let target = format!("/v1/hooks/{route}");
    let mut events = Vec::new();
    let mut ignored = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let request = crate::sources::Request {
            headers: &map,
            body,
            target: &target,
            method: "post",
            now,
        };
        let prepared = match prepare(&settings, &mapper, route, &request) {
            Ok(p) => p,
            Err(e) => return Ok(Rendered::Rejected(e.status.as_u16(), e.body())),
        };
        match prepared {
            Prepared::Ignored(reason, _) if !digest => return Ok(Rendered::Ignored(reason)),
            Prepared::Ignored(reason, _) => ignored.push(json!({"body": i + 1, "reason": reason})),
            Prepared::Digest { group, .. } if !digest => {
                return Ok(Rendered::KeptForDigest(group));
            }
            Prepared::Digest { event, group, .. } => events.push(DigestEvent {
                id: format!("body-{}", i + 1),
                route: route.to_owned(),
                group,
                event,
                // One millisecond apart, so "latest wins" follows the order given.
                received_at: now + chrono::Duration::milliseconds(i64::try_from(i).unwrap_or(0)),
            }),
            Prepared::Report {
                draft, truncated, ..
            } => {
                if !truncated.is_empty() {
                    tracing::warn!(fields = ?truncated, "contents cut at 1000 characters");
                }
                let param = create_report_param(&settings, &draft, online).await?;
                return Ok(Rendered::Report(json!({ "create_report_param": param })));
            }
        }
    }
    let period_end = now + chrono::Duration::milliseconds(i64::try_from(bodies.len()).unwrap_or(0));
    let reports =
        crate::digest::build_reports(&settings, &mapper, route, &events, None, period_end)?;
    let mut shown = Vec::with_capacity(reports.len());
    for report in reports {
        shown.push(json!({
            "group": report.group,
            "events": report.events,
            "summarised_pipelines": report.summarised,
            "create_report_param": create_report_param(&settings, &report.draft, online).await?,
        }));
    }
    Ok(Rendered::Digest(json!({
        "route": route,
        "events": events.len(),
        "ignored": ignored,
        "reports": shown,
    })))
}

/// The create_report_param of `draft`: resolved when the template is given by id or when
/// `online`, else with placeholders for the template id and sorts.
async fn create_report_param(
    settings: &Settings,
    draft: &ReportDraft,
    online: bool,
) -> anyhow::Result<Value> {
    Ok(
        if let Some(template) = dingtalk::template_from_config(&draft.template) {
            serde_json::to_value(dingtalk::create_param(draft, &template)?)?
        } else if online {
            let client = DingTalkClient::new(&settings.dingtalk, Metrics::new())?;
            let template = client
                .resolve_template(&draft.app, &draft.template, &draft.author)
                .await?;
            serde_json::to_value(dingtalk::create_param(draft, &template)?)?
        } else {
            unresolved_param(draft)
        },
    )
}

/// The param of a named template before lookup: id and sorts are placeholders.
fn unresolved_param(draft: &ReportDraft) -> Value {
    let name = draft.template.name.clone().unwrap_or_default();
    let contents: Vec<Value> = draft
        .contents
        .iter()
        .map(|c| {
            json!({
                "key": c.field, "sort": "<resolved at send time>", "type": 1,
                "content_type": "markdown", "content": c.content
            })
        })
        .collect();
    let mut param = json!({
        "template_id": format!("<resolved at send time: template {name:?}>"),
        "userid": draft.author,
        "dd_from": draft.dd_from,
        "to_chat": draft.to_chat,
        "contents": contents,
    });
    if !draft.to_userids.is_empty() {
        param["to_userids"] = json!(draft.to_userids);
    }
    if !draft.to_cids.is_empty() {
        param["to_cids"] = json!(draft.to_cids);
    }
    param
}
