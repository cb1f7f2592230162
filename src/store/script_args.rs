//! The arguments and replies of the write scripts (`write_states.lua`, `write_shares.lua`):
//! a call's header, then one section per writer — its owner, the marks it was applied under and
//! those it moves, its shares as encoded for Redis and their announcement to other instances' L1
//! — and one reply per section.

use fred::prelude::*;

use super::codec::{encode_for_write, part_field};
use super::marks::{MarksSeen, TableMarks};
use super::write::position_field;
use super::{CLEAR_ALL, FeatureStore, Fence, StateKey, StoreError};
use crate::config::StateEncoding;
use crate::features::EntityState;
use crate::features::overlap::OverlapWrites;
use bytes::Bytes;

impl FeatureStore {
    /// The arguments of a `write_shares.lua` call before its `sections`, announcing on
    /// `channel` if given.
    pub(super) fn shares_header(&self, channel: Option<&str>, sections: usize) -> Vec<Value> {
        vec![
            self.state_ttl_secs.to_string().into(),
            channel.unwrap_or_default().into(),
            sections.to_string().into(),
        ]
    }

    /// The keys and arguments of one `write_states.lua` call writing `states`, `marks` and
    /// `overlap` if the marks `expected` are still stored, and announcing `announced` to other
    /// instances' L1. On a Redis Cluster, the shares are stamped with the writer's epoch and
    /// their hashes are not declared (they are in other slots than the marks).
    pub(super) fn script_call(
        &self,
        states: &[&(StateKey, EntityState)],
        announced: &[&(StateKey, EntityState)],
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        expected: &MarksSeen,
        fence: Option<&Fence>,
    ) -> Result<(Vec<String>, Vec<Value>), StoreError> {
        let namespace = self.namespace();
        let mut keys = self.marks_keys(&namespace, overlap.map_or("", |(stream, _)| stream));
        let mut args = self.states_header(1);
        args.extend(self.states_section(marks, overlap, expected, fence)?);
        let announcement = match announced.is_empty() {
            true => String::new(),
            false => self.announcement(announced)?,
        };
        let (entity_keys, shares) = self.encode_shares(&namespace, states.iter().copied())?;
        if !self.clustered {
            keys.extend(entity_keys);
        }
        push_shares(&mut args, announcement, shares);
        Ok((keys, args))
    }

    /// The keys of a `write_states.lua` call, the overlap's those of `stream`: all in the slot of
    /// `{<key_prefix>}`.
    pub(super) fn marks_keys(&self, namespace: &str, stream: &str) -> Vec<String> {
        vec![
            self.owners_key(),
            self.runs_key(namespace),
            self.highs_key(namespace),
            self.overlap_rows_key(namespace, stream),
            self.overlapped_key(namespace, stream),
        ]
    }

    /// The arguments of a `write_states.lua` call before its `sections`.
    pub(super) fn states_header(&self, sections: usize) -> Vec<Value> {
        let stamped = if self.clustered { "1" } else { "" };
        vec![
            self.state_ttl_secs.to_string().into(),
            self.channels.main().into(),
            if self.clustered { "SPUBLISH" } else { "PUBLISH" }.into(),
            stamped.into(),
            sections.to_string().into(),
        ]
    }

    /// A writer's section of a `write_states.lua` call up to its shares' announcement (see
    /// [`push_shares`]): its owner, the marks it was applied under and those it moves.
    pub(super) fn states_section(
        &self,
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        expected: &MarksSeen,
        fence: Option<&Fence>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut args: Vec<Value> = vec![
            fence.map(|f| f.partition.clone()).unwrap_or_default().into(),
            fence.map(|f| f.epoch.to_string()).unwrap_or_default().into(),
            if marks.change_reads() { CLEAR_ALL } else { "" }.into(),
            expected.fields.len().to_string().into(),
        ];
        // As read, byte for byte: the script compares them with what is stored.
        for (hash, field, seen) in &expected.fields {
            let seen = seen.clone().map_or_else(|| Value::from(""), Value::from);
            args.extend([hash.script_key().into(), field.as_str().into(), seen]);
        }
        let mut rest: Vec<String> = Vec::new();
        let encoded = marks.encode()?;
        rest.push(encoded.len().to_string());
        for (field, json) in encoded {
            rest.extend([field, json]);
        }
        let writes = overlap.map(|(_, writes)| writes);
        let flag = |set: bool| if set { "1" } else { "" }.to_string();
        rest.push(flag(writes.is_some_and(|w| w.clear_rows)));
        rest.push(flag(writes.is_some_and(|w| w.clear_overlapped)));
        let rows = writes.map_or(&[][..], |w| &w.rows[..]);
        rest.push(rows.len().to_string());
        for (key, image) in rows {
            rest.extend([
                key.to_string(),
                image.map(|image| image.to_string()).unwrap_or_default(),
            ]);
        }
        let overlapped = writes.map_or(&[][..], |w| &w.overlapped[..]);
        rest.push(overlapped.len().to_string());
        rest.extend(overlapped.iter().map(position_field));
        args.extend(rest.into_iter().map(Value::from));
        Ok(args)
    }

