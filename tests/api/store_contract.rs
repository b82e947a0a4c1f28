//! The `Store` contract, written once and run against every backend: `memory:`, SQLite (a
//! temporary file) and PostgreSQL when `DINGTALK_RELAY_TEST_POSTGRES_URL` is set (each test in
//! a fresh database, dropped afterwards; without the variable those tests say so and pass).
//! Test names read `store_contract::<case>::<backend>`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dingtalk_relay::config::TemplateSettings;
use dingtalk_relay::mapping::{DraftContent, ReportDraft};
use dingtalk_relay::sources::{Event, Standup};
use dingtalk_relay::store::{
    self, Delivery, DigestEvent, Enqueued, Error, LastError, MemoryStore, NewDelivery,
    NewDigestEvent, QueueStats, QuotaCalls, State, Store, TemplateKey,
};
use sqlx::{Connection, PgConnection};

use crate::helpers::fresh_postgres_database;

const WINDOW: Duration = Duration::from_secs(60);
const ROOMY: u64 = 1000;
const HOUR: Duration = Duration::from_secs(3600);
const HOUR_CHRONO: chrono::Duration = chrono::Duration::hours(1);

/// One backend under test, with what has to live as long as it.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the server URL and the test database to drop.
    postgres: Option<(String, String)>,
}

impl Backend {
    async fn finish(self) {
        let Self {
            store, postgres, ..
        } = self;
        drop(store);
        if let Some((url, database)) = postgres {
            let mut conn = PgConnection::connect(&url)
                .await
                .expect("connect to PostgreSQL");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .expect("drop test database");
        }
    }
}

async fn memory() -> Option<Backend> {
    Some(Backend {
        store: Arc::new(MemoryStore::new()),
        _dir: None,
        postgres: None,
    })
}

async fn sqlite() -> Option<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    Some(Backend {
        store: store::open(&url).await.expect("open SQLite store"),
        _dir: Some(dir),
        postgres: None,
    })
}

async fn postgres() -> Option<Backend> {
    let (url, database, database_url) = fresh_postgres_database("PostgreSQL store test").await?;
    let store = store::open(&database_url)
        .await
        .expect("open PostgreSQL store");
    Some(Backend {
        store,
        _dir: None,
        postgres: Some((url, database)),
    })
}

/// Generates `mod <case> { #[tokio::test] async fn <backend>() … }` for each case.
macro_rules! contract {
    ($backends:tt $($case:ident),+ $(,)?) => {
        $( contract!(@case $case $backends); )+
    };
    (@case $case:ident [$($backend:ident),+]) => {
        mod $case {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $backend() {
                    let Some(backend) = super::$backend().await else {
                        return;
                    };
                    let outcome = tokio::spawn(super::$case(backend.store.clone())).await;
                    backend.finish().await;
                    if let Err(e) = outcome {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            )+
        }
    };
}

contract!(
    [memory, sqlite, postgres]
    enqueue_then_get,
    duplicate_within_window_returns_first_id,
    same_key_after_window_is_new_delivery,
    max_queued_is_full,
    claim_takes_due_items_up_to_limit,
    claimed_item_is_reclaimed_only_after_lease,
    schedule_retry_keeps_or_clears_sending_since,
    mark_delivered_sets_report_id,
    mark_failed_keeps_last_error,
    release_returns_item_uncounted,
    retry_requeues_failed_only,
    list_filters_newest_first,
    stats_and_next_due,
    prune_removes_old_delivered_and_dedup_keys,
    digest_events_are_kept_once_per_key,
    close_digest_folds_the_period_once,
    a_failed_digest_build_changes_nothing,
    digest_events_count_toward_max_queued,
    quota_calls_add_up_per_month_api_and_route,
    quota_exhaustion_is_kept_per_month_first_report_wins,
    kept_templates_expire,
    hold_keeps_sending_since_and_the_attempt_uncounted,
    either_dedup_key_seen_is_a_duplicate,
    both_dedup_keys_are_free_after_the_window,
    prune_removes_both_dedup_keys,
    replays_in_one_group_queue_once,
    overlapping_keys_in_one_group_decide_as_in_arrival_order,
    digest_event_replay_is_a_duplicate,
);

contract!(
    [sqlite, postgres]
    concurrent_enqueue_of_one_key_queues_once,
    concurrent_claims_take_each_delivery_once,
    concurrent_closes_make_one_digest,
);

// ---------------------------------------------------------------------------------------------
// Helpers

/// Now, at the stores' millisecond precision.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("valid time")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn millis(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

fn draft() -> ReportDraft {
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
        to_chat: true,
        dd_from: "dingtalk-relay".to_owned(),
        contents: vec![DraftContent {
            field: "今日完成工作".to_owned(),
            content: "**build #42** passed ✅".to_owned(),
        }],
    }
}

fn new(id: &str, key: &str, at: DateTime<Utc>) -> NewDelivery {
    NewDelivery {
        id: id.to_owned(),
        route: "ci".to_owned(),
        dedup_key: key.to_owned(),
        body_key: None,
        draft: draft(),
        received_at: at,
    }
}

/// A delivery with a delivery-id key and a body-hash key.
fn new2(id: &str, key: &str, body: &str, at: DateTime<Utc>) -> NewDelivery {
    NewDelivery {
        body_key: Some(body.to_owned()),
        ..new(id, key, at)
    }
}

/// Enqueues `id` (dedup key `key-<id>`) at `at`, expecting it queued.
async fn put(store: &Arc<dyn Store>, id: &str, at: DateTime<Utc>) {
    let outcome = store
        .enqueue(new(id, &format!("key-{id}"), at), WINDOW, ROOMY)
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Queued(id.to_owned()));
}

async fn get(store: &Arc<dyn Store>, id: &str) -> Delivery {
    store.get(id).await.expect("get").expect("delivery exists")
}

fn ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.id.as_str()).collect()
}

fn sorted_ids(deliveries: &[Delivery]) -> Vec<&str> {
    let mut ids = ids(deliveries);
    ids.sort_unstable();
    ids
}

