//! Applying a batch of one partition's change events: decode, route each change to the shares
//! it touches, load them, apply in offset order (skipping what a share already has), and write
//! back what changed. Used by the partition workers and by `persona rebuild`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use rdkafka::message::{Message, OwnedMessage};

use super::owned::{self, OwnedStates};
use super::runs;
use super::truncate;
use super::writes;
use crate::decode::change;
use crate::decode::envelope::{self, CdcMessage};
use crate::dlq::{self, DeadLetters, Failure};
use crate::features::overlap::{self, Overlap};
use crate::features::{self, Entity, EntityState, FeatureSet, SourceChange, Truncation};
use crate::store::{EntityRef, FeatureStore, Fence, Loaded, StateKey, StoreError, TableMarks};
use crate::telemetry;

const WRITE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Waits between attempts at a write that must succeed before offsets move: exponential from
/// [`WRITE_BACKOFF_MIN`] to [`WRITE_BACKOFF_MAX`], with jitter so that partitions retrying
/// together do not hit a recovering Redis in step; never giving up.
fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(WRITE_BACKOFF_MIN)
        .with_max_delay(WRITE_BACKOFF_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// What one batch amounted to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Changes to source tables decoded.
    pub changes: u64,
    /// Share updates skipped because the share already had them.
    pub duplicates: u64,
    /// Rows dropped by a feature as older than its window and history.
    pub late: u64,
    /// Messages that could not be decoded, dead-lettered (or, in a rebuild, skipped).
    pub errors: u64,
}

impl std::ops::AddAssign for BatchStats {
    fn add_assign(&mut self, other: Self) {
        self.changes += other.changes;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.errors += other.errors;
    }
}

pub struct Applier<'a> {
    pub features: &'a FeatureSet,
    pub store: &'a FeatureStore,
    /// The topics read (`kafka.topics`): a connector's snapshot run covers the tables of every
    /// topic under its prefix.
    pub topics: &'a [String],
    /// Where undecodable messages go; `None` when replaying for a rebuild, which only counts
    /// them (the live ingest dead-lettered them already).
    pub dead_letters: Option<&'a DeadLetters>,
    /// The partition owner's claim, checked by every write; `None` for a rebuild, the only
    /// writer of its generation.
    pub fence: Option<&'a Fence>,
    /// The partition's shares kept between batches; `None` reads every share from Redis.
    pub owned: Option<&'a std::sync::Mutex<OwnedStates>>,
    /// Most entities one write carries (`kafka.write_max_entities`; see [`super::writes`]).
    pub write_max_entities: usize,
}

