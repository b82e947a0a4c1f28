//! Storage faults (issue 13): a store whose writes fail answers every webhook of the failed
//! group with an error, never "queued", and the next group starts clean. Faults are made
//! deterministically: SQLite's `max_page_count` on the writer connection (SQLITE_FULL as on a
//! full disk), a database file deleted under the running relay, and on PostgreSQL a backend
//! terminated mid group and a statement that errors.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dingtalk_relay::config::TemplateSettings;
use dingtalk_relay::mapping::{DraftContent, ReportDraft};
use dingtalk_relay::metrics::Metrics;
use dingtalk_relay::store::{Enqueued, Error, NewDelivery, Observed, SqliteStore, State, Store};

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use dingtalk_relay::sources::{Event, JobStatus, Phase, Standup, Status};
use serde_json::Value;

use crate::helpers::{
    ID_TEMPLATE, ROUTE_SECRET, TestApp, TestConfig, fresh_postgres_database, job_status_n,
    metric_value, poll_until, settings_yaml, spawn_app_from_yaml,
};

const WINDOW: Duration = Duration::from_secs(3600);
const ROOMY: u64 = 1_000_000;

/// A draft of about `size` bytes, so that a few dozen fill a page-capped file.
fn big_draft(size: usize) -> ReportDraft {
    ReportDraft {
        app: "default".to_owned(),
        template: TemplateSettings {
            name: Some("日报".to_owned()),
            id: None,
            fields: None,
            owner: None,
        },
        author: "manager01".to_owned(),
        to_userids: vec!["user01".to_owned()],
        to_cids: Vec::new(),
        to_chat: false,
        dd_from: "dingtalk-relay".to_owned(),
        contents: vec![DraftContent {
            field: "今日完成工作".to_owned(),
            content: "x".repeat(size),
        }],
    }
}

fn delivery(n: usize) -> NewDelivery {
    let id = format!("{n:08}-{}", uuid::Uuid::now_v7());
    NewDelivery {
        dedup_key: format!("key-{id}"),
        body_key: None,
        id,
        route: "ci".to_owned(),
        draft: big_draft(3000),
        received_at: Utc::now(),
    }
}

/// Enqueues `count` deliveries concurrently; returns the ids answered queued and how many got
/// an error. Anything else (a duplicate, a panic) fails the test.
async fn intake(store: &Arc<dyn Store>, from: usize, count: usize) -> (Vec<String>, usize) {
    let tasks: Vec<_> = (from..from + count)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.enqueue(delivery(n), WINDOW, ROOMY).await })
        })
        .collect();
    let mut queued = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("enqueue task") {
            Ok(Enqueued::Queued(id)) => queued.push(id),
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(Error::Unavailable(_)) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    (queued, refused)
}

/// Every id answered queued can be read back by another connection (so it was committed).
async fn assert_committed(store: &Arc<dyn Store>, ids: &[String]) {
    let mut missing = Vec::new();
    for id in ids {
        if store.get(id).await.expect("get").is_none() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} deliveries answered queued were not committed (first: {:?})",
        missing.len(),
        ids.len(),
        missing.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_full_mid_intake_answers_no_queued_without_a_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.db");
    let sqlite = Arc::new(
        SqliteStore::open(path.to_str().unwrap())
            .await
            .expect("open"),
    );
    let store: Arc<dyn Store> = sqlite.clone();
    let (before, refused) = intake(&store, 0, 20).await;
    assert_eq!((before.len(), refused), (20, 0));

    // Room for a few more groups' worth of rows, then SQLITE_FULL in the middle of intake.
    let pages = sqlite.page_count().await.expect("page count");
    sqlite.limit_pages(Some(pages + 20)).await.expect("limit");
    let mut accepted = before.clone();
    let mut refusals = 0;
    for round in 0..6 {
        let (queued, refused) = intake(&store, 1000 * (round + 1), 60).await;
        accepted.extend(queued);
        refusals += refused;
    }
    assert!(refusals > 0, "the page cap never made a write fail");
    assert_committed(&store, &accepted).await;

    // Space is back: intake resumes by itself, and what it answers queued is committed.
    sqlite.limit_pages(None).await.expect("unlimit");
    let (after, refused) = intake(&store, 100_000, 60).await;
    assert_eq!(refused, 0, "intake did not resume once space was back");
    assert_committed(&store, &after).await;
    accepted.extend(after);

    // After a restart every accepted delivery is still there, once.
    drop(store);
    drop(sqlite);
    let reopened = reopen(path.to_str().unwrap()).await;
    assert_committed(&reopened, &accepted).await;
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len());
    let depth = reopened.stats().await.expect("stats").depth;
    assert_eq!(
        depth,
        accepted.len() as u64,
        "stored rows differ from the accepted ones"
    );
}

