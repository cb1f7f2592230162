//! Item-to-item co-occurrence ("viewed together in a session"), maintained exactly under
//! inserts, updates, deletes and out-of-order event times.
//!
//! A user's rows that pass a `co_occurrence` feature's filter, ordered as their facts are (event
//! time, then product for a source with a time column, else row key; see [`super::Facts`]), form a
//! sequence; two *neighbours* in it are paired when they are at most `session` apart and
//! name different products. Each pair counts once for each of the two products (the other one is
//! its partner), in the time bucket of the later row.
//!
//! The user's state keeps the rows of its recent session as facts, so a new row finds its
//! neighbours: inserting `r` between `a` and `b` unpairs `a–b` and pairs `a–r` and `r–b`;
//! deleting it does the reverse. The deltas are pure functions of the user's state and the
//! change, and the products they touch are updated as shares of the same stream, so dedup by
//! source position holds for them as for any other feature. Where fact features keep the same
//! rows (the shopper's views, for `last_n` and `last`), the session reads them from their shared
//! facts (`Feature::session_in`), which keep them long enough for it; else it keeps its own,
//! under the feature's name.
//!
//! A session holds the rows of the last `history + session`, at most [`SESSION_FACTS_MAX`]: a
//! row at most `history` late, at processing time, finds all its neighbours (they are at most
//! `session` older). A later one pairs and unpairs with the neighbours still held, and a row
//! older than `history + session` neither pairs nor unpairs.

use ecow::EcoString;

use super::definition::{Feature, FeatureSet, SESSION_FACTS_MAX};
use super::facts::{Entry, Facts};
use super::row_key::RowKey;
use super::source::{SourceChange, SourceRow};
use super::state::{EntityState, Fact, FeatureState, entity_of, passes};
use super::text::same_text;

/// One change to a product's co-occurrence counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairDelta {
    pub feature: &'static str,
    /// Ids as the facts hold them: inline up to 15 bytes (ids of that size allocate nothing).
    pub product: EcoString,
    pub partner: EcoString,
    /// Event time of the later row of the pair.
    pub at_us: i64,
    pub delta: i64,
}

/// A row of a user's session: its event time and product.
type Node<'a> = (i64, &'a str);

/// The oldest event time pairing still considers, read at processing time `now_us`.
fn horizon_us(feature: &Feature, history_us: i64, now_us: i64) -> i64 {
    now_us.saturating_sub(history_us).saturating_sub(feature.session_us())
}

fn linked(feature: &Feature, earlier: Node<'_>, later: Node<'_>) -> bool {
    later.0 - earlier.0 <= feature.session_us() && earlier.1 != later.1
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
            product: product.into(),
            partner: partner.into(),
            at_us: later.0,
            delta,
        });
    }
}

fn node<'a>((_, fact): Entry<'a>) -> Node<'a> {
    (fact.at_us, fact.value.as_str())
}

/// The row's (fact key, time, product) when it takes part in `feature`'s pairs for `user_id`:
/// it passes the filter, names an item and is at or after the session's `horizon`.
fn member<'a>(
    set: &FeatureSet,
    feature: &Feature,
    row: Option<&'a SourceRow>,
    user_id: &str,
    horizon: i64,
) -> Option<(&'a RowKey, i64, &'a str)> {
    let row = row?;
    if !entity_of(row, set.shopper).is_some_and(|id| same_text(id, user_id))
        || !passes(feature, row)
    {
        return None;
    }
    let product = entity_of(row, set.item)?;
    let at_us = row.time_us;
    (at_us >= horizon).then_some((feature.fact_key(row), at_us, product))
}

/// Applies `change` to the sessions the user `user_id` keeps for every co-occurrence feature,
/// and returns the pair deltas it implies for products. The caller has checked that the user's
/// state does not have the change yet.
///
/// A session that reads shared facts (`Feature::session_in`) only reads them here: the fact
/// features' leader applies the same change to them afterwards, so the deltas are those of the
/// facts as they are before it.
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
        match feature.session_in {
            Some(shared) if !keeps_own_session(feature, shared, state, horizon) => {
                if let Some(shared) = state.features.get_interned(shared) {
                    let session = Session { facts: &shared.facts, horizon };
                    session.deltas(&mut deltas, feature, before, after);
                }
            }
            _ => apply_to_own_session(&mut deltas, feature, state, before, after, horizon),
        }
    }
    deltas
}

/// A session's rows among shared facts: those at or after `horizon` that name an item.
struct Session<'a> {
    facts: &'a Facts,
    horizon: i64,
}