fn error(errcode: Option<i64>, errmsg: &str) -> LastError {
    LastError {
        errcode,
        errmsg: errmsg.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn enqueue_then_get(store: Arc<dyn Store>) {
    let t0 = t0();
    let outcome = store
        .enqueue(new("d1", "k1", t0), WINDOW, ROOMY)
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Queued("d1".to_owned()));
    assert_eq!(
        get(&store, "d1").await,
        Delivery {
            id: "d1".to_owned(),
            route: "ci".to_owned(),
            dedup_key: "k1".to_owned(),
            state: State::Queued,
            attempts: 0,
            next_attempt_at: Some(t0),
            sending_since: None,
            last_error: None,
            report_id: None,
            draft: draft(),
            created_at: t0,
            updated_at: t0,
        }
    );
    assert_eq!(store.get("nope").await.expect("get"), None);
    store.ping().await.expect("ping");
}

async fn duplicate_within_window_returns_first_id(store: Arc<dyn Store>) {
    let t0 = t0();
    store
        .enqueue(new("d1", "k", t0), WINDOW, ROOMY)
        .await
        .expect("enqueue");
    for (id, at) in [("d2", t0 + secs(1)), ("d3", t0 + secs(59))] {
        let outcome = store
            .enqueue(new(id, "k", at), WINDOW, ROOMY)
            .await
            .expect("enqueue");
        assert_eq!(outcome, Enqueued::Duplicate("d1".to_owned()));
        assert_eq!(store.get(id).await.expect("get"), None);
    }
    assert_eq!(store.stats().await.expect("stats").depth, 1);
}

async fn same_key_after_window_is_new_delivery(store: Arc<dyn Store>) {
    let t0 = t0();
    store
        .enqueue(new("d1", "k", t0), WINDOW, ROOMY)
        .await
        .expect("enqueue");
    // Exactly one window later the key is free again.
    let t1 = t0 + secs(60);
    let outcome = store
        .enqueue(new("d2", "k", t1), WINDOW, ROOMY)
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Queued("d2".to_owned()));
    // …and now dedups to the new delivery.
    let outcome = store
        .enqueue(new("d3", "k", t1 + secs(1)), WINDOW, ROOMY)
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Duplicate("d2".to_owned()));
    assert_eq!(get(&store, "d1").await.state, State::Queued);
    assert_eq!(get(&store, "d2").await.dedup_key, "k");
    assert_eq!(store.stats().await.expect("stats").depth, 2);
}

async fn max_queued_is_full(store: Arc<dyn Store>) {
    let t0 = t0();
    for id in ["d1", "d2"] {
        let outcome = store
            .enqueue(new(id, id, t0), WINDOW, 2)
            .await
            .expect("enqueue");
        assert_eq!(outcome, Enqueued::Queued(id.to_owned()));
    }
    let refused = store.enqueue(new("d3", "d3", t0), WINDOW, 2).await;
    assert!(matches!(refused, Err(Error::Full(2))), "{refused:?}");
    assert_eq!(store.get("d3").await.expect("get"), None);
    // A duplicate is still recognised while full.
    let outcome = store
        .enqueue(new("d4", "d1", t0), WINDOW, 2)
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Duplicate("d1".to_owned()));
    // Delivering still counts; delivered frees a place, and the refused key was not kept.
    let claimed = store.claim(t0, 1, HOUR).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let refused = store.enqueue(new("d3", "d3", t0), WINDOW, 2).await;
    assert!(matches!(refused, Err(Error::Full(2))), "{refused:?}");
    store
        .mark_delivered(&claimed[0].id, "r1", t0)
        .await
        .expect("mark_delivered");
    let outcome = store
        .enqueue(new("d3", "d3", t0 + secs(1)), WINDOW, 2)
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Queued("d3".to_owned()));
}

async fn claim_takes_due_items_up_to_limit(store: Arc<dyn Store>) {
    let t0 = t0();
    put(&store, "d1", t0).await;
    put(&store, "d2", t0 + millis(1)).await;
    put(&store, "d3", t0 + secs(2)).await;
    put(&store, "later", t0 + secs(60)).await;
    let now = t0 + secs(5);

    // Limit 2: the two earliest due.
    let first = store.claim(now, 2, HOUR).await.expect("claim");
    assert_eq!(sorted_ids(&first), ["d1", "d2"]);
    for d in &first {
        assert_eq!(d.state, State::Delivering);
        assert_eq!(d.attempts, 1);
        assert_eq!(d.next_attempt_at, None);
        assert_eq!(d.updated_at, now);
        assert_eq!(get(&store, &d.id).await, *d);
    }
    // The rest that is due; not the one due later, not the leased ones.
    let second = store.claim(now, 10, HOUR).await.expect("claim");
    assert_eq!(ids(&second), ["d3"]);
    assert!(store.claim(now, 10, HOUR).await.expect("claim").is_empty());
    let later = get(&store, "later").await;
    assert_eq!(later.state, State::Queued);
    assert_eq!(later.attempts, 0);
    assert_eq!(
        store
            .claim(t0 + secs(60), 10, HOUR)
            .await
            .expect("claim")
            .len(),
        1
    );
    assert!(store.claim(now, 0, HOUR).await.expect("claim").is_empty());
}

async fn claimed_item_is_reclaimed_only_after_lease(store: Arc<dyn Store>) {
    let t0 = t0();
    put(&store, "a", t0).await;
    put(&store, "b", t0).await;
    let short = store
        .claim(t0, 1, Duration::from_millis(1))
        .await
        .expect("claim");
    let long = store.claim(t0, 1, HOUR).await.expect("claim");
    assert_eq!(
        sorted_ids(&[short.clone(), long.clone()].concat()),
        ["a", "b"]
    );
    // Not before the lease expires…
    assert!(store.claim(t0, 10, HOUR).await.expect("claim").is_empty());
    // …then taken over, counting another attempt; the hour-long lease still holds.
    let now = t0 + millis(2);
    let again = store.claim(now, 10, HOUR).await.expect("claim");
    assert_eq!(again.len(), 1);
    let expired = &again[0];
    assert_eq!(expired.id, short[0].id);
    assert_eq!(expired.state, State::Delivering);
    assert_eq!(expired.attempts, 2);
    assert_eq!(expired.updated_at, now);
    assert!(store.claim(now, 10, HOUR).await.expect("claim").is_empty());
    // At t0 + 1h the first hour-long lease has run out, the one taken at t0 + 2ms has not.
    let late = store.claim(t0 + secs(3600), 10, HOUR).await.expect("claim");
    assert_eq!(ids(&late), ids(&long));
}