/// Opens the store at `path` again once the previous one let go of it.
async fn reopen(path: &str) -> Arc<dyn Store> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match SqliteStore::open(path).await {
            Ok(store) => return Arc::new(store),
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "reopen failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A small tmpfs mounted for one test, unmounted on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a `size` tmpfs (e.g. `3m`), or `None` with a visible line when not root.
    #[allow(clippy::print_stderr, reason = "the skip has to be visible")]
    pub fn mount(size: &str, what: &str) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            eprintln!("skipped: {what} needs root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs failed");
        Some(Self { dir })
    }

    /// Gives the filesystem `size` (space freed).
    pub fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The disk itself full (root only): SQLite fails the COMMIT with SQLITE_FULL and rolls the
/// transaction back by itself — the case that used to leave the writer "committing" into a
/// transaction that never ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_on_a_full_disk_answers_no_queued_without_a_commit() {
    let Some(tmpfs) = Tmpfs::mount("3m", "the full-disk store test") else {
        return;
    };
    let path = tmpfs.dir.path().join("relay.db");
    let path = path.to_str().unwrap().to_owned();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.expect("open"));
    let mut accepted = Vec::new();
    let mut refusals = 0;
    for round in 0..12 {
        let (queued, refused) = intake(&store, 1000 * (round + 1), 60).await;
        accepted.extend(queued);
        refusals += refused;
    }
    assert!(refusals > 0, "3 MB never filled up");
    assert_committed(&store, &accepted).await;
    tmpfs.resize("16m");
    let (after, refused) = intake(&store, 100_000, 60).await;
    assert_eq!(refused, 0, "intake did not resume once space was back");
    assert_committed(&store, &after).await;
    accepted.extend(after);
    drop(store);
    let reopened = reopen(&path).await;
    assert_committed(&reopened, &accepted).await;
    let depth = reopened.stats().await.expect("stats").depth;
    assert_eq!(depth, accepted.len() as u64);
}

/// Failed writes are counted and make the store say why it is not ready; once space is back
/// the probe finds out by itself (no webhook needed) and the problem clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_writes_are_counted_and_readiness_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.db");
    let sqlite = Arc::new(
        SqliteStore::open(path.to_str().unwrap())
            .await
            .expect("open"),
    );
    let metrics = Metrics::new();
    let store: Arc<dyn Store> = Observed::new(sqlite.clone(), &metrics);
    assert_eq!(store.problem(), None);
    let pages = sqlite.page_count().await.expect("page count");
    sqlite.limit_pages(Some(pages)).await.expect("limit");
    let (_, refused) = intake(&store, 0, 30).await;
    assert!(refused > 0, "the page cap never made a write fail");
    assert_eq!(store.problem().as_deref(), Some("database or disk is full"));
    // A claim succeeds on a full store (it adds nothing): readiness must not flicker back.
    store
        .claim(Utc::now(), 10, WINDOW)
        .await
        .expect("claim on a full store");
    assert_eq!(store.problem().as_deref(), Some("database or disk is full"));
    let text = metrics.encode();
    assert!(
        metric_value(
            &text,
            "dingtalk_relay_store_errors_total",
            &[("op", "enqueue")]
        ) >= 1.0,
        "{text}"
    );
    sqlite.limit_pages(None).await.expect("unlimit");
    assert!(
        poll_until(Duration::from_secs(10), || async {
            store.problem().is_none()
        })
        .await,
        "readiness never recovered: {:?}",
        store.problem()
    );
    let (queued, refused) = intake(&store, 1000, 10).await;
    assert_eq!((queued.len(), refused), (10, 0));
}

/// A relay on a SQLite file in `dir`, its settings edited by `edit`.
async fn sqlite_app(dir: &std::path::Path, edit: impl FnOnce(String) -> String) -> TestApp {
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default())
        .await
        .expect("fake DingTalk starts");
    sqlite_app_on(dir, edit, fake, &base_url).await
}

