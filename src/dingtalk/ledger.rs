//! [`Ledger`]: what the client reports about the metered calls it makes (so the organisation's
//! monthly quota can be counted and protected elsewhere) and where it keeps resolved templates
//! beyond its own memory (so a restart or another replica does not look them up again). The
//! client knows nothing of months, routes or stores; the relay's quota module implements it.

use std::time::Duration;

use async_trait::async_trait;

use super::model::ResolvedTemplate;

/// Told about every metered call; asked for and given resolved templates.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// A metered request (`api`) was sent and may have been counted by DingTalk.
    async fn spent(&self, api: &'static str);
    /// DingTalk answered 90020: the organisation's monthly quota is used up.
    async fn exhausted(&self, detail: &str);
    /// A template resolved earlier (by this process or another), with the time it still has
    /// to live, unless it expired.
    async fn template(
        &self,
        app_key: &str,
        name: &str,
        owner: &str,
    ) -> Option<(ResolvedTemplate, Duration)>;
    /// Keeps a resolved template for `ttl`.
    async fn keep_template(
        &self,
        app_key: &str,
        name: &str,
        owner: &str,
        template: &ResolvedTemplate,
        ttl: Duration,
    );
}
