//! Keeps the newest [`ProductIndex`] for requests: every `recommend.refresh` it evaluates again
//! the products the [`Tracker`] says are due (changed, as the store announces, or with a window
//! that moved) and publishes a new index with the rankings.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::index::ProductIndex;
use super::tracker::Tracker;
use crate::features::{Entity, FeatureSet, ProductCatalog};
use crate::store::{EntityRef, FeatureStore};

/// Holds the newest index and counts its replacements (live pages look whether it changed).
pub struct Recommender {
    index: RwLock<Arc<ProductIndex>>,
    /// How many times the index was replaced.
    generation: AtomicU64,
}

impl Default for Recommender {
    fn default() -> Self {
        Self {
            index: RwLock::new(Arc::new(ProductIndex::default())),
            generation: AtomicU64::new(0),
        }
    }
}

impl Recommender {
    pub fn index(&self) -> Arc<ProductIndex> {
        Arc::clone(&self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn replace(&self, index: ProductIndex) {
        *self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(index);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many times the index was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps the index up to date every `every` until `shutdown`: each tick evaluates again
    /// only the products whose state changed (as the store's change notifications say) or whose
    /// windows moved since; everything after notifications were missed, a table mark (snapshot
    /// run, TRUNCATE, generation switch) or, when tracked values join product attributes, a
    /// catalog change. When Redis cannot be read the products wait for the next tick.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        store: Arc<FeatureStore>,
        features: Arc<FeatureSet>,
        catalog: Arc<ProductCatalog>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let recommender = Arc::clone(self);
        let pending = Arc::new(Mutex::new(Pending { all: true, ids: HashSet::new() }));
        let listener = listen(&store, features.item, Arc::clone(&pending), shutdown.clone());
        tokio::spawn(async move {
            let mut tracker = Tracker::new(&features);
            let mut catalog_seen = None;
            let mut ticks = crate::periodic::Ticks::new(every, shutdown);
            while ticks.next().await {
                let taken = std::mem::take(&mut *lock(&pending));
                let version = catalog.version();
                let catalog_moved = catalog_seen.replace(version) != Some(version);
                let all = taken.all || (catalog_moved && tracker.joins_catalog());
                let refreshed = recommender
                    .refresh(&store, &features, &catalog, &mut tracker, all, &taken.ids)
                    .await;
                if !refreshed {
                    lock(&pending).merge(taken);
                }
            }
            listener.abort();
        })
    }

    /// Evaluates the products due (all of them when `all`), then publishes the index; `false`
    /// when Redis could not be read (the index keeps the products' previous signals).
    async fn refresh(
        &self,
        store: &FeatureStore,
        set: &FeatureSet,
        catalog: &ProductCatalog,
        tracker: &mut Tracker,
        all: bool,
        changed: &HashSet<String>,
    ) -> bool {
        // Evaluated as of before the read: a change the read sees early is one more, not one
        // less, and a window that moves meanwhile is due at the next tick.
        let at = Utc::now();
        let ids: Vec<String> = catalog.read(|products| {
            tracker.retain(products);
            if all {
                return products.keys().cloned().collect();
            }
            let mut ids = tracker.due(at.timestamp_micros(), products);
            ids.extend(changed.iter().filter(|id| products.contains_key(*id)).cloned());
            ids.sort_unstable();
            ids.dedup();
            ids
        });
        let mut read = true;
        if !ids.is_empty() {
            let refs: Vec<EntityRef> = ids.iter().map(|id| EntityRef::new(set.item, id)).collect();
            metrics::counter!(crate::telemetry::INDEX_EVALUATIONS).increment(ids.len() as u64);
            match store.read_uncached(&refs).await {
                Some(states) => catalog.view(|dimensions| {
                    for (id, state) in ids.iter().zip(&states) {
                        tracker.update(set, id, state.as_ref(), at, dimensions);
                    }
                }),
                None => read = false,
            }
        }
        let index = catalog.read(|products| tracker.index(products, at));
        self.replace(index);
        read
    }
}

/// Products changed since the last tick.
#[derive(Default)]
struct Pending {
    /// Anything may have changed.
    all: bool,
    ids: HashSet<String>,
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        self.all |= other.all;
        self.ids.extend(other.ids);
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Notes every product the store announces as changed, and everything when announcements were
/// missed or a table mark may have been recorded.
fn listen(
    store: &FeatureStore,
    item: Entity,
    pending: Arc<Mutex<Pending>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = store.subscribe_changes();
    let mut marks = store.watch_marks();
    let prefix = format!("{}:", item.label());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(key) => {
                        if let Some(id) = key.strip_prefix(&prefix) {
                            lock(&pending).ids.insert(id.to_string());
                        }
                    }
                    Err(RecvError::Lagged(_)) => lock(&pending).all = true,
                    Err(RecvError::Closed) => return,
                },
                marked = marks.changed() => {
                    if marked.is_err() {
                        return;
                    }
                    lock(&pending).all = true;
                }
            }
        }
    })
}
