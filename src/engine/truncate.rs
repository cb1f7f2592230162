//! TRUNCATE across partitions. Debezium delivers a table's TRUNCATE on one partition of its
//! topic; the other partitions learn of it from the table's mark in Redis. A share empties when
//! a change labelled with a newer TRUNCATE reaches it, and reads leave out shares a TRUNCATE
//! emptied, so a partition behind the TRUNCATE needs nothing more. A partition that ran ahead —
//! it applied changes after the TRUNCATE before the TRUNCATE was recorded — holds shares mixing
//! both sides, which no share can split: it is read again from the start (its `High` says so).

use std::collections::HashMap;

use crate::features::{High, SourceChange, Truncation};
use crate::store::StoreError;

/// Labels each change with its table's newest TRUNCATE in the change's run era (`known`, as
/// stored, advanced by the batch's own TRUNCATEs in order), and returns those the batch recorded.
pub(super) fn follow(
    changes: &mut [SourceChange],
    known: &mut HashMap<String, Truncation>,
) -> HashMap<String, Truncation> {
    let mut recorded = HashMap::new();
    for change in changes.iter_mut() {
        let table = change.table.name();
        let run = change.run.map(|start| start.run);
        if change.truncate
            && let Some(position) = change.position
        {
            let mark = Truncation { position, run };
            let later = known
                .get(table)
                .is_none_or(|newest| (newest.run, newest.position) < (mark.run, mark.position));
            if later {
                known.insert(table.to_string(), mark);
                recorded.insert(table.to_string(), mark);
            }
        }
        change.truncated =
            known.get(table).filter(|newest| newest.run == run).map(|newest| newest.position);
    }
    recorded
}

/// Fails with [`StoreError::MissedTruncate`] when one of the streams `highs` ran ahead of its
/// table's newest TRUNCATE in `truncations`.
pub(super) fn check(
    highs: &HashMap<String, High>,
    truncations: &HashMap<String, Truncation>,
) -> Result<(), StoreError> {
    for (stream, high) in highs {
        let table = stream.split('/').next().unwrap_or_default();
        if let Some(truncation) = truncations.get(table)
            && high.missed(truncation)
        {
            return Err(StoreError::MissedTruncate {
                stream: stream.clone(),
                truncation: *truncation,
            });
        }
    }
    Ok(())
}

/// How far `stream` got with `changes`, all of it: its last streamed change, with the TRUNCATE
/// it was applied after, if that moved past `stored`.
pub(super) fn highs(
    changes: &[SourceChange],
    stream: &str,
    stored: &HashMap<String, High>,
) -> HashMap<String, High> {
    let mut newest: Option<High> = None;
    for change in changes {
        let (None, Some(position)) = (change.snapshot, change.position) else { continue };
        let high = High { run: change.run.map(|start| start.run), cut: change.truncated, position };
        let before = newest.as_ref().or(stored.get(stream));
        if before.is_none_or(|before| order(before) < order(&high)) {
            newest = Some(high);
        }
    }
    newest.map(|high| (stream.to_string(), high)).into_iter().collect()
}

/// The order `write_states.lua` keeps highs in: run, then TRUNCATE, then position.
fn order(high: &High) -> impl Ord {
    (high.run, high.cut, high.position)
}

/// The high that acknowledges `truncation` for a stream read again from the start: nothing
/// applied after it yet.
pub(super) fn acknowledged(truncation: &Truncation) -> High {
    High { run: truncation.run, cut: Some(truncation.position), position: truncation.position }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{acknowledged, check, follow, highs};
    use crate::features::{High, Position, SourceChange, SourceTable, Truncation};

    fn change(position: i64, truncate: bool) -> SourceChange {
        SourceChange {
            table: SourceTable::new("cart_items"),
            before: None,
            after: None,
            position: Some(Position(position, position, 1)),
            snapshot: None,
            run: None,
            processed_ms: None,
            truncated: None,
            truncate,
            committed_ms: None,
            replay: false,
            overlapped: false,
        }
    }

    #[test]
    fn a_batchs_truncate_labels_what_follows_it_and_is_recorded_once_newer() {
        let mut changes = vec![change(3, false), change(5, true), change(7, false)];
        let recorded = follow(&mut changes, &mut HashMap::new());
        let labels: Vec<Option<Position>> = changes.iter().map(|c| c.truncated).collect();
        assert_eq!(labels, [None, Some(Position(5, 5, 1)), Some(Position(5, 5, 1))]);
        assert_eq!(recorded["cart_items"].position, Position(5, 5, 1));

        // A partition behind sees an older TRUNCATE than the one stored: not recorded, and the
        // stored one labels its changes.
        let stored = Truncation { position: Position(9, 9, 1), run: None };
        let mut behind = vec![change(5, true), change(6, false)];
        let mut known = [("cart_items".to_string(), stored)].into();
        assert!(follow(&mut behind, &mut known).is_empty());
        assert_eq!(behind[1].truncated, Some(Position(9, 9, 1)));
    }

    #[test]
    fn a_stream_that_ran_past_an_unknown_truncate_must_be_read_again() {
        let stream = "cart_items/1";
        // Applied 4 and 8 before anyone knew of a TRUNCATE at 6.
        let ahead = highs(&[change(4, false), change(8, false)], stream, &HashMap::new());
        assert_eq!(ahead["cart_items/1"].position, Position(8, 8, 1));
        let truncation = Truncation { position: Position(6, 6, 1), run: None };
        let truncations = [("cart_items".to_string(), truncation)].into();
        assert!(check(&ahead, &truncations).is_err());

        // Behind it, or once read again, nothing is missed.
        let behind = highs(&[change(4, false)], stream, &HashMap::new());
        assert!(check(&behind, &truncations).is_ok());
        let again: HashMap<String, High> =
            [("cart_items/1".to_string(), acknowledged(&truncation))].into();
        assert!(check(&again, &truncations).is_ok());
        let mut labelled = vec![change(8, false)];
        follow(&mut labelled, &mut truncations.clone());
        let after = highs(&labelled, stream, &again);
        assert_eq!(after["cart_items/1"].cut, Some(Position(6, 6, 1)));
        assert!(check(&after, &truncations).is_ok());
    }
}