/// [`sqlite_app`] against an existing fake DingTalk (a restart).
async fn sqlite_app_on(
    dir: &std::path::Path,
    edit: impl FnOnce(String) -> String,
    fake: FakeDingTalk,
    base_url: &str,
) -> TestApp {
    let config = TestConfig {
        store_url: format!("sqlite://{}", dir.join("relay.db").display()),
        template: ID_TEMPLATE.to_owned(),
        ..TestConfig::default()
    };
    spawn_app_from_yaml(&edit(settings_yaml(&config, base_url)), fake).await
}

async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app.get_admin("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Deleted under the running relay, the database is noticed at the next group: nothing more
/// is answered 202 into the unlinked file, `/readyz` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_database_is_noticed_and_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = sqlite_app(dir.path(), |yaml| yaml).await;
    app.accept(&job_status_n(1)).await;
    assert_eq!(readiness(&app).await.0, 200);
    for file in ["relay.db", "relay.db-wal", "relay.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    let response = app.post_hook("ci", &job_status_n(2)).await;
    assert_eq!(
        response.status(),
        503,
        "a webhook was accepted into a deleted file"
    );
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("store: "), "{reason}");
    assert!(reason.contains("deleted or replaced"), "{reason}");
    for n in 3..6 {
        assert_eq!(app.post_hook("ci", &job_status_n(n)).await.status(), 503);
    }
    app.stop().await;
    // A restart opens the file the path names now, and takes webhooks again.
    let app = sqlite_app(dir.path(), |yaml| yaml).await;
    assert_eq!(readiness(&app).await.0, 200);
    app.accept(&job_status_n(7)).await;
    app.stop().await;
}

/// Below `store.min_free_bytes` webhooks get 503 + Retry-After and `/readyz` names the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn below_the_free_space_floor_webhooks_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = sqlite_app(dir.path(), |yaml| {
        yaml.replace(
            "  max_queued:",
            "  min_free_bytes: 9000000000000000000\n  max_queued:",
        )
    })
    .await;
    let response = app.post_hook("ci", &job_status_n(1)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("store.min_free_bytes"),
        "{body}"
    );
    let stored = app.state.store.list(None, 10).await.expect("list");
    assert!(stored.is_empty(), "a refused webhook was stored");
    app.stop().await;
}

/// A fresh PostgreSQL store (wrapped as the relay wraps it), with an admin connection to its
/// database, or `None` when PostgreSQL is not configured.
async fn postgres_store(
    what: &str,
) -> Option<(Arc<dyn Store>, sqlx::PgConnection, String, String)> {
    use sqlx::Connection;
    let (url, database, database_url) = fresh_postgres_database(what).await?;
    let store = dingtalk_relay::store::open(&database_url)
        .await
        .expect("open PostgreSQL store");
    let store: Arc<dyn Store> = Observed::new(store, &Metrics::new());
    let admin = sqlx::PgConnection::connect(&database_url)
        .await
        .expect("connect");
    Some((store, admin, url, database))
}

async fn drop_database(url: &str, database: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop test database");
}

/// A statement that errors (a trigger refusing inserts) fails its groups with 503; the
/// store is not ready while it does, and intake resumes once the cause is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_statement_errors_fail_their_groups() {
    let Some((store, mut admin, url, database)) =
        postgres_store("PostgreSQL statement error test").await
    else {
        return;
    };
    let (mut accepted, refused) = intake(&store, 0, 20).await;
    assert_eq!(refused, 0);
    for statement in [
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN \
           RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(statement)
            .execute(&mut admin)
            .await
            .expect("trigger");
    }
    let (queued, refused) = intake(&store, 1000, 40).await;
    assert_eq!((queued.len(), refused), (0, 40));
    let problem = store.problem().unwrap_or_default();
    assert!(problem.contains("injected failure"), "{problem:?}");
    sqlx::query("DROP TRIGGER refuse ON deliveries")
        .execute(&mut admin)
        .await
        .expect("drop trigger");
    assert!(
        poll_until(Duration::from_secs(10), || async {
            store.problem().is_none()
        })
        .await,
        "readiness never recovered"
    );
    let (queued, refused) = intake(&store, 2000, 20).await;
    assert_eq!(refused, 0);
    accepted.extend(queued);
    assert_committed(&store, &accepted).await;
    let depth = store.stats().await.expect("stats").depth;
    assert_eq!(depth, accepted.len() as u64);
    drop(store);
    drop(admin);
    drop_database(&url, &database).await;
}