impl Applier<'_> {
    /// Decodes, applies and writes one batch of a partition's messages, in offset order. A write
    /// (or dead letter) that fails is retried until it succeeds: the caller moves offsets only
    /// afterwards. Fails, with nothing of the batch written, only when the writer was fenced
    /// ([`StoreError::Fenced`]: a newer owner has the partition), its claim is gone
    /// ([`StoreError::Unclaimed`]), a state it needs is unreadable ([`StoreError::Unreadable`]),
    /// or the partition ran past a TRUNCATE it did not know of ([`StoreError::MissedTruncate`]).
    pub async fn apply_batch(
        &self,
        topic: &str,
        partition: i32,
        batch: &[OwnedMessage],
    ) -> Result<BatchStats, StoreError> {
        let mut stats = BatchStats::default();
        let mut changes: Vec<SourceChange> = Vec::new();
        // The connector of each change, which a snapshot run covers whole.
        let mut connectors: Vec<Option<String>> = Vec::new();
        let mut failures: Vec<(&OwnedMessage, Failure)> = Vec::new();
        let mut consumed = Consumed::default();
        // Looked up once per batch: the registry's lookup per message was 2% of a catch-up.
        let capture_lag = metrics::histogram!(telemetry::CAPTURE_LAG_SECONDS);
        for message in batch {
            match envelope::decode(message.payload()) {
                Ok(CdcMessage::Change(event)) => {
                    consumed.add(event.op.label());
                    record_capture_lag(&capture_lag, &event);
                    match change::source_change(self.features, &event) {
                        Ok(Some(mut change)) => {
                            change.replay = dlq::is_replay(message);
                            if let Some(read) = change.snapshot.as_mut() {
                                read.seq = match change.replay {
                                    true => dlq::replay_identity(message)
                                        .unwrap_or_else(|| message.offset()),
                                    false => message.offset(),
                                };
                            }
                            changes.push(change);
                            connectors.push(envelope::connector(&event).map(str::to_string));
                        }
                        Ok(None) => {}
                        Err(error) => failures.push((message, failure(message, &error))),
                    }
                }
                Ok(CdcMessage::Tombstone) => consumed.add("tombstone"),
                Ok(CdcMessage::Heartbeat { .. }) => consumed.add("heartbeat"),
                Err(error) => failures.push((message, failure(message, &error))),
            }
        }
        consumed.record(topic);
        stats.errors = failures.len() as u64;
        if let Some(dead_letters) = self.dead_letters {
            for (message, failure) in &failures {
                dead_letter(dead_letters, message, failure).await;
            }
        }
        stats.changes = changes.len() as u64;
        if changes.is_empty() {
            return Ok(stats);
        }
        // A topic is one table, so a batch is one stream; should a topic carry several, each run
        // of one stream's changes is written on its own (a stream's overlap is written with it).
        // A run is cut again where its entities would make too large a write.
        let mut from = 0;
        while from < changes.len() {
            let to = from
                + writes::leading_run(
                    &changes[from..],
                    self.write_max_entities,
                    |change| change.table,
                    |change| self.entities_of(change),
                );
            let (duplicates, late) = self
                .write_retrying(topic, partition, &mut changes[from..to], &connectors[from..to])
                .await?;
            stats.duplicates += duplicates;
            stats.late += late;
            from = to;
        }
        let now_us = Utc::now().timestamp_micros();
        for committed_ms in changes.iter().filter_map(|change| change.committed_ms) {
            let seconds = now_us.saturating_sub(committed_ms.saturating_mul(1000)) as f64 / 1e6;
            metrics::histogram!(telemetry::FRESHNESS_SECONDS).record(seconds.max(0.0));
        }
        Ok(stats)
    }

    /// [`Self::write`], retried until it succeeds or fails for good (see [`Self::apply_batch`]).
    async fn write_retrying(
        &self,
        topic: &str,
        partition: i32,
        changes: &mut [SourceChange],
        connectors: &[Option<String>],
    ) -> Result<(u64, u64), StoreError> {
        let mut delays = retry_delays();
        loop {
            match self.write(topic, partition, changes, connectors).await {
                Ok(counts) => {
                    self.store.note_write_failure(format!("{topic}/{partition}"), None);
                    return Ok(counts);
                }
                Err(StoreError::PartsGone) => {
                    // Nothing was written, and the shares kept are forgotten: read again.
                    tracing::info!(
                        topic,
                        partition,
                        "a kept share expired in redis; applying the batch again"
                    );
                }
                Err(StoreError::MarksMoved) => {
                    // Another writer recorded a mark: nothing was written, and reading the marks
                    // again is all it takes.
                    tracing::debug!(
                        topic,
                        partition,
                        "a mark moved under the batch; applying it again"
                    );
                    metrics::counter!(telemetry::MARKS_MOVED, "topic" => topic.to_string())
                        .increment(1);
                }
                Err(
                    error @ (StoreError::Fenced { .. }
                    | StoreError::Unclaimed { .. }
                    | StoreError::Unreadable { .. }
                    | StoreError::MissedTruncate { .. }),
                ) => return Err(error),
                Err(error) => {
                    let retry_in = delays.next().unwrap_or(WRITE_BACKOFF_MAX);
                    if error.is_transient() {
                        metrics::counter!(telemetry::WRITE_FAILURES, "class" => "transient")
                            .increment(1);
                        tracing::warn!(error = %error, ?retry_in, "feature write failed; holding offsets and retrying");
                    } else {
                        metrics::counter!(telemetry::WRITE_FAILURES, "class" => "permanent")
                            .increment(1);
                        tracing::error!(error = %error, ?retry_in, "feature write failed, and retrying will not fix it: the partition is held until someone does");
                        let partition = format!("{topic}/{partition}");
                        self.store.note_write_failure(partition, Some(error.to_string()));
                    }
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }

    /// Fails with [`StoreError::MissedTruncate`] when `stream` (of `table`) ran past its table's
    /// newest TRUNCATE before it was recorded.
    pub async fn missed_truncate(&self, table: &str, stream: &str) -> Result<(), StoreError> {
        let (tables, streams) = ([table.to_string()], [stream.to_string()]);
        let marks = self.store.load_for_write(&[], &tables, &streams).await?.marks;
        truncate::check(&marks.highs, &marks.truncations)
    }

    /// Records that `stream`, about to be read again from its start, knows of `truncation`
    /// (the TRUNCATE it had run past): the re-read applies nothing before it and is not sent
    /// back again.
    pub async fn acknowledge_truncate(
        &self,
        stream: &str,
        truncation: &Truncation,
    ) -> Result<(), StoreError> {
        let highs = [(stream.to_string(), truncate::acknowledged(truncation))].into();
        // Its verdicts on snapshot overlap were reached without knowing of the TRUNCATE: the
        // re-read reaches them again.
        let overlaps = [(stream.to_string(), Overlap::default())].into();
        let marks = TableMarks { highs, overlaps, ..TableMarks::default() };
        self.store.write_states(Vec::new(), &marks, self.fence).await
    }

    /// The entities a change's row images name (the ones it feeds directly; products it reaches
    /// through a session's pairs come on top).
    fn entities_of<'c>(&self, change: &'c SourceChange) -> impl Iterator<Item = (Entity, &'c str)> {
        self.features.entities_fed_by(change.table).iter().flat_map(move |&entity| {
            [&change.before, &change.after]
                .into_iter()
                .flatten()
                .filter_map(move |row| Some((entity, features::entity_of(row, entity)?)))
        })
    }

    /// The shares a change touches: this stream's share of the users and products of its row
    /// images.
    fn keys_of(&self, change: &SourceChange, stream: &str) -> Vec<StateKey> {
        let mut keys: Vec<StateKey> = Vec::new();
        for (entity, id) in self.entities_of(change) {
            if !keys.iter().any(|known| known.entity.entity == entity && known.entity.id == id) {
                keys.push(EntityRef::new(entity, id).share(stream));
            }
        }
        keys
    }

    /// Loads the touched states from Redis, applies the changes in offset order (skipping those
    /// a state already has) and writes back the states that changed.
    ///
    /// Users go first: applying a change to a user yields the co-occurrence pairs it implies
    /// (see `features::pairs`), and the products those name are loaded in a second round trip
    /// (only when there are some not loaded yet) and get the change with its pairs.
    async fn write(
        &self,
        topic: &str,
        partition: i32,
        changes: &mut [SourceChange],
        connectors: &[Option<String>],
    ) -> Result<(u64, u64), StoreError> {
        // One stream per call (see `apply_batch`).
        let table = changes[0].table;
        debug_assert!(changes.iter().all(|change| change.table == table));
        let stream = format!("{table}/{partition}");
        let tables = [table.name().to_string()];
        let routed: Vec<Vec<StateKey>> =
            changes.iter().map(|change| self.keys_of(change, &stream)).collect();
        // Deduplicated before they are copied and sorted: a batch names each entity many times.
        let unique: HashSet<&StateKey> = routed.iter().flatten().collect();
        let mut keys: Vec<StateKey> = unique.into_iter().cloned().collect();
        keys.sort();
        #[cfg(debug_assertions)]
        super::hooks::injected_truncate_hold(changes).await;
        // Read before the states: a switch of generation after this is noticed by the next batch.
        let generation = self.store.generation_epoch();
        let (mut states, missing) = owned::take(self.owned, &keys, generation);
        // Every share kept, and the marks the last batch left: nothing to read. The write is
        // conditioned on those marks either way (`MarksSeen`).
        let loaded = match owned::take_marks(self.owned, &stream, generation) {
            Some(seen) if missing.is_empty() => {
                Loaded { marks: seen.marks(), seen, ..Loaded::default() }
            }
            _ => {
                self.store.load_for_write(&missing, &tables, std::slice::from_ref(&stream)).await?
            }
        };
        set_aside(self.store, &loaded).await?;
        let Loaded { states: read, mut marks, seen, .. } = loaded;
        states.extend(read);
        with_defaults(&mut states, &keys);
        let new_runs = runs::follow(self.features, self.topics, changes, connectors, marks.runs);
        let new_truncations = truncate::follow(changes, &mut marks.truncations);
        truncate::check(&marks.highs, &marks.truncations)?;
        let new_highs = truncate::highs(changes, &stream, &marks.highs);
        let mut overlap = marks.overlaps.remove(&stream).unwrap_or_default();
        let known = self.store.load_overlap(&stream, &overlap::wanted(&overlap, changes)).await?;
        let overlap_writes = overlap::decide(&mut overlap, &known, changes);
        let changes: &[SourceChange] = changes;
        let now = Utc::now();
        let now_us = now.timestamp_micros();
        let mut changed: HashSet<StateKey> = HashSet::new();
        let (mut duplicates, mut late) = (0u64, 0u64);
        let mut tally = |key: &StateKey, outcome: &features::Outcome| {
            if outcome.duplicate {
                duplicates += 1;
            } else if !changed.contains(key) {
                changed.insert(key.clone());
            }
            late += u64::from(outcome.late);
        };

        let mut pairs: Vec<Vec<features::PairDelta>> = vec![Vec::new(); changes.len()];
        for (index, (change, targets)) in changes.iter().zip(&routed).enumerate() {
            // Every entity but the item first: the shopper's session gives the items' pairs.
            let item = self.features.item;
            for key in targets.iter().filter(|key| key.entity.entity != item) {
                let outcome = features::apply(
                    self.features,
                    key.entity.entity,
                    &key.entity.id,
                    state_of(&mut states, key),
                    change,
                    &stream,
                    now,
                );
                tally(key, &outcome);
                pairs[index].extend(outcome.pairs);
            }
        }

        let item = self.features.item;
        let mut partners: Vec<StateKey> = Vec::new();
        for delta in pairs.iter().flatten() {
            // Every state of the batch is one of `keys`: a partner among them is not new.
            if share_of(&keys, item, &delta.product).is_none() {
                partners.push(EntityRef::new(item, delta.product.as_str()).share(&stream));
            }
        }
        partners.sort();
        partners.dedup();
        let (held, missing) = owned::take(self.owned, &partners, generation);
        states.extend(held);
        let loaded = self.store.load_for_write(&missing, &[], &[]).await?;
        set_aside(self.store, &loaded).await?;
        states.extend(loaded.states);
        with_defaults(&mut states, &partners);

        for (index, (change, targets)) in changes.iter().zip(&routed).enumerate() {
            let mut products: Vec<&StateKey> =
                targets.iter().filter(|key| key.entity.entity == item).collect();
            for delta in &pairs[index] {
                let key = share_of(&keys, item, &delta.product)
                    .or_else(|| share_of(&partners, item, &delta.product))
                    .expect("every partner's share was added above");
                if !products.contains(&key) {
                    products.push(key);
                }
            }
            for key in products {
                let outcome = features::apply_with_pairs(
                    self.features,
                    item,
                    &key.entity.id,
                    state_of(&mut states, key),
                    change,
                    &stream,
                    now_us,
                    &pairs[index],
                );
                tally(key, &outcome);
            }
        }
        if duplicates > 0 {
            metrics::counter!(telemetry::DUPLICATES_SKIPPED, "topic" => topic.to_string())
                .increment(duplicates);
        }
        if late > 0 {
            metrics::counter!(telemetry::LATE_EVENTS, "topic" => topic.to_string()).increment(late);
        }
        let (mut writes, unchanged): (Vec<(StateKey, EntityState)>, Vec<_>) =
            states.into_iter().partition(|(key, _)| changed.contains(key));
        #[cfg(debug_assertions)]
        super::hooks::injected_stop(changes);
        let marks = TableMarks {
            runs: new_runs,
            truncations: new_truncations,
            highs: new_highs,
            overlaps: overlap_writes
                .mark
                .iter()
                .map(|mark| (stream.clone(), mark.clone()))
                .collect(),
        };
        let overlap = Some((stream.as_str(), &overlap_writes));
        self.store.write_batch(&mut writes, &marks, overlap, &seen, self.fence).await?;
        // What was written is what Redis holds now. A share left unchanged (every change a
        // duplicate) may differ from Redis only by having entered a newer snapshot run or
        // TRUNCATE (`features::apply`), which the next change to it does anyway, the same way.
        owned::keep(self.owned, writes.into_iter().chain(unchanged), generation);
        // A run or TRUNCATE recorded may not have been the newest (the script keeps the later):
        // the next batch reads them.
        if !marks.change_reads()
            && let Ok(after) = seen.after(&marks)
        {
            owned::keep_marks(self.owned, &stream, after, generation);
        }
        for (table, truncation) in &marks.truncations {
            tracing::warn!(
                topic,
                partition,
                table,
                position = ?truncation.position,
                "the table was truncated; every feature it fed is emptied"
            );
            metrics::counter!(telemetry::TRUNCATES, "table" => table.clone()).increment(1);
        }
        for (table, start) in &marks.runs {
            tracing::info!(
                topic,
                partition,
                table,
                snapshot_lsn = start.run.0,
                snapshot_tx = start.run.1,
                "a snapshot run began; what the table delivered before it is superseded"
            );
            metrics::counter!(telemetry::SNAPSHOT_RUNS, "topic" => topic.to_string()).increment(1);
        }
        Ok((duplicates, late))
    }
}

/// Adds an empty state for each of `keys` not loaded: a share nobody wrote yet.
fn with_defaults(states: &mut HashMap<StateKey, EntityState>, keys: &[StateKey]) {
    for key in keys {
        if !states.contains_key(key) {
            states.insert(key.clone(), EntityState::default());
        }
    }
}

/// The state of `key`, one of the keys [`with_defaults`] was given: looked up by reference, since
/// cloning the key for `entry` allocated its two texts for every change it applies.
fn state_of<'a>(
    states: &'a mut HashMap<StateKey, EntityState>,
    key: &StateKey,
) -> &'a mut EntityState {
    states.get_mut(key).expect("every state of the batch was loaded or added empty")
}

