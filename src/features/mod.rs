//! Feature computation: pure functions from `(state, change, now)` to a new state, and from
//! `(state, read time)` to feature values. No I/O, so every rule here is unit- and
//! property-tested without Kafka or Redis.
//!
//! The per-user state keeps the facts the features are derived from, keyed by the source row's
//! primary key, rather than running counters. That makes every change an upsert or a removal of
//! one fact, so that:
//! - redelivering a change (at-least-once) or replaying a partition's suffix in order yields the
//!   same state: nothing is counted twice;
//! - an UPDATE replaces the row's fact (its count moves), a DELETE removes it;
//! - window counts are evaluated at read time and fall as time passes with no new events.

mod user;

pub use user::{
    ACTIVITY_TYPES, Activity, ActivityChange, FeatureStatus, FeatureValue, LAST_VIEWED_PRODUCT,
    RETAINED_VIEWS, UserFeatures, UserState, VIEW_PRODUCT, WINDOWS, Window, apply, evaluate,
    feature_names,
};