/// The backend of a group terminated while the group is being written (held at a lock a
/// trigger takes, so the moment is certain): that group is answered 503, nothing of it is
/// stored, and the next groups are stored on fresh connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_backend_terminated_mid_group() {
    let Some((store, mut admin, url, database)) =
        postgres_store("PostgreSQL terminated backend test").await
    else {
        return;
    };
    for statement in [
        "CREATE FUNCTION hold() RETURNS trigger AS $$ BEGIN \
           PERFORM pg_advisory_xact_lock_shared(4213); RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER hold BEFORE INSERT ON deliveries FOR EACH ROW EXECUTE FUNCTION hold()",
        "SELECT pg_advisory_lock(4213)",
    ] {
        sqlx::query(statement)
            .execute(&mut admin)
            .await
            .expect("setup");
    }
    let held = {
        let store = store.clone();
        tokio::spawn(async move { intake(&store, 0, 30).await })
    };
    // Wait for a group's backend to block on the lock, then terminate every waiting one.
    let waiting = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pids: Vec<i32> = sqlx::query_scalar(waiting)
            .fetch_all(&mut admin)
            .await
            .expect("pg_locks");
        if !pids.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no group reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed: Vec<bool> = sqlx::query_scalar(&format!(
        "SELECT pg_terminate_backend(pid) FROM ({waiting}) AS w"
    ))
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!killed.is_empty());
    sqlx::query("SELECT pg_advisory_unlock(4213)")
        .execute(&mut admin)
        .await
        .expect("unlock");
    let (mut accepted, refused) = held.await.expect("intake");
    assert!(refused > 0, "the terminated group was not refused");
    let (queued, refused) = intake(&store, 1000, 20).await;
    assert_eq!(refused, 0, "intake did not resume on fresh connections");
    accepted.extend(queued);
    assert_committed(&store, &accepted).await;
    let depth = store.stats().await.expect("stats").depth;
    assert_eq!(
        depth,
        accepted.len() as u64,
        "stored rows differ from the accepted ones"
    );
    drop(store);
    drop(admin);
    drop_database(&url, &database).await;
}

/// Makes the relay's own writes of `delivered` fail (a trigger in its SQLite file), or lets
/// them through again.
async fn refuse_delivered(dir: &std::path::Path, refuse: bool) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("relay.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    let statement = if refuse {
        "CREATE TRIGGER refuse_delivered BEFORE UPDATE OF state ON deliveries \
         WHEN NEW.state = 'delivered' BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    } else {
        "DROP TRIGGER refuse_delivered"
    };
    sqlx::query(statement)
        .execute(&mut conn)
        .await
        .expect("trigger");
    conn.close().await.expect("close");
}

/// DingTalk accepted the report but recording it fails: the relay keeps the report id and
/// writes it once the store takes writes again — one report, no resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_delivered_write_is_retried_with_the_report_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = sqlite_app(dir.path(), |yaml| yaml).await;
    refuse_delivered(dir.path(), true).await;
    let id = app.accept(&job_status_n(1)).await;
    assert!(
        poll_until(Duration::from_secs(10), || async {
            app.fake.reports().len() == 1
        })
        .await,
        "the report was never created"
    );
    assert!(
        poll_until(Duration::from_secs(10), || async {
            metric_value(
                &app.metrics().await,
                "dingtalk_relay_store_errors_total",
                &[("op", "mark_delivered")],
            ) >= 2.0
        })
        .await,
        "the write was not retried"
    );
    assert_eq!(app.delivery(&id).await["state"], "delivering");
    refuse_delivered(dir.path(), false).await;
    let delivered = app.wait_for_state(&id, "delivered").await;
    let reports = app.fake.reports();
    assert_eq!(reports.len(), 1, "the report was sent again");
    assert_eq!(delivered["report_id"], reports[0].report_id.as_str());
    app.stop().await;
}

