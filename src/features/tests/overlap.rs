//! A snapshot run over an existing slot reads rows that it also streams: whatever point of each
//! row's history the run read, the changes applied on top of the read count every row once.

use std::collections::HashSet;

use super::*;
use crate::features::overlap::{CLOCK_SLACK_MS, Known, Overlap, decide, image_hash, wanted};

const RUN_AT_MS: i64 = 1_000_000;
/// When the run emitted its first read: its database snapshot was taken before.
const READ_MS: i64 = RUN_AT_MS + 3_000;

fn run() -> RunStart {
    RunStart { run: SnapshotRun(500, 50), at_ms: RUN_AT_MS, read_ms: Some(READ_MS) }
}

fn row(key: usize, kind: &str) -> SourceRow {
    activity(&format!("r{key}"), "u1", kind, Some("p1"), 30)
}

fn read_of(row: SourceRow, seq: i64) -> SourceChange {
    SourceChange {
        position: None,
        snapshot: Some(SnapshotRead { start: run(), seq }),
        run: Some(run()),
        processed_ms: Some(READ_MS),
        committed_ms: Some(RUN_AT_MS),
        ..insert(row, 0)
    }
}

/// A streamed change at `lsn`, processed and committed at `ms`.
fn streamed_at(
    before: Option<SourceRow>,
    after: Option<SourceRow>,
    lsn: i64,
    ms: i64,
) -> SourceChange {
    SourceChange {
        run: Some(run()),
        processed_ms: Some(ms),
        committed_ms: Some(ms),
        ..change(SourceTable::new("user_activity"), before, after, lsn)
    }
}

/// What the stream keeps in Redis, and a batch written to it as `write_states` does.
#[derive(Default)]
struct Stored {
    overlap: Overlap,
    rows: HashMap<RowKey, u64>,
    overlapped: HashSet<Position>,
}

impl Stored {
    fn deliver(&mut self, batch: &mut [SourceChange]) {
        let wanted = wanted(&self.overlap, batch);
        let known = Known {
            rows: wanted
                .rows
                .iter()
                .filter_map(|key| Some((key.clone(), *self.rows.get(key)?)))
                .collect(),
            overlapped: wanted
                .positions
                .iter()
                .filter(|position| self.overlapped.contains(position))
                .copied()
                .collect(),
        };
        let mut overlap = self.overlap.clone();
        let writes = decide(&mut overlap, &known, batch);
        assert_eq!(writes.mark.clone().unwrap_or_else(|| self.overlap.clone()), overlap);
        self.overlap = overlap;
        if writes.clear_rows {
            self.rows.clear();
        }
        if writes.clear_overlapped {
            self.overlapped.clear();
        }
        for (key, image) in writes.rows {
            match image {
                Some(image) => self.rows.insert(key, image),
                None => self.rows.remove(&key),
            };
        }
        self.overlapped.extend(writes.overlapped);
    }
}

/// The measured case: an insert committed after the run began and before its database snapshot
/// is read and streamed; it counts once, and a click after the snapshot counts too.
#[test]
fn a_row_read_and_streamed_counts_once() {
    let set = set();
    let mut stored = Stored::default();
    let mut share = EntityState::default();
    let mut batch = vec![
        read_of(row(1, "CLICK"), 10),
        streamed_at(None, Some(row(1, "CLICK")), 600, RUN_AT_MS + 1_000),
        streamed_at(None, Some(row(2, "CLICK")), 700, READ_MS + 500),
    ];
    stored.deliver(&mut batch);
    assert_eq!(batch.iter().map(|c| c.overlapped).collect::<Vec<_>>(), [false, true, false]);
    for change in &batch {
        apply(&set, Entity::USER, "u1", &mut share, change, "user_activity/0", t0());
    }
    assert_eq!(super::read(&set, Entity::USER, "u1", &share)["clicks_1m"].value, json!(2));
}

