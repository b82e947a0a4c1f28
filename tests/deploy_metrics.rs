//! The deployment artefacts only use metrics the relay really exports: every `dingtalk_relay_*`
//! name in `deploy/grafana/dashboard.json` and `deploy/prometheus/alerts.yaml` must be a metric
//! family (a `# TYPE` line) of a real `/metrics` scrape taken after delivered, failed and
//! truncated deliveries. Histogram series (`_bucket`, `_sum`, `_count`) count as their family.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use dingtalk_relay::config::{Mode, Settings};
use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions, Fault};
use dingtalk_relay::startup::Application;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "deploy-metrics-secret";

fn settings_yaml(base_url: &str, options: &FakeOptions) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
dingtalk:
  base_url: "{base_url}"
  timeout: 2s
  max_qps: 20
  apps:
    default:
      app_key: "{app_key}"
      app_secret: "{app_secret}"
store:
  url: "memory:"
delivery:
  max_attempts: 2
  initial_backoff: 20ms
  max_backoff: 50ms
  dedup_window: 1h
  concurrency: 4
  lease: 10s
routes:
  ci:
    source: generic
    secret: "{SECRET}"
    template: {{name: "日报"}}
    author: "manager01"
    to_userids: ["lead01"]
  daily:
    source: generic
    secret: "{SECRET}"
    template: {{name: "日报"}}
    author: "manager01"
    digest: {{schedule: "18:00", group_by: route}}
"#,
        app_key = options.app_key,
        app_secret = options.app_secret,
    )
}

fn job(n: usize) -> Value {
    json!({"type": "job_status", "job": "build", "status": "failure", "project": "acme/api",
        "pipeline": "CI", "run_id": n.to_string(), "branch": "main", "commit": "9f2c1e7",
        "summary": format!("run {n}")})
}

/// Family name → type, from the `# TYPE` lines of a scrape.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// Every `dingtalk_relay_…` identifier in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("dingtalk_relay_") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The family a referenced series belongs to, or why it does not belong to any.
fn family_of(name: &str, families: &BTreeMap<String, String>) -> Result<String, String> {
    if families.contains_key(name) {
        return Ok(name.to_owned());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(kind) = families.get(base)
        {
            return if kind == "histogram" || (kind == "summary" && suffix != "_bucket") {
                Ok(base.to_owned())
            } else {
                Err(format!(
                    "{name}: {base} is a {kind}, it has no {suffix} series"
                ))
            };
        }
    }
    Err(format!("{name}: no such metric family in /metrics"))
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let options = FakeOptions::default();
    let (fake, base_url) = FakeDingTalk::spawn(options.clone())
        .await
        .expect("fake DingTalk starts");
    let settings =
        Settings::from_yaml(&settings_yaml(&base_url, &options)).expect("test settings parse");
    let app = Application::build(settings, Mode::Production)
        .await
        .expect("app builds");
    let state = app.state().clone();
    let hooks = format!("http://127.0.0.1:{}/v1/hooks", app.port());
    let admin = format!("http://127.0.0.1:{}", app.admin_port());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(cancel.clone()));
    let http = reqwest::Client::new();

    // Two permanent errors (errcode series), then a delivered report with a long content
    // (truncation, delivery latency), plus an unknown route and a bad secret.
    fake.push_create_fault(Fault::Wrapped("60011".to_owned()));
    fake.push_create_fault(Fault::Errcode(90020));
    let mut long = job(3);
    long["summary"] = json!("x".repeat(2000));
    for (route, body, secret) in [
        ("ci", job(1), SECRET),
        ("ci", job(2), SECRET),
        ("ci", long, SECRET),
        ("nope", job(4), SECRET),
        ("ci", job(5), "wrong"),
    ] {
        http.post(format!("{hooks}/{route}"))
            .bearer_auth(secret)
            .json(&body)
            .send()
            .await
            .expect("webhook sent");
    }

    // A digest made (the digest series), with nothing in it to send.
    let settings = state.settings();
    let at = dingtalk_relay::digest::schedule_of(&settings, &settings.routes["daily"])
        .and_then(|s| s.next_after(chrono::Utc::now()))
        .expect("daily has a schedule");
    let made = dingtalk_relay::digest::make_due(&state, at).await;
    assert_eq!(made.len(), 1, "{made:?}");

    // Wait until every accepted delivery is settled: 60011 failed, 90020 deferred (the quota
    // pause keeps it queued), 1 delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        let scrape = http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("scrape body");
        let settled = scrape.contains("dingtalk_relay_queue_depth 1")
            && scrape.contains(r#"dingtalk_relay_deliveries_total{outcome="failed",route="ci"} 1"#)
            && scrape
                .contains(r#"dingtalk_relay_deliveries_total{outcome="deferred",route="ci"} 1"#)
            && scrape
                .contains(r#"dingtalk_relay_deliveries_total{outcome="delivered",route="ci"} 1"#);
        if settled {
            break scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never settled:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    cancel.cancel();
    server.await.expect("server task").expect("clean stop");

    let families = families(&scrape);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut problems = Vec::new();
    for file in ["grafana/dashboard.json", "prometheus/alerts.yaml"] {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("reading deploy/{file}: {e}"));
        if file.ends_with(".json") {
            serde_json::from_str::<Value>(&text).expect("dashboard.json is valid JSON");
        }
        let names = referenced(&text);
        assert!(
            names.len() >= 5,
            "deploy/{file} references only {names:?}: wrong file?"
        );
        for name in names {
            if let Err(problem) = family_of(&name, &families) {
                problems.push(format!("deploy/{file}: {problem}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nfamilies exported: {:?}",
        problems.join("\n"),
        families.keys().collect::<Vec<_>>()
    );
}

#[test]
fn histogram_series_resolve_to_their_family() {
    let families = families(
        "# TYPE dingtalk_relay_a_seconds histogram\n# TYPE dingtalk_relay_b_total counter\n",
    );
    assert_eq!(
        family_of("dingtalk_relay_a_seconds_bucket", &families),
        Ok("dingtalk_relay_a_seconds".to_owned())
    );
    assert!(family_of("dingtalk_relay_b_total_bucket", &families).is_err());
    assert!(family_of("dingtalk_relay_c", &families).is_err());
    assert_eq!(
        referenced("rate(dingtalk_relay_b_total{x=\"y\"}[5m]) / xdingtalk_relay_no"),
        BTreeSet::from(["dingtalk_relay_b_total".to_owned()])
    );
}