/// Still failing at shutdown, the row stays marked as sending: after a restart the existing
/// report/list reconciliation finds the report instead of sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivered_write_lost_at_shutdown_is_reconciled_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default())
        .await
        .expect("fake DingTalk starts");
    let app = sqlite_app_on(dir.path(), |yaml| yaml, fake.clone(), &base_url).await;
    refuse_delivered(dir.path(), true).await;
    let id = app.accept(&job_status_n(1)).await;
    assert!(
        poll_until(Duration::from_secs(10), || async {
            fake.reports().len() == 1
        })
        .await,
        "the report was never created"
    );
    app.stop().await;
    refuse_delivered(dir.path(), false).await;
    let app = sqlite_app_on(dir.path(), |yaml| yaml, fake.clone(), &base_url).await;
    let delivered = app.wait_for_state(&id, "delivered").await;
    let reports = fake.reports();
    assert_eq!(reports.len(), 1, "the report was sent again");
    assert_eq!(delivered["report_id"], reports[0].report_id.as_str());
    app.stop().await;
}

/// A delivery row's draft as the relay stored it before drafts were versioned (the
/// serialised `ReportDraft`, its template a `TemplateSettings`).
const PREVIOUS_DRAFT: &str = r#"{"app":"default","template":{"name":null,"id":"tpl-1","fields":[{"name":"今日完成工作","sort":0,"type":1}],"owner":null},"author":"manager01","to_userids":["user01"],"to_cids":[],"to_chat":true,"dd_from":"dingtalk-relay","contents":[{"field":"今日完成工作","content":"**build #42** passed"}]}"#;
/// The same with a template key a later release removed: still readable.
const DRAFT_WITH_A_RETIRED_KEY: &str = r#"{"v":1,"app":"default","template":{"name":"日报","retired_key":true},"author":"manager01","to_userids":["user01"],"to_cids":[],"to_chat":false,"dd_from":"dingtalk-relay","contents":[]}"#;
/// A digest event as stored before events were versioned (the bare serialised `Event`).
const PREVIOUS_EVENT: &str = r#"{"type":"standup","user":"octocat","userid":null,"date":null,"done":["item 1"],"todo":[],"blockers":[],"notes":null}"#;
/// A digest event as the first version 1 writer stored it (the serialised `sources::Event`
/// beside `"v": 1`).
const V1_WRAPPED_EVENT: &str = r#"{"v":1,"event":{"type":"job_status","job":"test","pipeline":"ci","status":"timed_out","status_raw":"timed_out","source":"GitHub Actions","phase":"completed","project":"acme/api","run_id":"42","branch":"main","commit":"abc123","commit_message":"fix: it","url":"https://ci.example/42","actor":"octocat","actor_email":"octocat@example.com","started_at":"2026-12-04T09:00:00Z","finished_at":"2026-12-04T09:05:30Z","duration_secs":330,"summary":"418 tests passed"}}"#;
/// A digest event of a later release that renamed `pipeline` to `workflow` and added a key:
/// still readable, the renamed field absent.
const EVENT_WITH_A_RENAMED_KEY: &str = r#"{"v":1,"event":{"type":"job_status","workflow":"ci","colour":"red","project":"acme/web","status":"failure"}}"#;

/// Rows as raw SQL (the same on SQLite and PostgreSQL): `id`, `draft`, due now.
fn raw_delivery(id: &str, draft: &str) -> String {
    let now = Utc::now().timestamp_millis();
    format!(
        "INSERT INTO deliveries (id, route, dedup_key, state, attempts, next_attempt_at, draft, \
           created_at, updated_at) \
         VALUES ('{id}', 'ci', 'key-{id}', 'queued', 0, {now}, '{}', {now}, {now})",
        draft.replace('\'', "''")
    )
}

fn raw_digest_event(id: &str, event: &str) -> String {
    let now = Utc::now().timestamp_millis();
    format!(
        "INSERT INTO digest_events (id, route, group_key, event, received_at) \
         VALUES ('{id}', 'daily', 'all', '{}', {now})",
        event.replace('\'', "''")
    )
}

