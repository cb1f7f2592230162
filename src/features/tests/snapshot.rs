//! Snapshot reads: delivered again, interleaved with streamed changes, and read again by a later
//! snapshot run, they count as SQL counts the rows.

use super::*;

const STREAM: &str = "user_activity/0";

fn start(lsn: i64, at_ms: i64) -> RunStart {
    RunStart { run: SnapshotRun(lsn, lsn / 10), at_ms, read_ms: Some(at_ms) }
}

fn read_of(row: SourceRow, start: RunStart, seq: i64) -> SourceChange {
    SourceChange {
        position: None,
        snapshot: Some(SnapshotRead { start, seq }),
        processed_ms: Some(start.at_ms),
        ..change(SourceTable::new("user_activity"), None, Some(row), 0)
    }
}

fn streamed(change: SourceChange, processed_ms: i64) -> SourceChange {
    SourceChange { processed_ms: Some(processed_ms), ..change }
}

/// Applies `delivered` in order as the partition workers do: each change is labelled with the
/// newest run its connector has begun so far (reads of any user announce it), and is applied
/// to user u1's share when its row is u1's. Returns the share and that run.
fn deliver(set: &FeatureSet, delivered: &[SourceChange]) -> (EntityState, Option<RunStart>) {
    let mut state = EntityState::default();
    let mut current: Option<RunStart> = None;
    for change in delivered {
        if let Some(read) = change.snapshot
            && current.is_none_or(|current| current.run < read.start.run)
        {
            current = Some(read.start);
        }
        let rows = [&change.before, &change.after];
        if !rows.into_iter().flatten().any(|row| row.text("user_id") == Some("u1")) {
            continue;
        }
        let labelled = SourceChange { run: current, ..change.clone() };
        apply(set, Entity::USER, "u1", &mut state, &labelled, STREAM, t0());
    }
    (state, current)
}

/// What a reader serves for the share: nothing when a newer run superseded it.
fn served(set: &FeatureSet, state: &EntityState, current: Option<RunStart>) -> Features {
    if superseded(state, STREAM, current.map(|start| start.run)) {
        return read(set, Entity::USER, "u1", &EntityState::default());
    }
    read(set, Entity::USER, "u1", state)
}

fn surviving(rows: &[SourceRow]) -> Vec<SourceChange> {
    (1i64..).zip(rows.iter().cloned()).map(|(lsn, row)| insert(row, lsn)).collect()
}

fn clicks(state: &(EntityState, Option<RunStart>)) -> serde_json::Value {
    served(&set(), &state.0, state.1)["clicks_1m"].value.clone()
}

#[test]
fn a_snapshot_read_delivered_twice_counts_once() {
    let set = set();
    let click = read_of(activity("a", "u1", "CLICK", None, 10), start(100, 5_000), 0);
    assert_eq!(clicks(&deliver(&set, &[click.clone(), click])), json!(1));
}

#[test]
fn a_later_run_replaces_what_the_earlier_one_read() {
    let set = set();
    let (first, second) = (start(100, 5_000), start(200, 9_000));
    let delivered = [
        read_of(activity("a", "u1", "CLICK", None, 10), first, 0),
        read_of(activity("b", "u1", "CLICK", None, 10), first, 1),
        // The connector restarted mid-snapshot; meanwhile row b was deleted.
        read_of(activity("a", "u1", "CLICK", None, 10), second, 5),
    ];
    assert_eq!(clicks(&deliver(&set, &delivered)), json!(1));
    // Kafka rewound: the earlier run's reads delivered again are obsolete.
    let mut again = delivered.to_vec();
    again.extend_from_slice(&delivered);
    assert_eq!(clicks(&deliver(&set, &again)), json!(1));
}

#[test]
fn a_share_no_read_of_the_later_run_reached_is_superseded() {
    let set = set();
    let (first, second) = (start(100, 5_000), start(200, 9_000));
    let delivered = [
        read_of(activity("a", "u1", "CLICK", None, 10), first, 0),
        // Row a was deleted while no connector ran; the later run reads only another user.
        read_of(activity("z", "u2", "CLICK", None, 10), second, 3),
    ];
    let (state, current) = deliver(&set, &delivered);
    assert!(superseded(&state, STREAM, current.map(|start| start.run)));
    assert_eq!(clicks(&(state.clone(), current)), json!(0));
    assert!(!superseded(&state, STREAM, Some(first.run)));
    assert!(!superseded(&EntityState::default(), STREAM, None));
}

#[test]
fn changes_streamed_before_a_run_are_obsolete_and_after_it_count() {
    let set = set();
    let run = start(100, 5_000);
    let before = streamed(insert(activity("a", "u1", "CLICK", None, 10), 40), 4_000);
    let delivered = [
        before.clone(),
        read_of(activity("a", "u1", "CLICK", None, 10), run, 1),
        // After a run, the first transaction streamed has no previous commit: a position
        // lower than those streamed before the run.
        streamed(insert(activity("b", "u1", "CLICK", None, 10), 1), 6_000),
        // Kafka rewound to before the run.
        before,
    ];
    assert_eq!(clicks(&deliver(&set, &delivered)), json!(2));
}