#[test]
fn a_change_committed_past_the_window_closes_it_and_drops_the_memory() {
    let mut stored = Stored::default();
    let mut batch = vec![read_of(row(1, "VIEW_PRODUCT"), 10)];
    stored.deliver(&mut batch);
    assert!(stored.overlap.open);
    assert_eq!(stored.rows.len(), 1);
    let late = READ_MS + CLOCK_SLACK_MS + 1;
    let mut batch = vec![streamed_at(Some(row(1, "VIEW_PRODUCT")), None, 900, late)];
    stored.deliver(&mut batch);
    assert!(!batch[0].overlapped);
    assert!(!stored.overlap.open);
    assert!(stored.rows.is_empty());
    // After it, nothing is checked: a delete of a row never read is applied (its share has it).
    let mut batch = vec![streamed_at(Some(row(3, "CLICK")), None, 901, late)];
    stored.deliver(&mut batch);
    assert!(!batch[0].overlapped);
}

#[test]
fn a_run_whose_read_time_is_unknown_checks_nothing() {
    let mut stored = Stored::default();
    let unknown = RunStart { read_ms: None, ..run() };
    let mut batch = vec![SourceChange {
        run: Some(unknown),
        ..streamed_at(Some(row(1, "CLICK")), None, 600, RUN_AT_MS)
    }];
    stored.deliver(&mut batch);
    assert!(!batch[0].overlapped);
    assert!(!stored.overlap.open && stored.rows.is_empty());
}

#[test]
fn the_image_hash_is_of_the_columns_only() {
    let a = row(1, "CLICK");
    let mut b = a.clone();
    b.time_us += 5_000_000;
    assert_eq!(image_hash(&a), image_hash(&b));
    assert_ne!(image_hash(&a), image_hash(&row(1, "VIEW_PRODUCT")));
    assert_ne!(image_hash(&a), image_hash(&row(2, "CLICK")));
}

/// A row's change: its before and after images.
type Event = (Option<SourceRow>, Option<SourceRow>);

/// A row history: each step inserts, updates or deletes one of a few rows.
fn history(steps: &[(usize, u8)]) -> Vec<Event> {
    let kinds = ["VIEW_PRODUCT", "CLICK", "ADD_TO_CART"];
    let mut table: BTreeMap<usize, SourceRow> = BTreeMap::new();
    let mut events = Vec::new();
    for (key, choice) in steps {
        let next = row(*key, kinds[usize::from(*choice) % kinds.len()]);
        let event = match table.get(key) {
            None => (None, Some(next)),
            Some(old) if *choice == 3 => (Some(old.clone()), None),
            Some(old) => (Some(old.clone()), Some(next)),
        };
        match &event.1 {
            Some(row) => table.insert(*key, row.clone()),
            None => table.remove(key),
        };
        events.push(event);
    }
    events
}

fn table_after(events: &[Event]) -> BTreeMap<RowKey, u64> {
    let mut table = BTreeMap::new();
    for (before, after) in events {
        if let Some(row) = before {
            table.remove(&row.key);
        }
        if let Some(row) = after {
            table.insert(row.key.clone(), image_hash(row));
        }
    }
    table
}