async fn schedule_retry_keeps_or_clears_sending_since(store: Arc<dyn Store>) {
    let t0 = t0();
    put(&store, "d1", t0).await;
    store.claim(t0, 1, HOUR).await.expect("claim");
    let since = t0 + secs(1);
    store.mark_sending("d1", since).await.expect("mark_sending");
    assert_eq!(get(&store, "d1").await.sending_since, Some(since));

    let lost = error(None, "ambiguous: timed out");
    let at = t0 + secs(30);
    let now = t0 + secs(2);
    store
        .schedule_retry("d1", at, &lost, Some(since), now)
        .await
        .expect("schedule_retry");
    let d = get(&store, "d1").await;
    assert_eq!(d.state, State::Queued);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.next_attempt_at, Some(at));
    assert_eq!(d.sending_since, Some(since));
    assert_eq!(d.last_error, Some(lost.clone()));
    assert_eq!(d.updated_at, now);
    assert_eq!(store.next_due().await.expect("next_due"), Some(at));

    // Not due before `at`; then claimed with the unknown outcome still recorded.
    assert!(
        store
            .claim(at - millis(1), 10, HOUR)
            .await
            .expect("claim")
            .is_empty()
    );
    let claimed = store.claim(at, 10, HOUR).await.expect("claim");
    assert_eq!(ids(&claimed), ["d1"]);
    assert_eq!(claimed[0].attempts, 2);
    assert_eq!(claimed[0].sending_since, Some(since));
    assert_eq!(claimed[0].last_error, Some(lost));

    let busy = error(Some(90018), "too many requests");
    store
        .schedule_retry("d1", at + secs(30), &busy, None, at)
        .await
        .expect("schedule_retry");
    let d = get(&store, "d1").await;
    assert_eq!(d.state, State::Queued);
    assert_eq!(d.sending_since, None);
    assert_eq!(d.next_attempt_at, Some(at + secs(30)));
    assert_eq!(d.last_error, Some(busy));
}

async fn mark_delivered_sets_report_id(store: Arc<dyn Store>) {
    let t0 = t0();
    put(&store, "d1", t0).await;
    store.claim(t0, 1, HOUR).await.expect("claim");
    store
        .mark_sending("d1", t0 + secs(1))
        .await
        .expect("mark_sending");
    let now = t0 + secs(2);
    store
        .mark_delivered("d1", "report-1", now)
        .await
        .expect("mark_delivered");
    let d = get(&store, "d1").await;
    assert_eq!(d.state, State::Delivered);
    assert_eq!(d.report_id.as_deref(), Some("report-1"));
    assert_eq!(d.sending_since, None);
    assert_eq!(d.next_attempt_at, None);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.updated_at, now);
    assert_eq!(d.created_at, t0);
    assert!(
        store
            .claim(t0 + secs(7200), 10, HOUR)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(store.stats().await.expect("stats"), QueueStats::default());
}

async fn mark_failed_keeps_last_error(store: Arc<dyn Store>) {
    let t0 = t0();
    put(&store, "d1", t0).await;
    put(&store, "d2", t0).await;
    store.claim(t0, 2, HOUR).await.expect("claim");
    store.mark_sending("d1", t0).await.expect("mark_sending");
    let rejected = error(Some(400_002), "invalid template contents: 今日完成工作");
    let now = t0 + secs(1);
    store
        .mark_failed("d1", &rejected, now)
        .await
        .expect("mark_failed");
    let d = get(&store, "d1").await;
    assert_eq!(d.state, State::Failed);
    assert_eq!(d.last_error, Some(rejected));
    assert_eq!(d.sending_since, None);
    assert_eq!(d.next_attempt_at, None);
    assert_eq!(d.report_id, None);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.updated_at, now);

    let no_code = error(None, "connection refused");
    store
        .mark_failed("d2", &no_code, now)
        .await
        .expect("mark_failed");
    assert_eq!(get(&store, "d2").await.last_error, Some(no_code));
    assert!(
        store
            .claim(t0 + secs(7200), 10, HOUR)
            .await
            .expect("claim")
            .is_empty()
    );
}

async fn release_returns_item_uncounted(store: Arc<dyn Store>) {
    let t0 = t0();
    put(&store, "d1", t0).await;
    store.claim(t0, 1, HOUR).await.expect("claim");
    let now = t0 + secs(1);
    store.release("d1", now).await.expect("release");
    let d = get(&store, "d1").await;
    assert_eq!(d.state, State::Queued);
    assert_eq!(d.attempts, 0);
    assert_eq!(d.next_attempt_at, Some(now));
    assert_eq!(d.updated_at, now);
    // Claimable again at once, though the lease had an hour to run.
    let again = store.claim(now, 10, HOUR).await.expect("claim");
    assert_eq!(ids(&again), ["d1"]);
    assert_eq!(again[0].attempts, 1);

    // Only a delivering delivery is released.
    store
        .mark_delivered("d1", "report-1", now)
        .await
        .expect("mark_delivered");
    store.release("d1", now + secs(1)).await.expect("release");
    let d = get(&store, "d1").await;
    assert_eq!(d.state, State::Delivered);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.next_attempt_at, None);
    store.release("nope", now).await.expect("release unknown");
}