#[test]
fn a_redriven_snapshot_read_applies_once() {
    let set = set();
    let run = start(100, 5_000);
    let dead = SourceChange {
        replay: true,
        ..read_of(activity("d", "u1", "CLICK", None, 10), run, 1 << 40)
    };
    let delivered = [
        read_of(activity("a", "u1", "CLICK", None, 10), run, 0),
        read_of(activity("b", "u1", "CLICK", None, 10), run, 2),
        dead.clone(),
        dead,
    ];
    assert_eq!(clicks(&deliver(&set, &delivered)), json!(3));
}

/// A go-live as Debezium delivers it on one partition: changes streamed before (a connector
/// that first ran without a snapshot), a snapshot run that may be cut short, writes while no
/// connector runs, a second run of the whole table, then streaming again; Kafka rewinds
/// anywhere.
#[derive(Debug, Clone)]
struct GoLive {
    before: Vec<Step>,
    first_run_cut: usize,
    gap: Vec<Step>,
    second_run: bool,
    after: Vec<Step>,
    rewinds: Vec<(usize, usize)>,
}

fn arb_go_live() -> impl Strategy<Value = GoLive> {
    (
        prop::collection::vec(arb_step(), 0..12),
        0usize..12,
        prop::collection::vec(arb_step(), 0..12),
        any::<bool>(),
        prop::collection::vec(arb_step(), 0..12),
        prop::collection::vec((0usize..60, 0usize..60), 0..3),
    )
        .prop_map(|(before, first_run_cut, gap, second_run, after, rewinds)| GoLive {
            before,
            first_run_cut,
            gap,
            second_run,
            after,
            rewinds,
        })
}

/// The changes delivered, in order, and the rows that exist at the end.
fn go_live(plan: &GoLive) -> (Vec<SourceChange>, Vec<SourceRow>) {
    let all: Vec<Step> = plan.before.iter().chain(&plan.gap).chain(&plan.after).cloned().collect();
    let (changes, survivors) = run(&all);
    // `run` drops deletes of absent rows: find where each phase's changes end by running it.
    let phase = |steps: usize| run(&all[..steps]);
    let (before_end, gap_end) =
        (phase(plan.before.len()).0.len(), phase(plan.before.len() + plan.gap.len()).0.len());
    let (first, second) = (start(1_000_000, 50_000), start(2_000_000, 90_000));
    // Debezium's processing time of a streamed change: before, between or after the runs.
    let processed = |index: usize| match index {
        index if index < before_end => 10_000 + index as i64,
        index if index < gap_end => 60_000 + index as i64,
        index => 100_000 + index as i64,
    };
    let streamed_range = |range: std::ops::Range<usize>| -> Vec<SourceChange> {
        range.map(|index| streamed(changes[index].clone(), processed(index))).collect()
    };

    let mut delivered = streamed_range(0..before_end);
    let mut seq = 1_000;
    let mut snapshot = |start: RunStart, rows: Vec<SourceRow>, cut: usize| {
        // Another user's row first: the run announces itself from other partitions and tables.
        let mut reads = vec![read_of(activity("other", "u2", "SEARCH", None, 1), start, seq)];
        for row in rows.into_iter().take(cut) {
            seq += 1;
            reads.push(read_of(row, start, seq));
        }
        seq += 1;
        reads
    };
    if plan.second_run {
        delivered.extend(snapshot(first, phase(plan.before.len()).1, plan.first_run_cut));
        // Writes while no connector runs are read by the second run, not streamed.
        let rows = phase(plan.before.len() + plan.gap.len()).1;
        delivered.extend(snapshot(second, rows, usize::MAX));
        delivered.extend(streamed_range(gap_end..changes.len()));
    } else {
        delivered.extend(snapshot(first, phase(plan.before.len()).1, usize::MAX));
        delivered.extend(streamed_range(before_end..changes.len()));
    }
    // Kafka rewinds: a crash before commit, and the partition is read again from earlier.
    for (crash, back) in &plan.rewinds {
        let crash = (*crash).min(delivered.len());
        let again = delivered[crash.saturating_sub(*back)..].to_vec();
        delivered.truncate(crash);
        delivered.extend(again);
    }
    (delivered, survivors)
}

proptest! {
    /// Whatever the runs, cuts and redeliveries, the share serves what the surviving rows give.
    #[test]
    fn go_live_equals_inserting_the_surviving_rows(plan in arb_go_live()) {
        let (delivered, survivors) = go_live(&plan);
        for set in sets() {
            let (state, current) = deliver(&set, &delivered);
            let expected = fold(&set, Entity::USER, "u1", &surviving(&survivors));
            prop_assert_eq!(served(&set, &state, current), read(&set, Entity::USER, "u1", &expected));
        }
    }
}
