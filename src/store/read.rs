//! The API's reads: an entity's shares from L1, or from Redis in one round trip for all the
//! misses, merged without the shares a newer snapshot run or a TRUNCATE emptied.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fred::prelude::*;

use super::cache::{Cached, Shares};
use super::{
    EntityRead, EntityRef, FeatureStore, Freshness, StoreError, TableMarks, codec, marks,
    note_latency,
};
use crate::features::{self, EntityState};
use crate::telemetry;

const EPOCH_SUFFIX: &str = "#epoch";

impl FeatureStore {
    /// A share as read for the API, its parts found in `fields`; an unreadable one is left out
    /// (and reported): ingest sets it aside and rebuilds it when a change reaches it.
    fn decode_share(
        &self,
        key: &str,
        stream: &str,
        fields: &HashMap<String, Bytes>,
    ) -> Option<EntityState> {
        let value = fields.get(stream)?;
        let part = |feature: &str| fields.get(&codec::part_field(stream, feature)).map(|v| &v[..]);
        match codec::decode_share_with(value, part, &|id| self.dictionaries.known(id)) {
            Ok(state) => Some(state),
            Err(error) => {
                tracing::error!(key, stream, error = %error, "unreadable feature state in redis; served without it");
                metrics::counter!(telemetry::UNREADABLE_STATES, "path" => "read").increment(1);
                None
            }
        }
    }

    /// The shares of one entity's hash, without those a newer snapshot run superseded or a
    /// TRUNCATE emptied.
    fn decode_shares(
        &self,
        key: &str,
        fields: HashMap<String, Bytes>,
        marks: &TableMarks,
    ) -> Shares {
        fields
            .keys()
            // Beside each share on a Redis Cluster: its writer's epoch (see `slots`); and beside
            // a share's head, its parts (see `codec::parts`).
            .filter(|field| !field.ends_with(EPOCH_SUFFIX) && !field.contains(codec::PART_INFIX))
            .filter_map(|stream| {
                Some((stream.clone(), Arc::new(self.decode_share(key, stream, &fields)?)))
            })
            .filter(|(stream, share)| {
                let table = stream.split('/').next().unwrap_or_default();
                let run = marks.runs.get(table).map(|start| start.run);
                !features::superseded(share, stream, run)
                    && !features::truncated_away(share, stream, marks.truncations.get(table))
            })
            .collect()
    }
    /// Reads one entity for the API. Never fails: the answer says how fresh it is.
    pub async fn read(&self, entity: &EntityRef) -> EntityRead {
        let cache_key = entity.cache_key();
        if let Some(cached) = self.l1.get(&cache_key).await {
            return self.answer_from_l1(cached);
        }
        if !self.redis_is_up() {
            // Waiting for a timeout per request would queue callers behind the key lock; the
            // health probe notices when Redis is back.
            self.lookups.none.increment(1);
            return EntityRead { state: None, freshness: Freshness::Unavailable };
        }
        let loaded = self
            .l1
            .get_or_load(&cache_key, || async {
                let mut fetched =
                    self.fetch(std::slice::from_ref(entity), &[], "entity_read").await?;
                Ok::<_, StoreError>(fetched.0.pop().unwrap_or_default())
            })
            .await;
        match loaded {
            Some((cached, from_l1)) => {
                let tier = if from_l1 { &self.lookups.l1 } else { &self.lookups.redis };
                tier.increment(1);
                EntityRead { state: cached.state.clone(), freshness: Freshness::Live }
            }
            None => {
                self.lookups.none.increment(1);
                EntityRead { state: None, freshness: Freshness::Unavailable }
            }
        }
    }

    fn answer_from_l1(&self, cached: Arc<Cached>) -> EntityRead {
        self.lookups.l1.increment(1);
        let freshness = if self.redis_is_up() { Freshness::Live } else { Freshness::Stale };
        EntityRead { state: cached.state.clone(), freshness }
    }