async fn retry_requeues_failed_only(store: Arc<dyn Store>) {
    let t0 = t0();
    put(&store, "failed", t0).await;
    put(&store, "delivered", t0).await;
    put(&store, "queued", t0 + secs(1)).await;
    store.claim(t0, 2, HOUR).await.expect("claim");
    let gave_up = error(Some(88), "ambiguous: no answer");
    store
        .mark_failed("failed", &gave_up, t0 + secs(1))
        .await
        .expect("mark_failed");
    // A create was started after all (an unknown outcome the operator has now checked).
    store
        .mark_sending("failed", t0 + secs(2))
        .await
        .expect("mark_sending");
    store
        .mark_delivered("delivered", "report-1", t0 + secs(1))
        .await
        .expect("mark_delivered");

    let now = t0 + secs(10);
    assert_eq!(
        store.retry("failed", now).await.expect("retry"),
        Some(State::Failed)
    );
    let d = get(&store, "failed").await;
    assert_eq!(d.state, State::Queued);
    assert_eq!(d.attempts, 0);
    assert_eq!(d.sending_since, None);
    assert_eq!(d.next_attempt_at, Some(now));
    assert_eq!(d.updated_at, now);
    assert_eq!(d.last_error, Some(gave_up));
    let claimed = store.claim(now, 10, HOUR).await.expect("claim");
    assert_eq!(sorted_ids(&claimed), ["failed", "queued"]);

    let before = get(&store, "delivered").await;
    assert_eq!(
        store.retry("delivered", now).await.expect("retry"),
        Some(State::Delivered)
    );
    assert_eq!(get(&store, "delivered").await, before);

    let before = get(&store, "queued").await;
    assert_eq!(
        store.retry("queued", now).await.expect("retry"),
        Some(State::Delivering)
    );
    assert_eq!(get(&store, "queued").await, before);

    assert_eq!(store.retry("nope", now).await.expect("retry"), None);
}

async fn list_filters_newest_first(store: Arc<dyn Store>) {
    let t0 = t0();
    for (i, id) in ["d1", "d2", "d3", "d4"].into_iter().enumerate() {
        put(&store, id, t0 + secs(i64::try_from(i).expect("small"))).await;
    }
    store
        .mark_delivered("d2", "report-2", t0 + secs(5))
        .await
        .expect("mark_delivered");

    let all = store.list(None, 10).await.expect("list");
    assert_eq!(ids(&all), ["d4", "d3", "d2", "d1"]);
    assert_eq!(all[2].state, State::Delivered);
    assert_eq!(ids(&store.list(None, 2).await.expect("list")), ["d4", "d3"]);
    let queued = store.list(Some(State::Queued), 10).await.expect("list");
    assert_eq!(ids(&queued), ["d4", "d3", "d1"]);
    assert_eq!(
        ids(&store.list(Some(State::Queued), 1).await.expect("list")),
        ["d4"]
    );
    let delivered = store.list(Some(State::Delivered), 10).await.expect("list");
    assert_eq!(ids(&delivered), ["d2"]);
    assert_eq!(delivered[0].report_id.as_deref(), Some("report-2"));
    assert!(
        store
            .list(Some(State::Failed), 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(store.list(None, 0).await.expect("list").is_empty());
}

async fn stats_and_next_due(store: Arc<dyn Store>) {
    let t0 = t0();
    assert_eq!(store.stats().await.expect("stats"), QueueStats::default());
    assert_eq!(store.next_due().await.expect("next_due"), None);

    put(&store, "d1", t0).await;
    put(&store, "d2", t0 + secs(1)).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        stats,
        QueueStats {
            depth: 2,
            oldest: Some(t0)
        }
    );
    assert_eq!(store.next_due().await.expect("next_due"), Some(t0));

    // Delivering still counts towards depth, but is not due.
    assert_eq!(ids(&store.claim(t0, 1, HOUR).await.expect("claim")), ["d1"]);
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        stats,
        QueueStats {
            depth: 2,
            oldest: Some(t0)
        }
    );
    assert_eq!(
        store.next_due().await.expect("next_due"),
        Some(t0 + secs(1))
    );

    store
        .mark_delivered("d1", "report-1", t0 + secs(2))
        .await
        .expect("mark_delivered");
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        stats,
        QueueStats {
            depth: 1,
            oldest: Some(t0 + secs(1))
        }
    );
    store
        .schedule_retry(
            "d2",
            t0 + secs(30),
            &error(None, "busy"),
            None,
            t0 + secs(2),
        )
        .await
        .expect("schedule_retry");
    assert_eq!(
        store.next_due().await.expect("next_due"),
        Some(t0 + secs(30))
    );

    store
        .mark_failed("d2", &error(None, "gave up"), t0 + secs(3))
        .await
        .expect("mark_failed");
    assert_eq!(store.stats().await.expect("stats"), QueueStats::default());
    assert_eq!(store.next_due().await.expect("next_due"), None);
}

async fn prune_removes_old_delivered_and_dedup_keys(store: Arc<dyn Store>) {
    let t0 = t0();
    for id in ["old-delivered", "new-delivered", "old-failed", "old-queued"] {
        put(&store, id, t0).await;
    }
    store
        .mark_delivered("old-delivered", "report-1", t0 + secs(1))
        .await
        .expect("mark_delivered");
    store
        .mark_failed("old-failed", &error(None, "gave up"), t0 + secs(1))
        .await
        .expect("mark_failed");
    let before = t0 + HOUR_CHRONO;
    store
        .mark_delivered("new-delivered", "report-2", before + secs(1))
        .await
        .expect("mark_delivered");
    put(&store, "recent", before + secs(1)).await;

    // One delivery and the four keys accepted at t0.
    assert_eq!(store.prune(before).await.expect("prune"), 5);
    assert_eq!(store.get("old-delivered").await.expect("get"), None);
    for id in ["new-delivered", "old-failed", "old-queued", "recent"] {
        assert!(
            store.get(id).await.expect("get").is_some(),
            "{id} was pruned"
        );
    }
    assert_eq!(store.prune(before).await.expect("prune"), 0);

    // The pruned key is free even within a long window; the recent one is still known.
    let long = Duration::from_secs(86_400);
    let outcome = store
        .enqueue(
            new("again", "key-old-failed", before + secs(2)),
            long,
            ROOMY,
        )
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Queued("again".to_owned()));
    let outcome = store
        .enqueue(new("dup", "key-recent", before + secs(2)), long, ROOMY)
        .await
        .expect("enqueue");
    assert_eq!(outcome, Enqueued::Duplicate("recent".to_owned()));
}

