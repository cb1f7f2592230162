//! Item-to-item co-occurrence ("viewed together in a session"), maintained exactly under
//! inserts, updates, deletes and out-of-order event times.
//!
//! A user's rows that pass a `co_occurrence` feature's filter, ordered as their facts are (event
//! time, then product for a source with a time column, else row key; see [`super::Facts`]), form a
//! sequence; two *neighbours* in it are paired when they are at most `session` apart and
//! name different products. Each pair counts once for each of the two products (the other one is
//! its partner), in the time bucket of the later row.
//!
//! The user's state keeps the rows of its recent session as facts (under the feature's name), so
//! a new row finds its neighbours: inserting `r` between `a` and `b` unpairs `a–b` and pairs
//! `a–r` and `r–b`; deleting it does the reverse. The deltas are pure functions of the user's
//! state and the change, and the products they touch are updated as shares of the same stream,
//! so dedup by source position holds for them as for any other feature.
//!
//! Facts are kept for `history + session`: a row older than `now - history` is late for pairing
//! (it neither pairs nor unpairs), which is what keeps a user's session state small.

use super::definition::{Feature, FeatureSet};
use super::facts::Entry;
use super::row_key::RowKey;
use super::source::{SourceChange, SourceRow};
use super::state::{EntityState, Fact, FeatureState, entity_of, passes};

/// Rows of one user's session kept per feature, newest first, beyond which the oldest go even
/// when younger than `history + session` (a bound on state size for very active users).
pub const SESSION_FACTS_MAX: usize = 500;

/// One change to a product's co-occurrence counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairDelta {
    pub feature: &'static str,
    pub product: String,
    pub partner: String,
    /// Event time of the later row of the pair.
    pub at_us: i64,
    pub delta: i64,
}

/// A row of a user's session: its event time and product.
type Node<'a> = (i64, &'a str);

fn session_us(feature: &Feature) -> i64 {
    feature.session.map_or(0, |s| i64::try_from(s.as_micros()).unwrap_or(i64::MAX))
}

/// The oldest event time pairing still considers, read at processing time `now_us`.
fn horizon_us(feature: &Feature, history_us: i64, now_us: i64) -> i64 {
    now_us.saturating_sub(history_us).saturating_sub(session_us(feature))
}

fn linked(feature: &Feature, earlier: Node<'_>, later: Node<'_>) -> bool {
    later.0 - earlier.0 <= session_us(feature) && earlier.1 != later.1
}

fn push_pair(
    deltas: &mut Vec<PairDelta>,
    feature: &Feature,
    earlier: Node<'_>,
    later: Node<'_>,
    delta: i64,
) {
    if !linked(feature, earlier, later) {
        return;
    }
    for (product, partner) in [(earlier.1, later.1), (later.1, earlier.1)] {
        deltas.push(PairDelta {
            feature: feature.name,
            product: product.to_string(),
            partner: partner.to_string(),
            at_us: later.0,
            delta,
        });
    }
}

fn node<'a>((_, fact): Entry<'a>) -> Node<'a> {
    (fact.at_us, fact.value.as_str())
}

/// The row's (fact key, time, product) when it takes part in `feature`'s pairs for `user_id`.
fn member<'a>(
    set: &FeatureSet,
    feature: &Feature,
    row: Option<&'a SourceRow>,
    user_id: &str,
    horizon: i64,
) -> Option<(&'a RowKey, i64, &'a str)> {
    let row = row?;
    if entity_of(row, set.shopper) != Some(user_id) || !passes(feature, row) {
        return None;
    }
    let product = entity_of(row, set.item)?;
    let at_us = row.time.timestamp_micros();
    (at_us >= horizon.saturating_add(session_us(feature))).then_some((
        feature.fact_key(row),
        at_us,
        product,
    ))
}

/// Applies `change` to the session facts the user `user_id` keeps for every co-occurrence
/// feature, and returns the pair deltas it implies for products. The caller has checked that
/// the user's state does not have the change yet.
pub fn apply_to_session(
    set: &FeatureSet,
    user_id: &str,
    state: &mut EntityState,
    change: &SourceChange,
    now_us: i64,
) -> Vec<PairDelta> {
    let mut deltas = Vec::new();
    for feature in set.pairs_fed_by(change.table) {
        let horizon = horizon_us(feature, set.history_us(), now_us);
        let before = member(set, feature, change.before.as_ref(), user_id, horizon);
        let after = member(set, feature, change.after.as_ref(), user_id, horizon);
        if before.is_none() && after.is_none() {
            continue;
        }
        let session = state.features.entry(feature.name);
        if let Some((key, at_us, product)) = before
            && let Some(index) = session.facts.find(at_us, key, product)
        {
            let (prev, next) = session.facts.neighbours_of(index);
            let (prev, next) = (prev.map(node), next.map(node));
            let node: Node<'_> = (at_us, product);
            if let Some(prev) = prev {
                push_pair(&mut deltas, feature, prev, node, -1);
            }
            if let Some(next) = next {
                push_pair(&mut deltas, feature, node, next, -1);
            }
            if let (Some(prev), Some(next)) = (prev, next) {
                push_pair(&mut deltas, feature, prev, next, 1);
            }
            session.facts.remove_at(index);
        }
        if let Some((key, at_us, product)) = after {
            let (prev, next) = session.facts.neighbours_at(at_us, key, product);
            let (prev, next) = (prev.map(node), next.map(node));
            let node: Node<'_> = (at_us, product);
            if let (Some(prev), Some(next)) = (prev, next) {
                push_pair(&mut deltas, feature, prev, next, -1);
            }
            if let Some(prev) = prev {
                push_pair(&mut deltas, feature, prev, node, 1);
            }
            if let Some(next) = next {
                push_pair(&mut deltas, feature, node, next, 1);
            }
            session.facts.insert(key.clone(), Fact { at_us, value: product.into() });
        }
        prune_session(session, horizon);
        if session.facts.is_empty() && session.buckets.is_empty() {
            state.features.remove(feature.name);
        }
    }
    deltas
}

fn prune_session(session: &mut FeatureState, horizon: i64) {
    session.facts.drop_older(|at_us| at_us >= horizon);
    session.facts.keep_newest(SESSION_FACTS_MAX);
}

/// Adds the deltas for `product_id` to its co-occurrence counts.
pub fn apply_pairs(
    set: &FeatureSet,
    product_id: &str,
    state: &mut EntityState,
    deltas: &[PairDelta],
    now_us: i64,
) {
    for delta in deltas.iter().filter(|d| d.product == product_id) {
        let Some(feature) = set.get(delta.feature) else { continue };
        let Some(window) = feature.window else { continue };
        let counts = state.features.entry(feature.name);
        let bucket = window.bucket_of(delta.at_us);
        counts.buckets.add(bucket, &delta.partner, delta.delta);
        let kept = super::retention::Kept::own(feature);
        super::retention::prune_buckets(kept, counts, set.history_us(), now_us);
        if counts.buckets.is_empty() && counts.facts.is_empty() {
            state.features.remove(feature.name);
        }
    }
}
