//! Writing a batch to a Redis Cluster, where no script may touch two slots. The keys every batch
//! touches besides entity hashes share the slot of `{<key_prefix>}`; entity hashes spread over
//! every slot. A batch is written in three steps, each refused whole for a fenced writer:
//!
//! 1. the marks but the stream's overlap (table runs and TRUNCATEs, the stream's high), after the
//!    owner check. A high recorded before its shares only ever claims more than was applied,
//!    which at worst makes the stream read again from the start (see `engine::truncate`); recorded
//!    after them, a crash in between would hide shares that ran past a TRUNCATE.
//! 2. the shares, one script per slot, all at once. Each share carries its writer's epoch
//!    (`<stream>#epoch`): an owner fenced between step 1 and its shares cannot overwrite a share
//!    its successor already wrote.
//! 3. the stream's overlap with its snapshot run, its owner's alone, and one announcement of
//!    every share written for other instances' L1. Written last because the overlap decides which
//!    replayed changes are new: a replay after a crash in step 2 must judge them as the first
//!    attempt did, and the shares' source positions skip what did land. (A crash before this
//!    step leaves other instances' L1 copies of the shares written to their TTL.)
//!
//! A failure at any step fails the batch; the ingest loop retries it from a fresh load and its
//! offsets do not move meanwhile, so what one attempt wrote the next finds and deduplicates.
//! Readers may see a batch half written for the time between the steps; single-server Redis
//! writes it in one script.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use fred::prelude::*;
use fred::types::scripts::Script;

use super::write::script_outcome;
use super::{FeatureStore, Fence, StateKey, StoreError, TableMarks};
use crate::features::EntityState;
use crate::features::overlap::OverlapWrites;

static WRITE_SHARES: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("write_shares.lua")));

impl FeatureStore {
    /// Writes the batch in the steps above; returns the slots written.
    pub(super) async fn write_by_slot(
        &self,
        client: &Client,
        states: &[(StateKey, EntityState)],
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        fence: Option<&Fence>,
    ) -> Result<Vec<u16>, StoreError> {
        let marks_slot = fred::util::redis_keyslot(self.owners_key().as_bytes());
        let before_shares = TableMarks { overlaps: Default::default(), ..marks.clone() };
        if fence.is_some() || !before_shares.is_empty() {
            self.write_marks(client, &before_shares, None, &[], fence).await?;
        }
        // References: a batch's states are encoded once, never copied to be grouped.
        let mut slots: BTreeMap<u16, Vec<&(StateKey, EntityState)>> = BTreeMap::new();
        let namespace = self.namespace();
        for share in states {
            let key = self.redis_key(&namespace, &share.0.entity);
            slots.entry(fred::util::redis_keyslot(key.as_bytes())).or_default().push(share);
        }
        let writes =
            slots.values().map(|shares| self.write_shares(client, &namespace, shares, fence));
        for written in futures::future::join_all(writes).await {
            written?;
        }
        let overlap_marks =
            TableMarks { overlaps: marks.overlaps.clone(), ..TableMarks::default() };
        if !overlap_marks.is_empty() || overlap.is_some() || !states.is_empty() {
            self.write_marks(client, &overlap_marks, overlap, states, fence).await?;
        }
        Ok(std::iter::once(marks_slot).chain(slots.into_keys()).collect())
    }

    /// One `write_states.lua` call without shares (every key it touches is in the slot of
    /// `{<key_prefix>}`), announcing `announced` to other instances' L1.
    async fn write_marks(
        &self,
        client: &Client,
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        announced: &[(StateKey, EntityState)],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let (keys, args) = self.script_call(&[], announced, marks, overlap, fence)?;
        let outcome: Result<Value, _> =
            super::write::WRITE_STATES.evalsha_with_reload(client, keys, args).await;
        self.note_redis("ingest_write", &outcome);
        script_outcome(outcome?, fence)
    }

    /// The shares of one slot, in one `write_shares.lua` call.
    async fn write_shares(
        &self,
        client: &Client,
        namespace: &str,
        shares: &[&(StateKey, EntityState)],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let (keys, values) = self.encode_shares(namespace, shares.iter().copied())?;
        let args: Vec<Value> = [
            fence.map(|f| f.epoch.to_string()).unwrap_or_default(),
            self.state_ttl_secs.to_string(),
        ]
        .into_iter()
        .map(Value::from)
        .chain(values)
        .collect();
        let outcome: Result<Value, _> = WRITE_SHARES.evalsha_with_reload(client, keys, args).await;
        self.note_redis("ingest_write", &outcome);
        script_outcome(outcome?, fence)
    }
}
