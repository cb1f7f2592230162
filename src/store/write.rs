//! Ingest's side of the store: loading the shares a batch touches, and writing them back in one
//! atomic script that refuses the writes of a fenced partition owner, and those of a batch
//! applied under marks that have moved since (see [`MarksSeen`]).
//!
//! Fencing: each partition worker claims its partition before its first write, which bumps the
//! partition's epoch in `<key_prefix>:owners` (outside the state generations, so a rebuild's
//! swap keeps it). Every write carries the writer's epoch and is refused when a newer owner has
//! claimed the partition since: an instance paused past its session timeout (a stop, a long
//! stall) cannot overwrite what the partition's new owner wrote.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;

use super::codec::{decode_share_with, note_written, part_field};
use super::marks::{MarksSeen, TableMarks, high_field, overlap_field, truncate_field};
use super::script_args::script_outcome;
use super::{FeatureStore, StateKey, StoreError, note_latency};
use crate::features::overlap::{Known, OverlapWrites, Wanted};
use crate::features::{EntityState, Position, RowKey};
use crate::telemetry;

pub(super) static WRITE_STATES: LazyLock<Script> =
    LazyLock::new(|| share_script(include_str!("write_states.lua")));

/// A script writing shares: `script` after the functions both share (`shares.lua`), flagged
/// `allow-cross-slot-keys`, which on a Redis Cluster lets it reach the hashes of every slot its
/// node serves (the flag must open the script's text).
pub(super) fn share_script(script: &str) -> Script {
    let shares = include_str!("shares.lua");
    Script::from_lua(format!("#!lua flags=allow-cross-slot-keys\n{shares}{script}"))
}

/// What [`FeatureStore::load_for_write`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub states: HashMap<StateKey, EntityState>,
    /// The marks of the tables and streams asked for.
    pub marks: TableMarks,
    /// The same marks as stored, for a write conditioned on them.
    pub seen: MarksSeen,
    /// Shares stored in a form persona cannot read, as stored.
    pub unreadable: Vec<(StateKey, Bytes)>,
}

/// A partition owner's right to write: the epoch it claimed for its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// `<topic>/<partition>`.
    pub partition: String,
    pub epoch: i64,
}

impl FeatureStore {
    pub(super) fn owners_key(&self) -> String {
        format!("{{{}}}:owners", self.key_prefix)
    }

    /// Claims `partition` for this writer: writes under any earlier claim are refused from now.
    pub async fn claim(&self, partition: &str) -> Result<Fence, StoreError> {
        let client = self.redis.next();
        let owners = self.owners_key();
        let result: Result<i64, _> = client.hincrby(&owners, partition, 1).await;
        self.note_redis("claim", &result);
        let epoch = result?;
        // A claim a failover lost would let the fenced owner write again.
        self.wait_for_replicas(client, &[fred::util::redis_keyslot(owners.as_bytes())]).await?;
        Ok(Fence { partition: partition.to_string(), epoch })
    }

    /// Loads the shares `keys` from Redis, with the marks of `tables` (newest snapshot run and
    /// TRUNCATE) and of `streams` (how far each has applied), in one pipeline of `HGET`s, for
    /// ingest to apply changes to. Shares not stored yet are absent from the map; shares that
    /// cannot be read are in `unreadable`, never defaulted.
    pub async fn load_for_write(
        &self,
        keys: &[StateKey],
        tables: &[String],
        streams: &[String],
    ) -> Result<Loaded, StoreError> {
        let namespace = self.namespace();
        let fields: Vec<(String, String)> = tables
            .iter()
            .flat_map(|table| [table.clone(), truncate_field(table)])
            .map(|field| (self.runs_key(&namespace), field))
            .chain(streams.iter().flat_map(|stream| {
                let highs = self.highs_key(&namespace);
                [(highs.clone(), high_field(stream)), (highs, overlap_field(stream))]
            }))
            .collect();
        if keys.is_empty() && fields.is_empty() {
            return Ok(Loaded::default());
        }
        let pipeline = self.redis.next().pipeline();
        for (hash, field) in &fields {
            let _: () = pipeline.hget(hash, field).await?;
        }
        for key in keys {
            // The whole hash: a share's head names its parts only once read.
            let _: () = pipeline.hgetall(self.redis_key(&namespace, &key.entity)).await?;
        }
        let started = Instant::now();
        let result: Result<Vec<Value>, _> = pipeline.all().await;
        note_latency("ingest_read", started);
        self.note_redis("ingest_read", &result);
        let mut values = result?;
        let hashes = values.split_off(fields.len());
        let marks = values.into_iter().map(|value| value.convert::<Option<Bytes>>());
        let marks = marks.collect::<Result<Vec<_>, _>>()?;
        let seen = MarksSeen::read(fields.into_iter().zip(marks).map(|((_, f), value)| (f, value)));
        let mut loaded = Loaded { marks: seen.marks(), seen, ..Loaded::default() };
        let hashes: Vec<HashMap<String, Bytes>> =
            hashes.into_iter().map(Value::convert).collect::<Result<_, _>>()?;
        let values = hashes.iter().flat_map(|fields| fields.values().map(|v| &v[..]));
        let unknown = self.dictionaries.unknown(values);
        self.dictionaries.fetch(&self.redis, unknown).await?;
        let known = |id| self.dictionaries.known(id);
        for (key, hash) in keys.iter().zip(hashes) {
            let Some(value) = hash.get(&key.stream) else { continue };
            let part = |feature: &str| hash.get(&part_field(&key.stream, feature)).map(|v| &v[..]);
            match decode_share_with(value, part, &known) {
                Ok(state) => {
                    loaded.states.insert(key.clone(), state);
                }
                Err(error) => {
                    let name = self.redis_key(&namespace, &key.entity);
                    tracing::error!(key = %name, stream = %key.stream, error = %error, "unreadable feature state in redis");
                    metrics::counter!(telemetry::UNREADABLE_STATES, "path" => "ingest")
                        .increment(1);
                    loaded.unreadable.push((key.clone(), value.clone()));
                }
            }
        }
        Ok(loaded)
    }

