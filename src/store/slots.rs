//! Writing a batch to a Redis Cluster, where no script may touch two slots. The keys every batch
//! touches besides entity hashes share the slot of `{<key_prefix>}`; entity hashes spread over
//! every slot. A batch is written in up to three steps, each refused whole for a fenced writer:
//!
//! 1. the marks but the stream's overlap (table runs and TRUNCATEs, the stream's high), after the
//!    owner check and the check of the marks the batch was applied under (`MarksSeen`), with the
//!    shares that live on the same primary. A high recorded before the other shares only ever
//!    claims more than was applied, which at worst makes the stream read again from the start
//!    (see `engine::truncate`); recorded after them, a crash in between would hide shares that
//!    ran past a TRUNCATE.
//! 2. the other shares, one script per primary, all at once. Each share carries its writer's
//!    epoch (`<stream>#epoch`): an owner fenced between step 1 and its shares cannot overwrite a
//!    share its successor already wrote.
//! 3. only when the batch moved the stream's overlap with its snapshot run (its owner's alone):
//!    that overlap. Written last because the overlap decides which replayed changes are new: a
//!    replay after a crash in step 2 must judge them as the first attempt did, and the shares'
//!    source positions skip what did land.
//!
//! Each script announces the shares it wrote to other instances' L1, on a sharded channel its
//! primary serves (see [`super::channels`]); shares written where no such channel is are
//! announced in step 3, which then runs for them. A batch written alone thus costs one call per
//! primary it touches, plus one when none of its shares is on the marks' primary; small batches
//! of several partitions waiting at the same time share those calls (steps 1 and 2 in one flush,
//! see [`super::group`]).
//!
//! A batch's entities almost never share a slot (16,384 of them), so one script per slot made a
//! batch cost about one script call per entity. Shares are grouped by the primary the client's
//! slot map names instead, and each group is one script flagged `allow-cross-slot-keys`, which
//! may touch keys of any slot its node serves. The map can be stale (a slot moved): the script
//! then fails ("non local key", or a redirection) before it writes anything, and that group is
//! written one script per slot, after the client refreshed its map (step 1 then goes alone).
//!
//! A failure at any step fails the batch; the ingest loop retries it from a fresh load and its
//! offsets do not move meanwhile, so what one attempt wrote the next finds and deduplicates.
//! Readers may see a batch half written for the time between the steps; single-server Redis
//! writes it in one script.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Options, Server};
use fred::types::scripts::Script;

use super::group::{Request, Share};
use super::script_args::{push_shares, script_outcome};
use super::{FeatureStore, Fence, MarksSeen, StateKey, StoreError, TableMarks};
use crate::features::EntityState;
use crate::features::overlap::OverlapWrites;
use crate::telemetry;

static WRITE_SHARES: LazyLock<Script> =
    LazyLock::new(|| super::write::share_script(include_str!("write_shares.lua")));