async fn concurrent_enqueue_of_one_key_queues_once(store: Arc<dyn Store>) {
    let t0 = t0();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .enqueue(new(&format!("d{i}"), "shared", t0), WINDOW, ROOMY)
                    .await
                    .expect("enqueue")
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    let queued: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Enqueued::Queued(id) => Some(id),
            Enqueued::Duplicate(_) => None,
        })
        .collect();
    assert_eq!(queued.len(), 1, "{outcomes:?}");
    let first = queued[0].clone();
    for outcome in &outcomes {
        assert!(
            *outcome == Enqueued::Queued(first.clone())
                || *outcome == Enqueued::Duplicate(first.clone()),
            "{outcomes:?}"
        );
    }
    assert_eq!(store.stats().await.expect("stats").depth, 1);
    assert_eq!(
        ids(&store.list(None, 10).await.expect("list")),
        [first.as_str()]
    );
}

async fn concurrent_claims_take_each_delivery_once(store: Arc<dyn Store>) {
    let t0 = t0();
    for i in 0..100 {
        put(&store, &format!("d{i:03}"), t0 + millis(i)).await;
    }
    let now = t0 + secs(1);
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim(now, 3, HOUR).await.expect("claim");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|d| d.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    assert_eq!(all.len(), 100, "claimed {} in total", all.len());
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 100, "some delivery was claimed twice");
    for d in store.list(None, 200).await.expect("list") {
        assert_eq!((d.state, d.attempts), (State::Delivering, 1), "{}", d.id);
    }
    assert!(store.claim(now, 10, HOUR).await.expect("claim").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Digests

fn digest_event(id: &str, route: &str, at: DateTime<Utc>) -> NewDigestEvent {
    NewDigestEvent {
        id: id.to_owned(),
        route: route.to_owned(),
        group: format!("group-{}", id.len() % 2),
        dedup_key: format!("{route}:key-{id}"),
        body_key: None,
        event: Event::Standup(Standup {
            user: Some("octocat".to_owned()),
            done: vec![format!("item {id}")],
            ..Standup::default()
        }),
        received_at: at,
    }
}

async fn keep(store: &Arc<dyn Store>, id: &str, route: &str, at: DateTime<Utc>) {
    let outcome = store
        .add_digest_event(digest_event(id, route, at), WINDOW, ROOMY)
        .await
        .expect("add_digest_event");
    assert_eq!(outcome, Enqueued::Queued(id.to_owned()));
}

/// A builder that makes one delivery per event group and records what it was given.
fn recording_builder(
    seen: Arc<std::sync::Mutex<Vec<(Vec<String>, Option<DateTime<Utc>>)>>>,
    now: DateTime<Utc>,
) -> impl Fn(&[DigestEvent], Option<DateTime<Utc>>) -> Result<Vec<NewDelivery>, String> + Send + Sync
{
    move |events, last| {
        seen.lock()
            .unwrap()
            .push((events.iter().map(|e| e.id.clone()).collect(), last));
        let groups: std::collections::BTreeSet<&str> =
            events.iter().map(|e| e.group.as_str()).collect();
        Ok(groups
            .into_iter()
            .map(|g| {
                new(
                    &format!("digest-{g}-{}", now.timestamp_millis()),
                    &format!("digest:{g}:{}", now.timestamp_millis()),
                    now,
                )
            })
            .collect())
    }
}

async fn digest_events_are_kept_once_per_key(store: Arc<dyn Store>) {
    let t = t0();
    keep(&store, "e1", "daily", t).await;
    keep(&store, "e22", "daily", t + secs(1)).await;
    keep(&store, "x1", "other", t + secs(2)).await;
    let again = store
        .add_digest_event(
            digest_event("e1-again", "daily", t + secs(3)),
            WINDOW,
            ROOMY,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        Enqueued::Queued("e1-again".to_owned()),
        "another key"
    );
    let mut duplicate = digest_event("e9", "daily", t + secs(4));
    duplicate.dedup_key = "daily:key-e1".to_owned();
    let outcome = store
        .add_digest_event(duplicate, WINDOW, ROOMY)
        .await
        .unwrap();
    assert_eq!(outcome, Enqueued::Duplicate("e1".to_owned()));
    // Keys are shared with deliveries: a delivery cannot reuse a digest event's key either.
    let outcome = store
        .enqueue(new("d1", "daily:key-e22", t + secs(5)), WINDOW, ROOMY)
        .await
        .unwrap();
    assert_eq!(outcome, Enqueued::Duplicate("e22".to_owned()));
    let kept = store.digest_events("daily").await.unwrap();
    let ids: Vec<&str> = kept.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["e1", "e22", "e1-again"]);
    assert_eq!(kept[1].group, "group-1");
    assert_eq!(kept[1].received_at, t + secs(1));
    assert!(matches!(&kept[0].event, Event::Standup(s) if s.done == vec!["item e1"]));
    assert_eq!(store.digest_events("other").await.unwrap().len(), 1);
    assert!(store.digest_events("none").await.unwrap().is_empty());
    assert_eq!(store.last_digest("daily").await.unwrap(), None);
}