    /// Reads many entities, with at most one Redis round trip for all L1 misses; `extra` are
    /// entities wanted from Redis in the same round trip without caching (whole-catalog
    /// rankings). Returns the reads in order, and the extra states (`None` when Redis failed).
    pub async fn read_many(
        &self,
        entities: &[EntityRef],
        extra: &[EntityRef],
    ) -> (Vec<EntityRead>, Option<Vec<Option<EntityState>>>) {
        let mut reads: Vec<Option<EntityRead>> = Vec::with_capacity(entities.len());
        let mut misses: Vec<(usize, EntityRef, u64)> = Vec::new();
        for (index, entity) in entities.iter().enumerate() {
            let cache_key = entity.cache_key();
            match self.l1.get(&cache_key).await {
                Some(cached) => reads.push(Some(self.answer_from_l1(cached))),
                None => {
                    reads.push(None);
                    misses.push((index, entity.clone(), self.l1.epoch(&cache_key)));
                }
            }
        }
        let unavailable = || EntityRead { state: None, freshness: Freshness::Unavailable };
        let mut extra_states = None;
        if (!misses.is_empty() || !extra.is_empty()) && self.redis_is_up() {
            let wanted: Vec<EntityRef> = misses.iter().map(|(_, e, _)| e.clone()).collect();
            if let Ok((states, extras)) = self.fetch(&wanted, extra, "entity_read").await {
                for ((index, entity, epoch), state) in misses.iter().zip(states) {
                    let cached =
                        self.l1.insert_if_unchanged(entity.cache_key(), state, *epoch).await;
                    self.lookups.redis.increment(1);
                    reads[*index] = Some(EntityRead {
                        state: cached.state.clone(),
                        freshness: Freshness::Live,
                    });
                }
                extra_states = Some(
                    extras.into_iter().map(|shares| Cached::new(shares).into_state()).collect(),
                );
            }
        }
        let reads = reads
            .into_iter()
            .map(|read| {
                read.unwrap_or_else(|| {
                    self.lookups.none.increment(1);
                    unavailable()
                })
            })
            .collect();
        (reads, extra_states)
    }

    /// One pipeline of `HGETALL`s: every share of `entities`, then of `extra`.
    async fn fetch(
        &self,
        entities: &[EntityRef],
        extra: &[EntityRef],
        op: &'static str,
    ) -> Result<(Vec<Shares>, Vec<Shares>), StoreError> {
        let namespace = self.namespace();
        let keys: Vec<String> =
            entities.iter().chain(extra).map(|entity| self.redis_key(&namespace, entity)).collect();
        let pipeline = self.redis.next().pipeline();
        // Read in the same round trip as the shares: a share is judged against the runs as they
        // were when it was read.
        let _: () = pipeline.hgetall(self.runs_key(&namespace)).await?;
        for key in &keys {
            let _: () = pipeline.hgetall(key).await?;
        }
        let started = Instant::now();
        let result: Result<Vec<HashMap<String, Bytes>>, _> = pipeline.all().await;
        note_latency(op, started);
        self.note_redis(op, &result);
        let hashes = result?;
        let values = hashes.iter().skip(1).flat_map(|fields| fields.values().map(|v| &v[..]));
        let unknown = self.dictionaries.unknown(values);
        self.dictionaries.fetch(&self.redis, unknown).await?;
        let mut hashes = hashes.into_iter();
        let marks = marks::decode_marks(hashes.next().unwrap_or_default());
        let mut shares: Vec<Shares> = keys
            .iter()
            .zip(hashes)
            .map(|(key, fields)| self.decode_shares(key, fields, &marks))
            .collect();
        let extras = shares.split_off(entities.len());
        Ok((shares, extras))
    }

    /// Reads whole entities straight from Redis in one round trip, bypassing L1 (the product
    /// index reads the whole catalog this way). `None` when Redis is unreachable.
    pub async fn read_uncached(&self, entities: &[EntityRef]) -> Option<Vec<Option<EntityState>>> {
        if !self.redis_is_up() {
            return None;
        }
        let (_, shares) = self.fetch(&[], entities, "index_read").await.ok()?;
        Some(shares.into_iter().map(|shares| Cached::new(shares).into_state()).collect())
    }
}