impl FeatureStore {
    /// Writes the batch in the steps above, steps 1 and 2 in a flush with the batches of other
    /// partitions waiting at the same time (see [`super::group`]), or alone when it is large or
    /// the flush hands it back; returns the slots written and the client that wrote them.
    pub(super) async fn write_clustered(
        &self,
        client: &Client,
        states: &[(StateKey, EntityState)],
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        expected: &MarksSeen,
        fence: Option<&Fence>,
    ) -> Result<(Vec<u16>, Client), StoreError> {
        if states.len() >= self.group_commit_below {
            let written = self.write_by_slot(client, states, marks, overlap, expected, fence);
            return Ok((written.await?, client.clone()));
        }
        let before_shares = TableMarks { overlaps: Default::default(), ..marks.clone() };
        let namespace = self.namespace();
        let (hashes, encoded) = self.encode_shares(&namespace, states.iter())?;
        let shares: Vec<Share> = states
            .iter()
            .zip(hashes)
            .zip(encoded)
            .map(|(((key, state), hash), args)| Share {
                slot: fred::util::redis_keyslot(hash.as_bytes()),
                hash,
                args,
                announced: (key.entity.cache_key(), key.stream.clone(), state.rev),
            })
            .collect();
        let marks_slot = fred::util::redis_keyslot(self.owners_key().as_bytes());
        let mut written: Vec<u16> =
            std::iter::once(marks_slot).chain(shares.iter().map(|share| share.slot)).collect();
        written.sort_unstable();
        written.dedup();
        let request = Request {
            fence: fence.cloned(),
            section: self.states_section(&before_shares, None, expected, fence)?,
            checks: fence.is_some() || !before_shares.is_empty() || !expected.is_empty(),
            shares,
        };
        let flushed = self.flush_together(client, request).await?;
        let client = flushed.client;
        if !flushed.marks_written {
            let written = self.write_by_slot(&client, states, marks, overlap, expected, fence);
            return Ok((written.await?, client));
        }
        let left: Vec<&(StateKey, EntityState)> =
            flushed.left.iter().map(|index| &states[*index]).collect();
        let slots = self.by_slot(&namespace, left.iter().copied());
        let writes =
            slots.values().map(|shares| self.write_slot(&client, &namespace, shares, fence));
        for outcome in futures::future::join_all(writes).await {
            outcome?;
        }
        self.last_step(&client, marks, overlap, &left, fence).await?;
        Ok((written, client))
    }

