//! Unit tests of the mapper: filters, users, templates, time zones and truncation.

use chrono::TimeZone;

use super::*;
use crate::config::STANDARD_FIELDS;
use crate::sources::generic;

const BASE: &str = r#"
server: {listen: "127.0.0.1:8080", admin_listen: "127.0.0.1:8081"}
dingtalk:
  apps:
    default: {app_key: "k"}
store: {url: "memory:"}
delivery: {}
users:
  octocat: "dd_user_01"
  "Alice@Example.com": "dd_alice"
  lead: "dd_lead"
  carol: "dd9"
routes:
"#;

/// The spec's example route: built-in templates, default filters.
const CI: &str = r#"
  ci:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    to_userids: ["lead01", "actor", "octocat", "lead01", "LEAD"]
    to_cids: ["cid1"]
    to_chat: true
"#;

const SPEC_JOB: &str = r#"{"type":"job_status","job":"build","status":"success","project":"acme/api","pipeline":"CI",
 "run_id":"812","branch":"main","commit":"9f2c1e7","commit_message":"Fix flaky test\n\nLong body",
 "url":"https://ci.example.com/runs/812","actor":"octocat","started_at":"2026-11-24T08:00:00Z",
 "finished_at":"2026-11-24T08:03:12Z","duration_secs":192,"summary":"418 tests passed"}"#;

fn settings(routes: &str) -> Settings {
    Settings::from_yaml(&format!("{BASE}{routes}")).unwrap_or_else(|e| panic!("{e}\n{routes}"))
}

fn mapper(routes: &str) -> Mapper {
    Mapper::new(&settings(routes)).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A route `ci` with the given extra keys (indented under the route).
fn route(extra: &str) -> String {
    format!("{CI}{extra}")
}

fn event(json: &str) -> Event {
    generic::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// `SPEC_JOB` with some keys replaced or added.
fn job_with(changes: &[(&str, serde_json::Value)]) -> Event {
    let mut value: serde_json::Value = serde_json::from_str(SPEC_JOB).unwrap();
    for (key, v) in changes {
        if v.is_null() {
            value.as_object_mut().unwrap().remove(*key);
        } else {
            value[*key] = v.clone();
        }
    }
    event(&value.to_string())
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
}

fn report(m: &Mapper, e: &Event) -> (ReportDraft, Vec<String>) {
    match m.map("ci", e, now()).unwrap() {
        Mapped::Report { draft, truncated } => (draft, truncated),
        Mapped::Ignored { reason, .. } => panic!("ignored: {reason}"),
    }
}

fn content<'a>(draft: &'a ReportDraft, field: &str) -> Option<&'a str> {
    draft
        .contents
        .iter()
        .find(|c| c.field == field)
        .map(|c| c.content.as_str())
}

#[test]
fn spec_job_with_built_in_templates() {
    let m = mapper(CI);
    let (draft, truncated) = report(&m, &event(SPEC_JOB));
    assert!(truncated.is_empty());
    assert_eq!(draft.author, "manager01");
    assert_eq!(draft.to_userids, vec!["lead01", "dd_user_01", "dd_lead"]);
    assert_eq!(draft.to_cids, vec!["cid1"]);
    assert!(draft.to_chat);
    assert_eq!(draft.app, "default");
    assert_eq!(draft.dd_from, "dingtalk-relay");
    assert_eq!(draft.template.name.as_deref(), Some("日报"));
    // A success leaves nothing to do and nothing to coordinate.
    assert_eq!(draft.contents.len(), 1, "{:?}", draft.contents);
    assert_eq!(
        content(&draft, "今日完成工作").unwrap(),
        "✅ **CI / build** 成功 success  \n\
         项目 Project: acme/api  \n\
         分支 Branch: main @ 9f2c1e7  \n\
         说明 Message: Fix flaky test  \n\
         触发 By: octocat  \n\
         耗时 Duration: 3m12s  \n\
         摘要 Summary: 418 tests passed  \n\
         链接 Link: https://ci.example.com/runs/812"
    );
}