    /// The row memory and past verdicts of `stream`'s overlap with its snapshot run that a batch
    /// needs (see [`crate::features::overlap`]), in one round trip.
    pub async fn load_overlap(&self, stream: &str, wanted: &Wanted) -> Result<Known, StoreError> {
        if wanted.rows.is_empty() && wanted.positions.is_empty() {
            return Ok(Known::default());
        }
        let namespace = self.namespace();
        let positions: Vec<String> = wanted.positions.iter().map(position_field).collect();
        let pipeline = self.redis.next().pipeline();
        if !wanted.rows.is_empty() {
            let _: () = pipeline
                .hmget(self.overlap_rows_key(&namespace, stream), row_fields(&wanted.rows))
                .await?;
        }
        if !positions.is_empty() {
            let _: () =
                pipeline.hmget(self.overlapped_key(&namespace, stream), positions.clone()).await?;
        }
        let started = Instant::now();
        let result: Result<Vec<Vec<Option<String>>>, _> = pipeline.all().await;
        note_latency("overlap_read", started);
        self.note_redis("overlap_read", &result);
        let mut replies = result?.into_iter();
        let mut known = Known::default();
        if !wanted.rows.is_empty() {
            let images = replies.next().unwrap_or_default();
            for (key, image) in wanted.rows.iter().zip(images) {
                if let Some(image) = image.and_then(|image| image.parse().ok()) {
                    known.rows.insert(key.clone(), image);
                }
            }
        }
        if !positions.is_empty() {
            let verdicts = replies.next().unwrap_or_default();
            for (position, verdict) in wanted.positions.iter().zip(verdicts) {
                if verdict.is_some() {
                    known.overlapped.insert(*position);
                }
            }
        }
        Ok(known)
    }

    /// Sets unreadable shares aside: each moves, as it was, to the hash `<namespace>:quarantine`
    /// (field `<entity key> <stream>`) for inspection, and leaves its entity, so that nothing
    /// builds on it and a replay of its partition rebuilds it from scratch.
    pub async fn quarantine(&self, unreadable: &[(StateKey, Bytes)]) -> Result<(), StoreError> {
        let namespace = self.namespace();
        if self.clustered {
            // The quarantine and the entity are in different slots: copied first, then removed,
            // so a failure in between leaves the share in both (set aside again next time).
            for (key, raw) in unreadable {
                let entity = self.redis_key(&namespace, &key.entity);
                let field = format!("{entity} {}", key.stream);
                let copied: Result<(), _> =
                    self.redis.hset(format!("{namespace}:quarantine"), (field, raw.clone())).await;
                self.note_redis("quarantine", &copied);
                copied?;
                let removed: Result<(), _> = self.redis.hdel(&entity, key.stream.as_str()).await;
                self.note_redis("quarantine", &removed);
                removed?;
            }
            return Ok(());
        }
        let transaction = self.redis.next().multi();
        for (key, raw) in unreadable {
            let entity = self.redis_key(&namespace, &key.entity);
            let field = format!("{entity} {}", key.stream);
            let _: () =
                transaction.hset(format!("{namespace}:quarantine"), (field, raw.clone())).await?;
            let _: () = transaction.hdel(&entity, key.stream.as_str()).await?;
        }
        let outcome: Result<Value, _> = transaction.exec(true).await;
        self.note_redis("quarantine", &outcome);
        outcome?;
        Ok(())
    }