    /// `shares` by the slot of their entity hash.
    fn by_slot<'s>(
        &self,
        namespace: &str,
        shares: impl IntoIterator<Item = &'s (StateKey, EntityState)>,
    ) -> BTreeMap<u16, Vec<&'s (StateKey, EntityState)>> {
        let mut slots: BTreeMap<u16, Vec<&(StateKey, EntityState)>> = BTreeMap::new();
        for share in shares {
            let key = self.redis_key(namespace, &share.0.entity);
            slots.entry(fred::util::redis_keyslot(key.as_bytes())).or_default().push(share);
        }
        slots
    }

    /// Writes the batch in the steps above on its own; returns the slots written.
    pub(super) async fn write_by_slot(
        &self,
        client: &Client,
        states: &[(StateKey, EntityState)],
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        expected: &MarksSeen,
        fence: Option<&Fence>,
    ) -> Result<Vec<u16>, StoreError> {
        let marks_slot = fred::util::redis_keyslot(self.owners_key().as_bytes());
        let before_shares = TableMarks { overlaps: Default::default(), ..marks.clone() };
        let namespace = self.namespace();
        // References: a batch's states are encoded once, never copied to be grouped.
        let slots = self.by_slot(&namespace, states);
        let written = std::iter::once(marks_slot).chain(slots.keys().copied()).collect();
        let map = client.cached_cluster_state();
        let mut groups = by_primary(map.as_ref(), &slots);
        let marks_primary = map.as_ref().and_then(|map| map.get_server(marks_slot));
        let with_marks = groups
            .iter()
            .position(|(primary, _)| primary.is_some() && primary.as_ref() == marks_primary);
        let mut marks_written = false;
        if let Some(at) = with_marks {
            let (_, slots) = groups.remove(at);
            let shares: Vec<_> = slots.iter().flat_map(|shares| shares.iter().copied()).collect();
            marks_written = self
                .write_marks_and_shares(client, &shares, &before_shares, expected, fence)
                .await?;
            if !marks_written {
                // The map was wrong: slot by slot, after the marks.
                groups.push((None, slots));
            }
        }
        if !marks_written && (fence.is_some() || !before_shares.is_empty() || !expected.is_empty())
        {
            // The marks the batch was applied under are checked here: refused, the batch has
            // written nothing.
            self.write_marks(client, &before_shares, None, &[], expected, fence).await?;
        }
        let writes = groups.into_iter().map(|(primary, slots)| {
            let channel = map
                .as_ref()
                .zip(primary.as_ref())
                .and_then(|(map, primary)| self.channels.on(map, primary));
            self.write_primary(client, &namespace, primary, slots, channel, fence)
        });
        let mut unannounced = Vec::new();
        for shares in futures::future::join_all(writes).await {
            unannounced.extend(shares?);
        }
        self.last_step(client, marks, overlap, &unannounced, fence).await?;
        Ok(written)
    }

    /// Step 3, when the batch moved its stream's overlap or left shares unannounced.
    async fn last_step(
        &self,
        client: &Client,
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        unannounced: &[&(StateKey, EntityState)],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let overlap_marks =
            TableMarks { overlaps: marks.overlaps.clone(), ..TableMarks::default() };
        if !overlap_marks.is_empty() || overlap.is_some() || !unannounced.is_empty() {
            let none = MarksSeen::default();
            self.write_marks(client, &overlap_marks, overlap, unannounced, &none, fence).await?;
        }
        Ok(())
    }

    /// One `write_states.lua` call without shares (every key it touches is in the slot of
    /// `{<key_prefix>}`), announcing `announced` to other instances' L1.
    async fn write_marks(
        &self,
        client: &Client,
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        announced: &[&(StateKey, EntityState)],
        expected: &MarksSeen,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let (keys, args) = self.script_call(&[], announced, marks, overlap, expected, fence)?;
        let outcome: Result<Value, _> =
            super::write::WRITE_STATES.evalsha_with_reload(client, keys, args).await;
        self.note_redis("ingest_write", &outcome);
        script_outcome(outcome?, fence)
    }

    /// Step 1 with the shares the slot map places on the primary of the marks' slot, announced
    /// on the main channel: one `write_states.lua` call there. `false` when the call failed
    /// before the script answered (the map may be wrong: it is refreshed), and the batch goes
    /// on without them.
    async fn write_marks_and_shares(
        &self,
        client: &Client,
        shares: &[&(StateKey, EntityState)],
        marks: &TableMarks,
        expected: &MarksSeen,
        fence: Option<&Fence>,
    ) -> Result<bool, StoreError> {
        let (keys, args) = self.script_call(shares, shares, marks, None, expected, fence)?;
        let outcome: Result<Value, _> =
            super::write::WRITE_STATES.evalsha_with_reload(client, keys, args).await;
        self.note_redis("ingest_write", &outcome);
        match outcome {
            Ok(reply) => script_outcome(reply, fence).map(|()| true),
            // A hash the script reached that this node does not serve fails it before any
            // write ("non local key"). Any other failure is as likely: the marks' call alone
            // tells (a timeout after the script ran finds its marks moved).
            Err(error) => {
                tracing::info!(error = %error, "writing the marks with their primary's shares failed; writing them apart");
                refresh_slot_map(client).await;
                Ok(false)
            }
        }
    }

    /// The shares of `slots`, which the slot map places on `primary` (`None`: no map), in one
    /// `write_shares.lua` call there announcing them on `channel`, a channel of that primary;
    /// one call per slot when the map was wrong. Returns the shares it did not announce.
    async fn write_primary<'s>(
        &self,
        client: &Client,
        namespace: &str,
        primary: Option<Server>,
        slots: Vec<SlotShares<'s>>,
        channel: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<Vec<&'s (StateKey, EntityState)>, StoreError> {
        let shares = || slots.iter().flat_map(|shares| shares.iter().copied());
        if let Some(primary) = primary
            && (channel.is_some() || slots.len() > 1)
        {
            let listed: Vec<_> = shares().collect();
            let (keys, args) = self.shares_call(namespace, &listed, channel, fence)?;
            // Declared keys must share a slot: the first routes the call, the rest are reached
            // through the script's flag.
            let route = keys.into_iter().take(1).collect::<Vec<_>>();
            let node = Options { cluster_node: Some(primary), ..Options::default() };
            match run_write_shares(client, &node, route, args).await {
                // Any error: the map may be out of date, which the client cannot always tell
                // (a script reaching a key that moved fails with "non local key"; a redirection
                // it followed fails the call, which has one attempt). A primary down fails the
                // calls by slot as well.
                Err(error) => {
                    metrics::counter!(telemetry::REDIS_ROUND_TRIPS, "op" => "ingest_write")
                        .increment(1);
                    tracing::info!(error = %error, "writing a primary's shares failed; writing them slot by slot");
                    refresh_slot_map(client).await;
                }
                outcome => {
                    self.note_redis("ingest_write", &outcome);
                    script_outcome(outcome?, fence)?;
                    let unannounced = if channel.is_some() { Vec::new() } else { listed };
                    return Ok(unannounced);
                }
            }
        }
        let writes = slots.iter().map(|shares| self.write_slot(client, namespace, shares, fence));
        for written in futures::future::join_all(writes).await {
            written?;
        }
        Ok(shares().collect())
    }

    /// The shares of one slot, in one `write_shares.lua` call declaring all their keys.
    async fn write_slot(
        &self,
        client: &Client,
        namespace: &str,
        shares: SlotShares<'_>,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let (keys, args) = self.shares_call(namespace, shares, None, fence)?;
        let outcome = run_write_shares(client, &Options::default(), keys, args).await;
        self.note_redis("ingest_write", &outcome);
        script_outcome(outcome?, fence)
    }

    /// The entity hashes of `shares`, and the arguments of the `write_shares.lua` call writing
    /// them, announcing them on `channel` if given.
    fn shares_call(
        &self,
        namespace: &str,
        shares: &[&(StateKey, EntityState)],
        channel: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<(Vec<String>, Vec<Value>), StoreError> {
        let (keys, encoded) = self.encode_shares(namespace, shares.iter().copied())?;
        let announcement = match channel {
            Some(_) => self.announcement(shares)?,
            None => String::new(),
        };
        let mut args = self.shares_header(channel, 1);
        args.push(fence.map(|f| f.epoch.to_string()).unwrap_or_default().into());
        push_shares(&mut args, announcement, encoded);
        Ok((keys, args))
    }
}

