//! DingTalk's rate limit shared by replicas on one PostgreSQL store.

use std::time::Duration;

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use sqlx::Connection;

use crate::helpers::{TestConfig, fresh_postgres_database, job_status_n, poll_until, spawn_app_on};

#[tokio::test]
async fn two_replicas_on_one_postgres_store_stay_within_max_qps_together() {
    // Arrange: two relays on one database, both sending to one fake DingTalk that answers
    // 90018 above max_qps (+1) creates in a calendar second. Each relay alone keeps max_qps, so
    // unshared limits would send twice as many.
    let Some((server, database, store_url)) =
        fresh_postgres_database("the shared rate limit test").await
    else {
        return;
    };
    const MAX_QPS: u32 = 10;
    // One call of headroom at the fake: a create leaves a little after its slot (the answer's
    // trip back, a busy runtime), so on a loaded machine one delayed call can land in the next
    // calendar second. Unshared limits would send about 2 × MAX_QPS a second and still be
    // refused about MAX_QPS - 1 times a second.
    let fake_options = FakeOptions {
        qps_limit: MAX_QPS + 1,
        ..FakeOptions::default()
    };
    let (fake, base_url) = FakeDingTalk::spawn(fake_options.clone()).await.unwrap();
    let config = || TestConfig {
        store_url: store_url.clone(),
        max_qps: MAX_QPS,
        fake: fake_options.clone(),
        ..TestConfig::default()
    };
    let first = spawn_app_on(config(), fake.clone(), base_url.clone()).await;
    let second = spawn_app_on(config(), fake.clone(), base_url).await;

    // Act: 40 webhooks, half to each replica; both replicas deliver from the shared queue.
    const WEBHOOKS: usize = 40;
    for n in 0..WEBHOOKS {
        let app = if n % 2 == 0 { &first } else { &second };
        app.accept(&job_status_n(n)).await;
    }
    let delivered = poll_until(Duration::from_secs(30), || async {
        fake.reports().len() >= WEBHOOKS
    })
    .await;

    // Assert: everything delivered, never above the limit.
    assert!(
        delivered,
        "{} of {WEBHOOKS} delivered",
        fake.reports().len()
    );
    assert_eq!(fake.qps_rejections(), 0, "creates answered 90018");
    assert_eq!(fake.create_calls(), WEBHOOKS, "no create was resent");
    first.stop().await;
    second.stop().await;
    let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
