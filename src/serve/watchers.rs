//! Who is listening for which entity: live streams register for their user and are woken only
//! by that user's changes, however many streams are open and however many changes arrive; a
//! bounded budget of open streams, apart from the request concurrency limit (a stream holds no
//! request slot once its response has started).
//!
//! One task follows the store's change notifications and wakes the entity's watchers; when it
//! falls behind (changes it never saw), it wakes everyone, since anything may have changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::Change;
use crate::store::FeatureStore;
use crate::telemetry;

pub struct Watchers {
    by_key: Mutex<HashMap<Arc<str>, watch::Sender<u64>>>,
    /// Bumped when every watcher must look again (missed notifications).
    everyone: watch::Sender<u64>,
    streams: Arc<Semaphore>,
}

/// One open stream's registration: wakes on its entity's changes; leaving frees the budget
/// slot and, for the entity's last watcher, its entry.
pub struct Watch {
    key: Arc<str>,
    entity: watch::Receiver<u64>,
    everyone: watch::Receiver<u64>,
    watchers: Arc<Watchers>,
    _slot: OwnedSemaphorePermit,
}

impl Watchers {
    /// At most `max_streams` watches open at once.
    pub fn new(max_streams: usize) -> Self {
        Self {
            by_key: Mutex::default(),
            everyone: watch::channel(0).0,
            streams: Arc::new(Semaphore::new(max_streams)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, watch::Sender<u64>>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the entity whose cache key is `key`; `None` when the budget is spent.
    pub fn watch(self: &Arc<Self>, key: &str) -> Option<Watch> {
        let slot = Arc::clone(&self.streams).try_acquire_owned().ok()?;
        let mut by_key = self.lock();
        let (key, entity) = match by_key.get_key_value(key) {
            Some((known, sender)) => (Arc::clone(known), sender.subscribe()),
            None => {
                let key: Arc<str> = Arc::from(key);
                let (sender, receiver) = watch::channel(0);
                by_key.insert(Arc::clone(&key), sender);
                (key, receiver)
            }
        };
        drop(by_key);
        metrics::gauge!(telemetry::LIVE_STREAMS).increment(1.0);
        Some(Watch {
            key,
            entity,
            everyone: self.everyone.subscribe(),
            watchers: Arc::clone(self),
            _slot: slot,
        })
    }

    /// Watches open now.
    pub fn open(&self) -> usize {
        self.lock().values().map(watch::Sender::receiver_count).sum()
    }

    /// Wakes the watchers of `key`, if any.
    pub fn changed(&self, key: &str) {
        if let Some(sender) = self.lock().get(key) {
            sender.send_modify(|generation| *generation += 1);
        }
    }

    /// Wakes every watcher.
    pub fn everything_changed(&self) {
        self.everyone.send_modify(|generation| *generation += 1);
    }

    /// Follows the store's change notifications until `shutdown`.
    pub fn spawn_dispatcher(
        self: &Arc<Self>,
        store: &FeatureStore,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let watchers = Arc::clone(self);
        super::follow_changes(store, shutdown, move |change| match change {
            Change::Entity(key) => watchers.changed(key),
            Change::Missed => watchers.everything_changed(),
        })
    }
}

impl Watch {
    /// Resolves at the entity's next change (or when everything may have changed); `false`
    /// once nothing can wake it any more.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            changed = self.entity.changed() => changed.is_ok(),
            changed = self.everyone.changed() => changed.is_ok(),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::LIVE_STREAMS).decrement(1.0);
        let mut by_key = self.watchers.lock();
        // This watch's receiver is still alive here: it is the last one when the count is 1.
        if by_key.get(&self.key).is_some_and(|sender| sender.receiver_count() <= 1) {
            by_key.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(watch: &mut Watch) -> bool {
        tokio::time::timeout(Duration::from_millis(50), watch.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn a_change_wakes_only_its_entitys_watchers() {
        let watchers = Arc::new(Watchers::new(10));
        let mut alice = watchers.watch("user:alice").expect("budget");
        let mut alice_again = watchers.watch("user:alice").expect("budget");
        let mut bob = watchers.watch("user:bob").expect("budget");
        watchers.changed("user:alice");
        watchers.changed("user:carol");
        assert!(woken(&mut alice).await);
        assert!(woken(&mut alice_again).await);
        assert!(!woken(&mut bob).await, "bob's stream woke for alice's change");
        assert!(!woken(&mut alice).await, "woken twice for one change");
        watchers.everything_changed();
        assert!(woken(&mut bob).await);
        assert!(woken(&mut alice).await);
    }

    #[tokio::test]
    async fn the_budget_bounds_open_watches_and_leaving_frees_it() {
        let watchers = Arc::new(Watchers::new(2));
        let first = watchers.watch("user:a").expect("budget");
        let second = watchers.watch("user:a").expect("budget");
        assert!(watchers.watch("user:b").is_none(), "over budget");
        assert_eq!(watchers.open(), 2);
        drop(first);
        assert_eq!(watchers.open(), 1, "the entry stays while a watcher is left");
        let third = watchers.watch("user:b").expect("a slot was freed");
        drop(second);
        drop(third);
        assert_eq!(watchers.open(), 0);
        assert!(watchers.lock().is_empty(), "entries of entities nobody watches are dropped");
    }
}
