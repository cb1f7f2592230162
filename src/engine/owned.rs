//! The shares a partition owner keeps in memory between batches, so that a batch reads from
//! Redis (and decodes) only the shares it has not touched lately.
//!
//! Safe because each share has exactly one writer, the owner of its stream's partition (see
//! [`crate::store`]): what the owner last wrote is what Redis holds, as long as it still owns the
//! partition (a write under a stale claim is refused, and the worker ends with its states) and
//! the store still uses the state generation they were read from. A batch takes the shares it
//! needs out, and puts them back only once their write was acknowledged: a batch that failed
//! leaves nothing here that Redis does not have, and its retry reads them again.
//!
//! The owner keeps the marks its stream's last batch was applied under too ([`MarksSeen`]): a
//! batch whose shares are all kept then reads nothing, and its write is refused if another writer
//! moved one of those marks meanwhile (another partition recording a TRUNCATE of the table), in
//! which case it is applied again from a fresh read. One round trip per batch, not two.
//!
//! Every partition owner of an instance draws on one memory budget (`cache.ingest_max_bytes`,
//! counted as [`EntityState::approx_bytes`]); a worker over it forgets its least recently used
//! shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::features::EntityState;
use crate::store::{MarksSeen, StateKey};
use crate::telemetry;

/// The memory all partition owners of an instance may keep states in.
#[derive(Debug, Clone)]
pub struct OwnedBudget(Arc<BudgetInner>);

struct BudgetInner {
    max_bytes: usize,
    used: AtomicUsize,
    /// `persona_ingest_state_reads_total` by `from`, and the kept bytes, registered once.
    from_memory: metrics::Counter,
    from_redis: metrics::Counter,
    kept_bytes: metrics::Gauge,
}

impl std::fmt::Debug for BudgetInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedBudget").field("max_bytes", &self.max_bytes).finish_non_exhaustive()
    }
}

impl OwnedBudget {
    pub fn new(max_bytes: u64) -> Self {
        let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let from =
            |from: &'static str| metrics::counter!(telemetry::INGEST_STATE_READS, "from" => from);
        Self(Arc::new(BudgetInner {
            max_bytes,
            used: AtomicUsize::new(0),
            from_memory: from("memory"),
            from_redis: from("redis"),
            kept_bytes: metrics::gauge!(telemetry::INGEST_KEPT_BYTES),
        }))
    }

    /// Bytes kept across all owners.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        let used = self.0.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.0.kept_bytes.set(used as f64);
    }

    fn sub(&self, bytes: usize) {
        let used = self.0.used.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        self.0.kept_bytes.set(used as f64);
    }

    fn over(&self) -> bool {
        self.used() > self.0.max_bytes
    }
}

/// One partition owner's shares, least recently used first out.
pub struct OwnedStates {
    states: LruCache<StateKey, (EntityState, usize)>,
    /// Of `budget`, what these states take.
    bytes: usize,
    budget: OwnedBudget,
    /// The store's generation the states were read in (see `FeatureStore::generation_epoch`).
    generation: Option<u64>,
    /// By stream, the marks its last batch was written under, as Redis holds them since.
    marks: HashMap<String, MarksSeen>,
}

impl OwnedStates {
    pub fn new(budget: OwnedBudget) -> Self {
        Self {
            states: LruCache::unbounded(),
            bytes: 0,
            budget,
            generation: None,
            marks: HashMap::new(),
        }
    }

    /// Takes the states of `keys` out, for a batch under the store's generation `generation`
    /// (everything kept is forgotten when it changed); returns those held and the keys that
    /// must be read from Redis.
    pub fn take(
        &mut self,
        keys: &[StateKey],
        generation: u64,
    ) -> (HashMap<StateKey, EntityState>, Vec<StateKey>) {
        self.follow(generation);
        let mut held = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            match self.states.pop(key) {
                Some((state, bytes)) => {
                    self.release(bytes);
                    held.insert(key.clone(), state);
                }
                None => missing.push(key.clone()),
            }
        }
        self.budget.0.from_memory.increment(held.len() as u64);
        self.budget.0.from_redis.increment(missing.len() as u64);
        (held, missing)
    }

    /// Keeps states that are now what Redis holds under the store's generation `generation`
    /// (just written, or read and left unchanged), then forgets the least recently used ones
    /// while every owner together is over budget.
    pub fn keep(
        &mut self,
        states: impl IntoIterator<Item = (StateKey, EntityState)>,
        generation: u64,
    ) {
        self.follow(generation);
        if self.budget.0.max_bytes == 0 {
            return;
        }
        for (key, state) in states {
            let bytes = state.approx_bytes();
            self.bytes += bytes;
            self.budget.add(bytes);
            if let Some((_, replaced)) = self.states.put(key, (state, bytes)) {
                self.release(replaced);
            }
        }
        while self.budget.over() {
            let Some((_, (_, bytes))) = self.states.pop_lru() else { break };
            self.release(bytes);
        }
    }

    /// Takes out the marks `stream`'s last batch was written under, if kept under `generation`.
    pub fn take_marks(&mut self, stream: &str, generation: u64) -> Option<MarksSeen> {
        self.follow(generation);
        self.marks.remove(stream)
    }

    /// Keeps the marks `stream` now has in Redis under `generation`, as a write conditioned on
    /// them left them.
    pub fn keep_marks(&mut self, stream: &str, marks: MarksSeen, generation: u64) {
        self.follow(generation);
        self.marks.insert(stream.to_string(), marks);
    }

    /// Forgets every state and mark (the partition's claim was lost, or its shares set aside).
    pub fn clear(&mut self) {
        self.marks.clear();
        self.states.clear();
        let bytes = std::mem::take(&mut self.bytes);
        self.budget.sub(bytes);
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    fn follow(&mut self, generation: u64) {
        if self.generation != Some(generation) {
            self.clear();
            self.generation = Some(generation);
        }
    }

    fn release(&mut self, bytes: usize) {
        self.bytes -= bytes;
        self.budget.sub(bytes);
    }
}

