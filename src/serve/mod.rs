//! The service below both front doors, the JSON API (`api`) and the SSR pages (`web`): feature
//! reads, recommendations, readiness, and the state every handler shares. Neither front door
//! imports the other; both read through here.

mod active;
mod evaluated;
mod features;
mod recommendations;
mod watchers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::cdc::BrokerProbe;
use crate::features::{FeatureSet, ProductCatalog};
use crate::recommend::Recommender;
use crate::store::FeatureStore;

pub use active::ActiveUsers;
pub use evaluated::{Evaluated, EvaluationCache, read_now, read_now_many};
pub use features::{EntityFeatures, FeatureRequest, read_and_evaluate, read_user_features};
pub use recommendations::{Answer, Degraded, RecommendationCache, Source, recommend_for};
pub use watchers::{Watch, Watchers};

/// What a follower of the store's change notifications is told.
enum Change<'a> {
    /// This entity's state changed (its cache key).
    Entity(&'a str),
    /// Notifications were missed: anything may have changed.
    Missed,
}

/// Calls `on_change` for every change notification of the store until `shutdown`.
fn follow_changes(
    store: &FeatureStore,
    shutdown: tokio_util::sync::CancellationToken,
    mut on_change: impl FnMut(Change<'_>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = store.subscribe_changes();
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(key) => on_change(Change::Entity(&key)),
                Err(RecvError::Lagged(_)) => on_change(Change::Missed),
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// Seconds a caller turned away for load should wait before trying again (HTTP `Retry-After`),
/// for the API and the pages alike.
pub const RETRY_AFTER: &str = "1";

/// Whether this instance should receive traffic.
#[derive(Default)]
pub struct Readiness {
    draining: AtomicBool,
    /// Cancelled when draining starts: long-lived responses (live streams) end, so that the
    /// server's graceful shutdown does not wait for them forever.
    drain: tokio_util::sync::CancellationToken,
}

impl Readiness {
    /// From now on `/readyz` answers 503, so load balancers stop sending requests, and live
    /// streams close (browsers reconnect to another instance).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain.cancel();
    }

    /// Resolves once draining has started.
    pub async fn draining(&self) {
        self.drain.cancelled().await;
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// What every handler shares, behind one `Arc`: axum hands each request its own clone of the
/// state, which is then one reference count rather than one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

impl From<Services> for AppState {
    fn from(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

/// The services below the front doors, and their settings.
pub struct Services {
    pub store: Arc<FeatureStore>,
    pub features: Arc<FeatureSet>,
    pub catalog: Arc<ProductCatalog>,
    /// Evaluations reused for reads at "now" within a granule of read time.
    pub evaluations: Arc<EvaluationCache>,
    /// Recommendation answers reused while their user's evaluation and the index are unchanged.
    pub recommendations: Arc<RecommendationCache>,
    /// One flag per dimension reader, set once it has read its topic up to the end at start;
    /// empty when no dimension reader runs (then readiness does not check them).
    pub catalog_loaded: Vec<Arc<AtomicBool>>,
    pub readiness: Arc<Readiness>,
    /// `None` when no consumer runs (then readiness does not check the broker).
    pub broker: Option<BrokerProbe>,
    pub metrics: Option<PrometheusHandle>,
    /// The product index recommendations rank from.
    pub recommender: Arc<Recommender>,
    /// How long a page waits for a user's features before rendering popular products.
    pub render_deadline: Duration,
    /// Live streams by user, within their own budget (`api.max_streams`).
    pub watchers: Arc<Watchers>,
    /// Users seen active lately, for the storefront's user picker.
    pub active_users: Arc<ActiveUsers>,
    /// What the dashboard shows: sampled metrics, slot and connector health.
    pub ops: Arc<crate::ops::OpsView>,
}