#[test]
fn built_in_job_templates_by_status() {
    let m = mapper(CI);
    // (label, changes, 今日完成工作 first line, 未完成工作, 需协调工作)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, serde_json::Value)>,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "failure",
            vec![("status", "failure".into())],
            "❌ **CI / build** 失败 failure",
            Some("❌ CI / build 失败，待修复 needs a fix: https://ci.example.com/runs/812"),
            Some("请 @octocat 查看 please look into CI / build (main)"),
        ),
        (
            "cancelled",
            vec![("status", "cancelled".into())],
            "🚫 **CI / build** 已取消 cancelled",
            Some(
                "🚫 CI / build 已取消，待重新运行 needs a re-run: https://ci.example.com/runs/812",
            ),
            None,
        ),
        (
            "failure without actor, url or branch",
            vec![
                ("status", "failure".into()),
                ("actor", serde_json::Value::Null),
                ("url", serde_json::Value::Null),
                ("branch", serde_json::Value::Null),
            ],
            "❌ **CI / build** 失败 failure",
            Some("❌ CI / build 失败，待修复 needs a fix"),
            Some("请查看 please look into CI / build"),
        ),
        (
            "job only",
            vec![("pipeline", serde_json::Value::Null)],
            "✅ **build** 成功 success",
            None,
            None,
        ),
        (
            "same job and pipeline",
            vec![("pipeline", "build".into())],
            "✅ **build** 成功 success",
            None,
            None,
        ),
        (
            "skipped",
            vec![("status", "skipped".into())],
            "⏭️ **CI / build** 已跳过 skipped",
            None,
            None,
        ),
        (
            "unknown status kept and shown",
            vec![("status", "Flaky-Retry".into())],
            "❔ **CI / build** Flaky-Retry",
            None,
            None,
        ),
    ];
    for (label, changes, first, todo, help) in cases {
        let (draft, _) = report(&m, &job_with(&changes));
        let done = content(&draft, "今日完成工作").unwrap();
        assert_eq!(done.lines().next(), Some(&*format!("{first}  ")), "{label}");
        assert_eq!(content(&draft, "未完成工作"), todo, "{label}");
        assert_eq!(content(&draft, "需协调工作"), help, "{label}");
    }
}

#[test]
fn built_in_job_template_leaves_out_absent_lines() {
    let m = mapper(CI);
    let e = event(
        r#"{"type":"job_status","pipeline":"nightly","status":"success","commit":"abcdef0123"}"#,
    );
    let (draft, _) = report(&m, &e);
    assert_eq!(
        content(&draft, "今日完成工作").unwrap(),
        "✅ **nightly** 成功 success  \n提交 Commit: abcdef0"
    );
}

