//! [`AppState`]: what the handlers of both listeners share, and [`Runtime`], the part that a
//! configuration reload swaps. Cheap to clone.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::delivery::DeliveryHandle;
use crate::dingtalk::DingTalkClient;
use crate::inbound::rate_limit::RateLimiter;
use crate::mapping::Mapper;
use crate::metrics::Metrics;
use crate::quota::Quota;
use crate::sandbox::FakeDingTalk;
use crate::startup::Reloader;
use crate::store::Store;

/// What a configuration reload replaces as one unit, so a request or a delivery always sees
/// settings, routes and client from the same configuration.
pub struct Runtime {
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// Compiled routes.
    pub mapper: Arc<Mapper>,
    /// The DingTalk client for these settings (apps, base URL, limits).
    pub client: DingTalkClient,
}

/// The current [`Runtime`], swapped atomically on reload.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The current configuration, routes and client.
    pub runtime: SharedRuntime,
    /// The delivery store.
    pub store: Arc<dyn Store>,
    /// Wakes workers; `?wait=` subscriptions.
    pub delivery: DeliveryHandle,
    /// Series.
    pub metrics: Metrics,
    /// The built-in DingTalk stand-in, in `serve --sandbox`.
    pub sandbox: Option<FakeDingTalk>,
    /// Re-reads the configuration (SIGHUP, `POST /-/reload`).
    pub reloader: Arc<Reloader>,
    /// The token buckets of routes with a `rate_limit`.
    pub rate_limits: Arc<RateLimiter>,
    /// The monthly DingTalk call budget.
    pub quota: Arc<Quota>,
}

impl AppState {
    /// The current configuration.
    pub fn settings(&self) -> Arc<Settings> {
        self.runtime.load().settings.clone()
    }
}