/// The share of `item` entity `id` among `keys`, sorted keys of one stream.
fn share_of<'a>(keys: &'a [StateKey], item: Entity, id: &str) -> Option<&'a StateKey> {
    let at = keys
        .binary_search_by(|key| (key.entity.entity, key.entity.id.as_str()).cmp(&(item, id)))
        .ok()?;
    Some(&keys[at])
}

/// Moves unreadable shares aside; the batch then fails with [`StoreError::Unreadable`] so that
/// its partition is read again from the start, rebuilding them.
async fn set_aside(store: &FeatureStore, loaded: &Loaded) -> Result<(), StoreError> {
    if loaded.unreadable.is_empty() {
        return Ok(());
    }
    store.quarantine(&loaded.unreadable).await?;
    Err(StoreError::Unreadable {
        shares: loaded.unreadable.iter().map(|(key, _)| format!("{key:?}")).collect(),
    })
}

fn failure(message: &OwnedMessage, error: &envelope::DecodeError) -> Failure {
    tracing::warn!(
        offset = message.offset(),
        kind = error.kind(),
        error = %error,
        "undecodable change event"
    );
    metrics::counter!(telemetry::DECODE_ERRORS, "kind" => error.kind()).increment(1);
    Failure { kind: error.kind(), error: error.to_string() }
}

