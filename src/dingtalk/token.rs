//! The access_token cache: one entry per app in moka, living `expires_in − margin`; moka's
//! `try_get_with` runs one fetch per app however many callers wait (single-flight).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

/// A cached token. `value` is sent only as the `access_token` query parameter.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: Arc<str>,
    ttl: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token that DingTalk says lives `expires_in` seconds, refreshed `margin` early.
    pub(crate) fn new(value: String, expires_in: i64, margin: Duration) -> Self {
        let lifetime = Duration::from_secs(u64::try_from(expires_in.max(1)).unwrap_or(1));
        // A margin as long as the lifetime would make the token useless; keep half of it then.
        let ttl = lifetime
            .checked_sub(margin)
            .filter(|t| !t.is_zero())
            .unwrap_or(lifetime / 2);
        Self {
            value: value.into(),
            ttl,
        }
    }
}

struct TokenExpiry;

impl Expiry<String, Token> for TokenExpiry {
    fn expire_after_create(&self, _key: &String, token: &Token, _now: Instant) -> Option<Duration> {
        Some(token.ttl)
    }
}

/// Tokens keyed by app name.
#[derive(Clone)]
pub(crate) struct TokenCache {
    cache: Cache<String, Token>,
}

impl TokenCache {
    pub(crate) fn new() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(1024)
                .expire_after(TokenExpiry)
                .build(),
        }
    }

    /// The app's token, fetched by `fetch` when absent; concurrent callers share one fetch.
    pub(crate) async fn get<F, E>(&self, app: &str, fetch: F) -> Result<Token, Arc<E>>
    where
        F: std::future::Future<Output = Result<Token, E>>,
        E: Send + Sync + 'static,
    {
        self.cache.try_get_with(app.to_owned(), fetch).await
    }

    /// Drops the app's token if it is still `failed` (another caller may have refreshed it).
    pub(crate) async fn invalidate(&self, app: &str, failed: &Token) {
        if let Some(current) = self.cache.get(app).await
            && current.value == failed.value
        {
            self.cache.invalidate(app).await;
        }
    }

    /// Drops the app's token whatever it is (its credentials changed).
    pub(crate) async fn forget(&self, app: &str) {
        self.cache.invalidate(app).await;
    }

    /// Drops every token (configuration reload).
    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }
}
