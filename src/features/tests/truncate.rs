//! TRUNCATE: a table emptied at a position. Its rows' contributions go, changes before it that
//! arrive later are obsolete, and changes after it count — however late the TRUNCATE becomes
//! known to a partition, provided a partition that applied changes after it before knowing is
//! read again from the start.

use super::*;

const STREAM: &str = "user_activity/0";

fn labelled(change: &SourceChange, cut: Option<Position>) -> SourceChange {
    SourceChange { truncated: cut, ..change.clone() }
}

fn apply_all(set: &FeatureSet, state: &mut EntityState, changes: &[SourceChange]) {
    for change in changes {
        apply(set, Entity::USER, "u1", state, change, STREAM, t0());
    }
}

/// What a reader serves: nothing from a share that came before the table's TRUNCATE.
fn served(set: &FeatureSet, state: &EntityState, cut: Position) -> Features {
    let behind = state.cuts.get(STREAM).is_none_or(|known| *known < cut);
    let empty = EntityState::default();
    read(set, Entity::USER, "u1", if behind { &empty } else { state })
}

#[test]
fn a_truncate_empties_what_came_before_and_keeps_what_follows() {
    let set = set();
    let cut = Position(10, 10, 1);
    let before = insert(activity("a", "u1", "CLICK", None, 10), 5);
    let after = insert(activity("b", "u1", "CLICK", None, 10), 20);
    let mut state = EntityState::default();
    apply_all(&set, &mut state, std::slice::from_ref(&before));
    apply_all(&set, &mut state, &[labelled(&after, Some(cut)), labelled(&before, Some(cut))]);
    assert_eq!(served(&set, &state, cut)["clicks_1m"].value, json!(1));
    // A share that saw nothing since reads as empty.
    let mut stale = EntityState::default();
    apply_all(&set, &mut stale, &[before]);
    assert_eq!(served(&set, &stale, cut)["clicks_1m"].value, json!(0));
}

proptest! {
    /// Changes before and after a TRUNCATE, the TRUNCATE known from any point of the delivery
    /// on, Kafka rewinds: the share serves what the rows written after the TRUNCATE give.
    #[test]
    fn truncate_equals_the_rows_written_after_it(
        before in prop::collection::vec(arb_step(), 0..15),
        after in prop::collection::vec(arb_step(), 0..15),
        known_from in 0usize..40,
        rewind in (0usize..40, 0usize..40),
    ) {
        let (early, _) = run(&before);
        let (late, survivors) = run(&after);
        let offset = early.len() as i64 + 10;
        let late: Vec<SourceChange> = late
            .into_iter()
            .map(|change| SourceChange {
                position: change.position.map(|Position(a, b, r)| Position(a + offset, b + offset, r)),
                ..change
            })
            .collect();
        let cut = Position(offset, offset, 1);
        let mut delivered: Vec<SourceChange> = early.iter().chain(&late).cloned().collect();
        let (crash, back) = rewind;
        let crash = crash.min(delivered.len());
        let again = delivered[crash.saturating_sub(back)..].to_vec();
        delivered.truncate(crash);
        delivered.extend(again);
        for set in sets() {
            let mut state = EntityState::default();
            let known_from = known_from.min(delivered.len());
            let (unknown, known) = delivered.split_at(known_from);
            apply_all(&set, &mut state, unknown);
            let mixed = unknown.iter().any(|c| c.position.is_some_and(|p| p > cut));
            let replay: Vec<SourceChange> = if mixed {
                // The partition is read again from the start, the TRUNCATE known throughout.
                delivered.iter().map(|c| labelled(c, Some(cut))).collect()
            } else {
                known.iter().map(|c| labelled(c, Some(cut))).collect()
            };
            apply_all(&set, &mut state, &replay);
            let expected = fold(&set, Entity::USER, "u1", &survivors.iter().cloned().zip(1i64..).map(|(row, lsn)| insert(row, lsn)).collect::<Vec<_>>());
            prop_assert_eq!(served(&set, &state, cut), read(&set, Entity::USER, "u1", &expected));
        }
    }
}