/// Produces the message to the dead-letter topic, retrying until the broker acknowledges it:
/// its offset must not be stored before.
async fn dead_letter(dead_letters: &DeadLetters, message: &OwnedMessage, failure: &Failure) {
    let mut delays = retry_delays();
    while let Err(error) = dead_letters.send(message, failure).await {
        let retry_in = delays.next().unwrap_or(WRITE_BACKOFF_MAX);
        tracing::warn!(error = %error, offset = message.offset(), ?retry_in, "dead letter not acknowledged; holding offsets and retrying");
        tokio::time::sleep(retry_in).await;
    }
    tracing::info!(
        offset = message.offset(),
        dlq = dead_letters.topic(),
        kind = failure.kind,
        "change event dead-lettered"
    );
}

/// Debezium's processing time minus the commit time: how far behind the WAL capture runs.
fn record_capture_lag(histogram: &metrics::Histogram, event: &envelope::ChangeEvent) {
    if let (Some(processed), Some(committed)) = (event.ts_ms, event.source.ts_ms) {
        histogram.record((processed - committed).max(0) as f64 / 1000.0);
    }
}

/// Messages of a batch by operation, counted into `persona_events_consumed_total` once per batch.
#[derive(Debug, Default)]
struct Consumed(Vec<(&'static str, u64)>);

impl Consumed {
    fn add(&mut self, op: &'static str) {
        match self.0.iter_mut().find(|(known, _)| *known == op) {
            Some((_, count)) => *count += 1,
            None => self.0.push((op, 1)),
        }
    }

    fn record(self, topic: &str) {
        for (op, count) in self.0 {
            metrics::counter!(telemetry::EVENTS_CONSUMED, "topic" => topic.to_string(), "op" => op)
                .increment(count);
        }
    }
}