/// Reads rows of the previous stored form, and fails (never drops, never blocks on) a row
/// that cannot be read.
async fn stored_forms(store: Arc<dyn Store>, execute: impl AsyncFn(String)) {
    execute(raw_delivery("old", PREVIOUS_DRAFT)).await;
    execute(raw_delivery("retired", DRAFT_WITH_A_RETIRED_KEY)).await;
    execute(raw_delivery("garbage", r#"{"v":1,"app":5}"#)).await;
    execute(raw_delivery("future", r#"{"v":99,"app":"default"}"#)).await;
    execute(raw_digest_event("old-event", PREVIOUS_EVENT)).await;
    execute(raw_digest_event("v1-event", V1_WRAPPED_EVENT)).await;
    execute(raw_digest_event("renamed-event", EVENT_WITH_A_RENAMED_KEY)).await;
    execute(raw_digest_event(
        "bad-event",
        r#"{"v":1,"event":{"type":"nope"}}"#,
    ))
    .await;
    execute(raw_digest_event(
        "future-event",
        r#"{"v":2,"event":{"type":"standup"}}"#,
    ))
    .await;

    let old = store.get("old").await.expect("get").expect("stored");
    assert_eq!(old.state, State::Queued);
    assert_eq!(old.draft.template.id.as_deref(), Some("tpl-1"));
    assert_eq!(old.draft.template.fields.as_ref().map(Vec::len), Some(1));
    assert_eq!(old.draft.contents[0].content, "**build #42** passed");
    assert!(old.draft.to_chat);

    let claimed = store
        .claim(Utc::now() + chrono::Duration::seconds(1), 10, WINDOW)
        .await
        .expect("claim is not blocked by undecodable rows");
    let mut ids: Vec<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["old", "retired"]);
    for id in ["garbage", "future"] {
        let failed = store
            .get(id)
            .await
            .expect("get")
            .expect("kept, not dropped");
        assert_eq!(failed.state, State::Failed);
        let reason = failed.last_error.expect("a reason").errmsg;
        assert!(reason.starts_with("undecodable: draft: "), "{reason}");
    }
    let listed = store.list(Some(State::Failed), 10).await.expect("list");
    assert_eq!(listed.len(), 2, "undecodable rows are stored as failed");

    let read = |events: &[dingtalk_relay::store::DigestEvent]| -> Vec<(String, Event)> {
        let mut read: Vec<_> = events
            .iter()
            .map(|e| (e.id.clone(), e.event.clone()))
            .collect();
        read.sort_by(|a, b| a.0.cmp(&b.0));
        read
    };
    let expected = vec![
        (
            "old-event".to_owned(),
            Event::Standup(Standup {
                user: Some("octocat".into()),
                done: vec!["item 1".into()],
                ..Standup::default()
            }),
        ),
        (
            "renamed-event".to_owned(),
            Event::JobStatus(JobStatus {
                project: Some("acme/web".into()),
                status: Some(Status::Failure),
                ..JobStatus::default()
            }),
        ),
        (
            "v1-event".to_owned(),
            Event::JobStatus(JobStatus {
                job: Some("test".into()),
                pipeline: Some("ci".into()),
                status: Some(Status::Other("timed_out".into())),
                status_raw: Some("timed_out".into()),
                source: Some("GitHub Actions".into()),
                phase: Some(Phase::Completed),
                project: Some("acme/api".into()),
                run_id: Some("42".into()),
                branch: Some("main".into()),
                commit: Some("abc123".into()),
                commit_message: Some("fix: it".into()),
                url: Some("https://ci.example/42".into()),
                actor: Some("octocat".into()),
                actor_email: Some("octocat@example.com".into()),
                started_at: Some("2026-12-04T09:00:00Z".parse().expect("time")),
                finished_at: Some("2026-12-04T09:05:30Z".parse().expect("time")),
                duration_secs: Some(330),
                summary: Some("418 tests passed".into()),
            }),
        ),
    ];
    let events = store.digest_events("daily").await.expect("events");
    assert_eq!(
        read(&events),
        expected,
        "the preview shows the readable events"
    );

    let undecodable = store
        .undecodable_digest_events("daily")
        .await
        .expect("undecodable events");
    let mut shown: Vec<(&str, &str)> = undecodable
        .iter()
        .map(|bad| (bad.id.as_str(), bad.reason.as_str()))
        .collect();
    shown.sort_unstable();
    assert_eq!(
        shown.len(),
        2,
        "the preview shows the unreadable events: {shown:?}"
    );
    assert_eq!((shown[0].0, shown[1].0), ("bad-event", "future-event"));
    assert!(
        shown
            .iter()
            .all(|(_, reason)| reason.starts_with("undecodable: event: ")),
        "{shown:?}"
    );

    // Making the digest folds the readable events; the unreadable one becomes a failed
    // delivery with its reason, and does not stop the digest.
    let folded = std::sync::Mutex::new(Vec::new());
    let build = |events: &[dingtalk_relay::store::DigestEvent], _| {
        *folded.lock().expect("not poisoned") = read(events);
        Ok(Vec::new())
    };
    let closed = store
        .close_digest(
            "daily",
            Utc::now() + chrono::Duration::seconds(1),
            Utc::now(),
            &build,
        )
        .await
        .expect("close")
        .expect("made");
    assert_eq!(closed.events, 3);
    assert_eq!(*folded.lock().expect("not poisoned"), expected);
    for (id, why) in [
        ("bad-event", "unknown variant `nope`"),
        ("future-event", "version 2 is newer"),
    ] {
        let bad = store
            .get(id)
            .await
            .expect("get")
            .expect("kept as a delivery");
        assert_eq!(bad.state, State::Failed);
        let reason = bad.last_error.expect("a reason").errmsg;
        assert!(reason.starts_with("undecodable: event: "), "{reason}");
        assert!(reason.contains(why), "{reason}");
    }
    let failed = store.list(Some(State::Failed), 10).await.expect("list");
    let mut failed: Vec<&str> = failed.iter().map(|d| d.id.as_str()).collect();
    failed.sort_unstable();
    assert_eq!(
        failed,
        ["bad-event", "future", "future-event", "garbage"],
        "what the admin API lists as failed"
    );
    assert!(
        store
            .digest_events("daily")
            .await
            .expect("events")
            .is_empty()
    );
    assert!(
        store
            .undecodable_digest_events("daily")
            .await
            .expect("undecodable events")
            .is_empty(),
        "made failed deliveries, no longer kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reads_previous_stored_forms_and_fails_undecodable_rows() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.db");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(path.to_str().unwrap())
            .await
            .expect("open"),
    );
    let url = format!("sqlite://{}", path.display());
    let conn = Arc::new(tokio::sync::Mutex::new(
        sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect"),
    ));
    stored_forms(store, async |sql: String| {
        let mut conn = conn.lock().await;
        sqlx::query(&sql)
            .execute(&mut *conn)
            .await
            .expect("raw insert");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reads_previous_stored_forms_and_fails_undecodable_rows() {
    let Some((store, admin, url, database)) = postgres_store("PostgreSQL stored forms test").await
    else {
        return;
    };
    let admin = Arc::new(tokio::sync::Mutex::new(admin));
    stored_forms(store, async |sql: String| {
        let mut conn = admin.lock().await;
        sqlx::query(&sql)
            .execute(&mut *conn)
            .await
            .expect("raw insert");
    })
    .await;
    drop(admin);
    drop_database(&url, &database).await;
}

/// Kills the relay process when the test ends, also when an assertion fails first.
struct Running(crate::process::Relay);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// The real binary on a nearly full filesystem (root only: a small tmpfs): webhooks that
/// cannot be committed get 503 and readiness says the disk is full; once space is freed
/// intake and readiness recover by themselves; after a clean SIGTERM and restart every
/// webhook answered 202 is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_on_a_full_disk_keeps_every_202() {
    use std::collections::HashMap;

    use crate::process::{all_delivered, assert_each_reported_once, start_relay, write_config};
    let Some(tmpfs) = Tmpfs::mount("4m", "the full-disk binary test") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FakeOptions::default();
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let store_url = format!("sqlite://{}", tmpfs.dir.path().join("relay.db").display());
    let config = write_config(dir.path(), &base_url, &options, &store_url);
    // No floor: this test is about the writes that fail when the disk is really full.
    let yaml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        yaml.replace("  max_queued:", "  min_free_bytes: 0\n  max_queued:"),
    )
    .unwrap();
    let mut relay = Running(start_relay(&config));
    let http = reqwest::Client::new();
    let ready = async |admin: &str| {
        let response = http.get(format!("{admin}/readyz")).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(ready(&relay.0.admin_address).await.0, 200);

    // Leave about 200 KB free.
    let fs = rustix::fs::statvfs(tmpfs.dir.path()).expect("statvfs");
    let free = fs.f_bavail * fs.f_frsize;
    let filler = tmpfs.dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; (free.saturating_sub(200_000)) as usize]).unwrap();

    let post = async |address: &str, n: usize| {
        http.post(format!("{address}/v1/hooks/ci"))
            .bearer_auth(ROUTE_SECRET)
            .json(&job_status_n(n))
            .send()
            .await
            .expect("answered")
    };
    let mut accepted: HashMap<usize, String> = HashMap::new();
    let mut refused = 0;
    let mut n = 0;
    while refused < 20 && n < 5000 {
        let answers =
            futures::future::join_all((n..n + 8).map(|n| post(&relay.0.address, n))).await;
        for (i, answer) in answers.into_iter().enumerate() {
            match answer.status().as_u16() {
                202 => {
                    let body: Value = answer.json().await.unwrap();
                    accepted.insert(n + i, body["delivery_id"].as_str().unwrap().to_owned());
                }
                503 => {
                    assert!(answer.headers().contains_key("retry-after"));
                    refused += 1;
                }
                other => panic!("unexpected answer {other}"),
            }
        }
        n += 8;
    }
    assert!(refused >= 20, "the disk never filled ({n} webhooks)");
    let (status, body) = ready(&relay.0.admin_address).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("full"), "{body}");

    // Space freed: readiness and intake come back by themselves.
    std::fs::remove_file(&filler).unwrap();
    let admin = relay.0.admin_address.clone();
    assert!(
        poll_until(Duration::from_secs(15), || async {
            ready(&admin).await.0 == 200
        })
        .await,
        "readiness never recovered"
    );
    for m in n..n + 20 {
        let answer = post(&relay.0.address, m).await;
        assert_eq!(answer.status(), 202, "intake did not resume");
        let body: Value = answer.json().await.unwrap();
        accepted.insert(m, body["delivery_id"].as_str().unwrap().to_owned());
    }

    // A clean stop and a restart: every 202 is delivered, once.
    let pid = relay.0.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = relay.0.child.wait();
    let mut relay = Running(start_relay(&config));
    let all_done = all_delivered(&http, &relay.0.admin_address, accepted.values()).await;
    relay.0.child.kill().ok();
    let _ = relay.0.child.wait();
    assert!(all_done, "not every accepted webhook was delivered");
    assert_each_reported_once(&fake, accepted.keys());
}

/// Sets or clears the immutable attribute of the database and its WAL (root only, on a
/// filesystem that has it); `false` when it could not. Not the `-shm` file: SQLite maps it
/// into memory, and a write to an immutable mapping is SIGBUS for the whole process.
fn immutable(dir: &std::path::Path, on: bool) -> bool {
    let flag = if on { "+i" } else { "-i" };
    ["relay.db", "relay.db-wal"].iter().all(|file| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(dir.join(file))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The database files made read-only under the running relay (`chattr +i`: SQLite's writes
/// fail with an I/O error, the case the issue found): webhooks get 503, readiness flips, and
/// both recover when the files are writable again; every 202 survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::print_stderr, reason = "the skip has to be visible")]
async fn read_only_database_files_answer_503_and_recover() {
    use std::os::unix::fs::MetadataExt;
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        eprintln!("skipped: the read-only database test needs root for chattr +i");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default())
        .await
        .expect("fake DingTalk starts");
    let app = sqlite_app_on(dir.path(), |yaml| yaml, fake.clone(), &base_url).await;
    let mut accepted = vec![app.accept(&job_status_n(0)).await];
    if !immutable(dir.path(), true) {
        immutable(dir.path(), false);
        eprintln!("skipped: chattr +i is not supported where the test's tempdir is");
        app.stop().await;
        return;
    }
    let mut refused = 0;
    for n in 1..21 {
        let response = app.post_hook("ci", &job_status_n(n)).await;
        match response.status().as_u16() {
            202 => accepted.push(
                response.json::<Value>().await.unwrap()["delivery_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            503 => refused += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    let (status, body) = readiness(&app).await;
    immutable(dir.path(), false);
    assert!(refused > 0, "no write failed on immutable files");
    assert_eq!(status, 503, "{body}");
    assert!(
        poll_until(Duration::from_secs(15), || async {
            readiness(&app).await.0 == 200
        })
        .await,
        "readiness never recovered: {:?}",
        readiness(&app).await
    );
    for n in 100..110 {
        accepted.push(app.accept(&job_status_n(n)).await);
    }
    app.stop().await;
    let app = sqlite_app_on(dir.path(), |yaml| yaml, fake, &base_url).await;
    for id in &accepted {
        app.wait_for_state(id, "delivered").await;
    }
    app.stop().await;
}
