//! The quota ledger ([`QuotaStore`]): metered DingTalk calls counted per month, API and route,
//! the months DingTalk declared exhausted (90020), and resolved templates kept with their
//! expiry so restarts and other replicas do not look them up again. Every backend has one
//! ([`super::Store::quota`]); on PostgreSQL all replicas share it. The SQL is written once for
//! both SQL backends (the parameter syntax is the only difference).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Result;
use super::sql::{from_ms, ms, unavailable};

/// Calls counted for one (API, route) in a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCalls {
    /// API name (`report_create`, `template_getbyname`, `report_list`).
    pub api: String,
    /// Route whose delivery made the calls (`-` for calls made outside a route's work).
    pub route: String,
    /// Calls.
    pub calls: u64,
}

/// DingTalk's word that the organisation's quota is used up for a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// When it was first seen (by any replica).
    pub at: DateTime<Utc>,
    /// The error DingTalk gave.
    pub detail: String,
}

/// A month's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthUse {
    /// Calls by (API, route), sorted.
    pub calls: Vec<QuotaCalls>,
    /// Set when DingTalk answered 90020 this month.
    pub exhausted: Option<Exhausted>,
}

/// Which template a cached resolution is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TemplateKey<'a> {
    /// The app's AppKey (templates belong to the organisation the app is in).
    pub app_key: &'a str,
    /// Template name.
    pub name: &'a str,
    /// The userid it was looked up as.
    pub owner: &'a str,
}

