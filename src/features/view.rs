//! What one feature reads of an entity's state: its own state, and the buckets it shares with
//! features over the same rows (see [`super::SharedBuckets`]), each at its bucket width. A share
//! written before buckets were shared holds the former, one written since the latter, and an
//! item's shares merged for a read may hold both; a row is counted in one of them only, so a
//! read adds them up.

use std::sync::LazyLock;

use super::buckets::Cell;
use super::by_feature::FeatureState;
use super::definition::Feature;
use super::facts::Facts;
use super::state::EntityState;

static EMPTY: LazyLock<FeatureState> = LazyLock::new(FeatureState::default);

#[derive(Debug, Clone, Copy)]
pub struct FeatureView<'a> {
    own: &'a FeatureState,
    /// The own state's bucket width (0 when unwindowed: every row is in bucket 0).
    own_bucket_us: i64,
    shared: Option<(&'a FeatureState, i64)>,
    facts: &'a Facts,
}

impl<'a> FeatureView<'a> {
    /// What `feature` reads of `state`.
    pub fn of(feature: &Feature, state: &'a EntityState) -> Self {
        let shared = feature.shared.as_ref().and_then(|shared| {
            let kept = state.features.get_interned(shared.name)?;
            Some((kept, shared.bucket_us))
        });
        let own = state.features.get_interned(feature.name).unwrap_or(&EMPTY);
        // Shared facts once a change merged the feature's own into them (`features::sharing`).
        let facts = feature
            .shared_facts
            .as_ref()
            .and_then(|shared| state.features.get_interned(shared.name))
            .map_or(&own.facts, |kept| &kept.facts);
        Self { own, own_bucket_us: Self::own_width(feature), shared, facts }
    }

    /// `feature`'s own state alone.
    pub fn own(feature: &Feature, own: &'a FeatureState) -> Self {
        Self { own, own_bucket_us: Self::own_width(feature), shared: None, facts: &own.facts }
    }

    fn own_width(feature: &Feature) -> i64 {
        feature.window.map_or(0, |window| window.bucket_us)
    }

    /// Every bucket read, as the start of its time span (µs) and its cell: spans as wide as the
    /// state's buckets, which may be narrower than the feature's (0 when unwindowed).
    pub fn buckets(&self) -> impl Iterator<Item = (i64, Cell<'a>)> + use<'a> {
        let own_us = self.own_bucket_us;
        let own = self.own.buckets.iter().map(move |(bucket, cell)| (bucket * own_us, cell));
        let shared = self.shared.into_iter().flat_map(|(kept, bucket_us)| {
            kept.buckets.iter().map(move |(bucket, cell)| (bucket * bucket_us, cell))
        });
        own.chain(shared)
    }

    /// The feature's facts: its own, or those it shares with features over the same rows.
    pub fn facts(&self) -> &'a Facts {
        self.facts
    }
}