proptest! {
    /// History before the run began (streamed in the old era), the run's read at any point of
    /// the history after it, every change after the run began streamed, some of them committed
    /// past the window; delivered in batches, some delivered twice, then the whole stream read
    /// again from its start: the rows counted are the table's, and every verdict is reached
    /// again.
    #[test]
    fn rows_count_once_whatever_point_the_run_read(
        steps in prop::collection::vec((0usize..4, 0u8..4), 0..40),
        before_run in 0usize..10,
        read_at in 0usize..40,
        late_from in 0usize..40,
        cuts in prop::collection::vec(1usize..6, 0..12),
        again in prop::collection::vec(any::<bool>(), 12),
    ) {
        let events = history(&steps);
        let before_run = before_run.min(events.len());
        let read_at = read_at.clamp(before_run, events.len());
        let late_from = late_from.clamp(read_at, events.len());
        let mut delivered: Vec<SourceChange> = Vec::new();
        for (index, (before, after)) in events[..before_run].iter().enumerate() {
            // Positions before a run are of another sequence: beyond those streamed after it.
            let ms = RUN_AT_MS - 1_000 + index as i64;
            let lsn = 1_000_000 + index as i64;
            delivered.push(streamed_at(before.clone(), after.clone(), lsn, ms));
        }
        let read_rows = table_after(&events[..read_at]);
        for (seq, (key, _)) in read_rows.iter().enumerate() {
            let (_, after) = events[..read_at]
                .iter()
                .rev()
                .find(|(_, after)| after.as_ref().is_some_and(|row| row.key == *key))
                .expect("a row read was written");
            delivered.push(read_of(after.clone().expect("row"), seq as i64 + 100));
        }
        for (index, (before, after)) in events.iter().enumerate().skip(before_run) {
            let ms = if index >= late_from {
                READ_MS + CLOCK_SLACK_MS + 1 + index as i64
            } else {
                RUN_AT_MS + index as i64
            };
            delivered.push(streamed_at(before.clone(), after.clone(), 1_000 + index as i64, ms));
        }

        let mut stored = Stored::default();
        let mut verdicts: BTreeMap<Position, bool> = BTreeMap::new();
        let mut counted: BTreeMap<RowKey, u64> = BTreeMap::new();
        let (mut from, mut cut) = (0, 0);
        while from < delivered.len() {
            let to = (from + cuts.get(cut).copied().unwrap_or(3)).min(delivered.len());
            let times = if again.get(cut).copied().unwrap_or(false) { 2 } else { 1 };
            for time in 0..times {
                let mut batch = delivered[from..to].to_vec();
                stored.deliver(&mut batch);
                for change in &batch {
                    if let Some(read) = change.snapshot {
                        if time == 0 {
                            let row = change.after.as_ref().expect("read row");
                            prop_assert!(read.start.run == run().run);
                            counted.insert(row.key.clone(), image_hash(row));
                        }
                        continue;
                    }
                    let position = change.position.expect("streamed");
                    if let Some(first) = verdicts.get(&position) {
                        prop_assert_eq!(*first, change.overlapped, "verdict again at {:?}", position);
                        continue;
                    }
                    verdicts.insert(position, change.overlapped);
                    let obsolete = change.processed_ms < Some(RUN_AT_MS);
                    if obsolete || change.overlapped {
                        continue;
                    }
                    if let Some(row) = &change.before {
                        prop_assert_eq!(counted.remove(&row.key), Some(image_hash(row)));
                    }
                    if let Some(row) = &change.after {
                        prop_assert_eq!(counted.insert(row.key.clone(), image_hash(row)), None);
                    }
                }
            }
            from = to;
            cut += 1;
        }
        prop_assert_eq!(&counted, &table_after(&events));

        // The stream read again from its start (a share rebuilt): the same verdicts.
        let mut batch = delivered.clone();
        stored.deliver(&mut batch);
        for change in batch.iter().filter(|change| change.snapshot.is_none()) {
            let position = change.position.expect("streamed");
            prop_assert_eq!(verdicts.get(&position).copied(), Some(change.overlapped));
        }
    }
}

/// A TRUNCATE inside the window empties what the run read (as the shares do): a row inserted
/// after it is applied even though the run read it too.
#[test]
fn a_truncate_in_the_window_forgets_what_the_run_read() {
    let cut = Position(650, 650, 1);
    let truncate = SourceChange {
        truncate: true,
        truncated: Some(cut),
        before: None,
        after: None,
        position: Some(cut),
        ..streamed_at(None, None, 650, RUN_AT_MS + 600)
    };
    let after_cut = SourceChange {
        truncated: Some(cut),
        ..streamed_at(None, Some(row(2, "CLICK")), 700, RUN_AT_MS + 700)
    };
    let mut batch = vec![
        read_of(row(2, "CLICK"), 10),
        streamed_at(None, Some(row(1, "CLICK")), 600, RUN_AT_MS + 500),
        truncate,
        after_cut,
    ];
    let mut stored = Stored::default();
    stored.deliver(&mut batch);
    assert_eq!(batch.iter().map(|c| c.overlapped).collect::<Vec<_>>(), [false; 4]);
    assert_eq!(stored.overlap.cut, Some(cut));
    assert_eq!(stored.rows.keys().collect::<Vec<_>>(), ["r2"]);
}