/// Takes the states of `keys` kept in `owned` (none kept when `None`); returns them and the keys
/// to read from Redis. See [`OwnedStates::take`].
pub(super) fn take(
    owned: Option<&Mutex<OwnedStates>>,
    keys: &[StateKey],
    generation: u64,
) -> (HashMap<StateKey, EntityState>, Vec<StateKey>) {
    match owned {
        Some(owned) => lock(owned).take(keys, generation),
        None => (HashMap::new(), keys.to_vec()),
    }
}

/// Takes `stream`'s marks out of `owned`, when there is one and it keeps them.
pub(super) fn take_marks(
    owned: Option<&Mutex<OwnedStates>>,
    stream: &str,
    generation: u64,
) -> Option<MarksSeen> {
    owned.and_then(|owned| lock(owned).take_marks(stream, generation))
}

/// Keeps `stream`'s marks in `owned`, when there is one.
pub(super) fn keep_marks(
    owned: Option<&Mutex<OwnedStates>>,
    stream: &str,
    marks: MarksSeen,
    generation: u64,
) {
    if let Some(owned) = owned {
        lock(owned).keep_marks(stream, marks, generation);
    }
}

/// Keeps `states` in `owned`, when there is one. See [`OwnedStates::keep`].
pub(super) fn keep(
    owned: Option<&Mutex<OwnedStates>>,
    states: impl IntoIterator<Item = (StateKey, EntityState)>,
    generation: u64,
) {
    if let Some(owned) = owned {
        lock(owned).keep(states, generation);
    }
}

fn lock(owned: &Mutex<OwnedStates>) -> std::sync::MutexGuard<'_, OwnedStates> {
    // Only the partition's own batches lock it, never across an await: a poisoned lock holds
    // states as consistent as before the panic that poisoned it.
    owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for OwnedStates {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Position;
    use crate::store::EntityRef;

    fn key(id: &str) -> StateKey {
        EntityRef::user(id).share("user_activity/0")
    }

    fn state(rev: u64) -> EntityState {
        let mut state = EntityState { rev, ..EntityState::default() };
        state.applied.insert("user_activity/0".into(), Position(1, rev as i64, 1));
        state
    }

    #[test]
    fn a_kept_state_is_taken_once_and_the_rest_must_be_read() {
        let budget = OwnedBudget::new(1 << 20);
        let mut owned = OwnedStates::new(budget.clone());
        owned.keep([(key("a"), state(3))], 0);
        let (held, missing) = owned.take(&[key("a"), key("b")], 0);
        assert_eq!(held.get(&key("a")).map(|s| s.rev), Some(3));
        assert_eq!(missing, [key("b")]);
        // Taken out for the batch: a failed batch must not find it again.
        let (held, missing) = owned.take(&[key("a")], 0);
        assert!(held.is_empty());
        assert_eq!(missing, [key("a")]);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_new_generation_forgets_everything_kept() {
        let budget = OwnedBudget::new(1 << 20);
        let mut owned = OwnedStates::new(budget.clone());
        owned.keep([(key("a"), state(1))], 0);
        let (held, missing) = owned.take(&[key("a")], 1);
        assert!(held.is_empty());
        assert_eq!(missing, [key("a")]);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn owners_over_their_shared_budget_forget_their_least_recently_used_states() {
        let one = state(1).approx_bytes();
        let budget = OwnedBudget::new((one * 3) as u64);
        let mut first = OwnedStates::new(budget.clone());
        let mut second = OwnedStates::new(budget.clone());
        first.keep([(key("a"), state(1)), (key("b"), state(1))], 0);
        // "a" used again: "b" is now the least recently used.
        let (held, _) = first.take(&[key("a")], 0);
        first.keep(held, 0);
        second.keep([(key("c"), state(1)), (key("d"), state(1))], 0);
        assert!(budget.used() <= one * 3, "{} over {}", budget.used(), one * 3);
        assert_eq!(second.len(), 1, "the owner over budget forgets its own oldest");
        first.keep([(key("e"), state(1))], 0);
        let (held, _) = first.take(&[key("a"), key("b"), key("e")], 0);
        let mut kept: Vec<&str> = held.keys().map(|k| k.entity.id.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["a", "e"]);
        drop(second);
        drop(first);
        assert_eq!(budget.used(), 0, "what an owner kept is returned when it ends");
    }
}