/// Where the quota is counted. Implementations are shared by every task and, for the durable
/// ones, by every replica using the same store.
#[async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// Adds `calls` to the count of (`month`, `api`, `route`). Durable once it returns.
    async fn add_calls(&self, month: &str, api: &str, route: &str, calls: u64) -> Result<()>;
    /// What `month` has spent, and whether it is exhausted.
    async fn month(&self, month: &str) -> Result<MonthUse>;
    /// Records that DingTalk answered 90020 in `month` (the first report wins).
    async fn mark_exhausted(&self, month: &str, at: DateTime<Utc>, detail: &str) -> Result<()>;
    /// Forgets that `month` is exhausted (the organisation was upgraded); whether it was.
    async fn clear_exhausted(&self, month: &str) -> Result<bool>;
    /// The cached resolution of `key` (JSON) unless it expired by `now`.
    async fn template(&self, key: TemplateKey<'_>, now: DateTime<Utc>) -> Result<Option<String>>;
    /// Keeps a resolution of `key` (JSON) until `expires_at`, dropping expired ones.
    async fn keep_template(
        &self,
        key: TemplateKey<'_>,
        template: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
}

/// The ledger of the memory store.
#[derive(Default)]
pub struct MemoryQuota {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    calls: HashMap<(String, String, String), u64>,
    exhausted: HashMap<String, Exhausted>,
    templates: HashMap<(String, String, String), (String, DateTime<Utc>)>,
}

impl MemoryQuota {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // Every update is one map operation: a panic elsewhere cannot leave it half-done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn template_key(key: TemplateKey<'_>) -> (String, String, String) {
    (
        key.app_key.to_owned(),
        key.name.to_owned(),
        key.owner.to_owned(),
    )
}

#[async_trait]
impl QuotaStore for MemoryQuota {
    async fn add_calls(&self, month: &str, api: &str, route: &str, calls: u64) -> Result<()> {
        let key = (month.to_owned(), api.to_owned(), route.to_owned());
        let mut inner = self.lock();
        let count = inner.calls.entry(key).or_default();
        *count = count.saturating_add(calls);
        Ok(())
    }

    async fn month(&self, month: &str) -> Result<MonthUse> {
        let inner = self.lock();
        let mut calls: Vec<QuotaCalls> = inner
            .calls
            .iter()
            .filter(|((m, _, _), _)| m == month)
            .map(|((_, api, route), calls)| QuotaCalls {
                api: api.clone(),
                route: route.clone(),
                calls: *calls,
            })
            .collect();
        calls.sort_by(|a, b| (&a.api, &a.route).cmp(&(&b.api, &b.route)));
        Ok(MonthUse {
            calls,
            exhausted: inner.exhausted.get(month).cloned(),
        })
    }

    async fn mark_exhausted(&self, month: &str, at: DateTime<Utc>, detail: &str) -> Result<()> {
        self.lock()
            .exhausted
            .entry(month.to_owned())
            .or_insert_with(|| Exhausted {
                at,
                detail: detail.to_owned(),
            });
        Ok(())
    }

    async fn clear_exhausted(&self, month: &str) -> Result<bool> {
        Ok(self.lock().exhausted.remove(month).is_some())
    }

    async fn template(&self, key: TemplateKey<'_>, now: DateTime<Utc>) -> Result<Option<String>> {
        Ok(self
            .lock()
            .templates
            .get(&template_key(key))
            .filter(|(_, expires)| *expires > now)
            .map(|(t, _)| t.clone()))
    }

    async fn keep_template(
        &self,
        key: TemplateKey<'_>,
        template: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut inner = self.lock();
        let now = Utc::now();
        inner.templates.retain(|_, (_, expires)| *expires > now);
        inner
            .templates
            .insert(template_key(key), (template.to_owned(), expires_at));
        Ok(())
    }
}

/// Writes the ledger of one SQL backend: `$name` the struct, `$pool` its pool type, `$p` its
/// n-th parameter. `writer` takes writes, `reader` reads (the same pool on PostgreSQL).
macro_rules! quota_ledger {
    ($name:ident, $pool:ty, $p:expr) => {
        /// The ledger in this SQL store's tables (migration 0017).
        pub(crate) struct $name {
            pub(crate) writer: $pool,
            pub(crate) reader: $pool,
        }

        #[async_trait]
        impl QuotaStore for $name {
            async fn add_calls(
                &self,
                month: &str,
                api: &str,
                route: &str,
                calls: u64,
            ) -> Result<()> {
                let p: fn(u8) -> String = $p;
                sqlx::query(&format!(
                    "INSERT INTO quota_calls (month, api, route, calls) VALUES ({}, {}, {}, {}) \
                     ON CONFLICT (month, api, route) \
                     DO UPDATE SET calls = quota_calls.calls + excluded.calls",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ))
                .bind(month)
                .bind(api)
                .bind(route)
                .bind(i64::try_from(calls).unwrap_or(i64::MAX))
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn month(&self, month: &str) -> Result<MonthUse> {
                let p: fn(u8) -> String = $p;
                let rows: Vec<(String, String, i64)> = sqlx::query_as(&format!(
                    "SELECT api, route, calls FROM quota_calls WHERE month = {} \
                     ORDER BY api, route",
                    p(1)
                ))
                .bind(month)
                .fetch_all(&self.reader)
                .await
                .map_err(unavailable)?;
                let exhausted: Option<(i64, String)> = sqlx::query_as(&format!(
                    "SELECT exhausted_at, detail FROM quota_exhausted WHERE month = {}",
                    p(1)
                ))
                .bind(month)
                .fetch_optional(&self.reader)
                .await
                .map_err(unavailable)?;
                Ok(MonthUse {
                    calls: rows
                        .into_iter()
                        .map(|(api, route, calls)| QuotaCalls {
                            api,
                            route,
                            calls: u64::try_from(calls).unwrap_or_default(),
                        })
                        .collect(),
                    exhausted: exhausted.map(|(at, detail)| Exhausted {
                        at: from_ms(at),
                        detail,
                    }),
                })
            }

            async fn mark_exhausted(
                &self,
                month: &str,
                at: DateTime<Utc>,
                detail: &str,
            ) -> Result<()> {
                let p: fn(u8) -> String = $p;
                sqlx::query(&format!(
                    "INSERT INTO quota_exhausted (month, exhausted_at, detail) VALUES ({}, {}, {}) \
                     ON CONFLICT (month) DO NOTHING",
                    p(1),
                    p(2),
                    p(3)
                ))
                .bind(month)
                .bind(ms(at))
                .bind(detail)
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn clear_exhausted(&self, month: &str) -> Result<bool> {
                let p: fn(u8) -> String = $p;
                let done = sqlx::query(&format!(
                    "DELETE FROM quota_exhausted WHERE month = {}",
                    p(1)
                ))
                .bind(month)
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
                Ok(done.rows_affected() > 0)
            }

            async fn template(
                &self,
                key: TemplateKey<'_>,
                now: DateTime<Utc>,
            ) -> Result<Option<String>> {
                let p: fn(u8) -> String = $p;
                sqlx::query_scalar(&format!(
                    "SELECT template FROM template_cache \
                     WHERE app_key = {} AND name = {} AND owner = {} AND expires_at > {}",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ))
                .bind(key.app_key)
                .bind(key.name)
                .bind(key.owner)
                .bind(ms(now))
                .fetch_optional(&self.reader)
                .await
                .map_err(unavailable)
            }

            async fn keep_template(
                &self,
                key: TemplateKey<'_>,
                template: &str,
                expires_at: DateTime<Utc>,
            ) -> Result<()> {
                let p: fn(u8) -> String = $p;
                sqlx::query(&format!(
                    "DELETE FROM template_cache WHERE expires_at <= {}",
                    p(1)
                ))
                .bind(ms(Utc::now()))
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
                sqlx::query(&format!(
                    "INSERT INTO template_cache (app_key, name, owner, template, expires_at) \
                     VALUES ({}, {}, {}, {}, {}) ON CONFLICT (app_key, name, owner) \
                     DO UPDATE SET template = excluded.template, expires_at = excluded.expires_at",
                    p(1),
                    p(2),
                    p(3),
                    p(4),
                    p(5)
                ))
                .bind(key.app_key)
                .bind(key.name)
                .bind(key.owner)
                .bind(template)
                .bind(ms(expires_at))
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
                Ok(())
            }
        }
    };
}

quota_ledger!(SqliteQuota, sqlx::SqlitePool, |n| format!("?{n}"));
quota_ledger!(PostgresQuota, sqlx::PgPool, |n| format!("${n}"));