    /// Writes shares to Redis atomically (a share and its source positions are one field, and a
    /// batch's shares change together, so a user's session and the co-occurrence pairs it
    /// implied for products never part ways), with the marks the batch moved, unless `fence` is
    /// stale; once acknowledged, updates L1.
    pub async fn write_states(
        &self,
        mut states: Vec<(StateKey, EntityState)>,
        marks: &TableMarks,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        self.write_batch(&mut states, marks, None, &MarksSeen::default(), fence).await
    }

    /// [`Self::write_states`], with what the batch changed in its stream's overlap with a
    /// snapshot run (`overlap`: the stream and its writes), in the same atomic script (on a Redis
    /// Cluster, in the scripts and order [`super::slots`] describes); refused whole with
    /// [`StoreError::MarksMoved`] unless every mark in `expected` is still stored as it was.
    /// Once written, each state knows which of its parts Redis holds as they are.
    pub async fn write_batch(
        &self,
        states: &mut [(StateKey, EntityState)],
        marks: &TableMarks,
        overlap: Option<(&str, &OverlapWrites)>,
        expected: &MarksSeen,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let overlap = overlap.filter(|(_, writes)| !writes.is_empty());
        if states.is_empty() && marks.is_empty() && overlap.is_none() {
            return Ok(());
        }
        let client = self.redis.next();
        let started = Instant::now();
        let outcome = if self.clustered {
            self.write_clustered(client, states, marks, overlap, expected, fence).await
        } else {
            let states: Vec<&(StateKey, EntityState)> = states.iter().collect();
            let call = self.script_call(&states, &states, marks, overlap, expected, fence);
            let (keys, args) = call?;
            let outcome: Result<Value, _> =
                WRITE_STATES.evalsha_with_reload(client, keys, args).await;
            self.note_redis("ingest_write", &outcome);
            script_outcome(outcome?, fence).map(|()| (Vec::new(), client.clone()))
        };
        let outcome = match outcome {
            Ok((slots, writer)) => self.wait_for_replicas(&writer, &slots).await,
            Err(error) => Err(error),
        };
        note_latency("ingest_write", started);
        outcome?;
        metrics::counter!(telemetry::STATE_WRITES).increment(states.len() as u64);
        if let Some((_, writes)) = overlap
            && !writes.overlapped.is_empty()
        {
            metrics::counter!(telemetry::SNAPSHOT_OVERLAPS)
                .increment(writes.overlapped.len() as u64);
        }
        if marks.change_reads() {
            self.clear_l1("table_marks");
        }
        for (key, state) in states {
            if self.state_encoding.writes_parts() {
                note_written(state);
            }
            self.l1.put_share(key.entity.cache_key(), &key.stream, state).await;
        }
        Ok(())
    }

    /// With `redis.min_replica_acks`, waits until that many replicas hold every write `client`
    /// sent to the servers of `slots` (every write, on a single server): only then may offsets
    /// move past them.
    async fn wait_for_replicas(&self, client: &Client, slots: &[u16]) -> Result<(), StoreError> {
        if self.min_replica_acks == 0 {
            return Ok(());
        }
        let wanted = i64::from(self.min_replica_acks);
        // Half the command timeout: Redis answers with the count it got before the client gives
        // up on the command, so a replica down reads as such rather than as a timeout.
        let timeout = i64::try_from(self.command_timeout.as_millis() / 2).unwrap_or(i64::MAX);
        let mut servers: Vec<fred::types::config::Server> = client
            .cached_cluster_state()
            .map(|state| slots.iter().filter_map(|slot| state.get_server(*slot).cloned()).collect())
            .unwrap_or_default();
        servers.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        servers.dedup();
        let acks: Vec<Result<i64, fred::error::Error>> = if servers.is_empty() {
            vec![client.wait(wanted, timeout).await]
        } else {
            let nodes: Vec<_> =
                servers.into_iter().map(|server| client.with_cluster_node(server)).collect();
            futures::future::join_all(nodes.iter().map(|node| node.wait(wanted, timeout))).await
        };
        for acked in acks {
            self.note_redis("replica_wait", &acked);
            let acked = acked?;
            if acked < wanted {
                return Err(StoreError::Unreplicated { acked, wanted });
            }
        }
        Ok(())
    }
}

impl FeatureStore {
    /// The row memory of `stream`'s overlap: row key → image hash.
    pub(super) fn overlap_rows_key(&self, namespace: &str, stream: &str) -> String {
        format!("{}:overlap-rows:{stream}", self.tagged(namespace))
    }

    /// The streamed changes of `stream` found overlapped, by position, until its next run.
    pub(super) fn overlapped_key(&self, namespace: &str, stream: &str) -> String {
        format!("{}:overlapped:{stream}", self.tagged(namespace))
    }
}

/// Row keys as the fields of a stream's row memory: their texts.
fn row_fields(rows: &[RowKey]) -> Vec<String> {
    rows.iter().map(RowKey::to_string).collect()
}

pub(super) fn position_field(position: &Position) -> String {
    format!("{}/{}/{}", position.0, position.1, position.2)
}