async fn close_digest_folds_the_period_once(store: Arc<dyn Store>) {
    let t = t0();
    keep(&store, "a", "daily", t).await;
    keep(&store, "bb", "daily", t + secs(1)).await;
    keep(&store, "c", "daily", t + secs(10)).await;
    keep(&store, "z", "other", t).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let end = t + secs(5);
    let build = recording_builder(seen.clone(), end);
    let closed = store
        .close_digest("daily", end, t, &build)
        .await
        .unwrap()
        .expect("made");
    assert_eq!(closed.events, 2);
    assert_eq!(closed.deliveries.len(), 2, "one per group");
    assert_eq!(
        seen.lock().unwrap()[0],
        (vec!["a".to_owned(), "bb".to_owned()], None)
    );
    for id in &closed.deliveries {
        assert_eq!(get(&store, id).await.state, State::Queued);
    }
    let claimed = store.claim(end + secs(1), 10, HOUR).await.unwrap();
    assert_eq!(sorted_ids(&claimed).len(), 2);
    let left: Vec<String> = store
        .digest_events("daily")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, vec!["c"]);
    assert_eq!(
        store.digest_events("other").await.unwrap().len(),
        1,
        "other routes untouched"
    );
    assert_eq!(store.last_digest("daily").await.unwrap(), Some(end));
    // The same digest, or an earlier one, is not made again.
    for again in [end, end - secs(1)] {
        let made = store.close_digest("daily", again, t, &build).await.unwrap();
        assert_eq!(made, None);
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the builder was not called again"
    );
    // The next period starts where this one ended.
    let next = t + secs(20);
    let build = recording_builder(seen.clone(), next);
    let closed = store
        .close_digest("daily", next, t, &build)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.events, 1);
    assert_eq!(seen.lock().unwrap()[1], (vec!["c".to_owned()], Some(end)));
    // An empty period is recorded too, with nothing to send.
    let empty = t + secs(30);
    let build = recording_builder(seen.clone(), empty);
    let closed = store
        .close_digest("daily", empty, t, &build)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((closed.events, closed.deliveries.len()), (0, 0));
    assert_eq!(store.last_digest("daily").await.unwrap(), Some(empty));
}

async fn a_failed_digest_build_changes_nothing(store: Arc<dyn Store>) {
    let t = t0();
    keep(&store, "a", "daily", t).await;
    let failing = |_: &[DigestEvent], _: Option<DateTime<Utc>>| Err("template exploded".to_owned());
    let err = store
        .close_digest("daily", t + secs(1), t, &failing)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Digest(m) if m.contains("exploded")),
        "{err}"
    );
    assert_eq!(store.digest_events("daily").await.unwrap().len(), 1);
    assert_eq!(store.last_digest("daily").await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().depth, 0);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let build = recording_builder(seen, t + secs(1));
    let closed = store
        .close_digest("daily", t + secs(1), t, &build)
        .await
        .unwrap();
    assert_eq!(closed.map(|c| c.events), Some(1), "a later try makes it");
}

async fn concurrent_closes_make_one_digest(store: Arc<dyn Store>) {
    let t = t0();
    for i in 0..20 {
        keep(&store, &format!("e{i:02}"), "daily", t + millis(i)).await;
    }
    let end = t + secs(1);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let build = recording_builder(seen, end);
            store.close_digest("daily", end, t, &build).await
        }));
    }
    let mut made = Vec::new();
    for task in tasks {
        if let Some(closed) = task.await.unwrap().expect("close_digest") {
            made.push(closed);
        }
    }
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].events, 20);
    assert_eq!(
        store.stats().await.unwrap().depth,
        1,
        "one delivery (one group), once"
    );
    assert!(store.digest_events("daily").await.unwrap().is_empty());
}

async fn digest_events_count_toward_max_queued(store: Arc<dyn Store>) {
    let t = t0();
    put(&store, "d1", t).await;
    keep(&store, "e1", "daily", t).await;
    // Two waiting (a delivery and an event): a third is refused, nothing of it kept.
    let refused = store
        .add_digest_event(digest_event("e2", "daily", t + secs(1)), WINDOW, 2)
        .await;
    assert!(matches!(refused, Err(Error::Full(2))), "{refused:?}");
    let kept = store.digest_events("daily").await.unwrap();
    assert_eq!(kept.len(), 1);
    // Its key was not claimed: once there is room, the same event is kept.
    let again = store
        .add_digest_event(digest_event("e2", "daily", t + secs(2)), WINDOW, 3)
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Queued("e2".to_owned()));
}

// ---------------------------------------------------------------------------------------------
// The quota ledger

fn calls(api: &str, route: &str, n: u64) -> QuotaCalls {
    QuotaCalls {
        api: api.to_owned(),
        route: route.to_owned(),
        calls: n,
    }
}

async fn quota_calls_add_up_per_month_api_and_route(store: Arc<dyn Store>) {
    // Arrange
    let quota = store.quota();
    assert_eq!(quota.month("2026-11").await.unwrap().calls, Vec::new());

    // Act
    for (month, api, route, n) in [
        ("2026-11", "report_create", "ci", 1),
        ("2026-11", "report_create", "ci", 2),
        ("2026-11", "report_create", "cd", 1),
        ("2026-11", "template_getbyname", "ci", 1),
        ("2026-12", "report_create", "ci", 5),
    ] {
        quota.add_calls(month, api, route, n).await.unwrap();
    }

    // Assert: sorted by (api, route); months apart; a second handle sees the same count.
    let november = store.quota().month("2026-11").await.unwrap();
    assert_eq!(
        november.calls,
        vec![
            calls("report_create", "cd", 1),
            calls("report_create", "ci", 3),
            calls("template_getbyname", "ci", 1),
        ]
    );
    assert_eq!(november.exhausted, None);
    assert_eq!(
        quota.month("2026-12").await.unwrap().calls,
        vec![calls("report_create", "ci", 5)]
    );
}

async fn quota_exhaustion_is_kept_per_month_first_report_wins(store: Arc<dyn Store>) {
    let quota = store.quota();
    let at = t0();
    quota.mark_exhausted("2026-11", at, "first").await.unwrap();
    quota
        .mark_exhausted("2026-11", at + secs(5), "second")
        .await
        .unwrap();
    let exhausted = quota.month("2026-11").await.unwrap().exhausted.unwrap();
    assert_eq!((exhausted.at, exhausted.detail.as_str()), (at, "first"));
    assert_eq!(quota.month("2026-12").await.unwrap().exhausted, None);
    assert!(quota.clear_exhausted("2026-11").await.unwrap());
    assert!(!quota.clear_exhausted("2026-11").await.unwrap());
    assert_eq!(quota.month("2026-11").await.unwrap().exhausted, None);
}