    /// The entity hashes of `states`, and for each the arguments that write its share: its
    /// entity hash, its stream, its head, whether the head lists parts left alone, its parts
    /// written and removed (see `write_states.lua` and `codec::parts`).
    pub(super) fn encode_shares<'a>(
        &self,
        namespace: &str,
        states: impl ExactSizeIterator<Item = &'a (StateKey, EntityState)>,
    ) -> Result<(Vec<String>, Vec<Vec<Value>>), StoreError> {
        let mut keys = Vec::with_capacity(states.len());
        let mut shares = Vec::with_capacity(states.len());
        let dictionary = self.dictionaries.current();
        for (key, state) in states {
            let hash = self.redis_key(namespace, &key.entity);
            let share = encode_for_write(state, self.state_encoding, dictionary.as_ref())
                .map_err(|source| StoreError::Encode { key: format!("{key:?}"), source })?;
            if dictionary.is_none()
                && self.state_encoding == StateEncoding::Dictionary
                && let Some(samples) = self.dictionaries.sample(state)
            {
                let (dictionaries, pool) = (self.dictionaries.clone(), self.redis.clone());
                tokio::spawn(async move { dictionaries.train(&pool, samples).await });
            }
            let mut args: Vec<Value> =
                Vec::with_capacity(6 + 2 * share.parts.len() + share.dropped.len());
            args.extend([
                hash.as_str().into(),
                key.stream.clone().into(),
                Bytes::from(share.head).into(),
                if share.keeps_parts { "1" } else { "" }.into(),
                share.parts.len().to_string().into(),
            ]);
            for (feature, part) in share.parts {
                args.extend([part_field(&key.stream, feature).into(), Bytes::from(part).into()]);
            }
            args.push(share.dropped.len().to_string().into());
            args.extend(
                share.dropped.iter().map(|feature| part_field(&key.stream, feature).into()),
            );
            keys.push(hash);
            shares.push(args);
        }
        Ok((keys, shares))
    }

    /// The message telling other instances' L1 which shares changed, to which revision.
    pub(super) fn announcement(
        &self,
        states: &[&(StateKey, EntityState)],
    ) -> Result<String, StoreError> {
        let announced: Vec<(String, &str, u64)> = states
            .iter()
            .map(|(key, state)| (key.entity.cache_key(), key.stream.as_str(), state.rev))
            .collect();
        serde_json::to_string(&announced)
            .map_err(|source| StoreError::Encode { key: self.channels.main().to_string(), source })
    }
}

/// What a `write_states.lua` or `write_shares.lua` reply (of one section) says of `fence`.
pub(super) fn script_outcome(reply: Value, fence: Option<&Fence>) -> Result<(), StoreError> {
    // A call of one writer: its section's reply.
    let reply = match reply {
        Value::Array(replies) => replies.into_iter().next().unwrap_or(Value::Null),
        reply => reply,
    };
    match (reply, fence) {
        (Value::String(owner), Some(fence)) => Err(StoreError::Fenced {
            partition: fence.partition.clone(),
            epoch: fence.epoch,
            owner: owner.to_string(),
        }),
        (Value::Integer(-1), Some(fence)) => {
            Err(StoreError::Unclaimed { partition: fence.partition.clone() })
        }
        (Value::Integer(-2), _) => Err(StoreError::MarksMoved),
        (Value::Integer(-3), _) => Err(StoreError::PartsGone),
        _ => Ok(()),
    }
}

/// Ends a writer's section of a `write_states.lua` or `write_shares.lua` call: the announcement
/// of its shares (or ''), the count of arguments they take, and their arguments as
/// [`FeatureStore::encode_shares`] made them.
pub(super) fn push_shares(args: &mut Vec<Value>, announcement: String, shares: Vec<Vec<Value>>) {
    args.push(announcement.into());
    let count: usize = shares.iter().map(Vec::len).sum();
    args.push(count.to_string().into());
    args.extend(shares.into_iter().flatten());
}

/// The replies of a script's sections, one per writer, in order; a reply not a list (from a
/// script of another version) counts as one section's.
pub(super) fn section_replies(reply: Value) -> Vec<Value> {
    match reply {
        Value::Array(replies) => replies,
        reply => vec![reply],
    }
}
