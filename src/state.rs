//! [`AppState`]: what the handlers of both listeners share. Cheap to clone.

use std::sync::Arc;

use crate::config::Settings;
use crate::delivery::DeliveryHandle;
use crate::mapping::Mapper;
use crate::metrics::Metrics;
use crate::sandbox::FakeDingTalk;
use crate::store::Store;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// Compiled routes.
    pub mapper: Arc<Mapper>,
    /// The delivery store.
    pub store: Arc<dyn Store>,
    /// Wakes workers; `?wait=` subscriptions.
    pub delivery: DeliveryHandle,
    /// Series.
    pub metrics: Metrics,
    /// The built-in DingTalk stand-in, in `serve --sandbox`.
    pub sandbox: Option<FakeDingTalk>,
}