impl<'a> Session<'a> {
    /// The session's row nearest before `place`, other than `skip`.
    fn before(&self, place: usize, skip: Option<usize>) -> Option<Node<'a>> {
        (0..place)
            .rev()
            .filter_map(|index| Some((index, self.facts.entry(index)?)))
            .take_while(|(_, (_, fact))| fact.at_us >= self.horizon)
            .find(|(index, (_, fact))| Some(*index) != skip && !fact.value.is_empty())
            .map(|(_, entry)| node(entry))
    }

    /// The session's row nearest from `place` on, other than `skip`.
    fn from(&self, place: usize, skip: Option<usize>) -> Option<Node<'a>> {
        (place..self.facts.len())
            .filter_map(|index| Some((index, self.facts.entry(index)?)))
            .find(|(index, (_, fact))| Some(*index) != skip && !fact.value.is_empty())
            .map(|(_, entry)| node(entry))
    }

    /// The deltas of retracting `before` and adding `after`, as the facts' owner will.
    fn deltas(
        &self,
        deltas: &mut Vec<PairDelta>,
        feature: &Feature,
        before: Option<(&RowKey, i64, &str)>,
        after: Option<(&RowKey, i64, &str)>,
    ) {
        let removed = before.and_then(|(key, at_us, product)| {
            let index = self.facts.find(at_us, key, product)?;
            let (prev, next) = (self.before(index, None), self.from(index + 1, None));
            relink(deltas, feature, prev, (at_us, product), next, -1);
            Some(index)
        });
        if let Some((key, at_us, product)) = after {
            let (Ok(place) | Err(place)) = self.facts.place(at_us, key, product);
            let (prev, next) = (self.before(place, removed), self.from(place, removed));
            relink(deltas, feature, prev, (at_us, product), next, 1);
        }
    }
}

/// The deltas of `node` entering (`delta` 1) or leaving (−1) the sequence between `prev` and
/// `next`: its pairs with them change by `delta`, theirs with each other by the opposite, the
/// decrements first.
fn relink(
    deltas: &mut Vec<PairDelta>,
    feature: &Feature,
    prev: Option<Node<'_>>,
    node: Node<'_>,
    next: Option<Node<'_>>,
    delta: i64,
) {
    let mut push = |earlier: Option<Node<'_>>, later: Option<Node<'_>>, delta| {
        if let (Some(earlier), Some(later)) = (earlier, later) {
            push_pair(deltas, feature, earlier, later, delta);
        }
    };
    if delta > 0 {
        push(prev, next, -delta);
    }
    push(prev, Some(node), delta);
    push(Some(node), next, delta);
    if delta < 0 {
        push(prev, next, -delta);
    }
}

/// Whether the user's state still holds the session `feature` kept under its own name before it
/// read the shared facts `shared` (a state stored before that), and goes on with it. It is let
/// go once the shared facts hold the same rows from its oldest on: until then a neighbour could
/// differ (the shared facts kept fewer old rows before they kept them for sessions).
fn keeps_own_session(
    feature: &Feature,
    shared: &'static str,
    state: &mut EntityState,
    horizon: i64,
) -> bool {
    let Some(own) = state.features.get_interned(feature.name) else { return false };
    let from = own.facts.oldest().map_or(horizon, |oldest| oldest.at_us.max(horizon));
    let own_rows = own.facts.iter().filter(|(_, fact)| fact.at_us >= from);
    let shared_rows = state.features.get_interned(shared).into_iter().flat_map(|shared| {
        shared.facts.iter().filter(|(_, fact)| fact.at_us >= from && !fact.value.is_empty())
    });
    if !own_rows.eq(shared_rows) {
        return true;
    }
    state.features.remove(feature.name);
    false
}

/// Applies a change to the session `feature` keeps under its own name.
fn apply_to_own_session(
    deltas: &mut Vec<PairDelta>,
    feature: &Feature,
    state: &mut EntityState,
    before: Option<(&RowKey, i64, &str)>,
    after: Option<(&RowKey, i64, &str)>,
    horizon: i64,
) {
    let session = state.features.entry(feature.name);
    if let Some((key, at_us, product)) = before
        && let Some(index) = session.facts.find(at_us, key, product)
    {
        let (prev, next) = session.facts.neighbours_of(index);
        relink(deltas, feature, prev.map(node), (at_us, product), next.map(node), -1);
        session.facts.remove_at(index);
    }
    if let Some((key, at_us, product)) = after {
        let (prev, next) = session.facts.neighbours_at(at_us, key, product);
        relink(deltas, feature, prev.map(node), (at_us, product), next.map(node), 1);
        session.facts.insert(key.clone(), Fact { at_us, value: product.into() });
    }
    prune_session(session, horizon);
    if session.facts.is_empty() && session.buckets.is_empty() {
        state.features.remove(feature.name);
    }
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
