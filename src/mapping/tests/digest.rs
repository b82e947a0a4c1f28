//! Unit tests of digests: folding, ordering, merging standups, the 1000-character fit and
//! admission at intake.

use super::*;

/// A digest route `daily` grouped by `group_by`, with extra keys. By author it writes as the
/// actor and copies them; otherwise it has a fixed author.
fn daily(group_by: &str, extra: &str) -> String {
    let (author, to) = if group_by == "author" {
        ("actor", r#"["lead", "actor"]"#)
    } else {
        ("manager01", r#"["lead"]"#)
    };
    format!(
        r#"
  daily:
    source: generic
    template: {{name: "日报"}}
    author: "{author}"
    to_userids: {to}
    digest: {{schedule: "18:00", group_by: {group_by}, max_lines: 20}}
{extra}"#
    )
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 1, minute, 0).unwrap()
}

fn run(pipeline: &str, status: &str, branch: &str, minute: u32) -> (DateTime<Utc>, Event) {
    (
        at(minute),
        job_with(&[
            ("pipeline", serde_json::json!(pipeline)),
            ("job", serde_json::Value::Null),
            ("status", serde_json::json!(status)),
            ("branch", serde_json::json!(branch)),
            (
                "url",
                serde_json::json!(format!("https://ci.example.com/{pipeline}/{minute}")),
            ),
        ]),
    )
}

fn standup(json: &str, minute: u32) -> (DateTime<Utc>, Event) {
    (at(minute), event(json))
}

fn make(m: &Mapper, group: &str, events: &[(DateTime<Utc>, Event)]) -> DigestReport {
    let refs: Vec<(DateTime<Utc>, &Event)> = events.iter().map(|(t, e)| (*t, e)).collect();
    let end = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
    m.digest("daily", group, &refs, None, end)
        .unwrap()
        .expect("a report")
}

#[test]
fn counts_latest_result_per_pipeline_and_failures_first() {
    let m = mapper(&daily("route", ""));
    let events = vec![
        run("deploy", "failure", "main", 1),
        run("build", "success", "main", 2),
        run("deploy", "success", "main", 3),
        run("lint", "failure", "main", 4),
        run("build", "success", "dev", 5),
        run("e2e", "cancelled", "main", 6),
    ];
    let report = make(&m, "daily", &events);
    assert_eq!(report.events, 6);
    assert_eq!(report.summarised, 0);
    let done = content(&report.draft, "今日完成工作").unwrap();
    assert!(
        done.contains("6 次运行 runs · ✅ 3 · ❌ 2 · 🚫 1"),
        "{done}"
    );
    let lines: Vec<&str> = done.lines().collect();
    // One line per pipeline + branch, with its latest result: deploy recovered.
    let pipeline_lines: Vec<&&str> = lines.iter().filter(|l| l.contains("https://")).collect();
    assert_eq!(pipeline_lines.len(), 5, "{done}");
    assert!(
        pipeline_lines[0].starts_with("❌") && pipeline_lines[0].contains("lint"),
        "{done}"
    );
    assert!(
        pipeline_lines[1].starts_with("🚫") && pipeline_lines[1].contains("e2e"),
        "{done}"
    );
    assert!(
        pipeline_lines[2..].iter().all(|l| l.starts_with("✅")),
        "{done}"
    );
    let deploy = pipeline_lines
        .iter()
        .find(|l| l.contains("deploy"))
        .unwrap();
    assert!(
        deploy.contains("2 次 runs") && deploy.contains("deploy/3"),
        "{deploy}"
    );
    // The failure that needs attention, with its link; the recovered deploy does not.
    let todo = content(&report.draft, "未完成工作").unwrap();
    assert!(
        todo.contains("lint") && todo.contains("https://ci.example.com/lint/4"),
        "{todo}"
    );
    assert!(!todo.contains("deploy"), "{todo}");
    let help = content(&report.draft, "需协调工作").unwrap();
    assert!(help.contains("@octocat") && help.contains("lint"), "{help}");
    assert_eq!(report.draft.author, "manager01");
    assert_eq!(report.draft.to_userids, vec!["dd_lead"]);
}

#[test]
fn standups_merge_per_person_with_job_results() {
    let m = mapper(&daily("author", ""));
    let events = vec![
        standup(
            r#"{"type":"standup","user":"octocat","done":["API review","fix #12"],"todo":["deploy"],"notes":"first"}"#,
            1,
        ),
        run("build", "failure", "main", 2),
        standup(
            r#"{"type":"standup","user":"octocat","done":["fix #12","write docs"],"blockers":["waiting on DBA"],"notes":"latest"}"#,
            3,
        ),
    ];
    let report = make(&m, "dd_user_01", &events);
    assert_eq!(report.draft.author, "dd_user_01");
    assert_eq!(report.draft.to_userids, vec!["dd_lead", "dd_user_01"]);
    let done = content(&report.draft, "今日完成工作").unwrap();
    assert!(done.contains("1 次运行 runs"), "{done}");
    // Merged lists without repeats, in the order first said.
    let items: Vec<&str> = done.lines().filter(|l| l.starts_with("• ")).collect();
    assert_eq!(
        items,
        vec!["• API review  ", "• fix #12  ", "• write docs"],
        "{done}"
    );
    let todo = content(&report.draft, "未完成工作").unwrap();
    assert!(
        todo.contains("build") && todo.contains("• deploy"),
        "{todo}"
    );
    let help = content(&report.draft, "需协调工作").unwrap();
    assert!(help.contains("• waiting on DBA"), "{help}");
    assert!(
        help.contains("备注 Notes: latest") && !help.contains("first"),
        "{help}"
    );
}

#[test]
fn max_lines_summarises_the_rest() {
    let m = mapper(&daily("route", "").replace("max_lines: 20", "max_lines: 5"));
    let mut events = vec![run("broken", "failure", "main", 0)];
    for i in 0..30 {
        events.push(run(&format!("svc-{i:02}"), "success", "main", 1));
    }
    let report = make(&m, "daily", &events);
    assert_eq!(report.summarised, 26);
    let done = content(&report.draft, "今日完成工作").unwrap();
    assert_eq!(
        done.lines().filter(|l| l.contains("https://")).count(),
        5,
        "{done}"
    );
    assert!(
        done.lines().nth(2).unwrap().contains("broken"),
        "failure first: {done}"
    );
    assert!(
        done.contains("…还有 26 条流水线 and 26 more pipelines (all passed)"),
        "{done}"
    );
}

#[test]
fn overflow_fits_the_limit_without_cutting_a_line() {
    let m = mapper(&daily("route", "").replace("max_lines: 20", "max_lines: 1000"));
    let mut events = Vec::new();
    for i in 0..200u32 {
        let status = match i % 10 {
            0 => "failure",
            1 => "cancelled",
            _ => "success",
        };
        events.push(run(
            &format!("a-rather-long-pipeline-name-number-{i:03}"),
            status,
            "main",
            i % 60,
        ));
    }
    let report = make(&m, "daily", &events);
    assert!(report.summarised > 0);
    for c in &report.draft.contents {
        assert!(
            c.content.chars().count() <= MAX_CONTENT_CHARS,
            "{}: {} chars",
            c.field,
            c.content.chars().count()
        );
        assert!(!c.content.contains(TRUNCATION_MARKER), "{}", c.content);
        // Every pipeline line shown is whole: it ends with its link.
        for line in c
            .content
            .lines()
            .filter(|l| l.contains("pipeline-name") && !l.starts_with("请"))
        {
            let line = line.trim_end();
            assert!(
                line.rsplit(' ')
                    .next()
                    .unwrap()
                    .starts_with("https://ci.example.com/"),
                "cut line: {line:?}"
            );
        }
    }
    let done = content(&report.draft, "今日完成工作").unwrap();
    let hidden = report.summarised;
    assert!(
        done.contains(&format!(
            "…还有 {hidden} 条流水线 and {hidden} more pipelines ("
        )),
        "{done}"
    );
    assert!(
        done.contains("200 次运行 runs · ✅ 160 · ❌ 20 · 🚫 20"),
        "{done}"
    );
    // Failures come first, so the hidden ones are mostly successes and the failures show.
    assert!(done.lines().nth(2).unwrap().starts_with("❌"), "{done}");
}

#[test]
fn long_standups_lose_whole_lines_only() {
    let m = mapper(&daily("author", ""));
    let items: Vec<String> = (0..80)
        .map(|i| format!("完成了第 {i} 项相当长的工作内容描述 item {i}"))
        .collect();
    let json = serde_json::json!({"type": "standup", "user": "octocat", "done": items}).to_string();
    let report = make(&m, "dd_user_01", &[standup(&json, 1)]);
    let done = content(&report.draft, "今日完成工作").unwrap();
    assert!(
        done.chars().count() <= MAX_CONTENT_CHARS,
        "{}",
        done.chars().count()
    );
    assert_eq!(report.cut, vec!["今日完成工作".to_owned()]);
    let last = done.lines().last().unwrap();
    assert!(
        last.starts_with("…还有 ") && last.ends_with(" more lines"),
        "{last}"
    );
    for line in done.lines().filter(|l| l.starts_with("• ")) {
        let item = line.trim_start_matches("• ").trim_end();
        assert!(items.iter().any(|i| i == item), "cut item: {line:?}");
    }
}

#[test]
fn digest_fields_can_be_overridden() {
    let m = mapper(&daily(
        "project",
        "    fields:\n      今日完成工作: \"{{ group }}: {{ runs }} runs, {{ failed }} failed\\n{% for p in pipelines %}{{ p.name }}={{ p.status }}\\n{% endfor %}\"\n",
    ));
    let events = vec![
        run("build", "failure", "main", 1),
        run("test", "success", "main", 2),
    ];
    let report = make(&m, "acme/api", &events);
    assert_eq!(report.draft.contents.len(), 1);
    assert_eq!(
        report.draft.contents[0].content,
        "acme/api: 2 runs, 1 failed  \nbuild=failure  \ntest=success"
    );
}

#[test]
fn digest_templates_are_checked_at_startup() {
    let routes = daily(
        "route",
        "    fields:\n      今日完成工作: \"{{ pipelines | no_such_filter }}\"\n",
    );
    let issues = Mapper::new(&settings(&routes)).unwrap_err();
    assert!(
        issues
            .iter()
            .any(|i| i.path == "routes.daily.fields.今日完成工作"
                && i.message.contains("no_such_filter")),
        "{issues:?}"
    );
}

#[test]
fn admission_applies_filters_and_groups() {
    let m = mapper(&daily("author", ""));
    let running = job_with(&[("status", serde_json::json!("running"))]);
    assert!(matches!(
        m.admit("daily", &running).unwrap(),
        Admitted::Ignored { reason, .. } if reason.contains("phase in_progress")
    ));
    assert_eq!(
        m.admit("daily", &event(SPEC_JOB)).unwrap(),
        Admitted::Digest {
            group: "dd_user_01".to_owned()
        }
    );
    let stranger = job_with(&[("actor", serde_json::json!("stranger"))]);
    assert!(matches!(
        m.admit("daily", &stranger).unwrap(),
        Admitted::Ignored { reason, .. } if reason.contains("stranger")
    ));
    let by_project = mapper(&daily("project", ""));
    assert_eq!(
        by_project.admit("daily", &event(SPEC_JOB)).unwrap(),
        Admitted::Digest {
            group: "acme/api".to_owned()
        }
    );
    let by_route = mapper(&daily("route", ""));
    assert_eq!(
        by_route.admit("daily", &stranger).unwrap(),
        Admitted::Digest {
            group: "daily".to_owned()
        },
        "a route digest needs no userid for the actor"
    );
}

#[test]
fn an_empty_period_says_so() {
    let m = mapper(&daily("route", ""));
    let end = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
    let report = m
        .digest(
            "daily",
            "daily",
            &[],
            Some(end - chrono::Duration::days(1)),
            end,
        )
        .unwrap()
        .expect("the built-in template says nothing happened");
    let done = content(&report.draft, "今日完成工作").unwrap();
    assert!(
        done.contains("本期没有 CI 运行 No CI runs in this period"),
        "{done}"
    );
    assert!(
        done.contains("2026-11-23 18:00 – 2026-11-24 18:00"),
        "Shanghai time: {done}"
    );
}