async fn kept_templates_expire(store: Arc<dyn Store>) {
    let quota = store.quota();
    let key = TemplateKey {
        app_key: "ding-app",
        name: "日报",
        owner: "manager01",
    };
    let other_owner = TemplateKey {
        owner: "lead01",
        ..key
    };
    let now = t0();
    assert_eq!(quota.template(key, now).await.unwrap(), None);
    quota
        .keep_template(key, "{\"id\":\"t1\"}", now + HOUR_CHRONO)
        .await
        .unwrap();
    assert_eq!(
        quota.template(key, now).await.unwrap().as_deref(),
        Some("{\"id\":\"t1\"}")
    );
    assert_eq!(quota.template(other_owner, now).await.unwrap(), None);
    // Replaced by a newer resolution, and gone once expired.
    quota
        .keep_template(key, "{\"id\":\"t2\"}", now + HOUR_CHRONO)
        .await
        .unwrap();
    assert_eq!(
        quota.template(key, now).await.unwrap().as_deref(),
        Some("{\"id\":\"t2\"}")
    );
    assert_eq!(quota.template(key, now + HOUR_CHRONO).await.unwrap(), None);
}

async fn hold_keeps_sending_since_and_the_attempt_uncounted(store: Arc<dyn Store>) {
    // Arrange: a claimed delivery whose create was started (its outcome unknown).
    let t0 = t0();
    put(&store, "d1", t0).await;
    store.claim(t0, 1, HOUR).await.expect("claim");
    store.mark_sending("d1", t0).await.expect("mark_sending");

    // Act
    let until = t0 + secs(60);
    let reason = error(None, "quota_hold: reserve reached");
    store
        .hold("d1", until, &reason, t0 + secs(1))
        .await
        .expect("hold");

    // Assert: queued, no attempt spent, still to be reconciled, the reason shown.
    let d = get(&store, "d1").await;
    assert_eq!(d.state, State::Queued);
    assert_eq!(d.attempts, 0);
    assert_eq!(d.next_attempt_at, Some(until));
    assert_eq!(d.sending_since, Some(t0));
    assert_eq!(d.last_error, Some(reason));
    assert!(
        store
            .claim(t0 + secs(59), 1, HOUR)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store.claim(until, 1, HOUR).await.expect("claim");
    assert_eq!(ids(&again), ["d1"]);
    assert_eq!(again[0].sending_since, Some(t0));
}

// ---------------------------------------------------------------------------------------------
// Two dedup keys: the delivery id and the body hash (a replay with a new id is a duplicate)

async fn enqueue(store: &Arc<dyn Store>, new: NewDelivery) -> Enqueued {
    store.enqueue(new, WINDOW, ROOMY).await.expect("enqueue")
}

async fn either_dedup_key_seen_is_a_duplicate(store: Arc<dyn Store>) {
    let t = t0();
    let queued = |id: &str| Enqueued::Queued(id.to_owned());
    let duplicate = |id: &str| Enqueued::Duplicate(id.to_owned());
    assert_eq!(
        enqueue(&store, new2("d1", "id-a", "body-x", t)).await,
        queued("d1")
    );
    // A replay: new id, same body.
    let replay = new2("d2", "id-b", "body-x", t + secs(1));
    assert_eq!(enqueue(&store, replay).await, duplicate("d1"));
    // A redelivery: same id, another body.
    let redelivery = new2("d3", "id-a", "body-y", t + secs(2));
    assert_eq!(enqueue(&store, redelivery).await, duplicate("d1"));
    // Both keys unseen.
    let fresh = new2("d4", "id-c", "body-z", t + secs(3));
    assert_eq!(enqueue(&store, fresh).await, queued("d4"));
    // A duplicate claims neither of its keys: d2's id and d3's body are still free.
    let reuse = new2("d5", "id-b", "body-y", t + secs(4));
    assert_eq!(enqueue(&store, reuse).await, queued("d5"));
    // The body key meets a hash-only key (a source without delivery ids) and back.
    assert_eq!(
        enqueue(&store, new("d6", "body-v", t + secs(5))).await,
        queued("d6")
    );
    let replay = new2("d7", "id-e", "body-v", t + secs(6));
    assert_eq!(enqueue(&store, replay).await, duplicate("d6"));
    assert_eq!(
        enqueue(&store, new("d8", "body-z", t + secs(7))).await,
        duplicate("d4")
    );
    for id in ["d2", "d3", "d7", "d8"] {
        assert_eq!(store.get(id).await.expect("get"), None, "{id}");
    }
    assert_eq!(get(&store, "d1").await.dedup_key, "id-a");
    assert_eq!(store.stats().await.expect("stats").depth, 4);
}

async fn both_dedup_keys_are_free_after_the_window(store: Arc<dyn Store>) {
    let t = t0();
    assert_eq!(
        enqueue(&store, new2("d1", "id-a", "body-x", t)).await,
        Enqueued::Queued("d1".to_owned())
    );
    let just_inside = new2("d2", "id-b", "body-x", t + secs(59));
    assert_eq!(
        enqueue(&store, just_inside).await,
        Enqueued::Duplicate("d1".to_owned())
    );
    // Exactly one window later both keys are free again…
    let t1 = t + secs(60);
    assert_eq!(
        enqueue(&store, new2("d3", "id-b", "body-x", t1)).await,
        Enqueued::Queued("d3".to_owned())
    );
    assert_eq!(
        enqueue(&store, new2("d4", "id-a", "body-y", t1)).await,
        Enqueued::Queued("d4".to_owned())
    );
    // …and now point to the new deliveries.
    let replay = new2("d5", "id-c", "body-x", t1 + secs(1));
    assert_eq!(
        enqueue(&store, replay).await,
        Enqueued::Duplicate("d3".to_owned())
    );
    let redelivery = new2("d6", "id-a", "body-w", t1 + secs(1));
    assert_eq!(
        enqueue(&store, redelivery).await,
        Enqueued::Duplicate("d4".to_owned())
    );
}

async fn prune_removes_both_dedup_keys(store: Arc<dyn Store>) {
    let t = t0();
    assert_eq!(
        enqueue(&store, new2("d1", "id-a", "body-x", t)).await,
        Enqueued::Queued("d1".to_owned())
    );
    // The queued delivery stays; its two keys go.
    assert_eq!(store.prune(t + secs(1)).await.expect("prune"), 2);
    let long = Duration::from_secs(86_400);
    for (id, key, body) in [("d2", "id-b", "body-x"), ("d3", "id-a", "body-y")] {
        let outcome = store
            .enqueue(new2(id, key, body, t + secs(2)), long, ROOMY)
            .await
            .expect("enqueue");
        assert_eq!(outcome, Enqueued::Queued(id.to_owned()));
    }
}

/// Runs `news` as concurrent enqueues (so the SQL stores commit them in one group or a few).
async fn enqueue_together(store: &Arc<dyn Store>, news: Vec<NewDelivery>) -> Vec<Enqueued> {
    let barrier = Arc::new(tokio::sync::Barrier::new(news.len()));
    let tasks: Vec<_> = news
        .into_iter()
        .map(|new| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.enqueue(new, WINDOW, ROOMY).await.expect("enqueue")
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

async fn replays_in_one_group_queue_once(store: Arc<dyn Store>) {
    let t = t0();
    let news = (0..8)
        .map(|i| new2(&format!("d{i}"), &format!("id-{i}"), "body", t))
        .collect();
    let outcomes = enqueue_together(&store, news).await;
    let queued: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Enqueued::Queued(id) => Some(id),
            Enqueued::Duplicate(_) => None,
        })
        .collect();
    assert_eq!(queued.len(), 1, "{outcomes:?}");
    let first = queued[0].clone();
    assert!(
        outcomes
            .iter()
            .all(|o| *o == Enqueued::Queued(first.clone())
                || *o == Enqueued::Duplicate(first.clone())),
        "{outcomes:?}"
    );
    assert_eq!(store.stats().await.expect("stats").depth, 1);
    // The duplicates claimed nothing: their ids are free; the body points to the first.
    for i in 0..8 {
        let id = format!("d{i}");
        let probe = new2(&format!("p{i}"), &format!("id-{i}"), &format!("b{i}"), t);
        let expected = if id == first {
            Enqueued::Duplicate(first.clone())
        } else {
            Enqueued::Queued(format!("p{i}"))
        };
        assert_eq!(enqueue(&store, probe).await, expected, "{id}");
    }
    let probe = new2("q", "id-q", "body", t + secs(1));
    assert_eq!(enqueue(&store, probe).await, Enqueued::Duplicate(first));
}

async fn overlapping_keys_in_one_group_decide_as_in_arrival_order(store: Arc<dyn Store>) {
    let t = t0();
    // Ids and bodies shared in a pattern: whatever the order, the outcome must be that of
    // some sequential order.
    let keys = |i: usize| (format!("id-{}", i % 3), format!("body-{}", i % 4));
    let news = (0..12)
        .map(|i| {
            let (key, body) = keys(i);
            new2(&format!("d{i:02}"), &key, &body, t)
        })
        .collect();
    let outcomes = enqueue_together(&store, news).await;
    let mut owner: std::collections::HashMap<String, String> = Default::default();
    let mut queued = HashSet::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        if let Enqueued::Queued(id) = outcome {
            assert_eq!(*id, format!("d{i:02}"));
            queued.insert(id.clone());
            let (key, body) = keys(i);
            for key in [key, body] {
                let earlier = owner.insert(key.clone(), id.clone());
                assert_eq!(earlier, None, "{key} queued twice: {outcomes:?}");
            }
        }
    }
    for (i, outcome) in outcomes.iter().enumerate() {
        if let Enqueued::Duplicate(first) = outcome {
            let (key, body) = keys(i);
            assert!(
                owner.get(&key) == Some(first) || owner.get(&body) == Some(first),
                "d{i:02} is a duplicate of {first}, which does not own its keys: {outcomes:?}"
            );
        }
    }
    assert_eq!(
        store.stats().await.expect("stats").depth,
        queued.len() as u64
    );
    // Every key points to its owner or, when nobody queued under it, is free.
    let mut probes = 0;
    for key in (0..3)
        .map(|i| format!("id-{i}"))
        .chain((0..4).map(|i| format!("body-{i}")))
    {
        probes += 1;
        let probe_id = format!("p{probes}");
        let probe = new2(
            &probe_id,
            &key,
            &format!("probe-body-{probes}"),
            t + secs(1),
        );
        let expected = match owner.get(&key) {
            Some(id) => Enqueued::Duplicate(id.clone()),
            None => Enqueued::Queued(probe_id),
        };
        assert_eq!(
            enqueue(&store, probe).await,
            expected,
            "{key}: {outcomes:?}"
        );
    }
}

