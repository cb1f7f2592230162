//! The index kept incrementally equals the index rebuilt from every product at the same time:
//! evaluating only changed products and those whose windows moved loses nothing.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::features::{Catalog, EntityState, FeatureSet, Product, Ranking, ReadContext, evaluate};
use crate::recommend::index::{ProductSignals, signals_of};

const TRENDING: &str = "trending_score";
const VIEWED_TOGETHER: &str = "viewed_together_24h";

const PRODUCTS: usize = 6;
const RANKED: &str = "views_1h";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z").expect("valid").with_timezone(&Utc)
}

fn id(index: usize) -> String {
    format!("p{index}")
}

fn catalog() -> HashMap<String, Product> {
    (0..PRODUCTS)
        .map(|i| {
            let category = if i % 2 == 0 { "shoes" } else { "hats" };
            let price = Some(Decimal::from(10 * i as i64));
            let product = Product::reference(&id(i), None, Some(category), None, price);
            (id(i), product)
        })
        .collect()
}

/// A view of a product: seconds from `t0`, how many, and the product viewed next to it.
type View = (i64, i64, usize);

/// A product's state holding `views` in each tracked feature, bucketed by its window.
fn state_of(set: &FeatureSet, views: &[View]) -> EntityState {
    let mut state = EntityState::default();
    for name in [TRENDING, VIEWED_TOGETHER, RANKED] {
        let feature = set.get(name).expect("shipped");
        let window = feature.window.expect("windowed");
        let feature_state = state.features.entry(feature.name);
        for (secs, count, partner) in views {
            let bucket = window.bucket_of((t0() + TimeDelta::seconds(*secs)).timestamp_micros());
            let value = if name == VIEWED_TOGETHER { id(*partner) } else { "v".into() };
            feature_state.buckets.add(bucket, &value, *count);
        }
    }
    state
}

/// The index as the refresher used to build it: every product evaluated at `at`.
fn rebuilt(
    set: &FeatureSet,
    states: &BTreeMap<String, EntityState>,
    at: DateTime<Utc>,
) -> (ProductIndex, Ranking) {
    let catalog = catalog();
    let context = ReadContext { at, catalog: &catalog as &dyn Catalog, ranking: &|_| None };
    let mut signals: HashMap<String, ProductSignals> = HashMap::new();
    let mut ranked = Vec::new();
    for (id, state) in states {
        let values =
            evaluate(set, crate::features::Entity::PRODUCT, id, Some(state), None, &context);
        signals.insert(id.clone(), signals_of(&values, &set.recommendations));
        ranked.push(values.get(RANKED).and_then(|v| v.value.as_f64()).unwrap_or(0.0));
    }
    (ProductIndex::build(&catalog, &signals, Some(at)), Ranking::new(ranked))
}

fn arb_views() -> impl Strategy<Value = Vec<View>> {
    prop::collection::vec((-90_000i64..300, 1i64..3, 0..PRODUCTS), 0..6)
}

proptest! {
    #[test]
    fn kept_incrementally_equals_rebuilt(
        before in prop::collection::vec(arb_views(), PRODUCTS),
        added in prop::collection::vec(prop::option::weighted(0.3, arb_views()), PRODUCTS),
        first_secs in -3_600i64..300,
        later_secs in 0i64..10_800,
    ) {
        let set = FeatureSet::load(None).expect("built-in definitions");
        let catalog = catalog();
        let first = t0() + TimeDelta::seconds(first_secs);
        let later = first + TimeDelta::seconds(later_secs);
        let mut states: BTreeMap<String, EntityState> =
            (0..PRODUCTS).map(|i| (id(i), state_of(&set, &before[i]))).collect();
        let mut tracker = Tracker::new(&set);
        for id in tracker.due(first.timestamp_micros(), &catalog) {
            tracker.update(&set, &id, states.get(&id), first, &catalog);
        }
        prop_assert!(tracker.due(first.timestamp_micros(), &catalog).is_empty());

        // Some products change (the store announces them); time moves on.
        let mut changed = Vec::new();
        for (i, views) in added.iter().enumerate() {
            if let Some(views) = views {
                let all: Vec<View> = before[i].iter().chain(views).copied().collect();
                states.insert(id(i), state_of(&set, &all));
                changed.push(id(i));
            }
        }
        let mut due = tracker.due(later.timestamp_micros(), &catalog);
        due.extend(changed);
        for id in due {
            tracker.update(&set, &id, states.get(&id), later, &catalog);
        }

        let kept = tracker.index(&catalog, later);
        let (expected, ranking) = rebuilt(&set, &states, later);
        prop_assert_eq!(kept.rankings.get(RANKED).map(|r| (**r).clone()), Some(ranking));
        for (id, want) in &expected.products {
            let got = &kept.products[id];
            prop_assert!((got.trending - want.trending).abs() <= 2e-6, "{id}: {} vs {}", got.trending, want.trending);
            prop_assert_eq!(&got.together, &want.together, "{}", id);
        }
        let trendings: Vec<f64> = expected.popular.iter().map(|id| expected.products[id].trending).collect();
        if trendings.windows(2).all(|pair| (pair[0] - pair[1]).abs() > 1e-5 || pair[0] == pair[1]) {
            prop_assert_eq!(&kept.popular, &expected.popular);
        }
    }
}