/// A batch's shares in one slot.
type SlotShares<'s> = &'s [&'s (StateKey, EntityState)];

/// Reads the cluster's slot map again after a call it routed failed; a failure to is logged, and
/// the calls by slot that follow are redirected by the servers.
pub(super) async fn refresh_slot_map(client: &Client) {
    if let Err(error) = client.sync_cluster().await {
        tracing::warn!(error = %error, "refreshing the redis cluster's slot map");
    }
}

/// `write_shares.lua` with `options`, loaded on every primary first if one does not know it.
pub(super) async fn run_write_shares(
    client: &Client,
    options: &Options,
    keys: Vec<String>,
    args: Vec<Value>,
) -> Result<Value, fred::error::Error> {
    let call = client.with_options(options);
    let sha = WRITE_SHARES.sha1();
    match call.evalsha(sha.clone(), keys.clone(), args.clone()).await {
        Err(error) if error.details().starts_with("NOSCRIPT") => {
            WRITE_SHARES.load(client).await?;
            call.evalsha(sha.clone(), keys, args).await
        }
        outcome => outcome,
    }
}

/// The batch's slots grouped by the primary the client's slot map names for them; one group
/// without a primary when the client has no map.
fn by_primary<'s>(
    map: Option<&ClusterRouting>,
    slots: &'s BTreeMap<u16, Vec<&(StateKey, EntityState)>>,
) -> Vec<(Option<Server>, Vec<SlotShares<'s>>)> {
    let mut groups: Vec<(Option<Server>, Vec<SlotShares<'s>>)> = Vec::new();
    let mut places: HashMap<Option<Server>, usize> = HashMap::new();
    for (slot, shares) in slots {
        let primary = map.and_then(|map| map.get_server(*slot)).cloned();
        let place = *places.entry(primary.clone()).or_insert_with(|| {
            groups.push((primary, Vec::new()));
            groups.len() - 1
        });
        groups[place].1.push(shares);
    }
    groups
}