async fn digest_event_replay_is_a_duplicate(store: Arc<dyn Store>) {
    let t = t0();
    let event = |id: &str, key: &str, body: &str, at| NewDigestEvent {
        dedup_key: key.to_owned(),
        body_key: Some(body.to_owned()),
        ..digest_event(id, "daily", at)
    };
    let add = |new: NewDigestEvent| {
        let store = store.clone();
        async move {
            store
                .add_digest_event(new, WINDOW, ROOMY)
                .await
                .expect("add_digest_event")
        }
    };
    let first = event("e1", "daily:id:1", "daily:sha256:1", t);
    assert_eq!(add(first).await, Enqueued::Queued("e1".to_owned()));
    // A replay: its id key is claimed first (it sorts first), then its body is found taken.
    let replay = event("e2", "daily:id:2", "daily:sha256:1", t + secs(1));
    assert_eq!(add(replay).await, Enqueued::Duplicate("e1".to_owned()));
    let redelivery = event("e3", "daily:id:1", "daily:sha256:3", t + secs(2));
    assert_eq!(add(redelivery).await, Enqueued::Duplicate("e1".to_owned()));
    // The replay's id was not kept claimed.
    let fresh = event("e4", "daily:id:2", "daily:sha256:4", t + secs(3));
    assert_eq!(add(fresh).await, Enqueued::Queued("e4".to_owned()));
    // Keys are shared with deliveries.
    let delivery = new2("d1", "daily:id:9", "daily:sha256:4", t + secs(4));
    assert_eq!(
        enqueue(&store, delivery).await,
        Enqueued::Duplicate("e4".to_owned())
    );
    let kept = store.digest_events("daily").await.expect("digest_events");
    let ids: Vec<&str> = kept.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["e1", "e4"]);
}