#[test]
fn filters() {
    // (label, extra route keys, event changes, Some(reason) when ignored)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, serde_json::Value)>,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        ("completed passes by default", "", vec![], None),
        (
            "running is in progress",
            "",
            vec![("status", "running".into())],
            Some("phase in_progress is not in routes.ci.events"),
        ),
        (
            "pending is queued",
            "",
            vec![("status", "pending".into())],
            Some("phase queued is not in routes.ci.events"),
        ),
        (
            "explicit phase wins",
            "",
            vec![("phase", "in_progress".into())],
            Some("phase in_progress is not in routes.ci.events"),
        ),
        (
            "in_progress allowed",
            "    events: [in_progress, completed]\n",
            vec![("status", "running".into())],
            None,
        ),
        (
            "status filter, case-insensitive",
            "    statuses: [Failure, cancelled]\n",
            vec![("status", "FAILURE".into())],
            None,
        ),
        (
            "status filtered out",
            "    statuses: [failure, cancelled]\n",
            vec![],
            Some(r#"status "success" is not in routes.ci.statuses"#),
        ),
        (
            "unknown status filtered by name",
            "    statuses: [flaky]\n",
            vec![("status", "Flaky".into())],
            None,
        ),
        (
            "branch glob matches",
            "    branches: [main, \"release/*\"]\n",
            vec![("branch", "release/1.2".into())],
            None,
        ),
        (
            "refs/heads/ stripped before matching",
            "    branches: [main]\n",
            vec![("branch", "refs/heads/main".into())],
            None,
        ),
        (
            "branch glob does not match",
            "    branches: [main, \"release/*\"]\n",
            vec![("branch", "feature/x".into())],
            Some(r#"branch "feature/x" does not match routes.ci.branches"#),
        ),
        (
            "missing branch does not match",
            "    branches: [\"*\"]\n",
            vec![("branch", serde_json::Value::Null)],
            Some(
                "the event has no branch, and routes.ci.branches only lets matching branches through",
            ),
        ),
    ];
    for (label, extra, changes, expected) in cases {
        let m = mapper(&route(extra));
        let got = m.map("ci", &job_with(&changes), now()).unwrap();
        match (expected, got) {
            (None, Mapped::Report { .. }) => {}
            (Some(want), Mapped::Ignored { reason, .. }) => assert_eq!(reason, want, "{label}"),
            (want, got) => panic!("{label}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn standups_pass_the_job_filters() {
    let m = mapper(&route(
        "    events: [queued]\n    statuses: [failure]\n    branches: [main]\n",
    ));
    let e = event(r#"{"type":"standup","userid":"dd9","done":"x"}"#);
    assert!(matches!(
        m.map("ci", &e, now()).unwrap(),
        Mapped::Report { .. }
    ));
}

#[test]
fn actor_author_mapping() {
    let m = mapper(
        r#"
  ci:
    source: generic
    template: {name: "日报", owner: "manager01"}
    author: actor
    to_userids: ["actor", "lead01"]
"#,
    );
    // (label, actor, actor_email, Ok(author) or Err(ignored reason))
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Result<&'a str, &'a str>,
    );
    let cases: &[Case<'_>] = &[
        ("login", Some("octocat"), None, Ok("dd_user_01")),
        ("login, other case", Some("OctoCat"), None, Ok("dd_user_01")),
        (
            "e-mail, case-insensitive",
            None,
            Some("alice@example.COM"),
            Ok("dd_alice"),
        ),
        (
            "unknown login, known e-mail",
            Some("al"),
            Some("Alice@Example.com"),
            Ok("dd_alice"),
        ),
        (
            "unmapped login",
            Some("hubot"),
            None,
            Err(
                r#"actor "hubot" has no DingTalk userid in users (needed by routes.ci.author: actor)"#,
            ),
        ),
        (
            "unmapped login and e-mail",
            Some("hubot"),
            Some("hubot@example.com"),
            Err(
                r#"actor "hubot" (hubot@example.com) has no DingTalk userid in users (needed by routes.ci.author: actor)"#,
            ),
        ),
        (
            "unmapped e-mail",
            None,
            Some("bot@example.com"),
            Err(
                r#"actor "bot@example.com" has no DingTalk userid in users (needed by routes.ci.author: actor)"#,
            ),
        ),
        (
            "no actor",
            None,
            None,
            Err("the event names no actor (needed by routes.ci.author: actor)"),
        ),
    ];
    for (label, actor, email, want) in cases {
        let e = job_with(&[
            ("actor", actor.map_or(serde_json::Value::Null, Into::into)),
            (
                "actor_email",
                email.map_or(serde_json::Value::Null, Into::into),
            ),
        ]);
        match (m.map("ci", &e, now()).unwrap(), want) {
            (Mapped::Report { draft, .. }, Ok(author)) => {
                assert_eq!(draft.author, *author, "{label}");
                assert_eq!(draft.to_userids, vec![*author, "lead01"], "{label}");
            }
            (Mapped::Ignored { reason, .. }, Err(want)) => assert_eq!(reason, *want, "{label}"),
            (got, want) => panic!("{label}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn unmapped_actor_is_skipped_among_receivers() {
    let m = mapper(CI);
    let (draft, _) = report(&m, &job_with(&[("actor", "hubot".into())]));
    assert_eq!(draft.to_userids, vec!["lead01", "dd_user_01", "dd_lead"]);
    let (draft, _) = report(&m, &job_with(&[("actor", "lead".into())]));
    assert_eq!(draft.to_userids, vec!["lead01", "dd_lead", "dd_user_01"]);
}

#[test]
fn variables_render_in_the_time_zone() {
    let fields = r#"    fields:
      今日完成工作: "{{ started_at }}|{{ finished_at }}|{{ date }}|{{ timezone }}|{{ duration_secs }}|{{ duration_human }}"
"#;
    // (label, timezone line, now, changes, expected)
    type Case<'a> = (
        &'a str,
        &'a str,
        DateTime<Utc>,
        Vec<(&'a str, serde_json::Value)>,
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        (
            "Asia/Shanghai is UTC+8",
            "",
            now(),
            vec![],
            "2026-11-24 16:00:00|2026-11-24 16:03:12|2026-11-24|Asia/Shanghai|192|3m12s",
        ),
        (
            "today rolls over at local midnight",
            "",
            Utc.with_ymd_and_hms(2026, 11, 24, 16, 30, 0).unwrap(),
            vec![],
            "2026-11-24 16:00:00|2026-11-24 16:03:12|2026-11-25|Asia/Shanghai|192|3m12s",
        ),
        (
            "UTC",
            "timezone: UTC\n",
            now(),
            vec![],
            "2026-11-24 08:00:00|2026-11-24 08:03:12|2026-11-24|UTC|192|3m12s",
        ),
        (
            "duration from the times",
            "",
            now(),
            vec![
                ("duration_secs", serde_json::Value::Null),
                ("finished_at", "2026-11-24T09:02:05Z".into()),
            ],
            "2026-11-24 16:00:00|2026-11-24 17:02:05|2026-11-24|Asia/Shanghai|3725|1h02m",
        ),
        (
            "absent values render empty",
            "",
            now(),
            vec![
                ("duration_secs", serde_json::Value::Null),
                ("started_at", serde_json::Value::Null),
                ("finished_at", serde_json::Value::Null),
            ],
            "||2026-11-24|Asia/Shanghai||",
        ),
    ];
    for (label, tz, at, changes, want) in cases {
        let s = Settings::from_yaml(&format!("{tz}{BASE}{}", route(fields))).unwrap();
        let m = Mapper::new(&s).unwrap();
        match m.map("ci", &job_with(changes), *at).unwrap() {
            Mapped::Report { draft, .. } => {
                assert_eq!(content(&draft, "今日完成工作"), Some(*want), "{label}");
            }
            other => panic!("{label}: {other:?}"),
        }
    }
}

#[test]
fn duration_human() {
    let cases = [
        (0, "0s"),
        (45, "45s"),
        (59, "59s"),
        (60, "1m00s"),
        (192, "3m12s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (3720, "1h02m"),
        (90_000, "25h00m"),
    ];
    for (secs, want) in cases {
        assert_eq!(vars::duration_human(secs), want, "{secs}");
    }
}

#[test]
fn every_variable_is_documented() {
    let m = mapper(CI);
    let documented: Vec<&str> = variables().iter().map(|(n, _)| *n).collect();
    let Event::JobStatus(mut job) = job_with(&[("actor_email", "a@example.com".into())]) else {
        panic!("not a job")
    };
    // Set by native sources only.
    job.status_raw = Some("timed_out".to_owned());
    job.source = Some("GitHub Actions".to_owned());
    let Event::Standup(standup) =
        event(r#"{"type":"standup","user":"u","done":["a"],"notes":"n"}"#)
    else {
        panic!("not a standup")
    };
    let mut seen: Vec<&str> = vars::job_status("ci", &job, Some("x"), m.tz, now())
        .into_keys()
        .chain(vars::standup("ci", &standup, Some("x"), m.tz, now()).into_keys())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    for name in &seen {
        assert!(documented.contains(name), "{name} is not in variables()");
    }
    for name in &documented {
        assert!(seen.contains(name), "{name} is documented but never set");
    }
}

#[test]
fn custom_templates() {
    // (label, template, event, expected content or None when left out)
    let spec = "{{ status_icon }} {{ pipeline }} {{ status }} on {{ branch }} ({{ commit_short }})\n{{ url }}";
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "the spec's example",
            spec,
            SPEC_JOB,
            Some("✅ CI success on main (9f2c1e7)  \nhttps://ci.example.com/runs/812"),
        ),
        (
            "if on an absent value",
            "{% if run_id %}#{{ run_id }}{% endif %}",
            SPEC_JOB,
            Some("#812"),
        ),
        (
            // `source` is absent for generic webhooks (an unknown name is a config error).
            "chainable undefined",
            "[{{ source.deeper }}]{{ project }}",
            SPEC_JOB,
            Some("[]acme/api"),
        ),
        (
            "no HTML escaping",
            "{{ commit_title }} <b>&",
            SPEC_JOB,
            Some("Fix flaky test <b>&"),
        ),
        (
            "standup lists with filters",
            "{{ done | bullets }}\n\n{{ todo | numbered }}\n{{ date }} {{ user }} {{ userid }}",
            r#"{"type":"standup","user":"octocat","done":["a","b"],"todo":["c","d"],"date":"2026-01-02"}"#,
            Some("• a  \n• b\n\n1. c  \n2. d  \n2026-01-02 octocat dd_user_01"),
        ),
        (
            "one template for both kinds",
            "{% if event_type == \"standup\" %}S {{ done | join(\", \") }}{% else %}J {{ status }}{% endif %}",
            r#"{"type":"standup","userid":"dd9","done":["a","b"]}"#,
            Some("S a, b"),
        ),
        (
            "blank lines collapsed",
            "a\n\n\n\nb   \nc",
            SPEC_JOB,
            Some("a\n\nb  \nc"),
        ),
    ];
    for (label, template, body, want) in cases {
        let yaml = route(&format!(
            "    fields:\n      今日完成工作: {}\n      未完成工作: \"x\"\n",
            serde_json::to_string(template).unwrap()
        ));
        let m = mapper(&yaml);
        let (draft, _) = report(&m, &event(body));
        assert_eq!(content(&draft, "今日完成工作"), *want, "{label}");
        assert_eq!(content(&draft, "未完成工作"), Some("x"), "{label}");
        assert_eq!(draft.contents.len(), if want.is_some() { 2 } else { 1 });
    }
}

#[test]
fn every_field_empty_is_ignored() {
    let m = mapper(&route(
        "    fields:\n      今日完成工作: \"{% if branch %}x{% endif %}\"\n      未完成工作: \"  \\n \"\n",
    ));
    let got = m
        .map(
            "ci",
            &job_with(&[("branch", serde_json::Value::Null)]),
            now(),
        )
        .unwrap();
    assert_eq!(
        got,
        Mapped::Ignored {
            reason: "every field rendered empty".to_owned(),
            kind: IgnoreKind::Empty,
        }
    );
}

#[test]
fn contents_follow_the_template_sort() {
    let m = mapper(
        r#"
  ci:
    source: generic
    template:
      id: "t1"
      fields: [{name: "需协调工作", sort: 0}, {name: "未完成工作", sort: 1}, {name: "今日完成工作", sort: 2}]
    author: "manager01"
"#,
    );
    let (draft, _) = report(&m, &job_with(&[("status", "failure".into())]));
    let order: Vec<&str> = draft.contents.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(order, vec!["需协调工作", "未完成工作", "今日完成工作"]);
}

#[test]
fn standup_defaults() {
    let m = mapper(
        r#"
  daily:
    source: generic
    template: {name: "日报", owner: "manager01"}
    author: actor
    to_userids: [lead]
"#,
    );
    // (label, body, author, 今日完成工作, 未完成工作, 需协调工作)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: &[Case<'_>] = &[
        (
            "the spec's example",
            r#"{"type":"standup","user":"octocat","date":"2026-11-24","done":["Shipped retries"],
               "todo":["Write docs"],"blockers":[],"notes":"Out Friday"}"#,
            "dd_user_01",
            Some("• Shipped retries"),
            Some("• Write docs"),
            Some("备注 Notes: Out Friday"),
        ),
        (
            "blockers then notes",
            r#"{"type":"standup","userid":"dd9","done":["a","b"],"blockers":["VPN","CI"],"notes":"n"}"#,
            "dd9",
            Some("• a  \n• b"),
            None,
            Some("• VPN  \n• CI\n\n备注 Notes: n"),
        ),
        (
            "userid wins over user",
            r#"{"type":"standup","user":"octocat","userid":"dd9","todo":"t"}"#,
            "dd9",
            None,
            Some("• t"),
            None,
        ),
        (
            "blockers only",
            r#"{"type":"standup","user":"ALICE@example.com","blockers":["x"]}"#,
            "dd_alice",
            None,
            None,
            Some("• x"),
        ),
    ];
    for (label, body, author, done, todo, help) in cases {
        let draft = match m.map("daily", &event(body), now()).unwrap() {
            Mapped::Report { draft, .. } => draft,
            other => panic!("{label}: {other:?}"),
        };
        assert_eq!(draft.author, *author, "{label}");
        assert_eq!(draft.to_userids, vec!["dd_lead"], "{label}");
        assert_eq!(content(&draft, "今日完成工作"), *done, "{label}");
        assert_eq!(content(&draft, "未完成工作"), *todo, "{label}");
        assert_eq!(content(&draft, "需协调工作"), *help, "{label}");
    }
    let unmapped = event(r#"{"type":"standup","user":"hubot","done":["a"]}"#);
    assert_eq!(
        m.map("daily", &unmapped, now()).unwrap(),
        Mapped::Ignored {
            reason: r#"user "hubot" has no DingTalk userid in users (needed by routes.daily.author: actor)"#
                .to_owned(),
            kind: IgnoreKind::UnknownActor,
        }
    );
}

#[test]
fn escape_markdown_makes_payload_text_inert() {
    // (value, escaped)
    let cases = [
        ("Fix flaky test", "Fix flaky test"),
        ("snake_case_name and fix #12", "snake_case_name and fix #12"),
        (
            "[重置密码](https://evil.example/login)",
            "\\[重置密码\\](https:\u{200b}//evil.example/login)",
        ),
        (
            "![x](http://t.example/p.gif)",
            "!\\[x\\](http:\u{200b}//t.example/p.gif)",
        ),
        ("# URGENT", "\\# URGENT"),
        ("> quoted", "\\> quoted"),
        ("- item", "\\- item"),
        ("1. first", "1\\. first"),
        (
            "**bold** _it_ `code` ~~x~~ <img src=x> a|b",
            "\\*\\*bold\\*\\* \\_it\\_ \\`code\\` \\~\\~x\\~\\~ \\<img src=x\\> a\\|b",
        ),
        (
            "Fix\n✅ **Deploy prod** 成功 success\r\n\n# done",
            "Fix ⏎ ✅ \\*\\*Deploy prod\\*\\* 成功 success ⏎ \\# done",
        ),
        ("back\\slash", "back\\\\slash"),
    ];
    for (value, escaped) in cases {
        assert_eq!(escape_markdown(value), escaped, "{value:?}");
    }
}

#[test]
fn payload_text_cannot_forge_the_report() {
    let m = mapper(CI);
    let job = job_with(&[
        (
            "commit_message",
            "[重置密码](https://evil.example/login) ![x](https://t.example/p.gif)\n# URGENT".into(),
        ),
        ("summary", "ok\n✅ **Deploy prod** 成功 success".into()),
        ("branch", "main\n## forged".into()),
        ("url", "javascript:alert(1)".into()),
    ]);
    let (draft, _) = report(&m, &job);
    let done = content(&draft, "今日完成工作").unwrap();
    // Only the template's own first line is bold; no payload value opens a line.
    for line in done.lines().skip(1) {
        let text = line.split_once(": ").map_or(line, |(_, v)| v);
        assert!(
            !line.starts_with(['#', '✅', '!', '[', '>', '-']),
            "{line:?} in {done}"
        );
        assert!(!text.contains("**") || text.contains("\\*\\*"), "{line:?}");
    }
    // Link and image syntax only appears escaped.
    assert!(!done.replace("\\](", "").contains("]("), "{done}");
    assert!(
        done.contains("\\[重置密码\\](https:\u{200b}//evil.example/login) !\\[x\\]"),
        "{done}"
    );
    assert!(!done.contains("javascript"), "{done}");
    assert!(
        done.contains("摘要 Summary: ok ⏎ ✅ \\*\\*Deploy prod\\*\\* 成功 success"),
        "{done}"
    );
    // A link is made only from an http(s) URL field.
    let linked = report(
        &m,
        &job_with(&[("url", "https://ci.example.com/runs/(1)".into())]),
    )
    .0;
    assert!(
        content(&linked, "今日完成工作")
            .unwrap()
            .ends_with("链接 Link: https://ci.example.com/runs/%281%29"),
        "{linked:?}"
    );
    // `| safe` opts a value out, as documented.
    let raw = mapper(&route(
        "    fields:\n      今日完成工作: \"{{ summary | safe }} / {{ summary }}\"\n",
    ));
    let (draft, _) = report(&raw, &job_with(&[("summary", "**bold**".into())]));
    assert_eq!(
        content(&draft, "今日完成工作"),
        Some("**bold** / \\*\\*bold\\*\\*")
    );
}

#[test]
fn a_standup_userid_not_in_users_is_refused_with_the_reason() {
    let m = mapper(&format!(
        "{}{}",
        r#"
  daily:
    source: generic
    template: {name: "日报", owner: "manager01"}
    author: actor
    to_userids: [actor]
"#,
        r#"
  fixed:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    to_userids: [actor, lead01]
  digest:
    source: generic
    template: {name: "日报", owner: "manager01"}
    author: actor
    digest: {schedule: "18:00", group_by: author}
"#
    ));
    let ceo = event(r#"{"type":"standup","userid":"the-ceo","done":["Approved the budget"]}"#);
    let reason = r#"userid "the-ceo" is neither a key nor a value of users; only people listed there can be named"#;
    for route in ["daily", "fixed"] {
        assert_eq!(
            m.map(route, &ceo, now()).unwrap(),
            Mapped::Ignored {
                reason: reason.to_owned(),
                kind: IgnoreKind::UnlistedUserid,
            },
            "{route}"
        );
    }
    assert_eq!(
        m.admit("digest", &ceo).unwrap(),
        Admitted::Ignored {
            reason: reason.to_owned(),
            kind: IgnoreKind::UnlistedUserid,
        }
    );
    // A key of users, in any case, stands for its userid; a value stands for itself.
    for (userid, author) in [("carol", "dd9"), ("CAROL", "dd9"), ("dd_lead", "dd_lead")] {
        let body = format!(r#"{{"type":"standup","userid":"{userid}","done":["a"]}}"#);
        let Mapped::Report { draft, .. } = m.map("daily", &event(&body), now()).unwrap() else {
            panic!("{userid}: not a report");
        };
        assert_eq!(draft.author, author, "{userid}");
        assert_eq!(draft.to_userids, vec![author], "{userid}");
    }
    // A job's actor may be a userid of users too.
    let Mapped::Report { draft, .. } = m
        .map("daily", &job_with(&[("actor", "dd_alice".into())]), now())
        .unwrap()
    else {
        panic!("not a report");
    };
    assert_eq!(draft.author, "dd_alice");
}

#[test]
fn new_reports_template_and_glob_problems_by_key_path() {
    // (label, extra route keys, issue path, message start)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "syntax error",
            "    fields:\n      今日完成工作: \"{{ status \"\n",
            "routes.ci.fields.今日完成工作",
            "syntax error: ",
        ),
        (
            "unclosed block",
            "    fields:\n      未完成工作: \"{% if branch %}x\"\n",
            "routes.ci.fields.未完成工作",
            "syntax error: ",
        ),
        (
            "unknown filter",
            "    fields:\n      今日完成工作: \"{{ done | bulets }}\"\n",
            "routes.ci.fields.今日完成工作",
            "unknown filter",
        ),
        (
            "bad glob",
            "    branches: [main, \"[\"]\n",
            "routes.ci.branches[1]",
            "\"[\" is not a valid glob",
        ),
    ];
    for (label, extra, path, start) in cases {
        let issues = Mapper::new(&settings(&route(extra))).expect_err(label);
        assert_eq!(issues.len(), 1, "{label}: {issues:?}");
        assert_eq!(issues[0].path, *path, "{label}");
        assert!(
            issues[0].message.starts_with(start),
            "{label}: {}",
            issues[0]
        );
        assert!(
            issues[0]
                .to_string()
                .starts_with(&format!("{path}: {start}"))
        );
    }
}

#[test]
fn render_failures_and_unknown_routes_are_errors() {
    let m = mapper(&route(
        "    fields:\n      今日完成工作: \"{{ summary + 1 }}\"\n",
    ));
    match m.map("ci", &event(SPEC_JOB), now()) {
        Err(MappingError::Render {
            route,
            field,
            message,
        }) => {
            assert_eq!((route.as_str(), field.as_str()), ("ci", "今日完成工作"));
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        m.map("nope", &event(SPEC_JOB), now()),
        Err(MappingError::UnknownRoute("nope".to_owned()))
    );
}

#[test]
fn truncate_counts_utf16_units() {
    let marker = content_len(TRUNCATION_MARKER);
    // (label, input, cut, units kept before the marker)
    let cases: Vec<(&str, String, bool)> = vec![
        ("short", "abc".to_owned(), false),
        ("exactly 1000", "a".repeat(1000), false),
        ("1001", "a".repeat(1001), true),
        ("1000 Chinese", "中".repeat(1000), false),
        ("1001 Chinese", "中".repeat(1001), true),
        // An emoji outside the BMP is two UTF-16 units: 500 fit, 501 do not.
        ("500 emoji", "😀".repeat(500), false),
        ("501 emoji", "😀".repeat(501), true),
        ("mixed", "a中😀".repeat(300), true),
    ];
    for (label, input, want_cut) in cases {
        let (out, cut) = truncate(&input);
        assert_eq!(cut, want_cut, "{label}");
        assert!(content_len(&out) <= MAX_CONTENT_CHARS, "{label}");
        assert!(out.chars().count() <= MAX_CONTENT_CHARS, "{label}");
        if want_cut {
            assert!(out.ends_with(TRUNCATION_MARKER), "{label}");
            let kept = out.strip_suffix(TRUNCATION_MARKER).unwrap();
            assert!(input.starts_with(kept), "{label}");
            // Nothing more of the input would have fitted.
            let next = input[kept.len()..].chars().next().unwrap();
            assert!(
                content_len(kept) + next.len_utf16() + marker > MAX_CONTENT_CHARS,
                "{label}"
            );
        } else {
            assert_eq!(out, input, "{label}");
        }
    }
    // Trailing blanks before the cut are dropped, so the result may be shorter.
    let spaced = format!(
        "{} {}",
        "a".repeat(MAX_CONTENT_CHARS - marker - 1),
        "b".repeat(50)
    );
    let (out, cut) = truncate(&spaced);
    assert!(cut);
    assert_eq!(
        out,
        format!(
            "{}{TRUNCATION_MARKER}",
            "a".repeat(MAX_CONTENT_CHARS - marker - 1)
        )
    );
}

#[test]
fn truncate_never_splits_a_grapheme_or_a_link() {
    let marker = content_len(TRUNCATION_MARKER);
    let budget = MAX_CONTENT_CHARS - marker;
    // (label, the cluster or link placed across the cut)
    let clusters = [
        ("family emoji", "👨\u{200d}👩\u{200d}👧\u{200d}👦"),
        ("flag", "🇨🇳"),
        ("combining mark", "e\u{301}\u{302}"),
        ("skin tone", "👍🏽"),
        ("link", "[构建 #812](https://ci.example.com/runs/812)"),
        ("image", "![badge](https://ci.example.com/badge.svg?x=(1))"),
    ];
    for (label, piece) in clusters {
        // Start the piece one unit before the budget runs out, so a naive cut splits it.
        let input = format!("{}{piece}{}", "a".repeat(budget - 1), "z".repeat(100));
        let (out, cut) = truncate(&input);
        assert!(cut, "{label}");
        assert!(content_len(&out) <= MAX_CONTENT_CHARS, "{label}");
        let kept = out.strip_suffix(TRUNCATION_MARKER).unwrap();
        assert_eq!(
            kept,
            "a".repeat(budget - 1),
            "{label}: the piece is dropped whole"
        );
    }
    // A link that fits whole is kept.
    let link = "[run](https://x.example/1)";
    let input = format!("{}{link}{}", "a".repeat(100), "z".repeat(2000));
    let (out, _) = truncate(&input);
    assert!(out.contains(link));
}

#[test]
fn long_contents_are_cut_and_reported() {
    let m = mapper(&route(
        "    fields:\n      今日完成工作: \"{{ summary }}\"\n      未完成工作: \"ok\"\n",
    ));
    let (draft, truncated) = report(&m, &job_with(&[("summary", "测".repeat(1500).into())]));
    assert_eq!(truncated, vec!["今日完成工作"]);
    let done = content(&draft, "今日完成工作").unwrap();
    assert_eq!(content_len(done), MAX_CONTENT_CHARS);
    assert!(done.ends_with(TRUNCATION_MARKER));
    assert_eq!(content(&draft, "未完成工作"), Some("ok"));
}

#[test]
fn built_in_templates_fill_the_standard_fields() {
    for set in [defaults::JOB_STATUS, defaults::STANDUP] {
        let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, STANDARD_FIELDS);
        for (_, source) in set {
            assert!(
                !source.contains("\n- ") && !source.starts_with("- "),
                "{source}"
            );
            assert!(
                !source.contains("\n>") && !source.starts_with('>'),
                "{source}"
            );
        }
    }
}
mod digest;

#[test]
fn an_undocumented_template_variable_is_an_error_with_the_closest_name() {
    let routes = route(concat!(
        "    fields:\n",
        "      今日完成工作: \"{{ commit_sha }} {{ workflow_run.name }} {{ statuss }} {% for line in done %}{{ line.text }}{% endfor %} {{ range(3) | length }}\"\n",
        "      未完成工作: \"{{ status_icon }} {{ project }}\"\n",
    ));
    let issues = Mapper::new(&settings(&routes)).expect_err("undocumented variables");
    let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "routes.ci.fields.今日完成工作: unknown variable `commit_sha`: it is not one of the documented variables, so it would always be empty (closest documented variable: `commit`)",
            "routes.ci.fields.今日完成工作: unknown variable `statuss`: it is not one of the documented variables, so it would always be empty (closest documented variable: `status`)",
            "routes.ci.fields.今日完成工作: unknown variable `workflow_run.name`: it is not one of the documented variables, so it would always be empty (closest documented variable: `pipeline`)",
        ],
        "loop variables and functions are not reported"
    );
}

#[test]
fn a_digest_route_is_checked_against_the_digest_variables() {
    let documented_job_variable = "{{ commit_short }}";
    let routes = format!(
        "  daily:\n    source: generic\n    template: {{name: \"日报\"}}\n    author: \"manager01\"\n    digest: {{schedule: \"18:00\", group_by: route}}\n    fields:\n      今日完成工作: \"{documented_job_variable}\"\n"
    );
    let issues = Mapper::new(&settings(&routes)).expect_err("not a digest variable");
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].path == "routes.daily.fields.今日完成工作"
            && issues[0].message.contains("`commit_short`"),
        "{issues:?}"
    );
    // Every digest variable is accepted.
    let all: String = digest_variables()
        .iter()
        .map(|(name, _)| format!("{{{{ {name} }}}}"))
        .collect();
    let routes = routes.replace(documented_job_variable, &all);
    Mapper::new(&settings(&routes)).unwrap_or_else(|e| panic!("{e:?}"));
}
