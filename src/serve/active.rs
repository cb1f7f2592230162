//! The users whose features changed most recently, for the user picker.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::Change;
use crate::store::FeatureStore;

const KEPT: usize = 12;

#[derive(Default)]
pub struct ActiveUsers {
    recent: Mutex<VecDeque<String>>,
}

impl ActiveUsers {
    /// Most recently active first.
    pub fn recent(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    pub fn seen(&self, user_id: &str) {
        let mut recent = self.lock();
        recent.retain(|known| known != user_id);
        recent.push_front(user_id.to_string());
        recent.truncate(KEPT);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows the store's change notifications until `shutdown`.
    pub fn spawn_tracker(
        self: &Arc<Self>,
        store: &FeatureStore,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let active = Arc::clone(self);
        super::follow_changes(store, shutdown, move |change| {
            if let Change::Entity(key) = change
                && let Some(user_id) = key.strip_prefix("user:")
            {
                active.seen(user_id);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_without_repeats_and_bounded() {
        let active = ActiveUsers::default();
        for i in 0..20 {
            active.seen(&format!("u{i}"));
        }
        active.seen("u15");
        let recent = active.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0], "u15");
        assert_eq!(recent[1], "u19");
        assert_eq!(recent.iter().filter(|u| *u == "u15").count(), 1);
    }
}
